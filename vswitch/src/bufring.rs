//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`): the kernel picks a
//! receive buffer from it for every frame a multishot read returns, and we
//! hand buffers back by advancing the tail.

use io_uring::types::BufRingEntry;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

pub struct BufRing {
    base: *mut BufRingEntry,
    layout: Layout,
    entries: u16,
    tail: u16,
}

// The ring memory is owned by this struct; only the datapath thread uses it.
unsafe impl Send for BufRing {}

impl BufRing {
    /// `entries` must be a power of two, at most 32768.
    pub fn new(entries: u16) -> io::Result<BufRing> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring size must be a power of two <= 32768",
            ));
        }
        let size = entries as usize * std::mem::size_of::<BufRingEntry>();
        let layout = Layout::from_size_align(size.max(4096), 4096).expect("layout");
        let base = unsafe { alloc_zeroed(layout) } as *mut BufRingEntry;
        if base.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(BufRing {
            base,
            layout,
            entries,
            tail: 0,
        })
    }

    pub fn addr(&self) -> u64 {
        self.base as u64
    }

    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Adds a buffer and makes it visible to the kernel.
    #[inline]
    pub fn push(&mut self, addr: *mut u8, len: u32, bid: u16) {
        let i = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: i < entries, inside the allocation.
        let e = unsafe { &mut *self.base.add(i) };
        e.set_addr(addr as u64);
        e.set_len(len);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field overlays entry 0's `resv`, inside the
        // allocation; the kernel reads it with acquire semantics.
        unsafe {
            let t = BufRingEntry::tail(self.base) as *const AtomicU16;
            (*t).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // The caller unregisters the ring before dropping it.
        unsafe { dealloc(self.base as *mut u8, self.layout) };
    }
}
