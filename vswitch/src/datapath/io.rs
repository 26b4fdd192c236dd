//! The io side of the worker: ports, their buffers, reads, writes and
//! completions. What a frame means is decided elsewhere ([`super::l2`],
//! [`super::l3`]); this moves bytes and keeps count of buffers and
//! operations in flight.

use super::*;

impl IoPort {
    #[inline]
    pub(super) fn buf_ptr(&mut self, b: usize) -> *mut u8 {
        self.bufs[b * BUF_SIZE..].as_mut_ptr()
    }
}

impl State {
    pub(super) fn post_event_read(&mut self) {
        let e = opcode::Read::new(
            types::Fd(self.efd.as_raw_fd()),
            &mut *self.efd_buf as *mut u64 as *mut u8,
            8,
        )
        .build()
        .user_data(ud(K_EVENT, 0, 0, 0));
        self.sqes.push(e);
    }

    pub(super) fn post_tick(&mut self) {
        let e = opcode::Timeout::new(&*self.tick as *const types::Timespec)
            .build()
            .user_data(ud(K_TICK, 0, 0, 0));
        self.sqes.push(e);
    }

    /// Posts the port's read if none is posted and a buffer is free.
    #[inline]
    pub(super) fn arm(&mut self, slot: PortIdx) {
        let Some(p) = self.ports[slot as usize].as_mut() else {
            return;
        };
        if p.state != PortState::Up || p.armed {
            return;
        }
        let e = if let Some(ring) = p.ring.as_ref() {
            if p.in_use >= ring.entries() as u32 {
                return; // re-armed when a buffer comes back
            }
            opcode::ReadMulti::new(types::Fd(p.fd.as_raw_fd()), 0, slot as u16)
                .build()
                .user_data(ud(K_READ, slot, slot, 0))
        } else {
            let Some(b) = p.free.pop() else {
                return;
            };
            p.in_use += 1;
            opcode::Read::new(
                types::Fd(p.fd.as_raw_fd()),
                p.buf_ptr(b as usize),
                BUF_SIZE as u32,
            )
            .build()
            .user_data(ud(K_READ, slot, slot, b as usize))
        };
        p.armed = true;
        p.inflight += 1;
        self.sqes.push(e);
    }

    /// Gives buffer `b` back to the port's receive side.
    #[inline]
    pub(super) fn recycle(&mut self, slot: PortIdx, b: usize) {
        let Some(p) = self.ports[slot as usize].as_mut() else {
            return;
        };
        p.in_use -= 1;
        if p.state != PortState::Up {
            return;
        }
        let ptr = p.buf_ptr(b);
        match p.ring.as_mut() {
            Some(r) => r.push(ptr, BUF_SIZE as u32, b as u16),
            None => p.free.push(b as u16),
        }
        if !p.armed {
            self.arm(slot);
        }
    }

    /// Queues a write of `src`'s buffer `b` to port `dst`; true if the
    /// write holds the buffer (false: `dst` cannot take it, or took a
    /// rewritten copy).
    #[inline]
    pub(super) fn post_write(&mut self, src: PortIdx, b: usize, dst: PortIdx) -> bool {
        let (ptr, len) = {
            let Some(p) = self.ports[src as usize].as_mut() else {
                return false;
            };
            (p.buf_ptr(b), p.lens[b])
        };
        let Some(d) = self.ports.get_mut(dst as usize).and_then(|d| d.as_mut()) else {
            return false;
        };
        if d.state != PortState::Up {
            return false;
        }
        if d.xform.as_ref().is_some_and(|x| x.rewrites()) {
            // a VLAN tag or the shared MAC: a copy, since a flooded
            // buffer is written to other ports unchanged
            let x = self.ports[dst as usize]
                .as_ref()
                .and_then(|d| d.xform.as_deref());
            let p = self.ports[src as usize].as_ref();
            let base = b * BUF_SIZE;
            let copy = x
                .zip(p)
                .and_then(|(x, p)| trunk::egress_frame(x, &p.bufs[base..base + len as usize]));
            if let Some(f) = copy {
                self.send_owned(dst, f);
            }
            return false;
        }
        d.inflight += 1;
        let e = opcode::Write::new(types::Fd(d.fd.as_raw_fd()), ptr, len)
            .build()
            .user_data(ud(K_WRITE, src, dst, b));
        self.sqes.push(e);
        let p = self.ports[src as usize].as_mut().expect("checked");
        p.inflight += 1;
        p.refs[b] += 1;
        true
    }

    pub(super) fn complete(&mut self, u: u64, res: i32, flags: u32, now: u64) {
        let (kind, a, b, buf) = ud_parts(u);
        match kind {
            K_READ => self.read_done(a, buf, res, flags, now),
            K_WRITE => self.write_done(a, b, buf, res),
            K_EVENT => {
                self.apply_commands();
                if !self.exiting {
                    self.post_event_read();
                }
            }
            K_TICK => {
                if now.saturating_sub(self.last_age) >= 1000 {
                    self.sw.table.age(now);
                    self.last_age = now;
                    self.uplink_tick(now);
                    self.routed_tick(now);
                }
                if !self.exiting {
                    self.post_tick();
                }
            }
            K_INJECT => self.inject_done(a, buf, res),
            K_CANCEL => {
                if let Some(p) = self.ports[a as usize].as_mut() {
                    p.inflight -= 1;
                }
                self.maybe_free(a);
            }
            _ => {}
        }
    }

    #[inline]
    pub(super) fn read_done(
        &mut self,
        slot: PortIdx,
        ud_buf: usize,
        res: i32,
        flags: u32,
        now: u64,
    ) {
        let Some(p) = self.ports[slot as usize].as_mut() else {
            return;
        };
        let multishot = p.ring.is_some();
        if !(multishot && cqueue::more(flags)) {
            p.armed = false;
            p.inflight -= 1;
        }
        // the buffer the frame is in, if any
        let buf = if multishot {
            cqueue::buffer_select(flags).map(|b| {
                p.in_use += 1;
                b as usize
            })
        } else {
            Some(ud_buf)
        };
        if p.state != PortState::Up {
            if let Some(b) = buf {
                self.recycle(slot, b);
            }
            self.maybe_free(slot);
            return;
        }
        if res < 0 || buf.is_none() {
            if let Some(b) = buf {
                self.recycle(slot, b);
            }
            let p = self.ports[slot as usize].as_mut().expect("checked");
            match -res {
                // out of buffers: re-armed as soon as one comes back
                // ENETDOWN: a trunk's parent went down; the packet socket
                // reports it once and reads again when it comes back
                libc::ENOBUFS | libc::EAGAIN | libc::EINTR | libc::ENETDOWN | 0 => self.arm(slot),
                libc::ECANCELED => {}
                _ => {
                    // EBADFD and friends: the device is gone or detached.
                    p.state = PortState::Failed;
                }
            }
            return;
        }
        let b = buf.expect("checked");
        // keep the port reading while this frame is switched
        self.arm(slot);
        self.frame_in(slot, b, res as usize, now);
    }

    /// The egress side of a completed write: in-flight count, tx counters
    /// or a tx_error drop.
    #[inline]
    pub(super) fn tx_done(&mut self, dst: PortIdx, res: i32) {
        if let Some(d) = self.ports[dst as usize].as_mut() {
            d.inflight -= 1;
            if res >= 0 {
                self.sw
                    .count_tx(dst, (res as usize).saturating_sub(VNET_HDR_LEN));
            } else if res != -libc::ECANCELED {
                self.sw.count_drop(dst, DropReason::TxError);
            }
        }
    }

    #[inline]
    pub(super) fn write_done(&mut self, src: PortIdx, dst: PortIdx, b: usize, res: i32) {
        self.tx_done(dst, res);
        let mut repost = false;
        if let Some(p) = self.ports[src as usize].as_mut() {
            p.inflight -= 1;
            p.refs[b] -= 1;
            repost = p.refs[b] == 0;
        }
        if repost {
            self.recycle(src, b);
        }
        self.maybe_free(dst);
        if src != dst {
            self.maybe_free(src);
        }
    }

    /// Writes a frame from the gateway to its destination port(s).
    pub(super) fn inject(&mut self, net: NetIdx, frame: Vec<u8>) {
        if frame.len() < VNET_HDR_LEN + 14 {
            return;
        }
        let Some(n) = self.sw.network(net) else {
            return;
        };
        let dst = Mac::from_slice(&frame[VNET_HDR_LEN..]);
        let unicast = (!dst.is_multicast())
            .then(|| self.sw.table.lookup(net, &dst, now_ms()))
            .flatten();
        let count = if unicast.is_some() { 1 } else { n.ports.len() };
        let idx = self.inject_free.pop().unwrap_or_else(|| {
            self.injects.push(None);
            self.injects.len() - 1
        });
        let ptr = frame.as_ptr();
        let len = frame.len() as u32;
        let mut writes = 0;
        // the target ports by index: no allocation per frame
        for i in 0..count {
            let t = match unicast {
                Some(p) => p,
                None => self.sw.network(net).expect("checked").ports[i],
            };
            let Some(d) = self.ports.get_mut(t as usize).and_then(|d| d.as_mut()) else {
                continue;
            };
            // the gateway's services answer containers, not the segment
            if d.state != PortState::Up || d.xform.is_some() {
                continue;
            }
            d.inflight += 1;
            writes += 1;
            // the Vec's heap buffer does not move while it sits in `injects`
            let e = opcode::Write::new(types::Fd(d.fd.as_raw_fd()), ptr, len)
                .build()
                .user_data(ud(K_INJECT, t, 0, idx));
            self.sqes.push(e);
        }
        if writes == 0 {
            self.inject_free.push(idx);
        } else {
            self.injects[idx] = Some((frame, writes));
        }
    }

    /// Writes an owned frame (vnet header + Ethernet) to port `t`.
    pub(super) fn send_owned(&mut self, t: PortIdx, frame: Vec<u8>) {
        let Some(d) = self.ports.get_mut(t as usize).and_then(|d| d.as_mut()) else {
            return;
        };
        if d.state != PortState::Up {
            return;
        }
        let idx = self.inject_free.pop().unwrap_or_else(|| {
            self.injects.push(None);
            self.injects.len() - 1
        });
        d.inflight += 1;
        let e = opcode::Write::new(
            types::Fd(d.fd.as_raw_fd()),
            frame.as_ptr(),
            frame.len() as u32,
        )
        .build()
        .user_data(ud(K_INJECT, t, 0, idx));
        self.sqes.push(e);
        self.injects[idx] = Some((frame, 1));
    }

    pub(super) fn inject_done(&mut self, dst: PortIdx, idx: usize, res: i32) {
        self.tx_done(dst, res);
        if let Some(Some((_, w))) = self.injects.get_mut(idx) {
            *w -= 1;
            if *w == 0 {
                self.injects[idx] = None;
                self.inject_free.push(idx);
            }
        }
        self.maybe_free(dst);
    }

    pub(super) fn maybe_free(&mut self, slot: PortIdx) {
        let Some(p) = self.ports[slot as usize].as_mut() else {
            return;
        };
        if p.state != PortState::Closing || p.inflight != 0 {
            return;
        }
        let mut p = self.ports[slot as usize].take().expect("checked");
        self.sw.free_port(slot);
        self.ids.remove(&p.id);
        if let Some(r) = p.ring.take() {
            self.to_unregister.push((slot as u16, r));
        }
        if p.delete_device {
            let _ = crate::tap::set_persist(&p.fd, false);
        }
        drop(p.fd);
        for d in p.done {
            let _ = d.send(());
        }
    }

    pub(super) fn start_close(
        &mut self,
        slot: PortIdx,
        delete_device: bool,
        done: Option<mpsc::SyncSender<()>>,
    ) {
        let Some(p) = self.ports[slot as usize].as_mut() else {
            return;
        };
        p.delete_device |= delete_device;
        p.done.extend(done);
        if p.state == PortState::Closing {
            return;
        }
        p.state = PortState::Closing;
        // a routed segment goes with its trunk (the slot may be reused)
        self.routed.retain(|_, r| r.trunk != slot);
        self.sw.detach_port(slot);
        let e =
            opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(p.fd.as_raw_fd())).all())
                .build()
                .user_data(ud(K_CANCEL, slot, 0, 0));
        p.inflight += 1;
        self.sqes.push(e);
    }

    /// Adds a port (a TAP, or the uplink's packet socket) and starts reading.
    pub(super) fn add_io_port(
        &mut self,
        kind: PortKind,
        id: PortId,
        name: String,
        net: NetIdx,
        mtu: u32,
        fd: OwnedFd,
    ) -> PortIdx {
        let slot = self.sw.add_port_kind(kind, net, mtu);
        let nb = self.cfg.bufs_per_port.clamp(1, 4096).next_power_of_two();
        let mut ring = None;
        if self.multishot {
            match BufRing::new(nb as u16) {
                Ok(r) => ring = Some(r),
                Err(e) => self.report(&format!("port {name}: {e}")),
            }
        }
        let mut port = IoPort {
            id,
            name,
            fd,
            xform: None,
            bufs: vec![0u8; nb * BUF_SIZE].into_boxed_slice(),
            lens: vec![0; nb].into_boxed_slice(),
            refs: vec![0; nb].into_boxed_slice(),
            ring,
            free: Vec::new(),
            in_use: 0,
            armed: false,
            inflight: 0,
            state: PortState::Up,
            delete_device: false,
            done: Vec::new(),
        };
        if self.ports.len() <= slot as usize {
            self.ports.resize_with(slot as usize + 1, || None);
        }
        match port.ring.as_mut() {
            Some(r) => {
                for b in 0..nb {
                    let ptr = port.bufs[b * BUF_SIZE..].as_mut_ptr();
                    r.push(ptr, BUF_SIZE as u32, b as u16);
                }
            }
            None => port.free = (0..nb as u16).rev().collect(),
        }
        let registered_later = port.ring.is_some();
        self.ports[slot as usize] = Some(port);
        self.ids.insert(id, slot);
        if registered_later {
            self.to_register.push(slot);
        } else {
            self.arm(slot);
        }
        slot
    }
}
