//! Hyper-V synthetic MSR numbers and which enlightenment offers each: the VMM looks for some of
//! them in KVM_GET_MSR_INDEX_LIST to learn what the host supports (see [`super::HostHvSupport`]),
//! and tests check a guest can use exactly the MSRs its CPUID offers.
//!
//! The MSR-to-enlightenment mapping follows the CPUID bit KVM checks before it lets a guest
//! touch each MSR when KVM_CAP_HYPERV_ENFORCE_CPUID is on (`hv_check_msr_access` in Linux's
//! arch/x86/kvm/hyperv.c): e.g. HV_MSR_APIC_ACCESS_AVAILABLE gates EOI, ICR, TPR and the VP
//! assist page, HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE gates CRASH_P0..P4 and CRASH_CTL.

use super::{HvFeature, HypervConfig};

// Synthetic MSRs (asm/hyperv-tlfs.h).
/// Guest OS identity; writing it enables the hypercall page.
pub const HV_X64_MSR_GUEST_OS_ID: u32 = 0x4000_0000;
/// Hypercall page location.
pub const HV_X64_MSR_HYPERCALL: u32 = 0x4000_0001;
/// This VP's index.
pub const HV_X64_MSR_VP_INDEX: u32 = 0x4000_0002;
/// Writing 1 resets the partition.
pub const HV_X64_MSR_RESET: u32 = 0x4000_0003;
/// This VP's run time in 100 ns units.
pub const HV_X64_MSR_VP_RUNTIME: u32 = 0x4000_0010;
/// Partition reference counter, 100 ns units.
pub const HV_X64_MSR_TIME_REF_COUNT: u32 = 0x4000_0020;
/// Reference TSC page location.
pub const HV_X64_MSR_REFERENCE_TSC: u32 = 0x4000_0021;
/// TSC frequency in Hz.
pub const HV_X64_MSR_TSC_FREQUENCY: u32 = 0x4000_0022;
/// Local APIC timer frequency in Hz.
pub const HV_X64_MSR_APIC_FREQUENCY: u32 = 0x4000_0023;
/// APIC EOI (write-only).
pub const HV_X64_MSR_EOI: u32 = 0x4000_0070;
/// APIC ICR.
pub const HV_X64_MSR_ICR: u32 = 0x4000_0071;
/// APIC TPR.
pub const HV_X64_MSR_TPR: u32 = 0x4000_0072;
/// VP assist page location.
pub const HV_X64_MSR_VP_ASSIST_PAGE: u32 = 0x4000_0073;
/// SynIC control.
pub const HV_X64_MSR_SCONTROL: u32 = 0x4000_0080;
/// SynIC version.
pub const HV_X64_MSR_SVERSION: u32 = 0x4000_0081;
/// SynIC event flags page.
pub const HV_X64_MSR_SIEFP: u32 = 0x4000_0082;
/// SynIC message page.
pub const HV_X64_MSR_SIMP: u32 = 0x4000_0083;
/// SynIC end of message.
pub const HV_X64_MSR_EOM: u32 = 0x4000_0084;
/// First of the 16 synthetic interrupt sources SINT0..SINT15.
pub const HV_X64_MSR_SINT0: u32 = 0x4000_0090;
/// First synthetic timer register; STIMERn_CONFIG = this + 2n, STIMERn_COUNT = this + 2n + 1.
pub const HV_X64_MSR_STIMER0_CONFIG: u32 = 0x4000_00b0;
/// First crash parameter register; CRASH_P0..P4 follow.
pub const HV_X64_MSR_CRASH_P0: u32 = 0x4000_0100;
/// Crash notification control.
pub const HV_X64_MSR_CRASH_CTL: u32 = 0x4000_0105;
/// Reenlightenment notification control.
pub const HV_X64_MSR_REENLIGHTENMENT_CONTROL: u32 = 0x4000_0106;
/// TSC emulation control.
pub const HV_X64_MSR_TSC_EMULATION_CONTROL: u32 = 0x4000_0107;
/// TSC emulation status.
pub const HV_X64_MSR_TSC_EMULATION_STATUS: u32 = 0x4000_0108;

/// One synthetic MSR and the enlightenment that offers it (`None`: any enlightenment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HvMsr {
    /// MSR number.
    pub msr: u32,
    /// Name as in hyperv-tlfs.h.
    pub name: &'static str,
    /// The enlightenment that offers it.
    pub feature: Option<HvFeature>,
    /// Whether a guest RDMSR can succeed once offered (HV_X64_MSR_EOI is write-only).
    pub readable: bool,
}

const fn msr(msr: u32, name: &'static str, feature: Option<HvFeature>) -> HvMsr {
    HvMsr {
        msr,
        name,
        feature,
        readable: true,
    }
}

/// Every synthetic MSR Keel can offer, with the enlightenment behind it. SynIC MSRs also need
/// the vCPU's SynIC activated (KVM_CAP_HYPERV_SYNIC2) before guest accesses succeed.
pub const HV_MSRS: &[HvMsr] = {
    use HvFeature::*;
    &[
        msr(HV_X64_MSR_GUEST_OS_ID, "HV_X64_MSR_GUEST_OS_ID", None),
        msr(HV_X64_MSR_HYPERCALL, "HV_X64_MSR_HYPERCALL", None),
        msr(HV_X64_MSR_VP_INDEX, "HV_X64_MSR_VP_INDEX", Some(Vpindex)),
        msr(HV_X64_MSR_RESET, "HV_X64_MSR_RESET", Some(Reset)),
        msr(
            HV_X64_MSR_VP_RUNTIME,
            "HV_X64_MSR_VP_RUNTIME",
            Some(Runtime),
        ),
        msr(
            HV_X64_MSR_TIME_REF_COUNT,
            "HV_X64_MSR_TIME_REF_COUNT",
            Some(Time),
        ),
        msr(
            HV_X64_MSR_REFERENCE_TSC,
            "HV_X64_MSR_REFERENCE_TSC",
            Some(Time),
        ),
        msr(
            HV_X64_MSR_TSC_FREQUENCY,
            "HV_X64_MSR_TSC_FREQUENCY",
            Some(Frequencies),
        ),
        msr(
            HV_X64_MSR_APIC_FREQUENCY,
            "HV_X64_MSR_APIC_FREQUENCY",
            Some(Frequencies),
        ),
        HvMsr {
            readable: false,
            ..msr(HV_X64_MSR_EOI, "HV_X64_MSR_EOI", Some(Vapic))
        },
        msr(HV_X64_MSR_ICR, "HV_X64_MSR_ICR", Some(Vapic)),
        msr(HV_X64_MSR_TPR, "HV_X64_MSR_TPR", Some(Vapic)),
        msr(
            HV_X64_MSR_VP_ASSIST_PAGE,
            "HV_X64_MSR_VP_ASSIST_PAGE",
            Some(Vapic),
        ),
        msr(HV_X64_MSR_SCONTROL, "HV_X64_MSR_SCONTROL", Some(Synic)),
        msr(HV_X64_MSR_SVERSION, "HV_X64_MSR_SVERSION", Some(Synic)),
        msr(HV_X64_MSR_SIEFP, "HV_X64_MSR_SIEFP", Some(Synic)),
        msr(HV_X64_MSR_SIMP, "HV_X64_MSR_SIMP", Some(Synic)),
        msr(HV_X64_MSR_EOM, "HV_X64_MSR_EOM", Some(Synic)),
        msr(HV_X64_MSR_SINT0, "HV_X64_MSR_SINT0", Some(Synic)),
        msr(HV_X64_MSR_SINT0 + 1, "HV_X64_MSR_SINT1", Some(Synic)),
        msr(HV_X64_MSR_SINT0 + 2, "HV_X64_MSR_SINT2", Some(Synic)),
        msr(HV_X64_MSR_SINT0 + 3, "HV_X64_MSR_SINT3", Some(Synic)),
        msr(HV_X64_MSR_SINT0 + 4, "HV_X64_MSR_SINT4", Some(Synic)),
        msr(HV_X64_MSR_SINT0 + 5, "HV_X64_MSR_SINT5", Some(Synic)),
        msr(HV_X64_MSR_SINT0 + 6, "HV_X64_MSR_SINT6", Some(Synic)),
        msr(HV_X64_MSR_SINT0 + 7, "HV_X64_MSR_SINT7", Some(Synic)),
        msr(HV_X64_MSR_SINT0 + 8, "HV_X64_MSR_SINT8", Some(Synic)),
        msr(HV_X64_MSR_SINT0 + 9, "HV_X64_MSR_SINT9", Some(Synic)),
        msr(HV_X64_MSR_SINT0 + 10, "HV_X64_MSR_SINT10", Some(Synic)),
        msr(HV_X64_MSR_SINT0 + 11, "HV_X64_MSR_SINT11", Some(Synic)),
        msr(HV_X64_MSR_SINT0 + 12, "HV_X64_MSR_SINT12", Some(Synic)),
        msr(HV_X64_MSR_SINT0 + 13, "HV_X64_MSR_SINT13", Some(Synic)),
        msr(HV_X64_MSR_SINT0 + 14, "HV_X64_MSR_SINT14", Some(Synic)),
        msr(HV_X64_MSR_SINT0 + 15, "HV_X64_MSR_SINT15", Some(Synic)),
        msr(
            HV_X64_MSR_STIMER0_CONFIG,
            "HV_X64_MSR_STIMER0_CONFIG",
            Some(Stimer),
        ),
        msr(
            HV_X64_MSR_STIMER0_CONFIG + 1,
            "HV_X64_MSR_STIMER0_COUNT",
            Some(Stimer),
        ),
        msr(
            HV_X64_MSR_STIMER0_CONFIG + 2,
            "HV_X64_MSR_STIMER1_CONFIG",
            Some(Stimer),
        ),
        msr(
            HV_X64_MSR_STIMER0_CONFIG + 3,
            "HV_X64_MSR_STIMER1_COUNT",
            Some(Stimer),
        ),
        msr(
            HV_X64_MSR_STIMER0_CONFIG + 4,
            "HV_X64_MSR_STIMER2_CONFIG",
            Some(Stimer),
        ),
        msr(
            HV_X64_MSR_STIMER0_CONFIG + 5,
            "HV_X64_MSR_STIMER2_COUNT",
            Some(Stimer),
        ),
        msr(
            HV_X64_MSR_STIMER0_CONFIG + 6,
            "HV_X64_MSR_STIMER3_CONFIG",
            Some(Stimer),
        ),
        msr(
            HV_X64_MSR_STIMER0_CONFIG + 7,
            "HV_X64_MSR_STIMER3_COUNT",
            Some(Stimer),
        ),
        msr(HV_X64_MSR_CRASH_P0, "HV_X64_MSR_CRASH_P0", Some(Crash)),
        msr(HV_X64_MSR_CRASH_P0 + 1, "HV_X64_MSR_CRASH_P1", Some(Crash)),
        msr(HV_X64_MSR_CRASH_P0 + 2, "HV_X64_MSR_CRASH_P2", Some(Crash)),
        msr(HV_X64_MSR_CRASH_P0 + 3, "HV_X64_MSR_CRASH_P3", Some(Crash)),
        msr(HV_X64_MSR_CRASH_P0 + 4, "HV_X64_MSR_CRASH_P4", Some(Crash)),
        msr(HV_X64_MSR_CRASH_CTL, "HV_X64_MSR_CRASH_CTL", Some(Crash)),
        msr(
            HV_X64_MSR_REENLIGHTENMENT_CONTROL,
            "HV_X64_MSR_REENLIGHTENMENT_CONTROL",
            Some(Reenlightenment),
        ),
        msr(
            HV_X64_MSR_TSC_EMULATION_CONTROL,
            "HV_X64_MSR_TSC_EMULATION_CONTROL",
            Some(Reenlightenment),
        ),
        msr(
            HV_X64_MSR_TSC_EMULATION_STATUS,
            "HV_X64_MSR_TSC_EMULATION_STATUS",
            Some(Reenlightenment),
        ),
    ]
};

/// The synthetic MSRs `cfg` offers, as (number, name), in [`HV_MSRS`] order; empty when `cfg`
/// enables nothing. With KVM_CAP_HYPERV_ENFORCE_CPUID on, every other MSR of [`HV_MSRS`] faults.
pub fn msrs_offered(cfg: &HypervConfig) -> Vec<(u32, &'static str)> {
    if !cfg.enabled() {
        return Vec::new();
    }
    HV_MSRS
        .iter()
        .filter(|m| m.feature.is_none_or(|f| cfg.has(f)))
        .map(|m| (m.msr, m.name))
        .collect()
}
