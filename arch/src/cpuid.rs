//! Guest CPUID: start from what KVM supports (KVM_GET_SUPPORTED_CPUID) and adjust it per vCPU
//! for Keel's topology (one socket, `num_vcpus` cores, one thread per core, APIC ID = vCPU
//! index; the caches' sharing in [`crate::cache_topology`]), set the hypervisor bit, advertise
//! the TSC frequency in leaf 0x40000010, and, on PVM hosts, hide features whose instructions
//! the host's CPL0 emulator cannot run.
//!
//! Everything works on plain `kvm_cpuid_entry2` vectors so it can be tested without `/dev/kvm`.

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// CPUID register of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    /// EAX
    Eax,
    /// EBX
    Ebx,
    /// ECX
    Ecx,
    /// EDX
    Edx,
}

/// One CPUID feature bit: `leaf`/`subleaf`, register and bit number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureBit {
    /// Short feature name as in Linux's /proc/cpuinfo.
    pub name: &'static str,
    /// CPUID function.
    pub leaf: u32,
    /// CPUID index (0 for unindexed leaves).
    pub subleaf: u32,
    /// Register holding the bit.
    pub reg: Reg,
    /// Bit number.
    pub bit: u32,
}

const fn fb(name: &'static str, leaf: u32, subleaf: u32, reg: Reg, bit: u32) -> FeatureBit {
    FeatureBit {
        name,
        leaf,
        subleaf,
        reg,
        bit,
    }
}

/// Features hidden from guests on a PVM host. The PVM instruction emulator that runs guest CPL0
/// code lacks these instructions (seen: `cmpxchg16b`, `xrstor`, `bswap`); everything built on
/// XSAVE state (AVX and later) goes with XSAVE.
pub const PVM_HIDDEN_FEATURES: &[FeatureBit] = &[
    fb("cx16", 1, 0, Reg::Ecx, 13),
    fb("movbe", 1, 0, Reg::Ecx, 22),
    fb("xsave", 1, 0, Reg::Ecx, 26),
    fb("osxsave", 1, 0, Reg::Ecx, 27),
    fb("fma", 1, 0, Reg::Ecx, 12),
    fb("avx", 1, 0, Reg::Ecx, 28),
    fb("f16c", 1, 0, Reg::Ecx, 29),
    fb("avx2", 7, 0, Reg::Ebx, 5),
    fb("avx512f", 7, 0, Reg::Ebx, 16),
    fb("avx512dq", 7, 0, Reg::Ebx, 17),
    fb("avx512ifma", 7, 0, Reg::Ebx, 21),
    fb("avx512cd", 7, 0, Reg::Ebx, 28),
    fb("avx512bw", 7, 0, Reg::Ebx, 30),
    fb("avx512vl", 7, 0, Reg::Ebx, 31),
    fb("avx512vbmi", 7, 0, Reg::Ecx, 1),
    fb("avx512_vbmi2", 7, 0, Reg::Ecx, 6),
    fb("vaes", 7, 0, Reg::Ecx, 9),
    fb("vpclmulqdq", 7, 0, Reg::Ecx, 10),
    fb("avx512_vnni", 7, 0, Reg::Ecx, 11),
    fb("avx512_bitalg", 7, 0, Reg::Ecx, 12),
    fb("avx512_vpopcntdq", 7, 0, Reg::Ecx, 14),
    fb("avx512_4vnniw", 7, 0, Reg::Edx, 2),
    fb("avx512_4fmaps", 7, 0, Reg::Edx, 3),
    fb("amx_bf16", 7, 0, Reg::Edx, 22),
    fb("avx512_fp16", 7, 0, Reg::Edx, 23),
    fb("amx_tile", 7, 0, Reg::Edx, 24),
    fb("amx_int8", 7, 0, Reg::Edx, 25),
    fb("avx_vnni", 7, 1, Reg::Eax, 4),
    fb("avx512_bf16", 7, 1, Reg::Eax, 5),
];

/// Hypervisor bit: CPUID.1:ECX[31].
pub const HYPERVISOR_BIT: FeatureBit = fb("hypervisor", 1, 0, Reg::Ecx, 31);
/// TSC-deadline timer: CPUID.1:ECX[24].
pub const TSC_DEADLINE_BIT: FeatureBit = fb("tsc_deadline_timer", 1, 0, Reg::Ecx, 24);
/// HTT (multi-threading/multi-core package): CPUID.1:EDX[28].
pub const HTT_BIT: FeatureBit = fb("ht", 1, 0, Reg::Edx, 28);

/// First leaf of the hypervisor range, where KVM puts its signature.
pub const HYPERVISOR_LEAF_BASE: u32 = 0x4000_0000;
/// Timing-information leaf (TSC and APIC bus frequency in kHz) as QEMU and VMware define it.
pub const TIMING_LEAF: u32 = 0x4000_0010;
/// KVM's local APIC timer runs at a 1 GHz bus clock; leaf 0x40000010 EBX reports it in kHz.
pub const KVM_APIC_BUS_KHZ: u32 = 1_000_000;

/// What shapes a vCPU's CPUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidConfig {
    /// Index of this vCPU; also its APIC ID.
    pub vcpu_index: u32,
    /// Number of vCPUs in the VM (all cores of one socket, one thread each).
    pub num_vcpus: u32,
    /// Host TSC frequency in kHz, advertised in leaf 0x40000010 when known.
    pub tsc_khz: Option<u32>,
    /// Whether the in-kernel APIC can run the TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER).
    pub tsc_deadline: bool,
    /// Hide [`PVM_HIDDEN_FEATURES`].
    pub hide_pvm_unsupported: bool,
}

fn reg_mut(entry: &mut kvm_cpuid_entry2, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut entry.eax,
        Reg::Ebx => &mut entry.ebx,
        Reg::Ecx => &mut entry.ecx,
        Reg::Edx => &mut entry.edx,
    }
}

fn reg_value(entry: &kvm_cpuid_entry2, reg: Reg) -> u32 {
    match reg {
        Reg::Eax => entry.eax,
        Reg::Ebx => entry.ebx,
        Reg::Ecx => entry.ecx,
        Reg::Edx => entry.edx,
    }
}

/// Whether `entry` answers CPUID `leaf`/`subleaf` (subleaf is ignored for unindexed leaves).
fn answers(entry: &kvm_cpuid_entry2, leaf: u32, subleaf: u32) -> bool {
    entry.function == leaf
        && (entry.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || entry.index == subleaf)
}

/// Finds the entry for `leaf`/`subleaf` (subleaf is ignored for unindexed leaves).
pub fn find(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| answers(e, leaf, subleaf))
}

/// Finds the entry for `leaf`/`subleaf` to change it (subleaf is ignored for unindexed leaves).
pub(crate) fn find_mut(
    entries: &mut [kvm_cpuid_entry2],
    leaf: u32,
    subleaf: u32,
) -> Option<&mut kvm_cpuid_entry2> {
    entries.iter_mut().find(|e| answers(e, leaf, subleaf))
}

/// Address-sizes leaf: EAX[7:0] is the physical address width.
pub const ADDRESS_SIZES_LEAF: u32 = 0x8000_0008;
/// Physical address width assumed when CPUID does not give a plausible one (PAE's 36 bits).
pub const DEFAULT_PHYS_BITS: u32 = 36;

/// The guest's physical address width: CPUID.80000008H:EAX[7:0], or [`DEFAULT_PHYS_BITS`] when
/// the leaf is absent or says less than 32.
pub fn phys_bits(entries: &[kvm_cpuid_entry2]) -> u32 {
    find(entries, ADDRESS_SIZES_LEAF, 0)
        .map(|e| e.eax & 0xff)
        .filter(|&b| b >= 32)
        .unwrap_or(DEFAULT_PHYS_BITS)
}

/// Whether `bit` is set in `entries`.
pub fn has_feature(entries: &[kvm_cpuid_entry2], bit: &FeatureBit) -> bool {
    find(entries, bit.leaf, bit.subleaf)
        .is_some_and(|e| reg_value(e, bit.reg) & (1 << bit.bit) != 0)
}

fn set_feature(entries: &mut [kvm_cpuid_entry2], bit: &FeatureBit, on: bool) -> bool {
    match find_mut(entries, bit.leaf, bit.subleaf) {
        Some(entry) => {
            let reg = reg_mut(entry, bit.reg);
            if on {
                *reg |= 1 << bit.bit;
            } else {
                *reg &= !(1 << bit.bit);
            }
            true
        }
        None => false,
    }
}

/// Clears every PVM-unsupported feature present in `entries`; returns the names it cleared.
pub fn hide_pvm_unsupported(entries: &mut [kvm_cpuid_entry2]) -> Vec<&'static str> {
    let mut hidden = Vec::new();
    for bit in PVM_HIDDEN_FEATURES {
        if has_feature(entries, bit) {
            set_feature(entries, bit, false);
            hidden.push(bit.name);
        }
    }
    // Without XSAVE the extended-state leaf describes nothing the guest may use.
    for entry in entries.iter_mut().filter(|e| e.function == 0xd) {
        entry.eax = 0;
        entry.ebx = 0;
        entry.ecx = 0;
        entry.edx = 0;
    }
    hidden
}

/// Number of bits needed to hold IDs `0..count` (x2APIC ID shift for a topology level).
fn id_shift(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

fn topology_entry(leaf: u32, level: u32, cfg: &CpuidConfig) -> kvm_cpuid_entry2 {
    let apic_id = cfg.vcpu_index;
    let (eax, ebx, ecx) = match level {
        // SMT level: one thread per core.
        0 => (0, 1, 1 << 8),
        // Core level: every vCPU is a core of the one package.
        1 => (id_shift(cfg.num_vcpus), cfg.num_vcpus, (2 << 8) | 1),
        // Terminating sub-leaf: level type 0.
        _ => (0, 0, level),
    };
    kvm_cpuid_entry2 {
        function: leaf,
        index: level,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx,
        edx: apic_id,
        ..Default::default()
    }
}

/// Replaces leaf `leaf` (0xB or 0x1F) with Keel's three sub-leaves.
fn set_topology_leaf(entries: &mut Vec<kvm_cpuid_entry2>, leaf: u32, cfg: &CpuidConfig) {
    entries.retain(|e| e.function != leaf);
    for level in 0..3 {
        entries.push(topology_entry(leaf, level, cfg));
    }
}

/// Adjusts the KVM-supported CPUID `entries` for one vCPU as described in the module doc.
/// Returns the names of features hidden for PVM (empty unless `hide_pvm_unsupported`).
pub fn adjust(entries: &mut Vec<kvm_cpuid_entry2>, cfg: &CpuidConfig) -> Vec<&'static str> {
    let num = cfg.num_vcpus.max(1);
    if let Some(leaf1) = find_mut(entries, 1, 0) {
        // EBX: [31:24] initial APIC ID, [23:16] logical processors per package, [15:8] CLFLUSH
        // line size in quadwords.
        leaf1.ebx = (cfg.vcpu_index << 24) | (num.min(255) << 16) | (8 << 8) | (leaf1.ebx & 0xff);
    }
    set_feature(entries, &HYPERVISOR_BIT, true);
    set_feature(entries, &TSC_DEADLINE_BIT, cfg.tsc_deadline);
    set_feature(entries, &HTT_BIT, num > 1);

    crate::cache_topology::set_cache_sharing(entries, num);

    let max_basic = find(entries, 0, 0).map_or(0, |e| e.eax);
    if max_basic >= 0xb {
        set_topology_leaf(entries, 0xb, cfg);
    }
    if max_basic >= 0x1f {
        set_topology_leaf(entries, 0x1f, cfg);
    }
    if let Some(ext) = find_mut(entries, 0x8000_0008, 0) {
        // AMD: ECX[7:0] number of physical cores - 1.
        ext.ecx = (ext.ecx & !0xff) | (num - 1).min(255);
    }

    if let Some(khz) = cfg.tsc_khz {
        if let Some(base) = find_mut(entries, HYPERVISOR_LEAF_BASE, 0) {
            base.eax = base.eax.max(TIMING_LEAF);
            entries.retain(|e| e.function != TIMING_LEAF);
            entries.push(kvm_cpuid_entry2 {
                function: TIMING_LEAF,
                eax: khz,
                ebx: KVM_APIC_BUS_KHZ,
                ..Default::default()
            });
        }
    }

    if cfg.hide_pvm_unsupported {
        hide_pvm_unsupported(entries)
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phys_bits_from_cpuid_or_default() {
        let e = entry(0x8000_0008, 0, false, [0x3027, 0, 0, 0]);
        assert_eq!(phys_bits(&[e]), 39);
        assert_eq!(phys_bits(&[]), 36);
        let bogus = entry(0x8000_0008, 0, false, [0x3010, 0, 0, 0]);
        assert_eq!(phys_bits(&[bogus]), 36, "below 32 bits is not believed");
    }

    fn entry(function: u32, index: u32, indexed: bool, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: if indexed {
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            } else {
                0
            },
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// A host-like CPUID: max basic leaf 0x1f, CX16/XSAVE/AVX on, AVX2/AVX512F in leaf 7, KVM leaves.
    fn host() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, false, [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            entry(
                1,
                0,
                false,
                [
                    0x806f8,
                    0x0080_0800,
                    (1 << 13) | (1 << 26) | (1 << 28) | (1 << 22),
                    0,
                ],
            ),
            entry(4, 0, true, [0x121, 0, 0, 0]),
            entry(4, 3, true, [0x163, 0, 0, 0]),
            entry(7, 0, true, [0, (1 << 5) | (1 << 16) | 1, 0, 0]),
            entry(7, 1, true, [1 << 5, 0, 0, 0]),
            entry(0xb, 0, true, [1, 2, 0x100, 0]),
            entry(0xd, 0, true, [7, 0x340, 0x340, 0]),
            entry(0x1f, 0, true, [1, 2, 0x100, 0]),
            entry(
                HYPERVISOR_LEAF_BASE,
                0,
                false,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
            entry(0x4000_0001, 0, false, [0x1, 0, 0, 0]),
            entry(0x8000_0008, 0, false, [0x3030, 0, 0, 0]),
        ]
    }

    fn cfg(vcpu_index: u32, num_vcpus: u32) -> CpuidConfig {
        CpuidConfig {
            vcpu_index,
            num_vcpus,
            tsc_khz: Some(2_000_000),
            tsc_deadline: true,
            hide_pvm_unsupported: false,
        }
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = host();
        adjust(&mut e, &cfg(3, 4));
        let l1 = find(&e, 1, 0).unwrap();
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert!(has_feature(&e, &HYPERVISOR_BIT));
        assert!(has_feature(&e, &TSC_DEADLINE_BIT));
        assert!(has_feature(&e, &HTT_BIT));
        // Features not on the PVM list stay when hiding is off.
        assert!(has_feature(&e, &PVM_HIDDEN_FEATURES[0]));
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = host();
        e[1].edx |= 1 << 28;
        adjust(&mut e, &cfg(0, 1));
        assert!(!has_feature(&e, &HTT_BIT));
    }

    #[test]
    fn extended_topology_describes_one_socket_of_n_cores() {
        for leaf in [0xb, 0x1f] {
            let mut e = host();
            adjust(&mut e, &cfg(2, 3));
            let smt = find(&e, leaf, 0).unwrap();
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
            let core = find(&e, leaf, 1).unwrap();
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
            let end = find(&e, leaf, 2).unwrap();
            assert_eq!((end.ecx >> 8) & 0xff, 0, "terminating level type");
            assert_eq!(e.iter().filter(|x| x.function == leaf).count(), 3);
        }
    }

    #[test]
    fn id_shift_rounds_up_to_power_of_two() {
        assert_eq!(id_shift(1), 0);
        assert_eq!(id_shift(2), 1);
        assert_eq!(id_shift(3), 2);
        assert_eq!(id_shift(4), 2);
        assert_eq!(id_shift(5), 3);
        assert_eq!(id_shift(256), 8);
    }

    #[test]
    fn leaf4_reports_cores_and_sharing() {
        let mut e = host();
        adjust(&mut e, &cfg(0, 4));
        let l1d = find(&e, 4, 0).unwrap();
        assert_eq!(l1d.eax >> 26, 3);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        assert_eq!(l1d.eax & 0x3fff, 0x121);
        let l3 = find(&e, 4, 3).unwrap();
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
    }

    #[test]
    fn timing_leaf_added_and_range_extended() {
        let mut e = host();
        adjust(&mut e, &cfg(0, 1));
        assert_eq!(find(&e, HYPERVISOR_LEAF_BASE, 0).unwrap().eax, TIMING_LEAF);
        let t = find(&e, TIMING_LEAF, 0).unwrap();
        assert_eq!((t.eax, t.ebx), (2_000_000, KVM_APIC_BUS_KHZ));
        // KVM's signature stays.
        assert_eq!(find(&e, HYPERVISOR_LEAF_BASE, 0).unwrap().ebx, 0x4b4d_564b);
    }

    #[test]
    fn no_timing_leaf_without_tsc_frequency() {
        let mut e = host();
        let mut c = cfg(0, 1);
        c.tsc_khz = None;
        adjust(&mut e, &c);
        assert!(find(&e, TIMING_LEAF, 0).is_none());
        assert_eq!(find(&e, HYPERVISOR_LEAF_BASE, 0).unwrap().eax, 0x4000_0001);
    }

    #[test]
    fn pvm_hiding_clears_listed_features_and_xsave_leaf() {
        let mut e = host();
        let mut c = cfg(0, 2);
        c.hide_pvm_unsupported = true;
        let hidden = adjust(&mut e, &c);
        for name in [
            "cx16",
            "xsave",
            "avx",
            "movbe",
            "avx2",
            "avx512f",
            "avx512_bf16",
        ] {
            assert!(hidden.contains(&name), "{name} not reported hidden");
        }
        for bit in PVM_HIDDEN_FEATURES {
            assert!(!has_feature(&e, bit), "{} still set", bit.name);
        }
        let xsave_leaf = find(&e, 0xd, 0).unwrap();
        assert_eq!((xsave_leaf.eax, xsave_leaf.ebx, xsave_leaf.ecx), (0, 0, 0));
        // Unrelated bits survive.
        assert_eq!(find(&e, 7, 0).unwrap().ebx & 1, 1);
        assert!(has_feature(&e, &HYPERVISOR_BIT));
    }

    #[test]
    fn missing_leaves_are_tolerated() {
        let mut e = vec![entry(0, 0, false, [1, 0, 0, 0])];
        let hidden = adjust(
            &mut e,
            &CpuidConfig {
                hide_pvm_unsupported: true,
                ..cfg(0, 2)
            },
        );
        assert!(hidden.is_empty());
        assert_eq!(e.len(), 1);
    }
}
