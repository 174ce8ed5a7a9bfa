//! Reading a benchmark guest's serial console: the marker lines its init (or the probe's
//! `blk ... report=fio`) prints, fio's JSON documents between them, and the figures the
//! harness reports (IOPS, bandwidth, latency percentiles per direction).
//!
//! The console protocol, one marker per line:
//! - `KEEL-FIO-START job=NAME`: fio is about to start (the harness starts its counter window);
//! - `KEEL-FIO-JSON-BEGIN`, fio's `--output-format=json` document, `KEEL-FIO-JSON-END`;
//! - `KEEL-FIO-EXIT rc=N`: fio's exit status;
//! - `KEEL-FIO-ERROR: TEXT`: the guest could not run the job;
//! - `KEEL-FIO-STDERR: TEXT`: a line fio wrote on stderr;
//! - `KEEL-FIO-IRQS NAME=COUNT ...`: the guest's interrupts over fio's run ([`super::guest_irqs`]).
//!
//! Jobs inside one document ran at the same time; documents ran one after another (the probe
//! prints one per disk and job).

use serde_json::Value;

use super::guest_irqs::{self, IrqCount, IRQS};

/// Marker before fio starts.
pub const START: &str = "KEEL-FIO-START";
/// Marker before the JSON document.
pub const JSON_BEGIN: &str = "KEEL-FIO-JSON-BEGIN";
/// Marker after the JSON document.
pub const JSON_END: &str = "KEEL-FIO-JSON-END";
/// Prefix of fio's exit status line.
pub const EXIT: &str = "KEEL-FIO-EXIT rc=";
/// Prefix of a guest-side failure line.
pub const ERROR: &str = "KEEL-FIO-ERROR:";
/// Prefix of a line of fio's stderr.
pub const STDERR: &str = "KEEL-FIO-STDERR:";
/// Largest document accepted.
const MAX_DOCUMENT_BYTES: usize = 16 << 20;

/// What is wrong with the console output.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReportError {
    /// A BEGIN without END.
    #[error("fio's JSON document {0} has no {JSON_END} line (guest stopped while printing?)")]
    Unterminated(usize),
    /// Too big.
    #[error("fio's JSON document {0} is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooBig(usize),
    /// Not JSON.
    #[error("fio's JSON document {index} does not parse: {reason}")]
    BadJson {
        /// 0-based document number.
        index: usize,
        /// serde_json's message.
        reason: String,
    },
    /// JSON, but not fio's shape.
    #[error("fio's JSON document {index}: {what}")]
    BadShape {
        /// 0-based document number.
        index: usize,
        /// What is missing or wrong.
        what: String,
    },
}

/// Everything the harness read from one console.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Console {
    /// START markers seen.
    pub starts: usize,
    /// The documents, parsed.
    pub documents: Vec<Value>,
    /// fio exit statuses, in order.
    pub exit_codes: Vec<i64>,
    /// Guest-side failures.
    pub errors: Vec<String>,
    /// fio's stderr lines.
    pub stderr: Vec<String>,
    /// The guest's interrupts over fio's run, by source (the last `KEEL-FIO-IRQS` line).
    pub guest_irqs: Vec<IrqCount>,
}

/// Scans console text (CR/LF line ends, other output around the markers).
pub fn scan(text: &str) -> Result<Console, ReportError> {
    let mut out = Console::default();
    let mut doc: Option<String> = None;
    for raw in text.split('\n') {
        let line = raw.trim_end_matches('\r');
        if let Some(body) = doc.as_mut() {
            if line.trim() == JSON_END {
                let index = out.documents.len();
                let value: Value =
                    serde_json::from_str(body).map_err(|e| ReportError::BadJson {
                        index,
                        reason: e.to_string(),
                    })?;
                out.documents.push(value);
                doc = None;
            } else {
                if body.len() + line.len() > MAX_DOCUMENT_BYTES {
                    return Err(ReportError::TooBig(out.documents.len()));
                }
                body.push_str(line);
                body.push('\n');
            }
            continue;
        }
        let trimmed = line.trim();
        if trimmed == JSON_BEGIN {
            doc = Some(String::new());
        } else if trimmed.starts_with(START) {
            out.starts += 1;
        } else if let Some(rc) = trimmed.strip_prefix(EXIT) {
            out.exit_codes.push(rc.trim().parse().unwrap_or(-1));
        } else if let Some(e) = trimmed.strip_prefix(ERROR) {
            out.errors.push(e.trim().to_string());
        } else if let Some(e) = trimmed.strip_prefix(STDERR) {
            out.stderr.push(e.trim().to_string());
        } else if let Some(counts) = trimmed.strip_prefix(IRQS) {
            if counts.is_empty() || counts.starts_with(' ') {
                out.guest_irqs = guest_irqs::parse(counts);
            }
        }
    }
    if doc.is_some() {
        return Err(ReportError::Unterminated(out.documents.len()));
    }
    Ok(out)
}

/// One direction (read or write) of one job.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Direction {
    /// Completed I/Os.
    pub ios: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// I/Os per second.
    pub iops: f64,
    /// Bytes per second.
    pub bw_bytes: f64,
    /// Time the direction ran, in ms.
    pub runtime_ms: u64,
    /// Mean completion latency (ns).
    pub lat_mean_ns: f64,
    /// Completion latency percentiles (ns): 50, 99, 99.9.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
}

/// One job of one document.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    /// Job name.
    pub name: String,
    /// fio's error (an errno), 0 when the job succeeded.
    pub error: i64,
    /// Reads.
    pub read: Direction,
    /// Writes.
    pub write: Direction,
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key)?.as_f64()
}

fn percentile(lat: &Value, p: &str) -> u64 {
    lat.get("percentile")
        .and_then(|m| m.get(p))
        .and_then(Value::as_f64)
        .unwrap_or(0.0) as u64
}

fn direction(job: &Value, key: &str, index: usize) -> Result<Direction, ReportError> {
    let shape = |what: String| ReportError::BadShape { index, what };
    let d = job
        .get(key)
        .ok_or_else(|| shape(format!("a job has no \"{key}\" object")))?;
    let need = |field: &str| {
        num(d, field).ok_or_else(|| shape(format!("\"{key}\" has no number \"{field}\"")))
    };
    let bytes = need("io_bytes")?;
    let ios = num(d, "total_ios").unwrap_or(0.0);
    // Latency: completion latency as fio reports it; lat_ns when clat is off.
    let lat = d
        .get("clat_ns")
        .filter(|c| c.get("percentile").is_some())
        .or_else(|| d.get("lat_ns"))
        .cloned()
        .unwrap_or(Value::Null);
    Ok(Direction {
        ios: ios as u64,
        bytes: bytes as u64,
        iops: need("iops")?,
        bw_bytes: num(d, "bw_bytes").unwrap_or_else(|| num(d, "bw").unwrap_or(0.0) * 1024.0),
        runtime_ms: num(d, "runtime").unwrap_or(0.0) as u64,
        lat_mean_ns: num(&lat, "mean").unwrap_or(0.0),
        p50_ns: percentile(&lat, "50.000000"),
        p99_ns: percentile(&lat, "99.000000"),
        p999_ns: percentile(&lat, "99.900000"),
    })
}

/// The jobs of document `index`.
pub fn jobs(document: &Value, index: usize) -> Result<Vec<JobResult>, ReportError> {
    let shape = |what: &str| ReportError::BadShape {
        index,
        what: what.to_string(),
    };
    let list = document
        .get("jobs")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("no \"jobs\" array"))?;
    if list.is_empty() {
        return Err(shape("the \"jobs\" array is empty"));
    }
    list.iter()
        .map(|job| {
            Ok(JobResult {
                name: job
                    .get("jobname")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string(),
                error: job.get("error").and_then(Value::as_i64).unwrap_or(0),
                read: direction(job, "read", index)?,
                write: direction(job, "write", index)?,
            })
        })
        .collect()
}

/// A direction over the whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DirectionTotal {
    /// Completed I/Os.
    pub ios: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// I/Os per second over the run.
    pub iops: f64,
    /// Bytes per second over the run.
    pub bw_bytes: f64,
    /// Mean latency, weighted by I/Os.
    pub lat_mean_ns: f64,
    /// The worst job's percentiles (fio's group_reporting merges them exactly; across
    /// separate jobs the harness shows the slowest).
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
}

/// The run's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Jobs over all documents.
    pub jobs: Vec<JobResult>,
    /// Reads.
    pub read: DirectionTotal,
    /// Writes.
    pub write: DirectionTotal,
    /// Jobs that reported an error.
    pub failed_jobs: usize,
}

impl Summary {
    /// I/Os of both directions.
    pub fn total_ios(&self) -> u64 {
        self.read.ios.saturating_add(self.write.ios)
    }
}

fn total(docs: &[Vec<JobResult>], pick: fn(&JobResult) -> &Direction) -> DirectionTotal {
    let mut t = DirectionTotal::default();
    let mut elapsed_ms = 0u64;
    let mut lat_weight = 0.0;
    for doc in docs {
        // Jobs of one document ran together: their time is the longest one.
        // The numbers come from the guest: saturate rather than overflow.
        let longest = doc.iter().map(|j| pick(j).runtime_ms).max().unwrap_or(0);
        elapsed_ms = elapsed_ms.saturating_add(longest);
        for d in doc.iter().map(pick) {
            t.ios = t.ios.saturating_add(d.ios);
            t.bytes = t.bytes.saturating_add(d.bytes);
            lat_weight += d.lat_mean_ns * d.ios as f64;
            t.p50_ns = t.p50_ns.max(d.p50_ns);
            t.p99_ns = t.p99_ns.max(d.p99_ns);
            t.p999_ns = t.p999_ns.max(d.p999_ns);
        }
    }
    if docs.len() == 1 {
        // One run: fio's own rates, summed over its jobs.
        t.iops = docs[0].iter().map(|j| pick(j).iops).sum();
        t.bw_bytes = docs[0].iter().map(|j| pick(j).bw_bytes).sum();
    } else if elapsed_ms > 0 {
        t.iops = t.ios as f64 * 1000.0 / elapsed_ms as f64;
        t.bw_bytes = t.bytes as f64 * 1000.0 / elapsed_ms as f64;
    }
    if t.ios > 0 {
        t.lat_mean_ns = lat_weight / t.ios as f64;
    }
    t
}

/// Sums the documents of a console into the run's figures.
pub fn summarize(console: &Console) -> Result<Summary, ReportError> {
    let docs = console
        .documents
        .iter()
        .enumerate()
        .map(|(i, d)| jobs(d, i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Summary {
        read: total(&docs, |j| &j.read),
        write: total(&docs, |j| &j.write),
        failed_jobs: docs.iter().flatten().filter(|j| j.error != 0).count(),
        jobs: docs.into_iter().flatten().collect(),
    })
}

#[cfg(test)]
mod tests;
