//! A vCPU's architectural state as KVM holds it, captured for a snapshot and put back on
//! restore. Capture runs on the vCPU's own thread while it is parked outside KVM_RUN, after
//! one KVM_RUN with `immediate_exit` set, which completes an I/O instruction whose exit
//! userspace has answered but KVM has not yet finished (KVM's API documentation asks for this
//! before state is read for migration).
//!
//! Restore follows the order KVM needs: CPUID first (before any KVM_RUN), then MP state,
//! registers before special registers (sregs set the mode the registers are read in), FPU and
//! extended state, the LAPIC before the MSRs (the x2APIC and TSC-deadline MSRs go through it),
//! the TSC before the TSC deadline, and the pending events last.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use super::VcpuError;

/// MSR_IA32_TSC_DEADLINE: restored after the TSC, which it is compared with.
const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// MSR_IA32_TSC.
const MSR_TSC: u32 = 0x10;
/// The most MSRs one vCPU's state may carry (KVM lists a few hundred at most).
pub const MAX_MSRS: usize = 2048;

/// Everything KVM holds for one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index (APIC ID).
    pub index: u32,
    /// The CPUID table the guest has seen.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Running, halted or waiting for SIPI.
    pub mp_state: kvm_mp_state,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and extended state (the 4 KiB KVM_GET_XSAVE area).
    pub xsave: kvm_xsave,
    /// XCR0 and friends.
    pub xcrs: kvm_xcrs,
    /// DR0-DR7.
    pub debugregs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// The TSC frequency the guest runs at, where KVM tells.
    pub tsc_khz: Option<u32>,
    /// Every MSR KVM reported and could read, TSC deadline last.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
}

fn state_err(index: u32, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Setup {
        index,
        what,
        source,
    }
}

/// Reads the MSRs of `indices` that KVM lets this vCPU read. KVM_GET_MSRS stops at the first
/// MSR it refuses; that one is left out and the read goes on after it.
fn read_msrs(fd: &VcpuFd, index: u32, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest: Vec<u32> = indices.iter().copied().take(MAX_MSRS).collect();
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| VcpuError::Fam { index, what: "MSR" })?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(state_err(index, "KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..read.min(rest.len())]);
        // Skip the MSR KVM refused (if any) and go on with the ones after it.
        rest.drain(..(read + 1).min(rest.len()));
    }
    // The TSC deadline is compared with the TSC: it goes in after it.
    out.sort_by_key(|m| (m.index == MSR_TSC_DEADLINE, m.index != MSR_TSC));
    Ok(out)
}

impl VcpuState {
    /// Reads the state of the vCPU behind `fd`, which must not be in KVM_RUN. `msr_indices`
    /// are the MSRs KVM lists for saving (KVM_GET_MSR_INDEX_LIST).
    pub fn capture(fd: &VcpuFd, index: u32, msr_indices: &[u32]) -> Result<Self, VcpuError> {
        let err = |what| state_err(index, what);
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(err("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        Ok(VcpuState {
            index,
            cpuid,
            mp_state: fd.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?,
            regs: fd.get_regs().map_err(err("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(err("KVM_GET_SREGS"))?,
            xsave: fd.get_xsave().map_err(err("KVM_GET_XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(err("KVM_GET_XCRS"))?,
            debugregs: fd.get_debug_regs().map_err(err("KVM_GET_DEBUGREGS"))?,
            lapic: fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?,
            tsc_khz: fd.get_tsc_khz().ok().filter(|&k| k != 0),
            msrs: read_msrs(fd, index, msr_indices)?,
            events: fd.get_vcpu_events().map_err(err("KVM_GET_VCPU_EVENTS"))?,
        })
    }

    /// Puts this state into the vCPU behind `fd`, which has not run yet.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuError> {
        let index = self.index;
        let err = |what| state_err(index, what);
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| VcpuError::Fam {
            index,
            what: "CPUID",
        })?;
        fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
        if let Some(khz) = self.tsc_khz {
            if fd.get_tsc_khz().ok() != Some(khz) {
                fd.set_tsc_khz(khz).map_err(err("KVM_SET_TSC_KHZ"))?;
            }
        }
        fd.set_mp_state(self.mp_state)
            .map_err(err("KVM_SET_MP_STATE"))?;
        fd.set_regs(&self.regs).map_err(err("KVM_SET_REGS"))?;
        fd.set_sregs(&self.sregs).map_err(err("KVM_SET_SREGS"))?;
        // SAFETY: `xsave` is the 4 KiB area KVM_GET_XSAVE returned; snapshots are refused for
        // vCPUs whose extended state does not fit it (see `check_xsave_size`), so KVM reads
        // no more than the struct holds.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(err("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&self.xcrs).map_err(err("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(err("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&self.lapic).map_err(err("KVM_SET_LAPIC"))?;
        self.restore_msrs(fd)?;
        fd.set_vcpu_events(&self.events)
            .map_err(err("KVM_SET_VCPU_EVENTS"))
    }

    fn restore_msrs(&self, fd: &VcpuFd) -> Result<(), VcpuError> {
        let index = self.index;
        let msrs =
            Msrs::from_entries(&self.msrs).map_err(|_| VcpuError::Fam { index, what: "MSR" })?;
        let set = fd
            .set_msrs(&msrs)
            .map_err(state_err(index, "KVM_SET_MSRS"))?;
        if set != self.msrs.len() {
            let refused = self.msrs.get(set).map_or(0, |m| m.index);
            return Err(VcpuError::MsrRefused {
                index,
                msr: refused,
            });
        }
        Ok(())
    }
}

/// Refuses a snapshot of vCPUs whose extended state does not fit KVM_GET_XSAVE's 4 KiB (AMX):
/// `reported` is KVM_CAP_XSAVE2's answer (0 where KVM lacks it).
pub fn check_xsave_size(reported: i32) -> Result<(), VcpuError> {
    let size = usize::try_from(reported).unwrap_or(0);
    if size > std::mem::size_of::<kvm_xsave>() {
        return Err(VcpuError::XsaveTooLarge { size });
    }
    Ok(())
}

#[cfg(test)]
impl VcpuState {
    /// A state of all zeroes for vCPU `index`, for tests.
    pub(crate) fn blank(index: u32) -> Self {
        VcpuState {
            index,
            cpuid: Vec::new(),
            mp_state: kvm_mp_state::default(),
            regs: kvm_regs::default(),
            sregs: kvm_sregs::default(),
            xsave: kvm_xsave::default(),
            xcrs: kvm_xcrs::default(),
            debugregs: kvm_debugregs::default(),
            lapic: kvm_lapic_state::default(),
            tsc_khz: None,
            msrs: Vec::new(),
            events: kvm_vcpu_events::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_state_larger_than_the_legacy_area_is_refused() {
        assert!(check_xsave_size(0).is_ok());
        assert!(check_xsave_size(4096).is_ok());
        assert!(matches!(
            check_xsave_size(11008),
            Err(VcpuError::XsaveTooLarge { size: 11008 })
        ));
    }

    #[test]
    fn state_survives_serialization() {
        let mut s = VcpuState::blank(1);
        s.cpuid = vec![kvm_cpuid_entry2 {
            function: 1,
            eax: 0x806f0,
            ..Default::default()
        }];
        s.mp_state.mp_state = 3;
        s.tsc_khz = Some(2_000_000);
        s.msrs = vec![kvm_msr_entry {
            index: MSR_TSC,
            data: 42,
            ..Default::default()
        }];
        s.regs.rip = 0x1234_5678;
        s.sregs.cr3 = 0x9000;
        s.lapic.regs[0x20] = 7;
        let json = serde_json::to_vec(&s).unwrap();
        let back: VcpuState = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.regs.rip, 0x1234_5678);
        assert_eq!(back.sregs.cr3, 0x9000);
        assert_eq!(back.lapic.regs[0x20], 7);
        assert_eq!(back.cpuid[0].eax, 0x806f0);
        assert_eq!(back.msrs[0].data, 42);
        assert_eq!(back.mp_state.mp_state, 3);
        assert_eq!(back.tsc_khz, Some(2_000_000));
    }
}
