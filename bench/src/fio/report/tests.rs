use super::*;

// Real fio 3.33 output (the version Debian bookworm ships), recorded on a host file.
const RANDRW: &str = include_str!("fio-3.33-randrw.json");
const TWO_JOBS: &str = include_str!("fio-3.33-two-jobs.json");

fn console(docs: &[&str]) -> String {
    let mut text =
        String::from("[    1.234] virtio_blk virtio0: [vda] 2097152 512-byte logical blocks\r\n");
    text.push_str("KEEL-FIO-START job=config-disk /dev/vdb\r\n");
    for doc in docs {
        text.push_str("KEEL-FIO-JSON-BEGIN\r\n");
        for line in doc.lines() {
            text.push_str(line);
            text.push_str("\r\n");
        }
        text.push_str("KEEL-FIO-JSON-END\r\n");
    }
    text.push_str("KEEL-FIO-EXIT rc=0\r\n[    9.000] reboot: Power down\r\n");
    text
}

#[test]
fn scans_markers_with_crlf_and_kernel_noise() {
    let c = scan(&console(&[RANDRW])).unwrap();
    assert_eq!(c.starts, 1);
    assert_eq!(c.documents.len(), 1);
    assert_eq!(c.exit_codes, vec![0]);
    assert!(c.errors.is_empty());
    let text = "KEEL-FIO-ERROR: no job (keel.fio= or a config disk)\nKEEL-FIO-STDERR: fio: x\n\
                KEEL-FIO-EXIT rc=1\n";
    let c = scan(text).unwrap();
    assert_eq!(c.errors, vec!["no job (keel.fio= or a config disk)"]);
    assert_eq!(c.stderr, vec!["fio: x"]);
    assert_eq!(c.exit_codes, vec![1]);
    assert_eq!(c.starts, 0);
}

#[test]
fn one_randrw_job_gives_fio_figures() {
    let s = summarize(&scan(&console(&[RANDRW])).unwrap()).unwrap();
    assert_eq!(s.jobs.len(), 1);
    assert_eq!(s.failed_jobs, 0);
    assert_eq!(s.read.ios, 56364);
    assert_eq!(s.write.ios, 56067);
    assert_eq!(s.total_ios(), 56364 + 56067);
    assert!((s.read.iops - 56307.692308).abs() < 1e-6);
    assert_eq!(s.read.bw_bytes, 230636307.0);
    assert_eq!(s.read.bytes, 230866944);
    assert_eq!(
        (s.read.p50_ns, s.read.p99_ns, s.read.p999_ns),
        (62208, 93696, 391168)
    );
    assert_eq!(
        (s.write.p50_ns, s.write.p99_ns, s.write.p999_ns),
        (70144, 104960, 395264)
    );
    assert!((s.read.lat_mean_ns - 63880.914236).abs() < 1e-3);
}

#[test]
fn concurrent_jobs_add_rates_and_idle_directions_stay_zero() {
    let s = summarize(&scan(&console(&[TWO_JOBS])).unwrap()).unwrap();
    assert_eq!(s.jobs.len(), 2);
    assert_eq!(s.jobs[0].write, Direction::default());
    assert_eq!(s.jobs[1].read, Direction::default());
    assert!((s.read.iops - 53320.679321).abs() < 1e-6);
    assert!((s.write.iops - 53264.735265).abs() < 1e-6);
    assert_eq!(s.read.p99_ns, 160768);
    assert_eq!(s.write.p99_ns, 162816);
}

#[test]
fn sequential_documents_rate_over_their_summed_runtime() {
    let s = summarize(&scan(&console(&[RANDRW, RANDRW])).unwrap()).unwrap();
    assert_eq!(s.jobs.len(), 2);
    assert_eq!(s.read.ios, 2 * 56364);
    // Two runs of 1001 ms each, one after another.
    let want = (2 * 56364) as f64 * 1000.0 / 2002.0;
    assert!((s.read.iops - want).abs() < 1e-6, "{}", s.read.iops);
}

#[test]
fn failed_jobs_are_counted() {
    let failed = RANDRW.replacen("\"error\" : 0", "\"error\" : 84", 1);
    assert_ne!(failed, RANDRW);
    let s = summarize(&scan(&console(&[&failed])).unwrap()).unwrap();
    assert_eq!(s.failed_jobs, 1);
    assert_eq!(s.jobs[0].error, 84);
}

#[test]
fn broken_documents_are_errors_not_panics() {
    let text = "KEEL-FIO-JSON-BEGIN\n{\"jobs\": [\n";
    assert_eq!(scan(text).unwrap_err(), ReportError::Unterminated(0));
    let text = "KEEL-FIO-JSON-BEGIN\n{\"jobs\": [\nKEEL-FIO-JSON-END\n";
    assert!(matches!(
        scan(text).unwrap_err(),
        ReportError::BadJson { index: 0, .. }
    ));
    for doc in [
        "{}",
        "{\"jobs\": []}",
        "{\"jobs\": [{\"jobname\": \"x\"}]}",
        "{\"jobs\": [{\"read\": {\"io_bytes\": 1, \"iops\": 1}, \"write\": {\"iops\": 1}}]}",
        "{\"jobs\": 7}",
        "[1, 2]",
    ] {
        let c = scan(&console(&[doc])).unwrap();
        assert!(
            matches!(summarize(&c), Err(ReportError::BadShape { index: 0, .. })),
            "{doc}"
        );
    }
    let huge = format!(
        "KEEL-FIO-JSON-BEGIN\n{}\n",
        "x".repeat(MAX_DOCUMENT_BYTES + 1)
    );
    assert_eq!(scan(&huge).unwrap_err(), ReportError::TooBig(0));
}

#[test]
fn hostile_numbers_saturate() {
    let doc = |ios: &str| {
        format!(
            "{{\"jobs\": [{{\"jobname\": \"x\", \"read\": {{\"io_bytes\": {ios}, \"iops\": 1e308, \
             \"total_ios\": {ios}, \"runtime\": {ios}}}, \"write\": {{\"io_bytes\": -5, \"iops\": 0}}}}]}}"
        )
    };
    let huge = doc("18446744073709551615");
    let c = scan(&console(&[&huge, &huge])).unwrap();
    let s = summarize(&c).unwrap();
    assert_eq!(s.read.ios, u64::MAX);
    assert_eq!(s.write.ios, 0);
    assert_eq!(s.total_ios(), u64::MAX);
}
