//! Pages that the hypervisor writes (pvclock, Hyper-V reference TSC page, hypercall page):
//! 4 KiB aligned statics in .bss, inside the identity map (virtual == physical), read only
//! with volatile loads since the hypervisor changes them behind the compiler's back.

use core::cell::UnsafeCell;

/// One 4 KiB page, zeroed at boot (.bss).
#[repr(C, align(4096))]
pub struct Page(UnsafeCell<[u8; 4096]>);

// SAFETY: the probe is single-threaded at CPL3 (APs only check in and halt); the contents
// are only accessed with volatile loads and stores (`read32`, `read64`, `head`, `clear`), so
// no reference to them exists that the hypervisor's writes could invalidate.
unsafe impl Sync for Page {}

impl Page {
    /// A zeroed page.
    pub const fn new() -> Self {
        Page(UnsafeCell::new([0; 4096]))
    }

    /// Its guest-physical address (the image is identity mapped).
    pub fn addr(&self) -> u64 {
        self.0.get() as u64
    }

    /// Volatile little-endian u32 at byte offset `off` (rounded down to a multiple of 4
    /// inside the page).
    pub fn read32(&self, off: usize) -> u32 {
        let off = off.min(4092) & !3;
        // SAFETY: in bounds and aligned (by the line above); the page is always mapped; a
        // volatile load of an integer is valid whatever the hypervisor wrote.
        unsafe { core::ptr::read_volatile(self.0.get().cast::<u8>().add(off).cast::<u32>()) }
    }

    /// Volatile little-endian u64 at byte offset `off` (rounded down to a multiple of 8
    /// inside the page).
    pub fn read64(&self, off: usize) -> u64 {
        let off = off.min(4088) & !7;
        // SAFETY: as in `read32`.
        unsafe { core::ptr::read_volatile(self.0.get().cast::<u8>().add(off).cast::<u64>()) }
    }

    /// Zeroes the first `n` bytes (at most the page), e.g. a stale pvclock left by an earlier
    /// command, before the hypervisor is asked to fill it again.
    pub fn clear(&self, n: usize) {
        for i in 0..n.min(4096) {
            // SAFETY: `i` < 4096, inside the page, which is always mapped and writable at CPL3
            // (the identity map has U/S and R/W set).
            unsafe { core::ptr::write_volatile(self.0.get().cast::<u8>().add(i), 0) };
        }
    }

    /// The first `N` bytes (volatile loads).
    pub fn head<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, b) in out.iter_mut().enumerate().take(4096) {
            // SAFETY: `i` < min(N, 4096), inside the page; see `read32`.
            *b = unsafe { core::ptr::read_volatile(self.0.get().cast::<u8>().add(i)) };
        }
        out
    }
}

/// pvclock_vcpu_time_info for kvmclock (needs 32-byte alignment; a page is plenty).
pub static KVMCLOCK: Page = Page::new();
/// Hyper-V reference TSC page.
pub static HV_TSC: Page = Page::new();
/// Hyper-V hypercall page (filled with code by the hypervisor; never executed here).
pub static HV_HYPERCALL: Page = Page::new();
