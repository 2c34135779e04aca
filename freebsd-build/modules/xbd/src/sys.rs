//! The FreeBSD side of xbd.ko: the C shim's functions (`xbd_kmod.c`), the kernel
//! implementation of [`DiskKpi`], the per-disk lock and softc, and the `extern "C"` entry
//! points the shim calls (`d_strategy`, sysctl leaves).
//!
//! This is the only part of the crate with `unsafe`: each block says why it holds.
#![allow(unsafe_code)]

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use core::cell::UnsafeCell;
use core::ffi::{c_char, c_int, c_uint, c_void};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use xen_blkback::proto::PAGE_SIZE;
use xen_shmem::SharedMem;

use crate::disk::{BioHandle, BioRequest, Cmd, DiskKpi, DiskParams};

extern "C" {
    fn xenrs_xbd_biodone(bp: *mut c_void, error: c_int, resid: i64);
    fn xenrs_xbd_vtophys(va: *const c_void) -> u64;
    fn xenrs_xbd_disk_create(
        softc: *mut c_void,
        unit: c_uint,
        sectorsize: c_uint,
        mediasize: i64,
        maxsize: c_uint,
        stripesize: i64,
        flags: c_uint,
        descr: *const c_char,
    ) -> *mut c_void;
    fn xenrs_xbd_disk_resize(disk: *mut c_void, mediasize: i64) -> c_int;
    fn xenrs_xbd_disk_destroy(disk: *mut c_void);
    fn xenrs_xbd_lock_new() -> *mut c_void;
    fn xenrs_xbd_lock(m: *mut c_void);
    fn xenrs_xbd_sx_new() -> *mut c_void;
    fn xenrs_xbd_tq_new(softc: *mut c_void, unit: u32) -> *mut c_void;
    fn xenrs_xbd_tq_enqueue(tq: *mut c_void);
    fn xenrs_xbd_tq_enqueue_later(tq: *mut c_void, ms: u32);
    fn xenrs_xbd_tq_free(tq: *mut c_void);
    fn xenrs_xbd_sx_xlock(sx: *mut c_void);
    fn xenrs_xbd_sx_try_xlock(sx: *mut c_void) -> c_int;
    fn xenrs_xbd_sx_xunlock(sx: *mut c_void);
    fn xenrs_xbd_sx_free(sx: *mut c_void);
    fn xenrs_xbd_unlock(m: *mut c_void);
    fn xenrs_xbd_lock_free(m: *mut c_void);
    fn xenrs_xbd_sysctl_attach(softc: *mut c_void, unit: c_uint) -> *mut c_void;
    fn xenrs_xbd_sysctl_detach(ctx: *mut c_void);
}

/// `XENRS_XBD_*` disk flags of the shim.
const CANDELETE: c_uint = 0x1;
const CANFLUSH: c_uint = 0x2;
const READONLY: c_uint = 0x4;

/// A `struct disk *` from `disk_create`.
#[derive(Debug)]
pub struct KernelDisk(NonNull<c_void>);

// SAFETY: a disk may be resized and destroyed from any thread (the calls are made under the
// disk's mutex).
unsafe impl Send for KernelDisk {}

/// The kernel's disk layer, for the disk whose softc is `softc` (`d_drv1`).
#[derive(Debug)]
pub struct Kernel {
    softc: *mut c_void,
}

// SAFETY: `softc` is an address handed to the shim only; the kernel functions may be called
// from any thread.
unsafe impl Send for Kernel {}

impl<'a> DiskKpi<'a> for Kernel {
    type Disk = KernelDisk;

    fn disk_create(&self, unit: u32, params: &DiskParams) -> Option<KernelDisk> {
        let mut flags = 0;
        if params.can_delete {
            flags |= CANDELETE;
        }
        if params.can_flush {
            flags |= CANFLUSH;
        }
        if params.read_only {
            flags |= READONLY;
        }
        // SAFETY: plain values and a static NUL-terminated description; the shim copies it
        // into `d_descr`. `softc` is the live Softc that outlives the disk (destroyed first).
        let disk = unsafe {
            xenrs_xbd_disk_create(
                self.softc,
                unit,
                params.sector_size,
                i64::try_from(params.media_size).ok()?,
                params.max_io,
                i64::from(params.stripe_size),
                flags,
                params.description().as_ptr(),
            )
        };
        NonNull::new(disk).map(KernelDisk)
    }

    fn disk_resize(&self, disk: &KernelDisk, media_size: u64) -> Result<(), i32> {
        let size = i64::try_from(media_size).map_err(|_| crate::disk::errno::EINVAL)?;
        // SAFETY: `disk` came from disk_create and is not destroyed yet (destroy takes it by
        // value).
        match unsafe { xenrs_xbd_disk_resize(disk.0.as_ptr(), size) } {
            0 => Ok(()),
            e => Err(e),
        }
    }

    fn disk_destroy(&self, disk: KernelDisk) {
        // SAFETY: from disk_create, destroyed once (moved in).
        unsafe { xenrs_xbd_disk_destroy(disk.0.as_ptr()) }
    }

    fn biodone(&self, bio: BioHandle, error: i32, resid: u64) {
        // SAFETY: `bio` is the `struct bio *` d_strategy passed for this request, completed
        // exactly once (the glue forgets the handle here).
        unsafe {
            xenrs_xbd_biodone(
                bio.0 as *mut c_void,
                error,
                i64::try_from(resid).unwrap_or(0),
            )
        }
    }

    fn bio_page(&self, page_va: usize) -> Option<(u64, SharedMem<'a>)> {
        if page_va == 0 || page_va % PAGE_SIZE != 0 {
            return None;
        }
        // SAFETY: `page_va` is a page of a bio's buffer, which GEOM mapped (the disk is not
        // DISKFLAG_UNMAPPED_BIO) and keeps mapped until biodone; vtophys only reads the
        // kernel page tables.
        let pa = unsafe { xenrs_xbd_vtophys(page_va as *const c_void) };
        // SAFETY: as above, the whole page is mapped until the bio completes, which the
        // glue does only after the core handed the bio back (no grant on it live). Rust
        // touches it only through this view (4-byte atomics); the kernel's own accesses are
        // outside the Rust abstract machine.
        let view = unsafe { SharedMem::new(page_va as *mut u8, PAGE_SIZE) }.ok()?;
        Some((pa >> 12, view))
    }
}

/// The kernel disk layer with no softc, for host tests (the fakes ignore it).
#[cfg(test)]
pub(crate) fn kernel_for_tests() -> Kernel {
    Kernel {
        softc: core::ptr::null_mut(),
    }
}

/// A FreeBSD `MTX_DEF` mutex around a value (the queue of bios waiting for the device lock).
///
/// # Invariants
/// `mtx` is a live mutex from `xenrs_xbd_lock_new`; `value` is only reached while it is held.
pub struct Locked<T> {
    mtx: NonNull<c_void>,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached under the mutex (type invariant), from any thread.
unsafe impl<T: Send> Sync for Locked<T> {}
// SAFETY: as above; the mutex itself may be used and freed from any thread.
unsafe impl<T: Send> Send for Locked<T> {}

impl<T> core::fmt::Debug for Locked<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Locked").finish_non_exhaustive()
    }
}

impl<T> Locked<T> {
    /// `None` when the kernel has no memory for the mutex.
    pub fn new(value: T) -> Option<Self> {
        // SAFETY: no arguments; NULL on failure.
        let mtx = NonNull::new(unsafe { xenrs_xbd_lock_new() })?;
        // INVARIANT: a fresh mutex.
        Some(Locked {
            mtx,
            value: UnsafeCell::new(value),
        })
    }

    /// Runs `f` with the mutex held: only short work that never sleeps (a push or a pop of
    /// the bio queue), and not re-entrant.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: a live mutex (invariant).
        unsafe { xenrs_xbd_lock(self.mtx.as_ptr()) };
        // SAFETY: the mutex is held, so this is the only reference to the value.
        let r = f(unsafe { &mut *self.value.get() });
        // SAFETY: held by us, above.
        unsafe { xenrs_xbd_unlock(self.mtx.as_ptr()) };
        r
    }
}

impl<T> Drop for Locked<T> {
    fn drop(&mut self) {
        // SAFETY: a live mutex nobody holds (we are being dropped, so no `with` is running).
        unsafe { xenrs_xbd_lock_free(self.mtx.as_ptr()) }
    }
}

/// The device lock: a FreeBSD sx(9) lock around a value, which its holder may sleep under
/// (xenstore requests, page allocation, unbinding an event channel).
///
/// # Invariants
/// `sx` is a live lock from `xenrs_xbd_sx_new`; `value` is only reached while it is held.
pub struct DeviceLock<T> {
    sx: NonNull<c_void>,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached under the lock (type invariant), from any thread.
unsafe impl<T: Send> Sync for DeviceLock<T> {}
// SAFETY: as above; the lock itself may be used and freed from any thread.
unsafe impl<T: Send> Send for DeviceLock<T> {}

impl<T> core::fmt::Debug for DeviceLock<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceLock").finish_non_exhaustive()
    }
}

impl<T> DeviceLock<T> {
    /// `None` when the kernel has no memory for the lock.
    pub fn new(value: T) -> Option<Self> {
        // SAFETY: no arguments; NULL on failure.
        let sx = NonNull::new(unsafe { xenrs_xbd_sx_new() })?;
        // INVARIANT: a fresh lock.
        Some(DeviceLock {
            sx,
            value: UnsafeCell::new(value),
        })
    }

    /// Runs `f` with the lock held, waiting (sleeping) for it: only from contexts that may
    /// sleep (xenbus callbacks, sysctl handlers).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: a live lock (invariant).
        unsafe { xenrs_xbd_sx_xlock(self.sx.as_ptr()) };
        // SAFETY: the lock is held exclusively, so this is the only reference to the value.
        let r = f(unsafe { &mut *self.value.get() });
        // SAFETY: held by us, above.
        unsafe { xenrs_xbd_sx_xunlock(self.sx.as_ptr()) };
        r
    }

    /// Runs `f` if the lock is free now; `None` (and `f` not run) when another thread holds
    /// it. Never sleeps.
    pub fn try_with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        // SAFETY: a live lock (invariant).
        if unsafe { xenrs_xbd_sx_try_xlock(self.sx.as_ptr()) } == 0 {
            return None;
        }
        // SAFETY: the lock is held exclusively, so this is the only reference to the value.
        let r = f(unsafe { &mut *self.value.get() });
        // SAFETY: held by us, above.
        unsafe { xenrs_xbd_sx_xunlock(self.sx.as_ptr()) };
        Some(r)
    }
}

impl<T> Drop for DeviceLock<T> {
    fn drop(&mut self) {
        // SAFETY: a live lock nobody holds (we are being dropped).
        unsafe { xenrs_xbd_sx_free(self.sx.as_ptr()) }
    }
}

/// Whether an event run left work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Again {
    /// Nothing left.
    No,
    /// A budget was reached with responses left: run again now (from the taskqueue).
    Soon,
    /// Grants the backend still holds on bios' pages: retry in [`RETRY_MS`].
    Later,
}

/// What the shim's entry points (and the event handler) reach through `d_drv1`.
pub trait GeomDisk: Send {
    /// `d_strategy`.
    fn strategy(&mut self, req: BioRequest);
    /// A `dev.xbd.<unit>` leaf.
    fn stat(&self, which: u32) -> Option<u64>;
    /// An event on one of the device's ports (responses to handle); says whether to run
    /// again, and when.
    fn event(&mut self) -> Again {
        Again::No
    }
    /// The device as `Any`, for the xenbus side that knows its concrete type.
    fn as_any(&mut self) -> &mut dyn core::any::Any;
}

/// The per-disk object whose address is `d_drv1` and the sysctl handlers' `arg1`.
///
/// Work that may not sleep (`d_strategy`, events) never waits for the device lock: it is left
/// in `queue`/`pending` and run by whoever holds the lock, which every holder checks after it
/// lets go ([`Softc::drain`]), so none is stranded.
pub struct Softc {
    dev: DeviceLock<Option<Box<dyn GeomDisk>>>,
    /// Bios waiting for the device lock, in arrival order.
    queue: Locked<VecDeque<BioRequest>>,
    sysctl: Option<NonNull<c_void>>,
    /// The device's taskqueue (event work runs there).
    tq: Option<NonNull<c_void>>,
    /// Events that arrived while another thread held the device lock.
    pending: AtomicBool,
}

impl Softc {
    /// An event from xen.ko's event thread: flag it and hand the work to the device's
    /// taskqueue (inline, bounded, only if there is none).
    fn kick(&self) {
        match self.tq {
            Some(tq) => {
                self.pending.store(true, Ordering::Release);
                // SAFETY: a live taskqueue (freed only in `SoftcBox::free`, after the sink
                // is disconnected and every port unbound).
                unsafe { xenrs_xbd_tq_enqueue(tq.as_ptr()) };
            }
            None => self.event(),
        }
    }

    /// Another event run soon: flags it and enqueues the task (without a taskqueue, the next
    /// drain round runs it).
    fn again(&self) {
        self.pending.store(true, Ordering::Release);
        if let Some(tq) = self.tq {
            // SAFETY: a live taskqueue (freed only in `SoftcBox::free`, which drains it).
            unsafe { xenrs_xbd_tq_enqueue(tq.as_ptr()) };
        }
    }

    /// Another run of the task in [`RETRY_MS`] milliseconds.
    fn later(&self) {
        if let Some(tq) = self.tq {
            // SAFETY: a live taskqueue (freed only in `SoftcBox::free`, which drains this).
            unsafe { xenrs_xbd_tq_enqueue_later(tq.as_ptr(), RETRY_MS) };
        }
    }

    /// The task: waits for the device lock (it may sleep), then runs what is pending.
    fn task(&self) {
        self.pending.store(true, Ordering::Release);
        self.with(|_| ());
    }

    /// An event for the device, from xen.ko's event thread (never sleeps).
    fn event(&self) {
        self.pending.store(true, Ordering::Release);
        self.drain();
    }

    /// A bio from `d_strategy` (never sleeps).
    fn strategy(&self, req: BioRequest) {
        self.queue.with(|q| q.push_back(req));
        self.drain();
    }

    /// Runs queued bios and pending events if the device lock is free; when it is not, its
    /// holder will (it drains after letting go). Bounded: a device that is given work faster
    /// than it runs leaves the rest to the next caller.
    fn drain(&self) {
        for _ in 0..DRAIN_ROUNDS {
            let idle = !self.pending.load(Ordering::Acquire) && self.queue.with(|q| q.is_empty());
            if idle {
                return;
            }
            let ran = self.dev.try_with(|dev| {
                let bios: VecDeque<BioRequest> = self.queue.with(core::mem::take);
                for req in bios {
                    match dev.as_mut() {
                        Some(d) => d.strategy(req),
                        // SAFETY: the bio's handle from d_strategy, completed once (the
                        // device is gone).
                        None => unsafe {
                            xenrs_xbd_biodone(
                                req.handle.0 as *mut c_void,
                                crate::disk::errno::ENXIO,
                                req.length,
                            );
                        },
                    }
                }
                if self.pending.swap(false, Ordering::AcqRel) {
                    if let Some(d) = dev.as_mut() {
                        return d.event();
                    }
                }
                Again::No
            });
            match ran {
                None => return,
                Some(Again::Soon) => self.again(),
                Some(Again::Later) => self.later(),
                Some(Again::No) => {}
            }
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Option<Box<dyn GeomDisk>>) -> R) -> R {
        let r = self.dev.with(f);
        self.drain();
        r
    }
}

/// Most rounds one caller drains before leaving the rest to the next one.
const DRAIN_ROUNDS: usize = 64;

/// How soon held grants are retried (the backend still maps pages of completed bios).
pub const RETRY_MS: u32 = 250;

/// The event handlers' way to the softc: set once the softc exists, cleared before it is
/// freed (by then every port is unbound, so no handler is running).
#[derive(Debug, Default)]
pub struct EventSink {
    softc: AtomicPtr<Softc>,
}

impl EventSink {
    /// Delivers an event to the device, if it is attached.
    pub fn fire(&self) {
        let softc = self.softc.load(Ordering::Acquire);
        if softc.is_null() {
            return;
        }
        // SAFETY: a non-null pointer was stored by `SoftcBox::connect` and is cleared by
        // `SoftcBox::free` before the softc is freed; ports (whose handlers call this) are all
        // unbound before that, and unbind waits for a running handler.
        unsafe { &*softc }.kick();
    }
}

impl core::fmt::Debug for Softc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Softc").finish_non_exhaustive()
    }
}

/// An attached disk's softc, owned by the driver until [`SoftcBox::free`].
///
/// # Invariants
/// `ptr` is a `Box<Softc>` leaked by [`SoftcBox::new`]; the shim holds it as `d_drv1` and as
/// the sysctl leaves' `arg1` until the disk is destroyed and the sysctl tree removed.
#[derive(Debug)]
pub struct SoftcBox {
    ptr: NonNull<Softc>,
}

// SAFETY: the Softc is Sync (its state is behind the mutex).
unsafe impl Send for SoftcBox {}
// SAFETY: as above.
unsafe impl Sync for SoftcBox {}

impl SoftcBox {
    /// A softc with an empty device slot and its `dev.xbd.<unit>` tree.
    pub fn new(unit: u32) -> Option<SoftcBox> {
        let softc = Box::new(Softc {
            dev: DeviceLock::new(None)?,
            queue: Locked::new(VecDeque::new())?,
            sysctl: None,
            tq: None,
            pending: AtomicBool::new(false),
        });
        let ptr = NonNull::from(Box::leak(softc));
        // SAFETY: `ptr` is a live Softc that stays allocated until `free`, which removes the
        // tree first; the handlers only read through `xenrs_xbd_dev_stat`.
        let ctx = unsafe { xenrs_xbd_sysctl_attach(ptr.as_ptr().cast(), unit) };
        // SAFETY: nobody else uses the softc yet (the shim only stores the address).
        unsafe { (*ptr.as_ptr()).sysctl = NonNull::new(ctx) };
        // SAFETY: a live Softc until `free`, which drains and frees the taskqueue first.
        let tq = unsafe { xenrs_xbd_tq_new(ptr.as_ptr().cast(), unit) };
        // SAFETY: nobody else uses the softc yet (the task runs only once enqueued).
        unsafe { (*ptr.as_ptr()).tq = NonNull::new(tq) };
        // INVARIANT: leaked above.
        Some(SoftcBox { ptr })
    }

    fn softc(&self) -> &Softc {
        // SAFETY: live until `free` (invariant).
        unsafe { self.ptr.as_ref() }
    }

    /// The address for `d_drv1`.
    pub fn as_raw(&self) -> *mut c_void {
        self.ptr.as_ptr().cast()
    }

    /// The kernel disk layer for this softc.
    pub fn kernel(&self) -> Kernel {
        Kernel {
            softc: self.as_raw(),
        }
    }

    /// Runs `f` on the device under the disk's mutex (then any event that arrived
    /// meanwhile).
    pub fn with<R>(&self, f: impl FnOnce(&mut Option<Box<dyn GeomDisk>>) -> R) -> R {
        self.softc().with(f)
    }

    /// Points `sink` at this softc: events reach the device from now on.
    pub fn connect(&self, sink: &EventSink) {
        sink.softc.store(self.ptr.as_ptr(), Ordering::Release);
    }

    /// An event, as xen.ko's event thread delivers it (for tests and the sink).
    pub fn event(&self) {
        self.softc().event();
    }

    /// Frees the softc: only after its disk was destroyed (no more `d_strategy`) and its
    /// ports unbound (no more events). Removes the sysctl tree first (which waits for
    /// running handlers) and disconnects `sink`.
    pub fn free(self, sink: &EventSink) {
        sink.softc.store(core::ptr::null_mut(), Ordering::Release);
        if let Some(tq) = self.softc().tq {
            // SAFETY: from tq_new, freed once; waits for a run in progress (which may take
            // the device lock: nothing holds it here).
            unsafe { xenrs_xbd_tq_free(tq.as_ptr()) };
        }
        if let Some(ctx) = self.softc().sysctl {
            // SAFETY: from sysctl_attach, removed once.
            unsafe { xenrs_xbd_sysctl_detach(ctx.as_ptr()) };
        }
        // SAFETY: leaked by `new`, reclaimed once; the disk and sysctl tree no longer refer
        // to it.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
    }
}

/// `d_strategy`, called by the shim for every bio.
///
/// # Safety
/// `softc` is the `d_drv1` of a disk created with a live [`SoftcBox`]; `bp` is the bio,
/// completed through `xenrs_xbd_biodone` exactly once.
#[no_mangle]
pub unsafe extern "C" fn xenrs_xbd_strategy(
    softc: *mut c_void,
    bp: *mut c_void,
    cmd: c_int,
    ordered: c_int,
    offset: i64,
    length: i64,
    data: *mut c_void,
) {
    let req = BioRequest {
        handle: BioHandle(bp as usize),
        cmd: Cmd::from_c(cmd),
        ordered: ordered != 0,
        offset,
        length,
        data: data as usize,
    };
    // SAFETY: a live softc by the caller's contract.
    let softc = unsafe { &*softc.cast::<Softc>() };
    softc.strategy(req);
}

/// A `dev.xbd.<unit>` leaf, called by the shim's sysctl handler.
///
/// # Safety
/// `softc` is a live softc (the tree is removed before it is freed); `out` is valid for a
/// `u64` write.
#[no_mangle]
pub unsafe extern "C" fn xenrs_xbd_dev_stat(
    softc: *mut c_void,
    which: c_int,
    out: *mut u64,
) -> c_int {
    // SAFETY: by the caller's contract.
    let softc = unsafe { &*softc.cast::<Softc>() };
    let Ok(which) = u32::try_from(which) else {
        return 2;
    };
    match softc
        .dev
        .with(|dev| dev.as_ref().and_then(|d| d.stat(which)))
    {
        Some(v) => {
            // SAFETY: valid for a u64 write by the caller's contract.
            unsafe { out.write(v) };
            0
        }
        // ENOENT
        None => 2,
    }
}

/// The device's task (`xbd_kmod_task`), on its own taskqueue thread.
///
/// # Safety
/// `softc` is a live softc (its taskqueue is drained before it is freed).
#[no_mangle]
pub unsafe extern "C" fn xenrs_xbd_task(softc: *mut c_void) {
    // SAFETY: by the caller's contract.
    unsafe { &*softc.cast::<Softc>() }.task();
}
