//! Memory and scale: an idle endpoint costs little and what it cost comes
//! back when it goes; a thousand containers on one network all reach the
//! gateway and each other, and a broadcast reaches every one of them.
//!
//! The numbers are printed (run with `--nocapture` to see them); the
//! assertions are limits on memory, never on time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tapnet_tests::*;

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Open fds of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Attaches bare namespaces `<prefix>x<tag><i>` for `i` in `range` to
/// `net` as containers `<tag><i>`.
fn attach(env: &Env, net: &str, tag: &str, range: std::ops::Range<usize>) {
    for i in range {
        let ns = env.netns(&format!("{tag}{i}"));
        env.ok(&[
            "network",
            "connect",
            "--netns",
            &ns,
            net,
            &format!("{tag}{i}"),
        ]);
    }
}

fn detach(env: &Env, tag: &str, range: std::ops::Range<usize>) {
    for i in range {
        env.ok(&["rm", &format!("{tag}{i}")]);
        delete_netns(&env.netns_name(&format!("{tag}{i}")));
    }
}

/// Issue: every port owned 32 x 64 KiB of buffers that were never given
/// back; 100 endpoints cost ~80 MB and removing them returned nothing.
#[test]
fn endpoint_memory_is_small_flat_and_reused() {
    let Some(env) = Env::new("scale_memory", &[]) else {
        return;
    };
    env.ok(&["network", "create", "--subnet", "10.77.0.0/22", "m"]);
    let pid = env.daemon_pid().unwrap();
    // a first round warms the allocator and the buffer pool up
    attach(&env, "m", "w", 0..100);
    assert!(ping(&env, &env.netns_name("w0"), "10.77.0.1", 1));
    detach(&env, "w", 0..100);
    let r0 = rss_kib(pid);
    let f0 = fds(pid);
    attach(&env, "m", "a", 0..100);
    // traffic through every buffer-holding path: the gateway answers
    for i in [0, 50, 99] {
        assert!(ping(
            &env,
            &env.netns_name(&format!("a{i}")),
            "10.77.0.1",
            1
        ));
    }
    let r1 = rss_kib(pid);
    let per = (r1.saturating_sub(r0) * 1024) / 100;
    eprintln!("100 endpoints: RSS {r0} KiB -> {r1} KiB: {per} bytes per endpoint");
    assert!(
        per < 64 * 1024,
        "an idle endpoint costs {per} bytes (limit 64 KiB)"
    );
    detach(&env, "a", 0..100);
    let r2 = rss_kib(pid);
    assert_eq!(fds(pid), f0, "fds after removing every endpoint");
    attach(&env, "m", "b", 0..100);
    let r3 = rss_kib(pid);
    detach(&env, "b", 0..100);
    eprintln!("after rm: {r2} KiB; 100 new endpoints: {r3} KiB");
    // the second hundred reuses what the first gave back
    assert!(
        r3 <= r1 + 1024,
        "memory grows with every removal: {r1} KiB, then {r3} KiB for as many endpoints"
    );
}

/// Runs `job(i)` for `i` in `0..n` on a few threads; returns the `i`s for
/// which it returned false.
fn parallel(n: usize, job: impl Fn(usize) -> bool + Send + Sync + 'static) -> Vec<usize> {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let job = Arc::new(job);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (next, failed, job) = (next.clone(), failed.clone(), job.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if !job(i) {
                    failed.lock().unwrap().push(i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut f = failed.lock().unwrap().clone();
    f.sort();
    f
}

fn ping_from(ns: &str, dst: &str) -> bool {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "2", dst])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_thousand_containers_on_one_network() {
    const N: usize = 1000;
    let Some(env) = Env::new("scale_1000", &[]) else {
        return;
    };
    env.ok(&["network", "create", "--subnet", "10.78.0.0/21", "big"]);
    let pid = env.daemon_pid().unwrap();
    let r0 = rss_kib(pid);
    attach(&env, "big", "c", 0..N);
    let r1 = rss_kib(pid);
    eprintln!(
        "{N} endpoints: RSS {r0} KiB -> {r1} KiB ({} bytes per endpoint), {} fds",
        (r1.saturating_sub(r0) * 1024) / N as u64,
        fds(pid)
    );
    let ps = env.json(&["ps", "--format", "json"]);
    let ips: Vec<String> = (0..N)
        .map(|i| {
            let c = ps
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == format!("c{i}"))
                .unwrap_or_else(|| panic!("c{i} not listed"));
            c["endpoints"][0]["ip"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let ns: Arc<Vec<String>> = Arc::new((0..N).map(|i| env.netns_name(&format!("c{i}"))).collect());
    let ips = Arc::new(ips);
    // Every container reaches the gateway and its partner, and answers
    // it (pairs 2k, 2k+1). The kernel's neighbour table is one for all
    // namespaces (gc_thresh3 = 1024 entries, a root-namespace sysctl this
    // test leaves alone; only entries older than 5 s can be collected), so
    // each pair forgets its entries afterwards: 2,000 fresh ones would
    // overflow it. (Pairs, so that no flush hits a ping in progress.)
    let (n2, i2) = (ns.clone(), ips.clone());
    let bad = parallel(N / 2, move |k| {
        let (i, j) = (2 * k, 2 * k + 1);
        let ok = ping_from(&n2[i], "10.78.0.1")
            && ping_from(&n2[j], "10.78.0.1")
            && ping_from(&n2[i], &i2[j])
            && ping_from(&n2[j], &i2[i]);
        for k in [i, j] {
            let _ = std::process::Command::new("ip")
                .args(["-n", &n2[k], "neigh", "flush", "all"])
                .status();
        }
        ok
    });
    if !bad.is_empty() {
        let v = env.inspect("big");
        let i = 2 * bad[0];
        panic!(
            "pairs {bad:?} (c2k, c2k+1) did not reach the gateway or each other; c{i}: {}; c{}: {}",
            v["endpoints"][format!("c{i}")]["counters"],
            i + 1,
            v["endpoints"][format!("c{}", i + 1)]["counters"],
        );
    }
    // one broadcast (an ARP request for an unused address) reaches all
    let tx = |env: &Env| -> Vec<u64> {
        let v = env.inspect("big");
        (0..N)
            .map(|i| ctr(&v["endpoints"][format!("c{i}")]["counters"], "tx_frames"))
            .collect()
    };
    let before = tx(&env);
    let _ = env.exec(&ns[0], &["ping", "-c", "1", "-W", "1", "10.78.7.250"]);
    let after = tx(&env);
    let missed: Vec<usize> = (1..N).filter(|&i| after[i] <= before[i]).collect();
    assert!(
        missed.is_empty(),
        "the broadcast missed {} containers: {missed:?}",
        missed.len()
    );
    let r2 = rss_kib(pid);
    eprintln!("after traffic: RSS {r2} KiB");
}
