//! Guest console output can never wedge keel: a console nobody reads does not stop SIGTERM
//! from ending it, and a FIFO with no reader is refused at once instead of hanging keel in
//! open(2).

mod common;

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use common::*;

/// x86-64 code: print 'x' on COM1 forever.
const PRINT_FOREVER: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'x', // mov al, 'x'
    0xee, // out dx, al
    0xeb, 0xfb, // jmp back to `mov al`
];

/// A FIFO in the temp dir, removed on drop.
struct Fifo(PathBuf);

impl Fifo {
    fn new(tag: &str) -> Fifo {
        let path = std::env::temp_dir().join(format!("keel-console-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let c = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        Fifo(path)
    }

    /// Opens the read end without waiting for a writer, shrunk to one page of buffer, and
    /// never reads it.
    fn open_unread_reader(&self) -> OwnedFd {
        let c = CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: open(2) on a NUL-terminated path; the descriptor is owned from here on.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
        assert!(fd >= 0, "open FIFO for reading");
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: F_SETPIPE_SZ on the pipe we own; no memory is passed.
        assert!(unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, 4096) } >= 4096);
        owned
    }

    fn arg(&self) -> String {
        format!("file={}", self.0.display())
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_console_nobody_reads_does_not_stop_sigterm() {
    let fifo = Fifo::new("unread");
    let _reader = fifo.open_unread_reader();
    let kernel = tiny_kernel("print-forever.elf", PRINT_FOREVER);
    let serial = fifo.arg();
    let mut keel = Watched::spawn(&["--kernel", kernel.to_str().unwrap(), "--serial", &serial]);
    // The FIFO's page fills, then keel's console buffer: from then on guest output is dropped
    // (and the guest keeps running) instead of blocking the vCPU in write(2).
    keel.wait_stderr("guest output is being dropped", 1, HANG_GUARD);
    keel.signal(libc::SIGTERM);
    let run = keel.finish(HANG_GUARD);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert!(
        run.stderr
            .contains("bytes of guest console output were dropped"),
        "{}",
        run.describe()
    );
}

#[test]
fn a_fifo_without_a_reader_is_refused_at_once() {
    let fifo = Fifo::new("noreader");
    let kernel = tiny_kernel("print-forever.elf", PRINT_FOREVER);
    let serial = fifo.arg();
    let run = run_keel(&["--kernel", kernel.to_str().unwrap(), "--serial", &serial]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{}", run.describe());
    assert!(
        errors[0].contains("a FIFO needs a reader"),
        "{}",
        run.describe()
    );
}

#[test]
fn keel_lines_into_a_closed_pipe_do_not_panic() {
    // `keel ... --stats 2>&1 >/dev/null | head -c1`: the reader of keel's stderr (its stats
    // table, its log lines) is gone before keel writes; it must still exit 0 on poweroff.
    let kernel = tiny_kernel("print-poweroff.elf", &print_and_poweroff(b"bye\n"));
    let mut child = std::process::Command::new(keel_bin())
        .args([
            "--kernel",
            kernel.to_str().unwrap(),
            "--stats",
            "--log-level",
            "info",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn keel");
    drop(child.stderr.take());
    let status = within("keel with a closed stderr", HANG_GUARD, move || {
        child.wait().expect("wait keel")
    });
    assert_eq!(status.code(), Some(0), "{status:?}");
}
