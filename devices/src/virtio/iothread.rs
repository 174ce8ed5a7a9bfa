//! I/O threads: the dataplane's event loops.
//!
//! An [`IoThread`] is a named host thread running an `event_manager::EventManager`. Devices add
//! their event sources to it (queue kick eventfds, I/O completion eventfds) through an
//! [`IoThreadHandle`] when the driver activates them, and remove them on reset. The thread
//! then serves those events without ever taking a lock a vCPU thread takes on the I/O path:
//! kicks arrive through KVM ioeventfds and interrupts leave through irqfds.
//!
//! Several devices may share one thread (each adds its own subscriber); the queues that poll
//! are polled together, through the thread's [`PollGroup`]. Dropping the [`IoThread`] stops
//! the loop and joins the thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventManager, MutEventSubscriber, RemoteEndpoint, SubscriberId};

use super::poll_group::PollGroup;

/// What an I/O thread runs: any event subscriber that can move to that thread.
pub type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// Errors from starting or talking to an I/O thread.
#[derive(Debug, thiserror::Error)]
pub enum IoThreadError {
    /// The event manager (epoll instance, control eventfd) could not be created.
    #[error("cannot create the event loop of I/O thread {name}")]
    EventManager {
        /// Thread name.
        name: String,
        /// Cause.
        #[source]
        source: event_manager::Error,
    },
    /// The OS refused to start the thread.
    #[error("cannot start I/O thread {name}")]
    Spawn {
        /// Thread name.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The thread's own setup (a seccomp filter, say) failed; the thread has ended.
    #[error("I/O thread {name} could not set itself up: {reason}")]
    Setup {
        /// Thread name.
        name: String,
        /// What failed.
        reason: String,
    },
    /// A request to the thread failed (the thread has stopped, or the subscriber is unknown).
    #[error("I/O thread {name} did not carry out a request")]
    Request {
        /// Thread name.
        name: String,
        /// Cause.
        #[source]
        source: event_manager::Error,
    },
}

/// A running I/O thread. Dropping it stops and joins the thread.
pub struct IoThread {
    handle: IoThreadHandle,
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
    /// The thread's Linux thread ID, reported by the thread as it starts.
    tid: i32,
}

/// A cloneable handle for adding and removing subscribers on an [`IoThread`].
#[derive(Clone)]
pub struct IoThreadHandle {
    name: Arc<str>,
    endpoint: RemoteEndpoint<Subscriber>,
    poll_group: Arc<PollGroup>,
}

impl std::fmt::Debug for IoThreadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoThreadHandle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl IoThread {
    /// Starts an idle I/O thread called `name` (Linux shows the first 15 bytes).
    pub fn spawn(name: &str) -> Result<Self, IoThreadError> {
        Self::spawn_with(name, || Ok(()))
    }

    /// [`IoThread::spawn`], running `setup` on the new thread before its event loop (the VMM
    /// installs the thread's seccomp filter there). Returns once `setup` has run; if it
    /// failed, the thread has ended and its error is returned.
    pub fn spawn_with(
        name: &str,
        setup: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> Result<Self, IoThreadError> {
        let mut manager =
            EventManager::<Subscriber>::new().map_err(|source| IoThreadError::EventManager {
                name: name.to_string(),
                source,
            })?;
        let endpoint = manager.remote_endpoint();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread_name = name.to_string();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let join = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // SAFETY: gettid takes no arguments and cannot fail.
                let result = setup().map(|()| unsafe { libc::gettid() });
                let ok = result.is_ok();
                // The spawner waits for this; it only goes away if it panicked.
                let _ = ready_tx.send(result);
                if ok {
                    run(&mut manager, &thread_stop, &thread_name);
                }
            })
            .map_err(|source| IoThreadError::Spawn {
                name: name.to_string(),
                source,
            })?;
        let setup_result = ready
            .recv()
            .unwrap_or_else(|_| Err("the thread ended before reporting".into()));
        let tid = match setup_result {
            Ok(tid) => tid,
            Err(reason) => {
                let _ = join.join();
                return Err(IoThreadError::Setup {
                    name: name.to_string(),
                    reason,
                });
            }
        };
        Ok(IoThread {
            tid,
            handle: IoThreadHandle {
                name: name.into(),
                endpoint,
                poll_group: Arc::new(PollGroup::default()),
            },
            stop,
            join: Some(join),
        })
    }

    /// A handle for devices to register their event sources.
    pub fn handle(&self) -> IoThreadHandle {
        self.handle.clone()
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.handle.name
    }

    /// The thread's Linux thread ID (for placement, CPU time and tests), known since it
    /// started: asking costs the thread nothing.
    pub fn tid(&self) -> i32 {
        self.tid
    }
}

fn run(manager: &mut EventManager<Subscriber>, stop: &AtomicBool, name: &str) {
    log::debug!("I/O thread {name} started");
    while !stop.load(Ordering::Acquire) {
        if let Err(e) = manager.run() {
            // EINTR is surfaced as an error by some versions; anything else is fatal.
            if matches!(&e, event_manager::Error::Epoll(errno) if errno.errno() == libc::EINTR) {
                continue;
            }
            log::error!("I/O thread {name}: event loop failed: {e}");
            break;
        }
    }
    log::debug!("I/O thread {name} stopped");
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Err(e) = self.handle.endpoint.kick() {
            log::error!("cannot wake I/O thread {}: {e}", self.handle.name);
            return;
        }
        if let Some(join) = self.join.take() {
            if join.join().is_err() {
                log::error!("I/O thread {} panicked", self.handle.name);
            }
        }
    }
}

impl IoThreadHandle {
    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queues this thread polls together (see [`super::poll_group`]).
    pub fn poll_group(&self) -> &Arc<PollGroup> {
        &self.poll_group
    }

    fn request_error(&self, source: event_manager::Error) -> IoThreadError {
        IoThreadError::Request {
            name: self.name.to_string(),
            source,
        }
    }

    /// Adds `subscriber` to the thread's loop (its `init` runs on the thread) and waits until
    /// it is in place.
    pub fn add(&self, subscriber: Subscriber) -> Result<SubscriberId, IoThreadError> {
        self.endpoint
            .call_blocking(move |ops| Ok::<_, event_manager::Error>(ops.add_subscriber(subscriber)))
            .map_err(|source| self.request_error(source))
    }

    /// Removes a subscriber and waits until the thread no longer serves its events. The
    /// subscriber is dropped on the I/O thread.
    pub fn remove(&self, id: SubscriberId) -> Result<(), IoThreadError> {
        self.endpoint
            .call_blocking(move |ops| ops.remove_subscriber(id).map(drop))
            .map_err(|source| self.request_error(source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_manager::{EventOps, EventSet, Events};
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};
    use vmm_sys_util::eventfd::EventFd;

    struct Counter {
        fd: EventFd,
        seen: Arc<AtomicU64>,
    }

    impl MutEventSubscriber for Counter {
        fn init(&mut self, ops: &mut EventOps) {
            if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
                panic!("add: {e}");
            }
        }
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            if let Ok(n) = self.fd.read() {
                self.seen.fetch_add(n, Ordering::SeqCst);
            }
        }
    }

    fn wait_for(seen: &AtomicU64, want: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if seen.load(Ordering::SeqCst) == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    #[test]
    fn serves_added_subscribers_until_removed() {
        let t = IoThread::spawn("test-io").unwrap();
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kick = fd.try_clone().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let id = t
            .handle()
            .add(Box::new(Counter {
                fd,
                seen: seen.clone(),
            }))
            .unwrap();
        kick.write(3).unwrap();
        assert!(wait_for(&seen, 3));
        t.handle().remove(id).unwrap();
        kick.write(5).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        assert!(t.handle().remove(id).is_err(), "second removal must fail");
    }

    #[test]
    fn thread_is_named_and_stops_on_drop() {
        let t = IoThread::spawn("blk-test-q0").unwrap();
        let tid = t.tid();
        let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap();
        assert_eq!(comm.trim(), "blk-test-q0");
        let handle = t.handle();
        drop(t);
        assert!(!std::path::Path::new(&format!("/proc/self/task/{tid}")).exists());
        assert!(handle
            .add(Box::new(Counter {
                fd: EventFd::new(0).unwrap(),
                seen: Arc::new(AtomicU64::new(0)),
            }))
            .is_err());
    }
}
