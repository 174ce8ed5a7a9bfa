//! virtio-blk through Keel as the probe guest sees it: PCI enumeration, data written by the
//! guest landing in the host file (and the reverse), read-only disks, two disks, multiqueue,
//! MSI-X interrupts vs polling, and bad `--disk` input.

mod common;

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use common::*;
use serde_json::Value;

const SECTOR: u64 = 512;

/// A disk image in the temp dir, removed on drop.
struct Image(PathBuf);

impl Image {
    /// A zero-filled image of `size` bytes.
    fn zeroed(tag: &str, size: u64) -> Image {
        Image::zeroed_in(&std::env::temp_dir(), tag, size)
    }

    /// A zero-filled image of `size` bytes in `dir`.
    fn zeroed_in(dir: &std::path::Path, tag: &str, size: u64) -> Image {
        let path = dir.join(format!("keel-blk-{tag}-{}.img", std::process::id()));
        let f = std::fs::File::create(&path).expect("create image");
        f.set_len(size).expect("size image");
        Image(path)
    }

    /// An image whose every 8-byte word of sector S holds S (the probe's verify pattern).
    fn patterned(tag: &str, size: u64) -> Image {
        let img = Image::zeroed(tag, size);
        let mut buf = Vec::with_capacity(size as usize);
        for sector in 0..size / SECTOR {
            for _ in 0..SECTOR / 8 {
                buf.extend_from_slice(&sector.to_le_bytes());
            }
        }
        std::fs::write(&img.0, &buf).expect("fill image");
        img
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }

    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let f = std::fs::File::open(&self.0).expect("open image");
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).expect("read image");
        buf
    }

    /// Sectors in `[first, first + count)` that do not hold the pattern.
    fn bad_pattern_sectors(&self, first: u64, count: u64) -> Vec<u64> {
        let data = self.read(first * SECTOR, (count * SECTOR) as usize);
        data.chunks_exact(SECTOR as usize)
            .zip(first..)
            .filter(|(chunk, sector)| {
                chunk
                    .chunks_exact(8)
                    .any(|w| u64::from_le_bytes(w.try_into().unwrap()) != *sector)
            })
            .map(|(_, s)| s)
            .collect()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Boots the probe with `disks` (`--disk` groups) and probe commands `cmds`.
fn run_with_disks(disks: &[String], cmds: &[&str]) -> Run {
    let kernel = probe_image("probe.elf");
    let cmdline = cmds
        .iter()
        .map(|c| format!("probe.cmd={c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut args = vec![
        "--kernel".to_string(),
        kernel.to_str().expect("utf-8 path").to_string(),
        "--memory".into(),
        "size=256M".into(),
        "--cmdline".into(),
        cmdline,
    ];
    for d in disks {
        args.push("--disk".into());
        args.push(d.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_keel(&args)
}

/// Boots the probe with one `--disk` group, `--stats` and the command line `cmdline`.
fn run_with_stats(disk: &str, cmdline: &str) -> Run {
    let kernel = probe_image("probe.elf");
    run_keel(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--disk",
        disk,
        "--stats",
        "--cmdline",
        cmdline,
    ])
}

/// The `keel-stats:` line of a run's stderr, as text and parsed.
fn keel_stats(run: &Run) -> (&str, Value) {
    let line = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("keel-stats: "))
        .unwrap_or_else(|| panic!("no keel-stats line\n{}", run.describe()));
    (
        line,
        serde_json::from_str(line).expect("keel-stats is JSON"),
    )
}

fn blk_reports(run: &Run) -> Vec<Value> {
    run.json_lines()
        .into_iter()
        .filter(|v| v["cmd"] == "blk")
        .collect()
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

/// A blk report's completed I/Os, failed requests and sectors that failed verification.
fn outcome(r: &Value) -> (u64, u64, u64) {
    (u(r, "ios"), u(r, "errors"), u(r, "verify_errors"))
}

/// A "0x..." string as a number.
fn hex(v: &Value) -> u64 {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("{v} is not a hex string"));
    u64::from_str_radix(text.trim_start_matches("0x"), 16).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn guest_finds_the_disk_on_pci() {
    let img = Image::zeroed("pci", 1 << 20);
    let run = run_with_disks(&[format!("path={}", img.path())], &["pci"]);
    run.assert_probe_done();
    let pci = run.report("pci");
    let devices = pci["devices"].as_array().expect("devices");
    let bdfs: Vec<&str> = devices.iter().filter_map(|d| d["bdf"].as_str()).collect();
    assert_eq!(bdfs, ["00:00.0", "00:01.0"], "{}", run.describe());
    assert_eq!(devices[1]["vendor"], "0x1af4");
    assert_eq!(devices[1]["device"], "0x1042");
}

#[test]
fn guest_writes_land_in_the_host_file() {
    // 2 MiB written sequentially with the pattern; the rest of the disk must stay zero.
    let img = Image::zeroed("write", 8 << 20);
    let run = run_with_disks(
        &[format!("path={}", img.path())],
        &["blk:disk=0,rw=write,bs=4k,iodepth=8,ios=512,size=2M,verify=1"],
    );
    run.assert_probe_done();
    let r = &blk_reports(&run)[0];
    assert_eq!(u(r, "ios"), 512, "{r}");
    assert_eq!(u(r, "errors"), 0, "{r}");
    assert_eq!(u(r, "verify_errors"), 0, "{r}");
    assert_eq!(u(r, "capacity"), (8 << 20) / SECTOR, "{r}");
    assert!(img.bad_pattern_sectors(0, (2 << 20) / SECTOR).is_empty());
    assert!(img.read(2 << 20, 6 << 20).iter().all(|&b| b == 0));
}

#[test]
fn guest_reads_what_the_host_wrote_and_catches_a_bad_sector() {
    let img = Image::patterned("read", 4 << 20);
    let run = run_with_disks(
        &[format!("path={},readonly=on", img.path())],
        &["blk:disk=0,rw=randread,bs=4k,iodepth=16,ios=2000,verify=1"],
    );
    run.assert_probe_done();
    let r = &blk_reports(&run)[0];
    assert_eq!(u(r, "errors"), 0, "{r}");
    assert_eq!(u(r, "verify_errors"), 0, "{r}");

    // Spoil one sector on the host: a sequential read over the whole disk must report it.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&img.0)
        .unwrap();
    f.write_all_at(&[0xee; 8], 777 * SECTOR + 64).unwrap();
    drop(f);
    let run = run_with_disks(
        &[format!("path={},readonly=on", img.path())],
        &["blk:disk=0,rw=read,bs=64k,iodepth=4,ios=64,verify=1"],
    );
    run.assert_probe_done();
    let r = &blk_reports(&run)[0];
    assert_eq!(u(r, "verify_errors"), 1, "{r}");
    assert_eq!(u(r, "first_bad_sector"), 777, "{r}");
}

#[test]
fn read_only_disk_refuses_writes() {
    let img = Image::zeroed("ro", 1 << 20);
    let run = run_with_disks(
        &[format!("path={},readonly=on", img.path())],
        &["blk:disk=0,rw=write,bs=4k,iodepth=4,ios=32"],
    );
    run.assert_probe_done();
    let r = &blk_reports(&run)[0];
    assert_eq!(u(r, "errors"), 32, "every write fails: {r}");
    let features = hex(&r["features"]);
    assert_ne!(features & (1 << 5), 0, "VIRTIO_BLK_F_RO offered: {r}");
    assert!(
        img.read(0, 1 << 20).iter().all(|&b| b == 0),
        "file untouched"
    );
}

#[test]
fn two_disks_at_once() {
    let a = Image::zeroed("two-a", 1 << 20);
    let b = Image::zeroed("two-b", 2 << 20);
    let run = run_with_disks(
        &[
            format!("path={}", a.path()),
            format!("path={},serial=second", b.path()),
        ],
        &["blk:disk=1,rw=write,bs=4k,iodepth=4,ios=64,size=256k,verify=1"],
    );
    run.assert_probe_done();
    let r = &blk_reports(&run)[0];
    assert_eq!(
        u(r, "capacity"),
        (2 << 20) / SECTOR,
        "disk 1 is the 2 MiB one: {r}"
    );
    assert_eq!(u(r, "errors"), 0, "{r}");
    assert!(b.bad_pattern_sectors(0, (256 << 10) / SECTOR).is_empty());
    assert!(
        a.read(0, 1 << 20).iter().all(|&x| x == 0),
        "disk 0 untouched"
    );
}

#[test]
fn multiqueue_spreads_requests_over_queues() {
    let img = Image::zeroed("mq", 4 << 20);
    let run = run_with_disks(
        &[format!("path={},queues=2", img.path())],
        &["blk:disk=0,rw=randwrite,bs=4k,iodepth=16,ios=1000,queues=2,verify=1"],
    );
    run.assert_probe_done();
    let r = &blk_reports(&run)[0];
    assert_eq!(u(r, "num_queues"), 2, "{r}");
    assert_eq!(u(r, "queues"), 2, "{r}");
    assert_eq!(u(r, "errors"), 0, "{r}");
    assert_eq!(u(r, "verify_errors"), 0, "{r}");
    // Every 4K block is either untouched (zero) or holds the pattern.
    let data = img.read(0, 4 << 20);
    for (sector, chunk) in data.chunks_exact(SECTOR as usize).enumerate() {
        let zero = chunk.iter().all(|&x| x == 0);
        let pattern = chunk
            .chunks_exact(8)
            .all(|w| u64::from_le_bytes(w.try_into().unwrap()) == sector as u64);
        assert!(
            zero || pattern,
            "sector {sector} is neither zero nor the pattern"
        );
    }
}

#[test]
fn msix_interrupts_or_polling() {
    let img = Image::patterned("irq", 1 << 20);
    let disk = format!("path={}", img.path());
    let run = run_with_disks(
        &[disk],
        &[
            "blk:disk=0,rw=randread,bs=4k,iodepth=1,ios=50,poll=0",
            "blk:disk=0,rw=randread,bs=4k,iodepth=1,ios=50,poll=1",
        ],
    );
    run.assert_probe_done();
    let reports = blk_reports(&run);
    assert_eq!(reports.len(), 2, "{}", run.describe());
    let (irq, poll) = (&reports[0], &reports[1]);
    assert_eq!(irq["msix"], true, "{irq}");
    assert!(
        u(irq, "interrupts") > 0,
        "interrupt mode got interrupts: {irq}"
    );
    assert_eq!(
        u(poll, "interrupts"),
        0,
        "polling mode suppressed them: {poll}"
    );
}

#[test]
fn bad_disk_options_fail_before_boot() {
    let kernel = probe_image("probe.elf");
    let kernel = kernel.to_str().unwrap();
    let small = Image::zeroed("small", 100);
    let cases: Vec<(String, &str)> = vec![
        ("path=/nonexistent/disk.img".into(), "/nonexistent/disk.img"),
        ("readonly=on".into(), "missing 'path='"),
        (format!("path={},queues=0", small.path()), "queues"),
        (format!("path={}", small.path()), "smaller than one"),
        (format!("path={},cache=unsafe", small.path()), "cache"),
        (format!("path={},engine=aio", small.path()), "engine"),
    ];
    for (disk, needle) in cases {
        let run = run_keel(&["--kernel", kernel, "--disk", &disk]);
        assert_eq!(run.code(), Some(1), "{disk}\n{}", run.describe());
        let line = run.stderr.trim();
        assert_eq!(line.lines().count(), 1, "one line for {disk}: {line}");
        assert!(line.contains(needle), "{disk}: {line}");
    }
}

#[test]
fn writeback_cache_flush_succeeds() {
    let img = Image::zeroed("flush", 1 << 20);
    let run = run_with_disks(
        &[format!("path={},cache=writeback", img.path())],
        &["blk:disk=0,rw=randwrite,bs=4k,iodepth=8,ios=200,verify=1,flush=1"],
    );
    run.assert_probe_done();
    let r = &blk_reports(&run)[0];
    assert_eq!(r["flush_status"], "ok", "{r}");
    assert_eq!(u(r, "errors"), 0, "{r}");
    let features = hex(&r["features"]);
    assert_ne!(features & (1 << 9), 0, "VIRTIO_BLK_F_FLUSH negotiated: {r}");
}

#[test]
fn polling_guest_rarely_needs_to_kick() {
    // With requests in flight the device keeps notifications off and picks up new requests
    // when completions arrive, so a polling guest at depth 16 kicks only when the device
    // went idle.
    let img = Image::zeroed("kicks", 8 << 20);
    let run = run_with_disks(
        &[format!("path={}", img.path())],
        &["blk:disk=0,rw=randwrite,bs=4k,iodepth=16,ios=4000,poll=1"],
    );
    run.assert_probe_done();
    let r = &blk_reports(&run)[0];
    let (ios, kicks) = (u(r, "ios"), u(r, "kicks"));
    assert_eq!(ios, 4000, "{r}");
    assert!(kicks * 4 < ios, "{kicks} kicks for {ios} I/Os: {r}");
    assert_eq!(u(r, "interrupts"), 0, "{r}");
}

#[test]
fn stats_line_reports_exits() {
    let img = Image::zeroed("stats", 1 << 20);
    let disk = format!("path={}", img.path());
    let run = run_with_stats(
        &disk,
        "probe.cmd=blk:disk=0,rw=randread,bs=4k,iodepth=4,ios=100",
    );
    run.assert_probe_done();
    let (line, stats) = keel_stats(&run);
    let vcpu = &stats["vcpus"][0];
    // The probe enumerates PCI through ECAM and programs the device through its BAR: MMIO
    // exits to userspace.
    assert!(u(&vcpu["userspace"], "mmio") > 0, "{line}");
    assert!(
        u(&vcpu["userspace"], "total") >= u(&vcpu["userspace"], "mmio"),
        "{line}"
    );
    let disk = &stats["disks"][0];
    assert_eq!(disk["name"], "disk0", "{line}");
    assert!(u(disk, "requests") >= 100, "{line}");
    assert!(u(disk, "read_bytes") >= 100 * 4096, "{line}");
    assert_eq!(u(disk, "write_bytes"), 0, "{line}");
    assert_eq!(u(disk, "errors"), 0, "{line}");
    assert!(u(disk, "latency_ns") > 0, "{line}");
    if !vcpu["kvm"].as_object().unwrap().is_empty() {
        assert!(
            u(&vcpu["kvm"], "exits") >= u(&vcpu["userspace"], "mmio"),
            "{line}"
        );
    }
}

#[test]
fn each_queue_gets_a_named_iothread_unless_shared() {
    // The vCPU is pinned to host CPU 0. disk0's queues do not poll, so each gets its thread
    // whatever the host's CPUs; disk3's two polling queues may run on CPU 0 only, which the
    // vCPU needs too, so they share one. Scheduling: disk0 names normal; shared-io's first disk
    // names batch (the second disk shares it as it is); disk3's auto is batch, its vCPU and
    // thread having one host CPU; disk4's auto is normal, its thread having CPU 1 to itself.
    let a = Image::zeroed("thr-a", 1 << 20);
    let b = Image::zeroed("thr-b", 1 << 20);
    let c = Image::zeroed("thr-c", 1 << 20);
    let d = Image::zeroed("thr-d", 1 << 20);
    let e = Image::zeroed("thr-e", 1 << 20);
    let kernel = probe_image("probe.elf");
    let disks = [
        format!("path={},queues=2,poll_us=0,iothread_sched=normal", a.path()),
        format!("path={},iothread=shared-io,iothread_sched=batch", b.path()),
        format!("path={},iothread=shared-io,id=data", c.path()),
        format!("path={},queues=2,iothread=cpus:0", d.path()),
        format!("path={},iothread=cpus:1", e.path()),
    ];
    let mut args = vec![
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        RUNS_UNTIL_STOPPED,
        "--cpus",
        "boot=1,affinity=[0@[0]]",
        "--log-level",
        "info",
    ];
    for d in &disks {
        args.extend(["--disk", d.as_str()]);
    }
    // Each I/O thread's placement line is logged from an answer the thread itself gave (its
    // tid), after its policy was set, so it has started, is named and scheduled; the vCPU
    // thread runs the guest once the boot line is out. The guest spins for an hour and is
    // stopped with SIGTERM once the threads are read.
    let mut keel = Watched::spawn(&args);
    keel.wait_stderr("keel: info: iothread ", 5, HANG_GUARD);
    keel.wait_stdout(BOOT_LINE, HANG_GUARD);
    let mut threads = threads_with_policy(keel.pid());
    keel.signal(libc::SIGTERM);
    let run = keel.finish(HANG_GUARD);
    run.assert_probe_stopped_by("SIGTERM");
    threads.sort();
    assert!(
        threads.contains(&("keel-vcpu0".into(), libc::SCHED_OTHER)),
        "threads: {threads:?}"
    );
    let io: Vec<(&str, i32)> = threads
        .iter()
        .map(|(n, p)| (n.as_str(), *p))
        // keel's own threads and KVM's kernel workers aside.
        .filter(|(n, _)| !n.starts_with("keel") && !n.starts_with("kvm"))
        .collect();
    let (normal, batch) = (libc::SCHED_OTHER, libc::SCHED_BATCH);
    assert_eq!(
        io,
        [
            ("disk0-q0", normal),
            ("disk0-q1", normal),
            ("disk3-io", batch),
            ("disk4-q0", normal),
            ("shared-io", batch)
        ],
        "threads: {threads:?}"
    );
}

/// Each thread of process `pid`: its name and scheduling policy (`SCHED_*`, field 41 of
/// `/proc/PID/task/TID/stat`).
fn threads_with_policy(pid: u32) -> Vec<(String, i32)> {
    let tasks = format!("/proc/{pid}/task");
    std::fs::read_dir(&tasks)
        .expect("keel's /proc task directory")
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Fields after the command's closing parenthesis start at field 3 (state).
            let after = &stat[stat.rfind(')')? + 1..];
            let policy = after.split_whitespace().nth(41 - 3)?.parse().ok()?;
            Some((comm.trim().to_string(), policy))
        })
        .collect()
}

/// Userspace MMIO exits to disk0 in a run's stats.
fn disk0_exits(run: &Run) -> u64 {
    let (_, stats) = keel_stats(run);
    stats["vcpus"][0]["devices"]["mmio.disk0"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn guest_moves_the_bar_and_io_and_kicks_follow_it() {
    // The probe moves BAR 0 from where Keel put it (0xc0000000) to 0xd0000000 in the 32-bit
    // window, or to 4 GiB, the start of the 64-bit window (a 256 MiB guest's RAM ends below
    // it), then drives the disk there; the same job without the move is the baseline.
    let img = Image::zeroed("bar-move", 8 << 20);
    let disk = format!("path={}", img.path());
    let job = "probe.cmd=blk:disk=0,rw=write,bs=4k,iodepth=1,ios=1000,size=2M,verify=1";
    let baseline = run_with_stats(&disk, job);
    baseline.assert_probe_done();
    for target in [0xd000_0000u64, 0x1_0000_0000] {
        let run = run_with_stats(&disk, &format!("{job},bar={target:#x} probe.cmd=pci"));
        run.assert_probe_done();
        let r = &blk_reports(&run)[0];
        assert_eq!(outcome(r), (1000, 0, 0), "BAR at {target:#x}: {r}");
        assert!(img.bad_pattern_sectors(0, (2 << 20) / SECTOR).is_empty());
        let pci = run.report("pci");
        let bar0 = &pci["devices"][1]["bars"][0];
        assert_eq!(hex(&bar0["addr"]), target, "{pci}");
        // Kicks reach the I/O thread through the ioeventfd at the new address: were it still
        // at the old one, each kick (at least the first) would add a userspace exit to the
        // disk's configuration accesses, which are the same with and without the move.
        assert!(u(r, "kicks") >= 1, "{r}");
        let (moved, unmoved) = (disk0_exits(&run), disk0_exits(&baseline));
        assert!(
            moved <= unmoved,
            "{moved} exits to disk0 after the move to {target:#x}, {unmoved} without"
        );
    }
}

#[test]
fn a_polling_io_thread_serves_every_request_exactly_once() {
    // The I/O thread polls after each event for a window that adapts up to 1 ms: requests
    // are taken with and without kicks, completions with and without their eventfd, at depth
    // 1 (the guest polls the used ring) and 16 (it takes interrupts). Every write lands,
    // every read checks out.
    let img = Image::zeroed("poll", 8 << 20);
    let disk = format!("path={},poll_us=1000", img.path());
    let run = run_with_stats(&disk, POLLED_AND_INTERRUPTED_JOBS);
    assert_polled_and_interrupted_jobs_verified(&run, &img);
}

/// Two verified jobs on disk 0: writes at depth 1 (the guest polls the used ring), then mixed
/// reads and writes at depth 16 (it takes interrupts), over its first 2 MiB.
const POLLED_AND_INTERRUPTED_JOBS: &str =
    "probe.cmd=blk:disk=0,rw=write,bs=4k,iodepth=1,ios=512,size=2M,verify=1,poll=1 \
     probe.cmd=blk:disk=0,rw=randrw,bs=4k,iodepth=16,ios=2048,size=2M,verify=1";

/// [`POLLED_AND_INTERRUPTED_JOBS`] ran: every request completed once without an error, every
/// read checked out, and every write landed in `img`.
fn assert_polled_and_interrupted_jobs_verified(run: &Run, img: &Image) {
    run.assert_probe_done();
    let reports = blk_reports(run);
    assert_eq!(reports.len(), 2, "{}", run.describe());
    for (r, ios) in reports.iter().zip([512, 2048]) {
        assert_eq!(outcome(r), (ios, 0, 0), "{r}");
    }
    assert!(img.bad_pattern_sectors(0, (2 << 20) / SECTOR).is_empty());
}

#[test]
fn two_disks_polled_together_on_one_io_thread_serve_every_request_once() {
    // Both disks' queues are in the shared thread's poll group: after an event of either,
    // the thread looks at both rings. Verified jobs on each, one after the other: every
    // write lands on its own disk, every read checks out.
    let a = Image::zeroed("poll-a", 8 << 20);
    let b = Image::zeroed("poll-b", 8 << 20);
    let kernel = probe_image("probe.elf");
    let disks = [
        format!("path={},iothread=polled,poll_us=200", a.path()),
        format!("path={},iothread=polled,poll_us=200", b.path()),
    ];
    let jobs = "probe.cmd=blk:disk=0,rw=write,bs=4k,iodepth=1,ios=512,size=2M,verify=1,poll=1 \
                probe.cmd=blk:disk=1,rw=write,bs=4k,iodepth=4,ios=512,size=2M,verify=1 \
                probe.cmd=blk:disk=1,rw=randrw,bs=4k,iodepth=16,ios=2048,size=2M,verify=1 \
                probe.cmd=blk:disk=0,rw=randrw,bs=4k,iodepth=8,ios=1024,size=2M,verify=1";
    let mut args = vec!["--kernel", kernel.to_str().unwrap(), "--stats"];
    for d in &disks {
        args.extend(["--disk", d.as_str()]);
    }
    args.extend(["--cmdline", jobs]);
    let run = run_keel(&args);
    run.assert_probe_done();
    let reports = blk_reports(&run);
    assert_eq!(reports.len(), 4, "{}", run.describe());
    for (r, ios) in reports.iter().zip([512, 512, 2048, 1024]) {
        assert_eq!(outcome(r), (ios, 0, 0), "{r}");
    }
    assert!(a.bad_pattern_sectors(0, (2 << 20) / SECTOR).is_empty());
    assert!(b.bad_pattern_sectors(0, (2 << 20) / SECTOR).is_empty());
}

/// Whether `dir` is on tmpfs.
fn on_tmpfs(dir: &str) -> bool {
    let path = std::ffi::CString::new(dir).unwrap();
    // SAFETY: an all-zero statfs is a valid out-parameter; `path` is NUL-terminated.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs writes only into `fs`.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut fs) };
    rc == 0 && fs.f_type == 0x0102_1994
}

#[test]
fn a_disk_in_memory_is_served_by_the_sync_engine_unless_io_uring_is_named() {
    // On tmpfs io_uring would hand every request to a worker thread, so by default the I/O
    // thread runs them itself. Both engines, one after the other on the same file: verified
    // writes and reads at depth 1 (polled) and 16 (interrupts), each request exactly once.
    assert!(on_tmpfs("/dev/shm"), "this test needs /dev/shm on tmpfs");
    let img = Image::zeroed_in(std::path::Path::new("/dev/shm"), "in-memory", 8 << 20);
    let kernel = probe_image("probe.elf");
    for (option, engine) in [("", "sync"), (",engine=io_uring", "io_uring")] {
        let disk = format!("path={}{option}", img.path());
        let run = run_keel(&[
            "--kernel",
            kernel.to_str().unwrap(),
            "--log-level",
            "info",
            "--disk",
            &disk,
            "--cmdline",
            POLLED_AND_INTERRUPTED_JOBS,
        ]);
        assert!(
            run.stderr
                .contains(&format!("1 queue(s), {engine} I/O engine")),
            "{option}: {}",
            run.describe()
        );
        assert_polled_and_interrupted_jobs_verified(&run, &img);
    }
}

#[test]
fn stats_carry_the_cpu_time_of_the_vcpu_and_io_threads() {
    let img = Image::zeroed("cpu-time", 4 << 20);
    let disk = format!("path={}", img.path());
    let run = run_with_stats(&disk, "probe.cmd=blk:disk=0,rw=randread,iodepth=8,ios=2000");
    run.assert_probe_done();
    let (_, stats) = keel_stats(&run);
    let cpu = &stats["cpu_ns"];
    // Both kinds of thread ran (the I/O thread served 2000 requests), so both sums grew.
    assert!(cpu["vcpus"].as_u64().unwrap_or(0) > 0, "{cpu}");
    assert!(cpu["iothreads"].as_u64().unwrap_or(0) > 0, "{cpu}");
}

#[test]
fn a_head_past_the_ring_sets_device_needs_reset_and_a_reset_recovers() {
    // The probe publishes a chain head one past queue 0's last descriptor, waits for the
    // device status to show DEVICE_NEEDS_RESET (0x40), resets the device and runs a verified
    // write job on it.
    let img = Image::zeroed("bad-head", 8 << 20);
    let disk = format!("path={}", img.path());
    let run = run_with_stats(
        &disk,
        "probe.cmd=blk:disk=0,rw=write,bs=4k,iodepth=4,ios=256,size=1M,verify=1,bad_head=1",
    );
    run.assert_probe_done();
    let status = u(&run.report("blk-bad-head"), "status");
    assert_eq!(
        status & 0x40,
        0x40,
        "status {status:#x}\n{}",
        run.describe()
    );
    let r = &blk_reports(&run)[0];
    assert_eq!(outcome(r), (256, 0, 0), "{r}");
    assert!(img.bad_pattern_sectors(0, (1 << 20) / SECTOR).is_empty());
    let resets = run.stderr.matches("the device needs a reset").count();
    assert_eq!(resets, 1, "{}", run.describe());
}

#[test]
fn a_write_past_the_file_size_limit_is_an_io_error_not_a_dead_keel() {
    // `ulimit -f` of 16 MiB, a 64 MiB sparse image: the guest writes 1 MiB at 32 MiB. The
    // kernel refuses the write (EFBIG, SIGXFSZ ignored); the guest sees I/O errors and keel
    // runs on to the guest's poweroff.
    let img = Image::zeroed("fsize", 64 << 20);
    let kernel = probe_image("probe.elf");
    let disk = format!("path={}", img.path());
    let mut cmd = std::process::Command::new(keel_bin());
    cmd.args([
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "size=256M",
        "--disk",
        &disk,
        "--cmdline",
        "probe.cmd=blk:disk=0,rw=write,bs=64k,iodepth=4,ios=16,offset=32m",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let limit = libc::rlimit {
        rlim_cur: 16 << 20,
        rlim_max: 16 << 20,
    };
    // SAFETY: setrlimit(2) is async-signal-safe, as pre_exec requires; `limit` lives on.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let run = finish(cmd.spawn().expect("spawn keel"), HANG_GUARD);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    run.assert_probe_done();
    let r = &blk_reports(&run)[0];
    assert_eq!(u(r, "errors"), 16, "every write failed: {r}");
    assert_eq!(
        std::fs::metadata(&img.0).unwrap().len(),
        64 << 20,
        "image untouched"
    );
}

#[test]
fn a_second_keel_cannot_open_an_image_a_running_keel_writes() {
    let img = Image::zeroed("locked", 1 << 20);
    let kernel = probe_image("probe.elf");
    let disk = format!("path={}", img.path());
    let mut first = Watched::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--disk",
        &disk,
        "--cmdline",
        RUNS_UNTIL_STOPPED,
    ]);
    first.wait_stdout(BOOT_LINE, HANG_GUARD);
    for group in [disk.clone(), format!("{disk},readonly=on")] {
        let second = run_keel(&["--kernel", kernel.to_str().unwrap(), "--disk", &group]);
        assert_eq!(second.code(), Some(1), "{group}: {}", second.describe());
        assert!(
            second.stderr.contains("is in use"),
            "{group}: {}",
            second.describe()
        );
    }
    // lock=off opts out (the second keel then only reads its boot line and powers off).
    let shared = run_keel(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--disk",
        &format!("{disk},readonly=on,lock=off"),
        "--cmdline",
        "probe.cmd=boot",
    ]);
    shared.assert_probe_done();
    first.signal(libc::SIGTERM);
    assert_eq!(first.finish(HANG_GUARD).code(), Some(0));
}

#[test]
fn bad_blk_arguments_are_refused_before_anything_runs() {
    for (args, needle) in [
        ("disk=0,colour=red", "unknown argument 'colour'"),
        ("ios=5,iodepth=2,ios=6", "ios given twice"),
        ("bs=1000", "bs '1000' must be 512..1m"),
        ("queues=99", "queues '99' must be 1.."),
        ("verify=yes", "bad value 'yes' for verify"),
        ("ios=5,runtime=1", "give ios or runtime, not both"),
        ("size=4k,bs=8k", "size 4096 is smaller than bs 8192"),
        ("bar=0x1234", "bar '0x1234' must be a 4 KiB-aligned"),
    ] {
        let cmdline = format!("probe.cmd=boot probe.cmd=blk:{args}");
        let run = common::run_probe("probe.elf", 1, "128M", &cmdline);
        let lines = run.json_lines();
        let last = lines.last().expect("a final line");
        assert_eq!(last["done"], false, "{args}: {}", run.describe());
        let error = last["error"].as_str().unwrap_or("");
        assert!(
            error.contains(needle),
            "{args}: {error}\n{}",
            run.describe()
        );
        // Validated first: not even the boot command ran.
        assert!(
            !lines.iter().any(|l| l["cmd"] == "boot"),
            "{args}: {}",
            run.describe()
        );
    }
}
