//! Presenting a benchmark: a side-by-side table (Keel, and QEMU when compared) of IOPS,
//! bandwidth and latency percentiles per direction with Keel's exits per I/O, and one
//! `keel-bench-fio: {JSON}` line with the same figures for scripts.

use std::fmt::Write;

use serde_json::{json, Value};

use super::guest_irqs;
use super::report::{DirectionTotal, Summary};
use super::{BenchReport, GuestKind, SideResult, CONFIG_DISK_ID};

/// What a side's counter window says per fio I/O; each figure only where that side has the
/// counter (QEMU's window holds KVM's counters only).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExitRates {
    /// KVM exits (all reasons) per I/O.
    pub kvm: Option<f64>,
    /// Keel's userspace exits per I/O.
    pub keel: Option<f64>,
    /// Requests Keel's data disks completed.
    pub disk_requests: Option<u64>,
    /// Notifications the guest sent Keel's data disks, per I/O.
    pub kicks: Option<f64>,
    /// Interrupts Keel's data disks sent the guest, per I/O.
    pub interrupts: Option<f64>,
    /// CPU time of the VMM's vCPU threads per I/O, in microseconds.
    pub vcpu_cpu_us: Option<f64>,
    /// CPU time of the VMM's I/O path (I/O threads, io_uring workers) per I/O, in
    /// microseconds.
    pub io_cpu_us: Option<f64>,
    /// Mean time a data-disk request spent in Keel's backend, from the I/O thread popping it
    /// to its completion, in microseconds; what the guest's latency adds to it is the trip
    /// through the rings, the notifications and the guest's driver.
    pub backend_latency_us: Option<f64>,
}

/// KVM's per-vCPU counters that say where exits go (by reason, or what causes them), reported
/// per fio I/O beside the total so that Keel and QEMU can be compared reason by reason.
pub const EXIT_REASONS: [&str; 12] = [
    "halt_exits",
    "irq_exits",
    "irq_window_exits",
    "request_irq_exits",
    "io_exits",
    "mmio_exits",
    "signal_exits",
    "insn_emulation",
    "hypercalls",
    "irq_injections",
    "halt_wakeup",
    "pf_fixed",
];

/// `EXIT_REASONS` per I/O over fio's run, for the counters the side has.
pub fn exits_by_reason(side: &SideResult) -> Vec<(&'static str, f64)> {
    let (Some(window), Some(summary)) = (side.run.window.as_ref(), side.summary.as_ref()) else {
        return Vec::new();
    };
    let ios = summary.total_ios();
    if ios == 0 {
        return Vec::new();
    }
    EXIT_REASONS
        .iter()
        .filter_map(|&r| {
            let n = window.delta.get(&format!("kvm.{r}"))?;
            Some((r, *n as f64 / ios as f64))
        })
        .collect()
}

/// The guest's interrupts per I/O by source family (`guest_irqs::family`), when it printed
/// them and fio did I/O.
pub fn guest_irqs_per_io(side: &SideResult) -> Vec<(String, f64)> {
    let ios = side.summary.as_ref().map_or(0, Summary::total_ios);
    guest_irqs::per_io_by_family(&side.guest_irqs, ios)
}

/// The exit rates over fio's run, when the side has a counter window and fio did I/O.
pub fn exit_rates(side: &SideResult) -> Option<ExitRates> {
    let window = side.run.window.as_ref()?;
    let ios = side.summary.as_ref()?.total_ios();
    let per_io = |name: &str| window.delta.get(name).map(|&v| v as f64 / ios as f64);
    let has_disks = window.delta.keys().any(|k| k.starts_with("disk."));
    let disks_per_io = |counter: &str| {
        has_disks.then(|| window.data_disks_sum(CONFIG_DISK_ID, counter) as f64 / ios as f64)
    };
    let disk_requests = has_disks.then(|| window.disk_requests(CONFIG_DISK_ID));
    (ios > 0).then(|| ExitRates {
        kvm: per_io("kvm.exits"),
        keel: per_io("keel.exits"),
        disk_requests,
        kicks: disks_per_io("kicks"),
        interrupts: disks_per_io("interrupts"),
        vcpu_cpu_us: per_io("cpu_ns.vcpus").map(|ns| ns / 1000.0),
        io_cpu_us: per_io("cpu_ns.iothreads").map(|ns| ns / 1000.0),
        backend_latency_us: disk_requests.map(|requests| {
            let ns = window.data_disks_sum(CONFIG_DISK_ID, "latency_ns");
            ns as f64 / requests.max(1) as f64 / 1000.0
        }),
    })
}

fn direction_json(d: &DirectionTotal) -> Value {
    json!({
        "ios": d.ios, "bytes": d.bytes, "iops": d.iops, "bw_bytes": d.bw_bytes,
        "lat_mean_ns": d.lat_mean_ns, "p50_ns": d.p50_ns, "p99_ns": d.p99_ns,
        "p999_ns": d.p999_ns,
    })
}

fn side_json(side: &SideResult) -> Value {
    let mut v = json!({
        "ok": side.ok(),
        "problem": side.problem,
        "wall_secs": side.run.wall.as_secs_f64(),
        "fio_exit_codes": side.exit_codes,
    });
    if let Some(s) = &side.summary {
        v["jobs"] = json!(s.jobs.len());
        v["failed_jobs"] = json!(s.failed_jobs);
        v["read"] = direction_json(&s.read);
        v["write"] = direction_json(&s.write);
    }
    if let Some(w) = &side.run.window {
        v["window_secs"] = json!(w.secs);
        for (key, name) in [("kvm_exits", "kvm.exits"), ("keel_exits", "keel.exits")] {
            v[key] = json!(w.delta.get(name));
        }
    }
    if let Some(e) = exit_rates(side) {
        v["exits_per_io_kvm"] = json!(e.kvm);
        v["exits_per_io_keel"] = json!(e.keel);
        v["disk_requests"] = json!(e.disk_requests);
        v["kicks_per_io"] = json!(e.kicks);
        v["interrupts_per_io"] = json!(e.interrupts);
        v["vcpu_cpu_us_per_io"] = json!(e.vcpu_cpu_us);
        v["io_cpu_us_per_io"] = json!(e.io_cpu_us);
        v["backend_latency_us"] = json!(e.backend_latency_us);
        let by_reason: serde_json::Map<String, Value> = exits_by_reason(side)
            .into_iter()
            .map(|(r, x)| (r.to_string(), json!(x)))
            .collect();
        v["kvm_per_io"] = Value::Object(by_reason);
    }
    let irqs: serde_json::Map<String, Value> = guest_irqs_per_io(side)
        .into_iter()
        .map(|(f, x)| (f, json!(x)))
        .collect();
    if !irqs.is_empty() {
        v["guest_irqs_per_io"] = Value::Object(irqs);
    }
    v
}

/// Total IOPS of a side (both directions), when it produced figures.
fn iops(side: &SideResult) -> Option<f64> {
    side.summary.as_ref().map(|s| s.read.iops + s.write.iops)
}

/// The `keel-bench-fio:` line's JSON.
pub fn json(report: &BenchReport) -> Value {
    let ratio = match (&report.keel, &report.qemu) {
        (Some(k), Some(q)) if k.ok() && q.ok() => match (iops(k), iops(q)) {
            (Some(k), Some(q)) if q > 0.0 => Some(k / q),
            _ => None,
        },
        _ => None,
    };
    json!({
        "job": report.job,
        "guest": match report.guest { GuestKind::Linux => "linux", GuestKind::Probe => "probe" },
        "disks": report.disks,
        "disk_size": report.disk_size,
        "vcpus": report.vcpus,
        "memory": report.memory,
        "keel": report.keel.as_ref().map(side_json),
        "qemu": report.qemu.as_ref().map(side_json),
        "iops_ratio_keel_to_qemu": ratio,
    })
}

fn fmt_count(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// Picks one direction of a summary.
type PickDirection = fn(&Summary) -> &DirectionTotal;
/// Formats one figure of a direction.
type FormatCell = fn(&DirectionTotal) -> String;

/// The side-by-side table, then each side's problem, if any.
pub fn table(report: &BenchReport) -> String {
    let sides = report.sides();
    let mut rows = direction_rows(&sides);
    rows.extend(count_rows(&sides));
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut out = format!(
        "fio job {} on {} disk(s) of {} MiB, {} guest, {} vCPU(s), {} MiB\n",
        report.job,
        report.disks,
        report.disk_size >> 20,
        match report.guest {
            GuestKind::Linux => "Linux",
            GuestKind::Probe => "probe",
        },
        report.vcpus,
        report.memory >> 20
    );
    let _ = write!(out, "{:<width$}", "");
    for s in &sides {
        let _ = write!(out, " {:>14}", s.vmm);
    }
    out.push('\n');
    for (label, cells) in rows {
        let _ = write!(out, "{label:<width$}");
        for c in cells {
            let _ = write!(out, " {c:>14}");
        }
        out.push('\n');
    }
    if let Some(ratio) = json(report)["iops_ratio_keel_to_qemu"].as_f64() {
        let _ = writeln!(out, "keel/qemu IOPS: {ratio:.2}");
    }
    write_problems(&mut out, &sides);
    out
}

/// One table row: its label and a cell per side.
type Row = (String, Vec<String>);

/// IOPS, bandwidth and latencies, for each direction some side did I/O in.
fn direction_rows(sides: &[&SideResult]) -> Vec<Row> {
    let mut rows = Vec::new();
    let wanted = |pick: PickDirection| {
        sides
            .iter()
            .filter_map(|s| s.summary.as_ref())
            .any(|s| pick(s).ios > 0)
    };
    let dirs: [(&str, PickDirection); 2] = [("read", |s| &s.read), ("write", |s| &s.write)];
    for (name, pick) in dirs {
        if !wanted(pick) {
            continue;
        }
        let cells: [(&str, FormatCell); 6] = [
            ("IOPS", |d| fmt_count(d.iops)),
            ("bandwidth MiB/s", |d| {
                format!("{:.1}", d.bw_bytes / 1048576.0)
            }),
            ("latency mean us", |d| us(d.lat_mean_ns as u64)),
            ("latency p50 us", |d| us(d.p50_ns)),
            ("latency p99 us", |d| us(d.p99_ns)),
            ("latency p99.9 us", |d| us(d.p999_ns)),
        ];
        for (label, cell) in cells {
            rows.push((
                format!("{name} {label}"),
                sides
                    .iter()
                    .map(|s| s.summary.as_ref().map_or("-".into(), |x| cell(pick(x))))
                    .collect(),
            ));
        }
    }
    rows
}

/// I/Os, disk requests, exits per I/O and wall time.
fn count_rows(sides: &[&SideResult]) -> Vec<Row> {
    let per_io = |f: fn(ExitRates) -> Option<String>| {
        sides
            .iter()
            .map(|s| exit_rates(s).and_then(f).unwrap_or_else(|| "n/a".into()))
            .collect()
    };
    let mut rows = vec![
        (
            "I/Os (fio)".into(),
            sides
                .iter()
                .map(|s| {
                    s.summary
                        .as_ref()
                        .map_or("-".into(), |x| fmt_count(x.total_ios() as f64))
                })
                .collect(),
        ),
        (
            "disk requests (keel)".into(),
            per_io(|e| e.disk_requests.map(|n| fmt_count(n as f64))),
        ),
        (
            "KVM exits per I/O".into(),
            per_io(|e| e.kvm.map(|v| format!("{v:.4}"))),
        ),
    ];
    rows.extend(reason_rows(sides));
    rows.extend(guest_irq_rows(sides));
    rows.extend([
        (
            "keel userspace exits per I/O".into(),
            per_io(|e| e.keel.map(|v| format!("{v:.4}"))),
        ),
        (
            "disk kicks per I/O (keel)".into(),
            per_io(|e| e.kicks.map(|v| format!("{v:.4}"))),
        ),
        (
            "disk interrupts per I/O (keel)".into(),
            per_io(|e| e.interrupts.map(|v| format!("{v:.4}"))),
        ),
        (
            "vCPU threads' CPU us per I/O".into(),
            per_io(|e| e.vcpu_cpu_us.map(|v| format!("{v:.2}"))),
        ),
        (
            "I/O threads' CPU us per I/O".into(),
            per_io(|e| e.io_cpu_us.map(|v| format!("{v:.2}"))),
        ),
        (
            "backend latency mean us (keel)".into(),
            per_io(|e| e.backend_latency_us.map(|v| format!("{v:.1}"))),
        ),
        (
            "wall time s".into(),
            sides
                .iter()
                .map(|s| format!("{:.1}", s.run.wall.as_secs_f64()))
                .collect(),
        ),
    ]);
    rows
}

/// `  REASON per I/O` rows, for each reason some side counted.
fn reason_rows(sides: &[&SideResult]) -> Vec<Row> {
    let per_side: Vec<Vec<(&str, f64)>> = sides.iter().map(|s| exits_by_reason(s)).collect();
    let counted = EXIT_REASONS
        .into_iter()
        .filter(|r| per_side.iter().flatten().any(|(n, x)| n == r && *x > 0.0));
    per_io_rows(&per_side, counted, "n/a", |r| format!("  {r} per I/O"))
}

/// `  guest FAMILY interrupts per I/O` rows, for each family some side's guest counted.
fn guest_irq_rows(sides: &[&SideResult]) -> Vec<Row> {
    let per_side: Vec<Vec<(String, f64)>> = sides.iter().map(|s| guest_irqs_per_io(s)).collect();
    let mut families: Vec<&str> = per_side.iter().flatten().map(|(f, _)| f.as_str()).collect();
    families.sort_unstable();
    families.dedup();
    per_io_rows(&per_side, families, "0", |f| {
        format!("  guest {f} interrupts per I/O")
    })
}

/// One row per name, a cell per side: its per-I/O figure, or `missing` where it has none.
fn per_io_rows<'a, N: AsRef<str>>(
    per_side: &[Vec<(N, f64)>],
    names: impl IntoIterator<Item = &'a str>,
    missing: &str,
    label: impl Fn(&str) -> String,
) -> Vec<Row> {
    names
        .into_iter()
        .map(|name| {
            let cells = per_side
                .iter()
                .map(|side| {
                    side.iter()
                        .find(|(n, _)| n.as_ref() == name)
                        .map_or_else(|| missing.into(), |(_, x)| format!("{x:.4}"))
                })
                .collect();
            (label(name), cells)
        })
        .collect()
}

/// Each side's problem, with the console tail of a side that failed.
fn write_problems(out: &mut String, sides: &[&SideResult]) {
    for s in sides {
        if let Some(p) = &s.problem {
            let _ = writeln!(out, "{}: {p}", s.vmm);
            if !s.ok() && !s.run.console_tail.is_empty() {
                let _ = writeln!(
                    out,
                    "{} console ({}), last lines:",
                    s.vmm,
                    s.run.console_path.display()
                );
                for line in s.run.console_tail.lines() {
                    let _ = writeln!(out, "  | {}", line.trim_end());
                }
            }
        }
    }
}
