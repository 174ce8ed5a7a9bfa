//! x86-64 knowledge Keel needs to build a guest: the guest-physical layout, the memory map,
//! CPUID and register setup, the Linux/PVH boot structures, and the MP and ACPI tables.
//!
//! Nothing here owns a device, a thread or a file descriptor: functions take guest memory or
//! plain values and return plain values, so every table can be unit-tested without `/dev/kvm`.

pub mod acpi;
pub mod boot_info;
pub mod cpuid;
pub mod hyperv;
pub mod kvm_pv;
pub mod layout;
pub mod memory_map;
pub mod mptable;
pub mod regs;
