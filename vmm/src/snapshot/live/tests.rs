//! Live snapshots of memory written by another thread, with real userfaultfd faults.

use super::*;
use crate::snapshot::ram_io::{read_ram, GuestTarget};
use std::sync::atomic::{AtomicBool, Ordering};

/// Anonymous memory standing in for guest RAM (shared with the test's writing thread, as
/// guest RAM is with vCPUs).
struct Mem(Staging);

impl Mem {
    fn new(len: usize) -> Mem {
        Mem(Staging::with_len(len, 4096).expect("mmap"))
    }

    fn page(&self, i: usize) -> *mut u64 {
        self.0.slot(i).cast()
    }

    fn len(&self) -> usize {
        self.0.len
    }
}

impl GuestTarget for Mem {
    fn host(&self, guest: u64, len: u64) -> Option<*mut u8> {
        (guest + len <= self.0.len as u64).then(|| self.0.base.wrapping_add(guest as usize))
    }
}

/// A new file in the temp directory for the snapshot's RAM.
fn temp_file(tag: &str) -> (std::path::PathBuf, std::fs::File) {
    let path = std::env::temp_dir().join(format!("keel-live-{tag}-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    (path, file)
}

/// What to wait for before RAM is written.
#[derive(Clone, Copy, PartialEq)]
enum Before {
    /// The other thread wrote every page (each fault copied a page).
    AllWritten,
    /// The other thread waits for a staging slot.
    Throttled,
}

/// Arms `pages` pages (the first `touched` of them holding their index, the rest never
/// touched), lets a thread write every page, writes the RAM once `before` holds, and
/// checks the file holds the instant: the indexes and zeroes.
fn snapshot_while_written(
    pages: usize,
    touched: usize,
    before: Before,
    features: u64,
) -> FaultStats {
    let mem = Arc::new(Mem::new(pages * 4096));
    for i in 0..touched {
        // SAFETY: inside the mapping.
        unsafe { mem.page(i).write_volatile(i as u64 + 1) };
    }
    let regions = [RamRegion {
        guest: 0,
        host: mem.0.base,
        len: mem.len() as u64,
    }];
    let prepared =
        Prepared::with_features(&regions, 4096, features).expect("userfaultfd registration");
    let live = LiveRam::start(prepared).expect("userfaultfd write-protect");
    live.instant().expect("the instant");
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mem, done) = (Arc::clone(&mem), Arc::clone(&done));
        std::thread::spawn(move || {
            for i in (0..pages).rev() {
                // SAFETY: inside the mapping; each write faults until its unit is saved.
                unsafe { mem.page(i).write_volatile(0xdead_0000 + i as u64) };
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while match before {
        Before::AllWritten => !done.load(Ordering::SeqCst),
        Before::Throttled => live.stats().throttled == 0,
    } {
        assert!(
            Instant::now() < deadline,
            "the writing thread never got there"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let (path, file) = temp_file(&format!("{pages}"));
    let progress = AtomicU64::new(0);
    let written = live.write(&file, RAM_CHUNK, &progress).unwrap();
    assert_eq!(progress.load(Ordering::Relaxed), (pages * 4096) as u64);
    let stats = live.stats();
    drop(live);
    writer.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    let back = Mem::new(pages * 4096);
    read_ram(&file, &written.extents, &back).unwrap();
    for i in 0..pages {
        let want = if i < touched { i as u64 + 1 } else { 0 };
        // SAFETY: inside the mapping.
        let got = unsafe { back.page(i).read_volatile() };
        assert_eq!(got, want, "page {i}");
        // SAFETY: inside the mapping; the writer thread has ended.
        assert_eq!(
            unsafe { mem.page(i).read_volatile() },
            0xdead_0000 + i as u64
        );
    }
    std::fs::remove_file(&path).unwrap();
    stats
}

#[test]
fn pages_written_during_the_snapshot_are_saved_as_they_were_at_the_instant() {
    let stats = snapshot_while_written(2048, 1536, Before::AllWritten, FEATURE_WP_UNPOPULATED);
    assert_eq!(stats.faults, 2048, "{stats:?}");
}

/// As on kernels without WP_UNPOPULATED (before 6.4): untouched pages are faulted in for
/// reading first, and their first writes fault like the others.
#[test]
fn without_wp_unpopulated_untouched_pages_are_protected_too() {
    let stats = snapshot_while_written(2048, 1536, Before::AllWritten, 0);
    assert_eq!(stats.faults, 2048, "{stats:?}");
}

#[test]
fn a_full_staging_pool_throttles_the_writing_thread_and_the_snapshot_completes() {
    let pages = (STAGING_BYTES / 4096) as usize * 3 / 2;
    let stats = snapshot_while_written(pages, pages, Before::Throttled, FEATURE_WP_UNPOPULATED);
    assert!(stats.throttled > 0 && stats.faults > 0, "{stats:?}");
}

/// Between the two phases the guest runs: pages it writes then are saved as they were at the
/// instant, not as they were when protection started, and later writes do not reach the file.
#[test]
fn pages_written_between_the_two_phases_are_saved_as_at_the_instant() {
    let pages = 512;
    let mem = Mem::new(pages * 4096);
    let regions = [RamRegion {
        guest: 0,
        host: mem.0.base,
        len: mem.len() as u64,
    }];
    let prepared = Prepared::new(&regions, 4096).expect("userfaultfd registration");
    let live = LiveRam::start(prepared).expect("first phase");
    for i in 0..pages / 2 {
        // SAFETY: inside the mapping; the first write faults and is let through.
        unsafe { mem.page(i).write_volatile(1) };
        // SAFETY: as above; no fault any more until the instant.
        unsafe { mem.page(i).write_volatile(2) };
    }
    live.instant().expect("the instant");
    let writer = {
        let base = mem.0.base as usize;
        std::thread::spawn(move || {
            for i in 0..pages {
                let p = (base + i * 4096) as *mut u64;
                // SAFETY: inside the mapping, which outlives this thread (joined below).
                unsafe { p.write_volatile(3) };
            }
        })
    };
    writer.join().unwrap();
    let (path, file) = temp_file("2phase");
    let progress = AtomicU64::new(0);
    let written = live.write(&file, RAM_CHUNK, &progress).unwrap();
    assert_eq!(
        live.stats().faults,
        pages as u64,
        "every page faulted after the instant"
    );
    drop(live);
    let back = Mem::new(pages * 4096);
    read_ram(&file, &written.extents, &back).unwrap();
    for i in 0..pages {
        let want = if i < pages / 2 { 2 } else { 0 };
        // SAFETY: inside the mapping.
        assert_eq!(unsafe { back.page(i).read_volatile() }, want, "page {i}");
    }
    std::fs::remove_file(&path).unwrap();
}
