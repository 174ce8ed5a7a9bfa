//! A VM's counters: Keel's userspace exits per vCPU ([`exits`], bumped by
//! [`crate::exit::handle_exit`]), KVM's in-kernel counters ([`kvm`]), the snapshot types that
//! gather them with the disks' I/O counters ([`VmCounters`], [`VcpuStats`]), the CPU time of
//! the VM's threads ([`threads`]), and the views that print them ([`view`]).

pub mod exits;
pub mod kvm;
pub mod threads;
pub mod view;

use devices::virtio::block::IoStats;

use exits::{DeviceExits, ExitSnapshot, Unclaimed};
use kvm::KvmStats;
use threads::ThreadCpu;

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
    /// CPU time of the vCPU threads and of the I/O path.
    pub threads: ThreadCpu,
}

/// KVM's counters by name, or none if the host has no binary stats or they cannot be read.
pub(crate) fn read_kvm(stats: Option<&KvmStats>) -> Vec<(String, u64)> {
    stats
        .and_then(|s| s.read().map_err(|e| log::debug!("{e}")).ok())
        .unwrap_or_default()
}

/// `("pio.0x80", n)` / `("mmio.0xfed00000", n)` rows for the stats views.
pub(crate) fn unclaimed_rows(unclaimed: &Unclaimed) -> Vec<(String, u64)> {
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
