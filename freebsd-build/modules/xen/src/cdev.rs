//! The Dom0 character devices: the Rust side of the shim's `cdevsw` entry points for
//! `/dev/xen/evtchn`, `/dev/xen/xenstore`, `/dev/xen/privcmd` and `/dev/xen/gntdev`,
//! forwarding to the platform-neutral device cores (`xen_evtchn::dev`, `xen_xenbus::xsdev`,
//! `xen_kmod::privcmd`, `xen_gnttab::gntdev`); `mmap` and the pager are in `gntdev.rs`.
//!
//! The shim keeps one `struct xenrs_cfile` per open (its `cdevpriv`): it passes that
//! cookie to [`xenrs_cdev_open`], gets back this side's handle, and does the user-memory
//! work (`uiomove`, the ioctl argument copy FreeBSD's `ioctl(2)` already made, sleeping and
//! `selrecord` for blocking reads and `poll`). Every call here is short and never sleeps for
//! user input; errors are FreeBSD errnos, and a refused call changes nothing (the cores
//! guarantee that for their ioctls). Each open file holds xen.ko (unload is `EBUSY`).
//!
//! This is a KPI layer (C callers, raw pointers): each `unsafe` block says why it is sound.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ffi::{c_int, c_void};
use core::sync::atomic::Ordering;

use freebsd_kpi::sync::SxLock;
use freebsd_kpi::Errno;
use xen_evtchn::dev::EvtchnFile;
use xen_kmod::privcmd::{
    self, FileId, Privcmd, PrivcmdHypervisor, PrivcmdOp, PrivcmdPlatform, RegionId,
};
use xen_kmod::{Hypervisor, XenError};
use xen_xenbus::xsdev::{self, XsDevFile};

use crate::platform::Platform;
use crate::{XenModule, MODULE_SLOT};

/// Device kinds (the shim's `si_drv1`).
pub const KIND_EVTCHN: c_int = 0;
/// `/dev/xen/xenstore`.
pub const KIND_XENSTORE: c_int = 1;
/// `/dev/xen/privcmd`.
pub const KIND_PRIVCMD: c_int = 2;
/// `/dev/xen/xenstored`: the local xenstore ring and port, for the control domain's
/// xenstored (read: the port in decimal; mmap: the ring page).
pub const KIND_XENSTORED: c_int = 3;
/// `/dev/xen/gntdev`.
pub const KIND_GNTDEV: c_int = 4;

/// Tokens of event-channel files start here (0 is the xenstore port, 1 the drivers').
pub const FILE_TOKEN_BASE: u64 = 0x1000;

/// One open file's state.
#[derive(Debug)]
pub enum DevFile {
    /// `/dev/xen/evtchn`.
    Evtchn(EvtchnFile),
    /// `/dev/xen/xenstore`; `None` once closed.
    Xenstore(Option<XsDevFile>),
    /// `/dev/xen/privcmd`.
    Privcmd(FileId),
    /// `/dev/xen/xenstored`.
    Xenstored,
    /// `/dev/xen/gntdev`.
    Gntdev(xen_gnttab::gntdev::FileId),
}

/// An open file: the shim's cookie (for wakeups) and the state.
#[derive(Debug)]
pub struct OpenFile {
    /// The shim's `struct xenrs_cfile *`, as an address.
    pub cookie: usize,
    /// The state, serialised per file.
    pub state: SxLock<DevFile>,
}

extern "C" {
    /// Wakes readers sleeping on the open file and its `selinfo` (`wakeup` + `selwakeup`).
    fn xenrs_kpi_cfile_wakeup(cookie: *mut c_void);
    /// `copyin(9)`: 0 or `EFAULT`.
    fn xenrs_kpi_copyin(uaddr: u64, kaddr: *mut c_void, len: usize) -> c_int;
    /// `copyout(9)`: 0 or `EFAULT`.
    fn xenrs_kpi_copyout(kaddr: *const c_void, uaddr: u64, len: usize) -> c_int;
}

fn wake(cookie: usize) {
    // SAFETY: the cookie is the shim's live per-open structure (the file is closed, and its
    // cookie forgotten, before the shim frees it).
    unsafe { xenrs_kpi_cfile_wakeup(core::ptr::with_exposed_provenance_mut(cookie)) }
}

fn errno(e: Errno) -> c_int {
    e.to_raw()
}

fn sys_errno(e: xen_sys::freebsd::Errno) -> Errno {
    Errno::from_raw(e.0).unwrap_or(Errno::EIO)
}

/// privcmd's platform: a region's guest frames are the frames of kernel pages given to Xen
/// (the same slot runs gntdev maps grants into), populated again when the region goes.
#[derive(Debug)]
pub struct KRegions(crate::gntdev::Slots);

impl KRegions {
    /// Regions over hypervisor `hv`.
    #[must_use]
    pub fn new(hv: crate::platform::Hv) -> Self {
        KRegions(crate::gntdev::Slots::new(hv))
    }
}

impl PrivcmdPlatform for KRegions {
    fn reserve_gfns(&mut self, count: u64) -> Option<u64> {
        use xen_gnttab::ForeignMemory;
        let count = u32::try_from(count).ok()?;
        self.0.reserve(count).map(|pa| pa / 4096)
    }
    fn release_gfns(&mut self, start: u64, count: u64) {
        use xen_gnttab::ForeignMemory;
        if let (Some(pa), Ok(count)) = (start.checked_mul(4096), u32::try_from(count)) {
            self.0.release(pa, count);
        }
    }
}

/// `struct xen_mem_acquire_resource` in the native layout (the frame list a native pointer).
#[repr(C)]
struct AcquireResource {
    domid: u16,
    type_: u16,
    id: u32,
    nr_frames: u32,
    pad: u32,
    frame: u64,
    frame_list: usize,
}

/// `struct xen_add_to_physmap_batch` in the native layout: four `u16`, then three guest
/// handles (native pointers).
#[repr(C)]
struct AddToPhysmapBatch {
    domid: u16,
    space: u16,
    size: u16,
    foreign_domid: u16,
    idxs: usize,
    gpfns: usize,
    errs: usize,
}

/// The hypervisor as privcmd sees it: the platform's, plus the raw trap for
/// `IOCTL_PRIVCMD_HYPERCALL`.
pub(crate) struct PrivHv<'a>(pub(crate) &'a Platform);

impl Hypervisor for PrivHv<'_> {
    fn event_channel_op(&self, op: xen_kmod::EventChannelOp<'_>) -> Result<(), XenError> {
        self.0.hv.event_channel_op(op)
    }
    fn grant_table_op(&self, op: xen_kmod::GrantTableOp<'_>) -> Result<(), XenError> {
        self.0.hv.grant_table_op(op)
    }
    fn memory_op(&self, op: xen_kmod::MemoryOp<'_>) -> Result<u64, XenError> {
        self.0.hv.memory_op(op)
    }
    fn hvm_op(&self, op: xen_kmod::HvmOp<'_>) -> Result<(), XenError> {
        self.0.hv.hvm_op(op)
    }
    fn sched_op(&self, op: xen_kmod::SchedOp<'_>) -> Result<u64, XenError> {
        self.0.hv.sched_op(op)
    }
    fn vcpu_op(&self, vcpu: u32, op: xen_kmod::VcpuOp<'_>) -> Result<u64, XenError> {
        self.0.hv.vcpu_op(vcpu, op)
    }
    fn xen_version(&self, op: xen_kmod::XenVersionOp<'_>) -> Result<u64, XenError> {
        self.0.hv.xen_version(op)
    }
}

impl PrivcmdHypervisor for PrivHv<'_> {
    fn privcmd_op(&self, op: PrivcmdOp<'_>) -> Result<u64, XenError> {
        match op {
            PrivcmdOp::Raw { op, args } => {
                let op = u32::try_from(op).map_err(|_| XenError::ENOSYS)?;
                let mut a = [0usize; 5];
                for (d, s) in a.iter_mut().zip(args) {
                    *d = usize::try_from(s).map_err(|_| XenError::EINVAL)?;
                }
                let r = (self.0.raw)(&xen_kmod::arch::marshal::RawCall { op, args: a });
                // CAST: isize is at most 64 bits on our targets.
                XenError::from_return(r as i64)
            }
            PrivcmdOp::DmOp { domid, bufs } => {
                // `struct xen_dm_op_buf { XEN_GUEST_HANDLE(void) h; xen_ulong_t size; }`: two
                // native words each, pointing at the kernel copies (Xen may write into them).
                let descs: Vec<[usize; 2]> = bufs
                    .iter_mut()
                    .map(|b| [b.as_mut_ptr().expose_provenance(), b.len()])
                    .collect();
                let call = xen_kmod::arch::marshal::RawCall {
                    op: xen_sys::native::__HYPERVISOR_dm_op,
                    args: [
                        usize::from(domid),
                        descs.len(),
                        descs.as_ptr().expose_provenance(),
                        0,
                        0,
                    ],
                };
                let r = (self.0.raw)(&call);
                // CAST: isize is at most 64 bits on our targets.
                XenError::from_return(r as i64)
            }
            PrivcmdOp::MapForeign {
                foreign_domid,
                idxs,
                gpfns,
                errs,
            } => {
                // xen_ulong_t and xen_pfn_t are native words; errs are C ints.
                let native = |v: &[u64]| -> Result<Vec<usize>, XenError> {
                    v.iter()
                        .map(|&x| usize::try_from(x).map_err(|_| XenError::EINVAL))
                        .collect()
                };
                let idxs = native(idxs)?;
                let gpfns = native(gpfns)?;
                let size = u16::try_from(idxs.len()).map_err(|_| XenError::EINVAL)?;
                if gpfns.len() != idxs.len() || errs.len() != idxs.len() {
                    return Err(XenError::EINVAL);
                }
                let space = u16::try_from(xen_sys::native::XENMAPSPACE_gmfn_foreign)
                    .map_err(|_| XenError::EINVAL)?;
                let subop = usize::try_from(xen_sys::native::XENMEM_add_to_physmap_batch)
                    .map_err(|_| XenError::EINVAL)?;
                let batch = AddToPhysmapBatch {
                    domid: xen_kmod::DOMID_SELF,
                    space,
                    size,
                    foreign_domid,
                    idxs: idxs.as_ptr().expose_provenance(),
                    gpfns: gpfns.as_ptr().expose_provenance(),
                    errs: errs.as_mut_ptr().expose_provenance(),
                };
                let call = xen_kmod::arch::marshal::RawCall {
                    op: xen_sys::native::__HYPERVISOR_memory_op,
                    args: [
                        subop,
                        core::ptr::from_ref(&batch).expose_provenance(),
                        0,
                        0,
                        0,
                    ],
                };
                let r = (self.0.raw)(&call);
                // CAST: isize is at most 64 bits on our targets.
                XenError::from_return(r as i64)
            }
            PrivcmdOp::AcquireResource {
                domid,
                type_,
                id,
                frame,
                nr_frames,
                frames,
            } => {
                let list = frames
                    .iter()
                    .map(|&x| usize::try_from(x).map_err(|_| XenError::EINVAL))
                    .collect::<Result<Vec<usize>, _>>()?;
                let mut req = AcquireResource {
                    domid,
                    type_,
                    id,
                    nr_frames: if list.is_empty() {
                        0
                    } else {
                        u32::try_from(list.len()).map_err(|_| XenError::EINVAL)?
                    },
                    pad: 0,
                    frame,
                    frame_list: if list.is_empty() {
                        0
                    } else {
                        list.as_ptr().expose_provenance()
                    },
                };
                let subop = usize::try_from(xen_sys::native::XENMEM_acquire_resource)
                    .map_err(|_| XenError::EINVAL)?;
                let call = xen_kmod::arch::marshal::RawCall {
                    op: xen_sys::native::__HYPERVISOR_memory_op,
                    args: [
                        subop,
                        core::ptr::from_mut(&mut req).expose_provenance(),
                        0,
                        0,
                        0,
                    ],
                };
                let r = (self.0.raw)(&call);
                // Xen reads the request in place; the size query's answer comes back in it.
                // SAFETY: `req` is a live local Xen may have written; read it back volatile
                // so the write is not assumed away.
                *nr_frames = unsafe { core::ptr::addr_of!(req.nr_frames).read_volatile() };
                // CAST: isize is at most 64 bits on our targets.
                XenError::from_return(r as i64)
            }
        }
    }
}

/// The calling process's memory, through `copyin`/`copyout`.
struct User;

impl privcmd::UserContext for User {
    fn copyin(&mut self, addr: u64, dst: &mut [u8]) -> Result<(), xen_sys::freebsd::Errno> {
        // SAFETY: `dst` is a live kernel buffer of `dst.len()` bytes; copyin checks `addr`.
        match unsafe { xenrs_kpi_copyin(addr, dst.as_mut_ptr().cast(), dst.len()) } {
            0 => Ok(()),
            _ => Err(xen_sys::freebsd::Errno::EFAULT),
        }
    }
    fn copyout(&mut self, addr: u64, src: &[u8]) -> Result<(), xen_sys::freebsd::Errno> {
        // SAFETY: `src` is a live kernel buffer; copyout checks `addr`.
        match unsafe { xenrs_kpi_copyout(src.as_ptr().cast(), addr, src.len()) } {
            0 => Ok(()),
            _ => Err(xen_sys::freebsd::Errno::EFAULT),
        }
    }
    fn lookup_vaddr(&mut self, vaddr: u64) -> Option<(RegionId, u64, u64)> {
        let (object, start, size) = lookup_vaddr(vaddr)?;
        MODULE_SLOT
            .with(|m| m.vm_objects.lock().get(&object)?.region())
            .flatten()
            .map(|r| (r, start, size))
    }
}

/// The calling process for gntdev: its memory, and (for `GET_OFFSET_FOR_VADDR`) the
/// gntdev object mapped at an address, which the shim looks up in the process's VM map.
struct GntUser<'a>(&'a XenModule);

extern "C" {
    /// The shim's handle of the gntdev VM object mapping `vaddr` in the calling process,
    /// and that map entry's size; 0 or `ENOENT`.
    fn xenrs_kpi_gntdev_lookup_vaddr(
        vaddr: u64,
        object: *mut u64,
        start: *mut u64,
        size: *mut u64,
    ) -> c_int;
}

/// The shim's handle of the xen.ko VM object mapped at `vaddr`, the map entry's start and size.
fn lookup_vaddr(vaddr: u64) -> Option<(u64, u64, u64)> {
    let mut object = 0u64;
    let mut start = 0u64;
    let mut size = 0u64;
    // SAFETY: the out-pointers are live locals.
    match unsafe { xenrs_kpi_gntdev_lookup_vaddr(vaddr, &mut object, &mut start, &mut size) } {
        0 => Some((object, start, size)),
        _ => None,
    }
}

impl xen_gnttab::gntdev::UserContext for GntUser<'_> {
    fn copyin(&mut self, addr: u64, dst: &mut [u8]) -> Result<(), xen_sys::freebsd::Errno> {
        privcmd::UserContext::copyin(&mut User, addr, dst)
    }
    fn copyout(&mut self, addr: u64, src: &[u8]) -> Result<(), xen_sys::freebsd::Errno> {
        privcmd::UserContext::copyout(&mut User, addr, src)
    }
    fn lookup_vaddr(&mut self, vaddr: u64) -> Option<(xen_gnttab::gntdev::ObjectId, u64)> {
        let (object, _, size) = lookup_vaddr(vaddr)?;
        let id = self.0.vm_objects.lock().get(&object)?.object_id()?;
        Some((id, size))
    }
}

/// A file `mmap(2)` can map.
pub(crate) enum Mappable {
    /// A gntdev file.
    Gntdev(xen_gnttab::gntdev::FileId),
    /// A privcmd file (regions are per device, not per file).
    Privcmd,
}

/// Runs `f` with what file `handle` can mmap, its state lock held.
pub(crate) fn with_mappable_file<R>(
    handle: u64,
    f: impl FnOnce(&XenModule, Mappable) -> Result<R, Errno>,
) -> Result<R, Errno> {
    with_module(|m, _| {
        let file = file(m, handle)?;
        let st = file.state.lock();
        match &*st {
            DevFile::Gntdev(id) => f(m, Mappable::Gntdev(*id)),
            DevFile::Privcmd(_) => f(m, Mappable::Privcmd),
            _ => Err(Errno::ENODEV),
        }
    })
}

/// The privcmd device state (one per module).
pub type PrivcmdDev = Privcmd<KRegions>;

fn with_module<R>(f: impl FnOnce(&XenModule, &Platform) -> Result<R, Errno>) -> Result<R, Errno> {
    MODULE_SLOT
        .with(|m| match m.platform() {
            Some(p) => f(m, p),
            None => Err(Errno::ENXIO),
        })
        .unwrap_or(Err(Errno::ENXIO))
}

fn file(m: &XenModule, handle: u64) -> Result<Arc<OpenFile>, Errno> {
    m.files.lock().get(&handle).cloned().ok_or(Errno::EBADF)
}

/// `d_open`: a new open file of `kind`; its handle in `*out`.
///
/// # Safety
/// `out` is writable; `cookie` stays valid until [`xenrs_cdev_close`] returns.
#[no_mangle]
pub unsafe extern "C" fn xenrs_cdev_open(kind: c_int, cookie: *mut c_void, out: *mut u64) -> c_int {
    if out.is_null() {
        return errno(Errno::EINVAL);
    }
    let r = with_module(|m, p| {
        let token = m.next_token.fetch_add(1, Ordering::Relaxed);
        let state = match kind {
            KIND_EVTCHN => DevFile::Evtchn(EvtchnFile::new(token).map_err(sys_errno)?),
            KIND_XENSTORE => DevFile::Xenstore(Some(XsDevFile::new(xsdev::Config {
                privileged: p.domid == 0,
                ..xsdev::Config::default()
            }))),
            KIND_PRIVCMD => DevFile::Privcmd(m.privcmd.lock().open()),
            KIND_XENSTORED if p.store.local_pa().is_some() => DevFile::Xenstored,
            KIND_GNTDEV => DevFile::Gntdev(m.gntdev.lock().open()),
            _ => return Err(Errno::ENXIO),
        };
        let f = Arc::new(OpenFile {
            cookie: cookie.expose_provenance(),
            state: SxLock::new(c"xenrs cdev", state)?,
        });
        m.files.lock().insert(token, f);
        m.acquire();
        Ok(token)
    });
    match r {
        Ok(token) => {
            // SAFETY: writable by the caller's contract.
            unsafe { out.write(token) };
            0
        }
        Err(e) => errno(e),
    }
}

/// `cdevpriv` destructor (last close): releases everything the file holds.
#[no_mangle]
pub extern "C" fn xenrs_cdev_close(handle: u64) {
    let _ = with_module(|m, p| {
        let f = m.files.lock().remove(&handle).ok_or(Errno::EBADF)?;
        let mut st = f.state.lock();
        match &mut *st {
            DevFile::Evtchn(ef) => ef.release(&mut *p.evtchn.lock()),
            DevFile::Xenstore(xf) => {
                if let Some(xf) = xf.take() {
                    let mut xs = p.xs.lock();
                    let mut cleanup = xf.close(xs.client_mut());
                    // What could not be sent now is retried by the xenbus thread.
                    if !cleanup.retry(xs.client_mut()) {
                        m.xs_cleanups.lock().push(cleanup);
                    }
                    let _ = xs.pump();
                }
            }
            DevFile::Privcmd(id) => m.privcmd.lock().close(*id),
            DevFile::Xenstored => {}
            // Allocations and mappings still mmapped live on until their VM objects go.
            DevFile::Gntdev(id) => m.gntdev.lock().close(*id),
        }
        drop(st);
        m.release();
        Ok(())
    });
}

/// `d_read` into a kernel buffer: bytes read in `*done`; `EAGAIN` when nothing is queued
/// (the shim sleeps or returns `EWOULDBLOCK` for non-blocking files).
///
/// # Safety
/// `buf` writable for `len` bytes, `done` writable.
#[no_mangle]
pub unsafe extern "C" fn xenrs_cdev_read(
    handle: u64,
    buf: *mut u8,
    len: usize,
    done: *mut usize,
) -> c_int {
    if buf.is_null() || done.is_null() {
        return errno(Errno::EINVAL);
    }
    let mut tmp = Vec::new();
    if tmp.try_reserve_exact(len.min(65536)).is_err() {
        return errno(Errno::ENOMEM);
    }
    tmp.resize(len.min(65536), 0);
    let r = with_module(|m, p| {
        let f = file(m, handle)?;
        let mut st = f.state.lock();
        match &mut *st {
            DevFile::Evtchn(ef) => ef.read(&mut tmp).map_err(sys_errno),
            DevFile::Xenstore(Some(xf)) => {
                xf.poll(p.xs.lock().client_mut());
                xf.read(&mut tmp).map_err(sys_errno)
            }
            DevFile::Xenstore(None) => Err(Errno::EBADF),
            DevFile::Privcmd(_) | DevFile::Gntdev(_) => Err(Errno::ENODEV),
            DevFile::Xenstored => {
                // The port, in decimal, as xenstored reads it.
                let text = alloc::format!("{}", p.store_port);
                let n = text.len().min(tmp.len());
                tmp[..n].copy_from_slice(&text.as_bytes()[..n]);
                Ok(n)
            }
        }
    });
    match r {
        Ok(n) => {
            let n = n.min(tmp.len());
            // SAFETY: writable for `len` >= n bytes and `done` writable, by the contract.
            unsafe {
                core::ptr::copy_nonoverlapping(tmp.as_ptr(), buf, n);
                done.write(n);
            }
            0
        }
        Err(e) => errno(e),
    }
}

/// `d_write` from a kernel buffer: bytes consumed in `*done`.
///
/// # Safety
/// `buf` readable for `len` bytes, `done` writable.
#[no_mangle]
pub unsafe extern "C" fn xenrs_cdev_write(
    handle: u64,
    buf: *const u8,
    len: usize,
    done: *mut usize,
) -> c_int {
    if buf.is_null() || done.is_null() {
        return errno(Errno::EINVAL);
    }
    // SAFETY: readable for `len` bytes by the caller's contract; copied once before use.
    let data: Vec<u8> = unsafe { core::slice::from_raw_parts(buf, len) }.to_vec();
    let r = with_module(|m, p| {
        let f = file(m, handle)?;
        let mut st = f.state.lock();
        match &mut *st {
            DevFile::Evtchn(ef) => ef.write(&mut *p.evtchn.lock(), &data).map_err(sys_errno),
            DevFile::Xenstore(Some(xf)) => {
                let mut xs = p.xs.lock();
                let n = xf.write(xs.client_mut(), &data).map_err(sys_errno)?;
                // Send now; replies arrive through the xenbus thread's pump.
                let _ = xs.pump();
                drop(xs);
                crate::kpi::kick(crate::kpi::Task::Xenbus);
                Ok(n)
            }
            DevFile::Xenstore(None) => Err(Errno::EBADF),
            DevFile::Privcmd(_) | DevFile::Xenstored | DevFile::Gntdev(_) => Err(Errno::ENODEV),
        }
    });
    match r {
        Ok(n) => {
            // SAFETY: writable by the caller's contract.
            unsafe { done.write(n) };
            0
        }
        Err(e) => errno(e),
    }
}

/// `d_ioctl`: `data` is the kernel copy of the argument (`len` = `IOCPARM_LEN(cmd)` bytes),
/// which FreeBSD copies back out on success.
///
/// # Safety
/// `data` readable and writable for `len` bytes (or NULL with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn xenrs_cdev_ioctl(
    handle: u64,
    cmd: u64,
    data: *mut u8,
    len: usize,
) -> c_int {
    if data.is_null() && len != 0 {
        return errno(Errno::EINVAL);
    }
    let mut empty = [0u8; 0];
    let arg: &mut [u8] = if len == 0 {
        &mut empty
    } else {
        // SAFETY: readable and writable for `len` bytes by the caller's contract, and not
        // aliased during the call (the kernel's ioctl buffer).
        unsafe { core::slice::from_raw_parts_mut(data, len) }
    };
    let r = with_module(|m, p| {
        let f = file(m, handle)?;
        let mut st = f.state.lock();
        match &mut *st {
            DevFile::Evtchn(ef) => ef.ioctl(&mut *p.evtchn.lock(), cmd, arg).map_err(sys_errno),
            DevFile::Xenstore(_) | DevFile::Xenstored => Err(Errno::ENOTTY),
            DevFile::Privcmd(id) => {
                let cmd = u32::try_from(cmd).map_err(|_| Errno::ENOSYS)?;
                m.privcmd
                    .lock()
                    .ioctl(
                        &PrivHv(p),
                        *id,
                        privcmd::abi::Abi::NATIVE,
                        cmd,
                        arg,
                        &mut User,
                    )
                    .map_err(sys_errno)
            }
            DevFile::Gntdev(id) => {
                let cmd = u32::try_from(cmd).map_err(|_| Errno::ENOSYS)?;
                m.gntdev
                    .lock()
                    .ioctl(
                        *id,
                        xen_gnttab::gntdev::abi::Abi::NATIVE,
                        cmd,
                        arg,
                        &mut GntUser(m),
                    )
                    .map_err(sys_errno)
            }
        }
    });
    r.err().map_or(0, errno)
}

/// `d_poll`: whether a read would return data now.
#[no_mangle]
pub extern "C" fn xenrs_cdev_readable(handle: u64) -> c_int {
    with_module(|m, p| {
        let f = file(m, handle)?;
        let mut st = f.state.lock();
        Ok(match &mut *st {
            DevFile::Evtchn(ef) => ef.readable() || ef.overflowed(),
            DevFile::Xenstore(Some(xf)) => {
                xf.poll(p.xs.lock().client_mut());
                xf.readable()
            }
            DevFile::Xenstored => true,
            DevFile::Xenstore(None) | DevFile::Privcmd(_) | DevFile::Gntdev(_) => false,
        })
    })
    .map_or(0, c_int::from)
}

/// `d_mmap` of `/dev/xen/xenstored`: the physical address behind `offset` (only the one
/// ring page exists).
///
/// # Safety
/// `paddr` writable.
#[no_mangle]
pub unsafe extern "C" fn xenrs_cdev_mmap_paddr(kind: c_int, offset: u64, paddr: *mut u64) -> c_int {
    if paddr.is_null() || kind != KIND_XENSTORED || offset >= 4096 {
        return errno(Errno::EINVAL);
    }
    match with_module(|_, p| p.store.local_pa().ok_or(Errno::ENODEV)) {
        Ok(pa) => {
            // SAFETY: writable by the caller's contract.
            unsafe { paddr.write(pa + (offset & !0xfff)) };
            0
        }
        Err(e) => errno(e),
    }
}

/// An event for an event-channel file's port (from the events task).
pub(crate) fn deliver_evtchn(m: &XenModule, token: u64, port: u32) -> bool {
    let Some(f) = m.files.lock().get(&token).cloned() else {
        return false;
    };
    let mut st = f.state.lock();
    if let DevFile::Evtchn(ef) = &mut *st {
        ef.deliver(port);
        drop(st);
        wake(f.cookie);
        return true;
    }
    false
}

/// The xenstore files' share of the xenbus task: retry close clean-ups, hand watch events
/// to their files, collect replies, wake readers.
pub(crate) fn service_xenstore(
    m: &XenModule,
    p: &Platform,
    event: Option<(xen_xenbus::WatchId, xen_xenbus::WatchEvent)>,
) -> Option<(xen_xenbus::WatchId, xen_xenbus::WatchEvent)> {
    let files: Vec<Arc<OpenFile>> = m.files.lock().values().cloned().collect();
    let mut event = event;
    for f in files {
        let mut st = f.state.lock();
        let DevFile::Xenstore(Some(xf)) = &mut *st else {
            continue;
        };
        if let Some((id, _)) = &event {
            if xf.owns_watch(*id) {
                if let Some((id, ev)) = event.take() {
                    xf.deliver_event(id, ev);
                }
            }
        }
        let woke = xf.poll(p.xs.lock().client_mut());
        drop(st);
        if woke {
            wake(f.cookie);
        }
    }
    event
}

/// Retries pending xenstore close clean-ups.
pub(crate) fn retry_cleanups(m: &XenModule, p: &Platform) {
    let mut pending = m.xs_cleanups.lock();
    if pending.is_empty() {
        return;
    }
    let mut xs = p.xs.lock();
    pending.retain_mut(|c| !c.retry(xs.client_mut()));
    let _ = xs.pump();
}

/// Open files by handle (= their event token).
pub type Files = alloc::collections::BTreeMap<u64, Arc<OpenFile>>;
