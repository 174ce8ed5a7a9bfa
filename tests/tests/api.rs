//! `keel --api-socket` over a real Unix socket with real probe guests: the lifecycle
//! (create -> boot -> pause -> counters -> resume -> shutdown) with `vm.info` along the way,
//! bad requests answered with 4xx and a JSON error while the VM keeps running, the socket's
//! mode and removal, exit status, and the server against its OpenAPI document. What boot
//! cycles leave behind (threads, descriptors, locks) is `api_threads.rs`'s.
//!
//! Requests are raw HTTP/1.1 written to a `UnixStream`, and answers are read as Cloud
//! Hypervisor's client `ch-remote` reads them (its status line parsing, errors as a JSON array
//! of strings), so every test here also checks that Cloud Hypervisor's clients can talk to
//! Keel; one boots a `VmConfig` written the way Cloud Hypervisor writes it. Every answer to an
//! operation the OpenAPI document describes is checked against the statuses it lists for that
//! operation.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use common::api::*;
use common::{wait_for_file, wait_until, BOOT_LINE, HANG_GUARD};

use serde_json::Value;

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

/// `payload.firmware`, as Cloud Hypervisor's clients send it: the probe's PVH image booted as
/// a firmware runs with an empty command line and powers off; `vm.info` gives the firmware
/// back.
#[test]
fn a_firmware_payload_boots_through_the_api() {
    let keel = Keel::start("firmware", &[]);
    let serial = temp_path("firmware.com1");
    let mut body: Value = serde_json::from_str(CLOUD_HYPERVISOR_CONFIG).unwrap();
    let firmware = common::probe_image("probe-pvh.elf");
    body["payload"]["firmware"] = firmware.to_str().unwrap().into();
    body["serial"] = serde_json::json!({"mode": "File", "file": serial});
    let mut with_kernel = body.clone();
    with_kernel["payload"]["kernel"] = firmware.to_str().unwrap().into();
    let message = keel
        .call("PUT", "vm.create", Some(&with_kernel.to_string()))
        .error(400);
    assert!(message.contains("payload.kernel"), "{message}");

    assert_eq!(
        keel.call("PUT", "vm.create", Some(&body.to_string()))
            .status,
        204
    );
    let info = keel.call("GET", "vm.info", None).json();
    assert_eq!(
        info["config"]["payload"]["firmware"],
        firmware.to_str().unwrap()
    );
    assert!(info["config"]["payload"]["kernel"].is_null(), "{info}");
    assert_eq!(keel.put("vm.boot").status, 204);
    wait_until("the guest powers off", HANG_GUARD, || {
        (keel.state() == "Shutdown").then_some(())
    });
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(text.contains(r#""source":"pvh""#), "{text}");
    assert!(text.contains(r#"{"cmd":"cmdline","cmdline":""}"#), "{text}");
    assert!(text.contains(r#"{"done":true}"#), "{text}");
    assert_exits_cleanly(keel);
    let _ = std::fs::remove_file(serial);
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
