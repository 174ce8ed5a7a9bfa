//! The running VM: one thread per vCPU, each pinned where the placement plan says, kicked
//! out of KVM_RUN with a signal to pause or stop; [`RunningVm`] waits for the guest to end
//! the VM, pauses and resumes it, and snapshots its counters.
//!
//! Waiting is driven by events, not ticks: a vCPU thread that ends sends how on a channel and
//! then writes the VM's end eventfd ([`RunningVm::end_fd`]); a waiter blocks on that eventfd
//! and, optionally, a [`StopEvent`], and wakes exactly when a vCPU ends or a stop is asked.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::virtio::block::IoStats;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::event::{wait_readable, StopEvent};

use crate::placement::{self, CpuSet};
use crate::stats::exits::{ExitCounters, Unclaimed};
use crate::stats::kvm::KvmStats;
use crate::stats::threads::{ThreadClock, ThreadCpu};
use crate::stats::{read_kvm, unclaimed_rows, VcpuStats, VmCounters};
use crate::vcpu::control::VcpuControl;
use crate::vcpu::{Vcpu, VcpuStop};

use super::{Vm, VmError, VmOutcome};

impl Vm {
    /// Starts one thread per vCPU (and the stdin reader for a tty console).
    pub fn start(self) -> Result<RunningVm, VmError> {
        self.start_with(true)
    }

    /// [`Vm::start`], choosing whether Keel installs its no-op handler for the vCPU kick
    /// signal ([`kick_signal`]). An embedder that opts out must install a handler for that
    /// signal itself (without SA_RESTART), or the first kick terminates the process.
    ///
    /// All or nothing: if a vCPU thread cannot be started, the ones already running are
    /// stopped and joined before the error returns (the [`RunningVm`] under construction is
    /// dropped), so a failed start leaves no guest code running.
    pub fn start_with(self, install_signal_handler: bool) -> Result<RunningVm, VmError> {
        self.start_inner(install_signal_handler, false)
    }

    /// [`Vm::start_with`], with every vCPU parked before it first runs: the VM is paused
    /// until [`RunningVm::resume`] (a restored VM waits so, as Cloud Hypervisor's does).
    pub fn start_paused_with(self, install_signal_handler: bool) -> Result<RunningVm, VmError> {
        self.start_inner(install_signal_handler, true)
    }

    fn start_inner(
        mut self,
        install_signal_handler: bool,
        paused: bool,
    ) -> Result<RunningVm, VmError> {
        if install_signal_handler {
            install_kick_handler();
        }
        self.devices
            .start_console_input()
            .map_err(|source| VmError::Spawn {
                name: "keel-stdin".into(),
                source,
            })?;
        let vcpus: Vec<Vcpu> = self.vcpus.drain(..).collect();
        let (tx, rx) = channel();
        let mut running = RunningVm {
            _vm: self,
            threads: Vec::new(),
            control: Arc::new(VcpuControl::default()),
            paused,
            events: rx,
            ended: Arc::new(EventFd::new(EFD_NONBLOCK).map_err(VmError::EndEvent)?),
            counters: Vec::new(),
            vcpu_clocks: Vec::new(),
            kvm_stats: Vec::new(),
            unclaimed: Vec::new(),
        };
        if paused {
            running.control.pause();
        }
        for vcpu in vcpus {
            running.spawn_vcpu(vcpu, &tx)?;
        }
        Ok(running)
    }
}

/// How a vCPU thread reports its end: the stop on the channel, then a write to the end
/// eventfd. Dropping it (also when the thread panics) drops the sender before writing, so a
/// waiter woken by the last vCPU's write sees the channel disconnected.
struct EndReport {
    tx: Option<Sender<(u32, VcpuStop)>>,
    ended: Arc<EventFd>,
}

impl EndReport {
    fn send(&mut self, index: u32, how: VcpuStop) {
        if let Some(tx) = &self.tx {
            // The receiver only goes away once the VM is torn down.
            let _ = tx.send((index, how));
        }
    }
}

impl Drop for EndReport {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Err(e) = self.ended.write(1) {
            log::error!("cannot signal a vCPU's end: {e}");
        }
    }
}

/// Pins the calling vCPU thread (if `cpus` is given) and logs where it may run.
fn pin_vcpu_thread(index: u32, cpus: Option<&CpuSet>) {
    if let Some(cpus) = cpus {
        if let Err(e) = placement::set_thread_affinity(None, cpus) {
            log::error!("vCPU {index}: cannot pin to host CPUs {cpus}: {e}");
        }
    }
    match placement::thread_affinity(None) {
        Ok(now) => log::info!(
            "vCPU {index} (tid {}): host CPUs {now}{}",
            placement::current_tid(),
            if cpus.is_some() { " (pinned)" } else { "" }
        ),
        Err(e) => log::warn!("vCPU {index}: cannot read its CPU affinity: {e}"),
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// vCPU threads are kicked out of KVM_RUN with SIGRTMIN; it needs a (no-op) handler so that
/// it interrupts the ioctl instead of killing the process.
/// The signal Keel sends vCPU threads to kick them out of KVM_RUN (SIGRTMIN).
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = register_signal_handler(SIGRTMIN(), kick_handler) {
            log::error!("cannot install the vCPU kick signal handler: {e}");
        }
    });
}

/// A VM whose vCPU threads are running.
pub struct RunningVm {
    pub(super) _vm: Vm,
    pub(super) threads: Vec<JoinHandle<Unclaimed>>,
    pub(super) control: Arc<VcpuControl>,
    paused: bool,
    events: Receiver<(u32, VcpuStop)>,
    /// Written by each vCPU thread as it ends, after its stop is on `events`.
    ended: Arc<EventFd>,
    counters: Vec<Arc<ExitCounters>>,
    /// Each vCPU thread's id and, once it has ended, its CPU time.
    vcpu_clocks: Vec<Arc<ThreadClock>>,
    kvm_stats: Vec<Option<Arc<KvmStats>>>,
    /// Where each vCPU's unclaimed accesses went, known once its thread has ended.
    unclaimed: Vec<Unclaimed>,
}

impl RunningVm {
    /// Starts `vcpu`'s thread, pinned where the placement plan says.
    fn spawn_vcpu(&mut self, vcpu: Vcpu, tx: &Sender<(u32, VcpuStop)>) -> Result<(), VmError> {
        let index = vcpu.index;
        let name = format!("keel-vcpu{index}");
        self.kvm_stats.push(vcpu.kvm_stats.clone());
        self.counters.push(Arc::clone(&vcpu.counters));
        let clock = Arc::new(ThreadClock::default());
        self.vcpu_clocks.push(Arc::clone(&clock));
        let buses = Arc::clone(self._vm.devices.buses());
        let mem = self._vm.ram.mem.clone();
        let control = Arc::clone(&self.control);
        let mut report = EndReport {
            tx: Some(tx.clone()),
            ended: Arc::clone(&self.ended),
        };
        let cpus = self._vm.vcpu_cpus.get(index as usize).cloned().flatten();
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                clock.started();
                pin_vcpu_thread(index, cpus.as_ref());
                // The guest never runs on a thread whose filter did not go in.
                if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
                    let msg = crate::api::routes::error_chain(&e);
                    log::error!("vCPU {index}: {msg}");
                    report.send(index, VcpuStop::Fatal(msg));
                    return Unclaimed::default();
                }
                let (how, unclaimed) = vcpu.run(&buses, &mem, &control);
                clock.ending();
                report.send(index, how);
                unclaimed
            })
            .map_err(|source| VmError::Spawn { name, source })?;
        self.threads.push(handle);
        Ok(())
    }

    /// What the VM was built from.
    pub fn config(&self) -> &crate::config::VmConfig {
        self._vm.config()
    }

    /// Per-vCPU statistics: Keel's userspace exit counters and KVM's in-kernel counters.
    pub fn stats(&self) -> Vec<VcpuStats> {
        self.counters
            .iter()
            .zip(&self.kvm_stats)
            .enumerate()
            .map(|(index, (counters, kvm))| VcpuStats {
                index,
                userspace: counters.snapshot(),
                devices: counters.by_device(&self._vm.devices.buses().ids),
                unclaimed: self
                    .unclaimed
                    .get(index)
                    .map(unclaimed_rows)
                    .unwrap_or_default(),
                kvm: read_kvm(kvm.as_deref()),
            })
            .collect()
    }

    /// A snapshot of every counter: vCPUs, the VM, disks.
    pub fn counters(&self) -> VmCounters {
        VmCounters {
            taken: std::time::Instant::now(),
            vcpus: self.stats(),
            vm: read_kvm(self._vm.kvm_stats.as_ref()),
            disks: self.disk_stats(),
            disk_queue_requests: self
                ._vm
                .disks()
                .disks()
                .iter()
                .map(|d| d.io_stats.queue_requests())
                .collect(),
            threads: self.thread_cpu(),
        }
    }

    /// CPU time of the vCPU threads and of the disks' I/O threads.
    pub fn thread_cpu(&self) -> ThreadCpu {
        let io: Vec<i32> = self
            ._vm
            .disks()
            .iothread_tids()
            .into_iter()
            .map(|(_, tid)| tid)
            .collect();
        crate::stats::threads::read(&self.vcpu_clocks, &io)
    }

    /// Per-disk I/O counters, by disk name.
    pub fn disk_stats(&self) -> Vec<(String, IoStats)> {
        self._vm
            .disks()
            .disks()
            .iter()
            .map(|d| (d.name.clone(), d.io_stats.read()))
            .collect()
    }

    /// Waits until the guest ends the VM or `stop` is triggered; then stops every vCPU.
    /// The VM (devices, counters) stays until `self` is dropped.
    pub fn wait(&mut self, stop: Option<&StopEvent>) -> VmOutcome {
        loop {
            if let Some(outcome) = self.wait_until(stop, None) {
                return outcome;
            }
        }
    }

    /// Like [`RunningVm::wait`], but gives up after `timeout` and returns `None` with the VM
    /// still running (for callers that do something periodically, such as printing stats).
    /// A zero timeout looks once without blocking.
    pub fn wait_for(&mut self, stop: Option<&StopEvent>, timeout: Duration) -> Option<VmOutcome> {
        self.wait_until(stop, Some(Instant::now() + timeout))
    }

    /// Stops every vCPU now (a guest that had already ended is not looked at).
    pub fn stop(&mut self) -> VmOutcome {
        self.stop_vcpus();
        VmOutcome::Stopped
    }

    /// The eventfd that becomes readable when a vCPU thread ends, for callers that block on
    /// it with other descriptors; [`RunningVm::wait_for`] with a zero timeout then tells how.
    pub fn end_fd(&self) -> RawFd {
        self.ended.as_raw_fd()
    }

    fn wait_until(
        &mut self,
        stop: Option<&StopEvent>,
        deadline: Option<Instant>,
    ) -> Option<VmOutcome> {
        let mut fds = vec![self.ended.as_raw_fd()];
        fds.extend(stop.map(StopEvent::as_raw_fd));
        let outcome = loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ready = match wait_readable(&fds, left) {
                Ok(ready) => ready,
                Err(e) => {
                    log::error!("waiting for the vCPUs failed: {e}");
                    break VmOutcome::Fatal(format!("waiting for the vCPUs failed: {e}"));
                }
            };
            if ready.get(1) == Some(&true) {
                break VmOutcome::Stopped;
            }
            if ready[0] {
                // Reset the count first: a vCPU that ends after this read writes again.
                let _ = self.ended.read();
                if let Some(outcome) = self.drain_ends() {
                    break outcome;
                }
            }
            if left.is_some_and(|l| l.is_zero()) || deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
        };
        self.stop_vcpus();
        Some(outcome)
    }

    /// How the VM ended, from the stops the vCPU threads reported so far.
    fn drain_ends(&mut self) -> Option<VmOutcome> {
        loop {
            match self.events.try_recv() {
                Ok((_, VcpuStop::Requested)) => {}
                Ok((_, VcpuStop::PowerOff)) => return Some(VmOutcome::PowerOff),
                Ok((_, VcpuStop::Reset(cause))) => return Some(VmOutcome::Reset(cause)),
                Ok((_, VcpuStop::Fatal(msg))) => return Some(VmOutcome::Fatal(msg)),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => return Some(VmOutcome::Stopped),
            }
        }
    }

    /// Parks every vCPU thread outside KVM_RUN: the guest stops running until
    /// [`RunningVm::resume`]. Devices (I/O threads) finish what is in flight.
    pub fn pause(&mut self) -> Result<(), VmError> {
        if self.paused {
            return Ok(());
        }
        self.control.pause();
        let alive: Vec<&JoinHandle<Unclaimed>> =
            self.threads.iter().filter(|t| !t.is_finished()).collect();
        let parked = self
            .control
            .wait_parked(alive.len(), Duration::from_secs(5), || {
                for t in &alive {
                    let _ = t.kill(SIGRTMIN());
                }
            });
        if !parked {
            self.control.resume();
            return Err(VmError::Pause);
        }
        self.paused = true;
        Ok(())
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&mut self) {
        self.control.resume();
        self.paused = false;
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn stop_vcpus(&mut self) {
        self.control.stop();
        for handle in self.threads.drain(..) {
            // A vCPU halted in the kernel only notices `stop` once kicked; kick until it ends.
            while !handle.is_finished() {
                if handle.kill(SIGRTMIN()).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            match handle.join() {
                Ok(unclaimed) => {
                    report_unclaimed(&unclaimed);
                    self.unclaimed.push(unclaimed);
                }
                Err(_) => {
                    log::error!("a vCPU thread panicked");
                    self.unclaimed.push(Unclaimed::default());
                }
            }
        }
    }
}

impl Drop for RunningVm {
    /// A VM dropped while running stops its vCPUs first (they borrow its memory and devices).
    fn drop(&mut self) {
        self.stop_vcpus();
    }
}

fn report_unclaimed(unclaimed: &Unclaimed) {
    for (port, count) in &unclaimed.ports {
        log::debug!("unclaimed port {port:#x}: {count} accesses");
    }
    for (addr, count) in &unclaimed.mmio {
        log::debug!("unclaimed MMIO {addr:#x}: {count} accesses");
    }
}
