//! The PCI host bridge: segment 0 with the root bridge at 00:00.0, reachable through the
//! legacy configuration ports (0xCF8/0xCFC) and through ECAM at `layout::PCI_ECAM_START`
//! (announced to the guest in the ACPI MCFG table).

use std::sync::{Arc, Mutex};

use arch::layout::{ports, PCI_ECAM_SIZE, PCI_ECAM_START};
use devices::bus::BusError;
use devices::pci::{PciConfigIo, PciConfigMmio, PciSegment, PCI_MMIO_CONFIG_SIZE};

use super::Buses;

/// Errors placing the host bridge.
#[derive(Debug, thiserror::Error)]
pub enum PciHostError {
    /// A bus insertion failed.
    #[error("failed to place the PCI {what} on its bus")]
    Bus {
        /// Which access mechanism.
        what: &'static str,
        /// Cause.
        #[source]
        source: BusError,
    },
    /// The VM holds as many devices as it can.
    #[error(transparent)]
    TooManyDevices(#[from] devices::device_id::TooManyDevices),
}

/// Creates segment 0 and puts its two configuration mechanisms on the buses.
pub fn attach(buses: &Buses) -> Result<Arc<Mutex<PciSegment>>, PciHostError> {
    debug_assert_eq!(PCI_ECAM_SIZE, PCI_MMIO_CONFIG_SIZE);
    let segment = Arc::new(Mutex::new(PciSegment::new()));
    let io = Arc::new(Mutex::new(PciConfigIo::new(Arc::clone(&segment))));
    buses
        .pio
        .insert(
            &buses.ids.add("pci-config-io")?,
            io,
            u64::from(ports::PCI_CONFIG),
            u64::from(ports::PCI_CONFIG_LEN),
        )
        .map_err(|source| PciHostError::Bus {
            what: "configuration ports",
            source,
        })?;
    let ecam = Arc::new(Mutex::new(PciConfigMmio::new(Arc::clone(&segment))));
    buses
        .mmio
        .insert(
            &buses.ids.add("pci-ecam")?,
            ecam,
            PCI_ECAM_START,
            PCI_ECAM_SIZE,
        )
        .map_err(|source| PciHostError::Bus {
            what: "ECAM window",
            source,
        })?;
    Ok(segment)
}
