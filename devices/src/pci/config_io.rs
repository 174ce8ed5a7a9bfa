//! PCI configuration mechanism #1: the CONFIG_ADDRESS / CONFIG_DATA ports 0xCF8..=0xCFF.
//!
//! Offset 0 (0xCF8) is the 32-bit CONFIG_ADDRESS register: bit 31 enable, bits 23:16 bus,
//! 15:11 device, 10:8 function, 7:2 dword register; the reserved bits 30:24 and 1:0 read as
//! zero. It is only reached by dword accesses; narrower accesses to 0xCF8..=0xCFB read zero
//! and are otherwise ignored, except a byte at 0xCF9: the chipset's reset control register
//! (PIIX3/ICH "RCR"), where setting RST_CPU (bit 2) resets the machine and SYS_RST (bit 1)
//! is kept and read back. edk2's firmware resets through it. Offsets 4..=7 (0xCFC..=0xCFF) are CONFIG_DATA: a 1-, 2- or
//! 4-byte access at 0xCFC + n reaches register byte `(address & 0xfc) + n`. With the enable
//! bit clear, or for an absent function, data reads are all-ones and writes are dropped.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use log::debug;

use super::root::PciSegment;
use crate::bus::{BusDevice, MachineRequest};

/// Size of the port range (0xCF8..=0xCFF).
pub const PCI_CONFIG_IO_SIZE: u64 = 8;
/// Offset of CONFIG_ADDRESS in the range.
pub const CONFIG_ADDRESS_OFFSET: u64 = 0;
/// Offset of CONFIG_DATA in the range.
pub const CONFIG_DATA_OFFSET: u64 = 4;

/// CONFIG_ADDRESS: enable bit.
const ADDRESS_ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS: the implemented bits.
const ADDRESS_MASK: u32 = ADDRESS_ENABLE | 0x00ff_fffc;
/// Offset of the reset control register (0xCF9) in the range.
pub const RESET_CONTROL_OFFSET: u64 = 1;
/// Reset control: SYS_RST, the kind of reset (kept, read back).
const RESET_CONTROL_SYS_RST: u8 = 1 << 1;
/// Reset control: RST_CPU, setting it resets.
const RESET_CONTROL_RST_CPU: u8 = 1 << 2;

/// Locks the segment, recovering the guard if a previous holder panicked.
pub(crate) fn lock_segment(segment: &Mutex<PciSegment>) -> MutexGuard<'_, PciSegment> {
    segment.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The 0xCF8/0xCFC configuration access ports.
#[derive(Debug)]
pub struct PciConfigIo {
    segment: Arc<Mutex<PciSegment>>,
    address: u32,
    reset_control: u8,
}

impl PciConfigIo {
    /// Creates the ports for `segment`, with CONFIG_ADDRESS zero (disabled).
    pub fn new(segment: Arc<Mutex<PciSegment>>) -> Self {
        Self {
            segment,
            address: 0,
            reset_control: 0,
        }
    }

    /// The current CONFIG_ADDRESS value.
    #[cfg(test)]
    pub(crate) fn config_address(&self) -> u32 {
        self.address
    }

    /// Decodes CONFIG_ADDRESS plus the byte offset within CONFIG_DATA into
    /// (bus, device, function, register), or `None` if the access is invalid or disabled.
    fn target(&self, offset: u64, len: usize) -> Option<(u8, u8, u8, u32)> {
        let sub = offset.checked_sub(CONFIG_DATA_OFFSET)?;
        let fits = sub.checked_add(len as u64).is_some_and(|end| end <= 4);
        if !matches!(len, 1 | 2 | 4) || !fits || self.address & ADDRESS_ENABLE == 0 {
            return None;
        }
        let a = self.address;
        // Each field is masked to its width before narrowing; `sub` < 4.
        Some((
            ((a >> 16) & 0xff) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            (a & 0xfc) + sub as u32,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == CONFIG_ADDRESS_OFFSET && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
            return;
        }
        if offset < CONFIG_DATA_OFFSET {
            data.fill(0);
            if offset == RESET_CONTROL_OFFSET && data.len() == 1 {
                data[0] = self.reset_control;
            }
            return;
        }
        match self.target(offset, data.len()) {
            Some((bus, dev, func, reg)) => {
                lock_segment(&self.segment).config_read(bus, dev, func, reg, data);
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<MachineRequest> {
        if offset == CONFIG_ADDRESS_OFFSET && data.len() == 4 {
            let mut b = [0u8; 4];
            b.copy_from_slice(data);
            self.address = u32::from_le_bytes(b) & ADDRESS_MASK;
            return None;
        }
        if let (RESET_CONTROL_OFFSET, &[value]) = (offset, data) {
            self.reset_control = value & RESET_CONTROL_SYS_RST;
            if value & RESET_CONTROL_RST_CPU != 0 {
                log::info!("guest wrote RST_CPU to the reset control register (0xcf9)");
                return Some(MachineRequest::Reset);
            }
            return None;
        }
        match self.target(offset, data.len()) {
            Some((bus, dev, func, reg)) => {
                lock_segment(&self.segment).config_write(bus, dev, func, reg, data);
            }
            None => debug!(
                "ignoring PCI config port write of {} bytes at offset {offset:#x}",
                data.len()
            ),
        }
        None
    }
}
