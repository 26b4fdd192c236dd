//! The `virtio_net_hdr` that precedes every frame on a TAP opened with
//! `IFF_VNET_HDR` (see `include/uapi/linux/virtio_net.h`).
//!
//! Between TAP ports the header is forwarded untouched; the switch only
//! checks that it is self-consistent so that a bad one is dropped and
//! counted here instead of being rejected (or worse) by the kernel.

/// Size of the legacy header (no `num_buffers`), the TAP default.
pub const VNET_HDR_LEN: usize = 10;

pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;
pub const F_RSC_INFO: u8 = 4;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

/// A parsed view of the header (little-endian fields, as TAP uses by default
/// on little-endian hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    #[inline]
    pub fn parse(b: &[u8]) -> VnetHdr {
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_le_bytes([b[2], b[3]]),
            gso_size: u16::from_le_bytes([b[4], b[5]]),
            csum_start: u16::from_le_bytes([b[6], b[7]]),
            csum_offset: u16::from_le_bytes([b[8], b[9]]),
        }
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    #[inline]
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    /// Checks the header against the length of the Ethernet frame after it.
    #[inline]
    pub fn is_valid(&self, frame_len: usize) -> bool {
        if self.flags & !(F_NEEDS_CSUM | F_DATA_VALID | F_RSC_INFO) != 0 {
            return false;
        }
        if self.flags & F_NEEDS_CSUM != 0
            && self.csum_start as usize + self.csum_offset as usize + 2 > frame_len
        {
            return false;
        }
        match self.gso_type & !GSO_ECN {
            GSO_NONE => self.gso_type & GSO_ECN == 0,
            GSO_TCPV4 | GSO_TCPV6 | GSO_UDP | GSO_UDP_L4 => {
                self.gso_size != 0 && (self.hdr_len as usize) <= frame_len
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_validate() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut b = [0u8; 10];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), h);
        assert!(h.is_valid(60000));
        assert!(!h.is_valid(40)); // csum beyond the frame
        assert!(!VnetHdr { gso_type: 9, ..h }.is_valid(60000));
        assert!(!VnetHdr { gso_size: 0, ..h }.is_valid(60000));
        assert!(!VnetHdr { flags: 0x40, ..h }.is_valid(60000));
        assert!(VnetHdr::default().is_valid(14));
        assert!(!VnetHdr {
            gso_type: GSO_ECN,
            ..Default::default()
        }
        .is_valid(100));
    }
}
