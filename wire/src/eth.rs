//! Ethernet II: offsets, EtherTypes, and the frame builder for frames that
//! tapnet makes itself (a vnet header, then the frame).

use crate::vnet::VNET_HDR_LEN;

pub const HDR_LEN: usize = 14;
pub const DST: usize = 0;
pub const SRC: usize = 6;
pub const ETHERTYPE: usize = 12;
/// Frames shorter than this (without the FCS) are padded.
pub const MIN_LEN: usize = 60;
pub const BROADCAST: [u8; 6] = [0xff; 6];

pub const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
pub const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
pub const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
/// 802.1Q tag; the tag is 4 bytes: this EtherType and the TCI.
pub const ETHERTYPE_VLAN: [u8; 2] = [0x81, 0x00];
pub const VLAN_TAG_LEN: usize = 4;

/// The EtherType of `frame` (an Ethernet frame), if it has a header.
pub fn ethertype(frame: &[u8]) -> Option<[u8; 2]> {
    frame.get(ETHERTYPE..ETHERTYPE + 2).map(|e| [e[0], e[1]])
}

/// A frame to write to a TAP or packet socket: a zero vnet header (no
/// offloads), the Ethernet header and `payload`, padded to the minimum.
pub fn vnet_frame(dst: [u8; 6], src: [u8; 6], ethertype: [u8; 2], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(VNET_HDR_LEN + (HDR_LEN + payload.len()).max(MIN_LEN));
    f.resize(VNET_HDR_LEN, 0);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype);
    f.extend_from_slice(payload);
    if f.len() < VNET_HDR_LEN + MIN_LEN {
        f.resize(VNET_HDR_LEN + MIN_LEN, 0);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_pads() {
        let f = vnet_frame(BROADCAST, [2, 0, 0, 0, 0, 1], ETHERTYPE_ARP, &[7; 28]);
        assert_eq!(f.len(), VNET_HDR_LEN + MIN_LEN);
        let e = &f[VNET_HDR_LEN..];
        assert_eq!(ethertype(e), Some(ETHERTYPE_ARP));
        assert_eq!(&e[DST..DST + 6], &BROADCAST);
        assert_eq!(e[HDR_LEN], 7);
        assert_eq!(ethertype(&e[..13]), None);
    }
}
