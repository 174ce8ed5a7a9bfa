//! The `memwalk` command: dependent random loads over a large buffer of guest RAM, so that TLB
//! misses and page walks dominate and the host's backing page size (4 KiB or 2 MiB) shows.
//!
//! `memwalk:size=BYTES,iters=N[,seed=S]` builds a pointer chase through a random cyclic
//! permutation of the buffer's 64-byte lines (Sattolo's algorithm: one cycle over every line;
//! word 0 of each line holds the address of the next), then times `iters` loads, each of which
//! needs the previous one's value for its address, so no two overlap.
//!
//! Memory: the probe's page tables (`asm/entry.s`) identity-map the first 4 GiB with 2 MiB
//! pages, user-accessible (U/S) everywhere, so this CPL3 code reaches the buffer directly; the
//! top GiB of that map is uncached (the MMIO hole) and RAM above 4 GiB is not mapped at all.
//! The buffer therefore comes from a driver-memory arena (`dma`) over the largest e820
//! usable-RAM range between the probe image (its code, data, stacks and page tables end below
//! 4 MiB) and 3 GiB; the arena is exclusive, so no DMA area or other allocation overlaps it.
//! With 2 MiB guest pages the guest's own page walks are short; the TLB caches the combined
//! guest/host translation at the smaller of the two page sizes, so with 4 KiB host pages a walk
//! over a large buffer misses the TLB on almost every load and pays the host-side walk, and
//! with 2 MiB host pages it mostly does not.
//!
//! Everything here, setup included, runs at CPL3 (natively; only the few CPL0 instructions of
//! `asm/` are emulated on PVM hosts): zeroing the buffer (which also faults in every host page
//! before the timed phase), writing the identity chain and shuffling it take well under a second
//! for 256 MiB.

use crate::blkargs::{bytes, num};
use crate::cmd::{key_value, num_in, set_once, show, Ctx};
use crate::dma;
use crate::err;
use crate::error::Result;
use crate::io::rdtsc;
use crate::json::Line;

/// Bytes per chased line (one cache line; only its first word is used).
const LINE: u64 = 64;
/// Smallest buffer.
pub const MIN_SIZE: u64 = 4096;
/// Most timed loads.
pub const MAX_ITERS: u64 = 1_000_000_000;
/// Default xorshift64 seed.
const DEFAULT_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// Buffer alignment (a guest small page; the arena itself starts on a 2 MiB boundary).
const ALIGN: u64 = 4096;

/// Parsed `memwalk` arguments.
#[derive(Clone, Copy)]
pub struct Args {
    pub size: u64,
    pub iters: u64,
    pub seed: u64,
}

/// Parses the part after `memwalk:`; `size` and `iters` are required.
pub fn parse(args: Option<&[u8]>) -> Result<Args> {
    let args = args.ok_or_else(|| err!("memwalk needs size=BYTES,iters=N"))?;
    let (mut size, mut iters, mut seed) = (None, None, None);
    for arg in args.split(|&c| c == b',') {
        let (k, v) = key_value("memwalk", arg)?;
        let (slot, value) = match k {
            b"size" => {
                let s = bytes(v).filter(|&s| s >= MIN_SIZE && s % LINE == 0);
                let s = s.ok_or_else(|| {
                    err!(
                        "memwalk: size '{}' must be at least {} and a multiple of {}",
                        show(v),
                        MIN_SIZE,
                        LINE
                    )
                })?;
                (&mut size, s)
            }
            b"iters" => (&mut iters, num_in("memwalk", "iters", v, 1, MAX_ITERS)?),
            b"seed" => {
                let s = num(v).filter(|&s| s != 0);
                let s = s.ok_or_else(|| err!("memwalk: seed '{}' must be non-zero", show(v)))?;
                (&mut seed, s)
            }
            _ => return Err(err!("memwalk: unknown argument '{}'", show(k))),
        };
        set_once("memwalk", k, slot, value)?;
    }
    Ok(Args {
        size: size.ok_or_else(|| err!("memwalk needs size=BYTES"))?,
        iters: iters.ok_or_else(|| err!("memwalk needs iters=N"))?,
        seed: seed.unwrap_or(DEFAULT_SEED),
    })
}

/// xorshift64.
fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// A number in `0..n` (n > 0) from a 64-bit random value (multiply-high; bias below 2^-32 for
/// any buffer that fits in the identity map).
fn below(r: u64, n: u64) -> u64 {
    ((u128::from(r) * u128::from(n)) >> 64) as u64
}

/// Writes a single random cycle through every line of `buf` into its first words: Sattolo's
/// shuffle of the identity chain (line i -> line i), in place.
fn build_chain(buf: &mut [u64], base: u64, seed: u64) {
    let words = (LINE / 8) as usize;
    for (i, line) in buf.chunks_exact_mut(words).enumerate() {
        line[0] = base + i as u64 * LINE;
    }
    let lines = buf.len() / words;
    let mut rng = seed;
    for i in (1..lines).rev() {
        let j = below(next_rand(&mut rng), i as u64) as usize;
        buf.swap(i * words, j * words);
    }
}

/// Follows the chain from `start` for `iters` loads; returns where it ended.
fn chase(start: u64, iters: u64) -> u64 {
    let mut p = start;
    for _ in 0..iters {
        // SAFETY: `p` is the address of a line of the buffer: `start` is its first line and
        // every line's first word holds the address of another of its lines (`build_chain`).
        // The buffer is identity mapped, user accessible and 8-byte aligned, and only read
        // here. Volatile, so each load is really issued, in order.
        p = unsafe { core::ptr::read_volatile(p as usize as *const u64) };
    }
    p
}

/// Runs the `memwalk` command.
pub fn run(ctx: &mut Ctx, a: &Args) -> Result<()> {
    let tsc = ctx.tsc()?;
    let t0 = rdtsc();
    // Zeroed, so every host page is faulted in before the timed phase.
    let (_arena, base) = dma::cached_buffer(ctx.boot, a.size, ALIGN, "memwalk")?;
    // SAFETY: `cached_buffer` handed out `a.size` bytes at `base`, 4 KiB aligned, that nothing
    // else uses (the arena is exclusive and lives until the end of this function, past the last
    // use of `buf`); identity mapped and user accessible (see the module doc).
    let buf = unsafe {
        core::slice::from_raw_parts_mut(base as usize as *mut u64, (a.size / 8) as usize)
    };
    build_chain(buf, base, a.seed);
    let t1 = rdtsc();
    let last = chase(base, a.iters);
    let t2 = rdtsc();
    if !(base..base + a.size).contains(&last) || !last.is_multiple_of(LINE) {
        return Err(err!("memwalk: the chain left the buffer (at {:#x})", last));
    }

    let khz = u128::from(tsc.khz.max(1));
    let setup = u128::from(t1.wrapping_sub(t0));
    let ticks = u128::from(t2.wrapping_sub(t1)).max(1);
    let iters = u128::from(a.iters);
    let clamp = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
    let mut l = Line::new();
    l.raw("{\"cmd\":\"memwalk\",\"size\":")
        .num(a.size)
        .raw(",\"iters\":")
        .num(a.iters)
        .raw(",\"seed\":")
        .num(a.seed)
        .raw(",\"base\":")
        .hex(base)
        .raw(",\"lines\":")
        .num(a.size / LINE)
        .raw(",\"ns_per_access\":")
        .dec3(clamp(ticks * 1_000_000_000 / (khz * iters)))
        .raw(",\"accesses_per_sec\":")
        .num(clamp(iters * khz * 1000 / ticks))
        .raw(",\"elapsed_ns\":")
        .num(clamp(ticks * 1_000_000 / khz))
        .raw(",\"setup_ns\":")
        .num(clamp(setup * 1_000_000 / khz))
        .raw(",\"tsc_khz\":")
        .num(tsc.khz)
        .raw("}");
    l.finish()
}
