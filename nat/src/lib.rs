//! tapnet's masquerade (source NAT) for IPv4 TCP, UDP and ICMP echo, and
//! for IPv6 TCP, UDP and ICMPv6 echo (NAT66, as Docker's ip6tables
//! masquerade) when an external IPv6 address is configured.
//!
//! Frames are rewritten in place, in the datapath's receive buffers: a
//! 10-byte `virtio_net_hdr`, then Ethernet, then IPv4 or IPv6. One table
//! holds both families (a connection's addresses are of one family; the
//! port ranges are shared). Outbound, the source
//! address becomes the external address and the source port (ICMP echo
//! identifier) one allocated from a range; inbound, answers are mapped back,
//! ICMP errors included (their embedded header too). Checksums are fixed
//! incrementally, and correctly for offloaded frames whose L4 checksum is
//! partial (pseudo-header only, `NEEDS_CSUM`), GSO super-frames included.
//!
//! One `Nat` is owned by the datapath thread: no locks.

/// The Internet checksum, from the shared wire layer.
pub use wire::csum;

pub mod rst;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const VNET: usize = 10;
const ETH: usize = 14;
const IP: usize = VNET + ETH;
const F_NEEDS_CSUM: u8 = 1;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
/// IPv6: where the header starts, its length, the fragment header (next
/// header, reserved, offset and M flag, identification).
const IP6_LEN: usize = 40;
const NH_FRAGMENT: u8 = wire::frag6::PROTO;
const FRAG6: usize = IP + IP6_LEN;
const FRAG6_LEN: usize = wire::frag6::LEN;
const FRAG6_OFFSET: usize = FRAG6 + wire::frag6::OFFSET_FLAGS;
const FRAG6_ID: usize = FRAG6 + wire::frag6::IDENT;
/// Fragmented datagrams followed at once (see `Nat::note_frag`).
pub const MAX_FRAGS: usize = 16384;

#[derive(Debug, Clone)]
pub struct NatConfig {
    /// The address outbound traffic is masqueraded to.
    pub external: Ipv4Addr,
    /// The IPv6 one (NAT66); None: IPv6 is not translated (Unsupported).
    pub external6: Option<Ipv6Addr>,
    /// Source ports (TCP, UDP) and ICMP identifiers handed out.
    pub ports: (u16, u16),
    pub max_conns: usize,
    /// The most outbound connections one container (network, address) may
    /// hold at once (0: no limit): one container cannot take every port.
    pub per_container: u32,
    pub timeouts: Timeouts,
}

/// Idle timeouts, milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Timeouts {
    pub tcp_syn: u64,
    pub tcp_established: u64,
    pub tcp_closing: u64,
    pub tcp_rst: u64,
    /// UDP seen in one direction only.
    pub udp: u64,
    /// UDP with traffic both ways (a "stream").
    pub udp_stream: u64,
    pub icmp: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: 120_000,
            tcp_established: 7_440_000, // RFC 5382: at least 2 h 4 min
            tcp_closing: 120_000,
            tcp_rst: 10_000,
            udp: 30_000,
            udp_stream: 120_000,
            icmp: 30_000,
        }
    }
}

impl NatConfig {
    pub fn new(external: Ipv4Addr) -> NatConfig {
        NatConfig {
            external6: None,
            external,
            ports: (32768, 60999),
            max_conns: 1 << 18,
            per_container: 1024,
            timeouts: Timeouts::default(),
        }
    }
}

/// Why a frame was not translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatDrop {
    /// Not IPv4 or IPv6 TCP/UDP/ICMP-echo we can translate (an IPv6 header
    /// chain with extension headers, say), or truncated.
    Unsupported,
    /// A fragment (we translate whole datagrams only).
    Fragment,
    /// Every port of the range is in use for this protocol.
    PortsExhausted,
    /// The connection table is full.
    TableFull,
    /// The container already holds its share of connections.
    Quota,
    /// Inbound with no connection it belongs to.
    NoConnection,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NatStats {
    pub translated_out: u64,
    pub translated_in: u64,
    pub icmp_errors_in: u64,
    pub created: u64,
    pub expired: u64,
    pub unsupported: u64,
    pub fragments: u64,
    pub ports_exhausted: u64,
    pub table_full: u64,
    pub no_connection: u64,
    /// New connections refused: the container held its share.
    #[serde(default)]
    pub quota_exceeded: u64,
    /// Connections dropped because their container went away.
    #[serde(default)]
    pub forgotten: u64,
    /// Connections put back after a restart ([`Nat::restore`]).
    #[serde(default)]
    pub restored: u64,
    /// Changes of a connection's state (TCP state, first answer): with
    /// created/expired, tells a checkpoint whether the table changed.
    #[serde(default)]
    pub state_changes: u64,
    /// TCP resets sent for segments no connection owned ([`rst`]).
    #[serde(default)]
    pub resets_sent: u64,
}

impl NatStats {
    fn count(&mut self, d: NatDrop) {
        match d {
            NatDrop::Unsupported => self.unsupported += 1,
            NatDrop::Fragment => self.fragments += 1,
            NatDrop::PortsExhausted => self.ports_exhausted += 1,
            NatDrop::TableFull => self.table_full += 1,
            NatDrop::Quota => self.quota_exceeded += 1,
            NatDrop::NoConnection => self.no_connection += 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpState {
    SynSent,
    Established,
    Closing,
    Closed,
}

/// Where an inbound frame goes: the inside network and host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inside {
    pub net: u16,
    pub mac: [u8; 6],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct OutKey {
    proto: u8,
    net: u16,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
}

/// (outbound?, protocol, source, destination, IP identification): IPv4's
/// is 16 bits, IPv6's (in the fragment header) 32.
type FragKey = (bool, u8, IpAddr, IpAddr, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct InKey {
    proto: u8,
    remote: IpAddr,
    rport: u16,
    nport: u16,
}

/// A published port on the external addresses (destination NAT): a
/// client reaches the container at its address of the client's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub net: u16,
    /// Where IPv4 clients go (None: not published to them).
    pub ip: Option<Ipv4Addr>,
    /// Where IPv6 clients go, by NAT66 (None: not published to them).
    pub ip6: Option<Ipv6Addr>,
    pub port: u16,
    pub mac: [u8; 6],
}

impl Forward {
    /// The container's address a client at `client` reaches, if any.
    pub fn inside_for(&self, client: IpAddr) -> Option<IpAddr> {
        match client {
            IpAddr::V4(_) => self.ip.map(IpAddr::V4),
            IpAddr::V6(_) => self.ip6.map(IpAddr::V6),
        }
    }
}

#[derive(Debug, Clone)]
struct Conn {
    out: OutKey,
    nport: u16,
    mac: [u8; 6],
    /// Created by an inbound connection to a published port.
    forwarded: bool,
    last: u64,
    tcp: TcpState,
    fin_out: bool,
    fin_in: bool,
    replied: bool,
}

/// The connection table counted (see [`Nat::summary`]): what a metrics
/// scrape needs, without copying the table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NatSummary {
    /// (IP protocol, state) -> connections. TCP states: syn_sent,
    /// established, closing, closed; other protocols: replied, unreplied.
    pub conns: Vec<((u8, &'static str), u64)>,
    /// IP protocol -> distinct external ports in use.
    pub ports_in_use: Vec<(u8, u64)>,
}

/// A connection as plain data (see [`Nat::entries_raw`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConnRaw {
    pub proto: u8,
    pub net: u16,
    pub src: IpAddr,
    pub sport: u16,
    pub nport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub tcp: TcpState,
    pub replied: bool,
    pub idle_ms: u64,
    pub expires_in_ms: u64,
    /// The inside host's MAC.
    #[serde(default)]
    pub mac: [u8; 6],
    /// Created by a client of a published port.
    #[serde(default)]
    pub forwarded: bool,
    /// TCP: a FIN went out / came in.
    #[serde(default)]
    pub fin_out: bool,
    #[serde(default)]
    pub fin_in: bool,
}

impl ConnRaw {
    /// As `tapnet nat ls` shows it; `ext` and `ext6` are the uplink's
    /// addresses.
    pub fn info(&self, ext: Ipv4Addr, ext6: Option<Ipv6Addr>) -> ConnInfo {
        let proto = match self.proto {
            PROTO_TCP => "tcp",
            PROTO_UDP => "udp",
            PROTO_ICMPV6 => "icmpv6",
            _ => "icmp",
        };
        let ext: IpAddr = match (self.src, ext6) {
            (IpAddr::V6(_), Some(e6)) => e6.into(),
            _ => ext.into(),
        };
        let sa = |a: IpAddr, p: u16| std::net::SocketAddr::new(a, p).to_string();
        let state = match self.proto {
            PROTO_TCP => format!("{:?}", self.tcp).to_lowercase(),
            _ if self.replied => "replied".into(),
            _ => "unreplied".into(),
        };
        ConnInfo {
            proto: proto.into(),
            net: self.net,
            inside: sa(self.src, self.sport),
            outside: sa(ext, self.nport),
            remote: sa(self.dst, self.dport),
            state,
            idle_ms: self.idle_ms,
            expires_in_ms: self.expires_in_ms,
        }
    }
}

/// A connection as `tapnet nat ls` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnInfo {
    pub proto: String,
    pub net: u16,
    pub inside: String,
    pub outside: String,
    pub remote: String,
    pub state: String,
    pub idle_ms: u64,
    pub expires_in_ms: u64,
}

pub struct Nat {
    cfg: NatConfig,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    by_out: FxHashMap<OutKey, u32>,
    by_in: FxHashMap<InKey, u32>,
    /// Ports in use, per protocol index (0 TCP, 1 UDP, 2 ICMP).
    used: [FxHashMap<u16, u32>; 3],
    cursor: [u16; 3],
    /// (proto, external port) -> where it is published.
    forwards: FxHashMap<(u8, u16), Forward>,
    /// Fragmented datagrams: (outbound?, proto, source, destination, IP ID)
    /// of a first fragment -> its connection and when it was seen; the
    /// later fragments (no ports) follow it.
    frags: FxHashMap<FragKey, (u32, u64)>,
    /// When `frags` was last swept (ms).
    frags_swept: u64,
    /// Outbound connections per container (network, inside address).
    per_src: FxHashMap<(u16, IpAddr), u32>,
    pub stats: NatStats,
}

fn pidx(proto: u8) -> usize {
    match proto {
        PROTO_TCP => 0,
        PROTO_UDP => 1,
        _ => 2,
    }
}

fn rd16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn wr16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_be_bytes());
}

fn ip4(b: &[u8], o: usize) -> [u8; 4] {
    [b[o], b[o + 1], b[o + 2], b[o + 3]]
}

fn ip6(b: &[u8], o: usize) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[o..o + 16]);
    Ipv6Addr::from(a)
}

/// Offsets of the source and destination address in the IP header.
fn addr_offsets(v6: bool) -> (usize, usize) {
    if v6 {
        (IP + 8, IP + 24)
    } else {
        (IP + 12, IP + 16)
    }
}

fn read_addr(b: &[u8], o: usize, v6: bool) -> IpAddr {
    if v6 {
        ip6(b, o).into()
    } else {
        Ipv4Addr::from(ip4(b, o)).into()
    }
}

/// The parts of an IPv4 or IPv6 packet NAT needs.
struct Parsed {
    /// IPv6 (else IPv4).
    v6: bool,
    /// A first fragment (more follow).
    first_frag: bool,
    /// Its identification (IPv4 header, or IPv6 fragment header).
    frag_id: u32,
    proto: u8,
    /// Offset of the L4 header in the buffer.
    l4: usize,
    /// Bytes of L4 present.
    l4_len: usize,
    src: IpAddr,
    dst: IpAddr,
}

impl Parsed {
    fn echo_request(&self) -> u8 {
        if self.v6 {
            wire::icmpv6::ECHO_REQUEST
        } else {
            8
        }
    }
    fn echo_reply(&self) -> u8 {
        if self.v6 {
            wire::icmpv6::ECHO_REPLY
        } else {
            0
        }
    }
    /// The ICMP protocol of the packet's family.
    fn icmp(&self) -> u8 {
        if self.v6 {
            PROTO_ICMPV6
        } else {
            PROTO_ICMP
        }
    }
}

/// An IPv6 packet: its header followed by TCP, UDP or ICMPv6, directly
/// or after a fragment header at offset 0 (a first fragment, or an atomic
/// one); a later fragment (no ports) is [`NatDrop::Fragment`] (see
/// [`Nat::fragment`]). Other extension headers are not translated.
fn parse6(b: &[u8]) -> Result<Parsed, NatDrop> {
    if b.len() < IP + IP6_LEN || b[IP] >> 4 != 6 {
        return Err(NatDrop::Unsupported);
    }
    let (mut next, mut l4, mut first_frag, mut frag_id) = (b[IP + 6], IP + IP6_LEN, false, 0);
    if next == NH_FRAGMENT {
        if b.len() < FRAG6 + FRAG6_LEN {
            return Err(NatDrop::Unsupported);
        }
        let off = rd16(b, FRAG6_OFFSET);
        if off & 0xfff8 != 0 {
            return Err(NatDrop::Fragment);
        }
        next = b[FRAG6];
        l4 = FRAG6 + FRAG6_LEN;
        first_frag = off & 1 != 0;
        frag_id = rd32(b, FRAG6_ID);
    }
    // (the payload length counts from the end of the fixed header; GSO
    // super-frames may be longer than their per-segment length)
    let end = if b[1] != 0 {
        b.len()
    } else {
        (IP + IP6_LEN + rd16(b, IP + 4) as usize).min(b.len())
    };
    Ok(Parsed {
        v6: true,
        first_frag,
        frag_id,
        proto: next,
        l4,
        l4_len: end.saturating_sub(l4),
        src: ip6(b, IP + 8).into(),
        dst: ip6(b, IP + 24).into(),
    })
}

fn parse(b: &[u8]) -> Result<Parsed, NatDrop> {
    if b.len() >= IP
        && b[VNET + wire::eth::ETHERTYPE..VNET + wire::eth::ETHERTYPE + 2]
            == wire::eth::ETHERTYPE_IPV6
    {
        return parse6(b);
    }
    if b.len() < IP + 20
        || b[VNET + wire::eth::ETHERTYPE..VNET + wire::eth::ETHERTYPE + 2]
            != wire::eth::ETHERTYPE_IPV4
        || b[IP] >> 4 != 4
    {
        return Err(NatDrop::Unsupported);
    }
    let ihl = (b[IP] & 0xf) as usize * 4;
    let total = rd16(b, IP + 2) as usize;
    if ihl < 20 || total < ihl || b.len() < IP + ihl {
        return Err(NatDrop::Unsupported);
    }
    let frag = rd16(b, IP + 6);
    if frag & 0x1fff != 0 {
        // a later fragment: no L4 header (see Nat::fragment)
        return Err(NatDrop::Fragment);
    }
    // GSO super-frames may be longer than their (per-segment) total length
    let end = if b[1] != 0 {
        b.len()
    } else {
        (IP + total).min(b.len())
    };
    Ok(Parsed {
        v6: false,
        first_frag: frag & 0x2000 != 0,
        frag_id: rd16(b, IP + 4) as u32,
        proto: b[IP + 9],
        l4: IP + ihl,
        l4_len: end.saturating_sub(IP + ihl),
        src: Ipv4Addr::from(ip4(b, IP + 12)).into(),
        dst: Ipv4Addr::from(ip4(b, IP + 16)).into(),
    })
}

impl Nat {
    pub fn new(cfg: NatConfig) -> Nat {
        let lo = cfg.ports.0;
        Nat {
            cfg,
            conns: Vec::new(),
            free: Vec::new(),
            by_out: FxHashMap::default(),
            by_in: FxHashMap::default(),
            used: Default::default(),
            cursor: [lo; 3],
            forwards: FxHashMap::default(),
            frags: FxHashMap::default(),
            frags_swept: 0,
            per_src: FxHashMap::default(),
            stats: NatStats::default(),
        }
    }

    /// Publishes `proto`/`port` of the external address to `to`; the port
    /// is never handed out for masquerading while published.
    pub fn add_forward(&mut self, proto: u8, port: u16, to: Forward) {
        self.forwards.insert((proto, port), to);
        self.used[pidx(proto)].insert(port, u32::MAX);
    }

    pub fn remove_forward(&mut self, proto: u8, port: u16) {
        if self.forwards.remove(&(proto, port)).is_some() {
            let i = pidx(proto);
            if self.used[i].get(&port) == Some(&u32::MAX) {
                self.used[i].remove(&port);
            }
        }
    }

    pub fn forwards(&self) -> impl Iterator<Item = (u8, u16, Forward)> + '_ {
        self.forwards.iter().map(|((p, port), f)| (*p, *port, *f))
    }

    pub fn external(&self) -> Ipv4Addr {
        self.cfg.external
    }

    pub fn external6(&self) -> Option<Ipv6Addr> {
        self.cfg.external6
    }

    /// The external address of the packet's family, if there is one.
    fn ext_for(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.cfg.external6.map(IpAddr::V6)
        } else {
            Some(self.cfg.external.into())
        }
    }

    pub fn len(&self) -> usize {
        self.by_out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_out.is_empty()
    }

    fn alloc_port(&mut self, proto: u8, want: u16) -> Option<u16> {
        let i = pidx(proto);
        let (lo, hi) = self.cfg.ports;
        // keep the inside port when it is free and in range (like Linux)
        if (lo..=hi).contains(&want) && !self.used[i].contains_key(&want) {
            return Some(want);
        }
        let n = hi as u32 - lo as u32 + 1;
        if self.used[i].len() as u32 >= n {
            return None;
        }
        let mut p = self.cursor[i];
        for _ in 0..n {
            p = if p >= hi || p < lo { lo } else { p + 1 };
            if !self.used[i].contains_key(&p) {
                self.cursor[i] = p;
                return Some(p);
            }
        }
        None
    }

    fn timeout(&self, c: &Conn) -> u64 {
        let t = &self.cfg.timeouts;
        match c.out.proto {
            PROTO_TCP => match c.tcp {
                TcpState::SynSent => t.tcp_syn,
                TcpState::Established => t.tcp_established,
                TcpState::Closing => t.tcp_closing,
                TcpState::Closed => t.tcp_rst,
            },
            PROTO_UDP if c.replied => t.udp_stream,
            PROTO_UDP => t.udp,
            _ => t.icmp,
        }
    }

    fn tcp_track(c: &mut Conn, flags: u8, outbound: bool) {
        use wire::tcp::{ACK_FLAG as ACK, FIN, RST, SYN};
        if flags & RST != 0 {
            c.tcp = TcpState::Closed;
            return;
        }
        if flags & FIN != 0 {
            if outbound {
                c.fin_out = true;
            } else {
                c.fin_in = true;
            }
        }
        c.tcp = if c.fin_out || c.fin_in {
            TcpState::Closing
        } else if !outbound && flags & (SYN | ACK) != 0 {
            TcpState::Established
        } else if outbound && flags & SYN != 0 && c.tcp == TcpState::Closed {
            TcpState::SynSent // a port re-used for a new connection
        } else {
            c.tcp
        };
    }

    /// Translates a frame from `net` (container `src_mac`) going out:
    /// source address and port become the external ones.
    pub fn outbound(
        &mut self,
        net: u16,
        src_mac: [u8; 6],
        b: &mut [u8],
        now: u64,
    ) -> Result<(), NatDrop> {
        let r = self.outbound_inner(net, src_mac, b, now);
        match r {
            Ok(()) => self.stats.translated_out += 1,
            Err(d) => self.stats.count(d),
        }
        r
    }

    fn outbound_inner(
        &mut self,
        net: u16,
        src_mac: [u8; 6],
        b: &mut [u8],
        now: u64,
    ) -> Result<(), NatDrop> {
        let p = match parse(b) {
            Err(NatDrop::Fragment) => return self.fragment(b, true, now).map(|_| ()),
            r => r?,
        };
        let Some(ext) = self.ext_for(p.v6) else {
            return Err(NatDrop::Unsupported);
        };
        let (sport, dport) = match p.proto {
            PROTO_TCP | PROTO_UDP if p.l4_len >= 8 => (rd16(b, p.l4), rd16(b, p.l4 + 2)),
            // echo request: the identifier plays the port
            x if x == p.icmp() && p.l4_len >= 8 && b[p.l4] == p.echo_request() => {
                (rd16(b, p.l4 + 4), 0)
            }
            _ => return Err(NatDrop::Unsupported),
        };
        if p.proto == PROTO_TCP && p.l4_len < 20 {
            return Err(NatDrop::Unsupported);
        }
        let key = OutKey {
            proto: p.proto,
            net,
            src: p.src,
            sport,
            dst: p.dst,
            dport,
        };
        let id = match self.by_out.get(&key) {
            Some(&id) => id,
            None => self.create(key, src_mac)?,
        };
        let c = self.conns[id as usize].as_mut().expect("indexed");
        c.last = now;
        if p.proto == PROTO_TCP {
            let before = (c.tcp, c.fin_out, c.fin_in);
            Self::tcp_track(c, b[p.l4 + wire::tcp::FLAGS], true);
            if before != (c.tcp, c.fin_out, c.fin_in) {
                self.stats.state_changes += 1;
            }
        }
        let c = self.conns[id as usize].as_ref().expect("indexed");
        let nport = c.nport;
        if p.first_frag {
            self.note_frag((true, p.proto, key.src, key.dst, p.frag_id), id, now);
        }
        rewrite(b, &p, ext, true, nport);
        Ok(())
    }

    fn create(&mut self, key: OutKey, mac: [u8; 6]) -> Result<u32, NatDrop> {
        if self.by_out.len() >= self.cfg.max_conns {
            return Err(NatDrop::TableFull);
        }
        let held = self.per_src.get(&(key.net, key.src)).copied().unwrap_or(0);
        if self.cfg.per_container != 0 && held >= self.cfg.per_container {
            return Err(NatDrop::Quota);
        }
        let nport = self
            .alloc_port(key.proto, key.sport)
            .ok_or(NatDrop::PortsExhausted)?;
        let id = self.insert(key, nport, mac, false);
        *self.per_src.entry((key.net, key.src)).or_default() += 1;
        self.used[pidx(key.proto)].insert(nport, id);
        Ok(id)
    }

    /// Adds a connection and indexes it both ways.
    fn insert(&mut self, out: OutKey, nport: u16, mac: [u8; 6], forwarded: bool) -> u32 {
        let c = Conn {
            out,
            nport,
            mac,
            forwarded,
            last: 0,
            tcp: TcpState::SynSent,
            fin_out: false,
            fin_in: false,
            replied: false,
        };
        let id = match self.free.pop() {
            Some(i) => {
                self.conns[i as usize] = Some(c);
                i
            }
            None => {
                self.conns.push(Some(c));
                (self.conns.len() - 1) as u32
            }
        };
        self.by_out.insert(out, id);
        let inkey = InKey {
            proto: out.proto,
            remote: out.dst,
            rport: out.dport,
            nport,
        };
        self.by_in.insert(inkey, id);
        self.stats.created += 1;
        id
    }

    /// Translates a frame arriving for the external address back to the
    /// inside host it belongs to. The caller sets the Ethernet addresses.
    pub fn inbound(&mut self, b: &mut [u8], now: u64) -> Result<Inside, NatDrop> {
        let r = self.inbound_inner(b, now);
        match r {
            Ok(_) => self.stats.translated_in += 1,
            Err(d) => self.stats.count(d),
        }
        r
    }

    fn inbound_inner(&mut self, b: &mut [u8], now: u64) -> Result<Inside, NatDrop> {
        let p = match parse(b) {
            Err(NatDrop::Fragment) => return self.fragment(b, false, now),
            r => r?,
        };
        if Some(p.dst) != self.ext_for(p.v6) {
            return Err(NatDrop::NoConnection);
        }
        let remote = p.src;
        let errors: &[u8] = if p.v6 { &[1, 2, 3, 4] } else { &[3, 11, 12] };
        let (rport, nport) = match p.proto {
            PROTO_TCP | PROTO_UDP if p.l4_len >= 8 => (rd16(b, p.l4), rd16(b, p.l4 + 2)),
            x if x == p.icmp() && p.l4_len >= 8 && b[p.l4] == p.echo_reply() => {
                (0, rd16(b, p.l4 + 4))
            }
            x if x == p.icmp() && p.l4_len >= 8 && errors.contains(&b[p.l4]) => {
                return self.icmp_error_in(b, &p, now);
            }
            _ => return Err(NatDrop::Unsupported),
        };
        if p.proto == PROTO_TCP && p.l4_len < 20 {
            return Err(NatDrop::Unsupported);
        }
        let key = InKey {
            proto: p.proto,
            remote,
            rport,
            nport,
        };
        let id = match self.by_in.get(&key) {
            Some(&id) => id,
            None => self.forwarded(&key, &p, b)?,
        };
        let c = self.conns[id as usize].as_mut().expect("indexed");
        c.last = now;
        let before = (c.tcp, c.fin_out, c.fin_in, c.replied);
        c.replied = true;
        if p.proto == PROTO_TCP {
            Self::tcp_track(c, b[p.l4 + wire::tcp::FLAGS], false);
        }
        let changed = before != (c.tcp, c.fin_out, c.fin_in, c.replied);
        let (inside, sport, net, mac) = (c.out.src, c.out.sport, c.out.net, c.mac);
        if changed {
            self.stats.state_changes += 1;
        }
        if p.first_frag {
            self.note_frag((false, p.proto, remote, p.dst, p.frag_id), id, now);
        }
        rewrite(b, &p, inside, false, sport);
        Ok(Inside { net, mac })
    }

    /// A new inbound connection to a published port: a connection whose
    /// inside end is the published container, the client's address kept.
    fn forwarded(&mut self, key: &InKey, p: &Parsed, b: &[u8]) -> Result<u32, NatDrop> {
        let f = *self
            .forwards
            .get(&(key.proto, key.nport))
            .ok_or(NatDrop::NoConnection)?;
        let inside = f.inside_for(key.remote).ok_or(NatDrop::NoConnection)?;
        // TCP: only a SYN opens one
        if key.proto == PROTO_TCP && !wire::tcp::is_syn_only(b[p.l4 + wire::tcp::FLAGS]) {
            return Err(NatDrop::NoConnection);
        }
        if self.by_out.len() >= self.cfg.max_conns {
            return Err(NatDrop::TableFull);
        }
        let out = OutKey {
            proto: key.proto,
            net: f.net,
            src: inside,
            sport: f.port,
            dst: key.remote,
            dport: key.rport,
        };
        Ok(self.insert(out, key.nport, f.mac, true))
    }

    /// An ICMP (ICMPv6) error about a packet we sent out: map the
    /// embedded header back, then the outer destination.
    fn icmp_error_in(&mut self, b: &mut [u8], p: &Parsed, now: u64) -> Result<Inside, NatDrop> {
        // an error is never sent in fragments (its checksum covers it all)
        if p.first_frag {
            return Err(NatDrop::Unsupported);
        }
        let e = p.l4 + 8; // embedded IP header
        let end = p.l4 + p.l4_len;
        let ext = self.ext_for(p.v6).ok_or(NatDrop::Unsupported)?;
        let (esrc, edst) = if p.v6 {
            (e + 8, e + 24)
        } else {
            (e + 12, e + 16)
        };
        let (el4, eproto) = if p.v6 {
            if end < e + IP6_LEN + 8 || b[e] >> 4 != 6 {
                return Err(NatDrop::Unsupported);
            }
            if b[e + 6] != NH_FRAGMENT {
                (e + IP6_LEN, b[e + 6])
            } else {
                // about a fragment we sent: the first carries the ports
                let fh = e + IP6_LEN;
                if rd16(b, fh + wire::frag6::OFFSET_FLAGS) & 0xfff8 != 0 {
                    return Err(NatDrop::Unsupported);
                }
                (fh + FRAG6_LEN, b[fh])
            }
        } else {
            if end < e + 20 || b[e] >> 4 != 4 {
                return Err(NatDrop::Unsupported);
            }
            let eihl = (b[e] & 0xf) as usize * 4;
            if eihl < 20 {
                return Err(NatDrop::Unsupported);
            }
            (e + eihl, b[e + 9])
        };
        if end < el4 + 8 || read_addr(b, esrc, p.v6) != ext {
            return Err(NatDrop::Unsupported);
        }
        let remote = read_addr(b, edst, p.v6);
        let (rport, nport) = match eproto {
            PROTO_TCP | PROTO_UDP => (rd16(b, el4 + 2), rd16(b, el4)),
            x if x == p.icmp() && b[el4] == p.echo_request() => (0, rd16(b, el4 + 4)),
            _ => return Err(NatDrop::Unsupported),
        };
        let key = InKey {
            proto: eproto,
            remote,
            rport,
            nport,
        };
        let &id = self.by_in.get(&key).ok_or(NatDrop::NoConnection)?;
        let c = self.conns[id as usize].as_mut().expect("indexed");
        c.last = now;
        let inside = c.out.src;
        let (sport, net, mac) = (c.out.sport, c.out.net, c.mac);
        // embedded: source address and port back to the inside ones
        match inside {
            IpAddr::V4(a) => {
                let old = ip4(b, esrc);
                b[esrc..esrc + 4].copy_from_slice(&a.octets());
                let ec = csum::update32(rd16(b, e + 10), old, a.octets());
                wr16(b, e + 10, ec);
            }
            IpAddr::V6(a) => b[esrc..esrc + 16].copy_from_slice(&a.octets()),
        }
        match eproto {
            PROTO_TCP | PROTO_UDP => wr16(b, el4, sport),
            _ => wr16(b, el4 + 4, sport),
        }
        // outer destination
        let (_, dsto) = addr_offsets(p.v6);
        match inside {
            IpAddr::V4(a) => {
                let old = ip4(b, dsto);
                b[dsto..dsto + 4].copy_from_slice(&a.octets());
                let hc = csum::update32(rd16(b, IP + 10), old, a.octets());
                wr16(b, IP + 10, hc);
            }
            IpAddr::V6(a) => b[dsto..dsto + 16].copy_from_slice(&a.octets()),
        }
        // the ICMP checksum covers the embedded packet (and for ICMPv6 the
        // pseudo-header): recompute (small)
        wr16(b, p.l4 + 2, 0);
        let ic = match (p.src, inside) {
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                wire::ipv6::upper_checksum(s, d, PROTO_ICMPV6, &b[p.l4..end])
            }
            _ => csum::checksum(&b[p.l4..end]),
        };
        wr16(b, p.l4 + 2, ic);
        self.stats.icmp_errors_in += 1;
        Ok(Inside { net, mac })
    }

    /// A later fragment (no ports): translated like the first fragment of
    /// its datagram, which must have passed first; only the address
    /// changes (and IPv4's header checksum; the L4 checksum is in the
    /// first). Inbound, only a fragment to the external address.
    fn fragment(&mut self, b: &mut [u8], outbound: bool, now: u64) -> Result<Inside, NatDrop> {
        let v6 = b.len() >= FRAG6 + FRAG6_LEN && b[IP] >> 4 == 6 && b[IP + 6] == NH_FRAGMENT;
        if !v6 && (b.len() < IP + 20 || b[IP] >> 4 != 4) {
            return Err(NatDrop::Fragment);
        }
        let (so, dso) = addr_offsets(v6);
        let (src, dst) = (read_addr(b, so, v6), read_addr(b, dso, v6));
        let ext = self.ext_for(v6).ok_or(NatDrop::Unsupported)?;
        if !outbound && dst != ext {
            return Err(NatDrop::NoConnection);
        }
        let key = if v6 {
            (outbound, b[FRAG6], src, dst, rd32(b, FRAG6_ID))
        } else {
            (outbound, b[IP + 9], src, dst, rd16(b, IP + 4) as u32)
        };
        let &(id, _) = self.frags.get(&key).ok_or(NatDrop::Fragment)?;
        let Some(c) = self.conns[id as usize].as_mut() else {
            return Err(NatDrop::Fragment);
        };
        c.last = now;
        let (ao, addr) = if outbound {
            (so, ext)
        } else {
            (dso, c.out.src)
        };
        match addr {
            IpAddr::V4(a) if !v6 => {
                let old = ip4(b, ao);
                b[ao..ao + 4].copy_from_slice(&a.octets());
                let hc = csum::update32(rd16(b, IP + 10), old, a.octets());
                wr16(b, IP + 10, hc);
            }
            // (IPv6 has no header checksum)
            IpAddr::V6(a) if v6 => b[ao..ao + 16].copy_from_slice(&a.octets()),
            _ => return Err(NatDrop::Fragment),
        }
        Ok(Inside {
            net: c.out.net,
            mac: c.mac,
        })
    }

    /// Drops idle connections; returns how many.
    pub fn expire(&mut self, now: u64) -> usize {
        let mut n = 0;
        for i in 0..self.conns.len() {
            let dead = match &self.conns[i] {
                Some(c) => now.saturating_sub(c.last) > self.timeout(c),
                None => false,
            };
            if dead {
                self.remove_conn(i);
                n += 1;
            }
        }
        self.stats.expired += n as u64;
        self.sweep_frags(now);
        n
    }

    /// Puts back a connection an earlier run had (as
    /// [`Self::entries_raw`] gave it; `idle_ms` counts the time since it
    /// was taken, and one whose idle time is past its timeout is not put
    /// back): after a restart its flows carry on in both directions.
    /// Refused (false) when it clashes with a connection or port this
    /// table has, its outside port is outside the configured range (not
    /// forwarded) or its forward now leads elsewhere, or the table is
    /// full. A forwarded one needs its forward added first.
    pub fn restore(&mut self, r: &ConnRaw, now: u64) -> bool {
        if !matches!(r.proto, PROTO_TCP | PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6)
            || r.src.is_ipv4() != r.dst.is_ipv4()
            || (r.src.is_ipv6() && self.cfg.external6.is_none())
            || self.by_out.len() >= self.cfg.max_conns
        {
            return false;
        }
        let out = OutKey {
            proto: r.proto,
            net: r.net,
            src: r.src,
            sport: r.sport,
            dst: r.dst,
            dport: r.dport,
        };
        let inkey = InKey {
            proto: r.proto,
            remote: r.dst,
            rport: r.dport,
            nport: r.nport,
        };
        let (lo, hi) = self.cfg.ports;
        let port_ok = if r.forwarded {
            self.forwards.get(&(r.proto, r.nport)).is_some_and(|f| {
                f.net == r.net && f.inside_for(r.dst) == Some(r.src) && f.port == r.sport
            })
        } else {
            (lo..=hi).contains(&r.nport) && !self.used[pidx(r.proto)].contains_key(&r.nport)
        };
        if !port_ok || self.by_out.contains_key(&out) || self.by_in.contains_key(&inkey) {
            return false;
        }
        let id = self.insert(out, r.nport, r.mac, r.forwarded);
        self.stats.created -= 1;
        self.stats.restored += 1;
        let c = self.conns[id as usize].as_mut().expect("just inserted");
        c.last = now.saturating_sub(r.idle_ms);
        c.tcp = r.tcp;
        c.replied = r.replied;
        c.fin_out = r.fin_out;
        c.fin_in = r.fin_in;
        if !r.forwarded {
            self.used[pidx(r.proto)].insert(r.nport, id);
            *self.per_src.entry((r.net, r.src)).or_default() += 1;
        }
        let c = self.conns[id as usize].as_ref().expect("just inserted");
        if now.saturating_sub(c.last) > self.timeout(c) {
            // idle past its timeout: as if it had expired while we were down
            self.remove_conn(id as usize);
            self.stats.restored -= 1;
            return false;
        }
        true
    }

    /// Drops every connection of inside address `src` on network `net`
    /// (the container is gone; a new one may get its address, and must not
    /// get its flows); returns how many. Published-port entries towards it
    /// go too (the forward itself is removed with the publish).
    pub fn forget(&mut self, net: u16, src: IpAddr, now: u64) -> usize {
        let mut n = 0;
        for i in 0..self.conns.len() {
            if self.conns[i]
                .as_ref()
                .is_some_and(|c| c.out.net == net && c.out.src == src)
            {
                self.remove_conn(i);
                n += 1;
            }
        }
        self.stats.forgotten += n as u64;
        self.sweep_frags(now);
        n
    }

    /// Removes connection `i` (which exists) from every index.
    fn remove_conn(&mut self, i: usize) {
        let c = self.conns[i].take().expect("a live connection");
        self.by_out.remove(&c.out);
        self.by_in.remove(&InKey {
            proto: c.out.proto,
            remote: c.out.dst,
            rport: c.out.dport,
            nport: c.nport,
        });
        let u = &mut self.used[pidx(c.out.proto)];
        if !c.forwarded && u.get(&c.nport) == Some(&(i as u32)) {
            u.remove(&c.nport);
        }
        if !c.forwarded {
            let k = (c.out.net, c.out.src);
            if let Some(h) = self.per_src.get_mut(&k) {
                *h -= 1;
                if *h == 0 {
                    self.per_src.remove(&k);
                }
            }
        }
        self.free.push(i as u32);
    }

    /// Remembers a first fragment's connection for the fragments after it.
    /// The table is bounded ([`MAX_FRAGS`]; when full it is swept of
    /// entries older than 30 s, at most once a second, so a flood costs
    /// neither memory nor a sweep per fragment): past that the datagram's
    /// later fragments are dropped (counted as fragments).
    fn note_frag(&mut self, key: FragKey, id: u32, now: u64) {
        if self.frags.len() >= MAX_FRAGS && !self.frags.contains_key(&key) {
            if now.saturating_sub(self.frags_swept) < 1000 {
                return;
            }
            self.sweep_frags(now);
            if self.frags.len() >= MAX_FRAGS {
                return;
            }
        }
        self.frags.insert(key, (id, now));
    }

    /// Fragment state of gone connections, or older than 30 s (a
    /// datagram's fragments arrive together).
    fn sweep_frags(&mut self, now: u64) {
        self.frags_swept = now;
        self.frags.retain(|_, (id, t)| {
            now.saturating_sub(*t) < 30_000 && self.conns[*id as usize].is_some()
        });
    }

    /// The connection table, for inspection.
    /// The connection table as plain data (no formatting, no allocation
    /// per entry beyond the vector): cheap enough for the datapath thread;
    /// [`ConnRaw::info`] formats it elsewhere.
    /// Counts the table by protocol and state, and the distinct external
    /// ports per protocol (a bitmap per protocol: no allocation per
    /// connection).
    pub fn summary(&self) -> NatSummary {
        let mut conns: std::collections::BTreeMap<(u8, &'static str), u64> = Default::default();
        let mut ports: std::collections::BTreeMap<u8, Vec<u64>> = Default::default();
        for c in self.conns.iter().flatten() {
            let state = if c.out.proto == 6 {
                match c.tcp {
                    TcpState::SynSent => "syn_sent",
                    TcpState::Established => "established",
                    TcpState::Closing => "closing",
                    TcpState::Closed => "closed",
                }
            } else if c.replied {
                "replied"
            } else {
                "unreplied"
            };
            *conns.entry((c.out.proto, state)).or_default() += 1;
            let bits = ports.entry(c.out.proto).or_insert_with(|| vec![0u64; 1024]);
            bits[c.nport as usize / 64] |= 1 << (c.nport % 64);
        }
        NatSummary {
            conns: conns.into_iter().collect(),
            ports_in_use: ports
                .into_iter()
                .map(|(p, b)| (p, b.iter().map(|w| w.count_ones() as u64).sum()))
                .collect(),
        }
    }

    pub fn entries_raw(&self, now: u64) -> Vec<ConnRaw> {
        self.conns
            .iter()
            .flatten()
            .map(|c| {
                let idle = now.saturating_sub(c.last);
                ConnRaw {
                    proto: c.out.proto,
                    net: c.out.net,
                    src: c.out.src,
                    sport: c.out.sport,
                    nport: c.nport,
                    dst: c.out.dst,
                    dport: c.out.dport,
                    tcp: c.tcp,
                    replied: c.replied,
                    idle_ms: idle,
                    expires_in_ms: self.timeout(c).saturating_sub(idle),
                    mac: c.mac,
                    forwarded: c.forwarded,
                    fin_out: c.fin_out,
                    fin_in: c.fin_in,
                }
            })
            .collect()
    }

    /// The connection table as `tapnet nat ls` shows it (the daemon
    /// formats [`Self::entries_raw`] off the datapath thread).
    #[cfg(test)]
    pub fn entries(&self, now: u64) -> Vec<ConnInfo> {
        let (ext, ext6) = (self.cfg.external, self.cfg.external6);
        self.entries_raw(now)
            .iter()
            .map(|r| r.info(ext, ext6))
            .collect()
    }
}

/// Rewrites the source (outbound) or destination (inbound) address and
/// port/identifier, fixing the IPv4 header checksum and the L4 checksum
/// (partial or full; the ICMPv6 one covers the addresses too).
fn rewrite(b: &mut [u8], p: &Parsed, addr: IpAddr, source: bool, port: u16) {
    let (so, dso) = addr_offsets(p.v6);
    let ao = if source { so } else { dso };
    // the old and new address as 16-bit words (what every checksum sums)
    let mut old_w = [0u16; 8];
    let mut new_w = [0u16; 8];
    let n = match addr {
        IpAddr::V4(a) if !p.v6 => {
            let old = ip4(b, ao);
            b[ao..ao + 4].copy_from_slice(&a.octets());
            let hc = csum::update32(rd16(b, IP + 10), old, a.octets());
            wr16(b, IP + 10, hc);
            for k in 0..2 {
                old_w[k] = u16::from_be_bytes([old[2 * k], old[2 * k + 1]]);
                new_w[k] = u16::from_be_bytes([a.octets()[2 * k], a.octets()[2 * k + 1]]);
            }
            2
        }
        IpAddr::V6(a) if p.v6 => {
            let old = ip6(b, ao);
            b[ao..ao + 16].copy_from_slice(&a.octets());
            old_w = old.segments();
            new_w = a.segments();
            8
        }
        _ => return, // never: a connection keeps its family
    };
    // (an ICMPv4 checksum is never left partial: it has no pseudo-header)
    let partial = b[0] & F_NEEDS_CSUM != 0 && p.proto != PROTO_ICMP;
    // (checksum offset, port/identifier offset, whether the pseudo-header
    // is in the checksum)
    let (co, po, pseudo) = match p.proto {
        PROTO_TCP => (p.l4 + 16, if source { p.l4 } else { p.l4 + 2 }, true),
        PROTO_UDP => (p.l4 + 6, if source { p.l4 } else { p.l4 + 2 }, true),
        PROTO_ICMP => (p.l4 + 2, p.l4 + 4, false),
        PROTO_ICMPV6 => (p.l4 + 2, p.l4 + 4, true),
        _ => return,
    };
    let old_port = rd16(b, po);
    wr16(b, po, port);
    let mut c = rd16(b, co);
    if p.proto == PROTO_UDP && c == 0 && !partial && !p.v6 {
        return; // IPv4 UDP without a checksum
    }
    if partial {
        // only the pseudo-header is summed yet: the port is not
        if pseudo {
            for k in 0..n {
                c = csum::partial_update16(c, old_w[k], new_w[k]);
            }
        }
    } else {
        if pseudo {
            for k in 0..n {
                c = csum::update16(c, old_w[k], new_w[k]);
            }
        }
        c = csum::update16(c, old_port, port);
        if p.proto == PROTO_UDP && c == 0 {
            c = 0xffff;
        }
    }
    wr16(b, co, c);
}

#[cfg(test)]
mod tests;
