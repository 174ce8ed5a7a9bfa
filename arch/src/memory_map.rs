//! Where guest RAM goes and how the guest is told: RAM regions split around the 32-bit MMIO
//! hole, and the e820 map handed over in boot_params or the PVH memory map.

use crate::layout::{
    EBDA_START, HIMEM_START, MEM_32BIT_GAP_SIZE, MEM_32BIT_GAP_START, PCI_ECAM_SIZE,
    PCI_ECAM_START, RAM_64BIT_START,
};

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// Smallest guest RAM Keel accepts: the low-memory boot structures plus room for a kernel.
pub const MIN_MEMORY: u64 = 2 << 20;

/// Errors from laying out guest RAM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryMapError {
    /// Less RAM than the boot structures need.
    #[error("guest memory of {0} bytes is too small: Keel needs at least {MIN_MEMORY} bytes")]
    TooSmall(u64),
    /// RAM size not a multiple of 4 KiB.
    #[error("guest memory of {0} bytes is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// RAM would end beyond what the guest can address.
    #[error("guest memory of {size} bytes does not fit below the {phys_bits}-bit physical address limit")]
    TooLarge {
        /// Requested size.
        size: u64,
        /// Guest physical address width.
        phys_bits: u32,
    },
}

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820_RAM, E820_RESERVED, ...
    pub kind: u32,
}

/// The RAM regions `(start, size)` for `mem_size` bytes of guest RAM: below the hole, then
/// (if any is left) from 4 GiB up. Fails for sizes that are too small, unaligned or beyond
/// `phys_bits` of guest physical address space.
pub fn ram_regions(mem_size: u64, phys_bits: u32) -> Result<Vec<(u64, u64)>, MemoryMapError> {
    if mem_size < MIN_MEMORY {
        return Err(MemoryMapError::TooSmall(mem_size));
    }
    if !mem_size.is_multiple_of(0x1000) {
        return Err(MemoryMapError::Unaligned(mem_size));
    }
    let low = mem_size.min(MEM_32BIT_GAP_START);
    let mut regions = vec![(0, low)];
    let high = mem_size - low;
    if high > 0 {
        let limit = 1u64.checked_shl(phys_bits).unwrap_or(u64::MAX);
        let end = RAM_64BIT_START.checked_add(high);
        if end.is_none_or(|end| end > limit) {
            return Err(MemoryMapError::TooLarge {
                size: mem_size,
                phys_bits,
            });
        }
        regions.push((RAM_64BIT_START, high));
    }
    Ok(regions)
}

/// The e820 map for guest RAM laid out by [`ram_regions`] (plus the reserved ECAM window): low RAM up to the EBDA, the
/// EBDA/legacy/BIOS area reserved, RAM from 1 MiB, the MMIO hole omitted (the IOAPIC/LAPIC
/// pages are reserved by Linux itself), RAM above 4 GiB.
pub fn e820_map(regions: &[(u64, u64)]) -> Vec<E820Entry> {
    let mut map = Vec::new();
    for &(start, size) in regions {
        let end = start + size;
        if start < HIMEM_START {
            map.push(E820Entry {
                addr: start,
                size: EBDA_START - start,
                kind: E820_RAM,
            });
            map.push(E820Entry {
                addr: EBDA_START,
                size: HIMEM_START - EBDA_START,
                kind: E820_RESERVED,
            });
            if end > HIMEM_START {
                map.push(E820Entry {
                    addr: HIMEM_START,
                    size: end - HIMEM_START,
                    kind: E820_RAM,
                });
            }
        } else {
            map.push(E820Entry {
                addr: start,
                size,
                kind: E820_RAM,
            });
        }
    }
    // The PCI configuration window (ECAM) must be reserved for a guest to trust MCFG.
    let ecam = E820Entry {
        addr: PCI_ECAM_START,
        size: PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    };
    let at = map
        .iter()
        .position(|e| e.addr > PCI_ECAM_START)
        .unwrap_or(map.len());
    map.insert(at, ecam);
    map
}

/// RAM below 4 GiB and above 4 GiB, in bytes (what the CMOS memory registers report).
pub fn ram_below_and_above_4g(regions: &[(u64, u64)]) -> (u64, u64) {
    regions.iter().fold((0, 0), |(low, high), &(start, size)| {
        if start < MEM_32BIT_GAP_START + MEM_32BIT_GAP_SIZE {
            (low + size, high)
        } else {
            (low, high + size)
        }
    })
}

/// Splits the RAM `regions` (as laid out by [`ram_regions`]) among NUMA nodes holding
/// `node_sizes` bytes each, in order: node 0 takes the lowest addresses. Returns
/// `(start, size, node index)` pieces in address order; a node whose memory straddles the
/// 32-bit hole gets one piece on each side. `None` if the sizes do not add up to the regions'.
pub fn split_among_nodes(
    regions: &[(u64, u64)],
    node_sizes: &[u64],
) -> Option<Vec<(u64, u64, usize)>> {
    let total: u64 = regions.iter().map(|r| r.1).sum();
    if node_sizes.iter().try_fold(0u64, |a, &s| a.checked_add(s))? != total {
        return None;
    }
    let mut pieces = Vec::new();
    let mut nodes = node_sizes
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, s)| s > 0);
    let mut current = nodes.next();
    for &(start, size) in regions {
        let (mut at, end) = (start, start + size);
        while at < end {
            let (node, left) = current?;
            let take = left.min(end - at);
            pieces.push((at, take, node));
            at += take;
            current = if take == left {
                nodes.next()
            } else {
                Some((node, left - take))
            };
        }
    }
    Some(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_split_the_regions_in_order() {
        let gib = 1u64 << 30;
        // 4 GiB: 3 GiB below the hole, 1 GiB above.
        let regions = ram_regions(4 * gib, 40).unwrap();
        let pieces = split_among_nodes(&regions, &[2 * gib, 2 * gib]).unwrap();
        assert_eq!(
            pieces,
            vec![
                (0, 2 * gib, 0),
                (2 * gib, gib, 1),
                (RAM_64BIT_START, gib, 1)
            ]
        );
        let pieces = split_among_nodes(&regions, &[gib, gib, gib, gib]).unwrap();
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces[3], (RAM_64BIT_START, gib, 3));
        assert_eq!(
            split_among_nodes(&regions, &[4 * gib]).unwrap(),
            vec![(0, 3 * gib, 0), (RAM_64BIT_START, gib, 0)]
        );
        assert!(split_among_nodes(&regions, &[gib, gib]).is_none());
        assert!(split_among_nodes(&regions, &[5 * gib]).is_none());
        assert!(split_among_nodes(&regions, &[u64::MAX, 2]).is_none());
    }

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(512 << 20, 46).unwrap(), vec![(0, 512 << 20)]);
    }

    #[test]
    fn large_guest_splits_around_the_hole() {
        let r = ram_regions(4 << 30, 46).unwrap();
        assert_eq!(
            r,
            vec![(0, MEM_32BIT_GAP_START), (RAM_64BIT_START, 1 << 30)]
        );
        assert_eq!(ram_below_and_above_4g(&r), (MEM_32BIT_GAP_START, 1 << 30));
    }

    #[test]
    fn exactly_the_low_part_has_no_high_region() {
        let r = ram_regions(MEM_32BIT_GAP_START, 46).unwrap();
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert_eq!(ram_regions(0, 46), Err(MemoryMapError::TooSmall(0)));
        assert_eq!(
            ram_regions(MIN_MEMORY + 1, 46),
            Err(MemoryMapError::Unaligned(MIN_MEMORY + 1))
        );
        assert!(matches!(
            ram_regions(1 << 40, 39),
            Err(MemoryMapError::TooLarge { .. })
        ));
        assert!(matches!(
            ram_regions(!0xfff_u64, 64),
            Err(MemoryMapError::TooLarge { .. })
        ));
    }

    #[test]
    fn e820_reserves_the_bios_area_and_skips_the_hole() {
        let r = ram_regions(5 << 30, 46).unwrap();
        let map = e820_map(&r);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: EBDA_START,
                    size: HIMEM_START - EBDA_START,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: MEM_32BIT_GAP_START - HIMEM_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: PCI_ECAM_START,
                    size: PCI_ECAM_SIZE,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: RAM_64BIT_START,
                    size: 2 << 30,
                    kind: E820_RAM
                },
            ]
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (5 << 30) - (HIMEM_START - EBDA_START));
    }
}
