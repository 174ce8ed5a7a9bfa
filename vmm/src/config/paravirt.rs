//! The words a user types to choose paravirtual interfaces (`--cpus kvm_pv=...,hyperv=...`,
//! and the same strings in the JSON API's `cpus`), parsed into arch's plain data
//! ([`KvmPvRequest`], [`HypervConfig`]) and written back for the JSON view.
//!
//! `kvm_pv`: `on` (every feature the host offers), `off` (no features, the signature stays),
//! `hidden` (no KVM leaves at all, QEMU's `kvm=off`) or a comma-separated list of
//! [`KVM_PV_NAMES`]. `hyperv`: `on` (every enlightenment the host supports), `off`, or a
//! comma-separated list of [`HvFeature`] names, with `spinlocks=N` (a u32, decimal or 0x-hex)
//! and `vendor-id=STRING` (1 to [`HYPERV_VENDOR_ID_MAX_LEN`] bytes).

use arch::hyperv::{HvFeature, HypervConfig, HYPERV_DEFAULT_VENDOR_ID, HYPERV_VENDOR_ID_MAX_LEN};
use arch::kvm_pv::{KvmPvFeatures, KvmPvRequest, KVM_PV_NAMES};

/// Errors in a `kvm_pv=` list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvmPvParseError {
    /// The list was empty.
    #[error("empty feature list; give on, off or a comma-separated list of names")]
    Empty,
    /// A name Keel does not know.
    #[error("unknown feature `{name}`; known: {known}")]
    UnknownName {
        /// The name as given.
        name: String,
        /// Every accepted word.
        known: String,
    },
    /// `on`, `off` or `hidden` next to other words.
    #[error("`{0}` cannot be combined with other names")]
    Combined(String),
}

/// Errors in a `hyperv=` list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HypervParseError {
    /// Nothing was given.
    #[error("empty list; give on, off or a comma-separated list of items")]
    EmptyList,
    /// The list had an empty item.
    #[error("empty item in `{0}`")]
    EmptyItem(String),
    /// An item Keel does not know.
    #[error("unknown item `{item}`; known: {known}")]
    UnknownItem {
        /// The item as given.
        item: String,
        /// Every accepted item.
        known: String,
    },
    /// `on` or `off` next to other items.
    #[error("`{0}` cannot be combined with other items")]
    Combined(String),
    /// `spinlocks` or `vendor-id` without `=value`.
    #[error("{0} needs a value ({0}=...)")]
    MissingValue(&'static str),
    /// A value given to an item that takes none.
    #[error("`{0}` takes no value")]
    UnexpectedValue(String),
    /// A spinlock retry count that is not a u32.
    #[error(
        "spinlocks={0} is not a retry count (a u32, decimal or 0x-hex; \
         0xffffffff means never notify)"
    )]
    BadSpinlocks(String),
    /// A vendor id that is empty or longer than 12 bytes.
    #[error("vendor-id `{0}` must be 1 to 12 bytes")]
    BadVendorId(String),
    /// An item given twice.
    #[error("`{0}` is given twice")]
    Duplicate(String),
}

fn known_kvm_pv_names() -> String {
    let mut s = String::from("on, off, hidden");
    for n in KVM_PV_NAMES {
        s.push_str(", ");
        s.push_str(n.name);
    }
    s
}

/// Parses `on`, `off`, `hidden` or a comma-separated list of [`KVM_PV_NAMES`] (each name
/// stands for its required and optional bits).
pub fn parse_kvm_pv(list: &str) -> Result<KvmPvRequest, KvmPvParseError> {
    match list.trim() {
        "" => Err(KvmPvParseError::Empty),
        "on" => Ok(KvmPvRequest::On),
        "off" => Ok(KvmPvRequest::Off),
        "hidden" => Ok(KvmPvRequest::Hidden),
        names => {
            let mut bits = 0;
            for item in names.split(',').map(str::trim) {
                if matches!(item, "on" | "off" | "hidden") {
                    return Err(KvmPvParseError::Combined(item.to_string()));
                }
                let named =
                    KvmPvFeatures::named(item).ok_or_else(|| KvmPvParseError::UnknownName {
                        name: item.to_string(),
                        known: known_kvm_pv_names(),
                    })?;
                bits |= named.bits();
            }
            Ok(KvmPvRequest::List(KvmPvFeatures::from_bits(bits)))
        }
    }
}

/// The `kvm_pv=` text that [`parse_kvm_pv`] turns back into `request`.
pub fn kvm_pv_text(request: KvmPvRequest) -> String {
    match request {
        KvmPvRequest::On => "on".to_string(),
        KvmPvRequest::Off => "off".to_string(),
        KvmPvRequest::Hidden => "hidden".to_string(),
        KvmPvRequest::List(features) => features.names().join(","),
    }
}

fn known_hyperv_items() -> String {
    let mut s = String::from("on, off");
    for f in HvFeature::ALL {
        s.push_str(", ");
        s.push_str(f.name());
        if f == HvFeature::Spinlocks {
            s.push_str("=N");
        }
    }
    s.push_str(", vendor-id=STRING");
    s
}

fn parse_u32(v: &str) -> Result<u32, HypervParseError> {
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| HypervParseError::BadSpinlocks(v.to_string()))
}

/// Parses `on`, `off` or a comma-separated list of items (see the module doc). Dependencies
/// and the host are checked later ([`HypervConfig::check`]).
pub fn parse_hyperv(list: &str) -> Result<HypervConfig, HypervParseError> {
    let list = list.trim();
    match list {
        "on" => return Ok(HypervConfig::on()),
        "off" => return Ok(HypervConfig::off()),
        "" => return Err(HypervParseError::EmptyList),
        _ => {}
    }
    let mut cfg = HypervConfig::off();
    let mut seen: Vec<&str> = Vec::new();
    for item in list.split(',').map(str::trim) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (item, None),
        };
        if key.is_empty() {
            return Err(HypervParseError::EmptyItem(list.to_string()));
        }
        if key == "on" || key == "off" {
            return Err(HypervParseError::Combined(key.to_string()));
        }
        if seen.contains(&key) {
            return Err(HypervParseError::Duplicate(key.to_string()));
        }
        seen.push(key);
        if key == "vendor-id" {
            let id = value.ok_or(HypervParseError::MissingValue("vendor-id"))?;
            if id.is_empty() || id.len() > HYPERV_VENDOR_ID_MAX_LEN {
                return Err(HypervParseError::BadVendorId(id.to_string()));
            }
            cfg = cfg.with_vendor_id(id);
            continue;
        }
        let feature = HvFeature::from_name(key).ok_or_else(|| HypervParseError::UnknownItem {
            item: item.to_string(),
            known: known_hyperv_items(),
        })?;
        match (feature, value) {
            (HvFeature::Spinlocks, None) => {
                return Err(HypervParseError::MissingValue("spinlocks"))
            }
            (HvFeature::Spinlocks, Some(v)) => cfg = cfg.with_spinlocks(parse_u32(v)?),
            (_, Some(_)) => return Err(HypervParseError::UnexpectedValue(item.to_string())),
            (_, None) => {}
        }
        cfg = cfg.with(feature);
    }
    Ok(cfg)
}

/// The `hyperv=` list that [`parse_hyperv`] turns back into `hyperv`.
pub fn hyperv_text(hyperv: &HypervConfig) -> String {
    if hyperv.is_on() {
        return "on".to_string();
    }
    let mut items: Vec<String> = hyperv
        .features()
        .into_iter()
        .map(|f| match f {
            HvFeature::Spinlocks => format!("{}={}", f.name(), hyperv.spinlocks()),
            _ => f.name().to_string(),
        })
        .collect();
    if hyperv.vendor_id() != HYPERV_DEFAULT_VENDOR_ID {
        items.push(format!("vendor-id={}", hyperv.vendor_id()));
    }
    if items.is_empty() {
        "off".to_string()
    } else {
        items.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arch::hyperv::SPINLOCKS_NEVER_NOTIFY;

    const fn bit(n: u32) -> u32 {
        1 << n
    }

    #[test]
    fn every_kvm_pv_name_parses_to_its_bits() {
        assert_eq!(KVM_PV_NAMES.len(), 10);
        for n in KVM_PV_NAMES {
            assert_eq!(
                parse_kvm_pv(n.name).unwrap(),
                KvmPvRequest::List(KvmPvFeatures::from_bits(n.required | n.optional)),
                "{}",
                n.name
            );
        }
        assert_eq!(
            parse_kvm_pv("kvmclock,pv_unhalt,async_pf").unwrap(),
            KvmPvRequest::List(KvmPvFeatures::from_bits(
                bit(0) | bit(3) | bit(24) | bit(7) | bit(4) | bit(10) | bit(14)
            ))
        );
    }

    #[test]
    fn kvm_pv_on_off_and_lists() {
        assert_eq!(parse_kvm_pv("on").unwrap(), KvmPvRequest::On);
        assert_eq!(parse_kvm_pv(" off ").unwrap(), KvmPvRequest::Off);
        let list = parse_kvm_pv("kvmclock, pv_ipi,pv_eoi").unwrap();
        let KvmPvRequest::List(set) = list else {
            panic!("not a list: {list:?}");
        };
        assert_eq!(set.names(), ["kvmclock", "pv_eoi", "pv_ipi"]);
        assert_eq!(parse_kvm_pv(""), Err(KvmPvParseError::Empty));
        assert_eq!(
            parse_kvm_pv("kvmclock,off"),
            Err(KvmPvParseError::Combined("off".into()))
        );
    }

    #[test]
    fn unknown_kvm_pv_name_lists_known_names() {
        let err = parse_kvm_pv("kvmclock,pv_spinlocks").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`pv_spinlocks`"), "{msg}");
        for n in KVM_PV_NAMES {
            assert!(msg.contains(n.name), "{msg} lacks {}", n.name);
        }
        assert!(msg.contains("on, off, hidden"), "{msg}");
        assert!(parse_kvm_pv("kvmclock,,pv_eoi").is_err());
    }

    #[test]
    fn hidden_parses_alone_only() {
        assert_eq!(parse_kvm_pv(" hidden ").unwrap(), KvmPvRequest::Hidden);
        for bad in ["hidden,kvmclock", "kvmclock,hidden", "pv_eoi, hidden"] {
            assert_eq!(
                parse_kvm_pv(bad),
                Err(KvmPvParseError::Combined("hidden".into())),
                "{bad}"
            );
        }
        let err = parse_kvm_pv("hide").unwrap_err().to_string();
        assert!(err.contains("on, off, hidden, kvmclock"), "{err}");
    }

    #[test]
    fn kvm_pv_text_round_trips() {
        for text in ["on", "off", "hidden", "kvmclock,pv_eoi"] {
            let request = parse_kvm_pv(text).unwrap();
            assert_eq!(kvm_pv_text(request), text);
            assert_eq!(parse_kvm_pv(&kvm_pv_text(request)).unwrap(), request);
        }
    }

    #[test]
    fn hyperv_text_round_trips() {
        for text in [
            "on",
            "off",
            "relaxed,vapic",
            "relaxed,spinlocks=4095,vpindex",
            "vpindex,vendor-id=KeelHv",
        ] {
            let cfg = parse_hyperv(text).unwrap();
            assert_eq!(hyperv_text(&cfg), text);
            assert_eq!(parse_hyperv(&hyperv_text(&cfg)).unwrap(), cfg);
        }
        assert_eq!(parse_hyperv("spinlocks=4095").unwrap().spinlocks(), 4095);
        assert!(parse_hyperv("on").unwrap().is_on());
    }

    #[test]
    fn parse_every_name() {
        for f in HvFeature::ALL {
            let item = if f == HvFeature::Spinlocks {
                "spinlocks=100".to_string()
            } else {
                f.name().to_string()
            };
            let cfg = parse_hyperv(&item).unwrap();
            assert_eq!(cfg.features(), [f], "{item}");
            assert_eq!(HvFeature::from_name(f.name()), Some(f));
        }
        let cfg = parse_hyperv(" relaxed , vapic,vpindex,synic ").unwrap();
        assert_eq!(cfg.names(), ["relaxed", "vapic", "vpindex", "synic"]);
        assert_eq!(parse_hyperv("off").unwrap(), HypervConfig::off());
        assert_eq!(
            parse_hyperv("off").unwrap().spinlocks(),
            SPINLOCKS_NEVER_NOTIFY
        );
    }

    #[test]
    fn parse_errors() {
        let err = parse_hyperv("relaxed,hv-time").unwrap_err().to_string();
        assert!(
            err.starts_with("unknown item `hv-time`; known: on, off, relaxed"),
            "{err}"
        );
        for f in HvFeature::ALL {
            assert!(err.contains(f.name()), "{err} lacks {}", f.name());
        }
        assert!(
            err.contains("spinlocks=N") && err.contains("vendor-id=STRING"),
            "{err}"
        );
        let cases = [
            (
                "",
                "empty list; give on, off or a comma-separated list of items",
            ),
            ("relaxed,,vapic", "empty item in `relaxed,,vapic`"),
            ("on,relaxed", "`on` cannot be combined with other items"),
            ("spinlocks", "spinlocks needs a value (spinlocks=...)"),
            ("vendor-id", "vendor-id needs a value (vendor-id=...)"),
            ("relaxed=1", "`relaxed=1` takes no value"),
            ("relaxed,relaxed", "`relaxed` is given twice"),
            (
                "vendor-id=0123456789abc",
                "vendor-id `0123456789abc` must be 1 to 12 bytes",
            ),
            ("vendor-id=", "vendor-id `` must be 1 to 12 bytes"),
        ];
        for (input, message) in cases {
            assert_eq!(
                parse_hyperv(input).unwrap_err().to_string(),
                message,
                "{input}"
            );
        }
        for bad in ["-1", "0x1_0000_0000", "4294967296", "lots", "0x"] {
            let err = parse_hyperv(&format!("spinlocks={bad}")).unwrap_err();
            assert_eq!(err, HypervParseError::BadSpinlocks(bad.to_string()));
        }
        assert_eq!(
            parse_hyperv("spinlocks=0xffffffff").unwrap().spinlocks(),
            u32::MAX
        );
        assert!(parse_hyperv("vendor-id=123456789abc").is_ok());
    }
}
