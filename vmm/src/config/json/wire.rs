//! The wire shape of a `vm.create` body: Cloud Hypervisor's `VmConfig` field names, Keel's own
//! settings beside them. Every field is optional here; what is required is checked while
//! converting, so that the message can name the whole field path. Unknown names are refused
//! (`deny_unknown_fields`), so a typo is an error that names the field.
//!
//! Fields marked `skip_serializing` are Cloud Hypervisor's settings that Keel reads only to
//! check that they ask for nothing Keel lacks ([`super::cloud_hypervisor`]); Keel never writes
//! them. A field typed [`Value`] is a device list or section that must be absent, `null` or
//! empty, so its inside is not Keel's to parse.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VmWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<CpusWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<PayloadWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskWire>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numa: Option<Vec<NumaWire>>,
    #[serde(skip_serializing)]
    pub console: Option<ConsoleWire>,
    #[serde(skip_serializing)]
    pub debug_console: Option<ConsoleWire>,
    #[serde(skip_serializing)]
    pub rng: Option<RngWire>,
    #[serde(skip_serializing)]
    pub platform: Option<PlatformWire>,
    #[serde(skip_serializing)]
    pub net: Option<Value>,
    #[serde(skip_serializing)]
    pub balloon: Option<Value>,
    #[serde(skip_serializing)]
    pub fs: Option<Value>,
    #[serde(skip_serializing)]
    pub pmem: Option<Value>,
    #[serde(skip_serializing)]
    pub devices: Option<Value>,
    #[serde(skip_serializing)]
    pub user_devices: Option<Value>,
    #[serde(skip_serializing)]
    pub vdpa: Option<Value>,
    #[serde(skip_serializing)]
    pub vsock: Option<Value>,
    #[serde(skip_serializing)]
    pub sgx_epc: Option<Value>,
    #[serde(skip_serializing)]
    pub pci_segments: Option<Value>,
    #[serde(skip_serializing)]
    pub rate_limit_groups: Option<Value>,
    #[serde(skip_serializing)]
    pub tpm: Option<Value>,
    #[serde(skip_serializing)]
    pub landlock_rules: Option<Value>,
    #[serde(skip_serializing)]
    pub ivshmem: Option<Value>,
    #[serde(skip_serializing)]
    pub pvmemcontrol: Option<Value>,
    #[serde(skip_serializing)]
    pub pvpanic: Option<bool>,
    #[serde(skip_serializing)]
    pub iommu: Option<bool>,
    #[serde(skip_serializing)]
    pub watchdog: Option<bool>,
    #[serde(skip_serializing)]
    pub gdb: Option<bool>,
    #[serde(skip_serializing)]
    pub landlock_enable: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CpusWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_vcpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Vec<AffinityWire>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kvm_pv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hyperv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pvm_compat: Option<String>,
    #[serde(skip_serializing)]
    pub kvm_hyperv: Option<bool>,
    #[serde(skip_serializing)]
    pub topology: Option<TopologyWire>,
    #[serde(skip_serializing)]
    pub max_phys_bits: Option<u32>,
    #[serde(skip_serializing)]
    pub features: Option<CpuFeaturesWire>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AffinityWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_cpus: Option<Vec<u32>>,
}

/// Cloud Hypervisor's `cpus.topology`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopologyWire {
    pub threads_per_core: Option<u32>,
    pub cores_per_die: Option<u32>,
    pub dies_per_package: Option<u32>,
    pub packages: Option<u32>,
}

/// Cloud Hypervisor's `cpus.features`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CpuFeaturesWire {
    pub amx: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MemoryWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugepages: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugepage_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefault: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thp: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mergeable: Option<bool>,
    #[serde(skip_serializing)]
    pub hotplug_method: Option<String>,
    #[serde(skip_serializing)]
    pub hotplug_size: Option<u64>,
    #[serde(skip_serializing)]
    pub hotplugged_size: Option<u64>,
    #[serde(skip_serializing)]
    pub zones: Option<Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PayloadWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    #[serde(skip_serializing)]
    pub igvm: Option<String>,
    #[serde(skip_serializing)]
    pub host_data: Option<String>,
    #[serde(skip_serializing)]
    pub fw_cfg_config: Option<Value>,
}

/// Numbers the CLI range-checks are taken wide, so that the CLI's message, not serde's
/// integer-width one, says what range is allowed.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DiskWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iothread: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iothread_sched: Option<String>,
    #[serde(skip_serializing)]
    pub direct: Option<bool>,
    #[serde(skip_serializing)]
    pub iommu: Option<bool>,
    #[serde(skip_serializing)]
    pub vhost_user: Option<bool>,
    #[serde(skip_serializing)]
    pub vhost_socket: Option<String>,
    #[serde(skip_serializing)]
    pub rate_limit_group: Option<String>,
    #[serde(skip_serializing)]
    pub rate_limiter_config: Option<Value>,
    #[serde(skip_serializing)]
    pub disable_io_uring: Option<bool>,
    /// Accepted and never read: keel has no Linux AIO engine, so any value holds.
    #[serde(skip_serializing)]
    #[allow(dead_code)]
    pub disable_aio: Option<bool>,
    #[serde(skip_serializing)]
    pub pci_segment: Option<u32>,
    #[serde(skip_serializing)]
    pub queue_affinity: Option<Value>,
}

/// `serial`, and Cloud Hypervisor's `console` and `debug_console` (same shape).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConsoleWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing)]
    pub socket: Option<String>,
    #[serde(skip_serializing)]
    pub iommu: Option<bool>,
    #[serde(skip_serializing)]
    pub iobase: Option<u32>,
}

/// Keel's serial port is a console section too.
pub(super) type SerialWire = ConsoleWire;

/// Cloud Hypervisor's `rng`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RngWire {
    pub src: Option<String>,
    pub iommu: Option<bool>,
}

/// Cloud Hypervisor's `platform`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlatformWire {
    pub num_pci_segments: Option<u32>,
    pub iommu_segments: Option<Value>,
    /// Moot without a virtual IOMMU (which `iommu_segments` and `iommu` refuse): ignored.
    #[serde(rename = "iommu_address_width_bits")]
    pub _iommu_address_width_bits: Option<u8>,
    pub serial_number: Option<String>,
    pub uuid: Option<String>,
    pub oem_strings: Option<Value>,
    pub tdx: Option<bool>,
    pub sev_snp: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NumaWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_numa_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_numa_node: Option<u32>,
    #[serde(skip_serializing)]
    pub distances: Option<Value>,
    #[serde(skip_serializing)]
    pub memory_zones: Option<Value>,
    #[serde(skip_serializing)]
    pub pci_segments: Option<Value>,
    #[serde(skip_serializing)]
    pub sgx_epc_sections: Option<Value>,
}
