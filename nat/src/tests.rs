use super::*;

const C: [u8; 4] = [10, 88, 0, 2];
const R: [u8; 4] = [198, 51, 100, 7];
const EXT: [u8; 4] = [192, 0, 2, 2];
const MAC: [u8; 6] = [2, 0x42, 10, 88, 0, 2];

/// vnet + Ethernet + IPv4 + L4 (`l4` bytes, checksums complete).
fn frame(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; VNET];
    b.extend_from_slice(&[0xaa; 12]);
    b.extend_from_slice(&[8, 0]);
    b.extend_from_slice(&wire::ipv4::emit(
        l4.len(),
        proto,
        64,
        src.into(),
        dst.into(),
    ));
    b.extend_from_slice(l4);
    fix_l4(&mut b);
    b
}

fn pseudo_sum(b: &[u8]) -> u32 {
    let proto = b[IP + 9];
    let len = (rd16(b, IP + 2) as usize - 20) as u16;
    let mut ph = Vec::new();
    ph.extend_from_slice(&b[IP + 12..IP + 20]);
    ph.extend_from_slice(&[0, proto]);
    ph.extend_from_slice(&len.to_be_bytes());
    csum::sum(&ph)
}

/// Recomputes the L4 checksum from scratch.
fn fix_l4(b: &mut [u8]) {
    let proto = b[IP + 9];
    let l4 = IP + 20;
    match proto {
        PROTO_TCP | PROTO_UDP => {
            let co = l4 + if proto == PROTO_TCP { 16 } else { 6 };
            wr16(b, co, 0);
            let s = pseudo_sum(b) + csum::sum(&b[l4..]);
            let mut s = s;
            while s >> 16 != 0 {
                s = (s & 0xffff) + (s >> 16);
            }
            wr16(b, co, !(s as u16));
        }
        PROTO_ICMP => {
            wr16(b, l4 + 2, 0);
            let c = csum::checksum(&b[l4..]);
            wr16(b, l4 + 2, c);
        }
        _ => {}
    }
}

/// Asserts every checksum of the frame is right.
fn valid(b: &[u8]) {
    assert_eq!(csum::checksum(&b[IP..IP + 20]), 0, "IP header checksum");
    let mut c = b.to_vec();
    let proto = b[IP + 9];
    let co = IP
        + 20
        + if proto == PROTO_TCP {
            16
        } else if proto == PROTO_UDP {
            6
        } else {
            2
        };
    fix_l4(&mut c);
    let (x, y) = (rd16(b, co), rd16(&c, co));
    assert!(
        x == y || (x == 0xffff && y == 0) || (x == 0 && y == 0xffff),
        "L4 checksum {x:#x} != {y:#x}"
    );
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    wr16(&mut t, 0, sport);
    wr16(&mut t, 2, dport);
    t[12] = 5 << 4;
    t[13] = flags;
    t.extend_from_slice(b"hello, world");
    t
}

fn nat() -> Nat {
    Nat::new(NatConfig::new(EXT.into()))
}

#[test]
fn tcp_round_trip_with_full_checksums() {
    let mut n = nat();
    let mut b = frame(C, R, PROTO_TCP, &tcp(40000, 80, 2));
    n.outbound(1, MAC, &mut b, 0).unwrap();
    assert_eq!(ip4(&b, IP + 12), EXT);
    assert_eq!(rd16(&b, IP + 20), 40000, "inside port kept when free");
    valid(&b);
    let mut r = frame(R, EXT, PROTO_TCP, &tcp(80, 40000, 0x12));
    let inside = n.inbound(&mut r, 1).unwrap();
    assert_eq!(inside, Inside { net: 1, mac: MAC });
    assert_eq!(ip4(&r, IP + 16), C);
    assert_eq!(rd16(&r, IP + 22), 40000);
    valid(&r);
    assert_eq!(n.entries(1)[0].state, "established");
    // a second inside host with the same port gets another outside port
    let mut b2 = frame([10, 88, 0, 3], R, PROTO_TCP, &tcp(40000, 80, 2));
    n.outbound(1, MAC, &mut b2, 2).unwrap();
    assert_ne!(rd16(&b2, IP + 20), 40000);
    valid(&b2);
}

#[test]
fn partial_checksums_stay_partial_and_right() {
    let mut n = nat();
    let mut b = frame(C, R, PROTO_TCP, &tcp(40001, 443, 0x18));
    // as an offloaded frame: NEEDS_CSUM, the field holds the pseudo sum
    b[0] = F_NEEDS_CSUM;
    let ps = {
        let mut s = pseudo_sum(&b);
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    };
    wr16(&mut b, IP + 20 + 16, ps);
    n.outbound(1, MAC, &mut b, 0).unwrap();
    let mut want = pseudo_sum(&b);
    while want >> 16 != 0 {
        want = (want & 0xffff) + (want >> 16);
    }
    assert_eq!(
        rd16(&b, IP + 20 + 16),
        want as u16,
        "pseudo-header sum for the new address"
    );
}

#[test]
fn udp_icmp_echo_and_errors() {
    let mut n = nat();
    let mut u = vec![0u8; 8];
    wr16(&mut u, 0, 5353);
    wr16(&mut u, 2, 53);
    u.extend_from_slice(b"query");
    wr16(&mut u, 4, 13);
    let mut b = frame(C, R, PROTO_UDP, &u);
    n.outbound(2, MAC, &mut b, 0).unwrap();
    valid(&b);
    let nport = rd16(&b, IP + 20);
    // port unreachable from the remote, quoting our packet
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&b[IP..]);
    let mut e = frame(R, EXT, PROTO_ICMP, &icmp);
    let inside = n.inbound(&mut e, 1).unwrap();
    assert_eq!(inside.net, 2);
    assert_eq!(ip4(&e, IP + 16), C);
    let emb = IP + 28;
    assert_eq!(ip4(&e, emb + 12), C, "embedded source mapped back");
    assert_eq!(rd16(&e, emb + 20), 5353);
    assert_eq!(
        csum::checksum(&e[emb..emb + 20]),
        0,
        "embedded header checksum"
    );
    valid(&e);
    assert_eq!(n.stats.icmp_errors_in, 1);
    let _ = nport;
    // ping: identifier translated both ways
    let mut p = frame(C, R, PROTO_ICMP, &[8, 0, 0, 0, 0x12, 0x34, 0, 1, 1, 2, 3]);
    n.outbound(2, MAC, &mut p, 0).unwrap();
    valid(&p);
    let id = rd16(&p, IP + 24);
    let mut rep = frame(
        R,
        EXT,
        PROTO_ICMP,
        &[0, 0, 0, 0, (id >> 8) as u8, id as u8, 0, 1, 1, 2, 3],
    );
    n.inbound(&mut rep, 1).unwrap();
    assert_eq!(rd16(&rep, IP + 24), 0x1234);
    valid(&rep);
}

#[test]
fn unsolicited_fragments_exhaustion_expiry() {
    let mut n = Nat::new(NatConfig {
        ports: (50000, 50001),
        ..NatConfig::new(EXT.into())
    });
    let mut r = frame(R, EXT, PROTO_TCP, &tcp(80, 50000, 2));
    assert_eq!(n.inbound(&mut r, 0), Err(NatDrop::NoConnection));
    // a later fragment of a datagram whose first fragment never passed
    let mut f = frame(C, R, PROTO_UDP, &[0; 16]);
    f[IP + 6] = 0x20;
    f[IP + 7] = 0x10; // offset 16 * 8
    assert_eq!(n.outbound(1, MAC, &mut f, 0), Err(NatDrop::Fragment));
    for (i, sport) in [1000u16, 1001].into_iter().enumerate() {
        let mut b = frame(C, R, PROTO_TCP, &tcp(sport, 80, 2));
        n.outbound(1, MAC, &mut b, i as u64).unwrap();
    }
    let mut b = frame(C, R, PROTO_TCP, &tcp(1002, 80, 2));
    assert_eq!(n.outbound(1, MAC, &mut b, 2), Err(NatDrop::PortsExhausted));
    assert_eq!(n.stats.ports_exhausted, 1);
    // SYN_SENT times out after 120 s; then the port is free again
    assert_eq!(n.expire(60_000), 0);
    assert_eq!(n.expire(200_000), 2);
    assert!(n.is_empty());
    let mut b = frame(C, R, PROTO_TCP, &tcp(1002, 80, 2));
    n.outbound(1, MAC, &mut b, 200_001).unwrap();
    // garbage never panics
    for len in 0..80 {
        let mut g = vec![0x45u8; len];
        let _ = n.outbound(1, MAC, &mut g, 0);
        let _ = n.inbound(&mut g, 0);
    }
}

#[test]
fn published_port_keeps_the_client_address() {
    let mut n = nat();
    let to = Forward {
        net: 3,
        ip: Some(C.into()),
        ip6: None,
        port: 80,
        mac: MAC,
    };
    n.add_forward(PROTO_TCP, 8080, to);
    // a stray ACK opens nothing
    let mut ack = frame(R, EXT, PROTO_TCP, &tcp(55000, 8080, 0x10));
    assert_eq!(n.inbound(&mut ack, 0), Err(NatDrop::NoConnection));
    let mut syn = frame(R, EXT, PROTO_TCP, &tcp(55000, 8080, 0x02));
    assert_eq!(n.inbound(&mut syn, 0).unwrap(), Inside { net: 3, mac: MAC });
    assert_eq!(
        ip4(&syn, IP + 12),
        R,
        "the client's address reaches the container"
    );
    assert_eq!(ip4(&syn, IP + 16), C);
    assert_eq!(rd16(&syn, IP + 22), 80);
    valid(&syn);
    // the answer leaves from the published port
    let mut synack = frame(C, R, PROTO_TCP, &tcp(80, 55000, 0x12));
    n.outbound(3, MAC, &mut synack, 1).unwrap();
    assert_eq!(ip4(&synack, IP + 12), EXT);
    assert_eq!(rd16(&synack, IP + 20), 8080);
    valid(&synack);
    // the published port is never handed out for masquerading
    let mut b = frame([10, 88, 0, 9], R, PROTO_TCP, &tcp(8080, 80, 2));
    n.outbound(1, MAC, &mut b, 2).unwrap();
    assert_ne!(rd16(&b, IP + 20), 8080);
    // expiry keeps the reservation
    n.expire(10_000_000);
    let mut b = frame([10, 88, 0, 9], R, PROTO_TCP, &tcp(8080, 81, 2));
    n.outbound(1, MAC, &mut b, 10_000_001).unwrap();
    assert_ne!(rd16(&b, IP + 20), 8080);
    n.remove_forward(PROTO_TCP, 8080);
    let mut syn = frame(R, EXT, PROTO_TCP, &tcp(55001, 8080, 0x02));
    assert_eq!(n.inbound(&mut syn, 10_000_002), Err(NatDrop::NoConnection));
}

#[test]
fn fragments_follow_their_first_fragment() {
    let mut n = nat();
    let mut udp = vec![0u8; 8];
    wr16(&mut udp, 0, 4444);
    wr16(&mut udp, 2, 53);
    udp.extend_from_slice(&[7; 24]);
    // first fragment: MF, offset 0, IP ID 0x0001 (frame() sets it)
    let mut first = frame(C, R, PROTO_UDP, &udp);
    first[IP + 6] = 0x20;
    let c = csum::checksum(&{
        let mut h = first[IP..IP + 20].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    wr16(&mut first, IP + 10, c);
    n.outbound(1, MAC, &mut first, 0).unwrap();
    assert_eq!(ip4(&first, IP + 12), EXT);
    // the rest: offset 4 (32 bytes), no ports, same ID
    let mut rest = frame(C, R, PROTO_UDP, &[9; 16]);
    rest[IP + 6] = 0x00;
    rest[IP + 7] = 0x04;
    let c = csum::checksum(&{
        let mut h = rest[IP..IP + 20].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    wr16(&mut rest, IP + 10, c);
    n.outbound(1, MAC, &mut rest, 1).unwrap();
    assert_eq!(ip4(&rest, IP + 12), EXT);
    assert_eq!(csum::checksum(&rest[IP..IP + 20]), 0, "IP header checksum");
    // the answer, fragmented too
    let mut rfirst = frame(R, EXT, PROTO_UDP, &{
        let mut u = vec![0u8; 8];
        wr16(&mut u, 0, 53);
        wr16(&mut u, 2, rd16(&first, IP + 20));
        u.extend_from_slice(&[1; 24]);
        u
    });
    rfirst[IP + 6] = 0x20;
    wr16(&mut rfirst, IP + 4, 0x7777);
    n.inbound(&mut rfirst, 2).unwrap();
    let mut rrest = frame(R, EXT, PROTO_UDP, &[2; 16]);
    rrest[IP + 7] = 0x04;
    wr16(&mut rrest, IP + 4, 0x7777);
    assert_eq!(n.inbound(&mut rrest, 3).unwrap().net, 1);
    assert_eq!(ip4(&rrest, IP + 16), C);
}

#[test]
fn a_container_holds_only_its_share_of_connections() {
    let mut n = Nat::new(NatConfig {
        per_container: 2,
        ..NatConfig::new(EXT.into())
    });
    let open = |n: &mut Nat, src: [u8; 4], sport: u16, now: u64| {
        let mut b = frame(src, R, PROTO_TCP, &tcp(sport, 80, 2));
        n.outbound(1, MAC, &mut b, now)
    };
    assert!(open(&mut n, C, 1000, 0).is_ok());
    assert!(open(&mut n, C, 1001, 0).is_ok());
    assert_eq!(open(&mut n, C, 1002, 0), Err(NatDrop::Quota));
    assert_eq!(n.stats.quota_exceeded, 1);
    // an existing connection still passes, and another container is not
    // affected
    assert!(open(&mut n, C, 1000, 1).is_ok());
    let other = [10, 0, 0, 77];
    assert!(open(&mut n, other, 1000, 1).is_ok());
    // expiry gives the share back
    assert_eq!(n.expire(200_000), 3);
    assert!(open(&mut n, C, 1002, 200_001).is_ok());
}

#[test]
fn a_gone_container_leaves_no_connection_behind() {
    let mut n = nat();
    let mut b = frame(C, R, PROTO_TCP, &tcp(40000, 80, 2));
    n.outbound(1, MAC, &mut b, 0).unwrap();
    let other = [10, 0, 0, 77];
    let mut b2 = frame(other, R, PROTO_TCP, &tcp(40000, 80, 2));
    n.outbound(1, MAC, &mut b2, 0).unwrap();
    // the same address on another network is another container
    let mut b3 = frame(C, R, PROTO_TCP, &tcp(40001, 80, 2));
    n.outbound(2, MAC, &mut b3, 0).unwrap();
    assert_eq!(n.forget(1, C.into(), 1), 1);
    assert_eq!(n.len(), 2);
    assert_eq!(n.stats.forgotten, 1);
    // the answer to its flow finds nothing (a new owner of the address
    // does not get it), and its outside port is free again
    let mut r = frame(R, EXT, PROTO_TCP, &tcp(80, 40000, 0x12));
    assert_eq!(n.inbound(&mut r, 2), Err(NatDrop::NoConnection));
    let mut again = frame(C, R, PROTO_TCP, &tcp(40000, 80, 2));
    n.outbound(1, MAC, &mut again, 3).unwrap();
    assert_eq!(rd16(&again, IP + 20), 40000, "the port was given back");
}

#[test]
fn a_segment_nobody_owns_gets_a_reset() {
    // with ACK: the reset takes the acknowledged sequence number
    let mut seg = tcp(80, 40000, 0x18);
    seg[8..12].copy_from_slice(&7777u32.to_be_bytes());
    let b = frame(R, EXT, PROTO_TCP, &seg);
    let r = crate::rst::reset_for(&b, [2, 0, 0, 0, 0, 0xee]).unwrap();
    valid(&r);
    assert_eq!(ip4(&r, IP + 12), EXT);
    assert_eq!(ip4(&r, IP + 16), R);
    assert_eq!((rd16(&r, IP + 20), rd16(&r, IP + 22)), (40000, 80));
    assert_eq!(&r[IP + 24..IP + 28], &7777u32.to_be_bytes());
    assert_eq!(r[IP + 33], 0x04);
    assert_eq!(
        &r[VNET..VNET + 6],
        &b[VNET + 6..VNET + 12],
        "back to the sender"
    );
    // a SYN (no ACK): RST+ACK acknowledging it and its data
    let mut syn = tcp(50000, 81, 0x02);
    syn[4..8].copy_from_slice(&100u32.to_be_bytes());
    let r = crate::rst::reset_for(&frame(R, EXT, PROTO_TCP, &syn), [0; 6]).unwrap();
    valid(&r);
    assert_eq!(r[IP + 33], 0x14);
    let hello = b"hello, world".len() as u32;
    assert_eq!(&r[IP + 28..IP + 32], &(100 + hello + 1).to_be_bytes());
    // never a reset for a reset, nor for what is not TCP
    assert!(crate::rst::reset_for(&frame(R, EXT, PROTO_TCP, &tcp(80, 1, 0x04)), [0; 6]).is_none());
    assert!(crate::rst::reset_for(&frame(R, EXT, PROTO_UDP, &[0; 8]), [0; 6]).is_none());
}

#[test]
fn a_restored_table_carries_its_flows_on() {
    let mut n = nat();
    let mut b = frame(C, R, PROTO_TCP, &tcp(40000, 80, 2));
    n.outbound(1, MAC, &mut b, 0).unwrap();
    let nport = rd16(&b, IP + 20);
    let saved = n.entries_raw(5);
    // a new run: the server's next segment finds the connection
    let mut m = nat();
    assert!(m.restore(&saved[0], 100));
    assert!(!m.restore(&saved[0], 100), "restored twice");
    assert_eq!(m.stats.restored, 1);
    let mut r = frame(R, EXT, PROTO_TCP, &tcp(80, nport, 0x12));
    assert_eq!(m.inbound(&mut r, 101).unwrap(), Inside { net: 1, mac: MAC });
    assert_eq!(ip4(&r, IP + 16), C);
    valid(&r);
    // its outside port is taken: another inside host gets another one
    let mut b2 = frame([10, 88, 0, 9], R, PROTO_TCP, &tcp(nport, 80, 2));
    m.outbound(1, MAC, &mut b2, 102).unwrap();
    assert_ne!(rd16(&b2, IP + 20), nport);
    assert_eq!(m.forget(1, C.into(), 103), 1);
    // and the share it holds counts against the container's quota
    let mut q = Nat::new(NatConfig {
        per_container: 1,
        ..NatConfig::new(EXT.into())
    });
    assert!(q.restore(&saved[0], 100));
    let mut b3 = frame(C, R, PROTO_TCP, &tcp(40002, 80, 2));
    assert_eq!(q.outbound(1, MAC, &mut b3, 101), Err(NatDrop::Quota));
}

#[test]
fn restore_keeps_the_clock_and_the_closing_state() {
    let mut n = nat();
    let mut b = frame(C, R, PROTO_UDP, &[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
    n.outbound(1, MAC, &mut b, 0).unwrap();
    let mut t = frame(C, R, PROTO_TCP, &tcp(40001, 80, 2));
    n.outbound(1, MAC, &mut t, 0).unwrap();
    let mut fin = frame(C, R, PROTO_TCP, &tcp(40001, 80, 0x11));
    n.outbound(1, MAC, &mut fin, 0).unwrap();
    let mut saved = n.entries_raw(1_000);
    // the daemon was down for 40 s: the UDP flow (30 s) is gone, the
    // closing TCP connection (120 s) is not, and still closing
    for c in &mut saved {
        c.idle_ms += 40_000;
    }
    let mut m = nat();
    let back: Vec<bool> = saved.iter().map(|c| m.restore(c, 500_000)).collect();
    assert_eq!(m.len(), 1, "{back:?}");
    let e = &m.entries(500_000)[0];
    assert_eq!((e.proto.as_str(), e.state.as_str()), ("tcp", "closing"));
    assert!(e.expires_in_ms <= 120_000 - 41_000);
}

// ---- NAT66 ----

const C6: &str = "fd00:6a::2";
const R6: &str = "2001:db8:113::1";
const EXT6: &str = "2001:db8:113::2";

fn a6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn nat66() -> Nat {
    let mut cfg = NatConfig::new(EXT.into());
    cfg.external6 = Some(a6(EXT6));
    Nat::new(cfg)
}

/// vnet + Ethernet + IPv6 + L4 (`l4` bytes); the L4 checksum complete, or
/// partial (the pseudo-header sum only, NEEDS_CSUM) when `partial`.
fn frame6(src: &str, dst: &str, proto: u8, l4: &[u8], partial: bool) -> Vec<u8> {
    let (s, d) = (a6(src), a6(dst));
    let mut b = vec![0u8; VNET];
    if partial {
        b[0] = F_NEEDS_CSUM;
    }
    b.extend_from_slice(&[0xaa; 12]);
    b.extend_from_slice(&[0x86, 0xdd]);
    let mut h = [0u8; 40];
    wire::ipv6::emit(&mut h, l4.len() as u16, proto, 64, s, d);
    b.extend_from_slice(&h);
    b.extend_from_slice(l4);
    let co = IP + 40 + l4_csum_off(proto);
    wr16(&mut b, co, 0);
    let c = if partial {
        let mut x = wire::ipv6::pseudo_sum(s, d, l4.len() as u32, proto);
        while x >> 16 != 0 {
            x = (x & 0xffff) + (x >> 16);
        }
        x as u16
    } else {
        wire::ipv6::upper_checksum(s, d, proto, &b[IP + 40..])
    };
    wr16(&mut b, co, c);
    b
}

fn l4_csum_off(proto: u8) -> usize {
    match proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => 2,
    }
}

/// Asserts the frame's L4 checksum: complete (sums to zero with the
/// pseudo-header), or partial (equals the pseudo-header sum).
fn valid6(b: &[u8], partial: bool) {
    let (s, d) = (ip6(b, IP + 8), ip6(b, IP + 24));
    let proto = b[IP + 6];
    let seg = &b[IP + 40..];
    if partial {
        let mut x = wire::ipv6::pseudo_sum(s, d, seg.len() as u32, proto);
        while x >> 16 != 0 {
            x = (x & 0xffff) + (x >> 16);
        }
        assert_eq!(rd16(seg, l4_csum_off(proto)), x as u16, "partial checksum");
    } else {
        assert_eq!(wire::ipv6::upper_checksum(s, d, proto, seg), 0, "checksum");
    }
}

#[test]
fn nat66_tcp_udp_echo_full_and_partial_checksums() {
    let mut n = nat66();
    for partial in [false, true] {
        for (proto, l4) in [
            (PROTO_TCP, tcp(40000 + partial as u16, 80, wire::tcp::SYN)),
            (PROTO_UDP, {
                let mut u = vec![0x9c, 0x41, 0, 53, 0, 12, 0, 0];
                u.extend_from_slice(b"abcd");
                u[0] += partial as u8;
                u
            }),
        ] {
            let mut f = frame6(C6, R6, proto, &l4, partial);
            n.outbound(3, MAC, &mut f, 1000).unwrap();
            assert_eq!(ip6(&f, IP + 8), a6(EXT6), "source masqueraded");
            valid6(&f, partial);
            // the answer, back to the container
            let nport = rd16(&f, IP + 40);
            let mut r = l4.clone();
            r[0..2].copy_from_slice(&l4[2..4]);
            r[2..4].copy_from_slice(&nport.to_be_bytes());
            if proto == PROTO_TCP {
                r[wire::tcp::FLAGS] = wire::tcp::SYN | wire::tcp::ACK_FLAG;
            }
            let mut back = frame6(R6, EXT6, proto, &r, partial);
            let inside = n.inbound(&mut back, 1001).unwrap();
            assert_eq!((inside.net, inside.mac), (3, MAC));
            assert_eq!(ip6(&back, IP + 24), a6(C6));
            assert_eq!(rd16(&back, IP + 42), rd16(&l4, 0), "port restored");
            valid6(&back, partial);
        }
    }
    // ICMPv6 echo: the identifier is translated, the checksum (with its
    // pseudo-header) stays right
    let mut echo = vec![128, 0, 0, 0, 0x12, 0x34, 0, 1];
    echo.extend_from_slice(&[7; 24]);
    let mut f = frame6(C6, R6, PROTO_ICMPV6, &echo, false);
    n.outbound(3, MAC, &mut f, 1000).unwrap();
    valid6(&f, false);
    let id = rd16(&f, IP + 44);
    let mut rep = echo.clone();
    rep[0] = 129;
    rep[4..6].copy_from_slice(&id.to_be_bytes());
    let mut back = frame6(R6, EXT6, PROTO_ICMPV6, &rep, false);
    n.inbound(&mut back, 1001).unwrap();
    assert_eq!(rd16(&back, IP + 44), 0x1234);
    valid6(&back, false);
    // a destination unreachable about the UDP flow: embedded packet and
    // outer destination mapped back, ICMPv6 checksum recomputed
    let mut u = vec![0x9c, 0x41, 0, 53, 0, 12, 0, 0];
    u.extend_from_slice(b"abcd");
    let mut out = frame6(C6, R6, PROTO_UDP, &u, false);
    n.outbound(3, MAC, &mut out, 1002).unwrap();
    let mut err = vec![1, 4, 0, 0, 0, 0, 0, 0];
    err.extend_from_slice(&out[IP..]);
    let mut e = frame6(R6, EXT6, PROTO_ICMPV6, &err, false);
    n.inbound(&mut e, 1003).unwrap();
    assert_eq!(ip6(&e, IP + 24), a6(C6));
    assert_eq!(ip6(&e, IP + 48 + 8), a6(C6), "embedded source");
    assert_eq!(rd16(&e, IP + 48 + 40), 0x9c41, "embedded port");
    valid6(&e, false);
    assert_eq!(n.stats.icmp_errors_in, 1);
    // the table shows them with the IPv6 external address
    let shown = n.entries(1004);
    assert!(shown
        .iter()
        .any(|c| c.outside.starts_with("[2001:db8:113::2]:")));
    // forgotten with the container's IPv6 address
    assert!(n.forget(3, a6(C6).into(), 1005) >= 3);
}

/// vnet + Ethernet + IPv6 + a fragment header (next header `proto`,
/// offset `off` bytes, M flag `more`, identification `id`) + `data`.
fn frag6(src: &str, dst: &str, proto: u8, off: u16, more: bool, id: u32, data: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; VNET];
    b.extend_from_slice(&[0xaa; 12]);
    b.extend_from_slice(&[0x86, 0xdd]);
    let mut h = [0u8; 40];
    let plen = (8 + data.len()) as u16;
    wire::ipv6::emit(&mut h, plen, 44, 64, a6(src), a6(dst));
    b.extend_from_slice(&h);
    b.extend_from_slice(&[proto, 0]);
    b.extend_from_slice(&(off | more as u16).to_be_bytes());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// A UDP datagram in two IPv6 fragments out and two back: the first of
/// each carries the ports (translated, the checksum over the whole
/// datagram fixed incrementally), the second follows it by its
/// identification; the reassembled datagrams' checksums are right.
#[test]
fn nat66_fragments_follow_their_first_fragment() {
    let mut n = nat66();
    // the whole datagram: UDP header + 40 bytes, checksum complete
    let udp = |sport: u16, dport: u16, src: &str, dst: &str| {
        let mut u = vec![0u8; 8];
        wr16(&mut u, 0, sport);
        wr16(&mut u, 2, dport);
        wr16(&mut u, 4, 48);
        u.extend((0..40u8).map(|i| i.wrapping_mul(7)));
        let c = wire::ipv6::upper_checksum(a6(src), a6(dst), PROTO_UDP, &u);
        wr16(&mut u, 6, c);
        u
    };
    let whole = udp(4444, 53, C6, R6);
    let mut first = frag6(C6, R6, PROTO_UDP, 0, true, 0xdead_beef, &whole[..24]);
    let mut rest = frag6(C6, R6, PROTO_UDP, 24, false, 0xdead_beef, &whole[24..]);
    n.outbound(1, MAC, &mut first, 0).unwrap();
    n.outbound(1, MAC, &mut rest, 1).unwrap();
    assert_eq!(ip6(&first, IP + 8), a6(EXT6));
    assert_eq!(ip6(&rest, IP + 8), a6(EXT6), "the later fragment follows");
    let mut out = first[IP + 48..].to_vec();
    out.extend_from_slice(&rest[IP + 48..]);
    assert_eq!(
        wire::ipv6::upper_checksum(a6(EXT6), a6(R6), PROTO_UDP, &out),
        0,
        "the reassembled datagram's checksum"
    );
    let nport = rd16(&out, 0);
    // the answer, fragmented too (another identification)
    let back = udp(53, nport, R6, EXT6);
    let mut rfirst = frag6(R6, EXT6, PROTO_UDP, 0, true, 7, &back[..24]);
    let mut rrest = frag6(R6, EXT6, PROTO_UDP, 24, false, 7, &back[24..]);
    assert_eq!(n.inbound(&mut rfirst, 2).unwrap().net, 1);
    assert_eq!(n.inbound(&mut rrest, 3).unwrap().net, 1);
    assert_eq!(ip6(&rrest, IP + 24), a6(C6));
    let mut inn = rfirst[IP + 48..].to_vec();
    inn.extend_from_slice(&rrest[IP + 48..]);
    assert_eq!(rd16(&inn, 2), 4444, "port restored");
    assert_eq!(
        wire::ipv6::upper_checksum(a6(R6), a6(C6), PROTO_UDP, &inn),
        0
    );
    // a packet-too-big about the first fragment we sent: mapped back to
    // the container (the embedded fragment header skipped to the ports)
    let mut ptb = vec![2, 0, 0, 0, 0, 0, 5, 0];
    ptb.extend_from_slice(&first[IP..]);
    let mut e = frame6(R6, EXT6, PROTO_ICMPV6, &ptb, false);
    assert_eq!(n.inbound(&mut e, 2).unwrap().net, 1);
    assert_eq!(ip6(&e, IP + 48 + 8), a6(C6), "embedded source");
    assert_eq!(rd16(&e, IP + 48 + 48), 4444, "embedded port");
    valid6(&e, false);
    // an error about a later fragment has no ports: not translated
    let mut ptb = vec![2, 0, 0, 0, 0, 0, 5, 0];
    ptb.extend_from_slice(&rest[IP..]);
    let mut e = frame6(R6, EXT6, PROTO_ICMPV6, &ptb, false);
    assert_eq!(n.inbound(&mut e, 2), Err(NatDrop::Unsupported));
    // a later fragment to the external address with an unknown
    // identification, and one to another address: not translated
    let mut stray = frag6(R6, EXT6, PROTO_UDP, 24, false, 8, &back[24..]);
    assert_eq!(n.inbound(&mut stray, 4), Err(NatDrop::Fragment));
    let mut other = frag6(R6, R6, PROTO_UDP, 24, false, 7, &back[24..]);
    assert_eq!(n.inbound(&mut other, 4), Err(NatDrop::NoConnection));
    // and once the connection expires, its fragments are forgotten
    n.expire(10_000_000);
    let mut late = frag6(C6, R6, PROTO_UDP, 24, false, 0xdead_beef, &whole[24..]);
    assert_eq!(
        n.outbound(1, MAC, &mut late, 10_000_001),
        Err(NatDrop::Fragment)
    );
}

/// A flood of first fragments holds at most MAX_FRAGS entries.
#[test]
fn first_fragments_are_bounded() {
    let mut n = nat66();
    let mut u = vec![0x11, 0x11, 0, 53, 0, 48, 0, 0];
    u.extend_from_slice(&[0; 16]);
    for id in 0..(MAX_FRAGS as u32 + 100) {
        let mut f = frag6(C6, R6, PROTO_UDP, 0, true, id, &u);
        n.outbound(1, MAC, &mut f, 5).unwrap();
    }
    assert_eq!(n.frags.len(), MAX_FRAGS);
    // the first ones still follow, one past the bound does not
    let mut f = frag6(C6, R6, PROTO_UDP, 24, false, 0, &[1; 8]);
    assert!(n.outbound(1, MAC, &mut f, 6).is_ok());
    let mut f = frag6(C6, R6, PROTO_UDP, 24, false, MAX_FRAGS as u32 + 50, &[1; 8]);
    assert_eq!(n.outbound(1, MAC, &mut f, 6), Err(NatDrop::Fragment));
}

/// A port published to both families: an IPv6 client reaches the
/// container's IPv6 address (NAT66 destination NAT, the client's address
/// kept), the answer leaves from the external IPv6 address and port; a
/// port published to IPv4 clients only refuses IPv6 ones.
#[test]
fn nat66_published_port_keeps_the_client_address() {
    let mut n = nat66();
    let to = Forward {
        net: 3,
        ip: Some(C.into()),
        ip6: Some(a6(C6)),
        port: 80,
        mac: MAC,
    };
    n.add_forward(PROTO_TCP, 8080, to);
    n.add_forward(PROTO_TCP, 8081, Forward { ip6: None, ..to });
    let mut syn = frame6(
        R6,
        EXT6,
        PROTO_TCP,
        &tcp(55000, 8080, wire::tcp::SYN),
        false,
    );
    assert_eq!(n.inbound(&mut syn, 0).unwrap(), Inside { net: 3, mac: MAC });
    assert_eq!(ip6(&syn, IP + 8), a6(R6), "the client's address kept");
    assert_eq!(ip6(&syn, IP + 24), a6(C6));
    assert_eq!(rd16(&syn, IP + 42), 80);
    valid6(&syn, false);
    let mut ans = frame6(C6, R6, PROTO_TCP, &tcp(80, 55000, 0x12), false);
    n.outbound(3, MAC, &mut ans, 1).unwrap();
    assert_eq!(ip6(&ans, IP + 8), a6(EXT6));
    assert_eq!(rd16(&ans, IP + 40), 8080);
    valid6(&ans, false);
    // the IPv4 client still reaches the IPv4 address
    let mut syn4 = frame(R, EXT, PROTO_TCP, &tcp(55000, 8080, 0x02));
    n.inbound(&mut syn4, 2).unwrap();
    assert_eq!(ip4(&syn4, IP + 16), C);
    // published to IPv4 clients only
    let mut syn = frame6(
        R6,
        EXT6,
        PROTO_TCP,
        &tcp(55001, 8081, wire::tcp::SYN),
        false,
    );
    assert_eq!(n.inbound(&mut syn, 3), Err(NatDrop::NoConnection));
}

#[test]
fn nat66_refuses_what_it_cannot_translate() {
    // no external IPv6 address: IPv6 is unsupported, counted
    let mut n = nat();
    let mut f = frame6(C6, R6, PROTO_UDP, &[0, 1, 0, 2, 0, 8, 0, 0], false);
    assert_eq!(n.outbound(0, MAC, &mut f, 1), Err(NatDrop::Unsupported));
    let mut n = nat66();
    // a later fragment whose first never passed; a fragment header cut
    // short; a fragment header followed by another extension header
    let mut f = frag6(C6, R6, PROTO_UDP, 8, false, 9, &[1; 16]);
    assert_eq!(n.outbound(0, MAC, &mut f, 1), Err(NatDrop::Fragment));
    let mut f = frag6(C6, R6, PROTO_UDP, 0, true, 9, &[1; 16]);
    let cut = f.len() - 20;
    assert_eq!(
        n.outbound(0, MAC, &mut f[..cut], 1),
        Err(NatDrop::Unsupported)
    );
    let mut f = frag6(C6, R6, 60, 0, true, 9, &[1; 16]);
    assert_eq!(n.outbound(0, MAC, &mut f, 1), Err(NatDrop::Unsupported));
    // inbound for nobody, and truncated frames at every length
    let mut f = frame6(R6, EXT6, PROTO_UDP, &[0, 53, 0x80, 0, 0, 8, 0, 0], false);
    assert_eq!(n.inbound(&mut f, 1), Err(NatDrop::NoConnection));
    for cut in 0..f.len() {
        let mut g = f[..cut].to_vec();
        let _ = n.inbound(&mut g, 1);
        let _ = n.outbound(0, MAC, &mut g, 1);
    }
}

#[test]
fn an_ipv6_segment_nobody_owns_gets_a_reset() {
    // an ACK for a connection lost in a restart: <SEQ=SEG.ACK><CTL=RST>
    let mut t = tcp(80, 40000, wire::tcp::ACK_FLAG);
    t[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes()); // their ack
    let f = frame6(R6, EXT6, PROTO_TCP, &t, false);
    assert_eq!(
        nat66().inbound(&mut f.clone(), 1),
        Err(NatDrop::NoConnection)
    );
    let r = rst::reset_for(&f, [2, 0, 0, 0, 0, 0xee]).expect("a reset");
    assert_eq!(r.len(), IP + 40 + 20, "headers only");
    assert_eq!(&r[VNET + 12..VNET + 14], &[0x86, 0xdd]);
    assert_eq!(ip6(&r, IP + 8), a6(EXT6));
    assert_eq!(ip6(&r, IP + 24), a6(R6));
    let seg = &r[IP + 40..];
    assert_eq!(rd16(seg, 0), 40000);
    assert_eq!(rd16(seg, 2), 80);
    assert_eq!(&seg[4..8], &0x1234_5678u32.to_be_bytes());
    assert_eq!(seg[wire::tcp::FLAGS], wire::tcp::RST);
    assert_eq!(
        wire::ipv6::upper_checksum(a6(EXT6), a6(R6), PROTO_TCP, seg),
        0,
        "checksum"
    );
    // a SYN (no ACK): <SEQ=0><ACK=SEG.SEQ+1><CTL=RST,ACK>
    let mut syn = tcp(80, 40001, wire::tcp::SYN);
    syn.truncate(20);
    syn[4..8].copy_from_slice(&7u32.to_be_bytes());
    let r = rst::reset_for(&frame6(R6, EXT6, PROTO_TCP, &syn, false), [2; 6]).unwrap();
    let seg = &r[IP + 40..];
    assert_eq!(&seg[8..12], &8u32.to_be_bytes());
    assert_eq!(seg[wire::tcp::FLAGS], wire::tcp::RST | wire::tcp::ACK_FLAG);
    // never for a reset, an extension header, or a cut segment
    let r0 = frame6(R6, EXT6, PROTO_TCP, &tcp(80, 40002, wire::tcp::RST), false);
    assert!(rst::reset_for(&r0, [2; 6]).is_none());
    let mut x = f.clone();
    x[IP + 6] = 0;
    assert!(rst::reset_for(&x, [2; 6]).is_none());
    for cut in 0..f.len() {
        let _ = rst::reset_for(&f[..cut], [2; 6]);
    }
}
