//! Prometheus metrics (`--metrics-addr`): scraped from the daemon's
//! namespace while a container sends through the NAT, checked with
//! Prometheus's own `promtool check metrics`, and against the traffic the
//! test made (port bytes, NAT connections, DNS queries and latency, the
//! datapath's busy time, per-container labels).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;
use tapnet_tests::*;

const ADDR: &str = "127.0.0.1:9323";

/// GET `path` from the metrics listener in namespace `ns`: (status line,
/// headers and body).
fn get(ns: &str, path: &str) -> (String, String) {
    let path = path.to_string();
    in_ns(ns, move || {
        let mut s = TcpStream::connect(ADDR).expect("metrics listener");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap_or((&r, ""));
        (head.to_string(), body.to_string())
    })
    .join()
    .unwrap()
}

/// The body of a chunked or plain HTTP answer.
fn body_of(head: &str, body: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

fn scrape(ns: &str) -> String {
    let (head, body) = get(ns, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body_of(&head, &body)
}

/// The value of the first sample of `name` whose labels include every one
/// of `labels` (`key="value"`); None if there is none.
fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (n, rest) = l.split_once(['{', ' ']).unwrap_or((l, ""));
            n == name && labels.iter().all(|x| rest.contains(x))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `promtool check metrics` (Prometheus's linter) on `text`: its verdict.
fn promtool(text: &str) -> (bool, String) {
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/deps.sh installs the prometheus package)");
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn prometheus_metrics_during_traffic() {
    require_tools(&["dig"], "bind9-dnsutils");
    require_tools(&["promtool"], "prometheus");
    require_tools(&["iperf3"], "iperf3");
    let Some(mut env) = Env::with_uplink(
        "prometheus_metrics_during_traffic",
        &["--metrics-addr", ADDR],
    ) else {
        return;
    };
    let host = env.host_ns.clone();
    let inet = env.inet_ns();
    env.ok(&["network", "create", "app", "--subnet", "10.62.0.0/24"]);
    let c1 = env.container("app", "c1", &[]);
    let c2 = env.container("app", "c2", &[]);
    assert!(ping(&env, &c1.ns, &c2.ip.to_string(), 3), "c1 -> c2");
    // DNS: a local name, answered by the gateway's resolver (dig, a real
    // client)
    let h = env.exec_ok(
        &c1.ns,
        &["dig", "+short", "+tries=1", "A", "c2", "@10.62.0.1"],
    );
    assert_eq!(h.trim(), c2.ip.to_string());

    let before = scrape(&host);
    let (ok, lint) = promtool(&before);
    assert!(ok, "promtool check metrics failed:\n{lint}\n{before}");

    // traffic through the NAT: iperf3 for 3 s, scraped while it runs
    let srv = env.spawn_in(
        &inet,
        &["iperf3", "-s", "-1", "-B", INET_IP],
        Stdio::null(),
        Stdio::null(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let cli = env.spawn_in(
        &c1.ns,
        &["iperf3", "-c", INET_IP, "-t", "3", "-b", "200M"],
        Stdio::null(),
        Stdio::null(),
    );
    std::thread::sleep(Duration::from_millis(1200));
    let during1 = scrape(&host);
    std::thread::sleep(Duration::from_millis(700));
    let during2 = scrape(&host);
    assert!(
        env.wait_bg(cli, Duration::from_secs(20)).success(),
        "iperf3 client"
    );
    env.wait_bg(srv, Duration::from_secs(10));
    let after = scrape(&host);
    let (ok, lint) = promtool(&during2);
    assert!(ok, "promtool check metrics failed:\n{lint}");

    let c1_labels = [
        "network=\"app\"",
        "container=\"c1\"",
        "driver=\"bridge\"",
        "kind=\"tap\"",
    ];
    let rx = |t: &str| value(t, "tapnet_port_rx_bytes_total", &c1_labels).unwrap_or(0.0);
    // c1's port: bytes climbing during the run (200 Mbit/s for 0.7 s is
    // about 17 MB), more than 50 MB in all
    assert!(
        rx(&during2) > rx(&during1) + 5e6,
        "{} -> {}",
        rx(&during1),
        rx(&during2)
    );
    assert!(
        rx(&after) > rx(&before) + 50e6,
        "{} -> {}",
        rx(&before),
        rx(&after)
    );
    // the NAT: an established TCP connection while iperf3 ran; packets
    // translated; ports in use within the range
    let est = value(
        &during2,
        "tapnet_nat_connections",
        &["proto=\"tcp\"", "state=\"established\""],
    );
    assert!(
        est.unwrap_or(0.0) >= 1.0,
        "no established NAT connection:\n{during2}"
    );
    assert!(value(&during2, "tapnet_nat_ports_in_use", &["proto=\"tcp\""]).unwrap_or(0.0) >= 1.0);
    assert!(value(&during2, "tapnet_nat_ports_available", &[]).unwrap_or(0.0) > 1000.0);
    let out = |t: &str| {
        value(
            t,
            "tapnet_nat_translated_packets_total",
            &["direction=\"out\""],
        )
        .unwrap_or(0.0)
    };
    assert!(out(&after) > out(&before) + 1000.0);
    // the network's sums: at least c1's bytes
    let net_rx = value(
        &after,
        "tapnet_network_rx_bytes_total",
        &["network=\"app\""],
    )
    .unwrap_or(0.0);
    assert!(net_rx >= rx(&after), "{net_rx} < {}", rx(&after));
    // the network and the datapath
    assert_eq!(
        value(&after, "tapnet_network_endpoints", &["network=\"app\""]),
        Some(2.0)
    );
    assert!(
        value(&after, "tapnet_network_mac_entries", &["network=\"app\""]).unwrap_or(0.0) >= 2.0
    );
    assert_eq!(value(&after, "tapnet_containers", &[]), Some(2.0));
    let busy =
        |t: &str| value(t, "tapnet_datapath_busy_seconds_total", &["worker=\"0\""]).unwrap_or(0.0);
    assert!(
        busy(&after) > busy(&before),
        "{} -> {}",
        busy(&before),
        busy(&after)
    );
    // DNS: the local answer counted, its latency in the histogram
    assert!(value(&after, "tapnet_dns_queries_total", &["result=\"local\""]).unwrap_or(0.0) >= 1.0);
    assert!(value(&after, "tapnet_dns_answer_seconds_count", &[]).unwrap_or(0.0) >= 1.0);
    assert!(
        value(&after, "tapnet_dns_answer_seconds_bucket", &["le=\"+Inf\""]).unwrap_or(0.0) >= 1.0
    );
    // drops are there by reason (zero or not)
    assert!(value(
        &after,
        "tapnet_port_drops_total",
        &["container=\"c1\"", "reason=\"spoofed\""]
    )
    .is_some());

    // the Grafana dashboard in contrib/ asks only for metrics that exist
    // (the socket NAT's exist without an uplink only)
    let dash = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/grafana/tapnet.json"),
    )
    .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash).expect("dashboard JSON");
    let mut asked = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            for (i, _) in e.match_indices("tapnet_") {
                let name: String = e[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if name.starts_with("tapnet_socknat_") {
                    continue;
                }
                asked += 1;
                assert!(
                    after.lines().any(|l| l.starts_with(&name)),
                    "the dashboard asks for {name}, which the daemon does not serve"
                );
            }
        }
    }
    assert!(asked >= 10, "{asked}");

    // anything else: 404
    let (head, _) = get(&host, "/nope");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}
