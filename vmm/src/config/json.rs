//! The JSON form of [`VmConfig`], as a `vm.create` request carries it: Cloud Hypervisor's
//! `VmConfig` field names for what Keel shares with it, and Keel's own settings beside them.
//!
//! ```json
//! {
//!   "cpus": {"boot_vcpus": 2, "max_vcpus": 2,
//!            "affinity": [{"vcpu": 0, "host_cpus": [2, 3]}],
//!            "kvm_pv": "kvmclock,pv_eoi", "hyperv": "off", "pvm_compat": "auto"},
//!   "memory": {"size": 1073741824, "hugepages": true, "hugepage_size": 2097152,
//!              "prefault": false, "shared": false, "mergeable": false},
//!   "payload": {"kernel": "/vmlinux", "initramfs": "/initrd", "cmdline": "console=ttyS0"},
//!   "disks": [{"path": "/disk.img", "readonly": false, "num_queues": 2, "queue_size": 256,
//!              "id": "root", "serial": "SN1", "cache": "none", "iothread": "io0:cpus:[4,5]",
//!              "numa_node": 0}],
//!   "serial": {"mode": "File", "file": "/tmp/com1.log"},
//!   "numa": [{"guest_numa_id": 0, "cpus": [0, 1], "memory": 1073741824, "host_numa_node": 0}]
//! }
//! ```
//!
//! - Shared with Cloud Hypervisor: `cpus.boot_vcpus`, `cpus.max_vcpus` (Keel has no vCPU
//!   hotplug, so it must equal `boot_vcpus`), `cpus.affinity`, `memory.size`, `hugepages`,
//!   `hugepage_size`, `prefault`, `shared`, `mergeable`, `thp` (absent: auto; sizes in bytes),
//!   `payload`, `disks[].path`, `readonly`, `num_queues`, `queue_size`, `id`, `serial`, and
//!   `serial.mode` (`Tty`, `Off`, `Null` or `File`, any case) with `serial.file`.
//! - Keel's own: `cpus.kvm_pv`, `cpus.hyperv` (the `--cpus kvm_pv=` / `hyperv=` vocabulary, as
//!   one string with or without brackets; `"kvm_pv": "hidden"` leaves out KVM's CPUID leaves),
//!   `cpus.pvm_compat` (`auto`, `on`, `off`), `disks[].cache` (`none`, `writeback`),
//!   `disks[].lock`, `disks[].poll_us`, `disks[].iothread` (`--disk iothread=` syntax;
//!   `cpus:2,4` may leave out the brackets) and `disks[].numa_node`.
//! - `numa` differs from Cloud Hypervisor's: there a node takes its RAM from named
//!   `memory_zones`, and Keel has no zones. A Keel node gives its RAM directly:
//!   `{"guest_numa_id", "cpus", "memory" (bytes), "host_numa_node"}`, as `--numa` does.
//! - Cloud Hypervisor's other `VmConfig` fields (`net`, `rng`, `console`, `platform`,
//!   `memory.zones`, `disks[].direct`, `cpus.topology`, ...) are accepted when they ask for
//!   nothing Keel lacks, mapped where Keel has the same thing in another form (`direct`,
//!   `kvm_hyperv`), and refused with the field's path otherwise: see [`cloud_hypervisor`].
//!
//! Every field may be left out except `payload.kernel` (or instead `payload.firmware`, a PVH
//! firmware, which then comes alone) and `disks[].path` (and a NUMA node's
//! `guest_numa_id` and `memory`, which `--numa` requires too); what is left out takes the CLI's
//! default. Unknown fields are refused with their name, so a typo is an error rather than a
//! setting silently dropped.
//!
//! A body becomes the typed config directly (no detour through option strings), and then
//! meets the same checks the command line's parsers end with ([`DiskConfig::check_values`],
//! [`NumaNodeConfig::check_values`], [`CpusConfig::validate`], [`MemoryConfig::validate`],
//! [`VmConfig::validate_numa`], the affinity entry check, the `iothread` and `cache` value
//! parsers), so a body cannot express what the command line would refuse, and both say why
//! in the same words. Only value vocabularies (`kvm_pv`, `hyperv`, `iothread`) are text.
//! Nothing here touches the filesystem: kernel, initramfs and disk files, the set of disks and
//! the host's limits are checked when the VM is built, as they are for the CLI.

mod cloud_hypervisor;
mod to_json;
mod wire;

use std::path::PathBuf;

use self::wire::{
    AffinityWire, CpusWire, DiskWire, MemoryWire, NumaWire, PayloadWire, SerialWire, VmWire,
};
use super::cpus::check_affinity_entry;
use super::disk::{self, narrow, parse_iothread};
use super::paravirt::{parse_hyperv, parse_kvm_pv};
use super::{
    strip_brackets, CacheMode, ConfigError, CpusConfig, DiskConfig, MemoryConfig, NumaNodeConfig,
    PayloadConfig, SerialConfig, Toggle, VmConfig,
};
use crate::host::KEEL_MAX_VCPUS;
use crate::placement::CpuSet;
pub use to_json::vm_config_to_json;

/// Why a JSON VM configuration was refused. Each message is one line that starts with the
/// field path (`memory.hugepage_size`, `disks[1].queue_size`), except for JSON that does not
/// fit the shape, where serde's message names the field, line and column.
#[derive(Debug, thiserror::Error)]
pub enum JsonConfigError {
    /// Not JSON, or not this shape: a syntax error, an unknown field or a wrong type.
    #[error("VM config JSON: {}", one_line(&.0.to_string()))]
    Json(serde_json::Error),
    /// A field that has no default is absent (or an empty path).
    #[error("{field}: missing; it is required")]
    Missing {
        /// Path of the field, e.g. `payload.kernel`.
        field: String,
    },
    /// A value the CLI's parser or validation refuses for the same setting.
    #[error("{field}: {detail}")]
    Invalid {
        /// Path of the field, e.g. `memory.hugepage_size`.
        field: String,
        /// What is wrong, in one line.
        detail: String,
        /// The CLI's error for the same value.
        source: ConfigError,
    },
    /// A Cloud Hypervisor setting Keel does not have, or a string that Keel's option syntax,
    /// which checks it, cannot carry.
    #[error("{field}: {detail}")]
    Unsupported {
        /// Path of the field, e.g. `cpus.max_vcpus`.
        field: String,
        /// What is not supported, in one line.
        detail: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------------

/// `text` with control characters (newlines above all) escaped, so a message stays one line
/// whatever the request contained.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn missing(field: impl Into<String>) -> JsonConfigError {
    JsonConfigError::Missing {
        field: field.into(),
    }
}

fn unsupported(field: impl Into<String>, detail: String) -> JsonConfigError {
    JsonConfigError::Unsupported {
        field: field.into(),
        detail: one_line(&detail),
    }
}

/// `prefix.name`, or `prefix` alone when `name` is empty.
fn join(prefix: &str, name: &str) -> String {
    if name.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Attributes a CLI error to a field under `prefix`: `renames` maps the CLI's key names to the
/// JSON's where they differ (an empty JSON name: the prefix itself).
fn from_cli(prefix: &str, renames: &[(&str, &str)], source: ConfigError) -> JsonConfigError {
    let field = |key: &str| {
        let name = renames
            .iter()
            .find(|(cli, _)| *cli == key)
            .map_or(key, |(_, json)| *json);
        join(prefix, name)
    };
    let (field, detail) = match &source {
        ConfigError::MissingKey { key, .. } => return missing(field(key)),
        ConfigError::InvalidValue {
            key, value, reason, ..
        } => (field(key), format!("{reason} (got {value})")),
        ConfigError::ZeroVcpus => (
            field("boot_vcpus"),
            "a VM needs at least one vCPU".to_string(),
        ),
        ConfigError::TooManyVcpus {
            requested,
            max,
            why,
        } => (
            field("boot_vcpus"),
            format!("{requested} vCPUs, but at most {max} are allowed ({why})"),
        ),
        ConfigError::BadMemorySize { size, reason } => {
            (field("size"), format!("{size} bytes: {reason}"))
        }
        ConfigError::Cpus(msg)
        | ConfigError::Memory(msg)
        | ConfigError::Numa(msg)
        | ConfigError::Disks(msg) => (prefix.to_string(), msg.clone()),
        other => (prefix.to_string(), other.to_string()),
    };
    JsonConfigError::Invalid {
        field,
        detail: one_line(&detail),
        source,
    }
}

/// A `kvm_pv` or `hyperv` error, at `cpus.KEY`, with the CLI's error as its source.
fn paravirt_error(key: &str, source: ConfigError) -> JsonConfigError {
    let detail = match &source {
        ConfigError::KvmPv(e) => e.to_string(),
        ConfigError::Hyperv(e) => e.to_string(),
        other => other.to_string(),
    };
    JsonConfigError::Invalid {
        field: format!("cpus.{key}"),
        detail: one_line(&detail),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// JSON -> VmConfig.
// ---------------------------------------------------------------------------------------------

/// Parses a `vm.create` body into a [`VmConfig`], checked as the CLI checks its options (see
/// the module documentation for the shape). Files are not looked at.
pub fn vm_config_from_json(body: &str) -> Result<VmConfig, JsonConfigError> {
    let wire: VmWire = serde_json::from_str(body).map_err(JsonConfigError::Json)?;
    cloud_hypervisor::check_vm(&wire)?;
    let config = VmConfig {
        cpus: cpus_from(wire.cpus.unwrap_or_default())?,
        memory: memory_from(wire.memory.unwrap_or_default())?,
        payload: payload_from(wire.payload.unwrap_or_default())?,
        serial: serial_from(wire.serial.unwrap_or_default())?,
        disks: wire
            .disks
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, d)| disk_from(i, d))
            .collect::<Result<_, _>>()?,
        numa: wire
            .numa
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, n)| numa_from(i, n))
            .collect::<Result<_, _>>()?,
    };
    config
        .validate_numa()
        .map_err(|e| from_cli("numa", &[], e))?;
    Ok(config)
}

fn cpus_from(wire: CpusWire) -> Result<CpusConfig, JsonConfigError> {
    let mut cfg = CpusConfig::default();
    if let Some(n) = wire.boot_vcpus {
        cfg.boot_vcpus = n;
    }
    if let Some(max) = wire.max_vcpus.filter(|&m| m != cfg.boot_vcpus) {
        return Err(unsupported(
            "cpus.max_vcpus",
            format!(
                "{max} differs from boot_vcpus {}: Keel has no vCPU hotplug, so max_vcpus must \
                 equal boot_vcpus or be left out",
                cfg.boot_vcpus
            ),
        ));
    }
    if let Some(list) = &wire.affinity {
        cfg.affinity = affinity_from(list)?;
    }
    if let Some(v) = &wire.kvm_pv {
        cfg.kvm_pv = parse_kvm_pv(strip_brackets(v))
            .map_err(|e| paravirt_error("kvm_pv", ConfigError::KvmPv(e)))?;
    }
    let hyperv = match &wire.hyperv {
        Some(v) => Some(
            parse_hyperv(strip_brackets(v))
                .map_err(|e| paravirt_error("hyperv", ConfigError::Hyperv(e)))?,
        ),
        None => None,
    };
    if let Some(hyperv) = cloud_hypervisor::kvm_hyperv(wire.kvm_hyperv, hyperv)? {
        cfg.hyperv = hyperv;
    }
    if let Some(v) = &wire.pvm_compat {
        cfg.pvm_compat =
            Toggle::parse("cpus", "pvm_compat", v).map_err(|e| from_cli("cpus", &[], e))?;
    }
    cloud_hypervisor::check_cpus(&wire, cfg.boot_vcpus)?;
    // The host's own KVM limit is checked when the VM is built.
    cfg.validate(KEEL_MAX_VCPUS, "Keel's limit: 8-bit APIC IDs")
        .map_err(|e| from_cli("cpus", &[], e))?;
    Ok(cfg)
}

/// Each entry checked against the ones before it (an error names its index); that the vCPUs
/// exist is checked with the count, by [`CpusConfig::validate`].
fn affinity_from(list: &[AffinityWire]) -> Result<Vec<(u32, CpuSet)>, JsonConfigError> {
    let mut pairs = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let field = format!("cpus.affinity[{i}]");
        let vcpu = entry.vcpu.ok_or_else(|| missing(format!("{field}.vcpu")))?;
        let host_cpus = entry.host_cpus.as_deref().unwrap_or_default();
        let cpus = CpuSet::try_from_iter(host_cpus.iter().copied())
            .map_err(|e| unsupported(format!("{field}.host_cpus"), e.to_string()))?;
        let bad = |reason| ConfigError::InvalidValue {
            option: "cpus",
            key: "affinity",
            value: format!("{vcpu}@[{cpus}]"),
            reason,
        };
        check_affinity_entry(vcpu, &cpus, &pairs)
            .map_err(|reason| from_cli(&field, &[("affinity", "")], bad(reason)))?;
        pairs.push((vcpu, cpus));
    }
    Ok(pairs)
}

fn memory_from(wire: MemoryWire) -> Result<MemoryConfig, JsonConfigError> {
    cloud_hypervisor::check_memory(&wire)?;
    let defaults = MemoryConfig::default();
    let cfg = MemoryConfig {
        size: wire.size.unwrap_or(defaults.size),
        hugepages: wire.hugepages.unwrap_or(defaults.hugepages),
        hugepage_size: wire.hugepage_size,
        prefault: wire.prefault.unwrap_or(defaults.prefault),
        thp: match wire.thp {
            Some(true) => Toggle::On,
            Some(false) => Toggle::Off,
            None => defaults.thp,
        },
        shared: wire.shared.unwrap_or(defaults.shared),
        mergeable: wire.mergeable.unwrap_or(defaults.mergeable),
    };
    // Host RAM and the huge page pool are checked when the VM is built.
    cfg.validate(None).map_err(|e| from_cli("memory", &[], e))?;
    Ok(cfg)
}

fn payload_from(wire: PayloadWire) -> Result<PayloadConfig, JsonConfigError> {
    cloud_hypervisor::check_payload(&wire)?;
    if let Some(firmware) = wire.firmware.filter(|f| !f.is_empty()) {
        return firmware_payload(firmware, wire.kernel, wire.initramfs, wire.cmdline);
    }
    let kernel = wire
        .kernel
        .filter(|k| !k.is_empty())
        .ok_or_else(|| missing("payload.kernel"))?;
    Ok(PayloadConfig {
        kernel: PathBuf::from(kernel),
        initramfs: wire.initramfs.map(PathBuf::from),
        cmdline: wire.cmdline.unwrap_or_default(),
        firmware: None,
    })
}

/// `payload.firmware`: the firmware finds the OS on a disk, so the kernel's fields stay empty.
fn firmware_payload(
    firmware: String,
    kernel: Option<String>,
    initramfs: Option<String>,
    cmdline: Option<String>,
) -> Result<PayloadConfig, JsonConfigError> {
    let alone = "keel boots either payload.firmware or payload.kernel, not both";
    for (field, value) in [
        ("payload.kernel", kernel),
        ("payload.initramfs", initramfs),
        ("payload.cmdline", cmdline),
    ] {
        if value.is_some_and(|v| !v.is_empty()) {
            return Err(unsupported(field, alone.to_string()));
        }
    }
    Ok(PayloadConfig {
        firmware: Some(PathBuf::from(firmware)),
        ..PayloadConfig::default()
    })
}

fn serial_from(wire: SerialWire) -> Result<SerialConfig, JsonConfigError> {
    cloud_hypervisor::check_serial(&wire)?;
    let mode = match &wire.mode {
        Some(m) => m.to_ascii_lowercase(),
        None if wire.file.is_some() => "file".to_string(),
        None => return Ok(SerialConfig::default()),
    };
    let given = || wire.mode.clone().unwrap_or_else(|| mode.clone());
    if mode != "file" && wire.file.is_some() {
        return Err(unsupported(
            "serial.file",
            format!("only used with mode File, not {}", given()),
        ));
    }
    match mode.as_str() {
        "tty" => Ok(SerialConfig::Tty),
        "off" | "null" => Ok(SerialConfig::Off),
        "file" => match wire.file.as_deref() {
            Some(path) if !path.is_empty() => Ok(SerialConfig::File(PathBuf::from(path))),
            _ => Err(from_cli("serial", &[], SerialConfig::missing_file())),
        },
        _ => Err(unsupported(
            "serial.mode",
            format!(
                "{:?} is not a mode Keel has; expected Tty, Off, Null or File",
                given()
            ),
        )),
    }
}

fn disk_from(index: usize, wire: DiskWire) -> Result<DiskConfig, JsonConfigError> {
    let field = format!("disks[{index}]");
    let cli = |e| from_cli(&field, &[("queues", "num_queues")], e);
    cloud_hypervisor::check_disk(&field, &wire)?;
    let path = wire.path.ok_or_else(|| missing(format!("{field}.path")))?;
    let defaults = DiskConfig::default();
    let cache = match &wire.cache {
        Some(v) => Some(CacheMode::parse(v).map_err(cli)?),
        None => None,
    };
    let (iothread, iothread_cpus) = match &wire.iothread {
        Some(v) => parse_iothread(v).map_err(cli)?,
        None => (None, None),
    };
    let engine = match &wire.engine {
        Some(v) => Some(disk::parse_engine(v).map_err(cli)?),
        None => None,
    };
    let cfg = DiskConfig {
        path: PathBuf::from(path),
        readonly: wire.readonly.unwrap_or(defaults.readonly),
        lock: wire.lock.unwrap_or(defaults.lock),
        cache: cloud_hypervisor::direct_cache(&field, wire.direct, cache)?
            .unwrap_or(defaults.cache),
        queues: match wire.num_queues {
            Some(n) => Some(narrow("queues", n, disk::QUEUES).map_err(cli)?),
            None => defaults.queues,
        },
        queue_size: match wire.queue_size {
            Some(n) => narrow("queue_size", n, disk::QUEUE_SIZE).map_err(cli)?,
            None => defaults.queue_size,
        },
        iothread,
        iothread_cpus,
        numa_node: wire.numa_node,
        serial: wire.serial,
        id: wire.id,
        poll_us: match wire.poll_us {
            Some(n) => narrow("poll_us", n, disk::POLL_US).map_err(cli)?,
            None => defaults.poll_us,
        },
        engine: cloud_hypervisor::io_engine(&field, wire.disable_io_uring, engine)?
            .unwrap_or(defaults.engine),
        iothread_sched: match &wire.iothread_sched {
            Some(v) => disk::parse_iothread_sched(v).map_err(cli)?,
            None => defaults.iothread_sched,
        },
    };
    cfg.check_values().map_err(cli)?;
    Ok(cfg)
}

fn numa_from(index: usize, wire: NumaWire) -> Result<NumaNodeConfig, JsonConfigError> {
    let field = format!("numa[{index}]");
    cloud_hypervisor::check_numa(&field, &wire)?;
    let guest_node = wire
        .guest_numa_id
        .ok_or_else(|| missing(format!("{field}.guest_numa_id")))?;
    let memory = wire
        .memory
        .ok_or_else(|| missing(format!("{field}.memory")))?;
    let cpus = CpuSet::try_from_iter(wire.cpus.unwrap_or_default())
        .map_err(|e| unsupported(format!("{field}.cpus"), e.to_string()))?;
    let node = NumaNodeConfig {
        guest_node,
        cpus,
        memory,
        host_node: wire.host_numa_node,
    };
    node.check_values().map_err(|e| from_cli(&field, &[], e))?;
    Ok(node)
}

#[cfg(test)]
mod tests;
