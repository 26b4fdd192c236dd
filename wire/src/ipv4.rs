//! IPv4 header offsets (RFC 791) and the in-place edits tapnet makes.

use crate::csum;

pub const MIN_HDR_LEN: usize = 20;
pub const TOTAL_LEN: usize = 2;
pub const TTL: usize = 8;
pub const PROTOCOL: usize = 9;
pub const CHECKSUM: usize = 10;
pub const SRC: usize = 12;
pub const DST: usize = 16;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// The netmask of a prefix length (0 to 32) as a number.
pub fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - p.min(32)),
    }
}

/// Whether `a` and `b` are in the same subnet of length `prefix`.
pub fn same_subnet(a: std::net::Ipv4Addr, b: std::net::Ipv4Addr, prefix: u8) -> bool {
    (u32::from(a) ^ u32::from(b)) & mask(prefix) == 0
}

/// The destination address of the IPv4 header `h`, if it is long enough.
pub fn dst(h: &[u8]) -> Option<std::net::Ipv4Addr> {
    h.get(DST..DST + 4)
        .map(|a| std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]))
}

/// Decrements the TTL of the IPv4 header `h` and fixes its checksum
/// incrementally (RFC 1624: the TTL is the high byte of a 16-bit word).
/// False, and nothing changed, for a header too short or a TTL of 0.
pub fn dec_ttl(h: &mut [u8]) -> bool {
    if h.len() < MIN_HDR_LEN || h[TTL] == 0 {
        return false;
    }
    let old = u16::from_be_bytes([h[TTL], h[PROTOCOL]]);
    h[TTL] -= 1;
    let new = u16::from_be_bytes([h[TTL], h[PROTOCOL]]);
    let c = u16::from_be_bytes([h[CHECKSUM], h[CHECKSUM + 1]]);
    h[CHECKSUM..CHECKSUM + 2].copy_from_slice(&csum::update16(c, old, new).to_be_bytes());
    true
}

/// A 20-byte IPv4 header (no options, DF set, identification 0) for a
/// payload of `payload_len` bytes of protocol `proto`, checksum filled in.
/// The caller keeps `payload_len` within 65,515.
pub fn emit(
    payload_len: usize,
    proto: u8,
    ttl: u8,
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
) -> [u8; MIN_HDR_LEN] {
    let mut h = [0u8; MIN_HDR_LEN];
    h[0] = 0x45;
    let total = (MIN_HDR_LEN + payload_len).min(u16::MAX as usize) as u16;
    h[TOTAL_LEN..TOTAL_LEN + 2].copy_from_slice(&total.to_be_bytes());
    h[6] = 0x40; // DF
    h[TTL] = ttl;
    h[PROTOCOL] = proto;
    h[SRC..SRC + 4].copy_from_slice(&src.octets());
    h[DST..DST + 4].copy_from_slice(&dst.octets());
    let c = csum::checksum(&h);
    h[CHECKSUM..CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emitted_header_checks_out() {
        let h = emit(
            100,
            PROTO_UDP,
            64,
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
        );
        assert_eq!(h[0], 0x45);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 120);
        assert_eq!((h[TTL], h[PROTOCOL], h[6]), (64, PROTO_UDP, 0x40));
        assert_eq!(dst(&h), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(csum::checksum(&h), 0, "a right checksum sums to zero");
    }

    #[test]
    fn ttl_and_checksum() {
        let mut h = [
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, PROTO_UDP, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        let c = csum::checksum(&h);
        h[CHECKSUM..CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
        assert!(dec_ttl(&mut h));
        assert_eq!(h[TTL], 63);
        assert_eq!(csum::checksum(&h), 0, "checksum still valid");
        assert_eq!(dst(&h), Some("10.0.0.1".parse().unwrap()));
        h[TTL] = 0;
        assert!(!dec_ttl(&mut h));
        assert!(!dec_ttl(&mut h[..19]));
    }
}
