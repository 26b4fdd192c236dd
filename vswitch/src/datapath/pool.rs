//! The worker's receive buffers: one pool shared by every port.
//!
//! Why one pool and not buffers per port: an idle endpoint must cost next
//! to nothing (a thousand containers are a thousand ports), and memory must
//! not grow with the number of ports ever added. The pool is one
//! provided-buffer ring (`IORING_REGISTER_PBUF_RING`, buffer group
//! [`BGID`]) that every port's read selects from: the kernel takes a buffer
//! only when a frame arrives, so a port costs no buffer while it is quiet.
//! A buffer goes back into the ring when the last write of its frame
//! completes.
//!
//! When the ring runs dry, reads end with `ENOBUFS`; those ports wait in
//! [`Pool::starved`] and are armed again, in order, as buffers come back.
//! Buffers are only held while a frame is switched (writes to a TAP
//! complete at once), so one busy port cannot keep them from the others.

use super::BUF_SIZE;
use crate::bufring::BufRing;
use crate::table::PortIdx;
use std::collections::VecDeque;

/// The buffer group every port's read selects from.
pub(super) const BGID: u16 = 0;

pub(super) struct Pool {
    /// `n` buffers of [`BUF_SIZE`] bytes. Zeroed lazily by the kernel
    /// (calloc of this size maps fresh pages): a page costs memory only
    /// once a frame was received into it.
    mem: Box<[u8]>,
    /// Length of the frame in each buffer (vnet header included).
    pub lens: Box<[u32]>,
    /// Writes in flight from each buffer.
    pub refs: Box<[u16]>,
    ring: BufRing,
    /// Buffers the kernel handed out and that are not back in the ring.
    out: u32,
    /// Ports whose read ended (or could not start) for want of a buffer.
    pub starved: VecDeque<PortIdx>,
    /// Buffers after the ring's, never in the ring: frames that came in
    /// some other way than a read (handed over by a helper worker) are
    /// switched from these, as if read.
    spare: Vec<u16>,
}

impl Pool {
    /// A pool of `n` buffers (rounded up to a power of two, at most 32768)
    /// in the ring and `spare` more outside it ([`Pool::take_spare`]).
    /// The caller registers [`Pool::ring_addr`] as group [`BGID`] before
    /// the first read.
    pub fn new(n: usize, spare: usize) -> std::io::Result<Pool> {
        let n = n.clamp(2, 32768).next_power_of_two();
        let spare = spare.min(32768);
        let mut ring = BufRing::new(n as u16)?;
        let mut mem = vec![0u8; (n + spare) * BUF_SIZE].into_boxed_slice();
        for b in 0..n {
            ring.push(mem[b * BUF_SIZE..].as_mut_ptr(), BUF_SIZE as u32, b as u16);
        }
        Ok(Pool {
            mem,
            lens: vec![0; n + spare].into_boxed_slice(),
            refs: vec![0; n + spare].into_boxed_slice(),
            ring,
            out: 0,
            starved: VecDeque::new(),
            spare: (n..n + spare).rev().map(|b| b as u16).collect(),
        })
    }

    /// A spare buffer for a frame that was not read into the ring's, if
    /// one is free; it goes back with [`Pool::put`] like any other.
    pub fn take_spare(&mut self) -> Option<usize> {
        let b = self.spare.pop()? as usize;
        self.lens[b] = 0;
        Some(b)
    }

    pub fn ring_addr(&self) -> u64 {
        self.ring.addr()
    }

    pub fn entries(&self) -> u16 {
        self.ring.entries()
    }

    /// Bytes of buffer memory (mapped; resident only where frames landed).
    pub fn bytes(&self) -> usize {
        self.mem.len()
    }

    /// Buffers handed out and not back yet.
    pub fn out(&self) -> u32 {
        self.out
    }

    /// True while the ring holds at least one buffer.
    #[inline]
    pub fn available(&self) -> bool {
        self.out < self.ring.entries() as u32
    }

    /// The kernel selected buffer `b` for a frame.
    #[inline]
    pub fn took(&mut self, b: usize) {
        self.out += 1;
        self.lens[b] = 0;
    }

    /// Puts buffer `b` back into the ring.
    #[inline]
    pub fn put(&mut self, b: usize) {
        if b >= self.ring.entries() as usize {
            self.spare.push(b as u16);
            return;
        }
        self.out -= 1;
        let ptr = self.mem[b * BUF_SIZE..].as_mut_ptr();
        self.ring.push(ptr, BUF_SIZE as u32, b as u16);
    }

    /// The first `len` bytes of buffer `b` (`len` is clamped to the buffer).
    #[inline]
    pub fn frame(&self, b: usize, len: usize) -> &[u8] {
        let base = b * BUF_SIZE;
        &self.mem[base..base + len.min(BUF_SIZE)]
    }

    #[inline]
    pub fn frame_mut(&mut self, b: usize, len: usize) -> &mut [u8] {
        let base = b * BUF_SIZE;
        &mut self.mem[base..base + len.min(BUF_SIZE)]
    }

    /// All of buffer `b`, for answers that grow the frame.
    #[inline]
    pub fn whole_mut(&mut self, b: usize) -> &mut [u8] {
        self.frame_mut(b, BUF_SIZE)
    }

    #[inline]
    pub fn ptr(&mut self, b: usize) -> *const u8 {
        self.mem[b * BUF_SIZE..].as_ptr()
    }

    /// Gives the memory up without freeing it: the kernel may still point
    /// at it (the ring could not be unregistered).
    pub fn leak(self) {
        std::mem::forget(self);
    }
}
