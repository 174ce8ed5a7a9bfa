//! Guest tests for the paravirtual interfaces: what the probe guest reads in the hypervisor
//! CPUID ranges and which KVM / Hyper-V MSRs it can use, for each `--cpus kvm_pv=` and
//! `hyperv=` setting; requests the host cannot meet are refused before boot; and the clock
//! storm: reading the ACPI PM timer costs an exit per read, kvmclock none.

mod common;

use common::{probe_image, run_keel, Run};
use serde_json::Value;

/// pvclock's flag that the TSC is stable across vCPUs and time (the KVM ABI's bit 0).
const PVCLOCK_TSC_STABLE_BIT: u64 = 1;

fn run_cpus(cpus: &str, cmds: &str, stats: bool) -> Run {
    let kernel = probe_image("probe.elf");
    let mut args = vec![
        "--kernel",
        kernel.to_str().unwrap(),
        "--cpus",
        cpus,
        "--cmdline",
        cmds,
    ];
    if stats {
        args.push("--stats");
    }
    run_keel(&args)
}

fn hex(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// (signature, base) of every hypervisor CPUID range the guest found.
fn ranges(hv: &Value) -> Vec<(String, u64)> {
    hv["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["signature"].as_str().unwrap().to_string(),
                hex(&r["base"]),
            )
        })
        .collect()
}

/// EAX of leaf `leaf` as the guest read it.
fn leaf_eax(hv: &Value, leaf: u64) -> u64 {
    hv["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["leaves"].as_array().unwrap())
        .find(|l| hex(&l[0]) == leaf)
        .map(|l| hex(&l[1]))
        .unwrap_or_else(|| panic!("leaf {leaf:#x} not reported: {hv}"))
}

/// Names of the MSRs the guest could read.
fn readable(hv: &Value, prefix: &str) -> Vec<String> {
    hv["msrs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"].as_str().unwrap().starts_with(prefix) && m["ok"] == true)
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

const KVMCLOCK_BITS: u64 = (1 << 0) | (1 << 3) | (1 << 24);

#[test]
fn kvm_pv_features_follow_the_request() {
    let all = run_cpus("boot=1", "probe.cmd=hv", false);
    all.assert_probe_done();
    let hv = all.report("hv");
    assert_eq!(ranges(&hv), [("KVMKVMKVM".to_string(), 0x4000_0000)]);
    let offered = leaf_eax(&hv, 0x4000_0001);
    assert_ne!(offered & KVMCLOCK_BITS, 0, "{hv}");
    assert!(readable(&hv, "kvm_").contains(&"kvm_system_time_new".to_string()));

    let off = run_cpus("boot=1,kvm_pv=off", "probe.cmd=hv", false);
    off.assert_probe_done();
    let hv = off.report("hv");
    // The signature stays so the guest knows it runs on KVM; no feature is offered.
    assert_eq!(ranges(&hv), [("KVMKVMKVM".to_string(), 0x4000_0000)]);
    assert_eq!(leaf_eax(&hv, 0x4000_0001), 0);
    let enforced = readable(&hv, "kvm_").is_empty();

    let clock = run_cpus("boot=1,kvm_pv=[kvmclock]", "probe.cmd=hv", false);
    clock.assert_probe_done();
    let hv = clock.report("hv");
    let eax = leaf_eax(&hv, 0x4000_0001);
    assert_eq!(eax & !KVMCLOCK_BITS, 0, "{eax:#x}");
    assert_eq!(eax, offered & KVMCLOCK_BITS, "{eax:#x}");
    if enforced {
        // KVM_CAP_ENFORCE_PV_FEATURE_CPUID: exactly kvmclock's MSRs work.
        assert_eq!(
            readable(&hv, "kvm_"),
            ["kvm_wall_clock_new", "kvm_system_time_new"]
        );
    }
}

#[test]
fn hyperv_is_offered_or_refused_naming_the_missing_capability() {
    let run = run_cpus(
        "boot=1,hyperv=[relaxed,vpindex,time]",
        "probe.cmd=hv",
        false,
    );
    if run.code() == Some(1) {
        // This host (PVM here) lacks it: one line, before the guest runs.
        assert!(run.stdout.is_empty(), "{}", run.describe());
        let line = run.stderr.trim();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("keel: error: --cpus: hyperv: ")
                && line.contains("needs KVM_CAP_HYPERV"),
            "{line}"
        );
    } else {
        run.assert_probe_done();
        let hv = run.report("hv");
        assert_eq!(
            ranges(&hv),
            [
                ("Microsoft Hv".to_string(), 0x4000_0000),
                ("KVMKVMKVM".to_string(), 0x4000_0100)
            ]
        );
        let privileges = leaf_eax(&hv, 0x4000_0003);
        // AccessPartitionReferenceCounter, AccessHypercallMsrs, AccessVpIndex,
        // AccessPartitionReferenceTsc.
        for bit in [1, 5, 6, 9] {
            assert_ne!(privileges & (1 << bit), 0, "bit {bit}: {privileges:#x}");
        }
        let ok = readable(&hv, "hv_");
        for msr in ["hv_vp_index", "hv_time_ref_count", "hv_reference_tsc"] {
            assert!(ok.contains(&msr.to_string()), "{msr}: {ok:?}");
        }
        assert!(
            !ok.contains(&"hv_scontrol".to_string()),
            "synic was not asked: {ok:?}"
        );
    }
    // A prerequisite missing from the list is refused whatever the host.
    let run = run_cpus("boot=1,hyperv=[stimer]", "probe.cmd=hv", false);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    assert!(
        run.stderr.contains("hyperv: stimer needs"),
        "{}",
        run.describe()
    );
    // `on` means what the host has, which may be nothing; the guest still boots.
    let run = run_cpus("boot=1,hyperv=on", "probe.cmd=hv", false);
    run.assert_probe_done();
}

fn stats(run: &Run) -> Value {
    let line = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("keel-stats: "))
        .unwrap_or_else(|| panic!("no stats\n{}", run.describe()));
    serde_json::from_str(line).unwrap()
}

fn kvm_exits(s: &Value) -> u64 {
    s["vcpus"][0]["kvm"]["exits"].as_u64().unwrap_or(0)
}

fn pm_timer_exits(s: &Value) -> u64 {
    s["vcpus"][0]["devices"]["pio.acpi-pm"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn clock_storm_exits_only_through_the_pm_timer() {
    let base = run_cpus("boot=1", "probe.cmd=boot", true);
    base.assert_probe_done();
    let base = stats(&base);

    let reads = 3000;
    let pm = run_cpus(
        "boot=1",
        &format!("probe.cmd=boot probe.cmd=clock:source=pmtimer,reads={reads}"),
        true,
    );
    pm.assert_probe_done();
    assert_eq!(pm.report("clock")["ok"], true, "{}", pm.describe());
    let pm_exits = pm_timer_exits(&stats(&pm)) - pm_timer_exits(&base);
    // One port read per clock read (plus the few the probe's setup makes).
    assert!(
        (reads..reads + 50).contains(&pm_exits),
        "{pm_exits} PM timer exits for {reads} reads"
    );

    // Two kvmclock runs that differ only in the number of reads: their report lines (whose
    // bytes each exit through COM1) are nearly the same, so the difference is the reads' cost.
    let kvmclock = |reads: u64| {
        let run = run_cpus(
            "boot=1",
            &format!("probe.cmd=boot probe.cmd=clock:source=kvmclock,reads={reads}"),
            true,
        );
        run.assert_probe_done();
        let report = run.report("clock");
        assert_eq!(report["ok"], true, "{report}");
        // One vCPU's pvclock readings are monotonic when the host sets PVCLOCK_TSC_STABLE_BIT
        // (it has a stable master clock). Without it (a nested KVM whose TSC is unstable, as
        // in the rig) the guest must clamp readings itself, as Linux does.
        if hex(&report["pvclock_flags"]) & PVCLOCK_TSC_STABLE_BIT != 0 {
            assert_eq!(report["monotonic"], true, "{report}");
        }
        let s = stats(&run);
        assert_eq!(pm_timer_exits(&s), pm_timer_exits(&base));
        kvm_exits(&s)
    };
    let (few, many) = (100_000, 2_000_000);
    let extra = kvmclock(many).saturating_sub(kvmclock(few));
    // Target: at most one exit per 1000 reads (host interrupts during the run included).
    assert!(
        extra <= (many - few) / 1000,
        "{extra} extra exits for {} more kvmclock reads",
        many - few
    );

    let hv = run_cpus("boot=1", "probe.cmd=clock:source=hvtsc,reads=1000", false);
    hv.assert_probe_done();
    // Not offered without hyperv=time: the guest says so instead of reading garbage.
    assert_eq!(hv.report("clock")["ok"], false);
}
