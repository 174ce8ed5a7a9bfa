//! Keel's device models. Every device sits on a [`bus::Bus`] (port I/O or MMIO) and sees only
//! `(offset, data)` accesses relative to its own base; it never sees the VM. A write may ask the
//! machine for something (power off, reset), which the vCPU loop turns into an action.

pub mod bus;
pub mod device_id;
pub mod legacy;
pub mod pci;
pub mod snapshot;
pub mod virtio;
