//! The MC146818-style CMOS RTC and its 128 bytes of battery-backed RAM.
//!
//! Offset 0 (port 0x70) selects a register: bits 0..=6 are the index, bit 7 is the NMI mask,
//! which is ignored. Offset 1 (port 0x71) reads or writes the selected register.
//!
//! The clock registers always show the host's UTC time, in BCD and 24-hour mode (register B
//! reads with DM clear and 24/12 set whatever the guest writes). The update cycle is never in
//! progress, the divider is the standard 32.768 kHz one, no interrupt is ever flagged and the
//! battery is good. Guest writes to the time registers are ignored (the host keeps the time);
//! every other index is plain RAM, pre-filled with the memory sizes firmware and old kernels
//! look for.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::{BusDevice, MachineRequest};
use crate::snapshot::{DeviceSnapshot, StateError};

/// Offset of the index port (0x70).
pub const INDEX_OFFSET: u64 = 0;
/// Offset of the data port (0x71).
pub const DATA_OFFSET: u64 = 1;

const INDEX_MASK: u8 = 0x7f;
const RAM_SIZE: usize = 128;

// Clock registers.
const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Register A: update not in progress, 32.768 kHz time base, 1024 Hz periodic rate.
const REG_A_VALUE: u8 = 0x26;
/// Register B: 24-hour mode.
const REG_B_24H: u8 = 0x02;
/// Register B: binary (rather than BCD) data mode.
const REG_B_BINARY: u8 = 0x04;
/// Register D: valid RAM and time (battery good).
const REG_D_VALUE: u8 = 0x80;

// Memory-size registers.
const BASE_MEM_LO: usize = 0x15;
const EXT_MEM_LO: usize = 0x17;
const EXT_MEM2_LO: usize = 0x30;
const HIGH_MEM_LO: usize = 0x34;
const ABOVE_4G_LO: usize = 0x5b;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Conventional memory reported in 0x15/0x16, in KiB.
const BASE_MEM_KIB: u64 = 640;

/// A broken-down UTC time, in plain binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u8,
    day: u8,
    weekday: u8, // 1 = Sunday
    hour: u8,
    minute: u8,
    second: u8,
}

impl Civil {
    /// Breaks `secs` since the Unix epoch into a civil UTC time (proleptic Gregorian),
    /// following Howard Hinnant's `civil_from_days`.
    fn from_unix(secs: i64) -> Civil {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // 1970-01-01 was a Thursday (weekday 5 with Sunday = 1).
        let weekday = (days + 4).rem_euclid(7) + 1;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        // Every narrowing below is of a value already bounded by the arithmetic above.
        Civil {
            year,
            month: month as u8,
            day: day as u8,
            weekday: weekday as u8,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// The host's current UTC time.
    fn now() -> Civil {
        let secs = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(0),
        };
        Civil::from_unix(secs)
    }
}

/// Binary 0..=99 to packed BCD.
fn bcd(value: u8) -> u8 {
    let value = value % 100;
    ((value / 10) << 4) | (value % 10)
}

/// The CMOS's saved state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CmosSnapshot {
    /// The index register.
    pub index: u8,
    /// The 128 bytes of CMOS memory.
    pub ram: Vec<u8>,
}

/// The CMOS/RTC device.
#[derive(Debug)]
pub struct Cmos {
    index: u8,
    ram: [u8; RAM_SIZE],
}

impl Cmos {
    /// Creates the CMOS with its memory-size registers describing `mem_below_4g` bytes of RAM
    /// starting at 0 and `mem_above_4g` bytes starting at 4 GiB.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Self {
        let mut ram = [0u8; RAM_SIZE];
        let mut put16 = |at: usize, value: u64| {
            let v = value.min(0xffff) as u16;
            ram[at..at + 2].copy_from_slice(&v.to_le_bytes());
        };
        let ext_kib = mem_below_4g.saturating_sub(MIB) / KIB;
        put16(BASE_MEM_LO, BASE_MEM_KIB);
        put16(EXT_MEM_LO, ext_kib);
        put16(EXT_MEM2_LO, ext_kib);
        put16(
            HIGH_MEM_LO,
            mem_below_4g.saturating_sub(16 * MIB) / (64 * KIB),
        );
        let above = (mem_above_4g / (64 * KIB)).min(0xff_ffff);
        ram[ABOVE_4G_LO..ABOVE_4G_LO + 3].copy_from_slice(&above.to_le_bytes()[..3]);
        ram[usize::from(REG_B)] = REG_B_24H;
        Cmos { index: 0, ram }
    }

    /// Reads register `index` (already masked to 0..=127).
    fn read_register(&self, index: u8) -> u8 {
        let clock = |f: fn(&Civil) -> u8| bcd(f(&Civil::now()));
        match index {
            REG_SECONDS => clock(|t| t.second),
            REG_MINUTES => clock(|t| t.minute),
            REG_HOURS => clock(|t| t.hour),
            REG_WEEKDAY => clock(|t| t.weekday),
            REG_DAY => clock(|t| t.day),
            REG_MONTH => clock(|t| t.month),
            REG_YEAR => clock(|t| t.year.rem_euclid(100) as u8),
            REG_CENTURY => clock(|t| t.year.div_euclid(100).rem_euclid(100) as u8),
            REG_A => REG_A_VALUE,
            REG_B => (self.ram[usize::from(REG_B)] & !REG_B_BINARY) | REG_B_24H,
            REG_C => 0,
            REG_D => REG_D_VALUE,
            _ => self.ram.get(usize::from(index)).copied().unwrap_or(0xff),
        }
    }

    /// Writes register `index` (already masked to 0..=127).
    fn write_register(&mut self, index: u8, value: u8) {
        match index {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
            | REG_YEAR | REG_CENTURY | REG_A | REG_C | REG_D => {
                log::debug!("cmos: ignoring write of {value:#04x} to clock register {index:#04x}");
            }
            _ => {
                if let Some(byte) = self.ram.get_mut(usize::from(index)) {
                    *byte = value;
                }
            }
        }
    }
}

impl DeviceSnapshot for Cmos {
    type State = CmosSnapshot;
    const NAME: &'static str = "cmos";
    const STATE_VERSION: u32 = 1;

    /// The index register and the CMOS memory (the clock registers are read from the host's
    /// clock, so they are not state).
    fn save_state(&self) -> CmosSnapshot {
        CmosSnapshot {
            index: self.index,
            ram: self.ram.to_vec(),
        }
    }

    /// Puts saved registers back; a saved memory of another size is refused.
    fn restore_state(&mut self, saved: &CmosSnapshot) -> Result<(), StateError> {
        self.ram = saved.ram.as_slice().try_into().map_err(|_| {
            let what = format!("{} bytes of CMOS memory, not {RAM_SIZE}", saved.ram.len());
            StateError::invalid(Self::NAME, what)
        })?;
        self.index = saved.index & 0x7f;
        Ok(())
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (DATA_OFFSET, 1) => self.read_register(self.index),
            // The index port is write-only; everything else is undecoded.
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<MachineRequest> {
        match (offset, data) {
            (INDEX_OFFSET, &[value]) => self.index = value & INDEX_MASK,
            (DATA_OFFSET, &[value]) => self.write_register(self.index, value),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn reg(cmos: &mut Cmos, index: u8) -> u8 {
        cmos.write(INDEX_OFFSET, &[index]);
        let mut b = [0u8; 1];
        cmos.read(DATA_OFFSET, &mut b);
        b[0]
    }

    fn reg16(cmos: &mut Cmos, lo: u8) -> u16 {
        u16::from_le_bytes([reg(cmos, lo), reg(cmos, lo + 1)])
    }

    fn is_bcd(v: u8) -> bool {
        v & 0x0f <= 9 && v >> 4 <= 9
    }

    #[test]
    fn memory_size_registers() {
        let mut cmos = Cmos::new(3 * GIB, 2 * GIB);
        assert_eq!(reg16(&mut cmos, 0x15), 640);
        assert_eq!(reg16(&mut cmos, 0x17), 0xffff);
        assert_eq!(reg16(&mut cmos, 0x30), 0xffff);
        assert_eq!(
            reg16(&mut cmos, 0x34),
            ((3 * GIB - 16 * MIB) / (64 * KIB)) as u16
        );
        assert_eq!(reg16(&mut cmos, 0x34), 0xbf00);
        let above = [
            reg(&mut cmos, 0x5b),
            reg(&mut cmos, 0x5c),
            reg(&mut cmos, 0x5d),
        ];
        assert_eq!(above, [0x00, 0x80, 0x00]);

        let mut small = Cmos::new(32 * MIB, 0);
        assert_eq!(reg16(&mut small, 0x17), 31 * 1024);
        assert_eq!(reg16(&mut small, 0x30), 31 * 1024);
        assert_eq!(reg16(&mut small, 0x34), 256);
        assert_eq!(reg(&mut small, 0x5b), 0);

        let mut tiny = Cmos::new(512 * KIB, u64::MAX);
        assert_eq!(reg16(&mut tiny, 0x17), 0);
        assert_eq!(reg16(&mut tiny, 0x34), 0);
        assert_eq!(reg(&mut tiny, 0x5d), 0xff);
    }

    #[test]
    fn clock_reads_plausible_bcd() {
        let mut cmos = Cmos::new(GIB, 0);
        let sec = reg(&mut cmos, REG_SECONDS);
        let min = reg(&mut cmos, REG_MINUTES);
        let hour = reg(&mut cmos, REG_HOURS);
        let wday = reg(&mut cmos, REG_WEEKDAY);
        let day = reg(&mut cmos, REG_DAY);
        let month = reg(&mut cmos, REG_MONTH);
        let year = reg(&mut cmos, REG_YEAR);
        let century = reg(&mut cmos, REG_CENTURY);
        for v in [sec, min, hour, wday, day, month, year, century] {
            assert!(is_bcd(v), "{v:#x} is not BCD");
        }
        assert!(sec < 0x60 && min < 0x60 && hour < 0x24);
        assert!((0x01..=0x07).contains(&wday));
        assert!((0x01..=0x31).contains(&day));
        assert!((0x01..=0x12).contains(&month));
        assert!(century >= 0x20);
        assert_eq!(reg(&mut cmos, REG_A), 0x26);
        assert_eq!(reg(&mut cmos, REG_B), 0x02);
        assert_eq!(reg(&mut cmos, REG_C), 0);
        assert_eq!(reg(&mut cmos, REG_D), 0x80);
    }

    #[test]
    fn civil_conversion_known_dates() {
        let t = Civil::from_unix(0);
        assert_eq!((t.year, t.month, t.day, t.weekday), (1970, 1, 1, 5));
        // 2000-02-29 12:34:56 UTC, a Tuesday.
        let t = Civil::from_unix(951_827_696);
        assert_eq!((t.year, t.month, t.day, t.weekday), (2000, 2, 29, 3));
        assert_eq!((t.hour, t.minute, t.second), (12, 34, 56));
        // 2024-12-31 23:59:59 UTC, a Tuesday.
        let t = Civil::from_unix(1_735_689_599);
        assert_eq!((t.year, t.month, t.day, t.weekday), (2024, 12, 31, 3));
        assert_eq!((t.hour, t.minute, t.second), (23, 59, 59));
        assert_eq!(bcd(59), 0x59);
        assert_eq!(bcd(7), 0x07);
    }

    #[test]
    fn index_ignores_the_nmi_mask_bit() {
        let mut cmos = Cmos::new(GIB, 0);
        cmos.write(INDEX_OFFSET, &[0x80 | 0x40]);
        cmos.write(DATA_OFFSET, &[0xab]);
        assert_eq!(reg(&mut cmos, 0x40), 0xab);
        assert_eq!(reg(&mut cmos, 0xc0), 0xab);
        assert_eq!(reg(&mut cmos, 0x80 | 0x15), 0x80); // 640 = 0x0280
        assert_eq!(reg(&mut cmos, 0x8d), 0x80);
    }

    #[test]
    fn ram_is_writable_but_clock_and_mode_are_kept() {
        let mut cmos = Cmos::new(GIB, 0);
        cmos.write(INDEX_OFFSET, &[0x0f]);
        cmos.write(DATA_OFFSET, &[0x0a]);
        assert_eq!(reg(&mut cmos, 0x0f), 0x0a);
        cmos.write(INDEX_OFFSET, &[REG_MONTH]);
        cmos.write(DATA_OFFSET, &[0x99]);
        assert_ne!(reg(&mut cmos, REG_MONTH), 0x99);
        cmos.write(INDEX_OFFSET, &[REG_B]);
        cmos.write(DATA_OFFSET, &[0x80 | REG_B_BINARY]);
        assert_eq!(reg(&mut cmos, REG_B), 0x80 | REG_B_24H);
        // The index port reads all ones and wide accesses are not decoded.
        let mut b = [0u8; 2];
        cmos.read(INDEX_OFFSET, &mut b[..1]);
        assert_eq!(b[0], 0xff);
        cmos.read(DATA_OFFSET, &mut b);
        assert_eq!(b, [0xff, 0xff]);
    }
}
