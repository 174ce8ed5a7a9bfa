//! Helpers shared by the guest tests: locating `keel` and the probe images, running a VM with
//! a timeout, waiting for events (a line keel or the guest prints, a file's contents, a
//! condition) with a hang guard as the only time bound, parsing the probe's JSON lines, and
//! building tiny hand-assembled test kernels.

#![allow(dead_code)]

pub mod api;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The `keel` binary: $KEEL_BIN or target/release/keel (built by `make test`).
pub fn keel_bin() -> PathBuf {
    let path = std::env::var_os("KEEL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/keel"));
    assert!(
        path.is_file(),
        "{} missing: run the tests through `make test`",
        path.display()
    );
    path
}

/// A probe image: $KEEL_PROBE_DIR/NAME or build/probe/NAME (built by `make probe`).
pub fn probe_image(name: &str) -> PathBuf {
    let dir = std::env::var_os("KEEL_PROBE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/probe"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} missing: run `make probe` first",
        path.display()
    );
    path
}

/// Whether KVM here is PVM (no VT-x, CPL0 code emulated).
pub fn is_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// What a finished keel run left behind.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The probe's JSON lines (lines of stdout that start with '{').
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| l.trim_start().starts_with('{'))
            .map(|l| {
                serde_json::from_str(l.trim())
                    .unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}\n{}", self.describe()))
            })
            .collect()
    }

    /// The report of command `cmd` (the first one).
    pub fn report(&self, cmd: &str) -> Value {
        self.json_lines()
            .into_iter()
            .find(|v| v["cmd"] == cmd)
            .unwrap_or_else(|| panic!("no {cmd:?} report\n{}", self.describe()))
    }

    pub fn describe(&self) -> String {
        format!(
            "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// Asserts keel exited 0 and the probe ended with {"done":true}.
    pub fn assert_probe_done(&self) {
        assert_eq!(self.code(), Some(0), "keel failed\n{}", self.describe());
        let last = self.json_lines().pop();
        assert_eq!(
            last,
            Some(serde_json::json!({"done": true})),
            "{}",
            self.describe()
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.describe());
    }

    /// Asserts keel was stopped by `signal` ("SIGTERM", "SIGINT") while the probe still ran:
    /// exit 0 with keel's message, the probe's JSON lines parse, and it never printed its final
    /// `done` line (it had neither finished nor failed).
    pub fn assert_probe_stopped_by(&self, signal: &str) {
        assert_eq!(self.code(), Some(0), "keel failed\n{}", self.describe());
        assert!(
            self.stderr.contains(&format!("stopped by {signal}")),
            "{}",
            self.describe()
        );
        assert!(
            self.json_lines().iter().all(|v| v.get("done").is_none()),
            "{}",
            self.describe()
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.describe());
    }
}

/// Starts keel with `args`, stdin closed.
pub fn spawn_keel(args: &[&str]) -> Child {
    Command::new(keel_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keel")
}

/// Waits for `child` up to `timeout`; kills it (and fails the test) past that.
pub fn finish(child: Child, timeout: Duration) -> Run {
    Watched::new(child).finish(timeout)
}

/// The bound on waiting for something that takes a second or two when nothing is broken (a
/// guest's first console line, a VM stopping, a device thread appearing). Only a hung or
/// broken keel reaches it, even on a loaded PVM host; no test's outcome depends on its length.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// For each thread of the process at `proc_dir` (`/proc/PID`): its name and the value of
/// `field` in its `status` (`Seccomp`, `Cpus_allowed_list`, ...). Empty once the process is
/// gone; a thread that ends while being read is left out.
pub fn thread_status(proc_dir: &str, field: &str) -> Vec<(String, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("{proc_dir}/task")) else {
        return Vec::new();
    };
    let prefix = format!("{field}:");
    tasks
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            let value = status
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))?
                .trim()
                .to_string();
            Some((comm.trim().to_string(), value))
        })
        .collect()
}

/// How many complete (newline-terminated) lines of `bytes` contain `needle`. A line still
/// being printed does not count: the guest or keel may be stopped in the middle of it.
pub fn lines_with(bytes: &[u8], needle: &str) -> usize {
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => &bytes[..end],
        None => return 0,
    };
    String::from_utf8_lossy(complete)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// The probe's `boot` line, as a needle for [`Watched::wait_stdout`] or [`wait_for_file`].
pub const BOOT_LINE: &str = "{\"cmd\":\"boot\"";

/// A probe command line for a guest that never ends on its own within any test: the `boot`
/// line first (the event "the guest runs"), then a spin of an hour. Tests stop it themselves
/// (SIGTERM, `shutdown`), so nothing depends on how long anything takes.
pub const RUNS_UNTIL_STOPPED: &str = "probe.cmd=boot probe.cmd=spin:ms=3600000";

/// Like [`RUNS_UNTIL_STOPPED`], but the guest keeps exiting to Keel's userspace by itself
/// while it runs: after its `boot` line it reads the ACPI PM timer (a port Keel emulates) 10^7
/// times per command, 30 times over (at least minutes even at 1 us a read; hours on PVM hosts,
/// where a read costs 50-75 us), then spins for an hour. So "the guest made progress" is a
/// counter that moves (its userspace exits), whatever the host's timer tick does, and a guest
/// that runs while it should not shows up within milliseconds.
pub fn busy_until_stopped() -> String {
    let mut cmdline = String::from("probe.cmd=boot");
    for _ in 0..30 {
        cmdline.push_str(" probe.cmd=clock:source=pmtimer,reads=10000000");
    }
    cmdline.push_str(" probe.cmd=spin:ms=3600000");
    cmdline
}

/// Polls `ready` (every 10 ms) until it gives a value; fails the test with `what` if that
/// takes longer than `timeout` (a hang guard: the poll interval and the bound only decide
/// when a broken run is reported, never whether a working one passes).
pub fn wait_until<T>(what: &str, timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the file at `path` has a complete line containing `needle` (e.g. a console
/// line the guest printed to a serial file); returns its text then.
pub fn wait_for_file(path: &Path, needle: &str, timeout: Duration) -> String {
    wait_until(&format!("{needle} in {}", path.display()), timeout, || {
        std::fs::read_to_string(path)
            .ok()
            .filter(|text| lines_with(text.as_bytes(), needle) > 0)
    })
}

/// Runs `f` on a thread of its own and returns what it returns; fails the test if it has not
/// returned within `timeout` (a hang guard for a call that blocks, such as stopping a VM whose
/// guest would otherwise run for an hour). A panic in `f` is the test's panic.
pub fn within<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(timeout) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: did not return within {timeout:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
    }
}

/// What a child printed on one stream so far.
struct Collected {
    bytes: Vec<u8>,
    /// Until EOF.
    open: bool,
}

/// What a child printed so far.
struct Output {
    stdout: Collected,
    stderr: Collected,
}

impl Output {
    fn stream(&mut self, stream: Stream) -> &mut Collected {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Stream {
    Stdout,
    Stderr,
}

/// A running keel whose stdout and stderr are collected as they arrive, so that a test can
/// wait for a line it prints (an event) and still get all of its output in the final [`Run`].
/// Killed if dropped unfinished.
pub struct Watched {
    child: Option<Child>,
    output: Arc<(Mutex<Output>, Condvar)>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Watched {
    /// Starts keel with `args` (as [`spawn_keel`]) and watches its output.
    pub fn spawn(args: &[&str]) -> Watched {
        Watched::new(spawn_keel(args))
    }

    /// Watches `child`, whose stdout and stderr must be piped.
    pub fn new(mut child: Child) -> Watched {
        let open = || Collected {
            bytes: Vec::new(),
            open: true,
        };
        let output = Arc::new((
            Mutex::new(Output {
                stdout: open(),
                stderr: open(),
            }),
            Condvar::new(),
        ));
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let readers = vec![
            Self::reader(stdout, Stream::Stdout, Arc::clone(&output)),
            Self::reader(stderr, Stream::Stderr, Arc::clone(&output)),
        ];
        Watched {
            child: Some(child),
            output,
            readers,
        }
    }

    fn reader(
        mut pipe: impl Read + Send + 'static,
        stream: Stream,
        output: Arc<(Mutex<Output>, Condvar)>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = pipe.read(&mut buf).unwrap_or(0);
                let (lock, changed) = &*output;
                let mut out = lock.lock().unwrap_or_else(|e| e.into_inner());
                let collected = out.stream(stream);
                collected.bytes.extend_from_slice(&buf[..n]);
                collected.open = n > 0;
                changed.notify_all();
                if n == 0 {
                    return;
                }
            }
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What keel has printed on stdout so far.
    pub fn stdout_now(&self) -> String {
        let out = self.output.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&out.stdout.bytes).into_owned()
    }

    /// Whether keel has exited.
    pub fn has_exited(&mut self) -> bool {
        let child = self.child.as_mut().expect("running");
        child.try_wait().expect("wait keel").is_some()
    }

    /// Sends `signal` to keel.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: signals the process this test spawned and has not reaped yet.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Waits until keel's stdout has a complete line containing `needle` (e.g. the guest's
    /// [`BOOT_LINE`]).
    pub fn wait_stdout(&mut self, needle: &str, timeout: Duration) {
        self.wait_for(Stream::Stdout, needle, 1, timeout);
    }

    /// Waits until keel's stdout has `count` complete lines containing `needle`.
    pub fn wait_stdout_lines(&mut self, needle: &str, count: usize, timeout: Duration) {
        self.wait_for(Stream::Stdout, needle, count, timeout);
    }

    /// Waits until keel's stderr has `count` complete lines containing `needle`.
    pub fn wait_stderr(&mut self, needle: &str, count: usize, timeout: Duration) {
        self.wait_for(Stream::Stderr, needle, count, timeout);
    }

    /// Fails the test (after killing keel, with all it printed) if the stream ends or
    /// `timeout` passes before `count` complete lines contain `needle`.
    fn wait_for(&mut self, stream: Stream, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (lock, changed) = &*self.output;
        let mut out = lock.lock().unwrap_or_else(|e| e.into_inner());
        let why = loop {
            let collected = out.stream(stream);
            if lines_with(&collected.bytes, needle) >= count {
                return;
            }
            if !collected.open {
                break "the output ended";
            }
            let now = Instant::now();
            if now >= deadline {
                break "timed out";
            }
            out = changed
                .wait_timeout(out, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(out);
        let run = self.collect(true);
        panic!(
            "waiting for {count} line(s) with {needle:?} on keel's {stream:?} (at most \
             {timeout:?}): {why}\n{}",
            run.describe()
        );
    }

    /// Waits for keel to exit (after the guest ended, a signal or an API request); kills it
    /// and fails the test if that takes longer than `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Run {
        let start = Instant::now();
        loop {
            if self.has_exited() {
                return self.collect(false);
            }
            if start.elapsed() > timeout {
                let run = self.collect(true);
                panic!("keel did not finish within {timeout:?}\n{}", run.describe());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reaps keel (killing it first if `kill`) and gathers all it printed.
    fn collect(&mut self, kill: bool) -> Run {
        let mut child = self.child.take().expect("running");
        if kill {
            let _ = child.kill();
        }
        let status = child.wait().expect("wait keel");
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let out = self.output.0.lock().unwrap_or_else(|e| e.into_inner());
        Run {
            status,
            stdout: String::from_utf8_lossy(&out.stdout.bytes).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr.bytes).into_owned(),
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs keel with `args` to completion ([`HANG_GUARD`] limit).
pub fn run_keel(args: &[&str]) -> Run {
    finish(spawn_keel(args), HANG_GUARD)
}

/// Boots a probe image with `cmdline`, `cpus` vCPUs and `memory`.
pub fn run_probe(image: &str, cpus: u32, memory: &str, cmdline: &str) -> Run {
    let kernel = probe_image(image);
    let cpus = format!("boot={cpus}");
    let memory = format!("size={memory}");
    run_keel(&[
        "--kernel",
        kernel.to_str().expect("utf-8 path"),
        "--cpus",
        &cpus,
        "--memory",
        &memory,
        "--cmdline",
        cmdline,
    ])
}

/// Writes a minimal ELF64 kernel whose only segment is `code`, loaded and entered at 1 MiB
/// in 64-bit mode (no PVH note). Returns its path.
pub fn tiny_kernel(name: &str, code: &[u8]) -> PathBuf {
    const ENTRY: u64 = 0x10_0000;
    let mut img = Vec::new();
    img.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    img.extend_from_slice(&[0; 8]);
    img.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    img.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    img.extend_from_slice(&1u32.to_le_bytes());
    img.extend_from_slice(&ENTRY.to_le_bytes());
    img.extend_from_slice(&64u64.to_le_bytes()); // phoff
    img.extend_from_slice(&0u64.to_le_bytes()); // shoff
    img.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 0, 0, 0] {
        img.extend_from_slice(&v.to_le_bytes());
    }
    // PT_LOAD, R+X, file offset 0x1000.
    img.extend_from_slice(&1u32.to_le_bytes());
    img.extend_from_slice(&5u32.to_le_bytes());
    for v in [
        0x1000u64,
        ENTRY,
        ENTRY,
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ] {
        img.extend_from_slice(&v.to_le_bytes());
    }
    img.resize(0x1000, 0);
    img.extend_from_slice(code);
    let dir = std::env::temp_dir().join(format!("keel-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    // Tests run in parallel and may write the same kernel while another keel reads it: write a
    // private file and rename it into place, so readers only ever see a complete image.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{seq}.tmp"));
    std::fs::write(&tmp, img).expect("write tiny kernel");
    std::fs::rename(&tmp, &path).expect("rename tiny kernel into place");
    path
}

/// x86-64 code: print `text` on COM1 (port 0x3f8) with `out`.
fn print_on_com1(text: &[u8]) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for &b in text {
        code.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
    }
    code
}

/// x86-64 code: print `text` on COM1, then `hlt` forever (only a signal or a shutdown ends
/// the VM).
pub fn print_and_halt(text: &[u8]) -> Vec<u8> {
    let mut code = print_on_com1(text);
    code.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    code
}

/// x86-64 code: print `text` on COM1 (port 0x3f8) with `out`, then power off through
/// Keel's ACPI PM1a_CNT (0x606, SLP_TYP 5 | SLP_EN), then `hlt` forever.
pub fn print_and_poweroff(text: &[u8]) -> Vec<u8> {
    let mut code = print_on_com1(text);
    code.extend_from_slice(&[0x66, 0xba, 0x06, 0x06]); // mov dx, 0x606
    code.extend_from_slice(&[0x66, 0xb8, 0x00, 0x34]); // mov ax, 0x3400
    code.extend_from_slice(&[0x66, 0xef]); // out dx, ax
    code.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    code
}
