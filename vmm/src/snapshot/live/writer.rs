//! The live snapshot's writer: units in order, up to [`WRITES_IN_FLIGHT`] 1 MiB writes on an
//! io_uring straight from guest memory, each unit released once on disk and its page copies
//! written over the file (see the parent module).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{lock, Shared};
use crate::snapshot::format::{RamExtent, RAM_CHUNK};
use crate::snapshot::ram_io::{is_zero, WrittenRam, WRITES_IN_FLIGHT};
use crate::snapshot::uring::{Done, Write, WriteRing};

/// What an io_uring entry of the writer is for.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// A 1 MiB piece of a unit.
    Bulk { unit: usize },
    /// A page copy's bytes over an extent (`last`: the copy's slot is free once written).
    Overlay { slot: usize, last: bool },
}

pub(super) struct Writer<'a> {
    shared: &'a Shared,
    progress: &'a AtomicU64,
    ring: WriteRing<Op>,
    /// Writes finished and not yet handled.
    done: Done<Op>,
    /// The first write that failed.
    failed: io::Result<()>,
    bulk_in_flight: usize,
    /// Bulk writes not yet done, per unit.
    pending: Vec<u32>,
    /// Each unit's extents: (first index in `out.extents`, count).
    unit_extents: Vec<(usize, usize)>,
    pub(super) out: WrittenRam,
}

impl<'a> Writer<'a> {
    pub(super) fn new(
        shared: &'a Shared,
        file: &File,
        start: u64,
        progress: &'a AtomicU64,
    ) -> io::Result<Self> {
        Ok(Writer {
            shared,
            progress,
            ring: WriteRing::new(file.as_raw_fd(), 256)?,
            done: Vec::new(),
            failed: Ok(()),
            bulk_in_flight: 0,
            pending: vec![0; shared.units.len()],
            unit_extents: vec![(0, 0); shared.units.len()],
            out: WrittenRam {
                end: start,
                ..Default::default()
            },
        })
    }

    pub(super) fn run(&mut self) -> io::Result<()> {
        for unit in 0..self.shared.units.len() {
            while self.bulk_in_flight >= WRITES_IN_FLIGHT {
                self.reap(1)?;
            }
            self.start_unit(unit)?;
        }
        Ok(())
    }

    /// Computes a unit's chunks as of the instant and queues the non-zero ones; a unit of
    /// zeroes is released at once.
    fn start_unit(&mut self, unit: usize) -> io::Result<()> {
        let shared = self.shared;
        let u = shared.units[unit];
        self.progress.fetch_add(u.len, Ordering::Relaxed);
        let mut st = lock(&shared.state);
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < u.len {
            let len = (u.len - at).min(RAM_CHUNK);
            let mut hasher = crc32fast::Hasher::new();
            let mut zero = true;
            shared.for_each_piece(&st, unit, u.host + at, len, |b| {
                zero = zero && is_zero(b);
                hasher.update(b);
            });
            if zero {
                self.out.zero_chunks += 1;
            } else {
                chunks.push((at, len, hasher.finalize()));
            }
            at += len;
        }
        if chunks.is_empty() {
            let copies = shared.release(&mut st, unit);
            st.free.extend(copies.into_iter().map(|(_, slot)| slot));
            shared.space.notify_all();
            return Ok(());
        }
        drop(st);
        self.pending[unit] = chunks.len() as u32;
        self.unit_extents[unit] = (self.out.extents.len(), chunks.len());
        for (at, len, crc) in chunks {
            self.out.extents.push(RamExtent {
                guest: u.guest + at,
                len,
                offset: self.out.end,
                crc,
            });
            let w = Write {
                src: (u.host + at) as *const u8,
                offset: self.out.end,
                len: len as u32,
            };
            self.ring.push(Op::Bulk { unit }, w, &mut self.done)?;
            self.bulk_in_flight += 1;
            self.out.end += RAM_CHUNK;
        }
        Ok(())
    }

    /// Waits for at least `want` writes and handles every finished one.
    fn reap(&mut self, want: usize) -> io::Result<()> {
        self.ring.reap(want, &mut self.done)?;
        self.handle_done()
    }

    /// Handles finished writes (handling one may queue and finish more).
    fn handle_done(&mut self) -> io::Result<()> {
        while let Some((op, outcome)) = self.done.pop() {
            if self.failed.is_ok() {
                self.failed = outcome;
            }
            match op {
                Op::Bulk { unit } => {
                    self.bulk_in_flight -= 1;
                    self.pending[unit] -= 1;
                    if self.pending[unit] == 0 {
                        self.finish_unit(unit)?;
                    }
                }
                Op::Overlay { slot, last } => {
                    if last {
                        let mut st = lock(&self.shared.state);
                        st.free.push(slot);
                        self.shared.space.notify_all();
                    }
                }
            }
        }
        std::mem::replace(&mut self.failed, Ok(()))
    }

    /// A unit's writes are done: unprotect it and write its page copies over the file.
    fn finish_unit(&mut self, unit: usize) -> io::Result<()> {
        let copies = {
            let mut st = lock(&self.shared.state);
            self.shared.release(&mut st, unit)
        };
        let u = self.shared.units[unit];
        let page = self.shared.page;
        for (host, slot) in copies {
            let guest = u.guest + (host - u.host);
            let (first, count) = self.unit_extents[unit];
            let pieces: Vec<(u64, u64, u64)> = self.out.extents[first..first + count]
                .iter()
                .filter(|e| e.guest < guest + page && guest < e.guest + e.len)
                .map(|e| {
                    let from = e.guest.max(guest);
                    let to = (e.guest + e.len).min(guest + page);
                    (from - guest, to - from, e.offset + (from - e.guest))
                })
                .collect();
            if pieces.is_empty() {
                // Its chunk was all zero at the instant: nothing to write.
                let mut st = lock(&self.shared.state);
                st.free.push(slot);
                self.shared.space.notify_all();
            }
            let count = pieces.len();
            for (i, (within, len, offset)) in pieces.into_iter().enumerate() {
                let src = self.shared.staging.slot(slot).wrapping_add(within as usize);
                let op = Op::Overlay {
                    slot,
                    last: i + 1 == count,
                };
                let w = Write {
                    src,
                    offset,
                    len: len as u32,
                };
                self.ring.push(op, w, &mut self.done)?;
            }
        }
        Ok(())
    }

    pub(super) fn drain(&mut self) -> io::Result<()> {
        let mut first = Ok(());
        while self.ring.in_flight() > 0 || !self.done.is_empty() {
            if let Err(e) = self.reap(1) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}
