//! NUMA memory policy of address ranges: [`bind_to_node`] binds a mapped range to one node with
//! `mbind(2)` (`MPOL_BIND`), so pages are allocated there when first touched, and
//! [`range_policy`] reads the policy back with `get_mempolicy(2)` (`MPOL_F_ADDR`).
//!
//! Both go through `syscall(2)` (libc has no wrappers; libnuma is not used). Neither reads nor
//! writes the memory of the range, so they are safe to call on any address: the kernel
//! rejects ranges that are not mapped.

use std::io;

use libc::{c_int, c_ulong};

use super::PlacementError;

/// `MPOL_DEFAULT`: no policy of its own; the range follows the thread's policy.
pub const MPOL_DEFAULT: i32 = 0;
/// `MPOL_BIND`: allocate only from the given nodes.
pub const MPOL_BIND: i32 = 2;
/// `get_mempolicy(2)` flag: report the policy of the range holding `addr`.
const MPOL_F_ADDR: c_ulong = 1 << 1;

/// NUMA node numbers must be below this. The kernel's `MAX_NUMNODES` is at most 1024
/// (`CONFIG_NODES_SHIFT` <= 10); a 4096-bit mask (512 bytes) stays under the page the kernel
/// accepts at most.
pub const MAX_NODES: u32 = 4096;

const WORD_BITS: usize = c_ulong::BITS as usize;

/// The `maxnode` argument for a mask of `words` words. The kernel uses `maxnode - 1` bits of
/// the mask (`get_nodes` decrements it; `get_mempolicy` copies `ALIGN(maxnode - 1, 64) / 8`
/// bytes out), so passing the mask's bit count plus one makes it read or write exactly the
/// whole mask.
fn maxnode(words: usize) -> c_ulong {
    (words * WORD_BITS + 1) as c_ulong
}

/// Binds `len` bytes at `addr` to NUMA `node` (`mbind(2)`, `MPOL_BIND`, no flags).
///
/// `addr` must be page aligned and the whole range mapped (the kernel answers `EINVAL` and
/// `EFAULT` otherwise). Without `MPOL_MF_MOVE` pages already present stay where they are, so
/// bind a range before touching it. Fails if `node` is at or above [`MAX_NODES`], and with
/// `EINVAL` if the node does not exist, has no memory or is outside the thread's cpuset.
pub fn bind_to_node(addr: *mut u8, len: usize, node: u32) -> Result<(), PlacementError> {
    if node >= MAX_NODES {
        return Err(PlacementError::NodeOutOfRange { node });
    }
    let node_bit = node as usize;
    let mut mask: Vec<c_ulong> = vec![0; node_bit / WORD_BITS + 1];
    mask[node_bit / WORD_BITS] |= 1 << (node_bit % WORD_BITS);
    let start = addr as usize;
    // SAFETY: mask is a live array of mask.len() words and maxnode() makes the kernel read
    // exactly those. mbind only changes the placement policy of start..start + len (the
    // kernel checks the range is mapped); with flags 0 it moves no page and writes no memory.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            start as c_ulong,
            len as c_ulong,
            MPOL_BIND as c_ulong,
            mask.as_ptr(),
            maxnode(mask.len()),
            0 as c_ulong,
        )
    };
    if ret != 0 {
        return Err(PlacementError::Bind {
            addr: start,
            len,
            node,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The memory policy of the mapping holding `addr` (`get_mempolicy(2)` with `MPOL_F_ADDR`):
/// the mode as the kernel reports it (e.g. [`MPOL_BIND`], or [`MPOL_DEFAULT`] for a range with
/// no policy of its own; mode flags such as `MPOL_F_STATIC_NODES` are kept in the high bits)
/// and the nodes of its node mask, ascending (empty for `MPOL_DEFAULT`).
pub fn range_policy(addr: *const u8) -> Result<(i32, Vec<u32>), PlacementError> {
    let mut mode: c_int = 0;
    let mut mask: Vec<c_ulong> = vec![0; MAX_NODES as usize / WORD_BITS];
    let at = addr as usize;
    // SAFETY: the kernel writes one int to mode and at most mask.len() words to mask (see
    // maxnode()), both live and writable. MPOL_F_ADDR only looks up the mapping holding `at`
    // (EFAULT if there is none); the memory itself is not accessed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut c_int,
            mask.as_mut_ptr(),
            maxnode(mask.len()),
            at as c_ulong,
            MPOL_F_ADDR,
        )
    };
    if ret != 0 {
        return Err(PlacementError::GetPolicy {
            addr: at,
            source: io::Error::last_os_error(),
        });
    }
    let nodes = (0..MAX_NODES)
        .filter(|&node| {
            let bit = node as usize;
            mask[bit / WORD_BITS] & (1 << (bit % WORD_BITS)) != 0
        })
        .collect();
    Ok((mode, nodes))
}

/// A range's policy in words for logs: "bound to host node 0 (MPOL_BIND)" or "no NUMA policy".
pub fn describe_policy(mode: i32, nodes: &[u32]) -> String {
    let list = nodes
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    match mode {
        MPOL_DEFAULT => "no NUMA policy (host default)".to_string(),
        MPOL_BIND => format!("bound to host node {list} (MPOL_BIND)"),
        other => format!("NUMA policy mode {other} on nodes {list}"),
    }
}

/// Says what keeps automatic NUMA balancing off a fully bound VM. Mainline Linux has no
/// per-process switch (PR_SET_NUMA_BALANCING was proposed with a prctl number that kept
/// changing and never merged, so Keel does not call a guessed number). What it has is enough:
/// balancing only scans ranges whose policy allows migration on fault, which an MPOL_BIND
/// range without MPOL_F_NUMA_BALANCING does not, and pinned threads cannot be moved off
/// their CPUs.
pub fn note_numa_balancing() {
    let global = std::fs::read_to_string("/proc/sys/kernel/numa_balancing")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "absent".into());
    log::info!(
        "VM fully bound: guest RAM is MPOL_BIND (not migrated by automatic NUMA balancing, \
         kernel.numa_balancing={global}) and every vCPU is pinned; this kernel has no \
         per-process PR_SET_NUMA_BALANCING to call"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const LEN: usize = 4 << 20;

    /// An anonymous private mapping, unmapped on drop.
    struct Mapping(*mut u8);

    impl Mapping {
        fn new() -> Self {
            // SAFETY: a fresh anonymous mapping; no existing memory is affected.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    LEN,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED, "{}", io::Error::last_os_error());
            Mapping(ptr.cast())
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: self.0 is the LEN-byte mapping made in new(), no longer referenced.
            unsafe { libc::munmap(self.0.cast(), LEN) };
        }
    }

    /// mbind and get_mempolicy need a kernel with CONFIG_NUMA, which exposes this directory.
    fn numa_kernel() -> bool {
        let numa = Path::new("/sys/devices/system/node").exists();
        if !numa {
            eprintln!("skipped: kernel without CONFIG_NUMA");
        }
        numa
    }

    fn numa_maps_line(addr: usize) -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/numa_maps").unwrap();
        let prefix = format!("{addr:x} ");
        maps.lines()
            .find(|line| line.starts_with(&prefix))
            .map(str::to_string)
    }

    #[test]
    fn binds_a_range_to_node_0() {
        if !numa_kernel() {
            return;
        }
        let map = Mapping::new();
        assert_eq!(range_policy(map.0).unwrap(), (MPOL_DEFAULT, vec![]));

        bind_to_node(map.0, LEN, 0).unwrap();
        assert_eq!(range_policy(map.0).unwrap(), (MPOL_BIND, vec![0]));
        // SAFETY: LEN - 1 is inside the mapping.
        let last = unsafe { map.0.add(LEN - 1) };
        assert_eq!(range_policy(last).unwrap(), (MPOL_BIND, vec![0]));
        let line = numa_maps_line(map.0 as usize).unwrap();
        assert!(line.split_whitespace().any(|f| f == "bind:0"), "{line}");

        for offset in (0..LEN).step_by(4096) {
            // SAFETY: offset < LEN, inside the writable mapping.
            unsafe { map.0.add(offset).write_volatile(1) };
        }
        let line = numa_maps_line(map.0 as usize).unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(fields.contains(&"bind:0"), "{line}");
        assert!(fields.iter().any(|f| f.starts_with("N0=")), "{line}");
        assert!(!fields.iter().any(|f| f.starts_with("N1=")), "{line}");
        assert_eq!(range_policy(map.0).unwrap(), (MPOL_BIND, vec![0]));
    }

    #[test]
    fn binding_to_a_missing_node_fails() {
        if !numa_kernel() {
            return;
        }
        let map = Mapping::new();
        let err = bind_to_node(map.0, LEN, 1000).unwrap_err();
        assert!(
            matches!(err, PlacementError::Bind { node: 1000, .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("NUMA node 1000"), "{text}");
        assert_eq!(range_policy(map.0).unwrap(), (MPOL_DEFAULT, vec![]));

        let err = bind_to_node(map.0, LEN, MAX_NODES).unwrap_err();
        assert!(matches!(
            err,
            PlacementError::NodeOutOfRange { node: MAX_NODES }
        ));
        assert!(err.to_string().contains("NUMA node 4096"), "{err}");
    }

    #[test]
    fn unmapped_addresses_fail() {
        if !numa_kernel() {
            return;
        }
        // Below mmap_min_addr: never mapped.
        let low = 0x1000 as *mut u8;
        let err = range_policy(low).unwrap_err();
        assert!(
            matches!(err, PlacementError::GetPolicy { addr: 0x1000, .. }),
            "{err}"
        );
        let err = bind_to_node(low, 4096, 0).unwrap_err();
        assert!(
            matches!(err, PlacementError::Bind { addr: 0x1000, .. }),
            "{err}"
        );
    }
}
