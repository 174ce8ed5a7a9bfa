//! Cloud Hypervisor's `VmConfig` fields for what Keel does not have, or has in another form.
//!
//! A body written for Cloud Hypervisor (or `vm.info`'s config from Cloud Hypervisor, which
//! spells out every default) names devices and settings Keel lacks. Each is accepted when its
//! value asks for nothing: left out, `null`, an empty list, `false`, or the value Cloud
//! Hypervisor itself fills in when a client leaves the field out and that changes nothing
//! Keel builds. Anything else is refused with the field's path and what Keel lacks, so a VM is
//! never built without something its client asked for.
//!
//! Mapped onto Keel's settings rather than only checked: `cpus.kvm_hyperv` (Keel's `hyperv`,
//! `on` when true) and `disks[].direct` (Keel's `cache`: `none` when true, `writeback` when
//! false). Accepted as "nothing" though Cloud Hypervisor would build something:
//! `rng` with Cloud Hypervisor's default source `/dev/urandom` (Keel has no virtio-rng device;
//! the guest takes its entropy from the CPU's RDRAND/RDSEED), `cpus.max_phys_bits` 46 (the
//! default; Keel gives the guest the host's address width), a `cpus.topology` equal to Keel's
//! own (one package, one die, `boot_vcpus` cores, one thread per core), and
//! `memory.hotplug_method` without a hotplug size.

use arch::hyperv::HypervConfig;
use devices::virtio::block::EngineChoice;
use serde_json::Value;

use super::wire::{
    ConsoleWire, CpusWire, DiskWire, MemoryWire, NumaWire, PayloadWire, PlatformWire, RngWire,
    SerialWire, VmWire,
};
use super::{unsupported, JsonConfigError};
use crate::config::CacheMode;

/// The physical address width Cloud Hypervisor writes when a client gives none.
const CH_DEFAULT_MAX_PHYS_BITS: u32 = 46;
/// The entropy source Cloud Hypervisor writes when a client gives no `rng`.
const CH_DEFAULT_RNG_SOURCE: &str = "/dev/urandom";

/// `field: WHAT` (`what` says what Keel lacks, in a sentence without the field).
fn lacks(field: impl Into<String>, what: &str) -> JsonConfigError {
    unsupported(field, what.to_string())
}

/// A list or section that must be absent, `null` or an empty list.
fn empty(
    field: impl Into<String>,
    value: &Option<Value>,
    what: &str,
) -> Result<(), JsonConfigError> {
    match value {
        None => Ok(()),
        Some(Value::Array(items)) if items.is_empty() => Ok(()),
        Some(_) => Err(lacks(field, what)),
    }
}

/// A switch that must be absent or `false`.
fn off(field: impl Into<String>, value: Option<bool>, what: &str) -> Result<(), JsonConfigError> {
    match value {
        Some(true) => Err(lacks(field, what)),
        _ => Ok(()),
    }
}

/// A value that must be absent (`null`).
fn unset<T>(
    field: impl Into<String>,
    value: &Option<T>,
    what: &str,
) -> Result<(), JsonConfigError> {
    match value {
        Some(_) => Err(lacks(field, what)),
        None => Ok(()),
    }
}

/// The top-level devices and features Keel does not have, and `console`, `debug_console`,
/// `rng` and `platform`.
pub(super) fn check_vm(wire: &VmWire) -> Result<(), JsonConfigError> {
    check_device_lists(wire)?;
    check_switches(wire)?;
    if let Some(console) = &wire.console {
        check_console("console", console, "keel has no virtio-console device")?;
    }
    if let Some(console) = &wire.debug_console {
        check_console("debug_console", console, "keel has no debug console port")?;
    }
    if let Some(rng) = &wire.rng {
        check_rng(rng)?;
    }
    if let Some(platform) = &wire.platform {
        check_platform(platform)?;
    }
    Ok(())
}

/// The device lists Keel has no such device for must be absent or empty.
fn check_device_lists(wire: &VmWire) -> Result<(), JsonConfigError> {
    let lists = [
        (
            "net",
            &wire.net,
            "net devices (virtio-net) are not supported by keel",
        ),
        (
            "balloon",
            &wire.balloon,
            "a balloon device is not supported by keel",
        ),
        (
            "fs",
            &wire.fs,
            "virtio-fs devices are not supported by keel",
        ),
        ("pmem", &wire.pmem, "pmem devices are not supported by keel"),
        (
            "devices",
            &wire.devices,
            "VFIO device passthrough is not supported by keel",
        ),
        (
            "user_devices",
            &wire.user_devices,
            "vfio-user devices are not supported by keel",
        ),
        ("vdpa", &wire.vdpa, "vDPA devices are not supported by keel"),
        (
            "vsock",
            &wire.vsock,
            "a vsock device is not supported by keel",
        ),
        (
            "sgx_epc",
            &wire.sgx_epc,
            "SGX EPC sections are not supported by keel",
        ),
        (
            "pci_segments",
            &wire.pci_segments,
            "keel has one PCI segment, not configurable",
        ),
        (
            "rate_limit_groups",
            &wire.rate_limit_groups,
            "rate limiting is not supported by keel",
        ),
        ("tpm", &wire.tpm, "a TPM is not supported by keel"),
        (
            "landlock_rules",
            &wire.landlock_rules,
            "Landlock is not supported by keel (it confines itself with seccomp)",
        ),
        (
            "ivshmem",
            &wire.ivshmem,
            "an ivshmem device is not supported by keel",
        ),
        (
            "pvmemcontrol",
            &wire.pvmemcontrol,
            "a pvmemcontrol device is not supported by keel",
        ),
    ];
    for (field, value, what) in lists {
        empty(field, value, what)?;
    }
    Ok(())
}

/// The switches of devices and features Keel lacks must be off.
fn check_switches(wire: &VmWire) -> Result<(), JsonConfigError> {
    let switches = [
        (
            "pvpanic",
            wire.pvpanic,
            "a pvpanic device is not supported by keel",
        ),
        (
            "iommu",
            wire.iommu,
            "a virtual IOMMU is not supported by keel",
        ),
        (
            "watchdog",
            wire.watchdog,
            "a watchdog device is not supported by keel",
        ),
        ("gdb", wire.gdb, "a gdb stub is not supported by keel"),
        (
            "landlock_enable",
            wire.landlock_enable,
            "Landlock is not supported by keel (it confines itself with seccomp)",
        ),
    ];
    for (field, value, what) in switches {
        off(field, value, what)?;
    }
    Ok(())
}

/// `console` or `debug_console`: only a mode that means no device (`Off`, `Null`).
fn check_console(field: &str, wire: &ConsoleWire, missing: &str) -> Result<(), JsonConfigError> {
    if let Some(mode) = wire.mode.as_deref() {
        if !matches!(mode.to_ascii_lowercase().as_str(), "off" | "null") {
            return Err(unsupported(
                format!("{field}.mode"),
                format!("{mode:?}: {missing}; only Off or Null is accepted (the guest's console is the serial port)"),
            ));
        }
    }
    let what = format!("{missing}; leave it out with mode Off or Null");
    unset(format!("{field}.file"), &wire.file, &what)?;
    unset(format!("{field}.socket"), &wire.socket, &what)?;
    off(format!("{field}.iommu"), wire.iommu, &what)?;
    if field != "debug_console" {
        unset(
            format!("{field}.iobase"),
            &wire.iobase,
            "only debug_console has an iobase",
        )?;
    }
    Ok(())
}

fn check_rng(wire: &RngWire) -> Result<(), JsonConfigError> {
    if let Some(src) = wire.src.as_deref().filter(|s| *s != CH_DEFAULT_RNG_SOURCE) {
        return Err(unsupported(
            "rng.src",
            format!(
                "{src:?}: keel has no virtio-rng device (the guest takes entropy from the CPU's \
                 RDRAND/RDSEED); only Cloud Hypervisor's default {CH_DEFAULT_RNG_SOURCE} is \
                 accepted, and it adds no device"
            ),
        ));
    }
    off(
        "rng.iommu",
        wire.iommu,
        "a virtual IOMMU is not supported by keel",
    )
}

fn check_platform(wire: &PlatformWire) -> Result<(), JsonConfigError> {
    if wire.num_pci_segments.is_some_and(|n| n != 1) {
        return Err(lacks(
            "platform.num_pci_segments",
            "keel has one PCI segment",
        ));
    }
    let no_smbios = "keel writes no SMBIOS tables";
    empty(
        "platform.iommu_segments",
        &wire.iommu_segments,
        "a virtual IOMMU is not supported by keel",
    )?;
    unset("platform.serial_number", &wire.serial_number, no_smbios)?;
    unset("platform.uuid", &wire.uuid, no_smbios)?;
    empty("platform.oem_strings", &wire.oem_strings, no_smbios)?;
    off(
        "platform.tdx",
        wire.tdx,
        "TDX guests are not supported by keel",
    )?;
    off(
        "platform.sev_snp",
        wire.sev_snp,
        "SEV-SNP guests are not supported by keel",
    )
}

/// `cpus.topology`, `max_phys_bits` and `features`, with `boot_vcpus` known.
pub(super) fn check_cpus(wire: &CpusWire, boot_vcpus: u32) -> Result<(), JsonConfigError> {
    if let Some(t) = &wire.topology {
        let keel = [Some(1), Some(boot_vcpus), Some(1), Some(1)];
        let asked = [
            t.threads_per_core,
            t.cores_per_die,
            t.dies_per_package,
            t.packages,
        ];
        if asked != keel {
            return Err(unsupported(
                "cpus.topology",
                format!(
                    "keel's topology is fixed: threads_per_core 1, cores_per_die {boot_vcpus} \
                     (boot_vcpus), dies_per_package 1, packages 1; leave topology out or give \
                     exactly that"
                ),
            ));
        }
    }
    if let Some(bits) = wire
        .max_phys_bits
        .filter(|&b| b != CH_DEFAULT_MAX_PHYS_BITS)
    {
        return Err(unsupported(
            "cpus.max_phys_bits",
            format!(
                "{bits}: keel gives the guest the host's physical address width; only Cloud \
                 Hypervisor's default {CH_DEFAULT_MAX_PHYS_BITS} is accepted"
            ),
        ));
    }
    let amx = wire.features.as_ref().and_then(|f| f.amx);
    off(
        "cpus.features.amx",
        amx,
        "keel does not request AMX state for guests",
    )
}

/// Keel's `hyperv` given the Cloud Hypervisor switch `kvm_hyperv`: `on` when it is true and
/// `hyperv` is left out; both given must agree.
pub(super) fn kvm_hyperv(
    switch: Option<bool>,
    hyperv: Option<HypervConfig>,
) -> Result<Option<HypervConfig>, JsonConfigError> {
    match (switch, hyperv) {
        (Some(true), None) => Ok(Some(HypervConfig::on())),
        (Some(on), Some(cfg)) if on != cfg.enabled() => Err(unsupported(
            "cpus.kvm_hyperv",
            format!(
                "{on} contradicts cpus.hyperv, which turns Hyper-V enlightenments {}",
                if cfg.enabled() { "on" } else { "off" }
            ),
        )),
        (_, hyperv) => Ok(hyperv),
    }
}

/// Memory hotplug and zones: none.
pub(super) fn check_memory(wire: &MemoryWire) -> Result<(), JsonConfigError> {
    let hotplug = "memory hotplug is not supported by keel";
    if let Some(method) = wire.hotplug_method.as_deref() {
        if !matches!(method.to_ascii_lowercase().as_str(), "acpi" | "virtiomem") {
            return Err(unsupported(
                "memory.hotplug_method",
                format!("{method:?} is not a hotplug method; expected Acpi or VirtioMem"),
            ));
        }
    }
    for (field, size) in [
        ("memory.hotplug_size", wire.hotplug_size),
        ("memory.hotplugged_size", wire.hotplugged_size),
    ] {
        if size.is_some_and(|s| s != 0) {
            return Err(lacks(field, hotplug));
        }
    }
    empty(
        "memory.zones",
        &wire.zones,
        "keel has no memory zones; give a guest NUMA node its RAM with numa[].memory",
    )
}

/// Confidential-guest payloads and fw_cfg: none (a kernel or a PVH firmware boots directly).
pub(super) fn check_payload(wire: &PayloadWire) -> Result<(), JsonConfigError> {
    unset(
        "payload.igvm",
        &wire.igvm,
        "IGVM payloads are not supported by keel",
    )?;
    unset(
        "payload.host_data",
        &wire.host_data,
        "SEV-SNP guests are not supported by keel",
    )?;
    unset(
        "payload.fw_cfg_config",
        &wire.fw_cfg_config,
        "keel has no fw_cfg device",
    )
}

/// One disk's Cloud Hypervisor fields (`field` is `disks[i]`).
pub(super) fn check_disk(field: &str, wire: &DiskWire) -> Result<(), JsonConfigError> {
    let vhost = "vhost-user disks are not supported by keel";
    let limits = "rate limiting is not supported by keel";
    off(
        format!("{field}.iommu"),
        wire.iommu,
        "a virtual IOMMU is not supported by keel",
    )?;
    off(format!("{field}.vhost_user"), wire.vhost_user, vhost)?;
    unset(format!("{field}.vhost_socket"), &wire.vhost_socket, vhost)?;
    unset(
        format!("{field}.rate_limit_group"),
        &wire.rate_limit_group,
        limits,
    )?;
    unset(
        format!("{field}.rate_limiter_config"),
        &wire.rate_limiter_config,
        limits,
    )?;
    // disable_io_uring is read by `io_engine`; disable_aio holds whatever it says, as keel
    // has no Linux AIO engine.
    if wire.pci_segment.is_some_and(|s| s != 0) {
        return Err(lacks(
            format!("{field}.pci_segment"),
            "keel has one PCI segment (0)",
        ));
    }
    empty(
        format!("{field}.queue_affinity"),
        &wire.queue_affinity,
        "keel pins I/O threads, not queues: use iothread with cpus",
    )
}

/// Keel's cache mode given Cloud Hypervisor's `direct` (`O_DIRECT` or not) and Keel's `cache`;
/// both given must agree.
pub(super) fn direct_cache(
    field: &str,
    direct: Option<bool>,
    cache: Option<CacheMode>,
) -> Result<Option<CacheMode>, JsonConfigError> {
    let from_direct = direct.map(|d| {
        if d {
            CacheMode::None
        } else {
            CacheMode::Writeback
        }
    });
    match (from_direct, cache) {
        (Some(a), Some(b)) if a != b => Err(unsupported(
            format!("{field}.direct"),
            format!(
                "{} contradicts cache {} (direct true is cache none, false is writeback)",
                direct.unwrap_or_default(),
                if b == CacheMode::None {
                    "none"
                } else {
                    "writeback"
                }
            ),
        )),
        (a, b) => Ok(b.or(a)),
    }
}

/// Keel's engine given Cloud Hypervisor's `disable_io_uring` (true: the synchronous engine)
/// and Keel's `engine`; both given must agree.
pub(super) fn io_engine(
    field: &str,
    disable_io_uring: Option<bool>,
    engine: Option<EngineChoice>,
) -> Result<Option<EngineChoice>, JsonConfigError> {
    match (disable_io_uring, engine) {
        (Some(true), Some(e)) if e != EngineChoice::Sync => Err(unsupported(
            format!("{field}.disable_io_uring"),
            "true contradicts an engine other than sync".to_string(),
        )),
        (Some(true), _) => Ok(Some(EngineChoice::Sync)),
        (_, e) => Ok(e),
    }
}

/// `serial`'s Cloud Hypervisor fields beyond the mode and file.
pub(super) fn check_serial(wire: &SerialWire) -> Result<(), JsonConfigError> {
    unset(
        "serial.socket",
        &wire.socket,
        "only used with mode Socket, which keel does not have",
    )?;
    off(
        "serial.iommu",
        wire.iommu,
        "a virtual IOMMU is not supported by keel",
    )?;
    unset(
        "serial.iobase",
        &wire.iobase,
        "only debug_console has an iobase",
    )
}

/// One NUMA node's Cloud Hypervisor fields (`field` is `numa[i]`).
pub(super) fn check_numa(field: &str, wire: &NumaWire) -> Result<(), JsonConfigError> {
    empty(
        format!("{field}.distances"),
        &wire.distances,
        "keel takes the distances between guest nodes from their host nodes",
    )?;
    empty(
        format!("{field}.memory_zones"),
        &wire.memory_zones,
        "keel has no memory zones; give the node's RAM in bytes as memory",
    )?;
    empty(
        format!("{field}.pci_segments"),
        &wire.pci_segments,
        "keel has one PCI segment",
    )?;
    empty(
        format!("{field}.sgx_epc_sections"),
        &wire.sgx_epc_sections,
        "SGX EPC sections are not supported by keel",
    )
}
