//! Host mappings behind guest RAM: private anonymous memory (with THP and KSM advice), a
//! shared memfd, or hugetlb pages (anonymous `MAP_HUGETLB`, or a `MFD_HUGETLB` memfd when
//! shared). Every mapping is excluded from core dumps.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, MmapRegion};

use super::align::AlignedHole;
use super::MemoryError;

/// How guest RAM is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backing {
    /// Host page size: 4 KiB, or the hugetlb page size.
    pub page_size: u64,
    /// hugetlb pages from the host's pool.
    pub hugetlb: bool,
    /// A `MAP_SHARED` memfd instead of private memory.
    pub shared: bool,
    /// Advise transparent huge pages (4 KiB backing only).
    pub thp: bool,
    /// Advise KSM merging (4 KiB backing only).
    pub mergeable: bool,
}

impl Backing {
    /// Words for logs: "2 MiB hugetlb, shared", "4 KiB + THP, mergeable".
    pub fn describe(&self) -> String {
        let mut s = if self.hugetlb {
            format!(
                "{} hugetlb pages",
                crate::config::page_size_name(self.page_size)
            )
        } else if self.thp {
            "4 KiB pages + THP".to_string()
        } else {
            "4 KiB pages, THP off".to_string()
        };
        if self.shared {
            s.push_str(", shared memfd");
        }
        if self.mergeable {
            s.push_str(", KSM mergeable");
        }
        s
    }
}

/// log2 of a page size, as encoded in `MAP_HUGE_*` / `MFD_HUGE_*` flags.
fn huge_flag(page_size: u64) -> i32 {
    (page_size.trailing_zeros() as i32) << libc::MAP_HUGE_SHIFT
}

fn memfd(name: &str, hugetlb_page: Option<u64>, size: u64) -> Result<File, MemoryError> {
    let cname = CString::new(name).map_err(|_| MemoryError::Map {
        what: "memfd name",
        size,
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let mut flags = libc::MFD_CLOEXEC;
    if let Some(page) = hugetlb_page {
        flags |= libc::MFD_HUGETLB | huge_flag(page) as u32;
    }
    // SAFETY: `cname` is a valid NUL-terminated string; the call creates a new fd and touches
    // no memory of ours.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::Map {
            what: "memfd_create",
            size,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(|source| MemoryError::Map {
        what: "memfd ftruncate",
        size,
        source,
    })?;
    Ok(file)
}

/// Maps `size` bytes with `backing`. Nothing is touched: the caller binds the range to a node
/// (if any) and advises it before the first fault.
pub fn map(name: &str, size: u64, backing: &Backing) -> Result<MmapRegion, MemoryError> {
    let len = usize::try_from(size).map_err(|_| MemoryError::RegionTooLarge(size))?;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let builder = MmapRegionBuilder::new(len).with_mmap_prot(prot);
    let builder = match (backing.hugetlb, backing.shared) {
        (true, true) => builder
            .with_file_offset(FileOffset::new(
                memfd(name, Some(backing.page_size), size)?,
                0,
            ))
            .with_mmap_flags(libc::MAP_SHARED)
            .with_hugetlbfs(true),
        // Private hugetlb mappings reserve their pages at mmap time, so a pool that is too
        // small fails here rather than with SIGBUS at the first fault.
        (true, false) => builder
            .with_mmap_flags(
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_HUGETLB
                    | huge_flag(backing.page_size),
            )
            .with_hugetlbfs(true),
        (false, true) => builder
            .with_file_offset(FileOffset::new(memfd(name, None, size)?, 0))
            .with_mmap_flags(libc::MAP_SHARED),
        (false, false) => {
            builder.with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
        }
    };
    // hugetlb mappings are aligned to their page size by the kernel; others are steered to
    // a 2 MiB boundary (see `align`). Without a hole the mapping just lands where it lands.
    let hole = if backing.hugetlb {
        None
    } else {
        AlignedHole::new(len)
            .map_err(|e| log::debug!("guest RAM: no aligned gap reserved ({e})"))
            .ok()
    };
    let region = builder.build();
    if let (Some(h), Ok(r)) = (&hole, &region) {
        if r.as_ptr() as usize != h.start {
            // A kernel that aligns large mappings itself, or another thread's mapping.
            log::debug!(
                "guest RAM at {:p}, not in the gap at {:#x}",
                r.as_ptr(),
                h.start
            );
        }
    }
    drop(hole);
    region.map_err(|e| MemoryError::Map {
        what: if backing.hugetlb {
            "mmap of hugetlb pages"
        } else {
            "mmap"
        },
        size,
        source: std::io::Error::other(e.to_string()),
    })
}

fn madvise(addr: *mut u8, len: usize, advice: libc::c_int) -> std::io::Result<()> {
    // SAFETY: `addr..addr+len` is a mapping Keel owns; advice changes only how the kernel
    // treats it, not its contents (none of the advice values used here discards data).
    let rc = unsafe { libc::madvise(addr.cast(), len, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Applies the advice `backing` asks for to a fresh mapping: no core dumps, THP on or off,
/// KSM. Only excluding it from core dumps is required; the rest degrades with a warning on a
/// kernel without THP or KSM.
pub fn advise(addr: *mut u8, len: usize, backing: &Backing) -> Result<(), MemoryError> {
    madvise(addr, len, libc::MADV_DONTDUMP).map_err(|source| MemoryError::Advise {
        advice: "MADV_DONTDUMP",
        source,
    })?;
    if backing.hugetlb {
        return Ok(());
    }
    let thp = if backing.thp {
        ("MADV_HUGEPAGE", libc::MADV_HUGEPAGE)
    } else {
        ("MADV_NOHUGEPAGE", libc::MADV_NOHUGEPAGE)
    };
    if let Err(e) = madvise(addr, len, thp.1) {
        log::warn!("guest RAM: {} refused ({e}); the host may lack THP", thp.0);
    }
    if backing.mergeable {
        if let Err(e) = madvise(addr, len, libc::MADV_MERGEABLE) {
            log::warn!("guest RAM: MADV_MERGEABLE refused ({e}); the host may lack KSM");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Backing {
        Backing {
            page_size: 4096,
            hugetlb: false,
            shared: false,
            thp: true,
            mergeable: true,
        }
    }

    /// The /proc/self/smaps entry of the mapping that starts at `addr`.
    fn smaps_block(smaps: &str, addr: usize) -> Option<String> {
        let is_header = |l: &str| {
            l.split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'))
                .is_some_and(|(a, b)| {
                    a.bytes().all(|c| c.is_ascii_hexdigit())
                        && b.bytes().all(|c| c.is_ascii_hexdigit())
                })
        };
        let start = format!("{addr:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        let header = lines.next()?;
        let body: Vec<&str> = lines.take_while(|l| !is_header(l)).collect();
        Some(format!("{header}\n{}", body.join("\n")))
    }

    #[test]
    fn flags_encode_the_page_size() {
        assert_eq!(huge_flag(2 << 20), libc::MAP_HUGE_2MB);
        assert_eq!(huge_flag(1 << 30), libc::MAP_HUGE_1GB);
        assert_eq!(huge_flag(2 << 20) as u32, libc::MFD_HUGE_2MB);
    }

    #[test]
    fn private_and_shared_mappings_work_and_are_advised() {
        for shared in [false, true] {
            let b = Backing { shared, ..small() };
            let region = map("keel-test", 4 << 20, &b).unwrap();
            assert_eq!(region.size(), 4 << 20);
            assert_eq!(region.file_offset().is_some(), shared);
            advise(region.as_ptr(), region.size(), &b).unwrap();
            // SAFETY: the region is 4 MiB, mapped read-write and owned by this test.
            unsafe { region.as_ptr().add(4096).write(7) };
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let block = smaps_block(&smaps, region.as_ptr() as usize).unwrap();
            let flags = block
                .lines()
                .find(|l| l.starts_with("VmFlags:"))
                .unwrap_or_default();
            assert!(flags.contains(" dd"), "no DONTDUMP: {flags}");
            if !shared {
                assert!(flags.contains(" hg"), "no MADV_HUGEPAGE: {flags}");
            }
        }
    }

    #[test]
    fn describe_names_the_backing() {
        assert_eq!(small().describe(), "4 KiB pages + THP, KSM mergeable");
        let b = Backing {
            page_size: 2 << 20,
            hugetlb: true,
            shared: true,
            thp: false,
            mergeable: false,
        };
        assert_eq!(b.describe(), "2 MiB hugetlb pages, shared memfd");
    }
}
