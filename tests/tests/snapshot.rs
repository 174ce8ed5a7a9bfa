//! Snapshot and restore with real probe guests and the real `keel` binary: a guest counting
//! in memory is snapshotted through the API (`vm.snapshot`), the keel is killed, and a new
//! keel restores it (`--restore`, or `vm.restore` then `vm.resume`). The saved counter lies
//! between the last value printed before the snapshot and the first printed after it; the
//! restored guest goes on from exactly the saved value, and its TSC from where it was. A
//! truncated or corrupted file, or one that is not a snapshot, is refused with one line.

mod common;

use std::path::{Path, PathBuf};

use common::api::request;
use common::{probe_image, run_keel, wait_until, Watched, HANG_GUARD};
use serde_json::Value;
use vmm::snapshot::SnapshotFile;

/// Steps between two lines the counting guest prints (a few milliseconds of counting).
const EVERY: u64 = 1 << 22;
/// Never reached: the guest counts until the test stops it.
const TO: u64 = 1 << 60;

/// A fresh directory for one test's files.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-snapshot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test directory");
    dir
}

/// `PUT path` with a JSON body on the API socket: (status, body).
fn put(socket: &Path, path: &str, body: &Value) -> (u16, String) {
    let answer = request(socket, "PUT", path, Some(&body.to_string()));
    (answer.status, answer.body)
}

fn counter_values(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["cmd"] == "counter")
        .filter_map(|v| Some((v["value"].as_u64()?, v["tsc"].as_u64()?)))
        .collect()
}

/// The counter's guest address, from the guest's first counter line.
fn counter_addr(text: &str) -> u64 {
    let line = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["cmd"] == "counter" && v["addr"].is_string())
        .unwrap_or_else(|| panic!("no counter address line in {text}"));
    let hex = line["addr"].as_str().unwrap().trim_start_matches("0x");
    u64::from_str_radix(hex, 16).expect("hex address")
}

/// Waits until the guest has printed more than `after` counter lines; returns them all.
fn counted_past(keel: &Watched, after: usize) -> Vec<(u64, u64)> {
    wait_until("the guest to print a counter line", HANG_GUARD, || {
        let values = counter_values(&keel.stdout_now());
        (values.len() > after).then_some(values)
    })
}

/// A keel with an API socket running the probe with `cmdline`, `cpus` vCPUs, 256 MiB and
/// `more` options.
fn api_keel(dir: &Path, cmdline: &str, cpus: u32, more: &[&str]) -> (Watched, PathBuf) {
    let socket = dir.join("api.sock");
    let kernel = probe_image("probe.elf");
    let cpus = format!("boot={cpus}");
    let mut args = vec![
        "--api-socket",
        socket.to_str().unwrap(),
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        cmdline,
        "--cpus",
        &cpus,
        "--memory",
        "size=256M",
    ];
    args.extend_from_slice(more);
    (Watched::spawn(&args), socket)
}

/// A keel with an API socket running the counting probe with `cpus` vCPUs.
fn counting_keel(dir: &Path, cpus: u32) -> (Watched, PathBuf) {
    let cmdline = format!("probe.cmd=counter:to={TO},every={EVERY}");
    api_keel(dir, &cmdline, cpus, &[])
}

/// What the first keel saw around its snapshot.
struct Taken {
    file: PathBuf,
    /// The counter's value in the file.
    saved: u64,
    /// The last line printed before the snapshot was asked for.
    before: (u64, u64),
}

/// `vm.snapshot` to `file` in `mode` ("live" or "paused"): its report. `vm.snapshot-status`
/// then tells it is done and went through all of guest RAM.
fn snapshot(socket: &Path, file: &Path, mode: &str) -> Value {
    let (status, body) = put(
        socket,
        "/api/v1/vm.snapshot",
        &serde_json::json!({"destination_url": format!("file://{}", file.display()), "mode": mode}),
    );
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).expect("a JSON report");
    assert_eq!(report["mode"], mode, "{report}");
    assert!(report["ram_bytes"].as_u64().unwrap() > 0, "{report}");
    let status = get(socket, "/api/v1/vm.snapshot-status");
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["mode"], mode, "{status}");
    assert_eq!(status["written_bytes"], status["total_bytes"], "{status}");
    let ram = report["ram_bytes"].as_u64().unwrap() + report["zero_bytes"].as_u64().unwrap();
    assert_eq!(status["total_bytes"], ram, "{status} {report}");
    report
}

/// Runs the counting guest, snapshots it through the API in `mode`, checks the guest ran on
/// after the snapshot, and kills that keel.
fn take_snapshot(dir: &Path, cpus: u32, mode: &str) -> Taken {
    let (keel, socket) = counting_keel(dir, cpus);
    let before = *counted_past(&keel, 2).last().unwrap();
    let idle = get(&socket, "/api/v1/vm.snapshot-status");
    assert_eq!(idle, serde_json::json!({"state": "idle"}));
    let file = dir.join("vm.snap");
    snapshot(&socket, &file, mode);
    let printed = counter_values(&keel.stdout_now()).len();
    let after = counted_past(&keel, printed)[printed];
    let addr = counter_addr(&keel.stdout_now());
    keel.signal(libc::SIGKILL);
    drop(keel);

    let snap = SnapshotFile::open(&file).expect("the snapshot opens");
    let mut word = [0u8; 8];
    snap.read_guest(addr, &mut word).expect("read the counter");
    let saved = u64::from_le_bytes(word);
    assert!(
        before.0 <= saved && saved <= after.0,
        "the saved counter {saved} is not between {} (printed before) and {} (after)",
        before.0,
        after.0
    );
    Taken {
        file,
        saved,
        before,
    }
}

/// Checks the restored guest's first lines: it goes on from the saved value (the first
/// complete line is the next multiple of EVERY, or the one after if the snapshot caught a
/// line being printed) and its TSC did not go back.
fn assert_goes_on_from(taken: &Taken, restored: &[(u64, u64)]) {
    let (first, tsc) = restored[0];
    let next = taken.saved.div_ceil(EVERY) * EVERY;
    assert!(
        first == next || first == next + EVERY,
        "the restored guest printed {first} first; the snapshot saved {} (next line {next})",
        taken.saved
    );
    assert!(
        tsc >= taken.before.1,
        "the guest TSC went back: {tsc} after restore, {} before the snapshot",
        taken.before.1
    );
    for pair in restored.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + EVERY, "{restored:?}");
    }
}

/// Snapshots the counting guest with `cpus` vCPUs in `mode`, restores it with `keel
/// --restore` and checks it goes on from the saved instant.
fn restore_goes_on_from_the_instant(name: &str, cpus: u32, mode: &str) {
    let dir = temp_dir(name);
    let taken = take_snapshot(&dir, cpus, mode);
    let keel = Watched::spawn(&[
        "--restore",
        &format!("source_url=file://{}", taken.file.display()),
    ]);
    let restored = counted_past(&keel, 2);
    keel.signal(libc::SIGTERM);
    let run = keel.finish(HANG_GUARD);
    assert!(run.status.success(), "{}", run.describe());
    assert_goes_on_from(&taken, &restored);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_guest_restored_from_a_live_snapshot_goes_on_from_the_instant() {
    restore_goes_on_from_the_instant("live", 2, "live");
}

#[test]
fn a_guest_restored_from_a_paused_snapshot_goes_on_from_the_instant() {
    restore_goes_on_from_the_instant("paused", 2, "paused");
}

#[test]
fn vm_restore_waits_paused_until_vm_resume() {
    let dir = temp_dir("api");
    let taken = take_snapshot(&dir, 1, "live");
    let socket = dir.join("api2.sock");
    let keel = Watched::spawn(&["--api-socket", socket.to_str().unwrap()]);
    wait_until("the API socket", HANG_GUARD, || {
        socket.exists().then_some(())
    });
    let url = format!("file://{}", taken.file.display());
    let (status, body) = put(
        &socket,
        "/api/v1/vm.restore",
        &serde_json::json!({ "source_url": url }),
    );
    assert_eq!(status, 204, "{body}");
    let (status, body) = put(
        &socket,
        "/api/v1/vm.restore",
        &serde_json::json!({ "source_url": url }),
    );
    assert_eq!(status, 409, "a second restore over a VM: {body}");
    // Paused: its vCPUs are parked, so nothing it prints can appear; a pause of a paused VM
    // is refused as the state says.
    let (status, body) = put(&socket, "/api/v1/vm.pause", &Value::Null);
    assert_eq!(status, 409, "{body}");
    assert!(counter_values(&keel.stdout_now()).is_empty());
    let (status, body) = put(&socket, "/api/v1/vm.resume", &Value::Null);
    assert_eq!(status, 204, "{body}");
    let restored = counted_past(&keel, 2);
    assert_goes_on_from(&taken, &restored);
    let (status, _) = put(&socket, "/api/v1/vmm.shutdown", &Value::Null);
    assert_eq!(status, 204);
    let run = keel.finish(HANG_GUARD);
    assert!(run.status.success(), "{}", run.describe());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `keel --restore` of `file`: fails with exit 1 and one error line containing `needle`.
fn assert_refused(file: &Path, needle: &str) {
    let run = run_keel(&[
        "--restore",
        &format!("source_url=file://{}", file.display()),
    ]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("keel: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.describe());
    assert!(errors[0].contains(needle), "{}", run.describe());
}

#[test]
fn truncated_corrupted_and_foreign_files_are_refused() {
    let dir = temp_dir("bad");
    let taken = take_snapshot(&dir, 1, "paused");
    let bytes = std::fs::read(&taken.file).unwrap();
    let variant = |name: &str, data: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        path
    };
    let cut = variant("cut.snap", &bytes[..bytes.len() - 8192]);
    assert_refused(&cut, "incomplete or truncated");
    // A byte of the saved RAM (which starts at 1 MiB) flipped.
    let mut flipped = bytes.clone();
    flipped[(1 << 20) + 100] ^= 0x40;
    let flipped = variant("flipped.snap", &flipped);
    assert_refused(&flipped, "corrupted");
    let foreign = variant("foreign.snap", &vec![0x5a; 3 * 4096]);
    assert_refused(&foreign, "not a keel snapshot");
    assert_refused(&dir.join("missing.snap"), "cannot open");
    // A snapshot is never overwritten.
    let (keel, socket) = counting_keel(&dir, 1);
    counted_past(&keel, 0);
    let (status, body) = put(
        &socket,
        "/api/v1/vm.snapshot",
        &serde_json::json!({"destination_url": format!("file://{}", taken.file.display())}),
    );
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("already exists"), "{body}");
    assert_eq!(std::fs::read(&taken.file).unwrap(), bytes);
    drop(keel);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `GET path` on the API socket: the JSON body.
fn get(socket: &Path, path: &str) -> Value {
    request(socket, "GET", path, None).json()
}

/// Requests the disk completed so far, from `vm.counters`.
fn disk_requests(socket: &Path) -> u64 {
    get(socket, "/api/v1/vm.counters")["disks"][0]["requests"]
        .as_u64()
        .expect("a disk's request count")
}

/// Requests the probe's verified random read/write job issues in all.
const DISK_IOS: u64 = 100_000;

/// Runs the probe's verified random read/write job on a disk (`--disk` options `options`
/// after its path), snapshots it in `mode` once 1000 requests are done (with `pause`, after
/// `vm.pause`, the image copied at that instant and put back for the restore), kills keel,
/// restores: the job completes without an error.
fn disk_job_restored_mid_run(name: &str, mode: &str, pause: bool, options: &str) {
    let dir = temp_dir(name);
    let image = dir.join("disk.img");
    std::fs::write(&image, vec![0u8; 16 << 20]).unwrap();
    let cmdline =
        format!("probe.cmd=blk:rw=randrw,bs=4k,iodepth=16,ios={DISK_IOS},verify=1,seed=7");
    let disk = format!("path={}{options}", image.display());
    let (keel, socket) = api_keel(&dir, &cmdline, 2, &["--disk", &disk]);
    wait_until("the guest's disk I/O", HANG_GUARD, || {
        (socket.exists() && disk_requests(&socket) >= 1000).then_some(())
    });
    if pause {
        assert_eq!(put(&socket, "/api/v1/vm.pause", &Value::Null).0, 204);
    }
    let done_before = disk_requests(&socket);
    assert!(done_before < DISK_IOS, "the job ended before the snapshot");
    let file = dir.join("vm.snap");
    snapshot(&socket, &file, mode);
    let saved_image = pause.then(|| std::fs::read(&image).unwrap());
    keel.signal(libc::SIGKILL);
    drop(keel);
    if let Some(saved) = saved_image {
        std::fs::write(&image, saved).unwrap();
    }
    let keel = Watched::spawn(&[
        "--restore",
        &format!("source_url=file://{}", file.display()),
    ]);
    let run = keel.finish(HANG_GUARD);
    run.assert_probe_done();
    let blk = run.report("blk");
    assert_eq!(blk["ios"], DISK_IOS, "{blk}");
    assert_eq!(blk["errors"], 0, "{blk}");
    assert_eq!(blk["verify_errors"], 0, "{blk}");
    assert!(blk["verify_reads"].as_u64().unwrap() > 0, "{blk}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_disk_job_paused_and_snapshotted_with_its_image_copied_completes_after_a_restore() {
    disk_job_restored_mid_run("disk-paused", "paused", true, "");
}

/// The probe's data is a function of the sector, so writes the first keel made after the
/// instant agree with what the restored guest expects, and the image need not be copied.
#[test]
fn a_disk_job_snapshotted_live_while_it_runs_completes_after_a_restore() {
    disk_job_restored_mid_run("disk-live", "live", false, "");
}

/// The same with the synchronous engine (a disk on tmpfs gets it by default): the I/O thread
/// itself copies into guest pages the live snapshot write-protects, and waits for them.
#[test]
fn a_disk_job_on_the_sync_engine_snapshotted_live_completes_after_a_restore() {
    disk_job_restored_mid_run("disk-live-sync", "live", false, ",engine=sync");
}
