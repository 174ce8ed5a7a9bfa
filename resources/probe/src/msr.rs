//! MSR access from CPL3.
//!
//! `rdmsr` and `wrmsr` are CPL0-only: at CPL3 they always raise #GP. The probe's #GP handler
//! (`gp_entry` in `asm/isr.s`) recognises the two opcodes (exactly `0F 32` / `0F 30`, no
//! prefixes), performs the access at CPL0 with the CPL3 code's ECX and EDX:EAX, skips the
//! instruction and reports the outcome in RFLAGS.CF. The CPL0 instruction is protected by an
//! exception fixup: if it raises #GP itself (the hypervisor does not offer the MSR, or refuses
//! the value), the nested #GP is recognised by its RIP and resumes at a fixup that returns to
//! CPL3 with CF=1 (and EDX:EAX = 0 for a read) instead of reporting a fatal exception. The
//! wrappers here clear CF before the instruction, so CF=1 afterwards can only mean "faulted".
//!
//! Each access costs one #GP round trip through the CPL0 handler (instruction-emulated on PVM
//! hosts, a few tens of microseconds) plus whatever the MSR itself costs.

use core::arch::asm;

/// Reads an MSR; `None` if the read raised #GP.
pub fn rdmsr(msr: u32) -> Option<u64> {
    let lo: u32;
    let hi: u32;
    let faulted: u8;
    // SAFETY: at CPL3 `rdmsr` traps to the #GP handler, which reads the MSR at CPL0 (or
    // catches the #GP that read raises) and changes only EAX, EDX and RFLAGS of this code,
    // all declared here; no memory of the probe is touched. Reading the MSRs the probe asks
    // for has no side effects.
    unsafe {
        asm!(
            "clc",
            "rdmsr",
            "setc {f}",
            in("ecx") msr,
            out("eax") lo,
            out("edx") hi,
            f = out(reg_byte) faulted,
            options(nomem, nostack),
        );
    }
    (faulted == 0).then_some((u64::from(hi) << 32) | u64::from(lo))
}

/// Writes an MSR; `false` if the write raised #GP.
pub fn wrmsr(msr: u32, value: u64) -> bool {
    let faulted: u8;
    // SAFETY: at CPL3 `wrmsr` traps to the #GP handler, which writes the MSR at CPL0 (or
    // catches the #GP that write raises) and changes only RFLAGS of this code. The MSRs the
    // probe writes make the hypervisor write guest memory (pvclock, reference TSC and
    // hypercall pages): those are statics the probe only reads with volatile loads, and the
    // missing `nomem` keeps the compiler from caching memory across the write.
    unsafe {
        asm!(
            "clc",
            "wrmsr",
            "setc {f}",
            in("ecx") msr,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            f = out(reg_byte) faulted,
            options(nostack),
        );
    }
    faulted == 0
}
