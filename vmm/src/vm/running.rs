//! The running VM: one thread per vCPU, each pinned where the placement plan says, kicked
//! out of KVM_RUN with a signal to pause or stop; [`RunningVm`] waits for the guest to end
//! the VM, pauses and resumes it, and snapshots its counters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::virtio::block::IoStats;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::placement::{self, CpuSet};
use crate::stats::exits::{ExitCounters, Unclaimed};
use crate::stats::kvm::KvmStats;
use crate::stats::{read_kvm, unclaimed_rows, VcpuStats, VmCounters};
use crate::vcpu::control::VcpuControl;
use crate::vcpu::VcpuStop;

use super::{Vm, VmError, VmOutcome};

impl Vm {
    /// Starts one thread per vCPU (and the stdin reader for a tty console).
    pub fn start(self) -> Result<RunningVm, VmError> {
        self.start_with(true)
    }

    /// [`Vm::start`], choosing whether Keel installs its no-op handler for the vCPU kick
    /// signal ([`kick_signal`]). An embedder that opts out must install a handler for that
    /// signal itself (without SA_RESTART), or the first kick terminates the process.
    pub fn start_with(mut self, install_signal_handler: bool) -> Result<RunningVm, VmError> {
        if install_signal_handler {
            install_kick_handler();
        }
        self.devices
            .start_console_input()
            .map_err(|source| VmError::Spawn {
                name: "keel-stdin".into(),
                source,
            })?;
        let control = Arc::new(VcpuControl::default());
        let (tx, rx) = channel();
        let mut threads = Vec::new();
        let mut counters = Vec::new();
        let mut kvm_stats = Vec::new();
        for vcpu in self.vcpus.drain(..) {
            kvm_stats.push(vcpu.kvm_stats.clone());
            let name = format!("keel-vcpu{}", vcpu.index);
            counters.push(Arc::clone(&vcpu.counters));
            let index = vcpu.index;
            let buses = Arc::clone(self.devices.buses());
            let mem = self.ram.mem.clone();
            let control = Arc::clone(&control);
            let tx = tx.clone();
            let cpus = self.vcpu_cpus.get(index as usize).cloned().flatten();
            let handle = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    pin_vcpu_thread(index, cpus.as_ref());
                    let (how, unclaimed) = vcpu.run(&buses, &mem, &control);
                    // The receiver only goes away once the VM is torn down.
                    let _ = tx.send((index, how));
                    unclaimed
                })
                .map_err(|source| VmError::Spawn { name, source })?;
            threads.push(handle);
        }
        Ok(RunningVm {
            _vm: self,
            threads,
            control,
            paused: false,
            events: rx,
            counters,
            kvm_stats,
            unclaimed: Vec::new(),
        })
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
    _vm: Vm,
    threads: Vec<JoinHandle<Unclaimed>>,
    control: Arc<VcpuControl>,
    paused: bool,
    events: Receiver<(u32, VcpuStop)>,
    counters: Vec<Arc<ExitCounters>>,
    kvm_stats: Vec<Option<Arc<KvmStats>>>,
    /// Where each vCPU's unclaimed accesses went, known once its thread has ended.
    unclaimed: Vec<Unclaimed>,
}

impl RunningVm {
    /// Per-vCPU statistics: Keel's userspace exit counters and KVM's in-kernel counters.
    pub fn stats(&self) -> Vec<VcpuStats> {
        self.counters
            .iter()
            .zip(&self.kvm_stats)
            .enumerate()
            .map(|(index, (counters, kvm))| VcpuStats {
                index,
                userspace: counters.snapshot(),
                devices: counters.by_device(self._vm.devices.buses()),
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
        }
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

    /// Waits until the guest ends the VM or `interrupt` becomes true; then stops every vCPU.
    /// The VM (devices, counters) stays until `self` is dropped.
    pub fn wait(&mut self, interrupt: &AtomicBool) -> VmOutcome {
        loop {
            if let Some(outcome) = self.wait_for(interrupt, Duration::from_secs(3600)) {
                return outcome;
            }
        }
    }

    /// Like [`RunningVm::wait`], but gives up after `timeout` and returns `None` with the VM
    /// still running (for callers that do something periodically, such as printing stats).
    pub fn wait_for(&mut self, interrupt: &AtomicBool, timeout: Duration) -> Option<VmOutcome> {
        let deadline = std::time::Instant::now() + timeout;
        let outcome = loop {
            if interrupt.load(Ordering::Acquire) {
                break VmOutcome::Stopped;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            // With no time left, still look once: a zero timeout must notice a guest that
            // already ended.
            let event = if left.is_zero() {
                match self.events.try_recv() {
                    Ok(event) => Ok(event),
                    Err(TryRecvError::Empty) => return None,
                    Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                }
            } else {
                self.events
                    .recv_timeout(left.min(Duration::from_millis(20)))
            };
            match event {
                Ok((_, VcpuStop::Requested)) => {}
                Ok((_, VcpuStop::PowerOff)) => break VmOutcome::PowerOff,
                Ok((_, VcpuStop::Reset(cause))) => break VmOutcome::Reset(cause),
                Ok((_, VcpuStop::Fatal(msg))) => break VmOutcome::Fatal(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break VmOutcome::Stopped,
            }
        };
        self.stop_vcpus();
        Some(outcome)
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
