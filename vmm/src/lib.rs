//! Keel: a small KVM virtual machine monitor for x86-64, built on the rust-vmm crates. This
//! crate is the VMM as a library and nothing else: the `keel` command (its CLI, `keel stat`,
//! `keel bench`) lives in the `keel` crate and the benchmarks (the fio harness, the
//! `keel-blkbench` device benchmark) in the `keel-bench` crate, both built on this one.
//!
//! The flow is CLI or API socket ([`api`]) -> validated [`config::VmConfig`] ->
//! [`vm::Vm::create`] -> [`vm::Vm::start`] (one thread per vCPU, [`vcpu`]) -> exits handled by
//! [`exit::handle_exit`] -> devices on the buses. Embedders drive a VM through
//! [`handle::VmHandle`].
//!
//! `Vm::create` is a sequence of steps, each in its own module: the KVM VM and guest RAM
//! ([`vm`], laid out by [`placement`] over [`memory`]), the devices ([`device_manager`]: the
//! buses, legacy devices, PCI, BARs, interrupts and disks), the payload and boot tables
//! ([`loader`], in [`vm`]), and the vCPUs ([`vcpu`], with [`paravirt`] and what [`host`]
//! offers). [`stats`] holds the counters (userspace exits, KVM's statistics) and their views.

#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod device_manager;
pub mod event;
pub mod exit;
pub mod handle;
pub mod host;
pub mod loader;
pub mod memory;
pub mod paravirt;
pub mod placement;
pub mod seccomp;
pub mod snapshot;
pub mod stats;
pub mod vcpu;
pub mod vm;
