//! `keel --api-socket` over a real Unix socket with real probe guests: the lifecycle
//! (create -> boot -> pause -> counters -> resume -> shutdown) with `vm.info` along the way,
//! bad requests answered with 4xx and a JSON error while the VM keeps running, the socket's
//! mode and removal, exit status, the server against its OpenAPI document, a boot that cannot
//! start every vCPU thread (a pids cgroup limit) leaving none running, and create/boot/delete
//! cycles releasing threads, descriptors and the disk image's lock.
//!
//! Requests are raw HTTP/1.1 written to a `UnixStream`, and answers are read as Cloud
//! Hypervisor's client `ch-remote` reads them (its status line parsing, errors as a JSON array
//! of strings), so every test here also checks that Cloud Hypervisor's clients can talk to
//! Keel; one boots a `VmConfig` written the way Cloud Hypervisor writes it. Every answer to an
//! operation the OpenAPI document describes is checked against the statuses it lists for that
//! operation.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::{thread_status, wait_for_file, wait_until, Watched, BOOT_LINE, HANG_GUARD};

use serde_json::Value;

const API: &str = "/api/v1";

/// (METHOD, full path) -> the statuses the document lists for it.
type Operations = BTreeMap<(String, String), BTreeSet<u16>>;

fn openapi() -> &'static Operations {
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
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// Asserts an error `status` whose body is what Cloud Hypervisor's clients expect: a JSON
    /// array of strings, the error chain outermost first, each non-empty and on one line.
    fn messages(&self, status: u16) -> Vec<String> {
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
    fn error(&self, status: u16) -> String {
        self.messages(status).join(": ")
    }

    fn header(&self, name: &str) -> Option<String> {
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
fn ch_remote_status(response: &str) -> u16 {
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
fn exchange(socket: &Path, raw: &[u8]) -> Answer {
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

/// A keel serving an API socket; killed if the test ends without `finish`.
struct Keel {
    process: Watched,
    socket: PathBuf,
}

/// A fresh path in the temp directory, private to this test process.
fn temp_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("keel-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

impl Keel {
    /// `keel --api-socket <tmp>/NAME.sock ARGS...`, once it answers vmm.ping.
    fn start(name: &str, args: &[&str]) -> Keel {
        Keel::start_at(temp_path(&format!("{name}.sock")), args)
    }

    /// `keel --api-socket SOCKET ARGS...`, once it answers vmm.ping.
    fn start_at(socket: PathBuf, args: &[&str]) -> Keel {
        let mut all = vec!["--api-socket", socket.to_str().unwrap()];
        all.extend_from_slice(args);
        Keel::serving(socket.clone(), common::spawn_keel(&all))
    }

    /// `child`, a keel serving `socket`, once it answers vmm.ping.
    fn serving(socket: PathBuf, child: std::process::Child) -> Keel {
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
    fn call(&self, method: &str, endpoint: &str, body: Option<&str>) -> Answer {
        let path = format!("{API}/{endpoint}");
        let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        if let Some(body) = body {
            raw.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        raw.push_str("\r\n");
        raw.push_str(body.unwrap_or(""));
        let answer = exchange(&self.socket, raw.as_bytes());
        if let Some(statuses) = openapi().get(&(method.to_string(), path.clone())) {
            assert!(
                statuses.contains(&answer.status),
                "{method} {path} answered {} which keel-api.yaml does not list ({statuses:?})",
                answer.status
            );
        }
        answer
    }

    fn put(&self, endpoint: &str) -> Answer {
        self.call("PUT", endpoint, None)
    }

    fn state(&self) -> String {
        let answer = self.call("GET", "vm.info", None);
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()["state"].as_str().unwrap().to_string()
    }

    /// The sum over vCPUs of `vm.counters`' `vcpus[].KIND.NAME`.
    fn vcpu_counter(&self, kind: &str, name: &str) -> u64 {
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
    fn kvm_exits(&self) -> u64 {
        self.vcpu_counter("kvm", "exits")
    }

    /// Exits Keel handled in userspace: each one an instruction the guest ran.
    fn userspace_exits(&self) -> u64 {
        self.vcpu_counter("userspace", "total")
    }

    /// Waits until the guest has exited to userspace more than `than` times: it runs. The
    /// busy guest does so thousands of times a second.
    fn wait_for_guest_progress(&self, than: u64, what: &str) -> u64 {
        wait_until(what, HANG_GUARD, || {
            let now = self.userspace_exits();
            (now > than).then_some(now)
        })
    }

    /// Waits for keel to exit after `vmm.shutdown` or a signal.
    fn finish(self) -> common::Run {
        self.process.finish(HANG_GUARD)
    }
}

/// A vm.create body for the probe with `cmdline`, COM1 to a file.
fn probe_body(tag: &str, cmdline: &str) -> (String, PathBuf) {
    let serial = temp_path(&format!("{tag}.com1"));
    let body = serde_json::json!({
        "cpus": {"boot_vcpus": 1},
        "memory": {"size": 128u64 << 20},
        "payload": {"kernel": common::probe_image("probe.elf"), "cmdline": cmdline},
        "serial": {"mode": "File", "file": serial},
    });
    (body.to_string(), serial)
}

fn assert_exits_cleanly(keel: Keel) {
    let socket = keel.socket.clone();
    let answer = keel.put("vmm.shutdown");
    assert_eq!(answer.status, 204, "{answer:?}");
    let run = keel.finish();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert!(!run.stderr.contains("panicked"), "{}", run.describe());
    assert!(!socket.exists(), "socket left behind");
}

/// How long a paused guest is watched for progress. Not a margin: a working pause passes
/// with any length, and the busy guest exits thousands of times a second, so a pause that
/// let it run shows within milliseconds of this.
const PAUSED_WATCH: Duration = Duration::from_millis(500);

#[test]
fn lifecycle_create_boot_pause_counters_resume_shutdown() {
    let keel = Keel::start("lifecycle", &[]);
    let meta = std::fs::symlink_metadata(&keel.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let ping = keel.call("GET", "vmm.ping", None).json();
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));

    keel.call("GET", "vm.info", None).error(409);
    // The guest runs until it is shut down, exiting to Keel all the while.
    let cmdline = common::busy_until_stopped();
    let (body, serial) = probe_body("lifecycle", &cmdline);
    assert_eq!(keel.call("PUT", "vm.create", Some(&body)).status, 204);
    let info = keel.call("GET", "vm.info", None).json();
    assert_eq!(info["state"], "Created");
    assert_eq!(info["config"]["memory"]["size"], 128u64 << 20);
    assert_eq!(info["config"]["payload"]["cmdline"], cmdline.as_str());
    assert_eq!(info["memory_actual_size"], 128u64 << 20);
    keel.call("GET", "vm.counters", None).error(409);

    assert_eq!(keel.put("vm.boot").status, 204);
    assert_eq!(keel.state(), "Running");
    // The guest has started once its boot line is on the serial file.
    wait_for_file(&serial, BOOT_LINE, HANG_GUARD);

    assert_eq!(keel.put("vm.pause").status, 204);
    assert_eq!(keel.state(), "Paused");
    let counters = keel.call("GET", "vm.counters", None).json();
    assert_eq!(counters["vcpus"].as_array().unwrap().len(), 1);
    // At least the boot line's bytes went out through COM1.
    assert!(counters["vcpus"][0]["userspace"]["total"].as_u64().unwrap() > 0);
    let frozen = keel.kvm_exits();
    let frozen_userspace = keel.userspace_exits();
    std::thread::sleep(PAUSED_WATCH);
    assert_eq!(keel.kvm_exits(), frozen, "a paused guest does not run");
    assert_eq!(keel.userspace_exits(), frozen_userspace);

    assert_eq!(keel.put("vm.resume").status, 204);
    assert_eq!(keel.state(), "Running");
    // Resumed, the guest runs again: its PM timer reads exit to Keel.
    keel.wait_for_guest_progress(frozen_userspace, "the resumed guest runs");
    let resumed = keel.kvm_exits();
    assert!(resumed > frozen, "{resumed} <= {frozen}");
    assert_eq!(keel.put("vm.shutdown").status, 204);
    assert_eq!(keel.state(), "Shutdown");
    assert!(
        keel.kvm_exits() >= resumed,
        "counters stay readable after shutdown"
    );
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(!text.contains("\"done\""), "stopped, not finished: {text}");
    let message = keel.put("vm.pause").error(409);
    assert!(message.contains("Shutdown"), "{message}");
    keel.put("vm.resume").error(409);
    keel.put("vm.shutdown").error(409);

    // As in Cloud Hypervisor, a shut-down VM boots again (rebuilt from its config).
    assert_eq!(keel.put("vm.boot").status, 204);
    assert_eq!(keel.state(), "Running");
    assert_eq!(keel.put("vm.delete").status, 204);
    keel.call("GET", "vm.info", None).error(409);
    assert_eq!(keel.put("vm.delete").status, 204);

    assert_exits_cleanly(keel);
    let _ = std::fs::remove_file(serial);
}

#[test]
fn bad_requests_get_4xx_and_json_and_the_vm_keeps_running() {
    let keel = Keel::start("bad", &[]);
    // No VM yet.
    let cases = [
        ("{", "VM config JSON"),
        (
            "{\"payload\":{\"kernel\":\"/k\"},\"net\":[{}]}",
            "net devices",
        ),
        (
            "{\"payload\":{\"kernel\":\"/k\"},\"nett\":[{}]}",
            "unknown field `nett`",
        ),
        (
            "{\"payload\":{\"kernel\":\"/nonexistent/vmlinux\"}}",
            "/nonexistent/vmlinux",
        ),
        ("", "needs a VmConfig"),
    ];
    for (body, expected) in cases {
        let message = keel.call("PUT", "vm.create", Some(body)).error(400);
        assert!(message.contains(expected), "{body}: {message}");
    }
    for endpoint in ["vm.boot", "vm.pause", "vm.resume", "vm.shutdown"] {
        let message = keel.put(endpoint).error(409);
        assert!(message.contains("no VM"), "{message}");
    }

    // The guest runs until it is shut down, exiting to Keel all the while.
    let (body, serial) = probe_body("bad", &common::busy_until_stopped());
    assert_eq!(keel.call("PUT", "vm.create", Some(&body)).status, 204);
    keel.put("vm.pause").error(409);
    keel.put("vm.resume").error(409);
    assert_eq!(keel.put("vm.boot").status, 204);
    wait_for_file(&serial, BOOT_LINE, HANG_GUARD);

    // Every bad request below leaves the VM running.
    let message = keel.call("PUT", "vm.create", Some(&body)).error(409);
    assert!(message.contains("already exists"), "{message}");
    keel.call("PUT", "vm.create", Some("{")).error(409);
    let message = keel.put("vm.boot").error(409);
    assert!(message.contains("Running"), "{message}");
    keel.put("vm.resume").error(409);
    assert_eq!(keel.put("vm.pause").status, 204);
    keel.put("vm.pause").error(409);
    assert_eq!(keel.put("vm.resume").status, 204);

    let answer = keel.call("POST", "vm.boot", None);
    answer.error(405);
    assert_eq!(answer.header("Allow").as_deref(), Some("PUT"));
    let answer = keel.call("PUT", "vm.info", Some("{}"));
    answer.error(405);
    assert_eq!(answer.header("Allow").as_deref(), Some("GET"));
    keel.call("GET", "vm.add-net", None).error(404);
    exchange(&keel.socket, b"GET /nope HTTP/1.1\r\n\r\n").error(404);
    exchange(&keel.socket, b"NOT HTTP\r\n\r\n").error(400);
    exchange(&keel.socket, b"GET /api/v1/vm.info HTTP/3.0\r\n\r\n").error(505);

    // A body over 1 MiB is refused before it is read.
    let big = format!(
        "{{\"payload\":{{\"cmdline\":\"{}\"}}}}",
        "x".repeat(2 << 20)
    );
    let message = keel.call("PUT", "vm.create", Some(&big)).error(413);
    assert!(message.contains("larger than"), "{message}");

    assert_eq!(keel.state(), "Running");
    // After all of that, the guest still makes progress.
    let before = keel.userspace_exits();
    keel.wait_for_guest_progress(before, "the guest still runs");
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(!text.contains("\"done\""), "the guest ended: {text}");
    assert_exits_cleanly(keel);
    let _ = std::fs::remove_file(serial);
}

/// A `VmConfig` as Cloud Hypervisor writes one (every field, its defaults spelled out), with
/// no console device (`Off`), COM1 on Keel's stdout (`Tty`) and Cloud Hypervisor's default
/// `rng`; `payload.kernel` and `cmdline` are filled in by [`cloud_hypervisor_body`].
const CLOUD_HYPERVISOR_CONFIG: &str = r#"{
  "cpus": {"boot_vcpus": 1, "max_vcpus": 1, "topology": null, "kvm_hyperv": false,
           "max_phys_bits": 46, "affinity": null, "features": {"amx": false}},
  "memory": {"size": 134217728, "mergeable": false, "hotplug_method": "Acpi",
             "hotplug_size": null, "hotplugged_size": null, "shared": false, "hugepages": false,
             "hugepage_size": null, "prefault": false, "zones": null, "thp": true},
  "payload": {"firmware": null, "kernel": null, "cmdline": null, "initramfs": null},
  "rate_limit_groups": null, "disks": null, "net": null,
  "rng": {"src": "/dev/urandom", "iommu": false},
  "balloon": null, "fs": null, "pmem": null,
  "serial": {"file": null, "mode": "Tty", "iommu": false, "socket": null},
  "console": {"file": null, "mode": "Off", "iommu": false, "socket": null},
  "debug_console": {"file": null, "mode": "Off", "iobase": 233},
  "devices": null, "user_devices": null, "vdpa": null, "vsock": null, "pvpanic": false,
  "iommu": false, "numa": null, "watchdog": false, "pci_segments": null, "platform": null,
  "tpm": null, "landlock_enable": false, "landlock_rules": null
}"#;

/// [`CLOUD_HYPERVISOR_CONFIG`] for the probe with `cmdline`.
fn cloud_hypervisor_body(cmdline: &str) -> Value {
    let mut body: Value = serde_json::from_str(CLOUD_HYPERVISOR_CONFIG).unwrap();
    body["payload"]["kernel"] = common::probe_image("probe.elf").to_str().unwrap().into();
    body["payload"]["cmdline"] = cmdline.into();
    body
}

#[test]
fn a_cloud_hypervisor_vm_config_is_accepted_and_boots() {
    let keel = Keel::start("ch-config", &[]);
    let body = cloud_hypervisor_body(&common::busy_until_stopped());

    // What Keel lacks is refused, naming it, and nothing is created.
    let mut with_net = body.clone();
    with_net["net"] = serde_json::json!([{"tap": "tap0", "mac": "12:34:56:78:9a:bc"}]);
    let messages = keel
        .call("PUT", "vm.create", Some(&with_net.to_string()))
        .messages(400);
    assert_eq!(
        messages,
        [
            "the VM config is refused",
            "net: net devices (virtio-net) are not supported by keel"
        ]
    );
    let mut with_console = body.clone();
    with_console["console"]["mode"] = "Tty".into();
    let message = keel
        .call("PUT", "vm.create", Some(&with_console.to_string()))
        .error(400);
    assert!(message.contains("console.mode: \"Tty\""), "{message}");
    keel.call("GET", "vm.info", None).error(409);

    assert_eq!(
        keel.call("PUT", "vm.create", Some(&body.to_string()))
            .status,
        204
    );
    let info = keel.call("GET", "vm.info", None).json();
    assert_eq!(info["config"]["serial"]["mode"], "Tty");
    assert_eq!(info["config"]["memory"]["size"], 128u64 << 20);
    assert_eq!(keel.put("vm.boot").status, 204);
    assert_eq!(keel.state(), "Running");
    // The probe writes its boot line to COM1 before its clock loop, whose PM timer reads are
    // millions of exits: past ten thousand, the line is out.
    keel.wait_for_guest_progress(10_000, "the guest runs");
    assert_eq!(keel.put("vm.shutdown").status, 204);
    assert_eq!(keel.put("vmm.shutdown").status, 204);
    let run = keel.finish();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    // Serial mode Tty: COM1 is Keel's stdout.
    assert!(run.stdout.contains(BOOT_LINE), "{}", run.describe());
}

#[test]
fn the_command_line_vm_is_served_and_keel_outlives_its_poweroff() {
    let serial = temp_path("cli.com1");
    let serial_arg = format!("file={}", serial.display());
    let kernel = common::probe_image("probe.elf");
    let keel = Keel::start(
        "cli",
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "size=128M",
            "--cmdline",
            "probe.cmd=boot",
            "--serial",
            &serial_arg,
        ],
    );
    // The probe powers off on its own after its boot line; keel stays up.
    wait_until("the probe powers off", HANG_GUARD, || {
        (keel.state() == "Shutdown").then_some(())
    });
    let info = keel.call("GET", "vm.info", None).json();
    assert_eq!(info["config"]["payload"]["cmdline"], "probe.cmd=boot");
    assert_eq!(keel.call("GET", "vmm.ping", None).status, 200);
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(text.contains("{\"done\":true}"), "{text}");
    assert_exits_cleanly(keel);
    let _ = std::fs::remove_file(serial);
}

#[test]
fn sigterm_and_sighup_stop_keel_and_remove_the_socket() {
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGHUP, "SIGHUP")] {
        let keel = Keel::start(&format!("stop-{name}"), &[]);
        keel.process.signal(signal);
        let socket = keel.socket.clone();
        let run = keel.finish();
        assert_eq!(run.code(), Some(0), "{name}: {}", run.describe());
        assert!(
            run.stderr.contains(&format!("stopped by {name}")),
            "{}",
            run.describe()
        );
        assert!(!socket.exists(), "{name}: socket left behind");
    }
}

#[test]
fn an_existing_path_is_refused_unless_it_is_a_stale_socket() {
    let path = temp_path("taken");
    std::fs::write(&path, b"not a socket").unwrap();
    let run = common::run_keel(&["--api-socket", path.to_str().unwrap()]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    assert!(run.stderr.contains("not a socket"), "{}", run.describe());
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    std::fs::remove_file(&path).unwrap();

    // A socket nobody listens on is stale: replaced.
    let socket = temp_path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let keel = Keel::start_at(socket, &[]);
    // A second keel on a live socket is refused and leaves it alone.
    let run = common::run_keel(&["--api-socket", keel.socket.to_str().unwrap()]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    assert!(run.stderr.contains("another process"), "{}", run.describe());
    assert_eq!(keel.call("GET", "vmm.ping", None).status, 200);
    assert_exits_cleanly(keel);
}

#[test]
fn the_server_matches_its_openapi_document() {
    let documented: BTreeSet<(String, String)> = openapi().keys().cloned().collect();
    let served: BTreeSet<(String, String)> = vmm::api::routes::ENDPOINTS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served, "keel-api.yaml and the server disagree");

    let keel = Keel::start("openapi", &[]);
    // Every documented operation is served (vmm.shutdown last: keel exits).
    let mut ops: Vec<&(String, String)> = documented.iter().collect();
    ops.sort_by_key(|(_, p)| p.ends_with("vmm.shutdown"));
    for (method, path) in ops {
        let endpoint = path.trim_start_matches(&format!("{API}/"));
        let body = (endpoint == "vm.create").then_some("{}");
        let answer = keel.call(method, endpoint, body);
        assert!(
            ![404, 405].contains(&answer.status),
            "{method} {path} is documented but not served: {answer:?}"
        );
        if answer.status >= 400 {
            answer.error(answer.status);
        }
    }
    let socket = keel.socket.clone();
    let run = keel.finish();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert!(!socket.exists());
}

/// A pids cgroup (v1 `pids` hierarchy or v2) holding one process, removed on drop; `None`
/// where this host has no writable pids controller.
struct PidsCgroup(PathBuf);

impl PidsCgroup {
    fn holding(pid: u32) -> Option<PidsCgroup> {
        let root = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|r| {
                r.join("cgroup.procs").exists()
                    && (r.ends_with("pids") || {
                        std::fs::read_to_string(r.join("cgroup.controllers"))
                            .is_ok_and(|c| c.contains("pids"))
                    })
            })?;
        let dir = root.join(format!("keel-test-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let group = PidsCgroup(dir);
        std::fs::write(group.0.join("cgroup.procs"), pid.to_string()).ok()?;
        group.0.join("pids.max").exists().then_some(group)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.0.join(file))
            .unwrap()
            .trim()
            .to_string()
    }

    fn set_max(&self, max: &str) {
        std::fs::write(self.0.join("pids.max"), max).unwrap();
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // Empty once keel has exited; rmdir fails harmlessly if not.
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Names of `pid`'s threads whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> Vec<String> {
    thread_status(&format!("/proc/{pid}"), "Name")
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with(prefix))
        .collect()
}

/// Names of `pid`'s threads that run a vCPU.
fn vcpu_threads(pid: u32) -> Vec<String> {
    threads_named(pid, "keel-vcpu")
}

/// Waits until none of keel's API connection threads is left and every other thread keel
/// started has named itself. A new thread bears its creator's name (the serve loop's, the
/// main thread's) until it first runs and sets its own, so a thread started for an earlier
/// connection may still look like the main thread, and a vCPU thread started before vm.boot's
/// answer may not show its name yet. Each thread leaves `/proc` as the kernel reaps it (and
/// its pids charge goes with it); a thread whose name can no longer be read is ending and
/// still counts. A hang guard, not a margin: every connection thread ends once its answer is
/// out, and every thread names itself as it starts.
fn wait_for_threads_settled(pid: u32, what: &str) {
    let main = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    let main = main.trim();
    wait_until(what, HANG_GUARD, || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let busy = tasks.map(|t| t.unwrap()).any(|t| {
            if t.file_name().to_str() == Some(&pid.to_string()) {
                return false;
            }
            std::fs::read_to_string(t.path().join("comm"))
                .map_or(true, |n| n.trim() == main || n.starts_with("keel-api-conn"))
        });
        (!busy).then_some(())
    });
}

#[test]
fn a_boot_that_cannot_start_every_vcpu_leaves_none_running() {
    let keel = Keel::start("partial-boot", &[]);
    let pid = keel.process.pid();
    let Some(group) = PidsCgroup::holding(pid) else {
        eprintln!("SKIPPED: no writable pids cgroup here to limit keel's threads");
        return assert_exits_cleanly(keel);
    };
    let (body, serial) = probe_body("partial-boot", &common::busy_until_stopped());
    let mut create: Value = serde_json::from_str(&body).unwrap();
    create["cpus"]["boot_vcpus"] = 4.into();
    assert_eq!(
        keel.call("PUT", "vm.create", Some(&create.to_string()))
            .status,
        204
    );
    // Room for two more threads: the connection's that reads vm.boot, then vCPU 0; vCPU 1
    // cannot start. Not more: a running vCPU may make the host start threads of its own in
    // keel's process, charged to its pids group, while the serve loop still starts vCPUs
    // (KVM's kvm-nx-lpage-recovery, at a VM's first KVM_RUN), so which vCPU would find the
    // group full past the first would depend on the scheduler. With the group full once vCPU 0
    // is started, such a thread cannot start before the error either. The threads that
    // answered earlier requests must be gone first, or their places would free up later.
    wait_for_threads_settled(pid, "vm.create's connection thread gone");
    let now: u32 = group.read("pids.current").parse().unwrap();
    group.set_max(&(now + 2).to_string());
    let answer = keel.put("vm.boot");
    assert_eq!(answer.status, 500, "{answer:?}");
    let message = answer.error(500);
    assert!(message.contains("keel-vcpu1"), "{message}");
    // The started vCPU was stopped and joined before the answer; its task leaves /proc as
    // the kernel reaps it (a hang guard, not a margin: unfixed, it runs forever).
    wait_until("no vCPU thread left", HANG_GUARD, || {
        vcpu_threads(pid).is_empty().then_some(())
    });
    assert_eq!(keel.state(), "Shutdown");

    // With room again, the same VM boots (rebuilt from its config) and runs.
    group.set_max("max");
    assert_eq!(keel.put("vm.boot").status, 204);
    wait_for_file(&serial, BOOT_LINE, HANG_GUARD);
    // vCPU 0 prints the boot line; the others may not have run (and named themselves) yet.
    wait_for_threads_settled(pid, "every vCPU thread named");
    assert_eq!(vcpu_threads(pid).len(), 4);
    assert_exits_cleanly(keel);
    let _ = std::fs::remove_file(serial);
}

/// Number of entries in `/proc/PID/DIR` (open descriptors, threads).
fn proc_entries(pid: u32, dir: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{dir}"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Whether some open file description holds a lock on `path` that an exclusive one would
/// conflict with (F_OFD_GETLK, which takes nothing).
fn image_locked(path: &Path) -> bool {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: an all-zero flock is valid: whole file (start 0, len 0), pid 0 as OFD locks need.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_GETLK on a descriptor `file` owns, with a valid flock it may rewrite.
    let rc = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::F_OFD_GETLK,
            &mut lock,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    lock.l_type != libc::F_UNLCK as libc::c_short
}

#[test]
fn create_boot_delete_cycles_release_threads_descriptors_and_the_image_lock() {
    const CYCLES: usize = 5;
    const BLK_LINE: &str = "{\"cmd\":\"blk\"";
    let keel = Keel::start("cycles", &[]);
    let pid = keel.process.pid();
    let image = temp_path("cycles.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(4 << 20))
        .unwrap();
    let cmdline = format!(
        "probe.cmd=boot probe.cmd=blk:disk=0,rw=randwrite,bs=4k,iodepth=8,ios=200 {}",
        common::RUNS_UNTIL_STOPPED
    );
    let (body, serial) = probe_body("cycles", &cmdline);
    let mut create: Value = serde_json::from_str(&body).unwrap();
    create["cpus"]["boot_vcpus"] = 2.into();
    create["disks"] = serde_json::json!([{"path": image}]);
    let create = create.to_string();
    // Each API connection has a thread (and its socket) until its answer is out: counted
    // once none is left, not even one that has yet to run (the one that read the connection
    // `Keel::start` made to see keel listen may not have run yet even though vmm.ping's has).
    wait_for_threads_settled(pid, "earlier connection threads gone");
    let baseline = (proc_entries(pid, "task"), proc_entries(pid, "fd"));
    for cycle in 1..=CYCLES {
        assert_eq!(keel.call("PUT", "vm.create", Some(&create)).status, 204);
        assert!(
            image_locked(&image),
            "cycle {cycle}: the created VM locks its image"
        );
        assert_eq!(keel.put("vm.boot").status, 204);
        // The guest wrote its disk (the I/O thread ran) once its blk line is out.
        wait_until("the guest's blk line", HANG_GUARD, || {
            let text = std::fs::read(&serial).unwrap_or_default();
            (common::lines_with(&text, BLK_LINE) == cycle).then_some(())
        });
        assert_eq!(keel.put("vm.shutdown").status, 204);
        assert_eq!(keel.put("vm.delete").status, 204);
        assert!(
            !image_locked(&image),
            "cycle {cycle}: delete releases the lock"
        );
        // Threads leave /proc as the kernel reaps them (a hang guard, not a margin).
        let left = wait_until("threads and descriptors back to before", HANG_GUARD, || {
            let now = (proc_entries(pid, "task"), proc_entries(pid, "fd"));
            (now == baseline).then_some(now)
        });
        assert_eq!(left, baseline, "cycle {cycle}");
    }
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(!text.contains("\"error\""), "{text}");
    assert_exits_cleanly(keel);
    let _ = std::fs::remove_file(serial);
    let _ = std::fs::remove_file(image);
}

/// Keel's stdin has one reader however many VMs with a terminal console boot in turn: each
/// boot hands the input over to the new VM's COM1 instead of starting another reader.
#[test]
fn boots_with_a_terminal_console_share_one_stdin_reader() {
    let socket = temp_path("stdin.sock");
    // keel's stdin a pipe that stays open (the child keeps its end), as a terminal would.
    let child = std::process::Command::new(common::keel_bin())
        .args(["--api-socket", socket.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn keel");
    let keel = Keel::serving(socket, child);
    let pid = keel.process.pid();
    let (body, _) = probe_body("stdin", &common::busy_until_stopped());
    let mut create: Value = serde_json::from_str(&body).unwrap();
    create["serial"] = serde_json::json!({"mode": "Tty"});
    let create = create.to_string();
    for _ in 0..3 {
        assert_eq!(keel.call("PUT", "vm.create", Some(&create)).status, 204);
        assert_eq!(keel.put("vm.boot").status, 204);
        assert_eq!(keel.put("vm.shutdown").status, 204);
        assert_eq!(keel.put("vm.delete").status, 204);
    }
    wait_for_threads_settled(pid, "every thread named");
    assert_eq!(threads_named(pid, "keel-stdin").len(), 1);
    assert_exits_cleanly(keel);
}
