//! The probe guest's guest-visible checks on a production-like KVM: the compiled integration
//! test binaries of `tests/` that check what the probe sees of the platform (boot paths, memory
//! map, CPUs in ACPI/MP tables, CPUID, KVM PV and Hyper-V leaves and MSRs, the PCI host bridge)
//! run unchanged here, with keel and the probe images of this rig. On PVM hosts `cargo test`
//! runs them on PVM too; in the rig they also meet what PVM lacks (KVM_CAP_HYPERV: the Hyper-V
//! path is offered and read, not refused).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Scenario;
use crate::error::{check, io, RigError};
use crate::Ctx;

pub fn scenarios() -> Vec<Scenario> {
    vec![Scenario {
        name: "probe-guest-tests",
        about: "the probe's platform tests (tests/: probe_boot, paravirt, pci_host) on this KVM",
        run: Box::new(probe_tests),
    }]
}

fn test_binaries(dir: &Path) -> Result<Vec<PathBuf>, RigError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io("cannot list", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    check(!v.is_empty(), || {
        format!("no test binaries in {}", dir.display())
    })?;
    Ok(v)
}

fn probe_tests(ctx: &Ctx, dir: &Path) -> Result<String, RigError> {
    let missing =
        || RigError::Check("--probe and --probe-tests are needed for this scenario".into());
    let probe = ctx.probe.as_ref().ok_or_else(missing)?;
    let bins = test_binaries(ctx.probe_tests.as_ref().ok_or_else(missing)?)?;
    let mut summary = Vec::new();
    for bin in bins {
        let name = bin
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("tests")
            .to_string();
        let passed = run_one(ctx, dir, probe, &bin, &name)?;
        summary.push(format!("{name}: {passed} passed"));
    }
    Ok(summary.join(", "))
}

/// Runs one test binary; returns how many tests passed, or why it failed.
fn run_one(ctx: &Ctx, dir: &Path, probe: &Path, bin: &Path, name: &str) -> Result<u64, RigError> {
    let log = dir.join(format!("{name}.out"));
    let out = std::fs::File::create(&log).map_err(io("cannot create", &log))?;
    let err = out.try_clone().map_err(io("cannot duplicate", &log))?;
    let mut child = Command::new(bin)
        .arg("--test-threads=2")
        .env("KEEL_BIN", &ctx.keel)
        .env("KEEL_PROBE_DIR", probe)
        .env("KEEL_GUEST_LINUX_DIR", &ctx.guest)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| RigError::Spawn {
            program: bin.display().to_string(),
            source,
        })?;
    let deadline = Instant::now() + ctx.guest_timeout;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(io("cannot wait for", bin))? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RigError::Timeout {
                what: name.to_string(),
                secs: ctx.guest_timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).map_err(io("cannot read", &log))?;
    let failed: Vec<&str> = text.lines().filter(|l| l.ends_with("FAILED")).collect();
    check(status.success(), || {
        format!("{name} ({status}): {}", failed.join("; "))
    })?;
    passed_count(&text).ok_or_else(|| RigError::Check(format!("{name}: no test result line")))
}

/// N of libtest's `test result: ok. N passed; ...` line.
fn passed_count(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("test result: ok. "))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_passed_count_comes_from_libtests_result_line() {
        let out =
            "running 3 tests\ntest a ... ok\n\ntest result: ok. 3 passed; 0 failed; 0 ignored\n";
        assert_eq!(passed_count(out), Some(3));
        assert_eq!(
            passed_count("test result: FAILED. 1 passed; 2 failed"),
            None
        );
    }
}
