//! Guest RAM to and from the snapshot file.
//!
//! Writing: RAM goes out in 1 MiB chunks straight from guest memory (no copy), each at a
//! 1 MiB-aligned file offset, with up to [`WRITES_IN_FLIGHT`] writes queued on an io_uring,
//! on a file opened with O_DIRECT where the file system allows it: aligned, parallel writes
//! that bypass the page cache, which keeps the disk busy instead of forcing a
//! read-modify-write per request. Chunks of zeroes are not written; the extent index says
//! which chunks are there.
//!
//! Reading: one request at a time, sequential, as large as the extents allow (runs of
//! extents contiguous in the file and in guest memory, up to [`READ_REQUEST`]), straight into
//! guest memory, each extent's CRC checked once it is in.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::format::{RamExtent, RAM_CHUNK};
use super::uring::{Done, Write, WriteRing};

/// Writes queued at once (8 x 1 MiB keeps a disk's queue full without a deep backlog).
pub const WRITES_IN_FLIGHT: usize = 8;
/// The largest read a restore issues.
pub const READ_REQUEST: u64 = 16 << 20;

/// One mapped piece of guest RAM.
#[derive(Debug, Clone, Copy)]
pub struct RamRegion {
    /// Guest physical address.
    pub guest: u64,
    /// Host address it is mapped at.
    pub host: *mut u8,
    /// Length in bytes.
    pub len: u64,
}

/// What writing RAM produced.
#[derive(Debug, Default)]
pub struct WrittenRam {
    /// One entry per chunk written.
    pub extents: Vec<RamExtent>,
    /// The file offset after the last chunk (1 MiB-aligned).
    pub end: u64,
    /// Chunks skipped because they held only zeroes.
    pub zero_chunks: u64,
}

/// Whether `bytes` are all zero.
pub(super) fn is_zero(bytes: &[u8]) -> bool {
    // SAFETY: reinterpreting initialized bytes as u64 words is valid for any bit pattern;
    // `align_to` returns only the properly aligned middle part as words.
    let (head, words, tail) = unsafe { bytes.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Writes the non-zero 1 MiB chunks of `regions` to `file` from offset `start` (1 MiB
/// aligned). The regions must stay mapped, and for a consistent image unchanged, meanwhile.
/// `progress` counts the RAM gone through (written or skipped).
pub fn write_ram(
    file: &File,
    regions: &[RamRegion],
    start: u64,
    progress: &AtomicU64,
) -> io::Result<WrittenRam> {
    let mut ring = WriteRing::new(file.as_raw_fd(), WRITES_IN_FLIGHT as u32 * 2)?;
    let mut done = Vec::new();
    let mut out = WrittenRam {
        end: start,
        ..Default::default()
    };
    let mut first_error = Ok(());
    let mut check = |done: &mut Done<()>| {
        for (_, outcome) in done.drain(..) {
            if first_error.is_ok() {
                first_error = outcome;
            }
        }
        std::mem::replace(&mut first_error, Ok(()))
    };
    let result = (|| {
        for r in regions {
            let mut at = 0;
            while at < r.len {
                let len = (r.len - at).min(RAM_CHUNK);
                // SAFETY: `at + len <= r.len`, inside the mapped region.
                let host = unsafe { r.host.add(at as usize) };
                // SAFETY: the region is mapped and readable for its whole length; guest
                // RAM is plain bytes.
                let bytes = unsafe { std::slice::from_raw_parts(host, len as usize) };
                if is_zero(bytes) {
                    out.zero_chunks += 1;
                } else {
                    out.extents.push(RamExtent {
                        guest: r.guest + at,
                        len,
                        offset: out.end,
                        crc: crc32fast::hash(bytes),
                    });
                    while ring.in_flight() >= WRITES_IN_FLIGHT {
                        ring.reap(1, &mut done)?;
                        check(&mut done)?;
                    }
                    let w = Write {
                        src: host,
                        offset: out.end,
                        len: len as u32,
                    };
                    ring.push((), w, &mut done)?;
                    out.end += RAM_CHUNK;
                }
                progress.fetch_add(len, Ordering::Relaxed);
                at += len;
            }
        }
        Ok(())
    })();
    // Every write is reaped before returning: they read guest RAM until then.
    let mut drained = Ok(());
    while ring.in_flight() > 0 {
        if let Err(e) = ring.reap(1, &mut done) {
            drained = drained.and(Err(e));
        }
    }
    let outcomes = check(&mut done);
    result.and(drained).and(outcomes).map(|()| out)
}

/// Where extent runs land in guest memory.
pub trait GuestTarget {
    /// The host address of `len` bytes at guest address `guest`, if they are mapped
    /// contiguously.
    fn host(&self, guest: u64, len: u64) -> Option<*mut u8>;
}

/// What a read found wrong.
#[derive(Debug, thiserror::Error)]
pub enum ReadRamError {
    /// The read failed or the file ended early.
    #[error("cannot read guest RAM at file offset {offset:#x}")]
    Io {
        /// Where.
        offset: u64,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// An extent is not in guest RAM.
    #[error("the RAM extent at guest {0:#x} is not in guest memory")]
    Unmapped(u64),
    /// An extent's bytes do not match its CRC.
    #[error("the RAM extent at guest {0:#x} is corrupted (CRC-32 mismatch)")]
    Checksum(u64),
    /// The thread checking CRCs failed.
    #[error("the CRC checking thread failed")]
    Checker,
}

/// How many leading extents of `rest` one read covers: contiguous in the file and in guest
/// memory, every one but the last a full chunk, at most [`READ_REQUEST`] bytes.
fn run_len(rest: &[RamExtent]) -> usize {
    let mut n = 1;
    while n < rest.len() {
        let (prev, next) = (&rest[n - 1], &rest[n]);
        let contiguous = prev.len == RAM_CHUNK
            && next.offset == prev.offset + RAM_CHUNK
            && next.guest == prev.guest + prev.len;
        if !contiguous || (n as u64 + 1) * RAM_CHUNK > READ_REQUEST {
            break;
        }
        n += 1;
    }
    n
}

/// One read of a restore: extents contiguous in the file and in guest memory.
struct Run {
    offset: u64,
    host: usize,
    len: u64,
    extents: std::ops::Range<usize>,
}

/// Groups `sorted` (by file offset) into reads, each checked to land in guest memory.
fn plan_runs(sorted: &[RamExtent], target: &dyn GuestTarget) -> Result<Vec<Run>, ReadRamError> {
    let mut runs = Vec::new();
    let mut at = 0;
    while let Some(first) = sorted.get(at) {
        let n = run_len(&sorted[at..]);
        let len = sorted[at..at + n].iter().map(|e| e.len).sum::<u64>();
        let host = target
            .host(first.guest, len)
            .ok_or(ReadRamError::Unmapped(first.guest))?;
        runs.push(Run {
            offset: first.offset,
            host: host as usize,
            len,
            extents: at..at + n,
        });
        at += n;
    }
    Ok(runs)
}

/// Faults in the guest memory of `runs` for writing, in file order, until `stop`: run ahead
/// of the reads on a thread of its own, it takes the page faults (and on a host that gave
/// unused memory back to its own host, the cost of getting it back) off the reading thread.
fn prefault(runs: &[Run], stop: &AtomicBool) {
    for r in runs {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // SAFETY: advises mapped guest RAM (checked by `plan_runs`) that nothing else uses
        // during a restore; populating changes no content that is not about to be read over.
        let rc = unsafe {
            libc::madvise(
                r.host as *mut libc::c_void,
                r.len as usize,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc != 0 {
            // Only an optimisation: the reads fault the pages in themselves.
            return;
        }
    }
}

/// Reads every extent into guest memory, checking each one's CRC. Returns the bytes read.
/// One read at a time, in file order; meanwhile one thread faults guest memory in ahead of
/// the reads and another checks the CRCs of what was read.
pub fn read_ram(
    file: &File,
    extents: &[RamExtent],
    target: &dyn GuestTarget,
) -> Result<u64, ReadRamError> {
    let mut sorted = extents.to_vec();
    sorted.sort_by_key(|e| e.offset);
    let runs = plan_runs(&sorted, target)?;
    let stop = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<&Run>();
    std::thread::scope(|scope| {
        scope.spawn(|| prefault(&runs, &stop));
        let checker = scope.spawn(|| -> Result<(), ReadRamError> {
            for run in rx {
                // SAFETY: the run was read in full (sent after `read_exact_at`), lies in
                // guest memory, and nothing writes it during a restore.
                let buf =
                    unsafe { std::slice::from_raw_parts(run.host as *const u8, run.len as usize) };
                let mut at = 0usize;
                for e in &sorted[run.extents.clone()] {
                    if crc32fast::hash(&buf[at..at + e.len as usize]) != e.crc {
                        return Err(ReadRamError::Checksum(e.guest));
                    }
                    at += e.len as usize;
                }
            }
            Ok(())
        });
        let read = (|| {
            for run in &runs {
                // SAFETY: `plan_runs` checked that `len` bytes at `host` are mapped guest
                // RAM; no vCPU runs during a restore.
                let buf = unsafe {
                    std::slice::from_raw_parts_mut(run.host as *mut u8, run.len as usize)
                };
                file.read_exact_at(buf, run.offset)
                    .map_err(|source| ReadRamError::Io {
                        offset: run.offset,
                        source,
                    })?;
                if tx.send(run).is_err() {
                    break;
                }
            }
            Ok(())
        })();
        drop(tx);
        stop.store(true, Ordering::Relaxed);
        let checked = checker.join().unwrap_or(Err(ReadRamError::Checker));
        read.and(checked)
    })?;
    Ok(runs.iter().map(|r| r.len).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(guest: u64, offset: u64, len: u64) -> RamExtent {
        RamExtent {
            guest,
            len,
            offset,
            crc: 0,
        }
    }

    #[test]
    fn runs_stop_at_gaps_in_the_file_or_in_guest_memory_and_at_the_request_size() {
        let m = RAM_CHUNK;
        assert_eq!(
            run_len(&[ext(0, m, m), ext(m, 2 * m, m), ext(2 * m, 3 * m, m)]),
            3
        );
        assert_eq!(
            run_len(&[ext(0, m, m), ext(2 * m, 2 * m, m)]),
            1,
            "guest gap"
        );
        assert_eq!(run_len(&[ext(0, m, m), ext(m, 3 * m, m)]), 1, "file gap");
        assert_eq!(
            run_len(&[ext(0, m, 4096), ext(4096, 2 * m, m)]),
            1,
            "short chunk"
        );
        let long: Vec<_> = (0..40).map(|i| ext(i * m, (i + 1) * m, m)).collect();
        assert_eq!(run_len(&long) as u64, READ_REQUEST / m);
    }

    #[test]
    fn zero_detection_sees_a_single_byte_anywhere() {
        let mut v = vec![0u8; 3 * 4096 + 5];
        assert!(is_zero(&v));
        for at in [0, 1, 4095, 8192, v.len() - 1] {
            v[at] = 1;
            assert!(!is_zero(&v), "byte {at}");
            v[at] = 0;
        }
    }

    /// Guest memory in a test: `len` bytes at `ptr`, owned by a Vec kept alive meanwhile.
    struct Buffer {
        ptr: *mut u8,
        len: usize,
    }

    impl GuestTarget for Buffer {
        fn host(&self, guest: u64, len: u64) -> Option<*mut u8> {
            let end = guest.checked_add(len)?;
            (end <= self.len as u64).then(|| self.ptr.wrapping_add(guest as usize))
        }
    }

    #[test]
    fn ram_written_comes_back_without_the_zero_chunks_and_a_flipped_bit_is_caught() {
        let mut ram = vec![0u8; 5 * RAM_CHUNK as usize + 8192];
        ram[10] = 1;
        ram[2 * RAM_CHUNK as usize + 7] = 2;
        ram[3 * RAM_CHUNK as usize] = 3;
        ram[5 * RAM_CHUNK as usize + 4096] = 4;
        let dir = std::env::temp_dir().join(format!("keel-ram-io-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&dir)
            .unwrap();
        let regions = [RamRegion {
            guest: 0,
            host: ram.as_mut_ptr(),
            len: ram.len() as u64,
        }];
        let progress = AtomicU64::new(0);
        let written = write_ram(&file, &regions, RAM_CHUNK, &progress).unwrap();
        assert_eq!(progress.load(Ordering::Relaxed), ram.len() as u64);
        assert_eq!(written.zero_chunks, 2);
        assert_eq!(
            written.extents.iter().map(|e| e.guest).collect::<Vec<_>>(),
            [0, 2 * RAM_CHUNK, 3 * RAM_CHUNK, 5 * RAM_CHUNK]
        );
        assert_eq!(written.end, 5 * RAM_CHUNK);
        let mut back_ram = vec![0xffu8; ram.len()];
        let back = Buffer {
            ptr: back_ram.as_mut_ptr(),
            len: back_ram.len(),
        };
        let mut expect = ram.clone();
        // Zero chunks are not written: a restore starts from zeroed RAM.
        for chunk in [1, 4] {
            let at = chunk * RAM_CHUNK as usize;
            expect[at..at + RAM_CHUNK as usize].fill(0xff);
        }
        read_ram(&file, &written.extents, &back).unwrap();
        assert!(back_ram == expect);
        let mut bad = written.extents.clone();
        bad[2].crc ^= 1;
        assert!(matches!(
            read_ram(&file, &bad, &back),
            Err(ReadRamError::Checksum(g)) if g == 3 * RAM_CHUNK
        ));
        std::fs::remove_file(&dir).unwrap();
    }
}
