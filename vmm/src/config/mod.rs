//! VM configuration: Cloud-Hypervisor-style `key=value,...` option groups parsed into typed
//! structs, and validation that catches bad input before any VM resource is created.

use std::path::PathBuf;

mod disk;

pub use disk::{CacheMode, DiskConfig, MAX_DISKS};

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
    /// Command line too long.
    #[error("--cmdline: {len} bytes is longer than the {max} bytes Keel can pass")]
    CmdlineTooLong {
        /// Length given.
        len: usize,
        /// Limit.
        max: usize,
    },
}

/// Splits `input` (`k=v,k=v`) into pairs, checking keys against `known`.
pub(crate) fn parse_group<'a>(
    option: &'static str,
    input: &'a str,
    known: &'static [&'static str],
) -> Result<Vec<(&'a str, &'a str)>, ConfigError> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for item in input.split(',').filter(|s| !s.is_empty()) {
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

/// `--cpus boot=N[,pvm_compat=auto|on|off]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpusConfig {
    /// vCPUs started at boot.
    pub boot_vcpus: u32,
    /// Hide CPUID features the PVM emulator cannot run (auto: when the host is PVM).
    pub pvm_compat: Toggle,
}

impl Default for CpusConfig {
    fn default() -> Self {
        CpusConfig {
            boot_vcpus: 1,
            pvm_compat: Toggle::Auto,
        }
    }
}

impl CpusConfig {
    const KEYS: &'static [&'static str] = &["boot", "pvm_compat"];

    /// Parses the `--cpus` group.
    pub fn parse(input: &str) -> Result<Self, ConfigError> {
        let pairs = parse_group("cpus", input, Self::KEYS)?;
        let mut cfg = CpusConfig::default();
        if let Some(v) = get(&pairs, "boot") {
            cfg.boot_vcpus = v.parse().map_err(|_| ConfigError::InvalidValue {
                option: "cpus",
                key: "boot",
                value: v.to_string(),
                reason: "expected a number of vCPUs",
            })?;
        }
        if let Some(v) = get(&pairs, "pvm_compat") {
            cfg.pvm_compat = Toggle::parse("cpus", "pvm_compat", v)?;
        }
        Ok(cfg)
    }

    /// Checks the count against `max` (the host's and Keel's limit).
    pub fn validate(&self, max: u32, why: &'static str) -> Result<(), ConfigError> {
        if self.boot_vcpus == 0 {
            return Err(ConfigError::ZeroVcpus);
        }
        if self.boot_vcpus > max {
            return Err(ConfigError::TooManyVcpus {
                requested: self.boot_vcpus,
                max,
                why,
            });
        }
        Ok(())
    }
}

/// `--memory size=S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Guest RAM in bytes.
    pub size: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { size: 512 << 20 }
    }
}

impl MemoryConfig {
    const KEYS: &'static [&'static str] = &["size"];

    /// Parses the `--memory` group.
    pub fn parse(input: &str) -> Result<Self, ConfigError> {
        let pairs = parse_group("memory", input, Self::KEYS)?;
        let v = get(&pairs, "size").ok_or(ConfigError::MissingKey {
            option: "memory",
            key: "size",
        })?;
        let size = parse_size(v).ok_or_else(|| ConfigError::InvalidValue {
            option: "memory",
            key: "size",
            value: v.to_string(),
            reason: "expected a size such as 512M or 2G",
        })?;
        Ok(MemoryConfig { size })
    }

    /// Checks the size against the minimum, page alignment and `host_ram` bytes of host RAM.
    pub fn validate(&self, host_ram: Option<u64>) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::BadMemorySize {
            size: self.size,
            reason,
        };
        if self.size < arch::memory_map::MIN_MEMORY {
            return Err(bad(format!(
                "too small; a guest needs at least {} MiB",
                arch::memory_map::MIN_MEMORY >> 20
            )));
        }
        if !self.size.is_multiple_of(4096) {
            return Err(bad("not a multiple of the 4 KiB page size".into()));
        }
        if let Some(host) = host_ram {
            if self.size > host {
                return Err(bad(format!(
                    "more than the host's {} MiB of RAM",
                    host >> 20
                )));
            }
        }
        Ok(())
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
    /// Parses `--serial`.
    pub fn parse(input: &str) -> Result<Self, ConfigError> {
        match input {
            "tty" => Ok(SerialConfig::Tty),
            "off" | "null" => Ok(SerialConfig::Off),
            other => match other.split_once('=') {
                Some(("file", path)) if !path.is_empty() => {
                    Ok(SerialConfig::File(PathBuf::from(path)))
                }
                Some(("file", _)) => Err(ConfigError::InvalidValue {
                    option: "serial",
                    key: "file",
                    value: String::new(),
                    reason: "expected a path",
                }),
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

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PayloadConfig {
    /// Kernel image: ELF vmlinux (64-bit entry or PVH note) or bzImage; detected.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
}

impl PayloadConfig {
    /// Checks that the files exist and are regular files and the command line fits.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
}

impl VmConfig {
    /// Checks what can be checked without a host: every disk, and the disks together.
    pub fn validate_disks(&self) -> Result<(), ConfigError> {
        disk::validate_all(&self.disks)
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
    fn cpus_group() {
        assert_eq!(CpusConfig::parse("boot=2").unwrap().boot_vcpus, 2);
        let c = CpusConfig::parse("boot=1,pvm_compat=off").unwrap();
        assert_eq!(c.pvm_compat, Toggle::Off);
        assert!(matches!(
            CpusConfig::parse("boot=x"),
            Err(ConfigError::InvalidValue { .. })
        ));
        assert!(matches!(
            CpusConfig::parse("bot=2"),
            Err(ConfigError::UnknownKey { .. })
        ));
        assert!(matches!(
            CpusConfig::parse("boot"),
            Err(ConfigError::NotKeyValue { .. })
        ));
        assert!(matches!(
            CpusConfig::parse("boot=1,boot=2"),
            Err(ConfigError::DuplicateKey { .. })
        ));
        assert_eq!(
            CpusConfig::parse("boot=0").unwrap().validate(8, "KVM"),
            Err(ConfigError::ZeroVcpus)
        );
        assert!(matches!(
            CpusConfig::parse("boot=9").unwrap().validate(8, "KVM"),
            Err(ConfigError::TooManyVcpus {
                requested: 9,
                max: 8,
                ..
            })
        ));
    }

    #[test]
    fn unknown_key_message_lists_known_keys() {
        let err = MemoryConfig::parse("sise=1G").unwrap_err().to_string();
        assert_eq!(err, "--memory: unknown key 'sise' (known: size)");
    }

    #[test]
    fn memory_group() {
        assert_eq!(MemoryConfig::parse("size=1G").unwrap().size, 1 << 30);
        assert!(matches!(
            MemoryConfig::parse(""),
            Err(ConfigError::MissingKey { .. })
        ));
        assert!(MemoryConfig::parse("size=0")
            .unwrap()
            .validate(None)
            .is_err());
        assert!(MemoryConfig {
            size: (64 << 20) + 1
        }
        .validate(None)
        .is_err());
        assert!(MemoryConfig { size: 8 << 30 }
            .validate(Some(4 << 30))
            .is_err());
        assert!(MemoryConfig { size: 1 << 30 }
            .validate(Some(4 << 30))
            .is_ok());
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
        };
        assert!(matches!(
            long.validate(),
            Err(ConfigError::CmdlineTooLong { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
