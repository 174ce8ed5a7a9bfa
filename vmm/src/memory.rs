//! Guest RAM: anonymous mappings laid out around the 32-bit MMIO hole (see
//! `arch::memory_map`), registered with KVM as one memory slot per region.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Errors creating or registering guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The layout was refused.
    #[error("invalid guest memory layout")]
    Layout(#[source] arch::memory_map::MemoryMapError),
    /// mmap failed.
    #[error("failed to allocate {size} bytes of guest memory")]
    Allocate {
        /// Requested size.
        size: u64,
        /// Cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// A size does not fit usize.
    #[error("guest memory region of {0} bytes is too large for this host")]
    RegionTooLarge(u64),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM refused guest memory slot {slot}")]
    Register {
        /// Slot number.
        slot: u32,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Guest RAM and its layout.
#[derive(Debug)]
pub struct GuestRam {
    /// The mappings.
    pub mem: GuestMemoryMmap,
    /// `(start, size)` per region.
    pub regions: Vec<(u64, u64)>,
}

impl GuestRam {
    /// Maps `size` bytes of guest RAM for a guest with `phys_bits` of physical address space.
    pub fn new(size: u64, phys_bits: u32) -> Result<Self, MemoryError> {
        let regions =
            arch::memory_map::ram_regions(size, phys_bits).map_err(MemoryError::Layout)?;
        let ranges = regions
            .iter()
            .map(|&(start, len)| {
                usize::try_from(len)
                    .map(|len| (GuestAddress(start), len))
                    .map_err(|_| MemoryError::RegionTooLarge(len))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mem = GuestMemoryMmap::from_ranges(&ranges)
            .map_err(|source| MemoryError::Allocate { size, source })?;
        Ok(GuestRam { mem, regions })
    }

    /// End of RAM below the 32-bit hole.
    pub fn low_ram_end(&self) -> u64 {
        self.regions
            .first()
            .map_or(0, |&(start, size)| start + size)
    }

    /// Registers every region with KVM.
    pub fn register(&self, vm: &VmFd) -> Result<(), MemoryError> {
        for (slot, region) in self.mem.iter().enumerate() {
            let slot = slot as u32;
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| MemoryError::RegionTooLarge(region.len()))?;
            let desc = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region's host mapping is owned by `self.mem`, which lives as long as
            // the VM (Vm keeps GuestRam alive until after the VmFd is dropped), and the guest
            // ranges do not overlap (arch::memory_map lays them out disjointly).
            unsafe { vm.set_user_memory_region(desc) }
                .map_err(|source| MemoryError::Register { slot, source })?;
        }
        Ok(())
    }
}
