//! A hostile virtio-blk queue driven through the real queue handler and io_uring engine on a
//! 1 MiB disk image: the input is guest memory with the layout of `blk_request` (a 16-entry
//! split queue: descriptors at 0, avail ring at 0x100, used ring at 0x200) and one byte of
//! settings at 0x300 (EVENT_IDX, a read-only disk, writeback, polling, how many kicks). Each
//! kick pops, parses and submits what the ring holds (with polling, the I/O thread's looks
//! without an event follow, then the hand-over back to notifications); every completion
//! writes its status and returns the chain. Nothing may panic, touch memory outside the guest's, or leave I/O in
//! flight unaccounted; a broken ring must stop the queue with a reset request.
#![no_main]

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use devices::virtio::block::{
    open_engine, BlockConfig, BlockQueueHandler, DiskImage, EngineChoice, HandlerParams,
    QueueCounters,
};
use devices::virtio::{DeviceError, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QUEUE_SIZE: u16 = 16;
const MEM_SIZE: usize = 64 << 10;
const DESC: u64 = 0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
const SETTINGS: usize = 0x300;
const DISK_BYTES: u64 = 1 << 20;
/// Longest wait for a completion (io_uring on a file in the page cache answers in
/// microseconds; this only bounds a lost completion, which then fails the run).
const COMPLETION_WAIT_MS: i32 = 10_000;

/// Counts what the handler signals.
#[derive(Default)]
struct Counting {
    queue: AtomicUsize,
    resets: AtomicUsize,
}

impl VirtioInterrupt for Counting {
    fn trigger_queue(&self, _queue: u16) -> Result<(), DeviceError> {
        self.queue.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn trigger_config(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    fn needs_reset(&self) -> Result<(), DeviceError> {
        self.resets.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The disk image opened read-write and read-only, made once per process: a file of zeroes
/// in the temporary directory, unlinked once opened so that no run leaves it behind.
fn images() -> &'static (Arc<DiskImage>, Arc<DiskImage>) {
    static IMAGES: OnceLock<(Arc<DiskImage>, Arc<DiskImage>)> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("keel-fuzz-blk-{}.img", std::process::id()));
        let file = std::fs::File::create(&path).expect("create the disk image");
        file.set_len(DISK_BYTES).expect("size the disk image");
        let open = |readonly| Arc::new(DiskImage::open(&path, readonly, false).expect("open"));
        let both = (open(false), open(true));
        let _ = std::fs::remove_file(&path);
        both
    })
}

fn queue(event_idx: bool) -> Queue {
    let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
    queue.set_desc_table_address(Some(DESC as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    queue
}

/// Waits until `fd` is readable or the wait bound passes; true if readable.
fn readable(fd: &EventFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd that lives across the call.
    unsafe { libc::poll(&mut pfd, 1, COMPLETION_WAIT_MS) == 1 }
}

fuzz_target!(|data: &[u8]| {
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let len = data.len().min(MEM_SIZE);
    mem.write_slice(&data[..len], GuestAddress(0))
        .expect("input fits guest memory");
    let settings = data.get(SETTINGS).copied().unwrap_or(0);
    let readonly = settings & 2 != 0;
    let config = BlockConfig {
        path: PathBuf::new(),
        readonly,
        direct: false,
        num_queues: 1,
        queue_size: QUEUE_SIZE,
        serial: None,
        lock: false,
        engine: Default::default(),
    };
    let (rw, ro) = images();
    let disk = if readonly { ro.clone() } else { rw.clone() };
    let engine =
        open_engine(disk, u32::from(QUEUE_SIZE), EngineChoice::IoUring).expect("an I/O engine");
    let irq = Arc::new(Counting::default());
    let params = HandlerParams {
        queue_index: 0,
        mem: mem.clone(),
        kick: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        interrupt: irq.clone(),
        limits: config.limits(DISK_BYTES / 512),
        serial: *b"keel-fuzz-serial\0\0\0\0",
        writeback: Arc::new(std::sync::atomic::AtomicBool::new(settings & 4 != 0)),
        counters: Arc::new(QueueCounters::default()),
    };
    let mut handler =
        BlockQueueHandler::new(queue(settings & 1 != 0), engine, params).expect("handler");
    let polling = settings & 8 != 0;
    for _ in 0..=(settings >> 4) % 4 {
        handler.kick_fd().write(1).expect("kick");
        let _ = handler.handle_kick();
        if polling {
            handler.begin_polling();
            for _ in 0..4 {
                let _ = handler.poll_once();
            }
            let _ = handler.end_polling();
        }
        // Every request started completes: none may stay in flight for good.
        while handler.in_flight() > 0 {
            assert!(readable(handler.completion_fd()), "a completion never came");
            let _ = handler.handle_completion();
        }
    }
});
