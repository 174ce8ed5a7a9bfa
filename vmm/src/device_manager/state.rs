//! The devices' part of a snapshot: each device's state in a versioned record, captured with
//! the vCPUs parked and put back into freshly built devices before any vCPU runs. A VM with a
//! device whose state Keel cannot save yet is refused by name instead of half-saved.

use std::sync::{Mutex, MutexGuard, PoisonError};

use devices::legacy::acpi_pm::AcpiPmSnapshot;
use devices::legacy::cmos::{CmosSnapshot, CmosStateError};
use devices::legacy::serial::SerialSnapshot;
use devices::legacy::SerialError;
use serde::{Deserialize, Serialize};

use super::DeviceManager;

/// The version of [`DevicesState`]'s layout; a restore refuses any other.
pub const DEVICES_STATE_VERSION: u32 = 1;

/// Every device's saved state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevicesState {
    /// [`DEVICES_STATE_VERSION`] when written.
    pub version: u32,
    /// COM1.
    pub serial: SerialSnapshot,
    /// CMOS/RTC.
    pub cmos: CmosSnapshot,
    /// ACPI PM block.
    pub acpi_pm: AcpiPmSnapshot,
}

/// Errors saving or restoring device state.
#[derive(Debug, thiserror::Error)]
pub enum DeviceStateError {
    /// A device whose state cannot be saved yet.
    #[error("snapshots of VMs with {0} are not supported yet")]
    Unsupported(&'static str),
    /// The saved layout is another version.
    #[error("device state version {found} cannot be restored (this keel reads version {DEVICES_STATE_VERSION})")]
    Version {
        /// The version found.
        found: u32,
    },
    /// COM1's state could not be put back.
    #[error("cannot restore COM1")]
    Serial(#[source] SerialError),
    /// The CMOS state could not be put back.
    #[error("cannot restore the CMOS")]
    Cmos(#[source] CmosStateError),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DeviceManager {
    /// The state of every device; the vCPUs must be parked.
    pub fn capture_state(&self) -> Result<DevicesState, DeviceStateError> {
        if !self.disks.disks().is_empty() {
            return Err(DeviceStateError::Unsupported("disks"));
        }
        Ok(DevicesState {
            version: DEVICES_STATE_VERSION,
            serial: lock(&self.legacy.serial).state(),
            cmos: lock(&self.legacy.cmos).state(),
            acpi_pm: lock(&self.legacy.pm).state(),
        })
    }

    /// Puts `saved` into these freshly built devices.
    pub fn restore_state(&self, saved: &DevicesState) -> Result<(), DeviceStateError> {
        if saved.version != DEVICES_STATE_VERSION {
            return Err(DeviceStateError::Version {
                found: saved.version,
            });
        }
        lock(&self.legacy.serial)
            .restore(&saved.serial)
            .map_err(DeviceStateError::Serial)?;
        lock(&self.legacy.cmos)
            .restore(&saved.cmos)
            .map_err(DeviceStateError::Cmos)?;
        lock(&self.legacy.pm).restore(&saved.acpi_pm);
        Ok(())
    }
}
