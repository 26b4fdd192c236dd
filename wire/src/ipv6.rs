//! IPv6 header offsets (RFC 8200), the multicast addresses neighbour
//! discovery uses, and the pseudo-header sum upper-layer checksums cover.

use crate::csum;
use std::net::Ipv6Addr;

pub const HDR_LEN: usize = 40;
pub const PAYLOAD_LEN: usize = 4;
pub const NEXT_HEADER: usize = 6;
pub const HOP_LIMIT: usize = 7;
pub const SRC: usize = 8;
pub const DST: usize = 24;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// The minimum MTU every IPv6 link has (RFC 8200 section 5): an ICMPv6
/// error never makes a packet longer than this.
pub const MIN_MTU: usize = 1280;

/// A checked view of an IPv6 header: built only when `h` holds all 40
/// bytes and version 6, so its accessors cannot panic.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a>(&'a [u8]);

impl<'a> Header<'a> {
    pub fn new(h: &'a [u8]) -> Option<Header<'a>> {
        (h.len() >= HDR_LEN && h[0] >> 4 == 6).then_some(Header(h))
    }
    pub fn payload_len(&self) -> usize {
        u16::from_be_bytes([self.0[PAYLOAD_LEN], self.0[PAYLOAD_LEN + 1]]) as usize
    }
    pub fn next_header(&self) -> u8 {
        self.0[NEXT_HEADER]
    }
    pub fn hop_limit(&self) -> u8 {
        self.0[HOP_LIMIT]
    }
    pub fn src(&self) -> Ipv6Addr {
        addr(&self.0[SRC..SRC + 16])
    }
    pub fn dst(&self) -> Ipv6Addr {
        addr(&self.0[DST..DST + 16])
    }
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

/// The EUI-64 link-local address of `mac` (what Linux gives an interface
/// by default, RFC 4291 appendix A).
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let m = mac;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 2,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// The destination of the IPv6 header `h`, if it is long enough.
pub fn dst(h: &[u8]) -> Option<Ipv6Addr> {
    h.get(DST..DST + 16).map(addr)
}

/// The source of the IPv6 header `h`, if it is long enough.
pub fn src(h: &[u8]) -> Option<Ipv6Addr> {
    h.get(SRC..SRC + 16).map(addr)
}

/// Whether `a` and `b` share their first `prefix` bits.
pub fn same_subnet(a: Ipv6Addr, b: Ipv6Addr, prefix: u8) -> bool {
    let m = match prefix {
        0 => 0,
        p => u128::MAX << (128 - p.min(128) as u32),
    };
    (u128::from(a) ^ u128::from(b)) & m == 0
}

/// The solicited-node multicast address of `a` (RFC 4291 2.7.1):
/// `ff02::1:ffXX:XXXX` with `a`'s low 24 bits.
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    Ipv6Addr::from((0xff02u128 << 112) | (0x1_ff00_0000) | (u128::from(a) & 0xff_ffff))
}

/// The Ethernet address an IPv6 multicast address maps to (RFC 2464 7):
/// `33:33` and its low 32 bits.
pub fn multicast_mac(a: Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// Link-local unicast (fe80::/10).
pub fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// The ones' complement sum of the pseudo-header (RFC 8200 8.1) for an
/// upper-layer packet of `len` bytes of protocol `proto` (not complemented:
/// add the upper-layer bytes and complement to get the checksum).
pub fn pseudo_sum(src: Ipv6Addr, dst: Ipv6Addr, len: u32, proto: u8) -> u32 {
    let mut s = csum::sum(&src.octets()) + csum::sum(&dst.octets());
    s += len >> 16;
    s += len & 0xffff;
    s += proto as u32;
    s
}

/// The checksum field of upper-layer packet `data` (checksum field zeroed
/// or not: a valid packet sums to zero) between `src` and `dst`.
pub fn upper_checksum(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, data: &[u8]) -> u16 {
    let s = pseudo_sum(src, dst, data.len() as u32, proto) + csum::sum(data);
    !fold(s)
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Decrements the hop limit of the IPv6 header `h` (IPv6 has no header
/// checksum). False, and nothing changed, for a header too short or a hop
/// limit of 0.
pub fn dec_hop_limit(h: &mut [u8]) -> bool {
    if h.len() < HDR_LEN || h[HOP_LIMIT] == 0 {
        return false;
    }
    h[HOP_LIMIT] -= 1;
    true
}

/// Writes a 40-byte IPv6 header at the start of `h` (`h` must hold 40).
pub fn emit(h: &mut [u8], payload_len: u16, next: u8, hop_limit: u8, src: Ipv6Addr, dst: Ipv6Addr) {
    h[..4].copy_from_slice(&[0x60, 0, 0, 0]);
    h[PAYLOAD_LEN..PAYLOAD_LEN + 2].copy_from_slice(&payload_len.to_be_bytes());
    h[NEXT_HEADER] = next;
    h[HOP_LIMIT] = hop_limit;
    h[SRC..SRC + 16].copy_from_slice(&src.octets());
    h[DST..DST + 16].copy_from_slice(&dst.octets());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multicast_and_subnets() {
        let a: Ipv6Addr = "fd00:1::1234:5678".parse().unwrap();
        assert_eq!(
            solicited_node(a),
            "ff02::1:ff34:5678".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            multicast_mac(solicited_node(a)),
            [0x33, 0x33, 0xff, 0x34, 0x56, 0x78]
        );
        assert!(same_subnet(a, "fd00:1::9".parse().unwrap(), 64));
        assert!(!same_subnet(a, "fd00:2::9".parse().unwrap(), 64));
        assert!(same_subnet(a, "::1".parse().unwrap(), 0));
        assert!(is_link_local("fe80::1".parse().unwrap()));
        assert!(!is_link_local(a));
    }

    #[test]
    fn checksum_matches_etherparse() {
        let b = etherparse::PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64).udp(1000, 53);
        let mut p = Vec::new();
        b.write(&mut p, b"hello").unwrap();
        let h = Header::new(&p).unwrap();
        assert_eq!(h.payload_len(), 8 + 5);
        // a valid packet sums to zero with its pseudo-header
        assert_eq!(
            upper_checksum(h.src(), h.dst(), PROTO_UDP, &p[HDR_LEN..]),
            0
        );
        let mut q = p.clone();
        dec_hop_limit(&mut q);
        assert_eq!(q[HOP_LIMIT], 63);
        assert!(Header::new(&p[..39]).is_none());
    }
}
