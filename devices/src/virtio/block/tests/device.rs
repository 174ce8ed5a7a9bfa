//! The `Block` device: features, configuration space, activation, driving a handler from
//! outside, and reset.

use std::sync::atomic::Ordering;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::Bytes;

use super::*;
use crate::virtio::block::{lock, Block};
use crate::virtio::device::VirtioDevice;

fn config(image: &TempImage, readonly: bool, num_queues: u16) -> BlockConfig {
    BlockConfig {
        path: image.path.clone(),
        readonly,
        direct: false,
        num_queues,
        queue_size: QUEUE_SIZE,
        serial: Some("s".into()),
        lock: false,
        engine: Default::default(),
    }
}

#[test]
fn features_and_config_space() {
    let image = TempImage::new("dev");
    let dev = Block::new(config(&image, true, 4)).unwrap();
    assert_eq!(dev.device_type(), 2);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE; 4]);
    let f = dev.features();
    assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(f & (1 << VIRTIO_BLK_F_MQ), 0);
    assert_ne!(f & (1 << 32), 0, "VERSION_1");
    let mut b8 = [0u8; 8];
    dev.read_config(0, &mut b8);
    assert_eq!(u64::from_le_bytes(b8), DISK_SECTORS);
    let mut b2 = [0u8; 2];
    dev.read_config(34, &mut b2);
    assert_eq!(u16::from_le_bytes(b2), 4);

    let rw = Block::new(config(&image, false, 1)).unwrap();
    assert_eq!(rw.features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(rw.features() & (1 << VIRTIO_BLK_F_MQ), 0);
}

#[test]
fn writeback_toggle_needs_config_wce() {
    let image = TempImage::new("wce");
    let mut dev = Block::new(config(&image, false, 1)).unwrap();
    dev.ack_features(1 << VIRTIO_BLK_F_FLUSH);
    dev.write_config(32, &[0]);
    let mut wb = [0u8];
    dev.read_config(32, &mut wb);
    assert_eq!(wb[0], 1, "ignored without CONFIG_WCE");
    dev.ack_features((1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_CONFIG_WCE));
    dev.write_config(32, &[0]);
    dev.read_config(32, &mut wb);
    assert_eq!(wb[0], 0);
    dev.ack_features(0);
    dev.read_config(32, &mut wb);
    assert_eq!(wb[0], 0, "no FLUSH: write-through");
}

#[test]
fn activate_drive_and_reset() {
    let image = TempImage::new("act");
    let mut dev = Block::new(config(&image, false, 2)).unwrap();
    dev.ack_features(dev.features() & !(1 << VIRTIO_RING_F_EVENT_IDX));
    let mem = guest_memory();
    // Build the driver side with a throwaway harness to get ring addresses.
    let mut h = Harness::new(
        &mem,
        engine(Kind::Sync, disk(&image, false, false)).unwrap(),
        limits(false),
    );
    let w = h.buf(512, 0);
    mem.write_slice(&[0x42; 512], w).unwrap();
    let (head, st) = h.request(VIRTIO_BLK_T_OUT, 9, &[(w, 512, false)]);
    let queue: Queue = h.mock.create_queue().unwrap();
    let irq = Arc::new(RecordingInterrupt::default());
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();

    assert!(
        dev.activate(mem.clone(), vec![], irq.clone()).is_err(),
        "no queues"
    );
    dev.activate(mem.clone(), vec![(queue, kick)], irq.clone())
        .unwrap();
    assert!(dev.engine_name().is_some());
    assert_eq!(dev.handlers().len(), 1);
    {
        let mut handler = lock(&dev.handlers()[0]);
        handler.kick_fd().write(1).unwrap();
        handler.handle_kick().unwrap();
        for _ in 0..100 {
            if handler.in_flight() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
            handler.handle_completion().unwrap();
        }
    }
    assert_eq!(h.status_of(st), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.used_for(head), Some(1));
    assert_eq!(irq.queue.load(Ordering::SeqCst), 1);
    assert_eq!(image.read(9 * 512, 512), vec![0x42; 512]);

    let handler = dev.handlers()[0].clone();
    dev.reset().unwrap();
    assert!(dev.handlers().is_empty());
    assert_eq!(dev.acked_features(), 0);
    // A handler kept by the iothread after reset is inert.
    lock(&handler).handle_kick().unwrap();
}

#[test]
fn iothread_serves_queue_until_reset() {
    use crate::virtio::iothread::IoThread;
    let image = TempImage::new("iothr");
    let mut dev = Block::new(config(&image, false, 1)).unwrap();
    dev.ack_features(dev.features());
    let thread = IoThread::spawn("blk-test").unwrap();
    dev.set_iothreads("disk0", vec![thread.handle()]);
    let mem = guest_memory();
    let mut h = Harness::new(
        &mem,
        engine(Kind::Sync, disk(&image, false, false)).unwrap(),
        limits(false),
    );
    let w = h.buf(512, 0);
    mem.write_slice(&[0x5a; 512], w).unwrap();
    let (head, st) = h.request(VIRTIO_BLK_T_OUT, 3, &[(w, 512, false)]);
    let queue: Queue = h.mock.create_queue().unwrap();
    let irq = Arc::new(RecordingInterrupt::default());
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let guest_kick = kick.try_clone().unwrap();
    dev.activate(mem.clone(), vec![(queue, kick)], irq.clone())
        .unwrap();
    guest_kick.write(1).unwrap();
    for _ in 0..500 {
        if irq.queue.load(Ordering::SeqCst) > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(
        irq.queue.load(Ordering::SeqCst),
        1,
        "served by the iothread"
    );
    assert_eq!(h.status_of(st), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.used_for(head), Some(1));
    assert_eq!(image.read(3 * 512, 512), vec![0x5a; 512]);
    dev.reset().unwrap();
    // After reset the thread no longer serves the old queue.
    let (_, st2) = h.request(VIRTIO_BLK_T_OUT, 4, &[(w, 512, false)]);
    guest_kick.write(1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(h.status_of(st2), 0xff);
    assert_eq!(irq.queue.load(Ordering::SeqCst), 1);
}
