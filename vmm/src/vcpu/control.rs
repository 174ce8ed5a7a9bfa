//! Telling vCPU threads to stop or to park (pause) and waiting until they have. A vCPU thread
//! calls [`VcpuControl::checkpoint`] before every KVM_RUN; whoever pauses or stops it sets the
//! flag and kicks the thread out of KVM_RUN with a signal until it has noticed. A parked
//! thread runs the checkpoint's `while_parked` work when it parks and whenever it is poked
//! ([`VcpuControl::poke`]): that is how a snapshot gets each vCPU's state from its own thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Stop and pause flags shared by a VM's vCPU threads.
#[derive(Debug, Default)]
pub struct VcpuControl {
    stop: AtomicBool,
    pause: AtomicBool,
    parking: Mutex<Parking>,
    changed: Condvar,
    /// Where parked threads hand over their state to a snapshot.
    pub states: super::save::StateRequests,
}

/// What parked threads and their waiters share under one lock.
#[derive(Debug, Default)]
struct Parking {
    /// How many vCPU threads are parked.
    parked: usize,
    /// How many times parked threads were poked: a thread that saw this value before its
    /// `while_parked` work does not sleep through a poke that came during it.
    pokes: u64,
}

impl VcpuControl {
    fn parking(&self) -> MutexGuard<'_, Parking> {
        self.parking.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn parked_now(&self) -> bool {
        self.pause.load(Ordering::Acquire) && !self.stop.load(Ordering::Acquire)
    }

    /// Called by a vCPU thread before KVM_RUN: parks while paused, running `while_parked`
    /// once parked and again each time it is poked; returns true when the thread must stop.
    pub fn checkpoint(&self, mut while_parked: impl FnMut()) -> bool {
        if self.parked_now() {
            let mut parking = self.parking();
            parking.parked += 1;
            self.changed.notify_all();
            while self.parked_now() {
                let seen = parking.pokes;
                drop(parking);
                while_parked();
                parking = self.parking();
                if parking.pokes == seen && self.parked_now() {
                    parking = self
                        .changed
                        .wait_timeout(parking, Duration::from_millis(100))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
            parking.parked -= 1;
            self.changed.notify_all();
        }
        self.stop.load(Ordering::Acquire)
    }

    /// Whether a stop was requested.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Asks every vCPU thread to stop (parked ones wake up and stop).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _guard = self.parking();
        self.changed.notify_all();
    }

    /// Asks every vCPU thread to park at its next checkpoint.
    pub fn pause(&self) {
        self.pause.store(true, Ordering::Release);
    }

    /// Wakes parked threads so that they run their `while_parked` work again.
    pub fn poke(&self) {
        let mut parking = self.parking();
        parking.pokes += 1;
        self.changed.notify_all();
    }

    /// Lets parked threads run again.
    pub fn resume(&self) {
        self.pause.store(false, Ordering::Release);
        let _guard = self.parking();
        self.changed.notify_all();
    }

    /// Waits up to `timeout` until `count` threads are parked; calls `kick` between waits so
    /// threads inside KVM_RUN come out. Returns whether they all parked.
    pub fn wait_parked(&self, count: usize, timeout: Duration, mut kick: impl FnMut()) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let parking = self.parking();
            if parking.parked >= count {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            drop(
                self.changed
                    .wait_timeout(parking, left.min(Duration::from_millis(2)))
                    .unwrap_or_else(PoisonError::into_inner),
            );
            kick();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    /// Threads that count loop iterations, checking in like vCPU threads.
    fn spawn(
        control: &Arc<VcpuControl>,
        n: usize,
    ) -> (Vec<std::thread::JoinHandle<()>>, Arc<AtomicU64>) {
        let work = Arc::new(AtomicU64::new(0));
        let threads = (0..n)
            .map(|_| {
                let control = Arc::clone(control);
                let work = Arc::clone(&work);
                std::thread::spawn(move || {
                    while !control.checkpoint(|| {}) {
                        work.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_micros(100));
                    }
                })
            })
            .collect();
        (threads, work)
    }

    #[test]
    fn paused_threads_do_no_work_until_resumed() {
        let control = Arc::new(VcpuControl::default());
        let (threads, work) = spawn(&control, 3);
        std::thread::sleep(Duration::from_millis(20));
        control.pause();
        assert!(control.wait_parked(3, Duration::from_secs(5), || {}));
        let frozen = work.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(work.load(Ordering::Relaxed), frozen);
        control.resume();
        std::thread::sleep(Duration::from_millis(50));
        assert!(work.load(Ordering::Relaxed) > frozen);
        control.stop();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_parked_thread_does_its_parked_work_again_when_poked() {
        let control = Arc::new(VcpuControl::default());
        let runs = Arc::new(AtomicU64::new(0));
        let thread = {
            let (control, runs) = (Arc::clone(&control), Arc::clone(&runs));
            std::thread::spawn(move || {
                while !control.checkpoint(|| {
                    runs.fetch_add(1, Ordering::SeqCst);
                }) {
                    std::thread::yield_now();
                }
            })
        };
        control.pause();
        assert!(control.wait_parked(1, Duration::from_secs(5), || {}));
        let wait_for = |n: u64| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while runs.load(Ordering::SeqCst) < n {
                assert!(Instant::now() < deadline, "parked work not run {n} times");
                std::thread::yield_now();
            }
        };
        wait_for(1);
        let before = runs.load(Ordering::SeqCst);
        control.poke();
        wait_for(before + 1);
        control.resume();
        control.stop();
        thread.join().unwrap();
    }

    #[test]
    fn stop_releases_parked_threads() {
        let control = Arc::new(VcpuControl::default());
        let (threads, _) = spawn(&control, 2);
        control.pause();
        assert!(control.wait_parked(2, Duration::from_secs(5), || {}));
        control.stop();
        for t in threads {
            t.join().unwrap();
        }
        assert!(control.stopping());
        // Nobody left to park.
        assert!(!control.wait_parked(1, Duration::from_millis(20), || {}));
    }
}
