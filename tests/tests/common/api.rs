//! A client of keel's API socket for the tests: a keel started with `--api-socket`, requests
//! as raw HTTP/1.1 on a `UnixStream`, answers read as Cloud Hypervisor's `ch-remote` reads them
//! (its status-line parsing, errors as a JSON array of strings) and checked against the
//! statuses the OpenAPI document lists for each operation.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use super::{wait_until, Watched, HANG_GUARD};

pub const API: &str = "/api/v1";

/// (METHOD, full path) -> the statuses the document lists for it.
pub type Operations = BTreeMap<(String, String), BTreeSet<u16>>;

pub fn openapi() -> &'static Operations {
    static DOC: OnceLock<Operations> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/api/keel-api.yaml");
        let text = std::fs::read_to_string(&path).expect("read keel-api.yaml");
        let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("keel-api.yaml is YAML");
        let doc = &docs[0];
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert_eq!(
            doc["servers"][0]["url"].as_str(),
            Some("http://localhost/api/v1")
        );
        let mut ops = Operations::new();
        for (path, item) in doc["paths"].as_hash().expect("paths") {
            let path = format!("{API}{}", path.as_str().expect("path key"));
            for (method, op) in item.as_hash().expect("path item") {
                let method = method.as_str().expect("method key").to_ascii_uppercase();
                let statuses = op["responses"]
                    .as_hash()
                    .expect("responses")
                    .keys()
                    .map(|k| k.as_str().expect("quoted status").parse().expect("status"))
                    .collect();
                ops.insert((method, path.clone()), statuses);
            }
        }
        ops
    })
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// Asserts an error `status` whose body is what Cloud Hypervisor's clients expect: a JSON
    /// array of strings, the error chain outermost first, each non-empty and on one line.
    pub fn messages(&self, status: u16) -> Vec<String> {
        assert_eq!(self.status, status, "{self:?}");
        let messages: Vec<String> = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not a JSON array of strings ({e}): {self:?}"));
        assert!(!messages.is_empty(), "{self:?}");
        for message in &messages {
            assert!(!message.is_empty() && !message.contains('\n'), "{self:?}");
        }
        messages
    }

    /// [`Answer::messages`], joined with ": ".
    pub fn error(&self, status: u16) -> String {
        self.messages(status).join(": ")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// The status as Cloud Hypervisor's `ch-remote` reads it (`get_status_code` in its
/// `api_client` crate): the text after `HTTP/1.1 ` up to the first CR, trimmed, parsed as a
/// number. A reason phrase (`200 OK`) makes that parse fail, which `ch-remote` reports as
/// "Error parsing HTTP status code".
pub fn ch_remote_status(response: &str) -> u16 {
    let o = response
        .find("HTTP/1.1")
        .unwrap_or_else(|| panic!("HTTP output is missing protocol statement: {response:?}"));
    let end = response[o..].find('\r').expect("a CR after the status");
    let code: usize = response[o + "HTTP/1.1 ".len()..end]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("Error parsing HTTP status code ({e}): {response:?}"));
    u16::try_from(code).expect("a 16-bit status")
}

/// Writes `raw` on a new connection and reads the answer until the server closes.
pub fn exchange(socket: &Path, raw: &[u8]) -> Answer {
    let mut stream = UnixStream::connect(socket).expect("connect to the API socket");
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    // A refused body may not be read at all: the answer matters, not the write.
    let _ = stream.write_all(raw);
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).expect("read the answer");
    let text = String::from_utf8(bytes).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let status = ch_remote_status(&text);
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
    {
        assert_eq!(len.parse::<usize>().unwrap(), body.len(), "{text}");
    }
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// `METHOD PATH` with an optional JSON body on a new connection to `socket`.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Answer {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if let Some(body) = body {
        raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    raw.push_str("\r\n");
    raw.push_str(body.unwrap_or(""));
    exchange(socket, raw.as_bytes())
}

/// A keel serving an API socket; killed if the test ends without `finish`.
pub struct Keel {
    pub process: Watched,
    pub socket: PathBuf,
}

/// A fresh path in the temp directory, private to this test process.
pub fn temp_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("keel-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

impl Keel {
    /// `keel --api-socket <tmp>/NAME.sock ARGS...`, once it answers vmm.ping.
    pub fn start(name: &str, args: &[&str]) -> Keel {
        Keel::start_at(temp_path(&format!("{name}.sock")), args)
    }

    /// `keel --api-socket SOCKET ARGS...`, once it answers vmm.ping.
    pub fn start_at(socket: PathBuf, args: &[&str]) -> Keel {
        let mut all = vec!["--api-socket", socket.to_str().unwrap()];
        all.extend_from_slice(args);
        Keel::serving(socket.clone(), super::spawn_keel(&all))
    }

    /// `child`, a keel serving `socket`, once it answers vmm.ping.
    pub fn serving(socket: PathBuf, child: std::process::Child) -> Keel {
        let mut keel = Keel {
            process: Watched::new(child),
            socket,
        };
        let listening = wait_until("keel listening on its socket", HANG_GUARD, || {
            if UnixStream::connect(&keel.socket).is_ok() {
                Some(true)
            } else if keel.process.has_exited() {
                Some(false)
            } else {
                None
            }
        });
        if !listening {
            let run = keel.finish();
            panic!("keel exited without serving\n{}", run.describe());
        }
        // Answered from the serving loop, which starts after the signal handlers are in.
        assert_eq!(keel.call("GET", "vmm.ping", None).status, 200);
        keel
    }

    /// `METHOD /api/v1/ENDPOINT` with an optional body; checks the status against the
    /// OpenAPI document when it describes the operation.
    pub fn call(&self, method: &str, endpoint: &str, body: Option<&str>) -> Answer {
        let path = format!("{API}/{endpoint}");
        let answer = request(&self.socket, method, &path, body);
        if let Some(statuses) = openapi().get(&(method.to_string(), path.clone())) {
            assert!(
                statuses.contains(&answer.status),
                "{method} {path} answered {} which keel-api.yaml does not list ({statuses:?})",
                answer.status
            );
        }
        answer
    }

    pub fn put(&self, endpoint: &str) -> Answer {
        self.call("PUT", endpoint, None)
    }

    pub fn state(&self) -> String {
        let answer = self.call("GET", "vm.info", None);
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()["state"].as_str().unwrap().to_string()
    }

    /// The sum over vCPUs of `vm.counters`' `vcpus[].KIND.NAME`.
    pub fn vcpu_counter(&self, kind: &str, name: &str) -> u64 {
        let answer = self.call("GET", "vm.counters", None);
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()["vcpus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v[kind][name].as_u64().unwrap_or(0))
            .sum()
    }

    /// Every exit KVM counted (host interrupts included).
    pub fn kvm_exits(&self) -> u64 {
        self.vcpu_counter("kvm", "exits")
    }

    /// Exits Keel handled in userspace: each one an instruction the guest ran.
    pub fn userspace_exits(&self) -> u64 {
        self.vcpu_counter("userspace", "total")
    }

    /// Waits until the guest has exited to userspace more than `than` times: it runs. The
    /// busy guest does so thousands of times a second.
    pub fn wait_for_guest_progress(&self, than: u64, what: &str) -> u64 {
        wait_until(what, HANG_GUARD, || {
            let now = self.userspace_exits();
            (now > than).then_some(now)
        })
    }

    /// Waits for keel to exit after `vmm.shutdown` or a signal.
    pub fn finish(self) -> super::Run {
        self.process.finish(HANG_GUARD)
    }
}

/// A vm.create body for the probe with `cmdline`, COM1 to a file.
pub fn probe_body(tag: &str, cmdline: &str) -> (String, PathBuf) {
    let serial = temp_path(&format!("{tag}.com1"));
    let body = serde_json::json!({
        "cpus": {"boot_vcpus": 1},
        "memory": {"size": 128u64 << 20},
        "payload": {"kernel": super::probe_image("probe.elf"), "cmdline": cmdline},
        "serial": {"mode": "File", "file": serial},
    });
    (body.to_string(), serial)
}

pub fn assert_exits_cleanly(keel: Keel) {
    let socket = keel.socket.clone();
    let answer = keel.put("vmm.shutdown");
    assert_eq!(answer.status, 204, "{answer:?}");
    let run = keel.finish();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert!(!run.stderr.contains("panicked"), "{}", run.describe());
    assert!(!socket.exists(), "socket left behind");
}
