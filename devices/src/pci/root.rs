//! The PCI host bridge (00:00.0) and PCI segment 0, bus 0, which holds up to 31 endpoints.
//!
//! Only bus 0 and function 0 of each device exist; every other address reads all-ones (the
//! "no device" answer, vendor ID 0xffff) and ignores writes. BAR moves caused by guest config
//! writes are queued in the segment, coalesced per BAR so the queue stays bounded, until the
//! VMM takes them with [`PciSegment::take_bar_reprograms`] after the access returns.

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

/// A BAR move reported by the device at `device` on bus 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceBarReprogram {
    /// Device number on bus 0.
    pub device: u8,
    /// The move (`old` is where the VMM last mapped the BAR).
    pub reprogram: BarReprogram,
}

/// PCI segment 0 with its single bus: the host bridge at device 0 and endpoints at 1..=31.
pub struct PciSegment {
    devices: [Option<Arc<Mutex<dyn PciDevice>>>; PCI_MAX_DEVICES],
    reprograms: Vec<DeviceBarReprogram>,
}

impl std::fmt::Debug for PciSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let present: Vec<usize> = (0..PCI_MAX_DEVICES)
            .filter(|&d| self.devices[d].is_some())
            .collect();
        f.debug_struct("PciSegment")
            .field("devices", &present)
            .field("reprograms", &self.reprograms)
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
            reprograms: Vec::new(),
        }
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
    /// functions are dropped. A resulting BAR move is queued.
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
        self.queue(DeviceBarReprogram { device, reprogram });
    }

    /// Queues a move, merging it with a pending move of the same BAR (at most one entry per
    /// BAR, so at most 32 * 6 entries).
    fn queue(&mut self, r: DeviceBarReprogram) {
        let same =
            |p: &DeviceBarReprogram| p.device == r.device && p.reprogram.bar == r.reprogram.bar;
        match self.reprograms.iter().position(same) {
            Some(i) => {
                let pending = &mut self.reprograms[i].reprogram;
                pending.new = r.reprogram.new;
                if pending.new == pending.old {
                    self.reprograms.remove(i);
                }
            }
            None => self.reprograms.push(r),
        }
    }

    /// Whether BAR moves are waiting for the VMM.
    pub fn has_bar_reprograms(&self) -> bool {
        !self.reprograms.is_empty()
    }

    /// Takes the queued BAR moves, oldest first. The VMM should call this after every
    /// configuration access (PIO or ECAM) and move its mappings accordingly.
    pub fn take_bar_reprograms(&mut self) -> Vec<DeviceBarReprogram> {
        std::mem::take(&mut self.reprograms)
    }
}
