//! Hostile chains: each yields the right status (or is returned with used length 0 when no
//! status can be written), never panics, and a following good request still works.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Address, Bytes, GuestAddress};

use super::*;

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// Past the end of guest memory.
const OUTSIDE: GuestAddress = GuestAddress(0x2000_0000);

/// Expected outcome of a bad chain.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// Status byte written with this value, used length 1.
    Status(u8),
    /// Chain returned with used length 0, status byte untouched.
    Dropped,
}

/// Builds a bad chain with `build` (returning head and the status address it would use), then
/// a good IN request, runs the handler, and checks both.
fn check(
    name: &str,
    seg_max: Option<u32>,
    build: impl FnOnce(&mut Harness<'_>) -> (u16, GuestAddress),
    want: Outcome,
) {
    let image = TempImage::new("bad");
    let mem = guest_memory();
    let mut lim = limits(false);
    if let Some(s) = seg_max {
        lim.seg_max = s;
    }
    let mut h = Harness::new(
        &mem,
        engine(Kind::Sync, disk(&image, false, false)).unwrap(),
        lim,
    );
    let (bad, bad_status) = build(&mut h);
    let good_buf = h.buf(512, 0);
    let (good, good_status) = h.request(VIRTIO_BLK_T_IN, 2, &[(good_buf, 512, true)]);
    h.run();

    match want {
        Outcome::Status(s) => {
            assert_eq!(h.status_of(bad_status), s, "{name}: status");
            assert_eq!(h.used_for(bad), Some(1), "{name}: used length");
        }
        Outcome::Dropped => {
            assert_eq!(
                h.used_for(bad),
                Some(0),
                "{name}: chain must be returned with len 0"
            );
            if mem.read_obj::<u8>(bad_status).is_ok() {
                assert_eq!(
                    h.status_of(bad_status),
                    0xff,
                    "{name}: status must be untouched"
                );
            }
        }
    }
    assert_eq!(h.status_of(good_status), OK, "{name}: following request");
    assert_eq!(
        h.used_for(good),
        Some(513),
        "{name}: following request used length"
    );
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, good_buf).unwrap();
    assert_eq!(
        got,
        image.read(2 * 512, 512),
        "{name}: following request data"
    );
    // Every chain was returned exactly once.
    assert_eq!(h.used_idx(), 2, "{name}");
}

fn chain(h: &mut Harness<'_>, segs: &[Seg], status: GuestAddress) -> (u16, GuestAddress) {
    (h.push_chain(segs), status)
}

#[test]
fn header_too_short() {
    check(
        "short header",
        None,
        |h| {
            let hdr = h.header(VIRTIO_BLK_T_IN, 0);
            let (b, s) = (h.buf(512, 0), h.status());
            chain(h, &[(hdr, 8, false), (b, 512, true), (s, 1, true)], s)
        },
        Outcome::Status(IOERR),
    );
}

#[test]
fn header_device_writable() {
    check(
        "writable header",
        None,
        |h| {
            let hdr = h.header(VIRTIO_BLK_T_IN, 0);
            let (b, s) = (h.buf(512, 0), h.status());
            chain(h, &[(hdr, 16, true), (b, 512, true), (s, 1, true)], s)
        },
        Outcome::Status(IOERR),
    );
}

#[test]
fn header_outside_guest_memory() {
    check(
        "header outside memory",
        None,
        |h| {
            let (b, s) = (h.buf(512, 0), h.status());
            chain(h, &[(OUTSIDE, 16, false), (b, 512, true), (s, 1, true)], s)
        },
        Outcome::Status(IOERR),
    );
}

#[test]
fn in_with_device_readable_data() {
    check(
        "IN readable data",
        None,
        |h| {
            let b = h.buf(512, 0);
            h.request(VIRTIO_BLK_T_IN, 0, &[(b, 512, false)])
        },
        Outcome::Status(IOERR),
    );
}

#[test]
fn out_with_device_writable_data() {
    check(
        "OUT writable data",
        None,
        |h| {
            let b = h.buf(512, 0);
            h.request(VIRTIO_BLK_T_OUT, 0, &[(b, 512, true)])
        },
        Outcome::Status(IOERR),
    );
}

#[test]
fn discard_with_device_writable_data() {
    check(
        "DISCARD writable data",
        None,
        |h| {
            let b = h.buf(16, 0);
            h.request(VIRTIO_BLK_T_DISCARD, 0, &[(b, 16, true)])
        },
        Outcome::Status(IOERR),
    );
}

#[test]
fn length_not_multiple_of_512() {
    check(
        "unaligned length",
        None,
        |h| {
            let b = h.buf(700, 0);
            h.request(VIRTIO_BLK_T_IN, 0, &[(b, 700, true)])
        },
        Outcome::Status(IOERR),
    );
}

#[test]
fn read_without_data() {
    check(
        "no data",
        None,
        |h| h.request(VIRTIO_BLK_T_IN, 0, &[]),
        Outcome::Status(IOERR),
    );
}

#[test]
fn sector_past_end() {
    check(
        "past end",
        None,
        |h| {
            let b = h.buf(1024, 0);
            h.request(VIRTIO_BLK_T_IN, DISK_SECTORS - 1, &[(b, 1024, true)])
        },
        Outcome::Status(IOERR),
    );
}

#[test]
fn sector_plus_length_overflows() {
    check(
        "overflow",
        None,
        |h| {
            let b = h.buf(1024, 0);
            h.request(VIRTIO_BLK_T_OUT, u64::MAX - 1, &[(b, 1024, false)])
        },
        Outcome::Status(IOERR),
    );
}

#[test]
fn data_outside_guest_memory() {
    check(
        "data outside memory",
        None,
        |h| h.request(VIRTIO_BLK_T_IN, 0, &[(OUTSIDE, 512, true)]),
        Outcome::Status(IOERR),
    );
    check(
        "data straddling the end of memory",
        None,
        |h| {
            let end = GuestAddress(MEM_SIZE as u64 - 256);
            h.request(VIRTIO_BLK_T_IN, 0, &[(end, 512, true)])
        },
        Outcome::Status(IOERR),
    );
}

#[test]
fn too_many_segments() {
    check(
        "too many segments",
        Some(4),
        |h| {
            let segs: Vec<Seg> = (0..5).map(|_| (h.buf(512, 0), 512, true)).collect();
            h.request(VIRTIO_BLK_T_IN, 0, &segs)
        },
        Outcome::Status(IOERR),
    );
}

#[test]
fn unknown_type() {
    check(
        "unknown type",
        None,
        |h| {
            let b = h.buf(512, 0);
            h.request(99, 0, &[(b, 512, true)])
        },
        Outcome::Status(UNSUPP),
    );
}

#[test]
fn discard_with_unmap_flag_or_too_many_sectors() {
    let range = |h: &mut Harness<'_>, sector: u64, num: u32, flags: u32| {
        let b = h.buf(16, 0);
        let mut r = [0u8; 16];
        r[0..8].copy_from_slice(&sector.to_le_bytes());
        r[8..12].copy_from_slice(&num.to_le_bytes());
        r[12..16].copy_from_slice(&flags.to_le_bytes());
        h.mem.write_slice(&r, b).unwrap();
        b
    };
    check(
        "discard UNMAP",
        None,
        |h| {
            let b = range(h, 0, 1, 1);
            h.request(VIRTIO_BLK_T_DISCARD, 0, &[(b, 16, false)])
        },
        Outcome::Status(UNSUPP),
    );
    check(
        "write-zeroes reserved flag",
        None,
        |h| {
            let b = range(h, 0, 1, 4);
            h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(b, 16, false)])
        },
        Outcome::Status(UNSUPP),
    );
    check(
        "write-zeroes too many sectors",
        None,
        |h| {
            let b = range(h, 0, u32::MAX, 0);
            h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(b, 16, false)])
        },
        Outcome::Status(IOERR),
    );
    check(
        "discard past end",
        None,
        |h| {
            let b = range(h, DISK_SECTORS, 1, 0);
            h.request(VIRTIO_BLK_T_DISCARD, 0, &[(b, 16, false)])
        },
        Outcome::Status(IOERR),
    );
    check(
        "discard sector overflow",
        None,
        |h| {
            let b = range(h, u64::MAX, 2, 0);
            h.request(VIRTIO_BLK_T_DISCARD, 0, &[(b, 16, false)])
        },
        Outcome::Status(IOERR),
    );
    check(
        "discard payload not a multiple of 16",
        None,
        |h| {
            let b = range(h, 0, 1, 0);
            h.request(VIRTIO_BLK_T_DISCARD, 0, &[(b, 12, false)])
        },
        Outcome::Status(IOERR),
    );
    check(
        "too many discard ranges",
        None,
        |h| {
            let b = h.buf(16 * 64, 0);
            h.request(VIRTIO_BLK_T_DISCARD, 0, &[(b, 16 * 64, false)])
        },
        Outcome::Status(IOERR),
    );
}

#[test]
fn status_only_chain() {
    check(
        "no header",
        None,
        |h| {
            let s = h.status();
            chain(h, &[(s, 1, true)], s)
        },
        Outcome::Status(IOERR),
    );
}

#[test]
fn missing_status_descriptor() {
    check(
        "missing status",
        None,
        |h| {
            let hdr = h.header(VIRTIO_BLK_T_IN, 0);
            let b = h.buf(512, 0);
            h.mem.write_obj(0xffu8, b).unwrap();
            chain(h, &[(hdr, 16, false), (b, 512, true)], b)
        },
        Outcome::Dropped,
    );
}

#[test]
fn read_only_status_descriptor() {
    check(
        "read-only status",
        None,
        |h| {
            let hdr = h.header(VIRTIO_BLK_T_IN, 0);
            let (b, s) = (h.buf(512, 0), h.status());
            chain(h, &[(hdr, 16, false), (b, 512, true), (s, 1, false)], s)
        },
        Outcome::Dropped,
    );
}

#[test]
fn status_outside_guest_memory() {
    check(
        "status outside memory",
        None,
        |h| {
            let hdr = h.header(VIRTIO_BLK_T_IN, 0);
            let b = h.buf(512, 0);
            chain(
                h,
                &[(hdr, 16, false), (b, 512, true), (OUTSIDE, 1, true)],
                OUTSIDE,
            )
        },
        Outcome::Dropped,
    );
}

#[test]
fn descriptor_loop() {
    check(
        "loop",
        None,
        |h| {
            let hdr = h.header(VIRTIO_BLK_T_IN, 0);
            let (b, s) = (h.buf(512, 0), h.status());
            let first = 0u16; // first chain of the test starts at descriptor 0
            let next = VRING_DESC_F_NEXT as u16;
            let w = VRING_DESC_F_WRITE as u16;
            let descs = [
                RawDescriptor::from(SplitDescriptor::new(hdr.0, 16, next, first + 1)),
                RawDescriptor::from(SplitDescriptor::new(b.0, 512, w | next, first + 2)),
                // Points back to the header: the chain never ends.
                RawDescriptor::from(SplitDescriptor::new(s.0, 1, w | next, first)),
            ];
            (h.push_raw(&descs), s)
        },
        Outcome::Dropped,
    );
}

#[test]
fn next_index_out_of_range() {
    check(
        "bad next",
        None,
        |h| {
            let hdr = h.header(VIRTIO_BLK_T_IN, 0);
            let s = h.status();
            let next = VRING_DESC_F_NEXT as u16;
            let descs = [
                RawDescriptor::from(SplitDescriptor::new(hdr.0, 16, next, 1)),
                RawDescriptor::from(SplitDescriptor::new(
                    s.0,
                    1,
                    VRING_DESC_F_WRITE as u16 | next,
                    1000,
                )),
            ];
            (h.push_raw(&descs), s)
        },
        Outcome::Dropped,
    );
}

#[test]
fn chain_longer_than_the_queue() {
    // 70 descriptors in an indirect table for a 64-entry queue with seg_max 62.
    check(
        "long chain",
        None,
        |h| {
            let hdr = h.header(VIRTIO_BLK_T_IN, 0);
            let s = h.status();
            let mut segs: Vec<Seg> = vec![(hdr, 16, false)];
            segs.extend((0..68).map(|_| (GuestAddress(0x80_0000), 512, true)));
            segs.push((s, 1, true));
            (h.push_indirect(&segs), s)
        },
        Outcome::Status(IOERR),
    );
}

#[test]
fn indirect_table_outside_memory() {
    check(
        "indirect table outside memory",
        None,
        |h| {
            let s = h.status();
            let d = SplitDescriptor::new(
                OUTSIDE.0,
                48,
                virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16,
                0,
            );
            (h.push_raw(&[RawDescriptor::from(d)]), s)
        },
        Outcome::Dropped,
    );
}

#[test]
fn avail_index_far_ahead_does_not_panic() {
    let image = TempImage::new("avail");
    let mem = guest_memory();
    let mut h = Harness::new(
        &mem,
        engine(Kind::Sync, disk(&image, false, false)).unwrap(),
        limits(false),
    );
    // The driver claims 1000 new entries in a 64-entry ring.
    mem.write_obj(1000u16, h.mock.avail_addr().unchecked_add(2))
        .unwrap();
    h.run();
    h.run();
    assert_eq!(h.used_idx(), 0);
    assert_eq!(h.irqs(), 0);
    assert_eq!(
        h.irq.needs_reset.load(Ordering::SeqCst),
        1,
        "an impossible ring asks for a reset, once"
    );
}

#[test]
fn a_head_that_is_no_descriptor_breaks_the_ring() {
    let image = TempImage::new("badhead");
    let mem = guest_memory();
    let mut h = Harness::new(
        &mem,
        engine(Kind::Sync, disk(&image, false, false)).unwrap(),
        limits(false),
    );
    // Avail entry 0 names descriptor 200 of a 64-entry table, then a valid read follows.
    let avail = h.mock.avail_addr();
    mem.write_obj(200u16, avail.unchecked_add(4)).unwrap();
    mem.write_obj(1u16, avail.unchecked_add(2)).unwrap();
    h.run();
    assert_eq!(h.irq.needs_reset.load(Ordering::SeqCst), 1);
    let b = h.buf(512, 0);
    let (_, status) = h.request(VIRTIO_BLK_T_IN, 0, &[(b, 512, true)]);
    h.run();
    // Nothing more is popped until the driver resets the device.
    assert_eq!(h.used_idx(), 0);
    assert_ne!(h.status_of(status), OK);
    assert_eq!(h.irq.needs_reset.load(Ordering::SeqCst), 1);
}

#[test]
fn read_only_disk_refuses_writes() {
    let image = TempImage::new("ro");
    let before = image.read(0, DISK_SECTORS as usize * 512);
    let mem = guest_memory();
    let mut h = Harness::new(
        &mem,
        engine(Kind::Sync, disk(&image, true, false)).unwrap(),
        limits(true),
    );
    let w = h.buf(512, 0);
    mem.write_slice(&[0x55; 512], w).unwrap();
    let (wr, ws) = h.request(VIRTIO_BLK_T_OUT, 4, &[(w, 512, false)]);
    let z = h.buf(16, 0);
    let mut r = [0u8; 16];
    r[8..12].copy_from_slice(&4u32.to_le_bytes());
    mem.write_slice(&r, z).unwrap();
    let (_, zs) = h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(z, 16, false)]);
    let b = h.buf(512, 0);
    let (_, rs) = h.request(VIRTIO_BLK_T_IN, 4, &[(b, 512, true)]);
    h.run();
    assert_eq!(h.status_of(ws), IOERR);
    assert_eq!(h.used_for(wr), Some(1));
    assert_eq!(h.status_of(zs), IOERR);
    assert_eq!(h.status_of(rs), OK);
    assert_eq!(
        image.read(0, DISK_SECTORS as usize * 512),
        before,
        "image unchanged"
    );
}
