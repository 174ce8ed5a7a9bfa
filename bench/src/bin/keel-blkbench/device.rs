//! Mode `device`: Keel's virtio-blk dataplane driven from the host, without a vCPU.
//!
//! A [`Block`] device is opened over the file and activated on one real [`IoThread`] with a
//! split virtqueue in anonymous "guest" memory. This thread plays the driver of a polling
//! guest with `VIRTIO_RING_F_EVENT_IDX` negotiated:
//!
//! * every request is a fixed three-descriptor chain (header, data, status) per slot, set up
//!   once; issuing a request only rewrites the header's sector, puts the head on the avail
//!   ring and publishes the avail index;
//! * the kick eventfd is written only when the device's `avail_event` asks for it
//!   (`vring_need_event`), as a Linux guest does;
//! * the driver never wants interrupts: `used_event` is kept half the index space behind the
//!   used index, so the device never finds it inside the range it just completed;
//! * completions are found by polling the used index.
//!
//! The figures are the dataplane's own ceiling: IOPS, latency, kicks and interrupts per I/O
//! and the I/O thread's CPU use.

use std::path::Path;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::block::{Block, BlockConfig, EngineChoice};
use devices::virtio::iothread::IoThread;
use devices::virtio::{DeviceError, VirtioDevice, VirtioInterrupt};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::common::{
    align_up, cpu_pct, thread_cpu, Json, LatSummary, Latencies, Offsets, StopRule, Workload,
};
use crate::{chain, BenchError};

/// Give up when the device completes nothing for this long.
const STALL: Duration = Duration::from_secs(10);

/// When the driver writes the kick eventfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KickMode {
    /// Only when `avail_event` asks for it (`vring_need_event`), as a Linux guest does.
    Event,
    /// After every batch of new requests, whatever `avail_event` says (a diagnostic: shows
    /// what the device's notification suppression costs or saves).
    Always,
}

/// Which I/O engine the device uses (`engine=` of `--disk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    /// As keel's default: synchronous for a file in memory (tmpfs), io_uring otherwise.
    Auto,
    /// io_uring.
    #[value(name = "io_uring")]
    IoUring,
    /// The I/O thread runs each operation itself.
    Sync,
}

impl From<EngineArg> for EngineChoice {
    fn from(e: EngineArg) -> Self {
        match e {
            EngineArg::Auto => EngineChoice::Auto,
            EngineArg::IoUring => EngineChoice::IoUring,
            EngineArg::Sync => EngineChoice::Sync,
        }
    }
}

/// What a device run measured.
pub struct DeviceReport {
    /// Requests completed.
    pub ios: u64,
    /// Time from the first request to the last completion.
    pub elapsed: Duration,
    /// Per-request latency (avail index published to used entry seen).
    pub lat: LatSummary,
    /// Kick eventfd writes.
    pub kicks: u64,
    /// Queue interrupts the device raised.
    pub interrupts: u64,
    /// I/O engine the device picked.
    pub engine: &'static str,
    /// Queue size.
    pub queue_size: u16,
    /// CPU use of the I/O thread, percent of one CPU.
    pub iothread_cpu_pct: f64,
}

impl DeviceReport {
    /// Completed requests per second.
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// `n` per completed request.
    pub fn per_io(&self, n: u64) -> f64 {
        n as f64 / (self.ios.max(1)) as f64
    }

    /// The report as one JSON line.
    pub fn json(&self, w: &Workload, direct: bool) -> String {
        let mut j = Json::new();
        j.str("mode", "device")
            .str("rw", w.rw.name())
            .u64("bs", u64::from(w.bs))
            .u64("iodepth", u64::from(w.iodepth))
            .u64("direct", u64::from(direct))
            .u64("ios", self.ios)
            .f64("seconds", self.elapsed.as_secs_f64(), 3)
            .f64("iops", self.iops(), 0)
            .f64("mib_s", self.iops() * f64::from(w.bs) / 1048576.0, 1)
            .raw("lat_ns", &self.lat.json())
            .u64("kicks", self.kicks)
            .u64("interrupts", self.interrupts)
            .f64("kicks_per_io", self.per_io(self.kicks), 5)
            .f64("interrupts_per_io", self.per_io(self.interrupts), 5)
            .str("engine", self.engine)
            .u64("queue_size", u64::from(self.queue_size))
            .f64("iothread_cpu_pct", self.iothread_cpu_pct, 1);
        j.finish()
    }
}

/// Counts queue interrupts instead of raising them, and notes a device asking for a reset
/// (the benchmark's own ring would be broken: the run fails).
#[derive(Default)]
struct CountingInterrupt {
    queue: AtomicU64,
    needs_reset: std::sync::atomic::AtomicBool,
}

impl VirtioInterrupt for CountingInterrupt {
    fn trigger_queue(&self, _queue: u16) -> Result<(), DeviceError> {
        self.queue.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn trigger_config(&self) -> Result<(), DeviceError> {
        Ok(())
    }

    fn needs_reset(&self) -> Result<(), DeviceError> {
        self.needs_reset.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Guest-physical layout: rings, then headers and status bytes, then one data buffer per slot.
struct Layout {
    qsize: u16,
    desc: u64,
    avail: u64,
    used: u64,
    headers: u64,
    status: u64,
    data: u64,
    stride: u64,
    total: u64,
}

impl Layout {
    fn new(qsize: u16, w: &Workload) -> Self {
        let n = u64::from(qsize);
        let qd = u64::from(w.iodepth);
        let desc = 0;
        let avail = align_up(desc + 16 * n);
        let used = align_up(avail + 6 + 2 * n);
        let headers = align_up(used + 6 + 8 * n);
        let status = align_up(headers + 16 * qd);
        let data = align_up(status + qd);
        let stride = w.stride() as u64;
        Layout {
            qsize,
            desc,
            avail,
            used,
            headers,
            status,
            data,
            stride,
            total: data + stride * qd,
        }
    }

    fn used_event(&self) -> GuestAddress {
        GuestAddress(self.avail + 4 + 2 * u64::from(self.qsize))
    }

    fn avail_event(&self) -> GuestAddress {
        GuestAddress(self.used + 4 + 8 * u64::from(self.qsize))
    }
}

/// The device, its I/O thread, and the memory it reads. Dropping it resets the device,
/// which waits for the requests in flight.
struct Rig {
    block: Block,
    iothread: IoThread,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Err(e) = self.block.reset() {
            eprintln!("keel-blkbench: device reset failed: {}", chain(&e));
        }
    }
}

fn mem_err<E: std::error::Error>(what: &str) -> impl FnOnce(E) -> BenchError + '_ {
    move |e| BenchError::Request(format!("guest memory: {what}: {}", chain(&e)))
}

fn setup_err<E: std::error::Error>(what: &'static str) -> impl FnOnce(E) -> BenchError {
    move |e| BenchError::Setup {
        what,
        detail: chain(&e),
    }
}

/// `vring_need_event`: whether moving the index from `old` to `new` passes `event`.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The driver side of the queue.
struct Driver {
    mem: GuestMemoryMmap,
    l: Layout,
    kick: EventFd,
    kick_mode: KickMode,
    req_type: u32,
    avail_idx: u16,
    published: u16,
    last_used: u16,
    kicks: u64,
}

impl Driver {
    /// Writes the fixed descriptor chains, headers and ring fields.
    fn init(&mut self, w: &Workload) -> Result<(), BenchError> {
        let data_flags = if w.rw.is_write() {
            0
        } else {
            VRING_DESC_F_WRITE as u16
        };
        for slot in 0..u64::from(w.iodepth) {
            let head = (3 * slot) as u16;
            let hdr = self.l.headers + 16 * slot;
            let next = VRING_DESC_F_NEXT as u16;
            self.desc(head, hdr, 16, next, head + 1)?;
            let data = self.l.data + self.l.stride * slot;
            self.desc(head + 1, data, w.bs, next | data_flags, head + 2)?;
            self.desc(
                head + 2,
                self.l.status + slot,
                1,
                VRING_DESC_F_WRITE as u16,
                0,
            )?;
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&self.req_type.to_le_bytes());
            self.mem
                .write_slice(&h, GuestAddress(hdr))
                .map_err(mem_err("request header"))?;
        }
        // Ring flags and indexes start at zero (anonymous memory); used_event starts far away.
        self.mem
            .store(0x8000u16, self.l.used_event(), Ordering::Relaxed)
            .map_err(mem_err("used_event"))
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) -> Result<(), BenchError> {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&d, GuestAddress(self.l.desc + 16 * u64::from(i)))
            .map_err(mem_err("descriptor table"))
    }

    /// Fills in slot `slot`'s request for `offset` and puts it on the avail ring (not yet
    /// published).
    fn queue(&mut self, slot: usize, offset: u64) -> Result<(), BenchError> {
        let slot = slot as u64;
        let sector = offset / 512;
        self.mem
            .write_obj(sector.to_le(), GuestAddress(self.l.headers + 16 * slot + 8))
            .map_err(mem_err("request header"))?;
        self.mem
            .write_obj(0xffu8, GuestAddress(self.l.status + slot))
            .map_err(mem_err("status byte"))?;
        let ring_slot = u64::from(self.avail_idx % self.l.qsize);
        let head = (3 * slot) as u16;
        self.mem
            .write_obj(head.to_le(), GuestAddress(self.l.avail + 4 + 2 * ring_slot))
            .map_err(mem_err("avail ring"))?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(())
    }

    /// Publishes the avail index and kicks if the device's `avail_event` asks for it.
    fn publish(&mut self) -> Result<(), BenchError> {
        if self.avail_idx == self.published {
            return Ok(());
        }
        self.mem
            .store(
                self.avail_idx.to_le(),
                GuestAddress(self.l.avail + 2),
                Ordering::Release,
            )
            .map_err(mem_err("avail idx"))?;
        // Order the index store before reading avail_event (the device does the mirror image).
        fence(Ordering::SeqCst);
        let event: u16 = self
            .mem
            .load(self.l.avail_event(), Ordering::Relaxed)
            .map_err(mem_err("avail_event"))?;
        let wanted = need_event(u16::from_le(event), self.avail_idx, self.published);
        if wanted || self.kick_mode == KickMode::Always {
            self.kick.write(1).map_err(|source| BenchError::Io {
                what: "kick eventfd".into(),
                cause: source,
            })?;
            self.kicks += 1;
        }
        self.published = self.avail_idx;
        Ok(())
    }

    /// The used index the device has published.
    fn used_idx(&self) -> Result<u16, BenchError> {
        let v: u16 = self
            .mem
            .load(GuestAddress(self.l.used + 2), Ordering::Acquire)
            .map_err(mem_err("used idx"))?;
        Ok(u16::from_le(v))
    }

    /// Takes used entry `last_used`: returns the slot, after checking status and length.
    fn take_used(&mut self, w: &Workload) -> Result<usize, BenchError> {
        let at = self.l.used + 4 + 8 * u64::from(self.last_used % self.l.qsize);
        let id = u32::from_le(
            self.mem
                .read_obj(GuestAddress(at))
                .map_err(mem_err("used ring"))?,
        );
        let len = u32::from_le(
            self.mem
                .read_obj(GuestAddress(at + 4))
                .map_err(mem_err("used ring"))?,
        );
        self.last_used = self.last_used.wrapping_add(1);
        if id % 3 != 0 || id / 3 >= w.iodepth {
            return Err(BenchError::Request(format!(
                "device returned descriptor {id}, not a request head"
            )));
        }
        let slot = (id / 3) as usize;
        let status: u8 = self
            .mem
            .read_obj(GuestAddress(self.l.status + slot as u64))
            .map_err(mem_err("status byte"))?;
        let want_len = if w.rw.is_write() { 1 } else { w.bs + 1 };
        if u32::from(status) != VIRTIO_BLK_S_OK || len != want_len {
            return Err(BenchError::Request(format!(
                "request in slot {slot} failed: status {status}, used length {len} (want {want_len})"
            )));
        }
        Ok(slot)
    }

    /// Keeps `used_event` half the index space behind: the device never interrupts.
    fn push_used_event_away(&self) -> Result<(), BenchError> {
        let far = self.last_used.wrapping_sub(0x8000);
        self.mem
            .store(far.to_le(), self.l.used_event(), Ordering::Relaxed)
            .map_err(mem_err("used_event"))
    }
}

/// Runs the workload through a Keel virtio-blk device over `path`.
pub fn run(
    path: &Path,
    w: &Workload,
    direct: bool,
    queue_size: Option<u16>,
    kick_mode: KickMode,
    engine: EngineArg,
) -> Result<DeviceReport, BenchError> {
    let qsize = queue_size_for(w, queue_size)?;
    let mut block = open_block(path, w, direct, qsize, engine.into())?;
    let mut offsets = Offsets::new(block.capacity() * 512, w)?;
    let l = Layout::new(qsize, w);
    let mem_size = usize::try_from(align_up(l.total)).unwrap_or(usize::MAX);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size)])
        .map_err(setup_err("allocate guest memory"))?;
    let queue = split_queue(qsize, &l)?;
    let kick = EventFd::new(EFD_NONBLOCK).map_err(|source| BenchError::Io {
        what: "create the kick eventfd".into(),
        cause: source,
    })?;
    let device_kick = kick.try_clone().map_err(|source| BenchError::Io {
        what: "clone the kick eventfd".into(),
        cause: source,
    })?;
    let mut d = Driver {
        mem: mem.clone(),
        l,
        kick,
        kick_mode,
        req_type: if w.rw.is_write() {
            VIRTIO_BLK_T_OUT
        } else {
            VIRTIO_BLK_T_IN
        },
        avail_idx: 0,
        published: 0,
        last_used: 0,
        kicks: 0,
    };
    d.init(w)?;

    let iothread = IoThread::spawn("blkbench-io").map_err(setup_err("start the I/O thread"))?;
    block.set_iothreads("blkbench", vec![iothread.handle()]);
    let irq = Arc::new(CountingInterrupt::default());
    block
        .activate(mem, vec![(queue, device_kick)], irq.clone())
        .map_err(setup_err("activate the device"))?;
    let rig = Rig { block, iothread };
    let engine = rig.block.engine_name().unwrap_or("none");
    let io_tid = rig.iothread.tid();

    let cpu_before = thread_cpu(io_tid);
    let (ios, elapsed, lat) = drive(&mut d, w, &mut offsets)?;
    let iothread_cpu_pct = cpu_pct(cpu_before, thread_cpu(io_tid), elapsed);
    drop(rig);
    if irq.needs_reset.load(Ordering::Relaxed) {
        return Err(BenchError::Request(
            "the device found the benchmark's ring broken and asked for a reset".into(),
        ));
    }
    Ok(DeviceReport {
        ios,
        elapsed,
        lat,
        kicks: d.kicks,
        interrupts: irq.queue.load(Ordering::Relaxed),
        engine,
        queue_size: qsize,
        iothread_cpu_pct,
    })
}

/// The queue size asked for, or the smallest power of two (at least 256) that holds
/// `iodepth` three-descriptor requests; refused if it cannot hold them.
fn queue_size_for(w: &Workload, asked: Option<u16>) -> Result<u16, BenchError> {
    let need = (3 * w.iodepth).next_power_of_two().max(256);
    let qsize = match asked {
        Some(q) => q,
        None => u16::try_from(need).map_err(|_| {
            BenchError::Usage(format!("iodepth {} needs a queue over 32768", w.iodepth))
        })?,
    };
    if u32::from(qsize) < 3 * w.iodepth {
        return Err(BenchError::Usage(format!(
            "queue size {qsize} cannot hold {} three-descriptor requests",
            w.iodepth
        )));
    }
    Ok(qsize)
}

/// Keel's virtio-blk device over `path`, with the features a polling Linux driver takes
/// (EVENT_IDX required).
fn open_block(
    path: &Path,
    w: &Workload,
    direct: bool,
    qsize: u16,
    engine: EngineChoice,
) -> Result<Block, BenchError> {
    let mut block = Block::new(BlockConfig {
        path: path.to_path_buf(),
        readonly: !w.rw.is_write(),
        direct,
        num_queues: 1,
        queue_size: qsize,
        serial: None,
        lock: false,
        engine,
    })
    .map_err(setup_err("open the virtio-blk device"))?;
    let want = [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
    ]
    .iter()
    .fold(0u64, |acc, &b| acc | (1u64 << b));
    let offered = block.features();
    if offered & (1u64 << VIRTIO_RING_F_EVENT_IDX) == 0 {
        return Err(BenchError::Setup {
            what: "negotiate features",
            detail: "the device does not offer VIRTIO_RING_F_EVENT_IDX".into(),
        });
    }
    block.ack_features(offered & want);
    Ok(block)
}

/// A ready split queue of `qsize` entries at `l`'s addresses.
fn split_queue(qsize: u16, l: &Layout) -> Result<Queue, BenchError> {
    let mut queue = Queue::new(qsize).map_err(setup_err("create the queue"))?;
    queue
        .try_set_desc_table_address(GuestAddress(l.desc))
        .map_err(setup_err("place the descriptor table"))?;
    queue
        .try_set_avail_ring_address(GuestAddress(l.avail))
        .map_err(setup_err("place the avail ring"))?;
    queue
        .try_set_used_ring_address(GuestAddress(l.used))
        .map_err(setup_err("place the used ring"))?;
    queue.set_ready(true);
    Ok(queue)
}

/// Keeps `iodepth` requests in flight until the stop rule says enough, reissuing each slot
/// as it completes; returns the requests done, the time from the first request to the last
/// completion, and the latencies.
fn drive(
    d: &mut Driver,
    w: &Workload,
    offsets: &mut Offsets,
) -> Result<(u64, Duration, LatSummary), BenchError> {
    let (start, stop) = StopRule::start(w);
    let mut issued_at = vec![start; w.iodepth as usize];
    let mut lat = Latencies::with_capacity(1 << 20);
    let (mut issued, mut done) = (0u64, 0u64);
    let mut last_done = start;
    for (slot, at) in issued_at.iter_mut().enumerate() {
        if !stop.more(issued, start) {
            break;
        }
        d.queue(slot, offsets.next_offset())?;
        *at = Instant::now();
        issued += 1;
    }
    d.publish()?;
    let mut spins = 0u32;
    let mut last_progress = start;
    while done < issued {
        let used = d.used_idx()?;
        if used == d.last_used {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(4096) && last_progress.elapsed() > STALL {
                return Err(BenchError::Request(format!(
                    "the device completed nothing for {} s ({} requests in flight)",
                    STALL.as_secs(),
                    issued - done
                )));
            }
            continue;
        }
        let now = Instant::now();
        last_progress = now;
        while d.last_used != used {
            let slot = d.take_used(w)?;
            lat.record(issued_at[slot], now);
            done += 1;
            last_done = now;
            if stop.more(issued, now) {
                d.queue(slot, offsets.next_offset())?;
                issued_at[slot] = now;
                issued += 1;
            }
        }
        d.push_used_event_away()?;
        d.publish()?;
    }
    Ok((
        done,
        last_done.saturating_duration_since(start),
        lat.summary(),
    ))
}

#[cfg(test)]
mod tests {
    use super::need_event;

    #[test]
    fn need_event_matches_linux() {
        // Device asked to be kicked once the driver moves past index 5.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 8, 3));
        assert!(!need_event(5, 5, 3));
        assert!(!need_event(9, 8, 3));
        // Wrap-around.
        assert!(need_event(0xffff, 2, 0xfffe));
        // An event far behind never asks for a kick.
        assert!(!need_event(100u16.wrapping_sub(0x8000), 132, 100));
    }
}
