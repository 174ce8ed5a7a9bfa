//! Host placement: which host CPUs and NUMA nodes a VM's threads and memory use.
//!
//! - [`cpuset`]: [`CpuSet`], a bounded set of host CPU numbers in the kernel's cpulist format
//!   (`0-3,5`), and thread affinity ([`set_thread_affinity`], [`thread_affinity`]).
//! - [`topology`]: [`HostTopology`], the host's online CPUs, NUMA nodes (CPUs, distances,
//!   memory) and hugepage pools as sysfs reports them.
//! - [`mempolicy`]: [`bind_to_node`] binds a mapped range to one NUMA node (`mbind(2)`), and
//!   [`range_policy`] reads a range's policy back (`get_mempolicy(2)`).
//!
//! - [`irq`]: [`irq::completion_cpus`], the host CPUs taking a backing device's completion
//!   interrupts, where a disk's I/O threads go when not told otherwise.
//! - [`wakeup`]: [`IoThreadSched`], whether a woken I/O thread may preempt a running vCPU
//!   (`SCHED_BATCH` when it may not: [`set_thread_batch`]).
//! - [`mod@plan`]: [`Plan`], where one VM's RAM pieces, vCPUs and I/O threads go, checked
//!   against the host before the VM exists.
//!
//! Every fallible call returns [`PlacementError`] (planning reports bad requests as
//! [`crate::config::ConfigError`], since they are the user's to fix).

use std::io;
use std::path::PathBuf;

pub mod cpuset;
pub mod irq;
pub mod mempolicy;
pub mod plan;
pub mod topology;
pub mod wakeup;

pub use cpuset::{current_tid, set_thread_affinity, thread_affinity, CpuSet, MAX_CPUS};
pub use mempolicy::{
    bind_to_node, describe_policy, note_numa_balancing, range_policy, MAX_NODES, MPOL_BIND,
    MPOL_DEFAULT,
};
pub use plan::{plan, Plan};
pub use topology::{HostNode, HostTopology, HugePagePool};
pub use wakeup::{
    batch_wakeups, set_thread_batch, threads_outnumber_cpus, vcpus_beside, IoThreadSched,
};

/// Errors parsing CPU lists, reading the host topology, and setting affinity or memory policy.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// A CPU number at or above [`MAX_CPUS`].
    #[error("CPU {cpu} is out of range: CPU numbers must be below {MAX_CPUS}")]
    CpuOutOfRange {
        /// The rejected CPU number.
        cpu: u32,
    },
    /// A string that is not a valid cpulist.
    #[error("invalid CPU list {input:?}: {reason}")]
    CpuList {
        /// The list as given (trimmed).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A sysfs file or directory that could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A sysfs file or directory whose contents are not what the kernel writes there.
    #[error("malformed {}: {reason}", path.display())]
    Malformed {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A sysfs file holding a CPU list that does not parse.
    #[error("malformed {}: not a CPU list", path.display())]
    MalformedCpuList {
        /// The file.
        path: PathBuf,
        /// Why the list was rejected.
        #[source]
        source: Box<PlacementError>,
    },
    /// An empty affinity mask, which would leave the thread nowhere to run.
    #[error("refusing to set an empty CPU affinity for {}", describe_tid(*tid))]
    EmptyAffinity {
        /// The thread (`None`: the calling thread).
        tid: Option<i32>,
    },
    /// A CPU that `cpu_set_t` cannot hold.
    #[error(
        "cannot set the affinity of {} to CPU {cpu}: a cpu_set_t holds CPUs below {}",
        describe_tid(*tid),
        libc::CPU_SETSIZE
    )]
    AffinityCpuTooHigh {
        /// The thread (`None`: the calling thread).
        tid: Option<i32>,
        /// The CPU that does not fit.
        cpu: u32,
    },
    /// `sched_setaffinity(2)` failed.
    #[error("sched_setaffinity of {} to CPUs {cpus} failed", describe_tid(*tid))]
    SetAffinity {
        /// The thread (`None`: the calling thread).
        tid: Option<i32>,
        /// The requested CPUs, in cpulist format.
        cpus: String,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// `sched_getaffinity(2)` failed.
    #[error("sched_getaffinity of {} failed", describe_tid(*tid))]
    GetAffinity {
        /// The thread (`None`: the calling thread).
        tid: Option<i32>,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// `sched_setscheduler(2)` failed.
    #[error("sched_setscheduler of {} to SCHED_BATCH failed", describe_tid(*tid))]
    SetScheduler {
        /// The thread (`None`: the calling thread).
        tid: Option<i32>,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// A NUMA node number at or above [`MAX_NODES`].
    #[error("NUMA node {node} is out of range: node numbers must be below {MAX_NODES}")]
    NodeOutOfRange {
        /// The rejected node.
        node: u32,
    },
    /// `mbind(2)` failed.
    #[error("mbind(MPOL_BIND) of {len:#x} bytes at {addr:#x} to NUMA node {node} failed")]
    Bind {
        /// Start of the range.
        addr: usize,
        /// Length of the range in bytes.
        len: usize,
        /// The node the range was to be bound to.
        node: u32,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// `get_mempolicy(2)` failed.
    #[error("get_mempolicy(MPOL_F_ADDR) at {addr:#x} failed")]
    GetPolicy {
        /// The address queried.
        addr: usize,
        /// The errno.
        #[source]
        source: io::Error,
    },
}

/// Names a thread for error messages.
fn describe_tid(tid: Option<i32>) -> String {
    match tid {
        Some(tid) => format!("thread {tid}"),
        None => "the calling thread".to_string(),
    }
}
