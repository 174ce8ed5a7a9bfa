//! The `clock` command: a storm of reads of one clock source from CPL3, to show what a guest
//! time read costs: `clock:source=pmtimer|kvmclock|hvtsc,reads=N`.
//!
//! - `pmtimer`: the ACPI PM timer from the FADT. An I/O port read at CPL3 (through the #GP
//!   handler on PVM hosts) or an MMIO read: one exit to the hypervisor per read.
//! - `kvmclock`: KVM's pvclock. MSR_KVM_SYSTEM_TIME_NEW (or the old MSR_KVM_SYSTEM_TIME when
//!   only KVM_FEATURE_CLOCKSOURCE is offered) = address of a pvclock_vcpu_time_info | 1, then
//!   each read is `system_time + scale(rdtsc - tsc_timestamp)` under the version seqlock
//!   (odd = being updated): no exit per read.
//! - `hvtsc`: the Hyper-V reference TSC page. HV_X64_MSR_GUEST_OS_ID is set first, then
//!   HV_X64_MSR_REFERENCE_TSC = page address | 1; each read is
//!   `((rdtsc * scale) >> 64) + offset` (100 ns units) under the page's sequence number
//!   (0 = invalid, the guest would have to fall back to the TIME_REF_COUNT MSR: an error
//!   here): no exit per read.
//!
//! A source the hypervisor does not offer gives `"ok":false` with the reason; the run goes on.
//! Every wait is bounded: a pvclock whose version stays odd, a page that is never written or
//! whose sequence keeps changing ends the command with an error instead of hanging. The
//! paravirtual clocks are disabled again (MSR = 0) at the end.

use crate::acpi::{self, Reg};
use crate::blkargs::num;
use crate::cmd::{show, Ctx};
use crate::err;
use crate::error::{Error, Result};
use crate::hv;
use crate::io::{cpuid, inl, rdtsc};
use crate::json::Line;
use crate::msr::{rdmsr, wrmsr};
use crate::phys;
use crate::pvpage::{self, Page};

/// Most reads.
pub const MAX_READS: u64 = 10_000_000;
/// Reads when `reads` is not given.
const DEFAULT_READS: u64 = 10_000;
/// Attempts per read before a seqlock that never settles is an error.
const MAX_RETRIES: u32 = 1000;
/// How long to wait for the hypervisor to fill a page after enabling it.
const SETUP_WAIT_US: u64 = 100_000;

const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";
const HV_SIGNATURE: &[u8; 12] = b"Microsoft Hv";
const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const KVM_FEATURE_CLOCKSOURCE: u32 = 1 << 0;
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
/// CPUID 0x40000003 EAX: AccessPartitionReferenceTsc.
const HV_ACCESS_REFERENCE_TSC: u32 = 1 << 9;
const PM_TIMER_HZ: u64 = 3_579_545;

/// Clock sources.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Source {
    PmTimer,
    KvmClock,
    HvTsc,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::PmTimer => "pmtimer",
            Source::KvmClock => "kvmclock",
            Source::HvTsc => "hvtsc",
        }
    }
}

/// Parsed `clock` arguments.
#[derive(Clone, Copy)]
pub struct Args {
    pub source: Source,
    pub reads: u64,
}

/// Parses the part after `clock:`; `source` is required.
pub fn parse(args: Option<&[u8]>) -> Result<Args> {
    let args = args.ok_or_else(|| err!("clock needs source=pmtimer|kvmclock|hvtsc"))?;
    let (mut source, mut reads) = (None, None);
    for arg in args.split(|&c| c == b',') {
        let (k, v) = match arg.iter().position(|&c| c == b'=') {
            Some(i) => (&arg[..i], &arg[i + 1..]),
            None => return Err(err!("clock: bad argument '{}' (want key=value)", show(arg))),
        };
        let dup = match k {
            b"source" => {
                let s = match v {
                    b"pmtimer" => Source::PmTimer,
                    b"kvmclock" => Source::KvmClock,
                    b"hvtsc" => Source::HvTsc,
                    _ => return Err(err!("clock: unknown source '{}'", show(v))),
                };
                source.replace(s).is_some()
            }
            b"reads" => {
                let n = num(v).filter(|&n| (1..=MAX_READS).contains(&n));
                let n =
                    n.ok_or_else(|| err!("clock: reads '{}' must be 1..{}", show(v), MAX_READS))?;
                reads.replace(n).is_some()
            }
            _ => return Err(err!("clock: unknown argument '{}'", show(k))),
        };
        if dup {
            return Err(err!("clock: {} given twice", show(k)));
        }
    }
    Ok(Args {
        source: source.ok_or_else(|| err!("clock needs source=pmtimer|kvmclock|hvtsc"))?,
        reads: reads.unwrap_or(DEFAULT_READS),
    })
}

/// A clock being read: `read` returns the current value in the source's own unit, or an
/// error message when the source stops giving valid readings.
trait Clock {
    fn read(&mut self) -> core::result::Result<u64, &'static str>;
    /// Converts a difference of two readings to nanoseconds.
    fn to_ns(&self, delta: u64) -> u64;
}

/// rdtsc that is not executed before the loads preceding it (as Linux's `rdtsc_ordered`).
fn rdtsc_ordered() -> u64 {
    // SAFETY: LFENCE (SSE2, always present on x86-64) has no effect but ordering.
    unsafe { core::arch::x86_64::_mm_lfence() };
    rdtsc()
}

/// The ACPI PM timer, extended to 64 bits by adding up masked differences.
struct PmTimer {
    reg: Reg,
    mask: u32,
    prev: u32,
    ext: u64,
    /// Steps of more than half the counter range: the timer went backwards (or stalled for
    /// longer than half its period, which a storm of reads cannot do).
    backwards: u64,
}

impl PmTimer {
    fn raw(&self) -> u32 {
        let v = match self.reg {
            Reg::Io(p) => inl(p),
            Reg::Mem(a) => phys::mmio_read32(a),
        };
        v & self.mask
    }
}

impl Clock for PmTimer {
    fn read(&mut self) -> core::result::Result<u64, &'static str> {
        let now = self.raw();
        let d = now.wrapping_sub(self.prev) & self.mask;
        if d > self.mask / 2 {
            self.backwards += 1;
        } else {
            self.ext = self.ext.wrapping_add(u64::from(d));
        }
        self.prev = now;
        Ok(self.ext)
    }

    fn to_ns(&self, delta: u64) -> u64 {
        (u128::from(delta) * 1_000_000_000 / u128::from(PM_TIMER_HZ)) as u64
    }
}

/// kvmclock: pvclock_vcpu_time_info {u32 version; u32 pad; u64 tsc_timestamp; u64
/// system_time; u32 tsc_to_system_mul; i8 tsc_shift; u8 flags; u8 pad[2]}.
struct KvmClock {
    page: &'static Page,
    retries: u64,
}

impl KvmClock {
    fn flags(&self) -> u8 {
        (self.page.read32(28) >> 8) as u8
    }
}

/// `delta` scaled by `mul / 2^32` after shifting by `shift` (pvclock_scale_delta).
fn pvclock_scale(delta: u64, mul: u32, shift: i8) -> u64 {
    let amount = u32::from(shift.unsigned_abs());
    let d = if shift < 0 {
        delta.checked_shr(amount).unwrap_or(0)
    } else {
        delta.checked_shl(amount).unwrap_or(0)
    };
    ((u128::from(d) * u128::from(mul)) >> 32) as u64
}

impl Clock for KvmClock {
    fn read(&mut self) -> core::result::Result<u64, &'static str> {
        for _ in 0..MAX_RETRIES {
            let v1 = self.page.read32(0);
            if v1 & 1 == 0 {
                let tsc_timestamp = self.page.read64(8);
                let system_time = self.page.read64(16);
                let mul = self.page.read32(24);
                let shift = self.page.read32(28) as u8 as i8;
                let tsc = rdtsc_ordered();
                if self.page.read32(0) == v1 {
                    let delta = tsc.wrapping_sub(tsc_timestamp);
                    return Ok(system_time.wrapping_add(pvclock_scale(delta, mul, shift)));
                }
            }
            self.retries += 1;
        }
        Err("pvclock version odd or changing on every read")
    }

    fn to_ns(&self, delta: u64) -> u64 {
        delta
    }
}

/// Hyper-V reference TSC page: {u32 tsc_sequence; u32 reserved; u64 tsc_scale; i64
/// tsc_offset}.
struct HvTsc {
    page: &'static Page,
    retries: u64,
}

impl Clock for HvTsc {
    fn read(&mut self) -> core::result::Result<u64, &'static str> {
        for _ in 0..MAX_RETRIES {
            let seq = self.page.read32(0);
            if seq != 0 {
                let scale = self.page.read64(8);
                let offset = self.page.read64(16);
                let tsc = rdtsc_ordered();
                if self.page.read32(0) == seq {
                    let t = ((u128::from(tsc) * u128::from(scale)) >> 64) as u64;
                    return Ok(t.wrapping_add(offset));
                }
            }
            self.retries += 1;
        }
        Err("reference TSC page sequence 0 (invalid) or changing on every read")
    }

    fn to_ns(&self, delta: u64) -> u64 {
        delta.saturating_mul(100)
    }
}

/// What a storm measured.
struct Storm {
    first: u64,
    last: u64,
    backwards: u64,
    ticks: u64,
}

/// Reads `clock` `reads` times (at least once).
fn storm<C: Clock>(clock: &mut C, reads: u64) -> core::result::Result<Storm, &'static str> {
    let t0 = rdtsc();
    let first = clock.read()?;
    let mut prev = first;
    let mut backwards = 0;
    for _ in 1..reads {
        let v = clock.read()?;
        if v < prev {
            backwards += 1;
        }
        prev = v;
    }
    let ticks = rdtsc().wrapping_sub(t0);
    Ok(Storm {
        first,
        last: prev,
        backwards,
        ticks,
    })
}

/// Source-specific facts for the output.
enum Detail {
    Pm {
        reg: Reg,
        bits: u32,
    },
    Kvm {
        msr: u32,
        features: u32,
        flags: u8,
    },
    Hv {
        privileges: u32,
        guest_os_id_ok: bool,
        sequence: u32,
        scale: u64,
        offset: u64,
    },
}

/// A successful storm.
struct Measured {
    storm: Storm,
    unit: &'static str,
    clock_elapsed_ns: u64,
    backwards: u64,
    retries: u64,
    detail: Detail,
}

/// Runs the storm; also returns the clock's own elapsed time in ns.
fn measure<C: Clock>(clock: &mut C, reads: u64) -> core::result::Result<(Storm, u64), Error> {
    let s = storm(clock, reads).map_err(|m| err!("{}", m))?;
    let ns = clock.to_ns(s.last.wrapping_sub(s.first));
    Ok((s, ns))
}

fn pmtimer(ctx: &Ctx, reads: u64) -> core::result::Result<Measured, Error> {
    let fadt = ctx.acpi.as_ref().and_then(|a| a.fadt);
    let fadt = fadt.ok_or_else(|| err!("no ACPI FADT"))?;
    let (reg, wide) = acpi::pm_timer(fadt).ok_or_else(|| err!("no PM timer in the FADT"))?;
    if let Reg::Mem(a) = reg {
        if a >= phys::LIMIT - 4 || !a.is_multiple_of(4) {
            return Err(err!(
                "PM timer at {:#x}: not an aligned address below 4 GiB",
                a
            ));
        }
    }
    let mask = if wide { u32::MAX } else { 0x00ff_ffff };
    let mut pm = PmTimer {
        reg,
        mask,
        prev: 0,
        ext: 0,
        backwards: 0,
    };
    pm.prev = pm.raw();
    pm.ext = u64::from(pm.prev);
    let (storm, clock_elapsed_ns) = measure(&mut pm, reads)?;
    Ok(Measured {
        storm,
        unit: "pm_ticks",
        clock_elapsed_ns,
        backwards: pm.backwards,
        retries: 0,
        detail: Detail::Pm {
            reg,
            bits: if wide { 32 } else { 24 },
        },
    })
}

/// Waits (bounded) until `ready` holds; false on timeout.
fn wait_for(khz: u64, mut ready: impl FnMut() -> bool) -> bool {
    let start = rdtsc();
    let ticks = khz.saturating_mul(SETUP_WAIT_US) / 1000;
    for _ in 0..100_000_000u32 {
        if ready() {
            return true;
        }
        if rdtsc().wrapping_sub(start) > ticks {
            break;
        }
        core::hint::spin_loop();
    }
    ready()
}

fn kvmclock(khz: u64, reads: u64) -> core::result::Result<Measured, Error> {
    let r = hv::find(KVM_SIGNATURE).ok_or_else(|| err!("no KVM CPUID signature"))?;
    if r.max < r.base + 1 {
        return Err(err!("KVM features leaf {:#x} not offered", r.base + 1));
    }
    let features = cpuid(r.base + 1, 0)[0];
    let msr = if features & KVM_FEATURE_CLOCKSOURCE2 != 0 {
        MSR_KVM_SYSTEM_TIME_NEW
    } else if features & KVM_FEATURE_CLOCKSOURCE != 0 {
        MSR_KVM_SYSTEM_TIME
    } else {
        return Err(err!(
            "kvmclock not offered (KVM features {:#x}: neither bit 0 nor bit 3)",
            features
        ));
    };
    let page = &pvpage::KVMCLOCK;
    page.clear(32);
    if !wrmsr(msr, page.addr() | 1) {
        return Err(err!("wrmsr {:#x} faulted", msr));
    }
    let result = kvmclock_storm(page, khz, reads, msr, features);
    // Best effort: stop the hypervisor's updates (a fault here changes nothing).
    let _ = wrmsr(msr, 0);
    result
}

fn kvmclock_storm(
    page: &'static Page,
    khz: u64,
    reads: u64,
    msr: u32,
    features: u32,
) -> core::result::Result<Measured, Error> {
    if !wait_for(khz, || page.read32(0) != 0) {
        return Err(err!(
            "pvclock at {:#x} not written within {} us of enabling it (msr {:#x} = {:x?})",
            page.addr(),
            SETUP_WAIT_US,
            msr,
            rdmsr(msr)
        ));
    }
    let mut c = KvmClock { page, retries: 0 };
    let (storm, clock_elapsed_ns) = measure(&mut c, reads)?;
    Ok(Measured {
        storm,
        unit: "ns",
        clock_elapsed_ns,
        backwards: 0,
        retries: c.retries,
        detail: Detail::Kvm {
            msr,
            features,
            flags: c.flags(),
        },
    })
}

fn hvtsc(khz: u64, reads: u64) -> core::result::Result<Measured, Error> {
    let r = hv::find(HV_SIGNATURE).ok_or_else(|| err!("no Hyper-V CPUID signature"))?;
    if r.max < r.base + 3 {
        return Err(err!("Hyper-V features leaf {:#x} not offered", r.base + 3));
    }
    let privileges = cpuid(r.base + 3, 0)[0];
    if privileges & HV_ACCESS_REFERENCE_TSC == 0 {
        return Err(err!(
            "no AccessPartitionReferenceTsc privilege (CPUID {:#x} EAX {:#x}, bit 9 clear)",
            r.base + 3,
            privileges
        ));
    }
    let guest_os_id_ok = wrmsr(hv::HV_GUEST_OS_ID, hv::GUEST_OS_ID);
    let page = &pvpage::HV_TSC;
    page.clear(24);
    if !wrmsr(hv::HV_REFERENCE_TSC, page.addr() | 1) {
        return Err(err!("wrmsr {:#x} faulted", hv::HV_REFERENCE_TSC));
    }
    let result = hvtsc_storm(page, khz, reads, privileges, guest_os_id_ok);
    // Best effort: stop the hypervisor's updates (a fault here changes nothing).
    let _ = wrmsr(hv::HV_REFERENCE_TSC, 0);
    result
}

fn hvtsc_storm(
    page: &'static Page,
    khz: u64,
    reads: u64,
    privileges: u32,
    guest_os_id_ok: bool,
) -> core::result::Result<Measured, Error> {
    if !wait_for(khz, || page.read32(0) != 0) {
        return Err(err!(
            "reference TSC page at {:#x} invalid (sequence 0) {} us after enabling it \
             (msr {:#x} = {:x?})",
            page.addr(),
            SETUP_WAIT_US,
            hv::HV_REFERENCE_TSC,
            rdmsr(hv::HV_REFERENCE_TSC)
        ));
    }
    let mut c = HvTsc { page, retries: 0 };
    let (storm, clock_elapsed_ns) = measure(&mut c, reads)?;
    Ok(Measured {
        storm,
        unit: "100ns",
        clock_elapsed_ns,
        backwards: 0,
        retries: c.retries,
        detail: Detail::Hv {
            privileges,
            guest_os_id_ok,
            sequence: page.read32(0),
            scale: page.read64(8),
            offset: page.read64(16),
        },
    })
}

/// Runs the `clock` command.
pub fn run(ctx: &mut Ctx, a: &Args) -> Result<()> {
    let tsc = ctx.tsc()?;
    let m = match a.source {
        Source::PmTimer => pmtimer(ctx, a.reads),
        Source::KvmClock => kvmclock(tsc.khz, a.reads),
        Source::HvTsc => hvtsc(tsc.khz, a.reads),
    };
    let mut l = Line::new();
    l.raw("{\"cmd\":\"clock\",\"source\":\"")
        .raw(a.source.name())
        .raw("\",\"reads\":")
        .num(a.reads);
    let m = match m {
        Ok(m) => m,
        Err(e) => {
            l.raw(",\"ok\":false,\"error\":")
                .string(e.as_bytes())
                .raw("}");
            return l.finish();
        }
    };
    let s = &m.storm;
    let khz = u128::from(tsc.khz.max(1));
    let ticks = u128::from(s.ticks);
    let clamp = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
    let backwards = s.backwards + m.backwards;
    l.raw(",\"ok\":true,\"ns_per_read\":")
        .dec3(clamp(ticks * 1_000_000_000 / (khz * u128::from(a.reads))))
        .raw(",\"unit\":\"")
        .raw(m.unit)
        .raw("\",\"first\":")
        .num(s.first)
        .raw(",\"last\":")
        .num(s.last)
        .raw(",\"monotonic\":")
        .bool(backwards == 0)
        .raw(",\"backwards\":")
        .num(backwards)
        .raw(",\"retries\":")
        .num(m.retries)
        .raw(",\"elapsed_ns\":")
        .num(clamp(ticks * 1_000_000 / khz))
        .raw(",\"clock_elapsed_ns\":")
        .num(m.clock_elapsed_ns)
        .raw(",\"tsc_khz\":")
        .num(tsc.khz);
    match m.detail {
        Detail::Pm { reg, bits } => {
            match reg {
                Reg::Io(p) => l.raw(",\"port\":").hex(u64::from(p)),
                Reg::Mem(a) => l.raw(",\"mmio\":").hex(a),
            };
            l.raw(",\"bits\":").num(u64::from(bits));
        }
        Detail::Kvm {
            msr,
            features,
            flags,
        } => {
            l.raw(",\"msr\":")
                .hex(u64::from(msr))
                .raw(",\"kvm_features\":")
                .hex(u64::from(features))
                .raw(",\"pvclock_flags\":")
                .hex(u64::from(flags));
        }
        Detail::Hv {
            privileges,
            guest_os_id_ok,
            sequence,
            scale,
            offset,
        } => {
            l.raw(",\"hv_privileges\":")
                .hex(u64::from(privileges))
                .raw(",\"guest_os_id_ok\":")
                .bool(guest_os_id_ok)
                .raw(",\"tsc_sequence\":")
                .num(u64::from(sequence))
                .raw(",\"tsc_scale\":")
                .hex(scale)
                .raw(",\"tsc_offset\":")
                .hex(offset);
        }
    }
    l.raw("}");
    l.finish()
}
