//! The VM-wide state KVM holds: the two 8259 PICs and the IOAPIC of the in-kernel irqchip,
//! the PIT, and the kvmclock base. Captured with the vCPUs parked; restored before any vCPU
//! runs (the clock first thing, so that kvmclock readings continue from the saved instant).

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::{kvm_err, VmError};

/// The in-kernel irqchip, PIT and clock.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    /// 8259 master, slave, then the IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    /// The i8254.
    pub pit: kvm_pit_state2,
    /// kvmclock's base (with the host's realtime where KVM gives it).
    pub clock: kvm_clock_data,
}

const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

impl VmState {
    /// Reads the VM's state; the vCPUs must be parked.
    pub fn capture(vm: &VmFd) -> Result<Self, VmError> {
        let mut irqchips = Vec::with_capacity(CHIPS.len());
        for chip_id in CHIPS {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip)
                .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
            irqchips.push(chip);
        }
        Ok(VmState {
            irqchips,
            pit: vm.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?,
            clock: vm.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?,
        })
    }

    /// Puts the state into a VM whose vCPUs have not run. The clock keeps KVM_CLOCK_REALTIME
    /// when it was saved with it: KVM then adds the host time that passed since the snapshot,
    /// as a guest that was paused expects of its wall clock.
    pub fn restore(&self, vm: &VmFd) -> Result<(), VmError> {
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            flags: self.clock.flags & KVM_CLOCK_REALTIME,
            realtime: self.clock.realtime,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
        for chip in &self.irqchips {
            vm.set_irqchip(chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
        }
        vm.set_pit2(&self.pit).map_err(kvm_err("KVM_SET_PIT2"))
    }
}
