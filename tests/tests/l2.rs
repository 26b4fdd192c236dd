//! Two containers on one network: ARP, ping both ways, a 128 MiB TCP
//! transfer whose checksum matches, UDP datagrams (small, MTU-sized and
//! fragmented) echoed back.

use std::net::UdpSocket;
use std::process::Stdio;
use std::time::Duration;
use tapnet_tests::*;

#[test]
fn two_containers_arp_ping_tcp_udp() {
    let Some(mut env) = Env::new("two_containers_arp_ping_tcp_udp", &[]) else {
        return;
    };
    env.ok(&["network", "create", "n1", "--subnet", "10.88.0.0/24"]);
    let c1 = env.container("n1", "c1", &[]);
    let c2 = env.container("n1", "c2", &[]);
    assert_eq!(c1.ip.to_string(), "10.88.0.2");
    assert_eq!(c2.ip.to_string(), "10.88.0.3");

    // inside the container: eth0 with the MAC, address, MTU, default route, lo up
    let link = env.exec_ok(&c1.ns, &["ip", "-o", "link", "show", "eth0"]);
    assert!(
        link.contains(&c1.mac) && link.contains("mtu 1500"),
        "{link}"
    );
    let addr = env.exec_ok(&c1.ns, &["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains("10.88.0.2/24"), "{addr}");
    let route = env.exec_ok(&c1.ns, &["ip", "route", "show", "default"]);
    assert!(route.contains("via 10.88.0.1 dev eth0"), "{route}");
    let lo = env.exec_ok(&c1.ns, &["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");

    // ping both ways; ARP resolved to the other container's MAC
    assert!(ping(&env, &c1.ns, "10.88.0.3", 3), "c1 -> c2 ping failed");
    assert!(ping(&env, &c2.ns, "10.88.0.2", 3), "c2 -> c1 ping failed");
    let neigh = env.exec_ok(&c1.ns, &["ip", "neigh", "show", "10.88.0.3"]);
    assert!(neigh.contains(&c2.mac), "c1's ARP entry for c2: {neigh}");
    let neigh = env.exec_ok(&c2.ns, &["ip", "neigh", "show", "10.88.0.2"]);
    assert!(neigh.contains(&c1.mac), "c2's ARP entry for c1: {neigh}");

    // TCP: 128 MiB with nc, checksum compared
    let blob = env.random_file("blob", 128 << 20);
    let recv_path = env.dir.join("recv");
    let recv = std::fs::File::create(&recv_path).unwrap();
    let rx = env.spawn_in(&c2.ns, &["nc", "-l", "5000"], Stdio::null(), recv.into());
    assert!(
        wait_until(Duration::from_secs(5), || {
            env.exec_ok(&c2.ns, &["ss", "-ltn"]).contains(":5000")
        }),
        "receiver did not listen"
    );
    let tx = env.spawn_in(
        &c1.ns,
        &["nc", "-N", "10.88.0.3", "5000"],
        std::fs::File::open(&blob).unwrap().into(),
        Stdio::null(),
    );
    assert!(
        env.wait_bg(tx, Duration::from_secs(120)).success(),
        "sender failed"
    );
    assert!(
        env.wait_bg(rx, Duration::from_secs(30)).success(),
        "receiver failed"
    );
    assert_eq!(
        std::fs::metadata(&recv_path).unwrap().len(),
        128 << 20,
        "received length"
    );
    assert_eq!(sha256(&blob), sha256(&recv_path), "TCP payload checksum");

    // UDP echo: 300 datagrams, sizes from 1 byte to fragmented 8000 bytes
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_ns(&c2.ns, move || {
        let s = UdpSocket::bind("0.0.0.0:6000").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        while let Ok((len, from)) = s.recv_from(&mut buf) {
            if &buf[..len] == b"stop" {
                break;
            }
            s.send_to(&buf[..len], from).unwrap();
            n += 1;
        }
        n
    });
    ready_rx.recv().unwrap();
    let client = in_ns(&c1.ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect("10.88.0.3:6000").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let sizes = [1usize, 18, 64, 512, 1472, 1473, 4000, 8000];
        let mut buf = vec![0u8; 65536];
        for i in 0..300usize {
            let len = sizes[i % sizes.len()];
            let msg: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            s.send(&msg).unwrap();
            let n = s
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("datagram {i} ({len} B) not echoed: {e}"));
            assert_eq!(&buf[..n], &msg[..], "datagram {i} content");
        }
        s.send(b"stop").unwrap();
    });
    client.join().expect("UDP client");
    assert_eq!(server.join().expect("UDP server"), 300);

    // the switch saw it: counters on both ports, no drops but flooding of ARP
    let a = env.counters("n1", "c1");
    let b = env.counters("n1", "c2");
    assert!(ctr(&a, "rx_bytes") >= 128 << 20, "c1 port {a}");
    assert!(ctr(&b, "tx_bytes") >= 128 << 20, "c2 port {b}");
    assert!(ctr(&a, "tx_frames") > 0 && ctr(&b, "rx_frames") > 0);
    let drops = |c: &serde_json::Value| -> u64 {
        c["drops"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum()
    };
    assert_eq!(drops(&a) + drops(&b), 0, "drops: c1 {a} c2 {b}");
}
