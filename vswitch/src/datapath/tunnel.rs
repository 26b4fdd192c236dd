//! VXLAN tunnels (RFC 7348), encapsulated by the worker itself.
//!
//! One *VTEP*: a UDP socket on the host's advertise address (port 4789 by
//! default) that every overlay network shares, read by the worker like any
//! port (a multishot read per datagram). Each overlay network has a
//! *tunnel port* in the switch, of the trunk's class: it learns nothing
//! (the remote MACs come from the control plane), unicast for a MAC that
//! is not local goes to it, and broadcast is flooded to it. What the
//! switch sends to a tunnel port is encapsulated here:
//!
//! - the destination VTEP is the peer the control plane named for the
//!   destination MAC; broadcast, multicast and unknown unicast go to every
//!   VTEP that has endpoints on the network (head-end replication);
//! - offloaded frames from the TAPs (64 KiB TCP super-frames, partial
//!   checksums) are segmented to the network's MTU and their checksums
//!   completed ([`wire::gso`]), each segment behind its VXLAN header, in
//!   one buffer;
//! - the segments go to the kernel in one `sendmsg` with `UDP_SEGMENT`
//!   (UDP GSO) when they are equal-sized (all but the last), else with
//!   one `sendmmsg`.
//!
//! A received datagram is checked ([`wire::vxlan::parse`]), its VNI picks
//! the tunnel port, and the inner frame enters the switch from that port
//! with a zeroed vnet header. Every refusal is counted ([`VtepStats`]).

use super::*;
use std::net::SocketAddrV4;
use std::sync::Arc;

/// The pseudo-network the VTEP's reading port sits in (no flooding, no
/// MACs): its frames are dispatched by VNI.
pub(super) const VTEP_NET: NetIdx = NetIdx::MAX - 1;

/// A tunnel port's encapsulation.
pub(super) struct Tunnel {
    /// The network's MTU: segments carry at most this much IP packet.
    pub mtu: usize,
    hdr: [u8; wire::vxlan::HDR_LEN],
    /// Remote endpoint MAC -> its host's VTEP.
    pub peers: FxHashMap<Mac, SocketAddrV4>,
    /// Remote endpoint address -> its MAC (proxy ARP).
    pub ips: FxHashMap<Ipv4Addr, Mac>,
    /// Remote endpoint IPv6 address -> its MAC (proxy neighbour discovery).
    pub ips6: FxHashMap<std::net::Ipv6Addr, Mac>,
    /// Every VTEP with endpoints on the network.
    pub flood: Vec<SocketAddrV4>,
    /// An encrypted network: datagrams are sealed ([`seal`]).
    pub sealed: bool,
    /// Its keys (none yet: nothing is sent or taken).
    pub keys: Option<seal::KeySet>,
    /// This host's sender id (its VTEP address) and sequence number.
    pub sender: [u8; 4],
    pub seq: u64,
    /// Per peer host (by VTEP address): the sequence numbers seen.
    pub windows: FxHashMap<[u8; 4], seal::ReplayWindow>,
}

impl Tunnel {
    pub fn new(vni: u32, mtu: u32, sealed: bool, sender: Ipv4Addr) -> Tunnel {
        // a restarted sender never reuses a (key, nonce): its sequence
        // starts at the time, and counts up far slower than time passes
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Tunnel {
            mtu: mtu as usize,
            hdr: wire::vxlan::emit(vni),
            peers: FxHashMap::default(),
            ips: FxHashMap::default(),
            ips6: FxHashMap::default(),
            flood: Vec::new(),
            sealed,
            keys: None,
            sender: sender.octets(),
            seq,
            windows: FxHashMap::default(),
        }
    }
}

/// A container on another host, as a tunnel knows it: its addresses,
/// its MAC, and its host's VTEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelPeer {
    pub ip: Ipv4Addr,
    pub ip6: Option<std::net::Ipv6Addr>,
    pub mac: Mac,
    pub vtep: SocketAddrV4,
}

/// What the VTEP counted.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VtepStats {
    pub rx_datagrams: u64,
    pub rx_bytes: u64,
    pub tx_datagrams: u64,
    pub tx_bytes: u64,
    /// Datagrams shorter than a VXLAN and an Ethernet header.
    pub rx_short: u64,
    /// Datagrams without the VXLAN I flag.
    pub rx_bad_flags: u64,
    /// Datagrams for a VNI this host has no network for.
    pub rx_unknown_vni: u64,
    /// Inner frames from a MAC that is no known endpoint of another host
    /// (the control plane names every one).
    pub rx_unknown_src: u64,
    /// ARP requests for another host's container answered here.
    pub proxy_arp: u64,
    /// Neighbour solicitations for remote containers answered here.
    pub proxy_nd: u64,
    /// Encrypted networks: plain datagrams for them (or sealed ones for a
    /// plain network), replays, tags that do not match, datagrams with
    /// no key to open (or seal) them.
    pub rx_seal_mismatch: u64,
    pub rx_replay: u64,
    pub rx_bad_tag: u64,
    pub rx_no_key: u64,
    pub tx_no_key: u64,
    /// Sealed sends dropped: their sequence numbers would pass the stored
    /// bound (the control plane could not store the next one).
    pub tx_seq_ceiling: u64,
    /// Frames for the tunnel with no VTEP to go to.
    pub tx_no_peer: u64,
    /// Offloaded frames that could not be segmented.
    pub tx_malformed: u64,
    /// Datagrams the kernel refused (a full socket buffer, no route).
    pub tx_errors: u64,
    /// Sends batched with UDP GSO, and with sendmmsg.
    pub tx_gso_sends: u64,
    pub tx_mmsg_sends: u64,
    /// Reads that brought several datagrams (UDP GRO), and inner TCP
    /// segments merged into one frame for a container (receive offload).
    pub rx_gro_reads: u64,
    pub rx_merged: u64,
    /// Datagrams from an address that is no VTEP of the network.
    pub rx_unknown_vtep: u64,
    /// Whether the socket does UDP GRO.
    pub rx_gro: bool,
}

/// The VTEP as the control plane sees it.
#[derive(Debug, Clone, Serialize)]
pub struct VtepSnapshot {
    pub local: SocketAddrV4,
    pub port: PortId,
    pub stats: VtepStats,
    /// Per tunnel: (VNI, network, peers, flood list length).
    pub tunnels: Vec<TunnelSnapshot>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TunnelSnapshot {
    pub vni: u32,
    pub net: NetIdx,
    pub port: PortId,
    pub peers: usize,
    pub vteps: Vec<SocketAddrV4>,
}

pub(super) struct Vtep {
    pub slot: PortIdx,
    pub local: SocketAddrV4,
    /// VNI -> tunnel port.
    pub vnis: FxHashMap<u32, PortIdx>,
    pub stats: VtepStats,
    /// Whether the kernel takes UDP_SEGMENT (else sendmmsg only).
    gso: bool,
    /// Sockets bound to ephemeral ports that datagrams leave from,
    /// picked by a hash of the inner flow: the outer source port varies
    /// per flow (ECMP entropy), as the kernel's VXLAN does.
    tx: Vec<OwnedFd>,
    /// Segments being sent, each behind its VXLAN header.
    scratch: Vec<u8>,
    /// The same, sealed (encrypted networks).
    sealed: Vec<u8>,
    /// Where the segments are (headers in `scratch`, payloads in the
    /// frame), and the iovecs one send gathers.
    parts: Vec<wire::gso::Part>,
    iov: Vec<libc::iovec>,
    /// Multishot recvmsg (with UDP GRO): the header the kernel fills in
    /// each buffer (sender's address, the GRO segment size); else plain
    /// reads, one datagram each.
    msg: Box<libc::msghdr>,
    pub recvmsg: bool,
    /// The sequence numbers sealed datagrams may carry (see
    /// [`crate::Datapath::set_vtep`]).
    pub seq: Arc<seal::SeqBounds>,
    /// The inner frames of one read being delivered: (tunnel port,
    /// offset, length, checksum left partial by the sender).
    rx: Vec<(PortIdx, usize, usize, bool)>,
    lens: Vec<usize>,
}

impl Vtep {
    /// The msghdr the VTEP's multishot recvmsg reads with (it lives as
    /// long as the VTEP, past every read posted with it).
    pub fn msg_ptr(&self) -> *const libc::msghdr {
        &*self.msg as *const libc::msghdr
    }

    pub fn new(slot: PortIdx, local: SocketAddrV4, tx: Vec<OwnedFd>) -> Vtep {
        let gso = tx
            .first()
            .is_some_and(|fd| udp_gso_supported(fd.as_raw_fd()));
        Vtep {
            slot,
            local,
            vnis: FxHashMap::default(),
            stats: VtepStats::default(),
            gso,
            tx,
            scratch: Vec::with_capacity(BUF_SIZE + 64 * 64),
            sealed: Vec::with_capacity(BUF_SIZE + 64 * 96),
            parts: Vec::with_capacity(64),
            iov: Vec::with_capacity(128),
            msg: Box::new(recv_msghdr()),
            recvmsg: false,
            seq: Arc::new(seal::SeqBounds::new(0, 0)),
            rx: Vec::with_capacity(64),
            lens: Vec::with_capacity(64),
        }
    }
}

/// The name and control space each received buffer starts with (after
/// the kernel's `io_uring_recvmsg_out`): a `sockaddr_in`, and one cmsg
/// holding the UDP GRO segment size (an int).
fn recv_msghdr() -> libc::msghdr {
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    m.msg_controllen =
        unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    m
}

/// What one multishot recvmsg buffer holds: where the payload is, its
/// length, the GRO segment size (the payload's length when not
/// coalesced) and the sender's address.
fn parse_recv(buf: &[u8], msg: &libc::msghdr) -> Option<(usize, usize, usize, Option<Ipv4Addr>)> {
    let out = io_uring::types::RecvMsgOut::parse(buf, msg).ok()?;
    if out.is_payload_truncated() {
        return None;
    }
    let payload = out.payload_data();
    let off = payload.as_ptr() as usize - buf.as_ptr() as usize;
    let name = out.name_data();
    let src = (name.len() >= 8 && u16::from_ne_bytes([name[0], name[1]]) == libc::AF_INET as u16)
        .then(|| Ipv4Addr::new(name[4], name[5], name[6], name[7]));
    let mut seg = payload.len();
    let c = out.control_data();
    // one cmsghdr: len (size_t), level (int), type (int), then the int
    let hl = std::mem::size_of::<libc::cmsghdr>();
    let lv = std::mem::size_of::<libc::size_t>();
    if c.len() >= hl + 4 {
        let level = i32::from_ne_bytes(c[lv..lv + 4].try_into().ok()?);
        let kind = i32::from_ne_bytes(c[lv + 4..lv + 8].try_into().ok()?);
        if level == libc::SOL_UDP && kind == libc::UDP_GRO {
            let g = i32::from_ne_bytes(c[hl..hl + 4].try_into().ok()?);
            if g > 0 {
                seg = g as usize;
            }
        }
    }
    Some((off, payload.len(), seg, src))
}

/// How many sockets datagrams leave from (see [`Vtep`]).
pub const TX_SOCKETS: usize = 8;

/// Opens the VTEP's sockets: the one that receives, UDP on `local`, and
/// [`TX_SOCKETS`] that send, on `local`'s address and ephemeral ports;
/// non-blocking, with large buffers (a burst of segments must not
/// overflow them).
pub fn open_vtep(local: SocketAddrV4) -> std::io::Result<(OwnedFd, Vec<OwnedFd>)> {
    let rx = open_udp(local)?;
    let tx = (0..TX_SOCKETS)
        .map(|_| open_udp(SocketAddrV4::new(*local.ip(), 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok((rx, tx))
}

/// Whether the kernel does UDP GSO (`UDP_SEGMENT`) on this socket.
fn udp_gso_supported(fd: i32) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            &mut v as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        ) == 0
    }
}

fn open_udp(local: SocketAddrV4) -> std::io::Result<OwnedFd> {
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sa = sockaddr(&local);
    // EADDRINUSE for a while: a daemon that just died still holds the
    // port until the kernel has torn its io_uring down (asynchronously)
    let t0 = std::time::Instant::now();
    loop {
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if r == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EADDRINUSE)
            && local.port() != 0
            && t0.elapsed() < std::time::Duration::from_secs(10)
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        return Err(std::io::Error::new(
            e.kind(),
            format!("binding {local}: {e}"),
        ));
    }
    for (force, plain) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        let size: libc::c_int = 8 << 20;
        let set = |opt| unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        // the forced size needs CAP_NET_ADMIN; else as much as allowed
        if set(force) != 0 {
            set(plain);
        }
    }
    Ok(fd)
}

fn sockaddr(a: &SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// At most this many bytes of UDP payload in one GSO send (a datagram's
/// length field bounds the super-datagram).
const GSO_MAX_BYTES: usize = 60_000;
/// The kernel's UDP_MAX_SEGMENTS.
const GSO_MAX_SEGS: usize = 64;

/// Sends datagrams to `to`: datagram `k` is the `per` iovecs from
/// `iov[k * per]` on, `lens[k]` bytes. Returns how many datagrams and
/// bytes the kernel took. Equal-sized runs go as UDP GSO sends when
/// `gso`; a run the kernel refuses (a segment above the path MTU, say)
/// goes one datagram each instead.
fn send_all(
    fd: i32,
    iov: &[libc::iovec],
    per: usize,
    lens: &[usize],
    to: &SocketAddrV4,
    gso: bool,
    st: &mut VtepStats,
) -> (usize, usize) {
    let sa = sockaddr(to);
    let mut sent = 0;
    let mut sent_bytes = 0;
    let mut i = 0;
    while i < lens.len() {
        // a run of equal-sized datagrams (the last may be shorter) as one
        // GSO send
        let size = lens[i];
        let mut j = i + 1;
        let mut bytes = size;
        while gso
            && j < lens.len()
            && j - i < GSO_MAX_SEGS
            && bytes + lens[j] <= GSO_MAX_BYTES
            && lens[j] <= size
        {
            bytes += lens[j];
            j += 1;
            if lens[j - 1] < size {
                break; // a shorter one ends the run
            }
        }
        if !gso {
            // no GSO: everything left in one sendmmsg batch
            j = lens.len();
            bytes = lens[i..].iter().sum();
        }
        if gso && j - i > 1 {
            match send_gso(fd, &iov[i * per..j * per], size, &sa) {
                Ok(()) => {
                    st.tx_gso_sends += 1;
                    sent += j - i;
                    sent_bytes += bytes;
                    i = j;
                    continue;
                }
                // refused for this run only (EINVAL: above the path MTU,
                // EIO: a device without checksum offload): one at a time
                Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {}
                Err(_) => {
                    st.tx_errors += (j - i) as u64;
                    i = j;
                    continue;
                }
            }
        }
        // this run one datagram each, in a sendmmsg batch
        let (k, b) = send_mmsg(fd, &iov[i * per..j * per], per, &lens[i..j], &sa, st);
        sent += k;
        sent_bytes += b;
        i = j;
    }
    (sent, sent_bytes)
}

fn send_gso(
    fd: i32,
    iov: &[libc::iovec],
    seg: usize,
    sa: &libc::sockaddr_in,
) -> std::io::Result<()> {
    // one cmsg: UDP_SEGMENT (u16)
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    let mut cbuf = [0u64; 4];
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_name = sa as *const libc::sockaddr_in as *mut libc::c_void;
    mh.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    mh.msg_iov = iov.as_ptr() as *mut libc::iovec;
    mh.msg_iovlen = iov.len();
    mh.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    mh.msg_controllen = space;
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&mh);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg as u16);
    }
    let r = unsafe { libc::sendmsg(fd, &mh, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends datagrams (`per` iovecs each, `lens` bytes) one message each,
/// batched; returns how many datagrams and bytes the kernel took.
fn send_mmsg(
    fd: i32,
    iov: &[libc::iovec],
    per: usize,
    lens: &[usize],
    sa: &libc::sockaddr_in,
    st: &mut VtepStats,
) -> (usize, usize) {
    let mut msgs: Vec<libc::mmsghdr> = (0..lens.len())
        .map(|k| {
            let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
            mh.msg_name = sa as *const libc::sockaddr_in as *mut libc::c_void;
            mh.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            mh.msg_iov = iov[k * per..].as_ptr() as *mut libc::iovec;
            mh.msg_iovlen = per;
            libc::mmsghdr {
                msg_hdr: mh,
                msg_len: 0,
            }
        })
        .collect();
    let mut done = 0;
    while done < msgs.len() {
        let r =
            unsafe { libc::sendmmsg(fd, msgs[done..].as_mut_ptr(), (msgs.len() - done) as u32, 0) };
        st.tx_mmsg_sends += 1;
        if r <= 0 {
            // a full buffer or an unreachable VTEP: the rest is lost
            st.tx_errors += (msgs.len() - done) as u64;
            break;
        }
        done += r as usize;
    }
    (done, lens[..done].iter().sum())
}

fn iovec(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

impl State {
    /// What the VTEP read into buffer `b` (`len` bytes): one datagram, or
    /// with UDP GRO a run of them; each is checked (and opened if its
    /// network is encrypted), a run of one TCP flow's segments is merged
    /// into one offloaded frame, and the inner frames enter the switch
    /// from their tunnel ports.
    pub(super) fn vtep_rx(&mut self, slot: PortIdx, b: usize, len: usize, now: u64) {
        let Some(v) = self.vtep.as_mut() else {
            self.recycle(slot, b);
            return;
        };
        let (off, plen, seg, src) = if v.recvmsg {
            match parse_recv(self.pool.frame(b, len), &v.msg) {
                Some(r) => r,
                None => {
                    v.stats.rx_short += 1;
                    self.recycle(slot, b);
                    return;
                }
            }
        } else {
            (0, len, len, None)
        };
        if seg == 0 {
            self.recycle(slot, b);
            return;
        }
        if plen > seg {
            v.stats.rx_gro_reads += 1;
        }
        let mut rx = std::mem::take(&mut v.rx);
        rx.clear();
        // sealed datagrams from a sender this host has no window for yet
        // must be recent (see seal::ReplayWindow)
        let floor = seal::now_ns().saturating_sub(seal::MAX_SKEW_NS);
        let mut o = off;
        while o < off + plen {
            let l = seg.min(off + plen - o);
            if let Ok(f) = self.vtep_open(b, o, l, src, floor) {
                rx.push(f);
            }
            o += l;
        }
        match rx.len() {
            0 => self.recycle(slot, b),
            1 => self.deliver_in_place(slot, b, rx[0], now),
            k => match merge_tcp(self.pool.whole_mut(b), &rx) {
                Some(total) => {
                    if let Some(v) = self.vtep.as_mut() {
                        v.stats.rx_merged += k as u64;
                    }
                    if !self.captures.is_empty() {
                        self.capture_buf(rx[0].0, b, total, false);
                    }
                    self.frame_in(rx[0].0, b, total, now);
                }
                None => {
                    // each on its own: copies for all but the last, which
                    // keeps the buffer
                    for &(t, fo, n, partial) in &rx[..k - 1] {
                        let mut f = vec![0u8; VNET_HDR_LEN + n];
                        f[VNET_HDR_LEN..].copy_from_slice(&self.pool.frame(b, fo + n)[fo..]);
                        if let Some(h) = rx_vnet(&f[VNET_HDR_LEN..], partial) {
                            f[..VNET_HDR_LEN].copy_from_slice(&h);
                            if !self.captures.is_empty() {
                                self.capture(t, &f, false);
                            }
                            self.switch_owned(t, f, now);
                        }
                    }
                    self.deliver_in_place(slot, b, rx[k - 1], now);
                }
            },
        }
        if let Some(v) = self.vtep.as_mut() {
            v.rx = rx;
        }
    }

    /// Inner frame `(t, offset, n, partial)` of buffer `b` (read by port
    /// `slot`) into the switch from tunnel port `t`, in the same buffer:
    /// [..][Ethernet] -> [vnet header][Ethernet], the frame moved forward
    /// behind its offload header.
    fn deliver_in_place(
        &mut self,
        slot: PortIdx,
        b: usize,
        (t, fo, n, partial): (PortIdx, usize, usize, bool),
        now: u64,
    ) {
        let w = self.pool.whole_mut(b);
        w.copy_within(fo..fo + n, VNET_HDR_LEN);
        match rx_vnet(&w[VNET_HDR_LEN..VNET_HDR_LEN + n], partial) {
            Some(h) => {
                w[..VNET_HDR_LEN].copy_from_slice(&h);
                if !self.captures.is_empty() {
                    self.capture_buf(t, b, n + VNET_HDR_LEN, false);
                }
                self.frame_in(t, b, n + VNET_HDR_LEN, now);
            }
            None => self.recycle(slot, b),
        }
    }

    /// An inner frame that is not in a pool buffer of its own, from
    /// tunnel port `t`, through the switch (a tunnel's frames go to local
    /// ports only: unicast or flooded).
    fn switch_owned(&mut self, t: PortIdx, f: Vec<u8>, now: u64) {
        match self.sw.decide(t, &f, now) {
            Decision::Unicast(dst) => self.send_owned(dst, f),
            Decision::Flood(net) | Decision::FloodExcept(net, _) => {
                let ports: Vec<PortIdx> = self
                    .sw
                    .network(net)
                    .map(|n| n.ports.iter().copied().filter(|&p| p != t).collect())
                    .unwrap_or_default();
                for p in ports {
                    self.send_owned(p, f.clone());
                }
            }
            _ => {}
        }
    }

    /// Checks (and opens) the datagram at `b[off..off + len]` from `src`:
    /// its tunnel port, and where its inner frame is (offset in the
    /// buffer, length); Err (counted) to drop it.
    fn vtep_open(
        &mut self,
        b: usize,
        off: usize,
        len: usize,
        src: Option<Ipv4Addr>,
        floor: u64,
    ) -> Result<(PortIdx, usize, usize, bool), ()> {
        const X: usize = wire::vxlan::HDR_LEN;
        let Some(v) = self.vtep.as_mut() else {
            return Err(());
        };
        v.stats.rx_datagrams += 1;
        v.stats.rx_bytes += len as u64;
        let d = &self.pool.frame(b, off + len)[off..];
        let vni = match wire::vxlan::parse(d) {
            Ok(vni) => vni,
            Err(e) => {
                match e {
                    wire::vxlan::Error::Short => v.stats.rx_short += 1,
                    wire::vxlan::Error::BadFlags => v.stats.rx_bad_flags += 1,
                }
                return Err(());
            }
        };
        let Some(&t) = v.vnis.get(&vni) else {
            v.stats.rx_unknown_vni += 1;
            return Err(());
        };
        let sealed = d[wire::vxlan::FLAGS] & seal::FLAG_SEALED != 0;
        let partial = d[wire::vxlan::FLAGS] & wire::vxlan::FLAG_PARTIAL != 0;
        let Some(tn) = self.ports[t as usize]
            .as_mut()
            .and_then(|p| p.tunnel.as_deref_mut())
        else {
            return Err(());
        };
        // from a host of the network only (when the read says who sent it)
        if let Some(ip) = src {
            if !tn.flood.iter().any(|a| *a.ip() == ip) {
                v.stats.rx_unknown_vtep += 1;
                return Err(());
            }
        }
        // an encrypted network takes sealed datagrams only, a plain one
        // plain ones only
        if sealed != tn.sealed {
            v.stats.rx_seal_mismatch += 1;
            return Err(());
        }
        let (io, n) = if sealed {
            let Some((sender, seq)) = seal::peek(d) else {
                v.stats.rx_short += 1;
                return Err(());
            };
            // a host speaks as itself only (its window is its own)
            if src.is_some_and(|ip| ip.octets() != sender) {
                v.stats.rx_unknown_src += 1;
                return Err(());
            }
            // the network's hosts only (and one window each)
            let Some(win) = tn.windows.get_mut(&sender) else {
                v.stats.rx_unknown_src += 1;
                return Err(());
            };
            if !win.fresh(seq, floor) {
                v.stats.rx_replay += 1;
                return Err(());
            }
            let Some(keys) = tn.keys.as_ref() else {
                v.stats.rx_no_key += 1;
                return Err(());
            };
            match seal::open(keys, &mut self.pool.frame_mut(b, off + len)[off..]) {
                Ok(n) => {
                    win.accept(seq);
                    (X + seal::HDR_LEN, n)
                }
                Err(seal::OpenError::Short) => {
                    v.stats.rx_short += 1;
                    return Err(());
                }
                Err(seal::OpenError::UnknownKey) => {
                    v.stats.rx_no_key += 1;
                    return Err(());
                }
                Err(seal::OpenError::BadTag) => {
                    v.stats.rx_bad_tag += 1;
                    return Err(());
                }
            }
        } else {
            (X, len - X)
        };
        if n < eth::HDR_LEN || n + VNET_HDR_LEN > BUF_SIZE {
            v.stats.rx_short += 1;
            return Err(());
        }
        // only the other hosts' endpoints speak through the tunnel
        let src = Mac::from_slice(&self.pool.frame(b, off + io + n)[off + io + 6..]);
        if !tn.peers.contains_key(&src) {
            v.stats.rx_unknown_src += 1;
            return Err(());
        }
        Ok((t, off + io, n, partial))
    }

    /// Encapsulates `src`'s frame in buffer `b` for tunnel port `dst` and
    /// sends it to the VTEP(s) it is for. The buffer stays the caller's.
    pub(super) fn tunnel_tx(&mut self, b: usize, dst: PortIdx) {
        let len = self.pool.lens[b] as usize;
        let (Some(v), Some(Some(port))) = (self.vtep.as_mut(), self.ports.get_mut(dst as usize))
        else {
            return;
        };
        let port_fd = port.fd.as_raw_fd();
        let Some(t) = port.tunnel.as_deref_mut() else {
            return;
        };
        let frame = self.pool.frame(b, len);
        if frame.len() < VNET_HDR_LEN + eth::HDR_LEN {
            return;
        }
        let h = crate::vnet::VnetHdr::parse(frame);
        let f = &frame[VNET_HDR_LEN..];
        let dmac = Mac::from_slice(f);
        if dmac.is_multicast() && h.is_gso() {
            // no super-frame is broadcast: one would be sent to every host
            v.stats.tx_malformed += 1;
            self.sw.count_drop(dst, DropReason::Malformed);
            return;
        }
        let one;
        let targets: &[SocketAddrV4] =
            match (!dmac.is_multicast()).then(|| t.peers.get(&dmac)).flatten() {
                Some(a) => {
                    one = [*a];
                    &one
                }
                None => &t.flood,
            };
        if targets.is_empty() {
            v.stats.tx_no_peer += 1;
            return;
        }
        v.scratch.clear();
        v.lens.clear();
        v.iov.clear();
        let fd = match v.tx.len() {
            0 => port_fd,
            n => v.tx[flow_hash(f) as usize % n].as_raw_fd(),
        };
        let per;
        if !t.sealed {
            // headers in scratch, payloads from the frame itself: the
            // kernel gathers them (no copy of the payload here)
            v.parts.clear();
            // checksums left partial: the receiving tapnet hands them to
            // its container's kernel as such (no pass over the payload)
            let Ok(partial) =
                wire::gso::segment_parts(&h, f, t.mtu, &t.hdr, true, &mut v.scratch, &mut v.parts)
            else {
                v.stats.tx_malformed += 1;
                self.sw.count_drop(dst, DropReason::Malformed);
                return;
            };
            for p in &v.parts {
                if partial {
                    v.scratch[p.hdr.start] |= wire::vxlan::FLAG_PARTIAL;
                }
                v.iov.push(iovec(&v.scratch[p.hdr.clone()]));
                v.iov.push(iovec(&f[p.data.clone()]));
                v.lens.push(p.hdr.len() + p.data.len());
            }
            per = 2;
        } else {
            // each datagram sealed on its own, into its own place
            let Ok(partial) =
                wire::gso::segment(&h, f, t.mtu, &t.hdr, true, &mut v.scratch, &mut v.lens)
            else {
                v.stats.tx_malformed += 1;
                self.sw.count_drop(dst, DropReason::Malformed);
                return;
            };
            if partial {
                let mut o = 0;
                for l in &v.lens {
                    v.scratch[o] |= wire::vxlan::FLAG_PARTIAL;
                    o += l;
                }
            }
            let Some(keys) = t.keys.as_ref() else {
                v.stats.tx_no_key += 1;
                return;
            };
            v.sealed.clear();
            // never below the clock (a receiver's new window takes only
            // recent sequence numbers), never one an earlier run may have
            // used, never past what the control plane has stored
            let Some(first) = v.seq.take(t.seq, v.lens.len() as u64) else {
                v.stats.tx_seq_ceiling += 1;
                self.sw.count_drop(dst, DropReason::TxError);
                return;
            };
            t.seq = first - 1;
            let mut off = 0;
            for l in v.lens.iter_mut() {
                t.seq += 1;
                if !seal::seal(
                    keys,
                    t.sender,
                    t.seq,
                    &v.scratch[off..off + *l],
                    &mut v.sealed,
                ) {
                    v.stats.tx_no_key += 1;
                    return;
                }
                off += *l;
                *l += seal::OVERHEAD;
            }
            let mut o = 0;
            for l in &v.lens {
                v.iov.push(iovec(&v.sealed[o..o + l]));
                o += l;
            }
            per = 1;
        }
        let mut bytes = 0usize;
        for to in targets {
            let (n, b) = send_all(fd, &v.iov, per, &v.lens, to, v.gso, &mut v.stats);
            v.stats.tx_datagrams += n as u64;
            v.stats.tx_bytes += b as u64;
            bytes += b;
        }
        if bytes > 0 {
            self.sw.count_tx(dst, f.len());
        }
    }

    /// An encrypted network's keys (by id, sealing with `primary`).
    pub(super) fn set_tunnel_keys(
        &mut self,
        net: NetIdx,
        keys: Vec<(u32, [u8; 32])>,
        primary: u32,
    ) {
        let Some(slot) = self.sw.network(net).and_then(|n| n.trunk) else {
            return;
        };
        if let Some(t) = self.ports[slot as usize]
            .as_mut()
            .and_then(|p| p.tunnel.as_mut())
        {
            t.keys = Some(seal::KeySet::new(&keys, primary));
        }
    }

    /// The VTEP: its socket becomes the port that reads every tunnel's
    /// datagrams.
    pub(super) fn set_vtep(
        &mut self,
        fd: OwnedFd,
        tx: Vec<OwnedFd>,
        local: SocketAddrV4,
        id: PortId,
        seq: Arc<seal::SeqBounds>,
    ) {
        if self.vtep.is_some() {
            return; // one per datapath
        }
        // with multishot recvmsg the kernel may coalesce a burst of
        // datagrams into one buffer (UDP GRO): one completion, one pass
        // through the switch for a run of a flow's segments
        let gro = self.multishot && {
            let one: libc::c_int = 1;
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_UDP,
                    libc::UDP_GRO,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as u32,
                ) == 0
            }
        };
        let slot = self.add_io_port(PortKind::Vtep, id, "vtep".into(), VTEP_NET, 65535, fd);
        let mut v = Vtep::new(slot, local, tx);
        v.recvmsg = self.multishot;
        v.seq = seq;
        v.stats.rx_gro = gro;
        self.vtep = Some(v);
        self.arm(slot);
    }

    /// Network `net`'s tunnel, if it has one (its trunk port).
    fn tunnel_of(&self, net: NetIdx) -> Option<&Tunnel> {
        let t = self.sw.network(net)?.trunk?;
        self.ports[t as usize].as_ref()?.tunnel.as_deref()
    }

    /// Proxy ARP, as Docker's overlay does: an ARP request from a local
    /// container (in buffer `b` from port `src`) for the address of a
    /// container on another host is answered here with that container's
    /// MAC, so most ARP never crosses hosts. True if it was answered (the
    /// buffer is still the caller's).
    pub(super) fn proxy_arp(&mut self, src: PortIdx, net: NetIdx, b: usize, len: usize) -> bool {
        let Some(tn) = self.tunnel_of(net) else {
            return false;
        };
        let f = &self.pool.frame(b, len)[VNET_HDR_LEN..];
        if eth::ethertype(f) != Some(eth::ETHERTYPE_ARP) {
            return false;
        }
        let Some(a) = arp::Arp::new(&f[eth::HDR_LEN..]) else {
            return false;
        };
        if a.op() != arp::REQUEST {
            return false;
        }
        let Some(&mac) = tn.ips.get(&a.target_ip()) else {
            return false;
        };
        let payload = arp::reply(mac.0, a.target_ip(), a.sender_mac(), a.sender_ip());
        let reply = eth::vnet_frame(a.sender_mac(), mac.0, eth::ETHERTYPE_ARP, &payload);
        self.send_owned(src, reply);
        if let Some(v) = self.vtep.as_mut() {
            v.stats.proxy_arp += 1;
        }
        true
    }

    /// Proxy neighbour discovery, proxy ARP's IPv6 twin: a neighbour
    /// solicitation from a local container (in buffer `b` from port `src`)
    /// for the IPv6 address of a container on another host is answered
    /// here with a solicited advertisement carrying that container's MAC,
    /// so solicitations need not cross hosts. True if it was answered (the
    /// buffer is still the caller's). Duplicate address probes (from `::`)
    /// are left to flood: they ask all holders.
    pub(super) fn proxy_nd(&mut self, src: PortIdx, net: NetIdx, b: usize, len: usize) -> bool {
        use wire::{icmpv6, ipv6};
        const I: usize = eth::HDR_LEN;
        const L4: usize = I + ipv6::HDR_LEN;
        let Some(tn) = self.tunnel_of(net) else {
            return false;
        };
        let f = &self.pool.frame(b, len)[VNET_HDR_LEN..];
        if tn.ips6.is_empty() || eth::ethertype(f) != Some(eth::ETHERTYPE_IPV6) {
            return false;
        }
        let Some(h) = f.get(I..).and_then(ipv6::Header::new) else {
            return false;
        };
        let end = L4 + h.payload_len();
        if h.next_header() != ipv6::PROTO_ICMPV6 || f.len() < end {
            return false;
        }
        let Some(ns) = icmpv6::NeighborSolicit::parse(h.src(), h.dst(), h.hop_limit(), &f[L4..end])
        else {
            return false;
        };
        if ns.src.is_unspecified() {
            return false;
        }
        let Some(&mac) = tn.ips6.get(&ns.target) else {
            return false;
        };
        let mut asker = [0u8; 6];
        asker.copy_from_slice(&f[6..12]);
        let n = icmpv6::NA_WITH_TLLA;
        let mut p = vec![0u8; ipv6::HDR_LEN + n];
        ipv6::emit(&mut p, n as u16, ipv6::PROTO_ICMPV6, 255, ns.target, ns.src);
        icmpv6::emit_na(
            &mut p[ipv6::HDR_LEN..],
            icmpv6::NA_SOLICITED | icmpv6::NA_OVERRIDE,
            ns.target,
            mac.0,
            ns.target,
            ns.src,
        );
        let reply = eth::vnet_frame(asker, mac.0, eth::ETHERTYPE_IPV6, &p);
        self.send_owned(src, reply);
        if let Some(v) = self.vtep.as_mut() {
            v.stats.proxy_nd += 1;
        }
        true
    }

    /// Network `net`'s tunnel port (one per network), sending on a copy
    /// of the VTEP's socket.
    pub(super) fn add_tunnel(&mut self, net: NetIdx, vni: u32, mtu: u32, sealed: bool, id: PortId) {
        let Some(v) = self.vtep.as_ref() else {
            self.report("a tunnel port without a VTEP");
            return;
        };
        let Some(vfd) = self.ports[v.slot as usize]
            .as_ref()
            .map(|p| p.fd.as_raw_fd())
        else {
            return;
        };
        let dup = unsafe { libc::fcntl(vfd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            self.report(&format!(
                "tunnel for VNI {vni}: {}",
                std::io::Error::last_os_error()
            ));
            return;
        }
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        let slot = self.add_io_port(PortKind::Tunnel, id, format!("vxlan{vni}"), net, mtu, fd);
        if let Some(p) = self.ports[slot as usize].as_mut() {
            let me = self
                .vtep
                .as_ref()
                .map_or(Ipv4Addr::UNSPECIFIED, |v| *v.local.ip());
            p.tunnel = Some(Box::new(Tunnel::new(vni, mtu, sealed, me)));
        }
        if let Some(v) = self.vtep.as_mut() {
            v.vnis.insert(vni, slot);
        }
    }

    /// The tunnel of network `net`: where its remote MACs are, and which
    /// VTEPs get its broadcasts.
    pub(super) fn set_tunnel_peers(
        &mut self,
        net: NetIdx,
        peers: Vec<TunnelPeer>,
        flood: Vec<SocketAddrV4>,
    ) {
        let Some(slot) = self.sw.network(net).and_then(|n| n.trunk) else {
            return;
        };
        if let Some(t) = self.ports[slot as usize]
            .as_mut()
            .and_then(|p| p.tunnel.as_mut())
        {
            t.peers = peers.iter().map(|p| (p.mac, p.vtep)).collect();
            t.ips = peers.iter().map(|p| (p.ip, p.mac)).collect();
            t.ips6 = peers.iter().filter_map(|p| Some((p.ip6?, p.mac))).collect();
            // a replay window per peer host, kept while it stays one
            let hosts: Vec<[u8; 4]> = flood.iter().map(|a| a.ip().octets()).collect();
            t.windows.retain(|h, _| hosts.contains(h));
            for h in hosts {
                t.windows.entry(h).or_default();
            }
            t.flood = flood;
        }
    }

    /// A tunnel port going away: its VNI no longer reaches it.
    pub(super) fn forget_tunnel(&mut self, slot: PortIdx) {
        if let Some(v) = self.vtep.as_mut() {
            v.vnis.retain(|_, s| *s != slot);
        }
    }

    pub(super) fn vtep_snapshot(&self) -> Option<VtepSnapshot> {
        let v = self.vtep.as_ref()?;
        let id_of = |slot: PortIdx| {
            self.ports
                .get(slot as usize)
                .and_then(|p| p.as_ref())
                .map(|p| p.id)
                .unwrap_or(0)
        };
        let tunnels = v
            .vnis
            .iter()
            .filter_map(|(&vni, &slot)| {
                let t = self.ports[slot as usize].as_ref()?.tunnel.as_deref()?;
                Some(TunnelSnapshot {
                    vni,
                    net: self.sw.port(slot)?.net,
                    port: id_of(slot),
                    peers: t.peers.len(),
                    vteps: t.flood.clone(),
                })
            })
            .collect();
        Some(VtepSnapshot {
            local: v.local,
            port: id_of(v.slot),
            stats: v.stats,
            tunnels,
        })
    }
}

/// A hash of the inner flow (addresses, protocol and ports of IPv4 or IPv6
/// TCP/UDP; the MACs otherwise): one flow always leaves from the same
/// source port.
fn flow_hash(f: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    const L3: usize = eth::HDR_LEN;
    if eth::ethertype(f) == Some(eth::ETHERTYPE_IPV4) && f.len() >= L3 + ipv4::MIN_HDR_LEN {
        let ip = &f[L3..];
        ip[ipv4::SRC..ipv4::DST + 4].hash(&mut h);
        let proto = ip[ipv4::PROTOCOL];
        proto.hash(&mut h);
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        if matches!(proto, ipv4::PROTO_TCP | ipv4::PROTO_UDP) && ip.len() >= ihl + 4 {
            ip[ihl..ihl + 4].hash(&mut h);
        }
    } else if let Some(ip) = f.get(L3..).filter(|ip| ip.len() >= wire::ipv6::HDR_LEN + 4) {
        if eth::ethertype(f) == Some(eth::ETHERTYPE_IPV6) {
            ip[wire::ipv6::SRC..wire::ipv6::DST + 16].hash(&mut h);
            let proto = ip[wire::ipv6::NEXT_HEADER];
            proto.hash(&mut h);
            if matches!(proto, ipv4::PROTO_TCP | ipv4::PROTO_UDP) {
                ip[wire::ipv6::HDR_LEN..wire::ipv6::HDR_LEN + 4].hash(&mut h);
            }
        } else {
            f[..eth::HDR_LEN].hash(&mut h);
        }
    } else {
        f[..eth::HDR_LEN.min(f.len())].hash(&mut h);
    }
    // the high bits are the well-mixed ones
    h.finish() >> 32
}

/// Receive offload: the inner frames `fr` (tunnel port, offset, length
/// in `buf`), if they are consecutive segments of one TCP/IPv4 flow
/// (same addresses, ports, ack, window and options; equal payloads but
/// the last; ACK with PSH at most on the last), become one frame with a
/// TCP offload header at the start of `buf`, as a NIC's LRO would make
/// it; returns its length (vnet header included). None: not mergeable
/// (`buf` is unchanged).
fn merge_tcp(buf: &mut [u8], fr: &[(PortIdx, usize, usize, bool)]) -> Option<usize> {
    const IP: usize = eth::HDR_LEN;
    const TCP: usize = IP + ipv4::MIN_HDR_LEN;
    const ACK_PSH: u8 = 0x18;
    let (t0, o0, n0, _) = *fr.first()?;
    let f0 = buf.get(o0..o0 + n0)?;
    if f0.len() < TCP + 20
        || eth::ethertype(f0) != Some(eth::ETHERTYPE_IPV4)
        || f0[IP] != 0x45
        || f0[IP + ipv4::PROTOCOL] != ipv4::PROTO_TCP
    {
        return None;
    }
    let thl = ((f0[TCP + 12] >> 4) as usize) * 4;
    let hl = TCP + thl;
    let plen = |f: &[u8]| -> Option<usize> {
        let total = u16::from_be_bytes([f[IP + 2], f[IP + 3]]) as usize;
        (IP + total <= f.len() && IP + total >= hl).then(|| IP + total - hl)
    };
    let mss = plen(f0)?;
    if thl < 20 || hl > f0.len() || mss == 0 {
        return None;
    }
    let seq = |f: &[u8]| u32::from_be_bytes([f[TCP + 4], f[TCP + 5], f[TCP + 6], f[TCP + 7]]);
    let mut next = seq(f0).wrapping_add(mss as u32);
    let mut total = mss;
    // every payload's length, read before anything is written: the first
    // header's new place can overlap the old one
    let mut lens = [0usize; 64];
    if fr.len() > lens.len() {
        return None;
    }
    for (k, &(t, o, n, _)) in fr.iter().enumerate() {
        let f = buf.get(o..o + n)?;
        let last = k + 1 == fr.len();
        if t != t0 || f.len() < hl {
            return None;
        }
        // the same headers but for IP length/id/checksum and TCP seq/flags/checksum
        if f[..IP + 2] != f0[..IP + 2]
            || f[IP + 6..IP + 10] != f0[IP + 6..IP + 10]
            || f[IP + 12..TCP + 4] != f0[IP + 12..TCP + 4]
            || f[TCP + 8..TCP + 13] != f0[TCP + 8..TCP + 13]
            || f[TCP + 14..TCP + 16] != f0[TCP + 14..TCP + 16]
            || f[TCP + 18..hl] != f0[TCP + 18..hl]
        {
            return None;
        }
        // no fragments
        if f[IP + 6] & 0x3f != 0 || f[IP + 7] != 0 {
            return None;
        }
        let flags = f[TCP + 13];
        if flags & !ACK_PSH != 0 || (flags & 0x08 != 0 && !last) || flags & 0x10 == 0 {
            return None;
        }
        let p = plen(f)?;
        lens[k] = p;
        if k > 0 {
            if seq(f) != next || p == 0 || p > mss || (p < mss && !last) {
                return None;
            }
            next = next.wrapping_add(p as u32);
            total += p;
        }
    }
    if ipv4::MIN_HDR_LEN + thl + total > 0xffff || VNET_HDR_LEN + hl + total > buf.len() {
        return None;
    }
    // built in place, front to back: every write lands before what is
    // still to be read (each source frame sits further on)
    let last_flags = buf[fr[fr.len() - 1].1 + TCP + 13];
    // the first header to the front (it may cover the start of its old
    // place, which nothing reads again: the lengths are in `lens`), then
    // every payload after it, each read from further on than anything
    // written so far
    buf.copy_within(o0..o0 + hl, VNET_HDR_LEN);
    let mut w = VNET_HDR_LEN + hl;
    for (k, &(_, o, _, _)) in fr.iter().enumerate() {
        let p = lens[k];
        buf.copy_within(o + hl..o + hl + p, w);
        w += p;
    }
    let fr0 = &mut buf[VNET_HDR_LEN..w];
    let ip_total = (ipv4::MIN_HDR_LEN + thl + total) as u16;
    fr0[IP + 2..IP + 4].copy_from_slice(&ip_total.to_be_bytes());
    fr0[IP + ipv4::CHECKSUM..IP + ipv4::CHECKSUM + 2].fill(0);
    let c = wire::csum::checksum(&fr0[IP..TCP]);
    fr0[IP + ipv4::CHECKSUM..IP + ipv4::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    fr0[TCP + 13] = last_flags;
    // the partial checksum (the pseudo-header's sum), as an offloading
    // kernel leaves it: the container's kernel trusts it (the outer UDP
    // checksum covered every byte on the wire)
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&fr0[IP + ipv4::SRC..IP + ipv4::DST + 4]);
    pseudo[9] = ipv4::PROTO_TCP;
    pseudo[10..].copy_from_slice(&((thl + total) as u16).to_be_bytes());
    let ps = wire::csum::sum(&pseudo) as u16;
    fr0[TCP + 16..TCP + 18].copy_from_slice(&ps.to_be_bytes());
    let h = crate::vnet::VnetHdr {
        flags: crate::vnet::F_NEEDS_CSUM,
        gso_type: crate::vnet::GSO_TCPV4,
        hdr_len: hl as u16,
        gso_size: mss as u16,
        csum_start: TCP as u16,
        csum_offset: 16,
    };
    h.write(&mut buf[..VNET_HDR_LEN]);
    Some(w)
}

/// The vnet header for an inner frame from a tunnel: none needed, or (the
/// sender left the TCP/UDP checksum partial) the offload header that says
/// where the sum goes, so the container's kernel completes or trusts it.
/// None: a partial frame that is not TCP/UDP over IPv4 or IPv6 (without
/// extension headers) (dropped).
fn rx_vnet(f: &[u8], partial: bool) -> Option<[u8; VNET_HDR_LEN]> {
    let mut out = [0u8; VNET_HDR_LEN];
    if !partial {
        return Some(out);
    }
    const IP: usize = eth::HDR_LEN;
    let (ihl, proto) = if eth::ethertype(f) == Some(eth::ETHERTYPE_IPV6) {
        let h = wire::ipv6::Header::new(f.get(IP..)?)?;
        (wire::ipv6::HDR_LEN, h.next_header())
    } else {
        if f.len() < IP + ipv4::MIN_HDR_LEN || eth::ethertype(f) != Some(eth::ETHERTYPE_IPV4) {
            return None;
        }
        let ihl = ((f[IP] & 0x0f) as usize) * 4;
        if ihl < ipv4::MIN_HDR_LEN {
            return None;
        }
        (ihl, f[IP + ipv4::PROTOCOL])
    };
    let off = match proto {
        ipv4::PROTO_TCP => 16,
        ipv4::PROTO_UDP => 6,
        _ => return None,
    };
    let start = IP + ihl;
    if start + off as usize + 2 > f.len() {
        return None;
    }
    crate::vnet::VnetHdr {
        flags: crate::vnet::F_NEEDS_CSUM,
        csum_start: start as u16,
        csum_offset: off,
        ..Default::default()
    }
    .write(&mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP/IPv4 segment with a 40-byte TCP header (timestamps and SACK
    /// sized) carrying `data` at sequence `seq`.
    fn segment(seq: u32, data: &[u8], flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 40];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&eth::ETHERTYPE_IPV4);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((60 + data.len()) as u16).to_be_bytes());
        f[20] = 0x40; // DF
        f[22] = 64;
        f[23] = ipv4::PROTO_TCP;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&1234u16.to_be_bytes());
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        f[38..42].copy_from_slice(&seq.to_be_bytes());
        f[46] = 10 << 4; // 40-byte header
        f[47] = flags;
        f[48..50].copy_from_slice(&500u16.to_be_bytes());
        f[54..74].fill(1); // options
        f.extend_from_slice(data);
        f
    }

    /// Three segments of `data` as a GRO read lays them out: each behind
    /// its VXLAN header, the first at offset 64 (recvmsg's header, name
    /// and control before).
    fn gro_read(data: &[u8]) -> (Vec<u8>, Vec<(PortIdx, usize, usize, bool)>) {
        let mut buf = vec![0u8; BUF_SIZE];
        let mut fr = Vec::new();
        let mut o = 56;
        for k in 0..3 {
            let flags = if k == 2 { 0x18 } else { 0x10 };
            let s = segment(1000 + 100 * k as u32, &data[100 * k..100 * (k + 1)], flags);
            o += wire::vxlan::HDR_LEN;
            buf[o..o + s.len()].copy_from_slice(&s);
            fr.push((0 as PortIdx, o, s.len(), false));
            o += s.len();
        }
        (buf, fr)
    }

    #[test]
    fn merged_segments_keep_every_byte() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let (mut buf, fr) = gro_read(&data);
        let n = merge_tcp(&mut buf, &fr).expect("mergeable");
        let h = crate::vnet::VnetHdr::parse(&buf);
        assert_eq!(h.gso_type, crate::vnet::GSO_TCPV4);
        assert_eq!(
            (h.gso_size, h.hdr_len, h.csum_start, h.csum_offset),
            (100, 74, 34, 16)
        );
        let f = &buf[VNET_HDR_LEN..n];
        assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, 60 + 300);
        assert_eq!(wire::csum::checksum(&f[14..34]), 0, "IPv4 header checksum");
        assert_eq!(f[47], 0x18, "the last segment's flags");
        assert_eq!(&f[74..], &data[..], "the payload, in order");
        // a gap in the sequence: not merged, nothing touched
        let (mut buf, mut fr) = gro_read(&data);
        fr.remove(1);
        let before = buf.clone();
        assert!(merge_tcp(&mut buf, &fr).is_none());
        assert_eq!(buf, before);
    }
}
