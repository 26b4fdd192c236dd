//! Sealed VXLAN datagrams, for encrypted overlay networks.
//!
//! Docker encrypts its overlay with kernel IPsec ESP; tapnet seals each
//! VXLAN datagram itself with AES-256-GCM (`ring`), so the underlay sees
//! no inner byte. A sealed datagram:
//!
//! ```text
//! | VXLAN header, flags I|S (8) | key id (4) | sender (4) | sequence (8) |
//! | inner Ethernet frame, encrypted | GCM tag (16) |
//! ```
//!
//! - The S flag (a reserved VXLAN flag bit, [`FLAG_SEALED`]) marks it; a
//!   plain datagram for an encrypted network is refused, and the other way
//!   round.
//! - The nonce is the sender (its VTEP's IPv4 address, unique in the
//!   cluster) and the sequence number; a sender starts its sequence at the
//!   current time in nanoseconds and counts up, so a restarted daemon never
//!   reuses a nonce with the same key (fewer than 10^9 datagrams a second).
//! - The VXLAN header, key id, sender and sequence are authenticated data:
//!   a changed VNI or sequence fails the tag.
//! - Keys have ids; a sender seals with the primary key, a receiver opens
//!   with any key it holds (during a rotation both the old and the new).
//! - Replays: a window of the last [`WINDOW`] sequence numbers per sender
//!   ([`ReplayWindow`]), checked before opening and updated after. A
//!   sender keeps its sequence at or above the clock (in ns), so a window
//!   that starts afresh (a restart, a host that came back) takes only
//!   sequence numbers from the last [`MAX_SKEW_NS`]: older captures do
//!   not replay.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

/// The S flag in the VXLAN flags byte (a reserved bit: plain VXLAN
/// receivers ignore it, and tapnet refuses a sealed datagram it cannot
/// open).
pub const FLAG_SEALED: u8 = 0x01;
/// Key id, sender and sequence after the VXLAN header.
pub const HDR_LEN: usize = 16;
pub const TAG_LEN: usize = 16;
/// What sealing adds to a VXLAN datagram.
pub const OVERHEAD: usize = HDR_LEN + TAG_LEN;
/// Sequence numbers remembered per sender: datagrams leave from several
/// sockets and may arrive out of order by this much (about 5 ms at
/// 10 Gbit/s).
pub const WINDOW: u64 = 4096;

const X: usize = wire::vxlan::HDR_LEN;

/// How far apart hosts' clocks may be (and how old a datagram may be that
/// a fresh replay window still takes).
pub const MAX_SKEW_NS: u64 = 60_000_000_000;

/// The time in nanoseconds since the epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The sequence numbers a VTEP may seal with, shared by the datapath
/// (which seals) and the control plane (which keeps a bound on them across
/// runs): every number sealed is at most `ceiling`, a value the control
/// plane has stored before it raised the ceiling to it, and `used` is the
/// highest sealed so far. A run started with the stored value as its
/// floor never repeats a number of an earlier run, whatever the clock
/// says: no (key, nonce) pair is used twice.
#[derive(Debug)]
pub struct SeqBounds {
    used: std::sync::atomic::AtomicU64,
    ceiling: std::sync::atomic::AtomicU64,
}

impl SeqBounds {
    /// Numbers above `floor`, up to `ceiling` (until raised).
    pub fn new(floor: u64, ceiling: u64) -> SeqBounds {
        SeqBounds {
            used: floor.into(),
            ceiling: ceiling.into(),
        }
    }

    /// The highest number sealed (or the floor).
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn ceiling(&self) -> u64 {
        self.ceiling.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Raises the ceiling to `c` (never lowers it); the caller has stored
    /// `c` first.
    pub fn raise_ceiling(&self, c: u64) {
        self.ceiling
            .fetch_max(c, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes `n` numbers after `seq` for one sender, never below the
    /// clock: the first of them, or None when they would pass the
    /// ceiling (nothing is taken then). One taker at a time (the datapath
    /// worker that has the VTEP); the control plane only reads `used` and
    /// raises the ceiling.
    pub fn take(&self, seq: u64, n: u64) -> Option<u64> {
        let first = seq.max(self.used()).max(now_ns()).checked_add(1)?;
        let last = first.checked_add(n.saturating_sub(1))?;
        if last > self.ceiling() {
            return None;
        }
        self.used
            .fetch_max(last, std::sync::atomic::Ordering::Relaxed);
        Some(first)
    }
}

/// A network's keys: the one to seal with and every one to open with.
pub struct KeySet {
    primary: Option<(u32, LessSafeKey)>,
    all: Vec<(u32, LessSafeKey)>,
}

impl KeySet {
    /// Keys by id (AES-256: 32 bytes each), sealing with `primary`.
    pub fn new(keys: &[(u32, [u8; 32])], primary: u32) -> KeySet {
        let make = |k: &[u8; 32]| {
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("a 32-byte key"))
        };
        KeySet {
            primary: keys
                .iter()
                .find(|(id, _)| *id == primary)
                .map(|(id, k)| (*id, make(k))),
            all: keys.iter().map(|(id, k)| (*id, make(k))).collect(),
        }
    }

    pub fn primary_id(&self) -> Option<u32> {
        self.primary.as_ref().map(|p| p.0)
    }
}

fn nonce(sender: [u8; 4], seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&sender);
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Appends the sealed form of `d` (a VXLAN datagram: header and inner
/// frame) to `out`; false (nothing appended) without a primary key or
/// for a datagram too short to hold a frame.
pub fn seal(keys: &KeySet, sender: [u8; 4], seq: u64, d: &[u8], out: &mut Vec<u8>) -> bool {
    let Some((id, key)) = keys.primary.as_ref() else {
        return false;
    };
    // what open() takes: a header and at least an Ethernet header
    if d.len() < X + wire::eth::HDR_LEN {
        return false;
    }
    let start = out.len();
    out.extend_from_slice(&d[..X]);
    out[start] |= FLAG_SEALED;
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&sender);
    out.extend_from_slice(&seq.to_be_bytes());
    let body = out.len();
    out.extend_from_slice(&d[X..]);
    let (head, inner) = out[start..].split_at_mut(body - start);
    match key.seal_in_place_separate_tag(nonce(sender, seq), Aad::from(&*head), inner) {
        Ok(tag) => {
            out.extend_from_slice(tag.as_ref());
            true
        }
        Err(_) => {
            out.truncate(start);
            false
        }
    }
}

/// Why a sealed datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Too short for the header, a frame and the tag.
    Short,
    /// A key id this host does not hold.
    UnknownKey,
    /// The tag does not match: altered, or not sealed with this key.
    BadTag,
}

/// The sender and sequence of a sealed datagram (`d` as received), read
/// before opening it (for the replay window).
pub fn peek(d: &[u8]) -> Option<([u8; 4], u64)> {
    if d.len() < X + HDR_LEN + TAG_LEN {
        return None;
    }
    let h = &d[X..X + HDR_LEN];
    let sender = [h[4], h[5], h[6], h[7]];
    let seq = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"));
    Some((sender, seq))
}

/// Opens sealed datagram `d` in place; the inner frame is then
/// `d[X + HDR_LEN..X + HDR_LEN + n]` with `n` returned.
pub fn open(keys: &KeySet, d: &mut [u8]) -> Result<usize, OpenError> {
    if d.len() < X + HDR_LEN + wire::eth::HDR_LEN + TAG_LEN {
        return Err(OpenError::Short);
    }
    let (sender, seq) = peek(d).ok_or(OpenError::Short)?;
    let id = u32::from_be_bytes(d[X..X + 4].try_into().expect("4 bytes"));
    let key = keys
        .all
        .iter()
        .find(|(k, _)| *k == id)
        .map(|(_, k)| k)
        .ok_or(OpenError::UnknownKey)?;
    let (head, body) = d.split_at_mut(X + HDR_LEN);
    // the flags byte as it was sealed (with S)
    let plain = key
        .open_in_place(nonce(sender, seq), Aad::from(&*head), body)
        .map_err(|_| OpenError::BadTag)?;
    Ok(plain.len())
}

/// The sequence numbers seen from one sender: the highest, and which of
/// the [`WINDOW`] below it.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    top: u64,
    seen: Box<[u64; (WINDOW / 64) as usize]>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            top: 0,
            seen: Box::new([0; (WINDOW / 64) as usize]),
        }
    }
}

impl ReplayWindow {
    /// Whether `seq` may be new: not seen, not older than the window,
    /// and (for a window that has seen nothing yet) not below `floor`.
    pub fn fresh(&self, seq: u64, floor: u64) -> bool {
        if self.top == 0 {
            return seq >= floor;
        }
        if seq > self.top {
            return true;
        }
        let back = self.top - seq;
        if back >= WINDOW {
            return false;
        }
        let bit = seq % WINDOW;
        self.seen[(bit / 64) as usize] & (1 << (bit % 64)) == 0
    }

    /// Records `seq` (after its datagram opened).
    pub fn accept(&mut self, seq: u64) {
        if seq > self.top {
            // clear the slots the window slides over
            let shift = (seq - self.top).min(WINDOW);
            for s in 1..=shift {
                let bit = (self.top + s) % WINDOW;
                self.seen[(bit / 64) as usize] &= !(1 << (bit % 64));
            }
            self.top = seq;
        }
        let bit = seq % WINDOW;
        self.seen[(bit / 64) as usize] |= 1 << (bit % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_stay_between_the_floor_and_the_ceiling() {
        // a floor an hour ahead of the clock (the clock set back since
        // the last run): numbers start above it, not at the clock
        let floor = now_ns() + 3_600_000_000_000;
        let b = SeqBounds::new(floor, floor + 100);
        let first = b.take(0, 10).unwrap();
        assert_eq!(first, floor + 1);
        assert_eq!(b.used(), floor + 10);
        // another sender (tunnel) of the same VTEP: above every number used
        assert_eq!(b.take(0, 1), Some(floor + 11));
        // never past the ceiling: nothing taken
        assert_eq!(b.take(floor + 11, 90), None);
        assert_eq!(b.used(), floor + 11);
        b.raise_ceiling(floor + 200);
        b.raise_ceiling(floor + 50); // never lowered
        assert_eq!(b.ceiling(), floor + 200);
        assert_eq!(b.take(floor + 11, 90), Some(floor + 12));
        // no wrap at the top
        let top = SeqBounds::new(u64::MAX - 1, u64::MAX);
        assert_eq!(top.take(0, 2), None);
    }

    fn datagram(n: usize) -> Vec<u8> {
        let mut d = wire::vxlan::emit(4096).to_vec();
        d.extend((0..n).map(|i| i as u8));
        d
    }

    #[test]
    fn seal_open_roundtrip_and_tamper() {
        let ks = KeySet::new(&[(1, [7; 32]), (2, [9; 32])], 2);
        let d = datagram(100);
        let mut out = Vec::new();
        assert!(seal(&ks, [10, 0, 0, 1], 42, &d, &mut out));
        assert_eq!(out.len(), d.len() + OVERHEAD);
        assert_eq!(out[0], wire::vxlan::FLAG_I | FLAG_SEALED);
        // no plaintext on the wire
        assert!(!out.windows(20).any(|w| w == &d[20..40]));
        assert_eq!(peek(&out), Some(([10, 0, 0, 1], 42)));
        let mut o = out.clone();
        let n = open(&ks, &mut o).unwrap();
        assert_eq!(&o[X + HDR_LEN..X + HDR_LEN + n], &d[X..]);
        // the old key still opens what it sealed (rotation overlap)
        let old = KeySet::new(&[(1, [7; 32])], 1);
        let mut o1 = Vec::new();
        assert!(seal(&old, [10, 0, 0, 1], 43, &d, &mut o1));
        assert!(open(&ks, &mut o1.clone()).is_ok());
        // any changed byte, header included, fails
        for i in [0, 5, X, X + 8, X + 15, X + HDR_LEN + 3, out.len() - 1] {
            let mut t = out.clone();
            t[i] ^= 0x40;
            assert!(open(&ks, &mut t).is_err(), "byte {i}");
        }
        // a key this host lacks, and short input
        let other = KeySet::new(&[(3, [1; 32])], 3);
        assert_eq!(open(&other, &mut out.clone()), Err(OpenError::UnknownKey));
        assert_eq!(open(&ks, &mut out[..30].to_vec()), Err(OpenError::Short));
        let none = KeySet::new(&[], 1);
        assert!(!seal(&none, [0; 4], 1, &d, &mut Vec::new()));
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::default();
        for s in [10000u64, 10001, 9999, 10500, 10200] {
            assert!(w.fresh(s, 0), "{s}");
            w.accept(s);
            assert!(!w.fresh(s, 0), "{s} again");
        }
        assert!(w.fresh(10002, 0) && w.fresh(10499, 0));
        assert!(!w.fresh(10500 - WINDOW, 0), "older than the window");
        w.accept(1_000_000);
        assert!(!w.fresh(10500, 0) && w.fresh(1_000_000 - 5, 0));
        // a fresh window takes nothing older than the floor
        let w = ReplayWindow::default();
        assert!(!w.fresh(99, 100) && w.fresh(100, 100));
    }
}
