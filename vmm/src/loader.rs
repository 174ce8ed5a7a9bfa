//! Kernel loading with format detection: ELF vmlinux (PVH entry when it carries the PVH note,
//! 64-bit entry otherwise) or bzImage (64-bit boot protocol); plus the initramfs and the
//! command line; or a PVH firmware in place of the kernel. Produces the entry point the boot
//! vCPU starts at.
//!
//! The files and guest memory are handled here; the x86 rules (magic numbers, the bzImage
//! header, where the initramfs may go, the entry modes) are [`arch::kernel`]'s.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use arch::kernel::{self as image, BZIMAGE_64BIT_ENTRY_OFFSET, FORMAT_PROBE_LEN};
pub use arch::kernel::{EntryMode, KernelFormat};
use arch::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// Errors loading the guest payload.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// A payload file could not be opened or read.
    #[error("cannot read {what} {path}")]
    Open {
        /// kernel or initramfs.
        what: &'static str,
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not an ELF nor a bzImage.
    #[error("{0}: not a kernel image Keel can boot (expected an ELF vmlinux or a bzImage)")]
    UnknownFormat(String),
    /// linux-loader refused the image.
    #[error("{path}: failed to load the {format} kernel")]
    Load {
        /// Path.
        path: String,
        /// "ELF" or "bzImage".
        format: &'static str,
        /// Cause.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// A bzImage without the 64-bit entry point.
    #[error("{0}: this bzImage has no 64-bit entry point (XLF_KERNEL_64 not set)")]
    No64BitEntry(String),
    /// No room for the initramfs.
    #[error("the initramfs ({size} bytes) does not fit in guest memory between the kernel end {kernel_end:#x} and {limit:#x}")]
    InitramfsTooLarge {
        /// Initramfs size.
        size: u64,
        /// Where the kernel ends.
        kernel_end: u64,
        /// Highest usable address.
        limit: u64,
    },
    /// Copying the initramfs failed.
    #[error("failed to copy the initramfs into guest memory")]
    InitramfsCopy(#[source] vm_memory::GuestMemoryError),
    /// Bad command line.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The command line could not be written.
    #[error("failed to write the kernel command line")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    /// `--firmware` given a file that is not an ELF with a PVH entry note.
    #[error("{0}: not a PVH firmware (expected an ELF with a PVH entry note, such as edk2's CLOUDHV.fd)")]
    NotPvhFirmware(String),
}

/// A loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Format found.
    pub format: KernelFormat,
    /// Entry mode.
    pub mode: EntryMode,
    /// Entry address.
    pub entry: GuestAddress,
    /// First byte past the loaded image.
    pub end: u64,
    /// The bzImage setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
}

fn open(what: &'static str, path: &Path) -> Result<File, LoaderError> {
    File::open(path).map_err(|source| LoaderError::Open {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Detects the format of `file` from its first bytes (a file that cannot be read has none).
fn detect_format(file: &mut File) -> std::io::Result<Option<KernelFormat>> {
    file.seek(SeekFrom::Start(0))?;
    let mut head = Vec::with_capacity(FORMAT_PROBE_LEN);
    if file
        .by_ref()
        .take(FORMAT_PROBE_LEN as u64)
        .read_to_end(&mut head)
        .is_err()
    {
        head.clear();
    }
    Ok(image::detect_format(&head))
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let mut file = open("kernel", path)?;
    let shown = || path.display().to_string();
    let format = detect_format(&mut file)
        .map_err(|source| LoaderError::Open {
            what: "kernel",
            path: shown(),
            source,
        })?
        .ok_or_else(|| LoaderError::UnknownFormat(shown()))?;
    let himem = Some(GuestAddress(HIMEM_START));
    match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut file, himem).map_err(|source| LoaderError::Load {
                path: shown(),
                format: "ELF",
                source,
            })?;
            let (mode, entry) = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (EntryMode::Pvh, addr),
                _ => (EntryMode::Linux64, r.kernel_load),
            };
            Ok(LoadedKernel {
                format,
                mode,
                entry,
                end: r.kernel_end,
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            let r =
                BzImage::load(mem, None, &mut file, himem).map_err(|source| LoaderError::Load {
                    path: shown(),
                    format: "bzImage",
                    source,
                })?;
            let hdr = r.setup_header;
            if hdr.is_some_and(|h| !image::has_64bit_entry(&h)) {
                return Err(LoaderError::No64BitEntry(shown()));
            }
            Ok(LoadedKernel {
                format,
                mode: EntryMode::Linux64,
                entry: r.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
                end: r.kernel_end,
                setup_header: hdr,
            })
        }
    }
}

/// Loads the PVH firmware at `path` (edk2's CLOUDHV.fd: an ELF whose PVH note gives its
/// 32-bit entry) into `mem`; anything else is refused.
pub fn load_firmware(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let mut file = open("firmware", path)?;
    let not_pvh = || LoaderError::NotPvhFirmware(path.display().to_string());
    if detect_format(&mut file).ok().flatten() != Some(KernelFormat::Elf) {
        return Err(not_pvh());
    }
    let himem = Some(GuestAddress(HIMEM_START));
    let r = Elf::load(mem, None, &mut file, himem).map_err(|source| LoaderError::Load {
        path: path.display().to_string(),
        format: "ELF firmware",
        source,
    })?;
    match r.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel {
            format: KernelFormat::Elf,
            mode: EntryMode::Pvh,
            entry,
            end: r.kernel_end,
            setup_header: None,
        }),
        _ => Err(not_pvh()),
    }
}

/// Copies the initramfs at `path` as high as possible below `low_ram_end` (and the kernel's
/// initrd_addr_max), page aligned ([`image::initramfs_start`]). Returns `(address, size)`.
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
    low_ram_end: u64,
) -> Result<(u64, u64), LoaderError> {
    let mut file = open("initramfs", path)?;
    let size = file
        .metadata()
        .map_err(|source| LoaderError::Open {
            what: "initramfs",
            path: path.display().to_string(),
            source,
        })?
        .len();
    let addr_max = image::initrd_addr_max(kernel.setup_header.as_ref());
    let limit = low_ram_end.min(addr_max + 1);
    let too_large = || LoaderError::InitramfsTooLarge {
        size,
        kernel_end: kernel.end,
        limit,
    };
    let start = image::initramfs_start(size, kernel.end, limit).ok_or_else(too_large)?;
    let region_len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(start), &mut file, region_len)
        .map_err(LoaderError::InitramfsCopy)?;
    Ok((start, size))
}

/// Writes `cmdline` at [`CMDLINE_START`]; returns its size including the NUL.
pub fn load_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<usize, LoaderError> {
    let cl = Cmdline::try_from(cmdline, CMDLINE_MAX_SIZE).map_err(LoaderError::Cmdline)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(LoaderError::CmdlineWrite)?;
    Ok(cmdline.len() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(name: &str, bytes: &[u8]) -> (std::path::PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("keel-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        File::create(&path).unwrap().write_all(bytes).unwrap();
        let file = File::open(&path).unwrap();
        (path, file)
    }

    fn mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn formats_are_detected_from_magic_numbers() {
        let (_, mut elf) = temp_file("a.elf", b"\x7fELF\x02\x01\x01\x00rest");
        assert_eq!(detect_format(&mut elf).unwrap(), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let (_, mut bz) = temp_file("bz", &bz);
        assert_eq!(detect_format(&mut bz).unwrap(), Some(KernelFormat::BzImage));
        let (_, mut junk) = temp_file("junk", &[0x90; 0x400]);
        assert_eq!(detect_format(&mut junk).unwrap(), None);
        let (_, mut short) = temp_file("short", b"\x7fE");
        assert_eq!(detect_format(&mut short).unwrap(), None);
    }

    #[test]
    fn unknown_and_truncated_images_are_refused() {
        let m = mem(4 << 20);
        let (junk, _) = temp_file("junk2", &[0x90; 0x400]);
        assert!(matches!(
            load_kernel(&m, &junk),
            Err(LoaderError::UnknownFormat(_))
        ));
        let (elf, _) = temp_file("trunc.elf", b"\x7fELF\x02\x01\x01\x00");
        assert!(matches!(
            load_kernel(&m, &elf),
            Err(LoaderError::Load { format: "ELF", .. })
        ));
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let (bz, _) = temp_file("bad.bz", &bz);
        assert!(matches!(
            load_kernel(&m, &bz),
            Err(LoaderError::Load {
                format: "bzImage",
                ..
            })
        ));
    }

    /// A minimal ELF64 executable: one PT_LOAD of `payload` at 1 MiB, no notes.
    fn elf_without_notes(payload: &[u8]) -> Vec<u8> {
        const EHDR: usize = 64;
        const PHDR: usize = 56;
        let mut e = vec![0u8; EHDR + PHDR];
        e[0..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        e[20..24].copy_from_slice(&1u32.to_le_bytes());
        e[24..32].copy_from_slice(&(HIMEM_START).to_le_bytes()); // e_entry
        e[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
        e[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
        e[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
        e[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let p = &mut e[EHDR..];
        p[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        p[8..16].copy_from_slice(&((EHDR + PHDR) as u64).to_le_bytes()); // p_offset
        p[16..24].copy_from_slice(&HIMEM_START.to_le_bytes()); // p_vaddr
        p[24..32].copy_from_slice(&HIMEM_START.to_le_bytes()); // p_paddr
        p[32..40].copy_from_slice(&(payload.len() as u64).to_le_bytes()); // p_filesz
        p[40..48].copy_from_slice(&(payload.len() as u64).to_le_bytes()); // p_memsz
        e.extend_from_slice(payload);
        e
    }

    #[test]
    fn firmware_must_be_an_elf_with_a_pvh_note() {
        let m = mem(4 << 20);
        let (bare, _) = temp_file("bare.elf", &elf_without_notes(&[0xf4; 64]));
        // The same image boots as a kernel (64-bit entry), but is no PVH firmware.
        assert_eq!(load_kernel(&m, &bare).unwrap().mode, EntryMode::Linux64);
        assert!(matches!(
            load_firmware(&m, &bare),
            Err(LoaderError::NotPvhFirmware(_))
        ));
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let (bz, _) = temp_file("fw.bz", &bz);
        assert!(matches!(
            load_firmware(&m, &bz),
            Err(LoaderError::NotPvhFirmware(_))
        ));
        assert!(matches!(
            load_firmware(&m, Path::new("/nonexistent/CLOUDHV.fd")),
            Err(LoaderError::Open {
                what: "firmware",
                ..
            })
        ));
    }

    #[test]
    fn initramfs_goes_to_the_top_of_low_ram_page_aligned() {
        let m = mem(8 << 20);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let (path, _) = temp_file("initrd", &data);
        let kernel = LoadedKernel {
            format: KernelFormat::Elf,
            mode: EntryMode::Linux64,
            entry: GuestAddress(HIMEM_START),
            end: 2 << 20,
            setup_header: None,
        };
        let (addr, size) = load_initramfs(&m, &path, &kernel, 8 << 20).unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= 8 << 20 && addr + size > (8 << 20) - 8192);
        let mut back = vec![0u8; data.len()];
        m.read_slice(&mut back, GuestAddress(addr)).unwrap();
        assert_eq!(back, data);
        // No room between the kernel's end and the top of RAM.
        let big = LoadedKernel {
            end: (8 << 20) - 4096,
            ..kernel
        };
        assert!(matches!(
            load_initramfs(&m, &path, &big, 8 << 20),
            Err(LoaderError::InitramfsTooLarge { .. })
        ));
    }

    #[test]
    fn cmdline_is_nul_terminated_and_bounded() {
        let m = mem(1 << 20);
        assert_eq!(load_cmdline(&m, "console=ttyS0").unwrap(), 14);
        let mut buf = [0u8; 14];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        assert!(load_cmdline(&m, &"x".repeat(CMDLINE_MAX_SIZE)).is_err());
    }
}
