//! Exits per I/O with a real driver: `keel bench fio --guest linux --compare qemu` for each fio
//! job of the benchmark set, Keel beside QEMU with KVM on the same guest, disks and job, at a
//! short runtime. Figures, not pass/fail thresholds: the scenario fails only when Keel's side
//! produced none, or lacks the guest's own count of its disks' interrupts (`KEEL-FIO-IRQS`,
//! printed beside QEMU's). QEMU's side is reported, figures or failure, but never fails the
//! scenario: no test depends on a peer VMM's quirks. (IOPS in a nested rig mean nothing;
//! exits per I/O do.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Scenario;
use crate::error::{check, io, RigError};
use crate::Ctx;

const RUNTIME_SECS: &str = "3";
const DISK_SIZE: &str = "256M";

pub fn scenarios() -> Vec<Scenario> {
    vec![Scenario {
        name: "bench-fio-exits-vs-qemu",
        about: "keel bench fio --compare qemu for each benchmark job: KVM exits per I/O, Keel beside QEMU",
        run: Box::new(bench),
    }]
}

fn jobs(ctx: &Ctx) -> Result<Vec<PathBuf>, RigError> {
    let dir = ctx
        .fio_jobs
        .as_ref()
        .ok_or_else(|| RigError::Check("no --fio-jobs directory given".into()))?;
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io("cannot list", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("fio"))
        .collect();
    v.sort();
    check(!v.is_empty(), || {
        format!("no .fio jobs in {}", dir.display())
    })?;
    Ok(v)
}

fn bench(ctx: &Ctx, dir: &Path) -> Result<String, RigError> {
    let qemu = ctx
        .qemu
        .as_ref()
        .ok_or_else(|| RigError::Check("no --qemu given: the comparison needs QEMU".into()))?;
    let mut rows = Vec::new();
    for job in jobs(ctx)? {
        let name = job
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("job")
            .to_string();
        let v = run_job(ctx, dir, qemu, &job, &name)?;
        let keel = &v["keel"];
        let k = keel["exits_per_io_kvm"].as_f64();
        check(keel["ok"] == true && k.is_some(), || {
            format!("{name}: Keel's side produced no exits per I/O: {keel}")
        })?;
        let guest_virtio = keel["guest_irqs_per_io"]["virtio_req"].as_f64();
        check(guest_virtio.is_some_and(|x| x > 0.0), || {
            format!(
                "{name}: the guest under Keel reported no virtio request interrupts \
                 (KEEL-FIO-IRQS): {}",
                keel["guest_irqs_per_io"]
            )
        })?;
        let k = format!("{:.3}", k.unwrap_or(0.0));
        let q = match v["qemu"]["exits_per_io_kvm"].as_f64() {
            Some(q) => format!("{q:.3}"),
            None => format!(
                "none ({})",
                v["qemu"]["problem"].as_str().unwrap_or("no QMP counters")
            ),
        };
        crate::say(format!(
            "RIG-FIGURE bench {name} kvm_exits_per_io keel={k} qemu={q}"
        ));
        crate::say(format!(
            "RIG-FIGURE bench {name} kvm_per_io_by_reason keel[{}] qemu[{}]",
            per_io_list(&keel["kvm_per_io"]),
            per_io_list(&v["qemu"]["kvm_per_io"])
        ));
        crate::say(format!(
            "RIG-FIGURE bench {name} guest_irqs_per_io keel[{}] qemu[{}]",
            per_io_list(&keel["guest_irqs_per_io"]),
            per_io_list(&v["qemu"]["guest_irqs_per_io"])
        ));
        crate::say(format!(
            "RIG-FIGURE bench {name} rates keel[{}] qemu[{}]",
            rates(keel),
            rates(&v["qemu"])
        ));
        rows.push(format!("{name}: Keel {k} / QEMU {q}"));
    }
    Ok(format!("KVM exits per I/O, {}", rows.join("; ")))
}

/// `iops=N,kvm_exits_per_s=N` over fio's window, and for Keel the notifications and interrupts
/// of its data disks per I/O and the CPU time (us) of its vCPU threads and of its I/O path per
/// I/O: under TCG, exits per second hardly move with the I/O rate (the guest's and L1's timer
/// ticks), so exits per I/O fall as IOPS rise; these say which part belongs to the disks.
fn rates(side: &serde_json::Value) -> String {
    let ios = ["read", "write"]
        .iter()
        .filter_map(|d| side[d]["ios"].as_f64())
        .sum::<f64>();
    let secs = side["window_secs"].as_f64().filter(|s| *s > 0.0);
    let mut out = Vec::new();
    if let (Some(secs), Some(exits)) = (secs, side["kvm_exits"].as_f64()) {
        out.push(format!("iops={:.0}", ios / secs));
        out.push(format!("kvm_exits_per_s={:.0}", exits / secs));
    }
    for key in [
        "kicks_per_io",
        "interrupts_per_io",
        "vcpu_cpu_us_per_io",
        "io_cpu_us_per_io",
    ] {
        if let Some(x) = side[key].as_f64() {
            out.push(format!("{key}={x:.3}"));
        }
    }
    out.join(",")
}

/// `name=x.xxx,...` for each entry of a per-I/O map (exit reasons, the guest's interrupt
/// sources) counted at least once per thousand I/Os.
fn per_io_list(map: &serde_json::Value) -> String {
    map.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k, v.as_f64()?)))
                .filter(|(_, x)| *x >= 0.001)
                .map(|(k, x)| format!("{k}={x:.3}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn run_job(
    ctx: &Ctx,
    dir: &Path,
    qemu: &Path,
    job: &Path,
    name: &str,
) -> Result<serde_json::Value, RigError> {
    let work = dir.join(name);
    std::fs::create_dir_all(&work).map_err(io("cannot create", &work))?;
    let log = dir.join(format!("{name}.out"));
    let file = std::fs::File::create(&log).map_err(io("cannot create", &log))?;
    let err = file.try_clone().map_err(io("cannot duplicate", &log))?;
    let guest = |f: &str| ctx.guest.join(f).display().to_string();
    let status = Command::new(&ctx.keel)
        .args([
            "bench",
            "fio",
            "--guest",
            "linux",
            "--compare",
            "qemu",
            "--runtime",
            RUNTIME_SECS,
        ])
        .args([
            "--disk-size",
            DISK_SIZE,
            "--fill",
            "sparse",
            "--cpus",
            "boot=2",
            "--memory",
            "size=1G",
        ])
        .arg("--job")
        .arg(job)
        .arg("--dir")
        .arg(&work)
        .arg("--qemu")
        .arg(qemu)
        .args([
            "--guest-dir",
            &guest(""),
            "--initramfs",
            &guest("initramfs.cpio.gz"),
        ])
        .args(["--timeout", &ctx.guest_timeout.as_secs().to_string()])
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .status()
        .map_err(|source| RigError::Spawn {
            program: "keel bench fio".into(),
            source,
        })?;
    let text = std::fs::read_to_string(&log).map_err(io("cannot read", &log))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("keel-bench-fio: "))
        .ok_or_else(|| {
            RigError::Check(format!(
                "{name}: keel bench fio printed no result ({status})"
            ))
        })?;
    let v: serde_json::Value = serde_json::from_str(line).map_err(|source| RigError::Json {
        what: "keel-bench-fio",
        source,
    })?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_window_and_skip_what_a_side_lacks() {
        let keel = serde_json::json!({
            "read": {"ios": 300}, "write": {"ios": 100}, "window_secs": 4.0,
            "kvm_exits": 1000, "kicks_per_io": 0.25, "interrupts_per_io": 0.5,
            "io_cpu_us_per_io": 1.5,
        });
        assert_eq!(
            rates(&keel),
            "iops=100,kvm_exits_per_s=250,kicks_per_io=0.250,interrupts_per_io=0.500,\
             io_cpu_us_per_io=1.500"
        );
        let qemu = serde_json::json!({"read": {"ios": 10}, "window_secs": 2.0, "kvm_exits": 30});
        assert_eq!(rates(&qemu), "iops=5,kvm_exits_per_s=15");
        let failed = serde_json::json!({"ok": false});
        assert_eq!(rates(&failed), "");
    }
}
