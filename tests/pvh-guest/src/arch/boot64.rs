//! x86_64 start of day: from Xen's 32-bit PVH entry to long mode.
//!
//! Xen enters `pvh_start32` in 32-bit protected mode, paging off, flat CS/DS/ES/SS, interrupts
//! off, with `%ebx` = physical address of `struct hvm_start_info` (docs/misc/pvh.pandoc). The
//! GDTR may be stale, so the first thing loaded is our own GDT. Then:
//! 1. zero `.bss` (page tables and the stack live there; Xen zeroes it too, but the entry must
//!    not depend on how the image was loaded),
//! 2. identity-map the first 4 GiB with 2 MiB pages (the image, the heap, Xen's special pages
//!    just below 0xff000000 such as the xenstore and console rings, and the local APIC),
//! 3. PAE + EFER.LME + CR0.PG, far jump to 64-bit code, call `pvh_rust_entry(start_info)`.
//!
//! The IDT stubs for exceptions, the event-channel upcall vector and the spurious vector are
//! here too: they are the only other code that runs on a CPU-built frame.

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4                     /* namesz: "Xen\0" */
    .long 4                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .long pvh_start32
    .p2align 2

    .section .text.boot, "ax", @progbits
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %esi                     /* keep the start_info address */

    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    lgdt pvh_gdt_desc
    ljmp $0x18, $1f                     /* our flat 32-bit code segment */
1:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    movl $pvh_boot_stack_top, %esp

    /* PML4[0] -> PDPT */
    movl $pvh_pdpt, %eax
    orl $3, %eax
    movl %eax, pvh_pml4
    /* PDPT[0..4] -> PD[0..4] */
    movl $pvh_pd, %eax
    orl $3, %eax
    movl $pvh_pdpt, %edi
    movl $4, %ecx
2:
    movl %eax, (%edi)
    addl $0x1000, %eax
    addl $8, %edi
    loop 2b
    /* 2048 PD entries: 2 MiB pages, present + writable + PS */
    movl $pvh_pd, %edi
    movl $0x83, %eax
    movl $2048, %ecx
3:
    movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 3b

    movl %cr4, %eax
    orl $0x20, %eax                     /* PAE */
    movl %eax, %cr4
    movl $pvh_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx              /* EFER */
    rdmsr
    orl $0x100, %eax                    /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax               /* PG | PE */
    movl %eax, %cr0
    ljmp $0x08, $4f

    .code64
4:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    movl $pvh_boot_stack_top, %esp      /* zero-extends into %rsp */
    movl %esi, %edi                     /* arg 1: start_info physical address */
    call pvh_rust_entry
5:
    cli
    hlt
    jmp 5b

    /* ---- IDT stubs ---- */
    .section .text, "ax", @progbits
    .macro pvh_exc_noerr n
pvh_exc_\n:
    pushq $0
    pushq $\n
    jmp pvh_exc_common
    .endm
    .macro pvh_exc_err n
pvh_exc_\n:
    pushq $\n
    jmp pvh_exc_common
    .endm

    pvh_exc_noerr 0
    pvh_exc_noerr 1
    pvh_exc_noerr 2
    pvh_exc_noerr 3
    pvh_exc_noerr 4
    pvh_exc_noerr 5
    pvh_exc_noerr 6
    pvh_exc_noerr 7
    pvh_exc_err 8
    pvh_exc_noerr 9
    pvh_exc_err 10
    pvh_exc_err 11
    pvh_exc_err 12
    pvh_exc_err 13
    pvh_exc_err 14
    pvh_exc_noerr 15
    pvh_exc_noerr 16
    pvh_exc_err 17
    pvh_exc_noerr 18
    pvh_exc_noerr 19
    pvh_exc_noerr 20
    pvh_exc_err 21
    pvh_exc_noerr 22
    pvh_exc_noerr 23
    pvh_exc_noerr 24
    pvh_exc_noerr 25
    pvh_exc_noerr 26
    pvh_exc_noerr 27
    pvh_exc_noerr 28
    pvh_exc_err 29
    pvh_exc_err 30
    pvh_exc_noerr 31

pvh_exc_common:
    movq %rsp, %rdi                     /* -> [vector, error, rip, cs, rflags] */
    andq $-16, %rsp
    call pvh_exception                  /* never returns */
    ud2

    .globl pvh_upcall_stub
pvh_upcall_stub:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11                          /* 5 + 9 words pushed: %rsp is 16-aligned here */
    cld
    call pvh_upcall_entry
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    iretq

    .globl pvh_spurious_stub
pvh_spurious_stub:
    iretq

    .section .rodata, "a", @progbits
    .p2align 3
    .globl pvh_exc_table
pvh_exc_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad pvh_exc_\n
    .endr

    .p2align 3
pvh_gdt:
    .quad 0
    .quad 0x00af9b000000ffff            /* 0x08: 64-bit code */
    .quad 0x00cf93000000ffff            /* 0x10: flat data */
    .quad 0x00cf9b000000ffff            /* 0x18: flat 32-bit code */
pvh_gdt_end:
    .p2align 3
pvh_gdt_desc:
    .word pvh_gdt_end - pvh_gdt - 1
    .quad pvh_gdt

    .section .bss, "aw", @nobits
    .p2align 12
pvh_pml4:
    .skip 4096
pvh_pdpt:
    .skip 4096
pvh_pd:
    .skip 4 * 4096
pvh_boot_stack:
    .skip 128 * 1024
pvh_boot_stack_top:
"#,
    options(att_syntax)
);

/// Kernel code segment selector (the IDT gates use it).
pub const CODE_SELECTOR: u16 = 0x08;
