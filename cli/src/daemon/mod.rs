//! `tapnet daemon`: owns the datapath, the IPAM and the persistent state, and
//! serves the control API.

pub mod dnsd;
pub mod ipam;
pub mod netns;
pub mod publish;
pub mod server;
pub mod socknat;
pub mod store;

use crate::api::*;
use anyhow::{Context, Result};
use ipam::{IpamError, Pool};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use store::{ContainerRecord, EndpointRecord, NetworkRecord, Store};
use vswitch::{Datapath, DatapathConfig, Mac, NetConfig, NetIdx, NetnsRef, PortId};

pub const BRIDGE: &str = "bridge";
const MIN_MTU: u32 = 68;
const MAX_MTU: u32 = 65520;
const DP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub tun_device: Option<PathBuf>,
    pub mac_aging: Duration,
    /// Prefix of the namespaces `tapnet run` creates under /run/netns.
    pub netns_prefix: String,
    pub bufs_per_port: usize,
    pub multishot: bool,
    pub busy_poll_us: u32,
    /// Upstream DNS servers (empty: the host's /etc/resolv.conf).
    pub dns: Vec<String>,
    /// Resolve container names on the default bridge too.
    pub bridge_dns_names: bool,
    pub uplink: Option<UplinkArgs>,
}

/// Root-mode NAT: the host interface and the address tapnet owns on it.
#[derive(Debug, Clone)]
pub struct UplinkArgs {
    pub iface: String,
    pub ip: Ipv4Net,
    pub gateway: std::net::Ipv4Addr,
    pub ports: (u16, u16),
    pub timeouts: nat::Timeouts,
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

struct Net {
    rec: NetworkRecord,
    idx: NetIdx,
    pool: Pool,
    gateway_mac: Mac,
    /// Container -> datapath port of its endpoint.
    ports: BTreeMap<String, PortId>,
    /// Container -> its published ports' listeners.
    published: BTreeMap<String, publish::Published>,
}

impl Net {
    fn summary(&self) -> NetworkSummary {
        NetworkSummary {
            name: self.rec.name.clone(),
            id: self.rec.id.clone(),
            subnet: self.rec.subnet.to_string(),
            gateway: self.rec.gateway.to_string(),
            ip_range: self.rec.ip_range.map(|r| r.to_string()),
            mtu: self.rec.mtu,
            builtin: self.rec.builtin,
            endpoints: self.rec.endpoints.len(),
            dns_names: self.rec.dns_names,
            internal: self.rec.internal,
        }
    }

    fn endpoint_info(&self, container: &str, e: &EndpointRecord) -> EndpointInfo {
        EndpointInfo {
            container: container.to_string(),
            network: self.rec.name.clone(),
            netns: e.netns.display().to_string(),
            ifname: e.ifname.clone(),
            ip: format!("{}/{}", e.ip, self.rec.subnet.prefix_len()),
            mac: e.mac.to_string(),
            gateway: self.rec.gateway.to_string(),
            mtu: e.mtu,
            aliases: e.aliases.clone(),
            ports: e.ports.iter().map(|m| m.to_string()).collect(),
        }
    }

    fn net_config(&self) -> NetConfig {
        NetConfig {
            gateway_ip: self.rec.gateway,
            gateway_mac: self.gateway_mac,
            prefix: self.rec.subnet.prefix_len(),
            routed: !self.rec.internal,
        }
    }
}

pub struct Core {
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

impl Core {
    /// Loads the state, starts the datapath, and re-attaches every endpoint
    /// whose namespace still exists (stale ones are removed).
    pub fn start(cfg: DaemonConfig) -> Result<Core> {
        let store = Store::open(&cfg.state_dir)?;
        let dns_defaults = if cfg.dns.is_empty() {
            dns::upstream::from_resolv_conf(std::path::Path::new("/etc/resolv.conf"))
        } else {
            parse_servers(&cfg.dns).map_err(|e| anyhow::anyhow!(e.message))?
        };
        let (dns_svc, dns_rx) = dnsd::channel();
        let sock = cfg.uplink.is_none().then(socknat::channel);
        let dp = Datapath::start(DatapathConfig {
            aging: cfg.mac_aging,
            bufs_per_port: cfg.bufs_per_port,
            multishot: cfg.multishot,
            busy_poll_us: cfg.busy_poll_us,
            punt: Some(dns_svc.hook()),
            route: sock.as_ref().map(|(s, _)| s.hook()),
            ..Default::default()
        })
        .context("starting the datapath")?;
        let socknat = sock.map(|(s, rx)| {
            tokio::runtime::Handle::current().spawn(socknat::run(rx, s.clone(), dp.injector()));
            log("outbound: socket NAT through the host's own sockets (no --uplink)");
            s
        });
        if let Some(u) = &cfg.uplink {
            let (fd, mac, mtu) = vswitch::uplink::open_packet_socket(&u.iface)
                .with_context(|| format!("opening the uplink {}", u.iface))?;
            let mut nat = nat::NatConfig::new(u.ip.addr());
            nat.ports = u.ports;
            nat.timeouts = u.timeouts;
            dp.set_uplink(vswitch::UplinkConfig {
                name: u.iface.clone(),
                fd,
                mac,
                ip: u.ip.addr(),
                prefix: u.ip.prefix_len(),
                gateway: u.gateway,
                mtu,
                nat,
            })?;
            log(format!(
                "uplink: {} ({mac}), masquerading to {} via {}, ports {}-{}",
                u.iface, u.ip, u.gateway, u.ports.0, u.ports.1
            ));
        }
        let resolver = Arc::new(dns::Resolver::new());
        tokio::runtime::Handle::current().spawn(dnsd::run(
            dns_rx,
            dns_svc.tx.clone(),
            dp.injector(),
            resolver.clone(),
            dns_defaults.clone(),
        ));
        log(format!(
            "dns: upstream servers {}",
            if dns_defaults.is_empty() {
                "none (non-local names get SERVFAIL)".to_string()
            } else {
                dns_defaults
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
        if let Ok(snap) = dp.snapshot(DP_TIMEOUT) {
            log(format!(
                "datapath: io_uring, {} reads, {} buffers per port",
                snap.read_mode,
                cfg.bufs_per_port.clamp(1, 4096).next_power_of_two()
            ));
        }
        let (records, errors) = store.load_all()?;
        for e in errors {
            log(format!("skipping unreadable network state {e}"));
        }
        let containers = store.load_containers()?;
        let mut core = Core {
            cfg,
            store,
            dp,
            resolver,
            dns_svc,
            socknat,
            dns_defaults,
            nets: BTreeMap::new(),
            containers,
        };
        if !records.iter().any(|r| r.name == BRIDGE) {
            let subnet: Ipv4Net = "172.17.0.0/16".parse().expect("valid");
            let rec = NetworkRecord {
                name: BRIDGE.into(),
                id: random_hex(32),
                created: now_secs(),
                subnet,
                gateway: ipam::first_host(&subnet),
                ip_range: None,
                mtu: 1500,
                builtin: true,
                dns_names: false,
                dns: vec![],
                internal: false,
                endpoints: BTreeMap::new(),
            };
            core.store.save(&rec)?;
            core.add_net(rec)?;
        }
        for rec in records {
            let name = rec.name.clone();
            if let Err(e) = core.add_net(rec) {
                log(format!("network {name}: {e:#}"));
            }
        }
        core.restore_endpoints()?;
        let names: Vec<String> = core.nets.keys().cloned().collect();
        for n in names {
            core.dns_sync(&n);
        }
        Ok(core)
    }

    fn add_net(&mut self, mut rec: NetworkRecord) -> Result<()> {
        if rec.builtin {
            // the default bridge resolves names only when the daemon says so
            rec.dns_names = self.cfg.bridge_dns_names;
        }
        let idx = (0..=NetIdx::MAX)
            .find(|i| self.nets.values().all(|n| n.idx != *i))
            .context("too many networks")?;
        let mut pool = Pool::new(rec.subnet, Some(rec.gateway), rec.ip_range)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        rec.endpoints
            .retain(|c, e| match pool.allocate(Some(e.ip)) {
                Ok(_) => true,
                Err(err) => {
                    log(format!(
                        "network {}: dropping endpoint {c}: {err}",
                        rec.name
                    ));
                    false
                }
            });
        let net = Net {
            idx,
            pool,
            gateway_mac: Mac::from_ipv4(rec.gateway),
            ports: BTreeMap::new(),
            published: BTreeMap::new(),
            rec,
        };
        self.dp.add_network(idx, net.net_config())?;
        self.dns_svc.send(dnsd::Event::AddNet {
            net: idx,
            ip: net.rec.gateway,
            prefix: net.rec.subnet.prefix_len(),
            mac: net.gateway_mac,
            mtu: net.rec.mtu,
        });
        if let Some(s) = &self.socknat {
            s.send(socknat::Event::AddNet {
                net: idx,
                ip: net.rec.gateway,
                prefix: net.rec.subnet.prefix_len(),
                mac: net.gateway_mac,
                mtu: net.rec.mtu,
            });
        }
        let name = net.rec.name.clone();
        self.nets.insert(name.clone(), net);
        self.dns_sync(&name);
        Ok(())
    }

    /// Brings the resolver's view of network `name` up to date (names,
    /// aliases, addresses, upstreams): called after every change.
    fn dns_sync(&self, name: &str) {
        let Some(n) = self.nets.get(name) else {
            return;
        };
        let endpoints = n
            .rec
            .endpoints
            .iter()
            .map(|(c, e)| dns::Endpoint {
                container: c.clone(),
                aliases: e.aliases.clone(),
                ip: e.ip,
                dns: self
                    .containers
                    .get(c)
                    .map(|r| parse_servers(&r.dns).unwrap_or_default())
                    .unwrap_or_default(),
            })
            .collect();
        let ups = parse_servers(&n.rec.dns).unwrap_or_default();
        let mut reg = self
            .resolver
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner());
        reg.replace_network(n.idx, &n.rec.name, n.rec.dns_names, ups, endpoints);
    }

    fn restore_endpoints(&mut self) -> Result<()> {
        let names: Vec<String> = self.nets.keys().cloned().collect();
        for n in names {
            let eps: Vec<(String, EndpointRecord)> = self.nets[&n]
                .rec
                .endpoints
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut changed = false;
            for (c, e) in eps {
                let alive = self.containers.contains_key(&c) && netns::netns_alive(&e.netns);
                let r = if alive {
                    self.attach(&n, &c, &e)
                } else {
                    Err(anyhow::anyhow!("namespace {} is gone", e.netns.display()))
                };
                match r {
                    Ok(port) => {
                        log(format!("re-attached {c} to {n} ({})", e.ip));
                        let net = self.nets.get_mut(&n).expect("exists");
                        if !e.ports.is_empty() {
                            match publish::publish(&e.netns, e.ip, &e.ports) {
                                Ok(p) => {
                                    net.published.insert(c.clone(), p);
                                }
                                Err(err) => log(format!("{c}: {err}")),
                            }
                        }
                        net.ports.insert(c, port);
                        let idx = net.idx;
                        self.uplink_forwards(idx, &e, true);
                    }
                    Err(err) if alive => {
                        // keep what is stored: the namespace is still there
                        log(format!(
                            "could not re-attach {c} to {n}: {err:#} (endpoint kept; \
                             disconnect it or restart the daemon to retry)"
                        ));
                    }
                    Err(err) => {
                        log(format!("removing stale endpoint {c} on {n}: {err:#}"));
                        let net = self.nets.get_mut(&n).expect("exists");
                        net.rec.endpoints.remove(&c);
                        net.pool.release(e.ip);
                        changed = true;
                    }
                }
            }
            if changed {
                self.store.save(&self.nets[&n].rec)?;
            }
        }
        // containers whose namespace is gone, or attachments with no endpoint left
        let stale: Vec<String> = self
            .containers
            .iter()
            .filter(|(name, c)| {
                !netns::netns_alive(&c.netns) || (!c.owned && self.endpoints_of(name).is_empty())
            })
            .map(|(n, _)| n.clone())
            .collect();
        if !stale.is_empty() {
            for s in stale {
                log(format!("removing stale container {s}"));
                if let Some(c) = self.containers.remove(&s) {
                    if c.owned {
                        let _ = netns::delete_netns(&c.netns);
                    }
                }
            }
            self.store.save_containers(&self.containers)?;
        }
        Ok(())
    }

    /// Creates or re-opens the endpoint's TAP in its namespace and adds the port.
    fn attach(&self, net: &str, container: &str, e: &EndpointRecord) -> Result<PortId> {
        let n = &self.nets[net];
        let spec = netns::IfSpec {
            ifname: e.ifname.clone(),
            mac: e.mac,
            ip: e.ip,
            prefix: n.rec.subnet.prefix_len(),
            mtu: e.mtu,
            default_gw: e.default_route.then_some(n.rec.gateway),
        };
        let fd = netns::setup_endpoint(&NetnsRef(e.netns.clone()), &spec)?;
        Ok(self.dp.add_port(container, n.idx, e.mtu, fd)?)
    }

    fn net(&self, name: &str) -> ApiResult<&Net> {
        self.nets
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("network {name} not found")))
    }

    fn endpoints_of(&self, container: &str) -> Vec<(&Net, &EndpointRecord)> {
        self.nets
            .values()
            .filter_map(|n| n.rec.endpoints.get(container).map(|e| (n, e)))
            .collect()
    }

    // ---- networks ----

    pub fn create_network(&mut self, req: CreateNetwork) -> ApiResult<NetworkSummary> {
        check_name("network", &req.name)?;
        if self.nets.contains_key(&req.name) {
            return Err(ApiError::conflict(format!(
                "network with name {} already exists",
                req.name
            )));
        }
        let taken: Vec<Ipv4Net> = self.nets.values().map(|n| n.rec.subnet).collect();
        let subnet = match &req.subnet {
            Some(s) => {
                let s = ipam::parse_subnet(s)?;
                if let Some(o) = self
                    .nets
                    .values()
                    .find(|n| ipam::overlaps(&n.rec.subnet, &s))
                {
                    return Err(IpamError::Overlap {
                        subnet: s,
                        network: o.rec.name.clone(),
                        other: o.rec.subnet,
                    }
                    .into());
                }
                s
            }
            None => {
                if req.gateway.is_some() || req.ip_range.is_some() {
                    return Err(ApiError::bad_request(
                        "--gateway and --ip-range need --subnet",
                    ));
                }
                ipam::auto_subnet(&taken)?
            }
        };
        let gateway = req.gateway.as_deref().map(ipam::parse_addr).transpose()?;
        let range = req
            .ip_range
            .as_deref()
            .map(|r| {
                r.parse::<Ipv4Net>()
                    .map_err(|_| IpamError::BadCidr(r.to_string()))
            })
            .transpose()?;
        let pool = Pool::new(subnet, gateway, range)?;
        let mtu = check_mtu(req.mtu.unwrap_or(1500))?;
        parse_servers(&req.dns)?;
        let rec = NetworkRecord {
            name: req.name.clone(),
            id: random_hex(32),
            created: now_secs(),
            subnet,
            gateway: pool.gateway,
            ip_range: range,
            mtu,
            builtin: false,
            dns_names: req.dns_names.unwrap_or(true),
            dns: req.dns.clone(),
            internal: req.internal,
            endpoints: BTreeMap::new(),
        };
        self.store.save(&rec)?;
        if let Err(e) = self.add_net(rec) {
            let _ = self.store.remove(&req.name);
            return Err(e.into());
        }
        log(format!("created network {} ({subnet})", req.name));
        Ok(self.nets[&req.name].summary())
    }

    pub fn list_networks(&self) -> Vec<NetworkSummary> {
        self.nets.values().map(|n| n.summary()).collect()
    }

    pub fn inspect_network(&self, name: &str) -> ApiResult<NetworkInspect> {
        let n = self.net(name)?;
        let snap = self.dp.snapshot(DP_TIMEOUT).map_err(ApiError::internal)?;
        let by_id: BTreeMap<u64, &vswitch::datapath::PortSnapshot> =
            snap.ports.iter().map(|p| (p.id, p)).collect();
        let mut total = vswitch::PortCounters::default();
        let mut endpoints = BTreeMap::new();
        for (c, e) in &n.rec.endpoints {
            let port = n.ports.get(c).copied();
            let ps = port.and_then(|p| by_id.get(&p));
            if let Some(ps) = ps {
                add_counters(&mut total, &ps.counters);
            }
            endpoints.insert(
                c.clone(),
                EndpointInspect {
                    info: n.endpoint_info(c, e),
                    port_id: port,
                    state: ps.map(|p| p.state),
                    counters: ps.map(|p| p.counters),
                },
            );
        }
        let name_of: BTreeMap<PortId, &String> = n.ports.iter().map(|(c, p)| (*p, c)).collect();
        let mac_table = snap
            .macs
            .iter()
            .filter(|m| m.net == n.idx)
            .map(|m| MacEntry {
                mac: m.mac.to_string(),
                endpoint: name_of
                    .get(&m.port)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                port_id: m.port,
                age_ms: m.age_ms,
            })
            .collect();
        Ok(NetworkInspect {
            summary: n.summary(),
            created: n.rec.created,
            gateway_mac: n.gateway_mac.to_string(),
            endpoints,
            mac_table,
            mac_aging_secs: snap.aging_ms / 1000,
            counters: total,
            dns: DnsInspect {
                names: n.rec.dns_names,
                upstreams: if n.rec.dns.is_empty() {
                    self.dns_defaults.iter().map(|s| s.to_string()).collect()
                } else {
                    n.rec.dns.clone()
                },
                stats: self.resolver.stats.snapshot(),
            },
        })
    }

    pub fn remove_network(&mut self, name: &str) -> ApiResult<()> {
        let n = self.net(name)?;
        if n.rec.builtin {
            return Err(ApiError::conflict(format!(
                "{name} is a pre-defined network and cannot be removed"
            )));
        }
        if !n.rec.endpoints.is_empty() {
            let list: Vec<&str> = n.rec.endpoints.keys().map(|s| s.as_str()).collect();
            return Err(ApiError::conflict(format!(
                "network {name} has active endpoints ({}): disconnect them first",
                list.join(", ")
            )));
        }
        let idx = n.idx;
        self.store.remove(name)?;
        self.dp.remove_network(idx).map_err(ApiError::internal)?;
        self.dns_svc.send(dnsd::Event::RemoveNet(idx));
        if let Some(s) = &self.socknat {
            s.send(socknat::Event::RemoveNet(idx));
        }
        self.resolver
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove_network(idx);
        self.nets.remove(name);
        log(format!("removed network {name}"));
        Ok(())
    }

    pub fn prune_networks(&mut self) -> ApiResult<Pruned> {
        let unused: Vec<String> = self
            .nets
            .values()
            .filter(|n| !n.rec.builtin && n.rec.endpoints.is_empty())
            .map(|n| n.rec.name.clone())
            .collect();
        for n in &unused {
            self.remove_network(n)?;
        }
        Ok(Pruned { removed: unused })
    }

    // ---- endpoints ----

    pub fn connect(&mut self, network: &str, req: Connect) -> ApiResult<EndpointInfo> {
        check_name("container", &req.container)?;
        for a in &req.aliases {
            check_name("alias", a)?;
        }
        let n = self.net(network)?;
        if n.rec.endpoints.contains_key(&req.container) {
            return Err(ApiError::conflict(format!(
                "container {} is already connected to network {network}",
                req.container
            )));
        }
        let known = self.containers.get(&req.container).cloned();
        let new_container = match (&req.netns, &known) {
            (Some(ns), Some(c)) if NetnsRef::parse(ns).0 != c.netns => {
                return Err(ApiError::conflict(format!(
                    "container name {} is already in use by namespace {}",
                    req.container,
                    c.netns.display()
                )))
            }
            (_, Some(_)) => None,
            (Some(ns), None) => {
                let path = NetnsRef::parse(ns).0;
                if let Some((name, _)) = self.containers.iter().find(|(_, c)| c.netns == path) {
                    return Err(ApiError::conflict(format!(
                        "namespace {} is already attached as container {name}",
                        path.display()
                    )));
                }
                Some(ContainerRecord {
                    netns: path,
                    owned: false,
                    created: now_secs(),
                    dns: vec![],
                })
            }
            (None, None) => {
                return Err(ApiError::not_found(format!(
                    "no such container: {} (pass --netns to attach a network namespace)",
                    req.container
                )))
            }
        };
        let crec = new_container.clone().or(known).expect("one of them");
        if !netns::netns_alive(&crec.netns) {
            return Err(ApiError::not_found(format!(
                "network namespace {} does not exist",
                crec.netns.display()
            )));
        }
        if let Some(c) = new_container {
            self.containers.insert(req.container.clone(), c);
            self.store.save_containers(&self.containers)?;
        }
        let r = self.connect_inner(network, &req, &crec);
        if r.is_err() && self.endpoints_of(&req.container).is_empty() && !crec.owned {
            self.containers.remove(&req.container);
            let _ = self.store.save_containers(&self.containers);
        }
        r
    }

    fn connect_inner(
        &mut self,
        network: &str,
        req: &Connect,
        crec: &ContainerRecord,
    ) -> ApiResult<EndpointInfo> {
        let others = self.endpoints_of(&req.container);
        let has_default = others.iter().any(|(_, e)| e.default_route);
        let used: Vec<String> = others.iter().map(|(_, e)| e.ifname.clone()).collect();
        let ifname = netns::free_ifname(&NetnsRef(crec.netns.clone()), &used)?;
        let want = req.ip.as_deref().map(ipam::parse_addr).transpose()?;
        let mut maps = Vec::new();
        for spec in &req.ports {
            maps.extend(publish::parse(spec).map_err(ApiError::bad_request)?);
        }
        let n = self.nets.get_mut(network).expect("checked");
        if !maps.is_empty() && n.rec.internal {
            return Err(ApiError::bad_request(format!(
                "network {network} is internal: ports cannot be published"
            )));
        }
        let mtu = check_mtu(req.mtu.unwrap_or(n.rec.mtu))?;
        let ip = n.pool.allocate(want)?;
        // bind the host ports first: a busy one fails before anything exists
        let published = if maps.is_empty() {
            None
        } else {
            match publish::publish(&crec.netns, ip, &maps) {
                Ok(p) => Some(p),
                Err(e) => {
                    n.pool.release(ip);
                    return Err(ApiError::conflict(e));
                }
            }
        };
        let rec = EndpointRecord {
            netns: crec.netns.clone(),
            ifname,
            ip,
            mac: Mac::from_ipv4(ip),
            mtu,
            default_route: !has_default,
            owned_netns: crec.owned,
            aliases: req.aliases.clone(),
            ports: maps,
        };
        let port = match self.attach(network, &req.container, &rec) {
            Ok(p) => p,
            Err(e) => {
                self.nets
                    .get_mut(network)
                    .expect("checked")
                    .pool
                    .release(ip);
                return Err(e.into());
            }
        };
        let n = self.nets.get_mut(network).expect("checked");
        n.rec.endpoints.insert(req.container.clone(), rec.clone());
        n.ports.insert(req.container.clone(), port);
        if let Some(p) = published {
            n.published.insert(req.container.clone(), p);
        }
        let idx = n.idx;
        self.uplink_forwards(idx, &rec, true);
        let n = self.nets.get_mut(network).expect("checked");
        if let Err(e) = self.store.save(&n.rec) {
            n.rec.endpoints.remove(&req.container);
            n.ports.remove(&req.container);
            n.published.remove(&req.container);
            n.pool.release(ip);
            let _ = self.dp.remove_port(port, true, DP_TIMEOUT);
            return Err(e.into());
        }
        log(format!("connected {} to {network} as {ip}", req.container));
        let info = n.endpoint_info(&req.container, &rec);
        self.dns_sync(network);
        Ok(info)
    }

    pub fn disconnect(&mut self, network: &str, container: &str) -> ApiResult<()> {
        let n = self.net(network)?;
        if !n.rec.endpoints.contains_key(container) {
            return Err(ApiError::not_found(format!(
                "container {container} is not connected to network {network}"
            )));
        }
        let n = self.nets.get_mut(network).expect("checked");
        let e = n.rec.endpoints.remove(container).expect("checked");
        if let Err(err) = self.store.save(&n.rec) {
            n.rec.endpoints.insert(container.to_string(), e);
            return Err(err.into());
        }
        n.pool.release(e.ip);
        n.published.remove(container);
        let idx = n.idx;
        self.uplink_forwards(idx, &e, false);
        let n = self.nets.get_mut(network).expect("checked");
        if let Some(port) = n.ports.remove(container) {
            if let Err(err) = self.dp.remove_port(port, true, DP_TIMEOUT) {
                log(format!("removing port of {container}: {err}"));
            }
        }
        log(format!("disconnected {container} from {network}"));
        self.dns_sync(network);
        // an attached (not owned) namespace with no endpoint left is forgotten
        if self.endpoints_of(container).is_empty()
            && self.containers.get(container).is_some_and(|c| !c.owned)
        {
            self.containers.remove(container);
            self.store.save_containers(&self.containers)?;
        }
        Ok(())
    }

    // ---- containers ----

    pub fn create_container(&mut self, req: CreateContainer) -> ApiResult<ContainerInfo> {
        let name = req.name.clone().unwrap_or_else(|| random_hex(12));
        check_name("container", &name)?;
        self.net(&req.network)?;
        if self.containers.contains_key(&name) {
            return Err(ApiError::conflict(format!(
                "container name {name} is already in use"
            )));
        }
        if let Some(m) = req.mtu {
            check_mtu(m)?;
        }
        parse_servers(&req.dns)?;
        for a in &req.aliases {
            check_name("alias", a)?;
        }
        if let Some(ip) = &req.ip {
            let ip = ipam::parse_addr(ip)?;
            let n = self.net(&req.network)?;
            // check before creating anything
            n.pool.clone().allocate(Some(ip))?;
        }
        let nsname = format!("{}{name}", self.cfg.netns_prefix);
        let path = netns::create_netns(&nsname)?;
        self.containers.insert(
            name.clone(),
            ContainerRecord {
                netns: path.clone(),
                owned: true,
                created: now_secs(),
                dns: req.dns.clone(),
            },
        );
        let r = self
            .store
            .save_containers(&self.containers)
            .map_err(ApiError::from)
            .and_then(|_| {
                self.connect(
                    &req.network,
                    Connect {
                        container: name.clone(),
                        netns: None,
                        ip: req.ip.clone(),
                        mtu: req.mtu,
                        aliases: req.aliases.clone(),
                        ports: req.ports.clone(),
                    },
                )
            });
        if let Err(e) = r {
            self.containers.remove(&name);
            let _ = self.store.save_containers(&self.containers);
            let _ = netns::delete_netns(&path);
            return Err(e);
        }
        self.container_info(&name)
    }

    fn container_info(&self, name: &str) -> ApiResult<ContainerInfo> {
        let c = self
            .containers
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no such container: {name}")))?;
        let eps = self.endpoints_of(name);
        // resolv.conf: the gateway's resolver when the first network
        // resolves names (it forwards the rest), else the upstream servers
        // themselves, minus loopback ones the container cannot reach
        let nameservers = match eps.first() {
            Some((n, _)) if n.rec.dns_names => vec![n.rec.gateway.to_string()],
            first => {
                let mut s = parse_servers(&c.dns).unwrap_or_default();
                if s.is_empty() {
                    s = first
                        .map(|(n, _)| parse_servers(&n.rec.dns).unwrap_or_default())
                        .unwrap_or_default();
                }
                if s.is_empty() {
                    s = self.dns_defaults.clone();
                }
                s.iter()
                    .filter(|a| !a.ip().is_loopback() && a.port() == 53)
                    .map(|a| a.ip().to_string())
                    .collect()
            }
        };
        Ok(ContainerInfo {
            name: name.to_string(),
            netns: c.netns.display().to_string(),
            owned: c.owned,
            endpoints: eps
                .into_iter()
                .map(|(n, e)| n.endpoint_info(name, e))
                .collect(),
            nameservers,
        })
    }

    /// Publishes (or withdraws) an endpoint's ports on the uplink address,
    /// as destination NAT in the datapath: clients keep their address.
    fn uplink_forwards(&self, net: NetIdx, e: &EndpointRecord, add: bool) {
        let Some(u) = &self.cfg.uplink else {
            return;
        };
        for m in &e.ports {
            if m.host_ip.is_some_and(|ip| ip != u.ip.addr()) {
                continue;
            }
            let proto = match m.proto {
                publish::Proto::Tcp => nat::PROTO_TCP,
                publish::Proto::Udp => nat::PROTO_UDP,
            };
            let r = if add {
                self.dp.add_forward(
                    proto,
                    m.host_port,
                    nat::Forward {
                        net,
                        ip: e.ip,
                        port: m.ctr_port,
                        mac: e.mac.0,
                    },
                )
            } else {
                self.dp.remove_forward(proto, m.host_port)
            };
            if let Err(err) = r {
                log(format!("uplink port {m}: {err}"));
            }
        }
    }

    /// The uplink, its NAT counters and connection table.
    pub fn nat_info(&self) -> ApiResult<serde_json::Value> {
        let snap = self.dp.snapshot(DP_TIMEOUT).map_err(ApiError::internal)?;
        let port = snap
            .uplink
            .as_ref()
            .and_then(|u| snap.ports.iter().find(|p| p.id == u.port))
            .map(|p| p.counters);
        let idx_name: BTreeMap<NetIdx, String> = self
            .nets
            .values()
            .map(|n| (n.idx, n.rec.name.clone()))
            .collect();
        let published: Vec<serde_json::Value> = self
            .nets
            .values()
            .flat_map(|n| {
                n.rec.endpoints.iter().flat_map(move |(c, e)| {
                    e.ports.iter().map(move |m| {
                        serde_json::json!({
                            "container": c,
                            "network": n.rec.name,
                            "proto": m.proto,
                            "host": format!("{}:{}", m.host_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED), m.host_port),
                            "container_addr": format!("{}:{}", e.ip, m.ctr_port),
                            "listening": n.published.contains_key(c),
                        })
                    })
                })
            })
            .collect();
        let sock = self.socknat.as_ref().map(|s| {
            let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            serde_json::json!({
                "tcp_opened": g(&s.stats.tcp_opened),
                "tcp_refused": g(&s.stats.tcp_refused),
                "udp_flows": g(&s.stats.udp_flows),
                "ping_flows": g(&s.stats.ping_flows),
                "ping_refused": g(&s.stats.ping_refused),
                "dropped": g(&s.stats.dropped),
            })
        });
        let mut v = serde_json::json!({
            "socket_nat": sock,
            "uplink": snap.uplink,
            "uplink_counters": port,
            "published": published,
        });
        if let Some(conns) = v
            .get_mut("uplink")
            .and_then(|u| u.get_mut("connections"))
            .and_then(|c| c.as_array_mut())
        {
            for c in conns {
                let net = c["net"].as_u64().unwrap_or(0) as NetIdx;
                c["network"] = serde_json::json!(idx_name.get(&net));
            }
        }
        Ok(v)
    }

    /// Renames a container everywhere; DNS answers the new name at once.
    pub fn rename_container(&mut self, old: &str, new: &str) -> ApiResult<()> {
        check_name("container", new)?;
        if !self.containers.contains_key(old) {
            return Err(ApiError::not_found(format!("no such container: {old}")));
        }
        if self.containers.contains_key(new) {
            return Err(ApiError::conflict(format!(
                "container name {new} is already in use"
            )));
        }
        let nets: Vec<String> = self
            .endpoints_of(old)
            .iter()
            .map(|(n, _)| n.rec.name.clone())
            .collect();
        let before = self.containers.clone();
        let c = self.containers.remove(old).expect("checked");
        self.containers.insert(new.to_string(), c);
        if let Err(e) = self.store.save_containers(&self.containers) {
            self.containers = before;
            return Err(e.into());
        }
        for name in &nets {
            let n = self.nets.get_mut(name).expect("listed");
            if let Some(e) = n.rec.endpoints.remove(old) {
                n.rec.endpoints.insert(new.to_string(), e);
            }
            if let Some(p) = n.ports.remove(old) {
                n.ports.insert(new.to_string(), p);
            }
            if let Some(p) = n.published.remove(old) {
                n.published.insert(new.to_string(), p);
            }
            if let Err(e) = self.store.save(&n.rec) {
                log(format!("saving network {name} after rename: {e:#}"));
            }
            self.dns_sync(name);
        }
        log(format!("renamed container {old} to {new}"));
        Ok(())
    }

    pub fn list_containers(&self) -> Vec<ContainerInfo> {
        self.containers
            .keys()
            .filter_map(|n| self.container_info(n).ok())
            .collect()
    }

    pub fn remove_container(&mut self, name: &str) -> ApiResult<()> {
        let c = self
            .containers
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no such container: {name}")))?;
        let nets: Vec<String> = self
            .endpoints_of(name)
            .iter()
            .map(|(n, _)| n.rec.name.clone())
            .collect();
        for n in nets {
            self.disconnect(&n, name)?;
        }
        if c.owned {
            netns::delete_netns(&c.netns)?;
        }
        if self.containers.remove(name).is_some() {
            self.store.save_containers(&self.containers)?;
        }
        log(format!("removed container {name}"));
        Ok(())
    }

    /// Stops the datapath; TAP devices stay (persistent) for the next start.
    pub fn shutdown(self) {
        self.dp.shutdown();
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
