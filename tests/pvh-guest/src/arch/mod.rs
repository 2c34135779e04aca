//! The platform glue: everything `unsafe` in the guest lives in this module.
//!
//! What it provides to the (safe) rest of the guest:
//! * the start of day (`boot64`/`boot32`) and [`StartInfo`], a validated copy of what Xen
//!   passed in `hvm_start_info`;
//! * the debug port (0xE9), `rdtsc`, interrupt enable/halt, the local APIC;
//! * the IDT: exception stubs that report and crash the domain, and the event-channel upcall
//!   vector whose handler the guest registers;
//! * the hypercall page (a page of our image handed to Xen with the hypercall MSR);
//! * turning a guest frame number Xen handed us into a [`SharedMem`] view (identity mapping on
//!   x86_64, paging off on i686: physical address = virtual address below 4 GiB);
//! * the heap behind `alloc` (the xenstore client allocates).
#![allow(
    unsafe_code,
    reason = "the one module of the guest that may use unsafe"
)]

#[cfg(target_arch = "x86")]
mod boot32;
#[cfg(target_arch = "x86_64")]
mod boot64;
mod heap;

#[cfg(target_arch = "x86")]
use boot32::CODE_SELECTOR;
#[cfg(target_arch = "x86_64")]
use boot64::CODE_SELECTOR;

use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use xen_kmod::arch::cpuid::XenCpuid;
use xen_kmod::arch::{PlatformError, XenPlatform};
use xen_kmod::HypervisorExt;
use xen_shmem::SharedMem;

/// Name of the architecture, as the harness spells it.
#[cfg(target_arch = "x86_64")]
pub const ARCH: &str = "x86_64";
/// Name of the architecture, as the harness spells it.
#[cfg(target_arch = "x86")]
pub const ARCH: &str = "i686";

/// The first 4 GiB are addressable (identity map on x86_64, no paging on i686).
const ADDRESSABLE_END: u64 = 1 << 32;
/// Page size.
pub const PAGE_SIZE: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Port I/O, TSC, interrupts.

/// Writes bytes to Xen's debug port 0xE9 (shown as `(dN) ...` on Xen's console with
/// `guest_loglvl=all`). Works from the first instruction on, before any ring exists.
pub fn debug_write(bytes: &[u8]) {
    for &b in bytes {
        // SAFETY: port 0xE9 is Xen's HVM debug port; writing it has no effect on memory.
        unsafe {
            asm!("out dx, al", in("dx") 0xE9u16, in("al") b, options(nomem, nostack, preserves_flags))
        };
    }
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC reads a counter; CR4.TSD is clear (we never set it), so it is allowed.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Enables interrupts (the IDT must be installed: see [`install_idt`]).
pub fn interrupts_enable() {
    // SAFETY: every vector the CPU or Xen can deliver has a gate (`install_idt` fills all
    // exceptions, the upcall and the spurious vector); handlers preserve registers.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Disables interrupts.
pub fn interrupts_disable() {
    // SAFETY: CLI only masks interrupts.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Disables interrupts and halts forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: with interrupts off, HLT just parks the vCPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: only called for architectural MSRs every x86 CPU with a local APIC has.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

// ---------------------------------------------------------------------------------------------
// Local APIC (xAPIC MMIO; Xen emulates it for PVH guests).

const IA32_APIC_BASE: u32 = 0x1B;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_TPR: usize = 0x80;
const APIC_EOI: usize = 0xB0;
const APIC_SVR: usize = 0xF0;
/// Vector of spurious APIC interrupts.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

/// Base address of the local APIC registers, validated once by [`lapic_enable`].
static LAPIC_BASE: AtomicUsize = AtomicUsize::new(0);

/// Why the local APIC cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LapicError {
    /// IA32_APIC_BASE says the APIC is globally disabled.
    Disabled,
    /// The APIC base is not below 4 GiB or not page aligned.
    BadBase(u64),
}

fn lapic_write(reg: usize, value: u32) {
    let base = LAPIC_BASE.load(Ordering::Relaxed);
    if base == 0 {
        return;
    }
    // SAFETY: `base` was validated by `lapic_enable` (page-aligned, below 4 GiB, so mapped
    // uncached-or-emulated by the identity map / no paging); `reg` is a register offset < 4096.
    unsafe { core::ptr::write_volatile((base + reg) as *mut u32, value) };
}

fn lapic_read(reg: usize) -> u32 {
    let base = LAPIC_BASE.load(Ordering::Relaxed);
    if base == 0 {
        return 0;
    }
    // SAFETY: as in `lapic_write`.
    unsafe { core::ptr::read_volatile((base + reg) as *const u32) }
}

/// Software-enables the local APIC (spurious vector [`SPURIOUS_VECTOR`]) and accepts every
/// priority, so the event-channel upcall vector is delivered. Returns the APIC base.
///
/// # Errors
/// An APIC that is disabled or placed where we cannot address it.
pub fn lapic_enable() -> Result<u64, LapicError> {
    let msr = rdmsr(IA32_APIC_BASE);
    if msr & APIC_BASE_ENABLE == 0 {
        return Err(LapicError::Disabled);
    }
    let base = msr & 0x000F_FFFF_FFFF_F000;
    if base == 0 || base >= ADDRESSABLE_END {
        return Err(LapicError::BadBase(base));
    }
    let Ok(addr) = usize::try_from(base) else {
        return Err(LapicError::BadBase(base));
    };
    LAPIC_BASE.store(addr, Ordering::Relaxed);
    lapic_write(APIC_TPR, 0);
    let svr = lapic_read(APIC_SVR);
    lapic_write(APIC_SVR, (svr & !0xFF) | 0x100 | u32::from(SPURIOUS_VECTOR));
    Ok(base)
}

/// Signals end of interrupt to the local APIC.
pub fn lapic_eoi() {
    lapic_write(APIC_EOI, 0);
}

// ---------------------------------------------------------------------------------------------
// IDT.

/// The vector Xen raises for event-channel upcalls (`HVMOP_set_evtchn_upcall_vector`).
pub const UPCALL_VECTOR: u8 = 0xF3;

#[cfg(target_arch = "x86_64")]
const GATE_WORDS: usize = 2;
#[cfg(target_arch = "x86")]
const GATE_WORDS: usize = 1;

#[repr(C, align(16))]
struct Idt(UnsafeCell<[u64; 256 * GATE_WORDS]>);

// SAFETY: the table is written only by `install_idt`, with interrupts disabled, on the single
// vCPU the guest runs on, before `lidt`; afterwards only the CPU reads it.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([0; 256 * GATE_WORDS]));

unsafe extern "C" {
    static pvh_exc_table: [usize; 32];
    fn pvh_upcall_stub();
    fn pvh_spurious_stub();
}

/// The handler the upcall vector calls (a `fn()` stored as an address; 0 = none).
static UPCALL_HANDLER: AtomicUsize = AtomicUsize::new(0);

fn gate(handler: usize) -> [u64; GATE_WORDS] {
    let h = handler as u64;
    // Present, DPL 0, interrupt gate (interrupts stay off inside handlers).
    let low = (h & 0xFFFF)
        | (u64::from(CODE_SELECTOR) << 16)
        | (0x8Eu64 << 40)
        | (((h >> 16) & 0xFFFF) << 48);
    #[cfg(target_arch = "x86_64")]
    return [low, h >> 32];
    #[cfg(target_arch = "x86")]
    return [low];
}

/// Fills and loads the IDT: vectors 0..32 report the exception and crash the domain,
/// [`UPCALL_VECTOR`] runs the registered upcall handler, [`SPURIOUS_VECTOR`] returns.
pub fn install_idt() {
    let mut table = [0u64; 256 * GATE_WORDS];
    // SAFETY: `pvh_exc_table` is a read-only table of 32 stub addresses defined in the boot
    // assembly; reading it by value copies it.
    let excs = unsafe { pvh_exc_table };
    for (vector, &stub) in excs.iter().enumerate() {
        table[vector * GATE_WORDS..][..GATE_WORDS].copy_from_slice(&gate(stub));
    }
    let v = usize::from(UPCALL_VECTOR) * GATE_WORDS;
    table[v..v + GATE_WORDS].copy_from_slice(&gate(pvh_upcall_stub as *const () as usize));
    let v = usize::from(SPURIOUS_VECTOR) * GATE_WORDS;
    table[v..v + GATE_WORDS].copy_from_slice(&gate(pvh_spurious_stub as *const () as usize));
    // SAFETY: see `impl Sync for Idt`: interrupts are off and nobody else touches the table.
    unsafe { IDT.0.get().write(table) };

    #[repr(C, packed)]
    struct Descriptor {
        limit: u16,
        base: usize,
    }
    let desc = Descriptor {
        // CAST: the table is 4 KiB or 2 KiB; its size minus one fits 16 bits.
        limit: (core::mem::size_of::<[u64; 256 * GATE_WORDS]>() - 1) as u16,
        base: IDT.0.get() as usize,
    };
    // SAFETY: the descriptor names a fully initialised, static IDT whose gates point at the
    // stubs in the boot assembly with our code selector.
    unsafe {
        asm!("lidt [{}]", in(reg) &raw const desc, options(readonly, nostack, preserves_flags))
    };
}

/// State shared between the guest's main flow and its upcall handler.
///
/// The guest runs on one vCPU; the main flow touches the cell only with interrupts disabled,
/// and the handler runs with interrupts disabled (interrupt gate) and returns every borrow
/// before it returns, so the two never overlap. `try_borrow_mut` is used anyway, so a misuse
/// shows up as a skipped access, never as two live `&mut`.
#[derive(Debug)]
pub struct IrqCell<T>(core::cell::RefCell<T>);

// SAFETY: see the type's documentation: one vCPU, accesses from the main flow only with
// interrupts off, and the handler cannot be interrupted; so no two accesses are ever concurrent.
unsafe impl<T> Sync for IrqCell<T> {}

impl<T> IrqCell<T> {
    /// A cell holding `v`.
    pub const fn new(v: T) -> Self {
        IrqCell(core::cell::RefCell::new(v))
    }

    /// Runs `f` on the contents, unless they are borrowed already.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.0.try_borrow_mut().ok().map(|mut g| f(&mut g))
    }
}

/// Registers the function the upcall vector runs (with interrupts off, before the EOI).
pub fn set_upcall_handler(handler: fn()) {
    UPCALL_HANDLER.store(handler as usize, Ordering::SeqCst);
}

#[unsafe(no_mangle)]
extern "C" fn pvh_upcall_entry() {
    let h = UPCALL_HANDLER.load(Ordering::SeqCst);
    if h != 0 {
        // SAFETY: the only non-zero values stored are `fn()` pointers (`set_upcall_handler`).
        let f: fn() = unsafe { core::mem::transmute::<usize, fn()>(h) };
        f();
    }
    lapic_eoi();
}

/// Physical address of the hypercall page once installed (0 before): lets the exception and
/// panic paths ask Xen to crash the domain.
static HYPERCALL_PAGE: AtomicUsize = AtomicUsize::new(0);

/// Reports a fatal condition and crashes the domain (`SHUTDOWN_crash`), or halts if no
/// hypercall page is installed yet.
pub fn fatal() -> ! {
    let page = HYPERCALL_PAGE.load(Ordering::SeqCst);
    if let Some(p) = core::ptr::NonNull::new(page as *mut u8) {
        // SAFETY: only the address of the installed hypercall page is ever stored.
        let hv = unsafe { XenPlatform::with_hypercall_page(p) };
        let _ = hv.sched_shutdown(xen_sys::native::SHUTDOWN_crash);
    }
    halt_forever()
}

#[unsafe(no_mangle)]
extern "C" fn pvh_exception(frame: *const usize) -> ! {
    // SAFETY: the stub passes a pointer to the words it and the CPU pushed: vector, error
    // code, instruction pointer, code segment, flags.
    let [vector, error, ip, cs, flags] = unsafe { frame.cast::<[usize; 5]>().read() };
    let cr2: usize;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    crate::log::e9_fmt(format_args!(
        "FATAL exception {vector} error {error:#x} ip {ip:#x} cs {cs:#x} flags {flags:#x} cr2 {cr2:#x}\n"
    ));
    fatal()
}

// ---------------------------------------------------------------------------------------------
// Hypercall page.

#[repr(C, align(4096))]
struct HypercallPage(UnsafeCell<[u8; PAGE_SIZE]>);
// SAFETY: Xen writes the page once (on the MSR write); afterwards it is only executed.
unsafe impl Sync for HypercallPage {}
static HYPERCALL_PAGE_MEM: HypercallPage = HypercallPage(UnsafeCell::new([0; PAGE_SIZE]));

/// Has Xen fill our hypercall page and returns the platform that calls through it.
///
/// # Errors
/// As [`XenPlatform::install_hypercall_page`].
pub fn install_hypercall_page(xen: &XenCpuid) -> Result<XenPlatform, PlatformError> {
    let virt = HYPERCALL_PAGE_MEM.0.get().cast::<u8>();
    // Identity mapped (x86_64) or unpaged (i686): the physical address is the address.
    let phys = virt as usize as u64;
    // SAFETY: ring 0 in a PVH guest of the Xen `xen` describes; the page is ours alone (a
    // private static), page aligned, executable (no NX anywhere in our mapping) and never
    // freed or remapped.
    let hv = unsafe { XenPlatform::install_hypercall_page(xen, phys, virt)? };
    HYPERCALL_PAGE.store(virt as usize, Ordering::SeqCst);
    Ok(hv)
}

// ---------------------------------------------------------------------------------------------
// Guest frames Xen hands us.

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// Why a frame cannot be viewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Above what we can address (4 GiB), or frame 0.
    OutOfRange(u64),
    /// Inside our own image (code, data, stack, heap).
    InImage(u64),
}

/// The guest frame number of a static page of our image (identity mapped or unpaged).
pub fn gpfn_of(addr: *const u8) -> u64 {
    (addr as usize as u64) >> 12
}

/// Views the guest frame `pfn` that Xen named (a ring page from an HVM parameter) as shared
/// memory.
///
/// # Errors
/// A frame we cannot address or that overlaps our own image (a hypervisor or toolstack error
/// we refuse instead of corrupting ourselves).
pub fn map_foreign_frame(pfn: u64) -> Result<SharedMem<'static>, MapError> {
    let start = gpfn_of(&raw const __image_start);
    let end = gpfn_of(&raw const __image_end) + 1;
    if pfn == 0 || pfn >= ADDRESSABLE_END >> 12 {
        return Err(MapError::OutOfRange(pfn));
    }
    if (start..end).contains(&pfn) {
        return Err(MapError::InImage(pfn));
    }
    let Ok(addr) = usize::try_from(pfn << 12) else {
        return Err(MapError::OutOfRange(pfn));
    };
    // SAFETY: the frame is below 4 GiB, so it is addressable at `addr`; it is not part of our
    // image, so no Rust object lives there; Xen provides it as a guest RAM page shared with a
    // backend, and every access the guest makes to it goes through this `SharedMem` (atomic
    // 4-byte accesses). It is never unmapped while the guest runs.
    unsafe { SharedMem::new(addr as *mut u8, PAGE_SIZE) }.map_err(|_| MapError::OutOfRange(pfn))
}

/// End of the RAM range of the memory map that holds our image (below 4 GiB); `usize::MAX`
/// until known. A non-zero initial value: in `.data`, so `.bss` keeps its layout (see `heap`).
static RAM_END: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Room left after the image for what Xen places there (start info, command line, memory
/// map).
const AFTER_IMAGE: usize = 4 << 20;

/// Moves the heap to size classes with free lists over the RAM above the image (the driver
/// domain, which serves for minutes, frees in any order and keeps RAM disks); see `heap`.
/// Returns the region, or `None` when the memory map gave no RAM range with 20 MiB to spare.
pub fn heap_reuse() -> Option<(usize, usize)> {
    let ram_end = RAM_END.load(Ordering::Relaxed);
    if ram_end == usize::MAX {
        return None;
    }
    let image_end = (&raw const __image_end) as usize;
    let base = (image_end + AFTER_IMAGE).next_multiple_of(1 << 20);
    let end = ram_end.saturating_sub(1 << 20) & !0xFFF;
    if end < base + (20 << 20) {
        return None;
    }
    // SAFETY: `base..end` is RAM of ours by Xen's memory map (type RAM, the range that holds
    // the image), beyond the image and 4 MiB past it (where Xen put the start info, command
    // line and memory map, which we copied at entry), below the end of that RAM; nothing else
    // in the guest uses memory outside the image, and this is called once.
    unsafe { heap::reuse(base, end - base) };
    Some((base, end - base))
}

// ---------------------------------------------------------------------------------------------
// The foreign-mapping window of the driver domain.

/// Start of the guest-physical window where the driver domain maps other domains' grants
/// (`GNTTABOP_map_grant_ref` with `GNTMAP_host_map`: for a PVH domain `host_addr` is a
/// guest-physical address, and Xen puts the foreign frame into our p2m there). 2 GiB: above
/// any RAM xl gives the guests (at most 128 MiB), below the special pages, ACPI tables and
/// LAPIC Xen places under 4 GiB, and inside our 4 GiB identity map.
pub const FOREIGN_BASE: u64 = 0x8000_0000;
/// Pages in the window (64 MiB): rings, indirect pages and persistent grants of a few devices.
pub const FOREIGN_PAGES: u32 = 16384;

/// Views `pages` pages of the foreign-mapping window from `addr`, once the caller has mapped
/// grants there; `None` for a range outside the window or misaligned.
pub fn foreign_view(addr: u64, pages: u32) -> Option<SharedMem<'static>> {
    let end = addr.checked_add(u64::from(pages) * PAGE_SIZE as u64)?;
    if pages == 0
        || !addr.is_multiple_of(PAGE_SIZE as u64)
        || addr < FOREIGN_BASE
        || end > FOREIGN_BASE + u64::from(FOREIGN_PAGES) * PAGE_SIZE as u64
    {
        return None;
    }
    let ptr = usize::try_from(addr).ok()? as *mut u8;
    let len = usize::try_from(end - addr).ok()?;
    // SAFETY: the range lies inside the window, which is below 4 GiB (addressable: identity
    // map / no paging), holds no RAM of ours and no Rust object; only foreign frames Xen maps
    // there on our request are ever there. Every access goes through the returned
    // `SharedMem` (atomic/volatile accesses that tolerate a peer writing concurrently), and an
    // access to a slot with nothing mapped reads what Xen gives for a p2m hole instead of
    // corrupting anything of ours.
    unsafe { SharedMem::new(ptr, len) }.ok()
}

// ---------------------------------------------------------------------------------------------
// Start of day.

/// What Xen told us in `hvm_start_info`, copied and checked.
#[derive(Debug)]
pub struct StartInfo {
    /// `hvm_start_info.version`.
    pub version: u32,
    /// `hvm_start_info.flags`.
    pub flags: u32,
    /// The command line (`cmdline=` in the xl configuration), truncated at 1 KiB; empty if
    /// absent or not UTF-8.
    pub cmdline: &'static str,
    /// Physical address of the structure.
    pub paddr: usize,
}

/// Why `hvm_start_info` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartInfoError {
    /// The pointer in %ebx is 0, misaligned or not addressable.
    BadAddress(usize),
    /// Wrong magic.
    BadMagic(u32),
}

const CMDLINE_MAX: usize = 1024;

struct CmdlineBuf(UnsafeCell<[u8; CMDLINE_MAX]>);
// SAFETY: written once by `pvh_rust_entry` before anything else runs; read-only afterwards.
unsafe impl Sync for CmdlineBuf {}
static CMDLINE: CmdlineBuf = CmdlineBuf(UnsafeCell::new([0; CMDLINE_MAX]));

fn read_start_info(paddr: usize) -> Result<StartInfo, StartInfoError> {
    use xen_sys::native::hvm_start_info;
    let size = core::mem::size_of::<hvm_start_info>();
    if paddr == 0 || !paddr.is_multiple_of(8) || (paddr as u64) + (size as u64) > ADDRESSABLE_END {
        return Err(StartInfoError::BadAddress(paddr));
    }
    // SAFETY: Xen placed the structure at `paddr` (checked addressable and aligned); it is
    // plain old data and we copy it out once.
    let si: hvm_start_info = unsafe { core::ptr::read_volatile(paddr as *const hvm_start_info) };
    if si.magic != xen_sys::consts::hypercall::HVM_START_MAGIC {
        return Err(StartInfoError::BadMagic(si.magic));
    }
    if si.version >= 1 && si.memmap_paddr != 0 {
        use xen_sys::native::hvm_memmap_table_entry;
        let esize = core::mem::size_of::<hvm_memmap_table_entry>() as u64;
        let image_end = (&raw const __image_end) as usize as u64;
        for i in 0..u64::from(si.memmap_entries.min(128)) {
            let at = si.memmap_paddr + i * esize;
            if at + esize > ADDRESSABLE_END {
                break;
            }
            // SAFETY: Xen placed the memory map at `memmap_paddr` (each entry checked
            // addressable); plain old data, copied out once.
            let e: hvm_memmap_table_entry =
                unsafe { core::ptr::read_volatile(at as usize as *const hvm_memmap_table_entry) };
            let end = e.addr.saturating_add(e.size).min(ADDRESSABLE_END);
            if e.type_ == 1 && e.addr <= image_end && end > image_end {
                RAM_END.store(usize::try_from(end).unwrap_or(0), Ordering::Relaxed);
            }
        }
    }
    let mut len = 0;
    // SAFETY: single-threaded start of day; nothing else references the buffer yet.
    let buf = unsafe { &mut *CMDLINE.0.get() };
    let c = si.cmdline_paddr;
    if c != 0 && c < ADDRESSABLE_END - CMDLINE_MAX as u64 {
        while len < CMDLINE_MAX {
            // SAFETY: the command line Xen placed lies below 4 GiB (checked): addressable.
            // Read byte by byte up to the NUL or our limit.
            let b = unsafe { core::ptr::read_volatile((c as usize + len) as *const u8) };
            if b == 0 {
                break;
            }
            buf[len] = b;
            len += 1;
        }
    }
    let buf: &'static [u8] = &buf[..len];
    Ok(StartInfo {
        version: si.version,
        flags: si.flags,
        cmdline: core::str::from_utf8(buf).unwrap_or(""),
        paddr,
    })
}

#[unsafe(no_mangle)]
extern "C" fn pvh_rust_entry(start_info: usize) -> ! {
    crate::log::e9_fmt(format_args!(
        "pvh-guest {ARCH}: entered, start_info at {start_info:#x}\n"
    ));
    heap::init();
    match read_start_info(start_info) {
        Ok(si) => crate::guest_main(&si),
        Err(e) => {
            crate::log::e9_fmt(format_args!("RESULT boot FAIL bad hvm_start_info: {e:?}\n"));
            halt_forever()
        }
    }
}
