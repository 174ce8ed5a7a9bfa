/*
 * Interrupt stubs (CPL0). Each stub is 16 bytes at isr_stubs + 16 * vector.
 * Exceptions (0-31): the common handler records vector, error code, RIP and CR2 in the
 * fault block, then rewrites the iret frame so that iretq lands at CPL3 in
 * fault_user_entry (which calls the Rust reporter). A second exception (fault_count
 * already non-zero) halts the CPU for good. External interrupts (32-255) are counted in
 * irq_counts[vector] and acknowledged (irq_common).
 */
    .section .text.isr, "ax"
    .balign 16
    .globl isr_stubs
isr_stubs:

    .macro ISR_NOERR v
    .balign 16
    push $0
    push $\v
    jmp isr_common
    .endm

    .macro ISR_ERR v
    .balign 16
    push $\v
    jmp isr_common
    .endm

    ISR_NOERR 0
    ISR_NOERR 1
    ISR_NOERR 2
    ISR_NOERR 3
    ISR_NOERR 4
    ISR_NOERR 5
    ISR_NOERR 6
    ISR_NOERR 7
    ISR_ERR 8
    ISR_NOERR 9
    ISR_ERR 10
    ISR_ERR 11
    ISR_ERR 12
    .balign 16
    jmp gp_entry
    ISR_ERR 14
    ISR_NOERR 15
    ISR_NOERR 16
    ISR_ERR 17
    ISR_NOERR 18
    ISR_NOERR 19
    ISR_NOERR 20
    ISR_ERR 21
    ISR_NOERR 22
    ISR_NOERR 23
    ISR_NOERR 24
    ISR_NOERR 25
    ISR_NOERR 26
    ISR_NOERR 27
    ISR_NOERR 28
    ISR_ERR 29
    ISR_ERR 30
    ISR_NOERR 31
    /* Slots 32-255: external interrupts. Each stub pushes the address of its counter
     * irq_counts[vector] and jumps to irq_common. */
    .set irqv, 32
    .rept 224
    .balign 16
    push $(irq_counts + 8 * irqv)
    jmp irq_common
    .set irqv, irqv + 1
    .endr

/* Counts the interrupt (plain add; only the BSP takes interrupts), LAPIC EOI, return. */
    .balign 16
irq_common:
    /* Stack: counter address, rip, cs, rflags, rsp, ss. */
    push %rax
    mov 8(%rsp), %rax
    addq $1, (%rax)
    mov $0xfee000b0, %eax
    movl $0, (%rax)
    pop %rax
    add $8, %rsp
    iretq

/*
 * #GP: on PVM hosts user-mode port I/O faults even with IOPL=3, so a #GP from CPL3 on one
 * of the forms the probe uses (in/out with DX: EC, ED, EE, EF, 66 ED, 66 EF) is carried
 * out here at CPL0 and the instruction skipped; likewise cli (FA) and sti (FB) update IF in
 * the saved RFLAGS.
 *
 * MSR access for CPL3 (rdmsr 0F 32, wrmsr 0F 30, no prefixes; see msr.rs): always a #GP at
 * CPL3, so the instruction is carried out here with the CPL3 code's ECX (and EDX:EAX for
 * wrmsr), the result goes into the saved RDX/RAX (rdmsr), the instruction is skipped and
 * the saved RFLAGS.CF reports the outcome: CF=0 done, CF=1 the MSR access itself raised
 * #GP at CPL0 (MSR not offered, or value refused). The CPL3 wrapper clears CF first, so CF=1
 * can only come from here. That inner #GP is the only exception this handler may take at
 * CPL0: the CPU pushes a second frame below the first one on the same kernel stack (no IST,
 * no stack switch), and gp_entry sees CS.RPL=0. If the faulting RIP is exactly one of the
 * two protected instructions (gp_msr_rd_insn, gp_msr_wr_insn), it rewrites that frame's RIP
 * to the matching fixup label and returns there (iretq to CPL0); the fixup then finishes
 * the outer #GP with CF=1 (rdmsr: saved RAX/RDX zeroed; wrmsr: left as they were). Nothing
 * is held in registers across the protected instruction but RAX/RDX, which are saved in the
 * outer frame and reloaded from it, so the interrupted state needs no other repair. Any
 * other #GP at CPL0, and anything else from CPL3, is reported as exception 13.
 *
 * CPUID for CPL3 (hlt; cpuid = F4 0F A2, see io.rs): on AMD PVM hosts without CPUID faulting
 * a CPL3 cpuid is not intercepted and returns the host's values, so the probe never runs it
 * at CPL3. hlt always raises #GP at CPL3; when the three bytes at the faulting RIP are exactly
 * F4 0F A2, cpuid is executed here at CPL0 (intercepted by every hypervisor: the answer comes
 * from its CPUID table) with the caller's EAX (saved RAX) and ECX (still live). EAX/EDX go to
 * the saved RAX/RDX, EBX/ECX stay in the registers for iretq (the caller declares both), and
 * the three bytes are skipped. cpuid at CPL0 cannot fault.
 */
    .balign 16
gp_entry:
    /* Stack: error, rip, cs, rflags, rsp, ss. */
    push %rax
    push %rdx
    /* Stack: rdx, rax, error, rip, cs, rflags, ... */
    mov 32(%rsp), %rax
    and $3, %eax
    cmp $3, %eax
    jne gp_kernel
    mov 24(%rsp), %rax
    mov (%rax), %edx
    and $0xffff, %edx
    mov %edx, %eax
    and $0xff, %eax
    cmp $0xee, %eax
    je gp_out8
    cmp $0xec, %eax
    je gp_in8
    cmp $0xed, %eax
    je gp_in32
    cmp $0xef, %eax
    je gp_out32
    cmp $0xfb, %eax
    je gp_sti
    cmp $0xfa, %eax
    je gp_cli
    cmp $0xef66, %edx
    je gp_out16
    cmp $0xed66, %edx
    je gp_in16
    /* Checked last: on PVM hosts every instruction here is emulated, and port I/O is the
     * hot path. */
    cmp $0x320f, %edx
    je gp_rdmsr
    cmp $0x300f, %edx
    je gp_wrmsr
    cmp $0xf4, %eax
    je gp_hlt
gp_other:
    pop %rdx
    pop %rax
    push $13
    jmp isr_common
/* #GP at CPL0: redirect a faulting protected MSR instruction to its fixup (see above). */
gp_kernel:
    mov 24(%rsp), %rax
    mov $gp_msr_rd_fixup, %edx
    cmp $gp_msr_rd_insn, %rax
    je gp_kernel_fixup
    mov $gp_msr_wr_fixup, %edx
    cmp $gp_msr_wr_insn, %rax
    jne gp_other
gp_kernel_fixup:
    mov %rdx, 24(%rsp)
    pop %rdx
    pop %rax
    add $8, %rsp
    iretq
/* rdmsr for CPL3: ECX is the caller's; EDX:EAX go to the saved RDX/RAX. */
gp_rdmsr:
gp_msr_rd_insn:
    rdmsr
    mov %rax, 8(%rsp)
    mov %rdx, (%rsp)
    jmp gp_msr_ok
/* wrmsr for CPL3: ECX is the caller's; EDX:EAX are reloaded from the saved RDX/RAX. */
gp_wrmsr:
    mov 8(%rsp), %rax
    mov (%rsp), %rdx
gp_msr_wr_insn:
    wrmsr
gp_msr_ok:
    mov 40(%rsp), %rax
    and $-2, %rax
    mov %rax, 40(%rsp)
    jmp gp_done2
/* hlt: only the CPUID sequence F4 0F A2 is carried out; any other hlt is reported. */
gp_hlt:
    mov 24(%rsp), %rax
    mov (%rax), %edx
    and $0xffffff, %edx
    cmp $0xa20ff4, %edx
    jne gp_other
/* cpuid for CPL3: EAX from the saved RAX, ECX the caller's; EBX/ECX returned in place. */
gp_cpuid:
    mov 8(%rsp), %rax
    cpuid
    mov %rax, 8(%rsp)
    mov %rdx, (%rsp)
    mov 24(%rsp), %rax
    add $3, %rax
    mov %rax, 24(%rsp)
    jmp gp_return
/* Reached by iretq from the inner #GP, on the outer frame's stack. */
gp_msr_rd_fixup:
    movq $0, 8(%rsp)
    movq $0, (%rsp)
gp_msr_wr_fixup:
    mov 40(%rsp), %rax
    or $1, %rax
    mov %rax, 40(%rsp)
    jmp gp_done2
gp_out8:
    mov 8(%rsp), %rax
    mov (%rsp), %rdx
    out %al, %dx
    jmp gp_done1
gp_out32:
    mov 8(%rsp), %rax
    mov (%rsp), %rdx
    out %eax, %dx
    jmp gp_done1
gp_in8:
    mov 8(%rsp), %rax
    mov (%rsp), %rdx
    in %dx, %al
    mov %rax, 8(%rsp)
    jmp gp_done1
gp_in32:
    mov (%rsp), %rdx
    in %dx, %eax
    mov %rax, 8(%rsp)
    jmp gp_done1
gp_out16:
    mov 8(%rsp), %rax
    mov (%rsp), %rdx
    out %ax, %dx
    jmp gp_done2
gp_in16:
    mov 8(%rsp), %rax
    mov (%rsp), %rdx
    in %dx, %ax
    mov %rax, 8(%rsp)
    jmp gp_done2
gp_sti:
    mov 40(%rsp), %rax
    or $0x200, %rax
    mov %rax, 40(%rsp)
    jmp gp_done1
gp_cli:
    mov 40(%rsp), %rax
    and $-0x201, %rax
    mov %rax, 40(%rsp)
    jmp gp_done1
gp_done1:
    mov 24(%rsp), %rax
    add $1, %rax
    mov %rax, 24(%rsp)
    jmp gp_return
gp_done2:
    mov 24(%rsp), %rax
    add $2, %rax
    mov %rax, 24(%rsp)
gp_return:
    pop %rdx
    pop %rax
    add $8, %rsp
    iretq

    .balign 16
isr_common:
    /* Stack: vector, error, rip, cs, rflags, rsp, ss. */
    mov fault_count(%rip), %rax
    cmp $0, %rax
    jne halt_forever
    movq $1, fault_count(%rip)
    mov (%rsp), %rax
    mov %rax, fault_vector(%rip)
    mov 8(%rsp), %rax
    mov %rax, fault_error(%rip)
    mov 16(%rsp), %rax
    mov %rax, fault_rip(%rip)
    mov 24(%rsp), %rax
    mov %rax, fault_cs(%rip)
    mov %cr2, %rax
    mov %rax, fault_cr2(%rip)
    movq $fault_user_entry, 16(%rsp)
    movq $0x33, 24(%rsp)
    movq $0x3002, 32(%rsp)
    movq $fault_stack_top, 40(%rsp)
    movq $0x2b, 48(%rsp)
    add $16, %rsp
    iretq

    .globl halt_forever
halt_forever:
    cli
    hlt
    jmp halt_forever

    .section .data.boot, "aw"
    .balign 16
    .globl fault_count, fault_vector, fault_error, fault_rip, fault_cs, fault_cr2
fault_count:
    .quad 0
fault_vector:
    .quad 0
fault_error:
    .quad 0
fault_rip:
    .quad 0
fault_cs:
    .quad 0
fault_cr2:
    .quad 0

/* Interrupt counters, indexed by vector (read by the CPL3 code, see irq.rs). */
    .section .bss.irq, "aw", @nobits
    .balign 8
    .globl irq_counts
irq_counts:
    .space 256 * 8
