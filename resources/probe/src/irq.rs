//! External interrupts for drivers: the per-vector counters kept by the CPL0 handler
//! (`irq_counts` in asm/isr.s: every vector 32-255 increments its u64 and EOIs the LAPIC),
//! local APIC software enable, and RFLAGS.IF at CPL3 (`sti`/`cli` are legal with IOPL 3; on
//! PVM they #GP and the #GP handler emulates them).

use crate::acpi::Acpi;
use crate::io::cpuid;
use crate::phys::{mmio_read32, mmio_write32};

extern "C" {
    #[link_name = "irq_counts"]
    static IRQ_COUNTS: [u64; 256];
}

const LAPIC_BASE: u64 = 0xfee0_0000;
const LAPIC_TPR: u64 = 0x80;
const LAPIC_SVR: u64 = 0xf0;

/// Interrupts taken on `vector` since boot.
pub fn count(vector: u8) -> u64 {
    // SAFETY: `irq_counts` is a 256-entry u64 array in .bss written only by the interrupt
    // handler; `vector` < 256 indexes it; a volatile read sees the handler's latest store.
    unsafe { core::ptr::read_volatile((&raw const IRQ_COUNTS).cast::<u64>().add(vector as usize)) }
}

/// Sum of the counters of `n` vectors starting at `first`.
pub fn count_range(first: u8, n: u8) -> u64 {
    (0..n).map(|i| count(first.wrapping_add(i))).sum()
}

/// The BSP's initial APIC ID (CPUID 1 EBX[31:24]). `io::cpuid` runs at CPL0, so this is the
/// hypervisor's value; a native CPL3 CPUID on some PVM hosts gives the host CPU's APIC ID, and
/// MSI-X messages aimed at it are lost.
pub fn apic_id() -> u32 {
    cpuid(1, 0)[1] >> 24
}

/// Software-enables the BSP's local APIC (SVR bit 8, spurious vector 0xff), sets the task
/// priority to 0 and enables interrupts at CPL3. The EOI in the handler uses 0xfee00000,
/// so the MADT's LAPIC address must be the default one.
pub fn enable(acpi: Option<&Acpi>) -> Result<(), u64> {
    let lapic = acpi
        .and_then(|a| a.madt)
        .and_then(|m| crate::phys::u32_at(m, 36))
        .map_or(LAPIC_BASE, u64::from);
    if lapic != LAPIC_BASE {
        return Err(lapic);
    }
    mmio_write32(LAPIC_BASE + LAPIC_TPR, 0);
    let svr = mmio_read32(LAPIC_BASE + LAPIC_SVR);
    mmio_write32(LAPIC_BASE + LAPIC_SVR, svr | 0x1ff);
    // SAFETY: sets RFLAGS.IF only; every vector 32-255 has a handler that counts, EOIs and
    // returns, and the 8259s are masked (probe_main), so no legacy vector can arrive.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
    Ok(())
}

/// Disables interrupts at CPL3 again.
pub fn disable() {
    // SAFETY: clears RFLAGS.IF only.
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
}
