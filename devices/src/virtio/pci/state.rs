//! Saving and restoring a virtio-pci function for snapshots.
//!
//! Saving: [`VirtioPciDevice::quiesce`] stops the device's dataplane with every in-flight
//! request finished (the device reports where each queue stands), then
//! [`VirtioPciDevice::state`] reads the configuration space, the MSI-X table, the common
//! configuration registers and the device's own driver-written configuration.
//! [`VirtioPciDevice::unquiesce`] lets the dataplane run again.
//!
//! Restoring replays what a driver did, through the same register paths a guest uses, into
//! a freshly built function: the VMM first writes the BAR, command and interrupt-line
//! registers through its PCI segment (so that BAR moves reach the bus), then
//! [`VirtioPciDevice::restore`] writes the MSI-X table and the common configuration
//! (features, `FEATURES_OK`, the device's configuration, each queue's registers, then
//! `DRIVER_OK`, whose activation starts every queue where the snapshot left it), and the VMM
//! writes the MSI-X message control. [`VirtioPciDevice::kick_after_restore`] then notifies
//! every queue and signals every queue's vector once, so that requests the driver queued and
//! completions whose interrupt was not yet taken are seen (a spurious interrupt is harmless
//! to a virtio driver, a lost one is not).

use serde::{Deserialize, Serialize};

use super::{
    VirtioPciDevice, VirtioPciError, COMMON_CFG_OFFSET, DEVICE_CFG_OFFSET, MSIX_TABLE_OFFSET,
    STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED,
    STATUS_FEATURES_OK, VIRTIO_PCI_BAR,
};
use crate::pci::device::PciDevice;
use crate::snapshot::{DeviceSnapshot, StateError};
use crate::virtio::device::{QueuePosition, VirtioInterrupt};

/// Bytes of configuration space saved (the standard header and the capability list).
pub const CONFIG_SPACE_LEN: usize = 256;

/// One queue's registers and where the device stood in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// `queue_size`.
    pub size: u16,
    /// `queue_msix_vector`.
    pub vector: u16,
    /// `queue_enable`.
    pub enabled: bool,
    /// `queue_desc`.
    pub desc: u64,
    /// `queue_driver` (avail ring).
    pub driver: u64,
    /// `queue_device` (used ring).
    pub device: u64,
    /// The device's position, if the queue was live.
    pub position: Option<QueuePosition>,
}

/// A virtio-pci function's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioPciState {
    /// The first 256 bytes of configuration space.
    pub config_space: Vec<u8>,
    /// The MSI-X table (16 bytes per vector).
    pub msix_table: Vec<u8>,
    /// `device_status` as the driver set it (without `DEVICE_NEEDS_RESET`).
    pub status: u8,
    /// Features the driver wrote.
    pub driver_features: u64,
    /// `config_msix_vector`.
    pub config_vector: u16,
    /// `device_feature_select`, `driver_feature_select`, `queue_select`.
    pub selects: (u32, u32, u16),
    /// Every queue.
    pub queues: Vec<QueueState>,
    /// The device's driver-written configuration fields: (offset, bytes).
    pub device_config: Vec<(u64, Vec<u8>)>,
}

impl DeviceSnapshot for VirtioPciDevice {
    type State = VirtioPciState;
    const NAME: &'static str = "virtio-pci";
    const STATE_VERSION: u32 = 1;

    /// See [`VirtioPciDevice::quiesce`] for when to call it.
    fn save_state(&self) -> VirtioPciState {
        self.state()
    }

    /// The transport's part of a restore (see the module documentation).
    fn restore_state(&mut self, state: &VirtioPciState) -> Result<(), StateError> {
        self.restore(state).map_err(|e| StateError::Device {
            device: Self::NAME,
            source: Box::new(e),
        })
    }
}

/// Offsets of common configuration fields replayed on restore.
mod reg {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// Errors restoring a function.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The saved state is for a function of another shape.
    #[error("the saved virtio-pci state has {what} {saved}, this device {here}")]
    Shape {
        /// What differs.
        what: &'static str,
        /// Saved.
        saved: usize,
        /// Here.
        here: usize,
    },
    /// The replayed `DRIVER_OK` did not bring the device up.
    #[error("the restored device did not come up (status {0:#x})")]
    NotLive(u8),
    /// Quiescing or resuming the device failed.
    #[error("the device's dataplane could not be stopped or restarted")]
    Device(#[source] crate::virtio::device::DeviceError),
    /// A transport error.
    #[error(transparent)]
    Transport(#[from] VirtioPciError),
}

impl VirtioPciDevice {
    fn write_common(&mut self, offset: u64, data: &[u8]) {
        self.bar_write(VIRTIO_PCI_BAR, COMMON_CFG_OFFSET + offset, data);
    }

    /// Stops the device's dataplane with every in-flight request finished and keeps where
    /// each queue stands for [`Self::state`]. A function that is not live has nothing to stop.
    pub fn quiesce(&mut self) -> Result<(), RestoreError> {
        if !self.activated {
            self.positions = Vec::new();
            return Ok(());
        }
        self.positions = self.device.quiesce().map_err(RestoreError::Device)?;
        Ok(())
    }

    /// Lets the dataplane run again after [`Self::quiesce`].
    pub fn unquiesce(&mut self) -> Result<(), RestoreError> {
        if self.activated {
            self.device.unquiesce().map_err(RestoreError::Device)?;
        }
        Ok(())
    }

    /// The function's state; call between [`Self::quiesce`] and [`Self::unquiesce`].
    fn state(&self) -> VirtioPciState {
        let mut config_space = vec![0u8; CONFIG_SPACE_LEN];
        for (at, dword) in config_space.chunks_mut(4).enumerate() {
            self.config.read_config((at * 4) as u32, dword);
        }
        let mut msix_table = vec![0u8; self.msix.table_len() as usize];
        for (at, dword) in msix_table.chunks_mut(4).enumerate() {
            self.msix.read_table((at * 4) as u64, dword);
        }
        let c = &self.common;
        let queues = c
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| QueueState {
                size: q.size,
                vector: c.irq.queue_vector(i as u16),
                enabled: q.enabled,
                desc: q.desc,
                driver: q.driver,
                device: q.device,
                position: self.positions.get(i).copied(),
            })
            .collect();
        VirtioPciState {
            config_space,
            msix_table,
            status: c.status & !STATUS_DEVICE_NEEDS_RESET,
            driver_features: c.driver_features,
            config_vector: c.irq.config_vector(),
            selects: (
                c.device_feature_select,
                c.driver_feature_select,
                c.queue_select,
            ),
            queues,
            device_config: self.device.driver_config(),
        }
    }

    fn check_shape(&self, s: &VirtioPciState) -> Result<(), RestoreError> {
        let checks = [
            ("queues", s.queues.len(), self.common.queues.len()),
            (
                "MSI-X table bytes",
                s.msix_table.len(),
                self.msix.table_len() as usize,
            ),
        ];
        for (what, saved, here) in checks {
            if saved != here {
                return Err(RestoreError::Shape { what, saved, here });
            }
        }
        Ok(())
    }

    /// Replays the saved MSI-X table and common configuration into this freshly built
    /// function (see the module documentation for the order around it).
    fn restore(&mut self, s: &VirtioPciState) -> Result<(), RestoreError> {
        self.check_shape(s)?;
        for (at, dword) in s.msix_table.chunks(4).enumerate() {
            self.bar_write(VIRTIO_PCI_BAR, MSIX_TABLE_OFFSET + (at * 4) as u64, dword);
        }
        let mut status = s.status & (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FAILED);
        self.write_common(reg::DEVICE_STATUS, &[status]);
        for (select, half) in [
            (0u32, s.driver_features as u32),
            (1, (s.driver_features >> 32) as u32),
        ] {
            self.write_common(reg::DRIVER_FEATURE_SELECT, &select.to_le_bytes());
            self.write_common(reg::DRIVER_FEATURE, &half.to_le_bytes());
        }
        if s.status & STATUS_FEATURES_OK != 0 {
            status |= STATUS_FEATURES_OK;
            self.write_common(reg::DEVICE_STATUS, &[status]);
        }
        for (offset, bytes) in &s.device_config {
            self.bar_write(VIRTIO_PCI_BAR, DEVICE_CFG_OFFSET + offset, bytes);
        }
        self.write_common(reg::CONFIG_MSIX_VECTOR, &s.config_vector.to_le_bytes());
        self.restore_queues(s);
        if s.status & STATUS_DRIVER_OK != 0 {
            self.positions = s.queues.iter().filter_map(|q| q.position).collect();
            status |= STATUS_DRIVER_OK;
            self.write_common(reg::DEVICE_STATUS, &[status]);
            self.positions = Vec::new();
            if !self.activated {
                return Err(RestoreError::NotLive(self.status()));
            }
        }
        let (device_select, driver_select, queue_select) = s.selects;
        self.write_common(reg::DEVICE_FEATURE_SELECT, &device_select.to_le_bytes());
        self.write_common(reg::DRIVER_FEATURE_SELECT, &driver_select.to_le_bytes());
        self.write_common(reg::QUEUE_SELECT, &queue_select.to_le_bytes());
        Ok(())
    }

    fn restore_queues(&mut self, s: &VirtioPciState) {
        for (i, q) in s.queues.iter().enumerate() {
            self.write_common(reg::QUEUE_SELECT, &(i as u16).to_le_bytes());
            self.write_common(reg::QUEUE_SIZE, &q.size.to_le_bytes());
            self.write_common(reg::QUEUE_MSIX_VECTOR, &q.vector.to_le_bytes());
            self.write_common(reg::QUEUE_DESC, &q.desc.to_le_bytes());
            self.write_common(reg::QUEUE_DRIVER, &q.driver.to_le_bytes());
            self.write_common(reg::QUEUE_DEVICE, &q.device.to_le_bytes());
            if q.enabled {
                self.write_common(reg::QUEUE_ENABLE, &1u16.to_le_bytes());
            }
        }
    }

    /// After a restore: notifies every live queue and signals its vector once.
    pub fn kick_after_restore(&self) {
        if !self.activated {
            return;
        }
        for (q, kick) in self.kicks.iter().enumerate() {
            if !self.common.queues.get(q).is_some_and(|r| r.enabled) {
                continue;
            }
            if let Err(e) = kick.write(1) {
                log::warn!("virtio-pci: cannot kick queue {q} after a restore: {e}");
            }
            if let Err(e) = self.interrupt.trigger_queue(q as u16) {
                log::warn!("virtio-pci: cannot signal queue {q} after a restore: {e}");
            }
        }
    }
}
