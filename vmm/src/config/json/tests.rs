//! Tests of the JSON form of `VmConfig`.

use super::*;
use std::error::Error as _;

fn parse(body: &str) -> VmConfig {
    vm_config_from_json(body).unwrap_or_else(|e| panic!("{body}: {e}"))
}

fn error(body: &str) -> JsonConfigError {
    match vm_config_from_json(body) {
        Ok(c) => panic!("{body}: accepted as {c:?}"),
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains('\n'), "not one line: {text}");
            e
        }
    }
}

/// The message of a body with `section` added beside a minimal payload.
fn message_with(section: &str) -> String {
    error(&format!(r#"{{"payload": {{"kernel": "/k"}}, {section}}}"#)).to_string()
}

fn kernel_only() -> VmConfig {
    VmConfig {
        payload: PayloadConfig {
            kernel: "/k".into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

const FULL: &str = r#"{
  "cpus": {"boot_vcpus": 4, "max_vcpus": 4,
           "affinity": [{"vcpu": 0, "host_cpus": [2, 3]}, {"vcpu": 3, "host_cpus": [5]}],
           "kvm_pv": "[kvmclock,pv_eoi]", "hyperv": "relaxed,vpindex,spinlocks=8191",
           "pvm_compat": "off"},
  "memory": {"size": 2147483648, "hugepages": true, "hugepage_size": 1073741824,
             "prefault": true, "shared": true, "mergeable": false},
  "payload": {"kernel": "/boot/vmlinux", "initramfs": "/boot/initrd",
              "cmdline": "console=ttyS0 root=/dev/vda"},
  "disks": [
    {"path": "/img/root,v1.raw", "readonly": true, "num_queues": 2, "queue_size": 128,
     "id": "root", "serial": "SN-1", "cache": "writeback", "iothread": "io0:cpus:6,7",
     "numa_node": 1},
    {"path": "/dev/nvme0n1"}
  ],
  "serial": {"mode": "File", "file": "/tmp/com1.log"},
  "numa": [
    {"guest_numa_id": 0, "cpus": [0, 1], "memory": 1073741824, "host_numa_node": 0},
    {"guest_numa_id": 1, "cpus": [2, 3], "memory": 1073741824}
  ]
}"#;

#[test]
fn full_body_sets_every_field() {
    let c = parse(FULL);
    let cpus = CpusConfig::parse(
        "boot=4,affinity=[0@[2,3],3@[5]],kvm_pv=[kvmclock,pv_eoi],\
         hyperv=[relaxed,vpindex,spinlocks=8191],pvm_compat=off",
    )
    .unwrap();
    assert_eq!(c.cpus, cpus);
    assert_eq!(
        c.memory,
        MemoryConfig::parse("size=2G,hugepages=on,hugepage_size=1G,prefault=on,shared=on").unwrap()
    );
    assert_eq!(c.payload.kernel, PathBuf::from("/boot/vmlinux"));
    assert_eq!(c.payload.initramfs, Some(PathBuf::from("/boot/initrd")));
    assert_eq!(c.payload.cmdline, "console=ttyS0 root=/dev/vda");
    let mut root = DiskConfig::parse(
        "path=_,readonly=on,queues=2,queue_size=128,id=root,serial=SN-1,cache=writeback,\
         iothread=io0:cpus:[6,7],numa_node=1",
    )
    .unwrap();
    root.path = "/img/root,v1.raw".into();
    assert_eq!(
        c.disks,
        [root, DiskConfig::parse("path=/dev/nvme0n1").unwrap()]
    );
    assert_eq!(c.serial, SerialConfig::File("/tmp/com1.log".into()));
    assert_eq!(
        c.numa,
        [
            NumaNodeConfig::parse("guest_node=0,cpus=0-1,memory=1G,host_node=0").unwrap(),
            NumaNodeConfig::parse("guest_node=1,cpus=2-3,memory=1G").unwrap(),
        ]
    );
}

#[test]
fn minimal_body_takes_the_cli_defaults() {
    assert_eq!(parse(r#"{"payload": {"kernel": "/k"}}"#), kernel_only());
    let nulls = r#"{"payload": {"kernel": "/k", "initramfs": null}, "cpus": null,
                    "memory": {}, "disks": [], "numa": null, "serial": {}}"#;
    assert_eq!(parse(nulls), kernel_only());
    for (body, field) in [
        ("{}", "payload.kernel"),
        (r#"{"payload": {}}"#, "payload.kernel"),
        (r#"{"payload": {"kernel": ""}}"#, "payload.kernel"),
    ] {
        assert_eq!(
            error(body).to_string(),
            format!("{field}: missing; it is required")
        );
    }
    assert_eq!(
        message_with(r#""disks": [{"path": "/a"}, {"readonly": true}]"#),
        "disks[1].path: missing; it is required"
    );
    assert_eq!(
        message_with(r#""numa": [{"guest_numa_id": 0, "cpus": [0]}]"#),
        "numa[0].memory: missing; it is required"
    );
    assert_eq!(
        message_with(r#""numa": [{"cpus": [0], "memory": 536870912}]"#),
        "numa[0].guest_numa_id: missing; it is required"
    );
    assert_eq!(
        message_with(r#""cpus": {"affinity": [{"host_cpus": [1]}]}"#),
        "cpus.affinity[0].vcpu: missing; it is required"
    );
}

#[test]
fn unknown_fields_and_wrong_types_are_refused_by_name() {
    for (section, name) in [
        (r#""nett": [{}]"#, "`nett`"),
        (
            r#""memory": {"size": 1073741824, "hotplug_sise": 0}"#,
            "`hotplug_sise`",
        ),
        (r#""cpus": {"topology": {"threads": 1}}"#, "`threads`"),
        (
            r#""cpus": {"affinity": [{"vcpu": 0, "cpus": [1]}]}"#,
            "`cpus`",
        ),
        (r#""disks": [{"path": "/a", "directt": true}]"#, "`directt`"),
        (r#""serial": {"mode": "Tty", "sockett": "/s"}"#, "`sockett`"),
        (r#""console": {"mode": "Off", "fil": null}"#, "`fil`"),
        (r#""rng": {"source": "/dev/urandom"}"#, "`source`"),
        (r#""platform": {"uuidd": null}"#, "`uuidd`"),
        (
            r#""numa": [{"guest_numa_id": 0, "memory_zone": ["z"]}]"#,
            "`memory_zone`",
        ),
        (r#""cpus": {"boot_vcpus": "2"}"#, "expected u32"),
        (r#""cpus": {"boot_vcpus": -1}"#, "expected u32"),
        (r#""memory": {"hugepages": "on"}"#, "expected a boolean"),
        (r#""memory": {"size": 1.5}"#, "expected u64"),
        (r#""disks": {"path": "/a"}"#, "expected a sequence"),
        (r#""serial": "tty""#, "expected struct ConsoleWire"),
    ] {
        let err = message_with(section);
        assert!(err.starts_with("VM config JSON: "), "{section}: {err}");
        assert!(err.contains(name), "{section}: {err}");
        assert!(err.contains(" line "), "{section}: {err}");
    }
    assert!(matches!(error("{"), JsonConfigError::Json(_)));
    assert!(matches!(error("[]"), JsonConfigError::Json(_)));
    let err = error("{\"payload\": {\"kernel\": \"/k\", \"a\\nb\": 1}}").to_string();
    assert!(err.contains("a\\nb"), "{err}");
}

/// Each section, added beside a minimal payload, is refused with a message that starts with
/// the expected one.
fn check_messages(cases: &[(&str, &str)]) {
    for &(section, message) in cases {
        let err = message_with(section);
        assert!(err.starts_with(message), "{section}:\n  {err}\n  {message}");
    }
}

#[test]
fn invalid_cpus_memory_and_numa_values_name_the_field() {
    check_messages(&[
        (
            r#""cpus": {"boot_vcpus": 0}"#,
            "cpus.boot_vcpus: a VM needs at least one vCPU",
        ),
        (
            r#""cpus": {"boot_vcpus": 1000}"#,
            "cpus.boot_vcpus: 1000 vCPUs, but at most 254 are allowed (Keel's limit: 8-bit APIC IDs)",
        ),
        (
            r#""cpus": {"boot_vcpus": 2, "max_vcpus": 4}"#,
            "cpus.max_vcpus: 4 differs from boot_vcpus 2: Keel has no vCPU hotplug, so \
             max_vcpus must equal boot_vcpus or be left out",
        ),
        (
            r#""memory": {"size": 1073741824, "hugepages": true, "hugepage_size": 4194304}"#,
            "memory.hugepage_size: expected 2M or 1G (got 4 MiB)",
        ),
        (
            r#""memory": {"size": 1073741824, "hugepage_size": 2097152}"#,
            "memory: hugepage_size= needs hugepages=on",
        ),
        (
            r#""memory": {"size": 1048576}"#,
            "memory.size: 1048576 bytes: too small; a guest needs at least",
        ),
        (
            r#""numa": [{"guest_numa_id": 0, "cpus": [0], "memory": 268435456}]"#,
            "numa: the guest nodes' memory adds up to 256 MiB but --memory size is 512 MiB",
        ),
        (
            r#""numa": [{"guest_numa_id": 1, "cpus": [0], "memory": 536870912}]"#,
            "numa: guest_node ids must be 0 to 0",
        ),
        (
            r#""numa": [{"guest_numa_id": 0, "cpus": [0], "memory": 0}]"#,
            "numa[0].memory: expected a size",
        ),
        (
            r#""cpus": {"kvm_pv": "kvmclock,warp"}"#,
            "cpus.kvm_pv: unknown feature `warp`; known: ",
        ),
        (r#""cpus": {"kvm_pv": ""}"#, "cpus.kvm_pv: empty feature list"),
        (
            r#""cpus": {"kvm_pv": "[kvmclock,hidden]"}"#,
            "cpus.kvm_pv: `hidden` cannot be combined with other names",
        ),
        (
            r#""cpus": {"hyperv": "[relaxed,warp]"}"#,
            "cpus.hyperv: unknown item `warp`",
        ),
        (
            r#""cpus": {"pvm_compat": "maybe"}"#,
            "cpus.pvm_compat: expected on, off or auto (got maybe)",
        ),
        (
            r#""cpus": {"affinity": [{"vcpu": 0, "host_cpus": []}]}"#,
            "cpus.affinity[0]: a vCPU needs at least one host CPU",
        ),
        (
            r#""cpus": {"affinity": [{"vcpu": 0, "host_cpus": [1]}, {"vcpu": 0, "host_cpus": [2]}]}"#,
            "cpus.affinity[1]: vCPU listed twice (got 0@[2])",
        ),
        (
            r#""cpus": {"boot_vcpus": 2, "affinity": [{"vcpu": 2, "host_cpus": [1]}]}"#,
            "cpus: affinity names vCPU 2, but only vCPUs 0-1 boot",
        ),
    ]);
}

#[test]
fn invalid_disk_values_name_the_field() {
    check_messages(&[
        (
            r#""disks": [{"path": "/a"}, {"path": "/b", "queue_size": 100}]"#,
            "disks[1].queue_size: expected a power of two from 4 to 1024 (got 100)",
        ),
        (
            r#""disks": [{"path": "/a", "num_queues": 70000}]"#,
            "disks[0].num_queues: expected 1 to 16 (got 70000)",
        ),
        (
            r#""disks": [{"path": "/a", "cache": "unsafe"}]"#,
            "disks[0].cache: expected none or writeback",
        ),
        (
            r#""disks": [{"path": ""}]"#,
            "disks[0].path: expected a file or block device",
        ),
        (
            r#""disks": [{"path": "/a", "id": "a/b"}]"#,
            "disks[0].id: expected 1-15 characters",
        ),
        (
            r#""disks": [{"path": "/a", "serial": "x y"}]"#,
            "disks[0].serial: expected at most 20 printable ASCII characters (got x y)",
        ),
        (
            r#""disks": [{"path": "/a", "iothread": "io0:cpus:x"}]"#,
            "disks[0].iothread: expected cpus:LIST",
        ),
    ]);
}

#[test]
fn invalid_values_keep_the_cli_error_as_source() {
    let err = error(
        r#"{"payload": {"kernel": "/k"}, "memory": {"hugepages": true, "hugepage_size": 3}}"#,
    );
    let source = err.source().and_then(|s| s.downcast_ref::<ConfigError>());
    assert!(
        matches!(
            source,
            Some(ConfigError::InvalidValue {
                option: "memory",
                key: "hugepage_size",
                ..
            })
        ),
        "{source:?}"
    );
    let err = error(r#"{"payload": {"kernel": "/k"}, "cpus": {"kvm_pv": "warp"}}"#);
    let source = err.source().map(ToString::to_string).unwrap_or_default();
    assert!(
        source.starts_with("--cpus: kvm_pv: unknown feature"),
        "{source}"
    );
}

#[test]
fn serial_modes() {
    let serial = |section: &str| {
        parse(&format!(
            r#"{{"payload": {{"kernel": "/k"}}, "serial": {section}}}"#
        ))
        .serial
    };
    assert_eq!(serial(r#"{"mode": "Tty"}"#), SerialConfig::Tty);
    assert_eq!(serial(r#"{"mode": "tty"}"#), SerialConfig::Tty);
    assert_eq!(serial(r#"{"mode": "OFF"}"#), SerialConfig::Off);
    assert_eq!(serial(r#"{"mode": "Null"}"#), SerialConfig::Off);
    assert_eq!(
        serial(r#"{"mode": "File", "file": "/tmp/a=b,c"}"#),
        SerialConfig::File("/tmp/a=b,c".into())
    );
    assert_eq!(
        serial(r#"{"file": "/tmp/x"}"#),
        SerialConfig::File("/tmp/x".into())
    );
    for (section, message) in [
        (r#"{"mode": "File"}"#, "serial.file: expected a path"),
        (
            r#"{"mode": "file", "file": ""}"#,
            "serial.file: expected a path",
        ),
        (
            r#"{"mode": "Pty"}"#,
            "serial.mode: \"Pty\" is not a mode Keel has; expected Tty, Off, Null or File",
        ),
        (
            r#"{"mode": "Socket"}"#,
            "serial.mode: \"Socket\" is not a mode",
        ),
        (
            r#"{"mode": "Tty", "file": "/x"}"#,
            "serial.file: only used with mode File, not Tty",
        ),
    ] {
        let err = message_with(&format!(r#""serial": {section}"#));
        assert!(err.starts_with(message), "{section}: {err}");
    }
}

/// Configs as the CLI builds them.
fn cli_configs() -> Vec<VmConfig> {
    let cfg = |cpus: &str, memory: &str, disks: &[&str], numa: &[&str], serial: &str| VmConfig {
        cpus: CpusConfig::parse(cpus).unwrap(),
        memory: MemoryConfig::parse(memory).unwrap(),
        payload: PayloadConfig {
            kernel: "/boot/vmlinux".into(),
            initramfs: None,
            cmdline: String::new(),
            firmware: None,
        },
        serial: SerialConfig::parse(serial).unwrap(),
        disks: disks
            .iter()
            .map(|d| DiskConfig::parse(d).unwrap())
            .collect(),
        numa: numa
            .iter()
            .map(|n| NumaNodeConfig::parse(n).unwrap())
            .collect(),
    };
    let mut with_payload = cfg("boot=1", "size=512M", &[], &[], "off");
    with_payload.payload.initramfs = Some("/boot/initrd".into());
    with_payload.payload.cmdline = "console=ttyS0 quiet \"x\"".into();
    vec![
        cfg("boot=1", "size=512M", &[], &[], "tty"),
        with_payload,
        cfg(
            "boot=2,affinity=[0@[1]]",
            "size=1G,thp=off,mergeable=on",
            &["path=/a.img"],
            &[],
            "file=/tmp/com1",
        ),
        cfg(
            "boot=4,affinity=[0@[2,3],2@[4-6]],kvm_pv=[kvmclock,pv_eoi,steal_time],\
             hyperv=[relaxed,vapic,spinlocks=0x1fff,vpindex,synic,time,stimer,vendor-id=KeelHv],\
             pvm_compat=on",
            "size=2G,hugepages=on,hugepage_size=1G,prefault=on,shared=on",
            &[
                "path=/a.img,readonly=on,cache=writeback,queues=4,queue_size=128,\
                 iothread=io0:cpus:[2,4],numa_node=1,serial=SN-1,id=root",
                "path=/b.img,iothread=cpus:1-3",
                "path=/c.img,iothread=shared",
                "path=/d.img,num_queues=2,engine=sync,iothread_sched=batch",
            ],
            &[
                "guest_node=0,cpus=0-1,memory=1G,host_node=0",
                "guest_node=1,cpus=[2,3],memory=1G",
            ],
            "tty",
        ),
        cfg(
            "boot=1,kvm_pv=off,hyperv=on",
            "size=1G,hugepages=on",
            &[],
            &[],
            "tty",
        ),
        cfg(
            "boot=2,kvm_pv=hidden,hyperv=[relaxed,vpindex,time]",
            "size=1G",
            &[],
            &[],
            "tty",
        ),
        cfg(
            "boot=2,hyperv=[vendor-id=Other]",
            "size=1G,thp=on",
            &[],
            &["guest_node=0,cpus=0-1,memory=1G"],
            "tty",
        ),
    ]
}

#[test]
fn cli_configs_round_trip() {
    for config in cli_configs() {
        let text = vm_config_to_json(&config);
        assert!(!text.contains('\n'), "{text}");
        assert_eq!(parse(&text), config, "{text}");
    }
}

#[test]
fn json_output_has_the_documented_shape() {
    let configs = cli_configs();
    let value: serde_json::Value = serde_json::from_str(&vm_config_to_json(&configs[3])).unwrap();
    let expected = serde_json::json!({
        "cpus": {
            "boot_vcpus": 4, "max_vcpus": 4,
            "affinity": [{"vcpu": 0, "host_cpus": [2, 3]}, {"vcpu": 2, "host_cpus": [4, 5, 6]}],
            "kvm_pv": "kvmclock,pv_eoi,steal_time",
            "hyperv": "relaxed,vapic,spinlocks=8191,vpindex,time,synic,stimer,vendor-id=KeelHv",
            "pvm_compat": "on"
        },
        "memory": {
            "size": 2u64 << 30, "hugepages": true, "hugepage_size": 1u64 << 30,
            "prefault": true, "shared": true, "mergeable": false
        },
        "payload": {"kernel": "/boot/vmlinux", "cmdline": ""},
        "disks": [
            {"path": "/a.img", "readonly": true, "num_queues": 4, "queue_size": 128,
             "id": "root", "serial": "SN-1", "cache": "writeback",
             "iothread": "io0:cpus:[2,4]", "numa_node": 1, "lock": true, "poll_us": 32,
             "engine": "auto", "iothread_sched": "auto"},
            // No num_queues: none was given (one per vCPU).
            {"path": "/b.img", "readonly": false, "queue_size": 256,
             "cache": "none", "iothread": "cpus:[1-3]", "lock": true, "poll_us": 32,
             "engine": "auto", "iothread_sched": "auto"},
            {"path": "/c.img", "readonly": false, "queue_size": 256,
             "cache": "none", "iothread": "shared", "lock": true, "poll_us": 32,
             "engine": "auto", "iothread_sched": "auto"},
            {"path": "/d.img", "readonly": false, "num_queues": 2, "queue_size": 256,
             "cache": "none", "lock": true, "poll_us": 32, "engine": "sync",
             "iothread_sched": "batch"}
        ],
        "serial": {"mode": "Tty"},
        "numa": [
            {"guest_numa_id": 0, "cpus": [0, 1], "memory": 1u64 << 30, "host_numa_node": 0},
            {"guest_numa_id": 1, "cpus": [2, 3], "memory": 1u64 << 30}
        ]
    });
    assert_eq!(value, expected);
    let minimal: serde_json::Value =
        serde_json::from_str(&vm_config_to_json(&kernel_only())).unwrap();
    assert_eq!(
        minimal,
        serde_json::json!({
            "cpus": {"boot_vcpus": 1, "max_vcpus": 1, "kvm_pv": "on", "hyperv": "off",
                     "pvm_compat": "auto"},
            "memory": {"size": 512u64 << 20, "hugepages": false, "prefault": false,
                       "shared": false, "mergeable": false},
            "payload": {"kernel": "/k", "cmdline": ""},
            "serial": {"mode": "Tty"}
        })
    );
}

#[test]
fn values_the_option_syntax_cannot_carry_are_taken_whole() {
    // A comma or bracket in a serial would split or swallow a `--disk` group; JSON carries
    // it as a value, and only the serial's own rule (printable ASCII, 20 bytes) applies.
    let c = parse(
        r#"{"payload": {"kernel": "/k"},
            "disks": [{"path": "/a,b=[c", "serial": "x,id=evil", "id": "d"},
                      {"path": "/e", "serial": "[x"}]}"#,
    );
    assert_eq!(c.disks[0].path, PathBuf::from("/a,b=[c"));
    assert_eq!(c.disks[0].serial.as_deref(), Some("x,id=evil"));
    assert_eq!(c.disks[0].id.as_deref(), Some("d"));
    assert_eq!(c.disks[1].serial.as_deref(), Some("[x"));
    assert_eq!(c.disks[1].id, None);
    let back = parse(&vm_config_to_json(&c));
    assert_eq!(back, c);
}

mod cloud_hypervisor;
