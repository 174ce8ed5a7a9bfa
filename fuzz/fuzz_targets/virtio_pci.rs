//! A hostile driver on the virtio-pci transport: the input is a sequence of 12-byte
//! operations (PCI config space reads and writes, BAR 0 reads and writes of 1, 2, 4 or 8
//! bytes at any offset) against a virtio-pci function with a simple two-queue device behind
//! it. The common configuration, notify, ISR and device-config regions, the MSI-X table and
//! PBA, the capabilities and BAR sizing all see whatever the input says; nothing may panic,
//! and a device the driver activates and resets stays consistent.
#![no_main]

use std::sync::Arc;

use devices::pci::{MsiInterrupt, MsiMessage, PciDevice};
use devices::virtio::{DeviceError, VirtioDevice, VirtioInterrupt, VirtioPciDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// A device with two queues that accepts any activation and reset.
struct Echo {
    active: bool,
    sizes: [u16; 2],
}

impl VirtioDevice for Echo {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        (1 << 32) | (1 << 29) | (1 << 28)
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as u8).wrapping_add(i as u8);
        }
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        _queues: Vec<(Queue, EventFd)>,
        _interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), DeviceError> {
        if self.active {
            return Err(DeviceError::AlreadyActivated);
        }
        self.active = true;
        Ok(())
    }
    fn reset(&mut self) -> Result<(), DeviceError> {
        self.active = false;
        Ok(())
    }
}

/// An MSI sink that accepts every message.
struct Sink;

impl MsiInterrupt for Sink {
    fn update(&self, _vector: u16, _msg: MsiMessage, _masked: bool) -> std::io::Result<()> {
        Ok(())
    }
    fn trigger(&self, _vector: u16) -> std::io::Result<()> {
        Ok(())
    }
}

const SIZES: [usize; 4] = [1, 2, 4, 8];

fuzz_target!(|data: &[u8]| {
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("guest memory");
    let device = Box::new(Echo {
        active: false,
        sizes: [256, 64],
    });
    let Ok(mut dev) = VirtioPciDevice::new(device, mem, Arc::new(Sink), None) else {
        return;
    };
    for op in data.chunks_exact(12) {
        let offset = u16::from_le_bytes([op[1], op[2]]);
        let len = SIZES[usize::from(op[3] % 4)];
        let mut value = [0u8; 8];
        value.copy_from_slice(&op[4..12]);
        match op[0] % 4 {
            0 => dev.config_read(u32::from(offset % 4096), &mut value[..len.min(4)]),
            1 => {
                let _ = dev.config_write(u32::from(offset % 4096), &value[..len.min(4)]);
            }
            2 => dev.bar_read(0, u64::from(offset), &mut value[..len]),
            _ => dev.bar_write(0, u64::from(offset), &value[..len]),
        }
    }
});
