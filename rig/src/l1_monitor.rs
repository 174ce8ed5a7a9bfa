//! What the host can still learn about an L1 that went silent: QEMU's human monitor (on a unix
//! socket) prints L1's vCPU registers, the instructions at its RIP and its local APIC, and
//! /proc tells whether QEMU was spinning or idle. A stalled L1 is then reported with where it
//! stood instead of as a bare timeout.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// Monitor commands whose answers go into a stall report.
const COMMANDS: [&str; 4] = ["info registers", "x/6i $pc", "info lapic", "info irq"];

/// The monitor socket of one L1 run; the file is removed on drop.
pub struct Monitor {
    path: PathBuf,
}

impl Monitor {
    /// A socket path for QEMU's `-monitor unix:PATH,server,nowait`, unique to this process.
    pub fn new() -> Monitor {
        let path = std::env::temp_dir().join(format!("keel-rig-l1-{}.monitor", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Monitor { path }
    }

    /// QEMU's `-monitor` argument.
    pub fn qemu_arg(&self) -> String {
        format!("unix:{},server=on,wait=off", self.path.display())
    }

    /// The report: QEMU's CPU use over two seconds, then each command's answer (or why there
    /// is none). Never fails: each part that cannot be had says so.
    pub fn report(&self, qemu_pid: u32) -> Vec<String> {
        let mut lines = vec![cpu_use(qemu_pid)];
        match self.ask_all() {
            Ok(text) => lines.extend(text.lines().map(|l| l.trim_end().to_string())),
            Err(e) => lines.push(format!("monitor {}: {e}", self.path.display())),
        }
        lines
    }

    fn ask_all(&self) -> std::io::Result<String> {
        let mut s = UnixStream::connect(&self.path)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut text = read_for(&mut s, Duration::from_secs(2));
        for c in COMMANDS {
            s.write_all(format!("{c}\n").as_bytes())?;
            text.push_str(&read_for(&mut s, Duration::from_secs(3)));
        }
        Ok(strip_escapes(&text))
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whatever the monitor sends within `window` (it has no end-of-answer marker).
fn read_for(s: &mut UnixStream, window: Duration) -> String {
    let end = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end && out.len() < 256 * 1024 {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {} // the read timeout: keep listening until the window closes
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The monitor's readline echoes with terminal escapes; keep the printable text.
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte (0x40..=0x7e)
            if chars.next() == Some('[') {
                for d in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&d) {
                        break;
                    }
                }
            }
        } else if c == '\n' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// QEMU's share of one CPU over two seconds, from /proc/PID/stat (utime + stime).
fn cpu_use(pid: u32) -> String {
    let stat = Path::new("/proc").join(pid.to_string()).join("stat");
    let ticks = || -> Option<u64> {
        let s = std::fs::read_to_string(&stat).ok()?;
        let rest = s.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let before = ticks();
    thread::sleep(Duration::from_secs(2));
    match (before, ticks()) {
        (Some(a), Some(b)) => format!(
            "QEMU (L1) used {}% of a CPU over the last 2 s",
            (b.saturating_sub(a)) * 100 / (2 * hz)
        ),
        _ => format!("QEMU (L1) CPU use unknown: cannot read {}", stat.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_carriage_returns_are_dropped() {
        assert_eq!(
            strip_escapes("\u{1b}[K(qemu) info lapic\r\nRIP=1\u{1b}[D\n"),
            "(qemu) info lapic\nRIP=1\n"
        );
    }

    #[test]
    fn an_absent_monitor_is_reported_not_fatal() {
        let m = Monitor {
            path: PathBuf::from("/nonexistent/keel-rig.monitor"),
        };
        let r = m.report(std::process::id());
        assert!(r[0].contains("of a CPU"), "{r:?}");
        assert!(r[1].starts_with("monitor /nonexistent"), "{r:?}");
    }
}
