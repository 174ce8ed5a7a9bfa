//! The dataplane of one virtio-blk request queue.
//!
//! A [`BlockQueueHandler`] owns a queue, a clone of guest memory and an [`IoEngine`]. The
//! iothread polls two eventfds and calls back:
//!
//! * [`kick_fd`](BlockQueueHandler::kick_fd) readable → [`handle_kick`](BlockQueueHandler::handle_kick):
//!   notifications are disabled, the avail ring is drained (each chain parsed into a request,
//!   I/O operations collected into one batch and submitted at once), notifications are
//!   re-enabled and the ring re-checked, looping while the driver added requests meanwhile;
//! * [`completion_fd`](BlockQueueHandler::completion_fd) readable →
//!   [`handle_completion`](BlockQueueHandler::handle_completion): completions are reaped,
//!   status bytes written and chains returned on the used ring.
//!
//! Each call signals the guest at most once, honouring `VIRTIO_F_EVENT_IDX` through
//! `needs_notification`. Chains that fail to parse are completed at once with `IOERR`/`UNSUPP`
//! (or returned with used length 0 when no status byte can be written). At most `queue size`
//! requests are in flight; beyond that the handler stops popping until completions free slots.
//! One call processes at most a bounded number of chains; when it stops early it re-signals its
//! own kick eventfd, so a driver flooding the ring cannot monopolise the iothread.
//! With polling (see [`super::dataplane`]) the I/O thread keeps looking at the rings for a
//! while after each event: [`begin_polling`](BlockQueueHandler::begin_polling) keeps the
//! driver's notifications off even with nothing in flight,
//! [`poll_once`](BlockQueueHandler::poll_once) reaps and pops without an event, and
//! [`end_polling`](BlockQueueHandler::end_polling) turns notifications back on and re-checks the
//! ring, so nothing published meanwhile waits for a kick that will not come.
//! A ring no correct driver can produce (an avail index more than a queue ahead, a head that
//! is no descriptor) stops the handler popping and asks the transport for
//! `DEVICE_NEEDS_RESET`, once; requests already started still complete.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::counters::QueueCounters;
use super::engine::{Completion, EngineError, IoEngine, IoOp};
use super::request::{write_serial, Rejected, Request, RequestKind, RequestLimits, SERIAL_LEN};
use crate::virtio::device::{DeviceError, QueuePosition, VirtioInterrupt};

/// Bytes of the used ring before its entries (`flags`, `idx`); the virtio spec's layout.
const USED_RING_HEADER_SIZE: u64 = 4;
/// Bytes of one used ring entry (`id`, `len`); `avail_event` follows the last one.
const USED_ELEMENT_SIZE: u64 = 8;

/// Errors from driving a queue.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The I/O engine failed to submit or reap.
    #[error("I/O engine failure")]
    Engine(#[source] EngineError),
    /// The guest could not be signalled.
    #[error("cannot signal the guest")]
    Interrupt(#[source] DeviceError),
    /// The handler was created with a queue of size 0.
    #[error("queue has size 0")]
    EmptyQueue,
    /// In-flight requests did not complete in time.
    #[error("{0} request(s) still in flight after {1:?}")]
    Unsettled(usize, Duration),
    /// Waiting for completions failed.
    #[error("cannot wait for I/O completions")]
    Wait(#[source] std::io::Error),
}

/// Rate limiter for guest-triggered log messages: at most `BURST` per second.
struct LogLimiter {
    window: Instant,
    count: u32,
    suppressed: u64,
}

impl LogLimiter {
    const BURST: u32 = 10;

    fn new() -> Self {
        LogLimiter {
            window: Instant::now(),
            count: 0,
            suppressed: 0,
        }
    }

    fn warn(&mut self, queue: u16, args: fmt::Arguments<'_>) {
        let now = Instant::now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                log::warn!(
                    "virtio-blk queue {queue}: {} similar messages suppressed",
                    self.suppressed
                );
            }
            self.window = now;
            self.count = 0;
            self.suppressed = 0;
        }
        if self.count < Self::BURST {
            self.count += 1;
            log::warn!("virtio-blk queue {queue}: {args}");
        } else {
            self.suppressed += 1;
        }
    }
}

/// Bookkeeping for a request whose operations are in the engine.
struct InFlight {
    head_index: u16,
    status_addr: GuestAddress,
    /// Operations not completed yet.
    pending: usize,
    /// Bytes a read/write must transfer (0 for other operations).
    expected: u64,
    /// Used length on success (bytes written to the guest, status included).
    used_len: u32,
    failed: bool,
    /// A write (for the byte counters).
    write: bool,
    /// When the request was popped.
    started: Instant,
}

/// Everything a handler needs besides its queue and engine.
pub struct HandlerParams {
    /// Index of the queue within the device (for `trigger_queue`).
    pub queue_index: u16,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Queue notification eventfd.
    pub kick: EventFd,
    /// Interrupt sink.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// Limits requests are checked against.
    pub limits: RequestLimits,
    /// `GET_ID` payload.
    pub serial: [u8; SERIAL_LEN],
    /// Shared `writeback` state: when false, writes complete only once durable.
    pub writeback: Arc<AtomicBool>,
    /// This queue's I/O counters.
    pub counters: Arc<QueueCounters>,
}

/// Drives one virtio-blk queue. See the module documentation.
pub struct BlockQueueHandler {
    // Dropped first: dropping the engine waits for in-flight I/O into `mem`.
    engine: Box<dyn IoEngine>,
    queue: Queue,
    mem: GuestMemoryMmap,
    queue_index: u16,
    kick: EventFd,
    interrupt: Arc<dyn VirtioInterrupt>,
    limits: RequestLimits,
    serial: [u8; SERIAL_LEN],
    writeback: Arc<AtomicBool>,
    counters: Arc<QueueCounters>,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    batch: Vec<(u64, IoOp)>,
    completions: Vec<Completion>,
    used_added: bool,
    /// Writes to `kick` the handler made itself (to yield), not counted as the driver's.
    own_kicks: u64,
    throttled: bool,
    stopped: bool,
    /// The driver broke the ring (see [`Self::ring_broken`]): nothing more is popped until
    /// the device is reset.
    broken: bool,
    /// The I/O thread is polling: notifications stay off with nothing in flight.
    polling: bool,
    /// Chains popped plus completions reaped, ever (wrapping): tells polling it found work.
    progress: u64,
    log: LogLimiter,
}

impl BlockQueueHandler {
    /// Creates a handler for `queue` (already configured and ready) using `engine`.
    pub fn new(
        queue: Queue,
        engine: Box<dyn IoEngine>,
        params: HandlerParams,
    ) -> Result<Self, HandlerError> {
        let size = usize::from(queue.size());
        if size == 0 {
            return Err(HandlerError::EmptyQueue);
        }
        Ok(BlockQueueHandler {
            engine,
            queue,
            mem: params.mem,
            queue_index: params.queue_index,
            kick: params.kick,
            interrupt: params.interrupt,
            limits: params.limits,
            serial: params.serial,
            writeback: params.writeback,
            counters: params.counters,
            slots: (0..size).map(|_| None).collect(),
            free: (0..size).rev().collect(),
            batch: Vec::new(),
            completions: Vec::new(),
            used_added: false,
            own_kicks: 0,
            throttled: false,
            stopped: false,
            broken: false,
            polling: false,
            progress: 0,
            log: LogLimiter::new(),
        })
    }

    /// Eventfd signalled by the transport when the driver notifies this queue.
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// Eventfd signalled by the engine when completions are ready.
    pub fn completion_fd(&self) -> &EventFd {
        self.engine.completion_fd()
    }

    /// Name of the I/O engine in use (`"io_uring"` or `"sync"`).
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Index of the queue within the device.
    pub fn queue_index(&self) -> u16 {
        self.queue_index
    }

    /// Number of requests whose I/O has not completed.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Read access to the queue (for tests and state inspection).
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Handles a queue notification: call when [`kick_fd`](Self::kick_fd) is readable.
    pub fn handle_kick(&mut self) -> Result<(), HandlerError> {
        // A spurious wake-up (EAGAIN) is harmless: the ring is checked anyway.
        if let Ok(n) = self.kick.read() {
            let own = std::mem::take(&mut self.own_kicks);
            self.counters.kicked(n.saturating_sub(own));
        }
        if self.stopped {
            return Ok(());
        }
        self.process_queue()?;
        self.complete()
    }

    /// Handles I/O completions: call when [`completion_fd`](Self::completion_fd) is readable.
    pub fn handle_completion(&mut self) -> Result<(), HandlerError> {
        let _ = self.engine.completion_fd().read();
        if self.stopped {
            return Ok(());
        }
        self.complete()
    }

    /// For a snapshot (the caller keeps the I/O thread away): finishes every request in
    /// flight, and those the driver queued meanwhile, waiting at most `limit`; returns where
    /// the handler stands in the queue.
    pub fn settle(&mut self, limit: Duration) -> Result<QueuePosition, HandlerError> {
        let deadline = Instant::now() + limit;
        while self.in_flight() > 0 && !self.stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HandlerError::Unsettled(self.in_flight(), limit));
            }
            wait_readable(self.engine.completion_fd(), left).map_err(HandlerError::Wait)?;
            self.handle_completion()?;
        }
        Ok(QueuePosition {
            next_avail: self.queue.next_avail(),
            next_used: self.queue.next_used(),
        })
    }

    /// Stops the handler for a device reset: waits for in-flight I/O, forgets it without
    /// touching the rings, and makes later calls no-ops.
    pub fn shutdown(&mut self) {
        self.engine.drain();
        self.batch.clear();
        self.completions.clear();
        self.free = (0..self.slots.len()).rev().collect();
        self.slots.iter_mut().for_each(|s| *s = None);
        self.stopped = true;
    }

    /// Drains the avail ring into one submitted batch, looping while the driver adds requests
    /// after notifications are re-enabled. Completed requests are not reaped here.
    pub fn process_queue(&mut self) -> Result<(), HandlerError> {
        if self.broken {
            return Ok(());
        }
        let mut budget = self.slots.len().saturating_mul(4);
        loop {
            if let Err(e) = self.queue.disable_notification(&self.mem) {
                self.log
                    .warn(self.queue_index, format_args!("disable_notification: {e}"));
            }
            let broken;
            (budget, broken) = self.pop_requests(budget);
            let submitted = self.submit();
            if broken {
                // The avail ring is unusable (e.g. avail idx more than a queue size ahead):
                // nothing more can be popped until the driver fixes it or resets the device.
                return submitted;
            }
            if self.throttled {
                // Completions will free slots and resume processing; keep notifications off.
                return submitted;
            }
            if budget == 0 {
                // Yield: come back through the event loop.
                if self.kick.write(1).is_ok() {
                    self.own_kicks += 1;
                }
                return submitted;
            }
            submitted?;
            if self.in_flight() > 0 || self.polling {
                // Every completion comes back through `complete`, which looks at the avail
                // ring again: the driver need not kick while requests are in flight, so
                // notifications stay off (with EVENT_IDX, avail_event stays behind). While
                // the I/O thread polls, it looks at the ring itself.
                return Ok(());
            }
            match self.queue.enable_notification(&self.mem) {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(e) => {
                    self.log
                        .warn(self.queue_index, format_args!("enable_notification: {e}"));
                    return Ok(());
                }
            }
        }
    }

    /// Pops and starts requests while slots and budget remain; returns the budget left and
    /// whether the avail ring is broken.
    fn pop_requests(&mut self, mut budget: usize) -> (usize, bool) {
        self.throttled = false;
        while budget > 0 {
            let Some(&slot) = self.free.last() else {
                self.throttled = true;
                break;
            };
            let chain = match self.queue.iter(&self.mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    self.ring_broken(format_args!("avail ring: {e}"));
                    return (budget, true);
                }
            };
            let Some(chain) = chain else { break };
            budget -= 1;
            self.progress = self.progress.wrapping_add(1);
            match Request::parse(chain, &self.mem, &self.limits) {
                Ok(req) => self.start(slot, req),
                Err(rejected) => self.reject(rejected),
            }
        }
        (budget, false)
    }

    fn submit(&mut self) -> Result<(), HandlerError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        // SAFETY: the iovecs point into `self.mem`, a clone of the guest memory that the
        // handler keeps until it is dropped; the engine is dropped before `self.mem` (field
        // order) and drains in-flight operations on drop and on `shutdown`.
        unsafe { self.engine.submit(&mut self.batch) }.map_err(HandlerError::Engine)
    }

    fn reject(&mut self, r: Rejected) {
        self.log.warn(
            self.queue_index,
            format_args!("bad request (head {}): {}", r.head_index, r.error),
        );
        match r.status_addr {
            Some(addr) => self.finish(r.head_index, addr, r.error.status(), 1),
            None => {
                self.counters.request(false);
                self.return_chain(r.head_index, 0);
            }
        }
    }

    fn start(&mut self, slot: usize, req: Request) {
        let ok = VIRTIO_BLK_S_OK as u8;
        let (head, status) = (req.head_index, req.status_addr);
        let mut ops = Vec::new();
        let mut expected = 0;
        let mut used_len = 1;
        let write = matches!(req.kind, RequestKind::Out { .. });
        match req.kind {
            RequestKind::In { offset, iovecs } => {
                expected = iovecs.total_len();
                used_len = u32::try_from(expected)
                    .unwrap_or(u32::MAX)
                    .saturating_add(1);
                ops.push(IoOp::Read { offset, iovecs });
            }
            RequestKind::Out { offset, iovecs } => {
                expected = iovecs.total_len();
                let dsync = !self.writeback.load(Ordering::Acquire);
                ops.push(IoOp::Write {
                    offset,
                    iovecs,
                    dsync,
                });
            }
            RequestKind::Flush => ops.push(IoOp::Flush),
            RequestKind::GetId { buffers } => {
                match write_serial(&self.mem, &buffers, &self.serial) {
                    Ok(n) => self.finish(head, status, ok, n + 1),
                    Err(e) => {
                        self.log.warn(self.queue_index, format_args!("GET_ID: {e}"));
                        self.finish(head, status, req_error_status(), 1);
                    }
                }
                return;
            }
            RequestKind::Discard(ranges) => ops.extend(ranges.into_iter().map(|r| IoOp::Discard {
                offset: r.offset,
                len: r.len,
            })),
            RequestKind::WriteZeroes(ranges) => {
                ops.extend(ranges.into_iter().map(|r| IoOp::WriteZeroes {
                    offset: r.offset,
                    len: r.len,
                    unmap: r.unmap,
                }))
            }
        }
        if ops.is_empty() {
            self.finish(head, status, ok, 1);
            return;
        }
        self.slots[slot] = Some(InFlight {
            head_index: head,
            status_addr: status,
            pending: ops.len(),
            expected,
            used_len,
            failed: false,
            write,
            started: Instant::now(),
        });
        self.free.pop();
        self.batch
            .extend(ops.into_iter().map(|op| (slot as u64, op)));
    }

    /// Reaps completions, finishes requests, signals the guest once if anything was added to
    /// the used ring, then looks at the avail ring again (notifications are off while requests
    /// are in flight, so this is where new requests are picked up without a kick).
    pub fn complete(&mut self) -> Result<(), HandlerError> {
        let mut done = std::mem::take(&mut self.completions);
        let reaped = self.engine.reap(&mut done);
        for c in done.drain(..) {
            self.complete_one(c);
        }
        self.completions = done;
        reaped.map_err(HandlerError::Engine)?;
        self.signal()?;
        self.process_queue()?;
        // Requests finished while popping (rejects, GET_ID) need their own interrupt.
        self.signal()
    }

    /// Starts polling (see the module documentation): from now on the driver is not asked to
    /// kick, until [`end_polling`](Self::end_polling).
    pub fn begin_polling(&mut self) {
        self.polling = true;
        self.stop_asking_for_kicks();
    }

    /// Takes back the request for a kick made when notifications were last turned on. With
    /// EVENT_IDX that request is `avail_event` at the avail index the device had reached, and
    /// `disable_notification` leaves it there (the driver kicks at most once for it): an idle
    /// queue the thread polls would still take one kick for its next request. Setting
    /// `avail_event` one behind that index means no number of new requests crosses it.
    fn stop_asking_for_kicks(&mut self) {
        let result = if self.queue.event_idx_enabled() {
            let behind = self.queue.next_avail().wrapping_sub(1);
            let at = self.queue.used_ring().checked_add(
                USED_RING_HEADER_SIZE + USED_ELEMENT_SIZE * u64::from(self.queue.size()),
            );
            match at {
                Some(at) => self
                    .mem
                    .store(behind.to_le(), GuestAddress(at), Ordering::Relaxed)
                    .map_err(|e| e.to_string()),
                None => Err("used ring address overflows".to_string()),
            }
        } else {
            self.queue
                .disable_notification(&self.mem)
                .map_err(|e| e.to_string())
        };
        if let Err(e) = result {
            self.log
                .warn(self.queue_index, format_args!("disable_notification: {e}"));
        }
    }

    /// One look at the rings without an event: reaps completions and pops new requests,
    /// signalling the guest as [`complete`](Self::complete) does. Returns whether it found
    /// anything.
    pub fn poll_once(&mut self) -> Result<bool, HandlerError> {
        if self.stopped {
            return Ok(false);
        }
        let before = self.progress;
        self.complete()?;
        Ok(self.progress != before)
    }

    /// Ends polling: notifications go back on (when nothing is in flight) and the ring is
    /// looked at once more.
    pub fn end_polling(&mut self) -> Result<(), HandlerError> {
        self.polling = false;
        if self.stopped {
            return Ok(());
        }
        self.process_queue()?;
        self.signal()
    }

    fn complete_one(&mut self, c: Completion) {
        self.progress = self.progress.wrapping_add(1);
        let idx = usize::try_from(c.user_data).unwrap_or(usize::MAX);
        let Some(Some(inf)) = self.slots.get_mut(idx) else {
            log::error!("virtio-blk: completion for unknown request slot {idx}");
            return;
        };
        let short = inf.expected > 0 && u64::try_from(c.result).ok() != Some(inf.expected);
        if c.result < 0 || short {
            inf.failed = true;
        }
        inf.pending = inf.pending.saturating_sub(1);
        if inf.pending > 0 {
            return;
        }
        let Some(inf) = self.slots[idx].take() else {
            return;
        };
        self.free.push(idx);
        if inf.failed {
            self.log.warn(
                self.queue_index,
                format_args!(
                    "I/O error on request (head {}): result {}",
                    inf.head_index, c.result
                ),
            );
            self.finish(inf.head_index, inf.status_addr, req_error_status(), 1);
        } else {
            let ok = VIRTIO_BLK_S_OK as u8;
            let latency = u64::try_from(inf.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.counters.transfer(inf.write, inf.expected, latency);
            self.finish(inf.head_index, inf.status_addr, ok, inf.used_len);
        }
    }

    /// Writes the status byte and returns the chain with `used_len`.
    fn finish(&mut self, head: u16, status_addr: GuestAddress, status: u8, used_len: u32) {
        self.counters.request(status == VIRTIO_BLK_S_OK as u8);
        if let Err(e) = self.mem.write_obj(status, status_addr) {
            self.log
                .warn(self.queue_index, format_args!("cannot write status: {e}"));
        }
        self.return_chain(head, used_len);
    }

    fn return_chain(&mut self, head: u16, used_len: u32) {
        match self.queue.add_used(&self.mem, head, used_len) {
            Ok(()) => self.used_added = true,
            Err(e) => self.ring_broken(format_args!("add_used({head}): {e}")),
        }
    }

    /// The driver put the ring in a state no correct driver can (an avail index more than a
    /// queue ahead, a head that is no descriptor): stop popping and ask for a reset
    /// (`DEVICE_NEEDS_RESET`), once; completions of requests already started still go out.
    fn ring_broken(&mut self, what: std::fmt::Arguments<'_>) {
        self.log.warn(self.queue_index, what);
        if std::mem::replace(&mut self.broken, true) {
            return;
        }
        self.log.warn(
            self.queue_index,
            format_args!("impossible ring state: the device needs a reset"),
        );
        if let Err(e) = self.interrupt.needs_reset() {
            self.log.warn(
                self.queue_index,
                format_args!("cannot signal the reset: {e}"),
            );
        }
    }

    fn signal(&mut self) -> Result<(), HandlerError> {
        if !std::mem::take(&mut self.used_added) {
            return Ok(());
        }
        let needed = match self.queue.needs_notification(&self.mem) {
            Ok(needed) => needed,
            Err(e) => {
                self.log
                    .warn(self.queue_index, format_args!("needs_notification: {e}"));
                true
            }
        };
        if needed {
            self.counters.interrupted();
            self.interrupt
                .trigger_queue(self.queue_index)
                .map_err(HandlerError::Interrupt)?;
        }
        Ok(())
    }
}

/// Waits up to `timeout` for `fd` to become readable (returns early on a signal).
fn wait_readable(fd: &EventFd, timeout: Duration) -> std::io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(fd),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    // SAFETY: `pfd` is one valid pollfd that outlives the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

fn req_error_status() -> u8 {
    virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8
}
