//! The guest's cache topology in CPUID: which caches exist and which vCPUs share each one.
//!
//! Linux builds its scheduler's last-level-cache domain from these leaves: vCPUs that share
//! the last-level cache complete each other's block I/O and wake each other's tasks without an
//! inter-processor interrupt (`cpus_share_cache`). Keel's topology is one socket of
//! `num_vcpus` cores, one thread each, so the L1 and L2 caches belong to one vCPU and the L3
//! to all of them, as for QEMU's and Cloud Hypervisor's default topologies:
//!
//! * Intel, leaf 4: EAX\[25:14\] is the number of logical processors sharing the cache - 1,
//!   EAX\[31:26\] the number of cores in the package - 1;
//! * AMD, leaf 0x8000001D (with TOPOEXT): EAX\[25:14\] is the number sharing the cache - 1;
//! * AMD, leaf 0x80000005 (L1 caches and TLBs): KVM before Linux 6.2 reports it as zeros
//!   although it passes 0x80000006 (L2, L3) through. A Linux guest then finds its first cache
//!   leaf empty and gives up on every cache (no `cache/index*` in sysfs, an empty `lscpu`
//!   cache list). [`restore_amd_l1_cache`] puts the host's values back, as newer KVM does.

use kvm_bindings::kvm_cpuid_entry2;

use crate::cpuid::{find, find_mut};

/// AMD's L1 cache and TLB leaf.
pub const AMD_L1_CACHE_LEAF: u32 = 0x8000_0005;
/// AMD's cache topology leaf (one sub-leaf per cache, valid with TOPOEXT).
pub const AMD_CACHE_TOPOLOGY_LEAF: u32 = 0x8000_001d;
/// Intel's deterministic cache parameters leaf.
pub const INTEL_CACHE_LEAF: u32 = 4;
/// EAX\[25:14\] of leaves 4 and 0x8000001D: logical processors sharing the cache - 1.
const SHARING_SHIFT: u32 = 14;
const SHARING_MASK: u32 = 0xfff << SHARING_SHIFT;
/// EAX\[31:26\] of leaf 4: cores per package - 1.
const CORES_SHIFT: u32 = 26;
const CORES_MASK: u32 = 0x3f << CORES_SHIFT;

/// Level of the cache a leaf 4 / 0x8000001D sub-leaf describes (EAX\[7:5\]); 0 for none.
fn cache_level(eax: u32) -> u32 {
    (eax >> 5) & 0x7
}

/// How many vCPUs share a cache of `level`: the L3 all `num_vcpus`, lower levels one each.
fn sharing(level: u32, num_vcpus: u32) -> u32 {
    if level >= 3 {
        num_vcpus.max(1)
    } else {
        1
    }
}

/// Sets the sharing fields of every cache sub-leaf (leaves 4 and 0x8000001D) for `num_vcpus`
/// cores of one package, one thread each.
pub fn set_cache_sharing(entries: &mut [kvm_cpuid_entry2], num_vcpus: u32) {
    let num = num_vcpus.max(1);
    for entry in entries.iter_mut() {
        let level = cache_level(entry.eax);
        let shared_by = (sharing(level, num) - 1).min(0xfff) << SHARING_SHIFT;
        match entry.function {
            INTEL_CACHE_LEAF => {
                let cores = (num - 1).min(0x3f) << CORES_SHIFT;
                entry.eax = (entry.eax & !(SHARING_MASK | CORES_MASK)) | shared_by | cores;
            }
            AMD_CACHE_TOPOLOGY_LEAF if level != 0 => {
                entry.eax = (entry.eax & !SHARING_MASK) | shared_by;
            }
            _ => {}
        }
    }
}

/// Fills leaf 0x80000005 with `host` (the host CPU's own answer) when KVM's supported
/// `entries` have it as zeros or not at all although their highest extended leaf includes it.
/// Returns whether it changed anything. On Intel hosts the leaf is reserved and the host
/// answers zeros: nothing changes.
pub fn restore_amd_l1_cache(entries: &mut Vec<kvm_cpuid_entry2>, host: [u32; 4]) -> bool {
    let max_extended = find(entries, 0x8000_0000, 0).map_or(0, |e| e.eax);
    if max_extended < AMD_L1_CACHE_LEAF || host == [0; 4] {
        return false;
    }
    let [eax, ebx, ecx, edx] = host;
    match find_mut(entries, AMD_L1_CACHE_LEAF, 0) {
        Some(e) if [e.eax, e.ebx, e.ecx, e.edx] != [0; 4] => return false,
        Some(e) => (e.eax, e.ebx, e.ecx, e.edx) = (eax, ebx, ecx, edx),
        None => entries.push(kvm_cpuid_entry2 {
            function: AMD_L1_CACHE_LEAF,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// EAX of a cache sub-leaf: `level`, type 1 (data) or 3 (unified), host sharing `shared`.
    fn cache_eax(level: u32, shared: u32) -> u32 {
        let kind = if level == 1 { 1 } else { 3 };
        ((shared - 1) << SHARING_SHIFT) | (level << 5) | kind
    }

    fn shared_by(e: &kvm_cpuid_entry2) -> u32 {
        ((e.eax & SHARING_MASK) >> SHARING_SHIFT) + 1
    }

    #[test]
    fn the_l3_is_shared_by_every_vcpu_and_lower_levels_by_one() {
        // A host CCX shares its L3 among 16 threads and L1/L2 between 2 SMT siblings.
        for function in [INTEL_CACHE_LEAF, AMD_CACHE_TOPOLOGY_LEAF] {
            let mut e = vec![
                entry(function, 0, [cache_eax(1, 2), 0, 0, 0]),
                entry(function, 1, [cache_eax(2, 2), 0, 0, 0]),
                entry(function, 2, [cache_eax(3, 16), 7, 8, 9]),
                entry(function, 3, [0, 0, 0, 0]),
            ];
            set_cache_sharing(&mut e, 24);
            assert_eq!(e.iter().map(shared_by).collect::<Vec<_>>(), [1, 1, 24, 1]);
            // The level, type and the other registers are left alone.
            assert_eq!(e[2].eax & 0xff, (3 << 5) | 3);
            assert_eq!((e[2].ebx, e[2].ecx, e[2].edx), (7, 8, 9));
            // The terminating sub-leaf still says "no cache" (type 0).
            assert_eq!(e[3].eax & 0x1f, 0);
            assert_eq!(e[3].eax & 0xff, 0);
        }
    }

    #[test]
    fn intel_leaf_4_also_counts_the_packages_cores() {
        let mut e = vec![entry(
            INTEL_CACHE_LEAF,
            0,
            [cache_eax(1, 2) | (15 << 26), 0, 0, 0],
        )];
        set_cache_sharing(&mut e, 4);
        assert_eq!(e[0].eax >> CORES_SHIFT, 3);
        set_cache_sharing(&mut e, 1);
        assert_eq!(e[0].eax >> CORES_SHIFT, 0);
        assert_eq!(shared_by(&e[0]), 1);
    }

    #[test]
    fn other_leaves_are_not_touched() {
        let mut e = vec![entry(0x8000_0006, 0, [cache_eax(3, 16), 1, 2, 3])];
        let before = e[0];
        set_cache_sharing(&mut e, 8);
        assert_eq!(e[0], before);
    }

    const HOST_L1: [u32; 4] = [0x01ff_01ff, 0x01ff_01ff, 0x4002_0140, 0x4002_0140];

    fn max_extended(eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function: 0x8000_0000,
            eax,
            ..Default::default()
        }
    }

    #[test]
    fn an_l1_leaf_kvm_zeroed_gets_the_hosts_values() {
        let mut e = vec![
            max_extended(0x8000_000a),
            entry(AMD_L1_CACHE_LEAF, 0, [0; 4]),
        ];
        assert!(restore_amd_l1_cache(&mut e, HOST_L1));
        assert_eq!([e[1].eax, e[1].ebx, e[1].ecx, e[1].edx], HOST_L1);
        // KVM left it out entirely: it is added.
        let mut e = vec![max_extended(0x8000_0008)];
        assert!(restore_amd_l1_cache(&mut e, HOST_L1));
        assert_eq!(e[1].function, AMD_L1_CACHE_LEAF);
        assert_eq!(e[1].edx, HOST_L1[3]);
    }

    #[test]
    fn kvms_own_l1_leaf_intel_hosts_and_short_ranges_are_left_alone() {
        let kvm_says = [1, 2, 3, 4];
        let mut e = vec![
            max_extended(0x8000_000a),
            entry(AMD_L1_CACHE_LEAF, 0, kvm_says),
        ];
        assert!(!restore_amd_l1_cache(&mut e, HOST_L1));
        assert_eq!([e[1].eax, e[1].ebx, e[1].ecx, e[1].edx], kvm_says);
        // An Intel host answers zeros for the reserved leaf.
        let mut e = vec![
            max_extended(0x8000_0008),
            entry(AMD_L1_CACHE_LEAF, 0, [0; 4]),
        ];
        assert!(!restore_amd_l1_cache(&mut e, [0; 4]));
        // The guest's highest extended leaf is below 0x80000005: no leaf appears.
        let mut e = vec![max_extended(0x8000_0004)];
        assert!(!restore_amd_l1_cache(&mut e, HOST_L1));
        assert_eq!(e.len(), 1);
    }
}
