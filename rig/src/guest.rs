//! One Keel run of the Linux test guest: what to launch, its console read line by line (and
//! logged to a file), answers typed on keel's stdin, and every wait bounded by one deadline.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{io, RigError};
use crate::report::Report;
use crate::Ctx;

/// How long a keel that ran past its deadline gets to exit after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// Separates steps in the guest's `keel.test=` parameter.
pub const STEP_SEPARATOR: &str = ";";
/// Console lines kept for a run (the guest's output is ours, but never unbounded).
const MAX_LINES: usize = 100_000;
/// Longest line read at once (keel's `keel-stats:` JSON line is the longest, a few KiB per
/// vCPU); a longer one is split.
const MAX_LINE: u64 = 1 << 20;

/// How the kernel is handed to keel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The uncompressed ELF vmlinux, entered through its PVH note.
    Pvh,
    /// The bzImage (64-bit Linux boot protocol).
    BzImage,
}

/// What the guest's init does after its steps (`keel.end=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `poweroff -f`: keel exits 0.
    Poweroff,
    /// `reboot -f`: keel exits 3.
    Reboot,
    /// Sleeps: the scenario stops keel itself.
    Hang,
}

/// A keel command line for the test guest.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Boot path.
    pub kernel: Kernel,
    /// `--cpus` value.
    pub cpus: String,
    /// `--memory` value.
    pub memory: String,
    /// `--disk` values.
    pub disks: Vec<String>,
    /// `--numa` values.
    pub numa: Vec<String>,
    /// The guest's steps (`keel.test=`).
    pub steps: Vec<String>,
    /// The guest's end action.
    pub end: End,
    /// More kernel parameters.
    pub cmdline: Vec<String>,
    /// `--api-socket` path, if the scenario reads counters while the guest runs.
    pub api_socket: Option<PathBuf>,
}

impl Launch {
    /// A guest with `cpus` vCPUs and 1 GiB that runs `steps` and powers off.
    pub fn new(kernel: Kernel, cpus: u32, steps: &[&str]) -> Self {
        Launch {
            kernel,
            cpus: format!("boot={cpus}"),
            memory: "size=1G".into(),
            disks: Vec::new(),
            numa: Vec::new(),
            steps: steps.iter().map(|s| s.to_string()).collect(),
            end: End::Poweroff,
            cmdline: Vec::new(),
            api_socket: None,
        }
    }

    /// The kernel command line.
    pub fn kernel_cmdline(&self) -> String {
        let end = match self.end {
            End::Poweroff => "poweroff",
            End::Reboot => "reboot",
            End::Hang => "hang",
        };
        let mut parts = vec![
            "console=ttyS0".to_string(),
            "panic=-1".into(),
            format!("keel.test={}", self.steps.join(STEP_SEPARATOR)),
            format!("keel.end={end}"),
        ];
        parts.extend(self.cmdline.iter().cloned());
        parts.join(" ")
    }

    /// keel's arguments, with the guest images in `guest_dir`.
    pub fn args(&self, guest_dir: &Path) -> Vec<String> {
        let kernel = match self.kernel {
            Kernel::Pvh => "vmlinux",
            Kernel::BzImage => "vmlinuz",
        };
        let path = |f: &str| guest_dir.join(f).display().to_string();
        let mut a = vec![
            "--kernel".into(),
            path(kernel),
            "--initramfs".into(),
            path("initramfs.cpio.gz"),
            "--cmdline".into(),
            self.kernel_cmdline(),
            "--cpus".into(),
            self.cpus.clone(),
            "--memory".into(),
            self.memory.clone(),
            "--serial".into(),
            "tty".into(),
            "--stats".into(),
            // Debug: a keel stopped by the hang guard logs where each vCPU was.
            "--log-level".into(),
            "debug".into(),
        ];
        for d in &self.disks {
            a.extend(["--disk".into(), d.clone()]);
        }
        for n in &self.numa {
            a.extend(["--numa".into(), n.clone()]);
        }
        if let Some(s) = &self.api_socket {
            a.extend(["--api-socket".into(), s.display().to_string()]);
        }
        a
    }
}

/// How a guest run ended.
#[derive(Debug)]
pub struct Outcome {
    /// keel's exit status.
    pub status: ExitStatus,
    /// The guest's protocol lines.
    pub report: Report,
    /// keel's `keel-stats:` JSON, if it printed one.
    pub stats: Option<serde_json::Value>,
}

impl Outcome {
    /// keel's exit code (`None` if a signal ended it).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// A running keel with the test guest.
pub struct Guest {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<StderrState>>,
    report: Report,
    deadline: Instant,
    budget: Duration,
    label: String,
}

#[derive(Default)]
struct StderrState {
    stats: Option<String>,
    done: bool,
}

impl Guest {
    /// Starts keel for `launch`; its console goes to `<dir>/<label>.console` and its stderr to
    /// `<dir>/<label>.stderr`.
    pub fn start(ctx: &Ctx, dir: &Path, label: &str, launch: &Launch) -> Result<Guest, RigError> {
        Self::spawn(ctx, dir, label, launch.args(&ctx.guest))
    }

    /// Starts keel with `args` as they are (a firmware boot, say), with the console and stderr
    /// logged as [`Guest::start`] does.
    pub fn start_with_args(
        ctx: &Ctx,
        dir: &Path,
        label: &str,
        args: Vec<String>,
    ) -> Result<Guest, RigError> {
        Self::spawn(ctx, dir, label, args)
    }

    /// Starts keel restoring the snapshot at `snapshot` (its configuration, console included,
    /// comes from the file), with `--stats` and debug logs as [`Guest::start`] has.
    pub fn restore(ctx: &Ctx, dir: &Path, label: &str, snapshot: &Path) -> Result<Guest, RigError> {
        let args = vec![
            "--restore".into(),
            format!("source_url=file://{}", snapshot.display()),
            "--stats".into(),
            "--log-level".into(),
            "debug".into(),
        ];
        Self::spawn(ctx, dir, label, args)
    }

    fn spawn(ctx: &Ctx, dir: &Path, label: &str, args: Vec<String>) -> Result<Guest, RigError> {
        let mut child = Command::new(&ctx.keel)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RigError::Spawn {
                program: ctx.keel.display().to_string(),
                source,
            })?;
        let console_log = dir.join(format!("{label}.console"));
        let stderr_log = dir.join(format!("{label}.stderr"));
        std::fs::write(dir.join(format!("{label}.args")), shell_words(&args))
            .map_err(io("cannot write", dir))?;
        let stdout = child.stdout.take();
        let stderr_pipe = child.stderr.take();
        let (tx, lines) = mpsc::channel();
        let console = File::create(&console_log).map_err(io("cannot create", &console_log))?;
        if let Some(out) = stdout {
            thread::spawn(move || forward_lines(out, console, |l| tx.send(l).is_ok()));
        }
        let stderr = Arc::new(Mutex::new(StderrState::default()));
        let file = File::create(&stderr_log).map_err(io("cannot create", &stderr_log))?;
        if let Some(err) = stderr_pipe {
            let state = Arc::clone(&stderr);
            thread::spawn(move || collect_stderr(err, file, state));
        }
        Ok(Guest {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            report: Report::default(),
            deadline: Instant::now() + ctx.guest_timeout,
            budget: ctx.guest_timeout,
            label: label.to_string(),
        })
    }

    /// Reads the console until a line starts with `prefix`, and returns it.
    pub fn wait_for(&mut self, prefix: &str) -> Result<String, RigError> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.report.push_line(&line);
                    if line.starts_with(prefix) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Err(self.timed_out(prefix)),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.reap()?;
                    return Err(RigError::Ended {
                        what: format!("'{prefix}' from {}", self.label),
                        status: describe(&status),
                    });
                }
            }
        }
    }

    /// Types `line` (and a newline) on keel's stdin, the guest's COM1.
    pub fn send_line(&mut self, line: &str) -> Result<(), RigError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| RigError::Check("stdin closed".into()))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(io("cannot write to keel's stdin for", &self.label))
    }

    /// Sends `signal` to keel.
    pub fn signal(&mut self, signal: i32) -> Result<(), RigError> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, which is not reaped yet (we own `child` and only
        // wait for it in `reap`), so the pid still names it.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io("cannot signal keel of", &self.label)(
                std::io::Error::last_os_error(),
            ))
        }
    }

    /// Reads the console to its end and waits for keel to exit.
    pub fn finish(mut self) -> Result<Outcome, RigError> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.report.push_line(&line),
                Err(RecvTimeoutError::Timeout) => return Err(self.timed_out("keel to exit")),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = self.reap()?;
        let stats = self.stats_json()?;
        Ok(Outcome {
            status,
            report: std::mem::take(&mut self.report),
            stats,
        })
    }

    fn stats_json(&self) -> Result<Option<serde_json::Value>, RigError> {
        let line = self.stderr.lock().ok().and_then(|s| s.stats.clone());
        line.map(|l| {
            serde_json::from_str(&l).map_err(|source| RigError::Json {
                what: "keel-stats",
                source,
            })
        })
        .transpose()
    }

    /// Waits (bounded by the deadline) for keel to exit once its stdout has closed.
    fn reap(&mut self) -> Result<ExitStatus, RigError> {
        while Instant::now() < self.deadline {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(io("cannot wait for", &self.label))?
            {
                self.wait_stderr();
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(self.timed_out("keel to exit after its console closed"))
    }

    /// Gives the stderr reader a moment to take the last lines after keel exited.
    fn wait_stderr(&self) {
        for _ in 0..100 {
            if self.stderr.lock().map(|s| s.done).unwrap_or(true) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops a keel that ran past the deadline: SIGTERM first, so that it prints its counters
    /// and where each vCPU was (into the stderr log), then SIGKILL if it has not exited within
    /// `TERM_GRACE`.
    fn timed_out(&mut self, what: &str) -> RigError {
        let _ = self.signal(libc::SIGTERM);
        let grace = Instant::now() + TERM_GRACE;
        while Instant::now() < grace && matches!(self.child.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.wait_stderr();
        RigError::Timeout {
            what: format!("{what} ({})", self.label),
            secs: self.budget.as_secs(),
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Splits `from` into lines (without `\r\n`), writes each to `log` and hands it to `sink`
/// until the stream ends, `sink` refuses, or `MAX_LINES` were read.
fn forward_lines(from: impl Read, mut log: File, mut sink: impl FnMut(String) -> bool) {
    let mut reader = BufReader::new(from);
    let mut buf = Vec::new();
    for _ in 0..MAX_LINES {
        buf.clear();
        match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        let _ = writeln!(log, "{line}");
        if !sink(line) {
            return;
        }
    }
    // Past the limit: keep draining so keel never blocks on a full pipe.
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
}

fn collect_stderr(from: impl Read, log: File, state: Arc<Mutex<StderrState>>) {
    let s = Arc::clone(&state);
    forward_lines(from, log, move |line| {
        if let Some(json) = line.strip_prefix("keel-stats: ") {
            if let Ok(mut st) = s.lock() {
                st.stats = Some(json.to_string());
            }
        }
        true
    });
    if let Ok(mut st) = state.lock() {
        st.done = true;
    }
}

/// `status` in words.
pub fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".into(),
    }
}

/// Arguments quoted for a shell, to re-run a guest by hand.
fn shell_words(args: &[String]) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    format!("keel {}\n", quoted.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_carries_steps_and_end() {
        let mut l = Launch::new(Kernel::BzImage, 2, &["info", "fio:verify1"]);
        l.end = End::Reboot;
        l.disks.push("path=/x.img".into());
        let a = l.args(Path::new("/g"));
        assert_eq!(a[1], "/g/vmlinuz");
        assert!(a.contains(&"boot=2".to_string()));
        let cmdline = &a[5];
        assert!(cmdline.contains("keel.test=info;fio:verify1"), "{cmdline}");
        assert!(cmdline.contains("keel.end=reboot"), "{cmdline}");
        assert!(a
            .windows(2)
            .any(|w| w[0] == "--disk" && w[1] == "path=/x.img"));
        assert_eq!(
            Launch::new(Kernel::Pvh, 1, &[]).args(Path::new("/g"))[1],
            "/g/vmlinux"
        );
    }

    #[test]
    fn forwarded_lines_drop_carriage_returns() {
        let log = tempfile("fwd");
        let mut got = Vec::new();
        forward_lines(&b"a\r\nb\nc"[..], File::create(&log).unwrap(), |l| {
            got.push(l);
            true
        });
        assert_eq!(got, ["a", "b", "c"]);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "a\nb\nc\n");
    }

    fn tempfile(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("keel-rig-{name}-{}", std::process::id()))
    }
}
