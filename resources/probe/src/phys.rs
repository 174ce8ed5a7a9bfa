//! Access to guest-physical memory. The first 4 GiB are identity mapped and user accessible,
//! so physical addresses can be dereferenced directly once they are range-checked.

/// End of the identity map.
pub const LIMIT: u64 = 0x1_0000_0000;
/// The uncached GiB above [`LIMIT`], mapped for device windows only (never RAM: the 64-bit
/// PCI window starts there when RAM ends below 4 GiB), see `asm/entry.s`.
pub const HIGH_MMIO: (u64, u64) = (LIMIT, LIMIT + 0x4000_0000);
/// End of the cacheable part of the identity map: the top GiB (MMIO: PCI, IOAPIC, LAPIC) is
/// mapped uncached (PCD|PWT), see the page tables in `asm/entry.s`.
pub const CACHED_LIMIT: u64 = 0xc000_0000;

/// Returns `len` bytes at physical `addr`, or None if the range is null or not mapped.
pub fn slice(addr: u64, len: u64) -> Option<&'static [u8]> {
    if addr == 0 || len > LIMIT || addr > LIMIT - len {
        return None;
    }
    // SAFETY: the range lies inside the identity-mapped, user-accessible first 4 GiB; the probe
    // never writes to firmware tables or boot info it reads through these slices.
    Some(unsafe { core::slice::from_raw_parts(addr as usize as *const u8, len as usize) })
}

/// Little-endian u8 at `off`, None if out of bounds.
pub fn u8_at(b: &[u8], off: usize) -> Option<u8> {
    b.get(off).copied()
}

/// Little-endian u16 at `off`, None if out of bounds.
pub fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// Little-endian u32 at `off`, None if out of bounds.
pub fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Little-endian u64 at `off`, None if out of bounds.
pub fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let lo = u32_at(b, off)? as u64;
    let hi = u32_at(b, off.checked_add(4)?)? as u64;
    Some(lo | (hi << 32))
}

/// Byte checksum of a slice (valid ACPI/MP structures sum to zero).
pub fn checksum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
}

/// Volatile 32-bit MMIO read.
pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: callers pass LAPIC register addresses, which are mapped (uncached) and aligned.
    unsafe { core::ptr::read_volatile(addr as usize as *const u32) }
}

/// Volatile 32-bit MMIO write.
pub fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: as in `mmio_read32`.
    unsafe { core::ptr::write_volatile(addr as usize as *mut u32, v) }
}
