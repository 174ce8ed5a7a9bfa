//! The Fixed ACPI Description Table ("FACP", ACPI 6.5 section 5.2.9, revision 6, 276 bytes) and
//! the Firmware ACPI Control Structure ("FACS", section 5.2.10) it points at.
//!
//! Keel's guest is a legacy PC platform (not HW-reduced) with ACPI always enabled (no SMI
//! command port), a PM1a event/control block and a 24-bit PM timer on I/O ports, and a one-byte
//! reset register. The block's hardware-reduced sleep control register (for edk2's CloudHv
//! firmware, which writes it without reading the FADT) is left out of the FADT: an OS reads
//! those fields only on hardware-reduced platforms.

use super::sdt::{access_size, GenericAddress, Sdt};
use crate::layout::ports::{
    ACPI_PM1A_CNT, ACPI_PM1A_CNT_LEN, ACPI_PM1A_EVT, ACPI_PM1A_EVT_LEN, ACPI_PM_TMR,
    ACPI_PM_TMR_LEN, ACPI_RESET, ACPI_RESET_VALUE, ACPI_SCI_IRQ,
};

/// Length of a revision-6 FADT.
pub const FADT_LENGTH: usize = 276;
/// FADT major revision.
pub const FADT_REVISION: u8 = 6;
/// FADT minor revision (ACPI 6.5).
pub const FADT_MINOR_REVISION: u8 = 5;
/// Length of the FACS.
pub const FACS_LENGTH: usize = 64;
/// FACS version.
pub const FACS_VERSION: u8 = 2;

/// Byte offsets of the FADT fields Keel fills in.
pub mod offset {
    /// 32-bit FACS address.
    pub const FIRMWARE_CTRL: usize = 36;
    /// 32-bit DSDT address.
    pub const DSDT: usize = 40;
    /// SCI interrupt (u16).
    pub const SCI_INT: usize = 46;
    /// SMI command port (u32).
    pub const SMI_CMD: usize = 48;
    /// PM1a event block port (u32).
    pub const PM1A_EVT_BLK: usize = 56;
    /// PM1a control block port (u32).
    pub const PM1A_CNT_BLK: usize = 64;
    /// PM timer port (u32).
    pub const PM_TMR_BLK: usize = 76;
    /// PM1 event block length (u8).
    pub const PM1_EVT_LEN: usize = 88;
    /// PM1 control block length (u8).
    pub const PM1_CNT_LEN: usize = 89;
    /// PM timer block length (u8).
    pub const PM_TMR_LEN: usize = 91;
    /// Worst-case C2 latency (u16); over 100 means no C2.
    pub const P_LVL2_LAT: usize = 96;
    /// Worst-case C3 latency (u16); over 1000 means no C3.
    pub const P_LVL3_LAT: usize = 98;
    /// IA-PC boot architecture flags (u16).
    pub const IAPC_BOOT_ARCH: usize = 109;
    /// Fixed feature flags (u32).
    pub const FLAGS: usize = 112;
    /// Reset register (GAS).
    pub const RESET_REG: usize = 116;
    /// Value to write to the reset register (u8).
    pub const RESET_VALUE: usize = 128;
    /// FADT minor version (u8).
    pub const MINOR_VERSION: usize = 131;
    /// 64-bit FACS address.
    pub const X_FIRMWARE_CTRL: usize = 132;
    /// 64-bit DSDT address.
    pub const X_DSDT: usize = 140;
    /// PM1a event block (GAS).
    pub const X_PM1A_EVT_BLK: usize = 148;
    /// PM1a control block (GAS).
    pub const X_PM1A_CNT_BLK: usize = 172;
    /// PM timer block (GAS).
    pub const X_PM_TMR_BLK: usize = 208;
}

/// FADT `Flags` bits.
pub mod flags {
    /// WBINVD works correctly.
    pub const WBINVD: u32 = 1 << 0;
    /// C1 is supported on all processors.
    pub const PROC_C1: u32 = 1 << 2;
    /// The power button, if any, is a control-method device (no fixed power button).
    pub const PWR_BUTTON: u32 = 1 << 4;
    /// The sleep button, if any, is a control-method device (no fixed sleep button).
    pub const SLP_BUTTON: u32 = 1 << 5;
    /// The PM timer is 32 bits wide (Keel's is 24: not set).
    pub const TMR_VAL_EXT: u32 = 1 << 8;
    /// RESET_REG is supported.
    pub const RESET_REG_SUP: u32 = 1 << 10;
    /// Hardware-reduced ACPI (not set: Keel has fixed hardware).
    pub const HW_REDUCED_ACPI: u32 = 1 << 20;
}

/// FADT `IAPC_BOOT_ARCH` bits.
pub mod boot_arch {
    /// Legacy devices (ISA) are present.
    pub const LEGACY_DEVICES: u16 = 1 << 0;
    /// An 8042 keyboard controller is present.
    pub const I8042: u16 = 1 << 1;
    /// There is no VGA hardware to probe.
    pub const VGA_NOT_PRESENT: u16 = 1 << 2;
}

/// The FADT pointing at the FACS at `facs_addr` and the DSDT at `dsdt_addr` (both below 4 GiB,
/// as the 32-bit fields require; the 64-bit fields carry the same values).
pub fn fadt(facs_addr: u32, dsdt_addr: u32) -> Vec<u8> {
    use offset::*;
    let mut t = Sdt::with_length(*b"FACP", FADT_REVISION, FADT_LENGTH);
    t.set_u32(FIRMWARE_CTRL, facs_addr);
    t.set_u32(DSDT, dsdt_addr);
    t.set_u16(SCI_INT, ACPI_SCI_IRQ as u16);
    t.set_u32(SMI_CMD, 0); // no SMI port: the platform is always in ACPI mode
    t.set_u32(PM1A_EVT_BLK, u32::from(ACPI_PM1A_EVT));
    t.set_u32(PM1A_CNT_BLK, u32::from(ACPI_PM1A_CNT));
    t.set_u32(PM_TMR_BLK, u32::from(ACPI_PM_TMR));
    t.set_u8(PM1_EVT_LEN, ACPI_PM1A_EVT_LEN);
    t.set_u8(PM1_CNT_LEN, ACPI_PM1A_CNT_LEN);
    t.set_u8(PM_TMR_LEN, ACPI_PM_TMR_LEN);
    t.set_u16(P_LVL2_LAT, 101);
    t.set_u16(P_LVL3_LAT, 1001);
    let arch = boot_arch::LEGACY_DEVICES | boot_arch::I8042 | boot_arch::VGA_NOT_PRESENT;
    t.set_u16(IAPC_BOOT_ARCH, arch);
    let f = flags::WBINVD
        | flags::PROC_C1
        | flags::PWR_BUTTON
        | flags::SLP_BUTTON
        | flags::RESET_REG_SUP;
    t.set_u32(FLAGS, f);
    let reset = GenericAddress::io_port(ACPI_RESET, 1, access_size::BYTE);
    t.set_bytes(RESET_REG, &reset.to_bytes());
    t.set_u8(RESET_VALUE, ACPI_RESET_VALUE);
    t.set_u8(MINOR_VERSION, FADT_MINOR_REVISION);
    t.set_u64(X_FIRMWARE_CTRL, u64::from(facs_addr));
    t.set_u64(X_DSDT, u64::from(dsdt_addr));
    let evt = GenericAddress::io_port(ACPI_PM1A_EVT, ACPI_PM1A_EVT_LEN, access_size::WORD);
    t.set_bytes(X_PM1A_EVT_BLK, &evt.to_bytes());
    let cnt = GenericAddress::io_port(ACPI_PM1A_CNT, ACPI_PM1A_CNT_LEN, access_size::WORD);
    t.set_bytes(X_PM1A_CNT_BLK, &cnt.to_bytes());
    let tmr = GenericAddress::io_port(ACPI_PM_TMR, ACPI_PM_TMR_LEN, access_size::DWORD);
    t.set_bytes(X_PM_TMR_BLK, &tmr.to_bytes());
    t.finish()
}

/// The FACS: signature, length, version; no hardware signature, waking vector or global lock.
pub fn facs() -> [u8; FACS_LENGTH] {
    let mut f = [0u8; FACS_LENGTH];
    f[0..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&(FACS_LENGTH as u32).to_le_bytes());
    f[32] = FACS_VERSION;
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(t: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([t[o], t[o + 1]])
    }

    fn u32_at(t: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(t[o..o + 4].try_into().unwrap())
    }

    fn u64_at(t: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(t[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn fadt_fields_at_spec_offsets() {
        let t = fadt(0xe_0040, 0xe_0080);
        assert_eq!(t.len(), 276);
        assert_eq!(&t[0..4], b"FACP");
        assert_eq!((u32_at(&t, 4), t[8]), (276, 6));
        assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!((u32_at(&t, 36), u32_at(&t, 40)), (0xe_0040, 0xe_0080));
        assert_eq!((u64_at(&t, 132), u64_at(&t, 140)), (0xe_0040, 0xe_0080));
        assert_eq!(u16_at(&t, 46), 9);
        assert_eq!(u32_at(&t, 48), 0);
        assert_eq!(
            (u32_at(&t, 56), u32_at(&t, 64), u32_at(&t, 76)),
            (0x602, 0x606, 0x608)
        );
        assert_eq!((u32_at(&t, 60), u32_at(&t, 68), u32_at(&t, 80)), (0, 0, 0)); // no PM1b/GPE0
        assert_eq!((t[88], t[89], t[91], t[92]), (4, 2, 4, 0));
        assert_eq!(u16_at(&t, 109), 0b111);
        let f = u32_at(&t, 112);
        assert_eq!(f, 1 | 1 << 2 | 1 << 4 | 1 << 5 | 1 << 10);
        assert_eq!(f & (flags::TMR_VAL_EXT | flags::HW_REDUCED_ACPI), 0);
        assert_eq!(&t[116..128], &[1, 8, 0, 1, 0x0c, 0x06, 0, 0, 0, 0, 0, 0]);
        assert_eq!(t[128], 1);
        assert_eq!(t[131], 5);
        assert_eq!(&t[148..152], &[1, 32, 0, 2]);
        assert_eq!(u64_at(&t, 152), 0x602);
        assert_eq!(&t[172..176], &[1, 16, 0, 2]);
        assert_eq!(u64_at(&t, 176), 0x606);
        assert_eq!(&t[208..212], &[1, 32, 0, 3]);
        assert_eq!(u64_at(&t, 212), 0x608);
        assert!(t[160..172].iter().all(|b| *b == 0)); // X_PM1b_EVT_BLK
                                                      // GPE blocks, the sleep registers (read only when HW_REDUCED_ACPI), vendor.
        assert!(t[220..276].iter().all(|b| *b == 0));
    }

    #[test]
    fn facs_layout() {
        let f = facs();
        assert_eq!(&f[0..4], b"FACS");
        assert_eq!(u32_at(&f, 4), 64);
        assert_eq!(f[32], 2);
        assert!(f[8..32].iter().chain(&f[33..]).all(|b| *b == 0));
    }
}
