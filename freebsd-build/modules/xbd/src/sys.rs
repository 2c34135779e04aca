//! The FreeBSD side of xbd.ko: the C shim's functions (`xbd_kmod.c`), the kernel
//! implementation of [`DiskKpi`], the per-disk softc (its locks and taskqueue are
//! `freebsd_kpi`'s shared glue, which xen.ko exports), and the `extern "C"` entry points the
//! shim calls (`d_strategy`, sysctl leaves).
//!
//! This is the only part of the crate with `unsafe`: each block says why it holds.
#![allow(unsafe_code)]

use core::ffi::{c_char, c_int, c_uint, c_void, CStr};
use core::ptr::NonNull;

use xen_blkback::proto::PAGE_SIZE;
use xen_shmem::SharedMem;

use freebsd_kpi::device::{self, DeviceGlue};
use freebsd_kpi::taskqueue::Priority;

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

/// xbd's side of the shared per-device softc ([`freebsd_kpi::device`]): the device is a
/// [`GeomDisk`], the work waiting for its lock bios from `d_strategy` (completed with `ENXIO`
/// when the device is gone).
#[derive(Debug)]
pub enum Glue {}

impl DeviceGlue for Glue {
    type Dev = dyn GeomDisk;
    type Work = BioRequest;
    type Out = ();
    const NAME: &'static CStr = c"xbd";
    const QUEUE_NAME: &'static CStr = c"xbd";
    const PRIORITY: Priority = Priority::Bio;
    // GEOM bounds what is in flight; a bio is never refused for want of queue space.
    const QUEUE_MAX: usize = usize::MAX;

    fn run(dev: Option<&mut (dyn GeomDisk + 'static)>, req: BioRequest) {
        match dev {
            Some(d) => d.strategy(req),
            None => biodone(&req, crate::disk::errno::ENXIO),
        }
    }

    fn event(dev: &mut (dyn GeomDisk + 'static), (): &mut ()) -> device::Again {
        match dev.event() {
            Again::No => device::Again::No,
            Again::Soon => device::Again::Soon,
            Again::Later => device::Again::Later(RETRY_MS),
        }
    }

    fn finish((): ()) {}

    const SYSCTL_ATTACH: unsafe extern "C" fn(*mut c_void, u32) -> *mut c_void =
        xenrs_xbd_sysctl_attach;
    const SYSCTL_DETACH: unsafe extern "C" fn(*mut c_void) = xenrs_xbd_sysctl_detach;
}

/// Completes a bio that never reached the device.
fn biodone(req: &BioRequest, error: c_int) {
    // SAFETY: the bio's handle from d_strategy, completed once (it was not handed to the
    // device).
    unsafe { xenrs_xbd_biodone(req.handle.0 as *mut c_void, error, req.length) };
}

/// How soon held grants are retried (the backend still maps pages of completed bios).
pub const RETRY_MS: u32 = 250;

/// The per-disk object whose address is `d_drv1` and the softc of its sysctl leaves.
pub type Softc = device::Softc<Glue>;
/// An attached disk's softc, owned by the driver until [`SoftcBox::free`].
pub type SoftcBox = device::SoftcBox<Glue>;
/// The event handlers' way to the softc.
pub type EventSink = device::EventSink<Glue>;

/// The kernel disk layer for `softc`'s disk.
pub fn kernel(softc: &SoftcBox) -> Kernel {
    Kernel {
        softc: softc.as_raw(),
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
    let softc = unsafe { Softc::from_raw(softc) };
    if let Err(req) = softc.push(req) {
        // Not reached (the queue is unbounded); completing it beats losing it.
        biodone(&req, crate::disk::errno::ENXIO);
    }
}

/// A `dev.xbd.<unit>` leaf, called by xen.ko's sysctl handler (`XENRS_SYSCTL_DEV`).
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
    let softc = unsafe { Softc::from_raw(softc) };
    let Ok(which) = u32::try_from(which) else {
        return 2;
    };
    match softc.peek(|dev| dev.as_ref().and_then(|d| d.stat(which))) {
        Some(v) => {
            // SAFETY: valid for a u64 write by the caller's contract.
            unsafe { out.write(v) };
            0
        }
        // ENOENT
        None => 2,
    }
}
