//! Overlay networks across "hosts": an underlay namespace with a kernel
//! bridge, host namespaces on it (each with its own tapnet daemon, state
//! and socket) and a real etcd (Debian's etcd-server) in a namespace of
//! its own on the underlay, started and stopped here.

use std::process::{Command, Stdio};
use std::time::Duration;
use tapnet_tests::cluster::*;
use tapnet_tests::*;

/// Namespaces of one test: `tn_<t><pid>_*`.
fn tag(t: char) -> String {
    format!("{t}{:05x}", std::process::id() & 0xfffff)
}

#[test]
fn overlay_across_three_hosts() {
    if !can_run("overlay_across_three_hosts") {
        return;
    }
    let u = Underlay::new(&tag('o'));
    let mut h1 = u.host("overlay_h1", 1);
    let h2 = u.host("overlay_h2", 2);
    let mut h3 = u.host("overlay_h3", 3);
    // created on host 1, listed everywhere with scope global
    h1.ok(&["network", "create", "-d", "overlay", "ov1"]);
    for h in [&h1, &h2, &h3] {
        let ok = wait_until(Duration::from_secs(10), || {
            let v = h.json(&["network", "ls", "--format", "json"]);
            v.as_array()
                .unwrap()
                .iter()
                .any(|n| n["name"] == "ov1" && n["scope"] == "global" && n["driver"] == "overlay")
        });
        assert!(ok, "ov1 not listed: {}", h.daemon_log());
    }
    let i1 = h1.inspect("ov1");
    assert_eq!(i1["subnet"], "10.0.0.0/24", "{i1}");
    assert_eq!(i1["mtu"], 1450, "the underlay's 1500 less VXLAN's 50");
    assert_eq!(i1["overlay"]["vni"], 4096, "{i1}");
    // a container on host 1 and one on host 3: names and traffic
    let a = h1.container("ov1", "a", &[]);
    let c = h3.container("ov1", "c", &[]);
    assert_ne!(a.ip, c.ip, "the cluster hands out each address once");
    let ok = wait_until(Duration::from_secs(10), || {
        h1.inspect("ov1")["overlay"]["peers"]
            .to_string()
            .contains("\"c\"")
    });
    assert!(ok, "host 1 never learned c: {}", h1.inspect("ov1"));
    let o = h1.ok(&[
        "run",
        "--network",
        "ov1",
        "--",
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        "c",
    ]);
    assert!(
        o.contains("2 received") || o.contains("2 packets received"),
        "{o}"
    );
    assert!(ping(&h3, &c.ns, &a.ip.to_string(), 3));
    // a capture on host 1 sees what the tunnel decapsulates (c's echo
    // requests, inbound on the tunnel's interface) and what it sends back
    require_tools(&["tshark"], "tshark");
    let pcap = h1.dir.join("ov.pcapng");
    let cap = h1.spawn_capture(
        "ov1",
        &["ov1", "-w", pcap.to_str().unwrap(), "-c", "4", "icmp"],
    );
    assert!(ping(&h3, &c.ns, &a.ip.to_string(), 2));
    assert!(h1.wait_bg(cap, Duration::from_secs(10)).success());
    let rows = tshark_fields(
        &pcap,
        &[
            "frame.interface_name",
            "frame.packet_flags_direction",
            "icmp.type",
            "ip.src",
        ],
    );
    let (cip, aip) = (c.ip.to_string(), a.ip.to_string());
    let want = [
        ["overlay@ov1", "0x00000001", "8", &cip],
        ["a@ov1", "0x00000002", "8", &cip],
        ["a@ov1", "0x00000001", "0", &aip],
        ["overlay@ov1", "0x00000002", "0", &aip],
    ];
    assert_eq!(rows, want, "{rows:?}");
    // 100 MB over TCP, segmented and encapsulated, checksum compared
    let blob = h1.random_file("blob", 100 << 20);
    download(&mut h1, &a.ns, &c.ns, &c.ip.to_string(), 7001, &blob);
    // UDP both ways
    let echoed = udp_roundtrips(&a.ns, &c.ns, &c.ip.to_string(), 7002);
    assert!(!echoed.is_empty());
    // c's kernel sent 64 KiB super-frames: host 3 segmented them and
    // sent them with UDP GSO; host 1 received them one datagram each
    let s3 = h3.inspect("ov1")["overlay"]["vtep_counters"].clone();
    assert!(ctr(&s3, "tx_datagrams") > 70_000, "{s3}");
    assert!(ctr(&s3, "tx_gso_sends") > 1_000, "{s3}");
    assert_eq!(ctr(&s3, "tx_errors") + ctr(&s3, "tx_malformed"), 0, "{s3}");
    let s1 = h1.inspect("ov1")["overlay"]["vtep_counters"].clone();
    assert!(ctr(&s1, "rx_datagrams") > 70_000, "{s1}");
    assert_eq!(
        ctr(&s1, "rx_unknown_vni") + ctr(&s1, "rx_bad_flags"),
        0,
        "{s1}"
    );
    // a's ARP for c was answered on host 1 (proxy ARP), not across
    assert!(ctr(&s1, "proxy_arp") >= 1, "{s1}");
    // host 2 has no endpoint: it sees both as peers
    let p2 = h2.inspect("ov1")["overlay"]["peers"].to_string();
    assert!(p2.contains("\"a\"") && p2.contains("\"c\""), "{p2}");
    // another overlay network comes and goes (its tunnel port shares the
    // VTEP's socket): ov1 keeps receiving on every host
    h1.ok(&["network", "create", "-d", "overlay", "ov9"]);
    let ok = wait_until(Duration::from_secs(10), || h3.inspect_ok("ov9").is_some());
    assert!(ok, "ov9 not on host 3: {}", h3.daemon_log());
    h1.ok(&["network", "rm", "ov9"]);
    let ok = wait_until(Duration::from_secs(10), || h3.inspect_ok("ov9").is_none());
    assert!(ok, "ov9 still on host 3");
    assert!(ping(&h3, &c.ns, &a.ip.to_string(), 2), "ov1 after ov9 went");
    assert!(ping(&h1, &a.ns, &c.ip.to_string(), 2), "ov1 after ov9 went");
    drop(h2);
    let _ = &mut h3;
}

/// VXLAN datagrams that are not for this host, or not VXLAN, sent at
/// host 1's VTEP from namespace `ns` (address `from`): counted and
/// dropped.
fn send_junk(ns: &str, from: &str, vni: u32, src_mac: [u8; 6]) {
    let v = vni.to_be_bytes();
    let mut bad_flags = vec![0u8; 8 + 60];
    bad_flags[4..7].copy_from_slice(&v[1..]);
    let mut unknown_vni = vec![0x08u8, 0, 0, 0, 0x00, 0x0f, 0xff, 0];
    unknown_vni.extend_from_slice(&[0u8; 60]);
    // a frame from a MAC that is no endpoint: refused (no injection)
    let mut stranger = vec![0x08u8, 0, 0, 0, v[1], v[2], v[3], 0];
    stranger.extend_from_slice(&[0xff; 6]);
    stranger.extend_from_slice(&src_mac);
    stranger.extend_from_slice(&[0x08, 0x06]);
    stranger.extend_from_slice(&[0u8; 46]);
    let frames = vec![vec![1u8, 2, 3], bad_flags, unknown_vni, stranger];
    let from = format!("{from}:0");
    in_ns(ns, move || {
        let s = std::net::UdpSocket::bind(from).unwrap();
        for f in &frames {
            s.send_to(f, "10.93.0.1:4789").unwrap();
        }
    })
    .join()
    .unwrap();
}

#[test]
fn overlay_survives_faults() {
    if !can_run("overlay_survives_faults") {
        return;
    }
    let mut u = Underlay::new(&tag('f'));
    let h1 = u.host("overlay_f1", 1);
    let mut h2 = u.host("overlay_f2", 2);
    let mut h3 = u.host("overlay_f3", 3);
    let mut h1 = h1;
    h1.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.94.0.0/24",
        "ov1",
    ]);
    h1.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.95.0.0/24",
        "ov2",
    ]);
    h1.ok(&["network", "create", "--subnet", "10.96.0.0/24", "local1"]);
    for h in [&h2, &h3] {
        assert!(wait_until(Duration::from_secs(10), || h
            .ok(&["network", "ls", "--format", "{{.Name}}"])
            .contains("ov2")));
    }
    let a = h1.container("ov1", "a", &[]);
    let b = h2.container("ov1", "b", &[]);
    let c = h3.container("ov1", "c", &[]);
    let x = h3.container("ov2", "x", &[]);
    let l = h1.container("local1", "l", &[]);
    let learned = |h: &Env, n: &str| {
        wait_until(Duration::from_secs(10), || {
            h.inspect("ov1")["overlay"]["peers"]
                .to_string()
                .contains(&format!("\"{n}\""))
        })
    };
    assert!(learned(&h1, "b") && learned(&h1, "c") && learned(&h3, "a"));
    assert!(ping(&h1, &a.ns, &c.ip.to_string(), 2));
    assert!(ping(&h1, &a.ns, &b.ip.to_string(), 2));
    // isolation: another overlay network, and a bridge network, reach
    // nothing on ov1
    assert!(!ping(&h3, &x.ns, &a.ip.to_string(), 2), "ov2 reached ov1");
    assert!(
        !ping(&h1, &l.ns, &a.ip.to_string(), 2),
        "a bridge network reached ov1"
    );
    assert!(!ping(&h1, &a.ns, &x.ip.to_string(), 2), "ov1 reached ov2");

    // junk at the VTEP: counted by reason, the daemon unharmed
    let before = h1.inspect("ov1")["overlay"]["vtep_counters"].clone();
    // from host 3's address (a VTEP of the network) the checks go deep;
    // from any other address nothing is looked at
    send_junk(&h3.host_ns, "10.93.0.3", 4096, [0x02, 0x99, 0, 0, 0, 1]);
    send_junk(&u.etcd_ns, "10.93.0.100", 4096, [0x02, 0x99, 0, 0, 0, 1]);
    let ok = wait_until(Duration::from_secs(5), || {
        let s = &h1.inspect("ov1")["overlay"]["vtep_counters"];
        ctr(s, "rx_unknown_vtep") > ctr(&before, "rx_unknown_vtep")
            && ctr(s, "rx_short") > ctr(&before, "rx_short")
            && ctr(s, "rx_bad_flags") > ctr(&before, "rx_bad_flags")
            && ctr(s, "rx_unknown_vni") > ctr(&before, "rx_unknown_vni")
            && ctr(s, "rx_unknown_src") > ctr(&before, "rx_unknown_src")
    });
    assert!(ok, "{}", h1.inspect("ov1")["overlay"]["vtep_counters"]);

    // etcd stops: what flows keeps flowing; what needs the store fails
    // with one line naming it; local networks are unaffected
    u.stop_etcd();
    assert!(
        ping(&h1, &a.ns, &c.ip.to_string(), 2),
        "traffic stopped with the store"
    );
    let e = h1.fail(&["network", "create", "-d", "overlay", "ov3"]);
    assert!(e.contains("cluster store etcd://10.93.0.100:2379"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    h1.ok(&["network", "create", "--subnet", "10.97.0.0/24", "local2"]);
    // back: every host resyncs, and overlay changes work again
    u.start_etcd();
    for h in [&h1, &h2, &h3] {
        let ok = wait_until(Duration::from_secs(20), || {
            h.daemon_log().matches("connected as host").count() >= 2
        });
        assert!(ok, "no resync: {}", h.daemon_log());
    }
    let ok = wait_until(Duration::from_secs(10), || {
        h1.tapnet(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.98.0.0/24",
            "ov3",
        ])
        .status
        .success()
    });
    assert!(ok, "{}", h1.daemon_log());
    assert!(wait_until(Duration::from_secs(10), || h3
        .ok(&["network", "ls", "--format", "{{.Name}}"])
        .contains("ov3")));

    // host 2 dies: 1 and 3 keep talking; b leaves their tables when its
    // lease expires; host 2 comes back with b
    h2.stop_daemon(libc::SIGKILL);
    assert!(ping(&h1, &a.ns, &c.ip.to_string(), 2));
    let gone = wait_until(Duration::from_secs(25), || {
        !h1.inspect("ov1")["overlay"]["peers"]
            .to_string()
            .contains("\"b\"")
    });
    assert!(
        gone,
        "b still listed after the lease: {}",
        h1.inspect("ov1")
    );
    h2.start_daemon();
    assert!(
        learned(&h1, "b"),
        "b did not come back: {}",
        h2.daemon_log()
    );
    assert!(
        ping(&h1, &a.ns, &b.ip.to_string(), 3),
        "a cannot reach b again"
    );
    // the store away and host 2 restarted: it comes back from its own
    // state (its endpoints, the other hosts' as last seen) and talks
    u.stop_etcd();
    h2.stop_daemon(libc::SIGKILL);
    h2.start_daemon();
    assert!(
        ping(&h2, &b.ns, &a.ip.to_string(), 3),
        "b cannot reach a after a restart without the store: {}",
        h2.daemon_log()
    );
    let _ = (&mut h3, &x, &l);
}

#[test]
fn overlay_addresses_are_unique_under_contention() {
    if !can_run("overlay_addresses_are_unique_under_contention") {
        return;
    }
    const PER_HOST: usize = 50;
    let u = Underlay::new(&tag('c'));
    let hosts: Vec<Env> = (1..=3)
        .map(|i| u.host(&format!("overlay_c{i}"), i))
        .collect();
    hosts[0].ok(&["network", "create", "-d", "overlay", "ov1"]);
    for h in &hosts {
        assert!(wait_until(Duration::from_secs(10), || h
            .ok(&["network", "ls", "--format", "{{.Name}}"])
            .contains("ov1")));
    }
    // every host attaches its 50 at the same time as the others
    std::thread::scope(|s| {
        for (i, h) in hosts.iter().enumerate() {
            s.spawn(move || {
                for k in 0..PER_HOST {
                    let ns = h.netns(&format!("{k}"));
                    h.ok(&[
                        "network",
                        "connect",
                        "ov1",
                        &format!("h{i}c{k}"),
                        "--netns",
                        &ns,
                    ]);
                }
            });
        }
    });
    let mut all = std::collections::BTreeMap::new();
    for h in &hosts {
        let eps = h.inspect("ov1")["endpoints"].clone();
        for (name, e) in eps.as_object().unwrap() {
            let ip = e["ip"].as_str().unwrap().to_string();
            if let Some(other) = all.insert(ip.clone(), name.clone()) {
                panic!("{ip} handed out twice: {other} and {name}");
            }
        }
    }
    assert_eq!(all.len(), 3 * PER_HOST, "{all:?}");
    // the store holds one address per endpoint, each by its holder
    let n = u
        .etcd_get_prefix("/tapnet/v1/ipam/ov1/")
        .lines()
        .filter(|l| l.starts_with("/tapnet/v1/ipam/ov1/"))
        .count();
    assert_eq!(n, 3 * PER_HOST);
    // and every host knows the other hosts' 100
    for h in &hosts {
        let ok = wait_until(Duration::from_secs(10), || {
            h.inspect("ov1")["overlay"]["peers"].as_object().map(|p| {
                p.values()
                    .map(|v| v["endpoints"].as_array().map_or(0, |a| a.len()))
                    .sum::<usize>()
            }) == Some(2 * PER_HOST)
        });
        assert!(ok, "{}", h.inspect("ov1")["overlay"]["peers"]);
    }
}

/// The UDP payloads to `dst`:4789 in a pcap file (Ethernet frames).
fn vxlan_payloads(pcap: &[u8], dst: [u8; 4]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl = u32::from_le_bytes(pcap[off + 8..off + 12].try_into().unwrap()) as usize;
        let Some(f) = pcap.get(off + 16..off + 16 + incl) else {
            break;
        };
        off += 16 + incl;
        if f.len() < 14 + 20 + 8 || f[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &f[14..];
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        if ip[9] != 17 || ip[16..20] != dst || ip.len() < ihl + 8 {
            continue;
        }
        let udp = &ip[ihl..];
        if u16::from_be_bytes([udp[2], udp[3]]) == 4789 {
            out.push(udp[8..].to_vec());
        }
    }
    out
}

/// Sends `msg` over TCP from namespace `from` to `ip`:`port` in `to`;
/// returns what arrived.
fn tcp_message(from: &str, to: &str, ip: std::net::Ipv4Addr, port: u16, msg: &str) -> String {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = in_ns(to, move || {
        let l = std::net::TcpListener::bind((ip, port)).unwrap();
        tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        got
    });
    rx.recv().unwrap();
    let m = msg.to_string();
    in_ns(from, move || {
        let mut s = std::net::TcpStream::connect((ip, port)).unwrap();
        s.write_all(m.as_bytes()).unwrap();
    })
    .join()
    .unwrap();
    srv.join().unwrap()
}

#[test]
fn overlay_encrypted() {
    if !can_run("overlay_encrypted") {
        return;
    }
    require_tools(&["tcpdump"], "tcpdump");
    let u = Underlay::new(&tag('e'));
    let host = |i: u8| {
        let addr = format!("10.93.0.{i}");
        let store = format!("etcd://{ETCD}:2379");
        let env = Env::new_with(
            &format!("overlay_e{i}"),
            &[
                "--cluster-store",
                &store,
                "--cluster-advertise",
                &addr,
                "--overlay-key-rotation",
                "8",
            ],
            &|ns| u.plug(ns, &format!("h{i}"), &addr),
        )
        .unwrap();
        assert!(wait_until(Duration::from_secs(15), || env
            .daemon_log()
            .contains("connected as host")));
        env
    };
    let mut h1 = host(1);
    let mut h2 = host(2);
    h1.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "-o",
        "encrypted",
        "--subnet",
        "10.91.0.0/24",
        "sec",
    ]);
    h1.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.92.0.0/24",
        "pln",
    ]);
    assert!(wait_until(Duration::from_secs(10), || h2
        .ok(&["network", "ls", "--format", "{{.Name}}"])
        .contains("pln")));
    let i = h2.inspect("sec");
    assert_eq!(i["overlay"]["encrypted"], true, "{i}");
    assert_eq!(
        i["mtu"],
        1500 - 50 - 32,
        "sealing's 32 bytes come off the MTU"
    );
    let a = h1.container("sec", "a", &[]);
    let b = h2.container("sec", "b", &[]);
    let p = h1.container("pln", "p", &[]);
    let q = h2.container("pln", "q", &[]);
    for (h, n) in [(&h1, "b"), (&h2, "a")] {
        assert!(wait_until(Duration::from_secs(10), || h.inspect("sec")
            ["overlay"]["peers"]
            .to_string()
            .contains(&format!("\"{n}\""))));
    }
    assert!(wait_until(Duration::from_secs(10), || h1.inspect("pln")
        ["overlay"]["peers"]
        .to_string()
        .contains("\"q\"")));
    // what the underlay carries to host 2 (its port on the bridge)
    let cap = u.dir.join("ul.pcap");
    let dump = tcpdump_to_host2(&u, &cap);
    // capturing once it sees the plain network's pings
    let live = wait_until(Duration::from_secs(10), || {
        ping(&h1, &p.ns, &q.ip.to_string(), 1);
        cap.metadata().is_ok_and(|m| m.len() > 24)
    });
    assert!(live, "tcpdump captured nothing");
    assert!(ping(&h1, &a.ns, &b.ip.to_string(), 2));
    let secret = "TAPNET-SECRET-MARKER-7f3a9c";
    let plain = "TAPNET-PLAIN-MARKER-51b2e0";
    assert_eq!(tcp_message(&a.ns, &b.ns, b.ip, 7100, secret), secret);
    assert_eq!(tcp_message(&p.ns, &q.ns, q.ip, 7101, plain), plain);
    let bytes = stop_tcpdump(dump, &cap);
    let has = |m: &str| bytes.windows(m.len()).any(|w| w == m.as_bytes());
    assert!(
        has(plain),
        "the capture saw no plain overlay traffic ({} bytes, {} datagrams to host 2)",
        bytes.len(),
        vxlan_payloads(&bytes, [10, 93, 0, 2]).len()
    );
    assert!(
        !has(secret),
        "the encrypted network's payload is on the underlay"
    );
    // replays and forgeries at host 2: counted, dropped
    let sealed: Vec<Vec<u8>> = vxlan_payloads(&bytes, [10, 93, 0, 2])
        .into_iter()
        .filter(|d| d.len() > 60 && d[0] & 0x09 == 0x09)
        .collect();
    assert!(!sealed.is_empty(), "no sealed datagram captured");
    let replay = sealed[sealed.len() - 1].clone();
    let mut forged = replay.clone();
    // a fresh sequence number: past the replay check, but the tag fails
    forged[8 + 8..8 + 16].copy_from_slice(&u64::MAX.to_be_bytes());
    let before = h2.inspect("sec")["overlay"]["vtep_counters"].clone();
    // (from host 1's address: what comes from elsewhere is not even looked at)
    in_ns(&h1.host_ns, move || {
        let s = std::net::UdpSocket::bind("10.93.0.1:0").unwrap();
        s.send_to(&replay, "10.93.0.2:4789").unwrap();
        s.send_to(&forged, "10.93.0.2:4789").unwrap();
    })
    .join()
    .unwrap();
    let ok = wait_until(Duration::from_secs(5), || {
        let s = &h2.inspect("sec")["overlay"]["vtep_counters"];
        ctr(s, "rx_replay") > ctr(&before, "rx_replay")
            && ctr(s, "rx_bad_tag") > ctr(&before, "rx_bad_tag")
    });
    assert!(ok, "{}", h2.inspect("sec")["overlay"]["vtep_counters"]);
    // the key rotates (every 8 s here): traffic carries on through it
    for h in [&h1, &h2] {
        let ok = wait_until(Duration::from_secs(30), || {
            h.inspect("sec")["overlay"]["key_id"].as_u64() >= Some(2)
        });
        assert!(ok, "no rotation: {}", h.daemon_log());
    }
    assert!(ping(&h1, &a.ns, &b.ip.to_string(), 3), "after the rotation");
    assert_eq!(tcp_message(&b.ns, &a.ns, a.ip, 7102, secret), secret);
    let s = h1.inspect("sec")["overlay"]["vtep_counters"].clone();
    assert_eq!(ctr(&s, "rx_bad_tag") + ctr(&s, "rx_no_key"), 0, "{s}");
    // sequence numbers (half of each nonce) start above a floor kept in
    // the state directory ahead of the clock, so a clock set back between
    // two runs cannot repeat a nonce
    let floor_file = h1.state_dir().join("seal-seq");
    let read_floor = || -> u64 {
        let s = std::fs::read_to_string(&floor_file).unwrap();
        s.trim().parse().unwrap()
    };
    let now_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    };
    let kept = read_floor();
    // (a minute ahead, stored again every 5 s)
    assert!(
        kept > now_ns() + 40_000_000_000,
        "{kept}: not ahead of the clock"
    );
    // moved along with the clock (stored again every 5 s)
    assert!(
        wait_until(Duration::from_secs(12), || read_floor() > kept),
        "the bound was not moved along"
    );
    // as if the clock had been set back an hour since the last run
    let floor = now_ns() + 3_600_000_000_000;
    h1.stop_daemon(libc::SIGTERM);
    std::fs::write(&floor_file, floor.to_string()).unwrap();
    h1.start_daemon();
    assert!(wait_until(Duration::from_secs(15), || h1
        .daemon_log()
        .matches("connected as host")
        .count()
        >= 2));
    assert!(read_floor() > floor, "the floor was not kept ahead");
    let dump = tcpdump_to_host2(&u, &cap);
    assert!(
        wait_until(Duration::from_secs(10), || ping(
            &h1,
            &a.ns,
            &b.ip.to_string(),
            1
        )),
        "a -> b after host 1's restart"
    );
    let bytes = stop_tcpdump(dump, &cap);
    let seqs: Vec<u64> = vxlan_payloads(&bytes, [10, 93, 0, 2])
        .into_iter()
        .filter(|d| d.len() > 60 && d[0] & 0x09 == 0x09)
        .map(|d| u64::from_be_bytes(d[16..24].try_into().unwrap()))
        .collect();
    assert!(!seqs.is_empty(), "no sealed datagram captured");
    assert!(
        seqs.iter().all(|&q| q > floor),
        "sealed below the kept floor {floor}: {seqs:?}"
    );
    let _ = (&mut h1, &mut h2, &p);
}

/// tcpdump on host 2's port of the underlay bridge (VXLAN only), writing
/// `cap`; running once the file has its header.
fn tcpdump_to_host2(u: &Underlay, cap: &std::path::Path) -> std::process::Child {
    let _ = std::fs::remove_file(cap);
    let dump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &u.ul,
            "tcpdump",
            "--immediate-mode",
            "-i",
            "ph2",
            "-U",
            "-s",
            "0",
            "-w",
        ])
        .arg(cap)
        .args(["udp", "port", "4789"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || cap
        .metadata()
        .is_ok_and(|m| m.len() >= 24)));
    dump
}

/// Stops a [`tcpdump_to_host2`] and returns what it wrote.
fn stop_tcpdump(mut dump: std::process::Child, cap: &std::path::Path) -> Vec<u8> {
    // (what the capture buffered is written before it ends)
    std::thread::sleep(Duration::from_millis(1200));
    unsafe { libc::kill(dump.id() as i32, libc::SIGTERM) };
    let _ = dump.wait();
    std::fs::read(cap).unwrap()
}

#[test]
fn cluster_store_flags_are_checked() {
    // no namespace needed: the daemon refuses before it does anything
    for (store, want) in [
        ("10.0.0.5:2379", "invalid cluster store"),
        ("etcd://10.0.0.5", "is not HOST:PORT"),
        ("consul://10.0.0.5:8500", "expected etcd://"),
    ] {
        let o = Command::new(tapnet_bin())
            .args(["--socket", "/nonexistent/tn.sock", "daemon"])
            .args(["--cluster-store", store, "--cluster-advertise", "10.0.0.1"])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{store}: started");
        assert!(
            e.contains(want) && e.trim().lines().count() == 1,
            "{store}: {e}"
        );
    }
    // one without the other
    let o = Command::new(tapnet_bin())
        .args(["daemon", "--cluster-store", "etcd://10.0.0.5:2379"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--cluster-advertise"));
}

#[test]
fn overlay_dual_stack() {
    if !can_run("overlay_dual_stack") {
        return;
    }
    let u = Underlay::new(&tag('6'));
    let mut h1 = u.host("overlay6_h1", 1);
    let mut h2 = u.host("overlay6_h2", 2);
    h1.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--ipv6",
        "--subnet",
        "10.0.6.0/24",
        "--subnet",
        "fd00:ee::/64",
        "ov6",
    ]);
    let ok = wait_until(Duration::from_secs(10), || {
        h2.inspect_ok("ov6")
            .is_some_and(|n| n["subnet6"] == "fd00:ee::/64")
    });
    assert!(
        ok,
        "host 2 never got ov6 with its IPv6 subnet: {}",
        h2.daemon_log()
    );
    let a = h1.container("ov6", "a", &[]);
    let b = h2.container("ov6", "b", &[]);
    let (a6, b6) = (h1.ip6_of("a"), h2.ip6_of("b"));
    assert_ne!(a6, b6, "the cluster hands out each IPv6 address once");
    // across hosts over IPv6: ping, by name (AAAA from the other host's
    // endpoint), and 32 MiB of TCP (TSO6 super-frames segmented for the
    // tunnel), checksum compared
    // (host 1 knows b first: its solicitation for b is answered there)
    assert!(wait_until(Duration::from_secs(10), || h1.inspect("ov6")
        ["overlay"]["peers"]
        .to_string()
        .contains("\"b\"")));
    let ok = wait_until(Duration::from_secs(10), || {
        h1.exec(&a.ns, &["ping", "-6", "-c", "1", "-W", "1", &b6])
            .status
            .success()
    });
    assert!(ok, "a cannot ping6 b across hosts");
    // proxy neighbour discovery: a learned b's MAC from host 1
    let s1 = h1.inspect("ov6")["overlay"]["vtep_counters"].clone();
    assert!(ctr(&s1, "proxy_nd") >= 1, "{s1}");
    let neigh = h1.exec_ok(&a.ns, &["ip", "-6", "neigh", "show", &b6]);
    let b_mac = h2.inspect("ov6")["endpoints"]["b"]["mac"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !b_mac.is_empty() && neigh.contains(&b_mac),
        "{neigh} / {b_mac}"
    );
    let aaaa = h1.exec_ok(&a.ns, &["dig", "+short", "AAAA", "b", "@fd00:ee::1"]);
    assert_eq!(aaaa.trim(), b6, "b's AAAA on host 1");
    let blob = h1.random_file("blob6", 32 << 20);
    let peer = download(&mut h1, &a.ns, &b.ns, &b6, 7061, &blob);
    assert_eq!(peer.ip().to_string(), a6);
    let s2 = h2.inspect("ov6")["overlay"]["vtep_counters"].clone();
    assert_eq!(ctr(&s2, "tx_errors") + ctr(&s2, "tx_malformed"), 0, "{s2}");
    drop(h2);
}
