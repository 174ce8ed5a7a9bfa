//! Keel's API socket from the scenarios' side: `GET vm.counters` while the guest runs,
//! `PUT vm.pause` / `vm.snapshot` for snapshots, and `PUT vmm.shutdown` at the end (HTTP/1.1,
//! one request per connection).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::error::{io, RigError};

/// Largest reply read.
const MAX_REPLY: u64 = 4 << 20;

/// Sends one request without a body and returns (status code, body).
fn request(socket: &Path, method: &str, path: &str) -> Result<(u16, String), RigError> {
    request_with(socket, method, path, "")
}

/// Sends one request with `body` (JSON) and returns (status code, body).
fn request_with(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), RigError> {
    let mut s = UnixStream::connect(socket).map_err(io("cannot connect to", socket))?;
    // A snapshot of a guest's RAM answers once it is on disk.
    s.set_read_timeout(Some(Duration::from_secs(600)))
        .map_err(io("cannot set a timeout on", socket))?;
    let req = format!(
        "{method} /api/v1/{path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(io("cannot write to", socket))?;
    let mut reply = String::new();
    s.take(MAX_REPLY)
        .read_to_string(&mut reply)
        .map_err(io("cannot read from", socket))?;
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| RigError::Check(format!("bad HTTP reply from keel: {reply:.80}")))?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `GET vm.counters`, parsed.
fn counters_json(socket: &Path) -> Result<serde_json::Value, RigError> {
    let (status, body) = request(socket, "GET", "vm.counters")?;
    if status != 200 {
        return Err(RigError::Check(format!(
            "vm.counters answered {status}: {body}"
        )));
    }
    serde_json::from_str(&body).map_err(|source| RigError::Json {
        what: "vm.counters",
        source,
    })
}

/// Keel's counters, flattened to `keel.<kind>`, `keel.<bus>.<device>`, `kvm.<name>` (summed
/// over vCPUs) and `kvm.vm.<name>`.
pub fn counters(socket: &Path) -> Result<BTreeMap<String, u64>, RigError> {
    Ok(flatten(&counters_json(socket)?))
}

/// Stops keel (it exits 0).
pub fn shutdown(socket: &Path) -> Result<(), RigError> {
    put(socket, "vmm.shutdown", "").map(drop)
}

/// `PUT path` with `body`; the answer's body if it is 2xx.
pub fn put(socket: &Path, path: &str, body: &str) -> Result<String, RigError> {
    let (status, answer) = request_with(socket, "PUT", path, body)?;
    if status / 100 == 2 {
        Ok(answer)
    } else {
        Err(RigError::Check(format!(
            "{path} answered {status}: {answer}"
        )))
    }
}

/// Requests the VM's disks completed so far.
pub fn disk_requests(socket: &Path) -> Result<u64, RigError> {
    Ok(counters_json(socket)?["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["requests"].as_u64())
        .sum())
}

/// Flattens a `keel-stats` / `vm.counters` document (see `vmm::stats::view::json`).
pub fn flatten(v: &serde_json::Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut add = |k: String, n: Option<u64>| *out.entry(k).or_insert(0) += n.unwrap_or(0);
    for cpu in v["vcpus"].as_array().into_iter().flatten() {
        for (k, n) in cpu["userspace"].as_object().into_iter().flatten() {
            add(format!("keel.{k}"), n.as_u64());
        }
        for (k, n) in cpu["devices"].as_object().into_iter().flatten() {
            add(format!("keel.{k}"), n.as_u64());
        }
        for (k, n) in cpu["kvm"].as_object().into_iter().flatten() {
            add(format!("kvm.{k}"), n.as_u64());
        }
    }
    for (k, n) in v["vm"].as_object().into_iter().flatten() {
        add(format!("kvm.vm.{k}"), n.as_u64());
    }
    out
}

/// `after[k] - before[k]` (0 where a counter went backwards or is missing).
pub fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, k: &str) -> u64 {
    after
        .get(k)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(k).copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_flatten_over_vcpus() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"vcpus":[{"index":0,"userspace":{"total":3,"io":2},"devices":{"pio.pm":2},"kvm":{"exits":10}},
                        {"index":1,"userspace":{"total":1,"io":0},"devices":{},"kvm":{"exits":5}}],
                "vm":{"remote_tlb_flush":4},"disks":[]}"#,
        )
        .unwrap();
        let f = flatten(&v);
        assert_eq!(f["keel.total"], 4);
        assert_eq!(f["keel.pio.pm"], 2);
        assert_eq!(f["kvm.exits"], 15);
        assert_eq!(f["kvm.vm.remote_tlb_flush"], 4);
        let mut later = f.clone();
        later.insert("kvm.exits".into(), 40);
        assert_eq!(delta(&f, &later, "kvm.exits"), 25);
        assert_eq!(delta(&later, &f, "kvm.exits"), 0);
        assert_eq!(delta(&f, &later, "nothing"), 0);
    }
}
