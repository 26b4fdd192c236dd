//! IPAM and CLI errors: a clear one-line message, a non-zero exit, and the
//! state unchanged.

use std::time::Duration;
use tapnet_tests::*;

fn state(env: &Env) -> (String, String) {
    (
        env.ok(&["network", "ls", "--format", "json"]),
        env.ok(&["ps", "--format", "json"]),
    )
}

fn expect(env: &Env, args: &[&str], msg: &str) {
    let before = state(env);
    let e = env.fail(args);
    assert!(
        e.contains(msg),
        "tapnet {args:?}: expected {msg:?}, got {e:?}"
    );
    assert_eq!(e.lines().count(), 1, "not one line: {e:?}");
    assert_eq!(state(env), before, "state changed by failing {args:?}");
}

#[test]
fn ipam_and_cli_errors() {
    let Some(mut env) = Env::new("ipam_and_cli_errors", &[]) else {
        return;
    };
    // the default network exists without being created
    let ls = env.ok(&["network", "ls", "--long"]);
    assert!(
        ls.contains("bridge") && ls.contains("172.17.0.0/16"),
        "{ls}"
    );
    env.ok(&[
        "network",
        "create",
        "n",
        "--subnet",
        "10.70.0.0/24",
        "--ip-range",
        "10.70.0.128/30",
    ]);
    let c = env.container("n", "c", &[]);
    assert_eq!(
        c.ip.to_string(),
        "10.70.0.128",
        "first address of --ip-range"
    );

    let cases: &[(&[&str], &str)] = &[
        (
            &["network", "create", "n", "--subnet", "10.71.0.0/24"][..],
            "network with name n already exists",
        ),
        (
            &["network", "create", "o", "--subnet", "10.70.0.0/16"][..],
            "overlaps with network n",
        ),
        (
            &["network", "create", "o", "--subnet", "172.17.5.0/24"][..],
            "overlaps with network bridge",
        ),
        (
            &["network", "create", "o", "--subnet", "10.72.0.1/24"][..],
            "host bits are set",
        ),
        (
            &["network", "create", "o", "--subnet", "banana"][..],
            "invalid subnet",
        ),
        (
            &[
                "network",
                "create",
                "o",
                "--subnet",
                "10.72.0.0/24",
                "--gateway",
                "10.73.0.1",
            ][..],
            "outside subnet",
        ),
        (
            &[
                "network",
                "create",
                "o",
                "--subnet",
                "10.72.0.0/24",
                "--ip-range",
                "10.74.0.0/28",
            ][..],
            "IP range 10.74.0.0/28 is outside subnet 10.72.0.0/24",
        ),
        (
            &["network", "create", "bad/name"][..],
            "invalid network name \"bad/name\"",
        ),
        (
            &["network", "inspect", "nope"][..],
            "network nope not found",
        ),
        (&["network", "rm", "nope"][..], "network nope not found"),
        (
            &["network", "rm", "bridge"][..],
            "bridge is a pre-defined network and cannot be removed",
        ),
        (&["network", "rm", "n"][..], "has active endpoints"),
        (
            &["network", "connect", "nope", "x"][..],
            "network nope not found",
        ),
        (
            &["run", "--network", "nope", "--", "true"][..],
            "network nope not found",
        ),
        (
            &["run", "--network", "n", "--ip", "10.70.0.128", "--", "true"][..],
            "10.70.0.128 is already in use",
        ),
        (
            &["run", "--network", "n", "--ip", "10.99.0.5", "--", "true"][..],
            "outside subnet 10.70.0.0/24",
        ),
        (
            &["run", "--network", "n", "--ip", "10.70.0.1", "--", "true"][..],
            "address 10.70.0.1 is reserved",
        ),
        (
            &["run", "--network", "n", "--name", "c", "--", "true"][..],
            "name c is already in use",
        ),
        (
            &["network", "connect", "n", "x", "--netns", "tn_no_such_ns"][..],
            "does not exist",
        ),
        (
            &["network", "disconnect", "n", "ghost"][..],
            "not connected",
        ),
        (&["rm", "ghost"][..], "no such container: ghost"),
    ];
    for (args, msg) in cases {
        expect(&env, args, msg);
    }
    // wrong arguments (clap) and no daemon
    let e = env.fail(&["network", "create"]);
    assert!(e.contains("required"), "{e}");
    let e = env.fail(&["run", "--network", "n", "--mtu", "big", "--", "true"]);
    assert!(e.contains("invalid value"), "{e}");
    let e = env.fail(&["run", "--network", "n", "--mtu", "40", "--", "true"]);
    assert!(e.to_lowercase().contains("mtu"), "{e}");
    let o = std::process::Command::new(&env.bin)
        .args(["--socket", "/tmp/tn_nowhere.sock", "network", "ls"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("cannot reach the tapnet daemon"), "{e}");

    // pool exhausted: a /30 range has 4 addresses
    env.container("n", "c2", &[]);
    env.container("n", "c3", &[]);
    env.container("n", "c4", &[]);
    expect(&env, &["run", "--network", "n", "--", "true"], "exhausted");
    // disconnect releases the address, the next container gets it
    let c3 = env.ctr("c3").unwrap();
    env.ok(&["network", "disconnect", "n", "c3"]);
    // the device died with the endpoint; the namespace (still running) stays
    let o = env.exec(&c3.ns, &["ip", "link", "show", "eth0"]);
    assert!(!o.status.success(), "eth0 still exists after disconnect");
    let o = env.ok(&[
        "run",
        "--network",
        "n",
        "--",
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(o.contains("10.70.0.130/24"), "{o}");

    // connect by PID (/proc/PID/ns/net), and auto subnets do not overlap
    env.ok(&["network", "create", "auto1"]);
    env.ok(&["network", "create", "auto2"]);
    let nets = env.json(&["network", "ls", "--format", "json"]);
    let subnets: Vec<&str> = nets
        .as_array()
        .unwrap()
        .iter()
        // host and none have no subnet
        .filter(|n| n["driver"] != "host" && n["driver"] != "null")
        .map(|n| n["subnet"].as_str().unwrap())
        .collect();
    let mut sorted = subnets.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), subnets.len(), "{subnets:?}");
    let ns = env.netns("bypid");
    let idx = env.spawn_in(
        &ns,
        &["sleep", "600"],
        std::process::Stdio::null(),
        std::process::Stdio::null(),
    );
    let _ = idx;
    // the process enters the namespace a moment after it is spawned
    let pids = || {
        let o = std::process::Command::new("ip")
            .args(["netns", "pids", &ns])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .map(|s| s.to_string())
    };
    assert!(wait_until(Duration::from_secs(5), || pids().is_some()));
    let pid = pids().unwrap();
    env.ok(&["network", "connect", "auto1", "bypid", "--netns", &pid]);
    let gw = env.inspect("auto1")["gateway"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ping(&env, &ns, &gw, 1));
    // prune removes unused networks only
    let pruned = env.ok(&["network", "prune"]);
    assert!(
        pruned.contains("auto2") && !pruned.contains("auto1"),
        "{pruned}"
    );
}

/// Clear words when the daemon goes away mid-request, and silence when a
/// running container was removed under its `run`.
#[test]
fn daemon_gone_and_removed_container_messages() {
    let Some(mut env) = Env::new("daemon_gone_and_removed_container_messages", &[]) else {
        return;
    };
    // a `run` whose container is removed meanwhile ends without an error
    let idx = env.spawn_tapnet(&["run", "--name", "r1", "--", "sleep", "1"]);
    assert!(wait_until(Duration::from_secs(5), || env
        .ok(&["ps", "-q"])
        .lines()
        .any(|l| l == "r1")));
    env.ok(&["rm", "r1"]);
    env.wait_bg(idx, Duration::from_secs(10));
    let said = std::fs::read_to_string(env.bg_log(idx)).unwrap();
    assert!(!said.contains("no such container"), "{said}");
    // a "daemon" that accepts and closes without a word
    let sock = env.dir.join("mute.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || {
        for _ in 0..1 {
            if let Ok((s, _)) = l.accept() {
                std::thread::sleep(Duration::from_millis(100));
                drop(s);
            }
        }
    });
    let o = std::process::Command::new(&env.bin)
        .arg("--socket")
        .arg(&sock)
        .args(["network", "ls"])
        .output()
        .unwrap();
    t.join().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("stopped answering"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Who may drive a root daemon: root, and group tapnet when it exists.
#[test]
fn root_socket_is_root_and_tapnet_group_only() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(env) = Env::new("root_socket_is_root_and_tapnet_group_only", &[]) else {
        return;
    };
    let m = std::fs::metadata(&env.sock).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o660);
    assert_eq!(m.uid(), 0);
    let tapnet_gid = std::process::Command::new("getent")
        .args(["group", "tapnet"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split(':')
                .nth(2)?
                .trim()
                .parse::<u32>()
                .ok()
        });
    assert_eq!(
        m.gid(),
        tapnet_gid.unwrap_or(0),
        "group: tapnet if it exists, else root"
    );
    assert!(env.daemon_log().contains("socket 0660"));
}

/// `tapnet ps | head -1` with a long list: the CLI ends quietly on the
/// closed pipe (killed by SIGPIPE, like any Unix tool), never a panic.
#[test]
fn closed_stdout_is_not_a_panic() {
    let Some(env) = Env::new("closed_stdout", &[]) else {
        return;
    };
    // a pipe whose reading end is closed before the CLI writes
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    let w = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    let o = std::process::Command::new(&env.bin)
        .env("TAPNET_SOCKET", &env.sock)
        .args(["network", "ls"])
        .stdout(w)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        o.status
    );
}
