//! The device side of the virtio device/transport split.
//!
//! A transport (PCI, MMIO) owns the generic virtio registers: device status, feature
//! negotiation windows, queue configuration and notification delivery. It talks to the device
//! model only through [`VirtioDevice`], and the device model signals the guest only through
//! [`VirtioInterrupt`]. The lifecycle driven by the transport is:
//!
//! 1. `features()` is offered to the driver, the driver's choice is passed to `ack_features()`;
//! 2. `read_config()` / `write_config()` serve the device-specific configuration space;
//! 3. on `DRIVER_OK`, `activate()` hands over guest memory, the configured queues with their
//!    kick (queue notify) eventfds, and the interrupt sink;
//! 4. on a device reset (status 0), `reset()` stops the dataplane and returns the device to its
//!    pre-activation state so that negotiation can start over.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Errors shared by the device/transport contract.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Signalling the guest (MSI-X vector, INTx line, irqfd write) failed.
    #[error("failed to signal the guest")]
    Interrupt(#[source] std::io::Error),
    /// `activate` was called on a device that is already active.
    #[error("device is already activated")]
    AlreadyActivated,
    /// The transport handed over a number of queues the device cannot drive.
    #[error("device got {got} queues, expected between 1 and {max}")]
    QueueCount {
        /// Number of queues handed over.
        got: usize,
        /// Maximum number of queues the device supports.
        max: usize,
    },
    /// A queue's configuration (size, ring addresses) is not usable with the guest memory.
    #[error("queue {0} is not valid (size or ring addresses)")]
    InvalidQueue(usize),
    /// A device-specific failure while activating (e.g. the I/O backend could not be set up).
    #[error("device activation failed")]
    Activate(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The device could not be quiesced or resumed for a snapshot.
    #[error("cannot stop or resume the device's dataplane")]
    Quiesce(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where a device stands in a live queue: the next avail entry it will take and the next
/// used entry it will write (saved by a snapshot, put back into the restored queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePosition {
    /// Next avail ring index to read.
    pub next_avail: u16,
    /// Next used ring index to write.
    pub next_used: u16,
}

/// Interrupt sink used by a device to notify the guest driver.
///
/// Implemented by the transport, which knows how a queue maps to an MSI-X vector or to the
/// legacy ISR bit. Calls can come from any thread (the device's I/O thread in particular).
pub trait VirtioInterrupt: Send + Sync {
    /// Signals that used buffers were added to queue `queue`.
    fn trigger_queue(&self, queue: u16) -> Result<(), DeviceError>;
    /// Signals that the device configuration space changed.
    fn trigger_config(&self) -> Result<(), DeviceError>;
    /// The device met a state it cannot go on from (an impossible ring): the transport sets
    /// `DEVICE_NEEDS_RESET` in the device status until the driver resets the device, and
    /// signals a configuration change (virtio 1.2 §2.1.2). Signals once per reset.
    fn needs_reset(&self) -> Result<(), DeviceError>;
}

/// A virtio device model, as seen by a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (virtio 1.2 §5), e.g. 2 for a block device.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the slice length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered by the device (including transport bits such as `VERSION_1`).
    fn features(&self) -> u64;
    /// Records the features accepted by the driver; bits the device did not offer are ignored.
    fn ack_features(&mut self, features: u64);
    /// Reads `data.len()` bytes of device configuration space at `offset`. Bytes past the end
    /// of the configuration space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` into device configuration space; read-only fields are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the guest memory, the queues the driver configured (each with the
    /// eventfd the transport signals on a queue notification) and the interrupt sink.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<(Queue, EventFd)>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), DeviceError>;
    /// Resets the device: stops processing, waits for in-flight I/O, forgets the negotiated
    /// features and drops the queues. The device may be activated again afterwards.
    fn reset(&mut self) -> Result<(), DeviceError>;
    /// For a snapshot of an active device: stops taking requests, finishes every request in
    /// flight (used ring written, guest signalled) and returns each queue's position. The
    /// device stays active; [`VirtioDevice::unquiesce`] resumes it.
    fn quiesce(&mut self) -> Result<Vec<QueuePosition>, DeviceError> {
        Ok(Vec::new())
    }
    /// Resumes a device after [`VirtioDevice::quiesce`].
    fn unquiesce(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
    /// The configuration fields the driver wrote, as (offset, bytes), for a restore to write
    /// again once features are negotiated.
    fn driver_config(&self) -> Vec<(u64, Vec<u8>)> {
        Vec::new()
    }
}
