//! keel-rig: Keel's Linux guest suite. `keel-rig run` boots the Debian test guest in keel for
//! each named scenario and checks what the guest and the host see; it needs a KVM that behaves
//! like a production host (VT-x/AMD-V). `keel-rig l1` runs the same scenarios inside the nested
//! rig's L1 (QEMU TCG with `-cpu max` and kvm_amd in it) on hosts without one, in one L1 boot.
//! `keel-rig test` picks between the two. Each scenario prints one `RIG-RESULT` line; the last
//! line is `N passed, N failed`.

mod api;
mod error;
mod guest;
mod image;
mod l1;
mod l1_monitor;
mod qemu_version;
mod report;
mod scenarios;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::{io, RigError};

/// Where a scenario finds keel, the guest and room for its files.
pub struct Ctx {
    /// The keel binary.
    pub keel: PathBuf,
    /// The Linux test guest (`make guest-linux`): vmlinux, vmlinuz, initramfs.cpio.gz.
    pub guest: PathBuf,
    /// Scratch directory, one subdirectory per scenario (O_DIRECT must work there).
    pub work: PathBuf,
    /// QEMU, for the comparison scenario.
    pub qemu: Option<PathBuf>,
    /// The benchmark fio jobs.
    pub fio_jobs: Option<PathBuf>,
    /// The probe guest's images (`make probe`).
    pub probe: Option<PathBuf>,
    /// Compiled probe test binaries (from `tests/`) to run here.
    pub probe_tests: Option<PathBuf>,
    /// The firmware scenarios' files (resources/firmware/rig-disks.sh): CLOUDHV.fd and the
    /// EFI system partition images.
    pub firmware: Option<PathBuf>,
    /// Longest one keel run may take before it is killed (a hang guard, not a measurement).
    pub guest_timeout: Duration,
}

#[derive(Parser)]
#[command(
    name = "keel-rig",
    about = "Keel's Linux guest scenarios, direct or in the nested rig"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Lists the scenarios.
    List,
    /// Runs scenarios here (needs a production-like /dev/kvm).
    Run(RunArgs),
    /// Runs scenarios inside the nested rig's L1 (one boot for all).
    L1(l1::L1Args),
    /// Runs scenarios in the rig on PVM hosts (or without /dev/kvm), directly elsewhere.
    Test {
        #[command(flatten)]
        run: RunArgs,
        /// The rig's directory (resources/rig/build.sh's output), used on PVM hosts.
        #[arg(long)]
        rig_dir: PathBuf,
        /// Host QEMU that runs L1.
        #[arg(long, default_value = "qemu-system-x86_64")]
        host_qemu: PathBuf,
        /// Print L1's whole console.
        #[arg(long)]
        verbose: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The keel binary.
    #[arg(long)]
    keel: PathBuf,
    /// The Linux test guest's directory (make guest-linux).
    #[arg(long)]
    guest: PathBuf,
    /// Scratch directory (not tmpfs: disks use O_DIRECT).
    #[arg(long)]
    work: PathBuf,
    /// QEMU for the comparison scenario.
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// Directory of the benchmark fio jobs.
    #[arg(long)]
    fio_jobs: Option<PathBuf>,
    /// Directory of the probe guest's images.
    #[arg(long)]
    probe: Option<PathBuf>,
    /// Directory of compiled probe test binaries (tests/) to run.
    #[arg(long)]
    probe_tests: Option<PathBuf>,
    /// Directory of the firmware and its disk images (resources/firmware/rig-disks.sh).
    #[arg(long)]
    firmware: Option<PathBuf>,
    /// Longest one keel run may take, in seconds.
    #[arg(long, default_value_t = 900)]
    guest_timeout: u64,
    /// Scenarios to run (all if none).
    names: Vec<String>,
}

impl RunArgs {
    fn ctx(&self) -> Ctx {
        Ctx {
            keel: self.keel.clone(),
            guest: self.guest.clone(),
            work: self.work.clone(),
            qemu: self.qemu.clone(),
            fio_jobs: self.fio_jobs.clone(),
            probe: self.probe.clone(),
            probe_tests: self.probe_tests.clone(),
            firmware: self.firmware.clone(),
            guest_timeout: Duration::from_secs(self.guest_timeout),
        }
    }
}

fn run_here(args: &RunArgs) -> Result<bool, RigError> {
    let list = scenarios::select(&args.names)?;
    std::fs::create_dir_all(&args.work).map_err(io("cannot create", &args.work))?;
    let (passed, failed) = scenarios::run_all(&args.ctx(), &list);
    say(format!("{passed} passed, {failed} failed"));
    Ok(failed == 0)
}

/// Whether this host's KVM is PVM (or absent), where Linux guests need the rig.
fn needs_rig() -> bool {
    Path::new("/sys/module/kvm_pvm").exists() || !Path::new("/dev/kvm").exists()
}

/// Writes one line to stdout; a closed stdout is ignored (the result is the exit code).
pub fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::List => {
            for s in scenarios::all() {
                say(format!("{:<28} {}", s.name, s.about));
            }
            Ok(true)
        }
        Cmd::Run(args) => run_here(args),
        Cmd::L1(args) => l1::run(args),
        Cmd::Test {
            run,
            rig_dir,
            host_qemu,
            verbose,
        } => {
            if needs_rig() {
                say("keel-rig: /dev/kvm here is PVM (or missing): running the scenarios in the nested rig");
                l1::run(&l1::L1Args::for_test(
                    rig_dir, host_qemu, *verbose, &run.names,
                ))
            } else {
                say("keel-rig: running the scenarios directly on this host's KVM");
                run_here(run)
            }
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            say(format!("keel-rig: {}", scenarios::error_chain(&e)));
            ExitCode::FAILURE
        }
    }
}
