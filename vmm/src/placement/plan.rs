//! Where everything goes: which guest RAM piece is bound to which host node, which host CPUs
//! each vCPU and each disk's I/O threads may run on, and what the guest is told in SRAT/SLIT.
//! Everything is checked against the host topology before the VM exists, so a request the
//! host cannot meet (a node it lacks, CPUs it lacks, a huge page pool too small) fails with
//! a one-line message instead of a SIGBUS or a silently unpinned thread later.
//!
//! Policy: a vCPU runs where `--cpus affinity=` says; otherwise on the CPUs of the host node
//! its guest node is bound to; otherwise anywhere. A disk's I/O threads run where
//! `iothread=cpus:` says; otherwise on the host node of the disk's guest node (`numa_node=`,
//! default 0); otherwise where that guest node's pinned vCPUs run; otherwise anywhere.

use arch::acpi::{NumaLayout, NumaNode};

use super::{CpuSet, HostTopology};
use crate::config::{page_size_name, ConfigError, NumaNodeConfig, VmConfig};
use crate::memory::RamPiece;

/// Distance the guest sees between two nodes on the same host node (or unbound ones).
const REMOTE_DISTANCE: u8 = 20;
/// Distance of a node to itself.
const LOCAL_DISTANCE: u8 = 10;

/// The placement of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// RAM regions (below and above the 32-bit hole).
    pub regions: Vec<(u64, u64)>,
    /// RAM pieces per guest node, in guest address order.
    pub pieces: Vec<RamPiece>,
    /// Host CPUs per vCPU (None: not pinned).
    pub vcpu_cpus: Vec<Option<CpuSet>>,
    /// Host CPUs for each disk's I/O threads (None: not pinned).
    pub iothread_cpus: Vec<Option<CpuSet>>,
    /// What SRAT and SLIT describe (None without `--numa`).
    pub numa: Option<NumaLayout>,
    /// Every vCPU pinned and every byte of RAM bound to a node.
    pub fully_bound: bool,
}

fn numa_err(msg: String) -> ConfigError {
    ConfigError::Numa(msg)
}

/// Builds and checks the placement of `config` on `host`. `config` must already have passed
/// its own validation (`validate_numa`, `validate_disks`, memory and CPU checks).
pub fn plan(config: &VmConfig, host: &HostTopology, phys_bits: u32) -> Result<Plan, ConfigError> {
    let regions = arch::memory_map::ram_regions(config.memory.size, phys_bits).map_err(|e| {
        ConfigError::BadMemorySize {
            size: config.memory.size,
            reason: e.to_string(),
        }
    })?;
    check_host_nodes(&config.numa, host)?;
    let pieces = ram_pieces(config, &regions)?;
    check_hugepages(config, host, &pieces)?;
    let vcpu_cpus = vcpu_placement(config, host)?;
    let iothread_cpus = iothread_placement(config, host, &vcpu_cpus)?;
    let numa = (!config.numa.is_empty()).then(|| numa_layout(config, host, &pieces));
    let fully_bound =
        vcpu_cpus.iter().all(Option::is_some) && pieces.iter().all(|p| p.host_node.is_some());
    Ok(Plan {
        regions,
        pieces,
        vcpu_cpus,
        iothread_cpus,
        numa,
        fully_bound,
    })
}

/// Every `host_node=` names a node the host has.
fn check_host_nodes(nodes: &[NumaNodeConfig], host: &HostTopology) -> Result<(), ConfigError> {
    for n in nodes {
        if let Some(h) = n.host_node {
            if host.node(h).is_none() {
                let ids: Vec<String> = host.nodes.iter().map(|n| n.id.to_string()).collect();
                return Err(numa_err(format!(
                    "guest_node={}: host_node={h} does not exist on this host (nodes: {})",
                    n.guest_node,
                    ids.join(",")
                )));
            }
        }
    }
    Ok(())
}

/// The host node guest node `g` is bound to, if any.
fn host_node_of(nodes: &[NumaNodeConfig], g: u32) -> Option<u32> {
    nodes
        .iter()
        .find(|n| n.guest_node == g)
        .and_then(|n| n.host_node)
}

/// The guest node vCPU `vcpu` belongs to, if any.
fn guest_node_of(nodes: &[NumaNodeConfig], vcpu: u32) -> Option<u32> {
    nodes
        .iter()
        .find(|n| n.cpus.contains(vcpu))
        .map(|n| n.guest_node)
}

/// `regions` split into pieces per guest node, each with the host node it is bound to.
fn ram_pieces(config: &VmConfig, regions: &[(u64, u64)]) -> Result<Vec<RamPiece>, ConfigError> {
    let nodes = &config.numa;
    let sizes: Vec<u64> = if nodes.is_empty() {
        vec![config.memory.size]
    } else {
        (0..nodes.len() as u32)
            .map(|g| {
                nodes
                    .iter()
                    .find(|n| n.guest_node == g)
                    .map_or(0, |n| n.memory)
            })
            .collect()
    };
    Ok(arch::memory_map::split_among_nodes(regions, &sizes)
        .ok_or_else(|| numa_err("the guest nodes' memory does not match --memory size".into()))?
        .into_iter()
        .map(|(start, size, node)| RamPiece {
            start,
            size,
            guest_node: node as u32,
            host_node: host_node_of(nodes, node as u32),
        })
        .collect())
}

/// Host CPUs per vCPU: its `affinity=`, else its guest node's host node's CPUs.
fn vcpu_placement(
    config: &VmConfig,
    host: &HostTopology,
) -> Result<Vec<Option<CpuSet>>, ConfigError> {
    let nodes = &config.numa;
    let mut vcpu_cpus = Vec::with_capacity(config.cpus.boot_vcpus as usize);
    for vcpu in 0..config.cpus.boot_vcpus {
        let cpus = match config.cpus.affinity_of(vcpu) {
            Some(set) => {
                check_online(host, set).map_err(|missing| {
                    ConfigError::Cpus(format!(
                        "affinity of vCPU {vcpu}: host CPUs {missing} are not online on this host (online: {})",
                        host.online
                    ))
                })?;
                Some(set.clone())
            }
            None => guest_node_of(nodes, vcpu)
                .and_then(|g| host_node_of(nodes, g))
                .and_then(|h| host.node(h))
                .map(|n| n.cpus.clone()),
        };
        vcpu_cpus.push(cpus);
    }
    Ok(vcpu_cpus)
}

/// Host CPUs for each disk's I/O threads: its `iothread=cpus:`, else its guest node's host
/// node's CPUs, else the CPUs of the host nodes where that guest node's pinned vCPUs run.
fn iothread_placement(
    config: &VmConfig,
    host: &HostTopology,
    vcpu_cpus: &[Option<CpuSet>],
) -> Result<Vec<Option<CpuSet>>, ConfigError> {
    let nodes = &config.numa;
    let mut iothread_cpus = Vec::with_capacity(config.disks.len());
    for (i, disk) in config.disks.iter().enumerate() {
        let cpus = if let Some(set) = &disk.iothread_cpus {
            check_online(host, set).map_err(|missing| {
                ConfigError::Disks(format!(
                    "{}: iothread host CPUs {missing} are not online on this host (online: {})",
                    disk.name(i),
                    host.online
                ))
            })?;
            Some(set.clone())
        } else {
            let g = disk.numa_node.unwrap_or(0);
            match host_node_of(nodes, g).and_then(|h| host.node(h)) {
                Some(n) => Some(n.cpus.clone()),
                None => {
                    let on_node = |v: &u32| nodes.is_empty() || guest_node_of(nodes, *v) == Some(g);
                    let pinned: Vec<&CpuSet> = (0..config.cpus.boot_vcpus)
                        .filter(on_node)
                        .filter_map(|v| vcpu_cpus[v as usize].as_ref())
                        .collect();
                    nodes_holding(host, &pinned)
                }
            }
        };
        iothread_cpus.push(cpus);
    }
    Ok(iothread_cpus)
}

/// The CPUs of the host nodes that hold any CPU of `sets`, or `None` when `sets` is empty: I/O
/// threads stay on their vCPUs' nodes without being squeezed onto the vCPUs' own CPUs (the
/// device manager then keeps them off pinned vCPUs' CPUs where others are left).
fn nodes_holding(host: &HostTopology, sets: &[&CpuSet]) -> Option<CpuSet> {
    let cpus = sets.iter().fold(CpuSet::default(), |all, s| all.union(s));
    if cpus.is_empty() {
        return None;
    }
    let nodes = host
        .nodes
        .iter()
        .filter(|n| cpus.iter().any(|c| n.cpus.contains(c)))
        .fold(CpuSet::default(), |all, n| all.union(&n.cpus));
    // CPUs outside every node (an inconsistent sysfs) still count as the vCPUs' own.
    Some(nodes.union(&cpus))
}

/// `Err(the CPUs of `set` that are not online)`.
fn check_online(host: &HostTopology, set: &CpuSet) -> Result<(), CpuSet> {
    let missing: CpuSet = set.iter().filter(|&c| !host.online.contains(c)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

/// Checks that the host's huge page pool (and each bound node's) has the pages needed.
fn check_hugepages(
    config: &VmConfig,
    host: &HostTopology,
    pieces: &[RamPiece],
) -> Result<(), ConfigError> {
    if !config.memory.hugepages {
        return Ok(());
    }
    let page = config.memory.page_size();
    let kb = page >> 10;
    let name = page_size_name(page);
    let Some(pool) = host.pool(page) else {
        let sizes: Vec<String> = host
            .supported_page_sizes()
            .into_iter()
            .map(page_size_name)
            .collect();
        return Err(ConfigError::Memory(format!(
            "this host has no {name} huge page pool (it has: {})",
            if sizes.is_empty() {
                "none".to_string()
            } else {
                sizes.join(", ")
            }
        )));
    };
    let needed = config.memory.size / page;
    let available = pool.available();
    if needed > available {
        return Err(ConfigError::Memory(format!(
            "hugepages=on needs {needed} free {name} pages but the host has {available} free \
             (of {}); reserve them with: echo {} > /sys/kernel/mm/hugepages/hugepages-{kb}kB/nr_hugepages",
            pool.total,
            pool.total + needed - available
        )));
    }
    for node in &host.nodes {
        let bound: u64 = pieces
            .iter()
            .filter(|p| p.host_node == Some(node.id))
            .map(|p| p.size)
            .sum();
        if bound == 0 {
            continue;
        }
        let needed = bound / page;
        let (free, total) = host
            .node_pool(node.id, page)
            .map_or((0, 0), |p| (p.free, p.total));
        if needed > free {
            return Err(ConfigError::Numa(format!(
                "host node {} needs {needed} free {name} pages for the guest memory bound to it \
                 but has {free} free (of {total}); reserve them with: echo {} > \
                 /sys/devices/system/node/node{}/hugepages/hugepages-{kb}kB/nr_hugepages",
                node.id,
                total + needed - free,
                node.id
            )));
        }
    }
    Ok(())
}

/// SRAT/SLIT contents: vCPU i has APIC ID i; distances come from the host nodes behind the
/// guest nodes (at least 11 between different guest nodes, as ACPI requires).
fn numa_layout(config: &VmConfig, host: &HostTopology, pieces: &[RamPiece]) -> NumaLayout {
    let count = config.numa.len();
    let mut nodes = Vec::with_capacity(count);
    let mut hosts = Vec::with_capacity(count);
    for g in 0..count as u32 {
        let cfg = config.numa.iter().find(|n| n.guest_node == g);
        hosts.push(cfg.and_then(|n| n.host_node));
        nodes.push(NumaNode {
            apic_ids: cfg.map(|n| n.cpus.iter().collect()).unwrap_or_default(),
            memory: pieces
                .iter()
                .filter(|p| p.guest_node == g)
                .map(|p| (p.start, p.size))
                .collect(),
        });
    }
    let distances = (0..count)
        .map(|i| {
            (0..count)
                .map(|j| {
                    if i == j {
                        return LOCAL_DISTANCE;
                    }
                    match (hosts[i], hosts[j]) {
                        (Some(a), Some(b)) => host
                            .distance(a, b)
                            .and_then(|d| u8::try_from(d).ok())
                            .filter(|&d| d > LOCAL_DISTANCE)
                            .unwrap_or(REMOTE_DISTANCE),
                        _ => REMOTE_DISTANCE,
                    }
                })
                .collect()
        })
        .collect();
    NumaLayout { nodes, distances }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CpusConfig, DiskConfig, MemoryConfig, NumaNodeConfig};
    use crate::placement::{HostNode, HugePagePool};

    const GIB: u64 = 1 << 30;
    const TWO_MIB: u64 = 2 << 20;

    fn pool(page_size: u64, free: u64) -> HugePagePool {
        HugePagePool {
            page_size,
            total: free,
            free,
            reserved: 0,
        }
    }

    /// A host with `cpus_per_node` CPUs per node, the given distance matrix, and `free_2m`
    /// free 2 MiB pages on each node.
    fn host(distances: &[&[u32]], cpus_per_node: u32, free_2m: u64) -> HostTopology {
        let n = distances.len() as u32;
        let nodes: Vec<HostNode> = (0..n)
            .map(|id| HostNode {
                id,
                cpus: (id * cpus_per_node..(id + 1) * cpus_per_node).collect(),
                distances: distances[id as usize].to_vec(),
                mem_total: Some(64 * GIB),
                mem_free: Some(60 * GIB),
                hugepages: vec![pool(TWO_MIB, free_2m)],
            })
            .collect();
        HostTopology {
            online: (0..n * cpus_per_node).collect(),
            nodes,
            hugepages: vec![pool(TWO_MIB, free_2m * u64::from(n)), pool(GIB, 0)],
        }
    }

    fn two_nodes() -> HostTopology {
        host(&[&[10, 21], &[21, 10]], 4, 1024)
    }

    fn four_nodes() -> HostTopology {
        host(
            &[
                &[10, 16, 32, 32],
                &[16, 10, 32, 32],
                &[32, 32, 10, 16],
                &[32, 32, 16, 10],
            ],
            2,
            1024,
        )
    }

    fn config(cpus: &str, memory: &str, numa: &[&str], disks: &[&str]) -> VmConfig {
        VmConfig {
            cpus: CpusConfig::parse(cpus).unwrap(),
            memory: MemoryConfig::parse(memory).unwrap(),
            numa: numa
                .iter()
                .map(|n| NumaNodeConfig::parse(n).unwrap())
                .collect(),
            disks: disks
                .iter()
                .map(|d| DiskConfig::parse(d).unwrap())
                .collect(),
            ..Default::default()
        }
    }

    fn sets(v: &[Option<CpuSet>]) -> Vec<String> {
        v.iter()
            .map(|s| s.as_ref().map_or("-".into(), ToString::to_string))
            .collect()
    }

    #[test]
    fn without_numa_nothing_is_bound_or_pinned() {
        let c = config("boot=2", "size=4G", &[], &["path=/a"]);
        let p = plan(&c, &two_nodes(), 40).unwrap();
        assert_eq!(p.regions, vec![(0, 3 * GIB), (1 << 32, GIB)]);
        assert_eq!(p.pieces.len(), 2);
        assert!(p
            .pieces
            .iter()
            .all(|x| x.guest_node == 0 && x.host_node.is_none()));
        assert_eq!(sets(&p.vcpu_cpus), ["-", "-"]);
        assert_eq!(sets(&p.iothread_cpus), ["-"]);
        assert!(p.numa.is_none());
        assert!(!p.fully_bound);
    }

    #[test]
    fn guest_nodes_follow_their_host_nodes() {
        let c = config(
            "boot=4",
            "size=4G",
            &[
                "guest_node=0,cpus=0-1,memory=2G,host_node=1",
                "guest_node=1,cpus=2-3,memory=2G,host_node=0",
            ],
            &[
                "path=/a",
                "path=/b,numa_node=1",
                "path=/c,iothread=cpus:[7]",
            ],
        );
        let p = plan(&c, &two_nodes(), 40).unwrap();
        let pieces: Vec<_> = p
            .pieces
            .iter()
            .map(|x| (x.start, x.size, x.guest_node, x.host_node))
            .collect();
        assert_eq!(
            pieces,
            [
                (0, 2 * GIB, 0, Some(1)),
                (2 * GIB, GIB, 1, Some(0)),
                (1 << 32, GIB, 1, Some(0))
            ]
        );
        assert_eq!(sets(&p.vcpu_cpus), ["4-7", "4-7", "0-3", "0-3"]);
        assert_eq!(sets(&p.iothread_cpus), ["4-7", "0-3", "7"]);
        assert!(p.fully_bound);
        let numa = p.numa.unwrap();
        assert_eq!(numa.nodes[0].apic_ids, [0, 1]);
        assert_eq!(numa.nodes[1].apic_ids, [2, 3]);
        assert_eq!(numa.nodes[1].memory, [(2 * GIB, GIB), (1 << 32, GIB)]);
        assert_eq!(numa.distances, [[10, 21], [21, 10]]);
    }

    #[test]
    fn explicit_affinity_wins_and_distances_come_from_the_host() {
        let c = config(
            "boot=3,affinity=[1@[0]]",
            "size=3G",
            &[
                "guest_node=0,cpus=0,memory=1G,host_node=3",
                "guest_node=1,cpus=1,memory=1G,host_node=1",
                "guest_node=2,cpus=2,memory=1G",
            ],
            &[],
        );
        let p = plan(&c, &four_nodes(), 40).unwrap();
        assert_eq!(sets(&p.vcpu_cpus), ["6-7", "0", "-"]);
        assert!(!p.fully_bound, "guest node 2 is unbound");
        let numa = p.numa.unwrap();
        // Host 3 <-> host 1 is 32; the unbound node gets the ACPI remote default.
        assert_eq!(numa.distances, [[10, 32, 20], [32, 10, 20], [20, 20, 10]]);
    }

    #[test]
    fn unbound_disks_follow_the_host_nodes_of_their_nodes_pinned_vcpus() {
        // Host node 0 is CPUs 0-3, node 1 CPUs 4-7: the nodes holding the vCPUs' CPUs.
        for (cpus, want) in [
            ("boot=2,affinity=[0@[1],1@[3]]", "0-3"),
            ("boot=2,affinity=[0@[1],1@[5]]", "0-7"),
        ] {
            let c = config(cpus, "size=1G", &[], &["path=/a"]);
            let p = plan(&c, &two_nodes(), 40).unwrap();
            assert_eq!(sets(&p.iothread_cpus), [want], "{cpus}");
            assert!(!p.fully_bound, "memory is not bound");
        }
    }

    #[test]
    fn requests_the_host_cannot_meet_are_refused() {
        let err = |c: VmConfig, h: &HostTopology| plan(&c, h, 40).unwrap_err().to_string();
        let h = two_nodes();
        assert_eq!(
            err(
                config(
                    "boot=1",
                    "size=1G",
                    &["guest_node=0,cpus=0,memory=1G,host_node=2"],
                    &[]
                ),
                &h
            ),
            "--numa: guest_node=0: host_node=2 does not exist on this host (nodes: 0,1)"
        );
        assert_eq!(
            err(config("boot=1,affinity=[0@[7-9]]", "size=1G", &[], &[]), &h),
            "--cpus: affinity of vCPU 0: host CPUs 8-9 are not online on this host (online: 0-7)"
        );
        assert_eq!(
            err(
                config("boot=1", "size=1G", &[], &["path=/a,iothread=cpus:[12]"]),
                &h
            ),
            "--disk: disk0: iothread host CPUs 12 are not online on this host (online: 0-7)"
        );
    }

    #[test]
    fn huge_page_requests_the_host_cannot_meet_are_refused() {
        let err = |c: VmConfig, h: &HostTopology| plan(&c, h, 40).unwrap_err().to_string();
        let h = two_nodes();
        // 4 GiB needs 2048 pages; the host has 2 x 1024 free in total but node 1 alone must
        // hold the 3 GiB bound to it.
        let e = err(
            config(
                "boot=1",
                "size=4G,hugepages=on",
                &[
                    "guest_node=0,cpus=0,memory=1G,host_node=0",
                    "guest_node=1,memory=3G,host_node=1",
                ],
                &[],
            ),
            &h,
        );
        assert_eq!(
            e,
            "--numa: host node 1 needs 1536 free 2 MiB pages for the guest memory bound to it \
             but has 1024 free (of 1024); reserve them with: echo 1536 > \
             /sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages"
        );
        let e = err(config("boot=1", "size=6G,hugepages=on", &[], &[]), &h);
        assert_eq!(
            e,
            "--memory: hugepages=on needs 3072 free 2 MiB pages but the host has 2048 free \
             (of 2048); reserve them with: echo 3072 > \
             /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
        );
        let e = err(
            config("boot=1", "size=2G,hugepages=on,hugepage_size=1G", &[], &[]),
            &h,
        );
        assert!(
            e.contains("needs 2 free 1 GiB pages but the host has 0 free"),
            "{e}"
        );
        let mut no_1g = h.clone();
        no_1g.hugepages.retain(|p| p.page_size != GIB);
        let e = err(
            config("boot=1", "size=2G,hugepages=on,hugepage_size=1G", &[], &[]),
            &no_1g,
        );
        assert_eq!(
            e,
            "--memory: this host has no 1 GiB huge page pool (it has: 2 MiB)"
        );
        assert!(plan(
            &config(
                "boot=1",
                "size=2G,hugepages=on",
                &[
                    "guest_node=0,cpus=0,memory=1G,host_node=0",
                    "guest_node=1,memory=1G,host_node=1",
                ],
                &[]
            ),
            &h,
            40
        )
        .is_ok());
    }
}
