//! The FreeBSD side of xbbd.ko: the C shim's functions (`xbbd_kmod.c`) as safe handles — the
//! backing object ([`Vnode`], the kernel implementation of [`BackingKpi`]) and the device's
//! sysctl tree ([`SysctlTree`]) — the device's taskqueue (xen.ko's shared one,
//! [`freebsd_kpi::taskqueue::TaskQueue`], behind a [`TaskSlot`]), and the entry points the
//! shim and the taskqueue call (the task, the sysctl leaves).
//!
//! This is the only part of the crate with `unsafe`: each block says why it holds.
#![allow(unsafe_code)]

use alloc::ffi::CString;
use alloc::sync::Arc;
use core::ffi::{c_char, c_int, c_void};
use core::ptr::NonNull;

use freebsd_kpi::sync::Mutex;
use freebsd_kpi::taskqueue::{Priority, TaskQueue};
use freebsd_kpi::Errno;
use xen_shmem::SharedMem;

use crate::store::{BackingInfo, BackingKind, BackingKpi};

extern "C" {
    fn xenrs_xbbd_vn_open(
        path: *const c_char,
        writable: c_int,
        out: *mut *mut c_void,
        size: *mut u64,
        sector: *mut u32,
        isdev: *mut c_int,
    ) -> c_int;
    fn xenrs_xbbd_vn_rdwr(v: *mut c_void, write: c_int, off: u64, buf: *mut u8, len: u32) -> c_int;
    fn xenrs_xbbd_vn_flush(v: *mut c_void) -> c_int;
    fn xenrs_xbbd_vn_discard(v: *mut c_void, off: u64, len: u64) -> c_int;
    fn xenrs_xbbd_vn_close(v: *mut c_void);
    fn xenrs_xbbd_sysctl_attach(softc: *mut c_void, unit: u32) -> *mut c_void;
    fn xenrs_xbbd_sysctl_detach(ctx: *mut c_void);
}

/// `EINVAL`.
const EINVAL: i32 = 22;
/// `EFAULT`.
const EFAULT: i32 = 14;

/// What the device's task and sysctl leaves reach through the softc pointer.
pub trait Task: Send + Sync {
    /// A run of the device's task (its taskqueue thread; may sleep).
    fn run(&self);
    /// Leaf `which` of `dev.xbbd.<unit>`.
    fn stat(&self, which: u32) -> Option<u64>;
}

/// The address the shim keeps for a device (`arg1` of its leaves, the task's argument): a
/// leaked box holding a reference to the device.
///
/// # Invariants
/// `ptr` comes from `Box::into_raw` in [`Softc::new`] and is reclaimed only by
/// [`Softc::free`], after the taskqueue and the sysctl tree that use it are gone.
#[derive(Debug)]
pub struct Softc {
    ptr: NonNull<Arc<dyn Task>>,
}

// SAFETY: the box holds an `Arc` of a `Send + Sync` object.
unsafe impl Send for Softc {}
// SAFETY: as above.
unsafe impl Sync for Softc {}

impl core::fmt::Debug for dyn Task {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Task")
    }
}

impl Softc {
    /// The softc of `dev`.
    pub fn new(dev: Arc<dyn Task>) -> Softc {
        let ptr = NonNull::from(alloc::boxed::Box::leak(alloc::boxed::Box::new(dev)));
        // INVARIANT: leaked above.
        Softc { ptr }
    }

    fn raw(&self) -> *mut c_void {
        self.ptr.as_ptr().cast()
    }

    /// The device's taskqueue thread `xbbd<unit> taskq` (`PRIBIO`), whose task runs
    /// [`Task::run`]; `None` without memory.
    pub fn taskqueue(&self, unit: u32) -> Option<TaskQueue> {
        // SAFETY: the softc outlives the queue: the device's queue is dropped (drained and
        // freed) by `TaskSlot::finish` before `Softc::free`.
        unsafe { TaskQueue::new(c"xbbd", unit, Priority::Bio, task_trampoline, self.raw()) }
    }

    /// The device's `dev.xbbd.<unit>` tree (`XENRS_SYSCTL_DEV` in the shim: xen.ko builds
    /// it, each leaf read through [`xenrs_xbbd_dev_stat`]); `None` when it could not be made.
    pub fn sysctl(&self, unit: u32) -> Option<SysctlTree> {
        // SAFETY: the softc outlives the tree (the caller removes the tree first).
        let ctx = unsafe { xenrs_xbbd_sysctl_attach(self.raw(), unit) };
        NonNull::new(ctx).map(|ctx| SysctlTree { ctx })
    }

    /// Frees the softc: only once its taskqueue is freed and its tree removed.
    pub fn free(self) {
        // SAFETY: leaked by `new`, reclaimed once; the shim holds it no longer.
        drop(unsafe { alloc::boxed::Box::from_raw(self.ptr.as_ptr()) });
    }
}

/// A device's sysctl tree.
#[derive(Debug)]
pub struct SysctlTree {
    ctx: NonNull<c_void>,
}

// SAFETY: the context is only used by `remove`, from any thread.
unsafe impl Send for SysctlTree {}
// SAFETY: as above.
unsafe impl Sync for SysctlTree {}

impl SysctlTree {
    /// Removes the tree (waits for a handler in progress).
    pub fn remove(self) {
        // SAFETY: from sysctl_attach, removed once (by value).
        unsafe { xenrs_xbbd_sysctl_detach(self.ctx.as_ptr()) }
    }
}

fn softc_task<'s>(softc: *mut c_void) -> &'s dyn Task {
    // SAFETY: every caller is an entry point whose contract is a live softc (the shim's
    // taskqueue and leaves are gone before `Softc::free`).
    unsafe { &**softc.cast::<Arc<dyn Task>>() }
}

/// The device's task, on its own taskqueue thread.
///
/// # Safety
/// `softc` is a live softc (its taskqueue is drained and freed before the softc).
unsafe extern "C" fn task_trampoline(softc: *mut c_void) {
    softc_task(softc).run();
}

/// A `dev.xbbd.<unit>` leaf.
///
/// # Safety
/// `softc` is a live softc; `out` is valid for a `u64` write.
#[no_mangle]
pub unsafe extern "C" fn xenrs_xbbd_dev_stat(
    softc: *mut c_void,
    which: c_int,
    out: *mut u64,
) -> c_int {
    let Some(v) = u32::try_from(which)
        .ok()
        .and_then(|w| softc_task(softc).stat(w))
    else {
        // ENOENT
        return 2;
    };
    // SAFETY: valid for a u64 write by the caller's contract.
    unsafe { out.write(v) };
    0
}

/// An opened backing object (`struct xenrs_xbbd_vn`), closed when the last clone is dropped.
#[derive(Debug)]
struct VnodeInner {
    v: NonNull<c_void>,
}

// SAFETY: the shim's functions may be called from any thread; the vnode has its own locks.
unsafe impl Send for VnodeInner {}
// SAFETY: as above.
unsafe impl Sync for VnodeInner {}

impl Drop for VnodeInner {
    fn drop(&mut self) {
        // SAFETY: from vn_open, closed once (the last reference).
        unsafe { xenrs_xbbd_vn_close(self.v.as_ptr()) }
    }
}

/// Where a device's task is asked for: its taskqueue until the device is finished, then
/// nothing (a request after that is dropped). An `MTX_DEF` mutex, held only for an enqueue
/// or to take the queue out, never while the queue is drained: xen.ko's event thread asks
/// through it and must not sleep.
#[derive(Debug)]
pub struct TaskSlot(Mutex<Option<TaskQueue>>);

impl TaskSlot {
    /// An empty slot (requests do nothing until [`TaskSlot::set`]).
    ///
    /// # Errors
    /// `ENOMEM`.
    pub fn empty() -> Result<TaskSlot, Errno> {
        Mutex::new(c"xbbd task", None).map(TaskSlot)
    }

    /// Installs the device's taskqueue.
    pub fn set(&self, tq: TaskQueue) {
        self.0.with(|slot| *slot = Some(tq));
    }

    /// Asks for a run of the task, if the device is not finished.
    pub fn kick(&self) {
        self.0.with(|slot| {
            if let Some(tq) = slot.as_ref() {
                tq.enqueue();
            }
        });
    }

    /// Takes the queue out (later requests do nothing) and frees it, waiting for a run in
    /// progress. May sleep; not from the task itself.
    pub fn finish(&self) {
        // Dropping the queue drains it and frees its thread.
        drop(self.0.with(Option::take));
    }
}

/// The kernel's [`BackingKpi`]: a vnode opened by path, and the device's task.
///
/// Clones share the open object, which is closed with the last; the task takes a clone out
/// of the store (under the device lock) to perform I/O without the lock.
#[derive(Debug, Clone)]
pub struct Vnode {
    inner: Arc<VnodeInner>,
    kick: Arc<TaskSlot>,
}

impl Vnode {
    /// Opens `path` (read-only unless `writable`); what it is. May sleep.
    ///
    /// # Errors
    /// The errno of the open (`EINVAL`: a path with a NUL, or neither a file nor a device).
    pub fn open(
        path: &str,
        writable: bool,
        kick: Arc<TaskSlot>,
    ) -> Result<(Vnode, BackingInfo, BackingKind), i32> {
        let cpath = CString::new(path).map_err(|_| EINVAL)?;
        let mut v: *mut c_void = core::ptr::null_mut();
        let (mut size, mut sector, mut isdev) = (0u64, 0u32, 0 as c_int);
        // SAFETY: `cpath` is NUL-terminated and lives through the call; the out pointers are
        // valid for writes.
        let rc = unsafe {
            xenrs_xbbd_vn_open(
                cpath.as_ptr(),
                c_int::from(writable),
                &mut v,
                &mut size,
                &mut sector,
                &mut isdev,
            )
        };
        if rc != 0 {
            return Err(rc);
        }
        let v = NonNull::new(v).ok_or(EINVAL)?;
        let kind = if isdev != 0 {
            BackingKind::Device
        } else {
            BackingKind::File
        };
        Ok((
            Vnode {
                inner: Arc::new(VnodeInner { v }),
                kick,
            },
            BackingInfo {
                size,
                sector_size: sector,
                discard: true,
            },
            kind,
        ))
    }
}

impl BackingKpi for Vnode {
    fn rdwr(&self, write: bool, offset: u64, seg: &SharedMem<'_>) -> Result<(), i32> {
        let len = u32::try_from(seg.len()).map_err(|_| EINVAL)?;
        let buf = seg.as_ptr();
        if buf.is_null() {
            return Err(EFAULT);
        }
        // SAFETY: `seg` is kernel memory valid for `len` bytes while the I/O is taken out of
        // the store (the core keeps its pages until the completion is reported); the file
        // system copies into or out of it and keeps no reference after returning.
        match unsafe {
            xenrs_xbbd_vn_rdwr(self.inner.v.as_ptr(), c_int::from(write), offset, buf, len)
        } {
            0 => Ok(()),
            e => Err(e),
        }
    }

    fn flush(&self) -> Result<(), i32> {
        // SAFETY: an open object (closed only with the last reference).
        match unsafe { xenrs_xbbd_vn_flush(self.inner.v.as_ptr()) } {
            0 => Ok(()),
            e => Err(e),
        }
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), i32> {
        // SAFETY: an open object.
        match unsafe { xenrs_xbbd_vn_discard(self.inner.v.as_ptr(), offset, len) } {
            0 => Ok(()),
            e => Err(e),
        }
    }

    fn kick(&self) {
        self.kick.kick();
    }
}
