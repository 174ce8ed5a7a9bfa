//! Guest RAM at a 2 MiB-aligned host address. KVM maps a guest page with a 2 MiB page in the
//! nested (EPT/NPT) tables only where the guest-physical and the host-virtual address agree
//! modulo 2 MiB; RAM that is not aligned on the host is mapped with 4 KiB pages whatever THP
//! does, at the cost of one nested page fault per 4 KiB touched.
//!
//! Linux 6.8 and later align large anonymous mappings by themselves. Older kernels (the nested
//! rig's L1 runs 6.1, as do many production hosts) place a mapping at the top of the highest
//! free gap, with no alignment. vm-memory maps guest RAM itself and takes no address hint, so
//! Keel steers that top-down placement instead: [`AlignedHole`] leaves a gap of exactly the
//! mapping's size at an aligned address, fenced by `PROT_NONE` guards, and the next mapping of
//! that size goes there. The guards go as soon as RAM is mapped; RAM stays owned by vm-memory.
//! Whether it worked is checked on the result ([`is_aligned`]), not assumed: another thread
//! mapping memory at the same moment can take the gap.

use std::io;

/// The alignment that lets guest RAM use 2 MiB pages in the nested page tables.
pub const RAM_ALIGN: usize = 2 << 20;

/// Whether `addr` is [`RAM_ALIGN`]-aligned.
pub fn is_aligned(addr: *const u8) -> bool {
    (addr as usize).is_multiple_of(RAM_ALIGN)
}

/// A free gap of exactly `len` bytes at an aligned address, with reserved, inaccessible guard
/// ranges on both sides (unmapped on drop).
pub struct AlignedHole {
    /// Start of the gap.
    pub start: usize,
    guards: [(usize, usize); 2],
}

impl AlignedHole {
    /// Reserves `len + RAM_ALIGN` bytes and frees the aligned `len` bytes inside.
    pub fn new(len: usize) -> io::Result<AlignedHole> {
        let total = len
            .checked_add(RAM_ALIGN)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a fresh anonymous PROT_NONE reservation at an address the kernel picks; it
        // overlaps nothing of ours and is only ever unmapped by this type.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = base as usize;
        let start = base.next_multiple_of(RAM_ALIGN);
        let end = start + len;
        let hole = AlignedHole {
            start,
            guards: [(base, start - base), (end, base + total - end)],
        };
        unmap(start, len)?;
        Ok(hole)
    }
}

impl Drop for AlignedHole {
    fn drop(&mut self) {
        for &(addr, len) in &self.guards {
            if let Err(e) = unmap(addr, len) {
                log::warn!("cannot remove the guard at {addr:#x}+{len:#x}: {e}");
            }
        }
    }
}

/// Unmaps `[addr, addr + len)` (nothing if `len` is 0).
fn unmap(addr: usize, len: usize) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: the range lies inside the reservation `AlignedHole::new` made, which nothing
    // else owns or uses.
    let rc = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// mmap(NULL, len): where the kernel puts the next anonymous mapping of that size.
    fn map_anywhere(len: usize) -> usize {
        // SAFETY: a fresh anonymous mapping; unmapped by the caller.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return 0;
        }
        p as usize
    }

    /// In a forked child (one thread, so no other mapping can take the hole meanwhile):
    /// 0 if the next mapping of `len` bytes lands at the hole's start, 1 if elsewhere, 2 if
    /// the hole could not be made. The child only makes system calls (no allocation: the
    /// parent's other threads may hold the allocator's locks).
    fn lands_in_hole_in_child(len: usize) -> i32 {
        // SAFETY: fork in a test; the child runs only the async-signal-safe code below and
        // leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let code = match AlignedHole::new(len) {
                Ok(hole) if map_anywhere(len) == hole.start => 0,
                Ok(_) => 1,
                Err(_) => 2,
            };
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child, with a valid status pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(rc, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn the_next_mapping_of_that_size_lands_in_the_aligned_hole() {
        // Not a multiple of 2 MiB, so that a kernel that aligns large mappings by itself
        // (6.8+) places it by the plain top-down rule, as every kernel does without THP
        // alignment: the test then fails if the hole does not steer it.
        assert_eq!(lands_in_hole_in_child((6 << 20) + 4096), 0);
    }

    #[test]
    fn guards_are_released() {
        let len = 4 << 20;
        let hole = AlignedHole::new(len).unwrap();
        let guards = hole.guards;
        drop(hole);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for (addr, glen) in guards.into_iter().filter(|g| g.1 > 0) {
            let range = format!("{addr:x}-{:x} ---p", addr + glen);
            assert!(!maps.contains(&range), "{range} still mapped");
        }
    }
}
