//! userfaultfd write-protection, the part a live snapshot uses: open a userfaultfd with the
//! write-protect features, register guest RAM for write-protect faults, protect and
//! unprotect ranges, and read the faults.
//!
//! Why not the `userfaultfd` crate: its `userfaultfd-sys` generates the kernel bindings with
//! bindgen at build time, which needs libclang on every machine that builds Keel. What is
//! used here is a handful of ioctls and three structs of the kernel's stable ABI
//! (`linux/userfaultfd.h`), written out below.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `UFFD_API`.
const UFFD_API: u64 = 0xAA;
/// Fault messages say whether a fault is a write-protect fault.
pub const FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
/// Write-protect works on hugetlbfs and shmem (memfd) memory too.
pub const FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
/// Protecting a range protects its pages that were never touched as well.
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;

const REGISTER_MODE_WP: u64 = 1 << 1;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const EVENT_PAGEFAULT: u8 = 0x12;

/// `_IOC(dir, 0xAA, nr, size)` for x86-64.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `struct uffd_msg` (32 bytes), as far as a page fault goes.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    flags: u64,
    address: u64,
    feat: u64,
}

const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, 0x3F, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0x00,
    std::mem::size_of::<UffdioRegister>(),
);
const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, 0x01, std::mem::size_of::<UffdioRange>());
const UFFDIO_WAKE: u64 = ioc(IOC_READ, 0x02, std::mem::size_of::<UffdioRange>());
const UFFDIO_WRITEPROTECT: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0x06,
    std::mem::size_of::<UffdioWriteprotect>(),
);

/// Errors of userfaultfd calls.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// The syscall or an ioctl failed.
    #[error("userfaultfd {what} failed")]
    Call {
        /// What was called.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The kernel lacks a feature the snapshot needs.
    #[error("the kernel's userfaultfd lacks {0}")]
    Missing(&'static str),
}

fn call(what: &'static str) -> impl FnOnce(io::Error) -> UffdError {
    move |source| UffdError::Call { what, source }
}

/// A userfaultfd.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

/// One write-protect fault: the address written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WpFault {
    /// The faulting address (page-aligned by the caller).
    pub address: u64,
}

/// A new userfaultfd (non-blocking, close-on-exec) that handles faults in kernel mode too
/// (KVM's and io_uring's accesses), which needs CAP_SYS_PTRACE or
/// `vm.unprivileged_userfaultfd`.
fn open_fd() -> Result<OwnedFd, UffdError> {
    // SAFETY: the syscall takes flags only and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(call("open")(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn ioctl<T>(fd: RawFd, request: u64, arg: &mut T, what: &'static str) -> Result<(), UffdError> {
    // SAFETY: `request` is the ioctl whose argument type is `T` (the size is encoded in the
    // request number), and `arg` is a valid, exclusively borrowed `T` for the call.
    let rc = unsafe { libc::ioctl(fd, request as libc::c_ulong, arg as *mut T) };
    if rc < 0 {
        return Err(call(what)(io::Error::last_os_error()));
    }
    Ok(())
}

impl Uffd {
    /// Opens a userfaultfd with write-protect faults and those of `wanted` features the
    /// kernel has; returns it with the features granted. Every one of `needed` must be there
    /// (named in the error otherwise).
    pub fn open(needed: &[(u64, &'static str)], wanted: u64) -> Result<(Self, u64), UffdError> {
        // The handshake is once per descriptor: ask what the kernel has on a first one.
        let probe = open_fd()?;
        let mut api = UffdioApi {
            api: UFFD_API,
            ..Default::default()
        };
        ioctl(probe.as_raw_fd(), UFFDIO_API, &mut api, "API handshake")?;
        let mut features = FEATURE_PAGEFAULT_FLAG_WP | (wanted & api.features);
        for &(bit, name) in needed {
            if api.features & bit == 0 {
                return Err(UffdError::Missing(name));
            }
            features |= bit;
        }
        let fd = open_fd()?;
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api, "API handshake")?;
        Ok((Uffd { fd }, features))
    }

    /// Registers `[start, start+len)` for write-protect faults.
    pub fn register_wp(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut r = UffdioRegister {
            range: UffdioRange { start, len },
            mode: REGISTER_MODE_WP,
            ioctls: 0,
        };
        ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER, &mut r, "register")
    }

    /// Stops handling faults in `[start, start+len)`.
    pub fn unregister(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut r = UffdioRange { start, len };
        ioctl(self.fd.as_raw_fd(), UFFDIO_UNREGISTER, &mut r, "unregister")
    }

    /// Write-protects (`protect`) or unprotects `[start, start+len)`; unprotecting wakes the
    /// threads that faulted there.
    pub fn write_protect(&self, start: u64, len: u64, protect: bool) -> Result<(), UffdError> {
        let mut w = UffdioWriteprotect {
            range: UffdioRange { start, len },
            mode: if protect { WRITEPROTECT_MODE_WP } else { 0 },
        };
        ioctl(
            self.fd.as_raw_fd(),
            UFFDIO_WRITEPROTECT,
            &mut w,
            "writeprotect",
        )
    }

    /// Wakes the threads that faulted in `[start, start+len)`.
    pub fn wake(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut r = UffdioRange { start, len };
        ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE, &mut r, "wake")
    }

    /// Reads the pending write-protect faults into `out` (none if there are none: the
    /// descriptor is non-blocking). Other events are ignored.
    pub fn read_faults(&self, out: &mut Vec<WpFault>) -> Result<(), UffdError> {
        let mut msgs = [UffdMsg::default(); 16];
        let size = std::mem::size_of_val(&msgs);
        // SAFETY: reads at most `size` bytes into `msgs`, which is that large and plain data.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), msgs.as_mut_ptr().cast(), size) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(());
            }
            return Err(call("read")(e));
        }
        let count = n as usize / std::mem::size_of::<UffdMsg>();
        out.extend(
            msgs[..count]
                .iter()
                .filter(|m| m.event == EVENT_PAGEFAULT)
                .map(|m| WpFault { address: m.address }),
        );
        Ok(())
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // From linux/userfaultfd.h on x86-64.
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xc018_aa06);
        assert_eq!(std::mem::size_of::<UffdMsg>(), 32);
    }
}
