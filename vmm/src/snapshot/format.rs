//! The snapshot file's layout, as pure encode/decode functions.
//!
//! ```text
//! 0          header block (4 KiB): magic "KEELSNAP", format version, block size
//! 4 KiB      state sections, one after another, each starting on a 4 KiB boundary (JSON)
//! 1 MiB * k  guest RAM: one extent per non-zero 1 MiB chunk, each at a 1 MiB boundary
//! ...        the section table (JSON: name, offset, length, CRC-32 of each section,
//!            including "ram", the extent index), on a 4 KiB boundary
//! end-4 KiB  trailer block: magic "KEELEND1", table offset/length/CRC, file length, and
//!            the trailer's own CRC
//! ```
//!
//! The trailer is written last, after everything before it is on disk (fdatasync), and
//! fdatasync'd itself: a file without a valid trailer is a torn snapshot and is refused. Every
//! section and every RAM extent carries a CRC-32 checked when it is read.

use serde::{Deserialize, Serialize};

/// Block size every offset (but RAM's) is aligned to.
pub const BLOCK: u64 = 4096;
/// RAM chunk size and alignment.
pub const RAM_CHUNK: u64 = 1 << 20;
/// The format version this keel writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_MAGIC: &[u8; 8] = b"KEELSNAP";
const TRAILER_MAGIC: &[u8; 8] = b"KEELEND1";
/// The largest section table a restore reads (a few hundred bytes per section).
pub const MAX_TABLE: u64 = 1 << 20;
/// The largest state section a restore reads (the RAM index of a 1 TiB guest is ~80 MiB).
pub const MAX_SECTION: u64 = 256 << 20;

/// What is wrong with a snapshot file's framing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// Not a Keel snapshot.
    #[error("not a keel snapshot (bad header magic)")]
    HeaderMagic,
    /// Written by an incompatible keel.
    #[error("snapshot format version {0} (this keel reads version {FORMAT_VERSION})")]
    Version(u32),
    /// No valid trailer: the write did not finish, or the file was cut.
    #[error("the snapshot is incomplete or truncated (no valid trailer)")]
    Torn,
    /// The file's length does not match what the trailer recorded.
    #[error("the snapshot is {actual} bytes but was written as {recorded}")]
    Length {
        /// Bytes on disk.
        actual: u64,
        /// Bytes the trailer records.
        recorded: u64,
    },
    /// A region's checksum does not match.
    #[error("{what} is corrupted (CRC-32 mismatch)")]
    Checksum {
        /// Which part.
        what: String,
    },
    /// A table entry points outside the file or is implausibly large.
    #[error("{what} lies outside the file or is too large")]
    Bounds {
        /// Which part.
        what: String,
    },
    /// A required section is missing.
    #[error("the snapshot has no {0} section")]
    Missing(String),
}

/// One section: where it is and its checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// Its name ("config", "vm", "vcpus", "devices", "ram").
    pub name: String,
    /// File offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// CRC-32 of its bytes.
    pub crc: u32,
}

/// One extent of guest RAM in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamExtent {
    /// Guest physical address.
    pub guest: u64,
    /// Length in bytes (a multiple of 4 KiB).
    pub len: u64,
    /// File offset (a multiple of 1 MiB).
    pub offset: u64,
    /// CRC-32 of its bytes.
    pub crc: u32,
}

/// Rounds `x` up to a multiple of `align` (a power of two).
pub fn align_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}

/// The header block.
pub fn header() -> [u8; BLOCK as usize] {
    let mut b = [0u8; BLOCK as usize];
    b[..8].copy_from_slice(HEADER_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    b
}

/// Checks a header block.
pub fn check_header(b: &[u8]) -> Result<(), FormatError> {
    if b.len() < 16 || &b[..8] != HEADER_MAGIC {
        return Err(FormatError::HeaderMagic);
    }
    let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    Ok(())
}

/// Where the section table is, as the trailer records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Table offset.
    pub table_offset: u64,
    /// Table length.
    pub table_len: u64,
    /// Table CRC-32.
    pub table_crc: u32,
    /// The whole file's length, trailer included.
    pub file_len: u64,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

impl Trailer {
    /// The trailer block.
    pub fn encode(&self) -> [u8; BLOCK as usize] {
        let mut b = [0u8; BLOCK as usize];
        b[..8].copy_from_slice(TRAILER_MAGIC);
        b[8..16].copy_from_slice(&self.table_offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.table_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.table_crc.to_le_bytes());
        b[28..36].copy_from_slice(&self.file_len.to_le_bytes());
        let crc = crc32fast::hash(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads the trailer block of a file `file_len` bytes long.
    pub fn decode(b: &[u8], file_len: u64) -> Result<Self, FormatError> {
        if b.len() < 40 || &b[..8] != TRAILER_MAGIC || crc32fast::hash(&b[..36]) != u32_at(b, 36) {
            return Err(FormatError::Torn);
        }
        let t = Trailer {
            table_offset: u64_at(b, 8),
            table_len: u64_at(b, 16),
            table_crc: u32_at(b, 24),
            file_len: u64_at(b, 28),
        };
        if t.file_len != file_len {
            return Err(FormatError::Length {
                actual: file_len,
                recorded: t.file_len,
            });
        }
        check_bounds(
            "the section table",
            t.table_offset,
            t.table_len,
            file_len,
            MAX_TABLE,
        )?;
        Ok(t)
    }
}

/// Refuses a region that does not lie within the first `file_len - BLOCK` bytes (before the
/// trailer) or is longer than `max`.
pub fn check_bounds(
    what: &str,
    offset: u64,
    len: u64,
    file_len: u64,
    max: u64,
) -> Result<(), FormatError> {
    let end = offset.checked_add(len);
    if len > max || end.is_none_or(|e| e > file_len.saturating_sub(BLOCK)) {
        return Err(FormatError::Bounds { what: what.into() });
    }
    Ok(())
}

/// Checks `bytes` against the checksum recorded for `what`.
pub fn check_crc(what: &str, bytes: &[u8], crc: u32) -> Result<(), FormatError> {
    if crc32fast::hash(bytes) != crc {
        return Err(FormatError::Checksum { what: what.into() });
    }
    Ok(())
}

/// The section named `name` in `table`.
pub fn find<'a>(table: &'a [Section], name: &str) -> Result<&'a Section, FormatError> {
    table
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| FormatError::Missing(name.into()))
}

/// Checks RAM extents against the guest's RAM regions (`(start, len)`) and the file: each
/// extent must lie inside one region, on a 1 MiB file boundary, before the trailer.
pub fn check_extents(
    extents: &[RamExtent],
    regions: &[(u64, u64)],
    file_len: u64,
) -> Result<(), FormatError> {
    for e in extents {
        let what = format!("the RAM extent at guest {:#x}", e.guest);
        let inside = regions.iter().any(|&(start, len)| {
            e.guest >= start
                && e.guest
                    .checked_add(e.len)
                    .is_some_and(|end| end <= start + len)
        });
        if !inside || e.offset % RAM_CHUNK != 0 || e.len % BLOCK != 0 || e.len == 0 {
            return Err(FormatError::Bounds { what });
        }
        check_bounds(&what, e.offset, e.len, file_len, RAM_CHUNK)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_checked_for_magic_and_version() {
        let mut h = header();
        assert_eq!(check_header(&h), Ok(()));
        h[8] = 9;
        assert_eq!(check_header(&h), Err(FormatError::Version(9)));
        h[0] = b'X';
        assert_eq!(check_header(&h), Err(FormatError::HeaderMagic));
    }

    #[test]
    fn trailer_round_trips_and_refuses_damage_and_truncation() {
        let t = Trailer {
            table_offset: 8 << 20,
            table_len: 300,
            table_crc: 0xdead_beef,
            file_len: (8 << 20) + 2 * BLOCK,
        };
        let b = t.encode();
        assert_eq!(Trailer::decode(&b, t.file_len), Ok(t));
        let mut bad = b;
        bad[20] ^= 1;
        assert_eq!(Trailer::decode(&bad, t.file_len), Err(FormatError::Torn));
        assert!(matches!(
            Trailer::decode(&b, t.file_len - BLOCK),
            Err(FormatError::Length { .. })
        ));
        assert_eq!(
            Trailer::decode(&[0u8; 4096], t.file_len),
            Err(FormatError::Torn)
        );
    }

    #[test]
    fn a_table_past_the_trailer_is_refused() {
        let t = Trailer {
            table_offset: 4096,
            table_len: 8192,
            table_crc: 0,
            file_len: 3 * BLOCK,
        };
        assert!(matches!(
            Trailer::decode(&t.encode(), t.file_len),
            Err(FormatError::Bounds { .. })
        ));
    }

    #[test]
    fn extents_must_lie_in_guest_ram_and_in_the_file() {
        let regions = [(0, 4 << 20)];
        let file_len = 16 << 20;
        let ok = RamExtent {
            guest: 1 << 20,
            len: 1 << 20,
            offset: 2 << 20,
            crc: 0,
        };
        assert_eq!(check_extents(&[ok], &regions, file_len), Ok(()));
        for bad in [
            RamExtent {
                guest: 4 << 20,
                ..ok
            },
            RamExtent {
                guest: u64::MAX - 10,
                ..ok
            },
            RamExtent {
                offset: (2 << 20) + 4096,
                ..ok
            },
            RamExtent {
                offset: 15 << 20,
                ..ok
            },
            RamExtent { len: 100, ..ok },
            RamExtent { len: 2 << 20, ..ok },
        ] {
            assert!(
                check_extents(&[bad], &regions, file_len).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn checksums_catch_a_flipped_bit() {
        let data = vec![7u8; 5000];
        let crc = crc32fast::hash(&data);
        assert_eq!(check_crc("x", &data, crc), Ok(()));
        let mut bad = data;
        bad[4999] ^= 0x10;
        assert!(check_crc("x", &bad, crc).is_err());
    }
}
