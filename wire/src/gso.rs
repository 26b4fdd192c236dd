//! Software segmentation and checksum completion for offloaded frames.
//!
//! A TAP opened with vnet headers hands over what the container's kernel
//! left to "hardware": TCP super-frames up to 64 KiB (`GSO_TCPV4`), UDP
//! super-datagrams (`GSO_UDP_L4`), their IPv6 kind (`GSO_TCPV6`, IPv6
//! without extension headers) and checksums that hold only the
//! pseudo-header sum (`NEEDS_CSUM`). Between TAPs they pass untouched; on
//! a wire that has no such offload (a VXLAN tunnel) each must become
//! MTU-sized frames with complete checksums first: what a NIC's TSO would
//! have done. Each segment gets its own IPv4 header (total length, an
//! identification one higher than the previous, header checksum) or IPv6
//! header (payload length) and L4
//! header (TCP: sequence number advanced by the payload before it, FIN
//! and PSH only on the last, CWR only on the first; UDP: its length), and
//! a full L4 checksum.
//!
//! Segments are appended to one buffer, each after a caller-given prefix
//! (the VXLAN header), so a batch can go to the kernel in one send.

use crate::csum;
use crate::eth;
use crate::ipv4;
use crate::ipv6;
use crate::tcp;
use crate::vnet::{VnetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};

/// The most segments one frame may become: a 64 KiB frame at the smallest
/// sensible MSS; a tiny `gso_size` (a container asking for thousands of
/// datagrams from one frame) is refused instead.
pub const MAX_SEGS: usize = 1024;

/// Why a frame cannot be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Headers missing, inconsistent or cut short.
    Malformed,
    /// An offload this code does not do (UFO fragmentation, IPv6 with
    /// extension headers).
    Unsupported,
}

/// UDP header length and the offset of its length and checksum fields.
const UDP_HDR_LEN: usize = 8;
const UDP_LEN: usize = 4;
const UDP_CHECKSUM: usize = 6;

/// The headers of an IPv4 or IPv6 TCP/UDP frame, checked to lie within it.
struct L4v4 {
    /// Offset of the L4 header (Ethernet + IP header).
    l4: usize,
    /// Offset of the payload (after the L4 header).
    payload: usize,
    /// End of the IP packet (Ethernet header + total length).
    end: usize,
    /// IPv6 (else IPv4).
    v6: bool,
}

impl L4v4 {
    /// The source and destination address bytes in `f`.
    fn addrs<'a>(&self, f: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        const L3: usize = eth::HDR_LEN;
        if self.v6 {
            (
                &f[L3 + ipv6::SRC..L3 + ipv6::SRC + 16],
                &f[L3 + ipv6::DST..L3 + ipv6::DST + 16],
            )
        } else {
            (
                &f[L3 + ipv4::SRC..L3 + ipv4::SRC + 4],
                &f[L3 + ipv4::DST..L3 + ipv4::DST + 4],
            )
        }
    }
}

fn l4v4(f: &[u8], proto: u8) -> Result<L4v4, Error> {
    const L3: usize = eth::HDR_LEN;
    let (l4, end, v6) = if eth::ethertype(f) == Some(eth::ETHERTYPE_IPV6) {
        let h = ipv6::Header::new(f.get(L3..).ok_or(Error::Malformed)?).ok_or(Error::Malformed)?;
        let end = L3 + ipv6::HDR_LEN + h.payload_len();
        if end > f.len() {
            return Err(Error::Malformed);
        }
        if h.next_header() != proto {
            // an extension header, or another protocol
            return Err(Error::Unsupported);
        }
        (L3 + ipv6::HDR_LEN, end, true)
    } else {
        if f.len() < L3 + ipv4::MIN_HDR_LEN || eth::ethertype(f) != Some(eth::ETHERTYPE_IPV4) {
            return Err(Error::Malformed);
        }
        let ip = &f[L3..];
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        let total = u16::from_be_bytes([ip[ipv4::TOTAL_LEN], ip[ipv4::TOTAL_LEN + 1]]) as usize;
        if ip[0] >> 4 != 4 || ihl < ipv4::MIN_HDR_LEN || total < ihl || L3 + total > f.len() {
            return Err(Error::Malformed);
        }
        if ip[ipv4::PROTOCOL] != proto {
            return Err(Error::Malformed);
        }
        (L3 + ihl, L3 + total, false)
    };
    let l4_len = match proto {
        ipv4::PROTO_TCP if l4 + tcp::MIN_HDR_LEN <= end => {
            ((f[l4 + tcp::DATA_OFF] >> 4) as usize) * 4
        }
        ipv4::PROTO_TCP => return Err(Error::Malformed),
        _ => UDP_HDR_LEN,
    };
    let min = if proto == ipv4::PROTO_TCP {
        tcp::MIN_HDR_LEN
    } else {
        UDP_HDR_LEN
    };
    if l4_len < min || l4 + l4_len > end {
        return Err(Error::Malformed);
    }
    Ok(L4v4 {
        l4,
        payload: l4 + l4_len,
        end,
        v6,
    })
}

/// The TCP/UDP checksum over IPv4 or IPv6 (4- or 16-byte addresses) from
/// `src` to `dst` of an L4 header (checksum field zero, even length)
/// followed by `data`.
fn l4_checksum(src: &[u8], dst: &[u8], proto: u8, hdr: &[u8], data: &[u8]) -> u16 {
    let s = pseudo_sum(src, dst, proto, hdr.len() + data.len()) as u32
        + csum::sum(hdr)
        + csum::sum(data);
    let mut s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Appends `prefix` and the frames that `f` (an Ethernet frame, `h` its
/// vnet header) stands for to `out`, pushing each one's length (prefix
/// included) to `lens`: the frame itself with its checksum completed, or
/// its segments of at most `mtu` bytes of IP packet. On error nothing is
/// appended.
///
/// With `partial`, TCP/UDP checksums are left partial (the field holds
/// the pseudo-header's sum, as an offloading kernel leaves it) instead of
/// computed, for a receiver that completes them or does not need them;
/// returns whether it did (false for a frame whose checksum was
/// complete already).
pub fn segment(
    h: &VnetHdr,
    f: &[u8],
    mtu: usize,
    prefix: &[u8],
    partial: bool,
    out: &mut Vec<u8>,
    lens: &mut Vec<usize>,
) -> Result<bool, Error> {
    let start = (out.len(), lens.len());
    let r = each_segment(h, f, mtu, prefix, partial, |hdr, data| {
        out.extend_from_slice(hdr);
        out.extend_from_slice(&f[data.clone()]);
        lens.push(hdr.len() + data.len());
    });
    if r.is_err() {
        out.truncate(start.0);
        lens.truncate(start.1);
    }
    r
}

/// One segment of [`segment_parts`]: its headers (prefix included) in the
/// caller's header buffer, and its payload in the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub hdr: std::ops::Range<usize>,
    pub data: std::ops::Range<usize>,
}

/// [`segment`] without copying payloads: each segment's headers (fixed
/// up, checksum over headers and payload) go to `hdrs`, and `parts` says
/// where they and the payload (a range of `f`) are, for a gathering send.
/// A frame that needs no segmenting is all header. On error nothing is
/// appended.
pub fn segment_parts(
    h: &VnetHdr,
    f: &[u8],
    mtu: usize,
    prefix: &[u8],
    partial: bool,
    hdrs: &mut Vec<u8>,
    parts: &mut Vec<Part>,
) -> Result<bool, Error> {
    let start = (hdrs.len(), parts.len());
    let r = each_segment(h, f, mtu, prefix, partial, |hdr, data| {
        let s = hdrs.len();
        hdrs.extend_from_slice(hdr);
        parts.push(Part {
            hdr: s..hdrs.len(),
            data,
        });
    });
    if r.is_err() {
        hdrs.truncate(start.0);
        parts.truncate(start.1);
    }
    r
}

/// Calls `emit(headers, payload range)` for each frame `f` stands for;
/// whether the checksums were left partial.
fn each_segment(
    h: &VnetHdr,
    f: &[u8],
    mtu: usize,
    prefix: &[u8],
    partial: bool,
    emit: impl FnMut(&[u8], std::ops::Range<usize>),
) -> Result<bool, Error> {
    let size = h.gso_size as usize;
    match h.gso_type & !GSO_ECN {
        GSO_NONE => whole(h, f, prefix, partial, emit),
        GSO_TCPV4 if eth::ethertype(f) == Some(eth::ETHERTYPE_IPV4) => {
            split(f, ipv4::PROTO_TCP, size, mtu, prefix, partial, emit)
        }
        GSO_TCPV6 if eth::ethertype(f) == Some(eth::ETHERTYPE_IPV6) => {
            split(f, ipv4::PROTO_TCP, size, mtu, prefix, partial, emit)
        }
        GSO_TCPV4 | GSO_TCPV6 => Err(Error::Malformed),
        GSO_UDP_L4 => split(f, ipv4::PROTO_UDP, size, mtu, prefix, partial, emit),
        _ => Err(Error::Unsupported),
    }
}

/// One frame, its partial checksum (if any) completed: the field holds
/// the pseudo-header sum, so the sum from `csum_start` to the end of the
/// packet, complemented, is the checksum. (Copied whole: such frames are
/// small.)
fn whole(
    h: &VnetHdr,
    f: &[u8],
    prefix: &[u8],
    partial: bool,
    mut emit: impl FnMut(&[u8], std::ops::Range<usize>),
) -> Result<bool, Error> {
    let mut out = Vec::with_capacity(prefix.len() + f.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(f);
    // a partial TCP/UDP checksum over IPv4 at the usual place may stay so
    let standard = l4v4(f, ipv4::PROTO_TCP)
        .map(|l| (l.l4, tcp::CHECKSUM))
        .or_else(|_| l4v4(f, ipv4::PROTO_UDP).map(|l| (l.l4, UDP_CHECKSUM)))
        .ok();
    let keep = partial
        && h.flags & F_NEEDS_CSUM != 0
        && standard == Some((h.csum_start as usize, h.csum_offset as usize));
    if h.flags & F_NEEDS_CSUM != 0 && !keep {
        let cs = h.csum_start as usize;
        let field = cs + h.csum_offset as usize;
        // the packet's end (no trailing bytes summed), else the frame's
        let end = l4v4_end(f).unwrap_or(f.len());
        if field + 2 > end || cs > end {
            return Err(Error::Malformed);
        }
        let frame = &mut out[prefix.len()..];
        let mut c = csum::checksum(&frame[cs..end]);
        if c == 0 && ipv4_proto(f) == Some(ipv4::PROTO_UDP) {
            c = 0xffff; // UDP: 0 means "no checksum"
        }
        frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    }
    emit(&out, 0..0);
    Ok(keep)
}

/// The transport protocol of an IPv4 frame, or of an IPv6 one without
/// extension headers.
fn ipv4_proto(f: &[u8]) -> Option<u8> {
    if eth::ethertype(f) == Some(eth::ETHERTYPE_IPV6) {
        return f.get(eth::HDR_LEN + ipv6::NEXT_HEADER).copied();
    }
    (eth::ethertype(f) == Some(eth::ETHERTYPE_IPV4) && f.len() > eth::HDR_LEN + ipv4::PROTOCOL)
        .then(|| f[eth::HDR_LEN + ipv4::PROTOCOL])
}

fn l4v4_end(f: &[u8]) -> Option<usize> {
    if eth::ethertype(f) == Some(eth::ETHERTYPE_IPV6) {
        let h = ipv6::Header::new(f.get(eth::HDR_LEN..)?)?;
        let end = eth::HDR_LEN + ipv6::HDR_LEN + h.payload_len();
        return (end <= f.len()).then_some(end);
    }
    if eth::ethertype(f) != Some(eth::ETHERTYPE_IPV4) || f.len() < eth::HDR_LEN + 4 {
        return None;
    }
    let total = u16::from_be_bytes([
        f[eth::HDR_LEN + ipv4::TOTAL_LEN],
        f[eth::HDR_LEN + ipv4::TOTAL_LEN + 1],
    ]) as usize;
    (eth::HDR_LEN + total <= f.len()).then_some(eth::HDR_LEN + total)
}

/// The largest headers a segment can have: a prefix (VXLAN's 8 bytes, or
/// a sealed header) and Ethernet, IPv4 and TCP with options.
const MAX_HDRS: usize = 64 + eth::HDR_LEN + 60 + 60;

/// TSO/USO in software: payload chunks of `size` bytes (no more than the
/// MTU allows), each behind a copy of the headers, fixed up.
fn split(
    f: &[u8],
    proto: u8,
    size: usize,
    mtu: usize,
    prefix: &[u8],
    partial: bool,
    mut emit: impl FnMut(&[u8], std::ops::Range<usize>),
) -> Result<bool, Error> {
    let hd = l4v4(f, proto)?;
    let L4v4 {
        l4,
        payload,
        end,
        v6,
    } = hd;
    let hdrs = payload - eth::HDR_LEN; // IP + L4 headers
    let room = mtu
        .checked_sub(hdrs)
        .filter(|r| *r > 0)
        .ok_or(Error::Malformed)?;
    let size = if size == 0 { room } else { size.min(room) };
    let data_len = end - payload;
    let n = data_len.div_ceil(size).max(1);
    if n > MAX_SEGS || prefix.len() + payload > MAX_HDRS {
        return Err(Error::Malformed);
    }
    let ip_id = u16::from_be_bytes([f[eth::HDR_LEN + 4], f[eth::HDR_LEN + 5]]);
    let (src, dst) = hd.addrs(f);
    let seq0 = (proto == ipv4::PROTO_TCP).then(|| {
        u32::from_be_bytes([
            f[l4 + tcp::SEQ],
            f[l4 + tcp::SEQ + 1],
            f[l4 + tcp::SEQ + 2],
            f[l4 + tcp::SEQ + 3],
        ])
    });
    let mut hb = [0u8; MAX_HDRS];
    let p = prefix.len();
    hb[..p].copy_from_slice(prefix);
    for i in 0..n {
        let chunk = payload + (i * size).min(data_len)..payload + ((i + 1) * size).min(data_len);
        let s = &mut hb[p..p + payload];
        s.copy_from_slice(&f[..payload]);
        let ip = eth::HDR_LEN;
        let total = (hdrs + chunk.len()) as u16;
        if v6 {
            // IPv6: the payload length (no identification, no checksum)
            let plen = total - ipv6::HDR_LEN as u16;
            s[ip + ipv6::PAYLOAD_LEN..ip + ipv6::PAYLOAD_LEN + 2]
                .copy_from_slice(&plen.to_be_bytes());
        } else {
            // IPv4: length, identification, header checksum
            s[ip + ipv4::TOTAL_LEN..ip + ipv4::TOTAL_LEN + 2].copy_from_slice(&total.to_be_bytes());
            s[ip + 4..ip + 6].copy_from_slice(&ip_id.wrapping_add(i as u16).to_be_bytes());
            s[ip + ipv4::CHECKSUM..ip + ipv4::CHECKSUM + 2].fill(0);
            let c = csum::checksum(&s[ip..l4]);
            s[ip + ipv4::CHECKSUM..ip + ipv4::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
        }
        let field = match seq0 {
            Some(seq0) => {
                let seq = seq0.wrapping_add((i * size) as u32);
                s[l4 + tcp::SEQ..l4 + tcp::SEQ + 4].copy_from_slice(&seq.to_be_bytes());
                let mut flags = s[l4 + tcp::FLAGS];
                if i + 1 < n {
                    flags &= !(tcp::FIN | TCP_PSH);
                }
                if i > 0 {
                    flags &= !TCP_CWR;
                }
                s[l4 + tcp::FLAGS] = flags;
                l4 + tcp::CHECKSUM
            }
            None => {
                let len = (payload - l4 + chunk.len()) as u16;
                s[l4 + UDP_LEN..l4 + UDP_LEN + 2].copy_from_slice(&len.to_be_bytes());
                l4 + UDP_CHECKSUM
            }
        };
        s[field..field + 2].fill(0);
        let c = if partial {
            // the pseudo-header's sum only: no pass over the payload
            let l4_len = payload - l4 + chunk.len();
            pseudo_sum(src, dst, proto, l4_len)
        } else {
            match l4_checksum(src, dst, proto, &s[l4..], &f[chunk.clone()]) {
                0 if proto == ipv4::PROTO_UDP => 0xffff,
                c => c,
            }
        };
        s[field..field + 2].copy_from_slice(&c.to_be_bytes());
        emit(&hb[..p + payload], chunk);
    }
    Ok(partial)
}

/// The folded (uncomplemented) sum of the IPv4 or IPv6 pseudo-header
/// (4- or 16-byte addresses): what a partial checksum field holds. (The
/// two differ in layout, not in their sum: addresses, protocol, length.)
pub fn pseudo_sum(src: &[u8], dst: &[u8], proto: u8, l4_len: usize) -> u16 {
    let mut s = csum::sum(src) + csum::sum(dst) + proto as u32;
    s += (l4_len as u32 >> 16) + (l4_len as u32 & 0xffff);
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet/IPv4/TCP frame with `len` payload bytes (a pattern), a
    /// partial checksum as the kernel leaves it, and flags PSH|ACK|FIN|CWR.
    fn tcp_frame(len: usize) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&eth::ETHERTYPE_IPV4);
        let ip = 14;
        f[ip] = 0x45;
        f[ip + 2..ip + 4].copy_from_slice(&((40 + len) as u16).to_be_bytes());
        f[ip + 4..ip + 6].copy_from_slice(&0xfffe_u16.to_be_bytes());
        f[ip + 8] = 64;
        f[ip + 9] = ipv4::PROTO_TCP;
        f[ip + 12..ip + 16].copy_from_slice(&[10, 0, 0, 2]);
        f[ip + 16..ip + 20].copy_from_slice(&[10, 0, 0, 3]);
        let t = 34;
        f[t + 4..t + 8].copy_from_slice(&0xffff_ff00_u32.to_be_bytes());
        f[t + 12] = 5 << 4;
        f[t + 13] = tcp::FIN | TCP_PSH | tcp::ACK_FLAG | TCP_CWR;
        f.extend((0..len).map(|i| (i * 7) as u8));
        f
    }

    /// The vnet header of a TCP/IPv4 super-frame with MSS `mss`.
    fn tso(mss: u16) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: mss,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    fn valid_ip(s: &[u8]) -> bool {
        csum::checksum(&s[14..34]) == 0
    }

    fn valid_l4(s: &[u8], proto: u8) -> bool {
        let mut p = [0u8; 12];
        p[..4].copy_from_slice(&s[26..30]);
        p[4..8].copy_from_slice(&s[30..34]);
        p[9] = proto;
        p[10..].copy_from_slice(&((s.len() - 34) as u16).to_be_bytes());
        let t = csum::sum(&p) + csum::sum(&s[34..]);
        let t = (t & 0xffff) + (t >> 16);
        ((t & 0xffff) + (t >> 16)) as u16 == 0xffff
    }

    #[test]
    fn tso_segments_carry_the_stream() {
        let f = tcp_frame(5000);
        let h = tso(1400);
        let (mut out, mut lens) = (Vec::new(), Vec::new());
        segment(&h, &f, 1450, &[0xaa; 8], false, &mut out, &mut lens).unwrap();
        assert_eq!(
            lens,
            vec![8 + 54 + 1400, 8 + 54 + 1400, 8 + 54 + 1400, 8 + 54 + 800]
        );
        let mut data = Vec::new();
        let mut off = 0;
        for (i, l) in lens.iter().enumerate() {
            let s = &out[off + 8..off + l];
            assert_eq!(&out[off..off + 8], &[0xaa; 8]);
            assert!(valid_ip(s) && valid_l4(s, ipv4::PROTO_TCP), "segment {i}");
            assert_eq!(
                u16::from_be_bytes([s[18], s[19]]),
                0xfffe_u16.wrapping_add(i as u16)
            );
            let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
            assert_eq!(seq, 0xffff_ff00_u32.wrapping_add(data.len() as u32));
            let last = i + 1 == lens.len();
            assert_eq!(s[47] & (tcp::FIN | TCP_PSH) != 0, last);
            assert_eq!(s[47] & TCP_CWR != 0, i == 0);
            assert!(s[47] & tcp::ACK_FLAG != 0);
            data.extend_from_slice(&s[54..]);
            off += l;
        }
        assert_eq!(data, f[54..]);
    }

    #[test]
    fn parts_match_the_copied_segments() {
        let f = tcp_frame(5000);
        let h = tso(1400);
        let (mut out, mut lens) = (Vec::new(), Vec::new());
        segment(&h, &f, 1450, &[0xaa; 8], false, &mut out, &mut lens).unwrap();
        let (mut hdrs, mut parts) = (Vec::new(), Vec::new());
        segment_parts(&h, &f, 1450, &[0xaa; 8], false, &mut hdrs, &mut parts).unwrap();
        let mut joined = Vec::new();
        for p in &parts {
            joined.extend_from_slice(&hdrs[p.hdr.clone()]);
            joined.extend_from_slice(&f[p.data.clone()]);
        }
        assert_eq!(joined, out);
        assert_eq!(parts.len(), lens.len());
    }

    #[test]
    fn partial_mode_leaves_the_pseudo_sum() {
        let f = tcp_frame(3000);
        let h = tso(1400);
        let (mut out, mut lens) = (Vec::new(), Vec::new());
        assert_eq!(
            segment(&h, &f, 1500, &[], true, &mut out, &mut lens),
            Ok(true)
        );
        let mut off = 0;
        for l in lens {
            let s = &mut out[off..off + l];
            // what the receiver's kernel does with NEEDS_CSUM: the sum
            // from the L4 header on, the field included, complemented
            let c = csum::checksum(&s[34..]);
            s[50..52].copy_from_slice(&c.to_be_bytes());
            assert!(valid_l4(s, ipv4::PROTO_TCP));
            off += l;
        }
        // a frame whose checksum is complete stays complete
        let plain = VnetHdr::default();
        let (mut o, mut l) = (Vec::new(), Vec::new());
        assert_eq!(
            segment(&plain, &f[..200], 1500, &[], true, &mut o, &mut l),
            Ok(false)
        );
    }

    #[test]
    fn partial_checksum_completed() {
        let mut f = tcp_frame(333);
        // the pseudo-header sum, as the kernel leaves it
        let mut p = [0u8; 12];
        p[..8].copy_from_slice(&f[26..34]);
        p[9] = 6;
        p[10..].copy_from_slice(&(353u16).to_be_bytes());
        let ps = (csum::sum(&p) as u16).to_be_bytes();
        f[50..52].copy_from_slice(&ps);
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        };
        let (mut out, mut lens) = (Vec::new(), Vec::new());
        segment(&h, &f, 1500, &[], false, &mut out, &mut lens).unwrap();
        assert_eq!(lens, vec![f.len()]);
        assert!(valid_l4(&out, ipv4::PROTO_TCP));
        // no offload: copied as it is
        let (mut o2, mut l2) = (Vec::new(), Vec::new());
        segment(&VnetHdr::default(), &f, 1500, &[1], false, &mut o2, &mut l2).unwrap();
        assert_eq!(&o2[1..], &f[..]);
    }

    #[test]
    fn uso_datagrams() {
        let mut f = tcp_frame(3000);
        f[23] = ipv4::PROTO_UDP;
        // a UDP header instead of TCP's: 8 bytes, then the payload
        f.drain(42..54);
        f[16..18].copy_from_slice(&((28 + 3000) as u16).to_be_bytes());
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: 42,
            gso_size: 1000,
            csum_start: 34,
            csum_offset: 6,
        };
        let (mut out, mut lens) = (Vec::new(), Vec::new());
        segment(&h, &f, 1500, &[], false, &mut out, &mut lens).unwrap();
        assert_eq!(lens, vec![1042; 3]);
        for i in 0..3 {
            let s = &out[i * 1042..(i + 1) * 1042];
            assert!(valid_ip(s) && valid_l4(s, ipv4::PROTO_UDP));
            assert_eq!(u16::from_be_bytes([s[38], s[39]]), 1008);
        }
    }

    #[test]
    fn malformed_never_panics() {
        let good = tcp_frame(4000);
        let h = tso(1400);
        let (mut out, mut lens) = (Vec::new(), Vec::new());
        for cut in 0..good.len().min(200) {
            let _ = segment(&h, &good[..cut], 1450, &[0; 8], true, &mut out, &mut lens);
        }
        let mut bad = good.clone();
        bad[14] = 0x44; // IHL below the minimum
        assert_eq!(
            segment(&h, &bad, 1450, &[], false, &mut out, &mut lens),
            Err(Error::Malformed)
        );
        let mut bad = good.clone();
        bad[46] = 0xf0; // data offset 60
        bad[16..18].copy_from_slice(&60u16.to_be_bytes());
        assert_eq!(
            segment(&h, &bad, 1450, &[], false, &mut out, &mut lens),
            Err(Error::Malformed)
        );
        // TCPV6 offload on an IPv4 frame: inconsistent
        let v6 = VnetHdr { gso_type: 4, ..h };
        assert_eq!(
            segment(&v6, &good, 1450, &[], false, &mut out, &mut lens),
            Err(Error::Malformed)
        );
        // a tiny MTU
        assert_eq!(
            segment(&h, &good, 30, &[], false, &mut out, &mut lens),
            Err(Error::Malformed)
        );
        let nc = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 60000,
            csum_offset: 16,
            ..Default::default()
        };
        assert_eq!(
            segment(&nc, &good, 1500, &[], false, &mut out, &mut lens),
            Err(Error::Malformed)
        );
        let _ = (out, lens);
    }

    /// An Ethernet/IPv6/TCP frame with `len` payload bytes, as
    /// [`tcp_frame`] for IPv4.
    fn tcp6_frame(len: usize) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 20];
        f[12..14].copy_from_slice(&eth::ETHERTYPE_IPV6);
        let src: std::net::Ipv6Addr = "fd00::2".parse().unwrap();
        let dst: std::net::Ipv6Addr = "fd00::3".parse().unwrap();
        ipv6::emit(
            &mut f[14..54],
            (20 + len) as u16,
            ipv4::PROTO_TCP,
            64,
            src,
            dst,
        );
        let t = 54;
        f[t + 4..t + 8].copy_from_slice(&0xffff_ff00_u32.to_be_bytes());
        f[t + 12] = 5 << 4;
        f[t + 13] = tcp::FIN | TCP_PSH | tcp::ACK_FLAG;
        f.extend((0..len).map(|i| (i * 7) as u8));
        f
    }

    #[test]
    fn ipv6_tcp_is_segmented_with_right_checksums() {
        let f = tcp6_frame(5000);
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 74,
            gso_size: 1380,
            csum_start: 54,
            csum_offset: 16,
        };
        for partial in [false, true] {
            let (mut out, mut lens) = (Vec::new(), Vec::new());
            segment(&h, &f, 1450, &[9; 8], partial, &mut out, &mut lens).unwrap();
            assert_eq!(lens.len(), 4, "5000 bytes at MSS 1380");
            let mut off = 0;
            let mut seq = 0xffff_ff00_u32;
            let mut got = Vec::new();
            for (i, l) in lens.iter().enumerate() {
                let s = &out[off + 8..off + l];
                off += l;
                let hdr = ipv6::Header::new(&s[14..]).unwrap();
                assert_eq!(hdr.payload_len(), s.len() - 54, "segment {i} length");
                assert!(s.len() - 14 <= 1450);
                let tcp_seg = &s[54..];
                assert_eq!(
                    u32::from_be_bytes(tcp_seg[4..8].try_into().unwrap()),
                    seq,
                    "sequence number of segment {i}"
                );
                seq = seq.wrapping_add((tcp_seg.len() - 20) as u32);
                let last = i + 1 == lens.len();
                assert_eq!(tcp_seg[13] & tcp::FIN != 0, last, "FIN only on the last");
                if partial {
                    let want =
                        pseudo_sum(&s[14 + 8..14 + 24], &s[14 + 24..14 + 40], 6, tcp_seg.len());
                    assert_eq!(u16::from_be_bytes([tcp_seg[16], tcp_seg[17]]), want);
                } else {
                    assert_eq!(
                        ipv6::upper_checksum(hdr.src(), hdr.dst(), 6, tcp_seg),
                        0,
                        "checksum of segment {i}"
                    );
                }
                got.extend_from_slice(&tcp_seg[20..]);
            }
            assert_eq!(got, f[74..], "payload in order");
        }
        // an extension header: not done here
        let mut x = f.clone();
        x[14 + ipv6::NEXT_HEADER] = 0;
        let (mut out, mut lens) = (Vec::new(), Vec::new());
        assert_eq!(
            segment(&h, &x, 1450, &[], false, &mut out, &mut lens),
            Err(Error::Unsupported)
        );
        // a small IPv6 frame's partial checksum completed
        let small = tcp6_frame(100);
        let mut sf = small.clone();
        let ps = pseudo_sum(&small[22..38], &small[38..54], 6, 120);
        sf[54 + 16..54 + 18].copy_from_slice(&ps.to_be_bytes());
        let hs = VnetHdr {
            gso_type: GSO_NONE,
            gso_size: 0,
            ..h
        };
        let (mut out, mut lens) = (Vec::new(), Vec::new());
        assert!(!segment(&hs, &sf, 1450, &[], false, &mut out, &mut lens).unwrap());
        let hdr = ipv6::Header::new(&out[14..]).unwrap();
        assert_eq!(ipv6::upper_checksum(hdr.src(), hdr.dst(), 6, &out[54..]), 0);
        for cut in 0..f.len().min(120) {
            let _ = segment(&h, &f[..cut], 1450, &[], false, &mut out, &mut lens);
        }
    }
}
