//! `vm.snapshot` and `vm.restore`, with Cloud Hypervisor's bodies:
//! `{"destination_url":"file:///PATH"[,"mode":"live"|"paused"]}` (live by default) and
//! `{"source_url":"file:///PATH"[,"prefault":BOOL][,"resume":BOOL]}`. Keel's snapshot is one
//! file (Cloud Hypervisor's is a directory). A restored VM is `Paused` until `vm.resume`,
//! as Cloud Hypervisor's is, unless `"resume":true`; `prefault` is accepted and always holds
//! (a restore reads every saved page into guest RAM before the guest runs).

use std::path::PathBuf;

use serde::Deserialize;

use super::{from_handle, refuse_existing, ApiState, ManagedVm, RouteError};
use crate::handle::VmHandle;
use crate::snapshot::{path_from_url, SnapshotMode, SnapshotReport};
use crate::vm::SnapshotJob;

/// `vm.snapshot`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    destination_url: String,
    #[serde(default = "live")]
    mode: SnapshotMode,
}

/// The default mode: the guest runs on while its RAM is written.
fn live() -> SnapshotMode {
    SnapshotMode::Live
}

/// `vm.restore`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    source_url: String,
    #[serde(default)]
    #[allow(dead_code)]
    prefault: bool,
    #[serde(default)]
    resume: bool,
}

/// A parsed `vm.snapshot` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// The file to write.
    pub destination: PathBuf,
    /// Paused or live.
    pub mode: SnapshotMode,
}

/// A parsed `vm.restore` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRequest {
    /// The file to read.
    pub source: PathBuf,
    /// Run at once instead of waiting paused.
    pub resume: bool,
}

fn body_text<'a>(body: &'a [u8], endpoint: &'static str) -> Result<&'a str, RouteError> {
    let text = std::str::from_utf8(body).map_err(|_| RouteError::Body("body is not UTF-8"))?;
    if text.trim().is_empty() {
        return Err(RouteError::Body(endpoint));
    }
    Ok(text)
}

fn bad_body(e: impl std::fmt::Display) -> RouteError {
    RouteError::Request(e.to_string())
}

/// Parses `vm.snapshot`'s body.
pub fn parse_snapshot(body: &[u8]) -> Result<SnapshotRequest, RouteError> {
    let text = body_text(
        body,
        "vm.snapshot needs {\"destination_url\":\"file:///PATH\"}",
    )?;
    let b: SnapshotBody = serde_json::from_str(text).map_err(bad_body)?;
    Ok(SnapshotRequest {
        destination: path_from_url(&b.destination_url).map_err(bad_body)?,
        mode: b.mode,
    })
}

/// Parses `vm.restore`'s body.
pub fn parse_restore(body: &[u8]) -> Result<RestoreRequest, RouteError> {
    let text = body_text(body, "vm.restore needs {\"source_url\":\"file:///PATH\"}")?;
    let b: RestoreBody = serde_json::from_str(text).map_err(bad_body)?;
    Ok(RestoreRequest {
        source: path_from_url(&b.source_url).map_err(bad_body)?,
        resume: b.resume,
    })
}

/// The report of a snapshot, as JSON.
fn report_json(r: &SnapshotReport) -> String {
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    serde_json::json!({
        "mode": r.mode,
        "file_bytes": r.file_bytes,
        "ram_bytes": r.ram_bytes,
        "zero_bytes": r.zero_bytes,
        "paused_ms": r.paused_for.as_secs_f64() * 1e3,
        "took_ms": r.took.as_secs_f64() * 1e3,
        "wp_faults": r.faults.faults,
        "wp_throttled": r.faults.throttled,
        "wp_fault_p50_us": us(r.faults.p50),
        "wp_fault_p99_us": us(r.faults.p99),
    })
    .to_string()
}

/// Takes the snapshot up to its instant (all of it in paused mode); refused while another
/// one is being written.
pub fn begin(
    request: Result<SnapshotRequest, RouteError>,
    state: &mut ApiState,
) -> Result<SnapshotJob, RouteError> {
    if let Some(p) = state.snapshot.as_ref().filter(|p| !p.finished()) {
        return Err(RouteError::Conflict(format!(
            "a snapshot to {} is being written",
            p.destination.display()
        )));
    }
    let handle = state.handle()?;
    let request = request?;
    let job = handle
        .begin_snapshot(&request.destination, request.mode)
        .map_err(from_handle("snapshot"))?;
    state.snapshot = Some(job.progress());
    Ok(job)
}

/// Writes what is left of a snapshot; its report as the answer's body.
pub fn finish(job: SnapshotJob) -> Result<Option<String>, RouteError> {
    let progress = job.progress();
    let report = job.finish().map_err(RouteError::Snapshot)?;
    log::info!(
        "api: {:?} snapshot to {}: {} bytes, guest parked {:.1} ms",
        report.mode,
        progress.destination.display(),
        report.file_bytes,
        report.paused_for.as_secs_f64() * 1e3
    );
    Ok(Some(report_json(&report)))
}

/// `vm.snapshot-status`: how far the last snapshot got.
pub fn status(state: &ApiState) -> String {
    let Some(p) = &state.snapshot else {
        return serde_json::json!({"state": "idle"}).to_string();
    };
    serde_json::json!({
        "state": if p.finished() { "done" } else { "writing" },
        "mode": p.mode,
        "destination": p.destination.display().to_string(),
        "written_bytes": p.written_bytes(),
        "total_bytes": p.total_bytes,
        "elapsed_ms": p.elapsed().as_secs_f64() * 1e3,
    })
    .to_string()
}

/// Builds the VM of the snapshot and starts it, paused unless asked to resume.
pub fn restore(
    request: Result<RestoreRequest, RouteError>,
    state: &mut ApiState,
) -> Result<(), RouteError> {
    refuse_existing(state)?;
    let request = request?;
    let (mut handle, _) = VmHandle::restore(&request.source).map_err(RouteError::Build)?;
    let config = handle.config().cloned().unwrap_or_default();
    if request.resume {
        handle.boot()
    } else {
        handle.boot_paused()
    }
    .map_err(from_handle("restore"))?;
    state.vm = Some(ManagedVm {
        config,
        handle: Some(handle),
        ended: false,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_in_cloud_hypervisors_shape_are_taken() {
        let s = parse_snapshot(br#"{"destination_url":"file:///var/s"}"#).unwrap();
        assert_eq!(s.destination, PathBuf::from("/var/s"));
        assert_eq!(s.mode, SnapshotMode::Live);
        let s = parse_snapshot(br#"{"destination_url":"file:///s","mode":"paused"}"#).unwrap();
        assert_eq!(s.mode, SnapshotMode::Paused);
        let r = parse_restore(br#"{"source_url":"file:///s","prefault":true}"#).unwrap();
        assert_eq!(
            r,
            RestoreRequest {
                source: PathBuf::from("/s"),
                resume: false
            }
        );
    }

    #[test]
    fn bad_bodies_are_refused_with_what_is_wrong() {
        for (body, needle) in [
            (&b""[..], "destination_url"),
            (br#"{"destination_url":"http://x/s"}"#, "file://"),
            (br#"{"destination_url":"file:///s","mode":"fast"}"#, "fast"),
            (br#"{"destination":"file:///s"}"#, "destination"),
        ] {
            let e = parse_snapshot(body).unwrap_err();
            assert_eq!(e.status(), 400, "{e}");
            assert!(e.to_string().contains(needle), "{e}");
        }
        assert!(parse_restore(br#"{"source_url":"rel/path"}"#).is_err());
    }
}
