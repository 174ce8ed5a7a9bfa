//! Keel's benchmarks, beside the VMM rather than inside it: they drive the [`vmm`] library (and,
//! for the device benchmark, the `devices` crate) from outside, as any embedder would.
//!
//! * [`fio`]: the harness behind `keel bench fio` — creates disks, boots a guest that runs a fio
//!   job in Keel (through [`vmm::handle::VmHandle`]) and optionally in QEMU, and reports fio's
//!   figures beside each VMM's exits per I/O. The `keel` binary parses its command line.
//! * the `keel-blkbench` binary (`src/bin/keel-blkbench/`): the host's io_uring ceiling, and
//!   Keel's virtio-blk device driven without a vCPU, for `make bench`.

#![deny(missing_docs)]

pub mod fio;
