//! `keel stat`: KVM's counters of a keel running in another process, in the spirit of
//! kvm_stat. Keel keeps KVM's binary statistics fds open for its VM and every vCPU; they are
//! found by their `/proc/PID/fd` link names (`anon_inode:kvm-vm-stats`,
//! `anon_inode:kvm-vcpu-stats:N`) and copied into this process with `pidfd_getfd(2)`
//! (Linux 5.6+, needs ptrace access to the target: same user with ptrace_scope 0, or root).
//! The VM and vCPU fds themselves would not do: KVM refuses their ioctls from another
//! process (EIO), but a statistics fd is a plain file.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use clap::Parser;
use vmm::stats::kvm::{KvmStats, KvmStatsError};
use vmm::stats::view as stats_view;

use super::{error_chain, install_stop_handlers, parse_interval, STOP};

/// `keel stat --pid PID [--interval SECONDS] [--count N]`: KVM's counters of a running keel.
#[derive(Parser, Debug)]
#[command(
    name = "keel stat",
    bin_name = "keel stat",
    about = "KVM exit counters of a running keel, as rates per second"
)]
struct StatCli {
    /// Process id of the keel to watch.
    #[arg(long)]
    pid: i32,
    /// Seconds between views.
    #[arg(long, default_value = "1", value_parser = parse_interval)]
    interval: std::time::Duration,
    /// Stop after this many views (default: until interrupted).
    #[arg(long)]
    count: Option<u64>,
    /// Rows per view.
    #[arg(long, default_value_t = 25)]
    top: usize,
}

/// Runs `keel stat ARGS...`; `args` starts with the program name, `stat` removed.
pub fn main(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = match crate::parse_command::<StatCli>("keel stat", args, 1) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let remote = match RemoteStats::attach(cli.pid) {
        Ok(r) => r,
        Err(e) => {
            err_line!("keel stat: error: {}", error_chain(&e));
            return ExitCode::from(1);
        }
    };
    install_stop_handlers();
    let mut prev = remote.read();
    let mut at = std::time::Instant::now();
    let mut views = 0;
    while cli.count.is_none_or(|n| views < n) && !STOP.load(Ordering::Acquire) {
        std::thread::sleep(cli.interval);
        if !std::path::Path::new(&format!("/proc/{}", cli.pid)).exists() {
            err_line!("keel stat: process {} has exited", cli.pid);
            break;
        }
        let now = remote.read();
        let secs = at.elapsed().as_secs_f64();
        at = std::time::Instant::now();
        let rows = stats_view::rates(&prev, &now, secs);
        out_line!("{}", stats_view::rate_table(&rows, cli.top));
        prev = now;
        views += 1;
    }
    ExitCode::SUCCESS
}

/// Errors attaching to another keel.
#[derive(Debug, thiserror::Error)]
pub enum RemoteStatsError {
    /// /proc/PID/fd could not be listed.
    #[error("cannot list /proc/{pid}/fd (no such process, or not allowed)")]
    ListFds {
        /// Target.
        pid: i32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The process has no KVM VM statistics fd.
    #[error("process {pid} has no KVM VM statistics open (is it a keel?)")]
    NoVm {
        /// Target.
        pid: i32,
    },
    /// pidfd_open / pidfd_getfd failed.
    #[error("cannot take fd {fd} from process {pid} ({what})")]
    GetFd {
        /// Target.
        pid: i32,
        /// Its fd number (or -1 for pidfd_open).
        fd: i32,
        /// The call.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// KVM statistics could not be opened.
    #[error("cannot read KVM statistics of {what}")]
    Stats {
        /// "the VM" or "vCPU N".
        what: String,
        /// Cause.
        #[source]
        source: KvmStatsError,
    },
}

/// The KVM counters of another process's VM and vCPUs.
pub struct RemoteStats {
    /// ("vm", stats), then ("vcpuN", stats) in vCPU order.
    pub sources: Vec<(String, KvmStats)>,
}

fn syscall_fd(ret: libc::c_long) -> std::io::Result<OwnedFd> {
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd =
        i32::try_from(ret).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl RemoteStats {
    /// Attaches to the keel with process id `pid`.
    pub fn attach(pid: i32) -> Result<Self, RemoteStatsError> {
        let dir = format!("/proc/{pid}/fd");
        let entries =
            std::fs::read_dir(&dir).map_err(|source| RemoteStatsError::ListFds { pid, source })?;
        let mut vm = None;
        let mut vcpus = Vec::new();
        for entry in entries.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            if target == "anon_inode:kvm-vm-stats" {
                vm = Some(fd);
            } else if let Some(n) = target.strip_prefix("anon_inode:kvm-vcpu-stats:") {
                if let Ok(n) = n.parse::<u32>() {
                    vcpus.push((n, fd));
                }
            }
        }
        let vm = vm.ok_or(RemoteStatsError::NoVm { pid })?;
        vcpus.sort_unstable();
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let pidfd = syscall_fd(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) }).map_err(
            |source| RemoteStatsError::GetFd {
                pid,
                fd: -1,
                what: "pidfd_open",
                source,
            },
        )?;
        let take = |fd: i32| {
            // SAFETY: pidfd_getfd takes a pidfd, the target's fd number and flags, and returns
            // a new fd in this process or -1; it does not touch our memory.
            let ret = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
            syscall_fd(ret)
                .map(File::from)
                .map_err(|source| RemoteStatsError::GetFd {
                    pid,
                    fd,
                    what: "pidfd_getfd",
                    source,
                })
        };
        let open = |what: String, fd: i32| -> Result<(String, KvmStats), RemoteStatsError> {
            let file = take(fd)?;
            let stats =
                KvmStats::from_stats_file(file).map_err(|source| RemoteStatsError::Stats {
                    what: what.clone(),
                    source,
                })?;
            Ok((what, stats))
        };
        let mut sources = vec![open("vm".into(), vm)?];
        for (n, fd) in vcpus {
            sources.push(open(format!("vcpu{n}"), fd)?);
        }
        Ok(RemoteStats { sources })
    }

    /// Every counter as `kvm.<name>` (summed over vCPUs) and `kvm.vm.<name>`, the names
    /// Keel's own views use.
    pub fn read(&self) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for (what, stats) in &self.sources {
            let Ok(values) = stats.read() else { continue };
            for (name, v) in values {
                let key = if what == "vm" {
                    format!("kvm.vm.{name}")
                } else {
                    format!("kvm.{name}")
                };
                *out.entry(key).or_insert(0) += v;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_without_kvm_is_refused() {
        let err = RemoteStats::attach(std::process::id() as i32)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                format!(
                    "process {} has no KVM VM statistics open (is it a keel?)",
                    std::process::id()
                )
                .as_str()
            )
        );
        assert!(matches!(
            RemoteStats::attach(i32::MAX),
            Err(RemoteStatsError::ListFds { .. })
        ));
    }

    /// Needs /dev/kvm: reads a real VM's statistics (skipped, saying so, where there is none).
    #[test]
    fn our_own_vm_can_be_read_through_a_pidfd() {
        if !std::path::Path::new("/dev/kvm").exists() {
            err_line!("skipped: no /dev/kvm");
            return;
        }
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm is there but cannot be opened");
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        // Keel keeps these open; so does this test.
        let _vm_stats = KvmStats::open(&vm).unwrap();
        let _vcpu_stats = KvmStats::open(&vcpu).unwrap();
        let remote = RemoteStats::attach(std::process::id() as i32).unwrap();
        let names: Vec<&str> = remote.sources.iter().map(|s| s.0.as_str()).collect();
        // Other tests in this process may have VMs open too.
        assert_eq!(names[0], "vm");
        assert!(names.contains(&"vcpu0"), "{names:?}");
        let flat = remote.read();
        assert!(flat.contains_key("kvm.exits"), "{flat:?}");
        assert!(flat.keys().any(|k| k.starts_with("kvm.vm.")), "{flat:?}");
    }
}
