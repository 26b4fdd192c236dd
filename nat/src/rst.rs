//! The TCP reset a host sends for a segment no connection of its owns
//! (RFC 9293 3.10.7.1, "CLOSED" state): tapnet owns the external address,
//! so for a segment that matches no NAT connection it answers as that
//! host's stack would. Without it, a peer that only sends (a download whose
//! NAT entry is gone after a restart) retransmits into silence and the
//! transfer hangs instead of failing fast. Stateless packet code.

use wire::tcp::{ACK, ACK_FLAG as F_ACK, CHECKSUM as CHECK, DATA_OFF as OFF, FIN as F_FIN};
use wire::tcp::{FLAGS, RST as F_RST, SEQ, SYN as F_SYN};
use wire::{csum, eth, ipv4};

const VNET: usize = wire::vnet::VNET_HDR_LEN;
const IP: usize = VNET + eth::HDR_LEN;

/// The reset answering `b` (vnet header, Ethernet, IPv4, TCP), from the
/// address and port it was sent to, Ethernet source `mac`; `None` when `b`
/// is not a whole TCP segment, is a fragment, or is itself a reset (never
/// answered).
pub fn reset_for(b: &[u8], mac: [u8; 6]) -> Option<Vec<u8>> {
    if b.len() < IP + 20
        || b[VNET + eth::ETHERTYPE..VNET + eth::ETHERTYPE + 2] != eth::ETHERTYPE_IPV4
        || b[IP] >> 4 != 4
        || b[IP + ipv4::PROTOCOL] != ipv4::PROTO_TCP
        || u16::from_be_bytes([b[IP + 6], b[IP + 7]]) & 0x3fff != 0
    {
        return None;
    }
    let ihl = (b[IP] & 0xf) as usize * 4;
    let total = u16::from_be_bytes([b[IP + 2], b[IP + 3]]) as usize;
    let t = IP + ihl;
    if ihl < 20 || b.len() < t + 20 || total < ihl + 20 {
        return None;
    }
    let doff = (b[t + OFF] >> 4) as usize * 4;
    let flags = b[t + FLAGS];
    if flags & F_RST != 0 || doff < 20 || total < ihl + doff {
        return None;
    }
    let seg_len =
        (total - ihl - doff) as u32 + u32::from(flags & F_SYN != 0) + u32::from(flags & F_FIN != 0);
    let rd32 = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    // with an ACK: <SEQ=SEG.ACK><CTL=RST>; without:
    // <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
    let (seq, ack, out_flags) = if flags & F_ACK != 0 {
        (rd32(t + ACK), 0, F_RST)
    } else {
        (0, rd32(t + SEQ).wrapping_add(seg_len), F_RST | F_ACK)
    };
    let mut f = vec![0u8; IP + 40];
    f[VNET + eth::DST..VNET + eth::DST + 6]
        .copy_from_slice(&b[VNET + eth::SRC..VNET + eth::SRC + 6]);
    f[VNET + eth::SRC..VNET + eth::SRC + 6].copy_from_slice(&mac);
    f[VNET + eth::ETHERTYPE..VNET + eth::ETHERTYPE + 2].copy_from_slice(&eth::ETHERTYPE_IPV4);
    let h = &mut f[IP..IP + 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&40u16.to_be_bytes());
    h[6] = 0x40; // DF
    h[ipv4::TTL] = 64;
    h[ipv4::PROTOCOL] = ipv4::PROTO_TCP;
    h[ipv4::SRC..ipv4::SRC + 4].copy_from_slice(&b[IP + ipv4::DST..IP + ipv4::DST + 4]);
    h[ipv4::DST..ipv4::DST + 4].copy_from_slice(&b[IP + ipv4::SRC..IP + ipv4::SRC + 4]);
    let c = csum::checksum(h);
    h[ipv4::CHECKSUM..ipv4::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    let o = IP + 20;
    f[o..o + 2].copy_from_slice(&b[t + 2..t + 4]); // their destination port
    f[o + 2..o + 4].copy_from_slice(&b[t..t + 2]);
    f[o + SEQ..o + SEQ + 4].copy_from_slice(&seq.to_be_bytes());
    f[o + ACK..o + ACK + 4].copy_from_slice(&ack.to_be_bytes());
    f[o + OFF] = 5 << 4;
    f[o + FLAGS] = out_flags;
    // pseudo-header + segment
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&f[IP + ipv4::SRC..IP + ipv4::DST + 4]);
    p.extend_from_slice(&[0, ipv4::PROTO_TCP, 0, 20]);
    p.extend_from_slice(&f[o..o + 20]);
    let c = csum::checksum(&p);
    f[o + CHECK..o + CHECK + 2].copy_from_slice(&c.to_be_bytes());
    Some(f)
}
