//! `--memory size=S[,hugepages=on][,hugepage_size=2M|1G][,prefault=on][,thp=on|off]
//! [,shared=on][,mergeable=on]`: how much guest RAM and how the host backs it.

use super::{get, parse_group, parse_size, ConfigError, Toggle};

/// The small page size.
pub const PAGE_SIZE: u64 = 4096;
/// The default huge page size.
pub const HUGEPAGE_2M: u64 = 2 << 20;
/// The gigantic page size.
pub const HUGEPAGE_1G: u64 = 1 << 30;

/// `--memory`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Guest RAM in bytes.
    pub size: u64,
    /// Back guest RAM with hugetlb pages from the host's pool.
    pub hugepages: bool,
    /// Huge page size (2 MiB or 1 GiB); `None` means 2 MiB. Needs `hugepages`.
    pub hugepage_size: Option<u64>,
    /// Fault every page in before the guest starts.
    pub prefault: bool,
    /// Transparent huge pages for 4K-page memory (auto: on).
    pub thp: Toggle,
    /// A shared mapping of a memfd (for vhost-user style sharing) instead of private memory.
    pub shared: bool,
    /// Let KSM merge identical guest pages.
    pub mergeable: bool,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            size: 512 << 20,
            hugepages: false,
            hugepage_size: None,
            prefault: false,
            thp: Toggle::Auto,
            shared: false,
            mergeable: false,
        }
    }
}

fn on_off(key: &'static str, value: &str) -> Result<bool, ConfigError> {
    match Toggle::parse("memory", key, value)? {
        Toggle::On => Ok(true),
        Toggle::Off => Ok(false),
        Toggle::Auto => Err(ConfigError::InvalidValue {
            option: "memory",
            key,
            value: value.to_string(),
            reason: "expected on or off",
        }),
    }
}

fn bad_hugepage_size(value: &str) -> ConfigError {
    ConfigError::InvalidValue {
        option: "memory",
        key: "hugepage_size",
        value: value.to_string(),
        reason: "expected 2M or 1G",
    }
}

/// Human form of a page size: "4 KiB", "2 MiB", "1 GiB".
pub fn page_size_name(size: u64) -> String {
    match size {
        s if s >= 1 << 30 && s.is_multiple_of(1 << 30) => format!("{} GiB", s >> 30),
        s if s >= 1 << 20 && s.is_multiple_of(1 << 20) => format!("{} MiB", s >> 20),
        s => format!("{} KiB", s >> 10),
    }
}

impl MemoryConfig {
    const KEYS: &'static [&'static str] = &[
        "size",
        "hugepages",
        "hugepage_size",
        "prefault",
        "thp",
        "shared",
        "mergeable",
    ];

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
        let mut cfg = MemoryConfig {
            size,
            ..Default::default()
        };
        if let Some(v) = get(&pairs, "hugepages") {
            cfg.hugepages = on_off("hugepages", v)?;
        }
        if let Some(v) = get(&pairs, "hugepage_size") {
            cfg.hugepage_size = Some(parse_size(v).ok_or_else(|| bad_hugepage_size(v))?);
        }
        if let Some(v) = get(&pairs, "prefault") {
            cfg.prefault = on_off("prefault", v)?;
        }
        if let Some(v) = get(&pairs, "thp") {
            cfg.thp = Toggle::parse("memory", "thp", v)?;
        }
        if let Some(v) = get(&pairs, "shared") {
            cfg.shared = on_off("shared", v)?;
        }
        if let Some(v) = get(&pairs, "mergeable") {
            cfg.mergeable = on_off("mergeable", v)?;
        }
        Ok(cfg)
    }

    /// The host page size backing guest RAM.
    pub fn page_size(&self) -> u64 {
        if self.hugepages {
            self.hugepage_size.unwrap_or(HUGEPAGE_2M)
        } else {
            PAGE_SIZE
        }
    }

    /// Whether 4K-page memory is advised to use transparent huge pages.
    pub fn use_thp(&self) -> bool {
        !self.hugepages && self.thp != Toggle::Off
    }

    /// Checks the size against the minimum, the page size and `host_ram` bytes of host RAM,
    /// and that the options go together.
    pub fn validate(&self, host_ram: Option<u64>) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::BadMemorySize {
            size: self.size,
            reason,
        };
        if let Some(size) = self
            .hugepage_size
            .filter(|&s| s != HUGEPAGE_2M && s != HUGEPAGE_1G)
        {
            return Err(bad_hugepage_size(&page_size_name(size)));
        }
        if self.hugepage_size.is_some() && !self.hugepages {
            return Err(ConfigError::Memory(
                "hugepage_size= needs hugepages=on".into(),
            ));
        }
        if self.hugepages && self.thp == Toggle::On {
            return Err(ConfigError::Memory(
                "thp=on applies to 4 KiB-page memory; hugepages=on already uses huge pages".into(),
            ));
        }
        if self.hugepages && self.mergeable {
            return Err(ConfigError::Memory(
                "mergeable=on cannot work with hugepages=on: KSM does not merge hugetlb pages"
                    .into(),
            ));
        }
        if self.size < arch::memory_map::MIN_MEMORY {
            return Err(bad(format!(
                "too small; a guest needs at least {} MiB",
                arch::memory_map::MIN_MEMORY >> 20
            )));
        }
        let page = self.page_size();
        if !self.size.is_multiple_of(page) {
            return Err(bad(format!(
                "not a multiple of the {} page size",
                page_size_name(page)
            )));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_message_lists_known_keys() {
        let err = MemoryConfig::parse("sise=1G").unwrap_err().to_string();
        assert_eq!(
            err,
            "--memory: unknown key 'sise' (known: size, hugepages, hugepage_size, prefault, thp, shared, mergeable)"
        );
    }

    fn sized(size: u64) -> MemoryConfig {
        MemoryConfig {
            size,
            ..Default::default()
        }
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
        assert!(sized((64 << 20) + 1).validate(None).is_err());
        assert!(sized(8 << 30).validate(Some(4 << 30)).is_err());
        assert!(sized(1 << 30).validate(Some(4 << 30)).is_ok());
    }

    #[test]
    fn backing_options_parse() {
        let m = MemoryConfig::parse(
            "size=2G,hugepages=on,hugepage_size=1G,prefault=on,thp=off,shared=on",
        )
        .unwrap();
        assert!(m.hugepages && m.prefault && m.shared && !m.mergeable);
        assert_eq!(m.page_size(), HUGEPAGE_1G);
        assert_eq!(m.thp, Toggle::Off);
        assert!(!m.use_thp());
        let m = MemoryConfig::parse("size=1G,mergeable=on").unwrap();
        assert!(m.mergeable && m.use_thp());
        assert_eq!(m.page_size(), PAGE_SIZE);
        assert_eq!(
            MemoryConfig::parse("size=1G,hugepages=on")
                .unwrap()
                .page_size(),
            HUGEPAGE_2M
        );
        for (bad, key) in [
            ("size=1G,hugepages=maybe", "hugepages"),
            ("size=1G,hugepage_size=4Q", "hugepage_size"),
            ("size=1G,prefault=auto", "prefault"),
            ("size=1G,thp=yes", "thp"),
        ] {
            let err = MemoryConfig::parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("'{key}'")), "{bad}: {err}");
        }
    }

    #[test]
    fn options_that_conflict_or_misalign_are_refused() {
        let check = |input: &str, needle: &str| {
            let err = MemoryConfig::parse(input)
                .unwrap()
                .validate(None)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("--memory: "), "{input}: {err}");
            assert!(err.contains(needle), "{input}: {err}");
        };
        check("size=1G,hugepage_size=2M", "needs hugepages=on");
        check(
            "size=1G,hugepages=on,hugepage_size=4M",
            "'4 MiB' for 'hugepage_size': expected 2M or 1G",
        );
        check("size=1G,hugepages=on,thp=on", "thp=on");
        check("size=1G,hugepages=on,mergeable=on", "KSM");
        check("size=1025M,hugepages=on", "2 MiB page size");
        check(
            "size=1536M,hugepages=on,hugepage_size=1G",
            "not a multiple of the 1 GiB page size",
        );
        check("size=4097K", "4 KiB page size");
        assert!(MemoryConfig::parse("size=2G,hugepages=on,hugepage_size=1G")
            .unwrap()
            .validate(None)
            .is_ok());
        assert_eq!(page_size_name(4096), "4 KiB");
        assert_eq!(page_size_name(2 << 20), "2 MiB");
        assert_eq!(page_size_name(1 << 30), "1 GiB");
    }
}
