//! Clocks and enlightenments. A clock-read loop in the guest runs between two sync points; at
//! each, the scenario reads Keel's counters over the API socket, so the exits of exactly that
//! window are known. kvm-clock reads never leave the guest (the vDSO reads the pvclock page);
//! every ACPI PM timer read is a port read that exits to keel. With the KVM signature hidden
//! and Hyper-V enlightenments on, Linux detects Hyper-V and reads the reference TSC page.

use std::collections::BTreeMap;
use std::path::Path;

use super::Scenario;
use crate::api;
use crate::error::{check, RigError};
use crate::guest::{End, Guest, Kernel, Launch};
use crate::Ctx;

const FAST_READS: u64 = 200_000;
const PM_READS: u64 = 5_000;

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "clock-kvmclock-vs-acpi-pm",
            about: "kvm-clock is the default; exits per 1000 reads: kvm-clock ~0, acpi_pm >= 1000",
            run: Box::new(kvmclock_vs_pm),
        },
        Scenario {
            name: "clock-hyperv-tsc-page",
            about: "hyperv=on,kvm_pv=hidden: Linux detects Hyper-V, its default clocksource is the TSC page, reads never exit to keel",
            run: Box::new(hyperv_tsc_page),
        },
    ]
}

/// One measured window of clock reads.
struct Window {
    source: String,
    reads: u64,
    kvm_exits: u64,
    keel_exits: u64,
    keel_io: u64,
}

impl Window {
    fn per_thousand(&self, n: u64) -> f64 {
        n as f64 * 1000.0 / self.reads as f64
    }

    fn describe(&self) -> String {
        format!(
            "{}: {:.2} KVM / {:.2} Keel exits per 1000 reads",
            self.source,
            self.per_thousand(self.kvm_exits),
            self.per_thousand(self.keel_exits)
        )
    }
}

/// The guest steps that measure `reads` reads of `source` between two sync points.
fn window_steps(source: &str, reads: u64) -> Vec<String> {
    vec![
        format!("clocksource:{source}"),
        format!("sync:{source}-begin"),
        format!("clock:{reads}"),
        format!("sync:{source}-end"),
    ]
}

/// Runs `launch` (with an API socket) answering every sync point, and returns one window per
/// (source, reads) measured.
fn measure(
    ctx: &Ctx,
    dir: &Path,
    mut launch: Launch,
    windows: &[(&str, u64)],
) -> Result<(crate::report::Report, Vec<Window>), RigError> {
    let socket = dir.join("api.sock");
    launch.api_socket = Some(socket.clone());
    launch.end = End::Hang;
    let mut guest = Guest::start(ctx, dir, "guest", &launch)?;
    let mut out = Vec::new();
    for &(source, reads) in windows {
        let before = sync_point(&mut guest, &socket, &format!("{source}-begin"))?;
        let after = sync_point(&mut guest, &socket, &format!("{source}-end"))?;
        out.push(Window {
            source: source.to_string(),
            reads,
            kvm_exits: api::delta(&before, &after, "kvm.exits"),
            keel_exits: api::delta(&before, &after, "keel.total"),
            keel_io: api::delta(&before, &after, "keel.io"),
        });
    }
    guest.wait_for("KEEL-T-DONE")?;
    api::shutdown(&socket)?;
    let result = guest.finish()?;
    result.report.expect_clean()?;
    Ok((result.report, out))
}

fn sync_point(
    guest: &mut Guest,
    socket: &Path,
    name: &str,
) -> Result<BTreeMap<String, u64>, RigError> {
    guest.wait_for(&format!("KEEL-T sync name={name}"))?;
    let c = api::counters(socket)?;
    guest.send_line("go")?;
    Ok(c)
}

fn kvmclock_vs_pm(ctx: &Ctx, dir: &Path) -> Result<String, RigError> {
    let mut steps = vec!["info".to_string()];
    steps.extend(window_steps("kvm-clock", FAST_READS));
    steps.extend(window_steps("acpi_pm", PM_READS));
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let launch = Launch::new(Kernel::Pvh, 1, &steps);
    let (report, w) = measure(
        ctx,
        dir,
        launch,
        &[("kvm-clock", FAST_READS), ("acpi_pm", PM_READS)],
    )?;
    let default = report.value("info", "clocksource")?;
    check(default == "kvm-clock", || {
        format!("the default clocksource is {default}, not kvm-clock")
    })?;
    let (kvm, pm) = (&w[0], &w[1]);
    check(kvm.keel_exits * 100 < kvm.reads, || {
        format!("kvm-clock reads exited to keel: {}", kvm.describe())
    })?;
    check(pm.keel_io >= pm.reads, || {
        format!(
            "{} PM timer reads took only {} port exits to keel",
            pm.reads, pm.keel_io
        )
    })?;
    Ok(format!(
        "default kvm-clock; {}; {}",
        kvm.describe(),
        pm.describe()
    ))
}

fn hyperv_tsc_page(ctx: &Ctx, dir: &Path) -> Result<String, RigError> {
    let source = "hyperv_clocksource_tsc_page";
    let mut steps = vec!["info".to_string()];
    steps.extend(window_steps(source, FAST_READS));
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let mut launch = Launch::new(Kernel::Pvh, 1, &steps);
    launch.cpus = "boot=1,hyperv=on,kvm_pv=hidden".into();
    let (report, w) = measure(ctx, dir, launch, &[(source, FAST_READS)])?;
    let hv = report.value("info", "hypervisor")?;
    check(hv.contains("Hyper-V"), || {
        format!("the guest detected '{hv}', not Microsoft Hyper-V")
    })?;
    let available = report.value("info", "available_clocksources")?;
    check(available.contains(source), || {
        format!("{source} is not offered: {available}")
    })?;
    let t = &w[0];
    check(t.keel_exits * 100 < t.reads, || {
        format!("TSC page reads exited to keel: {}", t.describe())
    })?;
    Ok(format!("guest detected {hv}; {}", t.describe()))
}
