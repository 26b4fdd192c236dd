//! Docker's remote network driver protocol (libnetwork `docs/remote.md`):
//! JSON over HTTP POSTs on a Unix socket Docker finds in
//! `/run/docker/plugins/`. This is the network half: Docker's
//! `network create -d tapnet` makes a tapnet network (named
//! `docker-<first 12 of Docker's id>`, with Docker's network id as its
//! id, subnet and gateway from Docker's IPAM, `-o tapnet.KEY=VALUE` as
//! tapnet options, `tapnet.driver` picking the tapnet driver, Docker's
//! `com.docker.network.driver.mtu` or `tapnet.mtu` its MTU), and
//! `network rm` removes it. Endpoints: CreateEndpoint takes Docker's
//! address (marked used in tapnet's pool) and answers a MAC; Join hands
//! Docker a TAP made in the daemon's namespace and attached to the switch
//! (Docker moves it into the container as `ethN`; tapnet keeps its fd);
//! DeleteEndpoint removes it. ProgramExternalConnectivity publishes the
//! container's `-p` ports through tapnet's relays. Docker's endpoints are
//! ordinary endpoints of the network (named `docker-<first 12 of the
//! endpoint id>`, stored with the network, shown by `network inspect`);
//! their TAPs are persistent, so a restarted tapnet finds each in its
//! container (by MAC) and the containers keep their network.
//!
//! The IPAM half (`--ipam-driver tapnet`): RequestPool picks a subnet by
//! tapnet's rules (never overlapping a tapnet network or another pool,
//! so Docker's 172.17.0.0/16 default never meets tapnet's `bridge`),
//! RequestAddress hands out its addresses (pools are kept in the state
//! directory, `docker-ipam.json`: Docker holds their ids across a restart
//! of tapnet).
//!
//! A daemon with a cluster store serves a second plugin, `tapnet-overlay`
//! (a socket of its own next to the first), whose scope is global: with
//! dockerd's own cluster store (`--cluster-store`, Docker 20.10) every
//! Docker host sees its networks, and each is a tapnet overlay network,
//! created once (Docker sends CreateNetwork to the host that runs `docker
//! network create` only; the other hosts' tapnet daemons learn it from
//! tapnet's store, under the same name and id). Docker's IPAM then hands
//! out addresses for the whole cluster, and tapnet claims each in its
//! store as it does its own.
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

/// The global-scope plugin's name (its socket is `tapnet-overlay.sock`).
pub const OVERLAY_PLUGIN: &str = "tapnet-overlay";

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
/// `-o`) become the network's options, `tapnet.driver` its driver. For
/// the global plugin (`global`) the driver is overlay, and Docker's own
/// overlay option `encrypted` is taken as tapnet's.
fn create_request(c: &CreateNet, global: bool) -> Result<CreateNetwork, String> {
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
    let mut mtu = None;
    let mut encrypted = None;
    for (k, v) in generic {
        let v = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        // Docker's own MTU option, as for its bridge driver
        if k == "com.docker.network.driver.mtu" || k == "tapnet.mtu" {
            mtu = Some(
                v.parse::<u32>()
                    .map_err(|_| format!("invalid MTU {v:?}: expected a number"))?,
            );
            continue;
        }
        // Docker's own overlay option
        if k == "encrypted" {
            encrypted = Some(v);
            continue;
        }
        let Some(k) = k.strip_prefix("tapnet.") else {
            continue; // Docker's own (com.docker.*)
        };
        if k == "driver" {
            driver = Some(v);
        } else {
            options.insert(k.to_string(), v);
        }
    }
    if global {
        match driver.as_deref() {
            None | Some("overlay") => driver = Some("overlay".into()),
            Some(d) => {
                return Err(format!(
                    "the {OVERLAY_PLUGIN} plugin makes overlay networks only; use -d tapnet -o tapnet.driver={d}"
                ))
            }
        }
    }
    if let Some(v) = encrypted {
        if driver.as_deref() != Some("overlay") {
            return Err("-o encrypted is for overlay networks (-d tapnet-overlay, or -o tapnet.driver=overlay)".into());
        }
        options.insert("encrypted".into(), v);
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
        mtu,
        ..Default::default()
    })
}

/// One of the two plugins: `tapnet` (local scope) or `tapnet-overlay`
/// (global scope).
#[derive(Clone)]
struct Plugin {
    s: Shared,
    global: bool,
}

async fn method(State(p): State<Plugin>, Path(m): Path<String>, body: Bytes) -> Response {
    let (s, global) = (p.s, p.global);
    match m.as_str() {
        // the global plugin has no IPAM: tapnet's pools are per host, and
        // Docker's default IPAM already spans the cluster
        "Plugin.Activate" if global => answer(json!({ "Implements": ["NetworkDriver"] })),
        m if global && m.starts_with("IpamDriver.") => fail(format!(
            "the {OVERLAY_PLUGIN} plugin has no IPAM driver: use Docker's default IPAM (its addresses span the cluster)"
        )),
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
            match with_core(s, move |c| c.docker_release_pool(&id)).await {
                Ok(_) => answer(json!({})),
                Err(e) => fail(e.message),
            }
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
            match with_core(s, move |c| c.docker_release_address(&id, &addr)).await {
                Ok(_) => answer(json!({})),
                Err(e) => fail(e.message),
            }
        }
        "NetworkDriver.GetCapabilities" => {
            let scope = if global { "global" } else { "local" };
            answer(json!({ "Scope": scope, "ConnectivityScope": scope }))
        }
        "NetworkDriver.CreateNetwork" => {
            let req = match serde_json::from_slice::<CreateNet>(&body)
                .map_err(|e| format!("invalid CreateNetwork body: {e}"))
                .and_then(|c| create_request(&c, global))
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
            match with_core(s, move |c| c.docker_delete_network(&name)).await {
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

/// The plugin's routes: `global` for `tapnet-overlay`.
pub fn router(s: Shared, global: bool) -> Router {
    Router::new()
        .route("/{method}", post(method))
        .with_state(Plugin { s, global })
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
                    "com.docker.network.bridge.name": "x", "com.docker.network.driver.mtu": "9000"}},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Gateway": "10.99.0.1/24", "Pool": "10.99.0.0/24"}],
            "IPv6Data": []
        }))
        .unwrap();
        let r = create_request(&c, false).unwrap();
        assert_eq!(r.name, "docker-ce17aa001122");
        assert_eq!(r.driver.as_deref(), Some("macvlan"));
        assert_eq!(r.options.get("parent").map(String::as_str), Some("eth0"));
        assert_eq!(r.options.len(), 1);
        assert_eq!(r.subnet.as_deref(), Some("10.99.0.0/24"));
        assert_eq!(r.gateway.as_deref(), Some("10.99.0.1"));
        assert_eq!(r.mtu, Some(9000));
    }

    #[test]
    fn the_global_plugin_makes_overlay_networks() {
        let net = |generic: Value| -> CreateNet {
            serde_json::from_value(json!({
                "NetworkID": "ab".repeat(32),
                "Options": {"com.docker.network.generic": generic},
                "IPv4Data": [{"Pool": "10.95.0.0/24", "Gateway": "10.95.0.1/24"}]
            }))
            .unwrap()
        };
        let r = create_request(&net(json!({"encrypted": ""})), true).unwrap();
        assert_eq!(r.driver.as_deref(), Some("overlay"));
        assert_eq!(r.options.get("encrypted").map(String::as_str), Some(""));
        let e = create_request(&net(json!({"tapnet.driver": "macvlan"})), true).unwrap_err();
        assert!(e.contains("overlay networks only"), "{e}");
        // the local plugin: encrypted only with the overlay driver
        let e = create_request(&net(json!({"encrypted": ""})), false).unwrap_err();
        assert!(e.contains("for overlay networks"), "{e}");
        let r = create_request(
            &net(json!({"encrypted": "", "tapnet.driver": "overlay"})),
            false,
        )
        .unwrap();
        assert_eq!(r.options.get("encrypted").map(String::as_str), Some(""));
    }
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

/// The name of Docker endpoint `id` among its network's endpoints (where
/// tapnet's own are named by container: Docker tells a driver no name).
pub fn endpoint_key(id: &str) -> String {
    format!("docker-{}", &id[..id.len().min(12)])
}

impl super::Core {
    /// Opens endpoint `key`'s TAP as `how` says and adds it to network
    /// `net`'s switch ports.
    pub(super) fn docker_attach(
        &self,
        net: &str,
        key: &str,
        e: &super::EndpointRecord,
        how: super::netns::DockerTap,
    ) -> anyhow::Result<vswitch::PortId> {
        let n = &self.nets[net];
        let (fds, at) = super::netns::open_docker_tap(
            how,
            &super::netns::docker_tap_alias(e.docker.as_deref().unwrap_or_default()),
            e.mac,
            &e.ifname,
            self.cfg.tun_device.as_deref(),
        )?;
        let identity = super::driver::port_security(&n.rec).then_some(vswitch::PortIdentity {
            ip6: e.ip6,
            mac: e.mac,
            ip: e.ip,
        });
        // (if the switch refuses it, the TAP must not outlive this)
        let keep = fds[0].try_clone()?;
        let port = self
            .dp
            .add_port_queues(key, n.idx, n.rec.mtu, fds, identity)
            .inspect_err(|_| {
                let _ = vswitch::tap::set_persist(&keep, false);
            })?;
        super::log(format!("{key}: Docker's TAP is {at}"));
        Ok(port)
    }

    /// Lets go of the TAP of a stale Docker endpoint, if it is in the
    /// daemon's namespace: no longer persistent, it goes when closed.
    pub(super) fn docker_let_go(&self, e: &super::EndpointRecord) {
        let how = super::netns::DockerTap::Find { sandbox: None };
        let alias = super::netns::docker_tap_alias(e.docker.as_deref().unwrap_or_default());
        if let Ok((fds, _)) = super::netns::open_docker_tap(
            how,
            &alias,
            e.mac,
            &e.ifname,
            self.cfg.tun_device.as_deref(),
        ) {
            let _ = vswitch::tap::set_persist(&fds[0], false);
        }
    }

    /// DeleteNetwork: Docker deletes a network once it has no endpoint on
    /// it, so Docker endpoints still there are ones whose DeleteEndpoint
    /// never arrived (tapnet was down): removed first.
    pub fn docker_delete_network(&mut self, name: &str) -> super::ApiResult<()> {
        let stale: Vec<String> = self
            .net(name)?
            .rec
            .endpoints
            .iter()
            .filter(|(_, e)| e.docker.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            super::log(format!("docker: removing {k}, left over on {name}"));
            self.disconnect_inner(name, &k)?;
        }
        self.remove_network(name)
    }

    /// The network and key of Docker endpoint `ep_id`.
    fn docker_ep(&self, ep_id: &str) -> super::ApiResult<(String, String)> {
        let key = endpoint_key(ep_id);
        self.nets
            .values()
            .find(|n| {
                n.rec
                    .endpoints
                    .get(&key)
                    .is_some_and(|e| e.docker.as_deref() == Some(ep_id))
            })
            .map(|n| (n.rec.name.clone(), key))
            .ok_or_else(|| super::ApiError::not_found(format!("no endpoint {ep_id}")))
    }

    /// CreateEndpoint: Docker's IPAM chose `ip`; tapnet marks it used,
    /// picks the MAC unless Docker has one, and stores the endpoint (no
    /// device yet: that is Join's). Returns the MAC.
    pub fn docker_create_endpoint(
        &mut self,
        net_id: &str,
        ep_id: &str,
        ip: std::net::Ipv4Addr,
        mac: Option<vswitch::Mac>,
    ) -> super::ApiResult<vswitch::Mac> {
        let name = network_name(net_id);
        let key = endpoint_key(ep_id);
        if self.net(&name).is_err() {
            // a global network this host's watch has not brought yet
            self.fetch_global(&name);
        }
        let n = self.net(&name)?;
        if n.rec.endpoints.contains_key(&key) {
            if self.docker_ep(ep_id).is_ok() {
                // Docker sent it again: the same endpoint
                return Ok(n.rec.endpoints[&key].mac);
            }
            return Err(super::ApiError::conflict(format!(
                "network {name} already has an endpoint named {key}"
            )));
        }
        if !n.rec.subnet.contains(&ip) {
            return Err(super::ApiError::bad_request(format!(
                "address {ip} is outside network {name} ({})",
                n.rec.subnet
            )));
        }
        n.drv
            .check_join(n, &super::driver::EndpointRequest { container: &key })?;
        if let Some(m) = mac {
            if let Some((c, _)) = n.rec.endpoints.iter().find(|(_, e)| e.mac == m) {
                return Err(super::ApiError::conflict(format!(
                    "MAC address {m} is already used by {c} on network {name}"
                )));
            }
        }
        let mtu = n.rec.mtu;
        let global = Self::is_global(n);
        if global {
            // Docker's IPAM chose it for the whole cluster; claimed in the
            // store as tapnet's own addresses are
            self.claim_given(&name, ip, &key)?;
        }
        let n = self.nets.get_mut(&name).expect("checked");
        if !global {
            n.pool.allocate(Some(ip))?;
        }
        let mac = mac.unwrap_or_else(|| vswitch::Mac::from_ipv4(ip));
        n.rec.endpoints.insert(
            key.clone(),
            super::EndpointRecord {
                ip6: None,
                netns: Default::default(),
                ifname: format!("tn{}", &ep_id[..ep_id.len().min(11)]),
                ip,
                mac,
                mtu,
                // Docker installs the routes from Join's answer
                default_route: false,
                default_route6: None,
                owned_netns: false,
                aliases: vec![],
                ports: vec![],
                docker: Some(ep_id.to_string()),
            },
        );
        if let Err(e) = self.store.save(&n.rec) {
            let rec = n.rec.endpoints.remove(&key).expect("inserted");
            n.pool.release(ip);
            if global {
                self.withdraw_global(&name, &key, &rec);
            }
            return Err(e.into());
        }
        let n = &self.nets[&name];
        n.drv.endpoints_changed(&self.plumbing(), n);
        if global {
            // the other hosts learn of it (and route to it) from the store
            if let Err(e) = self.publish_global(&name, &key) {
                if let Err(e2) = self.disconnect_inner(&name, &key) {
                    super::log(format!("removing {key} from {name}: {}", e2.message));
                }
                return Err(e);
            }
        }
        Ok(mac)
    }

    /// Join: the endpoint's TAP, made in the daemon's namespace (Docker
    /// moves it into the container, `sandbox`, and renames it) and added
    /// to the switch. Returns its name and the gateway (None on an
    /// internal network).
    pub fn docker_join(
        &mut self,
        ep_id: &str,
        sandbox: &str,
    ) -> super::ApiResult<(String, Option<String>)> {
        let (net, key) = self.docker_ep(ep_id)?;
        let n = self.nets.get_mut(&net).expect("found");
        if let Some(old) = n.ports.remove(&key) {
            // joined again (Docker retrying): the new TAP replaces the old
            let _ = self.dp.remove_port(old, true, super::DP_TIMEOUT);
        }
        let n = self.nets.get_mut(&net).expect("found");
        let e = n.rec.endpoints.get_mut(&key).expect("found");
        let before = e.netns.clone();
        e.netns = sandbox.into();
        let e = e.clone();
        let how = super::netns::DockerTap::Create { mtu: e.mtu };
        let port = match self.docker_attach(&net, &key, &e, how) {
            Ok(p) => p,
            Err(err) => {
                let n = self.nets.get_mut(&net).expect("found");
                n.rec.endpoints.get_mut(&key).expect("found").netns = before;
                return Err(super::ApiError::internal(format!(
                    "creating TAP {}: {err:#}",
                    e.ifname
                )));
            }
        };
        let n = self.nets.get_mut(&net).expect("found");
        n.ports.insert(key.clone(), port);
        if let Err(err) = self.store.save(&n.rec) {
            let _ = self.dp.remove_port(port, true, super::DP_TIMEOUT);
            n.ports.remove(&key);
            n.rec.endpoints.get_mut(&key).expect("found").netns = before;
            return Err(err.into());
        }
        let gw = (!n.rec.internal).then(|| n.rec.gateway.to_string());
        super::log(format!(
            "docker: endpoint {key} on {net} as {} ({})",
            e.ip, e.ifname
        ));
        Ok((e.ifname, gw))
    }

    /// ProgramExternalConnectivity: the container's port map published on
    /// the daemon's host ports (relays into its namespace, as `-p` for
    /// tapnet's own containers; Docker starts no proxy for remote
    /// drivers), and on the uplink address when there is one.
    pub fn docker_publish(
        &mut self,
        ep_id: &str,
        maps: Vec<super::publish::PortMap>,
    ) -> super::ApiResult<()> {
        self.docker_unpublish(ep_id);
        if maps.is_empty() {
            return Ok(());
        }
        let (net, key) = self.docker_ep(ep_id)?;
        let n = &self.nets[&net];
        n.drv
            .publishes(&n.rec)
            .map_err(super::ApiError::bad_request)?;
        let e = &n.rec.endpoints[&key];
        if e.netns.as_os_str().is_empty() {
            return Err(super::ApiError::bad_request(
                "ProgramExternalConnectivity before Join",
            ));
        }
        // (Docker calls this before it moves the TAP in: the sandbox's
        // path is how the relays find the container)
        let p =
            super::publish::publish(&e.netns, e.ip, &maps).map_err(super::ApiError::conflict)?;
        let n = self.nets.get_mut(&net).expect("found");
        n.published.insert(key.clone(), p);
        let e = n.rec.endpoints.get_mut(&key).expect("found");
        e.ports = maps;
        let (idx, e) = (n.idx, e.clone());
        if let Err(err) = self.store.save(&n.rec) {
            self.docker_unpublish(ep_id);
            return Err(err.into());
        }
        self.uplink_forwards(idx, &e, true);
        Ok(())
    }

    /// RevokeExternalConnectivity: the relays and forwards go.
    pub fn docker_unpublish(&mut self, ep_id: &str) {
        let Ok((net, key)) = self.docker_ep(ep_id) else {
            return;
        };
        let n = self.nets.get_mut(&net).expect("found");
        n.published.remove(&key);
        let e = n.rec.endpoints.get_mut(&key).expect("found");
        if e.ports.is_empty() {
            return;
        }
        let old = e.clone();
        e.ports.clear();
        let idx = n.idx;
        if let Err(err) = self.store.save(&n.rec) {
            super::log(format!("docker: {key}: {err:#}"));
        }
        self.uplink_forwards(idx, &old, false);
    }

    /// DeleteEndpoint: as a disconnect: the port and its TAP go, the
    /// address is free.
    pub fn docker_delete_endpoint(&mut self, ep_id: &str) -> super::ApiResult<()> {
        match self.docker_ep(ep_id) {
            Ok((net, key)) => self.disconnect_inner(&net, &key),
            Err(_) => Ok(()), // already gone
        }
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
        if let Err(e) = self.save_docker_pools() {
            self.docker_pools.remove(&subnet.to_string());
            return Err(e);
        }
        Ok(subnet.to_string())
    }

    /// IPAM ReleasePool.
    pub fn docker_release_pool(&mut self, id: &str) -> super::ApiResult<()> {
        if let Some(p) = self.docker_pools.remove(id) {
            if let Err(e) = self.save_docker_pools() {
                self.docker_pools.insert(id.to_string(), p);
                return Err(e);
            }
        }
        Ok(())
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
        if let Err(e) = self.save_docker_pools() {
            if let Some(p) = self.docker_pools.get_mut(pool) {
                p.release(ip);
            }
            return Err(e);
        }
        Ok(format!("{ip}/{len}"))
    }

    /// IPAM ReleaseAddress.
    pub fn docker_release_address(&mut self, pool: &str, addr: &str) -> super::ApiResult<()> {
        let Ok(ip) = addr.split('/').next().unwrap_or_default().parse() else {
            return Ok(());
        };
        let Some(p) = self.docker_pools.get_mut(pool) else {
            return Ok(());
        };
        if !p.used().any(|u| u == ip) {
            return Ok(());
        }
        p.release(ip);
        if let Err(e) = self.save_docker_pools() {
            if let Some(p) = self.docker_pools.get_mut(pool) {
                let _ = p.allocate(Some(ip));
            }
            return Err(e);
        }
        Ok(())
    }

    fn save_docker_pools(&self) -> super::ApiResult<()> {
        let pools = self
            .docker_pools
            .values()
            .map(|p| super::store::DockerPool {
                subnet: p.subnet,
                used: p.used().collect(),
            })
            .collect::<Vec<_>>();
        Ok(self.store.save_docker_pools(&pools)?)
    }

    /// The Docker IPAM pools a previous daemon handed out (Docker keeps
    /// using their ids across a restart of tapnet).
    pub(super) fn load_docker_pools(&mut self) {
        for p in self.store.load_docker_pools() {
            match super::ipam::Pool::new(p.subnet, None, None) {
                Ok(mut pool) => {
                    for ip in p.used {
                        let _ = pool.allocate(Some(ip));
                    }
                    self.docker_pools.insert(p.subnet.to_string(), pool);
                }
                Err(e) => super::log(format!("docker IPAM: pool {}: {e}", p.subnet)),
            }
        }
    }
}
