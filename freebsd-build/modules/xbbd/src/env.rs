//! The blkback core's platform over xen.ko's services ([`XbbdEnv`]): event channels bound
//! with a handler that asks for the device's task, pages of our own for grant copies, and
//! guest-physical *slot runs* where the core maps the frontend's ring pages.
//!
//! # Slot runs
//!
//! The core maps grants itself (`GNTTABOP_map_grant_ref` with `GNTMAP_host_map`, batched,
//! per-entry status) at guest-physical addresses it reserves ([`BackendEnv::reserve_slots`]);
//! the xenrs API v1 maps grants one at a time at addresses xen.ko chooses, which fits neither
//! a multi-page ring (one contiguous view) nor the core's batching. So xbbd makes slots from
//! what the API does export: a run of physically contiguous pages (`xenrs_pages_alloc`) whose
//! frames are handed back to Xen (`XENMEM_decrease_reservation`, through `xenrs_hypercall`),
//! leaving a hole in our physical address space behind the pages' kernel addresses. A grant
//! mapped there (HVM/PVH) is seen through those addresses. When the core releases the run,
//! its frames are populated again (`XENMEM_populate_physmap`) and the pages freed; a run Xen
//! does not repopulate completely is never freed (the kernel must not reuse a page with no
//! memory behind it; xen.ko keeps counting it, and stays loaded). This is how xen.ko's own
//! gntdev makes its slots.
//!
//! The core runs in copy mode ([`xen_blkback::DataPath::Copy`]): data moves by grant copy
//! into and out of pages of our own, so slot runs are needed only for the rings, one run per
//! queue at connection time, instead of one per request or persistent grant.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use core::cell::{Cell, RefCell};
use core::fmt;

use freebsd_kpi::{kprintln, Errno};
use xen_blkback::{BackendEnv, Level, LocalPage};
use xen_kmod::{Hypervisor, XenError};
use xen_shmem::SharedMem;
use xenrs_api::{BindFlags, Pages, XenServices};

use crate::sys::TaskSlot;

/// Bytes per page.
const PAGE: u64 = 4096;

/// How the memory at a slot run is seen once grants are mapped there.
pub trait SlotView: Send + Sync {
    /// `pages` pages at `host_addr`, which lies `first` pages into `run`.
    fn view(
        &self,
        run: &Pages,
        first: u32,
        pages: u32,
        host_addr: u64,
    ) -> Option<SharedMem<'static>>;
}

/// The kernel's view: the run's own kernel addresses (the direct map, through which the
/// CPU reaches whatever our physical address space has at those frames).
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectMap;

impl SlotView for DirectMap {
    fn view(
        &self,
        run: &Pages,
        first: u32,
        pages: u32,
        _host_addr: u64,
    ) -> Option<SharedMem<'static>> {
        let page = usize::try_from(PAGE).ok()?;
        let off = usize::try_from(first).ok()?.checked_mul(page)?;
        let len = usize::try_from(pages).ok()?.checked_mul(page)?;
        run.mem.subrange(off, len).ok()
    }
}

/// Hands frame `gfn` to Xen (`give`) or populates it again; true when Xen did.
fn reservation<H: Hypervisor>(hv: &H, gfn: u64, give: bool) -> bool {
    let Some(pfn) = xen_sys::native::xen_pfn_t::try_from(gfn).ok() else {
        return false;
    };
    let mut extents = [pfn];
    let mut args = xen_sys::native::xen_memory_reservation {
        nr_extents: 1,
        domid: xen_kmod::DOMID_SELF,
        ..Default::default()
    };
    let op = if give {
        xen_kmod::MemoryOp::DecreaseReservation {
            args: &mut args,
            extents: &mut extents,
        }
    } else {
        xen_kmod::MemoryOp::PopulatePhysmap {
            args: &mut args,
            extents: &mut extents,
        }
    };
    hv.memory_op(op) == Ok(1)
}

/// Counters of the platform.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnvStats {
    /// Slot runs live.
    pub runs: usize,
    /// Pages of our own live (the copy pools).
    pub pages: usize,
    /// Runs never freed because Xen did not populate them again.
    pub leaked_runs: u64,
}

/// The platform of one vbd (see the module docs).
pub struct XbbdEnv<X: XenServices + Send + 'static> {
    xen: Arc<X>,
    hv: X::Hv,
    unit: u32,
    tasks: Arc<TaskSlot>,
    view: Arc<dyn SlotView>,
    /// Slot runs, by guest-physical address of the first page.
    runs: RefCell<BTreeMap<u64, Pages>>,
    /// Our pages, by frame.
    pages: RefCell<BTreeMap<u64, Pages>>,
    leaked: Cell<u64>,
}

impl<X: XenServices + Send + 'static> fmt::Debug for XbbdEnv<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XbbdEnv")
            .field("unit", &self.unit)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<X: XenServices + Send + 'static> XbbdEnv<X> {
    /// The platform of device `unit`: its ports' events ask for its task through `tasks`;
    /// slot runs are seen through `view`.
    pub fn new(xen: Arc<X>, unit: u32, tasks: Arc<TaskSlot>, view: Arc<dyn SlotView>) -> Self {
        let hv = xen.hypervisor();
        XbbdEnv {
            xen,
            hv,
            unit,
            tasks,
            view,
            runs: RefCell::new(BTreeMap::new()),
            pages: RefCell::new(BTreeMap::new()),
            leaked: Cell::new(0),
        }
    }

    /// Counters.
    pub fn stats(&self) -> EnvStats {
        EnvStats {
            runs: self.runs.borrow().len(),
            pages: self.pages.borrow().len(),
            leaked_runs: self.leaked.get(),
        }
    }

    /// Populates the first `given` frames of `run` again; frees it when all came back,
    /// keeps it from the kernel for good otherwise.
    fn give_back(&self, run: Pages, given: u32) {
        let all = (0..u64::from(given)).all(|i| reservation(&self.hv, run.gfn + i, false));
        if all {
            self.xen.free_pages(run);
        } else {
            self.leaked.set(self.leaked.get() + 1);
            kprintln!(
                "xbbd{}: Xen did not populate a slot run again; its {} page(s) stay out of use",
                self.unit,
                run.count
            );
            // Not handed to free_pages: xen.ko keeps the pages allocated (and itself
            // loaded); the handle itself owns nothing.
        }
    }
}

impl<X: XenServices + Send + 'static> Drop for XbbdEnv<X> {
    fn drop(&mut self) {
        for (_, p) in core::mem::take(&mut *self.pages.borrow_mut()) {
            self.xen.free_pages(p);
        }
        for (_, run) in core::mem::take(&mut *self.runs.borrow_mut()) {
            let n = run.count;
            self.give_back(run, n);
        }
    }
}

fn xen_error(e: Errno) -> XenError {
    if e == Errno::ENOMEM {
        XenError::ENOMEM
    } else {
        XenError::EINVAL
    }
}

impl<X: XenServices + Send + 'static> BackendEnv<'static> for XbbdEnv<X> {
    type Hv = X::Hv;

    fn hypervisor(&self) -> &X::Hv {
        &self.hv
    }

    fn reserve_slots(&self, count: u32) -> Option<u64> {
        let run = self.xen.alloc_pages(count).ok()?;
        for i in 0..count {
            if !reservation(&self.hv, run.gfn + u64::from(i), true) {
                self.give_back(run, i);
                return None;
            }
        }
        let addr = run.gfn.checked_mul(PAGE)?;
        self.runs.borrow_mut().insert(addr, run);
        Some(addr)
    }

    fn release_slots(&self, host_addr: u64, count: u32) {
        let Some(run) = self.runs.borrow_mut().remove(&host_addr) else {
            kprintln!(
                "xbbd{}: release of unknown slots at {host_addr:#x}",
                self.unit
            );
            return;
        };
        if run.count != count {
            kprintln!(
                "xbbd{}: release of {count} slot(s) of a run of {}",
                self.unit,
                run.count
            );
        }
        let n = run.count;
        self.give_back(run, n);
    }

    fn view(&self, host_addr: u64, pages: u32) -> Option<SharedMem<'static>> {
        let runs = self.runs.borrow();
        let (&base, run) = runs.range(..=host_addr).next_back()?;
        let first = u32::try_from((host_addr - base) / PAGE).ok()?;
        if host_addr % PAGE != 0 || first.checked_add(pages)? > run.count {
            return None;
        }
        self.view.view(run, first, pages, host_addr)
    }

    fn alloc_page(&self) -> Option<LocalPage<'static>> {
        let p = self.xen.alloc_pages(1).ok()?;
        let page = LocalPage {
            gfn: p.gfn,
            mem: p.mem,
        };
        self.pages.borrow_mut().insert(p.gfn, p);
        Some(page)
    }

    fn free_page(&self, page: LocalPage<'static>) {
        if let Some(p) = self.pages.borrow_mut().remove(&page.gfn) {
            self.xen.free_pages(p);
        }
    }

    fn bind_interdomain(&self, remote_dom: u16, remote_port: u32) -> Result<u32, XenError> {
        let tasks = self.tasks.clone();
        self.xen
            .evtchn_bind_interdomain(
                remote_dom,
                remote_port,
                BindFlags::default(),
                Box::new(move |_| tasks.kick()),
            )
            .map_err(xen_error)
    }

    fn notify(&self, port: u32) {
        let _ = self.xen.evtchn_notify(port);
    }

    fn close_port(&self, port: u32) {
        // Waits for a handler run in progress; afterwards the handler never runs.
        let _ = self.xen.evtchn_unbind(port);
    }

    fn log(&self, level: Level, msg: fmt::Arguments<'_>) {
        let tag = match level {
            Level::Error => "error: ",
            Level::Warning => "warning: ",
            Level::Info => "",
        };
        kprintln!("xbbd{}: {tag}{msg}", self.unit);
    }
}
