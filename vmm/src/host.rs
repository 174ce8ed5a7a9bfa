//! What the host offers: whether KVM is PVM (no VT-x; CPL0 guest code emulated), how many vCPUs
//! KVM allows, optional capabilities, and the host's RAM. Every capability is probed, never
//! assumed.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// Keel's own vCPU limit: APIC IDs must fit the MP table and 8-bit xAPIC IDs.
pub const KEEL_MAX_VCPUS: u32 = arch::mptable::MAX_MPTABLE_CPUS;

/// Facts about the host that shape the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostInfo {
    /// `/sys/module/kvm_pvm` exists: KVM runs guest CPL0 code in an instruction emulator.
    pub is_pvm: bool,
    /// KVM_CAP_MAX_VCPUS (falling back to KVM_CAP_NR_VCPUS).
    pub kvm_max_vcpus: u32,
    /// KVM_CAP_TSC_DEADLINE_TIMER.
    pub tsc_deadline: bool,
    /// KVM_CAP_GET_TSC_KHZ.
    pub get_tsc_khz: bool,
    /// Host RAM in bytes (MemTotal), if readable.
    pub ram_bytes: Option<u64>,
    /// KVM_CAP_XSAVE2: the size of a vCPU's extended state (0 where KVM lacks the cap).
    pub xsave2_size: i32,
}

impl HostInfo {
    /// Probes `kvm` and the host's sysfs/procfs.
    pub fn probe(kvm: &Kvm) -> Self {
        let max = kvm.get_max_vcpus().max(kvm.get_nr_vcpus());
        HostInfo {
            is_pvm: Path::new("/sys/module/kvm_pvm").exists(),
            kvm_max_vcpus: u32::try_from(max).unwrap_or(0),
            tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
            get_tsc_khz: kvm.check_extension(Cap::GetTscKhz),
            ram_bytes: host_ram_bytes(),
            xsave2_size: kvm.check_extension_raw(u64::from(kvm_bindings::KVM_CAP_XSAVE2)),
        }
    }

    /// The vCPU limit and where it comes from.
    pub fn vcpu_limit(&self) -> (u32, &'static str) {
        if self.kvm_max_vcpus < KEEL_MAX_VCPUS {
            (self.kvm_max_vcpus, "KVM_CAP_MAX_VCPUS")
        } else {
            (KEEL_MAX_VCPUS, "Keel's limit: 8-bit APIC IDs")
        }
    }
}

/// Parses MemTotal from /proc/meminfo.
fn host_ram_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total(&text)
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// KVM for a unit test that needs it. Where the host has no /dev/kvm, says
/// `skipped: no /dev/kvm` on stderr and returns `None`; a /dev/kvm that is there but cannot be
/// opened fails the test, so on a KVM host such tests always run.
#[cfg(test)]
pub(crate) fn kvm_for_test() -> Option<Kvm> {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipped: no /dev/kvm");
        return None;
    }
    Some(Kvm::new().expect("/dev/kvm is there but cannot be opened"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_parsed() {
        let text = "MemTotal:       24576000 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_meminfo_total(text), Some(24_576_000 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB"), None);
        assert_eq!(parse_meminfo_total("MemTotal: x kB"), None);
    }

    #[test]
    fn vcpu_limit_is_the_smaller_one() {
        let mut h = HostInfo {
            is_pvm: false,
            kvm_max_vcpus: 1024,
            tsc_deadline: true,
            get_tsc_khz: true,
            ram_bytes: None,
            xsave2_size: 0,
        };
        assert_eq!(h.vcpu_limit().0, KEEL_MAX_VCPUS);
        h.kvm_max_vcpus = 16;
        assert_eq!(h.vcpu_limit(), (16, "KVM_CAP_MAX_VCPUS"));
    }
}
