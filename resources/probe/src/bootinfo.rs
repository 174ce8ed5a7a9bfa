//! Captures the boot information (memory map, command line, RSDP pointer) from either the
//! Linux zero page (64-bit and 32-bit Linux entries) or the PVH `hvm_start_info`, copying it
//! so the low pages it lives in can be reused (e.g. for the AP trampoline).

use crate::err;
use crate::error::Result;
use crate::phys::{self, u32_at, u64_at, u8_at};

/// Entry kinds recorded by the assembly entry points.
pub const KIND_LINUX64: u32 = 1;
pub const KIND_PVH: u32 = 2;
pub const KIND_LINUX32: u32 = 3;

/// Most memory-map entries kept.
pub const MAX_E820: usize = 128;
/// Longest command line kept (longer ones are truncated).
pub const MAX_CMDLINE: usize = 8192;

const PVH_MAGIC: u32 = 0x336e_c578;

/// One memory-map entry.
#[derive(Clone, Copy, Default)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The boot information the probe was given.
pub struct BootInfo {
    pub kind: u32,
    pub info_addr: u64,
    pub e820: [E820Entry; MAX_E820],
    pub e820_len: usize,
    pub cmdline: [u8; MAX_CMDLINE],
    pub cmdline_len: usize,
    pub cmdline_truncated: bool,
    /// RSDP address from the boot protocol (0 if none).
    pub rsdp: u64,
}

impl BootInfo {
    /// Empty boot information.
    pub fn new() -> Self {
        BootInfo {
            kind: 0,
            info_addr: 0,
            e820: [E820Entry::default(); MAX_E820],
            e820_len: 0,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            cmdline_truncated: false,
            rsdp: 0,
        }
    }

    /// "boot_params" or "pvh".
    pub fn source(&self) -> &'static str {
        if self.kind == KIND_PVH {
            "pvh"
        } else {
            "boot_params"
        }
    }

    /// "64bit", "pvh" or "linux32".
    pub fn entry(&self) -> &'static str {
        match self.kind {
            KIND_LINUX64 => "64bit",
            KIND_PVH => "pvh",
            _ => "linux32",
        }
    }

    /// The memory map.
    pub fn e820(&self) -> &[E820Entry] {
        &self.e820[..self.e820_len]
    }

    /// The command line bytes (no NUL).
    pub fn cmdline(&self) -> &[u8] {
        &self.cmdline[..self.cmdline_len]
    }

    fn copy_cmdline(&mut self, addr: u64) {
        if addr == 0 {
            return;
        }
        for i in 0..MAX_CMDLINE as u64 {
            let Some(b) = addr.checked_add(i).and_then(|a| phys::slice(a, 1)) else {
                return;
            };
            if b[0] == 0 {
                return;
            }
            self.cmdline[self.cmdline_len] = b[0];
            self.cmdline_len += 1;
        }
        self.cmdline_truncated = true;
    }

    fn push_e820(&mut self, addr: u64, size: u64, kind: u32) {
        if self.e820_len < MAX_E820 {
            self.e820[self.e820_len] = E820Entry { addr, size, kind };
            self.e820_len += 1;
        }
    }
}

/// Reads the boot information handed over by the entry code.
pub fn capture(kind: u32, ptr: u64, out: &mut BootInfo) -> Result<()> {
    out.kind = kind;
    out.info_addr = ptr;
    match kind {
        KIND_LINUX64 | KIND_LINUX32 => capture_boot_params(ptr, out),
        KIND_PVH => capture_pvh(ptr, out),
        _ => Err(err!("unknown boot entry kind {}", kind)),
    }
}

fn capture_boot_params(ptr: u64, out: &mut BootInfo) -> Result<()> {
    let zp = phys::slice(ptr, 4096).ok_or_else(|| err!("bad boot_params pointer {:#x}", ptr))?;
    let n = u8_at(zp, 0x1e8).unwrap_or(0) as usize;
    for i in 0..n.min(MAX_E820) {
        let off = 0x2d0 + i * 20;
        let (Some(addr), Some(size), Some(t)) =
            (u64_at(zp, off), u64_at(zp, off + 8), u32_at(zp, off + 16))
        else {
            break;
        };
        out.push_e820(addr, size, t);
    }
    let lo = u32_at(zp, 0x228).unwrap_or(0) as u64;
    let hi = u32_at(zp, 0x0c8).unwrap_or(0) as u64;
    out.copy_cmdline(lo | (hi << 32));
    out.rsdp = u64_at(zp, 0x070).unwrap_or(0);
    Ok(())
}

fn capture_pvh(ptr: u64, out: &mut BootInfo) -> Result<()> {
    let si = phys::slice(ptr, 56).ok_or_else(|| err!("bad hvm_start_info pointer {:#x}", ptr))?;
    let magic = u32_at(si, 0).unwrap_or(0);
    if magic != PVH_MAGIC {
        return Err(err!("bad hvm_start_info magic {:#x}", magic));
    }
    let version = u32_at(si, 4).unwrap_or(0);
    out.copy_cmdline(u64_at(si, 24).unwrap_or(0));
    out.rsdp = u64_at(si, 32).unwrap_or(0);
    if version >= 1 {
        let map = u64_at(si, 40).unwrap_or(0);
        let n = (u32_at(si, 48).unwrap_or(0) as usize).min(MAX_E820);
        if let Some(entries) = phys::slice(map, (n * 24) as u64) {
            for i in 0..n {
                let off = i * 24;
                let (Some(addr), Some(size), Some(t)) = (
                    u64_at(entries, off),
                    u64_at(entries, off + 8),
                    u32_at(entries, off + 16),
                ) else {
                    break;
                };
                out.push_e820(addr, size, t);
            }
        }
    }
    Ok(())
}
