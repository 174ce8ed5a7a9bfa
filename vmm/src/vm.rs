//! Building and running a VM: validated config -> KVM VM with in-kernel irqchip and PIT ->
//! guest RAM -> legacy devices -> kernel, boot tables and boot info -> vCPUs -> one thread per
//! vCPU, until the guest powers off, resets, fails, or the caller stops it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use arch::cpuid::CpuidConfig;
use arch::layout;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::block_devices::{self, AttachContext, BlockDeviceError, BlockDevices};
use crate::config::{ConfigError, Toggle, VmConfig};
use crate::exit::{Buses, DeviceExits, ExitCounters, ExitSnapshot, ResetCause, Unclaimed};
use crate::host::HostInfo;
use crate::interrupts::GsiRouter;
use crate::kvm_stats::KvmStats;
use crate::legacy_devices::{self, LegacyDeviceError};
use crate::loader::{self, EntryMode, LoaderError};
use crate::memory::{Backing, GuestRam, MemoryError};
use crate::paravirt::{Paravirt, ParavirtError};
use crate::pci_bars::BarWindow;
use crate::placement::{self, CpuSet, HostTopology, PlacementError};
use crate::vcpu::{BootEntry, Vcpu, VcpuError, VcpuStop};
use crate::vcpu_control::VcpuControl;
use devices::pci::BarAllocator;
use devices::virtio::block::IoStats;

/// Errors building or starting a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm (is KVM available and accessible?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A KVM VM-level ioctl failed.
    #[error("{what} failed")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest RAM.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The host topology could not be read.
    #[error("cannot read the host's CPU and NUMA topology")]
    Topology(#[source] PlacementError),
    /// PCI host bridge.
    #[error(transparent)]
    PciHost(#[from] crate::pci_host::PciHostError),
    /// Devices.
    #[error(transparent)]
    Devices(#[from] LegacyDeviceError),
    /// Kernel, initramfs or command line.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// A device range could not be put on a bus.
    #[error("cannot map the {what}")]
    Bus {
        /// What.
        what: &'static str,
        /// Cause.
        #[source]
        source: devices::bus::BusError,
    },
    /// A disk could not be attached.
    #[error(transparent)]
    Disk(#[from] BlockDeviceError),
    /// MP table.
    #[error("failed to write the MP table")]
    MpTable(#[source] arch::mptable::MpTableError),
    /// ACPI tables.
    #[error("failed to write the ACPI tables")]
    Acpi(#[source] arch::acpi::AcpiError),
    /// Zero page / PVH start info.
    #[error("failed to write the boot information")]
    BootInfo(#[source] arch::boot_info::BootInfoError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// KVM PV or Hyper-V requests the host cannot meet.
    #[error(transparent)]
    Paravirt(#[from] ParavirtError),
    /// vCPU threads did not park in time.
    #[error("the vCPUs did not pause within 5 s")]
    Pause,
    /// A thread could not be spawned.
    #[error("failed to spawn thread {name}")]
    Spawn {
        /// Thread name.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest reset (Keel does not reboot guests).
    Reset(ResetCause),
    /// The caller asked it to stop.
    Stopped,
    /// A vCPU hit a fatal exit.
    Fatal(String),
}

/// A VM ready to run: everything built, vCPUs configured, no thread started.
pub struct Vm {
    // Field order matters for drop: vCPU fds and the VM fd close before guest RAM unmaps.
    vcpus: Vec<Vcpu>,
    /// Host CPUs each vCPU thread is pinned to.
    vcpu_cpus: Vec<Option<CpuSet>>,
    /// KVM's VM-wide counters (None if the host lacks binary stats).
    kvm_stats: Option<KvmStats>,
    /// Kept open for the VM's lifetime (devices hold irqfds registered on it).
    _vm_fd: Arc<VmFd>,
    /// virtio-blk disks and their I/O threads (stopped when the VM is dropped).
    disks: BlockDevices,
    buses: Arc<Buses>,
    ram: GuestRam,
    devices: legacy_devices::LegacyDevices,
    /// Host facts used to build it.
    pub host: HostInfo,
    /// Boot path chosen for the kernel.
    pub entry_mode: EntryMode,
    /// CPUID features hidden because the host is PVM.
    pub hidden_features: Vec<&'static str>,
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Guest physical address width from CPUID.80000008H:EAX[7:0] (36 if absent).
fn phys_bits(cpuid: &[kvm_cpuid_entry2]) -> u32 {
    arch::cpuid::find(cpuid, 0x8000_0008, 0)
        .map(|e| e.eax & 0xff)
        .filter(|&b| b >= 32)
        .unwrap_or(36)
}

impl Vm {
    /// Validates `config` against the host and builds the VM.
    pub fn create(config: &VmConfig) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let host = HostInfo::probe(&kvm);
        let (max_vcpus, why) = host.vcpu_limit();
        config.cpus.validate(max_vcpus, why)?;
        config.memory.validate(host.ram_bytes)?;
        config.validate_numa()?;
        config.payload.validate()?;
        config.validate_disks()?;
        let topology = HostTopology::from_host().map_err(VmError::Topology)?;

        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
        vm_fd
            .set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        if let Err(e) = vm_fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS) {
            log::debug!("KVM_SET_IDENTITY_MAP_ADDR not available: {e}");
        }
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let supported = supported.as_slice().to_vec();

        let plan = placement::plan(config, &topology, phys_bits(&supported))?;
        let ram = map_guest_ram(config, &plan)?;
        ram.register(&vm_fd)?;
        let mem = &ram.mem;

        let mut buses = Buses::default();
        let (below, above) = arch::memory_map::ram_below_and_above_4g(&ram.regions);
        let devices = legacy_devices::attach(&vm_fd, &mut buses.pio, &config.serial, below, above)?;
        // The segment lives on through the buses' references to its config mechanisms.
        let pci_segment = crate::pci_host::attach(&mut buses)?;
        let router = Arc::new(GsiRouter::new(Arc::clone(&vm_fd)));
        let (window_base, window_size) = (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE);
        let mut bars = BarAllocator::new(window_base, window_base + window_size);
        let mut window = BarWindow::new(
            Arc::clone(&pci_segment),
            Arc::clone(&vm_fd),
            window_base,
            window_size,
        );
        let disks = block_devices::attach(
            AttachContext {
                vm: &vm_fd,
                router: &router,
                mem,
                segment: &pci_segment,
                window: &mut window,
                bars: &mut bars,
            },
            &config.disks,
            &plan.iothread_cpus,
        )?;
        log_iothread_placement(&disks);
        buses
            .mmio
            .insert(
                "pci-bars",
                Arc::new(std::sync::Mutex::new(window)),
                window_base,
                window_size,
            )
            .map_err(|source| VmError::Bus {
                what: "PCI BAR window",
                source,
            })?;

        let kernel = loader::load_kernel(mem, &config.payload.kernel)?;
        let cmdline_size = loader::load_cmdline(mem, &config.payload.cmdline)?;
        let initramfs = match &config.payload.initramfs {
            Some(path) => Some(loader::load_initramfs(
                mem,
                path,
                &kernel,
                ram.low_ram_end(),
            )?),
            None => None,
        };
        let num_vcpus = config.cpus.boot_vcpus;
        arch::mptable::setup_mptable(mem, num_vcpus).map_err(VmError::MpTable)?;
        let rsdp = arch::acpi::create_acpi_tables(mem, num_vcpus, plan.numa.as_ref())
            .map_err(VmError::Acpi)?;
        let e820 = arch::memory_map::e820_map(&ram.regions);
        let info = arch::boot_info::BootInfo {
            e820: &e820,
            cmdline_addr: layout::CMDLINE_START,
            cmdline_size,
            initramfs,
            rsdp_addr: rsdp.0,
        };
        let boot_info = match kernel.mode {
            EntryMode::Linux64 => arch::boot_info::write_zero_page(mem, kernel.setup_header, &info),
            EntryMode::Pvh => arch::boot_info::write_pvh_start_info(mem, &info),
        }
        .map_err(VmError::BootInfo)?;
        log::info!(
            "kernel {}: {:?} image, {:?} entry at {:#x}",
            config.payload.kernel.display(),
            kernel.format,
            kernel.mode,
            kernel.entry.0
        );

        let hide_pvm = match config.cpus.pvm_compat {
            Toggle::Auto => host.is_pvm,
            Toggle::On => true,
            Toggle::Off => false,
        };
        let paravirt = Paravirt::new(&kvm, config.cpus.kvm_pv, &config.cpus.hyperv)?;
        let x2apic_api = crate::paravirt::enable_x2apic_api(&vm_fd);
        let mut vcpus = Vec::with_capacity(num_vcpus as usize);
        let mut hidden_features = Vec::new();
        for index in 0..num_vcpus {
            let vcpu = Vcpu::new(&vm_fd, index, ExitCounters::for_buses(&buses))?;
            let cfg = CpuidConfig {
                vcpu_index: index,
                num_vcpus,
                tsc_khz: if host.get_tsc_khz {
                    vcpu.tsc_khz()
                } else {
                    None
                },
                tsc_deadline: host.tsc_deadline,
                hide_pvm_unsupported: hide_pvm,
            };
            let mut entries = supported.clone();
            hidden_features = arch::cpuid::adjust(&mut entries, &cfg);
            let (pv, hv) = paravirt.apply_cpuid(&mut entries, num_vcpus)?;
            if index == 0 {
                log_paravirt(paravirt.kvm_pv, &pv, &hv, x2apic_api);
            }
            vcpu.configure(&entries, &paravirt)?;
            if index == 0 {
                let entry = BootEntry {
                    mode: kernel.mode,
                    entry: kernel.entry,
                    boot_info: GuestAddress(boot_info.0),
                };
                vcpu.set_boot_entry(mem, &entry)?;
            }
            vcpus.push(vcpu);
        }
        if !hidden_features.is_empty() {
            log::warn!(
                "PVM host: hiding CPUID features its CPL0 emulator cannot run: {} (--cpus pvm_compat=off keeps them)",
                hidden_features.join(",")
            );
        }
        if plan.fully_bound {
            placement::note_numa_balancing();
        }
        let kvm_stats = KvmStats::open(vm_fd.as_ref())
            .map_err(|e| log::debug!("no VM-level KVM statistics: {e}"))
            .ok();
        Ok(Vm {
            vcpus,
            vcpu_cpus: plan.vcpu_cpus,
            kvm_stats,
            _vm_fd: vm_fd,
            disks,
            buses: Arc::new(buses),
            ram,
            devices,
            host,
            entry_mode: kernel.mode,
            hidden_features,
        })
    }

    /// The attached disks.
    pub fn disks(&self) -> &BlockDevices {
        &self.disks
    }

    /// Guest memory (for tests and inspection).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.ram.mem
    }

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
        if self.devices.serial_from_stdin {
            legacy_devices::spawn_stdin_reader(self.devices.serial.clone()).map_err(|source| {
                VmError::Spawn {
                    name: "keel-stdin".into(),
                    source,
                }
            })?;
        }
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
            let buses = Arc::clone(&self.buses);
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

/// Maps guest RAM as `plan` lays it out, logs where each piece landed, and prefaults it if
/// asked.
fn map_guest_ram(config: &VmConfig, plan: &placement::Plan) -> Result<GuestRam, VmError> {
    let m = &config.memory;
    let backing = Backing {
        page_size: m.page_size(),
        hugetlb: m.hugepages,
        shared: m.shared,
        thp: m.use_thp(),
        mergeable: m.mergeable,
    };
    let ram = GuestRam::with_pieces(plan.regions.clone(), &plan.pieces, &backing)?;
    for p in &ram.pieces {
        let policy = match placement::range_policy(p.host_addr as *const u8) {
            Ok((mode, nodes)) => placement::describe_policy(mode, &nodes),
            Err(e) => format!("policy unknown ({e})"),
        };
        log::info!(
            "memory [{:#x}, {:#x}) guest node {} at host {:#x}: {}, {policy}",
            p.piece.start,
            p.piece.start + p.piece.size,
            p.piece.guest_node,
            p.host_addr,
            backing.describe()
        );
    }
    if m.prefault {
        let cpus = placement::thread_affinity(None).map_err(VmError::Topology)?;
        let report = ram.prefault(&cpus)?;
        let workers: Vec<String> = report
            .workers
            .iter()
            .map(|w| {
                format!(
                    "cpu {}: {} MiB in {} ms",
                    w.cpu.map_or_else(|| "?".to_string(), |c| c.to_string()),
                    w.bytes >> 20,
                    w.cpu_time.as_millis()
                )
            })
            .collect();
        log::info!(
            "prefaulted {} MiB of guest RAM in {} ms with {} on {} threads ({})",
            report.bytes >> 20,
            report.elapsed.as_millis(),
            report.method,
            report.workers.len(),
            workers.join("; ")
        );
    }
    Ok(ram)
}

/// Logs what the guest gets besides plain hardware.
fn log_paravirt(
    request: arch::kvm_pv::KvmPvRequest,
    pv: &arch::kvm_pv::KvmPvFeatures,
    hv: &[&str],
    x2apic_api: bool,
) {
    let kvm = if request == arch::kvm_pv::KvmPvRequest::Hidden {
        "KVM leaves hidden (no KVM signature)".to_string()
    } else {
        format!("KVM PV features {pv}")
    };
    let apicv = match crate::paravirt::host_apic_virtualization() {
        Some((what, true)) => format!("{what} on"),
        Some((what, false)) => format!("{what} off"),
        None => "no APICv/AVIC reported by the host".to_string(),
    };
    log::info!(
        "paravirt: {kvm}; Hyper-V {}; x2APIC API {}; {apicv}",
        if hv.is_empty() {
            "off".to_string()
        } else {
            hv.join(",")
        },
        if x2apic_api { "on" } else { "unavailable" }
    );
}

/// Logs the CPUs each I/O thread may run on, as the kernel reports them.
fn log_iothread_placement(disks: &BlockDevices) {
    for (name, tid) in disks.iothread_tids() {
        let Some(tid) = tid else { continue };
        match placement::thread_affinity(Some(tid)) {
            Ok(cpus) => log::info!("iothread {name} (tid {tid}): host CPUs {cpus}"),
            Err(e) => log::warn!("iothread {name}: cannot read its CPU affinity: {e}"),
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

/// One vCPU's counters at a point in time.
#[derive(Debug, Clone)]
pub struct VcpuStats {
    /// vCPU index.
    pub index: usize,
    /// Userspace exits Keel handled, by kind.
    pub userspace: ExitSnapshot,
    /// Port and MMIO exits by device (devices with none left out).
    pub devices: Vec<DeviceExits>,
    /// Accesses no device claimed, by port (`pio.0x80`) or address (`mmio.0x...`); filled in
    /// once the vCPU has stopped (its thread keeps them while it runs).
    pub unclaimed: Vec<(String, u64)>,
    /// KVM's counters by name (empty if the host has no binary stats).
    pub kvm: Vec<(String, u64)>,
}

/// Every counter of a running VM at one point in time: per vCPU (Keel's userspace exits,
/// by kind and by device, and KVM's in-kernel counters), KVM's VM-wide counters, and each
/// disk's I/O counters, so exits per I/O can be read off one snapshot.
#[derive(Debug, Clone)]
pub struct VmCounters {
    /// When it was taken.
    pub taken: std::time::Instant,
    /// Per vCPU.
    pub vcpus: Vec<VcpuStats>,
    /// KVM's VM-wide counters by name (empty if the host has no binary stats).
    pub vm: Vec<(String, u64)>,
    /// Per disk, by name.
    pub disks: Vec<(String, IoStats)>,
    /// Per disk (same order as `disks`), the requests each of its queues completed.
    pub disk_queue_requests: Vec<Vec<u64>>,
}

fn read_kvm(stats: Option<&KvmStats>) -> Vec<(String, u64)> {
    stats
        .and_then(|s| s.read().map_err(|e| log::debug!("{e}")).ok())
        .unwrap_or_default()
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
                devices: counters.by_device(&self._vm.buses),
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
                .disks
                .disks()
                .iter()
                .map(|d| d.io_stats.queue_requests())
                .collect(),
        }
    }

    /// Per-disk I/O counters, by disk name.
    pub fn disk_stats(&self) -> Vec<(String, IoStats)> {
        self._vm
            .disks
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

/// `("pio.0x80", n)` / `("mmio.0xfed00000", n)` rows for the stats views.
fn unclaimed_rows(unclaimed: &Unclaimed) -> Vec<(String, u64)> {
    let ports = unclaimed
        .ports
        .iter()
        .map(|(p, n)| (format!("pio.{p:#x}"), *n));
    let mmio = unclaimed
        .mmio
        .iter()
        .map(|(a, n)| (format!("mmio.{a:#x}"), *n));
    ports.chain(mmio).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phys_bits_from_cpuid_or_default() {
        let e = kvm_cpuid_entry2 {
            function: 0x8000_0008,
            eax: 0x3027,
            ..Default::default()
        };
        assert_eq!(phys_bits(&[e]), 39);
        assert_eq!(phys_bits(&[]), 36);
    }
}
