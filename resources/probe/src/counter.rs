//! `counter`: counts from 1 to `to` in a static u64 (one store per step), printing the value
//! and the guest TSC every `every` steps. The first line gives the counter's guest physical
//! address (the probe is identity-mapped), so a test can read the value a snapshot saved
//! and check that a restored guest goes on from exactly there.

use crate::cmd::show;
use crate::err;
use crate::error::Result;
use crate::io::rdtsc;
use crate::json::Line;

/// Parsed `counter` arguments.
#[derive(Clone, Copy)]
pub struct Args {
    pub to: u64,
    pub every: u64,
}

/// The counter a snapshot catches mid-flight.
static mut COUNTER: u64 = 0;

fn number(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |a, &c| {
        c.is_ascii_digit().then(|| a * 10 + (c - b'0') as u64)
    })
}

/// Parses `to=N,every=K` (both required, 1 <= K <= N).
pub fn parse(args: Option<&[u8]>) -> Result<Args> {
    let (mut to, mut every) = (None, None);
    for arg in args.unwrap_or(b"").split(|&c| c == b',') {
        if let Some(v) = arg.strip_prefix(b"to=").and_then(number) {
            to = Some(v);
        } else if let Some(v) = arg.strip_prefix(b"every=").and_then(number) {
            every = Some(v);
        } else {
            return Err(err!("bad argument '{}' for counter", show(arg)));
        }
    }
    match (to, every) {
        (Some(to), Some(every)) if every >= 1 && every <= to => Ok(Args { to, every }),
        _ => Err(err!("counter needs to=N,every=K with 1 <= K <= N")),
    }
}

pub fn run(a: &Args) -> Result<()> {
    let counter = core::ptr::addr_of_mut!(COUNTER);
    let mut l = Line::new();
    l.raw("{\"cmd\":\"counter\",\"addr\":")
        .hex(counter as u64)
        .raw(",\"every\":")
        .num(a.every)
        .raw("}");
    l.finish()?;
    let mut i = 0u64;
    while i < a.to {
        i += 1;
        // SAFETY: the probe is single-threaded here and nothing else refers to COUNTER; a
        // volatile store keeps every step in memory, where a snapshot finds it.
        unsafe { counter.write_volatile(i) };
        if i % a.every == 0 {
            let mut l = Line::new();
            l.raw("{\"cmd\":\"counter\",\"value\":")
                .num(i)
                .raw(",\"tsc\":")
                .num(rdtsc())
                .raw("}");
            l.finish()?;
        }
    }
    Ok(())
}
