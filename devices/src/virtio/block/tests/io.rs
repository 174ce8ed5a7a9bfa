//! Well-formed requests: IN/OUT round-trips on both engines, direct I/O, FLUSH durability,
//! GET_ID, DISCARD/WRITE_ZEROES, notification suppression and batching.

use std::sync::atomic::Ordering;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::{Address, Bytes, GuestAddress};

use super::*;
use crate::virtio::block::engine::{
    is_file_in_memory, is_memory_filesystem, open_engine, DiskImage, EngineChoice,
};
use crate::virtio::block::uring_engine::UringEngine;

const OK: u8 = VIRTIO_BLK_S_OK as u8;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn round_trip(kind: Kind, direct: bool, misalign: u64) {
    let image = TempImage::new("rt");
    let Ok(d) = DiskImage::open(&image.path, false, direct) else {
        eprintln!(
            "SKIPPED: O_DIRECT not supported for {}",
            image.path.display()
        );
        return;
    };
    let Some(engine) = engine(kind, Arc::new(d)) else {
        return;
    };
    let mem = guest_memory();
    let mut h = Harness::new(&mem, engine, limits(false));

    // IN: sectors 3..5 into two segments of uneven sizes (300 + 724 bytes).
    let a = h.buf(300, misalign);
    let b = h.buf(724, misalign);
    let (rd, rd_status) = h.request(VIRTIO_BLK_T_IN, 3, &[(a, 300, true), (b, 724, true)]);
    // OUT: 8 KiB at sector 16 from one buffer.
    let w = h.buf(8192, misalign);
    let data = pattern(8192, 3);
    mem.write_slice(&data, w).unwrap();
    let (wr, wr_status) = h.request(VIRTIO_BLK_T_OUT, 16, &[(w, 8192, false)]);
    h.run();

    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got[..300], a).unwrap();
    mem.read_slice(&mut got[300..], b).unwrap();
    assert_eq!(got, image.read(3 * 512, 1024), "{kind:?}: IN data");
    assert_eq!(h.status_of(rd_status), OK);
    assert_eq!(h.used_for(rd), Some(1025), "IN used length = data + status");
    assert_eq!(h.status_of(wr_status), OK);
    assert_eq!(h.used_for(wr), Some(1), "OUT used length = status only");
    assert_eq!(
        image.read(16 * 512, 8192),
        data,
        "{kind:?}: OUT data in file"
    );
    // Neighbouring sectors untouched.
    assert_eq!(
        image.read(15 * 512, 512),
        TempImage::new("ref").read(15 * 512, 512)
    );
}

#[test]
fn in_out_round_trip_sync() {
    round_trip(Kind::Sync, false, 0);
}

#[test]
fn in_out_round_trip_uring() {
    round_trip(Kind::Uring, false, 0);
}

#[test]
fn in_out_round_trip_direct_aligned_and_unaligned() {
    for kind in [Kind::Sync, Kind::Uring] {
        round_trip(kind, true, 0);
        // Guest buffers not 512-aligned in host memory: served through the buffered path.
        round_trip(kind, true, 3);
    }
}

#[test]
fn engine_choice_is_reported() {
    let image = TempImage::new("name");
    let e = open_engine(disk(&image, false, false), 64, EngineChoice::IoUring).unwrap();
    assert!(["io_uring", "sync"].contains(&e.name()));
}

/// A memfd: a tmpfs file whatever the host mounts where. Its path is `/proc/self/fd/N`.
struct MemFile(std::fs::File);

impl MemFile {
    fn new(len: u64) -> MemFile {
        // SAFETY: memfd_create with a NUL-terminated name; the returned descriptor is owned
        // by the File at once.
        let fd = unsafe { libc::memfd_create(c"keel-blk-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.set_len(len).unwrap();
        MemFile(f)
    }

    fn path(&self) -> std::path::PathBuf {
        use std::os::fd::AsRawFd;
        format!("/proc/self/fd/{}", self.0.as_raw_fd()).into()
    }
}

#[test]
fn a_file_in_memory_gets_the_sync_engine_unless_io_uring_is_asked_for() {
    let file = MemFile::new(1 << 20);
    let d = Arc::new(DiskImage::open(&file.path(), false, false).unwrap());
    assert!(d.in_memory());
    let name = |choice| open_engine(d.clone(), 64, choice).unwrap().name();
    assert_eq!(name(EngineChoice::Auto), "sync");
    assert_eq!(name(EngineChoice::Sync), "sync");
    let uring = UringEngine::new(d.clone(), 64).is_ok();
    let expected = if uring { "io_uring" } else { "sync" };
    assert_eq!(name(EngineChoice::IoUring), expected);
}

#[test]
fn only_regular_files_on_tmpfs_or_ramfs_are_in_memory() {
    assert!(is_memory_filesystem(0x0102_1994), "tmpfs");
    assert!(is_memory_filesystem(0x8584_58f6), "ramfs");
    assert!(!is_memory_filesystem(0xef53), "ext4");
    assert!(!is_memory_filesystem(0x5846_5342), "xfs");
    // A device node sits on devtmpfs (tmpfs's magic) but is no file in memory.
    assert!(!is_file_in_memory(
        &std::fs::File::open("/dev/null").unwrap()
    ));
    assert!(is_file_in_memory(&MemFile::new(4096).0));
}

#[test]
fn indirect_chain_is_served() {
    let image = TempImage::new("ind");
    let mem = guest_memory();
    let mut h = Harness::new(
        &mem,
        engine(Kind::Sync, disk(&image, false, false)).unwrap(),
        limits(false),
    );
    let hdr = h.header(VIRTIO_BLK_T_IN, 7);
    let buf = h.buf(512, 0);
    let st = h.status();
    let head = h.push_indirect(&[(hdr, 16, false), (buf, 512, true), (st, 1, true)]);
    h.run();
    assert_eq!(h.status_of(st), OK);
    assert_eq!(h.used_for(head), Some(513));
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, buf).unwrap();
    assert_eq!(got, image.read(7 * 512, 512));
}

#[test]
fn flush_makes_data_visible_to_a_fresh_handle() {
    for kind in [Kind::Sync, Kind::Uring] {
        let image = TempImage::new("flush");
        let Some(engine) = engine(kind, disk(&image, false, false)) else {
            continue;
        };
        let mem = guest_memory();
        let mut h = Harness::new(&mem, engine, limits(false));
        let w = h.buf(512, 0);
        let data = pattern(512, 99);
        mem.write_slice(&data, w).unwrap();
        let (_, ws) = h.request(VIRTIO_BLK_T_OUT, 100, &[(w, 512, false)]);
        h.run();
        let (fl, fs) = h.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
        h.run();
        assert_eq!(h.status_of(ws), OK);
        assert_eq!(h.status_of(fs), OK, "{kind:?}: flush status");
        assert_eq!(h.used_for(fl), Some(1));
        assert_eq!(image.read(100 * 512, 512), data);
    }
}

#[test]
fn writethrough_mode_writes_are_durable() {
    let image = TempImage::new("wt");
    let mem = guest_memory();
    let mut h = Harness::new(
        &mem,
        engine(Kind::Sync, disk(&image, false, false)).unwrap(),
        limits(false),
    );
    h.writeback.store(false, Ordering::SeqCst);
    let w = h.buf(1024, 0);
    let data = pattern(1024, 5);
    mem.write_slice(&data, w).unwrap();
    let (_, st) = h.request(VIRTIO_BLK_T_OUT, 1, &[(w, 1024, false)]);
    h.run();
    assert_eq!(h.status_of(st), OK);
    assert_eq!(image.read(512, 1024), data);
}

#[test]
fn get_id_returns_the_serial() {
    let image = TempImage::new("id");
    let mem = guest_memory();
    let mut h = Harness::new(
        &mem,
        engine(Kind::Sync, disk(&image, true, false)).unwrap(),
        limits(true),
    );
    let full = h.buf(20, 0);
    let (id1, s1) = h.request(VIRTIO_BLK_T_GET_ID, 0, &[(full, 20, true)]);
    let short = h.buf(8, 0);
    let (id2, s2) = h.request(VIRTIO_BLK_T_GET_ID, 0, &[(short, 8, true)]);
    h.run();
    let mut got = [0u8; 20];
    mem.read_slice(&mut got, full).unwrap();
    assert_eq!(&got, b"keel-serial-0001\0\0\0\0");
    assert_eq!((h.status_of(s1), h.used_for(id1)), (OK, Some(21)));
    let mut got = [0u8; 8];
    mem.read_slice(&mut got, short).unwrap();
    assert_eq!(&got, b"keel-ser");
    assert_eq!((h.status_of(s2), h.used_for(id2)), (OK, Some(9)));
}

/// Writes `(sector, num_sectors, flags)` ranges into a new guest buffer.
fn ranges(h: &mut Harness<'_>, list: &[(u64, u32, u32)]) -> (GuestAddress, u32) {
    let len = 16 * list.len() as u32;
    let addr = h.buf(len, 0);
    for (i, &(sector, num, flags)) in list.iter().enumerate() {
        let mut r = [0u8; 16];
        r[0..8].copy_from_slice(&sector.to_le_bytes());
        r[8..12].copy_from_slice(&num.to_le_bytes());
        r[12..16].copy_from_slice(&flags.to_le_bytes());
        h.mem
            .write_slice(&r, addr.unchecked_add(16 * i as u64))
            .unwrap();
    }
    (addr, len)
}

#[test]
fn discard_and_write_zeroes_zero_the_range() {
    for kind in [Kind::Sync, Kind::Uring] {
        let image = TempImage::new("zero");
        image.write(0, &vec![0xaa; DISK_SECTORS as usize * 512]);
        let Some(engine) = engine(kind, disk(&image, false, false)) else {
            continue;
        };
        let mem = guest_memory();
        let mut h = Harness::new(&mem, engine, limits(false));
        let (d, dl) = ranges(&mut h, &[(8, 8, 0), (64, 16, 0)]);
        let (_, ds) = h.request(VIRTIO_BLK_T_DISCARD, 0, &[(d, dl, false)]);
        let unmap = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
        let (z, zl) = ranges(&mut h, &[(32, 3, 0), (40, 2, unmap)]);
        let (_, zs) = h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(z, zl, false)]);
        h.run();
        assert_eq!(h.status_of(ds), OK, "{kind:?}: discard status");
        assert_eq!(h.status_of(zs), OK, "{kind:?}: write-zeroes status");
        for (sector, count) in [(8u64, 8usize), (64, 16), (32, 3), (40, 2)] {
            assert!(
                image
                    .read(sector * 512, count * 512)
                    .iter()
                    .all(|&b| b == 0),
                "{kind:?}: sectors {sector}+{count} not zeroed"
            );
        }
        for sector in [7u64, 16, 31, 35, 39, 42, 63, 80] {
            assert_eq!(
                image.read(sector * 512, 512),
                vec![0xaa; 512],
                "sector {sector}"
            );
        }
    }
}

#[test]
fn event_idx_suppresses_unneeded_interrupts() {
    let image = TempImage::new("evidx");
    let mem = guest_memory();
    let mut h = Harness::with_event_idx(
        &mem,
        engine(Kind::Sync, disk(&image, false, false)).unwrap(),
        limits(false),
        true,
    );
    // used_event lives after the avail ring entries.
    let used_event = h
        .mock
        .avail_addr()
        .unchecked_add(4 + 2 * u64::from(QUEUE_SIZE));
    mem.write_obj(5u16, used_event).unwrap();
    let b = h.buf(512, 0);
    let (_, s) = h.request(VIRTIO_BLK_T_IN, 0, &[(b, 512, true)]);
    h.run();
    assert_eq!(h.status_of(s), OK);
    assert_eq!(h.used_idx(), 1);
    assert_eq!(
        h.irqs(),
        0,
        "driver asked for an interrupt only after used idx 6"
    );
    // Now the driver wants to hear about the next used entry (used idx going 1 -> 2).
    mem.write_obj(1u16, used_event).unwrap();
    let (_, s) = h.request(VIRTIO_BLK_T_IN, 1, &[(b, 512, true)]);
    h.run();
    assert_eq!(h.status_of(s), OK);
    assert_eq!(h.irqs(), 1);
    let stats = crate::virtio::block::counters::sum(std::iter::once(h.counters.as_ref()));
    assert_eq!(
        (stats.kicks, stats.interrupts),
        (2, 1),
        "two notifications counted, one interrupt sent: {stats:?}"
    );
}

#[test]
fn one_interrupt_per_batch() {
    for kind in [Kind::Sync, Kind::Uring] {
        let image = TempImage::new("batch");
        let Some(engine) = engine(kind, disk(&image, false, false)) else {
            continue;
        };
        let mem = guest_memory();
        let mut h = Harness::new(&mem, engine, limits(false));
        let mut statuses = Vec::new();
        for i in 0..6 {
            let b = h.buf(512, 0);
            statuses.push(h.request(VIRTIO_BLK_T_IN, i, &[(b, 512, true)]).1);
        }
        // A bad one in the same batch completes immediately but does not add an interrupt.
        statuses.push(
            h.request(
                VIRTIO_BLK_T_IN,
                DISK_SECTORS,
                &[(GuestAddress(0x80_0000), 512, true)],
            )
            .1,
        );
        h.run();
        assert_eq!(h.used_idx(), 7);
        let stats = crate::virtio::block::counters::sum(std::iter::once(h.counters.as_ref()));
        assert_eq!((stats.requests, stats.errors), (7, 1), "{stats:?}");
        assert_eq!(
            (stats.read_bytes, stats.write_bytes),
            (6 * 512, 0),
            "{stats:?}"
        );
        if kind == Kind::Sync {
            assert_eq!(h.irqs(), 1, "sync: one interrupt for the whole batch");
        } else {
            // io_uring completions may arrive in more than one reap, but never one per request
            // more than the number of handler calls.
            assert!(h.irqs() >= 1 && h.irqs() <= 7, "uring irqs {}", h.irqs());
        }
        let ok = statuses.iter().filter(|&&s| h.status_of(s) == OK).count();
        assert_eq!(ok, 6);
    }
}

#[test]
fn while_the_thread_polls_an_idle_queue_needs_no_kick_and_after_it_does() {
    let image = TempImage::new("poll");
    let Some(engine) = engine(Kind::Sync, disk(&image, false, false)) else {
        return;
    };
    let mem = guest_memory();
    let mut h = Harness::with_event_idx(&mem, engine, limits(false), true);
    h.handler.begin_polling();
    let b = h.buf(4096, 0);
    let (_, status) = h.request(VIRTIO_BLK_T_IN, 0, &[(b, 4096, true)]);
    assert!(h.handler.poll_once().unwrap(), "found without a kick");
    // The synchronous engine has done the read: the next look reaps it.
    assert!(h.handler.poll_once().unwrap(), "completion reaped");
    assert_eq!((h.used_idx(), h.handler.in_flight()), (1, 0));
    assert_eq!(h.status_of(status), OK);
    assert!(!h.handler.poll_once().unwrap(), "nothing more to find");
    assert!(
        !h.next_request_kicks(),
        "idle but polled: the driver is not asked to kick"
    );
    h.handler.end_polling().unwrap();
    assert!(
        h.next_request_kicks(),
        "polling over: the next request must be kicked"
    );
}

#[test]
fn a_polled_queue_asks_for_no_kick_until_its_polling_ends() {
    let image = TempImage::new("pollkick");
    let Some(engine) = engine(Kind::Sync, disk(&image, false, false)) else {
        return;
    };
    let mem = guest_memory();
    let mut h = Harness::with_event_idx(&mem, engine, limits(false), true);
    assert!(h.next_request_kicks(), "an idle queue asks for a kick");
    h.handler.begin_polling();
    assert!(
        !h.next_request_kicks(),
        "polled from now on: the request for a kick is taken back"
    );
    // The request's event also serves its completion (the synchronous engine's).
    let b = h.buf(4096, 0);
    h.request(VIRTIO_BLK_T_IN, 0, &[(b, 4096, true)]);
    h.handler.handle_kick().unwrap();
    assert_eq!((h.used_idx(), h.handler.in_flight()), (1, 0));
    assert!(
        !h.next_request_kicks(),
        "a completion served while polling does not ask again"
    );
    h.handler.end_polling().unwrap();
    assert!(h.next_request_kicks(), "polling over");
    // Served without polling, a completion asks for the next kick at once.
    let b = h.buf(4096, 0);
    h.request(VIRTIO_BLK_T_IN, 8, &[(b, 4096, true)]);
    h.handler.handle_kick().unwrap();
    assert_eq!(h.used_idx(), 2);
    assert!(h.next_request_kicks());
}

#[test]
fn requests_queued_while_in_flight_need_no_kick() {
    let image = TempImage::new("nokick");
    let Some(engine) = engine(Kind::Uring, disk(&image, false, false)) else {
        return;
    };
    let mem = guest_memory();
    let mut h = Harness::with_event_idx(&mem, engine, limits(false), true);
    let b = h.buf(4096, 0);
    let (_, first) = h.request(VIRTIO_BLK_T_IN, 0, &[(b, 4096, true)]);
    // Submit without reaping: the request is in flight until a completion is handled.
    h.handler.process_queue().unwrap();
    assert_eq!(h.handler.in_flight(), 1);
    assert_eq!(
        h.avail_event(),
        0,
        "notifications stay off while a request is in flight"
    );
    // The driver queues more without kicking (avail_event 0 is behind its old index 1).
    let mut rest = Vec::new();
    for i in 1..4 {
        let b = h.buf(4096, 0);
        rest.push(h.request(VIRTIO_BLK_T_IN, i * 8, &[(b, 4096, true)]).1);
    }
    // Only completions drive the handler from here on.
    for _ in 0..200 {
        if h.used_idx() == 4 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        h.handler.handle_completion().unwrap();
    }
    assert_eq!(
        h.used_idx(),
        4,
        "requests queued without a kick were served"
    );
    assert_eq!(h.status_of(first), OK);
    for s in rest {
        assert_eq!(h.status_of(s), OK);
    }
    assert_eq!(
        h.avail_event(),
        4,
        "idle again: the next request must be kicked"
    );
}

#[test]
fn image_locks_keep_a_second_writer_and_a_reader_out() {
    use crate::virtio::block::engine::EngineError;
    let image = TempImage::new("lock");
    let open = |ro: bool| DiskImage::open(&image.path, ro, false).unwrap();
    let locked = |d: &DiskImage| matches!(d.lock(&image.path), Err(EngineError::Locked { .. }));
    let writer = open(false);
    writer.lock(&image.path).unwrap();
    assert!(locked(&open(false)), "a second writer");
    assert!(locked(&open(true)), "a reader beside a writer");
    drop(writer);
    let reader = open(true);
    reader.lock(&image.path).unwrap();
    let other_reader = open(true);
    other_reader.lock(&image.path).unwrap();
    assert!(locked(&open(false)), "a writer beside readers");
    drop((reader, other_reader));
    open(false).lock(&image.path).unwrap();
}

/// A read-only loop device over `image` (`losetup -r`), detached on drop; `None` where this
/// host cannot make one (no root, no loop driver).
struct ReadOnlyLoop(String);

impl ReadOnlyLoop {
    fn over(image: &std::path::Path) -> Option<Self> {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show", "-r"])
            .arg(image)
            .output()
            .ok()?;
        let dev = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && dev.starts_with("/dev/loop")).then_some(ReadOnlyLoop(dev))
    }
}

impl Drop for ReadOnlyLoop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn a_read_only_block_device_is_refused_as_writable_and_taken_read_only() {
    let image = TempImage::new("roloop");
    let Some(dev) = ReadOnlyLoop::over(&image.path) else {
        eprintln!("skipped: cannot make a read-only loop device here");
        return;
    };
    let path = std::path::Path::new(&dev.0);
    let Err(err) = DiskImage::open(path, false, false) else {
        panic!("a writable open of a read-only device was accepted");
    };
    assert!(
        err.to_string()
            .contains("is a read-only block device: attach it with readonly=on"),
        "{err}"
    );
    let ro = DiskImage::open(path, true, false).expect("read-only open");
    assert_eq!(ro.size(), DISK_SECTORS * 512);
}
