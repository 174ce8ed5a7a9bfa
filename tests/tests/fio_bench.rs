//! `keel bench fio` end to end: the probe guest runs translated jobs through the same console
//! protocol and fio JSON the Linux guest uses (figures, exits per I/O, a QEMU comparison,
//! failures reported), bad input is refused, and the Linux guest of `make guest-linux` runs
//! a tiny verifying job (on hosts with VT-x/AMD-V) or stops where this host's KVM cannot go
//! on, reported precisely.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{finish, is_pvm_host, keel_bin, probe_image, Run};
use serde_json::Value;

fn workdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(format!(
        "/var/tmp/keel-test-fio-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn write_job(dir: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("job.fio");
    std::fs::write(&path, text).unwrap();
    path
}

fn bench(args: &[&str], timeout: Duration) -> Run {
    let child = Command::new(keel_bin())
        .arg("bench")
        .arg("fio")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn keel bench fio");
    finish(child, timeout)
}

/// The `keel-bench-fio:` JSON line.
fn result(run: &Run) -> Value {
    let line = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("keel-bench-fio: "))
        .unwrap_or_else(|| panic!("no keel-bench-fio line\n{}", run.describe()));
    serde_json::from_str(line).unwrap()
}

fn probe_dir() -> String {
    probe_image("probe.elf")
        .parent()
        .unwrap()
        .display()
        .to_string()
}

const TINY_PROBE_JOB: &str = "; written, verified, then read back at random\n\
[global]\nioengine=libaio\ndirect=1\nbs=4k\niodepth=8\nsize=4m\nverify=crc32c\n\
[w]\nrw=randwrite\nfilename=/dev/vda\n\
[r]\nrw=randread\nfilename=/dev/vdb\nsize=8m\n";

/// Runs `job` on the probe guest with `extra` options (16 MiB disks, 1 vCPU, 256 MiB);
/// returns the run, the work directory and the disk directory (consoles stay there).
fn probe_bench(
    name: &str,
    job: &str,
    extra: &[&str],
    timeout: Duration,
) -> (Run, PathBuf, PathBuf) {
    let dir = workdir(name);
    let job = write_job(&dir, job);
    let disks = dir.join("disks");
    let guest_dir = probe_dir();
    let mut args = vec![
        "--guest",
        "probe",
        "--guest-dir",
        &guest_dir,
        "--job",
        job.to_str().unwrap(),
        "--dir",
        disks.to_str().unwrap(),
        "--disk-size",
        "16M",
        "--memory",
        "size=256M",
        "--cpus",
        "boot=1",
    ];
    args.extend(extra);
    let run = bench(&args, timeout);
    (run, dir, disks)
}

#[test]
fn probe_guest_runs_a_job_and_exits_per_io_are_reported() {
    let (run, dir, disks) = probe_bench("probe", TINY_PROBE_JOB, &[], Duration::from_secs(120));
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let r = result(&run);
    let keel = &r["keel"];
    assert_eq!(keel["ok"], true, "{}", run.describe());
    assert_eq!(r["disks"], 2);
    assert_eq!(keel["jobs"], 2);
    assert_eq!(keel["fio_exit_codes"], serde_json::json!([0, 0]));
    // 4 MiB of 4 KiB writes on vda, 8 MiB of reads on vdb: exactly what the job asks.
    assert_eq!(keel["write"]["ios"], 1024, "{}", run.describe());
    assert_eq!(keel["read"]["ios"], 2048, "{}", run.describe());
    assert_eq!(keel["write"]["bytes"], 4 << 20);
    for dir in ["read", "write"] {
        let d = &keel[dir];
        assert!(d["iops"].as_f64().unwrap() > 0.0, "{dir}");
        let (p50, p99, p999) = (
            d["p50_ns"].as_u64().unwrap(),
            d["p99_ns"].as_u64().unwrap(),
            d["p999_ns"].as_u64().unwrap(),
        );
        assert!(0 < p50 && p50 <= p99 && p99 <= p999, "{dir}: {d}");
    }
    // Keel's own counters over the jobs: its disks served every request the job made (plus
    // the probe's verify reads), and exits per I/O come from the same window.
    let requests = keel["disk_requests"].as_u64().unwrap();
    assert!(
        (3072..=3072 + 1024 + 64).contains(&requests),
        "{requests}\n{}",
        run.describe()
    );
    let kvm_per_io = keel["exits_per_io_kvm"].as_f64().unwrap();
    let keel_per_io = keel["exits_per_io_keel"].as_f64().unwrap();
    assert!(kvm_per_io > 0.0 && kvm_per_io < 50.0, "{kvm_per_io}");
    assert!((0.0..5.0).contains(&keel_per_io), "{keel_per_io}");
    assert_eq!(
        keel["kvm_exits"].as_f64().unwrap() / 3072.0,
        kvm_per_io,
        "exits per I/O divide the window's exits by fio's I/Os"
    );
    for row in [
        "read IOPS",
        "write latency p99.9 us",
        "KVM exits per I/O",
        "disk requests (keel)",
    ] {
        assert!(run.stdout.contains(row), "{row}\n{}", run.describe());
    }
    assert!(r["qemu"].is_null());
    // The disks it created are gone; the console stays for a look.
    for file in ["fio-disk0.img", "fio-disk1.img", "fio-config.img"] {
        assert!(!disks.join(file).exists(), "{file}");
    }
    let console = std::fs::read_to_string(disks.join("keel-console.log")).unwrap();
    assert_eq!(console.matches("KEEL-FIO-JSON-BEGIN").count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn probe_guest_compared_with_qemu() {
    let (run, dir, _) = probe_bench(
        "qemu",
        TINY_PROBE_JOB,
        &["--compare", "qemu", "--qemu-accel", "kvm"],
        Duration::from_secs(300),
    );
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let r = result(&run);
    for side in ["keel", "qemu"] {
        assert_eq!(r[side]["ok"], true, "{side}\n{}", run.describe());
        assert_eq!(r[side]["write"]["ios"], 1024, "{side}");
        assert_eq!(r[side]["read"]["ios"], 2048, "{side}");
    }
    // KVM's exits over fio's run on both sides (QEMU's through QMP query-stats); Keel's own
    // userspace and disk counters only on Keel's.
    for side in ["keel", "qemu"] {
        let per_io = r[side]["exits_per_io_kvm"].as_f64();
        assert!(
            per_io.is_some_and(|v| v > 0.0),
            "{side}\n{}",
            run.describe()
        );
    }
    assert!(r["qemu"]["exits_per_io_keel"].is_null());
    assert!(r["qemu"]["disk_requests"].is_null());
    assert!(r["keel"]["disk_requests"].as_u64().unwrap() >= 3072);
    let ratio = r["iops_ratio_keel_to_qemu"].as_f64().unwrap();
    assert!(ratio > 0.0 && ratio.is_finite());
    assert!(run.stdout.contains("keel/qemu IOPS:"), "{}", run.describe());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn failing_jobs_are_reported_with_a_nonzero_exit() {
    // Writes to a read-only disk fail with an I/O error status in the guest.
    let (run, dir, _) = probe_bench(
        "fail",
        "[w]\nrw=randwrite\nbs=4k\niodepth=4\nsize=1m\nfilename=/dev/vda\n",
        &["--disk-options", "readonly=on"],
        Duration::from_secs(120),
    );
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let r = result(&run);
    assert_eq!(r["keel"]["ok"], false);
    assert_eq!(r["keel"]["failed_jobs"], 1);
    let problem = r["keel"]["problem"].as_str().unwrap();
    assert!(problem.contains("reported an error"), "{problem}");
    assert!(run.stdout.contains("keel: 1 fio job(s) reported an error"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_gets_one_line_and_creates_nothing() {
    let dir = workdir("bad");
    let disks = dir.join("disks");
    let guest_dir = probe_dir();
    let disks_s = disks.to_str().unwrap();
    let good = write_job(&dir, "[j]\nfilename=/dev/vdc\nsize=1m\n");
    let good_s = good.to_str().unwrap();
    let sda = dir.join("sda.fio");
    std::fs::write(&sda, "[j]\nfilename=/dev/sda\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--job", "/nonexistent.fio"],
            "job file /nonexistent.fio not found",
        ),
        (vec!["--job", sda.to_str().unwrap()], "/dev/sda"),
        (
            vec!["--job", good_s, "--disks", "2"],
            "--disks 2 is too few",
        ),
        (
            vec!["--job", good_s, "--disk-size", "1000"],
            "invalid disk size",
        ),
        (vec!["--job", good_s, "--guest", "windows"], "unknown guest"),
        (
            vec!["--job", good_s, "--compare", "vmware"],
            "expected qemu",
        ),
        (
            vec!["--job", good_s, "--disk-options", "queues=0"],
            "disk option",
        ),
        (vec!["--job", good_s, "--cpus", "boot=0"], "cpus"),
        (
            vec!["--job", good_s, "--guest-dir", "/nonexistent"],
            "kernel /nonexistent/probe.elf not found",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["--dir", disks_s];
        if !extra.contains(&"--guest-dir") {
            args.extend(["--guest-dir", &guest_dir]);
        }
        if !extra.contains(&"--guest") {
            args.extend(["--guest", "probe"]);
        }
        args.extend(extra.iter().copied());
        let run = bench(&args, Duration::from_secs(60));
        assert_eq!(run.code(), Some(1), "{extra:?}\n{}", run.describe());
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{extra:?}\n{}", run.describe());
        assert!(lines[0].contains(want), "{extra:?}: {}", lines[0]);
        assert!(!disks.join("fio-disk0.img").exists(), "{extra:?}");
    }
    let run = bench(&["--job", good_s, "--help"], Duration::from_secs(10));
    assert_eq!(run.code(), Some(0));
    let other = Command::new(keel_bin())
        .args(["bench", "sysbench"])
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(1));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The Linux guest's directory ($KEEL_GUEST_LINUX_DIR or build/guest-linux).
fn guest_linux_dir() -> PathBuf {
    let dir = std::env::var_os("KEEL_GUEST_LINUX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap()
                .join("build/guest-linux")
        });
    for file in ["vmlinux", "vmlinuz", "initramfs.cpio"] {
        assert!(
            dir.join(file).is_file(),
            "{}/{file} missing: run `make guest-linux`",
            dir.display()
        );
    }
    dir
}

/// Runs the tiny Linux job with `extra` options; returns the run, the work directory and
/// the disk directory (consoles stay there).
fn linux_bench(name: &str, extra: &[&str]) -> (Run, PathBuf, PathBuf) {
    let guest = guest_linux_dir();
    let dir = workdir(name);
    let job = write_job(&dir, TINY_LINUX_JOB);
    let disks = dir.join("disks");
    let mut args = vec![
        "--guest-dir",
        guest.to_str().unwrap(),
        "--job",
        job.to_str().unwrap(),
        "--dir",
        disks.to_str().unwrap(),
        "--disk-size",
        "64M",
        "--memory",
        "size=1G",
        "--cpus",
        "boot=1",
        "--timeout",
        "400",
    ];
    args.extend(extra);
    let run = bench(&args, Duration::from_secs(480));
    (run, dir, disks)
}

const TINY_LINUX_JOB: &str = "[global]\nioengine=libaio\ndirect=1\nbs=4k\niodepth=8\n\
    size=8m\nverify=crc32c\n[w]\nrw=randwrite\nfilename=/dev/vda\n";

/// The Debian kernel runs the tiny job in Keel. On a PVM host its CPL0 code is emulated and
/// the emulator lacks instructions the kernel uses, so there the test checks that the
/// harness says where the guest stopped (the instruction and RIP), promptly and clearly.
#[test]
fn linux_guest_runs_a_tiny_verifying_job() {
    let (run, dir, disks) = linux_bench("linux", &[]);
    let r = result(&run);
    let keel = &r["keel"];
    if is_pvm_host() {
        assert_eq!(run.code(), Some(1), "{}", run.describe());
        let problem = keel["problem"].as_str().unwrap();
        assert!(
            problem.contains("KVM internal error")
                && problem.contains("emulation failure")
                && problem.contains("instruction bytes"),
            "{}",
            run.describe()
        );
        // The kernel did start; its whole console is kept beside the disks.
        let console = std::fs::read_to_string(disks.join("keel-console.log")).unwrap();
        assert!(console.contains("Linux version"), "{console}");
        assert!(run.stdout.contains("keel-console.log), last lines:"));
    } else {
        assert_eq!(run.code(), Some(0), "{}", run.describe());
        assert_eq!(keel["ok"], true);
        assert_eq!(keel["write"]["ios"], 2048, "{}", run.describe());
        assert_eq!(keel["fio_exit_codes"], serde_json::json!([0]));
        assert!(keel["exits_per_io_kvm"].as_f64().is_some());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same image and job under QEMU: proves the guest image (kernel, modules, fio and its
/// libraries, init) and the harness's reading of real fio JSON on any host. TCG where this
/// host's KVM cannot run Linux, KVM elsewhere.
#[test]
fn linux_guest_image_runs_the_job_under_qemu() {
    let accel = if is_pvm_host() { "tcg" } else { "kvm" };
    let (run, dir, disks) = linux_bench(
        "linux-qemu",
        &["--compare", "qemu", "--qemu-accel", accel, "--skip-keel"],
    );
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let r = result(&run);
    assert!(r["keel"].is_null());
    let qemu = &r["qemu"];
    assert_eq!(qemu["ok"], true, "{}", run.describe());
    assert_eq!(qemu["fio_exit_codes"], serde_json::json!([0]));
    // 8 MiB of 4 KiB random writes, then fio's crc32c verify reads them all back.
    assert_eq!(qemu["write"]["ios"], 2048, "{}", run.describe());
    assert_eq!(qemu["read"]["ios"], 2048, "{}", run.describe());
    assert!(qemu["write"]["p99_ns"].as_u64().unwrap() > 0);
    let console = std::fs::read_to_string(disks.join("qemu-console.log")).unwrap();
    assert!(
        console.contains("KEEL-FIO-START job=config-disk /dev/vdb"),
        "{console}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
