//! A snapshot after its instant: the state captured, what is left to write, and how far the
//! writing got ([`Progress`], readable from any thread while a live snapshot's RAM is being
//! written, e.g. by the API's `vm.snapshot-status`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use super::{ram_regions, SnapshotError};
use crate::device_manager::state::DevicesState;
use crate::snapshot::file::SnapshotWriter;
use crate::snapshot::live::{FaultStats, LiveRam};
use crate::snapshot::{sections, SnapshotMode, SnapshotReport};
use crate::vcpu::state::VcpuState;
use crate::vm::VmState;

/// Everything but RAM, captured at the snapshot instant.
pub(super) struct Captured {
    pub config: serde_json::Value,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub devices: DevicesState,
}

/// How far a snapshot got.
#[derive(Debug)]
pub struct Progress {
    /// Paused or live.
    pub mode: SnapshotMode,
    /// The file being written.
    pub destination: PathBuf,
    /// Guest RAM in all.
    pub total_bytes: u64,
    written: AtomicU64,
    done: AtomicBool,
    started: Instant,
    /// Microseconds from the start to the end, once ended.
    took_us: AtomicU64,
}

impl Progress {
    /// Guest RAM gone through so far (written, or skipped as zero).
    pub fn written_bytes(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// The counter the RAM writers advance.
    pub(crate) fn counter(&self) -> &AtomicU64 {
        &self.written
    }

    /// Whether the snapshot has ended (written or failed).
    pub fn finished(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Since the snapshot began, or how long it took once it has ended.
    pub fn elapsed(&self) -> Duration {
        if self.finished() {
            Duration::from_micros(self.took_us.load(Ordering::Relaxed))
        } else {
            self.started.elapsed()
        }
    }

    /// Marks the snapshot ended.
    fn end(&self) {
        let us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.took_us.store(us, Ordering::Relaxed);
        self.done.store(true, Ordering::Release);
    }
}

/// Removes an incomplete snapshot file (ours: a restore would refuse it anyway).
pub(super) fn remove_incomplete(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        log::warn!(
            "cannot remove the incomplete snapshot {}: {e}",
            path.display()
        );
    }
}

/// A snapshot being taken, before the instant.
pub(super) struct JobStart {
    pub path: PathBuf,
    pub mode: SnapshotMode,
    pub mem: GuestMemoryMmap,
    pub progress: Arc<Progress>,
}

impl JobStart {
    pub fn new(path: &Path, mode: SnapshotMode, mem: GuestMemoryMmap) -> Self {
        let total_bytes = ram_regions(&mem).iter().map(|r| r.len).sum();
        let progress = Arc::new(Progress {
            mode,
            destination: path.to_path_buf(),
            total_bytes,
            written: AtomicU64::new(0),
            done: AtomicBool::new(false),
            started: Instant::now(),
            took_us: AtomicU64::new(0),
        });
        JobStart {
            path: path.to_path_buf(),
            mode,
            mem,
            progress,
        }
    }

    /// A paused snapshot, written: its report.
    pub fn written(self, (file_bytes, ram): (u64, (u64, u64))) -> SnapshotJob {
        self.progress.end();
        let took = self.progress.elapsed();
        let report = SnapshotReport {
            mode: self.mode,
            file_bytes,
            ram_bytes: ram.0,
            zero_bytes: ram.1,
            paused_for: took,
            took,
            faults: FaultStats::default(),
        };
        SnapshotJob {
            progress: Arc::clone(&self.progress),
            rest: Rest::Done(report),
        }
    }

    /// A live snapshot past its instant: RAM is left to write.
    pub fn live(self, w: SnapshotWriter, captured: Captured, live: LiveRam) -> SnapshotJob {
        let paused_for = self.progress.elapsed();
        SnapshotJob {
            progress: Arc::clone(&self.progress),
            rest: Rest::Live(Box::new(LiveRest {
                start: self,
                w,
                captured,
                live,
                paused_for,
            })),
        }
    }
}

/// What a live snapshot has left to do.
struct LiveRest {
    start: JobStart,
    w: SnapshotWriter,
    captured: Captured,
    live: LiveRam,
    paused_for: Duration,
}

enum Rest {
    Done(SnapshotReport),
    Live(Box<LiveRest>),
}

/// A snapshot past its instant; [`SnapshotJob::finish`] writes what is left.
pub struct SnapshotJob {
    progress: Arc<Progress>,
    rest: Rest,
}

impl SnapshotJob {
    /// How far it got.
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    /// Writes what is left (a live snapshot's RAM, while the guest runs) and reports.
    pub fn finish(self) -> Result<SnapshotReport, SnapshotError> {
        let r = match self.rest {
            Rest::Done(report) => return Ok(report),
            Rest::Live(r) => *r,
        };
        let progress = &r.start.progress;
        let written = write_file(r.w, &r.captured, &r.start.mem, Some(&r.live), progress);
        let faults = r.live.stats();
        drop(r.live);
        progress.end();
        let (file_bytes, ram) = written.inspect_err(|_| remove_incomplete(&r.start.path))?;
        Ok(SnapshotReport {
            mode: r.start.mode,
            file_bytes,
            ram_bytes: ram.0,
            zero_bytes: ram.1,
            paused_for: r.paused_for,
            took: progress.elapsed(),
            faults,
        })
    }
}

/// Writes the file: state sections, RAM (through `live` if armed), table, trailer.
/// Returns the file's length and the RAM bytes written and skipped.
pub(super) fn write_file(
    mut w: SnapshotWriter,
    c: &Captured,
    mem: &GuestMemoryMmap,
    live: Option<&LiveRam>,
    progress: &Progress,
) -> Result<(u64, (u64, u64)), SnapshotError> {
    w.section(sections::CONFIG, &c.config)?;
    w.section(sections::VM, &c.vm)?;
    w.section(sections::VCPUS, &c.vcpus)?;
    w.section(sections::DEVICES, &c.devices)?;
    let regions = ram_regions(mem);
    let counter = progress.counter();
    let ram = match live {
        Some(live) => w.ram_with(|file, start| live.write(file, start, counter))?,
        None => w.ram_with(|file, start| {
            crate::snapshot::ram_io::write_ram(file, &regions, start, counter)
        })?,
    };
    let file_bytes = w.finish()?;
    let total: u64 = regions.iter().map(|r| r.len).sum();
    let written: u64 = ram.extents.iter().map(|e| e.len).sum();
    Ok((file_bytes, (written, total - written)))
}
