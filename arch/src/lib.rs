//! x86-64 knowledge Keel needs to build a guest: the guest-physical layout, the memory map,
//! CPUID (KVM's paravirtual features, Hyper-V's enlightenments) and register setup, the kernel
//! image formats and entry modes, the Linux/PVH boot structures, and the MP and ACPI tables.
//! Every x86 constant Keel uses is defined here, once; the words a user types to choose among
//! them are the VMM's configuration.
//!
//! Nothing here owns a device, a thread or a file descriptor: functions take guest memory or
//! plain values and return plain values, so every table can be unit-tested without `/dev/kvm`.

pub mod acpi;
pub mod boot_info;
pub mod cache_topology;
pub mod cpuid;
pub mod hyperv;
pub mod kernel;
pub mod kvm_pv;
pub mod layout;
pub mod memory_map;
pub mod mptable;
pub mod regs;
