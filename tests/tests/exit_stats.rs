//! Guest tests for exit accounting: exits by device in `--stats`, periodic rates with
//! `--stats-interval`, and `keel stat` attached to a running keel from another process.

mod common;

use std::process::Command;

use common::{
    keel_bin, print_and_poweroff, probe_image, run_keel, tiny_kernel, Watched, BOOT_LINE,
    HANG_GUARD, RUNS_UNTIL_STOPPED,
};
use serde_json::Value;

fn stats_json(stderr: &str) -> Value {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("keel-stats: "))
        .unwrap_or_else(|| panic!("no keel-stats line:\n{stderr}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn stats_count_exits_by_device() {
    let kernel = probe_image("probe.elf");
    let run = run_keel(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "probe.cmd=boot probe.cmd=cmdline",
        "--stats",
    ]);
    run.assert_probe_done();
    let stats = stats_json(&run.stderr);
    let vcpu = &stats["vcpus"][0];
    // Every byte the probe printed went through COM1 as one port write.
    let com1 = vcpu["devices"]["pio.com1"].as_u64().unwrap_or(0);
    assert!(
        com1 as usize >= run.stdout.len(),
        "{com1} < {}",
        run.stdout.len()
    );
    let by_device: u64 = vcpu["devices"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let u = &vcpu["userspace"];
    assert_eq!(
        by_device + u["unclaimed"].as_u64().unwrap(),
        u["io"].as_u64().unwrap() + u["mmio"].as_u64().unwrap(),
        "{vcpu}"
    );
    assert!(
        stats["vm"].as_object().is_some_and(|m| !m.is_empty()),
        "{stats}"
    );
    // The human table sits beside the JSON line.
    assert!(run.stderr.contains("keel.pio.com1"), "{}", run.describe());
    assert!(
        run.stderr.lines().any(|l| l.starts_with("kvm.exits ")),
        "{}",
        run.describe()
    );
}

#[test]
fn stats_interval_prints_rates_while_the_guest_runs() {
    let kernel = probe_image("probe.elf");
    // The guest spins for an hour; keel is stopped once it has printed three views, however
    // long they took.
    let mut keel = Watched::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        RUNS_UNTIL_STOPPED,
        "--stats-interval",
        "0.3",
    ]);
    keel.wait_stdout(BOOT_LINE, HANG_GUARD);
    keel.wait_stderr("keel-rates:", 3, HANG_GUARD);
    keel.signal(libc::SIGTERM);
    let run = keel.finish(HANG_GUARD);
    run.assert_probe_stopped_by("SIGTERM");
    let views = run.stderr.matches("keel-rates:").count();
    assert!(views >= 3, "{views} views\n{}", run.describe());
    assert!(run.stderr.contains("\nevent "), "{}", run.describe());
    let bad = run_keel(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--stats-interval",
        "0",
    ]);
    assert_eq!(bad.code(), Some(1));
    assert!(
        bad.stderr.contains("expected seconds from 0.1"),
        "{}",
        bad.describe()
    );
}

#[test]
fn keel_stat_reads_a_running_keel() {
    let kernel = probe_image("probe.elf");
    // The guest spins far longer than the test needs and is stopped with SIGTERM once
    // `keel stat` is done, so nothing depends on how long either takes.
    let mut keel = Watched::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cpus",
        "boot=2",
        "--cmdline",
        RUNS_UNTIL_STOPPED,
    ]);
    // The boot line comes from the running guest: the VM and its statistics exist.
    keel.wait_stdout(BOOT_LINE, HANG_GUARD);
    let out = Command::new(keel_bin())
        .args([
            "stat",
            "--pid",
            &keel.pid().to_string(),
            "--interval",
            "0.4",
        ])
        .args(["--count", "2"])
        .output()
        .unwrap();
    keel.signal(libc::SIGTERM);
    let run = keel.finish(HANG_GUARD);
    run.assert_probe_stopped_by("SIGTERM");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One table per sample, each under its header row (a counter row such as
    // `kvm.req_event` may contain the word too, so whole rows are compared).
    let headers = text
        .lines()
        .filter(|l| l.split_whitespace().eq(["event", "total", "rate/s"]))
        .count();
    assert_eq!(headers, 2, "{text}");
    // A running guest takes at least host timer interrupts.
    let exits = text
        .lines()
        .find(|l| l.starts_with("kvm.exits "))
        .unwrap_or_else(|| panic!("no kvm.exits row:\n{text}"));
    let cols: Vec<&str> = exits.split_whitespace().collect();
    assert!(cols[1].parse::<u64>().unwrap() > 0, "{exits}");
    assert!(cols[2].parse::<f64>().unwrap() > 0.0, "{exits}");

    let not_keel = Command::new(keel_bin())
        .args([
            "stat",
            "--pid",
            &std::process::id().to_string(),
            "--count",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(not_keel.status.code(), Some(1));
    let err = String::from_utf8_lossy(&not_keel.stderr);
    assert!(err.contains("has no KVM VM statistics open"), "{err}");
}

#[test]
fn unclaimed_ports_are_reported_by_number() {
    // mov dx, 0x99; in al, dx; in al, dx; mov dx, 0x99; out dx, al; then print and power off.
    let mut code = vec![0x66, 0xba, 0x99, 0x00, 0xec, 0xec, 0xee];
    code.extend(print_and_poweroff(b"ok"));
    let kernel = tiny_kernel("unclaimed-port", &code);
    let run = run_keel(&["--kernel", kernel.to_str().unwrap(), "--stats"]);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let stats = stats_json(&run.stderr);
    let vcpu = &stats["vcpus"][0];
    assert_eq!(vcpu["unclaimed"]["pio.0x99"], 3, "{vcpu}");
    assert_eq!(vcpu["userspace"]["unclaimed"], 3, "{vcpu}");
    assert_eq!(vcpu["devices"]["pio.com1"], 2, "{vcpu}");
    assert!(
        run.stderr.contains("keel.unclaimed.pio.0x99"),
        "{}",
        run.describe()
    );
}
