//! The vCPU step: one [`Vcpu`] per boot vCPU, each with its CPUID (KVM's supported set,
//! adjusted for the topology, the host and the requested KVM PV and Hyper-V features), its
//! MSRs and LAPIC, and the boot vCPU's entry registers.

use std::sync::Arc;

use arch::cpuid::CpuidConfig;
use kvm_bindings::kvm_cpuid_entry2;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::config::{Toggle, VmConfig};
use crate::host::HostInfo;
use crate::paravirt::Paravirt;
use crate::stats::exits::ExitCounters;
use crate::vcpu::{BootEntry, Vcpu};

use super::VmError;

/// Everything the vCPUs are built from.
pub(super) struct VcpuSetup<'a> {
    pub kvm: &'a Kvm,
    pub vm: &'a VmFd,
    pub config: &'a VmConfig,
    pub host: &'a HostInfo,
    /// KVM's supported CPUID.
    pub supported: &'a [kvm_cpuid_entry2],
    pub mem: &'a GuestMemoryMmap,
    /// Where the boot vCPU starts (none for a restore, which sets every register).
    pub boot: Option<&'a BootEntry>,
}

/// Creates and configures the boot vCPUs. Also returns the CPUID features hidden because
/// the host is PVM.
pub(super) fn create(s: &VcpuSetup<'_>) -> Result<(Vec<Vcpu>, Vec<&'static str>), VmError> {
    let num_vcpus = s.config.cpus.boot_vcpus;
    let hide_pvm = match s.config.cpus.pvm_compat {
        Toggle::Auto => s.host.is_pvm,
        Toggle::On => true,
        Toggle::Off => false,
    };
    let paravirt = Paravirt::new(s.kvm, s.config.cpus.kvm_pv, &s.config.cpus.hyperv)?;
    let x2apic_api = crate::paravirt::enable_x2apic_api(s.vm);
    let mut vcpus = Vec::with_capacity(num_vcpus as usize);
    let mut hidden_features = Vec::new();
    let msr_indices = saved_msrs(s.kvm);
    for index in 0..num_vcpus {
        let counters = ExitCounters::default();
        let vcpu = Vcpu::new(s.vm, index, counters, Arc::clone(&msr_indices))?;
        let cfg = CpuidConfig {
            vcpu_index: index,
            num_vcpus,
            tsc_khz: if s.host.get_tsc_khz {
                vcpu.tsc_khz()
            } else {
                None
            },
            tsc_deadline: s.host.tsc_deadline,
            hide_pvm_unsupported: hide_pvm,
        };
        let mut entries = s.supported.to_vec();
        hidden_features = arch::cpuid::adjust(&mut entries, &cfg);
        let (pv, hv) = paravirt.apply_cpuid(&mut entries, num_vcpus)?;
        if index == 0 {
            log_paravirt(paravirt.kvm_pv, &pv, &hv, x2apic_api);
        }
        vcpu.configure(&entries, &paravirt)?;
        if let (0, Some(boot)) = (index, s.boot) {
            vcpu.set_boot_entry(s.mem, boot)?;
        }
        vcpus.push(vcpu);
    }
    if !hidden_features.is_empty() {
        log::warn!(
            "PVM host: hiding CPUID features its CPL0 emulator cannot run: {} (--cpus pvm_compat=off keeps them)",
            hidden_features.join(",")
        );
    }
    Ok((vcpus, hidden_features))
}

/// The MSRs KVM lists for saving and restoring a vCPU (none if it will not tell: a snapshot
/// then carries no MSRs, and says so).
fn saved_msrs(kvm: &Kvm) -> Arc<[u32]> {
    match kvm.get_msr_index_list() {
        Ok(list) => list.as_slice().into(),
        Err(e) => {
            log::warn!("KVM_GET_MSR_INDEX_LIST failed ({e}): snapshots will carry no MSRs");
            Arc::from(Vec::new())
        }
    }
}

/// Logs what the guest gets besides plain hardware.
fn log_paravirt(
    request: arch::kvm_pv::KvmPvRequest,
    pv: &arch::kvm_pv::KvmPvFeatures,
    hv: &[&str],
    x2apic_api: bool,
) {
    let kvm = if request == arch::kvm_pv::KvmPvRequest::Hidden {
        "KVM leaves hidden (no KVM signature)".to_string()
    } else {
        format!("KVM PV features {pv}")
    };
    let apicv = match crate::paravirt::host_apic_virtualization() {
        Some((what, true)) => format!("{what} on"),
        Some((what, false)) => format!("{what} off"),
        None => "no APICv/AVIC reported by the host".to_string(),
    };
    log::info!(
        "paravirt: {kvm}; Hyper-V {}; x2APIC API {}; {apicv}",
        if hv.is_empty() {
            "off".to_string()
        } else {
            hv.join(",")
        },
        if x2apic_api { "on" } else { "unavailable" }
    );
}
