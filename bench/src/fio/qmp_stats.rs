//! KVM's counters of a QEMU guest, read over QMP with `query-stats` (QEMU 7.1 and later read
//! them from KVM's binary stats, the same source as Keel's `kvm.*` counters), so exits per
//! I/O can be put side by side. Values are summed over vCPUs into `kvm.<name>`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Longest wait for one QMP answer (a hang guard: QEMU under emulation answers in seconds).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest line accepted from QEMU.
const MAX_LINE: usize = 1 << 20;

/// A QMP session failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Socket I/O.
    #[error("QMP socket")]
    Io(#[from] std::io::Error),
    /// A reply that is not JSON, or too long.
    #[error("QMP sent an unreadable reply")]
    BadReply,
    /// QEMU refused the command.
    #[error("QMP command {command} failed: {error}")]
    Refused {
        /// The command.
        command: &'static str,
        /// QEMU's error.
        error: String,
    },
}

/// A QMP session, capabilities negotiated.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to `path`, retrying while QEMU creates the socket: until `deadline`, or until
    /// `alive` says QEMU is gone.
    pub fn connect(
        path: &Path,
        deadline: Instant,
        mut alive: impl FnMut() -> bool,
    ) -> Result<Self, QmpError> {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline || !alive() => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        qmp.read_value()?; // the greeting
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_value(&mut self) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        let n =
            std::io::Read::take(&mut self.reader, MAX_LINE as u64).read_until(b'\n', &mut line)?;
        if n == 0 || !line.ends_with(b"\n") {
            return Err(QmpError::BadReply);
        }
        serde_json::from_slice(&line).map_err(|_| QmpError::BadReply)
    }

    /// Runs `command`; returns its `return` value (events in between are skipped).
    pub fn execute(&mut self, command: &'static str, arguments: Value) -> Result<Value, QmpError> {
        let request = json!({"execute": command, "arguments": arguments});
        self.writer.write_all(format!("{request}\n").as_bytes())?;
        loop {
            let mut reply = self.read_value()?;
            if let Some(ret) = reply.get_mut("return") {
                return Ok(ret.take());
            }
            if let Some(err) = reply.get("error") {
                return Err(QmpError::Refused {
                    command,
                    error: err["desc"].as_str().unwrap_or("?").to_string(),
                });
            }
        }
    }

    /// KVM's per-vCPU counters summed over vCPUs, as `kvm.<name>`.
    pub fn vcpu_stats(&mut self) -> Result<BTreeMap<String, u64>, QmpError> {
        let ret = self.execute("query-stats", json!({"target": "vcpu"}))?;
        Ok(sum_vcpu_stats(&ret))
    }
}

/// Sums `query-stats` results: every integer stat of every vCPU, by name.
pub fn sum_vcpu_stats(ret: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for result in ret.as_array().into_iter().flatten() {
        if result["provider"] != "kvm" {
            continue;
        }
        for stat in result["stats"].as_array().into_iter().flatten() {
            if let (Some(name), Some(v)) = (stat["name"].as_str(), stat["value"].as_u64()) {
                *out.entry(format!("kvm.{name}")).or_insert(0) += v;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_integer_kvm_stats_over_vcpus() {
        let ret = json!([
            {"provider": "kvm", "qom-path": "/machine/unattached/device[0]",
             "stats": [{"name": "exits", "value": 10}, {"name": "io_exits", "value": 2},
                       {"name": "halt_wait_hist", "value": [1, 2, 3]}]},
            {"provider": "kvm", "qom-path": "/machine/unattached/device[1]",
             "stats": [{"name": "exits", "value": 5}]},
            {"provider": "other", "stats": [{"name": "exits", "value": 100}]}
        ]);
        let s = sum_vcpu_stats(&ret);
        assert_eq!(s.get("kvm.exits"), Some(&15));
        assert_eq!(s.get("kvm.io_exits"), Some(&2));
        assert!(!s.contains_key("kvm.halt_wait_hist"));
        assert!(sum_vcpu_stats(&json!({"x": 1})).is_empty());
    }

    #[test]
    fn talks_qmp_over_a_socket() {
        let path = std::env::temp_dir().join(format!("keel-qmp-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            w.write_all(b"{\"QMP\": {\"version\": {}}}\n").unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            w.write_all(b"{\"return\": {}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("query-stats"));
            w.write_all(b"{\"event\": \"X\"}\n{\"return\": [{\"provider\": \"kvm\", \"stats\": [{\"name\": \"exits\", \"value\": 7}]}]}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            w.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\n")
                .unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut qmp = Qmp::connect(&path, deadline, || true).unwrap();
        assert_eq!(qmp.vcpu_stats().unwrap().get("kvm.exits"), Some(&7));
        match qmp.execute("query-stats", json!({})) {
            Err(QmpError::Refused { error, .. }) => assert_eq!(error, "nope"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        server.join().unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
