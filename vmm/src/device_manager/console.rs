//! Guest console output that can never block a vCPU. The UART's transmitter writes into a
//! bounded buffer ([`ConsoleOutput`]); a `keel-console` thread drains it into the real sink
//! (stdout or a file). A reader that is gone, stopped (Ctrl-S) or slow stalls only that thread:
//! once the buffer is full further guest bytes are dropped and counted, and the guest, SIGTERM,
//! the API and shutdown all carry on.
//!
//! At the end of the VM, [`ConsoleDrain::finish`] gives the thread a bounded time to write
//! what is left, so a guest's last lines reach a reader that keeps up, and leaves the thread
//! behind (blocked in a write that may never return) if the reader does not.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Guest output held while the sink is slow; beyond it bytes are dropped.
pub const CONSOLE_BUFFER: usize = 64 * 1024;

/// Most bytes the drain thread writes at once.
const CHUNK: usize = 4096;

#[derive(Default)]
struct State {
    bytes: VecDeque<u8>,
    /// Guest bytes dropped because the buffer was full.
    dropped: u64,
    /// No more bytes will come: drain what is left and stop.
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The UART's sink: appends to the buffer and never blocks (beyond a short lock).
pub struct ConsoleOutput {
    shared: Arc<Shared>,
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        let room = CONSOLE_BUFFER.saturating_sub(state.bytes.len());
        let kept = room.min(buf.len());
        state.bytes.extend(&buf[..kept]);
        let lost = (buf.len() - kept) as u64;
        if lost > 0 && state.dropped == 0 {
            log::warn!(
                "serial: the console reader is not keeping up; guest output is being dropped"
            );
        }
        state.dropped += lost;
        drop(state);
        self.shared.ready.notify_one();
        // The guest's bytes are taken (kept or counted as dropped) either way.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The drain thread of one console.
pub struct ConsoleDrain {
    shared: Arc<Shared>,
    done: mpsc::Receiver<()>,
}

impl ConsoleDrain {
    /// Closes the console and waits up to `limit` for the thread to write what is left.
    /// Returns the number of guest bytes that never reached the sink.
    pub fn finish(self, limit: Duration) -> u64 {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
        let drained = self.done.recv_timeout(limit).is_ok();
        let state = self.shared.lock();
        let lost = state.dropped + state.bytes.len() as u64;
        if !drained {
            log::warn!(
                "serial: the console reader did not take the last {} bytes within {} s",
                state.bytes.len(),
                limit.as_secs()
            );
        }
        if lost > 0 {
            log::warn!("serial: {lost} bytes of guest console output were dropped");
        }
        lost
    }
}

/// Starts the drain thread writing into `sink`.
pub fn spawn(sink: Box<dyn Write + Send>) -> io::Result<(ConsoleOutput, ConsoleDrain)> {
    let shared = Arc::new(Shared::default());
    let (tx, done) = mpsc::channel();
    let thread_shared = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("keel-console".into())
        .spawn(move || {
            drain(&thread_shared, sink);
            let _ = tx.send(());
        })?;
    Ok((
        ConsoleOutput {
            shared: Arc::clone(&shared),
        },
        ConsoleDrain { shared, done },
    ))
}

/// Moves bytes from the buffer to `sink` until the console is closed and empty. After a
/// write error, bytes are discarded (counted as dropped) so the buffer never fills for good.
fn drain(shared: &Shared, mut sink: Box<dyn Write + Send>) {
    let mut broken = false;
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        {
            let mut state = shared.lock();
            while state.bytes.is_empty() && !state.closed {
                state = shared
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.bytes.is_empty() {
                return;
            }
            let n = state.bytes.len().min(CHUNK);
            chunk.clear();
            chunk.extend(state.bytes.drain(..n));
            if broken {
                state.dropped += n as u64;
                continue;
            }
        }
        if let Err(e) = sink.write_all(&chunk).and_then(|()| sink.flush()) {
            log::warn!("serial: cannot write console output: {e} (further output is dropped)");
            shared.lock().dropped += chunk.len() as u64;
            broken = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink tests can look into, that can be made to block until released.
    #[derive(Clone, Default)]
    struct Sink {
        data: Arc<Mutex<Vec<u8>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Sink {
        fn blocked() -> Self {
            let s = Sink::default();
            *s.gate.0.lock().unwrap() = true;
            s
        }
        fn release(&self) {
            *self.gate.0.lock().unwrap() = false;
            self.gate.1.notify_all();
        }
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut shut = self.gate.0.lock().unwrap();
            while *shut {
                shut = self.gate.1.wait(shut).unwrap();
            }
            self.data.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_reach_the_sink_in_order() {
        let sink = Sink::default();
        let (mut out, drain) = spawn(Box::new(sink.clone())).unwrap();
        for i in 0..10_000u32 {
            out.write_all(&i.to_le_bytes()).unwrap();
        }
        assert_eq!(drain.finish(Duration::from_secs(120)), 0);
        let data = sink.data.lock().unwrap();
        let words: Vec<u32> = data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(words, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn a_stalled_reader_never_blocks_the_writer_and_loss_is_counted() {
        let sink = Sink::blocked();
        let (mut out, drain) = spawn(Box::new(sink.clone())).unwrap();
        // Four times the buffer, while the sink takes nothing: every write returns at once.
        let total = 4 * CONSOLE_BUFFER;
        for _ in 0..total / 64 {
            assert_eq!(out.write(&[b'x'; 64]).unwrap(), 64);
        }
        // The drain thread holds at most one chunk; the buffer holds at most CONSOLE_BUFFER.
        sink.release();
        let lost = drain.finish(Duration::from_secs(120));
        let written = sink.data.lock().unwrap().len() as u64;
        assert_eq!(written + lost, total as u64);
        assert!(
            lost >= (total - CONSOLE_BUFFER - CHUNK) as u64,
            "lost {lost}"
        );
    }

    #[test]
    fn finish_gives_up_on_a_reader_that_never_reads() {
        let sink = Sink::blocked();
        let (mut out, drain) = spawn(Box::new(sink.clone())).unwrap();
        out.write_all(&[1; 100]).unwrap();
        // Bounded: returns although the drain thread stays blocked in the sink.
        let lost = drain.finish(Duration::from_millis(1));
        assert!(lost <= 100);
        sink.release();
    }

    #[test]
    fn a_failing_sink_drops_instead_of_filling_up() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (mut out, drain) = spawn(Box::new(Broken)).unwrap();
        for _ in 0..100 {
            out.write_all(&[0; 4096]).unwrap();
        }
        assert_eq!(drain.finish(Duration::from_secs(120)), 100 * 4096);
    }
}
