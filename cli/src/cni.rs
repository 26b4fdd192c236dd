//! The CNI plugin (`tapnet-cni`, CNI spec 1.0/1.1): what Podman,
//! containerd/nerdctl and Kubernetes call to put a container on a tapnet
//! network. The runtime runs it with `CNI_COMMAND` and friends in the
//! environment and the network configuration on stdin; it answers with a
//! result (or an error) as JSON on stdout. The work is the daemon's: ADD
//! is a connect of the runtime's namespace (the daemon creates the TAP in
//! `CNI_NETNS` and configures address and routes: Podman does not apply a
//! result's routes), DEL a disconnect.
//!
//! Configuration (`plugins[]` entry of a conflist):
//! `{"type":"tapnet","network":"NET","socket":"/run/tapnet/tapnet.sock"}`;
//! `network` defaults to the conflist's `name`. Capabilities:
//! `portMappings`, `ips`, `mac`, `aliases` (runtimeConfig); `CNI_ARGS`
//! `IP=`, `MAC=`, `K8S_POD_NAME=` (an alias). A container is named
//! `cni-` and the first 60 characters of its `CNI_CONTAINERID` in tapnet.

use crate::api::{ContainerInfo, EndpointInfo};
use crate::client::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The versions this plugin speaks.
pub const SUPPORTED: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// A CNI error: code (spec section "Error"), message, details.
#[derive(Debug, PartialEq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

// the spec's well-known codes
pub const E_VERSION: u32 = 1;
pub const E_UNSUPPORTED_FIELD: u32 = 2;
pub const E_UNKNOWN_CONTAINER: u32 = 3;
pub const E_ENV: u32 = 4;
pub const E_IO: u32 = 5;
pub const E_DECODE: u32 = 6;
pub const E_CONFIG: u32 = 7;
pub const E_TRY_LATER: u32 = 11;
pub const E_NOT_AVAILABLE: u32 = 50;

fn err(code: u32, msg: impl Into<String>) -> CniError {
    CniError {
        code,
        msg: msg.into(),
        details: String::new(),
    }
}

impl CniError {
    pub fn to_json(&self, version: &str) -> Value {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

/// What the runtime passed in the environment.
#[derive(Debug, Default, Clone)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: BTreeMap<String, String>,
}

impl Env {
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Env {
        let args = get("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Env {
            command: get("CNI_COMMAND").unwrap_or_default(),
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").unwrap_or_default(),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args,
        }
    }

    fn need(&self, what: &str, v: &str) -> Result<(), CniError> {
        if v.is_empty() {
            return Err(err(E_ENV, format!("{what} is not set")));
        }
        Ok(())
    }
}

/// The tapnet container name for a CNI container id.
pub fn container_name(id: &str) -> Result<String, CniError> {
    let ok = !id.is_empty()
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c));
    if !ok {
        return Err(err(
            E_ENV,
            format!("invalid CNI_CONTAINERID {id:?}: letters, digits, '_', '.', '-'"),
        ));
    }
    Ok(format!("cni-{}", &id[..id.len().min(60)]))
}

/// The parts of the network configuration this plugin reads.
#[derive(Debug)]
pub struct Config {
    pub version: String,
    pub network: String,
    pub socket: PathBuf,
    pub ports: Vec<String>,
    pub ips: Vec<String>,
    pub mac: Option<String>,
    pub aliases: Vec<String>,
    pub prev: Option<Value>,
    /// GC: the attachments the runtime still has (container id, ifname).
    pub valid: Option<Vec<(String, String)>>,
    raw: Value,
}

/// Parses the configuration on stdin (total: any bytes give a config or
/// a CNI error).
pub fn parse_config(stdin: &[u8]) -> Result<Config, CniError> {
    let raw: Value = serde_json::from_slice(stdin)
        .map_err(|e| err(E_DECODE, format!("invalid network configuration: {e}")))?;
    if !raw.is_object() {
        return Err(err(
            E_DECODE,
            "the network configuration is not a JSON object",
        ));
    }
    let s = |k: &str| raw.get(k).and_then(Value::as_str).map(String::from);
    let version = s("cniVersion").unwrap_or_else(|| "0.4.0".into());
    if !SUPPORTED.contains(&version.as_str()) {
        return Err(CniError {
            code: E_VERSION,
            msg: format!("unsupported cniVersion {version:?}"),
            details: format!("supported: {}", SUPPORTED.join(", ")),
        });
    }
    let network = s("network").or_else(|| s("name")).ok_or_else(|| {
        err(
            E_CONFIG,
            "no \"network\" (or \"name\") in the configuration",
        )
    })?;
    let socket = s("socket")
        .map(PathBuf::from)
        .unwrap_or_else(crate::client::default_socket);
    let rc = raw.get("runtimeConfig").cloned().unwrap_or(Value::Null);
    let mut ports = Vec::new();
    for m in rc["portMappings"].as_array().into_iter().flatten() {
        let (Some(h), Some(c)) = (m["hostPort"].as_u64(), m["containerPort"].as_u64()) else {
            return Err(err(E_CONFIG, format!("invalid port mapping {m}")));
        };
        let proto = m["protocol"].as_str().unwrap_or("tcp").to_ascii_lowercase();
        let host_ip = m["hostIP"].as_str().filter(|s| !s.is_empty());
        ports.push(match host_ip {
            Some(ip) => format!("{ip}:{h}:{c}/{proto}"),
            None => format!("{h}:{c}/{proto}"),
        });
    }
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    let valid = raw.get("cni.dev/valid-attachments").map(|v| {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    a["containerID"].as_str()?.to_string(),
                    a["ifname"].as_str().unwrap_or("").to_string(),
                ))
            })
            .collect()
    });
    Ok(Config {
        version,
        network,
        socket,
        ports,
        ips: strs(&rc["ips"]),
        mac: rc["mac"].as_str().map(String::from),
        aliases: strs(&rc["aliases"]),
        prev: raw.get("prevResult").cloned().filter(|v| !v.is_null()),
        valid,
        raw,
    })
}

/// A daemon error as a CNI error: an unreachable daemon is "try again
/// later", an unknown network a configuration error.
fn daemon_err(e: anyhow::Error) -> CniError {
    let msg = format!("{e:#}");
    let code =
        if msg.contains("cannot reach the tapnet daemon") || msg.contains("stopped answering") {
            E_TRY_LATER
        } else if msg.contains("no such network") || msg.contains("not found") {
            E_CONFIG
        } else if msg.contains("namespace") {
            E_IO
        } else {
            E_CONFIG
        };
    err(code, msg)
}

/// The result of ADD: ours after what `prev` (chaining) had.
pub fn result(version: &str, env: &Env, ep: &EndpointInfo, prev: Option<&Value>) -> Value {
    let mut interfaces: Vec<Value> = prev
        .and_then(|p| p["interfaces"].as_array().cloned())
        .unwrap_or_default();
    let mut ips: Vec<Value> = prev
        .and_then(|p| p["ips"].as_array().cloned())
        .unwrap_or_default();
    let mut routes: Vec<Value> = prev
        .and_then(|p| p["routes"].as_array().cloned())
        .unwrap_or_default();
    let idx = interfaces.len();
    interfaces.push(json!({"name": ep.ifname, "mac": ep.mac, "sandbox": env.netns}));
    let mut ip = json!({"address": ep.ip, "interface": idx});
    if !ep.gateway.is_empty() {
        ip["gateway"] = json!(ep.gateway);
    }
    if ep.default_route && !ep.gateway.is_empty() {
        // only the route the daemon set (a container's first network)
        routes.push(json!({"dst": "0.0.0.0/0", "gw": ep.gateway}));
    }
    if version == "0.4.0" {
        ip["version"] = json!("4");
    }
    ips.push(ip);
    // a dual-stack network: the IPv6 address, gateway and default route
    if let Some(a6) = &ep.ip6 {
        let mut i6 = json!({"address": a6, "interface": idx});
        if let Some(g6) = &ep.gateway6 {
            i6["gateway"] = json!(g6);
            if ep.default_route {
                routes.push(json!({"dst": "::/0", "gw": g6}));
            }
        }
        if version == "0.4.0" {
            i6["version"] = json!("6");
        }
        ips.push(i6);
    }
    let mut dns = prev.map(|p| p["dns"].clone()).unwrap_or(Value::Null);
    if dns.is_null() && !ep.gateway.is_empty() {
        // the network's resolver answers on its gateway
        dns = json!({"nameservers": [ep.gateway]});
    }
    let mut r =
        json!({"cniVersion": version, "interfaces": interfaces, "ips": ips, "routes": routes});
    if !dns.is_null() {
        r["dns"] = dns;
    }
    r
}

fn endpoint(c: &Client, name: &str, network: &str) -> Result<Option<EndpointInfo>, CniError> {
    let list: Vec<ContainerInfo> = c.get("/containers").map_err(daemon_err)?;
    Ok(list
        .into_iter()
        .find(|x| x.name == name)
        .and_then(|x| x.endpoints.into_iter().find(|e| e.network == network)))
}

/// Runs one command; the JSON to print on success.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Value, CniError> {
    if env.command == "VERSION" {
        let v = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(String::from))
            .filter(|v| SUPPORTED.contains(&v.as_str()))
            .unwrap_or_else(|| "1.1.0".into());
        return Ok(json!({"cniVersion": v, "supportedVersions": SUPPORTED}));
    }
    let cfg = parse_config(stdin)?;
    let client = Client::new(&cfg.socket);
    let net_path = |what: &str| format!("/networks/{}/{what}", cfg.network);
    match env.command.as_str() {
        "ADD" => {
            env.need("CNI_CONTAINERID", &env.container_id)?;
            env.need("CNI_NETNS", &env.netns)?;
            env.need("CNI_IFNAME", &env.ifname)?;
            let name = container_name(&env.container_id)?;
            if !std::path::Path::new(&env.netns).exists() {
                return Err(err(
                    E_IO,
                    format!("network namespace {} does not exist", env.netns),
                ));
            }
            // `IP=` and the `ips` capability may name one address per
            // family (a dual-stack network)
            let bare = |s: &String| s.split('/').next().unwrap_or_default().to_string();
            let asked: Vec<String> = env
                .args
                .get("IP")
                .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
                .unwrap_or_else(|| cfg.ips.clone());
            let ip = asked.iter().find(|s| !s.contains(':')).map(bare);
            let ip6 = asked.iter().find(|s| s.contains(':')).map(bare);
            let mac = env.args.get("MAC").cloned().or(cfg.mac.clone());
            let mut aliases = cfg.aliases.clone();
            if let Some(p) = env.args.get("K8S_POD_NAME").filter(|p| !p.is_empty()) {
                aliases.push(p.clone());
            }
            let req = crate::api::Connect {
                ip6,
                container: name,
                netns: Some(env.netns.clone()),
                ip,
                mtu: cfg.raw["mtu"].as_u64().map(|m| m as u32),
                mac,
                aliases,
                ports: cfg.ports.clone(),
                ifname: Some(env.ifname.clone()),
            };
            let ep: EndpointInfo = client
                .call("POST", &net_path("connect"), Some(&req))
                .map_err(daemon_err)?;
            Ok(result(&cfg.version, env, &ep, cfg.prev.as_ref()))
        }
        "DEL" => {
            env.need("CNI_CONTAINERID", &env.container_id)?;
            let name = container_name(&env.container_id)?;
            let r: anyhow::Result<Value> = client.call(
                "POST",
                &net_path("disconnect"),
                Some(&crate::api::Disconnect { container: name }),
            );
            match r {
                Ok(_) => Ok(Value::Null),
                Err(e) => {
                    let msg = format!("{e:#}");
                    // already gone is done
                    // (the daemon's words for an endpoint or network that
                    // is not there; not any "not found", e.g. a missing
                    // interface, which is a failure)
                    let network_gone = msg.starts_with("network ") && msg.ends_with(" not found");
                    if msg.contains("is not connected to network")
                        || network_gone
                        || msg.contains("no such container")
                    {
                        return Ok(Value::Null);
                    }
                    // no daemon and no namespace: nothing of it is left to
                    // release (a daemon forgets endpoints whose namespace is
                    // gone when it starts)
                    let e = daemon_err(e);
                    if e.code == E_TRY_LATER
                        && (env.netns.is_empty() || !std::path::Path::new(&env.netns).exists())
                    {
                        return Ok(Value::Null);
                    }
                    Err(e)
                }
            }
        }
        "CHECK" => {
            env.need("CNI_CONTAINERID", &env.container_id)?;
            let name = container_name(&env.container_id)?;
            let Some(ep) = endpoint(&client, &name, &cfg.network)? else {
                return Err(err(
                    E_UNKNOWN_CONTAINER,
                    format!(
                        "container {} is not on network {}",
                        env.container_id, cfg.network
                    ),
                ));
            };
            if !env.netns.is_empty() && ep.netns != env.netns {
                return Err(err(
                    E_UNKNOWN_CONTAINER,
                    format!("its endpoint is in {}, not {}", ep.netns, env.netns),
                ));
            }
            if !env.ifname.is_empty() && ep.ifname != env.ifname {
                return Err(err(
                    E_UNKNOWN_CONTAINER,
                    format!("its interface is {}, not {}", ep.ifname, env.ifname),
                ));
            }
            let want: Vec<&str> = cfg
                .prev
                .as_ref()
                .and_then(|p| p["ips"].as_array())
                .into_iter()
                .flatten()
                .filter_map(|i| i["address"].as_str())
                .collect();
            if !want.is_empty() && !want.contains(&ep.ip.as_str()) {
                return Err(err(
                    E_UNKNOWN_CONTAINER,
                    format!(
                        "its address is {}, the result said {}",
                        ep.ip,
                        want.join(", ")
                    ),
                ));
            }
            Ok(Value::Null)
        }
        "STATUS" => {
            let _: Value = client
                .get("/_ping")
                .map_err(|e| err(E_NOT_AVAILABLE, format!("{e:#}")))?;
            let _: Value = client
                .get(&format!("/networks/{}", cfg.network))
                .map_err(|e| err(E_NOT_AVAILABLE, format!("{e:#}")))?;
            Ok(Value::Null)
        }
        "GC" => {
            let Some(valid) = cfg.valid.as_ref() else {
                return Err(err(E_CONFIG, "GC without cni.dev/valid-attachments"));
            };
            let keep: Vec<String> = valid
                .iter()
                .filter_map(|(id, _)| container_name(id).ok())
                .collect();
            let list: Vec<ContainerInfo> = client.get("/containers").map_err(daemon_err)?;
            for c in list {
                let ours = c.name.starts_with("cni-")
                    && c.endpoints.iter().any(|e| e.network == cfg.network);
                if ours && !keep.contains(&c.name) {
                    let r: anyhow::Result<Value> = client.call(
                        "POST",
                        &net_path("disconnect"),
                        Some(&crate::api::Disconnect {
                            container: c.name.clone(),
                        }),
                    );
                    if let Err(e) = r {
                        // a DEL that ran meanwhile did it already
                        let m = format!("{e:#}");
                        if !m.contains("is not connected to network") {
                            return Err(daemon_err(e));
                        }
                    }
                }
            }
            Ok(Value::Null)
        }
        "" => Err(err(E_ENV, "CNI_COMMAND is not set")),
        other => Err(err(E_ENV, format!("unknown CNI_COMMAND {other:?}"))),
    }
}

/// The binary: reads stdin, runs, prints the result or the error; the
/// exit status.
pub fn main() -> i32 {
    use std::io::Read;
    let env = Env::from_vars(|k| std::env::var(k).ok());
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(String::from))
        .unwrap_or_else(|| "1.1.0".into());
    match run(&env, &stdin) {
        Ok(v) => {
            if !v.is_null() {
                println!("{v}");
            }
            0
        }
        Err(e) => {
            println!("{}", e.to_json(&version));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_have_the_spec_codes() {
        assert_eq!(parse_config(b"{").unwrap_err().code, E_DECODE);
        assert_eq!(parse_config(b"[1]").unwrap_err().code, E_DECODE);
        assert_eq!(
            parse_config(br#"{"cniVersion":"9.9.9","network":"n"}"#)
                .unwrap_err()
                .code,
            E_VERSION
        );
        assert_eq!(
            parse_config(br#"{"cniVersion":"1.0.0"}"#).unwrap_err().code,
            E_CONFIG
        );
        let c = parse_config(
            br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[
            {"hostPort":8080,"containerPort":80,"protocol":"tcp"},
            {"hostPort":53,"containerPort":53,"protocol":"UDP","hostIP":"127.0.0.1"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.network, "n");
        assert_eq!(c.ports, ["8080:80/tcp", "127.0.0.1:53:53/udp"]);
        assert_eq!(container_name(&"a".repeat(64)).unwrap().len(), 64);
        assert_eq!(container_name("../x").unwrap_err().code, E_ENV);
    }

    #[test]
    fn chained_results_keep_what_came_before() {
        let env = Env {
            netns: "/run/netns/x".into(),
            ..Default::default()
        };
        let ep = EndpointInfo {
            container: "c".into(),
            network: "n".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth1".into(),
            ip: "10.1.0.2/24".into(),
            ip6: None,
            gateway6: None,
            mac: "02:42:0a:01:00:02".into(),
            gateway: "10.1.0.1".into(),
            mtu: 1500,
            aliases: vec![],
            ports: vec![],
            default_route: true,
        };
        let prev = json!({"interfaces":[{"name":"eth0"}],"ips":[{"address":"10.9.0.2/24","interface":0}],
            "dns":{"nameservers":["9.9.9.9"]}});
        let r = result("1.0.0", &env, &ep, Some(&prev));
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 2);
        assert_eq!(r["ips"][1]["interface"], 1);
        assert_eq!(r["ips"][1]["address"], "10.1.0.2/24");
        assert_eq!(r["dns"]["nameservers"][0], "9.9.9.9");
        assert_eq!(r["routes"][0]["gw"], "10.1.0.1");
        // dual stack: the IPv6 address and default route as well
        let ep6 = EndpointInfo {
            ip6: Some("fd00:1::2/64".into()),
            gateway6: Some("fd00:1::1".into()),
            ..ep
        };
        let r = result("1.0.0", &env, &ep6, None);
        assert_eq!(r["ips"][1]["address"], "fd00:1::2/64");
        assert_eq!(r["ips"][1]["gateway"], "fd00:1::1");
        assert_eq!(r["routes"][1]["dst"], "::/0");
    }
}
