//! A hostile virtio-blk queue: the input is guest memory holding a 16-entry split queue
//! (descriptor table at 0, avail ring at 0x100, used ring at 0x200, all within the first
//! kilobyte so that short inputs reach them) and whatever the descriptors point
//! at. Every chain the queue yields is parsed into a request or rejected with a status
//! address, never a panic or an access outside guest memory.
#![no_main]

use devices::virtio::block::{Request, RequestLimits};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QUEUE_SIZE: u16 = 16;
const MEM_SIZE: usize = 64 << 10;
const DESC: u64 = 0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;

fuzz_target!(|data: &[u8]| {
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let len = data.len().min(MEM_SIZE);
    mem.write_slice(&data[..len], GuestAddress(0))
        .expect("input fits guest memory");
    let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
    queue.set_desc_table_address(Some(DESC as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_ready(true);
    let limits = RequestLimits {
        capacity: 2048,
        seg_max: 8,
        max_discard_sectors: 1024,
        max_discard_seg: 4,
        max_write_zeroes_sectors: 1024,
        max_write_zeroes_seg: 4,
        readonly: data.first().is_some_and(|b| b & 1 == 1),
    };
    let Ok(iter) = queue.iter(&mem) else {
        return;
    };
    for chain in iter.take(usize::from(QUEUE_SIZE) * 2) {
        if let Err(rejected) = Request::parse(chain, &mem, &limits) {
            let _ = rejected;
        }
    }
});
