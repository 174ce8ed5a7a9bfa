//! Where a disk's completions arrive: the host CPUs that take the interrupts of the device
//! behind a backing file.
//!
//! A block device signals completions through its PCI function's MSI or MSI-X vectors, and
//! the host kernel runs the completion path (and io_uring's wake-up of the submitter) on
//! the CPU the vector is routed to. Where that is not every CPU, as for a single-queue disk
//! (a cloud VM's virtio disk, a SATA controller), a submitting thread elsewhere is woken across
//! CPUs for each batch, while a vCPU that runs on the interrupts' CPU is interrupted by them.
//! Measured on a 2-CPU host whose virtual disk interrupts CPU 1 (4K randread QD32, one queue,
//! probe guest, 2 x 5 rounds each): Keel / raw io_uring 0.945 with the disk's I/O thread on
//! CPU 1 against 0.829 on CPU 0, with 0.001 kicks per I/O against 0.028.
//!
//! One disk's threads per such CPU: a later disk's threads run where they would have, as
//! busy threads on one CPU would take turns (measured only with one thread per CPU).
//!
//! [`completion_cpus`] finds those CPUs from sysfs and procfs: the file's block device
//! (`/sys/dev/block/MAJ:MIN`), the nearest ancestor device with an `msi_irqs` directory (the
//! PCI function), and the union of each vector's `/proc/irq/N/effective_affinity_list`. A
//! file on a device without such a function (device-mapper, loop, tmpfs, network file
//! systems) gives `None`: nothing is known.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::CpuSet;

/// How many directories above the block device the PCI function may sit (virtio: 2; NVMe: 3).
const MAX_DEPTH: usize = 6;

/// The host CPUs taking the completion interrupts of the device holding `path` (a regular
/// file or a block device), or `None` when they cannot be told.
pub fn completion_cpus(path: &Path) -> Option<CpuSet> {
    let meta = std::fs::metadata(path).ok()?;
    let dev = if meta.file_type().is_block_device() {
        meta.rdev()
    } else {
        meta.dev()
    };
    completion_cpus_in(
        Path::new("/sys"),
        Path::new("/proc/irq"),
        (libc::major(dev), libc::minor(dev)),
    )
}

/// [`completion_cpus`] for block device `(major, minor)`, reading sysfs under `sys` and the
/// interrupts' affinities under `proc_irq`.
pub fn completion_cpus_in(
    sys: &Path,
    proc_irq: &Path,
    (major, minor): (u32, u32),
) -> Option<CpuSet> {
    let block = sys
        .join("dev/block")
        .join(format!("{major}:{minor}"))
        .canonicalize()
        .ok()?;
    let function = block
        .ancestors()
        .take(MAX_DEPTH + 1)
        .find(|dir| dir.join("msi_irqs").is_dir())?;
    let mut cpus = CpuSet::default();
    for entry in std::fs::read_dir(function.join("msi_irqs")).ok()?.flatten() {
        let name = entry.file_name();
        let Some(irq) = name.to_str().filter(|n| n.parse::<u32>().is_ok()) else {
            continue;
        };
        if let Some(set) = irq_cpus(&proc_irq.join(irq)) {
            cpus = cpus.union(&set);
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// The CPUs interrupt directory `dir` is delivered to: its effective affinity where the
/// kernel reports one, else its allowed affinity.
fn irq_cpus(dir: &Path) -> Option<CpuSet> {
    ["effective_affinity_list", "smp_affinity_list"]
        .iter()
        .find_map(|f| {
            let text = std::fs::read_to_string(dir.join(f)).ok()?;
            CpuSet::parse(text.trim()).ok().filter(|s| !s.is_empty())
        })
}

/// The CPUs an I/O thread without given CPUs should run on: those of `candidates` that take
/// the disk's completion interrupts (`irq`), less `taken` ones (where a pinned vCPU may run, or
/// another disk's threads were put by this rule), when that leaves some and narrows the
/// candidates; `None` keeps the candidates.
pub fn near_completions(candidates: &CpuSet, irq: &CpuSet, taken: &CpuSet) -> Option<CpuSet> {
    candidates
        .intersection(irq)
        .difference(taken)
        .narrowing(candidates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    fn set(list: &str) -> CpuSet {
        CpuSet::parse(list).unwrap()
    }

    /// A fake /sys and /proc/irq: block device 253:0 under PCI function `pci` with vectors
    /// `irqs` (number, effective affinity).
    fn fake_host(tag: &str, irqs: &[(u32, &str)]) -> (PathBuf, PathBuf, PathBuf) {
        let root = std::env::temp_dir().join(format!("keel-irq-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let sys = root.join("sys");
        let pci = sys.join("devices/pci0000:00/0000:00:02.0");
        let block = pci.join("virtio1/block/vda");
        fs::create_dir_all(&block).unwrap();
        fs::create_dir_all(pci.join("msi_irqs")).unwrap();
        fs::create_dir_all(sys.join("dev/block")).unwrap();
        std::os::unix::fs::symlink(&block, sys.join("dev/block/253:0")).unwrap();
        let proc_irq = root.join("proc/irq");
        for (n, cpus) in irqs {
            fs::write(pci.join("msi_irqs").join(n.to_string()), "msix\n").unwrap();
            fs::create_dir_all(proc_irq.join(n.to_string())).unwrap();
            fs::write(
                proc_irq.join(n.to_string()).join("effective_affinity_list"),
                format!("{cpus}\n"),
            )
            .unwrap();
        }
        (root, sys, proc_irq)
    }

    #[test]
    fn the_vectors_of_the_disks_pci_function_give_its_cpus() {
        let (root, sys, proc_irq) = fake_host("one", &[(35, "1"), (36, "1")]);
        assert_eq!(
            completion_cpus_in(&sys, &proc_irq, (253, 0)),
            Some(set("1"))
        );
        // Vectors spread over CPUs (one per queue) give their union.
        fs::write(proc_irq.join("36/effective_affinity_list"), "2-3\n").unwrap();
        assert_eq!(
            completion_cpus_in(&sys, &proc_irq, (253, 0)),
            Some(set("1-3"))
        );
        // Without an effective affinity the allowed one counts.
        fs::remove_file(proc_irq.join("36/effective_affinity_list")).unwrap();
        fs::write(proc_irq.join("36/smp_affinity_list"), "0\n").unwrap();
        assert_eq!(
            completion_cpus_in(&sys, &proc_irq, (253, 0)),
            Some(set("0-1"))
        );
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn unknown_devices_and_devices_without_vectors_give_nothing() {
        let (root, sys, proc_irq) = fake_host("none", &[]);
        assert_eq!(completion_cpus_in(&sys, &proc_irq, (253, 0)), None);
        assert_eq!(completion_cpus_in(&sys, &proc_irq, (7, 3)), None);
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn threads_move_near_completions_only_when_that_narrows_and_avoids_taken_cpus() {
        let all = set("0-1");
        assert_eq!(
            near_completions(&all, &set("1"), &CpuSet::default()),
            Some(set("1"))
        );
        // Interrupts on every candidate: nothing to narrow.
        assert_eq!(
            near_completions(&all, &set("0-3"), &CpuSet::default()),
            None
        );
        // The interrupts' CPU is taken (a pinned vCPU's, or another disk's thread's): the
        // thread keeps its candidates.
        assert_eq!(near_completions(&all, &set("1"), &set("1")), None);
        // Interrupts outside the candidates: nothing to gain.
        assert_eq!(near_completions(&all, &set("5"), &CpuSet::default()), None);
        assert_eq!(
            near_completions(&set("0-7"), &set("2-3"), &set("3")),
            Some(set("2"))
        );
    }
}
