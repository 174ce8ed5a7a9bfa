//! The `dirty` command: dirties guest RAM at a steady rate, as a workload for live snapshots.
//!
//! `dirty:mbps=N,size=BYTES[,to_s=S]` writes one u64 into each 4 KiB page of a `size`-byte
//! buffer, page after page, wrapping around at its end, paced with the TSC so that N MB/s
//! (10^6 bytes) of distinct pages are dirtied: N * 10^6 / 4096 page writes a second, issued in
//! 1 ms slices (each slice writes the pages due by its start, then the loop spins on `rdtsc`
//! until the next one). Time the guest does not run (a pause, a throttled write fault) is made
//! up only up to [`MAX_BACKLOG_MS`] of writes, so the rate never bursts far above N. With S
//! it stops after its S-th per-second line, else it runs until the VM is stopped.
//!
//! About once a second of TSC time it prints one line: the second's number, the pages written
//! in it and the rate that makes. Console output is kept to that (port I/O is slow on PVM).
//!
//! The buffer comes from the driver-memory arena below 3 GiB, as `memwalk`'s does (see there);
//! `alloc` zeroes it, so every page is faulted in before the first slice. The value written is
//! the write's sequence number plus one, never zero, so a dirtied page is never all-zero.
//! All of it runs at CPL3 with no exits.

use crate::blkargs::bytes;
use crate::cmd::{key_value, num_in, set_once, show, Ctx};
use crate::dma;
use crate::err;
use crate::error::Result;
use crate::io::rdtsc;
use crate::json::Line;
use crate::phys;

/// Bytes per dirtied page.
const PAGE: u64 = 4096;
/// Rate bounds, MB/s.
pub const MAX_MBPS: u64 = 10_000;
/// Longest run with `to_s` (one day).
pub const MAX_TO_S: u64 = 86_400;
/// Missed time made up at most, in ms of writes.
const MAX_BACKLOG_MS: u128 = 10;

/// Parsed `dirty` arguments.
#[derive(Clone, Copy)]
pub struct Args {
    pub mbps: u64,
    pub size: u64,
    pub to_s: Option<u64>,
}

/// Parses the part after `dirty:`; `mbps` and `size` are required.
pub fn parse(args: Option<&[u8]>) -> Result<Args> {
    let args = args.ok_or_else(|| err!("dirty needs mbps=N,size=BYTES"))?;
    let (mut mbps, mut size, mut to_s) = (None, None, None);
    for arg in args.split(|&c| c == b',') {
        let (k, v) = key_value("dirty", arg)?;
        let (slot, value) = match k {
            b"mbps" => (&mut mbps, num_in("dirty", "mbps", v, 1, MAX_MBPS)?),
            b"size" => {
                let s = bytes(v).filter(|&s| s >= PAGE && s % PAGE == 0 && s <= phys::CACHED_LIMIT);
                let s = s.ok_or_else(|| {
                    err!(
                        "dirty: size '{}' must be a multiple of {} in [{}, {:#x}]",
                        show(v),
                        PAGE,
                        PAGE,
                        phys::CACHED_LIMIT
                    )
                })?;
                (&mut size, s)
            }
            b"to_s" => (&mut to_s, num_in("dirty", "to_s", v, 1, MAX_TO_S)?),
            _ => return Err(err!("dirty: unknown argument '{}'", show(k))),
        };
        set_once("dirty", k, slot, value)?;
    }
    Ok(Args {
        mbps: mbps.ok_or_else(|| err!("dirty needs mbps=N"))?,
        size: size.ok_or_else(|| err!("dirty needs size=BYTES"))?,
        to_s,
    })
}

/// Prints one per-second line.
fn report(a: &Args, base: u64, second: u64, pages: u64, ticks: u64, khz: u64) -> Result<()> {
    // MB/s with three decimals: pages * 4096 bytes / (ticks / (khz * 1000)) / 10^6, * 1000.
    let milli = u128::from(pages) * u128::from(PAGE) * u128::from(khz) / u128::from(ticks.max(1));
    let mut l = Line::new();
    l.raw("{\"cmd\":\"dirty\",\"mbps\":")
        .num(a.mbps)
        .raw(",\"size\":")
        .num(a.size)
        .raw(",\"base\":")
        .hex(base)
        .raw(",\"second\":")
        .num(second)
        .raw(",\"pages\":")
        .num(pages)
        .raw(",\"achieved_mbps\":")
        .dec3(u64::try_from(milli).unwrap_or(u64::MAX))
        .raw("}");
    l.finish()
}

/// Runs the `dirty` command.
pub fn run(ctx: &mut Ctx, a: &Args) -> Result<()> {
    let khz = ctx.tsc()?.khz.max(1);
    let (_arena, base) = dma::cached_buffer(ctx.boot, a.size, PAGE, "dirty")?;
    let npages = a.size / PAGE;

    // Pages are due at mbps * 10^6 / 4096 a second, i.e. (ticks * mbps * 10^6) / (4096 * khz
    // * 1000) after `ticks`; `credit` keeps the remainder, in units of that numerator.
    let per_page = u128::from(PAGE) * u128::from(khz) * 1000;
    let per_tick = u128::from(a.mbps) * 1_000_000;
    let max_credit = (per_tick * u128::from(khz) * MAX_BACKLOG_MS).max(per_page);
    let slice = khz; // ticks per ms
    let second = khz.saturating_mul(1000);

    let t0 = rdtsc();
    let (mut last, mut credit) = (t0, 0u128);
    let (mut written, mut sec, mut sec_start, mut sec_pages) = (0u64, 0u64, t0, 0u64);
    loop {
        let now = rdtsc();
        credit = (credit + u128::from(now.wrapping_sub(last)) * per_tick).min(max_credit);
        last = now;
        while credit >= per_page {
            credit -= per_page;
            let page = base + (written % npages) * PAGE;
            written += 1;
            // SAFETY: `page` is a 4 KiB-aligned address inside the `a.size` bytes
            // `cached_buffer` handed out at `base` (written % npages < npages), which nothing
            // else uses (the arena is exclusive and lives until the end of this function);
            // identity mapped and user accessible (see `memwalk`). Volatile, so every write
            // reaches RAM.
            unsafe { core::ptr::write_volatile(page as usize as *mut u64, written) };
            sec_pages += 1;
        }
        let elapsed = now.wrapping_sub(sec_start);
        if elapsed >= second {
            sec += 1;
            report(a, base, sec, sec_pages, elapsed, khz)?;
            sec_start = now;
            sec_pages = 0;
            if a.to_s.is_some_and(|s| sec >= s) {
                return Ok(());
            }
        }
        let next = now.wrapping_add(slice);
        while next.wrapping_sub(rdtsc()) as i64 > 0 {
            core::hint::spin_loop();
        }
    }
}
