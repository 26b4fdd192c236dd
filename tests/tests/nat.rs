//! Routing and masquerade out of the uplink (root mode): containers reach
//! "the internet", a namespace reachable only through the daemon's uplink,
//! and the servers there see the uplink address.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;
use tapnet_tests::*;

fn nat(env: &Env) -> serde_json::Value {
    env.json(&["nat", "ls", "--format", "json"])
}

#[test]
fn outbound_tcp_udp_ping_and_many_connections() {
    let Some(mut env) = Env::with_uplink("outbound_tcp_udp_ping_and_many_connections", &[]) else {
        return;
    };
    let inet = env.inet_ns();
    env.ok(&["network", "create", "app", "--subnet", "10.61.0.0/24"]);
    let c = env.container("app", "c", &[]);

    // ping: routed (TTL 63 on the way back) and translated both ways
    let o = env.exec_ok(&c.ns, &["ping", "-n", "-c", "3", "-W", "1", INET_IP]);
    assert!(o.contains("ttl=63") && o.contains(" 0% packet loss"), "{o}");
    // traceroute-style: TTL 1 gets time-exceeded from the gateway
    let o = env.exec(
        &c.ns,
        &["ping", "-n", "-c", "1", "-W", "1", "-t", "1", INET_IP],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("10.61.0.1") && out.contains("Time to live exceeded"),
        "{out}"
    );

    // a 128 MiB download whose checksum matches; the server sees the uplink address
    let blob = env.random_file("blob", 128 << 20);
    let peer = download(&mut env, &c.ns, &inet, INET_IP, 7000, &blob);
    assert_eq!(peer.ip().to_string(), UPLINK_IP, "server saw {peer}");

    // UDP request/response; the server sees the uplink address
    let peers = udp_roundtrips(&c.ns, &inet, INET_IP, 7001);
    assert!(peers.iter().all(|p| p == UPLINK_IP), "{peers:?}");
    // an ICMP error from the internet (port unreachable) comes back through
    // the NAT, its embedded header translated: the socket sees "refused"
    let refused = in_ns(&c.ns, || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.connect((INET_IP, 7999)).unwrap();
        s.send(b"anyone?").unwrap();
        let mut b = [0u8; 16];
        s.recv(&mut b).unwrap_err().kind()
    })
    .join()
    .unwrap();
    assert_eq!(refused, std::io::ErrorKind::ConnectionRefused);
    assert!(ctr(&nat(&env)["uplink"]["nat"], "icmp_errors_in") >= 1);

    // 1,000 concurrent TCP connections, each with its own data
    many_connections(&c.ns, &inet, INET_IP, 7002, 1000);
    let n = nat(&env);
    let conns = n["uplink"]["connections"].as_array().unwrap();
    assert!(
        conns.len() >= 1000,
        "{} connections in the table",
        conns.len()
    );
    assert!(conns
        .iter()
        .any(|c| c["network"] == "app" && c["proto"] == "tcp"));
    assert_eq!(ctr(&n["uplink"]["nat"], "ports_exhausted"), 0);
}

/// A UDP echo on INET_IP:`port` in namespace `inet` (until the test ends).
fn udp_echo(inet: &str, port: u16) {
    in_ns(inet, move || {
        let s = UdpSocket::bind((INET_IP, port)).unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while let Ok((n, from)) = s.recv_from(&mut b) {
                let _ = s.send_to(&b[..n], from);
            }
        });
    })
    .join()
    .unwrap();
}

#[test]
fn expiry_exhaustion_and_internal_networks() {
    let Some(mut env) = Env::with_uplink(
        "expiry_exhaustion_and_internal_networks",
        &[
            "--nat-ports",
            "40000-40001",
            "--nat-timeout",
            "udp=2",
            "--nat-timeout",
            "udp_stream=2",
            "--nat-timeout",
            "icmp=2",
        ],
    ) else {
        return;
    };
    let inet = env.inet_ns();
    env.ok(&["network", "create", "app", "--subnet", "10.62.0.0/24"]);
    let c = env.container("app", "c", &[]);
    udp_echo(&inet, 7100);
    let send_from = |env: &Env, port: u16| -> bool {
        in_ns(&c.ns.clone(), move || {
            let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(700)))
                .unwrap();
            s.send_to(b"hi", (INET_IP, 7100)).unwrap();
            let mut b = [0u8; 8];
            s.recv(&mut b).is_ok()
        })
        .join()
        .unwrap()
            && env.tapnet(&["nat", "ls"]).status.success()
    };
    // two ports in the range: the third flow is refused and counted
    assert!(send_from(&env, 5001));
    assert!(send_from(&env, 5002));
    assert!(!send_from(&env, 5003), "a third flow got through two ports");
    let n = nat(&env);
    assert_eq!(n["uplink"]["connections"].as_array().unwrap().len(), 2);
    assert!(ctr(&n["uplink"]["nat"], "ports_exhausted") >= 1, "{n}");
    assert!(ctr(&env.counters("app", "c"), "drops.nat_failed") >= 1);
    // entries expire (udp 2 s), then the ports are free again
    assert!(
        wait_until(Duration::from_secs(6), || nat(&env)["uplink"]
            ["connections"]
            .as_array()
            .unwrap()
            .is_empty()),
        "connections did not expire: {}",
        nat(&env)
    );
    assert!(ctr(&nat(&env)["uplink"]["nat"], "expired") >= 2);
    assert!(send_from(&env, 5003), "ports not reusable after expiry");

    // an internal network routes nowhere: net unreachable from the gateway
    env.ok(&[
        "network",
        "create",
        "closed",
        "--subnet",
        "10.63.0.0/24",
        "--internal",
    ]);
    let i = env.container("closed", "i", &[]);
    let o = env.exec(&i.ns, &["ping", "-n", "-c", "1", "-W", "1", INET_IP]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success() && out.contains("Unreachable"), "{out}");
    // a listener out there that the routed network reaches and the
    // internal one does not (so the refusal is the network's doing)
    let lis = env.spawn_in(
        &inet,
        &["nc", "-lk", INET_IP, "5999"],
        std::process::Stdio::null(),
        std::process::Stdio::null(),
    );
    assert!(wait_until(Duration::from_secs(5), || env
        .exec_ok(&inet, &["ss", "-ltn"])
        .contains(":5999")));
    let o = env.exec(&c.ns, &["nc", "-z", "-w", "2", INET_IP, "5999"]);
    assert!(
        o.status.success(),
        "the routed network cannot reach the listener"
    );
    let o = env.exec(&i.ns, &["nc", "-z", "-w", "2", INET_IP, "5999"]);
    assert!(
        !o.status.success(),
        "the internal network reached the listener"
    );
    env.stop_bg(lis);
    // and one network never routes into another
    let o = env.exec(
        &c.ns,
        &["ping", "-n", "-c", "1", "-W", "1", &i.ip.to_string()],
    );
    assert!(!o.status.success());
    assert!(ctr(&env.counters("app", "c"), "drops.no_route") >= 1);
}

#[test]
fn published_on_the_uplink_keeps_sources_and_hairpins() {
    let Some(mut env) = Env::with_uplink("published_on_the_uplink_keeps_sources_and_hairpins", &[])
    else {
        return;
    };
    let inet = env.inet_ns();
    env.ok(&["network", "create", "app", "--subnet", "10.65.0.0/24"]);
    let web = env.container("app", "web", &["-p", "8080:80"]);
    let c = env.container("app", "c", &[]);
    // the server answers with the address it sees
    let (tx, rx) = std::sync::mpsc::channel();
    in_ns(&web.ns, move || {
        let l = TcpListener::bind("0.0.0.0:80").unwrap();
        tx.send(()).unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let peer = s.peer_addr().unwrap().ip().to_string();
                let _ = s.write_all(peer.as_bytes());
            }
        });
    });
    rx.recv().unwrap();
    let ask = |ns: &str| -> String {
        in_ns(ns, || {
            let mut s = TcpStream::connect_timeout(
                &(UPLINK_IP.parse::<std::net::Ipv4Addr>().unwrap(), 8080).into(),
                Duration::from_secs(3),
            )
            .expect("connect to the published port");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = String::new();
            s.read_to_string(&mut b).unwrap();
            b
        })
        .join()
        .unwrap()
    };
    // from the internet: the client's own address reaches the container
    assert_eq!(ask(&inet), INET_IP);
    // hairpin: a container of the same network through the uplink address
    assert_eq!(ask(&c.ns), UPLINK_IP);
    // gone with the endpoint: a new container at web's address, listening
    // on the same port but publishing nothing, is not reached (a stale
    // forward would reach it)
    env.ok(&["rm", "web"]);
    let web2 = env.container("app", "web2", &["--ip", &web.ip.to_string()]);
    in_ns(&web2.ns, move || {
        let l = TcpListener::bind("0.0.0.0:80").unwrap();
        std::thread::spawn(move || for _ in l.incoming() {});
    })
    .join()
    .unwrap();
    let r = in_ns(&inet, || {
        TcpStream::connect_timeout(
            &(UPLINK_IP.parse::<std::net::Ipv4Addr>().unwrap(), 8080).into(),
            Duration::from_secs(2),
        )
    })
    .join()
    .unwrap();
    assert!(r.is_err(), "port still published");
}

/// One container holds at most its share of NAT connections
/// (--nat-quota): its next flow is refused and counted, while another
/// container still gets out.
#[test]
fn a_container_holds_only_its_share_of_the_nat() {
    let Some(mut env) = Env::with_uplink(
        "a_container_holds_only_its_share_of_the_nat",
        &["--nat-quota", "2"],
    ) else {
        return;
    };
    let inet = env.inet_ns();
    env.ok(&["network", "create", "app", "--subnet", "10.67.0.0/24"]);
    let greedy = env.container("app", "greedy", &[]);
    let other = env.container("app", "other", &[]);
    udp_echo(&inet, 7200);
    let flow = |ns: String, port: u16| -> bool {
        in_ns(&ns, move || {
            let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(700)))
                .unwrap();
            s.send_to(b"hi", (INET_IP, 7200)).unwrap();
            let mut b = [0u8; 8];
            s.recv(&mut b).is_ok()
        })
        .join()
        .unwrap()
    };
    assert!(flow(greedy.ns.clone(), 6001));
    assert!(flow(greedy.ns.clone(), 6002));
    assert!(
        !flow(greedy.ns.clone(), 6003),
        "a third flow beyond the quota"
    );
    assert!(
        flow(other.ns.clone(), 6001),
        "the other container was starved"
    );
    let n = env.json(&["nat", "ls", "--format", "json"]);
    assert!(ctr(&n["uplink"]["nat"], "quota_exceeded") >= 1, "{n}");
    assert!(ctr(&env.counters("app", "greedy"), "drops.nat_failed") >= 1);
}
