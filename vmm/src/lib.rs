//! Keel: a small KVM virtual machine monitor for x86-64, built on the rust-vmm crates.
//!
//! The flow is CLI or API socket ([`api`]) -> validated [`config::VmConfig`] ->
//! [`vm::Vm::create`] (memory, irqchip, devices, boot) -> [`vm::Vm::start`] (one thread per
//! vCPU) -> exits handled by [`exit::handle_exit`] -> devices on the buses.

#![deny(missing_docs)]

pub mod api;
pub mod block_devices;
pub mod config;
pub mod exit;
pub mod fio_bench;
pub mod handle;
pub mod host;
pub mod interrupts;
pub mod kvm_stats;
pub mod legacy_devices;
pub mod loader;
pub mod logger;
pub mod memory;
pub mod paravirt;
pub mod pci_bars;
pub mod pci_host;
pub mod placement;
pub mod remote_stats;
pub mod stats_view;
pub mod vcpu;
pub mod vcpu_control;
pub mod vm;
