//! Placement: guest RAM on 2 MiB hugetlb pages (the pool reserved on the host for the run)
//! boots and runs fio; two guest NUMA nodes show up in the guest with the CPUs and memory
//! asked for.

use std::path::Path;

use super::boot::expect_memory;
use super::Scenario;
use crate::error::{check, io, RigError};
use crate::guest::{Guest, Kernel, Launch};
use crate::image;
use crate::Ctx;

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const FREE_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";
const TOTAL_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
const RESERVED_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/resv_hugepages";
const GUEST_MIB: u64 = 512;

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "placement-hugepages",
            about:
                "hugepages=on (2 MiB pool reserved for the run): boots and runs a verifying fio job",
            run: Box::new(hugepages),
        },
        Scenario {
            name: "placement-numa",
            about: "two guest NUMA nodes: the guest sees both with the CPUs and memory asked for",
            run: Box::new(numa),
        },
    ]
}

fn read_number(path: &str) -> Result<u64, RigError> {
    let s = std::fs::read_to_string(path).map_err(io("cannot read", path))?;
    s.trim()
        .parse()
        .map_err(|_| RigError::Check(format!("{path} holds '{}', not a number", s.trim())))
}

/// Grows the host's 2 MiB pool so `pages` are free; puts the old size back when dropped.
pub(super) struct HugepagePool {
    old: Option<u64>,
}

impl HugepagePool {
    pub(super) fn reserve(pages: u64) -> Result<Self, RigError> {
        let free = read_number(FREE_2M)?;
        if free >= pages {
            return Ok(HugepagePool { old: None });
        }
        let total = read_number(NR_HUGEPAGES)?;
        let want = total + pages - free;
        std::fs::write(NR_HUGEPAGES, want.to_string()).map_err(io("cannot write", NR_HUGEPAGES))?;
        let pool = HugepagePool { old: Some(total) };
        let got = read_number(FREE_2M)?;
        check(got >= pages, || {
            format!("asked the host for {want} 2 MiB pages, {got} free (need {pages})")
        })?;
        Ok(pool)
    }
}

impl Drop for HugepagePool {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            let _ = std::fs::write(NR_HUGEPAGES, old.to_string());
        }
    }
}

fn hugepages(ctx: &Ctx, dir: &Path) -> Result<String, RigError> {
    let _pool = HugepagePool::reserve(GUEST_MIB / 2)?;
    let a = image::create(dir, "a.img", 64 << 20, None)?;
    let mut launch = Launch::new(Kernel::Pvh, 2, &["info", "fio:verify1"]);
    launch.memory = format!("size={GUEST_MIB}M,hugepages=on,hugepage_size=2M");
    launch.disks = vec![format!("path={}", a.display())];
    let mut guest = Guest::start(ctx, dir, "guest", &launch)?;
    // Once the guest runs fio its RAM is mapped: every page of it comes from the pool, in use
    // or reserved (keel maps hugetlb RAM without MAP_NORESERVE).
    guest.wait_for("KEEL-T-STEP fio:verify1")?;
    let in_use = read_number(TOTAL_2M)? + read_number(RESERVED_2M)? - read_number(FREE_2M)?;
    let out = guest.finish()?;
    out.report.expect_clean()?;
    check(out.code() == Some(0), || {
        format!("keel exited {:?}, not 0", out.code())
    })?;
    check(in_use >= GUEST_MIB / 2, || {
        format!(
            "while the guest ran, {in_use} pages of the host's 2 MiB pool were in use or \
             reserved, not the {} of its RAM",
            GUEST_MIB / 2
        )
    })?;
    let fio = out
        .report
        .all("fio")
        .next()
        .ok_or_else(|| RigError::Check("no fio result".into()))?;
    check(
        fio.get("rc").map(String::as_str) == Some("0")
            && fio.get("errors").map(String::as_str) == Some("0"),
        || format!("fio failed on hugetlb-backed RAM: {fio:?}"),
    )?;
    let share = expect_memory(&out.report, GUEST_MIB)?;
    Ok(format!(
        "{GUEST_MIB} MiB on 2 MiB hugetlb pages ({in_use} of the pool's pages held while it \
         ran): fio verified, MemTotal {:.1}%",
        share * 100.0
    ))
}

fn numa(ctx: &Ctx, dir: &Path) -> Result<String, RigError> {
    let mut launch = Launch::new(Kernel::Pvh, 2, &["info"]);
    launch.numa = vec![
        "guest_node=0,cpus=0,memory=512M".into(),
        "guest_node=1,cpus=1,memory=512M".into(),
    ];
    let out = Guest::start(ctx, dir, "guest", &launch)?.finish()?;
    out.report.expect_clean()?;
    check(out.code() == Some(0), || {
        format!("keel exited {:?}, not 0", out.code())
    })?;
    let nodes = out.report.number("info", "numa_nodes")?;
    check(nodes == 2, || {
        format!("the guest sees {nodes} NUMA nodes, not 2")
    })?;
    let mut seen = Vec::new();
    for (id, cpus) in [("0", "0"), ("1", "1")] {
        let n = out
            .report
            .all("node")
            .find(|v| v.get("id").map(String::as_str) == Some(id))
            .ok_or_else(|| RigError::Check(format!("no report for guest node {id}")))?;
        let got = n.get("cpus").map(String::as_str).unwrap_or("");
        check(got == cpus, || {
            format!("guest node {id} has CPUs '{got}', not {cpus}")
        })?;
        let kb: u64 = n.get("mem_kb").and_then(|v| v.parse().ok()).unwrap_or(0);
        let share = (kb << 10) as f64 / (512u64 << 20) as f64;
        check((0.75..=1.0).contains(&share), || {
            format!(
                "guest node {id} has {kb} kB, {:.1}% of the 512 MiB asked for",
                share * 100.0
            )
        })?;
        seen.push(format!(
            "node {id}: CPU {cpus}, {:.0}% of 512 MiB",
            share * 100.0
        ));
    }
    Ok(seen.join("; "))
}
