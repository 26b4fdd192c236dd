//! The switching side of the worker: a received frame through the switch
//! ([`crate::switch`]) to its port(s), to the gateway ([`crate::router`]),
//! or to a service behind it.

use super::*;

impl State {
    /// A frame from port `slot`, in its buffer `b` (`len` bytes with the
    /// vnet header): the uplink's go to the router's L3 side, the others
    /// through the switch. The buffer is written on or recycled.
    #[inline]
    pub(super) fn frame_in(&mut self, slot: PortIdx, b: usize, len: usize, now: u64) {
        if self.helper.is_some() {
            self.fast_in(slot, b, len);
            return;
        }
        match self.sw.port(slot).map(|p| (p.kind, p.net)) {
            Some((PortKind::Uplink, _)) => {
                self.uplink_rx(slot, b, len, now);
                return;
            }
            Some((PortKind::Vtep, _)) => {
                self.vtep_rx(slot, b, len, now);
                return;
            }
            // routed_in itself says when the network is not routed
            Some((kind, net)) if !self.routed.is_empty() => {
                if self.routed_in(slot, kind, net, b, len, now) {
                    return;
                }
            }
            _ => {}
        }
        let Some(p) = self.ports[slot as usize].as_mut() else {
            self.recycle(slot, b);
            return;
        };
        self.pool.lens[b] = len as u32;
        if let Some(x) = p.xform.as_deref() {
            trunk::ipvlan_ingress(x, self.pool.frame_mut(b, len));
        }
        let frame = self.pool.frame(b, len);
        let d = self.sw.decide(slot, frame, now);
        match d {
            Decision::Drop(_) => self.recycle(slot, b),
            Decision::Flood(net) | Decision::FloodExcept(net, _)
                if self.vtep.is_some()
                    && (self.proxy_arp(slot, net, b, len) || self.proxy_nd(slot, net, b, len)) =>
            {
                self.recycle(slot, b)
            }
            Decision::Unicast(dst) => {
                if !self.post_write(slot, b, dst) {
                    self.recycle(slot, b);
                }
            }
            Decision::Flood(net) => self.flood(slot, b, net, slot),
            Decision::FloodExcept(net, except) => self.flood(slot, b, net, except),
            Decision::Gateway(net) => {
                let cfg = self.sw.network(net).expect("decided on it").cfg;
                match router::answer(&cfg, self.pool.whole_mut(b), len) {
                    Ok(router::GwAction::Punt) => {
                        let hook = self.cfg.punt.clone();
                        self.punt(hook.as_ref(), slot, net, b, len);
                    }
                    Ok(router::GwAction::Route) => self.route_out(slot, net, b, len, now),
                    Ok(router::GwAction::Reply(n)) => {
                        self.pool.lens[b] = n as u32;
                        if let Some(sp) = self.sw.port_mut(slot) {
                            sp.counters.gateway_replies += 1;
                        }
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
        }
    }

    /// Hands a copy of the frame in `slot`'s buffer `b` to a service hook
    /// (counted as punted, or as a drop: service_busy when it refused,
    /// gateway_unsupported without a hook) and recycles the buffer.
    pub(super) fn punt(
        &mut self,
        hook: Option<&PuntHook>,
        slot: PortIdx,
        net: NetIdx,
        b: usize,
        len: usize,
    ) {
        let reason = match hook {
            Some(h) => (!(h.0)(net, self.pool.frame(b, len))).then_some(DropReason::ServiceBusy),
            None => Some(DropReason::GatewayUnsupported),
        };
        match reason {
            None => {
                if let Some(sp) = self.sw.port_mut(slot) {
                    sp.counters.punted += 1;
                }
            }
            Some(r) => self.sw.count_drop(slot, r),
        }
        self.recycle(slot, b);
    }

    /// Writes `src`'s buffer `b` to every port of network `net` but `src`
    /// and `except` (by index: no allocation per frame), or recycles it
    /// when no port took it.
    pub(super) fn flood(&mut self, src: PortIdx, b: usize, net: NetIdx, except: PortIdx) {
        let mut sent = false;
        let n = self.sw.network(net).map(|n| n.ports.len()).unwrap_or(0);
        for i in 0..n {
            let dst = self.sw.network(net).expect("counted").ports[i];
            if dst != src && dst != except {
                sent |= self.post_write(src, b, dst);
            }
        }
        if !sent {
            self.recycle(src, b);
        }
    }
}
