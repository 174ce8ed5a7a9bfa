//! The PCI configuration space of a virtio-pci device: IDs, class, BAR 0 and the capability
//! list (virtio 1.2 §4.1.2 and §4.1.4).
//!
//! Each virtio structure is located by a vendor-specific capability (ID 0x09):
//!
//! | byte | field |
//! |-----:|-------|
//! | 0 | `cap_vndr` = 0x09 |
//! | 1 | `cap_next` |
//! | 2 | `cap_len` (16, or 20 for the notification capability) |
//! | 3 | `cfg_type` (1 common, 2 notify, 3 ISR, 4 device, 5 PCI cfg access) |
//! | 4 | `bar` |
//! | 5 | `id` (0: one structure of each type) |
//! | 6..8 | padding |
//! | 8 | `le32 offset` within the BAR |
//! | 12 | `le32 length` |
//! | 16 | `le32 notify_off_multiplier` (notification capability only) |
//!
//! The capabilities are added in the order common, notify, ISR, device, MSI-X, all read-only
//! to the guest except the MSI-X Message Control enable and function-mask bits. The PCI
//! configuration access capability (type 5) is not provided.

use crate::pci::config::{BarInfo, BarKind, PciClassCode, PciConfiguration};
use crate::pci::msix::MsixCap;

use super::{
    VirtioPciError, COMMON_CFG_LEN, COMMON_CFG_OFFSET, DEVICE_CFG_LEN, DEVICE_CFG_OFFSET,
    ISR_CFG_LEN, ISR_CFG_OFFSET, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, NOTIFY_OFFSET,
    NOTIFY_OFF_MULTIPLIER, VIRTIO_PCI_BAR, VIRTIO_PCI_BAR_SIZE,
};

/// Capability ID of vendor-specific capabilities.
pub const PCI_CAP_ID_VNDR: u8 = 0x09;
/// `cfg_type` of the common configuration structure.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// `cfg_type` of the notification structure.
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type` of the ISR status structure.
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// `cfg_type` of the device-specific configuration structure.
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// Length of `struct virtio_pci_cap`.
pub const VIRTIO_PCI_CAP_LEN: usize = 16;
/// Length of `struct virtio_pci_notify_cap`.
pub const VIRTIO_PCI_NOTIFY_CAP_LEN: usize = 20;

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Device ID of a modern device is this base plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Revision ID of modern (non-transitional) devices.
pub const VIRTIO_PCI_REVISION: u8 = 1;
/// Highest virtio device type that fits the modern device ID range 0x1040..=0x107f.
pub const MAX_DEVICE_TYPE: u32 = 0x3f;
/// Interrupt pin INTA#.
const INTERRUPT_PIN_INTA: u8 = 1;

/// Offsets in configuration space of the capabilities this module adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapOffsets {
    /// Common configuration capability.
    pub common: u8,
    /// Notification capability.
    pub notify: u8,
    /// ISR capability.
    pub isr: u8,
    /// Device configuration capability.
    pub device: u8,
    /// MSI-X capability.
    pub msix: u8,
}

/// The bytes of a `virtio_pci_cap` (next pointer left 0, filled in by the config space).
fn virtio_cap(cfg_type: u8, offset: u64, length: u64) -> [u8; VIRTIO_PCI_CAP_LEN] {
    let mut b = [0u8; VIRTIO_PCI_CAP_LEN];
    b[0] = PCI_CAP_ID_VNDR;
    // `cap_len` fits: 16 bytes.
    b[2] = VIRTIO_PCI_CAP_LEN as u8;
    b[3] = cfg_type;
    b[4] = VIRTIO_PCI_BAR as u8;
    // Offsets and lengths are compile-time layout constants below 4 GiB.
    b[8..12].copy_from_slice(&(offset as u32).to_le_bytes());
    b[12..16].copy_from_slice(&(length as u32).to_le_bytes());
    b
}

/// The bytes of the `virtio_pci_notify_cap` covering `num_queues` notification addresses.
fn notify_cap(num_queues: usize) -> [u8; VIRTIO_PCI_NOTIFY_CAP_LEN] {
    let length = num_queues as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
    let mut b = [0u8; VIRTIO_PCI_NOTIFY_CAP_LEN];
    b[..VIRTIO_PCI_CAP_LEN].copy_from_slice(&virtio_cap(
        VIRTIO_PCI_CAP_NOTIFY_CFG,
        NOTIFY_OFFSET,
        length,
    ));
    b[2] = VIRTIO_PCI_NOTIFY_CAP_LEN as u8;
    b[16..20].copy_from_slice(&NOTIFY_OFF_MULTIPLIER.to_le_bytes());
    b
}

/// The class code announced for a virtio device type.
pub fn class_code(device_type: u32) -> PciClassCode {
    let (class, subclass) = match device_type {
        // Block: mass storage controller, "other".
        2 => (0x01, 0x80),
        _ => (0xff, 0x00),
    };
    PciClassCode {
        class,
        subclass,
        prog_if: 0,
    }
}

/// Builds the configuration space of a device of type `device_type` with `num_queues`
/// queues, BAR 0 at address 0, the MSI-X capability `msix` and INTA# when `intx` is set.
pub(crate) fn build_config(
    device_type: u32,
    num_queues: usize,
    msix: &MsixCap,
    intx: bool,
) -> Result<(PciConfiguration, CapOffsets), VirtioPciError> {
    let id_offset = u16::try_from(device_type)
        .ok()
        .filter(|&t| (1..=MAX_DEVICE_TYPE).contains(&u32::from(t)))
        .ok_or(VirtioPciError::DeviceType(device_type))?;
    let device_id = VIRTIO_PCI_DEVICE_ID_BASE + id_offset;
    let mut config =
        PciConfiguration::new(VIRTIO_PCI_VENDOR_ID, device_id, class_code(device_type));
    config.set_revision(VIRTIO_PCI_REVISION);
    config.set_subsystem(VIRTIO_PCI_VENDOR_ID, device_id);
    if intx {
        config
            .set_interrupt_pin(INTERRUPT_PIN_INTA)
            .map_err(VirtioPciError::Config)?;
    }
    config
        .add_bar(BarInfo {
            index: VIRTIO_PCI_BAR,
            addr: 0,
            size: VIRTIO_PCI_BAR_SIZE,
            kind: BarKind::Memory64,
            prefetchable: false,
        })
        .map_err(VirtioPciError::Config)?;
    let mut add = |bytes: &[u8]| config.add_capability(bytes).map_err(VirtioPciError::Config);
    let common = add(&virtio_cap(
        VIRTIO_PCI_CAP_COMMON_CFG,
        COMMON_CFG_OFFSET,
        COMMON_CFG_LEN,
    ))?;
    let notify = add(&notify_cap(num_queues))?;
    let isr = add(&virtio_cap(
        VIRTIO_PCI_CAP_ISR_CFG,
        ISR_CFG_OFFSET,
        ISR_CFG_LEN,
    ))?;
    let device = add(&virtio_cap(
        VIRTIO_PCI_CAP_DEVICE_CFG,
        DEVICE_CFG_OFFSET,
        DEVICE_CFG_LEN,
    ))?;
    let msix = msix.add_to(&mut config).map_err(VirtioPciError::Msix)?;
    Ok((
        config,
        CapOffsets {
            common,
            notify,
            isr,
            device,
            msix,
        },
    ))
}

/// The MSI-X capability for `num_vectors` vectors with the table and PBA in BAR 0.
pub(crate) fn msix_cap(num_vectors: u16) -> Result<MsixCap, VirtioPciError> {
    // Layout constants well below 4 GiB.
    MsixCap::new(
        num_vectors,
        VIRTIO_PCI_BAR as u8,
        MSIX_TABLE_OFFSET as u32,
        VIRTIO_PCI_BAR as u8,
        MSIX_PBA_OFFSET as u32,
    )
    .map_err(VirtioPciError::Msix)
}
