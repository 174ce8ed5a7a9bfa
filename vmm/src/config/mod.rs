//! VM configuration: Cloud-Hypervisor-style `key=value,...` option groups parsed into typed
//! structs, and validation that catches bad input before any VM resource is created.

use std::path::PathBuf;

mod cpus;
mod disk;
mod json;
mod memory;
mod numa;
mod paravirt;

pub use cpus::CpusConfig;
pub use disk::{CacheMode, DiskConfig, MAX_DISKS};
pub use json::{vm_config_from_json, vm_config_to_json, JsonConfigError};
pub use memory::{page_size_name, MemoryConfig};
pub use numa::{NumaNodeConfig, MAX_NUMA_NODES};
pub use paravirt::{HypervParseError, KvmPvParseError};

/// Errors in user-supplied configuration. Each message names the option and the bad value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A key the option group does not know.
    #[error("--{option}: unknown key '{key}' (known: {})", .known.join(", "))]
    UnknownKey {
        /// Option name.
        option: &'static str,
        /// The unknown key.
        key: String,
        /// The keys it accepts.
        known: &'static [&'static str],
    },
    /// A group item that is not `key=value`.
    #[error("--{option}: '{item}' is not of the form key=value")]
    NotKeyValue {
        /// Option name.
        option: &'static str,
        /// The item.
        item: String,
    },
    /// A key given twice.
    #[error("--{option}: key '{key}' given more than once")]
    DuplicateKey {
        /// Option name.
        option: &'static str,
        /// The key.
        key: String,
    },
    /// A required key is missing.
    #[error("--{option}: missing '{key}='")]
    MissingKey {
        /// Option name.
        option: &'static str,
        /// The key.
        key: &'static str,
    },
    /// A value that does not parse.
    #[error("--{option}: invalid value '{value}' for '{key}': {reason}")]
    InvalidValue {
        /// Option name.
        option: &'static str,
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// Why it is wrong.
        reason: &'static str,
    },
    /// No vCPUs.
    #[error("--cpus: boot=0: a VM needs at least one vCPU")]
    ZeroVcpus,
    /// Too many vCPUs for this host or for Keel.
    #[error("--cpus: boot={requested}: this host allows at most {max} vCPUs ({why})")]
    TooManyVcpus {
        /// Requested count.
        requested: u32,
        /// Limit.
        max: u32,
        /// Where the limit comes from.
        why: &'static str,
    },
    /// Memory size out of range.
    #[error("--memory: size={size}: {reason}")]
    BadMemorySize {
        /// Requested size in bytes.
        size: u64,
        /// Why it is refused.
        reason: String,
    },
    /// A file that cannot be used.
    #[error("--{option}: {path}: {reason}")]
    BadFile {
        /// Option name.
        option: &'static str,
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A problem with the set of disks as a whole.
    #[error("--disk: {0}")]
    Disks(String),
    /// `--firmware` given together with a kernel's options.
    #[error("--firmware: the firmware boots the OS from a disk; it takes no {0}")]
    FirmwareWithKernel(&'static str),
    /// vCPU options that do not go together.
    #[error("--cpus: {0}")]
    Cpus(String),
    /// A `kvm_pv=` list Keel cannot take.
    #[error("--cpus: kvm_pv: {0}")]
    KvmPv(#[source] paravirt::KvmPvParseError),
    /// A `hyperv=` list Keel cannot take.
    #[error("--cpus: hyperv: {0}")]
    Hyperv(#[source] paravirt::HypervParseError),
    /// Memory options that do not go together.
    #[error("--memory: {0}")]
    Memory(String),
    /// Guest NUMA nodes that do not fit the vCPUs, the memory or each other.
    #[error("--numa: {0}")]
    Numa(String),
    /// Command line too long.
    #[error("--cmdline: {len} bytes is longer than the {max} bytes Keel can pass")]
    CmdlineTooLong {
        /// Length given.
        len: usize,
        /// Limit.
        max: usize,
    },
}

/// Splits `input` at the commas outside square brackets, so that values such as
/// `affinity=[0@[2,3],1@[4]]` or `cpus=[0,2-3]` stay whole.
pub(crate) fn split_top_level(input: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0usize;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in input.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts.into_iter()
}

/// Removes one pair of enclosing square brackets, if present.
pub(crate) fn strip_brackets(value: &str) -> &str {
    value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value)
}

/// Splits `input` (`k=v,k=v`) into pairs, checking keys against `known`.
pub(crate) fn parse_group<'a>(
    option: &'static str,
    input: &'a str,
    known: &'static [&'static str],
) -> Result<Vec<(&'a str, &'a str)>, ConfigError> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for item in split_top_level(input).filter(|s| !s.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::NotKeyValue {
                option,
                item: item.to_string(),
            })?;
        if !known.contains(&key) {
            return Err(ConfigError::UnknownKey {
                option,
                key: key.to_string(),
                known,
            });
        }
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(ConfigError::DuplicateKey {
                option,
                key: key.to_string(),
            });
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

pub(crate) fn get<'a>(pairs: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// Parses a size: plain bytes, or with a K/M/G/T suffix (powers of 1024, case-insensitive,
/// optional trailing 'B' or 'iB').
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("ib"))
        .or_else(|| {
            t.strip_suffix(['B', 'b'])
                .filter(|s| s.ends_with(char::is_alphabetic))
        })
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 10),
        'm' | 'M' => (&t[..t.len() - 1], 20),
        'g' | 'G' => (&t[..t.len() - 1], 30),
        't' | 'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// On/off/auto switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Toggle {
    /// Decided from the host.
    #[default]
    Auto,
    /// Forced on.
    On,
    /// Forced off.
    Off,
}

impl Toggle {
    pub(crate) fn parse(
        option: &'static str,
        key: &'static str,
        value: &str,
    ) -> Result<Self, ConfigError> {
        match value {
            "auto" => Ok(Toggle::Auto),
            "on" | "true" => Ok(Toggle::On),
            "off" | "false" => Ok(Toggle::Off),
            _ => Err(ConfigError::InvalidValue {
                option,
                key,
                value: value.to_string(),
                reason: "expected on, off or auto",
            }),
        }
    }
}

/// Where the guest's COM1 goes: `--serial tty|file=PATH|off`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialConfig {
    /// Keel's stdout (and stdin for input).
    #[default]
    Tty,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded.
    Off,
}

impl SerialConfig {
    /// `file` mode without a path.
    pub(crate) fn missing_file() -> ConfigError {
        ConfigError::InvalidValue {
            option: "serial",
            key: "file",
            value: String::new(),
            reason: "expected a path",
        }
    }

    /// Parses `--serial`.
    pub fn parse(input: &str) -> Result<Self, ConfigError> {
        match input {
            "tty" => Ok(SerialConfig::Tty),
            "off" | "null" => Ok(SerialConfig::Off),
            other => match other.split_once('=') {
                Some(("file", path)) if !path.is_empty() => {
                    Ok(SerialConfig::File(PathBuf::from(path)))
                }
                Some(("file", _)) => Err(Self::missing_file()),
                _ => Err(ConfigError::InvalidValue {
                    option: "serial",
                    key: "mode",
                    value: other.to_string(),
                    reason: "expected tty, off or file=PATH",
                }),
            },
        }
    }
}

/// What to boot: a kernel (with its initramfs and command line) or a firmware.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PayloadConfig {
    /// Kernel image: ELF vmlinux (64-bit entry or PVH note) or bzImage; detected. Empty when
    /// `firmware` boots the guest.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// A PVH firmware (edk2's CLOUDHV.fd) booted instead of a kernel: it finds its OS on the
    /// disks itself, so `kernel`, `initramfs` and `cmdline` stay empty.
    pub firmware: Option<PathBuf>,
}

impl PayloadConfig {
    /// Checks that the files exist and are regular files, that a firmware comes alone and the
    /// command line fits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(firmware) = &self.firmware {
            if !self.kernel.as_os_str().is_empty() || self.initramfs.is_some() {
                return Err(ConfigError::FirmwareWithKernel("a kernel or an initramfs"));
            }
            if !self.cmdline.is_empty() {
                return Err(ConfigError::FirmwareWithKernel("a kernel command line"));
            }
            return check_file("firmware", firmware);
        }
        check_file("kernel", &self.kernel)?;
        if let Some(initramfs) = &self.initramfs {
            check_file("initramfs", initramfs)?;
        }
        let max = arch::layout::CMDLINE_MAX_SIZE - 1;
        if self.cmdline.len() > max {
            return Err(ConfigError::CmdlineTooLong {
                len: self.cmdline.len(),
                max,
            });
        }
        Ok(())
    }
}

fn check_file(option: &'static str, path: &std::path::Path) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::BadFile {
        option,
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() == 0 {
        return Err(bad("file is empty".into()));
    }
    Ok(())
}

/// A whole VM's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmConfig {
    /// vCPUs.
    pub cpus: CpusConfig,
    /// Guest RAM.
    pub memory: MemoryConfig,
    /// Kernel, initramfs, command line.
    pub payload: PayloadConfig,
    /// COM1 wiring.
    pub serial: SerialConfig,
    /// virtio-blk disks, in PCI slot order.
    pub disks: Vec<DiskConfig>,
    /// Guest NUMA nodes (none: one node, no SRAT).
    pub numa: Vec<NumaNodeConfig>,
}

impl VmConfig {
    /// Checks what can be checked without a host: every disk, and the disks together.
    pub fn validate_disks(&self) -> Result<(), ConfigError> {
        disk::validate_all(&self.disks)?;
        if let Some((i, d)) = self.disks.iter().enumerate().find(|(_, d)| {
            d.numa_node
                .is_some_and(|n| n as usize >= self.numa.len().max(1))
        }) {
            return Err(ConfigError::Disks(format!(
                "{}: numa_node={} is not a guest node",
                d.name(i),
                d.numa_node.unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// Checks the guest NUMA nodes against the vCPUs and memory.
    pub fn validate_numa(&self) -> Result<(), ConfigError> {
        numa::validate_nodes(&self.numa, &self.cpus, &self.memory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("64KB"), Some(64 << 10));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        for bad in [
            "",
            "M",
            "-1M",
            "1.5G",
            "12X",
            "99999999999999999999",
            "16777216T",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn serial_modes() {
        assert_eq!(SerialConfig::parse("tty").unwrap(), SerialConfig::Tty);
        assert_eq!(SerialConfig::parse("off").unwrap(), SerialConfig::Off);
        assert_eq!(
            SerialConfig::parse("file=/tmp/x").unwrap(),
            SerialConfig::File("/tmp/x".into())
        );
        assert!(SerialConfig::parse("file=").is_err());
        assert!(SerialConfig::parse("socket=/x").is_err());
    }

    #[test]
    fn payload_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("keel-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        let p = |k: &std::path::Path| PayloadConfig {
            kernel: k.to_path_buf(),
            ..Default::default()
        };
        assert!(p(&dir.join("missing")).validate().is_err());
        assert!(p(&dir).validate().is_err());
        assert!(p(&empty).validate().is_err());
        let long = PayloadConfig {
            kernel: std::env::current_exe().unwrap(),
            cmdline: "x".repeat(arch::layout::CMDLINE_MAX_SIZE),
            initramfs: None,
            firmware: None,
        };
        assert!(matches!(
            long.validate(),
            Err(ConfigError::CmdlineTooLong { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn firmware_comes_without_kernel_options() {
        let exe = std::env::current_exe().unwrap();
        let fw = PayloadConfig {
            firmware: Some(exe.clone()),
            ..Default::default()
        };
        assert!(fw.validate().is_ok());
        let missing = PayloadConfig {
            firmware: Some("/nonexistent/CLOUDHV.fd".into()),
            ..Default::default()
        };
        assert!(matches!(
            missing.validate(),
            Err(ConfigError::BadFile {
                option: "firmware",
                ..
            })
        ));
        for with in [
            PayloadConfig {
                kernel: exe.clone(),
                ..fw.clone()
            },
            PayloadConfig {
                initramfs: Some(exe.clone()),
                ..fw.clone()
            },
            PayloadConfig {
                cmdline: "console=ttyS0".into(),
                ..fw.clone()
            },
        ] {
            assert!(matches!(
                with.validate(),
                Err(ConfigError::FirmwareWithKernel(_))
            ));
        }
    }
}
