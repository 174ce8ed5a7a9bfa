//! fio job files as the benchmark harness needs them: parsed (INI sections, `[global]`
//! options merged into the jobs that follow them), checked for the `/dev/vdX` disks they
//! name, rewritten (a shorter runtime), packed into a config disk for the Linux guest, and
//! translated into probe-guest `blk` commands.
//!
//! Only the subset of fio's syntax that job files for block devices use is accepted:
//! `[section]` headers, `key=value` and bare `key` lines, `;` and `#` comments. `include`
//! directives and `$VAR` expansion are refused rather than ignored.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Longest job file accepted (the Linux guest reads at most this much from its config disk).
pub const MAX_JOB_BYTES: usize = 64 * 1024;
/// fio's `${VAR}` expansion, which jobs here may not use (written with an escape so that the
/// brace in the text does not count as one in the code).
const VAR_EXPANSION: &str = "$\x7b";
/// Most sections accepted.
pub const MAX_SECTIONS: usize = 256;
/// First bytes of a config disk; the job text follows, NUL-padded to a sector multiple.
pub const CONFIG_DISK_MAGIC: &[u8; 16] = b"KEEL-FIO-JOB-V1\n";
/// Highest number of `/dev/vdX` disks a job may name (`vda`..`vdz`).
pub const MAX_JOB_DISKS: usize = 26;
/// Requests a probe `blk` run is limited to when the job gives neither runtime nor size.
const PROBE_MAX_IOS: u64 = 1_000_000_000;

/// What is wrong with a job file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    /// Bigger than [`MAX_JOB_BYTES`].
    #[error("job file is {0} bytes, at most {MAX_JOB_BYTES} are accepted")]
    TooBig(usize),
    /// Not UTF-8 or contains NUL.
    #[error("job file is not text (NUL byte or invalid UTF-8)")]
    NotText,
    /// A line that is neither a section, an option nor a comment.
    #[error("line {line}: cannot parse '{text}'")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// An option before the first section.
    #[error("line {0}: option outside a [section]")]
    OutsideSection(usize),
    /// Too many sections.
    #[error("more than {MAX_SECTIONS} sections")]
    TooManySections,
    /// A construct the harness does not support.
    #[error("line {line}: {what} is not supported by the harness")]
    Unsupported {
        /// 1-based line number.
        line: usize,
        /// What it is.
        what: &'static str,
    },
    /// No job sections.
    #[error("the job file has no job (only [global] sections or nothing)")]
    NoJobs,
    /// A job without a filename.
    #[error("job [{0}] has no filename= (the harness needs /dev/vdX disks)")]
    NoFilename(String),
    /// A filename that is not a whole virtio-blk disk.
    #[error("job [{job}]: filename '{file}' is not a disk /dev/vda../dev/vdz")]
    NotADisk {
        /// Job name.
        job: String,
        /// The filename.
        file: String,
    },
    /// A value the probe translation cannot read.
    #[error("job [{job}]: {key}={value} cannot be used: {reason}")]
    BadValue {
        /// Job name.
        job: String,
        /// Option name.
        key: String,
        /// Its value.
        value: String,
        /// Why.
        reason: &'static str,
    },
}

/// One `[section]` with its options in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Section name (`global` for global options).
    pub name: String,
    /// `(key, value)`; bare keys have an empty value.
    pub options: Vec<(String, String)>,
}

/// A job as fio runs it: the globals in force plus its own options, later ones winning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveJob {
    /// Job (section) name.
    pub name: String,
    /// Options by key.
    pub options: BTreeMap<String, String>,
}

impl EffectiveJob {
    /// An option's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.options.get(key).map(String::as_str)
    }

    /// Whether a boolean option is set (`key`, `key=1`, `key=true`).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("" | "1" | "true" | "yes" | "on"))
    }

    /// The disks of `filename=` (colon-separated) as indices (`vda` = 0).
    pub fn disks(&self) -> Result<Vec<usize>, JobError> {
        let files = self
            .get("filename")
            .filter(|f| !f.is_empty())
            .ok_or_else(|| JobError::NoFilename(self.name.clone()))?;
        files
            .split(':')
            .map(|file| {
                disk_index(file).ok_or_else(|| JobError::NotADisk {
                    job: self.name.clone(),
                    file: file.to_string(),
                })
            })
            .collect()
    }

    fn bad(&self, key: &str, reason: &'static str) -> JobError {
        JobError::BadValue {
            job: self.name.clone(),
            key: key.to_string(),
            value: self.get(key).unwrap_or_default().to_string(),
            reason,
        }
    }
}

/// `/dev/vdX` -> X - 'a'.
fn disk_index(file: &str) -> Option<usize> {
    match file.strip_prefix("/dev/vd")?.as_bytes() {
        [c @ b'a'..=b'z'] => Some((c - b'a') as usize),
        _ => None,
    }
}

/// A parsed job file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FioJob {
    /// Sections in file order.
    pub sections: Vec<Section>,
}

impl FioJob {
    /// Parses job-file text.
    pub fn parse(text: &[u8]) -> Result<Self, JobError> {
        if text.len() > MAX_JOB_BYTES {
            return Err(JobError::TooBig(text.len()));
        }
        if text.contains(&0) {
            return Err(JobError::NotText);
        }
        let text = std::str::from_utf8(text).map_err(|_| JobError::NotText)?;
        let mut sections: Vec<Section> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let number = i + 1;
            if line.is_empty() || line.starts_with([';', '#']) {
                continue;
            }
            if line.starts_with("include ") {
                return Err(JobError::Unsupported {
                    line: number,
                    what: "include",
                });
            }
            if line.contains(VAR_EXPANSION) {
                return Err(JobError::Unsupported {
                    line: number,
                    what: "${VAR} expansion",
                });
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let name = name.trim();
                if name.is_empty() || name.contains(['[', ']']) {
                    return Err(JobError::Syntax {
                        line: number,
                        text: raw.to_string(),
                    });
                }
                if sections.len() == MAX_SECTIONS {
                    return Err(JobError::TooManySections);
                }
                sections.push(Section {
                    name: name.to_string(),
                    options: Vec::new(),
                });
                continue;
            }
            let (key, value) = match line.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => (line, ""),
            };
            let key_ok = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !key_ok {
                return Err(JobError::Syntax {
                    line: number,
                    text: raw.to_string(),
                });
            }
            let section = sections
                .last_mut()
                .ok_or(JobError::OutsideSection(number))?;
            section.options.push((key.to_string(), value.to_string()));
        }
        let job = FioJob { sections };
        if job.jobs().is_empty() {
            return Err(JobError::NoJobs);
        }
        Ok(job)
    }

    /// The jobs with the globals before them merged in.
    pub fn jobs(&self) -> Vec<EffectiveJob> {
        let mut globals: BTreeMap<String, String> = BTreeMap::new();
        let mut jobs = Vec::new();
        for s in &self.sections {
            if s.name == "global" {
                globals.extend(s.options.iter().cloned());
                continue;
            }
            let mut options = globals.clone();
            options.extend(s.options.iter().cloned());
            jobs.push(EffectiveJob {
                name: s.name.clone(),
                options,
            });
        }
        jobs
    }

    /// How many disks the guest needs so that every `/dev/vdX` named exists (highest + 1).
    pub fn disks_needed(&self) -> Result<usize, JobError> {
        let mut needed = 0;
        for job in self.jobs() {
            for d in job.disks()? {
                needed = needed.max(d + 1);
            }
        }
        Ok(needed)
    }

    /// The same job with every job running `secs` seconds (`time_based`, `runtime=`).
    pub fn with_runtime(&self, secs: u64) -> FioJob {
        let mut out = self.clone();
        for s in out.sections.iter_mut().filter(|s| s.name != "global") {
            s.options
                .retain(|(k, _)| k != "runtime" && k != "time_based");
            s.options.push(("time_based".into(), "1".into()));
            s.options.push(("runtime".into(), secs.to_string()));
        }
        out
    }

    /// The job as fio reads it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for s in &self.sections {
            let _ = writeln!(out, "[{}]", s.name);
            for (k, v) in &s.options {
                if v.is_empty() {
                    let _ = writeln!(out, "{k}");
                } else {
                    let _ = writeln!(out, "{k}={v}");
                }
            }
        }
        out
    }

    /// A config disk: [`CONFIG_DISK_MAGIC`], the rendered job, NULs up to whole 512-byte
    /// sectors (at least 4 KiB, a size every guest can read as a block device).
    pub fn config_disk_image(&self) -> Vec<u8> {
        let mut image = CONFIG_DISK_MAGIC.to_vec();
        image.extend_from_slice(self.render().as_bytes());
        image.push(0);
        let len = image.len().div_ceil(512).max(8) * 512;
        image.resize(len, 0);
        image
    }

    /// The probe guest's commands for this job: one `blk` run per job and disk, one after
    /// another (the probe has no concurrent jobs), each reporting in fio's JSON shape.
    /// `disk_size` bounds jobs that name no size; each run spreads its requests over `queues`
    /// virtqueues.
    pub fn probe_commands(&self, disk_size: u64, queues: u16) -> Result<Vec<String>, JobError> {
        let mut out = Vec::new();
        for job in self.jobs() {
            let rw = probe_rw(&job)?;
            let bs = match job.get("bs").or(job.get("blocksize")) {
                Some(v) => fio_size(v)
                    .filter(|b| *b >= 512 && b % 512 == 0 && *b <= 1 << 20)
                    .ok_or_else(|| job.bad("bs", "a multiple of 512 up to 1M is needed"))?,
                None => 4096,
            };
            let iodepth = match job.get("iodepth") {
                Some(v) => v
                    .parse::<u32>()
                    .ok()
                    .filter(|d| (1..=1024).contains(d))
                    .ok_or_else(|| job.bad("iodepth", "expected 1..1024"))?,
                None => 1,
            };
            let numjobs = job.get("numjobs").unwrap_or("1");
            if numjobs != "1" {
                return Err(job.bad("numjobs", "the probe runs one job per disk"));
            }
            let runtime = match job.get("runtime") {
                Some(v) => Some(
                    fio_seconds(v)
                        .filter(|s| (1..=3600).contains(s))
                        .ok_or_else(|| job.bad("runtime", "expected 1s..1h"))?,
                ),
                None => None,
            };
            let size = match job.get("size") {
                Some(v) => Some(
                    fio_size(v)
                        .filter(|s| *s >= bs)
                        .ok_or_else(|| job.bad("size", "expected a size of at least bs"))?,
                ),
                None => None,
            };
            let amount = match (job.flag("time_based"), runtime, size) {
                (true, Some(secs), _) => format!("runtime={secs}"),
                (_, _, Some(size)) => format!("ios={}", (size / bs).min(PROBE_MAX_IOS)),
                (_, Some(secs), None) => format!("runtime={secs}"),
                (false, None, None) => {
                    format!("ios={}", (disk_size / bs).clamp(1, PROBE_MAX_IOS))
                }
                (true, None, None) => return Err(job.bad("time_based", "needs runtime=")),
            };
            // fio's polled completions (`hipri`): the probe polls the used ring instead of
            // taking interrupts.
            let poll = if job.flag("hipri") { ",poll=1" } else { "" };
            let verify = job.get("verify").is_some_and(|v| v != "0" && v != "none");
            let verify = if verify && probe_writes(rw) { 1 } else { 0 };
            for disk in job.disks()? {
                let name: String = job
                    .name
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                    .take(32)
                    .collect();
                let name = if name.is_empty() {
                    format!("disk{disk}")
                } else {
                    name
                };
                let queues = if queues > 1 {
                    format!(",queues={queues}")
                } else {
                    String::new()
                };
                out.push(format!(
                    "probe.cmd=blk:disk={disk},rw={rw},bs={bs},iodepth={iodepth},{amount},\
                     verify={verify},report=fio,name={name}{queues}{poll}"
                ));
            }
        }
        Ok(out)
    }
}

fn probe_writes(rw: &str) -> bool {
    rw.contains("write") || rw == "randrw"
}

fn probe_rw(job: &EffectiveJob) -> Result<&'static str, JobError> {
    let rw = job.get("rw").or(job.get("readwrite")).unwrap_or("read");
    match rw {
        "read" => Ok("read"),
        "write" => Ok("write"),
        "randread" => Ok("randread"),
        "randwrite" => Ok("randwrite"),
        "randrw" => Ok("randrw"),
        _ => Err(job.bad(
            "rw",
            "the probe runs read, write, randread, randwrite and randrw",
        )),
    }
}

/// A fio size: a number with an optional k/m/g/t suffix (powers of 1024, fio's default
/// `kb_base`), optionally followed by `b`/`ib`.
pub fn fio_size(text: &str) -> Option<u64> {
    vmm::config::parse_size(text)
}

/// A fio time in whole seconds: plain seconds or a `s`, `m`, `h` suffix (`ms`/`us` values
/// round up to one second).
pub fn fio_seconds(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, scale_ms) = if let Some(d) = t.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = t.strip_suffix("us") {
        (d, 0)
    } else if let Some(d) = t.strip_suffix('s') {
        (d, 1000)
    } else if let Some(d) = t.strip_suffix('m') {
        (d, 60_000)
    } else if let Some(d) = t.strip_suffix('h') {
        (d, 3_600_000)
    } else {
        (t, 1000)
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    if scale_ms == 0 {
        return Some(n.div_ceil(1_000_000));
    }
    Some(n.checked_mul(scale_ms)?.div_ceil(1000))
}

#[cfg(test)]
mod tests;
