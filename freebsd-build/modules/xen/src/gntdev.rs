//! `/dev/xen/gntdev`: the kernel side of the platform-neutral core
//! (`xen_gnttab::gntdev`), and the VM objects its `mmap` hands to the shim.
//!
//! Allocated pages (`IOCTL_GNTDEV_ALLOC_GREF`) are xen.ko page runs of one page each,
//! granted through xen.ko's grant table (the same exports a driver module uses, so a
//! revocation the peer defers holds the page and a use of the module until the peer lets
//! go). Foreign grants (`IOCTL_GNTDEV_MAP_GRANT_REF`) are mapped at `mmap` time into a
//! *slot run*: kernel pages whose frames are handed back to Xen
//! (`XENMEM_decrease_reservation`) so that `GNTTABOP_map_grant_ref` with `GNTMAP_host_map`
//! can place the foreign pages at those guest-physical addresses (HVM/PVH). When the grants
//! are unmapped the frames are populated again and the pages freed; a run Xen refuses to
//! repopulate, or whose unmap failed, is never reused.
//!
//! Every `mmap` becomes one VM object in the shim (`cdev_pager_allocate`, a device pager
//! whose fault handler asks [`xenrs_gntdev_fault`] for the physical address of a page) with
//! a handle of its own, so each object's destructor ([`xenrs_gntdev_object_released`]) ends
//! exactly one mmap in the core. The grants behind an object are unmapped only after that
//! destructor ran, i.e. after every user mapping of it is gone. Each live object holds a
//! use of xen.ko, so `kldunload` is refused while a mapping lives.
//!
//! This is a KPI layer (C callers, raw pointers): each `unsafe` block says why it is sound.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::ffi::c_int;
use core::sync::atomic::{AtomicU64, Ordering};

use freebsd_kpi::Errno;
use xen_gnttab::gntdev::{Gntdev, GntdevPlatform, MmapTarget, ObjectId};
use xen_gnttab::{ForeignMapping, ForeignMemory, GrantError, GrantRef, MapRangeError, Revoke};
use xen_kmod::HypervisorExt;
use xen_shmem::SharedMem;

use crate::kpi::KPages;
use crate::platform::Hv;

const PAGE: u64 = 4096;

/// Reserved guest-physical slot runs, by physical address of the first page.
pub struct Slots {
    hv: Hv,
    runs: RefCell<BTreeMap<u64, KPages>>,
}

/// Hands frame `gfn` to Xen (`give`) or populates it again; one frame per call.
fn reservation(hv: Hv, gfn: u64, give: bool) -> bool {
    let Some(pfn) = crate::platform::xen_pfn(gfn) else {
        return false;
    };
    let mut extents = [pfn];
    let mut args = xen_sys::native::xen_memory_reservation {
        nr_extents: 1,
        domid: xen_kmod::DOMID_SELF,
        ..Default::default()
    };
    let r = if give {
        hv.memory_op(xen_kmod::MemoryOp::DecreaseReservation {
            args: &mut args,
            extents: &mut extents,
        })
    } else {
        hv.memory_op(xen_kmod::MemoryOp::PopulatePhysmap {
            args: &mut args,
            extents: &mut extents,
        })
    };
    r == Ok(1)
}

impl core::fmt::Debug for Slots {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Slots")
            .field("runs", &self.runs.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Slots {
    /// No runs yet, over hypervisor `hv`.
    #[must_use]
    pub fn new(hv: Hv) -> Self {
        Slots {
            hv,
            runs: RefCell::new(BTreeMap::new()),
        }
    }

    /// Frames `first..first + n` populated again; the run freed if all came back, leaked
    /// (never reused) otherwise.
    fn give_back(&self, run: KPages, n: u32) {
        let first = run.gfn();
        let all = (0..u64::from(n)).all(|i| reservation(self.hv, first + i, false));
        if all && n == run.count() {
            drop(run);
        } else {
            run.leak();
        }
    }
}

impl ForeignMemory<'static> for Slots {
    fn reserve(&self, count: u32) -> Option<u64> {
        let run = KPages::alloc(count, false).ok()?;
        let first = run.gfn();
        for i in 0..count {
            if !reservation(self.hv, first + u64::from(i), true) {
                self.give_back(run, i);
                return None;
            }
        }
        let pa = run.pa();
        self.runs.borrow_mut().insert(pa, run);
        Some(pa)
    }

    fn release(&self, host_addr: u64, count: u32) {
        let Some(run) = self.runs.borrow_mut().remove(&host_addr) else {
            return;
        };
        if run.count() == count {
            self.give_back(run, count);
        } else {
            // Not a run we reserved with this size: keep it out of use for good.
            run.leak();
        }
    }

    fn view(&self, host_addr: u64) -> Option<SharedMem<'static>> {
        let runs = self.runs.borrow();
        let (&pa, run) = runs.range(..=host_addr).next_back()?;
        let off = usize::try_from(host_addr - pa).ok()?;
        run.shared().ok()?.subrange(off, 4096).ok()
    }
}

/// The kernel services of the gntdev core.
#[derive(Debug)]
pub struct KGntdev {
    slots: Slots,
    /// Our allocated pages: frame → the page's kernel address.
    own: BTreeMap<u64, usize>,
    /// Live grants of our pages: reference → frame.
    granted: BTreeMap<u32, u64>,
}

impl KGntdev {
    /// Services over hypervisor `hv`.
    #[must_use]
    pub fn new(hv: Hv) -> Self {
        KGntdev {
            slots: Slots {
                hv,
                runs: RefCell::new(BTreeMap::new()),
            },
            own: BTreeMap::new(),
            granted: BTreeMap::new(),
        }
    }

    /// Slot runs reserved now (tests).
    #[must_use]
    pub fn slot_runs(&self) -> usize {
        self.slots.runs.borrow().len()
    }

    fn free_own(&mut self, gfn: u64) {
        if let Some(va) = self.own.remove(&gfn) {
            // Held by xen.ko while a deferred revocation still covers the frame.
            crate::services::xenrs_pages_free(core::ptr::with_exposed_provenance_mut(va), 1);
        }
    }
}

impl GntdevPlatform for KGntdev {
    type Notify = u32;

    fn alloc_page(&mut self) -> Option<u64> {
        let mut va = core::ptr::null_mut();
        let mut gfn = 0u64;
        // SAFETY: both out-pointers are live locals.
        if unsafe { crate::services::xenrs_pages_alloc(1, &mut va, &mut gfn) } != 0 {
            return None;
        }
        self.own.insert(gfn, va.expose_provenance());
        Some(gfn)
    }

    fn free_page(&mut self, gfn: u64) {
        self.free_own(gfn);
    }

    fn grant(&mut self, domid: u16, gfn: u64, readonly: bool) -> Result<GrantRef, GrantError> {
        let mut gref = 0u32;
        // SAFETY: `gref` is a live local.
        let rc = unsafe {
            crate::services::xenrs_grant_access(
                u32::from(domid),
                gfn,
                c_int::from(readonly),
                &mut gref,
            )
        };
        if rc != 0 {
            return Err(GrantError::NoFreeRefs);
        }
        self.granted.insert(gref, gfn);
        Ok(GrantRef::from_foreign_table(gref))
    }

    fn revoke(&mut self, r: GrantRef) -> Revoke {
        let raw = r.raw();
        let mut deferred: c_int = 0;
        // SAFETY: `deferred` is a live local.
        let rc = unsafe { crate::services::xenrs_grant_revoke(raw, &mut deferred) };
        let gfn = self.granted.remove(&raw);
        if rc == 0 && deferred != 0 {
            // xen.ko holds the reference until the peer lets go; giving the page back now
            // makes xen.ko hold the page too (it is covered by the deferred revocation).
            if let Some(gfn) = gfn {
                self.free_own(gfn);
            }
            return Revoke::Deferred;
        }
        Revoke::Done
    }

    fn map(
        &mut self,
        refs: &[(u16, u32)],
        readonly: bool,
    ) -> Result<ForeignMapping, MapRangeError> {
        ForeignMapping::map(self.slots.hv, &self.slots, refs, readonly)
    }

    fn unmap(&mut self, m: ForeignMapping) -> Result<(), ForeignMapping> {
        m.unmap(self.slots.hv, &self.slots).map_err(|(m, _)| m)
    }

    fn clear_byte_own(&mut self, gfn: u64, offset: usize) {
        let Some(&va) = self.own.get(&gfn) else {
            return;
        };
        if offset < 4096 {
            // SAFETY: `va` is our live page of 4096 bytes (still in `own`), `offset` is
            // inside it; the peer may access the page concurrently, hence volatile.
            unsafe {
                core::ptr::with_exposed_provenance_mut::<u8>(va + offset).write_volatile(0);
            }
        }
    }

    fn clear_byte_mapped(&mut self, m: &ForeignMapping, page: usize, offset: usize) {
        if let Some(p) = m.page(&self.slots, page) {
            let _ = p.write(offset, &[0]);
        }
    }

    fn bind_notify(&mut self, port: u32) -> Result<u32, xen_gnttab::gntdev::Errno> {
        if user_port(port) {
            Ok(port)
        } else {
            Err(xen_gnttab::gntdev::Errno::EINVAL)
        }
    }

    fn notify(&mut self, port: &u32) {
        // The file that bound it may have closed it since, and the number may now be one of
        // xen.ko's own ports: send only to a port still bound through /dev/xen/evtchn.
        if user_port(*port) {
            let _ = self.slots.hv.evtchn_send(*port);
        }
    }

    fn unbind_notify(&mut self, _port: u32) {}
}

/// Whether `port` is bound through a `/dev/xen/evtchn` file (a user's port), the only ports
/// an unmap notification may name: as Linux's gntdev (`evtchn_get` accepts only ports its
/// evtchn device made reference-counted), never a port of xen.ko or of a driver module
/// (xenstore's, a disk's or an interface's), whose peer a user must not be able to signal.
fn user_port(port: u32) -> bool {
    crate::MODULE_SLOT
        .with(|m| {
            m.platform().is_some_and(|p| {
                p.evtchn
                    .lock()
                    .lookup(port)
                    .is_some_and(|(token, _, _)| token >= crate::cdev::FILE_TOKEN_BASE)
            })
        })
        .unwrap_or(false)
}

/// The device state (one per module).
pub type GntdevDev = Gntdev<KGntdev>;

/// A VM object the shim created for one `mmap`.
#[derive(Debug)]
pub enum VmObject {
    /// Of `/dev/xen/gntdev`: the core's object and the physical address of each page.
    Gntdev {
        /// The core's object.
        object: ObjectId,
        /// Physical address of each page.
        pas: Vec<u64>,
    },
    /// Of `/dev/xen/privcmd`: a region (its pages fault in once `MMAPBATCH` filled them).
    Privcmd(xen_kmod::privcmd::RegionId),
}

impl VmObject {
    /// The gntdev core's object.
    #[must_use]
    pub fn object_id(&self) -> Option<ObjectId> {
        match self {
            VmObject::Gntdev { object, .. } => Some(*object),
            VmObject::Privcmd(_) => None,
        }
    }

    /// The privcmd region.
    #[must_use]
    pub fn region(&self) -> Option<xen_kmod::privcmd::RegionId> {
        match self {
            VmObject::Privcmd(r) => Some(*r),
            VmObject::Gntdev { .. } => None,
        }
    }
}

/// Live VM objects by the shim's handle.
pub type VmObjects = BTreeMap<u64, VmObject>;

static NEXT_OBJECT: AtomicU64 = AtomicU64::new(1);

fn errno(e: Errno) -> c_int {
    e.to_raw()
}

fn core_errno(e: xen_sys::freebsd::Errno) -> Errno {
    Errno::from_raw(e.0).unwrap_or(Errno::EIO)
}

/// `d_mmap_single`: maps (or reuses) what file `handle` has at `offset` for `size` bytes;
/// on success `*object` names the new VM object and `*pages` its size in pages. The shim
/// must end it with [`xenrs_gntdev_object_released`] (the pager's destructor), also when
/// creating the pager object fails.
///
/// # Safety
/// `object` and `pages` writable.
#[no_mangle]
pub unsafe extern "C" fn xenrs_gntdev_mmap(
    handle: u64,
    offset: u64,
    size: u64,
    writable: c_int,
    object: *mut u64,
    pages: *mut u64,
) -> c_int {
    if object.is_null() || pages.is_null() {
        return errno(Errno::EINVAL);
    }
    let r = crate::cdev::with_mappable_file(handle, |m, file| {
        let id = match file {
            crate::cdev::Mappable::Gntdev(id) => id,
            crate::cdev::Mappable::Privcmd => {
                // A privcmd mapping is a fresh region at offset 0; MMAPBATCH fills it.
                if offset != 0 {
                    return Err(Errno::EINVAL);
                }
                let region = m.privcmd.lock().mmap(size).map_err(core_errno)?;
                let key = NEXT_OBJECT.fetch_add(1, Ordering::Relaxed);
                m.vm_objects.lock().insert(key, VmObject::Privcmd(region));
                m.acquire();
                return Ok((key, size / PAGE));
            }
        };
        let target = m
            .gntdev
            .lock()
            .mmap(id, offset, size, writable != 0)
            .map_err(core_errno)?;
        let (object, pas) = match target {
            MmapTarget::Pages { object, gfns } => (object, gfns.iter().map(|g| g * PAGE).collect()),
            MmapTarget::Mapped {
                object,
                host_addr,
                count,
                ..
            } => (
                object,
                (0..u64::from(count))
                    .map(|i| host_addr + i * PAGE)
                    .collect(),
            ),
        };
        let n = u64::try_from(Vec::len(&pas)).map_err(|_| Errno::EINVAL)?;
        let key = NEXT_OBJECT.fetch_add(1, Ordering::Relaxed);
        m.vm_objects
            .lock()
            .insert(key, VmObject::Gntdev { object, pas });
        m.acquire();
        Ok((key, n))
    });
    match r {
        Ok((key, n)) => {
            // SAFETY: writable by the caller's contract.
            unsafe {
                object.write(key);
                pages.write(n);
            }
            0
        }
        Err(e) => errno(e),
    }
}

/// The pager's fault handler: the physical address of the page at byte `offset` of VM
/// object `object`.
///
/// # Safety
/// `paddr` writable.
#[no_mangle]
pub unsafe extern "C" fn xenrs_gntdev_fault(object: u64, offset: u64, paddr: *mut u64) -> c_int {
    if paddr.is_null() {
        return errno(Errno::EINVAL);
    }
    let r = crate::MODULE_SLOT
        .with(|m| {
            let objs = m.vm_objects.lock();
            match objs.get(&object).ok_or(Errno::EINVAL)? {
                VmObject::Gntdev { pas, .. } => {
                    let i = usize::try_from(offset / PAGE).map_err(|_| Errno::EINVAL)?;
                    pas.get(i).copied().ok_or(Errno::EINVAL)
                }
                VmObject::Privcmd(region) => {
                    let region = *region;
                    drop(objs);
                    m.privcmd
                        .lock()
                        .fault(region, offset / PAGE)
                        .map(|gfn| gfn * PAGE)
                        .ok_or(Errno::EFAULT)
                }
            }
        })
        .unwrap_or(Err(Errno::ENXIO));
    match r {
        Ok(pa) => {
            // SAFETY: writable by the caller's contract.
            unsafe { paddr.write(pa) };
            0
        }
        Err(e) => errno(e),
    }
}

/// The pager's destructor: every user mapping of VM object `object` is gone. Unknown
/// objects are ignored.
#[no_mangle]
pub extern "C" fn xenrs_gntdev_object_released(object: u64) {
    let _ = crate::MODULE_SLOT.with(|m| {
        let Some(o) = m.vm_objects.lock().remove(&object) else {
            return;
        };
        match o {
            VmObject::Gntdev { object, .. } => m.gntdev.lock().object_released(object),
            VmObject::Privcmd(region) => {
                if let Some(p) = m.platform() {
                    m.privcmd
                        .lock()
                        .region_released(&crate::cdev::PrivHv(p), region);
                }
            }
        }
        m.release();
    });
}

/// Builds the device for a module whose hypervisor is `hv`.
#[must_use]
pub fn device(hv: Hv) -> GntdevDev {
    Gntdev::new(KGntdev::new(hv), xen_gnttab::gntdev::Limits::default())
}

/// Retries stuck unmaps (the xenbus task).
pub(crate) fn reap(m: &crate::XenModule) {
    let mut g = m.gntdev.lock();
    if g.dying() != (0, 0) {
        g.reap();
    }
}
