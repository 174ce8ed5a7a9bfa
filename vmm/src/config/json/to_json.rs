//! `VmConfig` -> JSON: the config `vm.info` reports, in the wire shape of [`super::wire`],
//! Keel's settings only (the Cloud Hypervisor fields Keel merely checks are never written).

use std::path::Path;

use super::super::paravirt::{hyperv_text, kvm_pv_text};
use super::super::{
    CacheMode, CpusConfig, DiskConfig, MemoryConfig, NumaNodeConfig, PayloadConfig, SerialConfig,
    Toggle, VmConfig,
};
#[cfg(doc)]
use super::vm_config_from_json;
use super::wire::{
    AffinityWire, CpusWire, DiskWire, MemoryWire, NumaWire, PayloadWire, SerialWire, VmWire,
};

/// The JSON form of `config`, every setting spelled out (`thp` only when not auto). For a
/// config the CLI built, [`vm_config_from_json`] gives `config` back. Paths that are not UTF-8
/// cannot be JSON strings; their bad bytes become U+FFFD.
pub fn vm_config_to_json(config: &VmConfig) -> String {
    let wire = VmWire {
        cpus: Some(cpus_to(&config.cpus)),
        memory: Some(memory_to(&config.memory)),
        payload: Some(payload_to(&config.payload)),
        disks: (!config.disks.is_empty()).then(|| config.disks.iter().map(disk_to).collect()),
        serial: Some(serial_to(&config.serial)),
        numa: (!config.numa.is_empty()).then(|| config.numa.iter().map(numa_to).collect()),
        ..VmWire::default()
    };
    // Every wire field is a string, number, bool or list of them, so this cannot fail.
    match serde_json::to_string(&wire) {
        Ok(text) => text,
        Err(e) => {
            log::error!("cannot write the VM config as JSON: {e}");
            String::from("{}")
        }
    }
}

/// A firmware payload is the firmware alone; a kernel payload is the kernel, its initramfs and
/// command line.
fn payload_to(payload: &PayloadConfig) -> PayloadWire {
    match &payload.firmware {
        Some(firmware) => PayloadWire {
            firmware: Some(path_text(firmware)),
            ..PayloadWire::default()
        },
        None => PayloadWire {
            kernel: Some(path_text(&payload.kernel)),
            initramfs: payload.initramfs.as_deref().map(path_text),
            cmdline: Some(payload.cmdline.clone()),
            ..PayloadWire::default()
        },
    }
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn cpus_to(cpus: &CpusConfig) -> CpusWire {
    CpusWire {
        boot_vcpus: Some(cpus.boot_vcpus),
        max_vcpus: Some(cpus.boot_vcpus),
        affinity: (!cpus.affinity.is_empty()).then(|| {
            cpus.affinity
                .iter()
                .map(|(vcpu, set)| AffinityWire {
                    vcpu: Some(*vcpu),
                    host_cpus: Some(set.iter().collect()),
                })
                .collect()
        }),
        kvm_pv: Some(kvm_pv_text(cpus.kvm_pv)),
        hyperv: Some(hyperv_text(&cpus.hyperv)),
        pvm_compat: Some(
            match cpus.pvm_compat {
                Toggle::Auto => "auto",
                Toggle::On => "on",
                Toggle::Off => "off",
            }
            .to_string(),
        ),
        ..CpusWire::default()
    }
}

fn memory_to(memory: &MemoryConfig) -> MemoryWire {
    MemoryWire {
        size: Some(memory.size),
        hugepages: Some(memory.hugepages),
        hugepage_size: memory.hugepage_size,
        prefault: Some(memory.prefault),
        thp: match memory.thp {
            Toggle::Auto => None,
            Toggle::On => Some(true),
            Toggle::Off => Some(false),
        },
        shared: Some(memory.shared),
        mergeable: Some(memory.mergeable),
        ..MemoryWire::default()
    }
}

fn disk_to(disk: &DiskConfig) -> DiskWire {
    let cpus = disk.iothread_cpus.as_ref().map(|c| format!("cpus:[{c}]"));
    let iothread = match (&disk.iothread, cpus) {
        (Some(name), Some(cpus)) => Some(format!("{name}:{cpus}")),
        (Some(name), None) => Some(name.clone()),
        (None, cpus) => cpus,
    };
    DiskWire {
        path: Some(path_text(&disk.path)),
        readonly: Some(disk.readonly),
        // Absent: one per vCPU (DiskConfig::queue_count).
        num_queues: disk.queues.map(u64::from),
        queue_size: Some(u64::from(disk.queue_size)),
        id: disk.id.clone(),
        serial: disk.serial.clone(),
        cache: Some(
            match disk.cache {
                CacheMode::None => "none",
                CacheMode::Writeback => "writeback",
            }
            .to_string(),
        ),
        iothread,
        numa_node: disk.numa_node,
        lock: Some(disk.lock),
        poll_us: Some(u64::from(disk.poll_us)),
        engine: Some(super::super::disk::engine_text(disk.engine).to_string()),
        iothread_sched: Some(
            super::super::disk::iothread_sched_text(disk.iothread_sched).to_string(),
        ),
        ..DiskWire::default()
    }
}

fn serial_to(serial: &SerialConfig) -> SerialWire {
    let (mode, file) = match serial {
        SerialConfig::Tty => ("Tty", None),
        SerialConfig::Off => ("Off", None),
        SerialConfig::File(path) => ("File", Some(path_text(path))),
    };
    SerialWire {
        mode: Some(mode.to_string()),
        file,
        ..SerialWire::default()
    }
}

fn numa_to(node: &NumaNodeConfig) -> NumaWire {
    NumaWire {
        guest_numa_id: Some(node.guest_node),
        cpus: Some(node.cpus.iter().collect()),
        memory: Some(node.memory),
        host_numa_node: node.host_node,
        ..NumaWire::default()
    }
}
