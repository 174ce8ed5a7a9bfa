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
//!   `hugepage_size`, `prefault`, `shared`, `mergeable` (sizes in bytes), `payload`,
//!   `disks[].path`, `readonly`, `lock`, `num_queues`, `queue_size`, `id`, `serial`, and
//!   `serial.mode` (`Tty`, `Off`, `Null` or `File`, any case) with `serial.file`.
//! - Keel's own: `cpus.kvm_pv`, `cpus.hyperv` (the `--cpus kvm_pv=` / `hyperv=` vocabulary, as
//!   one string with or without brackets; `"kvm_pv": "hidden"` leaves out KVM's CPUID leaves),
//!   `cpus.pvm_compat` (`auto`, `on`, `off`), `memory.thp` (absent: auto), `disks[].cache`
//!   (`none`, `writeback`), `disks[].iothread` (`--disk iothread=` syntax; `cpus:2,4` may leave
//!   out the brackets) and `disks[].numa_node`.
//! - `numa` differs from Cloud Hypervisor's: there a node takes its RAM from named
//!   `memory_zones`, and Keel has no zones. A Keel node gives its RAM directly:
//!   `{"guest_numa_id", "cpus", "memory" (bytes), "host_numa_node"}`, as `--numa` does.
//!
//! Every field may be left out except `payload.kernel` and `disks[].path` (and a NUMA node's
//! `guest_numa_id` and `memory`, which `--numa` requires too); what is left out takes the CLI's
//! default. Unknown fields are refused, so a Cloud Hypervisor setting Keel lacks (`net`,
//! `memory.hotplug_size`, ...) is an error rather than silently dropped.
//!
//! Values go through the CLI's own parsers and checks ([`CpusConfig::parse`],
//! [`MemoryConfig::parse`], [`DiskConfig::parse`], [`NumaNodeConfig::parse`],
//! [`SerialConfig::parse`], [`CpusConfig::validate`], [`MemoryConfig::validate`],
//! [`VmConfig::validate_numa`]), so a body cannot express what the command line would refuse.
//! Nothing here touches the filesystem: kernel, initramfs and disk files, the set of disks and
//! the host's limits are checked when the VM is built, as they are for the CLI.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::paravirt::{hyperv_text, kvm_pv_text, parse_hyperv, parse_kvm_pv};
use super::{
    strip_brackets, CacheMode, ConfigError, CpusConfig, DiskConfig, MemoryConfig, NumaNodeConfig,
    PayloadConfig, SerialConfig, Toggle, VmConfig,
};
use crate::host::KEEL_MAX_VCPUS;
use crate::placement::CpuSet;

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
// The wire shape. Every field is optional here; what is required is checked while converting,
// so that the message can name the whole field path.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    cpus: Option<CpusWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<MemoryWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<PayloadWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disks: Option<Vec<DiskWire>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial: Option<SerialWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    numa: Option<Vec<NumaWire>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CpusWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    boot_vcpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_vcpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    affinity: Option<Vec<AffinityWire>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kvm_pv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hyperv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pvm_compat: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AffinityWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    vcpu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_cpus: Option<Vec<u32>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hugepages: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hugepage_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefault: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thp: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shared: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mergeable: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PayloadWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initramfs: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmdline: Option<String>,
}

/// Numbers the CLI range-checks are taken wide, so that the CLI's message, not serde's
/// integer-width one, says what range is allowed.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    readonly: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_queues: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iothread: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    numa_node: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lock: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NumaWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    guest_numa_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpus: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_numa_node: Option<u32>,
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

/// A `kvm_pv` or `hyperv` error, wrapped as `CpusConfig::parse` wraps it.
fn paravirt_error(key: &str, message: String) -> JsonConfigError {
    let detail = message
        .strip_prefix(key)
        .and_then(|m| m.strip_prefix(": "))
        .unwrap_or(&message);
    JsonConfigError::Invalid {
        field: format!("cpus.{key}"),
        detail: one_line(detail),
        source: ConfigError::Cpus(message.clone()),
    }
}

/// `key=value` for a group, if the option syntax carries `value` whole: brackets balanced and
/// no comma outside them (one would split the group or swallow the next key).
fn item(field: &str, key: &str, value: &str) -> Result<String, JsonConfigError> {
    let mut depth = 0usize;
    for c in value.chars() {
        match c {
            '[' => depth += 1,
            ']' if depth == 0 => depth = usize::MAX,
            ']' => depth -= 1,
            ',' if depth == 0 => depth = usize::MAX,
            _ => {}
        }
        if depth == usize::MAX {
            break;
        }
    }
    if depth == 0 {
        Ok(format!("{key}={value}"))
    } else {
        Err(unsupported(
            join(field, key),
            format!(
                "{value:?} has a comma outside brackets or unbalanced brackets, which Keel's \
                 option syntax cannot carry"
            ),
        ))
    }
}

fn on_off(value: bool) -> &'static str {
    if value {
        "on"
    } else {
        "off"
    }
}

fn number_list(numbers: &[u32]) -> String {
    let text: Vec<String> = numbers.iter().map(u32::to_string).collect();
    text.join(",")
}

// ---------------------------------------------------------------------------------------------
// JSON -> VmConfig.
// ---------------------------------------------------------------------------------------------

/// Parses a `vm.create` body into a [`VmConfig`], checked as the CLI checks its options (see
/// the module documentation for the shape). Files are not looked at.
pub fn vm_config_from_json(body: &str) -> Result<VmConfig, JsonConfigError> {
    let wire: VmWire = serde_json::from_str(body).map_err(JsonConfigError::Json)?;
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
    if let Some(list) = wire.affinity {
        cfg.affinity = affinity_from(&list)?;
    }
    if let Some(v) = wire.kvm_pv {
        cfg.kvm_pv = parse_kvm_pv(strip_brackets(&v))
            .map_err(|e| paravirt_error("kvm_pv", e.to_string()))?;
    }
    if let Some(v) = wire.hyperv {
        cfg.hyperv = parse_hyperv(strip_brackets(&v))
            .map_err(|e| paravirt_error("hyperv", e.to_string()))?;
    }
    if let Some(v) = wire.pvm_compat {
        cfg.pvm_compat =
            Toggle::parse("cpus", "pvm_compat", &v).map_err(|e| from_cli("cpus", &[], e))?;
    }
    // The host's own KVM limit is checked when the VM is built.
    cfg.validate(KEEL_MAX_VCPUS, "Keel's limit: 8-bit APIC IDs")
        .map_err(|e| from_cli("cpus", &[], e))?;
    Ok(cfg)
}

/// Each entry through `--cpus affinity=` on its own (so an error names its index), then the
/// whole list (which refuses a vCPU given twice).
fn affinity_from(list: &[AffinityWire]) -> Result<Vec<(u32, CpuSet)>, JsonConfigError> {
    let mut items = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let field = format!("cpus.affinity[{i}]");
        let vcpu = entry.vcpu.ok_or_else(|| missing(format!("{field}.vcpu")))?;
        let host_cpus = entry.host_cpus.as_deref().unwrap_or_default();
        let item = format!("{vcpu}@[{}]", number_list(host_cpus));
        CpusConfig::parse(&format!("affinity=[{item}]"))
            .map_err(|e| from_cli(&field, &[("affinity", "")], e))?;
        items.push(item);
    }
    let cfg = CpusConfig::parse(&format!("affinity=[{}]", items.join(",")))
        .map_err(|e| from_cli("cpus.affinity", &[("affinity", "")], e))?;
    Ok(cfg.affinity)
}

fn memory_from(wire: MemoryWire) -> Result<MemoryConfig, JsonConfigError> {
    let size = wire.size.unwrap_or(MemoryConfig::default().size);
    let mut group = vec![format!("size={size}")];
    let flags = [
        ("hugepages", wire.hugepages),
        ("prefault", wire.prefault),
        ("thp", wire.thp),
        ("shared", wire.shared),
        ("mergeable", wire.mergeable),
    ];
    for (key, value) in flags {
        if let Some(v) = value {
            group.push(format!("{key}={}", on_off(v)));
        }
    }
    if let Some(s) = wire.hugepage_size {
        group.push(format!("hugepage_size={s}"));
    }
    let cfg = MemoryConfig::parse(&group.join(",")).map_err(|e| from_cli("memory", &[], e))?;
    // Host RAM and the huge page pool are checked when the VM is built.
    cfg.validate(None).map_err(|e| from_cli("memory", &[], e))?;
    Ok(cfg)
}

fn payload_from(wire: PayloadWire) -> Result<PayloadConfig, JsonConfigError> {
    let kernel = wire
        .kernel
        .filter(|k| !k.is_empty())
        .ok_or_else(|| missing("payload.kernel"))?;
    Ok(PayloadConfig {
        kernel: PathBuf::from(kernel),
        initramfs: wire.initramfs.map(PathBuf::from),
        cmdline: wire.cmdline.unwrap_or_default(),
    })
}

fn serial_from(wire: SerialWire) -> Result<SerialConfig, JsonConfigError> {
    let mode = match &wire.mode {
        Some(m) => m.to_ascii_lowercase(),
        None if wire.file.is_some() => "file".to_string(),
        None => return Ok(SerialConfig::default()),
    };
    let cli = match mode.as_str() {
        "tty" | "off" | "null" => {
            if wire.file.is_some() {
                return Err(unsupported(
                    "serial.file",
                    format!(
                        "only used with mode File, not {}",
                        wire.mode.unwrap_or(mode)
                    ),
                ));
            }
            mode
        }
        "file" => format!("file={}", wire.file.unwrap_or_default()),
        _ => {
            return Err(unsupported(
                "serial.mode",
                format!(
                    "{:?} is not a mode Keel has; expected Tty, Off, Null or File",
                    wire.mode.unwrap_or(mode)
                ),
            ))
        }
    };
    SerialConfig::parse(&cli).map_err(|e| from_cli("serial", &[], e))
}

fn disk_from(index: usize, wire: DiskWire) -> Result<DiskConfig, JsonConfigError> {
    let field = format!("disks[{index}]");
    let path = wire.path.ok_or_else(|| missing(format!("{field}.path")))?;
    // The path is taken as given (any characters); `--disk` refuses only an empty one.
    let mut group = vec![if path.is_empty() { "path=" } else { "path=_" }.to_string()];
    if let Some(v) = wire.readonly {
        group.push(format!("readonly={}", on_off(v)));
    }
    if let Some(v) = wire.lock {
        group.push(format!("lock={}", on_off(v)));
    }
    if let Some(v) = &wire.cache {
        group.push(item(&field, "cache", v)?);
    }
    if let Some(n) = wire.num_queues {
        group.push(format!("queues={n}"));
    }
    if let Some(n) = wire.queue_size {
        group.push(format!("queue_size={n}"));
    }
    if let Some(v) = &wire.iothread {
        group.push(item(&field, "iothread", &bracket_iothread_cpus(v))?);
    }
    if let Some(n) = wire.numa_node {
        group.push(format!("numa_node={n}"));
    }
    if let Some(v) = &wire.serial {
        group.push(item(&field, "serial", v)?);
    }
    if let Some(v) = &wire.id {
        group.push(item(&field, "id", v)?);
    }
    let mut cfg = DiskConfig::parse(&group.join(","))
        .map_err(|e| from_cli(&field, &[("queues", "num_queues")], e))?;
    cfg.path = PathBuf::from(path);
    Ok(cfg)
}

/// `NAME:cpus:2,4` -> `NAME:cpus:[2,4]`: in JSON the list need not be bracketed.
fn bracket_iothread_cpus(value: &str) -> String {
    match value.split_once("cpus:") {
        Some((name, cpus)) if !cpus.starts_with('[') => format!("{name}cpus:[{cpus}]"),
        _ => value.to_string(),
    }
}

fn numa_from(index: usize, wire: NumaWire) -> Result<NumaNodeConfig, JsonConfigError> {
    let mut group = Vec::new();
    if let Some(id) = wire.guest_numa_id {
        group.push(format!("guest_node={id}"));
    }
    if let Some(cpus) = &wire.cpus {
        group.push(format!("cpus=[{}]", number_list(cpus)));
    }
    if let Some(m) = wire.memory {
        group.push(format!("memory={m}"));
    }
    if let Some(h) = wire.host_numa_node {
        group.push(format!("host_node={h}"));
    }
    NumaNodeConfig::parse(&group.join(",")).map_err(|e| {
        from_cli(
            &format!("numa[{index}]"),
            &[
                ("guest_node", "guest_numa_id"),
                ("host_node", "host_numa_node"),
            ],
            e,
        )
    })
}

// ---------------------------------------------------------------------------------------------
// VmConfig -> JSON.
// ---------------------------------------------------------------------------------------------

/// The JSON form of `config`, every setting spelled out (`thp` only when not auto). For a
/// config the CLI built, [`vm_config_from_json`] gives `config` back. Paths that are not UTF-8
/// cannot be JSON strings; their bad bytes become U+FFFD.
pub fn vm_config_to_json(config: &VmConfig) -> String {
    let wire = VmWire {
        cpus: Some(cpus_to(&config.cpus)),
        memory: Some(memory_to(&config.memory)),
        payload: Some(PayloadWire {
            kernel: Some(path_text(&config.payload.kernel)),
            initramfs: config.payload.initramfs.as_deref().map(path_text),
            cmdline: Some(config.payload.cmdline.clone()),
        }),
        disks: (!config.disks.is_empty()).then(|| config.disks.iter().map(disk_to).collect()),
        serial: Some(serial_to(&config.serial)),
        numa: (!config.numa.is_empty()).then(|| config.numa.iter().map(numa_to).collect()),
    };
    // Every wire field is a string, number, bool or list of them, so this cannot fail.
    match serde_json::to_string(&wire) {
        Ok(text) => text,
        Err(e) => {
            log::error!("cannot write the VM config as JSON: {e}");
            String::from("{}")
        }
    }
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn cpus_to(cpus: &CpusConfig) -> CpusWire {
    CpusWire {
        boot_vcpus: Some(cpus.boot_vcpus),
        max_vcpus: Some(cpus.boot_vcpus),
        affinity: (!cpus.affinity.is_empty()).then(|| {
            cpus.affinity
                .iter()
                .map(|(vcpu, set)| AffinityWire {
                    vcpu: Some(*vcpu),
                    host_cpus: Some(set.iter().collect()),
                })
                .collect()
        }),
        kvm_pv: Some(kvm_pv_text(cpus.kvm_pv)),
        hyperv: Some(hyperv_text(&cpus.hyperv)),
        pvm_compat: Some(
            match cpus.pvm_compat {
                Toggle::Auto => "auto",
                Toggle::On => "on",
                Toggle::Off => "off",
            }
            .to_string(),
        ),
    }
}

fn memory_to(memory: &MemoryConfig) -> MemoryWire {
    MemoryWire {
        size: Some(memory.size),
        hugepages: Some(memory.hugepages),
        hugepage_size: memory.hugepage_size,
        prefault: Some(memory.prefault),
        thp: match memory.thp {
            Toggle::Auto => None,
            Toggle::On => Some(true),
            Toggle::Off => Some(false),
        },
        shared: Some(memory.shared),
        mergeable: Some(memory.mergeable),
    }
}

fn disk_to(disk: &DiskConfig) -> DiskWire {
    let cpus = disk.iothread_cpus.as_ref().map(|c| format!("cpus:[{c}]"));
    let iothread = match (&disk.iothread, cpus) {
        (Some(name), Some(cpus)) => Some(format!("{name}:{cpus}")),
        (Some(name), None) => Some(name.clone()),
        (None, cpus) => cpus,
    };
    DiskWire {
        path: Some(path_text(&disk.path)),
        readonly: Some(disk.readonly),
        num_queues: Some(u64::from(disk.queues)),
        queue_size: Some(u64::from(disk.queue_size)),
        id: disk.id.clone(),
        serial: disk.serial.clone(),
        cache: Some(
            match disk.cache {
                CacheMode::None => "none",
                CacheMode::Writeback => "writeback",
            }
            .to_string(),
        ),
        iothread,
        numa_node: disk.numa_node,
        lock: Some(disk.lock),
    }
}

fn serial_to(serial: &SerialConfig) -> SerialWire {
    let (mode, file) = match serial {
        SerialConfig::Tty => ("Tty", None),
        SerialConfig::Off => ("Off", None),
        SerialConfig::File(path) => ("File", Some(path_text(path))),
    };
    SerialWire {
        mode: Some(mode.to_string()),
        file,
    }
}

fn numa_to(node: &NumaNodeConfig) -> NumaWire {
    NumaWire {
        guest_numa_id: Some(node.guest_node),
        cpus: Some(node.cpus.iter().collect()),
        memory: Some(node.memory),
        host_numa_node: node.host_node,
    }
}

#[cfg(test)]
mod tests;
