//! The `cpuid` command: dumps the basic, hypervisor and extended leaves the tests care about.

use crate::error::Result;
use crate::io::cpuid;
use crate::json::Line;

struct Dump {
    line: Line,
    count: usize,
}

impl Dump {
    fn leaf(&mut self, leaf: u32, sub: u32) -> [u32; 4] {
        let r = cpuid(leaf, sub);
        if self.count > 0 {
            self.line.raw(",");
        }
        self.count += 1;
        self.line.raw("{\"leaf\":").hex(leaf as u64);
        self.line.raw(",\"subleaf\":").hex(sub as u64);
        for (name, v) in [("eax", r[0]), ("ebx", r[1]), ("ecx", r[2]), ("edx", r[3])] {
            self.line.raw(",\"").raw(name).raw("\":").hex(v as u64);
        }
        self.line.raw("}");
        r
    }
}

/// Concatenates register bytes into a signature string (NULs dropped).
fn signature(regs: [u32; 3], out: &mut [u8; 12]) -> usize {
    let mut n = 0;
    for r in regs {
        for b in r.to_le_bytes() {
            if b != 0 {
                out[n] = b;
                n += 1;
            }
        }
    }
    n
}

fn printable_signature(r: [u32; 4]) -> bool {
    [r[1], r[2], r[3]]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .all(|b| (0x20..0x7f).contains(&b) || b == 0)
        && (r[1] | r[2] | r[3]) != 0
}

/// Runs the `cpuid` command.
pub fn run() -> Result<()> {
    let mut d = Dump {
        line: Line::new(),
        count: 0,
    };
    d.line.raw("{\"cmd\":\"cpuid\",\"leaves\":[");
    let l0 = d.leaf(0, 0);
    let max = l0[0];
    d.leaf(1, 0);
    if max >= 4 {
        for sub in 0..8 {
            if cpuid(4, sub)[0] & 0x1f == 0 {
                break;
            }
            d.leaf(4, sub);
        }
    }
    if max >= 7 {
        d.leaf(7, 0);
    }
    for leaf in [0xbu32, 0x1f] {
        if max >= leaf {
            for sub in 0..4 {
                if (cpuid(leaf, sub)[2] >> 8) & 0xff == 0 {
                    break;
                }
                d.leaf(leaf, sub);
            }
        }
    }
    let hv = d.leaf(0x4000_0000, 0);
    let hv_max = hv[0];
    if (0x4000_0001..0x4000_0100).contains(&hv_max) {
        for leaf in 0x4000_0001..=hv_max.min(0x4000_0010) {
            d.leaf(leaf, 0);
        }
    }
    let hv2 = cpuid(0x4000_0100, 0);
    if printable_signature(hv2) {
        let top = if (0x4000_0100..0x4000_0200).contains(&hv2[0]) {
            hv2[0].min(0x4000_0110)
        } else {
            0x4000_0100
        };
        for leaf in 0x4000_0100..=top {
            d.leaf(leaf, 0);
        }
    }
    let ext = d.leaf(0x8000_0000, 0);
    let ext_max = ext[0];
    if (0x8000_0001..0x8001_0000).contains(&ext_max) {
        d.leaf(0x8000_0001, 0);
    }
    if (0x8000_0008..0x8001_0000).contains(&ext_max) {
        d.leaf(0x8000_0008, 0);
    }
    let mut sig = [0u8; 12];
    d.line.raw("],\"vendor\":");
    let n = signature([l0[1], l0[3], l0[2]], &mut sig);
    d.line.string(&sig[..n]);
    d.line.raw(",\"hypervisor\":");
    let n = signature([hv[1], hv[2], hv[3]], &mut sig);
    d.line.string(&sig[..n]);
    d.line.raw(",\"max_basic\":").hex(max as u64);
    d.line.raw(",\"max_hypervisor\":").hex(hv_max as u64);
    d.line.raw(",\"max_extended\":").hex(ext_max as u64);
    d.line.raw("}");
    d.line.finish()
}
