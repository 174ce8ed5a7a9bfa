//! Virtio devices: the device/transport contract and the block device with its dataplane.

pub mod block;
pub mod device;

pub use device::{DeviceError, VirtioDevice, VirtioInterrupt};
