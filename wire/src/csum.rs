//! Internet checksum arithmetic (RFC 1071) and incremental updates
//! (RFC 1624), for full checksums and for the partial (pseudo-header only)
//! checksums that offloaded frames carry.

#[inline]
fn add(a: u32, b: u32) -> u32 {
    let s = a + b;
    (s & 0xffff) + (s >> 16)
}

#[inline]
fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Ones' complement sum of `data` (not complemented).
pub fn sum(data: &[u8]) -> u32 {
    let mut s: u32 = 0;
    let mut c = data.chunks_exact(2);
    for w in &mut c {
        s += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    if let [b] = c.remainder() {
        s += (*b as u32) << 8;
    }
    fold(s) as u32
}

/// The checksum of `data` as it goes in a header field.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// A full checksum field after 16-bit word `old` became `new`:
/// HC' = ~(~HC + ~m + m').
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    !fold(add(add(!check as u32, !old as u32 & 0xffff), new as u32))
}

/// A full checksum field after a 32-bit value (an address) changed.
#[inline]
pub fn update32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let c = update16(
        check,
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    );
    update16(
        c,
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

/// A *partial* checksum field (CHECKSUM_PARTIAL: it holds the folded,
/// uncomplemented pseudo-header sum) after an address in the pseudo-header
/// changed: F' = F + ~m + m'.
#[inline]
pub fn partial_update32(field: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let mut f = field as u32;
    for i in [0, 2] {
        let o = u16::from_be_bytes([old[i], old[i + 1]]) as u32;
        let n = u16::from_be_bytes([new[i], new[i + 1]]) as u32;
        f = add(add(f, !o & 0xffff), n);
    }
    fold(f)
}

/// A partial checksum field after one 16-bit word of the pseudo-header
/// (part of an IPv6 address, say) changed from `old` to `new`.
#[inline]
pub fn partial_update16(field: u16, old: u16, new: u16) -> u16 {
    fold(add(add(field as u32, !old as u32 & 0xffff), new as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_matches_recompute() {
        let mut x: u32 = 7;
        for _ in 0..2000 {
            let mut d = [0u8; 40];
            for b in d.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            let c = checksum(&d);
            let old = [d[12], d[13], d[14], d[15]];
            let new = [(x >> 24) as u8, (x >> 16) as u8, (x >> 8) as u8, x as u8];
            d[12..16].copy_from_slice(&new);
            let want = checksum(&d);
            let got = update32(c, old, new);
            // 0x0000 and 0xffff are the same number in ones' complement
            assert!(got == want || (got == 0xffff && want == 0) || (got == 0 && want == 0xffff));
            // partial: the field holds the uncomplemented sum
            let part = !c;
            let p2 = partial_update32(part, old, new);
            assert!(p2 == !want || (p2 == 0xffff && !want == 0) || (p2 == 0 && !want == 0xffff));
        }
    }
}
