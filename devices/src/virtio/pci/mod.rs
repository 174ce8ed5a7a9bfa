//! The virtio-pci transport, modern interface only (virtio 1.2 §4.1; no legacy I/O BAR).
//!
//! [`VirtioPciDevice`] wraps a [`VirtioDevice`] into a [`PciDevice`]: vendor 0x1af4, device ID
//! 0x1040 + device type, revision 1, one 64-bit non-prefetchable memory BAR 0 of
//! [`VIRTIO_PCI_BAR_SIZE`] holding every structure, and a capability list (one vendor-specific
//! capability per structure, see [`caps`], plus MSI-X with `num_queues + 1` vectors).
//!
//! Layout of BAR 0:
//!
//! | offset | size | contents |
//! |-------:|-----:|----------|
//! | 0x0_0000 | 0x38 (0x1000 window) | common configuration (see the `common_cfg` module) |
//! | 0x0_1000 | 1 (0x1000 window) | ISR status: a 1-byte read returns and clears it |
//! | 0x0_2000 | 0x1000 | device-specific configuration, forwarded to the device |
//! | 0x0_3000 | 4 per queue | notification: queue `q` at `0x3000 + 4 * q` (`notify_off_multiplier` 4, `queue_notify_off` = `q`) |
//! | 0x4_0000 | 16 per vector | MSI-X table |
//! | 0x6_0000 | 8 per 64 vectors | MSI-X Pending Bit Array |
//!
//! Everything else in the BAR reads as zero and ignores writes.
//!
//! Device status (virtio 1.2 §2.1, §3.1):
//! - writing 0 resets: `VirtioDevice::reset`, every queue register back to its default, every
//!   vector to `NO_VECTOR`, ISR to 0, kick eventfds drained;
//! - otherwise the status only moves forward: a write that clears a bit the driver set is
//!   ignored (`DEVICE_NEEDS_RESET` is device-owned and ignored in writes);
//! - `FEATURES_OK` is kept only if the driver accepted `VERSION_1` and nothing the device did
//!   not offer; the device then gets `ack_features`. Otherwise the bit reads back clear;
//! - `DRIVER_OK` without `FEATURES_OK` (or after `FAILED`) is ignored. Otherwise the device is
//!   activated with queues `0..n`, which must be exactly the enabled queues, each a non-zero
//!   power-of-two size within its maximum and with rings inside guest memory. If that or the
//!   device's `activate` fails, the failure is logged, `DEVICE_NEEDS_RESET` is set and a
//!   configuration-change notification is sent; the driver has to reset the device, after
//!   which it works normally again.
//!
//! Queue notifications: [`VirtioPciDevice::notify_eventfds`] lists one kick eventfd per queue
//! with its address in BAR 0, created up front so the VMM can register them as KVM ioeventfds
//! before the guest runs. The device receives duplicates of these fds on every activation, so
//! the registered fds stay valid across reset cycles. A notification that reaches `bar_write`
//! anyway (no ioeventfd registered) writes the same eventfd.
//!
//! Interrupts: see [`interrupt`]; the device's I/O threads never take a lock the vCPUs hold.

pub mod caps;
mod common_cfg;
pub mod interrupt;
pub mod state;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use log::{debug, error, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::pci::config::{
    BarInfo, BarReprogram, ConfigError, PciConfiguration, BAR0, COMMAND_INTX_DISABLE,
};
use crate::pci::device::PciDevice;
use crate::pci::msix::{MsiInterrupt, MsixConfig, MsixError, MSIX_MAX_VECTORS};
use crate::virtio::device::{DeviceError, VirtioDevice, VirtioInterrupt};

pub use caps::CapOffsets;
use common_cfg::CommonConfig;
pub use interrupt::{IntxInterrupt, VirtioPciInterrupt, ISR_CONFIG, ISR_QUEUE, NO_VECTOR};

/// Index of the BAR holding every virtio structure.
pub const VIRTIO_PCI_BAR: usize = 0;
/// Size of BAR 0.
pub const VIRTIO_PCI_BAR_SIZE: u64 = 0x8_0000;
/// Offset of the common configuration structure in BAR 0.
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Length of the common configuration structure announced in its capability.
pub const COMMON_CFG_LEN: u64 = 0x38;
/// Offset of the ISR status byte in BAR 0.
pub const ISR_CFG_OFFSET: u64 = 0x1000;
/// Length of the ISR structure announced in its capability.
pub const ISR_CFG_LEN: u64 = 1;
/// Offset of the device-specific configuration in BAR 0.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Length of the device-specific configuration window.
pub const DEVICE_CFG_LEN: u64 = 0x1000;
/// Offset of the notification structure in BAR 0.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// `notify_off_multiplier`: queue `q` is notified at `NOTIFY_OFFSET + q * 4`.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Offset of the MSI-X table in BAR 0.
pub const MSIX_TABLE_OFFSET: u64 = 0x4_0000;
/// Offset of the MSI-X Pending Bit Array in BAR 0.
pub const MSIX_PBA_OFFSET: u64 = 0x6_0000;
/// Most queues a device may have (one MSI-X vector each, plus the configuration vector).
pub const MAX_QUEUES: usize = MSIX_MAX_VECTORS as usize - 1;

/// Device status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = 0x01;
/// Device status: the guest has a driver for the device.
pub const STATUS_DRIVER: u8 = 0x02;
/// Device status: the driver is ready, the device is live.
pub const STATUS_DRIVER_OK: u8 = 0x04;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 0x08;
/// Device status: the device hit an error and needs a reset (set by the device).
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;
/// Device status: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 0x80;

/// Largest queue size the split ring allows (virtio 1.2 §2.7).
pub const MAX_QUEUE_MAX_SIZE: u16 = 32768;

/// Ends of the notification, MSI-X table and PBA windows.
const NOTIFY_END: u64 = MSIX_TABLE_OFFSET;
const MSIX_TABLE_END: u64 = MSIX_PBA_OFFSET;
const MSIX_PBA_END: u64 = VIRTIO_PCI_BAR_SIZE;

/// Errors of the virtio-pci transport.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The virtio device type does not map to a modern PCI device ID (1..=0x3f).
    #[error("virtio device type {0} has no modern PCI device ID")]
    DeviceType(u32),
    /// The device has no queues or more than [`MAX_QUEUES`].
    #[error("virtio device has {0} queues, expected 1..={MAX_QUEUES}")]
    QueueCount(usize),
    /// A queue's maximum size is not a power of two in 1..=32768.
    #[error("queue {queue} has invalid maximum size {size}")]
    QueueMaxSize {
        /// Queue index.
        queue: usize,
        /// Maximum size the device reported.
        size: u16,
    },
    /// A kick eventfd could not be created or duplicated.
    #[error("cannot create or duplicate a queue kick eventfd")]
    EventFd(#[source] std::io::Error),
    /// Building the configuration space failed.
    #[error("cannot build the PCI configuration space")]
    Config(#[source] ConfigError),
    /// Setting up MSI-X failed.
    #[error("cannot set up MSI-X")]
    Msix(#[source] MsixError),
    /// The BAR index does not name a BAR of this device.
    #[error("BAR {0} does not exist")]
    BarIndex(usize),
    /// The BAR cannot be placed at this address (misaligned or unrepresentable).
    #[error("BAR 0 cannot be placed at {0:#x}")]
    BarAddress(u64),
    /// The enabled queues are not queues `0..n` (the first enabled queue after a gap).
    #[error("queue {0} is enabled after a disabled queue")]
    QueueLayout(usize),
    /// A queue's size or ring addresses are not usable.
    #[error("queue {0} has an invalid size or ring address")]
    InvalidQueue(usize),
    /// The device refused activation.
    #[error("device activation failed")]
    Activate(#[source] DeviceError),
}

/// A virtio device behind the modern virtio-pci transport.
pub struct VirtioPciDevice {
    device: Box<dyn VirtioDevice>,
    device_type: u32,
    mem: GuestMemoryMmap,
    config: PciConfiguration,
    caps: CapOffsets,
    msix: MsixConfig,
    common: CommonConfig,
    interrupt: Arc<VirtioPciInterrupt>,
    kicks: Vec<EventFd>,
    activated: bool,
    /// Where each queue stood when quiesced, or where a restored queue starts.
    positions: Vec<crate::virtio::device::QueuePosition>,
}

impl std::fmt::Debug for VirtioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("device_type", &self.device_type)
            .field("status", &self.common.status)
            .field("queues", &self.kicks.len())
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

/// What a BAR 0 offset falls in, with the offset relative to that region.
enum Region {
    Common(u64),
    Isr(u64),
    Device(u64),
    Notify(u64),
    MsixTable(u64),
    MsixPba(u64),
}

/// Locates an access of `len` bytes at `offset`; `None` if it is not inside one region.
fn region(offset: u64, len: usize) -> Option<Region> {
    type MakeRegion = fn(u64) -> Region;
    const REGIONS: [(u64, u64, MakeRegion); 6] = [
        (COMMON_CFG_OFFSET, ISR_CFG_OFFSET, Region::Common),
        (ISR_CFG_OFFSET, DEVICE_CFG_OFFSET, Region::Isr),
        (DEVICE_CFG_OFFSET, NOTIFY_OFFSET, Region::Device),
        (NOTIFY_OFFSET, NOTIFY_END, Region::Notify),
        (MSIX_TABLE_OFFSET, MSIX_TABLE_END, Region::MsixTable),
        (MSIX_PBA_OFFSET, MSIX_PBA_END, Region::MsixPba),
    ];
    let end = offset.checked_add(u64::try_from(len).ok()?)?;
    REGIONS
        .iter()
        .find(|(start, stop, _)| offset >= *start && end <= *stop)
        .map(|(start, _, make)| make(offset - start))
}

/// Checks the queue count and maximum sizes a device reports.
fn check_queues(sizes: &[u16]) -> Result<(), VirtioPciError> {
    if sizes.is_empty() || sizes.len() > MAX_QUEUES {
        return Err(VirtioPciError::QueueCount(sizes.len()));
    }
    match sizes
        .iter()
        .position(|&s| !s.is_power_of_two() || s > MAX_QUEUE_MAX_SIZE)
    {
        Some(queue) => Err(VirtioPciError::QueueMaxSize {
            queue,
            size: sizes[queue],
        }),
        None => Ok(()),
    }
}

impl VirtioPciDevice {
    /// Wraps `device`. `mem` is handed to the device on activation, `msi` delivers the MSI-X
    /// vectors (`num_queues + 1` of them) and `intx`, if any, is the INTA# line used while
    /// MSI-X is disabled. BAR 0 starts at address 0; see [`Self::set_bar_address`].
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        msi: Arc<dyn MsiInterrupt>,
        intx: Option<Arc<dyn IntxInterrupt>>,
    ) -> Result<Self, VirtioPciError> {
        let device_type = device.device_type();
        let sizes = device.queue_max_sizes().to_vec();
        check_queues(&sizes)?;
        let num_queues = sizes.len();
        // `num_queues` <= MAX_QUEUES, so the vector count is at most 2048.
        let num_vectors = (num_queues + 1) as u16;
        let msix_cap = caps::msix_cap(num_vectors)?;
        let (config, cap_offsets) =
            caps::build_config(device_type, num_queues, &msix_cap, intx.is_some())?;
        let msix = MsixConfig::new(num_vectors, msi).map_err(VirtioPciError::Msix)?;
        let interrupt = Arc::new(VirtioPciInterrupt::new(msix.notifier(), num_queues, intx));
        let offered = device.features() | (1u64 << VIRTIO_F_VERSION_1);
        let common = CommonConfig::new(offered, &sizes, num_vectors, interrupt.clone());
        let kicks = (0..num_queues)
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(VirtioPciError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            device_type,
            mem,
            config,
            caps: cap_offsets,
            msix,
            common,
            interrupt,
            kicks,
            activated: false,
            positions: Vec::new(),
        })
    }

    /// The virtio device type (virtio 1.2 §5).
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// The wrapped device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The wrapped device, mutably (e.g. for the VMM to change its configuration; follow with
    /// a configuration-change notification through [`Self::interrupt`]).
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// The interrupt sink the device receives on activation.
    pub fn interrupt(&self) -> Arc<VirtioPciInterrupt> {
        self.interrupt.clone()
    }

    /// Where the capabilities sit in configuration space.
    pub fn cap_offsets(&self) -> CapOffsets {
        self.caps
    }

    /// The `device_status` register, as the driver reads it.
    pub fn status(&self) -> u8 {
        self.common.status | self.interrupt.needs_reset_status()
    }

    /// Whether the device is activated (between a successful `DRIVER_OK` and a reset).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The kick eventfd of each queue with its notification address relative to BAR 0, in
    /// queue order. Register them as ioeventfds at BAR 0's address plus the offset (any access
    /// width); they are never replaced.
    pub fn notify_eventfds(&self) -> Vec<(u64, &EventFd)> {
        (0u64..)
            .zip(&self.kicks)
            .map(|(q, fd)| (NOTIFY_OFFSET + q * u64::from(NOTIFY_OFF_MULTIPLIER), fd))
            .collect()
    }

    /// Sets the Interrupt Line register (the IOAPIC input INTA# is wired to), as firmware would.
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.config.set_interrupt_line(line);
    }

    /// Places BAR `bar` (only 0 exists) at `addr`, as firmware would before boot; `bars()`
    /// reports the new address. The address must be aligned to [`VIRTIO_PCI_BAR_SIZE`].
    pub fn set_bar_address(&mut self, bar: usize, addr: u64) -> Result<(), VirtioPciError> {
        if bar != VIRTIO_PCI_BAR {
            return Err(VirtioPciError::BarIndex(bar));
        }
        if !addr.is_multiple_of(VIRTIO_PCI_BAR_SIZE) || addr > u64::MAX - VIRTIO_PCI_BAR_SIZE {
            return Err(VirtioPciError::BarAddress(addr));
        }
        // Truncations split the address into its two dwords.
        let reg = BAR0 as u32;
        self.config.write_config(reg, &(addr as u32).to_le_bytes());
        self.config
            .write_config(reg + 4, &((addr >> 32) as u32).to_le_bytes());
        // A high dword of all-ones looks like a sizing write and is not taken as an address.
        match self.config.bars().first() {
            Some(b) if b.addr == addr => Ok(()),
            _ => Err(VirtioPciError::BarAddress(addr)),
        }
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.common.status;
        let driver_bits = old & !STATUS_DEVICE_NEEDS_RESET;
        let requested = value & !STATUS_DEVICE_NEEDS_RESET;
        if requested & driver_bits != driver_bits {
            warn!("virtio-pci: status write {value:#x} would clear bits of {old:#x}, ignored");
            return;
        }
        let added = requested & !driver_bits;
        let mut status = old | (added & (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FAILED));
        if added & STATUS_FEATURES_OK != 0 && self.negotiate() {
            status |= STATUS_FEATURES_OK;
        }
        if added & STATUS_DRIVER_OK != 0 {
            if status & STATUS_FEATURES_OK == 0 || status & STATUS_FAILED != 0 {
                warn!("virtio-pci: DRIVER_OK without FEATURES_OK or after FAILED, ignored");
            } else {
                status |= STATUS_DRIVER_OK;
                self.common.status = status;
                if let Err(e) = self.activate() {
                    error!(
                        "virtio-pci: activating device type {} failed: {e} ({:?})",
                        self.device_type,
                        std::error::Error::source(&e)
                    );
                    status |= STATUS_DEVICE_NEEDS_RESET;
                    self.common.status = status;
                    if let Err(e) = self.interrupt.trigger_config() {
                        warn!("virtio-pci: cannot signal DEVICE_NEEDS_RESET: {e}");
                    }
                }
            }
        }
        self.common.status = status;
    }

    /// Checks the driver's features; passes them to the device if acceptable.
    fn negotiate(&mut self) -> bool {
        let features = self.common.driver_features;
        let offered = self.common.offered_features;
        if features & (1u64 << VIRTIO_F_VERSION_1) == 0 {
            warn!("virtio-pci: driver did not accept VERSION_1, FEATURES_OK refused");
            return false;
        }
        if features & !offered != 0 {
            warn!(
                "virtio-pci: driver accepted features {:#x} that were not offered, FEATURES_OK refused",
                features & !offered
            );
            return false;
        }
        self.device.ack_features(features);
        true
    }

    fn activate(&mut self) -> Result<(), VirtioPciError> {
        let count = self.common.enabled_queue_count()?;
        let mut queues = Vec::with_capacity(count);
        for (i, kick) in self.kicks.iter().enumerate().take(count) {
            let mut queue = self.common.build_queue(i, &self.mem)?;
            if let Some(p) = self.positions.get(i) {
                queue.set_next_avail(p.next_avail);
                queue.set_next_used(p.next_used);
            }
            queues.push((queue, kick.try_clone().map_err(VirtioPciError::EventFd)?));
        }
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        self.device
            .activate(self.mem.clone(), queues, interrupt)
            .map_err(VirtioPciError::Activate)?;
        self.activated = true;
        debug!(
            "virtio-pci: device type {} activated with {count} queue(s)",
            self.device_type
        );
        Ok(())
    }

    fn reset(&mut self) {
        if let Err(e) = self.device.reset() {
            error!(
                "virtio-pci: resetting device type {} failed: {e}",
                self.device_type
            );
        }
        self.activated = false;
        self.common.reset();
        self.interrupt.reset();
        for kick in &self.kicks {
            // Drops a stale kick; EAGAIN (nothing pending) is the normal case.
            let _ = kick.read();
        }
    }

    fn notify(&self, offset: u64, len: usize) {
        let multiplier = u64::from(NOTIFY_OFF_MULTIPLIER);
        if !offset.is_multiple_of(multiplier) || !matches!(len, 1 | 2 | 4) {
            debug!("virtio-pci: notification of {len} bytes at {offset:#x} ignored");
            return;
        }
        let kick = usize::try_from(offset / multiplier)
            .ok()
            .and_then(|q| self.kicks.get(q));
        match kick {
            Some(fd) => {
                if let Err(e) = fd.write(1) {
                    warn!("virtio-pci: cannot signal queue kick eventfd: {e}");
                }
            }
            None => debug!("virtio-pci: notification for a missing queue at {offset:#x}"),
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&mut self, offset: u32, data: &mut [u8]) {
        self.config.read_config(offset, data);
    }

    fn config_write(&mut self, offset: u32, data: &[u8]) -> Option<BarReprogram> {
        let reprogram = self.config.write_config(offset, data);
        if let Err(e) = self.msix.sync_from_config(&self.config, self.caps.msix) {
            warn!("virtio-pci: MSI-X control update failed: {e}");
        }
        self.interrupt
            .set_intx_disabled(self.config.command() & COMMAND_INTX_DISABLE != 0);
        reprogram
    }

    fn bars(&self) -> Vec<BarInfo> {
        self.config.bars()
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != VIRTIO_PCI_BAR {
            return;
        }
        match region(offset, data.len()) {
            Some(Region::Common(off)) => self.common.read(off, data),
            Some(Region::Isr(0)) if data.len() == 1 => data[0] = self.interrupt.take_isr(),
            Some(Region::Device(off)) if matches!(data.len(), 1 | 2 | 4 | 8) => {
                self.device.read_config(off, data)
            }
            Some(Region::MsixTable(off)) => self.msix.read_table(off, data),
            Some(Region::MsixPba(off)) => self.msix.read_pba(off, data),
            _ => debug!(
                "virtio-pci: BAR read of {} bytes at {offset:#x} reads 0",
                data.len()
            ),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != VIRTIO_PCI_BAR {
            return;
        }
        match region(offset, data.len()) {
            Some(Region::Common(off)) => {
                if let Some(status) = self.common.write(off, data) {
                    self.write_status(status);
                }
            }
            Some(Region::Device(off)) if matches!(data.len(), 1 | 2 | 4 | 8) => {
                self.device.write_config(off, data)
            }
            Some(Region::Notify(off)) => self.notify(off, data.len()),
            Some(Region::MsixTable(off)) => {
                if let Err(e) = self.msix.write_table(off, data) {
                    warn!("virtio-pci: MSI-X table write failed: {e}");
                }
            }
            _ => debug!(
                "virtio-pci: BAR write of {} bytes at {offset:#x} ignored",
                data.len()
            ),
        }
    }
}
