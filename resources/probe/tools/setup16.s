/*
 * Real-mode setup code of probe.bzimage, for loaders that run it (QEMU -kernel, bootloaders).
 * Keel and other 64-bit loaders skip it and enter the kernel at 0x100200 directly.
 * It is placed at offset 0x280 of the setup area (the jump at 0x200 leads here). It builds a
 * fresh zero page at setup+0x1000 (header copy + BIOS E820 map), enables A20, enters 32-bit
 * protected mode and jumps to the Linux 32-bit entry at 0x100000 with ESI = zero page.
 */
    .code16
    .text
    .set BASE, 0x280
    .set ZP, 0x1000
start:
    cli
    cld
    mov %cs, %ax
    sub $0x20, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0xf000, %sp
    mov $ZP, %di
    mov $4096, %cx
    xor %al, %al
    rep stosb
    mov $0x1f1, %si
    mov $ZP + 0x1f1, %di
    mov $0x290 - 0x1f1, %cx
    rep movsb
    xor %ebx, %ebx
    mov $ZP + 0x2d0, %di
    xor %bp, %bp
1:
    mov $0xe820, %eax
    mov $20, %ecx
    mov $0x534d4150, %edx
    int $0x15
    jc 2f
    cmp $0x534d4150, %eax
    jne 2f
    inc %bp
    add $20, %di
    test %ebx, %ebx
    jz 2f
    cmp $128, %bp
    jb 1b
2:
    mov %bp, %ax
    mov %al, ZP + 0x1e8
    in $0x92, %al
    or $2, %al
    and $0xfe, %al
    out %al, $0x92
    xor %eax, %eax
    mov %ds, %ax
    shl $4, %eax
    mov %eax, %esi
    add $ZP, %esi
    add $BASE + (gdt - start), %eax
    mov %eax, BASE + (gdtr - start) + 2
    lgdtl BASE + (gdtr - start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    mov $0x18, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    ljmpl $0x10, $0x100000
    .balign 8
gdt:
    .quad 0
    .quad 0
    .quad 0x00CF9A000000FFFF
    .quad 0x00CF92000000FFFF
gdtr:
    .word 31
    .long 0
