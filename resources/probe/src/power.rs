//! Power off: ACPI S5 through PM1a_CNT (from the FADT and the DSDT `_S5_` package), then the
//! i8042 reset line, then a permanent halt via a deliberate fault into the CPL0 halt loop.

use crate::acpi::{self, Reg};
use crate::io::{outb, outw};
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

const NONE: u8 = 0;
const IO: u8 = 1;
const MEM: u8 = 2;

static PM1A_KIND: AtomicU8 = AtomicU8::new(NONE);
static PM1A_ADDR: AtomicU64 = AtomicU64::new(0);
/// SLP_TYPa for S5; 0xff when unknown.
static SLP_TYP: AtomicU8 = AtomicU8::new(0xff);

extern "C" {
    #[link_name = "fault_count"]
    static mut FAULT_COUNT: u64;
}

/// Records the power-off register and sleep type from the FADT (call once at start).
pub fn configure(fadt: Option<&[u8]>) {
    let Some(fadt) = fadt else {
        return;
    };
    match acpi::pm1a_cnt(fadt) {
        Some(Reg::Io(p)) => {
            PM1A_ADDR.store(p as u64, Ordering::Relaxed);
            PM1A_KIND.store(IO, Ordering::Relaxed);
        }
        Some(Reg::Mem(a)) if a < crate::phys::LIMIT - 2 => {
            PM1A_ADDR.store(a, Ordering::Relaxed);
            PM1A_KIND.store(MEM, Ordering::Relaxed);
        }
        _ => {}
    }
    if let Some(t) = acpi::s5_slp_typ(fadt) {
        SLP_TYP.store(t & 7, Ordering::Relaxed);
    }
}

/// The configured PM1a_CNT port/address and SLP_TYPa, for reporting.
pub fn describe() -> (u8, u64, u8) {
    (
        PM1A_KIND.load(Ordering::Relaxed),
        PM1A_ADDR.load(Ordering::Relaxed),
        SLP_TYP.load(Ordering::Relaxed),
    )
}

/// Powers the machine off; never returns.
pub fn off() -> ! {
    let (kind, addr, slp) = describe();
    if slp != 0xff {
        let v = ((slp as u16) << 10) | (1 << 13);
        match kind {
            IO => outw(addr as u16, v),
            MEM => {
                // SAFETY: the address is below 4 GiB (checked in `configure`) and thus mapped;
                // it is the FADT's PM1a control register.
                unsafe { core::ptr::write_volatile(addr as usize as *mut u16, v) }
            }
            _ => {}
        }
    }
    // Still running: give the write a moment, then try the keyboard-controller reset.
    for _ in 0..1000 {
        core::hint::spin_loop();
    }
    outb(0x64, 0xfe);
    halt()
}

/// Stops for good: marks a fault as already handled and executes HLT, which faults at CPL3
/// into the CPL0 handler, which then halts with interrupts off.
pub fn halt() -> ! {
    // SAFETY: `fault_count` is a u64 in `.data.boot`; the CPL0 handler only reads it on entry.
    unsafe { core::ptr::write_volatile(&raw mut FAULT_COUNT, 2) };
    loop {
        // SAFETY: HLT at CPL3 raises #GP, which the handler turns into a permanent halt.
        unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
    }
}
