//! Port security: a container may speak only as itself. Forged ARP (for
//! another container and for the gateway), a forged source MAC, a forged
//! source IPv4 address and a VLAN-tagged frame are dropped and counted as
//! `spoofed`; the victims' neighbour tables and the MAC table stay right.
//! The same attacks on a network with `-o port_security=false` succeed,
//! which shows the test can fail.

use serde_json::Value;
use std::time::Duration;
use tapnet_tests::*;

fn mac(s: &str) -> [u8; 6] {
    parse_mac(s)
}

fn ip4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

/// A gratuitous ARP reply: "`ip` is at `sha`", broadcast.
fn garp(src: [u8; 6], sha: [u8; 6], ip: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 2];
    a.extend_from_slice(&sha);
    a.extend_from_slice(&ip);
    // target hardware address = sender's: what Linux takes as gratuitous
    a.extend_from_slice(&sha);
    a.extend_from_slice(&ip);
    eth_frame([0xff; 6], src, [8, 6], &a)
}

/// An ICMP echo request from `src` to `dst` (checksums right).
fn ping_frame(dmac: [u8; 6], smac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    fn csum(b: &[u8]) -> [u8; 2] {
        let mut s: u32 = b
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
            .sum();
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        (!(s as u16)).to_be_bytes()
    }
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"spoofed!");
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c);
    let mut ip = vec![
        0x45,
        0,
        0,
        (20 + icmp.len()) as u8,
        0,
        0,
        0x40,
        0,
        64,
        1,
        0,
        0,
    ];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c);
    ip.extend_from_slice(&icmp);
    eth_frame(dmac, smac, [8, 0], &ip)
}

fn neigh_mac(env: &Env, ns: &str, ip: &str) -> String {
    env.exec_ok(ns, &["ip", "neigh", "show", ip])
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

/// Runs every attack on `net` (containers a1 attacker, v2 victim, o3
/// observer); returns (o3's view of v2, o3's view of the gateway, where the
/// MAC table has v2's MAC, a1's spoofed drops).
fn attacks(env: &mut Env, net: &str, subnet: &str, opts: &[&str]) -> (String, String, String, u64) {
    let mut args = vec!["network", "create", net, "--subnet", subnet];
    args.extend_from_slice(opts);
    env.ok(&args);
    let a1 = env.container(net, &format!("{net}a1"), &[]);
    let v2 = env.container(net, &format!("{net}v2"), &[]);
    let o3 = env.container(net, &format!("{net}o3"), &[]);
    let gw = env.inspect(net)["gateway"].as_str().unwrap().to_string();
    // o3 knows v2 and the gateway by their real MACs
    assert!(ping(env, &o3.ns, &v2.ip.to_string(), 1));
    assert!(ping(env, &o3.ns, &gw, 1));
    assert_eq!(neigh_mac(env, &o3.ns, &v2.ip.to_string()), v2.mac);
    let (me, v2mac) = (mac(&a1.mac), mac(&v2.mac));
    send_frames_from(
        &a1.ns,
        vec![
            // ARP poisoning: v2's address and the gateway's are "at" a1
            garp(me, me, ip4(&v2.ip.to_string())),
            garp(me, me, ip4(&gw)),
            // a forged source MAC (v2's)
            eth_frame([0xff; 6], v2mac, [0x88, 0xb5], b"forged-mac"),
            // a forged source address (v2's) to o3
            ping_frame(
                mac(&o3.mac),
                me,
                ip4(&v2.ip.to_string()),
                ip4(&o3.ip.to_string()),
            ),
            // 0.0.0.0 is for DHCP requests only, not a free pass
            ping_frame(mac(&o3.mac), me, [0; 4], ip4(&o3.ip.to_string())),
            // a VLAN-tagged frame (VLAN hopping onto a trunk)
            eth_frame([0xff; 6], me, [0x81, 0], &[0, 10, 0x88, 0xb5, 1, 2, 3]),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let v: Value = env.inspect(net);
    let owner = v["mac_table"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == v2.mac.as_str())
        .map(|m| m["endpoint"].as_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let spoofed = ctr(&v["endpoints"][&a1.name]["counters"], "drops.spoofed");
    (
        neigh_mac(env, &o3.ns, &v2.ip.to_string()),
        neigh_mac(env, &o3.ns, &gw),
        owner,
        spoofed,
    )
}

#[test]
fn port_security_stops_spoofing() {
    let Some(mut env) = Env::new("port_security_stops_spoofing", &[]) else {
        return;
    };
    // without port security the attacks work: the test can fail
    let (v2_seen, gw_seen, owner, spoofed) = attacks(
        &mut env,
        "open",
        "10.61.0.0/24",
        &["-o", "port_security=false"],
    );
    let a1 = env.ctr("opena1").unwrap();
    assert_eq!(
        v2_seen, a1.mac,
        "the ARP poisoning did not even work unprotected"
    );
    assert_eq!(
        gw_seen, a1.mac,
        "gateway poisoning did not work unprotected"
    );
    assert_eq!(
        owner, "opena1",
        "forged MAC did not move v2's entry unprotected"
    );
    assert_eq!(spoofed, 0);

    // with it (the default) nothing gets through, and all is counted
    let (v2_seen, gw_seen, owner, spoofed) = attacks(&mut env, "sec", "10.62.0.0/24", &[]);
    let v2 = env.ctr("secv2").unwrap();
    let gw_mac = env.inspect("sec")["gateway_mac"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(v2_seen, v2.mac, "o3's entry for v2 was poisoned");
    assert_eq!(gw_seen, gw_mac, "o3's entry for the gateway was poisoned");
    assert_eq!(owner, "secv2", "v2's MAC moved to the attacker");
    assert_eq!(spoofed, 6, "each forged frame counted once");
    // the attacker still talks as itself
    let o3 = env.ctr("seco3").unwrap();
    let a1 = env.ctr("seca1").unwrap();
    assert!(ping(&env, &a1.ns, &o3.ip.to_string(), 2));
    let e = env.fail(&["network", "create", "x", "-o", "port_security=maybe"]);
    assert!(e.contains("use true or false"), "{e}");
}

/// Without port security a container may use many MACs, but it gets only
/// its share of the table every network uses (default 64 per port): the
/// rest is counted, not learned, and the others keep learning.
#[test]
fn a_port_gets_only_its_share_of_the_mac_table() {
    let Some(mut env) = Env::new("a_port_gets_only_its_share_of_the_mac_table", &[]) else {
        return;
    };
    env.ok(&[
        "network",
        "create",
        "open",
        "--subnet",
        "10.66.0.0/24",
        "-o",
        "port_security=false",
    ]);
    let a = env.container("open", "a", &[]);
    let b = env.container("open", "b", &[]);
    let frames: Vec<Vec<u8>> = (0..100u8)
        .map(|i| eth_frame([0xff; 6], [2, 0xee, 0, 0, 1, i], [0x88, 0xb5], b"flood"))
        .collect();
    send_frames_from(&a.ns, frames);
    std::thread::sleep(Duration::from_millis(300));
    let v = env.inspect("open");
    let on_a = v["mac_table"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["endpoint"] == "a")
        .count();
    assert_eq!(on_a, 64, "a's share of the table");
    let c = &v["endpoints"]["a"]["counters"];
    assert_eq!(ctr(c, "mac_limit"), 36, "{c}");
    // b still learns and is reached
    assert!(ping(&env, &b.ns, &a.ip.to_string(), 1));
    let v = env.inspect("open");
    assert!(v["mac_table"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["endpoint"] == "b"));
}
