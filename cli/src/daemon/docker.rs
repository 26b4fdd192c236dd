//! Docker's remote network driver protocol (libnetwork `docs/remote.md`):
//! JSON over HTTP POSTs on a Unix socket Docker finds in
//! `/run/docker/plugins/`. This is the network half: Docker's
//! `network create -d tapnet` makes a tapnet network (named
//! `docker-<first 12 of Docker's id>`, with Docker's network id as its
//! id, subnet and gateway from Docker's IPAM, `-o tapnet.KEY=VALUE` as
//! tapnet options, `tapnet.driver` picking the tapnet driver), and
//! `network rm` removes it. Endpoints: CreateEndpoint takes Docker's
//! address (marked used in tapnet's pool) and answers a MAC; Join hands
//! Docker a TAP made in the daemon's namespace and attached to the switch
//! (Docker moves it into the container as `ethN`; tapnet keeps its fd);
//! DeleteEndpoint removes it. ProgramExternalConnectivity publishes the
//! container's `-p` ports through tapnet's relays. Not yet: Docker
//! endpoints across a restart of the daemon (they are kept in memory).
//!
//! The IPAM half (`--ipam-driver tapnet`): RequestPool picks a subnet by
//! tapnet's rules (never overlapping a tapnet network or another pool,
//! so Docker's 172.17.0.0/16 default never meets tapnet's `bridge`),
//! RequestAddress hands out its addresses (pools are kept in memory).
//!
//! Errors are `{"Err": "..."}` with the same one-line messages as the
//! CLI; unknown methods answer 404.

use super::server::{with_core, Shared};
use crate::api::CreateNetwork;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Docker's content type for plugin answers.
const CT: &str = "application/vnd.docker.plugins.v1+json";

fn answer(v: Value) -> Response {
    ([(axum::http::header::CONTENT_TYPE, CT)], Json(v)).into_response()
}

fn fail(msg: impl std::fmt::Display) -> Response {
    answer(json!({ "Err": msg.to_string() }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IpData {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    gateway: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateNet {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(default)]
    options: BTreeMap<String, Value>,
    #[serde(default, rename = "IPv4Data")]
    ipv4_data: Vec<IpData>,
}

#[derive(Deserialize)]
struct NetId {
    #[serde(rename = "NetworkID")]
    network_id: String,
}

/// The tapnet network of Docker network `id`.
pub fn network_name(id: &str) -> String {
    format!("docker-{}", &id[..id.len().min(12)])
}

/// Docker's CreateNetwork as tapnet's: options `tapnet.KEY=VALUE` (from
/// `-o`) become the network's options, `tapnet.driver` its driver.
fn create_request(c: &CreateNet) -> Result<CreateNetwork, String> {
    if c.network_id.is_empty() {
        return Err("CreateNetwork without a NetworkID".into());
    }
    let generic = c
        .options
        .get("com.docker.network.generic")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut options = BTreeMap::new();
    let mut driver = None;
    for (k, v) in generic {
        let Some(k) = k.strip_prefix("tapnet.") else {
            continue; // Docker's own (com.docker.*)
        };
        let v = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if k == "driver" {
            driver = Some(v);
        } else {
            options.insert(k.to_string(), v);
        }
    }
    let v4 = c.ipv4_data.first();
    let strip = |s: &str| s.split('/').next().unwrap_or_default().to_string();
    Ok(CreateNetwork {
        name: network_name(&c.network_id),
        driver,
        options,
        subnet: v4.map(|d| d.pool.clone()).filter(|p| !p.is_empty()),
        gateway: v4.map(|d| strip(&d.gateway)).filter(|g| !g.is_empty()),
        internal: c
            .options
            .get("com.docker.network.internal")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        id: Some(c.network_id.clone()),
        ..Default::default()
    })
}

async fn method(State(s): State<Shared>, Path(m): Path<String>, body: Bytes) -> Response {
    match m.as_str() {
        "Plugin.Activate" => answer(json!({ "Implements": ["NetworkDriver", "IpamDriver"] })),
        "IpamDriver.GetCapabilities" => answer(json!({ "RequiresMACAddress": false })),
        "IpamDriver.GetDefaultAddressSpaces" => answer(json!({
            "LocalDefaultAddressSpace": "tapnet-local",
            "GlobalDefaultAddressSpace": "tapnet-global"
        })),
        "IpamDriver.RequestPool" => {
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return fail("invalid RequestPool body");
            };
            if v["V6"].as_bool() == Some(true) {
                return fail("tapnet's IPAM has no IPv6 pools yet");
            }
            let want = v["Pool"]
                .as_str()
                .filter(|p| !p.is_empty())
                .map(String::from);
            match with_core(s, move |c| c.docker_request_pool(want.as_deref())).await {
                Ok(Json(p)) => answer(json!({ "PoolID": p, "Pool": p, "Data": {} })),
                Err(e) => fail(e.message),
            }
        }
        "IpamDriver.ReleasePool" => {
            let id = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["PoolID"].as_str().map(String::from))
                .unwrap_or_default();
            let _ = with_core(s, move |c| {
                c.docker_pools.remove(&id);
                Ok(())
            })
            .await;
            answer(json!({}))
        }
        "IpamDriver.RequestAddress" => {
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return fail("invalid RequestAddress body");
            };
            let id = v["PoolID"].as_str().unwrap_or_default().to_string();
            let want = v["Address"]
                .as_str()
                .filter(|a| !a.is_empty())
                .map(String::from);
            let gateway = v["Options"]["RequestAddressType"] == "com.docker.network.gateway";
            match with_core(s, move |c| {
                c.docker_request_address(&id, want.as_deref(), gateway)
            })
            .await
            {
                Ok(Json(a)) => answer(json!({ "Address": a, "Data": {} })),
                Err(e) => fail(e.message),
            }
        }
        "IpamDriver.ReleaseAddress" => {
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return fail("invalid ReleaseAddress body");
            };
            let id = v["PoolID"].as_str().unwrap_or_default().to_string();
            let addr = v["Address"].as_str().unwrap_or_default().to_string();
            let _ = with_core(s, move |c| {
                if let (Some(p), Ok(ip)) = (
                    c.docker_pools.get_mut(&id),
                    addr.split('/').next().unwrap_or_default().parse(),
                ) {
                    p.release(ip);
                }
                Ok(())
            })
            .await;
            answer(json!({}))
        }
        "NetworkDriver.GetCapabilities" => {
            answer(json!({ "Scope": "local", "ConnectivityScope": "local" }))
        }
        "NetworkDriver.CreateNetwork" => {
            let req = match serde_json::from_slice::<CreateNet>(&body)
                .map_err(|e| format!("invalid CreateNetwork body: {e}"))
                .and_then(|c| create_request(&c))
            {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            // Docker may send it again for a network it has (a restart of
            // dockerd): the same network is there already, not an error
            let (name, id, subnet) = (req.name.clone(), req.id.clone(), req.subnet.clone());
            match with_core(s, move |c| {
                if let Ok(n) = c.net(&name) {
                    if Some(&n.rec.id) == id.as_ref()
                        && subnet
                            .as_deref()
                            .is_none_or(|sn| sn == n.rec.subnet.to_string())
                    {
                        return Ok(false);
                    }
                }
                c.create_network(req).map(|_| true)
            })
            .await
            {
                Ok(_) => answer(json!({})),
                Err(e) => fail(e.message),
            }
        }
        "NetworkDriver.DeleteNetwork" => {
            let Ok(n) = serde_json::from_slice::<NetId>(&body) else {
                return fail("invalid DeleteNetwork body");
            };
            let name = network_name(&n.network_id);
            match with_core(s, move |c| c.remove_network(&name)).await {
                Ok(_) => answer(json!({})),
                // already gone is done (Docker retries deletes)
                Err(e) if e.status == 404 => answer(json!({})),
                Err(e) => fail(e.message),
            }
        }
        "NetworkDriver.AllocateNetwork" | "NetworkDriver.FreeNetwork" => answer(json!({})),
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => answer(json!({})),
        "NetworkDriver.CreateEndpoint" => {
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return fail("invalid CreateEndpoint body");
            };
            let s_ = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            let (net, ep) = (s_("NetworkID"), s_("EndpointID"));
            let addr = v["Interface"]["Address"].as_str().unwrap_or_default();
            let Ok(ip) = addr.split('/').next().unwrap_or_default().parse() else {
                return fail(format!("CreateEndpoint without an IPv4 address ({addr:?})"));
            };
            let given = v["Interface"]["MacAddress"]
                .as_str()
                .filter(|m| !m.is_empty());
            let mac = match given.map(str::parse::<vswitch::Mac>).transpose() {
                Ok(m) => m,
                Err(_) => return fail(format!("invalid MAC address {given:?}")),
            };
            match with_core(s, move |c| c.docker_create_endpoint(&net, &ep, ip, mac)).await {
                // a MAC only when Docker had none
                Ok(Json(m)) if given.is_none() => {
                    answer(json!({ "Interface": { "MacAddress": m.to_string() } }))
                }
                Ok(_) => answer(json!({})),
                Err(e) => fail(e.message),
            }
        }
        "NetworkDriver.Join" => {
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return fail("invalid Join body");
            };
            let ep = v["EndpointID"].as_str().unwrap_or_default().to_string();
            let sandbox = v["SandboxKey"].as_str().unwrap_or_default().to_string();
            match with_core(s, move |c| c.docker_join(&ep, &sandbox)).await {
                Ok(Json((tap, gw))) => {
                    let mut r = json!({ "InterfaceName": { "SrcName": tap, "DstPrefix": "eth" } });
                    if let Some(g) = gw {
                        r["Gateway"] = json!(g);
                    }
                    answer(r)
                }
                Err(e) => fail(e.message),
            }
        }
        "NetworkDriver.DeleteEndpoint" => {
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return fail("invalid DeleteEndpoint body");
            };
            let ep = v["EndpointID"].as_str().unwrap_or_default().to_string();
            match with_core(s, move |c| c.docker_delete_endpoint(&ep)).await {
                Ok(_) => answer(json!({})),
                Err(e) => fail(e.message),
            }
        }
        // Docker moves the TAP back out of the container itself
        "NetworkDriver.Leave" => answer(json!({})),
        "NetworkDriver.EndpointOperInfo" => answer(json!({ "Value": {} })),
        "NetworkDriver.ProgramExternalConnectivity" => {
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return fail("invalid ProgramExternalConnectivity body");
            };
            let ep = v["EndpointID"].as_str().unwrap_or_default().to_string();
            let maps = match port_maps(&v["Options"]["com.docker.network.portmap"]) {
                Ok(m) => m,
                Err(e) => return fail(e),
            };
            match with_core(s, move |c| c.docker_publish(&ep, maps)).await {
                Ok(_) => answer(json!({})),
                Err(e) => fail(e.message),
            }
        }
        "NetworkDriver.RevokeExternalConnectivity" => {
            let ep = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["EndpointID"].as_str().map(String::from))
                .unwrap_or_default();
            let _ = with_core(s, move |c| {
                c.docker_unpublish(&ep);
                Ok(())
            })
            .await;
            answer(json!({}))
        }
        _ => (StatusCode::NOT_FOUND, fail(format!("unknown method {m}"))).into_response(),
    }
}

pub fn router(s: Shared) -> Router {
    Router::new().route("/{method}", post(method)).with_state(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_options_become_tapnet_options() {
        let c: CreateNet = serde_json::from_value(json!({
            "NetworkID": "ce17aa0011223344556677889900aabbccddeeff00112233445566778899aabb",
            "Options": {"com.docker.network.enable_ipv6": false,
                "com.docker.network.generic": {"tapnet.driver": "macvlan", "tapnet.parent": "eth0",
                    "com.docker.network.bridge.name": "x"}},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Gateway": "10.99.0.1/24", "Pool": "10.99.0.0/24"}],
            "IPv6Data": []
        }))
        .unwrap();
        let r = create_request(&c).unwrap();
        assert_eq!(r.name, "docker-ce17aa001122");
        assert_eq!(r.driver.as_deref(), Some("macvlan"));
        assert_eq!(r.options.get("parent").map(String::as_str), Some("eth0"));
        assert_eq!(r.options.len(), 1);
        assert_eq!(r.subnet.as_deref(), Some("10.99.0.0/24"));
        assert_eq!(r.gateway.as_deref(), Some("10.99.0.1"));
    }
}

/// A Docker endpoint on a tapnet network (in memory: a restart of the
/// daemon forgets them, see the issue notes).
pub struct DockerEp {
    pub network: String,
    pub ip: std::net::Ipv4Addr,
    pub mac: vswitch::Mac,
    /// The TAP handed to Docker at Join, and its datapath port.
    pub tap: Option<(String, vswitch::PortId)>,
    /// The container's namespace (Join's SandboxKey).
    pub sandbox: Option<std::path::PathBuf>,
    /// Its published ports' relays (ProgramExternalConnectivity).
    pub published: Option<super::publish::Published>,
}

/// Docker's port map (`com.docker.network.portmap`) as tapnet's.
pub fn port_maps(v: &Value) -> Result<Vec<super::publish::PortMap>, String> {
    use super::publish::{PortMap, Proto};
    let mut out = Vec::new();
    for m in v.as_array().into_iter().flatten() {
        let proto = match m["Proto"].as_u64() {
            Some(6) => Proto::Tcp,
            Some(17) => Proto::Udp,
            p => return Err(format!("unsupported protocol {p:?} in port map {m}")),
        };
        let port = |k: &str| m[k].as_u64().and_then(|p| u16::try_from(p).ok());
        let (Some(ctr), Some(host)) = (port("Port"), port("HostPort")) else {
            return Err(format!("invalid port map {m}"));
        };
        if port("HostPortEnd").is_some_and(|e| e > host) {
            return Err(format!(
                "port map {m}: a range of host ports for one container port is not supported; give one host port"
            ));
        }
        if host == 0 {
            return Err(format!(
                "port map {m} without a host port (tapnet picks none yet)"
            ));
        }
        let host_ip = match m["HostIP"].as_str().filter(|s| !s.is_empty()) {
            Some(s) => Some(s.parse().map_err(|_| format!("invalid HostIP {s:?}"))?),
            None => None,
        };
        out.push(PortMap {
            host_ip,
            host_port: host,
            ctr_port: ctr,
            proto,
        });
    }
    Ok(out)
}

impl super::Core {
    /// CreateEndpoint: Docker's IPAM chose `ip`; tapnet marks it used and
    /// picks the MAC unless Docker has one. Returns the MAC.
    pub fn docker_create_endpoint(
        &mut self,
        net_id: &str,
        ep_id: &str,
        ip: std::net::Ipv4Addr,
        mac: Option<vswitch::Mac>,
    ) -> super::ApiResult<vswitch::Mac> {
        let name = network_name(net_id);
        let n = self.net(&name)?;
        if !n.rec.subnet.contains(&ip) {
            return Err(super::ApiError::bad_request(format!(
                "address {ip} is outside network {name} ({})",
                n.rec.subnet
            )));
        }
        let n = self.nets.get_mut(&name).expect("checked");
        n.pool.allocate(Some(ip))?;
        let mac = mac.unwrap_or_else(|| vswitch::Mac::from_ipv4(ip));
        self.docker_eps.insert(
            ep_id.to_string(),
            DockerEp {
                network: name,
                ip,
                mac,
                tap: None,
                sandbox: None,
                published: None,
            },
        );
        Ok(mac)
    }

    /// Join: a TAP in the daemon's namespace, attached to the switch, for
    /// Docker to move into the container. Returns its name and the gateway
    /// (None on an internal network).
    pub fn docker_join(
        &mut self,
        ep_id: &str,
        sandbox: &str,
    ) -> super::ApiResult<(String, Option<String>)> {
        let Some(ep) = self.docker_eps.get(ep_id) else {
            return Err(super::ApiError::not_found(format!("no endpoint {ep_id}")));
        };
        let n = self.net(&ep.network)?;
        let tap = format!("tn{}", &ep_id[..ep_id.len().min(11)]);
        let fds = vswitch::open_tap(&vswitch::TapOptions {
            name: tap.clone(),
            offload: true,
            persist: false,
            queues: 1,
            clone_device: self.cfg.tun_device.clone(),
        })
        .map_err(|e| super::ApiError::internal(format!("creating TAP {tap}: {e}")))?;
        let fd = fds.into_iter().next().expect("one queue");
        let identity = super::driver::port_security(&n.rec).then_some(vswitch::PortIdentity {
            mac: ep.mac,
            ip: ep.ip,
        });
        let port = self
            .dp
            .add_secured_port(&tap, n.idx, n.rec.mtu, fd, identity)
            .map_err(super::ApiError::internal)?;
        let gw = (!n.rec.internal).then(|| n.rec.gateway.to_string());
        super::log(format!(
            "docker: endpoint {} on {} as {} ({tap})",
            &ep_id[..ep_id.len().min(12)],
            ep.network,
            ep.ip
        ));
        let e = self.docker_eps.get_mut(ep_id).expect("checked");
        e.tap = Some((tap.clone(), port));
        e.sandbox = Some(sandbox.into());
        Ok((tap, gw))
    }

    /// ProgramExternalConnectivity: the container's port map published on
    /// the daemon's host ports (relays into its namespace, as `-p` for
    /// tapnet's own containers; Docker starts no proxy for remote drivers).
    pub fn docker_publish(
        &mut self,
        ep_id: &str,
        maps: Vec<super::publish::PortMap>,
    ) -> super::ApiResult<()> {
        let Some(ep) = self.docker_eps.get_mut(ep_id) else {
            return Err(super::ApiError::not_found(format!("no endpoint {ep_id}")));
        };
        ep.published = None;
        if maps.is_empty() {
            return Ok(());
        }
        let Some(sandbox) = ep.sandbox.clone() else {
            return Err(super::ApiError::bad_request(
                "ProgramExternalConnectivity before Join",
            ));
        };
        // (Docker calls this before it moves the TAP in: the sandbox's
        // path is how the relays find the container)
        let p =
            super::publish::publish(&sandbox, ep.ip, &maps).map_err(super::ApiError::conflict)?;
        ep.published = Some(p);
        Ok(())
    }

    /// IPAM RequestPool: `want`, or the next free subnet by tapnet's rules
    /// (as `network create` without `--subnet`), never overlapping a
    /// tapnet network or another pool handed out. The pool's id is its
    /// subnet.
    pub fn docker_request_pool(&mut self, want: Option<&str>) -> super::ApiResult<String> {
        let mut taken: Vec<ipnet::Ipv4Net> = self.nets.values().map(|n| n.rec.subnet).collect();
        taken.extend(self.docker_pools.values().map(|p| p.subnet));
        let subnet = match want {
            Some(w) => {
                let s = super::ipam::parse_subnet(w)?;
                if let Some(o) = taken.iter().find(|t| super::ipam::overlaps(t, &s)) {
                    return Err(super::ApiError::conflict(format!(
                        "subnet {s} overlaps {o}, in use by tapnet"
                    )));
                }
                s
            }
            None => super::ipam::auto_subnet(&taken)?,
        };
        let pool = super::ipam::Pool::new(subnet, None, None)?;
        self.docker_pools.insert(subnet.to_string(), pool);
        Ok(subnet.to_string())
    }

    /// IPAM RequestAddress: the pool's gateway (its first host) for a
    /// gateway request, else `want` or the next free address; with the
    /// prefix length.
    pub fn docker_request_address(
        &mut self,
        pool: &str,
        want: Option<&str>,
        gateway: bool,
    ) -> super::ApiResult<String> {
        let Some(p) = self.docker_pools.get_mut(pool) else {
            return Err(super::ApiError::not_found(format!("no pool {pool}")));
        };
        let len = p.subnet.prefix_len();
        if gateway {
            return Ok(format!("{}/{len}", p.gateway));
        }
        let want = want.map(super::ipam::parse_addr).transpose()?;
        let ip = p.allocate(want)?;
        Ok(format!("{ip}/{len}"))
    }

    /// RevokeExternalConnectivity: the relays go.
    pub fn docker_unpublish(&mut self, ep_id: &str) {
        if let Some(ep) = self.docker_eps.get_mut(ep_id) {
            ep.published = None;
        }
    }

    /// DeleteEndpoint: the port and its TAP go, the address is free.
    pub fn docker_delete_endpoint(&mut self, ep_id: &str) -> super::ApiResult<()> {
        let Some(mut ep) = self.docker_eps.remove(ep_id) else {
            return Ok(()); // already gone
        };
        ep.published = None;
        if let Some((_, port)) = ep.tap {
            if let Err(e) = self.dp.remove_port(port, true, super::DP_TIMEOUT) {
                super::log(format!("docker: removing port of {ep_id}: {e}"));
            }
        }
        if let Some(n) = self.nets.get_mut(&ep.network) {
            n.pool.release(ep.ip);
            let idx = n.idx;
            if self.cfg.uplink.is_some() {
                let _ = self.dp.forget_host(idx, ep.ip);
            }
        }
        Ok(())
    }
}
