/*
 * Boot entry points and CPL0 setup. Everything here runs at CPL0 and must stay within the
 * instruction subset that the host's CPL0 emulator handles: plain integer ops, lgdt/lidt/ltr,
 * control-register moves, rdmsr/wrmsr (EFER and STAR here; any MSR on behalf of CPL3 in
 * isr.s), far jumps/returns, iretq.
 *
 * Image layout: offset 0x000 (phys 0x100000) is the Linux 32-bit boot protocol entry
 * (ESI = boot_params), the PVH entry follows it, and offset 0x200 (phys 0x100200) is the
 * 64-bit entry (RSI = boot_params).
 */

    .section .text.boot, "ax"
    .code32
    .globl linux32_entry
linux32_entry:
    cli
    mov $3, %edi
    jmp entry32_common

    .globl pvh_entry
pvh_entry:
    cli
    mov %ebx, %esi
    mov $2, %edi
    jmp entry32_common

entry32_common:
    mov %esi, boot_info_ptr
    mov %edi, boot_kind
    lgdt gdtr
    ljmp $0x08, $entry32_flat
entry32_flat:
    mov $0x18, %eax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $kstack_top, %esp
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0
    ljmp $0x10, $long_common

    .org 0x200
    .code64
    .globl entry64
entry64:
    cli
    mov %rsi, boot_info_ptr(%rip)
    movl $1, boot_kind(%rip)
    jmp long_common

/* Common 64-bit CPL0 setup: own GDT, page tables, IDT, TSS, SSE, then iretq to CPL3. */
long_common:
    lgdt gdtr(%rip)
    mov $kstack_top, %rsp
    push $0x10
    push $long_reload
    lretq
long_reload:
    mov $0x18, %eax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $pml4, %eax
    mov %rax, %cr3
    lidt idtr(%rip)
    mov $0x40, %eax
    ltr %ax
    /* SSE for the CPL3 Rust code: CR0.EM=0, CR0.TS=0, CR0.MP=1, CR4.OSFXSR|OSXMMEXCPT.
     * CR4.TSD=0 so that rdtsc works at CPL3 whatever the loader left there. */
    mov %cr0, %rax
    and $-13, %rax
    or $2, %rax
    mov %rax, %cr0
    mov %cr4, %rax
    and $-5, %rax
    or $0x600, %rax
    mov %rax, %cr4
    /* MSR_STAR: kernel CS 0x10 (DS 0x18), user CS32 0x23 (so user CS 0x33, SS 0x2b). */
    mov $0xC0000081, %ecx
    mov $0, %eax
    mov $0x00230010, %edx
    wrmsr
    /* iretq frame: SS, RSP, RFLAGS (IOPL=3, IF=0), CS, RIP. */
    push $0x2b
    push $user_stack_top
    push $0x3002
    push $0x33
    push $user_entry
    iretq

/* ---------------------------------------------------------------------------------------- */
    .section .data.boot, "aw"
    .balign 16
    .globl boot_kind, boot_info_ptr
boot_info_ptr:
    .quad 0
boot_kind:
    .long 0
    .long 0

    .balign 16
    .globl gdt, gdt_end
gdt:
    /* Linux-compatible layout: PVM takes the user selectors from MSR_STAR (set to match). */
    .quad 0
    .quad 0x00CF9A000000FFFF    /* 0x08 kernel code, 32-bit */
    .quad 0x00AF9A000000FFFF    /* 0x10 kernel code, 64-bit */
    .quad 0x00CF92000000FFFF    /* 0x18 kernel data */
    .quad 0x00CFFA000000FFFF    /* 0x20 user code, 32-bit (selector 0x23) */
    .quad 0x00CFF2000000FFFF    /* 0x28 user data (selector 0x2b) */
    .quad 0x00AFFA000000FFFF    /* 0x30 user code, 64-bit (selector 0x33) */
    .quad 0
    /* 0x40: 64-bit TSS descriptor; base split computed by the linker script. */
    .word 103
    .word tss_base_lo16
    .byte tss_base_b16
    .byte 0x89
    .byte 0x00
    .byte tss_base_b24
    .long 0
    .long 0
gdt_end:

    .balign 16
gdtr:
    .word gdt_end - gdt - 1
    .quad gdt

    .balign 16
    .globl tss
tss:
    .long 0
    .quad kstack_top            /* RSP0 */
    .quad 0, 0                  /* RSP1, RSP2 */
    .quad 0
    .quad 0, 0, 0, 0, 0, 0, 0   /* IST1..7 */
    .quad 0
    .word 0
    .word 104                   /* no I/O permission bitmap (IOPL=3 instead) */

/* IDT: every vector goes to its own 16-byte stub in .text.isr: exceptions (0-31) are
 * reported, external interrupts (32-255) are counted and acknowledged. All gates DPL 0. */
    .balign 16
    .globl idt, idtr
idt:
    .set vec, 0
    .rept 256
    .word isr_stubs_lo16 + vec * 16
    .word 0x10
    .word 0x8E00
    .word isr_stubs_hi16
    .long 0
    .long 0
    .set vec, vec + 1
    .endr
idt_end:
    .balign 16
idtr:
    .word idt_end - idt - 1
    .quad idt

/* Identity map of the first 5 GiB with 2 MiB pages, U/S set everywhere; the GiB below 4 GiB and
   the one above it uncached (device windows: PCI, IOAPIC, LAPIC; the 64-bit PCI window's start). */
    .section .data.pt, "aw"
    .balign 4096
    .globl pml4
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0007
    .quad pd + 0x1007
    .quad pd + 0x2007
    .quad pd + 0x3007
    .quad pd + 0x4007
    .fill 507, 8, 0
pd:
    .set pg, 0
    .rept 1536
    .quad (pg << 21) | 0x87
    .set pg, pg + 1
    .endr
    .rept 1024
    .quad (pg << 21) | 0x9F
    .set pg, pg + 1
    .endr

/* Stacks: not zeroed, not in the file. */
    .section .stack, "aw", @nobits
    .balign 16
    .space 16384
    .globl kstack_top
kstack_top:
    .space 262144
    .globl user_stack_top
user_stack_top:
    .space 32768
    .globl fault_stack_top
fault_stack_top:
    .space 1024
    .globl ap_stack_top
ap_stack_top:

/* Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18); mkimage.py disables it for probe.elf. */
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long pvh_entry

/* Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18); mkimage.py disables it for probe.elf. */
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long pvh_entry
