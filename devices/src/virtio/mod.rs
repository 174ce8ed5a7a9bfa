//! Virtio devices: the device/transport contract and the block device with its dataplane.

pub mod block;
pub mod device;
pub mod iothread;
pub mod pci;
pub mod poll_group;

pub use device::{DeviceError, VirtioDevice, VirtioInterrupt};
pub use pci::{IntxInterrupt, VirtioPciDevice, VirtioPciError, VirtioPciInterrupt};
