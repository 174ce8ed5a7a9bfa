//! PCI Express enhanced configuration access (ECAM / MMCONFIG) for bus 0.
//!
//! The window maps `(bus << 20) | (device << 15) | (function << 12) | register`; Keel has one
//! bus, so the window is [`PCI_MMIO_CONFIG_SIZE`] = 1 MiB (32 devices x 8 functions x 4 KiB)
//! rather than the 256 MiB a full segment would take. Naturally aligned 1-, 2- and 4-byte
//! accesses reach the function's configuration space; an aligned 8-byte access is split into
//! two dword accesses. Anything else, and any absent function, reads all-ones and ignores
//! writes.

use std::sync::{Arc, Mutex};

use log::debug;

use super::config_io::lock_segment;
use super::root::PciSegment;
use crate::bus::{BusDevice, MachineRequest};

/// Configuration space per function with ECAM.
pub const PCI_ECAM_FUNCTION_SIZE: u64 = 1 << 12;
/// Size of the ECAM window for one bus (bus 0 only): 32 devices x 8 functions x 4 KiB.
pub const PCI_MMIO_CONFIG_SIZE: u64 = 1 << 20;

/// The ECAM window for bus 0.
#[derive(Debug)]
pub struct PciConfigMmio {
    segment: Arc<Mutex<PciSegment>>,
}

impl PciConfigMmio {
    /// Creates the window for `segment`.
    pub fn new(segment: Arc<Mutex<PciSegment>>) -> Self {
        Self { segment }
    }
}

/// Decodes an ECAM offset into (bus, device, function, register). Offsets past the 1 MiB
/// window decode to a bus other than 0 and so to an absent function.
fn decode(offset: u64) -> (u64, u8, u8, u32) {
    // Each field is masked to its width before narrowing.
    (
        offset >> 20,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 0x7) as u8,
        (offset & 0xfff) as u32,
    )
}

/// Whether a `len`-byte access at `offset` is naturally aligned with a supported width.
fn valid(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4 | 8) && offset.is_multiple_of(len as u64)
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (bus, dev, func, reg) = decode(offset);
        if !valid(offset, data.len()) || bus != 0 {
            data.fill(0xff);
            return;
        }
        let segment = lock_segment(&self.segment);
        for (reg, chunk) in (reg..).step_by(4).zip(data.chunks_mut(4)) {
            segment.config_read(0, dev, func, reg, chunk);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<MachineRequest> {
        let (bus, dev, func, reg) = decode(offset);
        if !valid(offset, data.len()) || bus != 0 {
            debug!("ignoring ECAM write of {} bytes at {offset:#x}", data.len());
            return None;
        }
        let mut segment = lock_segment(&self.segment);
        for (reg, chunk) in (reg..).step_by(4).zip(data.chunks(4)) {
            segment.config_write(0, dev, func, reg, chunk);
        }
        None
    }
}
