//! Writes from memory to a file on an io_uring, each tagged with what it is for. A short
//! write (io_uring may stop early, e.g. while a huge page is being split) goes on with the
//! rest; a write is reported done once all of it is on the file, or failed.

use std::io;

use io_uring::{opcode, types, IoUring};

/// One write: `len` bytes at `src` to file offset `offset`.
#[derive(Debug, Clone, Copy)]
pub struct Write {
    /// Source (guest RAM or a staging buffer, mapped until the write is reaped).
    pub src: *const u8,
    /// File offset.
    pub offset: u64,
    /// Bytes.
    pub len: u32,
}

/// Finished writes: each tag with its outcome.
pub type Done<T> = Vec<(T, io::Result<()>)>;

/// An io_uring of writes to one file.
pub struct WriteRing<T: Copy> {
    ring: IoUring,
    fd: i32,
    ops: Vec<Option<(T, Write)>>,
}

impl<T: Copy> WriteRing<T> {
    /// A ring of `entries` for the file `fd`.
    pub fn new(fd: i32, entries: u32) -> io::Result<Self> {
        Ok(WriteRing {
            ring: IoUring::new(entries)?,
            fd,
            ops: Vec::new(),
        })
    }

    /// Writes queued and not yet reported.
    pub fn in_flight(&self) -> usize {
        self.ops.iter().filter(|o| o.is_some()).count()
    }

    /// Queues `w`; when the submission queue is full, first waits for completions, which go
    /// to `done`.
    pub fn push(&mut self, tag: T, w: Write, done: &mut Done<T>) -> io::Result<()> {
        while self.ring.submission().is_full() {
            self.reap(1, done)?;
        }
        let id = match self.ops.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.ops.push(None);
                self.ops.len() - 1
            }
        };
        let entry = opcode::Write::new(types::Fd(self.fd), w.src, w.len)
            .offset(w.offset)
            .build()
            .user_data(id as u64);
        // SAFETY: the caller keeps `src..src+len` mapped until the write is reaped, and
        // reaps every write before dropping the ring (see the writers' `drain`).
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        self.ops[id] = Some((tag, w));
        Ok(())
    }

    /// Waits for at least `want` completions (as many as are in flight at most) and reports
    /// the writes that finished to `done`; short ones are queued again for the rest.
    pub fn reap(&mut self, want: usize, done: &mut Done<T>) -> io::Result<()> {
        self.ring.submit_and_wait(want.min(self.in_flight()))?;
        let completed: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (id, result) in completed {
            let Some((tag, w)) = self.ops.get_mut(id as usize).and_then(Option::take) else {
                continue;
            };
            let outcome = if result < 0 {
                Err(io::Error::from_raw_os_error(-result))
            } else if result == 0 && w.len > 0 {
                Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "a write wrote nothing",
                ))
            } else if (result as u32) < w.len {
                let n = result as u32;
                let rest = Write {
                    src: w.src.wrapping_add(n as usize),
                    offset: w.offset + u64::from(n),
                    len: w.len - n,
                };
                self.push(tag, rest, done)?;
                continue;
            } else {
                Ok(())
            };
            done.push((tag, outcome));
        }
        Ok(())
    }
}
