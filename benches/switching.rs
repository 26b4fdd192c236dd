//! The switching core in-process: learn the source, look up the destination,
//! decide (unicast / flood / gateway / drop) for a batch of frames, and
//! account the egress, as the datapath does per received frame. Reported
//! as frames per second on one core.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tapnet_benches::{frame, host_mac};
use vswitch::switch::{Decision, Switch};
use vswitch::{Mac, NetConfig};

const BATCH: usize = 256;

struct Setup {
    sw: Switch,
    /// (ingress port, frame)
    frames: Vec<(u32, Vec<u8>)>,
}

/// `ports` ports on one network, `hosts` MACs behind each port; the batch
/// is unicast between random known hosts, with `bcast_every` broadcast.
fn setup(ports: u32, hosts: u32, bcast_every: usize) -> Setup {
    let mut sw = Switch::new(300_000, 1 << 20);
    sw.add_network(
        0,
        NetConfig {
            gateway_ip: "10.88.0.1".parse().unwrap(),
            gateway_mac: Mac([2, 0x42, 10, 88, 0, 1]),
            prefix: 24,
            routed: false,
            gateway: true,
            v6: None,
        },
    );
    let ids: Vec<u32> = (0..ports).map(|_| sw.add_port(0, 1500)).collect();
    // teach the table every host
    for (pi, &p) in ids.iter().enumerate() {
        for h in 0..hosts {
            let f = frame(Mac::BROADCAST, host_mac(pi as u32, h), 60);
            sw.decide(p, &f, 0);
        }
    }
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let frames = (0..BATCH)
        .map(|i| {
            let sp = (rnd() % ports as u64) as u32;
            let mut dp = (rnd() % ports as u64) as u32;
            if dp == sp {
                dp = (dp + 1) % ports;
            }
            let src = host_mac(sp, (rnd() % hosts as u64) as u32);
            let dst = if bcast_every > 0 && i % bcast_every == 0 {
                Mac::BROADCAST
            } else {
                host_mac(dp, (rnd() % hosts as u64) as u32)
            };
            (ids[sp as usize], frame(dst, src, 1514))
        })
        .collect();
    Setup { sw, frames }
}

fn run_batch(s: &mut Setup, now: u64) -> u64 {
    let mut out = 0u64;
    for (port, f) in &s.frames {
        match s.sw.decide(*port, black_box(f), now) {
            Decision::Unicast(p) => {
                s.sw.count_tx(p, f.len() - 10);
                out += p as u64;
            }
            Decision::Flood(n) | Decision::FloodExcept(n, _) => out += n as u64 + 1,
            Decision::Gateway(_) => out += 2,
            Decision::Drop(_) => out += 3,
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("switch_decide");
    g.throughput(Throughput::Elements(BATCH as u64));
    for &(ports, hosts, bcast, name) in &[
        (2u32, 1u32, 0usize, "2 ports, 1 MAC each, unicast"),
        (16, 16, 0, "16 ports, 256 MACs, unicast"),
        (64, 256, 0, "64 ports, 16k MACs, unicast"),
        (1000, 1, 0, "1000 ports, 1 MAC each, unicast"),
        (1000, 100, 0, "1000 ports, 100k MACs, unicast"),
        (16, 16, 16, "16 ports, 256 MACs, 1/16 broadcast"),
    ] {
        let mut s = setup(ports, hosts, bcast);
        let mut now = 1u64;
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                now += 1;
                run_batch(&mut s, now)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
