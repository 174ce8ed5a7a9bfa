//! Minimal, defensive ACPI table reading: RSDP discovery, RSDT/XSDT walk (MADT, FADT, MCFG,
//! SRAT, SLIT), MADT APIC IDs, the MCFG ECAM base and the FADT fields the probe needs (PM1a
//! control, PM timer, DSDT `_S5_`); the SRAT and SLIT are parsed by `numa`. Every length read
//! from the tables is bounded, so odd or hostile tables cannot hang or crash the probe.

use crate::list::IdList;
use crate::phys::{self, u16_at, u32_at, u64_at, u8_at};

/// Largest table accepted (bytes).
const MAX_TABLE: u64 = 4 << 20;
/// Most RSDT/XSDT entries examined.
const MAX_SDT_ENTRIES: usize = 256;

/// A register given by the FADT: an I/O port or a memory address.
#[derive(Clone, Copy)]
pub enum Reg {
    Io(u16),
    Mem(u64),
}

/// The tables the probe uses.
pub struct Acpi {
    pub rsdp: u64,
    pub madt: Option<&'static [u8]>,
    pub fadt: Option<&'static [u8]>,
    pub mcfg: Option<&'static [u8]>,
    /// System Resource Affinity Table (NUMA placement of CPUs and memory), parsed by `numa`.
    pub srat: Option<&'static [u8]>,
    /// System Locality Information Table (NUMA distances), parsed by `numa`.
    pub slit: Option<&'static [u8]>,
}

fn rsdp_at(addr: u64, check: bool) -> Option<u64> {
    let b = phys::slice(addr, 20)?;
    if &b[..8] != b"RSD PTR " {
        return None;
    }
    if check && phys::checksum(b) != 0 {
        return None;
    }
    Some(addr)
}

/// Finds the RSDP: the boot-protocol hint first, then the BIOS area scan.
pub fn find_rsdp(hint: u64) -> Option<u64> {
    if hint != 0 {
        if let Some(a) = rsdp_at(hint, false) {
            return Some(a);
        }
    }
    (0xe0000u64..0x100000)
        .step_by(16)
        .find_map(|a| rsdp_at(a, true))
}

/// Returns a whole table at `addr` (header length, bounded).
pub fn table(addr: u64) -> Option<&'static [u8]> {
    let hdr = phys::slice(addr, 36)?;
    let len = u32_at(hdr, 4)? as u64;
    if !(36..=MAX_TABLE).contains(&len) {
        return None;
    }
    phys::slice(addr, len)
}

/// Discovers the RSDP and the tables of [`Acpi`] (the first of each signature).
pub fn discover(hint: u64) -> Option<Acpi> {
    let rsdp = find_rsdp(hint)?;
    let r = phys::slice(rsdp, 36)?;
    let revision = u8_at(r, 15)?;
    let (sdt, width) = match u64_at(r, 24) {
        Some(x) if revision >= 2 && x != 0 => (x, 8),
        _ => (u32_at(r, 16)? as u64, 4),
    };
    let mut acpi = Acpi {
        rsdp,
        madt: None,
        fadt: None,
        mcfg: None,
        srat: None,
        slit: None,
    };
    let Some(sdt) = table(sdt) else {
        return Some(acpi);
    };
    let n = ((sdt.len() - 36) / width).min(MAX_SDT_ENTRIES);
    for i in 0..n {
        let off = 36 + i * width;
        let ptr = if width == 8 {
            u64_at(sdt, off)
        } else {
            u32_at(sdt, off).map(u64::from)
        };
        let Some(t) = ptr.and_then(table) else {
            continue;
        };
        match &t[..4] {
            b"APIC" if acpi.madt.is_none() => acpi.madt = Some(t),
            b"FACP" if acpi.fadt.is_none() => acpi.fadt = Some(t),
            b"MCFG" if acpi.mcfg.is_none() => acpi.mcfg = Some(t),
            b"SRAT" if acpi.srat.is_none() => acpi.srat = Some(t),
            b"SLIT" if acpi.slit.is_none() => acpi.slit = Some(t),
            _ => {}
        }
    }
    Some(acpi)
}

/// Enabled local APIC IDs from the MADT (type 0 and type 9 entries), and the LAPIC address.
pub fn madt_apic_ids(madt: &[u8], out: &mut IdList) -> u64 {
    let lapic = u32_at(madt, 36).map(u64::from).unwrap_or(0xfee0_0000);
    let mut off = 44;
    // Each entry is at least 2 bytes, so this terminates within the (bounded) table length.
    while off + 2 <= madt.len() {
        let kind = madt[off];
        let len = madt[off + 1] as usize;
        if len < 2 || off + len > madt.len() {
            break;
        }
        let e = &madt[off..off + len];
        match kind {
            0 if len >= 8 && u32_at(e, 4).unwrap_or(0) & 1 != 0 => out.push(e[3] as u32),
            9 if len >= 16 && u32_at(e, 8).unwrap_or(0) & 1 != 0 => {
                out.push(u32_at(e, 4).unwrap_or(0))
            }
            _ => {}
        }
        off += len;
    }
    lapic
}

/// ECAM base of PCI segment 0 from the MCFG table, if an entry covers bus 0 (the address of
/// bus 0, device 0, function 0).
pub fn ecam_bus0(mcfg: &[u8]) -> Option<u64> {
    let mut off = 44;
    while off + 16 <= mcfg.len() {
        let base = u64_at(mcfg, off)?;
        let segment = u16_at(mcfg, off + 8)?;
        let start = u8_at(mcfg, off + 10)?;
        let end = u8_at(mcfg, off + 11)?;
        if segment == 0 && start == 0 && end >= start && base != 0 {
            return Some(base);
        }
        off += 16;
    }
    None
}

/// Reads a Generic Address Structure at `off` (I/O or memory space, non-zero address).
fn gas(fadt: &[u8], off: usize) -> Option<Reg> {
    if fadt.len() < off + 12 {
        return None;
    }
    let space = u8_at(fadt, off)?;
    let addr = u64_at(fadt, off + 4)?;
    match (space, addr) {
        (_, 0) => None,
        (0, a) => Some(Reg::Mem(a)),
        (1, a) if a <= 0xffff => Some(Reg::Io(a as u16)),
        _ => None,
    }
}

fn legacy_port(fadt: &[u8], off: usize) -> Option<Reg> {
    match u32_at(fadt, off)? {
        0 => None,
        p if p <= 0xffff => Some(Reg::Io(p as u16)),
        _ => None,
    }
}

/// PM1a control register from the FADT.
pub fn pm1a_cnt(fadt: &[u8]) -> Option<Reg> {
    gas(fadt, 172).or_else(|| legacy_port(fadt, 64))
}

/// PM timer register and whether it is 32 bits wide.
pub fn pm_timer(fadt: &[u8]) -> Option<(Reg, bool)> {
    let ext = u32_at(fadt, 112).unwrap_or(0) & (1 << 8) != 0;
    let reg = gas(fadt, 208).or_else(|| legacy_port(fadt, 76))?;
    Some((reg, ext))
}

/// SLP_TYPa for S5 from the DSDT's `_S5_` package.
pub fn s5_slp_typ(fadt: &[u8]) -> Option<u8> {
    let x = if fadt.len() >= 148 {
        u64_at(fadt, 140).unwrap_or(0)
    } else {
        0
    };
    let dsdt = match x {
        0 => u32_at(fadt, 40)? as u64,
        a => a,
    };
    let dsdt = table(dsdt)?;
    let body = &dsdt[36..];
    let mut i = 0;
    while i + 4 <= body.len() {
        if &body[i..i + 4] == b"_S5_" {
            if let Some(v) = parse_s5(&body[i + 4..]) {
                return Some(v);
            }
        }
        i += 1;
    }
    None
}

/// Parses `PackageOp PkgLength NumElements <first element>` after the `_S5_` name.
fn parse_s5(b: &[u8]) -> Option<u8> {
    if *b.first()? != 0x12 {
        return None;
    }
    let lead = *b.get(1)?;
    let pkglen_bytes = 1 + (lead >> 6) as usize;
    let elem = 1 + pkglen_bytes + 1;
    match *b.get(elem)? {
        0x0a => b.get(elem + 1).copied(),
        0x00 => Some(0),
        0x01 => Some(1),
        _ => None,
    }
}
