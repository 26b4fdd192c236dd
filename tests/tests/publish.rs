//! Published ports (`-p`): reached from the host namespace (the daemon's)
//! via 127.0.0.1 and via a host address; TCP, UDP, ranges; busy ports
//! refused at publish time; ports released with the endpoint and restored
//! after a daemon restart.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;
use tapnet_tests::*;

const HOST_ADDR: &str = "198.51.100.10";

/// Sends `data` to addr:port from namespace `ns` and returns what came back.
fn roundtrip(ns: &str, addr: &str, port: u16, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    tcp_roundtrip(ns, &format!("{addr}:{port}"), data)
}

fn random(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545f4914f6cdd1d;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn published_ports() {
    let Some(mut env) = Env::new("published_ports", &[]) else {
        return;
    };
    let host = env.host_ns.clone();
    // the host's own address (on a veth pair inside the daemon's namespace)
    for a in [
        vec![
            "-n", &host, "link", "add", "hostif", "type", "veth", "peer", "name", "hostif2",
        ],
        vec![
            "-n",
            &host,
            "addr",
            "add",
            "198.51.100.10/24",
            "dev",
            "hostif",
        ],
        vec!["-n", &host, "link", "set", "hostif", "up"],
        vec!["-n", &host, "link", "set", "hostif2", "up"],
    ] {
        run_ok(std::process::Command::new("ip").args(a));
    }
    env.ok(&["network", "create", "app", "--subnet", "10.64.0.0/24"]);
    let web = env.container(
        "app",
        "web",
        &[
            "-p",
            "8080:80",
            "-p",
            "127.0.0.1:5353:53/udp",
            "-p",
            "9000-9002:7000-7002",
        ],
    );
    echo_server(&web.ns, 80);
    // a TCP server on the UDP-only port too: a TCP publish made by mistake
    // would reach it (so the "not on TCP" check below can fail)
    echo_server(&web.ns, 53);
    for p in 7000..=7002 {
        echo_server(&web.ns, p);
    }
    // UDP echo on 53 in the container
    in_ns(&web.ns, || {
        let s = UdpSocket::bind("0.0.0.0:53").unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut b) {
                let _ = s.send_to(&b[..n], from);
            }
        });
    })
    .join()
    .unwrap();

    // 32 MiB both ways through 127.0.0.1 and through the host address
    let data = random(32 << 20);
    for addr in ["127.0.0.1", HOST_ADDR] {
        let back = roundtrip(&host, addr, 8080, data.clone()).expect(addr);
        assert!(back == data, "data differs via {addr}");
    }
    // a range
    for p in 0..3u16 {
        let msg = format!("port {}", 9000 + p).into_bytes();
        assert_eq!(
            roundtrip(&host, "127.0.0.1", 9000 + p, msg.clone()).unwrap(),
            msg
        );
    }
    // UDP, only on 127.0.0.1 as asked
    let got = in_ns(&host, || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut b = [0u8; 64];
        (0..20).all(|i| {
            let m = format!("dgram {i}");
            s.send_to(m.as_bytes(), "127.0.0.1:5353").unwrap();
            let n = s.recv(&mut b).unwrap();
            String::from_utf8_lossy(&b[..n]) == m
        })
    })
    .join()
    .unwrap();
    assert!(got, "UDP echo through the published port");
    assert!(
        roundtrip(&host, HOST_ADDR, 5353, vec![1]).is_err(),
        "udp port open on TCP?"
    );
    let ps = env.json(&["ps", "--format", "json"]);
    assert!(ps.to_string().contains("0.0.0.0:8080->80/tcp"), "{ps}");
    let nat = env.json(&["nat", "ls", "--format", "json"]);
    assert_eq!(nat["published"].as_array().unwrap().len(), 5, "{nat}");

    // busy host ports: a clear error at publish time, nothing changes
    let before = env.ok(&["ps", "--format", "json"]);
    let taken = in_ns(&host, || TcpListener::bind("127.0.0.1:8081").unwrap())
        .join()
        .unwrap();
    let e = env.fail(&[
        "run",
        "--network",
        "app",
        "-p",
        "127.0.0.1:8081:80",
        "--",
        "true",
    ]);
    assert!(e.contains("8081") && e.contains("in use"), "{e}");
    let e = env.fail(&[
        "run",
        "--network",
        "app",
        "--name",
        "dup",
        "-p",
        "8080:80",
        "--",
        "true",
    ]);
    assert!(e.contains("8080") && e.contains("in use"), "{e}");
    let e = env.fail(&["run", "--network", "app", "-p", "80", "--", "true"]);
    assert!(e.contains("invalid port mapping"), "{e}");
    assert_eq!(env.ok(&["ps", "--format", "json"]), before);
    drop(taken);
    env.ok(&["network", "create", "closed", "--internal"]);
    let e = env.fail(&["run", "--network", "closed", "-p", "8083:80", "--", "true"]);
    assert!(e.contains("internal"), "{e}");

    // network connect -p, and a restart restores the listeners
    let other = env.container("app", "other", &[]);
    echo_server(&other.ns, 80);
    env.ok(&["network", "create", "second"]);
    env.ok(&["network", "connect", "second", "other", "-p", "8084:80"]);
    assert_eq!(
        roundtrip(&host, "127.0.0.1", 8084, b"x".to_vec()).unwrap(),
        b"x"
    );
    env.stop_daemon(libc::SIGTERM);
    assert!(roundtrip(&host, "127.0.0.1", 8084, b"x".to_vec()).is_err());
    env.start_daemon();
    assert_eq!(
        roundtrip(&host, "127.0.0.1", 8084, b"y".to_vec()).unwrap(),
        b"y"
    );
    assert_eq!(
        roundtrip(&host, "127.0.0.1", 8080, b"z".to_vec()).unwrap(),
        b"z"
    );

    // a flood of clients on one published port: 256 are relayed at once,
    // the rest turned away (closed), and the slots come back
    let (open, closed) = in_ns(&host, || {
        use std::io::Read;
        let conns: Vec<TcpStream> = (0..300)
            .map(|_| TcpStream::connect(("127.0.0.1", 9001)).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(800));
        let mut open = 0;
        let mut closed = 0;
        for mut c in conns.iter() {
            c.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            match c.read(&mut b) {
                Ok(0) => closed += 1,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    open += 1
                }
                _ => closed += 1,
            }
        }
        (open, closed)
    })
    .join()
    .unwrap();
    assert_eq!((open, closed), (256, 44), "relays per published port");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        roundtrip(&host, "127.0.0.1", 9001, b"again".to_vec()).unwrap(),
        b"again"
    );

    // the endpoint goes, its ports go with it
    env.ok(&["network", "disconnect", "second", "other"]);
    env.ok(&["rm", "web"]);
    let free = in_ns(&host, || {
        TcpListener::bind("0.0.0.0:8080").is_ok()
            && TcpListener::bind("0.0.0.0:8084").is_ok()
            && UdpSocket::bind("127.0.0.1:5353").is_ok()
    })
    .join()
    .unwrap();
    assert!(free, "published ports not released");
}
