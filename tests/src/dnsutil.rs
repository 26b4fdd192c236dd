//! DNS helpers for tests: a fake upstream resolver and a tiny client.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use dns::resolver::make_query;

/// The fake upstream's answer to `query` (None: it stays silent):
/// `up.example` -> 192.0.2.10 (TTL 1234), `short.example` -> 192.0.2.11
/// (TTL 2), `gone.example` -> NXDOMAIN with an SOA (negative TTL 2),
/// `slow.example` -> no answer, anything else -> NXDOMAIN (no SOA).
pub fn upstream_answer(query: &[u8]) -> Option<Vec<u8>> {
    upstream_answer_with(query, Ipv4Addr::new(192, 0, 2, 10))
}

/// [`upstream_answer`] with another address for `up.example`.
pub fn upstream_answer_with(query: &[u8], up: Ipv4Addr) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let name = q.queries.first()?.name().to_ascii().to_lowercase();
    let mut r = Message::response(q.metadata.id, q.metadata.op_code);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.add_queries(q.queries.iter().cloned());
    match name.as_str() {
        "slow.example." => return None,
        "up.example." if q.queries[0].query_type() == RecordType::A => {
            r.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                1234,
                RData::A(A(up)),
            ));
        }
        "up.example." => {}
        "short.example." => {
            r.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                2,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 11))),
            ));
        }
        "gone.example." => {
            r.metadata.response_code = ResponseCode::NXDomain;
            let zone = Name::from_ascii("example.").ok()?;
            let soa = SOA::new(zone.clone(), zone.clone(), 1, 3600, 600, 86400, 2);
            r.add_authority(Record::from_rdata(zone, 60, RData::SOA(soa)));
        }
        _ => r.metadata.response_code = ResponseCode::NXDomain,
    }
    r.to_vec().ok()
}

/// Serves [`upstream_answer`] on 127.0.0.1:53 (UDP and TCP) of the calling
/// thread's network namespace, on background threads; returns a counter of
/// queries seen. Call inside [`crate::in_ns`].
pub fn fake_upstream() -> Arc<AtomicU64> {
    fake_upstream_on(53, Ipv4Addr::new(192, 0, 2, 10))
}

/// A fake upstream on 127.0.0.1:`port` answering `up.example` with `up`.
pub fn fake_upstream_on(port: u16, up: Ipv4Addr) -> Arc<AtomicU64> {
    let seen = Arc::new(AtomicU64::new(0));
    let udp = UdpSocket::bind(("127.0.0.1", port)).expect("bind udp");
    let tcp = TcpListener::bind(("127.0.0.1", port)).expect("bind tcp");
    let s1 = seen.clone();
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut b) {
            s1.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = upstream_answer_with(&b[..n], up) {
                let _ = udp.send_to(&r, from);
            }
        }
    });
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for c in tcp.incoming() {
            let Ok(mut c) = c else { continue };
            s2.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || {
                let mut l = [0u8; 2];
                while c.read_exact(&mut l).is_ok() {
                    let mut q = vec![0u8; u16::from_be_bytes(l) as usize];
                    if c.read_exact(&mut q).is_err() {
                        return;
                    }
                    if let Some(r) = upstream_answer_with(&q, up) {
                        let mut out = (r.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&r);
                        let _ = c.write_all(&out);
                    }
                }
            });
        }
    });
    seen
}

/// One query over UDP; the raw answer (None on timeout).
pub fn udp_query(server: Ipv4Addr, q: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.send_to(q, (server, 53)).ok()?;
    let mut b = vec![0u8; 65535];
    let n = s.recv(&mut b).ok()?;
    b.truncate(n);
    Some(b)
}

/// One query over TCP (2-byte length framing); the raw answer.
pub fn tcp_query(server: Ipv4Addr, q: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&(server, 53).into(), timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let mut out = (q.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(q);
    s.write_all(&out).ok()?;
    let mut l = [0u8; 2];
    s.read_exact(&mut l).ok()?;
    let mut b = vec![0u8; u16::from_be_bytes(l) as usize];
    s.read_exact(&mut b).ok()?;
    Some(b)
}

pub fn parse(b: &[u8]) -> Message {
    Message::from_vec(b).expect("a DNS message")
}

/// The A addresses of an answer.
pub fn addrs(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}
