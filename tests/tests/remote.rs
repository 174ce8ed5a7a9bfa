//! `keel remote` against real keels with the probe guest: a counting guest is pinged, queried,
//! paused and resumed, snapshotted (a path relative to `keel remote`'s directory becomes an
//! absolute `file://` URL; the report comes on stdout), refused a second snapshot over the same
//! file (exit 1, one error line), and stopped with `shutdown-vmm`; a second keel restores the
//! file (Paused until `resume`, and the guest counts on). A VM built from a config file with
//! `create` goes through boot, shutdown and delete. A socket nobody serves is exit 1 with one
//! line, bad usage exit 2 with one line.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{finish, keel_bin, probe_image, wait_until, Run, Watched, HANG_GUARD};
use serde_json::Value;

/// Steps between two lines the counting guest prints.
const COUNTING: &str = "probe.cmd=counter:to=1152921504606846976,every=4194304";
/// A line the counting guest prints.
const COUNTER_LINE: &str = "\"cmd\":\"counter\"";

/// A fresh directory for one test's files.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-remote-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test directory");
    dir
}

/// Runs `keel remote --api-socket SOCKET ARGS...` in `cwd` to completion.
fn remote_in(cwd: &Path, socket: &Path, args: &[&str]) -> Run {
    let child = Command::new(keel_bin())
        .arg("remote")
        .arg("--api-socket")
        .arg(socket)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keel remote");
    finish(child, HANG_GUARD)
}

/// `keel remote` in the test's own directory.
fn remote(socket: &Path, args: &[&str]) -> Run {
    remote_in(Path::new("."), socket, args)
}

/// `keel remote ARGS` succeeds with nothing on stderr: its stdout.
fn ok(socket: &Path, args: &[&str]) -> String {
    let run = remote(socket, args);
    assert_eq!(run.code(), Some(0), "{args:?}\n{}", run.describe());
    assert!(run.stderr.is_empty(), "{args:?}\n{}", run.describe());
    run.stdout
}

/// `keel remote ARGS` is an action: exit 0 and no output at all.
fn action(socket: &Path, args: &[&str]) {
    assert_eq!(ok(socket, args), "", "{args:?} printed something");
}

/// `keel remote ARGS` is a query: its stdout, one JSON document.
fn query(socket: &Path, args: &[&str]) -> Value {
    let out = ok(socket, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"))
}

/// The VM's state, from `keel remote info`.
fn state(socket: &Path) -> String {
    let info = query(socket, &["info"]);
    info["state"]
        .as_str()
        .unwrap_or_else(|| panic!("{info}"))
        .to_string()
}

/// `run` failed with `code`, nothing on stdout and exactly one line on stderr: that line.
fn one_error_line(run: &Run, code: i32) -> String {
    assert_eq!(run.code(), Some(code), "{}", run.describe());
    assert_eq!(run.stdout, "", "{}", run.describe());
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.describe());
    assert!(run.stderr.ends_with('\n'), "{}", run.describe());
    lines[0].to_string()
}

/// `run` failed with exit 1 and one line `keel remote: error: MESSAGE`: the message.
fn error_message(run: &Run) -> String {
    let line = one_error_line(run, 1);
    line.strip_prefix("keel remote: error: ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string()
}

/// Waits until `socket` exists (keel serves it).
fn wait_socket(socket: &Path) {
    wait_until("the API socket", HANG_GUARD, || {
        socket.exists().then_some(())
    });
}

/// `keel remote shutdown-vmm`: `keel` exits 0.
fn shutdown_vmm(socket: &Path, keel: Watched) {
    action(socket, &["shutdown-vmm"]);
    let run = keel.finish(HANG_GUARD);
    assert!(run.status.success(), "{}", run.describe());
}

/// How many counter lines the guest has printed.
fn counted(keel: &Watched) -> usize {
    common::lines_with(keel.stdout_now().as_bytes(), COUNTER_LINE)
}

#[test]
fn remote_drives_a_keel_and_restores_its_snapshot() {
    let dir = temp_dir("drive");
    let socket = dir.join("api.sock");
    let kernel = probe_image("probe.elf");
    let mut keel = Watched::spawn(&[
        "--api-socket",
        socket.to_str().unwrap(),
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "size=256M",
        "--cmdline",
        COUNTING,
    ]);
    keel.wait_stdout(COUNTER_LINE, HANG_GUARD);
    let ping = query(&socket, &["ping"]);
    assert_eq!(ping["pid"].as_u64(), Some(u64::from(keel.pid())), "{ping}");
    assert_eq!(state(&socket), "Running");
    let counters = query(&socket, &["counters"]);
    assert!(counters["vcpus"].is_array(), "{counters}");

    action(&socket, &["pause"]);
    assert_eq!(state(&socket), "Paused");
    action(&socket, &["resume"]);
    assert_eq!(state(&socket), "Running");

    // A path relative to keel remote's directory, which is not keel's.
    let run = remote_in(
        &dir,
        &socket,
        &["snapshot", "vm.snap", "--mode", "paused", "--progress"],
    );
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert!(!run.stderr.contains("error"), "{}", run.describe());
    let report: Value = serde_json::from_str(&run.stdout).expect("the report is JSON");
    assert_eq!(report["mode"], "paused", "{report}");
    let file = dir.join("vm.snap");
    let bytes = std::fs::read(&file).expect("the snapshot is where the relative path says");
    assert_eq!(
        report["file_bytes"].as_u64(),
        Some(bytes.len() as u64),
        "{report}"
    );

    let url = format!("file://{}", file.display());
    let message = error_message(&remote(&socket, &["snapshot", &url]));
    assert!(message.contains("already exists"), "{message}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bytes,
        "the snapshot was touched"
    );

    shutdown_vmm(&socket, keel);

    let socket = dir.join("api2.sock");
    let mut keel = Watched::spawn(&["--api-socket", socket.to_str().unwrap()]);
    wait_socket(&socket);
    let message = error_message(&remote(&socket, &["pause"]));
    assert!(message.contains("no VM"), "{message}");
    action(&socket, &["restore", &url]);
    assert_eq!(state(&socket), "Paused");
    assert_eq!(counted(&keel), 0, "the restored guest ran while Paused");
    action(&socket, &["resume"]);
    assert_eq!(state(&socket), "Running");
    keel.wait_stdout(COUNTER_LINE, HANG_GUARD);
    shutdown_vmm(&socket, keel);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn remote_creates_boots_stops_and_deletes_a_vm() {
    let dir = temp_dir("create");
    let socket = dir.join("api.sock");
    let config = dir.join("vm.json");
    let kernel = probe_image("probe.elf");
    let vm = serde_json::json!({
        "payload": {"kernel": kernel, "cmdline": COUNTING},
        "memory": {"size": 256u64 << 20},
    });
    std::fs::write(&config, vm.to_string()).unwrap();
    let mut keel = Watched::spawn(&["--api-socket", socket.to_str().unwrap()]);
    wait_socket(&socket);
    action(&socket, &["create", config.to_str().unwrap()]);
    assert_eq!(state(&socket), "Created");
    action(&socket, &["boot"]);
    keel.wait_stdout(COUNTER_LINE, HANG_GUARD);
    assert_eq!(state(&socket), "Running");
    action(&socket, &["shutdown"]);
    assert_eq!(state(&socket), "Shutdown");
    action(&socket, &["delete"]);
    let message = error_message(&remote(&socket, &["info"]));
    assert!(message.contains("no VM"), "{message}");
    let message = error_message(&remote(&socket, &["create", "/nonexistent/vm.json"]));
    assert!(
        message.starts_with("cannot read /nonexistent/vm.json"),
        "{message}"
    );
    shutdown_vmm(&socket, keel);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_socket_nobody_serves_is_one_line_and_exit_1() {
    let dir = temp_dir("missing");
    let socket = dir.join("nobody.sock");
    let message = error_message(&remote(&socket, &["ping"]));
    let expected = format!("cannot connect to the API socket {}", socket.display());
    assert!(message.starts_with(&expected), "{message}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_usage_is_one_line_and_exit_2() {
    let socket = Path::new("/nonexistent/api.sock");
    for args in [
        &["frobnicate"][..],
        &[],
        &["snapshot"],
        &["snapshot", "/x", "--mode", "sideways"],
        &["restore", "/x", "--resume=maybe"],
    ] {
        let line = one_error_line(&remote(socket, args), 2);
        assert!(line.starts_with("keel remote: "), "{args:?}: {line}");
    }
    // Without --api-socket, and without anything.
    for (args, needle) in [
        (&["remote", "ping"][..], "--api-socket"),
        (&["remote"], "usage"),
    ] {
        let child = Command::new(keel_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keel remote");
        let line = one_error_line(&finish(child, HANG_GUARD), 2);
        assert!(line.contains(needle), "{args:?}: {line}");
    }
}
