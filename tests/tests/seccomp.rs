//! `--seccomp`: a running keel's main thread carries the VMM filter, which every thread it
//! starts inherits, and its vCPU, I/O and API connection threads one more filter each of their
//! own (the kernel's `Seccomp_filters` in /proc); `--seccomp=off` installs none; a bad mode is
//! one line and exit 1. That the filters refuse what they should is the unit tests' part
//! (`vmm/src/seccomp.rs`, real system calls on filtered threads); that they allow what Keel
//! needs is every other guest test, which runs with the default (on).

mod common;

use common::*;

/// Runs the busy probe guest with a disk and `extra` arguments until it has booted, and
/// returns how many seccomp filters each of its threads has (then stops it with SIGTERM).
fn filters_while_running(tag: &str, extra: &[&str]) -> Vec<(String, String)> {
    let disk = std::env::temp_dir().join(format!("keel-seccomp-{tag}-{}.img", std::process::id()));
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(1 << 20))
        .expect("create the disk image");
    let kernel = probe_image("probe.elf");
    let disk_arg = format!("path={}", disk.display());
    let cmdline = busy_until_stopped();
    let mut args = vec![
        "--kernel",
        kernel.to_str().expect("utf-8 path"),
        "--cpus",
        "boot=2",
        "--memory",
        "size=128M",
        "--disk",
        &disk_arg,
        "--cmdline",
        &cmdline,
    ];
    args.extend_from_slice(extra);
    let mut keel = Watched::spawn(&args);
    keel.wait_stdout(BOOT_LINE, HANG_GUARD);
    // A thread shows its creator's name until it first runs and names itself: wait until the
    // two vCPU threads and the disk's I/O thread have (a hang guard, not a margin).
    let proc_dir = format!("/proc/{}", keel.pid());
    let modes = wait_until("every vCPU and I/O thread named", HANG_GUARD, || {
        let modes = thread_status(&proc_dir, "Seccomp_filters");
        let named = |prefix: &str| modes.iter().filter(|(n, _)| n.starts_with(prefix)).count();
        (named("keel-vcpu") == 2 && named("disk0-") == 1).then_some(modes)
    });
    keel.signal(libc::SIGTERM);
    let run = keel.finish(HANG_GUARD);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let _ = std::fs::remove_file(disk);
    modes
}

/// The filter count of keel's main thread (named `keel`) among `modes`; at least one.
fn main_thread_filters(modes: &[(String, String)]) -> u32 {
    let main = modes
        .iter()
        .find(|(n, _)| n == "keel")
        .and_then(|(_, m)| m.parse::<u32>().ok());
    match main {
        Some(n) if n >= 1 => n,
        _ => panic!("the main thread has no filter: {modes:?}"),
    }
}

#[test]
fn every_thread_is_filtered_and_vcpu_and_io_threads_once_more() {
    let modes = filters_while_running("on", &[]);
    let vmm = main_thread_filters(&modes);
    let own_filter = |name: &str| name.starts_with("keel-vcpu") || name.starts_with("disk0-");
    let vcpus = modes
        .iter()
        .filter(|(n, _)| n.starts_with("keel-vcpu"))
        .count();
    let io = modes
        .iter()
        .filter(|(n, _)| n.starts_with("disk0-"))
        .count();
    assert_eq!((vcpus, io), (2, 1), "{modes:?}");
    // Kernel workers (KVM's kvm-nx-lpage-recovery, io_uring's iou-wrk) inherit the filters
    // of the thread that started them; they make no system calls.
    let kernel_worker = |name: &str| name.starts_with("kvm-") || name.starts_with("iou-");
    for (name, count) in modes.iter().filter(|(n, _)| !kernel_worker(n)) {
        let want = if own_filter(name) { vmm + 1 } else { vmm };
        assert_eq!(count, &want.to_string(), "thread {name}: {modes:?}");
    }
}

#[test]
fn seccomp_off_installs_no_filter() {
    let modes = filters_while_running("off", &["--seccomp", "off"]);
    assert!(
        modes.iter().any(|(n, _)| n.starts_with("keel-vcpu")),
        "{modes:?}"
    );
    assert!(modes.iter().all(|(_, m)| m == "0"), "{modes:?}");
}

#[test]
fn a_bad_mode_is_one_line_and_a_failure() {
    let run = run_keel(&["--seccomp", "strict", "--kernel", "/nonexistent"]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    assert_eq!(
        run.stderr.trim_end().lines().count(),
        1,
        "{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("invalid seccomp mode 'strict'"),
        "{}",
        run.describe()
    );
}

#[test]
fn an_api_connection_is_read_on_a_filtered_thread() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let socket = std::env::temp_dir().join(format!("keel-seccomp-api-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let keel = Watched::spawn(&["--api-socket", socket.to_str().expect("utf-8 path")]);
    let mut conn = wait_until("keel listening on its API socket", HANG_GUARD, || {
        UnixStream::connect(&socket).ok()
    });
    // Half a request: the connection's thread waits for the rest.
    conn.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n")
        .expect("send half a request");
    // The thread applies its filter first thing (a hang guard, not a margin: without its own
    // filter, it never shows one more than the main thread).
    let proc_dir = format!("/proc/{}", keel.pid());
    let (modes, vmm) = wait_until("a filtered connection thread", HANG_GUARD, || {
        let modes = thread_status(&proc_dir, "Seccomp_filters");
        let vmm = main_thread_filters(&modes);
        let own = (vmm + 1).to_string();
        let seen = modes.iter().any(|(n, m)| n == "keel-api-conn" && *m == own);
        seen.then_some((modes, vmm))
    });
    for (name, count) in modes.iter().filter(|(n, _)| n != "keel-api-conn") {
        assert_eq!(count, &vmm.to_string(), "thread {name}: {modes:?}");
    }
    // The request is read and answered through the filter.
    conn.write_all(b"Host: x\r\n\r\n").expect("send the rest");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 200 \r\n"), "{answer}");
    keel.signal(libc::SIGTERM);
    let run = keel.finish(HANG_GUARD);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
}
