//! Prometheus metrics (`--metrics-addr`, Docker's port 9323): GET
//! /metrics answers Prometheus's text format (0.0.4, what Docker's own
//! /metrics serves and `promtool check metrics` checks), encoded by the
//! `prometheus` crate's text encoder from one snapshot per scrape:
//! the datapath's counters (one round trip to its workers, as `network
//! inspect` takes), the NAT's connection table, the resolver's atomic
//! counters. Nothing is counted twice and nothing is kept between scrapes:
//! the counters are the datapath's own.
//!
//! Families (counters end in `_total` in the output):
//! - per port, labelled network, container (empty for a trunk, tunnel or
//!   the uplink), driver, kind, port (the device): rx/tx frames and bytes,
//!   flooded, gateway replies, punted, MACs learned and moved, drops by
//!   reason;
//! - per network: endpoints, MAC table entries; MAC moves, table-full
//!   drops; containers;
//! - the packet NAT (with an uplink): connections by protocol and state,
//!   ports in use and available per protocol, translations, drops by
//!   reason; the socket NAT (without): flows opened, refused, dropped;
//! - DNS: queries by result, answer latency (a histogram);
//! - the datapath: per worker, seconds its loop was busy (handling
//!   completions and submitting: neither waiting nor busy polling),
//!   frames switched and handed over; receive buffers in use.

use super::{ApiError, ApiResult, Core, DP_TIMEOUT};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use std::collections::BTreeMap;

type Labels = Vec<(&'static str, String)>;

/// What one scrape shows, gathered under the core's lock; encoded after.
#[derive(Debug, Default)]
pub struct Scrape {
    ports: Vec<(Labels, vswitch::PortCounters)>,
    /// (network, driver, scope) -> (endpoints, MAC entries)
    nets: Vec<(Labels, u64, u64)>,
    containers: u64,
    mac_moves: u64,
    mac_table_full: u64,
    busy_ns: Vec<u64>,
    workers: Vec<vswitch::datapath::WorkerSnapshot>,
    rx_buffers: u64,
    rx_buffers_in_use: u64,
    nat: Option<NatScrape>,
    socknat: Vec<(&'static str, u64)>,
    dns: dns::StatsSnapshot,
    dns_latency: dns::LatencySnapshot,
}

#[derive(Debug, Default)]
struct NatScrape {
    stats: nat::NatStats,
    /// (proto, state) -> connections
    conns: BTreeMap<(String, String), u64>,
    /// proto -> distinct external ports in use
    ports_used: BTreeMap<String, u64>,
    ports_available: u64,
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        p => p.to_string(),
    }
}

impl Core {
    /// The metrics text for one scrape.
    pub fn metrics_text(&self) -> ApiResult<String> {
        let mut fams = self.scrape()?.families();
        // a family without samples (no helper workers, no ports yet) is
        // left out: the encoder refuses one
        fams.retain(|f| !f.get_metric().is_empty());
        prometheus::TextEncoder::new()
            .encode_to_string(&fams)
            .map_err(|e| ApiError::internal(format!("encoding the metrics: {e}")))
    }

    fn scrape(&self) -> ApiResult<Scrape> {
        // the NAT's table counted on the datapath thread, not copied
        let snap = self
            .dp
            .snapshot_summary(DP_TIMEOUT)
            .map_err(ApiError::internal)?;
        let mut s = Scrape {
            containers: self.containers.len() as u64,
            mac_moves: snap.mac_moves,
            mac_table_full: snap.mac_table_full,
            busy_ns: snap.busy_ns.clone(),
            workers: snap.workers.clone(),
            rx_buffers: snap.rx_buffers as u64,
            rx_buffers_in_use: snap.rx_buffers_in_use as u64,
            dns: self.resolver.stats.snapshot(),
            dns_latency: self.resolver.stats.latency.snapshot(),
            ..Default::default()
        };
        // port id -> (network, driver, container)
        let mut owner: BTreeMap<u64, (String, String, String)> = BTreeMap::new();
        let mut by_idx = BTreeMap::new();
        for n in self.nets.values() {
            by_idx.insert(n.idx, (n.rec.name.clone(), n.rec.driver.clone()));
            for (c, p) in &n.ports {
                owner.insert(*p, (n.rec.name.clone(), n.rec.driver.clone(), c.clone()));
            }
            let macs = snap.macs.iter().filter(|m| m.net == n.idx).count() as u64;
            s.nets.push((
                vec![
                    ("network", n.rec.name.clone()),
                    ("driver", n.rec.driver.clone()),
                    ("scope", n.drv.scope().as_str().to_string()),
                ],
                n.rec.endpoints.len() as u64,
                macs,
            ));
        }
        for p in &snap.ports {
            let (net, drv, ctr) = owner.get(&p.id).cloned().unwrap_or_else(|| {
                let (n, d) = by_idx.get(&p.net).cloned().unwrap_or_default();
                (n, d, String::new())
            });
            s.ports.push((
                vec![
                    ("network", net),
                    ("container", ctr),
                    ("driver", drv),
                    ("kind", format!("{:?}", p.kind).to_lowercase()),
                    ("port", p.name.clone()),
                ],
                p.counters,
            ));
        }
        if let Some(u) = &snap.uplink {
            let mut n = NatScrape {
                stats: u.nat,
                ..Default::default()
            };
            if let Some(sum) = &u.summary {
                for ((p, state), v) in &sum.conns {
                    n.conns.insert((proto_name(*p), state.to_string()), *v);
                }
                n.ports_used = sum
                    .ports_in_use
                    .iter()
                    .map(|(p, v)| (proto_name(*p), *v))
                    .collect();
            }
            if let Some(a) = &self.cfg.uplink {
                n.ports_available = (a.ports.1 as u64).saturating_sub(a.ports.0 as u64) + 1;
            }
            s.nat = Some(n);
        }
        if let Some(sn) = &self.socknat {
            let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            let st = &sn.stats;
            s.socknat = vec![
                ("tcp_opened", g(&st.tcp_opened)),
                ("tcp_refused", g(&st.tcp_refused)),
                ("udp_flows", g(&st.udp_flows)),
                ("ping_flows", g(&st.ping_flows)),
                ("ping_refused", g(&st.ping_refused)),
                ("dropped", g(&st.dropped)),
                ("reassembled", g(&st.reassembled)),
                ("quota_exceeded", g(&st.quota_exceeded)),
            ];
        }
        Ok(s)
    }
}

/// One family: a value per label set. Counters are named with `_total`.
fn family(
    name: &str,
    help: &str,
    ty: MetricType,
    rows: impl IntoIterator<Item = (Labels, f64)>,
) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(ty);
    let metrics = rows
        .into_iter()
        .map(|(labels, v)| {
            let mut m = Metric::from_label(
                labels
                    .into_iter()
                    .map(|(k, v)| {
                        let mut l = LabelPair::default();
                        l.set_name(k.to_string());
                        l.set_value(v);
                        l
                    })
                    .collect(),
            );
            if ty == MetricType::COUNTER {
                let mut c = Counter::default();
                c.set_value(v);
                m.set_counter(c);
            } else {
                let mut g = Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }
            m
        })
        .collect();
    f.set_metric(metrics);
    f
}

fn with(labels: &Labels, k: &'static str, v: impl Into<String>) -> Labels {
    let mut l = labels.clone();
    l.push((k, v.into()));
    l
}

/// Rows labelled `key` = each name, e.g. drops by reason.
fn keyed<'a>(
    key: &'static str,
    rows: impl IntoIterator<Item = (&'a str, u64)>,
) -> Vec<(Labels, f64)> {
    rows.into_iter()
        .map(|(k, v)| (vec![(key, k.to_string())], v as f64))
        .collect()
}

fn one(v: u64) -> [(Labels, f64); 1] {
    [(vec![], v as f64)]
}

impl Scrape {
    fn families(&self) -> Vec<MetricFamily> {
        use MetricType::{COUNTER, GAUGE};
        let mut out = Vec::new();
        type Field = fn(&vswitch::PortCounters) -> u64;
        let port_fields: [(&str, &str, Field); 10] = [
            (
                "tapnet_port_rx_frames_total",
                "Frames received from the port",
                |c| c.rx_frames,
            ),
            (
                "tapnet_port_rx_bytes_total",
                "Bytes received from the port",
                |c| c.rx_bytes,
            ),
            (
                "tapnet_port_tx_frames_total",
                "Frames sent to the port",
                |c| c.tx_frames,
            ),
            (
                "tapnet_port_tx_bytes_total",
                "Bytes sent to the port",
                |c| c.tx_bytes,
            ),
            (
                "tapnet_port_flooded_frames_total",
                "Frames from the port flooded to its network",
                |c| c.rx_flooded,
            ),
            (
                "tapnet_port_gateway_replies_total",
                "Frames the gateway answered (ARP, NDP, ICMP echo)",
                |c| c.gateway_replies,
            ),
            (
                "tapnet_port_punted_frames_total",
                "Frames handed to the services behind the gateway",
                |c| c.punted,
            ),
            (
                "tapnet_port_macs_learned_total",
                "MACs first seen on the port",
                |c| c.macs_learned,
            ),
            (
                "tapnet_port_macs_moved_in_total",
                "MACs that moved to the port",
                |c| c.macs_moved_in,
            ),
            (
                "tapnet_port_mac_limit_total",
                "New source MACs not learned (the port had its share)",
                |c| c.mac_limit,
            ),
        ];
        for (name, help, f) in port_fields {
            out.push(family(
                name,
                help,
                COUNTER,
                self.ports.iter().map(|(l, c)| (l.clone(), f(c) as f64)),
            ));
        }
        let mut drops = Vec::new();
        for (l, c) in &self.ports {
            if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(c.drops) {
                for (reason, v) in m {
                    drops.push((with(l, "reason", reason), v.as_u64().unwrap_or(0) as f64));
                }
            }
        }
        out.push(family(
            "tapnet_port_drops_total",
            "Frames from the port dropped, by reason",
            COUNTER,
            drops,
        ));
        // per network: the sums over its ports (its containers', its
        // trunk or tunnel)
        let net_fields: [(&str, &str, Field); 4] = [
            (
                "tapnet_network_rx_frames_total",
                "Frames received from the network's ports",
                |c| c.rx_frames,
            ),
            (
                "tapnet_network_rx_bytes_total",
                "Bytes received from the network's ports",
                |c| c.rx_bytes,
            ),
            (
                "tapnet_network_tx_frames_total",
                "Frames sent to the network's ports",
                |c| c.tx_frames,
            ),
            (
                "tapnet_network_tx_bytes_total",
                "Bytes sent to the network's ports",
                |c| c.tx_bytes,
            ),
        ];
        for (name, help, f) in net_fields {
            let rows = self.nets.iter().map(|(l, _, _)| {
                let sum: u64 = self
                    .ports
                    .iter()
                    .filter(|(pl, _)| pl.first() == l.first())
                    .map(|(_, c)| f(c))
                    .sum();
                (l.clone(), sum as f64)
            });
            out.push(family(name, help, COUNTER, rows));
        }
        out.push(family(
            "tapnet_network_endpoints",
            "Endpoints attached to the network",
            GAUGE,
            self.nets.iter().map(|(l, e, _)| (l.clone(), *e as f64)),
        ));
        out.push(family(
            "tapnet_network_mac_entries",
            "Entries of the network in the MAC table",
            GAUGE,
            self.nets.iter().map(|(l, _, m)| (l.clone(), *m as f64)),
        ));
        out.push(family(
            "tapnet_containers",
            "Containers the daemon knows",
            GAUGE,
            one(self.containers),
        ));
        out.push(family(
            "tapnet_mac_moves_total",
            "MACs seen moving to another port",
            COUNTER,
            one(self.mac_moves),
        ));
        out.push(family(
            "tapnet_mac_table_full_drops_total",
            "MACs not learned: the table was full",
            COUNTER,
            one(self.mac_table_full),
        ));
        // the datapath
        let wl = |i: usize| -> Labels { vec![("worker", i.to_string())] };
        out.push(family(
            "tapnet_datapath_busy_seconds_total",
            "Time each datapath worker's loop spent handling completions and submitting (not waiting, not busy polling)",
            COUNTER,
            self.busy_ns.iter().enumerate().map(|(i, ns)| (wl(i), *ns as f64 / 1e9)),
        ));
        type WField = fn(&vswitch::datapath::WorkerSnapshot) -> u64;
        let worker_fields: [(&str, &str, WField); 3] = [
            (
                "tapnet_datapath_switched_frames_total",
                "Frames a helper worker switched itself",
                |x| x.switched,
            ),
            (
                "tapnet_datapath_handed_off_frames_total",
                "Frames handed from the helpers to the main worker",
                |x| x.handed_off,
            ),
            (
                "tapnet_datapath_handoff_drops_total",
                "Frames dropped on the way to the main worker",
                |x| x.handoff_drops,
            ),
        ];
        for (name, help, f) in worker_fields {
            out.push(family(
                name,
                help,
                COUNTER,
                self.workers
                    .iter()
                    .enumerate()
                    .map(|(i, x)| (wl(i), f(x) as f64)),
            ));
        }
        out.push(family(
            "tapnet_datapath_rx_buffers",
            "Receive buffers of the main worker",
            GAUGE,
            one(self.rx_buffers),
        ));
        out.push(family(
            "tapnet_datapath_rx_buffers_in_use",
            "Receive buffers of the main worker in use",
            GAUGE,
            one(self.rx_buffers_in_use),
        ));
        // the NATs
        if let Some(n) = &self.nat {
            out.push(family(
                "tapnet_nat_connections",
                "Connections in the packet NAT's table, by protocol and state",
                GAUGE,
                n.conns.iter().map(|((p, s), v)| {
                    (vec![("proto", p.clone()), ("state", s.clone())], *v as f64)
                }),
            ));
            out.push(family(
                "tapnet_nat_ports_in_use",
                "External ports the packet NAT's connections hold, by protocol",
                GAUGE,
                n.ports_used
                    .iter()
                    .map(|(p, v)| (vec![("proto", p.clone())], *v as f64)),
            ));
            out.push(family(
                "tapnet_nat_ports_available",
                "Size of the packet NAT's external port range (per protocol)",
                GAUGE,
                one(n.ports_available),
            ));
            let st = &n.stats;
            out.push(family(
                "tapnet_nat_translated_packets_total",
                "Packets the packet NAT translated",
                COUNTER,
                keyed(
                    "direction",
                    [("out", st.translated_out), ("in", st.translated_in)],
                ),
            ));
            out.push(family(
                "tapnet_nat_connections_created_total",
                "Connections the packet NAT created",
                COUNTER,
                one(st.created),
            ));
            out.push(family(
                "tapnet_nat_connections_expired_total",
                "Connections the packet NAT expired",
                COUNTER,
                one(st.expired),
            ));
            out.push(family(
                "tapnet_nat_drops_total",
                "Packets the packet NAT dropped or refused, by reason",
                COUNTER,
                keyed(
                    "reason",
                    [
                        ("ports_exhausted", st.ports_exhausted),
                        ("table_full", st.table_full),
                        ("unsupported", st.unsupported),
                        ("no_connection", st.no_connection),
                        ("quota_exceeded", st.quota_exceeded),
                        ("fragments", st.fragments),
                    ],
                ),
            ));
        }
        if !self.socknat.is_empty() {
            out.push(family(
                "tapnet_socknat_events_total",
                "The socket NAT's flows and refusals, by event",
                COUNTER,
                keyed("event", self.socknat.iter().copied()),
            ));
        }
        // DNS
        let d = &self.dns;
        out.push(family(
            "tapnet_dns_queries_total",
            "DNS queries the resolver took, by what became of them",
            COUNTER,
            keyed(
                "result",
                [
                    ("local", d.local),
                    ("nodata", d.nodata),
                    ("forwarded", d.forwarded),
                    ("cached", d.cached),
                    ("servfail", d.servfail),
                    ("formerr", d.formerr),
                    ("notimp", d.notimp),
                    ("truncated", d.truncated),
                    ("dropped", d.dropped),
                    ("throttled", d.throttled),
                ],
            ),
        ));
        out.push(family(
            "tapnet_dns_requests_total",
            "DNS queries received",
            COUNTER,
            one(d.queries),
        ));
        {
            let l = &self.dns_latency;
            let mut h = Histogram::default();
            h.set_sample_count(l.count);
            h.set_sample_sum(l.sum_seconds);
            let mut cum = 0;
            // the encoder writes the +Inf bucket itself from the count
            h.set_bucket(
                l.buckets
                    .iter()
                    .filter(|(b, _)| b.is_finite())
                    .map(|&(b, n)| {
                        cum += n;
                        let mut k = Bucket::default();
                        k.set_upper_bound(b);
                        k.set_cumulative_count(cum);
                        k
                    })
                    .collect(),
            );
            let mut m = Metric::default();
            m.set_histogram(h);
            let mut f = MetricFamily::default();
            f.set_name("tapnet_dns_answer_seconds".into());
            f.set_help(
                "Time from a DNS query reaching the resolver to its answer leaving it".into(),
            );
            f.set_field_type(MetricType::HISTOGRAM);
            f.set_metric(vec![m]);
            out.push(f);
        }
        out
    }
}
