//! The interface between PCI device models and the PCI core.
//!
//! A [`PciDevice`] sees only offsets: configuration accesses relative to the start of its
//! (function 0) configuration space, and BAR accesses relative to the start of a BAR. Where a
//! BAR lives is the VMM's business; [`PciBarBusDevice`] plugs one BAR of a device into a
//! [`crate::bus::Bus`] at whatever address the VMM chose.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::config::{BarInfo, BarReprogram};
use crate::bus::{BusDevice, MachineRequest};

/// A PCI function (Keel populates function 0 of each device only).
pub trait PciDevice: Send {
    /// Reads `data.len()` bytes of configuration space at `offset` (0..4096 with ECAM, 0..256
    /// through 0xCF8/0xCFC). Accesses are 1, 2 or 4 bytes within one dword.
    fn config_read(&mut self, offset: u32, data: &mut [u8]);
    /// Writes configuration space at `offset`; returns the BAR move the write caused, if any.
    fn config_write(&mut self, offset: u32, data: &[u8]) -> Option<BarReprogram>;
    /// The device's BARs, with the addresses they are currently mapped at.
    fn bars(&self) -> Vec<BarInfo>;
    /// Reads `data.len()` bytes (any width, any offset: the guest is hostile) at `offset` in
    /// BAR `bar`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` in BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
}

/// Locks a PCI device, recovering the guard if a previous holder panicked.
pub(crate) fn lock_device<'a>(
    device: &'a Mutex<dyn PciDevice + 'static>,
) -> MutexGuard<'a, dyn PciDevice + 'static> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One BAR of a PCI device as a [`BusDevice`]: insert it on the MMIO (or port I/O) bus at the
/// BAR's address with the BAR's size, and move it when the guest reprograms the BAR.
pub struct PciBarBusDevice {
    device: Arc<Mutex<dyn PciDevice>>,
    bar: usize,
}

impl PciBarBusDevice {
    /// Routes bus accesses to BAR `bar` of `device`.
    pub fn new(device: Arc<Mutex<dyn PciDevice>>, bar: usize) -> Self {
        Self { device, bar }
    }

    /// The BAR index this adapter serves.
    pub fn bar(&self) -> usize {
        self.bar
    }
}

impl std::fmt::Debug for PciBarBusDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciBarBusDevice")
            .field("bar", &self.bar)
            .finish_non_exhaustive()
    }
}

impl BusDevice for PciBarBusDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock_device(&self.device).bar_read(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<MachineRequest> {
        lock_device(&self.device).bar_write(self.bar, offset, data);
        None
    }
}
