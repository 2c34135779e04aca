//! i686 start of day: stay in Xen's 32-bit protected mode, paging off.
//!
//! Xen enters `pvh_start32` in 32-bit protected mode, paging off, flat segments, interrupts
//! off, with `%ebx` = physical address of `struct hvm_start_info` (docs/misc/pvh.pandoc). We
//! load our own GDT (the GDTR Xen leaves may not be usable), reload flat segments, zero `.bss`,
//! switch to our stack and call `pvh_rust_entry(start_info)` (cdecl). With paging off, every
//! physical address below 4 GiB is directly addressable: the rings and the local APIC too.
//!
//! The IDT stubs for exceptions, the event-channel upcall vector and the spurious vector are
//! here too.

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
    ljmp $0x08, $1f
1:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    movl $pvh_boot_stack_top, %esp
    pushl %esi                          /* arg 1: start_info physical address */
    call pvh_rust_entry
2:
    cli
    hlt
    jmp 2b

    /* ---- IDT stubs ---- */
    .section .text, "ax", @progbits
    .macro pvh_exc_noerr n
pvh_exc_\n:
    pushl $0
    pushl $\n
    jmp pvh_exc_common
    .endm
    .macro pvh_exc_err n
pvh_exc_\n:
    pushl $\n
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
    movl %esp, %eax                     /* -> [vector, error, eip, cs, eflags] */
    andl $-16, %esp
    subl $12, %esp
    pushl %eax
    call pvh_exception                  /* never returns */
    ud2

    .globl pvh_upcall_stub
pvh_upcall_stub:
    pushal
    cld
    call pvh_upcall_entry
    popal
    iret

    .globl pvh_spurious_stub
pvh_spurious_stub:
    iret

    .section .rodata, "a", @progbits
    .p2align 2
    .globl pvh_exc_table
pvh_exc_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .long pvh_exc_\n
    .endr

    .p2align 3
pvh_gdt:
    .quad 0
    .quad 0x00cf9b000000ffff            /* 0x08: flat 32-bit code */
    .quad 0x00cf93000000ffff            /* 0x10: flat data */
pvh_gdt_end:
    .p2align 2
pvh_gdt_desc:
    .word pvh_gdt_end - pvh_gdt - 1
    .long pvh_gdt

    .section .bss, "aw", @nobits
    .p2align 12
pvh_boot_stack:
    .skip 128 * 1024
pvh_boot_stack_top:
"#,
    options(att_syntax)
);

/// Kernel code segment selector (the IDT gates use it).
pub const CODE_SELECTOR: u16 = 0x08;
