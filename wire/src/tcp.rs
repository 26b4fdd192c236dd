//! TCP header offsets and flags (RFC 9293), relative to the TCP header.

pub const SRC_PORT: usize = 0;
pub const DST_PORT: usize = 2;
pub const SEQ: usize = 4;
pub const ACK: usize = 8;
/// Data offset (high nibble, in 32-bit words).
pub const DATA_OFF: usize = 12;
pub const FLAGS: usize = 13;
pub const CHECKSUM: usize = 16;
pub const MIN_HDR_LEN: usize = 20;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK_FLAG: u8 = 0x10;

/// A connection's first segment: SYN without ACK.
#[inline]
pub fn is_syn_only(flags: u8) -> bool {
    flags & (SYN | ACK_FLAG) == SYN
}
