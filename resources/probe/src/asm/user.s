/*
 * CPL3 glue: the first user-mode code (zeroes .bss, calls the Rust main), the fault-report
 * entry the exception handler returns to, and the mem* functions core needs. Runs natively
 * at CPL3, so string instructions are fine here.
 */
    .section .text.user, "ax"
    .code64
    .globl user_entry
user_entry:
    cld
    mov $__bss_start, %rdi
    mov $__bss_end, %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    rep stosb
    mov $user_stack_top, %rsp
    call probe_main
1:  jmp 1b

    .globl fault_user_entry
fault_user_entry:
    cld
    mov $fault_stack_top, %rsp
    call probe_fault
2:  jmp 2b

    .globl memcpy
memcpy:
    mov %rdi, %rax
    mov %rdx, %rcx
    rep movsb
    ret

    .globl memset
memset:
    mov %rdi, %r8
    mov %esi, %eax
    mov %rdx, %rcx
    rep stosb
    mov %r8, %rax
    ret

    .globl memmove
memmove:
    mov %rdi, %rax
    mov %rdx, %rcx
    cmp %rsi, %rdi
    jbe 3f
    lea (%rsi,%rdx), %r8
    cmp %r8, %rdi
    jae 3f
    lea -1(%rsi,%rdx), %rsi
    lea -1(%rdi,%rdx), %rdi
    std
    rep movsb
    cld
    ret
3:  rep movsb
    ret

    .globl memcmp, bcmp
memcmp:
bcmp:
    xor %eax, %eax
    test %rdx, %rdx
    jz 5f
4:  movzbl (%rdi), %eax
    movzbl (%rsi), %ecx
    sub %ecx, %eax
    jnz 5f
    inc %rdi
    inc %rsi
    dec %rdx
    jnz 4b
5:  ret
