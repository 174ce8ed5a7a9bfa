//! Every device a VM has, and the buses that reach them. [`DeviceManager::attach`] builds
//! them in a fixed order: the PC platform devices on the port-I/O bus ([`legacy`]), the PCI
//! host bridge ([`pci_host`]), then the virtio-blk disks ([`block`]) with their MSI-X and
//! INTx interrupts ([`interrupts`]) and their BARs on the MMIO bus, allocated in the 32-bit
//! window and moved where the guest programs them ([`pci_bars`]).
//! Each device gets its id ([`devices::device_id`]) as it is added; the vCPU threads share
//! the finished [`Buses`] and count their exits per device by it.

pub mod block;
pub mod console;
pub mod interrupts;
pub mod legacy;
pub mod pci_bars;
pub mod pci_host;
pub mod state;

use std::sync::{Arc, Mutex};

use arch::layout::PciWindows;
use devices::bus::Bus;
use devices::device_id::DeviceIds;
use devices::pci::{BarAllocator, PciSegment};
use kvm_ioctls::VmFd;

use crate::config::VmConfig;
use crate::memory::GuestRam;
use crate::placement::{self, Plan};
use block::{AttachContext, BlockDeviceError, BlockDevices};
use interrupts::GsiRouter;
use legacy::{LegacyDeviceError, LegacyDevices};
use pci_bars::PciBars;
use pci_host::PciHostError;

/// The port-I/O and MMIO buses, and the ids of the devices on them.
#[derive(Default)]
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O (shared with [`PciBars`], which moves BARs on it).
    pub mmio: Arc<Bus>,
    /// Every device's id, given as it is added; exits are counted by it.
    pub ids: DeviceIds,
}

/// Errors building a VM's devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The PC platform devices.
    #[error(transparent)]
    Legacy(#[from] LegacyDeviceError),
    /// PCI host bridge.
    #[error(transparent)]
    PciHost(#[from] PciHostError),
    /// A disk could not be attached.
    #[error(transparent)]
    Disk(#[from] BlockDeviceError),
}

/// A VM's devices: the buses the vCPUs dispatch to, the legacy devices the VMM keeps talking
/// to, and the disks with their I/O threads (stopped when this is dropped).
pub struct DeviceManager {
    // Field order matters for drop: the disks' I/O threads stop first.
    disks: BlockDevices,
    buses: Arc<Buses>,
    legacy: LegacyDevices,
    /// PCI segment 0 (a restore writes the disks' configuration through it).
    segment: Arc<Mutex<PciSegment>>,
}

impl DeviceManager {
    /// Builds every device `config` asks for and puts it on the buses, PCI BARs within
    /// `windows`. `plan.iothread_cpus[i]` (if given) are the host CPUs disk i's new I/O threads
    /// are pinned to; `plan.vcpu_cpus` say which vCPUs may share them.
    pub fn attach(
        vm: &Arc<VmFd>,
        ram: &GuestRam,
        config: &VmConfig,
        windows: &PciWindows,
        plan: &Plan,
    ) -> Result<Self, DeviceError> {
        let buses = Buses::default();
        let (below, above) = arch::memory_map::ram_below_and_above_4g(&ram.regions);
        let legacy = legacy::attach(vm, &buses, &config.serial, below, above)?;
        // The segment lives on through the buses' references to its config mechanisms.
        let segment = pci_host::attach(&buses)?;
        let bars = Arc::new(PciBars::new(Arc::clone(vm), &buses.mmio, *windows));
        segment
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set_bar_mapper(bars.clone());
        let disks = attach_disks(vm, ram, &buses.ids, &segment, &bars, config, plan)?;
        Ok(DeviceManager {
            disks,
            buses: Arc::new(buses),
            legacy,
            segment,
        })
    }

    /// The attached disks.
    pub fn disks(&self) -> &BlockDevices {
        &self.disks
    }

    /// The buses, shared with the vCPU threads.
    pub fn buses(&self) -> &Arc<Buses> {
        &self.buses
    }

    /// Starts feeding Keel's stdin to COM1 if the console is the terminal.
    pub fn start_console_input(&self) -> std::io::Result<()> {
        if self.legacy.serial_from_stdin {
            legacy::spawn_stdin_reader(self.legacy.serial.clone())?;
        }
        Ok(())
    }
}

/// Attaches the disks on PCI with their BARs allocated in the 32-bit window `pci_bars` maps.
fn attach_disks(
    vm: &Arc<VmFd>,
    ram: &GuestRam,
    ids: &DeviceIds,
    segment: &Arc<Mutex<PciSegment>>,
    pci_bars: &PciBars,
    config: &VmConfig,
    plan: &Plan,
) -> Result<BlockDevices, DeviceError> {
    let router = Arc::new(GsiRouter::new(Arc::clone(vm)));
    let (window_base, window_size) = pci_bars.windows().mmio32;
    let mut bars = BarAllocator::new(window_base, window_base + window_size);
    let disks = block::attach(
        AttachContext {
            vm,
            router: &router,
            mem: &ram.mem,
            segment,
            pci_bars,
            ids,
            bars: &mut bars,
            vcpu_cpus: &plan.vcpu_cpus,
            vcpus: config.cpus.boot_vcpus,
        },
        &config.disks,
        &plan.iothread_cpus,
    )?;
    log_iothread_placement(&disks);
    Ok(disks)
}

/// Logs the CPUs each I/O thread may run on, as the kernel reports them.
fn log_iothread_placement(disks: &BlockDevices) {
    for (name, tid) in disks.iothread_tids() {
        match placement::thread_affinity(Some(tid)) {
            Ok(cpus) => log::info!("iothread {name} (tid {tid}): host CPUs {cpus}"),
            Err(e) => log::warn!("iothread {name}: cannot read its CPU affinity: {e}"),
        }
    }
}
