//! Port publishing (`-p`): listeners in the daemon's (host) network
//! namespace relay into the container. The socket towards the container is
//! created *inside* the container's namespace (a thread that entered it),
//! connected to the container's own address; bytes move between the two
//! TCP sockets with splice(2) through a pipe, never through a userspace
//! buffer. UDP is relayed per client with an idle timeout.
//!
//! A port published on all addresses listens on `0.0.0.0` and on `[::]`
//! (IPv6 only, so the two do not collide), as Docker 27 and later do; an
//! IPv6 client reaches an IPv4-only container through the relay.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

const UDP_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMap {
    /// Host address to listen on (None: all, IPv4 and IPv6).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub ctr_port: u16,
    pub proto: Proto,
}

impl std::fmt::Display for PortMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(
                f,
                "[{ip}]:{}->{}/{}",
                self.host_port, self.ctr_port, self.proto
            ),
            Some(ip) => write!(
                f,
                "{ip}:{}->{}/{}",
                self.host_port, self.ctr_port, self.proto
            ),
            None => write!(
                f,
                "0.0.0.0:{}->{}/{}",
                self.host_port, self.ctr_port, self.proto
            ),
        }
    }
}

fn range(s: &str, what: &str, spec: &str) -> Result<(u16, u16), String> {
    let bad = || format!("invalid port mapping {spec:?}: bad {what} {s:?}");
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let a: u16 = a.parse().map_err(|_| bad())?;
    let b: u16 = b.parse().map_err(|_| bad())?;
    if a == 0 || b < a {
        return Err(bad());
    }
    Ok((a, b))
}

/// Parses `[HOST_IP:]HOST_PORT[-END]:CTR_PORT[-END][/tcp|/udp]` into one
/// mapping per port; an IPv6 HOST_IP is written in brackets
/// (`[::1]:8080:80`).
pub fn parse(spec: &str) -> Result<Vec<PortMap>, String> {
    let (addr, proto) = match spec.rsplit_once('/') {
        Some((a, "tcp")) => (a, Proto::Tcp),
        Some((a, "udp")) => (a, Proto::Udp),
        Some((_, p)) => {
            return Err(format!(
                "invalid port mapping {spec:?}: unknown protocol {p:?} (tcp or udp)"
            ))
        }
        None => (spec, Proto::Tcp),
    };
    let bad_ip = |ip: &str| format!("invalid port mapping {spec:?}: bad host address {ip:?}");
    // an IPv6 host address: `[ADDR]:` before the ports
    let (v6, addr) = match addr.strip_prefix('[') {
        Some(rest) => {
            let (ip, ports) = rest.split_once("]:").ok_or_else(|| bad_ip(addr))?;
            let ip: Ipv6Addr = ip.parse().map_err(|_| bad_ip(ip))?;
            (Some(ip), ports)
        }
        None => (None, addr),
    };
    let parts: Vec<&str> = addr.split(':').collect();
    let (host_ip, hp, cp) = match (v6, parts.as_slice()) {
        (Some(ip), [h, c]) => (Some(IpAddr::V6(ip)), *h, *c),
        (None, [h, c]) => (None, *h, *c),
        (None, [ip, h, c]) => {
            let ip: Ipv4Addr = ip.parse().map_err(|_| bad_ip(ip))?;
            (Some(IpAddr::V4(ip)), *h, *c)
        }
        _ => {
            return Err(format!(
            "invalid port mapping {spec:?}: expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]"
        ))
        }
    };
    // 0.0.0.0 and :: are "every address" (of that family)
    let host_ip = host_ip.filter(|i| !(i.is_unspecified() && i.is_ipv4()));
    let (h0, h1) = range(hp, "host port", spec)?;
    let (c0, c1) = range(cp, "container port", spec)?;
    if h1 - h0 != c1 - c0 {
        return Err(format!(
            "invalid port mapping {spec:?}: the host and container ranges differ in size"
        ));
    }
    Ok((0..=(h1 - h0))
        .map(|i| PortMap {
            host_ip,
            host_port: h0 + i,
            ctr_port: c0 + i,
            proto,
        })
        .collect())
}

/// Open listeners of one endpoint; dropping it stops them.
pub struct Published {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Published {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds every mapping (all or nothing) and starts relaying to
/// `ctr_ip` in namespace `netns`.
pub fn publish(netns: &Path, ctr_ip: Ipv4Addr, maps: &[PortMap]) -> Result<Published, String> {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for m in maps {
        for addr in listen_addrs(m) {
            let all_v6 = m.host_ip.is_none() && addr.is_ipv6();
            match m.proto {
                Proto::Tcp => match bind_tcp(addr) {
                    Ok(l) => tcp.push((*m, l)),
                    // a host without IPv6: the IPv4 listener serves alone
                    Err(e) if all_v6 && no_ipv6(&e) => {}
                    Err(e) => return Err(format!("cannot publish {m}: {addr}/tcp: {e}")),
                },
                Proto::Udp => match bind_udp(addr) {
                    Ok(s) => udp.push((*m, s)),
                    Err(e) if all_v6 && no_ipv6(&e) => {}
                    Err(e) => return Err(format!("cannot publish {m}: {addr}/udp: {e}")),
                },
            }
        }
    }
    let rt = tokio::runtime::Handle::current();
    let ns: Arc<PathBuf> = Arc::new(netns.to_path_buf());
    let mut tasks = Vec::new();
    for (m, l) in tcp {
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let ns = ns.clone();
        // one relay thread per connection, so a bounded number of them per
        // published port: a flood of clients cannot exhaust the daemon
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_RELAYS_PER_PORT));
        tasks.push(rt.spawn(async move {
            let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                return;
            };
            loop {
                let client = match l.accept().await {
                    Ok((c, _)) => c,
                    // out of fds (EMFILE/ENFILE), say: an immediate retry
                    // would spin; wait a little, as Go's net/http does
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // all slots busy: this client is turned away (closed)
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let ns = ns.clone();
                let Ok(client) = client.into_std() else {
                    continue;
                };
                std::thread::spawn(move || {
                    if let Err(e) = relay_tcp(client, &ns, (ctr_ip, m.ctr_port).into()) {
                        eprintln!("tapnet: publish {m}: {e:#}");
                    }
                    drop(slot);
                });
            }
        }));
    }
    for (m, s) in udp {
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        let ns = ns.clone();
        tasks.push(rt.spawn(async move {
            if let Ok(s) = tokio::net::UdpSocket::from_std(s) {
                relay_udp(Arc::new(s), ns, (ctr_ip, m.ctr_port).into()).await;
            }
        }));
    }
    Ok(Published { tasks })
}

/// Where mapping `m` listens: its host address, or `0.0.0.0` and `[::]`.
fn listen_addrs(m: &PortMap) -> Vec<SocketAddr> {
    match m.host_ip {
        Some(ip) => vec![SocketAddr::new(ip, m.host_port)],
        None => vec![
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), m.host_port),
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), m.host_port),
        ],
    }
}

/// The host has no IPv6 (disabled, or no such address family).
fn no_ipv6(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
    )
}

/// A socket bound to `addr`; an IPv6 one takes IPv6 only (the IPv4
/// listener on the same port has IPv4), whatever the host's bindv6only.
fn socket_for(addr: SocketAddr, ty: socket2::Type) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), ty, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if ty == socket2::Type::STREAM {
        s.set_reuse_address(true)?;
    }
    s.bind(&addr.into())?;
    Ok(s)
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = socket_for(addr, socket2::Type::STREAM)?;
    s.listen(1024)?;
    Ok(s.into())
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    Ok(socket_for(addr, socket2::Type::DGRAM)?.into())
}

/// Concurrent relayed TCP connections per published port.
const MAX_RELAYS_PER_PORT: usize = 256;

/// Runs `f` on a thread inside network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    std::thread::spawn(move || {
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::anyhow!(
                "entering the container's namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

fn relay_tcp(client: std::net::TcpStream, ns: &Path, to: SocketAddr) -> Result<()> {
    let inner = in_ns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(5))
    })?
    .with_context(|| format!("connecting to {to} in the container"))?;
    let _ = client.set_nodelay(true);
    let _ = inner.set_nodelay(true);
    client.set_nonblocking(true)?;
    inner.set_nonblocking(true)?;
    relay_pair(&client, &inner).map_err(Into::into)
}

/// One direction of a relayed connection: bytes from `from` wait in a
/// pipe until `to` takes them.
struct Pipe<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    rd: OwnedFd,
    wr: OwnedFd,
    /// Bytes in the pipe.
    queued: usize,
    /// `from` reached EOF (and `to`'s write side was shut once drained).
    eof: bool,
}

const PIPE_SIZE: usize = 1 << 20;

impl<'a> Pipe<'a> {
    fn new(from: &'a TcpStream, to: &'a TcpStream) -> std::io::Result<Pipe<'a>> {
        let mut fds = [0; 2];
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // a smaller pipe only means more rounds
        unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
        Ok(Pipe {
            from,
            to,
            rd,
            wr,
            queued: 0,
            eof: false,
        })
    }

    /// Moves what it can without blocking: drains the pipe into `to`, then
    /// reads `from` into it and drains again, until a side would block or
    /// `from` ends. Err: the connection failed.
    fn step(&mut self) -> std::io::Result<()> {
        loop {
            while self.queued > 0 {
                match splice(self.rd.as_raw_fd(), self.to.as_raw_fd(), self.queued)? {
                    Some(n) => self.queued -= n,
                    None => return Ok(()), // `to` is full: wait for POLLOUT
                }
            }
            if self.eof {
                return Ok(());
            }
            match splice(self.from.as_raw_fd(), self.wr.as_raw_fd(), PIPE_SIZE)? {
                Some(0) => {
                    self.eof = true;
                    let _ = self.to.shutdown(std::net::Shutdown::Write);
                    return Ok(());
                }
                Some(n) => self.queued = n,
                None => return Ok(()), // nothing to read: wait for POLLIN
            }
        }
    }

    /// The poll(2) events this direction waits for on `from` and on `to`.
    fn wants(&self) -> (libc::c_short, libc::c_short) {
        if self.queued > 0 {
            (0, libc::POLLOUT)
        } else if !self.eof {
            (libc::POLLIN, 0)
        } else {
            (0, 0)
        }
    }
}

/// splice(2) without blocking: Some(bytes moved), None if it would block.
fn splice(from: i32, to: i32, len: usize) -> std::io::Result<Option<usize>> {
    loop {
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Relays both directions between `a` and `b` (non-blocking sockets) on
/// this one thread, with splice(2) through a pipe per direction, until both
/// directions have ended; each side's write is shut when the other side
/// ends. One thread for both directions, as an event loop would: a request
/// and its answer are handled by the same thread, which stays warm on its
/// CPU (two blocking threads, one per direction, cost a request-response
/// round trip more here).
fn relay_pair(a: &TcpStream, b: &TcpStream) -> std::io::Result<()> {
    let mut up = Pipe::new(a, b)?;
    let mut down = Pipe::new(b, a)?;
    let r = loop {
        if let Err(e) = up.step().and_then(|_| down.step()) {
            break Err(e);
        }
        if up.eof && down.eof && up.queued == 0 && down.queued == 0 {
            break Ok(());
        }
        let ((up_a, up_b), (down_b, down_a)) = (up.wants(), down.wants());
        let mut fds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: up_a | down_a,
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: up_b | down_b,
                revents: 0,
            },
        ];
        // a socket this relay waits nothing from is left out: a hung-up
        // socket would otherwise wake the loop again and again
        for f in fds.iter_mut() {
            if f.events == 0 {
                f.fd = -1;
            }
        }
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                break Err(e);
            }
        }
    };
    let _ = a.shutdown(std::net::Shutdown::Both);
    let _ = b.shutdown(std::net::Shutdown::Both);
    // a peer that reset the connection is the normal end of a relay
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

async fn relay_udp(host: Arc<tokio::net::UdpSocket>, ns: Arc<PathBuf>, to: SocketAddr) {
    let mut clients: HashMap<SocketAddr, (Arc<tokio::net::UdpSocket>, JoinHandle<()>)> =
        HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = host.recv_from(&mut buf).await else {
            continue;
        };
        clients.retain(|_, (_, t)| !t.is_finished());
        let inner = match clients.get(&from) {
            Some((s, _)) => s.clone(),
            None => {
                let ns2 = ns.clone();
                let sock = tokio::task::spawn_blocking(move || {
                    in_ns(&ns2, move || -> std::io::Result<UdpSocket> {
                        let s = UdpSocket::bind("0.0.0.0:0")?;
                        s.connect(to)?;
                        s.set_nonblocking(true)?;
                        Ok(s)
                    })
                })
                .await;
                let Ok(Ok(Ok(s))) = sock else {
                    continue;
                };
                let Ok(s) = tokio::net::UdpSocket::from_std(s) else {
                    continue;
                };
                let s = Arc::new(s);
                let (s2, h2) = (s.clone(), host.clone());
                let t = tokio::spawn(async move {
                    let mut b = vec![0u8; 65536];
                    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, s2.recv(&mut b)).await {
                        let _ = h2.send_to(&b[..n], from).await;
                    }
                });
                clients.insert(from, (s.clone(), t));
                s
            }
        };
        let _ = inner.send(&buf[..n]).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_syntax() {
        let m = parse("8080:80").unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].host_port, m[0].ctr_port, m[0].proto),
            (8080, 80, Proto::Tcp)
        );
        let m = parse("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(m[0].host_ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(m[0].proto, Proto::Udp);
        let m = parse("[::1]:8080:80").unwrap();
        assert_eq!(m[0].host_ip, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(m[0].to_string(), "[::1]:8080->80/tcp");
        assert_eq!(parse("0.0.0.0:8080:80").unwrap()[0].host_ip, None);
        assert_eq!(
            parse("[::]:8080:80").unwrap()[0].host_ip,
            Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
        );
        let m = parse("8000-8002:9000-9002").unwrap();
        assert_eq!(
            m.iter()
                .map(|x| (x.host_port, x.ctr_port))
                .collect::<Vec<_>>(),
            vec![(8000, 9000), (8001, 9001), (8002, 9002)]
        );
        for bad in [
            "80",
            "a:80",
            "8080:80/sctp",
            "8000-8002:9000",
            "0:80",
            "1.2.3:80:80",
            "[::1:80:80",
            "[zz::1]:80:80",
            "[::1]:1:80:80",
            "::1:80:80",
            "9-8:9-8",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }
}
