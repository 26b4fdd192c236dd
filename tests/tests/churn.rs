//! Churn: rounds of 200 containers come and go (connect with published
//! ports, rename, NAT'd traffic, disconnect, rm, short `run`s) while two
//! long-lived containers keep a TCP transfer going; afterwards fds,
//! namespaces, TAPs, MAC and NAT entries and memory are back where they
//! started, and the transfer never stalled.
//!
//! `CHURN_SECS` sets how long (default 60 s; the README records a
//! 10-minute run). The numbers are printed (`--nocapture` shows them).

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tapnet_tests::*;

#[derive(Debug, PartialEq, Clone, Copy)]
struct Usage {
    fds: usize,
    namespaces: usize,
    taps: usize,
    macs: usize,
    nat: usize,
    forwards: usize,
    rss_kib: u64,
}

fn usage(env: &Env) -> Usage {
    let pid = env.daemon_pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let list = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    let ours: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&env.prefix))
        .map(String::from)
        .collect();
    let taps = ours
        .iter()
        .map(|ns| {
            let o = Command::new("ip")
                .args(["-n", ns, "-o", "link", "show", "type", "tun"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).lines().count()
        })
        .sum();
    let nat = env.json(&["nat", "ls", "--format", "json"]);
    Usage {
        // the fewest over a second: an API connection the last command
        // left is closed by the daemon a moment after the command ends
        fds: (0..5)
            .map(|i| {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(250));
                }
                std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .unwrap()
                    .count()
            })
            .min()
            .unwrap(),
        namespaces: ours.len(),
        taps,
        macs: env.inspect("ch")["mac_table"]
            .as_array()
            .expect("the MAC table")
            .len(),
        nat: nat["uplink"]["connections"]
            .as_array()
            .expect("the uplink's connection table")
            .len(),
        forwards: nat["published"].as_array().map_or(0, |c| c.len()),
        rss_kib,
    }
}

/// One round: 200 containers through every lifecycle step there is.
fn round(env: &Env, r: usize) {
    let name = |i: usize| format!("r{r}c{i}");
    let mut attached = Vec::new();
    for i in 0..200 {
        let ns = env.netns(&name(i));
        let mut args = vec!["network", "connect", "--netns", &ns, "ch"];
        let n = name(i);
        args.push(&n);
        let p = format!("{}:80", 20000 + i);
        if i % 4 == 0 {
            args.extend_from_slice(&["-p", &p]);
        }
        env.ok(&args);
        attached.push((ns, n));
    }
    for (i, (ns, n)) in attached.iter_mut().enumerate() {
        if i % 5 == 0 {
            let new = format!("{n}x");
            env.ok(&["rename", n, &new]);
            *n = new;
        }
        if i % 10 == 0 {
            // through the packet NAT to "the internet": NAT entries
            let _ = env.exec(ns, &["ping", "-c", "1", "-W", "1", INET_IP]);
        }
    }
    for (i, (ns, n)) in attached.iter().enumerate() {
        if i % 3 == 0 {
            // unpublish and detach: the bare namespace is forgotten
            env.ok(&["network", "disconnect", "ch", n]);
        } else {
            env.ok(&["rm", n]);
        }
        delete_netns(ns);
    }
    // containers tapnet creates, runs and removes
    for _ in 0..2 {
        env.ok(&["run", "--network", "ch", "--", "true"]);
    }
}

#[test]
fn churn_leaves_nothing_behind() {
    let secs: u64 = std::env::var("CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let Some(mut env) = Env::with_uplink("churn", &[]) else {
        return;
    };
    env.ok(&["network", "create", "--subnet", "10.81.0.0/22", "ch"]);
    let a = env.container("ch", "a", &[]);
    let b = env.container("ch", "b", &[]);
    // a warm-up round and a bulk transfer: the allocator and the receive
    // buffer pool (256 x 64 KiB, touched by bulk traffic) reach their
    // working size before the start values are taken
    round(&env, 0);
    let ip = b.ip.to_string();
    // Bulk transfers until the daemon's memory stops growing: 8 streams
    // are spread by the kernel over the TAPs' queues, but which queue a
    // stream takes is a hash, and one run can leave a datapath worker's
    // pool untouched (the suite once started from 33 MB instead of 49 MB
    // and the end looked like growth).
    let mut last = 0u64;
    for i in 0..6 {
        let srv = env.spawn_in(&b.ns, &["iperf3", "-s", "-1"], Stdio::null(), Stdio::null());
        std::thread::sleep(Duration::from_millis(500));
        let warm = env.spawn_in(
            &a.ns,
            &["iperf3", "-c", &ip, "-t", "2", "-P", "8"],
            Stdio::null(),
            Stdio::null(),
        );
        assert!(
            env.wait_bg(warm, Duration::from_secs(30)).success(),
            "warm-up transfer"
        );
        env.wait_bg(srv, Duration::from_secs(10));
        let rss = usage(&env).rss_kib;
        if i > 0 && rss <= last + 1024 {
            break;
        }
        last = rss;
    }
    let start = usage(&env);
    eprintln!("start: {start:?}");
    env.spawn_in(&b.ns, &["iperf3", "-s", "-1"], Stdio::null(), Stdio::null());
    std::thread::sleep(Duration::from_millis(500));
    let out = env.dir.join("iperf.json");
    let dur = (secs + 5).to_string();
    let client = env.spawn_in(
        &a.ns,
        &["iperf3", "-c", &ip, "-t", &dur, "-i", "1", "-J", "-b", "1G"],
        Stdio::null(),
        Stdio::from(File::create(&out).unwrap()),
    );
    let t0 = Instant::now();
    let mut rounds = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        rounds += 1;
        round(&env, rounds);
    }
    let st = env.wait_bg(client, Duration::from_secs(60));
    let end = usage(&env);
    eprintln!(
        "end after {rounds} rounds of 200 containers in {:?}: {end:?}",
        t0.elapsed()
    );
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap())
        .unwrap_or_else(|e| panic!("iperf3 output ({st}): {e}"));
    let secs_bytes: Vec<u64> = v["intervals"]
        .as_array()
        .expect("intervals")
        .iter()
        .map(|i| i["sum"]["bytes"].as_u64().unwrap_or(0))
        .collect();
    let slowest = secs_bytes.iter().min().copied().unwrap_or(0);
    eprintln!(
        "transfer: {} intervals of 1 s, slowest {:.1} Mbit/s, mean {:.1} Mbit/s",
        secs_bytes.len(),
        slowest as f64 * 8.0 / 1e6,
        secs_bytes.iter().sum::<u64>() as f64 * 8.0 / 1e6 / secs_bytes.len().max(1) as f64
    );
    assert!(st.success(), "iperf3 failed: {v}");
    assert!(
        secs_bytes.len() as u64 >= secs && slowest > 0,
        "the transfer stalled: bytes per second {secs_bytes:?}"
    );
    let same = |what: &str, a: usize, b: usize| {
        assert_eq!(a, b, "{what}: {a} at the start, {b} after churn")
    };
    same("daemon fds", start.fds, end.fds);
    same("namespaces", start.namespaces, end.namespaces);
    same("TAP devices", start.taps, end.taps);
    same("MAC table entries", start.macs, end.macs);
    same("NAT connections", start.nat, end.nat);
    same("published forwards", start.forwards, end.forwards);
    // memory: allocator noise, not growth with the rounds
    assert!(
        end.rss_kib <= start.rss_kib + start.rss_kib / 10 + 2048,
        "RSS grew from {} KiB to {} KiB over {rounds} rounds",
        start.rss_kib,
        end.rss_kib
    );
}
