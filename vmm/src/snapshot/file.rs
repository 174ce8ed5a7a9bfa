//! Writing and reading the snapshot container laid out in [`super::format`]: state sections
//! through the page cache, guest RAM with O_DIRECT ([`super::ram_io`]), then the section
//! table, fdatasync, and the trailer, fdatasync'd again.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::format::{
    self, align_up, FormatError, RamExtent, Section, Trailer, BLOCK, MAX_SECTION, RAM_CHUNK,
};
use super::ram_io::{self, GuestTarget, ReadRamError, WrittenRam};

/// Errors writing or reading a snapshot file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The destination already exists.
    #[error("{0} already exists (remove it or choose another destination)")]
    Exists(PathBuf),
    /// A file operation failed.
    #[error("cannot {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The file's framing is wrong.
    #[error("{path}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// A section could not be encoded or decoded.
    #[error("{path}: the {section} section cannot be {what}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The section.
        section: String,
        /// Encoded or decoded.
        what: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// Guest RAM could not be read back.
    #[error("{path}: cannot restore guest RAM")]
    Ram {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: ReadRamError,
    },
}

/// A snapshot file being written.
pub struct SnapshotWriter {
    path: PathBuf,
    file: File,
    table: Vec<Section>,
    /// Where the next section goes.
    next: u64,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Opens `path` a second time for O_DIRECT writes, or buffered where the file system refuses
/// O_DIRECT (said once in the log).
fn open_direct(path: &Path) -> Result<File, FileError> {
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            log::info!(
                "{}: O_DIRECT refused; guest RAM goes through the page cache",
                path.display()
            );
            OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_err("open for RAM writes", path))
        }
        Err(e) => Err(io_err("open for RAM writes", path)(e)),
    }
}

impl SnapshotWriter {
    /// Creates `path` (which must not exist) and writes the header.
    pub fn create(path: &Path) -> Result<Self, FileError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    FileError::Exists(path.to_path_buf())
                } else {
                    io_err("create", path)(e)
                }
            })?;
        file.write_all_at(&format::header(), 0)
            .map_err(io_err("write the header of", path))?;
        Ok(SnapshotWriter {
            path: path.to_path_buf(),
            file,
            table: Vec::new(),
            next: BLOCK,
        })
    }

    /// Writes `value` as section `name` (JSON) at the next 4 KiB boundary.
    pub fn section(&mut self, name: &str, value: &impl Serialize) -> Result<(), FileError> {
        let bytes = serde_json::to_vec(value).map_err(|source| FileError::Json {
            path: self.path.clone(),
            section: name.into(),
            what: "encoded",
            source,
        })?;
        self.file
            .write_all_at(&bytes, self.next)
            .map_err(io_err("write a state section of", &self.path))?;
        self.table.push(Section {
            name: name.into(),
            offset: self.next,
            len: bytes.len() as u64,
            crc: crc32fast::hash(&bytes),
        });
        self.next = align_up(self.next + bytes.len() as u64, BLOCK);
        Ok(())
    }

    /// Writes guest RAM with `write` (given the file, opened for O_DIRECT where the file
    /// system allows it, and the 1 MiB-aligned start offset after the state sections), then
    /// its extent index as section "ram".
    pub fn ram_with(
        &mut self,
        write: impl FnOnce(&File, u64) -> io::Result<WrittenRam>,
    ) -> Result<WrittenRam, FileError> {
        let start = align_up(self.next, RAM_CHUNK);
        let direct = open_direct(&self.path)?;
        let written = write(&direct, start).map_err(io_err("write guest RAM to", &self.path))?;
        self.next = written.end;
        self.section("ram", &written.extents)?;
        Ok(written)
    }

    /// Writes the section table, makes everything durable, then writes the trailer and makes
    /// it durable too. Returns the file's length.
    pub fn finish(self) -> Result<u64, FileError> {
        let table = serde_json::to_vec(&self.table).map_err(|source| FileError::Json {
            path: self.path.clone(),
            section: "table".into(),
            what: "encoded",
            source,
        })?;
        let table_offset = self.next;
        self.file
            .write_all_at(&table, table_offset)
            .map_err(io_err("write the section table of", &self.path))?;
        self.file
            .sync_data()
            .map_err(io_err("fdatasync", &self.path))?;
        let trailer_offset = align_up(table_offset + table.len() as u64, BLOCK);
        let trailer = Trailer {
            table_offset,
            table_len: table.len() as u64,
            table_crc: crc32fast::hash(&table),
            file_len: trailer_offset + BLOCK,
        };
        self.file
            .write_all_at(&trailer.encode(), trailer_offset)
            .map_err(io_err("write the trailer of", &self.path))?;
        self.file
            .sync_data()
            .map_err(io_err("fdatasync", &self.path))?;
        Ok(trailer.file_len)
    }
}

/// A snapshot file whose framing checked out.
pub struct SnapshotFile {
    path: PathBuf,
    file: File,
    len: u64,
    table: Vec<Section>,
}

impl SnapshotFile {
    /// Opens `path` and checks its header, trailer and section table.
    pub fn open(path: &Path) -> Result<Self, FileError> {
        let file = File::open(path).map_err(io_err("open", path))?;
        let len = file.metadata().map_err(io_err("stat", path))?.len();
        let fmt = |source| FileError::Format {
            path: path.to_path_buf(),
            source,
        };
        if len < 2 * BLOCK || len % BLOCK != 0 {
            return Err(fmt(FormatError::Torn));
        }
        let mut block = [0u8; BLOCK as usize];
        file.read_exact_at(&mut block, 0)
            .map_err(io_err("read the header of", path))?;
        format::check_header(&block).map_err(fmt)?;
        file.read_exact_at(&mut block, len - BLOCK)
            .map_err(io_err("read the trailer of", path))?;
        let trailer = Trailer::decode(&block, len).map_err(fmt)?;
        let mut table = vec![0u8; trailer.table_len as usize];
        file.read_exact_at(&mut table, trailer.table_offset)
            .map_err(io_err("read the section table of", path))?;
        format::check_crc("the section table", &table, trailer.table_crc).map_err(fmt)?;
        let table: Vec<Section> =
            serde_json::from_slice(&table).map_err(|source| FileError::Json {
                path: path.to_path_buf(),
                section: "table".into(),
                what: "decoded",
                source,
            })?;
        Ok(SnapshotFile {
            path: path.to_path_buf(),
            file,
            len,
            table,
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Section `name`, checked and decoded.
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> Result<T, FileError> {
        let fmt = |source| FileError::Format {
            path: self.path.clone(),
            source,
        };
        let s = format::find(&self.table, name).map_err(fmt)?;
        let what = format!("the {name} section");
        format::check_bounds(&what, s.offset, s.len, self.len, MAX_SECTION).map_err(fmt)?;
        let mut bytes = vec![0u8; s.len as usize];
        self.file
            .read_exact_at(&mut bytes, s.offset)
            .map_err(io_err("read a state section of", &self.path))?;
        format::check_crc(&what, &bytes, s.crc).map_err(fmt)?;
        serde_json::from_slice(&bytes).map_err(|source| FileError::Json {
            path: self.path.clone(),
            section: name.into(),
            what: "decoded",
            source,
        })
    }

    /// The RAM extent index, checked against the guest's RAM `regions` (`(start, len)`).
    pub fn ram_extents(&self, regions: &[(u64, u64)]) -> Result<Vec<RamExtent>, FileError> {
        let extents: Vec<RamExtent> = self.section("ram")?;
        format::check_extents(&extents, regions, self.len).map_err(|source| FileError::Format {
            path: self.path.clone(),
            source,
        })?;
        Ok(extents)
    }

    /// Reads `buf.len()` bytes of saved guest RAM at guest address `guest` (within one
    /// extent or one skipped zero chunk), for inspecting a snapshot without restoring it.
    pub fn read_guest(&self, guest: u64, buf: &mut [u8]) -> Result<(), FileError> {
        let extents: Vec<RamExtent> = self.section("ram")?;
        let len = buf.len() as u64;
        let hit = extents
            .iter()
            .find(|e| guest >= e.guest && guest.saturating_add(len) <= e.guest + e.len);
        match hit {
            Some(e) => {
                format::check_bounds("a RAM extent", e.offset, e.len, self.len, RAM_CHUNK)
                    .map_err(|source| FileError::Format {
                        path: self.path.clone(),
                        source,
                    })?;
                self.file
                    .read_exact_at(buf, e.offset + (guest - e.guest))
                    .map_err(io_err("read guest RAM from", &self.path))
            }
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Reads guest RAM into `target`; returns the bytes read. The reads bypass the page
    /// cache (O_DIRECT, straight into guest memory) where the file system allows it.
    pub fn read_ram(
        &self,
        extents: &[RamExtent],
        target: &dyn GuestTarget,
    ) -> Result<u64, FileError> {
        let direct = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path)
        {
            Ok(f) => Some(f),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => None,
            Err(e) => return Err(io_err("open for RAM reads", &self.path)(e)),
        };
        let file = direct.as_ref().unwrap_or(&self.file);
        ram_io::read_ram(file, extents, target).map_err(|source| FileError::Ram {
            path: self.path.clone(),
            source,
        })
    }
}
