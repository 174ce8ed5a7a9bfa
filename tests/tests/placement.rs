//! Guest tests for memory and CPU placement: they check where things really landed, through
//! /proc (each thread's `Cpus_allowed_list`, `smaps` page sizes and huge page counts,
//! `numa_maps` bind policies) and what the probe guest reads from SRAT and SLIT, not what was
//! configured. Tests that need huge pages reserve them (CI runs as root) and give them back.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use common::{
    probe_image, run_keel, thread_status, Run, Watched, BOOT_LINE, HANG_GUARD, RUNS_UNTIL_STOPPED,
};

/// Huge page tests change the host's pool: one at a time.
static POOL: Mutex<()> = Mutex::new(());

/// What /proc said about a running keel.
struct Snapshot {
    /// (thread name, Cpus_allowed_list) per thread.
    threads: Vec<(String, String)>,
    smaps: String,
    numa_maps: String,
}

/// Boots the probe with `args`, runs `cmds`, then keeps the guest spinning; samples /proc
/// once every vCPU thread has pinned itself and the guest has run `cmds`, then stops keel
/// with SIGTERM. Nothing waits a fixed time: the vCPU threads log where they run after
/// pinning themselves (before they enter the guest), the I/O threads are pinned before the
/// vCPUs start, and the guest prints a `boot` line after `cmds` and spins for an hour.
fn run_and_sample(args: &[&str], vcpus: usize, cmds: &str) -> (Run, Snapshot) {
    let kernel = probe_image("probe.elf");
    let cmdline = format!("{cmds} {RUNS_UNTIL_STOPPED}");
    let mut all = vec![
        "--kernel",
        kernel.to_str().unwrap(),
        "--log-level",
        "info",
        "--cmdline",
        &cmdline,
    ];
    all.extend_from_slice(args);
    let mut keel = Watched::spawn(&all);
    for index in 0..vcpus {
        keel.wait_stderr(&format!("vCPU {index} (tid "), 1, HANG_GUARD);
    }
    keel.wait_stdout(BOOT_LINE, HANG_GUARD);
    let proc_dir = format!("/proc/{}", keel.pid());
    let snap = Snapshot {
        threads: thread_status(&proc_dir, "Cpus_allowed_list"),
        smaps: std::fs::read_to_string(format!("{proc_dir}/smaps")).unwrap_or_default(),
        numa_maps: std::fs::read_to_string(format!("{proc_dir}/numa_maps")).unwrap_or_default(),
    };
    keel.signal(libc::SIGTERM);
    let run = keel.finish(HANG_GUARD);
    run.assert_probe_stopped_by("SIGTERM");
    let seen = snap
        .threads
        .iter()
        .filter(|(n, _)| n.starts_with("keel-vcpu"))
        .count();
    assert_eq!(seen, vcpus, "{:?}\n{}", snap.threads, run.describe());
    assert!(
        !snap.smaps.is_empty(),
        "no smaps for a running keel\n{}",
        run.describe()
    );
    (run, snap)
}

impl Snapshot {
    fn cpus_of(&self, thread: &str) -> &str {
        self.threads
            .iter()
            .find(|(n, _)| n == thread)
            .map(|(_, c)| c.as_str())
            .unwrap_or_else(|| panic!("no thread {thread}: {:?}", self.threads))
    }

    /// The smaps fields of the mapping that contains `addr`.
    fn smaps_at(&self, addr: u64) -> BTreeMap<String, String> {
        let start = format!("{:x}-", vma_containing(&self.smaps, addr));
        let mut lines = self.smaps.lines().skip_while(|l| !l.starts_with(&start));
        assert!(lines.next().is_some(), "no mapping at {addr:#x} in smaps");
        lines
            .map_while(|l| {
                let (k, v) = l.split_once(':')?;
                (!k.contains(' ')).then(|| (k.to_string(), v.trim().to_string()))
            })
            .collect()
    }
}

/// The start of the mapping (VMA) in `smaps` that contains `addr`: adjacent guest RAM pieces
/// with the same flags and policy may be merged into one.
fn vma_containing(smaps: &str, addr: u64) -> u64 {
    smaps
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .find(|&(a, b)| (a..b).contains(&addr))
        .unwrap_or_else(|| panic!("no mapping contains {addr:#x}"))
        .0
}

fn kib(field: &str) -> u64 {
    field
        .trim_end_matches(" kB")
        .trim()
        .parse::<u64>()
        .unwrap_or_else(|_| panic!("not a kB field: {field}"))
}

/// (guest start, guest end, guest node, host address) of every RAM piece keel logged.
fn ram_pieces(run: &Run) -> Vec<(u64, u64, u64, u64)> {
    let hex = |s: &str| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap();
    let pieces: Vec<_> = run
        .stderr
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("memory [")? + "memory [".len()..];
            let (start, rest) = rest.split_once(", ")?;
            let (end, rest) = rest.split_once(") guest node ")?;
            let (node, rest) = rest.split_once(" at host ")?;
            // "0xADDR (2 MiB-aligned): backing, policy"
            let (host, rest) = rest.split_once(' ')?;
            let aligned = rest.starts_with("(2 MiB-aligned)");
            let host = hex(host);
            assert!(
                aligned && host % (2 << 20) == 0,
                "guest RAM not 2 MiB-aligned: {l}"
            );
            Some((hex(start), hex(end), node.parse().ok()?, host))
        })
        .collect();
    assert!(
        !pieces.is_empty(),
        "no memory placement lines\n{}",
        run.describe()
    );
    pieces
}

/// Reserves `pages` more huge pages of `size_kb` for as long as it lives.
struct Reservation {
    path: String,
    before: u64,
}

impl Reservation {
    /// None if the kernel could not find that many pages (fragmented memory).
    fn new(size_kb: u64, pages: u64) -> Option<Reservation> {
        let path = format!("/sys/kernel/mm/hugepages/hugepages-{size_kb}kB/nr_hugepages");
        let read = || -> u64 {
            std::fs::read_to_string(&path)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let before = read();
        std::fs::write(&path, (before + pages).to_string()).expect("reserve huge pages (root?)");
        let now = read();
        let r = Reservation { path, before };
        (now >= before + pages).then_some(r)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, self.before.to_string());
    }
}

fn free_pages(size_kb: u64) -> u64 {
    let path = format!("/sys/kernel/mm/hugepages/hugepages-{size_kb}kB/free_hugepages");
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn assert_fails_before_start(args: &[&str], needle: &str) {
    let kernel = probe_image("probe.elf");
    let mut all = vec!["--kernel", kernel.to_str().unwrap()];
    all.extend_from_slice(args);
    let run = run_keel(&all);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    assert!(run.stdout.is_empty(), "the guest ran\n{}", run.describe());
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.describe());
    assert!(lines[0].contains(needle), "{needle:?}\n{}", run.describe());
}

#[test]
fn vcpus_and_iothreads_run_where_affinity_says() {
    let dir = std::env::temp_dir();
    let a = dir.join(format!("keel-place-a-{}", std::process::id()));
    let b = dir.join(format!("keel-place-b-{}", std::process::id()));
    for p in [&a, &b] {
        std::fs::File::create(p).unwrap().set_len(1 << 20).unwrap();
    }
    let disk_a = format!("path={},queues=1,iothread=cpus:[1]", a.display());
    // Not polling, so each queue keeps its own thread whatever the host's CPUs.
    let disk_b = format!("path={},queues=2,poll_us=0", b.display());
    let (run, snap) = run_and_sample(
        &[
            "--cpus",
            "boot=2,affinity=[0@[1],1@[0]]",
            "--disk",
            &disk_a,
            "--disk",
            &disk_b,
        ],
        2,
        "",
    );
    assert_eq!(snap.cpus_of("keel-vcpu0"), "1");
    assert_eq!(snap.cpus_of("keel-vcpu1"), "0");
    assert_eq!(snap.cpus_of("disk0-q0"), "1");
    // No NUMA binding and no iothread= CPUs: disk1 follows the vCPUs of guest node 0, i.e. all.
    assert_eq!(snap.cpus_of("disk1-q0"), "0-1");
    assert_eq!(snap.cpus_of("disk1-q1"), "0-1");
    assert!(run.stderr.contains("vCPU 0 (tid "), "{}", run.describe());
    assert!(
        run.stderr.contains("host CPUs 1 (pinned)"),
        "{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("iothread disk0-q0 (tid "),
        "{}",
        run.describe()
    );
    for p in [a, b] {
        let _ = std::fs::remove_file(p);
    }
}

/// The CPUs of a cpulist (`0-2,5`).
fn cpu_list(list: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        out.extend(a.parse::<u32>().unwrap()..=b.parse::<u32>().unwrap());
    }
    out
}

/// The host CPUs taking the interrupts of the PCI function behind `path`'s block device: the
/// union of its MSI vectors' effective affinities; empty when there is no such function.
fn completion_cpus(path: &std::path::Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).unwrap().dev();
    let block = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
    let Ok(block) = std::fs::canonicalize(block) else {
        return Vec::new();
    };
    let Some(function) = block.ancestors().find(|d| d.join("msi_irqs").is_dir()) else {
        return Vec::new();
    };
    let mut cpus: Vec<u32> = std::fs::read_dir(function.join("msi_irqs"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let irq = e.file_name().into_string().ok()?;
            std::fs::read_to_string(format!("/proc/irq/{irq}/effective_affinity_list")).ok()
        })
        .flat_map(|list| cpu_list(&list))
        .collect();
    cpus.sort_unstable();
    cpus.dedup();
    cpus
}

#[test]
fn iothreads_run_where_their_disks_completions_arrive() {
    let path = std::env::temp_dir().join(format!("keel-place-irq-{}", std::process::id()));
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let process = own
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(cpu_list)
        .unwrap();
    let irq: Vec<u32> = completion_cpus(&path)
        .into_iter()
        .filter(|c| process.contains(c))
        .collect();
    let narrows = !irq.is_empty() && irq != process;
    let disk = format!("path={}", path.display());
    // A second disk on the same device: those CPUs are taken by the first disk's thread.
    let path2 = path.with_extension("second");
    std::fs::File::create(&path2)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let second = format!("path={}", path2.display());
    let args = ["--cpus", "boot=1", "--disk", &disk, "--disk", &second];
    let (run, snap) = run_and_sample(&args, 1, "");
    let expected = if narrows { &irq } else { &process };
    assert_eq!(
        cpu_list(snap.cpus_of("disk0-q0")),
        *expected,
        "{}",
        run.describe()
    );
    assert_eq!(
        cpu_list(snap.cpus_of("disk1-q0")),
        process,
        "{}",
        run.describe()
    );
    assert_eq!(
        run.stderr.contains("which take the completion interrupts"),
        narrows,
        "{}",
        run.describe()
    );
    if narrows {
        // With the vCPU pinned to one of those CPUs, the thread leaves that CPU to it: its
        // candidates are the host node's CPUs (given by a NUMA binding, or the node holding
        // the pinned vCPU's CPU) less the vCPU's, where that leaves some; then those beside
        // the interrupts, where that narrows them.
        let first = irq[0];
        let node0 =
            cpu_list(&std::fs::read_to_string("/sys/devices/system/node/node0/cpulist").unwrap());
        let narrowed = |from: &Vec<u32>, keep: &dyn Fn(u32) -> bool| {
            let kept: Vec<u32> = from.iter().copied().filter(|c| keep(*c)).collect();
            if kept.is_empty() || kept == *from {
                from.clone()
            } else {
                kept
            }
        };
        let free = narrowed(&node0, &|c| c != first);
        let expected = narrowed(&free, &|c| irq.contains(&c) && c != first);
        let cpus = format!("boot=1,affinity=[0@[{first}]]");
        let numa = "guest_node=0,cpus=0,memory=256M,host_node=0";
        for bound in [true, false] {
            let mut args = vec!["--cpus", &cpus, "--memory", "size=256M", "--disk", &disk];
            if bound {
                args.extend(["--numa", numa]);
            }
            let (run, snap) = run_and_sample(&args, 1, "");
            assert_eq!(snap.cpus_of("keel-vcpu0"), first.to_string());
            assert_eq!(
                cpu_list(snap.cpus_of("disk0-q0")),
                expected,
                "NUMA-bound {bound}\n{}",
                run.describe()
            );
            assert!(!expected.contains(&first) || node0 == vec![first]);
        }
    } else {
        eprintln!("NOTE: this host's disk interrupts reach every CPU: only the default checked");
    }
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path2);
}

#[test]
fn numa_nodes_are_bound_pinned_and_described_in_srat_and_slit() {
    let (run, snap) = run_and_sample(
        &[
            "--cpus",
            "boot=2",
            "--memory",
            "size=512M",
            "--numa",
            "guest_node=0,cpus=0,memory=256M,host_node=0",
            "--numa",
            "guest_node=1,cpus=1,memory=256M,host_node=0",
        ],
        2,
        "probe.cmd=numa",
    );
    let node0_cpus = std::fs::read_to_string("/sys/devices/system/node/node0/cpulist")
        .unwrap()
        .trim()
        .to_string();
    for (name, cpus) in snap
        .threads
        .iter()
        .filter(|(n, _)| n.starts_with("keel-vcpu"))
    {
        assert_eq!(cpus, &node0_cpus, "{name}");
    }
    let pieces = ram_pieces(&run);
    assert_eq!(
        pieces.iter().map(|p| (p.0, p.1, p.2)).collect::<Vec<_>>(),
        [(0, 256 << 20, 0), (256 << 20, 512 << 20, 1)]
    );
    for (_, _, _, host) in &pieces {
        let vma = vma_containing(&snap.smaps, *host);
        let line = snap
            .numa_maps
            .lines()
            .find(|l| l.starts_with(&format!("{vma:x} ")))
            .unwrap_or_else(|| panic!("no numa_maps line for {host:#x}:\n{}", snap.numa_maps));
        assert!(line.contains(" bind:0"), "{line}");
    }
    // The guest's view.
    let numa = run.report("numa");
    let cpus: Vec<(u64, u64)> = numa["cpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["apic"].as_u64().unwrap(), c["node"].as_u64().unwrap()))
        .collect();
    assert_eq!(cpus, [(0, 0), (1, 1)], "{numa}");
    let memory: Vec<(u64, u64, u64)> = numa["memory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["base"].as_u64().unwrap(),
                m["size"].as_u64().unwrap(),
                m["node"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(memory, [(0, 256 << 20, 0), (256 << 20, 256 << 20, 1)]);
    // Both guest nodes sit on host node 0, whose distance to itself is 10: the guest gets
    // the ACPI remote default instead of an invalid 10.
    assert_eq!(numa["slit"], serde_json::json!([[10, 20], [20, 10]]));
}

#[test]
fn without_numa_the_guest_sees_no_srat() {
    let run = common::run_probe("probe.elf", 1, "128M", "probe.cmd=numa");
    run.assert_probe_done();
    let numa = run.report("numa");
    assert_eq!(numa["cpus"], serde_json::json!([]));
    assert_eq!(numa["memory"], serde_json::json!([]));
    assert_eq!(numa["slit"], serde_json::json!([]));
}

#[test]
fn hugepages_back_every_byte_of_guest_ram() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let _res = Reservation::new(2048, 128).expect("reserve 128 2 MiB pages");
    for shared in ["off", "on"] {
        let memory = format!("size=256M,hugepages=on,prefault=on,shared={shared}");
        let (run, snap) = run_and_sample(&["--memory", &memory], 1, "");
        let pieces = ram_pieces(&run);
        assert_eq!(pieces.len(), 1);
        let smaps = snap.smaps_at(pieces[0].3);
        assert_eq!(smaps["KernelPageSize"], "2048 kB", "{smaps:?}");
        // A hugetlb page mapped once counts as private even in a shared mapping.
        let hugetlb = kib(&smaps["Private_Hugetlb"]) + kib(&smaps["Shared_Hugetlb"]);
        assert_eq!(hugetlb, 256 << 10, "{smaps:?}");
        assert_eq!(kib(&smaps["Size"]), 256 << 10, "{smaps:?}");
        assert!(smaps["VmFlags"].contains("ht"), "{smaps:?}");
        assert_eq!(
            smaps["VmFlags"].split(' ').any(|f| f == "sh"),
            shared == "on",
            "{smaps:?}"
        );
        assert!(
            smaps["VmFlags"].contains("dd"),
            "not excluded from core dumps: {smaps:?}"
        );
        assert!(
            run.stderr.contains("prefaulted 256 MiB"),
            "{}",
            run.describe()
        );
    }
}

#[test]
fn gigantic_pages_when_the_host_can_reserve_them() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(_res) = Reservation::new(1 << 20, 1) else {
        eprintln!("SKIP: the kernel could not reserve a 1 GiB page (memory fragmented)");
        return;
    };
    let (run, snap) = run_and_sample(
        &[
            "--memory",
            "size=1G,hugepages=on,hugepage_size=1G,prefault=on",
        ],
        1,
        "",
    );
    let pieces = ram_pieces(&run);
    let smaps = snap.smaps_at(pieces[0].3);
    assert_eq!(smaps["KernelPageSize"], "1048576 kB", "{smaps:?}");
    let hugetlb = kib(&smaps["Private_Hugetlb"]) + kib(&smaps["Shared_Hugetlb"]);
    assert_eq!(hugetlb, 1 << 20, "{smaps:?}");
}

#[test]
fn too_small_a_pool_is_refused_before_the_vm_starts() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let free = free_pages(2048);
    let want = free + 16;
    let memory = format!("size={}M,hugepages=on", want * 2);
    let needle = format!("needs {want} free 2 MiB pages but the host has {free} free");
    assert_fails_before_start(&["--memory", &memory], &needle);
    assert_fails_before_start(&["--memory", &memory], "nr_hugepages");
}

#[test]
fn thp_backs_small_page_memory_unless_turned_off() {
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.contains("[never]") || thp.is_empty() {
        eprintln!("SKIP: THP is off on this host");
        return;
    }
    for (thp, want_huge) in [("on", true), ("off", false)] {
        let memory = format!("size=256M,prefault=on,thp={thp}");
        let (run, snap) = run_and_sample(&["--memory", &memory], 1, "");
        let pieces = ram_pieces(&run);
        let smaps = snap.smaps_at(pieces[0].3);
        let anon_huge = kib(&smaps["AnonHugePages"]);
        let rss = kib(&smaps["Rss"]);
        assert_eq!(rss, 256 << 10, "not prefaulted: {smaps:?}");
        if want_huge {
            // All but possibly a head and tail that are not 2 MiB aligned.
            assert!(anon_huge >= (256 - 4) << 10, "{smaps:?}");
            assert!(smaps["VmFlags"].contains("hg"), "{smaps:?}");
        } else {
            assert_eq!(anon_huge, 0, "{smaps:?}");
            assert!(smaps["VmFlags"].contains("nh"), "{smaps:?}");
        }
        assert!(smaps["VmFlags"].contains("dd"), "{smaps:?}");
    }
}

#[test]
fn mergeable_memory_is_offered_to_ksm() {
    let (run, snap) = run_and_sample(&["--memory", "size=128M,mergeable=on"], 1, "");
    let pieces = ram_pieces(&run);
    let smaps = snap.smaps_at(pieces[0].3);
    if std::path::Path::new("/sys/kernel/mm/ksm").exists() {
        assert!(smaps["VmFlags"].contains("mg"), "{smaps:?}");
    }
}

#[test]
fn prefaulting_4g_uses_every_host_cpu() {
    let kernel = probe_image("probe.elf");
    let run = run_keel(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--log-level",
        "info",
        "--memory",
        "size=4G,prefault=on",
        "--cmdline",
        "probe.cmd=boot",
    ]);
    run.assert_probe_done();
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("prefaulted 4096 MiB"))
        .unwrap_or_else(|| panic!("no prefault line\n{}", run.describe()));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(line.contains(&format!("on {cpus} threads")), "{line}");
    // Every worker faulted a share and used CPU time on its own CPU.
    let shares: Vec<(u32, u64, u64)> = line
        .split('(')
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .split("; ")
        .map(|w| {
            let w = w.trim_start_matches("cpu ");
            let (cpu, rest) = w.split_once(": ").unwrap();
            let (mib, rest) = rest.split_once(" MiB in ").unwrap();
            let ms = rest.trim_end_matches(" ms");
            (
                cpu.parse().unwrap(),
                mib.parse().unwrap(),
                ms.parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(shares.len(), cpus, "{line}");
    let mut seen: Vec<u32> = shares.iter().map(|s| s.0).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), cpus, "two workers on one CPU: {line}");
    assert_eq!(shares.iter().map(|s| s.1).sum::<u64>(), 4096, "{line}");
    for (cpu, mib, _) in &shares {
        assert!(*mib > 0, "CPU {cpu} faulted nothing: {line}");
    }
}

#[test]
fn placement_requests_the_host_cannot_meet_fail_before_start() {
    assert_fails_before_start(
        &[
            "--memory",
            "size=256M",
            "--numa",
            "guest_node=0,cpus=0,memory=256M,host_node=7",
        ],
        "--numa: guest_node=0: host_node=7 does not exist on this host",
    );
    assert_fails_before_start(
        &["--cpus", "boot=1,affinity=[0@[64]]"],
        "--cpus: affinity of vCPU 0: host CPUs 64 are not online on this host",
    );
    assert_fails_before_start(
        &["--memory", "size=255M,hugepages=on"],
        "--memory: size=267386880: not a multiple of the 2 MiB page size",
    );
    assert_fails_before_start(
        &[
            "--memory",
            "size=256M",
            "--numa",
            "guest_node=0,cpus=0,memory=128M",
        ],
        "--numa: the guest nodes' memory adds up to 128 MiB but --memory size is 256 MiB",
    );
    let img = std::env::temp_dir().join(format!("keel-place-bad-{}", std::process::id()));
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let disk = format!("path={},iothread=cpus:[99]", img.display());
    assert_fails_before_start(
        &["--disk", &disk],
        "--disk: disk0: iothread host CPUs 99 are not online on this host",
    );
    let _ = std::fs::remove_file(img);
}
