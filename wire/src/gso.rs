//! Software segmentation and checksum completion for offloaded frames.
//!
//! A TAP opened with vnet headers hands over what the container's kernel
//! left to "hardware": TCP super-frames up to 64 KiB (`GSO_TCPV4`), UDP
//! super-datagrams (`GSO_UDP_L4`) and checksums that hold only the
//! pseudo-header sum (`NEEDS_CSUM`). Between TAPs they pass untouched; on
//! a wire that has no such offload (a VXLAN tunnel) each must become
//! MTU-sized frames with complete checksums first: what a NIC's TSO would
//! have done. Each segment gets its own IPv4 header (total length, an
//! identification one higher than the previous, header checksum) and L4
//! header (TCP: sequence number advanced by the payload before it, FIN
//! and PSH only on the last, CWR only on the first; UDP: its length), and
//! a full L4 checksum.
//!
//! Segments are appended to one buffer, each after a caller-given prefix
//! (the VXLAN header), so a batch can go to the kernel in one send.

use crate::csum;
use crate::eth;
use crate::ipv4;
use crate::tcp;
use crate::vnet::{VnetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_UDP_L4};

/// The most segments one frame may become: a 64 KiB frame at the smallest
/// sensible MSS; a tiny `gso_size` (a container asking for thousands of
/// datagrams from one frame) is refused instead.
pub const MAX_SEGS: usize = 1024;

/// Why a frame cannot be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Headers missing, inconsistent or cut short.
    Malformed,
    /// An offload this code does not do (IPv6 TSO, UFO fragmentation).
    Unsupported,
}

/// UDP header length and the offset of its length and checksum fields.
const UDP_HDR_LEN: usize = 8;
const UDP_LEN: usize = 4;
const UDP_CHECKSUM: usize = 6;

/// The headers of an IPv4 TCP/UDP frame, checked to lie within it.
struct L4v4 {
    /// Offset of the L4 header (Ethernet + IPv4 header).
    l4: usize,
    /// Offset of the payload (after the L4 header).
    payload: usize,
    /// End of the IP packet (Ethernet header + total length).
    end: usize,
}

fn l4v4(f: &[u8], proto: u8) -> Result<L4v4, Error> {
    const L3: usize = eth::HDR_LEN;
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
    let l4 = L3 + ihl;
    let end = L3 + total;
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
    })
}

/// The TCP/UDP checksum over IPv4 from `src` to `dst` of an L4 header
/// (checksum field zero, even length) followed by `data`.
fn l4_checksum(src: &[u8], dst: &[u8], proto: u8, hdr: &[u8], data: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(src);
    pseudo[4..8].copy_from_slice(dst);
    pseudo[9] = proto;
    pseudo[10..].copy_from_slice(&((hdr.len() + data.len()) as u16).to_be_bytes());
    let s = csum::sum(&pseudo) + csum::sum(hdr) + csum::sum(data);
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
        GSO_TCPV4 => split(f, ipv4::PROTO_TCP, size, mtu, prefix, partial, emit),
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
        // the packet's end for IPv4 (no trailing bytes summed), else the frame's
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

fn ipv4_proto(f: &[u8]) -> Option<u8> {
    (eth::ethertype(f) == Some(eth::ETHERTYPE_IPV4) && f.len() > eth::HDR_LEN + ipv4::PROTOCOL)
        .then(|| f[eth::HDR_LEN + ipv4::PROTOCOL])
}

fn l4v4_end(f: &[u8]) -> Option<usize> {
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
    let L4v4 { l4, payload, end } = l4v4(f, proto)?;
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
    let (src, dst) = (
        &f[eth::HDR_LEN + ipv4::SRC..eth::HDR_LEN + ipv4::SRC + 4],
        &f[eth::HDR_LEN + ipv4::DST..eth::HDR_LEN + ipv4::DST + 4],
    );
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
        // IPv4: length, identification, header checksum
        let ip = eth::HDR_LEN;
        let total = (hdrs + chunk.len()) as u16;
        s[ip + ipv4::TOTAL_LEN..ip + ipv4::TOTAL_LEN + 2].copy_from_slice(&total.to_be_bytes());
        s[ip + 4..ip + 6].copy_from_slice(&ip_id.wrapping_add(i as u16).to_be_bytes());
        s[ip + ipv4::CHECKSUM..ip + ipv4::CHECKSUM + 2].fill(0);
        let c = csum::checksum(&s[ip..l4]);
        s[ip + ipv4::CHECKSUM..ip + ipv4::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
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

/// The folded (uncomplemented) sum of the IPv4 pseudo-header: what a
/// partial checksum field holds.
pub fn pseudo_sum(src: &[u8], dst: &[u8], proto: u8, l4_len: usize) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(src);
    pseudo[4..8].copy_from_slice(dst);
    pseudo[9] = proto;
    pseudo[10..].copy_from_slice(&(l4_len as u16).to_be_bytes());
    csum::sum(&pseudo) as u16
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
        let v6 = VnetHdr { gso_type: 4, ..h };
        assert_eq!(
            segment(&v6, &good, 1450, &[], false, &mut out, &mut lens),
            Err(Error::Unsupported)
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
}
