use super::keel_run::{GuestEnd, GuestRun};
use super::SideResult;
use std::time::Duration;

const DOC: &str = "{\"jobs\": [{\"jobname\": \"w\", \"error\": 0, \
    \"read\": {\"io_bytes\": 0, \"iops\": 0, \"total_ios\": 0}, \
    \"write\": {\"io_bytes\": 4096, \"iops\": 10, \"total_ios\": 1}}]}";

fn side(console: &str, end: GuestEnd) -> SideResult {
    SideResult::new(
        "keel",
        GuestRun {
            console: console.to_string(),
            console_path: "/x/keel-console.log".into(),
            console_tail: String::new(),
            end,
            window: None,
            wall: Duration::from_secs(1),
        },
    )
}

fn with_doc(doc: &str, rc: i32) -> String {
    format!("KEEL-FIO-START job=w\nKEEL-FIO-JSON-BEGIN\n{doc}\nKEEL-FIO-JSON-END\nKEEL-FIO-EXIT rc={rc}\n")
}

/// A counter window holding `pairs` as its deltas.
fn window(pairs: &[(&str, u64)]) -> super::counter_window::CounterWindow {
    let mut w = super::counter_window::CounterWindow::default();
    for (k, v) in pairs {
        w.delta.insert(k.to_string(), *v);
    }
    w
}

/// A report of Keel's side alone: `disks` data disks of 1 MiB, `vcpus` vCPUs, 1 GiB.
fn keel_report(
    keel: SideResult,
    guest: super::GuestKind,
    disks: usize,
    vcpus: u32,
) -> super::BenchReport {
    super::BenchReport {
        job: "j".into(),
        guest,
        disks,
        disk_size: 1 << 20,
        vcpus,
        memory: 1 << 30,
        keel: Some(keel),
        qemu: None,
    }
}

#[test]
fn a_powered_off_guest_with_a_clean_report_counts() {
    let s = side(&with_doc(DOC, 0), GuestEnd::PowerOff);
    assert!(s.ok(), "{:?}", s.problem);
    assert_eq!(s.summary.unwrap().write.ios, 1);
    assert_eq!(s.exit_codes, vec![0]);
}

#[test]
fn each_failure_is_named() {
    let bad_job = "KEEL-FIO-START job=w\nKEEL-FIO-STDERR: fio: failed parsing rw=bogus\n\
                   KEEL-FIO-EXIT rc=1\n";
    let failed = DOC.replace("\"error\": 0", "\"error\": 5");
    let cases = [
        (
            side(bad_job, GuestEnd::PowerOff),
            "the guest printed no fio JSON (fio: fio: failed parsing rw=bogus)",
        ),
        (
            side("KEEL-FIO-ERROR: no job\n", GuestEnd::PowerOff),
            "the guest says: no job",
        ),
        (
            side(&with_doc(&failed, 1), GuestEnd::PowerOff),
            "1 fio job(s) reported an error",
        ),
        (
            side(&with_doc(DOC, 2), GuestEnd::PowerOff),
            "fio exited with status [2]",
        ),
        (
            side(
                "[ 1.0] Linux version 6.1\n",
                GuestEnd::Failed("vCPU 0: boom".into()),
            ),
            "the guest stopped: vCPU 0: boom",
        ),
        (
            side(&with_doc(DOC, 0), GuestEnd::TimedOut),
            "the guest was still running after 1 s and was stopped",
        ),
        (
            side("KEEL-FIO-JSON-BEGIN\n{\n", GuestEnd::PowerOff),
            "has no KEEL-FIO-JSON-END line",
        ),
    ];
    for (s, want) in cases {
        let problem = s.problem.clone().unwrap_or_default();
        assert!(problem.contains(want), "{problem:?} lacks {want:?}");
        assert!(!s.ok());
    }
}

#[test]
fn exits_are_broken_down_by_reason_per_io() {
    use super::output::{exits_by_reason, table};
    // DOC has one fio I/O: the figures are the counters themselves.
    let mut s = side(&with_doc(DOC, 0), GuestEnd::PowerOff);
    s.run.window = Some(window(&[
        ("kvm.exits", 9),
        ("kvm.halt_exits", 3),
        ("kvm.irq_exits", 0),
    ]));
    assert_eq!(
        exits_by_reason(&s),
        vec![("halt_exits", 3.0), ("irq_exits", 0.0)]
    );
    let report = keel_report(s, super::GuestKind::Linux, 1, 1);
    let text = table(&report);
    assert!(text.contains("  halt_exits per I/O"), "{text}");
    assert!(
        !text.contains("irq_exits per I/O"),
        "a reason nobody counted: {text}"
    );
}

#[test]
fn the_guests_interrupts_are_reported_per_io_by_family() {
    use super::output::{json, table};
    // Two documents of DOC: two fio I/Os. The IRQ line follows fio's exit status.
    let text = format!(
        "{}{}KEEL-FIO-IRQS LOC=7 virtio2-req.0=3 virtio3-req.1=1 CAL=2\r\n",
        with_doc(DOC, 0),
        with_doc(DOC, 0)
    );
    let s = side(&text, GuestEnd::PowerOff);
    assert!(s.ok(), "{:?}", s.problem);
    let report = keel_report(s, super::GuestKind::Linux, 2, 2);
    let v = json(&report);
    let irqs = &v["keel"]["guest_irqs_per_io"];
    assert_eq!(irqs["virtio_req"], 2.0, "{v}");
    assert_eq!(irqs["LOC"], 3.5);
    assert_eq!(irqs["CAL"], 1.0);
    let text = table(&report);
    assert!(
        text.contains("  guest virtio_req interrupts per I/O"),
        "{text}"
    );
    // A guest that printed no line has no figures, rather than zeros.
    let quiet = side(&with_doc(DOC, 0), GuestEnd::PowerOff);
    assert!(quiet.guest_irqs.is_empty());
}

#[test]
fn the_backend_latency_is_the_data_disks_mean_without_the_config_disk() {
    use super::output::{exit_rates, json};
    let mut s = side(&with_doc(DOC, 0), GuestEnd::PowerOff);
    s.run.window = Some(window(&[
        ("disk.fio-disk0.requests", 3),
        ("disk.fio-disk0.latency_ns", 300_000),
        ("disk.fio-disk1.requests", 1),
        ("disk.fio-disk1.latency_ns", 500_000),
        // The config disk's slow requests are not the job's.
        ("disk.fio-config.requests", 1),
        ("disk.fio-config.latency_ns", 9_000_000),
    ]));
    let rates = exit_rates(&s).unwrap();
    assert_eq!(rates.backend_latency_us, Some(200.0));
    let report = keel_report(s, super::GuestKind::Probe, 2, 1);
    let v = json(&report);
    assert_eq!(v["keel"]["backend_latency_us"], 200.0);
}
