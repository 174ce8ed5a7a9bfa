//! A snapshot file's bytes, as a user (or a disk that went bad) hands them to a restore:
//! `SnapshotFile::open` checks the framing, every section decodes or is refused, and guest RAM
//! is read only inside the guest's RAM, never panicking and never allocating past the file.
#![no_main]

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmm::snapshot::file::SnapshotFile;
use vmm::snapshot::ram_io::GuestTarget;

/// The guest RAM a fuzzed file may restore into: 4 MiB at guest address 0.
const RAM: usize = 4 << 20;

/// The RAM's host address (leaked once: it lives as long as the fuzzer).
struct Ram(usize);

impl GuestTarget for Ram {
    fn host(&self, guest: u64, len: u64) -> Option<*mut u8> {
        let end = guest.checked_add(len)?;
        (end <= RAM as u64).then(|| (self.0 + guest as usize) as *mut u8)
    }
}

fuzz_target!(|data: &[u8]| {
    // SAFETY: memfd_create with a NUL-terminated name; the descriptor is owned right after.
    let fd = unsafe { libc::memfd_create(c"keel-fuzz-snapshot".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(data).expect("write the memfd");
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{fd}"));
    let Ok(snap) = SnapshotFile::open(&path) else {
        return;
    };
    for name in ["config", "vm", "vcpus", "devices", "ram"] {
        let _ = snap.section::<serde_json::Value>(name);
    }
    let mut word = [0u8; 8];
    let _ = snap.read_guest(0x1000, &mut word);
    if let Ok(extents) = snap.ram_extents(&[(0, RAM as u64)]) {
        static TARGET: OnceLock<Ram> = OnceLock::new();
        let target = TARGET.get_or_init(|| Ram(vec![0u8; RAM].leak().as_mut_ptr() as usize));
        let _ = snap.read_ram(&extents, target);
    }
});
