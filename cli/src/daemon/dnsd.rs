//! The service behind each network's gateway: a small IP stack (smoltcp)
//! per network that terminates UDP and TCP port 53 on the gateway address
//! and hands the DNS messages to the `dns` crate.
//!
//! Frames arrive from the datapath's punt hook through a bounded channel
//! (the datapath never waits: a full channel is a counted drop) and leave
//! through `Datapath::inject`. Queries that are not local are forwarded by
//! their own tasks, so a slow upstream never holds up anything else.

use dns::resolver::Transport;
use dns::{Outcome, Resolver};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint,
};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use vswitch::vnet::VNET_HDR_LEN;
use vswitch::{Injector, Mac, NetIdx, PuntHook};
use wire::{arp, eth, icmpv6, ipv4, ipv6};

/// Punted frames waiting for the service, at most.
const QUEUE: usize = 4096;
/// TCP connections per network served at once.
const TCP_CONNS: usize = 16;
/// A DNS-over-TCP connection with nothing to do for this long is closed
/// (RFC 7766 lets servers close idle ones): one client cannot keep all
/// TCP_CONNS of a network busy by connecting and waiting.
const TCP_IDLE: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(10);
const DNS_PORT: u16 = 53;

pub enum Event {
    Frame(NetIdx, Vec<u8>),
    AddNet(NetIdx, GatewayAddrs),
    RemoveNet(NetIdx),
    Answer {
        net: NetIdx,
        to: Dest,
        bytes: Vec<u8>,
    },
}

/// Who the gateway is on a network, for the services behind it (this
/// resolver and the socket NAT): its addresses, MAC and MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayAddrs {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// The IPv6 address and prefix, on a dual-stack network.
    pub ip6: Option<(Ipv6Addr, u8)>,
    pub mac: Mac,
    pub mtu: u32,
}

#[derive(Debug, Clone, Copy)]
pub enum Dest {
    Udp(IpEndpoint),
    /// Connection index and its generation (a reused slot never gets the
    /// answer meant for its previous client).
    Tcp(usize, u64),
}

/// Handle for the daemon: where to send events, and the punt hook to give
/// the datapath.
#[derive(Clone)]
pub struct DnsService {
    pub tx: mpsc::Sender<Event>,
}

impl DnsService {
    /// The hook the datapath calls for punted frames.
    pub fn hook(&self) -> PuntHook {
        frame_hook(self.tx.clone(), Event::Frame)
    }

    pub fn send(&self, ev: Event) {
        send_control(&self.tx, ev)
    }
}

/// Waits for the next event, or until the earliest smoltcp timer (at most
/// a second). `None`: the channel is closed; `Some(None)`: a timer.
pub(super) async fn next_event<E>(
    rx: &mut mpsc::Receiver<E>,
    delays: impl Iterator<Item = Option<smoltcp::time::Duration>>,
) -> Option<Option<E>> {
    let delay = delays
        .flatten()
        .map(|d| Duration::from_micros(d.total_micros()))
        .min()
        .unwrap_or(Duration::from_secs(1))
        .min(Duration::from_secs(1));
    tokio::select! {
        ev = rx.recv() => ev.map(Some),
        _ = tokio::time::sleep(delay) => Some(None),
    }
}

/// A datapath hook that queues a copy of each frame as `wrap(net, frame)`
/// without ever blocking (a full queue refuses: a counted drop).
pub(super) fn frame_hook<E: Send + 'static>(
    tx: mpsc::Sender<E>,
    wrap: fn(NetIdx, Vec<u8>) -> E,
) -> PuntHook {
    PuntHook(Arc::new(move |net, f: &[u8]| {
        tx.try_send(wrap(net, f.to_vec())).is_ok()
    }))
}

/// Sends a control event; control events are rare, so a full queue only
/// delays them (never drops them).
pub(super) fn send_control<E: Send + 'static>(tx: &mpsc::Sender<E>, ev: E) {
    let tx = tx.clone();
    if let Err(mpsc::error::TrySendError::Full(ev)) = tx.try_send(ev) {
        tokio::spawn(async move {
            let _ = tx.send(ev).await;
        });
    }
}

/// Creates the channel; `run` consumes the receiver.
pub fn channel() -> (DnsService, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (DnsService { tx }, rx)
}

/// smoltcp's view of the network: frames in from the punt queue, frames
/// out to the datapath.
pub(super) struct Queue {
    pub(super) rx: VecDeque<Vec<u8>>,
    pub(super) tx: Vec<Vec<u8>>,
    pub(super) mtu: usize,
}

pub(super) struct RxTok(Vec<u8>);
pub(super) struct TxTok<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0[VNET_HDR_LEN..])
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; VNET_HDR_LEN + len];
        let r = f(&mut b[VNET_HDR_LEN..]);
        // ARP replies: containers never ask the service (the switch answers
        // ARP for the gateway); they answer the synthetic requests below.
        let frame = &b[VNET_HDR_LEN..];
        let arp_reply = eth::ethertype(frame) == Some(eth::ETHERTYPE_ARP)
            && arp::Arp::new(&frame[eth::HDR_LEN..]).is_some_and(|a| a.op() == arp::REPLY);
        // nor neighbour advertisements (the answers to synthetic
        // solicitations: the switch answers for the gateway's IPv6 address)
        const L4: usize = eth::HDR_LEN + ipv6::HDR_LEN;
        let na = eth::ethertype(frame) == Some(eth::ETHERTYPE_IPV6)
            && frame.len() > L4
            && frame[eth::HDR_LEN + ipv6::NEXT_HEADER] == ipv6::PROTO_ICMPV6
            && frame[L4] == icmpv6::NEIGHBOR_ADVERT;
        if !arp_reply && !na {
            self.0.push(b);
        }
        r
    }
}

impl phy::Device for Queue {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _: SInstant) -> Option<(RxTok, TxTok<'_>)> {
        let f = self.rx.pop_front()?;
        Some((RxTok(f), TxTok(&mut self.tx)))
    }

    fn transmit(&mut self, _: SInstant) -> Option<TxTok<'_>> {
        Some(TxTok(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.mtu;
        // Containers hand over partial (offloaded) checksums: never verify
        // on receive, always compute on send.
        let mut cs = ChecksumCapabilities::default();
        cs.ipv4 = Checksum::Tx;
        cs.udp = Checksum::Tx;
        cs.tcp = Checksum::Tx;
        cs.icmpv4 = Checksum::Tx;
        cs.icmpv6 = Checksum::Tx;
        c.checksum = cs;
        c
    }
}

struct TcpConn {
    handle: SocketHandle,
    gen: u64,
    inbuf: Vec<u8>,
    pending: usize,
    /// When the client last sent something (None: not connected).
    last: Option<SInstant>,
}

impl TcpConn {
    /// A new generation of this slot, listening for the next client
    /// (answers still on their way to the old one are dropped).
    fn relisten(&mut self, s: &mut tcp::Socket) {
        self.gen += 1;
        self.inbuf.clear();
        self.pending = 0;
        self.last = None;
        let _ = s.listen(DNS_PORT);
    }
}

struct NetStack {
    iface: Interface,
    dev: Queue,
    sockets: SocketSet<'static>,
    udp: SocketHandle,
    tcp: Vec<TcpConn>,
    gw: GatewayAddrs,
}

impl NetStack {
    fn new(gw: GatewayAddrs, now: SInstant) -> NetStack {
        let (iface, dev) = gateway_iface(&gw, now);
        let mut sockets = SocketSet::new(Vec::new());
        let mut u = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 256], vec![0; 256 * 1024]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 256], vec![0; 256 * 1024]),
        );
        // every address of the gateway (IPv4 and IPv6)
        let _ = u.bind(IpListenEndpoint {
            addr: None,
            port: DNS_PORT,
        });
        let udp = sockets.add(u);
        let tcp = (0..TCP_CONNS)
            .map(|_| {
                let mut t = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; 65536 + 2]),
                    tcp::SocketBuffer::new(vec![0; 4 * 65538]),
                );
                let _ = t.listen(DNS_PORT);
                TcpConn {
                    handle: sockets.add(t),
                    gen: 0,
                    inbuf: Vec::new(),
                    pending: 0,
                    last: None,
                }
            })
            .collect();
        NetStack {
            iface,
            dev,
            sockets,
            udp,
            tcp,
            gw,
        }
    }

    /// Queues a punted frame (see [`push_with_arp`]).
    fn push(&mut self, f: Vec<u8>) {
        push_with_arp(&mut self.dev, &self.gw, f);
    }

    fn poll(&mut self, now: SInstant, net: NetIdx, svc: &Svc) {
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        // UDP queries
        loop {
            let sock = self.sockets.get_mut::<udp::Socket>(self.udp);
            let (q, from) = match sock.recv() {
                Ok((d, meta)) => (d.to_vec(), meta.endpoint),
                Err(_) => break,
            };
            let client = ip_of(from.addr);
            let t0 = std::time::Instant::now();
            match svc.resolver.handle(net, client, &q, Transport::Udp) {
                Outcome::Reply(b) => {
                    let _ = sock.send_slice(&b, from);
                    svc.resolver.stats.latency.observe(t0.elapsed());
                }
                Outcome::Forward => svc.forward(net, client, q, Dest::Udp(from), t0),
                Outcome::Drop => {}
            }
        }
        // TCP connections: 2-byte length-prefixed messages
        for (i, c) in self.tcp.iter_mut().enumerate() {
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            if !s.is_open() {
                // closed (or never used): serve the next client
                c.relisten(s);
                continue;
            }
            if s.state() == tcp::State::Listen {
                c.last = None;
                continue;
            }
            // the idle clock starts when a client is there
            c.last.get_or_insert(now);
            while s.can_recv() {
                let mut buf = [0u8; 4096];
                match s.recv_slice(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        c.inbuf.extend_from_slice(&buf[..n]);
                        c.last = Some(now);
                    }
                }
            }
            // connected, quiet, nothing owed to it: free the slot
            let last = c.last.unwrap_or(now);
            if c.pending == 0 && s.send_queue() == 0 && now - last > TCP_IDLE {
                s.abort();
                continue;
            }
            let client = s
                .remote_endpoint()
                .map(|e| ip_of(e.addr))
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            while c.inbuf.len() >= 2 {
                let n = u16::from_be_bytes([c.inbuf[0], c.inbuf[1]]) as usize;
                if c.inbuf.len() < 2 + n {
                    break;
                }
                let q: Vec<u8> = c.inbuf.drain(..2 + n).skip(2).collect();
                let t0 = std::time::Instant::now();
                match svc.resolver.handle(net, client, &q, Transport::Tcp) {
                    Outcome::Reply(b) => {
                        send_framed(s, &b);
                        svc.resolver.stats.latency.observe(t0.elapsed());
                    }
                    Outcome::Forward => {
                        c.pending += 1;
                        svc.forward(net, client, q, Dest::Tcp(i, c.gen), t0);
                    }
                    Outcome::Drop => {}
                }
            }
            // the client is done sending and has all its answers
            if s.state() == tcp::State::CloseWait && c.pending == 0 && s.send_queue() == 0 {
                s.close();
            }
        }
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        // slots closed just now listen again before the next frame comes
        for c in self.tcp.iter_mut() {
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            if !s.is_open() {
                c.relisten(s);
            }
        }
    }

    fn answer(&mut self, to: Dest, bytes: &[u8]) {
        match to {
            Dest::Udp(ep) => {
                let s = self.sockets.get_mut::<udp::Socket>(self.udp);
                let _ = s.send_slice(bytes, ep);
            }
            Dest::Tcp(i, gen) => {
                let Some(c) = self.tcp.get_mut(i) else {
                    return;
                };
                if c.gen != gen {
                    return;
                }
                c.pending = c.pending.saturating_sub(1);
                let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
                if s.may_send() {
                    send_framed(s, bytes);
                }
            }
        }
    }
}

/// A client's address as the resolver takes it.
fn ip_of(a: IpAddress) -> IpAddr {
    match a {
        IpAddress::Ipv4(a) => IpAddr::V4(a),
        IpAddress::Ipv6(a) => IpAddr::V6(a),
    }
}

/// A smoltcp interface with the gateway's MAC and address/prefix (and
/// IPv6 address/prefix on a dual-stack network), and the queue device it
/// reads punted frames from and writes frames to.
pub(super) fn gateway_iface(gw: &GatewayAddrs, now: SInstant) -> (Interface, Queue) {
    let GatewayAddrs {
        ip,
        prefix,
        ip6,
        mac,
        mtu,
    } = *gw;
    let mut dev = Queue {
        rx: VecDeque::new(),
        tx: Vec::new(),
        mtu: mtu as usize + 14,
    };
    let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac.0)));
    cfg.random_seed = rand::random();
    let mut iface = Interface::new(cfg, &mut dev, now);
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(ip), prefix));
        if let Some((ip6, prefix6)) = ip6 {
            let _ = a.push(IpCidr::new(IpAddress::Ipv6(ip6), prefix6));
        }
    });
    (iface, dev)
}

/// Queues a frame for smoltcp. Before an IPv4 frame, a synthetic ARP
/// request from its sender teaches smoltcp the sender's MAC, so the answer
/// needs no ARP round trip (smoltcp learns neighbours from ARP only); before
/// an IPv6 frame on a dual-stack network, a synthetic neighbour
/// solicitation for the gateway's IPv6 address does the same (its source
/// link-layer option).
pub(super) fn push_with_arp(dev: &mut Queue, g: &GatewayAddrs, f: Vec<u8>) {
    let (gw, gw6) = (g.ip, g.ip6.map(|a| a.0));
    let e = VNET_HDR_LEN;
    let frame = &f[e.min(f.len())..];
    if eth::ethertype(frame) == Some(eth::ETHERTYPE_IPV4) && frame.len() >= eth::HDR_LEN + 20 {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&frame[eth::SRC..eth::SRC + 6]);
        let h = &frame[eth::HDR_LEN..];
        let ip = Ipv4Addr::new(
            h[ipv4::SRC],
            h[ipv4::SRC + 1],
            h[ipv4::SRC + 2],
            h[ipv4::SRC + 3],
        );
        dev.rx.push_back(eth::vnet_frame(
            eth::BROADCAST,
            mac,
            eth::ETHERTYPE_ARP,
            &arp::request(mac, ip, gw),
        ));
    }
    if let (Some(gw6), Some(h)) = (
        gw6.filter(|_| eth::ethertype(frame) == Some(eth::ETHERTYPE_IPV6)),
        frame.get(eth::HDR_LEN..).and_then(ipv6::Header::new),
    ) {
        let src = h.src();
        if !src.is_unspecified() && !src.is_multicast() {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&frame[eth::SRC..eth::SRC + 6]);
            let dst = ipv6::solicited_node(gw6);
            let mut p = [0u8; ipv6::HDR_LEN + icmpv6::ND_LEN + 8];
            let n = p.len() - ipv6::HDR_LEN;
            ipv6::emit(&mut p, n as u16, ipv6::PROTO_ICMPV6, 255, src, dst);
            icmpv6::emit_ns(&mut p[ipv6::HDR_LEN..], gw6, mac, src, dst);
            dev.rx.push_back(eth::vnet_frame(
                ipv6::multicast_mac(dst),
                mac,
                eth::ETHERTYPE_IPV6,
                &p,
            ));
        }
    }
    dev.rx.push_back(f);
}

fn send_framed(s: &mut tcp::Socket, b: &[u8]) {
    let Ok(len) = u16::try_from(b.len()) else {
        return;
    };
    if s.send_capacity() - s.send_queue() < b.len() + 2 {
        return; // the client is not reading; it will time out
    }
    let _ = s.send_slice(&len.to_be_bytes());
    let _ = s.send_slice(b);
}

/// Forwarded queries one container may have waiting for an upstream
/// server at once. Each holds a socket and a task; beyond this a query is
/// answered SERVFAIL at once (counted as `throttled`), so one container
/// cannot hold the daemon's fds. (Docker's resolver allows 1,024, but it
/// runs one resolver per container; this one serves them all.)
pub const MAX_INFLIGHT_PER_CLIENT: u32 = 256;

/// What the service loop shares with forwarding tasks.
struct Svc {
    resolver: Arc<Resolver>,
    /// Forwarded queries in flight, per client address.
    inflight: Arc<std::sync::Mutex<HashMap<IpAddr, u32>>>,
    /// The daemon's upstream servers (its --dns, else the host's resolv.conf).
    defaults: Vec<SocketAddr>,
    tx: mpsc::Sender<Event>,
}

impl Svc {
    /// Answers `q` from the cache or an upstream server; `t0`: when the
    /// query came (for the latency histogram).
    fn forward(&self, net: NetIdx, client: IpAddr, q: Vec<u8>, to: Dest, t0: std::time::Instant) {
        let t = match to {
            Dest::Udp(_) => Transport::Udp,
            Dest::Tcp(..) => Transport::Tcp,
        };
        let mut servers = self
            .resolver
            .registry
            .read()
            .map(|r| r.upstreams(net, client))
            .unwrap_or_default();
        if servers.is_empty() {
            servers = self.defaults.clone();
        }
        // the cache is per network (one network's containers must not
        // learn from a TTL what another's asked) and per set of upstream
        // servers (a container may have its own)
        let scope = {
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&(net, &servers), &mut h);
            std::hash::Hasher::finish(&h)
        };
        let hit = self
            .resolver
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(scope, &q, t, std::time::Instant::now());
        if let Some(bytes) = hit {
            self.resolver.stats.cached.fetch_add(1, Ordering::Relaxed);
            self.resolver.stats.latency.observe(t0.elapsed());
            let _ = self.tx.try_send(Event::Answer { net, to, bytes });
            return;
        }
        {
            let mut m = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(client).or_default();
            if *n >= MAX_INFLIGHT_PER_CLIENT {
                drop(m);
                self.resolver
                    .stats
                    .throttled
                    .fetch_add(1, Ordering::Relaxed);
                let bytes = self.resolver.servfail(&q, t);
                self.resolver.stats.latency.observe(t0.elapsed());
                let _ = self.tx.try_send(Event::Answer { net, to, bytes });
                return;
            }
            *n += 1;
        }
        let resolver = self.resolver.clone();
        let tx = self.tx.clone();
        let inflight = self.inflight.clone();
        tokio::spawn(async move {
            let a = dns::upstream::forward(&servers, &q, t == Transport::Tcp).await;
            {
                let mut m = inflight.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = m.get_mut(&client) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&client);
                    }
                }
            }
            if let Some(a) = &a {
                resolver
                    .cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .put(scope, &q, t, a, std::time::Instant::now());
            }
            let bytes = a.unwrap_or_else(|| resolver.servfail(&q, t));
            resolver.stats.latency.observe(t0.elapsed());
            let _ = tx.send(Event::Answer { net, to, bytes }).await;
        });
    }
}

/// The service loop: owns every network's stack.
pub async fn run(
    mut rx: mpsc::Receiver<Event>,
    tx: mpsc::Sender<Event>,
    dp: Injector,
    resolver: Arc<Resolver>,
    defaults: Vec<SocketAddr>,
) {
    let svc = Svc {
        resolver,
        inflight: Default::default(),
        defaults,
        tx,
    };
    let t0 = Instant::now();
    let now = || SInstant::from_micros(t0.elapsed().as_micros() as i64);
    let mut nets: HashMap<NetIdx, NetStack> = HashMap::new();
    loop {
        let delays = nets
            .values_mut()
            .map(|n| n.iface.poll_delay(now(), &n.sockets));
        let Some(first) = next_event(&mut rx, delays).await else {
            return;
        };
        let handle = |ev: Event, nets: &mut HashMap<NetIdx, NetStack>| match ev {
            Event::Frame(net, f) => {
                if let Some(n) = nets.get_mut(&net) {
                    n.push(f);
                }
            }
            Event::AddNet(net, gw) => {
                if nets.get(&net).is_none_or(|n| n.gw != gw) {
                    nets.insert(net, NetStack::new(gw, now()));
                }
            }
            Event::RemoveNet(net) => {
                nets.remove(&net);
            }
            Event::Answer { net, to, bytes } => {
                if let Some(n) = nets.get_mut(&net) {
                    n.answer(to, &bytes);
                }
            }
        };
        if let Some(ev) = first {
            handle(ev, &mut nets);
        }
        while let Ok(ev) = rx.try_recv() {
            handle(ev, &mut nets);
        }
        let ts = now();
        for (net, n) in nets.iter_mut() {
            n.poll(ts, *net, &svc);
            if !n.dev.tx.is_empty() {
                let frames = std::mem::take(&mut n.dev.tx);
                let _ = dp.inject(*net, frames);
            }
        }
    }
}
