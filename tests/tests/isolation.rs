//! Two networks: nothing crosses from one to the other, even when the
//! containers are told the other subnet is on-link (so they ARP for it and
//! send straight at the other container's MAC).

use std::process::Stdio;
use std::time::Duration;
use tapnet_tests::*;

#[test]
fn networks_are_isolated() {
    let Some(mut env) = Env::new("networks_are_isolated", &[]) else {
        return;
    };
    env.ok(&["network", "create", "red", "--subnet", "10.31.1.0/24"]);
    env.ok(&["network", "create", "blue", "--subnet", "10.31.2.0/24"]);
    let r1 = env.container("red", "r1", &[]);
    let r2 = env.container("red", "r2", &[]);
    let b1 = env.container("blue", "b1", &[]);
    // sanity: same network works
    assert!(ping(&env, &r1.ns, &r2.ip.to_string(), 2));

    // via the gateway (default route): the gateway routes nowhere
    assert!(
        !ping(&env, &r1.ns, &b1.ip.to_string(), 2),
        "red reached blue via gateway"
    );

    // on-link: r1 ARPs for b1 directly; b1 ARPs for r1
    env.exec_ok(
        &r1.ns,
        &["ip", "route", "add", "10.31.2.0/24", "dev", "eth0"],
    );
    env.exec_ok(
        &b1.ns,
        &["ip", "route", "add", "10.31.1.0/24", "dev", "eth0"],
    );
    // and even with a static neighbour entry (frames unicast to b1's MAC)
    env.exec_ok(
        &r1.ns,
        &[
            "ip",
            "neigh",
            "replace",
            &b1.ip.to_string(),
            "lladdr",
            &b1.mac,
            "dev",
            "eth0",
        ],
    );
    let before_b1 = env.counters("blue", "b1");
    let before_r2 = env.counters("red", "r2");

    assert!(
        !ping(&env, &r1.ns, &b1.ip.to_string(), 3),
        "red reached blue on-link"
    );
    let lis = env.spawn_in(&b1.ns, &["nc", "-l", "5001"], Stdio::null(), Stdio::null());
    assert!(wait_until(Duration::from_secs(5), || env
        .exec_ok(&b1.ns, &["ss", "-ltn"])
        .contains(":5001")));
    let tcp = env.exec(&r1.ns, &["nc", "-z", "-w", "2", &b1.ip.to_string(), "5001"]);
    assert!(!tcp.status.success(), "TCP connect crossed networks");
    // other direction: b1 ARPs (broadcast) for r1
    assert!(
        !ping(&env, &b1.ns, &r1.ip.to_string(), 2),
        "blue reached red"
    );
    env.stop_bg(lis);

    let after_b1 = env.counters("blue", "b1");
    let after_r2 = env.counters("red", "r2");
    let r1c = env.counters("red", "r1");
    // b1's port got nothing at all from red
    assert_eq!(
        ctr(&after_b1, "tx_frames"),
        ctr(&before_b1, "tx_frames"),
        "frames crossed into blue: {after_b1}"
    );
    // r1's ARP broadcasts were flooded, but only inside red (r2 got them)
    assert!(ctr(&r1c, "rx_flooded") > 0, "{r1c}");
    assert!(ctr(&after_r2, "tx_frames") > ctr(&before_r2, "tx_frames"));
    // b1's ARP broadcasts for r1 reached neither red port as a reply
    assert!(ctr(&after_b1, "rx_frames") > ctr(&before_b1, "rx_frames"));
    let red = env.inspect("red");
    let blue = env.inspect("blue");
    // neither MAC table holds a MAC of the other network
    let macs = |v: &serde_json::Value| -> Vec<String> {
        v["mac_table"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["mac"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(!macs(&red).contains(&b1.mac), "{red}");
    assert!(!macs(&blue).contains(&r1.mac), "{blue}");
}
