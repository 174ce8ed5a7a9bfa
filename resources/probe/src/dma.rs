//! Memory for drivers: an arena over usable RAM above the probe image.
//!
//! The probe image (code, data, .bss, stacks) ends at `__image_end` (< 4 MiB, see link.ld).
//! Nothing else in the probe uses RAM above it: boot information is copied into the image at
//! start and the AP trampoline lives below 1 MiB. The arena is the largest e820 type-1 range
//! above `__image_end` rounded up to 2 MiB, and below 4 GiB (inside the identity map). Virtio
//! rings, request headers, data buffers and the load generator's bookkeeping are carved from
//! it; everything handed out is zeroed. Only one arena exists at a time.

use crate::bootinfo::BootInfo;
use crate::err;
use crate::error::Result;
use crate::phys;
use core::cell::Cell;
use core::sync::atomic::{AtomicBool, Ordering};

extern "C" {
    #[link_name = "__image_start"]
    static IMAGE_START: u8;
    #[link_name = "__image_end"]
    static IMAGE_END: u8;
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Physical `[start, end)` of the probe image.
pub fn image_range() -> (u64, u64) {
    (&raw const IMAGE_START as u64, &raw const IMAGE_END as u64)
}

/// Types that may live in the arena: plain integers (or aggregates of them) for which the
/// all-zero bit pattern is a valid value.
///
/// # Safety
/// Implementors must be valid when all bytes are zero and have no drop glue.
pub unsafe trait Zeroable: Copy {}
// SAFETY: integers are valid for every bit pattern, including all zeros.
unsafe impl Zeroable for u8 {}
// SAFETY: as above.
unsafe impl Zeroable for u16 {}
// SAFETY: as above.
unsafe impl Zeroable for u32 {}
// SAFETY: as above.
unsafe impl Zeroable for u64 {}

/// A bump allocator over `[start, end)`; allocations are never freed individually.
pub struct Arena {
    start: u64,
    end: u64,
    next: Cell<u64>,
}

const ALIGN_2M: u64 = 2 << 20;

impl Arena {
    /// Takes the largest usable-RAM range above the image. Fails if another arena is alive.
    pub fn above_image(boot: &BootInfo) -> Result<Arena> {
        Self::above_image_below(boot, phys::LIMIT)
    }

    /// As [`Arena::above_image`], but only RAM below `limit` (at most [`phys::LIMIT`]).
    pub fn above_image_below(boot: &BootInfo, limit: u64) -> Result<Arena> {
        let limit = limit.min(phys::LIMIT);
        let floor = image_range().1.div_ceil(ALIGN_2M) * ALIGN_2M;
        let best = boot
            .e820()
            .iter()
            .filter(|e| e.kind == 1)
            .map(|e| {
                let s = e.addr.max(floor);
                let t = e.addr.saturating_add(e.size).min(limit);
                (s, t)
            })
            .filter(|&(s, t)| t > s)
            .max_by_key(|&(s, t)| t - s)
            .ok_or_else(|| {
                err!(
                    "no usable RAM between the probe image ({:#x}) and {:#x}",
                    floor,
                    limit
                )
            })?;
        if TAKEN.swap(true, Ordering::Acquire) {
            return Err(err!("driver memory arena already in use"));
        }
        Ok(Arena {
            start: best.0,
            end: best.1,
            next: Cell::new(best.0),
        })
    }

    /// Physical `[start, end)` of the arena.
    pub fn range(&self) -> (u64, u64) {
        (self.start, self.end)
    }

    /// Bytes handed out so far.
    pub fn used(&self) -> u64 {
        self.next.get() - self.start
    }

    /// Reserves `len` zeroed bytes aligned to `align` (a power of two); returns the physical
    /// (= virtual) address. `what` names the allocation in the out-of-memory error.
    pub fn alloc(&self, len: u64, align: u64, what: &str) -> Result<u64> {
        let at = self.next.get().div_ceil(align) * align;
        let end = at
            .checked_add(len)
            .filter(|&e| e <= self.end)
            .ok_or_else(|| {
                err!(
                    "not enough RAM for {} ({} bytes; {} of {} arena bytes above the image used)",
                    what,
                    len,
                    self.used(),
                    self.end - self.start
                )
            })?;
        // SAFETY: [at, end) lies inside the arena: usable RAM above the probe image that
        // nothing else uses (see the module doc), identity mapped; it was never handed out.
        unsafe { core::ptr::write_bytes(at as usize as *mut u8, 0, len as usize) };
        self.next.set(end);
        Ok(at)
    }

    /// Reserves a zeroed slice of `n` values of `T`.
    #[allow(clippy::mut_from_ref)] // Every call returns a fresh, disjoint range of the arena.
    pub fn slice<T: Zeroable>(&self, n: usize, what: &str) -> Result<&mut [T]> {
        let size = core::mem::size_of::<T>() as u64;
        let len = size
            .checked_mul(n as u64)
            .ok_or_else(|| err!("{} is too large", what))?;
        let at = self.alloc(len, core::mem::align_of::<T>() as u64, what)?;
        // SAFETY: `at` starts `len` freshly zeroed, suitably aligned bytes that no other
        // reference covers (bump allocation, the arena is unique), and all-zero is a valid `T`
        // (`Zeroable`). The slice borrows the arena, so it cannot outlive it.
        Ok(unsafe { core::slice::from_raw_parts_mut(at as usize as *mut T, n) })
    }
}

/// A zeroed buffer of `size` bytes aligned to `align` for command `cmd`, from an arena over the
/// largest usable RAM range above the image and below [`phys::CACHED_LIMIT`] (the top GiB of
/// the identity map is uncached); fails with the range there was if it does not fit. Returns
/// the arena with the buffer's address: the buffer is the caller's while the arena lives.
pub fn cached_buffer(boot: &BootInfo, size: u64, align: u64, cmd: &str) -> Result<(Arena, u64)> {
    let arena = Arena::above_image_below(boot, phys::CACHED_LIMIT)?;
    let (start, end) = arena.range();
    let room = end.saturating_sub(start.div_ceil(align) * align);
    if size > room {
        return Err(err!(
            "{}: size {} does not fit: the largest usable RAM range below {:#x} above the \
             probe image is [{:#x}, {:#x}), {} bytes",
            cmd,
            size,
            phys::CACHED_LIMIT,
            start,
            end,
            room
        ));
    }
    let base = arena.alloc(size, align, cmd)?;
    Ok((arena, base))
}

impl Drop for Arena {
    fn drop(&mut self) {
        TAKEN.store(false, Ordering::Release);
    }
}
