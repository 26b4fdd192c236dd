//! The fuzz harnesses: each takes bytes an untrusted side controls and
//! pushes them through the code that parses them, checking what must hold
//! beyond "no panic". The targets in `fuzz_targets/` hand libFuzzer's input
//! to these; `cargo test` replays the committed corpus through them.
//!
//! Input framing for the frame harnesses: records of
//! `[selector: u8][len: u16 BE][len bytes]`; a record cut short ends the
//! input. A frame is what a port reads: the vnet header, then Ethernet.

use std::net::Ipv4Addr;
use vswitch::router::{self, GwAction};
use vswitch::switch::{Decision, PortKind, Switch, TrunkMode};
use vswitch::trunk::{self, TrunkHost, TrunkXform};
use vswitch::vnet::VNET_HDR_LEN;
use vswitch::{Mac, NetConfig, PortIdentity};

/// The largest frame a port reads (vnet header, VLAN tag, 64 KiB GSO).
const BUF: usize = vswitch::datapath::BUF_SIZE;
const L3: usize = VNET_HDR_LEN + 14;

/// Splits `data` into (selector, frame) records.
pub fn records(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < 3 {
            return None;
        }
        let sel = rest[0];
        let len = (u16::from_be_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let f = &rest[3..3 + len];
        rest = &rest[3 + len..];
        Some((sel, f))
    })
}

/// Encodes records (for seeds).
pub fn encode(recs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (s, f) in recs {
        out.push(*s);
        out.extend_from_slice(&(f.len() as u16).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

pub const GW0: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
pub const GW1: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
pub const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const C0: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
pub const MAC_C0: [u8; 6] = [2, 0x42, 10, 1, 0, 2];
pub const C0_6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
pub const GW0_MAC: [u8; 6] = [2, 0x42, 10, 1, 0, 1];
pub const PARENT_MAC: [u8; 6] = [2, 0xaa, 0, 0, 0, 1];

fn nat() -> nat::Nat {
    let mut cfg = nat::NatConfig::new(EXT);
    // NAT66 too (IPv6 frames are translated to this address)
    cfg.external6 = Some("2001:db8:113::2".parse().expect("valid"));
    let mut n = nat::Nat::new(cfg);
    n.add_forward(
        6,
        8080,
        nat::Forward {
            net: 0,
            ip: Some(C0),
            ip6: Some(C0_6),
            port: 80,
            mac: MAC_C0,
        },
    );
    n.add_forward(
        17,
        5353,
        nat::Forward {
            net: 0,
            ip: Some(C0),
            ip6: Some(C0_6),
            port: 53,
            mac: MAC_C0,
        },
    );
    n
}

/// The datapath's per-frame path with in-memory ports: the switch (port
/// security, learning, VLAN/ipvlan trunks), the gateway (ARP, ICMP, ICMP
/// errors, routing), and the packet NAT both ways (hairpin included).
///
/// Network 0: bridge 10.1.0.0/24, routed; ports 0 (port security as
/// 10.1.0.2), 1, 2. Network 1: internal 10.2.0.0/24; port 3. Network 2: a
/// macvlan-style segment without gateway: TAP 4 and trunk 5 (VLAN 12,
/// shared MAC: ipvlan-style rewriting). Selector 6 and up: the uplink.
pub fn pipeline(data: &[u8]) {
    let mut sw = Switch::new(300_000, 4096);
    sw.table.set_port_limit(64);
    let cfg0 = NetConfig {
        gateway_ip: GW0,
        gateway_mac: Mac(GW0_MAC),
        prefix: 24,
        routed: true,
        gateway: true,
        // dual stack: the gateway's IPv6 side (NDP, ping6, routing) too
        v6: Some(vswitch::Net6 {
            gateway: "fd00:1::1".parse().expect("valid"),
            prefix: 64,
        }),
    };
    let cfg1 = NetConfig {
        gateway_ip: GW1,
        gateway_mac: Mac([2, 0x42, 10, 2, 0, 1]),
        prefix: 24,
        routed: false,
        gateway: true,
        v6: Some(vswitch::Net6 {
            gateway: "fd00:2::1".parse().expect("valid"),
            prefix: 120,
        }),
    };
    let cfg2 = NetConfig {
        gateway_ip: Ipv4Addr::new(192, 168, 5, 1),
        gateway_mac: Mac([2, 0x42, 192, 168, 5, 1]),
        prefix: 24,
        routed: false,
        gateway: false,
        v6: None,
    };
    sw.add_network(0, cfg0);
    sw.add_network(1, cfg1);
    sw.add_network(2, cfg2);
    let mut ports = Vec::new();
    for net in [0, 0, 0, 1, 2] {
        ports.push(sw.add_port_kind(PortKind::Tap, net, 1500));
    }
    let trunk_port = sw.add_port_kind(PortKind::Trunk, 2, 1500);
    ports.push(trunk_port);
    sw.set_identity(
        ports[0],
        Some(PortIdentity {
            mac: Mac(MAC_C0),
            ip: C0,
            ip6: Some(C0_6),
        }),
    );
    let host_mac = Mac([2, 0x42, 192, 168, 5, 9]);
    sw.set_trunk_policy(2, TrunkMode::Bridge, &[host_mac]);
    let mut xform = TrunkXform {
        vlan: Some(12),
        shared_mac: Some(Mac(PARENT_MAC)),
        ..Default::default()
    };
    xform.set_hosts(&[TrunkHost {
        ip: Ipv4Addr::new(192, 168, 5, 9),
        ip6: Some(std::net::Ipv6Addr::new(0xfd00, 5, 0, 0, 0, 0, 0, 9)),
        mac: host_mac,
    }]);
    let mut nat = nat();
    let mut buf = vec![0u8; BUF];
    let mut now = 1_000u64;
    for (sel, f) in records(data) {
        now += (sel as u64 >> 4) * 1_000;
        let len = f.len().min(BUF);
        buf[..len].copy_from_slice(&f[..len]);
        let port = (sel & 0x0f) as usize;
        if port >= ports.len() {
            uplink_in(&mut nat, &mut sw, &mut buf, len, now);
            continue;
        }
        let slot = ports[port];
        if slot == trunk_port {
            trunk::ipvlan_ingress(&xform, &mut buf[..len]);
        }
        match sw.decide(slot, &buf[..len], now) {
            Decision::Drop(_) => {}
            Decision::Unicast(d) => egress(&xform, trunk_port, d, &buf[..len]),
            Decision::Flood(n) | Decision::FloodExcept(n, _) => {
                let members = sw.network(n).map(|n| n.ports.clone()).unwrap_or_default();
                for d in members {
                    egress(&xform, trunk_port, d, &buf[..len]);
                }
            }
            Decision::Gateway(n) => {
                let cfg = sw.network(n).expect("decided on it").cfg;
                match router::answer(&cfg, &mut buf, len) {
                    Ok(GwAction::Reply(r)) => assert!(r <= BUF, "reply of {r} bytes"),
                    Ok(GwAction::Punt) | Err(_) => {}
                    Ok(GwAction::Route) => route(&mut nat, &cfg, n, &mut buf, len, now),
                }
            }
        }
        if sel & 0x80 != 0 {
            sw.table.age(now);
            nat.expire(now);
        }
    }
}

/// A frame leaving through port `d`: a trunk rewrites a copy.
fn egress(x: &TrunkXform, trunk_port: u32, d: u32, f: &[u8]) {
    if d == trunk_port {
        if let Some(out) = trunk::egress_frame(x, f) {
            assert!(out.len() <= f.len() + 4, "egress grew by more than a tag");
        }
    }
}

/// As the datapath's `route_out`: other tapnet networks are unreachable,
/// internal networks answer with ICMP, the rest is masqueraded.
fn route(nat: &mut nat::Nat, cfg: &NetConfig, n: u16, buf: &mut [u8], len: usize, now: u64) {
    if wire::eth::ethertype(&buf[VNET_HDR_LEN..len]) == Some(wire::eth::ETHERTYPE_IPV6) {
        // internal: unreachable, as the datapath answers; else NAT66
        if !cfg.routed {
            if let Some(v6) = cfg.v6 {
                if let Ok(r) = vswitch::router6::icmp6_error(cfg, v6, buf, len, 1, 0) {
                    assert!(r <= BUF && r <= len.max(L3 + 48 + 1232));
                }
            }
            return;
        }
        let src_mac: [u8; 6] = buf[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12]
            .try_into()
            .expect("6");
        let _ = nat.outbound(n, src_mac, &mut buf[..len], now);
        return;
    }
    if len < L3 + 20 {
        return;
    }
    if !cfg.routed {
        if let Ok(r) = router::icmp_error(cfg, buf, len, 3, 0) {
            assert!(r <= BUF);
        }
        return;
    }
    let src_mac: [u8; 6] = buf[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12]
        .try_into()
        .expect("6");
    let dst = Ipv4Addr::new(buf[L3 + 16], buf[L3 + 17], buf[L3 + 18], buf[L3 + 19]);
    if nat.outbound(n, src_mac, &mut buf[..len], now).is_ok() && dst == EXT {
        // hairpin: back in through the NAT
        let _ = nat.inbound(&mut buf[..len], now);
    }
}

/// As the datapath's `uplink_rx`: ARP, or an answer for the NAT.
fn uplink_in(nat: &mut nat::Nat, sw: &mut Switch, buf: &mut [u8], len: usize, now: u64) {
    let e = VNET_HDR_LEN;
    if len < L3 + 20 {
        return;
    }
    match [buf[e + 12], buf[e + 13]] {
        wire::eth::ETHERTYPE_ARP => {
            if let Some(mut a) = wire::arp::Arp::new(&mut buf[L3..len]) {
                let (_, _, tpa) = (a.sender_mac(), a.sender_ip(), a.target_ip());
                if a.op() == wire::arp::REQUEST && tpa == EXT {
                    a.make_reply([2, 0, 0, 0, 0, 0xee], EXT);
                }
            }
        }
        wire::eth::ETHERTYPE_IPV4 => match nat.inbound(&mut buf[..len], now) {
            Ok(inside) => {
                if buf[L3 + 8] > 1 {
                    router::dec_ttl(buf, L3);
                }
                let _ = sw.table.lookup(inside.net, &Mac(inside.mac), now);
            }
            Err(nat::NatDrop::NoConnection) => {
                if let Some(r) = nat::rst::reset_for(&buf[..len], [2, 0, 0, 0, 0, 0xee]) {
                    assert_eq!(r.len(), L3 + 40, "a reset is headers only");
                    assert_eq!(wire::csum::checksum(&r[L3..L3 + 20]), 0);
                }
            }
            Err(_) => {}
        },
        wire::eth::ETHERTYPE_IPV6 => match nat.inbound(&mut buf[..len], now) {
            Ok(inside) => {
                let _ = sw.table.lookup(inside.net, &Mac(inside.mac), now);
            }
            Err(nat::NatDrop::NoConnection) => {
                if let Some(r) = nat::rst::reset_for(&buf[..len], [2, 0, 0, 0, 0, 0xee]) {
                    assert_eq!(r.len(), L3 + 60, "a reset is headers only");
                }
            }
            Err(_) => {}
        },
        _ => {}
    }
}

/// Source (address, port) and destination of an unfragmented TCP/UDP
/// frame, and where its L4 header starts.
fn flow(f: &[u8]) -> Option<((Ipv4Addr, u16), (Ipv4Addr, u16), usize)> {
    if f.len() < L3 + 20 || [f[VNET_HDR_LEN + 12], f[VNET_HDR_LEN + 13]] != [8, 0] {
        return None;
    }
    let ihl = (f[L3] & 0xf) as usize * 4;
    let frag = u16::from_be_bytes([f[L3 + 6], f[L3 + 7]]) & 0x3fff;
    if ihl < 20 || frag != 0 || !matches!(f[L3 + 9], 6 | 17) || f.len() < L3 + ihl + 8 {
        return None;
    }
    let ip = |o: usize| Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]);
    let port = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    let l4 = L3 + ihl;
    Some(((ip(L3 + 12), port(l4)), (ip(L3 + 16), port(l4 + 2)), l4))
}

/// The packet NAT both ways, statefully: even selectors go out from
/// network `sel >> 1 & 1` (container MAC by `sel >> 2`), odd ones come in
/// from the uplink. Checks: what goes out carries the external address;
/// the mirrored answer to a translated TCP/UDP flow, when the NAT takes
/// it, goes back to the flow's inside source.
pub fn nat_both_ways(data: &[u8]) {
    let mut nat = nat();
    let mut buf = vec![0u8; BUF];
    let mut now = 1_000u64;
    for (sel, f) in records(data) {
        now += (sel as u64 >> 5) * 7_000;
        let len = f.len().min(BUF);
        buf[..len].copy_from_slice(&f[..len]);
        if sel & 1 == 1 {
            let _ = nat.inbound(&mut buf[..len], now);
        } else {
            let net = (sel >> 1 & 1) as u16;
            let mac = [2, 0x42, 10, 1, 0, 2 + (sel >> 2 & 7)];
            let before = flow(&buf[..len]);
            if nat.outbound(net, mac, &mut buf[..len], now).is_err() {
                continue;
            }
            let (Some((src, _, _)), Some((nsrc, ndst, l4))) = (before, flow(&buf[..len])) else {
                continue;
            };
            assert_eq!(nsrc.0, EXT, "translated source is not the external address");
            // the answer: addresses and ports swapped
            let mut ans = buf[..len].to_vec();
            ans[L3 + 12..L3 + 16].copy_from_slice(&ndst.0.octets());
            ans[L3 + 16..L3 + 20].copy_from_slice(&nsrc.0.octets());
            ans[l4..l4 + 2].copy_from_slice(&ndst.1.to_be_bytes());
            ans[l4 + 2..l4 + 4].copy_from_slice(&nsrc.1.to_be_bytes());
            if nat.inbound(&mut ans, now).is_ok() {
                let back = flow(&ans).expect("still TCP/UDP");
                assert_eq!(back.1, src, "the answer went to the wrong inside address");
            }
        }
        if sel & 0x10 != 0 {
            nat.expire(now);
        }
    }
}

/// The resolver: a query from a container (first byte: transport and
/// client), checked to come back as a well-formed DNS message.
pub fn dns_query(data: &[u8]) {
    use std::sync::OnceLock;
    static R: OnceLock<dns::Resolver> = OnceLock::new();
    let r = R.get_or_init(|| {
        let r = dns::Resolver::new();
        {
            let mut reg = r.registry.write().unwrap();
            reg.set_network(1, "n1", true, Vec::new());
            reg.set_network(2, "bridge", false, Vec::new());
            for (name, ip, alias) in [("web", 2, "www"), ("db", 3, "data.base")] {
                reg.add_endpoint(
                    1,
                    dns::Endpoint {
                        container: name.into(),
                        aliases: vec![alias.into()],
                        ip: Ipv4Addr::new(10, 1, 0, ip),
                        ip6: Some(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, ip as u16)),
                        dns: Vec::new(),
                    },
                );
            }
        }
        r
    });
    let Some((&first, q)) = data.split_first() else {
        return;
    };
    let t = if first & 1 == 0 {
        dns::Transport::Udp
    } else {
        dns::Transport::Tcp
    };
    let net = 1 + (first >> 1 & 1) as u16;
    // a client asking over IPv4 or IPv6 (bit 7)
    let client: std::net::IpAddr = if first & 0x80 == 0 {
        Ipv4Addr::new(10, 1, 0, first >> 2).into()
    } else {
        std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, (first >> 2 & 0x1f) as u16).into()
    };
    match r.handle(net, client, q, t) {
        dns::Outcome::Reply(b) => {
            use hickory_proto::serialize::binary::BinDecodable;
            if let Err(e) = hickory_proto::op::Message::from_bytes(&b) {
                panic!("the resolver answered with a malformed message: {e}");
            }
        }
        dns::Outcome::Forward | dns::Outcome::Drop => {}
    }
    // and what a failed forward sends back
    let _ = r.servfail(q, t);
    // the cache, fed a hostile upstream: the input as the answer to a
    // well-formed query (ID 0x1234, x.example A); what it serves for that
    // query, at once and aged, must be a well-formed message with the
    // asker's ID
    let now = std::time::Instant::now();
    let mut c = dns::Cache::new(4);
    let good =
        dns::resolver::make_query(0x1234, "x.example.", hickory_proto::rr::RecordType::A, None);
    c.put(1, &good, t, q, now);
    let again =
        dns::resolver::make_query(0x4321, "X.example.", hickory_proto::rr::RecordType::A, None);
    let later = now + std::time::Duration::from_secs(7);
    for b in [c.get(1, &good, t, now), c.get(1, &again, t, later)]
        .into_iter()
        .flatten()
    {
        use hickory_proto::serialize::binary::BinDecodable;
        match hickory_proto::op::Message::from_bytes(&b) {
            Ok(m) => assert!(m.metadata.id == 0x1234 || m.metadata.id == 0x4321),
            Err(e) => panic!("the cache answered with a malformed message: {e}"),
        }
    }
}

/// The API's JSON bodies, through what the daemon does with them before
/// any I/O: network planning (IPAM, driver options), addresses, MACs,
/// published-port specs; the state files' records; and the CNI plugin's
/// configuration (its port mappings become published-port specs).
pub fn api(data: &[u8]) {
    use tapnet::api::*;
    use tapnet::daemon::store::{ContainerRecord, NetworkRecord};
    use tapnet::daemon::{ipam, plan_network, publish};
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let addr = |s: &Option<String>| {
        if let Some(s) = s {
            let _ = ipam::parse_addr(s);
        }
    };
    let mac = |s: &Option<String>| {
        if let Some(s) = s {
            let _ = s.parse::<Mac>();
        }
    };
    let ports = |p: &[String]| {
        for s in p {
            if let Ok(maps) = publish::parse(s) {
                assert!(!maps.is_empty(), "{s:?} parsed into no mapping");
            }
        }
    };
    match which % 7 {
        0 => {
            if let Ok(req) = serde_json::from_slice::<CreateNetwork>(body) {
                let ula: ipnet::Ipv6Net = "fd12:3456:789a::/48".parse().expect("valid");
                let existing = plan_network(
                    &CreateNetwork {
                        name: "existing".into(),
                        subnet: Some("10.1.0.0/24".into()),
                        ..Default::default()
                    },
                    &[],
                    ula,
                )
                .expect("a plain network plans");
                if let Ok(rec) = plan_network(&req, &[&existing], ula) {
                    if let (Some(s), Some(g)) = (rec.subnet6, rec.gateway6) {
                        assert!(s.contains(&g), "IPv6 gateway outside the subnet");
                    }
                    assert!(
                        rec.subnet.contains(&rec.gateway),
                        "gateway outside the subnet"
                    );
                    assert!(!ipam::overlaps(&rec.subnet, &existing.subnet));
                }
            }
        }
        1 => {
            if let Ok(req) = serde_json::from_slice::<Connect>(body) {
                addr(&req.ip);
                mac(&req.mac);
                ports(&req.ports);
            }
        }
        2 => {
            if let Ok(req) = serde_json::from_slice::<CreateContainer>(body) {
                addr(&req.ip);
                mac(&req.mac);
                ports(&req.ports);
            }
        }
        3 => {
            let _ = serde_json::from_slice::<Disconnect>(body);
            let _ = serde_json::from_slice::<Rename>(body);
            let _ = serde_json::from_slice::<ContainerProcess>(body);
        }
        4 => {
            let _ = serde_json::from_slice::<NetworkRecord>(body);
        }
        5 => {
            let _ =
                serde_json::from_slice::<std::collections::BTreeMap<String, ContainerRecord>>(body);
            let _ = serde_json::from_slice::<Vec<ContainerRecord>>(body);
        }
        _ => {
            // a CNI plugin's configuration, as a runtime writes it on stdin
            if let Ok(c) = tapnet::cni::parse_config(body) {
                assert!(tapnet::cni::SUPPORTED.contains(&c.version.as_str()));
                ports(&c.ports);
            }
        }
    }
}

/// What the overlay's datapath takes from untrusted sides: a container's
/// offloaded frame (vnet header + Ethernet, any GSO type and size) cut into
/// segments for the tunnel, with checksums computed or left partial; and a
/// datagram from the underlay parsed as VXLAN and, sealed, opened with the
/// network's key and checked against a replay window. Beyond "no panic":
/// segments never exceed the MTU plus their headers, the payload pieces
/// lie inside the frame, and a datagram sealed here opens to what went in.
pub fn tunnel(data: &[u8]) {
    use vswitch::seal;
    use wire::gso;
    let keys = seal::KeySet::new(&[(1, [7; 32]), (2, [9; 32])], 2);
    let mut win = seal::ReplayWindow::default();
    for (sel, f) in records(data) {
        match sel % 3 {
            0 => {
                if f.len() < VNET_HDR_LEN {
                    continue;
                }
                let h = wire::vnet::VnetHdr::parse(f);
                let frame = &f[VNET_HDR_LEN..];
                let mtu = 68 + (sel as usize * 11) % 9000;
                let prefix = wire::vxlan::emit(4096);
                let (mut out, mut lens) = (Vec::new(), Vec::new());
                if gso::segment(
                    &h,
                    frame,
                    mtu,
                    &prefix,
                    sel & 0x80 != 0,
                    &mut out,
                    &mut lens,
                )
                .is_ok()
                {
                    assert_eq!(lens.iter().sum::<usize>(), out.len());
                    assert!(lens.len() <= gso::MAX_SEGS);
                }
                let (mut hdrs, mut parts) = (Vec::new(), Vec::new());
                if gso::segment_parts(&h, frame, mtu, &prefix, false, &mut hdrs, &mut parts).is_ok()
                {
                    for p in &parts {
                        assert!(p.hdr.end <= hdrs.len() && p.data.end <= frame.len());
                        if !p.data.is_empty() {
                            // a segment's IP packet fits the MTU
                            assert!(p.hdr.len() - prefix.len() - 14 + p.data.len() <= mtu);
                        }
                    }
                }
            }
            1 => {
                let _ = wire::vxlan::parse(f);
                if let Some((_, sq)) = seal::peek(f) {
                    if win.fresh(sq, 0) {
                        let mut d = f.to_vec();
                        if seal::open(&keys, &mut d).is_ok() {
                            win.accept(sq);
                        }
                    }
                }
            }
            _ => {
                // sealed here, opened there: the same frame
                let mut d = wire::vxlan::emit(4096).to_vec();
                d.extend_from_slice(f);
                let mut out = Vec::new();
                if seal::seal(&keys, [10, 0, 0, 1], 1 + sel as u64, &d, &mut out) {
                    let n = seal::open(&keys, &mut out).expect("opens");
                    let x = wire::vxlan::HDR_LEN + seal::HDR_LEN;
                    assert_eq!(&out[x..x + n], f);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every committed seed goes through its harness (no libFuzzer
    /// needed): the corpus stays valid input, and a crash found once
    /// stays fixed.
    #[test]
    fn corpus_replays() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let mut n = 0;
        for (dir, f) in [
            ("pipeline", super::pipeline as fn(&[u8])),
            ("nat", super::nat_both_ways),
            ("dns_query", super::dns_query),
            ("api", super::api),
            ("tunnel", super::tunnel),
        ] {
            let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
                panic!("no corpus for {dir}");
            };
            for e in rd.filter_map(|e| e.ok()) {
                f(&std::fs::read(e.path()).unwrap());
                n += 1;
            }
        }
        assert!(n > 0);
    }
}
