//! The `keel` command: boots one VM from the command line and exits with the guest's fate
//! (0: powered off or stopped by SIGINT/SIGTERM, 1: error, 3: guest reset).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use devices::virtio::block::IoStats;
use vmm::config::{
    CpusConfig, DiskConfig, MemoryConfig, NumaNodeConfig, PayloadConfig, SerialConfig, VmConfig,
};
use vmm::vm::{Vm, VmOutcome};

/// Keel: a small KVM hypervisor focused on few VM exits and fast storage.
#[derive(Parser, Debug)]
#[command(name = "keel", version, about)]
struct Cli {
    /// Kernel image: ELF vmlinux (64-bit or PVH entry) or bzImage; the format is detected.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initramfs to load.
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// vCPUs: boot=N[,affinity=[0@[2,3],1@[4]]][,pvm_compat=auto|on|off].
    #[arg(long, default_value = "boot=1", value_parser = parse_cpus)]
    cpus: CpusConfig,
    /// Guest RAM: size=S[,hugepages=on][,hugepage_size=2M|1G][,prefault=on][,thp=on|off]
    /// [,shared=on][,mergeable=on].
    #[arg(long, default_value = "size=512M", value_parser = parse_memory)]
    memory: MemoryConfig,
    /// Guest NUMA node (repeatable): guest_node=N,cpus=LIST,memory=SIZE[,host_node=H].
    #[arg(long, value_name = "OPTIONS", value_parser = parse_numa)]
    numa: Vec<NumaNodeConfig>,
    /// virtio-blk disk (repeatable): path=FILE[,readonly=on][,cache=none|writeback][,queues=N]
    /// [,queue_size=N][,iothread=NAME|cpus:LIST|NAME:cpus:LIST][,numa_node=N][,serial=ID]
    /// [,id=NAME].
    #[arg(long, value_name = "OPTIONS", value_parser = parse_disk)]
    disk: Vec<DiskConfig>,
    /// Serial console (COM1): tty, off, or file=PATH.
    #[arg(long, default_value = "tty", value_parser = parse_serial)]
    serial: SerialConfig,
    /// At exit, print exit counters (Keel's and KVM's, per vCPU) as one
    /// `keel-stats: {JSON}` line on stderr.
    #[arg(long)]
    stats: bool,
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(long, default_value = "warn", value_parser = parse_log_level)]
    log_level: log::LevelFilter,
}

fn parse_cpus(s: &str) -> Result<CpusConfig, String> {
    CpusConfig::parse(s).map_err(|e| e.to_string())
}

fn parse_memory(s: &str) -> Result<MemoryConfig, String> {
    MemoryConfig::parse(s).map_err(|e| e.to_string())
}

fn parse_numa(s: &str) -> Result<NumaNodeConfig, String> {
    NumaNodeConfig::parse(s).map_err(|e| e.to_string())
}

fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    DiskConfig::parse(s).map_err(|e| e.to_string())
}

fn parse_log_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("unknown log level '{s}' (off, error, warn, info, debug, trace)"))
}

fn parse_serial(s: &str) -> Result<SerialConfig, String> {
    SerialConfig::parse(s).map_err(|e| e.to_string())
}

/// The `--stats` line: `{"vcpus":[{"index":0,"userspace":{...},"kvm":{...}}],"disks":[...]}`.
fn stats_json(stats: &[vmm::vm::VcpuStats], disks: &[(String, IoStats)]) -> String {
    let vcpus: Vec<String> = stats
        .iter()
        .map(|s| {
            let u = &s.userspace;
            let kvm: Vec<String> = s
                .kvm
                .iter()
                .filter(|(name, _)| name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                .map(|(name, v)| format!("\"{name}\":{v}"))
                .collect();
            format!(
                "{{\"index\":{},\"userspace\":{{\"total\":{},\"io\":{},\"mmio\":{},\"unclaimed\":{},\"interrupted\":{},\"other\":{}}},\"kvm\":{{{}}}}}",
                s.index,
                u.total,
                u.io,
                u.mmio,
                u.unclaimed,
                u.interrupted,
                u.other,
                kvm.join(",")
            )
        })
        .collect();
    let disks: Vec<String> = disks
        .iter()
        .map(|(name, d)| {
            format!(
                "{{\"name\":\"{name}\",\"requests\":{},\"errors\":{},\"read_bytes\":{},\"write_bytes\":{},\"latency_ns\":{}}}",
                d.requests, d.errors, d.read_bytes, d.write_bytes, d.latency_ns
            )
        })
        .collect();
    format!(
        "{{\"vcpus\":[{}],\"disks\":[{}]}}",
        vcpus.join(","),
        disks.join(",")
    )
}

static STOP: AtomicBool = AtomicBool::new(false);
static SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_stop_signal(signum: libc::c_int) {
    SIGNAL.store(signum, Ordering::Relaxed);
    STOP.store(true, Ordering::Release);
}

fn install_stop_handlers() {
    for signum in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to atomics, which is async-signal-safe; the
        // sigaction struct is fully initialised.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signum, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            log::warn!("cannot install a handler for signal {signum}");
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Logs the process's peak resident set (VmHWM) at debug level; `make bench` reads it.
fn log_peak_rss() {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
            log::debug!("peak RSS {}", line.trim_start_matches("VmHWM:").trim());
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line: clap's message up to its usage hint, joined.
            let text = e.to_string();
            let message = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("keel: {}", message.trim_start_matches("error: "));
            return ExitCode::from(1);
        }
        Err(e) => {
            // --help / --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    vmm::logger::init(cli.log_level);
    let config = VmConfig {
        cpus: cli.cpus,
        memory: cli.memory,
        payload: PayloadConfig {
            kernel: cli.kernel,
            initramfs: cli.initramfs,
            cmdline: cli.cmdline,
        },
        serial: cli.serial,
        disks: cli.disk,
        numa: cli.numa,
    };
    install_stop_handlers();
    let mut running = match Vm::create(&config).and_then(Vm::start) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("keel: error: {}", error_chain(&e));
            return ExitCode::from(1);
        }
    };
    let stats_wanted = cli.stats;
    let outcome = running.wait(&STOP);
    if stats_wanted {
        eprintln!(
            "keel-stats: {}",
            stats_json(&running.stats(), &running.disk_stats())
        );
    }
    drop(running);
    log_peak_rss();
    match outcome {
        VmOutcome::PowerOff => {
            log::info!("guest powered off");
            ExitCode::SUCCESS
        }
        VmOutcome::Stopped => {
            let signum = SIGNAL.load(Ordering::Relaxed);
            let name = if signum == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            eprintln!("keel: stopped by {name}");
            ExitCode::SUCCESS
        }
        VmOutcome::Reset(cause) => {
            eprintln!("keel: guest reset ({cause:?}); Keel does not reboot guests, VM stopped");
            ExitCode::from(3)
        }
        VmOutcome::Fatal(msg) => {
            eprintln!("keel: error: {msg}");
            ExitCode::from(1)
        }
    }
}
