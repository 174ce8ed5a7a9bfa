//! The io_uring I/O engine.
//!
//! Every batch given to [`IoEngine::submit`] is pushed to the submission queue and handed to
//! the kernel with a single `io_uring_enter` (more only if the submission queue fills up). The
//! ring has an eventfd registered (`IORING_REGISTER_EVENTFD`), so the event loop can poll
//! [`IoEngine::completion_fd`] and call [`IoEngine::reap`] when it becomes readable.
//!
//! Each operation occupies a slot until its completion is reaped; the slot owns the operation,
//! and with it the iovec array the kernel reads. The number of slots equals the ring size, so
//! the completion queue (twice the ring size) can never overflow. Operations beyond the free
//! slots wait in a backlog and are submitted as completions free slots. A short read or write
//! is reported as such (the handler fails the request).

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::engine::{
    fallocate_fallback, fallocate_mode, Completion, DiskImage, EngineError, IoEngine, IoOp,
};

/// Largest ring the engine creates.
const MAX_RING_ENTRIES: u32 = 4096;

/// Errors specific to the io_uring engine.
#[derive(Debug, thiserror::Error)]
pub enum UringEngineError {
    /// The ring could not be created (kernel without io_uring, or io_uring disabled).
    #[error("cannot create an io_uring with {entries} entries")]
    Create {
        /// Requested number of entries.
        entries: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The completion eventfd could not be created or registered with the ring.
    #[error("cannot set up the completion eventfd")]
    EventFd(#[source] std::io::Error),
}

impl From<UringEngineError> for EngineError {
    fn from(e: UringEngineError) -> Self {
        match e {
            UringEngineError::Create { source, .. } => EngineError::UringSetup(source),
            UringEngineError::EventFd(source) => EngineError::EventFd(source),
        }
    }
}

struct Slot {
    user_data: u64,
    op: IoOp,
}

/// An [`IoEngine`] backed by io_uring.
pub struct UringEngine {
    // Declared first so that it is dropped (after `Drop::drop` drained it) before the slots.
    ring: IoUring,
    disk: Arc<DiskImage>,
    evt: EventFd,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    backlog: VecDeque<(u64, IoOp)>,
    in_flight: usize,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("slots", &self.slots.len())
            .field("in_flight", &self.in_flight)
            .field("backlog", &self.backlog.len())
            .finish()
    }
}

impl UringEngine {
    /// Creates a ring of `depth` entries (rounded up to a power of two, at most 4096) for
    /// `disk`, with a registered completion eventfd.
    pub fn new(disk: Arc<DiskImage>, depth: u32) -> Result<Self, UringEngineError> {
        let entries = depth.clamp(1, MAX_RING_ENTRIES).next_power_of_two();
        let ring =
            IoUring::new(entries).map_err(|source| UringEngineError::Create { entries, source })?;
        let evt = EventFd::new(EFD_NONBLOCK).map_err(UringEngineError::EventFd)?;
        ring.submitter()
            .register_eventfd(evt.as_raw_fd())
            .map_err(UringEngineError::EventFd)?;
        let n = entries as usize;
        Ok(UringEngine {
            ring,
            disk,
            evt,
            slots: (0..n).map(|_| None).collect(),
            free: (0..n).rev().collect(),
            backlog: VecDeque::new(),
            in_flight: 0,
        })
    }

    fn entry(&self, slot: usize, op: &IoOp) -> squeue::Entry {
        let entry = match op {
            IoOp::Read { offset, iovecs } => {
                let fd = types::Fd(self.disk.rw_fd(*offset, iovecs));
                let v = iovecs.as_slice();
                opcode::Readv::new(fd, v.as_ptr(), v.len() as u32)
                    .offset(*offset)
                    .build()
            }
            IoOp::Write {
                offset,
                iovecs,
                dsync,
            } => {
                let fd = types::Fd(self.disk.rw_fd(*offset, iovecs));
                let v = iovecs.as_slice();
                let flags = if *dsync { libc::RWF_DSYNC } else { 0 };
                opcode::Writev::new(fd, v.as_ptr(), v.len() as u32)
                    .offset(*offset)
                    .rw_flags(flags)
                    .build()
            }
            IoOp::Flush => opcode::Fsync::new(types::Fd(self.disk.fd()))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            IoOp::Discard { .. } | IoOp::WriteZeroes { .. } => {
                // fallocate_mode is Some for both variants; (0, 0, 0) is never reached.
                let (mode, offset, len) = fallocate_mode(op).unwrap_or((0, 0, 0));
                opcode::Fallocate::new(types::Fd(self.disk.fd()), len)
                    .offset(offset)
                    .mode(mode)
                    .build()
            }
        };
        entry.user_data(slot as u64)
    }

    /// Moves backlog operations into free slots and the submission queue. Returns how many
    /// entries were queued.
    fn fill(&mut self) -> usize {
        let mut queued = 0;
        while let Some(&slot) = self.free.last() {
            if self.ring.submission().is_full() {
                // Hand what is queued to the kernel to make room; on failure keep the backlog.
                if self.ring.submit().is_err() || self.ring.submission().is_full() {
                    break;
                }
            }
            let Some((user_data, op)) = self.backlog.pop_front() else {
                break;
            };
            let entry = self.entry(slot, &op);
            self.slots[slot] = Some(Slot { user_data, op });
            // SAFETY: the entry references the iovec array owned by `self.slots[slot]`, which
            // stays in place until the completion is reaped (or the ring is drained on drop);
            // the guest buffers stay mapped per the `IoEngine::submit` contract; the descriptors
            // are owned by `self.disk`, which outlives the ring.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                // Cannot happen (checked `is_full` above); put the operation back.
                if let Some(s) = self.slots[slot].take() {
                    self.backlog.push_front((s.user_data, s.op));
                }
                break;
            }
            self.free.pop();
            self.in_flight += 1;
            queued += 1;
        }
        queued
    }

    fn enter(&mut self) -> Result<(), EngineError> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // The kernel is short of resources: the entries stay queued for the next call.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(()),
                Err(e) => return Err(EngineError::UringSubmit(e)),
            }
        }
    }
}

impl IoEngine for UringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    unsafe fn submit(&mut self, ops: &mut Vec<(u64, IoOp)>) -> Result<(), EngineError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.backlog.extend(ops.drain(..));
        if self.fill() > 0 {
            self.enter()?;
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        let mut freed = false;
        for cqe in self.ring.completion() {
            let Ok(idx) = usize::try_from(cqe.user_data()) else {
                continue;
            };
            let Some(slot) = self.slots.get_mut(idx).and_then(Option::take) else {
                log::error!("virtio-blk: io_uring completion for unknown slot {idx}");
                continue;
            };
            let result = fallocate_fallback(&self.disk, &slot.op, i64::from(cqe.result()));
            out.push(Completion {
                user_data: slot.user_data,
                result,
            });
            self.free.push(idx);
            self.in_flight = self.in_flight.saturating_sub(1);
            freed = true;
        }
        if freed && !self.backlog.is_empty() && self.fill() > 0 {
            self.enter()?;
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.in_flight + self.backlog.len()
    }

    fn completion_fd(&self) -> &EventFd {
        &self.evt
    }

    fn drain(&mut self) {
        self.backlog.clear();
        let mut scratch = Vec::new();
        while self.in_flight > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-blk: cannot wait for in-flight io_uring I/O: {e}");
                    return;
                }
            }
            scratch.clear();
            // Backlog is empty, so reap never submits and cannot fail.
            let _ = self.reap(&mut scratch);
        }
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        self.drain();
    }
}
