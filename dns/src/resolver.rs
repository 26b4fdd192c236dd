//! One DNS query in, one decision out: a local answer, "forward it", or
//! drop. The wire format is hickory-proto's; nothing here parses by hand
//! except the 12-byte header of a message hickory refused (to say FORMERR
//! to the right ID).

use crate::cache::{Cache, DEFAULT_CAPACITY};
use crate::registry::{Found, NetId, Registry};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

/// TTL of local answers. Short, because names change the moment a
/// container exits, is renamed or disconnected (Docker uses 600 s).
pub const LOCAL_TTL: u32 = 10;
/// The largest UDP answer we send when the query has no EDNS.
pub const CLASSIC_UDP: usize = 512;
/// The EDNS payload size we advertise and honour at most.
pub const OUR_EDNS_PAYLOAD: u16 = 1232;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not ours: send the query, unchanged, to the upstream servers.
    Forward,
    /// Not worth an answer (too short to carry an ID, or a response).
    Drop,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub queries: AtomicU64,
    pub local: AtomicU64,
    pub nodata: AtomicU64,
    pub forwarded: AtomicU64,
    pub servfail: AtomicU64,
    pub formerr: AtomicU64,
    pub notimp: AtomicU64,
    pub truncated: AtomicU64,
    pub dropped: AtomicU64,
    /// Queries answered SERVFAIL at once: their container already had its
    /// share of queries waiting for an upstream server.
    pub throttled: AtomicU64,
    /// Forwarded queries answered from the cache (counted in `forwarded`
    /// too).
    pub cached: AtomicU64,
    /// How long answers took, from the query reaching the service to the
    /// answer leaving it (the service records them).
    pub latency: Latency,
}

/// Upper bounds (seconds) of the latency histogram's buckets: local
/// answers take microseconds, forwarded ones an upstream round trip.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// A latency histogram of atomic counters: recording is lock-free.
#[derive(Debug, Default)]
pub struct Latency {
    /// Per bucket (not cumulative); the last one is above every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

/// A copy of [`Latency`]: (upper bound, count) per bucket, not
/// cumulative, the last bound infinite; the sum in seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Latency {
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        LatencySnapshot {
            count: buckets.iter().map(|b| b.1).sum(),
            buckets,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub queries: u64,
    pub local: u64,
    pub nodata: u64,
    pub forwarded: u64,
    pub servfail: u64,
    pub formerr: u64,
    pub notimp: u64,
    pub truncated: u64,
    pub dropped: u64,
    #[serde(default)]
    pub throttled: u64,
    #[serde(default)]
    pub cached: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            queries: g(&self.queries),
            local: g(&self.local),
            nodata: g(&self.nodata),
            forwarded: g(&self.forwarded),
            servfail: g(&self.servfail),
            formerr: g(&self.formerr),
            notimp: g(&self.notimp),
            truncated: g(&self.truncated),
            dropped: g(&self.dropped),
            throttled: g(&self.throttled),
            cached: g(&self.cached),
        }
    }
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

pub struct Resolver {
    pub registry: RwLock<Registry>,
    pub stats: Stats,
    /// Forwarded answers (see [`crate::cache`]); the forwarding side asks
    /// it before going upstream and fills it afterwards.
    pub cache: Mutex<Cache>,
    rotate: AtomicUsize,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

impl Resolver {
    pub fn new() -> Resolver {
        Resolver::with_cache(DEFAULT_CAPACITY)
    }

    /// A resolver whose cache keeps at most `entries` forwarded answers
    /// (0: no cache).
    pub fn with_cache(entries: usize) -> Resolver {
        Resolver {
            registry: RwLock::new(Registry::new()),
            stats: Stats::default(),
            cache: Mutex::new(Cache::new(entries)),
            rotate: AtomicUsize::new(0),
        }
    }

    /// Decides what to do with `query`, received on network `net` from
    /// `client` over `transport`.
    pub fn handle(&self, net: NetId, client: IpAddr, query: &[u8], t: Transport) -> Outcome {
        inc(&self.stats.queries);
        if query.len() < 12 || query[2] & 0x80 != 0 {
            // no room for an ID, or a response (QR set): never answer
            inc(&self.stats.dropped);
            return Outcome::Drop;
        }
        let msg = match Message::from_vec(query) {
            Ok(m) => m,
            Err(_) => {
                inc(&self.stats.formerr);
                return Outcome::Reply(header_error(query, ResponseCode::FormErr));
            }
        };
        if msg.metadata.op_code != OpCode::Query {
            inc(&self.stats.notimp);
            return Outcome::Reply(self.finish(&msg, error_reply(&msg, ResponseCode::NotImp), t));
        }
        if msg.queries.len() != 1 {
            inc(&self.stats.formerr);
            return Outcome::Reply(self.finish(&msg, error_reply(&msg, ResponseCode::FormErr), t));
        }
        let q = &msg.queries[0];
        if q.query_class() != DNSClass::IN {
            inc(&self.stats.forwarded);
            return Outcome::Forward;
        }
        let name = q.name().to_ascii();
        let name = name.strip_suffix('.').unwrap_or(&name);
        let reg = self.registry.read().unwrap_or_else(|e| e.into_inner());
        let mut answers = Vec::new();
        let found = if q.query_type() == RecordType::PTR {
            match ptr_addr(name).map(|ip| reg.reverse(net, client, ip)) {
                Some(Found::Local(target)) => {
                    if let Ok(n) = Name::from_ascii(format!("{target}.")) {
                        answers.push(Record::from_rdata(
                            q.name().clone(),
                            LOCAL_TTL,
                            RData::PTR(PTR(n)),
                        ));
                    }
                    true
                }
                _ => false,
            }
        } else {
            match reg.lookup(net, client, name) {
                Found::Local(ips) => {
                    let qt = q.query_type();
                    let want = |ip: &IpAddr| match ip {
                        IpAddr::V4(_) => matches!(qt, RecordType::A | RecordType::ANY),
                        IpAddr::V6(_) => matches!(qt, RecordType::AAAA | RecordType::ANY),
                    };
                    let mut ips: Vec<IpAddr> = ips.into_iter().filter(want).collect();
                    if !ips.is_empty() {
                        let k = self.rotate.fetch_add(1, Ordering::Relaxed) % ips.len();
                        ips.rotate_left(k);
                    }
                    answers.extend(ips.into_iter().map(|ip| {
                        let data = match ip {
                            IpAddr::V4(a) => RData::A(A(a)),
                            IpAddr::V6(a) => RData::AAAA(AAAA(a)),
                        };
                        Record::from_rdata(q.name().clone(), LOCAL_TTL, data)
                    }));
                    true
                }
                Found::NotLocal => false,
            }
        };
        drop(reg);
        if !found {
            inc(&self.stats.forwarded);
            return Outcome::Forward;
        }
        inc(&self.stats.local);
        if answers.is_empty() {
            inc(&self.stats.nodata); // the name exists, not this type
        }
        let mut r = Message::response(msg.metadata.id, OpCode::Query);
        r.metadata.recursion_desired = msg.metadata.recursion_desired;
        r.metadata.recursion_available = true;
        r.metadata.authoritative = true;
        r.add_query(q.clone());
        r.add_answers(answers);
        Outcome::Reply(self.finish(&msg, r, t))
    }

    /// SERVFAIL for a query we could not get answered upstream.
    pub fn servfail(&self, query: &[u8], t: Transport) -> Vec<u8> {
        inc(&self.stats.servfail);
        match Message::from_vec(query) {
            Ok(m) => self.finish(&m, error_reply(&m, ResponseCode::ServFail), t),
            Err(_) => header_error(query, ResponseCode::ServFail),
        }
    }

    /// EDNS in the answer when the query had it; truncation (TC) when the
    /// answer does not fit the client's UDP size.
    fn finish(&self, q: &Message, mut r: Message, t: Transport) -> Vec<u8> {
        let mut limit = CLASSIC_UDP;
        if let Some(e) = &q.edns {
            let mut ours = Edns::new();
            ours.set_max_payload(OUR_EDNS_PAYLOAD);
            r.set_edns(ours);
            limit = e.max_payload().clamp(512, OUR_EDNS_PAYLOAD) as usize;
        }
        let bytes = match r.to_vec() {
            Ok(b) => b,
            Err(_) => return header_error_from(&r, ResponseCode::ServFail),
        };
        if t == Transport::Udp && bytes.len() > limit {
            inc(&self.stats.truncated);
            let tr = r.truncate();
            return tr
                .to_vec()
                .unwrap_or_else(|_| header_error_from(&r, ResponseCode::ServFail));
        }
        bytes
    }
}

fn error_reply(q: &Message, code: ResponseCode) -> Message {
    let mut r = Message::error_msg(q.metadata.id, q.metadata.op_code, code);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    if code != ResponseCode::FormErr && code != ResponseCode::NotImp {
        r.add_queries(q.queries.iter().cloned());
    }
    r
}

/// A bare header answering a message we could not (or would not) parse:
/// same ID and opcode, QR set, RD copied, no sections. Total: what a
/// message too short to carry them lacks is zero.
pub fn header_error(query: &[u8], code: ResponseCode) -> Vec<u8> {
    let mut h = [0u8; 12];
    let n = query.len().min(3);
    h[..n].copy_from_slice(&query[..n]);
    h[2] = 0x80 | (h[2] & 0x79); // QR, opcode, RD
    h[3] = 0x80 | (u16::from(code) as u8 & 0x0f); // RA, rcode
    h.to_vec()
}

fn header_error_from(r: &Message, code: ResponseCode) -> Vec<u8> {
    let mut h = [0u8; 12];
    h[..2].copy_from_slice(&r.metadata.id.to_be_bytes());
    h[2] = 0x80;
    h[3] = 0x80 | (u16::from(code) as u8 & 0x0f);
    h.to_vec()
}

/// `4.3.2.1.in-addr.arpa` -> 1.2.3.4; `b.a.9.8. ... .ip6.arpa` (32
/// nibbles, lowest first) -> the IPv6 address.
fn ptr_addr(name: &str) -> Option<IpAddr> {
    let lower = name.to_ascii_lowercase();
    if let Some(rev) = lower.strip_suffix(".ip6.arpa") {
        let mut v: u128 = 0;
        let mut n = 0;
        for (i, x) in rev.split('.').enumerate() {
            // one hex digit per label
            let d = match x.as_bytes() {
                [c] => (*c as char).to_digit(16)?,
                _ => return None,
            };
            if i >= 32 {
                return None;
            }
            v |= (d as u128) << (4 * i);
            n += 1;
        }
        return (n == 32).then(|| IpAddr::V6(Ipv6Addr::from(v)));
    }
    let rev = lower.strip_suffix(".in-addr.arpa")?;
    let p: Vec<u8> = rev
        .split('.')
        .map(|x| x.parse::<u8>().ok())
        .collect::<Option<Vec<u8>>>()?;
    (p.len() == 4).then(|| IpAddr::V4(Ipv4Addr::new(p[3], p[2], p[1], p[0])))
}

/// A query message for `name`/`qtype` (tests and tools).
pub fn make_query(id: u16, name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    if let Some(p) = edns {
        let mut e = Edns::new();
        e.set_max_payload(p);
        m.set_edns(e);
    }
    m.to_vec().expect("encode")
}

#[cfg(test)]
mod tests {
    #[test]
    fn latency_buckets() {
        let l = Latency::default();
        l.observe(std::time::Duration::from_micros(30));
        l.observe(std::time::Duration::from_micros(700));
        l.observe(std::time::Duration::from_secs(3));
        let s = l.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets.len(), LATENCY_BOUNDS.len() + 1);
        assert_eq!(s.buckets[0], (0.000_05, 1));
        assert_eq!(s.buckets[4], (0.001, 1));
        assert_eq!(s.buckets.last().map(|b| b.1), Some(1));
        assert!((s.sum_seconds - 3.00073).abs() < 1e-9);
    }

    use super::*;
    use crate::registry::Endpoint;

    fn resolver() -> Resolver {
        let r = Resolver::new();
        {
            let mut reg = r.registry.write().unwrap();
            reg.set_network(1, "n", true, vec![]);
            for i in 0..40u8 {
                reg.add_endpoint(
                    1,
                    Endpoint {
                        container: format!("c{i}"),
                        aliases: vec!["svc".into()],
                        ip: Ipv4Addr::new(10, 0, 0, 2 + i),
                        ip6: (i == 3).then(|| "fd00::5".parse().unwrap()),
                        dns: vec![],
                    },
                );
            }
        }
        r
    }

    const ME: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn reply(o: Outcome) -> Message {
        match o {
            Outcome::Reply(b) => Message::from_vec(&b).unwrap(),
            o => panic!("expected a reply, got {o:?}"),
        }
    }

    #[test]
    fn a_nodata_ptr_forward() {
        let r = resolver();
        let m = reply(r.handle(
            1,
            ME,
            &make_query(7, "C3.", RecordType::A, None),
            Transport::Udp,
        ));
        assert_eq!(m.metadata.id, 7);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].ttl, LOCAL_TTL);
        assert_eq!(m.queries[0].name().to_ascii(), "C3."); // case kept
        let m = reply(r.handle(
            1,
            ME,
            &make_query(8, "c4", RecordType::AAAA, None),
            Transport::Udp,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty(), "NODATA");
        // c3 is dual-stack: AAAA, and its ip6.arpa name, asked over IPv6
        let m = reply(r.handle(
            1,
            "fd00::5".parse().unwrap(),
            &make_query(8, "c3", RecordType::AAAA, None),
            Transport::Udp,
        ));
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].data.to_string(), "fd00::5");
        let ptr6 = "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
        let m = reply(r.handle(
            1,
            ME,
            &make_query(8, ptr6, RecordType::PTR, None),
            Transport::Udp,
        ));
        assert_eq!(m.answers.len(), 1);
        assert!(m.answers[0].data.to_string().starts_with("c3.n"));
        // malformed ip6.arpa names are not ours: forwarded
        for bad in [
            "5.0.ip6.arpa.",
            "50.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
        ] {
            assert_eq!(
                r.handle(
                    1,
                    ME,
                    &make_query(8, bad, RecordType::PTR, None),
                    Transport::Udp
                ),
                Outcome::Forward
            );
        }
        let m = reply(r.handle(
            1,
            ME,
            &make_query(9, "5.0.0.10.in-addr.arpa.", RecordType::PTR, None),
            Transport::Udp,
        ));
        assert_eq!(m.answers.len(), 1);
        assert!(m.answers[0].data.to_string().starts_with("c3.n"));
        assert_eq!(
            r.handle(
                1,
                ME,
                &make_query(10, "example.org.", RecordType::A, None),
                Transport::Udp
            ),
            Outcome::Forward
        );
    }

    #[test]
    fn aliases_rotate_and_truncate() {
        let r = resolver();
        // 40 A records do not fit 512 bytes: TC over UDP, whole over TCP
        let q = make_query(1, "svc.", RecordType::A, None);
        let m = reply(r.handle(1, ME, &q, Transport::Udp));
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        let m = reply(r.handle(1, ME, &q, Transport::Tcp));
        assert_eq!(m.answers.len(), 40);
        let first = m.answers[0].data.clone();
        let m2 = reply(r.handle(1, ME, &q, Transport::Tcp));
        assert_ne!(m2.answers[0].data, first, "order rotates");
        // EDNS with room for it: whole answer over UDP, OPT in the answer
        let q = make_query(2, "svc.", RecordType::A, Some(4096));
        let m = reply(r.handle(1, ME, &q, Transport::Udp));
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 40);
        assert!(m.edns.is_some());
    }

    #[test]
    fn hostile_input() {
        let r = resolver();
        assert_eq!(r.handle(1, ME, &[1, 2, 3], Transport::Udp), Outcome::Drop);
        // a response (QR set) is never answered
        let mut q = make_query(3, "c1.", RecordType::A, None);
        q[2] |= 0x80;
        assert_eq!(r.handle(1, ME, &q, Transport::Udp), Outcome::Drop);
        // truncated question
        let q = make_query(4, "c1.", RecordType::A, None);
        let m = reply(r.handle(1, ME, &q[..q.len() - 3], Transport::Udp));
        assert_eq!(m.metadata.id, 4);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // compression pointer loop: the name points at itself
        let mut q = vec![0, 5, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        let m = reply(r.handle(1, ME, &q, Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // huge counts with no data behind them
        let q = vec![0, 6, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let m = reply(r.handle(1, ME, &q, Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // two questions
        let mut m2 = Message::from_vec(&make_query(7, "c1.", RecordType::A, None)).unwrap();
        m2.add_query(Query::query(
            Name::from_ascii("c2.").unwrap(),
            RecordType::A,
        ));
        let m = reply(r.handle(1, ME, &m2.to_vec().unwrap(), Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // not a query opcode
        let mut q = make_query(8, "c1.", RecordType::A, None);
        q[2] |= 2 << 3; // STATUS
        let m = reply(r.handle(1, ME, &q, Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        let s = r.stats.snapshot();
        assert_eq!(s.dropped, 2);
        assert_eq!(s.formerr, 4);
        assert_eq!(s.notimp, 1);
        // random garbage never panics
        let mut x: u32 = 1;
        for len in 0..600usize {
            let mut b = vec![0u8; len];
            for v in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *v = x as u8;
            }
            if len > 2 {
                b[2] &= 0x7f;
            }
            let _ = r.handle(1, ME, &b, Transport::Udp);
        }
    }

    #[test]
    fn servfail_keeps_id_and_question() {
        let r = resolver();
        let q = make_query(77, "example.org.", RecordType::A, Some(1232));
        let m = Message::from_vec(&r.servfail(&q, Transport::Udp)).unwrap();
        assert_eq!(m.metadata.id, 77);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(m.queries.len(), 1);
        assert!(m.edns.is_some());
    }
}
