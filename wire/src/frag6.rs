//! The IPv6 fragment header (RFC 8200 section 4.5), and splitting a packet
//! into fragments that fit a link. Stateless: reassembly keeps state and
//! lives with its user.

use crate::ipv6;

/// The header's length and its fields' offsets within it.
pub const LEN: usize = 8;
pub const NEXT_HEADER: usize = 0;
/// Offset in 8-byte units (13 bits), 2 reserved bits, the M flag.
pub const OFFSET_FLAGS: usize = 2;
pub const IDENT: usize = 4;
/// The next-header value that names it.
pub const PROTO: u8 = 44;

/// A checked view of a fragment header: built only when `b` holds all 8
/// bytes, so its accessors cannot panic.
#[derive(Debug, Clone, Copy)]
pub struct Fragment<'a>(&'a [u8]);

impl<'a> Fragment<'a> {
    pub fn new(b: &'a [u8]) -> Option<Fragment<'a>> {
        (b.len() >= LEN).then_some(Fragment(b))
    }
    /// The header after the fragmentable part's start (TCP, UDP, ...).
    pub fn next_header(&self) -> u8 {
        self.0[NEXT_HEADER]
    }
    /// Where this fragment's data goes in the datagram, in bytes.
    pub fn offset(&self) -> usize {
        (u16::from_be_bytes([self.0[OFFSET_FLAGS], self.0[OFFSET_FLAGS + 1]]) & 0xfff8) as usize
    }
    /// More fragments follow (the M flag).
    pub fn more(&self) -> bool {
        self.0[OFFSET_FLAGS + 1] & 1 != 0
    }
    pub fn ident(&self) -> u32 {
        u32::from_be_bytes([
            self.0[IDENT],
            self.0[IDENT + 1],
            self.0[IDENT + 2],
            self.0[IDENT + 3],
        ])
    }
}

/// Writes a fragment header into `b` (at least [`LEN`] bytes); `offset`
/// in bytes, a multiple of 8.
pub fn emit(b: &mut [u8], next: u8, offset: usize, more: bool, ident: u32) {
    b[NEXT_HEADER] = next;
    b[1] = 0;
    let of = (offset as u16 & 0xfff8) | more as u16;
    b[OFFSET_FLAGS..OFFSET_FLAGS + 2].copy_from_slice(&of.to_be_bytes());
    b[IDENT..IDENT + 4].copy_from_slice(&ident.to_be_bytes());
}

/// Splits `packet` (an IPv6 header directly followed by its payload; the
/// caller sees to it that no extension header must stay unfragmented)
/// into fragments whose IPv6 packets are at most `mtu` bytes, each passed
/// to `out` as IPv6 header + fragment header + data. Err (nothing
/// passed) if `packet` is not IPv6 or is shorter than its payload length
/// says, or `mtu` leaves no room for 8 bytes of data.
pub fn fragment(
    packet: &[u8],
    mtu: usize,
    ident: u32,
    mut out: impl FnMut(&[u8]),
) -> Result<(), &'static str> {
    let h = ipv6::Header::new(packet).ok_or("not an IPv6 packet")?;
    let end = ipv6::HDR_LEN + h.payload_len();
    if end > packet.len() {
        return Err("the payload length is past the packet");
    }
    // every fragment's data but the last is a multiple of 8 bytes
    let room = mtu.saturating_sub(ipv6::HDR_LEN + LEN) & !7;
    if room == 0 {
        return Err("no room for a fragment in that MTU");
    }
    let data = &packet[ipv6::HDR_LEN..end];
    let mut b = Vec::with_capacity(ipv6::HDR_LEN + LEN + room);
    let mut at = 0;
    while at < data.len() || at == 0 {
        let n = room.min(data.len() - at);
        let more = at + n < data.len();
        b.clear();
        b.extend_from_slice(&packet[..ipv6::HDR_LEN]);
        b[ipv6::NEXT_HEADER] = PROTO;
        b[ipv6::PAYLOAD_LEN..ipv6::PAYLOAD_LEN + 2]
            .copy_from_slice(&((LEN + n) as u16).to_be_bytes());
        let mut fh = [0u8; LEN];
        emit(&mut fh, h.next_header(), at, more, ident);
        b.extend_from_slice(&fh);
        b.extend_from_slice(&data[at..at + n]);
        out(&b);
        at += n;
        if !more {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_fit_and_put_back_together() {
        let (s, d) = ("fd00::2".parse().unwrap(), "2001:db8::1".parse().unwrap());
        let payload: Vec<u8> = (0..3001u32).map(|i| (i * 13) as u8).collect();
        let mut p = vec![0u8; ipv6::HDR_LEN];
        ipv6::emit(&mut p, payload.len() as u16, ipv6::PROTO_UDP, 64, s, d);
        p.extend_from_slice(&payload);
        let mut frags = Vec::new();
        fragment(&p, 1280, 0x0102_0304, |f| frags.push(f.to_vec())).unwrap();
        assert_eq!(frags.len(), 3);
        let mut back = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            assert!(f.len() <= 1280);
            let h = ipv6::Header::new(f).unwrap();
            assert_eq!(h.next_header(), PROTO);
            assert_eq!(h.payload_len(), f.len() - ipv6::HDR_LEN);
            let fh = Fragment::new(&f[ipv6::HDR_LEN..]).unwrap();
            assert_eq!(fh.next_header(), ipv6::PROTO_UDP);
            assert_eq!(fh.ident(), 0x0102_0304);
            assert_eq!(fh.offset(), back.len());
            assert_eq!(fh.more(), i < 2);
            back.extend_from_slice(&f[ipv6::HDR_LEN + LEN..]);
        }
        assert_eq!(back, payload);
        // a packet that fits still becomes one (atomic) fragment; bad input
        let mut e = vec![0u8; ipv6::HDR_LEN];
        ipv6::emit(&mut e, 0, ipv6::PROTO_UDP, 64, s, d);
        let mut one = 0;
        fragment(&e, 1280, 1, |_| one += 1).unwrap();
        assert_eq!(one, 1);
        assert!(fragment(&p[..100], 1280, 1, |_| ()).is_err());
        assert!(fragment(&p, 48, 1, |_| ()).is_err());
        assert!(fragment(&[0u8; 10], 1280, 1, |_| ()).is_err());
    }
}
