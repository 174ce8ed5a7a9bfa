//! Disk images for the scenarios, and the host-side checks on them afterwards: patterned
//! files whose every byte is known, comparisons, and where the data (not holes) starts.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{check, io, RigError};

/// Byte `i` of the pattern with `seed`: varies with both, so a misplaced or stale block shows.
fn pattern_byte(seed: u64, i: u64) -> u8 {
    let x = (i / 8)
        .wrapping_add(seed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> ((i % 8) * 8)) as u8
}

/// Creates `dir/name` of `size` bytes: all zero (sparse) when `seed` is `None`, else patterned
/// (every block allocated).
pub fn create(dir: &Path, name: &str, size: u64, seed: Option<u64>) -> Result<PathBuf, RigError> {
    let path = dir.join(name);
    let mut f = File::create(&path).map_err(io("cannot create", &path))?;
    match seed {
        None => f.set_len(size).map_err(io("cannot size", &path))?,
        Some(seed) => {
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0;
            while off < size {
                let n = (size - off).min(buf.len() as u64) as usize;
                for (i, b) in buf[..n].iter_mut().enumerate() {
                    *b = pattern_byte(seed, off + i as u64);
                }
                f.write_all(&buf[..n]).map_err(io("cannot write", &path))?;
                off += n as u64;
            }
            f.sync_all().map_err(io("cannot sync", &path))?;
        }
    }
    Ok(path)
}

/// Reads `len` bytes of `path` at `off`.
pub fn read_range(path: &Path, off: u64, len: u64) -> Result<Vec<u8>, RigError> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path).map_err(io("cannot open", path))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, off)
        .map_err(io("cannot read", path))?;
    Ok(buf)
}

/// Fails unless `[off, off+len)` of `path` still holds the pattern with `seed`.
pub fn expect_pattern(path: &Path, seed: u64, off: u64, len: u64) -> Result<(), RigError> {
    let data = read_range(path, off, len)?;
    let bad = data
        .iter()
        .enumerate()
        .position(|(i, b)| *b != pattern_byte(seed, off + i as u64));
    check(bad.is_none(), || {
        format!(
            "{} differs from what the host wrote at byte {}",
            path.display(),
            off + bad.unwrap_or(0) as u64
        )
    })
}

/// Fails unless `[off, off+len)` of `path` repeats `unit`.
pub fn expect_repeated(path: &Path, unit: &[u8], off: u64, len: u64) -> Result<(), RigError> {
    let data = read_range(path, off, len)?;
    let bad = data
        .iter()
        .enumerate()
        .position(|(i, b)| *b != unit[i % unit.len()]);
    check(bad.is_none(), || {
        let at = bad.unwrap_or(0);
        format!(
            "{} byte {} is {:#04x}, not the pattern {:02x?}",
            path.display(),
            off + at as u64,
            data[at],
            unit
        )
    })
}

/// Where the first data (not a hole) at or after `off` is, or the file size if none.
pub fn next_data(path: &Path, off: u64) -> Result<u64, RigError> {
    let f = OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(io("cannot open", path))?;
    // SAFETY: lseek on a descriptor we own; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, libc::SEEK_DATA) };
    if r >= 0 {
        return Ok(r as u64);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        return f
            .metadata()
            .map(|m| m.len())
            .map_err(io("cannot stat", path));
    }
    Err(io("cannot seek for data in", path)(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("keel-rig-image-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn patterns_are_checked_byte_by_byte() {
        let d = dir();
        let p = create(&d, "pat.img", 3 << 20, Some(7)).unwrap();
        expect_pattern(&p, 7, 0, 3 << 20).unwrap();
        assert!(expect_pattern(&p, 8, 0, 4096).is_err());
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[0u8], 5000).unwrap();
        let e = expect_pattern(&p, 7, 0, 8192).unwrap_err().to_string();
        assert!(e.contains("byte 5000"), "{e}");
        expect_pattern(&p, 7, 8192, 4096).unwrap();
    }

    #[test]
    fn repeated_units_and_holes() {
        let d = dir();
        let p = create(&d, "zero.img", 1 << 20, None).unwrap();
        expect_repeated(&p, &[0], 0, 1 << 20).unwrap();
        assert!(expect_repeated(&p, b"KEEL", 0, 8).is_err());
        assert_eq!(next_data(&p, 0).unwrap(), 1 << 20);
        let q = create(&d, "full.img", 1 << 20, Some(1)).unwrap();
        assert_eq!(next_data(&q, 0).unwrap(), 0);
    }
}
