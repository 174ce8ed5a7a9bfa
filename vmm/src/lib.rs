//! Keel: a small KVM virtual machine monitor for x86-64, built on the rust-vmm crates. This
//! crate is the VMM as a library and nothing else: the `keel` command (its CLI, `keel stat`,
//! `keel bench`) lives in the `keel` crate and the benchmarks (the fio harness, the
//! `keel-blkbench` device benchmark) in the `keel-bench` crate, both built on this one.
//!
//! The flow is CLI or API socket ([`api`]) -> validated [`config::VmConfig`] ->
//! [`vm::Vm::create`] (memory, irqchip, devices, boot) -> [`vm::Vm::start`] (one thread per
//! vCPU) -> exits handled by [`exit::handle_exit`] -> devices on the buses. Embedders drive a
//! VM through [`handle::VmHandle`].

#![deny(missing_docs)]

pub mod api;
pub mod block_devices;
pub mod config;
pub mod exit;
pub mod handle;
pub mod host;
pub mod interrupts;
pub mod kvm_stats;
pub mod legacy_devices;
pub mod loader;
pub mod memory;
pub mod paravirt;
pub mod pci_bars;
pub mod pci_host;
pub mod placement;
pub mod stats_view;
pub mod vcpu;
pub mod vcpu_control;
pub mod vm;
