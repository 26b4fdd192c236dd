//! ARP for IPv4 over Ethernet (RFC 826), the only kind tapnet speaks.
//!
//! [`Arp`] is a view over a buffer that starts with such a packet: it
//! checks the length and the fixed header once, so its accessors cannot
//! panic. Packets are built with `etherparse`'s `ArpEthIpv4Packet`.

use etherparse::{ArpEthIpv4Packet, ArpOperation};
use std::net::Ipv4Addr;

/// Length of an Ethernet/IPv4 ARP packet.
pub const LEN: usize = ArpEthIpv4Packet::LEN;
/// htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4.
const FIXED: [u8; 6] = [0, 1, 8, 0, 6, 4];
const OPER: usize = 6;
const SHA: usize = 8;
const SPA: usize = 14;
const THA: usize = 18;
const TPA: usize = 24;

pub const REQUEST: u16 = 1;
pub const REPLY: u16 = 2;

/// A checked view of an Ethernet/IPv4 ARP packet at the start of `T`.
pub struct Arp<T>(T);

fn ip(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn mac(b: &[u8], at: usize) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[at..at + 6]);
    m
}

impl<T: AsRef<[u8]>> Arp<T> {
    /// The view, if `buf` starts with an Ethernet/IPv4 ARP packet.
    pub fn new(buf: T) -> Option<Arp<T>> {
        let b = buf.as_ref();
        (b.len() >= LEN && b[..OPER] == FIXED).then_some(Arp(buf))
    }

    pub fn op(&self) -> u16 {
        let b = self.0.as_ref();
        u16::from_be_bytes([b[OPER], b[OPER + 1]])
    }

    pub fn sender_mac(&self) -> [u8; 6] {
        mac(self.0.as_ref(), SHA)
    }

    pub fn sender_ip(&self) -> Ipv4Addr {
        ip(self.0.as_ref(), SPA)
    }

    pub fn target_mac(&self) -> [u8; 6] {
        mac(self.0.as_ref(), THA)
    }

    pub fn target_ip(&self) -> Ipv4Addr {
        ip(self.0.as_ref(), TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Arp<T> {
    /// Turns this request into the answer from `mac`/`ip`, in place: the
    /// sender becomes the target.
    pub fn make_reply(&mut self, mac: [u8; 6], ip: Ipv4Addr) {
        let b = self.0.as_mut();
        b[OPER..OPER + 2].copy_from_slice(&REPLY.to_be_bytes());
        b.copy_within(SHA..SHA + 10, THA);
        b[SHA..SHA + 6].copy_from_slice(&mac);
        b[SPA..SPA + 4].copy_from_slice(&ip.octets());
    }

    pub fn set_sender_mac(&mut self, mac: [u8; 6]) {
        self.0.as_mut()[SHA..SHA + 6].copy_from_slice(&mac);
    }

    pub fn set_target_mac(&mut self, mac: [u8; 6]) {
        self.0.as_mut()[THA..THA + 6].copy_from_slice(&mac);
    }
}

/// "Who has `target`? Tell `ip` at `mac`."
pub fn request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> [u8; LEN] {
    ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: mac,
        sender_ipv4: ip.octets(),
        target_mac: [0; 6],
        target_ipv4: target.octets(),
    }
    .to_bytes()
}

/// "`ip` is at `mac`", to `to_mac`/`to_ip` (the gateway makes its
/// replies in place with [`Arp::make_reply`]; a proxy answer for another
/// host's container is built with this).
pub fn reply(mac: [u8; 6], ip: Ipv4Addr, to_mac: [u8; 6], to_ip: Ipv4Addr) -> [u8; LEN] {
    ArpEthIpv4Packet {
        operation: ArpOperation::REPLY,
        sender_mac: mac,
        sender_ipv4: ip.octets(),
        target_mac: to_mac,
        target_ipv4: to_ip.octets(),
    }
    .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    #[test]
    fn request_reply_roundtrip() {
        let (ia, ib) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut p = request(A, ia, ib);
        let mut v = Arp::new(&mut p[..]).expect("valid");
        assert_eq!(
            (v.op(), v.sender_mac(), v.sender_ip(), v.target_ip()),
            (REQUEST, A, ia, ib)
        );
        v.make_reply(B, ib);
        assert_eq!(p, reply(B, ib, A, ia));
        let v = Arp::new(&p[..]).unwrap();
        assert_eq!((v.op(), v.target_mac(), v.target_ip()), (REPLY, A, ia));
    }

    #[test]
    fn rejects_short_or_foreign() {
        let p = request(A, "10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(Arp::new(&p[..LEN - 1]).is_none());
        let mut q = p;
        q[1] = 6; // htype IEEE 802
        assert!(Arp::new(&q[..]).is_none());
        assert!(Arp::new(&[][..]).is_none());
    }
}
