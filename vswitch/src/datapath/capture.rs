//! Packet capture: frames as the switch sees them, copied out of the
//! datapath for a reader (`tapnet capture`).
//!
//! Each worker keeps the captures it was given; a frame is looked at only
//! when there is one (one length check per read and per write when nobody
//! captures). A frame from or to a captured port runs the capture's
//! filter (a classic BPF program, compiled and run by the caller's code:
//! this crate does not link libpcap) on the frame itself, before anything
//! is copied; a match is copied (up to the snap length) into a bounded
//! queue. When the reader is slow and the queue is full, the frame is
//! counted as a capture drop: it is never held back from the network.
//!
//! Where frames are seen: every read from a port ("in", from the
//! container) and every write to a port ("out"), on whichever worker does
//! it; a frame handed from a helper to the main worker is seen once, where
//! it was read; frames the gateway's services inject, and frames a tunnel
//! decapsulates, where they enter. The socket NAT's direct writes (which bypass the
//! datapath) are paused while a capture runs, so its answers are seen too.
//! Frames are Ethernet frames without the vnet header; GSO super-frames
//! (up to 64 KiB) are copied as they are.

use super::*;
use std::sync::atomic::AtomicU64;

/// Which ports a capture takes.
#[derive(Debug, Clone)]
pub enum CaptureTarget {
    /// Every port of a network: its containers', its trunk or tunnel.
    Network(NetIdx),
    /// These ports only.
    Ports(Vec<PortId>),
}

/// A frame the filter matched.
#[derive(Debug)]
pub struct CapturedFrame {
    pub port: PortId,
    /// Written to the port (towards the container); false: read from it.
    pub out: bool,
    /// Since the Unix epoch.
    pub time: Duration,
    /// The frame's whole length; `data` may be shorter (snap length).
    pub len: u32,
    pub data: Vec<u8>,
    /// Its vnet header (GSO and checksum offload), for a reader that
    /// segments super-frames.
    pub vnet: [u8; VNET_HDR_LEN],
}

/// A frame filter: true to capture. Run on the Ethernet frame.
pub type CaptureFilter = Box<dyn FnMut(&[u8]) -> bool + Send>;

/// One worker's share of a capture.
pub(super) struct WorkerCapture {
    pub id: u64,
    pub target: CaptureTarget,
    pub filter: Option<CaptureFilter>,
    pub snaplen: usize,
    pub sink: mpsc::SyncSender<CapturedFrame>,
    pub drops: Arc<AtomicU64>,
    /// Bytes of frames waiting for the reader (see [`CAPTURE_BYTES`]).
    pub queued: Arc<AtomicU64>,
    /// The reader went away: removed at the next command round.
    pub gone: bool,
}

/// A running capture, from [`Datapath::start_capture`]: frames arrive on
/// `frames`; dropping it ends it on every worker.
pub struct Capture {
    pub id: u64,
    pub frames: mpsc::Receiver<CapturedFrame>,
    /// Frames the filter matched that the queue had no room for.
    pub drops: Arc<AtomicU64>,
    /// Bytes waiting in `frames`: the reader subtracts what it takes
    /// ([`Capture::took`]).
    queued: Arc<AtomicU64>,
    /// The workers' lanes, to end it.
    lanes: Vec<(mpsc::Sender<Cmd>, Arc<OwnedFd>)>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        for (tx, efd) in &self.lanes {
            let _ = post(tx, efd, Cmd::StopCapture(self.id));
        }
    }
}

/// Frames waiting for the reader, per capture.
pub const CAPTURE_QUEUE: usize = 8192;
/// Bytes waiting for the reader, per capture (GSO frames are up to 64 KiB
/// each: frames alone would not bound the memory).
pub const CAPTURE_BYTES: u64 = 32 << 20;

impl Capture {
    /// The reader took `f` off the queue.
    pub fn took(&self, f: &CapturedFrame) {
        self.queued
            .fetch_sub(f.data.len() as u64, Ordering::Relaxed);
    }
}

impl Datapath {
    /// Starts a capture of `target`: `filter` makes one filter per worker
    /// (None: every frame), `snaplen` bytes of each frame are kept (0: all).
    /// Returns once every worker runs it (a frame any worker reads after
    /// that is seen), or Err after `timeout` (the capture is then stopped).
    pub fn start_capture(
        &self,
        target: CaptureTarget,
        mut filter: Option<impl FnMut() -> CaptureFilter>,
        snaplen: usize,
        timeout: Duration,
    ) -> Result<Capture, DatapathError> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(CAPTURE_QUEUE);
        let drops = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicU64::new(0));
        let lanes = 1 + self.helpers.len();
        let (ack, acks) = mpsc::sync_channel(lanes);
        for lane in std::iter::once(&self.main).chain(self.helpers.iter()) {
            let wc = WorkerCapture {
                id,
                target: target.clone(),
                filter: filter.as_mut().map(|f| f()),
                snaplen: if snaplen == 0 { usize::MAX } else { snaplen },
                sink: tx.clone(),
                drops: drops.clone(),
                queued: queued.clone(),
                gone: false,
            };
            lane.send(Cmd::StartCapture(Box::new(wc), ack.clone()))?;
        }
        let cap = Capture {
            id,
            frames: rx,
            drops,
            queued,
            lanes: std::iter::once(&self.main)
                .chain(self.helpers.iter())
                .map(|l| (l.tx.clone(), l.efd.clone()))
                .collect(),
        };
        // (only the workers hold a sender now: one that is gone ends the
        // wait at once; dropping `cap` on an error stops it where it did
        // start)
        drop(ack);
        let until = std::time::Instant::now() + timeout;
        for _ in 0..lanes {
            let left = until.saturating_duration_since(std::time::Instant::now());
            acks.recv_timeout(left).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => DatapathError::Timeout(timeout),
                mpsc::RecvTimeoutError::Disconnected => DatapathError::Stopped,
            })?;
        }
        Ok(cap)
    }
}

impl State {
    /// Offers `frame` (vnet header + Ethernet) from or to port `slot` to
    /// the captures. Call only when `self.captures` is not empty.
    #[cold]
    pub(super) fn capture(&mut self, slot: PortIdx, frame: &[u8], out: bool) {
        if let Some((id, net)) = self.capture_port(slot) {
            offer(&mut self.captures, id, net, frame, out);
        }
    }

    /// [`Self::capture`] of a frame in pool buffer `b` (`len` bytes),
    /// filtered where it lies: only a match is copied.
    #[cold]
    pub(super) fn capture_buf(&mut self, slot: PortIdx, b: usize, len: usize, out: bool) {
        if let Some((id, net)) = self.capture_port(slot) {
            offer(&mut self.captures, id, net, self.pool.frame(b, len), out);
        }
    }

    /// Whether a write of a pool buffer to `dst` sends it as it is (an Up
    /// port that rewrites nothing): then it is captured there; a rewritten
    /// copy is captured where it is sent (`send_owned`).
    pub(super) fn plain_dst(&self, dst: PortIdx) -> bool {
        self.ports
            .get(dst as usize)
            .and_then(|d| d.as_ref())
            .is_some_and(|d| {
                d.state == PortState::Up && !d.xform.as_ref().is_some_and(|x| x.rewrites())
            })
    }

    fn capture_port(&self, slot: PortIdx) -> Option<(PortId, NetIdx)> {
        self.ports
            .get(slot as usize)
            .and_then(|p| p.as_ref())
            .map(|p| p.id)
            .zip(self.sw.port(slot).map(|p| p.net))
    }

    /// Runs capture `c` from now on and tells `ack` so.
    pub(super) fn capture_cmd_start(&mut self, c: WorkerCapture, ack: mpsc::SyncSender<()>) {
        self.captures.retain(|c| !c.gone);
        self.captures.push(c);
        let _ = ack.send(());
    }

    pub(super) fn capture_cmd_stop(&mut self, id: u64) {
        self.captures.retain(|c| c.id != id && !c.gone);
    }
}

/// Offers a frame of port `id` (network `net`) to every capture.
fn offer(captures: &mut [WorkerCapture], id: PortId, net: NetIdx, frame: &[u8], out: bool) {
    let Some(f) = frame.get(VNET_HDR_LEN..) else {
        return;
    };
    let mut time = None;
    for c in captures.iter_mut().filter(|c| !c.gone) {
        let ours = match &c.target {
            CaptureTarget::Network(n) => *n == net,
            CaptureTarget::Ports(ps) => ps.contains(&id),
        };
        if !ours || !c.filter.as_mut().is_none_or(|flt| flt(f)) {
            continue;
        }
        let t = *time.get_or_insert_with(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
        });
        let keep = f.len().min(c.snaplen);
        if c.queued.load(Ordering::Relaxed) + keep as u64 > CAPTURE_BYTES {
            c.drops.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut vnet = [0u8; VNET_HDR_LEN];
        vnet.copy_from_slice(&frame[..VNET_HDR_LEN]);
        let cf = CapturedFrame {
            port: id,
            out,
            time: t,
            len: f.len() as u32,
            data: f[..keep].to_vec(),
            vnet,
        };
        // counted before it is sent: the reader may take it at once
        c.queued.fetch_add(keep as u64, Ordering::Relaxed);
        match c.sink.try_send(cf) {
            Ok(()) => {}
            Err(e) => {
                c.queued.fetch_sub(keep as u64, Ordering::Relaxed);
                match e {
                    mpsc::TrySendError::Full(_) => {
                        c.drops.fetch_add(1, Ordering::Relaxed);
                    }
                    mpsc::TrySendError::Disconnected(_) => c.gone = true,
                }
            }
        }
    }
}
