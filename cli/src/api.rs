//! Request and response bodies of the control API (JSON over HTTP/1.1 on a
//! Unix socket), shared by the daemon and the CLI.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use vswitch::{PortCounters, PortState};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CreateNetwork {
    pub name: String,
    /// bridge (default), macvlan, ipvlan.
    #[serde(default)]
    pub driver: Option<String>,
    /// The driver's options (`-o KEY=VALUE`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
    /// Dual stack: an IPv6 subnet too (`--ipv6`; without `subnet6`, a /64
    /// of the daemon's unique local pool).
    #[serde(default)]
    pub ipv6: bool,
    #[serde(default)]
    pub subnet6: Option<String>,
    #[serde(default)]
    pub gateway6: Option<String>,
    #[serde(default)]
    pub ip_range6: Option<String>,
    pub mtu: Option<u32>,
    /// Upstream DNS servers for the network.
    #[serde(default)]
    pub dns: Vec<String>,
    /// Resolve container names (default: yes).
    #[serde(default)]
    pub dns_names: Option<bool>,
    /// No routing beyond the network.
    #[serde(default)]
    pub internal: bool,
    /// The network's id (default: a random one): Docker's network id for
    /// the networks Docker creates through the plugin.
    #[serde(default)]
    pub id: Option<String>,
    /// Metadata (`--label KEY=VALUE`), as Docker's networks have.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Connect {
    pub container: String,
    /// Namespace to attach: a name under /run/netns, a path, or a PID.
    pub netns: Option<String>,
    pub ip: Option<String>,
    /// The IPv6 address on a dual-stack network.
    #[serde(default)]
    pub ip6: Option<String>,
    pub mtu: Option<u32>,
    /// The interface's MAC (default: derived from the address).
    #[serde(default)]
    pub mac: Option<String>,
    /// Network-scoped DNS aliases.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Published ports, `[HOST_IP:]HOST_PORT:CTR_PORT[/proto]`, ranges allowed.
    #[serde(default)]
    pub ports: Vec<String>,
    /// The interface's name in the namespace (default: the lowest free
    /// `ethN`); CNI names it.
    #[serde(default)]
    pub ifname: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Disconnect {
    pub container: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CreateContainer {
    pub name: Option<String>,
    /// A network's name, or `none`, `host`, `container:NAME`.
    pub network: String,
    pub ip: Option<String>,
    #[serde(default)]
    pub ip6: Option<String>,
    pub mtu: Option<u32>,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Upstream DNS servers for this container.
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    /// The `tapnet run` asking: the daemon removes the container when this
    /// process is gone.
    #[serde(default)]
    pub client_pid: Option<u32>,
}

/// The command a `run` started in its container.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ContainerProcess {
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Rename {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkSummary {
    pub name: String,
    pub id: String,
    pub driver: String,
    /// local, or global for networks shared by several hosts.
    pub scope: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    pub subnet: String,
    pub gateway: String,
    pub ip_range: Option<String>,
    /// Dual stack: the IPv6 subnet and gateway.
    #[serde(default)]
    pub ipv6: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range6: Option<String>,
    pub mtu: u32,
    pub builtin: bool,
    pub endpoints: usize,
    /// Containers resolve each other's names.
    pub dns_names: bool,
    /// No routing beyond the network.
    #[serde(default)]
    pub internal: bool,
    /// Why the network is cut off from its segment (a macvlan or ipvlan
    /// parent that was missing at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Unix seconds (0: pre-defined).
    #[serde(default)]
    pub created: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointInfo {
    pub container: String,
    pub network: String,
    pub netns: String,
    pub ifname: String,
    /// Address with prefix length, e.g. 10.88.0.2/24.
    pub ip: String,
    /// IPv6 address with prefix length, on a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    pub mac: String,
    pub gateway: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
    pub mtu: u32,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Published ports, e.g. `0.0.0.0:8080->80/tcp`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// The container's default route goes through this endpoint's
    /// gateway (its first network with one).
    #[serde(default)]
    pub default_route: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointInspect {
    #[serde(flatten)]
    pub info: EndpointInfo,
    pub port_id: Option<u64>,
    pub state: Option<PortState>,
    pub counters: Option<PortCounters>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MacEntry {
    pub mac: String,
    /// Container whose port the MAC was learned on.
    pub endpoint: String,
    pub port_id: u64,
    pub age_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkInspect {
    #[serde(flatten)]
    pub summary: NetworkSummary,
    pub created: u64,
    pub gateway_mac: String,
    pub endpoints: BTreeMap<String, EndpointInspect>,
    pub mac_table: Vec<MacEntry>,
    pub mac_aging_secs: u64,
    /// Sum over the network's ports.
    pub counters: PortCounters,
    pub dns: DnsInspect,
    /// macvlan, ipvlan: the port on the parent interface.
    #[serde(default)]
    pub trunk: Option<TrunkInspect>,
    /// overlay: the VNI, the other hosts' VTEPs and endpoints, the
    /// tunnel's and the VTEP's counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<serde_json::Value>,
    /// With `--datapath-workers` > 1: what each worker (the main one
    /// first) switched itself and handed over, daemon-wide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datapath_workers: Vec<vswitch::datapath::WorkerSnapshot>,
    /// Packet captures running (daemon-wide).
    #[serde(default)]
    pub captures: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrunkInspect {
    pub parent: String,
    pub vlan: Option<u16>,
    pub port_id: Option<u64>,
    pub state: Option<PortState>,
    pub counters: Option<PortCounters>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DnsInspect {
    /// Container names resolve on this network.
    pub names: bool,
    /// Where other names go (this network's, else the daemon's servers).
    pub upstreams: Vec<String>,
    /// The resolver's counters (all networks).
    pub stats: dns::StatsSnapshot,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub name: String,
    #[serde(default)]
    pub id: String,
    pub netns: String,
    /// Its own endpoints (empty), `none`, `host` or `container:NAME`.
    #[serde(default)]
    pub network_mode: String,
    /// Created by tapnet (`run`), deleted with the container.
    pub owned: bool,
    pub endpoints: Vec<EndpointInfo>,
    /// For the container's resolv.conf.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// The namespace is the daemon's (host mode): keep its resolv.conf.
    #[serde(default)]
    pub host_netns: bool,
    /// Things asked for that do not apply (e.g. `-p` with `host`).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pruned {
    pub removed: Vec<String>,
}
