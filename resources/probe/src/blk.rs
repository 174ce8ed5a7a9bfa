//! The `blk` command: a fio-like load generator on a virtio-blk PCI disk.
//!
//! Phases: open and initialise the device (`vblk`), GET_ID, the timed phase (`ios` requests
//! or `runtime` seconds at `iodepth`, spread round-robin over `queues`), an optional FLUSH,
//! then (verify=1 with writes) a read-back of every block written successfully. Writes always
//! carry the pattern: every little-endian u64 of 512-byte sector S holds S (absolute sector).
//! With verify=1, reads of read/randread are checked against it; reads of randrw only for
//! blocks this run already wrote. Latency is TSC-timed per request, submit to completion.
//! The result is one `{"cmd":"blk",...}` line, or with `report=fio` a fio-shaped document
//! between marker lines (`fio`).

use crate::blkargs::{Args, Mode, Report};
use crate::cmd::Ctx;
use crate::dma::Arena;
use crate::err;
use crate::error::Result;
use crate::fio;
use crate::hist::{self, Hist};
use crate::io::rdtsc;
use crate::irq;
use crate::json::Line;
use crate::pci::Pci;
use crate::tsc::Tsc;
use crate::vblk::{self, Blk, Done, Opts, S_IOERR, S_OK, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT};

/// Tag of a read whose data must match the pattern.
const TAG_CHECK: u8 = 1;

/// Counters of one run.
#[derive(Default)]
pub struct Stats {
    ios: u64,
    ioerr: u64,
    unsupp: u64,
    other: u64,
    bad_sectors: u64,
    first_bad: Option<u64>,
    verify_reads: u64,
}

impl Stats {
    fn bad(&mut self, sector: u64, n: u64) {
        self.bad_sectors += n;
        self.first_bad = Some(self.first_bad.map_or(sector, |f| f.min(sector)));
    }

    /// Checks `buf` (starting at `sector`) against the pattern.
    fn check(&mut self, buf: &[u64], sector: u64) {
        for (i, s) in buf.chunks(64).enumerate() {
            let want = sector + i as u64;
            if s.iter().any(|&w| w != want) {
                self.bad(want, 1);
            }
        }
    }
}

/// Fills `buf` (starting at `sector`) with the pattern.
fn fill(buf: &mut [u64], sector: u64) {
    for (i, s) in buf.chunks_mut(64).enumerate() {
        s.fill(sector + i as u64);
    }
}

/// A source of requests and a sink of completions.
trait Work {
    /// The next request (type, sector, tag), or None to stop submitting.
    fn next(&mut self, now: u64) -> Option<(u32, u64, u8)>;
    /// One completion; `buf` is the slot's data buffer.
    fn done(&mut self, d: &Done, buf: &[u64], now: u64);
}

/// The region and block geometry.
#[derive(Clone, Copy)]
struct Region {
    first_sector: u64,
    blocks: u64,
    bs_sectors: u64,
}

impl Region {
    fn sector(&self, block: u64) -> u64 {
        self.first_sector + block * self.bs_sectors
    }
    fn block(&self, sector: u64) -> u64 {
        (sector - self.first_sector) / self.bs_sectors
    }
}

fn bit(map: &[u64], b: u64) -> bool {
    map.get((b / 64) as usize)
        .is_some_and(|w| w & (1 << (b % 64)) != 0)
}

/// The timed phase.
struct Timed<'a> {
    a: Args,
    r: Region,
    rng: u64,
    seq: u64,
    issued: u64,
    end: Option<u64>,
    written: &'a mut [u64],
    st: Stats,
    hist: Hist<'a>,
    /// Per direction ([read, write]) with `report=fio`; empty (never counting) otherwise.
    dirs: [Hist<'a>; 2],
    tsc: Tsc,
}

impl Timed<'_> {
    fn rand(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

impl Work for Timed<'_> {
    fn next(&mut self, now: u64) -> Option<(u32, u64, u8)> {
        if self.a.ios.is_some_and(|n| self.issued >= n) || self.end.is_some_and(|e| now >= e) {
            return None;
        }
        self.issued += 1;
        let block = if self.a.rw.random() {
            self.rand() % self.r.blocks
        } else {
            let b = self.seq;
            self.seq = (b + 1) % self.r.blocks;
            b
        };
        let write = match self.a.rw {
            Mode::Read | Mode::RandRead => false,
            Mode::Write | Mode::RandWrite => true,
            Mode::RandRw => self.rand() >> 63 != 0,
        };
        let check = self.a.verify && !write && (!self.a.rw.writes() || bit(self.written, block));
        let kind = if write { T_OUT } else { T_IN };
        Some((
            kind,
            self.r.sector(block),
            if check { TAG_CHECK } else { 0 },
        ))
    }

    fn done(&mut self, d: &Done, buf: &[u64], now: u64) {
        let ticks = now.wrapping_sub(d.info.submitted);
        let lat = (ticks as u128 * 1_000_000 / self.tsc.khz as u128) as u64;
        self.hist.record(lat);
        self.dirs[(d.info.kind == T_OUT) as usize].record(lat);
        self.st.ios += 1;
        match d.status {
            S_OK => {
                if d.info.kind == T_OUT && self.a.verify {
                    let b = self.r.block(d.info.sector);
                    if let Some(w) = self.written.get_mut((b / 64) as usize) {
                        *w |= 1 << (b % 64);
                    }
                } else if d.info.tag == TAG_CHECK {
                    self.st.check(buf, d.info.sector);
                }
            }
            S_IOERR => self.st.ioerr += 1,
            S_UNSUPP => self.st.unsupp += 1,
            _ => self.st.other += 1,
        }
    }
}

/// Reads back every block marked in `written` and checks it.
struct Readback<'a, 'b> {
    r: Region,
    written: &'a [u64],
    next_block: u64,
    st: &'b mut Stats,
}

impl Work for Readback<'_, '_> {
    fn next(&mut self, _now: u64) -> Option<(u32, u64, u8)> {
        while self.next_block < self.r.blocks {
            let b = self.next_block;
            let w = self.written.get((b / 64) as usize).copied().unwrap_or(0);
            if w >> (b % 64) == 0 {
                self.next_block = (b / 64 + 1) * 64;
                continue;
            }
            self.next_block += 1;
            if bit(self.written, b) {
                return Some((T_IN, self.r.sector(b), TAG_CHECK));
            }
        }
        None
    }

    fn done(&mut self, d: &Done, buf: &[u64], _now: u64) {
        self.st.verify_reads += 1;
        if d.status == S_OK {
            self.st.check(buf, d.info.sector);
        } else {
            self.st.bad(d.info.sector, self.r.bs_sectors);
        }
    }
}

/// Runs `w` to completion; returns (first submit, last completion) TSC.
fn phase(dev: &mut Blk, w: &mut impl Work, bs: u32) -> Result<(u64, u64)> {
    let start = rdtsc();
    let mut last = start;
    let mut stopped = false;
    loop {
        if !stopped {
            let now = rdtsc();
            while dev.can_submit() {
                let Some((kind, sector, tag)) = w.next(now) else {
                    stopped = true;
                    break;
                };
                let slot = dev.reserve().ok_or_else(|| err!("blk: no free slot"))?;
                if kind == T_OUT {
                    fill(dev.buf(slot), sector);
                }
                dev.submit(slot, kind, sector, bs, tag);
            }
            dev.publish();
        }
        dev.poll(|dev, d| {
            let now = rdtsc();
            w.done(&d, dev.buf(d.slot), now);
            last = now;
        })?;
        if stopped && dev.inflight() == 0 {
            return Ok((start, last));
        }
    }
}

fn status_name(s: u8) -> &'static str {
    match s {
        S_OK => "ok",
        S_IOERR => "ioerr",
        S_UNSUPP => "unsupp",
        _ => "other",
    }
}

fn ns(tsc: Tsc, ticks: u64) -> u64 {
    (ticks as u128 * 1_000_000 / tsc.khz.max(1) as u128) as u64
}

/// The `{"cmd":"blk-bad-head",...}` line: the device status after a bad head.
fn report_needs_reset(bdf: crate::pci::Bdf, status: u8) -> Result<()> {
    let mut l = Line::new();
    l.raw("{\"cmd\":\"blk-bad-head\",\"pci\":");
    bdf.json(&mut l);
    l.raw(",\"status\":").num(status as u64).raw("}");
    l.finish()
}

/// Runs the `blk` command.
pub fn run(ctx: &mut Ctx, a: &Args) -> Result<()> {
    let tsc = ctx.tsc()?;
    if let Err(base) = irq::enable(ctx.acpi.as_ref()) {
        return Err(err!(
            "blk: local APIC at {:#x}, the probe expects 0xfee00000",
            base
        ));
    }
    let r = run_inner(ctx, a, tsc);
    irq::disable();
    r
}

fn run_inner(ctx: &mut Ctx, a: &Args, tsc: Tsc) -> Result<()> {
    let arena = Arena::above_image(ctx.boot)?;
    let pci = Pci::new(ctx.boot, ctx.acpi.as_ref());
    let bdf = vblk::find(&pci, a.disk)?;
    if let Some(addr) = a.bar {
        crate::pci::move_bar(&pci, bdf, 0, addr)?;
    }
    let opts = Opts {
        queues: a.queues,
        depth: a.iodepth,
        buf_len: a.bs as u64,
        event_idx: a.event_idx,
        indirect: a.indirect,
        interrupts: !a.poll,
    };
    let mut dev = Blk::open(&pci, ctx.boot, &arena, tsc, bdf, &opts)?;
    if a.bad_head {
        report_needs_reset(bdf, dev.publish_bad_head()?)?;
        drop(dev);
        // Opening resets the device, as a driver answers DEVICE_NEEDS_RESET.
        dev = Blk::open(&pci, ctx.boot, &arena, tsc, bdf, &opts)?;
    }
    let info = dev.info;
    let disk_bytes = info.capacity.saturating_mul(512);
    let bsz = info.blk_size as u64;
    if !(a.bs as u64).is_multiple_of(bsz) || !a.offset.is_multiple_of(bsz) {
        return Err(err!(
            "blk: bs {} and offset {} must be multiples of blk_size {}",
            a.bs,
            a.offset,
            bsz
        ));
    }
    if a.offset >= disk_bytes {
        return Err(err!(
            "blk: offset {} is past the disk end ({} bytes)",
            a.offset,
            disk_bytes
        ));
    }
    let size = a.size.unwrap_or(disk_bytes - a.offset);
    if a.offset + size > disk_bytes || size < a.bs as u64 {
        return Err(err!(
            "blk: region offset {} size {} does not fit the disk ({} bytes) or is below bs {}",
            a.offset,
            size,
            disk_bytes,
            a.bs
        ));
    }
    let region = Region {
        first_sector: a.offset / 512,
        blocks: size / a.bs as u64,
        bs_sectors: a.bs as u64 / 512,
    };
    // Serial number (GET_ID, 20 bytes; optional for the device).
    let (id_status, id_slot) = dev.sync(T_GET_ID, 0, 20)?;
    let mut serial = [0u8; 20];
    for (i, w) in dev.buf(id_slot).iter().take(3).enumerate() {
        for (j, b) in w.to_le_bytes().iter().enumerate() {
            if let Some(s) = serial.get_mut(i * 8 + j) {
                *s = *b;
            }
        }
    }
    let serial_len = serial.iter().position(|&b| b == 0).unwrap_or(20);
    let written = if a.verify && a.rw.writes() {
        arena.slice::<u64>(region.blocks.div_ceil(64) as usize, "verify bitmap")?
    } else {
        &mut []
    };
    let buckets = arena.slice::<u64>(hist::BUCKETS, "latency histogram")?;
    // 15 KiB of buckets each, from the arena like the rest of the driver memory.
    let (read_buckets, write_buckets): (&mut [u64], &mut [u64]) = if a.report == Report::Fio {
        (
            arena.slice::<u64>(hist::BUCKETS, "read latency histogram")?,
            arena.slice::<u64>(hist::BUCKETS, "write latency histogram")?,
        )
    } else {
        (&mut [], &mut [])
    };
    let dirs = [Hist::new(read_buckets), Hist::new(write_buckets)];
    if a.report == Report::Fio {
        fio::start(&a.job_name());
    }
    let r = timed(&mut dev, a, tsc, region, written, buckets, dirs);
    drop(dev);
    let r = r.map(|m| Outcome {
        a,
        info,
        access: pci.kind(),
        serial: (id_status == S_OK).then_some(&serial[..serial_len]),
        size,
        st: m.st,
        hist: m.hist,
        dirs: m.dirs,
        run: m.run,
    });
    match (a.report, r) {
        (Report::Probe, Ok(o)) => o.probe_line(),
        (Report::Fio, Ok(o)) => fio::report(&o),
        (Report::Probe, Err(e)) => Err(e),
        (Report::Fio, Err(e)) => {
            fio::exit(1);
            Err(e)
        }
    }
}

/// Timed-phase figures besides the counters.
pub struct Run {
    /// First submission to last completion.
    pub elapsed_ns: u64,
    pub kicks: u64,
    pub interrupts: u64,
    /// FLUSH status (flush=1).
    pub flush: Option<u8>,
}

/// What `timed` measured.
struct Measured<'h> {
    st: Stats,
    /// All timed-phase requests.
    hist: Hist<'h>,
    /// Timed-phase reads and writes.
    dirs: [Hist<'h>; 2],
    run: Run,
}

/// The timed phase, the flush and the read-back.
fn timed<'h>(
    dev: &mut Blk,
    a: &Args,
    tsc: Tsc,
    region: Region,
    written: &'h mut [u64],
    buckets: &'h mut [u64],
    dirs: [Hist<'h>; 2],
) -> Result<Measured<'h>> {
    let mut t = Timed {
        a: *a,
        r: region,
        rng: a.seed,
        seq: 0,
        issued: 0,
        end: a
            .runtime_s
            .map(|s| rdtsc().wrapping_add(tsc.khz * 1000 * s)),
        written,
        st: Stats::default(),
        hist: Hist::new(buckets),
        dirs,
        tsc,
    };
    let nq = dev.queues() as u8;
    let irq0 = irq::count_range(vblk::VECTOR_BASE, nq);
    let kicks0 = dev.kicks();
    let (start, end) = phase(dev, &mut t, a.bs)?;
    let kicks = dev.kicks() - kicks0;
    let interrupts = irq::count_range(vblk::VECTOR_BASE, nq) - irq0;
    let flush = if a.flush {
        Some(dev.sync(T_FLUSH, 0, 0)?.0)
    } else {
        None
    };
    let Timed {
        written,
        mut st,
        hist,
        dirs,
        ..
    } = t;
    if a.verify && a.rw.writes() {
        let mut rb = Readback {
            r: region,
            written,
            next_block: 0,
            st: &mut st,
        };
        phase(dev, &mut rb, a.bs)?;
    }
    let run = Run {
        elapsed_ns: ns(tsc, end.wrapping_sub(start)).max(1),
        kicks,
        interrupts,
        flush,
    };
    Ok(Measured {
        st,
        hist,
        dirs,
        run,
    })
}

/// Everything the result reports.
pub struct Outcome<'a> {
    pub a: &'a Args,
    pub info: vblk::Info,
    /// Config-space access (`ecam`, `cf8`).
    pub access: &'static str,
    /// GET_ID up to the first NUL, None if the device refused it.
    pub serial: Option<&'a [u8]>,
    /// Region size in bytes.
    pub size: u64,
    pub st: Stats,
    /// All timed-phase requests.
    pub hist: Hist<'a>,
    /// Timed-phase reads and writes (report=fio only).
    pub dirs: [Hist<'a>; 2],
    pub run: Run,
}

impl Outcome<'_> {
    /// Errors among the timed-phase requests.
    pub fn errors(&self) -> u64 {
        self.st.ioerr + self.st.unsupp + self.st.other
    }

    /// Bad sectors found by verify.
    pub fn verify_errors(&self) -> u64 {
        self.st.bad_sectors
    }

    /// `"disk":0,...,"serial":...` (no leading comma).
    pub fn device_fields(&self, l: &mut Line) {
        let info = &self.info;
        l.raw("\"disk\":").num(self.a.disk as u64).raw(",\"pci\":");
        info.bdf.json(l);
        l.raw(",\"access\":\"").raw(self.access).raw("\"");
        l.raw(",\"device_features\":").hex(info.device_features);
        l.raw(",\"features\":").hex(info.features);
        l.raw(",\"capacity\":").num(info.capacity);
        l.raw(",\"blk_size\":").num(info.blk_size as u64);
        l.raw(",\"num_queues\":").num(info.num_queues as u64);
        l.raw(",\"queue_size\":").num(info.queue_size as u64);
        l.raw(",\"read_only\":").bool(info.read_only);
        l.raw(",\"serial\":");
        match self.serial {
            Some(s) => l.string(s),
            None => l.raw("null"),
        };
    }

    /// `"queues":1,...,"elapsed_ns":N` (no leading comma).
    pub fn run_fields(&self, l: &mut Line) {
        let (a, info, st) = (self.a, &self.info, &self.st);
        l.raw("\"queues\":").num(a.queues as u64);
        l.raw(",\"offset\":").num(a.offset);
        l.raw(",\"size\":").num(self.size);
        l.raw(",\"poll\":").bool(a.poll);
        l.raw(",\"msix\":").bool(info.msix);
        l.raw(",\"event_idx\":")
            .bool(info.features & crate::virtio::F_EVENT_IDX != 0);
        l.raw(",\"indirect\":").bool(info.indirect);
        l.raw(",\"ios\":").num(st.ios);
        l.raw(",\"errors\":").num(self.errors());
        l.raw(",\"error_status\":{\"ioerr\":").num(st.ioerr);
        l.raw(",\"unsupp\":").num(st.unsupp);
        l.raw(",\"other\":").num(st.other).raw("}");
        l.raw(",\"verify\":").bool(a.verify);
        l.raw(",\"verify_reads\":").num(st.verify_reads);
        l.raw(",\"verify_errors\":").num(st.bad_sectors);
        l.raw(",\"first_bad_sector\":").opt_num(st.first_bad);
        l.raw(",\"elapsed_ns\":").num(self.run.elapsed_ns);
    }

    /// `"kicks":N,"interrupts":N,"flush_status":...` (no leading comma).
    pub fn notify_fields(&self, l: &mut Line) {
        l.raw("\"kicks\":").num(self.run.kicks);
        l.raw(",\"interrupts\":").num(self.run.interrupts);
        l.raw(",\"flush_status\":");
        match self.run.flush {
            Some(s) => l.raw("\"").raw(status_name(s)).raw("\""),
            None => l.raw("null"),
        };
    }

    /// The `{"cmd":"blk",...}` line.
    fn probe_line(&self) -> Result<()> {
        let (a, st, hist) = (self.a, &self.st, &self.hist);
        let elapsed = self.run.elapsed_ns;
        let bytes = st.ios * a.bs as u64;
        let mut l = Line::new();
        l.raw("{\"cmd\":\"blk\",");
        self.device_fields(&mut l);
        l.raw(",\"rw\":\"").raw(a.rw.name()).raw("\"");
        l.raw(",\"bs\":").num(a.bs as u64);
        l.raw(",\"iodepth\":").num(a.iodepth as u64);
        l.raw(",");
        self.run_fields(&mut l);
        l.raw(",\"iops\":")
            .num((st.ios as u128 * 1_000_000_000 / elapsed as u128) as u64);
        l.raw(",\"mbps\":")
            .dec3((bytes as u128 * 1_000_000 / elapsed as u128) as u64);
        l.raw(",\"lat_ns\":{\"min\":").num(hist.min);
        l.raw(",\"mean\":").num(hist.mean());
        for (name, pm) in [("p50", 500), ("p90", 900), ("p99", 990), ("p999", 999)] {
            l.raw(",\"").raw(name).raw("\":").num(hist.percentile(pm));
        }
        l.raw(",\"max\":").num(hist.max).raw("}");
        l.raw(",");
        self.notify_fields(&mut l);
        l.raw("}");
        l.finish()
    }
}
