//! The embedding API: one [`VmHandle`] per VM, driven through its lifecycle
//! (created -> running <-> paused -> stopped) with a stream of [`VmEvent`]s. Nothing here is
//! process-global except the no-op SIGRTMIN handler vCPU kicks need (installed once, on the
//! first boot, unless [`VmHandle::without_signal_handler`] opts out); several VMs can live in
//! one process. An embedder that runs under a file-size limit should ignore SIGXFSZ, as the
//! `keel` binary does, so that a guest write past the limit fails with an I/O error instead of
//! killing the process.
//!
//! ```no_run
//! use vmm::config::VmConfig;
//! use vmm::handle::{VmEvent, VmHandle};
//!
//! let mut config = VmConfig::default();
//! config.payload.kernel = "build/probe/probe.elf".into();
//! config.payload.cmdline = "probe.cmd=boot".into();
//! let mut vm = VmHandle::create(&config)?;
//! let events = vm.take_events().expect("first call");
//! vm.boot()?;
//! let outcome = vm.wait();
//! println!("{outcome:?}, {} vCPUs", vm.counters().map_or(0, |c| c.vcpus.len()));
//! assert!(events.try_iter().any(|e| e == VmEvent::Booted));
//! # Ok::<(), vmm::handle::HandleError>(())
//! ```

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use crate::config::VmConfig;
use crate::exit::ResetCause;
use crate::snapshot::{RestoreReport, SnapshotFile, SnapshotMode, SnapshotReport};
use crate::stats::VmCounters;
use crate::vm::{RunningVm, SnapshotJob, Vm, VmError, VmOutcome};

/// Where a VM is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Built, not booted.
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs parked.
    Paused,
    /// Ended (guest powered off or reset, shut down, or failed).
    Stopped,
}

/// Something that happened to a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// vCPUs started.
    Booted,
    /// vCPUs parked.
    Paused,
    /// vCPUs running again.
    Resumed,
    /// The guest powered off.
    PowerOff,
    /// The guest reset (Keel does not reboot it).
    Reset(ResetCause),
    /// Shut down by the embedder.
    Shutdown,
    /// A vCPU failed.
    Error(String),
}

/// Errors driving a VM.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Building or starting the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A snapshot failed (the VM runs on).
    #[error(transparent)]
    Snapshot(#[from] crate::vm::SnapshotError),
    /// The request does not fit the VM's state (boot twice, pause a stopped VM, ...).
    #[error("cannot {action} a VM that is {state:?}")]
    WrongState {
        /// What was asked.
        action: &'static str,
        /// The state it was in.
        state: VmState,
    },
}

enum Inner {
    Created(Box<Vm>),
    Running(Box<RunningVm>),
    Stopped(Option<Box<RunningVm>>),
}

/// One VM and its lifecycle.
pub struct VmHandle {
    inner: Inner,
    outcome: Option<VmOutcome>,
    events: Sender<VmEvent>,
    receiver: Option<Receiver<VmEvent>>,
    install_signal_handler: bool,
}

impl VmHandle {
    /// Validates `config` against the host and builds the VM (memory, devices, vCPUs); the
    /// guest does not run until [`VmHandle::boot`].
    pub fn create(config: &VmConfig) -> Result<Self, HandleError> {
        let vm = Vm::create(config)?;
        let (events, receiver) = channel();
        Ok(VmHandle {
            inner: Inner::Created(Box::new(vm)),
            outcome: None,
            events,
            receiver: Some(receiver),
            install_signal_handler: true,
        })
    }

    /// Builds the VM saved in the snapshot at `source` (its configuration, RAM and state);
    /// [`VmHandle::boot`] then runs it on from the snapshot's instant.
    pub fn restore(source: &Path) -> Result<(Self, RestoreReport), HandleError> {
        let snap = SnapshotFile::open(source).map_err(VmError::from)?;
        let (vm, report) = Vm::restore(&snap)?;
        log::info!(
            "restored {} of guest RAM from {} in {:.3} s",
            report.ram_bytes,
            source.display(),
            report.ram_time.as_secs_f64()
        );
        let (events, receiver) = channel();
        let handle = VmHandle {
            inner: Inner::Created(Box::new(vm)),
            outcome: None,
            events,
            receiver: Some(receiver),
            install_signal_handler: true,
        };
        Ok((handle, report))
    }

    /// Saves the running (or paused) VM to `destination`, which must not exist.
    pub fn snapshot(
        &mut self,
        destination: &Path,
        mode: SnapshotMode,
    ) -> Result<SnapshotReport, HandleError> {
        self.poll();
        match &mut self.inner {
            Inner::Running(vm) => Ok(vm.snapshot(destination, mode)?),
            _ => Err(self.wrong("snapshot")),
        }
    }

    /// [`VmHandle::snapshot`] up to the instant: a live snapshot's RAM is left to write in
    /// the job (which may finish on another thread while this handle serves on).
    pub fn begin_snapshot(
        &mut self,
        destination: &Path,
        mode: SnapshotMode,
    ) -> Result<SnapshotJob, HandleError> {
        self.poll();
        match &mut self.inner {
            Inner::Running(vm) => Ok(vm.begin_snapshot(destination, mode)?),
            _ => Err(self.wrong("snapshot")),
        }
    }

    /// The configuration the VM was built from (for a restored VM, the saved one).
    pub fn config(&self) -> Option<&VmConfig> {
        match &self.inner {
            Inner::Created(vm) => Some(vm.config()),
            Inner::Running(vm) | Inner::Stopped(Some(vm)) => Some(vm.config()),
            Inner::Stopped(None) => None,
        }
    }

    /// Opt out of Keel installing its no-op handler for the vCPU kick signal
    /// ([`crate::vm::kick_signal`], SIGRTMIN) at boot. The caller must then install one itself
    /// (without SA_RESTART), or the first kick terminates the process.
    pub fn without_signal_handler(mut self) -> Self {
        self.install_signal_handler = false;
        self
    }

    /// The event stream (once; later calls return `None`).
    pub fn take_events(&mut self) -> Option<Receiver<VmEvent>> {
        self.receiver.take()
    }

    /// The current state (a guest that powered off since the last call is noticed here).
    pub fn state(&mut self) -> VmState {
        self.poll();
        match &self.inner {
            Inner::Created(_) => VmState::Created,
            Inner::Running(vm) if vm.is_paused() => VmState::Paused,
            Inner::Running(_) => VmState::Running,
            Inner::Stopped(_) => VmState::Stopped,
        }
    }

    fn wrong(&mut self, action: &'static str) -> HandleError {
        HandleError::WrongState {
            action,
            state: self.state(),
        }
    }

    fn emit(&self, event: VmEvent) {
        // Nobody listening is fine.
        let _ = self.events.send(event);
    }

    /// Starts the vCPUs.
    pub fn boot(&mut self) -> Result<(), HandleError> {
        self.start(false)
    }

    /// Starts the vCPUs parked: the VM is `Paused` until [`VmHandle::resume`] (for a restored
    /// VM, whose user may want to look before it runs on).
    pub fn boot_paused(&mut self) -> Result<(), HandleError> {
        self.start(true)
    }

    fn start(&mut self, paused: bool) -> Result<(), HandleError> {
        let inner = std::mem::replace(&mut self.inner, Inner::Stopped(None));
        match inner {
            Inner::Created(vm) => match if paused {
                vm.start_paused_with(self.install_signal_handler)
            } else {
                vm.start_with(self.install_signal_handler)
            } {
                Ok(running) => {
                    self.inner = Inner::Running(Box::new(running));
                    self.emit(VmEvent::Booted);
                    if paused {
                        self.emit(VmEvent::Paused);
                    }
                    Ok(())
                }
                Err(e) => Err(e.into()),
            },
            other => {
                self.inner = other;
                Err(self.wrong("boot"))
            }
        }
    }

    /// Parks the vCPUs.
    pub fn pause(&mut self) -> Result<(), HandleError> {
        self.poll();
        match &mut self.inner {
            Inner::Running(vm) if !vm.is_paused() => {
                vm.pause()?;
                self.emit(VmEvent::Paused);
                Ok(())
            }
            _ => Err(self.wrong("pause")),
        }
    }

    /// Runs paused vCPUs again.
    pub fn resume(&mut self) -> Result<(), HandleError> {
        match &mut self.inner {
            Inner::Running(vm) if vm.is_paused() => {
                vm.resume();
                self.emit(VmEvent::Resumed);
                Ok(())
            }
            _ => Err(self.wrong("resume")),
        }
    }

    /// Stops the vCPUs of a running or paused VM; the VM's counters stay readable.
    pub fn shutdown(&mut self) -> Result<VmOutcome, HandleError> {
        self.poll();
        match &mut self.inner {
            Inner::Running(vm) => {
                let outcome = vm.stop();
                self.finish(outcome.clone());
                self.emit(VmEvent::Shutdown);
                Ok(outcome)
            }
            _ => Err(self.wrong("shut down")),
        }
    }

    fn finish(&mut self, outcome: VmOutcome) {
        let inner = std::mem::replace(&mut self.inner, Inner::Stopped(None));
        if let Inner::Running(vm) = inner {
            self.inner = Inner::Stopped(Some(vm));
        }
        self.outcome = Some(outcome);
    }

    fn event_for(outcome: &VmOutcome) -> Option<VmEvent> {
        match outcome {
            VmOutcome::PowerOff => Some(VmEvent::PowerOff),
            VmOutcome::Reset(c) => Some(VmEvent::Reset(*c)),
            VmOutcome::Fatal(msg) => Some(VmEvent::Error(msg.clone())),
            VmOutcome::Stopped => None,
        }
    }

    /// Notices a guest that ended (without blocking).
    fn poll(&mut self) {
        self.observe(Duration::ZERO);
    }

    /// Waits up to `timeout` for a running guest to end; records how it ended and emits the
    /// matching event.
    fn observe(&mut self, timeout: Duration) {
        if let Inner::Running(vm) = &mut self.inner {
            if let Some(outcome) = vm.wait_for(None, timeout) {
                if let Some(e) = Self::event_for(&outcome) {
                    self.emit(e);
                }
                self.finish(outcome);
            }
        }
    }

    /// Waits until the guest ends the VM (or returns how it already ended).
    pub fn wait(&mut self) -> Option<VmOutcome> {
        if let Inner::Running(vm) = &mut self.inner {
            let outcome = vm.wait(None);
            if let Some(e) = Self::event_for(&outcome) {
                self.emit(e);
            }
            self.finish(outcome);
        }
        self.outcome.clone()
    }

    /// While the guest runs, an eventfd that becomes readable when it ends (to block on with
    /// other descriptors); [`VmHandle::state`] then notices the end.
    pub fn end_fd(&self) -> Option<RawFd> {
        match &self.inner {
            Inner::Running(vm) => Some(vm.end_fd()),
            _ => None,
        }
    }

    /// Waits up to `timeout` for the guest to end the VM; `None` if it still runs or was
    /// never booted.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<VmOutcome> {
        self.observe(timeout.min(Duration::from_secs(3600)));
        self.outcome.clone()
    }

    /// Every counter (exits by kind and device, KVM's, disks'), once booted.
    pub fn counters(&self) -> Option<VmCounters> {
        match &self.inner {
            Inner::Running(vm) => Some(vm.counters()),
            Inner::Stopped(Some(vm)) => Some(vm.counters()),
            _ => None,
        }
    }
}
