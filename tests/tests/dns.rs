//! The embedded DNS resolver, end to end: containers query their gateway
//! (UDP and TCP port 53) through the switch; non-local names go to a fake
//! upstream resolver on the daemon's namespace's loopback.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tapnet_tests::dnsutil::*;
use tapnet_tests::*;

const T: Duration = Duration::from_secs(5);

/// Query `name` from namespace `ns` to `gw` over UDP (or TCP).
fn ask(ns: &str, gw: Ipv4Addr, name: &str, qt: RecordType, tcp: bool) -> Option<Vec<u8>> {
    let q = make_query(0x5151, name, qt, None);
    in_ns(ns, move || {
        if tcp {
            tcp_query(gw, &q, T)
        } else {
            udp_query(gw, &q, T)
        }
    })
    .join()
    .unwrap()
}

fn a(ns: &str, gw: Ipv4Addr, name: &str) -> (ResponseCode, Vec<Ipv4Addr>) {
    let m = parse(&ask(ns, gw, name, RecordType::A, false).expect("no answer"));
    (m.metadata.response_code, addrs(&m))
}

#[test]
fn containers_resolve_each_other() {
    let Some(mut env) = Env::new("containers_resolve_each_other", &[]) else {
        return;
    };
    let seen = in_ns(&env.host_ns, fake_upstream).join().unwrap();
    env.ok(&["network", "create", "app", "--subnet", "10.53.0.0/24"]);
    let gw: Ipv4Addr = "10.53.0.1".parse().unwrap();
    let web = env.container("app", "web", &["--alias", "www", "--alias", "api"]);
    let web2 = env.container("app", "web2", &["--alias", "www"]);
    let c = env.container("app", "client", &[]);

    // names, case-insensitive, name.network, aliases shared by two
    assert_eq!(a(&c.ns, gw, "web"), (ResponseCode::NoError, vec![web.ip]));
    assert_eq!(a(&c.ns, gw, "WeB."), (ResponseCode::NoError, vec![web.ip]));
    assert_eq!(
        a(&c.ns, gw, "web2.app"),
        (ResponseCode::NoError, vec![web2.ip])
    );
    assert_eq!(a(&c.ns, gw, "api"), (ResponseCode::NoError, vec![web.ip]));
    let (rc, first) = a(&c.ns, gw, "www");
    assert_eq!(rc, ResponseCode::NoError);
    let mut sorted = first.clone();
    sorted.sort();
    let mut want = vec![web.ip, web2.ip];
    want.sort();
    assert_eq!(sorted, want, "the alias answers with both containers");
    let (_, second) = a(&c.ns, gw, "www");
    assert_ne!(first, second, "order rotates between answers");
    // NODATA: the name exists, but has no AAAA
    let m = parse(&ask(&c.ns, gw, "web", RecordType::AAAA, false).unwrap());
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    // reverse lookup
    let rev = format!(
        "{}.{}.{}.{}.in-addr.arpa.",
        web.ip.octets()[3],
        web.ip.octets()[2],
        web.ip.octets()[1],
        web.ip.octets()[0]
    );
    let m = parse(&ask(&c.ns, gw, &rev, RecordType::PTR, false).unwrap());
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].data.to_string(), "web.app.");
    // over TCP too
    let m = parse(&ask(&c.ns, gw, "web", RecordType::A, true).expect("TCP answer"));
    assert_eq!(addrs(&m), vec![web.ip]);
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing local went upstream"
    );

    // other names: forwarded, the upstream's answer passed back unchanged
    let q = make_query(0x7777, "up.example.", RecordType::A, None);
    let q2 = q.clone();
    let got = in_ns(&c.ns, move || udp_query(gw, &q2, T))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        upstream_answer(&q).unwrap(),
        "forwarded answer changed"
    );
    let q = make_query(0x7778, "up.example.", RecordType::A, None);
    let q2 = q.clone();
    let got = in_ns(&c.ns, move || tcp_query(gw, &q2, T))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        upstream_answer(&q).unwrap(),
        "forwarded TCP answer changed"
    );
    assert_eq!(a(&c.ns, gw, "nope.example").0, ResponseCode::NXDomain);
    // a dead upstream: SERVFAIL, fast
    let t0 = Instant::now();
    assert_eq!(a(&c.ns, gw, "slow.example").0, ResponseCode::ServFail);
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "SERVFAIL took {:?}",
        t0.elapsed()
    );

    // through the C library, in a `tapnet run` container: resolv.conf is
    // the container's own (bind mount), the host's file is untouched
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();
    let o = env.ok(&[
        "run",
        "--network",
        "app",
        "--dns-search",
        "corp.test",
        "--dns-option",
        "ndots:2",
        "--",
        "sh",
        "-c",
        "cat /etc/resolv.conf; getent hosts web; getent hosts up.example",
    ]);
    assert!(o.contains("nameserver 10.53.0.1"), "{o}");
    assert!(
        o.contains("search corp.test") && o.contains("options ndots:2"),
        "{o}"
    );
    assert!(
        o.contains(&format!("{}  ", web.ip)) || o.contains(&format!("{} ", web.ip)),
        "{o}"
    );
    assert!(o.contains("192.0.2.10"), "{o}");
    assert_eq!(std::fs::read("/etc/resolv.conf").ok(), host_resolv);

    // upstreams per network and per container
    in_ns(&env.host_ns, || {
        fake_upstream_on(5353, "192.0.2.20".parse().unwrap());
        fake_upstream_on(5454, "192.0.2.30".parse().unwrap());
    })
    .join()
    .unwrap();
    env.ok(&[
        "network",
        "create",
        "own",
        "--subnet",
        "10.53.1.0/24",
        "--dns",
        "127.0.0.1:5353",
    ]);
    let o1 = env.container("own", "o1", &[]);
    let o2 = env.container("own", "o2", &["--dns", "127.0.0.1:5454"]);
    let ogw: Ipv4Addr = "10.53.1.1".parse().unwrap();
    assert_eq!(
        a(&o1.ns, ogw, "up.example").1,
        vec!["192.0.2.20".parse::<Ipv4Addr>().unwrap()]
    );
    assert_eq!(
        a(&o2.ns, ogw, "up.example").1,
        vec!["192.0.2.30".parse::<Ipv4Addr>().unwrap()]
    );
    assert_eq!(
        a(&c.ns, gw, "up.example").1,
        vec!["192.0.2.10".parse::<Ipv4Addr>().unwrap()]
    );

    // a container that exits is gone from DNS at once
    let (host, bin, sock) = (
        env.host_ns.clone(),
        env.bin.to_str().unwrap().to_string(),
        env.sock.to_str().unwrap().to_string(),
    );
    let brief = env.spawn_in(
        &host,
        &[
            &bin,
            "--socket",
            &sock,
            "run",
            "--network",
            "app",
            "--name",
            "brief",
            "--",
            "sleep",
            "1.5",
        ],
        std::process::Stdio::null(),
        std::process::Stdio::null(),
    );
    assert!(wait_until(T, || a(&c.ns, gw, "brief").0 == ResponseCode::NoError));
    assert!(env.wait_bg(brief, T).success());
    assert_eq!(a(&c.ns, gw, "brief").0, ResponseCode::NXDomain);

    // changes take effect at once: rename, disconnect, rm
    env.ok(&["rename", "web2", "web3"]);
    assert_eq!(a(&c.ns, gw, "web3"), (ResponseCode::NoError, vec![web2.ip]));
    assert_eq!(a(&c.ns, gw, "web2").0, ResponseCode::NXDomain); // now upstream's
    env.ok(&["network", "disconnect", "app", "web3"]);
    assert_eq!(a(&c.ns, gw, "www"), (ResponseCode::NoError, vec![web.ip]));
    env.ok(&["rm", "web"]);
    assert_eq!(a(&c.ns, gw, "web").0, ResponseCode::NXDomain);
    assert_eq!(a(&c.ns, gw, "www").0, ResponseCode::NXDomain);
}

#[test]
fn scopes_bridge_truncation_and_hostile_queries() {
    let Some(mut env) = Env::new("scopes_bridge_truncation_and_hostile_queries", &[]) else {
        return;
    };
    in_ns(&env.host_ns, fake_upstream).join().unwrap();
    env.ok(&["network", "create", "front", "--subnet", "10.54.1.0/24"]);
    env.ok(&["network", "create", "back", "--subnet", "10.54.2.0/24"]);
    let gw: Ipv4Addr = "10.54.1.1".parse().unwrap();
    let api = env.container("front", "api", &[]);
    let lone = env.container("front", "lone", &[]);
    let db = env.container("back", "db", &[]);
    // api is on both networks: it resolves db, lone does not
    env.ok(&["network", "connect", "back", "api", "--alias", "backend"]);
    assert_eq!(a(&api.ns, gw, "db"), (ResponseCode::NoError, vec![db.ip]));
    assert_eq!(a(&lone.ns, gw, "db").0, ResponseCode::NXDomain);
    // the alias is scoped to back: db sees it, lone (front only) does not
    let back_gw: Ipv4Addr = "10.54.2.1".parse().unwrap();
    assert_eq!(
        a(&db.ns, back_gw, "backend").1,
        vec!["10.54.2.3".parse::<Ipv4Addr>().unwrap()]
    );
    assert_eq!(a(&lone.ns, gw, "backend").0, ResponseCode::NXDomain);

    // the default bridge: no names (as in Docker), resolv.conf without the gateway
    let b1 = env.container("bridge", "b1", &[]);
    let bgw: Ipv4Addr = "172.17.0.1".parse().unwrap();
    assert_eq!(a(&b1.ns, bgw, "b1").0, ResponseCode::NXDomain);
    let o = env.ok(&["run", "--", "cat", "/etc/resolv.conf"]);
    assert!(!o.contains("nameserver 172.17.0.1"), "{o}");
    // a network created without names
    env.ok(&[
        "network",
        "create",
        "quiet",
        "--subnet",
        "10.54.3.0/24",
        "--no-dns-names",
    ]);
    let q1 = env.container("quiet", "q1", &[]);
    assert_eq!(
        a(&q1.ns, "10.54.3.1".parse().unwrap(), "q1").0,
        ResponseCode::NXDomain
    );

    // many containers behind one alias (40 A records, 652 bytes): the UDP answer does not fit 512
    // bytes and says so (TC); TCP carries all of it
    for i in 0..40 {
        let ns = env.netns(&format!("m{i}"));
        env.ok(&[
            "network",
            "connect",
            "front",
            &format!("m{i}"),
            "--netns",
            &ns,
            "--alias",
            "many",
        ]);
    }
    let m = parse(&ask(&lone.ns, gw, "many", RecordType::A, false).unwrap());
    assert!(m.metadata.truncation, "TC not set");
    let m = parse(&ask(&lone.ns, gw, "many", RecordType::A, true).unwrap());
    assert_eq!(addrs(&m).len(), 40);
    // with EDNS (1232 bytes) it fits over UDP, and the answer carries OPT
    let q = make_query(9, "many.", RecordType::A, Some(4096));
    let m = parse(
        &in_ns(&lone.ns, move || udp_query(gw, &q, T))
            .join()
            .unwrap()
            .unwrap(),
    );
    assert!(!m.metadata.truncation && m.edns.is_some());
    assert_eq!(addrs(&m).len(), 40);

    // hostile queries: FORMERR or silence, never a crash
    let before = env.inspect("front")["dns"]["stats"].clone();
    let good = make_query(0x0102, "api.", RecordType::A, None);
    let mut loop_q = vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    loop_q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]); // name points at itself
    let mut huge = vec![0xab, 0xce, 1, 0];
    huge.extend_from_slice(&[0xff; 8]); // 65535 of everything, no data
    let cases: Vec<(Vec<u8>, Option<ResponseCode>)> = vec![
        (good[..good.len() - 3].to_vec(), Some(ResponseCode::FormErr)), // truncated
        (loop_q, Some(ResponseCode::FormErr)),
        (huge, Some(ResponseCode::FormErr)),
        (vec![1, 2, 3], None), // no room for an ID
        (
            {
                let mut r = good.clone();
                r[2] |= 0x80; // a response: never answered
                r
            },
            None,
        ),
    ];
    for (i, (q, want)) in cases.into_iter().enumerate() {
        let got = in_ns(&lone.ns, move || {
            udp_query(gw, &q, Duration::from_millis(800))
        })
        .join()
        .unwrap();
        match want {
            Some(rc) => {
                let m = parse(&got.unwrap_or_else(|| panic!("case {i}: no answer")));
                assert_eq!(m.metadata.response_code, rc, "case {i}");
            }
            None => assert!(got.is_none(), "case {i}: answered"),
        }
    }
    // the same garbage over TCP, then a good query on a fresh connection
    let q = vec![0u8; 5];
    let r = in_ns(&lone.ns, move || {
        tcp_query(gw, &q, Duration::from_millis(800))
    })
    .join()
    .unwrap();
    assert!(r.is_none());
    assert_eq!(
        a(&lone.ns, gw, "api"),
        (ResponseCode::NoError, vec![api.ip])
    );
    let after = env.inspect("front")["dns"]["stats"].clone();
    assert!(
        ctr(&after, "formerr") >= ctr(&before, "formerr") + 3,
        "{after}"
    );
    assert!(
        ctr(&after, "dropped") >= ctr(&before, "dropped") + 2,
        "{after}"
    );

    // names survive a daemon restart
    env.stop_daemon(libc::SIGTERM);
    env.start_daemon();
    assert_eq!(a(&api.ns, gw, "db"), (ResponseCode::NoError, vec![db.ip]));
}

#[test]
fn bridge_names_when_the_daemon_says_so() {
    let Some(mut env) = Env::new(
        "bridge_names_when_the_daemon_says_so",
        &["--bridge-dns-names"],
    ) else {
        return;
    };
    let b1 = env.container("bridge", "b1", &[]);
    let b2 = env.container("bridge", "b2", &[]);
    let gw: Ipv4Addr = "172.17.0.1".parse().unwrap();
    assert_eq!(a(&b2.ns, gw, "b1"), (ResponseCode::NoError, vec![b1.ip]));
    assert_eq!(env.inspect("bridge")["dns"]["names"], true);
    let o = env.ok(&["run", "--", "cat", "/etc/resolv.conf"]);
    assert!(o.contains("nameserver 172.17.0.1"), "{o}");
}

/// One client cannot hold the resolver's TCP connections by connecting and
/// waiting: an idle one is closed (after 10 s), and 16 idle ones do not
/// keep a 17th client from being answered once they are.
#[test]
fn idle_dns_tcp_connections_are_closed() {
    let Some(mut env) = Env::new("idle_dns_tcp_connections_are_closed", &[]) else {
        return;
    };
    env.ok(&["network", "create", "app", "--subnet", "10.54.0.0/24"]);
    let gw: Ipv4Addr = "10.54.0.1".parse().unwrap();
    let web = env.container("app", "web", &[]);
    let c = env.container("app", "client", &[]);
    let hog = in_ns(&c.ns, move || {
        use std::io::Read;
        let conns: Vec<std::net::TcpStream> = (0..16)
            .filter_map(|_| std::net::TcpStream::connect((gw, 53)).ok())
            .collect();
        let t0 = std::time::Instant::now();
        // each is closed by the server (EOF or reset) without a byte sent
        let closed = conns
            .into_iter()
            .filter(|s| {
                let mut s = s;
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut b = [0u8; 1];
                matches!(s.read(&mut b), Ok(0) | Err(_))
            })
            .count();
        (closed, t0.elapsed())
    });
    let (closed, took) = hog.join().unwrap();
    assert_eq!(closed, 16, "idle connections left open");
    assert!(took < Duration::from_secs(30), "{took:?}");
    // and TCP queries are served again
    let r = ask(&c.ns, gw, "web", RecordType::A, true).expect("a TCP answer");
    assert_eq!(addrs(&parse(&r)), vec![web.ip]);
}

/// One container cannot hold the resolver's forwarding: at most 256 of its
/// queries wait for an upstream at once; beyond that it gets SERVFAIL at
/// once (counted as `throttled`), and local names keep resolving.
#[test]
fn forwarded_queries_in_flight_are_capped_per_container() {
    let Some(mut env) = Env::new("dns_inflight", &[]) else {
        return;
    };
    // an upstream that never answers: every forwarded query waits
    in_ns(&env.host_ns, || {
        let s = std::net::UdpSocket::bind("127.0.0.1:53").unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 2048];
            while s.recv_from(&mut b).is_ok() {}
        });
    })
    .join()
    .unwrap();
    env.ok(&["network", "create", "d", "--subnet", "10.69.0.0/24"]);
    let greedy = env.container("d", "greedy", &[]);
    let other = env.container("d", "other", &[]);
    let gw: Ipv4Addr = "10.69.0.1".parse().unwrap();
    // paced sends: a burst could overrun the resolver's queue (counted as
    // service_busy drops), which is another limit than the one tested here
    let send = |ns: String, from: u16, n: u16| {
        in_ns(&ns, move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for i in from..from + n {
                let q = make_query(i, &format!("q{i}.example"), RecordType::A, None);
                s.send_to(&q, (gw, 53)).unwrap();
                if i % 8 == 7 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            // what comes back within 800 ms was not forwarded (forwarded
            // queries wait at least a second for the dead upstream)
            let t0 = Instant::now();
            let mut early = 0;
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut b = [0u8; 2048];
            while t0.elapsed() < Duration::from_millis(800) {
                if let Ok(n) = s.recv(&mut b) {
                    assert_eq!(
                        parse(&b[..n]).metadata.response_code,
                        ResponseCode::ServFail
                    );
                    early += 1;
                }
            }
            early
        })
        .join()
        .unwrap()
    };
    // 256 wait for the upstream; none is answered yet
    assert_eq!(
        send(greedy.ns.clone(), 0, 256),
        0,
        "forwarded queries answered early"
    );
    let forwarded = ctr(&env.inspect("d")["dns"]["stats"], "forwarded");
    // the container's next queries are answered SERVFAIL at once
    let more = (256 - forwarded.min(256)) as u16 + 30;
    let early = send(greedy.ns.clone(), 256, more);
    assert!(
        early >= 20,
        "{early} of {more} queries beyond the 256 in flight answered at once ({forwarded} forwarded)"
    );
    let stats = env.inspect("d")["dns"]["stats"].clone();
    assert!(ctr(&stats, "throttled") >= early as u64, "{stats}");
    // another container's local names are not affected
    let a = ask(&other.ns, gw, "greedy", RecordType::A, false).expect("an answer");
    assert_eq!(addrs(&parse(&a)), vec![greedy.ip]);
}

/// Forwarded answers come from the cache until their TTL runs out: the
/// upstream sees one query per name per TTL; negative answers are kept for
/// their SOA's negative TTL; a hit carries the query's ID and the TTL
/// left; `--dns-cache 0` turns it off.
#[test]
fn forwarded_answers_are_cached_for_their_ttl() {
    let Some(mut env) = Env::new("dns_cache", &[]) else {
        return;
    };
    let seen = in_ns(&env.host_ns, fake_upstream).join().unwrap();
    env.ok(&["network", "create", "c", "--subnet", "10.71.0.0/24"]);
    let c = env.container("c", "client", &[]);
    let gw: Ipv4Addr = "10.71.0.1".parse().unwrap();
    let upstream = || seen.load(std::sync::atomic::Ordering::Relaxed);
    let query = |id: u16, name: &str| {
        let q = make_query(id, name, RecordType::A, None);
        let ns = c.ns.clone();
        parse(
            &in_ns(&ns, move || udp_query(gw, &q, T))
                .join()
                .unwrap()
                .expect("an answer"),
        )
    };

    let first = query(1, "up.example");
    assert_eq!(
        addrs(&first),
        vec!["192.0.2.10".parse::<Ipv4Addr>().unwrap()]
    );
    assert_eq!(upstream(), 1);
    std::thread::sleep(Duration::from_millis(1100));
    let again = query(2, "UP.example");
    assert_eq!(again.metadata.id, 2, "the hit answers the query's ID");
    assert_eq!(again.queries[0].name().to_ascii(), "UP.example.");
    assert_eq!(addrs(&again), addrs(&first));
    assert!(
        again.answers[0].ttl < 1234,
        "TTL left: {}",
        again.answers[0].ttl
    );
    assert_eq!(upstream(), 1, "the second query came from the cache");

    // TTL 2: kept two seconds, then asked again
    query(3, "short.example");
    query(4, "short.example");
    assert_eq!(upstream(), 2);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(addrs(&query(5, "short.example")).len(), 1);
    assert_eq!(upstream(), 3, "an expired answer is asked for again");

    // negative: NXDOMAIN with an SOA is kept (its negative TTL, 2 s);
    // without an SOA it is not
    for id in [6, 7] {
        assert_eq!(
            query(id, "gone.example").metadata.response_code,
            ResponseCode::NXDomain
        );
    }
    assert_eq!(upstream(), 4);
    for id in [8, 9] {
        assert_eq!(
            query(id, "nope.example").metadata.response_code,
            ResponseCode::NXDomain
        );
    }
    assert_eq!(upstream(), 6, "NXDOMAIN without an SOA is not kept");
    let stats = env.inspect("c")["dns"]["stats"].clone();
    assert_eq!(ctr(&stats, "cached"), 3, "{stats}");
    assert_eq!(ctr(&stats, "forwarded"), 9, "{stats}");

    // off
    let Some(mut off) = Env::new("dns_cache_off", &["--dns-cache", "0"]) else {
        return;
    };
    let seen = in_ns(&off.host_ns, fake_upstream).join().unwrap();
    off.ok(&["network", "create", "c", "--subnet", "10.71.0.0/24"]);
    let c = off.container("c", "client", &[]);
    for id in 1..=3u16 {
        let q = make_query(id, "up.example", RecordType::A, None);
        let ns = c.ns.clone();
        in_ns(&ns, move || udp_query(gw, &q, T))
            .join()
            .unwrap()
            .expect("an answer");
    }
    assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(ctr(&off.inspect("c")["dns"]["stats"], "cached"), 0);
}
