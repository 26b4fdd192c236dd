//! ICMPv6 (RFC 4443) and the neighbour discovery messages (RFC 4861) a
//! gateway answers: offsets, a checked view of a neighbour solicitation,
//! and builders for the messages the gateway sends.

use crate::ipv6;
use std::net::Ipv6Addr;

pub const DEST_UNREACHABLE: u8 = 1;
pub const PACKET_TOO_BIG: u8 = 2;
pub const TIME_EXCEEDED: u8 = 3;
pub const ECHO_REQUEST: u8 = 128;
pub const ECHO_REPLY: u8 = 129;
pub const ROUTER_SOLICIT: u8 = 133;
pub const NEIGHBOR_SOLICIT: u8 = 135;
pub const NEIGHBOR_ADVERT: u8 = 136;

pub const TYPE: usize = 0;
pub const CODE: usize = 1;
pub const CHECKSUM: usize = 2;
/// Neighbour solicitation and advertisement: the target address.
pub const ND_TARGET: usize = 8;
/// Length of an NS or NA before its options.
pub const ND_LEN: usize = 24;
/// NDP option types: source and target link-layer address.
pub const OPT_SLLA: u8 = 1;
pub const OPT_TLLA: u8 = 2;

/// NA flags (first byte after the checksum): router, solicited, override.
pub const NA_ROUTER: u8 = 0x80;
pub const NA_SOLICITED: u8 = 0x40;
pub const NA_OVERRIDE: u8 = 0x20;

/// Whether an ICMPv6 type is an error message (never answered with one).
pub fn is_error(t: u8) -> bool {
    t < 128
}

/// A neighbour solicitation that passed RFC 4861 7.1.1's checks (hop
/// limit 255, code 0, at least 24 bytes, checksum, target not multicast,
/// well-formed options, no source link-layer option from `::`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborSolicit {
    pub src: Ipv6Addr,
    pub target: Ipv6Addr,
    /// The source link-layer address option, if present.
    pub slla: Option<[u8; 6]>,
}

impl NeighborSolicit {
    /// Parses the ICMPv6 message `msg` (exactly the IPv6 payload) carried by
    /// an IPv6 header with these addresses and hop limit.
    pub fn parse(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        msg: &[u8],
    ) -> Option<NeighborSolicit> {
        if hop_limit != 255
            || msg.len() < ND_LEN
            || msg[TYPE] != NEIGHBOR_SOLICIT
            || msg[CODE] != 0
            || ipv6::upper_checksum(src, dst, ipv6::PROTO_ICMPV6, msg) != 0
        {
            return None;
        }
        let mut t = [0u8; 16];
        t.copy_from_slice(&msg[ND_TARGET..ND_TARGET + 16]);
        let target = Ipv6Addr::from(t);
        if target.is_multicast() {
            return None;
        }
        let mut slla = None;
        let mut opts = &msg[ND_LEN..];
        while !opts.is_empty() {
            // every option is a multiple of 8 bytes and never empty
            let len = *opts.get(1)? as usize * 8;
            if len == 0 || len > opts.len() {
                return None;
            }
            if opts[0] == OPT_SLLA && len == 8 {
                let mut m = [0u8; 6];
                m.copy_from_slice(&opts[2..8]);
                slla = Some(m);
            }
            opts = &opts[len..];
        }
        if src.is_unspecified() && (slla.is_some() || !dst.is_multicast()) {
            return None;
        }
        Some(NeighborSolicit { src, target, slla })
    }
}

/// A neighbour advertisement that passed the checks RFC 4861 section
/// 7.1.2 asks of one (hop limit 255, code 0, whole, checksum right, the
/// target not multicast).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborAdvert {
    pub target: Ipv6Addr,
    /// The flags byte ([`NA_ROUTER`], [`NA_SOLICITED`], [`NA_OVERRIDE`]).
    pub flags: u8,
    /// The target link-layer address option, when it is the first option.
    pub tlla: Option<[u8; 6]>,
}

impl NeighborAdvert {
    /// Parses the ICMPv6 message `msg` (exactly the IPv6 payload) carried by
    /// an IPv6 header with these addresses and hop limit.
    pub fn parse(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        msg: &[u8],
    ) -> Option<NeighborAdvert> {
        if hop_limit != 255
            || msg.len() < ND_LEN
            || msg[TYPE] != NEIGHBOR_ADVERT
            || msg[CODE] != 0
            || ipv6::upper_checksum(src, dst, ipv6::PROTO_ICMPV6, msg) != 0
        {
            return None;
        }
        let mut t = [0u8; 16];
        t.copy_from_slice(&msg[ND_TARGET..ND_TARGET + 16]);
        let target = Ipv6Addr::from(t);
        if target.is_multicast() {
            return None;
        }
        let tlla = msg
            .get(ND_LEN..ND_LEN + 8)
            .filter(|o| o[0] == OPT_TLLA && o[1] == 1)
            .map(|o| {
                let mut m = [0u8; 6];
                m.copy_from_slice(&o[2..8]);
                m
            });
        Some(NeighborAdvert {
            target,
            flags: msg[4],
            tlla,
        })
    }
}

/// Length of the advertisement [`emit_na`] writes.
pub const NA_WITH_TLLA: usize = ND_LEN + 8;

/// Writes a neighbour advertisement for `target` at `mac` (with a target
/// link-layer option) into `msg` (at least [`NA_WITH_TLLA`] bytes), its
/// checksum computed for `src` -> `dst`.
pub fn emit_na(
    msg: &mut [u8],
    flags: u8,
    target: Ipv6Addr,
    mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
) {
    let m = &mut msg[..NA_WITH_TLLA];
    m.fill(0);
    m[TYPE] = NEIGHBOR_ADVERT;
    m[4] = flags;
    m[ND_TARGET..ND_TARGET + 16].copy_from_slice(&target.octets());
    m[ND_LEN] = OPT_TLLA;
    m[ND_LEN + 1] = 1;
    m[ND_LEN + 2..ND_LEN + 8].copy_from_slice(&mac);
    let c = ipv6::upper_checksum(src, dst, ipv6::PROTO_ICMPV6, m);
    m[CHECKSUM..CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
}

/// The Ethernet destination and IPv6 packet (header and message) of a
/// neighbour solicitation for `target` from `src` (link-layer address
/// `mac`), to `target`'s solicited-node group.
pub fn solicitation(target: Ipv6Addr, mac: [u8; 6], src: Ipv6Addr) -> ([u8; 6], Vec<u8>) {
    let dst = ipv6::solicited_node(target);
    let mut p = vec![0u8; ipv6::HDR_LEN + ND_LEN + 8];
    let n = (ND_LEN + 8) as u16;
    ipv6::emit(&mut p, n, ipv6::PROTO_ICMPV6, 255, src, dst);
    emit_ns(&mut p[ipv6::HDR_LEN..], target, mac, src, dst);
    (ipv6::multicast_mac(dst), p)
}

/// The IPv6 packet of a neighbour advertisement (`flags`) "`target` is at
/// `mac`", from `target` to `to`.
pub fn advertisement(flags: u8, target: Ipv6Addr, mac: [u8; 6], to: Ipv6Addr) -> Vec<u8> {
    let mut p = vec![0u8; ipv6::HDR_LEN + NA_WITH_TLLA];
    ipv6::emit(
        &mut p,
        NA_WITH_TLLA as u16,
        ipv6::PROTO_ICMPV6,
        255,
        target,
        to,
    );
    emit_na(&mut p[ipv6::HDR_LEN..], flags, target, mac, target, to);
    p
}

/// Writes a neighbour solicitation from `src` (link-layer address `mac`)
/// for `target` into `msg` (at least 32 bytes), to `dst`.
pub fn emit_ns(msg: &mut [u8], target: Ipv6Addr, mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr) {
    let m = &mut msg[..ND_LEN + 8];
    m.fill(0);
    m[TYPE] = NEIGHBOR_SOLICIT;
    m[ND_TARGET..ND_TARGET + 16].copy_from_slice(&target.octets());
    m[ND_LEN] = OPT_SLLA;
    m[ND_LEN + 1] = 1;
    m[ND_LEN + 2..ND_LEN + 8].copy_from_slice(&mac);
    let c = ipv6::upper_checksum(src, dst, ipv6::PROTO_ICMPV6, m);
    m[CHECKSUM..CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
}

/// Sets the checksum of ICMPv6 message `msg` between `src` and `dst`.
pub fn fill_checksum(msg: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr) {
    if msg.len() < 4 {
        return;
    }
    msg[CHECKSUM..CHECKSUM + 2].fill(0);
    let c = ipv6::upper_checksum(src, dst, ipv6::PROTO_ICMPV6, msg);
    msg[CHECKSUM..CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn advertisements_parse_and_bad_ones_do_not() {
        let (me, to): (Ipv6Addr, Ipv6Addr) =
            ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let mac = [2, 0, 0, 0, 0, 1];
        let mut na = [0u8; NA_WITH_TLLA];
        emit_na(&mut na, NA_SOLICITED | NA_OVERRIDE, me, mac, me, to);
        let a = NeighborAdvert::parse(me, to, 255, &na).unwrap();
        assert_eq!(
            (a.target, a.flags, a.tlla),
            (me, NA_SOLICITED | NA_OVERRIDE, Some(mac))
        );
        // without its option, its target link-layer address is not known
        let mut bare = na[..ND_LEN].to_vec();
        fill_checksum(&mut bare, me, to);
        assert_eq!(
            NeighborAdvert::parse(me, to, 255, &bare).unwrap().tlla,
            None
        );
        // hop limit, checksum, length, type
        assert!(NeighborAdvert::parse(me, to, 64, &na).is_none());
        let mut bad = na;
        bad[20] ^= 1;
        assert!(NeighborAdvert::parse(me, to, 255, &bad).is_none());
        assert!(NeighborAdvert::parse(me, to, 255, &na[..ND_LEN - 1]).is_none());
        let mut ns = [0u8; ND_LEN + 8];
        emit_ns(&mut ns, me, mac, to, me);
        assert!(NeighborAdvert::parse(to, me, 255, &ns).is_none());
    }

    #[test]
    fn ns_round_trip_and_checks() {
        let (src, tgt) = (a("fd00::2"), a("fd00::1"));
        let dst = ipv6::solicited_node(tgt);
        let mut m = [0u8; 32];
        emit_ns(&mut m, tgt, [2, 0, 0, 0, 0, 2], src, dst);
        let ns = NeighborSolicit::parse(src, dst, 255, &m).unwrap();
        assert_eq!(ns.target, tgt);
        assert_eq!(ns.slla, Some([2, 0, 0, 0, 0, 2]));
        // hop limit not 255: from beyond the link
        assert!(NeighborSolicit::parse(src, dst, 64, &m).is_none());
        // bad checksum
        let mut bad = m;
        bad[20] ^= 1;
        assert!(NeighborSolicit::parse(src, dst, 255, &bad).is_none());
        // option of length 0 (would loop forever)
        let mut z = m;
        z[ND_LEN + 1] = 0;
        fill_checksum(&mut z, src, dst);
        assert!(NeighborSolicit::parse(src, dst, 255, &z).is_none());
        // truncated
        assert!(NeighborSolicit::parse(src, dst, 255, &m[..20]).is_none());
        // DAD probe (from ::) with a link-layer option is invalid
        let mut d = m;
        fill_checksum(&mut d, Ipv6Addr::UNSPECIFIED, dst);
        assert!(NeighborSolicit::parse(Ipv6Addr::UNSPECIFIED, dst, 255, &d).is_none());
    }

    #[test]
    fn na_checksum() {
        let mut m = [0u8; NA_WITH_TLLA];
        let (s, d) = (a("fd00::1"), a("fd00::2"));
        emit_na(&mut m, NA_ROUTER | NA_SOLICITED, s, [2; 6], s, d);
        assert_eq!(ipv6::upper_checksum(s, d, ipv6::PROTO_ICMPV6, &m), 0);
        assert_eq!(m[TYPE], NEIGHBOR_ADVERT);
    }
}
