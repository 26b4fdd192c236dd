//! Socket NAT: outbound traffic without an uplink, through ordinary host
//! sockets, like slirp4netns and pasta. Routed frames (the datapath's route
//! hook) reach one smoltcp stack per network that accepts any destination
//! address ("any-IP"): a container's TCP connection to X:P is terminated
//! there (only once the host's own connection to X:P succeeded, else the
//! container gets a reset) and relayed to a host socket; UDP datagrams to
//! X:P go out of a host UDP socket per flow and the answers come back from
//! X:P. Everything leaves with the host's own address and needs no
//! privileges on the host: this is also the rootless back-end.
//!
//! Dual-stack networks: IPv6 flows go out of IPv6 host sockets the same
//! way (TCP, UDP, and ICMPv6 echo through an `IPPROTO_ICMPV6` datagram
//! socket).

use super::dnsd::{
    frame_hook, gateway_iface, next_event, push_with_arp, send_control, GatewayAddrs, Queue,
};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use vswitch::datapath::DirectWriter;
use vswitch::vnet::VNET_HDR_LEN;
use vswitch::{Injector, NetIdx, PuntHook};

const QUEUE: usize = 8192;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const UDP_IDLE: Duration = Duration::from_secs(60);
/// Bytes a host connection may have in flight towards a container.
const CREDIT: usize = 1 << 20;
/// smoltcp buffers per direction (calloc: untouched pages cost nothing).
const TCP_BUF: usize = 1024 * 1024;

/// (container address, port, remote address, port)
type Flow = (IpAddr, u16, IpAddr, u16);

pub enum Event {
    Frame(NetIdx, Vec<u8>),
    AddNet(NetIdx, GatewayAddrs),
    RemoveNet(NetIdx),
    Connected(NetIdx, Flow, Option<tokio::net::TcpStream>),
    HostData(NetIdx, Flow, u64, Vec<u8>),
    HostEof(NetIdx, Flow, u64),
    UdpReply(NetIdx, Flow, Vec<u8>),
    /// An ICMP echo reply (ICMP header + data) for (container, id, remote).
    PingReply(NetIdx, Flow, Vec<u8>),
    /// A host writer caught up after the loop found its queue full: poll
    /// again (the container's data is waiting in the stack).
    Wake,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub tcp_opened: AtomicU64,
    pub tcp_refused: AtomicU64,
    pub udp_flows: AtomicU64,
    pub ping_flows: AtomicU64,
    /// Echo requests that could not go out (no ICMP socket allowed).
    pub ping_refused: AtomicU64,
    pub dropped: AtomicU64,
    /// IPv6 datagrams put back together from a container's fragments.
    pub reassembled: AtomicU64,
    /// New flows refused: the container held its share (`--nat-quota`).
    pub quota_exceeded: AtomicU64,
}

#[derive(Clone)]
pub struct SockNat {
    pub tx: mpsc::Sender<Event>,
    pub stats: Arc<Stats>,
}

impl SockNat {
    pub fn hook(&self) -> PuntHook {
        frame_hook(self.tx.clone(), Event::Frame)
    }

    pub fn send(&self, ev: Event) {
        send_control(&self.tx, ev)
    }
}

pub fn channel() -> (SockNat, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (
        SockNat {
            tx,
            stats: Arc::new(Stats::default()),
        },
        rx,
    )
}

struct Conn {
    /// When the relay was set up: one the container never completes (it
    /// reset the answer to its SYN) is dropped after CONNECT_TIMEOUT.
    since: Instant,
    handle: SocketHandle,
    gen: u64,
    to_host: Option<mpsc::Sender<Vec<u8>>>,
    pending: VecDeque<u8>,
    host_eof: bool,
    closed: bool,
    credit: Arc<Semaphore>,
    /// Set by the loop when the queue to the host was full.
    blocked: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

struct UdpFlow {
    out: mpsc::Sender<Vec<u8>>,
    last: Instant,
    /// The container's MAC, for answers written without smoltcp (see
    /// `Net::udp_reply`); None if not seen.
    mac: Option<[u8; 6]>,
}

struct Net {
    iface: Interface,
    dev: Queue,
    sockets: SocketSet<'static>,
    gw: GatewayAddrs,
    /// SYNs waiting for the host's connection.
    syn: HashMap<Flow, Vec<u8>>,
    tcp: HashMap<Flow, Conn>,
    /// One smoltcp UDP socket per remote endpoint the containers talk to.
    udp_sock: HashMap<(IpAddr, u16), (SocketHandle, Instant)>,
    udp: HashMap<Flow, UdpFlow>,
    /// Echo flows: (container, identifier, remote, 0) -> sender, MAC.
    ping: HashMap<Flow, (UdpFlow, [u8; 6])>,
    /// Flows (SYNs waiting, TCP relays, UDP and echo flows) per container
    /// address: each holds a host socket, so each counts against the quota.
    held: HashMap<IpAddr, u32>,
    /// New UDP flows admitted (and held) whose first datagram smoltcp has
    /// not handed over yet (see `poll`), with the container's MAC.
    udp_pending: HashMap<Flow, [u8; 6]>,
    /// IPv6 datagrams a container sent in fragments (IPv4's smoltcp puts
    /// back together itself).
    reasm: super::reasm6::Reassembly,
}

/// The transport protocol, addresses and transport header offset of an
/// IPv4 frame, or of an IPv6 frame without extension headers; at least 8
/// bytes of transport header. (IPv6 fragments are put back together
/// before: see [`Net::frame`].)
fn ip_l4(f: &[u8]) -> Option<(u8, IpAddr, IpAddr, usize)> {
    const I: usize = VNET_HDR_LEN + 14;
    let et = wire::eth::ethertype(f.get(VNET_HDR_LEN..)?)?;
    if et == wire::eth::ETHERTYPE_IPV6 {
        let h = wire::ipv6::Header::new(f.get(I..)?)?;
        let l4 = I + wire::ipv6::HDR_LEN;
        return (f.len() >= l4 + 8).then(|| (h.next_header(), h.src().into(), h.dst().into(), l4));
    }
    if f.len() < I + 20 || et != wire::eth::ETHERTYPE_IPV4 {
        return None;
    }
    let ihl = (f[I] & 0xf) as usize * 4;
    if ihl < 20 || f.len() < I + ihl + 8 {
        return None;
    }
    let src = Ipv4Addr::new(f[I + 12], f[I + 13], f[I + 14], f[I + 15]);
    let dst = Ipv4Addr::new(f[I + 16], f[I + 17], f[I + 18], f[I + 19]);
    Some((f[I + 9], src.into(), dst.into(), I + ihl))
}

/// Whether `f` is an IPv4 fragment other than the first.
fn is_later_fragment4(f: &[u8]) -> bool {
    const I: usize = VNET_HDR_LEN + 14;
    f.get(VNET_HDR_LEN..)
        .and_then(wire::eth::ethertype)
        .is_some_and(|et| et == wire::eth::ETHERTYPE_IPV4)
        && f.len() >= I + 20
        && u16::from_be_bytes([f[I + 6], f[I + 7]]) & 0x1fff != 0
}

impl Net {
    fn new(gw: GatewayAddrs, now: SInstant) -> Net {
        let (mut iface, dev) = gateway_iface(&gw, now);
        // any-IP: accept every destination, as a router would
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(gw.ip);
        if let Some((g6, _)) = gw.ip6 {
            let _ = iface.routes_mut().add_default_ipv6_route(g6);
        }
        Net {
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            gw,
            syn: HashMap::new(),
            tcp: HashMap::new(),
            udp_sock: HashMap::new(),
            udp: HashMap::new(),
            ping: HashMap::new(),
            held: HashMap::new(),
            udp_pending: Default::default(),
            reasm: Default::default(),
        }
    }

    /// Whether container `src` may open one more flow; counts a refusal.
    fn may_open(&self, src: IpAddr, svc: &Svc) -> bool {
        let ok = svc.quota == 0 || self.held.get(&src).copied().unwrap_or(0) < svc.quota;
        if !ok {
            svc.stats.quota_exceeded.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    fn hold(&mut self, src: IpAddr) {
        *self.held.entry(src).or_default() += 1;
    }

    fn release(&mut self, src: IpAddr) {
        if let Some(h) = self.held.get_mut(&src) {
            *h -= 1;
            if *h == 0 {
                self.held.remove(&src);
            }
        }
    }

    /// A routed frame from a container.
    fn frame(&mut self, net: NetIdx, f: Vec<u8>, svc: &Svc) {
        // an IPv6 fragment: held until its datagram is whole (smoltcp
        // 0.14 reassembles IPv6 only on 6LoWPAN)
        let f = if super::reasm6::Reassembly::is_fragment(&f) {
            match self.reasm.offer(&f, Instant::now()) {
                Ok(Some(whole)) => {
                    svc.stats.reassembled.fetch_add(1, Ordering::Relaxed);
                    whole
                }
                Ok(None) => return,
                Err(_) => {
                    svc.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        } else {
            f
        };
        // a later IPv4 fragment has no ports: smoltcp puts it back
        // together with its first, whose ports made the flow
        if is_later_fragment4(&f) {
            push_with_arp(&mut self.dev, &self.gw, f);
            return;
        }
        let Some((proto, src, dst, l4)) = ip_l4(&f) else {
            svc.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let sport = u16::from_be_bytes([f[l4], f[l4 + 1]]);
        let dport = u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]);
        let flow = (src, sport, dst, dport);
        match proto {
            6 if f.len() >= l4 + 14 => {
                let syn_only = wire::tcp::is_syn_only(f[l4 + wire::tcp::FLAGS]);
                if syn_only && !self.tcp.contains_key(&flow) {
                    if !self.syn.contains_key(&flow) {
                        if !self.may_open(src, svc) {
                            return;
                        }
                        self.hold(src);
                    }
                    // hold the SYN until the host's connection is up
                    if self.syn.insert(flow, f).is_none() {
                        let tx = svc.tx.clone();
                        tokio::spawn(async move {
                            let to = SocketAddr::from((dst, dport));
                            let s = tokio::time::timeout(
                                CONNECT_TIMEOUT,
                                tokio::net::TcpStream::connect(to),
                            )
                            .await
                            .ok()
                            .and_then(|r| r.ok());
                            let _ = tx.send(Event::Connected(net, flow, s)).await;
                        });
                    }
                    return;
                }
                push_with_arp(&mut self.dev, &self.gw, f);
            }
            17 => {
                if !self.udp.contains_key(&flow) && !self.udp_pending.contains_key(&flow) {
                    // held from admission: a burst of new flows in one batch
                    // cannot pass the quota before poll makes them
                    if !self.may_open(src, svc) {
                        return;
                    }
                    self.hold(src);
                    let mac = f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12]
                        .try_into()
                        .expect("6");
                    self.udp_pending.insert(flow, mac);
                }
                // a smoltcp socket for the remote endpoint, a host socket for the flow
                let ep = (dst, dport);
                let now = Instant::now();
                if let Some((_, last)) = self.udp_sock.get_mut(&ep) {
                    *last = now;
                } else {
                    let mut u = udp::Socket::new(
                        udp::PacketBuffer::new(
                            vec![udp::PacketMetadata::EMPTY; 64],
                            vec![0; 256 * 1024],
                        ),
                        udp::PacketBuffer::new(
                            vec![udp::PacketMetadata::EMPTY; 64],
                            vec![0; 256 * 1024],
                        ),
                    );
                    let _ = u.bind(IpListenEndpoint {
                        addr: Some(IpAddress::from(dst)),
                        port: dport,
                    });
                    self.udp_sock.insert(ep, (self.sockets.add(u), now));
                }
                push_with_arp(&mut self.dev, &self.gw, f);
            }
            // echo request (ICMP, ICMPv6): an ICMP datagram ("ping")
            // socket per flow
            1 | 58
                if f[l4]
                    == if proto == 1 {
                        8
                    } else {
                        wire::icmpv6::ECHO_REQUEST
                    } =>
            {
                const I: usize = VNET_HDR_LEN + 14;
                let total = if proto == 1 {
                    u16::from_be_bytes([f[I + 2], f[I + 3]]) as usize
                } else {
                    wire::ipv6::HDR_LEN + u16::from_be_bytes([f[I + 4], f[I + 5]]) as usize
                };
                let end = (I + total).min(f.len());
                let id = u16::from_be_bytes([f[l4 + 4], f[l4 + 5]]);
                let key = (src, id, dst, 0);
                let mac: [u8; 6] = f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12]
                    .try_into()
                    .expect("6");
                if !self.ping.contains_key(&key) {
                    if !self.may_open(src, svc) {
                        return;
                    }
                    self.hold(src);
                }
                let e = self.ping.entry(key).or_insert_with(|| {
                    svc.stats.ping_flows.fetch_add(1, Ordering::Relaxed);
                    (
                        UdpFlow {
                            out: ping_flow(net, key, svc.tx.clone(), svc.stats.clone()),
                            last: Instant::now(),
                            mac: Some(mac),
                        },
                        mac,
                    )
                });
                e.0.last = Instant::now();
                let _ = e.0.out.try_send(f[l4..end].to_vec());
            }
            _ => {
                svc.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// An echo reply from the host's ICMP socket, as a frame to the
    /// container (the identifier restored, checksums computed).
    fn ping_reply(&mut self, flow: Flow, icmp: Vec<u8>) {
        let Some((_, mac)) = self.ping.get(&flow) else {
            return;
        };
        if let (IpAddr::V6(ctr), IpAddr::V6(remote)) = (flow.0, flow.2) {
            if icmp.len() < 8 || icmp[0] != wire::icmpv6::ECHO_REPLY {
                return;
            }
            let mut m = icmp;
            m[4..6].copy_from_slice(&flow.1.to_be_bytes());
            wire::icmpv6::fill_checksum(&mut m, remote, ctr);
            let mut f = vec![0u8; VNET_HDR_LEN];
            f.extend_from_slice(mac);
            f.extend_from_slice(&self.gw.mac.0);
            f.extend_from_slice(&wire::eth::ETHERTYPE_IPV6);
            let mut h = [0u8; wire::ipv6::HDR_LEN];
            wire::ipv6::emit(
                &mut h,
                m.len() as u16,
                wire::ipv6::PROTO_ICMPV6,
                64,
                remote,
                ctr,
            );
            f.extend_from_slice(&h);
            f.extend_from_slice(&m);
            self.dev.tx.push(f);
            return;
        }
        let (IpAddr::V4(ctr), IpAddr::V4(remote)) = (flow.0, flow.2) else {
            return;
        };
        if icmp.len() < 8 || icmp[0] != 0 {
            return;
        }
        let mut m = icmp;
        m[4..6].copy_from_slice(&flow.1.to_be_bytes());
        m[2..4].copy_from_slice(&[0, 0]);
        let c = wire::csum::checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend_from_slice(mac);
        f.extend_from_slice(&self.gw.mac.0);
        f.extend_from_slice(&wire::eth::ETHERTYPE_IPV4);
        f.extend_from_slice(&wire::ipv4::emit(
            m.len(),
            wire::ipv4::PROTO_ICMP,
            64,
            remote,
            ctr,
        ));
        f.extend_from_slice(&m);
        self.dev.tx.push(f);
    }

    fn connected(&mut self, net: NetIdx, flow: Flow, s: Option<tokio::net::TcpStream>, svc: &Svc) {
        let Some(syn) = self.syn.remove(&flow) else {
            return;
        };
        let Some(stream) = s else {
            // no listener: smoltcp answers the SYN with a reset
            self.release(flow.0);
            svc.stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
            push_with_arp(&mut self.dev, &self.gw, syn);
            return;
        };
        svc.stats.tcp_opened.fetch_add(1, Ordering::Relaxed);
        let mut t = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_BUF]),
            tcp::SocketBuffer::new(vec![0; TCP_BUF]),
        );
        // a relay: acknowledge at once (delayed ACKs stall big-MTU senders)
        // and forward small writes at once
        t.set_ack_delay(None);
        t.set_nagle_enabled(false);
        let _ = t.listen(IpListenEndpoint {
            addr: Some(IpAddress::from(flow.2)),
            port: flow.3,
        });
        let handle = self.sockets.add(t);
        let gen = rand::random();
        let (to_host, mut rx) = mpsc::channel::<Vec<u8>>(16);
        let credit = Arc::new(Semaphore::new(CREDIT));
        let (tx, c2) = (svc.tx.clone(), credit.clone());
        let blocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let b2 = blocked.clone();
        let task = tokio::spawn(async move {
            let (mut rd, mut wr) = stream.into_split();
            let tx1 = tx.clone();
            let up = async move {
                while let Some(d) = rx.recv().await {
                    if wr.write_all(&d).await.is_err() {
                        break;
                    }
                    if b2.swap(false, Ordering::AcqRel) {
                        let _ = tx1.send(Event::Wake).await;
                    }
                }
                let _ = wr.shutdown().await;
            };
            let tx2 = tx.clone();
            let down = async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = rd.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        let _ = tx2.send(Event::HostEof(net, flow, gen)).await;
                        break;
                    }
                    match c2.acquire_many(n as u32).await {
                        Ok(p) => p.forget(),
                        Err(_) => break,
                    }
                    if tx2
                        .send(Event::HostData(net, flow, gen, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            };
            tokio::join!(up, down);
        });
        self.tcp.insert(
            flow,
            Conn {
                since: Instant::now(),
                handle,
                gen,
                to_host: Some(to_host),
                pending: VecDeque::new(),
                host_eof: false,
                closed: false,
                credit,
                blocked,
                task,
            },
        );
        push_with_arp(&mut self.dev, &self.gw, syn);
    }

    /// Runs the stack and moves data between it and the host sockets'
    /// tasks; true when data was handed to a host writer (see `run`).
    fn poll(&mut self, now: SInstant, net: NetIdx, svc: &Svc) -> bool {
        let mut to_host = false;
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        // UDP: datagrams from containers go out of their flow's host socket
        for (&(rip, rport), &(h, _)) in self.udp_sock.iter() {
            let s = self.sockets.get_mut::<udp::Socket>(h);
            while let Ok((d, meta)) = s.recv() {
                let cip = match meta.endpoint.addr {
                    IpAddress::Ipv4(a) => IpAddr::V4(a),
                    IpAddress::Ipv6(a) => IpAddr::V6(a),
                };
                let flow = (cip, meta.endpoint.port, rip, rport);
                let data = d.to_vec();
                let pending = self.udp_pending.remove(&flow);
                if !self.udp.contains_key(&flow) && pending.is_none() {
                    *self.held.entry(cip).or_default() += 1;
                }
                let f = self.udp.entry(flow).or_insert_with(|| {
                    svc.stats.udp_flows.fetch_add(1, Ordering::Relaxed);
                    UdpFlow {
                        out: udp_flow(net, flow, svc.tx.clone()),
                        last: Instant::now(),
                        mac: pending,
                    }
                });
                f.last = Instant::now();
                to_host |= f.out.try_send(data).is_ok();
            }
        }
        // admitted datagrams smoltcp dropped: their hold goes
        for (f, _) in std::mem::take(&mut self.udp_pending) {
            self.release(f.0);
        }
        // TCP relays
        let mut gone = Vec::new();
        for (flow, c) in self.tcp.iter_mut() {
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            // container -> host, while the host side keeps up
            if let Some(to) = &c.to_host {
                while s.can_recv() {
                    let Ok(permit) = to.try_reserve() else {
                        c.blocked.store(true, Ordering::Release);
                        break;
                    };
                    // sized to what is queued: a 64-byte request should
                    // not cost zeroing 64 KiB
                    let mut buf = vec![0u8; s.recv_queue().clamp(1, 65536)];
                    match s.recv_slice(&mut buf) {
                        Ok(n) if n > 0 => {
                            buf.truncate(n);
                            permit.send(buf);
                            to_host = true;
                        }
                        _ => break,
                    }
                }
                if !s.may_recv()
                    && s.state() != tcp::State::Listen
                    && s.state() != tcp::State::SynReceived
                {
                    c.to_host = None; // the container closed: FIN to the host
                }
            }
            // host -> container, as far as the window allows
            while !c.pending.is_empty() && s.can_send() {
                let (a, _) = c.pending.as_slices();
                match s.send_slice(a) {
                    Ok(n) if n > 0 => {
                        c.pending.drain(..n);
                        c.credit.add_permits(n);
                    }
                    _ => break,
                }
            }
            if c.host_eof && c.pending.is_empty() && !c.closed {
                s.close();
                c.closed = true;
            }
            let unopened = matches!(s.state(), tcp::State::Listen | tcp::State::SynReceived)
                && c.since.elapsed() > CONNECT_TIMEOUT;
            if unopened || matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait) {
                gone.push(*flow);
            }
        }
        for flow in gone {
            if let Some(c) = self.tcp.remove(&flow) {
                c.task.abort();
                self.sockets.remove(c.handle);
                self.release(flow.0);
            }
        }
        // idle UDP and ping flows
        let now_i = Instant::now();
        let mut ended = Vec::new();
        self.udp.retain(|k, f| {
            let keep = now_i.duration_since(f.last) < UDP_IDLE;
            if !keep {
                ended.push(k.0);
            }
            keep
        });
        self.ping.retain(|k, (f, _)| {
            let keep = now_i.duration_since(f.last) < UDP_IDLE;
            if !keep {
                ended.push(k.0);
            }
            keep
        });
        for src in ended {
            self.release(src);
        }
        let mut idle = Vec::new();
        for (ep, (h, last)) in &self.udp_sock {
            if now_i.duration_since(*last) >= UDP_IDLE {
                idle.push((*ep, *h));
            }
        }
        for (ep, h) in idle {
            self.udp_sock.remove(&ep);
            self.sockets.remove(h);
        }
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        to_host
    }

    fn host_data(&mut self, flow: Flow, gen: u64, d: Vec<u8>) {
        if let Some(c) = self.tcp.get_mut(&flow).filter(|c| c.gen == gen) {
            c.pending.extend(d);
        }
    }

    fn host_eof(&mut self, flow: Flow, gen: u64) {
        if let Some(c) = self.tcp.get_mut(&flow).filter(|c| c.gen == gen) {
            c.host_eof = true;
        }
    }

    fn udp_reply(&mut self, flow: Flow, d: Vec<u8>, svc: &Svc) {
        let Some((h, last)) = self.udp_sock.get_mut(&(flow.2, flow.3)) else {
            return;
        };
        *last = Instant::now();
        let h = *h;
        // IPv6 past the link: in fragments, written here (smoltcp 0.14
        // drops an IPv6 packet longer than the link's MTU)
        if let (IpAddr::V6(c), IpAddr::V6(r)) = (flow.0, flow.2) {
            if wire::ipv6::HDR_LEN + UDP_HDR + d.len() > self.gw.mtu as usize {
                if !self.udp_reply6_in_fragments(flow, c, r, &d) {
                    svc.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
        let s = self.sockets.get_mut::<udp::Socket>(h);
        let _ = s.send_slice(
            &d,
            IpEndpoint {
                addr: IpAddress::from(flow.0),
                port: flow.1,
            },
        );
    }
}

/// A UDP header's length and its fields.
const UDP_HDR: usize = 8;
const UDP_LEN: usize = 4;
const UDP_CSUM: usize = 6;

impl Net {
    /// Writes datagram `d` from remote `r` to container `c` (flow `flow`)
    /// as IPv6 fragments that fit the link. False (nothing written): the
    /// flow or its container's MAC is not known, or `d` is too long for
    /// one datagram.
    fn udp_reply6_in_fragments(&mut self, flow: Flow, c: Ipv6Addr, r: Ipv6Addr, d: &[u8]) -> bool {
        use wire::{eth, frag6, ipv6};
        let Some(mac) = self.udp.get(&flow).and_then(|f| f.mac) else {
            return false;
        };
        let len = UDP_HDR + d.len();
        let Ok(len16) = u16::try_from(len) else {
            return false;
        };
        let mut p = vec![0u8; ipv6::HDR_LEN + len];
        ipv6::emit(&mut p, len16, ipv6::PROTO_UDP, 64, r, c);
        let u = ipv6::HDR_LEN;
        p[u..u + 2].copy_from_slice(&flow.3.to_be_bytes());
        p[u + 2..u + 4].copy_from_slice(&flow.1.to_be_bytes());
        p[u + UDP_LEN..u + UDP_LEN + 2].copy_from_slice(&len16.to_be_bytes());
        p[u + UDP_HDR..].copy_from_slice(d);
        let sum = match ipv6::upper_checksum(r, c, ipv6::PROTO_UDP, &p[u..]) {
            0 => 0xffff,
            s => s,
        };
        p[u + UDP_CSUM..u + UDP_CSUM + 2].copy_from_slice(&sum.to_be_bytes());
        let (gw_mac, q) = (self.gw.mac.0, &mut self.dev.tx);
        frag6::fragment(&p, self.gw.mtu as usize, rand::random(), |f| {
            q.push(eth::vnet_frame(mac, gw_mac, eth::ETHERTYPE_IPV6, f));
        })
        .is_ok()
    }
}

/// A host UDP socket for one flow; datagrams sent on the returned channel
/// go to the remote, answers come back as events. Ends after [`UDP_IDLE`].
fn udp_flow(net: NetIdx, flow: Flow, tx: mpsc::Sender<Event>) -> mpsc::Sender<Vec<u8>> {
    let (out, mut rx) = mpsc::channel::<Vec<u8>>(256);
    tokio::spawn(async move {
        let any: SocketAddr = match flow.2 {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(s) = tokio::net::UdpSocket::bind(any).await else {
            return;
        };
        if s.connect((flow.2, flow.3)).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 65536];
        loop {
            tokio::select! {
                d = rx.recv() => match d {
                    Some(d) => { let _ = s.send(&d).await; }
                    None => return,
                },
                r = tokio::time::timeout(UDP_IDLE, s.recv(&mut buf)) => match r {
                    Ok(Ok(n)) => {
                        if tx.send(Event::UdpReply(net, flow, buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                    Ok(Err(_)) => {}
                    Err(_) => return,
                },
            }
        }
    });
    out
}

/// An ICMP datagram socket (`IPPROTO_ICMP`, or `IPPROTO_ICMPV6` for an
/// IPv6 flow: what unprivileged ping uses, if net.ipv4.ping_group_range
/// allows) for one echo flow.
fn ping_flow(
    net: NetIdx,
    flow: Flow,
    tx: mpsc::Sender<Event>,
    stats: Arc<Stats>,
) -> mpsc::Sender<Vec<u8>> {
    let (out, mut rx) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        let fd = unsafe {
            let (af, proto) = match flow.2 {
                IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
                IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
            };
            libc::socket(
                af,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto,
            )
        };
        if fd < 0 {
            stats.ping_refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // a datagram socket: tokio's UDP type drives it (send/recv only)
        let std_sock = unsafe { <std::net::UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let Ok(s) = tokio::net::UdpSocket::from_std(std_sock) else {
            return;
        };
        if s.connect((flow.2, 0)).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 65536];
        loop {
            tokio::select! {
                d = rx.recv() => match d {
                    Some(d) => {
                        if s.send(&d).await.is_err() {
                            stats.ping_refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => return,
                },
                r = tokio::time::timeout(UDP_IDLE, s.recv(&mut buf)) => match r {
                    Ok(Ok(n)) => {
                        if tx.send(Event::PingReply(net, flow, buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                    Ok(Err(_)) => {}
                    Err(_) => return,
                },
            }
        }
    });
    out
}

struct Svc {
    tx: mpsc::Sender<Event>,
    stats: Arc<Stats>,
    /// Flows per container (0: no limit).
    quota: u32,
}

/// At most this many answer frames per round are written into the TAPs
/// by the socket NAT's thread itself (see [`start`]).
const DIRECT_MAX: usize = 2;

/// Starts the service loop on a thread of its own (`tapnet-socknat`) with
/// a single-threaded runtime: the loop, every connection's relay task and
/// every host socket's readiness live on that one thread, so a request
/// and its answer cross threads only between the datapath and this loop
/// (on the daemon's shared runtime the relay tasks ran on the other
/// worker, and every segment crossed twice more).
///
/// `spin`: after handling events, poll for the next one (yielding to the
/// runtime, which polls the host sockets without sleeping) this long
/// before sleeping; zero: never.
///
/// `direct`: answers for a known container are written into its TAP from
/// this thread (the rest, e.g. ARP broadcasts, through `dp`): an answer
/// then wakes only the container, not the datapath thread too.
pub fn start(
    rx: mpsc::Receiver<Event>,
    nat: SockNat,
    dp: Injector,
    direct: Option<DirectWriter>,
    quota: u32,
    spin: Duration,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("tapnet-socknat".into())
        .spawn(move || rt.block_on(run(rx, nat, dp, direct, quota, spin)))?;
    Ok(())
}

/// The service loop: owns every network's stack.
async fn run(
    mut rx: mpsc::Receiver<Event>,
    nat: SockNat,
    dp: Injector,
    direct: Option<DirectWriter>,
    quota: u32,
    spin: Duration,
) {
    let svc = Svc {
        tx: nat.tx.clone(),
        stats: nat.stats.clone(),
        quota,
    };
    let t0 = Instant::now();
    let now = || SInstant::from_micros(t0.elapsed().as_micros() as i64);
    let mut nets: HashMap<NetIdx, Net> = HashMap::new();
    let mut busy_until: Option<Instant> = None;
    loop {
        let mut spun = None;
        if let Some(until) = busy_until.take() {
            while Instant::now() < until {
                match rx.try_recv() {
                    Ok(ev) => {
                        spun = Some(ev);
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => tokio::task::yield_now().await,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
        }
        let first = match spun {
            Some(ev) => Some(ev),
            None => {
                let delays = nets
                    .values_mut()
                    .map(|n| n.iface.poll_delay(now(), &n.sockets));
                let Some(first) = next_event(&mut rx, delays).await else {
                    return;
                };
                first
            }
        };
        if first.is_some() && !spin.is_zero() {
            busy_until = Some(Instant::now() + spin);
        }
        let handle = |ev: Event, nets: &mut HashMap<NetIdx, Net>| match ev {
            Event::Frame(net, f) => {
                if let Some(n) = nets.get_mut(&net) {
                    n.frame(net, f, &svc);
                }
            }
            Event::AddNet(net, gw) => {
                if nets.get(&net).is_none_or(|n| n.gw != gw) {
                    nets.insert(net, Net::new(gw, now()));
                }
            }
            Event::RemoveNet(net) => {
                if let Some(n) = nets.remove(&net) {
                    for c in n.tcp.into_values() {
                        c.task.abort();
                    }
                }
            }
            Event::Connected(net, flow, s) => {
                if let Some(n) = nets.get_mut(&net) {
                    n.connected(net, flow, s, &svc);
                }
            }
            Event::HostData(net, flow, gen, d) => {
                if let Some(n) = nets.get_mut(&net) {
                    n.host_data(flow, gen, d);
                }
            }
            Event::HostEof(net, flow, gen) => {
                if let Some(n) = nets.get_mut(&net) {
                    n.host_eof(flow, gen);
                }
            }
            Event::UdpReply(net, flow, d) => {
                if let Some(n) = nets.get_mut(&net) {
                    n.udp_reply(flow, d, &svc);
                }
            }
            Event::PingReply(net, flow, d) => {
                if let Some(n) = nets.get_mut(&net) {
                    n.ping_reply(flow, d);
                }
            }
            Event::Wake => {}
        };
        if let Some(ev) = first {
            handle(ev, &mut nets);
        }
        let mut budget = 4096;
        while budget > 0 {
            match rx.try_recv() {
                Ok(ev) => handle(ev, &mut nets),
                Err(_) => break,
            }
            budget -= 1;
        }
        let ts = now();
        let mut to_host = false;
        for (net, n) in nets.iter_mut() {
            to_host |= n.poll(ts, *net, &svc);
        }
        if to_host {
            // a request goes to its host socket before the frames this
            // round made (the ACK for it) are written: each write into a
            // TAP runs the container's TCP input on this thread, and the
            // request should not wait behind it (the host writers are
            // tasks on this thread: yielding runs them)
            tokio::task::yield_now().await;
        }
        for (net, n) in nets.iter_mut() {
            if !n.dev.tx.is_empty() {
                let mut frames = std::mem::take(&mut n.dev.tx);
                // a few frames (a request's answer): written here, without
                // waking the datapath; a burst (a bulk transfer) goes to
                // the datapath, whose one batched submit costs this busy
                // thread less than a write per frame
                if let Some(d) = direct.as_ref().filter(|_| frames.len() <= DIRECT_MAX) {
                    frames.retain(|f| !d.write(*net, f));
                }
                let _ = dp.inject(*net, frames);
            }
        }
    }
}
