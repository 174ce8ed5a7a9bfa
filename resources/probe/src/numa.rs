//! The `numa` command: the NUMA topology the firmware describes, from the SRAT (which proximity
//! domain each APIC ID and each memory range belongs to) and the SLIT (distances between
//! domains).
//!
//! Tables are read defensively: every affinity structure's length is checked against the
//! table (a length below 2 or past the end stops the walk), structures too short for their
//! type and unknown types are skipped, and what is printed is capped ([`MAX_CPUS`],
//! [`MAX_MEMORY`], [`MAX_LOCALITIES`]; `"truncated":true` says something was left out), so the
//! line stays far below the JSON line buffer.

use crate::cmd::Ctx;
use crate::error::Result;
use crate::json::Line;
use crate::phys::{u32_at, u64_at, u8_at};

/// Most processor affinity structures printed.
pub const MAX_CPUS: usize = 128;
/// Most memory affinity structures printed.
pub const MAX_MEMORY: usize = 32;
/// Most SLIT localities printed (the top-left corner of a larger matrix).
pub const MAX_LOCALITIES: usize = 16;

/// Offset of the first SRAT affinity structure.
const SRAT_ENTRIES: usize = 48;
/// Offset of the SLIT matrix.
const SLIT_MATRIX: usize = 44;

/// One SRAT structure the command reports.
enum Affinity {
    Cpu {
        apic: u32,
        node: u32,
        flags: u32,
    },
    Memory {
        base: u64,
        size: u64,
        node: u32,
        flags: u32,
    },
}

/// Decodes one SRAT structure `e` (its length already checked against the table); None for
/// unknown types and structures too short for their type. Before SRAT revision 2 only the low
/// 8 bits of a proximity domain are defined.
fn affinity(e: &[u8], revision: u8) -> Option<Affinity> {
    let domain_mask = if revision < 2 { 0xff } else { u32::MAX };
    match *e.first()? {
        // Processor Local APIC/SAPIC Affinity: domain bits [7:0] at 2, [31:8] at 9..12.
        0 if e.len() >= 16 => {
            let lo = u32::from(u8_at(e, 2)?);
            let hi = u32_at(e, 8)? >> 8;
            Some(Affinity::Cpu {
                apic: u32::from(u8_at(e, 3)?),
                node: (lo | (hi << 8)) & domain_mask,
                flags: u32_at(e, 4)?,
            })
        }
        // Memory Affinity.
        1 if e.len() >= 40 => Some(Affinity::Memory {
            base: u64_at(e, 8)?,
            size: u64_at(e, 16)?,
            node: u32_at(e, 2)? & domain_mask,
            flags: u32_at(e, 28)?,
        }),
        // Processor Local x2APIC Affinity.
        2 if e.len() >= 24 => Some(Affinity::Cpu {
            apic: u32_at(e, 8)?,
            node: u32_at(e, 4)?,
            flags: u32_at(e, 12)?,
        }),
        _ => None,
    }
}

/// Calls `f` for every structure of the SRAT the command reports, in table order.
fn walk_srat(srat: &[u8], mut f: impl FnMut(Affinity)) {
    let revision = u8_at(srat, 8).unwrap_or(0);
    let mut off = SRAT_ENTRIES;
    // Each step advances by at least 2 bytes, so this ends within the (bounded) table length.
    while off + 2 <= srat.len() {
        let len = srat[off + 1] as usize;
        if len < 2 || off + len > srat.len() {
            break;
        }
        if let Some(a) = affinity(&srat[off..off + len], revision) {
            f(a);
        }
        off += len;
    }
}

/// The SLIT's locality count and matrix, None if the matrix does not fit the table.
fn slit_matrix(slit: &[u8]) -> Option<(usize, &[u8])> {
    let n = usize::try_from(u64_at(slit, 36)?).ok()?;
    let cells = n.checked_mul(n)?;
    let matrix = slit.get(SLIT_MATRIX..SLIT_MATRIX.checked_add(cells)?)?;
    Some((n, matrix))
}

/// Runs the `numa` command.
pub fn run(ctx: &mut Ctx) -> Result<()> {
    let srat = ctx.acpi.as_ref().and_then(|a| a.srat);
    let slit = ctx.acpi.as_ref().and_then(|a| a.slit);
    let mut truncated = false;
    let mut l = Line::new();

    l.raw("{\"cmd\":\"numa\",\"cpus\":[");
    let mut n = 0;
    if let Some(t) = srat {
        walk_srat(t, |a| {
            if let Affinity::Cpu { apic, node, flags } = a {
                if n == MAX_CPUS {
                    truncated = true;
                    return;
                }
                if n > 0 {
                    l.raw(",");
                }
                n += 1;
                l.raw("{\"apic\":")
                    .num(apic.into())
                    .raw(",\"node\":")
                    .num(node.into())
                    .raw(",\"flags\":")
                    .num(flags.into())
                    .raw("}");
            }
        });
    }

    l.raw("],\"memory\":[");
    let mut n = 0;
    if let Some(t) = srat {
        walk_srat(t, |a| {
            if let Affinity::Memory {
                base,
                size,
                node,
                flags,
            } = a
            {
                if n == MAX_MEMORY {
                    truncated = true;
                    return;
                }
                if n > 0 {
                    l.raw(",");
                }
                n += 1;
                l.raw("{\"base\":")
                    .num(base)
                    .raw(",\"size\":")
                    .num(size)
                    .raw(",\"node\":")
                    .num(node.into())
                    .raw(",\"flags\":")
                    .num(flags.into())
                    .raw("}");
            }
        });
    }

    l.raw("],\"slit\":");
    match slit.map(slit_matrix) {
        None => {
            l.raw("[]");
        }
        Some(None) => {
            l.raw("null");
        }
        Some(Some((n, matrix))) => {
            let shown = n.min(MAX_LOCALITIES);
            truncated |= shown < n;
            l.raw("[");
            for i in 0..shown {
                if i > 0 {
                    l.raw(",");
                }
                l.raw("[");
                for j in 0..shown {
                    if j > 0 {
                        l.raw(",");
                    }
                    l.num(matrix.get(i * n + j).copied().unwrap_or(0).into());
                }
                l.raw("]");
            }
            l.raw("]");
        }
    }
    if truncated {
        l.raw(",\"truncated\":true");
    }
    l.raw("}");
    l.finish()
}
