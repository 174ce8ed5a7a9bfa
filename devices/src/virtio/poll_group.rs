//! Polling every queue of one I/O thread together, with a window that adapts.
//!
//! Each I/O thread has a [`PollGroup`]; a queue whose device asks for polling (`poll_us=` of a
//! disk) joins its thread's group. After any event the thread serves, it looks at the rings of
//! *every* member, not only the one whose event woke it, until the window passes with nothing
//! found on any of them (and at most [`MAX_POLL`] in all, so the thread always gets back to its
//! loop, and a handler's mutex is never held longer than one look). Queues sharing a thread
//! are then served as one: a request on the second queue is taken while the thread polls after
//! the first's completion, without a kick or a wake-up.
//!
//! The window adapts as QEMU's event loop does. It starts at zero (no polling); after each
//! sleep the thread looks at how long it slept: an event that came within the group's largest
//! `poll_us` (the limit) but after the window would have been caught by a longer window, so
//! the window grows (from [`INITIAL_WINDOW`], doubling, up to the limit); a sleep longer than
//! the limit means polling would have been wasted, so the window halves (to zero below the
//! initial step). A busy queue keeps the thread polling; an idle one costs it nothing.
//!
//! A thread waits for two different things, each with its own window: the guest's next request
//! (nothing in flight) and the backend's completions (requests in flight). They come at very
//! different paces: at queue depth 1 on a disk, a completion takes ~40 us, longer than the
//! limit, while the guest's next request follows its completion within a few microseconds.
//! One window for both halved on every completion and doubled on every request, so it stayed
//! near zero and every request cost a kick (a VM exit); with two, the thread stops polling
//! for the disk and still polls for the guest.
//!
//! Only the I/O thread polls. Members join and leave from any thread (a device's activation
//! and reset), under the group's mutex, which the I/O thread takes once per event.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

/// Longest one event's polling lasts, however much work keeps arriving.
pub const MAX_POLL: Duration = Duration::from_millis(1);
/// The first window a group polls with once polling pays.
pub const INITIAL_WINDOW: Duration = Duration::from_micros(4);

/// A queue an I/O thread can look at without an event.
pub trait Pollable: Send {
    /// Polling starts: the queue may keep guest notifications off meanwhile.
    fn begin_polling(&mut self);
    /// One look at the rings: whether it found work.
    fn poll_once(&mut self) -> Result<bool, String>;
    /// Polling ends: notifications go back on and the rings are looked at once more.
    fn end_polling(&mut self) -> Result<(), String>;
    /// Whether requests are in flight, so that the queue's next event is more likely a
    /// completion than a new request.
    fn awaits_completions(&self) -> bool;
}

/// What an I/O thread waits for when it sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wait {
    /// The guest's next request: nothing is in flight.
    #[default]
    Request = 0,
    /// Completions of requests in flight.
    Completion = 1,
}

/// A shared pollable queue.
pub type SharedPollable = Arc<Mutex<dyn Pollable>>;

struct Member {
    id: u64,
    queue: Weak<Mutex<dyn Pollable>>,
    limit: Duration,
    name: String,
}

#[derive(Default)]
struct Inner {
    members: Vec<Member>,
    next_id: u64,
    /// The window for each [`Wait`].
    windows: [Duration; 2],
    /// What the thread waited for when it last went to sleep.
    waiting: Wait,
    /// When the thread last went back to sleep after polling.
    idle_since: Option<Instant>,
    /// Every member's polling was begun before the event being served.
    begun: bool,
}

/// The queues one I/O thread polls together, and the thread's current window.
#[derive(Default)]
pub struct PollGroup(Mutex<Inner>);

impl std::fmt::Debug for PollGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("PollGroup")
            .field("members", &inner.members.len())
            .field("windows", &inner.windows)
            .finish()
    }
}

/// A member's place in its group; dropping it takes the queue out.
pub struct Membership {
    group: Arc<PollGroup>,
    id: u64,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("id", &self.id).finish()
    }
}

impl Membership {
    /// Called by the I/O thread before it serves an event of this member's queue: when the
    /// group polls at all (either window open), every member starts polling now
    /// ([`Pollable::begin_polling`]), so that no queue asks the guest for a kick while the
    /// event is served. Serving a completion publishes it, and a guest that answers at once
    /// would otherwise kick on this queue (whose notifications the completion would turn
    /// back on) or on an idle one (whose notifications are on) before the polling that
    /// follows looks at the rings. [`poll_after_event`](Self::poll_after_event) ends it.
    pub fn begin_event(&self) {
        self.group.begin_event();
    }

    /// Called by the I/O thread after it served an event of this member's queue: adapts the
    /// group's window to how long the thread slept before the event, then polls every
    /// member; with the window shut, ends the polling [`begin_event`](Self::begin_event)
    /// began.
    pub fn poll_after_event(&self) {
        self.group.poll_after_event();
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.group.lock().members.retain(|m| m.id != self.id);
    }
}

/// The window after a sleep of `slept`, for the current `window` and the group's `limit`.
pub fn next_window(window: Duration, slept: Duration, limit: Duration) -> Duration {
    if limit.is_zero() {
        return Duration::ZERO;
    }
    if slept > limit {
        let half = window / 2;
        return if half < INITIAL_WINDOW {
            Duration::ZERO
        } else {
            half
        };
    }
    if slept > window {
        let grown = if window.is_zero() {
            INITIAL_WINDOW
        } else {
            window.saturating_mul(2)
        };
        return grown.min(limit);
    }
    window
}

impl PollGroup {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `queue`, polled for at most `limit` after each event (its `poll_us`); `name`
    /// labels log lines. The queue leaves the group when the membership is dropped.
    pub fn join(
        self: &Arc<Self>,
        queue: &SharedPollable,
        limit: Duration,
        name: String,
    ) -> Membership {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.members.push(Member {
            id,
            queue: Arc::downgrade(queue),
            limit,
            name,
        });
        Membership {
            group: self.clone(),
            id,
        }
    }

    /// The current window for `wait` (zero: the thread does not poll for it).
    pub fn window(&self, wait: Wait) -> Duration {
        self.lock().windows[wait as usize]
    }

    /// [`Membership::begin_event`].
    fn begin_event(&self) {
        let mut inner = self.lock();
        if inner.windows.iter().all(|w| w.is_zero()) {
            return;
        }
        for q in inner.members.iter().filter_map(|m| m.queue.upgrade()) {
            lock(&q).begin_polling();
        }
        inner.begun = true;
    }

    /// [`Membership::poll_after_event`]: the thread slept since it last polled (not at all,
    /// the first time).
    fn poll_after_event(&self) {
        let slept = self
            .lock()
            .idle_since
            .map_or(Duration::ZERO, |since| since.elapsed());
        self.poll_after_sleep(slept);
    }

    /// [`poll_after_event`](Self::poll_after_event) after a sleep of `slept`.
    fn poll_after_sleep(&self, slept: Duration) {
        let mut inner = self.lock();
        let limit = inner
            .members
            .iter()
            .map(|m| m.limit)
            .max()
            .unwrap_or_default();
        let waited = inner.waiting as usize;
        inner.windows[waited] = next_window(inner.windows[waited], slept, limit);
        let mut next = awaited(&inner.members);
        let window = inner.windows[next as usize];
        if !window.is_zero() {
            poll_members(&inner.members, window);
            next = awaited(&inner.members);
        } else if inner.begun {
            end_polling(&inner.members);
        }
        inner.begun = false;
        inner.waiting = next;
        inner.idle_since = Some(Instant::now());
    }
}

fn lock(q: &SharedPollable) -> MutexGuard<'_, dyn Pollable + 'static> {
    q.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ends every member's polling, logging failures.
fn end_polling(members: &[Member]) {
    for m in members {
        if let Some(q) = m.queue.upgrade() {
            if let Err(e) = lock(&q).end_polling() {
                log::error!("{}: {e}", m.name);
            }
        }
    }
}

/// What the thread waits for next: completions when any member has requests in flight.
fn awaited(members: &[Member]) -> Wait {
    let busy = members
        .iter()
        .filter_map(|m| m.queue.upgrade())
        .any(|q| lock(&q).awaits_completions());
    if busy {
        Wait::Completion
    } else {
        Wait::Request
    }
}

/// Polls `members` until `window` passes without work on any of them, or [`MAX_POLL`]. A
/// queue whose look fails is logged once and left out of the rest of this round.
fn poll_members(members: &[Member], window: Duration) {
    // (queue, name, still polled this round)
    let mut queues: Vec<(SharedPollable, &str, bool)> = members
        .iter()
        .filter_map(|m| Some((m.queue.upgrade()?, m.name.as_str(), true)))
        .collect();
    for (q, _, _) in &queues {
        lock(q).begin_polling();
    }
    let start = Instant::now();
    let mut last_work = start;
    loop {
        let mut found = false;
        for (q, name, polled) in queues.iter_mut().filter(|(_, _, polled)| *polled) {
            match lock(q).poll_once() {
                Ok(work) => found |= work,
                Err(e) => {
                    log::error!("{name}: {e}");
                    *polled = false;
                }
            }
        }
        let now = Instant::now();
        if found {
            last_work = now;
        } else {
            std::hint::spin_loop();
        }
        if now.duration_since(last_work) >= window || now.duration_since(start) >= MAX_POLL {
            break;
        }
    }
    end_polling(members);
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_micros(32);

    #[test]
    fn the_window_grows_while_polling_would_have_caught_the_event() {
        let mut w = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..5 {
            w = next_window(w, Duration::from_micros(20), LIMIT);
            seen.push(w.as_micros());
        }
        assert_eq!(seen, [4, 8, 16, 32, 32]);
        // An event within the window keeps it.
        assert_eq!(next_window(w, Duration::from_micros(1), LIMIT), w);
    }

    #[test]
    fn the_window_shrinks_when_the_thread_slept_past_the_limit() {
        let slept = Duration::from_millis(5);
        let mut w = LIMIT;
        let mut seen = Vec::new();
        for _ in 0..5 {
            w = next_window(w, slept, LIMIT);
            seen.push(w.as_micros());
        }
        assert_eq!(seen, [16, 8, 4, 0, 0]);
        assert_eq!(
            next_window(LIMIT, Duration::ZERO, Duration::ZERO),
            Duration::ZERO
        );
    }

    /// A queue that has `work` looks' worth of work left and records the calls.
    #[derive(Default)]
    struct Fake {
        work: u32,
        polls: u32,
        begun: u32,
        ended: u32,
        in_flight: bool,
    }

    impl Pollable for Fake {
        fn begin_polling(&mut self) {
            self.begun += 1;
        }
        fn poll_once(&mut self) -> Result<bool, String> {
            self.polls += 1;
            if self.work == 0 {
                return Ok(false);
            }
            self.work -= 1;
            Ok(true)
        }
        fn end_polling(&mut self) -> Result<(), String> {
            self.ended += 1;
            Ok(())
        }
        fn awaits_completions(&self) -> bool {
            self.in_flight
        }
    }

    fn fake(work: u32) -> (Arc<Mutex<Fake>>, SharedPollable) {
        let f = Arc::new(Mutex::new(Fake {
            work,
            ..Fake::default()
        }));
        let shared: SharedPollable = f.clone();
        (f, shared)
    }

    #[test]
    fn every_member_is_polled_until_all_are_quiet() {
        let group = Arc::new(PollGroup::default());
        let (a, qa) = fake(0);
        let (b, qb) = fake(50);
        let _ma = group.join(&qa, LIMIT, "a".into());
        let _mb = group.join(&qb, LIMIT, "b".into());
        // The first event finds the window shut and nothing slept: no polling yet.
        group.poll_after_event();
        assert_eq!(group.window(Wait::Request), Duration::ZERO);
        assert_eq!(a.lock().unwrap().polls, 0);
        // The next came 20 us after the thread went to sleep: within the limit, the window
        // opens (4 us).
        group.poll_after_sleep(Duration::from_micros(20));
        assert_eq!(group.window(Wait::Request), INITIAL_WINDOW);
        let (a, b) = (a.lock().unwrap(), b.lock().unwrap());
        // Queue a had nothing, yet was looked at as long as b had work, and then some.
        assert_eq!((a.begun, a.ended, b.begun, b.ended), (1, 1, 1, 1));
        assert_eq!(b.work, 0);
        assert!(a.polls > 50 && b.polls > 50, "{} {}", a.polls, b.polls);
    }

    #[test]
    fn an_event_is_served_with_every_member_polling_when_the_group_polls() {
        let group = Arc::new(PollGroup::default());
        let (a, qa) = fake(0);
        let (b, qb) = fake(0);
        let ma = group.join(&qa, LIMIT, "a".into());
        let _mb = group.join(&qb, LIMIT, "b".into());
        let seen = |f: &Arc<Mutex<Fake>>| {
            let f = f.lock().unwrap();
            (f.begun, f.ended)
        };
        // Every window shut: events are served as they come, nothing polls.
        ma.begin_event();
        ma.poll_after_event();
        assert_eq!((seen(&a), seen(&b)), ((0, 0), (0, 0)));
        // An event 20 us after the sleep opens the request window; that round polls both.
        group.poll_after_sleep(Duration::from_micros(20));
        assert_eq!((seen(&a), seen(&b)), ((1, 1), (1, 1)));
        // Now every member polls from before the event on. A sleep past the limit shuts the
        // window again, so no round follows and the polling begun for the event ends.
        ma.begin_event();
        assert_eq!((seen(&a), seen(&b)), ((2, 1), (2, 1)));
        group.poll_after_sleep(Duration::from_millis(5));
        assert_eq!(group.window(Wait::Request), Duration::ZERO);
        assert_eq!((seen(&a), seen(&b)), ((2, 2), (2, 2)));
        ma.begin_event();
        assert_eq!((seen(&a), seen(&b)), ((2, 2), (2, 2)));
    }

    #[test]
    fn requests_and_completions_keep_windows_of_their_own() {
        // Queue depth 1 on a slow backend: a completion comes 40 us after the thread sleeps
        // (past the limit), the guest's next request 6 us after.
        let group = Arc::new(PollGroup::default());
        let (q, shared) = fake(0);
        let _m = group.join(&shared, LIMIT, "q".into());
        group.poll_after_event();
        for _ in 0..4 {
            // The request's event: it is submitted, so the thread sleeps awaiting completion.
            q.lock().unwrap().in_flight = true;
            group.poll_after_sleep(Duration::from_micros(6));
            // The completion's event: nothing in flight, the thread awaits the guest.
            q.lock().unwrap().in_flight = false;
            group.poll_after_sleep(Duration::from_micros(40));
        }
        assert_eq!(group.window(Wait::Completion), Duration::ZERO);
        assert_eq!(group.window(Wait::Request), Duration::from_micros(8));
    }

    /// A queue whose every look fails.
    #[derive(Default)]
    struct Failing {
        polls: u32,
        ended: u32,
    }

    impl Pollable for Failing {
        fn begin_polling(&mut self) {}
        fn poll_once(&mut self) -> Result<bool, String> {
            self.polls += 1;
            Err("broken".into())
        }
        fn end_polling(&mut self) -> Result<(), String> {
            self.ended += 1;
            Ok(())
        }
        fn awaits_completions(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_failing_queue_is_looked_at_once_a_round_and_the_others_go_on() {
        let group = Arc::new(PollGroup::default());
        let failing = Arc::new(Mutex::new(Failing::default()));
        let qf: SharedPollable = failing.clone();
        let (b, qb) = fake(20);
        let _mf = group.join(&qf, LIMIT, "f".into());
        let _mb = group.join(&qb, LIMIT, "b".into());
        group.poll_after_sleep(Duration::from_micros(20));
        let f = failing.lock().unwrap();
        assert_eq!((f.polls, f.ended), (1, 1));
        assert_eq!(b.lock().unwrap().work, 0);
    }

    #[test]
    fn a_member_leaves_with_its_membership_and_a_dropped_queue_is_skipped() {
        let group = Arc::new(PollGroup::default());
        let (a, qa) = fake(3);
        let membership = group.join(&qa, LIMIT, "a".into());
        drop(membership);
        group.poll_after_sleep(Duration::from_micros(20));
        assert_eq!(
            group.window(Wait::Request),
            Duration::ZERO,
            "no member: no limit"
        );
        assert_eq!(a.lock().unwrap().polls, 0);
        let (_, qb) = fake(3);
        let _mb = group.join(&qb, LIMIT, "b".into());
        drop(qb);
        group.poll_after_sleep(Duration::from_micros(20));
        assert_eq!(group.window(Wait::Request), INITIAL_WINDOW);
    }
}
