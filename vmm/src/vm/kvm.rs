//! The KVM VM step: the VM file descriptor with its in-kernel irqchip and PIT, and the CPUID
//! KVM supports on this host (the base every vCPU's CPUID is built from).

use std::sync::Arc;

use arch::layout;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};

use super::{kvm_err, VmError};

/// Creates the VM with its TSS and identity-map pages, the in-kernel irqchip and the PIT.
pub(super) fn create_vm(kvm: &Kvm) -> Result<Arc<VmFd>, VmError> {
    let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
    vm_fd
        .set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    if let Err(e) = vm_fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS) {
        log::debug!("KVM_SET_IDENTITY_MAP_ADDR not available: {e}");
    }
    vm_fd
        .create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(vm_fd)
}

/// The CPUID entries KVM supports on this host.
pub(super) fn supported_cpuid(kvm: &Kvm) -> Result<Vec<kvm_cpuid_entry2>, VmError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let mut entries = supported.as_slice().to_vec();
    if arch::cache_topology::restore_amd_l1_cache(&mut entries, host_cpuid(0x8000_0005)) {
        log::info!(
            "KVM reports no L1 cache leaf (0x80000005, before Linux 6.2): the guest gets the host's"
        );
    }
    Ok(entries)
}

/// The host CPU's own answer to CPUID `leaf` (sub-leaf 0).
fn host_cpuid(leaf: u32) -> [u32; 4] {
    let r = std::arch::x86_64::__cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Guest physical address width ([`arch::cpuid::phys_bits`]).
pub(super) fn phys_bits(cpuid: &[kvm_cpuid_entry2]) -> u32 {
    arch::cpuid::phys_bits(cpuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phys_bits_from_cpuid_or_default() {
        let e = kvm_cpuid_entry2 {
            function: 0x8000_0008,
            eax: 0x3027,
            ..Default::default()
        };
        assert_eq!(phys_bits(&[e]), 39);
        assert_eq!(phys_bits(&[]), 36);
    }
}
