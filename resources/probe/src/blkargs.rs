//! Arguments of the `blk` command, parsed and validated before any command runs:
//! `blk:disk=N,rw=read|write|randread|randwrite|randrw,bs=4k,iodepth=32,ios=N|runtime=S,
//! verify=0|1,poll=0|1,queues=Q,size=BYTES,offset=BYTES,flush=0|1,seed=N,event_idx=0|1,
//! indirect=0|1,report=probe|fio,name=NAME,bar=0xADDR,bad_head=0|1`. Sizes accept k/m/g suffixes (powers of
//! 1024).

use crate::err;
use crate::error::Result;

/// Access pattern.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Read,
    Write,
    RandRead,
    RandWrite,
    RandRw,
}

impl Mode {
    /// The name used on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Read => "read",
            Mode::Write => "write",
            Mode::RandRead => "randread",
            Mode::RandWrite => "randwrite",
            Mode::RandRw => "randrw",
        }
    }

    /// Whether the pattern writes.
    pub fn writes(self) -> bool {
        matches!(self, Mode::Write | Mode::RandWrite | Mode::RandRw)
    }

    /// Whether offsets are random.
    pub fn random(self) -> bool {
        matches!(self, Mode::RandRead | Mode::RandWrite | Mode::RandRw)
    }
}

/// Output format of the result.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// One `{"cmd":"blk",...}` line.
    Probe,
    /// A fio-shaped JSON document between `KEEL-FIO-*` marker lines (`fio.rs`).
    Fio,
}

/// Longest job name (`name=`).
pub const MAX_NAME: usize = 32;

/// A job name: 1..=MAX_NAME bytes of `[A-Za-z0-9._-]` (so it needs no JSON escaping).
#[derive(Clone, Copy)]
pub struct Name {
    buf: [u8; MAX_NAME],
    len: u8,
}

impl Name {
    /// Validates a name.
    pub fn parse(v: &[u8]) -> Option<Name> {
        let ok = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-');
        if v.is_empty() || v.len() > MAX_NAME || !v.iter().all(|&c| ok(c)) {
            return None;
        }
        let mut buf = [0; MAX_NAME];
        buf[..v.len()].copy_from_slice(v);
        Some(Name {
            buf,
            len: v.len() as u8,
        })
    }

    /// `disk<N>`, the default name.
    pub fn disk(n: u32) -> Name {
        let mut buf = [0; MAX_NAME];
        buf[..4].copy_from_slice(b"disk");
        let mut digits = [0u8; 10];
        let (mut x, mut k) = (n, 0);
        loop {
            digits[k] = b'0' + (x % 10) as u8;
            k += 1;
            x /= 10;
            if x == 0 {
                break;
            }
        }
        for (i, &d) in digits[..k].iter().rev().enumerate() {
            buf[4 + i] = d;
        }
        Name {
            buf,
            len: 4 + k as u8,
        }
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        let b = self.buf.get(..self.len as usize).unwrap_or(&[]);
        core::str::from_utf8(b).unwrap_or("")
    }
}

/// Parsed `blk` arguments.
#[derive(Clone, Copy)]
pub struct Args {
    pub disk: u32,
    pub rw: Mode,
    pub bs: u32,
    pub iodepth: u32,
    pub ios: Option<u64>,
    pub runtime_s: Option<u64>,
    pub verify: bool,
    pub poll: bool,
    pub queues: u16,
    pub size: Option<u64>,
    pub offset: u64,
    pub flush: bool,
    pub seed: u64,
    pub event_idx: bool,
    pub indirect: Option<bool>,
    pub report: Report,
    /// Job name for `report=fio` (None: `disk<N>`).
    pub name: Option<Name>,
    /// Move the disk's BAR 0 here before opening it (4 KiB-aligned, below 5 GiB: the probe maps
    /// the GiB above 4 GiB for devices, where the 64-bit PCI window starts).
    pub bar: Option<u64>,
    /// Before the job, publish a chain head past the queue's end (a broken driver), wait for
    /// the device to ask for a reset, report it, and reset the device.
    pub bad_head: bool,
}

impl Args {
    /// The fio job name: `name`, else `disk<N>`.
    pub fn job_name(&self) -> Name {
        self.name.unwrap_or(Name::disk(self.disk))
    }
}

/// Requests when neither `ios` nor `runtime` is given.
pub const DEFAULT_IOS: u64 = 1000;
pub const MAX_IOS: u64 = 1_000_000_000;
pub const MAX_RUNTIME_S: u64 = 3600;
pub const MAX_IODEPTH: u32 = 1024;

fn show(b: &[u8]) -> &str {
    core::str::from_utf8(b).unwrap_or("<non-utf8>")
}

/// A decimal number (at most 19 digits).
pub fn num(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |a, &c| {
        c.is_ascii_digit().then(|| a * 10 + (c - b'0') as u64)
    })
}

/// A hexadecimal number (1 to 16 digits, no prefix).
fn hex(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 16 {
        return None;
    }
    v.iter().try_fold(0u64, |a, &c| {
        Some(a << 4 | (c as char).to_digit(16)? as u64)
    })
}

/// A byte count with an optional k/m/g suffix (binary), as every probe command takes sizes.
pub fn bytes(v: &[u8]) -> Option<u64> {
    let (digits, mult) = match v.last()? {
        b'k' | b'K' => (&v[..v.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&v[..v.len() - 1], 1 << 20),
        b'g' | b'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num(digits)?.checked_mul(mult)
}

fn flag(v: &[u8]) -> Option<bool> {
    match v {
        b"0" => Some(false),
        b"1" => Some(true),
        _ => None,
    }
}

impl Default for Args {
    fn default() -> Self {
        Args {
            disk: 0,
            rw: Mode::RandRead,
            bs: 4096,
            iodepth: 1,
            ios: None,
            runtime_s: None,
            verify: false,
            poll: false,
            queues: 1,
            size: None,
            offset: 0,
            flush: false,
            seed: 0x2545_f491_4f6c_dd1d,
            event_idx: true,
            indirect: None,
            report: Report::Probe,
            name: None,
            bar: None,
            bad_head: false,
        }
    }
}

/// Every key `blk` takes (each at most once).
const KEYS: [&[u8]; 19] = [
    b"disk",
    b"rw",
    b"bs",
    b"iodepth",
    b"ios",
    b"runtime",
    b"verify",
    b"poll",
    b"queues",
    b"size",
    b"offset",
    b"flush",
    b"seed",
    b"event_idx",
    b"indirect",
    b"report",
    b"name",
    b"bar",
    b"bad_head",
];

/// Parses the part after `blk:` (None: all defaults).
pub fn parse(args: Option<&[u8]>) -> Result<Args> {
    let mut a = Args::default();
    let mut seen = [false; KEYS.len()];
    for arg in args.unwrap_or(b"").split(|&c| c == b',') {
        if arg.is_empty() && args.is_none() {
            continue;
        }
        let (k, v) = match arg.iter().position(|&c| c == b'=') {
            Some(i) => (&arg[..i], &arg[i + 1..]),
            None => return Err(err!("blk: bad argument '{}' (want key=value)", show(arg))),
        };
        let idx = KEYS
            .iter()
            .position(|&key| key == k)
            .ok_or_else(|| err!("blk: unknown argument '{}'", show(k)))?;
        if seen[idx] {
            return Err(err!("blk: {} given twice", show(k)));
        }
        seen[idx] = true;
        if !set_io_shape(&mut a, k, v)? {
            set_option(&mut a, k, v)?;
        }
    }
    check_together(a)
}

/// Sets what shapes the I/O (disk, pattern, sizes, depth, amount); `false` if `k` is not one
/// of those keys.
fn set_io_shape(a: &mut Args, k: &[u8], v: &[u8]) -> Result<bool> {
    let bad = || err!("blk: bad value '{}' for {}", show(v), show(k));
    match k {
        b"disk" => a.disk = num(v).filter(|&d| d < 256).ok_or_else(bad)? as u32,
        b"rw" => {
            a.rw = match v {
                b"read" => Mode::Read,
                b"write" => Mode::Write,
                b"randread" => Mode::RandRead,
                b"randwrite" => Mode::RandWrite,
                b"randrw" => Mode::RandRw,
                _ => return Err(bad()),
            }
        }
        b"bs" => {
            let bs = bytes(v)
                .filter(|&b| (512..=1 << 20).contains(&b) && b % 512 == 0)
                .ok_or_else(|| err!("blk: bs '{}' must be 512..1m, a multiple of 512", show(v)))?;
            a.bs = bs as u32;
        }
        b"iodepth" => {
            a.iodepth = num(v)
                .filter(|&d| (1..=MAX_IODEPTH as u64).contains(&d))
                .ok_or_else(|| err!("blk: iodepth '{}' must be 1..{}", show(v), MAX_IODEPTH))?
                as u32
        }
        b"ios" => {
            let n = num(v).filter(|&n| (1..=MAX_IOS).contains(&n));
            a.ios = Some(n.ok_or_else(|| err!("blk: ios '{}' must be 1..{}", show(v), MAX_IOS))?);
        }
        b"runtime" => {
            let n = num(v).filter(|&n| (1..=MAX_RUNTIME_S).contains(&n));
            a.runtime_s = Some(n.ok_or_else(|| {
                err!(
                    "blk: runtime '{}' must be 1..{} seconds",
                    show(v),
                    MAX_RUNTIME_S
                )
            })?);
        }
        b"queues" => {
            let max = crate::vblk::MAX_QUEUES;
            a.queues = num(v)
                .filter(|&q| (1..=max as u64).contains(&q))
                .ok_or_else(|| err!("blk: queues '{}' must be 1..{}", show(v), max))?
                as u16;
        }
        b"size" => {
            let s = bytes(v).filter(|&s| s > 0 && s % 512 == 0);
            a.size = Some(s.ok_or_else(|| {
                err!("blk: size '{}' must be a positive multiple of 512", show(v))
            })?);
        }
        b"offset" => {
            a.offset = bytes(v)
                .filter(|&s| s % 512 == 0)
                .ok_or_else(|| err!("blk: offset '{}' must be a multiple of 512", show(v)))?
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Sets the other keys: checks, polling, flushes, ring features, output, the BAR move.
fn set_option(a: &mut Args, k: &[u8], v: &[u8]) -> Result<()> {
    let bad = || err!("blk: bad value '{}' for {}", show(v), show(k));
    match k {
        b"verify" => a.verify = flag(v).ok_or_else(bad)?,
        b"poll" => a.poll = flag(v).ok_or_else(bad)?,
        b"flush" => a.flush = flag(v).ok_or_else(bad)?,
        b"seed" => a.seed = num(v).filter(|&s| s != 0).ok_or_else(bad)?,
        b"event_idx" => a.event_idx = flag(v).ok_or_else(bad)?,
        b"indirect" => a.indirect = Some(flag(v).ok_or_else(bad)?),
        b"bad_head" => a.bad_head = flag(v).ok_or_else(bad)?,
        b"report" => {
            a.report = match v {
                b"probe" => Report::Probe,
                b"fio" => Report::Fio,
                _ => return Err(bad()),
            }
        }
        b"name" => {
            a.name = Some(Name::parse(v).ok_or_else(|| {
                err!(
                    "blk: name '{}' must be 1..{} bytes of [A-Za-z0-9._-]",
                    show(v),
                    MAX_NAME
                )
            })?)
        }
        b"bar" => {
            let addr = v
                .strip_prefix(b"0x")
                .and_then(hex)
                .filter(|&x| x > 0 && x < crate::phys::HIGH_MMIO.1 && x % 4096 == 0);
            a.bar = Some(addr.ok_or_else(|| {
                err!(
                    "blk: bar '{}' must be a 4 KiB-aligned 0x address below 5 GiB",
                    show(v)
                )
            })?);
        }
        _ => return Err(err!("blk: unknown argument '{}'", show(k))),
    }
    Ok(())
}

/// Checks the arguments against each other; fills in the default amount.
fn check_together(mut a: Args) -> Result<Args> {
    if a.ios.is_some() && a.runtime_s.is_some() {
        return Err(err!("blk: give ios or runtime, not both"));
    }
    if a.ios.is_none() && a.runtime_s.is_none() {
        a.ios = Some(DEFAULT_IOS);
    }
    if let Some(s) = a.size {
        if s < a.bs as u64 {
            return Err(err!("blk: size {} is smaller than bs {}", s, a.bs));
        }
    }
    if a.offset.checked_add(a.size.unwrap_or(0)).is_none() {
        return Err(err!("blk: offset + size overflows"));
    }
    Ok(a)
}
