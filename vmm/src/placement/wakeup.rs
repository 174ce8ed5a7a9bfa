//! Whether an I/O thread preempts a running vCPU when it wakes.
//!
//! A guest notification (an ioeventfd) and an I/O completion wake the disk's I/O thread. When
//! the vCPUs already fill the host CPUs that thread may run on, Linux's fair scheduler lets the
//! woken thread preempt the vCPU that sent the notification: the thread takes the one request
//! or two published so far, completes them (a read of a file's hole or of the page cache
//! finishes inside the submit) and interrupts the guest. In the rig (one L1 CPU, a Linux guest
//! with 2 vCPUs, fio 4K randread QD64) the guest then notified for about one request in five
//! and was interrupted as often.
//!
//! Under `SCHED_BATCH` (`sched(7)`) a woken thread does not preempt: it runs when a CPU frees up
//! (the vCPU halts because the guest waits for its I/O, or its time slice ends) and otherwise
//! gets its fair share as before. By then the guest has published a batch, which the thread
//! serves with one notification and one interrupt: about one of each per 50 requests in the
//! same rig, and a fraction of QEMU's exits per I/O (README, "Exits per I/O with Linux's own
//! driver"). A thread with a CPU of its own wakes on that idle CPU either way: the policy
//! changes nothing there.
//!
//! [`IoThreadSched`] is the disk's choice (`iothread_sched=` of `--disk`); [`batch_wakeups`]
//! decides `auto`; [`set_thread_batch`] applies it.

use std::io;

use super::{describe_tid, CpuSet, PlacementError};

/// How a disk's I/O threads are scheduled (`iothread_sched=` of `--disk`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IoThreadSched {
    /// `batch` when the disk's I/O threads and the vCPUs that may run on their host CPUs
    /// outnumber the CPUs they may use together ([`vcpus_beside`]), `normal` otherwise.
    #[default]
    Auto,
    /// `SCHED_OTHER`: a woken I/O thread may preempt a running vCPU.
    Normal,
    /// `SCHED_BATCH`: a woken I/O thread waits for a free CPU or the next tick.
    Batch,
}

/// Whether a disk's `threads` new I/O threads get `SCHED_BATCH` under `choice`, beside `vcpus`
/// vCPUs on `host_cpus` CPUs.
pub fn batch_wakeups(
    choice: IoThreadSched,
    vcpus: usize,
    threads: usize,
    host_cpus: usize,
) -> bool {
    match choice {
        IoThreadSched::Normal => false,
        IoThreadSched::Batch => true,
        IoThreadSched::Auto => threads_outnumber_cpus(vcpus, threads, host_cpus),
    }
}

/// Whether `vcpus` vCPUs and `threads` I/O threads outnumber the `host_cpus` CPUs they may run
/// on together, so that a busy thread can only run by taking turns with a vCPU. Both the disk's
/// thread layout (a thread per queue or one shared) and `auto`'s policy ask this, with the
/// counts of [`vcpus_beside`].
pub fn threads_outnumber_cpus(vcpus: usize, threads: usize, host_cpus: usize) -> bool {
    vcpus.saturating_add(threads) > host_cpus
}

/// Who I/O threads restricted to `thread_cpus` compete with: the vCPUs that may run on one of
/// those CPUs (`vcpu_cpus`, `None` for a vCPU that may run on any of `all`, the process's CPUs),
/// and how many CPUs those vCPUs and the threads may use together. A vCPU that may also run
/// elsewhere counts with the CPUs it may move to: a thread pinned to CPU 1 beside one unpinned
/// vCPU on a 2-CPU host is one vCPU and one thread on two CPUs, each with a CPU of its own.
pub fn vcpus_beside(
    thread_cpus: &CpuSet,
    vcpu_cpus: &[Option<CpuSet>],
    all: &CpuSet,
) -> (usize, usize) {
    let mut union = thread_cpus.clone();
    let mut vcpus = 0;
    for cpus in vcpu_cpus.iter().map(|c| c.as_ref().unwrap_or(all)) {
        if !cpus.intersection(thread_cpus).is_empty() {
            vcpus += 1;
            union = union.union(cpus);
        }
    }
    (vcpus, union.len())
}

/// Puts thread `tid` (`None`: the calling thread) under `SCHED_BATCH`, at its current nice
/// value, with `sched_setscheduler(2)`. No privilege is needed: it is not a real-time policy.
pub fn set_thread_batch(tid: Option<i32>) -> Result<(), PlacementError> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: param is a live sched_param the kernel only reads; tid names a thread of this
    // process or 0 (the caller).
    let ret = unsafe { libc::sched_setscheduler(tid.unwrap_or(0), libc::SCHED_BATCH, &param) };
    if ret != 0 {
        return Err(PlacementError::SetScheduler {
            tid,
            source: io::Error::last_os_error(),
        });
    }
    log::debug!("{} runs under SCHED_BATCH", describe_tid(tid));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_batches_only_when_the_threads_outnumber_the_cpus() {
        use IoThreadSched::*;
        // The rig's L1: one CPU, two vCPUs, one I/O thread.
        assert!(batch_wakeups(Auto, 2, 1, 1));
        // One vCPU and one I/O thread on two CPUs: each has a CPU.
        assert!(!batch_wakeups(Auto, 1, 1, 2));
        assert!(batch_wakeups(Auto, 2, 1, 2));
        assert!(!batch_wakeups(Auto, 4, 2, 8));
        // Named policies hold whatever the counts.
        assert!(batch_wakeups(Batch, 1, 1, 64));
        assert!(!batch_wakeups(Normal, 8, 8, 1));
        assert!(batch_wakeups(Auto, usize::MAX, 1, 4));
    }

    fn set(cpus: &[u32]) -> CpuSet {
        CpuSet::try_from_iter(cpus.iter().copied()).unwrap()
    }

    #[test]
    fn vcpus_count_where_they_may_run_beside_the_threads() {
        let all = set(&[0, 1]);
        // The rig's L1: one CPU for everything.
        assert_eq!(vcpus_beside(&set(&[0]), &[None, None], &set(&[0])), (2, 1));
        // A thread pinned to CPU 1, one unpinned vCPU: it may run on CPU 0 as well.
        let (vcpus, cpus) = vcpus_beside(&set(&[1]), &[None], &all);
        assert_eq!((vcpus, cpus), (1, 2));
        assert!(!threads_outnumber_cpus(vcpus, 1, cpus));
        // ... but two polling queues there still share one thread.
        assert!(threads_outnumber_cpus(vcpus, 2, cpus));
        // A vCPU pinned to the thread's CPU takes turns with it; one pinned elsewhere does not
        // count.
        let eight = set(&[0, 1, 2, 3, 4, 5, 6, 7]);
        let pinned = [Some(set(&[2])), Some(set(&[3])), Some(set(&[4]))];
        assert_eq!(vcpus_beside(&set(&[3]), &pinned, &eight), (1, 1));
        assert_eq!(vcpus_beside(&set(&[6, 7]), &pinned, &eight), (0, 2));
        // Unpinned vCPUs may use every CPU of the process.
        assert_eq!(vcpus_beside(&eight, &[None, None, None], &eight), (3, 8));
    }

    #[test]
    fn a_thread_put_under_sched_batch_reports_it() {
        // The calling thread's policy, as sched_getscheduler(2) reports it.
        fn policy() -> i32 {
            // SAFETY: sched_getscheduler only reads the calling thread's policy.
            unsafe { libc::sched_getscheduler(0) }
        }
        // A thread of its own: the test harness's threads keep their policy.
        let policies = std::thread::spawn(|| {
            let before = policy();
            set_thread_batch(None).unwrap();
            (before, policy())
        })
        .join()
        .unwrap();
        assert_eq!(policies, (libc::SCHED_OTHER, libc::SCHED_BATCH));
        assert!(matches!(
            set_thread_batch(Some(i32::MAX)),
            Err(PlacementError::SetScheduler { .. })
        ));
    }
}
