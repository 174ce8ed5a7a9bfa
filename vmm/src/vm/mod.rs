//! Building a VM: [`Vm::create`] validates the config against the host, then runs the steps
//! in order: the KVM VM ([`kvm`]), guest RAM ([`ram`]), the devices
//! ([`crate::device_manager`]), the payload and boot tables ([`payload`]) and the vCPUs
//! ([`vcpus`]). [`Vm::start`] turns it into a [`RunningVm`] with one thread per vCPU
//! ([`running`]), until the guest powers off, resets, fails, or the caller stops it.

mod kvm;
mod payload;
mod ram;
mod running;
mod snapshot;
mod state;
mod vcpus;

pub use running::{kick_signal, RunningVm};
pub use snapshot::{Progress as SnapshotProgress, SnapshotError, SnapshotJob};
pub use state::VmState;

use std::sync::Arc;

use arch::layout::PciWindows;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::config::{ConfigError, VmConfig};
use crate::device_manager::block::BlockDevices;
use crate::device_manager::{DeviceError, DeviceManager};
use crate::exit::ResetCause;
use crate::host::HostInfo;
use crate::loader::{EntryMode, LoaderError};
use crate::memory::{GuestRam, MemoryError};
use crate::paravirt::ParavirtError;
use crate::placement::{self, CpuSet, HostTopology, PlacementError};
use crate::stats::kvm::KvmStats;
use crate::vcpu::{Vcpu, VcpuError};

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
    /// Devices.
    #[error(transparent)]
    Devices(#[from] DeviceError),
    /// Kernel, initramfs or command line.
    #[error(transparent)]
    Loader(#[from] LoaderError),
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
    /// The eventfd the vCPU threads signal their end on could not be created.
    #[error("cannot create the vCPU end eventfd")]
    EndEvent(#[source] std::io::Error),
    /// A snapshot file could not be read.
    #[error(transparent)]
    SnapshotFile(Box<crate::snapshot::FileError>),
    /// A snapshot's configuration was refused.
    #[error("the snapshot's configuration is refused")]
    SnapshotConfig(#[source] Box<crate::config::JsonConfigError>),
    /// A snapshot's vCPUs do not match its configuration.
    #[error("the snapshot holds {saved} vCPU states for {built} vCPUs")]
    SnapshotVcpus {
        /// States found.
        saved: usize,
        /// vCPUs built.
        built: usize,
    },
    /// A snapshot's vCPU states are not in vCPU order.
    #[error("the snapshot's vCPU state #{position} is saved for vCPU {saved}")]
    SnapshotVcpuOrder {
        /// Where the state sits in the snapshot (the vCPU it is restored to).
        position: u32,
        /// The vCPU index saved with it.
        saved: u32,
    },
    /// A snapshot's device state could not be restored.
    #[error(transparent)]
    DeviceState(Box<crate::device_manager::state::DeviceStateError>),
}

impl From<crate::snapshot::FileError> for VmError {
    fn from(e: crate::snapshot::FileError) -> Self {
        VmError::SnapshotFile(Box::new(e))
    }
}

impl From<crate::device_manager::state::DeviceStateError> for VmError {
    fn from(e: crate::device_manager::state::DeviceStateError) -> Self {
        VmError::DeviceState(Box::new(e))
    }
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
    /// Buses, legacy devices, and the disks with their I/O threads (stopped when the VM is
    /// dropped, before guest RAM unmaps).
    devices: DeviceManager,
    ram: GuestRam,
    /// What it was built from (a snapshot saves it).
    config: VmConfig,
    /// Host facts used to build it.
    pub host: HostInfo,
    /// Boot path chosen for the kernel (none for a restored VM).
    pub entry_mode: Option<EntryMode>,
    /// CPUID features hidden because the host is PVM.
    pub hidden_features: Vec<&'static str>,
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Checks `config` against what the host offers.
/// The payload's files are checked only when it is loaded (`load_payload`).
fn validate(config: &VmConfig, host: &HostInfo, load_payload: bool) -> Result<(), VmError> {
    let (max_vcpus, why) = host.vcpu_limit();
    config.cpus.validate(max_vcpus, why)?;
    config.memory.validate(host.ram_bytes)?;
    config.validate_numa()?;
    if load_payload {
        config.payload.validate()?;
    }
    config.validate_disks()?;
    Ok(())
}

impl Vm {
    /// Validates `config` against the host and builds the VM.
    pub fn create(config: &VmConfig) -> Result<Self, VmError> {
        Self::build(config, true)
    }

    /// Builds the VM; with `load_payload` the kernel (and initramfs and boot tables) go into
    /// guest RAM and the boot vCPU starts at its entry, otherwise (a restore) RAM stays empty.
    fn build(config: &VmConfig, load_payload: bool) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let host = HostInfo::probe(&kvm);
        validate(config, &host, load_payload)?;
        let topology = HostTopology::from_host().map_err(VmError::Topology)?;

        let vm_fd = kvm::create_vm(&kvm)?;
        let supported = kvm::supported_cpuid(&kvm)?;
        let phys_bits = kvm::phys_bits(&supported);
        let plan = placement::plan(config, &topology, phys_bits)?;
        let ram = ram::map_guest_ram(config, &plan)?;
        ram.register(&vm_fd)?;
        let windows = PciWindows::for_guest(ram.end(), phys_bits);
        let devices = DeviceManager::attach(&vm_fd, &ram, config, &windows, &plan)?;
        let boot = if load_payload {
            Some(payload::load(config, &ram, &plan, &windows)?)
        } else {
            None
        };
        let (vcpus, hidden_features) = vcpus::create(&vcpus::VcpuSetup {
            kvm: &kvm,
            vm: &vm_fd,
            config,
            host: &host,
            supported: &supported,
            mem: &ram.mem,
            boot: boot.as_ref(),
        })?;

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
            devices,
            ram,
            config: config.clone(),
            host,
            entry_mode: boot.map(|b| b.mode),
            hidden_features,
        })
    }

    /// The attached disks.
    pub fn disks(&self) -> &BlockDevices {
        self.devices.disks()
    }

    /// What it was built from.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Guest memory (for tests and inspection).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.ram.mem
    }
}
