//! Guest RAM: host mappings laid out around the 32-bit MMIO hole (see `arch::memory_map`),
//! one per (region, guest NUMA node) piece, each bound to its host node before it is touched,
//! advised, optionally prefaulted in parallel, and registered with KVM as one memory slot.

mod align;
mod backing;
mod prefault;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

pub use align::is_aligned as is_ram_aligned;
pub use backing::Backing;
pub use prefault::{PrefaultReport, WorkerReport};

use crate::placement::{self, CpuSet, PlacementError};

/// Errors creating or registering guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The layout was refused.
    #[error("invalid guest memory layout")]
    Layout(#[source] arch::memory_map::MemoryMapError),
    /// A host mapping could not be made.
    #[error("{what} failed for {size} bytes of guest memory")]
    Map {
        /// The call that failed.
        what: &'static str,
        /// Bytes asked for.
        size: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The mappings could not be assembled into guest memory.
    #[error("guest memory regions are inconsistent: {0}")]
    Regions(String),
    /// A required madvise failed.
    #[error("{advice} on guest memory failed")]
    Advise {
        /// The advice.
        advice: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// mbind failed.
    #[error("cannot bind guest memory at {guest:#x} to host node {node}")]
    Bind {
        /// Guest address of the piece.
        guest: u64,
        /// Host node.
        node: u32,
        /// Cause.
        #[source]
        source: PlacementError,
    },
    /// Faulting memory in failed.
    #[error(
        "prefaulting guest memory failed at host address {addr:#x} (out of memory or huge pages?)"
    )]
    Prefault {
        /// Host address of the chunk.
        addr: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A prefault worker could not start.
    #[error("cannot start a prefault thread")]
    PrefaultThread {
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A prefault worker panicked.
    #[error("a prefault thread panicked")]
    PrefaultPanicked,
    /// Not every byte was faulted.
    #[error("prefault covered {done} of {total} bytes")]
    PrefaultIncomplete {
        /// Bytes done.
        done: u64,
        /// Bytes asked.
        total: u64,
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

/// One piece of guest RAM: a contiguous guest range on one guest node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamPiece {
    /// Guest physical start.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// Guest NUMA node.
    pub guest_node: u32,
    /// Host node its memory is bound to (MPOL_BIND), if any.
    pub host_node: Option<u32>,
}

/// A piece and where it is mapped in Keel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedPiece {
    /// The piece.
    pub piece: RamPiece,
    /// Host virtual address of its first byte.
    pub host_addr: usize,
}

/// Guest RAM and its layout.
#[derive(Debug)]
pub struct GuestRam {
    /// The mappings.
    pub mem: GuestMemoryMmap,
    /// `(start, size)` per RAM region (below and above the 32-bit hole).
    pub regions: Vec<(u64, u64)>,
    /// The mapped pieces, in guest address order.
    pub pieces: Vec<MappedPiece>,
    /// How they are backed.
    pub backing: Backing,
}

impl GuestRam {
    /// Maps 4K-page guest RAM of `size` bytes on one node, with no binding (for tools and
    /// tests).
    pub fn new(size: u64, phys_bits: u32) -> Result<Self, MemoryError> {
        let regions =
            arch::memory_map::ram_regions(size, phys_bits).map_err(MemoryError::Layout)?;
        let pieces: Vec<RamPiece> = regions
            .iter()
            .map(|&(start, size)| RamPiece {
                start,
                size,
                guest_node: 0,
                host_node: None,
            })
            .collect();
        let backing = Backing {
            page_size: 4096,
            hugetlb: false,
            shared: false,
            thp: true,
            mergeable: false,
        };
        Self::with_pieces(regions, &pieces, &backing)
    }

    /// Maps every piece with `backing`: map, bind to its host node, advise; nothing is
    /// touched. `regions` are the RAM regions the pieces cover (for e820).
    pub fn with_pieces(
        regions: Vec<(u64, u64)>,
        pieces: &[RamPiece],
        backing: &Backing,
    ) -> Result<Self, MemoryError> {
        let mut mapped = Vec::with_capacity(pieces.len());
        let mut guest_regions = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let name = format!("keel-ram-node{}-{:x}", piece.guest_node, piece.start);
            let region = backing::map(&name, piece.size, backing)?;
            let (ptr, len) = (region.as_ptr(), region.size());
            if let Some(node) = piece.host_node {
                placement::bind_to_node(ptr, len, node).map_err(|source| MemoryError::Bind {
                    guest: piece.start,
                    node,
                    source,
                })?;
            }
            backing::advise(ptr, len, backing)?;
            mapped.push(MappedPiece {
                piece: *piece,
                host_addr: ptr as usize,
            });
            let region =
                GuestRegionMmap::new(region, GuestAddress(piece.start)).ok_or_else(|| {
                    MemoryError::Regions(format!("piece at {:#x} overflows", piece.start))
                })?;
            guest_regions.push(region);
        }
        let mem = GuestMemoryMmap::from_regions(guest_regions)
            .map_err(|e| MemoryError::Regions(e.to_string()))?;
        Ok(GuestRam {
            mem,
            regions,
            pieces: mapped,
            backing: *backing,
        })
    }

    /// Faults every piece in, in parallel on `cpus`.
    pub fn prefault(&self, cpus: &CpuSet) -> Result<PrefaultReport, MemoryError> {
        let ranges: Vec<prefault::Range> = self
            .pieces
            .iter()
            .map(|p| {
                usize::try_from(p.piece.size)
                    .map(|len| prefault::Range {
                        addr: p.host_addr,
                        len,
                    })
                    .map_err(|_| MemoryError::RegionTooLarge(p.piece.size))
            })
            .collect::<Result<_, _>>()?;
        prefault::prefault(&ranges, self.backing.page_size, cpus)
    }

    /// End of RAM below the 32-bit hole.
    pub fn low_ram_end(&self) -> u64 {
        self.regions
            .first()
            .map_or(0, |&(start, size)| start + size)
    }

    /// End of the highest RAM region (exclusive).
    pub fn end(&self) -> u64 {
        self.regions
            .iter()
            .map(|&(start, size)| start + size)
            .max()
            .unwrap_or(0)
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
