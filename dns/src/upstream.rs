//! Forwarding to the upstream resolvers: the query goes out with an ID of
//! our own (random: a container choosing its ID must not make a forged
//! answer easier to slip in, now that answers are cached for everyone),
//! and the first answer with that ID and the query's question comes back
//! unchanged but for the client's ID. Every server gets a short timeout,
//! so a dead upstream means SERVFAIL within a couple of seconds, never a
//! hang.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout, Instant};

/// Per-server timeout.
pub const SERVER_TIMEOUT: Duration = Duration::from_millis(1000);
/// Whole forwarding budget, all servers together.
pub const TOTAL_TIMEOUT: Duration = Duration::from_millis(2500);

/// `nameserver` lines of a resolv.conf (port 53).
pub fn from_resolv_conf(path: &Path) -> Vec<SocketAddr> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            let ip: IpAddr = w.next()?.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// `IP` or `IP:PORT` (or `[v6]:port`).
pub fn parse_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("invalid DNS server {s:?}: expected IP or IP:PORT"))
}

/// Sends `query` to `servers` in turn, under a random ID; the first answer
/// with that ID and the same question wins, and gets the query's own ID
/// back. `None`: nobody answered in time.
pub async fn forward(servers: &[SocketAddr], query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    if query.len() < 12 || servers.is_empty() {
        return None;
    }
    let mut ours = query.to_vec();
    ours[..2].copy_from_slice(&rand::random::<u16>().to_be_bytes());
    let mut a = ask(servers, &ours, tcp).await?;
    a[..2].copy_from_slice(&query[..2]);
    Some(a)
}

/// The end of the question section of a message with one question (the
/// offset after QTYPE and QCLASS); `None` if it has not exactly one or it
/// does not fit.
fn question_end(b: &[u8]) -> Option<usize> {
    if b.get(4..6)? != [0, 1] {
        return None;
    }
    let mut i = 12;
    loop {
        let l = *b.get(i)? as usize;
        if l == 0 {
            i += 1;
            break;
        }
        if l & 0xc0 != 0 {
            i += 2; // a pointer ends the name
            break;
        }
        i += 1 + l;
    }
    (i + 4 <= b.len()).then_some(i + 4)
}

/// Whether `answer` answers `query`: the same ID, QR set, and the same
/// question (names compared without case).
fn answers(query: &[u8], answer: &[u8]) -> bool {
    if answer.len() < 12 || answer[..2] != query[..2] || answer[2] & 0x80 == 0 {
        return false;
    }
    match question_end(query) {
        Some(end) => answer
            .get(12..end)
            .is_some_and(|q| q.eq_ignore_ascii_case(&query[12..end])),
        None => answer[4..6] == query[4..6],
    }
}

async fn ask(servers: &[SocketAddr], query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let deadline = Instant::now() + TOTAL_TIMEOUT;
    for s in servers {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let t = left.min(SERVER_TIMEOUT);
        let r = if tcp {
            timeout(t, over_tcp(*s, query)).await
        } else {
            timeout(t, over_udp(*s, query)).await
        };
        if let Ok(Some(a)) = r {
            return Some(a);
        }
    }
    None
}

async fn over_udp(server: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind).await.ok()?;
    sock.connect(server).await.ok()?;
    sock.send(query).await.ok()?;
    let mut buf = vec![0u8; 65535];
    loop {
        // a refused port (ICMP unreachable) ends this server at once
        let n = sock.recv(&mut buf).await.ok()?;
        if answers(query, &buf[..n]) {
            buf.truncate(n);
            return Some(buf);
        }
    }
}

async fn over_tcp(server: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(server).await.ok()?;
    let len = u16::try_from(query.len()).ok()?;
    let mut out = Vec::with_capacity(query.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(query);
    s.write_all(&out).await.ok()?;
    loop {
        let n = s.read_u16().await.ok()? as usize;
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).await.ok()?;
        if answers(query, &buf) {
            return Some(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_and_servers() {
        let d = std::env::temp_dir().join(format!("tn_dns_rc_{}", std::process::id()));
        std::fs::write(
            &d,
            "# c\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\nsearch x\nnameserver bad\n",
        )
        .unwrap();
        let v = from_resolv_conf(&d);
        std::fs::remove_file(&d).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], "10.0.0.1:53".parse().unwrap());
        assert_eq!(
            parse_server("1.2.3.4").unwrap(),
            "1.2.3.4:53".parse().unwrap()
        );
        assert_eq!(parse_server("127.0.0.1:5353").unwrap().port(), 5353);
        assert!(parse_server("nope").is_err());
    }

    /// A local fake upstream on loopback: the answer comes back unchanged,
    /// a silent server times out within the budget.
    #[tokio::test]
    async fn forwards_and_times_out() {
        let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = up.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            let mut b = [0u8; 512];
            let (n, from) = up.recv_from(&mut b).await.unwrap();
            // (the query went out under an ID of our own; only the
            // upstream sees it)
            let mut r = b[..n].to_vec();
            r[2] |= 0x80;
            r.extend_from_slice(b"tail");
            up.send_to(&[9, 9, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0], from)
                .await
                .unwrap(); // wrong ID
                           // the right ID for another question
            let mut other =
                crate::resolver::make_query(0, "y.", hickory_proto::rr::RecordType::A, None);
            other[..2].copy_from_slice(&r[..2]);
            other[2] |= 0x80;
            up.send_to(&other, from).await.unwrap();
            // the question in other case: still the answer
            let mut upper = r.clone();
            upper[13] = b'X';
            up.send_to(&upper, from).await.unwrap();
            u16::from_be_bytes([b[0], b[1]])
        });
        let q = crate::resolver::make_query(0x1234, "x.", hickory_proto::rr::RecordType::A, None);
        let a = forward(&[addr], &q, false).await.unwrap();
        assert_eq!(&a[..2], &[0x12, 0x34], "the client's ID is back");
        assert_eq!(a[13], b'X');
        assert!(a.ends_with(b"tail"));
        // (one time in 65,536 the random ID is the client's own)
        assert_ne!(
            seen.await.unwrap(),
            0x1234,
            "the upstream saw the client's ID"
        );
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let t0 = Instant::now();
        assert!(forward(&[silent.local_addr().unwrap()], &q, false)
            .await
            .is_none());
        assert!(t0.elapsed() < TOTAL_TIMEOUT + Duration::from_millis(500));
    }
}
