//! Keel probe guest: a tiny x86-64 kernel used as a test instrument for the Keel VMM.
//!
//! The CPL0 part is hand-written assembly (`asm/*.s`): it sets up a GDT, TSS, IDT and
//! identity-mapped page tables, then drops to CPL3 where all of the Rust code below runs.
//! The probe reads `probe.cmd=...` words from the kernel command line, prints one JSON object
//! per line on COM1, ends with a `{"done":...}` line and powers off through ACPI.

#![no_std]
#![no_main]
// Errors carry their message inline (there is no allocator); they are rare and short-lived.
#![allow(clippy::result_large_err)]

mod acpi;
mod blk;
mod blkargs;
mod bootinfo;
mod clock;
mod cmd;
mod counter;
mod cpuid;
mod cpus;
mod dirty;
mod dma;
mod error;
mod fio;
mod hist;
mod hv;
mod io;
mod irq;
mod json;
mod list;
mod memwalk;
mod mmio;
mod mptable;
mod msr;
mod numa;
mod pci;
mod phys;
mod power;
mod pvpage;
mod serial;
mod tsc;
mod vblk;
mod virtio;
mod vring;

use core::fmt::Write;

core::arch::global_asm!(include_str!("asm/entry.s"), options(att_syntax));
core::arch::global_asm!(include_str!("asm/isr.s"), options(att_syntax));
core::arch::global_asm!(include_str!("asm/ap.s"), options(att_syntax));
core::arch::global_asm!(include_str!("asm/user.s"), options(att_syntax));

extern "C" {
    #[link_name = "boot_kind"]
    static BOOT_KIND: u32;
    #[link_name = "boot_info_ptr"]
    static BOOT_INFO_PTR: u64;
    #[link_name = "fault_vector"]
    static FAULT_VECTOR: u64;
    #[link_name = "fault_error"]
    static FAULT_ERROR: u64;
    #[link_name = "fault_rip"]
    static FAULT_RIP: u64;
    #[link_name = "fault_cs"]
    static FAULT_CS: u64;
    #[link_name = "fault_cr2"]
    static FAULT_CR2: u64;
}

/// Reads a word that the CPL0 assembly wrote.
fn asm_word(p: *const u64) -> u64 {
    // SAFETY: `p` points at one of the 8-byte words defined in `.data.boot`, always mapped.
    unsafe { core::ptr::read_volatile(p) }
}

/// Rust entry point, called from `user_entry` at CPL3 with .bss zeroed.
#[no_mangle]
pub extern "C" fn probe_main() -> ! {
    serial::init();
    // Mask both 8259 PICs: on PVM hosts user mode always runs with interrupts enabled.
    io::outb(0x21, 0xff);
    io::outb(0xa1, 0xff);
    // SAFETY: `boot_kind` is a 4-byte word in `.data.boot`, written once before CPL3 entry.
    let kind = unsafe { core::ptr::read_volatile(&raw const BOOT_KIND) };
    let ptr = asm_word(&raw const BOOT_INFO_PTR);
    match cmd::run_all(kind, ptr) {
        Ok(()) => serial::write(b"{\"done\":true}\n"),
        Err(e) => report_failure(e.as_bytes()),
    }
    power::off()
}

/// Prints `{"done":false,"error":...}` on a fresh line.
fn report_failure(msg: &[u8]) {
    let mut line = json::Line::new();
    line.raw("{\"done\":false,\"error\":").string(msg).raw("}");
    serial::ensure_line_start();
    // A message too long for the buffer cannot happen (it is bounded), so ignore the result.
    let _ = line.finish();
}

/// Called (at CPL3, on the fault stack) after a CPU exception was recorded by `isr_common`.
#[no_mangle]
pub extern "C" fn probe_fault() -> ! {
    let mut msg = error::Error::empty();
    let _ = write!(
        msg,
        "exception {} at rip {:#x} err {:#x} cr2 {:#x} cs {:#x}",
        asm_word(&raw const FAULT_VECTOR),
        asm_word(&raw const FAULT_RIP),
        asm_word(&raw const FAULT_ERROR),
        asm_word(&raw const FAULT_CR2),
        asm_word(&raw const FAULT_CS),
    );
    report_failure(msg.as_bytes());
    power::off()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut msg = error::Error::empty();
    let _ = write!(msg, "panic: {}", info);
    report_failure(msg.as_bytes());
    power::off()
}
