//! virtio-blk disks on PCI: backing files, I/O threads, MSI-X routes, INTx lines and queue
//! notify ioeventfds.
//!
//! Disk `i` sits in PCI slot `i + 1` with one 64-bit memory BAR, allocated in the 32-bit
//! window (the guest may move it). Its queues are
//! served by I/O threads: one per queue named `<disk>-q<n>`, or one shared thread when the
//! disk names an `iothread`. Each queue's notify address is a KVM ioeventfd, so a guest kick
//! wakes the I/O thread without a userspace exit; completions go out through the MSI-X
//! vectors' irqfds.

use std::sync::{Arc, Mutex};

use devices::pci::{BarAllocator, PciDevice, PciError, PciSegment};
use devices::virtio::block::{Block, BlockConfig, BlockError, IoStatsReader};
use devices::virtio::iothread::{IoThread, IoThreadError, IoThreadHandle};
use devices::virtio::pci::{VirtioPciDevice, VirtioPciError, VIRTIO_PCI_BAR_SIZE};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use devices::device_id::{DeviceIds, TooManyDevices};

use super::interrupts::{GsiRouter, InterruptError, IntxLine, MsiVectors};
use super::pci_bars::{PciBarError, PciBars};
use crate::config::{CacheMode, DiskConfig};
use crate::placement::{self, CpuSet, PlacementError};

/// Errors attaching disks. Each names the disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockDeviceError {
    /// The block device could not be created (backing file, configuration).
    #[error("disk {disk}: cannot open {path}")]
    Block {
        /// Disk name.
        disk: String,
        /// Backing file.
        path: String,
        /// Cause.
        #[source]
        source: BlockError,
    },
    /// An I/O thread could not be pinned to its CPUs or given its scheduling policy.
    #[error("cannot place I/O thread {thread}")]
    Placement {
        /// Thread name.
        thread: String,
        /// Cause.
        #[source]
        source: PlacementError,
    },
    /// An I/O thread could not be started.
    #[error("disk {disk}: cannot start its I/O thread")]
    IoThread {
        /// Disk name.
        disk: String,
        /// Cause.
        #[source]
        source: IoThreadError,
    },
    /// Interrupt vectors or the INTx line could not be set up.
    #[error("disk {disk}: cannot set up its interrupts")]
    Interrupts {
        /// Disk name.
        disk: String,
        /// Cause.
        #[source]
        source: InterruptError,
    },
    /// The virtio-pci transport refused the device.
    #[error("disk {disk}: cannot create its virtio-pci function")]
    Transport {
        /// Disk name.
        disk: String,
        /// Cause.
        #[source]
        source: VirtioPciError,
    },
    /// No room for the BAR.
    #[error("disk {disk}: no room left for its {size:#x}-byte BAR in the PCI window")]
    NoBarSpace {
        /// Disk name.
        disk: String,
        /// BAR size.
        size: u64,
    },
    /// The PCI slot is taken or invalid.
    #[error("disk {disk}: cannot plug it into PCI slot {slot}")]
    Slot {
        /// Disk name.
        disk: String,
        /// Slot.
        slot: u8,
        /// Cause.
        #[source]
        source: PciError,
    },
    /// The BAR or its notify ioeventfds could not be mapped.
    #[error("disk {disk}: cannot map its BAR")]
    Bar {
        /// Disk name.
        disk: String,
        /// Cause.
        #[source]
        source: PciBarError,
    },
    /// The VM holds as many devices as it can.
    #[error("disk {disk}: cannot give it a device id")]
    Id {
        /// Disk name.
        disk: String,
        /// Cause.
        #[source]
        source: TooManyDevices,
    },
}

/// The disks of a running VM. Dropping it stops their I/O threads.
pub struct BlockDevices {
    // Threads stop before the devices they serve are dropped.
    iothreads: Vec<IoThread>,
    disks: Vec<AttachedDisk>,
}

/// One attached disk, as reported at start.
pub struct AttachedDisk {
    /// Disk name.
    pub name: String,
    /// PCI slot on bus 0.
    pub slot: u8,
    /// Guest-physical address of BAR 0.
    pub bar: u64,
    /// Names of the I/O threads serving its queues.
    pub iothreads: Vec<String>,
    /// Its I/O counters.
    pub io_stats: IoStatsReader,
    device: Arc<Mutex<VirtioPciDevice>>,
}

impl AttachedDisk {
    /// Its virtio-pci function.
    pub fn device(&self) -> &Arc<Mutex<VirtioPciDevice>> {
        &self.device
    }
}

impl BlockDevices {
    /// The attached disks, in slot order.
    pub fn disks(&self) -> &[AttachedDisk] {
        &self.disks
    }

    /// Linux thread IDs of the I/O threads, by name.
    pub fn iothread_tids(&self) -> Vec<(String, i32)> {
        self.iothreads
            .iter()
            .map(|t| (t.name().to_string(), t.tid()))
            .collect()
    }
}

/// Everything `attach` needs from the VM under construction.
pub struct AttachContext<'a> {
    /// The VM (for ioeventfds and irqfds).
    pub vm: &'a VmFd,
    /// GSI routing for MSI-X vectors.
    pub router: &'a Arc<GsiRouter>,
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// PCI segment 0.
    pub segment: &'a Arc<Mutex<PciSegment>>,
    /// The BARs on the MMIO bus.
    pub pci_bars: &'a PciBars,
    /// Gives each disk its device id.
    pub ids: &'a DeviceIds,
    /// Allocator over the same window.
    pub bars: &'a mut BarAllocator,
    /// Host CPUs per vCPU (`None`: not pinned), which I/O threads may share.
    pub vcpu_cpus: &'a [Option<CpuSet>],
    /// The VM's vCPUs at boot: a disk's queues by default ([`DiskConfig::queue_count`]).
    pub vcpus: u32,
}

/// Whether a disk without `iothread=` gets an I/O thread per queue: yes, unless its queues
/// poll and one polling thread per queue plus the vCPUs that may run beside them outnumber the
/// host CPUs they may use together ([`placement::vcpus_beside`]). Busy threads beyond the CPUs
/// only take turns. Measured on a 2-CPU host with one vCPU and two polling queues: each
/// queue's thread missed the guest's next request, the guest kicked for 0.96-0.99 of its
/// requests, and QD1 ran at a third of QEMU's rate (QEMU serves a disk on one thread); one
/// thread for the disk polls both queues together.
fn thread_per_queue(queues: u16, polls: bool, host_cpus: usize, vcpus: usize) -> bool {
    queues <= 1
        || !polls
        || !placement::threads_outnumber_cpus(vcpus, usize::from(queues), host_cpus)
}

/// Thread names are limited to 15 bytes by Linux.
fn thread_name(name: String) -> String {
    let mut n = name;
    n.truncate(15);
    n
}

/// Creates every disk in `disks` and plugs it into the VM.
///
/// `iothread_cpus[i]` (if given) are the host CPUs disk i's new I/O threads are pinned to.
pub fn attach(
    mut ctx: AttachContext<'_>,
    disks: &[DiskConfig],
    iothread_cpus: &[Option<CpuSet>],
) -> Result<BlockDevices, BlockDeviceError> {
    let mut out = BlockDevices {
        iothreads: Vec::new(),
        disks: Vec::new(),
    };
    let mut placement = ThreadPlacement::new(ctx.vcpu_cpus);
    for (index, cfg) in disks.iter().enumerate() {
        let name = cfg.name(index);
        // Slot 0 is the host bridge; MAX_DISKS keeps this within 1..=31.
        let slot = u8::try_from(index + 1).unwrap_or(u8::MAX);
        let queues = cfg.queue_count(ctx.vcpus);
        let mut block = open_block(cfg, &name, queues)?;
        let io_stats = block.io_stats_reader();
        let planned = iothread_cpus.get(index).and_then(Option::as_ref);
        let handles = iothreads_for(
            &mut out.iothreads,
            cfg,
            &name,
            queues,
            planned,
            &mut placement,
        )?;
        let thread_names = handles.iter().map(|h| h.name().to_string()).collect();
        block.set_iothreads(&name, handles);
        block.set_poll_window(std::time::Duration::from_micros(u64::from(cfg.poll_us)));
        let (dev, bar) = plug(&mut ctx, block, cfg, &name, queues, slot)?;
        out.disks.push(AttachedDisk {
            name,
            slot,
            bar,
            iothreads: thread_names,
            io_stats,
            device: dev,
        });
    }
    Ok(out)
}

/// What placing a disk's new I/O threads needs to know beyond the disk itself.
struct ThreadPlacement<'a> {
    /// Each vCPU's host CPUs (pinned, or its host node's), if any.
    vcpu_cpus: &'a [Option<CpuSet>],
    /// The union of `vcpu_cpus`.
    vcpus: CpuSet,
    /// The process's CPUs (read once): where unpinned threads and vCPUs may run.
    process: CpuSet,
    /// CPUs I/O threads may not be moved to beside their disk's interrupts: the vCPUs', and
    /// those already given to an earlier disk's threads that way.
    taken: CpuSet,
}

impl<'a> ThreadPlacement<'a> {
    fn new(vcpu_cpus: &'a [Option<CpuSet>]) -> Self {
        let vcpus = vcpu_cpus
            .iter()
            .flatten()
            .fold(CpuSet::default(), |all, s| all.union(s));
        ThreadPlacement {
            vcpu_cpus,
            taken: vcpus.clone(),
            vcpus,
            process: process_cpus(),
        }
    }

    /// The CPUs `cfg`'s new I/O threads are pinned to: its `iothread=cpus:` as given;
    /// otherwise `planned` (its guest node's host CPUs, else the process's), less the vCPUs'
    /// CPUs where that leaves some, and then narrowed to those that take the backing device's
    /// completion interrupts and are not taken ([`placement::irq`]), which are then taken.
    ///
    /// Off the vCPUs' CPUs because a thread beside a busy vCPU waits for it: measured with the
    /// probe (one vCPU polling its completions, 4K randread QD1 on this host's disk), the vCPU
    /// pinned to one CPU and its I/O thread on the same CPU served 126-129 IOPS with a kick per
    /// request, against 22.7-25.0K with the thread free to run elsewhere.
    fn cpus_for(
        &mut self,
        cfg: &DiskConfig,
        disk: &str,
        planned: Option<&CpuSet>,
    ) -> Option<CpuSet> {
        if cfg.iothread_cpus.is_some() {
            return planned.cloned();
        }
        let candidates = planned.unwrap_or(&self.process);
        let free = candidates.difference(&self.vcpus).narrowing(candidates);
        if let Some(free) = &free {
            log::info!(
                "{disk}: its I/O thread(s) run on host CPUs {free}, where no pinned vCPU runs \
                 (iothread=cpus: sets them)"
            );
        }
        let base = free.or_else(|| planned.cloned());
        let near = self.near_completions(cfg, disk, base.as_ref().unwrap_or(&self.process));
        if let Some(near) = &near {
            self.taken = self.taken.union(near);
        }
        near.or(base)
    }

    /// Those of `candidates` beside the completion interrupts of `cfg`'s device, when that
    /// narrows them (logged), else `None`.
    fn near_completions(
        &self,
        cfg: &DiskConfig,
        disk: &str,
        candidates: &CpuSet,
    ) -> Option<CpuSet> {
        let irq = placement::irq::completion_cpus(&cfg.path)?;
        let near = placement::irq::near_completions(candidates, &irq, &self.taken)?;
        log::info!(
            "{disk}: its I/O thread(s) run on host CPUs {near}, which take the completion \
             interrupts of {}'s device (iothread=cpus: sets them)",
            cfg.path.display()
        );
        Some(near)
    }
}

/// Opens `cfg`'s backing file as a virtio-blk device.
fn open_block(cfg: &DiskConfig, name: &str, queues: u16) -> Result<Block, BlockDeviceError> {
    Block::new(BlockConfig {
        path: cfg.path.clone(),
        readonly: cfg.readonly,
        direct: cfg.cache == CacheMode::None,
        num_queues: queues,
        queue_size: cfg.queue_size,
        serial: cfg.serial.clone(),
        lock: cfg.lock,
        engine: cfg.engine,
    })
    .map_err(|source| BlockDeviceError::Block {
        disk: name.to_string(),
        path: cfg.path.display().to_string(),
        source,
    })
}

/// Wraps `block` in a virtio-pci function with its interrupts, gives it a BAR and plugs it
/// into PCI `slot`. Returns the function and its BAR address.
fn plug(
    ctx: &mut AttachContext<'_>,
    block: Block,
    cfg: &DiskConfig,
    name: &str,
    queues: u16,
    slot: u8,
) -> Result<(Arc<Mutex<VirtioPciDevice>>, u64), BlockDeviceError> {
    let irq_err = |source| BlockDeviceError::Interrupts {
        disk: name.to_string(),
        source,
    };
    let msi = MsiVectors::new(ctx.router.clone(), queues + 1).map_err(irq_err)?;
    let intx = IntxLine::new(ctx.vm, arch::layout::pci_intx_gsi(slot)).map_err(irq_err)?;
    let intx_gsi = intx.gsi();
    let transport_err = |source| BlockDeviceError::Transport {
        disk: name.to_string(),
        source,
    };
    let mut dev = VirtioPciDevice::new(
        Box::new(block),
        ctx.mem.clone(),
        Arc::new(msi),
        Some(Arc::new(intx)),
    )
    .map_err(transport_err)?;
    dev.set_interrupt_line(intx_gsi as u8);
    let bar = ctx
        .bars
        .allocate(VIRTIO_PCI_BAR_SIZE, VIRTIO_PCI_BAR_SIZE)
        .ok_or_else(|| BlockDeviceError::NoBarSpace {
            disk: name.to_string(),
            size: VIRTIO_PCI_BAR_SIZE,
        })?;
    dev.set_bar_address(0, bar).map_err(transport_err)?;
    let dev = Arc::new(Mutex::new(dev));
    let pci: Arc<Mutex<dyn PciDevice>> = dev.clone();
    ctx.segment
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .add_device_at(slot, pci.clone())
        .map_err(|source| BlockDeviceError::Slot {
            disk: name.to_string(),
            slot,
            source,
        })?;
    let label = ctx.ids.add(name).map_err(|source| BlockDeviceError::Id {
        disk: name.to_string(),
        source,
    })?;
    // PciBars registers (duplicates of) the queue notify eventfds as ioeventfds.
    {
        let guard = dev
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ctx.pci_bars
            .add(
                &label,
                (slot, 0),
                (bar, VIRTIO_PCI_BAR_SIZE),
                pci,
                &guard.notify_eventfds(),
            )
            .map_err(|source| BlockDeviceError::Bar {
                disk: name.to_string(),
                source,
            })?;
    }
    log::info!(
        "disk {name}: {} on PCI 00:{slot:02x}.0, BAR {bar:#x}, {} queue(s), INTx GSI {intx_gsi}",
        cfg.path.display(),
        queues
    );
    Ok((dev, bar))
}

/// The I/O threads serving `cfg`'s queues: its named (possibly shared) thread; one new thread
/// for all its queues when a thread each would not get a host CPU ([`thread_per_queue`]); or
/// one new thread per queue. New threads are pinned to [`ThreadPlacement::cpus_for`] and,
/// when [`placement::batch_wakeups`] says so, put under `SCHED_BATCH`.
fn iothreads_for(
    threads: &mut Vec<IoThread>,
    cfg: &DiskConfig,
    disk: &str,
    queues: u16,
    planned: Option<&CpuSet>,
    place: &mut ThreadPlacement<'_>,
) -> Result<Vec<IoThreadHandle>, BlockDeviceError> {
    if let Some(shared) = &cfg.iothread {
        if let Some(t) = threads.iter().find(|t| t.name() == shared) {
            log::info!(
                "{disk}: shares I/O thread {shared}, which keeps its first disk's CPUs and \
                 scheduling policy"
            );
            return Ok(vec![t.handle()]);
        }
    }
    let cpus = place.cpus_for(cfg, disk, planned);
    let process = &place.process;
    let (vcpus, host_cpus) =
        placement::vcpus_beside(cpus.as_ref().unwrap_or(process), place.vcpu_cpus, process);
    let names: Vec<String> = if let Some(shared) = &cfg.iothread {
        vec![shared.clone()]
    } else if !thread_per_queue(queues, cfg.poll_us > 0, host_cpus, vcpus) {
        let name = thread_name(format!("{disk}-io"));
        log::info!(
            "{disk}: its {} polling queues share I/O thread {name}: beside {vcpus} vCPU(s) they \
             would not each get one of {host_cpus} host CPU(s) (iothread= sets the layout)",
            queues
        );
        vec![name]
    } else {
        (0..queues)
            .map(|q| thread_name(format!("{disk}-q{q}")))
            .collect()
    };
    let batch = placement::batch_wakeups(cfg.iothread_sched, vcpus, names.len(), host_cpus);
    if batch {
        log::info!(
            "{disk}: its I/O thread(s) run under SCHED_BATCH: woken, they wait for a free CPU \
             instead of preempting a vCPU ({vcpus} vCPU(s) and {} thread(s) on {host_cpus} host \
             CPU(s); iothread_sched= sets it)",
            names.len()
        );
    }
    names
        .into_iter()
        .map(|name| {
            let thread = spawn_iothread(&name, disk, cpus.as_ref(), batch)?;
            let handle = thread.handle();
            threads.push(thread);
            Ok(handle)
        })
        .collect()
}

/// The host CPUs this process may run on (its affinity), or CPUs 0..N for the N the standard
/// library counts when the affinity cannot be read.
fn process_cpus() -> CpuSet {
    placement::thread_affinity(None).unwrap_or_else(|e| {
        log::warn!("cannot read this process's CPU affinity: {e}");
        let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        CpuSet::try_from_iter((0..n).filter_map(|c| u32::try_from(c).ok())).unwrap_or_default()
    })
}

/// Starts I/O thread `name` for `disk` under its seccomp filter, pinned to `cpus` and, with
/// `batch`, under `SCHED_BATCH`.
fn spawn_iothread(
    name: &str,
    disk: &str,
    cpus: Option<&CpuSet>,
    batch: bool,
) -> Result<IoThread, BlockDeviceError> {
    let filter = || {
        crate::seccomp::apply(crate::seccomp::ThreadKind::Io)
            .map_err(|e| crate::api::routes::error_chain(&e))
    };
    let thread =
        IoThread::spawn_with(name, filter).map_err(|source| BlockDeviceError::IoThread {
            disk: disk.to_string(),
            source,
        })?;
    let place = || {
        if let Some(cpus) = cpus {
            placement::set_thread_affinity(Some(thread.tid()), cpus)?;
        }
        if batch {
            placement::set_thread_batch(Some(thread.tid()))?;
        }
        Ok(())
    };
    place().map_err(|source| BlockDeviceError::Placement {
        thread: name.to_string(),
        source,
    })?;
    Ok(thread)
}

#[cfg(test)]
mod tests {
    use super::thread_per_queue;

    #[test]
    fn polling_queues_share_a_thread_only_when_the_host_cpus_run_out() {
        // One vCPU, two polling queues: three busy threads on two CPUs share.
        assert!(!thread_per_queue(2, true, 2, 1));
        // Enough CPUs, no polling, or one queue: a thread per queue.
        assert!(thread_per_queue(2, true, 3, 1));
        assert!(thread_per_queue(2, false, 2, 1));
        assert!(thread_per_queue(1, true, 1, 4));
        assert!(thread_per_queue(4, true, 8, 4));
        assert!(!thread_per_queue(4, true, 7, 4));
    }
}
