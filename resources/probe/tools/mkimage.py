#!/usr/bin/env python3
"""Turns the linked probe ELF into probe-pvh.elf, probe.elf and probe.bzimage.

usage: mkimage.py LINKED_ELF SETUP16_BIN OUTDIR

probe-pvh.elf is the linked ELF (it has a PT_NOTE with the Xen PVH entry note).
probe.elf is the same file with that note disabled (PT_NOTE -> PT_NULL, SHT_NOTE -> PROGBITS).
probe.bzimage is a Linux boot-protocol image: setup sectors with the setup header and the
real-mode stub, followed by the flat image loaded at 0x100000 (64-bit entry at +0x200).
"""
import os
import struct
import sys

LOAD_ADDR = 0x100000
ENTRY64 = 0x100200
SETUP_CODE_OFF = 0x280
PT_LOAD, PT_NOTE, PT_NULL = 1, 4, 0
SHT_PROGBITS, SHT_NOTE = 1, 7


def fail(msg):
    sys.exit(f"mkimage: {msg}")


def parse(elf):
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        fail("not a little-endian ELF64 file")
    (entry, phoff, shoff) = struct.unpack_from("<QQQ", elf, 24)
    (phentsize, phnum, shentsize, shnum) = struct.unpack_from("<HHHH", elf, 54)
    phdrs = []
    for i in range(phnum):
        at = phoff + i * phentsize
        phdrs.append((at,) + struct.unpack_from("<IIQQQQQQ", elf, at))
    shdrs = []
    for i in range(shnum):
        at = shoff + i * shentsize
        shdrs.append((at,) + struct.unpack_from("<IIQQQQ", elf, at))
    return entry, phdrs, shdrs


def write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def bzimage(flat, memsz, setup_code):
    sects = 1
    while SETUP_CODE_OFF + len(setup_code) > (sects + 1) * 512:
        sects += 1
    setup = bytearray((sects + 1) * 512)
    setup[SETUP_CODE_OFF:SETUP_CODE_OFF + len(setup_code)] = setup_code
    init_size = (max(memsz, len(flat)) + 0xFFF) & ~0xFFF
    struct.pack_into("<B", setup, 0x1F1, sects)                 # setup_sects
    struct.pack_into("<I", setup, 0x1F4, (len(flat) + 15) // 16)  # syssize
    struct.pack_into("<H", setup, 0x1FA, 0xFFFF)                # vid_mode: normal
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)                # boot_flag
    setup[0x200:0x202] = bytes([0xEB, SETUP_CODE_OFF - 0x202])  # jmp to the stub
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)                # protocol version
    struct.pack_into("<H", setup, 0x20C, 0x1000)                # start_sys_seg
    struct.pack_into("<B", setup, 0x211, 0x01)                  # loadflags: LOADED_HIGH
    struct.pack_into("<I", setup, 0x214, LOAD_ADDR)             # code32_start
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)            # initrd_addr_max
    struct.pack_into("<I", setup, 0x230, 0x1000)                # kernel_alignment
    struct.pack_into("<B", setup, 0x234, 0)                     # relocatable_kernel
    struct.pack_into("<B", setup, 0x235, 12)                    # min_alignment
    struct.pack_into("<H", setup, 0x236, 0x0001)                # xloadflags: XLF_KERNEL_64
    struct.pack_into("<I", setup, 0x238, 4095)                  # cmdline_size
    struct.pack_into("<Q", setup, 0x258, LOAD_ADDR)             # pref_address
    struct.pack_into("<I", setup, 0x260, init_size)             # init_size
    pad = (-len(flat)) % 16
    return bytes(setup) + bytes(flat) + bytes(pad)


def main():
    if len(sys.argv) != 4:
        fail("usage: mkimage.py LINKED_ELF SETUP16_BIN OUTDIR")
    elf_path, setup_path, out = sys.argv[1:]
    with open(elf_path, "rb") as f:
        elf = bytearray(f.read())
    with open(setup_path, "rb") as f:
        setup_code = f.read()
    entry, phdrs, shdrs = parse(elf)
    if entry != ENTRY64:
        fail(f"entry point {entry:#x}, expected {ENTRY64:#x}")
    loads = [p for p in phdrs if p[1] == PT_LOAD]
    notes = [p for p in phdrs if p[1] == PT_NOTE]
    if len(loads) != 1 or len(notes) != 1 or notes[0][6] == 0:
        fail("expected exactly one PT_LOAD and one non-empty PT_NOTE")
    (_, _, _, off, vaddr, paddr, filesz, memsz, _) = loads[0]
    if vaddr != LOAD_ADDR or paddr != LOAD_ADDR:
        fail(f"PT_LOAD at {vaddr:#x}/{paddr:#x}, expected {LOAD_ADDR:#x}")
    flat = bytes(elf[off:off + filesz])

    write(os.path.join(out, "probe-pvh.elf"), bytes(elf))

    plain = bytearray(elf)
    struct.pack_into("<I", plain, notes[0][0], PT_NULL)
    for sh in shdrs:
        if sh[2] == SHT_NOTE:
            struct.pack_into("<I", plain, sh[0] + 4, SHT_PROGBITS)
    write(os.path.join(out, "probe.elf"), bytes(plain))

    write(os.path.join(out, "probe.bzimage"), bzimage(flat, memsz, setup_code))


if __name__ == "__main__":
    main()
