//! VXLAN (RFC 7348): the 8-byte header between the outer UDP header and
//! the inner Ethernet frame.
//!
//! ```text
//!  0               1               2               3
//! |R R R R I R R R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//!
//! The I flag says the VNI is valid; it must be set. The reserved bits are
//! sent as zero and ignored on receipt (as the RFC says), so extensions
//! that set them are not refused for that alone.

/// The header's size.
pub const HDR_LEN: usize = 8;
/// Offset of the flags byte.
pub const FLAGS: usize = 0;
/// Offset of the 24-bit VNI.
pub const VNI: usize = 4;
/// The I flag: the VNI is valid.
pub const FLAG_I: u8 = 0x08;
/// tapnet's own use of a reserved flag, between tapnet hosts only: the
/// inner frame's TCP/UDP checksum field holds the pseudo-header's sum
/// (the sender left the sum to the receiver, as a TAP's offload does; the
/// outer UDP checksum, or the seal's tag, covers the bytes on the wire).
pub const FLAG_PARTIAL: u8 = 0x02;
/// IANA's VXLAN port.
pub const PORT: u16 = 4789;
/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// Why a datagram is not a VXLAN frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the header plus an Ethernet header.
    Short,
    /// The I flag is not set.
    BadFlags,
}

/// The header for `vni` (only its low 24 bits are used).
pub fn emit(vni: u32) -> [u8; HDR_LEN] {
    let v = (vni & MAX_VNI).to_be_bytes();
    [FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// The VNI of a datagram (VXLAN header + inner Ethernet frame), checked:
/// long enough to hold a header and an Ethernet header, I flag set.
pub fn parse(d: &[u8]) -> Result<u32, Error> {
    if d.len() < HDR_LEN + crate::eth::HDR_LEN {
        return Err(Error::Short);
    }
    if d[FLAGS] & FLAG_I == 0 {
        return Err(Error::BadFlags);
    }
    Ok(u32::from_be_bytes([0, d[VNI], d[VNI + 1], d[VNI + 2]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut d = emit(4096).to_vec();
        d.extend_from_slice(&[0u8; 14]);
        assert_eq!(parse(&d), Ok(4096));
        d[7] = 0xff; // reserved: ignored
        d[1] = 0x80;
        assert_eq!(parse(&d), Ok(4096));
        let mut big = emit(MAX_VNI + 5).to_vec();
        big.extend_from_slice(&[0u8; 14]);
        assert_eq!(parse(&big), Ok(4));
    }

    #[test]
    fn bad_input() {
        assert_eq!(parse(&[]), Err(Error::Short));
        assert_eq!(parse(&emit(1)), Err(Error::Short));
        let mut d = vec![0u8; 22];
        assert_eq!(parse(&d), Err(Error::BadFlags));
        d[0] = 0xf7;
        assert_eq!(parse(&d), Err(Error::BadFlags));
    }
}
