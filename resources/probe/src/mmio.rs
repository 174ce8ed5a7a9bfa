//! Bounds-checked MMIO windows (PCI ECAM, device BAR regions). A window is created only for a
//! range inside the identity map (below 4 GiB, or in the GiB above it mapped for devices) that
//! does not overlap usable RAM, so accesses
//! through it can never touch memory the probe's Rust code owns. Out-of-range accesses read
//! all-ones and drop writes instead of reaching anything else.

use crate::bootinfo::BootInfo;
use crate::err;
use crate::error::Result;
use crate::phys;
use core::fmt;

/// Whether `[base, end)` lies in the device GiB above 4 GiB.
fn in_high_mmio(base: u64, end: u64) -> bool {
    base >= phys::HIGH_MMIO.0 && end <= phys::HIGH_MMIO.1
}

/// A device register range `[base, base + len)`.
#[derive(Clone, Copy)]
pub struct Window {
    pub base: u64,
    pub len: u64,
}

impl Window {
    /// Validates `[base, base + len)`: non-empty, below 4 GiB or inside [`phys::HIGH_MMIO`], not
    /// overlapping RAM (e820 type 1) or the probe image. `what` names the range in error messages.
    pub fn new(boot: &BootInfo, base: u64, len: u64, what: fmt::Arguments) -> Result<Window> {
        if base == 0 {
            return Err(err!("{} is unassigned (address 0)", what));
        }
        let end = base
            .checked_add(len)
            .filter(|&e| len != 0 && (e <= phys::LIMIT || in_high_mmio(base, e)))
            .ok_or_else(|| {
                err!(
                    "{} at {:#x} (+{:#x}) is outside the probe's map (4 GiB, plus 4-5 GiB for devices)",
                    what,
                    base,
                    len
                )
            })?;
        let image = crate::dma::image_range();
        let overlaps = |a: u64, b: u64| base < b && a < end;
        if overlaps(image.0, image.1)
            || boot
                .e820()
                .iter()
                .any(|e| e.kind == 1 && overlaps(e.addr, e.addr.saturating_add(e.size)))
        {
            return Err(err!("{} at {:#x} (+{:#x}) overlaps RAM", what, base, len));
        }
        Ok(Window { base, len })
    }

    /// A sub-window `[off, off + len)`, or None if it does not fit.
    pub fn sub(&self, off: u64, len: u64) -> Option<Window> {
        let end = off.checked_add(len)?;
        (len != 0 && end <= self.len).then_some(Window {
            base: self.base + off,
            len,
        })
    }

    fn addr(&self, off: u64, size: u64) -> Option<usize> {
        let end = off.checked_add(size)?;
        (end <= self.len && off.is_multiple_of(size)).then_some((self.base + off) as usize)
    }

    /// 8-bit read (all-ones if out of range).
    pub fn read8(&self, off: u64) -> u8 {
        match self.addr(off, 1) {
            // SAFETY: `addr` is inside a validated device window: identity-mapped, not RAM.
            Some(a) => unsafe { core::ptr::read_volatile(a as *const u8) },
            None => u8::MAX,
        }
    }

    /// 16-bit read (all-ones if out of range or misaligned).
    pub fn read16(&self, off: u64) -> u16 {
        match self.addr(off, 2) {
            // SAFETY: as in `read8`; the address is 2-byte aligned.
            Some(a) => unsafe { core::ptr::read_volatile(a as *const u16) },
            None => u16::MAX,
        }
    }

    /// 32-bit read (all-ones if out of range or misaligned).
    pub fn read32(&self, off: u64) -> u32 {
        match self.addr(off, 4) {
            // SAFETY: as in `read8`; the address is 4-byte aligned.
            Some(a) => unsafe { core::ptr::read_volatile(a as *const u32) },
            None => u32::MAX,
        }
    }

    /// 8-bit write (dropped if out of range).
    pub fn write8(&self, off: u64, v: u8) {
        if let Some(a) = self.addr(off, 1) {
            // SAFETY: as in `read8`.
            unsafe { core::ptr::write_volatile(a as *mut u8, v) }
        }
    }

    /// 16-bit write (dropped if out of range or misaligned).
    pub fn write16(&self, off: u64, v: u16) {
        if let Some(a) = self.addr(off, 2) {
            // SAFETY: as in `read16`.
            unsafe { core::ptr::write_volatile(a as *mut u16, v) }
        }
    }

    /// 32-bit write (dropped if out of range or misaligned).
    pub fn write32(&self, off: u64, v: u32) {
        if let Some(a) = self.addr(off, 4) {
            // SAFETY: as in `read32`.
            unsafe { core::ptr::write_volatile(a as *mut u32, v) }
        }
    }
}
