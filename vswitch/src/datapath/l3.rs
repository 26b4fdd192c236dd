//! The routed side of the worker: the uplink (a packet socket on a host
//! interface), its neighbour cache, and the masquerade NAT between the
//! networks and the uplink's address.

use super::*;

impl Uplink {
    pub(super) fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        ipv4::same_subnet(ip, self.ip, self.prefix)
    }

    pub(super) fn next_hop(&self, dst: Ipv4Addr) -> Ipv4Addr {
        if self.in_subnet(dst) {
            dst
        } else {
            self.gateway
        }
    }

    /// Whether `ip` is on the uplink's IPv6 subnet.
    pub(super) fn in_subnet6(&self, ip: std::net::Ipv6Addr) -> bool {
        self.ip6
            .is_some_and(|(a, p)| wire::ipv6::same_subnet(ip, a, p))
    }

    /// The IPv6 next hop for `dst`: itself on the subnet, else the gateway.
    pub(super) fn next_hop6(&self, dst: std::net::Ipv6Addr) -> Option<std::net::Ipv6Addr> {
        if self.in_subnet6(dst) {
            Some(dst)
        } else {
            self.gateway6
        }
    }

    /// A neighbour solicitation for `target` from the uplink's IPv6
    /// address (to its solicited-node group).
    pub(super) fn ns_request(&self, target: std::net::Ipv6Addr) -> Option<Vec<u8>> {
        let (me, _) = self.ip6?;
        let (to, p) = wire::icmpv6::solicitation(target, self.mac.0, me);
        Some(eth::vnet_frame(to, self.mac.0, eth::ETHERTYPE_IPV6, &p))
    }

    /// An ARP request for `ip` from the uplink address.
    pub(super) fn arp_request(&self, ip: Ipv4Addr) -> Vec<u8> {
        eth::vnet_frame(
            eth::BROADCAST,
            self.mac.0,
            eth::ETHERTYPE_ARP,
            &arp::request(self.mac.0, self.ip, ip),
        )
    }
}

impl State {
    pub(super) fn set_uplink(&mut self, u: UplinkConfig, id: PortId) {
        if self.uplink.is_some() {
            return;
        }
        let slot = self.add_io_port(
            PortKind::Uplink,
            id,
            u.name.clone(),
            UPLINK_NET,
            u.mtu,
            u.fd,
        );
        self.uplink = Some(Uplink {
            slot,
            name: u.name,
            mac: u.mac,
            ip: u.ip,
            prefix: u.prefix,
            gateway: u.gateway,
            nat: nat::Nat::new(u.nat),
            arp: FxHashMap::default(),
            last_arp_request: 0,
            ip6: u.ip6,
            gateway6: u.gateway6,
            nd: FxHashMap::default(),
            last_ns: 0,
            no_neighbor: 0,
            resets: false,
        });
        self.uplink_tick(now_ms());
    }

    /// Once a second: expire NAT entries, keep the gateway's MAC fresh.
    pub(super) fn uplink_tick(&mut self, now: u64) {
        let Some(u) = self.uplink.as_mut() else {
            return;
        };
        u.nat.expire(now);
        u.arp.retain(|_, (_, t)| now.saturating_sub(*t) < 300_000);
        let stale = u
            .arp
            .get(&u.gateway)
            .is_none_or(|(_, t)| now.saturating_sub(*t) > 60_000);
        if stale {
            let (slot, f) = (u.slot, u.arp_request(u.gateway));
            u.last_arp_request = now;
            self.send_owned(slot, f);
        }
        // and the IPv6 next hop's
        let u = self.uplink.as_mut().expect("checked");
        u.nd.retain(|_, (_, t)| now.saturating_sub(*t) < 300_000);
        if let Some(g6) = u.gateway6 {
            if u.nd
                .get(&g6)
                .is_none_or(|(_, t)| now.saturating_sub(*t) > 60_000)
            {
                if let Some(f) = u.ns_request(g6) {
                    u.last_ns = now;
                    let slot = u.slot;
                    self.send_owned(slot, f);
                }
            }
        }
    }

    /// A routed frame from network `net` (in `slot`'s buffer `b`): NAT it
    /// and send it out of the uplink, or answer with an ICMP error.
    pub(super) fn route_out(&mut self, slot: PortIdx, net: NetIdx, b: usize, len: usize, now: u64) {
        let cfg = self.sw.network(net).expect("decided on it").cfg;
        const I: usize = VNET_HDR_LEN + 14;
        if eth::ethertype(&self.pool.frame(b, len)[VNET_HDR_LEN..]) == Some(eth::ETHERTYPE_IPV6) {
            self.route_out6(slot, net, b, len, now);
            return;
        }
        let dst = {
            let f = self.pool.frame(b, len);
            Ipv4Addr::new(f[I + 16], f[I + 17], f[I + 18], f[I + 19])
        };
        // (a macvlan or ipvlan network's subnet is a real segment's: routed
        // like any other destination)
        let tapnet_net = self
            .sw
            .networks()
            .any(|(_, n)| n.cfg.gateway && n.cfg.contains(dst));
        if self.route_taken(slot, net, b, len, tapnet_net) {
            return;
        }
        if self.uplink.is_none() || !cfg.routed {
            // a router without a route: network unreachable
            let r = router::icmp_error(&cfg, self.pool.whole_mut(b), len, 3, 0);
            self.unreachable(slot, b, r);
            return;
        }
        let u = self.uplink.as_mut().expect("checked");
        let f = self.pool.frame_mut(b, len);
        let src_mac: [u8; 6] = f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12]
            .try_into()
            .expect("6");
        if u.nat.outbound(net, src_mac, f, now).is_err() {
            self.sw.count_drop(slot, DropReason::NatFailed);
            self.recycle(slot, b);
            return;
        }
        if dst == u.ip {
            // hairpin: to our own address (a published port): back in
            self.deliver_in(slot, b, len, now);
            return;
        }
        let hop = u.next_hop(dst);
        let mac = u.arp.get(&hop).map(|e| e.0);
        let ask = (mac.is_none() && now.saturating_sub(u.last_arp_request) >= 100).then(|| {
            u.last_arp_request = now;
            u.arp_request(hop)
        });
        self.uplink_send(slot, b, len, mac, ask);
    }

    /// Sends the routed frame in `slot`'s buffer `b` out of the uplink to
    /// its next hop's `mac`; with none known yet, drops it (no_route) and
    /// sends `ask` (an ARP request or a neighbour solicitation) instead.
    fn uplink_send(
        &mut self,
        slot: PortIdx,
        b: usize,
        len: usize,
        mac: Option<Mac>,
        ask: Option<Vec<u8>>,
    ) {
        let u = self.uplink.as_mut().expect("an uplink");
        let (up, own) = (u.slot, u.mac);
        let Some(mac) = mac else {
            u.no_neighbor += 1;
            self.sw.count_drop(slot, DropReason::NoRoute);
            self.recycle(slot, b);
            if let Some(f) = ask {
                self.send_owned(up, f);
            }
            return;
        };
        let f = self.pool.frame_mut(b, len);
        f[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&mac.0);
        f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&own.0);
        if !self.post_write(slot, b, up) {
            self.recycle(slot, b);
        }
    }

    /// A packet nothing routes: the ICMP or ICMPv6 error written in its
    /// place (`r`: its length) goes back to the sender, counted as
    /// no_route; a packet no error may answer is dropped, counted as `r`.
    fn unreachable(&mut self, slot: PortIdx, b: usize, r: Result<usize, DropReason>) {
        match r {
            Ok(n) => {
                self.pool.lens[b] = n as u32;
                self.sw.count_drop(slot, DropReason::NoRoute);
                if !self.post_write(slot, b, slot) {
                    self.recycle(slot, b);
                }
            }
            Err(r) => {
                self.sw.count_drop(slot, r);
                self.recycle(slot, b);
            }
        }
    }

    /// What routing does alike for both families before the uplink: a
    /// packet for another tapnet network (`tapnet_net`) is dropped, never
    /// routed there; without an uplink a routed network's packets go to the
    /// socket NAT behind the gateway. True when the frame was taken.
    fn route_taken(
        &mut self,
        slot: PortIdx,
        net: NetIdx,
        b: usize,
        len: usize,
        tapnet_net: bool,
    ) -> bool {
        if tapnet_net {
            self.sw.count_drop(slot, DropReason::NoRoute);
            self.recycle(slot, b);
            return true;
        }
        let routed = self.sw.network(net).is_some_and(|n| n.cfg.routed);
        if self.uplink.is_none() && routed {
            if let Some(h) = self.cfg.route.clone() {
                self.punt(Some(&h), slot, net, b, len);
                return true;
            }
        }
        false
    }

    /// A routed IPv6 packet from network `net`: never to another tapnet
    /// network (dropped, as IPv4 is); with an uplink that has an IPv6
    /// address, masqueraded to it (NAT66) and sent to its next hop; without
    /// an uplink, to the socket NAT behind the gateway (host IPv6 sockets);
    /// otherwise (an uplink without IPv6, an internal network) an ICMPv6
    /// destination unreachable (no route).
    pub(super) fn route_out6(
        &mut self,
        slot: PortIdx,
        net: NetIdx,
        b: usize,
        len: usize,
        now: u64,
    ) {
        let cfg = self.sw.network(net).expect("decided on it").cfg;
        let Some(v6) = cfg.v6 else {
            self.sw.count_drop(slot, DropReason::GatewayUnsupported);
            self.recycle(slot, b);
            return;
        };
        let dst = wire::ipv6::dst(&self.pool.frame(b, len)[VNET_HDR_LEN + 14..]);
        let tapnet_net = dst.is_some_and(|d| {
            self.sw
                .networks()
                .any(|(_, n)| n.cfg.gateway && n.cfg.contains6(d))
        });
        if self.route_taken(slot, net, b, len, tapnet_net) {
            return;
        }
        if cfg.routed && self.uplink.as_ref().is_some_and(|u| u.ip6.is_some()) {
            self.nat66_out(slot, net, b, len, now);
            return;
        }
        let r = crate::router6::icmp6_error(
            &cfg,
            v6,
            self.pool.whole_mut(b),
            len,
            wire::icmpv6::DEST_UNREACHABLE,
            0,
        );
        self.unreachable(slot, b, r);
    }

    /// NAT66: masquerades the IPv6 packet in `slot`'s buffer `b` to the
    /// uplink's IPv6 address and sends it to its next hop (found by
    /// neighbour discovery; unknown yet: a solicitation goes out and the
    /// packet is dropped, as for IPv4's ARP).
    fn nat66_out(&mut self, slot: PortIdx, net: NetIdx, b: usize, len: usize, now: u64) {
        let u = self.uplink.as_mut().expect("checked");
        let f = self.pool.frame_mut(b, len);
        let src_mac: [u8; 6] = f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12]
            .try_into()
            .expect("6");
        if u.nat.outbound(net, src_mac, f, now).is_err() {
            self.sw.count_drop(slot, DropReason::NatFailed);
            self.recycle(slot, b);
            return;
        }
        let Some(dst) = wire::ipv6::dst(&f[VNET_HDR_LEN + 14..]) else {
            self.recycle(slot, b);
            return;
        };
        if Some(dst) == u.ip6.map(|a| a.0) {
            // hairpin: to our own address, back in
            self.deliver_in(slot, b, len, now);
            return;
        }
        let hop = u.next_hop6(dst);
        let mac = hop.and_then(|h| u.nd.get(&h)).map(|e| e.0);
        let ask = hop
            .filter(|_| mac.is_none() && now.saturating_sub(u.last_ns) >= 100)
            .and_then(|h| u.ns_request(h));
        if ask.is_some() {
            u.last_ns = now;
        }
        self.uplink_send(slot, b, len, mac, ask);
    }

    /// IPv6 from the uplink's wire: neighbour discovery for the uplink's
    /// IPv6 address (answered; advertisements learned), or a packet for it
    /// (translated back by the NAT).
    fn uplink_rx6(&mut self, slot: PortIdx, b: usize, len: usize, now: u64) {
        use wire::{icmpv6, ipv6};
        const I: usize = VNET_HDR_LEN + 14;
        const L4: usize = I + ipv6::HDR_LEN;
        let u = self.uplink.as_mut().expect("checked");
        let Some((me, _)) = u.ip6 else {
            self.recycle(slot, b);
            return;
        };
        let f = self.pool.frame(b, len);
        let Some(h) = ipv6::Header::new(&f[I..]) else {
            self.recycle(slot, b);
            return;
        };
        let (src, dst, hop) = (h.src(), h.dst(), h.hop_limit());
        let end = (L4 + h.payload_len()).min(len);
        if h.next_header() == ipv6::PROTO_ICMPV6 && end >= L4 + icmpv6::ND_LEN {
            let msg = &f[L4..end];
            match msg[icmpv6::TYPE] {
                icmpv6::NEIGHBOR_SOLICIT => {
                    let ns = icmpv6::NeighborSolicit::parse(src, dst, hop, msg);
                    let Some(ns) = ns.filter(|n| n.target == me) else {
                        self.recycle(slot, b);
                        return;
                    };
                    let mut asker_mac = [0u8; 6];
                    asker_mac.copy_from_slice(&f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12]);
                    if let Some(m) = ns.slla.filter(|_| !src.is_unspecified()) {
                        if u.in_subnet6(src) || Some(src) == u.gateway6 || ipv6::is_link_local(src)
                        {
                            u.nd.insert(src, (Mac(m), now));
                        }
                    }
                    // who has our address: we do (to all nodes for a DAD probe)
                    let (to, to_mac, flags) = if src.is_unspecified() {
                        let all = std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
                        (all, ipv6::multicast_mac(all), icmpv6::NA_OVERRIDE)
                    } else {
                        (src, asker_mac, icmpv6::NA_SOLICITED | icmpv6::NA_OVERRIDE)
                    };
                    let mac = u.mac;
                    let w = self.pool.whole_mut(b);
                    crate::vnet::VnetHdr::default().write(&mut w[..VNET_HDR_LEN]);
                    w[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&to_mac);
                    w[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&mac.0);
                    w[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&eth::ETHERTYPE_IPV6);
                    let n = icmpv6::NA_WITH_TLLA;
                    ipv6::emit(&mut w[I..L4], n as u16, ipv6::PROTO_ICMPV6, 255, me, to);
                    icmpv6::emit_na(&mut w[L4..L4 + n], flags, me, mac.0, me, to);
                    self.pool.lens[b] = (L4 + n) as u32;
                    if !self.post_write(slot, b, slot) {
                        self.recycle(slot, b);
                    }
                    return;
                }
                icmpv6::NEIGHBOR_ADVERT => {
                    // target and its link-layer option: learned when we
                    // asked (the next hop, or a neighbour already known)
                    let na = icmpv6::NeighborAdvert::parse(src, dst, hop, msg);
                    if let Some((target, m)) = na.and_then(|a| Some((a.target, a.tlla?))) {
                        if Some(target) == u.gateway6
                            || u.nd.contains_key(&target)
                            || u.in_subnet6(target)
                        {
                            u.nd.insert(target, (Mac(m), now));
                        }
                    }
                    self.recycle(slot, b);
                    return;
                }
                _ => {}
            }
        }
        if dst == me {
            self.deliver_in(slot, b, len, now);
        } else {
            self.recycle(slot, b);
        }
    }

    /// A frame from the uplink: ARP for our address, or an answer to
    /// translate back to the container it belongs to.
    pub(super) fn uplink_rx(&mut self, slot: PortIdx, b: usize, len: usize, now: u64) {
        if let Some(sp) = self.sw.port_mut(slot) {
            sp.counters.rx_frames += 1;
            sp.counters.rx_bytes += len.saturating_sub(VNET_HDR_LEN) as u64;
        }
        const E: usize = VNET_HDR_LEN;
        if len < E + 14 + 20 {
            self.recycle(slot, b);
            return;
        }
        self.pool.lens[b] = len as u32;
        let u = self.uplink.as_mut().expect("checked");
        let f = self.pool.frame_mut(b, len);
        let ethertype = [f[E + eth::ETHERTYPE], f[E + eth::ETHERTYPE + 1]];
        match ethertype {
            eth::ETHERTYPE_ARP => {
                let Some(mut a) = arp::Arp::new(&mut f[E + eth::HDR_LEN..]) else {
                    self.recycle(slot, b);
                    return;
                };
                let (sha, spa, tpa) = (Mac(a.sender_mac()), a.sender_ip(), a.target_ip());
                if !sha.is_multicast()
                    && u.in_subnet(spa)
                    && (tpa == u.ip || u.arp.contains_key(&spa))
                {
                    u.arp.insert(spa, (sha, now));
                }
                if a.op() == arp::REQUEST && tpa == u.ip {
                    // who has our address: we do
                    a.make_reply(u.mac.0, u.ip);
                    f[E + eth::DST..E + eth::DST + 6].copy_from_slice(&sha.0);
                    f[E + eth::SRC..E + eth::SRC + 6].copy_from_slice(&u.mac.0);
                    if !self.post_write(slot, b, slot) {
                        self.recycle(slot, b);
                    }
                    return;
                }
                self.recycle(slot, b);
            }
            eth::ETHERTYPE_IPV4
                if f[E + eth::HDR_LEN + ipv4::DST..E + eth::HDR_LEN + ipv4::DST + 4]
                    == u.ip.octets() =>
            {
                self.deliver_in(slot, b, len, now);
            }
            eth::ETHERTYPE_IPV6 => self.uplink_rx6(slot, b, len, now),
            _ => self.recycle(slot, b),
        }
    }

    /// Translates a frame for the uplink address (from the wire, or a
    /// hairpin from inside) back to its container and sends it there.
    pub(super) fn deliver_in(&mut self, slot: PortIdx, b: usize, len: usize, now: u64) {
        const E: usize = VNET_HDR_LEN;
        const I: usize = E + 14;
        let u = self.uplink.as_mut().expect("an uplink");
        let f = self.pool.frame_mut(b, len);
        let inside = match u.nat.inbound(f, now) {
            Ok(i) => i,
            Err(e) => {
                // TCP from the wire that no connection owns: answer as the
                // host owning the address would, with a reset (a peer of a
                // connection lost in a restart fails fast, never hangs)
                let rst = (e == nat::NatDrop::NoConnection && slot == u.slot && u.resets)
                    .then(|| nat::rst::reset_for(f, u.mac.0))
                    .flatten();
                let up = u.slot;
                if rst.is_some() {
                    u.nat.stats.resets_sent += 1;
                }
                self.recycle(slot, b);
                if let Some(r) = rst {
                    self.send_owned(up, r);
                }
                return;
            }
        };
        if eth::ethertype(&f[E..]) == Some(eth::ETHERTYPE_IPV6) {
            // IPv6: the hop limit, no header checksum
            if f[I + wire::ipv6::HOP_LIMIT] <= 1 {
                self.recycle(slot, b);
                return;
            }
            f[I + wire::ipv6::HOP_LIMIT] -= 1;
        } else {
            if f[I + 8] <= 1 {
                self.recycle(slot, b);
                return;
            }
            router::dec_ttl(f, I);
        }
        let dst_mac = Mac(inside.mac);
        let Some(n) = self.sw.network(inside.net) else {
            self.recycle(slot, b);
            return;
        };
        f[E..E + 6].copy_from_slice(&dst_mac.0);
        f[E + 6..E + 12].copy_from_slice(&n.cfg.gateway_mac.0);
        match self.sw.table.lookup(inside.net, &dst_mac, now) {
            Some(d) => {
                if !self.post_write(slot, b, d) {
                    self.recycle(slot, b);
                }
            }
            // aged out of the table (a quiet server): flood like unknown
            // unicast (the uplink is in no network: nothing to skip)
            None => self.flood(slot, b, inside.net, slot),
        }
    }
}
