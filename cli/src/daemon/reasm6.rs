//! IPv6 reassembly for the socket NAT (RFC 8200 section 4.5): smoltcp
//! 0.14 reassembles IPv6 only on 6LoWPAN, and a UDP datagram larger than
//! a container's link reaches the gateway as fragments, which must be
//! one datagram again before it can leave through a host socket.
//!
//! Bounded: at most [`MAX_DATAGRAMS`] datagrams in progress (of them at
//! most [`MAX_PER_SOURCE`] from one address, so one container cannot take
//! them all), [`MAX_PIECES`] fragments each and [`MAX_BYTES`] bytes held;
//! a datagram not complete within [`TIMEOUT`] is dropped when the next
//! fragment comes (until then the bounds hold its memory). Overlapping
//! fragments drop their whole datagram (RFC 5722).

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};
use vswitch::vnet::VNET_HDR_LEN;
use wire::{eth, frag6, ipv6};

pub const MAX_DATAGRAMS: usize = 64;
pub const MAX_PER_SOURCE: usize = 16;
/// Fragments of one datagram (65,535 bytes in 1,280-byte links: 52).
pub const MAX_PIECES: usize = 128;
pub const MAX_BYTES: usize = 2 << 20;
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Where the IPv6 header starts in a frame (vnet header + Ethernet).
const I: usize = VNET_HDR_LEN + 14;
/// Where a fragment's data starts (after the fragment header).
const DATA: usize = I + ipv6::HDR_LEN + frag6::LEN;

/// (source, destination, identification): what names a datagram.
type Key = (Ipv6Addr, Ipv6Addr, u32);

struct Partial {
    started: Instant,
    /// The first fragment's vnet header, Ethernet and IPv6 headers, and
    /// its next header (once the first fragment came).
    head: Option<(Vec<u8>, u8)>,
    /// The data so far, and the ranges of it that came.
    data: Vec<u8>,
    have: Vec<(usize, usize)>,
    /// The datagram's length (once the last fragment came).
    total: Option<usize>,
}

/// Why a fragment went no further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Not an IPv6 frame whose IPv6 header is directly followed by a
    /// fragment header, or its lengths do not add up.
    Malformed,
    /// It overlaps a fragment of its datagram, or contradicts its length:
    /// the whole datagram is dropped.
    Overlap,
    /// Too many datagrams or bytes held already.
    Full,
}

#[derive(Default)]
pub struct Reassembly {
    parts: HashMap<Key, Partial>,
    bytes: usize,
}

impl Reassembly {
    /// Whether frame `f` (vnet header + Ethernet + IPv6) is a fragment.
    pub fn is_fragment(f: &[u8]) -> bool {
        f.get(VNET_HDR_LEN..).and_then(eth::ethertype) == Some(eth::ETHERTYPE_IPV6)
            && f.get(I..)
                .and_then(ipv6::Header::new)
                .is_some_and(|h| h.next_header() == frag6::PROTO)
    }

    /// Takes fragment frame `f`: Ok(Some(frame)) when it completes its
    /// datagram (the frame as if it had never been fragmented), Ok(None)
    /// while fragments are missing.
    pub fn offer(&mut self, f: &[u8], now: Instant) -> Result<Option<Vec<u8>>, Drop> {
        if !Self::is_fragment(f) {
            return Err(Drop::Malformed);
        }
        let h = f
            .get(I..)
            .and_then(ipv6::Header::new)
            .ok_or(Drop::Malformed)?;
        let end = I + ipv6::HDR_LEN + h.payload_len();
        if h.next_header() != frag6::PROTO || end > f.len() || end < DATA {
            return Err(Drop::Malformed);
        }
        let fh = frag6::Fragment::new(&f[I + ipv6::HDR_LEN..]).ok_or(Drop::Malformed)?;
        let (off, more, chunk) = (fh.offset(), fh.more(), &f[DATA..end]);
        // every fragment carries data, all but the last a multiple of 8
        // bytes; the datagram fits a payload length
        if chunk.is_empty() || (more && chunk.len() % 8 != 0) || off + chunk.len() > 65_535 {
            return Err(Drop::Malformed);
        }
        self.expire(now);
        let key = (h.src(), h.dst(), fh.ident());
        if !self.parts.contains_key(&key) {
            let mine = self.parts.keys().filter(|k| k.0 == key.0).count();
            if self.parts.len() >= MAX_DATAGRAMS || mine >= MAX_PER_SOURCE {
                return Err(Drop::Full);
            }
            let p = Partial {
                started: now,
                head: None,
                data: Vec::new(),
                have: Vec::new(),
                total: None,
            };
            self.parts.insert(key, p);
        }
        let p = self.parts.get_mut(&key).expect("inserted");
        let (lo, hi) = (off, off + chunk.len());
        let overlaps = p.have.iter().any(|&(a, b)| lo < b && a < hi);
        let past_end = p.total.is_some_and(|t| hi > t || (!more && hi != t));
        let before_data = !more && p.have.iter().any(|&(_, b)| b > hi);
        if overlaps || past_end || before_data {
            self.remove(&key);
            return Err(Drop::Overlap);
        }
        let grow = hi.saturating_sub(p.data.len());
        if self.bytes + grow > MAX_BYTES || p.have.len() >= MAX_PIECES {
            self.remove(&key);
            return Err(Drop::Full);
        }
        if grow > 0 {
            // (what is held is counted as allocated)
            let before = p.data.capacity();
            p.data.reserve_exact(grow);
            p.data.resize(hi, 0);
            self.bytes += p.data.capacity() - before;
        }
        p.data[lo..hi].copy_from_slice(chunk);
        p.have.push((lo, hi));
        if !more {
            p.total = Some(hi);
        }
        if off == 0 {
            p.head = Some((f[..I + ipv6::HDR_LEN].to_vec(), fh.next_header()));
        }
        let covered: usize = p.have.iter().map(|&(a, b)| b - a).sum();
        if p.head.is_none() || p.total != Some(covered) {
            return Ok(None);
        }
        let p = self.remove(&key).expect("there");
        let (mut out, next) = p.head.expect("checked");
        // a whole datagram: no offloads pending, the fragment header gone
        out[..VNET_HDR_LEN].fill(0);
        out[I + ipv6::NEXT_HEADER] = next;
        let len = (p.data.len() as u16).to_be_bytes();
        out[I + ipv6::PAYLOAD_LEN..I + ipv6::PAYLOAD_LEN + 2].copy_from_slice(&len);
        out.extend_from_slice(&p.data);
        Ok(Some(out))
    }

    /// Datagrams in progress.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.parts.len()
    }

    fn remove(&mut self, key: &Key) -> Option<Partial> {
        let p = self.parts.remove(key)?;
        self.bytes -= p.data.capacity();
        Some(p)
    }

    fn expire(&mut self, now: Instant) {
        let old: Vec<Key> = self
            .parts
            .iter()
            .filter(|(_, p)| now.duration_since(p.started) > TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            self.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames (vnet + Ethernet + IPv6 + fragment) of `payload` (a UDP
    /// datagram) cut into pieces of at most `mtu`.
    fn frames(payload: &[u8], mtu: usize, id: u32) -> Vec<Vec<u8>> {
        let (s, d) = ("fd00::2".parse().unwrap(), "2001:db8::1".parse().unwrap());
        let mut p = vec![0u8; ipv6::HDR_LEN];
        ipv6::emit(&mut p, payload.len() as u16, ipv6::PROTO_UDP, 64, s, d);
        p.extend_from_slice(payload);
        let mut out = Vec::new();
        frag6::fragment(&p, mtu, id, |f| {
            let mut fr = vec![0u8; VNET_HDR_LEN];
            fr.extend_from_slice(&[2; 12]);
            fr.extend_from_slice(&[0x86, 0xdd]);
            fr.extend_from_slice(f);
            out.push(fr);
        })
        .unwrap();
        out
    }

    fn whole(payload: &[u8]) -> impl Fn(&[u8]) {
        let payload = payload.to_vec();
        move |w: &[u8]| {
            let h = ipv6::Header::new(&w[I..]).unwrap();
            assert_eq!(h.next_header(), ipv6::PROTO_UDP);
            assert_eq!(h.payload_len(), payload.len());
            assert_eq!(&w[I + ipv6::HDR_LEN..], &payload[..]);
        }
    }

    #[test]
    fn in_any_order() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let check = whole(&payload);
        let t = Instant::now();
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]] {
            let fr = frames(&payload, 1500, 9);
            let mut r = Reassembly::default();
            let mut got = None;
            for (n, &i) in order.iter().enumerate() {
                let o = r.offer(&fr[i], t).unwrap();
                assert_eq!(o.is_some(), n == 3, "{order:?}");
                got = o.or(got);
            }
            check(&got.unwrap());
            assert_eq!((r.len(), r.bytes), (0, 0));
        }
    }

    #[test]
    fn overlaps_duplicates_and_bad_lengths_drop() {
        let payload = vec![5u8; 3000];
        let fr = frames(&payload, 1500, 1);
        let t = Instant::now();
        let mut r = Reassembly::default();
        assert_eq!(r.offer(&fr[0], t), Ok(None));
        // the same fragment again overlaps: the datagram is gone
        assert_eq!(r.offer(&fr[0], t), Err(Drop::Overlap));
        assert_eq!((r.len(), r.bytes), (0, 0));
        // a middle fragment whose data is not a multiple of 8
        let mut odd = fr[0].clone();
        odd.truncate(odd.len() - 3);
        let pl = (odd.len() - I - ipv6::HDR_LEN) as u16;
        odd[I + 4..I + 6].copy_from_slice(&pl.to_be_bytes());
        assert_eq!(r.offer(&odd, t), Err(Drop::Malformed));
        // a payload length past the frame; not a fragment; cut anywhere
        let mut long = fr[1].clone();
        long[I + 4] = 0xff;
        assert_eq!(r.offer(&long, t), Err(Drop::Malformed));
        for cut in 0..fr[1].len() {
            let _ = r.offer(&fr[1][..cut], t);
        }
        // a fragment without data
        let mut empty = fr[1][..DATA].to_vec();
        empty[I + 4..I + 6].copy_from_slice(&(frag6::LEN as u16).to_be_bytes());
        assert_eq!(r.offer(&empty, t), Err(Drop::Malformed));
        // a last fragment before data already held
        let mut r = Reassembly::default();
        r.offer(&fr[1], t).unwrap();
        let mut early_end = fr[0].clone();
        early_end[I + ipv6::HDR_LEN + 3] &= !1; // M off: the end at 1448
        assert_eq!(r.offer(&early_end, t), Err(Drop::Overlap));
    }

    #[test]
    fn bounded_and_timed_out() {
        let payload = vec![1u8; 3000];
        let t = Instant::now();
        let mut r = Reassembly::default();
        // one source holds at most its share
        for id in 0..MAX_PER_SOURCE as u32 {
            r.offer(&frames(&payload, 1500, id)[0], t).unwrap();
        }
        let mut other = frames(&payload, 1500, 500)[0].clone();
        assert_eq!(r.offer(&other, t), Err(Drop::Full));
        // the rest come from other sources
        for id in MAX_PER_SOURCE as u32..MAX_DATAGRAMS as u32 {
            let src = I + ipv6::SRC + 15;
            other = frames(&payload, 1500, id)[0].clone();
            other[src] = id as u8;
            r.offer(&other, t).unwrap();
        }
        let next = frames(&payload, 1500, 999);
        assert_eq!(r.offer(&next[0], t), Err(Drop::Full));
        // after the timeout the old ones are gone and room is made
        let later = t + TIMEOUT + Duration::from_secs(1);
        assert_eq!(r.offer(&next[0], later), Ok(None));
        assert_eq!(r.len(), 1);
        // a datagram past MAX_BYTES in total is refused
        let mut r = Reassembly::default();
        let big = vec![0u8; 60_000];
        let mut full = false;
        for id in 0..MAX_DATAGRAMS as u32 {
            for f in frames(&big, 1500, id).iter().skip(1) {
                let mut f = f.clone();
                f[I + ipv6::SRC + 15] = id as u8;
                full |= r.offer(&f, t) == Err(Drop::Full);
            }
        }
        assert!(full && r.bytes <= MAX_BYTES);
    }
}
