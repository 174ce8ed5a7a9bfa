//! The payload step: the kernel, its command line and initramfs (or a PVH firmware) loaded into
//! guest RAM, the boot tables (MP table, ACPI) and the boot information the entry mode expects
//! (Linux zero page or PVH start info). Yields where the boot vCPU starts.

use arch::layout::{self, PciWindows};
use vm_memory::GuestAddress;

use crate::config::VmConfig;
use crate::loader::{self, EntryMode};
use crate::memory::GuestRam;
use crate::placement::Plan;
use crate::vcpu::BootEntry;

use super::VmError;

/// Loads `config`'s payload into `ram` and writes the boot tables for `plan`'s NUMA layout and
/// the PCI `windows`.
pub(super) fn load(
    config: &VmConfig,
    ram: &GuestRam,
    plan: &Plan,
    windows: &PciWindows,
) -> Result<BootEntry, VmError> {
    let mem = &ram.mem;
    let payload = &config.payload;
    let (image, kernel) = match &payload.firmware {
        Some(firmware) => (firmware, loader::load_firmware(mem, firmware)?),
        None => (&payload.kernel, loader::load_kernel(mem, &payload.kernel)?),
    };
    // A firmware's payload has an empty command line and no initramfs.
    let cmdline_size = loader::load_cmdline(mem, &payload.cmdline)?;
    let initramfs = match &payload.initramfs {
        Some(path) => Some(loader::load_initramfs(
            mem,
            path,
            &kernel,
            ram.low_ram_end(),
        )?),
        None => None,
    };
    let num_vcpus = config.cpus.boot_vcpus;
    arch::mptable::setup_mptable(mem, num_vcpus).map_err(VmError::MpTable)?;
    let rsdp = arch::acpi::create_acpi_tables(mem, num_vcpus, windows, plan.numa.as_ref())
        .map_err(VmError::Acpi)?;
    let e820 = arch::memory_map::e820_map(&ram.regions);
    let info = arch::boot_info::BootInfo {
        e820: &e820,
        cmdline_addr: layout::CMDLINE_START,
        cmdline_size,
        initramfs,
        rsdp_addr: rsdp.0,
    };
    let boot_info = match kernel.mode {
        EntryMode::Linux64 => arch::boot_info::write_zero_page(mem, kernel.setup_header, &info),
        EntryMode::Pvh => arch::boot_info::write_pvh_start_info(mem, &info),
    }
    .map_err(VmError::BootInfo)?;
    log::info!(
        "{} {}: {:?} image, {:?} entry at {:#x}",
        if payload.firmware.is_some() {
            "firmware"
        } else {
            "kernel"
        },
        image.display(),
        kernel.format,
        kernel.mode,
        kernel.entry.0
    );
    Ok(BootEntry {
        mode: kernel.mode,
        entry: kernel.entry,
        boot_info: GuestAddress(boot_info.0),
    })
}
