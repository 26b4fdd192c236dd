//! The io_uring datapath: one worker thread owns the switch, a ring, and
//! every port's buffers.
//!
//! The worker's receive buffers are one pool in a provided-buffer ring
//! shared by all ports ([`pool`]), and each port has one *multishot* read
//! on its TAP fd (`IORING_OP_READ_MULTISHOT`, Linux 6.7+): whenever the TAP
//! has frames, the kernel reads them into buffers it takes from the ring
//! and posts one completion per frame. A frame is decided by
//! [`Switch::decide`] and written, from the same buffer, to the egress
//! port(s); when the last write of a buffer completes the buffer goes back
//! into the ring. One `io_uring_enter` submits every write queued while
//! draining a batch of completions, so there is no syscall per frame, and
//! an idle port holds no buffer.
//!
//! One poll waiter per port matters: with many plain reads posted on one
//! TAP, every frame woke all of them, the losers were punted to io-wq
//! worker threads, and latency doubled. On kernels without multishot reads
//! the worker keeps exactly one plain read posted per port instead.
//!
//! The control plane talks to the worker through a channel plus an eventfd
//! that the worker reads through the ring; commands are applied between
//! batches, and the worker never waits for the control plane.

mod capture;
mod fast;
mod io;
mod l2;
mod l3;
mod pool;
mod routed;
mod tunnel;

pub use capture::{
    Capture, CaptureFilter, CaptureTarget, CapturedFrame, CAPTURE_BYTES, CAPTURE_QUEUE,
};
pub use fast::{DirectWriter, FastTable, WorkerSnapshot};
pub use tunnel::{open_vtep, TunnelPeer, TunnelSnapshot, VtepSnapshot, VtepStats};

use crate::mac::Mac;
use crate::router;
use crate::seal;
use crate::switch::{
    Decision, DropReason, NetConfig, PortCounters, PortIdentity, PortKind, Switch, TrunkMode,
};
use crate::table::{NetIdx, PortIdx};
use crate::trunk::{self, TrunkXform};
use crate::vnet::VNET_HDR_LEN;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use pool::Pool;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use wire::{arp, eth, ipv4};

/// Large enough for a 64 KiB GSO frame, its Ethernet/VLAN header and the
/// vnet header.
pub const BUF_SIZE: usize = 65536 + 256;

/// Identifies a port for the control plane (never reused by one datapath).
pub type PortId = u64;

/// Receives frames the gateway punts (vnet header + Ethernet frame, for
/// network `net`); returns false when it cannot take one (counted as a
/// `service_busy` drop). Called on the datapath thread: it must not block.
#[derive(Clone)]
pub struct PuntHook(pub Arc<PuntFn>);

pub type PuntFn = dyn Fn(NetIdx, &[u8]) -> bool + Send + Sync;

impl std::fmt::Debug for PuntHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PuntHook")
    }
}

/// Where the worker reports what it cannot fix itself (a failed submit, a
/// buffer ring the kernel refused): one line each. Called on the datapath
/// thread: it must not block. Without one, reports are only counted
/// ([`Snapshot::worker_errors`]): this library does not print.
#[derive(Clone)]
pub struct ErrorHook(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for ErrorHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ErrorHook")
    }
}

#[derive(Debug, Clone)]
pub struct DatapathConfig {
    pub aging: Duration,
    pub max_macs: usize,
    /// Receive buffers shared by all ports (rounded up to a power of two,
    /// at most 32768), [`BUF_SIZE`] bytes each.
    pub rx_buffers: usize,
    pub ring_entries: u32,
    /// Use multishot reads with a buffer ring where the kernel has them.
    pub multishot: bool,
    /// After traffic, poll the ring this long before sleeping (0: never).
    pub busy_poll_us: u32,
    /// Where punted gateway frames go (none: they are dropped as
    /// `gateway_unsupported`).
    pub punt: Option<PuntHook>,
    /// Where routed frames go when there is no uplink: the socket NAT
    /// (none: ICMP net-unreachable).
    pub route: Option<PuntHook>,
    pub on_error: Option<ErrorHook>,
    /// At most this many MACs learned per port (0: no limit).
    pub max_macs_per_port: u32,
    /// At most this many MACs learned per network (0: no limit): one
    /// network cannot fill the table the others share.
    pub max_macs_per_network: u32,
    /// Worker threads: 1, or one main worker and `workers - 1` helpers
    /// that each read one more queue of every container TAP (see
    /// [`fast`]); ports then take one fd per worker.
    pub workers: usize,
    /// Let services write answers into container TAPs themselves
    /// ([`Datapath::direct_writer`]).
    pub direct_writes: bool,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            aging: Duration::from_secs(300),
            max_macs: 65536,
            rx_buffers: 256,
            ring_entries: 1024,
            multishot: true,
            busy_poll_us: 0,
            punt: None,
            route: None,
            on_error: None,
            max_macs_per_port: 64,
            max_macs_per_network: 16384,
            workers: 1,
            direct_writes: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("io_uring setup failed: {0}")]
    Setup(std::io::Error),
    #[error("the datapath worker has stopped")]
    Stopped,
    #[error("the datapath did not answer within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PortState {
    Up,
    /// The fd returned an error; the port no longer reads.
    Failed,
    Closing,
}

#[derive(Debug, Clone, Serialize)]
pub struct PortSnapshot {
    pub id: PortId,
    pub name: String,
    pub kind: PortKind,
    pub net: NetIdx,
    pub state: PortState,
    pub counters: PortCounters,
}

#[derive(Debug, Clone, Serialize)]
pub struct MacSnapshot {
    pub net: NetIdx,
    pub mac: Mac,
    pub port: PortId,
    pub age_ms: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Snapshot {
    pub ports: Vec<PortSnapshot>,
    pub macs: Vec<MacSnapshot>,
    pub mac_moves: u64,
    pub mac_table_full: u64,
    pub aging_ms: u64,
    /// "multishot" (buffer ring) or "single" (one plain read per port).
    pub read_mode: &'static str,
    pub uplink: Option<UplinkSnapshot>,
    /// Problems the worker reported (see [`ErrorHook`]).
    pub worker_errors: u64,
    /// The receive buffer pool: buffers, buffers in use, bytes mapped.
    pub rx_buffers: u32,
    pub rx_buffers_in_use: u32,
    pub rx_buffer_bytes: u64,
    /// The VXLAN endpoint and its tunnels, if there is one.
    pub vtep: Option<VtepSnapshot>,
    /// Per worker (the main one first), with more than one.
    pub workers: Vec<WorkerSnapshot>,
    /// Per worker (the main one first): nanoseconds its loop spent
    /// handling completions and submitting (not waiting, not busy
    /// polling).
    pub busy_ns: Vec<u64>,
    /// Captures running (the main worker's count).
    pub captures: usize,
}

/// How much of the NAT's table a snapshot carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NatDetail {
    None,
    Summary,
    Table,
}

enum Cmd {
    AddNetwork(NetIdx, NetConfig),
    RemoveNetwork(NetIdx),
    AddPort {
        id: PortId,
        name: String,
        net: NetIdx,
        mtu: u32,
        fd: OwnedFd,
        identity: Option<PortIdentity>,
    },
    RemovePort {
        id: PortId,
        delete_device: bool,
        done: mpsc::SyncSender<()>,
    },
    /// With the NAT connection table or without it.
    Snapshot(mpsc::SyncSender<Snapshot>, NatDetail),
    /// A capture (see [`capture`]), and where to say it runs.
    StartCapture(Box<capture::WorkerCapture>, mpsc::SyncSender<()>),
    StopCapture(u64),
    SetAging(Duration),
    Inject(NetIdx, Vec<Vec<u8>>),
    SetUplink(Box<UplinkConfig>, PortId),
    AddTrunk(NetIdx, Box<TrunkConfig>, PortId),
    SetTrunkPolicy(NetIdx, TrunkMode, Vec<crate::trunk::TrunkHost>),
    AddForward(u8, u16, nat::Forward),
    RemoveForward(u8, u16),
    ForgetHost(NetIdx, std::net::IpAddr),
    RestoreNat(Vec<nat::ConnRaw>, mpsc::SyncSender<usize>),
    EnableResets,
    SetVtep(
        OwnedFd,
        Vec<OwnedFd>,
        std::net::SocketAddrV4,
        PortId,
        Arc<crate::seal::SeqBounds>,
    ),
    AddTunnel {
        net: NetIdx,
        vni: u32,
        mtu: u32,
        sealed: bool,
        id: PortId,
    },
    SetTunnelKeys(NetIdx, Vec<(u32, [u8; 32])>, u32),
    SetTunnelPeers(NetIdx, Vec<TunnelPeer>, Vec<std::net::SocketAddrV4>),
    /// Frames a helper worker could not switch (see [`fast`]), and its
    /// count of frames waiting.
    Handoff(Vec<(PortId, Vec<u8>)>, Arc<std::sync::atomic::AtomicU32>),
    /// Source MACs a helper switched frames from, by port, since its last
    /// report: their entries are refreshed.
    Seen(Vec<(PortId, Mac)>),
    Shutdown,
}

/// The uplink: a packet socket (`AF_PACKET`, `PACKET_VNET_HDR`) on a host
/// interface and the address tapnet owns there; routed frames leave
/// through it masqueraded to that address.
pub struct UplinkConfig {
    pub name: String,
    pub fd: OwnedFd,
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// NAT66: the IPv6 address (and prefix) tapnet owns on the uplink,
    /// and the IPv6 next hop (`nat.external6` must be the same address).
    pub ip6: Option<(std::net::Ipv6Addr, u8)>,
    pub gateway6: Option<std::net::Ipv6Addr>,
    pub mtu: u32,
    pub nat: nat::NatConfig,
}

/// A trunk: a packet socket on a host interface (see [`crate::trunk`]),
/// opened with [`crate::trunk::open_trunk`], that joins a network's flood
/// list and brings the parent's segment into it.
pub struct TrunkConfig {
    pub name: String,
    pub fd: OwnedFd,
    /// The parent's MAC.
    pub mac: Mac,
    pub mtu: u32,
    /// 802.1Q VLAN id on the parent.
    pub vlan: Option<u16>,
    /// ipvlan: containers share the parent's MAC on the wire.
    pub shared_mac: bool,
    /// ipvlan L3: the segment is routed, not switched (see
    /// `datapath::routed`).
    pub routed: Option<RoutedConfig>,
}

/// A routed segment's addressing: next hops inside `subnet`/`prefix` are
/// reached directly, the rest through `gateway`.
#[derive(Debug, Clone, Copy)]
pub struct RoutedConfig {
    pub gateway: Ipv4Addr,
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    /// The same for IPv6, on a dual-stack network.
    pub v6: Option<RoutedV6>,
}

/// A routed segment's IPv6 addressing (see [`RoutedConfig`]).
#[derive(Debug, Clone, Copy)]
pub struct RoutedV6 {
    pub gateway: std::net::Ipv6Addr,
    pub subnet: std::net::Ipv6Addr,
    pub prefix: u8,
}

#[derive(Debug, Clone, Serialize)]
pub struct UplinkSnapshot {
    pub name: String,
    pub port: PortId,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub gateway: Ipv4Addr,
    /// The gateway's MAC, once ARP found it.
    pub gateway_mac: Option<Mac>,
    /// NAT66: the IPv6 address, next hop and its MAC (neighbour discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<std::net::Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<std::net::Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6_mac: Option<Mac>,
    pub nat: nat::NatStats,
    /// Empty unless asked for ([`Datapath::snapshot`]).
    pub connections: Vec<nat::ConnRaw>,
    /// The table counted, when asked for ([`Datapath::snapshot_summary`]).
    #[serde(skip)]
    pub summary: Option<nat::NatSummary>,
    /// Routed frames dropped because the next hop's MAC is unknown.
    pub no_neighbor: u64,
}

/// See [`Datapath::injector`].
#[derive(Clone)]
pub struct Injector {
    tx: mpsc::Sender<Cmd>,
    efd: Arc<OwnedFd>,
}

impl Injector {
    pub fn inject(&self, net: NetIdx, frames: Vec<Vec<u8>>) -> Result<(), DatapathError> {
        if frames.is_empty() {
            return Ok(());
        }
        post(&self.tx, &self.efd, Cmd::Inject(net, frames))
    }
}

/// Queues `c` for a worker and wakes it through its eventfd.
fn post(tx: &mpsc::Sender<Cmd>, efd: &OwnedFd, c: Cmd) -> Result<(), DatapathError> {
    tx.send(c).map_err(|_| DatapathError::Stopped)?;
    let one: u64 = 1;
    // SAFETY: an 8-byte write from a live u64 to an eventfd
    let r = unsafe { libc::write(efd.as_raw_fd(), &one as *const u64 as *const _, 8) };
    if r != 8 {
        return Err(DatapathError::Stopped);
    }
    Ok(())
}

/// A worker thread and how to reach it.
struct Lane {
    tx: mpsc::Sender<Cmd>,
    efd: Arc<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lane {
    fn send(&self, c: Cmd) -> Result<(), DatapathError> {
        post(&self.tx, &self.efd, c)
    }

    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.send(Cmd::Shutdown);
            let _ = t.join();
        }
    }
}

/// What a worker thread is besides its ring and ports.
enum Role {
    Main(Option<fast::Publisher>),
    Helper(Box<fast::Helper>),
}

/// Starts worker thread `name`; returns once its ring is set up.
fn spawn_worker(
    name: String,
    cfg: DatapathConfig,
    role: Role,
) -> Result<(Lane, mpsc::Sender<Cmd>), DatapathError> {
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(DatapathError::Setup(std::io::Error::last_os_error()));
    }
    let efd = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let wefd = efd.clone();
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let ring = match make_ring(cfg.ring_entries) {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut w = match Worker::new(cfg, ring, rx, wefd, role) {
                Ok(w) => w,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            w.run();
            w.release();
        })
        .map_err(DatapathError::Setup)?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(DatapathError::Setup(e)),
        Err(_) => return Err(DatapathError::Stopped),
    }
    Ok((
        Lane {
            tx: tx.clone(),
            efd,
            thread: Some(thread),
        },
        tx,
    ))
}

/// Handle to a running datapath: its main worker and helpers.
pub struct Datapath {
    tx: mpsc::Sender<Cmd>,
    efd: Arc<OwnedFd>,
    next_port: AtomicU64,
    main: Lane,
    /// Helper workers (see [`fast`]), reading queues 1.. of every TAP.
    helpers: Vec<Lane>,
    direct: Option<DirectWriter>,
}

impl Datapath {
    /// Starts the main worker thread (named `tapnet-dp`) and, with
    /// `cfg.workers` > 1, its helpers (`tapnet-dp1`, ...).
    pub fn start(cfg: DatapathConfig) -> Result<Datapath, DatapathError> {
        let workers = cfg.workers.clamp(1, 64);
        let table: fast::Shared = Default::default();
        let direct: Option<fast::SharedDirect> = cfg.direct_writes.then(Default::default);
        let publisher = (workers > 1 || cfg.direct_writes).then(|| fast::Publisher {
            table: table.clone(),
            direct: direct.clone(),
            version: u64::MAX,
            dirty: true,
            at: 0,
            gap_ms: 0,
            stats: Default::default(),
        });
        let (main, tx) = spawn_worker("tapnet-dp".into(), cfg.clone(), Role::Main(publisher))?;
        let mut dp = Datapath {
            tx,
            efd: main.efd.clone(),
            next_port: AtomicU64::new(1),
            main,
            helpers: Vec::new(),
            direct: direct.map(|table| DirectWriter { table }),
        };
        for k in 1..workers {
            let helper = fast::Helper {
                table: arc_swap::Cache::new(table.clone()),
                main: dp.tx.clone(),
                main_efd: dp.efd.clone(),
                waiting: Default::default(),
                pending: Vec::new(),
                stats: Default::default(),
            };
            // (busy polling as the main worker: after traffic only)
            let hcfg = DatapathConfig {
                punt: None,
                route: None,
                ..cfg.clone()
            };
            let (lane, _) = spawn_worker(
                format!("tapnet-dp{k}"),
                hcfg,
                Role::Helper(Box::new(helper)),
            )?;
            dp.helpers.push(lane);
        }
        Ok(dp)
    }

    /// With `direct_writes`: a handle that writes frames for containers
    /// straight into their TAPs (see [`DirectWriter::write`]).
    pub fn direct_writer(&self) -> Option<DirectWriter> {
        self.direct.clone()
    }

    /// Worker threads (the main one and its helpers): how many queues a
    /// container TAP should have.
    pub fn workers(&self) -> usize {
        1 + self.helpers.len()
    }

    fn send(&self, c: Cmd) -> Result<(), DatapathError> {
        self.main.send(c)
    }

    /// Adds or updates a network.
    pub fn add_network(&self, net: NetIdx, cfg: NetConfig) -> Result<(), DatapathError> {
        self.send(Cmd::AddNetwork(net, cfg))
    }

    pub fn remove_network(&self, net: NetIdx) -> Result<(), DatapathError> {
        self.send(Cmd::RemoveNetwork(net))
    }

    /// Hands a TAP fd (opened with `IFF_VNET_HDR`) to the switch as a port
    /// of network `net`.
    pub fn add_port(
        &self,
        name: &str,
        net: NetIdx,
        mtu: u32,
        fd: OwnedFd,
    ) -> Result<PortId, DatapathError> {
        self.add_secured_port(name, net, mtu, fd, None)
    }

    /// [`Self::add_port`] with port security: from its first frame on, the
    /// port may only speak as `identity` (else a `spoofed` drop).
    pub fn add_secured_port(
        &self,
        name: &str,
        net: NetIdx,
        mtu: u32,
        fd: OwnedFd,
        identity: Option<PortIdentity>,
    ) -> Result<PortId, DatapathError> {
        self.add_port_queues(name, net, mtu, vec![fd], identity)
    }

    /// [`Self::add_secured_port`] for a TAP with one fd per queue
    /// (`IFF_MULTI_QUEUE`): the main worker reads the first, helper k the
    /// (k+1)-th; queues without a worker are closed, workers without a
    /// queue leave the port to the others.
    pub fn add_port_queues(
        &self,
        name: &str,
        net: NetIdx,
        mtu: u32,
        fds: Vec<OwnedFd>,
        identity: Option<PortIdentity>,
    ) -> Result<PortId, DatapathError> {
        if fds.is_empty() {
            return Err(DatapathError::Setup(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a port needs at least one fd",
            )));
        }
        let id = self.next_port.fetch_add(1, Ordering::Relaxed);
        let lanes = std::iter::once(&self.main).chain(&self.helpers);
        for (lane, fd) in lanes.zip(fds) {
            lane.send(Cmd::AddPort {
                id,
                name: name.to_string(),
                net,
                mtu,
                fd,
                identity,
            })?;
        }
        Ok(id)
    }

    /// Removes a port: its pending I/O is cancelled and its fd closed. With
    /// `delete_device` the (persistent) TAP device is deleted too. Returns
    /// once the fd is closed, or after `timeout`.
    pub fn remove_port(
        &self,
        id: PortId,
        delete_device: bool,
        timeout: Duration,
    ) -> Result<(), DatapathError> {
        // every worker closes its queue (the device goes with the last)
        let deadline = std::time::Instant::now() + timeout;
        let mut waits = Vec::new();
        for lane in std::iter::once(&self.main).chain(&self.helpers) {
            let (done, rx) = mpsc::sync_channel(1);
            lane.send(Cmd::RemovePort {
                id,
                delete_device,
                done,
            })?;
            waits.push(rx);
        }
        for rx in waits {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(()) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(DatapathError::Timeout(timeout))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(DatapathError::Stopped),
            }
        }
        Ok(())
    }

    /// Counters of every port, the live MAC table (unsorted), the uplink
    /// and its NAT connection table (as plain data: formatting is the
    /// caller's, off the datapath thread).
    pub fn snapshot(&self, timeout: Duration) -> Result<Snapshot, DatapathError> {
        self.snapshot_of(timeout, NatDetail::Table)
    }

    /// [`Self::snapshot`] without the NAT connection table (up to
    /// hundreds of thousands of entries): what `network inspect` needs.
    pub fn snapshot_ports(&self, timeout: Duration) -> Result<Snapshot, DatapathError> {
        self.snapshot_of(timeout, NatDetail::None)
    }

    /// [`Self::snapshot_ports`] with the NAT's table counted (by protocol
    /// and state, ports in use) on the worker instead of copied: what a
    /// metrics scrape needs.
    pub fn snapshot_summary(&self, timeout: Duration) -> Result<Snapshot, DatapathError> {
        self.snapshot_of(timeout, NatDetail::Summary)
    }

    fn snapshot_of(&self, timeout: Duration, nat: NatDetail) -> Result<Snapshot, DatapathError> {
        let ask = |lane: &Lane, nat| {
            let (tx, rx) = mpsc::sync_channel(1);
            lane.send(Cmd::Snapshot(tx, nat))?;
            rx.recv_timeout(timeout).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => DatapathError::Timeout(timeout),
                mpsc::RecvTimeoutError::Disconnected => DatapathError::Stopped,
            })
        };
        let mut s = ask(&self.main, nat)?;
        // a port's counters are the sum over the workers that read it
        for h in &self.helpers {
            let hs = ask(h, NatDetail::None)?;
            for hp in hs.ports {
                if let Some(p) = s.ports.iter_mut().find(|p| p.id == hp.id) {
                    p.counters += hp.counters;
                }
            }
            s.workers.extend(hs.workers);
            s.busy_ns.extend(hs.busy_ns);
        }
        Ok(s)
    }

    /// Sends frames into network `net` as if from its gateway: each frame
    /// is a vnet header (zeroed unless offloads are meant) followed by an
    /// Ethernet frame, delivered to the port its destination MAC was
    /// learned on, or flooded to the network.
    pub fn inject(&self, net: NetIdx, frames: Vec<Vec<u8>>) -> Result<(), DatapathError> {
        self.injector().inject(net, frames)
    }

    /// Adds a trunk to network `net` (one per network).
    pub fn add_trunk(&self, net: NetIdx, t: TrunkConfig) -> Result<PortId, DatapathError> {
        let id = self.next_port.fetch_add(1, Ordering::Relaxed);
        self.send(Cmd::AddTrunk(net, Box::new(t), id))?;
        Ok(id)
    }

    /// How the network's containers reach each other, and its endpoints
    /// (address, MAC): the only unicast its trunk lets in, and, for a
    /// shared-MAC trunk, where frames for an address go.
    pub fn set_trunk_policy(
        &self,
        net: NetIdx,
        mode: TrunkMode,
        hosts: Vec<crate::trunk::TrunkHost>,
    ) -> Result<(), DatapathError> {
        self.send(Cmd::SetTrunkPolicy(net, mode, hosts))
    }

    /// Sets the uplink (once): routed frames are masqueraded out of it.
    pub fn set_uplink(&self, u: UplinkConfig) -> Result<PortId, DatapathError> {
        let id = self.next_port.fetch_add(1, Ordering::Relaxed);
        self.send(Cmd::SetUplink(Box::new(u), id))?;
        Ok(id)
    }

    /// Publishes `proto`/`port` of the uplink address to a container
    /// (destination NAT: the client's address reaches the container).
    pub fn add_forward(&self, proto: u8, port: u16, to: nat::Forward) -> Result<(), DatapathError> {
        self.send(Cmd::AddForward(proto, port, to))
    }

    pub fn remove_forward(&self, proto: u8, port: u16) -> Result<(), DatapathError> {
        self.send(Cmd::RemoveForward(proto, port))
    }

    /// Puts NAT connections an earlier run had back into the uplink's
    /// table (see [`nat::Nat::restore`]); returns how many it took.
    pub fn restore_nat(
        &self,
        conns: Vec<nat::ConnRaw>,
        timeout: Duration,
    ) -> Result<usize, DatapathError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Cmd::RestoreNat(conns, tx))?;
        rx.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => DatapathError::Timeout(timeout),
            mpsc::RecvTimeoutError::Disconnected => DatapathError::Stopped,
        })
    }

    /// From now on, a TCP segment from the uplink that no NAT connection
    /// owns is answered with a reset (see [`nat::rst`]). Off until then:
    /// a starting daemon first puts its checkpointed connections back, and
    /// must not reset their peers meanwhile.
    pub fn enable_resets(&self) -> Result<(), DatapathError> {
        self.send(Cmd::EnableResets)
    }

    /// Drops the NAT connections of address `ip` on network `net`: its
    /// container is gone, and whoever gets the address next must not
    /// receive its flows.
    pub fn forget_host(&self, net: NetIdx, ip: std::net::IpAddr) -> Result<(), DatapathError> {
        self.send(Cmd::ForgetHost(net, ip))
    }

    /// Sets the VXLAN endpoint (once): the sockets from [`open_vtep`] on
    /// `local`. Sealed datagrams take their sequence numbers (half their
    /// nonce) from `seq`, never below the clock in ns: the caller starts
    /// it above every number an earlier run may have used and raises its
    /// ceiling as it stores new bounds, so a clock set back between two
    /// runs cannot repeat a nonce (see [`crate::seal::SeqBounds`]).
    pub fn set_vtep(
        &self,
        (rx, tx): (OwnedFd, Vec<OwnedFd>),
        local: std::net::SocketAddrV4,
        seq: Arc<crate::seal::SeqBounds>,
    ) -> Result<PortId, DatapathError> {
        let id = self.next_port.fetch_add(1, Ordering::Relaxed);
        self.send(Cmd::SetVtep(rx, tx, local, id, seq))?;
        Ok(id)
    }

    /// Gives network `net` a VXLAN tunnel with `vni` (after
    /// [`Self::set_vtep`]): its frames for other hosts are encapsulated
    /// and segmented to `mtu`, and `sealed` (encrypted, see
    /// [`crate::seal`]) once it has keys. Removed with
    /// [`Self::remove_port`].
    pub fn add_tunnel(
        &self,
        net: NetIdx,
        vni: u32,
        mtu: u32,
        sealed: bool,
    ) -> Result<PortId, DatapathError> {
        let id = self.next_port.fetch_add(1, Ordering::Relaxed);
        self.send(Cmd::AddTunnel {
            net,
            vni,
            mtu,
            sealed,
            id,
        })?;
        Ok(id)
    }

    /// An encrypted network's keys (AES-256, by id), sealing with
    /// `primary` (replaces the previous).
    pub fn set_tunnel_keys(
        &self,
        net: NetIdx,
        keys: Vec<(u32, [u8; 32])>,
        primary: u32,
    ) -> Result<(), DatapathError> {
        self.send(Cmd::SetTunnelKeys(net, keys, primary))
    }

    /// Where network `net`'s remote endpoints are (addresses, MAC, its
    /// host's VTEP) and which VTEPs get its broadcasts (replaces the
    /// previous).
    pub fn set_tunnel_peers(
        &self,
        net: NetIdx,
        peers: Vec<TunnelPeer>,
        flood: Vec<std::net::SocketAddrV4>,
    ) -> Result<(), DatapathError> {
        self.send(Cmd::SetTunnelPeers(net, peers, flood))
    }

    /// A handle that can only inject frames, for services behind the
    /// gateway (it does not keep the datapath alive).
    pub fn injector(&self) -> Injector {
        Injector {
            tx: self.tx.clone(),
            efd: self.efd.clone(),
        }
    }

    pub fn set_aging(&self, aging: Duration) -> Result<(), DatapathError> {
        self.send(Cmd::SetAging(aging))
    }

    /// Stops the workers; ports are closed but their (persistent) devices kept.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // helpers first: they hand frames to the main worker
        for h in &mut self.helpers {
            h.stop();
        }
        self.main.stop();
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.stop();
    }
}

fn make_ring(entries: u32) -> std::io::Result<IoUring> {
    // DEFER_TASKRUN + SINGLE_ISSUER: completions are processed only when this
    // thread enters the ring, which is exactly the batch loop below.
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(entries * 8)
        .build(entries)
        .or_else(|_| IoUring::builder().setup_cqsize(entries * 8).build(entries))
}

// user_data layout: kind (4 bits) | a (20 bits) | b (20 bits) | buf (20 bits)
const K_READ: u64 = 1;
const K_WRITE: u64 = 2;
const K_EVENT: u64 = 3;
const K_TICK: u64 = 4;
const K_CANCEL: u64 = 5;
const K_INJECT: u64 = 6;

#[inline]
fn ud(kind: u64, a: PortIdx, b: PortIdx, buf: usize) -> u64 {
    kind << 60 | (a as u64 & 0xfffff) << 40 | (b as u64 & 0xfffff) << 20 | (buf as u64 & 0xfffff)
}

#[inline]
fn ud_parts(u: u64) -> (u64, PortIdx, PortIdx, usize) {
    (
        u >> 60,
        ((u >> 40) & 0xfffff) as PortIdx,
        ((u >> 20) & 0xfffff) as PortIdx,
        (u & 0xfffff) as usize,
    )
}

struct IoPort {
    id: PortId,
    name: String,
    /// A trunk's frame rewriting (None for other ports).
    xform: Option<Box<TrunkXform>>,
    /// A tunnel port's encapsulation (None for other ports).
    tunnel: Option<Box<tunnel::Tunnel>>,
    fd: OwnedFd,
    /// A container TAP services may write to (see [`fast::DirectWriter`]).
    direct: Option<Arc<fast::DirectPort>>,
    /// A helper's: the source MAC it last switched from this port since
    /// its last report to the main worker (see [`fast`]).
    seen: Option<Mac>,
    /// A read (multishot or single) is posted.
    armed: bool,
    /// Waiting in [`Pool::starved`] for a buffer.
    starved: bool,
    /// Operations that reference this port's fd (or its frames).
    inflight: u32,
    state: PortState,
    delete_device: bool,
    done: Vec<mpsc::SyncSender<()>>,
}

/// The NAT pseudo-network the uplink port sits in (no flooding, no MACs).
const UPLINK_NET: NetIdx = NetIdx::MAX;

struct Uplink {
    slot: PortIdx,
    name: String,
    mac: Mac,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    nat: nat::Nat,
    /// IP -> (MAC, learned at ms).
    arp: FxHashMap<Ipv4Addr, (Mac, u64)>,
    last_arp_request: u64,
    /// NAT66: the IPv6 address and prefix, next hop, neighbour cache.
    ip6: Option<(std::net::Ipv6Addr, u8)>,
    gateway6: Option<std::net::Ipv6Addr>,
    nd: FxHashMap<std::net::Ipv6Addr, (Mac, u64)>,
    last_ns: u64,
    no_neighbor: u64,
    /// Answer unowned TCP segments with resets ([`Datapath::enable_resets`]).
    resets: bool,
}

fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

struct Worker {
    ring: IoUring,
    st: State,
}

struct State {
    cfg: DatapathConfig,
    /// Multishot reads (else one plain read per port), both selecting
    /// buffers from `pool`.
    multishot: bool,
    pool: Pool,
    sw: Switch,
    ports: Vec<Option<IoPort>>,
    ids: FxHashMap<PortId, PortIdx>,
    rx: mpsc::Receiver<Cmd>,
    efd: Arc<OwnedFd>,
    efd_buf: Box<u64>,
    tick: Box<types::Timespec>,
    last_age: u64,
    exiting: bool,
    sqes: Vec<squeue::Entry>,
    /// Injected frames in flight: (frame, writes outstanding).
    injects: Vec<Option<(Vec<u8>, u32)>>,
    inject_free: Vec<usize>,
    uplink: Option<Uplink>,
    /// L3 ipvlan networks.
    routed: FxHashMap<NetIdx, routed::Routed>,
    /// The VXLAN endpoint (overlay networks).
    vtep: Option<tunnel::Vtep>,
    worker_errors: u64,
    /// See [`Snapshot::busy_ns`].
    busy_ns: u64,
    /// Running captures (see [`capture`]); empty but for those.
    captures: Vec<capture::WorkerCapture>,
    /// The main worker of several: publishes its table for the helpers.
    publisher: Option<fast::Publisher>,
    /// A helper worker: its fast path and hand-over (see [`fast`]).
    helper: Option<Box<fast::Helper>>,
}

impl Worker {
    /// Sets up the worker and registers its buffer pool with the ring.
    fn new(
        cfg: DatapathConfig,
        ring: IoUring,
        rx: mpsc::Receiver<Cmd>,
        efd: Arc<OwnedFd>,
        role: Role,
    ) -> std::io::Result<Worker> {
        let mut sw = Switch::new(cfg.aging.as_millis() as u64, cfg.max_macs);
        sw.table.set_port_limit(cfg.max_macs_per_port);
        sw.table.set_net_limit(cfg.max_macs_per_network);
        let multishot = cfg.multishot && {
            let mut probe = io_uring::Probe::new();
            ring.submitter().register_probe(&mut probe).is_ok()
                && probe.is_supported(opcode::ReadMulti::CODE)
        };
        let (publisher, helper) = match role {
            Role::Main(p) => (p, None),
            Role::Helper(h) => (None, Some(h)),
        };
        let spare = if publisher.is_some() {
            fast::SPARE_BUFFERS
        } else {
            0
        };
        let pool = Pool::new(cfg.rx_buffers, spare)?;
        // SAFETY: the ring memory lives in `pool` until it is unregistered
        // (Worker::release) after the last read.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                pool.ring_addr(),
                pool.entries(),
                pool::BGID,
                0,
            )
        }
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("registering the receive buffer ring (Linux 5.19+): {e}"),
            )
        })?;
        Ok(Worker {
            ring,
            st: State {
                cfg,
                multishot,
                pool,
                sw,
                ports: Vec::new(),
                ids: FxHashMap::default(),
                rx,
                efd,
                efd_buf: Box::new(0),
                tick: Box::new(types::Timespec::new().sec(1)),
                last_age: now_ms(),
                exiting: false,
                sqes: Vec::with_capacity(4096),
                injects: Vec::new(),
                inject_free: Vec::new(),
                uplink: None,
                routed: FxHashMap::default(),
                vtep: None,
                worker_errors: 0,
                busy_ns: 0,
                captures: Vec::new(),
                publisher,
                helper,
            },
        })
    }

    /// After the last port is gone: the kernel lets go of the pool.
    fn release(self) {
        if self
            .ring
            .submitter()
            .unregister_buf_ring(pool::BGID)
            .is_err()
        {
            let Worker { ring, st } = self;
            drop(ring);
            st.pool.leak();
        }
    }

    fn run(&mut self) {
        self.st.post_event_read();
        self.st.post_tick();
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(8192);
        let spin = self.st.cfg.busy_poll_us;
        let spin_for = Duration::from_micros(spin as u64);
        let mut had_work = false;
        // when this round's work began (busy time: see Snapshot::busy_ns)
        let mut busy_since = std::time::Instant::now();
        loop {
            let flushed = self.flush();
            self.st.busy_ns += busy_since.elapsed().as_nanos() as u64;
            if let Err(e) = flushed {
                self.st.report(&format!("submit failed: {e}"));
                break;
            }
            if self.st.exiting && self.st.ports.iter().all(|p| p.is_none()) {
                break;
            }
            if spin > 0 && had_work {
                // Busy-poll briefly before sleeping: a reply is often only
                // microseconds away, and waking a sleeping thread costs more.
                let t0 = std::time::Instant::now();
                let _ = self.ring.submit();
                while self.ring.completion().is_empty() && t0.elapsed() < spin_for {
                    // run deferred completions without sleeping
                    let _ = unsafe {
                        self.ring
                            .submitter()
                            .enter::<libc::sigset_t>(0, 0, 1 /* GETEVENTS */, None)
                    };
                }
            }
            let waited = self.ring.submit_and_wait(1);
            busy_since = std::time::Instant::now();
            match waited {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    self.st.report(&format!("io_uring_enter failed: {e}"));
                    break;
                }
            }
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            had_work = cqes
                .iter()
                .any(|&(u, _, _)| matches!(u >> 60, K_READ | K_WRITE));
            let now = now_ms();
            for &(u, res, flags) in &cqes {
                self.st.complete(u, res, flags, now);
            }
            self.st.flush_handoffs();
            self.st.maybe_publish(now);
        }
    }

    /// Moves queued SQEs into the ring, submitting whenever it is full.
    fn flush(&mut self) -> std::io::Result<()> {
        let (submitter, mut sq, _) = self.ring.split();
        for e in self.st.sqes.drain(..) {
            // SAFETY: every buffer an entry points at (port buffers, the
            // eventfd word, the timespec) lives until its completion is seen.
            while unsafe { sq.push(&e) }.is_err() {
                sq.sync();
                submitter.submit()?;
                sq.sync();
            }
        }
        sq.sync();
        Ok(())
    }
}

impl State {
    /// See [`ErrorHook`].
    fn report(&mut self, msg: &str) {
        self.worker_errors += 1;
        if let Some(h) = &self.cfg.on_error {
            (h.0)(msg);
        }
    }

    fn apply_commands(&mut self) {
        while let Ok(c) = self.rx.try_recv() {
            if let Some(p) = self.publisher.as_mut() {
                // ports or networks may change what helpers may switch
                p.dirty |= !matches!(
                    c,
                    Cmd::Handoff(..) | Cmd::Seen(..) | Cmd::Snapshot(..) | Cmd::Inject(..)
                );
            }
            match c {
                Cmd::Handoff(frames, waiting) => self.take_handoff(frames, &waiting),
                Cmd::Seen(seen) => self.refresh_seen(seen),
                Cmd::AddNetwork(n, cfg) => self.sw.add_network(n, cfg),
                Cmd::RemoveNetwork(n) => {
                    self.sw.remove_network(n);
                    self.routed.remove(&n);
                }
                Cmd::AddPort {
                    id,
                    name,
                    net,
                    mtu,
                    fd,
                    identity,
                } => {
                    let slot = self.add_io_port(PortKind::Tap, id, name, net, mtu, fd);
                    self.sw.set_identity(slot, identity);
                }
                Cmd::RemovePort {
                    id,
                    delete_device,
                    done,
                } => match self.ids.get(&id) {
                    Some(&slot) => self.start_close(slot, delete_device, Some(done)),
                    None => {
                        let _ = done.send(());
                    }
                },
                Cmd::Snapshot(reply, nat) => {
                    let _ = reply.send(self.snapshot(nat));
                }
                Cmd::StartCapture(c, ack) => self.capture_cmd_start(*c, ack),
                Cmd::StopCapture(id) => self.capture_cmd_stop(id),
                Cmd::SetAging(d) => self.sw.table.set_aging_ms(d.as_millis() as u64),
                Cmd::SetUplink(u, id) => self.set_uplink(*u, id),
                Cmd::AddTrunk(net, t, id) => {
                    let t = *t;
                    let slot = self.add_io_port(PortKind::Trunk, id, t.name, net, t.mtu, t.fd);
                    let x = TrunkXform {
                        vlan: t.vlan,
                        shared_mac: t.shared_mac.then_some(t.mac),
                        ..Default::default()
                    };
                    if let Some(p) = self.ports[slot as usize].as_mut() {
                        p.xform = Some(Box::new(x));
                    }
                    if let Some(rc) = t.routed {
                        self.routed.insert(
                            net,
                            routed::Routed {
                                trunk: slot,
                                mac: t.mac,
                                gateway: rc.gateway,
                                subnet: rc.subnet,
                                prefix: rc.prefix,
                                v6: rc.v6,
                                n4: Default::default(),
                                n6: Default::default(),
                            },
                        );
                    }
                }
                Cmd::SetTrunkPolicy(net, mode, hosts) => {
                    let macs: Vec<Mac> = hosts.iter().map(|h| h.mac).collect();
                    self.sw.set_trunk_policy(net, mode, &macs);
                    let trunk = self.sw.network(net).and_then(|n| n.trunk);
                    if let Some(x) = trunk
                        .and_then(|t| self.ports.get_mut(t as usize))
                        .and_then(|p| p.as_mut())
                        .and_then(|p| p.xform.as_mut())
                    {
                        x.set_hosts(&hosts);
                    }
                }
                Cmd::AddForward(proto, port, to) => {
                    if let Some(u) = self.uplink.as_mut() {
                        u.nat.add_forward(proto, port, to);
                    }
                }
                Cmd::RemoveForward(proto, port) => {
                    if let Some(u) = self.uplink.as_mut() {
                        u.nat.remove_forward(proto, port);
                    }
                }
                Cmd::RestoreNat(conns, reply) => {
                    let now = now_ms();
                    let n = match self.uplink.as_mut() {
                        Some(u) => conns.iter().filter(|c| u.nat.restore(c, now)).count(),
                        None => 0,
                    };
                    let _ = reply.send(n);
                }
                Cmd::EnableResets => {
                    if let Some(u) = self.uplink.as_mut() {
                        u.resets = true;
                    }
                }
                Cmd::ForgetHost(net, ip) => {
                    if let Some(u) = self.uplink.as_mut() {
                        u.nat.forget(net, ip, now_ms());
                    }
                }
                Cmd::Inject(net, frames) => {
                    for f in frames {
                        self.inject(net, f);
                    }
                }
                Cmd::SetVtep(fd, tx, local, id, floor) => self.set_vtep(fd, tx, local, id, floor),
                Cmd::AddTunnel {
                    net,
                    vni,
                    mtu,
                    sealed,
                    id,
                } => self.add_tunnel(net, vni, mtu, sealed, id),
                Cmd::SetTunnelKeys(net, keys, primary) => self.set_tunnel_keys(net, keys, primary),
                Cmd::SetTunnelPeers(net, peers, flood) => self.set_tunnel_peers(net, peers, flood),
                Cmd::Shutdown => {
                    self.exiting = true;
                    for slot in 0..self.ports.len() {
                        self.start_close(slot as PortIdx, false, None);
                    }
                }
            }
        }
    }

    fn snapshot(&self, nat: NatDetail) -> Snapshot {
        let now = now_ms();
        let id_of = |slot: PortIdx| {
            self.ports
                .get(slot as usize)
                .and_then(|p| p.as_ref())
                .map(|p| p.id)
        };
        let mut s = Snapshot {
            mac_moves: self.sw.table.moves,
            mac_table_full: self.sw.table.full_drops,
            aging_ms: self.sw.table.aging_ms(),
            worker_errors: self.worker_errors,
            busy_ns: vec![self.busy_ns],
            captures: self.captures.iter().filter(|c| !c.gone).count(),
            rx_buffers: self.pool.entries() as u32,
            rx_buffers_in_use: self.pool.out(),
            rx_buffer_bytes: self.pool.bytes() as u64,
            vtep: self.vtep_snapshot(),
            workers: self
                .publisher
                .as_ref()
                .map(|p| p.stats)
                .or(self.helper.as_ref().map(|h| h.stats))
                .into_iter()
                .collect(),
            read_mode: if self.multishot {
                "multishot"
            } else {
                "single"
            },
            uplink: self.uplink.as_ref().map(|u| UplinkSnapshot {
                name: u.name.clone(),
                port: id_of(u.slot).unwrap_or(0),
                ip: u.ip,
                mac: u.mac,
                gateway: u.gateway,
                gateway_mac: u.arp.get(&u.gateway).map(|e| e.0),
                ip6: u.ip6.map(|a| a.0),
                gateway6: u.gateway6,
                gateway6_mac: u.gateway6.and_then(|g| u.nd.get(&g)).map(|e| e.0),
                nat: u.nat.stats,
                connections: if nat == NatDetail::Table {
                    u.nat.entries_raw(now)
                } else {
                    Vec::new()
                },
                summary: (nat == NatDetail::Summary).then(|| u.nat.summary()),
                no_neighbor: u.no_neighbor,
            }),
            ..Default::default()
        };
        for (slot, p) in self.ports.iter().enumerate() {
            let (Some(p), Some(sp)) = (p, self.sw.port(slot as PortIdx)) else {
                continue;
            };
            let mut counters = sp.counters;
            if let Some(d) = &p.direct {
                counters.tx_frames += d.tx_frames.load(Ordering::Relaxed);
                counters.tx_bytes += d.tx_bytes.load(Ordering::Relaxed);
            }
            s.ports.push(PortSnapshot {
                id: p.id,
                name: p.name.clone(),
                kind: sp.kind,
                net: sp.net,
                state: p.state,
                counters,
            });
        }
        for (net, mac, e) in self.sw.table.entries(now) {
            if let Some(id) = id_of(e.port) {
                s.macs.push(MacSnapshot {
                    net,
                    mac,
                    port: id,
                    age_ms: now.saturating_sub(e.last_seen),
                });
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10.1.0.0/24 with its gateway, not routed.
    fn net_10_1() -> NetConfig {
        NetConfig {
            gateway_ip: "10.1.0.1".parse().unwrap(),
            gateway_mac: Mac([2, 0x42, 10, 1, 0, 1]),
            prefix: 24,
            routed: false,
            gateway: true,
            v6: None,
        }
    }

    #[test]
    fn user_data_roundtrip() {
        let u = ud(K_WRITE, 0xabcde, 7, 4095);
        assert_eq!(ud_parts(u), (K_WRITE, 0xabcde, 7, 4095));
    }

    /// Two socketpair "ports" stand in for TAPs: a frame written into one
    /// end comes out of the other port's peer.
    #[test]
    fn forwards_between_socketpairs_multishot() {
        forwards_between_socketpairs(true);
    }

    #[test]
    fn forwards_between_socketpairs_single_read() {
        forwards_between_socketpairs(false);
    }

    fn forwards_between_socketpairs(multishot: bool) {
        use std::os::unix::net::UnixDatagram;
        let dp = Datapath::start(DatapathConfig {
            rx_buffers: 4,
            multishot,
            ..Default::default()
        })
        .unwrap();
        dp.add_network(0, net_10_1()).unwrap();
        let (a_sw, a) = UnixDatagram::pair().unwrap();
        let (b_sw, b) = UnixDatagram::pair().unwrap();
        let pa = dp.add_port("a", 0, 1500, a_sw.into()).unwrap();
        let pb = dp.add_port("b", 0, 1500, b_sw.into()).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let ma = Mac([2, 0, 0, 0, 0, 0xa]);
        let mb = Mac([2, 0, 0, 0, 0, 0xb]);
        let f = crate::switch::tests::frame(mb, ma, 0x0800, 46);
        // malformed frames first: counted, switch keeps going
        a.send(&[1, 2, 3]).unwrap();
        a.send(&f).unwrap();
        let mut buf = [0u8; 2048];
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &f[..]);
        let g = crate::switch::tests::frame(ma, mb, 0x0800, 46);
        b.send(&g).unwrap();
        let n = a.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &g[..]);
        let s = dp.snapshot(Duration::from_secs(5)).unwrap();
        let sa = s.ports.iter().find(|p| p.id == pa).unwrap();
        assert_eq!(sa.counters.drops.runt, 1);
        assert_eq!(sa.counters.rx_frames, 1);
        assert_eq!(sa.counters.tx_frames, 1);
        assert_eq!(s.macs.len(), 2);
        // more frames than buffers, in bursts: every one arrives, in order
        for round in 0..50u8 {
            let mut sent = Vec::new();
            for i in 0..16u8 {
                let mut f = f.clone();
                f[30] = round;
                f[31] = i;
                a.send(&f).unwrap();
                sent.push(f);
            }
            for f in sent {
                let n = b.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &f[..]);
            }
        }
        dp.remove_port(pb, false, Duration::from_secs(5)).unwrap();
        let s = dp.snapshot(Duration::from_secs(5)).unwrap();
        assert_eq!(s.ports.len(), 1);
        assert_eq!(s.macs.len(), 1);
        dp.shutdown();
    }

    /// More ports than buffers, all sending at once: every frame arrives,
    /// and ports that found the pool empty read again once it refills.
    #[test]
    fn many_ports_share_a_small_pool() {
        for multishot in [true, false] {
            many_ports_share_a_small_pool_with(multishot);
        }
    }

    fn many_ports_share_a_small_pool_with(multishot: bool) {
        use std::os::unix::net::UnixDatagram;
        let dp = Datapath::start(DatapathConfig {
            rx_buffers: 2,
            multishot,
            ..Default::default()
        })
        .unwrap();
        dp.add_network(0, net_10_1()).unwrap();
        // port 0 receives; ports 1..=8 send to it
        let (sink_sw, sink) = UnixDatagram::pair().unwrap();
        dp.add_port("sink", 0, 1500, sink_sw.into()).unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let ms = Mac([2, 0, 0, 0, 0, 0x99]);
        // the sink's MAC is learned first
        let hello = crate::switch::tests::frame(Mac([0xff; 6]), ms, 0x0800, 46);
        sink.send(&hello).unwrap();
        let mut senders = Vec::new();
        for i in 1..=8u8 {
            let (sw, me) = UnixDatagram::pair().unwrap();
            dp.add_port(&format!("p{i}"), 0, 1500, sw.into()).unwrap();
            senders.push((i, me));
        }
        // the sink's MAC must be in the table before the senders start
        let t0 = std::time::Instant::now();
        while dp
            .snapshot_ports(Duration::from_secs(5))
            .unwrap()
            .macs
            .is_empty()
        {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut want = std::collections::HashSet::new();
        for round in 0..20u8 {
            for (i, s) in &senders {
                let mut f = crate::switch::tests::frame(ms, Mac([2, 0, 0, 0, 1, *i]), 0x0800, 46);
                f[30] = round;
                s.send(&f).unwrap();
                want.insert(f);
            }
        }
        let mut buf = [0u8; 2048];
        while !want.is_empty() {
            let n = sink.recv(&mut buf).expect("every frame arrives");
            want.remove(&buf[..n]);
        }
        let s = dp.snapshot_ports(Duration::from_secs(5)).unwrap();
        assert_eq!(s.rx_buffers, 2);
        dp.shutdown();
    }

    /// A datapath with two workers, and ports a and b on network 0 with
    /// two queues each (socketpairs, 5 s read timeouts): the datapath,
    /// a's port id, and the far ends [a queue 0, a queue 1, b queue 0, b
    /// queue 1].
    fn two_workers_two_ports() -> (Datapath, PortId, [std::os::unix::net::UnixDatagram; 4]) {
        use std::os::unix::net::UnixDatagram;
        let dp = Datapath::start(DatapathConfig {
            rx_buffers: 4,
            workers: 2,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(dp.workers(), 2);
        dp.add_network(0, net_10_1()).unwrap();
        let pair = || {
            let (sw, me) = UnixDatagram::pair().unwrap();
            me.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            (OwnedFd::from(sw), me)
        };
        let ((a0_sw, a0), (a1_sw, a1)) = (pair(), pair());
        let ((b0_sw, b0), (b1_sw, b1)) = (pair(), pair());
        let pa = dp
            .add_port_queues("a", 0, 1500, vec![a0_sw, a1_sw], None)
            .unwrap();
        dp.add_port_queues("b", 0, 1500, vec![b0_sw, b1_sw], None)
            .unwrap();
        (dp, pa, [a0, a1, b0, b1])
    }

    /// Two workers; socketpairs stand in for the queues of two TAPs.
    /// Until the main worker has learned both MACs, a frame read by the
    /// helper is handed over (and leaves through queue 0); after, the
    /// helper switches it itself, out of its own queue.
    #[test]
    fn helper_switches_known_unicast_and_hands_over_the_rest() {
        let (dp, pa, [a0, a1, b0, b1]) = two_workers_two_ports();
        let ma = Mac([2, 0, 0, 0, 0, 0xa]);
        let mb = Mac([2, 0, 0, 0, 0, 0xb]);
        let mut buf = [0u8; 2048];
        // nothing learned: the helper hands it over, the main worker floods
        let f = crate::switch::tests::frame(mb, ma, 0x0800, 46);
        a1.send(&f).unwrap();
        let n = b0.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &f[..]);
        // b answers through queue 0: both MACs known to the main worker
        let g = crate::switch::tests::frame(ma, mb, 0x0800, 46);
        b0.send(&g).unwrap();
        let n = a0.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &g[..]);
        // once published, the helper switches a -> b itself, out of queue 1
        let t0 = std::time::Instant::now();
        loop {
            let mut f = f.clone();
            f[30] = 0x55;
            a1.send(&f).unwrap();
            b1.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            if let Ok(n) = b1.recv(&mut buf) {
                assert_eq!(&buf[..n], &f[..]);
                break;
            }
            // (handed over meanwhile: it came out of queue 0)
            let n = b0.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &f[..]);
            assert!(t0.elapsed() < Duration::from_secs(5), "never fast");
        }
        // a broadcast is still the main worker's, also from the helper
        let bc = crate::switch::tests::frame(Mac([0xff; 6]), ma, 0x0800, 46);
        a1.send(&bc).unwrap();
        let n = b0.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &bc[..]);
        let s = dp.snapshot(Duration::from_secs(5)).unwrap();
        assert_eq!(s.workers.len(), 2);
        assert!(s.workers[1].switched >= 1, "{:?}", s.workers);
        assert!(s.workers[1].handed_off >= 2, "{:?}", s.workers);
        assert_eq!(s.workers[0].handed_off, s.workers[1].handed_off);
        // a's counters are the sum over both workers
        let sa = s.ports.iter().find(|p| p.id == pa).unwrap();
        assert_eq!(
            sa.counters.rx_frames,
            s.workers[1].handed_off + s.workers[1].switched
        );
        dp.remove_port(pa, false, Duration::from_secs(5)).unwrap();
        assert_eq!(dp.snapshot(Duration::from_secs(5)).unwrap().ports.len(), 1);
        dp.shutdown();
    }

    /// A MAC whose frames only the helper switches stays in the main
    /// worker's table: the helper reports it every second.
    #[test]
    fn helper_keeps_the_macs_it_switches_learned() {
        let (dp, _, [a0, a1, b0, b1]) = two_workers_two_ports();
        let ma = Mac([2, 0, 0, 0, 0, 0xa]);
        let mb = Mac([2, 0, 0, 0, 0, 0xb]);
        let mut buf = [0u8; 2048];
        // both learned through queue 0 (b's first frame floods to a)
        b0.send(&crate::switch::tests::frame(ma, mb, 0x0800, 46))
            .unwrap();
        a1.send(&crate::switch::tests::frame(mb, ma, 0x0800, 46))
            .unwrap();
        b0.recv(&mut buf).unwrap();
        dp.set_aging(Duration::from_secs(2)).unwrap();
        // 4 s of a -> b through the helper only (twice the aging time)
        // once it switches them: its entries never age, so nothing goes
        // back to the main worker
        let handed = || dp.snapshot(Duration::from_secs(5)).unwrap().workers[1].handed_off;
        let mut since: Option<(std::time::Instant, u64)> = None;
        let mut fast = 0;
        while since.is_none_or(|(t0, _)| t0.elapsed() < Duration::from_secs(4)) {
            a1.send(&crate::switch::tests::frame(mb, ma, 0x0800, 46))
                .unwrap();
            b1.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            if b1.recv(&mut buf).is_ok() {
                fast += 1;
                since.get_or_insert_with(|| (std::time::Instant::now(), handed()));
            } else {
                let _ = b0.recv(&mut buf);
            }
            // and b -> a, so b's entry is one the helper sees too
            b1.send(&crate::switch::tests::frame(ma, mb, 0x0800, 46))
                .unwrap();
            a1.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            if a1.recv(&mut buf).is_err() {
                let _ = a0.recv(&mut buf);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(fast > 50, "the helper switched {fast}");
        let before = since.expect("fast").1;
        assert_eq!(handed(), before, "frames went back to the main worker");
        let s = dp.snapshot(Duration::from_secs(5)).unwrap();
        let a = s.macs.iter().find(|m| m.mac == ma);
        assert!(
            a.is_some_and(|m| m.age_ms <= 1500),
            "a's entry: {a:?} (aging 2 s)"
        );
        dp.shutdown();
    }

    /// A service writes a container's frame into its TAP itself once the
    /// container's MAC is learned; counted as the port's tx; not for
    /// broadcast or unknown MACs, nor once the port is gone.
    #[test]
    fn direct_writes_reach_a_learned_container() {
        use std::os::unix::net::UnixDatagram;
        // (two workers: an idle helper keeps its last table, which must
        // not keep a's fd open)
        let dp = Datapath::start(DatapathConfig {
            rx_buffers: 4,
            direct_writes: true,
            workers: 2,
            ..Default::default()
        })
        .unwrap();
        let w = dp.direct_writer().expect("direct writes on");
        dp.add_network(0, net_10_1()).unwrap();
        let (a_sw, a) = UnixDatagram::pair().unwrap();
        let (a1_sw, a1) = UnixDatagram::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let pa = dp
            .add_port_queues("a", 0, 1500, vec![a_sw.into(), a1_sw.into()], None)
            .unwrap();
        let ma = Mac([2, 0, 0, 0, 0, 0xa]);
        let gw = Mac([2, 0x42, 10, 1, 0, 1]);
        let to_a = crate::switch::tests::frame(ma, gw, 0x0800, 46);
        assert!(!w.write(0, &to_a), "not learned yet");
        // a speaks (to nobody): learned, and published
        a.send(&crate::switch::tests::frame(
            Mac([2, 0, 0, 0, 0, 0xb]),
            ma,
            0x0800,
            46,
        ))
        .unwrap();
        let t0 = std::time::Instant::now();
        while !w.write(0, &to_a) {
            assert!(t0.elapsed() < Duration::from_secs(5), "never published");
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut buf = [0u8; 2048];
        let n = a.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &to_a[..]);
        // the helper reads a frame (and loads the current table), then idles
        a1.send(&crate::switch::tests::frame(
            Mac([2, 0, 0, 0, 0, 0xb]),
            ma,
            0x0800,
            46,
        ))
        .unwrap();
        assert!(!w.write(
            0,
            &crate::switch::tests::frame(Mac([0xff; 6]), gw, 0x0800, 46)
        ));
        assert!(!w.write(1, &to_a), "another network");
        assert!(!w.write(0, &to_a[..10]), "a runt");
        let s = dp.snapshot(Duration::from_secs(5)).unwrap();
        let sa = s.ports.iter().find(|p| p.id == pa).unwrap();
        assert_eq!(sa.counters.tx_frames, 1);
        assert_eq!(
            sa.counters.tx_bytes,
            (to_a.len() - crate::vnet::VNET_HDR_LEN) as u64
        );
        dp.remove_port(pa, false, Duration::from_secs(5)).unwrap();
        assert!(!w.write(0, &to_a), "the port is gone");
        // every duplicate of a's ends is closed: a sees its peers gone
        assert!(a.send(&to_a).is_err(), "a's peer still open");
        assert!(a1.send(&to_a).is_err(), "a1's peer still open");
        dp.shutdown();
    }

    #[test]
    fn punts_to_the_hook_and_injects() {
        use std::os::unix::net::UnixDatagram;
        let (tx, rx) = mpsc::channel::<(NetIdx, Vec<u8>)>();
        let tx = std::sync::Mutex::new(tx);
        let dp = Datapath::start(DatapathConfig {
            rx_buffers: 4,
            punt: Some(PuntHook(Arc::new(move |net, f: &[u8]| {
                tx.lock().unwrap().send((net, f.to_vec())).is_ok()
            }))),
            ..Default::default()
        })
        .unwrap();
        let gw = Mac([2, 0x42, 10, 1, 0, 1]);
        dp.add_network(
            3,
            NetConfig {
                gateway_ip: "10.1.0.1".parse().unwrap(),
                gateway_mac: gw,
                prefix: 24,
                routed: false,
                gateway: true,
                v6: None,
            },
        )
        .unwrap();
        let (a_sw, a) = UnixDatagram::pair().unwrap();
        let pa = dp.add_port("a", 3, 1500, a_sw.into()).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let ma = Mac([2, 0, 0, 0, 0, 0xa]);
        // UDP 10.1.0.2 -> 10.1.0.1:53
        let mut f = crate::switch::tests::frame(gw, ma, 0x0800, 0);
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[10, 1, 0, 2, 10, 1, 0, 1, 0x9c, 0x40, 0, 53, 0, 20, 0, 0]);
        f.resize(f.len() + 12, 0);
        a.send(&f).unwrap();
        let (net, got) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(net, 3);
        assert_eq!(got, f);
        // a frame from the gateway to a's (learned) MAC comes out of a
        let reply = crate::switch::tests::frame(ma, gw, 0x0800, 50);
        dp.inject(3, vec![reply.clone()]).unwrap();
        let mut buf = [0u8; 2048];
        let n = a.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &reply[..]);
        let s = dp.snapshot(Duration::from_secs(5)).unwrap();
        let sa = s.ports.iter().find(|p| p.id == pa).unwrap();
        assert_eq!(sa.counters.punted, 1);
        assert_eq!(sa.counters.tx_frames, 1);
        dp.shutdown();
    }
}
