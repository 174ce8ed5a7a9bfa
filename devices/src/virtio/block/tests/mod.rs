//! Unit tests for the virtio-blk device: a driver-side harness built on `MockSplitQueue`,
//! real temporary image files and a recording interrupt sink.

mod device;
mod io;
mod malformed;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::config::BlockConfig;
pub use super::counters::QueueCounters;
use super::engine::{DiskImage, IoEngine};
use super::handler::{BlockQueueHandler, HandlerParams};
use super::request::RequestLimits;
use super::sync_engine::SyncEngine;
use super::uring_engine::UringEngine;
use crate::virtio::device::{DeviceError, VirtioInterrupt};

pub const MEM_SIZE: usize = 0x100_0000;
pub const QUEUE_SIZE: u16 = 64;
pub const DISK_SECTORS: u64 = 256;

/// A temporary image file, removed on drop.
pub struct TempImage {
    pub path: PathBuf,
}

impl TempImage {
    /// Creates an image of `DISK_SECTORS` sectors where byte `i` is `(i / 512 + i) as u8`.
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("keel-blk-{tag}-{}-{n}.img", std::process::id()));
        let data: Vec<u8> = (0..DISK_SECTORS as usize * 512)
            .map(|i| (i / 512 + i) as u8)
            .collect();
        std::fs::write(&path, data).unwrap();
        TempImage { path }
    }

    /// Reads `len` bytes at `offset` through a fresh file handle.
    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let f = File::open(&self.path).unwrap();
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    pub fn write(&self, offset: u64, data: &[u8]) {
        let f = OpenOptions::new().write(true).open(&self.path).unwrap();
        f.write_all_at(data, offset).unwrap();
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Counts interrupts.
#[derive(Default)]
pub struct RecordingInterrupt {
    pub queue: AtomicUsize,
    pub config: AtomicUsize,
    pub needs_reset: AtomicUsize,
}

impl VirtioInterrupt for RecordingInterrupt {
    fn trigger_queue(&self, _queue: u16) -> Result<(), DeviceError> {
        self.queue.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn trigger_config(&self) -> Result<(), DeviceError> {
        self.config.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn needs_reset(&self) -> Result<(), DeviceError> {
        self.needs_reset.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

pub fn limits(readonly: bool) -> RequestLimits {
    let cfg = BlockConfig {
        path: PathBuf::new(),
        readonly,
        direct: false,
        num_queues: 1,
        queue_size: QUEUE_SIZE,
        serial: None,
        lock: false,
        engine: Default::default(),
    };
    cfg.limits(DISK_SECTORS)
}

/// Which engine a test runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sync,
    Uring,
}

/// Creates an engine, or `None` (with a message) if io_uring is unavailable on this host.
pub fn engine(kind: Kind, disk: Arc<DiskImage>) -> Option<Box<dyn IoEngine>> {
    match kind {
        Kind::Sync => Some(Box::new(SyncEngine::new(disk).unwrap())),
        Kind::Uring => match UringEngine::new(disk, u32::from(QUEUE_SIZE)) {
            Ok(e) => Some(Box::new(e)),
            Err(e) => {
                eprintln!("SKIPPED: io_uring unavailable on this host: {e}");
                None
            }
        },
    }
}

/// A device-side segment description: (guest address, length, device-writable).
pub type Seg = (GuestAddress, u32, bool);

/// The driver side of one queue plus the handler under test.
pub struct Harness<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub mock: MockSplitQueue<'a, GuestMemoryMmap>,
    pub handler: BlockQueueHandler,
    pub irq: Arc<RecordingInterrupt>,
    pub writeback: Arc<AtomicBool>,
    pub counters: Arc<QueueCounters>,
    next_desc: u16,
    next_buf: u64,
}

impl<'a> Harness<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, engine: Box<dyn IoEngine>, limits: RequestLimits) -> Self {
        Self::with_event_idx(mem, engine, limits, false)
    }

    pub fn with_event_idx(
        mem: &'a GuestMemoryMmap,
        engine: Box<dyn IoEngine>,
        limits: RequestLimits,
        event_idx: bool,
    ) -> Self {
        let mock = MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE);
        let mut queue: Queue = mock.create_queue().unwrap();
        queue.set_event_idx(event_idx);
        let irq = Arc::new(RecordingInterrupt::default());
        let writeback = Arc::new(AtomicBool::new(true));
        let counters = Arc::new(QueueCounters::default());
        let params = HandlerParams {
            queue_index: 0,
            mem: mem.clone(),
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            interrupt: irq.clone(),
            limits,
            serial: *b"keel-serial-0001\0\0\0\0",
            writeback: writeback.clone(),
            counters: counters.clone(),
        };
        let handler = BlockQueueHandler::new(queue, engine, params).unwrap();
        Harness {
            mem,
            mock,
            handler,
            irq,
            writeback,
            counters,
            next_desc: 0,
            next_buf: 0x10_0000,
        }
    }

    /// Allocates a guest buffer of `len` bytes at a 4 KiB-aligned address plus `misalign`.
    pub fn buf(&mut self, len: u32, misalign: u64) -> GuestAddress {
        let addr = self.next_buf + misalign;
        self.next_buf = (addr + u64::from(len) + 0xfff) & !0xfff;
        GuestAddress(addr)
    }

    /// Writes a request header in a new buffer.
    pub fn header(&mut self, req_type: u32, sector: u64) -> GuestAddress {
        let addr = self.buf(16, 0);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&req_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, addr).unwrap();
        addr
    }

    /// Makes a fresh 1-byte status buffer (pre-filled with 0xff).
    pub fn status(&mut self) -> GuestAddress {
        let addr = self.buf(1, 0);
        self.mem.write_obj(0xffu8, addr).unwrap();
        addr
    }

    /// Adds a chain made of `segs` to the descriptor table and the avail ring; returns the
    /// head index.
    pub fn push_chain(&mut self, segs: &[Seg]) -> u16 {
        let first = self.next_desc;
        let descs: Vec<RawDescriptor> = segs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let last = i + 1 == segs.len();
                let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let next = if last { 0 } else { first + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(addr.0, len, flags, next))
            })
            .collect();
        self.push_raw(&descs)
    }

    /// Adds raw descriptors at the next free table indices (flags/next used as given, except
    /// that `next` is relative to the first descriptor of this chain when NEXT is set).
    pub fn push_raw(&mut self, descs: &[RawDescriptor]) -> u16 {
        let first = self.next_desc;
        self.mock.add_desc_chains(descs, first).unwrap();
        self.next_desc += descs.len() as u16;
        first
    }

    /// Adds an indirect chain: one descriptor pointing to a table holding `segs`.
    pub fn push_indirect(&mut self, segs: &[Seg]) -> u16 {
        let table = self.buf(16 * segs.len() as u32, 0);
        for (i, &(addr, len, w)) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let d = RawDescriptor::from(SplitDescriptor::new(addr.0, len, flags, i as u16 + 1));
            self.mem
                .write_obj(d, table.unchecked_add(16 * i as u64))
                .unwrap();
        }
        let d = SplitDescriptor::new(
            table.0,
            16 * segs.len() as u32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        );
        self.push_raw(&[RawDescriptor::from(d)])
    }

    /// A complete request: header, data segments and a status byte. Returns (head, status).
    pub fn request(&mut self, req_type: u32, sector: u64, data: &[Seg]) -> (u16, GuestAddress) {
        let hdr = self.header(req_type, sector);
        let status = self.status();
        let mut segs = vec![(hdr, 16, false)];
        segs.extend_from_slice(data);
        segs.push((status, 1, true));
        (self.push_chain(&segs), status)
    }

    /// Kicks the handler and waits until no request is in flight.
    pub fn run(&mut self) {
        self.handler.kick_fd().write(1).unwrap();
        self.handler.handle_kick().unwrap();
        let mut waited = 0;
        while self.handler.in_flight() > 0 {
            let mut pfd = libc::pollfd {
                fd: self.handler.completion_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polling one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, 100) };
            assert!(r >= 0);
            self.handler.handle_completion().unwrap();
            waited += 1;
            assert!(waited < 100, "I/O did not complete");
        }
    }

    /// The device's `avail_event` (EVENT_IDX): the avail index at which the driver must kick
    /// next; it sits after the used ring's entries.
    pub fn avail_event(&self) -> u16 {
        let at = self
            .mock
            .used_addr()
            .unchecked_add(4 + 8 * u64::from(QUEUE_SIZE));
        self.mem.read_obj::<u16>(at).unwrap()
    }

    /// Whether the driver must kick after publishing one more request: EVENT_IDX's
    /// `vring_need_event(avail_event, idx + 1, idx)`, true when `avail_event` is the avail
    /// index.
    pub fn next_request_kicks(&self) -> bool {
        let idx = self
            .mem
            .read_obj::<u16>(self.mock.avail_addr().unchecked_add(2))
            .unwrap();
        self.avail_event() == idx
    }

    /// Number of used entries published.
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj::<u16>(self.mock.used_addr().unchecked_add(2))
            .unwrap()
    }

    /// Used ring element `n`: (descriptor head, length).
    pub fn used(&self, n: u16) -> (u32, u32) {
        let base = self.mock.used_addr().unchecked_add(4 + 8 * u64::from(n));
        let id: u32 = self.mem.read_obj(base).unwrap();
        let len: u32 = self.mem.read_obj(base.unchecked_add(4)).unwrap();
        (id, len)
    }

    /// Used ring entry for `head`, if any.
    pub fn used_for(&self, head: u16) -> Option<u32> {
        (0..self.used_idx())
            .map(|n| self.used(n))
            .find(|&(id, _)| id == u32::from(head))
            .map(|(_, len)| len)
    }

    pub fn status_of(&self, addr: GuestAddress) -> u8 {
        self.mem.read_obj(addr).unwrap()
    }

    pub fn irqs(&self) -> usize {
        self.irq.queue.load(Ordering::SeqCst)
    }
}

/// Opens `image` as a disk image.
pub fn disk(image: &TempImage, readonly: bool, direct: bool) -> Arc<DiskImage> {
    Arc::new(DiskImage::open(&image.path, readonly, direct).unwrap())
}
