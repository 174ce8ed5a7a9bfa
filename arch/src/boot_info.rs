//! What the kernel is told at entry: the Linux zero page (`boot_params`) for 64-bit and bzImage
//! entry, or the PVH `hvm_start_info` with its memory map and module list. Both carry the e820
//! map, the command line, the initramfs and the ACPI RSDP address.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend};

use crate::layout::{
    PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::memory_map::E820Entry;

/// Errors writing boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootInfoError {
    /// More memory-map entries than the structure holds.
    #[error("the memory map has {0} entries, more than the boot structures hold")]
    TooManyEntries(usize),
    /// A field does not fit the 32-bit boot protocol fields.
    #[error("{what} at {addr:#x} is beyond the 4 GiB the Linux boot protocol can address")]
    Above4G {
        /// Which item.
        what: &'static str,
        /// Its address.
        addr: u64,
    },
    /// linux-loader failed to write the structures.
    #[error("failed to write the boot information into guest memory")]
    Write(#[source] linux_loader::configurator::Error),
}

/// Everything the kernel learns at entry.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo<'a> {
    /// The memory map.
    pub e820: &'a [E820Entry],
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Length of the command line including the NUL.
    pub cmdline_size: usize,
    /// Initramfs `(address, size)`, if any.
    pub initramfs: Option<(u64, u64)>,
    /// Address of the ACPI RSDP.
    pub rsdp_addr: u64,
}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);
// SAFETY: boot_params is a plain-old-data repr(C) struct of integers and arrays of integers;
// any byte pattern is a valid value.
unsafe impl ByteValued for ZeroPage {}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = u32::from_le_bytes(crate::kernel::SETUP_HEADER_MAGIC);
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
const LOADED_HIGH: u8 = 0x1;
/// Linux holds at most this many e820 entries in the zero page.
pub const E820_MAX_ZEROPAGE: usize = 128;

fn low32(what: &'static str, addr: u64) -> Result<u32, BootInfoError> {
    u32::try_from(addr).map_err(|_| BootInfoError::Above4G { what, addr })
}

/// Writes the zero page at [`ZERO_PAGE_START`]. `header` is the bzImage's setup header (None
/// for an ELF kernel, for which Keel fills a minimal one).
pub fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    header: Option<setup_header>,
    info: &BootInfo,
) -> Result<GuestAddress, BootInfoError> {
    if info.e820.len() > E820_MAX_ZEROPAGE {
        return Err(BootInfoError::TooManyEntries(info.e820.len()));
    }
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.cmd_line_ptr = low32("the command line", info.cmdline_addr)?;
    params.hdr.cmdline_size = info.cmdline_size.saturating_sub(1) as u32;
    if let Some((addr, size)) = info.initramfs {
        params.hdr.ramdisk_image = low32("the initramfs", addr)?;
        params.hdr.ramdisk_size = low32("the initramfs size", size)?;
    }
    params.acpi_rsdp_addr = info.rsdp_addr;
    params.e820_entries = info.e820.len() as u8;
    for (slot, entry) in params.e820_table.iter_mut().zip(info.e820) {
        slot.addr = entry.addr;
        slot.size = entry.size;
        slot.r#type = entry.kind;
    }
    let addr = GuestAddress(ZERO_PAGE_START);
    let page = ZeroPage(params);
    LinuxBootConfigurator::write_bootparams::<M>(&BootParams::new(&page, addr), mem)
        .map_err(BootInfoError::Write)?;
    Ok(addr)
}

/// Magic number of `hvm_start_info` ("xEn3" with the top bit cleared).
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Writes `hvm_start_info`, its memory map and module list at [`PVH_INFO_START`].
pub fn write_pvh_start_info<M: GuestMemoryBackend>(
    mem: &M,
    info: &BootInfo,
) -> Result<GuestAddress, BootInfoError> {
    if info.e820.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(BootInfoError::TooManyEntries(info.e820.len()));
    }
    let memmap: Vec<hvm_memmap_table_entry> = info
        .e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut start = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: info.cmdline_addr,
        rsdp_paddr: info.rsdp_addr,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let addr = GuestAddress(PVH_INFO_START);
    let mut params = if let Some((paddr, size)) = info.initramfs {
        start.nr_modules = 1;
        start.modlist_paddr = PVH_MODLIST_START;
        let mut params = BootParams::new(&start, addr);
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
        params
    } else {
        BootParams::new(&start, addr)
    };
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams::<M>(&params, mem).map_err(BootInfoError::Write)?;
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_map::{e820_map, ram_regions};
    use vm_memory::{Address, Bytes, GuestMemoryMmap};

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn info(e820: &[E820Entry]) -> BootInfo<'_> {
        BootInfo {
            e820,
            cmdline_addr: 0x20000,
            cmdline_size: 12,
            initramfs: Some((0x80_0000, 0x1234)),
            rsdp_addr: 0xe0000,
        }
    }

    #[test]
    fn zero_page_fields_land_at_their_offsets() {
        let m = mem();
        let e820 = e820_map(&ram_regions(512 << 20, 46).unwrap());
        let at = write_zero_page(&m, None, &info(&e820)).unwrap();
        let r32 = |off: u64| m.read_obj::<u32>(at.unchecked_add(off)).unwrap();
        let r8 = |off: u64| m.read_obj::<u8>(at.unchecked_add(off)).unwrap();
        assert_eq!(m.read_obj::<u64>(at.unchecked_add(0x70)).unwrap(), 0xe0000);
        assert_eq!(r8(0x1e8) as usize, e820.len());
        assert_eq!(r32(0x228), 0x20000);
        assert_eq!(r32(0x218), 0x80_0000);
        assert_eq!(r32(0x21c), 0x1234);
        assert_eq!(r32(0x202), KERNEL_HDR_MAGIC);
        assert_eq!(r8(0x210), KERNEL_LOADER_OTHER);
        // Second e820 entry: the reserved EBDA/BIOS area.
        let e1 = at.unchecked_add(0x2d0 + 20);
        assert_eq!(m.read_obj::<u64>(e1).unwrap(), e820[1].addr);
        assert_eq!(m.read_obj::<u32>(e1.unchecked_add(16)).unwrap(), 2);
    }

    #[test]
    fn pvh_start_info_has_magic_memmap_and_module() {
        let m = mem();
        let e820 = e820_map(&ram_regions(512 << 20, 46).unwrap());
        let at = write_pvh_start_info(&m, &info(&e820)).unwrap();
        let si: hvm_start_info = m.read_obj(at).unwrap();
        assert_eq!(si.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(
            (si.cmdline_paddr, si.rsdp_paddr, si.nr_modules),
            (0x20000, 0xe0000, 1)
        );
        assert_eq!(si.memmap_entries as usize, e820.len());
        let last: hvm_memmap_table_entry = m
            .read_obj(GuestAddress(si.memmap_paddr + 24 * (e820.len() as u64 - 1)))
            .unwrap();
        assert_eq!((last.addr, last.size), (e820[3].addr, e820[3].size));
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x80_0000, 0x1234));
    }

    #[test]
    fn oversized_maps_and_high_addresses_are_refused() {
        let m = mem();
        let many = vec![
            E820Entry {
                addr: 0,
                size: 0x1000,
                kind: 1
            };
            E820_MAX_ZEROPAGE + 1
        ];
        assert!(matches!(
            write_zero_page(&m, None, &info(&many)),
            Err(BootInfoError::TooManyEntries(_))
        ));
        let too_many_pvh = vec![many[0]; PVH_MEMMAP_MAX_ENTRIES + 1];
        assert!(matches!(
            write_pvh_start_info(&m, &info(&too_many_pvh)),
            Err(BootInfoError::TooManyEntries(_))
        ));
        let e820 = e820_map(&ram_regions(512 << 20, 46).unwrap());
        let mut high = info(&e820);
        high.initramfs = Some((1 << 33, 10));
        assert!(matches!(
            write_zero_page(&m, None, &high),
            Err(BootInfoError::Above4G { .. })
        ));
    }
}
