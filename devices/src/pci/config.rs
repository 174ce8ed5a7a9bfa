//! A type 0 PCI configuration space header (256 bytes) with per-byte writable masks.
//!
//! Every register is stored as plain bytes; a guest write only changes the bits set in the
//! writable mask, so read-only registers (IDs, class code, header type, capability pointer,
//! capability bodies by default) ignore writes. BARs are ordinary registers whose writable mask
//! is the complement of `size - 1`: a guest that writes all-ones reads back the size mask with
//! the read-only type bits, exactly as the PCI Local Bus spec (6.2.5.1) describes.
//!
//! A guest write that moves a BAR is reported as a [`BarReprogram`] so the VMM can move its
//! mapping. Sizing writes (a whole-dword write of `0xffff_ffff`) are never reported, and a
//! 64-bit BAR is reported only when its high dword is written (guests write low then high), so
//! half-updated addresses are never reported. Decode enables in the command register are not
//! consulted: the reported address is the one the guest programmed.

use log::debug;

/// Size of the (conventional) configuration space modelled here.
pub const PCI_CONFIG_SPACE_SIZE: usize = 256;
/// Number of BAR registers in a type 0 header.
pub const NUM_BARS: usize = 6;
/// First offset used for capabilities (the end of the type 0 header).
pub const CAPABILITY_LIST_START: usize = 0x40;

/// Vendor ID register.
pub const VENDOR_ID: usize = 0x00;
/// Device ID register.
pub const DEVICE_ID: usize = 0x02;
/// Command register.
pub const COMMAND: usize = 0x04;
/// Status register.
pub const STATUS: usize = 0x06;
/// Revision ID register.
pub const REVISION_ID: usize = 0x08;
/// Programming interface byte of the class code.
pub const PROG_IF: usize = 0x09;
/// Sub-class byte of the class code.
pub const SUBCLASS: usize = 0x0a;
/// Base class byte of the class code.
pub const CLASS_CODE: usize = 0x0b;
/// Cache line size register.
pub const CACHE_LINE_SIZE: usize = 0x0c;
/// Header type register.
pub const HEADER_TYPE: usize = 0x0e;
/// BAR 0; BAR `n` is at `BAR0 + 4 * n`.
pub const BAR0: usize = 0x10;
/// Subsystem vendor ID register.
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
/// Subsystem ID register.
pub const SUBSYSTEM_ID: usize = 0x2e;
/// Capabilities pointer register.
pub const CAPABILITIES_POINTER: usize = 0x34;
/// Interrupt line register.
pub const INTERRUPT_LINE: usize = 0x3c;
/// Interrupt pin register.
pub const INTERRUPT_PIN: usize = 0x3d;

/// Command register: I/O space decode enable.
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
/// Command register: memory space decode enable.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Command register: bus master enable.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: INTx emulation disable.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Writable command bits: I/O, memory, bus master, parity error response, SERR#, INTx disable.
const COMMAND_WRITABLE: u16 = 0x0547;
/// Status register: the capabilities list is present.
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;

const BAR_IO_SPACE: u32 = 0x1;
const BAR_MEM_64: u32 = 0x4;
const BAR_PREFETCHABLE: u32 = 0x8;
const BAR_IO_ADDR_MASK: u32 = !0x3;
const BAR_MEM_ADDR_MASK: u32 = !0xf;

/// Smallest memory BAR the spec allows.
pub const MIN_MEM_BAR_SIZE: u64 = 16;
/// Largest 32-bit memory BAR.
pub const MAX_MEM32_BAR_SIZE: u64 = 1 << 31;
/// Largest 64-bit memory BAR accepted (keeps the high dword's mask non-zero).
pub const MAX_MEM64_BAR_SIZE: u64 = 1 << 48;
/// Smallest I/O BAR the spec allows.
pub const MIN_IO_BAR_SIZE: u64 = 4;
/// Largest I/O BAR the spec allows.
pub const MAX_IO_BAR_SIZE: u64 = 256;

/// Errors from building a configuration space (all are VMM-side programming errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The BAR index is not 0..=5 (or 0..=4 for a 64-bit BAR).
    #[error("BAR index {0} is out of range")]
    BarIndex(usize),
    /// The BAR register (or the high half of a 64-bit BAR) is already used.
    #[error("BAR {0} is already in use")]
    BarInUse(usize),
    /// The size is not a power of two within the limits for its kind.
    #[error("BAR size {size:#x} is invalid for a {kind:?} BAR")]
    BarSize {
        /// Requested size.
        size: u64,
        /// Requested kind.
        kind: BarKind,
    },
    /// The address is not aligned to the size or does not fit the BAR kind.
    #[error("BAR address {addr:#x} is misaligned or out of range for size {size:#x}")]
    BarAddress {
        /// Requested address.
        addr: u64,
        /// Requested size.
        size: u64,
    },
    /// A capability must be 2..=192 bytes (ID and next pointer at least).
    #[error("capability of {0} bytes has an invalid length")]
    CapabilityLength(usize),
    /// The writable mask of a capability is not as long as its data.
    #[error("capability mask of {mask} bytes does not match {data} bytes of data")]
    CapabilityMask {
        /// Data length.
        data: usize,
        /// Mask length.
        mask: usize,
    },
    /// The capability does not fit in the remaining configuration space.
    #[error("no room left for a {0}-byte capability")]
    CapabilitySpace(usize),
    /// The interrupt pin must be 0 (none) or 1..=4 (INTA#..INTD#).
    #[error("interrupt pin {0} is invalid")]
    InterruptPin(u8),
}

/// The address space a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space (port I/O on x86).
    Io,
    /// Memory space, 32-bit address (one BAR register).
    Memory32,
    /// Memory space, 64-bit address (two BAR registers, low then high).
    Memory64,
}

/// One BAR as the VMM should map it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR index 0..=5 (the low register of a 64-bit BAR).
    pub index: usize,
    /// Base address (guest-physical or I/O port).
    pub addr: u64,
    /// Size in bytes, a power of two.
    pub size: u64,
    /// Address space and width.
    pub kind: BarKind,
    /// Prefetchable memory (ignored for I/O BARs).
    pub prefetchable: bool,
}

/// A guest write moved a BAR from `old` to `new`; the VMM should move the mapping of `len`
/// bytes. `new` is guest-controlled and must be validated before mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarReprogram {
    /// BAR index (the low register of a 64-bit BAR).
    pub bar: usize,
    /// Address the BAR was mapped at.
    pub old: u64,
    /// Address the guest programmed.
    pub new: u64,
    /// Size of the BAR in bytes.
    pub len: u64,
    /// Address space of the BAR.
    pub kind: BarKind,
}

/// The three bytes of a class code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciClassCode {
    /// Base class (offset 0x0b).
    pub class: u8,
    /// Sub-class (offset 0x0a).
    pub subclass: u8,
    /// Programming interface (offset 0x09).
    pub prog_if: u8,
}

#[derive(Debug, Clone, Copy)]
struct BarState {
    /// `addr` is the address last reported (mapped), not the live register value.
    info: BarInfo,
    /// Whether the last write to the low / high register was a sizing write.
    sizing: [bool; 2],
}

/// A type 0 configuration space header plus capabilities.
#[derive(Debug, Clone)]
pub struct PciConfiguration {
    regs: [u8; PCI_CONFIG_SPACE_SIZE],
    wmask: [u8; PCI_CONFIG_SPACE_SIZE],
    bars: [Option<BarState>; NUM_BARS],
    last_cap: Option<usize>,
    next_cap: usize,
}

impl PciConfiguration {
    /// Creates a header with the given IDs and class code; everything else is zero, the
    /// command register's standard bits and the interrupt line are writable.
    pub fn new(vendor_id: u16, device_id: u16, class: PciClassCode) -> Self {
        let mut c = Self {
            regs: [0; PCI_CONFIG_SPACE_SIZE],
            wmask: [0; PCI_CONFIG_SPACE_SIZE],
            bars: [None; NUM_BARS],
            last_cap: None,
            next_cap: CAPABILITY_LIST_START,
        };
        c.put(VENDOR_ID, &vendor_id.to_le_bytes());
        c.put(DEVICE_ID, &device_id.to_le_bytes());
        c.put(PROG_IF, &[class.prog_if, class.subclass, class.class]);
        c.wmask[COMMAND..COMMAND + 2].copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        c.wmask[CACHE_LINE_SIZE] = 0xff;
        c.wmask[INTERRUPT_LINE] = 0xff;
        c
    }

    /// Stores raw bytes, ignoring the writable mask. `at + bytes.len()` must be in range.
    fn put(&mut self, at: usize, bytes: &[u8]) {
        if let Some(dst) = self.regs.get_mut(at..at.saturating_add(bytes.len())) {
            dst.copy_from_slice(bytes);
        }
    }

    /// Sets the revision ID.
    pub fn set_revision(&mut self, revision: u8) {
        self.regs[REVISION_ID] = revision;
    }

    /// Sets the subsystem vendor and subsystem IDs.
    pub fn set_subsystem(&mut self, vendor_id: u16, id: u16) {
        self.put(SUBSYSTEM_VENDOR_ID, &vendor_id.to_le_bytes());
        self.put(SUBSYSTEM_ID, &id.to_le_bytes());
    }

    /// Sets the header type byte (bit 7: multi-function). Keel only populates function 0.
    pub fn set_header_type(&mut self, header_type: u8) {
        self.regs[HEADER_TYPE] = header_type;
    }

    /// Sets the interrupt pin: 0 for none, 1..=4 for INTA#..INTD#.
    pub fn set_interrupt_pin(&mut self, pin: u8) -> Result<(), ConfigError> {
        if pin > 4 {
            return Err(ConfigError::InterruptPin(pin));
        }
        self.regs[INTERRUPT_PIN] = pin;
        Ok(())
    }

    /// Sets the interrupt line (the legacy IRQ firmware would have routed INTx to).
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.regs[INTERRUPT_LINE] = line;
    }

    /// The interrupt line register.
    #[cfg(test)]
    pub(crate) fn interrupt_line(&self) -> u8 {
        self.regs[INTERRUPT_LINE]
    }

    /// Sets the command register as firmware would (e.g. enable memory decode at boot).
    pub fn set_command(&mut self, command: u16) {
        self.put(COMMAND, &(command & COMMAND_WRITABLE).to_le_bytes());
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Reads a little-endian `u16` at `offset`; bytes outside the space read as zero.
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read_bytes(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Reads a little-endian `u32` at `offset`; bytes outside the space read as zero.
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read_bytes(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn read_bytes(&self, offset: usize, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i)
                .and_then(|at| self.regs.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Declares BAR `bar.index` at `bar.addr` (the address the VMM mapped it at).
    ///
    /// Sizes must be powers of two: memory 16 B..=2 GiB (32-bit) or ..=256 TiB (64-bit), I/O
    /// 4..=256 B; the address must be aligned to the size and fit the BAR's width. A 64-bit
    /// BAR also takes register `index + 1`.
    pub fn add_bar(&mut self, bar: BarInfo) -> Result<(), ConfigError> {
        let BarInfo {
            index, addr, size, ..
        } = bar;
        let regs = if bar.kind == BarKind::Memory64 { 2 } else { 1 };
        if index.saturating_add(regs) > NUM_BARS {
            return Err(ConfigError::BarIndex(index));
        }
        if let Some(used) = (index..index + regs).find(|&i| self.register_used(i)) {
            return Err(ConfigError::BarInUse(used));
        }
        let (min, max, addr_limit) = match bar.kind {
            BarKind::Io => (MIN_IO_BAR_SIZE, MAX_IO_BAR_SIZE, 1 << 32),
            BarKind::Memory32 => (MIN_MEM_BAR_SIZE, MAX_MEM32_BAR_SIZE, 1 << 32),
            BarKind::Memory64 => (
                MIN_MEM_BAR_SIZE,
                MAX_MEM64_BAR_SIZE,
                u128::from(u64::MAX) + 1,
            ),
        };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(ConfigError::BarSize {
                size,
                kind: bar.kind,
            });
        }
        if !addr.is_multiple_of(size) || u128::from(addr) + u128::from(size) > addr_limit {
            return Err(ConfigError::BarAddress { addr, size });
        }
        let prefetchable = bar.prefetchable && bar.kind != BarKind::Io;
        let mask = !(size - 1);
        let (flags, addr_mask) = match bar.kind {
            BarKind::Io => (BAR_IO_SPACE, BAR_IO_ADDR_MASK),
            BarKind::Memory32 => (0, BAR_MEM_ADDR_MASK),
            BarKind::Memory64 => (BAR_MEM_64, BAR_MEM_ADDR_MASK),
        };
        let flags = flags | if prefetchable { BAR_PREFETCHABLE } else { 0 };
        let lo_at = BAR0 + 4 * index;
        // Truncations keep the low / high dword on purpose.
        self.put(lo_at, &((addr as u32 & addr_mask) | flags).to_le_bytes());
        self.wmask[lo_at..lo_at + 4].copy_from_slice(&(mask as u32 & addr_mask).to_le_bytes());
        if bar.kind == BarKind::Memory64 {
            self.put(lo_at + 4, &((addr >> 32) as u32).to_le_bytes());
            self.wmask[lo_at + 4..lo_at + 8].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
        }
        self.bars[index] = Some(BarState {
            info: BarInfo {
                prefetchable,
                ..bar
            },
            sizing: [false; 2],
        });
        Ok(())
    }

    /// Whether BAR register `i` is the low or high half of a declared BAR.
    fn register_used(&self, i: usize) -> bool {
        self.bars[i].is_some() || self.high_half_of(i).is_some()
    }

    /// The 64-bit BAR whose high dword is register `i`, if any.
    fn high_half_of(&self, i: usize) -> Option<usize> {
        let low = i.checked_sub(1)?;
        matches!(self.bars[low], Some(s) if s.info.kind == BarKind::Memory64).then_some(low)
    }

    /// The declared BARs, with the addresses they are mapped at (the initial address, updated
    /// by every reported [`BarReprogram`]).
    pub fn bars(&self) -> Vec<BarInfo> {
        self.bars.iter().flatten().map(|s| s.info).collect()
    }

    /// The address currently in BAR `index`'s register(s), which may be mid-sizing.
    pub fn bar_register_addr(&self, index: usize) -> Option<u64> {
        let state = self.bars.get(index)?.as_ref()?;
        let lo = self.read_u32(BAR0 + 4 * index);
        Some(match state.info.kind {
            BarKind::Io => u64::from(lo & BAR_IO_ADDR_MASK),
            BarKind::Memory32 => u64::from(lo & BAR_MEM_ADDR_MASK),
            BarKind::Memory64 => {
                let hi = self.read_u32(BAR0 + 4 * index + 4);
                (u64::from(hi) << 32) | u64::from(lo & BAR_MEM_ADDR_MASK)
            }
        })
    }

    /// Appends a read-only capability (`data[0]` is the ID; `data[1]`, the next pointer, is
    /// filled in) and returns its offset. Capabilities start at 0x40, 4-byte aligned.
    pub fn add_capability(&mut self, data: &[u8]) -> Result<u8, ConfigError> {
        self.add_capability_with_mask(data, &vec![0; data.len()])
    }

    /// Like [`Self::add_capability`], with a guest-writable mask per byte (the ID and next
    /// pointer bytes are always read-only).
    pub fn add_capability_with_mask(
        &mut self,
        data: &[u8],
        wmask: &[u8],
    ) -> Result<u8, ConfigError> {
        let len = data.len();
        if !(2..=PCI_CONFIG_SPACE_SIZE - CAPABILITY_LIST_START).contains(&len) {
            return Err(ConfigError::CapabilityLength(len));
        }
        if wmask.len() != len {
            return Err(ConfigError::CapabilityMask {
                data: len,
                mask: wmask.len(),
            });
        }
        let at = self.next_cap;
        let end = at + len;
        if end > PCI_CONFIG_SPACE_SIZE {
            return Err(ConfigError::CapabilitySpace(len));
        }
        self.regs[at..end].copy_from_slice(data);
        self.wmask[at..end].copy_from_slice(wmask);
        self.regs[at + 1] = 0;
        self.wmask[at] = 0;
        self.wmask[at + 1] = 0;
        // `at` < 256 by the check above.
        let offset = at as u8;
        match self.last_cap {
            Some(prev) => self.regs[prev + 1] = offset,
            None => self.regs[CAPABILITIES_POINTER] = offset,
        }
        let status = self.read_u16(STATUS) | STATUS_CAPABILITIES_LIST;
        self.put(STATUS, &status.to_le_bytes());
        self.last_cap = Some(at);
        self.next_cap = (end + 3) & !3;
        Ok(offset)
    }

    /// Reads `data.len()` bytes at `offset`; bytes beyond the 256-byte space (e.g. PCIe
    /// extended space) read as zero, meaning "no extended capabilities".
    pub fn read_config(&self, offset: u32, data: &mut [u8]) {
        self.read_bytes(usize::try_from(offset).unwrap_or(usize::MAX), data);
    }

    /// Writes `data` at `offset` honouring the writable masks; returns the BAR move it caused.
    ///
    /// Only 1-, 2- and 4-byte writes within one dword of the 256-byte space take effect;
    /// anything else is ignored.
    pub fn write_config(&mut self, offset: u32, data: &[u8]) -> Option<BarReprogram> {
        let start = usize::try_from(offset).ok()?;
        if !matches!(data.len(), 1 | 2 | 4)
            || start >= PCI_CONFIG_SPACE_SIZE
            || start % 4 + data.len() > 4
        {
            debug!(
                "ignoring PCI config write of {} bytes at {offset:#x}",
                data.len()
            );
            return None;
        }
        for (at, &byte) in (start..).zip(data) {
            let m = self.wmask[at];
            self.regs[at] = (self.regs[at] & !m) | (byte & m);
        }
        let reg = (start & !3).checked_sub(BAR0)? / 4;
        if reg >= NUM_BARS {
            return None;
        }
        let sizing = data == [0xff; 4];
        self.bar_written(reg, sizing)
    }

    /// Handles a write to BAR register `reg`.
    fn bar_written(&mut self, reg: usize, sizing: bool) -> Option<BarReprogram> {
        let (index, half) = match self.high_half_of(reg) {
            Some(low) => (low, 1),
            None => (reg, 0),
        };
        let new = self.bar_register_addr(index)?;
        let state = self.bars[index].as_mut()?;
        state.sizing[half] = sizing;
        if state.sizing.contains(&true)
            || (state.info.kind == BarKind::Memory64 && half == 0)
            || state.info.addr == new
        {
            return None;
        }
        let old = state.info.addr;
        state.info.addr = new;
        Some(BarReprogram {
            bar: index,
            old,
            new,
            len: state.info.size,
            kind: state.info.kind,
        })
    }
}

#[cfg(test)]
mod tests;
