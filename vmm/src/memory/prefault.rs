//! Faulting guest RAM in before the guest runs, on every allowed host CPU at once: one worker
//! thread per CPU, pinned to it, taking fixed-size chunks from a shared counter and faulting
//! each with `MADV_POPULATE_WRITE` (Linux 5.14+), or by writing one byte per page where the
//! kernel lacks it. Large guests get a progress line about once a second.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::MemoryError;
use crate::placement::{self, CpuSet};

/// Bytes a worker faults per step (rounded up to the page size).
const CHUNK: u64 = 64 << 20;
/// Guests at least this large get progress lines.
const PROGRESS_MIN: u64 = 1 << 30;
/// Most worker threads.
const MAX_WORKERS: usize = 64;

/// One range of host memory to fault in.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    /// Host virtual address.
    pub addr: usize,
    /// Length in bytes (a multiple of the page size).
    pub len: usize,
}

/// How faulting went.
#[derive(Debug, Clone)]
pub struct PrefaultReport {
    /// Bytes faulted in.
    pub bytes: u64,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// `MADV_POPULATE_WRITE` or `touch`.
    pub method: &'static str,
    /// Per worker: the CPU it was pinned to, bytes it faulted and the CPU time it used.
    pub workers: Vec<WorkerReport>,
}

/// One prefault worker's share.
#[derive(Debug, Clone, Copy)]
pub struct WorkerReport {
    /// Host CPU the worker was pinned to (None if pinning failed).
    pub cpu: Option<u32>,
    /// Bytes it faulted.
    pub bytes: u64,
    /// Its thread's CPU time.
    pub cpu_time: Duration,
}

/// A raw address that may cross threads: the ranges stay mapped until `prefault` returns.
#[derive(Clone, Copy)]
struct Chunk {
    addr: usize,
    len: usize,
}

struct Shared {
    chunks: Vec<Chunk>,
    next: AtomicUsize,
    done: AtomicU64,
    failed: AtomicBool,
    error: Mutex<Option<MemoryError>>,
    /// The kernel lacks MADV_POPULATE_WRITE.
    touch_only: bool,
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Writes one byte per page. Only used when the kernel lacks `MADV_POPULATE_WRITE` (before
/// 5.14); the memory is fresh (all zero), so writing a zero changes nothing the guest could
/// see.
fn touch(chunk: Chunk, page: usize) {
    let mut off = 0;
    while off < chunk.len {
        // SAFETY: `chunk` lies inside a read-write mapping owned by GuestRam, which outlives
        // the workers (they are joined before `prefault` returns).
        unsafe { std::ptr::write_volatile((chunk.addr + off) as *mut u8, 0) };
        off += page;
    }
}

fn populate(chunk: Chunk) -> std::io::Result<()> {
    // SAFETY: `chunk` lies inside a read-write mapping owned by GuestRam; populating only
    // allocates pages, it does not change their contents.
    let rc = unsafe {
        libc::madvise(
            chunk.addr as *mut libc::c_void,
            chunk.len,
            libc::MADV_POPULATE_WRITE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether the kernel knows MADV_POPULATE_WRITE: it validates the advice before looking at
/// the (empty) range, so a zero-length call answers without touching anything.
fn populate_supported() -> bool {
    let mut probe = 0u64;
    let page = (&mut probe as *mut u64 as usize) & !4095;
    // SAFETY: a zero-length madvise affects no memory; the address is only checked for
    // page alignment.
    unsafe { libc::madvise(page as *mut libc::c_void, 0, libc::MADV_POPULATE_WRITE) == 0 }
}

fn worker(shared: &Shared, cpu: u32, page: usize) -> WorkerReport {
    let pinned = placement::set_thread_affinity(None, &CpuSet::from_iter([cpu]))
        .map_err(|e| log::debug!("prefault worker not pinned to CPU {cpu}: {e}"))
        .is_ok();
    let mut bytes = 0;
    while !shared.failed.load(Ordering::Relaxed) {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(&chunk) = shared.chunks.get(i) else {
            break;
        };
        if !shared.touch_only {
            match populate(chunk) {
                Ok(()) => {}
                Err(source) => {
                    shared.failed.store(true, Ordering::Relaxed);
                    if let Ok(mut slot) = shared.error.lock() {
                        slot.get_or_insert(MemoryError::Prefault {
                            addr: chunk.addr as u64,
                            source,
                        });
                    }
                    break;
                }
            }
        } else {
            touch(chunk, page);
        }
        bytes += chunk.len as u64;
        shared.done.fetch_add(chunk.len as u64, Ordering::Relaxed);
    }
    WorkerReport {
        cpu: pinned.then_some(cpu),
        bytes,
        cpu_time: thread_cpu_time(),
    }
}

/// `ranges` cut into chunks of `CHUNK` bytes (or one page, if larger), the unit of work.
fn split_into_chunks(ranges: &[Range], page_size: u64) -> Vec<Chunk> {
    let step = CHUNK.max(page_size) as usize;
    let mut chunks = Vec::new();
    for r in ranges {
        let mut off = 0;
        while off < r.len {
            let len = step.min(r.len - off);
            chunks.push(Chunk {
                addr: r.addr + off,
                len,
            });
            off += len;
        }
    }
    chunks
}

/// Runs one worker per CPU in `worker_cpus` over `shared`'s chunks, logging progress every
/// second for large amounts, and collects their reports.
fn run_workers(
    shared: &Shared,
    worker_cpus: &[u32],
    page: usize,
    total: u64,
) -> Result<Vec<WorkerReport>, MemoryError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = worker_cpus
            .iter()
            .map(|&cpu| {
                std::thread::Builder::new()
                    .name(format!("keel-prefault{cpu}"))
                    .spawn_scoped(scope, move || worker(shared, cpu, page))
            })
            .collect();
        let mut last = Instant::now();
        while handles
            .iter()
            .any(|h| h.as_ref().is_ok_and(|h| !h.is_finished()))
        {
            std::thread::sleep(Duration::from_millis(20));
            if total >= PROGRESS_MIN && last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                let done = shared.done.load(Ordering::Relaxed);
                log::info!(
                    "prefaulting guest RAM: {}% ({} of {} MiB)",
                    done * 100 / total.max(1),
                    done >> 20,
                    total >> 20
                );
            }
        }
        handles
            .into_iter()
            .map(|h| {
                h.map_err(|source| MemoryError::PrefaultThread { source })
                    .and_then(|h| h.join().map_err(|_| MemoryError::PrefaultPanicked))
            })
            .collect::<Result<Vec<_>, _>>()
    })
}

/// Faults in every range with one pinned worker per CPU in `cpus` (at most 64).
pub fn prefault(
    ranges: &[Range],
    page_size: u64,
    cpus: &CpuSet,
) -> Result<PrefaultReport, MemoryError> {
    let start = Instant::now();
    let chunks = split_into_chunks(ranges, page_size);
    let total: u64 = ranges.iter().map(|r| r.len as u64).sum();
    let shared = Shared {
        chunks,
        next: AtomicUsize::new(0),
        done: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
        touch_only: !populate_supported(),
    };
    let worker_cpus: Vec<u32> = cpus
        .iter()
        .take(MAX_WORKERS.min(shared.chunks.len()).max(1))
        .collect();
    let page = page_size as usize;
    if total >= PROGRESS_MIN {
        log::info!(
            "prefaulting {} MiB of guest RAM on {} threads",
            total >> 20,
            worker_cpus.len()
        );
    }
    let workers = run_workers(&shared, &worker_cpus, page, total)?;
    if let Some(e) = shared.error.lock().ok().and_then(|mut e| e.take()) {
        return Err(e);
    }
    let bytes = workers.iter().map(|w| w.bytes).sum();
    if bytes != total {
        // Every worker failed to start: nothing faulted the rest.
        return Err(MemoryError::PrefaultIncomplete { done: bytes, total });
    }
    Ok(PrefaultReport {
        bytes,
        elapsed: start.elapsed(),
        method: if shared.touch_only {
            "touch"
        } else {
            "MADV_POPULATE_WRITE"
        },
        workers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of `[addr, addr+len)` resident in memory, by mincore(2): exact for this range
    /// whatever the kernel merges it with or other test threads do next to it.
    fn resident_bytes(addr: usize, len: usize) -> u64 {
        let mut pages = vec![0u8; len.div_ceil(4096)];
        // SAFETY: the range is a mapping the test owns; mincore writes one byte per page into
        // `pages`, which is sized for the range.
        let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, pages.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        pages.iter().filter(|p| **p & 1 != 0).count() as u64 * 4096
    }

    #[test]
    fn every_page_is_faulted_by_pinned_workers() {
        let len = 200 << 20;
        let region = vm_memory::MmapRegion::<()>::new(len).unwrap();
        let addr = region.as_ptr() as usize;
        assert_eq!(resident_bytes(addr, len), 0);
        let cpus = placement::thread_affinity(None).unwrap();
        let report = prefault(&[Range { addr, len }], 4096, &cpus).unwrap();
        assert_eq!(report.bytes, len as u64);
        assert_eq!(report.method, "MADV_POPULATE_WRITE");
        assert_eq!(resident_bytes(addr, len), len as u64);
        assert_eq!(report.workers.len(), cpus.len().min(4));
        for w in &report.workers {
            let cpu = w.cpu.unwrap();
            assert!(cpus.contains(cpu));
        }
        assert_eq!(
            report.workers.iter().map(|w| w.bytes).sum::<u64>(),
            len as u64
        );
    }

    #[test]
    fn touching_faults_the_same_pages() {
        let len = 8 << 20;
        let region = vm_memory::MmapRegion::<()>::new(len).unwrap();
        let addr = region.as_ptr() as usize;
        assert_eq!(resident_bytes(addr, len), 0);
        touch(Chunk { addr, len }, 4096);
        assert_eq!(resident_bytes(addr, len), len as u64);
    }

    #[test]
    fn a_failure_is_reported_with_the_address() {
        // A read-only mapping cannot be populated for writing.
        let len = 1 << 20;
        // SAFETY: a fresh anonymous mapping, unmapped below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let cpus = CpuSet::from_iter([0]);
        let err = prefault(
            &[Range {
                addr: ptr as usize,
                len,
            }],
            4096,
            &cpus,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(&format!("{:#x}", ptr as usize)),
            "{err}"
        );
        // SAFETY: unmapping the mapping made above.
        unsafe { libc::munmap(ptr, len) };
    }
}
