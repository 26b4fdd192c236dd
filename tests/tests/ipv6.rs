//! IPv6 dual stack: a network with an IPv4 and an IPv6 subnet, its
//! containers configured for both, the gateway answering neighbour
//! discovery and ping on its IPv6 address, IPv6 switched between
//! containers (100 MB, checksum compared), names resolved to AAAA records
//! (through the C library and with dig, over IPv6 to the gateway), IPv6
//! never routed to another network, and bad input refused in one line.

use std::process::Stdio;
use std::time::Duration;
use tapnet_tests::*;

fn ping6(env: &Env, ns: &str, dst: &str) -> bool {
    env.exec(ns, &["ping", "-6", "-c", "3", "-W", "1", "-i", "0.2", dst])
        .status
        .success()
}

#[test]
fn dual_stack_network() {
    let Some(mut env) = Env::new("dual_stack_network", &[]) else {
        return;
    };
    require_tools(&["dig"], "bind9-dnsutils");
    env.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.66.0.0/24",
        "--subnet",
        "fd00:66::/64",
        "ds",
    ]);
    let n = env.inspect("ds");
    assert_eq!(n["ipv6"], true, "{n}");
    assert_eq!(n["subnet6"], "fd00:66::/64", "{n}");
    assert_eq!(n["gateway6"], "fd00:66::1", "{n}");

    let c1 = env.container("ds", "c1", &[]);
    let c2 = env.container("ds", "c2", &["--ip6", "fd00:66::99"]);
    assert_eq!(env.ip6_of("c1"), "fd00:66::2");
    assert_eq!(env.ip6_of("c2"), "fd00:66::99");

    // inside: the address (usable at once: no DAD), a link-local one, the
    // IPv6 default route via the gateway, IPv4 as before
    let a = env.exec_ok(&c1.ns, &["ip", "-6", "addr", "show", "dev", "eth0"]);
    assert!(a.contains("inet6 fd00:66::2/64"), "{a}");
    assert!(!a.contains("tentative"), "{a}");
    assert!(
        wait_until(Duration::from_secs(5), || env
            .exec_ok(&c1.ns, &["ip", "-6", "addr", "show", "dev", "eth0"])
            .contains("inet6 fe80::")),
        "no link-local address"
    );
    let r = env.exec_ok(&c1.ns, &["ip", "-6", "route"]);
    assert!(r.contains("default via fd00:66::1 dev eth0"), "{r}");
    assert!(
        ping(&env, &c1.ns, &c2.ip.to_string(), 2),
        "IPv4 still works"
    );

    // ping both ways and to the gateway; the gateway's NDP answer is in
    // c1's neighbour table with the gateway's MAC
    assert!(ping6(&env, &c1.ns, "fd00:66::99"), "c1 -> c2 ping6 failed");
    assert!(ping6(&env, &c2.ns, "fd00:66::2"), "c2 -> c1 ping6 failed");
    assert!(
        ping6(&env, &c1.ns, "fd00:66::1"),
        "c1 -> gateway ping6 failed"
    );
    let neigh = env.exec_ok(&c1.ns, &["ip", "-6", "neigh", "show", "fd00:66::1"]);
    let gw_mac = n["gateway_mac"].as_str().unwrap().to_string();
    assert!(
        neigh.contains(&gw_mac),
        "gateway's neighbour entry: {neigh}"
    );
    assert!(
        neigh.contains("router"),
        "the gateway says it is a router: {neigh}"
    );
    let neigh = env.exec_ok(&c1.ns, &["ip", "-6", "neigh", "show", "fd00:66::99"]);
    assert!(neigh.contains(&c2.mac), "c2's neighbour entry: {neigh}");
    let gw = ctr(&env.counters("ds", "c1"), "gateway_replies");
    assert!(gw >= 4, "the gateway answered NDP and ping: {gw}");

    // 100 MB over IPv6 TCP, checksum compared
    let blob = env.random_file("blob", 100 << 20);
    let peer = download(&mut env, &c1.ns, &c2.ns, "fd00:66::99", 5000, &blob);
    assert_eq!(peer.ip().to_string(), "fd00:66::2", "the server saw c1");

    // names: AAAA and ip6.arpa over IPv6 to the gateway's IPv6 address,
    // A still there, and the C library's view in a `run` container
    let aaaa = env.exec_ok(
        &c1.ns,
        &["dig", "+short", "+tries=1", "AAAA", "c2", "@fd00:66::1"],
    );
    assert_eq!(aaaa.trim(), "fd00:66::99");
    let a4 = env.exec_ok(
        &c1.ns,
        &["dig", "+short", "+tries=1", "A", "c2", "@fd00:66::1"],
    );
    assert_eq!(a4.trim(), c2.ip.to_string());
    let ptr = env.exec_ok(
        &c1.ns,
        &[
            "dig",
            "+short",
            "+tries=1",
            "-x",
            "fd00:66::99",
            "@fd00:66::1",
        ],
    );
    assert_eq!(ptr.trim(), "c2.ds.");
    let tcp = env.exec_ok(
        &c1.ns,
        &["dig", "+short", "+tcp", "AAAA", "c1", "@fd00:66::1"],
    );
    assert_eq!(tcp.trim(), "fd00:66::2");
    let o = env.ok(&[
        "run",
        "--network",
        "ds",
        "--",
        "sh",
        "-c",
        "cat /etc/resolv.conf; getent ahostsv6 c2",
    ]);
    assert!(o.contains("nameserver 10.66.0.1"), "{o}");
    assert!(o.contains("nameserver fd00:66::1"), "{o}");
    assert!(o.contains("fd00:66::99"), "{o}");

    // beyond an internal network: no route, said with an ICMPv6 error
    // (c1's own network goes out through the socket NAT, which the
    // `socket_nat_ipv6` test covers)
    env.ok(&[
        "network",
        "create",
        "--internal",
        "--ipv6",
        "--subnet",
        "fd00:69::/64",
        "int",
    ]);
    let c4 = env.container("int", "c4", &[]);
    let o = env.exec(&c4.ns, &["ping", "-6", "-c", "1", "-W", "1", "2001:db8::1"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success());
    assert!(out.contains("Destination unreachable"), "{out}");
    // hop limit 1 to a routed destination: time exceeded from the gateway
    let o = env.exec(
        &c1.ns,
        &["ping", "-6", "-c", "1", "-W", "1", "-t", "1", "2001:db8::1"],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Time exceeded"), "{out}");

    // never to another tapnet network
    env.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:67::/64",
        "other",
    ]);
    let c3 = env.container("other", "c3", &[]);
    let c3ip6 = env.ip6_of("c3");
    assert!(c3ip6.starts_with("fd00:67::"), "{c3ip6}");
    let before = ctr(&env.counters("ds", "c1"), "drops.no_route");
    assert!(!ping6(&env, &c1.ns, &c3ip6), "IPv6 crossed networks");
    assert!(ctr(&env.counters("ds", "c1"), "drops.no_route") > before);
    assert!(
        ping6(&env, &c3.ns, "fd00:67::1"),
        "c3 reaches its own gateway"
    );

    // a container whose first network has no IPv6 takes its IPv6
    // default route from the first one that has (as Docker does)
    env.ok(&["network", "create", "--subnet", "10.72.0.0/24", "v4net"]);
    let m = env.container("v4net", "m", &[]);
    env.ok(&["network", "connect", "ds", "m"]);
    let r = env.exec_ok(&m.ns, &["ip", "-6", "route", "show", "default"]);
    assert!(r.contains("via fd00:66::1"), "{r}");
    let r4 = env.exec_ok(&m.ns, &["ip", "route", "show", "default"]);
    assert!(r4.contains("via 10.72.0.1"), "IPv4's stays: {r4}");
    assert!(ping6(&env, &m.ns, "fd00:66::1"));

    // a restart keeps every address; traffic flows again
    env.stop_daemon(libc::SIGTERM);
    env.start_daemon();
    assert_eq!(env.ip6_of("c2"), "fd00:66::99");
    assert!(
        wait_until(Duration::from_secs(10), || ping6(
            &env,
            &c1.ns,
            "fd00:66::99"
        )),
        "ping6 after a restart"
    );
    let _ = Stdio::null();
}

#[test]
fn ipv6_defaults_and_bad_input() {
    let Some(mut env) = Env::new("ipv6_defaults_and_bad_input", &[]) else {
        return;
    };
    // without an IPv6 subnet: a /64 of the daemon's unique local /48,
    // the next network the next /64; the /48 survives a restart
    env.ok(&["network", "create", "--ipv6", "auto1"]);
    env.ok(&["network", "create", "--ipv6", "auto2"]);
    let s1 = env.inspect("auto1")["subnet6"]
        .as_str()
        .unwrap()
        .to_string();
    let s2 = env.inspect("auto2")["subnet6"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(s1.starts_with("fd") && s1.ends_with("::/64"), "{s1}");
    assert_ne!(s1, s2);
    let p48 = |s: &str| s.split(':').take(3).collect::<Vec<_>>().join(":");
    assert_eq!(p48(&s1), p48(&s2), "one /48 for both");
    env.stop_daemon(libc::SIGTERM);
    env.start_daemon();
    env.ok(&["network", "create", "--ipv6", "auto3"]);
    let s3 = env.inspect("auto3")["subnet6"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(p48(&s3), p48(&s1), "the /48 is kept across restarts");

    // bad input: one clear line each, nothing created
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--ipv6",
                "--subnet",
                "fd00:1::/64",
                "--subnet",
                "fd00:2::/64",
                "x",
            ],
            "given twice",
        ),
        (&["--ipv6", "--subnet", "fd00:1::/121", "x"], "at most /120"),
        (&["--ipv6", "--subnet", "fd00::/40", "x"], "too large"),
        (&["--ipv6", "--subnet", "fd00:1::5/64", "x"], "host bits"),
        (
            &["--ipv6", "--subnet", "fd00:zz::/64", "x"],
            "invalid IPv6 subnet",
        ),
        (
            &[
                "--ipv6",
                "--subnet",
                "fd00:1::/64",
                "--gateway",
                "fd00:2::1",
                "x",
            ],
            "outside",
        ),
        (
            &["--subnet", "10.9.0.0/24", "--gateway", "fd00:2::1", "x"],
            "needs --ipv6",
        ),
        (
            &["--ipv6", "--subnet", &s1, "x"],
            "overlaps with network auto1",
        ),
    ];
    for (args, want) in cases {
        let mut a = vec!["network", "create"];
        a.extend_from_slice(args);
        let e = env.fail(&a);
        assert!(e.contains(want), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    }
    assert!(env.tapnet(&["network", "inspect", "x"]).status.code() != Some(0));
    // a --ip-range narrows a large subnet
    env.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd01::/40",
        "--ip-range",
        "fd01:0:0:5::/64",
        "big",
    ]);
    let c = env.container("big", "b1", &[]);
    assert_eq!(env.ip6_of("b1"), "fd01:0:0:5::");
    let _ = c;

    // addresses: outside the subnet, taken, on a network without IPv6
    env.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:99::/64",
        "v6net",
    ]);
    env.ok(&["network", "create", "v4only"]);
    env.container("v6net", "holder", &["--ip6", "fd00:99::10"]);
    for (net, ip6, want) in [
        ("v6net", "fd00:98::10", "outside subnet"),
        ("v6net", "fd00:99::10", "already in use"),
        ("v6net", "fd00:99::1", "reserved"),
        ("v6net", "not-an-address", "invalid IPv6 address"),
        ("v4only", "fd00:99::11", "has no IPv6 subnet"),
    ] {
        let e = env.fail(&["run", "--network", net, "--ip6", ip6, "--", "true"]);
        assert!(e.contains(want), "{net} {ip6}: {e}");
    }
}

#[test]
fn published_ports_ipv6() {
    let Some(mut env) = Env::new("published_ports_ipv6", &[]) else {
        return;
    };
    let host = env.host_ns.clone();
    // the host's own IPv6 address, on a veth pair in the daemon's namespace
    for a in [
        vec![
            "-n", &host, "link", "add", "hostif", "type", "veth", "peer", "name", "hostif2",
        ],
        vec![
            "-n",
            &host,
            "addr",
            "add",
            "2001:db8:100::10/64",
            "dev",
            "hostif",
            "nodad",
        ],
        vec!["-n", &host, "link", "set", "hostif", "up"],
        vec!["-n", &host, "link", "set", "hostif2", "up"],
        vec!["-n", &host, "link", "set", "lo", "up"],
    ] {
        run_ok(std::process::Command::new("ip").args(a));
    }
    // an IPv4-only network: IPv6 clients still reach it through the relay
    env.ok(&["network", "create", "app", "--subnet", "10.65.0.0/24"]);
    let web = env.container("app", "web", &["-p", "18080:80", "-p", "[::1]:18081:81"]);
    echo_server(&web.ns, 80);
    echo_server(&web.ns, 81);
    let ps = env.json(&["ps", "--format", "json"]);
    let ports = ps[0]["endpoints"][0]["ports"].to_string();
    assert!(ports.contains("[::1]:18081->81/tcp"), "{ports}");

    let data: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    for addr in [
        "127.0.0.1:18080",
        "[::1]:18080",
        "[2001:db8:100::10]:18080",
        "[::1]:18081",
    ] {
        let back =
            tcp_roundtrip(&host, addr, data.clone()).unwrap_or_else(|e| panic!("{addr}: {e}"));
        assert!(back == data, "data differs via {addr}");
    }
    // [::1] only: not on IPv4
    assert!(tcp_roundtrip(&host, "127.0.0.1:18081", vec![1]).is_err());
    // the port is busy on [::] too: a second publish is refused
    let e = env.fail(&[
        "run",
        "--network",
        "app",
        "-p",
        "[::]:18080:80",
        "--",
        "true",
    ]);
    assert!(e.contains("18080"), "{e}");
    // removing the endpoint frees both listeners
    env.ok(&["rm", "web"]);
    assert!(
        wait_until(Duration::from_secs(5), || tcp_roundtrip(
            &host,
            "[::1]:18080",
            vec![1]
        )
        .is_err()),
        "[::]:18080 still listening"
    );
}

#[test]
fn socket_nat_ipv6() {
    let Some(mut env) = Env::with_host_link("socket_nat_ipv6", &[]) else {
        return;
    };
    let inet = env.inet_ns();
    env.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:68::/64",
        "app",
    ]);
    let c = env.container("app", "c", &[]);
    // TCP: 64 MiB download over IPv6 with a matching checksum; the server
    // sees the host's own IPv6 address
    let blob = env.random_file("blob", 64 << 20);
    let peer = download(&mut env, &c.ns, &inet, INET_IP6, 7000, &blob);
    assert_eq!(peer.ip().to_string(), HOST_IP6, "server saw {peer}");
    // UDP both ways, 1 byte to 10,000 (datagrams past the link's MTU
    // leave the container in fragments: put back together before they go
    // out of a host socket; the answers come back in fragments)
    let from = udp_roundtrips(&c.ns, &inet, INET_IP6, 7001);
    assert!(from.iter().all(|f| f == HOST_IP6), "{from:?}");
    let nat = env.json(&["nat", "ls", "--format", "json"]);
    assert!(ctr(&nat["socket_nat"], "reassembled") >= 4, "{nat}");
    // a fragment that cannot be one (more follow, but 3 bytes of data):
    // a counted drop
    let dropped = ctr(&nat["socket_nat"], "dropped");
    let frame = bad_fragment(&env, "app", &c, INET_IP6);
    let r = in_ns(&c.ns.clone(), move || send_raw("eth0", &[frame]))
        .join()
        .unwrap();
    assert!(r.iter().all(|x| x.is_ok()), "{r:?}");
    assert!(
        wait_until(Duration::from_secs(3), || {
            let n = env.json(&["nat", "ls", "--format", "json"]);
            ctr(&n["socket_nat"], "dropped") > dropped
        }),
        "a bad fragment is counted"
    );
    // ICMPv6 echo through a datagram socket
    assert!(ping6(&env, &c.ns, INET_IP6), "ping6 through the socket NAT");
    // a closed port: refused at once (the host's connection failed)
    let o = env.exec(&c.ns, &["nc", "-z", "-w", "3", INET_IP6, "7999"]);
    assert!(!o.status.success(), "connected to a closed port");
    let nat = env.json(&["nat", "ls", "--format", "json"]);
    assert!(ctr(&nat["socket_nat"], "tcp_refused") >= 1, "{nat}");
    // IPv4 still goes out as before
    let blob4 = env.random_file("blob4", 1 << 20);
    let peer = download(&mut env, &c.ns, &inet, INET_IP, 7002, &blob4);
    assert_eq!(peer.ip().to_string(), HOST_IP);
}

/// An Ethernet frame from container `c` to network `net`'s gateway: an
/// IPv6 fragment to `dst` that says more follow but holds 3 bytes (not a
/// multiple of 8).
fn bad_fragment(env: &Env, net: &str, c: &Ctr, dst: &str) -> Vec<u8> {
    use wire::{frag6, ipv6};
    let gw_mac = parse_mac(env.inspect(net)["gateway_mac"].as_str().unwrap());
    let src: std::net::Ipv6Addr = env.ip6_of(&c.name).parse().unwrap();
    let mut f = Vec::new();
    f.extend_from_slice(&gw_mac);
    f.extend_from_slice(&parse_mac(&c.mac));
    f.extend_from_slice(&[0x86, 0xdd]);
    let mut h = [0u8; ipv6::HDR_LEN];
    let plen = (frag6::LEN + 3) as u16;
    ipv6::emit(&mut h, plen, frag6::PROTO, 64, src, dst.parse().unwrap());
    f.extend_from_slice(&h);
    let mut fh = [0u8; frag6::LEN];
    frag6::emit(&mut fh, ipv6::PROTO_UDP, 0, true, 77);
    f.extend_from_slice(&fh);
    f.extend_from_slice(&[1, 2, 3]);
    f
}

/// 30 UDP request/responses over IPv6 from `client` to an echo server
/// this starts in `server` on [INET_IP6]:`port`, 1 to 1,400 bytes (no
/// fragments); the addresses the server saw them from.
fn udp6_roundtrips(client: &str, server: &str, port: u16) -> Vec<String> {
    let sizes: Vec<usize> = (0..30).map(|i| i * 46).collect();
    udp_echo(client, server, INET_IP6, port, &sizes)
}

#[test]
fn nat66_uplink() {
    let Some(mut env) = Env::with_uplink(
        "nat66_uplink",
        &[
            "--uplink-ip6",
            "2001:db8:113::2/64",
            "--uplink-gateway6",
            INET_IP6,
        ],
    ) else {
        return;
    };
    let inet = env.inet_ns();
    env.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:6a::/64",
        "app",
    ]);
    let c = env.container("app", "c", &[]);
    // a 64 MiB download over IPv6 through NAT66, checksum compared; the
    // server sees the uplink's IPv6 address, not the container's
    let blob = env.random_file("blob", 64 << 20);
    let peer = download(&mut env, &c.ns, &inet, INET_IP6, 7100, &blob);
    assert_eq!(peer.ip().to_string(), UPLINK_IP6, "server saw {peer}");
    // UDP, and ICMPv6 echo (identifier translated)
    let from = udp6_roundtrips(&c.ns, &inet, 7101);
    assert!(from.iter().all(|f| f == UPLINK_IP6), "{from:?}");
    // datagrams up to 10,000 bytes: fragments both ways, each later
    // fragment translated like its first (none dropped)
    let from = udp_roundtrips(&c.ns, &inet, INET_IP6, 7103);
    assert!(from.iter().all(|f| f == UPLINK_IP6), "{from:?}");
    let nat = env.json(&["nat", "ls", "--format", "json"]);
    assert_eq!(ctr(&nat["uplink"]["nat"], "fragments"), 0, "{nat}");
    assert!(ping6(&env, &c.ns, INET_IP6), "ping6 through NAT66");
    // an ICMPv6 error about a translated packet comes back to the
    // container: a closed UDP port in the "internet"
    env.exec(
        &c.ns,
        &[
            "sh",
            "-c",
            "echo x | nc -u -w 2 2001:db8:113::1 7999; echo x | nc -u -w 1 2001:db8:113::1 7999",
        ],
    );
    // the table shows the IPv6 connections with the uplink's address
    let nat = env.json(&["nat", "ls", "--format", "json"]);
    let conns = nat["uplink"]["connections"].to_string();
    assert!(conns.contains("[2001:db8:113::2]:"), "{conns}");
    assert!(ctr(&nat["uplink"]["nat"], "icmp_errors_in") >= 1, "{nat}");
    assert_eq!(nat["uplink"]["ip6"], UPLINK_IP6, "{nat}");
    assert!(nat["uplink"]["gateway6_mac"].is_string(), "{nat}");
    // IPv4 still masqueraded as before
    let blob4 = env.random_file("blob4", 1 << 20);
    let peer = download(&mut env, &c.ns, &inet, INET_IP, 7102, &blob4);
    assert_eq!(peer.ip().to_string(), UPLINK_IP);
    // TCP to the uplink's IPv6 address that no connection owns: refused
    // with a reset (as the owning host's stack would), not left to time out
    let e = in_ns(&inet, || {
        std::net::TcpStream::connect_timeout(
            &"[2001:db8:113::2]:9".parse().unwrap(),
            Duration::from_secs(3),
        )
        .map(|_| ())
    })
    .join()
    .unwrap()
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");

    // published ports on the uplink's IPv6 address (NAT66 destination
    // NAT, as Docker's ip6tables rules): the server answers with the
    // address it sees
    let web = env.container("app", "web", &["-p", "8080:80", "-p", "[::]:8081:81"]);
    for port in [80u16, 81] {
        let (tx, rx) = std::sync::mpsc::channel();
        in_ns(&web.ns, move || {
            let l = std::net::TcpListener::bind(("::", port)).unwrap();
            tx.send(()).unwrap();
            std::thread::spawn(move || {
                for s in l.incoming() {
                    let Ok(mut s) = s else { continue };
                    let peer = s.peer_addr().unwrap().ip().to_string();
                    let _ = std::io::Write::write_all(&mut s, peer.as_bytes());
                }
            });
        });
        rx.recv().unwrap();
    }
    let ask = |ns: &str, port: u16| -> std::io::Result<String> {
        in_ns(ns, move || {
            let to: std::net::SocketAddr = format!("[{UPLINK_IP6}]:{port}").parse().unwrap();
            let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut b = String::new();
            std::io::Read::read_to_string(&mut s, &mut b)?;
            Ok(b)
        })
        .join()
        .unwrap()
    };
    // from the internet over IPv6: the client's own address arrives
    assert_eq!(ask(&inet, 8080).unwrap(), INET_IP6);
    // hairpin: a container through the uplink's IPv6 address
    assert_eq!(ask(&c.ns, 8080).unwrap(), UPLINK_IP6);
    // published on IPv6 addresses only: IPv6 clients reach it, IPv4
    // clients of the uplink's address are refused
    assert_eq!(ask(&inet, 8081).unwrap(), INET_IP6);
    let e = in_ns(&inet, || {
        let to: std::net::SocketAddr = format!("{UPLINK_IP}:8081").parse().unwrap();
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)).map(|_| ())
    })
    .join()
    .unwrap()
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    // withdrawn with the container
    env.ok(&["rm", "web"]);
    let e = ask(&inet, 8080).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}

/// A neighbour advertisement from `from_mac` claiming `target` is at
/// `from_mac` (router and override flags), to `to_mac`/`to`.
fn spoofed_na(from_mac: [u8; 6], src: &str, to_mac: [u8; 6], to: &str, target: &str) -> Vec<u8> {
    use wire::{icmpv6, ipv6};
    let (src, to, target): (std::net::Ipv6Addr, std::net::Ipv6Addr, std::net::Ipv6Addr) = (
        src.parse().unwrap(),
        to.parse().unwrap(),
        target.parse().unwrap(),
    );
    let mut f = Vec::new();
    f.extend_from_slice(&to_mac);
    f.extend_from_slice(&from_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    let mut h = [0u8; 40];
    let n = icmpv6::NA_WITH_TLLA;
    ipv6::emit(&mut h, n as u16, ipv6::PROTO_ICMPV6, 255, src, to);
    f.extend_from_slice(&h);
    let mut m = vec![0u8; n];
    icmpv6::emit_na(
        &mut m,
        icmpv6::NA_ROUTER | icmpv6::NA_OVERRIDE,
        target,
        from_mac,
        src,
        to,
    );
    f.extend_from_slice(&m);
    f
}

#[test]
fn neighbour_spoofing_is_dropped() {
    let Some(mut env) = Env::new("neighbour_spoofing_is_dropped", &[]) else {
        return;
    };
    // the same attack on a network with port security (dropped) and on
    // one without (it works: the frame is one Linux takes)
    env.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:70::/64",
        "safe",
    ]);
    env.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:71::/64",
        "-o",
        "port_security=false",
        "open",
    ]);
    for (net, gw, expect_spoofed) in [("safe", "fd00:70::1", false), ("open", "fd00:71::1", true)] {
        let v = env.container(net, &format!("{net}v"), &[]);
        let a = env.container(net, &format!("{net}a"), &[]);
        assert!(
            ping6(&env, &v.ns, gw),
            "{net}: the victim reaches its gateway"
        );
        let victim6 = env.ip6_of(&v.name);
        let attacker6 = env.ip6_of(&a.name);
        let gw_mac = env.inspect(net)["gateway_mac"]
            .as_str()
            .unwrap()
            .to_string();
        let (am, vm) = (parse_mac(&a.mac), parse_mac(&v.mac));
        let frame = spoofed_na(am, &attacker6, vm, &victim6, gw);
        let before = ctr(&env.counters(net, &a.name), "drops.spoofed");
        let ns = a.ns.clone();
        let r = in_ns(&ns, move || send_raw("eth0", &[frame.clone(), frame]))
            .join()
            .unwrap();
        assert!(r.iter().all(|x| x.is_ok()), "{r:?}");
        std::thread::sleep(Duration::from_millis(300));
        let neigh = env.exec_ok(&v.ns, &["ip", "-6", "neigh", "show", gw]);
        let spoofed = ctr(&env.counters(net, &a.name), "drops.spoofed") - before;
        if expect_spoofed {
            assert!(neigh.contains(&a.mac), "{net}: the control took: {neigh}");
            assert_eq!(spoofed, 0);
        } else {
            assert!(
                neigh.contains(&gw_mac),
                "{net}: gateway entry kept: {neigh}"
            );
            assert_eq!(spoofed, 2, "{net}: both frames counted");
        }
    }
}

#[test]
fn default_bridge_ipv6() {
    let Some(mut env) = Env::new(
        "default_bridge_ipv6",
        &["--ipv6", "--fixed-cidr-v6", "fd00:17::/64"],
    ) else {
        return;
    };
    let n = env.inspect("bridge");
    assert_eq!(n["subnet6"], "fd00:17::/64", "{n}");
    let b1 = env.container("bridge", "b1", &[]);
    let b2 = env.container("bridge", "b2", &[]);
    assert_eq!(env.ip6_of("b1"), "fd00:17::2");
    assert!(ping6(&env, &b1.ns, "fd00:17::1"), "b1 -> gateway");
    assert!(ping6(&env, &b2.ns, "fd00:17::2"), "b2 -> b1");
    // a bad subnet stops the daemon before it starts, in one line
    let o = std::process::Command::new(tapnet_bin())
        .args(["daemon", "--ipv6", "--fixed-cidr-v6", "fd00:17::/121"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(e.contains("--fixed-cidr-v6") && e.contains("/120"), "{e}");
}

#[test]
fn macvlan_dual_stack() {
    let Some(mut env) = Env::new("macvlan_dual_stack", &[]) else {
        return;
    };
    let lan = lan_segment(&env);
    trunked_network(&env, "macvlan", "mv6");
    let c = env.container("mv6", "c", &[]);
    let c6 = env.ip6_of("c");
    assert_eq!(c6, "fd00:79::2");
    let r = env.exec_ok(&c.ns, &["ip", "-6", "route"]);
    assert!(r.contains("default via fd00:79::1"), "{r}");
    // the router on the segment answers neighbour discovery itself
    assert!(
        ping6(&env, &c.ns, "fd00:79::1"),
        "c -> the LAN's IPv6 router"
    );
    let neigh = env.exec_ok(&lan, &["ip", "-6", "neigh", "show", &c6]);
    assert!(neigh.contains(&c.mac), "the LAN sees c's own MAC: {neigh}");
    segment_download(&mut env, &c, &lan, &c6, 7201);
    delete_netns(&lan);
}

/// IPv6 on an ipvlan (l2) network: the segment sees every container at
/// the parent's MAC (neighbour discovery's link-layer options rewritten),
/// and reaches each by its own IPv6 address and its link-local one.
#[test]
fn ipvlan_dual_stack() {
    let Some(mut env) = Env::new("ipvlan_dual_stack", &[]) else {
        return;
    };
    let lan = lan_segment(&env);
    trunked_network(&env, "ipvlan", "iv6");
    let c = env.container("iv6", "c", &[]);
    let d = env.container("iv6", "d", &[]);
    let (c6, d6) = (env.ip6_of("c"), env.ip6_of("d"));
    let parent = parent_mac(&env);
    let parent = parent.as_str();
    // out and back: the router resolves c at the parent's MAC
    assert!(ping6(&env, &c.ns, "fd00:79::1"), "c -> the LAN's router");
    let neigh = env.exec_ok(&lan, &["ip", "-6", "neigh", "show", &c6]);
    assert!(
        neigh.contains(parent) && !neigh.contains(&c.mac),
        "the LAN sees c at the parent's MAC {parent}: {neigh}"
    );
    // the segment starts it: its solicitation for d (multicast) is
    // answered by d, at the parent's MAC; then d's link-local address
    assert!(ping6(&env, &lan, &d6), "the LAN -> d");
    let neigh = env.exec_ok(&lan, &["ip", "-6", "neigh", "show", &d6]);
    assert!(neigh.contains(parent), "{neigh}");
    let d_ll = env.exec_ok(&d.ns, &["ip", "-6", "-o", "addr", "show", "scope", "link"]);
    let d_ll = d_ll
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no link-local address in d: {d_ll}"))
        .to_string();
    assert!(
        ping6(&env, &lan, &format!("{d_ll}%peer0")),
        "the LAN -> d's link-local {d_ll}"
    );
    segment_download(&mut env, &c, &lan, &c6, 7202);
    delete_netns(&lan);
}

/// IPv6 on an ipvlan network in l3 mode: nothing is switched between the
/// containers and the segment; neighbour discovery is answered on both
/// sides with the parent's MAC, and IPv6 goes by destination: to another
/// container directly, to the segment's next hop (the destination inside
/// the subnet, else the gateway) found by tapnet's own solicitation.
#[test]
fn ipvlan_l3_dual_stack() {
    let Some(mut env) = Env::new("ipvlan_l3_dual_stack", &[]) else {
        return;
    };
    let lan = lan_segment(&env);
    // an address beyond the subnet, reached through the gateway
    run_ok(std::process::Command::new("ip").args([
        "-n",
        &lan,
        "addr",
        "add",
        "fd00:99::1/128",
        "dev",
        "lo",
    ]));
    env.ok(&[
        "network",
        "create",
        "-d",
        "ipvlan",
        "-o",
        "parent=lan0",
        "-o",
        "ipvlan_mode=l3",
        "--ipv6",
        "--subnet",
        "10.79.0.0/24",
        "--gateway",
        "10.79.0.1",
        "--subnet",
        "fd00:79::/64",
        "--gateway",
        "fd00:79::1",
        "l3v6",
    ]);
    let c = env.container("l3v6", "c", &[]);
    let _d = env.container("l3v6", "d", &[]);
    let (c6, d6) = (env.ip6_of("c"), env.ip6_of("d"));
    let r = env.exec_ok(&c.ns, &["ip", "-6", "route", "show", "default"]);
    assert!(r.contains("default dev eth0"), "{r}");
    let parent = parent_mac(&env);
    let parent = parent.as_str();
    // c's neighbour for anything is the parent's MAC (answered here)
    assert!(
        ping6(&env, &c.ns, "fd00:79::1"),
        "c -> the segment's router"
    );
    let n = env.exec_ok(&c.ns, &["ip", "-6", "neigh", "show", "fd00:79::1"]);
    assert!(n.contains(parent), "c's neighbour entry: {n}");
    // the segment sees c at the parent's MAC
    let n = env.exec_ok(&lan, &["ip", "-6", "neigh", "show", &c6]);
    assert!(n.contains(parent) && !n.contains(&c.mac), "{n}");
    // beyond the subnet: through the gateway
    assert!(
        ping6(&env, &c.ns, "fd00:99::1"),
        "c -> beyond, via the gateway"
    );
    // container to container, and the segment to a container
    assert!(ping6(&env, &c.ns, &d6), "c -> d");
    assert!(ping6(&env, &lan, &d6), "the segment -> d");
    segment_download(&mut env, &c, &lan, &c6, 7203);
    // an address nobody has on the network is not claimed on the segment
    assert!(!ping6(&env, &lan, "fd00:79::77"), "fd00:79::77 answered");
    // a segment host probing for c's address (duplicate address
    // detection) is told it is taken
    env.exec_ok(
        &lan,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{c6}/64"),
            "dev",
            "peer0",
        ],
    );
    let taken = wait_until(Duration::from_secs(5), || {
        env.exec_ok(&lan, &["ip", "-6", "addr", "show", "dev", "peer0"])
            .contains("dadfailed")
    });
    assert!(taken, "the segment's probe for {c6} went unanswered");
    delete_netns(&lan);
}

/// 16 MiB over IPv6 from the segment's router (fd00:79::1:`port`) to
/// container `c`, checksum compared; the router saw `c6`.
fn segment_download(env: &mut Env, c: &Ctr, lan: &str, c6: &str, port: u16) {
    let blob = env.random_file("blob", 16 << 20);
    let peer = download(env, &c.ns, lan, "fd00:79::1", port, &blob);
    assert_eq!(peer.ip().to_string(), c6);
}

/// The parent's MAC (`lan0` in the daemon's namespace): every ipvlan
/// container's on the segment.
fn parent_mac(env: &Env) -> String {
    env.exec_ok(&env.host_ns, &["cat", "/sys/class/net/lan0/address"])
        .trim()
        .to_string()
}

/// The segment of the trunked tests: a "LAN" namespace behind a veth
/// (`lan0`) of the daemon's namespace, with the router addresses
/// 10.79.0.1/24 and fd00:79::1/64 on its end (`peer0`). Returns its name.
fn lan_segment(env: &Env) -> String {
    let lan = format!("{}lan", env.prefix);
    let host = env.host_ns.clone();
    for a in [
        vec!["netns", "add", &lan],
        vec!["-n", &lan, "link", "set", "lo", "up"],
        vec![
            "-n", &host, "link", "add", "lan0", "type", "veth", "peer", "name", "peer0", "netns",
            &lan,
        ],
        vec!["-n", &host, "link", "set", "lan0", "up"],
        vec!["-n", &lan, "addr", "add", "10.79.0.1/24", "dev", "peer0"],
        vec![
            "-n",
            &lan,
            "addr",
            "add",
            "fd00:79::1/64",
            "dev",
            "peer0",
            "nodad",
        ],
        vec!["-n", &lan, "link", "set", "peer0", "up"],
    ] {
        run_ok(std::process::Command::new("ip").args(a));
    }
    // the "router" is ready once its link-local address has passed
    // duplicate address detection: before, its kernel has not joined the
    // solicited-node groups and leaves solicitations unanswered
    let ready = wait_until(Duration::from_secs(5), || {
        let o = env.exec_ok(
            &lan,
            &["ip", "-6", "addr", "show", "dev", "peer0", "scope", "link"],
        );
        o.contains("inet6") && !o.contains("tentative")
    });
    assert!(ready, "the LAN's interface never became ready");
    lan
}

/// A dual-stack `driver` network `name` on [`lan_segment`]'s lan0.
fn trunked_network(env: &Env, driver: &str, name: &str) {
    env.ok(&[
        "network",
        "create",
        "-d",
        driver,
        "-o",
        "parent=lan0",
        "--ipv6",
        "--subnet",
        "10.79.0.0/24",
        "--gateway",
        "10.79.0.1",
        "--subnet",
        "fd00:79::/64",
        "--gateway",
        "fd00:79::1",
        name,
    ]);
}

#[test]
fn malformed_ipv6_is_counted() {
    use wire::{icmpv6, ipv6};
    let Some(mut env) = Env::new("malformed_ipv6_is_counted", &[]) else {
        return;
    };
    env.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:73::/64",
        "m6",
    ]);
    let c = env.container("m6", "c", &[]);
    assert!(ping6(&env, &c.ns, "fd00:73::1"));
    let gw_mac = parse_mac(env.inspect("m6")["gateway_mac"].as_str().unwrap());
    let me = parse_mac(&c.mac);
    let src: std::net::Ipv6Addr = env.ip6_of("c").parse().unwrap();
    let gw: std::net::Ipv6Addr = "fd00:73::1".parse().unwrap();
    // Ethernet to the gateway's MAC + IPv6 (payload length `plen`, next
    // header `nh`, hop limit 255) + `body`
    let frame = |plen: u16, nh: u8, body: &[u8]| {
        let mut f = Vec::new();
        f.extend_from_slice(&gw_mac);
        f.extend_from_slice(&me);
        f.extend_from_slice(&[0x86, 0xdd]);
        let mut h = [0u8; 40];
        ipv6::emit(&mut h, plen, nh, 255, src, gw);
        f.extend_from_slice(&h);
        f.extend_from_slice(body);
        f
    };
    let mut ns = [0u8; 32];
    icmpv6::emit_ns(&mut ns, gw, me, src, gw);
    let mut bad_sum = ns;
    bad_sum[20] ^= 0xff;
    let mut zero_opt = ns;
    zero_opt[icmpv6::ND_LEN + 1] = 0;
    icmpv6::fill_checksum(&mut zero_opt, src, gw);
    let frames = vec![
        // the payload length says more than the frame holds
        frame(200, 58, &ns),
        // a neighbour solicitation with a wrong checksum
        frame(32, 58, &bad_sum),
        // an option of length 0 (a parser that loops on it never ends)
        frame(32, 58, &zero_opt),
        // a hop-by-hop header chain to the gateway: nothing it answers
        frame(16, 0, &[58, 0, 1, 4, 0, 0, 0, 0, 128, 0, 0, 0, 0, 0, 0, 0]),
        // a header cut in the middle
        frame(0, 58, &[])[..40].to_vec(),
    ];
    let before = env.counters("m6", "c");
    let sum = |v: &serde_json::Value| {
        ctr(v, "drops.malformed")
            + ctr(v, "drops.gateway_unsupported")
            + ctr(v, "drops.runt")
            + ctr(v, "drops.spoofed")
    };
    let ns_c = c.ns.clone();
    let r = in_ns(&ns_c, move || send_raw("eth0", &frames))
        .join()
        .unwrap();
    assert!(r.iter().all(|x| x.is_ok()), "{r:?}");
    let ok = wait_until(Duration::from_secs(3), || {
        sum(&env.counters("m6", "c")) >= sum(&before) + 5
    });
    assert!(ok, "five counted drops: {}", env.counters("m6", "c"));
    // and the gateway still answers
    assert!(ping6(&env, &c.ns, "fd00:73::1"));
}
