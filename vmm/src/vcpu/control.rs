//! Telling vCPU threads to stop or to park (pause) and waiting until they have. A vCPU thread
//! calls [`VcpuControl::checkpoint`] before every KVM_RUN; whoever pauses or stops it sets the
//! flag and kicks the thread out of KVM_RUN with a signal until it has noticed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Stop and pause flags shared by a VM's vCPU threads.
#[derive(Debug, Default)]
pub struct VcpuControl {
    stop: AtomicBool,
    pause: AtomicBool,
    /// How many vCPU threads are parked.
    parked: Mutex<usize>,
    changed: Condvar,
}

impl VcpuControl {
    fn parked(&self) -> MutexGuard<'_, usize> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called by a vCPU thread before KVM_RUN: parks while paused; returns true when the
    /// thread must stop.
    pub fn checkpoint(&self) -> bool {
        if self.pause.load(Ordering::Acquire) && !self.stop.load(Ordering::Acquire) {
            let mut parked = self.parked();
            *parked += 1;
            self.changed.notify_all();
            while self.pause.load(Ordering::Acquire) && !self.stop.load(Ordering::Acquire) {
                parked = self
                    .changed
                    .wait_timeout(parked, Duration::from_millis(100))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            *parked -= 1;
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
        let _guard = self.parked();
        self.changed.notify_all();
    }

    /// Asks every vCPU thread to park at its next checkpoint.
    pub fn pause(&self) {
        self.pause.store(true, Ordering::Release);
    }

    /// Lets parked threads run again.
    pub fn resume(&self) {
        self.pause.store(false, Ordering::Release);
        let _guard = self.parked();
        self.changed.notify_all();
    }

    /// Waits up to `timeout` until `count` threads are parked; calls `kick` between waits so
    /// threads inside KVM_RUN come out. Returns whether they all parked.
    pub fn wait_parked(&self, count: usize, timeout: Duration, mut kick: impl FnMut()) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let parked = self.parked();
            if *parked >= count {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            drop(
                self.changed
                    .wait_timeout(parked, left.min(Duration::from_millis(2)))
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
                    while !control.checkpoint() {
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
