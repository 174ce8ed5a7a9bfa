//! What a kernel image tells the VMM about booting it on x86: its format (ELF vmlinux or
//! bzImage, from magic numbers), how the boot vCPU enters it ([`EntryMode`]), where a bzImage's
//! 64-bit entry point is, and where an initramfs may go (Linux's boot protocol,
//! Documentation/arch/x86/boot.rst).
//!
//! Reading the file and copying into guest memory is the VMM's loader; here are only the rules,
//! as functions of bytes and numbers.

use linux_loader::loader::bootparam::setup_header;

/// How the boot vCPU enters the kernel: the CPU mode, the register that points at the boot
/// information, and which boot structure ([`crate::boot_info`]) it points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux's 64-bit boot protocol: long mode at the entry address, RSI = the zero page
    /// ([`crate::regs::setup_sregs_64bit`], [`crate::regs::regs_64bit`],
    /// [`crate::boot_info::write_zero_page`]).
    Linux64,
    /// PVH: 32-bit protected mode at the entry address, EBX = `hvm_start_info`
    /// ([`crate::regs::setup_sregs_pvh`], [`crate::regs::regs_pvh`],
    /// [`crate::boot_info::write_pvh_start_info`]).
    Pvh,
}

/// A kernel image format Keel boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF vmlinux.
    Elf,
    /// bzImage.
    BzImage,
}

/// The first bytes of an ELF file.
pub const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// Offset of the setup header's `header` field in a bzImage.
pub const SETUP_HEADER_MAGIC_OFFSET: usize = 0x202;
/// The setup header's `header` field: "HdrS".
pub const SETUP_HEADER_MAGIC: [u8; 4] = *b"HdrS";
/// How many leading bytes of an image [`detect_format`] needs to tell every format.
pub const FORMAT_PROBE_LEN: usize = SETUP_HEADER_MAGIC_OFFSET + SETUP_HEADER_MAGIC.len();
/// `xloadflags` bit: the kernel has the 64-bit entry point.
pub const XLF_KERNEL_64: u16 = 1;
/// The 64-bit entry sits 0x200 bytes into the protected-mode image.
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Highest address an initramfs may end at when the kernel does not say (Linux's default
/// `initrd_addr_max`).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// The initramfs starts on a page boundary.
pub const INITRAMFS_ALIGN: u64 = 0x1000;

/// The format of the image whose first bytes are `head` (as many as the file has, up to
/// [`FORMAT_PROBE_LEN`]); `None` when it is neither.
pub fn detect_format(head: &[u8]) -> Option<KernelFormat> {
    if head.starts_with(&ELF_MAGIC) {
        return Some(KernelFormat::Elf);
    }
    let magic = SETUP_HEADER_MAGIC_OFFSET..SETUP_HEADER_MAGIC_OFFSET + SETUP_HEADER_MAGIC.len();
    (head.get(magic) == Some(&SETUP_HEADER_MAGIC[..])).then_some(KernelFormat::BzImage)
}

/// Whether a bzImage with this setup header can be entered in 64-bit mode.
pub fn has_64bit_entry(header: &setup_header) -> bool {
    header.xloadflags & XLF_KERNEL_64 != 0
}

/// The highest address (inclusive) an initramfs may occupy: the kernel's `initrd_addr_max`
/// where its setup header gives one, else [`DEFAULT_INITRD_ADDR_MAX`].
pub fn initrd_addr_max(header: Option<&setup_header>) -> u64 {
    header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX)
}

/// Where an initramfs of `size` bytes goes: as high as possible below `limit` (exclusive),
/// page aligned, and not below `kernel_end`. `None` when it does not fit.
pub fn initramfs_start(size: u64, kernel_end: u64, limit: u64) -> Option<u64> {
    let start = limit.checked_sub(size)? & !(INITRAMFS_ALIGN - 1);
    (start >= kernel_end).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_by_their_magic_numbers() {
        assert_eq!(
            detect_format(b"\x7fELF\x02\x01\x01\x00rest"),
            Some(KernelFormat::Elf)
        );
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(
            detect_format(&bz[..FORMAT_PROBE_LEN]),
            Some(KernelFormat::BzImage)
        );
        assert_eq!(detect_format(&bz[..FORMAT_PROBE_LEN - 1]), None);
        assert_eq!(detect_format(&[0x90; 0x400]), None);
        assert_eq!(detect_format(b"\x7fE"), None);
        assert_eq!(detect_format(&[]), None);
    }

    #[test]
    fn setup_header_fields() {
        let mut h = setup_header::default();
        assert!(!has_64bit_entry(&h));
        h.xloadflags = 0x13;
        assert!(has_64bit_entry(&h));
        assert_eq!(initrd_addr_max(None), 0x37ff_ffff);
        assert_eq!(
            initrd_addr_max(Some(&h)),
            0x37ff_ffff,
            "0 means the default"
        );
        h.initrd_addr_max = 0x7fff_ffff;
        assert_eq!(initrd_addr_max(Some(&h)), 0x7fff_ffff);
        assert_eq!(
            u32::from_le_bytes(SETUP_HEADER_MAGIC),
            0x5372_6448,
            "as Linux's boot.rst spells it"
        );
    }

    #[test]
    fn initramfs_goes_high_page_aligned_above_the_kernel() {
        let top = 8 << 20;
        let start = initramfs_start(10_000, 2 << 20, top).unwrap();
        assert_eq!(start % 4096, 0);
        assert!(start + 10_000 <= top && start + 10_000 > top - 8192);
        assert_eq!(initramfs_start(4096, top - 4096, top), Some(top - 4096));
        assert_eq!(initramfs_start(4097, top - 4096, top), None);
        assert_eq!(initramfs_start(top + 1, 0, top), None);
    }
}
