//! Presenting a VM's counters: the `keel-stats:` JSON line, a table at shutdown, and a
//! kvm_stat-style view of rates between two snapshots (sorted, busiest first). Every counter
//! of a [`VmCounters`] is flattened to a dotted name first:
//!
//! - `keel.exits`, `keel.io`, `keel.mmio`, `keel.unclaimed`, `keel.interrupted`, `keel.other`:
//!   Keel's userspace exits, summed over vCPUs; `keel.pio.<device>` / `keel.mmio.<device>` by
//!   device; `keel.unclaimed.pio.<port>` / `keel.unclaimed.mmio.<address>` once vCPUs stopped;
//! - `kvm.<name>`: KVM's per-vCPU counters summed over vCPUs; `kvm.vm.<name>`: VM-wide ones;
//! - `disk.<name>.requests|errors|read_bytes|write_bytes|latency_ns|kicks|interrupts`.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::VmCounters;

/// Every counter by dotted name.
pub fn flatten(c: &VmCounters) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut add = |k: String, v: u64| *out.entry(k).or_insert(0) += v;
    for v in &c.vcpus {
        let u = &v.userspace;
        for (k, n) in [
            ("exits", u.total),
            ("io", u.io),
            ("mmio", u.mmio),
            ("unclaimed", u.unclaimed),
            ("interrupted", u.interrupted),
            ("other", u.other),
        ] {
            add(format!("keel.{k}"), n);
        }
        for d in &v.devices {
            add(format!("keel.{}.{}", d.bus, d.device), d.count);
        }
        for (what, n) in &v.unclaimed {
            add(format!("keel.unclaimed.{what}"), *n);
        }
        for (k, n) in &v.kvm {
            add(format!("kvm.{k}"), *n);
        }
    }
    for (k, n) in &c.vm {
        add(format!("kvm.vm.{k}"), *n);
    }
    add("cpu_ns.vcpus".into(), c.threads.vcpus_ns);
    add("cpu_ns.iothreads".into(), c.threads.iothreads_ns);
    for (name, d) in &c.disks {
        for (k, n) in [
            ("requests", d.requests),
            ("errors", d.errors),
            ("read_bytes", d.read_bytes),
            ("write_bytes", d.write_bytes),
            ("latency_ns", d.latency_ns),
            ("kicks", d.kicks),
            ("interrupts", d.interrupts),
        ] {
            add(format!("disk.{name}.{k}"), n);
        }
    }
    out
}

/// Exits per completed I/O, (KVM exits, Keel userspace exits), when any I/O completed.
pub fn exits_per_io(c: &VmCounters) -> Option<(f64, f64)> {
    let flat = flatten(c);
    let requests: u64 = c.disks.iter().map(|(_, d)| d.requests).sum();
    (requests > 0).then(|| {
        let kvm = flat.get("kvm.exits").copied().unwrap_or(0) as f64;
        let keel = flat.get("keel.exits").copied().unwrap_or(0) as f64;
        (kvm / requests as f64, keel / requests as f64)
    })
}

/// The table printed at shutdown: every non-zero counter, largest first, then exits per I/O.
pub fn table(c: &VmCounters) -> String {
    let mut rows: Vec<(String, u64)> = flatten(c).into_iter().filter(|(_, v)| *v > 0).collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(7);
    let mut out = format!("{:<width$} {:>16}\n", "counter", "total");
    for (name, v) in rows {
        let _ = writeln!(out, "{name:<width$} {v:>16}");
    }
    if let Some((kvm, keel)) = exits_per_io(c) {
        let _ = writeln!(
            out,
            "exits per I/O: {kvm:.4} (KVM), {keel:.4} (Keel userspace)"
        );
    }
    out
}

/// One row of a rate view.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    /// Dotted counter name.
    pub name: String,
    /// Value now.
    pub total: u64,
    /// Change per second since the previous snapshot.
    pub per_sec: f64,
}

/// Rates between two snapshots of the same flattened counters (`prev` older), busiest first,
/// counters that did not move left out. Counters that went down (a reset) count from zero.
pub fn rates(prev: &BTreeMap<String, u64>, now: &BTreeMap<String, u64>, secs: f64) -> Vec<Rate> {
    let secs = if secs > 0.0 { secs } else { 1.0 };
    let mut rows: Vec<Rate> = now
        .iter()
        .filter_map(|(name, &total)| {
            let before = prev.get(name).copied().unwrap_or(0);
            let delta = if total >= before {
                total - before
            } else {
                total
            };
            (delta > 0).then(|| Rate {
                name: name.clone(),
                total,
                per_sec: delta as f64 / secs,
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        b.per_sec
            .total_cmp(&a.per_sec)
            .then_with(|| a.name.cmp(&b.name))
    });
    rows
}

/// A kvm_stat-like block: `name  total  rate/s`, at most `top` rows.
pub fn rate_table(rows: &[Rate], top: usize) -> String {
    let shown = &rows[..rows.len().min(top)];
    let width = shown.iter().map(|r| r.name.len()).max().unwrap_or(0).max(5);
    let mut out = format!("{:<width$} {:>16} {:>12}\n", "event", "total", "rate/s");
    for r in shown {
        let _ = writeln!(
            out,
            "{:<width$} {:>16} {:>12.1}",
            r.name, r.total, r.per_sec
        );
    }
    out
}

fn pairs_json(pairs: impl Iterator<Item = (String, u64)>) -> String {
    let items: Vec<String> = pairs
        .filter(|(name, _)| {
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        })
        .map(|(name, v)| format!("\"{name}\":{v}"))
        .collect();
    format!("{{{}}}", items.join(","))
}

/// The `keel-stats:` JSON object:
/// `{"vcpus":[{"index":0,"userspace":{...},"devices":{"pio.serial":3},"kvm":{...}}],"vm":{...},"disks":[...],"cpu_ns":{"vcpus":N,"iothreads":N}}`.
pub fn json(c: &VmCounters) -> String {
    let vcpus: Vec<String> = c
        .vcpus
        .iter()
        .map(|s| {
            let u = &s.userspace;
            format!(
                "{{\"index\":{},\"userspace\":{{\"total\":{},\"io\":{},\"mmio\":{},\"unclaimed\":{},\"interrupted\":{},\"other\":{}}},\"devices\":{},\"unclaimed\":{},\"kvm\":{}}}",
                s.index,
                u.total,
                u.io,
                u.mmio,
                u.unclaimed,
                u.interrupted,
                u.other,
                pairs_json(s.devices.iter().map(|d| (format!("{}.{}", d.bus, d.device), d.count))),
                pairs_json(s.unclaimed.iter().cloned()),
                pairs_json(s.kvm.iter().cloned())
            )
        })
        .collect();
    let disks: Vec<String> = c
        .disks
        .iter()
        .enumerate()
        .map(|(i, (name, d))| {
            let queues: Vec<String> = c
                .disk_queue_requests
                .get(i)
                .map(|q| q.iter().map(u64::to_string).collect())
                .unwrap_or_default();
            format!(
                "{{\"name\":\"{name}\",\"requests\":{},\"errors\":{},\"read_bytes\":{},\"write_bytes\":{},\"latency_ns\":{},\"kicks\":{},\"interrupts\":{},\"queue_requests\":[{}]}}",
                d.requests,
                d.errors,
                d.read_bytes,
                d.write_bytes,
                d.latency_ns,
                d.kicks,
                d.interrupts,
                queues.join(",")
            )
        })
        .collect();
    format!(
        "{{\"vcpus\":[{}],\"vm\":{},\"disks\":[{}],\"cpu_ns\":{{\"vcpus\":{},\"iothreads\":{}}}}}",
        vcpus.join(","),
        pairs_json(c.vm.iter().cloned()),
        disks.join(","),
        c.threads.vcpus_ns,
        c.threads.iothreads_ns
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::exits::{DeviceExits, ExitSnapshot};
    use crate::stats::VcpuStats;
    use devices::virtio::block::IoStats;

    fn counters(exits: u64, serial: u64, requests: u64) -> VmCounters {
        let vcpu = |index| VcpuStats {
            index,
            userspace: ExitSnapshot {
                io: serial,
                total: serial,
                ..Default::default()
            },
            devices: vec![DeviceExits {
                bus: "pio",
                device: "serial".into(),
                count: serial,
            }],
            unclaimed: vec![("pio.0x80".into(), 2)],
            kvm: vec![("exits".into(), exits), ("halt_exits".into(), 1)],
        };
        VmCounters {
            taken: std::time::Instant::now(),
            vcpus: vec![vcpu(0), vcpu(1)],
            vm: vec![("remote_tlb_flush".into(), 4)],
            disks: vec![(
                "disk0".into(),
                IoStats {
                    requests,
                    ..Default::default()
                },
            )],
            disk_queue_requests: vec![vec![requests.saturating_sub(1), requests.min(1)]],
            threads: crate::stats::threads::ThreadCpu {
                vcpus_ns: 7,
                iothreads_ns: 9,
            },
        }
    }

    #[test]
    fn counters_flatten_and_sum_over_vcpus() {
        let flat = flatten(&counters(100, 3, 50));
        assert_eq!(flat["kvm.exits"], 200);
        assert_eq!(flat["keel.pio.serial"], 6);
        assert_eq!(flat["keel.io"], 6);
        assert_eq!(flat["kvm.vm.remote_tlb_flush"], 4);
        assert_eq!(flat["disk.disk0.requests"], 50);
        assert_eq!(flat["keel.unclaimed.pio.0x80"], 4);
        assert_eq!((flat["cpu_ns.vcpus"], flat["cpu_ns.iothreads"]), (7, 9));
        assert_eq!(exits_per_io(&counters(100, 3, 50)), Some((4.0, 0.12)));
        assert_eq!(exits_per_io(&counters(100, 3, 0)), None);
    }

    #[test]
    fn rates_are_sorted_busiest_first() {
        let a = flatten(&counters(100, 3, 50));
        let b = flatten(&counters(400, 4, 60));
        let r = rates(&a, &b, 2.0);
        let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kvm.exits",
                "disk.disk0.requests",
                "keel.exits",
                "keel.io",
                "keel.pio.serial"
            ]
        );
        assert_eq!(r[0].per_sec, 300.0);
        assert_eq!(r[0].total, 800);
        let t = rate_table(&r, 2);
        assert_eq!(t.lines().count(), 3, "{t}");
        assert!(t.lines().nth(1).unwrap().starts_with("kvm.exits"), "{t}");
    }

    #[test]
    fn table_and_json_carry_every_counter() {
        let c = counters(100, 3, 50);
        let t = table(&c);
        assert!(t.lines().nth(1).unwrap().starts_with("kvm.exits"), "{t}");
        assert!(
            t.contains("exits per I/O: 4.0000 (KVM), 0.1200 (Keel userspace)"),
            "{t}"
        );
        let j = json(&c);
        assert!(j.contains("\"devices\":{\"pio.serial\":3}"), "{j}");
        assert!(j.contains("\"vm\":{\"remote_tlb_flush\":4}"), "{j}");
        assert!(j.starts_with("{\"vcpus\":[{\"index\":0,"), "{j}");
        assert!(j.contains("\"queue_requests\":[49,1]}"), "{j}");
    }
}
