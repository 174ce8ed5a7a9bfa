//! Per-thread seccomp filters (rust-vmm's `seccompiler`, as Firecracker and Cloud Hypervisor
//! use) for the threads that handle what a guest or a client controls: each vCPU thread, each
//! I/O thread and each API connection's thread (which parses what a client sends) may make only
//! the system calls its work needs; anything else is refused with
//! `EPERM`. The thread that builds and runs VMs (keel's main thread, which also serves the
//! API) gets the broad [`ThreadKind::Vmm`] filter: what building a VM takes, and what every
//! thread it starts needs (they inherit it), but no new programs, processes, mounts,
//! namespaces, tracing or other processes' memory. Firecracker kills the process instead;
//! here a refused call surfaces as the error it causes (an I/O error to the guest, a logged
//! failure), and keel stays stoppable.
//!
//! The mode is process-wide ([`set_mode`], `keel --seccomp=off|log|on`, default on): `log`
//! allows everything but has the kernel log each call a filter would refuse (the audit log,
//! `dmesg`), to find what a new code path needs. The lists were taken from `strace -f` of
//! guests exercising every device path (probe and Linux guests: boot, virtio-blk reads,
//! writes, flushes, discards, BAR moves, MSI-X, device reset, pause, stop).
//!
//! Threads apply their filter themselves, first thing ([`apply`]); a filter is kept for the
//! thread's life and inherited by threads it starts. Only the `Vmm` thread starts threads;
//! theirs then apply on top of it (a call passes only if both allow it). The `vmm` library
//! never filters a thread it did not start: an embedder applies `Vmm` itself if it wants it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What the filters do with a call they do not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// No filters.
    Off,
    /// Allowed, and logged by the kernel.
    Log,
    /// Refused with `EPERM`.
    #[default]
    On,
}

impl SeccompMode {
    /// `off`, `log` or `on`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "off" => Some(SeccompMode::Off),
            "log" => Some(SeccompMode::Log),
            "on" => Some(SeccompMode::On),
            _ => None,
        }
    }
}

/// Which filter a thread gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs KVM_RUN and the device emulation of exits (including device activation, which
    /// sets up io_uring and eventfds, and BAR and MSI-X changes, which are KVM ioctls).
    Vcpu,
    /// An I/O thread: epoll, io_uring and the synchronous block I/O calls.
    Io,
    /// An API connection's thread: socket reads and writes with timeouts, nothing else.
    ApiConnection,
    /// The thread that builds, runs and stops VMs and serves the API: everything the others
    /// may do, plus files, memory placement, threads, sockets and signals.
    Vmm,
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules do not compile (a bug in this module).
    #[error("cannot build the {kind:?} seccomp filter")]
    Build {
        /// The filter.
        kind: ThreadKind,
        /// The cause.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("cannot install the {kind:?} seccomp filter")]
    Install {
        /// The filter.
        kind: ThreadKind,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

static MODE: AtomicU8 = AtomicU8::new(2);

/// Sets the mode for threads that start from now on.
pub fn set_mode(mode: SeccompMode) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

/// The current mode.
pub fn mode() -> SeccompMode {
    match MODE.load(Ordering::Relaxed) {
        0 => SeccompMode::Off,
        1 => SeccompMode::Log,
        _ => SeccompMode::On,
    }
}

/// Installs `kind`'s filter on the calling thread, in the current mode.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let mismatch = match mode() {
        SeccompMode::Off => return Ok(()),
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::On => SeccompAction::Errno(libc::EPERM as u32),
    };
    for filter in programs(kind, mismatch)? {
        install(&filter).map_err(|source| SeccompError::Install { kind, source })?;
    }
    Ok(())
}

/// A compiled filter, and whether the kernel logs the calls it does not allow.
struct Filter {
    program: BpfProgram,
    log_refusals: bool,
}

/// `kind`'s filters: its list of allowed calls, and for the VMM thread a second filter that
/// answers `clone3` with `ENOSYS`. `clone3` passes its flags behind a pointer a filter cannot
/// read, so the C library falls back to `clone`, whose flags the first filter checks (threads
/// only, no new processes); that answer is routine, so it is not logged.
fn programs(kind: ThreadKind, mismatch: SeccompAction) -> Result<Vec<Filter>, SeccompError> {
    let mut programs = vec![Filter {
        program: build(kind, mismatch.clone())?,
        log_refusals: true,
    }];
    if kind == ThreadKind::Vmm {
        let answer = match mismatch {
            SeccompAction::Log => SeccompAction::Log,
            _ => SeccompAction::Errno(libc::ENOSYS as u32),
        };
        let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
        programs.push(Filter {
            program: compile(kind, rules, SeccompAction::Allow, answer)?,
            log_refusals: false,
        });
    }
    Ok(programs)
}

/// Installs `filter` on the calling thread, with `SECCOMP_FILTER_FLAG_LOG` if it logs its
/// refusals (seccompiler's `apply_filter` logs none), after `PR_SET_NO_NEW_PRIVS`, which
/// installing a filter requires.
fn install(filter: &Filter) -> std::io::Result<()> {
    let program = &filter.program;
    let flags = if filter.log_refusals {
        libc::SECCOMP_FILTER_FLAG_LOG
    } else {
        0
    };
    let len = u16::try_from(program.len())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the kernel copies the `len` instructions `fprog` points to (a live Vec of
    // seccompiler's `sock_filter`, laid out as the kernel's) and keeps no pointer to them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Calls every Keel thread may make: memory, futexes, signals, reads and writes of its
/// descriptors (eventfds, the log), time, and its own end.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_restart_syscall,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// What a vCPU thread adds: KVM ioctls (the `0xAE` type), and device activation and reset
/// (io_uring rings, eventfds, the I/O thread's epoll set).
const VCPU: &[libc::c_long] = &[
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_register,
    libc::SYS_io_uring_enter,
    libc::SYS_eventfd2,
    libc::SYS_epoll_ctl,
    libc::SYS_dup,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// What an I/O thread adds: its event loop, io_uring, and the synchronous engine's block I/O.
const IO: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_eventfd2,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
];

/// What an API connection's thread adds: receiving and sending on its socket, the socket's
/// timeouts, and shutting down its sending side.
const API_CONNECTION: &[libc::c_long] = &[
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_shutdown,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// What the VMM thread adds to every other thread's calls (its threads inherit its filter):
/// opening disk images, kernels and /proc or /sys files; guest RAM (memfd, hugetlbfs, NUMA
/// policy); starting (`clone` is allowed for threads only, see [`programs`]), naming, pinning,
/// filtering and signalling threads; the API socket (made, linked into place, removed); the
/// event loop; OFD locks (through
/// `fcntl`).
const VMM: &[libc::c_long] = &[
    libc::SYS_openat,
    libc::SYS_getdents64,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_ftruncate,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_chmod,
    libc::SYS_fchmodat,
    libc::SYS_memfd_create,
    libc::SYS_mbind,
    libc::SYS_set_mempolicy,
    libc::SYS_get_mempolicy,
    libc::SYS_clone3,
    libc::SYS_prctl,
    libc::SYS_seccomp,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_setscheduler,
    libc::SYS_tgkill,
    libc::SYS_rt_sigaction,
    libc::SYS_epoll_create1,
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_getsockname,
    // The API socket, linked into place once it listens.
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_prlimit64,
    libc::SYS_uname,
    // Live snapshots: write-protecting guest RAM and copying the pages written.
    libc::SYS_userfaultfd,
];

/// The `ioctl` type byte of KVM's requests (`_IO(0xAE, n)` and friends).
const KVM_IOCTL_TYPE: u64 = 0xAE;
/// The `ioctl` type byte of block-device requests (BLKDISCARD, BLKZEROOUT, BLKGETSIZE64).
const BLOCK_IOCTL_TYPE: u64 = 0x12;
/// The `ioctl` type byte of terminal and generic file requests (TCGETS, TCSETS, TIOCGWINSZ,
/// FIONBIO).
const TERMINAL_IOCTL_TYPE: u64 = 0x54;
/// The `ioctl` type byte of userfaultfd requests (UFFDIO_*), for live snapshots.
const UFFD_IOCTL_TYPE: u64 = 0xAA;

/// `ioctl(fd, request, ...)` only for requests of type `ty` (bits 8-15 of the request).
fn ioctl_of_type(ty: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(0xff00),
        ty << 8,
    )?])
}

/// `clone(flags, ...)` only with `CLONE_THREAD` in `flags`: a thread, not a process.
fn clone_thread() -> Result<SeccompRule, seccompiler::BackendError> {
    let thread = libc::CLONE_THREAD as u64;
    SeccompRule::new(vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(thread),
        thread,
    )?])
}

/// `ioctl(fd, FIONBIO, ...)` only (a socket's blocking mode).
fn ioctl_fionbio() -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::FIONBIO,
    )?])
}

fn build(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let err = |source| SeccompError::Build { kind, source };
    let (extra, ioctl): (&[&[libc::c_long]], _) = match kind {
        ThreadKind::Vcpu => (&[VCPU], vec![ioctl_of_type(KVM_IOCTL_TYPE)]),
        ThreadKind::Io => (&[IO], vec![ioctl_of_type(BLOCK_IOCTL_TYPE)]),
        ThreadKind::ApiConnection => (&[API_CONNECTION], vec![ioctl_fionbio()]),
        ThreadKind::Vmm => (
            &[VCPU, IO, API_CONNECTION, VMM],
            [
                KVM_IOCTL_TYPE,
                BLOCK_IOCTL_TYPE,
                TERMINAL_IOCTL_TYPE,
                UFFD_IOCTL_TYPE,
            ]
            .into_iter()
            .map(ioctl_of_type)
            .collect(),
        ),
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(extra.iter().flat_map(|list| list.iter()))
        .map(|&nr| (nr, Vec::new()))
        .collect();
    let ioctl = ioctl.into_iter().collect::<Result<Vec<_>, _>>();
    rules.insert(libc::SYS_ioctl, ioctl.map_err(err)?);
    if kind == ThreadKind::Vmm {
        rules.insert(libc::SYS_clone, vec![clone_thread().map_err(err)?]);
    }
    compile(kind, rules, mismatch, SeccompAction::Allow)
}

/// Compiles `rules` into a filter taking `on_match` for calls they match, `mismatch` for the
/// others.
fn compile(
    kind: ThreadKind,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let err = |source| SeccompError::Build { kind, source };
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(err)?;
    let filter = SeccompFilter::new(rules, mismatch, on_match, arch).map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a new thread with `kind`'s filter in force (mode On).
    fn filtered<T: Send + 'static>(kind: ThreadKind, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            for filter in programs(kind, SeccompAction::Errno(libc::EPERM as u32)).unwrap() {
                install(&filter).unwrap();
            }
            f()
        })
        .join()
        .unwrap()
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn a_forbidden_call_is_refused_and_allowed_ones_work() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Io] {
            let (socket, socket_errno, eventfd_ok) = filtered(kind, || {
                // SAFETY: plain system calls on fresh descriptors; nothing of ours is passed.
                let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                let e = errno();
                // SAFETY: as above.
                let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
                let one = 1u64.to_ne_bytes();
                // SAFETY: writes 8 bytes from a live buffer to the eventfd just made.
                let ok = fd >= 0 && unsafe { libc::write(fd, one.as_ptr().cast(), 8) } == 8;
                // SAFETY: closes the eventfd just made.
                unsafe { libc::close(fd) };
                (s, e, ok)
            });
            assert_eq!((socket, socket_errno), (-1, libc::EPERM), "{kind:?}");
            assert!(eventfd_ok, "{kind:?}: eventfd refused");
        }
    }

    #[test]
    fn ioctls_are_limited_to_their_type() {
        let (tty, tty_errno) = filtered(ThreadKind::Vcpu, || {
            let mut ws = [0u16; 4];
            // SAFETY: TIOCGWINSZ on stdin with a buffer of the size it writes.
            let rc = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, ws.as_mut_ptr()) };
            (rc, errno())
        });
        assert_eq!((tty, tty_errno), (-1, libc::EPERM));
        // KVM's own requests pass (the file is opened before the filter, as Keel does).
        let Ok(kvm) = std::fs::File::open("/dev/kvm") else {
            eprintln!("skipped the KVM half: no /dev/kvm");
            return;
        };
        let version = filtered(ThreadKind::Vcpu, move || {
            // SAFETY: KVM_GET_API_VERSION (_IO(0xAE, 0)) on an open /dev/kvm takes no argument.
            unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&kvm), 0xAE00, 0) }
        });
        assert_eq!(version, 12, "KVM_GET_API_VERSION");
    }

    #[test]
    fn a_connection_thread_may_use_its_socket_and_open_nothing() {
        use std::io::{Read, Write};
        let (mut mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        // Sent before the filtered thread starts (`filtered` waits for it to end).
        mine.write_all(b"hello").unwrap();
        let (echoed, open_errno) = filtered(ThreadKind::ApiConnection, move || {
            let mut theirs = theirs;
            theirs.set_nonblocking(false).unwrap();
            theirs
                .set_read_timeout(Some(std::time::Duration::from_secs(60)))
                .unwrap();
            let mut buf = [0u8; 5];
            theirs.read_exact(&mut buf).unwrap();
            theirs.write_all(&buf).unwrap();
            theirs.shutdown(std::net::Shutdown::Write).unwrap();
            let opened = std::fs::File::open("/etc/hostname");
            (buf, opened.err().and_then(|e| e.raw_os_error()))
        });
        let mut back = Vec::new();
        mine.read_to_end(&mut back).unwrap();
        assert_eq!((echoed, back.as_slice()), (*b"hello", &b"hello"[..]));
        assert_eq!(open_errno, Some(libc::EPERM), "open refused");
    }

    #[test]
    fn the_vmm_thread_may_build_vms_and_start_threads_but_no_program_or_process() {
        let (opened, socket_ok, thread_ran, exec_errno, fork) = filtered(ThreadKind::Vmm, || {
            let opened = std::fs::File::open("/proc/self/status").is_ok();
            let path = std::env::temp_dir().join(format!("keel-seccomp-{}", std::process::id()));
            let socket = std::os::unix::net::UnixListener::bind(&path);
            let _ = std::fs::remove_file(&path);
            // A thread starts (clone3 answers ENOSYS, the C library falls back to clone).
            let thread_ran = std::thread::spawn(|| 7).join().ok() == Some(7);
            let path = c"/nonexistent-keel-program";
            let argv = [path.as_ptr(), std::ptr::null()];
            // SAFETY: execve with a NUL-terminated path and argv, a null envp; the path does
            // not exist, so even unfiltered it returns (ENOENT) instead of replacing the test.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), std::ptr::null()) };
            let exec_errno = errno();
            // SAFETY: fork; should a child appear (the filter failed), it exits at once
            // without touching the parent's state.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: the child ends here.
                unsafe { libc::_exit(0) };
            }
            (
                opened,
                socket.is_ok(),
                thread_ran,
                exec_errno,
                (pid, errno()),
            )
        });
        assert!(
            opened && socket_ok && thread_ran,
            "{opened} {socket_ok} {thread_ran}"
        );
        assert_eq!(exec_errno, libc::EPERM, "execve refused");
        assert_eq!(fork, (-1, libc::EPERM), "fork refused");
    }

    #[test]
    fn log_mode_allows_what_on_refuses() {
        let fd = std::thread::spawn(|| {
            for filter in programs(ThreadKind::Io, SeccompAction::Log).unwrap() {
                install(&filter).unwrap();
            }
            // SAFETY: a plain system call making a fresh descriptor.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) }
        })
        .join()
        .unwrap();
        assert!(fd >= 0, "socket refused in log mode");
        // SAFETY: closes the descriptor just made.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn modes_parse() {
        assert_eq!(SeccompMode::parse("on"), Some(SeccompMode::On));
        assert_eq!(SeccompMode::parse("log"), Some(SeccompMode::Log));
        assert_eq!(SeccompMode::parse("off"), Some(SeccompMode::Off));
        assert_eq!(SeccompMode::parse("yes"), None);
    }
}
