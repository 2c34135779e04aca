//! The FreeBSD KPI as xen.ko's bring-up uses it: the fixed-arity functions of the C shim
//! (`xen_kmod.c`), each wrapped safely. The only `unsafe` of the module's glue is here.
//! In host tests the same symbols are fakes (`src/tests/fake.rs`) that record what was
//! acquired and can be told to fail, so every unwinding path is exercised.

use core::ffi::{c_int, c_void};
use core::ptr::NonNull;

use freebsd_kpi::Errno;
use xen_shmem::SharedMem;

extern "C" {
    /// `contigmalloc(9)` (or `malloc_exec(9)` when `exec`) of `npages` zeroed, physically
    /// contiguous, page-aligned pages; their physical address in `*paddr`. NULL on failure.
    /// May sleep.
    fn xenrs_kpi_pages_alloc(npages: u32, exec: c_int, paddr: *mut u64) -> *mut c_void;
    /// Frees what `xenrs_kpi_pages_alloc` returned (same `npages` and `exec`).
    fn xenrs_kpi_pages_free(va: *mut c_void, npages: u32, exec: c_int);
    /// `pmap_mapdev_attr(9)` of one write-back page at physical address `paddr` (a frame Xen
    /// provides, such as the xenstore ring). NULL on failure.
    fn xenrs_kpi_map_frame(paddr: u64) -> *mut c_void;
    /// `pmap_unmapdev(9)` of what `xenrs_kpi_map_frame` returned.
    fn xenrs_kpi_unmap_frame(va: *mut c_void);
    /// Starts xen.ko's two taskqueue threads (events, xenbus). 0 or an errno.
    fn xenrs_kpi_threads_start() -> c_int;
    /// Drains and frees them.
    fn xenrs_kpi_threads_stop();
    /// Queues the events task (0) or the xenbus task (1). Callable from a filter.
    fn xenrs_kpi_kick(which: c_int);
    /// Queues it after `ms` milliseconds (a pending earlier request is moved, not doubled).
    fn xenrs_kpi_kick_after(which: c_int, ms: u32);
    /// Sets up the upcall: `mode` 1 per-vCPU vector, 2 Xen platform PCI interrupt; writes
    /// the vector (1) or IRQ (2) to `*where_`. 0 or an errno; the console says why.
    fn xenrs_kpi_upcall_setup(mode: c_int, where_: *mut u32) -> c_int;
    /// Tears the upcall down (the handler is not running when this returns).
    fn xenrs_kpi_upcall_teardown();
    /// Whether the Xen platform PCI device is attached (the `pci` upcall is possible).
    fn xenrs_kpi_upcall_pci_present() -> c_int;
    /// `num_io_irqs`, `first_msi_irq`, `num_msi_irqs` of `<x86/intr_machdep.h>`.
    fn xenrs_kpi_irq_space(num_io: *mut u32, first_msi: *mut u32, num_msi: *mut u32);
    /// Whether `intr_lookup_source(irq)` finds a registered interrupt source.
    fn xenrs_kpi_irq_used(irq: u32) -> c_int;
    /// The upcall's interrupt source left registered by an earlier load (found through the
    /// kernel environment): 0 with its IRQ in `*irq`, or `ENOENT`.
    fn xenrs_kpi_vec_source_find(irq: *mut u32) -> c_int;
    /// Registers the upcall's PIC and interrupt source at the free `irq` (for good: FreeBSD
    /// cannot deregister either). 0 or an errno.
    fn xenrs_kpi_vec_source_create(irq: u32) -> c_int;
    /// `intr_add_handler` of the upcall filter on that source. 0 or an errno.
    fn xenrs_kpi_vec_handler_add() -> c_int;
    /// `intr_remove_handler` (waits for a running filter).
    fn xenrs_kpi_vec_handler_remove();
    /// The boot CPU's local APIC id (`cpu_apic_ids[0]`): Xen's vCPU 0.
    fn xenrs_kpi_bsp_apic_id() -> u32;
    /// `apic_alloc_vector`: a free IDT vector on that APIC for `irq`, or 0.
    fn xenrs_kpi_apic_alloc_vector(apic_id: u32, irq: u32) -> u32;
    /// `apic_enable_vector`: points the IDT entry at the stock `Xapic_isrN` handler.
    fn xenrs_kpi_apic_enable_vector(apic_id: u32, vector: u32);
    /// `apic_free_vector` (runs on that CPU, so an interrupt already posted is taken first).
    fn xenrs_kpi_apic_free_vector(apic_id: u32, vector: u32, irq: u32);
    /// Monotonic time in nanoseconds (`sbinuptime`).
    fn xenrs_kpi_uptime_ns() -> u64;
    /// Sleeps on `chan` for at most `ms` milliseconds (`tsleep`).
    fn xenrs_kpi_sleep(chan: *const c_void, ms: c_int);
    /// Wakes the sleepers on `chan` (`wakeup`).
    fn xenrs_kpi_wakeup(chan: *const c_void);
    /// Creates the /dev/xen nodes whose kind bit is set in `mask` (bit `KIND_*` of
    /// `cdev.rs`: evtchn, xenstore, privcmd, xenstored) with `make_dev_s`. 0 or an errno.
    fn xenrs_kpi_cdevs_create(mask: u32) -> c_int;
    /// Destroys them (`destroy_dev`: waits for threads inside the entry points; open files
    /// are closed through their `cdevpriv` destructors).
    fn xenrs_kpi_cdevs_destroy();
    /// Number of CPUs (`mp_ncpus`).
    fn xenrs_kpi_ncpus() -> u32;
    /// The running thread (`curthread`), as an identity only.
    fn xenrs_kpi_curthread() -> *const c_void;
}

fn check(rc: c_int) -> Result<(), Errno> {
    Errno::from_raw(rc).map_or(Ok(()), Err)
}

/// Pages from the kernel, freed on drop.
#[derive(Debug)]
pub struct KPages {
    va: NonNull<u8>,
    pa: u64,
    count: u32,
    exec: bool,
}

// SAFETY: kernel memory owned by this value; usable from any thread.
unsafe impl Send for KPages {}
// SAFETY: `&KPages` only reads the addresses.
unsafe impl Sync for KPages {}

impl KPages {
    /// `count` zeroed contiguous pages (executable when `exec`).
    ///
    /// # Errors
    /// `ENOMEM`.
    pub fn alloc(count: u32, exec: bool) -> Result<KPages, Errno> {
        let mut pa = 0u64;
        // SAFETY: a live out-pointer; the shim returns NULL or `count` pages.
        let va = unsafe { xenrs_kpi_pages_alloc(count, c_int::from(exec), &mut pa) };
        let va = NonNull::new(va.cast::<u8>()).ok_or(Errno::ENOMEM)?;
        Ok(KPages {
            va,
            pa,
            count,
            exec,
        })
    }

    /// Physical address of the first page.
    pub fn pa(&self) -> u64 {
        self.pa
    }

    /// Guest frame number of the first page (HVM/PVH: physical address / 4096).
    pub fn gfn(&self) -> u64 {
        self.pa >> 12
    }

    /// Kernel virtual address.
    pub fn va(&self) -> *mut u8 {
        self.va.as_ptr()
    }

    /// Number of pages.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The pages as shared memory for the platform's lifetime.
    ///
    /// # Errors
    /// Never in practice (the address is page-aligned).
    pub fn shared(&self) -> Result<SharedMem<'static>, Errno> {
        let len = usize::try_from(self.count).map_err(|_| Errno::EINVAL)? * 4096;
        // SAFETY: `count` pages owned by this value. The `'static` view is handed only to the
        // cores owned by the same `Platform`, which drops them before the pages (field order
        // and explicit teardown in platform.rs); all Rust accesses go through SharedMem.
        unsafe { SharedMem::new(self.va.as_ptr(), len) }.map_err(|_| Errno::EINVAL)
    }

    /// Gives up ownership without freeing: for pages Xen keeps using (FIFO control blocks,
    /// a shared_info frame that could not be given back).
    pub fn leak(self) {
        core::mem::forget(self);
    }
}

impl Drop for KPages {
    fn drop(&mut self) {
        // SAFETY: allocated by xenrs_kpi_pages_alloc with these parameters, freed once.
        unsafe {
            xenrs_kpi_pages_free(self.va.as_ptr().cast(), self.count, c_int::from(self.exec));
        }
    }
}

/// A frame Xen provides, mapped into the kernel; unmapped on drop.
#[derive(Debug)]
pub struct KFrame {
    va: NonNull<u8>,
}

// SAFETY: a kernel mapping owned by this value.
unsafe impl Send for KFrame {}
// SAFETY: `&KFrame` only reads the address.
unsafe impl Sync for KFrame {}

impl KFrame {
    /// Maps guest frame `gfn`.
    ///
    /// # Errors
    /// `ENOMEM` when the kernel cannot map it, `EINVAL` for a frame beyond the address space.
    pub fn map(gfn: u64) -> Result<KFrame, Errno> {
        let pa = gfn.checked_mul(4096).ok_or(Errno::EINVAL)?;
        // SAFETY: plain value; the shim returns NULL or a mapping of one page.
        let va = unsafe { xenrs_kpi_map_frame(pa) };
        Ok(KFrame {
            va: NonNull::new(va.cast::<u8>()).ok_or(Errno::ENOMEM)?,
        })
    }

    /// The page as shared memory (see [`KPages::shared`] for the lifetime argument).
    ///
    /// # Errors
    /// Never in practice.
    pub fn shared(&self) -> Result<SharedMem<'static>, Errno> {
        // SAFETY: one mapped page owned by this value, dropped after the cores that view it;
        // the peer (xenstored) writes it concurrently, which SharedMem allows.
        unsafe { SharedMem::new(self.va.as_ptr(), 4096) }.map_err(|_| Errno::EINVAL)
    }
}

impl Drop for KFrame {
    fn drop(&mut self) {
        // SAFETY: mapped by xenrs_kpi_map_frame, unmapped once.
        unsafe { xenrs_kpi_unmap_frame(self.va.as_ptr().cast()) }
    }
}

/// xen.ko's taskqueue threads; stopped (drained) on drop.
#[derive(Debug)]
pub struct Threads(());

impl Threads {
    /// Starts them.
    ///
    /// # Errors
    /// What the kernel said.
    pub fn start() -> Result<Threads, Errno> {
        // SAFETY: no arguments; paired with the stop in Drop.
        check(unsafe { xenrs_kpi_threads_start() })?;
        Ok(Threads(()))
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        // SAFETY: started in `start`.
        unsafe { xenrs_kpi_threads_stop() }
    }
}

/// Which task to queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Poll the event channels and run handlers.
    Events = 0,
    /// Deliver xenstore watch events and registration callbacks.
    Xenbus = 1,
}

/// Queues `task` on its thread.
pub fn kick(task: Task) {
    // SAFETY: plain value; the shim ignores kicks when the threads are not running.
    unsafe { xenrs_kpi_kick(task as c_int) }
}

/// Queues `task` after `ms` milliseconds.
pub fn kick_after(task: Task, ms: u32) {
    // SAFETY: plain values; ignored when the threads are not running.
    unsafe { xenrs_kpi_kick_after(task as c_int, ms) }
}

/// The installed upcall; torn down on drop.
#[derive(Debug)]
pub struct Upcall {
    /// The vector (per-vCPU mode) or IRQ (PCI mode).
    pub at: u32,
    /// Vector mode: what `Drop` gives back.
    vector: Option<VectorUpcall>,
}

/// The platform PCI device is attached (so `hw.xenrs.upcall=pci` can work).
pub fn pci_present() -> bool {
    // SAFETY: no arguments.
    unsafe { xenrs_kpi_upcall_pci_present() != 0 }
}

impl Upcall {
    /// Sets up the upcall in `mode` (1 vector, 2 PCI).
    ///
    /// # Errors
    /// What the shim said (it logs why).
    pub fn setup(mode: u32) -> Result<Upcall, Errno> {
        if mode == 1 {
            let v = VectorUpcall::setup()?;
            return Ok(Upcall {
                at: v.vector,
                vector: Some(v),
            });
        }
        let mut at = 0u32;
        let mode = c_int::try_from(mode).map_err(|_| Errno::EINVAL)?;
        // SAFETY: a live out-pointer; paired with teardown in Drop.
        check(unsafe { xenrs_kpi_upcall_setup(mode, &mut at) })?;
        Ok(Upcall { at, vector: None })
    }

    /// The interrupt source's IRQ number (vector mode).
    pub fn irq(&self) -> Option<u32> {
        self.vector.as_ref().map(|v| v.irq)
    }
}

impl Drop for Upcall {
    fn drop(&mut self) {
        if let Some(v) = self.vector.take() {
            drop(v);
            return;
        }
        // SAFETY: set up in `setup`.
        unsafe { xenrs_kpi_upcall_teardown() }
    }
}

/// Where FreeBSD numbers its interrupt sources (`<x86/intr_machdep.h>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqSpace {
    /// `num_io_irqs`: the size of the source table.
    pub num_io: u32,
    /// `first_msi_irq` (0 when MSI is not enabled).
    pub first_msi: u32,
    /// `num_msi_irqs`.
    pub num_msi: u32,
}

/// The IRQ for the upcall's interrupt source, or `None` when there is no safe one.
///
/// Sources below `first_msi_irq` are registered at boot (I/O APIC pins, 8259A) and never
/// later, so one that is free at load stays free: the highest such hole is taken first. Past
/// it, MSI sources are created on demand from the bottom of the MSI range (`msi_alloc`), so
/// the last IRQ of that range is used only while it and the one below it are free: MSI
/// would reach it only after `num_msi_irqs - 1` sources exist (511 with the default
/// `machdep.num_msi_irqs` of 512). IRQs beyond the MSI range belong to FreeBSD's own Xen
/// support (event channels) in kernels built with it, and are never taken.
pub fn choose_irq(space: IrqSpace, used: impl Fn(u32) -> bool) -> Option<u32> {
    let below = if space.first_msi > 0 {
        space.first_msi.min(space.num_io)
    } else {
        space.num_io
    };
    // Never IRQ 0: lapic_handle_intr maps a stray vector to it.
    if let Some(irq) = (1..below).rev().take(4096).find(|&irq| !used(irq)) {
        return Some(irq);
    }
    if space.first_msi == 0 || space.num_msi < 2 {
        return None;
    }
    let last = space.first_msi.checked_add(space.num_msi - 1)?;
    (last < space.num_io && !used(last) && !used(last - 1)).then_some(last)
}

/// The per-vCPU upcall vector, as an interrupt source of ours (see the shim): the source
/// (registered for good, reused by the next load), its filter, and a vector on the boot
/// CPU's local APIC, which is Xen's vCPU 0. Dropping it frees the vector (on that CPU, so a
/// posted interrupt is taken first) and then removes the filter; the source stays, inert.
#[derive(Debug)]
pub struct VectorUpcall {
    /// The source's IRQ number.
    pub irq: u32,
    /// The boot CPU's APIC id.
    pub apic_id: u32,
    /// The IDT vector Xen is told.
    pub vector: u32,
    handler: bool,
}

impl VectorUpcall {
    fn setup() -> Result<VectorUpcall, Errno> {
        let mut irq = 0u32;
        // SAFETY: a live out-pointer.
        let found = unsafe { xenrs_kpi_vec_source_find(&mut irq) } == 0;
        if !found {
            let mut space = IrqSpace {
                num_io: 0,
                first_msi: 0,
                num_msi: 0,
            };
            // SAFETY: live out-pointers.
            unsafe {
                xenrs_kpi_irq_space(&mut space.num_io, &mut space.first_msi, &mut space.num_msi);
            }
            // SAFETY: plain values.
            let Some(pick) = choose_irq(space, |i| unsafe { xenrs_kpi_irq_used(i) } != 0) else {
                freebsd_kpi::kprintln!(
                    "xen: upcall: no free IRQ number for the upcall's interrupt source ({} sources, MSI from {}, {} MSI); use hw.xenrs.upcall=pci",
                    space.num_io,
                    space.first_msi,
                    space.num_msi
                );
                return Err(Errno::ENOSPC);
            };
            // SAFETY: a plain value; the shim registers the source for good.
            check(unsafe { xenrs_kpi_vec_source_create(pick) }).inspect_err(|e| {
                freebsd_kpi::kprintln!(
                    "xen: upcall: cannot register an interrupt source at IRQ {pick}: {e}"
                );
            })?;
            irq = pick;
        }
        let mut up = VectorUpcall {
            irq,
            // SAFETY: no arguments.
            apic_id: unsafe { xenrs_kpi_bsp_apic_id() },
            vector: 0,
            handler: false,
        };
        // SAFETY: no arguments; paired with the removal in Drop.
        check(unsafe { xenrs_kpi_vec_handler_add() }).inspect_err(|e| {
            freebsd_kpi::kprintln!("xen: upcall: intr_add_handler(irq {irq}): {e}");
        })?;
        up.handler = true;
        // SAFETY: plain values.
        let vector = unsafe { xenrs_kpi_apic_alloc_vector(up.apic_id, irq) };
        if vector == 0 {
            freebsd_kpi::kprintln!(
                "xen: upcall: no free vector on the boot CPU's local APIC {}",
                up.apic_id
            );
            return Err(Errno::ENOSPC);
        }
        up.vector = vector;
        // SAFETY: a vector just allocated on that APIC.
        unsafe { xenrs_kpi_apic_enable_vector(up.apic_id, vector) };
        Ok(up)
    }
}

impl Drop for VectorUpcall {
    fn drop(&mut self) {
        if self.vector != 0 {
            // SAFETY: allocated in `setup` for this IRQ on this APIC, freed once.
            unsafe { xenrs_kpi_apic_free_vector(self.apic_id, self.vector, self.irq) };
        }
        if self.handler {
            // SAFETY: added in `setup`, removed once.
            unsafe { xenrs_kpi_vec_handler_remove() };
        }
    }
}

/// /dev/xen/*; destroyed on drop.
#[derive(Debug)]
pub struct Cdevs(());

impl Cdevs {
    /// Creates them.
    ///
    /// # Errors
    /// What the kernel said.
    pub fn create(mask: u32) -> Result<Cdevs, Errno> {
        // SAFETY: a plain value; paired with destroy in Drop.
        check(unsafe { xenrs_kpi_cdevs_create(mask) })?;
        Ok(Cdevs(()))
    }
}

impl Drop for Cdevs {
    fn drop(&mut self) {
        // SAFETY: created in `create`.
        unsafe { xenrs_kpi_cdevs_destroy() }
    }
}

/// Monotonic nanoseconds.
pub fn now_ns() -> u64 {
    // SAFETY: no arguments.
    unsafe { xenrs_kpi_uptime_ns() }
}

/// Sleeps on `chan` for at most `ms` ms.
pub fn sleep<T>(chan: &T, ms: u32) {
    let ms = c_int::try_from(ms).unwrap_or(c_int::MAX);
    // SAFETY: the address is only a wait-channel key.
    unsafe { xenrs_kpi_sleep(core::ptr::from_ref(chan).cast(), ms) }
}

/// Wakes sleepers on `chan`.
pub fn wakeup<T>(chan: &T) {
    // SAFETY: the address is only a wait-channel key.
    unsafe { xenrs_kpi_wakeup(core::ptr::from_ref(chan).cast()) }
}

/// The running thread's identity (for refusing re-entry from a callback).
pub fn curthread() -> usize {
    // SAFETY: no arguments; the pointer is only compared.
    unsafe { xenrs_kpi_curthread() }.addr()
}

/// Number of CPUs.
pub fn ncpus() -> u32 {
    // SAFETY: no arguments.
    unsafe { xenrs_kpi_ncpus() }.max(1)
}

/// Installs the hypercall page: the real MSR write on the kernel target.
///
/// # Errors
/// `ENXIO` (the console says why).
#[cfg(not(test))]
pub fn install_hypercall_page(
    xen: &xen_kmod::arch::cpuid::XenCpuid,
    page: &KPages,
) -> Result<(crate::platform::Hv, crate::platform::RawTrap), Errno> {
    // SAFETY: ring 0 on an HVM/PVH guest (detected by CPUID), and `page` is an executable
    // page we own, kept by the platform until unload; after unload nothing calls through it
    // (unload is refused while any user exists).
    let p =
        unsafe { xen_kmod::arch::XenPlatform::install_hypercall_page(xen, page.pa(), page.va()) }
            .map_err(|e| {
            freebsd_kpi::kprintln!("xen: hypercall-page: {e}; not loading");
            Errno::ENXIO
        })?;
    let p: &'static xen_kmod::arch::XenPlatform =
        alloc::boxed::Box::leak(alloc::boxed::Box::new(p));
    let raw: crate::platform::RawTrap = alloc::boxed::Box::leak(alloc::boxed::Box::new(
        move |call: &xen_kmod::arch::marshal::RawCall| {
            // SAFETY: the exporter's contract (`xenrs_hypercall`): the caller's pointer
            // arguments are valid for the call.
            unsafe { p.raw_call(call) }
        },
    ));
    Ok((p, raw))
}
