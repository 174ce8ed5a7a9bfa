//! [`CpuSet`]: a bounded, sorted set of host CPU numbers that reads and writes the kernel's
//! cpulist format (`0-3,5,7-8`, as in sysfs `cpulist` files and `Cpus_allowed_list` in
//! `/proc/<pid>/status`), and thread affinity through `sched_setaffinity(2)` and
//! `sched_getaffinity(2)`.

use std::collections::{btree_set, BTreeSet};
use std::fmt;
use std::io;
use std::iter::Copied;
use std::mem::size_of;
use std::str::FromStr;

use super::PlacementError;

/// CPU numbers must be below this (the x86-64 kernel's largest `NR_CPUS` is 8192, but no host
/// Keel targets comes near 4096; the bound keeps ranges like `0-4000000000` from allocating).
pub const MAX_CPUS: u32 = 4096;

/// How many CPUs a `cpu_set_t` holds (`CPU_SETSIZE`, 1024 on glibc and musl >= 1.2).
const AFFINITY_CPUS: u32 = libc::CPU_SETSIZE as u32;

/// A sorted set of host CPU numbers, each below [`MAX_CPUS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CpuSet {
    cpus: BTreeSet<u32>,
}

impl CpuSet {
    /// The empty set.
    pub const fn new() -> Self {
        CpuSet {
            cpus: BTreeSet::new(),
        }
    }

    /// Parses a cpulist such as `0-3,5,7-8`. Surrounding whitespace (the newline sysfs
    /// writes) is ignored, an empty string is the empty set, and repeated CPUs are allowed.
    /// Reversed ranges (`3-1`), empty items, signs, spaces inside items and anything else that
    /// is not a decimal CPU number or range are rejected, as are CPUs at or above
    /// [`MAX_CPUS`]. The kernel's stride syntax (`0-7:2/4`) is not accepted: sysfs never
    /// writes it.
    pub fn parse(list: &str) -> Result<Self, PlacementError> {
        let input = list.trim();
        let mut set = CpuSet::new();
        if input.is_empty() {
            return Ok(set);
        }
        let bad = |reason: String| PlacementError::CpuList {
            input: input.to_string(),
            reason,
        };
        for item in input.split(',') {
            let (first, last) = match item.split_once('-') {
                Some((first, last)) => (
                    parse_cpu(first, item).map_err(bad)?,
                    parse_cpu(last, item).map_err(bad)?,
                ),
                None => {
                    let cpu = parse_cpu(item, item).map_err(bad)?;
                    (cpu, cpu)
                }
            };
            if first > last {
                return Err(bad(format!("range {item:?} is reversed")));
            }
            for cpu in first..=last {
                set.insert(cpu)?;
            }
        }
        Ok(set)
    }

    /// Builds a set from CPU numbers; fails on the first one at or above [`MAX_CPUS`]. (The
    /// [`FromIterator`] impl, which cannot fail, drops such CPUs instead.)
    pub fn try_from_iter<I: IntoIterator<Item = u32>>(cpus: I) -> Result<Self, PlacementError> {
        let mut set = CpuSet::new();
        for cpu in cpus {
            set.insert(cpu)?;
        }
        Ok(set)
    }

    /// Adds `cpu`; returns whether it was new. Fails if `cpu` is at or above [`MAX_CPUS`].
    pub fn insert(&mut self, cpu: u32) -> Result<bool, PlacementError> {
        if cpu >= MAX_CPUS {
            return Err(PlacementError::CpuOutOfRange { cpu });
        }
        Ok(self.cpus.insert(cpu))
    }

    /// The CPUs in ascending order.
    pub fn iter(&self) -> Copied<btree_set::Iter<'_, u32>> {
        self.cpus.iter().copied()
    }

    /// How many CPUs the set holds.
    pub fn len(&self) -> usize {
        self.cpus.len()
    }

    /// Whether the set holds no CPU.
    pub fn is_empty(&self) -> bool {
        self.cpus.is_empty()
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.cpus.contains(&cpu)
    }

    /// Whether every CPU of `self` is in `other`.
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.cpus.is_subset(&other.cpus)
    }

    /// The CPUs in `self`, `other` or both.
    pub fn union(&self, other: &CpuSet) -> CpuSet {
        CpuSet {
            cpus: self.cpus.union(&other.cpus).copied().collect(),
        }
    }

    /// The CPUs in both `self` and `other`.
    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        CpuSet {
            cpus: self.cpus.intersection(&other.cpus).copied().collect(),
        }
    }

    /// The CPUs in `self` but not in `other`.
    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        CpuSet {
            cpus: self.cpus.difference(&other.cpus).copied().collect(),
        }
    }

    /// `self` as a narrower choice than `from`: `None` when it leaves nothing to run on or
    /// is `from` itself (a rule that narrows nothing, or everything, does not apply).
    pub fn narrowing(self, from: &CpuSet) -> Option<CpuSet> {
        (!self.is_empty() && self != *from).then_some(self)
    }
}

/// Parses one CPU number of `item`, returning why it is not one.
fn parse_cpu(text: &str, item: &str) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{item:?} is not a CPU number or range"));
    }
    match text.parse::<u32>() {
        Ok(cpu) if cpu < MAX_CPUS => Ok(cpu),
        _ => Err(format!(
            "CPU {text} is out of range: CPU numbers must be below {MAX_CPUS}"
        )),
    }
}

impl fmt::Display for CpuSet {
    /// Writes the set as a compact cpulist (`0-3,5,7-8`); the empty set writes nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cpus = self.iter().peekable();
        let mut separator = "";
        while let Some(first) = cpus.next() {
            let mut last = first;
            while cpus.next_if_eq(&(last + 1)).is_some() {
                last += 1;
            }
            if first == last {
                write!(f, "{separator}{first}")?;
            } else {
                write!(f, "{separator}{first}-{last}")?;
            }
            separator = ",";
        }
        Ok(())
    }
}

impl FromIterator<u32> for CpuSet {
    /// Collects CPU numbers, dropping any at or above [`MAX_CPUS`] (no host has them); use
    /// [`CpuSet::try_from_iter`] to reject them instead.
    fn from_iter<I: IntoIterator<Item = u32>>(cpus: I) -> Self {
        CpuSet {
            cpus: cpus.into_iter().filter(|&cpu| cpu < MAX_CPUS).collect(),
        }
    }
}

impl FromStr for CpuSet {
    type Err = PlacementError;

    /// Same as [`CpuSet::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CpuSet::parse(s)
    }
}

impl<'a> IntoIterator for &'a CpuSet {
    type Item = u32;
    type IntoIter = Copied<btree_set::Iter<'a, u32>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The calling thread's kernel thread id (`gettid(2)`).
pub fn current_tid() -> i32 {
    // SAFETY: gettid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::gettid() }
}

/// An empty `cpu_set_t`.
fn empty_cpu_set() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain array of integers; all zeroes is a valid, empty set.
    unsafe { std::mem::zeroed() }
}

/// Restricts thread `tid` (`None`: the calling thread) to `cpus` with `sched_setaffinity(2)`.
///
/// Refuses an empty set, and CPUs a `cpu_set_t` cannot hold (1024 and above). The kernel
/// rejects (`EINVAL`) a set with no CPU that is online and allowed by the thread's cpuset.
pub fn set_thread_affinity(tid: Option<i32>, cpus: &CpuSet) -> Result<(), PlacementError> {
    if cpus.is_empty() {
        return Err(PlacementError::EmptyAffinity { tid });
    }
    let mut mask = empty_cpu_set();
    for cpu in cpus {
        if cpu >= AFFINITY_CPUS {
            return Err(PlacementError::AffinityCpuTooHigh { tid, cpu });
        }
        // SAFETY: cpu < CPU_SETSIZE, so its bit lies inside mask.
        unsafe { libc::CPU_SET(cpu as usize, &mut mask) };
    }
    // SAFETY: mask is a live cpu_set_t of exactly the size passed; the kernel only reads it.
    let ret =
        unsafe { libc::sched_setaffinity(tid.unwrap_or(0), size_of::<libc::cpu_set_t>(), &mask) };
    if ret != 0 {
        return Err(PlacementError::SetAffinity {
            tid,
            cpus: cpus.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The CPUs thread `tid` (`None`: the calling thread) may run on, from `sched_getaffinity(2)`.
///
/// Fails with `EINVAL` on kernels built for more than 1024 CPUs (`cpu_set_t` is too small).
pub fn thread_affinity(tid: Option<i32>) -> Result<CpuSet, PlacementError> {
    let mut mask = empty_cpu_set();
    // SAFETY: mask is a live cpu_set_t of exactly the size passed; the kernel writes at most
    // that many bytes into it.
    let ret = unsafe {
        libc::sched_getaffinity(tid.unwrap_or(0), size_of::<libc::cpu_set_t>(), &mut mask)
    };
    if ret != 0 {
        return Err(PlacementError::GetAffinity {
            tid,
            source: io::Error::last_os_error(),
        });
    }
    let mut set = CpuSet::new();
    for cpu in 0..AFFINITY_CPUS {
        // SAFETY: cpu < CPU_SETSIZE, so its bit lies inside mask.
        if unsafe { libc::CPU_ISSET(cpu as usize, &mask) } {
            set.cpus.insert(cpu);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cpus: &[u32]) -> CpuSet {
        CpuSet::try_from_iter(cpus.iter().copied()).unwrap()
    }

    #[test]
    fn parses_cpulists() {
        assert_eq!(
            CpuSet::parse("0-3,5,7-8").unwrap(),
            set(&[0, 1, 2, 3, 5, 7, 8])
        );
        assert_eq!(CpuSet::parse("  0-1\n").unwrap(), set(&[0, 1]));
        assert_eq!(CpuSet::parse("4").unwrap(), set(&[4]));
        assert_eq!(CpuSet::parse("2-2").unwrap(), set(&[2]));
        assert_eq!(CpuSet::parse("0-2,1-3,3").unwrap(), set(&[0, 1, 2, 3]));
        assert_eq!(CpuSet::parse("8,0").unwrap(), set(&[0, 8]));
        assert_eq!(CpuSet::parse("4095").unwrap(), set(&[4095]));
        assert!(CpuSet::parse("").unwrap().is_empty());
        assert!(CpuSet::parse(" \n").unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_cpulists() {
        for bad in [
            "3-1", "a", "1,", ",1", "1,,2", "-1", "1-", "1-2-3", "+1", "1 ,2", "0x3", "1 2",
            "0-7:2/4",
        ] {
            let err = CpuSet::parse(bad).unwrap_err();
            assert!(
                matches!(err, PlacementError::CpuList { .. }),
                "{bad:?}: {err}"
            );
        }
        let err = CpuSet::parse("3-1").unwrap_err().to_string();
        assert!(err.contains("\"3-1\" is reversed"), "{err}");
        let err = CpuSet::parse("0,4096").unwrap_err().to_string();
        assert!(err.contains("4096 is out of range"), "{err}");
        assert!(CpuSet::parse("0-99999999999999999999999").is_err());
        assert!(CpuSet::parse("0-4095").is_ok());
    }

    #[test]
    fn displays_compact_lists() {
        for text in [
            "",
            "0",
            "0-3,5",
            "0-3,5,7-8",
            "1,3,5",
            "0-4095",
            "7-8,10-11,4095",
        ] {
            assert_eq!(CpuSet::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(set(&[5, 3, 4, 0]).to_string(), "0,3-5");
        assert_eq!("2,1,0".parse::<CpuSet>().unwrap().to_string(), "0-2");
    }

    #[test]
    fn set_operations() {
        let a = set(&[0, 1, 2, 3]);
        let b = set(&[2, 3, 8]);
        assert_eq!(a.len(), 4);
        assert!(!a.is_empty());
        assert!(a.contains(3) && !a.contains(4));
        assert!(set(&[1, 2]).is_subset(&a));
        assert!(CpuSet::new().is_subset(&a));
        assert!(!b.is_subset(&a));
        assert_eq!(a.union(&b), set(&[0, 1, 2, 3, 8]));
        assert_eq!(a.intersection(&b), set(&[2, 3]));
        assert_eq!(a.difference(&b), set(&[0, 1]));
        assert_eq!(b.difference(&a), set(&[8]));
        assert_eq!(a.difference(&b).narrowing(&a), Some(set(&[0, 1])));
        assert_eq!(a.clone().narrowing(&a), None, "nothing narrowed");
        assert_eq!(CpuSet::new().narrowing(&a), None, "nothing left");
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![2, 3, 8]);
        assert_eq!((&b).into_iter().max(), Some(8));
    }

    #[test]
    fn bounds_cpu_numbers() {
        let err = CpuSet::try_from_iter([1, 4096]).unwrap_err();
        assert!(matches!(err, PlacementError::CpuOutOfRange { cpu: 4096 }));
        assert_eq!(CpuSet::from_iter([4096, 1, 4095, 1]), set(&[1, 4095]));
        assert_eq!([3, 2].into_iter().collect::<CpuSet>().to_string(), "2-3");
        let mut s = CpuSet::new();
        assert!(s.insert(4095).unwrap());
        assert!(!s.insert(4095).unwrap());
        assert!(s.insert(u32::MAX).is_err());
    }

    #[test]
    fn affinity_round_trips() {
        // A dedicated thread, so the test harness's threads keep their affinity.
        std::thread::spawn(|| {
            let allowed = thread_affinity(None).unwrap();
            assert!(!allowed.is_empty());
            let tid = current_tid();
            assert_eq!(thread_affinity(Some(tid)).unwrap(), allowed);

            let first = set(&[allowed.iter().next().unwrap()]);
            set_thread_affinity(None, &first).unwrap();
            assert_eq!(thread_affinity(None).unwrap(), first);
            assert_eq!(thread_affinity(Some(tid)).unwrap(), first);

            set_thread_affinity(Some(tid), &allowed).unwrap();
            assert_eq!(thread_affinity(None).unwrap(), allowed);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn affinity_refuses_bad_sets() {
        let err = set_thread_affinity(None, &CpuSet::new()).unwrap_err();
        assert!(matches!(err, PlacementError::EmptyAffinity { tid: None }));
        assert!(err.to_string().contains("the calling thread"), "{err}");

        let err = set_thread_affinity(Some(1), &set(&[2000])).unwrap_err();
        assert!(matches!(
            err,
            PlacementError::AffinityCpuTooHigh { cpu: 2000, .. }
        ));
        assert!(err.to_string().contains("thread 1"), "{err}");

        // CPU 1023 fits a cpu_set_t but is not online on any host the tests run on.
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
        if !CpuSet::parse(&online).unwrap().contains(1023) {
            let err = std::thread::spawn(|| set_thread_affinity(None, &set(&[1023])))
                .join()
                .unwrap()
                .unwrap_err();
            assert!(matches!(err, PlacementError::SetAffinity { .. }), "{err}");
            assert!(err.to_string().contains("to CPUs 1023"), "{err}");
        }
    }
}
