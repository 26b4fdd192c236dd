//! The router port's IPv6 side: the gateway's IPv6 address answers
//! neighbour solicitations (RFC 4861, the ARP of IPv6) and ICMPv6 echo
//! requests in place, DNS on port 53 is punted to the service behind the
//! gateway, and packets for other subnets are routed with their hop limit
//! decremented (an ICMPv6 time-exceeded in their place when it runs out).
//! The IPv4 side is [`crate::router`].

use crate::router::GwAction;
use crate::switch::{DropReason, Net6, NetConfig, ETH_HDR_LEN};
use crate::vnet::{VnetHdr, F_NEEDS_CSUM, VNET_HDR_LEN};
use std::net::Ipv6Addr;
use wire::{icmpv6, ipv6};

const I: usize = VNET_HDR_LEN + ETH_HDR_LEN;
/// Where the upper-layer header starts (no extension headers: the gateway
/// answers none that have them).
const L4: usize = I + ipv6::HDR_LEN;
const ETHERTYPE_IPV6: [u8; 2] = wire::eth::ETHERTYPE_IPV6;
/// The all-nodes multicast address, where an answer to a duplicate address
/// probe goes.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Answers an IPv6 frame addressed to the gateway (its MAC, or the
/// solicited-node multicast of its address). `buf` holds the vnet header
/// and the frame (`len` bytes in all) and has room after it (a receive
/// buffer: at least the 86-byte advertisement, and for an ICMPv6 error
/// 1,344 bytes); a reply is written in place and its total length
/// returned.
pub fn answer6(cfg: &NetConfig, buf: &mut [u8], len: usize) -> Result<GwAction, DropReason> {
    let Some(v6) = cfg.v6 else {
        // a network without IPv6: nothing here speaks it
        return Err(DropReason::GatewayUnsupported);
    };
    if len < L4 || len > buf.len() {
        return Err(DropReason::Malformed);
    }
    let h = ipv6::Header::new(&buf[I..len]).ok_or(DropReason::Malformed)?;
    let gso = VnetHdr::parse(buf).is_gso();
    let end = L4 + h.payload_len();
    if !gso && end > len {
        return Err(DropReason::Malformed);
    }
    let (src, dst) = (h.src(), h.dst());
    if dst != v6.gateway && !dst.is_multicast() {
        return route6(cfg, v6, buf, len, src, dst, h.hop_limit());
    }
    if gso {
        return Err(DropReason::GatewayUnsupported);
    }
    let (next, hop) = (h.next_header(), h.hop_limit());
    match next {
        ipv6::PROTO_ICMPV6 if end >= L4 + 4 => {
            let msg = &buf[L4..end];
            match msg[icmpv6::TYPE] {
                icmpv6::NEIGHBOR_SOLICIT => {
                    let ns = icmpv6::NeighborSolicit::parse(src, dst, hop, msg)
                        .ok_or(DropReason::Malformed)?;
                    if ns.target != v6.gateway {
                        return Err(DropReason::GatewayUnsupported);
                    }
                    Ok(GwAction::Reply(advertise(cfg, v6, buf, src)))
                }
                // the answer to the service's own solicitation
                icmpv6::NEIGHBOR_ADVERT if dst == v6.gateway => Ok(GwAction::Punt),
                icmpv6::ECHO_REQUEST if dst == v6.gateway => {
                    let vh = VnetHdr::parse(buf);
                    if vh.flags & F_NEEDS_CSUM != 0
                        || msg[icmpv6::CODE] != 0
                        || ipv6::upper_checksum(src, dst, ipv6::PROTO_ICMPV6, msg) != 0
                    {
                        return Err(DropReason::GatewayUnsupported);
                    }
                    Ok(GwAction::Reply(echo_reply(cfg, v6, buf, end, src)))
                }
                _ => Err(DropReason::GatewayUnsupported),
            }
        }
        ipv6::PROTO_ICMPV6 => Err(DropReason::Malformed),
        ipv6::PROTO_UDP | ipv6::PROTO_TCP if dst == v6.gateway => {
            if end < L4 + 4 {
                return Err(DropReason::Malformed);
            }
            let port = u16::from_be_bytes([buf[L4 + 2], buf[L4 + 3]]);
            if crate::router::PUNT_PORTS.contains(&port) {
                Ok(GwAction::Punt)
            } else {
                Err(DropReason::GatewayUnsupported)
            }
        }
        _ => Err(DropReason::GatewayUnsupported),
    }
}

/// A packet for another subnet: hop limit decremented, or an ICMPv6
/// time-exceeded in its place. Link-local packets never leave their link.
fn route6(
    cfg: &NetConfig,
    v6: Net6,
    buf: &mut [u8],
    len: usize,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop: u8,
) -> Result<GwAction, DropReason> {
    if ipv6::is_link_local(dst) || ipv6::is_link_local(src) || src.is_unspecified() {
        return Err(DropReason::GatewayUnsupported);
    }
    if hop <= 1 {
        return icmp6_error(cfg, v6, buf, len, icmpv6::TIME_EXCEEDED, 0).map(GwAction::Reply);
    }
    ipv6::dec_hop_limit(&mut buf[I..len]);
    Ok(GwAction::Route)
}

/// Writes the gateway's neighbour advertisement in place of the
/// solicitation in `buf` from `asker` (`::` for a duplicate address probe:
/// then to all nodes, unsolicited, so the prober gives the address up).
fn advertise(cfg: &NetConfig, v6: Net6, buf: &mut [u8], asker: Ipv6Addr) -> usize {
    let e = VNET_HDR_LEN;
    let (to, to_mac, flags) = if asker.is_unspecified() {
        (
            ALL_NODES,
            ipv6::multicast_mac(ALL_NODES),
            icmpv6::NA_ROUTER | icmpv6::NA_OVERRIDE,
        )
    } else {
        let mut m = [0u8; 6];
        m.copy_from_slice(&buf[e + 6..e + 12]);
        (
            asker,
            m,
            icmpv6::NA_ROUTER | icmpv6::NA_SOLICITED | icmpv6::NA_OVERRIDE,
        )
    };
    VnetHdr::default().write(&mut buf[..VNET_HDR_LEN]);
    write_eth(buf, to_mac, cfg.gateway_mac.0);
    let n = icmpv6::NA_WITH_TLLA;
    ipv6::emit(
        &mut buf[I..L4],
        n as u16,
        ipv6::PROTO_ICMPV6,
        255,
        v6.gateway,
        to,
    );
    icmpv6::emit_na(
        &mut buf[L4..L4 + n],
        flags,
        v6.gateway,
        cfg.gateway_mac.0,
        v6.gateway,
        to,
    );
    L4 + n
}

/// Turns the echo request in `buf` (IPv6 payload ending at `end`) into
/// its reply, in place.
fn echo_reply(cfg: &NetConfig, v6: Net6, buf: &mut [u8], end: usize, asker: Ipv6Addr) -> usize {
    let e = VNET_HDR_LEN;
    let mut m = [0u8; 6];
    m.copy_from_slice(&buf[e + 6..e + 12]);
    VnetHdr::default().write(&mut buf[..VNET_HDR_LEN]);
    write_eth(buf, m, cfg.gateway_mac.0);
    let plen = (end - L4) as u16;
    ipv6::emit(
        &mut buf[I..L4],
        plen,
        ipv6::PROTO_ICMPV6,
        64,
        v6.gateway,
        asker,
    );
    buf[L4 + icmpv6::TYPE] = icmpv6::ECHO_REPLY;
    icmpv6::fill_checksum(&mut buf[L4..end], v6.gateway, asker);
    end
}

fn write_eth(buf: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    let e = VNET_HDR_LEN;
    buf[e..e + 6].copy_from_slice(&dst);
    buf[e + 6..e + 12].copy_from_slice(&src);
    buf[e + 12..e + 14].copy_from_slice(&ETHERTYPE_IPV6);
}

/// Replaces the IPv6 frame in `buf` (vnet header, Ethernet, IPv6; `len`
/// bytes) with an ICMPv6 error (`typ`/`code`) from the gateway back to its
/// sender, quoting as much of it as fits in the minimum MTU (RFC 4443
/// 2.4). Never about an ICMPv6 error, nor to a multicast or unspecified
/// sender. Returns the new length (vnet header included).
pub fn icmp6_error(
    cfg: &NetConfig,
    v6: Net6,
    buf: &mut [u8],
    len: usize,
    typ: u8,
    code: u8,
) -> Result<usize, DropReason> {
    if len < L4 || len > buf.len() {
        return Err(DropReason::Malformed);
    }
    let h = ipv6::Header::new(&buf[I..len]).ok_or(DropReason::Malformed)?;
    let sender = h.src();
    if sender.is_unspecified() || sender.is_multicast() || h.dst().is_multicast() {
        return Err(DropReason::GatewayUnsupported);
    }
    if h.next_header() == ipv6::PROTO_ICMPV6
        && buf[..len]
            .get(L4)
            .is_some_and(|t| icmpv6::is_error(*t) || *t == icmpv6::NEIGHBOR_SOLICIT)
    {
        return Err(DropReason::GatewayUnsupported);
    }
    const ADDED: usize = ipv6::HDR_LEN + 8;
    let room = buf.len().saturating_sub(I + ADDED);
    let q = (len - I).min(ipv6::MIN_MTU - ADDED).min(room);
    let mut sender_mac = [0u8; 6];
    sender_mac.copy_from_slice(&buf[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12]);
    // the quote moves up past the new headers (memmove: they overlap)
    buf.copy_within(I..I + q, I + ADDED);
    VnetHdr::default().write(&mut buf[..VNET_HDR_LEN]);
    write_eth(buf, sender_mac, cfg.gateway_mac.0);
    let plen = 8 + q;
    ipv6::emit(
        &mut buf[I..L4],
        plen as u16,
        ipv6::PROTO_ICMPV6,
        64,
        v6.gateway,
        sender,
    );
    buf[L4..L4 + 8].copy_from_slice(&[typ, code, 0, 0, 0, 0, 0, 0]);
    icmpv6::fill_checksum(&mut buf[L4..L4 + plen], v6.gateway, sender);
    Ok(L4 + plen)
}

/// Whether `frame` (Ethernet) is a neighbour solicitation for `target`
/// (the switch sends those to the gateway instead of flooding them).
#[inline]
pub fn is_ns_for(frame: &[u8], target: Ipv6Addr) -> bool {
    const L: usize = ETH_HDR_LEN + ipv6::HDR_LEN;
    wire::eth::ethertype(frame) == Some(ETHERTYPE_IPV6)
        && frame.len() >= L + icmpv6::ND_LEN
        && frame[ETH_HDR_LEN + ipv6::NEXT_HEADER] == ipv6::PROTO_ICMPV6
        && frame[L] == icmpv6::NEIGHBOR_SOLICIT
        && frame[L + icmpv6::ND_TARGET..L + icmpv6::ND_TARGET + 16] == target.octets()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mac::Mac;

    const GW: Mac = Mac([2, 0x42, 10, 88, 0, 1]);
    const C: Mac = Mac([2, 0x42, 10, 88, 0, 2]);

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn cfg() -> NetConfig {
        NetConfig {
            gateway_ip: "10.88.0.1".parse().unwrap(),
            gateway_mac: GW,
            prefix: 24,
            routed: true,
            gateway: true,
            v6: Some(Net6 {
                gateway: a("fd00:1::1"),
                prefix: 64,
            }),
        }
    }

    fn frame(dst_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, hop: u8, icmp: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; VNET_HDR_LEN];
        b.extend_from_slice(&dst_mac);
        b.extend_from_slice(&C.0);
        b.extend_from_slice(&ETHERTYPE_IPV6);
        let mut h = [0u8; 40];
        ipv6::emit(&mut h, icmp.len() as u16, ipv6::PROTO_ICMPV6, hop, src, dst);
        b.extend_from_slice(&h);
        b.extend_from_slice(icmp);
        b
    }

    fn reply(r: Result<GwAction, DropReason>) -> usize {
        match r {
            Ok(GwAction::Reply(n)) => n,
            o => panic!("expected a reply, got {o:?}"),
        }
    }

    #[test]
    fn neighbour_solicitation_is_answered() {
        let (me, gw) = (a("fd00:1::2"), a("fd00:1::1"));
        let sn = ipv6::solicited_node(gw);
        let mut ns = [0u8; 32];
        icmpv6::emit_ns(&mut ns, gw, C.0, me, sn);
        let mut b = frame(ipv6::multicast_mac(sn), me, sn, 255, &ns);
        assert!(is_ns_for(&b[VNET_HDR_LEN..], gw));
        let len = b.len();
        b.resize(4096, 0);
        let n = reply(answer6(&cfg(), &mut b, len));
        let f = &b[VNET_HDR_LEN..n];
        assert_eq!(&f[..6], &C.0);
        assert_eq!(&f[6..12], &GW.0);
        let h = ipv6::Header::new(&f[14..]).unwrap();
        assert_eq!((h.src(), h.dst(), h.hop_limit()), (gw, me, 255));
        let msg = &f[54..];
        assert_eq!(msg[0], icmpv6::NEIGHBOR_ADVERT);
        assert_eq!(ipv6::upper_checksum(gw, me, ipv6::PROTO_ICMPV6, msg), 0);
        assert_eq!(&msg[8..24], &gw.octets());
        assert_eq!(&msg[26..32], &GW.0);
        // for another target: not ours
        let mut ns2 = [0u8; 32];
        icmpv6::emit_ns(&mut ns2, a("fd00:1::9"), C.0, me, sn);
        let mut b = frame(ipv6::multicast_mac(sn), me, sn, 255, &ns2);
        let len = b.len();
        assert_eq!(
            answer6(&cfg(), &mut b, len),
            Err(DropReason::GatewayUnsupported)
        );
        // hop limit below 255: from off-link, malformed
        let mut b = frame(ipv6::multicast_mac(sn), me, sn, 64, &ns);
        let len = b.len();
        assert_eq!(answer6(&cfg(), &mut b, len), Err(DropReason::Malformed));
    }

    #[test]
    fn echo_and_dns() {
        let (me, gw) = (a("fd00:1::2"), a("fd00:1::1"));
        let mut echo = vec![icmpv6::ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 1];
        echo.extend_from_slice(&[0xab; 56]);
        icmpv6::fill_checksum(&mut echo, me, gw);
        let mut b = frame(GW.0, me, gw, 64, &echo);
        let len = b.len();
        let n = reply(answer6(&cfg(), &mut b, len));
        assert_eq!(n, len);
        let f = &b[VNET_HDR_LEN..n];
        let h = ipv6::Header::new(&f[14..]).unwrap();
        assert_eq!((h.src(), h.dst()), (gw, me));
        assert_eq!(f[54], icmpv6::ECHO_REPLY);
        assert_eq!(
            ipv6::upper_checksum(gw, me, ipv6::PROTO_ICMPV6, &f[54..]),
            0
        );
        assert_eq!(&f[58..62], &[0x12, 0x34, 0, 1]);
        // UDP to port 53: punted
        let mut u = frame(GW.0, me, gw, 64, &[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        u[VNET_HDR_LEN + 14 + ipv6::NEXT_HEADER] = ipv6::PROTO_UDP;
        let len = u.len();
        assert_eq!(answer6(&cfg(), &mut u, len), Ok(GwAction::Punt));
        // truncated everywhere: errors, no panic
        for cut in 0..len {
            let _ = answer6(&cfg(), &mut u.clone(), cut);
        }
        // a network without IPv6
        let mut c = cfg();
        c.v6 = None;
        assert_eq!(
            answer6(&c, &mut b, len),
            Err(DropReason::GatewayUnsupported)
        );
    }

    #[test]
    fn routed_and_time_exceeded() {
        let (me, far) = (a("fd00:1::2"), a("2001:db8::1"));
        let mut echo = vec![icmpv6::ECHO_REQUEST, 0, 0, 0, 0, 1, 0, 1];
        icmpv6::fill_checksum(&mut echo, me, far);
        let mut b = frame(GW.0, me, far, 5, &echo);
        let len = b.len();
        assert_eq!(answer6(&cfg(), &mut b, len), Ok(GwAction::Route));
        assert_eq!(b[VNET_HDR_LEN + 14 + ipv6::HOP_LIMIT], 4);
        let mut b = frame(GW.0, me, far, 1, &echo);
        let len = b.len();
        b.resize(4096, 0);
        let n = reply(answer6(&cfg(), &mut b, len));
        let f = &b[VNET_HDR_LEN..n];
        let h = ipv6::Header::new(&f[14..]).unwrap();
        assert_eq!((h.src(), h.dst()), (a("fd00:1::1"), me));
        assert_eq!(f[54], icmpv6::TIME_EXCEEDED);
        assert_eq!(ipv6::upper_checksum(h.src(), me, 58, &f[54..]), 0);
        // the quote is the original packet
        assert_eq!(&f[62 + ipv6::DST..62 + ipv6::DST + 16], &far.octets());
        // link-local destinations are not routed
        let mut b = frame(GW.0, me, a("fe80::1"), 64, &echo);
        let len = b.len();
        assert_eq!(
            answer6(&cfg(), &mut b, len),
            Err(DropReason::GatewayUnsupported)
        );
    }
}
