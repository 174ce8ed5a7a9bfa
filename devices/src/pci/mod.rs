//! PCI: configuration space, the host bridge, config access (0xCF8/0xCFC and ECAM), BARs and MSI-X.
//!
//! Device models implement [`PciDevice`] around a [`PciConfiguration`] (and, for MSI-X, an
//! [`MsixCap`] and [`MsixConfig`]), and are plugged into a [`PciSegment`]. The guest reaches
//! configuration space through [`PciConfigIo`] (ports 0xCF8..=0xCFF) or [`PciConfigMmio`]
//! (ECAM, bus 0), and each BAR through a [`PciBarBusDevice`] the VMM puts on the MMIO or port
//! bus at an address from a [`BarAllocator`]. BAR moves the guest makes reach the VMM's
//! [`BarMapper`] while the configuration write is handled.

pub mod bar_alloc;
pub mod config;
pub mod config_io;
pub mod config_mmio;
pub mod device;
pub mod msix;
pub mod root;

pub use bar_alloc::BarAllocator;
pub use config::{BarInfo, BarKind, BarReprogram, ConfigError, PciClassCode, PciConfiguration};
pub use config_io::PciConfigIo;
pub use config_mmio::{PciConfigMmio, PCI_MMIO_CONFIG_SIZE};
pub use device::{PciBarBusDevice, PciDevice};
pub use msix::{MsiInterrupt, MsiMessage, MsixCap, MsixConfig, MsixError, MsixNotifier};
pub use root::{BarMapper, PciError, PciRoot, PciSegment};

#[cfg(test)]
mod tests;
