//! Docker-compatible output for the CLI: `network ls`'s columns, filters
//! and `--format` Go templates, and `network inspect`'s JSON with Docker's
//! field names. Pure functions of what the API returns (tapnet's own view
//! stays the API's), so the shapes are unit tested here.
//!
//! Templates run on [`gotmpl`] (a port of Go's text/template) with the
//! functions Docker's CLI adds (`json`, `join`, `split`, `lower`, `upper`,
//! `title`, `pad`, `truncate`, `println`); `table TEMPLATE` prints a header
//! row and aligns the tab-separated cells, as Docker does; the escapes `\t`
//! and `\n` written literally in a format string mean a tab and a newline.

use crate::api::{ContainerInfo, NetworkSummary};
use gotmpl::{Template, Value};
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeMap;

/// What `--format` asked for.
pub enum Output {
    /// The command's own table.
    Table,
    /// JSON.
    Json,
    /// A Go template, run once per item; `table`: a header row first (the
    /// template run on the column titles) and the cells aligned.
    Template { tmpl: Box<Template>, table: bool },
}

impl Output {
    /// Parses `--format`: `table` (or nothing), `json`, `table TEMPLATE`,
    /// or a TEMPLATE. Err: the template's parse error, one line.
    pub fn parse(s: &str) -> Result<Output, String> {
        match s.trim() {
            "" | "table" => Ok(Output::Table),
            "json" => Ok(Output::Json),
            t => {
                let (table, src) = match t.strip_prefix("table ") {
                    Some(rest) => (true, rest.trim()),
                    None => (false, t),
                };
                Ok(Output::Template {
                    tmpl: Box::new(template(src)?),
                    table,
                })
            }
        }
    }
}

/// Compiles a Go template with Docker's extra functions. The escapes `\t`
/// and `\n` written out in the source become a tab and a newline.
pub fn template(src: &str) -> Result<Template, String> {
    let src = src.replace("\\t", "\t").replace("\\n", "\n");
    Template::new("")
        // Docker's templates run on typed values: an unknown field is an
        // error there, not "<no value>"
        .missing_key(gotmpl::MissingKey::Error)
        .func("json", |a| {
            let v = one(a, "json")?;
            Ok(Value::String(to_json(v).to_string().into()))
        })
        .func("join", |a| match a {
            [Value::List(l), sep] => Ok(Value::String(
                l.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(&sep.to_string())
                    .into(),
            )),
            _ => Err(exec_err("join expects a list and a separator")),
        })
        .func("split", |a| match a {
            [s, sep] => Ok(Value::List(
                s.to_string()
                    .split(&sep.to_string())
                    .map(|p| Value::String(p.into()))
                    .collect::<Vec<_>>()
                    .into(),
            )),
            _ => Err(exec_err("split expects a string and a separator")),
        })
        .func("lower", |a| {
            Ok(Value::String(
                one(a, "lower")?.to_string().to_lowercase().into(),
            ))
        })
        .func("upper", |a| {
            Ok(Value::String(
                one(a, "upper")?.to_string().to_uppercase().into(),
            ))
        })
        .func("title", |a| {
            let s = one(a, "title")?.to_string();
            let mut out = String::with_capacity(s.len());
            let mut start = true;
            for c in s.chars() {
                if start {
                    out.extend(c.to_uppercase());
                } else {
                    out.push(c);
                }
                start = !c.is_alphanumeric();
            }
            Ok(Value::String(out.into()))
        })
        .func("truncate", |a| match a {
            [s, n] => {
                let n = n.to_string().parse::<usize>().unwrap_or(usize::MAX);
                Ok(Value::String(
                    s.to_string().chars().take(n).collect::<String>().into(),
                ))
            }
            _ => Err(exec_err("truncate expects a string and a length")),
        })
        .func("pad", |a| match a {
            [s, l, r] => {
                let n = |v: &Value| v.to_string().parse::<usize>().unwrap_or(0).min(1024);
                Ok(Value::String(
                    format!("{}{}{}", " ".repeat(n(l)), s, " ".repeat(n(r))).into(),
                ))
            }
            _ => Err(exec_err("pad expects a string and two widths")),
        })
        .func("println", |a| {
            let parts: Vec<String> = a.iter().map(|v| v.to_string()).collect();
            Ok(Value::String(format!("{}\n", parts.join(" ")).into()))
        })
        .parse(&src)
        .map_err(|e| format!("invalid --format template: {e}"))
}

fn one<'a>(a: &'a [Value], name: &str) -> gotmpl::Result<&'a Value> {
    match a {
        [v] => Ok(v),
        _ => Err(gotmpl::TemplateError::ArgCount {
            name: name.to_string(),
            expected: 1,
            got: a.len(),
        }),
    }
}

fn exec_err(m: &str) -> gotmpl::TemplateError {
    gotmpl::TemplateError::Exec(m.to_string())
}

/// A template value as JSON (what Docker's `json` function prints).
fn to_json(v: &Value) -> Json {
    match v {
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => json!(i),
        Value::Uint(u) => json!(u),
        Value::Float(f) => json!(f),
        Value::String(s) => Json::String(s.to_string()),
        Value::List(l) => Json::Array(l.iter().map(to_json).collect()),
        Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| (k.to_string(), to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        _ => Json::Null,
    }
}

/// Runs `tmpl` on `data`. Err: the execution error, one line.
pub fn render(tmpl: &Template, data: &Json) -> Result<String, String> {
    let v = gotmpl::to_value(data).map_err(|e| format!("--format: {e}"))?;
    tmpl.execute_to_string(&v)
        .map_err(|e| format!("--format: {e}"))
}

/// Prints `rows` (one JSON object per item) as `out` asks; `table_cols`:
/// the command's own table (key, title), `header`: the title of every key
/// a template may use.
pub fn print_rows(
    out: &Output,
    rows: &[Json],
    table_cols: &[(&str, &str)],
    header: &[(&str, &str)],
) -> Result<String, String> {
    let mut lines = Vec::new();
    match out {
        Output::Json => {
            return serde_json::to_string_pretty(rows).map_err(|e| e.to_string());
        }
        Output::Table => {
            lines.push(
                table_cols
                    .iter()
                    .map(|(_, t)| t.to_string())
                    .collect::<Vec<_>>()
                    .join("\t"),
            );
            for r in rows {
                lines.push(
                    table_cols
                        .iter()
                        .map(|(k, _)| r[*k].as_str().unwrap_or_default().to_string())
                        .collect::<Vec<_>>()
                        .join("\t"),
                );
            }
            Ok(align(&lines))
        }
        Output::Template { tmpl, table } => {
            if *table {
                let titles: Map<String, Json> = header
                    .iter()
                    .map(|(k, t)| (k.to_string(), Json::String(t.to_string())))
                    .collect();
                lines.push(render(tmpl, &Json::Object(titles))?);
            }
            for r in rows {
                lines.push(render(tmpl, r)?);
            }
            if *table {
                Ok(align(&lines))
            } else {
                Ok(lines.iter().map(|l| format!("{l}\n")).collect())
            }
        }
    }
}

/// Aligns tab-separated cells as Docker's tabwriter does (every cell but a
/// line's last padded to its column's widest plus 3, at least 10 wide).
fn align(lines: &[String]) -> String {
    let split: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    let mut w: Vec<usize> = Vec::new();
    for cells in &split {
        for (i, c) in cells.iter().enumerate().take(cells.len().saturating_sub(1)) {
            if w.len() <= i {
                w.push(0);
            }
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for cells in &split {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            if i < last {
                let width = (w[i] + 3).max(10);
                out.push_str(&format!("{c:<width$}"));
            } else {
                out.push_str(c);
            }
        }
        out.push('\n');
    }
    out
}

/// `--no-trunc` off: ids are shown by their first 12 characters.
fn short(id: &str, no_trunc: bool) -> &str {
    if no_trunc {
        id
    } else {
        &id[..12.min(id.len())]
    }
}

/// Go's `time.Time.String()` form Docker prints (`2024-05-01 10:00:00
/// +0000 UTC`), from unix seconds; empty for 0 (pre-defined networks).
fn go_time(secs: u64) -> String {
    if secs == 0 {
        return String::new();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} +0000 UTC", s.trim_end_matches('Z').replace('T', " "))
}

/// Docker's `Created` (RFC 3339), from unix seconds.
fn rfc3339(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `network ls`: the keys a template may use and their column titles, the
/// first four being Docker's default columns.
pub const NET_LS_KEYS: &[(&str, &str)] = &[
    ("ID", "NETWORK ID"),
    ("Name", "NAME"),
    ("Driver", "DRIVER"),
    ("Scope", "SCOPE"),
    ("IPv6", "IPV6"),
    ("Internal", "INTERNAL"),
    ("Labels", "LABELS"),
    ("CreatedAt", "CREATED AT"),
    ("Subnet", "SUBNET"),
    ("Gateway", "GATEWAY"),
    ("MTU", "MTU"),
    ("Endpoints", "ENDPOINTS"),
];

/// The default columns, and those `--long` adds.
pub const NET_LS_DEFAULT: &[(&str, &str)] = &[
    ("ID", "NETWORK ID"),
    ("Name", "NAME"),
    ("Driver", "DRIVER"),
    ("Scope", "SCOPE"),
];
pub const NET_LS_LONG: &[(&str, &str)] = &[
    ("ID", "NETWORK ID"),
    ("Name", "NAME"),
    ("Driver", "DRIVER"),
    ("Scope", "SCOPE"),
    ("Subnet", "SUBNET"),
    ("Gateway", "GATEWAY"),
    ("MTU", "MTU"),
    ("Endpoints", "ENDPOINTS"),
];

/// One network as `network ls` shows it (every value a string, as
/// Docker's list formatter gives them).
pub fn net_ls_row(n: &NetworkSummary, no_trunc: bool) -> Json {
    let mut subnet = n.subnet.clone();
    if let Some(s6) = &n.subnet6 {
        subnet = if subnet.is_empty() {
            s6.clone()
        } else {
            format!("{subnet},{s6}")
        };
    }
    json!({
        "ID": short(&n.id, no_trunc),
        "Name": n.name,
        "Driver": n.driver,
        "Scope": n.scope,
        "IPv6": n.ipv6.to_string(),
        "Internal": n.internal.to_string(),
        "Labels": n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
        "CreatedAt": go_time(n.created),
        "Subnet": subnet,
        "Gateway": n.gateway,
        "MTU": if n.mtu == 0 { String::new() } else { n.mtu.to_string() },
        "Endpoints": n.endpoints.to_string(),
    })
}

/// `--filter KEY=VALUE` of `network ls`, as Docker takes them: values of
/// one key are alternatives, different keys must all match.
#[derive(Debug, Default)]
pub struct NetFilter(BTreeMap<String, Vec<String>>);

impl NetFilter {
    /// Err: an unknown key or no `=`, one line.
    pub fn parse(args: &[String]) -> Result<NetFilter, String> {
        let mut f = NetFilter::default();
        for a in args {
            let Some((k, v)) = a.split_once('=') else {
                return Err(format!("bad format of filter (expected name=value): {a}"));
            };
            let k = k.trim().to_lowercase();
            if !["driver", "id", "label", "name", "scope", "type"].contains(&k.as_str()) {
                return Err(format!(
                    "invalid filter '{k}' (driver, id, label, name, scope, type)"
                ));
            }
            if k == "type" && v != "custom" && v != "builtin" {
                return Err(format!("invalid filter: 'type'='{v}' (custom or builtin)"));
            }
            f.0.entry(k).or_default().push(v.to_string());
        }
        Ok(f)
    }

    /// `name` and `id` match any part of the name or id (as Docker's
    /// do), `label` a key (`label=K`) or a key and value (`label=K=V`),
    /// the others the whole value.
    pub fn matches(&self, n: &NetworkSummary) -> bool {
        self.0.iter().all(|(k, vs)| {
            vs.iter().any(|v| match k.as_str() {
                "driver" => n.driver == *v,
                "id" => n.id.contains(v.as_str()),
                "name" => n.name.contains(v.as_str()),
                "scope" => n.scope == *v,
                "type" => (v == "builtin") == n.builtin,
                "label" => match v.split_once('=') {
                    Some((lk, lv)) => n.labels.get(lk).is_some_and(|x| x == lv),
                    None => n.labels.contains_key(v.as_str()),
                },
                _ => false,
            })
        })
    }
}

/// A stable endpoint id for an endpoint that has none of its own: the
/// SHA-256 of the network's and the container's ids, 64 hex digits, as
/// long as Docker's.
fn endpoint_id(net_id: &str, ctr_id: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{net_id}/{ctr_id}").as_bytes(),
    );
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `network inspect`'s JSON in Docker's shape, with tapnet's own view of
/// the network `n` (as the API gives it: counters, MAC table, DNS,
/// workers...) under `Tapnet`. `ctr_ids`: container name -> id (a
/// container unknown there is keyed by its name).
pub fn net_inspect(n: &Json, ctr_ids: &BTreeMap<String, String>) -> Json {
    let str_of = |k: &str| n[k].as_str().unwrap_or_default().to_string();
    let id = str_of("id");
    let mut config = Vec::new();
    for (subnet, range, gw) in [
        ("subnet", "ip_range", "gateway"),
        ("subnet6", "ip_range6", "gateway6"),
    ] {
        let Some(s) = n[subnet].as_str().filter(|s| !s.is_empty()) else {
            continue;
        };
        let mut c = Map::new();
        c.insert("Subnet".into(), json!(s));
        if let Some(r) = n[range].as_str() {
            c.insert("IPRange".into(), json!(r));
        }
        if let Some(g) = n[gw].as_str().filter(|g| !g.is_empty()) {
            c.insert("Gateway".into(), json!(g));
        }
        config.push(Json::Object(c));
    }
    let mut containers = Map::new();
    if let Some(eps) = n["endpoints"].as_object() {
        for (name, e) in eps {
            let cid = ctr_ids.get(name).cloned().unwrap_or_else(|| name.clone());
            containers.insert(
                cid.clone(),
                json!({
                    "Name": name,
                    "EndpointID": endpoint_id(&id, &cid),
                    "MacAddress": e["mac"].as_str().unwrap_or_default(),
                    "IPv4Address": e["ip"].as_str().unwrap_or_default(),
                    "IPv6Address": e["ip6"].as_str().unwrap_or_default(),
                }),
            );
        }
    }
    let obj = |k: &str| match &n[k] {
        Json::Object(m) => Json::Object(m.clone()),
        _ => json!({}),
    };
    json!({
        "Name": str_of("name"),
        "Id": id,
        "Created": rfc3339(n["created"].as_u64().unwrap_or(0)),
        "Scope": str_of("scope"),
        "Driver": str_of("driver"),
        "EnableIPv4": !str_of("subnet").is_empty(),
        "EnableIPv6": n["ipv6"].as_bool().unwrap_or(false),
        "IPAM": {
            "Driver": "default",
            "Options": {},
            "Config": config,
        },
        "Internal": n["internal"].as_bool().unwrap_or(false),
        // any container may join any of tapnet's networks (for overlays,
        // Docker's "attachable")
        "Attachable": str_of("scope") == "global",
        "Ingress": false,
        "ConfigFrom": { "Network": "" },
        "ConfigOnly": false,
        "Containers": containers,
        "Options": obj("options"),
        "Labels": obj("labels"),
        "Tapnet": n,
    })
}

/// `HOST:PORT->CPORT/PROTO` (as tapnet lists published ports) as
/// Docker's `Ports` entry: (`CPORT/PROTO`, HostIp, HostPort).
fn port_entry(p: &str) -> Option<(String, String, String)> {
    let (host, ctr) = p.split_once("->")?;
    let (ip, port) = host.rsplit_once(':')?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    Some((ctr.to_string(), ip.to_string(), port.to_string()))
}

/// `inspect`'s JSON for a container, in the shape of Docker's container
/// inspect as far as the network goes (Id, Created, Name, HostConfig's
/// NetworkMode, NetworkSettings with SandboxKey, Ports and Networks.{net}:
/// IPAddress, IPPrefixLen, Gateway, MacAddress, NetworkID, EndpointID,
/// Aliases, DNSNames, DriverOpts, the IPv6 fields), with the container as
/// tapnet's API gives it under `Tapnet`. `net_ids`: network name -> id.
pub fn ctr_inspect(c: &ContainerInfo, net_ids: &BTreeMap<String, String>) -> Json {
    let mut ports: Map<String, Json> = Map::new();
    let mut networks = Map::new();
    let split = |a: &str| -> (String, u64) {
        match a.split_once('/') {
            Some((ip, len)) => (ip.to_string(), len.parse().unwrap_or(0)),
            None => (a.to_string(), 0),
        }
    };
    for e in &c.endpoints {
        for p in &e.ports {
            if let Some((key, ip, port)) = port_entry(p) {
                let list = ports.entry(key).or_insert_with(|| json!([]));
                if let Some(l) = list.as_array_mut() {
                    l.push(json!({ "HostIp": ip, "HostPort": port }));
                }
            }
        }
        let net_id = net_ids.get(&e.network).cloned().unwrap_or_default();
        let (ip, len) = split(&e.ip);
        let (ip6, len6) = e.ip6.as_deref().map(split).unwrap_or_default();
        let mut names = vec![c.name.clone()];
        names.extend(e.aliases.iter().cloned());
        networks.insert(
            e.network.clone(),
            json!({
                "IPAMConfig": null,
                "Links": null,
                "Aliases": e.aliases,
                "MacAddress": e.mac,
                "DriverOpts": null,
                "NetworkID": net_id,
                "EndpointID": endpoint_id(&net_id, &c.id),
                "Gateway": e.gateway,
                "IPAddress": ip,
                "IPPrefixLen": len,
                "IPv6Gateway": e.gateway6.clone().unwrap_or_default(),
                "GlobalIPv6Address": ip6,
                "GlobalIPv6PrefixLen": len6,
                "DNSNames": names,
            }),
        );
    }
    // host and none: Docker lists the pseudo-network with empty addresses
    if c.network_mode == "host" || c.network_mode == "none" {
        networks.insert(
            c.network_mode.clone(),
            json!({
                "IPAMConfig": null, "Links": null, "Aliases": null, "MacAddress": "",
                "DriverOpts": null,
                "NetworkID": net_ids.get(&c.network_mode).cloned().unwrap_or_default(),
                "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0,
                "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
                "DNSNames": null,
            }),
        );
    }
    // the network it was started on: the one its default route uses
    let mode = if c.network_mode.is_empty() {
        c.endpoints
            .iter()
            .find(|e| e.default_route)
            .or(c.endpoints.first())
            .map(|e| e.network.clone())
            .unwrap_or_else(|| "none".into())
    } else {
        c.network_mode.clone()
    };
    // Docker fills the top-level address fields from the default bridge
    let bridge = c.endpoints.iter().find(|e| e.network == "bridge");
    let (bip, blen) = bridge.map(|e| split(&e.ip)).unwrap_or_default();
    let own = serde_json::to_value(c).unwrap_or(Json::Null);
    json!({
        "Id": c.id,
        "Created": rfc3339(c.created),
        "Name": format!("/{}", c.name),
        "HostConfig": { "NetworkMode": mode },
        "NetworkSettings": {
            "SandboxKey": c.netns,
            "Ports": ports,
            "Gateway": bridge.map(|e| e.gateway.clone()).unwrap_or_default(),
            "IPAddress": bip,
            "IPPrefixLen": blen,
            "MacAddress": bridge.map(|e| e.mac.clone()).unwrap_or_default(),
            "Networks": networks,
        },
        "Tapnet": own,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EndpointInfo, EndpointInspect, NetworkInspect, NetworkSummary};

    fn summary(name: &str, driver: &str) -> NetworkSummary {
        NetworkSummary {
            name: name.into(),
            id: "4b2b8bbd2c1a6f0c9e2d9a1e0f3b5c7d".into(),
            driver: driver.into(),
            scope: "local".into(),
            options: BTreeMap::new(),
            subnet: "10.1.0.0/24".into(),
            gateway: "10.1.0.1".into(),
            ip_range: None,
            ipv6: false,
            subnet6: None,
            gateway6: None,
            ip_range6: None,
            mtu: 1500,
            builtin: false,
            endpoints: 1,
            dns_names: true,
            internal: false,
            down: None,
            labels: [("env".to_string(), "prod".to_string())].into(),
            created: 1_700_000_000,
        }
    }

    /// As the API sends it (and the CLI reads it).
    fn inspect(s: NetworkSummary) -> Json {
        serde_json::to_value(inspect_typed(s)).unwrap()
    }

    fn inspect_typed(s: NetworkSummary) -> NetworkInspect {
        let info = EndpointInfo {
            container: "web".into(),
            network: s.name.clone(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            ip: "10.1.0.2/24".into(),
            ip6: None,
            mac: "02:42:0a:01:00:02".into(),
            gateway: "10.1.0.1".into(),
            gateway6: None,
            mtu: 1500,
            aliases: vec![],
            ports: vec![],
            default_route: true,
        };
        let ep = EndpointInspect {
            info,
            port_id: Some(3),
            state: None,
            counters: None,
        };
        NetworkInspect {
            summary: s,
            created: 1_700_000_000,
            gateway_mac: "02:00:00:00:00:01".into(),
            endpoints: [("web".to_string(), ep)].into(),
            mac_table: vec![],
            mac_aging_secs: 300,
            counters: Default::default(),
            dns: crate::api::DnsInspect {
                names: true,
                upstreams: vec![],
                stats: Default::default(),
            },
            trunk: None,
            overlay: None,
            datapath_workers: vec![],
            captures: 0,
        }
    }

    fn ids() -> BTreeMap<String, String> {
        [("web".to_string(), "0123456789abcdef".to_string())].into()
    }

    #[test]
    fn inspect_templates_as_in_dockers_docs() {
        let v = net_inspect(&inspect(summary("my-net", "bridge")), &ids());
        let run = |t: &str| render(&template(t).unwrap(), &v).unwrap();
        assert_eq!(
            run("{{range .IPAM.Config}}{{.Subnet}}{{end}}"),
            "10.1.0.0/24"
        );
        assert_eq!(
            run("{{.Name}} {{.Driver}} {{.Scope}}"),
            "my-net bridge local"
        );
        assert_eq!(run("{{.Created}}"), "2023-11-14T22:13:20Z");
        assert_eq!(run("{{.EnableIPv6}} {{.Internal}}"), "false false");
        assert_eq!(
            run("{{range $id, $c := .Containers}}{{$c.Name}} {{$c.IPv4Address}} {{$c.MacAddress}}{{end}}"),
            "web 10.1.0.2/24 02:42:0a:01:00:02"
        );
        assert_eq!(run("{{index .Labels \"env\"}}"), "prod");
        // the README's examples
        assert_eq!(
            run("{{range .Containers}}{{.Name}} {{.IPv4Address}}{{\"\\n\"}}{{end}}"),
            "web 10.1.0.2/24\n"
        );
        let c: Json = serde_json::from_str(&run("{{json .Tapnet.counters}}")).unwrap();
        assert_eq!(c["rx_frames"], 0);
        assert_eq!(run("{{.Tapnet.mtu}}"), "1500");
        // {{json .}}: the whole object, one line, that parses back
        let j: Json = serde_json::from_str(&run("{{json .}}")).unwrap();
        assert_eq!(j["IPAM"]["Config"][0]["Gateway"], "10.1.0.1");
        assert_eq!(j["Containers"]["0123456789abcdef"]["Name"], "web");
        assert_eq!(
            run("{{json .IPAM.Config}}"),
            r#"[{"Gateway":"10.1.0.1","Subnet":"10.1.0.0/24"}]"#
        );
        assert_eq!(run("{{join (split .Name \"-\") \",\"}}"), "my,net");
        assert_eq!(run("{{upper .Driver}}/{{title .Name}}"), "BRIDGE/My-Net");
        let id = run("{{range .Containers}}{{.EndpointID}}{{end}}");
        assert_eq!(id.len(), 64, "{id}");
    }

    #[test]
    fn inspect_shape_has_dockers_fields() {
        let mut s = summary("n6", "bridge");
        s.ipv6 = true;
        s.subnet6 = Some("fd00:1::/64".into());
        s.gateway6 = Some("fd00:1::1".into());
        s.ip_range = Some("10.1.0.128/25".into());
        let v = net_inspect(&inspect(s), &BTreeMap::new());
        for k in [
            "Name",
            "Id",
            "Created",
            "Scope",
            "Driver",
            "EnableIPv6",
            "IPAM",
            "Internal",
            "Attachable",
            "Containers",
            "Options",
            "Labels",
            "Tapnet",
        ] {
            assert!(v.get(k).is_some(), "{k} missing: {v}");
        }
        assert_eq!(v["IPAM"]["Config"][0]["IPRange"], "10.1.0.128/25");
        assert_eq!(v["IPAM"]["Config"][1]["Subnet"], "fd00:1::/64");
        // a container without a known id is keyed by its name
        assert_eq!(v["Containers"]["web"]["IPv6Address"], "");
        assert_eq!(v["Tapnet"]["endpoints"]["web"]["port_id"], 3);
    }

    #[test]
    fn ls_formats_as_docker_prints_them() {
        let rows = vec![
            net_ls_row(&summary("bridge", "bridge"), false),
            net_ls_row(&summary("macnet", "macvlan"), false),
        ];
        let t = print_rows(&Output::Table, &rows, NET_LS_DEFAULT, NET_LS_KEYS).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "NETWORK ID     NAME      DRIVER    SCOPE");
        assert_eq!(lines[1], "4b2b8bbd2c1a   bridge    bridge    local");
        assert_eq!(lines[2], "4b2b8bbd2c1a   macnet    macvlan   local");
        let out = Output::parse("{{.ID}}: {{.Driver}}").unwrap();
        let t = print_rows(&out, &rows, NET_LS_DEFAULT, NET_LS_KEYS).unwrap();
        assert_eq!(t, "4b2b8bbd2c1a: bridge\n4b2b8bbd2c1a: macvlan\n");
        let out = Output::parse("table {{.Name}}\\t{{.Driver}}\\t{{.Labels}}").unwrap();
        let t = print_rows(&out, &rows, NET_LS_DEFAULT, NET_LS_KEYS).unwrap();
        assert_eq!(
            t,
            "NAME      DRIVER    LABELS\nbridge    bridge    env=prod\nmacnet    macvlan   env=prod\n"
        );
        let r = &rows[0];
        assert_eq!(r["CreatedAt"], "2023-11-14 22:13:20 +0000 UTC");
        assert_eq!(r["IPv6"], "false");
        assert!(Output::parse("{{.Name").is_err());
        let out = Output::parse("{{.Nope.Deeper}}").unwrap();
        assert!(print_rows(&out, &rows, NET_LS_DEFAULT, NET_LS_KEYS).is_err());
    }

    #[test]
    fn published_ports_as_dockers_ports() {
        let e = |p: &str| port_entry(p).unwrap();
        assert_eq!(
            e("0.0.0.0:8080->80/tcp"),
            ("80/tcp".into(), "0.0.0.0".into(), "8080".into())
        );
        assert_eq!(
            e("[::1]:8080->80/tcp"),
            ("80/tcp".into(), "::1".into(), "8080".into())
        );
        assert_eq!(
            e("127.0.0.1:53->53/udp"),
            ("53/udp".into(), "127.0.0.1".into(), "53".into())
        );
        assert!(port_entry("garbage").is_none());
    }

    #[test]
    fn filters_as_docker_takes_them() {
        let f = |a: &[&str]| NetFilter::parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let br = summary("frontend", "bridge");
        let mut mv = summary("backend", "macvlan");
        mv.labels.clear();
        mv.builtin = true;
        let m = |flt: &NetFilter, n: &NetworkSummary| flt.matches(n);
        assert!(m(&f(&["driver=bridge"]).unwrap(), &br));
        assert!(!m(&f(&["driver=bridge"]).unwrap(), &mv));
        // one key twice: either
        let both = f(&["driver=bridge", "driver=macvlan"]).unwrap();
        assert!(m(&both, &br) && m(&both, &mv));
        // two keys: both
        let and = f(&["driver=bridge", "name=back"]).unwrap();
        assert!(!m(&and, &br) && !m(&and, &mv));
        assert!(m(&f(&["name=end"]).unwrap(), &br) && m(&f(&["name=end"]).unwrap(), &mv));
        assert!(m(&f(&["label=env"]).unwrap(), &br));
        assert!(m(&f(&["label=env=prod"]).unwrap(), &br));
        assert!(!m(&f(&["label=env=dev"]).unwrap(), &br));
        assert!(!m(&f(&["label=env"]).unwrap(), &mv));
        assert!(m(&f(&["id=4b2b8b"]).unwrap(), &br));
        assert!(m(&f(&["type=builtin"]).unwrap(), &mv) && !m(&f(&["type=builtin"]).unwrap(), &br));
        assert!(m(&f(&["type=custom"]).unwrap(), &br));
        assert_eq!(
            f(&["colour=red"]).unwrap_err(),
            "invalid filter 'colour' (driver, id, label, name, scope, type)"
        );
        assert!(f(&["driver"]).is_err());
        assert!(f(&["type=other"]).is_err());
    }
}
