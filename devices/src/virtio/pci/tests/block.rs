//! End to end with the real virtio-blk device: negotiation, queue setup and activation through
//! the transport, a read request kicked through BAR 0, its completion signalled over MSI-X,
//! then a reset and a second activation.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes};

use super::*;
use crate::virtio::block::{lock, Block, BlockConfig};

const SECTORS: usize = 64;
const QUEUE: u16 = 64;
const RING_BASE: u64 = 0x1_0000;
const HEADER: u64 = 0x8_0000;
const DATA: u64 = 0x8_1000;
const STATUS: u64 = 0x8_2000;

/// An image file where byte `i` is `(i * 7) as u8`, removed on drop.
struct TempImage(PathBuf);

impl TempImage {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("keel-virtio-pci-{}.img", std::process::id()));
        let data: Vec<u8> = (0..SECTORS * 512).map(|i| (i * 7) as u8).collect();
        std::fs::write(&path, data).unwrap();
        Self(path)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Lets the test reach the block device's queue handlers while the transport owns it.
struct SharedBlock {
    block: Arc<Mutex<Block>>,
    sizes: Vec<u16>,
}

impl VirtioDevice for SharedBlock {
    fn device_type(&self) -> u32 {
        self.block.lock().unwrap().device_type()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        self.block.lock().unwrap().features()
    }
    fn ack_features(&mut self, features: u64) {
        self.block.lock().unwrap().ack_features(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.block.lock().unwrap().read_config(offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.block.lock().unwrap().write_config(offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<(Queue, EventFd)>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), DeviceError> {
        self.block.lock().unwrap().activate(mem, queues, interrupt)
    }
    fn reset(&mut self) -> Result<(), DeviceError> {
        self.block.lock().unwrap().reset()
    }
}

/// Programs queue 0 over the rings of `mock`, on MSI-X vector 1, and sets DRIVER_OK.
fn start(h: &mut Harness, mock: &MockSplitQueue<'_, GuestMemoryMmap>) {
    let features = h.device_features() & !(1 << VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(h.negotiate(features), 0x0b);
    h.write(QUEUE_SELECT, 2, 0);
    h.write(QUEUE_SIZE, 2, u64::from(QUEUE));
    h.write(QUEUE_DESC, 8, mock.desc_table_addr().0);
    h.write(QUEUE_DRIVER, 8, mock.avail_addr().0);
    h.write(QUEUE_DEVICE, 8, mock.used_addr().0);
    h.write(QUEUE_MSIX_VECTOR, 2, 1);
    h.write(QUEUE_ENABLE, 2, 1);
    h.set_status(0x0f);
    assert_eq!(h.status(), 0x0f);
}

/// Drives the queue handler like an I/O thread until the request completes.
fn serve(block: &Mutex<Block>) {
    let handler = block.lock().unwrap().handlers()[0].clone();
    let mut handler = lock(&handler);
    assert_eq!(
        handler.kick_fd().read().unwrap(),
        1,
        "kick reached the device"
    );
    handler.handle_kick().unwrap();
    for _ in 0..200 {
        if handler.in_flight() == 0 {
            return;
        }
        let mut pfd = libc::pollfd {
            fd: handler.completion_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd that outlives the call.
        let r = unsafe { libc::poll(&mut pfd, 1, 50) };
        assert!(r >= 0);
        handler.handle_completion().unwrap();
    }
    panic!("request did not complete");
}

#[test]
fn block_device_through_the_transport() {
    let image = TempImage::new();
    let block = Block::new(BlockConfig {
        path: image.0.clone(),
        readonly: false,
        direct: false,
        num_queues: 1,
        queue_size: QUEUE,
        serial: Some("pci".into()),
        lock: false,
        engine: Default::default(),
    })
    .unwrap();
    let sizes = block.queue_max_sizes().to_vec();
    let block = Arc::new(Mutex::new(block));
    let mut h = Harness::around(
        Box::new(SharedBlock {
            block: block.clone(),
            sizes,
        }),
        false,
    );
    assert_eq!(h.cfg_read(0, 4), 0x1042_1af4);
    assert_eq!(h.read(DEVICE_CFG_OFFSET, 8), SECTORS as u64, "capacity");
    assert_eq!(h.read(NUM_QUEUES, 2), 1);
    h.enable_msix();
    h.msi.triggers();

    let mem = h.mem.clone();
    let mock = MockSplitQueue::create(&mem, GuestAddress(RING_BASE), QUEUE);
    start(&mut h, &mock);
    assert!(h.dev.is_activated());
    assert_eq!(block.lock().unwrap().handlers().len(), 1);

    // Read sectors 3 and 4.
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    header[8..16].copy_from_slice(&3u64.to_le_bytes());
    mem.write_slice(&header, GuestAddress(HEADER)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let next = VRING_DESC_F_NEXT as u16;
    let write = VRING_DESC_F_WRITE as u16;
    let chain = [
        SplitDescriptor::new(HEADER, 16, next, 1),
        SplitDescriptor::new(DATA, 1024, write | next, 2),
        SplitDescriptor::new(STATUS, 1, write, 0),
    ]
    .map(RawDescriptor::from);
    mock.add_desc_chains(&chain, 0).unwrap();

    // The guest's notification reaches the device through BAR 0 (no ioeventfd here).
    h.dev.bar_write(0, NOTIFY_OFFSET, &0u16.to_le_bytes());
    serve(&block);

    let mut data = vec![0u8; 1024];
    mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    let expected: Vec<u8> = (3 * 512..5 * 512).map(|i| (i * 7) as u8).collect();
    assert_eq!(data, expected);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        VIRTIO_BLK_S_OK as u8
    );
    let used_idx: u16 = mem.read_obj(mock.used_addr().unchecked_add(2)).unwrap();
    assert_eq!(used_idx, 1);
    assert_eq!(h.msi.triggers(), vec![1], "completion on queue 0's vector");

    // Reset stops the device; a second bring-up activates it again.
    h.set_status(0);
    assert!(block.lock().unwrap().handlers().is_empty());
    assert_eq!(block.lock().unwrap().acked_features(), 0);
    let mock = MockSplitQueue::create(&mem, GuestAddress(RING_BASE + 0x1_0000), QUEUE);
    start(&mut h, &mock);
    assert_eq!(block.lock().unwrap().handlers().len(), 1);
}
