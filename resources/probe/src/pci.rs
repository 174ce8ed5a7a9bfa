//! PCI configuration access and bus-0 enumeration, and the `pci` command.
//!
//! Configuration space is reached through ECAM when the ACPI MCFG table gives a base for
//! segment 0 / bus 0 (below 4 GiB), else through the legacy ports 0xCF8/0xCFC (first 256
//! bytes only). Enumeration covers bus 0, devices 0..31, all functions of multi-function
//! devices. BARs are sized the usual way (write all-ones with decoding off, then restore).

use crate::acpi::{self, Acpi};
use crate::bootinfo::BootInfo;
use crate::err;
use crate::error::Result;
use crate::io::{inl, outl, outw};
use crate::json::Line;
use crate::mmio::Window;
use core::fmt::{self, Write};

/// Bus/device/function.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bdf {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl Bdf {
    /// Writes `"bb:dd.f"` (quoted).
    pub fn json(&self, l: &mut Line) {
        l.raw("\"");
        let _ = write!(l, "{}", self);
        l.raw("\"");
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{:x}", self.bus, self.dev, self.func)
    }
}

/// How configuration space is reached.
#[derive(Clone, Copy)]
pub enum Access {
    Ecam(Window),
    Ports,
}

/// Configuration-space accessor.
#[derive(Clone, Copy)]
pub struct Pci {
    pub access: Access,
}

pub const CMD: u16 = 0x04;
pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEM: u16 = 1 << 1;
pub const CMD_MASTER: u16 = 1 << 2;
pub const CMD_INTX_OFF: u16 = 1 << 10;
const STATUS_CAPS: u16 = 1 << 4;

impl Pci {
    /// ECAM from the MCFG table when usable (1 MiB for bus 0), else the legacy ports.
    pub fn new(boot: &BootInfo, acpi: Option<&Acpi>) -> Pci {
        let ecam = acpi
            .and_then(|a| a.mcfg)
            .and_then(acpi::ecam_bus0)
            .and_then(|base| Window::new(boot, base, 1 << 20, format_args!("ECAM")).ok());
        Pci {
            access: match ecam {
                Some(w) => Access::Ecam(w),
                None => Access::Ports,
            },
        }
    }

    /// "ecam" or "cf8".
    pub fn kind(&self) -> &'static str {
        match self.access {
            Access::Ecam(_) => "ecam",
            Access::Ports => "cf8",
        }
    }

    fn ecam_off(b: Bdf, off: u16) -> u64 {
        ((b.dev as u64 & 0x1f) << 15) | ((b.func as u64 & 7) << 12) | (off as u64 & 0xfff)
    }

    fn port_addr(b: Bdf, off: u16) -> u32 {
        0x8000_0000
            | (b.bus as u32) << 16
            | (b.dev as u32 & 0x1f) << 11
            | (b.func as u32 & 7) << 8
            | (off as u32 & 0xfc)
    }

    /// Reads the dword containing `off` (all-ones if unreachable).
    pub fn read32(&self, b: Bdf, off: u16) -> u32 {
        let off = off & !3;
        match self.access {
            Access::Ecam(w) if b.bus == 0 => w.read32(Self::ecam_off(b, off)),
            Access::Ports if off < 256 => {
                outl(0xcf8, Self::port_addr(b, off));
                inl(0xcfc)
            }
            _ => u32::MAX,
        }
    }

    /// Reads the word at `off` (2-byte aligned).
    pub fn read16(&self, b: Bdf, off: u16) -> u16 {
        (self.read32(b, off) >> ((off & 2) * 8)) as u16
    }

    /// Reads the byte at `off`.
    pub fn read8(&self, b: Bdf, off: u16) -> u8 {
        (self.read32(b, off) >> ((off & 3) * 8)) as u8
    }

    /// Writes the word at `off` (2-byte aligned).
    pub fn write16(&self, b: Bdf, off: u16, v: u16) {
        let off = off & !1;
        match self.access {
            Access::Ecam(w) if b.bus == 0 => w.write16(Self::ecam_off(b, off), v),
            Access::Ports if off < 256 => {
                outl(0xcf8, Self::port_addr(b, off));
                outw(0xcfc + (off & 2), v);
            }
            _ => {}
        }
    }

    /// Writes the dword at `off` (4-byte aligned).
    pub fn write32(&self, b: Bdf, off: u16, v: u32) {
        let off = off & !3;
        match self.access {
            Access::Ecam(w) if b.bus == 0 => w.write32(Self::ecam_off(b, off), v),
            Access::Ports if off < 256 => {
                outl(0xcf8, Self::port_addr(b, off));
                outl(0xcfc, v);
            }
            _ => {}
        }
    }

    /// Vendor and device ID, or None if no function answers.
    pub fn ids(&self, b: Bdf) -> Option<(u16, u16)> {
        let v = self.read32(b, 0);
        let vendor = v as u16;
        (vendor != 0xffff && vendor != 0).then_some((vendor, (v >> 16) as u16))
    }

    /// Every present function on bus 0, in (device, function) order; calls `f` for each
    /// and stops early when `f` returns false.
    pub fn scan(&self, mut f: impl FnMut(Bdf, u16, u16) -> bool) {
        for dev in 0..32u8 {
            let b0 = Bdf {
                bus: 0,
                dev,
                func: 0,
            };
            if self.ids(b0).is_none() {
                // Functions 1-7 cannot exist without function 0; a port read of an absent
                // device also costs a trip to the VMM, so skip them.
                continue;
            }
            let multi = self.read8(b0, 0x0e) & 0x80 != 0;
            for func in 0..if multi { 8u8 } else { 1 } {
                let b = Bdf { bus: 0, dev, func };
                if let Some((vendor, device)) = self.ids(b) {
                    if !f(b, vendor, device) {
                        return;
                    }
                }
            }
        }
    }

    /// Capability list: calls `f(offset, id)` for each capability (at most 48, offsets must be
    /// dword-aligned and >= 0x40, so a looping or broken list ends).
    pub fn caps(&self, b: Bdf, mut f: impl FnMut(u16, u8)) {
        if self.read16(b, 0x06) & STATUS_CAPS == 0 {
            return;
        }
        let mut off = (self.read8(b, 0x34) & 0xfc) as u16;
        for _ in 0..48 {
            if off < 0x40 {
                return;
            }
            let id = self.read8(b, off);
            f(off, id);
            off = (self.read8(b, off + 1) & 0xfc) as u16;
        }
    }
}

/// BAR kinds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64,
}

/// One base address register (the address as programmed, size 0 if not sized).
#[derive(Clone, Copy)]
pub struct Bar {
    pub index: u8,
    pub kind: BarKind,
    pub addr: u64,
    pub size: u64,
    pub prefetch: bool,
}

/// Number of BARs for the function's header type (6, 2 for bridges, 0 otherwise).
fn bar_count(pci: &Pci, b: Bdf) -> u8 {
    match pci.read8(b, 0x0e) & 0x7f {
        0 => 6,
        1 => 2,
        _ => 0,
    }
}

/// Reads BAR `index` without sizing it. A 64-bit BAR also covers `index + 1`. None for an
/// index past the header's BARs or the upper half of a 64-bit BAR's pair.
pub fn bar(pci: &Pci, b: Bdf, index: u8) -> Option<Bar> {
    let n = bar_count(pci, b);
    if index >= n {
        return None;
    }
    let off = 0x10 + 4 * index as u16;
    let lo = pci.read32(b, off);
    if lo & 1 != 0 {
        return Some(Bar {
            index,
            kind: BarKind::Io,
            addr: (lo & !3) as u64,
            size: 0,
            prefetch: false,
        });
    }
    let prefetch = lo & 8 != 0;
    if (lo >> 1) & 3 == 2 && index + 1 < n {
        let hi = pci.read32(b, off + 4);
        return Some(Bar {
            index,
            kind: BarKind::Mem64,
            addr: ((hi as u64) << 32) | (lo & !0xf) as u64,
            size: 0,
            prefetch,
        });
    }
    Some(Bar {
        index,
        kind: BarKind::Mem32,
        addr: (lo & !0xf) as u64,
        size: 0,
        prefetch,
    })
}

/// Finds which BAR covers register `index`: the BAR itself, or None if `index` is the upper
/// half of a 64-bit BAR.
pub fn bar_at(pci: &Pci, b: Bdf, index: u8) -> Option<Bar> {
    let mut i = 0;
    while let Some(bar) = bar(pci, b, i) {
        if i == index {
            return Some(bar);
        }
        i += if bar.kind == BarKind::Mem64 { 2 } else { 1 };
        if i > index {
            return None;
        }
    }
    None
}

/// Sizes every BAR of `b` (memory and I/O decoding are off meanwhile); calls `f` for each BAR
/// that is implemented (non-zero size).
fn sized_bars(pci: &Pci, b: Bdf, mut f: impl FnMut(&Bar)) {
    let cmd = pci.read16(b, CMD);
    pci.write16(b, CMD, cmd & !(CMD_IO | CMD_MEM));
    let mut i = 0;
    while let Some(mut bar) = bar(pci, b, i) {
        let off = 0x10 + 4 * i as u16;
        let lo = pci.read32(b, off);
        pci.write32(b, off, u32::MAX);
        let lo_mask = pci.read32(b, off);
        pci.write32(b, off, lo);
        bar.size = match bar.kind {
            BarKind::Io => {
                let m = lo_mask & !3;
                let m = if m != 0 && m & 0xffff_0000 == 0 {
                    m | 0xffff_0000
                } else {
                    m
                };
                (!m).wrapping_add(1) as u64 * (m != 0) as u64
            }
            BarKind::Mem32 => {
                let m = lo_mask & !0xf;
                (!m).wrapping_add(1) as u64 * (m != 0) as u64
            }
            BarKind::Mem64 => {
                let hi = pci.read32(b, off + 4);
                pci.write32(b, off + 4, u32::MAX);
                let hi_mask = pci.read32(b, off + 4);
                pci.write32(b, off + 4, hi);
                let m = ((hi_mask as u64) << 32) | (lo_mask & !0xf) as u64;
                (!m).wrapping_add(1) * (m != 0) as u64
            }
        };
        if bar.size != 0 {
            f(&bar);
        }
        i += if bar.kind == BarKind::Mem64 { 2 } else { 1 };
    }
    pci.write16(b, CMD, cmd);
}

/// Moves memory BAR `index` of `b` to `addr` the way an OS does: memory decoding off, the
/// address written (low dword, then the high one of a 64-bit BAR), decoding restored. Fails for
/// a missing or I/O BAR.
pub fn move_bar(pci: &Pci, b: Bdf, index: u8, addr: u64) -> Result<()> {
    let bar = bar(pci, b, index).ok_or_else(|| err!("{}: no BAR {}", b, index))?;
    let off = 0x10 + 4 * index as u16;
    let cmd = pci.read16(b, CMD);
    pci.write16(b, CMD, cmd & !CMD_MEM);
    match bar.kind {
        BarKind::Io => {
            pci.write16(b, CMD, cmd);
            return Err(err!("{}: BAR {} is an I/O BAR", b, index));
        }
        BarKind::Mem32 => pci.write32(b, off, addr as u32),
        BarKind::Mem64 => {
            pci.write32(b, off, addr as u32);
            pci.write32(b, off + 4, (addr >> 32) as u32);
        }
    }
    pci.write16(b, CMD, cmd);
    Ok(())
}

/// Runs the `pci` command: one line listing every function on bus 0.
pub fn run(boot: &BootInfo, acpi: Option<&Acpi>) -> Result<()> {
    let pci = Pci::new(boot, acpi);
    let mut l = Line::new();
    l.raw("{\"cmd\":\"pci\",\"access\":\"")
        .raw(pci.kind())
        .raw("\",\"ecam\":");
    match pci.access {
        Access::Ecam(w) => l.hex(w.base),
        Access::Ports => l.raw("null"),
    };
    l.raw(",\"devices\":[");
    let mut first = true;
    pci.scan(|b, vendor, device| {
        if !first {
            l.raw(",");
        }
        first = false;
        l.raw("{\"bdf\":");
        b.json(&mut l);
        let class = pci.read32(b, 0x08) >> 8;
        l.raw(",\"vendor\":")
            .hex_pad(vendor as u64, 4)
            .raw(",\"device\":")
            .hex_pad(device as u64, 4)
            .raw(",\"class\":")
            .hex_pad(class as u64, 6)
            .raw(",\"header_type\":")
            .hex_pad(pci.read8(b, 0x0e) as u64, 2)
            .raw(",\"bars\":[");
        let mut first_bar = true;
        sized_bars(&pci, b, |bar| {
            if !first_bar {
                l.raw(",");
            }
            first_bar = false;
            l.raw("{\"bar\":").num(bar.index as u64).raw(",\"type\":\"");
            l.raw(match bar.kind {
                BarKind::Io => "io",
                BarKind::Mem32 => "mem32",
                BarKind::Mem64 => "mem64",
            });
            l.raw("\",\"addr\":")
                .hex(bar.addr)
                .raw(",\"size\":")
                .hex(bar.size)
                .raw(",\"prefetch\":")
                .bool(bar.prefetch)
                .raw("}");
        });
        l.raw("],\"caps\":[");
        let mut first_cap = true;
        pci.caps(b, |_, id| {
            if !first_cap {
                l.raw(",");
            }
            first_cap = false;
            l.hex_pad(id as u64, 2);
        });
        l.raw("]}");
        true
    });
    l.raw("]}");
    l.finish()
}
