//! A fixed-hardware ACPI power-management register block: the sleep control and status
//! registers, PM1a event and control, the PM timer and the FADT reset register, laid out in one
//! 16-byte block.
//!
//! Two of its ports are fixed by edk2's Cloud Hypervisor firmware (`OvmfPkg/Include/
//! IndustryStandard/CloudHv.h`): it powers off by writing `SLP_TYP 5 | SLP_EN` to a
//! hardware-reduced sleep control register at 0x600 and times delays with the PM timer at
//! 0x608. Linux uses PM1a_CNT instead (the FADT is not hardware-reduced); both power off.
//!
//! The block is modelled as a little-endian byte array, so accesses of any width at any offset
//! touch exactly the bytes they cover: a 4-byte write at [`PM1A_CNT_OFFSET`] sets PM1a_CNT and
//! the two reserved bytes after it. Reserved bytes read 0 and ignore writes.
//!
//! The block never raises an SCI: status bits are only observed by polling.

use std::time::{Duration, Instant};

use crate::bus::{BusDevice, MachineRequest};
use crate::snapshot::{DeviceSnapshot, StateError};

/// SLEEP_CONTROL_REG (1 byte, ACPI 6.5 section 4.8.3.7): SLP_TYP in bits 2..=4 and SLP_EN
/// (bit 5, write-only) starts the sleep; reads 0.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// SLEEP_STATUS_REG (1 byte): WAK_STS (bit 7) is never set, so it reads 0.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// PM1a_STS (2 bytes, write-1-to-clear) followed by PM1a_EN (2 bytes).
pub const PM1A_EVT_OFFSET: u64 = 2;
/// PM1a_CNT (2 bytes): SCI_EN (bit 0) always reads 1, SLP_TYP is bits 10..=12 and SLP_EN
/// (bit 13, write-only) starts the sleep.
pub const PM1A_CNT_OFFSET: u64 = 6;
/// PM_TMR (4 bytes, read-only): a 24-bit counter at 3.579545 MHz.
pub const PM_TMR_OFFSET: u64 = 8;
/// The reset register (1 byte): writing the reset value resets the machine.
pub const RESET_OFFSET: u64 = 12;
/// Length of the register block.
pub const ACPI_PM_LEN: u64 = 16;

/// PM timer frequency in Hz.
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The PM timer is 24 bits wide (FADT TMR_VAL_EXT clear).
const PM_TIMER_MASK: u64 = 0x00ff_ffff;

const PM1A_EN_OFFSET: u64 = PM1A_EVT_OFFSET + 2;

// PM1 status bits.
const TMR_STS: u16 = 1 << 0;

// PM1 control bits.
const SCI_EN: u16 = 1 << 0;
const BM_RLD: u16 = 1 << 1;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0x7 << SLP_TYP_SHIFT;
const SLP_EN: u16 = 1 << 13;

// Sleep control register bits.
const SLEEP_CONTROL_TYP_SHIFT: u8 = 2;
const SLEEP_CONTROL_EN: u8 = 1 << 5;
/// Control bits that hold a value (GBL_RLS and SLP_EN are write-only, SCI_EN is fixed).
const CNT_STORED: u16 = BM_RLD | SLP_TYP_MASK;

const BLOCK: usize = ACPI_PM_LEN as usize;

/// The PM block's saved state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AcpiPmSnapshot {
    /// PM1a_STS.
    pub sts: u16,
    /// PM1a_EN.
    pub en: u16,
    /// PM1a_CNT's stored bits.
    pub cnt: u16,
    /// Timer ticks since the block was created.
    pub ticks: u64,
}

/// The ACPI PM register block.
#[derive(Debug)]
pub struct AcpiPm {
    start: Instant,
    sts: u16,
    en: u16,
    cnt: u16,
    /// Bit 23 epoch (`ticks >> 23`) last folded into TMR_STS.
    tmr_epoch: u64,
    s5_slp_typ: u8,
    reset_value: u8,
    other_sleep_logged: bool,
}

impl AcpiPm {
    /// Creates the block. `s5_slp_typ` is the SLP_TYP value of the DSDT's `\_S5` package
    /// (3 bits); `reset_value` is the FADT RESET_VALUE.
    pub fn new(s5_slp_typ: u8, reset_value: u8) -> Self {
        AcpiPm {
            start: Instant::now(),
            sts: 0,
            en: 0,
            cnt: 0,
            tmr_epoch: 0,
            s5_slp_typ: s5_slp_typ & 0x7,
            reset_value,
            other_sleep_logged: false,
        }
    }

    /// Timer ticks from creation to `now` (not yet truncated to 24 bits).
    fn ticks_at(&self, now: Instant) -> u64 {
        ticks_in(now.saturating_duration_since(self.start))
    }

    /// Sets TMR_STS if bit 23 of the counter changed since the last look.
    fn refresh_timer_status(&mut self, ticks: u64) {
        let epoch = ticks >> 23;
        if epoch != self.tmr_epoch {
            self.tmr_epoch = epoch;
            self.sts |= TMR_STS;
        }
    }

    /// The whole block as the guest would read it at `now`.
    fn image(&mut self, now: Instant) -> [u8; BLOCK] {
        let ticks = self.ticks_at(now);
        self.refresh_timer_status(ticks);
        let mut img = [0u8; BLOCK];
        let put = |img: &mut [u8; BLOCK], at: u64, bytes: &[u8]| {
            let at = at as usize;
            img[at..at + bytes.len()].copy_from_slice(bytes);
        };
        put(&mut img, PM1A_EVT_OFFSET, &self.sts.to_le_bytes());
        put(&mut img, PM1A_EN_OFFSET, &self.en.to_le_bytes());
        put(
            &mut img,
            PM1A_CNT_OFFSET,
            &((self.cnt & CNT_STORED) | SCI_EN).to_le_bytes(),
        );
        put(
            &mut img,
            PM_TMR_OFFSET,
            &((ticks & PM_TIMER_MASK) as u32).to_le_bytes(),
        );
        img
    }

    /// Handles a (possibly partial) write to PM1a_CNT; `written` holds the new value with
    /// the bytes not covered by the access taken from the current value.
    fn write_cnt(&mut self, written: u16) -> Option<MachineRequest> {
        self.cnt = written & CNT_STORED;
        if written & SLP_EN == 0 {
            return None;
        }
        self.sleep(((written & SLP_TYP_MASK) >> SLP_TYP_SHIFT) as u8)
    }

    /// Handles a write to the sleep control register.
    fn write_sleep_control(&mut self, written: u8) -> Option<MachineRequest> {
        if written & SLEEP_CONTROL_EN == 0 {
            return None;
        }
        self.sleep((written >> SLEEP_CONTROL_TYP_SHIFT) & 0x7)
    }

    /// The guest asked for sleep state `slp_typ`: S5 powers off, others are ignored.
    fn sleep(&mut self, slp_typ: u8) -> Option<MachineRequest> {
        if slp_typ == self.s5_slp_typ {
            log::info!("ACPI: guest entered S5 (SLP_TYP {slp_typ})");
            return Some(MachineRequest::PowerOff);
        }
        if !self.other_sleep_logged {
            self.other_sleep_logged = true;
            log::warn!("ACPI: ignoring unsupported sleep type {slp_typ} (logged once)");
        }
        None
    }
}

/// The block offsets covered by an access of `len` bytes at `offset`, paired with the index
/// into the access's data.
fn covered(offset: u64, len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len).filter_map(move |i| {
        let at = offset.checked_add(i as u64)?;
        (at < ACPI_PM_LEN).then_some((at as usize, i))
    })
}

impl DeviceSnapshot for AcpiPm {
    type State = AcpiPmSnapshot;
    const NAME: &'static str = "acpi-pm";
    const STATE_VERSION: u32 = 1;

    /// The registers and the timer's count.
    fn save_state(&self) -> AcpiPmSnapshot {
        AcpiPmSnapshot {
            sts: self.sts,
            en: self.en,
            cnt: self.cnt,
            ticks: self.ticks_at(Instant::now()),
        }
    }

    /// Puts saved registers back; the timer goes on from the saved count.
    fn restore_state(&mut self, saved: &AcpiPmSnapshot) -> Result<(), StateError> {
        let now = Instant::now();
        let elapsed = Duration::from_nanos(
            u64::try_from(u128::from(saved.ticks) * 1_000_000_000 / u128::from(PM_TIMER_HZ))
                .unwrap_or(u64::MAX),
        );
        // A count older than the host's monotonic clock starts the timer at now (it only
        // needs to advance).
        self.start = now.checked_sub(elapsed).unwrap_or(now);
        self.sts = saved.sts;
        self.en = saved.en;
        self.cnt = saved.cnt & CNT_STORED;
        self.tmr_epoch = self.ticks_at(now) >> 23;
        Ok(())
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= ACPI_PM_LEN {
            return;
        }
        let img = self.image(Instant::now());
        for (at, i) in covered(offset, data.len()) {
            data[i] = img[at];
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<MachineRequest> {
        if offset >= ACPI_PM_LEN {
            return None;
        }
        // Current values (for bytes the access does not cover) overlaid with the written ones.
        let mut merged = self.image(Instant::now());
        // Only the written bytes, zero elsewhere (for write-1-to-clear).
        let mut written = [0u8; BLOCK];
        let mut touched = [false; BLOCK];
        for (at, i) in covered(offset, data.len()) {
            merged[at] = data[i];
            written[at] = data[i];
            touched[at] = true;
        }
        let field = |img: &[u8; BLOCK], at: u64| {
            let at = at as usize;
            u16::from_le_bytes([img[at], img[at + 1]])
        };
        let hits = |at: u64, len: u64| (at..at + len).any(|b| touched[b as usize]);

        if hits(PM1A_EVT_OFFSET, 2) {
            self.sts &= !field(&written, PM1A_EVT_OFFSET);
        }
        if hits(PM1A_EN_OFFSET, 2) {
            self.en = field(&merged, PM1A_EN_OFFSET);
        }
        let mut request = None;
        if touched[SLEEP_CONTROL_OFFSET as usize] {
            request = self.write_sleep_control(written[SLEEP_CONTROL_OFFSET as usize]);
        }
        if request.is_none() && hits(PM1A_CNT_OFFSET, 2) {
            // The current value never shows SLP_EN, so only this write can set it.
            request = self.write_cnt(field(&merged, PM1A_CNT_OFFSET));
        }
        let reset_at = RESET_OFFSET as usize;
        if request.is_none() && touched[reset_at] && written[reset_at] == self.reset_value {
            log::info!("ACPI: guest wrote the reset register");
            request = Some(MachineRequest::Reset);
        }
        request
    }
}

/// Whole timer ticks in `d`.
fn ticks_in(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().saturating_mul(u128::from(PM_TIMER_HZ)) / 1_000_000_000)
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S5: u8 = 5;
    const RESET: u8 = 0x0f;

    fn pm() -> AcpiPm {
        AcpiPm::new(S5, RESET)
    }

    fn read_u16(pm: &mut AcpiPm, offset: u64) -> u16 {
        let mut b = [0u8; 2];
        pm.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    fn read_timer(pm: &mut AcpiPm) -> u32 {
        let mut b = [0u8; 4];
        pm.read(PM_TMR_OFFSET, &mut b);
        u32::from_le_bytes(b)
    }

    fn sleep_value(typ: u8) -> u16 {
        (u16::from(typ) << SLP_TYP_SHIFT) | SLP_EN
    }

    #[test]
    fn s5_powers_off_in_every_access_width() {
        let mut pm = pm();
        let v = sleep_value(S5);
        assert_eq!(
            pm.write(PM1A_CNT_OFFSET, &v.to_le_bytes()),
            Some(MachineRequest::PowerOff)
        );
        let wide = u32::from(v).to_le_bytes();
        assert_eq!(
            pm.write(PM1A_CNT_OFFSET, &wide),
            Some(MachineRequest::PowerOff)
        );
        // The high byte alone carries SLP_TYP and SLP_EN.
        assert_eq!(
            pm.write(PM1A_CNT_OFFSET + 1, &[(v >> 8) as u8]),
            Some(MachineRequest::PowerOff)
        );
    }

    #[test]
    fn other_sleep_types_and_slp_typ_alone_do_nothing() {
        let mut pm = pm();
        for typ in (0..8).filter(|&t| t != S5) {
            assert_eq!(
                pm.write(PM1A_CNT_OFFSET, &sleep_value(typ).to_le_bytes()),
                None
            );
        }
        // Linux writes SLP_TYP first, then SLP_EN in a second write.
        let typ_only = u16::from(S5) << SLP_TYP_SHIFT;
        assert_eq!(pm.write(PM1A_CNT_OFFSET, &typ_only.to_le_bytes()), None);
        assert_eq!(read_u16(&mut pm, PM1A_CNT_OFFSET), typ_only | SCI_EN);
        // A low-byte write keeps the stored SLP_TYP but cannot start a sleep by itself.
        assert_eq!(pm.write(PM1A_CNT_OFFSET, &[0x00]), None);
        assert_eq!(
            pm.write(
                PM1A_CNT_OFFSET + 1,
                &[(SLP_EN >> 8) as u8 | (typ_only >> 8) as u8]
            ),
            Some(MachineRequest::PowerOff)
        );
    }

    #[test]
    fn the_sleep_control_register_powers_off_in_s5_only() {
        let mut pm = pm();
        // What edk2's CloudHv firmware writes: SLP_TYP 5 in bits 2..=4, SLP_EN (bit 5).
        assert_eq!(
            pm.write(SLEEP_CONTROL_OFFSET, &[(S5 << 2) | (1 << 5)]),
            Some(MachineRequest::PowerOff)
        );
        for typ in (0..8).filter(|&t| t != S5) {
            assert_eq!(
                pm.write(SLEEP_CONTROL_OFFSET, &[(typ << 2) | (1 << 5)]),
                None
            );
        }
        // SLP_TYP alone, or the status register, do nothing; both read 0.
        assert_eq!(pm.write(SLEEP_CONTROL_OFFSET, &[S5 << 2]), None);
        assert_eq!(pm.write(SLEEP_STATUS_OFFSET, &[0xff]), None);
        assert_eq!(read_u16(&mut pm, SLEEP_CONTROL_OFFSET), 0);
    }

    #[test]
    fn sci_en_reads_one_and_slp_en_reads_zero() {
        let mut pm = pm();
        assert_eq!(read_u16(&mut pm, PM1A_CNT_OFFSET), SCI_EN);
        pm.write(PM1A_CNT_OFFSET, &sleep_value(1).to_le_bytes());
        let cnt = read_u16(&mut pm, PM1A_CNT_OFFSET);
        assert_eq!(cnt & SCI_EN, SCI_EN);
        assert_eq!(cnt & SLP_EN, 0);
        let mut b = [0u8; 1];
        pm.read(PM1A_CNT_OFFSET, &mut b);
        assert_eq!(b[0] & 1, 1);
    }

    #[test]
    fn timer_advances_at_the_pm_rate() {
        let mut pm = pm();
        let expected = ticks_in(Duration::from_millis(2)); // 7159
        let before = Instant::now();
        let t0 = read_timer(&mut pm);
        std::thread::sleep(Duration::from_millis(2));
        let t1 = read_timer(&mut pm);
        let outer = ticks_in(before.elapsed());
        assert!(t0 <= 0xff_ffff && t1 <= 0xff_ffff);
        let delta = u64::from(t1.wrapping_sub(t0)) & PM_TIMER_MASK;
        assert!(delta >= expected / 2, "delta {delta} < {}", expected / 2);
        // Within +50% unless the host stalled us for longer than that.
        let max = (expected * 3 / 2).max(outer + 1);
        assert!(delta <= max, "delta {delta} > {max}");
    }

    #[test]
    fn timer_wraps_at_24_bits() {
        let pm = pm();
        let wrap = Duration::from_nanos(1 << 24) * 1_000_000_000 / (PM_TIMER_HZ as u32);
        let before = pm.ticks_at(pm.start + wrap - Duration::from_millis(1)) & PM_TIMER_MASK;
        let after = pm.ticks_at(pm.start + wrap + Duration::from_millis(1)) & PM_TIMER_MASK;
        assert!(before > 0xff_0000, "{before:#x}");
        assert!(after < 0x1_0000, "{after:#x}");
        let delta = after.wrapping_sub(before) & PM_TIMER_MASK;
        let expected = ticks_in(Duration::from_millis(2));
        assert!(delta.abs_diff(expected) <= 2, "{delta} vs {expected}");
    }

    #[test]
    fn narrow_timer_reads_see_the_right_bytes() {
        let mut pm = pm();
        pm.start -= Duration::from_secs(1); // ~3.58M ticks: all three bytes non-zero
        let mut bytes = [0u8; 4];
        pm.read(PM_TMR_OFFSET, &mut bytes);
        let mut high = [0u8; 1];
        pm.read(PM_TMR_OFFSET + 2, &mut high);
        assert!(high[0] == bytes[2] || high[0] == bytes[2].wrapping_add(1));
        let mut top = [0xaau8; 1];
        pm.read(PM_TMR_OFFSET + 3, &mut top);
        assert_eq!(top, [0]);
        assert_eq!(pm.write(PM_TMR_OFFSET, &[0; 4]), None);
        assert!(read_timer(&mut pm) >= u32::from_le_bytes(bytes));
    }

    #[test]
    fn reset_register() {
        let mut pm = pm();
        assert_eq!(
            pm.write(RESET_OFFSET, &[RESET]),
            Some(MachineRequest::Reset)
        );
        assert_eq!(pm.write(RESET_OFFSET, &[RESET + 1]), None);
        assert_eq!(pm.write(RESET_OFFSET, &[0]), None);
        assert_eq!(pm.write(RESET_OFFSET + 1, &[RESET]), None);
        // A wider write covering the register counts by its byte at RESET_OFFSET.
        assert_eq!(
            pm.write(RESET_OFFSET, &[RESET, 0, 0, 0]),
            Some(MachineRequest::Reset)
        );
    }

    #[test]
    fn status_is_write_one_to_clear() {
        const PWRBTN_STS: u16 = 1 << 8;
        const WAK_STS: u16 = 1 << 15;
        let mut pm = pm();
        pm.sts = PWRBTN_STS | WAK_STS;
        pm.write(PM1A_EVT_OFFSET, &0u16.to_le_bytes());
        assert_eq!(read_u16(&mut pm, PM1A_EVT_OFFSET), PWRBTN_STS | WAK_STS);
        pm.write(PM1A_EVT_OFFSET, &PWRBTN_STS.to_le_bytes());
        assert_eq!(read_u16(&mut pm, PM1A_EVT_OFFSET), WAK_STS);
        // A 4-byte write covers PM1a_EN too.
        pm.write(PM1A_EVT_OFFSET, &[0, 0x80, 0x21, 0x01]);
        assert_eq!(read_u16(&mut pm, PM1A_EVT_OFFSET), 0);
        assert_eq!(read_u16(&mut pm, PM1A_EN_OFFSET), 0x0121);
        // TMR_STS latches when bit 23 of the counter flips, and clears on a 1 write.
        pm.start -= Duration::from_secs(3);
        assert_eq!(read_u16(&mut pm, PM1A_EVT_OFFSET) & TMR_STS, TMR_STS);
        pm.write(PM1A_EVT_OFFSET, &[TMR_STS as u8]);
        assert_eq!(read_u16(&mut pm, PM1A_EVT_OFFSET) & TMR_STS, 0);
    }
}
