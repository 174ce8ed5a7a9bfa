//! Boot-time vCPU state: general registers, segment/control registers with a boot GDT and
//! identity-map page tables, FPU, MSRs, and the local APIC's LINT0/LINT1 wiring.
//!
//! Two entry modes: 64-bit (ELF vmlinux and bzImage's 64-bit entry; RSI = zero page) and PVH
//! (32-bit protected mode, paging off; EBX = hvm_start_info).

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::layout::{
    BOOT_GDT_MAX, BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_COUNT, PDE_START,
    PDPTE_START, PML4_START,
};

/// Errors writing boot structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// The boot GDT could not be written.
    #[error("failed to write the boot GDT")]
    WriteGdt(#[source] GuestMemoryError),
    /// The boot IDT could not be written.
    #[error("failed to write the boot IDT")]
    WriteIdt(#[source] GuestMemoryError),
    /// The identity-map page tables could not be written.
    #[error("failed to write the boot page tables")]
    WritePageTables(#[source] GuestMemoryError),
}

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Selector of the code segment in the boot GDT (Linux's __BOOT_CS).
pub const BOOT_CS_SELECTOR: u16 = 0x10;
/// Selector of the data segment in the boot GDT (Linux's __BOOT_DS).
pub const BOOT_DS_SELECTOR: u16 = 0x18;
/// Selector of the TSS placeholder in the boot GDT.
pub const BOOT_TSS_SELECTOR: u16 = 0x20;

/// Encodes a GDT descriptor from access/flags bits (`flags` = the 0xF0FF pattern of the
/// descriptor's flags nibble and access byte), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM view of descriptor `entry` loaded through GDT slot `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT for 64-bit entry: null, null, 64-bit code, data, TSS placeholder.
pub fn gdt_64bit() -> [u64; BOOT_GDT_MAX] {
    [
        0,
        0,
        gdt_entry(0xa09b, 0, 0xfffff), // code: present, DPL0, exec/read, accessed, L, G
        gdt_entry(0xc093, 0, 0xfffff), // data: present, DPL0, read/write, accessed, D/B, G
        gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS
    ]
}

/// The boot GDT for PVH entry: the same layout with a 32-bit flat code segment.
pub fn gdt_32bit() -> [u64; BOOT_GDT_MAX] {
    [
        0,
        0,
        gdt_entry(0xc09b, 0, 0xfffff), // code: present, exec/read, accessed, D/B (32-bit), G
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x008b, 0, 0x67), // TSS: busy 32-bit TSS
    ]
}

fn write_gdt_idt<M: GuestMemoryBackend>(mem: &M, gdt: &[u64]) -> Result<(), RegsError> {
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(RegsError::WriteGdt)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::WriteIdt)
}

fn load_segments(sregs: &mut kvm_sregs, gdt: &[u64]) {
    let code = segment_from_gdt(gdt[2], 2);
    let data = segment_from_gdt(gdt[3], 3);
    let tss = segment_from_gdt(gdt[4], 4);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
}

/// Writes 4 GiB of identity-map page tables (2 MiB pages) at [`PML4_START`].
pub fn write_identity_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), RegsError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    mem.write_obj(PDPTE_START | PRESENT_RW, GuestAddress(PML4_START))
        .map_err(RegsError::WritePageTables)?;
    for pd in 0..PDE_COUNT {
        let pd_addr = PDE_START + pd * 0x1000;
        mem.write_obj(pd_addr | PRESENT_RW, GuestAddress(PDPTE_START + pd * 8))
            .map_err(RegsError::WritePageTables)?;
        let mut table = [0u8; 4096];
        for (i, slot) in table.chunks_exact_mut(8).enumerate() {
            let phys = ((pd << 9) + i as u64) << 21;
            slot.copy_from_slice(&(phys | PRESENT_RW | PAGE_SIZE_2M).to_le_bytes());
        }
        mem.write_slice(&table, GuestAddress(pd_addr))
            .map_err(RegsError::WritePageTables)?;
    }
    Ok(())
}

/// Sets up `sregs` for 64-bit entry: boot GDT/IDT written to memory, long mode with paging on
/// the identity map, SSE enabled.
pub fn setup_sregs_64bit<M: GuestMemoryBackend>(
    mem: &M,
    sregs: &mut kvm_sregs,
) -> Result<(), RegsError> {
    let gdt = gdt_64bit();
    write_gdt_idt(mem, &gdt)?;
    load_segments(sregs, &gdt);
    write_identity_page_tables(mem)?;
    sregs.cr3 = PML4_START;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA;
    Ok(())
}

/// Sets up `sregs` for PVH entry: 32-bit protected mode with flat segments, paging off.
pub fn setup_sregs_pvh<M: GuestMemoryBackend>(
    mem: &M,
    sregs: &mut kvm_sregs,
) -> Result<(), RegsError> {
    let gdt = gdt_32bit();
    write_gdt_idt(mem, &gdt)?;
    load_segments(sregs, &gdt);
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    Ok(())
}

/// General registers for 64-bit entry at `entry` with the zero page at `boot_params`.
pub fn regs_64bit(entry: u64, boot_params: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: boot_params,
        ..Default::default()
    }
}

/// General registers for PVH entry at `entry` with `hvm_start_info` at `start_info`.
pub fn regs_pvh(entry: u64, start_info: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: start_info,
        ..Default::default()
    }
}

/// FPU state at reset: x87 control word 0x37f, MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSR indexes set at boot.
pub mod msr_index {
    /// IA32_SYSENTER_CS
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP
    pub const SYSENTER_EIP: u32 = 0x176;
    /// IA32_MISC_ENABLE
    pub const MISC_ENABLE: u32 = 0x1a0;
    /// IA32_MTRR_DEF_TYPE
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// IA32_STAR
    pub const STAR: u32 = 0xc000_0081;
    /// IA32_LSTAR
    pub const LSTAR: u32 = 0xc000_0082;
    /// IA32_CSTAR
    pub const CSTAR: u32 = 0xc000_0083;
    /// IA32_FMASK
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    /// IA32_KERNEL_GS_BASE
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// IA32_TSC
    pub const TSC: u32 = 0x10;
}

/// MSR values every vCPU starts with: syscall/sysenter MSRs cleared, fast strings on, MTRRs
/// enabled with write-back as the default type, TSC zeroed so all vCPUs start in step.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    use msr_index::*;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MTRR_ENABLE: u64 = 1 << 11;
    const MTRR_TYPE_WB: u64 = 6;
    [
        (SYSENTER_CS, 0),
        (SYSENTER_ESP, 0),
        (SYSENTER_EIP, 0),
        (STAR, 0),
        (CSTAR, 0),
        (KERNEL_GS_BASE, 0),
        (SYSCALL_MASK, 0),
        (LSTAR, 0),
        (TSC, 0),
        (MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *byte as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wires LINT0 as ExtINT (the 8259 PIC) and LINT1 as NMI, as a PC BIOS leaves them.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn gdt_entry_encodes_flat_code_segment() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0x1234_5678, 0x67), 0x1280_8b34_5678_0067);
    }

    #[test]
    fn segment_decoding_matches_the_descriptor() {
        let cs = segment_from_gdt(gdt_64bit()[2], 2);
        assert_eq!(
            (cs.selector, cs.type_, cs.present, cs.l, cs.db, cs.g, cs.s),
            (0x10, 0xb, 1, 1, 0, 1, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let tss = segment_from_gdt(gdt_entry(0x808b, 0x1234_5678, 0x67), 4);
        assert_eq!((tss.base, tss.s, tss.type_), (0x1234_5678, 0, 0xb));
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn long_mode_sregs_and_tables() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        setup_sregs_64bit(&m, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & CR0_PG, 0);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        assert_eq!(sregs.cs.selector, BOOT_CS_SELECTOR);
        assert_eq!(sregs.ds.selector, BOOT_DS_SELECTOR);
        assert_eq!(sregs.cs.l, 1);
        let gdt2: u64 = m.read_obj(GuestAddress(BOOT_GDT_START + 16)).unwrap();
        assert_eq!(gdt2, gdt_64bit()[2]);
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        // The last 2 MiB page below 4 GiB maps itself.
        let last_pd = PDE_START + 3 * 0x1000;
        let last: u64 = m.read_obj(GuestAddress(last_pd + 511 * 8)).unwrap();
        assert_eq!(last, 0xffe0_0000 | 0x83);
        let pdpte3: u64 = m.read_obj(GuestAddress(PDPTE_START + 24)).unwrap();
        assert_eq!(pdpte3, last_pd | 3);
    }

    #[test]
    fn pvh_sregs_are_protected_mode_without_paging() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        setup_sregs_pvh(&m, &mut sregs).unwrap();
        assert_eq!(sregs.cr0 & (CR0_PE | CR0_PG), CR0_PE);
        assert_eq!(sregs.efer, 0);
        assert_eq!((sregs.cs.db, sregs.cs.l), (1, 0));
        assert_eq!(sregs.cs.limit, 0xffff_ffff);
        assert_eq!(sregs.tr.type_, 0xb);
    }

    #[test]
    fn regs_point_at_boot_info() {
        let r = regs_64bit(0x100200, 0x7000);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100200, 0x7000, BOOT_STACK_POINTER, 2)
        );
        let p = regs_pvh(0x100000, 0x6000);
        assert_eq!((p.rip, p.rbx), (0x100000, 0x6000));
    }

    #[test]
    fn lint_pins_get_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x1_0000 | 0x700);
        set_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT0), 0x1_0000 | 0x700);
        assert_eq!((lapic_reg(&lapic, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
        set_lapic_reg(&mut lapic, APIC_LVT0, 0);
        set_lint(&mut lapic);
        assert_eq!((lapic_reg(&lapic, APIC_LVT0) >> 8) & 7, APIC_MODE_EXTINT);
    }

    #[test]
    fn boot_msrs_enable_mtrrs() {
        let msrs = boot_msrs();
        let def = msrs
            .iter()
            .find(|m| m.index == msr_index::MTRR_DEF_TYPE)
            .unwrap();
        assert_eq!(def.data, 0x806);
        assert_eq!(boot_fpu().mxcsr, 0x1f80);
    }
}
