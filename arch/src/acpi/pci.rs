//! ACPI description of Keel's PCI host bridge: the MCFG table announcing the ECAM window, and
//! the DSDT devices for the PCI root bridge (`\_SB.PCI0`, PNP0A08) with its bus, I/O and MMIO
//! windows, and a motherboard-resources device (PNP0C02) reserving the ECAM range.

use super::aml::{self, resource, AmlError};
use super::sdt::Sdt;
use crate::layout::{pci_intx_gsi, ports, PciWindows, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_LAST_BUS};

/// MCFG revision (PCI Firmware Specification 3.x).
const MCFG_REVISION: u8 = 1;

/// MCFG: one allocation for segment 0, buses 0..=PCI_LAST_BUS, at [`PCI_ECAM_START`].
pub fn mcfg() -> Vec<u8> {
    let mut t = Sdt::new(*b"MCFG", MCFG_REVISION);
    t.append(&[0; 8]); // reserved
    t.append_u64(PCI_ECAM_START);
    t.append(&0u16.to_le_bytes()); // PCI segment group
    t.append(&[0, PCI_LAST_BUS]); // start and end bus
    t.append(&[0; 4]); // reserved
    t.finish()
}

/// `_PRT`: INTA# of the device in each slot 1..=31 goes straight to IOAPIC input
/// [`pci_intx_gsi`] (no link devices). Keel's functions use INTA# only.
fn routing_table() -> Result<Vec<u8>, AmlError> {
    let entries = (1u8..32)
        .map(|slot| {
            aml::package(&[
                aml::integer((u64::from(slot) << 16) | 0xffff),
                aml::integer(0), // INTA#
                aml::integer(0), // no link device: the next field is a GSI
                aml::integer(u64::from(pci_intx_gsi(slot))),
            ])
        })
        .collect::<Result<Vec<_>, _>>()?;
    aml::package(&entries)
}

/// `\_SB.PCI0` and `\_SB.MRES`, to be placed in the DSDT's `\_SB` scope body.
pub fn root_bridge_devices(windows: &PciWindows) -> Result<Vec<Vec<u8>>, AmlError> {
    let (mmio32_start, mmio32_size) = windows.mmio32;
    let mmio32_end = mmio32_start + mmio32_size - 1;
    let mut crs = vec![
        resource::word_bus_number(0, u16::from(PCI_LAST_BUS)),
        resource::io(
            ports::PCI_CONFIG,
            ports::PCI_CONFIG,
            1,
            ports::PCI_CONFIG_LEN as u8,
        ),
        resource::word_io(0x0000, ports::PCI_CONFIG - 1),
        resource::word_io(0x0d00, 0xffff),
        resource::dword_memory(mmio32_start as u32, mmio32_end as u32, false),
    ];
    if let Some((start, size)) = windows.mmio64 {
        crs.push(resource::qword_memory(start, start + size - 1, false));
    }
    let pci0 = aml::device(
        "PCI0",
        &[
            aml::name("_HID", &aml::eisa_id("PNP0A08")?)?,
            aml::name("_CID", &aml::eisa_id("PNP0A03")?)?,
            aml::name("_ADR", &aml::integer(0))?,
            aml::name("_SEG", &aml::integer(0))?,
            aml::name("_BBN", &aml::integer(0))?,
            aml::name("_UID", &aml::integer(0))?,
            aml::name("_CRS", &aml::resource_template(&crs)?)?,
            aml::name("_PRT", &routing_table()?)?,
        ],
    )?;
    let ecam = resource::memory32_fixed(PCI_ECAM_START as u32, PCI_ECAM_SIZE as u32);
    let mres = aml::device(
        "MRES",
        &[
            aml::name("_HID", &aml::eisa_id("PNP0C02")?)?,
            aml::name("_UID", &aml::integer(1))?,
            aml::name("_CRS", &aml::resource_template(&[ecam])?)?,
        ],
    )?;
    Ok(vec![pci0, mres])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::sdt::checksum;

    #[test]
    fn mcfg_announces_the_ecam_window_for_bus_0() {
        let t = mcfg();
        assert_eq!(&t[..4], b"MCFG");
        assert_eq!(t.len(), 36 + 8 + 16);
        assert_eq!(
            u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
            t.len()
        );
        assert_eq!(checksum(&t), 0);
        assert_eq!(
            u64::from_le_bytes(t[44..52].try_into().unwrap()),
            PCI_ECAM_START
        );
        assert_eq!(&t[52..56], &[0, 0, 0, PCI_LAST_BUS]);
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn root_bridge_has_ids_and_windows() {
        let mmio32 = (
            crate::layout::PCI_MMIO32_START,
            crate::layout::PCI_MMIO32_SIZE,
        );
        let devs = root_bridge_devices(&PciWindows {
            mmio32,
            mmio64: Some((0x40_0000_0000, 1 << 30)),
        })
        .unwrap();
        let pci0 = &devs[0];
        assert!(contains(pci0, b"PCI0"));
        assert!(contains(pci0, &aml::eisa_id("PNP0A08").unwrap()));
        assert!(contains(pci0, &aml::eisa_id("PNP0A03").unwrap()));
        assert!(contains(pci0, &resource::word_bus_number(0, 0)));
        assert!(contains(
            pci0,
            &resource::dword_memory(0xc000_0000, 0xdfff_ffff, false)
        ));
        assert!(contains(
            pci0,
            &resource::qword_memory(0x40_0000_0000, 0x40_3fff_ffff, false)
        ));
        assert!(contains(
            &devs[1],
            &resource::memory32_fixed(0xe000_0000, 0x10_0000)
        ));
        assert!(contains(&devs[1], &aml::eisa_id("PNP0C02").unwrap()));
        let without = root_bridge_devices(&PciWindows {
            mmio32,
            mmio64: None,
        })
        .unwrap();
        assert!(without[0].len() < pci0.len());
    }
}
