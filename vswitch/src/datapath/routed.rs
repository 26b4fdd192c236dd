//! A routed segment: an ipvlan network in L3 mode. Its containers and the
//! segment behind its trunk share the parent's MAC, and nothing is
//! switched at L2 between them: no broadcast crosses, ARP is answered here
//! on both sides, and IPv4 goes by destination address.
//!
//! - From a container: an ARP request for any address is answered with the
//!   parent's MAC (its default route is the interface itself); IPv4 for
//!   another endpoint goes straight to it; anything else goes out of the
//!   trunk to its next hop (the address itself inside the network's
//!   subnet, else the network's gateway), whose MAC this side resolves
//!   with ARP of its own (asking from the sending container's address).
//! - From the segment: ARP requests for an endpoint's address are answered
//!   with the parent's MAC; ARP replies are believed only from a next hop
//!   this side asked for (no unsolicited reply enters the neighbour cache);
//!   IPv4 for an endpoint reaches it; the rest is filtered.
//! - A container may only use its own address and MAC (as registered with
//!   its endpoint): anything else is dropped as `bad_src_mac`, so it can
//!   neither make tapnet announce another address on the segment nor
//!   take another container's traffic.
//!
//! IPv6 (a dual-stack network) goes the same way, neighbour discovery in
//! ARP's place: a container's solicitation for any address but its own
//! (and but a link-local one of the segment's) is answered with the
//! parent's MAC; the segment's solicitations for an endpoint's address
//! are answered with the parent's MAC, and its duplicate address probes
//! for one are answered to all nodes, as the owner would; a solicited
//! advertisement is believed only from a next hop this side asked for.
//! Link-local addresses stay on their side (containers reach each
//! other's), multicast is never routed, and a container may only send
//! from its own addresses (`bad_src_mac`), as for IPv4.
//!
//! Frames for the network's resolver (the gateway MAC of its switch
//! network) take the ordinary path through the switch.

use super::*;
use std::hash::Hash;
use std::net::Ipv6Addr;
use wire::{icmpv6, ipv6};

/// A routed segment's state, one per L3 ipvlan network.
pub(super) struct Routed {
    pub(super) trunk: PortIdx,
    /// The parent's MAC, everyone's on the wire.
    pub(super) mac: Mac,
    pub(super) gateway: Ipv4Addr,
    pub(super) subnet: Ipv4Addr,
    pub(super) prefix: u8,
    /// IPv6 addressing (a dual-stack network).
    pub(super) v6: Option<RoutedV6>,
    /// Neighbours on the segment, per family.
    pub(super) n4: Neighbours<Ipv4Addr>,
    pub(super) n6: Neighbours<Ipv6Addr>,
}

/// One family's neighbours on the segment and the questions asked.
pub(super) struct Neighbours<A> {
    /// IP -> (MAC, learned at ms).
    known: FxHashMap<A, (Mac, u64)>,
    /// Next hops asked for: IP -> when (only their answers are believed).
    pending: FxHashMap<A, u64>,
}

impl<A> Default for Neighbours<A> {
    fn default() -> Self {
        Neighbours {
            known: FxHashMap::default(),
            pending: FxHashMap::default(),
        }
    }
}

impl<A: Copy + Eq + Hash> Neighbours<A> {
    /// Whether a question about `hop` may go out now (and records it).
    fn may_ask(&mut self, hop: A, now: u64) -> bool {
        if self
            .pending
            .get(&hop)
            .is_some_and(|t| now.saturating_sub(*t) < REQUEST_GAP_MS)
        {
            return false;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending
                .retain(|_, t| now.saturating_sub(*t) < PENDING_MS);
            if self.pending.len() >= MAX_PENDING {
                return false;
            }
        }
        self.pending.insert(hop, now);
        true
    }

    fn fresh(&self, hop: A, now: u64) -> Option<Mac> {
        self.known
            .get(&hop)
            .filter(|(_, t)| now.saturating_sub(*t) < NEIGH_TTL_MS)
            .map(|(m, _)| *m)
    }

    /// An answer: `ip` is at `mac`. Believed only when asked, and never
    /// for a group or the parent's own MAC `ours`.
    fn answered(&mut self, ip: A, mac: Mac, ours: Mac, now: u64) {
        if !mac.is_multicast()
            && !mac.is_zero()
            && mac != ours
            && self.pending.remove(&ip).is_some()
            && (self.known.len() < MAX_NEIGH || self.known.contains_key(&ip))
        {
            self.known.insert(ip, (mac, now));
        }
    }

    /// Forgets neighbours that stopped answering and unanswered
    /// questions; true when `gateway` is known but due to be asked again.
    fn tick(&mut self, gateway: A, now: u64) -> bool {
        self.known
            .retain(|_, (_, t)| now.saturating_sub(*t) < NEIGH_TTL_MS);
        self.pending
            .retain(|_, t| now.saturating_sub(*t) < PENDING_MS);
        self.known
            .get(&gateway)
            .is_some_and(|(_, t)| now.saturating_sub(*t) >= REFRESH_MS)
    }
}

/// How long a neighbour is trusted without a new reply.
const NEIGH_TTL_MS: u64 = 300_000;
/// The gateway is asked again this often while it is known.
const REFRESH_MS: u64 = 60_000;
/// At most one ARP request per next hop in this many ms.
const REQUEST_GAP_MS: u64 = 100;
/// An unanswered request is forgotten after this long.
const PENDING_MS: u64 = 2_000;
/// Bounds on the tables (a scanning container must not grow them).
const MAX_PENDING: usize = 1024;
const MAX_NEIGH: usize = 4096;

impl Routed {
    fn next_hop(&self, dst: Ipv4Addr) -> Ipv4Addr {
        if ipv4::same_subnet(dst, self.subnet, self.prefix) {
            dst
        } else {
            self.gateway
        }
    }

    fn next_hop6(&self, v6: RoutedV6, dst: Ipv6Addr) -> Ipv6Addr {
        if ipv6::same_subnet(dst, v6.subnet, v6.prefix) {
            dst
        } else {
            v6.gateway
        }
    }

    /// Multicast, broadcast or the subnet's broadcast: nothing to route.
    fn is_group(&self, dst: Ipv4Addr) -> bool {
        dst.is_multicast()
            || dst.is_broadcast()
            || (self.prefix < 31
                && u32::from(dst) == u32::from(self.subnet) | !ipv4::mask(self.prefix))
    }
}

/// What a routed segment does with a frame.
pub(super) enum RoutedOut {
    /// Rewritten in place; write it to this port.
    Write(PortIdx),
    /// Rewritten in place for an endpoint whose TAP is not known yet (it
    /// has sent nothing): to every TAP of the network but the trunk.
    ToTaps(NetIdx, PortIdx),
    /// Dropped for now; this ARP request or neighbour solicitation (for
    /// its next hop) goes out of the trunk.
    Request(PortIdx, Vec<u8>),
    /// Answered: this frame (a neighbour advertisement) goes back out of
    /// the port the question came in on.
    Answer(Vec<u8>),
    /// Dropped: counted with this reason, or as `filtered` without one.
    Drop(Option<DropReason>),
}

/// What the handling of a frame needs to know of it (read once).
struct Seen {
    ethertype: [u8; 2],
    dst_mac: Mac,
    src_mac: Mac,
    /// ARP: op, sender MAC, sender IP, target IP.
    arp: Option<(u16, [u8; 6], Ipv4Addr, Ipv4Addr)>,
    /// IPv4: source and destination.
    ip: Option<(Ipv4Addr, Ipv4Addr)>,
    /// IPv6: source, destination, and the neighbour discovery message it
    /// carries, if any (ICMPv6 type 133-137 right after the header).
    ip6: Option<(Ipv6Addr, Ipv6Addr, Option<Nd>)>,
}

/// A neighbour discovery message: its type, hop limit and where it is.
#[derive(Clone, Copy)]
struct Nd {
    ty: u8,
    hop: u8,
    /// The message's bytes in the frame: `from..to`.
    from: usize,
    to: usize,
}

fn seen(f: &[u8]) -> Seen {
    const E: usize = VNET_HDR_LEN;
    const L3: usize = E + eth::HDR_LEN;
    let ethertype = [f[E + eth::ETHERTYPE], f[E + eth::ETHERTYPE + 1]];
    let arp = (ethertype == eth::ETHERTYPE_ARP)
        .then(|| arp::Arp::new(&f[L3..]))
        .flatten()
        .map(|a| (a.op(), a.sender_mac(), a.sender_ip(), a.target_ip()));
    let ip = (ethertype == eth::ETHERTYPE_IPV4 && f.len() >= L3 + ipv4::MIN_HDR_LEN).then(|| {
        let h = &f[L3..];
        let src = Ipv4Addr::new(
            h[ipv4::SRC],
            h[ipv4::SRC + 1],
            h[ipv4::SRC + 2],
            h[ipv4::SRC + 3],
        );
        (src, ipv4::dst(h).expect("length checked"))
    });
    let ip6 = (ethertype == eth::ETHERTYPE_IPV6)
        .then(|| ipv6::Header::new(&f[L3..]))
        .flatten()
        .map(|h| {
            let (from, to) = (L3 + ipv6::HDR_LEN, L3 + ipv6::HDR_LEN + h.payload_len());
            let nd = (h.next_header() == ipv6::PROTO_ICMPV6 && to <= f.len() && to >= from + 4)
                .then(|| f[from])
                .filter(|t| (icmpv6::ROUTER_SOLICIT..=137).contains(t))
                .map(|ty| Nd {
                    ty,
                    hop: h.hop_limit(),
                    from,
                    to,
                });
            (h.src(), h.dst(), nd)
        });
    Seen {
        ethertype,
        dst_mac: Mac::from_slice(&f[E + eth::DST..]),
        src_mac: Mac::from_slice(&f[E + eth::SRC..]),
        arp,
        ip,
        ip6,
    }
}

impl State {
    /// A frame on a routed segment's port; false when it is not this
    /// side's to handle (it then goes through the switch as usual).
    pub(super) fn routed_in(
        &mut self,
        slot: PortIdx,
        kind: PortKind,
        net: NetIdx,
        b: usize,
        len: usize,
        now: u64,
    ) -> bool {
        const E: usize = VNET_HDR_LEN;
        const L3: usize = E + eth::HDR_LEN;
        let Some(cfg) = self.sw.network(net).map(|n| n.cfg) else {
            return false;
        };
        let Some(r) = self.routed.get(&net) else {
            return false;
        };
        let (rmac, trunk) = (r.mac, r.trunk);
        if len < L3 {
            return false; // the switch counts the runt
        }
        if self.ports[slot as usize].is_none() {
            return false;
        }
        let f = self.pool.frame(b, len);
        let s = seen(f);
        // the resolver behind the switch's gateway: the switch's business
        if cfg.gateway
            && kind == PortKind::Tap
            && (s.dst_mac == cfg.gateway_mac || s.arp.is_some_and(|a| a.3 == cfg.gateway_ip))
        {
            return false;
        }
        if let Err(_r) = self.sw.admit(slot, f) {
            self.recycle(slot, b);
            return true;
        }
        let hosts = self.ports[trunk as usize]
            .as_ref()
            .and_then(|t| t.xform.as_deref())
            .map(|x| &x.hosts);
        let owns = |ip: Ipv4Addr, mac: Mac| hosts.is_some_and(|h| h.get(&ip) == Some(&mac));
        let is_host = |ip: Ipv4Addr| hosts.is_some_and(|h| h.contains_key(&ip));
        let out = match (kind, s.ethertype) {
            (PortKind::Tap, eth::ETHERTYPE_ARP) => match s.arp {
                None => RoutedOut::Drop(Some(DropReason::Malformed)),
                // probes (from 0.0.0.0) and questions about itself stay
                // unanswered: the address is the container's own
                Some((_, _, spa, _)) if spa.is_unspecified() => RoutedOut::Drop(None),
                Some((op, sha, spa, tpa)) => {
                    if !owns(spa, Mac(sha)) || s.src_mac != Mac(sha) {
                        RoutedOut::Drop(Some(DropReason::BadSrcMac))
                    } else if op == arp::REQUEST && tpa != spa && !tpa.is_unspecified() {
                        self.reply_arp(b, len, rmac, sha, tpa);
                        RoutedOut::Write(slot)
                    } else {
                        RoutedOut::Drop(None)
                    }
                }
            },
            (PortKind::Tap, eth::ETHERTYPE_IPV4) => match s.ip {
                None => RoutedOut::Drop(Some(DropReason::Malformed)),
                Some((src, _)) if !owns(src, s.src_mac) => {
                    RoutedOut::Drop(Some(DropReason::BadSrcMac))
                }
                Some((src, dst)) => {
                    // the sender is who it says: its MAC is found on its TAP
                    self.sw.table.learn(net, &s.src_mac, slot, now);
                    let inside = hosts.and_then(|h| h.get(&dst)).copied();
                    let r = self.routed.get_mut(&net).expect("looked up");
                    if r.is_group(dst) {
                        RoutedOut::Drop(None)
                    } else if let Some(mac) = inside {
                        self.deliver(slot, net, b, len, rmac, mac, trunk, now)
                    } else {
                        let hop = r.next_hop(dst);
                        match r.n4.fresh(hop, now) {
                            Some(mac) => {
                                self.rewrite(b, len, rmac, mac);
                                RoutedOut::Write(trunk)
                            }
                            None if r.n4.may_ask(hop, now) => RoutedOut::Request(
                                trunk,
                                eth::vnet_frame(
                                    eth::BROADCAST,
                                    rmac.0,
                                    eth::ETHERTYPE_ARP,
                                    &arp::request(rmac.0, src, hop),
                                ),
                            ),
                            None => RoutedOut::Drop(Some(DropReason::NoRoute)),
                        }
                    }
                }
            },
            (PortKind::Trunk, eth::ETHERTYPE_ARP) => match s.arp {
                Some((arp::REQUEST, sha, spa, tpa))
                    if is_host(tpa) && spa != tpa && !Mac(sha).is_multicast() =>
                {
                    self.reply_arp(b, len, rmac, sha, tpa);
                    RoutedOut::Write(slot)
                }
                Some((arp::REPLY, sha, spa, _)) => {
                    let r = self.routed.get_mut(&net).expect("looked up");
                    // believed only as the answer to a question of ours
                    r.n4.answered(spa, Mac(sha), rmac, now);
                    RoutedOut::Drop(None)
                }
                _ => RoutedOut::Drop(None),
            },
            (PortKind::Trunk, eth::ETHERTYPE_IPV4) => match s.ip {
                Some((_, dst)) if s.dst_mac == rmac => {
                    match hosts.and_then(|h| h.get(&dst)).copied() {
                        Some(mac) => self.deliver(slot, net, b, len, rmac, mac, trunk, now),
                        None => RoutedOut::Drop(None),
                    }
                }
                _ => RoutedOut::Drop(None),
            },
            (PortKind::Tap, eth::ETHERTYPE_IPV6) | (PortKind::Trunk, eth::ETHERTYPE_IPV6) => {
                self.routed_in6(slot, kind, net, b, len, &s, now)
            }
            // no broadcast, no other protocols: L3 only
            _ => RoutedOut::Drop(None),
        };
        self.routed_done(slot, b, len, out);
        true
    }

    /// IPv6 on a routed segment (see the module's comment), for
    /// [`Self::routed_in`]; the frame has passed port security.
    #[allow(clippy::too_many_arguments)]
    fn routed_in6(
        &mut self,
        slot: PortIdx,
        kind: PortKind,
        net: NetIdx,
        b: usize,
        len: usize,
        s: &Seen,
        now: u64,
    ) -> RoutedOut {
        let Some(r) = self.routed.get(&net) else {
            return RoutedOut::Drop(None);
        };
        let (rmac, trunk, v6) = (r.mac, r.trunk, r.v6);
        let Some((src, dst, nd)) = s.ip6 else {
            return RoutedOut::Drop(Some(DropReason::Malformed));
        };
        let Some(v6) = v6 else {
            // a network without IPv6: nothing here speaks it
            return RoutedOut::Drop(None);
        };
        let owner = |ip: Ipv6Addr| {
            self.ports[trunk as usize]
                .as_ref()
                .and_then(|t| t.xform.as_deref())
                .and_then(|x| x.hosts6.get(&ip).copied())
        };
        // a container sends from its own addresses only (its link-local
        // one is among them); `::` only probes, which stay unanswered
        if kind == PortKind::Tap && owner(src) != Some(s.src_mac) {
            let reason = (!src.is_unspecified()).then_some(DropReason::BadSrcMac);
            return RoutedOut::Drop(reason);
        }
        if let Some(nd) = nd {
            let msg = &self.pool.frame(b, len)[nd.from..nd.to];
            return match (kind, nd.ty) {
                // a solicitation: answered with the parent's MAC, from a
                // container for any address but its own (and but the
                // segment's link-local ones: that traffic stays on its
                // side), from the segment for an endpoint's
                (_, icmpv6::NEIGHBOR_SOLICIT) => {
                    let Some(ns) = icmpv6::NeighborSolicit::parse(src, dst, nd.hop, msg) else {
                        return RoutedOut::Drop(Some(DropReason::Malformed));
                    };
                    let t = ns.target;
                    let answer = match kind {
                        PortKind::Tap => {
                            owner(t) != Some(s.src_mac)
                                && (!ipv6::is_link_local(t) || owner(t).is_some())
                        }
                        _ => {
                            owner(t).is_some()
                                && !ipv6::is_link_local(t)
                                && !s.src_mac.is_multicast()
                        }
                    };
                    if !answer {
                        return RoutedOut::Drop(None);
                    }
                    // a duplicate address probe from the segment: the
                    // address is taken, said to all nodes (RFC 4861 7.2.4)
                    let (flags, to, to_mac) = if src.is_unspecified() {
                        let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
                        (icmpv6::NA_OVERRIDE, all, ipv6::multicast_mac(all))
                    } else {
                        let f = icmpv6::NA_SOLICITED | icmpv6::NA_OVERRIDE;
                        (f, src, s.src_mac.0)
                    };
                    let p = icmpv6::advertisement(flags, t, rmac.0, to);
                    RoutedOut::Answer(eth::vnet_frame(to_mac, rmac.0, eth::ETHERTYPE_IPV6, &p))
                }
                // a solicited advertisement from the segment, to one of
                // the endpoints: believed if asked for
                (PortKind::Trunk, icmpv6::NEIGHBOR_ADVERT) if owner(dst).is_some() => {
                    let na = icmpv6::NeighborAdvert::parse(src, dst, nd.hop, msg)
                        .filter(|a| a.flags & icmpv6::NA_SOLICITED != 0);
                    if let Some(a) = na {
                        let mac = a.tlla.map_or(s.src_mac, Mac);
                        let r = self.routed.get_mut(&net).expect("looked up");
                        r.n6.answered(a.target, mac, rmac, now);
                    }
                    RoutedOut::Drop(None)
                }
                // the rest of neighbour discovery stays on its side
                _ => RoutedOut::Drop(None),
            };
        }
        // (a container's link-local address is reached by the others, not
        // from the segment)
        let link_local = ipv6::is_link_local(dst) || ipv6::is_link_local(src);
        if dst.is_multicast() || link_local && (kind == PortKind::Trunk || owner(dst).is_none()) {
            return RoutedOut::Drop(None);
        }
        match kind {
            PortKind::Trunk if s.dst_mac == rmac => match owner(dst) {
                Some(mac) => self.deliver(slot, net, b, len, rmac, mac, trunk, now),
                None => RoutedOut::Drop(None),
            },
            PortKind::Tap => {
                // the sender is who it says: its MAC is found on its TAP
                self.sw.table.learn(net, &s.src_mac, slot, now);
                if let Some(mac) = owner(dst) {
                    return self.deliver(slot, net, b, len, rmac, mac, trunk, now);
                }
                let r = self.routed.get_mut(&net).expect("looked up");
                let hop = r.next_hop6(v6, dst);
                match r.n6.fresh(hop, now) {
                    Some(mac) => {
                        self.rewrite(b, len, rmac, mac);
                        RoutedOut::Write(trunk)
                    }
                    None if r.n6.may_ask(hop, now) => {
                        let (to, p) = icmpv6::solicitation(hop, rmac.0, src);
                        RoutedOut::Request(
                            trunk,
                            eth::vnet_frame(to, rmac.0, eth::ETHERTYPE_IPV6, &p),
                        )
                    }
                    None => RoutedOut::Drop(Some(DropReason::NoRoute)),
                }
            }
            _ => RoutedOut::Drop(None),
        }
    }

    /// Rewrites the Ethernet addresses of the frame in buffer `b`.
    fn rewrite(&mut self, b: usize, len: usize, src: Mac, dst: Mac) {
        const E: usize = VNET_HDR_LEN;
        let f = self.pool.frame_mut(b, len);
        if f.len() >= E + eth::HDR_LEN {
            f[E + eth::DST..E + eth::DST + 6].copy_from_slice(&dst.0);
            f[E + eth::SRC..E + eth::SRC + 6].copy_from_slice(&src.0);
        }
    }

    /// Turns the ARP request in buffer `b` into the answer "`tpa` is
    /// at `mac`", back to its sender `sha`.
    fn reply_arp(&mut self, b: usize, len: usize, mac: Mac, sha: [u8; 6], tpa: Ipv4Addr) {
        const L3: usize = VNET_HDR_LEN + eth::HDR_LEN;
        if let Some(mut a) = self
            .pool
            .frame_mut(b, len)
            .get_mut(L3..)
            .and_then(arp::Arp::new)
        {
            a.make_reply(mac.0, tpa);
        }
        self.rewrite(b, len, mac, Mac(sha));
    }

    /// To the endpoint with MAC `mac`: its TAP, or every TAP while it is
    /// not known yet.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        slot: PortIdx,
        net: NetIdx,
        b: usize,
        len: usize,
        rmac: Mac,
        mac: Mac,
        trunk: PortIdx,
        now: u64,
    ) -> RoutedOut {
        match self.sw.table.lookup(net, &mac, now) {
            Some(t) if t == slot => RoutedOut::Drop(Some(DropReason::SamePort)),
            Some(t) => {
                self.rewrite(b, len, rmac, mac);
                RoutedOut::Write(t)
            }
            None => {
                self.rewrite(b, len, rmac, mac);
                RoutedOut::ToTaps(net, trunk)
            }
        }
    }

    fn routed_done(&mut self, slot: PortIdx, b: usize, len: usize, out: RoutedOut) {
        self.pool.lens[b] = len as u32;
        match out {
            RoutedOut::Write(t) => {
                if t == slot {
                    if let Some(sp) = self.sw.port_mut(slot) {
                        sp.counters.gateway_replies += 1;
                    }
                }
                if !self.post_write(slot, b, t) {
                    self.recycle(slot, b);
                }
            }
            RoutedOut::ToTaps(net, trunk) => self.flood(slot, b, net, trunk),
            RoutedOut::Answer(frame) => {
                if let Some(sp) = self.sw.port_mut(slot) {
                    sp.counters.gateway_replies += 1;
                }
                self.recycle(slot, b);
                if self
                    .sw
                    .port(slot)
                    .is_some_and(|p| p.kind == PortKind::Trunk)
                {
                    self.send_on_trunk(slot, &frame);
                } else {
                    self.send_owned(slot, frame);
                }
            }
            RoutedOut::Request(trunk, req) => {
                self.sw.count_drop(slot, DropReason::NoRoute);
                self.recycle(slot, b);
                self.send_on_trunk(trunk, &req);
            }
            RoutedOut::Drop(reason) => {
                match reason {
                    Some(r) => self.sw.count_drop(slot, r),
                    None => {
                        if let Some(sp) = self.sw.port_mut(slot) {
                            sp.counters.filtered += 1;
                        }
                    }
                }
                self.recycle(slot, b);
            }
        }
    }

    /// A frame of tapnet's own out of a trunk (VLAN tag, shared MAC).
    fn send_on_trunk(&mut self, trunk: PortIdx, frame: &[u8]) {
        let framed = self.ports[trunk as usize]
            .as_ref()
            .and_then(|t| t.xform.as_deref())
            .and_then(|x| trunk::egress_frame(x, frame));
        if let Some(f) = framed {
            self.send_owned(trunk, f);
        }
    }

    /// Once a second: forget neighbours that stopped answering and
    /// questions nobody answered; ask the gateway again before it expires
    /// (from an endpoint's address: tapnet has none of its own there).
    pub(super) fn routed_tick(&mut self, now: u64) {
        let (mut asks, mut asks6) = (Vec::new(), Vec::new());
        for r in self.routed.values_mut() {
            if r.n4.tick(r.gateway, now) && r.n4.may_ask(r.gateway, now) {
                asks.push((r.trunk, r.mac, r.gateway));
            }
            if let Some(v6) = r.v6 {
                if r.n6.tick(v6.gateway, now) && r.n6.may_ask(v6.gateway, now) {
                    asks6.push((r.trunk, r.mac, v6.gateway));
                }
            }
        }
        for (trunk, mac, gw) in asks {
            let from = self.ports[trunk as usize]
                .as_ref()
                .and_then(|t| t.xform.as_deref())
                .and_then(|x| x.hosts.keys().next().copied());
            if let Some(ip) = from {
                let req = eth::vnet_frame(
                    eth::BROADCAST,
                    mac.0,
                    eth::ETHERTYPE_ARP,
                    &arp::request(mac.0, ip, gw),
                );
                self.send_on_trunk(trunk, &req);
            }
        }
        for (trunk, mac, gw) in asks6 {
            // from an endpoint's own (not link-local) address
            let from = self.ports[trunk as usize]
                .as_ref()
                .and_then(|t| t.xform.as_deref())
                .and_then(|x| x.hosts6.keys().find(|a| !ipv6::is_link_local(**a)).copied());
            if let Some(ip) = from {
                let (to, p) = icmpv6::solicitation(gw, mac.0, ip);
                self.send_on_trunk(trunk, &eth::vnet_frame(to, mac.0, eth::ETHERTYPE_IPV6, &p));
            }
        }
    }
}
