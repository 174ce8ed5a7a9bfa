//! Command-line parsing (`probe.cmd=NAME[:key=value,...]`) and the command dispatcher.

use crate::acpi::{self, Acpi};
use crate::bootinfo::{self, BootInfo};
use crate::err;
use crate::error::Result;
use crate::io::rdtsc;
use crate::json::Line;
use crate::tsc::{self, Tsc};
use crate::{blk, blkargs, clock, counter, cpuid, cpus, dirty, hv, memwalk, numa, pci, power};

const PREFIX: &[u8] = b"probe.cmd=";
const MAX_CMDS: usize = 64;
const MAX_SPIN_MS: u64 = 3_600_000;

/// One parsed command.
#[derive(Clone, Copy)]
pub enum Cmd {
    Boot,
    E820,
    Cmdline,
    Cpus,
    Cpuid,
    Spin { ms: u64 },
    Fault,
    Pci,
    Blk(blkargs::Args),
    Numa,
    Memwalk(memwalk::Args),
    Hv(hv::Args),
    Clock(clock::Args),
    Counter(counter::Args),
    Dirty(dirty::Args),
}

/// State shared by the commands.
pub struct Ctx<'a> {
    pub boot: &'a BootInfo,
    pub acpi: Option<Acpi>,
    tsc: Option<Tsc>,
}

impl Ctx<'_> {
    /// The TSC frequency (calibrated on first use).
    pub fn tsc(&mut self) -> Result<Tsc> {
        if let Some(t) = self.tsc {
            return Ok(t);
        }
        let fadt = self.acpi.as_ref().and_then(|a| a.fadt);
        let t = tsc::calibrate(fadt).ok_or_else(|| err!("no TSC frequency source"))?;
        self.tsc = Some(t);
        Ok(t)
    }
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |a, &c| {
        c.is_ascii_digit().then(|| a * 10 + (c - b'0') as u64)
    })
}

/// A command-line word for error messages.
pub fn show(b: &[u8]) -> &str {
    core::str::from_utf8(b).unwrap_or("<non-utf8>")
}

/// Splits one `key=value` argument of command `cmd`.
pub fn key_value<'a>(cmd: &str, arg: &'a [u8]) -> Result<(&'a [u8], &'a [u8])> {
    match arg.iter().position(|&c| c == b'=') {
        Some(i) => Ok((&arg[..i], &arg[i + 1..])),
        None => Err(err!(
            "{}: bad argument '{}' (want key=value)",
            cmd,
            show(arg)
        )),
    }
}

/// Command `cmd`'s argument `key` as a decimal number in `lo..=hi`.
pub fn num_in(cmd: &str, key: &str, v: &[u8], lo: u64, hi: u64) -> Result<u64> {
    parse_u64(v)
        .filter(|n| (lo..=hi).contains(n))
        .ok_or_else(|| err!("{}: {} '{}' must be {}..{}", cmd, key, show(v), lo, hi))
}

/// Stores the value of command `cmd`'s argument `key` in `slot`; fails if it was given before.
pub fn set_once<T>(cmd: &str, key: &[u8], slot: &mut Option<T>, value: T) -> Result<()> {
    match slot.replace(value) {
        Some(_) => Err(err!("{}: {} given twice", cmd, show(key))),
        None => Ok(()),
    }
}

fn parse_one(spec: &[u8]) -> Result<Cmd> {
    let (name, args) = match spec.iter().position(|&c| c == b':') {
        Some(i) => (&spec[..i], Some(&spec[i + 1..])),
        None => (spec, None),
    };
    let simple = |c: Cmd| match args {
        None => Ok(c),
        Some(_) => Err(err!("command '{}' takes no arguments", show(name))),
    };
    match name {
        b"boot" => simple(Cmd::Boot),
        b"e820" => simple(Cmd::E820),
        b"cmdline" => simple(Cmd::Cmdline),
        b"cpus" => simple(Cmd::Cpus),
        b"cpuid" => simple(Cmd::Cpuid),
        b"fault" => simple(Cmd::Fault),
        b"pci" => simple(Cmd::Pci),
        b"blk" => Ok(Cmd::Blk(blkargs::parse(args)?)),
        b"numa" => simple(Cmd::Numa),
        b"memwalk" => Ok(Cmd::Memwalk(memwalk::parse(args)?)),
        b"hv" => Ok(Cmd::Hv(hv::parse(args)?)),
        b"clock" => Ok(Cmd::Clock(clock::parse(args)?)),
        b"counter" => Ok(Cmd::Counter(counter::parse(args)?)),
        b"dirty" => Ok(Cmd::Dirty(dirty::parse(args)?)),
        b"spin" => {
            let mut ms = None;
            for arg in args.unwrap_or(b"").split(|&c| c == b',') {
                match arg.strip_prefix(b"ms=").and_then(parse_u64) {
                    Some(v) if v <= MAX_SPIN_MS && ms.is_none() => ms = Some(v),
                    _ => return Err(err!("bad argument '{}' for spin", show(arg))),
                }
            }
            let ms = ms.ok_or_else(|| err!("spin needs ms=N"))?;
            Ok(Cmd::Spin { ms })
        }
        _ => Err(err!("unknown command '{}'", show(name))),
    }
}

/// Parses every `probe.cmd=` word; returns how many commands were stored in `out`.
fn parse(cmdline: &[u8], out: &mut [Cmd; MAX_CMDS]) -> Result<usize> {
    let mut n = 0;
    for word in cmdline.split(|c| c.is_ascii_whitespace()) {
        let Some(spec) = word.strip_prefix(PREFIX) else {
            continue;
        };
        if n == MAX_CMDS {
            return Err(err!("more than {} commands", MAX_CMDS));
        }
        out[n] = parse_one(spec)?;
        n += 1;
    }
    if n == 0 {
        out[..4].copy_from_slice(&[Cmd::E820, Cmd::Cmdline, Cmd::Cpus, Cmd::Cpuid]);
        n = 4;
    }
    Ok(n)
}

/// Captures boot info, parses the command line and runs every command in order.
pub fn run_all(kind: u32, ptr: u64) -> Result<()> {
    let mut boot = BootInfo::new();
    let captured = bootinfo::capture(kind, ptr, &mut boot);
    let acpi = acpi::discover(boot.rsdp);
    power::configure(acpi.as_ref().and_then(|a| a.fadt));
    captured?;
    let mut cmds = [Cmd::E820; MAX_CMDS];
    let n = parse(boot.cmdline(), &mut cmds)?;
    let mut ctx = Ctx {
        boot: &boot,
        acpi,
        tsc: None,
    };
    for cmd in &cmds[..n] {
        run(*cmd, &mut ctx)?;
    }
    Ok(())
}

fn run(cmd: Cmd, ctx: &mut Ctx) -> Result<()> {
    match cmd {
        Cmd::Boot => boot(ctx),
        Cmd::E820 => e820(ctx.boot),
        Cmd::Cmdline => cmdline(ctx.boot),
        Cmd::Cpus => cpus::run(ctx),
        Cmd::Cpuid => cpuid::run(),
        Cmd::Spin { ms } => spin(ctx, ms),
        Cmd::Fault => fault(),
        Cmd::Pci => pci::run(ctx.boot, ctx.acpi.as_ref()),
        Cmd::Blk(a) => blk::run(ctx, &a),
        Cmd::Numa => numa::run(ctx),
        Cmd::Memwalk(a) => memwalk::run(ctx, &a),
        Cmd::Hv(a) => hv::run(&a),
        Cmd::Clock(a) => clock::run(ctx, &a),
        Cmd::Counter(a) => counter::run(&a),
        Cmd::Dirty(a) => dirty::run(ctx, &a),
    }
}

fn boot(ctx: &Ctx) -> Result<()> {
    let mut l = Line::new();
    l.raw("{\"cmd\":\"boot\",\"entry\":\"")
        .raw(ctx.boot.entry())
        .raw("\",\"info_addr\":")
        .hex(ctx.boot.info_addr)
        .raw(",\"rsdp\":")
        .hex(ctx.acpi.as_ref().map_or(0, |a| a.rsdp));
    let (kind, addr, slp) = power::describe();
    l.raw(",\"pm1a_cnt\":");
    match kind {
        0 => l.raw("null"),
        1 => l.raw("{\"io\":").hex(addr).raw("}"),
        _ => l.raw("{\"mem\":").hex(addr).raw("}"),
    };
    l.raw(",\"s5_slp_typ\":");
    if slp == 0xff {
        l.raw("null");
    } else {
        l.num(slp as u64);
    }
    l.raw("}");
    l.finish()
}

fn e820(boot: &BootInfo) -> Result<()> {
    let mut l = Line::new();
    l.raw("{\"cmd\":\"e820\",\"source\":\"")
        .raw(boot.source())
        .raw("\",\"entries\":[");
    for (i, e) in boot.e820().iter().enumerate() {
        if i > 0 {
            l.raw(",");
        }
        l.raw("{\"addr\":")
            .num(e.addr)
            .raw(",\"size\":")
            .num(e.size)
            .raw(",\"type\":")
            .num(e.kind as u64)
            .raw("}");
    }
    l.raw("]}");
    l.finish()
}

fn cmdline(boot: &BootInfo) -> Result<()> {
    let mut l = Line::new();
    l.raw("{\"cmd\":\"cmdline\",\"cmdline\":")
        .string(boot.cmdline());
    if boot.cmdline_truncated {
        l.raw(",\"truncated\":true");
    }
    l.raw("}");
    l.finish()
}

fn spin(ctx: &mut Ctx, ms: u64) -> Result<()> {
    let tsc = ctx.tsc()?;
    let ticks = tsc.khz.saturating_mul(ms);
    let start = rdtsc();
    let mut iterations = 0u64;
    while rdtsc().wrapping_sub(start) < ticks {
        iterations += 1;
    }
    let mut l = Line::new();
    l.raw("{\"cmd\":\"spin\",\"ms\":")
        .num(ms)
        .raw(",\"tsc_khz\":")
        .num(tsc.khz)
        .raw(",\"tsc_source\":\"")
        .raw(tsc.source)
        .raw("\",\"iterations\":")
        .num(iterations)
        .raw("}");
    l.finish()
}

/// Deliberately reads unmapped memory (above the identity map and its device GiB) to test
/// fault reporting.
fn fault() -> Result<()> {
    // SAFETY: not safe by design: the read page-faults and the exception handler takes over
    // (it reports the fault and powers off); control never returns here.
    let v = unsafe { core::ptr::read_volatile(crate::phys::HIGH_MMIO.1 as usize as *const u64) };
    Err(err!("read of unmapped memory returned {:#x}", v))
}
