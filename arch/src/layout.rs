//! Every fixed guest-physical address and I/O port Keel uses, in one place.
//!
//! Low memory (below 1 MiB) holds the boot structures the VMM writes before the first KVM_RUN;
//! the kernel is loaded at [`HIMEM_START`]. Guest RAM is split around a 32-bit MMIO hole that
//! holds the IOAPIC, the LAPIC and (later) PCI BARs.
//!
//! ```text
//! 0x0000_0500  boot GDT (5 entries)            0x0000_0530  boot IDT (empty)
//! 0x0000_6000  PVH hvm_start_info              0x0000_6040  PVH memory map
//! 0x0000_7000  Linux zero page (boot_params)   0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4  0x0000_a000 PDPT  0x0000_b000..0x0000_efff  4 PDs (identity map of 4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line (64 KiB max)
//! 0x0009_fc00  EBDA: MP floating pointer and MP table (may run on up to ACPI_START)
//! 0x000a_0000  legacy VGA/ROM hole (reserved in e820)
//! 0x000e_0000  ACPI tables (RSDP first, so a BIOS-area scan finds it)
//! 0x0010_0000  kernel load address; RAM continues to MEM_32BIT_GAP_START
//! 0xc000_0000  32-bit MMIO hole (1 GiB): PCI BARs 0xc000_0000 (512 MiB), ECAM 0xe000_0000,
//!              IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000
//! 0x1_0000_0000 RAM above 4 GiB
//! ```

/// Boot GDT: null, null, 64-bit code (selector 0x10), data (selector 0x18).
pub const BOOT_GDT_START: u64 = 0x500;
/// Maximum number of entries in the boot GDT.
pub const BOOT_GDT_MAX: usize = 5;
/// An empty IDT loaded at boot (the guest installs its own).
pub const BOOT_IDT_START: u64 = 0x530;

/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initramfs), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (`hvm_memmap_table_entry` array), right after the module list.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Largest number of PVH memory-map entries that fit below the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;

/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Identity-map page tables built by the VMM for 64-bit entry: PML4, one PDPT, four PDs.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table for the first 512 GiB.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (2 MiB pages) covering the first 4 GiB.
pub const PDE_START: u64 = 0xb000;
/// How many page directories follow [`PDE_START`].
pub const PDE_COUNT: u64 = 4;

/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line Keel passes, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;

/// Extended BIOS data area: where the MP floating pointer and table go.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of the legacy VGA/option-ROM hole, reserved in the memory map.
pub const LEGACY_HOLE_START: u64 = 0xa0000;
/// ACPI tables; the RSDP sits at the start so a scan of 0xe0000..0x100000 finds it.
pub const ACPI_START: u64 = 0xe0000;
/// Room for the ACPI tables (up to the end of the BIOS area).
pub const ACPI_MAX_SIZE: u64 = HIMEM_START - ACPI_START;

/// Where kernels are loaded (the Linux "high memory" start).
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole.
pub const MEM_32BIT_GAP_START: u64 = 0xc000_0000;
/// Size of the 32-bit MMIO hole.
pub const MEM_32BIT_GAP_SIZE: u64 = 0x4000_0000;
/// First address of RAM above the hole.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;

/// 32-bit PCI BAR window: the start of the MMIO hole, below the ECAM window.
pub const PCI_MMIO32_START: u64 = MEM_32BIT_GAP_START;
/// Size of the 32-bit PCI BAR window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI Express enhanced configuration space (ECAM / MMCONFIG) for segment 0.
pub const PCI_ECAM_START: u64 = PCI_MMIO32_START + PCI_MMIO32_SIZE;
/// ECAM size: 1 MiB per bus; Keel has one bus (bus 0).
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// Last PCI bus number decoded by the host bridge.
pub const PCI_LAST_BUS: u8 = 0;
/// Alignment of the 64-bit PCI BAR window above guest RAM.
pub const PCI_MMIO64_ALIGN: u64 = 1 << 30;

/// The address windows the PCI host bridge decodes for BARs, as `(start, size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciWindows {
    /// The 32-bit window, in the MMIO hole below 4 GiB.
    pub mmio32: (u64, u64),
    /// The 64-bit window, if the guest-physical address space has room above RAM.
    pub mmio64: Option<(u64, u64)>,
}

impl PciWindows {
    /// The windows of a guest whose RAM ends at `ram_end` (exclusive) and whose CPUID gives
    /// `phys_bits` physical address bits. The 64-bit window runs from the first
    /// [`PCI_MMIO64_ALIGN`] boundary at or above both 4 GiB and `ram_end` to the top of the
    /// address space, so firmware that places BARs high (OVMF uses the top eighth) finds them
    /// decoded; `None` if nothing is left there.
    pub fn for_guest(ram_end: u64, phys_bits: u32) -> Self {
        let top = 1u64.checked_shl(phys_bits.min(63)).unwrap_or(u64::MAX);
        let start = ram_end
            .max(RAM_64BIT_START)
            .checked_next_multiple_of(PCI_MMIO64_ALIGN);
        let mmio64 = start.filter(|&s| s < top).map(|s| (s, top - s));
        PciWindows {
            mmio32: (PCI_MMIO32_START, PCI_MMIO32_SIZE),
            mmio64,
        }
    }

    /// Whether `[addr, addr + len)` lies inside one of the windows.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        [Some(self.mmio32), self.mmio64]
            .into_iter()
            .flatten()
            .any(|(start, size)| addr >= start && end <= start + size)
    }
}

/// IOAPIC MMIO base (handled by KVM's in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base (handled by KVM's in-kernel irqchip).
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS needs three pages inside the hole, out of the guest's way.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page for real mode (one page below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Number of pins on the in-kernel IOAPIC.
pub const IOAPIC_PINS: u32 = 24;
/// IOAPIC inputs for PCI INTx: INTA# of the device in slot S goes to
/// `PCI_INTX_GSI_BASE + (S - 1) % PCI_INTX_GSI_COUNT` (inputs 16-23; 0-15 are ISA).
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// Number of IOAPIC inputs shared by PCI INTx lines.
pub const PCI_INTX_GSI_COUNT: u32 = IOAPIC_PINS - PCI_INTX_GSI_BASE;

/// IOAPIC input used by INTA# of the PCI device in `slot` (1..=31).
pub const fn pci_intx_gsi(slot: u8) -> u32 {
    PCI_INTX_GSI_BASE + (slot as u32).saturating_sub(1) % PCI_INTX_GSI_COUNT
}

/// Legacy I/O ports and the IRQ lines of the devices behind them.
pub mod ports {
    /// COM1 16550 UART.
    pub const COM1: u16 = 0x3f8;
    /// Number of ports the UART decodes.
    pub const COM1_LEN: u16 = 8;
    /// IRQ of COM1.
    pub const COM1_IRQ: u32 = 4;
    /// i8042 keyboard controller data port (0x60) .. command port (0x64).
    pub const I8042: u16 = 0x60;
    /// Ports the i8042 decodes (0x60..=0x64).
    pub const I8042_LEN: u16 = 5;
    /// CMOS/RTC index and data ports.
    pub const CMOS: u16 = 0x70;
    /// Ports the CMOS decodes.
    pub const CMOS_LEN: u16 = 2;
    /// PCI configuration address/data ports (CONFIG_ADDRESS 0xcf8, CONFIG_DATA 0xcfc).
    pub const PCI_CONFIG: u16 = 0xcf8;
    /// Ports the PCI configuration mechanism decodes.
    pub const PCI_CONFIG_LEN: u16 = 8;
    /// POST/debug port.
    pub const POST: u16 = 0x80;
    /// Firmware debug console (edk2 logs there when a read returns 0xE9).
    pub const DEBUGCON: u16 = 0x402;
    /// ACPI PM register block base: sleep control (1 byte) and status (1), PM1a_EVT (4),
    /// PM1a_CNT (2), PM_TMR (4), reset (1). edk2's CloudHv firmware hard-codes the sleep
    /// control register at 0x600 and the PM timer at 0x608.
    pub const ACPI_PM_BASE: u16 = 0x600;
    /// Sleep control register (FADT SLEEP_CONTROL_REG), one byte.
    pub const ACPI_SLEEP_CONTROL: u16 = ACPI_PM_BASE;
    /// Sleep status register (FADT SLEEP_STATUS_REG), one byte.
    pub const ACPI_SLEEP_STATUS: u16 = ACPI_PM_BASE + 1;
    /// PM1a event block (status + enable).
    pub const ACPI_PM1A_EVT: u16 = ACPI_PM_BASE + 2;
    /// Length of the PM1a event block.
    pub const ACPI_PM1A_EVT_LEN: u8 = 4;
    /// PM1a control block.
    pub const ACPI_PM1A_CNT: u16 = ACPI_PM_BASE + 6;
    /// Length of the PM1a control block.
    pub const ACPI_PM1A_CNT_LEN: u8 = 2;
    /// ACPI PM timer (24-bit, 3.579545 MHz).
    pub const ACPI_PM_TMR: u16 = ACPI_PM_BASE + 8;
    /// Length of the PM timer block.
    pub const ACPI_PM_TMR_LEN: u8 = 4;
    /// ACPI reset register (FADT RESET_REG), one byte.
    pub const ACPI_RESET: u16 = ACPI_PM_BASE + 0xc;
    /// Value the guest writes to [`ACPI_RESET`] to reset.
    pub const ACPI_RESET_VALUE: u8 = 0x1;
    /// Ports the ACPI PM device decodes.
    pub const ACPI_PM_LEN: u16 = 0x10;
    /// ACPI SCI interrupt line.
    pub const ACPI_SCI_IRQ: u32 = 9;
    /// Sleep type Keel's DSDT `\_S5` package announces; PM1a_CNT.SLP_TYP == this with SLP_EN powers off.
    pub const ACPI_S5_SLP_TYP: u8 = 5;
}

// The boot stack grows down from between the zero page and the page tables.
const _: () =
    assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);

#[cfg(test)]
mod tests {

    #[test]
    fn pci_windows_above_ram_reach_the_top_of_the_address_space() {
        // 1 GiB of RAM: the 64-bit window starts at 4 GiB and ends at 2^40.
        let w = PciWindows::for_guest(1 << 30, 40);
        assert_eq!(w.mmio32, (0xc000_0000, 0x2000_0000));
        assert_eq!(w.mmio64, Some((1 << 32, (1 << 40) - (1 << 32))));
        // RAM to 5.5 GiB: the window starts at the next GiB boundary.
        let w = PciWindows::for_guest((11 << 30) / 2, 40);
        assert_eq!(w.mmio64.unwrap().0, 6 << 30);
        // No room: RAM reaches the top.
        assert_eq!(PciWindows::for_guest(1 << 36, 36).mmio64, None);
        assert_eq!(PciWindows::for_guest(u64::MAX, 52).mmio64, None);
        assert!(PciWindows::for_guest(0, 64).mmio64.is_some());
    }

    #[test]
    fn pci_window_membership() {
        let w = PciWindows::for_guest(1 << 30, 40);
        assert!(w.contains(0xc000_0000, 0x8_0000));
        assert!(
            !w.contains(0xdfff_f000, 0x2000),
            "crosses the 32-bit window's end"
        );
        assert!(
            w.contains(0xe0_0000_0000, 0x8_0000),
            "where OVMF puts BARs with 40 bits"
        );
        assert!(!w.contains((1 << 40) - 0x1000, 0x2000), "past the top");
        assert!(!w.contains(0x8000_0000, 0x1000), "RAM");
        assert!(!w.contains(u64::MAX, 2));
    }

    use super::*;

    #[test]
    fn low_memory_structures_do_not_overlap() {
        let mut ranges = [
            (BOOT_GDT_START, BOOT_GDT_START + 8 * BOOT_GDT_MAX as u64),
            (BOOT_IDT_START, BOOT_IDT_START + 8),
            (PVH_INFO_START, PVH_MODLIST_START),
            (PVH_MODLIST_START, PVH_MEMMAP_START),
            (PVH_MEMMAP_START, ZERO_PAGE_START),
            (ZERO_PAGE_START, ZERO_PAGE_START + 0x1000),
            (PML4_START, PDE_START + PDE_COUNT * 0x1000),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
            (EBDA_START, LEGACY_HOLE_START),
            (ACPI_START, HIMEM_START),
        ];
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{:x?} overlaps {:x?}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn hole_holds_the_apics_and_kvm_pages() {
        let hole = MEM_32BIT_GAP_START..MEM_32BIT_GAP_START + MEM_32BIT_GAP_SIZE;
        for addr in [
            IOAPIC_START,
            APIC_START,
            KVM_TSS_ADDRESS,
            KVM_IDENTITY_MAP_ADDRESS,
        ] {
            assert!(hole.contains(&addr));
        }
        let ecam = PCI_ECAM_START..PCI_ECAM_START + PCI_ECAM_SIZE;
        assert!(hole.contains(&ecam.start) && ecam.end <= IOAPIC_START);
        assert_eq!(PCI_ECAM_START % (1 << 20), 0);
        for addr in [IOAPIC_START, APIC_START, KVM_TSS_ADDRESS] {
            assert!(!ecam.contains(&addr));
        }
        assert_eq!(hole.end, RAM_64BIT_START);
    }
}
