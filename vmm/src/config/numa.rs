//! `--numa guest_node=N,cpus=LIST,memory=SIZE[,host_node=H]` (repeatable): the guest's NUMA
//! nodes, which vCPUs and how much RAM each holds, and the host node its memory is bound to
//! and its vCPUs run on.

use super::{get, parse_group, parse_size, strip_brackets, ConfigError, CpusConfig, MemoryConfig};
use crate::placement::CpuSet;

/// Most guest NUMA nodes (SRAT proximity domains) Keel builds.
pub const MAX_NUMA_NODES: usize = 16;

/// One guest NUMA node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaNodeConfig {
    /// Guest node id (its SRAT proximity domain).
    pub guest_node: u32,
    /// vCPU indices on this node.
    pub cpus: CpuSet,
    /// Guest RAM on this node, in bytes.
    pub memory: u64,
    /// Host node that backs its memory and runs its vCPUs; `None` leaves placement to the host.
    pub host_node: Option<u32>,
}

const MEMORY_SIZE: &str = "expected a size such as 512M or 2G";

fn invalid(key: &'static str, value: &str, reason: &'static str) -> ConfigError {
    ConfigError::InvalidValue {
        option: "numa",
        key,
        value: value.to_string(),
        reason,
    }
}

fn number(key: &'static str, value: &str) -> Result<u32, ConfigError> {
    value
        .parse()
        .map_err(|_| invalid(key, value, "expected a node number"))
}

impl NumaNodeConfig {
    const KEYS: &'static [&'static str] = &["guest_node", "cpus", "memory", "host_node"];

    /// Parses one `--numa` group.
    pub fn parse(input: &str) -> Result<Self, ConfigError> {
        let pairs = parse_group("numa", input, Self::KEYS)?;
        let required = |key: &'static str| {
            get(&pairs, key).ok_or(ConfigError::MissingKey {
                option: "numa",
                key,
            })
        };
        let guest_node = number("guest_node", required("guest_node")?)?;
        let memory = required("memory")?;
        let memory = parse_size(memory).ok_or_else(|| invalid("memory", memory, MEMORY_SIZE))?;
        let cpus = match get(&pairs, "cpus") {
            Some(v) => CpuSet::parse(strip_brackets(v))
                .map_err(|_| invalid("cpus", v, "expected vCPU indices such as 0-3 or [0,2]"))?,
            None => CpuSet::default(),
        };
        let host_node = get(&pairs, "host_node")
            .map(|v| number("host_node", v))
            .transpose()?;
        let node = NumaNodeConfig {
            guest_node,
            cpus,
            memory,
            host_node,
        };
        node.check_values()?;
        Ok(node)
    }

    /// Checks what one node needs on its own (some memory); the `--numa` parser and the JSON
    /// form both end here, and [`validate_nodes`] checks the nodes together.
    pub fn check_values(&self) -> Result<(), ConfigError> {
        if self.memory == 0 {
            return Err(invalid("memory", "0", MEMORY_SIZE));
        }
        Ok(())
    }
}

/// Checks the guest nodes against each other and against the vCPUs and RAM: ids `0..N`, every
/// vCPU on exactly one node, node memory adding up to `--memory size` in whole pages.
pub fn validate_nodes(
    nodes: &[NumaNodeConfig],
    cpus: &CpusConfig,
    memory: &MemoryConfig,
) -> Result<(), ConfigError> {
    if nodes.is_empty() {
        return Ok(());
    }
    let err = |msg: String| Err(ConfigError::Numa(msg));
    if nodes.len() > MAX_NUMA_NODES {
        return err(format!(
            "{} guest nodes given, at most {MAX_NUMA_NODES} are supported",
            nodes.len()
        ));
    }
    for id in 0..nodes.len() as u32 {
        let count = nodes.iter().filter(|n| n.guest_node == id).count();
        if count != 1 {
            return err(format!(
                "guest_node ids must be 0 to {} with each given once; guest_node={id} is given {count} times",
                nodes.len() - 1
            ));
        }
    }
    for vcpu in 0..cpus.boot_vcpus {
        let owners: Vec<u32> = nodes
            .iter()
            .filter(|n| n.cpus.contains(vcpu))
            .map(|n| n.guest_node)
            .collect();
        if owners.len() != 1 {
            return err(format!(
                "vCPU {vcpu} must be on exactly one guest node (cpus=), it is on {}",
                if owners.is_empty() {
                    "none".to_string()
                } else {
                    format!("nodes {owners:?}")
                }
            ));
        }
    }
    for node in nodes {
        if let Some(vcpu) = node.cpus.iter().find(|&c| c >= cpus.boot_vcpus) {
            return err(format!(
                "guest_node={} lists vCPU {vcpu}, but only {} vCPUs boot",
                node.guest_node, cpus.boot_vcpus
            ));
        }
        let page = memory.page_size();
        if !node.memory.is_multiple_of(page) {
            return err(format!(
                "guest_node={}: memory={} is not a multiple of the {} page size",
                node.guest_node,
                node.memory,
                super::memory::page_size_name(page)
            ));
        }
    }
    let total: u64 = nodes.iter().map(|n| n.memory).sum();
    if total != memory.size {
        return err(format!(
            "the guest nodes' memory adds up to {} MiB but --memory size is {} MiB",
            total >> 20,
            memory.size >> 20
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(input: &str) -> NumaNodeConfig {
        NumaNodeConfig::parse(input).unwrap()
    }

    #[test]
    fn node_group_parses() {
        let n = node("guest_node=1,cpus=[0,2-3],memory=1G,host_node=0");
        assert_eq!(n.guest_node, 1);
        assert_eq!(n.cpus.to_string(), "0,2-3");
        assert_eq!(n.memory, 1 << 30);
        assert_eq!(n.host_node, Some(0));
        let n = node("guest_node=0,cpus=0-1,memory=512M");
        assert_eq!(n.cpus.to_string(), "0-1");
        assert_eq!(n.host_node, None);
        assert!(node("guest_node=0,memory=64M").cpus.is_empty());
        for (bad, key) in [
            ("cpus=0,memory=1G", "guest_node"),
            ("guest_node=0,cpus=0", "memory"),
            ("guest_node=x,memory=1G", "guest_node"),
            ("guest_node=0,memory=0", "memory"),
            ("guest_node=0,memory=1G,cpus=a", "cpus"),
            ("guest_node=0,memory=1G,host_node=-1", "host_node"),
            ("guest_node=0,memory=1G,distance=20", "distance"),
        ] {
            let err = NumaNodeConfig::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("--numa: "), "{bad}: {err}");
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn node_set_is_checked_against_cpus_and_memory() {
        let cpus = CpusConfig::parse("boot=2").unwrap();
        let mem = MemoryConfig::parse("size=1G").unwrap();
        let ok = [
            node("guest_node=0,cpus=0,memory=512M"),
            node("guest_node=1,cpus=1,memory=512M"),
        ];
        assert!(validate_nodes(&ok, &cpus, &mem).is_ok());
        assert!(validate_nodes(&[], &cpus, &mem).is_ok());
        let check = |nodes: &[NumaNodeConfig], mem: &MemoryConfig, needle: &str| {
            let err = validate_nodes(nodes, &cpus, mem).unwrap_err().to_string();
            assert!(err.starts_with("--numa: "), "{err}");
            assert!(err.contains(needle), "{needle}: {err}");
        };
        check(
            &[
                node("guest_node=0,cpus=0,memory=512M"),
                node("guest_node=2,cpus=1,memory=512M"),
            ],
            &mem,
            "guest_node=1 is given 0 times",
        );
        check(
            &[
                node("guest_node=0,cpus=0-1,memory=512M"),
                node("guest_node=1,cpus=1,memory=512M"),
            ],
            &mem,
            "vCPU 1 must be on exactly one guest node",
        );
        check(
            &[node("guest_node=0,cpus=0,memory=1G")],
            &mem,
            "vCPU 1 must be on exactly one guest node (cpus=), it is on none",
        );
        check(
            &[
                node("guest_node=0,cpus=0-1,memory=512M"),
                node("guest_node=1,cpus=5,memory=512M"),
            ],
            &mem,
            "lists vCPU 5",
        );
        check(
            &[
                node("guest_node=0,cpus=0,memory=512M"),
                node("guest_node=1,cpus=1,memory=256M"),
            ],
            &mem,
            "adds up to 768 MiB but --memory size is 1024 MiB",
        );
        let huge = MemoryConfig::parse("size=1G,hugepages=on").unwrap();
        check(
            &[
                node("guest_node=0,cpus=0,memory=513M"),
                node("guest_node=1,cpus=1,memory=511M"),
            ],
            &huge,
            "memory=537919488 is not a multiple of the 2 MiB page size",
        );
    }
}
