//! Helper workers: more than one core switching between TAPs.
//!
//! With `DatapathConfig::workers` = N > 1, container TAPs are opened with
//! N queues (`IFF_MULTI_QUEUE`). The main worker reads queue 0 of every
//! TAP and owns everything with state: the learning table, the gateway,
//! the NAT, trunks, tunnels. Helper worker k reads queue k of every TAP
//! on a ring, a buffer pool and a thread of its own, and does only the
//! common case itself: a unicast frame from a container to another
//! container of the same network, when the main worker's table already
//! knows both MACs (the source on the port it came in on) and the network
//! has no trunk. Everything else (broadcast, ARP, the gateway, routed
//! traffic, a MAC not learned yet, a trunk's network) is handed to the
//! main worker, which switches it exactly as if it had read it.
//!
//! The kernel spreads a TAP's transmitted flows over its queues by flow
//! hash, and then sends a flow where its replies were written (tun's
//! "automq" flow table), so a flow stays on one worker and its replies
//! too, and flows the main worker answers (the gateway, the NAT) move to
//! queue 0 after their first reply.
//!
//! The table helpers read is a copy the main worker publishes (at most
//! every [`PUBLISH_EVERY_MS`], and at most a tenth of its time, whenever
//! an entry appeared, moved or went,
//! or a command changed ports or networks): helpers read it through an
//! [`ArcSwap`] with no lock, and the main worker never waits for them.
//! A helper remembers, per port, the source MAC it last switched from,
//! and reports them to the main worker every second, which refreshes
//! their entries (a MAC that only talks through a helper would otherwise
//! age out while it talks). Within that second the main worker's table
//! may show an entry as aged while the helper still switches its frames.

use super::*;
use arc_swap::ArcSwap;

/// How often, at most, the main worker publishes a changed table.
pub(super) const PUBLISH_EVERY_MS: u64 = 1;

/// Frames handed to the main worker and not taken yet, per helper; more
/// are dropped (counted) so a flood cannot grow memory without bound.
const MAX_WAITING: u32 = 2048;

/// Spare buffers the main worker keeps for handed-over frames.
pub(super) const SPARE_BUFFERS: usize = 256;

/// What a helper may switch by itself: (network, MAC) -> the port id the
/// MAC was learned on, for container ports of networks without a trunk.
#[derive(Default)]
pub struct FastTable {
    macs: FxHashMap<u64, PortId>,
}

/// Where a service may write a container's frames itself
/// ([`DirectWriter`]): (network, MAC) -> its TAP. A table of its own, read
/// only through short-lived guards: the helpers keep their last
/// [`FastTable`] while idle, and an old table kept here would keep the
/// TAPs of removed ports open.
#[derive(Default)]
pub(super) struct DirectTable {
    macs: FxHashMap<u64, Arc<DirectPort>>,
}

pub(super) type SharedDirect = Arc<ArcSwap<DirectTable>>;

/// A container TAP that services write to themselves (a duplicate of the
/// main worker's fd, closed when the port is gone from the table and
/// from the worker), and the frames they wrote, added to the port's
/// counters.
pub(super) struct DirectPort {
    pub fd: OwnedFd,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
}

/// See [`Datapath::direct_writer`].
#[derive(Clone)]
pub struct DirectWriter {
    pub(super) table: SharedDirect,
}

impl DirectWriter {
    /// Writes `frame` (vnet header + Ethernet, from the gateway) straight
    /// into the TAP of the container its destination MAC was learned on,
    /// on the calling thread; false when that is not a known container
    /// (broadcast, not learned, not a plain TAP, the write failed): then
    /// it goes through [`Injector::inject`]. A service that answers
    /// containers saves the datapath thread's wake-up per answer this way.
    pub fn write(&self, net: NetIdx, frame: &[u8]) -> bool {
        let Some(e) = frame
            .get(VNET_HDR_LEN..)
            .filter(|e| e.len() >= eth::HDR_LEN)
        else {
            return false;
        };
        let dst = Mac::from_slice(e);
        if dst.is_multicast() {
            return false;
        }
        // a guard, not a cache: an old table (and the fds only it still
        // holds) goes as soon as the main worker publishes a new one
        let t = self.table.load();
        let Some(d) = t.macs.get(&crate::table::key(net, &dst)) else {
            return false;
        };
        // SAFETY: a write from a live buffer to an fd the table keeps open
        let n = unsafe { libc::write(d.fd.as_raw_fd(), frame.as_ptr() as *const _, frame.len()) };
        if n < 0 {
            return false;
        }
        d.tx_frames.fetch_add(1, Ordering::Relaxed);
        d.tx_bytes.fetch_add(e.len() as u64, Ordering::Relaxed);
        true
    }
}

pub(super) type Shared = Arc<ArcSwap<FastTable>>;

/// The main worker's side: where it publishes.
pub(super) struct Publisher {
    pub table: Shared,
    /// With direct writes.
    pub direct: Option<SharedDirect>,
    /// The table version last published.
    pub version: u64,
    /// A command may have changed ports or networks since.
    pub dirty: bool,
    pub at: u64,
    /// The least time between two publications: [`PUBLISH_EVERY_MS`], or
    /// ten times what the last one took (a table of 100,000 MACs that
    /// keeps changing costs the main worker at most a tenth of its time).
    pub gap_ms: u64,
    pub stats: WorkerSnapshot,
}

/// A helper worker's own state.
pub(super) struct Helper {
    pub table: arc_swap::Cache<Shared, Arc<FastTable>>,
    pub main: mpsc::Sender<Cmd>,
    pub main_efd: Arc<OwnedFd>,
    /// Frames handed over and not yet taken by the main worker.
    pub waiting: Arc<std::sync::atomic::AtomicU32>,
    pub pending: Vec<(PortId, Vec<u8>)>,
    pub stats: WorkerSnapshot,
}

/// What one worker did, besides the per-port counters (merged into the
/// ports' own).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerSnapshot {
    /// Frames this worker switched on its fast path (helpers).
    pub switched: u64,
    /// Frames handed to the main worker (helpers), or taken from the
    /// helpers (the main worker).
    pub handed_off: u64,
    /// Frames dropped on the way: a helper's queue to the main worker was
    /// full, or the main worker had no spare buffer.
    pub handoff_drops: u64,
}

impl State {
    /// A helper's frame from port `slot` in buffer `b`: switched to its
    /// destination's queue if the fast path knows it, else handed over.
    #[inline]
    pub(super) fn fast_in(&mut self, slot: PortIdx, b: usize, len: usize) {
        let (Some(p), Some(sp)) = (self.ports[slot as usize].as_ref(), self.sw.port(slot)) else {
            self.recycle(slot, b);
            return;
        };
        let (id, net) = (p.id, sp.net);
        self.pool.lens[b] = len as u32;
        let h = self.helper.as_mut().expect("a helper");
        let frame = self.pool.frame(b, len);
        let out = frame
            .get(VNET_HDR_LEN..)
            .filter(|e| e.len() >= eth::HDR_LEN)
            .and_then(|e| {
                let dst = Mac::from_slice(e);
                if dst.is_multicast() {
                    return None;
                }
                let t = h.table.load();
                let src = Mac::from_slice(&e[6..]);
                if t.macs.get(&crate::table::key(net, &src)) != Some(&id) {
                    return None;
                }
                let o = *t.macs.get(&crate::table::key(net, &dst))?;
                (o != id).then_some((src, o))
            })
            .and_then(|(src, o)| Some((src, *self.ids.get(&o)?)));
        if let Some((src, out)) = out {
            // counted as received here (or as the drop)
            if self.sw.admit(slot, frame).is_ok() && self.post_write(slot, b, out) {
                self.helper.as_mut().expect("a helper").stats.switched += 1;
                if let Some(p) = self.ports[slot as usize].as_mut() {
                    p.seen = Some(src);
                }
            } else {
                self.recycle(slot, b);
            }
            return;
        }
        let waiting = h.waiting.load(Ordering::Relaxed) as usize + h.pending.len();
        if waiting >= MAX_WAITING as usize {
            h.stats.handoff_drops += 1;
        } else {
            h.pending.push((id, frame.to_vec()));
            h.stats.handed_off += 1;
        }
        self.recycle(slot, b);
    }

    /// After a batch (helpers): hands the frames it could not switch to
    /// the main worker, with one wake-up.
    pub(super) fn flush_handoffs(&mut self) {
        let Some(h) = self.helper.as_mut() else {
            return;
        };
        if h.pending.is_empty() {
            return;
        }
        let frames = std::mem::take(&mut h.pending);
        h.waiting.fetch_add(frames.len() as u32, Ordering::Relaxed);
        let _ = post(
            &h.main,
            &h.main_efd,
            Cmd::Handoff(frames, h.waiting.clone()),
        );
    }

    /// Every second (helpers): the source MACs switched from each port
    /// since the last report go to the main worker, which refreshes them.
    pub(super) fn report_seen(&mut self) {
        let Some(h) = self.helper.as_ref() else {
            return;
        };
        let seen: Vec<(PortId, Mac)> = self
            .ports
            .iter_mut()
            .flatten()
            .filter_map(|p| p.seen.take().map(|m| (p.id, m)))
            .collect();
        if seen.is_empty() {
            return;
        }
        let _ = post(&h.main, &h.main_efd, Cmd::Seen(seen));
    }

    /// The main worker refreshes what a helper saw (see
    /// [`Self::report_seen`]): learned again on the same port, so an
    /// entry that aged meanwhile comes back.
    pub(super) fn refresh_seen(&mut self, seen: Vec<(PortId, Mac)>) {
        let now = now_ms();
        for (id, mac) in seen {
            let Some(&slot) = self.ids.get(&id) else {
                continue;
            };
            // (not for a port on its way out: its entries are gone)
            let up = self.ports[slot as usize]
                .as_ref()
                .is_some_and(|p| p.state == PortState::Up);
            let Some(net) = self.sw.port(slot).map(|p| p.net).filter(|_| up) else {
                continue;
            };
            self.sw.table.learn(net, &mac, slot, now);
        }
    }

    /// The main worker takes frames a helper handed over: each is switched
    /// from a spare buffer as if read from its port.
    pub(super) fn take_handoff(
        &mut self,
        frames: Vec<(PortId, Vec<u8>)>,
        waiting: &std::sync::atomic::AtomicU32,
    ) {
        waiting.fetch_sub(frames.len() as u32, Ordering::Relaxed);
        let now = now_ms();
        for (id, f) in frames {
            let Some(&slot) = self.ids.get(&id) else {
                continue; // the port is gone
            };
            let Some(b) = self.pool.take_spare() else {
                if let Some(p) = self.publisher.as_mut() {
                    p.stats.handoff_drops += 1;
                }
                continue;
            };
            let len = f.len().min(BUF_SIZE);
            self.pool.frame_mut(b, len).copy_from_slice(&f[..len]);
            if let Some(p) = self.publisher.as_mut() {
                p.stats.handed_off += 1;
            }
            self.frame_in(slot, b, len, now);
        }
    }

    /// After a batch (the main worker): publishes its table for the
    /// helpers if it changed, at most every [`PUBLISH_EVERY_MS`].
    pub(super) fn maybe_publish(&mut self, now: u64) {
        let Some(p) = self.publisher.as_ref() else {
            return;
        };
        if (p.version == self.sw.table.version && !p.dirty)
            || now.saturating_sub(p.at) < p.gap_ms.max(PUBLISH_EVERY_MS)
        {
            return;
        }
        self.publish(now);
    }

    /// Publishes the table now (see [`Self::maybe_publish`]).
    pub(super) fn publish(&mut self, now: u64) {
        if self.publisher.is_none() {
            return;
        }
        let t0 = std::time::Instant::now();
        let mut t = FastTable::default();
        let mut d = DirectTable::default();
        for (net, mac, e) in self.sw.table.entries(now) {
            let plain = self.sw.network(net).is_some_and(|n| n.trunk.is_none());
            let tap = self
                .sw
                .port(e.port)
                .is_some_and(|sp| sp.kind == PortKind::Tap);
            let id = self.ports.get(e.port as usize).and_then(|p| p.as_ref());
            if let (true, true, Some(port)) = (plain, tap, id) {
                if port.state == PortState::Up {
                    let k = crate::table::key(net, &mac);
                    t.macs.insert(k, port.id);
                    // paused while capturing: a direct write passes no
                    // worker, so no capture would see it
                    if let Some(dp) = port.direct.as_ref().filter(|_| self.captures.is_empty()) {
                        d.macs.insert(k, dp.clone());
                    }
                }
            }
        }
        let version = self.sw.table.version;
        let p = self.publisher.as_mut().expect("checked");
        p.table.store(Arc::new(t));
        if let Some(direct) = &p.direct {
            direct.store(Arc::new(d));
        }
        p.version = version;
        p.dirty = false;
        p.at = now;
        p.gap_ms = (t0.elapsed().as_micros() as u64 * 10).div_ceil(1000);
    }
}
