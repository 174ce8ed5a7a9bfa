//! Tests of the virtio-pci transport, driven the way a guest driver would: configuration space
//! accesses and BAR 0 accesses against a fake device, a recording MSI sink and an INTx counter,
//! plus one end-to-end run with the real virtio-blk device.

mod block;
mod interrupts;
mod snapshot;
mod transport;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;

pub const MEM_SIZE: usize = 0x10_0000;
/// Maximum sizes of the fake device's two queues.
pub const FAKE_SIZES: [u16; 2] = [256, 64];
pub const VERSION_1: u64 = 1 << 32;
/// Features the fake device offers: VERSION_1 plus a low and a high device bit.
pub const FAKE_FEATURES: u64 = VERSION_1 | (1 << 3) | (1 << 35);

// Common configuration offsets, written out from the spec as an independent check.
pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
pub const DEVICE_FEATURE: u64 = 0x04;
pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
pub const DRIVER_FEATURE: u64 = 0x0c;
pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
pub const NUM_QUEUES: u64 = 0x12;
pub const DEVICE_STATUS: u64 = 0x14;
pub const CONFIG_GENERATION: u64 = 0x15;
pub const QUEUE_SELECT: u64 = 0x16;
pub const QUEUE_SIZE: u64 = 0x18;
pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
pub const QUEUE_ENABLE: u64 = 0x1c;
pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
pub const QUEUE_DESC: u64 = 0x20;
pub const QUEUE_DRIVER: u64 = 0x28;
pub const QUEUE_DEVICE: u64 = 0x30;

/// What the transport handed to `activate` for one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivatedQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub ready: bool,
    /// Where the device starts in the queue (`next_avail`, `next_used`).
    pub position: (u16, u16),
}

/// Everything the fake device was asked to do.
#[derive(Default)]
pub struct DeviceLog {
    pub acked: Vec<u64>,
    pub activations: Vec<Vec<ActivatedQueue>>,
    pub resets: usize,
    pub kicks: Vec<EventFd>,
    pub interrupt: Option<Arc<dyn VirtioInterrupt>>,
    pub config_writes: Vec<(u64, Vec<u8>)>,
    pub fail_next_activate: bool,
    /// What `quiesce` reports, and how often it and `unquiesce` were called.
    pub positions: Vec<crate::virtio::device::QueuePosition>,
    pub quiesced: usize,
    pub unquiesced: usize,
}

/// A device with two queues and an 8-byte configuration space `0x10..=0x17`.
pub struct FakeDevice {
    log: Arc<Mutex<DeviceLog>>,
    device_type: u32,
    sizes: Vec<u16>,
    active: bool,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        self.device_type
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        FAKE_FEATURES
    }
    fn ack_features(&mut self, features: u64) {
        self.log.lock().unwrap().acked.push(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = if at < 8 { 0x10 + at as u8 } else { 0 };
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<(Queue, EventFd)>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), DeviceError> {
        let mut log = self.log.lock().unwrap();
        if std::mem::take(&mut log.fail_next_activate) {
            return Err(DeviceError::Activate("injected failure".into()));
        }
        if self.active {
            return Err(DeviceError::AlreadyActivated);
        }
        let info = queues
            .iter()
            .map(|(q, _)| ActivatedQueue {
                size: q.size(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
                ready: q.ready() && q.is_valid(&mem),
                position: (q.next_avail(), q.next_used()),
            })
            .collect();
        log.activations.push(info);
        log.kicks = queues.into_iter().map(|(_, k)| k).collect();
        log.interrupt = Some(interrupt);
        self.active = true;
        Ok(())
    }
    fn quiesce(&mut self) -> Result<Vec<crate::virtio::device::QueuePosition>, DeviceError> {
        let mut log = self.log.lock().unwrap();
        log.quiesced += 1;
        Ok(log.positions.clone())
    }
    fn unquiesce(&mut self) -> Result<(), DeviceError> {
        self.log.lock().unwrap().unquiesced += 1;
        Ok(())
    }
    fn driver_config(&self) -> Vec<(u64, Vec<u8>)> {
        vec![(0x12, vec![0xab])]
    }
    fn reset(&mut self) -> Result<(), DeviceError> {
        let mut log = self.log.lock().unwrap();
        log.resets += 1;
        log.interrupt = None;
        self.active = false;
        Ok(())
    }
}

/// Records MSI-X route updates and triggers.
pub(crate) use crate::pci::msix::tests::Recorder as FakeMsi;

/// Counts INTx assertions.
#[derive(Default)]
pub struct FakeIntx {
    pub count: AtomicUsize,
}

impl IntxInterrupt for FakeIntx {
    fn trigger(&self) -> std::io::Result<()> {
        self.count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A transport around a [`FakeDevice`], with driver-side helpers.
pub struct Harness {
    pub dev: VirtioPciDevice,
    pub log: Arc<Mutex<DeviceLog>>,
    pub msi: Arc<FakeMsi>,
    pub intx: Arc<FakeIntx>,
    pub mem: GuestMemoryMmap,
}

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

impl Harness {
    /// A block-typed fake device with two queues and an INTx line.
    pub fn new() -> Self {
        Self::with(2, true)
    }

    pub fn with(device_type: u32, intx: bool) -> Self {
        let log = Arc::new(Mutex::new(DeviceLog::default()));
        let device = FakeDevice {
            log: log.clone(),
            device_type,
            sizes: FAKE_SIZES.to_vec(),
            active: false,
        };
        let mut h = Self::around(Box::new(device), intx);
        h.log = log;
        h
    }

    /// A transport around any device (`log` stays empty unless it is a [`FakeDevice`]).
    pub fn around(device: Box<dyn VirtioDevice>, intx: bool) -> Self {
        let log = Arc::new(Mutex::new(DeviceLog::default()));
        let msi = Arc::new(FakeMsi::default());
        let fake_intx = Arc::new(FakeIntx::default());
        let intx_sink: Option<Arc<dyn IntxInterrupt>> =
            if intx { Some(fake_intx.clone()) } else { None };
        let mem = guest_memory();
        let dev = VirtioPciDevice::new(device, mem.clone(), msi.clone(), intx_sink).unwrap();
        Self {
            dev,
            log,
            msi,
            intx: fake_intx,
            mem,
        }
    }

    pub fn read(&mut self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.bar_read(0, offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    pub fn write(&mut self, offset: u64, len: usize, value: u64) {
        self.dev.bar_write(0, offset, &value.to_le_bytes()[..len]);
    }

    pub fn cfg_read(&mut self, offset: u32, len: usize) -> u32 {
        let mut b = [0u8; 4];
        self.dev.config_read(offset, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    pub fn cfg_write(&mut self, offset: u32, len: usize, value: u32) -> Option<BarReprogram> {
        self.dev.config_write(offset, &value.to_le_bytes()[..len])
    }

    pub fn status(&mut self) -> u8 {
        self.read(DEVICE_STATUS, 1) as u8
    }

    pub fn set_status(&mut self, status: u8) {
        self.write(DEVICE_STATUS, 1, u64::from(status));
    }

    /// Writes both 32-bit halves of the driver features.
    pub fn write_features(&mut self, features: u64) {
        for select in 0..2u64 {
            self.write(DRIVER_FEATURE_SELECT, 4, select);
            self.write(DRIVER_FEATURE, 4, (features >> (32 * select)) & 0xffff_ffff);
        }
    }

    /// Reads both 32-bit halves of the device features.
    pub fn device_features(&mut self) -> u64 {
        let mut f = 0;
        for select in 0..2u64 {
            self.write(DEVICE_FEATURE_SELECT, 4, select);
            f |= self.read(DEVICE_FEATURE, 4) << (32 * select);
        }
        f
    }

    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK; returns the status read back.
    pub fn negotiate(&mut self, features: u64) -> u8 {
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write_features(features);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        self.status()
    }

    /// Sets queue `q` up with `size` entries and rings at `base` (+0x1000, +0x2000), using
    /// 32-bit halves for the addresses, and enables it.
    pub fn setup_queue(&mut self, q: u16, size: u16, base: u64) {
        self.write(QUEUE_SELECT, 2, u64::from(q));
        self.write(QUEUE_SIZE, 2, u64::from(size));
        for (reg, addr) in [
            (QUEUE_DESC, base),
            (QUEUE_DRIVER, base + 0x1000),
            (QUEUE_DEVICE, base + 0x2000),
        ] {
            self.write(reg, 4, addr & 0xffff_ffff);
            self.write(reg + 4, 4, addr >> 32);
        }
        self.write(QUEUE_ENABLE, 2, 1);
    }

    /// Negotiates, sets both queues up and sets DRIVER_OK; returns the status read back.
    pub fn bring_up(&mut self) -> u8 {
        assert_eq!(self.negotiate(FAKE_FEATURES) & STATUS_FEATURES_OK, 8);
        self.setup_queue(0, 128, 0x1_0000);
        self.setup_queue(1, 64, 0x2_0000);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        self.status()
    }

    /// Enables MSI-X in the capability and programs every vector unmasked.
    pub fn enable_msix(&mut self) {
        let ctl = u32::from(self.dev.cap_offsets().msix) + 2;
        self.cfg_write(ctl, 2, 0x8000);
        for v in 0..FAKE_SIZES.len() as u64 + 1 {
            let entry = MSIX_TABLE_OFFSET + 16 * v;
            self.write(entry, 4, 0xfee0_0000);
            self.write(entry + 4, 4, 0);
            self.write(entry + 8, 4, 0x30 + v);
            self.write(entry + 12, 4, 0);
        }
    }

    /// The interrupt sink the fake device got on activation.
    pub fn device_interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        self.log.lock().unwrap().interrupt.clone().unwrap()
    }
}

/// Reads an eventfd's counter, or `None` if it is not signalled.
pub fn eventfd_count(fd: &EventFd) -> Option<u64> {
    fd.read().ok()
}
