//! Hyper-V enlightenments: the CPUID leaves 0x40000000..=0x4000000A that make a guest (Windows
//! above all) believe it runs on a Hyper-V compatible hypervisor and use KVM's implementation of
//! the Hyper-V synthetic MSRs and hypercalls.
//!
//! Each enlightenment is named as QEMU's `hv-*` flag without the prefix ([`HvFeature::name`]:
//! `relaxed`, `vapic`, `spinlocks`, `vpindex`, `runtime`, `crash`, `time`, `synic`, `stimer`,
//! `stimer-direct`, `frequencies`, `reenlightenment`, `tlbflush`, `tlbflush-ext`,
//! `tlbflush-direct`, `ipi`, `reset`, `avic`); the words a user types (`on`, `off` or a list,
//! with `spinlocks=N` and `vendor-id=STRING`) are parsed by the VMM's configuration into a
//! [`HypervConfig`], which is plain data. Bit positions are those of the Hyper-V TLFS as spelled in Linux's
//! `arch/x86/include/asm/hyperv-tlfs.h` and `include/asm-generic/hyperv-tlfs.h`; which bit each
//! enlightenment sets is Keel's own table ([`HvFeature::cpuid_bits`]).
//!
//! Hyper-V owns 0x40000000, so KVM's own leaves (signature, paravirtual features and Keel's
//! 0x40000010 timing leaf) move up by 0x100 ([`relocate_kvm_leaves`]). Linux looks for
//! "KVMKVMKVM" at every 0x100 step and prefers KVM over Hyper-V when it finds both, so a Linux
//! guest keeps kvmclock; KVM itself finds its leaves the same way.
//!
//! What the VMM must do besides installing the leaves ([`apply_hyperv`], after
//! [`crate::cpuid::adjust`]):
//! - enable KVM_CAP_HYPERV_SYNIC2 on every vCPU when `synic` is on (SynIC MSRs fault until then);
//! - enable KVM_CAP_HYPERV_ENFORCE_CPUID on every vCPU where the host has it: only then does KVM
//!   refuse the synthetic MSRs and hypercalls these leaves do not offer;
//! - enable KVM_CAP_HYPERV_DIRECT_TLBFLUSH on every vCPU when `tlbflush-direct` is on;
//! - handle KVM_EXIT_SYSTEM_EVENT of type CRASH (`crash`, guest wrote HV_X64_MSR_CRASH_CTL) and
//!   RESET (`reset`, guest wrote 1 to HV_X64_MSR_RESET).
//!
//! KVM numbers VPs by vCPU index, which is also Keel's APIC ID, so VP index needs no setup.

use kvm_bindings::kvm_cpuid_entry2;

mod host;
mod msrs;

pub use host::HostHvSupport;
pub use msrs::*;

/// Vendor and highest Hyper-V leaf (TLFS "Hypervisor CPUID Leaf Range").
pub const HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS: u32 = 0x4000_0000;
/// Interface signature (TLFS "Hypervisor Vendor-Neutral Interface Identification").
pub const HYPERV_CPUID_INTERFACE: u32 = 0x4000_0001;
/// Hypervisor system identity (build number and version).
pub const HYPERV_CPUID_VERSION: u32 = 0x4000_0002;
/// Feature identification: partition privileges (EAX), flags (EBX), misc features (EDX).
pub const HYPERV_CPUID_FEATURES: u32 = 0x4000_0003;
/// Implementation recommendations (EAX) and spinlock retries (EBX).
pub const HYPERV_CPUID_ENLIGHTMENT_INFO: u32 = 0x4000_0004;
/// Implementation limits.
pub const HYPERV_CPUID_IMPLEMENT_LIMITS: u32 = 0x4000_0005;
/// Hardware features the hypervisor uses on the host (Keel reports none).
pub const HYPERV_CPUID_HARDWARE_FEATURES: u32 = 0x4000_0006;
/// Nested virtualization features.
pub const HYPERV_CPUID_NESTED_FEATURES: u32 = 0x4000_000A;
/// Highest Hyper-V leaf Keel provides (EAX of 0x40000000).
pub const HYPERV_CPUID_MAX_LEAF: u32 = HYPERV_CPUID_NESTED_FEATURES;
/// "Hv#1": the Microsoft hypervisor interface, in EAX of 0x40000001. KVM turns its Hyper-V
/// emulation on for a vCPU when it sees this value.
pub const HYPERV_INTERFACE_SIGNATURE: u32 = 0x3123_7648;
/// Default vendor id in EBX/ECX/EDX of 0x40000000.
pub const HYPERV_DEFAULT_VENDOR_ID: &str = "Microsoft Hv";
/// The vendor id fills EBX, ECX and EDX of 0x40000000: at most 12 bytes.
pub const HYPERV_VENDOR_ID_MAX_LEN: usize = 12;
/// Build number reported in 0x40000002 EAX: Windows Server 2016 (14393).
pub const HYPERV_BUILD_NUMBER: u32 = 14393;
/// Major version reported in 0x40000002 EBX bits 31:16.
pub const HYPERV_VERSION_MAJOR: u32 = 10;
/// Minor version reported in 0x40000002 EBX bits 15:0.
pub const HYPERV_VERSION_MINOR: u32 = 0;
/// Spinlock retry count that means "never notify the hypervisor" (0x40000004 EBX).
pub const SPINLOCKS_NEVER_NOTIFY: u32 = 0xffff_ffff;
/// How far [`relocate_kvm_leaves`] moves KVM's leaves.
pub const KVM_LEAVES_OFFSET: u32 = 0x100;

// 0x40000003 EAX, partition privileges (TLFS HV_PARTITION_PRIVILEGE_MASK, low half; Linux
// "Group A" in include/asm-generic/hyperv-tlfs.h).
/// AccessVpRunTimeReg: HV_X64_MSR_VP_RUNTIME.
pub const HV_MSR_VP_RUNTIME_AVAILABLE: u32 = 1 << 0;
/// AccessPartitionReferenceCounter: HV_X64_MSR_TIME_REF_COUNT.
pub const HV_MSR_TIME_REF_COUNT_AVAILABLE: u32 = 1 << 1;
/// AccessSynicRegs: SCONTROL..EOM and SINT0..SINT15.
pub const HV_MSR_SYNIC_AVAILABLE: u32 = 1 << 2;
/// AccessSyntheticTimerRegs: STIMER0_CONFIG..STIMER3_COUNT.
pub const HV_MSR_SYNTIMER_AVAILABLE: u32 = 1 << 3;
/// AccessIntrCtrlRegs: the APIC MSRs EOI/ICR/TPR and the VP assist page.
pub const HV_MSR_APIC_ACCESS_AVAILABLE: u32 = 1 << 4;
/// AccessHypercallMsrs: GUEST_OS_ID and HYPERCALL (set with any enlightenment).
pub const HV_MSR_HYPERCALL_AVAILABLE: u32 = 1 << 5;
/// AccessVpIndex: HV_X64_MSR_VP_INDEX.
pub const HV_MSR_VP_INDEX_AVAILABLE: u32 = 1 << 6;
/// AccessResetReg: HV_X64_MSR_RESET.
pub const HV_MSR_RESET_AVAILABLE: u32 = 1 << 7;
/// AccessPartitionReferenceTsc: HV_X64_MSR_REFERENCE_TSC. Without it Windows reads time
/// through TIME_REF_COUNT, an MSR exit per read.
pub const HV_MSR_REFERENCE_TSC_AVAILABLE: u32 = 1 << 9;
/// AccessGuestIdleReg. Never set: KVM does not implement HV_X64_MSR_GUEST_IDLE.
pub const HV_MSR_GUEST_IDLE_AVAILABLE: u32 = 1 << 10;
/// AccessFrequencyRegs: TSC_FREQUENCY and APIC_FREQUENCY.
pub const HV_ACCESS_FREQUENCY_MSRS: u32 = 1 << 11;
/// AccessReenlightenmentControls: REENLIGHTENMENT_CONTROL, TSC_EMULATION_CONTROL/STATUS.
pub const HV_ACCESS_REENLIGHTENMENT: u32 = 1 << 13;

// 0x40000003 EDX, miscellaneous features (Linux "Group D", x86 in asm/hyperv-tlfs.h).
/// Frequency MSRs available (pairs with [`HV_ACCESS_FREQUENCY_MSRS`]).
pub const HV_FEATURE_FREQUENCY_MSRS_AVAILABLE: u32 = 1 << 8;
/// Guest crash MSRs CRASH_P0..P4 and CRASH_CTL available.
pub const HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE: u32 = 1 << 10;
/// Extended GVA ranges for the flush hypercalls.
pub const HV_FEATURE_EXT_GVA_RANGES_FLUSH: u32 = 1 << 14;
/// Synthetic timers may deliver expiry as a plain interrupt ("direct mode").
pub const HV_STIMER_DIRECT_MODE_AVAILABLE: u32 = 1 << 19;

// 0x40000004 EAX, implementation recommendations (asm/hyperv-tlfs.h).
/// Use hypercalls for remote TLB flushes instead of IPIs.
pub const HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED: u32 = 1 << 2;
/// Use the EOI/ICR/TPR MSRs instead of the memory-mapped APIC.
pub const HV_X64_APIC_ACCESS_RECOMMENDED: u32 = 1 << 3;
/// Relaxed timing: disable watchdogs that assume timely interrupt delivery.
pub const HV_X64_RELAXED_TIMING_RECOMMENDED: u32 = 1 << 5;
/// Do not use SynIC auto-EOI (lets KVM keep APICv/AVIC on).
pub const HV_DEPRECATING_AEOI_RECOMMENDED: u32 = 1 << 9;
/// Use the synthetic cluster IPI hypercalls.
pub const HV_X64_CLUSTER_IPI_RECOMMENDED: u32 = 1 << 10;
/// Use the "Ex" (sparse VP set) forms of the flush and IPI hypercalls, needed past 64 vCPUs.
pub const HV_X64_EX_PROCESSOR_MASKS_RECOMMENDED: u32 = 1 << 11;

// 0x4000000A EAX, nested features (asm/hyperv-tlfs.h).
/// L2 TLB flush hypercalls are handled by L0 directly.
pub const HV_X64_NESTED_DIRECT_FLUSH: u32 = 1 << 17;

/// One Hyper-V enlightenment (the value of `spinlocks` and `vendor-id` live in [`HypervConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HvFeature {
    /// `relaxed`: no watchdog timeouts.
    Relaxed,
    /// `vapic`: APIC MSRs and the VP assist page (exit-less EOI).
    Vapic,
    /// `spinlocks=N`: notify the hypervisor after N failed spinlock retries.
    Spinlocks,
    /// `vpindex`: HV_X64_MSR_VP_INDEX.
    Vpindex,
    /// `runtime`: HV_X64_MSR_VP_RUNTIME.
    Runtime,
    /// `crash`: crash MSRs, reported to the VMM.
    Crash,
    /// `time`: reference counter MSR and reference TSC page.
    Time,
    /// `synic`: synthetic interrupt controller.
    Synic,
    /// `stimer`: synthetic timers.
    Stimer,
    /// `stimer-direct`: synthetic timers in direct (interrupt) mode.
    StimerDirect,
    /// `frequencies`: TSC and APIC frequency MSRs.
    Frequencies,
    /// `reenlightenment`: TSC change notification (nested Hyper-V).
    Reenlightenment,
    /// `tlbflush`: PV remote TLB flush hypercalls.
    Tlbflush,
    /// `tlbflush-ext`: extended GVA ranges in the flush hypercalls.
    TlbflushExt,
    /// `tlbflush-direct`: L0 handles L2 flush hypercalls (nested Hyper-V).
    TlbflushDirect,
    /// `ipi`: PV IPI hypercalls.
    Ipi,
    /// `reset`: HV_X64_MSR_RESET.
    Reset,
    /// `avic`: SynIC without auto-EOI, so APICv/AVIC stays usable.
    Avic,
}

/// The CPUID bits one enlightenment sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HvCpuidBits {
    /// 0x40000003 EAX (partition privileges).
    pub features_eax: u32,
    /// 0x40000003 EDX (miscellaneous features).
    pub features_edx: u32,
    /// 0x40000004 EAX (recommendations).
    pub recommendations_eax: u32,
    /// 0x4000000A EAX (nested features).
    pub nested_eax: u32,
}

const fn cb(features_eax: u32, features_edx: u32, rec: u32, nested: u32) -> HvCpuidBits {
    HvCpuidBits {
        features_eax,
        features_edx,
        recommendations_eax: rec,
        nested_eax: nested,
    }
}

impl HvFeature {
    /// Every enlightenment, in the order errors and logs list them.
    pub const ALL: [HvFeature; 18] = [
        Self::Relaxed,
        Self::Vapic,
        Self::Spinlocks,
        Self::Vpindex,
        Self::Runtime,
        Self::Crash,
        Self::Time,
        Self::Synic,
        Self::Stimer,
        Self::StimerDirect,
        Self::Frequencies,
        Self::Reenlightenment,
        Self::Tlbflush,
        Self::TlbflushExt,
        Self::TlbflushDirect,
        Self::Ipi,
        Self::Reset,
        Self::Avic,
    ];

    /// The name in QEMU's spelling without `hv-`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Relaxed => "relaxed",
            Self::Vapic => "vapic",
            Self::Spinlocks => "spinlocks",
            Self::Vpindex => "vpindex",
            Self::Runtime => "runtime",
            Self::Crash => "crash",
            Self::Time => "time",
            Self::Synic => "synic",
            Self::Stimer => "stimer",
            Self::StimerDirect => "stimer-direct",
            Self::Frequencies => "frequencies",
            Self::Reenlightenment => "reenlightenment",
            Self::Tlbflush => "tlbflush",
            Self::TlbflushExt => "tlbflush-ext",
            Self::TlbflushDirect => "tlbflush-direct",
            Self::Ipi => "ipi",
            Self::Reset => "reset",
            Self::Avic => "avic",
        }
    }

    /// The feature called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Enlightenments this one needs (directly), per the TLFS and KVM: SynIC messages name
    /// VPs by index; synthetic timers post to SynIC and count reference time; direct mode is a
    /// timer mode; flush and IPI hypercalls take VP indexes; extended ranges extend the flush
    /// hypercalls; the direct flush is set up through the VP assist page.
    pub const fn dependencies(self) -> &'static [HvFeature] {
        match self {
            Self::Synic => &[Self::Vpindex],
            Self::Stimer => &[Self::Synic, Self::Time],
            Self::StimerDirect => &[Self::Stimer],
            Self::Tlbflush => &[Self::Vpindex],
            Self::TlbflushExt => &[Self::Tlbflush],
            Self::TlbflushDirect => &[Self::Vapic],
            Self::Ipi => &[Self::Vpindex],
            _ => &[],
        }
    }

    /// The CPUID bits this enlightenment sets by itself. Every enabled configuration also gets
    /// [`HV_MSR_HYPERCALL_AVAILABLE`], and `avic` withdraws `vapic`'s
    /// [`HV_X64_APIC_ACCESS_RECOMMENDED`] (see [`HypervConfig::cpuid_bits`]).
    pub const fn cpuid_bits(self) -> HvCpuidBits {
        let ex = HV_X64_EX_PROCESSOR_MASKS_RECOMMENDED;
        match self {
            Self::Relaxed => cb(0, 0, HV_X64_RELAXED_TIMING_RECOMMENDED, 0),
            Self::Vapic => cb(
                HV_MSR_APIC_ACCESS_AVAILABLE,
                0,
                HV_X64_APIC_ACCESS_RECOMMENDED,
                0,
            ),
            Self::Spinlocks => cb(0, 0, 0, 0),
            Self::Vpindex => cb(HV_MSR_VP_INDEX_AVAILABLE, 0, 0, 0),
            Self::Runtime => cb(HV_MSR_VP_RUNTIME_AVAILABLE, 0, 0, 0),
            Self::Crash => cb(0, HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE, 0, 0),
            Self::Time => cb(
                HV_MSR_TIME_REF_COUNT_AVAILABLE | HV_MSR_REFERENCE_TSC_AVAILABLE,
                0,
                0,
                0,
            ),
            Self::Synic => cb(HV_MSR_SYNIC_AVAILABLE, 0, 0, 0),
            Self::Stimer => cb(HV_MSR_SYNTIMER_AVAILABLE, 0, 0, 0),
            Self::StimerDirect => cb(0, HV_STIMER_DIRECT_MODE_AVAILABLE, 0, 0),
            Self::Frequencies => cb(
                HV_ACCESS_FREQUENCY_MSRS,
                HV_FEATURE_FREQUENCY_MSRS_AVAILABLE,
                0,
                0,
            ),
            Self::Reenlightenment => cb(HV_ACCESS_REENLIGHTENMENT, 0, 0, 0),
            Self::Tlbflush => cb(0, 0, HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED | ex, 0),
            Self::TlbflushExt => cb(0, HV_FEATURE_EXT_GVA_RANGES_FLUSH, 0, 0),
            Self::TlbflushDirect => cb(0, 0, 0, HV_X64_NESTED_DIRECT_FLUSH),
            Self::Ipi => cb(0, 0, HV_X64_CLUSTER_IPI_RECOMMENDED | ex, 0),
            Self::Reset => cb(HV_MSR_RESET_AVAILABLE, 0, 0, 0),
            Self::Avic => cb(0, 0, HV_DEPRECATING_AEOI_RECOMMENDED, 0),
        }
    }

    const fn mask(self) -> u32 {
        1 << self as u32
    }
}

/// Errors choosing Hyper-V enlightenments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HypervError {
    /// An enlightenment whose prerequisite is off.
    #[error("hyperv: {feature} needs {needs}")]
    MissingDependency {
        /// The enlightenment asked for.
        feature: &'static str,
        /// The enlightenment it needs.
        needs: &'static str,
    },
    /// An enlightenment the host's KVM cannot provide.
    #[error("hyperv: {feature} needs {capability}, which this host lacks")]
    HostLacks {
        /// The enlightenment asked for.
        feature: &'static str,
        /// The KVM capability (or interface) it needs.
        capability: &'static str,
    },
}

/// The enlightenments chosen for a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypervConfig {
    features: u32,
    spinlocks: u32,
    vendor_id: String,
    /// Set by `on`: narrow to the host in [`HypervConfig::resolve`].
    host_all: bool,
}

impl Default for HypervConfig {
    fn default() -> Self {
        Self::off()
    }
}

impl HypervConfig {
    /// No enlightenments: the KVM leaves stay where they are.
    pub fn off() -> Self {
        Self {
            features: 0,
            spinlocks: SPINLOCKS_NEVER_NOTIFY,
            vendor_id: HYPERV_DEFAULT_VENDOR_ID.to_string(),
            host_all: false,
        }
    }

    /// Every enlightenment Keel knows, spinlocks never notifying, the default vendor id.
    pub fn all() -> Self {
        HvFeature::ALL.into_iter().fold(Self::off(), Self::with)
    }

    /// `on`: every enlightenment Keel knows, narrowed to what the host supports by
    /// [`HypervConfig::resolve`].
    pub fn on() -> Self {
        Self {
            host_all: true,
            ..Self::all()
        }
    }

    /// This configuration with `feature` on (no dependency check).
    pub fn with(mut self, feature: HvFeature) -> Self {
        self.features |= feature.mask();
        self
    }

    /// This configuration with `feature` off.
    pub fn without(mut self, feature: HvFeature) -> Self {
        self.features &= !feature.mask();
        self
    }

    /// This configuration with `retries` reported as the spinlock retry count (0x40000004 EBX;
    /// [`SPINLOCKS_NEVER_NOTIFY`] means never notify). Does not turn `spinlocks` on.
    pub fn with_spinlocks(mut self, retries: u32) -> Self {
        self.spinlocks = retries;
        self
    }

    /// This configuration with `id` as the vendor id (0x40000000 EBX/ECX/EDX; bytes past
    /// [`HYPERV_VENDOR_ID_MAX_LEN`] are not reported). Enables nothing by itself.
    pub fn with_vendor_id(mut self, id: &str) -> Self {
        self.vendor_id = id.to_string();
        self
    }

    /// Whether any enlightenment is on (`vendor-id` alone enables nothing).
    pub fn enabled(&self) -> bool {
        self.features != 0
    }

    /// Whether this came from `on`.
    pub fn is_on(&self) -> bool {
        self.host_all
    }

    /// Whether `feature` is on.
    pub fn has(&self, feature: HvFeature) -> bool {
        self.features & feature.mask() != 0
    }

    /// The enlightenments that are on, in [`HvFeature::ALL`] order.
    pub fn features(&self) -> Vec<HvFeature> {
        HvFeature::ALL
            .into_iter()
            .filter(|&f| self.has(f))
            .collect()
    }

    /// Names of the enlightenments that are on (for logs).
    pub fn names(&self) -> Vec<&'static str> {
        self.features().into_iter().map(HvFeature::name).collect()
    }

    /// Spinlock retries reported in 0x40000004 EBX.
    pub fn spinlocks(&self) -> u32 {
        self.spinlocks
    }

    /// Vendor id reported in 0x40000000 EBX/ECX/EDX.
    pub fn vendor_id(&self) -> &str {
        &self.vendor_id
    }

    /// The enlightenments the host supports, minus those whose prerequisites that leaves out.
    pub fn intersect(&self, host: &HostHvSupport) -> Self {
        let mut out = self.clone();
        out.host_all = false;
        for f in HvFeature::ALL {
            if !host.supports(f) {
                out = out.without(f);
            }
        }
        loop {
            let unmet = HvFeature::ALL
                .into_iter()
                .find(|&f| out.has(f) && f.dependencies().iter().any(|&d| !out.has(d)));
            match unmet {
                Some(f) => out = out.without(f),
                None => return out,
            }
        }
    }

    /// The configuration to install: for `on`, [`Self::intersect`] with the host; otherwise
    /// this one unchanged.
    pub fn resolve(&self, host: &HostHvSupport) -> Self {
        if self.host_all {
            self.intersect(host)
        } else {
            self.clone()
        }
    }

    /// Checks that every enlightenment's prerequisites are on, then that the host supports each.
    pub fn check(&self, host: &HostHvSupport) -> Result<(), HypervError> {
        for f in self.features() {
            if let Some(&needs) = f.dependencies().iter().find(|&&d| !self.has(d)) {
                return Err(HypervError::MissingDependency {
                    feature: f.name(),
                    needs: needs.name(),
                });
            }
        }
        for f in self.features() {
            if let Some(capability) = host.missing_capability(f) {
                return Err(HypervError::HostLacks {
                    feature: f.name(),
                    capability,
                });
            }
        }
        Ok(())
    }

    /// The CPUID bits of all enlightenments that are on, including
    /// [`HV_MSR_HYPERCALL_AVAILABLE`]; with `avic` the APIC MSRs are offered but no longer
    /// recommended, since APICv/AVIC handles EOI and TPR without an exit and the MSRs take one.
    pub fn cpuid_bits(&self) -> HvCpuidBits {
        if !self.enabled() {
            return HvCpuidBits::default();
        }
        let mut bits = cb(HV_MSR_HYPERCALL_AVAILABLE, 0, 0, 0);
        for f in self.features() {
            let b = f.cpuid_bits();
            bits.features_eax |= b.features_eax;
            bits.features_edx |= b.features_edx;
            bits.recommendations_eax |= b.recommendations_eax;
            bits.nested_eax |= b.nested_eax;
        }
        if self.has(HvFeature::Avic) {
            bits.recommendations_eax &= !HV_X64_APIC_ACCESS_RECOMMENDED;
        }
        bits
    }

    fn vendor_regs(&self) -> [u32; 3] {
        let mut bytes = [0u8; HYPERV_VENDOR_ID_MAX_LEN];
        let id = self.vendor_id.as_bytes();
        let n = id.len().min(HYPERV_VENDOR_ID_MAX_LEN);
        bytes[..n].copy_from_slice(&id[..n]);
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        [word(0), word(4), word(8)]
    }
}

fn leaf(function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    }
}

/// The Hyper-V leaves 0x40000000..=0x4000000A for `cfg` (empty when `cfg` enables nothing).
/// `cfg` should have passed [`HypervConfig::check`]; this function does not look at the host.
pub fn hyperv_leaves(cfg: &HypervConfig, num_vcpus: u32) -> Vec<kvm_cpuid_entry2> {
    if !cfg.enabled() {
        return Vec::new();
    }
    let bits = cfg.cpuid_bits();
    let [vendor_b, vendor_c, vendor_d] = cfg.vendor_regs();
    let vcpus = num_vcpus.max(1);
    let version = (HYPERV_VERSION_MAJOR << 16) | HYPERV_VERSION_MINOR;
    let mut leaves = vec![
        leaf(
            HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS,
            HYPERV_CPUID_MAX_LEAF,
            vendor_b,
            vendor_c,
            vendor_d,
        ),
        leaf(HYPERV_CPUID_INTERFACE, HYPERV_INTERFACE_SIGNATURE, 0, 0, 0),
        leaf(HYPERV_CPUID_VERSION, HYPERV_BUILD_NUMBER, version, 0, 0),
        // EBX (partition creation flags) stays 0: Keel has no VMBus, so no post-message or
        // signal-event rights.
        leaf(
            HYPERV_CPUID_FEATURES,
            bits.features_eax,
            0,
            0,
            bits.features_edx,
        ),
        leaf(
            HYPERV_CPUID_ENLIGHTMENT_INFO,
            bits.recommendations_eax,
            cfg.spinlocks,
            0,
            0,
        ),
        // Every VP and logical processor the guest will see is one of its vCPUs.
        leaf(HYPERV_CPUID_IMPLEMENT_LIMITS, vcpus, vcpus, 0, 0),
    ];
    // 0x40000006 (host hardware features in use), 0x40000007 (root-partition CPU management),
    // 0x40000008 (shared virtual memory) and 0x40000009 (nested hypervisor features): nothing.
    for function in HYPERV_CPUID_HARDWARE_FEATURES..HYPERV_CPUID_NESTED_FEATURES {
        leaves.push(leaf(function, 0, 0, 0, 0));
    }
    leaves.push(leaf(HYPERV_CPUID_NESTED_FEATURES, bits.nested_eax, 0, 0, 0));
    leaves
}

/// Moves every entry in 0x40000000..=0x400000FF (KVM's signature and features, Keel's timing
/// leaf) up by [`KVM_LEAVES_OFFSET`], replacing whatever was there, and sets the moved
/// signature leaf's EAX to the highest moved leaf.
pub fn relocate_kvm_leaves(entries: &mut Vec<kvm_cpuid_entry2>) {
    const FIRST: u32 = HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS;
    let in_range = |f: u32, base: u32| (base..base + KVM_LEAVES_OFFSET).contains(&f);
    if !entries.iter().any(|e| in_range(e.function, FIRST)) {
        return;
    }
    let target = FIRST + KVM_LEAVES_OFFSET;
    entries.retain(|e| !in_range(e.function, target));
    let mut highest = target;
    for e in entries.iter_mut().filter(|e| in_range(e.function, FIRST)) {
        e.function += KVM_LEAVES_OFFSET;
        highest = highest.max(e.function);
    }
    if let Some(base) = entries.iter_mut().find(|e| e.function == target) {
        base.eax = highest;
    }
}

/// Checks `cfg` against `host`, and if it enables anything, relocates the KVM leaves and
/// installs the Hyper-V ones. Returns the names of the enlightenments the guest gets (empty for
/// `off`, when `entries` is left alone). Call after [`crate::cpuid::adjust`]; calling it again
/// on the same entries replaces the Hyper-V leaves and leaves the KVM ones where they are.
pub fn apply_hyperv(
    entries: &mut Vec<kvm_cpuid_entry2>,
    cfg: &HypervConfig,
    host: &HostHvSupport,
    num_vcpus: u32,
) -> Result<Vec<&'static str>, HypervError> {
    let cfg = cfg.resolve(host);
    if !cfg.enabled() {
        return Ok(Vec::new());
    }
    cfg.check(host)?;
    // Applying twice must not move the Hyper-V leaves over the relocated KVM ones.
    let installed = entries
        .iter()
        .any(|e| e.function == HYPERV_CPUID_INTERFACE && e.eax == HYPERV_INTERFACE_SIGNATURE);
    if !installed {
        relocate_kvm_leaves(entries);
    }
    let range = HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS..=HYPERV_CPUID_MAX_LEAF;
    entries.retain(|e| !range.contains(&e.function));
    entries.extend(hyperv_leaves(&cfg, num_vcpus));
    Ok(cfg.names())
}

#[cfg(test)]
mod tests;
