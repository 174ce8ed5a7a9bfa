//! Serving block queues on I/O threads.
//!
//! A [`QueueSubscriber`] puts one queue handler on an I/O thread's event loop: it watches the
//! queue's kick eventfd (a KVM ioeventfd, so a guest notification never exits to userspace) and
//! the engine's completion eventfd, and runs the handler on either. The handler's mutex is
//! taken by the I/O thread on every event and by a vCPU thread only to reset the device.
//!
//! With a poll window (`poll_us=` of the disk), the queue joins its I/O thread's
//! [`PollGroup`]: after each event the thread keeps looking at the rings of every polling
//! queue it serves, for a window that adapts to how the events come (see
//! [`crate::virtio::poll_group`]).

use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::handler::{BlockQueueHandler, HandlerError};
use super::lock;
use crate::virtio::poll_group::{Membership, PollGroup, Pollable, SharedPollable};

const KICK: u32 = 0;
const COMPLETION: u32 = 1;

/// Event-loop glue for one queue handler.
pub struct QueueSubscriber {
    name: String,
    handler: Arc<Mutex<BlockQueueHandler>>,
    /// The queue's place in its thread's poll group, when it polls.
    polling: Option<Membership>,
}

impl QueueSubscriber {
    /// Serves `handler`; with a non-zero `poll` (the disk's `poll_us`) it joins `group`, the
    /// poll group of the I/O thread it is added to. `name` (e.g. the disk and queue) prefixes
    /// log lines.
    pub fn new(
        name: String,
        handler: Arc<Mutex<BlockQueueHandler>>,
        group: &Arc<PollGroup>,
        poll: Duration,
    ) -> Self {
        let polling = (!poll.is_zero()).then(|| {
            let shared: SharedPollable = handler.clone();
            group.join(&shared, poll, name.clone())
        });
        Self {
            name,
            handler,
            polling,
        }
    }
}

impl Pollable for BlockQueueHandler {
    fn begin_polling(&mut self) {
        BlockQueueHandler::begin_polling(self);
    }

    fn poll_once(&mut self) -> Result<bool, String> {
        BlockQueueHandler::poll_once(self).map_err(|e: HandlerError| e.to_string())
    }

    fn end_polling(&mut self) -> Result<(), String> {
        BlockQueueHandler::end_polling(self).map_err(|e| e.to_string())
    }

    fn awaits_completions(&self) -> bool {
        self.in_flight() > 0
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
        let result = serve_event(&self.handler, events.data(), self.polling.as_ref());
        if let Err(e) = result {
            log::error!("{}: {e}", self.name);
        }
    }
}

/// Serves one event (`data`: [`KICK`] or [`COMPLETION`]) of `handler`; with `polling`, the
/// queue's place in its thread's poll group, inside that group's polling of every member
/// (see [`Membership::begin_event`]), which goes on after a failure too.
pub(super) fn serve_event(
    handler: &Mutex<BlockQueueHandler>,
    data: u32,
    polling: Option<&Membership>,
) -> Result<(), HandlerError> {
    if let Some(membership) = polling {
        membership.begin_event();
    }
    let result = {
        let mut h = lock(handler);
        match data {
            KICK => h.handle_kick(),
            _ => h.handle_completion(),
        }
    };
    if let Some(membership) = polling {
        membership.poll_after_event();
    }
    result
}
