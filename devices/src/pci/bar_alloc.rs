//! A first-fit allocator for BAR addresses, for the 32-bit MMIO hole, the space above RAM, or
//! port I/O. Sizes are powers of two and every allocation is naturally aligned (to its size,
//! or to a larger requested alignment), as BARs require.

use std::collections::BTreeMap;

/// Hands out naturally aligned, non-overlapping ranges of `[start, end)`.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    start: u64,
    end: u64,
    /// Allocated ranges: base -> size.
    used: BTreeMap<u64, u64>,
}

impl BarAllocator {
    /// Manages the half-open range `[start, end)`; empty if `end <= start`.
    pub fn new(start: u64, end: u64) -> Self {
        Self {
            start,
            end: end.max(start),
            used: BTreeMap::new(),
        }
    }

    /// Start of the managed range.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// End (exclusive) of the managed range.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Allocates `size` bytes (a non-zero power of two) aligned to `max(size, align)` (`align`
    /// a power of two, or 0 for natural alignment); the lowest fitting address wins. `None`
    /// if the request is invalid or nothing fits.
    pub fn allocate(&mut self, size: u64, align: u64) -> Option<u64> {
        if !size.is_power_of_two() || (align != 0 && !align.is_power_of_two()) {
            return None;
        }
        let align = size.max(align);
        let align_up = |addr: u64| addr.checked_add(align - 1).map(|a| a & !(align - 1));
        let mut candidate = align_up(self.start)?;
        // Ranges are sorted; try the gap before each one, then the space after the last.
        for (&base, &len) in &self.used {
            let end = candidate.checked_add(size)?;
            if end <= base {
                break;
            }
            candidate = candidate.max(align_up(base.checked_add(len)?)?);
        }
        let end = candidate.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.used.insert(candidate, size);
        Some(candidate)
    }

    /// Frees the allocation at `addr`; returns its size, or `None` if nothing starts there.
    pub fn free(&mut self, addr: u64) -> Option<u64> {
        self.used.remove(&addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_alignment() {
        let mut a = BarAllocator::new(0xc000_1000, 0xfec0_0000);
        assert_eq!(a.allocate(0x1000, 0), Some(0xc000_1000));
        // 64 KiB must be 64 KiB aligned: skip to the next boundary.
        assert_eq!(a.allocate(0x1_0000, 0), Some(0xc001_0000));
        // Small allocations fill the gap left behind.
        assert_eq!(a.allocate(0x1000, 0), Some(0xc000_2000));
        // Larger explicit alignment.
        assert_eq!(a.allocate(0x100, 0x10_0000), Some(0xc010_0000));
        assert_eq!(a.allocate(0x100, 0), Some(0xc000_3000));
        for addr in [
            0xc000_1000u64,
            0xc001_0000,
            0xc000_2000,
            0xc010_0000,
            0xc000_3000,
        ] {
            assert!(a.used.contains_key(&addr));
        }
    }

    #[test]
    fn exhaustion_and_invalid_requests() {
        let mut a = BarAllocator::new(0x1000, 0x5000);
        assert_eq!(a.allocate(0x3000, 0), None);
        assert_eq!(a.allocate(0, 0), None);
        assert_eq!(a.allocate(0x1000, 0x300), None);
        assert_eq!(a.allocate(0x2000, 0), Some(0x2000));
        assert_eq!(a.allocate(0x1000, 0), Some(0x1000));
        assert_eq!(a.allocate(0x1000, 0), Some(0x4000));
        assert_eq!(a.allocate(0x1000, 0), None);
        assert_eq!(a.allocate(0x10, 0), None);
        assert_eq!(a.free(0x2000), Some(0x2000));
        assert_eq!(a.free(0x2000), None);
        assert_eq!(a.allocate(0x1000, 0), Some(0x2000));
        assert_eq!(a.allocate(0x1000, 0), Some(0x3000));
        assert_eq!(a.allocate(0x1000, 0), None);
    }

    #[test]
    fn top_of_address_space_never_overflows() {
        let mut a = BarAllocator::new(u64::MAX - 0xfff, u64::MAX);
        assert_eq!(a.allocate(0x1000, 0), None);
        assert_eq!(a.allocate(0x800, 0), Some(u64::MAX - 0xfff));
        assert_eq!(a.allocate(1 << 63, 0), None);
        let mut empty = BarAllocator::new(0x2000, 0x1000);
        assert_eq!(empty.allocate(0x10, 0), None);
        let mut big = BarAllocator::new(0x1_0000_0000, 1 << 46);
        assert_eq!(big.allocate(1 << 40, 0), Some(1 << 40));
    }
}
