//! Pieces shared by both benchmark modes: the workload, the offset generator, the stop rule,
//! latency percentiles, per-thread CPU time and a tiny JSON writer.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::BenchError;

/// Alignment of buffers and offsets for `O_DIRECT`.
pub const ALIGN: usize = 4096;

/// Access pattern, named like fio's `--rw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rw {
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Sequential reads (wrapping at the end of the file).
    Read,
    /// Sequential writes (wrapping at the end of the file).
    Write,
}

impl Rw {
    /// Whether requests write to the file.
    pub fn is_write(self) -> bool {
        matches!(self, Rw::Randwrite | Rw::Write)
    }

    /// The fio-style name.
    pub fn name(self) -> &'static str {
        match self {
            Rw::Randread => "randread",
            Rw::Randwrite => "randwrite",
            Rw::Read => "read",
            Rw::Write => "write",
        }
    }
}

/// What to run, common to both modes.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Access pattern.
    pub rw: Rw,
    /// Request size in bytes (a multiple of 512).
    pub bs: u32,
    /// Requests kept in flight.
    pub iodepth: u32,
    /// Stop issuing after this long.
    pub duration: Duration,
    /// Stop issuing after this many requests, if given.
    pub ios: Option<u64>,
    /// Seed of the offset generator.
    pub seed: u64,
}

impl Workload {
    /// Bytes between two request buffers (the request size rounded up to [`ALIGN`]).
    pub fn stride(&self) -> usize {
        (self.bs as usize).div_ceil(ALIGN) * ALIGN
    }
}

/// Rounds `v` up to a multiple of [`ALIGN`].
pub fn align_up(v: u64) -> u64 {
    v.div_ceil(ALIGN as u64) * ALIGN as u64
}

/// Size of an open file or block device.
pub fn file_size(f: &File, path: &Path) -> Result<u64, BenchError> {
    let mut f = f;
    f.seek(SeekFrom::End(0)).map_err(|source| BenchError::Io {
        what: format!("size of {}", path.display()),
        cause: source,
    })
}

/// Request offsets: uniformly random `bs`-aligned blocks, or sequential blocks that wrap.
pub struct Offsets {
    state: u64,
    blocks: u64,
    bs: u64,
    next_seq: u64,
    random: bool,
}

impl Offsets {
    /// Offsets within a file of `size` bytes.
    pub fn new(size: u64, w: &Workload) -> Result<Self, BenchError> {
        let bs = u64::from(w.bs);
        let blocks = size / bs;
        if blocks == 0 {
            return Err(BenchError::Usage(format!(
                "the file ({size} bytes) is smaller than one {bs}-byte request"
            )));
        }
        Ok(Offsets {
            state: w.seed,
            blocks,
            bs,
            next_seq: 0,
            random: matches!(w.rw, Rw::Randread | Rw::Randwrite),
        })
    }

    /// The next offset in bytes.
    pub fn next_offset(&mut self) -> u64 {
        let block = if self.random {
            // splitmix64, mapped onto [0, blocks) by a 128-bit multiply.
            self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((u128::from(z) * u128::from(self.blocks)) >> 64) as u64
        } else {
            let b = self.next_seq;
            self.next_seq = (self.next_seq + 1) % self.blocks;
            b
        };
        block * self.bs
    }
}

/// When to stop issuing requests.
pub struct StopRule {
    end: Instant,
    ios: Option<u64>,
}

impl StopRule {
    /// Starts the clock now.
    pub fn start(w: &Workload) -> (Instant, Self) {
        let now = Instant::now();
        (
            now,
            StopRule {
                end: now + w.duration,
                ios: w.ios,
            },
        )
    }

    /// Whether request number `issued` (0-based) may still be issued at `now`.
    pub fn more(&self, issued: u64, now: Instant) -> bool {
        now < self.end && self.ios.is_none_or(|n| issued < n)
    }
}

/// Collected per-request latencies in nanoseconds.
#[derive(Default)]
pub struct Latencies(Vec<u64>);

/// Latency percentiles in nanoseconds.
pub struct LatSummary {
    /// Mean.
    pub mean: u64,
    /// Smallest.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Latencies {
    /// Room for about `n` samples.
    pub fn with_capacity(n: usize) -> Self {
        Latencies(Vec::with_capacity(n))
    }

    /// Records the latency of a request issued at `since` and completed at `now`.
    pub fn record(&mut self, since: Instant, now: Instant) {
        let ns = now.saturating_duration_since(since).as_nanos();
        self.0.push(u64::try_from(ns).unwrap_or(u64::MAX));
    }

    /// Percentiles (all zero without samples).
    pub fn summary(mut self) -> LatSummary {
        self.0.sort_unstable();
        let v = &self.0;
        let pct = |p: f64| -> u64 {
            if v.is_empty() {
                return 0;
            }
            let i = ((v.len() as f64 - 1.0) * p).round() as usize;
            v[i.min(v.len() - 1)]
        };
        let sum: u128 = v.iter().map(|&x| u128::from(x)).sum();
        let mean = if v.is_empty() {
            0
        } else {
            u64::try_from(sum / v.len() as u128).unwrap_or(u64::MAX)
        };
        LatSummary {
            mean,
            min: v.first().copied().unwrap_or(0),
            p50: pct(0.50),
            p90: pct(0.90),
            p99: pct(0.99),
            p999: pct(0.999),
            max: v.last().copied().unwrap_or(0),
        }
    }
}

impl LatSummary {
    /// The summary as a JSON object.
    pub fn json(&self) -> String {
        let mut j = Json::new();
        j.u64("mean", self.mean)
            .u64("min", self.min)
            .u64("p50", self.p50)
            .u64("p90", self.p90)
            .u64("p99", self.p99)
            .u64("p999", self.p999)
            .u64("max", self.max);
        j.finish()
    }

    /// One human-readable line, in microseconds.
    pub fn human(&self) -> String {
        let us = |ns: u64| ns as f64 / 1000.0;
        format!(
            "latency us: mean {:.1} min {:.1} p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
            us(self.mean),
            us(self.min),
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.p999),
            us(self.max)
        )
    }
}

/// CPU time used so far by thread `tid` of this process: the scheduler's sum, as Keel's own
/// stats read it ([`vmm::stats::threads::on_cpu_ns`]).
pub fn thread_cpu(tid: i32) -> Option<Duration> {
    vmm::stats::threads::on_cpu_ns(std::path::Path::new("/proc/self"), tid)
        .map(Duration::from_nanos)
}

/// The calling thread's Linux thread ID.
pub fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// CPU use of a thread over a run, in percent of one CPU.
pub fn cpu_pct(before: Option<Duration>, after: Option<Duration>, elapsed: Duration) -> f64 {
    match (before, after) {
        (Some(b), Some(a)) if !elapsed.is_zero() => {
            100.0 * a.saturating_sub(b).as_secs_f64() / elapsed.as_secs_f64()
        }
        _ => -1.0,
    }
}

/// A flat JSON object writer (keys and string values are plain ASCII here).
pub struct Json(String);

impl Json {
    /// An empty object.
    pub fn new() -> Self {
        Json(String::from("{"))
    }

    fn key(&mut self, k: &str) -> &mut Self {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push('"');
        self.0.push_str(k);
        self.0.push_str("\":");
        self
    }

    /// Adds a string field.
    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        self.0.push('"');
        for c in v.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                c if (c as u32) < 0x20 => self.0.push_str(&format!("\\u{:04x}", c as u32)),
                c => self.0.push(c),
            }
        }
        self.0.push('"');
        self
    }

    /// Adds an integer field.
    pub fn u64(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k);
        self.0.push_str(&v.to_string());
        self
    }

    /// Adds a number field with a fixed number of decimals.
    pub fn f64(&mut self, k: &str, v: f64, decimals: usize) -> &mut Self {
        self.key(k);
        if v.is_finite() {
            self.0.push_str(&format!("{v:.decimals$}"));
        } else {
            self.0.push_str("null");
        }
        self
    }

    /// Adds a field whose value is already JSON.
    pub fn raw(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        self.0.push_str(v);
        self
    }

    /// The finished object.
    pub fn finish(&mut self) -> String {
        let mut s = std::mem::take(&mut self.0);
        s.push('}');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(rw: Rw) -> Workload {
        Workload {
            rw,
            bs: 4096,
            iodepth: 4,
            duration: Duration::from_secs(1),
            ios: Some(3),
            seed: 7,
        }
    }

    #[test]
    fn offsets_are_aligned_and_in_range() {
        let w = workload(Rw::Randread);
        let mut o = Offsets::new(10 * 4096 + 100, &w).unwrap();
        for _ in 0..10_000 {
            let off = o.next_offset();
            assert_eq!(off % 4096, 0);
            assert!(off < 10 * 4096);
        }
        let mut s = Offsets::new(3 * 4096, &workload(Rw::Read)).unwrap();
        let seq: Vec<u64> = (0..4).map(|_| s.next_offset()).collect();
        assert_eq!(seq, [0, 4096, 8192, 0]);
        assert!(Offsets::new(100, &w).is_err());
    }

    #[test]
    fn stop_rule_and_percentiles() {
        let (t0, stop) = StopRule::start(&workload(Rw::Read));
        assert!(stop.more(2, t0));
        assert!(!stop.more(3, t0));
        assert!(!stop.more(0, t0 + Duration::from_secs(2)));
        let mut l = Latencies::with_capacity(100);
        for i in 1..=100u64 {
            l.record(t0, t0 + Duration::from_nanos(i * 10));
        }
        let s = l.summary();
        assert_eq!((s.min, s.max, s.p50), (10, 1000, 510));
        assert_eq!(s.mean, 505);
        let mut j = Json::new();
        j.str("a", "x\"y").u64("b", 2).f64("c", 0.5, 2);
        assert_eq!(j.finish(), r#"{"a":"x\"y","b":2,"c":0.50}"#);
    }
}
