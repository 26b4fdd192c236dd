//! The NAT's per-packet cost against the size of its table: a batch of
//! outbound TCP segments of established connections, picked at random
//! from tables of 10, 10,000 and 60,000 connections, translated as the
//! datapath does (lookup, rewrite, checksum fix-up). Also prints what one
//! connection costs in memory (the process's RSS before and after filling
//! a table of 60,000). (Mapping is endpoint-independent: a container's
//! address and port keep one external port whatever they talk to, so one
//! external address holds at most one TCP connection per external port;
//! the bench opens the whole port range, 1024-65535.)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nat::{Nat, NatConfig};
use std::hint::black_box;
use vswitch::vnet::VNET_HDR_LEN;

const BATCH: usize = 256;
const EXT: [u8; 4] = [192, 0, 2, 2];
const MAC: [u8; 6] = [2, 0x42, 10, 88, 0, 2];

/// vnet header (no offload) + Ethernet + IPv4 + TCP (ACK, 12 bytes of
/// data) from container `src`:`sport` to 198.51.100.7:443, checksums
/// right.
fn segment(src: [u8; 4], sport: u16, flags: u8) -> Vec<u8> {
    let mut b = vec![0u8; VNET_HDR_LEN];
    b.extend_from_slice(&[0xaa; 12]);
    b.extend_from_slice(&0x0800u16.to_be_bytes());
    let dst = [198, 51, 100, 7];
    let payload = b"hello, world";
    let ip = wire::ipv4::emit(20 + payload.len(), 6, 64, src.into(), dst.into());
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp.extend_from_slice(payload);
    // pseudo-header + segment
    let mut ph = Vec::with_capacity(12 + tcp.len());
    ph.extend_from_slice(&src);
    ph.extend_from_slice(&dst);
    ph.extend_from_slice(&[0, 6]);
    ph.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    ph.extend_from_slice(&tcp);
    let c = nat::csum::checksum(&ph);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    b.extend_from_slice(&ip);
    b.extend_from_slice(&tcp);
    b
}

/// Connection `i`: container 10.88.x.y (250 per address), its own port.
fn conn(i: usize) -> ([u8; 4], u16) {
    let host = i / 250;
    (
        [10, 88, (host >> 8) as u8, host as u8 + 2],
        10_000 + (i % 250) as u16,
    )
}

fn table(n: usize) -> Nat {
    let mut cfg = NatConfig::new(EXT.into());
    cfg.per_container = 0;
    cfg.ports = (1024, 65535);
    cfg.max_conns = n.max(1 << 18);
    let mut nat = Nat::new(cfg);
    for i in 0..n {
        let (src, sport) = conn(i);
        let mut f = segment(src, sport, 0x02); // SYN
        nat.outbound(0, MAC, &mut f, 1).expect("a new connection");
    }
    assert_eq!(nat.len(), n);
    nat
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let before = rss_kib();
    let big = table(60_000);
    let after = rss_kib();
    eprintln!(
        "NAT table: 60000 connections, RSS {before} -> {after} KiB: {} bytes per connection",
        (after.saturating_sub(before)) * 1024 / 60_000
    );
    drop(big);
    let mut g = c.benchmark_group("nat_outbound");
    g.throughput(Throughput::Elements(BATCH as u64));
    for n in [10usize, 10_000, 60_000] {
        let mut nat = table(n);
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let batch: Vec<Vec<u8>> = (0..BATCH)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let (src, sport) = conn((x % n as u64) as usize);
                segment(src, sport, 0x10) // ACK
            })
            .collect();
        let mut scratch: Vec<Vec<u8>> = batch.clone();
        let mut now = 2u64;
        g.bench_function(
            BenchmarkId::from_parameter(format!("{n} connections")),
            |b| {
                b.iter(|| {
                    now += 1;
                    let mut ok = 0u32;
                    for (s, f) in scratch.iter_mut().zip(&batch) {
                        // the rewrite is in place: start from the original
                        s.copy_from_slice(f);
                        ok += nat.outbound(0, MAC, black_box(s), now).is_ok() as u32;
                    }
                    assert_eq!(ok as usize, BATCH);
                    ok
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
