//! The TCP reset a host sends for a segment no connection of its owns
//! (RFC 9293 3.10.7.1, "CLOSED" state): tapnet owns the external address,
//! so for a segment that matches no NAT connection it answers as that
//! host's stack would. Without it, a peer that only sends (a download whose
//! NAT entry is gone after a restart) retransmits into silence and the
//! transfer hangs instead of failing fast. IPv4 and IPv6 (NAT66).
//! Stateless packet code.

use wire::tcp::{ACK, ACK_FLAG as F_ACK, CHECKSUM as CHECK, DATA_OFF as OFF, FIN as F_FIN};
use wire::tcp::{FLAGS, RST as F_RST, SEQ, SYN as F_SYN};
use wire::{csum, eth, ipv4, ipv6};

const VNET: usize = wire::vnet::VNET_HDR_LEN;
const IP: usize = VNET + eth::HDR_LEN;

/// The reset answering `b` (vnet header, Ethernet, IPv4 or IPv6 without
/// extension headers, TCP), from the address and port it was sent to,
/// Ethernet source `mac`; `None` when `b` is not a whole TCP segment, is a
/// fragment, or is itself a reset (never answered).
pub fn reset_for(b: &[u8], mac: [u8; 6]) -> Option<Vec<u8>> {
    let et = b.get(VNET + eth::ETHERTYPE..VNET + eth::ETHERTYPE + 2)?;
    // (IP header length, TCP segment length, the IP header's source and
    // destination)
    let (ihl, seg, src, dst, v6) = if et == eth::ETHERTYPE_IPV6 {
        let h = ipv6::Header::new(b.get(IP..)?)?;
        if h.next_header() != ipv4::PROTO_TCP || IP + ipv6::HDR_LEN + h.payload_len() > b.len() {
            return None;
        }
        let a = IP + ipv6::SRC;
        (
            ipv6::HDR_LEN,
            h.payload_len(),
            a..a + 16,
            a + 16..a + 32,
            true,
        )
    } else {
        if b.len() < IP + 20
            || et != eth::ETHERTYPE_IPV4
            || b[IP] >> 4 != 4
            || b[IP + ipv4::PROTOCOL] != ipv4::PROTO_TCP
            || u16::from_be_bytes([b[IP + 6], b[IP + 7]]) & 0x3fff != 0
        {
            return None;
        }
        let ihl = (b[IP] & 0xf) as usize * 4;
        let total = u16::from_be_bytes([b[IP + 2], b[IP + 3]]) as usize;
        if ihl < 20 || total < ihl {
            return None;
        }
        let a = IP + ipv4::SRC;
        (ihl, total - ihl, a..a + 4, a + 4..a + 8, false)
    };
    let t = IP + ihl;
    if b.len() < t + 20 || seg < 20 {
        return None;
    }
    let doff = (b[t + OFF] >> 4) as usize * 4;
    let flags = b[t + FLAGS];
    if flags & F_RST != 0 || doff < 20 || seg < doff {
        return None;
    }
    let seg_len =
        (seg - doff) as u32 + u32::from(flags & F_SYN != 0) + u32::from(flags & F_FIN != 0);
    let rd32 = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    // with an ACK: <SEQ=SEG.ACK><CTL=RST>; without:
    // <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
    let (seq, ack, out_flags) = if flags & F_ACK != 0 {
        (rd32(t + ACK), 0, F_RST)
    } else {
        (0, rd32(t + SEQ).wrapping_add(seg_len), F_RST | F_ACK)
    };
    let hl = if v6 { ipv6::HDR_LEN } else { 20 };
    let mut f = vec![0u8; IP + hl + 20];
    f[VNET + eth::DST..VNET + eth::DST + 6]
        .copy_from_slice(&b[VNET + eth::SRC..VNET + eth::SRC + 6]);
    f[VNET + eth::SRC..VNET + eth::SRC + 6].copy_from_slice(&mac);
    f[VNET + eth::ETHERTYPE..VNET + eth::ETHERTYPE + 2].copy_from_slice(et);
    // addresses swapped: from where it was sent to
    let (their, ours) = (&b[src], &b[dst]);
    if v6 {
        let a = |x: &[u8]| std::net::Ipv6Addr::from(<[u8; 16]>::try_from(x).expect("16"));
        ipv6::emit(
            &mut f[IP..IP + hl],
            20,
            ipv4::PROTO_TCP,
            64,
            a(ours),
            a(their),
        );
    } else {
        let h = &mut f[IP..IP + 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&40u16.to_be_bytes());
        h[6] = 0x40; // DF
        h[ipv4::TTL] = 64;
        h[ipv4::PROTOCOL] = ipv4::PROTO_TCP;
        h[ipv4::SRC..ipv4::SRC + 4].copy_from_slice(ours);
        h[ipv4::DST..ipv4::DST + 4].copy_from_slice(their);
        let c = csum::checksum(h);
        h[ipv4::CHECKSUM..ipv4::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    }
    let o = IP + hl;
    f[o..o + 2].copy_from_slice(&b[t + 2..t + 4]); // their destination port
    f[o + 2..o + 4].copy_from_slice(&b[t..t + 2]);
    f[o + SEQ..o + SEQ + 4].copy_from_slice(&seq.to_be_bytes());
    f[o + ACK..o + ACK + 4].copy_from_slice(&ack.to_be_bytes());
    f[o + OFF] = 5 << 4;
    f[o + FLAGS] = out_flags;
    // pseudo-header (its sum is the same layout-free sum for both) + segment
    let c = {
        let s = wire::gso::pseudo_sum(ours, their, ipv4::PROTO_TCP, 20) as u32
            + csum::sum(&f[o..o + 20]);
        let s = (s & 0xffff) + (s >> 16);
        !(((s & 0xffff) + (s >> 16)) as u16)
    };
    f[o + CHECK..o + CHECK + 2].copy_from_slice(&c.to_be_bytes());
    Some(f)
}
