//! `tapnet capture`: frames as the switch sees them, checked with tshark
//! (Wireshark's reader): the count and protocols match the traffic sent,
//! every port is an interface of its own with the direction in each
//! packet's flags, the tcpdump filter runs (nothing else gets in), `-w -`
//! streams live into `tshark -r -`, a line per frame without `-w`, and a
//! reader too slow for the traffic loses frames from the capture (counted)
//! while the network loses none.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;
use tapnet_tests::*;

/// Reads `c`'s stderr up to the capture's "listening on" line (what
/// follows stays in the pipe); panics if stderr ends first.
fn wait_listening(c: &mut std::process::Child) {
    let e = c.stderr.as_mut().unwrap();
    let (mut line, mut b) = (Vec::new(), [0u8; 1]);
    loop {
        let n = e.read(&mut b).unwrap_or(0);
        let s = String::from_utf8_lossy(&line).to_string();
        assert!(n == 1, "the capture ended before it listened: {s}");
        if b[0] != b'\n' {
            line.push(b[0]);
        } else if s.contains("listening on ") {
            return;
        } else {
            line.clear();
        }
    }
}

fn tapnet(env: &Env) -> Command {
    let mut c = Command::new(&env.bin);
    c.env("TAPNET_SOCKET", &env.sock);
    c
}

#[test]
fn capture_with_tshark() {
    require_tools(&["tshark"], "tshark");
    require_tools(&["dig"], "bind9-dnsutils");
    let Some(mut env) = Env::new("capture_with_tshark", &[]) else {
        return;
    };
    env.ok(&["network", "create", "cap", "--subnet", "10.65.0.0/24"]);
    let c1 = env.container("cap", "c1", &[]);
    let c2 = env.container("cap", "c2", &[]);
    assert!(ping(&env, &c1.ns, &c2.ip.to_string(), 1), "c1 -> c2");

    // 1. a file: 5 pings c1 -> c2 with the filter icmp, while TCP flows too
    let file = env.dir.join("icmp.pcapng");
    let f = file.display().to_string();
    let cap = env.spawn_capture("cap", &["cap", "-w", &f, "-c", "20", "icmp"]);
    echo_server(&c2.ns, 7000);
    let got = tcp_roundtrip(&c1.ns, &format!("{}:7000", c2.ip), vec![7u8; 100_000]).unwrap();
    assert_eq!(got.len(), 100_000);
    let o = env.exec_ok(
        &c1.ns,
        &["ping", "-c", "5", "-i", "0.2", &c2.ip.to_string()],
    );
    assert!(o.contains(" 0% packet loss"), "{o}");
    assert!(
        env.wait_bg(cap, Duration::from_secs(10)).success(),
        "capture did not end after -c 20"
    );
    let rows = tshark_fields(
        &file,
        &[
            "frame.interface_name",
            "frame.packet_flags_direction",
            "icmp.type",
            "ip.src",
            "ip.dst",
        ],
    );
    // each echo is seen leaving c1 (read from its port) and reaching c2
    // (written to its port), each reply the other way: 4 frames a ping
    assert_eq!(rows.len(), 20, "{rows:?}");
    let c1ip = c1.ip.to_string();
    let c2ip = c2.ip.to_string();
    let n = |ifname: &str, dir: &str, ty: &str, src: &str| {
        rows.iter()
            .filter(|r| r[0] == ifname && r[1] == dir && r[2] == ty && r[3] == src)
            .count()
    };
    // direction: 1 inbound (read from the port), 2 outbound
    assert_eq!(n("c1@cap", "0x00000001", "8", &c1ip), 5, "{rows:?}");
    assert_eq!(n("c2@cap", "0x00000002", "8", &c1ip), 5, "{rows:?}");
    assert_eq!(n("c2@cap", "0x00000001", "0", &c2ip), 5, "{rows:?}");
    assert_eq!(n("c1@cap", "0x00000002", "0", &c2ip), 5, "{rows:?}");
    assert!(rows.iter().all(|r| r[4] == c1ip || r[4] == c2ip));

    // 2. live: -w - into tshark -r -, one container's port, a TCP filter
    let mut cap = tapnet(&env)
        .args(["capture", "c2", "-w", "-", "-c", "6", "tcp port 7001"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ts = Command::new("tshark")
        .args([
            "-r",
            "-",
            "-T",
            "fields",
            "-e",
            "tcp.dstport",
            "-e",
            "tcp.srcport",
            "-e",
            "frame.interface_name",
        ])
        .stdin(cap.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(&mut cap);
    echo_server(&c2.ns, 7001);
    tcp_roundtrip(&c1.ns, &format!("{}:7001", c2.ip), b"hello".to_vec()).unwrap();
    let _ = env.exec(
        &c1.ns,
        &["ping", "-c", "2", "-i", "0.2", &c2.ip.to_string()],
    );
    let o = ts.wait_with_output().unwrap();
    assert!(cap.wait().unwrap().success());
    let mut err = String::new();
    cap.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("6 frames captured; 0 dropped"), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(
        lines
            .iter()
            .all(|l| (l.starts_with("7001\t") || l.contains("\t7001\t")) && l.ends_with("c2@cap")),
        "{out}"
    );

    // 3. a line per frame without -w
    let lines_bg = env.spawn_capture("cap", &["cap", "--port", "c1", "-c", "2", "icmp"]);
    let _ = env.exec(&c1.ns, &["ping", "-c", "1", &c2.ip.to_string()]);
    assert!(env.wait_bg(lines_bg, Duration::from_secs(10)).success());
    let text = std::fs::read_to_string(env.bg_log(lines_bg)).unwrap();
    assert!(
        text.contains(&format!("c1@cap In  IP {c1ip} > {c2ip}: ICMP, length 98")),
        "{text}"
    );
    assert!(
        text.contains(&format!("c1@cap Out IP {c2ip} > {c1ip}: ICMP, length 98")),
        "{text}"
    );

    // 5. a reader too slow: frames dropped from the capture (counted), none
    // from the network. The capture's output is a pipe nobody reads while
    // 64 MiB and 20,000 pings go c1 -> c2 (both intact: checksum, no ping
    // lost); then it is drained and the capture stopped with Ctrl-C.
    let mut slow = tapnet(&env)
        .args(["capture", "cap", "-w", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_listening(&mut slow);
    // a TCP transfer (GSO frames, up to 64 KiB each) and a ping flood
    // (small frames): more than the capture's queue holds
    let blob = env.random_file("blob", 64 << 20);
    download(&mut env, &c1.ns, &c2.ns, &c2ip, 7002, &blob);
    let o = env.exec_ok(&c1.ns, &["ping", "-f", "-c", "20000", "-q", &c2ip]);
    assert!(
        o.contains(" 0% packet loss"),
        "the network lost frames: {o}"
    );
    let mut pipe = slow.stdout.take().unwrap();
    let got = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let g2 = got.clone();
    let drain = std::thread::spawn(move || {
        let mut b = vec![0u8; 1 << 16];
        while let Ok(k) = pipe.read(&mut b) {
            if k == 0 {
                break;
            }
            g2.fetch_add(k as u64, std::sync::atomic::Ordering::Relaxed);
        }
        g2.load(std::sync::atomic::Ordering::Relaxed)
    });
    // drained: nothing more for a second
    let mut last = u64::MAX;
    assert!(wait_until(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(1000));
        let now = got.load(std::sync::atomic::Ordering::Relaxed);
        std::mem::replace(&mut last, now) == now
    }));
    unsafe { libc::kill(slow.id() as i32, libc::SIGINT) };
    assert!(slow.wait().unwrap().success());
    let read = drain.join().unwrap();
    let mut err = String::new();
    slow.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let dropped: u64 = err
        .split("; ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary: {err}"));
    assert!(
        dropped > 0,
        "nothing dropped from the capture: {err} ({read} bytes read)"
    );
    // the switch dropped nothing on the way
    let v = env.inspect("cap");
    assert_eq!(ctr(&v, "counters.drops.tx_error"), 0, "{v}");

    // 3b. GSO: the same transfer captured twice, as the switch carries it
    // (super-frames above the MTU) and --segment (MTU-sized frames with
    // complete checksums, which tshark verifies)
    let (whole, segd) = (env.dir.join("gso.pcapng"), env.dir.join("seg.pcapng"));
    let a = env.spawn_capture(
        "cap",
        &[
            "c2",
            "-w",
            whole.to_str().unwrap(),
            "-c",
            "30",
            "tcp port 7003 and greater 1000",
        ],
    );
    let b = env.spawn_capture(
        "cap",
        &[
            "c2",
            "--segment",
            "-w",
            segd.to_str().unwrap(),
            "-c",
            "30",
            "tcp port 7003 and greater 1000",
        ],
    );
    echo_server(&c2.ns, 7003);
    tcp_roundtrip(&c1.ns, &format!("{}:7003", c2.ip), vec![9u8; 4 << 20]).unwrap();
    assert!(env.wait_bg(a, Duration::from_secs(10)).success());
    assert!(env.wait_bg(b, Duration::from_secs(10)).success());
    let lens = |f: &std::path::Path| -> Vec<u32> {
        tshark_fields(f, &["frame.len"])
            .iter()
            .map(|r| r[0].parse().unwrap())
            .collect()
    };
    let (lw, ls) = (lens(&whole), lens(&segd));
    assert!(lw.iter().any(|&l| l > 1514), "no super-frame seen: {lw:?}");
    assert_eq!(ls.len(), 30, "{ls:?}");
    assert!(
        ls.iter().all(|&l| l <= 1514),
        "--segment left a frame above the MTU: {ls:?}"
    );
    let bad = Command::new("tshark")
        .args([
            "-r",
            segd.to_str().unwrap(),
            "-o",
            "tcp.check_checksum:TRUE",
            "-Y",
            "tcp.checksum.status == 0",
        ])
        .output()
        .unwrap();
    assert!(
        bad.stdout.is_empty(),
        "bad TCP checksums: {}",
        String::from_utf8_lossy(&bad.stdout)
    );

    // 3c. what the gateway's services inject is seen too: a DNS query
    // to the gateway (In on c1) and its answer (Out on c1)
    let dns = env.dir.join("dns.pcapng");
    let d = env.spawn_capture(
        "cap",
        &["c1", "-w", dns.to_str().unwrap(), "-c", "2", "udp port 53"],
    );
    let a = env.exec_ok(&c1.ns, &["dig", "+short", "+tries=1", "c2", "@10.65.0.1"]);
    assert_eq!(a.trim(), c2ip);
    assert!(env.wait_bg(d, Duration::from_secs(10)).success());
    let rows = tshark_fields(
        &dns,
        &["frame.packet_flags_direction", "dns.flags.response"],
    );
    assert_eq!(
        rows,
        [
            vec!["0x00000001".to_string(), "0".to_string()],
            vec!["0x00000002".to_string(), "1".to_string()]
        ],
        "{rows:?}"
    );

    // 3d. a capture whose reader goes away ends, even when no frame comes
    // (it would keep the socket NAT's direct writes paused)
    let idle = env.spawn_capture("cap", &["cap", "tcp port 9"]);
    assert_eq!(env.inspect("cap")["captures"], 1);
    unsafe { libc::kill(env.bg_pid(idle) as i32, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(5), || env.inspect("cap")["captures"]
            == 0),
        "the capture outlived its reader"
    );

    // 4. bad input: one line each, nothing started
    let e = env.fail(&["capture", "cap", "-c", "1", "tcp port"]);
    assert!(
        e.contains("invalid capture filter") && e.lines().count() == 1,
        "{e}"
    );
    let e = env.fail(&["capture", "nowhere", "-c", "1"]);
    assert!(e.contains("no such network or container: nowhere"), "{e}");
    let e = env.fail(&["capture", "cap", "--port", "c9", "-c", "1"]);
    assert!(e.contains("container c9 has no port on network cap"), "{e}");
}
