//! The PCI host bridge as a guest sees it: a tiny kernel reads the vendor/device ID of 00:00.0
//! through the legacy configuration ports (0xCF8/0xCFC) and through ECAM, and prints the raw
//! bytes on COM1.

mod common;

use common::*;

/// Reads 00:00.0 register 0 via CF8/CFC, then via ECAM, printing each dword's 4 bytes.
fn read_root_ids() -> Vec<u8> {
    let mut code = vec![
        0x66, 0xba, 0xf8, 0x0c, // mov dx, 0xcf8
        0xb8, 0x00, 0x00, 0x00, 0x80, // mov eax, 0x80000000 (enable, 00:00.0, reg 0)
        0xef, // out dx, eax
        0x66, 0xba, 0xfc, 0x0c, // mov dx, 0xcfc
        0xed, // in eax, dx
        0x89, 0xc1, // mov ecx, eax
        0xbb, 0x00, 0x00, 0x00, 0xe0, // mov ebx, 0xe0000000 (ECAM, zero-extended)
        0x8b, 0x1b, // mov ebx, [rbx]
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    ];
    for reg in [0xc8u8, 0xd8] {
        // mov eax, ecx / mov eax, ebx; then 4x (out dx, al; shr eax, 8)
        code.extend_from_slice(&[0x89, reg]);
        for _ in 0..4 {
            code.extend_from_slice(&[0xee, 0xc1, 0xe8, 0x08]);
        }
    }
    code.extend(print_and_poweroff(b""));
    code
}

#[test]
fn root_bridge_answers_on_config_ports_and_ecam() {
    let kernel = tiny_kernel("pci-ids.elf", &read_root_ids());
    let out = kernel.with_file_name("pci-ids.serial");
    let _ = std::fs::remove_file(&out);
    let serial = format!("file={}", out.display());
    let run = run_keel(&["--kernel", kernel.to_str().unwrap(), "--serial", &serial]);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let bytes = std::fs::read(&out).unwrap();
    // Vendor 0x8086, device 0x0d57, little-endian, once per access mechanism.
    assert_eq!(bytes, [0x86, 0x80, 0x57, 0x0d, 0x86, 0x80, 0x57, 0x0d]);
}
