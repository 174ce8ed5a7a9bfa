//! Boot paths: the PVH vmlinux and the bzImage with 1, 2 and 4 vCPUs, and a guest with RAM
//! above 4 GiB. Each guest reports its CPUs, memory, command line and clocksource and powers
//! off; keel must exit 0, and the kernel must not have warned on the way (a wrong CPUID leaf,
//! for one, shows up as a warning, not as a failed boot).

use std::path::Path;

use super::{nonce, Scenario};
use crate::error::{check, RigError};
use crate::guest::{Guest, Kernel, Launch};
use crate::report::Report;
use crate::Ctx;

/// MemTotal must be at least this share of `--memory` (the kernel keeps its image, page
/// structures and reserved ranges out of MemTotal; a few percent on these sizes).
const MEMTOTAL_MIN_SHARE: f64 = 0.90;

/// (name, what it adds, boot path, vCPUs, MiB of RAM).
const BOOTS: [(&str, &str, Kernel, u32, u64); 7] = [
    (
        "boot-pvh-1cpu",
        "PVH vmlinux, 1 vCPU: CPUs, MemTotal, command line, kvm-clock",
        Kernel::Pvh,
        1,
        1024,
    ),
    (
        "boot-pvh-2cpu",
        "PVH vmlinux, 2 vCPUs",
        Kernel::Pvh,
        2,
        1024,
    ),
    (
        "boot-pvh-4cpu",
        "PVH vmlinux, 4 vCPUs",
        Kernel::Pvh,
        4,
        1024,
    ),
    (
        "boot-bzimage-1cpu",
        "bzImage, 1 vCPU",
        Kernel::BzImage,
        1,
        1024,
    ),
    (
        "boot-bzimage-2cpu",
        "bzImage, 2 vCPUs",
        Kernel::BzImage,
        2,
        1024,
    ),
    (
        "boot-bzimage-4cpu",
        "bzImage, 4 vCPUs",
        Kernel::BzImage,
        4,
        1024,
    ),
    (
        "boot-above-4g",
        "5 GiB of RAM, most of it above the 32-bit hole: MemTotal counts it",
        Kernel::Pvh,
        2,
        5 * 1024,
    ),
];

pub fn scenarios() -> Vec<Scenario> {
    BOOTS
        .iter()
        .map(|&(name, about, kernel, cpus, mib)| Scenario {
            name,
            about,
            run: Box::new(move |c, d| boot(c, d, kernel, cpus, mib)),
        })
        .collect()
}

fn boot(ctx: &Ctx, dir: &Path, kernel: Kernel, cpus: u32, mib: u64) -> Result<String, RigError> {
    let token = format!("keel.nonce={}", nonce());
    let mut launch = Launch::new(kernel, cpus, &["info"]);
    launch.memory = format!("size={mib}M");
    launch.cmdline.push(token.clone());
    let out = Guest::start(ctx, dir, "guest", &launch)?.finish()?;
    out.report.expect_clean()?;
    out.report.expect_no_kernel_warnings()?;
    check(out.code() == Some(0), || {
        format!(
            "keel exited {:?} after the guest powered off, not 0",
            out.code()
        )
    })?;
    expect_cpus(&out.report, cpus)?;
    let share = expect_memory(&out.report, mib)?;
    let cmdline = out.report.value("cmdline", "text")?;
    check(cmdline.split(' ').any(|w| w == token), || {
        format!("the guest's /proc/cmdline lacks {token}: {cmdline}")
    })?;
    let clock = out.report.value("info", "clocksource")?;
    check(clock == "kvm-clock", || {
        format!("clocksource is {clock}, not kvm-clock")
    })?;
    // Keel offers x2APIC and KVM's signature: Linux then drives its local APIC through MSRs,
    // not the MMIO page each access of which KVM must decode and emulate.
    let apic = out.report.value("apic", "mode")?;
    check(apic == "x2apic", || {
        format!("the guest's local APIC is in {apic} mode, not x2apic")
    })?;
    let caches = expect_caches(&out.report)?;
    let large = expect_large_pages(&dir.join("guest.stderr"), out.stats.as_ref())?;
    Ok(format!(
        "{cpus} vCPUs online, MemTotal {:.1}% of {mib} MiB, command line seen, clocksource {clock}, \
         APIC {apic}, caches {caches}, KVM pages_2m {large}",
        share * 100.0
    ))
}

/// Guest RAM sits 2 MiB-aligned on the host (keel's `memory [...]` log lines) and KVM maps
/// some of it with 2 MiB pages (its `pages_2m` VM statistic). Unaligned RAM gets 4 KiB pages
/// only, one nested page fault per 4 KiB the guest touches; the L1 kernel (6.1) does not
/// align large mappings itself, so this checks Keel's own alignment. Returns `pages_2m`.
fn expect_large_pages(stderr: &Path, stats: Option<&serde_json::Value>) -> Result<u64, RigError> {
    let log = std::fs::read_to_string(stderr).map_err(crate::error::io("cannot read", stderr))?;
    let pieces: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("info: memory [") && l.contains(" at host "))
        .collect();
    check(!pieces.is_empty(), || {
        "keel logged no guest RAM placement line".into()
    })?;
    if let Some(bad) = pieces.iter().find(|l| !l.contains("(2 MiB-aligned)")) {
        return Err(RigError::Check(format!("guest RAM not aligned: {bad}")));
    }
    let pages_2m = stats
        .and_then(|s| s["vm"]["pages_2m"].as_u64())
        .ok_or_else(|| RigError::Check("keel's stats lack vm.pages_2m".into()))?;
    check(pages_2m > 0, || {
        "KVM mapped no guest RAM with 2 MiB pages (vm.pages_2m is 0)".into()
    })?;
    Ok(pages_2m)
}

/// The guest sees exactly `cpus` CPUs online.
pub fn expect_cpus(report: &Report, cpus: u32) -> Result<(), RigError> {
    let nproc = report.number("info", "nproc")?;
    check(nproc == u64::from(cpus), || {
        format!("the guest has {nproc} CPUs online, not {cpus}")
    })?;
    let online = report.value("info", "cpus_online")?;
    let want = if cpus == 1 {
        "0".to_string()
    } else {
        format!("0-{}", cpus - 1)
    };
    check(online == want, || {
        format!("online CPUs are {online}, not {want}")
    })
}

/// Linux found CPU 0's caches in CPUID, an L1 data cache among them, and every online CPU
/// shares the last level (Keel's topology: one package, its L3 shared by all cores). KVM
/// before Linux 6.2 zeroes AMD's L1 leaf (0x80000005); without Keel's repair the guest listed
/// no cache at all. Returns the cache levels.
pub fn expect_caches(report: &Report) -> Result<String, RigError> {
    let levels = report.value("cache", "levels")?;
    check(levels.split(',').any(|l| l == "L1d"), || {
        format!("the guest found no L1 data cache in CPUID (its caches: {levels})")
    })?;
    let llc = report.value("cache", "llc_shared")?;
    let online = report.value("info", "cpus_online")?;
    check(llc == online, || {
        format!("the last-level cache is shared by CPUs {llc}, not by all online CPUs {online}")
    })?;
    Ok(levels.to_string())
}

/// MemTotal is at most `mib` and at least `MEMTOTAL_MIN_SHARE` of it; returns the share.
pub fn expect_memory(report: &Report, mib: u64) -> Result<f64, RigError> {
    let kb = report.number("info", "memtotal_kb")?;
    let share = (kb * 1024) as f64 / (mib << 20) as f64;
    check((MEMTOTAL_MIN_SHARE..=1.0).contains(&share), || {
        format!(
            "MemTotal {kb} kB is {:.1}% of --memory {mib} MiB (want {:.0}-100%)",
            share * 100.0,
            MEMTOTAL_MIN_SHARE * 100.0
        )
    })?;
    Ok(share)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIGNED: &str = "keel: info: memory [0x0, 0x40000000) guest node 0 at host \
                           0x7f0000000000 (2 MiB-aligned): 4 KiB pages + THP, no NUMA policy\n";

    fn check(log: &str, pages_2m: Option<u64>) -> Result<u64, RigError> {
        let path = std::env::temp_dir().join(format!("keel-rig-boot-{}.stderr", nonce()));
        std::fs::write(&path, log).unwrap();
        let stats = pages_2m.map(|n| serde_json::json!({"vm": {"pages_2m": n}}));
        let r = expect_large_pages(&path, stats.as_ref());
        let _ = std::fs::remove_file(path);
        r
    }

    fn report(lines: &str) -> Report {
        let mut r = Report::default();
        lines.lines().for_each(|l| r.push_line(l));
        r
    }

    #[test]
    fn caches_need_an_l1_and_an_llc_shared_by_every_cpu() {
        let info = "KEEL-T info cpus_online=0-1 nproc=2\n";
        let good = report(&format!(
            "{info}KEEL-T cache levels=L1d,L1i,L2,L3 llc_shared=0-1\n"
        ));
        assert_eq!(expect_caches(&good).unwrap(), "L1d,L1i,L2,L3");
        for (line, want) in [
            (
                "KEEL-T cache levels=none llc_shared=none",
                "no L1 data cache",
            ),
            (
                "KEEL-T cache levels=L2,L3 llc_shared=0-1",
                "no L1 data cache",
            ),
            (
                "KEEL-T cache levels=L1d,L3 llc_shared=0",
                "shared by CPUs 0, not",
            ),
            ("KEEL-T nothing", "no cache levels="),
        ] {
            let err = expect_caches(&report(&format!("{info}{line}\n")))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn large_pages_are_required_and_each_failure_is_named() {
        assert_eq!(check(ALIGNED, Some(102)).unwrap(), 102);
        let unaligned = ALIGNED.replace(
            "(2 MiB-aligned)",
            "(NOT 2 MiB-aligned: the guest gets 4 KiB pages only)",
        );
        for (log, pages, want) in [
            (unaligned.as_str(), Some(5), "guest RAM not aligned"),
            (ALIGNED, Some(0), "vm.pages_2m is 0"),
            (ALIGNED, None, "lack vm.pages_2m"),
            (
                "keel: info: nothing\n",
                Some(5),
                "no guest RAM placement line",
            ),
        ] {
            let err = check(log, pages).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
