//! Port I/O, TSC and CPUID wrappers for the CPL3 code. Port I/O is legal at CPL3 (IOPL=3); on
//! PVM hosts it raises #GP and the #GP handler (`gp_entry` in `asm/isr.s`) performs it at CPL0.
//! CPUID always goes through that handler (see `cpuid`).

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, v: u8) {
    // SAFETY: IOPL=3 makes port I/O legal at CPL3; no memory is touched.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 16-bit word to an I/O port.
pub fn outw(port: u16, v: u16) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 32-bit word to an I/O port.
pub fn outl(port: u16, v: u32) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Reads a 32-bit word from an I/O port.
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is allowed at CPL3 (CR4.TSD is clear) and has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Executes CPUID at CPL0 and returns `[eax, ebx, ecx, edx]`.
///
/// CPUID at CPL3 is not always intercepted: on AMD PVM hosts without CPUID faulting it runs
/// natively and returns the host's values (leaf 1 EBX[31:24] is then the APIC ID of whichever
/// host CPU the vCPU thread runs on, 0x40000001 EAX the host KVM's features), not the
/// hypervisor's table. So the probe executes it at CPL0, through the #GP trap it uses for port
/// I/O: `hlt` raises #GP at CPL3 everywhere, and `gp_entry` (`asm/isr.s`) recognises exactly
/// the bytes `F4 0F A2` (`hlt; cpuid`) at the faulting RIP, executes `cpuid` at CPL0 with this
/// code's EAX and ECX, returns EAX/EDX through the saved registers and EBX/ECX in the
/// registers themselves, and resumes after the three bytes. The `cpuid` here is never executed
/// at CPL3. One #GP round trip per call (tens of microseconds on PVM hosts).
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
    // SAFETY: `hlt` at CPL3 traps to the #GP handler, which performs the CPUID at CPL0 and
    // changes only EAX, EBX, ECX and EDX of this code (RBX is saved in `tmp` around it, as
    // LLVM reserves it; `tmp` receives the result); RFLAGS and memory are left alone. The
    // handler matches `hlt; cpuid` as one byte sequence: the two instructions are adjacent
    // in the template, with nothing emitted between them.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "hlt",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags),
        );
    }
    [eax, ebx, ecx, edx]
}
