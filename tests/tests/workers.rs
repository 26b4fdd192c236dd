//! More than one datapath worker (`--datapath-workers 2`): container TAPs
//! get two queues, parallel TCP flows between two containers arrive
//! intact while the helper worker switches part of them itself, what the
//! helper cannot switch (ARP, the gateway) still works through the main
//! worker, the counters add up over both, a container leaves cleanly, and
//! a restart with one worker takes the two-queue TAPs as they are.

use std::process::Stdio;
use std::time::Duration;
use tapnet_tests::*;

/// `tx_queues` of the container's eth0 (the kernel's count of attached
/// queues is real_num_tx_queues; a multi-queue TAP is made with room for
/// 256, a single-queue one with 1).
fn num_tx_queues(env: &Env, ns: &str) -> u64 {
    let out = env.exec_ok(ns, &["ip", "-d", "-j", "link", "show", "eth0"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["num_tx_queues"].as_u64().expect("num_tx_queues")
}

/// `n` concurrent nc transfers of `blob` from `from` to `to_ip`, each on
/// its own port (a flow of its own); every copy must arrive intact.
fn parallel_transfers(
    env: &mut Env,
    from: &str,
    to: &str,
    to_ip: &str,
    blob: &std::path::Path,
    n: u16,
) {
    let mut rxs = Vec::new();
    for i in 0..n {
        let port = (5100 + i).to_string();
        let path = env.dir.join(format!("recv{i}"));
        let f = std::fs::File::create(&path).unwrap();
        rxs.push((
            env.spawn_in(to, &["nc", "-l", &port], Stdio::null(), f.into()),
            path,
        ));
    }
    assert!(
        wait_until(Duration::from_secs(5), || {
            let ss = env.exec_ok(to, &["ss", "-ltn"]);
            (0..n).all(|i| ss.contains(&format!(":{}", 5100 + i)))
        }),
        "receivers did not listen"
    );
    let txs: Vec<usize> = (0..n)
        .map(|i| {
            let port = (5100 + i).to_string();
            env.spawn_in(
                from,
                &["nc", "-N", to_ip, &port],
                std::fs::File::open(blob).unwrap().into(),
                Stdio::null(),
            )
        })
        .collect();
    for tx in txs {
        assert!(
            env.wait_bg(tx, Duration::from_secs(120)).success(),
            "a sender failed"
        );
    }
    let want = sha256(blob);
    for (rx, path) in rxs {
        assert!(
            env.wait_bg(rx, Duration::from_secs(30)).success(),
            "a receiver failed"
        );
        assert_eq!(sha256(&path), want, "{} differs", path.display());
    }
}

#[test]
fn two_workers_share_the_switching() {
    let Some(mut env) = Env::new(
        "two_workers_share_the_switching",
        &["--datapath-workers", "2"],
    ) else {
        return;
    };
    env.ok(&["network", "create", "n1", "--subnet", "10.91.0.0/24"]);
    let c1 = env.container("n1", "c1", &[]);
    let c2 = env.container("n1", "c2", &[]);
    assert!(
        num_tx_queues(&env, &c1.ns) > 1,
        "c1's TAP is not multi-queue"
    );

    // ARP and the gateway go through the main worker, from either queue
    assert!(ping(&env, &c1.ns, "10.91.0.3", 3), "c1 -> c2 ping failed");
    assert!(
        ping(&env, &c2.ns, "10.91.0.1", 2),
        "c2 -> gateway ping failed"
    );

    // 16 flows: the kernel spreads them over both queues by flow hash
    let blob = env.random_file("blob", 16 << 20);
    parallel_transfers(&mut env, &c1.ns, &c2.ns, "10.91.0.3", &blob, 16);

    let v = env.inspect("n1");
    let w = v["datapath_workers"]
        .as_array()
        .expect("datapath_workers")
        .clone();
    assert_eq!(w.len(), 2, "{v:#}");
    let switched = w[1]["switched"].as_u64().unwrap();
    let handed = w[1]["handed_off"].as_u64().unwrap();
    eprintln!("workers after 16 flows: {w:?}");
    assert!(
        switched > 1000,
        "the helper switched {switched} frames: {w:?}"
    );
    // the main worker took what the helper handed over (none dropped)
    assert_eq!(w[0]["handed_off"].as_u64().unwrap(), handed, "{w:?}");
    assert_eq!(w[1]["handoff_drops"].as_u64().unwrap(), 0, "{w:?}");
    // a port's counters are the sum over both workers: every frame the
    // helper switched came in on c1 or c2, and went out of the other
    let c = |n: &str, k: &str| ctr(&v["endpoints"][n]["counters"], k);
    let rx = c("c1", "rx_frames") + c("c2", "rx_frames");
    let tx = c("c1", "tx_frames") + c("c2", "tx_frames");
    assert!(
        rx >= switched && tx >= switched,
        "rx {rx}, tx {tx}, helper {switched}"
    );

    // a container leaves while the other stays: its queues close on both
    // workers, and the device goes
    env.ok(&["rm", "c2"]);
    assert!(
        wait_until(Duration::from_secs(5), || env.ctr("c2").is_none()),
        "c2 still listed"
    );
    assert!(ping(&env, &c1.ns, "10.91.0.1", 1), "c1 lost the gateway");

    // restarted with one worker: c1's two-queue TAP is taken as it is
    env.stop_daemon(libc::SIGTERM);
    env.daemon_args = vec!["--datapath-workers".into(), "1".into()];
    env.start_daemon();
    let c3 = env.container("n1", "c3", &[]);
    assert_eq!(num_tx_queues(&env, &c3.ns), 1, "a new TAP with one worker");
    assert!(
        ping(&env, &c1.ns, &c3.ip.to_string(), 3),
        "c1 -> c3 after the restart"
    );
    let log = env.daemon_log();
    assert!(!log.contains("TUNSETIFF"), "{log}");
}
