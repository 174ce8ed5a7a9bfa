//! Snapshot and restore of a real Linux guest: a verifying fio job is running when keel
//! snapshots the VM live (the guest runs on while its RAM is written), keel is SIGKILLed as
//! soon as the snapshot is on disk, and a new keel restores the file: the guest goes on from
//! the instant, fio finishes and its verify passes, and the guest's clocks are not behind
//! what they were before the snapshot. The disk is not copied: the blocks the first keel
//! wrote after the instant are the ones the restored fio writes again (same job, same random
//! state), which its verify checks. On 4 KiB pages and on 2 MiB hugetlb pages.

use std::path::Path;
use std::time::{Duration, Instant};

use super::placement::HugepagePool;
use super::Scenario;
use crate::api;
use crate::error::{check, RigError};
use crate::guest::{End, Guest, Kernel, Launch, Outcome};
use crate::image;
use crate::Ctx;

const MIB: u64 = 1 << 20;
/// Disk requests fio must have completed before the snapshot (so it is taken mid-job).
const REQUESTS_BEFORE: u64 = 500;
/// Guest RAM with hugepages (a 2 MiB pool of half as many pages is reserved for the run).
const HUGE_GUEST_MIB: u64 = 512;

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "snapshot-restore-fio",
            about: "2 vCPUs, fio verify running: live snapshot, SIGKILL, restore: fio verifies, clocks not behind",
            run: Box::new(|ctx, dir| restore_mid_fio(ctx, dir, None)),
        },
        Scenario {
            name: "snapshot-restore-hugepages",
            about: "the same on 2 MiB hugetlb RAM (write faults copy whole 2 MiB pages)",
            run: Box::new(|ctx, dir| {
                let _pool = HugepagePool::reserve(HUGE_GUEST_MIB / 2)?;
                restore_mid_fio(ctx, dir, Some(format!("size={HUGE_GUEST_MIB}M,hugepages=on")))
            }),
        },
    ]
}

/// Waits (polling keel's counters, bounded by the guest's deadline) until the disk served
/// `want` requests.
fn wait_for_requests(socket: &Path, want: u64, limit: Duration) -> Result<u64, RigError> {
    let deadline = Instant::now() + limit;
    loop {
        let done = api::disk_requests(socket)?;
        if done >= want {
            return Ok(done);
        }
        check(Instant::now() < deadline, || {
            format!("the guest's fio completed {done} requests within {limit:?}, not {want}")
        })?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The guest's uptime (seconds) and realtime from its `uptime` step lines.
fn uptimes(out: &Outcome) -> Vec<(f64, u64)> {
    out.report
        .all("uptime")
        .filter_map(|v| Some((v.get("s")?.parse().ok()?, v.get("realtime")?.parse().ok()?)))
        .collect()
}

fn restore_mid_fio(ctx: &Ctx, dir: &Path, memory: Option<String>) -> Result<String, RigError> {
    let disk = image::create(dir, "a.img", 64 * MIB, None)?;
    let socket = dir.join("api.sock");
    let mut launch = Launch::new(Kernel::Pvh, 2, &["uptime", "fio:verify1", "uptime"]);
    launch.disks = vec![format!("path={}", disk.display())];
    launch.api_socket = Some(socket.clone());
    launch.end = End::Poweroff;
    if let Some(m) = memory {
        launch.memory = m;
    }
    let mut guest = Guest::start(ctx, dir, "guest", &launch)?;
    guest.wait_for("KEEL-T-STEP fio:verify1")?;
    let done = wait_for_requests(&socket, REQUESTS_BEFORE, ctx.guest_timeout)?;
    let snap = dir.join("vm.snap");
    let body = format!(
        "{{\"destination_url\":\"file://{}\",\"mode\":\"live\"}}",
        snap.display()
    );
    let report = api::put(&socket, "vm.snapshot", &body)?;
    guest.signal(libc::SIGKILL)?;
    let first = guest.finish()?;
    check(first.code().is_none(), || {
        format!("the first keel was not killed: exit {:?}", first.code())
    })?;
    check(first.report.all("fio").next().is_none(), || {
        "fio finished before the snapshot".into()
    })?;

    let out = Guest::restore(ctx, dir, "restored", &snap)?.finish()?;
    out.report.expect_clean()?;
    check(out.code() == Some(0), || {
        format!("the restored keel exited {:?}, not 0", out.code())
    })?;
    let fio = out
        .report
        .all("fio")
        .next()
        .ok_or_else(|| RigError::Check("no fio result from the restored guest".into()))?;
    check(
        fio.get("rc").map(String::as_str) == Some("0")
            && fio.get("errors").map(String::as_str) == Some("0"),
        || format!("fio failed after the restore: {fio:?}"),
    )?;
    let before = uptimes(&first);
    let after = uptimes(&out);
    check(before.len() == 1 && after.len() == 1, || {
        format!("uptime lines: {before:?} before the snapshot, {after:?} after the restore")
    })?;
    check(
        after[0].0 >= before[0].0 && after[0].1 >= before[0].1,
        || {
            format!(
            "the restored guest's clocks went back: uptime {} s / realtime {} after, {} s / {} before",
            after[0].0, after[0].1, before[0].0, before[0].1
        )
        },
    )?;
    Ok(format!(
        "snapshot after {done} requests ({report}); restored: fio verify passed, uptime {:.1} s -> {:.1} s",
        before[0].0, after[0].0
    ))
}
