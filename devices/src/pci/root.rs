//! The PCI host bridge (00:00.0) and PCI segment 0, bus 0, which holds up to 31 endpoints.
//!
//! Only bus 0 and function 0 of each device exist; every other address reads all-ones (the
//! "no device" answer, vendor ID 0xffff) and ignores writes. A guest config write that moves a
//! BAR is handed, before the write returns, to the [`BarMapper`] the VMM installed, so the
//! guest's next access already finds the BAR at its new address.

use std::sync::{Arc, Mutex};

use log::debug;

use super::config::{BarInfo, BarReprogram, PciClassCode, PciConfiguration};
use super::device::{lock_device, PciDevice};

/// Vendor ID of the host bridge (Intel).
pub const PCI_ROOT_VENDOR_ID: u16 = 0x8086;
/// Device ID of the host bridge.
pub const PCI_ROOT_DEVICE_ID: u16 = 0x0d57;
/// Device slots on a bus (device numbers 0..=31).
pub const PCI_MAX_DEVICES: usize = 32;

/// Errors from populating a PCI segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciError {
    /// Device numbers 1..=31 are all taken.
    #[error("no free device number on PCI bus 0")]
    BusFull,
    /// Endpoints use device numbers 1..=31 (0 is the host bridge).
    #[error("PCI device number {0} is invalid (endpoints use 1..=31)")]
    InvalidDevice(u8),
    /// The device number is already populated.
    #[error("PCI device number {0} is already in use")]
    DeviceInUse(u8),
}

/// The host bridge: a type 0 header with class 0x06/0x00 (host bridge) and nothing else.
#[derive(Debug, Clone)]
pub struct PciRoot {
    config: PciConfiguration,
}

impl PciRoot {
    /// Creates the host bridge.
    pub fn new() -> Self {
        let class = PciClassCode {
            class: 0x06,
            subclass: 0x00,
            prog_if: 0x00,
        };
        Self {
            config: PciConfiguration::new(PCI_ROOT_VENDOR_ID, PCI_ROOT_DEVICE_ID, class),
        }
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for PciRoot {
    fn config_read(&mut self, offset: u32, data: &mut [u8]) {
        self.config.read_config(offset, data);
    }

    fn config_write(&mut self, offset: u32, data: &[u8]) -> Option<BarReprogram> {
        self.config.write_config(offset, data)
    }

    fn bars(&self) -> Vec<BarInfo> {
        Vec::new()
    }

    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// Where the VMM maps BARs: told of every BAR move a guest config write makes, while the write
/// is being handled (on the vCPU thread, with the segment locked: it must not lock the segment
/// or the device).
pub trait BarMapper: Send + Sync {
    /// The guest moved BAR `reprogram.bar` of the device at `device` on bus 0 from
    /// `reprogram.old` to `reprogram.new` (guest-controlled, to be validated).
    fn bar_moved(&self, device: u8, reprogram: &BarReprogram);
}

/// PCI segment 0 with its single bus: the host bridge at device 0 and endpoints at 1..=31.
pub struct PciSegment {
    devices: [Option<Arc<Mutex<dyn PciDevice>>>; PCI_MAX_DEVICES],
    mapper: Option<Arc<dyn BarMapper>>,
}

impl std::fmt::Debug for PciSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let present: Vec<usize> = (0..PCI_MAX_DEVICES)
            .filter(|&d| self.devices[d].is_some())
            .collect();
        f.debug_struct("PciSegment")
            .field("devices", &present)
            .field("mapper", &self.mapper.is_some())
            .finish()
    }
}

impl Default for PciSegment {
    fn default() -> Self {
        Self::new()
    }
}

impl PciSegment {
    /// Creates the segment with the host bridge at 00:00.0.
    pub fn new() -> Self {
        let mut devices: [Option<Arc<Mutex<dyn PciDevice>>>; PCI_MAX_DEVICES] =
            std::array::from_fn(|_| None);
        devices[0] = Some(Arc::new(Mutex::new(PciRoot::new())));
        Self {
            devices,
            mapper: None,
        }
    }

    /// Installs the VMM's [`BarMapper`]; BAR moves made before are not replayed (install it
    /// before the guest runs).
    pub fn set_bar_mapper(&mut self, mapper: Arc<dyn BarMapper>) {
        self.mapper = Some(mapper);
    }

    /// Plugs `device` into the lowest free device number (1..=31) and returns it.
    pub fn add_device(&mut self, device: Arc<Mutex<dyn PciDevice>>) -> Result<u8, PciError> {
        let slot = (1..PCI_MAX_DEVICES)
            .find(|&d| self.devices[d].is_none())
            .ok_or(PciError::BusFull)?;
        self.devices[slot] = Some(device);
        // `slot` < 32.
        Ok(slot as u8)
    }

    /// Plugs `device` in at device number `number` (1..=31).
    pub fn add_device_at(
        &mut self,
        number: u8,
        device: Arc<Mutex<dyn PciDevice>>,
    ) -> Result<(), PciError> {
        let slot = usize::from(number);
        if slot == 0 || slot >= PCI_MAX_DEVICES {
            return Err(PciError::InvalidDevice(number));
        }
        if self.devices[slot].is_some() {
            return Err(PciError::DeviceInUse(number));
        }
        self.devices[slot] = Some(device);
        Ok(())
    }

    /// The device at `number` on bus 0 (0 is the host bridge).
    pub fn device(&self, number: u8) -> Option<Arc<Mutex<dyn PciDevice>>> {
        self.devices.get(usize::from(number))?.clone()
    }

    fn lookup(&self, bus: u8, device: u8, function: u8) -> Option<&Arc<Mutex<dyn PciDevice>>> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.devices.get(usize::from(device))?.as_ref()
    }

    /// Reads configuration space of `bus:device.function` at `offset`; absent functions read
    /// all-ones.
    pub fn config_read(&self, bus: u8, device: u8, function: u8, offset: u32, data: &mut [u8]) {
        match self.lookup(bus, device, function) {
            Some(d) => lock_device(d).config_read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes configuration space of `bus:device.function` at `offset`; writes to absent
    /// functions are dropped. A resulting BAR move goes to the [`BarMapper`] before this
    /// returns.
    pub fn config_write(&mut self, bus: u8, device: u8, function: u8, offset: u32, data: &[u8]) {
        let Some(d) = self.lookup(bus, device, function) else {
            debug!("PCI config write to absent {bus:02x}:{device:02x}.{function}");
            return;
        };
        let Some(reprogram) = lock_device(d).config_write(offset, data) else {
            return;
        };
        debug!(
            "PCI 00:{device:02x}.0 BAR {} moved: {reprogram:x?}",
            reprogram.bar
        );
        match &self.mapper {
            Some(mapper) => mapper.bar_moved(device, &reprogram),
            None => debug!("no BAR mapper: the move of 00:{device:02x}.0 maps nothing"),
        }
    }
}
