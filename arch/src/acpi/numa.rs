//! Guest NUMA topology for ACPI: the System Resource Affinity Table ("SRAT", ACPI 6.5 section
//! 5.2.16, revision 3), which puts each APIC ID and each guest-physical memory range into a
//! proximity domain, and the System Locality Information Table ("SLIT", section 5.2.17,
//! revision 1) with the relative distances between those domains.
//!
//! A [`NumaLayout`] names the nodes by index: node `i` is proximity domain `i` and locality `i`
//! of the SLIT. Check a layout with [`NumaLayout::validate`] before building its tables;
//! [`super::create_acpi_tables`] does so. [`srat`] and [`slit`] never panic, but a layout that
//! fails validation gives tables a guest rejects.

use super::sdt::Sdt;
use super::AcpiError;

/// SRAT revision.
pub const SRAT_REVISION: u8 = 3;
/// SLIT revision.
pub const SLIT_REVISION: u8 = 1;
/// Offset of the first SRAT affinity structure (after the header, a reserved u32 that must be
/// 1, and 8 reserved bytes).
pub const SRAT_ENTRIES_OFFSET: usize = 48;
/// Offset of the SLIT matrix (after the header and the u64 number of localities).
pub const SLIT_MATRIX_OFFSET: usize = 44;
/// SLIT distance of a locality to itself.
pub const LOCAL_DISTANCE: u8 = 10;

/// SRAT affinity structure types and lengths.
pub mod entry_type {
    /// Processor Local APIC/SAPIC Affinity.
    pub const LOCAL_APIC: u8 = 0;
    /// Length of a Processor Local APIC/SAPIC Affinity structure.
    pub const LOCAL_APIC_LEN: u8 = 16;
    /// Memory Affinity.
    pub const MEMORY: u8 = 1;
    /// Length of a Memory Affinity structure.
    pub const MEMORY_LEN: u8 = 40;
    /// Processor Local x2APIC Affinity.
    pub const LOCAL_X2APIC: u8 = 2;
    /// Length of a Processor Local x2APIC Affinity structure.
    pub const LOCAL_X2APIC_LEN: u8 = 24;
}

/// Affinity flags: the structure is enabled (processor or memory flags, bit 0).
const ENABLED: u32 = 1;
/// The reserved u32 after the SRAT header "must be 1" (the table revision of ACPI 2.0 SRATs).
const SRAT_RESERVED1: u32 = 1;
/// Highest APIC ID a Processor Local APIC Affinity structure carries; above it the x2APIC
/// structure is used, as in the MADT (0xff is the xAPIC broadcast ID).
const XAPIC_MAX_ID: u32 = 0xfe;

/// One guest NUMA node (proximity domain = its index in [`NumaLayout::nodes`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NumaNode {
    /// APIC IDs of the vCPUs in this node.
    pub apic_ids: Vec<u32>,
    /// Guest-physical memory of this node: `(start, size)` in bytes.
    pub memory: Vec<(u64, u64)>,
}

/// The guest's NUMA topology.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NumaLayout {
    /// The nodes; node `i` is proximity domain `i`.
    pub nodes: Vec<NumaNode>,
    /// `distances[i][j]`: relative distance from node `i` to node `j` (an n x n matrix, 10 on
    /// the diagonal, at least 11 elsewhere; 255 means unreachable).
    pub distances: Vec<Vec<u8>>,
}

impl NumaLayout {
    /// Checks what the guest needs of the layout: at least one node, an n x n distance matrix
    /// with 10 on the diagonal and more than 10 elsewhere (Linux ignores a SLIT with an
    /// off-diagonal distance of 10 or less), no APIC ID listed twice, and no empty or
    /// wrapping memory range. Whether every vCPU is in some node, and whether the ranges match
    /// guest RAM, is the caller's business.
    pub fn validate(&self) -> Result<(), AcpiError> {
        let n = self.nodes.len();
        if n == 0 {
            return Err(AcpiError::NumaNoNodes);
        }
        if self.distances.len() != n {
            return Err(AcpiError::NumaDistanceRows {
                rows: self.distances.len(),
                nodes: n,
            });
        }
        for (from, row) in self.distances.iter().enumerate() {
            if row.len() != n {
                return Err(AcpiError::NumaDistanceRow {
                    row: from,
                    len: row.len(),
                    nodes: n,
                });
            }
            for (to, &distance) in row.iter().enumerate() {
                if from == to && distance != LOCAL_DISTANCE {
                    return Err(AcpiError::NumaLocalDistance {
                        node: from,
                        distance,
                    });
                }
                if from != to && distance <= LOCAL_DISTANCE {
                    return Err(AcpiError::NumaRemoteDistance { from, to, distance });
                }
            }
        }
        let mut seen: Vec<(u32, usize)> = self
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(node, n)| n.apic_ids.iter().map(move |&id| (id, node)))
            .collect();
        // Stable: of two equal IDs, the one in the lower node comes first.
        seen.sort_by_key(|&(id, _)| id);
        if let Some(w) = seen.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(AcpiError::NumaDuplicateApicId {
                apic_id: w[0].0,
                first: w[0].1,
                second: w[1].1,
            });
        }
        for (node, n) in self.nodes.iter().enumerate() {
            for &(start, size) in &n.memory {
                if size == 0 || start.checked_add(size).is_none() {
                    return Err(AcpiError::NumaMemory { node, start, size });
                }
            }
        }
        Ok(())
    }
}

/// The proximity domain of node `index`. Lossless for any layout that fits in memory.
fn domain(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// Processor Local APIC/SAPIC Affinity for an xAPIC ID (<= 254).
fn local_apic_affinity(apic_id: u8, domain: u32) -> [u8; entry_type::LOCAL_APIC_LEN as usize] {
    let d = domain.to_le_bytes();
    let mut e = [0u8; entry_type::LOCAL_APIC_LEN as usize];
    e[0] = entry_type::LOCAL_APIC;
    e[1] = entry_type::LOCAL_APIC_LEN;
    e[2] = d[0]; // proximity domain [7:0]
    e[3] = apic_id;
    e[4..8].copy_from_slice(&ENABLED.to_le_bytes());
    // e[8]: local SAPIC EID, 0.
    e[9..12].copy_from_slice(&d[1..4]); // proximity domain [31:8]
                                        // e[12..16]: clock domain, 0.
    e
}

/// Processor Local x2APIC Affinity.
fn local_x2apic_affinity(apic_id: u32, domain: u32) -> [u8; entry_type::LOCAL_X2APIC_LEN as usize] {
    let mut e = [0u8; entry_type::LOCAL_X2APIC_LEN as usize];
    e[0] = entry_type::LOCAL_X2APIC;
    e[1] = entry_type::LOCAL_X2APIC_LEN;
    // e[2..4]: reserved.
    e[4..8].copy_from_slice(&domain.to_le_bytes());
    e[8..12].copy_from_slice(&apic_id.to_le_bytes());
    e[12..16].copy_from_slice(&ENABLED.to_le_bytes());
    // e[16..20]: clock domain, 0; e[20..24]: reserved.
    e
}

/// Memory Affinity for `size` bytes at guest-physical `start`.
fn memory_affinity(start: u64, size: u64, domain: u32) -> [u8; entry_type::MEMORY_LEN as usize] {
    let mut e = [0u8; entry_type::MEMORY_LEN as usize];
    e[0] = entry_type::MEMORY;
    e[1] = entry_type::MEMORY_LEN;
    e[2..6].copy_from_slice(&domain.to_le_bytes());
    // e[6..8]: reserved. Base and length are split into low and high u32 halves, which for a
    // little-endian u64 is the u64 itself.
    e[8..16].copy_from_slice(&start.to_le_bytes());
    e[16..24].copy_from_slice(&size.to_le_bytes());
    // e[24..28]: reserved.
    e[28..32].copy_from_slice(&ENABLED.to_le_bytes());
    // e[32..40]: reserved.
    e
}

/// The SRAT: per node, one processor affinity structure per APIC ID (xAPIC form up to ID 254,
/// x2APIC form above), then one memory affinity structure per range; all enabled.
pub fn srat(layout: &NumaLayout) -> Vec<u8> {
    let mut t = Sdt::new(*b"SRAT", SRAT_REVISION);
    t.append_u32(SRAT_RESERVED1);
    t.append_u64(0); // reserved
    for (index, node) in layout.nodes.iter().enumerate() {
        let domain = domain(index);
        for &id in &node.apic_ids {
            match u8::try_from(id) {
                Ok(id8) if id <= XAPIC_MAX_ID => t.append(&local_apic_affinity(id8, domain)),
                _ => t.append(&local_x2apic_affinity(id, domain)),
            }
        }
        for &(start, size) in &node.memory {
            t.append(&memory_affinity(start, size, domain));
        }
    }
    t.finish()
}

/// The SLIT: the number of localities (nodes) as a u64, then the n x n distance matrix row by
/// row. A missing entry (a layout that fails validation) is written as 0, which guests reject.
pub fn slit(layout: &NumaLayout) -> Vec<u8> {
    let n = layout.nodes.len();
    let mut t = Sdt::new(*b"SLIT", SLIT_REVISION);
    t.append_u64(n as u64);
    for from in 0..n {
        let row = layout.distances.get(from).map(Vec::as_slice).unwrap_or(&[]);
        let bytes: Vec<u8> = (0..n).map(|to| row.get(to).copied().unwrap_or(0)).collect();
        t.append(&bytes);
    }
    t.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::acpi::sdt::{checksum, HEADER_SIZE};

    fn u32_at(t: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(t[o..o + 4].try_into().unwrap())
    }

    fn u64_at(t: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(t[o..o + 8].try_into().unwrap())
    }

    /// Splits an SRAT into its affinity structures.
    pub(crate) fn entries(t: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = &t[SRAT_ENTRIES_OFFSET..];
        while !rest.is_empty() {
            let len = rest[1] as usize;
            assert!(len >= 2 && len <= rest.len(), "bad entry length {len}");
            out.push(&rest[..len]);
            rest = &rest[len..];
        }
        out
    }

    /// `n` nodes of `cpus` vCPUs (consecutive APIC IDs) and `mem` bytes each (consecutive
    /// ranges from 0), distance 10 locally and `20 + |i - j|` otherwise.
    pub(crate) fn layout(n: usize, cpus: u32, mem: u64) -> NumaLayout {
        NumaLayout {
            nodes: (0..n)
                .map(|i| NumaNode {
                    apic_ids: (0..cpus).map(|c| i as u32 * cpus + c).collect(),
                    memory: vec![(i as u64 * mem, mem)],
                })
                .collect(),
            distances: (0..n)
                .map(|i| {
                    (0..n)
                        .map(|j| if i == j { 10 } else { 20 + i.abs_diff(j) as u8 })
                        .collect()
                })
                .collect(),
        }
    }

    fn check_header(t: &[u8], sig: &[u8; 4], revision: u8) {
        assert_eq!(&t[0..4], sig);
        assert_eq!(u32_at(t, 4) as usize, t.len());
        assert_eq!(t[8], revision);
        assert_eq!(&t[10..16], b"KEEL  ");
        assert_eq!(checksum(t), 0, "checksum");
        assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
    }

    #[test]
    fn local_apic_affinity_layout() {
        let e = local_apic_affinity(7, 0x1234_5678);
        assert_eq!(
            e,
            [0, 16, 0x78, 7, 1, 0, 0, 0, 0, 0x56, 0x34, 0x12, 0, 0, 0, 0]
        );
    }

    #[test]
    fn local_x2apic_affinity_layout() {
        let e = local_x2apic_affinity(0x0102_0304, 3);
        assert_eq!(
            e,
            [2, 24, 0, 0, 3, 0, 0, 0, 4, 3, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn memory_affinity_layout() {
        let e = memory_affinity(0x1_2345_6000, 0x2_4000_0000, 0x0a0b);
        let mut want = [0u8; 40];
        want[..2].copy_from_slice(&[1, 40]);
        want[2..6].copy_from_slice(&[0x0b, 0x0a, 0, 0]);
        want[8..12].copy_from_slice(&[0x00, 0x60, 0x45, 0x23]); // base low
        want[12..16].copy_from_slice(&[1, 0, 0, 0]); // base high
        want[16..20].copy_from_slice(&[0, 0, 0, 0x40]); // length low
        want[20..24].copy_from_slice(&[2, 0, 0, 0]); // length high
        want[28] = 1; // enabled
        assert_eq!(e, want);
    }

    #[test]
    fn srat_two_nodes() {
        let l = layout(2, 2, 1 << 30);
        let t = srat(&l);
        check_header(&t, b"SRAT", 3);
        assert_eq!(u32_at(&t, 36), 1);
        assert_eq!(u64_at(&t, 40), 0);
        assert_eq!(t.len(), SRAT_ENTRIES_OFFSET + 4 * 16 + 2 * 40);
        let e = entries(&t);
        let kinds: Vec<u8> = e.iter().map(|e| e[0]).collect();
        assert_eq!(kinds, [0, 0, 1, 0, 0, 1]);
        let cpus: Vec<(u8, u8)> = e
            .iter()
            .filter(|e| e[0] == 0)
            .map(|e| (e[3], e[2]))
            .collect();
        assert_eq!(cpus, [(0, 0), (1, 0), (2, 1), (3, 1)]);
        assert_eq!(e[0], local_apic_affinity(0, 0));
        assert_eq!(e[5], memory_affinity(1 << 30, 1 << 30, 1));
        assert_eq!(
            (
                u32_at(e[2], 2),
                u64_at(e[2], 8),
                u64_at(e[2], 16),
                u32_at(e[2], 28)
            ),
            (0, 0, 1 << 30, 1)
        );
    }

    #[test]
    fn srat_four_nodes_and_x2apic_ids() {
        let mut l = layout(4, 1, 0x1000_0000);
        l.nodes[3].apic_ids = vec![254, 255, 0x1_0000];
        l.nodes[2].memory.push((0x1_0000_0000, 0x4000_0000));
        let t = srat(&l);
        check_header(&t, b"SRAT", 3);
        let e = entries(&t);
        assert_eq!(e.len(), 3 + 3 + 4 + 1);
        // Node 3: 254 still fits the xAPIC form; 255 and above take the x2APIC form.
        let node3: Vec<&[u8]> = e[e.len() - 4..].to_vec();
        assert_eq!(node3[0], local_apic_affinity(254, 3));
        assert_eq!(node3[1], local_x2apic_affinity(255, 3));
        assert_eq!(node3[2], local_x2apic_affinity(0x1_0000, 3));
        assert_eq!(node3[3], memory_affinity(0x3000_0000, 0x1000_0000, 3));
        let mem2: Vec<(u64, u64)> = e
            .iter()
            .filter(|e| e[0] == 1 && u32_at(e, 2) == 2)
            .map(|e| (u64_at(e, 8), u64_at(e, 16)))
            .collect();
        assert_eq!(
            mem2,
            [(0x2000_0000, 0x1000_0000), (0x1_0000_0000, 0x4000_0000)]
        );
        l.validate().unwrap();
    }

    #[test]
    fn slit_two_and_four_nodes() {
        let t = slit(&layout(2, 1, 1 << 20));
        check_header(&t, b"SLIT", 1);
        assert_eq!(t.len(), HEADER_SIZE + 8 + 4);
        assert_eq!(u64_at(&t, 36), 2);
        assert_eq!(&t[SLIT_MATRIX_OFFSET..], &[10, 21, 21, 10]);
        let l = layout(4, 1, 1 << 20);
        let t = slit(&l);
        check_header(&t, b"SLIT", 1);
        assert_eq!(u64_at(&t, 36), 4);
        assert_eq!(t.len(), SLIT_MATRIX_OFFSET + 16);
        assert_eq!(
            &t[SLIT_MATRIX_OFFSET..],
            &[10, 21, 22, 23, 21, 10, 21, 22, 22, 21, 10, 21, 23, 22, 21, 10]
        );
        let flat: Vec<u8> = l.distances.concat();
        assert_eq!(&t[SLIT_MATRIX_OFFSET..], &flat[..]);
    }

    #[test]
    fn one_node_layouts_are_valid() {
        let l = NumaLayout {
            nodes: vec![NumaNode::default()],
            distances: vec![vec![10]],
        };
        l.validate().unwrap();
        let t = srat(&l);
        assert_eq!(t.len(), SRAT_ENTRIES_OFFSET);
        assert_eq!(&slit(&l)[SLIT_MATRIX_OFFSET..], &[10]);
    }

    #[test]
    fn validation_errors() {
        let ok = layout(2, 2, 1 << 30);
        ok.validate().unwrap();
        layout(4, 3, 1 << 28).validate().unwrap();

        let empty = NumaLayout::default();
        assert!(matches!(empty.validate(), Err(AcpiError::NumaNoNodes)));

        let mut l = ok.clone();
        l.distances.pop();
        let e = l.validate().unwrap_err();
        assert!(
            matches!(e, AcpiError::NumaDistanceRows { rows: 1, nodes: 2 }),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "the NUMA distance matrix has 1 rows, but there are 2 nodes"
        );

        let mut l = ok.clone();
        l.distances[1].push(30);
        let e = l.validate().unwrap_err();
        assert!(
            matches!(
                e,
                AcpiError::NumaDistanceRow {
                    row: 1,
                    len: 3,
                    nodes: 2
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("row 1"), "{e}");

        let mut l = ok.clone();
        l.distances[1][1] = 11;
        let e = l.validate().unwrap_err();
        assert!(
            matches!(
                e,
                AcpiError::NumaLocalDistance {
                    node: 1,
                    distance: 11
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "the NUMA distance from node 1 to itself is 11; it must be 10"
        );

        for bad in [0, 9, 10] {
            let mut l = ok.clone();
            l.distances[0][1] = bad;
            let e = l.validate().unwrap_err();
            assert!(
                matches!(e, AcpiError::NumaRemoteDistance { from: 0, to: 1, distance } if distance == bad),
                "{e:?}"
            );
        }
        let mut l = ok.clone();
        l.distances[1][0] = 10;
        let e = l.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "the NUMA distance from node 1 to node 0 is 10; it must be at least 11 (10 means local)"
        );
        // 11 and 255 (unreachable) are fine, and so is an asymmetric matrix.
        let mut l = ok.clone();
        l.distances[0][1] = 11;
        l.distances[1][0] = 255;
        l.validate().unwrap();

        let mut l = ok.clone();
        l.nodes[1].apic_ids.push(0);
        let e = l.validate().unwrap_err();
        assert!(
            matches!(
                e,
                AcpiError::NumaDuplicateApicId {
                    apic_id: 0,
                    first: 0,
                    second: 1
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "APIC ID 0 is listed twice in the NUMA layout (nodes 0 and 1)"
        );
        let mut l = ok.clone();
        l.nodes[1].apic_ids.push(3);
        let e = l.validate().unwrap_err();
        assert!(
            matches!(
                e,
                AcpiError::NumaDuplicateApicId {
                    apic_id: 3,
                    first: 1,
                    second: 1
                }
            ),
            "{e:?}"
        );

        let mut l = ok.clone();
        l.nodes[0].memory.push((0x1000, 0));
        let e = l.validate().unwrap_err();
        assert!(
            matches!(
                e,
                AcpiError::NumaMemory {
                    node: 0,
                    start: 0x1000,
                    size: 0
                }
            ),
            "{e:?}"
        );
        let mut l = ok.clone();
        l.nodes[1].memory[0] = (u64::MAX - 0xfff, 0x1000);
        let e = l.validate().unwrap_err();
        assert!(matches!(e, AcpiError::NumaMemory { node: 1, .. }), "{e:?}");
        assert!(e.to_string().contains("NUMA node 1"), "{e}");
    }

    #[test]
    fn invalid_layouts_do_not_panic() {
        let l = NumaLayout {
            nodes: vec![NumaNode::default(); 3],
            distances: vec![vec![10]],
        };
        let t = slit(&l);
        assert_eq!(u64_at(&t, 36), 3);
        assert_eq!(&t[SLIT_MATRIX_OFFSET..], &[10, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(srat(&l).len(), SRAT_ENTRIES_OFFSET);
    }
}
