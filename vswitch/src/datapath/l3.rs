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
    }

    /// A routed frame from network `net` (in `slot`'s buffer `b`): NAT it
    /// and send it out of the uplink, or answer with an ICMP error.
    pub(super) fn route_out(&mut self, slot: PortIdx, net: NetIdx, b: usize, len: usize, now: u64) {
        let cfg = self.sw.network(net).expect("decided on it").cfg;
        const I: usize = VNET_HDR_LEN + 14;
        if eth::ethertype(&self.pool.frame(b, len)[VNET_HDR_LEN..]) == Some(eth::ETHERTYPE_IPV6) {
            self.route_out6(slot, net, b, len);
            return;
        }
        let dst = {
            let f = self.pool.frame(b, len);
            Ipv4Addr::new(f[I + 16], f[I + 17], f[I + 18], f[I + 19])
        };
        // other tapnet networks are never reachable from here
        // (a macvlan or ipvlan network's subnet is a real segment's: routed
        // like any other destination)
        if self
            .sw
            .networks()
            .any(|(_, n)| n.cfg.gateway && n.cfg.contains(dst))
        {
            self.sw.count_drop(slot, DropReason::NoRoute);
            self.recycle(slot, b);
            return;
        }
        if self.uplink.is_none() && cfg.routed {
            if let Some(h) = self.cfg.route.clone() {
                // the socket NAT behind the gateway takes it
                self.punt(Some(&h), slot, net, b, len);
                return;
            }
        }
        if self.uplink.is_none() || !cfg.routed {
            // a router without a route: network unreachable
            match router::icmp_error(&cfg, self.pool.whole_mut(b), len, 3, 0) {
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
        let Some(&(mac, _)) = u.arp.get(&hop) else {
            u.no_neighbor += 1;
            let up = u.slot;
            let req = (now.saturating_sub(u.last_arp_request) >= 100).then(|| {
                u.last_arp_request = now;
                u.arp_request(hop)
            });
            self.sw.count_drop(slot, DropReason::NoRoute);
            self.recycle(slot, b);
            if let Some(f) = req {
                self.send_owned(up, f);
            }
            return;
        };
        f[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&mac.0);
        f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&u.mac.0);
        let up = u.slot;
        if !self.post_write(slot, b, up) {
            self.recycle(slot, b);
        }
    }

    /// A routed IPv6 packet from network `net`: never to another tapnet
    /// network (dropped, as IPv4 is); without an uplink, to the socket NAT
    /// behind the gateway (host IPv6 sockets); with an uplink (no NAT66
    /// yet) or on an internal network, an ICMPv6 destination unreachable
    /// (no route).
    pub(super) fn route_out6(&mut self, slot: PortIdx, net: NetIdx, b: usize, len: usize) {
        let cfg = self.sw.network(net).expect("decided on it").cfg;
        let Some(v6) = cfg.v6 else {
            self.sw.count_drop(slot, DropReason::GatewayUnsupported);
            self.recycle(slot, b);
            return;
        };
        let dst = wire::ipv6::dst(&self.pool.frame(b, len)[VNET_HDR_LEN + 14..]);
        if dst.is_some_and(|d| {
            self.sw
                .networks()
                .any(|(_, n)| n.cfg.gateway && n.cfg.contains6(d))
        }) {
            self.sw.count_drop(slot, DropReason::NoRoute);
            self.recycle(slot, b);
            return;
        }
        if self.uplink.is_none() && cfg.routed {
            if let Some(h) = self.cfg.route.clone() {
                self.punt(Some(&h), slot, net, b, len);
                return;
            }
        }
        match crate::router6::icmp6_error(
            &cfg,
            v6,
            self.pool.whole_mut(b),
            len,
            wire::icmpv6::DEST_UNREACHABLE,
            0,
        ) {
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
        if f[I + 8] <= 1 {
            self.recycle(slot, b);
            return;
        }
        router::dec_ttl(f, I);
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
