//! The `keel` command, a front end of the [`vmm`] library: it boots one VM from the command
//! line and exits with the guest's fate (0: powered off or stopped by SIGINT/SIGTERM/SIGHUP, 1: error,
//! 3: guest reset). With `--api-socket PATH` it serves the API socket instead (see
//! [`vmm::api`]), with the VM of the command line booted if `--kernel` is given, and exits 0 on
//! `vmm.shutdown` or SIGINT/SIGTERM/SIGHUP.
//!
//! Three more commands: `keel stat --pid PID` ([`stat`]) watches a running keel's KVM counters,
//! taking its statistics fds from the other process; `keel bench fio --job FILE` ([`bench`])
//! runs a fio benchmark in a guest, parsing the command line of the `keel-bench` crate's
//! harness ([`keel_bench::fio`]); `keel remote --api-socket PATH COMMAND` ([`remote`]) drives
//! a running keel through its API socket, as Cloud Hypervisor's `ch-remote` does.

#[macro_use]
mod out;
mod bench;
mod logger;
mod remote;
mod stat;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use clap::Parser;
use vmm::api::routes::ApiState;
use vmm::api::{ApiServer, Served};
use vmm::config::{
    CpusConfig, DiskConfig, MemoryConfig, NumaNodeConfig, PayloadConfig, SerialConfig, VmConfig,
};
use vmm::event::StopEvent;
use vmm::handle::VmHandle;
use vmm::seccomp::SeccompMode;
use vmm::snapshot::SnapshotFile;
use vmm::stats::view as stats_view;
use vmm::stats::VmCounters;
use vmm::vm::{RunningVm, Vm, VmError, VmOutcome};

/// Keel: a small KVM hypervisor focused on few VM exits and fast storage.
#[derive(Parser, Debug)]
#[command(
    name = "keel",
    version,
    about,
    after_help = "Other commands:\n  keel stat --pid PID        KVM counters of a running keel, as rates\n  \
                  keel bench fio --job FILE  a fio benchmark in a guest (keel bench fio --help)\n  \
                  keel remote --api-socket PATH COMMAND\n                             \
                  drive a running keel (keel remote --help)"
)]
#[command(group(clap::ArgGroup::new("payload").args(["kernel", "firmware"])))]
struct Cli {
    /// Kernel image: ELF vmlinux (64-bit or PVH entry) or bzImage; the format is detected.
    /// Optional with --api-socket (the VM then comes from `vm.create`).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present_any = ["api_socket", "restore", "firmware"]
    )]
    kernel: Option<PathBuf>,
    /// Boot a PVH firmware instead of a kernel: edk2's Cloud Hypervisor firmware (CLOUDHV.fd,
    /// `make firmware`), which boots the OS from a --disk through UEFI. No --kernel,
    /// --initramfs or --cmdline with it.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["kernel", "restore", "initramfs", "cmdline"])]
    firmware: Option<PathBuf>,
    /// Restore the VM saved in a snapshot and run it on from the snapshot's instant:
    /// `source_url=file:///PATH` (Cloud Hypervisor's form; a plain absolute path is taken
    /// too). The VM's configuration comes from the snapshot.
    #[arg(long, value_name = "source_url=URL", value_parser = parse_restore, conflicts_with = "kernel")]
    restore: Option<PathBuf>,
    /// Serve the HTTP API (Cloud Hypervisor's endpoints) on this Unix socket, created with mode
    /// 0600 (`path=PATH` is accepted too). Keel runs until `PUT /api/v1/vmm.shutdown`.
    #[arg(long, value_name = "PATH", value_parser = parse_api_socket)]
    api_socket: Option<PathBuf>,
    /// Initramfs to load.
    #[arg(long, value_name = "PATH", requires = "kernel")]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "", requires = "kernel")]
    cmdline: String,
    /// vCPUs: boot=N[,affinity=[0@[2,3],1@[4]]][,kvm_pv=on|off|hidden|[LIST]]
    /// [,hyperv=on|off|[LIST]][,pvm_compat=auto|on|off].
    #[arg(long, default_value = "boot=1", value_parser = parse_cpus, requires = "payload")]
    cpus: CpusConfig,
    /// Guest RAM: size=S[,hugepages=on][,hugepage_size=2M|1G][,prefault=on][,thp=on|off]
    /// [,shared=on][,mergeable=on].
    #[arg(long, default_value = "size=512M", value_parser = parse_memory, requires = "payload")]
    memory: MemoryConfig,
    /// Guest NUMA node (repeatable): guest_node=N,cpus=LIST,memory=SIZE[,host_node=H].
    #[arg(long, value_name = "OPTIONS", value_parser = parse_numa, requires = "payload")]
    numa: Vec<NumaNodeConfig>,
    /// virtio-blk disk (repeatable): path=FILE[,readonly=on][,cache=none|writeback][,queues=N]
    /// [,queue_size=N][,iothread=NAME|cpus:LIST|NAME:cpus:LIST][,numa_node=N][,serial=ID]
    /// [,id=NAME][,poll_us=N].
    #[arg(long, value_name = "OPTIONS", value_parser = parse_disk, requires = "payload")]
    disk: Vec<DiskConfig>,
    /// Serial console (COM1): tty, off, or file=PATH.
    #[arg(long, default_value = "tty", value_parser = parse_serial, requires = "payload")]
    serial: SerialConfig,
    /// At exit, print every counter (Keel's exits by kind and device, KVM's per vCPU and per
    /// VM, each disk's I/O) on stderr as a table and as one `keel-stats: {JSON}` line.
    #[arg(long)]
    stats: bool,
    /// While the VM runs, print the counters' rates every SECONDS on stderr, busiest first
    /// (a kvm_stat-style view). Not with --api-socket (GET /api/v1/vm.counters instead).
    #[arg(
        long,
        value_name = "SECONDS",
        value_parser = parse_interval,
        conflicts_with = "api_socket"
    )]
    stats_interval: Option<std::time::Duration>,
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(long, default_value = "warn", value_parser = parse_log_level)]
    log_level: log::LevelFilter,
    /// Seccomp filters on the vCPU and I/O threads: on (a call outside a thread's list is
    /// refused with EPERM), log (allowed, and logged by the kernel), off.
    #[arg(long, default_value = "on", value_parser = parse_seccomp)]
    seccomp: SeccompMode,
}

fn parse_restore(s: &str) -> Result<PathBuf, String> {
    let url = s.strip_prefix("source_url=").unwrap_or(s);
    vmm::snapshot::path_from_url(url).map_err(|e| e.to_string())
}

fn parse_seccomp(s: &str) -> Result<SeccompMode, String> {
    SeccompMode::parse(s)
        .ok_or_else(|| format!("invalid seccomp mode '{s}': expected on, log or off"))
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

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && (0.1..=86400.0).contains(v))
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| format!("invalid interval '{s}': expected seconds from 0.1 to 86400"))
}

fn parse_log_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("unknown log level '{s}' (off, error, warn, info, debug, trace)"))
}

fn parse_serial(s: &str) -> Result<SerialConfig, String> {
    SerialConfig::parse(s).map_err(|e| e.to_string())
}

/// `PATH` or, as Cloud Hypervisor writes it, `path=PATH`.
fn parse_api_socket(s: &str) -> Result<PathBuf, String> {
    let path = s.strip_prefix("path=").unwrap_or(s);
    if path.is_empty() {
        return Err("empty socket path".to_string());
    }
    Ok(PathBuf::from(path))
}

/// Raised by SIGINT/SIGTERM, for `keel stat` and `keel bench`, which look at it.
static STOP: AtomicBool = AtomicBool::new(false);
/// The descriptor of the [`StopEvent`] SIGINT/SIGTERM trigger (-1 before [`stop_event`]).
static STOP_FD: AtomicI32 = AtomicI32::new(-1);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signum: libc::c_int) {
    SIGNAL.store(signum, Ordering::Relaxed);
    STOP.store(true, Ordering::Release);
    let fd = STOP_FD.load(Ordering::Acquire);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is 8 readable bytes, as an eventfd
        // wants, and `fd` is the stop eventfd, which lives until the process exits.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// The event SIGINT and SIGTERM trigger once [`install_stop_handlers`] ran: the handlers
/// write its eventfd, and the waiters (the vCPU wait, the API server) block on it. Exits 1
/// with a message if it cannot be created.
fn stop_event() -> Result<&'static StopEvent, ExitCode> {
    match StopEvent::new() {
        Ok(stop) => {
            // Leaked on purpose: the handlers may run until the process exits.
            let stop: &'static StopEvent = Box::leak(Box::new(stop));
            STOP_FD.store(stop.as_raw_fd(), Ordering::Release);
            Ok(stop)
        }
        Err(e) => {
            err_line!("keel: error: cannot create the stop eventfd: {e}");
            Err(ExitCode::from(1))
        }
    }
}

/// Ignores SIGXFSZ: under a file-size limit (`ulimit -f`) a guest write or console output past
/// it must fail with EFBIG (an I/O error for the guest, dropped console output) instead of
/// killing keel.
fn ignore_file_size_signal() {
    // SAFETY: setting a standard signal's disposition to SIG_IGN installs no handler code.
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        log::warn!("cannot ignore SIGXFSZ; a write past the file-size limit would kill keel");
    }
}

/// SIGINT, SIGTERM and SIGHUP (the terminal went away) raise [`STOP`] and trigger the
/// [`stop_event`], if there is one: keel stops cleanly and removes its API socket.
fn install_stop_handlers() {
    for signum in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to atomics and calls write(2), which are
        // async-signal-safe; the sigaction struct is fully initialised.
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

/// clap's message up to its usage hint, joined into one line.
fn clap_error_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let message = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    message.trim_start_matches("error: ").to_string()
}

/// The command line of a command of its own (`P`) from `args`, or the exit code to end with:
/// 0 once clap's help or version is on stdout, `usage` after one line on stderr, `name` first
/// (clap's error, or the usage where clap would print the whole help for want of arguments).
fn parse_command<P: Parser>(
    name: &str,
    args: impl IntoIterator<Item = std::ffi::OsString>,
    usage: u8,
) -> Result<P, ExitCode> {
    P::try_parse_from(args).map_err(|e| {
        if !e.use_stderr() {
            // --help and --version: clap's own text on stdout.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            let usage = P::command().render_usage().to_string();
            let usage = usage.trim_start_matches("Usage: ");
            err_line!("{name}: usage: {usage} (see {name} --help)");
        } else {
            err_line!("{name}: {}", clap_error_line(&e));
        }
        ExitCode::from(usage)
    })
}

fn error_chain(err: &dyn std::error::Error) -> String {
    vmm::api::routes::error_chain(err)
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

/// The entry of a command of its own (`keel stat`, `keel bench`, `keel remote`): it gets the
/// arguments with the command's name taken out.
type CommandMain = fn(std::vec::IntoIter<std::ffi::OsString>) -> ExitCode;

fn main() -> ExitCode {
    let command: Option<CommandMain> =
        match std::env::args_os().nth(1).as_ref().and_then(|a| a.to_str()) {
            Some("stat") => Some(stat::main),
            Some("bench") => Some(bench::main),
            Some("remote") => Some(remote::main),
            _ => None,
        };
    if let Some(command) = command {
        let mut args: Vec<_> = std::env::args_os().collect();
        args.remove(1);
        return command(args.into_iter());
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            err_line!("keel: {}", clap_error_line(&e));
            return ExitCode::from(1);
        }
        Err(e) => {
            // --help / --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    logger::init(cli.log_level);
    vmm::seccomp::set_mode(cli.seccomp);
    if let Err(e) = vmm::seccomp::apply(vmm::seccomp::ThreadKind::Vmm) {
        err_line!("keel: error: {}", error_chain(&e));
        return ExitCode::from(1);
    }
    ignore_file_size_signal();
    if let Some(path) = cli.api_socket.clone() {
        return api_main(cli, &path);
    }
    let stop = match stop_event() {
        Ok(stop) => stop,
        Err(code) => return code,
    };
    install_stop_handlers();
    let built = match (&cli.restore, vm_config(&cli)) {
        (Some(source), _) => restore_vm(source),
        (None, Some(config)) => Vm::create(&config),
        (None, None) => {
            err_line!("keel: error: --kernel or --firmware is required");
            return ExitCode::from(1);
        }
    };
    let mut running = match built.and_then(Vm::start) {
        Ok(vm) => vm,
        Err(e) => {
            err_line!("keel: error: {}", error_chain(&e));
            return ExitCode::from(1);
        }
    };
    let outcome = match cli.stats_interval {
        None => running.wait(Some(stop)),
        Some(interval) => wait_printing_rates(&mut running, stop, interval),
    };
    if cli.stats {
        print_stats(&running.counters());
    }
    drop(running);
    log_peak_rss();
    exit_code(outcome)
}

/// The VM saved at `source`, ready to run on.
fn restore_vm(source: &std::path::Path) -> Result<Vm, VmError> {
    let snap = SnapshotFile::open(source)?;
    let (vm, report) = Vm::restore(&snap)?;
    log::info!(
        "restored {} bytes of guest RAM from {} in {:.3} s",
        report.ram_bytes,
        source.display(),
        report.ram_time.as_secs_f64()
    );
    Ok(vm)
}

/// Waits for the VM to end, printing a `keel-rates:` view every `interval`.
fn wait_printing_rates(
    running: &mut RunningVm,
    stop: &StopEvent,
    interval: std::time::Duration,
) -> VmOutcome {
    let mut prev = running.counters();
    loop {
        if let Some(outcome) = running.wait_for(Some(stop), interval) {
            return outcome;
        }
        let now = running.counters();
        let secs = now.taken.duration_since(prev.taken).as_secs_f64();
        let rows = stats_view::rates(
            &stats_view::flatten(&prev),
            &stats_view::flatten(&now),
            secs,
        );
        err_text!("keel-rates:\n{}", stats_view::rate_table(&rows, 25));
        prev = now;
    }
}

/// keel's exit code for how the VM ended, with the line that explains it.
fn exit_code(outcome: VmOutcome) -> ExitCode {
    match outcome {
        VmOutcome::PowerOff => {
            log::info!("guest powered off");
            ExitCode::SUCCESS
        }
        VmOutcome::Stopped => {
            err_line!("keel: stopped by {}", signal_name());
            ExitCode::SUCCESS
        }
        VmOutcome::Reset(cause) => {
            err_line!("keel: guest reset ({cause:?}); Keel does not reboot guests, VM stopped");
            ExitCode::from(3)
        }
        VmOutcome::Fatal(msg) => {
            err_line!("keel: error: {msg}");
            ExitCode::from(1)
        }
    }
}

/// The VM of the command line, if `--kernel` or `--firmware` was given.
fn vm_config(cli: &Cli) -> Option<VmConfig> {
    let payload = match (&cli.firmware, &cli.kernel) {
        (Some(firmware), _) => PayloadConfig {
            firmware: Some(firmware.clone()),
            ..PayloadConfig::default()
        },
        (None, Some(kernel)) => PayloadConfig {
            kernel: kernel.clone(),
            initramfs: cli.initramfs.clone(),
            cmdline: cli.cmdline.clone(),
            firmware: None,
        },
        (None, None) => return None,
    };
    Some(VmConfig {
        cpus: cli.cpus.clone(),
        memory: cli.memory.clone(),
        payload,
        serial: cli.serial.clone(),
        disks: cli.disk.clone(),
        numa: cli.numa.clone(),
    })
}

fn print_stats(counters: &VmCounters) {
    err_text!("{}", stats_view::table(counters));
    err_line!("keel-stats: {}", stats_view::json(counters));
}

fn signal_name() -> &'static str {
    match SIGNAL.load(Ordering::Relaxed) {
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "SIGTERM",
    }
}

/// `keel --api-socket PATH [--kernel ...]`: serves the API until `vmm.shutdown` (exit 0) or
/// SIGINT/SIGTERM (exit 0); a guest that powers off or resets leaves keel serving, its VM in
/// state `Shutdown`. Exit 1 if the socket or the command line's VM cannot be set up.
fn api_main(cli: Cli, path: &std::path::Path) -> ExitCode {
    let server = match ApiServer::bind(path) {
        Ok(server) => server,
        Err(e) => {
            err_line!("keel: error: {}", error_chain(&e));
            return ExitCode::from(1);
        }
    };
    let stop = match stop_event() {
        Ok(stop) => stop,
        Err(code) => return code,
    };
    install_stop_handlers();
    let mut state = ApiState::new();
    let handle = match (&cli.restore, vm_config(&cli)) {
        (Some(source), _) => Some(VmHandle::restore(source).map(|(vm, _)| vm)),
        (None, Some(config)) => Some(VmHandle::create(&config)),
        (None, None) => None,
    };
    if let Some(handle) = handle {
        let booted = handle.and_then(|mut vm| vm.boot().map(|()| vm));
        match booted {
            Ok(vm) => {
                let config = vm.config().cloned().unwrap_or_default();
                state.adopt(config, vm);
            }
            Err(e) => {
                err_line!("keel: error: {}", error_chain(&e));
                return ExitCode::from(1);
            }
        }
    }
    log::info!("api: serving on {}", server.path().display());
    let served = server.serve(&mut state, stop);
    state.stop_vm();
    if cli.stats {
        if let Some(counters) = state.counters() {
            print_stats(&counters);
        }
    }
    drop(state);
    drop(server);
    log_peak_rss();
    match served {
        Ok(Served::VmmShutdown) => {
            log::info!("api: vmm.shutdown");
            ExitCode::SUCCESS
        }
        Ok(Served::Interrupted) => {
            err_line!("keel: stopped by {}", signal_name());
            ExitCode::SUCCESS
        }
        Err(e) => {
            err_line!("keel: error: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}
