//! `blk` with `report=fio`: the result as a fio 3.x `--output-format=json` document between
//! marker lines, the shape `keel bench fio` reads from a Linux guest running fio:
//!
//! ```text
//! KEEL-FIO-START job=NAME            (before the timed phase)
//! KEEL-FIO-JSON-BEGIN
//! {"fio version":"keel-probe","jobs":[{...}]}
//! KEEL-FIO-JSON-END
//! KEEL-FIO-EXIT rc=0|1
//! ```
//!
//! Timed-phase requests are split by direction into `read` and `write`; verify read-backs are
//! not counted there (they are `keel_probe.verify_reads`). Latencies are the probe's
//! submit-to-completion times, reported as both `clat_ns` and `lat_ns` (`slat_ns` is 0).
//! `error` is 0, or 5 (EIO) when a request or the flush completed with a non-OK status, else
//! 84 (EILSEQ) when verify found a bad sector; `rc` is 1 when `error` is not 0. A run that
//! fails after the START line (time-out, bad used ring, ...) prints `KEEL-FIO-EXIT rc=1`
//! without a document, then the usual `done:false` line.

use crate::blk::Outcome;
use crate::err;
use crate::error::Result;
use crate::hist::Hist;
use crate::json::Line;
use crate::serial;
use crate::vblk::S_OK;

/// errno values fio puts in `error`.
const EIO: u64 = 5;
const EILSEQ: u64 = 84;

/// fio's default `percentile_list`: (key as fio prints it, parts per million).
const PERCENTILES: [(&str, u64); 17] = [
    ("1.000000", 10_000),
    ("5.000000", 50_000),
    ("10.000000", 100_000),
    ("20.000000", 200_000),
    ("30.000000", 300_000),
    ("40.000000", 400_000),
    ("50.000000", 500_000),
    ("60.000000", 600_000),
    ("70.000000", 700_000),
    ("80.000000", 800_000),
    ("90.000000", 900_000),
    ("95.000000", 950_000),
    ("99.000000", 990_000),
    ("99.500000", 995_000),
    ("99.900000", 999_000),
    ("99.950000", 999_500),
    ("99.990000", 999_900),
];

/// Prints `KEEL-FIO-START job=NAME` on a line of its own.
pub fn start(name: &crate::blkargs::Name) {
    serial::ensure_line_start();
    serial::write(b"KEEL-FIO-START job=");
    serial::write(name.as_str().as_bytes());
    serial::write(b"\n");
}

/// Prints `KEEL-FIO-EXIT rc=N` (N is 0 or 1) on a line of its own.
pub fn exit(rc: u8) {
    serial::ensure_line_start();
    serial::write(if rc == 0 {
        b"KEEL-FIO-EXIT rc=0\n"
    } else {
        b"KEEL-FIO-EXIT rc=1\n"
    });
}

/// fio's `error` for the outcome (see the module comment).
fn error_code(o: &Outcome) -> u64 {
    let flush_failed = o.run.flush.is_some_and(|s| s != S_OK);
    if o.errors() != 0 || flush_failed {
        EIO
    } else if o.verify_errors() != 0 {
        EILSEQ
    } else {
        0
    }
}

/// `{"min":..,"max":..,"mean":..,"stddev":..,"N":..` (left open for `percentile`).
fn lat_stats(l: &mut Line, h: &Hist) {
    l.raw("{\"min\":").num(h.min);
    l.raw(",\"max\":").num(h.max);
    l.raw(",\"mean\":").dec6(h.mean_micro());
    l.raw(",\"stddev\":").dec6(h.stddev_micro());
    l.raw(",\"N\":").num(h.count);
}

/// One direction: fio's `read` / `write` object. `elapsed_ns` >= 1.
fn direction(l: &mut Line, h: &Hist, bs: u64, elapsed_ns: u64) {
    let ios = h.count;
    let bytes = ios.saturating_mul(bs);
    let bw_bytes = (bytes as u128 * 1_000_000_000 / elapsed_ns as u128) as u64;
    // ms, rounded; at least 1 for a direction that did I/O (fio never reports 0 then).
    let runtime_ms = if ios == 0 {
        0
    } else {
        (elapsed_ns.saturating_add(500_000) / 1_000_000).max(1)
    };
    l.raw("{\"io_bytes\":").num(bytes);
    l.raw(",\"io_kbytes\":").num(bytes / 1024);
    l.raw(",\"bw_bytes\":").num(bw_bytes);
    l.raw(",\"bw\":").num(bw_bytes / 1024);
    l.raw(",\"iops\":")
        .dec6(ios as u128 * 1_000_000_000_000_000 / elapsed_ns as u128);
    l.raw(",\"runtime\":").num(runtime_ms);
    l.raw(",\"total_ios\":").num(ios);
    l.raw(",\"short_ios\":0,\"drop_ios\":0");
    l.raw(",\"slat_ns\":{\"min\":0,\"max\":0,\"mean\":0.000000,\"stddev\":0.000000,\"N\":0}");
    l.raw(",\"clat_ns\":");
    lat_stats(l, h);
    l.raw(",\"percentile\":{");
    for (i, (key, ppm)) in PERCENTILES.iter().enumerate() {
        if i > 0 {
            l.raw(",");
        }
        l.raw("\"").raw(key).raw("\":").num(h.percentile_ppm(*ppm));
    }
    l.raw("}}");
    l.raw(",\"lat_ns\":");
    lat_stats(l, h);
    l.raw("}}");
}

/// An idle direction (`trim`): all zero, as fio prints one.
fn idle(l: &mut Line) {
    direction(l, &Hist::new(&mut []), 0, 1);
}

/// Prints the document between its markers, then the EXIT line.
pub fn report(o: &Outcome) -> Result<()> {
    let a = o.a;
    let name = a.job_name();
    let error = error_code(o);
    let elapsed = o.run.elapsed_ns;
    let bs = a.bs as u64;
    let mut l = Line::new();
    l.raw("{\"fio version\":\"keel-probe\",\"jobs\":[{\"jobname\":\"")
        .raw(name.as_str());
    l.raw("\",\"groupid\":0,\"error\":").num(error);
    l.raw(",\"job options\":{\"name\":\"").raw(name.as_str());
    l.raw("\",\"rw\":\"").raw(a.rw.name());
    l.raw("\",\"bs\":\"").num(bs);
    l.raw("\",\"iodepth\":\"").num(a.iodepth as u64);
    l.raw("\",\"filename\":\"probe-disk").num(a.disk as u64);
    if let Some(s) = a.runtime_s {
        l.raw("\",\"time_based\":\"1\",\"runtime\":\"").num(s);
    } else if let Some(n) = a.ios {
        l.raw("\",\"number_ios\":\"").num(n);
    }
    l.raw("\",\"offset\":\"").num(a.offset);
    l.raw("\",\"size\":\"").num(o.size).raw("\"}");
    l.raw(",\"read\":");
    direction(&mut l, &o.dirs[0], bs, elapsed);
    l.raw(",\"write\":");
    direction(&mut l, &o.dirs[1], bs, elapsed);
    l.raw(",\"trim\":");
    idle(&mut l);
    l.raw(",\"job_runtime\":")
        .num((elapsed.saturating_add(500_000) / 1_000_000).max(1));
    l.raw(",\"keel_probe\":{");
    o.device_fields(&mut l);
    l.raw(",");
    o.run_fields(&mut l);
    l.raw(",");
    o.notify_fields(&mut l);
    l.raw("}}]}");
    // Checked before the BEGIN marker, so a failure never leaves a half-written document.
    if l.overflowed() {
        exit(1);
        return Err(err!("blk: fio report does not fit the output buffer"));
    }
    serial::ensure_line_start();
    serial::write(b"KEEL-FIO-JSON-BEGIN\n");
    l.finish()?;
    serial::write(b"KEEL-FIO-JSON-END\n");
    exit(if error == 0 { 0 } else { 1 });
    Ok(())
}
