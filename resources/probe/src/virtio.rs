//! Virtio 1.x PCI transport (modern interface only): vendor capabilities (common, notify,
//! ISR, device config), BAR windows, reset, status, feature negotiation, queue registration
//! and MSI-X table programming. Every offset and length read from the device is bounded by
//! the windows in `mmio`, so a hostile device gives an error or all-ones, never a wild access.

use crate::bootinfo::BootInfo;
use crate::err;
use crate::error::Result;
use crate::io::rdtsc;
use crate::mmio::Window;
use crate::pci::{self, BarKind, Bdf, Pci};
use crate::tsc::Tsc;

/// Red Hat / virtio PCI vendor ID.
pub const VENDOR: u16 = 0x1af4;

pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

pub const F_INDIRECT_DESC: u64 = 1 << 28;
pub const F_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;

/// "No MSI-X vector" value of the vector registers.
pub const NO_VECTOR: u16 = 0xffff;

// Common configuration structure offsets (virtio 1.x, 4.1.4.3).
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;
const COMMON_LEN: u64 = 0x38;

const CAP_VENDOR: u8 = 0x09;
const CAP_MSIX: u8 = 0x11;

/// The MSI-X capability and table.
#[derive(Clone, Copy)]
pub struct Msix {
    cap: u16,
    table: Window,
    pub entries: u16,
}

/// An opened virtio-pci function.
pub struct Transport {
    pub bdf: Bdf,
    pci: Pci,
    common: Window,
    notify: Window,
    notify_mult: u32,
    pub device: Window,
    pub msix: Option<Msix>,
    tsc: Tsc,
}

#[derive(Clone, Copy, Default)]
struct CapRef {
    bar: u8,
    offset: u32,
    length: u32,
    found: bool,
}

/// Whether `b` has a virtio common-configuration capability (i.e. a modern interface).
pub fn is_modern(pci: &Pci, b: Bdf) -> bool {
    let mut found = false;
    pci.caps(b, |off, id| {
        found |= id == CAP_VENDOR && pci.read8(b, off + 3) == 1;
    });
    found
}

/// Maps `[offset, offset + length)` of BAR `bar` to a window (memory BARs below 4 GiB only).
fn bar_window(
    pci: &Pci,
    boot: &BootInfo,
    b: Bdf,
    bar: u8,
    offset: u64,
    length: u64,
    what: &str,
) -> Result<Window> {
    let r = pci::bar_at(pci, b, bar)
        .ok_or_else(|| err!("{}: {} refers to missing BAR {}", b, what, bar))?;
    if r.kind == BarKind::Io {
        return Err(err!("{}: {} is in I/O BAR {} (unsupported)", b, what, bar));
    }
    Window::new(
        boot,
        r.addr.wrapping_add(offset),
        length,
        format_args!(
            "{} {} (BAR {} at {:#x} + {:#x})",
            b, what, bar, r.addr, offset
        ),
    )
}

impl Transport {
    /// Parses the capabilities of `b`, maps its regions and enables memory decoding and bus
    /// mastering (INTx off). Does not touch the device status.
    pub fn open(pci: &Pci, boot: &BootInfo, tsc: Tsc, b: Bdf) -> Result<Transport> {
        let mut refs = [CapRef::default(); 5];
        let mut notify_mult = 0;
        let mut msix_cap = None;
        pci.caps(b, |off, id| match id {
            CAP_VENDOR => {
                let kind = pci.read8(b, off + 3) as usize;
                let bar = pci.read8(b, off + 4);
                if (1..=4).contains(&kind) && bar <= 5 && !refs[kind].found {
                    refs[kind] = CapRef {
                        bar,
                        offset: pci.read32(b, off + 8),
                        length: pci.read32(b, off + 12),
                        found: true,
                    };
                    if kind == 2 {
                        notify_mult = pci.read32(b, off + 16);
                    }
                }
            }
            CAP_MSIX if msix_cap.is_none() => msix_cap = Some(off),
            _ => {}
        });
        let names = ["", "common config", "notify", "ISR", "device config"];
        for kind in [1usize, 2, 4] {
            if !refs[kind].found {
                return Err(err!(
                    "{}: no virtio {} capability (not a modern virtio device?)",
                    b,
                    names[kind]
                ));
            }
        }
        let map = |kind: usize, min: u64| {
            let r = refs[kind];
            if (r.length as u64) < min {
                return Err(err!(
                    "{}: virtio {} region too short ({} bytes)",
                    b,
                    names[kind],
                    r.length
                ));
            }
            bar_window(
                pci,
                boot,
                b,
                r.bar,
                r.offset as u64,
                r.length as u64,
                names[kind],
            )
        };
        let common = map(1, COMMON_LEN)?;
        let notify = map(2, 2)?;
        let device = map(4, 4)?;
        let msix = match msix_cap {
            Some(cap) => {
                let entries = (pci.read16(b, cap + 2) & 0x7ff) + 1;
                let t = pci.read32(b, cap + 4);
                let table = bar_window(
                    pci,
                    boot,
                    b,
                    (t & 7) as u8,
                    (t & !7) as u64,
                    entries as u64 * 16,
                    "MSI-X table",
                )?;
                Some(Msix {
                    cap,
                    table,
                    entries,
                })
            }
            None => None,
        };
        let cmd = pci.read16(b, pci::CMD);
        pci.write16(
            b,
            pci::CMD,
            cmd | pci::CMD_MEM | pci::CMD_MASTER | pci::CMD_INTX_OFF,
        );
        Ok(Transport {
            bdf: b,
            pci: *pci,
            common,
            notify,
            notify_mult,
            device,
            msix,
            tsc,
        })
    }

    /// Device status register.
    pub fn status(&self) -> u8 {
        self.common.read8(DEVICE_STATUS)
    }

    /// ORs `bits` into the device status.
    pub fn add_status(&self, bits: u8) {
        self.common.write8(DEVICE_STATUS, self.status() | bits);
    }

    /// Resets the device and waits (up to 1 s) for the status to read back 0.
    pub fn reset(&self) -> Result<()> {
        self.common.write8(DEVICE_STATUS, 0);
        let start = rdtsc();
        let limit = self.tsc.ticks_us(1_000_000);
        loop {
            let s = self.status();
            if s == 0 {
                return Ok(());
            }
            if rdtsc().wrapping_sub(start) > limit {
                return Err(err!(
                    "{}: device reset did not complete (status {:#x})",
                    self.bdf,
                    s
                ));
            }
        }
    }

    /// Feature negotiation (spec 3.1.1 steps 2-6): ACKNOWLEDGE, DRIVER, read the offered
    /// features, accept `wanted & offered` (VERSION_1 is required), FEATURES_OK and re-check.
    /// Returns (offered, accepted).
    pub fn negotiate(&self, wanted: u64) -> Result<(u64, u64)> {
        self.add_status(STATUS_ACKNOWLEDGE);
        self.add_status(STATUS_DRIVER);
        let mut offered = 0u64;
        for half in 0..2u32 {
            self.common.write32(DEVICE_FEATURE_SELECT, half);
            offered |= (self.common.read32(DEVICE_FEATURE) as u64) << (32 * half);
        }
        if offered & F_VERSION_1 == 0 {
            self.add_status(STATUS_FAILED);
            return Err(err!(
                "{}: device does not offer VIRTIO_F_VERSION_1 (features {:#x})",
                self.bdf,
                offered
            ));
        }
        let accepted = offered & (wanted | F_VERSION_1);
        for half in 0..2u32 {
            self.common.write32(DRIVER_FEATURE_SELECT, half);
            self.common
                .write32(DRIVER_FEATURE, (accepted >> (32 * half)) as u32);
        }
        self.add_status(STATUS_FEATURES_OK);
        let s = self.status();
        if s & STATUS_FEATURES_OK == 0 {
            self.add_status(STATUS_FAILED);
            return Err(err!(
                "{}: device refused features {:#x} (status {:#x})",
                self.bdf,
                accepted,
                s
            ));
        }
        Ok((offered, accepted))
    }

    /// `num_queues` from the common configuration.
    pub fn max_queues(&self) -> u16 {
        self.common.read16(NUM_QUEUES)
    }

    /// Sets the configuration-change MSI-X vector; returns the value read back.
    pub fn set_config_vector(&self, v: u16) -> u16 {
        self.common.write16(CONFIG_MSIX_VECTOR, v);
        self.common.read16(CONFIG_MSIX_VECTOR)
    }

    /// Maximum size of queue `q` (0 = not available).
    pub fn queue_max(&self, q: u16) -> u16 {
        self.common.write16(QUEUE_SELECT, q);
        self.common.read16(QUEUE_SIZE)
    }

    /// Registers queue `q` (size, ring addresses, MSI-X vector) and enables it. Returns the
    /// queue's 2-byte notify window.
    pub fn setup_queue(
        &self,
        q: u16,
        size: u16,
        rings: [u64; 3],
        vector: Option<u16>,
    ) -> Result<Window> {
        self.common.write16(QUEUE_SELECT, q);
        self.common.write16(QUEUE_SIZE, size);
        if let Some(v) = vector {
            self.common.write16(QUEUE_MSIX_VECTOR, v);
            let back = self.common.read16(QUEUE_MSIX_VECTOR);
            if back != v {
                return Err(err!(
                    "{}: queue {} MSI-X vector {} not accepted (reads back {:#x})",
                    self.bdf,
                    q,
                    v,
                    back
                ));
            }
        }
        for (reg, addr) in [QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE]
            .into_iter()
            .zip(rings)
        {
            self.common.write32(reg, addr as u32);
            self.common.write32(reg + 4, (addr >> 32) as u32);
        }
        let off = self.common.read16(QUEUE_NOTIFY_OFF) as u64;
        let at = off * self.notify_mult as u64;
        let win = self.notify.sub(at, 2).ok_or_else(|| {
            err!(
                "{}: queue {} notify offset {:#x} x {} is outside the notify region ({:#x} bytes)",
                self.bdf,
                q,
                off,
                self.notify_mult,
                self.notify.len
            )
        })?;
        self.common.write16(QUEUE_ENABLE, 1);
        Ok(win)
    }

    /// Device config generation counter.
    pub fn generation(&self) -> u8 {
        self.common.read8(CONFIG_GENERATION)
    }

    /// Programs MSI-X table entry `entry` to deliver `vector` to local APIC `apic_id`, unmasked.
    pub fn msix_program(&self, entry: u16, apic_id: u32, vector: u8) {
        if let Some(m) = self.msix {
            let e = entry as u64 * 16;
            m.table.write32(e, 0xfee0_0000 | (apic_id << 12));
            m.table.write32(e + 4, 0);
            m.table.write32(e + 8, vector as u32);
            m.table.write32(e + 12, 0);
        }
    }

    /// Enables MSI-X (and clears the function mask).
    pub fn msix_enable(&self) {
        if let Some(m) = self.msix {
            let ctl = self.pci.read16(self.bdf, m.cap + 2);
            self.pci
                .write16(self.bdf, m.cap + 2, (ctl | 0x8000) & !0x4000);
        }
    }

    /// Whether MSI-X reads back enabled and unmasked.
    pub fn msix_enabled(&self) -> bool {
        self.msix
            .is_some_and(|m| self.pci.read16(self.bdf, m.cap + 2) & 0xc000 == 0x8000)
    }
}
