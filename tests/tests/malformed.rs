//! Malformed frames sent into a port are dropped and counted by reason; the
//! switch keeps forwarding. (Runt frames and bad virtio-net headers cannot be
//! produced through a kernel TAP; the switch core and the datapath unit tests
//! cover those.)

use tapnet_tests::*;

fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn malformed_frames_are_counted_and_dropped() {
    let Some(mut env) = Env::new("malformed_frames_are_counted_and_dropped", &[]) else {
        return;
    };
    // frames with other ports' MACs as source are what port security
    // drops first (tests/tests/security.rs): here the switch's own checks
    // are under test, so the network goes without it
    env.ok(&[
        "network",
        "create",
        "m",
        "--subnet",
        "10.80.0.0/24",
        "-o",
        "port_security=false",
    ]);
    let a = env.container("m", "a", &[]);
    let b = env.container("m", "b", &[]);
    assert!(ping(&env, &a.ns, &b.ip.to_string(), 1));
    let gw_mac = parse_mac(env.inspect("m")["gateway_mac"].as_str().unwrap());
    let amac = parse_mac(&a.mac);
    let bmac = parse_mac(&b.mac);
    let before_a = env.counters("m", "a");
    let before_b = env.counters("m", "b");

    // the container's interface may send larger frames than its port allows
    env.exec_ok(&a.ns, &["ip", "link", "set", "eth0", "mtu", "9000"]);
    let bcast = [0xff; 6];
    let frames = vec![
        // multicast source MAC (x3)
        frame(bcast, [0x01, 0, 0x5e, 0, 0, 1], 0x0800, &[0; 46]),
        frame(bmac, [0x33, 0x33, 0, 0, 0, 1], 0x0800, &[0; 46]),
        frame(bmac, [0xff; 6], 0x0800, &[0; 46]),
        // all-zero source MAC
        frame(bmac, [0; 6], 0x0800, &[0; 46]),
        // spoofing the gateway's MAC
        frame(bmac, gw_mac, 0x0800, &[0; 46]),
        // oversize: 4000 bytes on a 1500 port, no GSO (x2)
        frame(bmac, amac, 0x0800, &[0x45; 3986]),
        frame(bcast, amac, 0x0806, &[0; 8986]),
        // to the gateway: truncated IPv4, bad IHL, truncated ARP (malformed);
        // IPv6 and an unknown ethertype (unsupported by the gateway)
        frame(gw_mac, amac, 0x0800, &[0x45, 0, 0]),
        frame(gw_mac, amac, 0x0800, &[0x4f; 46]),
        frame(gw_mac, amac, 0x86dd, &[0x60; 60]),
        frame(gw_mac, amac, 0x0806, &[0, 1, 8, 0]),
        frame(gw_mac, amac, 0x1234, &[]),
    ];
    let n = frames.len();
    let res = in_ns(&a.ns, move || send_raw("eth0", &frames))
        .join()
        .unwrap();
    for (i, r) in res.iter().enumerate() {
        assert!(r.is_ok(), "frame {i} not sent: {r:?}");
    }
    env.exec_ok(&a.ns, &["ip", "link", "set", "eth0", "mtu", "1500"]);

    let after_a = env.counters("m", "a");
    let d = |k: &str| ctr(&after_a, &format!("drops.{k}")) - ctr(&before_a, &format!("drops.{k}"));
    assert_eq!(d("bad_src_mac"), 5, "{after_a}");
    assert_eq!(d("oversize"), 2, "{after_a}");
    assert_eq!(d("malformed"), 3, "{after_a}");
    assert_eq!(d("gateway_unsupported"), 2, "{after_a}");
    assert_eq!(d("runt"), 0, "{after_a}");
    assert_eq!(
        ctr(&after_a, "rx_frames") - ctr(&before_a, "rx_frames"),
        n as u64
    );
    // none of them reached b
    let after_b = env.counters("m", "b");
    assert_eq!(
        ctr(&after_b, "tx_frames"),
        ctr(&before_b, "tx_frames"),
        "{after_b}"
    );
    // bad source MACs were not learned
    let t = env.inspect("m")["mac_table"].to_string();
    assert!(
        !t.contains("01:00:5e") && !t.contains("00:00:00:00:00:00"),
        "{t}"
    );

    // the switch still forwards, and the port is still up
    assert!(ping(&env, &a.ns, &b.ip.to_string(), 3));
    assert!(ping(&env, &b.ns, &a.ip.to_string(), 1));
    assert_eq!(env.inspect("m")["endpoints"]["a"]["state"], "up");
}
