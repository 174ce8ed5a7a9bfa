//! Snapshots of a running VM and restores from them.
//!
//! A snapshot fixes the VM at one instant: the vCPUs park (each hands over its state from its
//! own thread, [`crate::vcpu::save`]), the VM-wide KVM state ([`crate::vm::VmState`]) and every
//! device's ([`crate::device_manager::state`]) are read, then guest RAM is written while the
//! guest stays parked (`mode=paused`), or runs on with its RAM write-protected until each
//! part is on disk (`mode=live`, [`live`]). The file ([`format`], [`file`]) holds the VM's
//! configuration, the state sections and RAM as 1 MiB-aligned extents written with O_DIRECT
//! ([`ram_io`]); its trailer is written last, so an interrupted snapshot is refused, never
//! half-restored.
//!
//! A restore builds a VM from the saved configuration without loading any payload, reads RAM
//! back, and puts the VM, device and vCPU state in before any vCPU runs
//! ([`crate::vm::Vm::restore`]). Disks are the user's: a snapshot does not copy them.

pub mod file;
pub mod format;
pub mod live;
pub mod ram_io;
pub mod uffd;
pub mod uring;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use file::{FileError, SnapshotFile, SnapshotWriter};

/// Section names.
pub mod sections {
    /// The VM's configuration (the API's VmConfig JSON).
    pub const CONFIG: &str = "config";
    /// The in-kernel irqchip, PIT and clock.
    pub const VM: &str = "vm";
    /// Every vCPU's state.
    pub const VCPUS: &str = "vcpus";
    /// Every device's state.
    pub const DEVICES: &str = "devices";
}

/// How the guest is treated while RAM is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Parked from the snapshot instant until RAM is on disk.
    #[default]
    Paused,
    /// Running while RAM is written, each page saved as it was at the instant.
    Live,
}

/// What a snapshot took.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotReport {
    /// Paused or live.
    pub mode: SnapshotMode,
    /// The file's length.
    pub file_bytes: u64,
    /// Guest RAM written (non-zero chunks).
    pub ram_bytes: u64,
    /// Guest RAM not written because it held zeroes.
    pub zero_bytes: u64,
    /// How long the guest was parked.
    pub paused_for: Duration,
    /// How long the whole snapshot took.
    pub took: Duration,
    /// Live mode: the guest's write faults while RAM was written.
    pub faults: live::FaultStats,
}

/// What a restore read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// Guest RAM read.
    pub ram_bytes: u64,
    /// How long reading RAM took.
    pub ram_time: Duration,
}

/// A snapshot or restore location that Keel does not take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}: only file:// URLs with an absolute path are supported")]
pub struct UrlError(pub String);

/// The path of a `file:///...` URL (a plain absolute path is taken as well).
pub fn path_from_url(url: &str) -> Result<PathBuf, UrlError> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    if !path.starts_with('/') || path.contains('\0') {
        return Err(UrlError(url.into()));
    }
    Ok(Path::new(path).to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_and_absolute_paths_are_taken_and_nothing_else() {
        assert_eq!(
            path_from_url("file:///var/snap/a"),
            Ok(PathBuf::from("/var/snap/a"))
        );
        assert_eq!(path_from_url("/tmp/x"), Ok(PathBuf::from("/tmp/x")));
        for bad in ["http://host/x", "file://relative", "snap", "file:///a\0b"] {
            assert!(path_from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn modes_are_spelt_in_lowercase() {
        assert_eq!(
            serde_json::from_str::<SnapshotMode>("\"live\"").unwrap(),
            SnapshotMode::Live
        );
        assert_eq!(
            serde_json::to_string(&SnapshotMode::Paused).unwrap(),
            "\"paused\""
        );
    }
}
