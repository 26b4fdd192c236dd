//! MAC learning: entries on the right ports, aging, moves.

use std::time::Duration;
use tapnet_tests::*;

fn table(env: &Env, net: &str) -> Vec<(String, String, u64)> {
    env.inspect(net)["mac_table"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["mac"].as_str().unwrap().to_string(),
                e["endpoint"].as_str().unwrap().to_string(),
                e["port_id"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn learns_on_the_right_ports_and_ages_out() {
    let Some(mut env) = Env::new(
        "learns_on_the_right_ports_and_ages_out",
        &["--mac-aging", "2"],
    ) else {
        return;
    };
    env.ok(&["network", "create", "n", "--subnet", "10.40.0.0/24"]);
    let a = env.container("n", "a", &[]);
    let b = env.container("n", "b", &[]);
    assert!(ping(&env, &a.ns, &b.ip.to_string(), 2));
    let v = env.inspect("n");
    assert_eq!(v["mac_aging_secs"], 2);
    let port = |c: &str| v["endpoints"][c]["port_id"].as_u64().unwrap();
    let t = table(&env, "n");
    assert!(t.contains(&(a.mac.clone(), "a".into(), port("a"))), "{t:?}");
    assert!(t.contains(&(b.mac.clone(), "b".into(), port("b"))), "{t:?}");
    assert_eq!(ctr(&env.counters("n", "a"), "macs_learned"), 1);

    // silence: both entries age out (2 s aging, checked every second)
    assert!(
        wait_until(Duration::from_secs(8), || table(&env, "n").is_empty()),
        "entries did not age out: {:?}",
        table(&env, "n")
    );
    // traffic brings them back (within a second: a helper worker that
    // switches a flow reports its source MACs to the main worker once a
    // second)
    assert!(ping(&env, &b.ns, &a.ip.to_string(), 1));
    assert!(
        wait_until(Duration::from_secs(3), || table(&env, "n").len() == 2),
        "not learned again: {:?}",
        table(&env, "n")
    );
}

#[test]
fn moved_mac_is_relearned() {
    let Some(env) = Env::new("moved_mac_is_relearned", &[]) else {
        return;
    };
    // a MAC moving between ports is what port security forbids: this
    // network goes without it (the switch's move detection under test)
    env.ok(&[
        "network",
        "create",
        "n",
        "--subnet",
        "10.41.0.0/24",
        "-o",
        "port_security=false",
    ]);
    // bare namespaces connected with `network connect --netns`
    let nsa = env.netns("a");
    let nsb = env.netns("b");
    env.ok(&["network", "connect", "n", "a", "--netns", &nsa]);
    env.ok(&[
        "network",
        "connect",
        "n",
        "b",
        "--netns",
        &nsb,
        "--ip",
        "10.41.0.20",
    ]);
    let a = env.ctr("a").unwrap();
    assert!(ping(&env, &nsa, "10.41.0.1", 1));
    assert!(ping(&env, &nsb, "10.41.0.1", 1));
    let v = env.inspect("n");
    let pa = v["endpoints"]["a"]["port_id"].as_u64().unwrap();
    let pb = v["endpoints"]["b"]["port_id"].as_u64().unwrap();
    assert!(table(&env, "n").contains(&(a.mac.clone(), "a".into(), pa)));

    // b takes over a's MAC (a VM migrated, a container recreated, ...)
    env.exec_ok(&nsb, &["ip", "link", "set", "eth0", "address", &a.mac]);
    assert!(ping(&env, &nsb, "10.41.0.1", 2));
    let t = table(&env, "n");
    assert!(
        t.contains(&(a.mac.clone(), "b".into(), pb)),
        "not moved: {t:?}"
    );
    assert!(ctr(&env.counters("n", "b"), "macs_moved_in") >= 1);

    // and back
    env.exec_ok(&nsb, &["ip", "link", "set", "eth0", "down"]);
    assert!(ping(&env, &nsa, "10.41.0.1", 2));
    let t = table(&env, "n");
    assert!(
        t.contains(&(a.mac.clone(), "a".into(), pa)),
        "not moved back: {t:?}"
    );
    assert!(ctr(&env.counters("n", "a"), "macs_moved_in") >= 1);
}
