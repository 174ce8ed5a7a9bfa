//! The Intel MultiProcessor Specification 1.4 tables: an MP floating pointer structure at
//! [`EBDA_START`] and, right after it, an MP configuration table describing the vCPUs, one ISA
//! bus, the IOAPIC, the ISA IRQ wiring and the local APICs' LINT0/LINT1 pins.
//!
//! Guests that use ACPI ignore these tables; they serve `acpi=off` and old kernels.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::layout::{ACPI_START, APIC_START, EBDA_START, IOAPIC_START};

/// Most vCPUs the MP table can describe: APIC IDs are 8 bits, 0xff is the broadcast ID and one
/// more ID goes to the IOAPIC.
pub const MAX_MPTABLE_CPUS: u32 = 254;

/// Errors building or writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// The guest has no vCPU.
    #[error("an MP table needs at least one vCPU")]
    NoCpus,
    /// More vCPUs than 8-bit APIC IDs can name.
    #[error("{0} vCPUs do not fit in an MP table (at most {MAX_MPTABLE_CPUS})")]
    TooManyCpus(u32),
    /// The table would run past the space reserved for it.
    #[error("the MP table needs {0} bytes, more than fit between the EBDA and the ACPI tables")]
    TooLarge(usize),
    /// Guest memory rejected the write (for example, it does not cover the EBDA).
    #[error("failed to write the MP {what} into guest memory")]
    Write {
        /// Which structure.
        what: &'static str,
        /// The cause.
        #[source]
        source: GuestMemoryError,
    },
}

const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const SPEC_REVISION: u8 = 4; // MP spec 1.4

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BSP: u8 = 1 << 1;
const IOAPIC_ENABLED: u8 = 1 << 0;
/// Family 6, model 0, stepping 0.
const CPU_SIGNATURE: u32 = 6 << 8;
/// CPUID.1:EDX FPU (bit 0) and APIC (bit 9).
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger mode "conforms to the bus".
const INT_FLAGS_CONFORMING: u16 = 0;
const ISA_BUS_ID: u8 = 0;
const ISA_IRQS: u8 = 16;
const ALL_LAPICS: u8 = 0xff;

/// The byte that makes `bytes` sum to zero (mod 256) when added to them.
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_sub(*b))
}

fn processor_entry(apic_id: u8) -> [u8; 20] {
    let mut e = [0u8; 20];
    e[0] = ENTRY_PROCESSOR;
    e[1] = apic_id;
    e[2] = LAPIC_VERSION;
    e[3] = CPU_ENABLED | if apic_id == 0 { CPU_BSP } else { 0 };
    e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
    e[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
    e
}

fn interrupt_entry(entry_type: u8, int_type: u8, irq: u8, dest_id: u8, dest_pin: u8) -> [u8; 8] {
    let f = INT_FLAGS_CONFORMING.to_le_bytes();
    [
        entry_type, int_type, f[0], f[1], ISA_BUS_ID, irq, dest_id, dest_pin,
    ]
}

/// The MP configuration table (header and entries) for `num_cpus` vCPUs, checksummed.
fn config_table(num_cpus: u8) -> Vec<u8> {
    let ioapic_id = num_cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    let mut push = |entry: &[u8]| {
        entries.extend_from_slice(entry);
        count += 1;
    };
    for id in 0..num_cpus {
        push(&processor_entry(id));
    }
    push(&[ENTRY_BUS, ISA_BUS_ID, b'I', b'S', b'A', b' ', b' ', b' ']);
    let addr = (IOAPIC_START as u32).to_le_bytes();
    push(&[
        ENTRY_IOAPIC,
        ioapic_id,
        IOAPIC_VERSION,
        IOAPIC_ENABLED,
        addr[0],
        addr[1],
        addr[2],
        addr[3],
    ]);
    for irq in 0..ISA_IRQS {
        push(&interrupt_entry(
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            irq,
            ioapic_id,
            irq,
        ));
    }
    push(&interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        ALL_LAPICS,
        0,
    ));
    push(&interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        ALL_LAPICS,
        1,
    ));

    let mut table = vec![0u8; HEADER_SIZE];
    table[0..4].copy_from_slice(b"PCMP");
    table[4..6].copy_from_slice(&((HEADER_SIZE + entries.len()) as u16).to_le_bytes());
    table[6] = SPEC_REVISION;
    table[8..16].copy_from_slice(b"KEEL    ");
    table[16..28].copy_from_slice(b"KEELVM      ");
    // OEM table pointer/size (28..34) stay zero: there is no OEM table.
    table[34..36].copy_from_slice(&count.to_le_bytes());
    table[36..40].copy_from_slice(&(APIC_START as u32).to_le_bytes());
    // Extended table length/checksum (40..43) stay zero: there is no extended table.
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// The MP floating pointer structure pointing at a configuration table at `table_addr`.
fn floating_pointer(table_addr: u32) -> [u8; FLOATING_POINTER_SIZE] {
    let mut fp = [0u8; FLOATING_POINTER_SIZE];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&table_addr.to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = SPEC_REVISION;
    // Feature bytes stay zero: a configuration table is present, virtual-wire mode (no IMCR).
    fp[10] = checksum(&fp);
    fp
}

/// Writes the MP floating pointer at [`EBDA_START`] and the configuration table for `num_cpus`
/// vCPUs (APIC IDs `0..num_cpus`, IOAPIC ID `num_cpus`) right after it.
pub fn setup_mptable<M: GuestMemoryBackend>(mem: &M, num_cpus: u32) -> Result<(), MpTableError> {
    if num_cpus == 0 {
        return Err(MpTableError::NoCpus);
    }
    let cpus = u8::try_from(num_cpus)
        .ok()
        .filter(|_| num_cpus <= MAX_MPTABLE_CPUS)
        .ok_or(MpTableError::TooManyCpus(num_cpus))?;
    let table_addr = EBDA_START + FLOATING_POINTER_SIZE as u64;
    let table = config_table(cpus);
    let total = FLOATING_POINTER_SIZE + table.len();
    if EBDA_START + total as u64 > ACPI_START {
        return Err(MpTableError::TooLarge(total));
    }
    mem.write_slice(&table, GuestAddress(table_addr))
        .map_err(|source| MpTableError::Write {
            what: "configuration table",
            source,
        })?;
    mem.write_slice(
        &floating_pointer(table_addr as u32),
        GuestAddress(EBDA_START),
    )
    .map_err(|source| MpTableError::Write {
        what: "floating pointer",
        source,
    })?;
    log::debug!(
        "MP table for {num_cpus} vCPUs at {table_addr:#x} ({} bytes)",
        table.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem(size: usize) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    fn read(m: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        m.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    /// Returns the floating pointer and the configuration table written for `cpus` vCPUs.
    fn tables(cpus: u32) -> (Vec<u8>, Vec<u8>) {
        let m = mem(0x20_0000);
        setup_mptable(&m, cpus).unwrap();
        let fp = read(&m, EBDA_START, 16);
        let addr = u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64;
        let header = read(&m, addr, HEADER_SIZE);
        let len = u16::from_le_bytes([header[4], header[5]]) as usize;
        (fp, read(&m, addr, len))
    }

    fn entries(table: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = &table[HEADER_SIZE..];
        while !rest.is_empty() {
            let len = if rest[0] == ENTRY_PROCESSOR { 20 } else { 8 };
            out.push(&rest[..len]);
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn floating_pointer_is_valid() {
        let (fp, _) = tables(2);
        assert_eq!(&fp[0..4], b"_MP_");
        assert_eq!(
            u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64,
            EBDA_START + 16
        );
        assert_eq!((fp[8], fp[9]), (1, 4));
        assert_eq!(sum(&fp), 0);
        assert_ne!(fp[10], 0, "checksum byte must be filled in");
    }

    #[test]
    fn config_table_header_and_checksum() {
        for cpus in [1, 4, MAX_MPTABLE_CPUS] {
            let (_, table) = tables(cpus);
            assert_eq!(&table[0..4], b"PCMP");
            assert_eq!(table[6], 4);
            assert_eq!(sum(&table), 0, "{cpus} vCPUs");
            assert_eq!(
                u32::from_le_bytes(table[36..40].try_into().unwrap()) as u64,
                APIC_START
            );
            let count = u16::from_le_bytes([table[34], table[35]]) as usize;
            assert_eq!(count, entries(&table).len());
            assert_eq!(count, cpus as usize + 1 + 1 + 16 + 2);
        }
    }

    #[test]
    fn processors_have_ids_and_one_bsp() {
        let (_, table) = tables(4);
        let cpus: Vec<_> = entries(&table)
            .into_iter()
            .filter(|e| e[0] == ENTRY_PROCESSOR)
            .collect();
        assert_eq!(cpus.len(), 4);
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(cpu[1] as usize, i);
            assert_eq!(cpu[2], 0x14);
            let expected = if i == 0 {
                CPU_ENABLED | CPU_BSP
            } else {
                CPU_ENABLED
            };
            assert_eq!(cpu[3], expected);
            assert_eq!(
                u32::from_le_bytes(cpu[4..8].try_into().unwrap()) >> 8 & 0xf,
                6
            );
        }
    }

    #[test]
    fn bus_ioapic_and_interrupts() {
        let (_, table) = tables(3);
        let all = entries(&table);
        let bus: Vec<_> = all.iter().filter(|e| e[0] == ENTRY_BUS).collect();
        assert_eq!(bus.len(), 1);
        assert_eq!(&bus[0][2..8], b"ISA   ");
        let ioapic: Vec<_> = all.iter().filter(|e| e[0] == ENTRY_IOAPIC).collect();
        assert_eq!(ioapic.len(), 1);
        assert_eq!(&ioapic[0][1..4], &[3, 0x11, 1]);
        assert_eq!(
            u32::from_le_bytes(ioapic[0][4..8].try_into().unwrap()) as u64,
            IOAPIC_START
        );
        let io: Vec<_> = all.iter().filter(|e| e[0] == ENTRY_IO_INTERRUPT).collect();
        assert_eq!(io.len(), 16);
        for (irq, e) in io.iter().enumerate() {
            assert_eq!(e[1], INT_TYPE_INT);
            assert_eq!((e[5] as usize, e[6], e[7] as usize), (irq, 3, irq));
        }
        let local: Vec<_> = all
            .iter()
            .filter(|e| e[0] == ENTRY_LOCAL_INTERRUPT)
            .collect();
        assert_eq!(local.len(), 2);
        assert_eq!(
            (local[0][1], local[0][6], local[0][7]),
            (INT_TYPE_EXTINT, 0xff, 0)
        );
        assert_eq!(
            (local[1][1], local[1][6], local[1][7]),
            (INT_TYPE_NMI, 0xff, 1)
        );
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        let m = mem(0x20_0000);
        assert!(matches!(setup_mptable(&m, 0), Err(MpTableError::NoCpus)));
        assert!(matches!(
            setup_mptable(&m, 255),
            Err(MpTableError::TooManyCpus(255))
        ));
        assert!(matches!(
            setup_mptable(&m, 1000),
            Err(MpTableError::TooManyCpus(1000))
        ));
    }

    #[test]
    fn rejects_memory_without_the_ebda() {
        let m = mem(0x9_0000);
        let err = setup_mptable(&m, 1).unwrap_err();
        assert!(matches!(err, MpTableError::Write { .. }), "{err:?}");
        // Memory that ends inside the table fails too.
        let m = mem(EBDA_START as usize + 0x100);
        assert!(matches!(
            setup_mptable(&m, 8),
            Err(MpTableError::Write { .. })
        ));
    }
}
