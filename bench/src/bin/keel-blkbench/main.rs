//! `keel-blkbench`: storage benchmark building blocks for `make bench`.
//!
//! * `raw`: the host's ceiling — one thread, one io_uring, `--iodepth` requests kept in flight
//!   on the file (`O_DIRECT` unless `--buffered`), random or sequential aligned offsets.
//! * `device`: Keel's virtio-blk dataplane without a vCPU — a `Block` device over the same
//!   file, served by one real I/O thread, driven through a split virtqueue by this thread
//!   acting as a polling guest driver (EVENT_IDX, kicks only when `avail_event` asks, no
//!   interrupts wanted).
//!
//! Both print IOPS and latency percentiles, a human summary by default or one JSON line with
//! `--json` (what `resources/bench/blk.py` reads). The benchmark never fails because a figure
//! is low; it exits non-zero only when it cannot run (bad arguments, I/O errors, a request
//! the device completed with an error).

mod common;
mod device;
mod raw;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use common::{Rw, Workload};

/// Why a benchmark could not run. Each renders as one line.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Invalid arguments or an unusable file.
    #[error("{0}")]
    Usage(String),
    /// A system call failed.
    #[error("{what}: {cause}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause (rendered in the message).
        cause: std::io::Error,
    },
    /// Setting up the device, its memory or its I/O thread failed.
    #[error("cannot {what}: {detail}")]
    Setup {
        /// What was being done.
        what: &'static str,
        /// The cause with its sources.
        detail: String,
    },
    /// A request failed or the device misbehaved.
    #[error("{0}")]
    Request(String),
}

/// An error and its sources on one line, joined by ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.ends_with(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

#[derive(Parser)]
#[command(
    name = "keel-blkbench",
    about = "Storage benchmark: raw io_uring on the host, or Keel's virtio-blk device without a vCPU"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// One thread, one io_uring, --iodepth requests in flight on the file.
    Raw(Common),
    /// Keel's virtio-blk device on one I/O thread, driven by a polling driver on this thread.
    Device {
        #[command(flatten)]
        common: Common,
        /// Virtqueue size (a power of two, at least 3 x iodepth) [default: max(256, 3 x
        /// iodepth rounded up)].
        #[arg(long)]
        queue_size: Option<u16>,
        /// When to write the kick eventfd.
        #[arg(long, value_enum, default_value = "event")]
        kick: device::KickMode,
        /// Which I/O engine the device uses.
        #[arg(long, value_enum, default_value = "auto")]
        engine: device::EngineArg,
    },
}

#[derive(clap::Args)]
struct Common {
    /// Backing file or block device (read-only access for read workloads).
    #[arg(long)]
    file: PathBuf,
    /// Request size: bytes, or with a k/m suffix; a multiple of 512.
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    bs: u32,
    /// Requests kept in flight.
    #[arg(long, default_value_t = 32)]
    iodepth: u32,
    /// Stop issuing requests after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Stop issuing requests after this many (whichever comes first with --seconds).
    #[arg(long)]
    ios: Option<u64>,
    /// Access pattern.
    #[arg(long, value_enum, default_value = "randread")]
    rw: Rw,
    /// Seed of the random offsets.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use the page cache instead of O_DIRECT (device: cache=writeback instead of cache=none).
    #[arg(long)]
    buffered: bool,
    /// Print one JSON line instead of a summary.
    #[arg(long)]
    json: bool,
}

fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim().to_ascii_lowercase();
    let (digits, mult) = match t.strip_suffix(['k', 'm']) {
        Some(d) if t.ends_with('k') => (d, 1024u64),
        Some(d) => (d, 1024 * 1024),
        None => (t.as_str(), 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 4096, 4k, 1m)"))?;
    let bytes = n.saturating_mul(mult);
    if bytes == 0 || bytes % 512 != 0 || bytes > 16 * 1024 * 1024 {
        return Err(format!(
            "'{s}' must be a non-zero multiple of 512 bytes, at most 16m"
        ));
    }
    u32::try_from(bytes).map_err(|_| format!("'{s}' is too large"))
}

impl Common {
    fn workload(&self) -> Result<Workload, BenchError> {
        if !(1..=4096).contains(&self.iodepth) {
            return Err(BenchError::Usage(format!(
                "--iodepth {} must be between 1 and 4096",
                self.iodepth
            )));
        }
        if !(self.seconds.is_finite() && self.seconds > 0.0 && self.seconds <= 86400.0) {
            return Err(BenchError::Usage(format!(
                "--seconds {} must be between 0 and 86400",
                self.seconds
            )));
        }
        if self.ios == Some(0) {
            return Err(BenchError::Usage("--ios must be at least 1".into()));
        }
        Ok(Workload {
            rw: self.rw,
            bs: self.bs,
            iodepth: self.iodepth,
            duration: Duration::from_secs_f64(self.seconds),
            ios: self.ios,
            seed: self.seed,
        })
    }

    fn header(&self, what: &str, w: &Workload) -> String {
        format!(
            "{what}: {} bs={} iodepth={} {} file={}",
            w.rw.name(),
            w.bs,
            w.iodepth,
            if self.buffered {
                "buffered"
            } else {
                "O_DIRECT"
            },
            self.file.display()
        )
    }
}

fn run(cli: Cli) -> Result<(), BenchError> {
    match cli.mode {
        Mode::Raw(c) => {
            let w = c.workload()?;
            let r = raw::run(&c.file, &w, !c.buffered)?;
            if c.json {
                println!("{}", r.json(&w, !c.buffered));
            } else {
                println!("{}", c.header("raw io_uring", &w));
                println!(
                    "  {:.0} IOPS, {:.1} MiB/s ({} I/Os in {:.2} s), thread CPU {:.0}%",
                    r.iops(),
                    r.iops() * f64::from(w.bs) / 1048576.0,
                    r.ios,
                    r.elapsed.as_secs_f64(),
                    r.cpu_pct
                );
                println!("  {}", r.lat.human());
            }
        }
        Mode::Device {
            common: c,
            queue_size,
            kick,
            engine,
        } => {
            let w = c.workload()?;
            let r = device::run(&c.file, &w, !c.buffered, queue_size, kick, engine)?;
            if c.json {
                println!("{}", r.json(&w, !c.buffered));
            } else {
                println!("{}", c.header("keel virtio-blk device", &w));
                println!(
                    "  {:.0} IOPS, {:.1} MiB/s ({} I/Os in {:.2} s), {} engine, queue size {}",
                    r.iops(),
                    r.iops() * f64::from(w.bs) / 1048576.0,
                    r.ios,
                    r.elapsed.as_secs_f64(),
                    r.engine,
                    r.queue_size
                );
                println!("  {}", r.lat.human());
                println!(
                    "  kicks {} ({:.4}/IO), interrupts {} ({:.4}/IO), I/O thread CPU {:.0}%",
                    r.kicks,
                    r.per_io(r.kicks),
                    r.interrupts,
                    r.per_io(r.interrupts),
                    r.iothread_cpu_pct
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-blkbench: error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert!(parse_size("100").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("32m").is_err());
        assert!(parse_size("x").is_err());
    }
}
