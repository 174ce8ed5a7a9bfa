//! Running the benchmark guest in Keel, in this process, through [`VmHandle`]: the console
//! goes to a file that is followed while the guest runs, and Keel's counters are
//! snapshotted when fio starts and when its JSON begins, so exits per I/O cover fio's run
//! and nothing else (not the boot, not the report).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::console_tail::{ConsoleTail, Marker};
use crate::config::{SerialConfig, VmConfig};
use crate::handle::{HandleError, VmHandle};
use crate::stats_view;
use crate::vm::{VmCounters, VmOutcome};

/// How often the console is read while the guest runs.
const POLL: Duration = Duration::from_millis(5);

/// Running the guest in Keel failed before it could run.
#[derive(Debug, thiserror::Error)]
pub enum KeelRunError {
    /// Building the VM.
    #[error("cannot create the VM")]
    Create(#[source] HandleError),
    /// Starting it.
    #[error("cannot boot the VM")]
    Boot(#[source] HandleError),
}

/// How a guest run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEnd {
    /// The guest powered off (the normal end).
    PowerOff,
    /// The guest reset, crashed or failed; the text says how.
    Failed(String),
    /// Still running at the deadline; stopped.
    TimedOut,
    /// Stopped on the user's request (SIGINT/SIGTERM).
    Interrupted,
}

/// Counters over fio's run: every counter's increase between a START marker and the
/// JSON-BEGIN marker after it, summed when several runs came one after another (so the
/// guest's printing of each report, one exit per byte, is left out).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CounterWindow {
    /// Seconds between the two snapshots.
    pub secs: f64,
    /// Increase of every flattened counter (see [`stats_view::flatten`]).
    pub delta: BTreeMap<String, u64>,
}

impl CounterWindow {
    /// Adds the increase from `a` to `b`.
    fn add(&mut self, a: &VmCounters, b: &VmCounters) {
        let secs = b.taken.duration_since(a.taken).as_secs_f64();
        self.add_flat(&stats_view::flatten(a), &stats_view::flatten(b), secs);
    }

    /// Adds the increase from `before` to `after` (flattened counters), `secs` apart.
    pub fn add_flat(
        &mut self,
        before: &BTreeMap<String, u64>,
        after: &BTreeMap<String, u64>,
        secs: f64,
    ) {
        for (k, v) in after {
            let was = before.get(k).copied().unwrap_or(0);
            *self.delta.entry(k.clone()).or_insert(0) += v.saturating_sub(was);
        }
        self.secs += secs;
    }

    /// A counter's increase (0 if unknown).
    pub fn get(&self, name: &str) -> u64 {
        self.delta.get(name).copied().unwrap_or(0)
    }

    /// Requests completed by the data disks (every disk but the config disk).
    pub fn disk_requests(&self, config_disk: &str) -> u64 {
        self.delta
            .iter()
            .filter(|(k, _)| k.starts_with("disk.") && k.ends_with(".requests"))
            .filter(|(k, _)| k.as_str() != format!("disk.{config_disk}.requests"))
            .map(|(_, v)| *v)
            .sum()
    }
}

/// One guest run.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// The console.
    pub console: String,
    /// The file holding it (kept after the run).
    pub console_path: PathBuf,
    /// The console's last lines (for messages).
    pub console_tail: String,
    /// How it ended.
    pub end: GuestEnd,
    /// Counters over fio's run, when both markers were seen.
    pub window: Option<CounterWindow>,
    /// Wall time from boot to the end.
    pub wall: Duration,
}

/// Boots `config` with its console in `console_path`, waits for the guest to power off (at
/// most `timeout`, or until `interrupt`), and returns the console and counters.
pub fn run(
    config: &VmConfig,
    console_path: &Path,
    echo: bool,
    timeout: Duration,
    interrupt: &AtomicBool,
) -> Result<GuestRun, KeelRunError> {
    let _ = std::fs::remove_file(console_path);
    let mut config = config.clone();
    config.serial = SerialConfig::File(console_path.to_path_buf());
    let mut vm = VmHandle::create(&config).map_err(KeelRunError::Create)?;
    let started = Instant::now();
    vm.boot().map_err(KeelRunError::Boot)?;
    let mut tail = ConsoleTail::new(console_path, echo);
    let mut at_start: Option<VmCounters> = None;
    let mut window: Option<CounterWindow> = None;
    let end = loop {
        let outcome = vm.wait_timeout(POLL);
        for marker in tail.poll() {
            match marker {
                Marker::Start => at_start = vm.counters(),
                Marker::JsonBegin => {
                    if let (Some(a), Some(b)) = (at_start.take(), vm.counters()) {
                        window
                            .get_or_insert_with(CounterWindow::default)
                            .add(&a, &b);
                    }
                }
            }
        }
        if let Some(outcome) = outcome {
            break match outcome {
                VmOutcome::PowerOff => GuestEnd::PowerOff,
                VmOutcome::Reset(cause) => GuestEnd::Failed(format!("the guest reset ({cause:?})")),
                VmOutcome::Fatal(msg) => GuestEnd::Failed(msg),
                VmOutcome::Stopped => GuestEnd::Interrupted,
            };
        }
        if interrupt.load(Ordering::Acquire) {
            let _ = vm.shutdown();
            break GuestEnd::Interrupted;
        }
        if started.elapsed() > timeout {
            let _ = vm.shutdown();
            break GuestEnd::TimedOut;
        }
    };
    // What the guest printed as it stopped.
    tail.poll();
    Ok(GuestRun {
        console: tail.text(),
        console_path: console_path.to_path_buf(),
        console_tail: tail.tail(12),
        end,
        window,
        wall: started.elapsed(),
    })
}
