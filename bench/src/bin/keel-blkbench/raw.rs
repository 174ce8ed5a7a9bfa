//! Mode `raw`: the host's own ceiling. One thread, one io_uring, `iodepth` reads or writes
//! kept in flight against the file (with `O_DIRECT` unless told otherwise), each completion
//! immediately replaced by a request at a new offset.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use crate::common::{
    cpu_pct, file_size, gettid, thread_cpu, Json, LatSummary, Latencies, Offsets, StopRule,
    Workload, ALIGN,
};
use crate::BenchError;

/// What a raw run measured.
pub struct RawReport {
    /// Requests completed.
    pub ios: u64,
    /// Time from the first submission to the last completion.
    pub elapsed: Duration,
    /// Per-request latency.
    pub lat: LatSummary,
    /// CPU use of the benchmark thread, percent of one CPU.
    pub cpu_pct: f64,
}

impl RawReport {
    /// Completed requests per second.
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The report as one JSON line.
    pub fn json(&self, w: &Workload, direct: bool) -> String {
        let mut j = Json::new();
        j.str("mode", "raw")
            .str("rw", w.rw.name())
            .u64("bs", u64::from(w.bs))
            .u64("iodepth", u64::from(w.iodepth))
            .u64("direct", u64::from(direct))
            .u64("ios", self.ios)
            .f64("seconds", self.elapsed.as_secs_f64(), 3)
            .f64("iops", self.iops(), 0)
            .f64("mib_s", self.iops() * f64::from(w.bs) / 1048576.0, 1)
            .raw("lat_ns", &self.lat.json())
            .f64("cpu_pct", self.cpu_pct, 1);
        j.finish()
    }
}

/// The ring, the buffers it reads into or writes from, and the number of requests in flight.
/// Dropping it waits for the requests in flight, so the kernel never touches freed buffers.
struct Rig {
    ring: IoUring,
    buf: Vec<u8>,
    base: usize,
    in_flight: usize,
}

impl Drop for Rig {
    fn drop(&mut self) {
        while self.in_flight > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
            self.in_flight = self
                .in_flight
                .saturating_sub(self.ring.completion().count());
        }
    }
}

fn uring_error(what: &str) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Io {
        what: what.to_string(),
        cause: source,
    }
}

/// Runs the workload on `path`.
pub fn run(path: &Path, w: &Workload, direct: bool) -> Result<RawReport, BenchError> {
    let file: File = OpenOptions::new()
        .read(true)
        .write(w.rw.is_write())
        .custom_flags(libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 })
        .open(path)
        .map_err(|source| BenchError::Io {
            what: format!("open {}", path.display()),
            cause: source,
        })?;
    let size = file_size(&file, path)?;
    let mut offsets = Offsets::new(size, w)?;
    let qd = w.iodepth as usize;
    let stride = w.stride();
    let entries = w.iodepth.next_power_of_two();
    let ring = IoUring::new(entries).map_err(uring_error("create an io_uring"))?;
    let mut buf = vec![0u8; qd * stride + ALIGN];
    // Something other than zeroes for writes.
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ 0x5a;
    }
    let base = buf.as_ptr().align_offset(ALIGN);
    let mut rig = Rig {
        ring,
        buf,
        base,
        in_flight: 0,
    };
    let fd = types::Fd(file.as_raw_fd());

    let tid = gettid();
    let cpu_before = thread_cpu(tid);
    let (ios, elapsed, lat) = drive(&mut rig, fd, w, &mut offsets)?;
    let cpu = cpu_pct(cpu_before, thread_cpu(tid), elapsed);
    drop(rig);
    drop(file);
    Ok(RawReport {
        ios,
        elapsed,
        lat,
        cpu_pct: cpu,
    })
}

/// Keeps `iodepth` requests in flight until the stop rule says enough, reissuing each
/// buffer as its request completes; returns the requests done, the time from the first
/// request to the last completion, and the latencies.
fn drive(
    rig: &mut Rig,
    fd: types::Fd,
    w: &Workload,
    offsets: &mut Offsets,
) -> Result<(u64, Duration, LatSummary), BenchError> {
    let qd = w.iodepth as usize;
    let (start, stop) = StopRule::start(w);
    let mut issued_at = vec![start; qd];
    let mut lat = Latencies::with_capacity(1 << 20);
    let (mut issued, mut done) = (0u64, 0u64);
    let mut last_done = start;
    let mut reaped: Vec<(u64, i32)> = Vec::with_capacity(qd);
    for (slot, at) in issued_at.iter_mut().enumerate() {
        if !stop.more(issued, start) {
            break;
        }
        push(rig, fd, w, slot, offsets.next_offset())?;
        *at = Instant::now();
        issued += 1;
    }
    while rig.in_flight > 0 {
        match rig.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(uring_error("io_uring_enter")(e)),
        }
        reaped.clear();
        reaped.extend(rig.ring.completion().map(|c| (c.user_data(), c.result())));
        let now = Instant::now();
        for &(slot, result) in &reaped {
            rig.in_flight -= 1;
            let slot = usize::try_from(slot).unwrap_or(usize::MAX).min(qd - 1);
            check_result(w, result)?;
            lat.record(issued_at[slot], now);
            done += 1;
            last_done = now;
            if stop.more(issued, now) {
                push(rig, fd, w, slot, offsets.next_offset())?;
                issued_at[slot] = now;
                issued += 1;
            }
        }
    }
    Ok((
        done,
        last_done.saturating_duration_since(start),
        lat.summary(),
    ))
}

/// A completion's result: the whole block, or why not.
fn check_result(w: &Workload, result: i32) -> Result<(), BenchError> {
    if result < 0 {
        return Err(BenchError::Request(format!(
            "{} failed: {}",
            w.rw.name(),
            std::io::Error::from_raw_os_error(-result)
        )));
    }
    if result != w.bs as i32 {
        return Err(BenchError::Request(format!(
            "short {}: {result} of {} bytes",
            w.rw.name(),
            w.bs
        )));
    }
    Ok(())
}

/// Queues one request for buffer `slot` at `offset` (submitted by the next `submit_and_wait`).
fn push(
    rig: &mut Rig,
    fd: types::Fd,
    w: &Workload,
    slot: usize,
    offset: u64,
) -> Result<(), BenchError> {
    let start = rig.base + slot * w.stride();
    let Some(region) = rig.buf.get_mut(start..start + w.bs as usize) else {
        return Err(BenchError::Request(format!(
            "buffer slot {slot} out of range"
        )));
    };
    let ptr = region.as_mut_ptr();
    let entry = if w.rw.is_write() {
        opcode::Write::new(fd, ptr, w.bs).offset(offset).build()
    } else {
        opcode::Read::new(fd, ptr, w.bs).offset(offset).build()
    }
    .user_data(slot as u64);
    // SAFETY: the entry points at `bs` bytes of `rig.buf`, which is never resized and outlives
    // the request: `Rig` waits for every request in flight before its buffer is freed. Each
    // slot has at most one request in flight, so no two requests share a buffer.
    let pushed = unsafe { rig.ring.submission().push(&entry) };
    if pushed.is_err() {
        // The ring has at least `iodepth` entries and holds at most `iodepth` requests.
        return Err(BenchError::Request("io_uring submission queue full".into()));
    }
    rig.in_flight += 1;
    Ok(())
}
