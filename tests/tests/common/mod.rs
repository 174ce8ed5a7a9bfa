//! Helpers shared by the guest tests: locating `keel` and the probe images, running a VM with
//! a timeout, parsing the probe's JSON lines, and building tiny hand-assembled test kernels.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        text.push_str(&String::from_utf8_lossy(&bytes));
        text
    })
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
pub fn finish(mut child: Child, timeout: Duration) -> Run {
    let out = drain(child.stdout.take().expect("stdout piped"));
    let err = drain(child.stderr.take().expect("stderr piped"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait keel") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let status = child.wait().expect("wait killed keel");
            let run = Run {
                status,
                stdout: out.join().unwrap_or_default(),
                stderr: err.join().unwrap_or_default(),
            };
            panic!("keel did not finish within {timeout:?}\n{}", run.describe());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs keel with `args` to completion (60 s limit).
pub fn run_keel(args: &[&str]) -> Run {
    finish(spawn_keel(args), Duration::from_secs(60))
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

/// x86-64 code: print `text` on COM1 (port 0x3f8) with `out`, then power off through
/// Keel's ACPI PM1a_CNT (0x604, SLP_TYP 5 | SLP_EN), then `hlt` forever.
pub fn print_and_poweroff(text: &[u8]) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for &b in text {
        code.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
    }
    code.extend_from_slice(&[0x66, 0xba, 0x04, 0x06]); // mov dx, 0x604
    code.extend_from_slice(&[0x66, 0xb8, 0x00, 0x34]); // mov ax, 0x3400
    code.extend_from_slice(&[0x66, 0xef]); // out dx, ax
    code.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    code
}
