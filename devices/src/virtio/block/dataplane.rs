//! Serving block queues on I/O threads.
//!
//! A [`QueueSubscriber`] puts one queue handler on an I/O thread's event loop: it watches the
//! queue's kick eventfd (a KVM ioeventfd, so a guest notification never exits to userspace) and
//! the engine's completion eventfd, and runs the handler on either. The handler's mutex is
//! taken by the I/O thread on every event and by a vCPU thread only to reset the device.

use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::handler::BlockQueueHandler;
use super::lock;

const KICK: u32 = 0;
const COMPLETION: u32 = 1;

/// Event-loop glue for one queue handler.
pub struct QueueSubscriber {
    name: String,
    handler: Arc<Mutex<BlockQueueHandler>>,
}

impl QueueSubscriber {
    /// Serves `handler`; `name` (e.g. the disk and queue) prefixes log lines.
    pub fn new(name: String, handler: Arc<Mutex<BlockQueueHandler>>) -> Self {
        Self { name, handler }
    }
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
        let result = match events.data() {
            KICK => h.handle_kick(),
            _ => h.handle_completion(),
        };
        if let Err(e) = result {
            log::error!("{}: {e}", self.name);
        }
    }
}
