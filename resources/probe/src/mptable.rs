//! MP specification table: finds the floating pointer (`_MP_`) and lists enabled processors.

use crate::list::IdList;
use crate::phys::{self, u16_at, u32_at};

fn find_floating() -> Option<&'static [u8]> {
    let ebda = phys::slice(0x40e, 2)
        .and_then(|b| u16_at(b, 0))
        .map(|seg| (seg as u64) << 4)
        .unwrap_or(0);
    let mut ranges = [(0x9fc00u64, 0xa0000u64), (0xf0000, 0x100000), (0, 0)];
    if (0x80000..0xa0000).contains(&ebda) {
        ranges[2] = (ebda, ebda + 1024);
    }
    for (start, end) in ranges {
        let mut a = start;
        while a + 16 <= end {
            if let Some(b) = phys::slice(a, 16) {
                if &b[..4] == b"_MP_" && phys::checksum(b) == 0 {
                    return Some(b);
                }
            }
            a += 16;
        }
    }
    None
}

/// Appends the APIC IDs of enabled processor entries; returns false if there is no MP table.
pub fn processors(out: &mut IdList) -> bool {
    let Some(fp) = find_floating() else {
        return false;
    };
    let Some(cfg) = u32_at(fp, 4).map(u64::from) else {
        return true;
    };
    let Some(hdr) = phys::slice(cfg, 44) else {
        return true;
    };
    if &hdr[..4] != b"PCMP" {
        return true;
    }
    let len = u16_at(hdr, 4).unwrap_or(0) as u64;
    let count = u16_at(hdr, 34).unwrap_or(0);
    let Some(t) = phys::slice(cfg, len.max(44)) else {
        return true;
    };
    let mut off = 44;
    for _ in 0..count {
        let Some(&kind) = t.get(off) else {
            break;
        };
        match kind {
            0 => {
                let (Some(&id), Some(&flags)) = (t.get(off + 1), t.get(off + 3)) else {
                    break;
                };
                if flags & 1 != 0 {
                    out.push(id as u32);
                }
                off += 20;
            }
            1..=4 => off += 8,
            _ => break,
        }
    }
    true
}
