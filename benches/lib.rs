//! Frame generators shared by the benches.

use vswitch::vnet::VNET_HDR_LEN;
use vswitch::Mac;

/// A vnet header (zeroed: no offload) followed by an Ethernet frame of
/// `len` bytes from `src` to `dst` (IPv4 ethertype, zero payload).
pub fn frame(dst: Mac, src: Mac, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; VNET_HDR_LEN + len.max(14)];
    b[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&dst.0);
    b[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&src.0);
    b[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&0x0800u16.to_be_bytes());
    b
}

/// MAC of host `h` behind port `p`.
pub fn host_mac(p: u32, h: u32) -> Mac {
    Mac([2, 0, (p >> 8) as u8, p as u8, (h >> 8) as u8, h as u8])
}
