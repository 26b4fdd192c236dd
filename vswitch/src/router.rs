//! The router port: each network's gateway lives inside the switch. It owns
//! the gateway MAC and IP and answers ARP requests and ICMP echo requests
//! for that IP by rewriting the received frame in place (no allocation), so
//! the reply can be written back to the ingress port from the same buffer.
//! What it does not answer itself but a service behind it does (DNS on UDP
//! and TCP port 53, and ARP replies that service's stack needs) is *punted*:
//! handed to the datapath's punt hook as a copy.

use crate::switch::{DropReason, NetConfig, ETH_HDR_LEN};
use crate::vnet::{VnetHdr, VNET_HDR_LEN};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// UDP/TCP ports on the gateway address served behind the router.
pub const PUNT_PORTS: [u16; 1] = [53];

/// What the gateway does with a frame addressed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GwAction {
    /// Answered in place; the reply (vnet header included) is this long.
    Reply(usize),
    /// For the service behind the gateway (see [`PUNT_PORTS`]).
    Punt,
    /// IPv4 for another network: route it (TTL already decremented).
    Route,
}

pub use wire::csum::checksum;

/// Answers a frame addressed to the gateway. `buf` holds the vnet header and
/// the frame (`len` bytes in all); on success the reply has been written in
/// place and its total length (vnet header included) is returned.
pub fn answer(cfg: &NetConfig, buf: &mut [u8], len: usize) -> Result<GwAction, DropReason> {
    if len < VNET_HDR_LEN + ETH_HDR_LEN || len > buf.len() {
        return Err(DropReason::Runt);
    }
    let vh = VnetHdr::parse(buf);
    let ethertype = u16::from_be_bytes([buf[VNET_HDR_LEN + 12], buf[VNET_HDR_LEN + 13]]);
    if ethertype == ETHERTYPE_IPV6 {
        return crate::router6::answer6(cfg, buf, len);
    }
    if ethertype == ETHERTYPE_IPV4
        && len >= VNET_HDR_LEN + ETH_HDR_LEN + 20
        && buf[VNET_HDR_LEN + ETH_HDR_LEN + 16..VNET_HDR_LEN + ETH_HDR_LEN + 20]
            != cfg.gateway_ip.octets()
    {
        return route(cfg, buf, len);
    }
    if vh.is_gso() {
        return Err(DropReason::GatewayUnsupported);
    }
    let frame = &mut buf[VNET_HDR_LEN..len];
    let reply_len = match u16::from_be_bytes([frame[12], frame[13]]) {
        ETHERTYPE_ARP => match arp_reply(cfg, frame)? {
            GwAction::Reply(n) => n,
            _ => return Ok(GwAction::Punt),
        },
        ETHERTYPE_IPV4 => {
            if is_punted(cfg, frame)? {
                return Ok(GwAction::Punt);
            }
            icmp_echo_reply(cfg, frame, vh.flags)?
        }
        _ => return Err(DropReason::GatewayUnsupported),
    };
    // Ethernet: back to the sender, from the gateway.
    let (dst, src) = frame.split_at_mut(6);
    dst.copy_from_slice(&src[..6]);
    src[..6].copy_from_slice(&cfg.gateway_mac.0);
    // The reply carries complete checksums: no offload flags.
    VnetHdr::default().write(&mut buf[..VNET_HDR_LEN]);
    Ok(GwAction::Reply(VNET_HDR_LEN + reply_len))
}

/// A frame for another network: TTL decremented (checksum fixed), or an
/// ICMP time-exceeded in its place when the TTL runs out.
fn route(cfg: &NetConfig, buf: &mut [u8], len: usize) -> Result<GwAction, DropReason> {
    const I: usize = VNET_HDR_LEN + ETH_HDR_LEN;
    // a router forwards well-formed IPv4 only
    let ihl = (buf[I] & 0xf) as usize * 4;
    let total = u16::from_be_bytes([buf[I + 2], buf[I + 3]]) as usize;
    let gso = VnetHdr::parse(buf).is_gso();
    if buf[I] >> 4 != 4
        || ihl < 20
        || I + ihl > len
        || total < ihl
        || (!gso && I + total > len)
        || checksum(&buf[I..I + ihl]) != 0
    {
        return Err(DropReason::Malformed);
    }
    let ttl = buf[I + 8];
    if ttl <= 1 {
        return icmp_error(cfg, buf, len, 11, 0).map(GwAction::Reply);
    }
    dec_ttl(buf, I);
    Ok(GwAction::Route)
}

/// Decrements the TTL of the IPv4 header at `ip` (checksum fixed).
pub fn dec_ttl(buf: &mut [u8], ip: usize) {
    if let Some(h) = buf.get_mut(ip..) {
        wire::ipv4::dec_ttl(h);
    }
}

/// Replaces the IPv4 frame in `buf` (vnet header, Ethernet, IP) with an
/// ICMP error (`typ`/`code`) about it from the gateway back to its sender,
/// quoting its IP header and first 8 payload bytes. Never about an ICMP
/// error. Returns the new length (vnet header included).
pub fn icmp_error(
    cfg: &NetConfig,
    buf: &mut [u8],
    len: usize,
    typ: u8,
    code: u8,
) -> Result<usize, DropReason> {
    const I: usize = VNET_HDR_LEN + ETH_HDR_LEN;
    if len < I + 20 {
        return Err(DropReason::Malformed);
    }
    let ihl = (buf[I] & 0xf) as usize * 4;
    if ihl < 20 || len < I + ihl {
        return Err(DropReason::Malformed);
    }
    if buf[I + 9] == IPPROTO_ICMP && len > I + ihl && !matches!(buf[I + ihl], 0 | 8) {
        return Err(DropReason::GatewayUnsupported);
    }
    let q = (ihl + 8).min(len - I);
    let mut quote = [0u8; 68];
    quote[..q].copy_from_slice(&buf[I..I + q]);
    let sender_mac: [u8; 6] = buf[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12]
        .try_into()
        .expect("6");
    let sender_ip: [u8; 4] = buf[I + 12..I + 16].try_into().expect("4");
    VnetHdr::default().write(&mut buf[..VNET_HDR_LEN]);
    let e = VNET_HDR_LEN;
    buf[e..e + 6].copy_from_slice(&sender_mac);
    buf[e + 6..e + 12].copy_from_slice(&cfg.gateway_mac.0);
    buf[e + 12..e + 14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let total = 20 + 8 + q;
    let h = &mut buf[I..I + 20];
    h.copy_from_slice(&[
        0x45,
        0xc0,
        0,
        0,
        0,
        0,
        0,
        0,
        64,
        IPPROTO_ICMP,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h[12..16].copy_from_slice(&cfg.gateway_ip.octets());
    h[16..20].copy_from_slice(&sender_ip);
    let c = checksum(h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    let m = &mut buf[I + 20..I + total];
    m[..8].copy_from_slice(&[typ, code, 0, 0, 0, 0, 0, 0]);
    m[8..].copy_from_slice(&quote[..q]);
    let c = checksum(m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    Ok(I + total)
}

/// UDP or TCP to the gateway address on a [`PUNT_PORTS`] port (first
/// fragment or unfragmented).
fn is_punted(cfg: &NetConfig, f: &[u8]) -> Result<bool, DropReason> {
    const I: usize = ETH_HDR_LEN;
    let ip = etherparse::Ipv4HeaderSlice::from_slice(&f[I..]).map_err(|_| DropReason::Malformed)?;
    let proto = ip.protocol().0;
    if ip.destination() != cfg.gateway_ip.octets()
        || (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
        || ip.fragments_offset().value() != 0
    {
        return Ok(false);
    }
    let l4 = I + ip.slice().len();
    if f.len() < l4 + 4 {
        return Err(DropReason::Malformed);
    }
    let port = u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]);
    Ok(PUNT_PORTS.contains(&port))
}

fn arp_reply(cfg: &NetConfig, f: &mut [u8]) -> Result<GwAction, DropReason> {
    let len = f.len();
    if len < ETH_HDR_LEN + wire::arp::LEN {
        return Err(DropReason::Malformed);
    }
    // not Ethernet/IPv4 ARP: nothing the gateway answers
    let Some(mut arp) = wire::arp::Arp::new(&mut f[ETH_HDR_LEN..]) else {
        return Err(DropReason::GatewayUnsupported);
    };
    if arp.target_ip() != cfg.gateway_ip {
        return Err(DropReason::GatewayUnsupported);
    }
    match arp.op() {
        wire::arp::REQUEST => {}                       // answered here
        wire::arp::REPLY => return Ok(GwAction::Punt), // to the service's own request
        _ => return Err(DropReason::GatewayUnsupported),
    }
    arp.make_reply(cfg.gateway_mac.0, cfg.gateway_ip);
    // same length as the request (its padding kept)
    Ok(GwAction::Reply(len))
}

fn icmp_echo_reply(cfg: &NetConfig, f: &mut [u8], vnet_flags: u8) -> Result<usize, DropReason> {
    const I: usize = ETH_HDR_LEN;
    let ip = etherparse::Ipv4HeaderSlice::from_slice(&f[I..]).map_err(|_| DropReason::Malformed)?;
    let ihl = ip.slice().len();
    let total = ip.total_len() as usize;
    if total < ihl || I + total > f.len() {
        return Err(DropReason::Malformed);
    }
    if ip.destination() != cfg.gateway_ip.octets()
        || ip.protocol() != etherparse::IpNumber::ICMP
        || ip.more_fragments()
        || ip.fragments_offset().value() != 0
        || total < ihl + 8
        || I + total > f.len()
        || vnet_flags & crate::vnet::F_NEEDS_CSUM != 0
    {
        return Err(DropReason::GatewayUnsupported);
    }
    debug_assert_eq!(IPPROTO_ICMP, 1);
    let icmp = &mut f[I + ihl..I + total];
    if icmp[0] != 8 || icmp[1] != 0 || checksum(icmp) != 0 {
        return Err(DropReason::GatewayUnsupported);
    }
    icmp[0] = 0; // echo reply
    icmp[2..4].copy_from_slice(&[0, 0]);
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    // IP: swap addresses, fresh TTL, new header checksum
    let h = &mut f[I..I + ihl];
    let mut src = [0u8; 4];
    src.copy_from_slice(&h[12..16]);
    h.copy_within(16..20, 12);
    h[16..20].copy_from_slice(&src);
    h[8] = 64;
    h[10..12].copy_from_slice(&[0, 0]);
    let c = checksum(h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    Ok(I + total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mac::Mac;

    fn cfg() -> NetConfig {
        NetConfig {
            gateway_ip: "10.88.0.1".parse().unwrap(),
            gateway_mac: Mac([2, 0x42, 10, 88, 0, 1]),
            prefix: 24,
            routed: false,
            gateway: true,
            v6: None,
        }
    }

    const C: Mac = Mac([2, 0x42, 10, 88, 0, 2]);

    fn rl(r: Result<GwAction, DropReason>) -> usize {
        match r {
            Ok(GwAction::Reply(n)) => n,
            o => panic!("expected a reply, got {o:?}"),
        }
    }

    #[test]
    fn dns_and_arp_replies_are_punted() {
        // UDP 10.88.0.2:40000 -> 10.88.0.1:53
        let mut b = vec![0u8; VNET_HDR_LEN];
        b.extend_from_slice(&cfg().gateway_mac.0);
        b.extend_from_slice(&C.0);
        b.extend_from_slice(&[8, 0, 0x45, 0, 0, 40, 0, 0, 0, 0, 64, 17, 0, 0]);
        b.extend_from_slice(&[10, 88, 0, 2, 10, 88, 0, 1]);
        b.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 20, 0, 0]);
        b.resize(VNET_HDR_LEN + 14 + 40, 0);
        let n = b.len();
        assert_eq!(answer(&cfg(), &mut b, n), Ok(GwAction::Punt));
        // same to port 54: not served
        b[VNET_HDR_LEN + 14 + 20 + 3] = 54;
        assert_eq!(
            answer(&cfg(), &mut b, n),
            Err(DropReason::GatewayUnsupported)
        );
        // ARP reply for the gateway's address
        let mut a = vec![0u8; VNET_HDR_LEN];
        a.extend_from_slice(&cfg().gateway_mac.0);
        a.extend_from_slice(&C.0);
        a.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 2]);
        a.extend_from_slice(&C.0);
        a.extend_from_slice(&[10, 88, 0, 2]);
        a.extend_from_slice(&cfg().gateway_mac.0);
        a.extend_from_slice(&[10, 88, 0, 1]);
        let n = a.len();
        assert_eq!(answer(&cfg(), &mut a, n), Ok(GwAction::Punt));
    }

    #[test]
    fn truncated_headers_are_malformed() {
        let mut b = vec![0u8; VNET_HDR_LEN];
        b.extend_from_slice(&Mac::BROADCAST.0);
        b.extend_from_slice(&C.0);
        b.extend_from_slice(&[8, 6, 0, 1, 8, 0]); // ARP cut after 4 bytes
        let n = b.len();
        assert_eq!(answer(&cfg(), &mut b, n), Err(DropReason::Malformed));
        b.truncate(VNET_HDR_LEN + 12);
        b.extend_from_slice(&[8, 0, 0x45, 0, 0, 200]); // IPv4, 4 bytes of header
        let n = b.len();
        assert_eq!(answer(&cfg(), &mut b, n), Err(DropReason::Malformed));
        assert_eq!(answer(&cfg(), &mut b, n + 100), Err(DropReason::Runt));
    }

    #[test]
    fn arp() {
        let mut b = vec![0u8; VNET_HDR_LEN];
        b.extend_from_slice(&Mac::BROADCAST.0);
        b.extend_from_slice(&C.0);
        b.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        b.extend_from_slice(&C.0);
        b.extend_from_slice(&[10, 88, 0, 2]);
        b.extend_from_slice(&[0; 6]);
        b.extend_from_slice(&[10, 88, 0, 1]);
        b.resize(VNET_HDR_LEN + 60, 0);
        let n = rl(answer(&cfg(), &mut b, VNET_HDR_LEN + 60));
        assert_eq!(n, VNET_HDR_LEN + 60);
        {
            let pkt = etherparse::SlicedPacket::from_ethernet(&b[VNET_HDR_LEN..n]).unwrap();
            let etherparse::LinkSlice::Ethernet2(eth) = pkt.link.unwrap() else {
                panic!()
            };
            assert_eq!(eth.destination(), C.0);
            assert_eq!(eth.source(), cfg().gateway_mac.0);
        }
        let e = VNET_HDR_LEN + 14;
        assert_eq!(&b[e + 6..e + 8], &[0, 2]);
        assert_eq!(&b[e + 8..e + 14], &cfg().gateway_mac.0);
        assert_eq!(&b[e + 14..e + 18], &[10, 88, 0, 1]);
        assert_eq!(&b[e + 18..e + 24], &C.0);
        assert_eq!(&b[e + 24..e + 28], &[10, 88, 0, 2]);
        // ARP for another address is not answered
        b[e + 7] = 1;
        b[e + 27] = 9;
        assert!(answer(&cfg(), &mut b, VNET_HDR_LEN + 60).is_err());
    }

    #[test]
    fn ping() {
        let payload = [0xabu8; 56];
        let builder = etherparse::PacketBuilder::ethernet2(C.0, cfg().gateway_mac.0)
            .ipv4([10, 88, 0, 2], [10, 88, 0, 1], 64)
            .icmpv4_echo_request(0x1234, 7);
        let mut f = Vec::new();
        builder.write(&mut f, &payload).unwrap();
        let mut b = vec![0u8; VNET_HDR_LEN];
        b.extend_from_slice(&f);
        let len = b.len();
        let n = rl(answer(&cfg(), &mut b, len));
        let pkt = etherparse::SlicedPacket::from_ethernet(&b[VNET_HDR_LEN..n]).unwrap();
        let etherparse::NetSlice::Ipv4(ip) = pkt.net.unwrap() else {
            panic!()
        };
        assert_eq!(ip.header().source(), [10, 88, 0, 1]);
        assert_eq!(ip.header().destination(), [10, 88, 0, 2]);
        assert_eq!(checksum(ip.header().slice()), 0);
        let etherparse::TransportSlice::Icmpv4(icmp) = pkt.transport.unwrap() else {
            panic!()
        };
        match icmp.icmp_type() {
            etherparse::Icmpv4Type::EchoReply(e) => assert_eq!((e.id, e.seq), (0x1234, 7)),
            t => panic!("{t:?}"),
        }
        assert_eq!(icmp.payload(), &payload);
        assert_eq!(checksum(icmp.slice()), 0);
        // a corrupted request is not answered
        let mut b2 = vec![0u8; VNET_HDR_LEN];
        b2.extend_from_slice(&f);
        let last = b2.len() - 1;
        b2[last] ^= 1;
        assert_eq!(
            answer(&cfg(), &mut b2, len),
            Err(DropReason::GatewayUnsupported)
        );
        // truncated: no panic
        assert!(answer(&cfg(), &mut b2, VNET_HDR_LEN + 20).is_err());
    }
}
