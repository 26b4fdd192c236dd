//! Network drivers: what a network is made of, in the datapath and around
//! it. The core ([`super::Core`]) owns names, IPAM, state and the order of
//! operations; a driver turns a network record into datapath networks,
//! ports and services, and is told when its endpoints change. A driver
//! holds no state of its own: what it made is kept in the core's `Net`.
//!
//! | operation | when |
//! |---|---|
//! | [`NetworkDriver::check`] | `network create`, before anything exists: options known and valid, no conflict with other networks; may complete the options |
//! | [`NetworkDriver::create`] | after the record is saved, and at every start (restore) |
//! | [`NetworkDriver::delete`] | `network rm`: undo `create` |
//! | [`NetworkDriver::check_join`] | before an endpoint is added |
//! | [`NetworkDriver::join`] | an endpoint's device in its namespace, as a port of the network (also at restore; idempotent) |
//! | [`NetworkDriver::endpoints_changed`] | after endpoints were added or removed |
//!
//! Leaving is the same for every driver (the port is removed and its device
//! deleted), so it is the core's.

mod bridge;
mod macvlan;
pub mod overlay;

use super::store::{EndpointRecord, NetworkRecord};
use super::{dnsd, netns, socknat, ApiError, ApiResult, Net};
use anyhow::Result;
use std::collections::BTreeMap;
use vswitch::{Datapath, NetIdx, NetnsRef, PortId};

pub use bridge::Bridge;
pub use macvlan::{parse_parent, Ipvlan, Macvlan};
pub use overlay::Overlay;

/// Where a network exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// On this host only (state in the local state directory).
    Local,
    /// On every host of a cluster (overlay networks: their state is in
    /// the cluster store).
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Global => "global",
        }
    }
}

/// The daemon's parts a driver programs.
pub struct Plumbing<'a> {
    /// The TUN clone device (None: /dev/net/tun).
    pub tun_device: Option<&'a std::path::Path>,
    pub dp: &'a Datapath,
    pub dns_svc: &'a dnsd::DnsService,
    pub socknat: Option<&'a socknat::SockNat>,
    /// Whether the datapath has a VXLAN endpoint (a cluster store).
    pub vtep: bool,
}

/// What a driver made for a network in [`NetworkDriver::create`].
#[derive(Debug, Default, Clone)]
pub struct Made {
    /// The trunk port on the parent interface (macvlan, ipvlan).
    pub trunk: Option<PortId>,
    /// Why the network is not connected to its segment (a parent that is
    /// missing): it keeps its record and endpoints, and is connected again
    /// at the next start.
    pub down: Option<String>,
}

/// The table of operations every network driver provides (see the module
/// documentation for when each is called).
pub trait NetworkDriver: Sync {
    /// The name `network create -d` takes.
    fn name(&self) -> &'static str;

    fn scope(&self) -> Scope {
        Scope::Local
    }

    /// Checks a new network (one clear line on error) against the existing
    /// ones, and completes its options with their defaults.
    fn check(&self, rec: &mut NetworkRecord, others: &[&NetworkRecord]) -> ApiResult<()>;

    /// Programs network `idx` into the datapath and the services behind
    /// its gateway.
    fn create(&self, p: &Plumbing, idx: NetIdx, rec: &NetworkRecord) -> Result<Made>;

    /// Undoes [`Self::create`] (the network has no endpoints left).
    fn delete(&self, p: &Plumbing, net: &Net);

    /// Refuses an endpoint the network cannot take (before anything is
    /// allocated for it).
    fn check_join(&self, _net: &Net, _req: &EndpointRequest) -> ApiResult<()> {
        Ok(())
    }

    /// Whether published ports (`-p`) apply to this network's endpoints;
    /// `Err` says why not.
    fn publishes(&self, rec: &NetworkRecord) -> std::result::Result<(), String>;

    /// Creates (or re-opens) the endpoint's device inside its namespace and
    /// adds it to the network as a port. Every driver today gives its
    /// endpoints a TAP on tapnet's datapath.
    fn join(&self, p: &Plumbing, net: &Net, container: &str, e: &EndpointRecord) -> Result<PortId> {
        let spec = netns::IfSpec {
            ifname: e.ifname.clone(),
            mac: e.mac,
            ip: e.ip,
            prefix: net.rec.subnet.prefix_len(),
            mtu: e.mtu,
            default_gw: (e.default_route && self.default_via_gateway(&net.rec))
                .then_some(net.rec.gateway),
            default_dev: e.default_route && !self.default_via_gateway(&net.rec),
            link_routes: self.link_routes(&net.rec),
            ip6: e.ip6.zip(net.rec.subnet6).map(|(a, s)| (a, s.prefix_len())),
            default_gw6: net
                .rec
                .gateway6
                .filter(|_| e.has_default6() && self.default_via_gateway(&net.rec)),
            default_dev6: e.has_default6() && !self.default_via_gateway(&net.rec),
        };
        let fds = netns::setup_endpoint(&NetnsRef(e.netns.clone()), &spec, p.tun_device)?;
        let identity = port_security(&net.rec).then_some(vswitch::PortIdentity {
            ip6: e.ip6,
            mac: e.mac,
            ip: e.ip,
        });
        Ok(p.dp.add_port_queues(container, net.idx, e.mtu, fds, identity)?)
    }

    /// Called after the network's endpoints changed (and after restore).
    fn endpoints_changed(&self, _p: &Plumbing, _net: &Net) {}

    /// The address of the resolver that answers the network's container
    /// names (the containers' nameserver), if the network has names.
    fn resolver(&self, rec: &NetworkRecord) -> Option<std::net::Ipv4Addr> {
        rec.dns_names.then_some(rec.gateway)
    }

    /// Whether an endpoint's default route goes through the network's
    /// gateway (else through the interface itself).
    fn default_via_gateway(&self, _rec: &NetworkRecord) -> bool {
        true
    }

    /// Host routes an endpoint needs besides its subnet and default route.
    fn link_routes(&self, _rec: &NetworkRecord) -> Vec<std::net::Ipv4Addr> {
        vec![]
    }
}

/// What an endpoint asks for, for [`NetworkDriver::check_join`].
pub struct EndpointRequest<'a> {
    pub container: &'a str,
}

/// The network's endpoints as its trunk (or tunnel) knows them.
pub fn trunk_hosts(rec: &NetworkRecord) -> Vec<vswitch::trunk::TrunkHost> {
    rec.endpoints
        .values()
        .map(|e| vswitch::trunk::TrunkHost {
            ip: e.ip,
            ip6: e.ip6,
            mac: e.mac,
        })
        .collect()
}

/// The driver called `name`.
pub fn lookup(name: &str) -> ApiResult<&'static dyn NetworkDriver> {
    match name {
        "bridge" => Ok(&Bridge),
        "macvlan" => Ok(&Macvlan),
        "ipvlan" => Ok(&Ipvlan),
        "overlay" => Ok(&Overlay),
        "host" | "null" => Err(ApiError::conflict(format!(
            "only one instance of the {name:?} network is allowed (it is pre-defined)"
        ))),
        _ => Err(ApiError::bad_request(format!(
            "unknown network driver {name:?} (known: bridge, macvlan, ipvlan, overlay)"
        ))),
    }
}

/// Whether the network's containers may only speak as themselves (their
/// own MAC and address): on unless `-o port_security=false`.
pub fn port_security(rec: &NetworkRecord) -> bool {
    rec.options.get(PORT_SECURITY).map(|v| v.as_str()) != Some("false")
}

/// The option every driver takes: `port_security=true|false`.
pub const PORT_SECURITY: &str = "port_security";

/// Refuses options a driver does not know (every driver knows
/// `port_security`): one line naming the first one and the known ones.
pub fn known_options(
    driver: &str,
    opts: &BTreeMap<String, String>,
    known: &[&str],
) -> ApiResult<()> {
    if let Some(v) = opts.get(PORT_SECURITY) {
        if v != "true" && v != "false" {
            return Err(ApiError::bad_request(format!(
                "invalid {PORT_SECURITY} {v:?}: use true or false"
            )));
        }
    }
    let known: Vec<&str> = known.iter().copied().chain([PORT_SECURITY]).collect();
    match opts.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(ApiError::bad_request(format!(
            "unknown option {k:?} for driver {driver} (known: {})",
            known.join(", ")
        ))),
    }
}
