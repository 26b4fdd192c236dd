//! Daemon restart (after a crash): networks and live endpoints survive and
//! traffic resumes; endpoints whose namespace died meanwhile are cleaned up
//! and their addresses released.

use std::process::{Command, Stdio};
use std::time::Duration;
use tapnet_tests::*;

#[test]
fn restart_keeps_networks_and_live_endpoints() {
    let Some(mut env) = Env::new("restart_keeps_networks_and_live_endpoints", &[]) else {
        return;
    };
    env.ok(&["network", "create", "keep", "--subnet", "10.60.0.0/24"]);
    env.ok(&["network", "create", "empty"]);
    let c1 = env.container("keep", "c1", &[]);
    let c2 = env.container("keep", "c2", &[]);
    let gone = env.netns("gone");
    env.ok(&[
        "network",
        "connect",
        "keep",
        "gone",
        "--netns",
        &gone,
        "--ip",
        "10.60.0.50",
    ]);
    assert!(ping(&env, &c1.ns, &c2.ip.to_string(), 1));
    let nets_before = env.ok(&["network", "ls", "--format", "json"]);

    // a listener, and a TCP connection established before the crash
    let lis = env.spawn_in(&c2.ns, &["nc", "-l", "5002"], Stdio::null(), Stdio::piped());
    assert!(wait_until(Duration::from_secs(5), || env
        .exec_ok(&c2.ns, &["ss", "-ltn"])
        .contains(":5002")));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_ns(&c2.ns, move || {
        let l = std::net::TcpListener::bind("0.0.0.0:5003").unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = String::new();
        std::io::Read::read_to_string(&mut s, &mut got).unwrap();
        got
    });
    ready_rx.recv().unwrap();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (up_tx, up_rx) = std::sync::mpsc::channel::<()>();
    let c2ip = c2.ip;
    let client = in_ns(&c1.ns, move || {
        let mut s = std::net::TcpStream::connect((c2ip, 5003)).unwrap();
        std::io::Write::write_all(&mut s, b"before;").unwrap();
        up_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        std::io::Write::write_all(&mut s, b"after").unwrap();
    });

    up_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    env.stop_daemon(libc::SIGKILL);
    // while tapnet is down, one endpoint's namespace goes away
    delete_netns(&gone);
    // the other endpoints keep their interface (persistent TAP, no carrier)
    let link = env.exec_ok(&c1.ns, &["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains(&c1.mac));

    env.start_daemon();
    // the connection from before the crash carries on
    go_tx.send(()).unwrap();
    client.join().unwrap();
    assert_eq!(server.join().unwrap(), "before;after");
    let nets_after = env.ok(&["network", "ls", "--format", "json"]);
    assert_eq!(
        nets_before.replace("\"endpoints\": 3", "\"endpoints\": 2"),
        nets_after
    );
    let ps = env.json(&["ps", "--format", "json"]);
    let names: Vec<&str> = ps
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c1", "c2"], "{ps}");
    // traffic resumes, both ping and a fresh TCP transfer
    assert!(
        ping(&env, &c1.ns, &c2.ip.to_string(), 2),
        "no traffic after restart"
    );
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo resumed | ip netns exec {} nc -N {} 5002",
            c1.ns, c2.ip
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(env.wait_bg(lis, Duration::from_secs(10)).success());
    // the stale endpoint's address is free again
    let again = env.netns("again");
    env.ok(&[
        "network",
        "connect",
        "keep",
        "again",
        "--netns",
        &again,
        "--ip",
        "10.60.0.50",
    ]);
    assert!(ping(&env, &again, &c1.ip.to_string(), 1));
    // a clean restart (SIGTERM) too
    env.stop_daemon(libc::SIGTERM);
    env.start_daemon();
    assert!(ping(&env, &again, &c2.ip.to_string(), 1));
    assert!(env.daemon_log().contains("re-attached c1"));
}

/// A daemon that stops in the middle of creating a container (its record
/// says so, its namespace exists, nothing is attached) leaves no debris:
/// the next start removes both, and the name is free again.
#[test]
fn half_created_container_is_cleaned_at_start() {
    let Some(mut env) = Env::new("half_created_container_is_cleaned_at_start", &[]) else {
        return;
    };
    env.stop_daemon(libc::SIGKILL);
    let ns = format!("{}z17", env.prefix);
    run_ok(Command::new("ip").args(["netns", "add", &ns]));
    let file = env.state_dir().join("containers.json");
    let mut v: serde_json::Value = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    v["z17"] = serde_json::json!({
        "netns": format!("/run/netns/{ns}"),
        "owned": true,
        "created": 1,
        "creating": true,
    });
    std::fs::write(&file, serde_json::to_vec(&v).unwrap()).unwrap();
    env.start_daemon();
    let list = run_ok(Command::new("ip").args(["netns", "list"]));
    assert!(
        !list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&ns)),
        "namespace {ns} left behind: {list}"
    );
    assert!(env.daemon_log().contains("stopped while creating it"));
    let e = env.fail(&["rm", "z17"]);
    assert!(e.contains("no such container"), "{e}");
    let out = env.ok(&["run", "--name", "z17", "--", "true"]);
    let _ = out;
}

/// Corrupt state files at start: the daemon starts, keeps every network
/// it can read, moves the bad files aside (never overwritten later) and
/// says so in one line each.
#[test]
fn corrupt_state_files_are_set_aside() {
    let Some(mut env) = Env::new("corrupt_state_files_are_set_aside", &[]) else {
        return;
    };
    env.ok(&["network", "create", "good", "--subnet", "10.57.1.0/24"]);
    env.ok(&["network", "create", "bad", "--subnet", "10.57.2.0/24"]);
    let live = env.container("good", "live", &[]);
    env.stop_daemon(libc::SIGKILL);
    let st = env.state_dir();
    let bad = st.join("networks/bad.json");
    let text = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &text[..text.len() / 2]).unwrap();
    std::fs::write(st.join("containers.json"), b"{\"c1\": {\"netns\"").unwrap();
    env.start_daemon();
    let ls = env.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(ls.lines().any(|l| l == "good"), "{ls}");
    assert!(!ls.lines().any(|l| l == "bad"), "{ls}");
    let log = env.daemon_log();
    assert!(
        log.contains("bad.json") && log.contains("moved to"),
        "{log}"
    );
    assert!(log.contains("unreadable container state"), "{log}");
    let aside = |prefix: &str, dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
    };
    assert!(aside("bad.json.corrupt-", &st.join("networks")));
    assert!(aside("containers.json.corrupt-", &st));
    // the live container was rebuilt from its endpoint: its address stays
    // its own (not handed out twice) and it still talks
    assert!(log.contains("rebuilt"), "{log}");
    let again = env.ctr("live").expect("live container rebuilt");
    assert_eq!(again.ip, live.ip);
    let fresh = env.container("good", "fresh", &[]);
    assert_ne!(fresh.ip, live.ip, "an address handed out twice");
    assert!(ping(&env, &fresh.ns, &live.ip.to_string(), 2));
    // the name is free again, and the set-aside file stays untouched
    env.ok(&["network", "create", "bad", "--subnet", "10.57.3.0/24"]);
    assert!(aside("bad.json.corrupt-", &st.join("networks")));
}

/// A crash under load: 200 TCP connections and a bulk transfer between two
/// containers while the daemon is killed and started again. Every
/// connection carries on and the transfer arrives intact.
#[test]
fn crash_under_load_connections_carry_on() {
    use std::io::{Read, Write};
    let Some(mut env) = Env::new("crash_under_load_connections_carry_on", &[]) else {
        return;
    };
    env.ok(&["network", "create", "load", "--subnet", "10.58.0.0/24"]);
    let a = env.container("load", "a", &[]);
    let b = env.container("load", "b", &[]);
    let bip = b.ip;
    // b: an echo server for the 200 connections
    in_ns(&b.ns, || {
        echo_server(std::net::TcpListener::bind("0.0.0.0:5100").unwrap())
    })
    .join()
    .unwrap();
    // a: 200 connections, each checked before and after the crash
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let conns = in_ns(&a.ns, move || {
        let mut cs: Vec<std::net::TcpStream> = (0..200)
            .map(|_| std::net::TcpStream::connect((bip, 5100)).unwrap())
            .collect();
        let talk = |cs: &mut Vec<std::net::TcpStream>, tag: &str| {
            cs.iter_mut().enumerate().all(|(i, s)| {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let m = format!("{tag}{i:04}");
                let mut back = vec![0u8; m.len()];
                s.write_all(m.as_bytes()).is_ok()
                    && s.read_exact(&mut back).is_ok()
                    && back == m.as_bytes()
            })
        };
        let before = talk(&mut cs, "b");
        opened_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        (before, talk(&mut cs, "a"))
    });
    opened_rx.recv().unwrap();
    // and a bulk transfer running through the crash: the reader takes
    // 1 MiB every 30 ms, so it lasts about 2 s
    let blob = env.random_file("blob", 64 << 20);
    let srv = serve_file(&b.ns, &bip.to_string(), 5101, &blob);
    let reader = in_ns(&a.ns, move || {
        let mut s = std::net::TcpStream::connect((bip, 5101)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = Vec::with_capacity(64 << 20);
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            let n = s.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            std::thread::sleep(Duration::from_millis(30));
        }
        got
    });
    std::thread::sleep(Duration::from_millis(100));
    env.stop_daemon(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    env.start_daemon();
    go_tx.send(()).unwrap();
    let (before, after) = conns.join().unwrap();
    assert!(before, "the connections did not work before the crash");
    assert!(after, "a connection did not survive the crash");
    let got = reader.join().unwrap();
    srv.join().unwrap();
    assert!(
        got == std::fs::read(&blob).unwrap(),
        "transfer corrupted or cut ({} bytes)",
        got.len()
    );
}

/// Echoes every connection `l` accepts, each on a thread of its own,
/// until it closes (runs in the background; `l` is listening already).
fn echo_server(l: std::net::TcpListener) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// What became of a connection after the crash.
#[derive(Debug, PartialEq)]
enum After {
    CarriedOn,
    /// Reset or closed: failed fast.
    Failed,
    /// No answer within the timeout: what must never happen.
    Hung,
}

fn outcome(e: &std::io::Error) -> After {
    use std::io::ErrorKind::*;
    match e.kind() {
        WouldBlock | TimedOut => After::Hung,
        _ => After::Failed,
    }
}

/// A crash under load through the packet NAT: 200 connections and a bulk
/// download from "the internet" while the daemon is killed and started
/// again. The new daemon puts back the NAT table of its last checkpoint
/// (once a second), so the connections and the download carry on; a flow
/// it does not know would fail fast (a reset for the server's segments)
/// rather than hang. No outside port is handed out twice.
#[test]
fn crash_under_load_through_the_nat() {
    use std::io::{Read, Write};
    let Some(mut env) = Env::with_uplink("crash_under_load_nat", &[]) else {
        return;
    };
    env.ok(&["network", "create", "wan", "--subnet", "10.59.0.0/24"]);
    let a = env.container("wan", "a", &[]);
    let inet = env.inet_ns();
    let server: std::net::Ipv4Addr = INET_IP.parse().unwrap();
    // the internet: an echo server, and a server for the bulk download
    // that shrugs off a reset
    let blob = env.random_file("blob", 64 << 20);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let b2 = blob.clone();
    in_ns(&inet, move || {
        echo_server(std::net::TcpListener::bind((server, 5200)).unwrap());
        let bulk = std::net::TcpListener::bind((server, 5201)).unwrap();
        ready_tx.send(()).unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = bulk.accept() {
                let _ = std::io::copy(&mut std::fs::File::open(&b2).unwrap(), &mut s);
            }
        });
    })
    .join()
    .unwrap();
    ready_rx.recv().unwrap();
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let conns = in_ns(&a.ns, move || {
        let mut cs: Vec<std::net::TcpStream> = (0..200)
            .map(|_| std::net::TcpStream::connect((server, 5200)).unwrap())
            .collect();
        let talk = |s: &mut std::net::TcpStream, m: &str| -> After {
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let mut back = vec![0u8; m.len()];
            match s
                .write_all(m.as_bytes())
                .and_then(|_| s.read_exact(&mut back))
            {
                Ok(()) if back == m.as_bytes() => After::CarriedOn,
                Ok(()) => panic!("echo garbled"),
                Err(e) => outcome(&e),
            }
        };
        let before: Vec<After> = cs
            .iter_mut()
            .enumerate()
            .map(|(i, s)| talk(s, &format!("b{i:04}")))
            .collect();
        opened_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        let after: Vec<After> = cs
            .iter_mut()
            .enumerate()
            .map(|(i, s)| talk(s, &format!("a{i:04}")))
            .collect();
        (before, after)
    });
    opened_rx.recv().unwrap();
    // the download runs through the crash: 1 MiB every 50 ms
    let reader = in_ns(&a.ns, move || {
        let mut s = std::net::TcpStream::connect((server, 5201)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut got = Vec::with_capacity(64 << 20);
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => return (got, After::CarriedOn),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => return (got, outcome(&e)),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // past a checkpoint (once a second) of the connections and the download
    std::thread::sleep(Duration::from_millis(1500));
    env.stop_daemon(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    env.start_daemon();
    go_tx.send(()).unwrap();
    let (before, after) = conns.join().unwrap();
    assert!(
        before.iter().all(|o| *o == After::CarriedOn),
        "the connections did not work before the crash"
    );
    assert!(
        env.daemon_log().contains("NAT: restored 201 of 201"),
        "the NAT table was not put back: {}",
        env.daemon_log()
    );
    let carried = after.iter().filter(|o| **o == After::CarriedOn).count();
    let failed = after.iter().filter(|o| **o == After::Failed).count();
    let (got, bulk) = reader.join().unwrap();
    let nat = env.json(&["nat", "ls", "--format", "json"]);
    eprintln!(
        "after the crash: {carried} connections carried on, {failed} failed fast; \
         download {bulk:?} after {} of {} bytes; NAT {}",
        got.len(),
        64 << 20,
        nat["uplink"]["nat"]
    );
    assert_eq!(
        carried + failed,
        200,
        "connections hung after the crash: {after:?}"
    );
    assert_eq!(carried, 200, "restored connections failed: {after:?}");
    assert_eq!(bulk, After::CarriedOn, "the download did not carry on");
    assert!(got == std::fs::read(&blob).unwrap(), "download corrupted");
    // no outside port handed out twice
    let conns = nat["uplink"]["connections"].as_array().unwrap();
    let mut ports = std::collections::HashSet::new();
    for c in conns {
        let k = (c["proto"].to_string(), c["outside"].to_string());
        assert!(ports.insert(k.clone()), "outside {k:?} twice: {conns:?}");
    }
    // and new connections work
    let ok = in_ns(&a.ns, move || {
        let mut s = std::net::TcpStream::connect((server, 5200)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"new!").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).is_ok() && &b == b"new!"
    })
    .join()
    .unwrap();
    assert!(ok, "a new connection after the restart failed");
    // a segment no connection owns gets a reset, as from any host: a
    // client of an unpublished port is refused at once, not left waiting
    let refused = in_ns(&inet, || {
        let to = (UPLINK_IP.parse::<std::net::Ipv4Addr>().unwrap(), 6553).into();
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)).map_err(|e| e.kind())
    })
    .join()
    .unwrap();
    assert_eq!(refused.err(), Some(std::io::ErrorKind::ConnectionRefused));
}
