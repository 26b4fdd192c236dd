//! A small cache of forwarded answers that respects their TTLs, so a name
//! a container asks for again and again (a service it polls, a package
//! mirror) costs one upstream round trip per TTL instead of one per query.
//!
//! What is kept: NOERROR answers with records (for the smallest TTL among
//! the answer records) and negative answers, NXDOMAIN or NOERROR without
//! records (for the SOA's negative TTL, RFC 2308: the smaller of the SOA
//! record's TTL and its MINIMUM field; without an SOA, not at all).
//! Never: truncated answers, SERVFAIL/REFUSED and other errors, answers
//! whose question is not the query's, TTL 0. TTLs are capped
//! ([`MAX_TTL`], [`MAX_NEGATIVE_TTL`]) so a stale upstream answer cannot
//! outlive a name's move for long.
//!
//! A hit is the stored answer with the query's ID, RD bit and question (as
//! the client spelled it: case randomisation keeps working) and every TTL
//! lowered by the seconds it spent here. The key holds what changes an
//! answer: the upstream servers (a network may have its own), name (case
//! folded), type, class, the transport, whether the query had EDNS, its
//! DO and CD bits. A UDP hit larger than the client's UDP size is a miss.
//!
//! Bounded: at most `capacity` entries of at most [`MAX_ANSWER`] bytes
//! each, kept as the upstream sent them (a container cannot make the cache
//! hold more than `capacity` x 1232 bytes of answers); a full cache first
//! forgets the oldest insertions. Expired entries go when they are next
//! asked for or pushed out. Answers to forwarded queries were checked
//! for our own random ID and the query's question before they get here
//! (`upstream`), and the caller scopes entries by network, so one
//! network's containers cannot see from a cached TTL what another's
//! asked.

use crate::resolver::{Transport, CLASSIC_UDP};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, Record};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Entries a cache holds by default.
pub const DEFAULT_CAPACITY: usize = 4096;
/// The longest a positive answer is kept, whatever its TTL says.
pub const MAX_TTL: u32 = 3600;
/// The longest a negative answer is kept.
pub const MAX_NEGATIVE_TTL: u32 = 300;
/// The largest answer kept (bytes; the EDNS payload we offer clients).
pub const MAX_ANSWER: usize = crate::resolver::OUR_EDNS_PAYLOAD as usize;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    scope: u64,
    name: String,
    qtype: u16,
    qclass: u16,
    tcp: bool,
    edns: bool,
    dnssec_ok: bool,
    checking_disabled: bool,
}

struct Entry {
    /// The answer as the upstream sent it.
    bytes: Vec<u8>,
    stored: Instant,
    expires: Instant,
    /// Its line in `Cache::order`.
    seq: u64,
}

/// See the module documentation.
pub struct Cache {
    map: HashMap<Key, Entry>,
    /// Insertion order: (key, sequence number); a key stored again has a
    /// newer number and its older line is skipped when evicting.
    order: VecDeque<(Key, u64)>,
    seq: u64,
    capacity: usize,
}

impl Cache {
    /// A cache of at most `capacity` answers (0: keeps nothing).
    pub fn new(capacity: usize) -> Cache {
        Cache {
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The answer to `query` (raw bytes, as the client sent them) asked of
    /// the upstream servers `scope` over `t`, if a fresh one is stored;
    /// `None`: ask upstream.
    pub fn get(&mut self, scope: u64, query: &[u8], t: Transport, now: Instant) -> Option<Vec<u8>> {
        if self.capacity == 0 {
            return None;
        }
        let q = Message::from_vec(query).ok()?;
        let key = key(scope, &q, t)?;
        let e = self.map.get(&key)?;
        if now >= e.expires {
            self.map.remove(&key);
            return None;
        }
        let aged = now.duration_since(e.stored).as_secs().min(u32::MAX as u64) as u32;
        let mut r = Message::from_vec(&e.bytes).ok()?;
        r.metadata.id = q.metadata.id;
        r.metadata.recursion_desired = q.metadata.recursion_desired;
        r.queries = q.queries.clone();
        for rec in r
            .answers
            .iter_mut()
            .chain(r.authorities.iter_mut())
            .chain(r.additionals.iter_mut())
        {
            rec.ttl = rec.ttl.saturating_sub(aged);
            // a client takes the smaller of an SOA's TTL and its MINIMUM
            // as the negative TTL: both must have aged
            if let RData::SOA(soa) = &mut rec.data {
                soa.minimum = soa.minimum.saturating_sub(aged);
            }
        }
        let bytes = r.to_vec().ok()?;
        if t == Transport::Udp {
            let limit = q
                .edns
                .as_ref()
                .map_or(CLASSIC_UDP, |e| e.max_payload().max(512) as usize);
            if bytes.len() > limit {
                return None;
            }
        }
        Some(bytes)
    }

    /// Stores `answer`, the upstream's reply to `query`, if it may be kept
    /// (see the module documentation). Returns whether it was stored.
    pub fn put(
        &mut self,
        scope: u64,
        query: &[u8],
        t: Transport,
        answer: &[u8],
        now: Instant,
    ) -> bool {
        if self.capacity == 0 || answer.len() > MAX_ANSWER {
            return false;
        }
        let (Ok(q), Ok(a)) = (Message::from_vec(query), Message::from_vec(answer)) else {
            return false;
        };
        let Some(key) = key(scope, &q, t) else {
            return false;
        };
        let Some(ttl) = cacheable_ttl(&q, &a) else {
            return false;
        };
        while self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|e| e.seq == seq) {
                self.map.remove(&old);
            }
        }
        self.seq += 1;
        self.order.push_back((key.clone(), self.seq));
        self.map.insert(
            key,
            Entry {
                bytes: answer.to_vec(),
                stored: now,
                expires: now + Duration::from_secs(ttl as u64),
                seq: self.seq,
            },
        );
        // re-stored keys leave stale lines behind: keep the queue bounded
        if self.order.len() > self.capacity.max(16).saturating_mul(2) {
            let map = &self.map;
            self.order
                .retain(|(k, seq)| map.get(k).is_some_and(|e| e.seq == *seq));
        }
        true
    }
}

/// The key of a standard query with one question; `None` for anything
/// else (those are never cached).
fn key(scope: u64, q: &Message, t: Transport) -> Option<Key> {
    if q.metadata.message_type != MessageType::Query || q.queries.len() != 1 {
        return None;
    }
    let qq = &q.queries[0];
    Some(Key {
        scope,
        name: qq.name().to_ascii().to_ascii_lowercase(),
        qtype: u16::from(qq.query_type()),
        qclass: u16::from(qq.query_class()),
        tcp: t == Transport::Tcp,
        edns: q.edns.is_some(),
        dnssec_ok: q.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        checking_disabled: q.metadata.checking_disabled,
    })
}

/// How long `a`, the answer to `q`, may be kept; `None`: not at all.
fn cacheable_ttl(q: &Message, a: &Message) -> Option<u32> {
    if a.metadata.message_type != MessageType::Response
        || a.metadata.id != q.metadata.id
        || a.metadata.truncation
        || a.queries.len() != 1
    {
        return None;
    }
    let (qq, aq) = (&q.queries[0], &a.queries[0]);
    if qq.query_type() != aq.query_type()
        || qq.query_class() != aq.query_class()
        || qq.name() != aq.name()
    // case-insensitive
    {
        return None;
    }
    let ttl = match a.metadata.response_code {
        ResponseCode::NoError if !a.answers.is_empty() => {
            a.answers.iter().map(|r| r.ttl).min()?.min(MAX_TTL)
        }
        ResponseCode::NoError | ResponseCode::NXDomain => {
            negative_ttl(&a.authorities)?.min(MAX_NEGATIVE_TTL)
        }
        _ => return None,
    };
    (ttl > 0).then_some(ttl)
}

/// RFC 2308 section 5: the smaller of the SOA's own TTL and its MINIMUM.
fn negative_ttl(authorities: &[Record]) -> Option<u32> {
    authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolver::make_query;
    use hickory_proto::op::{Edns, OpCode};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, RecordType};
    use std::net::Ipv4Addr;

    const T0: u64 = 1000;

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs - T0)
    }

    fn answer(query: &[u8], ttls: &[u32]) -> Vec<u8> {
        let q = Message::from_vec(query).unwrap();
        let mut r = Message::response(q.metadata.id, OpCode::Query);
        r.metadata.recursion_desired = true;
        r.metadata.recursion_available = true;
        r.add_query(q.queries[0].clone());
        for (i, ttl) in ttls.iter().enumerate() {
            r.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                *ttl,
                RData::A(A(Ipv4Addr::new(192, 0, 2, i as u8 + 1))),
            ));
        }
        if let Some(e) = &q.edns {
            let mut ours = Edns::new();
            ours.set_max_payload(e.max_payload());
            r.set_edns(ours);
        }
        r.to_vec().unwrap()
    }

    fn negative(query: &[u8], code: ResponseCode, soa_ttl: u32, minimum: u32) -> Vec<u8> {
        let q = Message::from_vec(query).unwrap();
        let mut r = Message::error_msg(q.metadata.id, OpCode::Query, code);
        r.add_query(q.queries[0].clone());
        let zone = Name::from_ascii("example.").unwrap();
        let soa = SOA::new(zone.clone(), zone.clone(), 1, 3600, 600, 86400, minimum);
        r.add_authority(Record::from_rdata(zone, soa_ttl, RData::SOA(soa)));
        r.to_vec().unwrap()
    }

    fn ttls(bytes: &[u8]) -> Vec<u32> {
        let m = Message::from_vec(bytes).unwrap();
        m.answers
            .iter()
            .chain(m.authorities.iter())
            .map(|r| r.ttl)
            .collect()
    }

    #[test]
    fn hit_takes_the_query_id_and_ages_ttls() {
        let base = Instant::now();
        let mut c = Cache::new(16);
        let q1 = make_query(1, "www.example.", RecordType::A, None);
        assert!(c.get(7, &q1, Transport::Udp, at(base, T0)).is_none());
        assert!(c.put(
            7,
            &q1,
            Transport::Udp,
            &answer(&q1, &[300, 60]),
            at(base, T0)
        ));
        // another query for the same name, spelled differently
        let q2 = make_query(2, "WwW.ExAmple.", RecordType::A, None);
        let hit = c.get(7, &q2, Transport::Udp, at(base, T0 + 25)).unwrap();
        let m = Message::from_vec(&hit).unwrap();
        assert_eq!(m.metadata.id, 2);
        assert_eq!(m.queries[0].name().to_ascii(), "WwW.ExAmple.");
        assert_eq!(ttls(&hit), vec![275, 35]);
        assert_eq!(m.answers.len(), 2);
        // the smallest TTL (60 s) bounds the entry
        assert!(c.get(7, &q2, Transport::Udp, at(base, T0 + 59)).is_some());
        assert!(c.get(7, &q2, Transport::Udp, at(base, T0 + 60)).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn key_separates_scope_type_transport_and_edns() {
        let base = Instant::now();
        let mut c = Cache::new(16);
        let q = make_query(1, "a.example.", RecordType::A, None);
        c.put(1, &q, Transport::Udp, &answer(&q, &[60]), base);
        assert!(c.get(1, &q, Transport::Udp, base).is_some());
        assert!(
            c.get(2, &q, Transport::Udp, base).is_none(),
            "other upstreams"
        );
        assert!(
            c.get(1, &q, Transport::Tcp, base).is_none(),
            "other transport"
        );
        let aaaa = make_query(1, "a.example.", RecordType::AAAA, None);
        assert!(
            c.get(1, &aaaa, Transport::Udp, base).is_none(),
            "other type"
        );
        let edns = make_query(1, "a.example.", RecordType::A, Some(1232));
        assert!(c.get(1, &edns, Transport::Udp, base).is_none(), "EDNS");
    }

    #[test]
    fn negative_answers_use_the_soa_and_errors_are_not_kept() {
        let base = Instant::now();
        let mut c = Cache::new(16);
        let q = make_query(1, "nx.example.", RecordType::A, None);
        // NXDOMAIN: min(SOA TTL 120, MINIMUM 30) = 30 s
        assert!(c.put(
            1,
            &q,
            Transport::Udp,
            &negative(&q, ResponseCode::NXDomain, 120, 30),
            base
        ));
        let hit = c
            .get(1, &q, Transport::Udp, base + Duration::from_secs(10))
            .unwrap();
        let m = Message::from_vec(&hit).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(ttls(&hit), vec![110]);
        // the SOA's MINIMUM (30) has aged too: min(110, 20) s are left
        match &m.authorities[0].data {
            RData::SOA(soa) => assert_eq!(soa.minimum, 20),
            other => panic!("{other:?}"),
        }
        assert!(c
            .get(1, &q, Transport::Udp, base + Duration::from_secs(30))
            .is_none());
        // capped: a day-long negative TTL is kept 5 minutes
        let q2 = make_query(2, "nx2.example.", RecordType::A, None);
        c.put(
            1,
            &q2,
            Transport::Udp,
            &negative(&q2, ResponseCode::NXDomain, 86400, 86400),
            base,
        );
        assert!(c
            .get(1, &q2, Transport::Udp, base + Duration::from_secs(299))
            .is_some());
        assert!(c
            .get(1, &q2, Transport::Udp, base + Duration::from_secs(300))
            .is_none());
        // SERVFAIL, REFUSED, no SOA, TTL 0, truncated, a wrong ID or
        // question: never stored
        let q3 = make_query(3, "x.example.", RecordType::A, None);
        for code in [ResponseCode::ServFail, ResponseCode::Refused] {
            assert!(!c.put(1, &q3, Transport::Udp, &negative(&q3, code, 60, 60), base));
        }
        let mut bare = Message::from_vec(&negative(&q3, ResponseCode::NXDomain, 60, 60)).unwrap();
        bare.authorities.clear();
        assert!(!c.put(1, &q3, Transport::Udp, &bare.to_vec().unwrap(), base));
        assert!(!c.put(1, &q3, Transport::Udp, &answer(&q3, &[0]), base));
        let mut tc = Message::from_vec(&answer(&q3, &[60])).unwrap();
        tc.metadata.truncation = true;
        assert!(!c.put(1, &q3, Transport::Udp, &tc.to_vec().unwrap(), base));
        let other = make_query(4, "x.example.", RecordType::A, None);
        assert!(!c.put(1, &q3, Transport::Udp, &answer(&other, &[60]), base));
        let other_name = make_query(3, "y.example.", RecordType::A, None);
        assert!(!c.put(1, &q3, Transport::Udp, &answer(&other_name, &[60]), base));
        assert!(!c.put(1, &q3, Transport::Udp, b"garbage", base));
        // the two negative answers were the only ones stored; both expired
        // and went when asked for
        assert!(c.is_empty());
    }

    #[test]
    fn positive_ttl_is_capped() {
        let base = Instant::now();
        let mut c = Cache::new(16);
        let q = make_query(1, "long.example.", RecordType::A, None);
        c.put(1, &q, Transport::Udp, &answer(&q, &[604800]), base);
        assert!(c
            .get(1, &q, Transport::Udp, base + Duration::from_secs(3599))
            .is_some());
        assert!(c
            .get(1, &q, Transport::Udp, base + Duration::from_secs(3600))
            .is_none());
    }

    #[test]
    fn bounded_oldest_first_and_udp_size_respected() {
        let base = Instant::now();
        let mut c = Cache::new(4);
        let qs: Vec<Vec<u8>> = (0..6)
            .map(|i| make_query(i, &format!("n{i}.example."), RecordType::A, None))
            .collect();
        for (i, q) in qs.iter().enumerate() {
            c.put(
                1,
                q,
                Transport::Udp,
                &answer(q, &[60]),
                base + Duration::from_millis(i as u64),
            );
            // re-storing one key often leaves the queue bounded
            for _ in 0..50 {
                c.put(1, &qs[0], Transport::Udp, &answer(&qs[0], &[60]), base);
            }
        }
        assert_eq!(c.len(), 4);
        assert!(c.order.len() <= 2 * 16 + 1);
        assert!(c.get(1, &qs[5], Transport::Udp, base).is_some());
        assert!(
            c.get(1, &qs[0], Transport::Udp, base).is_some(),
            "stored last"
        );
        // a TCP answer too big for a classic UDP client is never a UDP hit
        let q = make_query(9, "big.example.", RecordType::A, None);
        let big: Vec<u32> = vec![60; 40];
        let mut c = Cache::new(4);
        c.put(1, &q, Transport::Udp, &answer(&q, &big), base);
        assert!(c.get(1, &q, Transport::Udp, base).is_none());
        let qe = make_query(9, "big.example.", RecordType::A, Some(1232));
        c.put(1, &qe, Transport::Udp, &answer(&qe, &big), base);
        assert!(c.get(1, &qe, Transport::Udp, base).is_some());
        // larger than MAX_ANSWER: never stored (a container's own domain
        // must not fill the daemon's memory)
        let huge = answer(&qe, &[60; 100]);
        assert!(huge.len() > MAX_ANSWER);
        assert!(!c.put(1, &qe, Transport::Tcp, &huge, base));
        // capacity 0: off
        let mut off = Cache::new(0);
        assert!(!off.put(1, &q, Transport::Udp, &answer(&q, &[60]), base));
    }
}
