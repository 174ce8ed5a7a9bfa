//! Serving block queues on I/O threads.
//!
//! A [`QueueSubscriber`] puts one queue handler on an I/O thread's event loop: it watches the
//! queue's kick eventfd (a KVM ioeventfd, so a guest notification never exits to userspace) and
//! the engine's completion eventfd, and runs the handler on either. The handler's mutex is
//! taken by the I/O thread on every event and by a vCPU thread only to reset the device.
//!
//! With a poll window (`poll_us=` of the disk), after each event the subscriber keeps looking
//! at the rings until the window passes with nothing found, as QEMU's iothreads do: a request
//! the driver publishes meanwhile is picked up without a kick (no VM exit, no wake-up of the
//! thread), a completion without the completion eventfd. One event's polling ends after
//! [`MAX_POLL`] however busy the queue, so the thread always gets back to its loop (other
//! devices, a stop request), and the handler's mutex is never held longer than that.

use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::handler::{BlockQueueHandler, HandlerError};
use super::lock;

const KICK: u32 = 0;
const COMPLETION: u32 = 1;

/// Longest one event's polling lasts, however much work keeps arriving.
pub const MAX_POLL: Duration = Duration::from_millis(1);

/// Event-loop glue for one queue handler.
pub struct QueueSubscriber {
    name: String,
    handler: Arc<Mutex<BlockQueueHandler>>,
    poll: Duration,
}

impl QueueSubscriber {
    /// Serves `handler`, polling for `poll` after each event (zero: never); `name` (e.g. the
    /// disk and queue) prefixes log lines.
    pub fn new(name: String, handler: Arc<Mutex<BlockQueueHandler>>, poll: Duration) -> Self {
        Self {
            name,
            handler,
            poll,
        }
    }
}

/// Polls `h` until `window` passes without work or [`MAX_POLL`] in all.
fn poll(h: &mut BlockQueueHandler, window: Duration) -> Result<(), HandlerError> {
    h.begin_polling();
    let start = Instant::now();
    let mut last_work = start;
    let polled = loop {
        match h.poll_once() {
            Err(e) => break Err(e),
            Ok(true) => last_work = Instant::now(),
            Ok(false) => std::hint::spin_loop(),
        }
        let now = Instant::now();
        if now.duration_since(last_work) >= window || now.duration_since(start) >= MAX_POLL {
            break Ok(());
        }
    };
    let ended = h.end_polling();
    polled.and(ended)
}

impl MutEventSubscriber for QueueSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let h = lock(&self.handler);
        for (fd, data) in [
            (h.kick_fd().as_raw_fd(), KICK),
            (h.completion_fd().as_raw_fd(), COMPLETION),
        ] {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                log::error!("{}: cannot watch eventfd {fd}: {e}", self.name);
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events
            .event_set()
            .intersects(EventSet::ERROR | EventSet::HANG_UP)
        {
            log::error!(
                "{}: eventfd {} failed; no longer watched",
                self.name,
                events.fd()
            );
            let _ = ops.remove(events);
            return;
        }
        let mut h = lock(&self.handler);
        let mut result = match events.data() {
            KICK => h.handle_kick(),
            _ => h.handle_completion(),
        };
        if result.is_ok() && !self.poll.is_zero() {
            result = poll(&mut h, self.poll);
        }
        if let Err(e) = result {
            log::error!("{}: {e}", self.name);
        }
    }
}
