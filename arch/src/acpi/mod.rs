//! ACPI tables for the guest (ACPI 6.5): RSDP, XSDT and RSDT, FADT with its FACS and DSDT, and
//! the MADT, the MCFG and, for a NUMA guest, the SRAT and SLIT, written into guest memory at
//! [`ACPI_START`].
//!
//! Layout: the RSDP sits at [`ACPI_START`] so a BIOS-area scan finds it; the FACS (64-byte
//! aligned), the DSDT, every table the XSDT lists (16-byte aligned) and finally the XSDT and RSDT
//! follow it, all within [`ACPI_MAX_SIZE`]. To add a table, build it with [`sdt::Sdt`] and
//! append the finished bytes to the list in [`create_acpi_tables`].

pub mod aml;
pub mod fadt;
pub mod madt;
pub mod numa;
pub mod pci;
pub mod sdt;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::layout::ports::ACPI_S5_SLP_TYP;
use crate::layout::{PciWindows, ACPI_MAX_SIZE, ACPI_START};
use aml::AmlError;
pub use numa::{NumaLayout, NumaNode};
use sdt::{checksum, Sdt, OEM_ID};

/// Errors building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The guest has no vCPU.
    #[error("ACPI tables need at least one vCPU")]
    NoCpus,
    /// So many vCPUs that the MADT alone could not fit in the ACPI area.
    #[error("{0} vCPUs do not fit in the ACPI tables")]
    TooManyCpus(u32),
    /// The DSDT's AML could not be encoded.
    #[error("failed to encode the DSDT")]
    Aml(#[source] AmlError),
    /// The NUMA layout has no nodes.
    #[error("the NUMA layout has no nodes")]
    NumaNoNodes,
    /// The NUMA distance matrix has a row count other than the number of nodes.
    #[error("the NUMA distance matrix has {rows} rows, but there are {nodes} nodes")]
    NumaDistanceRows {
        /// Rows given.
        rows: usize,
        /// Nodes in the layout.
        nodes: usize,
    },
    /// A row of the NUMA distance matrix has a length other than the number of nodes.
    #[error(
        "row {row} of the NUMA distance matrix has {len} entries, but there are {nodes} nodes"
    )]
    NumaDistanceRow {
        /// The row (source node).
        row: usize,
        /// Its length.
        len: usize,
        /// Nodes in the layout.
        nodes: usize,
    },
    /// A node's distance to itself is not 10.
    #[error("the NUMA distance from node {node} to itself is {distance}; it must be 10")]
    NumaLocalDistance {
        /// The node.
        node: usize,
        /// The distance given.
        distance: u8,
    },
    /// A distance between two different nodes is 10 or less (guests then ignore the SLIT).
    #[error(
        "the NUMA distance from node {from} to node {to} is {distance}; it must be at least 11 \
         (10 means local)"
    )]
    NumaRemoteDistance {
        /// Source node.
        from: usize,
        /// Destination node.
        to: usize,
        /// The distance given.
        distance: u8,
    },
    /// An APIC ID appears twice in the NUMA layout.
    #[error(
        "APIC ID {apic_id} is listed twice in the NUMA layout ({})",
        numa_places(*first, *second)
    )]
    NumaDuplicateApicId {
        /// The APIC ID.
        apic_id: u32,
        /// The (lower) node it is first listed in.
        first: usize,
        /// The node of the second listing.
        second: usize,
    },
    /// A NUMA memory range is empty or runs past the end of the 64-bit address space.
    #[error(
        "NUMA node {node} has a memory range of {size:#x} bytes at {start:#x}: it is empty or \
         wraps past the end of the address space"
    )]
    NumaMemory {
        /// The node.
        node: usize,
        /// Range start.
        start: u64,
        /// Range size.
        size: u64,
    },
    /// The tables run past the end of the ACPI area.
    #[error(
        "the ACPI {table} would end at {end:#x}, past the {ACPI_MAX_SIZE:#x}-byte ACPI area at \
         {ACPI_START:#x}"
    )]
    TooLarge {
        /// The table that did not fit.
        table: String,
        /// Where it would have ended.
        end: u64,
    },
    /// Guest memory rejected a write (for example, it does not cover the ACPI area).
    #[error("failed to write the ACPI {table} at {addr:#x} into guest memory")]
    Write {
        /// The table being written.
        table: String,
        /// Its guest address.
        addr: u64,
        /// The cause.
        #[source]
        source: GuestMemoryError,
    },
}

/// Where a duplicate APIC ID was listed, for [`AcpiError::NumaDuplicateApicId`].
fn numa_places(first: usize, second: usize) -> String {
    if first == second {
        format!("both times in node {first}")
    } else {
        format!("nodes {first} and {second}")
    }
}

// Every table lives below 1 MiB, so the 32-bit pointers (RSDT, FADT) can name all of them.
const _: () = assert!(ACPI_START + ACPI_MAX_SIZE <= u32::MAX as u64);

const RSDP_SIZE: usize = 36;
const RSDP_V1_SIZE: usize = 20;
const RSDP_REVISION: u8 = 2;
const XSDT_REVISION: u8 = 1;
const RSDT_REVISION: u8 = 1;
/// DSDT revision 2: AML integers are 64 bits.
const DSDT_REVISION: u8 = 2;
const FACS_ALIGN: u64 = 64;
const TABLE_ALIGN: u64 = 16;
/// Size of the largest per-vCPU MADT entry (Processor Local x2APIC).
const MADT_BYTES_PER_CPU: u64 = 16;

/// The Root System Description Pointer pointing at the RSDT and the XSDT.
fn rsdp(rsdt_addr: u32, xsdt_addr: u64) -> [u8; RSDP_SIZE] {
    let mut r = [0u8; RSDP_SIZE];
    r[0..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(&OEM_ID);
    r[15] = RSDP_REVISION;
    r[16..20].copy_from_slice(&rsdt_addr.to_le_bytes());
    r[20..24].copy_from_slice(&(RSDP_SIZE as u32).to_le_bytes());
    r[24..32].copy_from_slice(&xsdt_addr.to_le_bytes());
    r[8] = checksum(&r[..RSDP_V1_SIZE]);
    r[32] = checksum(&r);
    r
}

/// The DSDT: `\_S5` (soft-off sleep type for PM1a_CNT.SLP_TYP) and the `\_SB` scope with the
/// PCI root bridge.
fn dsdt(pci_windows: &PciWindows) -> Result<Vec<u8>, AmlError> {
    let slp_typ = aml::byte(ACPI_S5_SLP_TYP);
    let s5 = aml::package(&[slp_typ.clone(), slp_typ, aml::byte(0), aml::byte(0)])?;
    let mut t = Sdt::new(*b"DSDT", DSDT_REVISION);
    t.append(&aml::name("\\_S5", &s5)?);
    let sb = pci::root_bridge_devices(pci_windows)?;
    t.append(&aml::scope("\\_SB", &sb)?);
    Ok(t.finish())
}

/// An SDT listing `entries`: the XSDT with 64-bit pointers or the RSDT with 32-bit ones.
fn root_table(xsdt: bool, entries: &[u64]) -> Vec<u8> {
    let mut t = if xsdt {
        Sdt::new(*b"XSDT", XSDT_REVISION)
    } else {
        Sdt::new(*b"RSDT", RSDT_REVISION)
    };
    for &addr in entries {
        if xsdt {
            t.append_u64(addr);
        } else {
            // Lossless: every table is below 1 MiB (see the assertion above).
            t.append_u32(addr as u32);
        }
    }
    t.finish()
}

/// Places structures one after another in the ACPI area of guest memory.
struct Placer<'a, M> {
    mem: &'a M,
    next: u64,
}

impl<M: GuestMemoryBackend> Placer<'_, M> {
    /// Writes `bytes` at the next `align`-aligned address and returns that address.
    fn place(&mut self, table: &str, bytes: &[u8], align: u64) -> Result<u64, AcpiError> {
        let addr = self.next.next_multiple_of(align);
        let end = addr + bytes.len() as u64;
        if end > ACPI_START + ACPI_MAX_SIZE {
            return Err(AcpiError::TooLarge {
                table: table.to_string(),
                end,
            });
        }
        self.write(table, bytes, addr)?;
        self.next = end;
        Ok(addr)
    }

    fn write(&self, table: &str, bytes: &[u8], addr: u64) -> Result<(), AcpiError> {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|source| AcpiError::Write {
                table: table.to_string(),
                addr,
                source,
            })
    }
}

/// The signature of a finished SDT, for messages.
fn signature(table: &[u8]) -> String {
    String::from_utf8_lossy(table.get(..4).unwrap_or_default()).into_owned()
}

/// Writes the ACPI tables for `num_cpus` vCPUs (APIC IDs `0..num_cpus`) and, with `numa`,
/// the SRAT and SLIT describing that layout, and returns the RSDP's address ([`ACPI_START`]),
/// to hand to the kernel in `boot_params.acpi_rsdp_addr` or PVH `rsdp_paddr`.
///
/// The NUMA layout is checked with [`NumaLayout::validate`] before anything is written. All
/// tables must fit in the [`ACPI_MAX_SIZE`] bytes at [`ACPI_START`] (below 1 MiB); a layout
/// with very many nodes, vCPUs or memory ranges can fail with [`AcpiError::TooLarge`].
pub fn create_acpi_tables<M: GuestMemoryBackend>(
    mem: &M,
    num_cpus: u32,
    pci_windows: &PciWindows,
    numa: Option<&NumaLayout>,
) -> Result<GuestAddress, AcpiError> {
    if num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    if u64::from(num_cpus) * MADT_BYTES_PER_CPU > ACPI_MAX_SIZE {
        return Err(AcpiError::TooManyCpus(num_cpus));
    }
    if let Some(layout) = numa {
        layout.validate()?;
    }
    let mut placer = Placer {
        mem,
        next: ACPI_START + RSDP_SIZE as u64,
    };
    let facs_addr = placer.place("FACS", &fadt::facs(), FACS_ALIGN)?;
    let dsdt_addr = placer.place(
        "DSDT",
        &dsdt(pci_windows).map_err(AcpiError::Aml)?,
        TABLE_ALIGN,
    )?;

    // Every table the XSDT lists, in order. New tables go here.
    let mut tables = vec![
        fadt::fadt(facs_addr as u32, dsdt_addr as u32),
        madt::madt(num_cpus),
        pci::mcfg(),
    ];
    if let Some(layout) = numa {
        tables.push(numa::srat(layout));
        tables.push(numa::slit(layout));
    }

    let mut entries = Vec::with_capacity(tables.len());
    for table in &tables {
        entries.push(placer.place(&signature(table), table, TABLE_ALIGN)?);
    }
    let xsdt_addr = placer.place("XSDT", &root_table(true, &entries), TABLE_ALIGN)?;
    let rsdt_addr = placer.place("RSDT", &root_table(false, &entries), TABLE_ALIGN)?;
    placer.write("RSDP", &rsdp(rsdt_addr as u32, xsdt_addr), ACPI_START)?;
    log::debug!(
        "ACPI tables for {num_cpus} vCPUs ({} NUMA nodes) at {ACPI_START:#x}..{:#x}, XSDT at \
         {xsdt_addr:#x}",
        numa.map_or(0, |l| l.nodes.len()),
        placer.next
    );
    Ok(GuestAddress(ACPI_START))
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

    fn u32_at(t: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(t[o..o + 4].try_into().unwrap())
    }

    fn u64_at(t: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(t[o..o + 8].try_into().unwrap())
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    /// Reads the SDT at `addr`, checking that it lies in the ACPI area and sums to zero.
    fn table(m: &GuestMemoryMmap<()>, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        let header = read(m, addr, sdt::HEADER_SIZE);
        let len = u32_at(&header, 4) as usize;
        assert!(addr >= ACPI_START && addr + len as u64 <= ACPI_START + ACPI_MAX_SIZE);
        let t = read(m, addr, len);
        assert_eq!(&t[0..4], sig);
        assert_eq!(sum(&t), 0, "{} checksum", signature(&t));
        assert_eq!(&t[10..16], b"KEEL  ");
        t
    }

    /// The windows of a 1 GiB guest with 40 address bits.
    fn test_windows() -> PciWindows {
        PciWindows::for_guest(1 << 30, 40)
    }

    struct Tables {
        rsdp: Vec<u8>,
        xsdt: Vec<u8>,
        rsdt: Vec<u8>,
        fadt: Vec<u8>,
        madt: Vec<u8>,
        dsdt: Vec<u8>,
        facs: Vec<u8>,
        facs_addr: u64,
    }

    fn tables(num_cpus: u32) -> Tables {
        let m = mem(0x20_0000);
        let rsdp_addr = create_acpi_tables(&m, num_cpus, &test_windows(), None).unwrap();
        assert_eq!(rsdp_addr, GuestAddress(ACPI_START));
        let rsdp = read(&m, ACPI_START, RSDP_SIZE);
        let xsdt = table(&m, u64_at(&rsdp, 24), b"XSDT");
        let rsdt = table(&m, u32_at(&rsdp, 16) as u64, b"RSDT");
        let entries: Vec<u64> = xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
        assert_eq!(entries.len(), 3);
        let fadt = table(&m, entries[0], b"FACP");
        let madt = table(&m, entries[1], b"APIC");
        let mcfg = table(&m, entries[2], b"MCFG");
        assert_eq!(mcfg, pci::mcfg());
        let dsdt = table(&m, u32_at(&fadt, 40) as u64, b"DSDT");
        let facs_addr = u32_at(&fadt, 36) as u64;
        let facs = read(&m, facs_addr, 64);
        Tables {
            rsdp,
            xsdt,
            rsdt,
            fadt,
            madt,
            dsdt,
            facs,
            facs_addr,
        }
    }

    #[test]
    fn rsdp_points_at_xsdt_and_rsdt() {
        let t = tables(1);
        assert_eq!(&t.rsdp[0..8], b"RSD PTR ");
        assert_eq!(&t.rsdp[9..15], b"KEEL  ");
        assert_eq!(t.rsdp[15], 2);
        assert_eq!(u32_at(&t.rsdp, 20), 36);
        assert_eq!(sum(&t.rsdp[..20]), 0);
        assert_eq!(sum(&t.rsdp), 0);
        assert_eq!(t.xsdt[8], 1);
        // The RSDT lists the same tables with 32-bit pointers.
        let xsdt: Vec<u64> = t.xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
        let rsdt: Vec<u64> = t.rsdt[36..]
            .chunks(4)
            .map(|c| u32_at(c, 0) as u64)
            .collect();
        assert_eq!(xsdt, rsdt);
        assert!(xsdt.iter().all(|a| a % 16 == 0));
    }

    #[test]
    fn fadt_points_at_facs_and_dsdt() {
        let t = tables(2);
        assert_eq!((t.fadt.len(), t.fadt[8]), (276, 6));
        assert_eq!(u64_at(&t.fadt, 132), t.facs_addr);
        assert_eq!(u64_at(&t.fadt, 140), u32_at(&t.fadt, 40) as u64);
        assert_eq!(t.facs_addr % 64, 0);
        assert_eq!(&t.facs[0..4], b"FACS");
        assert_eq!((u32_at(&t.facs, 4), t.facs[32]), (64, 2));
        assert_eq!(
            (
                u32_at(&t.fadt, 56),
                u32_at(&t.fadt, 64),
                u32_at(&t.fadt, 76)
            ),
            (0x602, 0x606, 0x608)
        );
        assert_eq!(&t.fadt[116..120], &[1, 8, 0, 1]);
        assert_eq!((u64_at(&t.fadt, 120), t.fadt[128]), (0x60c, 1));
    }

    #[test]
    fn dsdt_prt_routes_pci_inta_to_ioapic_inputs() {
        let t = tables(1);
        let body = &t.dsdt[36..];
        let at = body
            .windows(4)
            .position(|w| w == b"_PRT")
            .expect("_PRT in the DSDT");
        // NameOp, then PackageOp with a two-byte PkgLength and 31 entries.
        assert_eq!(body[at - 1], 0x08);
        assert_eq!(body[at + 4], 0x12);
        assert_eq!(body[at + 7], 31);
        // First entry: Package(4) { 0x1ffff, 0, 0, 16 }.
        let first = &body[at + 8..at + 8 + 13];
        let expected = [
            0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00, 0x0a, 16, 0x12,
        ];
        assert_eq!(first, &expected[..]);
        assert_eq!(crate::layout::pci_intx_gsi(1), 16);
        assert_eq!(crate::layout::pci_intx_gsi(9), 16);
        assert_eq!(crate::layout::pci_intx_gsi(31), 22);
    }

    #[test]
    fn dsdt_has_s5_and_sb() {
        let t = tables(1);
        assert_eq!(t.dsdt[8], 2);
        let body = &t.dsdt[36..];
        let (start, size) = test_windows().mmio64.unwrap();
        let window64 = aml::resource::qword_memory(start, start + size - 1, false);
        assert!(
            body.windows(window64.len())
                .any(|w| w == window64.as_slice()),
            "the 64-bit PCI window in PCI0._CRS"
        );
        let at = body
            .windows(4)
            .position(|w| w == b"_S5_")
            .expect("_S5_ in the DSDT");
        assert_eq!(&body[at - 2..at], &[0x08, b'\\']);
        // PackageOp, PkgLength, 4 elements, then SLP_TYPa and SLP_TYPb as byte constants.
        let pkg = &body[at + 4..at + 4 + 7];
        assert_eq!(
            pkg,
            &[
                0x12,
                0x0a,
                0x04,
                0x0a,
                ACPI_S5_SLP_TYP,
                0x0a,
                ACPI_S5_SLP_TYP
            ]
        );
        assert!(body.windows(5).any(|w| w == b"\\_SB_"));
        assert!(
            body.windows(4).any(|w| w == b"PCI0"),
            "PCI root bridge in \\_SB"
        );
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        let t = tables(8);
        let all = madt::tests::entries(&t.madt);
        let ids: Vec<u8> = all
            .iter()
            .filter(|e| e[0] == 0 && u32_at(e, 4) & 1 == 1)
            .map(|e| e[3])
            .collect();
        assert_eq!(ids, (0..8).collect::<Vec<u8>>());
        let ioapic: Vec<_> = all.iter().filter(|e| e[0] == 1).collect();
        assert_eq!(ioapic.len(), 1);
        assert_eq!(ioapic[0][2], 8);
        assert_eq!(u32_at(ioapic[0], 4) as u64, crate::layout::IOAPIC_START);
    }

    #[test]
    fn large_guests_fit() {
        let t = tables(1000);
        let cpus = madt::tests::entries(&t.madt)
            .iter()
            .filter(|e| e[0] == 0 || e[0] == 9)
            .count();
        assert_eq!(cpus, 1000);
    }

    #[test]
    fn errors() {
        let m = mem(0x20_0000);
        assert!(matches!(
            create_acpi_tables(&m, 0, &test_windows(), None),
            Err(AcpiError::NoCpus)
        ));
        assert!(matches!(
            create_acpi_tables(&m, 100_000, &test_windows(), None),
            Err(AcpiError::TooManyCpus(100_000))
        ));
        assert!(matches!(
            create_acpi_tables(&m, u32::MAX, &test_windows(), None),
            Err(AcpiError::TooManyCpus(_))
        ));
        // The most vCPUs the bound allows still fit.
        create_acpi_tables(
            &m,
            (ACPI_MAX_SIZE / MADT_BYTES_PER_CPU) as u32,
            &test_windows(),
            None,
        )
        .unwrap();
        // A table that would run past the ACPI area is refused before anything is written.
        let mut placer = Placer {
            mem: &m,
            next: ACPI_START + ACPI_MAX_SIZE - 0x100,
        };
        assert!(placer.place("SSDT", &[0xaa; 0x80], 16).is_ok());
        let err = placer.place("SSDT", &[0xbb; 0x81], 16).unwrap_err();
        let end = ACPI_START + ACPI_MAX_SIZE + 1;
        assert!(
            matches!(&err, AcpiError::TooLarge { table, end: e } if table == "SSDT" && *e == end),
            "{err:?}"
        );
        assert_eq!(read(&m, ACPI_START + ACPI_MAX_SIZE - 0x80, 1), [0]);
        // Memory that stops below the ACPI area.
        let small = mem(ACPI_START as usize);
        let err = create_acpi_tables(&small, 1, &test_windows(), None).unwrap_err();
        assert!(matches!(err, AcpiError::Write { .. }), "{err:?}");
    }

    /// The XSDT's entries after writing the tables for `num_cpus` vCPUs and `numa`.
    fn xsdt_entries(m: &GuestMemoryMmap<()>) -> Vec<u64> {
        let rsdp = read(m, ACPI_START, RSDP_SIZE);
        let xsdt = table(m, u64_at(&rsdp, 24), b"XSDT");
        let rsdt = table(m, u32_at(&rsdp, 16) as u64, b"RSDT");
        let entries: Vec<u64> = xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
        let rsdt: Vec<u64> = rsdt[36..].chunks(4).map(|c| u32_at(c, 0) as u64).collect();
        assert_eq!(entries, rsdt);
        entries
    }

    #[test]
    fn numa_guests_get_srat_and_slit() {
        let m = mem(0x20_0000);
        let layout = numa::tests::layout(2, 2, 1 << 30);
        create_acpi_tables(&m, 4, &test_windows(), Some(&layout)).unwrap();
        let entries = xsdt_entries(&m);
        assert_eq!(entries.len(), 5);
        table(&m, entries[0], b"FACP");
        table(&m, entries[1], b"APIC");
        table(&m, entries[2], b"MCFG");
        let srat = table(&m, entries[3], b"SRAT");
        let slit = table(&m, entries[4], b"SLIT");
        assert_eq!(srat, numa::srat(&layout));
        assert_eq!(slit, numa::slit(&layout));
        assert_eq!(&slit[numa::SLIT_MATRIX_OFFSET..], &[10, 21, 21, 10]);
        // Every APIC ID the SRAT places is one the MADT enables.
        let t = tables(4);
        let madt_ids: Vec<u32> = madt::tests::entries(&t.madt)
            .iter()
            .filter(|e| e[0] == 0)
            .map(|e| u32::from(e[3]))
            .collect();
        let srat_ids: Vec<u32> = numa::tests::entries(&srat)
            .iter()
            .filter(|e| e[0] == 0)
            .map(|e| u32::from(e[3]))
            .collect();
        assert_eq!(srat_ids, madt_ids);

        let m = mem(0x20_0000);
        let layout = numa::tests::layout(4, 1, 1 << 28);
        create_acpi_tables(&m, 4, &test_windows(), Some(&layout)).unwrap();
        let entries = xsdt_entries(&m);
        assert_eq!(entries.len(), 5);
        let slit = table(&m, entries[4], b"SLIT");
        assert_eq!(u64_at(&slit, 36), 4);
        assert_eq!(slit.len(), numa::SLIT_MATRIX_OFFSET + 16);
        let srat = table(&m, entries[3], b"SRAT");
        assert_eq!(numa::tests::entries(&srat).len(), 8);

        // Without a layout there is neither table.
        let m = mem(0x20_0000);
        create_acpi_tables(&m, 4, &test_windows(), None).unwrap();
        assert_eq!(xsdt_entries(&m).len(), 3);
    }

    #[test]
    fn numa_errors() {
        let m = mem(0x20_0000);
        let mut layout = numa::tests::layout(2, 1, 1 << 30);
        layout.distances[0][1] = 10;
        let err = create_acpi_tables(&m, 2, &test_windows(), Some(&layout)).unwrap_err();
        assert!(
            matches!(err, AcpiError::NumaRemoteDistance { .. }),
            "{err:?}"
        );
        // Nothing was written.
        assert_eq!(read(&m, ACPI_START, 8), [0; 8]);
        let err =
            create_acpi_tables(&m, 2, &test_windows(), Some(&NumaLayout::default())).unwrap_err();
        assert!(matches!(err, AcpiError::NumaNoNodes), "{err:?}");

        // A SLIT too large for the area below 1 MiB: 400 nodes need 160,000 distance bytes.
        let big = NumaLayout {
            nodes: vec![NumaNode::default(); 400],
            distances: (0..400)
                .map(|i| (0..400).map(|j| if i == j { 10 } else { 20 }).collect())
                .collect(),
        };
        let err = create_acpi_tables(&m, 2, &test_windows(), Some(&big)).unwrap_err();
        assert!(
            matches!(&err, AcpiError::TooLarge { table, .. } if table == "SLIT"),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("the ACPI SLIT would end at") && msg.contains("ACPI area at 0xe0000"),
            "{msg}"
        );
        // So many memory ranges that the SRAT does not fit.
        let mut many = numa::tests::layout(2, 1, 1 << 20);
        many.nodes[1].memory = (0..4000u64).map(|i| (i << 21, 1 << 20)).collect();
        let err = create_acpi_tables(&m, 2, &test_windows(), Some(&many)).unwrap_err();
        assert!(
            matches!(&err, AcpiError::TooLarge { table, .. } if table == "SRAT"),
            "{err:?}"
        );
    }
}
