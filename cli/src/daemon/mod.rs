//! `tapnet daemon`: owns the datapath, the IPAM and the persistent state, and
//! serves the control API.

pub mod capture;
pub mod cluster;
mod containers;
pub mod dnsd;
pub mod docker;
pub mod driver;
mod endpoints;
pub mod events;
mod global;
pub mod ipam;
mod metrics;
pub mod netns;
mod networks;
pub use networks::plan_network;
pub mod procs;
pub mod publish;
mod reasm6;
pub mod server;
pub mod socknat;
mod startup;
pub mod store;

use crate::api::*;
use anyhow::{Context, Result};
use ipam::{IpamError, Pool};
use ipnet::{Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use store::{ContainerRecord, EndpointRecord, NetworkRecord, Store};
use vswitch::{Datapath, DatapathConfig, Mac, NetIdx, NetnsRef, PortId};

pub const BRIDGE: &str = "bridge";
/// The pre-defined networks without a datapath side: a container on `none`
/// has only `lo`; one on `host` runs in the daemon's network namespace.
pub const NONE: &str = "none";
pub const HOST: &str = "host";
const PSEUDO: [&str; 2] = [HOST, NONE];
const MIN_MTU: u32 = 68;
const MAX_MTU: u32 = 65520;
/// The datapath's busy polling after traffic, with an uplink (see the
/// daemon's --busy-poll-us): one interleaved run of benches/compare.sh
/// (REPS=3) put container-to-container TCP RR p50 at 28.1 us with it
/// against 24.4 us for the kernel bridge (35 us without it, bridge 24.4),
/// throughput unchanged, the daemon at 0.85 cores instead of 0.63 during a
/// TCP stream.
pub const DEFAULT_BUSY_POLL_US: u32 = 50;
const DP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub tun_device: Option<PathBuf>,
    /// Where container namespaces are pinned (/run/netns; rootless: a
    /// directory of the daemon's own mount namespace).
    pub netns_dir: PathBuf,
    pub mac_aging: Duration,
    /// Prefix of the namespaces `tapnet run` creates under /run/netns.
    pub netns_prefix: String,
    pub rx_buffers: usize,
    /// The most MACs one port may have in the table (0: no limit).
    pub max_macs_per_port: u32,
    /// The most flows one container may hold at once in either NAT (the
    /// packet NAT's connections; the socket NAT's TCP, UDP and ping flows,
    /// each a host socket); 0: no limit.
    pub nat_quota: u32,
    /// Entries of the DNS cache of forwarded answers (0: off).
    pub dns_cache: usize,
    pub multishot: bool,
    pub busy_poll_us: u32,
    /// The socket NAT thread's busy polling (0: off).
    pub socknat_busy_poll_us: u32,
    /// Datapath worker threads (queues per container TAP).
    pub datapath_workers: usize,
    /// Upstream DNS servers (empty: the host's /etc/resolv.conf).
    pub dns: Vec<String>,
    /// Resolve container names on the default bridge too.
    pub bridge_dns_names: bool,
    /// IPv6 on the default bridge (`--ipv6`), from this subnet
    /// (`--fixed-cidr-v6`; None: a /64 of the unique local prefix).
    pub bridge_ipv6: bool,
    pub bridge_subnet6: Option<Ipv6Net>,
    pub uplink: Option<UplinkArgs>,
    /// Serve Docker's remote network driver protocol on this socket.
    pub docker_plugin: Option<PathBuf>,
    /// Serve Prometheus metrics (GET /metrics) on this TCP address.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The cluster store and this host's VTEP (overlay networks).
    pub cluster: Option<cluster::ClusterArgs>,
}

/// Root-mode NAT: the host interface and the address tapnet owns on it.
#[derive(Debug, Clone)]
pub struct UplinkArgs {
    pub iface: String,
    pub ip: Ipv4Net,
    pub gateway: std::net::Ipv4Addr,
    /// NAT66: the IPv6 address (CIDR) tapnet owns on the uplink and the
    /// IPv6 next hop.
    pub ip6: Option<ipnet::Ipv6Net>,
    pub gateway6: Option<std::net::Ipv6Addr>,
    pub ports: (u16, u16),
    pub timeouts: nat::Timeouts,
    /// NAT connections per container (0: no limit).
    pub quota: u32,
}

/// An error for the API client: HTTP status and one clear line.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(m: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: m.into(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        ApiError {
            status: 404,
            message: m.into(),
        }
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        ApiError {
            status: 409,
            message: m.into(),
        }
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError {
            status: 500,
            message: e.to_string(),
        }
    }
}

impl From<ipam::Ipam6Error> for ApiError {
    fn from(e: ipam::Ipam6Error) -> Self {
        use ipam::Ipam6Error as E;
        match e {
            E::InUse(_) | E::Overlap { .. } | E::Exhausted(_) | E::NoFreeSubnet(_) => {
                ApiError::conflict(e.to_string())
            }
            _ => ApiError::bad_request(e.to_string()),
        }
    }
}

impl From<IpamError> for ApiError {
    fn from(e: IpamError) -> Self {
        match e {
            IpamError::InUse(_) | IpamError::Overlap { .. } | IpamError::Exhausted(_) => {
                ApiError::conflict(e.to_string())
            }
            _ => ApiError::bad_request(e.to_string()),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        // one line: the context chain joined
        ApiError::internal(format!("{e:#}"))
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

pub struct Net {
    rec: NetworkRecord,
    drv: &'static dyn driver::NetworkDriver,
    idx: NetIdx,
    /// The trunk port its driver made (macvlan, ipvlan).
    trunk: Option<PortId>,
    /// Why it is cut off from its segment, if it is (see `driver::Made`).
    down: Option<String>,
    pool: Pool,
    /// The IPv6 addresses of a dual-stack network.
    pool6: Option<ipam::Pool6>,
    gateway_mac: Mac,
    /// Container -> datapath port of its endpoint.
    ports: BTreeMap<String, PortId>,
    /// Container -> its published ports' listeners.
    published: BTreeMap<String, publish::Published>,
    /// Global networks: the other hosts' endpoints (`HOST/CONTAINER`),
    /// from the cluster store.
    remote: BTreeMap<String, cluster::RemoteEp>,
    /// Global networks: addresses other hosts hold (`ipam/` keys), marked
    /// used in `pool`.
    held: BTreeMap<Ipv4Addr, String>,
    /// Encrypted global networks: the keys, and the store revision they
    /// were read at (for rotation).
    keys: Option<(cluster::KeyRing, i64)>,
    /// The key its tunnel seals with (see `global::program_keys`).
    sealing: Option<u32>,
}

impl Net {
    /// Gives an endpoint's IPv6 address back to the pool.
    fn release6(&mut self, e: &EndpointRecord) {
        if let (Some(p), Some(a)) = (self.pool6.as_mut(), e.ip6) {
            p.release(a);
        }
    }

    fn summary(&self) -> NetworkSummary {
        NetworkSummary {
            name: self.rec.name.clone(),
            id: self.rec.id.clone(),
            driver: self.rec.driver.clone(),
            scope: self.drv.scope().as_str().to_string(),
            options: self.rec.options.clone(),
            subnet: self.rec.subnet.to_string(),
            gateway: self.rec.gateway.to_string(),
            ip_range: self.rec.ip_range.map(|r| r.to_string()),
            ipv6: self.rec.subnet6.is_some(),
            subnet6: self.rec.subnet6.map(|s| s.to_string()),
            gateway6: self.rec.gateway6.map(|g| g.to_string()),
            ip_range6: self.rec.ip_range6.map(|r| r.to_string()),
            mtu: self.rec.mtu,
            builtin: self.rec.builtin,
            endpoints: self.rec.endpoints.len(),
            dns_names: self.rec.dns_names,
            internal: self.rec.internal,
            down: self.down.clone(),
            labels: self.rec.labels.clone(),
            created: self.rec.created,
        }
    }

    fn endpoint_info(&self, container: &str, e: &EndpointRecord) -> EndpointInfo {
        EndpointInfo {
            container: container.to_string(),
            network: self.rec.name.clone(),
            netns: e.netns.display().to_string(),
            ifname: e.ifname.clone(),
            ip: format!("{}/{}", e.ip, self.rec.subnet.prefix_len()),
            ip6: e
                .ip6
                .zip(self.rec.subnet6)
                .map(|(a, s)| format!("{a}/{}", s.prefix_len())),
            mac: e.mac.to_string(),
            gateway: self.rec.gateway.to_string(),
            gateway6: self.rec.gateway6.map(|g| g.to_string()),
            mtu: e.mtu,
            aliases: e.aliases.clone(),
            ports: e.ports.iter().map(|m| m.to_string()).collect(),
            default_route: e.default_route,
        }
    }
}

pub struct Core {
    /// What happens, for `tapnet events` (see [`events`]).
    events: Arc<events::Events>,
    cfg: DaemonConfig,
    store: Store,
    dp: Datapath,
    resolver: Arc<dns::Resolver>,
    dns_svc: dnsd::DnsService,
    /// Outbound through host sockets, when there is no uplink.
    socknat: Option<socknat::SockNat>,
    /// The daemon's upstream servers, for networks without their own.
    dns_defaults: Vec<SocketAddr>,
    nets: BTreeMap<String, Net>,
    containers: BTreeMap<String, ContainerRecord>,
    /// The NAT counters at the last checkpoint (see `nat_checkpoint`).
    nat_mark: Option<[u64; 4]>,
    /// Pools handed out by the Docker IPAM driver, by pool id (subnet).
    docker_pools: BTreeMap<String, ipam::Pool>,
    /// Where networks' IPv6 subnets come from when none is given: a
    /// unique local /48 chosen once and kept in the state directory.
    ula6: Ipv6Net,
    /// The cluster store, with `--cluster-store`.
    cluster: Option<Arc<cluster::Cluster>>,
    /// The sealing sequence numbers' bounds (with a cluster store); their
    /// ceiling is the bound last stored in the state directory (see
    /// [`Core::keep_seal_floor`]).
    seal: Option<Arc<vswitch::seal::SeqBounds>>,
}

fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

fn check_name(kind: &str, s: &str) -> ApiResult<()> {
    if valid_name(s) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid {kind} name {s:?}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )))
    }
}

fn check_mtu(mtu: u32) -> ApiResult<u32> {
    if (MIN_MTU..=MAX_MTU).contains(&mtu) {
        Ok(mtu)
    } else {
        Err(ApiError::bad_request(format!(
            "invalid MTU {mtu}: must be between {MIN_MTU} and {MAX_MTU}"
        )))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_hex(n: usize) -> String {
    use rand::Rng;
    let mut r = rand::rng();
    (0..n)
        .map(|_| format!("{:x}", r.random_range(0..16u8)))
        .collect()
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("tapnet: {msg}");
}

/// One step of a multi-step change, to take back if a later step fails
/// (see `Core::undo`).
enum Undo {
    ReleaseIp {
        net: String,
        ip: std::net::Ipv4Addr,
        container: String,
    },
    ReleaseIp6 {
        net: String,
        ip: std::net::Ipv6Addr,
        container: String,
    },
    RemovePort(PortId),
    Endpoint {
        net: String,
        container: String,
    },
    UplinkForwards {
        net: NetIdx,
        e: EndpointRecord,
    },
}

#[derive(Default)]
struct UndoList(Vec<Undo>);

impl UndoList {
    fn push(&mut self, u: Undo) {
        self.0.push(u);
    }
}

/// A MAC for an endpoint: unicast and not all zero.
fn parse_mac(s: &str) -> ApiResult<Mac> {
    let m: Mac = s
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid MAC address {s:?}")))?;
    if m.is_multicast() {
        return Err(ApiError::bad_request(format!(
            "MAC address {s} is a multicast address: a container needs a unicast one"
        )));
    }
    if m.is_zero() {
        return Err(ApiError::bad_request(format!(
            "MAC address {s} is all zero: a container needs a real one"
        )));
    }
    Ok(m)
}

impl Core {
    /// The parts of the daemon a driver programs.
    fn plumbing(&self) -> driver::Plumbing<'_> {
        driver::Plumbing {
            tun_device: self.cfg.tun_device.as_deref(),
            dp: &self.dp,
            dns_svc: &self.dns_svc,
            socknat: self.socknat.as_ref(),
            vtep: self.cluster.is_some(),
        }
    }
}

fn parse_servers(list: &[String]) -> ApiResult<Vec<SocketAddr>> {
    list.iter()
        .map(|s| dns::upstream::parse_server(s).map_err(ApiError::bad_request))
        .collect()
}

fn add_counters(t: &mut vswitch::PortCounters, c: &vswitch::PortCounters) {
    *t += *c;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("my-net_1.x"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(check_mtu(67).is_err());
        assert!(check_mtu(65521).is_err());
        assert_eq!(check_mtu(9000).unwrap(), 9000);
    }
}
