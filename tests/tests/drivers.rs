//! Network drivers and modes with real traffic: `none`, `host`,
//! `container:NAME`; macvlan (bridge, private, VLAN, restart) and ipvlan
//! against a "LAN" namespace on the parent's segment; the errors.

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;
use tapnet_tests::*;

/// A veth from the daemon's namespace (`host_if`, up, no address) to the
/// namespace `lan` (`peer_if` with `peer_cidr`, up).
fn lan_link(env: &Env, lan: &str, host_if: &str, peer_if: &str, peer_cidr: Option<&str>) {
    run_ok(Command::new("ip").args([
        "-n",
        &env.host_ns,
        "link",
        "add",
        host_if,
        "type",
        "veth",
        "peer",
        "name",
        peer_if,
        "netns",
        lan,
    ]));
    run_ok(Command::new("ip").args(["-n", &env.host_ns, "link", "set", host_if, "up"]));
    if let Some(c) = peer_cidr {
        run_ok(Command::new("ip").args(["-n", lan, "addr", "add", c, "dev", peer_if]));
    }
    run_ok(Command::new("ip").args(["-n", lan, "link", "set", peer_if, "up"]));
}

/// `tapnet WORDS` (split on spaces) must succeed; its output.
fn ok_words(env: &Env, words: &str) -> String {
    env.ok(&words.split_whitespace().collect::<Vec<_>>())
}

/// A fresh daemon and a "LAN" namespace behind one veth (see
/// [`lan_link`]); None when the test is skipped.
fn lan_env(
    test: &str,
    host_if: &str,
    peer_if: &str,
    peer_cidr: Option<&str>,
) -> Option<(Env, String)> {
    let env = Env::new(test, &[])?;
    let lan = lan_ns(&env, "lan");
    lan_link(&env, &lan, host_if, peer_if, peer_cidr);
    Some((env, lan))
}

/// Kills the daemon (SIGKILL), starts it again, and waits until `ns`
/// reaches `ip` again (the endpoints came back).
fn crash_and_reach(env: &mut Env, ns: &str, ip: &str) -> bool {
    env.stop_daemon(libc::SIGKILL);
    env.start_daemon();
    wait_until(Duration::from_secs(10), || ping(env, ns, ip, 1))
}

/// The MAC of interface `ifname` in the daemon's namespace.
fn host_mac(env: &Env, ifname: &str) -> String {
    let path = format!("/sys/class/net/{ifname}/address");
    env.exec_ok(&env.host_ns, &["cat", &path])
        .trim()
        .to_string()
}

fn lan_ns(env: &Env, short: &str) -> String {
    let ns = format!("{}{short}", env.prefix);
    run_ok(Command::new("ip").args(["netns", "add", &ns]));
    run_ok(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
    ns
}

fn ps(env: &Env, name: &str) -> Option<Value> {
    env.json(&["ps", "--format", "json"])
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

/// `tapnet run ARGS -- CMD` in the background; waits until `ps` lists it.
fn run_bg(env: &mut Env, name: &str, args: &[&str], cmd: &[&str]) -> Value {
    let mut a = vec!["run", "--name", name];
    a.extend_from_slice(args);
    a.push("--");
    a.extend_from_slice(cmd);
    let idx = env.spawn_tapnet(&a);
    let mut found = None;
    wait_until(Duration::from_secs(10), || {
        found = ps(env, name);
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "container {name} did not come up: {}",
            std::fs::read_to_string(env.bg_log(idx)).unwrap_or_default()
        )
    })
}

fn links(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

fn peer_script() -> String {
    format!("{}/rawpeer.py", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn none_host_and_container_modes() {
    let Some(mut env) = Env::new("none_host_and_container_modes", &[]) else {
        return;
    };
    // none: a namespace with only lo, up
    let n = run_bg(&mut env, "n1", &["--network", "none"], &["sleep", "3600"]);
    assert_eq!(n["network_mode"], "none");
    let ns = n["netns"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let out = env.exec_ok(&ns, &["ip", "-o", "link"]);
    assert_eq!(links(&out), vec!["lo"], "{out}");
    assert!(out.contains("UP") || out.contains("UNKNOWN"), "{out}");
    let err = env.fail(&["network", "connect", "bridge", "n1"]);
    assert!(err.contains("network mode none"), "{err}");
    let err = env.fail(&["run", "--network", "none", "--ip", "10.1.1.1", "--", "true"]);
    assert!(err.contains("--ip"), "{err}");
    let ls = env.ok(&["network", "ls"]);
    for (name, driver) in [("bridge", "bridge"), ("host", "host"), ("none", "null")] {
        assert!(
            ls.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.get(1) == Some(&name) && w.get(2) == Some(&driver) && w.get(3) == Some(&"local")
            }),
            "{name} ({driver}) missing from:\n{ls}"
        );
    }
    assert!(env.fail(&["network", "rm", "host"]).contains("pre-defined"));
    assert!(env
        .fail(&["network", "create", "none"])
        .contains("already exists"));
    assert!(env
        .fail(&["network", "create", "-d", "host", "h2"])
        .contains("only one instance"));

    // host: the command runs in the daemon's network namespace; -p warns
    let want = env.exec_ok(&env.host_ns.clone(), &["readlink", "/proc/self/ns/net"]);
    let o = env.tapnet(&[
        "run",
        "--network",
        "host",
        "-p",
        "8080:80",
        "--",
        "readlink",
        "/proc/self/ns/net",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), want);
    let warn = String::from_utf8_lossy(&o.stderr);
    assert!(
        warn.contains("WARNING") && warn.contains("published ports are discarded"),
        "{warn}"
    );

    // container:c1 shares c1's interfaces, addresses and loopback
    env.ok(&["network", "create", "web", "--subnet", "10.41.0.0/24"]);
    let c1 = env.container("web", "c1", &[]);
    let got = env.dir.join("got");
    let sink = std::fs::File::create(&got).unwrap();
    let srv = env.spawn_in(
        &c1.ns,
        &["nc", "-l", "127.0.0.1", "7000"],
        Stdio::null(),
        sink.into(),
    );
    assert!(wait_until(Duration::from_secs(5), || env
        .exec_ok(&c1.ns, &["ss", "-ltn"])
        .contains("127.0.0.1:7000")));
    let o = env.tapnet(&[
        "run",
        "--network",
        "container:c1",
        "--",
        "sh",
        "-c",
        "ip -o addr show eth0; echo hello-from-sharer | nc -N 127.0.0.1 7000",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("inet {}/24", c1.ip)),
        "the sharer does not see c1's address: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    // the sharer's run removed itself, not c1 (same namespace path)
    assert!(ps(&env, "c1").is_some(), "the sharer's exit removed c1");
    env.wait_bg(srv, Duration::from_secs(5));
    assert_eq!(
        std::fs::read_to_string(&got).unwrap(),
        "hello-from-sharer\n"
    );
    for bad in [
        vec![
            "run",
            "--network",
            "container:c1",
            "-p",
            "80:80",
            "--",
            "true",
        ],
        vec![
            "run",
            "--network",
            "container:c1",
            "--ip",
            "10.41.0.9",
            "--",
            "true",
        ],
    ] {
        let e = env.fail(&bad);
        assert!(e.contains("container:c1"), "{e}");
    }
    assert!(env
        .fail(&["run", "--network", "container:nope", "--", "true"])
        .contains("no such container: nope"));

    // a long-running sharer, shown by ps; when c1 goes it keeps only lo
    let probe = env.dir.join("links");
    let script = format!(
        "while true; do ip -o link > {p}.tmp; mv {p}.tmp {p}; sleep 0.2; done",
        p = probe.display()
    );
    let s = run_bg(
        &mut env,
        "s1",
        &["--network", "container:c1"],
        &["sh", "-c", &script],
    );
    assert_eq!(s["network_mode"], "container:c1");
    assert!(env
        .ok(&["ps"])
        .lines()
        .any(|l| l.starts_with("s1") && l.contains("container:c1")));
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&probe).is_ok_and(|t| links(&t).contains(&"eth0".to_string()))
    }));
    let e = env.fail(&["network", "connect", "web", "s1"]);
    assert!(e.contains("container:c1"), "{e}");
    env.ok(&["rm", "c1"]);
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&probe)
            .is_ok_and(|t| links(&t) == vec!["lo"])),
        "after c1's removal the sharer still has: {:?}",
        std::fs::read_to_string(&probe)
    );
    assert!(ps(&env, "s1").is_some(), "the sharer is still listed");

    // a host container outlives a daemon restart (its namespace is the
    // daemon's, whatever its PID)
    run_bg(&mut env, "h1", &["--network", "host"], &["sleep", "3600"]);
    env.stop_daemon(libc::SIGKILL);
    env.start_daemon();
    let h = ps(&env, "h1").expect("host container kept over a restart");
    assert_eq!(
        h["netns"],
        format!("/proc/{}/ns/net", env.daemon_pid().unwrap())
    );
}

#[test]
fn macvlan_bridge_private_vlan_and_restart() {
    let Some((mut env, lan)) = lan_env(
        "macvlan_bridge_private_vlan_and_restart",
        "lan0",
        "peer0",
        Some("10.77.0.1/24"),
    ) else {
        return;
    };
    lan_link(&env, &lan, "lan1", "peer1", Some("10.78.0.1/24"));
    ok_words(
        &env,
        "network create -d macvlan --subnet 10.77.0.0/24 --gateway 10.77.0.1 -o parent=lan0 mv",
    );
    ok_words(&env, "network create -d macvlan --subnet 10.78.0.0/24 --gateway 10.78.0.1 -o parent=lan1 -o macvlan_mode=private mvp");
    let ls = env.ok(&["network", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.contains(" mv ") && l.contains("macvlan")),
        "{ls}"
    );
    let c1 = env.container("mv", "c1", &["--mac-address", "02:aa:bb:cc:dd:01"]);
    let c2 = env.container("mv", "c2", &[]);
    assert_eq!(c1.mac, "02:aa:bb:cc:dd:01");

    // the peer on the segment, and its neighbour table: the container's own MAC
    assert!(
        ping(&env, &c1.ns, "10.77.0.1", 3),
        "c1 cannot reach the LAN peer"
    );
    let neigh = env.exec_ok(&lan, &["ip", "neigh", "show", &c1.ip.to_string()]);
    assert!(
        neigh.contains("02:aa:bb:cc:dd:01"),
        "peer's neighbour entry: {neigh}"
    );
    assert!(
        ping(&env, &lan, &c2.ip.to_string(), 2),
        "the peer cannot reach c2"
    );
    // the gateway's route: the default route goes to the LAN router
    let r = env.exec_ok(&c1.ns, &["ip", "route", "show", "default"]);
    assert!(r.contains("via 10.77.0.1"), "{r}");
    // bridge mode: containers reach each other inside the switch
    assert!(
        ping(&env, &c1.ns, &c2.ip.to_string(), 2),
        "bridge mode c1 -> c2"
    );

    // names resolve as on a user-defined bridge (a resolver of tapnet's at
    // a link-local address of the network's; the segment cannot reach it)
    let o = env.tapnet(&["run", "--network", "mv", "--", "getent", "hosts", "c2"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with(&format!("{} ", c2.ip)),
        "c2 did not resolve: {} {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let resolv = env.exec_ok(&c1.ns, &["ip", "route", "show"]);
    let dns_ip = resolv
        .lines()
        .find(|l| l.starts_with("169.254.") && l.contains("scope link"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("")
        .to_string();
    assert!(dns_ip.starts_with("169.254."), "{resolv}");
    // even a LAN host that puts it on its link gets no answer
    env.exec_ok(
        &lan,
        &[
            "ip",
            "route",
            "add",
            &format!("{dns_ip}/32"),
            "dev",
            "peer0",
        ],
    );
    assert!(
        !ping(&env, &lan, &dns_ip, 1),
        "the LAN reached the resolver"
    );

    // 100 MB each way, intact
    let blob = env.random_file("blob", 100 << 20);
    download(&mut env, &c1.ns, &lan, "10.77.0.1", 5001, &blob);
    download(&mut env, &lan, &c1.ns, &c1.ip.to_string(), 5002, &blob);

    // private mode: each reaches the peer, never each other
    let p1 = env.container("mvp", "p1", &[]);
    let p2 = env.container("mvp", "p2", &[]);
    assert!(ping(&env, &p1.ns, "10.78.0.1", 2));
    assert!(ping(&env, &p2.ns, "10.78.0.1", 2));
    assert!(
        !ping(&env, &p1.ns, &p2.ip.to_string(), 2),
        "private mode let p1 reach p2"
    );
    // even when p1 knows p2's MAC: the switch drops the frames
    env.exec_ok(
        &p1.ns,
        &[
            "ip",
            "neigh",
            "replace",
            &p2.ip.to_string(),
            "lladdr",
            &p2.mac,
            "dev",
            "eth0",
        ],
    );
    assert!(
        !ping(&env, &p1.ns, &p2.ip.to_string(), 2),
        "private mode let p1 reach p2 by its MAC"
    );
    let v = env.inspect("mvp");
    assert!(ctr(&v, "counters.drops.isolated") > 0, "{v:#}");

    // inspect: the driver, its options and the trunk's counters
    let v = env.inspect("mv");
    assert_eq!(v["driver"], "macvlan");
    assert_eq!(v["options"]["parent"], "lan0");
    assert_eq!(v["options"]["macvlan_mode"], "bridge");
    assert!(
        ctr(&v["trunk"], "counters.rx_frames") > 1000,
        "{:#}",
        v["trunk"]
    );
    assert!(
        ctr(&v["trunk"], "counters.tx_frames") > 1000,
        "{:#}",
        v["trunk"]
    );

    // duplicate, multicast and zero MACs
    assert!(env
        .fail(&[
            "network",
            "connect",
            "mv",
            "c2x",
            "--netns",
            &env.netns("m1"),
            "--mac-address",
            "02:aa:bb:cc:dd:01"
        ])
        .contains("already used by c1"));
    assert!(env
        .fail(&[
            "run",
            "--network",
            "mv",
            "--mac-address",
            "01:00:5e:00:00:01",
            "--",
            "true"
        ])
        .contains("multicast"));
    assert!(env
        .fail(&[
            "run",
            "--network",
            "mv",
            "--mac-address",
            "00:00:00:00:00:00",
            "--",
            "true"
        ])
        .contains("all zero"));

    // restart: the macvlan endpoints come back
    assert!(
        crash_and_reach(&mut env, &c1.ns, "10.77.0.1"),
        "c1 lost the LAN after a restart"
    );
    assert!(
        ping(&env, &lan, &c2.ip.to_string(), 2),
        "c2 lost the LAN after a restart"
    );
    assert!(
        !ping(&env, &p1.ns, &p2.ip.to_string(), 1),
        "private mode lost on restart"
    );
}

#[test]
fn macvlan_vlans_are_tagged_and_isolated() {
    let Some((mut env, lan)) = lan_env(
        "macvlan_vlans_are_tagged_and_isolated",
        "trunk0",
        "peer0",
        None,
    ) else {
        return;
    };
    ok_words(&env, "network create -d macvlan --subnet 10.79.10.0/24 --gateway 10.79.10.1 -o parent=trunk0.10 v10");
    ok_words(
        &env,
        "network create -d macvlan --subnet 10.79.0.0/24 --gateway 10.79.0.1 -o parent=trunk0 u0",
    );
    let v = env.container("v10", "v1", &[]);
    let u = env.container("u0", "u1", &[]);
    // the peer answers only frames tagged 10, with frames tagged 10
    let log = std::fs::File::create(env.dir.join("peer.log")).unwrap();
    let peer = env.spawn_in(
        &lan,
        &[
            "python3",
            &peer_script(),
            "peer",
            "peer0",
            "10",
            "10.79.10.1",
            "8",
        ],
        Stdio::null(),
        log.into(),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        ping(&env, &v.ns, "10.79.10.1", 3),
        "no tagged round trip; peer saw: {}",
        std::fs::read_to_string(env.dir.join("peer.log")).unwrap_or_default()
    );
    env.wait_bg(peer, Duration::from_secs(15));
    let seen = std::fs::read_to_string(env.dir.join("peer.log")).unwrap();
    assert!(seen.lines().any(|l| l == "tagged 10"), "{seen}");
    assert!(
        !seen
            .lines()
            .any(|l| l.starts_with("tagged") && l != "tagged 10"),
        "{seen}"
    );

    // what the wire carries reaches only the network of its VLAN
    let mut caps = Vec::new();
    for (ns, file) in [(&v.ns, "cap-v"), (&u.ns, "cap-u")] {
        let f = std::fs::File::create(env.dir.join(file)).unwrap();
        caps.push(env.spawn_in(
            ns,
            &["python3", &peer_script(), "capture", "eth0", "3"],
            Stdio::null(),
            f.into(),
        ));
    }
    std::thread::sleep(Duration::from_millis(700));
    env.exec_ok(&lan, &["python3", &peer_script(), "probe", "peer0"]);
    for c in caps {
        env.wait_bg(c, Duration::from_secs(10));
    }
    let read = |f: &str| -> Vec<String> {
        std::fs::read_to_string(env.dir.join(f))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("88b"))
            .map(|s| s.to_string())
            .collect()
    };
    assert_eq!(read("cap-v"), vec!["88b6"], "VLAN 10's container");
    assert_eq!(
        read("cap-u"),
        vec!["88b5"],
        "the untagged network's container"
    );
}

#[test]
fn ipvlan_shares_the_parent_mac() {
    let Some((mut env, lan)) = lan_env(
        "ipvlan_shares_the_parent_mac",
        "lan0",
        "peer0",
        Some("10.80.0.1/24"),
    ) else {
        return;
    };
    ok_words(
        &env,
        "network create -d ipvlan --subnet 10.80.0.0/24 --gateway 10.80.0.1 -o parent=lan0 iv",
    );
    let parent_mac = host_mac(&env, "lan0");
    let i1 = env.container("iv", "i1", &[]);
    let i2 = env.container("iv", "i2", &[]);
    assert!(
        ping(&env, &i1.ns, "10.80.0.1", 3),
        "i1 cannot reach the peer"
    );
    assert!(
        ping(&env, &lan, &i2.ip.to_string(), 3),
        "the peer cannot reach i2"
    );
    assert!(ping(&env, &i1.ns, &i2.ip.to_string(), 2), "i1 -> i2");
    let o = env.tapnet(&["run", "--network", "iv", "--", "getent", "hosts", "i1"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with(&format!("{} ", i1.ip)),
        "i1 did not resolve: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for c in [&i1, &i2] {
        let n = env.exec_ok(&lan, &["ip", "neigh", "show", &c.ip.to_string()]);
        assert!(
            n.contains(&parent_mac),
            "peer sees {n} for {}, not {parent_mac}",
            c.name
        );
    }
    let blob = env.random_file("blob", 20 << 20);
    download(&mut env, &i1.ns, &lan, "10.80.0.1", 5003, &blob);
    download(&mut env, &lan, &i2.ns, &i2.ip.to_string(), 5004, &blob);
    assert!(
        crash_and_reach(&mut env, &i2.ns, "10.80.0.1"),
        "ipvlan endpoint lost after a restart"
    );
}

#[test]
fn driver_errors_leave_state_unchanged() {
    let Some((mut env, lan)) =
        lan_env("driver_errors_leave_state_unchanged", "eth7", "peer7", None)
    else {
        return;
    };
    ok_words(
        &env,
        "network create -d macvlan --subnet 10.81.0.0/24 -o parent=eth7 m1",
    );
    let before = env.ok(&["network", "ls"]);
    let cases: &[(&[&str], &str)] = &[
        (&["-d", "frob", "x"], "unknown network driver \"frob\""),
        (&["-d", "macvlan", "x"], "need a parent interface"),
        (
            &["-d", "macvlan", "-o", "parent=eth9", "x"],
            "parent interface eth9 does not exist",
        ),
        (
            &["-d", "macvlan", "-o", "parent=eth7", "x"],
            "already used by macvlan network m1",
        ),
        (
            &["-d", "ipvlan", "-o", "parent=eth7", "x"],
            "already used by macvlan network m1",
        ),
        (
            &["-d", "macvlan", "-o", "parent=eth7.5000", "x"],
            "VLAN id 5000 in parent eth7.5000 is outside 1-4094",
        ),
        (
            &["-d", "macvlan", "-o", "parent=eth7.0", "x"],
            "outside 1-4094",
        ),
        (
            &[
                "-d",
                "macvlan",
                "-o",
                "parent=eth7.12",
                "-o",
                "colour=red",
                "x",
            ],
            "unknown option \"colour\" for driver macvlan",
        ),
        (
            &[
                "-d",
                "macvlan",
                "-o",
                "parent=eth7.12",
                "-o",
                "macvlan_mode=loud",
                "x",
            ],
            "unknown macvlan_mode \"loud\"",
        ),
        (
            &["-d", "bridge", "-o", "parent=eth7", "x"],
            "unknown option \"parent\" for driver bridge",
        ),
        (
            &["-d", "macvlan", "-o", "parent=eth7.12", "--internal", "x"],
            "--internal does not apply",
        ),
        // a bare key is an empty value (Docker's `-o encrypted`)
        (&["-o", "novalue", "x"], "unknown option \"novalue\""),
        (&["-o", "=x", "x"], "invalid option"),
    ];
    for (args, want) in cases {
        let mut a = vec!["network", "create"];
        a.extend_from_slice(args);
        let e = env.fail(&a);
        assert!(e.contains(want), "{a:?}: {e:?} lacks {want:?}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    assert_eq!(env.ok(&["network", "ls"]), before, "state changed");
    // VLANs of one parent are separate networks
    ok_words(
        &env,
        "network create -d macvlan --subnet 10.82.0.0/24 -o parent=eth7.12 m12",
    );
    ok_words(
        &env,
        "network create -d macvlan --subnet 10.83.0.0/24 -o parent=eth7.13 m13",
    );
    let e = env.fail(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.84.0.0/24",
        "-o",
        "parent=eth7.12",
        "x",
    ]);
    assert!(
        e.contains("eth7 (VLAN 12) is already used by macvlan network m12"),
        "{e}"
    );
    // passthru: one endpoint
    env.ok(&["network", "rm", "m1"]);
    ok_words(&env, "network create -d macvlan --subnet 10.85.0.0/24 -o parent=eth7 -o macvlan_mode=passthru pt");
    env.ok(&["network", "connect", "pt", "a", "--netns", &env.netns("a")]);
    let e = env.fail(&["network", "connect", "pt", "b", "--netns", &env.netns("b")]);
    assert!(e.contains("passthru"), "{e}");
    let e = env.fail(&[
        "network",
        "connect",
        "pt",
        "b",
        "--netns",
        &env.netns("b2"),
        "-p",
        "80:80",
    ]);
    assert!(
        e.contains("passthru") || e.contains("cannot be published"),
        "{e}"
    );
    env.ok(&["network", "disconnect", "pt", "a"]);
    let e = env.fail(&[
        "network",
        "connect",
        "pt",
        "b",
        "--netns",
        &env.netns("b3"),
        "-p",
        "80:80",
    ]);
    assert!(
        e.contains("ports cannot be published on a macvlan network"),
        "{e}"
    );

    // a parent missing at start: the network keeps its name, record and
    // endpoints, cut off from the segment, and is whole again once the
    // parent is back
    let a2 = env.netns("a2");
    env.ok(&["network", "connect", "pt", "a2", "--netns", &a2]);
    env.stop_daemon(libc::SIGTERM);
    run_ok(Command::new("ip").args(["-n", &env.host_ns, "link", "del", "eth7"]));
    env.start_daemon();
    let v = env.inspect("pt");
    assert!(
        v["down"].as_str().is_some_and(|d| d.contains("eth7")),
        "{v:#}"
    );
    assert!(v["endpoints"]["a2"].is_object(), "endpoint lost: {v:#}");
    let e = env.fail(&["network", "create", "pt"]);
    assert!(e.contains("already exists"), "{e}");
    env.stop_daemon(libc::SIGTERM);
    lan_link(&env, &lan, "eth7", "peer7", None);
    env.start_daemon();
    let v = env.inspect("pt");
    assert!(v["down"].is_null(), "{v:#}");
    assert!(v["trunk"]["port_id"].is_u64(), "{v:#}");
}

#[test]
fn ipvlan_l3_routes_without_broadcast() {
    let Some((mut env, lan)) = lan_env(
        "ipvlan_l3_routes_without_broadcast",
        "lan0",
        "peer0",
        Some("10.86.0.1/24"),
    ) else {
        return;
    };
    // beyond the subnet, behind the gateway (the peer)
    env.exec_ok(&lan, &["ip", "addr", "add", "10.99.9.1/32", "dev", "lo"]);
    ok_words(&env, "network create -d ipvlan -o ipvlan_mode=l3 --subnet 10.86.0.0/24 --gateway 10.86.0.1 -o parent=lan0 il3");
    let parent_mac = host_mac(&env, "lan0");
    let j1 = env.container("il3", "j1", &[]);
    let j2 = env.container("il3", "j2", &[]);
    let r = env.exec_ok(&j1.ns, &["ip", "route", "show", "default"]);
    assert!(r.contains("dev eth0") && !r.contains("via"), "{r}");
    assert!(
        ping(&env, &j1.ns, "10.86.0.1", 3),
        "j1 cannot reach the peer"
    );
    assert!(
        ping(&env, &j1.ns, "10.99.9.1", 3),
        "j1 cannot reach beyond the gateway"
    );
    assert!(
        ping(&env, &lan, &j2.ip.to_string(), 3),
        "the peer cannot reach j2"
    );
    assert!(ping(&env, &j1.ns, &j2.ip.to_string(), 2), "j1 -> j2 inside");
    for c in [&j1, &j2] {
        let n = env.exec_ok(&lan, &["ip", "neigh", "show", &c.ip.to_string()]);
        assert!(n.contains(&parent_mac), "peer sees {n} for {}", c.name);
    }
    // nothing answers for an address that is no endpoint's, and the
    // segment's broadcasts do not reach the containers
    assert!(!ping(&env, &lan, "10.86.0.77", 1));
    let before = env.counters("il3", "j1");
    let o = env.exec(
        &lan,
        &[
            "ping",
            "-b",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "10.86.0.255",
        ],
    );
    let _ = o;
    let after = env.counters("il3", "j1");
    assert_eq!(
        ctr(&before, "tx_frames"),
        ctr(&after, "tx_frames"),
        "a broadcast reached j1"
    );
    let o = env.tapnet(&["run", "--network", "il3", "--", "getent", "hosts", "j2"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with(&format!("{} ", j2.ip)),
        "j2 did not resolve: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // a container may use only its own address: a spoofed source is
    // dropped, and the segment never hears of it
    env.exec_ok(
        &j1.ns,
        &["ip", "addr", "add", "10.86.0.99/24", "dev", "eth0"],
    );
    let before = {
        // port security drops it first (spoofed); without it the routed
        // segment's own check does (bad_src_mac)
        let c = env.counters("il3", "j1");
        ctr(&c, "drops.spoofed") + ctr(&c, "drops.bad_src_mac")
    };
    let o = env.exec(
        &j1.ns,
        &[
            "ping",
            "-c",
            "2",
            "-W",
            "1",
            "-I",
            "10.86.0.99",
            "10.86.0.1",
        ],
    );
    assert!(!o.status.success(), "a spoofed source got through");
    let after = {
        // port security drops it first (spoofed); without it the routed
        // segment's own check does (bad_src_mac)
        let c = env.counters("il3", "j1");
        ctr(&c, "drops.spoofed") + ctr(&c, "drops.bad_src_mac")
    };
    assert!(
        after > before,
        "spoofed frames not counted: {before} -> {after}"
    );
    let n = env.exec_ok(&lan, &["ip", "neigh", "show", "10.86.0.99"]);
    assert!(
        !n.contains("lladdr"),
        "the segment learned the spoofed address: {n}"
    );
    let blob = env.random_file("blob", 20 << 20);
    download(&mut env, &j1.ns, &lan, "10.86.0.1", 5005, &blob);
}
