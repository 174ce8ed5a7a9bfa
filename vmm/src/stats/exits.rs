//! Keel's userspace exit counters: per vCPU, by kind ([`ExitCounters`], read as an
//! [`ExitSnapshot`]) and by device ([`DeviceExits`]), and the accesses no device claimed
//! ([`Unclaimed`]). [`crate::exit::handle_exit`] bumps them; the stats views read them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use devices::device_id::{DeviceId, DeviceIds, MAX_DEVICES};

/// Userspace exit counters of one vCPU. Atomic so others can read them while it runs; only
/// the vCPU's own thread writes.
#[derive(Debug)]
pub struct ExitCounters {
    /// Port reads.
    pub io_in: AtomicU64,
    /// Port writes.
    pub io_out: AtomicU64,
    /// MMIO reads.
    pub mmio_read: AtomicU64,
    /// MMIO writes.
    pub mmio_write: AtomicU64,
    /// Accesses no device claimed.
    pub unclaimed: AtomicU64,
    /// KVM_RUN interrupted by a signal.
    pub interrupted: AtomicU64,
    /// Other exits.
    pub other: AtomicU64,
    /// Port exits per device, indexed by [`DeviceId`]: one slot for every id a VM can give,
    /// so a device added while the vCPU runs is counted too.
    pio_devices: Box<[AtomicU64]>,
    /// MMIO exits per device, indexed by [`DeviceId`].
    mmio_devices: Box<[AtomicU64]>,
}

impl Default for ExitCounters {
    fn default() -> Self {
        let slots = || (0..MAX_DEVICES).map(|_| AtomicU64::new(0)).collect();
        ExitCounters {
            io_in: AtomicU64::new(0),
            io_out: AtomicU64::new(0),
            mmio_read: AtomicU64::new(0),
            mmio_write: AtomicU64::new(0),
            unclaimed: AtomicU64::new(0),
            interrupted: AtomicU64::new(0),
            other: AtomicU64::new(0),
            pio_devices: slots(),
            mmio_devices: slots(),
        }
    }
}

impl ExitCounters {
    fn bump_device(slots: &[AtomicU64], id: DeviceId) {
        if let Some(c) = slots.get(id.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a port exit device `id` handled.
    pub(crate) fn pio_device(&self, id: DeviceId) {
        Self::bump_device(&self.pio_devices, id);
    }

    /// Counts an MMIO exit device `id` handled.
    pub(crate) fn mmio_device(&self, id: DeviceId) {
        Self::bump_device(&self.mmio_devices, id);
    }

    /// Port and MMIO exits per device of `devices`, skipping devices with none: port exits
    /// first, then MMIO, each in the order the devices were added.
    pub fn by_device(&self, devices: &DeviceIds) -> Vec<DeviceExits> {
        let labels = devices.labels();
        let mut out = Vec::new();
        for (bus, slots) in [("pio", &self.pio_devices), ("mmio", &self.mmio_devices)] {
            for label in &labels {
                let count = slots
                    .get(label.id().index())
                    .map_or(0, |c| c.load(Ordering::Relaxed));
                if count > 0 {
                    out.push(DeviceExits {
                        bus,
                        device: label.name().to_owned(),
                        count,
                    });
                }
            }
        }
        out
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Total userspace exits counted.
    pub fn total(&self) -> u64 {
        [
            &self.io_in,
            &self.io_out,
            &self.mmio_read,
            &self.mmio_write,
            &self.interrupted,
            &self.other,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    /// The counters' current values.
    pub fn snapshot(&self) -> ExitSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExitSnapshot {
            io: get(&self.io_in) + get(&self.io_out),
            mmio: get(&self.mmio_read) + get(&self.mmio_write),
            unclaimed: get(&self.unclaimed),
            interrupted: get(&self.interrupted),
            other: get(&self.other),
            total: self.total(),
        }
    }
}

/// Userspace exits one device caused on one vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceExits {
    /// "pio" or "mmio".
    pub bus: &'static str,
    /// Device name, as given when the device was added.
    pub device: String,
    /// Exits.
    pub count: u64,
}

/// Userspace exit counts at one point in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitSnapshot {
    /// Port I/O exits.
    pub io: u64,
    /// MMIO exits.
    pub mmio: u64,
    /// Accesses (port or MMIO) no device claimed; also counted in `io`/`mmio`.
    pub unclaimed: u64,
    /// KVM_RUN interrupted by a signal.
    pub interrupted: u64,
    /// Other exits.
    pub other: u64,
    /// All userspace exits.
    pub total: u64,
}

/// Where unclaimed accesses went, per vCPU (owned by the vCPU thread).
#[derive(Debug, Default)]
pub struct Unclaimed {
    /// Port number -> count.
    pub ports: BTreeMap<u16, u64>,
    /// MMIO address -> count (bounded, see [`Unclaimed::MAX_ADDRESSES`]).
    pub mmio: BTreeMap<u64, u64>,
}

impl Unclaimed {
    /// At most this many distinct MMIO addresses are remembered; the rest are only counted.
    pub const MAX_ADDRESSES: usize = 256;

    pub(crate) fn port(&mut self, port: u16) {
        let n = self.ports.entry(port).or_insert(0);
        if *n == 0 {
            log::debug!("unclaimed port {port:#x}");
        }
        *n += 1;
    }

    pub(crate) fn mmio(&mut self, addr: u64) {
        if let Some(n) = self.mmio.get_mut(&addr) {
            *n += 1;
        } else if self.mmio.len() < Self::MAX_ADDRESSES {
            log::debug!("unclaimed MMIO address {addr:#x}");
            self.mmio.insert(addr, 1);
        }
    }
}
