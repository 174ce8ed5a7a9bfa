//! The synchronous I/O engine: every operation runs to completion inside `submit`.
//!
//! Reads and writes use `preadv2`/`pwritev2` (with `RWF_DSYNC` for write-through writes) and
//! are retried on `EINTR` and continued after short transfers, so a completion reports either
//! the full length or an error (or a short count at end of file). Completions are queued and the
//! completion eventfd is signalled so the same event loop works with both engines.

use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::engine::{
    fallocate, fallocate_fallback, fallocate_mode, neg_errno, Completion, DiskImage, EngineError,
    IoEngine, IoOp, IoVecs,
};

/// Errors specific to the synchronous engine.
#[derive(Debug, thiserror::Error)]
pub enum SyncEngineError {
    /// The completion eventfd could not be created.
    #[error("cannot create the completion eventfd")]
    EventFd(#[source] std::io::Error),
}

impl From<SyncEngineError> for EngineError {
    fn from(e: SyncEngineError) -> Self {
        match e {
            SyncEngineError::EventFd(io) => EngineError::EventFd(io),
        }
    }
}

/// An [`IoEngine`] executing operations synchronously with plain system calls.
#[derive(Debug)]
pub struct SyncEngine {
    disk: Arc<DiskImage>,
    ready: Vec<Completion>,
    evt: EventFd,
}

impl SyncEngine {
    /// Creates a synchronous engine for `disk`.
    pub fn new(disk: Arc<DiskImage>) -> Result<Self, SyncEngineError> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(SyncEngineError::EventFd)?;
        Ok(SyncEngine {
            disk,
            ready: Vec::new(),
            evt,
        })
    }

    fn execute(&self, op: &mut IoOp) -> i64 {
        match op {
            IoOp::Read { offset, iovecs } => {
                let fd = self.disk.rw_fd(*offset, iovecs);
                rw_loop(fd, *offset, iovecs, false, 0)
            }
            IoOp::Write {
                offset,
                iovecs,
                dsync,
            } => {
                let fd = self.disk.rw_fd(*offset, iovecs);
                let flags = if *dsync { libc::RWF_DSYNC } else { 0 };
                rw_loop(fd, *offset, iovecs, true, flags)
            }
            IoOp::Flush => {
                // SAFETY: fdatasync on a descriptor owned by the disk image.
                if unsafe { libc::fdatasync(self.disk.fd()) } == 0 {
                    0
                } else {
                    neg_errno()
                }
            }
            IoOp::Discard { .. } | IoOp::WriteZeroes { .. } => match fallocate_mode(op) {
                Some((mode, offset, len)) => {
                    let r = fallocate(self.disk.fd(), mode, offset, len);
                    fallocate_fallback(&self.disk, op, r)
                }
                None => -i64::from(libc::EINVAL),
            },
        }
    }
}

/// Reads or writes the whole of `iovecs` at `offset`, continuing after short transfers.
/// Returns the number of bytes transferred or a negative errno. The iovec array is consumed
/// (advanced) in the process.
fn rw_loop(fd: i32, offset: u64, iovecs: &mut IoVecs, write: bool, flags: i32) -> i64 {
    let mut done: u64 = 0;
    let mut first = 0usize;
    let vecs = iovecs.as_mut_slice();
    while first < vecs.len() {
        let Ok(pos) = i64::try_from(offset.saturating_add(done)) else {
            return -i64::from(libc::EINVAL);
        };
        let rest = &vecs[first..];
        let count = rest.len().min(super::engine::MAX_IOVECS) as i32;
        // SAFETY: the iovecs describe guest memory that the caller of `submit` keeps mapped
        // until the completion is reaped (the `IoEngine::submit` contract); the kernel checks
        // every address, so a bad pointer yields EFAULT rather than memory corruption here.
        let n = unsafe {
            if write {
                libc::pwritev2(fd, rest.as_ptr(), count, pos, flags)
            } else {
                libc::preadv2(fd, rest.as_ptr(), count, pos, flags)
            }
        };
        if n < 0 {
            let e = neg_errno();
            if e == -i64::from(libc::EINTR) {
                continue;
            }
            return e;
        }
        if n == 0 {
            break; // end of file: report the short count
        }
        let mut n = n as usize;
        done += n as u64;
        while n > 0 && first < vecs.len() {
            let v = &mut vecs[first];
            if n >= v.iov_len {
                n -= v.iov_len;
                first += 1;
            } else {
                // n < iov_len: the advanced pointer stays within the same buffer.
                v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
                v.iov_len -= n;
                n = 0;
            }
        }
        while first < vecs.len() && vecs[first].iov_len == 0 {
            first += 1;
        }
    }
    done as i64
}

impl IoEngine for SyncEngine {
    fn name(&self) -> &'static str {
        "sync"
    }

    unsafe fn submit(&mut self, ops: &mut Vec<(u64, IoOp)>) -> Result<(), EngineError> {
        if ops.is_empty() {
            return Ok(());
        }
        for (user_data, mut op) in ops.drain(..) {
            let result = self.execute(&mut op);
            self.ready.push(Completion { user_data, result });
        }
        self.evt.write(1).map_err(EngineError::EventFd)
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        out.append(&mut self.ready);
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.ready.len()
    }

    fn completion_fd(&self) -> &EventFd {
        &self.evt
    }

    fn drain(&mut self) {
        self.ready.clear();
    }
}
