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
//!   with the parent's MAC, ARP replies for one feed the neighbour cache,
//!   IPv4 for an endpoint reaches it; the rest is filtered.
//!
//! Frames for the network's resolver (the gateway MAC of its switch
//! network) take the ordinary path through the switch.

use super::*;

/// A routed segment's state, one per L3 ipvlan network.
pub(super) struct Routed {
    pub(super) trunk: PortIdx,
    /// The parent's MAC, everyone's on the wire.
    pub(super) mac: Mac,
    pub(super) gateway: Ipv4Addr,
    pub(super) subnet: Ipv4Addr,
    pub(super) prefix: u8,
    /// Neighbours on the segment: IP -> (MAC, learned at ms).
    pub(super) neigh: FxHashMap<Ipv4Addr, (Mac, u64)>,
    pub(super) last_request: u64,
}

/// How long a neighbour is trusted without a new reply.
const NEIGH_TTL_MS: u64 = 300_000;
/// At most one ARP request per this many ms per segment.
const REQUEST_GAP_MS: u64 = 100;

impl Routed {
    fn next_hop(&self, dst: Ipv4Addr) -> Ipv4Addr {
        let m = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix.min(32))
        };
        if u32::from(dst) & m == u32::from(self.subnet) & m {
            dst
        } else {
            self.gateway
        }
    }
}

/// What a routed segment does with a frame.
pub(super) enum RoutedOut {
    /// Rewritten in place; write it to this port.
    Write(PortIdx),
    /// Rewritten in place for an endpoint whose TAP is not known yet (it
    /// has sent nothing): to every TAP of the network but the trunk.
    ToTaps(NetIdx, PortIdx),
    /// Dropped for now; this ARP request (for its next hop) goes out of
    /// the trunk.
    Request(PortIdx, Vec<u8>),
    /// Dropped: counted with this reason, or as `filtered` without one.
    Drop(Option<DropReason>),
}

impl State {
    /// A frame on a routed segment's port; false when it is not this
    /// side's to handle (it then goes through the switch as usual).
    #[allow(clippy::too_many_arguments)]
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
        let base = b * BUF_SIZE;
        if len < L3 {
            return false; // the switch counts the runt
        }
        // what the frame says (read only)
        let Some(p) = self.ports[slot as usize].as_ref() else {
            return false;
        };
        let f = &p.bufs[base..base + len];
        let ethertype = [f[E + eth::ETHERTYPE], f[E + eth::ETHERTYPE + 1]];
        let dst_mac = Mac::from_slice(&f[E..]);
        let arp_fields = (ethertype == eth::ETHERTYPE_ARP)
            .then(|| arp::Arp::new(&f[L3..]))
            .flatten()
            .map(|a| (a.op(), a.sender_mac(), a.sender_ip(), a.target_ip()));
        let ip = (ethertype == eth::ETHERTYPE_IPV4 && len >= L3 + ipv4::MIN_HDR_LEN).then(|| {
            let h = &f[L3..];
            let src = Ipv4Addr::new(
                h[ipv4::SRC],
                h[ipv4::SRC + 1],
                h[ipv4::SRC + 2],
                h[ipv4::SRC + 3],
            );
            (src, ipv4::dst(h).expect("length checked"))
        });
        // the resolver behind the switch's gateway
        if cfg.gateway && kind == PortKind::Tap {
            if dst_mac == cfg.gateway_mac {
                return false;
            }
            if arp_fields.is_some_and(|a| a.3 == cfg.gateway_ip) {
                return false;
            }
        }
        if let Some(sp) = self.sw.port_mut(slot) {
            sp.counters.rx_frames += 1;
            sp.counters.rx_bytes += (len - E) as u64;
        }
        // a container's MAC is found on its TAP, as in the switch
        if kind == PortKind::Tap {
            let src = Mac::from_slice(
                &self.ports[slot as usize].as_ref().expect("checked").bufs[base + E + eth::SRC..],
            );
            if !src.is_multicast() && !src.is_zero() {
                self.sw.table.learn(net, &src, slot, now);
            }
        }
        let hosts = self.ports[trunk as usize]
            .as_ref()
            .and_then(|t| t.xform.as_deref())
            .map(|x| &x.hosts);
        let out = if ethertype == eth::ETHERTYPE_ARP {
            match arp_fields {
                None => RoutedOut::Drop(Some(DropReason::Malformed)),
                Some((op, sha, spa, tpa)) => {
                    let ours = hosts.is_some_and(|h| h.contains_key(&tpa));
                    let answer = op == arp::REQUEST
                        && match kind {
                            // everything is behind the parent's MAC, but
                            // a container's own address (duplicate
                            // detection)
                            PortKind::Tap => tpa != spa && !tpa.is_unspecified(),
                            _ => ours,
                        };
                    if answer {
                        let p = self.ports[slot as usize].as_mut().expect("checked");
                        let f = &mut p.bufs[base..base + len];
                        if let Some(mut a) = arp::Arp::new(&mut f[L3..]) {
                            a.make_reply(rmac.0, tpa);
                        }
                        f[E + eth::DST..E + eth::DST + 6].copy_from_slice(&sha);
                        f[E + eth::SRC..E + eth::SRC + 6].copy_from_slice(&rmac.0);
                        RoutedOut::Write(slot)
                    } else {
                        if kind == PortKind::Trunk && op == arp::REPLY && ours {
                            if let Some(r) = self.routed.get_mut(&net) {
                                r.neigh.insert(spa, (Mac(sha), now));
                            }
                        }
                        RoutedOut::Drop(None)
                    }
                }
            }
        } else if let Some((src, dst)) = ip {
            let inside = hosts.and_then(|h| h.get(&dst)).copied();
            let r = self.routed.get_mut(&net).expect("looked up");
            let (to, next) = match (inside, kind) {
                (Some(mac), _) if kind == PortKind::Tap || dst_mac == rmac => {
                    match self.sw.table.lookup(net, &mac, now) {
                        Some(t) if t == slot => (None, RoutedOut::Drop(Some(DropReason::SamePort))),
                        Some(t) => (Some(mac), RoutedOut::Write(t)),
                        None => (Some(mac), RoutedOut::ToTaps(net, trunk)),
                    }
                }
                (None, PortKind::Tap) => {
                    let hop = r.next_hop(dst);
                    match r.neigh.get(&hop) {
                        Some(&(mac, _)) => (Some(mac), RoutedOut::Write(trunk)),
                        None if now.saturating_sub(r.last_request) >= REQUEST_GAP_MS => {
                            r.last_request = now;
                            let req = eth::vnet_frame(
                                eth::BROADCAST,
                                rmac.0,
                                eth::ETHERTYPE_ARP,
                                &arp::request(rmac.0, src, hop),
                            );
                            (None, RoutedOut::Request(trunk, req))
                        }
                        None => (None, RoutedOut::Drop(Some(DropReason::NoRoute))),
                    }
                }
                _ => (None, RoutedOut::Drop(None)),
            };
            if let Some(mac) = to {
                let p = self.ports[slot as usize].as_mut().expect("checked");
                let f = &mut p.bufs[base..base + len];
                f[E + eth::DST..E + eth::DST + 6].copy_from_slice(&mac.0);
                f[E + eth::SRC..E + eth::SRC + 6].copy_from_slice(&rmac.0);
            }
            next
        } else {
            // no broadcast, no other protocols: L3 only
            RoutedOut::Drop(None)
        };
        self.routed_done(slot, b, len, out);
        true
    }

    fn routed_done(&mut self, slot: PortIdx, b: usize, len: usize, out: RoutedOut) {
        if let Some(p) = self.ports[slot as usize].as_mut() {
            p.lens[b] = len as u32;
        }
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
            RoutedOut::Request(trunk, req) => {
                self.sw.count_drop(slot, DropReason::NoRoute);
                self.recycle(slot, b);
                let framed = self.ports[trunk as usize]
                    .as_ref()
                    .and_then(|t| t.xform.as_deref())
                    .and_then(|x| trunk::egress_frame(x, &req));
                if let Some(f) = framed {
                    self.send_owned(trunk, f);
                }
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

    /// Once a second: forget neighbours that stopped answering.
    pub(super) fn routed_tick(&mut self, now: u64) {
        for r in self.routed.values_mut() {
            r.neigh
                .retain(|_, (_, t)| now.saturating_sub(*t) < NEIGH_TTL_MS);
        }
    }
}
