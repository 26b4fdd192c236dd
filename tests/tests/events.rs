//! `tapnet events`: a subscriber started before the changes sees them as
//! they happen, in order, with Docker's event shape: networks created and
//! removed, containers started and destroyed, endpoints connected and
//! disconnected, ports published and unpublished, a MAC moving and
//! spoofed frames (from the datapath's counters); `--since`/`--until`
//! replay the past, `--filter` narrows, the text format is Docker's.

use serde_json::Value;
use std::time::Duration;
use tapnet_tests::*;

/// An IPv4 frame (UDP to port 9, no checksum needed for the switch's
/// port-security check) from `src` with source address `sip`.
fn udp_frame(dmac: [u8; 6], smac: [u8; 6], sip: [u8; 4], dip: [u8; 4]) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&sip);
    ip.extend_from_slice(&dip);
    let mut s: u32 = ip
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    ip[10..12].copy_from_slice(&(!(s as u16)).to_be_bytes());
    ip.extend_from_slice(&[0x30, 0x39, 0, 9, 0, 8, 0, 0]);
    eth_frame(dmac, smac, [8, 0], &ip)
}

fn ip4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

/// (Type, Action, an attribute) of each event line.
fn summary(events: &[Value], attr: &str) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["Type"].as_str().unwrap_or_default().to_string(),
                e["Action"].as_str().unwrap_or_default().to_string(),
                e["Actor"]["Attributes"][attr]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn events_as_they_happen() {
    let Some(mut env) = Env::new("events_as_they_happen", &[]) else {
        return;
    };
    let sub = env.spawn_tapnet(&["events", "--format", "json"]);
    // the subscriber is listening before anything happens
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(env.bg_log(sub)).is_ok()
            && env.tapnet(&["network", "ls", "-q"]).status.success()
    }));
    std::thread::sleep(Duration::from_millis(500));

    env.ok(&["network", "create", "evn", "--subnet", "10.63.0.0/24"]);
    let c1 = env.container("evn", "c1", &[]);
    let c2 = env.container("evn", "c2", &["-p", "18081:80"]);
    // spoofed: c1 sends with c2's address (port security, the default)
    send_frames_from(
        &c1.ns,
        vec![udp_frame(
            parse_mac(&c2.mac),
            parse_mac(&c1.mac),
            ip4(&c2.ip.to_string()),
            ip4(&c2.ip.to_string()),
        )],
    );
    // a MAC moving: on a network without port security, a1 sends with
    // v2's MAC
    env.ok(&[
        "network",
        "create",
        "open",
        "--subnet",
        "10.64.0.0/24",
        "-o",
        "port_security=false",
    ]);
    let a1 = env.container("open", "a1", &[]);
    let v2 = env.container("open", "v2", &[]);
    assert!(ping(&env, &v2.ns, "10.64.0.1", 1));
    send_frames_from(
        &a1.ns,
        vec![eth_frame(
            [0xff; 6],
            parse_mac(&v2.mac),
            [0x88, 0xb5],
            b"moved",
        )],
    );
    // a run whose command exits: start, die, destroy
    env.ok(&["run", "--network", "evn", "--name", "short", "--", "true"]);
    // the datapath watcher reads its counters once a second
    std::thread::sleep(Duration::from_millis(2500));
    env.ok(&["rm", "c2"]);
    std::thread::sleep(Duration::from_millis(500));

    let text = std::fs::read_to_string(env.bg_log(sub)).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let s = summary(&events, "name");
    let pos = |t: &str, a: &str, n: &str| {
        s.iter()
            .position(|x| x.0 == t && x.1 == a && x.2 == n)
            .unwrap_or_else(|| panic!("no {t} {a} {n} in:\n{text}"))
    };
    // a network event about a container
    let pos_ctr = |action: &str, c: &str| {
        s.iter()
            .zip(&events)
            .position(|(x, e)| x.1 == action && e["Actor"]["Attributes"]["container"] == c)
            .unwrap_or_else(|| panic!("no {action} of {c} in:\n{text}"))
    };
    // in the order they happened
    let created = pos("network", "create", "evn");
    let started = pos("container", "start", "c1");
    let connected = pos_ctr("connect", "c1");
    assert!(created < started && created < connected, "{text}");
    let publish = &events[pos("container", "publish", "c2")];
    assert_eq!(
        publish["Actor"]["Attributes"]["port"],
        "0.0.0.0:18081->80/tcp"
    );
    assert_eq!(publish["Actor"]["Attributes"]["network"], "evn");
    // Docker's shape
    let net = &events[created];
    let id = env.inspect("evn")["id"].as_str().unwrap().to_string();
    assert_eq!(net["Actor"]["ID"], id);
    assert_eq!(net["Actor"]["Attributes"]["type"], "bridge");
    assert_eq!(net["scope"], "local");
    assert!(net["time"].as_u64().unwrap() > 1_700_000_000);
    assert!(net["timeNano"].as_u64().unwrap() / 1_000_000_000 == net["time"].as_u64().unwrap());
    // the datapath's: c1's spoofed frame, the MAC that moved to a1
    let dp = summary(&events, "container");
    assert!(
        dp.iter()
            .any(|x| x.0 == "datapath" && x.1 == "spoofed" && x.2 == "c1"),
        "{text}"
    );
    assert!(
        dp.iter()
            .any(|x| x.0 == "datapath" && x.1 == "mac_move" && x.2 == "a1"),
        "{text}"
    );
    // removing c2: unpublished, disconnected, destroyed, in that order
    let unpub = pos("container", "unpublish", "c2");
    let disc = pos_ctr("disconnect", "c2");
    let destroyed = pos("container", "destroy", "c2");
    let (s0, s1, s2) = (
        pos("container", "start", "short"),
        pos("container", "die", "short"),
        pos("container", "destroy", "short"),
    );
    assert!(s0 < s1 && s1 < s2, "{text}");
    assert!(unpub < disc && disc < destroyed, "{text}");

    // the past, filtered, in Docker's text format; --until ends it
    env.ok(&["rm", "a1", "v2"]);
    env.ok(&["network", "rm", "open"]);
    // what happened in the last 5 minutes, through `filters`
    let past_of = |filters: &[&str]| {
        let mut a = vec!["events", "--since", "5m", "--until", "0s"];
        for f in filters {
            a.extend(["--filter", f]);
        }
        env.ok(&a)
    };
    let past = past_of(&["type=network", "name=evn"]);
    let lines: Vec<&str> = past.lines().collect();
    assert!(lines.len() >= 3, "{past}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" network ") && l.contains("name=evn")),
        "{past}"
    );
    assert!(
        lines[0].contains(&format!("network create {id} (name=evn, type=bridge)")),
        "{past}"
    );
    // RFC 3339 time first
    assert!(lines[0]
        .split(' ')
        .next()
        .is_some_and(|t| t.ends_with('Z') && t.contains('T')));
    let gone = past_of(&["action=destroy", "type=network"]);
    assert!(gone.contains("name=open"), "{gone}");
    // bad input: one line
    let e = env.fail(&["events", "--since", "yesterday-ish"]);
    assert!(
        e.contains("invalid --since") && e.lines().count() == 1,
        "{e}"
    );

    // a subscriber does not keep the daemon from stopping: its stream
    // ends, and the daemon exits on SIGTERM
    let late = env.spawn_tapnet(&["events"]);
    std::thread::sleep(Duration::from_millis(500));
    let pid = env.daemon_pid().expect("daemon");
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.split(' ').nth(2) == Some("Z"))
    };
    assert!(
        wait_until(Duration::from_secs(10), gone),
        "the daemon did not stop while a subscriber listened"
    );
    env.stop_daemon(libc::SIGTERM);
    assert!(
        env.wait_bg(late, Duration::from_secs(5)).success(),
        "the subscriber's stream did not end cleanly"
    );
}

/// The packet NAT refusing flows beyond a container's share
/// (`--nat-quota`) is an event while someone listens.
#[test]
fn nat_exhaustion_is_an_event() {
    let Some(mut env) = Env::with_uplink("nat_exhaustion_is_an_event", &["--nat-quota", "2"])
    else {
        return;
    };
    env.ok(&["network", "create", "q", "--subnet", "10.69.0.0/24"]);
    let c = env.container("q", "greedy", &[]);
    let sub = env.spawn_tapnet(&["events", "--format", "json", "--filter", "type=nat"]);
    std::thread::sleep(Duration::from_millis(800));
    // five UDP flows out (five source ports): two fit the quota
    in_ns(&c.ns, || {
        for port in 6101..6106u16 {
            let s = std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap();
            s.send_to(b"hi", (INET_IP, 7300)).unwrap();
        }
    })
    .join()
    .unwrap();
    let log = env.bg_log(sub);
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("quota_exceeded"))),
        "no NAT event: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let e: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(e["Type"], "nat");
    assert_eq!(e["Action"], "exhausted");
    assert_eq!(e["Actor"]["Attributes"]["reason"], "quota_exceeded");
    let n: u64 = e["Actor"]["Attributes"]["count"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&n), "{e}");
}
