//! CPU time of a VM's threads, split by what they do: the vCPU threads, and the I/O path (the
//! I/O threads and the kernel's io_uring workers, `iou-wrk-*`, that their rings start).
//!
//! Read from `/proc/<pid>/task/<tid>/schedstat`, whose first field is the scheduler's sum of
//! the task's time on a CPU in nanoseconds (`stat`'s utime and stime count 10 ms clock ticks,
//! too coarse for a few seconds of benchmark). The same reader serves other processes (a
//! peer VMM the benchmark watches), classified by thread name there.

use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use crate::placement::current_tid;

/// CPU time of one VM's threads, in nanoseconds, since they started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadCpu {
    /// The vCPU threads.
    pub vcpus_ns: u64,
    /// The I/O threads and io_uring workers.
    pub iothreads_ns: u64,
}

/// One task of a process: its thread id, name and time on a CPU so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskTime {
    /// Thread id.
    pub tid: i32,
    /// The name (`comm`).
    pub name: String,
    /// Time on a CPU, in nanoseconds.
    pub on_cpu_ns: u64,
}

/// A thread's own id and, once it has ended, its final CPU time: what [`ThreadCpu`] needs of a
/// thread that may be gone by the time the counters are read (a vCPU after the guest ends).
#[derive(Debug, Default)]
pub struct ThreadClock {
    tid: AtomicI32,
    ended_ns: AtomicU64,
}

impl ThreadClock {
    /// Called by the thread itself as it starts.
    pub fn started(&self) {
        self.tid.store(current_tid(), Ordering::Relaxed);
    }

    /// Called by the thread itself as it ends: keeps its CPU time (from
    /// `CLOCK_THREAD_CPUTIME_ID`, the same scheduler sum, and a call a vCPU thread's seccomp
    /// filter allows).
    pub fn ending(&self) {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into `ts`, which lives across the call.
        let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
        let ns = (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64);
        // At least 1: 0 means "still running".
        self.ended_ns
            .store(if ok { ns.max(1) } else { 0 }, Ordering::Relaxed);
    }

    /// The thread's final CPU time if it has ended, else its id (None before it started).
    fn state(&self) -> Result<u64, Option<i32>> {
        match self.ended_ns.load(Ordering::Relaxed) {
            0 => Err(Some(self.tid.load(Ordering::Relaxed)).filter(|&t| t != 0)),
            ns => Ok(ns),
        }
    }
}

/// Whether a thread name is one of the kernel's io_uring workers.
pub fn is_io_uring_worker(name: &str) -> bool {
    name.starts_with("iou-wrk-")
}

/// Time on a CPU so far, in nanoseconds, of task `tid` of the process whose `/proc` directory
/// is `proc_dir`; None once the task has ended.
pub fn on_cpu_ns(proc_dir: &Path, tid: i32) -> Option<u64> {
    let path = proc_dir
        .join("task")
        .join(tid.to_string())
        .join("schedstat");
    let schedstat = std::fs::read_to_string(path).ok()?;
    schedstat.split_whitespace().next()?.parse().ok()
}

/// Every task of the process whose `/proc` directory is `proc_dir` (`/proc/self` for this
/// one) that can still be read; a task that ends while it is read is left out.
pub fn task_times(proc_dir: &Path) -> Vec<TaskTime> {
    let Ok(entries) = std::fs::read_dir(proc_dir.join("task")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let tid = entry.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            Some(TaskTime {
                tid,
                name: name.trim_end().to_owned(),
                on_cpu_ns: on_cpu_ns(proc_dir, tid)?,
            })
        })
        .collect()
}

/// This process's VM threads' CPU time: the `vcpus` (running or ended), and the tasks in
/// `io_tids` with every io_uring worker.
pub fn read(vcpus: &[std::sync::Arc<ThreadClock>], io_tids: &[i32]) -> ThreadCpu {
    let mut live = Vec::new();
    let mut ended_ns = 0;
    for v in vcpus {
        match v.state() {
            Ok(ns) => ended_ns += ns,
            Err(tid) => live.extend(tid),
        }
    }
    let mut cpu = classify(&task_times(Path::new("/proc/self")), &live, io_tids);
    cpu.vcpus_ns += ended_ns;
    cpu
}

fn classify(tasks: &[TaskTime], vcpu_tids: &[i32], io_tids: &[i32]) -> ThreadCpu {
    let mut cpu = ThreadCpu::default();
    for t in tasks {
        if vcpu_tids.contains(&t.tid) {
            cpu.vcpus_ns += t.on_cpu_ns;
        } else if io_tids.contains(&t.tid) || is_io_uring_worker(&t.name) {
            cpu.iothreads_ns += t.on_cpu_ns;
        }
    }
    cpu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_shows_its_cpu_time() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let clock = std::sync::Arc::new(ThreadClock::default());
        let mine = std::sync::Arc::clone(&clock);
        let worker = std::thread::spawn(move || {
            mine.started();
            let _ = tx.send(current_tid());
            // Spins until told to stop, so its time on a CPU grows.
            let start = std::time::Instant::now();
            while done_rx.try_recv().is_err() {
                std::hint::black_box(start.elapsed());
            }
            mine.ending();
        });
        let tid = rx.recv().unwrap();
        let clocks = [clock];
        let first = read(&clocks, &[]).vcpus_ns;
        let mut later = first;
        // Ends as soon as the counter moves, which the spinning thread makes it do; the
        // deadline is a hang guard only.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while later == first && std::time::Instant::now() < deadline {
            later = read(&clocks, &[]).vcpus_ns;
        }
        assert!(later > first, "{first} -> {later}");
        assert_eq!(read(&[], &[tid]).vcpus_ns, 0, "an I/O thread is not a vCPU");
        done_tx.send(()).unwrap();
        worker.join().unwrap();
        // Gone from /proc, its time is still counted.
        assert!(read(&clocks, &[]).vcpus_ns >= later);
    }

    #[test]
    fn tasks_are_split_by_tid_and_worker_name() {
        let task = |tid, name: &str, ns| TaskTime {
            tid,
            name: name.into(),
            on_cpu_ns: ns,
        };
        let tasks = [
            task(1, "keel", 1),
            task(2, "keel-vcpu0", 10),
            task(3, "keel-vcpu1", 20),
            task(4, "disk0-q0", 100),
            task(5, "iou-wrk-4", 1000),
            task(6, "keel-console", 5),
        ];
        assert_eq!(
            classify(&tasks, &[2, 3], &[4]),
            ThreadCpu {
                vcpus_ns: 30,
                iothreads_ns: 1100
            }
        );
    }
}
