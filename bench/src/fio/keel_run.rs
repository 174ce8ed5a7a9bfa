//! Running the benchmark guest in Keel, in this process, through [`VmHandle`]: the console
//! goes to a file that is followed while the guest runs, and Keel's counters are
//! snapshotted when fio starts and when its JSON begins (see [`WindowTracker`]), so exits per
//! I/O cover fio's run and nothing else (not the boot, not the report).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vmm::config::{SerialConfig, VmConfig};
use vmm::handle::{HandleError, VmHandle};
use vmm::stats::view as stats_view;
use vmm::vm::VmOutcome;

use super::console_tail::ConsoleTail;
use super::counter_window::{CounterWindow, WindowTracker};

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

impl GuestRun {
    /// The run as it ended: what the guest printed last is read first.
    pub fn finish(
        mut tail: ConsoleTail,
        end: GuestEnd,
        window: Option<CounterWindow>,
        started: Instant,
    ) -> Self {
        tail.poll();
        GuestRun {
            console: tail.text(),
            console_path: tail.path().to_path_buf(),
            console_tail: tail.tail(12),
            end,
            window,
            wall: started.elapsed(),
        }
    }
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
    let mut window = WindowTracker::default();
    let end = loop {
        let outcome = vm.wait_timeout(POLL);
        for marker in tail.poll() {
            window.on_marker(marker, vm.counters().map(|c| stats_view::flatten(&c)));
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
    Ok(GuestRun::finish(tail, end, window.into_window(), started))
}
