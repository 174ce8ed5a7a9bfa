//! `keel bench fio`: the command-line front of [`keel_bench::fio`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use keel_bench::fio::disks::{Fill, MAX_DISK_SIZE, MIN_DISK_SIZE};
use keel_bench::fio::qemu_run::QemuAccel;
use keel_bench::fio::{self, output, BenchOptions, GuestKind, QemuCompare};
use vmm::config::{parse_size, CpusConfig, MemoryConfig, NumaNodeConfig};

/// Boots a guest that runs a fio job on virtio-blk disks and prints fio's figures beside
/// Keel's exits per I/O; optionally the same under QEMU, side by side.
#[derive(Parser, Debug)]
#[command(name = "keel bench fio", bin_name = "keel bench fio")]
struct FioCli {
    /// fio job file (its /dev/vdX filenames decide how many disks are created).
    #[arg(long, value_name = "FILE")]
    job: PathBuf,
    /// Guest: linux (`make guest-linux`; fio reads the job from a config disk) or probe (the
    /// job becomes `blk` commands, run one after another).
    #[arg(long, default_value = "linux", value_parser = parse_guest)]
    guest: GuestKind,
    /// Directory of the guest's files (default build/guest-linux or build/probe).
    #[arg(long, value_name = "DIR")]
    guest_dir: Option<PathBuf>,
    /// Kernel Keel boots (default: vmlinux, or probe.elf, in the guest directory).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs (default for linux: initramfs.cpio in the guest directory).
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,
    /// Added to the guest's kernel command line.
    #[arg(long, default_value = "")]
    cmdline_extra: String,
    /// Data disks (default: as many as the job's highest /dev/vdX needs).
    #[arg(long, value_name = "N")]
    disks: Option<usize>,
    /// Size of each data disk.
    #[arg(long, default_value = "1G", value_parser = parse_disk_size)]
    disk_size: u64,
    /// How data disks are filled: random, zero, sparse, or reuse (the file a --keep-disks run left, if of this size).
    #[arg(long, default_value = "random", value_parser = Fill::parse)]
    fill: Fill,
    /// Options for each of Keel's data disks, as in --disk (queues=2,iothread=cpus:1,...).
    #[arg(long, default_value = "")]
    disk_options: String,
    /// Directory for the disk files and consoles (O_DIRECT must work there: tmpfs only on Linux 6.6 and later).
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/keel-bench-fio")]
    dir: PathBuf,
    /// Keep the disk files.
    #[arg(long)]
    keep_disks: bool,
    /// Run every job this many seconds (time-based) instead of the job's own runtime.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    runtime: Option<u64>,
    /// vCPUs, as keel's --cpus.
    #[arg(long, default_value = "boot=2")]
    cpus: String,
    /// Guest RAM, as keel's --memory.
    #[arg(long, default_value = "size=1G", value_parser = parse_memory)]
    memory: MemoryConfig,
    /// Guest NUMA node, as keel's --numa (repeatable).
    #[arg(long, value_name = "OPTIONS", value_parser = parse_numa)]
    numa: Vec<NumaNodeConfig>,
    /// Hyper-V enlightenments: on, off or [LIST] (as --cpus hyperv=).
    #[arg(long, value_name = "on|off|[LIST]")]
    hyperv: Option<String>,
    /// Also run the guest under another VMM: qemu.
    #[arg(long, value_name = "VMM", value_parser = parse_compare)]
    compare: Option<String>,
    /// Run only QEMU (checks the guest image and job where this host's KVM cannot run it).
    #[arg(long, requires = "compare")]
    skip_keel: bool,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// QEMU's accelerator: kvm, or tcg on hosts whose KVM cannot run the guest.
    #[arg(long, default_value = "kvm", value_parser = QemuAccel::parse)]
    qemu_accel: QemuAccel,
    /// Kernel QEMU boots (default: vmlinuz, or probe.bzimage, in the guest directory).
    #[arg(long, value_name = "PATH")]
    qemu_kernel: Option<PathBuf>,
    /// Longest each guest may run, in seconds.
    #[arg(long, default_value = "900", value_parser = clap::value_parser!(u64).range(1..=86400))]
    timeout: u64,
    /// Copy the guests' consoles to stderr as they run.
    #[arg(long)]
    console: bool,
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(long, default_value = "warn", value_parser = super::parse_log_level)]
    log_level: log::LevelFilter,
}

fn parse_guest(s: &str) -> Result<GuestKind, String> {
    match s {
        "linux" => Ok(GuestKind::Linux),
        "probe" => Ok(GuestKind::Probe),
        _ => Err(format!("unknown guest '{s}': expected linux or probe")),
    }
}

fn parse_compare(s: &str) -> Result<String, String> {
    match s {
        "qemu" => Ok(s.to_string()),
        _ => Err(format!("cannot compare with '{s}': expected qemu")),
    }
}

fn parse_disk_size(s: &str) -> Result<u64, String> {
    parse_size(s)
        .filter(|v| v.is_multiple_of(512) && (MIN_DISK_SIZE..=MAX_DISK_SIZE).contains(v))
        .ok_or_else(|| format!("invalid disk size '{s}': a multiple of 512 from 1M to 16T"))
}

fn parse_memory(s: &str) -> Result<MemoryConfig, String> {
    MemoryConfig::parse(s).map_err(|e| e.to_string())
}

fn parse_numa(s: &str) -> Result<NumaNodeConfig, String> {
    NumaNodeConfig::parse(s).map_err(|e| e.to_string())
}

/// A file that must exist.
fn existing(path: PathBuf, what: &str) -> Result<PathBuf, String> {
    if path.is_file() {
        Ok(path)
    } else {
        let hint = if path.starts_with("build/guest-linux") {
            " (run `make guest-linux`)"
        } else if path.starts_with("build/probe") {
            " (run `make probe`)"
        } else {
            ""
        };
        Err(format!("{what} {} not found{hint}", path.display()))
    }
}

fn options(cli: FioCli) -> Result<BenchOptions, String> {
    let cpus = match &cli.hyperv {
        Some(h) => format!("{},hyperv={h}", cli.cpus),
        None => cli.cpus.clone(),
    };
    let cpus = CpusConfig::parse(&cpus).map_err(|e| e.to_string())?;
    let (default_dir, kernel, initramfs, qemu_kernel) = match cli.guest {
        GuestKind::Linux => (
            "build/guest-linux",
            "vmlinux",
            Some("initramfs.cpio"),
            "vmlinuz",
        ),
        GuestKind::Probe => ("build/probe", "probe.elf", None, "probe.bzimage"),
    };
    let dir = cli
        .guest_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(default_dir));
    let in_dir = |name: &str| dir.join(name);
    let kernel = existing(cli.kernel.unwrap_or_else(|| in_dir(kernel)), "kernel")?;
    let initramfs = match (cli.initramfs, initramfs) {
        (Some(p), _) => Some(existing(p, "initramfs")?),
        (None, Some(name)) => Some(existing(in_dir(name), "initramfs")?),
        (None, None) => None,
    };
    let compare = match cli.compare {
        None => None,
        Some(_) => Some(QemuCompare {
            binary: cli.qemu,
            accel: cli.qemu_accel,
            kernel: existing(
                cli.qemu_kernel.unwrap_or_else(|| in_dir(qemu_kernel)),
                "QEMU kernel",
            )?,
        }),
    };
    if !Path::new(&cli.job).is_file() {
        return Err(format!("job file {} not found", cli.job.display()));
    }
    Ok(BenchOptions {
        job: cli.job,
        guest: cli.guest,
        kernel,
        initramfs,
        cmdline_extra: cli.cmdline_extra,
        disks: cli.disks,
        disk_size: cli.disk_size,
        fill: cli.fill,
        disk_options: cli.disk_options,
        dir: cli.dir,
        keep_disks: cli.keep_disks,
        runtime: cli.runtime,
        cpus,
        memory: cli.memory,
        numa: cli.numa,
        compare,
        skip_keel: cli.skip_keel,
        timeout: Duration::from_secs(cli.timeout),
        echo_console: cli.console,
    })
}

/// Runs `keel bench ARGS...`; `args` starts with the program name, `bench` removed.
pub fn main(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let mut args = args.peekable();
    let program = args.next().unwrap_or_default();
    match args.peek().and_then(|a| a.to_str()) {
        Some("fio") => {}
        other => {
            err_line!(
                "keel: bench: unknown benchmark '{}': expected `keel bench fio --job FILE`",
                other.unwrap_or("")
            );
            return ExitCode::from(1);
        }
    }
    let args = std::iter::once(program).chain(args.skip(1));
    let cli = match super::parse_command::<FioCli>("keel: bench fio", args, 1) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    crate::logger::init(cli.log_level);
    let opts = match options(cli) {
        Ok(o) => o,
        Err(e) => {
            err_line!("keel: bench fio: {e}");
            return ExitCode::from(1);
        }
    };
    super::install_stop_handlers();
    let report = match fio::run(&opts, &super::STOP) {
        Ok(r) => r,
        Err(e) => {
            err_line!("keel: bench fio: {}", super::error_chain(&e));
            return ExitCode::from(1);
        }
    };
    out_text!("{}", output::table(&report));
    out_line!("keel-bench-fio: {}", output::json(&report));
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
