//! `keel bench fio`: a storage benchmark in one command. It creates the disks, boots a guest
//! that runs a fio job and prints fio's JSON on its console (the Linux guest of
//! `make guest-linux`, or the probe guest, whose `blk` command reports in fio's shape),
//! collects the figures and puts Keel's exits per I/O beside them; with a QEMU comparison it
//! runs the same guest, disks and job under `qemu-system-x86_64` and shows both.
//!
//! Pieces: [`job`] (job files, config disk, probe translation), [`disks`], [`keel_run`] and
//! [`qemu_run`] (the two VMMs, with [`qmp_stats`] for QEMU's counters), [`console_tail`] and
//! [`counter_window`] (counters over fio's run), [`report`] (console protocol and fio JSON)
//! and [`output`] (table and JSON line).

pub mod console_tail;
pub mod counter_window;
pub mod disks;
pub mod guest_irqs;
pub mod job;
pub mod keel_run;
pub mod output;
pub mod qemu_run;
pub mod qmp_stats;
pub mod report;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use vmm::config::{
    CacheMode, CpusConfig, DiskConfig, MemoryConfig, NumaNodeConfig, PayloadConfig, VmConfig,
};

use disks::{DiskSet, Fill};
use job::FioJob;
use keel_run::{GuestEnd, GuestRun};
use qemu_run::{QemuAccel, QemuGuest};
use report::Summary;

/// Name (and `id`) of the config disk among Keel's disks.
pub const CONFIG_DISK_ID: &str = "fio-config";
/// Kernel command line of the Linux guest before the user's additions. Kernel messages stay
/// on (the guest's init turns them down before it prints fio's report) so that a guest that
/// stops early leaves a console that says how far it got.
pub const LINUX_CMDLINE: &str = "console=ttyS0 panic=-1";

/// Which guest runs the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// Linux with fio (`make guest-linux`): reads the job from the config disk.
    Linux,
    /// The probe guest: the job is translated into `blk` commands, run one after another.
    Probe,
}

/// The QEMU side of a comparison.
#[derive(Debug, Clone)]
pub struct QemuCompare {
    /// The binary.
    pub binary: PathBuf,
    /// Accelerator.
    pub accel: QemuAccel,
    /// Kernel QEMU boots (a bzImage usually; the probe's `probe.bzimage`).
    pub kernel: PathBuf,
}

/// Everything one benchmark run needs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The fio job file.
    pub job: PathBuf,
    /// The guest.
    pub guest: GuestKind,
    /// Kernel Keel boots.
    pub kernel: PathBuf,
    /// Initramfs (the Linux guest's).
    pub initramfs: Option<PathBuf>,
    /// Added to the kernel command line.
    pub cmdline_extra: String,
    /// Data disks (default: as many as the job's highest `/dev/vdX` needs).
    pub disks: Option<usize>,
    /// Size of each data disk.
    pub disk_size: u64,
    /// How data disks are filled.
    pub fill: Fill,
    /// Options added to each of Keel's data disks (`queues=2,iothread=...`).
    pub disk_options: String,
    /// Where the disk files go.
    pub dir: PathBuf,
    /// Keep the disk files afterwards.
    pub keep_disks: bool,
    /// Replace the job's runtime (seconds, time-based).
    pub runtime: Option<u64>,
    /// vCPUs (Keel's `--cpus`; QEMU gets the same count).
    pub cpus: CpusConfig,
    /// RAM (Keel's `--memory`; QEMU gets the same size).
    pub memory: MemoryConfig,
    /// Guest NUMA nodes (Keel only).
    pub numa: Vec<NumaNodeConfig>,
    /// Also run under QEMU.
    pub compare: Option<QemuCompare>,
    /// Run only the QEMU side (a check of the guest image where Keel's host cannot run it).
    pub skip_keel: bool,
    /// Longest a guest may run.
    pub timeout: Duration,
    /// Copy the guests' consoles to stderr.
    pub echo_console: bool,
}

/// The benchmark could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FioBenchError {
    /// Reading the job file.
    #[error("cannot read job file {path}")]
    ReadJob {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The job file.
    #[error("job file {path}")]
    Job {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        source: job::JobError,
    },
    /// Fewer disks than the job names.
    #[error("--disks {given} is too few: the job names /dev/vd* disks up to number {needed}")]
    TooFewDisks {
        /// Given.
        given: usize,
        /// Needed.
        needed: usize,
    },
    /// A data disk option.
    #[error("disk option '{options}'")]
    DiskOptions {
        /// The options.
        options: String,
        /// Why.
        #[source]
        source: vmm::config::ConfigError,
    },
    /// The disks.
    #[error("cannot create the disks")]
    Disks(#[source] disks::DiskError),
    /// Keel's run.
    #[error("keel run")]
    Keel(#[source] keel_run::KeelRunError),
    /// QEMU's run.
    #[error("qemu run")]
    Qemu(#[source] qemu_run::QemuRunError),
}

/// One VMM's result.
#[derive(Debug, Clone)]
pub struct SideResult {
    /// `keel` or `qemu`.
    pub vmm: &'static str,
    /// The run.
    pub run: GuestRun,
    /// fio's figures, if the console held valid documents.
    pub summary: Option<Summary>,
    /// fio's exit statuses.
    pub exit_codes: Vec<i64>,
    /// The guest's interrupts over fio's run, by source (empty if it printed none).
    pub guest_irqs: Vec<guest_irqs::IrqCount>,
    /// Why the run does not count (None when it does).
    pub problem: Option<String>,
}

impl SideResult {
    fn new(vmm: &'static str, run: GuestRun) -> Self {
        let mut problem = None;
        let mut summary = None;
        let mut exit_codes = Vec::new();
        let mut guest_irqs = Vec::new();
        match report::scan(&run.console) {
            Err(e) => problem = Some(e.to_string()),
            Ok(console) => {
                exit_codes = console.exit_codes.clone();
                guest_irqs = console.guest_irqs.clone();
                if let Some(e) = console.errors.first() {
                    problem = Some(format!("the guest says: {e}"));
                }
                if !console.documents.is_empty() {
                    match report::summarize(&console) {
                        Ok(s) => summary = Some(s),
                        Err(e) => problem = problem.or(Some(e.to_string())),
                    }
                }
                let failed = summary.as_ref().map_or(0, |s| s.failed_jobs);
                if problem.is_none() && console.documents.is_empty() {
                    problem = Some("the guest printed no fio JSON".into());
                } else if problem.is_none() && failed > 0 {
                    problem = Some(format!("{failed} fio job(s) reported an error"));
                } else if problem.is_none() && exit_codes.iter().any(|&c| c != 0) {
                    problem = Some(format!("fio exited with status {exit_codes:?}"));
                }
                // What fio said on stderr usually explains the failure best.
                if let (Some(p), Some(line)) = (problem.as_mut(), console.stderr.first()) {
                    p.push_str(&format!(" (fio: {line})"));
                }
            }
        }
        let end_problem = match &run.end {
            GuestEnd::PowerOff => None,
            GuestEnd::Failed(msg) => Some(format!("the guest stopped: {msg}")),
            GuestEnd::TimedOut => Some(format!(
                "the guest was still running after {:.0} s and was stopped",
                run.wall.as_secs_f64()
            )),
            GuestEnd::Interrupted => Some("interrupted".into()),
        };
        // How the guest ended explains a missing report best.
        if let Some(end) = end_problem {
            problem = Some(match problem {
                Some(p) if summary.is_some() => format!("{end}; {p}"),
                _ => end,
            });
        }
        SideResult {
            vmm,
            run,
            summary,
            exit_codes,
            guest_irqs,
            problem,
        }
    }

    /// Whether the run produced figures that count.
    pub fn ok(&self) -> bool {
        self.problem.is_none() && self.summary.is_some()
    }
}

/// Both sides.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The job file.
    pub job: String,
    /// The guest.
    pub guest: GuestKind,
    /// Data disks and their size.
    pub disks: usize,
    /// Size of each.
    pub disk_size: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// RAM.
    pub memory: u64,
    /// Keel (None with `skip_keel`).
    pub keel: Option<SideResult>,
    /// QEMU, when compared.
    pub qemu: Option<SideResult>,
}

impl BenchReport {
    /// The sides that ran: Keel first.
    pub fn sides(&self) -> Vec<&SideResult> {
        self.keel.iter().chain(self.qemu.iter()).collect()
    }

    /// Whether every side that ran produced figures that count.
    pub fn ok(&self) -> bool {
        let sides = self.sides();
        !sides.is_empty() && sides.iter().all(|s| s.ok())
    }
}

fn guest_cmdline(opts: &BenchOptions, job: &FioJob) -> Result<String, FioBenchError> {
    let base = match opts.guest {
        GuestKind::Linux => LINUX_CMDLINE.to_string(),
        GuestKind::Probe => job
            .probe_commands(opts.disk_size, data_disk_queues(opts)?)
            .map_err(|source| FioBenchError::Job {
                path: opts.job.display().to_string(),
                source,
            })?
            .join(" "),
    };
    Ok(if opts.cmdline_extra.is_empty() {
        base
    } else {
        format!("{base} {}", opts.cmdline_extra)
    })
}

/// Data disk `path` as Keel attaches it: named `name`, with the user's disk options.
fn data_disk(opts: &BenchOptions, path: &Path, name: &str) -> Result<DiskConfig, FioBenchError> {
    let mut text = format!("path={},id={name}", path.display());
    if !opts.disk_options.is_empty() {
        text = format!("{text},{}", opts.disk_options);
    }
    DiskConfig::parse(&text).map_err(|source| FioBenchError::DiskOptions {
        options: opts.disk_options.clone(),
        source,
    })
}

/// Virtqueues per data disk (`queues=` of the disk options, else Keel's default for the
/// guest's vCPUs): Keel's, QEMU's and the probe's.
fn data_disk_queues(opts: &BenchOptions) -> Result<u16, FioBenchError> {
    Ok(data_disk(opts, Path::new("/dev/null"), "vda")?.queue_count(opts.cpus.boot_vcpus))
}

fn keel_disks(opts: &BenchOptions, set: &DiskSet) -> Result<Vec<DiskConfig>, FioBenchError> {
    let mut out = Vec::new();
    for (i, path) in set.data.iter().enumerate() {
        let name = format!("vd{}", (b'a' + i as u8) as char);
        out.push(data_disk(opts, path, &name)?);
    }
    let config = DiskConfig {
        path: set.config.clone(),
        readonly: true,
        cache: CacheMode::Writeback,
        id: Some(CONFIG_DISK_ID.to_string()),
        ..DiskConfig::default()
    };
    out.push(config);
    Ok(out)
}

/// Runs the benchmark: Keel, then QEMU when asked. `interrupt` stops a running guest.
pub fn run(opts: &BenchOptions, interrupt: &AtomicBool) -> Result<BenchReport, FioBenchError> {
    let path = opts.job.display().to_string();
    let job = read_job(opts, &path)?;
    let needed = job.disks_needed().map_err(|source| FioBenchError::Job {
        path: path.clone(),
        source,
    })?;
    let count = opts.disks.unwrap_or(needed);
    if count < needed {
        return Err(FioBenchError::TooFewDisks {
            given: count,
            needed,
        });
    }
    let cmdline = guest_cmdline(opts, &job)?;
    let set = DiskSet::create(
        &opts.dir,
        count,
        opts.disk_size,
        opts.fill,
        &job,
        opts.keep_disks,
    )
    .map_err(FioBenchError::Disks)?;
    let keel = if opts.skip_keel {
        None
    } else {
        Some(run_keel(opts, &set, &cmdline, &path, interrupt)?)
    };
    let qemu = match &opts.compare {
        None => None,
        Some(q) => Some(run_qemu(opts, q, &set, cmdline, &path, interrupt)?),
    };
    Ok(BenchReport {
        job: path,
        guest: opts.guest,
        disks: count,
        disk_size: opts.disk_size,
        vcpus: opts.cpus.boot_vcpus,
        memory: opts.memory.size,
        keel,
        qemu,
    })
}

/// The job file, with `--runtime` applied.
fn read_job(opts: &BenchOptions, path: &str) -> Result<FioJob, FioBenchError> {
    let text = std::fs::read(&opts.job).map_err(|source| FioBenchError::ReadJob {
        path: path.to_string(),
        source,
    })?;
    let job = FioJob::parse(&text).map_err(|source| FioBenchError::Job {
        path: path.to_string(),
        source,
    })?;
    Ok(match opts.runtime {
        Some(secs) => job.with_runtime(secs),
        None => job,
    })
}

/// The guest in keel, on the disk set.
fn run_keel(
    opts: &BenchOptions,
    set: &DiskSet,
    cmdline: &str,
    job: &str,
    interrupt: &AtomicBool,
) -> Result<SideResult, FioBenchError> {
    let config = VmConfig {
        cpus: opts.cpus.clone(),
        memory: opts.memory.clone(),
        payload: PayloadConfig {
            kernel: opts.kernel.clone(),
            initramfs: opts.initramfs.clone(),
            cmdline: cmdline.to_string(),
            firmware: None,
        },
        disks: keel_disks(opts, set)?,
        numa: opts.numa.clone(),
        ..VmConfig::default()
    };
    let console = opts.dir.join("keel-console.log");
    log::info!("booting {} in keel for {job}", opts.kernel.display());
    let run = keel_run::run(
        &config,
        &console,
        opts.echo_console,
        opts.timeout,
        interrupt,
    )
    .map_err(FioBenchError::Keel)?;
    Ok(SideResult::new("keel", run))
}

/// The same guest in QEMU, on the same disk set.
fn run_qemu(
    opts: &BenchOptions,
    q: &QemuCompare,
    set: &DiskSet,
    cmdline: String,
    job: &str,
    interrupt: &AtomicBool,
) -> Result<SideResult, FioBenchError> {
    let guest = QemuGuest {
        binary: q.binary.clone(),
        accel: q.accel,
        vcpus: opts.cpus.boot_vcpus,
        memory_mib: opts.memory.size >> 20,
        kernel: q.kernel.clone(),
        initramfs: opts.initramfs.clone(),
        cmdline,
        data_disks: set.data.clone(),
        queues: data_disk_queues(opts)?,
        config_disk: set.config.clone(),
    };
    let console = opts.dir.join("qemu-console.log");
    log::info!("booting {} in qemu for {job}", q.kernel.display());
    let run = guest
        .run(&console, opts.echo_console, opts.timeout, interrupt)
        .map_err(FioBenchError::Qemu)?;
    Ok(SideResult::new("qemu", run))
}
