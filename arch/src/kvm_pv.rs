//! KVM's paravirtual features: the bits of CPUID 0x40000001 EAX ("KVM_CPUID_FEATURES") that tell
//! a guest which KVM interfaces (kvmclock, PV EOI, PV spinlock unhalt, PV TLB flush, ...) it may
//! use, and the named groups of them Keel grants ([`KVM_PV_NAMES`]). The words a user types
//! (`on`, `off`, `hidden` or a list of names) are parsed by the VMM's configuration into a
//! [`KvmPvRequest`].
//!
//! The host's offer is whatever KVM_GET_SUPPORTED_CPUID returned in the KVM features leaf; the
//! guest gets a subset of it. `off` clears the feature bits but keeps the "KVMKVMKVM" signature
//! leaf, so the guest still knows it runs on KVM, just without paravirtual interfaces.
//! `hidden` removes KVM's leaves altogether (signature, features and whatever else sits in
//! KVM's 0x100-leaf block, such as Keel's 0x40000010 timing leaf), as QEMU's `-cpu ...,kvm=off`
//! does: the guest finds no "KVMKVMKVM" at any 0x40000x00 base, so it neither uses kvmclock nor
//! any other KVM interface, and a guest that also gets Hyper-V's leaves uses those (Linux
//! prefers KVM's leaves whenever it finds them).
//!
//! The KVM leaves are found by their signature at 0x40000000 + n * 0x100, the way Linux looks for
//! them, so this works before and after Hyper-V relocates them (see [`crate::hyperv`]).
//!
//! KVM checks guest use of these interfaces against the guest CPUID only when the VMM enables
//! KVM_CAP_ENFORCE_PV_FEATURE_CPUID on the vCPU; without it a hidden MSR still works.

use std::fmt;

use kvm_bindings::kvm_cpuid_entry2;

// Bit numbers and MSR numbers below were checked against Linux's
// arch/x86/include/uapi/asm/kvm_para.h (KVM_FEATURE_* 0-17 and 24, MSR_KVM_* 0x11, 0x12 and
// 0x4b564d00-0x4b564d08) and against what arch/x86/kvm/cpuid.c puts in KVM_GET_SUPPORTED_CPUID
// (every bit but MMU_OP, MSI_EXT_DEST_ID, HC_MAP_GPA_RANGE and MIGRATION_CONTROL; STEAL_TIME only
// with scheduler statistics). Bit 8 is unassigned.

/// CPUID leaf of KVM's signature when nothing moved it: EBX/ECX/EDX = "KVMKVMKVM\0\0\0".
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
/// CPUID leaf of KVM's feature bits (EAX) and hints (EDX), relative base 0x40000000.
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// "KVMK", "VMKV", "M\0\0\0": KVM's signature in EBX, ECX, EDX of its base leaf.
pub const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// kvmclock through the original MSRs 0x11/0x12.
pub const KVM_FEATURE_CLOCKSOURCE: u32 = 0;
/// Port 0x80 delays are not needed.
pub const KVM_FEATURE_NOP_IO_DELAY: u32 = 1;
/// Deprecated MMU hypercalls (never offered by current KVM).
pub const KVM_FEATURE_MMU_OP: u32 = 2;
/// kvmclock through MSRs 0x4b564d00/0x4b564d01.
pub const KVM_FEATURE_CLOCKSOURCE2: u32 = 3;
/// Asynchronous page faults (MSR_KVM_ASYNC_PF_EN).
pub const KVM_FEATURE_ASYNC_PF: u32 = 4;
/// Steal-time accounting (MSR_KVM_STEAL_TIME).
pub const KVM_FEATURE_STEAL_TIME: u32 = 5;
/// Paravirtual end-of-interrupt (MSR_KVM_PV_EOI_EN).
pub const KVM_FEATURE_PV_EOI: u32 = 6;
/// Paravirtual spinlocks: KVM_HC_KICK_CPU wakes a halted vCPU.
pub const KVM_FEATURE_PV_UNHALT: u32 = 7;
/// Paravirtual TLB flush of preempted vCPUs through the steal-time area.
pub const KVM_FEATURE_PV_TLB_FLUSH: u32 = 9;
/// Async page faults may be delivered as #PF VM exits to a nested hypervisor.
pub const KVM_FEATURE_ASYNC_PF_VMEXIT: u32 = 10;
/// Multicast IPIs through the KVM_HC_SEND_IPI hypercall.
pub const KVM_FEATURE_PV_SEND_IPI: u32 = 11;
/// Guest control of host-side halt polling (MSR_KVM_POLL_CONTROL).
pub const KVM_FEATURE_POLL_CONTROL: u32 = 12;
/// Yield to a preempted vCPU through KVM_HC_SCHED_YIELD.
pub const KVM_FEATURE_PV_SCHED_YIELD: u32 = 13;
/// "Page ready" async-PF events as an interrupt (MSR_KVM_ASYNC_PF_INT/ACK).
pub const KVM_FEATURE_ASYNC_PF_INT: u32 = 14;
/// MSI address bits 11:5 carry destination ID bits 14:8.
pub const KVM_FEATURE_MSI_EXT_DEST_ID: u32 = 15;
/// The KVM_HC_MAP_GPA_RANGE hypercall.
pub const KVM_FEATURE_HC_MAP_GPA_RANGE: u32 = 16;
/// MSR_KVM_MIGRATION_CONTROL.
pub const KVM_FEATURE_MIGRATION_CONTROL: u32 = 17;
/// kvmclock's PVCLOCK_TSC_STABLE flag may be trusted.
pub const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 24;

/// kvmclock wall clock, old number (KVM_FEATURE_CLOCKSOURCE).
pub const MSR_KVM_WALL_CLOCK: u32 = 0x11;
/// kvmclock system time, old number (KVM_FEATURE_CLOCKSOURCE).
pub const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
/// kvmclock wall clock (KVM_FEATURE_CLOCKSOURCE2).
pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
/// kvmclock system time (KVM_FEATURE_CLOCKSOURCE2).
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// Async page fault control (KVM_FEATURE_ASYNC_PF).
pub const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
/// Steal-time area (KVM_FEATURE_STEAL_TIME).
pub const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
/// PV EOI area (KVM_FEATURE_PV_EOI).
pub const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
/// Host halt-polling control (KVM_FEATURE_POLL_CONTROL).
pub const MSR_KVM_POLL_CONTROL: u32 = 0x4b56_4d05;
/// "Page ready" interrupt vector (KVM_FEATURE_ASYNC_PF_INT).
pub const MSR_KVM_ASYNC_PF_INT: u32 = 0x4b56_4d06;
/// "Page ready" acknowledgement (KVM_FEATURE_ASYNC_PF_INT).
pub const MSR_KVM_ASYNC_PF_ACK: u32 = 0x4b56_4d07;
/// Migration control (KVM_FEATURE_MIGRATION_CONTROL).
pub const MSR_KVM_MIGRATION_CONTROL: u32 = 0x4b56_4d08;

/// Every KVM paravirtual MSR, with the feature bit that makes it available.
pub const KVM_PV_MSRS: &[(u32, &str, u32)] = &[
    (
        MSR_KVM_WALL_CLOCK,
        "MSR_KVM_WALL_CLOCK",
        KVM_FEATURE_CLOCKSOURCE,
    ),
    (
        MSR_KVM_SYSTEM_TIME,
        "MSR_KVM_SYSTEM_TIME",
        KVM_FEATURE_CLOCKSOURCE,
    ),
    (
        MSR_KVM_WALL_CLOCK_NEW,
        "MSR_KVM_WALL_CLOCK_NEW",
        KVM_FEATURE_CLOCKSOURCE2,
    ),
    (
        MSR_KVM_SYSTEM_TIME_NEW,
        "MSR_KVM_SYSTEM_TIME_NEW",
        KVM_FEATURE_CLOCKSOURCE2,
    ),
    (
        MSR_KVM_ASYNC_PF_EN,
        "MSR_KVM_ASYNC_PF_EN",
        KVM_FEATURE_ASYNC_PF,
    ),
    (
        MSR_KVM_STEAL_TIME,
        "MSR_KVM_STEAL_TIME",
        KVM_FEATURE_STEAL_TIME,
    ),
    (MSR_KVM_PV_EOI_EN, "MSR_KVM_PV_EOI_EN", KVM_FEATURE_PV_EOI),
    (
        MSR_KVM_POLL_CONTROL,
        "MSR_KVM_POLL_CONTROL",
        KVM_FEATURE_POLL_CONTROL,
    ),
    (
        MSR_KVM_ASYNC_PF_INT,
        "MSR_KVM_ASYNC_PF_INT",
        KVM_FEATURE_ASYNC_PF_INT,
    ),
    (
        MSR_KVM_ASYNC_PF_ACK,
        "MSR_KVM_ASYNC_PF_ACK",
        KVM_FEATURE_ASYNC_PF_INT,
    ),
    (
        MSR_KVM_MIGRATION_CONTROL,
        "MSR_KVM_MIGRATION_CONTROL",
        KVM_FEATURE_MIGRATION_CONTROL,
    ),
];

const fn bit(n: u32) -> u32 {
    1 << n
}

/// One name of Keel's vocabulary and the feature bits behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmPvName {
    /// The user-facing name.
    pub name: &'static str,
    /// The bit the host must offer for the name to be granted.
    pub required: u32,
    /// The kvm_para.h name of [`Self::required`].
    pub required_const: &'static str,
    /// Companion bits granted along with the required one when the host offers them.
    pub optional: u32,
}

const fn pv(name: &'static str, required: u32, c: &'static str, optional: u32) -> KvmPvName {
    KvmPvName {
        name,
        required,
        required_const: c,
        optional,
    }
}

/// Keel's names for KVM paravirtual features.
///
/// `kvmclock` needs CLOCKSOURCE2 (the MSRs current guests use) and brings the legacy
/// CLOCKSOURCE MSRs and the STABLE bit along; `async_pf` needs ASYNC_PF and brings the
/// interrupt-based "page ready" delivery (which current Linux guests require before they use
/// async PF at all) and the nested VM-exit delivery along. `msi_ext_dest_id` is never in KVM's offer:
/// KVM_GET_SUPPORTED_CPUID leaves it to the VMM, which adds the bit to the offer itself once its
/// MSI routing moves address bits 11:5 into the route's high address (KVM_CAP_X2APIC_API).
pub const KVM_PV_NAMES: &[KvmPvName] = &[
    pv(
        "kvmclock",
        bit(KVM_FEATURE_CLOCKSOURCE2),
        "KVM_FEATURE_CLOCKSOURCE2",
        bit(KVM_FEATURE_CLOCKSOURCE) | bit(KVM_FEATURE_CLOCKSOURCE_STABLE_BIT),
    ),
    pv("pv_eoi", bit(KVM_FEATURE_PV_EOI), "KVM_FEATURE_PV_EOI", 0),
    pv(
        "pv_unhalt",
        bit(KVM_FEATURE_PV_UNHALT),
        "KVM_FEATURE_PV_UNHALT",
        0,
    ),
    pv(
        "pv_tlb_flush",
        bit(KVM_FEATURE_PV_TLB_FLUSH),
        "KVM_FEATURE_PV_TLB_FLUSH",
        0,
    ),
    pv(
        "pv_ipi",
        bit(KVM_FEATURE_PV_SEND_IPI),
        "KVM_FEATURE_PV_SEND_IPI",
        0,
    ),
    pv(
        "pv_sched_yield",
        bit(KVM_FEATURE_PV_SCHED_YIELD),
        "KVM_FEATURE_PV_SCHED_YIELD",
        0,
    ),
    pv(
        "steal_time",
        bit(KVM_FEATURE_STEAL_TIME),
        "KVM_FEATURE_STEAL_TIME",
        0,
    ),
    pv(
        "async_pf",
        bit(KVM_FEATURE_ASYNC_PF),
        "KVM_FEATURE_ASYNC_PF",
        bit(KVM_FEATURE_ASYNC_PF_INT) | bit(KVM_FEATURE_ASYNC_PF_VMEXIT),
    ),
    pv(
        "poll_control",
        bit(KVM_FEATURE_POLL_CONTROL),
        "KVM_FEATURE_POLL_CONTROL",
        0,
    ),
    pv(
        "msi_ext_dest_id",
        bit(KVM_FEATURE_MSI_EXT_DEST_ID),
        "KVM_FEATURE_MSI_EXT_DEST_ID",
        0,
    ),
];

/// Errors granting KVM paravirtual features.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvmPvError {
    /// A listed feature the host does not offer.
    #[error("kvm_pv: the host does not offer {name} ({constant}, CPUID 0x40000001 EAX bit {bit})")]
    HostLacks {
        /// Keel's name of the feature.
        name: &'static str,
        /// kvm_para.h name of the missing bit.
        constant: &'static str,
        /// Bit number in the features leaf.
        bit: u32,
    },
}

/// A set of KVM paravirtual feature bits: the raw value of the features leaf's EAX.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct KvmPvFeatures(u32);

impl KvmPvFeatures {
    /// No features.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The set whose EAX value is `bits`.
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    /// The EAX value.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `mask` is in the set.
    pub const fn contains(self, mask: u32) -> bool {
        self.0 & mask == mask
    }

    /// Whether feature bit number `bit` is in the set.
    pub const fn has_bit(self, bit: u32) -> bool {
        bit < 32 && self.0 & (1 << bit) != 0
    }

    /// The set of one of [`KVM_PV_NAMES`], required and optional bits.
    pub fn named(name: &str) -> Option<Self> {
        KVM_PV_NAMES
            .iter()
            .find(|n| n.name == name)
            .map(|n| Self(n.required | n.optional))
    }

    /// Keel's names whose required bit is in the set, in [`KVM_PV_NAMES`] order (for logs).
    pub fn names(self) -> Vec<&'static str> {
        KVM_PV_NAMES
            .iter()
            .filter(|n| self.contains(n.required))
            .map(|n| n.name)
            .collect()
    }

    /// Bits in the set that no name of Keel's covers (kept by `on`, e.g. NOP_IO_DELAY).
    pub fn unnamed_bits(self) -> u32 {
        let named = KVM_PV_NAMES
            .iter()
            .fold(0, |acc, n| acc | n.required | n.optional);
        self.0 & !named
    }

    /// The KVM paravirtual MSRs a guest with these features may use, as (number, name).
    pub fn msrs_offered(self) -> Vec<(u32, &'static str)> {
        KVM_PV_MSRS
            .iter()
            .filter(|(_, _, feature)| self.has_bit(*feature))
            .map(|&(msr, name, _)| (msr, name))
            .collect()
    }
}

/// Which KVM paravirtual features the guest should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmPvRequest {
    /// Every feature the host offers, named or not.
    On,
    /// No features (the signature leaf stays).
    Off,
    /// No KVM leaves at all: no signature, no features (QEMU's `kvm=off`).
    Hidden,
    /// Exactly these features; each must be offered by the host.
    List(KvmPvFeatures),
}

impl fmt::Display for KvmPvFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names();
        if names.is_empty() {
            write!(f, "none")?;
        } else {
            write!(f, "{}", names.join(","))?;
        }
        let extra = self.unnamed_bits();
        if extra != 0 {
            write!(f, " (+bits {extra:#x})")?;
        }
        Ok(())
    }
}

/// The base leaf (0x40000000 + n * 0x100) carrying KVM's signature, if any.
pub fn kvm_base(entries: &[kvm_cpuid_entry2]) -> Option<u32> {
    (0..=0xffu32)
        .map(|n| KVM_CPUID_SIGNATURE + n * 0x100)
        .find(|&base| {
            entries
                .iter()
                .any(|e| e.function == base && [e.ebx, e.ecx, e.edx] == KVM_SIGNATURE)
        })
}

/// Removes KVM's block of leaves, base..base+0xFF wherever the signature is (everything a
/// relocation by [`crate::hyperv`] moves with it), and returns how many entries went. Other
/// hypervisor leaves (Hyper-V's, once installed) stay.
pub fn hide_kvm_leaves(entries: &mut Vec<kvm_cpuid_entry2>) -> usize {
    let Some(base) = kvm_base(entries) else {
        return 0;
    };
    let before = entries.len();
    entries.retain(|e| !(base..base + 0x100).contains(&e.function));
    before - entries.len()
}

/// Narrows the KVM features leaf of `entries` (as KVM_GET_SUPPORTED_CPUID left it, possibly
/// already relocated) to `wanted` and returns what the guest gets.
///
/// `On` keeps every bit the host offers; `Off` clears the feature bits and the hints (EDX);
/// `Hidden` removes KVM's leaves ([`hide_kvm_leaves`]); `List` keeps exactly the listed names'
/// bits, failing on the first name whose required bit the host lacks. Bits Keel has no name for
/// are dropped by a list.
pub fn apply_kvm_pv(
    entries: &mut Vec<kvm_cpuid_entry2>,
    wanted: KvmPvRequest,
) -> Result<KvmPvFeatures, KvmPvError> {
    if wanted == KvmPvRequest::Hidden {
        hide_kvm_leaves(entries);
        return Ok(KvmPvFeatures::empty());
    }
    let leaf = kvm_base(entries).map(|base| base + (KVM_CPUID_FEATURES - KVM_CPUID_SIGNATURE));
    let features = leaf.and_then(|leaf| entries.iter_mut().find(|e| e.function == leaf));
    let offer = features.as_ref().map_or(0, |e| e.eax);

    let granted = match wanted {
        KvmPvRequest::On => offer,
        KvmPvRequest::Off | KvmPvRequest::Hidden => 0,
        KvmPvRequest::List(set) => {
            let mut granted = 0;
            for name in KVM_PV_NAMES.iter().filter(|n| set.contains(n.required)) {
                if offer & name.required != name.required {
                    return Err(KvmPvError::HostLacks {
                        name: name.name,
                        constant: name.required_const,
                        bit: name.required.trailing_zeros(),
                    });
                }
                granted |= name.required | (name.optional & offer);
            }
            granted
        }
    };

    if let Some(entry) = features {
        entry.eax = granted;
        if wanted == KvmPvRequest::Off {
            entry.edx = 0;
        }
    }
    Ok(KvmPvFeatures(granted))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What current KVM offers (kvm/cpuid.c): everything but MMU_OP, MSI_EXT_DEST_ID,
    /// HC_MAP_GPA_RANGE and MIGRATION_CONTROL.
    const HOST_OFFER: u32 = bit(KVM_FEATURE_CLOCKSOURCE)
        | bit(KVM_FEATURE_NOP_IO_DELAY)
        | bit(KVM_FEATURE_CLOCKSOURCE2)
        | bit(KVM_FEATURE_ASYNC_PF)
        | bit(KVM_FEATURE_STEAL_TIME)
        | bit(KVM_FEATURE_PV_EOI)
        | bit(KVM_FEATURE_CLOCKSOURCE_STABLE_BIT)
        | bit(KVM_FEATURE_PV_UNHALT)
        | bit(KVM_FEATURE_PV_TLB_FLUSH)
        | bit(KVM_FEATURE_ASYNC_PF_VMEXIT)
        | bit(KVM_FEATURE_PV_SEND_IPI)
        | bit(KVM_FEATURE_POLL_CONTROL)
        | bit(KVM_FEATURE_PV_SCHED_YIELD)
        | bit(KVM_FEATURE_ASYNC_PF_INT);

    fn leaves(base: u32, offer: u32) -> Vec<kvm_cpuid_entry2> {
        vec![
            kvm_cpuid_entry2 {
                function: 1,
                ecx: 1 << 31,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: base,
                eax: base + 1,
                ebx: KVM_SIGNATURE[0],
                ecx: KVM_SIGNATURE[1],
                edx: KVM_SIGNATURE[2],
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: base + 1,
                eax: offer,
                edx: 1,
                ..Default::default()
            },
        ]
    }

    /// The request for exactly the named features (as the VMM's `kvm_pv=[...]` builds it).
    fn list(names: &[&str]) -> KvmPvRequest {
        let bits = names
            .iter()
            .map(|n| KvmPvFeatures::named(n).unwrap().bits())
            .fold(0, |acc, b| acc | b);
        KvmPvRequest::List(KvmPvFeatures::from_bits(bits))
    }

    fn eax(entries: &[kvm_cpuid_entry2], leaf: u32) -> u32 {
        entries.iter().find(|e| e.function == leaf).unwrap().eax
    }

    #[test]
    fn constants_match_kvm_para_h() {
        let bits = [
            (KVM_FEATURE_CLOCKSOURCE, 0),
            (KVM_FEATURE_NOP_IO_DELAY, 1),
            (KVM_FEATURE_MMU_OP, 2),
            (KVM_FEATURE_CLOCKSOURCE2, 3),
            (KVM_FEATURE_ASYNC_PF, 4),
            (KVM_FEATURE_STEAL_TIME, 5),
            (KVM_FEATURE_PV_EOI, 6),
            (KVM_FEATURE_PV_UNHALT, 7),
            (KVM_FEATURE_PV_TLB_FLUSH, 9),
            (KVM_FEATURE_ASYNC_PF_VMEXIT, 10),
            (KVM_FEATURE_PV_SEND_IPI, 11),
            (KVM_FEATURE_POLL_CONTROL, 12),
            (KVM_FEATURE_PV_SCHED_YIELD, 13),
            (KVM_FEATURE_ASYNC_PF_INT, 14),
            (KVM_FEATURE_MSI_EXT_DEST_ID, 15),
            (KVM_FEATURE_HC_MAP_GPA_RANGE, 16),
            (KVM_FEATURE_MIGRATION_CONTROL, 17),
            (KVM_FEATURE_CLOCKSOURCE_STABLE_BIT, 24),
        ];
        for (constant, expected) in bits {
            assert_eq!(constant, expected);
        }
        assert_eq!(
            (KVM_CPUID_SIGNATURE, KVM_CPUID_FEATURES),
            (0x4000_0000, 0x4000_0001)
        );
        let sig: Vec<u8> = KVM_SIGNATURE.iter().flat_map(|r| r.to_le_bytes()).collect();
        assert_eq!(&sig, b"KVMKVMKVM\0\0\0");
        let msrs: Vec<u32> = KVM_PV_MSRS.iter().map(|m| m.0).collect();
        assert_eq!(
            msrs,
            [
                0x11, 0x12, 0x4b564d00, 0x4b564d01, 0x4b564d02, 0x4b564d03, 0x4b564d04, 0x4b564d05,
                0x4b564d06, 0x4b564d07, 0x4b564d08
            ]
        );
    }

    #[test]
    fn every_name_stands_for_its_bits() {
        let expected = [
            ("kvmclock", bit(0) | bit(3) | bit(24)),
            ("pv_eoi", bit(6)),
            ("pv_unhalt", bit(7)),
            ("pv_tlb_flush", bit(9)),
            ("pv_ipi", bit(11)),
            ("pv_sched_yield", bit(13)),
            ("steal_time", bit(5)),
            ("async_pf", bit(4) | bit(10) | bit(14)),
            ("poll_control", bit(12)),
            ("msi_ext_dest_id", bit(15)),
        ];
        assert_eq!(expected.len(), KVM_PV_NAMES.len());
        for (name, bits) in expected {
            assert_eq!(
                KvmPvFeatures::named(name),
                Some(KvmPvFeatures::from_bits(bits)),
                "{name}"
            );
            assert_eq!(KvmPvFeatures::from_bits(bits).names(), vec![name]);
        }
    }

    #[test]
    fn on_keeps_every_host_bit() {
        let mut e = leaves(0x4000_0000, HOST_OFFER | bit(KVM_FEATURE_HC_MAP_GPA_RANGE));
        let got = apply_kvm_pv(&mut e, KvmPvRequest::On).unwrap();
        assert_eq!(got.bits(), HOST_OFFER | bit(KVM_FEATURE_HC_MAP_GPA_RANGE));
        assert_eq!(eax(&e, 0x4000_0001), got.bits());
        assert_eq!(got.unnamed_bits(), bit(1) | bit(16));
        assert_eq!(e[2].edx, 1, "hints stay");
        assert!(!got.names().contains(&"msi_ext_dest_id"));
    }

    #[test]
    fn off_clears_features_but_keeps_signature() {
        let mut e = leaves(0x4000_0000, HOST_OFFER);
        let got = apply_kvm_pv(&mut e, KvmPvRequest::Off).unwrap();
        assert_eq!(got, KvmPvFeatures::empty());
        assert_eq!((e[2].eax, e[2].edx), (0, 0));
        assert_eq!(kvm_base(&e), Some(0x4000_0000));
        assert_eq!(e[1].ebx, KVM_SIGNATURE[0]);
        assert!(got.msrs_offered().is_empty());
    }

    /// KVM's leaves as `arch::cpuid::adjust` leaves them: signature, features, timing leaf.
    fn leaves_with_timing(base: u32) -> Vec<kvm_cpuid_entry2> {
        let mut e = leaves(base, HOST_OFFER);
        e[1].eax = base + 0x10;
        e.push(kvm_cpuid_entry2 {
            function: base + 0x10,
            eax: 2_000_000,
            ebx: 1_000_000,
            ..Default::default()
        });
        e.push(kvm_cpuid_entry2 {
            function: 0x8000_0000,
            eax: 0x8000_0008,
            ..Default::default()
        });
        e
    }

    #[test]
    fn hidden_removes_every_kvm_leaf_and_nothing_else() {
        let mut e = leaves_with_timing(0x4000_0000);
        let got = apply_kvm_pv(&mut e, KvmPvRequest::Hidden).unwrap();
        assert_eq!(got, KvmPvFeatures::empty());
        assert!(got.msrs_offered().is_empty());
        assert_eq!(kvm_base(&e), None);
        let functions: Vec<u32> = e.iter().map(|x| x.function).collect();
        assert_eq!(functions, [1, 0x8000_0000]);
        assert_eq!(e[0].ecx, 1 << 31, "the hypervisor bit stays");
        // Idempotent, and a CPUID without KVM leaves is left alone.
        assert_eq!(hide_kvm_leaves(&mut e), 0);
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn hidden_finds_relocated_leaves_and_keeps_the_others() {
        let mut e = leaves_with_timing(0x4000_0100);
        // Another hypervisor's leaves below KVM's (Hyper-V's, after relocation).
        e.push(kvm_cpuid_entry2 {
            function: 0x4000_0000,
            eax: 0x4000_000a,
            ebx: 0x7263_694d,
            ..Default::default()
        });
        assert_eq!(hide_kvm_leaves(&mut e), 3);
        let functions: Vec<u32> = e.iter().map(|x| x.function).collect();
        assert_eq!(functions, [1, 0x8000_0000, 0x4000_0000]);
        assert!(e
            .iter()
            .all(|x| !(0x4000_0100..0x4000_0200).contains(&x.function)));
    }

    #[test]
    fn leaves_stay_unless_hidden() {
        for request in [
            KvmPvRequest::On,
            KvmPvRequest::Off,
            list(&["kvmclock", "pv_eoi"]),
        ] {
            let before = leaves_with_timing(0x4000_0000);
            let mut e = before.clone();
            apply_kvm_pv(&mut e, request).unwrap();
            let functions =
                |v: &[kvm_cpuid_entry2]| v.iter().map(|x| x.function).collect::<Vec<_>>();
            assert_eq!(functions(&e), functions(&before), "{request:?}");
            assert_eq!(kvm_base(&e), Some(0x4000_0000), "{request:?}");
            // Only the features leaf may change.
            for (a, b) in e
                .iter()
                .zip(&before)
                .filter(|(a, _)| a.function != KVM_CPUID_FEATURES)
            {
                assert_eq!(
                    [a.eax, a.ebx, a.ecx, a.edx],
                    [b.eax, b.ebx, b.ecx, b.edx],
                    "{request:?}: leaf {:#x}",
                    a.function
                );
            }
        }
    }

    #[test]
    fn list_keeps_exactly_the_named_bits() {
        let mut e = leaves(0x4000_0000, HOST_OFFER);
        let wanted = list(&["kvmclock", "pv_unhalt", "async_pf"]);
        let got = apply_kvm_pv(&mut e, wanted).unwrap();
        let expected = bit(0) | bit(3) | bit(24) | bit(7) | bit(4) | bit(10) | bit(14);
        assert_eq!(got.bits(), expected);
        assert_eq!(eax(&e, 0x4000_0001), expected);
        assert_eq!(got.names(), ["kvmclock", "pv_unhalt", "async_pf"]);
        assert_eq!(got.unnamed_bits(), 0, "NOP_IO_DELAY dropped");
    }

    #[test]
    fn optional_companions_follow_the_host() {
        // An old host: kvmclock without the STABLE bit, async PF without interrupt delivery.
        let offer = bit(KVM_FEATURE_CLOCKSOURCE2) | bit(KVM_FEATURE_ASYNC_PF);
        let mut e = leaves(0x4000_0000, offer);
        let got = apply_kvm_pv(&mut e, list(&["kvmclock", "async_pf"]));
        assert_eq!(got.unwrap().bits(), offer);
    }

    #[test]
    fn host_lacking_a_listed_feature_fails() {
        let mut e = leaves(0x4000_0000, HOST_OFFER & !bit(KVM_FEATURE_PV_SEND_IPI));
        let err = apply_kvm_pv(&mut e, list(&["kvmclock", "pv_ipi"]));
        let err = err.unwrap_err();
        assert_eq!(
            err.to_string(),
            "kvm_pv: the host does not offer pv_ipi (KVM_FEATURE_PV_SEND_IPI, CPUID 0x40000001 \
             EAX bit 11)"
        );
        assert_eq!(
            eax(&e, 0x4000_0001),
            HOST_OFFER & !bit(11),
            "left untouched"
        );

        // KVM never offers MSI_EXT_DEST_ID by itself.
        let mut e = leaves(0x4000_0000, HOST_OFFER);
        let err = apply_kvm_pv(&mut e, list(&["msi_ext_dest_id"]));
        assert!(matches!(err, Err(KvmPvError::HostLacks { bit: 15, .. })));
        // ...so a VMM that routes extended destination IDs adds it to the offer.
        e[2].eax |= bit(KVM_FEATURE_MSI_EXT_DEST_ID);
        let got = apply_kvm_pv(&mut e, list(&["msi_ext_dest_id"]));
        assert_eq!(got.unwrap().bits(), bit(15));
    }

    #[test]
    fn no_kvm_leaves() {
        let mut e = vec![kvm_cpuid_entry2 {
            function: 0,
            ..Default::default()
        }];
        assert_eq!(apply_kvm_pv(&mut e, KvmPvRequest::On).unwrap().bits(), 0);
        assert_eq!(apply_kvm_pv(&mut e, KvmPvRequest::Off).unwrap().bits(), 0);
        let err = apply_kvm_pv(&mut e, list(&["kvmclock"])).unwrap_err();
        assert!(matches!(
            err,
            KvmPvError::HostLacks {
                name: "kvmclock",
                bit: 3,
                ..
            }
        ));
    }

    #[test]
    fn relocated_leaves_are_found_by_signature() {
        let mut e = leaves(0x4000_0100, HOST_OFFER);
        assert_eq!(kvm_base(&e), Some(0x4000_0100));
        let got = apply_kvm_pv(&mut e, list(&["pv_eoi"])).unwrap();
        assert_eq!(eax(&e, 0x4000_0101), bit(6));
        assert_eq!(got.bits(), bit(6));
    }

    #[test]
    fn msrs_follow_features() {
        let set = KvmPvFeatures::from_bits(bit(3) | bit(5) | bit(14));
        let msrs: Vec<u32> = set.msrs_offered().into_iter().map(|m| m.0).collect();
        assert_eq!(
            msrs,
            [
                MSR_KVM_WALL_CLOCK_NEW,
                MSR_KVM_SYSTEM_TIME_NEW,
                MSR_KVM_STEAL_TIME,
                MSR_KVM_ASYNC_PF_INT,
                MSR_KVM_ASYNC_PF_ACK
            ]
        );
        assert_eq!(
            KvmPvFeatures::from_bits(HOST_OFFER).to_string(),
            "kvmclock,pv_eoi,pv_unhalt,pv_tlb_flush,pv_ipi,pv_sched_yield,steal_time,async_pf,\
             poll_control (+bits 0x2)"
        );
    }
}
