//! Cloud Hypervisor's `VmConfig` fields: what asks for nothing is accepted, what Keel has in
//! another form is mapped, what Keel lacks is refused with the field's path.

use super::*;
use arch::hyperv::HypervConfig;

/// A `VmConfig` as Cloud Hypervisor writes it (its `vm.info`, or a client that serialises
/// Cloud Hypervisor's own struct): every field, each at Cloud Hypervisor's default.
const CH_DEFAULTS: &str = r#"{
  "cpus": {"boot_vcpus": 2, "max_vcpus": 2, "topology": null, "kvm_hyperv": false,
           "max_phys_bits": 46, "affinity": null, "features": {"amx": false}},
  "memory": {"size": 536870912, "mergeable": false, "hotplug_method": "Acpi",
             "hotplug_size": null, "hotplugged_size": null, "shared": false,
             "hugepages": false, "hugepage_size": null, "prefault": false, "zones": null,
             "thp": true},
  "payload": {"firmware": null, "kernel": "/k", "cmdline": "console=ttyS0",
              "initramfs": null, "igvm": null, "host_data": null, "fw_cfg_config": null},
  "rate_limit_groups": null,
  "disks": [{"path": "/disk.img", "readonly": false, "direct": false, "iommu": false,
             "num_queues": 1, "queue_size": 128, "vhost_user": false, "vhost_socket": null,
             "rate_limit_group": null, "rate_limiter_config": null, "id": null,
             "disable_io_uring": false, "disable_aio": false, "pci_segment": 0,
             "serial": null, "queue_affinity": null}],
  "net": null,
  "rng": {"src": "/dev/urandom", "iommu": false},
  "balloon": null, "fs": null, "pmem": null,
  "serial": {"file": null, "mode": "Null", "iommu": false, "socket": null},
  "console": {"file": null, "mode": "Off", "iommu": false, "socket": null},
  "debug_console": {"file": null, "mode": "Off", "iobase": 233},
  "devices": null, "user_devices": null, "vdpa": null, "vsock": null, "pvmemcontrol": null,
  "pvpanic": false, "iommu": false, "sgx_epc": null,
  "numa": [{"guest_numa_id": 0, "cpus": [0, 1], "distances": null, "memory_zones": null,
            "pci_segments": null, "sgx_epc_sections": null, "memory": 536870912}],
  "watchdog": false, "gdb": false, "pci_segments": null,
  "platform": {"num_pci_segments": 1, "iommu_segments": null,
               "iommu_address_width_bits": 64, "serial_number": null, "uuid": null,
               "oem_strings": null, "tdx": false, "sev_snp": false},
  "tpm": null, "landlock_enable": false, "landlock_rules": null, "ivshmem": null
}"#;

#[test]
fn cloud_hypervisors_defaults_are_accepted_as_nothing() {
    let c = parse(CH_DEFAULTS);
    let mut want = kernel_only();
    want.payload.cmdline = "console=ttyS0".into();
    want.cpus.boot_vcpus = 2;
    want.memory.thp = Toggle::On;
    want.serial = SerialConfig::Off;
    want.disks = vec![DiskConfig {
        path: "/disk.img".into(),
        queue_size: 128,
        // Cloud Hypervisor's one queue, given: kept (Keel's default is one per vCPU).
        queues: Some(1),
        // direct false: through the page cache.
        cache: CacheMode::Writeback,
        ..DiskConfig::default()
    }];
    want.numa = vec![NumaNodeConfig::parse("guest_node=0,cpus=[0-1],memory=512M").unwrap()];
    assert_eq!(c, want);
}

#[test]
fn empty_lists_nulls_and_off_switches_ask_for_nothing() {
    for section in [
        r#""net": []"#,
        r#""devices": []"#,
        r#""console": {"mode": "Null"}"#,
        r#""console": {"mode": "off"}"#,
        r#""console": {}"#,
        r#""debug_console": {"mode": "Off", "iobase": 1024}"#,
        r#""rng": {"src": "/dev/urandom"}"#,
        r#""platform": {}"#,
        r#""memory": {"hotplug_method": "VirtioMem", "hotplug_size": 0}"#,
        r#""cpus": {"features": {}}"#,
        r#""disks": [{"path": "/a", "queue_affinity": [], "pci_segment": 0}]"#,
    ] {
        let body = format!(r#"{{"payload": {{"kernel": "/k"}}, {section}}}"#);
        vm_config_from_json(&body).unwrap_or_else(|e| panic!("{section}: {e}"));
    }
}

/// The one disk of a config whose disk entry is `"path": "/a"` followed by `fields`.
fn one_disk(fields: &str) -> DiskConfig {
    let body = format!(r#"{{"payload": {{"kernel": "/k"}}, "disks": [{{"path": "/a"{fields}}}]}}"#);
    parse(&body).disks.remove(0)
}

#[test]
fn direct_and_kvm_hyperv_map_onto_keels_settings() {
    let disk = |fields: &str| one_disk(fields).cache;
    assert_eq!(disk(r#", "direct": true"#), CacheMode::None);
    assert_eq!(disk(r#", "direct": false"#), CacheMode::Writeback);
    assert_eq!(
        disk(r#", "direct": false, "cache": "writeback""#),
        CacheMode::Writeback
    );
    assert_eq!(disk(""), CacheMode::None);
    let hyperv = |fields: &str| {
        parse(&format!(
            r#"{{"payload": {{"kernel": "/k"}}, "cpus": {{{fields}}}}}"#
        ))
        .cpus
        .hyperv
    };
    assert_eq!(hyperv(r#""kvm_hyperv": true"#), HypervConfig::on());
    assert_eq!(hyperv(r#""kvm_hyperv": false"#), HypervConfig::off());
    assert_eq!(
        hyperv(r#""kvm_hyperv": true, "hyperv": "relaxed""#),
        parse_hyperv("relaxed").unwrap()
    );
    assert_eq!(
        hyperv(r#""kvm_hyperv": false, "hyperv": "off""#),
        HypervConfig::off()
    );
    // Keel's own topology, spelled out, is accepted.
    let c = parse(
        r#"{"payload": {"kernel": "/k"}, "cpus": {"boot_vcpus": 3, "topology":
            {"threads_per_core": 1, "cores_per_die": 3, "dies_per_package": 1, "packages": 1}}}"#,
    );
    assert_eq!(c.cpus.boot_vcpus, 3);
}

#[test]
fn disable_io_uring_asks_for_the_synchronous_engine() {
    use devices::virtio::block::EngineChoice;
    let engine = |fields: &str| one_disk(fields).engine;
    assert_eq!(engine(""), EngineChoice::Auto);
    assert_eq!(engine(r#", "disable_io_uring": true"#), EngineChoice::Sync);
    assert_eq!(
        engine(r#", "disable_io_uring": true, "disable_aio": true, "engine": "sync""#),
        EngineChoice::Sync
    );
    assert_eq!(engine(r#", "disable_io_uring": false"#), EngineChoice::Auto);
    assert_eq!(engine(r#", "disable_aio": true"#), EngineChoice::Auto);
    assert_eq!(engine(r#", "engine": "io_uring""#), EngineChoice::IoUring);
}

#[test]
fn what_keel_lacks_is_refused_naming_the_field() {
    check_messages(&[
        (
            r#""net": [{"tap": "tap0"}]"#,
            "net: net devices (virtio-net) are not supported by keel",
        ),
        (
            r#""balloon": {"size": 0}"#,
            "balloon: a balloon device is not supported",
        ),
        (
            r#""fs": [{"tag": "t", "socket": "/s"}]"#,
            "fs: virtio-fs devices",
        ),
        (r#""pmem": [{"file": "/p"}]"#, "pmem: pmem devices"),
        (
            r#""devices": [{"path": "/sys/x"}]"#,
            "devices: VFIO device passthrough",
        ),
        (
            r#""user_devices": [{"socket": "/s"}]"#,
            "user_devices: vfio-user",
        ),
        (r#""vdpa": [{"path": "/dev/vhost-vdpa-0"}]"#, "vdpa: vDPA"),
        (
            r#""vsock": {"cid": 3, "socket": "/s"}"#,
            "vsock: a vsock device",
        ),
        (
            r#""pvmemcontrol": {}"#,
            "pvmemcontrol: a pvmemcontrol device",
        ),
        (
            r#""rate_limit_groups": [{"id": "g"}]"#,
            "rate_limit_groups: rate limiting",
        ),
        (r#""tpm": {"socket": "/s"}"#, "tpm: a TPM"),
        (
            r#""pci_segments": [{"pci_segment": 1}]"#,
            "pci_segments: keel has one PCI segment",
        ),
        (r#""landlock_enable": true"#, "landlock_enable: Landlock"),
        (r#""pvpanic": true"#, "pvpanic: a pvpanic device"),
        (r#""iommu": true"#, "iommu: a virtual IOMMU"),
        (r#""watchdog": true"#, "watchdog: a watchdog device"),
        (
            r#""console": {"mode": "Tty"}"#,
            "console.mode: \"Tty\": keel has no virtio-console device; only Off or Null",
        ),
        (
            r#""console": {"mode": "Off", "file": "/c"}"#,
            "console.file: keel has no virtio-console",
        ),
        (
            r#""console": {"mode": "Off", "iobase": 1}"#,
            "console.iobase: only debug_console",
        ),
        (
            r#""debug_console": {"mode": "File", "file": "/d"}"#,
            "debug_console.mode: \"File\"",
        ),
        (
            r#""rng": {"src": "/dev/random"}"#,
            "rng.src: \"/dev/random\": keel has no virtio-rng",
        ),
        (
            r#""rng": {"src": "/dev/urandom", "iommu": true}"#,
            "rng.iommu: a virtual IOMMU",
        ),
        (
            r#""platform": {"num_pci_segments": 2}"#,
            "platform.num_pci_segments: keel has one",
        ),
        (
            r#""platform": {"uuid": "1-2"}"#,
            "platform.uuid: keel writes no SMBIOS tables",
        ),
        (
            r#""platform": {"oem_strings": ["x"]}"#,
            "platform.oem_strings: keel writes no SMBIOS",
        ),
        (r#""platform": {"tdx": true}"#, "platform.tdx: TDX guests"),
        (
            r#""cpus": {"max_phys_bits": 40}"#,
            "cpus.max_phys_bits: 40: keel gives the guest",
        ),
        (
            r#""cpus": {"features": {"amx": true}}"#,
            "cpus.features.amx: keel does not request",
        ),
        (
            r#""cpus": {"boot_vcpus": 2, "topology": {"threads_per_core": 2,
               "cores_per_die": 1, "dies_per_package": 1, "packages": 1}}"#,
            "cpus.topology: keel's topology is fixed: threads_per_core 1, cores_per_die 2",
        ),
        (
            r#""cpus": {"kvm_hyperv": true, "hyperv": "off"}"#,
            "cpus.kvm_hyperv: true contradicts cpus.hyperv, which turns Hyper-V \
             enlightenments off",
        ),
        (
            r#""memory": {"hotplug_size": 1073741824}"#,
            "memory.hotplug_size: memory hotplug",
        ),
        (
            r#""memory": {"hotplugged_size": 1}"#,
            "memory.hotplugged_size: memory hotplug",
        ),
        (
            r#""memory": {"hotplug_method": "Dimm"}"#,
            "memory.hotplug_method: \"Dimm\"",
        ),
        (
            r#""memory": {"zones": [{"id": "z", "size": 1}]}"#,
            "memory.zones: keel has no memory zones",
        ),
        (
            r#""serial": {"mode": "Socket", "socket": "/s"}"#,
            "serial.socket: only used with mode Socket",
        ),
        (
            r#""serial": {"mode": "Pty"}"#,
            "serial.mode: \"Pty\" is not a mode Keel has",
        ),
        (
            r#""serial": {"mode": "Tty", "iommu": true}"#,
            "serial.iommu: a virtual IOMMU",
        ),
        (
            r#""numa": [{"guest_numa_id": 0, "memory": 536870912, "memory_zones": ["z"]}]"#,
            "numa[0].memory_zones: keel has no memory zones",
        ),
        (
            r#""numa": [{"guest_numa_id": 0, "memory": 536870912, "distances": [{"destination": 1, "distance": 20}]}]"#,
            "numa[0].distances: keel takes",
        ),
    ]);
}

#[test]
fn a_firmware_payload_comes_alone_and_round_trips() {
    let c = parse(r#"{"payload": {"firmware": "/fw/CLOUDHV.fd", "cmdline": ""}}"#);
    assert_eq!(c.payload.firmware, Some("/fw/CLOUDHV.fd".into()));
    assert!(c.payload.kernel.as_os_str().is_empty());
    assert_eq!(parse(&vm_config_to_json(&c)), c);
    for (payload, field) in [
        (r#"{"firmware": "/fw", "kernel": "/k"}"#, "payload.kernel"),
        (
            r#"{"firmware": "/fw", "initramfs": "/i"}"#,
            "payload.initramfs",
        ),
        (
            r#"{"firmware": "/fw", "cmdline": "quiet"}"#,
            "payload.cmdline",
        ),
    ] {
        let err = error(&format!(r#"{{"payload": {payload}}}"#)).to_string();
        assert!(
            err.starts_with(&format!("{field}: keel boots either")),
            "{payload}: {err}"
        );
    }
}

#[test]
fn confidential_payloads_are_refused() {
    for (payload, message) in [
        (r#"{"kernel": "/k", "igvm": "/i"}"#, "payload.igvm: IGVM"),
        (
            r#"{"kernel": "/k", "host_data": "00"}"#,
            "payload.host_data: SEV-SNP",
        ),
        (
            r#"{"kernel": "/k", "fw_cfg_config": {}}"#,
            "payload.fw_cfg_config: keel has no fw_cfg",
        ),
    ] {
        let err = error(&format!(r#"{{"payload": {payload}}}"#)).to_string();
        assert!(err.starts_with(message), "{payload}:\n  {err}\n  {message}");
    }
}

#[test]
fn cloud_hypervisor_disk_fields_keel_lacks_are_refused() {
    for (fields, message) in [
        (r#""iommu": true"#, "disks[0].iommu: a virtual IOMMU"),
        (
            r#""vhost_user": true"#,
            "disks[0].vhost_user: vhost-user disks",
        ),
        (
            r#""vhost_socket": "/s""#,
            "disks[0].vhost_socket: vhost-user disks",
        ),
        (
            r#""rate_limit_group": "g""#,
            "disks[0].rate_limit_group: rate limiting",
        ),
        (
            r#""rate_limiter_config": {}"#,
            "disks[0].rate_limiter_config: rate limiting",
        ),
        (
            r#""disable_io_uring": true, "engine": "io_uring""#,
            "disks[0].disable_io_uring: true contradicts",
        ),
        (
            r#""pci_segment": 1"#,
            "disks[0].pci_segment: keel has one PCI segment",
        ),
        (
            r#""queue_affinity": [{"queue_index": 0, "host_cpus": [1]}]"#,
            "disks[0].queue_affinity: keel pins I/O threads",
        ),
        (
            r#""direct": true, "cache": "writeback""#,
            "disks[0].direct: true contradicts cache writeback",
        ),
    ] {
        let err = message_with(&format!(r#""disks": [{{"path": "/a", {fields}}}]"#));
        assert!(err.starts_with(message), "{fields}:\n  {err}\n  {message}");
    }
}
