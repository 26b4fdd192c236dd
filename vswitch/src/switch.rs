//! The switching core: ports, networks, counters, and the per-frame decision
//! (learn the source, find where the frame goes). Pure logic with no I/O, so
//! it is unit-tested and benchmarked in-process; the io_uring datapath
//! ([`crate::datapath`]) drives it.

use crate::mac::Mac;
use crate::table::{Learned, MacTable, NetIdx, PortIdx};
use crate::vnet::{VnetHdr, VNET_HDR_LEN};
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_HDR_LEN: usize = wire::eth::HDR_LEN;

/// Per-network settings the datapath needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    pub gateway_ip: Ipv4Addr,
    pub gateway_mac: Mac,
    /// Prefix length of the network's subnet (gateway_ip/prefix).
    pub prefix: u8,
    /// Frames for other networks are routed (masqueraded out the uplink);
    /// false for `--internal` networks.
    pub routed: bool,
    /// The switch answers for the gateway (ARP, ICMP, services behind
    /// it). False where the gateway is an external router on a trunk's
    /// segment (macvlan, ipvlan): frames for it are switched like any other.
    pub gateway: bool,
    /// The network's IPv6 side (dual stack), if it has one.
    pub v6: Option<Net6>,
}

/// A network's IPv6 gateway address and subnet prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net6 {
    pub gateway: Ipv6Addr,
    pub prefix: u8,
}

impl NetConfig {
    /// Whether `ip` is inside this network's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        wire::ipv4::same_subnet(ip, self.gateway_ip, self.prefix)
    }

    /// Whether `ip` is inside this network's IPv6 subnet.
    pub fn contains6(&self, ip: Ipv6Addr) -> bool {
        self.v6
            .is_some_and(|v| wire::ipv6::same_subnet(ip, v.gateway, v.prefix))
    }
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    Runt,
    /// Inconsistent `virtio_net_hdr`.
    BadVnetHdr,
    /// Multicast, all-zero or gateway-owned source MAC.
    BadSrcMac,
    /// Larger than the port's MTU without GSO.
    Oversize,
    /// Destination learned on the port the frame came from.
    SamePort,
    /// Addressed to the gateway but nothing the gateway answers (yet).
    GatewayUnsupported,
    /// Addressed to the gateway with an ARP or IPv4 header that is
    /// truncated or invalid.
    Malformed,
    /// For a service behind the gateway (DNS) that could not take it.
    ServiceBusy,
    /// Routed, but nowhere to go: another tapnet network, an internal
    /// network, no uplink, or the next hop's MAC not known yet.
    NoRoute,
    /// Routed, but the NAT refused it (see the uplink's NAT counters).
    NatFailed,
    /// Ingress port not attached to a network (being removed).
    NoNetwork,
    /// The kernel refused the write to the egress port.
    TxError,
    /// From a trunk, for a MAC that is not on the network: counted as
    /// `filtered`, not as a drop.
    NotOurs,
    /// Between two containers of a network whose trunk mode forbids it
    /// (macvlan `private`).
    Isolated,
    /// Port security: a source MAC, ARP sender or IPv4 source that is not
    /// the endpoint's own, or a VLAN-tagged frame from a container.
    Spoofed,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DropCounters {
    pub runt: u64,
    pub bad_vnet_hdr: u64,
    pub bad_src_mac: u64,
    pub oversize: u64,
    pub same_port: u64,
    pub gateway_unsupported: u64,
    pub malformed: u64,
    pub service_busy: u64,
    pub no_route: u64,
    pub nat_failed: u64,
    pub no_network: u64,
    pub tx_error: u64,
    #[serde(default)]
    pub isolated: u64,
    #[serde(default)]
    pub spoofed: u64,
}

impl DropCounters {
    #[inline]
    pub fn count(&mut self, r: DropReason) {
        let c = match r {
            DropReason::Runt => &mut self.runt,
            DropReason::BadVnetHdr => &mut self.bad_vnet_hdr,
            DropReason::BadSrcMac => &mut self.bad_src_mac,
            DropReason::Oversize => &mut self.oversize,
            DropReason::SamePort => &mut self.same_port,
            DropReason::GatewayUnsupported => &mut self.gateway_unsupported,
            DropReason::Malformed => &mut self.malformed,
            DropReason::ServiceBusy => &mut self.service_busy,
            DropReason::NoRoute => &mut self.no_route,
            DropReason::NatFailed => &mut self.nat_failed,
            DropReason::NoNetwork => &mut self.no_network,
            DropReason::TxError => &mut self.tx_error,
            DropReason::Isolated => &mut self.isolated,
            DropReason::Spoofed => &mut self.spoofed,
            DropReason::NotOurs => return,
        };
        *c += 1;
    }

    pub fn total(&self) -> u64 {
        self.runt
            + self.bad_vnet_hdr
            + self.bad_src_mac
            + self.oversize
            + self.same_port
            + self.gateway_unsupported
            + self.malformed
            + self.service_busy
            + self.no_route
            + self.nat_failed
            + self.no_network
            + self.tx_error
            + self.isolated
            + self.spoofed
    }
}

impl std::ops::AddAssign for DropCounters {
    fn add_assign(&mut self, o: DropCounters) {
        self.runt += o.runt;
        self.bad_vnet_hdr += o.bad_vnet_hdr;
        self.bad_src_mac += o.bad_src_mac;
        self.oversize += o.oversize;
        self.same_port += o.same_port;
        self.gateway_unsupported += o.gateway_unsupported;
        self.malformed += o.malformed;
        self.service_busy += o.service_busy;
        self.no_route += o.no_route;
        self.nat_failed += o.nat_failed;
        self.no_network += o.no_network;
        self.tx_error += o.tx_error;
        self.isolated += o.isolated;
        self.spoofed += o.spoofed;
    }
}

/// Per-port counters. Bytes are Ethernet bytes (without the vnet header);
/// a GSO super-frame counts as one frame.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames received that went to every other port of the network.
    pub rx_flooded: u64,
    /// Frames answered by the gateway (ARP, ICMP echo).
    pub gateway_replies: u64,
    /// Frames handed to the service behind the gateway (DNS).
    pub punted: u64,
    /// MACs first seen on this port.
    pub macs_learned: u64,
    /// MACs that moved to this port from another one.
    pub macs_moved_in: u64,
    /// Frames from a trunk's segment not addressed to this network (the
    /// parent interface sees the whole segment): ignored, not errors.
    #[serde(default)]
    pub filtered: u64,
    /// New source MACs not learned: the port already had its share.
    #[serde(default)]
    pub mac_limit: u64,
    pub drops: DropCounters,
}

impl std::ops::AddAssign for PortCounters {
    /// Sums counters (e.g. over a network's ports).
    fn add_assign(&mut self, o: PortCounters) {
        self.rx_frames += o.rx_frames;
        self.rx_bytes += o.rx_bytes;
        self.tx_frames += o.tx_frames;
        self.tx_bytes += o.tx_bytes;
        self.rx_flooded += o.rx_flooded;
        self.gateway_replies += o.gateway_replies;
        self.punted += o.punted;
        self.macs_learned += o.macs_learned;
        self.macs_moved_in += o.macs_moved_in;
        self.filtered += o.filtered;
        self.mac_limit += o.mac_limit;
        self.drops += o.drops;
    }
}

/// A port's class: it decides how frames from and to the port are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    /// A container's TAP device.
    Tap,
    /// A packet socket on a host interface that carries one network's
    /// frames to and from that interface's segment (macvlan, ipvlan).
    Trunk,
    /// The routed uplink (NAT); in no network's flood list.
    Uplink,
    /// A network's VXLAN tunnel (overlay): its network's trunk, whose
    /// frames are encapsulated to other hosts (see `datapath::tunnel`).
    Tunnel,
    /// The VXLAN endpoint's socket, shared by every tunnel; in no
    /// network (its datagrams are dispatched by VNI).
    Vtep,
}

/// How the TAP ports of a network with a trunk relate to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrunkMode {
    /// Containers reach each other inside the switch (macvlan bridge and
    /// passthru, ipvlan).
    #[default]
    Bridge,
    /// Containers reach only the trunk, never each other (macvlan private).
    Private,
    /// Everything from a container leaves through the trunk; an external
    /// switch may send it back (macvlan vepa).
    Vepa,
}

/// Who a container's port may speak as (port security): its own MAC and
/// IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortIdentity {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    /// Its IPv6 address on a dual-stack network.
    pub ip6: Option<Ipv6Addr>,
}

impl PortIdentity {
    /// IPv6 (`ip`: from the IPv6 header on): a source that is its own
    /// address or a link-local one, or `::` for duplicate address probes
    /// and MLD reports only; and neighbour discovery that speaks only for
    /// itself, as ARP must (an advertisement's target is its own address
    /// or its EUI-64 link-local one, link-layer options carry its own MAC;
    /// no router advertisements or redirects: a container is no router).
    fn allows6(&self, ip: &[u8]) -> bool {
        use wire::{icmpv6, ipv6};
        let Some(h) = ipv6::Header::new(ip) else {
            return true; // truncated: nobody takes it for IPv6
        };
        let src = h.src();
        let icmp = (h.next_header() == ipv6::PROTO_ICMPV6)
            .then(|| &ip[ipv6::HDR_LEN..])
            .filter(|m| !m.is_empty());
        let ty = icmp.map(|m| m[icmpv6::TYPE]);
        if src.is_unspecified() {
            // MLD reports come behind a hop-by-hop header
            return h.next_header() == 0 || ty == Some(icmpv6::NEIGHBOR_SOLICIT);
        }
        if Some(src) != self.ip6 && !ipv6::is_link_local(src) {
            return false;
        }
        let Some(m) = icmp else {
            return true;
        };
        match m[icmpv6::TYPE] {
            134 | 137 => false,
            icmpv6::NEIGHBOR_ADVERT | icmpv6::NEIGHBOR_SOLICIT => {
                let Some(t) = m.get(icmpv6::ND_TARGET..icmpv6::ND_TARGET + 16) else {
                    return false;
                };
                if m[icmpv6::TYPE] == icmpv6::NEIGHBOR_ADVERT
                    && self.ip6.is_none_or(|a| t != a.octets())
                    && t != self.link_local().octets()
                {
                    return false;
                }
                // every link-layer address option is its own MAC
                let mut opts = &m[icmpv6::ND_LEN.min(m.len())..];
                while opts.len() >= 8 {
                    let len = opts[1] as usize * 8;
                    if len == 0 || len > opts.len() {
                        return false;
                    }
                    if matches!(opts[0], icmpv6::OPT_SLLA | icmpv6::OPT_TLLA)
                        && opts[2..8] != self.mac.0
                    {
                        return false;
                    }
                    opts = &opts[len..];
                }
                true
            }
            _ => true,
        }
    }

    /// The EUI-64 link-local address of its MAC (what Linux gives an
    /// interface by default).
    pub fn link_local(&self) -> Ipv6Addr {
        wire::ipv6::link_local(self.mac.0)
    }

    /// Whether `frame` (Ethernet) speaks only as this identity: its source
    /// MAC; an Ethernet/IPv4 ARP's sender MAC and address (0.0.0.0 allowed:
    /// probes); an IPv4 source (0.0.0.0 allowed: DHCP-style requests); an
    /// IPv6 source (its own, link-local or `::`); no
    /// 802.1Q/802.1ad tag (that would hop onto a trunk's VLANs).
    #[inline]
    pub fn allows(&self, frame: &[u8]) -> bool {
        use wire::eth;
        if frame[eth::SRC..eth::SRC + 6] != self.mac.0 {
            return false;
        }
        let own = |a: &[u8]| a == self.ip.octets() || a == [0; 4];
        match wire::eth::ethertype(frame) {
            Some(eth::ETHERTYPE_IPV4) => {
                let ip = &frame[eth::HDR_LEN..];
                match ip.get(wire::ipv4::SRC..wire::ipv4::SRC + 4) {
                    None => true, // truncated: nobody takes it for IPv4
                    Some(s) if s == self.ip.octets() => true,
                    // 0.0.0.0 only for a DHCP request (UDP 68 -> 67)
                    Some([0, 0, 0, 0]) => {
                        let l4 = (ip[0] & 0x0f) as usize * 4;
                        ip[wire::ipv4::PROTOCOL] == wire::ipv4::PROTO_UDP
                            && ip.get(l4..l4 + 4) == Some(&[0, 68, 0, 67][..])
                    }
                    Some(_) => false,
                }
            }
            Some(eth::ETHERTYPE_ARP) => match wire::arp::Arp::new(&frame[eth::HDR_LEN..]) {
                Some(a) => a.sender_mac() == self.mac.0 && own(&a.sender_ip().octets()),
                None => true, // not Ethernet/IPv4 ARP: nobody takes it as such
            },
            Some(eth::ETHERTYPE_IPV6) => self.allows6(&frame[eth::HDR_LEN..]),
            Some(eth::ETHERTYPE_VLAN) | Some([0x88, 0xa8]) => false,
            _ => true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SwPort {
    pub kind: PortKind,
    /// Port security: what it may speak as (None: unchecked).
    pub identity: Option<PortIdentity>,
    pub net: NetIdx,
    /// IP MTU of the port; non-GSO frames above MTU + 18 are dropped.
    pub mtu: u32,
    pub counters: PortCounters,
}

#[derive(Debug, Clone)]
pub struct SwNet {
    pub cfg: NetConfig,
    /// Ports of this network, flooding targets.
    pub ports: Vec<PortIdx>,
    /// The network's trunk port, if it has one.
    pub trunk: Option<PortIdx>,
    pub trunk_mode: TrunkMode,
    /// The MACs of the network's endpoints: from the trunk, only frames
    /// for these (and broadcast, multicast) come in, and these are never
    /// learned on the trunk.
    pub hosts: FxHashSet<Mac>,
}

/// Where a received frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Drop(DropReason),
    Unicast(PortIdx),
    /// To every other port of the ingress port's network.
    Flood(NetIdx),
    /// To every port of the network but the ingress one and this one (a
    /// container's broadcast that an external switch sent back).
    FloodExcept(NetIdx, PortIdx),
    /// To the network's router port (gateway).
    Gateway(NetIdx),
}

pub struct Switch {
    pub table: MacTable,
    ports: Vec<Option<SwPort>>,
    nets: Vec<Option<SwNet>>,
}

impl Switch {
    pub fn new(aging_ms: u64, max_macs: usize) -> Self {
        Switch {
            table: MacTable::new(aging_ms, max_macs),
            ports: Vec::new(),
            nets: Vec::new(),
        }
    }

    pub fn add_network(&mut self, net: NetIdx, cfg: NetConfig) {
        let i = net as usize;
        if self.nets.len() <= i {
            self.nets.resize(i + 1, None);
        }
        match &mut self.nets[i] {
            Some(n) => n.cfg = cfg,
            slot @ None => {
                *slot = Some(SwNet {
                    cfg,
                    ports: Vec::new(),
                    trunk: None,
                    trunk_mode: TrunkMode::Bridge,
                    hosts: FxHashSet::default(),
                })
            }
        }
    }

    /// Removes a network; its ports stay but are detached (their frames are
    /// dropped as `no_network`).
    pub fn remove_network(&mut self, net: NetIdx) {
        if let Some(slot) = self.nets.get_mut(net as usize) {
            *slot = None;
        }
        self.table.remove_net(net);
    }

    /// Every network.
    pub fn networks(&self) -> impl Iterator<Item = (NetIdx, &SwNet)> {
        self.nets
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i as NetIdx, n)))
    }

    pub fn network(&self, net: NetIdx) -> Option<&SwNet> {
        self.nets.get(net as usize).and_then(|n| n.as_ref())
    }

    /// Adds a TAP port in the first free slot and returns its index.
    pub fn add_port(&mut self, net: NetIdx, mtu: u32) -> PortIdx {
        self.add_port_kind(PortKind::Tap, net, mtu)
    }

    /// Sets (or clears) what a port may speak as.
    pub fn set_identity(&mut self, port: PortIdx, id: Option<PortIdentity>) {
        if let Some(p) = self.port_mut(port) {
            p.identity = id;
        }
    }

    /// Sets how the network's TAP ports reach each other and which MACs
    /// its trunk lets in.
    pub fn set_trunk_policy(&mut self, net: NetIdx, mode: TrunkMode, hosts: &[Mac]) {
        if let Some(Some(n)) = self.nets.get_mut(net as usize) {
            n.trunk_mode = mode;
            n.hosts = hosts.iter().copied().collect();
        }
    }

    /// Adds a port of any class. A trunk becomes its network's trunk (one
    /// per network: a second one replaces the first as the trunk); an
    /// uplink joins no flood list.
    pub fn add_port_kind(&mut self, kind: PortKind, net: NetIdx, mtu: u32) -> PortIdx {
        let p = SwPort {
            kind,
            identity: None,
            net,
            mtu,
            counters: PortCounters::default(),
        };
        let idx = match self.ports.iter().position(|p| p.is_none()) {
            Some(i) => {
                self.ports[i] = Some(p);
                i
            }
            None => {
                self.ports.push(Some(p));
                self.ports.len() - 1
            }
        } as PortIdx;
        if !matches!(kind, PortKind::Uplink | PortKind::Vtep) {
            if let Some(Some(n)) = self.nets.get_mut(net as usize) {
                n.ports.push(idx);
                if matches!(kind, PortKind::Trunk | PortKind::Tunnel) {
                    n.trunk = Some(idx);
                }
            }
        }
        idx
    }

    /// Takes the port out of its network's flood list and forgets its MACs;
    /// the slot stays allocated (counters readable) until [`Self::free_port`].
    pub fn detach_port(&mut self, port: PortIdx) {
        if let Some(Some(p)) = self.ports.get(port as usize) {
            let net = p.net;
            if let Some(Some(n)) = self.nets.get_mut(net as usize) {
                n.ports.retain(|&q| q != port);
                if n.trunk == Some(port) {
                    n.trunk = None;
                }
            }
        }
        self.table.remove_port(port);
    }

    pub fn free_port(&mut self, port: PortIdx) -> Option<SwPort> {
        self.detach_port(port);
        self.ports.get_mut(port as usize).and_then(|p| p.take())
    }

    #[inline]
    pub fn port(&self, port: PortIdx) -> Option<&SwPort> {
        self.ports.get(port as usize).and_then(|p| p.as_ref())
    }

    #[inline]
    pub fn port_mut(&mut self, port: PortIdx) -> Option<&mut SwPort> {
        self.ports.get_mut(port as usize).and_then(|p| p.as_mut())
    }

    #[inline]
    pub fn count_drop(&mut self, port: PortIdx, r: DropReason) {
        if let Some(p) = self.port_mut(port) {
            p.counters.drops.count(r);
        }
    }

    #[inline]
    pub fn count_tx(&mut self, port: PortIdx, bytes: usize) {
        if let Some(p) = self.port_mut(port) {
            p.counters.tx_frames += 1;
            p.counters.tx_bytes += bytes as u64;
        }
    }

    /// Decides where a frame received on `in_port` goes. `buf` is the vnet
    /// header followed by the Ethernet frame. Learns the source MAC and
    /// updates the ingress port's rx and drop counters.
    #[inline]
    /// The checks of [`Self::decide`] that do not depend on addresses (see
    /// `admit_inner`), for frames handled outside the switch (a routed
    /// segment); counts the frame as received, or the drop.
    pub fn admit(&mut self, in_port: PortIdx, buf: &[u8]) -> Result<(), DropReason> {
        let Some(p) = self
            .ports
            .get_mut(in_port as usize)
            .and_then(|p| p.as_mut())
        else {
            return Err(DropReason::NoNetwork);
        };
        let r = admit_inner(p, buf);
        if let Err(e) = r {
            p.counters.drops.count(e);
        }
        r
    }

    pub fn decide(&mut self, in_port: PortIdx, buf: &[u8], now: u64) -> Decision {
        let Some(p) = self
            .ports
            .get_mut(in_port as usize)
            .and_then(|p| p.as_mut())
        else {
            return Decision::Drop(DropReason::NoNetwork);
        };
        let d = decide_inner(p, in_port, &mut self.table, &self.nets, buf, now);
        match d {
            Decision::Drop(DropReason::NotOurs) => p.counters.filtered += 1,
            Decision::Drop(r) => p.counters.drops.count(r),
            Decision::Flood(_) | Decision::FloodExcept(..) => p.counters.rx_flooded += 1,
            _ => {}
        }
        d
    }
}

/// What every received frame must pass before anything looks at its
/// addresses: a whole Ethernet header, a consistent vnet header, within
/// the port's MTU unless it is a GSO frame, and the port's identity (port
/// security). Counts it as received.
#[inline]
fn admit_inner(p: &mut SwPort, buf: &[u8]) -> Result<(), DropReason> {
    if buf.len() < VNET_HDR_LEN + ETH_HDR_LEN {
        return Err(DropReason::Runt);
    }
    let frame = &buf[VNET_HDR_LEN..];
    p.counters.rx_frames += 1;
    p.counters.rx_bytes += frame.len() as u64;
    let vh = VnetHdr::parse(buf);
    if !vh.is_valid(frame.len()) {
        return Err(DropReason::BadVnetHdr);
    }
    if !vh.is_gso() && frame.len() > p.mtu as usize + ETH_HDR_LEN + 4 {
        return Err(DropReason::Oversize);
    }
    // port security, for every path a frame takes (switched or routed)
    if p.identity.is_some_and(|id| !id.allows(frame)) {
        return Err(DropReason::Spoofed);
    }
    Ok(())
}

#[inline]
fn decide_inner(
    p: &mut SwPort,
    in_port: PortIdx,
    table: &mut MacTable,
    nets: &[Option<SwNet>],
    buf: &[u8],
    now: u64,
) -> Decision {
    if let Err(r) = admit_inner(p, buf) {
        return Decision::Drop(r);
    }
    let frame = &buf[VNET_HDR_LEN..];
    let Some(Some(net)) = nets.get(p.net as usize) else {
        return Decision::Drop(DropReason::NoNetwork);
    };
    let dst = Mac::from_slice(frame);
    let src = Mac::from_slice(&frame[6..]);
    if src.is_multicast() || src.is_zero() || (net.cfg.gateway && src == net.cfg.gateway_mac) {
        return Decision::Drop(DropReason::BadSrcMac);
    }
    // (a tunnel is a trunk whose segment is the other hosts)
    let from_trunk = matches!(p.kind, PortKind::Trunk | PortKind::Tunnel);
    // A trunk learns nothing: the segment's hosts (any number of them, any
    // MACs) would fill the table every network shares, and an endpoint's
    // MAC must stay on its TAP even when an external switch sends its
    // frames back. Unicast to a MAC that is not an endpoint goes to the
    // trunk instead.
    if !from_trunk {
        match table.learn(p.net, &src, in_port, now) {
            Learned::New => p.counters.macs_learned += 1,
            Learned::Moved { .. } => p.counters.macs_moved_in += 1,
            Learned::PortFull | Learned::NetFull => p.counters.mac_limit += 1,
            Learned::Refreshed | Learned::Full => {}
        }
    }
    let src_is_ours = from_trunk && net.hosts.contains(&src);
    if src_is_ours && net.trunk_mode == TrunkMode::Private {
        // a private container's frame, sent back by an external switch
        return Decision::Drop(DropReason::Isolated);
    }
    // frames from containers of a private or vepa network go to the trunk
    // only (a private one never to another container)
    let up_only = match (from_trunk, net.trunk, net.trunk_mode) {
        (false, Some(t), TrunkMode::Private | TrunkMode::Vepa) => Some(t),
        _ => None,
    };
    if dst.is_multicast() {
        if net.cfg.gateway && !from_trunk && is_arp_request_for(frame, net.cfg.gateway_ip) {
            return Decision::Gateway(p.net);
        }
        // neighbour solicitations for the gateway's IPv6 address (to its
        // solicited-node group, 33:33:ff:..): answered, not flooded
        if let Some(v6) = net.cfg.v6.filter(|_| net.cfg.gateway && !from_trunk) {
            if dst.0[..3] == [0x33, 0x33, 0xff] && crate::router6::is_ns_for(frame, v6.gateway) {
                return Decision::Gateway(p.net);
            }
        }
        if let Some(t) = up_only {
            return Decision::Unicast(t);
        }
        // not back to the container that sent it
        if let Some(origin) = src_is_ours
            .then(|| table.lookup(p.net, &src, now))
            .flatten()
        {
            return Decision::FloodExcept(p.net, origin);
        }
        return Decision::Flood(p.net);
    }
    // the gateway's services are for the containers, not the segment
    if net.cfg.gateway && dst == net.cfg.gateway_mac && !from_trunk {
        return Decision::Gateway(p.net);
    }
    match table.lookup(p.net, &dst, now) {
        Some(out) if out == in_port => Decision::Drop(DropReason::SamePort),
        Some(out) => match up_only {
            Some(t) if out != t && net.trunk_mode == TrunkMode::Private => {
                Decision::Drop(DropReason::Isolated)
            }
            Some(t) => Decision::Unicast(t),
            None => Decision::Unicast(out),
        },
        // an endpoint whose MAC aged out: find it by flooding
        None if net.hosts.contains(&dst) => match up_only {
            Some(t) => Decision::Unicast(t),
            None => Decision::Flood(p.net),
        },
        // the segment behind a trunk carries other hosts' unicast too
        None if from_trunk => Decision::Drop(DropReason::NotOurs),
        None => match net.trunk {
            Some(t) => Decision::Unicast(t),
            None => Decision::Flood(p.net),
        },
    }
}

/// An ARP request (Ethernet/IPv4) whose target protocol address is `ip`.
#[inline]
fn is_arp_request_for(frame: &[u8], ip: Ipv4Addr) -> bool {
    wire::eth::ethertype(frame) == Some(wire::eth::ETHERTYPE_ARP)
        && wire::arp::Arp::new(&frame[ETH_HDR_LEN..])
            .is_some_and(|a| a.op() == wire::arp::REQUEST && a.target_ip() == ip)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn frame(dst: Mac, src: Mac, ethertype: u16, payload_len: usize) -> Vec<u8> {
        let mut b = vec![0u8; VNET_HDR_LEN];
        b.extend_from_slice(&dst.0);
        b.extend_from_slice(&src.0);
        b.extend_from_slice(&ethertype.to_be_bytes());
        b.resize(b.len() + payload_len, 0);
        b
    }

    fn m(x: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, x])
    }

    fn setup() -> (Switch, PortIdx, PortIdx, PortIdx, PortIdx) {
        let mut sw = Switch::new(300_000, 1000);
        let gw = Mac([2, 0x42, 10, 88, 0, 1]);
        sw.add_network(
            0,
            NetConfig {
                gateway_ip: "10.88.0.1".parse().unwrap(),
                gateway_mac: gw,
                prefix: 24,
                routed: false,
                gateway: true,
                v6: None,
            },
        );
        sw.add_network(
            1,
            NetConfig {
                gateway_ip: "10.89.0.1".parse().unwrap(),
                gateway_mac: gw,
                prefix: 24,
                routed: false,
                gateway: true,
                v6: None,
            },
        );
        let a = sw.add_port(0, 1500);
        let b = sw.add_port(0, 1500);
        let c = sw.add_port(0, 1500);
        let d = sw.add_port(1, 1500);
        (sw, a, b, c, d)
    }

    #[test]
    fn learn_then_unicast() {
        let (mut sw, a, b, _c, _d) = setup();
        // unknown destination floods, source learned
        assert_eq!(
            sw.decide(a, &frame(m(2), m(1), 0x0800, 46), 0),
            Decision::Flood(0)
        );
        // reply goes straight back
        assert_eq!(
            sw.decide(b, &frame(m(1), m(2), 0x0800, 46), 1),
            Decision::Unicast(a)
        );
        assert_eq!(
            sw.decide(a, &frame(m(2), m(1), 0x0800, 46), 2),
            Decision::Unicast(b)
        );
        let pa = sw.port(a).unwrap().counters;
        assert_eq!((pa.rx_frames, pa.rx_flooded, pa.macs_learned), (2, 1, 1));
    }

    #[test]
    fn networks_isolated() {
        let (mut sw, a, _b, _c, d) = setup();
        sw.decide(a, &frame(m(2), m(1), 0x0800, 46), 0);
        // the same MAC seen on net 1 does not point into net 0
        assert_eq!(
            sw.decide(d, &frame(m(1), m(9), 0x0800, 46), 0),
            Decision::Flood(1)
        );
        assert_eq!(sw.network(1).unwrap().ports, vec![d]);
        assert!(!sw.network(0).unwrap().ports.contains(&d));
    }

    #[test]
    fn bad_frames_dropped() {
        let (mut sw, a, _b, _c, _d) = setup();
        assert_eq!(
            sw.decide(a, &[0u8; 20], 0),
            Decision::Drop(DropReason::Runt)
        );
        let mut f = frame(m(2), Mac([3, 0, 0, 0, 0, 1]), 0x0800, 46);
        assert_eq!(sw.decide(a, &f, 0), Decision::Drop(DropReason::BadSrcMac));
        f = frame(m(2), m(1), 0x0800, 46);
        f[1] = 77; // gso_type nonsense
        assert_eq!(sw.decide(a, &f, 0), Decision::Drop(DropReason::BadVnetHdr));
        f = frame(m(2), m(1), 0x0800, 1600);
        assert_eq!(sw.decide(a, &f, 0), Decision::Drop(DropReason::Oversize));
        let c = sw.port(a).unwrap().counters.drops;
        assert_eq!(
            (c.runt, c.bad_src_mac, c.bad_vnet_hdr, c.oversize),
            (1, 1, 1, 1)
        );
        assert_eq!(sw.table.len(), 0, "nothing learned from bad frames");
    }

    #[test]
    fn move_and_same_port() {
        let (mut sw, a, b, c, _d) = setup();
        sw.decide(a, &frame(m(2), m(1), 0x0800, 46), 0);
        sw.decide(c, &frame(m(1), m(1 + 10), 0x0800, 46), 0);
        // m(1) now appears on b: moved
        sw.decide(b, &frame(m(11), m(1), 0x0800, 46), 1);
        assert_eq!(sw.port(b).unwrap().counters.macs_moved_in, 1);
        assert_eq!(
            sw.decide(c, &frame(m(1), m(11), 0x0800, 46), 2),
            Decision::Unicast(b)
        );
        // a frame from b to a MAC on b is not sent back
        sw.decide(b, &frame(m(12), m(12), 0x0800, 46), 3);
        assert_eq!(
            sw.decide(b, &frame(m(12), m(1), 0x0800, 46), 3),
            Decision::Drop(DropReason::SamePort)
        );
    }

    #[test]
    fn detach_forgets() {
        let (mut sw, a, b, _c, _d) = setup();
        sw.decide(a, &frame(m(2), m(1), 0x0800, 46), 0);
        sw.detach_port(a);
        assert_eq!(
            sw.decide(b, &frame(m(1), m(2), 0x0800, 46), 1),
            Decision::Flood(0)
        );
        assert!(sw.free_port(a).is_some());
        assert_eq!(
            sw.decide(a, &frame(m(1), m(2), 0x0800, 46), 1),
            Decision::Drop(DropReason::NoNetwork)
        );
        // slot reused
        assert_eq!(sw.add_port(0, 1500), a);
    }

    #[test]
    fn gateway_frames() {
        let (mut sw, a, _b, _c, _d) = setup();
        let gw = sw.network(0).unwrap().cfg.gateway_mac;
        assert_eq!(
            sw.decide(a, &frame(gw, m(1), 0x0800, 46), 0),
            Decision::Gateway(0)
        );
        let mut arp = frame(Mac::BROADCAST, m(1), 0x0806, 46);
        let e = VNET_HDR_LEN + ETH_HDR_LEN;
        arp[e..e + 8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp[e + 24..e + 28].copy_from_slice(&[10, 88, 0, 1]);
        assert_eq!(sw.decide(a, &arp, 0), Decision::Gateway(0));
        arp[e + 27] = 5; // ARP for someone else: flooded
        assert_eq!(sw.decide(a, &arp, 0), Decision::Flood(0));
        // nobody may claim the gateway's MAC
        assert_eq!(
            sw.decide(a, &frame(m(1), gw, 0x0800, 46), 0),
            Decision::Drop(DropReason::BadSrcMac)
        );
    }

    /// One network with two TAPs and a trunk in `mode`; the TAPs' MACs
    /// m(1), m(2) are its endpoints and already learned.
    fn trunked(mode: TrunkMode) -> (Switch, PortIdx, PortIdx, PortIdx) {
        let mut sw = Switch::new(300_000, 1000);
        sw.add_network(
            0,
            NetConfig {
                gateway_ip: "10.77.0.1".parse().unwrap(),
                gateway_mac: Mac([0; 6]),
                prefix: 24,
                routed: false,
                gateway: false,
                v6: None,
            },
        );
        let a = sw.add_port(0, 1500);
        let b = sw.add_port(0, 1500);
        let t = sw.add_port_kind(PortKind::Trunk, 0, 1500);
        sw.set_trunk_policy(0, mode, &[m(1), m(2)]);
        let bc = Mac([0xff; 6]);
        sw.decide(a, &frame(bc, m(1), 0x0800, 46), 0);
        sw.decide(b, &frame(bc, m(2), 0x0800, 46), 0);
        (sw, a, b, t)
    }

    #[test]
    fn trunk_bridge_mode() {
        let (mut sw, a, b, t) = trunked(TrunkMode::Bridge);
        let lan = m(9);
        let bc = Mac([0xff; 6]);
        // containers reach each other; the segment's unknown MACs go to the trunk
        assert_eq!(
            sw.decide(a, &frame(m(2), m(1), 0x0800, 46), 0),
            Decision::Unicast(b)
        );
        assert_eq!(
            sw.decide(a, &frame(lan, m(1), 0x0800, 46), 0),
            Decision::Unicast(t)
        );
        assert_eq!(
            sw.decide(a, &frame(bc, m(1), 0x0800, 46), 0),
            Decision::Flood(0)
        );
        // from the segment: only for endpoints; its hosts are never learned
        assert_eq!(
            sw.decide(t, &frame(m(1), lan, 0x0800, 46), 0),
            Decision::Unicast(a)
        );
        assert_eq!(
            sw.decide(t, &frame(m(7), lan, 0x0800, 46), 0),
            Decision::Drop(DropReason::NotOurs)
        );
        assert_eq!(sw.port(t).unwrap().counters.filtered, 1);
        assert_eq!(sw.port(t).unwrap().counters.drops.total(), 0);
        assert!(sw.table.lookup(0, &lan, 0).is_none());
        assert_eq!(
            sw.decide(t, &frame(bc, lan, 0x0800, 46), 0),
            Decision::Flood(0)
        );
        // an endpoint's MAC coming back from the segment stays on its TAP,
        // and its broadcast is not sent back to it
        assert_eq!(
            sw.decide(t, &frame(bc, m(1), 0x0800, 46), 0),
            Decision::FloodExcept(0, a)
        );
        assert_eq!(sw.table.lookup(0, &m(1), 0), Some(a));
    }

    #[test]
    fn trunk_private_and_vepa_modes() {
        let (mut sw, a, _b, t) = trunked(TrunkMode::Private);
        let bc = Mac([0xff; 6]);
        assert_eq!(
            sw.decide(a, &frame(m(2), m(1), 0x0800, 46), 0),
            Decision::Drop(DropReason::Isolated)
        );
        assert_eq!(
            sw.decide(a, &frame(bc, m(1), 0x0806, 46), 0),
            Decision::Unicast(t)
        );
        assert_eq!(
            sw.decide(a, &frame(m(9), m(1), 0x0800, 46), 0),
            Decision::Unicast(t)
        );
        // sent back by an external switch: still isolated
        assert_eq!(
            sw.decide(t, &frame(m(2), m(1), 0x0800, 46), 0),
            Decision::Drop(DropReason::Isolated)
        );
        assert_eq!(
            sw.decide(t, &frame(m(2), m(9), 0x0800, 46), 0),
            Decision::Unicast(_b)
        );

        let (mut sw, a, b, t) = trunked(TrunkMode::Vepa);
        // everything leaves through the trunk; what comes back is delivered
        assert_eq!(
            sw.decide(a, &frame(m(2), m(1), 0x0800, 46), 0),
            Decision::Unicast(t)
        );
        assert_eq!(
            sw.decide(a, &frame(bc, m(1), 0x0806, 46), 0),
            Decision::Unicast(t)
        );
        assert_eq!(
            sw.decide(t, &frame(m(2), m(1), 0x0800, 46), 0),
            Decision::Unicast(b)
        );
        assert_eq!(
            sw.decide(t, &frame(bc, m(1), 0x0806, 46), 0),
            Decision::FloodExcept(0, a)
        );
    }

    #[test]
    fn port_security_ipv6_and_neighbour_discovery() {
        use wire::{icmpv6, ipv6};
        let me = Mac([2, 0x42, 10, 88, 0, 2]);
        let id = PortIdentity {
            mac: me,
            ip: "10.88.0.2".parse().unwrap(),
            ip6: Some("fd00::2".parse().unwrap()),
        };
        let ll = id.link_local();
        assert_eq!(ll, "fe80::42:aff:fe58:2".parse::<Ipv6Addr>().unwrap());
        // Ethernet + IPv6 + ICMPv6 message `m` from `src`
        let f = |src: Ipv6Addr, m: &[u8]| {
            let mut b = vec![0u8; 12];
            b[6..12].copy_from_slice(&me.0);
            b.extend_from_slice(&[0x86, 0xdd]);
            let mut h = [0u8; 40];
            ipv6::emit(
                &mut h,
                m.len() as u16,
                58,
                255,
                src,
                "ff02::1".parse().unwrap(),
            );
            b.extend_from_slice(&h);
            b.extend_from_slice(m);
            b
        };
        let na = |target: Ipv6Addr, mac: [u8; 6]| {
            let mut m = [0u8; icmpv6::NA_WITH_TLLA];
            icmpv6::emit_na(&mut m, icmpv6::NA_OVERRIDE, target, mac, target, target);
            m.to_vec()
        };
        let ns = |mac: [u8; 6]| {
            let mut m = [0u8; 32];
            let t: Ipv6Addr = "fd00::1".parse().unwrap();
            icmpv6::emit_ns(&mut m, t, mac, t, t);
            m.to_vec()
        };
        let own6: Ipv6Addr = "fd00::2".parse().unwrap();
        let other: Ipv6Addr = "fd00::3".parse().unwrap();
        // its own advertisements, from its address or its link-local one
        assert!(id.allows(&f(own6, &na(own6, me.0))));
        assert!(id.allows(&f(ll, &na(ll, me.0))));
        // for another address (the gateway's, say): refused
        assert!(!id.allows(&f(ll, &na(other, me.0))));
        assert!(!id.allows(&f(ll, &na("fd00::1".parse().unwrap(), me.0))));
        // with another MAC in its option: refused
        assert!(!id.allows(&f(own6, &na(own6, [2, 9, 9, 9, 9, 9]))));
        assert!(!id.allows(&f(own6, &ns([2, 9, 9, 9, 9, 9]))));
        assert!(id.allows(&f(own6, &ns(me.0))));
        // duplicate address probes from :: yes, an advertisement from :: no
        let mut probe = [0u8; 24];
        probe[0] = icmpv6::NEIGHBOR_SOLICIT;
        assert!(id.allows(&f(Ipv6Addr::UNSPECIFIED, &probe)));
        assert!(!id.allows(&f(Ipv6Addr::UNSPECIFIED, &na(own6, me.0))));
        // router advertisements and redirects: never from a container
        assert!(!id.allows(&f(ll, &[134, 0, 0, 0, 64, 0, 0, 0])));
        assert!(!id.allows(&f(ll, &[137, 0, 0, 0, 0, 0, 0, 0])));
        // another source address, and truncated messages
        assert!(!id.allows(&f(other, &[128, 0, 0, 0])));
        let full = f(own6, &na(own6, me.0));
        for cut in 14..full.len() {
            let _ = id.allows(&full[..cut]);
        }
    }
}
