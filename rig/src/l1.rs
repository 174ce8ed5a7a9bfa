//! The nested rig's L1 from the host's side: QEMU's TCG with `-cpu max` (AMD SVM) boots the
//! Debian cloud kernel with the rig's initramfs and payload disk (resources/rig/build.sh);
//! inside, kvm_amd gives an ordinary KVM and `keel-rig run` runs the scenarios named on L1's
//! kernel command line. This side relays the `RIG-` lines, keeps the rest of L1's console for
//! a failure report, bounds the whole run, and prints the closing `N passed, N failed`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;

use crate::error::{check, RigError};
use crate::l1_monitor::Monitor;
use crate::{say, scenarios};

/// L1 console lines kept for a failure report.
const TAIL: usize = 60;

/// L1's vCPUs: one. With two, QEMU's TCG (7.2 and 10.0 alike) now and then corrupts a nested
/// guest's state. Measured here with two: 2 of 24 nested boots of 2-4 vCPUs failed, one looping
/// forever from a garbage RIP (KVM in L1 emulating an instruction and injecting a #PF 22.8
/// million times in 900 s), one triple-faulting, and L1's own kernel died once in a keel vCPU
/// thread. With one L1 vCPU, 24 of 24 such boots passed. Nested guests still get several vCPUs
/// (threads of L1).
pub const L1_CPUS: u32 = 1;

/// L1's kernel runs its local APIC timer periodically (no tickless idle, no high-resolution
/// one-shot programming). QEMU's TCG now and then leaves an interrupt pending in L1's local
/// APIC without the vCPU noticing: seen here twice in about 30 minutes of rig runs, L1 sat
/// with its timer vector (236) in IRR, PPR 0x10, EFLAGS.IF set, and nothing ran for minutes;
/// once halted, once with a nested guest on the vCPU. Any new interrupt wakes it (a key
/// press from the monitor did, within a second). A one-shot timer is re-armed only by its own
/// handler, so a lost timer interrupt stalled L1 for good; a periodic timer keeps
/// interrupting, and each interrupt makes QEMU re-read the APIC, so such a stall ends at the
/// next tick.
const L1_TIMER: &str = "nohz=off highres=off";

/// Seconds between L1's `RIG-ALIVE` lines (resources/rig/init-l1 prints them).
const HEARTBEAT: u64 = 30;

/// Default longest silence from L1: several missed heartbeats, so that a busy L1 (one vCPU
/// running a 4-vCPU nested guest) is not taken for a stalled one.
const SILENCE: u64 = 10 * HEARTBEAT;

/// Options of `keel-rig l1`.
#[derive(Args, Clone)]
pub struct L1Args {
    /// The rig's directory: vmlinuz, initramfs.cpio.gz, payload.img.
    #[arg(long)]
    pub rig_dir: PathBuf,
    /// Host QEMU that runs L1.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub host_qemu: PathBuf,
    /// L1's vCPUs (more than one is unreliable, see `L1_CPUS`).
    #[arg(long, default_value_t = L1_CPUS)]
    pub cpus: u32,
    /// L1's memory.
    #[arg(long, default_value = "8G")]
    pub memory: String,
    /// Longest the whole L1 run may take, in seconds.
    #[arg(long, default_value_t = 3000)]
    pub timeout: u64,
    /// Longest L1 may print nothing, in seconds (its init prints `RIG-ALIVE` every
    /// `HEARTBEAT` seconds): past it L1 is reported stalled, with its registers, and killed.
    #[arg(long, default_value_t = SILENCE)]
    pub silence: u64,
    /// Print L1's whole console.
    #[arg(long)]
    pub verbose: bool,
    /// Scenarios to run (all if none).
    pub names: Vec<String>,
}

impl L1Args {
    /// The defaults, for `keel-rig test`.
    pub fn for_test(rig_dir: &Path, host_qemu: &Path, verbose: bool, names: &[String]) -> Self {
        L1Args {
            rig_dir: rig_dir.to_path_buf(),
            host_qemu: host_qemu.to_path_buf(),
            cpus: L1_CPUS,
            memory: "8G".into(),
            timeout: 3000,
            silence: SILENCE,
            verbose,
            names: names.to_vec(),
        }
    }

    fn qemu_args(&self, monitor: &str) -> Vec<String> {
        let f = |n: &str| self.rig_dir.join(n).display().to_string();
        let mut append = format!("console=ttyS0 loglevel=5 panic=-1 {L1_TIMER}");
        if !self.names.is_empty() {
            append.push_str(&format!(" rig.scenarios={}", self.names.join(",")));
        }
        [
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-machine",
            "pc",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-serial",
            "stdio",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "-monitor".into(),
            monitor.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
            "-m".into(),
            self.memory.clone(),
            "-kernel".into(),
            f("vmlinuz"),
            "-initrd".into(),
            f("initramfs.cpio.gz"),
            "-append".into(),
            append,
            "-drive".into(),
            format!(
                "file={},if=none,id=payload,format=raw,cache=unsafe",
                f("payload.img")
            ),
            "-device".into(),
            "virtio-blk-pci,drive=payload".into(),
        ])
        .collect()
    }
}

/// What L1 reported.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    exit: Option<String>,
    fatal: Option<String>,
    running: Option<String>,
    /// System calls keel's seccomp filters refused or logged in L1.
    seccomp: usize,
}

impl Tally {
    fn take(&mut self, line: &str) {
        let mut words = line.split(' ');
        match words.next() {
            Some("RIG-START") => self.running = words.next().map(str::to_string),
            Some("RIG-RESULT") => {
                match words.nth(1) {
                    Some("PASS") => self.passed += 1,
                    _ => self.failed += 1,
                }
                self.running = None;
            }
            Some("RIG-EXIT") => self.exit = words.next().map(str::to_string),
            Some("RIG-FATAL") => self.fatal = Some(line.to_string()),
            Some("RIG-SECCOMP") => self.seccomp += 1,
            _ => {}
        }
    }
}

/// Boots L1, relays its results; `Ok(true)` when every scenario asked for passed.
pub fn run(args: &L1Args) -> Result<bool, RigError> {
    let expected = scenarios::select(&args.names)?.len();
    for f in ["vmlinuz", "initramfs.cpio.gz", "payload.img"] {
        let p = args.rig_dir.join(f);
        check(p.exists(), || {
            format!("{} is missing: build the rig first (make rig)", p.display())
        })?;
    }
    crate::qemu_version::require_recent(&args.host_qemu)?;
    let monitor = Monitor::new();
    let mut child = Command::new(&args.host_qemu)
        .args(args.qemu_args(&monitor.qemu_arg()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| RigError::Spawn {
            program: args.host_qemu.display().to_string(),
            source,
        })?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                let l = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout);
    let mut tally = Tally::default();
    let mut tail = VecDeque::new();
    let mut timed_out = None;
    let silence = Duration::from_secs(args.silence);
    loop {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(silence);
        match rx.recv_timeout(wait) {
            Ok(line) => relay(args, &line, &mut tally, &mut tail),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let stalled = Instant::now() < deadline;
                timed_out = Some(Stop { stalled });
                if stalled {
                    tail.push_back(format!("(L1 printed nothing for {} s)", args.silence));
                    tail.extend(monitor.report(child.id()));
                }
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child
        .wait()
        .map_err(crate::error::io("cannot wait for", &args.host_qemu))?;
    say(format!(
        "keel-rig: L1 ran {:.0} s ({status})",
        started.elapsed().as_secs_f64()
    ));
    let problem = problem(&tally, expected, timed_out, args);
    if let Some(p) = &problem {
        say(format!("keel-rig: {p}; the last lines of L1's console:"));
        for l in &tail {
            say(format!("L1| {l}"));
        }
    }
    let failed = tally.failed + usize::from(problem.is_some() && tally.failed == 0);
    say(format!("{} passed, {failed} failed", tally.passed));
    Ok(problem.is_none() && tally.failed == 0)
}

fn relay(args: &L1Args, line: &str, tally: &mut Tally, tail: &mut VecDeque<String>) {
    tally.take(line);
    if args.verbose || (line.starts_with("RIG-") && !line.starts_with("RIG-ALIVE")) {
        say(line);
    }
    if tail.len() == TAIL {
        tail.pop_front();
    }
    tail.push_back(line.chars().take(400).collect());
}

/// Why L1 was killed: it stopped printing, or the whole run took too long.
#[derive(Clone, Copy)]
struct Stop {
    stalled: bool,
}

/// What went wrong with the L1 run as a whole, if anything.
fn problem(t: &Tally, expected: usize, stop: Option<Stop>, args: &L1Args) -> Option<String> {
    if let Some(f) = &t.fatal {
        return Some(format!("L1 failed: {f}"));
    }
    if let Some(stop) = stop {
        let during = t.running.as_deref().unwrap_or("no scenario");
        return Some(if stop.stalled {
            format!(
                "L1 printed nothing for {} s (during {during}): stalled, killed",
                args.silence
            )
        } else {
            format!(
                "L1 ran past {} s (during {during}) and was killed",
                args.timeout
            )
        });
    }
    if t.passed + t.failed != expected {
        return Some(format!(
            "L1 reported {} of {expected} scenarios",
            t.passed + t.failed
        ));
    }
    if t.seccomp > 0 {
        return Some(format!(
            "keel's seccomp filters refused {} system call(s) in L1 (RIG-SECCOMP lines)",
            t.seccomp
        ));
    }
    match t.exit.as_deref() {
        Some("rc=0") | Some("rc=1") => None,
        Some(other) => Some(format!("keel-rig in L1 ended with {other}")),
        None => Some("L1 never reported keel-rig's exit".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_counts_results_and_spots_gaps() {
        let a = L1Args::for_test(Path::new("/r"), Path::new("q"), false, &[]);
        let mut t = Tally::default();
        for l in [
            "RIG-START a",
            "RIG-RESULT a PASS 1.0s ok",
            "RIG-START b",
            "noise",
            "RIG-RESULT b FAIL 2.0s bad",
        ] {
            t.take(l);
        }
        assert_eq!((t.passed, t.failed), (1, 1));
        assert_eq!(
            problem(&t, 2, None, &a).as_deref(),
            Some("L1 never reported keel-rig's exit")
        );
        t.take("RIG-EXIT rc=1");
        assert_eq!(problem(&t, 2, None, &a), None);
        assert!(problem(&t, 3, None, &a).unwrap().contains("2 of 3"));
        t.take("RIG-START c");
        let killed = |stalled| problem(&t, 3, Some(Stop { stalled }), &a).unwrap();
        assert!(killed(false).contains("ran past 3000 s (during c)"));
        assert!(killed(true).contains("nothing for 300 s (during c): stalled"));
        t.take("RIG-SECCOMP audit: type=1326 ... syscall=41");
        assert!(problem(&t, 2, None, &a)
            .unwrap()
            .contains("refused 1 system call"));
        t.seccomp = 0;
        t.take("RIG-FATAL no /dev/kvm");
        assert!(problem(&t, 2, None, &a).unwrap().contains("no /dev/kvm"));
    }

    #[test]
    fn scenario_names_go_on_l1_command_line() {
        let mut a = L1Args::for_test(Path::new("/r"), Path::new("q"), false, &[]);
        assert!(!a.qemu_args("m").iter().any(|s| s.contains("rig.scenarios")));
        a.names = vec!["x".into(), "y".into()];
        let args = a.qemu_args("unix:/m,server=on,wait=off");
        assert!(args
            .windows(2)
            .any(|w| w == ["-monitor", "unix:/m,server=on,wait=off"]));
        assert!(
            args.iter().any(|s| s.ends_with("rig.scenarios=x,y")),
            "{args:?}"
        );
        assert!(args.contains(
            &"file=/r/payload.img,if=none,id=payload,format=raw,cache=unsafe".to_string()
        ));
    }
}
