//! The memory step: guest RAM mapped as the placement plan lays it out (backing, NUMA
//! policy), logged piece by piece, and prefaulted if the config asks.

use crate::config::VmConfig;
use crate::memory::{Backing, GuestRam, PrefaultReport};
use crate::placement;

use super::VmError;

/// Maps guest RAM as `plan` lays it out, logs where each piece landed, and prefaults it if
/// asked.
pub(super) fn map_guest_ram(
    config: &VmConfig,
    plan: &placement::Plan,
) -> Result<GuestRam, VmError> {
    let m = &config.memory;
    let backing = Backing {
        page_size: m.page_size(),
        hugetlb: m.hugepages,
        shared: m.shared,
        thp: m.use_thp(),
        mergeable: m.mergeable,
    };
    let ram = GuestRam::with_pieces(plan.regions.clone(), &plan.pieces, &backing)?;
    for p in &ram.pieces {
        let policy = match placement::range_policy(p.host_addr as *const u8) {
            Ok((mode, nodes)) => placement::describe_policy(mode, &nodes),
            Err(e) => format!("policy unknown ({e})"),
        };
        let aligned = if crate::memory::is_ram_aligned(p.host_addr as *const u8) {
            "2 MiB-aligned"
        } else {
            "NOT 2 MiB-aligned: the guest gets 4 KiB pages only"
        };
        log::info!(
            "memory [{:#x}, {:#x}) guest node {} at host {:#x} ({aligned}): {}, {policy}",
            p.piece.start,
            p.piece.start + p.piece.size,
            p.piece.guest_node,
            p.host_addr,
            backing.describe()
        );
    }
    if m.prefault {
        let cpus = placement::thread_affinity(None).map_err(VmError::Topology)?;
        log_prefault(&ram.prefault(&cpus)?);
    }
    Ok(ram)
}

fn log_prefault(report: &PrefaultReport) {
    let workers: Vec<String> = report
        .workers
        .iter()
        .map(|w| {
            format!(
                "cpu {}: {} MiB in {} ms",
                w.cpu.map_or_else(|| "?".to_string(), |c| c.to_string()),
                w.bytes >> 20,
                w.cpu_time.as_millis()
            )
        })
        .collect();
    log::info!(
        "prefaulted {} MiB of guest RAM in {} ms with {} on {} threads ({})",
        report.bytes >> 20,
        report.elapsed.as_millis(),
        report.method,
        report.workers.len(),
        workers.join("; ")
    );
}
