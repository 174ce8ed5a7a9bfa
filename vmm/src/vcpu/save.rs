//! Getting every vCPU's state from its own thread: a snapshot asks for the states
//! ([`StateRequests::request`]), pokes the parked vCPU threads, and collects what each
//! deposited. KVM ioctls on a vCPU are served under that vCPU's lock from any thread, but its
//! file descriptor lives with its thread, which is also where the pending-I/O completion
//! (one KVM_RUN with `immediate_exit`) must happen.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::state::VcpuState;
use super::VcpuError;

/// The states asked for and those deposited so far.
#[derive(Default)]
struct Slots {
    /// Whether a snapshot is collecting.
    wanted: bool,
    states: Vec<Option<Result<VcpuState, VcpuError>>>,
}

/// Where parked vCPU threads deposit their state when a snapshot asks for it.
#[derive(Default)]
pub struct StateRequests {
    slots: Mutex<Slots>,
    filled: Condvar,
}

impl std::fmt::Debug for StateRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateRequests")
            .field("wanted", &self.slots().wanted)
            .finish()
    }
}

/// Why the states could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A vCPU thread did not answer (it ended, or is not parked).
    #[error("vCPU {index} did not hand over its state within {timeout:?}")]
    Timeout {
        /// The first vCPU missing.
        index: usize,
        /// How long the snapshot waited.
        timeout: Duration,
    },
    /// A vCPU's state could not be read.
    #[error("cannot read the state of a vCPU")]
    Vcpu(#[source] VcpuError),
}

impl StateRequests {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the `count` vCPUs for their state (any earlier request is dropped).
    pub fn request(&self, count: usize) {
        let mut slots = self.slots();
        slots.wanted = true;
        slots.states = (0..count).map(|_| None).collect();
    }

    /// Whether vCPU `index` still owes its state.
    pub fn wanted(&self, index: u32) -> bool {
        let slots = self.slots();
        slots.wanted
            && slots
                .states
                .get(index as usize)
                .is_some_and(Option::is_none)
    }

    /// Deposits vCPU `index`'s state (ignored if nobody asked for it).
    pub fn put(&self, index: u32, state: Result<VcpuState, VcpuError>) {
        let mut slots = self.slots();
        if !slots.wanted {
            return;
        }
        if let Some(slot) = slots.states.get_mut(index as usize) {
            *slot = Some(state);
            self.filled.notify_all();
        }
    }

    /// Waits up to `timeout` for every state asked for; the request ends either way.
    pub fn collect(&self, timeout: Duration) -> Result<Vec<VcpuState>, CollectError> {
        let deadline = Instant::now() + timeout;
        let mut slots = self.slots();
        while let Some(index) = slots.states.iter().position(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                slots.wanted = false;
                slots.states.clear();
                return Err(CollectError::Timeout { index, timeout });
            }
            slots = self
                .filled
                .wait_timeout(slots, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        slots.wanted = false;
        std::mem::take(&mut slots.states)
            .into_iter()
            .flatten()
            .map(|s| s.map_err(CollectError::Vcpu))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some_state(index: u32) -> VcpuState {
        VcpuState::blank(index)
    }

    #[test]
    fn collects_what_each_vcpu_deposited_in_index_order() {
        let r = StateRequests::default();
        r.request(2);
        assert!(r.wanted(0) && r.wanted(1) && !r.wanted(2));
        r.put(1, Ok(some_state(1)));
        assert!(!r.wanted(1));
        r.put(0, Ok(some_state(0)));
        let states = r.collect(Duration::from_secs(1)).unwrap();
        assert_eq!(states.iter().map(|s| s.index).collect::<Vec<_>>(), [0, 1]);
        assert!(!r.wanted(0), "the request ends once collected");
    }

    #[test]
    fn a_vcpu_that_never_answers_times_out_and_the_request_ends() {
        let r = StateRequests::default();
        r.request(2);
        r.put(0, Ok(some_state(0)));
        let Err(e) = r.collect(Duration::from_millis(10)) else {
            panic!("collected without vCPU 1's state");
        };
        assert!(matches!(e, CollectError::Timeout { index: 1, .. }), "{e}");
        assert!(!r.wanted(1));
        r.put(1, Ok(some_state(1)));
        r.request(1);
        assert!(r.wanted(0), "a late deposit does not fill the next request");
    }

    #[test]
    fn nothing_is_kept_when_nobody_asked() {
        let r = StateRequests::default();
        r.put(0, Ok(some_state(0)));
        assert!(!r.wanted(0));
        r.request(1);
        assert!(r.wanted(0));
    }
}
