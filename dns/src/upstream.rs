//! Forwarding to the upstream resolvers: the query goes out unchanged and
//! the first matching answer comes back unchanged. Every server gets a short
//! timeout, so a dead upstream means SERVFAIL within a couple of seconds,
//! never a hang.

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

/// Sends `query` to `servers` in turn; the first answer with the query's ID
/// wins. `None`: nobody answered in time.
pub async fn forward(servers: &[SocketAddr], query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    if query.len() < 12 || servers.is_empty() {
        return None;
    }
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
        if n >= 12 && buf[..2] == query[..2] && buf[2] & 0x80 != 0 {
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
        if n >= 12 && buf[..2] == query[..2] {
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
        tokio::spawn(async move {
            let mut b = [0u8; 512];
            let (n, from) = up.recv_from(&mut b).await.unwrap();
            let mut r = b[..n].to_vec();
            r[2] |= 0x80;
            r.extend_from_slice(b"tail");
            up.send_to(&[9, 9, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0], from)
                .await
                .unwrap(); // wrong ID
            up.send_to(&r, from).await.unwrap();
        });
        let q = crate::resolver::make_query(0x1234, "x.", hickory_proto::rr::RecordType::A, None);
        let a = forward(&[addr], &q, false).await.unwrap();
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert!(a.ends_with(b"tail"));
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let t0 = Instant::now();
        assert!(forward(&[silent.local_addr().unwrap()], &q, false)
            .await
            .is_none());
        assert!(t0.elapsed() < TOTAL_TIMEOUT + Duration::from_millis(500));
    }
}
