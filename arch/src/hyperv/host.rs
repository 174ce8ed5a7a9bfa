//! What the host's KVM can do for Hyper-V guests, and which capability a missing
//! enlightenment lacks.

use kvm_bindings::kvm_cpuid_entry2;

use super::{
    HvFeature, HV_ACCESS_FREQUENCY_MSRS, HV_ACCESS_REENLIGHTENMENT,
    HV_DEPRECATING_AEOI_RECOMMENDED, HV_FEATURE_EXT_GVA_RANGES_FLUSH,
    HV_FEATURE_FREQUENCY_MSRS_AVAILABLE, HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE,
    HV_MSR_APIC_ACCESS_AVAILABLE, HV_MSR_HYPERCALL_AVAILABLE, HV_MSR_RESET_AVAILABLE,
    HV_MSR_SYNIC_AVAILABLE, HV_MSR_SYNTIMER_AVAILABLE, HV_MSR_VP_INDEX_AVAILABLE,
    HV_MSR_VP_RUNTIME_AVAILABLE, HV_STIMER_DIRECT_MODE_AVAILABLE, HV_X64_CLUSTER_IPI_RECOMMENDED,
    HV_X64_NESTED_DIRECT_FLUSH, HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED, HYPERV_CPUID_ENLIGHTMENT_INFO,
    HYPERV_CPUID_FEATURES, HYPERV_CPUID_NESTED_FEATURES,
};

/// What the host's KVM can do for Hyper-V guests.
///
/// Built by [`HostHvSupport::from_supported_hv_cpuid`] from KVM_GET_SUPPORTED_HV_CPUID
/// (KVM_CAP_HYPERV_CPUID), or filled by the VMM from KVM_CHECK_EXTENSION and
/// KVM_GET_MSR_INDEX_LIST as each field says. `enforce_cpuid` is never in the CPUID leaves; the
/// VMM sets it from KVM_CHECK_EXTENSION(KVM_CAP_HYPERV_ENFORCE_CPUID) either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostHvSupport {
    /// KVM_CAP_HYPERV: hypercall page, guest OS id; enough for `relaxed` and `spinlocks`.
    pub hyperv: bool,
    /// HV_X64_MSR_VP_ASSIST_PAGE in KVM_GET_MSR_INDEX_LIST (`vapic`).
    pub vapic: bool,
    /// KVM_CAP_HYPERV_VP_INDEX (`vpindex`).
    pub vp_index: bool,
    /// HV_X64_MSR_VP_RUNTIME in KVM_GET_MSR_INDEX_LIST (`runtime`).
    pub vp_runtime: bool,
    /// HV_X64_MSR_CRASH_CTL in KVM_GET_MSR_INDEX_LIST (`crash`).
    pub crash: bool,
    /// KVM_CAP_HYPERV_TIME (`time`).
    pub time: bool,
    /// KVM_CAP_HYPERV_SYNIC2 (`synic`, `stimer`).
    pub synic2: bool,
    /// Direct-mode synthetic timers, only reported by KVM_GET_SUPPORTED_HV_CPUID.
    pub stimer_direct: bool,
    /// HV_X64_MSR_TSC_FREQUENCY in KVM_GET_MSR_INDEX_LIST (`frequencies`).
    pub frequencies: bool,
    /// HV_X64_MSR_REENLIGHTENMENT_CONTROL in KVM_GET_MSR_INDEX_LIST (`reenlightenment`).
    pub reenlightenment: bool,
    /// KVM_CAP_HYPERV_TLBFLUSH (`tlbflush`).
    pub tlbflush: bool,
    /// Extended GVA flush ranges, only reported by KVM_GET_SUPPORTED_HV_CPUID.
    pub tlbflush_ext: bool,
    /// KVM_CAP_HYPERV_DIRECT_TLBFLUSH (`tlbflush-direct`).
    pub tlbflush_direct: bool,
    /// KVM_CAP_HYPERV_SEND_IPI (`ipi`).
    pub send_ipi: bool,
    /// HV_X64_MSR_RESET in KVM_GET_MSR_INDEX_LIST (`reset`).
    pub reset: bool,
    /// Auto-EOI deprecation, only reported by KVM_GET_SUPPORTED_HV_CPUID (`avic`).
    pub avic: bool,
    /// KVM_CAP_HYPERV_ENFORCE_CPUID: KVM can refuse what CPUID does not offer.
    pub enforce_cpuid: bool,
}

impl HostHvSupport {
    /// Reads KVM_GET_SUPPORTED_HV_CPUID's answer: a feature is supported when its bits are in
    /// the host's 0x40000003, 0x40000004 or 0x4000000A leaves.
    pub fn from_supported_hv_cpuid(entries: &[kvm_cpuid_entry2]) -> Self {
        let leaf = |f: u32| entries.iter().find(|e| e.function == f).copied();
        let features = leaf(HYPERV_CPUID_FEATURES).unwrap_or_default();
        let rec = leaf(HYPERV_CPUID_ENLIGHTMENT_INFO).unwrap_or_default();
        let nested = leaf(HYPERV_CPUID_NESTED_FEATURES).unwrap_or_default();
        let has = |reg: u32, mask: u32| reg & mask == mask;
        let hyperv = has(features.eax, HV_MSR_HYPERCALL_AVAILABLE);
        let on = |reg: u32, mask: u32| hyperv && has(reg, mask);
        Self {
            hyperv,
            vapic: on(features.eax, HV_MSR_APIC_ACCESS_AVAILABLE),
            vp_index: on(features.eax, HV_MSR_VP_INDEX_AVAILABLE),
            vp_runtime: on(features.eax, HV_MSR_VP_RUNTIME_AVAILABLE),
            crash: on(features.edx, HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE),
            time: on(features.eax, HvFeature::Time.cpuid_bits().features_eax),
            synic2: on(
                features.eax,
                HV_MSR_SYNIC_AVAILABLE | HV_MSR_SYNTIMER_AVAILABLE,
            ),
            stimer_direct: on(features.edx, HV_STIMER_DIRECT_MODE_AVAILABLE),
            frequencies: on(features.eax, HV_ACCESS_FREQUENCY_MSRS)
                && has(features.edx, HV_FEATURE_FREQUENCY_MSRS_AVAILABLE),
            reenlightenment: on(features.eax, HV_ACCESS_REENLIGHTENMENT),
            tlbflush: on(rec.eax, HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED),
            tlbflush_ext: on(features.edx, HV_FEATURE_EXT_GVA_RANGES_FLUSH),
            tlbflush_direct: on(nested.eax, HV_X64_NESTED_DIRECT_FLUSH),
            send_ipi: on(rec.eax, HV_X64_CLUSTER_IPI_RECOMMENDED),
            reset: on(features.eax, HV_MSR_RESET_AVAILABLE),
            avic: on(rec.eax, HV_DEPRECATING_AEOI_RECOMMENDED),
            enforce_cpuid: false,
        }
    }

    /// What the host lacks for `feature`: the KVM capability (or, where KVM has none, the
    /// interface that reports it), or `None` when the host supports it.
    pub fn missing_capability(&self, feature: HvFeature) -> Option<&'static str> {
        if !self.hyperv {
            return Some("KVM_CAP_HYPERV");
        }
        let (ok, what) = match feature {
            HvFeature::Relaxed | HvFeature::Spinlocks => (true, ""),
            HvFeature::Vapic => (
                self.vapic,
                "HV_X64_MSR_VP_ASSIST_PAGE in KVM_GET_MSR_INDEX_LIST",
            ),
            HvFeature::Vpindex => (self.vp_index, "KVM_CAP_HYPERV_VP_INDEX"),
            HvFeature::Runtime => (
                self.vp_runtime,
                "HV_X64_MSR_VP_RUNTIME in KVM_GET_MSR_INDEX_LIST",
            ),
            HvFeature::Crash => (self.crash, "HV_X64_MSR_CRASH_CTL in KVM_GET_MSR_INDEX_LIST"),
            HvFeature::Time => (self.time, "KVM_CAP_HYPERV_TIME"),
            HvFeature::Synic | HvFeature::Stimer => (self.synic2, "KVM_CAP_HYPERV_SYNIC2"),
            HvFeature::StimerDirect => (
                self.stimer_direct,
                "HV_STIMER_DIRECT_MODE_AVAILABLE in KVM_GET_SUPPORTED_HV_CPUID",
            ),
            HvFeature::Frequencies => (
                self.frequencies,
                "HV_X64_MSR_TSC_FREQUENCY in KVM_GET_MSR_INDEX_LIST",
            ),
            HvFeature::Reenlightenment => (
                self.reenlightenment,
                "HV_X64_MSR_REENLIGHTENMENT_CONTROL in KVM_GET_MSR_INDEX_LIST",
            ),
            HvFeature::Tlbflush => (self.tlbflush, "KVM_CAP_HYPERV_TLBFLUSH"),
            HvFeature::TlbflushExt => (
                self.tlbflush_ext,
                "HV_FEATURE_EXT_GVA_RANGES_FLUSH in KVM_GET_SUPPORTED_HV_CPUID",
            ),
            HvFeature::TlbflushDirect => (self.tlbflush_direct, "KVM_CAP_HYPERV_DIRECT_TLBFLUSH"),
            HvFeature::Ipi => (self.send_ipi, "KVM_CAP_HYPERV_SEND_IPI"),
            HvFeature::Reset => (self.reset, "HV_X64_MSR_RESET in KVM_GET_MSR_INDEX_LIST"),
            HvFeature::Avic => (
                self.avic,
                "HV_DEPRECATING_AEOI_RECOMMENDED in KVM_GET_SUPPORTED_HV_CPUID",
            ),
        };
        (!ok).then_some(what)
    }

    /// Whether the host supports `feature`.
    pub fn supports(&self, feature: HvFeature) -> bool {
        self.missing_capability(feature).is_none()
    }
}
