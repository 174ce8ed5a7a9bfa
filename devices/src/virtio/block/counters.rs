//! Per-queue I/O counters of a block device: requests completed, errors, bytes moved, the
//! total time requests spent in the device, and the guest's notifications (kicks) and the
//! interrupts sent back. Each queue's handler updates its own counters with
//! relaxed atomics (no lock, no line shared between queues); readers sum the queues.

use std::sync::atomic::{AtomicU64, Ordering};

/// One queue's counters.
#[derive(Debug, Default)]
pub struct QueueCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    latency_ns: AtomicU64,
    kicks: AtomicU64,
    interrupts: AtomicU64,
}

/// Counter values summed over a device's queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Requests completed (any status).
    pub requests: u64,
    /// Requests completed with a status other than OK.
    pub errors: u64,
    /// Bytes read into guest memory by successful reads.
    pub read_bytes: u64,
    /// Bytes written to the backing file by successful writes.
    pub write_bytes: u64,
    /// Sum over requests that reached the backing file and succeeded (reads, writes, flushes,
    /// discards) of the time from popping the request to completing it, in nanoseconds.
    pub latency_ns: u64,
    /// Notifications the driver sent (each one a KVM exit on the guest's side).
    pub kicks: u64,
    /// Used-buffer interrupts sent to the driver (each one an interrupt injected).
    pub interrupts: u64,
}

impl QueueCounters {
    /// Requests this queue completed so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts a completed request.
    pub(super) fn request(&self, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `n` notifications from the driver.
    pub(super) fn kicked(&self, n: u64) {
        self.kicks.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts an interrupt sent to the driver.
    pub(super) fn interrupted(&self) {
        self.interrupts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a successful request's data (0 bytes for flushes and discards) and its time in
    /// the device.
    pub(super) fn transfer(&self, write: bool, bytes: u64, latency_ns: u64) {
        let counter = if write {
            &self.write_bytes
        } else {
            &self.read_bytes
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
        self.latency_ns.fetch_add(latency_ns, Ordering::Relaxed);
    }
}

/// Sums `queues`.
pub fn sum<'a>(queues: impl Iterator<Item = &'a QueueCounters>) -> IoStats {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    queues.fold(IoStats::default(), |acc, q| IoStats {
        requests: acc.requests + get(&q.requests),
        errors: acc.errors + get(&q.errors),
        read_bytes: acc.read_bytes + get(&q.read_bytes),
        write_bytes: acc.write_bytes + get(&q.write_bytes),
        latency_ns: acc.latency_ns + get(&q.latency_ns),
        kicks: acc.kicks + get(&q.kicks),
        interrupts: acc.interrupts + get(&q.interrupts),
    })
}
