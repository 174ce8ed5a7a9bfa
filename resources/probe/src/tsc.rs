//! TSC frequency: from CPUID (KVM/VMware leaf 0x40000010, leaf 0x15), or measured against
//! the ACPI PM timer or PIT channel 2, or (last) the nominal frequency in CPUID leaf 0x16.

use crate::acpi::{self, Reg};
use crate::io::{cpuid, inb, inl, outb, rdtsc};
use crate::phys;

/// A TSC frequency and where it came from.
#[derive(Clone, Copy)]
pub struct Tsc {
    pub khz: u64,
    pub source: &'static str,
}

impl Tsc {
    /// TSC ticks in `us` microseconds.
    pub fn ticks_us(&self, us: u64) -> u64 {
        self.khz.saturating_mul(us) / 1000
    }

    /// Busy-waits `us` microseconds.
    pub fn delay_us(&self, us: u64) {
        let start = rdtsc();
        let ticks = self.ticks_us(us);
        while rdtsc().wrapping_sub(start) < ticks {
            core::hint::spin_loop();
        }
    }
}

/// Determines the TSC frequency.
pub fn calibrate(fadt: Option<&[u8]>) -> Option<Tsc> {
    from_cpuid()
        .or_else(|| fadt.and_then(pm_timer))
        .or_else(pit)
        .or_else(from_leaf16)
}

fn from_cpuid() -> Option<Tsc> {
    let hv_max = cpuid(0x4000_0000, 0)[0];
    if (0x4000_0010..0x4001_0000).contains(&hv_max) {
        let khz = cpuid(0x4000_0010, 0)[0] as u64;
        if khz != 0 {
            return Some(Tsc {
                khz,
                source: "cpuid_0x40000010",
            });
        }
    }
    let max = cpuid(0, 0)[0];
    if max >= 0x15 {
        let [den, num, hz, _] = cpuid(0x15, 0);
        if den != 0 && num != 0 && hz != 0 {
            let khz = (hz as u64) * (num as u64) / (den as u64) / 1000;
            if khz != 0 {
                return Some(Tsc {
                    khz,
                    source: "cpuid_0x15",
                });
            }
        }
    }
    None
}

fn from_leaf16() -> Option<Tsc> {
    if cpuid(0, 0)[0] < 0x16 {
        return None;
    }
    let mhz = (cpuid(0x16, 0)[0] & 0xffff) as u64;
    (mhz != 0).then_some(Tsc {
        khz: mhz * 1000,
        source: "cpuid_0x16",
    })
}

fn read_timer(reg: Reg) -> u32 {
    match reg {
        Reg::Io(p) => inl(p),
        Reg::Mem(a) if a < phys::LIMIT - 4 && a.is_multiple_of(4) => phys::mmio_read32(a),
        Reg::Mem(_) => u32::MAX,
    }
}

/// Measures ~10 ms of the 3.579545 MHz ACPI PM timer (about 200 port reads).
fn pm_timer(fadt: &[u8]) -> Option<Tsc> {
    const HZ: u64 = 3_579_545;
    const WINDOW: u32 = 35_795;
    let (reg, wide) = acpi::pm_timer(fadt)?;
    let mask = if wide { u32::MAX } else { 0x00ff_ffff };
    let t0 = read_timer(reg) & mask;
    let c0 = rdtsc();
    let mut last = t0;
    let mut stuck = 0u32;
    for _ in 0..2_000_000u32 {
        let now = read_timer(reg) & mask;
        let c1 = rdtsc();
        let delta = now.wrapping_sub(t0) & mask;
        if delta >= WINDOW {
            let khz = (c1 - c0) as u128 * HZ as u128 / (delta as u128 * 1000);
            return (khz != 0).then_some(Tsc {
                khz: khz as u64,
                source: "acpi_pm_timer",
            });
        }
        if now == last {
            stuck += 1;
            if stuck > 100_000 {
                return None;
            }
        } else {
            stuck = 0;
            last = now;
        }
    }
    None
}

/// Measures a 10 ms one-shot countdown of PIT channel 2 (mode 0), polling OUT2 in port 0x61.
fn pit() -> Option<Tsc> {
    const COUNT: u16 = 11_932; // 10 ms at 1.193182 MHz
    let ctl = inb(0x61);
    if ctl == 0xff {
        return None;
    }
    outb(0x61, (ctl & !0x02) | 0x01);
    outb(0x43, 0xb0);
    outb(0x42, (COUNT & 0xff) as u8);
    outb(0x42, (COUNT >> 8) as u8);
    let c0 = rdtsc();
    let mut done = false;
    for _ in 0..2_000_000u32 {
        if inb(0x61) & 0x20 != 0 {
            done = true;
            break;
        }
    }
    let c1 = rdtsc();
    outb(0x61, ctl);
    let khz = (c1 - c0) / 10;
    (done && khz != 0).then_some(Tsc { khz, source: "pit" })
}
