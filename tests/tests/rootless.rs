//! Rootless mode: the daemon and the CLI run as an unprivileged user the
//! test creates (no capability on the host); containers talk by name
//! through the switch, go out through the socket NAT with the host's
//! address, resolve external names through the upstream, and publish ports
//! on the host.

use std::io::Read;
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;
use tapnet_tests::dnsutil::fake_upstream;
use tapnet_tests::*;

#[test]
fn rootless_daemon_and_containers() {
    let Some(mut env) = Env::rootless("rootless_daemon_and_containers", &[]) else {
        return;
    };
    let inet = env.inet_ns();
    // the daemon really is unprivileged on the host
    let pid = env.daemon_pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    let (uid, _) = env.user.unwrap();
    // only this user may drive it
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let m = std::fs::metadata(&env.sock).unwrap();
        assert_eq!(
            m.permissions().mode() & 0o777,
            0o600,
            "rootless socket mode"
        );
        assert_eq!(m.uid(), uid);
    }
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == uid.to_string()),
        "{uid_line}"
    );
    assert!(env.daemon_log().contains("rootless mode"));
    in_ns(&env.host_ns, fake_upstream).join().unwrap();

    env.ok(&["network", "create", "app", "--subnet", "10.67.0.0/24"]);
    env.spawn_tapnet(&[
        "run",
        "--network",
        "app",
        "--name",
        "web",
        "-p",
        "8080:80",
        "--",
        "sh",
        "-c",
        "while true; do echo hello-rootless | nc -l -N 80; done",
    ]);
    assert!(wait_until(Duration::from_secs(10), || env
        .ctr("web")
        .is_some()));
    std::thread::sleep(Duration::from_millis(300));

    // by name through the switch (as root of the user namespace inside)
    let o = env.ok(&[
        "run",
        "--network",
        "app",
        "--",
        "sh",
        "-c",
        "id -u; ping -c 2 -W 1 web",
    ]);
    assert!(o.starts_with("0\n") && o.contains(" 0% packet loss"), "{o}");

    // ping out, unprivileged (ICMP datagram sockets)
    let o = env.ok(&[
        "run",
        "--network",
        "app",
        "--",
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        INET_IP,
    ]);
    assert!(o.contains(" 0% packet loss"), "{o}");

    // published on the host
    let got = in_ns(&env.host_ns, || {
        let mut s = TcpStream::connect("127.0.0.1:8080").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = String::new();
        s.read_to_string(&mut b).unwrap();
        b
    })
    .join()
    .unwrap();
    assert_eq!(got.trim(), "hello-rootless");

    // outbound TCP through the socket NAT: 128 MiB, checksum, host address
    let blob = env.random_file("blob", 128 << 20);
    let want = sha256(&blob);
    let server = serve_file(&inet, INET_IP, 7000, &blob);
    let o = env.ok(&[
        "run",
        "--network",
        "app",
        "--",
        "sh",
        "-c",
        &format!("nc -d {INET_IP} 7000 | sha256sum"),
    ]);
    assert!(o.starts_with(&want), "{o} vs {want}");
    assert_eq!(server.join().unwrap().ip().to_string(), HOST_IP);

    // outbound UDP
    let (tx, rx) = std::sync::mpsc::channel();
    let server = in_ns(&inet, move || {
        let s = UdpSocket::bind((INET_IP, 7001)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tx.send(()).unwrap();
        let mut b = [0u8; 64];
        let (n, from) = s.recv_from(&mut b).unwrap();
        s.send_to(b"pong\n", from).unwrap();
        (
            String::from_utf8_lossy(&b[..n]).to_string(),
            from.ip().to_string(),
        )
    });
    rx.recv().unwrap();
    let o = env.ok(&[
        "run",
        "--network",
        "app",
        "--",
        "sh",
        "-c",
        &format!("echo ping | nc -u -w 2 {INET_IP} 7001"),
    ]);
    let (msg, from) = server.join().unwrap();
    assert_eq!((msg.as_str(), from.as_str()), ("ping\n", HOST_IP));
    assert!(o.contains("pong"), "{o}");

    // a published UDP port, via 127.0.0.1 and via the host's address
    env.spawn_tapnet(&[
        "run", "--network", "app", "--name", "udpsrv", "-p", "5354:53/udp", "--", "python3", "-c",
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',53))\nwhile True:\n d,a=s.recvfrom(2048); s.sendto(b'echo:'+d,a)",
    ]);
    assert!(wait_until(Duration::from_secs(10), || env
        .ctr("udpsrv")
        .is_some()));
    for addr in ["127.0.0.1", HOST_IP] {
        let ok = in_ns(&env.host_ns, move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut b = [0u8; 64];
            // the server may still be starting: a few tries
            (0..20).any(|i| {
                let m = format!("u{i}");
                s.send_to(m.as_bytes(), (addr, 5354)).unwrap();
                matches!(s.recv(&mut b), Ok(n) if b[..n] == *format!("echo:{m}").as_bytes())
            })
        })
        .join()
        .unwrap();
        assert!(ok, "published UDP via {addr}");
    }

    // hairpin: a container reaches its network's published port through
    // the host's address (out through the socket NAT, in through the relay)
    let o = env.ok(&[
        "run",
        "--network",
        "app",
        "--",
        "nc",
        "-d",
        "-w",
        "3",
        HOST_IP,
        "8080",
    ]);
    assert_eq!(o.trim(), "hello-rootless");

    // 1,000 concurrent TCP connections from one rootless container
    env.spawn_tapnet(&[
        "run",
        "--network",
        "app",
        "--name",
        "many",
        "--",
        "sleep",
        "600",
    ]);
    assert!(wait_until(Duration::from_secs(10), || env
        .ctr("many")
        .is_some()));
    let ns = env.ns_path("many");
    many_connections(&ns, &inet, INET_IP, 7002, 1000);

    // external names through the upstream, local ones at the gateway
    let o = env.ok(&[
        "run",
        "--network",
        "app",
        "--",
        "sh",
        "-c",
        "getent hosts up.example; getent hosts web",
    ]);
    assert!(o.contains("192.0.2.10") && o.contains("10.67.0.2"), "{o}");
}
