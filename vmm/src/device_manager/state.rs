//! The devices' part of a snapshot: each device's state in a versioned record, captured with
//! the vCPUs parked and put back into freshly built devices before any vCPU runs. Each
//! device's record comes from its [`DeviceSnapshot`] implementation with that device's own
//! state version ([`Saved`]), checked on restore.
//!
//! Disks are quiesced first ([`DeviceManager::capture_state`]): their queues leave their I/O
//! threads and every request in flight finishes (its completion written to the used ring and
//! signalled to the guest) before any vCPU or irqchip state is read, so the snapshot holds
//! each completion and its interrupt. [`DeviceManager::resume_dataplane`] serves them again.
//! A restore replays each disk's virtio-pci state into the new function: BAR, command and
//! interrupt line through the PCI segment (the BAR moves with its ioeventfds), then the
//! transport's MSI-X table and common configuration (activation starts each queue where it
//! stood), then MSI-X enable; [`DeviceManager::kick_after_restore`], once the vCPUs' state is
//! in, notifies every queue and signals its vector.

use std::sync::{Mutex, MutexGuard, PoisonError};

use devices::legacy::acpi_pm::AcpiPmSnapshot;
use devices::legacy::cmos::CmosSnapshot;
use devices::legacy::i8042::I8042Snapshot;
use devices::legacy::serial::SerialSnapshot;
use devices::snapshot::{self as device_snapshot, DeviceSnapshot, Saved, StateError};
use devices::virtio::pci::state::{RestoreError, VirtioPciState};
use serde::{Deserialize, Serialize};

use super::block::AttachedDisk;
use super::DeviceManager;

/// The version of [`DevicesState`]'s layout; a restore refuses any other.
pub const DEVICES_STATE_VERSION: u32 = 3;

/// Configuration-space registers a restore writes through the PCI segment: BAR 0 (both
/// dwords), the interrupt line, then the command register.
const CONFIG_REPLAY: [(u32, usize); 4] = [(0x10, 4), (0x14, 4), (0x3c, 1), (0x04, 2)];
/// MSI-X message control, from the start of the MSI-X capability.
const MSIX_MSG_CTL: u32 = 2;

/// One disk's saved state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskState {
    /// Its name (a restore checks the disks line up).
    pub name: String,
    /// Its virtio-pci function.
    pub transport: Saved<VirtioPciState>,
}

/// Every device's saved state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevicesState {
    /// [`DEVICES_STATE_VERSION`] when written.
    pub version: u32,
    /// COM1.
    pub serial: Saved<SerialSnapshot>,
    /// The i8042.
    pub i8042: Saved<I8042Snapshot>,
    /// CMOS/RTC.
    pub cmos: Saved<CmosSnapshot>,
    /// ACPI PM block.
    pub acpi_pm: Saved<AcpiPmSnapshot>,
    /// The disks, in slot order.
    pub disks: Vec<DiskState>,
}

/// Errors saving or restoring device state.
#[derive(Debug, thiserror::Error)]
pub enum DeviceStateError {
    /// A disk could not be quiesced or resumed.
    #[error("disk {disk}")]
    Disk {
        /// The disk.
        disk: String,
        /// Cause.
        #[source]
        source: RestoreError,
    },
    /// A device's saved state could not be put back.
    #[error("cannot restore {name}")]
    Restore {
        /// The device (a disk's name, or the platform device's).
        name: String,
        /// Cause.
        #[source]
        source: StateError,
    },
    /// The saved disks do not match the configuration's.
    #[error("the snapshot holds {saved} disk state(s) for {configured} disk(s)")]
    DiskCount {
        /// Saved.
        saved: usize,
        /// Configured.
        configured: usize,
    },
    /// The saved layout is another version.
    #[error("device state version {found} cannot be restored (this keel reads version {DEVICES_STATE_VERSION})")]
    Version {
        /// The version found.
        found: u32,
    },
}

/// Puts `saved` back into the device behind `m`.
fn restore_one<D: DeviceSnapshot>(
    m: &Mutex<D>,
    saved: &Saved<D::State>,
) -> Result<(), DeviceStateError> {
    device_snapshot::restore(&mut *lock(m), saved).map_err(|source| DeviceStateError::Restore {
        name: D::NAME.to_string(),
        source,
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DeviceManager {
    /// The state of every device; the vCPUs must be parked. Quiesces the disks, which stay
    /// so until [`DeviceManager::resume_dataplane`] (also when this fails).
    pub fn capture_state(&self) -> Result<DevicesState, DeviceStateError> {
        let mut disks = Vec::new();
        for d in self.disks.disks() {
            let mut dev = lock(d.device());
            dev.quiesce().map_err(|source| DeviceStateError::Disk {
                disk: d.name.clone(),
                source,
            })?;
            disks.push(DiskState {
                name: d.name.clone(),
                transport: device_snapshot::save(&*dev),
            });
        }
        Ok(DevicesState {
            version: DEVICES_STATE_VERSION,
            serial: device_snapshot::save(&*lock(&self.legacy.serial)),
            i8042: device_snapshot::save(&*lock(&self.legacy.i8042)),
            cmos: device_snapshot::save(&*lock(&self.legacy.cmos)),
            acpi_pm: device_snapshot::save(&*lock(&self.legacy.pm)),
            disks,
        })
    }

    /// Serves the disks' queues again after [`DeviceManager::capture_state`].
    pub fn resume_dataplane(&self) {
        for d in self.disks.disks() {
            if let Err(e) = lock(d.device()).unquiesce() {
                log::error!("disk {}: cannot serve its queues again: {e}", d.name);
            }
        }
    }

    /// After a restore, once every vCPU's state is in: notifies every disk queue and signals
    /// its vector, so nothing queued or completed before the snapshot waits forever.
    pub fn kick_after_restore(&self) {
        for d in self.disks.disks() {
            lock(d.device()).kick_after_restore();
        }
    }

    /// Replays a disk's saved function into this one (see the module documentation).
    fn restore_disk(
        &self,
        slot: u8,
        disk: &AttachedDisk,
        saved: &DiskState,
    ) -> Result<(), DeviceStateError> {
        let config = &saved.transport.state.config_space;
        let write = |offset: u32, len: usize| {
            let at = offset as usize;
            if let Some(bytes) = config.get(at..at + len) {
                lock(&self.segment).config_write(0, slot, 0, offset, bytes);
            }
        };
        for (offset, len) in CONFIG_REPLAY {
            write(offset, len);
        }
        let msix_cap = {
            let mut dev = lock(disk.device());
            device_snapshot::restore(&mut *dev, &saved.transport).map_err(|source| {
                DeviceStateError::Restore {
                    name: disk.name.clone(),
                    source,
                }
            })?;
            u32::from(dev.cap_offsets().msix)
        };
        write(msix_cap + MSIX_MSG_CTL, 2);
        Ok(())
    }

    /// Puts `saved` into these freshly built devices.
    pub fn restore_state(&self, saved: &DevicesState) -> Result<(), DeviceStateError> {
        if saved.version != DEVICES_STATE_VERSION {
            return Err(DeviceStateError::Version {
                found: saved.version,
            });
        }
        restore_one(&self.legacy.serial, &saved.serial)?;
        restore_one(&self.legacy.i8042, &saved.i8042)?;
        restore_one(&self.legacy.cmos, &saved.cmos)?;
        restore_one(&self.legacy.pm, &saved.acpi_pm)?;
        let disks = self.disks.disks();
        if saved.disks.len() != disks.len() {
            return Err(DeviceStateError::DiskCount {
                saved: saved.disks.len(),
                configured: disks.len(),
            });
        }
        for (disk, state) in disks.iter().zip(&saved.disks) {
            self.restore_disk(disk.slot, disk, state)?;
        }
        Ok(())
    }
}
