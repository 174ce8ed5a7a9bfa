//! virtio-blk with Linux's own driver: verifying fio jobs on two disks at once with MSI-X in
//! use, a blk-mq queue per vCPU by default that all carry I/O, a read-only disk, discard and write-zeroes, and
//! flushed writes that survive SIGKILL of keel.

use std::path::Path;

use super::Scenario;
use crate::error::{check, RigError};
use crate::guest::{End, Guest, Kernel, Launch, Outcome};
use crate::image;
use crate::Ctx;

const MIB: u64 = 1 << 20;
/// What the guest's `flush` fio job writes: this 4-byte unit over the first 8 MiB.
const FLUSH_PATTERN: &[u8] = b"KEEL";
const FLUSH_BYTES: u64 = 8 * MIB;

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "blk-verify-two-disks",
            about: "fio randrw crc32c verify on two disks at once; MSI-X vectors in use",
            run: Box::new(verify_two_disks),
        },
        Scenario {
            name: "blk-multiqueue",
            about: "2 vCPUs, no queues=: a queue per vCPU by default, two blk-mq hardware queues, both carry I/O (Keel's per-queue counters)",
            run: Box::new(multiqueue),
        },
        Scenario {
            name: "blk-readonly",
            about: "readonly=on: the guest sees it read-only, a write fails, the host file is unchanged",
            run: Box::new(readonly),
        },
        Scenario {
            name: "blk-discard-zeroes",
            about: "discard punches a hole, write-zeroes zeroes, the rest is untouched",
            run: Box::new(discard_zeroes),
        },
        Scenario {
            name: "blk-flush-sigkill",
            about: "fio with fsync=1, keel SIGKILLed right after: the host file holds every block",
            run: Box::new(flush_sigkill),
        },
    ]
}

/// The `fio` result of `job` ran without errors.
pub(super) fn expect_fio_ok(out: &Outcome, job: &str) -> Result<u64, RigError> {
    let r = out
        .report
        .all("fio")
        .find(|v| v.get("job").map(String::as_str) == Some(job))
        .ok_or_else(|| RigError::Check(format!("no fio result for job {job}")))?;
    let get = |k: &str| r.get(k).and_then(|v| v.parse::<u64>().ok());
    check(get("rc") == Some(0) && get("errors") == Some(0), || {
        format!("fio job {job} failed: {r:?}")
    })?;
    Ok(get("read_ios").unwrap_or(0) + get("write_ios").unwrap_or(0))
}

/// Keel's `--stats` entry for disk `i`.
fn disk_stats(out: &Outcome, i: usize) -> Result<&serde_json::Value, RigError> {
    out.stats
        .as_ref()
        .and_then(|s| s["disks"].get(i))
        .ok_or_else(|| RigError::Check(format!("keel's --stats has no disk {i}")))
}

fn expect_powered_off(out: &Outcome) -> Result<(), RigError> {
    out.report.expect_clean()?;
    check(out.code() == Some(0), || {
        format!("keel exited {:?}, not 0", out.code())
    })
}

fn verify_two_disks(ctx: &Ctx, dir: &Path) -> Result<String, RigError> {
    let a = image::create(dir, "a.img", 64 * MIB, None)?;
    let b = image::create(dir, "b.img", 64 * MIB, None)?;
    let mut launch = Launch::new(Kernel::Pvh, 2, &["fio:verify2", "irqs"]);
    launch.disks = vec![
        format!("path={}", a.display()),
        format!("path={}", b.display()),
    ];
    let out = Guest::start(ctx, dir, "guest", &launch)?.finish()?;
    expect_powered_off(&out)?;
    let ios = expect_fio_ok(&out, "verify2")?;
    let msix = out.report.number("irqs", "virtio_msix")?;
    check(msix >= 4, || {
        format!("the guest lists {msix} virtio MSI-X vectors, want at least 2 per disk")
    })?;
    let mut sent = 0;
    for i in 0..2 {
        let d = disk_stats(&out, i)?;
        check(
            d["requests"].as_u64().unwrap_or(0) > 0 && d["errors"] == 0,
            || format!("disk {i} served no requests or had errors: {d}"),
        )?;
        check(d["kicks"].as_u64().unwrap_or(0) > 0, || {
            format!("Keel counted no notification on disk {i}: {d}")
        })?;
        sent += d["interrupts"].as_u64().unwrap_or(0);
    }
    let seen = expect_interrupts_match(&out, sent)?;
    Ok(format!(
        "fio verified {ios} I/Os on 2 disks, {msix} virtio MSI-X vectors, {seen} request \
         interrupts seen by the guest of {sent} Keel sent"
    ))
}

/// The guest's request-queue interrupts (its /proc/interrupts `virtioN-req.Q` lines) are at
/// least one and at most what Keel's disks sent
/// (KVM merges an MSI into one still pending, never invents one): Keel's interrupt counter
/// counts what reached the guest. Returns the guest's count.
fn expect_interrupts_match(out: &Outcome, sent: u64) -> Result<u64, RigError> {
    let seen: u64 = out
        .report
        .all("irq")
        .filter(|v| v.get("name").is_some_and(|n| n.contains("-req.")))
        .filter_map(|v| v.get("count")?.parse::<u64>().ok())
        .sum();
    check(seen > 0 && seen <= sent, || {
        format!("the guest saw {seen} virtio request interrupts; Keel's disks sent {sent}")
    })?;
    Ok(seen)
}

fn multiqueue(ctx: &Ctx, dir: &Path) -> Result<String, RigError> {
    let a = image::create(dir, "a.img", 64 * MIB, None)?;
    let mut launch = Launch::new(Kernel::BzImage, 2, &["mq:vda", "fio:mq2"]);
    // No queues=: one per vCPU by default.
    launch.disks = vec![format!("path={}", a.display())];
    let out = Guest::start(ctx, dir, "guest", &launch)?.finish()?;
    expect_powered_off(&out)?;
    expect_fio_ok(&out, "mq2")?;
    let hw = out.report.number("mq", "hw_queues")?;
    check(hw == 2, || {
        format!("the guest's vda has {hw} blk-mq hardware queues, not 2 (one per vCPU)")
    })?;
    let d = disk_stats(&out, 0)?;
    let queues: Vec<u64> = d["queue_requests"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    check(queues.len() == 2 && queues.iter().all(|&n| n > 0), || {
        format!("Keel's per-queue requests are {queues:?}: want 2 queues, both busy")
    })?;
    Ok(format!("2 hardware queues, requests per queue {queues:?}"))
}

fn readonly(ctx: &Ctx, dir: &Path) -> Result<String, RigError> {
    let seed = 0x5eed;
    let a = image::create(dir, "ro.img", 16 * MIB, Some(seed))?;
    let mut launch = Launch::new(Kernel::Pvh, 1, &["ro:vda"]);
    launch.disks = vec![format!("path={},readonly=on", a.display())];
    let out = Guest::start(ctx, dir, "guest", &launch)?.finish()?;
    expect_powered_off(&out)?;
    let ro = out.report.value("ro", "ro")?;
    check(ro == "1", || format!("/sys/block/vda/ro is {ro}, not 1"))?;
    let rc = out.report.value("ro", "write_rc")?;
    check(rc != "0", || {
        "a write to the read-only disk succeeded".into()
    })?;
    image::expect_pattern(&a, seed, 0, 16 * MIB)?;
    Ok(format!("ro=1, write failed (rc {rc}), host file unchanged"))
}

fn discard_zeroes(ctx: &Ctx, dir: &Path) -> Result<String, RigError> {
    let seed = 0xd15c;
    let a = image::create(dir, "dz.img", 16 * MIB, Some(seed))?;
    let steps = [
        format!("discard:vda:0:{}", 4 * MIB),
        format!("zeroout:vda:{}:{}", 4 * MIB, 4 * MIB),
    ];
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let mut launch = Launch::new(Kernel::Pvh, 1, &steps);
    launch.disks = vec![format!("path={}", a.display())];
    let out = Guest::start(ctx, dir, "guest", &launch)?.finish()?;
    expect_powered_off(&out)?;
    for step in ["discard", "zeroout"] {
        let rc = out.report.value(step, "rc")?;
        check(rc == "0", || format!("the guest's {step} failed: rc {rc}"))?;
    }
    let data = image::next_data(&a, 0)?;
    check(data >= 4 * MIB, || {
        format!("the discarded first 4 MiB still hold data at byte {data}: no hole was punched")
    })?;
    image::expect_repeated(&a, &[0], 0, 8 * MIB)?;
    image::expect_pattern(&a, seed, 8 * MIB, 8 * MIB)?;
    Ok(format!("hole over the discarded 4 MiB (data from byte {data}), zeroes over the next 4 MiB, rest unchanged"))
}

fn flush_sigkill(ctx: &Ctx, dir: &Path) -> Result<String, RigError> {
    let a = image::create(dir, "flush.img", 64 * MIB, None)?;
    let mut launch = Launch::new(Kernel::Pvh, 1, &["fio:flush"]);
    launch.disks = vec![format!("path={},cache=writeback", a.display())];
    launch.end = End::Hang;
    let mut guest = Guest::start(ctx, dir, "guest", &launch)?;
    guest.wait_for("KEEL-T fio ")?;
    guest.signal(libc::SIGKILL)?;
    let out = guest.finish()?;
    check(out.code().is_none(), || {
        format!("keel was not killed: exit {:?}", out.code())
    })?;
    expect_fio_ok(&out, "flush")?;
    image::expect_repeated(&a, FLUSH_PATTERN, 0, FLUSH_BYTES)?;
    Ok("every byte fio wrote (8 MiB, fsync=1) is in the host file after SIGKILL".into())
}
