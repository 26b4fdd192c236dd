//! The macvlan and ipvlan drivers: the network's containers appear on a
//! host interface's (the parent's) segment. Each container keeps a TAP on
//! tapnet's datapath; the network's one trunk port, a packet socket on the
//! parent, brings the segment into the switch (see `vswitch::trunk`).
//!
//! - macvlan: each container has its own MAC on the wire; the parent is put
//!   in promiscuous mode while the trunk is open, so frames for those MACs
//!   reach it. Modes: `bridge` (containers also reach each other inside the
//!   switch), `private` (never), `vepa` (only through the segment: an
//!   external switch must send frames back), `passthru` (one container).
//! - ipvlan (`l2`): every container uses the parent's MAC on the wire; the
//!   trunk rewrites it and finds the container by IP on the way in.
//!   `l3`: the same, routed instead of switched (no broadcast crosses; ARP
//!   is answered by tapnet on both sides; the containers' default route is
//!   the interface; see `vswitch`'s `datapath::routed`).
//!
//! The gateway is an external router on the segment: tapnet answers nothing
//! for it, does no NAT and publishes no ports. Container names resolve as
//! on a user-defined bridge, through a resolver at a link-local address of
//! the network's own (see [`resolver_addr`]). `parent=IFACE.VID` puts the
//! network on 802.1Q VLAN VID of IFACE, tagged and untagged by tapnet (no
//! 8021q module needed). One network per parent and VLAN.

use super::*;
use std::net::Ipv4Addr;
use vswitch::{Mac, NetConfig, RoutedConfig, RoutedV6, TrunkConfig, TrunkMode};

/// Where a macvlan or ipvlan network's containers find the resolver that
/// knows their names. The gateway is an external router, so the resolver
/// gets an address of its own: a link-local one (169.254.0.0/16, never
/// routed, so never a LAN host's), derived from the network's id (stable
/// over restarts), reached through a host route on the container's
/// interface. The switch answers it for the network's containers only:
/// frames from the segment never reach it.
pub fn resolver_addr(rec: &NetworkRecord) -> Ipv4Addr {
    // FNV-1a over the id
    let h = rec.id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    let mut a = 1 + ((h >> 8) % 254) as u8;
    let b = 1 + (h % 254) as u8;
    // not 169.254.169.0/23 and 169.254.170.0/24, where clouds put their
    // metadata, DNS and time services
    if (169..=170).contains(&a) {
        a -= 100;
    }
    let mut ip = Ipv4Addr::new(169, 254, a, b);
    // nor inside a (link-local) subnet of the network itself
    if rec.subnet.contains(&ip) {
        ip = Ipv4Addr::new(169, 254, a ^ 0x80, b);
    }
    ip
}

pub struct Macvlan;
pub struct Ipvlan;

/// A parent interface and the VLAN on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub iface: String,
    pub vlan: Option<u16>,
}

impl std::fmt::Display for Parent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.vlan {
            Some(v) => write!(f, "{} (VLAN {v})", self.iface),
            None => write!(f, "{} (untagged)", self.iface),
        }
    }
}

fn iface_exists(name: &str) -> bool {
    std::ffi::CString::new(name)
        .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } != 0)
        .unwrap_or(false)
}

/// The MTU of interface `name` in the daemon's network namespace (sysfs
/// may show another namespace's interfaces, so ask the kernel directly).
fn iface_mtu(name: &str) -> Option<u32> {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 || name.len() >= libc::IFNAMSIZ {
        if fd >= 0 {
            unsafe { libc::close(fd) };
        }
        return None;
    }
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, c) in name.bytes().enumerate() {
        ifr.ifr_name[i] = c as libc::c_char;
    }
    let r = unsafe { libc::ioctl(fd, libc::SIOCGIFMTU, &mut ifr) };
    unsafe { libc::close(fd) };
    (r == 0).then(|| unsafe { ifr.ifr_ifru.ifru_mtu } as u32)
}

/// Parses `parent=IFACE[.VID]` (an interface with the whole name is taken
/// as it is; else `.VID` is a VLAN on IFACE).
pub fn parse_parent(driver: &str, opts: &BTreeMap<String, String>) -> ApiResult<Parent> {
    let Some(p) = opts.get("parent").filter(|p| !p.is_empty()) else {
        return Err(ApiError::bad_request(format!(
            "{driver} networks need a parent interface: -o parent=IFACE[.VLAN]"
        )));
    };
    if iface_exists(p) {
        return Ok(Parent {
            iface: p.clone(),
            vlan: None,
        });
    }
    let (iface, vlan) = match p.rsplit_once('.') {
        Some((i, v)) if !i.is_empty() && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            let vid: u32 = v.parse().unwrap_or(u32::MAX);
            if !(1..=4094).contains(&vid) {
                return Err(ApiError::bad_request(format!(
                    "VLAN id {v} in parent {p} is outside 1-4094"
                )));
            }
            (i, Some(vid as u16))
        }
        _ => (p.as_str(), None),
    };
    if !iface_exists(iface) {
        return Err(ApiError::bad_request(format!(
            "parent interface {iface} does not exist in the daemon's network namespace"
        )));
    }
    Ok(Parent {
        iface: iface.to_string(),
        vlan,
    })
}

/// Common checks: options known, a mode among `modes` (the first is the
/// default, written into the options), the parent free, the MTU within the
/// parent's.
fn check_trunked(
    driver: &str,
    mode_key: &str,
    modes: &[&str],
    rec: &mut NetworkRecord,
    others: &[&NetworkRecord],
) -> ApiResult<()> {
    known_options(driver, &rec.options, &["parent", mode_key])?;
    let parent = parse_parent(driver, &rec.options)?;
    let mode = rec
        .options
        .entry(mode_key.to_string())
        .or_insert_with(|| modes[0].to_string());
    if !modes.contains(&mode.as_str()) {
        return Err(ApiError::bad_request(format!(
            "unknown {mode_key} {mode:?} (known: {})",
            modes.join(", ")
        )));
    }
    if let Some(o) = others.iter().find(|o| {
        (o.driver == "macvlan" || o.driver == "ipvlan")
            && parse_parent(&o.driver, &o.options).is_ok_and(|q| q == parent)
    }) {
        return Err(ApiError::conflict(format!(
            "parent {parent} is already used by {} network {}",
            o.driver, o.name
        )));
    }
    if rec.internal {
        return Err(ApiError::bad_request(format!(
            "--internal does not apply to {driver} networks (their gateway is an external router)"
        )));
    }
    // a VLAN tag does not count against the MTU (802.1Q frames may be
    // 4 bytes longer), as with the kernel's VLAN devices
    if let Some(mtu) = iface_mtu(&parent.iface).filter(|m| rec.mtu > *m) {
        return Err(ApiError::bad_request(format!(
            "MTU {} is larger than the parent {}'s MTU {mtu}",
            rec.mtu, parent.iface
        )));
    }
    Ok(())
}

fn create_trunked(
    p: &Plumbing,
    idx: NetIdx,
    rec: &NetworkRecord,
    shared_mac: bool,
    mode: TrunkMode,
    routed: Option<RoutedConfig>,
) -> Result<Made> {
    // the switch answers the resolver's address (ARP, ping) and hands it
    // DNS; nothing else of a gateway: the real one is on the segment
    let dns = rec.dns_names.then(|| resolver_addr(rec));
    let cfg = NetConfig {
        gateway_ip: dns.unwrap_or(rec.gateway),
        gateway_mac: dns.map(Mac::from_ipv4).unwrap_or(Mac([0; 6])),
        prefix: 32,
        routed: false,
        gateway: dns.is_some(),
        v6: None,
    };
    p.dp.add_network(idx, cfg)?;
    if let Some(ip) = dns {
        // prefix 0: every container address is on the resolver's link
        p.dns_svc.send(dnsd::Event::AddNet(
            idx,
            dnsd::GatewayAddrs {
                ip,
                prefix: 0,
                ip6: None,
                mac: cfg.gateway_mac,
                mtu: rec.mtu,
            },
        ));
    }
    let hosts = super::trunk_hosts(rec);
    p.dp.set_trunk_policy(idx, mode, hosts.clone())?;
    // A parent that is missing (at a restart, say) leaves the network up
    // without its segment: it keeps its name, record and endpoints, and
    // the trunk is opened again at the next start.
    let parent = match parse_parent(&rec.driver, &rec.options) {
        Ok(p) => p,
        Err(e) => {
            return Ok(Made {
                trunk: None,
                down: Some(e.message),
            })
        }
    };
    let (fd, mac, mtu) = match vswitch::trunk::open_trunk(&parent.iface, parent.vlan, !shared_mac) {
        Ok(t) => t,
        Err(e) => {
            return Ok(Made {
                trunk: None,
                down: Some(format!("opening the trunk on {parent}: {e}")),
            })
        }
    };
    let name = match parent.vlan {
        Some(v) => format!("{}.{v}", parent.iface),
        None => parent.iface.clone(),
    };
    let trunk = p.dp.add_trunk(
        idx,
        TrunkConfig {
            name,
            fd,
            mac,
            mtu,
            vlan: parent.vlan,
            shared_mac,
            routed,
        },
    )?;
    // again, now that the trunk is there to take the addresses
    p.dp.set_trunk_policy(idx, mode, hosts)?;
    Ok(Made {
        trunk: Some(trunk),
        down: None,
    })
}

fn delete_trunked(p: &Plumbing, net: &Net) {
    if let Some(t) = net.trunk {
        if let Err(e) = p.dp.remove_port(t, false, super::super::DP_TIMEOUT) {
            super::super::log(format!("network {}: removing its trunk: {e}", net.rec.name));
        }
    }
    if let Err(e) = p.dp.remove_network(net.idx) {
        super::super::log(format!("network {}: {e}", net.rec.name));
    }
    if net.rec.dns_names {
        p.dns_svc.send(dnsd::Event::RemoveNet(net.idx));
    }
}

fn resolver(rec: &NetworkRecord) -> Option<Ipv4Addr> {
    rec.dns_names.then(|| resolver_addr(rec))
}

fn macvlan_mode(rec: &NetworkRecord) -> TrunkMode {
    match rec.options.get("macvlan_mode").map(|s| s.as_str()) {
        Some("private") => TrunkMode::Private,
        Some("vepa") => TrunkMode::Vepa,
        _ => TrunkMode::Bridge,
    }
}

fn set_policy(p: &Plumbing, net: &Net, mode: TrunkMode) {
    let hosts = super::trunk_hosts(&net.rec);
    if let Err(e) = p.dp.set_trunk_policy(net.idx, mode, hosts) {
        super::super::log(format!("network {}: {e}", net.rec.name));
    }
}

fn is_l3(rec: &NetworkRecord) -> bool {
    rec.options.get("ipvlan_mode").map(|s| s.as_str()) == Some("l3")
}

fn no_ports(driver: &str) -> String {
    format!(
        "ports cannot be published on a {driver} network: its containers are reachable directly on the parent's segment"
    )
}

impl NetworkDriver for Macvlan {
    fn name(&self) -> &'static str {
        "macvlan"
    }

    fn check(&self, rec: &mut NetworkRecord, others: &[&NetworkRecord]) -> ApiResult<()> {
        check_trunked(
            "macvlan",
            "macvlan_mode",
            &["bridge", "private", "vepa", "passthru"],
            rec,
            others,
        )
    }

    fn create(&self, p: &Plumbing, idx: NetIdx, rec: &NetworkRecord) -> Result<Made> {
        create_trunked(p, idx, rec, false, macvlan_mode(rec), None)
    }

    fn delete(&self, p: &Plumbing, net: &Net) {
        delete_trunked(p, net)
    }

    fn check_join(&self, net: &Net, req: &EndpointRequest) -> ApiResult<()> {
        if net.rec.options.get("macvlan_mode").map(|s| s.as_str()) == Some("passthru") {
            if let Some(other) = net.rec.endpoints.keys().find(|c| *c != req.container) {
                return Err(ApiError::conflict(format!(
                    "macvlan network {} is in passthru mode and already has its one endpoint ({other})",
                    net.rec.name
                )));
            }
        }
        Ok(())
    }

    fn publishes(&self, _rec: &NetworkRecord) -> std::result::Result<(), String> {
        Err(no_ports("macvlan"))
    }

    fn resolver(&self, rec: &NetworkRecord) -> Option<Ipv4Addr> {
        resolver(rec)
    }

    fn link_routes(&self, rec: &NetworkRecord) -> Vec<Ipv4Addr> {
        resolver(rec).into_iter().collect()
    }

    fn endpoints_changed(&self, p: &Plumbing, net: &Net) {
        set_policy(p, net, macvlan_mode(&net.rec))
    }
}

impl NetworkDriver for Ipvlan {
    fn name(&self) -> &'static str {
        "ipvlan"
    }

    fn check(&self, rec: &mut NetworkRecord, others: &[&NetworkRecord]) -> ApiResult<()> {
        check_trunked("ipvlan", "ipvlan_mode", &["l2", "l3"], rec, others)
    }

    fn create(&self, p: &Plumbing, idx: NetIdx, rec: &NetworkRecord) -> Result<Made> {
        let routed = is_l3(rec).then(|| RoutedConfig {
            gateway: rec.gateway,
            subnet: rec.subnet.network(),
            prefix: rec.subnet.prefix_len(),
            v6: rec.subnet6.zip(rec.gateway6).map(|(s, g)| RoutedV6 {
                gateway: g,
                subnet: s.network(),
                prefix: s.prefix_len(),
            }),
        });
        create_trunked(p, idx, rec, true, TrunkMode::Bridge, routed)
    }

    fn delete(&self, p: &Plumbing, net: &Net) {
        delete_trunked(p, net)
    }

    fn publishes(&self, _rec: &NetworkRecord) -> std::result::Result<(), String> {
        Err(no_ports("ipvlan"))
    }

    fn default_via_gateway(&self, rec: &NetworkRecord) -> bool {
        !is_l3(rec)
    }

    fn resolver(&self, rec: &NetworkRecord) -> Option<Ipv4Addr> {
        resolver(rec)
    }

    fn link_routes(&self, rec: &NetworkRecord) -> Vec<Ipv4Addr> {
        resolver(rec).into_iter().collect()
    }

    fn endpoints_changed(&self, p: &Plumbing, net: &Net) {
        set_policy(p, net, TrunkMode::Bridge)
    }
}
