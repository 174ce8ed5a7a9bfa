//! `--cpus boot=N[,affinity=[0@[2,3],1@[4]]][,kvm_pv=on|off|hidden|[LIST]]
//! [,hyperv=on|off|[LIST]][,pvm_compat=auto|on|off]`: how many vCPUs boot, which host CPUs each
//! may run on (Cloud Hypervisor's affinity syntax), and the paravirtual interfaces they see.
//! `kvm_pv=hidden` leaves out KVM's CPUID leaves altogether (QEMU's `kvm=off`); the `kvm_pv`
//! and `hyperv` vocabularies are [`super::paravirt`]'s.

use super::paravirt::{parse_hyperv, parse_kvm_pv};
use super::{get, parse_group, split_top_level, strip_brackets, ConfigError, Toggle};
use crate::placement::CpuSet;
use arch::hyperv::HypervConfig;
use arch::kvm_pv::KvmPvRequest;

/// `--cpus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpusConfig {
    /// vCPUs started at boot.
    pub boot_vcpus: u32,
    /// Explicit host CPUs per vCPU index; vCPUs not listed follow the NUMA policy.
    pub affinity: Vec<(u32, CpuSet)>,
    /// KVM paravirtual features (CPUID 0x40000001): every one the host offers by default;
    /// `Hidden` leaves out KVM's leaves, signature included.
    pub kvm_pv: KvmPvRequest,
    /// Hyper-V enlightenments: off by default.
    pub hyperv: HypervConfig,
    /// Hide CPUID features the PVM emulator cannot run (auto: when the host is PVM).
    pub pvm_compat: Toggle,
}

impl Default for CpusConfig {
    fn default() -> Self {
        CpusConfig {
            boot_vcpus: 1,
            affinity: Vec::new(),
            kvm_pv: KvmPvRequest::On,
            hyperv: HypervConfig::off(),
            pvm_compat: Toggle::Auto,
        }
    }
}

fn invalid(key: &'static str, value: &str, reason: &'static str) -> ConfigError {
    ConfigError::InvalidValue {
        option: "cpus",
        key,
        value: value.to_string(),
        reason,
    }
}

/// Checks one affinity entry against the ones before it; the reason is shared by
/// `--cpus affinity=` and the JSON `cpus.affinity[]`.
pub(crate) fn check_affinity_entry(
    vcpu: u32,
    cpus: &CpuSet,
    earlier: &[(u32, CpuSet)],
) -> Result<(), &'static str> {
    if cpus.is_empty() {
        return Err("a vCPU needs at least one host CPU");
    }
    if earlier.iter().any(|(v, _)| *v == vcpu) {
        return Err("vCPU listed twice");
    }
    Ok(())
}

/// Parses `[0@[2,3],1@[4-5]]` into `(vcpu, host cpus)` pairs.
fn parse_affinity(value: &str) -> Result<Vec<(u32, CpuSet)>, ConfigError> {
    const SYNTAX: &str = "expected [VCPU@[HOST_CPUS],...] such as [0@[2,3],1@[4]]";
    if !(value.starts_with('[') && value.ends_with(']')) {
        return Err(invalid("affinity", value, SYNTAX));
    }
    let mut pairs: Vec<(u32, CpuSet)> = Vec::new();
    for item in split_top_level(strip_brackets(value)).filter(|s| !s.is_empty()) {
        let (vcpu, cpus) = item
            .split_once('@')
            .ok_or_else(|| invalid("affinity", item, SYNTAX))?;
        let vcpu: u32 = vcpu
            .parse()
            .map_err(|_| invalid("affinity", item, "expected a vCPU index before '@'"))?;
        let cpus = CpuSet::parse(strip_brackets(cpus)).map_err(|_| {
            invalid(
                "affinity",
                item,
                "expected a host CPU list such as [2,3] or [2-5]",
            )
        })?;
        check_affinity_entry(vcpu, &cpus, &pairs).map_err(|r| invalid("affinity", item, r))?;
        pairs.push((vcpu, cpus));
    }
    Ok(pairs)
}

impl CpusConfig {
    const KEYS: &'static [&'static str] = &["boot", "affinity", "kvm_pv", "hyperv", "pvm_compat"];

    /// Parses the `--cpus` group.
    pub fn parse(input: &str) -> Result<Self, ConfigError> {
        let pairs = parse_group("cpus", input, Self::KEYS)?;
        let mut cfg = CpusConfig::default();
        if let Some(v) = get(&pairs, "boot") {
            cfg.boot_vcpus = v
                .parse()
                .map_err(|_| invalid("boot", v, "expected a number of vCPUs"))?;
        }
        if let Some(v) = get(&pairs, "affinity") {
            cfg.affinity = parse_affinity(v)?;
        }
        if let Some(v) = get(&pairs, "kvm_pv") {
            cfg.kvm_pv = parse_kvm_pv(strip_brackets(v)).map_err(ConfigError::KvmPv)?;
        }
        if let Some(v) = get(&pairs, "hyperv") {
            cfg.hyperv = parse_hyperv(strip_brackets(v)).map_err(ConfigError::Hyperv)?;
        }
        if let Some(v) = get(&pairs, "pvm_compat") {
            cfg.pvm_compat = Toggle::parse("cpus", "pvm_compat", v)?;
        }
        Ok(cfg)
    }

    /// Checks the count against `max` (the host's and Keel's limit) and that the affinity
    /// names only vCPUs that exist.
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
        if let Some((vcpu, _)) = self.affinity.iter().find(|(v, _)| *v >= self.boot_vcpus) {
            return Err(ConfigError::Cpus(format!(
                "affinity names vCPU {vcpu}, but only vCPUs 0-{} boot",
                self.boot_vcpus - 1
            )));
        }
        Ok(())
    }

    /// The host CPUs given for `vcpu`, if any.
    pub fn affinity_of(&self, vcpu: u32) -> Option<&CpuSet> {
        self.affinity
            .iter()
            .find(|(v, _)| *v == vcpu)
            .map(|(_, cpus)| cpus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn paravirt_lists_parse() {
        let c = CpusConfig::parse("boot=1").unwrap();
        assert_eq!(c.kvm_pv, KvmPvRequest::On);
        assert!(!c.hyperv.enabled());
        let c =
            CpusConfig::parse("boot=2,kvm_pv=[kvmclock,pv_eoi],hyperv=[relaxed,vpindex]").unwrap();
        assert!(matches!(c.kvm_pv, KvmPvRequest::List(_)));
        assert_eq!(c.hyperv.names(), ["relaxed", "vpindex"]);
        assert_eq!(
            CpusConfig::parse("kvm_pv=off").unwrap().kvm_pv,
            KvmPvRequest::Off
        );
        assert!(CpusConfig::parse("hyperv=on").unwrap().hyperv.is_on());
        for bad in [
            "kvm_pv=[warp]",
            "hyperv=[relaxed,warp]",
            "kvm_pv=",
            "kvm_pv=[hidden,kvmclock]",
        ] {
            let err = CpusConfig::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("--cpus: "), "{bad}: {err}");
        }
    }

    #[test]
    fn kvm_leaves_can_be_hidden() {
        let c = CpusConfig::parse("boot=2,kvm_pv=hidden,hyperv=[relaxed,vpindex,time]").unwrap();
        assert_eq!(c.kvm_pv, KvmPvRequest::Hidden);
        assert_eq!(c.hyperv.names(), ["relaxed", "vpindex", "time"]);
        assert_eq!(
            CpusConfig::parse("kvm_pv=[hidden]").unwrap().kvm_pv,
            KvmPvRequest::Hidden
        );
        // A list that asks for features cannot also hide them: one line naming the conflict.
        let err = CpusConfig::parse("boot=1,kvm_pv=[kvmclock,hidden]")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--cpus: kvm_pv: `hidden` cannot be combined with other names"
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn affinity_uses_cloud_hypervisor_syntax() {
        let c = CpusConfig::parse("boot=3,affinity=[0@[2,3],2@[4-6]],pvm_compat=on").unwrap();
        assert_eq!(c.boot_vcpus, 3);
        assert_eq!(c.affinity.len(), 2);
        assert_eq!(c.affinity_of(0).unwrap().to_string(), "2-3");
        assert_eq!(c.affinity_of(2).unwrap().to_string(), "4-6");
        assert!(c.affinity_of(1).is_none());
        assert_eq!(c.pvm_compat, Toggle::On);
        assert!(c.validate(8, "KVM").is_ok());
        let c = CpusConfig::parse("boot=1,affinity=[0@1]").unwrap();
        assert_eq!(c.affinity_of(0).unwrap().to_string(), "1");
        for bad in [
            "affinity=0@[1]",
            "affinity=[0[1]]",
            "affinity=[x@[1]]",
            "affinity=[0@[]]",
            "affinity=[0@[a]]",
            "affinity=[0@[1],0@[2]]",
        ] {
            let err = CpusConfig::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("--cpus: invalid value"), "{bad}: {err}");
            assert!(err.contains("'affinity'"), "{bad}: {err}");
        }
        let err = CpusConfig::parse("boot=2,affinity=[2@[0]]")
            .unwrap()
            .validate(8, "KVM")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--cpus: affinity names vCPU 2, but only vCPUs 0-1 boot"
        );
    }
}
