//! Outbound without an uplink: the socket NAT terminates containers' TCP
//! and UDP in a userspace stack and relays through the host's own sockets
//! (the rootless back-end). "The internet" is a namespace on a link of the
//! daemon's namespace, which has an address of its own there.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};
use tapnet_tests::*;

#[test]
fn socket_nat_tcp_udp_and_many_connections() {
    socket_nat_with(&[]);
}

/// The same with busy polling (the socket NAT's thread and the datapath
/// poll for 50 us after traffic before they sleep).
#[test]
fn socket_nat_with_busy_polling() {
    socket_nat_with(&["--busy-poll-us", "50"]);
}

fn socket_nat_with(args: &[&str]) {
    let name = if args.is_empty() {
        "socket_nat_tcp_udp_and_many_connections"
    } else {
        "socket_nat_busy"
    };
    let Some(mut env) = Env::with_host_link(name, args) else {
        return;
    };
    let inet = env.inet_ns();
    env.ok(&["network", "create", "app", "--subnet", "10.66.0.0/24"]);
    let c = env.container("app", "c", &[]);

    // a 128 MiB download with a matching checksum; the server sees the host
    let blob = env.random_file("blob", 128 << 20);
    let peer = download(&mut env, &c.ns, &inet, INET_IP, 7000, &blob);
    assert_eq!(peer.ip().to_string(), HOST_IP, "server saw {peer}");

    // an upload the other way, 16 MiB, echoed back
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    in_ns(&inet, move || {
        let l = TcpListener::bind((INET_IP, 7003)).unwrap();
        ready_tx.send(()).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut r = s.try_clone().unwrap();
            std::io::copy(&mut r, &mut s).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
        });
    });
    ready_rx.recv().unwrap();
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i * 7 + (i >> 11)) as u8)
        .collect();
    let d2 = data.clone();
    let back = in_ns(&c.ns, move || {
        let mut s = TcpStream::connect((INET_IP, 7003)).unwrap();
        let mut w = s.try_clone().unwrap();
        let t = std::thread::spawn(move || {
            w.write_all(&d2).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut b = Vec::new();
        s.read_to_end(&mut b).unwrap();
        t.join().unwrap();
        b
    })
    .join()
    .unwrap();
    assert!(
        back == data,
        "echoed upload differs ({} bytes back)",
        back.len()
    );

    // ping through ICMP datagram sockets of the host
    let o = env.exec_ok(&c.ns, &["ping", "-n", "-c", "3", "-W", "2", INET_IP]);
    assert!(o.contains(" 0% packet loss"), "{o}");

    // nobody listening: refused, promptly
    let t0 = Instant::now();
    let r = in_ns(&c.ns, || {
        TcpStream::connect_timeout(
            &(INET_IP.parse::<std::net::Ipv4Addr>().unwrap(), 7999).into(),
            Duration::from_secs(5),
        )
    })
    .join()
    .unwrap();
    assert!(
        r.is_err() && t0.elapsed() < Duration::from_secs(3),
        "{r:?} after {:?}",
        t0.elapsed()
    );

    // UDP request/response, the server sees the host address
    let peers = udp_roundtrips(&c.ns, &inet, INET_IP, 7001);
    assert!(peers.iter().all(|p| p == HOST_IP), "{peers:?}");

    // 1,000 concurrent TCP connections, each with its own data
    many_connections(&c.ns, &inet, INET_IP, 7002, 1000);
    let v = env.json(&["nat", "ls", "--format", "json"]);
    assert!(ctr(&v["socket_nat"], "tcp_opened") >= 1002, "{v}");
    assert!(ctr(&v["socket_nat"], "tcp_refused") >= 1, "{v}");
}

/// A container holds at most its share of the socket NAT's flows (each a
/// host socket, --nat-quota): the next is refused and counted, and another
/// container still gets out.
#[test]
fn a_container_holds_only_its_share_of_the_socket_nat() {
    let Some(mut env) = Env::with_host_link("socknat_quota", &["--nat-quota", "3"]) else {
        return;
    };
    let inet = env.inet_ns();
    env.ok(&["network", "create", "app", "--subnet", "10.68.0.0/24"]);
    let greedy = env.container("app", "greedy", &[]);
    let other = env.container("app", "other", &[]);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    in_ns(&inet, move || {
        let l = TcpListener::bind((INET_IP, 7300)).unwrap();
        ready_tx.send(()).unwrap();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                // open until the client closes
                std::thread::spawn(move || {
                    let mut b = [0u8; 64];
                    while s.read(&mut b).is_ok_and(|n| n > 0) {}
                });
            }
        });
    });
    ready_rx.recv().unwrap();
    // three held connections, then a fourth that must not get through
    let held = in_ns(&greedy.ns, move || {
        let mut open = Vec::new();
        for _ in 0..3 {
            open.push(TcpStream::connect((INET_IP, 7300)).expect("within the quota"));
        }
        let fourth = TcpStream::connect_timeout(
            &(INET_IP.parse::<std::net::Ipv4Addr>().unwrap(), 7300).into(),
            Duration::from_secs(2),
        );
        (open, fourth.is_ok())
    })
    .join()
    .unwrap();
    assert!(!held.1, "a fourth connection beyond the quota");
    let ok = in_ns(&other.ns, move || {
        TcpStream::connect((INET_IP, 7300)).is_ok()
    })
    .join()
    .unwrap();
    assert!(ok, "the other container was starved");
    let n = env.json(&["nat", "ls", "--format", "json"]);
    assert!(ctr(&n["socket_nat"], "quota_exceeded") >= 1, "{n}");
    // closing gives the share back
    drop(held);
    let t0 = Instant::now();
    let again = loop {
        let ok = in_ns(&greedy.ns, move || {
            TcpStream::connect_timeout(
                &(INET_IP.parse::<std::net::Ipv4Addr>().unwrap(), 7300).into(),
                Duration::from_secs(1),
            )
            .is_ok()
        })
        .join()
        .unwrap();
        if ok || t0.elapsed() > Duration::from_secs(15) {
            break ok;
        }
    };
    assert!(
        again,
        "the share did not come back after the connections closed"
    );
}
