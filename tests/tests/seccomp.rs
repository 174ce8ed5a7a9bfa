//! `--seccomp`: a running keel's vCPU, I/O and API connection threads carry a seccomp filter
//! (the kernel's `Seccomp: 2` in /proc), other threads none; `--seccomp=off` installs none; a bad mode is
//! one line and exit 1. That the filters refuse what they should is the unit tests' part
//! (`vmm/src/seccomp.rs`, real system calls on filtered threads); that they allow what Keel
//! needs is every other guest test, which runs with the default (on).

mod common;

use common::*;

/// Runs the busy probe guest with a disk and `extra` arguments until it has booted, and
/// returns its threads' seccomp modes (then stops it with SIGTERM).
fn modes_while_running(tag: &str, extra: &[&str]) -> Vec<(String, String)> {
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
    let modes = thread_status(&format!("/proc/{}", keel.pid()), "Seccomp");
    keel.signal(libc::SIGTERM);
    let run = keel.finish(HANG_GUARD);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let _ = std::fs::remove_file(disk);
    modes
}

#[test]
fn vcpu_and_io_threads_are_filtered_and_only_they() {
    let modes = modes_while_running("on", &[]);
    let filtered = |name: &str| name.starts_with("keel-vcpu") || name.starts_with("disk0-q");
    let vcpus = modes
        .iter()
        .filter(|(n, _)| n.starts_with("keel-vcpu"))
        .count();
    let io = modes
        .iter()
        .filter(|(n, _)| n.starts_with("disk0-q"))
        .count();
    assert_eq!((vcpus, io), (2, 1), "{modes:?}");
    // KVM's own kernel workers (kvm-nx-lpage-recovery) inherit the mode of the vCPU thread
    // that started them; they make no system calls.
    for (name, mode) in modes.iter().filter(|(n, _)| !n.starts_with("kvm-")) {
        let want = if filtered(name) { "2" } else { "0" };
        assert_eq!(mode, want, "thread {name}: {modes:?}");
    }
}

#[test]
fn seccomp_off_installs_no_filter() {
    let modes = modes_while_running("off", &["--seccomp", "off"]);
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
    // The thread applies its filter first thing (a hang guard, not a margin: unfiltered, it
    // never shows mode 2).
    let proc_dir = format!("/proc/{}", keel.pid());
    let modes = wait_until("a filtered connection thread", HANG_GUARD, || {
        let modes = thread_status(&proc_dir, "Seccomp");
        let seen = modes.iter().any(|(n, m)| n == "keel-api-conn" && m == "2");
        seen.then_some(modes)
    });
    for (name, mode) in modes.iter().filter(|(n, _)| n != "keel-api-conn") {
        assert_eq!(mode, "0", "thread {name}: {modes:?}");
    }
    // The request is read and answered through the filter.
    conn.write_all(b"Host: x\r\n\r\n").expect("send the rest");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    keel.signal(libc::SIGTERM);
    let run = keel.finish(HANG_GUARD);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
}
