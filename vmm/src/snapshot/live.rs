//! Live snapshots: guest RAM is written while the guest runs, every page as it was at the
//! snapshot instant.
//!
//! Protection is armed in two phases, so that the guest's pause holds only the second.
//! [`LiveRam::start`], while the guest still runs, write-protects all of guest RAM and
//! starts a fault handler thread, which then only records each page written and unprotects
//! it. At the instant (vCPUs parked, disks quiesced) [`LiveRam::instant`] protects those few
//! pages again; the guest then runs on. RAM is cut into units (1 MiB, or one huge page where
//! pages are larger), each protected until it is on disk. A guest write to a protected page
//! (from a vCPU, KVM, an I/O thread or io_uring) faults; the handler copies the page, still
//! as it was at the instant, to a bounded staging pool and unprotects it. When the pool is
//! full the handler waits for the writer to free a slot: the writing guest thread waits too
//! (throttled), and the writer never waits for the handler, so this cannot deadlock.
//!
//! [`LiveRam::write`] ([`writer`]) goes through the units in order with up to eight 1 MiB
//! O_DIRECT writes on an io_uring straight from guest memory. A unit's zero check and CRCs
//! are computed under the lock the handler takes to unprotect a page, over guest memory with
//! each staged page's copy in its place, so they describe the instant. Once a unit's writes
//! are done it is unprotected, and the copies of its pages that faulted are written over the
//! file (the bulk write may have read a page the guest changed after its copy was taken); each
//! copy's slot is freed when that write is done.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::format::RAM_CHUNK;
use super::ram_io::{RamRegion, WrittenRam};
use super::uffd::{Uffd, UffdError, WpFault, FEATURE_WP_HUGETLBFS_SHMEM, FEATURE_WP_UNPOPULATED};

/// Bytes of page copies the handler may hold at once.
pub const STAGING_BYTES: u64 = 64 << 20;
/// The largest page a live snapshot protects one by one.
pub const MAX_PAGE: u64 = 2 << 20;
/// Most latencies kept for the fault statistics.
const MAX_SAMPLES: usize = 1 << 20;

/// Errors of a live snapshot's RAM.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// Pages too large to copy one by one.
    #[error("live snapshots need 4 KiB or 2 MiB pages, guest RAM has {0} KiB pages (use \"mode\":\"paused\")")]
    PageSize(u64),
    /// userfaultfd could not protect guest RAM.
    #[error("cannot write-protect guest RAM")]
    Uffd(#[source] UffdError),
    /// The staging pool or the handler thread could not be set up.
    #[error("cannot set up the write-fault handler")]
    Setup(#[source] io::Error),
}

/// A unit of guest RAM: protected, written and released together.
#[derive(Debug, Clone, Copy)]
struct Unit {
    guest: u64,
    host: u64,
    len: u64,
}

/// Page copies, in slots of one page each.
struct Staging {
    base: *mut u8,
    len: usize,
    page: usize,
}

// SAFETY: the pool is plain memory; who may touch which slot is decided under `Shared::state`.
unsafe impl Send for Staging {}
// SAFETY: as above.
unsafe impl Sync for Staging {}

impl Staging {
    fn new(page: u64) -> io::Result<Self> {
        Self::with_len(STAGING_BYTES.max(page * 4) as usize, page)
    }

    /// `len` bytes of fresh anonymous memory in slots of `page` bytes.
    fn with_len(len: usize, page: u64) -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Staging {
            base: base.cast(),
            len,
            page: page as usize,
        })
    }

    fn slots(&self) -> usize {
        self.len / self.page
    }

    fn slot(&self, i: usize) -> *mut u8 {
        // In bounds: `i < slots()`.
        self.base.wrapping_add(i * self.page)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`, which nothing uses any more.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// What the handler and the writer share under one lock.
struct State {
    /// Before the instant: faults only record the page and unprotect it (its content then
    /// does not matter yet); [`LiveRam::instant`] protects those pages again.
    before_instant: bool,
    /// Pages written before the instant.
    written_before: Vec<u64>,
    released: Vec<bool>,
    /// Per unit: (host address of a page copied, its slot).
    staged: Vec<Vec<(u64, usize)>>,
    free: Vec<usize>,
    stopping: bool,
    faults: u64,
    throttled: u64,
    latencies_ns: Vec<u32>,
}

struct Shared {
    uffd: Uffd,
    /// The registered ranges (host address, length).
    ranges: Vec<(u64, u64)>,
    units: Vec<Unit>,
    page: u64,
    staging: Staging,
    state: Mutex<State>,
    space: Condvar,
}

/// Fault statistics of a live snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultStats {
    /// Write-protect faults handled by copying a page.
    pub faults: u64,
    /// Faults that waited for a free staging slot.
    pub throttled: u64,
    /// Handling time per fault, median and 99th percentile.
    pub p50: Duration,
    /// See `p50`.
    pub p99: Duration,
}

/// Guest RAM write-protected for a live snapshot, with its fault handler. Dropping it
/// unprotects everything and stops the handler, so no guest thread stays blocked.
pub struct LiveRam {
    shared: Arc<Shared>,
    stop: Arc<EventFd>,
    handler: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Cuts `regions` into units of `unit_len`.
fn units(regions: &[RamRegion], unit_len: u64) -> Vec<Unit> {
    let mut out = Vec::new();
    for r in regions {
        let mut at = 0;
        while at < r.len {
            let len = (r.len - at).min(unit_len);
            out.push(Unit {
                guest: r.guest + at,
                host: r.host as u64 + at,
                len,
            });
            at += len;
        }
    }
    out
}

impl Shared {
    fn unit_of(&self, host: u64) -> Option<usize> {
        let i = self.units.partition_point(|u| u.host + u.len <= host);
        self.units.get(i).filter(|u| u.host <= host).map(|_| i)
    }

    /// Handles one write-protect fault: copies the page (unless its unit is on disk already)
    /// and unprotects it, which wakes the faulting thread.
    fn resolve(&self, fault: WpFault) {
        let started = Instant::now();
        let page = fault.address & !(self.page - 1);
        let Some(unit) = self.unit_of(page) else {
            let _ = self.uffd.wake(page, self.page);
            return;
        };
        let mut st = lock(&self.state);
        if st.before_instant {
            // Once unprotected a page faults no more until the instant: the list holds each
            // page at most once (bounded by guest RAM's page count).
            st.written_before.push(page);
            self.unprotect(page);
            return;
        }
        loop {
            if st.released[unit] || st.stopping || st.staged[unit].iter().any(|s| s.0 == page) {
                drop(st);
                // Unprotected already (or being torn down): the faulting thread needs a wake.
                self.unprotect(page);
                return;
            }
            if let Some(slot) = st.free.pop() {
                // SAFETY: `page` is a mapped guest page of `self.page` bytes (inside a unit);
                // the slot is ours until freed, and the page cannot change while it is
                // protected, which it stays until after this copy.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        page as *const u8,
                        self.staging.slot(slot),
                        self.page as usize,
                    )
                };
                st.staged[unit].push((page, slot));
                st.faults += 1;
                self.unprotect(page);
                if st.latencies_ns.len() < MAX_SAMPLES {
                    let ns = started.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32;
                    st.latencies_ns.push(ns);
                }
                return;
            }
            st.throttled += 1;
            st = self
                .space
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Unprotects `page`, which wakes the threads that faulted on it; if the kernel refuses
    /// (it can, while the address space changes), at least wakes them: they fault again and
    /// come back here.
    fn unprotect(&self, page: u64) {
        if let Err(e) = self.uffd.write_protect(page, self.page, false) {
            log::debug!("live snapshot: cannot unprotect {page:#x} ({e}); waking its threads");
            if let Err(e) = self.uffd.wake(page, self.page) {
                log::error!("live snapshot: cannot wake the threads at {page:#x}: {e}");
            }
        }
    }

    /// Marks `unit` on disk and unprotects it; returns its page copies.
    fn release(&self, st: &mut State, unit: usize) -> Vec<(u64, usize)> {
        let u = self.units[unit];
        if let Err(e) = self.uffd.write_protect(u.host, u.len, false) {
            log::error!("live snapshot: cannot unprotect {:#x}: {e}", u.host);
        }
        st.released[unit] = true;
        std::mem::take(&mut st.staged[unit])
    }

    /// Calls `f` on each piece of `[host, host+len)` as it was at the instant: guest memory,
    /// or a staged copy where the page faulted.
    fn for_each_piece(
        &self,
        st: &State,
        unit: usize,
        host: u64,
        len: u64,
        mut f: impl FnMut(&[u8]),
    ) {
        let piece = self.page.min(len);
        if st.staged[unit].is_empty() {
            // SAFETY: as below, with no page copied.
            f(unsafe { std::slice::from_raw_parts(host as *const u8, len as usize) });
            return;
        }
        let staged: HashMap<u64, usize> = st.staged[unit].iter().copied().collect();
        let mut at = host;
        while at < host + len {
            let page = at & !(self.page - 1);
            let n = piece.min(host + len - at) as usize;
            let src = match staged.get(&page) {
                Some(&slot) => self.staging.slot(slot).wrapping_add((at - page) as usize),
                None => at as *const u8 as *mut u8,
            };
            // SAFETY: `src..src+n` lies in a staging slot or in a mapped guest page of this
            // unit, which stays protected (unchanging) while `st` is held.
            f(unsafe { std::slice::from_raw_parts(src, n) });
            at += n as u64;
        }
    }
}

/// Faults in every page of `regions` that was never touched, for read: the page tables then
/// hold a (zero) page everywhere, which write-protection covers on kernels without
/// `WP_UNPOPULATED`. Guest memory does not change.
fn populate(regions: &[RamRegion]) -> Result<(), LiveError> {
    for r in regions {
        // SAFETY: advises a mapped range of guest RAM; MADV_POPULATE_READ only faults pages
        // in for reading and changes no content.
        let rc = unsafe { libc::madvise(r.host.cast(), r.len as usize, libc::MADV_POPULATE_READ) };
        if rc != 0 {
            return Err(LiveError::Setup(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Guest RAM registered with userfaultfd, ready to be write-protected at the instant: made
/// before the guest stops, so that the pause holds only the protection itself.
pub struct Prepared {
    uffd: Uffd,
    regions: Vec<RamRegion>,
    page: u64,
}

impl Prepared {
    /// Registers `regions` (whose pages are `page` bytes) for write-protect faults; on a
    /// kernel without `WP_UNPOPULATED` first faults in every untouched page for reading.
    pub fn new(regions: &[RamRegion], page: u64) -> Result<Self, LiveError> {
        Self::with_features(regions, page, FEATURE_WP_UNPOPULATED)
    }

    /// [`Prepared::new`], asking for the optional features in `wanted` only.
    fn with_features(regions: &[RamRegion], page: u64, wanted: u64) -> Result<Self, LiveError> {
        if page > MAX_PAGE {
            return Err(LiveError::PageSize(page >> 10));
        }
        let (uffd, features) = Uffd::open(
            &[(
                FEATURE_WP_HUGETLBFS_SHMEM,
                "WP_HUGETLBFS_SHMEM (Linux 5.19)",
            )],
            wanted,
        )
        .map_err(LiveError::Uffd)?;
        if features & FEATURE_WP_UNPOPULATED == 0 {
            log::info!("live snapshot: no WP_UNPOPULATED here; faulting in untouched guest RAM");
            populate(regions)?;
        }
        for r in regions {
            uffd.register_wp(r.host as u64, r.len)
                .map_err(LiveError::Uffd)?;
        }
        Ok(Prepared {
            uffd,
            regions: regions.to_vec(),
            page,
        })
    }
}

impl LiveRam {
    /// Write-protects the prepared RAM and starts the fault handler, while the guest still
    /// runs (the first of two phases, so that the pause holds only the second): until
    /// [`LiveRam::instant`], a write only has its page recorded and unprotected.
    pub fn start(prepared: Prepared) -> Result<Self, LiveError> {
        let Prepared {
            uffd,
            regions,
            page,
        } = prepared;
        for r in &regions {
            uffd.write_protect(r.host as u64, r.len, true)
                .map_err(LiveError::Uffd)?;
        }
        let unit_len = RAM_CHUNK.max(page);
        let units = units(&regions, unit_len);
        let staging = Staging::new(page).map_err(LiveError::Setup)?;
        let state = State {
            before_instant: true,
            written_before: Vec::new(),
            released: vec![false; units.len()],
            staged: vec![Vec::new(); units.len()],
            free: (0..staging.slots()).rev().collect(),
            stopping: false,
            faults: 0,
            throttled: 0,
            latencies_ns: Vec::new(),
        };
        let shared = Arc::new(Shared {
            uffd,
            ranges: regions.iter().map(|r| (r.host as u64, r.len)).collect(),
            units,
            page,
            staging,
            state: Mutex::new(state),
            space: Condvar::new(),
        });
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(LiveError::Setup)?);
        let handler = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("keel-snap-wp".into())
                .spawn(move || handle_faults(&shared, &stop))
                .map_err(LiveError::Setup)?
        };
        Ok(LiveRam {
            shared,
            stop,
            handler: Some(handler),
        })
    }

    /// The instant (call with the vCPUs parked and the disks quiesced): protects again the
    /// pages written since [`LiveRam::start`]; from now on every write to guest RAM faults
    /// and copies its page until its unit is on disk.
    pub fn instant(&self) -> Result<(), LiveError> {
        let mut st = lock(&self.shared.state);
        st.before_instant = false;
        let mut pages = std::mem::take(&mut st.written_before);
        pages.sort_unstable();
        let page = self.shared.page;
        let mut i = 0;
        while i < pages.len() {
            // One call per run of adjacent pages.
            let mut end = i + 1;
            while end < pages.len() && pages[end] == pages[end - 1] + page {
                end += 1;
            }
            let len = (end - i) as u64 * page;
            self.shared
                .uffd
                .write_protect(pages[i], len, true)
                .map_err(LiveError::Uffd)?;
            i = end;
        }
        Ok(())
    }

    /// The fault statistics so far.
    pub fn stats(&self) -> FaultStats {
        let st = lock(&self.shared.state);
        let mut l = st.latencies_ns.clone();
        l.sort_unstable();
        let at = |q: f64| {
            l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
                .map_or(Duration::ZERO, |&ns| Duration::from_nanos(u64::from(ns)))
        };
        FaultStats {
            faults: st.faults,
            throttled: st.throttled,
            p50: at(0.5),
            p99: at(0.99),
        }
    }

    /// Writes guest RAM to `file` from offset `start` (1 MiB-aligned), as it was at the
    /// instant.
    /// `progress` counts the RAM gone through (written or skipped).
    pub fn write(&self, file: &File, start: u64, progress: &AtomicU64) -> io::Result<WrittenRam> {
        let mut w = writer::Writer::new(&self.shared, file, start, progress)?;
        let result = w.run();
        let drained = w.drain();
        result.and(drained).map(|()| w.out)
    }
}

impl Drop for LiveRam {
    fn drop(&mut self) {
        {
            let mut st = lock(&self.shared.state);
            st.stopping = true;
            for unit in 0..self.shared.units.len() {
                if !st.released[unit] {
                    self.shared.release(&mut st, unit);
                }
            }
            self.shared.space.notify_all();
        }
        let _ = self.stop.write(1);
        if let Some(h) = self.handler.take() {
            let _ = h.join();
        }
        for &(host, len) in &self.shared.ranges {
            let _ = self.shared.uffd.unregister(host, len);
        }
    }
}

/// The handler thread: resolves faults until told to stop.
fn handle_faults(shared: &Shared, stop: &EventFd) {
    let mut faults = Vec::new();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: shared.uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds that outlive the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            log::error!("live snapshot: poll failed: {}", io::Error::last_os_error());
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        faults.clear();
        if let Err(e) = shared.uffd.read_faults(&mut faults) {
            log::error!("live snapshot: {e}");
            return;
        }
        for f in &faults {
            shared.resolve(*f);
        }
    }
}

mod writer;

#[cfg(test)]
mod tests;
