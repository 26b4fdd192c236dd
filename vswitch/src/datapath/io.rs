//! The io side of the worker: ports, their buffers, reads, writes and
//! completions. What a frame means is decided elsewhere ([`super::l2`],
//! [`super::l3`]); this moves bytes and keeps count of buffers and
//! operations in flight.

use super::*;

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

    /// Posts the port's read if none is posted: a multishot read, or one
    /// plain read, that selects its buffer from the pool when a frame
    /// arrives. A port finding the pool empty waits in [`Pool::starved`].
    #[inline]
    pub(super) fn arm(&mut self, slot: PortIdx) {
        let Some(p) = self.ports[slot as usize].as_mut() else {
            return;
        };
        // a tunnel port sends only: the VTEP reads for every tunnel
        if p.state != PortState::Up || p.armed || p.tunnel.is_some() {
            return;
        }
        if !self.pool.available() {
            if !p.starved {
                p.starved = true;
                self.pool.starved.push_back(slot);
            }
            return;
        }
        let fd = types::Fd(p.fd.as_raw_fd());
        let vtep_msg = self
            .vtep
            .as_ref()
            .filter(|v| v.slot == slot && v.recvmsg)
            .map(|v| v.msg_ptr());
        let e = if let Some(msg) = vtep_msg {
            // the VTEP: datagrams with their sender and GRO segment size
            opcode::RecvMsgMulti::new(fd, msg, pool::BGID).build()
        } else if self.multishot {
            opcode::ReadMulti::new(fd, 0, pool::BGID).build()
        } else {
            opcode::Read::new(fd, std::ptr::null_mut(), BUF_SIZE as u32)
                .buf_group(pool::BGID)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        };
        p.armed = true;
        p.inflight += 1;
        self.sqes.push(e.user_data(ud(K_READ, slot, slot, 0)));
    }

    /// Gives buffer `b` back to the pool, and arms the ports that were
    /// waiting for one. `_slot` is the port the frame came from.
    #[inline]
    pub(super) fn recycle(&mut self, _slot: PortIdx, b: usize) {
        self.pool.put(b);
        // every waiting port: arming takes no buffer, and a port that
        // finds the ring empty again just queues again (waking fewer could
        // leave one unarmed for good once the others go quiet)
        while self.pool.available() {
            let Some(s) = self.pool.starved.pop_front() else {
                break;
            };
            if let Some(p) = self.ports[s as usize].as_mut() {
                p.starved = false;
            }
            self.arm(s);
        }
    }

    /// Queues a write of `src`'s buffer `b` to port `dst`; true if the
    /// write holds the buffer (false: `dst` cannot take it, or took a
    /// rewritten copy).
    #[inline]
    pub(super) fn post_write(&mut self, src: PortIdx, b: usize, dst: PortIdx) -> bool {
        if self.ports[src as usize].is_none() {
            return false;
        }
        let (ptr, len) = (self.pool.ptr(b), self.pool.lens[b]);
        if !self.captures.is_empty() && self.plain_dst(dst) {
            self.capture_buf(dst, b, len as usize, true);
        }
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
            let copy = x.and_then(|x| trunk::egress_frame(x, self.pool.frame(b, len as usize)));
            if let Some(f) = copy {
                self.send_owned(dst, f);
            }
            return false;
        }
        if d.tunnel.is_some() {
            self.tunnel_tx(b, dst);
            return false;
        }
        d.inflight += 1;
        let e = opcode::Write::new(types::Fd(d.fd.as_raw_fd()), ptr, len)
            .build()
            .user_data(ud(K_WRITE, src, dst, b));
        self.sqes.push(e);
        let p = self.ports[src as usize].as_mut().expect("checked");
        p.inflight += 1;
        self.pool.refs[b] += 1;
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
                    self.report_seen();
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
        _ud_buf: usize,
        res: i32,
        flags: u32,
        now: u64,
    ) {
        // the buffer the kernel selected for the frame, if any
        let buf = cqueue::buffer_select(flags).map(|b| b as usize);
        if let Some(b) = buf {
            self.pool.took(b);
        }
        let Some(p) = self.ports[slot as usize].as_mut() else {
            if let Some(b) = buf {
                self.recycle(slot, b);
            }
            return;
        };
        if !(self.multishot && cqueue::more(flags)) {
            p.armed = false;
            p.inflight -= 1;
        }
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
                // ECANCELED while the port is up: a cancel meant for
                // another port that shares its open file; it reads on
                libc::ENOBUFS
                | libc::EAGAIN
                | libc::EINTR
                | libc::ENETDOWN
                | libc::ECANCELED
                | 0 => self.arm(slot),
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
        if !self.captures.is_empty() {
            self.capture_buf(slot, b, res as usize, false);
        }
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
        if let Some(p) = self.ports[src as usize].as_mut() {
            p.inflight -= 1;
        }
        self.pool.refs[b] -= 1;
        if self.pool.refs[b] == 0 {
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
            // the gateway's services answer containers, not the segment
            let to_container = self
                .ports
                .get(t as usize)
                .and_then(|d| d.as_ref())
                .is_some_and(|d| {
                    d.state == PortState::Up && d.xform.is_none() && d.tunnel.is_none()
                });
            if !to_container {
                continue;
            }
            if !self.captures.is_empty() {
                self.capture(t, &frame, true);
            }
            let Some(d) = self.ports.get_mut(t as usize).and_then(|d| d.as_mut()) else {
                continue;
            };
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
        if self
            .ports
            .get(t as usize)
            .and_then(|d| d.as_ref())
            .is_none_or(|d| d.state != PortState::Up)
        {
            return;
        }
        if !self.captures.is_empty() {
            self.capture(t, &frame, true);
        }
        let Some(d) = self.ports.get_mut(t as usize).and_then(|d| d.as_mut()) else {
            return;
        };
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
        let p = self.ports[slot as usize].take().expect("checked");
        self.sw.free_port(slot);
        self.ids.remove(&p.id);
        if p.direct.is_some() {
            // the published table holds a duplicate of the fd: the device
            // must not outlive the port because of it
            self.publish(now_ms());
        }
        if p.delete_device {
            let _ = crate::tap::set_persist(&p.fd, false);
        }
        // (the duplicate first: the last close of the device is this port's)
        drop(p.direct);
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
        let tunnel = p.tunnel.is_some();
        if tunnel {
            self.forget_tunnel(slot);
        }
        let p = self.ports[slot as usize].as_mut().expect("checked");
        // a routed segment goes with its trunk (the slot may be reused)
        self.routed.retain(|_, r| r.trunk != slot);
        self.sw.detach_port(slot);
        if tunnel {
            // A tunnel's fd is a duplicate of the VTEP's socket, and a
            // cancel by fd matches the open file: it would end the VTEP's
            // reads (every overlay network on this host) as well. A
            // tunnel port has no reads, and its sends complete by
            // themselves: it is freed when the last one has.
            self.maybe_free(slot);
            return;
        }
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
        // a duplicate for the services' direct writes (container TAPs)
        let direct = (kind == PortKind::Tap
            && self.publisher.as_ref().is_some_and(|p| p.direct.is_some()))
        .then(|| fd.try_clone().ok())
        .flatten()
        .map(|d| {
            Arc::new(fast::DirectPort {
                fd: d,
                tx_frames: AtomicU64::new(0),
                tx_bytes: AtomicU64::new(0),
            })
        });
        let port = IoPort {
            id,
            name,
            fd,
            direct,
            seen: None,
            xform: None,
            tunnel: None,
            armed: false,
            starved: false,
            inflight: 0,
            state: PortState::Up,
            delete_device: false,
            done: Vec::new(),
        };
        if self.ports.len() <= slot as usize {
            self.ports.resize_with(slot as usize + 1, || None);
        }
        self.ports[slot as usize] = Some(port);
        self.ids.insert(id, slot);
        // a tunnel port only sends; the VTEP is armed once it is set up
        if !matches!(kind, PortKind::Tunnel | PortKind::Vtep) {
            self.arm(slot);
        }
        slot
    }
}
