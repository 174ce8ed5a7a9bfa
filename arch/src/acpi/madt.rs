//! The Multiple APIC Description Table ("APIC", ACPI 6.5 section 5.2.12, revision 5): one local
//! APIC (or x2APIC, for IDs >= 255) per vCPU, the IOAPIC, the SCI's interrupt source override and
//! the LINT1 NMI wiring.

use super::sdt::Sdt;
use crate::layout::ports::ACPI_SCI_IRQ;
use crate::layout::{APIC_START, IOAPIC_START};

/// MADT revision.
pub const MADT_REVISION: u8 = 5;
/// `Flags`: the system also has dual 8259 PICs.
pub const PCAT_COMPAT: u32 = 1;
/// Offset of the first interrupt controller structure.
pub const ENTRIES_OFFSET: usize = 44;

/// Interrupt controller structure types.
pub mod entry_type {
    /// Processor Local APIC.
    pub const LOCAL_APIC: u8 = 0;
    /// I/O APIC.
    pub const IO_APIC: u8 = 1;
    /// Interrupt Source Override.
    pub const INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
    /// Local APIC NMI.
    pub const LOCAL_APIC_NMI: u8 = 4;
    /// Processor Local x2APIC.
    pub const LOCAL_X2APIC: u8 = 9;
    /// Local x2APIC NMI.
    pub const LOCAL_X2APIC_NMI: u8 = 10;
}

/// Local APIC flags: the processor is enabled.
const LAPIC_ENABLED: u32 = 1;
/// MPS INTI flags: active high (01) polarity, level (11) trigger.
const ACTIVE_HIGH_LEVEL: u16 = 0x000d;
/// MPS INTI flags: conforms to the bus.
const CONFORMING: u16 = 0;
/// LINT pin the NMI is wired to.
const NMI_LINT: u8 = 1;
/// First APIC ID that needs an x2APIC structure (0xff is the xAPIC broadcast ID).
const X2APIC_FIRST_ID: u32 = 0xff;

fn local_apic(id: u8) -> Vec<u8> {
    let mut e = vec![entry_type::LOCAL_APIC, 8, id, id];
    e.extend(LAPIC_ENABLED.to_le_bytes());
    e
}

fn local_x2apic(id: u32) -> Vec<u8> {
    let mut e = vec![entry_type::LOCAL_X2APIC, 16, 0, 0];
    e.extend(id.to_le_bytes());
    e.extend(LAPIC_ENABLED.to_le_bytes());
    e.extend(id.to_le_bytes()); // ACPI processor UID
    e
}

fn io_apic(id: u8) -> Vec<u8> {
    let mut e = vec![entry_type::IO_APIC, 12, id, 0];
    e.extend((IOAPIC_START as u32).to_le_bytes());
    e.extend(0u32.to_le_bytes()); // GSI base
    e
}

fn interrupt_source_override(source: u8, gsi: u32, flags: u16) -> Vec<u8> {
    let mut e = vec![entry_type::INTERRUPT_SOURCE_OVERRIDE, 10, 0, source];
    e.extend(gsi.to_le_bytes());
    e.extend(flags.to_le_bytes());
    e
}

fn local_apic_nmi() -> Vec<u8> {
    let mut e = vec![entry_type::LOCAL_APIC_NMI, 6, 0xff]; // all processors
    e.extend(CONFORMING.to_le_bytes());
    e.push(NMI_LINT);
    e
}

fn local_x2apic_nmi() -> Vec<u8> {
    let mut e = vec![entry_type::LOCAL_X2APIC_NMI, 12];
    e.extend(CONFORMING.to_le_bytes());
    e.extend(u32::MAX.to_le_bytes()); // all processors
    e.extend([NMI_LINT, 0, 0, 0]);
    e
}

/// The MADT for `num_cpus` vCPUs with APIC IDs and processor UIDs `0..num_cpus`; the IOAPIC
/// gets ID `num_cpus` when that fits in a byte, else 0.
pub fn madt(num_cpus: u32) -> Vec<u8> {
    let mut t = Sdt::new(*b"APIC", MADT_REVISION);
    t.append_u32(APIC_START as u32);
    t.append_u32(PCAT_COMPAT);
    for id in 0..num_cpus {
        match u8::try_from(id) {
            Ok(id8) if id < X2APIC_FIRST_ID => t.append(&local_apic(id8)),
            _ => t.append(&local_x2apic(id)),
        }
    }
    t.append(&io_apic(u8::try_from(num_cpus).unwrap_or(0)));
    let sci = ACPI_SCI_IRQ as u8;
    t.append(&interrupt_source_override(
        sci,
        ACPI_SCI_IRQ,
        ACTIVE_HIGH_LEVEL,
    ));
    t.append(&local_apic_nmi());
    if num_cpus > X2APIC_FIRST_ID {
        t.append(&local_x2apic_nmi());
    }
    t.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Splits a MADT into its interrupt controller structures.
    pub(crate) fn entries(t: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = &t[ENTRIES_OFFSET..];
        while !rest.is_empty() {
            let len = rest[1] as usize;
            assert!(len >= 2 && len <= rest.len(), "bad entry length {len}");
            out.push(&rest[..len]);
            rest = &rest[len..];
        }
        out
    }

    fn u32_at(t: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(t[o..o + 4].try_into().unwrap())
    }

    #[test]
    fn header_and_checksum() {
        let t = madt(2);
        assert_eq!(&t[0..4], b"APIC");
        assert_eq!(t[8], 5);
        assert_eq!(u32_at(&t, 4) as usize, t.len());
        assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(u32_at(&t, 36) as u64, APIC_START);
        assert_eq!(u32_at(&t, 40), 1);
    }

    #[test]
    fn one_enabled_lapic_per_cpu() {
        let t = madt(4);
        let all = entries(&t);
        let lapics: Vec<_> = all
            .iter()
            .filter(|e| e[0] == entry_type::LOCAL_APIC)
            .collect();
        assert_eq!(lapics.len(), 4);
        for (i, e) in lapics.iter().enumerate() {
            assert_eq!((e[2] as usize, e[3] as usize, u32_at(e, 4)), (i, i, 1));
        }
        assert!(!all.iter().any(|e| e[0] == entry_type::LOCAL_X2APIC));
        let ioapic: Vec<_> = all.iter().filter(|e| e[0] == entry_type::IO_APIC).collect();
        assert_eq!(ioapic.len(), 1);
        assert_eq!(ioapic[0][2], 4);
        assert_eq!(
            (u32_at(ioapic[0], 4) as u64, u32_at(ioapic[0], 8)),
            (IOAPIC_START, 0)
        );
        let iso: Vec<_> = all
            .iter()
            .filter(|e| e[0] == entry_type::INTERRUPT_SOURCE_OVERRIDE)
            .collect();
        assert_eq!(iso.len(), 1);
        assert_eq!(iso[0], &[2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0]);
        let nmi: Vec<&[u8]> = all
            .iter()
            .copied()
            .filter(|e| e[0] == entry_type::LOCAL_APIC_NMI)
            .collect();
        assert_eq!(nmi, [&[4u8, 6, 0xff, 0, 0, 1][..]]);
    }

    #[test]
    fn large_guests_use_x2apic_entries() {
        let t = madt(300);
        let all = entries(&t);
        let lapics = all
            .iter()
            .filter(|e| e[0] == entry_type::LOCAL_APIC)
            .count();
        assert_eq!(lapics, 255);
        let x2: Vec<_> = all
            .iter()
            .filter(|e| e[0] == entry_type::LOCAL_X2APIC)
            .collect();
        assert_eq!(x2.len(), 45);
        assert_eq!(
            (u32_at(x2[0], 4), u32_at(x2[0], 8), u32_at(x2[0], 12)),
            (255, 1, 255)
        );
        assert_eq!(u32_at(x2[44], 4), 299);
        let io = all.iter().find(|e| e[0] == entry_type::IO_APIC).unwrap();
        assert_eq!(io[2], 0);
        assert_eq!(
            all.iter()
                .filter(|e| e[0] == entry_type::LOCAL_X2APIC_NMI)
                .count(),
            1
        );
        assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
    }
}
