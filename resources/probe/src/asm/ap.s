/*
 * AP start-up. The 16-bit part (ap_tramp_start..ap_tramp_end) is position independent: the
 * BSP copies it to a free page below 1 MiB and sends INIT-SIPI-SIPI with that page as the
 * vector. It loads the kernel GDT, enters protected mode and far-jumps to ap_entry32 in the
 * kernel image, which enables PAE + long mode with the kernel page tables. In 64-bit mode the
 * AP records its APIC ID (plain stores) and halts forever. All CPL0.
 */
    .section .text.ap, "ax"
    .code16
    .globl ap_tramp_start, ap_tramp_end
ap_tramp_start:
    cli
    mov %cs, %ax
    mov %ax, %ds
    lgdtl ap_gdtr - ap_tramp_start
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $ap_entry32
    .balign 8
ap_gdtr:
    .word gdt_end - gdt - 1
    .long gdt
ap_tramp_end:

    .code32
ap_entry32:
    mov $0x18, %eax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
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
    ljmp $0x10, $ap_entry64

    .code64
ap_entry64:
    mov $0x18, %eax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $ap_stack_top, %rsp
    lidt idtr(%rip)
    mov $1, %eax
    mov $0, %ecx
    cpuid
    shr $24, %ebx
    mov %ebx, ap_last_id(%rip)
    mov $ap_slots, %rax
    add %rbx, %rax
    movb $1, (%rax)
ap_halt:
    cli
    hlt
    jmp ap_halt

    .section .data.boot, "aw"
    .balign 16
    .globl ap_slots, ap_last_id
ap_last_id:
    .long 0xFFFFFFFF
    .long 0
ap_slots:
    .fill 256, 1, 0
