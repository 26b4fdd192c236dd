//! tcprr - TCP request/response latency, IPv4 or IPv6: what sockperf's
//! `ping-pong --tcp -m 64 --full-rtt` measures, for the e2e rows sockperf
//! 3.7 cannot run (it takes IPv4 addresses only). One connection, one
//! 64-byte message at a time, Nagle off; prints the round-trip time
//! percentiles in microseconds.
//!
//!   tcprr server ADDR PORT
//!   tcprr client ADDR PORT SECONDS    -> "p50 P50 p99 P99 n N"

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const MSG: usize = 64;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: tcprr server ADDR PORT | tcprr client ADDR PORT SECONDS");
        std::process::exit(2)
    };
    if a.len() < 4 {
        usage();
    }
    let ip: IpAddr = a[2].parse().unwrap_or_else(|_| usage());
    let port: u16 = a[3].parse().unwrap_or_else(|_| usage());
    let addr = SocketAddr::new(ip, port);
    match a[1].as_str() {
        "server" => server(addr),
        "client" if a.len() == 5 => {
            let secs: u64 = a[4].parse().unwrap_or_else(|_| usage());
            client(addr, Duration::from_secs(secs))
        }
        _ => usage(),
    }
}

fn server(addr: SocketAddr) {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| {
        eprintln!("tcprr: binding {addr}: {e}");
        std::process::exit(1)
    });
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        let _ = c.set_nodelay(true);
        std::thread::spawn(move || {
            let mut b = [0u8; MSG];
            while c.read_exact(&mut b).is_ok() {
                if c.write_all(&b).is_err() {
                    break;
                }
            }
        });
    }
}

fn client(addr: SocketAddr, dur: Duration) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| {
        eprintln!("tcprr: connecting to {addr}: {e}");
        std::process::exit(1)
    });
    let _ = s.set_nodelay(true);
    let mut b = [7u8; MSG];
    let mut rtts: Vec<u32> = Vec::with_capacity(1 << 20);
    // a short warm-up, as sockperf does
    let warm = Instant::now() + Duration::from_millis(200);
    while Instant::now() < warm {
        s.write_all(&b).and_then(|_| s.read_exact(&mut b)).unwrap();
    }
    let end = Instant::now() + dur;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        s.write_all(&b).and_then(|_| s.read_exact(&mut b)).unwrap();
        rtts.push(t0.elapsed().as_nanos() as u32);
    }
    rtts.sort_unstable();
    let pct = |p: f64| {
        let i = ((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1));
        rtts.get(i).map(|n| *n as f64 / 1000.0).unwrap_or(f64::NAN)
    };
    println!("p50 {:.3} p99 {:.3} n {}", pct(0.5), pct(0.99), rtts.len());
}
