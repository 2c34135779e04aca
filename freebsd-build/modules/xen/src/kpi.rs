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
}

impl Upcall {
    /// Sets up the upcall in `mode` (1 vector, 2 PCI).
    ///
    /// # Errors
    /// What the shim said (it logs why).
    pub fn setup(mode: u32) -> Result<Upcall, Errno> {
        let mut at = 0u32;
        let mode = c_int::try_from(mode).map_err(|_| Errno::EINVAL)?;
        // SAFETY: a live out-pointer; paired with teardown in Drop.
        check(unsafe { xenrs_kpi_upcall_setup(mode, &mut at) })?;
        Ok(Upcall { at })
    }
}

impl Drop for Upcall {
    fn drop(&mut self) {
        // SAFETY: set up in `setup`.
        unsafe { xenrs_kpi_upcall_teardown() }
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
