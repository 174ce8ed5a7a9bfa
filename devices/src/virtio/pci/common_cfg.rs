//! The common configuration structure (`struct virtio_pci_common_cfg`, virtio 1.2 §4.1.4.3).
//!
//! | offset | width | field | access |
//! |-------:|------:|-------|--------|
//! | 0x00 | 4 | `device_feature_select` | RW |
//! | 0x04 | 4 | `device_feature` | RO |
//! | 0x08 | 4 | `driver_feature_select` | RW |
//! | 0x0c | 4 | `driver_feature` | RW |
//! | 0x10 | 2 | `config_msix_vector` | RW |
//! | 0x12 | 2 | `num_queues` | RO |
//! | 0x14 | 1 | `device_status` | RW |
//! | 0x15 | 1 | `config_generation` | RO |
//! | 0x16 | 2 | `queue_select` | RW |
//! | 0x18 | 2 | `queue_size` | RW |
//! | 0x1a | 2 | `queue_msix_vector` | RW |
//! | 0x1c | 2 | `queue_enable` | RW |
//! | 0x1e | 2 | `queue_notify_off` | RO |
//! | 0x20 | 8 | `queue_desc` | RW |
//! | 0x28 | 8 | `queue_driver` | RW |
//! | 0x30 | 8 | `queue_device` | RW |
//!
//! Fields are accessed at their natural width; the 64-bit queue addresses also as two 32-bit
//! halves. Any other access (wrong width, unaligned, past 0x38) reads as zero and is ignored
//! on write, as are writes to read-only fields. `queue_notify_data` and `queue_reset` are not
//! provided (their features are not offered).
//!
//! Register rules (the device-status state machine itself is in the parent module):
//! - feature windows: select 0 and 1 address bits 0..31 and 32..63, other selects read 0 and
//!   ignore writes; `driver_feature` is frozen once `FEATURES_OK` is set;
//! - `config_msix_vector` / `queue_msix_vector`: a vector beyond the MSI-X table is stored as
//!   `NO_VECTOR`, so the driver reads back the failure as the spec requires;
//! - queue registers of a `queue_select` beyond `num_queues` read 0 (`queue_msix_vector`
//!   reads `NO_VECTOR`) and ignore writes;
//! - `queue_size`: values above the maximum are ignored; other values are stored and checked
//!   (non-zero power of two) when the driver sets `DRIVER_OK`;
//! - `queue_size`, `queue_enable` and the ring addresses are frozen while the queue is enabled
//!   or the device is live (`DRIVER_OK`); writing 0 to `queue_enable` is ignored.

use std::sync::Arc;

use log::debug;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::interrupt::{VirtioPciInterrupt, NO_VECTOR};
use super::{VirtioPciError, STATUS_DRIVER_OK, STATUS_FEATURES_OK};

const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// One of the three ring addresses of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ring {
    Desc,
    Driver,
    Device,
}

/// Which part of a 64-bit ring address an access covers: (ring, bit shift, width in bytes).
fn ring_access(offset: u64, len: usize) -> Option<(Ring, u32, usize)> {
    let (ring, base) = match offset & !0x7 {
        QUEUE_DESC => (Ring::Desc, QUEUE_DESC),
        QUEUE_DRIVER => (Ring::Driver, QUEUE_DRIVER),
        QUEUE_DEVICE => (Ring::Device, QUEUE_DEVICE),
        _ => return None,
    };
    match (offset - base, len) {
        (0, 8) => Some((ring, 0, 8)),
        (0, 4) => Some((ring, 0, 4)),
        (4, 4) => Some((ring, 32, 4)),
        _ => None,
    }
}

/// The driver-visible registers of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueRegs {
    pub max_size: u16,
    pub size: u16,
    pub enabled: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    fn ring(&mut self, ring: Ring) -> &mut u64 {
        match ring {
            Ring::Desc => &mut self.desc,
            Ring::Driver => &mut self.driver,
            Ring::Device => &mut self.device,
        }
    }
}

/// The 32-bit window `select` of a 64-bit feature word.
fn feature_window(features: u64, select: u32) -> u32 {
    match select {
        // Truncation keeps the selected half.
        0 => features as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}

/// Little-endian value of a 1-, 2-, 4- or 8-byte access.
fn le_value(data: &[u8]) -> Option<u64> {
    if !matches!(data.len(), 1 | 2 | 4 | 8) {
        return None;
    }
    let mut b = [0u8; 8];
    b[..data.len()].copy_from_slice(data);
    Some(u64::from_le_bytes(b))
}

/// Register state of the common configuration structure.
pub(crate) struct CommonConfig {
    pub device_feature_select: u32,
    pub driver_feature_select: u32,
    /// Features offered to the driver (the device's, plus `VERSION_1`).
    pub offered_features: u64,
    /// Features the driver wrote.
    pub driver_features: u64,
    /// `device_status`.
    pub status: u8,
    pub queue_select: u16,
    pub queues: Vec<QueueRegs>,
    /// Vectors in the MSI-X table.
    pub msix_vectors: u16,
    /// Vector numbers, ISR and generation shared with the notification path.
    pub irq: Arc<VirtioPciInterrupt>,
}

impl CommonConfig {
    pub fn new(
        offered_features: u64,
        queue_max_sizes: &[u16],
        msix_vectors: u16,
        irq: Arc<VirtioPciInterrupt>,
    ) -> Self {
        Self {
            device_feature_select: 0,
            driver_feature_select: 0,
            offered_features,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            queues: queue_max_sizes.iter().map(|&m| QueueRegs::new(m)).collect(),
            msix_vectors,
            irq,
        }
    }

    /// Device reset: every register back to its initial value (the shared interrupt state is
    /// reset by the caller).
    pub fn reset(&mut self) {
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max_size);
        }
    }

    fn selected(&self) -> Option<&QueueRegs> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The selected queue, if it exists and its configuration may still change.
    fn selected_configurable(&mut self) -> Option<&mut QueueRegs> {
        let live = self.status & STATUS_DRIVER_OK != 0;
        let select = self.queue_select;
        let q = self.queues.get_mut(usize::from(select))?;
        if q.enabled || live {
            debug!("virtio-pci: queue {select} is enabled or live, configuration write ignored");
            return None;
        }
        Some(q)
    }

    /// A vector number as stored: out-of-range vectors become `NO_VECTOR`.
    fn checked_vector(&self, vector: u16) -> u16 {
        if vector < self.msix_vectors {
            vector
        } else {
            NO_VECTOR
        }
    }

    /// Serves a read of `data.len()` bytes at `offset` in the structure.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match self.read_field(offset, data.len()) {
            Some(v) => data.copy_from_slice(&v.to_le_bytes()[..data.len()]),
            None => debug!(
                "virtio-pci: common config read of {} bytes at {offset:#x} reads 0",
                data.len()
            ),
        }
    }

    fn read_field(&self, offset: u64, len: usize) -> Option<u64> {
        if let Some((ring, shift, width)) = ring_access(offset, len) {
            let q = self.selected()?;
            let addr = match ring {
                Ring::Desc => q.desc,
                Ring::Driver => q.driver,
                Ring::Device => q.device,
            };
            let v = addr >> shift;
            return Some(if width == 4 { v & 0xffff_ffff } else { v });
        }
        let q = self.selected();
        let v = match (offset, len) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select.into(),
            (DEVICE_FEATURE, 4) => {
                feature_window(self.offered_features, self.device_feature_select).into()
            }
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select.into(),
            (DRIVER_FEATURE, 4) => {
                feature_window(self.driver_features, self.driver_feature_select).into()
            }
            (CONFIG_MSIX_VECTOR, 2) => self.irq.config_vector().into(),
            // Bounded by the MSI-X table size at construction.
            (NUM_QUEUES, 2) => self.queues.len() as u64,
            (DEVICE_STATUS, 1) => (self.status | self.irq.needs_reset_status()).into(),
            (CONFIG_GENERATION, 1) => self.irq.config_generation().into(),
            (QUEUE_SELECT, 2) => self.queue_select.into(),
            (QUEUE_SIZE, 2) => q.map_or(0, |q| q.size).into(),
            (QUEUE_MSIX_VECTOR, 2) => self.irq.queue_vector(self.queue_select).into(),
            (QUEUE_ENABLE, 2) => q.is_some_and(|q| q.enabled).into(),
            (QUEUE_NOTIFY_OFF, 2) => q.map_or(0, |_| self.queue_select).into(),
            _ => return None,
        };
        Some(v)
    }

    /// Serves a write at `offset`; returns the value when the driver wrote `device_status`,
    /// which the caller applies.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<u8> {
        let len = data.len();
        let Some(v) = le_value(data) else {
            debug!("virtio-pci: common config write of {len} bytes at {offset:#x} ignored");
            return None;
        };
        if let Some((ring, shift, width)) = ring_access(offset, len) {
            if let Some(q) = self.selected_configurable() {
                let reg = q.ring(ring);
                *reg = if width == 8 {
                    v
                } else {
                    let mask = 0xffff_ffffu64 << shift;
                    (*reg & !mask) | ((v << shift) & mask)
                };
            }
            return None;
        }
        // Truncations below keep exactly the field's width, which `len` matched.
        match (offset, len) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v as u32,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v as u32,
            (DRIVER_FEATURE, 4) => self.write_driver_features(v as u32),
            (CONFIG_MSIX_VECTOR, 2) => {
                let vector = self.checked_vector(v as u16);
                self.irq.set_config_vector(vector);
            }
            (DEVICE_STATUS, 1) => return Some(v as u8),
            (QUEUE_SELECT, 2) => self.queue_select = v as u16,
            (QUEUE_SIZE, 2) => {
                if let Some(q) = self.selected_configurable() {
                    if v as u16 <= q.max_size {
                        q.size = v as u16;
                    } else {
                        debug!("virtio-pci: queue size {v} above maximum {}", q.max_size);
                    }
                }
            }
            (QUEUE_MSIX_VECTOR, 2) => {
                if self.selected().is_some() {
                    let vector = self.checked_vector(v as u16);
                    self.irq.set_queue_vector(self.queue_select, vector);
                }
            }
            (QUEUE_ENABLE, 2) => {
                if v == 1 {
                    if let Some(q) = self.selected_configurable() {
                        q.enabled = true;
                    }
                } else {
                    debug!("virtio-pci: queue_enable write of {v} ignored");
                }
            }
            _ => debug!("virtio-pci: common config write of {len} bytes at {offset:#x} ignored"),
        }
        None
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            debug!("virtio-pci: driver_feature write after FEATURES_OK ignored");
            return;
        }
        let shift = match self.driver_feature_select {
            0 => 0,
            1 => 32,
            other => {
                debug!("virtio-pci: driver_feature write with select {other} ignored");
                return;
            }
        };
        let mask = 0xffff_ffffu64 << shift;
        self.driver_features = (self.driver_features & !mask) | (u64::from(value) << shift);
    }

    /// Number of queues to activate: the enabled queues must be exactly queues
    /// `0..n` (an enabled queue after a disabled one is refused).
    pub fn enabled_queue_count(&self) -> Result<usize, VirtioPciError> {
        let count = self.queues.iter().take_while(|q| q.enabled).count();
        match self.queues.iter().skip(count).position(|q| q.enabled) {
            Some(gap) => Err(VirtioPciError::QueueLayout(count + gap)),
            None => Ok(count),
        }
    }

    /// Builds the `Queue` of queue `index` from its registers, checking it against `mem`.
    pub fn build_queue(
        &self,
        index: usize,
        mem: &GuestMemoryMmap,
    ) -> Result<Queue, VirtioPciError> {
        let regs = self
            .queues
            .get(index)
            .ok_or(VirtioPciError::InvalidQueue(index))?;
        let invalid = |_| VirtioPciError::InvalidQueue(index);
        let mut q = Queue::new(regs.max_size).map_err(invalid)?;
        q.try_set_size(regs.size).map_err(invalid)?;
        q.try_set_desc_table_address(GuestAddress(regs.desc))
            .map_err(invalid)?;
        q.try_set_avail_ring_address(GuestAddress(regs.driver))
            .map_err(invalid)?;
        q.try_set_used_ring_address(GuestAddress(regs.device))
            .map_err(invalid)?;
        q.set_ready(true);
        if !q.is_valid(mem) {
            return Err(VirtioPciError::InvalidQueue(index));
        }
        Ok(q)
    }
}
