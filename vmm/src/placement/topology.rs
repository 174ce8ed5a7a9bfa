//! [`HostTopology`]: the host's online CPUs, NUMA nodes and hugepage pools, read from sysfs.
//!
//! Files read, relative to the sysfs root (`/sys` on a real host):
//! - `devices/system/cpu/online`: the online CPUs (cpulist).
//! - `devices/system/node/node<N>/`, one per NUMA node: `cpulist`, `distance` (one entry per
//!   node in node-id order), the optional `meminfo` (`Node 0 MemTotal:  24576000 kB`) and
//!   `hugepages/hugepages-<size>kB/{nr_hugepages,free_hugepages}`.
//! - `kernel/mm/hugepages/hugepages-<size>kB/{nr_hugepages,free_hugepages,resv_hugepages}`: the
//!   global pools.
//!
//! A kernel without `CONFIG_NUMA` has no `devices/system/node`; it is reported as one node 0
//! holding every online CPU and the global pools. A kernel without hugetlbfs has no pools.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{CpuSet, PlacementError};

/// The distance the kernel reports from a node to itself (`LOCAL_DISTANCE`).
const LOCAL_DISTANCE: u32 = 10;

/// One hugepage pool: the pages of one size, globally or on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HugePagePool {
    /// Page size in bytes (2 MiB, 1 GiB, ...).
    pub page_size: u64,
    /// Pages in the pool (`nr_hugepages`).
    pub total: u64,
    /// Pages not yet faulted in by anyone (`free_hugepages`).
    pub free: u64,
    /// Free pages promised to existing mappings but not yet faulted in (`resv_hugepages`). The
    /// kernel counts reservations only globally: pools read from a node directory report 0.
    pub reserved: u64,
}

impl HugePagePool {
    /// Pages a new mapping can still get: free minus reserved.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNode {
    /// The node number (`node<N>`); numbers need not be contiguous.
    pub id: u32,
    /// The node's CPUs (empty for a memory-only node).
    pub cpus: CpuSet,
    /// Distance to each node, indexed by position in [`HostTopology::nodes`] (not by node id);
    /// [`HostTopology::distance`] looks up by id.
    pub distances: Vec<u32>,
    /// The node's RAM in bytes, if its `meminfo` says.
    pub mem_total: Option<u64>,
    /// The node's free RAM in bytes when read, if its `meminfo` says.
    pub mem_free: Option<u64>,
    /// The node's share of each hugepage pool, by ascending page size.
    pub hugepages: Vec<HugePagePool>,
}

/// The host's CPUs, NUMA nodes and hugepage pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTopology {
    /// The online CPUs.
    pub online: CpuSet,
    /// The NUMA nodes, by ascending id; never empty.
    pub nodes: Vec<HostNode>,
    /// The global hugepage pools, by ascending page size.
    pub hugepages: Vec<HugePagePool>,
}

impl HostTopology {
    /// Reads the topology of this host from `/sys`.
    pub fn from_host() -> Result<Self, PlacementError> {
        Self::read(Path::new("/sys"))
    }

    /// Reads the topology from the sysfs tree at `sysfs_root`. Missing required files and
    /// malformed files are errors naming the file; missing optional ones (a node's `meminfo`,
    /// hugepage directories) are not.
    pub fn read(sysfs_root: &Path) -> Result<Self, PlacementError> {
        let online = read_cpulist(&sysfs_root.join("devices/system/cpu/online"))?;
        let hugepages = read_pools(&sysfs_root.join("kernel/mm/hugepages"), true)?;
        let node_dir = sysfs_root.join("devices/system/node");
        let nodes = match node_ids(&node_dir)? {
            None => vec![HostNode {
                id: 0,
                cpus: online.clone(),
                distances: vec![LOCAL_DISTANCE],
                mem_total: None,
                mem_free: None,
                hugepages: hugepages.clone(),
            }],
            Some(ids) => ids
                .iter()
                .map(|&id| read_node(&node_dir.join(format!("node{id}")), id, ids.len()))
                .collect::<Result<_, _>>()?,
        };
        Ok(HostTopology {
            online,
            nodes,
            hugepages,
        })
    }

    /// The node numbered `id`.
    pub fn node(&self, id: u32) -> Option<&HostNode> {
        self.nodes.iter().find(|node| node.id == id)
    }

    /// The distance from node `a` to node `b` (10 from a node to itself).
    pub fn distance(&self, a: u32, b: u32) -> Option<u32> {
        let b = self.nodes.iter().position(|node| node.id == b)?;
        self.node(a)?.distances.get(b).copied()
    }

    /// The node holding `cpu`.
    #[cfg(test)]
    pub(crate) fn node_of_cpu(&self, cpu: u32) -> Option<u32> {
        self.nodes
            .iter()
            .find(|node| node.cpus.contains(cpu))
            .map(|node| node.id)
    }

    /// The global pool of `page_size`-byte pages.
    pub fn pool(&self, page_size: u64) -> Option<&HugePagePool> {
        self.hugepages.iter().find(|p| p.page_size == page_size)
    }

    /// Node `node`'s share of the pool of `page_size`-byte pages.
    pub fn node_pool(&self, node: u32, page_size: u64) -> Option<&HugePagePool> {
        self.node(node)?
            .hugepages
            .iter()
            .find(|p| p.page_size == page_size)
    }

    /// The hugepage sizes the kernel supports, in bytes, ascending.
    pub fn supported_page_sizes(&self) -> Vec<u64> {
        self.hugepages.iter().map(|p| p.page_size).collect()
    }
}

/// The ids of the `node<N>` directories under `dir`, ascending; `None` if `dir` is absent.
fn node_ids(dir: &Path) -> Result<Option<Vec<u32>>, PlacementError> {
    let Some(names) = dir_entries(dir)? else {
        return Ok(None);
    };
    let mut ids = Vec::new();
    for name in names {
        let Some(digits) = name.strip_prefix("node") else {
            continue;
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let id = digits.parse().map_err(|_| PlacementError::Malformed {
            path: dir.join(&name),
            reason: "node number out of range".to_string(),
        })?;
        ids.push(id);
    }
    if ids.is_empty() {
        return Err(PlacementError::Malformed {
            path: dir.to_path_buf(),
            reason: "no node<N> directory".to_string(),
        });
    }
    ids.sort_unstable();
    Ok(Some(ids))
}

/// Reads node `id` from its directory `dir`, on a host with `node_count` nodes.
fn read_node(dir: &Path, id: u32, node_count: usize) -> Result<HostNode, PlacementError> {
    let cpus = read_cpulist(&dir.join("cpulist"))?;
    let path = dir.join("distance");
    let distances = read_file(&path)?
        .split_whitespace()
        .map(|field| {
            field.parse::<u32>().map_err(|_| PlacementError::Malformed {
                path: path.clone(),
                reason: format!("distance {field:?} is not an unsigned integer"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if distances.len() != node_count {
        return Err(PlacementError::Malformed {
            path,
            reason: format!("{} distances for {node_count} nodes", distances.len()),
        });
    }
    let path = dir.join("meminfo");
    let (mem_total, mem_free) = match read_optional(&path)? {
        Some(text) => (
            meminfo_bytes(&text, "MemTotal:", &path)?,
            meminfo_bytes(&text, "MemFree:", &path)?,
        ),
        None => (None, None),
    };
    Ok(HostNode {
        id,
        cpus,
        distances,
        mem_total,
        mem_free,
        hugepages: read_pools(&dir.join("hugepages"), false)?,
    })
}

/// The value of `key` in a node `meminfo` (lines like `Node 0 MemTotal:  24576000 kB`), in
/// bytes; `None` if no line has `key`.
fn meminfo_bytes(text: &str, key: &str, path: &Path) -> Result<Option<u64>, PlacementError> {
    let Some(line) = text.lines().find(|line| {
        let mut fields = line.split_whitespace();
        fields.nth(2) == Some(key)
    }) else {
        return Ok(None);
    };
    let fields: Vec<&str> = line.split_whitespace().collect();
    let bytes = match fields[3..] {
        [kib, "kB"] => kib.parse::<u64>().ok().and_then(|k| k.checked_mul(1024)),
        _ => None,
    };
    match bytes {
        Some(bytes) => Ok(Some(bytes)),
        None => Err(PlacementError::Malformed {
            path: path.to_path_buf(),
            reason: format!("{line:?} is not \"Node <N> {key} <size> kB\""),
        }),
    }
}

/// Reads the `hugepages-<size>kB` pools under `dir`, by ascending size; none if `dir` is
/// absent. `resv_hugepages` is read only for the global pools.
fn read_pools(dir: &Path, global: bool) -> Result<Vec<HugePagePool>, PlacementError> {
    let Some(names) = dir_entries(dir)? else {
        return Ok(Vec::new());
    };
    let mut pools = Vec::new();
    for name in names {
        let Some(size) = name.strip_prefix("hugepages-") else {
            continue;
        };
        let pool_dir = dir.join(&name);
        let page_size = size
            .strip_suffix("kB")
            .filter(|kib| !kib.is_empty() && kib.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|kib| kib.parse::<u64>().ok())
            .and_then(|kib| kib.checked_mul(1024))
            .filter(|bytes| bytes.is_power_of_two())
            .ok_or_else(|| PlacementError::Malformed {
                path: pool_dir.clone(),
                reason: "not a hugepages-<size>kB directory with a power-of-two size".to_string(),
            })?;
        let reserved = if global {
            read_u64(&pool_dir.join("resv_hugepages"))?
        } else {
            0
        };
        pools.push(HugePagePool {
            page_size,
            total: read_u64(&pool_dir.join("nr_hugepages"))?,
            free: read_u64(&pool_dir.join("free_hugepages"))?,
            reserved,
        });
    }
    pools.sort_unstable_by_key(|pool| pool.page_size);
    Ok(pools)
}

/// The UTF-8 names in directory `dir`; `None` if it does not exist.
fn dir_entries(dir: &Path) -> Result<Option<Vec<String>>, PlacementError> {
    let read_err = |source| PlacementError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        if let Ok(name) = entry.map_err(read_err)?.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(Some(names))
}

fn read_file(path: &Path) -> Result<String, PlacementError> {
    fs::read_to_string(path).map_err(|source| PlacementError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `path`; `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, PlacementError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PlacementError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_cpulist(path: &Path) -> Result<CpuSet, PlacementError> {
    CpuSet::parse(&read_file(path)?).map_err(|e| PlacementError::MalformedCpuList {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

fn read_u64(path: &Path) -> Result<u64, PlacementError> {
    let text = read_file(path)?;
    text.trim().parse().map_err(|_| PlacementError::Malformed {
        path: PathBuf::from(path),
        reason: format!("{:?} is not an unsigned integer", text.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const M2: u64 = 2 << 20;
    const G1: u64 = 1 << 30;

    /// A fake sysfs tree in a directory unique to the test, removed on drop.
    struct FakeSysfs {
        root: PathBuf,
    }

    impl FakeSysfs {
        fn new(test: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("keel-placement-{}-{test}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root).unwrap();
            FakeSysfs { root }
        }

        fn write(&self, rel: &str, contents: &str) {
            let path = self.root.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, contents).unwrap();
        }

        fn remove(&self, rel: &str) {
            let path = self.root.join(rel);
            if path.is_dir() {
                fs::remove_dir_all(path).unwrap();
            } else {
                fs::remove_file(path).unwrap();
            }
        }

        fn node(&self, id: u32, cpus: &str, distance: &str) {
            self.write(&format!("devices/system/node/node{id}/cpulist"), cpus);
            self.write(&format!("devices/system/node/node{id}/distance"), distance);
        }

        fn meminfo(&self, id: u32, total_kib: u64, free_kib: u64) {
            let used_kib = total_kib - free_kib;
            let text = format!(
                "Node {id} MemTotal:       {total_kib} kB\n\
                 Node {id} MemFree:        {free_kib} kB\n\
                 Node {id} MemUsed:        {used_kib} kB\n\
                 Node {id} HugePages_Total:     0\n"
            );
            self.write(&format!("devices/system/node/node{id}/meminfo"), &text);
        }

        /// A pool under `dir` (relative); `resv` only for global pools.
        fn pool(&self, dir: &str, size_kib: u64, nr: u64, free: u64, resv: Option<u64>) {
            let pool = format!("{dir}/hugepages-{size_kib}kB");
            self.write(&format!("{pool}/nr_hugepages"), &format!("{nr}\n"));
            self.write(&format!("{pool}/free_hugepages"), &format!("{free}\n"));
            self.write(&format!("{pool}/surplus_hugepages"), "0\n");
            if let Some(resv) = resv {
                self.write(&format!("{pool}/resv_hugepages"), &format!("{resv}\n"));
            }
        }

        fn read(&self) -> Result<HostTopology, PlacementError> {
            HostTopology::read(&self.root)
        }
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn cpus(list: &str) -> CpuSet {
        CpuSet::parse(list).unwrap()
    }

    fn pool(page_size: u64, total: u64, free: u64, reserved: u64) -> HugePagePool {
        HugePagePool {
            page_size,
            total,
            free,
            reserved,
        }
    }

    /// The error and its causes, joined.
    fn chain(err: &PlacementError) -> String {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    /// A valid two-node host: 8 CPUs, 2M and 1G pools.
    fn two_node_host(test: &str) -> FakeSysfs {
        let fs = FakeSysfs::new(test);
        fs.write("devices/system/cpu/online", "0-7\n");
        fs.write("devices/system/node/online", "0-1\n");
        fs.write("devices/system/node/possible", "0-1\n");
        fs.write("devices/system/node/power/uevent", "");
        fs.node(0, "0-3\n", "10 21\n");
        fs.node(1, "4-7\n", "21 10\n");
        fs.meminfo(0, 16_000_000, 4_000_000);
        fs.meminfo(1, 8_000_000, 1_000_000);
        for (id, nr2m, free2m, nr1g, free1g) in [(0, 100, 60, 2, 1), (1, 28, 8, 2, 2)] {
            let dir = format!("devices/system/node/node{id}/hugepages");
            fs.pool(&dir, 2048, nr2m, free2m, None);
            fs.pool(&dir, 1_048_576, nr1g, free1g, None);
        }
        fs.pool("kernel/mm/hugepages", 2048, 128, 68, Some(8));
        fs.pool("kernel/mm/hugepages", 1_048_576, 4, 3, Some(0));
        fs
    }

    #[test]
    fn single_node_without_node_dirs() {
        let fs = FakeSysfs::new("single-node");
        fs.write("devices/system/cpu/online", "0-3\n");
        fs.pool("kernel/mm/hugepages", 2048, 8, 6, Some(2));
        let topo = fs.read().unwrap();
        assert_eq!(topo.online, cpus("0-3"));
        assert_eq!(topo.hugepages, vec![pool(M2, 8, 6, 2)]);
        assert_eq!(topo.pool(M2).unwrap().available(), 4);
        assert_eq!(
            topo.nodes,
            vec![HostNode {
                id: 0,
                cpus: cpus("0-3"),
                distances: vec![10],
                mem_total: None,
                mem_free: None,
                hugepages: vec![pool(M2, 8, 6, 2)],
            }]
        );
        assert_eq!(topo.distance(0, 0), Some(10));
        assert_eq!(topo.distance(0, 1), None);
        assert_eq!(topo.node_pool(0, M2), topo.pool(M2));
        assert_eq!(topo.node_of_cpu(3), Some(0));
        assert_eq!(topo.supported_page_sizes(), vec![M2]);
    }

    #[test]
    fn two_nodes_with_2m_and_1g_pools() {
        let fs = two_node_host("two-nodes");
        let topo = fs.read().unwrap();
        assert_eq!(topo.online, cpus("0-7"));
        assert_eq!(topo.nodes.len(), 2);
        let node1 = topo.node(1).unwrap();
        assert_eq!(node1.cpus, cpus("4-7"));
        assert_eq!(node1.distances, vec![21, 10]);
        assert_eq!(node1.mem_total, Some(8_000_000 * 1024));
        assert_eq!(node1.mem_free, Some(1_000_000 * 1024));
        assert_eq!(node1.hugepages, vec![pool(M2, 28, 8, 0), pool(G1, 2, 2, 0)]);
        assert_eq!(topo.node(0).unwrap().mem_total, Some(16_000_000 * 1024));
        assert_eq!(topo.distance(0, 1), Some(21));
        assert_eq!(topo.distance(1, 0), Some(21));
        assert_eq!(topo.distance(1, 1), Some(10));
        assert_eq!(topo.supported_page_sizes(), vec![M2, G1]);
        assert_eq!(topo.pool(M2), Some(&pool(M2, 128, 68, 8)));
        assert_eq!(topo.pool(M2).unwrap().available(), 60);
        assert_eq!(topo.pool(G1).unwrap().available(), 3);
        assert_eq!(topo.pool(4096), None);
        assert_eq!(topo.node_pool(0, G1), Some(&pool(G1, 2, 1, 0)));
        assert_eq!(topo.node_pool(2, G1), None);
        assert_eq!(topo.node_of_cpu(5), Some(1));
        assert_eq!(topo.node_of_cpu(8), None);
    }

    #[test]
    fn four_nodes_with_a_memory_only_node() {
        let fs = FakeSysfs::new("four-nodes");
        fs.write("devices/system/cpu/online", "0-23\n");
        let matrix = [
            [10, 16, 16, 22],
            [16, 10, 22, 16],
            [16, 22, 10, 16],
            [22, 16, 16, 10],
        ];
        let node_cpus = ["0-7\n", "8-15\n", "16-23\n", "\n"];
        for (id, row) in matrix.iter().enumerate() {
            let distance = row.map(|d| d.to_string()).join(" ") + "\n";
            fs.node(id as u32, node_cpus[id], &distance);
        }
        let topo = fs.read().unwrap();
        assert_eq!(
            topo.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        for a in 0..4u32 {
            for b in 0..4u32 {
                assert_eq!(topo.distance(a, b), Some(matrix[a as usize][b as usize]));
            }
        }
        assert!(topo.node(3).unwrap().cpus.is_empty());
        assert_eq!(topo.node(3).unwrap().mem_total, None);
        assert_eq!(topo.node_of_cpu(23), Some(2));
        // No hugetlbfs: no pools anywhere.
        assert!(topo.hugepages.is_empty());
        assert!(topo.supported_page_sizes().is_empty());
        assert!(topo.nodes.iter().all(|n| n.hugepages.is_empty()));
    }

    #[test]
    fn sparse_node_ids() {
        let fs = FakeSysfs::new("sparse-nodes");
        fs.write("devices/system/cpu/online", "0-3\n");
        fs.write("devices/system/node/has_cpu", "0,2\n");
        fs.write("devices/system/node/nodeX/cpulist", "0\n");
        fs.node(0, "0-1\n", "10 20\n");
        fs.node(2, "2-3\n", "20 10\n");
        fs.pool("devices/system/node/node2/hugepages", 2048, 4, 4, None);
        fs.pool("kernel/mm/hugepages", 2048, 4, 4, Some(0));
        let topo = fs.read().unwrap();
        assert_eq!(
            topo.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert_eq!(topo.node(1), None);
        assert_eq!(topo.distance(0, 2), Some(20));
        assert_eq!(topo.distance(2, 0), Some(20));
        assert_eq!(topo.distance(2, 2), Some(10));
        assert_eq!(topo.distance(0, 1), None);
        assert_eq!(topo.distance(1, 0), None);
        assert_eq!(topo.node_pool(2, M2), Some(&pool(M2, 4, 4, 0)));
        assert_eq!(topo.node_pool(0, M2), None);
    }

    type Breakage = fn(&FakeSysfs);

    /// Each case breaks one sysfs file of a two-node host; reading must fail naming the file
    /// (under the fake root) and what is wrong with it.
    fn check_malformed(cases: &[(&str, Breakage, &str, &str)]) {
        for &(name, breakage, path, what) in cases {
            let fs = two_node_host(&format!("malformed-{name}"));
            breakage(&fs);
            let err = fs.read().unwrap_err();
            let text = chain(&err);
            assert!(
                text.contains(&fs.root.join("").display().to_string()),
                "{name}: {text}"
            );
            assert!(text.contains(path) && text.contains(what), "{name}: {text}");
        }
    }

    #[test]
    fn malformed_cpu_and_node_files_are_errors_naming_the_file() {
        check_malformed(&[
            (
                "no-online",
                |fs| fs.remove("devices/system/cpu/online"),
                "devices/system/cpu/online",
                "cannot read",
            ),
            (
                "bad-online",
                |fs| fs.write("devices/system/cpu/online", "0-3x\n"),
                "devices/system/cpu/online",
                "\"0-3x\" is not a CPU number",
            ),
            (
                "bad-cpulist",
                |fs| fs.write("devices/system/node/node1/cpulist", "7-4\n"),
                "node1/cpulist",
                "\"7-4\" is reversed",
            ),
            (
                "no-cpulist",
                |fs| fs.remove("devices/system/node/node1/cpulist"),
                "node1/cpulist",
                "cannot read",
            ),
            (
                "bad-distance",
                |fs| fs.write("devices/system/node/node0/distance", "10 abc\n"),
                "node0/distance",
                "\"abc\" is not",
            ),
            (
                "short-distance",
                |fs| fs.write("devices/system/node/node1/distance", "10\n"),
                "node1/distance",
                "1 distances for 2 nodes",
            ),
        ]);
    }

    #[test]
    fn malformed_memory_files_are_errors_naming_the_file() {
        check_malformed(&[
            (
                "bad-nr",
                |fs| {
                    fs.write(
                        "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
                        "many\n",
                    )
                },
                "hugepages-2048kB/nr_hugepages",
                "\"many\" is not",
            ),
            (
                "no-resv",
                |fs| fs.remove("kernel/mm/hugepages/hugepages-1048576kB/resv_hugepages"),
                "hugepages-1048576kB/resv_hugepages",
                "cannot read",
            ),
            (
                "bad-pool-dir",
                |fs| fs.pool("devices/system/node/node0/hugepages", 0, 1, 1, None),
                "node0/hugepages/hugepages-0kB",
                "size",
            ),
            (
                "bad-meminfo",
                |fs| {
                    fs.write(
                        "devices/system/node/node0/meminfo",
                        "Node 0 MemTotal: lots kB\n",
                    )
                },
                "node0/meminfo",
                "MemTotal",
            ),
            (
                "no-nodes",
                |fs| {
                    fs.remove("devices/system/node/node0");
                    fs.remove("devices/system/node/node1")
                },
                "devices/system/node",
                "no node<N>",
            ),
        ]);
    }

    #[test]
    fn optional_files_may_be_missing() {
        let fs = two_node_host("optional");
        fs.remove("devices/system/node/node0/meminfo");
        fs.remove("devices/system/node/node1/hugepages");
        let topo = fs.read().unwrap();
        assert_eq!(topo.node(0).unwrap().mem_total, None);
        assert_eq!(topo.node(1).unwrap().mem_total, Some(8_000_000 * 1024));
        assert!(topo.node(1).unwrap().hugepages.is_empty());
        assert_eq!(topo.node_pool(0, M2), Some(&pool(M2, 100, 60, 0)));
    }

    #[test]
    fn this_host() {
        let topo = HostTopology::from_host().unwrap();
        assert!(!topo.nodes.is_empty());
        assert!(!topo.online.is_empty());
        for node in &topo.nodes {
            assert!(node.cpus.is_subset(&topo.online), "{node:?}");
            assert_eq!(node.distances.len(), topo.nodes.len());
            assert_eq!(topo.distance(node.id, node.id), Some(10));
        }
        let node_cpus = topo
            .nodes
            .iter()
            .fold(CpuSet::new(), |all, node| all.union(&node.cpus));
        assert!(topo.online.is_subset(&node_cpus));
        for pool in &topo.hugepages {
            assert!(pool.page_size.is_power_of_two() && pool.free <= pool.total);
        }
    }
}
