//! The only assembly of the project: CPUID, WRMSR and the hypercall instruction sequences.
//!
//! # Register conventions (Xen's public `arch-x86/xen-x86_64.h` / `xen-x86_32.h`, and Linux's
//! `hypercall.h`, which is the reference implementation)
//!
//! | width  | number | arg1 | arg2 | arg3 | arg4 | arg5 | result |
//! |--------|--------|------|------|------|------|------|--------|
//! | x86_64 | rax    | rdi  | rsi  | rdx  | r10  | r8   | rax    |
//! | i386   | eax    | ebx  | ecx  | edx  | esi  | edi  | eax    |
//!
//! Note r8, not r9, for the fifth x86_64 argument (a published Rust crate gets this wrong).
//! Xen may modify the argument registers (hypercall continuations rewrite them), so all of them
//! are declared clobbered.
//!
//! Two ways to trap:
//! * through the **hypercall page** Xen writes into a guest page on `wrmsr`: entry `op` is at
//!   byte `32 * op` and loads the number into eax itself (`mov $op, %eax; vmcall; ret` or the
//!   AMD equivalent), so it works on every vendor;
//! * **directly** with `vmcall` (Intel VMX) or `vmmcall` (AMD SVM), number in eax/rax. Using
//!   the wrong one for the vendor raises #UD, hence the vendor check in `platform`.
//!
//! On i386 LLVM reserves `esi` (and, in PIC code, `ebx`) so neither can be an asm operand. The
//! i386 sequences therefore get a pointer to a block `[op, a1, a2, a3, a4, a5, entry]` in eax,
//! save ebx/esi on the stack, load every register from the block, trap, and restore.

use core::arch::asm;

use super::cpuid::Cpuid;
use super::marshal::RawCall;

// The i386 sequences are text macros rather than inline literals so that the host test
// (`tests::i386_sequences_follow_the_abi_table`) can assemble the very same instructions with
// `gcc -m32` and run them against a recording stub: the host suite is x86_64-only, and this
// is the one place where a wrong register would otherwise show only on a real i386 Xen guest.
// On entry eax points at the block `[op, a1, a2, a3, a4, a5, entry]`; ebx and esi are saved on
// the stack and restored after the trap; the result is in eax.

/// Saves ebx/esi and loads the five arguments from the block into ebx, ecx, edx, esi, edi.
#[cfg(any(target_arch = "x86", test))]
macro_rules! i386_load_args {
    () => {
        "push ebx\n\
         push esi\n\
         mov ebx, [eax + 4]\n\
         mov ecx, [eax + 8]\n\
         mov edx, [eax + 12]\n\
         mov esi, [eax + 16]\n\
         mov edi, [eax + 20]\n"
    };
}

/// Restores what `i386_load_args!` saved.
#[cfg(any(target_arch = "x86", test))]
macro_rules! i386_restore {
    () => {
        "pop esi\n\
         pop ebx"
    };
}

/// The hypercall-page path: the entry loads the op into eax itself.
#[cfg(any(target_arch = "x86", test))]
macro_rules! i386_page_call {
    () => {
        concat!(
            i386_load_args!(),
            "call dword ptr [eax + 24]\n",
            i386_restore!()
        )
    };
}

/// The direct path: op into eax (overwriting the block pointer, no longer needed), then trap.
#[cfg(any(target_arch = "x86", test))]
macro_rules! i386_direct_call {
    ($trap:literal) => {
        concat!(
            i386_load_args!(),
            "mov eax, [eax]\n",
            $trap,
            "\n",
            i386_restore!()
        )
    };
}

/// Executes CPUID. Unprivileged and side-effect free.
pub(super) fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    #[cfg(target_arch = "x86")]
    use core::arch::x86::__cpuid_count;
    #[cfg(target_arch = "x86_64")]
    use core::arch::x86_64::__cpuid_count;
    #[allow(
        unused_unsafe,
        reason = "`__cpuid_count` is safe on newer toolchains only"
    )]
    // SAFETY: CPUID exists on every CPU our targets support (i686 and later, x86_64) and has no
    // effect besides writing the four result registers.
    let r = unsafe { __cpuid_count(leaf, subleaf) };
    Cpuid {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// Writes a model-specific register.
///
/// # Safety
/// Ring 0 only, and `msr` must be an MSR whose write with `value` is what the caller wants
/// (here: Xen's hypercall-page MSR, which makes Xen overwrite the page at `value`).
pub(super) unsafe fn wrmsr(msr: u32, value: u64) {
    // CAST: split into the EDX:EAX halves WRMSR takes.
    #[expect(clippy::cast_possible_truncation, reason = "low and high halves")]
    let (lo, hi) = (value as u32, (value >> 32) as u32);
    // SAFETY: the caller guarantees ring 0 and a meaningful MSR write; WRMSR touches no memory
    // and no stack.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") lo, in("edx") hi, options(nostack, preserves_flags))
    };
}

/// Traps through entry `call.op` of a hypercall page.
///
/// # Safety
/// `page` must point to a hypercall page written by Xen (or a stub with the same contract:
/// entry `op` at `32 * op`, arguments in the registers above, result in rax/eax, nothing else
/// clobbered), mapped executable, holding at least `call.op + 1` entries; and the pointer
/// arguments of `call` must be valid as Xen requires for that hypercall (see `marshal`).
pub(super) unsafe fn call_via_page(page: *const u8, call: &RawCall) -> isize {
    let entry = page.wrapping_add(call.op as usize * 32);
    let ret: isize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller guarantees `entry` is a hypercall entry and the arguments are valid.
    // Stack use: `call` pushes a return address, allowed because `nostack` is not given (the
    // compiler keeps the stack aligned and no red zone live across the asm).
    unsafe {
        asm!(
            "call {entry}",
            entry = in(reg) entry,
            inout("rdi") call.args[0] => _,
            inout("rsi") call.args[1] => _,
            inout("rdx") call.args[2] => _,
            inout("r10") call.args[3] => _,
            inout("r8") call.args[4] => _,
            lateout("rax") ret,
            out("rcx") _,
            out("r11") _,
        );
    }
    #[cfg(target_arch = "x86")]
    {
        let block = [
            call.op as usize,
            call.args[0],
            call.args[1],
            call.args[2],
            call.args[3],
            call.args[4],
            entry.expose_provenance(),
        ];
        // SAFETY: as above; ebx and esi (reserved by LLVM) are saved and restored around the
        // trap, the other argument registers are declared clobbered, and eax points at `block`
        // which lives across the asm.
        unsafe {
            asm!(
                i386_page_call!(),
                inout("eax") block.as_ptr() => ret,
                out("ecx") _,
                out("edx") _,
                out("edi") _,
            );
        }
    }
    ret
}

/// Traps directly with `vmcall` (`amd == false`) or `vmmcall` (`amd == true`).
///
/// # Safety
/// Must run in an HVM or PVH guest of Xen on a CPU of the matching vendor (otherwise #UD), with
/// `call`'s pointer arguments valid as Xen requires.
pub(super) unsafe fn call_direct(amd: bool, call: &RawCall) -> isize {
    let ret: isize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: guaranteed by the caller; the instruction touches no guest stack.
    unsafe {
        if amd {
            asm!(
                "vmmcall",
                inout("rax") call.op as usize => ret,
                inout("rdi") call.args[0] => _,
                inout("rsi") call.args[1] => _,
                inout("rdx") call.args[2] => _,
                inout("r10") call.args[3] => _,
                inout("r8") call.args[4] => _,
                options(nostack),
            );
        } else {
            asm!(
                "vmcall",
                inout("rax") call.op as usize => ret,
                inout("rdi") call.args[0] => _,
                inout("rsi") call.args[1] => _,
                inout("rdx") call.args[2] => _,
                inout("r10") call.args[3] => _,
                inout("r8") call.args[4] => _,
                options(nostack),
            );
        }
    }
    #[cfg(target_arch = "x86")]
    {
        let block = [
            call.op as usize,
            call.args[0],
            call.args[1],
            call.args[2],
            call.args[3],
            call.args[4],
            0,
        ];
        // SAFETY: guaranteed by the caller; ebx/esi saved and restored as in `call_via_page`.
        unsafe {
            if amd {
                asm!(
                    i386_direct_call!("vmmcall"),
                    inout("eax") block.as_ptr() => ret,
                    out("ecx") _,
                    out("edx") _,
                    out("edi") _,
                );
            } else {
                asm!(
                    i386_direct_call!("vmcall"),
                    inout("eax") block.as_ptr() => ret,
                    out("ecx") _,
                    out("edx") _,
                    out("edi") _,
                );
            }
        }
    }
    ret
}

/// A stand-in hypercall page for host tests: 128 entries of `movl $op, %eax; jmp common`, where
/// `common` records rax, rdi, rsi, rdx, r10, r8 and returns r8. Calling through it runs the real
/// `call_via_page` asm, so the tests check the actual register assignment, not a table.
#[cfg(all(test, target_arch = "x86_64"))]
pub(super) mod test_page {
    use core::sync::atomic::{AtomicU64, Ordering};

    /// rax (the op the entry loaded), rdi, rsi, rdx, r10, r8 as the stub saw them.
    pub static RECORD: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

    core::arch::global_asm!(
        ".pushsection .text.xen_kmod_test_hcpage,\"ax\",@progbits",
        ".balign 4096",
        ".globl xen_kmod_test_hcpage",
        "xen_kmod_test_hcpage:",
        ".set xen_kmod_test_hcnum, 0",
        ".rept 128",
        ".balign 32",
        "movl $xen_kmod_test_hcnum, %eax",
        "jmp 2f",
        ".set xen_kmod_test_hcnum, xen_kmod_test_hcnum + 1",
        ".endr",
        ".balign 32",
        "2:",
        "movq %rax, {rec}(%rip)",
        "movq %rdi, {rec}+8(%rip)",
        "movq %rsi, {rec}+16(%rip)",
        "movq %rdx, {rec}+24(%rip)",
        "movq %r10, {rec}+32(%rip)",
        "movq %r8, {rec}+40(%rip)",
        "movq %r8, %rax",
        "ret",
        ".popsection",
        rec = sym RECORD,
        options(att_syntax),
    );

    unsafe extern "C" {
        static xen_kmod_test_hcpage: u8;
    }

    /// The stub page.
    pub fn page() -> *const u8 {
        // Taking the address of an extern static is safe; it is never read from Rust.
        core::ptr::addr_of!(xen_kmod_test_hcpage)
    }

    /// The registers recorded by the last call.
    pub fn recorded() -> [u64; 6] {
        core::array::from_fn(|i| RECORD[i].load(Ordering::SeqCst))
    }
}

#[cfg(test)]
#[cfg(target_arch = "x86_64")]
mod tests {
    extern crate std;

    use super::*;
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    #[test]
    fn page_entry_and_registers() {
        let _g = super::super::TEST_PAGE_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let page = test_page::page();
        assert_eq!(page.addr() % 4096, 0);
        for op in [0u32, 1, 17, 32, 127] {
            let args = [
                0x1111,
                0x2222_0000_0000,
                0x3333,
                0x4444,
                (-38isize) as usize,
            ];
            // SAFETY: the stub page honours the hypercall page contract and dereferences nothing.
            let r = unsafe { call_via_page(page, &RawCall { op, args }) };
            assert_eq!(r, -38, "result comes back in rax");
            let rec = test_page::recorded();
            assert_eq!(rec[0], u64::from(op), "entry 32*op loads op into eax");
            assert_eq!(
                &rec[1..],
                &[0x1111, 0x2222_0000_0000, 0x3333, 0x4444, (-38i64) as u64]
            );
        }
    }

    #[test]
    fn cpuid_runs() {
        // Leaf 0 always exists; the max basic leaf is at least 1 on any x86_64 CPU.
        assert!(cpuid(0, 0).eax >= 1);
    }

    /// A C string literal holding `text` (which has no quotes or backslashes) line by line.
    fn c_lines(text: &str) -> String {
        assert!(!text.contains(['"', '\\']), "{text}");
        text.lines()
            .map(|l| format!("\"{}\\n\"\n", l.trim()))
            .collect()
    }

    /// The C program: a 128-entry stub page (entry `op` = `movl $op, %eax; jmp common`, as
    /// Xen's page does), a `common` that records eax, ebx, ecx, edx, esi, edi and returns edi,
    /// and one function per sequence that runs it exactly as `raw.rs` has it, with sentinels in
    /// ebx and esi to catch a sequence that fails to restore them. Prints one line per call:
    /// `<path> <op> eax ebx ecx edx esi edi -> ret <kept|CLOBBERED>`.
    fn i386_program(calls: &[(u32, [u32; 5])]) -> String {
        let page = c_lines(i386_page_call!());
        let direct_vmcall = c_lines(&i386_direct_call!("vmcall").replace("vmcall", "call common"));
        let direct_vmmcall =
            c_lines(&i386_direct_call!("vmmcall").replace("vmmcall", "call common"));
        let mut runs = String::new();
        for (op, a) in calls {
            runs.push_str(&format!(
                "    run({op}u, {}u, {}u, {}u, {}u, {}u);\n",
                a[0], a[1], a[2], a[3], a[4]
            ));
        }
        format!(
            r#"#include <stdint.h>
#include <stdio.h>
uint32_t rec[6];
extern char stub_page[];
__asm__(".text\n.balign 4096\nstub_page:\n.set hcn, 0\n.rept 128\n.balign 32\n"
        "movl $hcn, %eax\njmp common\n.set hcn, hcn + 1\n.endr\n.balign 32\ncommon:\n"
        "movl %eax, rec\nmovl %ebx, rec+4\nmovl %ecx, rec+8\nmovl %edx, rec+12\n"
        "movl %esi, rec+16\nmovl %edi, rec+20\nmovl %edi, %eax\nret\n");
#define SEQ(name, text) \
static int32_t name(uint32_t *block, int *kept) {{ \
    uint32_t p = (uint32_t)block, b = 0xb0b0b0b0u, s = 0x5e5e5e5eu; \
    __asm__ volatile(".intel_syntax noprefix\n" text ".att_syntax prefix\n" \
                     : "+a"(p), "+b"(b), "+S"(s) : : "ecx", "edx", "edi", "memory", "cc"); \
    *kept = b == 0xb0b0b0b0u && s == 0x5e5e5e5eu; \
    return (int32_t)p; \
}}
SEQ(page_call,
{page})
SEQ(direct_vmcall,
{direct_vmcall})
SEQ(direct_vmmcall,
{direct_vmmcall})
static void show(const char *path, uint32_t op, int32_t ret, int kept) {{
    printf("%s %u %u %u %u %u %u %u -> %d %s\n", path, op, rec[0], rec[1], rec[2], rec[3],
           rec[4], rec[5], ret, kept ? "kept" : "CLOBBERED");
}}
static void run(uint32_t op, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4, uint32_t a5) {{
    uint32_t block[7] = {{op, a1, a2, a3, a4, a5, (uint32_t)(stub_page + 32 * op)}};
    int kept;
    int32_t ret = page_call(block, &kept);
    show("page", op, ret, kept);
    ret = direct_vmcall(block, &kept);
    show("vmcall", op, ret, kept);
    ret = direct_vmmcall(block, &kept);
    show("vmmcall", op, ret, kept);
}}
int main(void) {{
{runs}    return 0;
}}
"#
        )
    }

    /// The i386 column of the register table in this module's docs, checked by running the
    /// sequences `call_via_page` and `call_direct` assemble for i386 in a 32-bit process: op
    /// in eax, arguments in ebx, ecx, edx, esi, edi, result from eax, ebx and esi preserved.
    /// Needs `gcc -m32` (gcc-multilib), as the ABI layout tests do; fails, never skips,
    /// without it.
    #[test]
    fn i386_sequences_follow_the_abi_table() {
        let calls: Vec<(u32, [u32; 5])> = [0u32, 1, 17, 32, 127]
            .iter()
            .map(|&op| {
                let base = 0x1000_0000 * (op % 7 + 1);
                // a5 comes back as the result: -38 (ENOSYS) checks the sign on the way back.
                (
                    op,
                    [
                        base + 1,
                        base + 2,
                        base + 3,
                        base + 4,
                        0u32.wrapping_sub(38),
                    ],
                )
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("xen-kmod-i386-abi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let source = dir.join("abi.c");
        let exe = dir.join("abi");
        std::fs::write(&source, i386_program(&calls)).expect("write the C program");
        let built = std::process::Command::new("gcc")
            .args(["-m32", "-O1", "-fno-pic", "-no-pie", "-o"])
            .arg(&exe)
            .arg(&source)
            .output()
            .expect("run gcc (the i386 ABI test needs gcc and gcc-multilib)");
        assert!(
            built.status.success(),
            "gcc -m32 failed (install gcc-multilib):\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let run = std::process::Command::new(&exe)
            .output()
            .expect("run the i386 program");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(run.status.success(), "{run:?}");
        let out = String::from_utf8(run.stdout).expect("ASCII");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), calls.len() * 3, "{out}");
        let mut at = lines.iter();
        for (op, a) in &calls {
            for path in ["page", "vmcall", "vmmcall"] {
                // The documented table: eax = op; ebx, ecx, edx, esi, edi = arguments 1 to 5.
                let want = format!(
                    "{path} {op} {op} {} {} {} {} {} -> -38 kept",
                    a[0], a[1], a[2], a[3], a[4]
                );
                assert_eq!(at.next().copied(), Some(want.as_str()), "{out}");
            }
        }
    }
}
