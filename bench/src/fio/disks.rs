//! The benchmark's disk files: `count` data disks (`/dev/vda`.. in the guest, in this order)
//! of one size, filled so that reads hit allocated blocks, and a small read-only config disk
//! holding the job, attached last. Files the harness created are removed when the set is
//! dropped unless it was asked to keep them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::job::FioJob;

/// Smallest data disk.
pub const MIN_DISK_SIZE: u64 = 1 << 20;
/// Largest data disk.
pub const MAX_DISK_SIZE: u64 = 1 << 44;
/// Chunk written at a time while filling.
const FILL_CHUNK: usize = 1 << 20;

/// How data disks are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Pseudo-random bytes: every block is allocated and compression does not help (default).
    Random,
    /// Zeros, written (allocated).
    Zero,
    /// Not written: a sparse file (reads of holes never reach the host disk).
    Sparse,
    /// The file an earlier run kept (`--keep-disks`) if it has the size asked for, as it is;
    /// else random. Runs compared with each other then read the same blocks.
    Reuse,
}

impl Fill {
    /// Parses `random`, `zero`, `sparse` or `reuse`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(Fill::Random),
            "zero" => Ok(Fill::Zero),
            "sparse" => Ok(Fill::Sparse),
            "reuse" => Ok(Fill::Reuse),
            _ => Err(format!(
                "unknown fill '{s}': expected random, zero, sparse or reuse"
            )),
        }
    }
}

/// Creating the disk files failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Size out of range or not whole sectors.
    #[error("disk size {0} is not a multiple of 512 between 1 MiB and 16 TiB")]
    BadSize(u64),
    /// Too many disks.
    #[error("{count} data disks asked for; at most {max} fit beside the config disk")]
    TooMany {
        /// Asked for.
        count: usize,
        /// Limit.
        max: usize,
    },
    /// The directory.
    #[error("cannot use directory {path}")]
    Dir {
        /// The directory.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not enough room.
    #[error("{path} has {free} bytes free; the disks need {needed}")]
    NoSpace {
        /// The directory.
        path: String,
        /// Bytes free.
        free: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// A file.
    #[error("cannot create disk file {path}")]
    File {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The disks of one benchmark run.
#[derive(Debug)]
pub struct DiskSet {
    /// Data disks, `/dev/vda` first.
    pub data: Vec<PathBuf>,
    /// The config disk (attach read-only, after the data disks).
    pub config: PathBuf,
    created_dir: Option<PathBuf>,
    keep: bool,
}

impl DiskSet {
    /// Creates `count` data disks of `size` bytes and the config disk for `job` in `dir`
    /// (created if missing; files of the same names are replaced).
    pub fn create(
        dir: &Path,
        count: usize,
        size: u64,
        fill: Fill,
        job: &FioJob,
        keep: bool,
    ) -> Result<Self, DiskError> {
        if !size.is_multiple_of(512) || !(MIN_DISK_SIZE..=MAX_DISK_SIZE).contains(&size) {
            return Err(DiskError::BadSize(size));
        }
        let max = vmm::config::MAX_DISKS - 1;
        if count > max {
            return Err(DiskError::TooMany { count, max });
        }
        let dir_error = |source| DiskError::Dir {
            path: dir.display().to_string(),
            source,
        };
        let created_dir = if dir.exists() {
            None
        } else {
            std::fs::create_dir_all(dir).map_err(dir_error)?;
            Some(dir.to_path_buf())
        };
        let mut set = DiskSet {
            data: Vec::new(),
            config: dir.join("fio-config.img"),
            created_dir,
            keep,
        };
        let reusable = |i: usize| {
            fill == Fill::Reuse
                && std::fs::metadata(dir.join(data_disk_name(i))).is_ok_and(|m| m.len() == size)
        };
        let to_write = (0..count).filter(|&i| !reusable(i)).count();
        if fill != Fill::Sparse {
            let needed = size.saturating_mul(to_write as u64);
            let free = free_bytes(dir).map_err(dir_error)?;
            if free < needed {
                return Err(DiskError::NoSpace {
                    path: dir.display().to_string(),
                    free,
                    needed,
                });
            }
        }
        write_file(&set.config, &job.config_disk_image())?;
        for i in 0..count {
            let path = dir.join(data_disk_name(i));
            set.data.push(path.clone());
            if !reusable(i) {
                create_data_disk(&path, size, fill, i as u64)?;
            }
        }
        Ok(set)
    }
}

impl Drop for DiskSet {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for path in self.data.iter().chain(std::iter::once(&self.config)) {
            let _ = std::fs::remove_file(path);
        }
        if let Some(dir) = &self.created_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// File name of data disk `i`.
fn data_disk_name(i: usize) -> String {
    format!("fio-disk{i}.img")
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes into a zeroed struct of the right type; the path is a valid
    // NUL-terminated string that outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::File {
        path: path.display().to_string(),
        source,
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), DiskError> {
    let mut f = File::create(path).map_err(file_error(path))?;
    f.write_all(bytes).map_err(file_error(path))?;
    f.sync_all().map_err(file_error(path))
}

/// xorshift64*: fast, good enough that no two blocks repeat.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn create_data_disk(path: &Path, size: u64, fill: Fill, seed: u64) -> Result<(), DiskError> {
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(file_error(path))?;
    f.set_len(size).map_err(file_error(path))?;
    if fill == Fill::Sparse {
        return Ok(());
    }
    let mut state = 0x9e37_79b9_7f4a_7c15 ^ (seed + 1).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let mut chunk = vec![0u8; FILL_CHUNK];
    let mut left = size;
    while left > 0 {
        let n = left.min(FILL_CHUNK as u64) as usize;
        if matches!(fill, Fill::Random | Fill::Reuse) {
            for word in chunk[..n].chunks_exact_mut(8) {
                word.copy_from_slice(&next_random(&mut state).to_le_bytes());
            }
        }
        f.write_all(&chunk[..n]).map_err(file_error(path))?;
        left -= n as u64;
    }
    f.sync_all().map_err(file_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> FioJob {
        FioJob::parse(b"[j]\nfilename=/dev/vda\n").unwrap()
    }

    fn tempdir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("keel-disks-{name}-{}", std::process::id()))
    }

    #[test]
    fn creates_filled_disks_and_removes_them() {
        let dir = tempdir("fill");
        let set = DiskSet::create(&dir, 2, 2 << 20, Fill::Random, &job(), false).unwrap();
        assert_eq!(set.data.len(), 2);
        let a = std::fs::read(&set.data[0]).unwrap();
        let b = std::fs::read(&set.data[1]).unwrap();
        assert_eq!(a.len(), 2 << 20);
        assert_ne!(a, b, "each disk has its own data");
        assert!(a.chunks(4096).all(|blk| blk.iter().any(|&x| x != 0)));
        let cfg = std::fs::read(&set.config).unwrap();
        assert_eq!(&cfg[..16], crate::fio::job::CONFIG_DISK_MAGIC);
        let paths: Vec<PathBuf> = set.data.clone();
        drop(set);
        assert!(paths.iter().all(|p| !p.exists()));
        assert!(!dir.exists());
    }

    #[test]
    fn sparse_and_kept_disks() {
        let dir = tempdir("sparse");
        let set = DiskSet::create(&dir, 1, 4 << 20, Fill::Sparse, &job(), true).unwrap();
        let path = set.data[0].clone();
        drop(set);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 4 << 20);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reuse_keeps_a_kept_disk_of_the_right_size_and_rewrites_others() {
        let dir = tempdir("reuse");
        let first = DiskSet::create(&dir, 1, 2 << 20, Fill::Random, &job(), true).unwrap();
        let path = first.data[0].clone();
        drop(first);
        let before = std::fs::read(&path).unwrap();
        let again = DiskSet::create(&dir, 1, 2 << 20, Fill::Reuse, &job(), true).unwrap();
        drop(again);
        assert!(
            std::fs::read(&path).unwrap() == before,
            "the kept disk was rewritten"
        );
        // Another size: written afresh (random, so not all zero).
        let other = DiskSet::create(&dir, 1, 1 << 20, Fill::Reuse, &job(), false).unwrap();
        let data = std::fs::read(&other.data[0]).unwrap();
        assert_eq!(data.len(), 1 << 20);
        assert!(data.iter().any(|&b| b != 0));
        drop(other);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_bad_sizes_counts_and_missing_space() {
        let dir = tempdir("bad");
        for size in [0, 1000, 512 * 1024, MAX_DISK_SIZE + 512] {
            assert!(matches!(
                DiskSet::create(&dir, 1, size, Fill::Sparse, &job(), false),
                Err(DiskError::BadSize(_))
            ));
        }
        assert!(matches!(
            DiskSet::create(&dir, 31, 1 << 20, Fill::Sparse, &job(), false),
            Err(DiskError::TooMany { count: 31, .. })
        ));
        assert!(matches!(
            DiskSet::create(&dir, 2, MAX_DISK_SIZE, Fill::Zero, &job(), false),
            Err(DiskError::NoSpace { .. })
        ));
        assert!(!dir.join("fio-disk0.img").exists());
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(Fill::parse("zero"), Ok(Fill::Zero));
        assert!(Fill::parse("ones").is_err());
    }
}
