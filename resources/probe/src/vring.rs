//! Split virtqueue (virtio 1.x, 2.7): descriptor table, available (driver) ring and used
//! (device) ring in arena memory, notification suppression in both directions (EVENT_IDX
//! `avail_event`/`used_event`, or the NO_NOTIFY/NO_INTERRUPT flags), kick counting.
//!
//! The rings are shared with the device, so they are accessed only through volatile reads
//! and writes of raw addresses, ordered with fences (the Rust code runs natively at CPL3).

use crate::dma::Arena;
use crate::err;
use crate::error::Result;
use crate::mmio::Window;
use core::sync::atomic::{fence, Ordering};

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

/// One split virtqueue.
pub struct Vring {
    pub index: u16,
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    notify: Option<Window>,
    event_idx: bool,
    /// Next free avail slot (published to the device by `publish`).
    avail_idx: u16,
    /// `avail_idx` at the previous `publish` (the "old" of `vring_need_event`).
    published: u16,
    last_used: u16,
    pub kicks: u64,
}

fn rd16(addr: u64) -> u16 {
    // SAFETY: callers pass addresses inside this ring's arena allocation (indices are reduced
    // modulo the ring size), 2-byte aligned; the memory is identity-mapped RAM.
    unsafe { core::ptr::read_volatile(addr as usize as *const u16) }
}

fn rd32(addr: u64) -> u32 {
    // SAFETY: as in `rd16`, 4-byte aligned.
    unsafe { core::ptr::read_volatile(addr as usize as *const u32) }
}

fn wr16(addr: u64, v: u16) {
    // SAFETY: as in `rd16`.
    unsafe { core::ptr::write_volatile(addr as usize as *mut u16, v) }
}

/// Writes one 16-byte descriptor {addr, len, flags, next} at `at`.
///
/// # Safety
/// `at` must be a 16-byte aligned descriptor slot in a descriptor table (ring or indirect)
/// allocated from the arena, which no Rust reference covers and the device is not reading.
pub unsafe fn write_desc(at: u64, addr: u64, len: u32, flags: u16, next: u16) {
    // SAFETY: guaranteed by the caller (see above).
    unsafe {
        core::ptr::write_volatile(at as usize as *mut u64, addr);
        core::ptr::write_volatile((at + 8) as usize as *mut u32, len);
        core::ptr::write_volatile((at + 12) as usize as *mut u16, flags);
        core::ptr::write_volatile((at + 14) as usize as *mut u16, next);
    }
}

/// `vring_need_event`: whether moving an index from `old` to `new` crosses `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl Vring {
    /// An unused placeholder.
    pub const EMPTY: Vring = Vring {
        index: 0,
        size: 0,
        desc: 0,
        avail: 0,
        used: 0,
        notify: None,
        event_idx: false,
        avail_idx: 0,
        published: 0,
        last_used: 0,
        kicks: 0,
    };

    /// Allocates the three rings for a queue of `size` (a power of two) entries.
    pub fn new(arena: &Arena, index: u16, size: u16, event_idx: bool) -> Result<Vring> {
        let n = size as u64;
        let desc = arena.alloc(16 * n, 4096, "virtqueue descriptors")?;
        let avail = arena.alloc(6 + 2 * n, 4096, "virtqueue avail ring")?;
        let used = arena.alloc(6 + 8 * n, 4096, "virtqueue used ring")?;
        Ok(Vring {
            index,
            size,
            desc,
            avail,
            used,
            notify: None,
            event_idx,
            ..Vring::EMPTY
        })
    }

    /// Ring addresses for the transport: [descriptors, driver area, device area].
    pub fn addrs(&self) -> [u64; 3] {
        [self.desc, self.avail, self.used]
    }

    /// Sets the queue's notify register (after the queue was registered).
    pub fn set_notify(&mut self, w: Window) {
        self.notify = Some(w);
    }

    /// Address of descriptor `i` (reduced modulo the size).
    pub fn desc_addr(&self, i: u16) -> u64 {
        self.desc + 16 * (i % self.size) as u64
    }

    /// Queues descriptor chain `head` in the avail ring (not yet visible to the device).
    pub fn push(&mut self, head: u16) {
        let slot = (self.avail_idx % self.size) as u64;
        wr16(self.avail + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Makes pushed chains visible and notifies the device if it asked for it. Returns
    /// whether a notification was sent.
    pub fn publish(&mut self) -> bool {
        let new = self.avail_idx;
        let old = self.published;
        if new == old {
            return false;
        }
        // Descriptors and ring entries before the index (a store-store barrier).
        fence(Ordering::Release);
        wr16(self.avail + 2, new);
        self.published = new;
        // The index store before reading the device's suppression state (store-load).
        fence(Ordering::SeqCst);
        let kick = if self.event_idx {
            let avail_event = rd16(self.used + 4 + 8 * self.size as u64);
            need_event(avail_event, new, old)
        } else {
            rd16(self.used) & USED_F_NO_NOTIFY == 0
        };
        if kick {
            if let Some(w) = self.notify {
                w.write16(0, self.index);
                self.kicks += 1;
            }
        }
        kick
    }

    /// Takes the next used element `(id, len)`, if any. Fails if the device's used index
    /// ran more than a ring's worth ahead of the driver.
    pub fn pop(&mut self) -> Result<Option<(u32, u32)>> {
        let used_idx = rd16(self.used + 2);
        if used_idx == self.last_used {
            return Ok(None);
        }
        if used_idx.wrapping_sub(self.last_used) > self.size {
            return Err(err!(
                "queue {}: device used index {} is more than {} ahead of {}",
                self.index,
                used_idx,
                self.size,
                self.last_used
            ));
        }
        // Read the element only after seeing the index.
        fence(Ordering::Acquire);
        let at = self.used + 4 + 8 * (self.last_used % self.size) as u64;
        let id = rd32(at);
        let len = rd32(at + 4);
        self.last_used = self.last_used.wrapping_add(1);
        Ok(Some((id, len)))
    }

    /// Requests (`on`) or suppresses used-buffer notifications. With EVENT_IDX, `used_event`
    /// is set to the last seen used index (interrupt on the next completion) or half the
    /// index space away from it; without EVENT_IDX, the avail ring's NO_INTERRUPT flag is used.
    ///
    /// "Away" must not be "one behind": the driver polls, so it can consume entries the device
    /// has just added before the device evaluates `vring_need_event(used_event, new, old)`;
    /// `used_event = last_used - 1` would then lie inside (old, new] and trigger a
    /// notification. The device's (old, new] stays within a ring size of `last_used`, so
    /// `last_used + 0x8000` is never crossed (queue sizes are at most 1024 here).
    pub fn interrupts(&mut self, on: bool) {
        if self.event_idx {
            let v = if on {
                self.last_used
            } else {
                self.last_used.wrapping_add(0x8000)
            };
            wr16(self.avail + 4 + 2 * self.size as u64, v);
        } else {
            wr16(self.avail, if on { 0 } else { AVAIL_F_NO_INTERRUPT });
        }
    }
}
