//! Paravirtual interfaces offered to the guest: the in-kernel APIC's x2APIC API, KVM's PV
//! features (CPUID 0x40000001; `kvm_pv=hidden` removes KVM's leaves altogether) and Hyper-V
//! enlightenments (CPUID 0x40000000..0x4000000A, KVM's leaves, unless hidden, moved to
//! 0x40000100). The host is probed for each capability; a requested feature the host cannot
//! provide is refused before boot, naming the capability it lacks.

use arch::hyperv::{
    apply_hyperv, HostHvSupport, HypervConfig, HypervError, HV_X64_MSR_CRASH_CTL,
    HV_X64_MSR_REENLIGHTENMENT_CONTROL, HV_X64_MSR_RESET, HV_X64_MSR_TSC_FREQUENCY,
    HV_X64_MSR_VP_ASSIST_PAGE, HV_X64_MSR_VP_RUNTIME,
};
use arch::kvm_pv::{apply_kvm_pv, KvmPvError, KvmPvFeatures, KvmPvRequest};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_enable_cap, CpuId, KVM_CAP_ENFORCE_PV_FEATURE_CPUID,
    KVM_CAP_HYPERV_DIRECT_TLBFLUSH, KVM_CAP_HYPERV_ENFORCE_CPUID, KVM_CAP_HYPERV_SEND_IPI,
    KVM_CAP_HYPERV_SYNIC2, KVM_CAP_HYPERV_TLBFLUSH, KVM_CAP_HYPERV_VP_INDEX,
    KVM_CAP_SYS_HYPERV_CPUID, KVM_CAP_X2APIC_API, KVM_MAX_CPUID_ENTRIES,
    KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK, KVM_X2APIC_API_USE_32BIT_IDS,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vmm_sys_util::ioctl::ioctl_with_mut_ptr;

/// Errors setting up paravirtual interfaces.
#[derive(Debug, thiserror::Error)]
pub enum ParavirtError {
    /// A KVM PV request the host cannot meet.
    #[error("--cpus")]
    KvmPv(#[source] KvmPvError),
    /// A Hyper-V request the host cannot meet or that lacks a dependency.
    #[error("--cpus")]
    Hyperv(#[source] HypervError),
    /// KVM_ENABLE_CAP failed.
    #[error("KVM_ENABLE_CAP({cap}) failed")]
    EnableCap {
        /// Capability name.
        cap: &'static str,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The ioctl number (the macro makes a public function; kept inside this private module).
mod numbers {
    use vmm_sys_util::ioctl_iowr_nr;
    const KVMIO: u32 = 0xAE;
    ioctl_iowr_nr!(
        KVM_GET_SUPPORTED_HV_CPUID,
        KVMIO,
        0xc1,
        kvm_bindings::kvm_cpuid2
    );
}
use numbers::KVM_GET_SUPPORTED_HV_CPUID;

/// What the host offers for Hyper-V: from KVM_GET_SUPPORTED_HV_CPUID where the host has it
/// (KVM_CAP_SYS_HYPERV_CPUID), else from the individual capabilities and the MSRs KVM lists.
pub fn host_hyperv_support(kvm: &Kvm) -> HostHvSupport {
    let enforce = kvm.check_extension_raw(u64::from(KVM_CAP_HYPERV_ENFORCE_CPUID)) > 0;
    if kvm.check_extension_raw(u64::from(KVM_CAP_SYS_HYPERV_CPUID)) > 0 {
        if let Some(entries) = supported_hv_cpuid(kvm) {
            let mut host = HostHvSupport::from_supported_hv_cpuid(&entries);
            host.enforce_cpuid = enforce;
            return host;
        }
    }
    let cap = |c: u32| kvm.check_extension_raw(u64::from(c)) > 0;
    let msrs: Vec<u32> = kvm
        .get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .unwrap_or_default();
    let msr = |m: u32| msrs.contains(&m);
    HostHvSupport {
        hyperv: kvm.check_extension(Cap::Hyperv),
        vapic: kvm.check_extension(Cap::HypervVapic) && msr(HV_X64_MSR_VP_ASSIST_PAGE),
        vp_index: cap(KVM_CAP_HYPERV_VP_INDEX),
        vp_runtime: msr(HV_X64_MSR_VP_RUNTIME),
        crash: msr(HV_X64_MSR_CRASH_CTL),
        time: kvm.check_extension(Cap::HypervTime),
        synic2: cap(KVM_CAP_HYPERV_SYNIC2),
        stimer_direct: false,
        frequencies: msr(HV_X64_MSR_TSC_FREQUENCY),
        reenlightenment: msr(HV_X64_MSR_REENLIGHTENMENT_CONTROL),
        tlbflush: cap(KVM_CAP_HYPERV_TLBFLUSH),
        tlbflush_ext: false,
        tlbflush_direct: cap(KVM_CAP_HYPERV_DIRECT_TLBFLUSH),
        send_ipi: cap(KVM_CAP_HYPERV_SEND_IPI),
        reset: msr(HV_X64_MSR_RESET),
        avic: false,
        enforce_cpuid: enforce,
    }
}

fn supported_hv_cpuid(kvm: &Kvm) -> Option<Vec<kvm_cpuid_entry2>> {
    let mut cpuid = CpuId::new(KVM_MAX_CPUID_ENTRIES).ok()?;
    // SAFETY: the ioctl writes at most `nent` entries into the FAM struct, whose header says
    // how many it holds; `kvm` is the open /dev/kvm fd.
    let ret = unsafe {
        ioctl_with_mut_ptr(
            kvm,
            KVM_GET_SUPPORTED_HV_CPUID(),
            cpuid.as_mut_fam_struct_ptr(),
        )
    };
    (ret == 0).then(|| cpuid.as_slice().to_vec())
}

/// The paravirtual setup of one VM, decided once and applied to every vCPU.
#[derive(Debug, Clone)]
pub struct Paravirt {
    /// KVM PV features requested.
    pub kvm_pv: KvmPvRequest,
    /// Hyper-V enlightenments requested (`on` already narrowed to the host).
    pub hyperv: HypervConfig,
    /// What the host offers for Hyper-V.
    pub host_hv: HostHvSupport,
    /// KVM_CAP_ENFORCE_PV_FEATURE_CPUID: unoffered KVM PV MSRs fault.
    pub enforce_pv_cpuid: bool,
}

impl Paravirt {
    /// Probes the host for `kvm_pv` and `hyperv`; refuses requests it cannot meet.
    pub fn new(
        kvm: &Kvm,
        kvm_pv: KvmPvRequest,
        hyperv: &HypervConfig,
    ) -> Result<Self, ParavirtError> {
        let host_hv = host_hyperv_support(kvm);
        let resolved = hyperv.resolve(&host_hv);
        if hyperv.is_on() && !resolved.enabled() {
            log::warn!(
                "hyperv=on: this host supports no Hyper-V enlightenment ({} missing); the guest gets none",
                host_hv
                    .missing_capability(arch::hyperv::HvFeature::Relaxed)
                    .unwrap_or("every capability")
            );
        }
        let hyperv = resolved;
        hyperv.check(&host_hv).map_err(ParavirtError::Hyperv)?;
        Ok(Paravirt {
            kvm_pv,
            hyperv,
            host_hv,
            enforce_pv_cpuid: kvm.check_extension_raw(u64::from(KVM_CAP_ENFORCE_PV_FEATURE_CPUID))
                > 0,
        })
    }

    /// Applies KVM PV and Hyper-V to one vCPU's CPUID (after `arch::cpuid::adjust`). Returns
    /// the KVM PV features and Hyper-V enlightenments the guest gets. With `kvm_pv` hidden,
    /// KVM's leaves go first, so Hyper-V's (if any) stay alone at 0x40000000.
    pub fn apply_cpuid(
        &self,
        entries: &mut Vec<kvm_cpuid_entry2>,
        num_vcpus: u32,
    ) -> Result<(KvmPvFeatures, Vec<&'static str>), ParavirtError> {
        let pv = apply_kvm_pv(entries, self.kvm_pv).map_err(ParavirtError::KvmPv)?;
        let hv = apply_hyperv(entries, &self.hyperv, &self.host_hv, num_vcpus)
            .map_err(ParavirtError::Hyperv)?;
        Ok((pv, hv))
    }

    /// Per-vCPU capabilities, after KVM_SET_CPUID2: enforce the offered CPUID (so MSRs that
    /// were not offered fault), SynIC v2 when `synic` is on.
    pub fn enable_vcpu_caps(&self, vcpu: &VcpuFd) -> Result<(), ParavirtError> {
        // args[0] is 1 to switch a capability on; SYNIC2 takes no argument.
        let enable = |cap: u32, arg: u64, name: &'static str| {
            let c = kvm_enable_cap {
                cap,
                args: [arg, 0, 0, 0],
                ..Default::default()
            };
            vcpu.enable_cap(&c)
                .map_err(|source| ParavirtError::EnableCap { cap: name, source })
        };
        if self.enforce_pv_cpuid {
            enable(
                KVM_CAP_ENFORCE_PV_FEATURE_CPUID,
                1,
                "KVM_CAP_ENFORCE_PV_FEATURE_CPUID",
            )?;
        }
        if self.hyperv.enabled() {
            if self.host_hv.enforce_cpuid {
                enable(
                    KVM_CAP_HYPERV_ENFORCE_CPUID,
                    1,
                    "KVM_CAP_HYPERV_ENFORCE_CPUID",
                )?;
            }
            if self.hyperv.has(arch::hyperv::HvFeature::Synic) {
                enable(KVM_CAP_HYPERV_SYNIC2, 0, "KVM_CAP_HYPERV_SYNIC2")?;
            }
        }
        Ok(())
    }
}

/// Enables the x2APIC API (32-bit APIC IDs, no broadcast quirk) where KVM has it; returns
/// whether it did.
pub fn enable_x2apic_api(vm: &VmFd) -> bool {
    if vm.check_extension_raw(u64::from(KVM_CAP_X2APIC_API)) <= 0 {
        return false;
    }
    let c = kvm_enable_cap {
        cap: KVM_CAP_X2APIC_API,
        args: [
            u64::from(KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK),
            0,
            0,
            0,
        ],
        ..Default::default()
    };
    match vm.enable_cap(&c) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("KVM_CAP_X2APIC_API present but enabling it failed: {e}");
            false
        }
    }
}

/// Whether the host virtualizes the APIC in hardware (Intel APICv, AMD AVIC), from the KVM
/// modules' parameters: `Some(true/false)`, or `None` when neither module says (PVM, or a
/// module without the parameter).
pub fn host_apic_virtualization() -> Option<(&'static str, bool)> {
    for (what, path) in [
        ("APICv", "/sys/module/kvm_intel/parameters/enable_apicv"),
        ("AVIC", "/sys/module/kvm_amd/parameters/avic"),
    ] {
        if let Ok(v) = std::fs::read_to_string(path) {
            let v = v.trim();
            return Some((what, v == "Y" || v == "1"));
        }
    }
    None
}

/// Needs /dev/kvm: probes the host's KVM (skipped, saying so, where there is none).
#[cfg(test)]
mod tests {
    use super::*;
    use arch::hyperv::HvFeature;

    #[test]
    fn host_support_is_probed_without_failing() {
        let Some(kvm) = crate::host::kvm_for_test() else {
            return;
        };
        let host = host_hyperv_support(&kvm);
        // Whatever the host says, a request for everything resolves to what it supports and
        // then passes its own check.
        let all = HypervConfig::on().resolve(&host);
        assert!(all.check(&host).is_ok());
        if !host.time {
            let time = HypervConfig::off().with(HvFeature::Time);
            let err = Paravirt::new(&kvm, KvmPvRequest::On, &time).unwrap_err();
            assert_eq!(err.to_string(), "--cpus");
            let cause = std::error::Error::source(&err).map(|c| c.to_string());
            assert!(
                cause
                    .as_deref()
                    .is_some_and(|c| c.contains("KVM_CAP_HYPERV")),
                "{cause:?}"
            );
        }
    }
}
