//! Keel's integration tests, `tests/tests/*.rs`, with shared helpers in `tests/tests/common`.
//!
//! Where they run, and why: every test here boots the probe guest (or a tiny hand-assembled
//! kernel) with the `keel` binary on this host's `/dev/kvm`, whatever kind it is, including
//! PVM (KVM without VT-x, the development machines). The probe runs its hot loops at CPL3,
//! which PVM runs natively, so dataplane, placement, exit-accounting, API, embedding, lifecycle
//! and bad-input tests measure real behaviour there; what the probe reads of the CPU (CPUID) it
//! reads at CPL0 through its #GP handler, so its answers are Keel's on every host. Tests that
//! need a production-like KVM to mean anything (a stock Linux kernel and its drivers) are not
//! here: they are the Linux guest suite in `rig/` (`make rig`), which runs directly on
//! VT-x/AMD-V hosts and inside the nested rig on PVM hosts. The README's "Where each test
//! runs" has the table.
