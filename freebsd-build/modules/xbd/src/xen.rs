//! xbd's binding to xen.ko (the xenrs API, crate `xenrs-api`): the blkfront core's platform
//! ([`XenFrontEnv`] over [`XenServices`]) and the xenbus `vbd` frontend driver
//! ([`XbdDriver`]) that creates, drives and removes one [`XbdDisk`] per device.
//!
//! Contexts (see `include/xenrs_api.h`): xenbus callbacks (probe, other end changed, remove)
//! come from xen.ko's xenbus thread and may sleep (xenstore, pages, unbinding ports) while
//! they hold the disk's sx lock ([`crate::sys::SoftcBox`]); event handlers (xen.ko's event
//! thread) and `d_strategy` (GEOM's g_down thread, which must not sleep) only try it, and what
//! finds it taken is run by the holder when it lets go. So a xenbus callback that unbinds a
//! port under the lock cannot deadlock against the handler xen.ko waits for, and GEOM never
//! sleeps on us.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use freebsd_kpi::kprintln;
use freebsd_kpi::sync::Mutex;
use xen_blkback::env::Level;
use xen_blkfront::{FrontendConfig, FrontendEnv, PageRun};
use xen_gnttab::{GrantError, GrantRef, Revoke, StillInUse};
use xen_kmod::XenError;
use xen_xenbus::bus::XenStore;
use xen_xenbus::{Device, Driver, Error as XsErr, XenbusState};
use xenrs_api::{BindFlags, Kicker, Pages, Revoked, XenServices};

use crate::disk::{BioRequest, Detach, XbdDisk};
use crate::sys::{Again, EventSink, GeomDisk, Kernel, SoftcBox};

/// Where the disks find the registration's [`Kicker`] (set once the driver is registered):
/// a request for a run on xen.ko's xenbus thread, where the core can report a failure it
/// found while handling responses (its control path needs the store).
#[derive(Debug)]
pub struct KickSlot(Mutex<Option<Kicker>>);

impl KickSlot {
    /// An empty slot; `None` when the kernel has no memory for its mutex.
    pub fn new() -> Option<KickSlot> {
        Mutex::new(c"xbd", None).ok().map(KickSlot)
    }

    /// Records the kicker (the registration's, once it exists).
    pub fn set(&self, k: Kicker) {
        self.0.with(|slot| *slot = Some(k));
    }

    /// Asks for a xenbus-thread run, if registered (the mutex is not held while asking).
    pub fn kick(&self) {
        if let Some(k) = self.0.with(|slot| slot.clone()) {
            k.kick();
        }
    }
}

/// The registration's kick function: every device's other end is looked at again, which
/// makes a core that failed in the event path report it (`error`, `Closing`) and fail its
/// bios; for a healthy disk it only re-reads the backend's size.
pub fn on_kick<S: XenStore + ?Sized>(bus: &mut xen_xenbus::Bus<S>, xs: &mut S) {
    let names: Vec<String> = bus.devices().map(|d| String::from(d.nodename())).collect();
    for name in names {
        let _ = bus.with_device(xs, &name, |driver, xs, dev| {
            let state = dev.otherend_state();
            driver.otherend_changed(xs, dev, state)
        });
    }
}

/// The registration's hook for watch events its bus did not claim: the blkfront core's own
/// watch on each backend's `sectors` (online resize, for a backend that changes the size
/// without rewriting its `state`). Which disk's watch fired is not known here (the bus hands
/// out its devices only as `dyn Driver`), so every connected device looks at its backend
/// again, which re-reads the size; a new size becomes `disk_resize`.
pub fn on_watch<S: XenStore + ?Sized>(
    bus: &mut xen_xenbus::Bus<S>,
    xs: &mut S,
    _id: xen_xenbus::WatchId,
    _ev: &xen_xenbus::WatchEvent,
) {
    let names: Vec<String> = bus
        .devices()
        .filter(|d| d.state() == XenbusState::Connected)
        .map(|d| String::from(d.nodename()))
        .collect();
    for name in names {
        let _ = bus.with_device(xs, &name, |driver, xs, dev| {
            let state = dev.otherend_state();
            driver.otherend_changed(xs, dev, state)
        });
    }
}

/// A page run handed to the core, and which of its pages came back.
#[derive(Debug)]
struct Run {
    pages: Option<Pages>,
    back: Vec<bool>,
}

/// The blkfront core's platform over xen.ko's services.
pub struct XenFrontEnv<X: XenServices + Send + 'static> {
    xen: Arc<X>,
    unit: u32,
    kick: Arc<KickSlot>,
    /// Runs handed out, by first frame.
    runs: RefCell<BTreeMap<u64, Run>>,
    sink: Arc<EventSink>,
}

impl<X: XenServices + Send + 'static> fmt::Debug for XenFrontEnv<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XenFrontEnv")
            .field("unit", &self.unit)
            .field("runs", &self.runs.borrow().len())
            .finish_non_exhaustive()
    }
}

impl<X: XenServices + Send + 'static> XenFrontEnv<X> {
    /// The platform of disk `unit`; its ports' events go to `sink`.
    pub fn new(xen: Arc<X>, unit: u32, sink: Arc<EventSink>, kick: Arc<KickSlot>) -> Self {
        XenFrontEnv {
            xen,
            unit,
            kick,
            runs: RefCell::new(BTreeMap::new()),
            sink,
        }
    }

    /// Page runs not given back yet.
    pub fn runs_out(&self) -> usize {
        self.runs.borrow().len()
    }
}

impl<X: XenServices + Send + 'static> Drop for XenFrontEnv<X> {
    fn drop(&mut self) {
        // Pages the core forgot because their grant is still mapped (deferred revoke): xen.ko
        // holds them back until the grant is gone.
        for (_, run) in core::mem::take(&mut *self.runs.borrow_mut()) {
            if let Some(p) = run.pages {
                self.xen.free_pages(p);
            }
        }
    }
}

impl<X: XenServices + Send + 'static> FrontendEnv<'static> for XenFrontEnv<X> {
    fn grant(&self, domid: u16, gfn: u64, readonly: bool) -> Result<GrantRef, GrantError> {
        self.xen
            .grant_access(domid, gfn, readonly)
            .map(GrantRef::from_foreign_table)
            .map_err(|e| {
                if e.to_raw() == freebsd_kpi::Errno::EINVAL.to_raw() {
                    GrantError::FrameTooLarge { gfn }
                } else {
                    GrantError::NoFreeRefs
                }
            })
    }

    fn end_access(&self, r: &GrantRef) -> Result<(), StillInUse> {
        self.xen.grant_end_access(r.raw()).map_err(|_| StillInUse)
    }

    fn revoke(&self, r: GrantRef) -> Revoke {
        match self.xen.grant_revoke(r.raw()) {
            Ok(Revoked::Deferred) => Revoke::Deferred,
            // Done, or a reference xen.ko does not know (nothing left to end).
            Ok(Revoked::Done) | Err(_) => Revoke::Done,
        }
    }

    fn alloc_pages(&self, count: u32) -> Option<PageRun<'static>> {
        let pages = self.xen.alloc_pages(count).ok()?;
        let run = PageRun {
            gfn: pages.gfn,
            count,
            mem: pages.mem,
        };
        let back = alloc::vec![false; usize::try_from(count).ok()?];
        self.runs.borrow_mut().insert(
            pages.gfn,
            Run {
                pages: Some(pages),
                back,
            },
        );
        Some(run)
    }

    fn free_pages(&self, run: PageRun<'static>) {
        // The core may give a multi-page run back page by page (a ring whose grants ended
        // one by one): the run goes back to xen.ko once all of it is back.
        let mut runs = self.runs.borrow_mut();
        let Some((&first, entry)) = runs.range_mut(..=run.gfn).next_back() else {
            return;
        };
        for i in 0..u64::from(run.count) {
            if let Some(b) = usize::try_from(run.gfn + i - first)
                .ok()
                .and_then(|k| entry.back.get_mut(k))
            {
                *b = true;
            }
        }
        if entry.back.iter().all(|b| *b) {
            if let Some(Run { pages: Some(p), .. }) = runs.remove(&first) {
                self.xen.free_pages(p);
            }
        }
    }

    fn alloc_unbound(&self, remote: u16) -> Result<u32, XenError> {
        let sink = self.sink.clone();
        self.xen
            .evtchn_alloc_unbound(
                remote,
                BindFlags::default(),
                Box::new(move |_port| sink.fire()),
            )
            .map_err(|e| XenError::from_errno(e.to_raw()).unwrap_or(XenError::EIO))
    }

    fn notify(&self, port: u32) {
        let _ = self.xen.evtchn_notify(port);
    }

    fn close_port(&self, port: u32) {
        let _ = self.xen.evtchn_unbind(port);
    }

    fn log(&self, level: Level, msg: fmt::Arguments<'_>) {
        let tag = match level {
            Level::Error => "error: ",
            Level::Warning => "warning: ",
            Level::Info => "",
        };
        kprintln!("xbd{}: {tag}{msg}", self.unit);
    }
}

/// A disk of the kernel: the glue over xen.ko's services and GEOM.
pub type KernelDisk<X> = XbdDisk<'static, XenFrontEnv<X>, Kernel>;

impl<X: XenServices + Send + 'static> GeomDisk for KernelDisk<X> {
    fn strategy(&mut self, req: BioRequest) {
        XbdDisk::strategy(self, req);
    }

    fn stat(&self, which: u32) -> Option<u64> {
        XbdDisk::stat(self, which)
    }

    fn event(&mut self) -> Again {
        // Bounded: each poll handles at most a ring's worth per queue (and retries held
        // grants); what is left runs again from the taskqueue.
        let mut more = false;
        for _ in 0..16 {
            let r = self.poll();
            if r.control {
                // The core stopped (a backend violation); its report needs the store: ask
                // for a run on the xenbus thread.
                self.frontend().env().kick.kick();
            }
            more = r.more;
            if !more {
                break;
            }
        }
        if more {
            Again::Soon
        } else if self.frontend().held_grants() > 0 {
            // Grants on bios' own pages the backend has not let go of: retry from a timer.
            Again::Later
        } else {
            Again::No
        }
    }

    fn as_any(&mut self) -> &mut dyn core::any::Any {
        self
    }
}

/// One attached device.
struct Unit {
    unit: u32,
    softc: SoftcBox,
    sink: Arc<EventSink>,
}

/// The xenbus `vbd` frontend driver: one [`XbdDisk`] per device directory.
pub struct XbdDriver<X: XenServices + Send + 'static> {
    xen: Arc<X>,
    cfg: FrontendConfig,
    units: BTreeMap<String, Unit>,
    /// Removed devices whose bios are still held (the backend maps their pages).
    dying: Vec<Unit>,
    /// Attached plus dying devices, for `kldunload`'s quiesce.
    live: Arc<AtomicUsize>,
    kick: Arc<KickSlot>,
}

impl<X: XenServices + Send + 'static> fmt::Debug for XbdDriver<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XbdDriver")
            .field("units", &self.units.len())
            .field("dying", &self.dying.len())
            .finish_non_exhaustive()
    }
}

impl<X: XenServices + Send + 'static> XbdDriver<X> {
    /// A driver whose disks use `cfg`; `live` counts its devices.
    pub fn new(
        xen: Arc<X>,
        cfg: FrontendConfig,
        live: Arc<AtomicUsize>,
        kick: Arc<KickSlot>,
    ) -> Self {
        XbdDriver {
            xen,
            cfg,
            units: BTreeMap::new(),
            dying: Vec::new(),
            live,
            kick,
        }
    }

    fn free_unit(&self) -> u32 {
        let used: Vec<u32> = self
            .units
            .values()
            .chain(&self.dying)
            .map(|u| u.unit)
            .collect();
        (0..).find(|n| !used.contains(n)).unwrap_or(0)
    }

    fn with_disk<R>(unit: &Unit, f: impl FnOnce(&mut KernelDisk<X>) -> R) -> Option<R> {
        unit.softc.with(|dev| {
            dev.as_mut()
                .and_then(|d| d.as_any().downcast_mut::<KernelDisk<X>>())
                .map(f)
        })
    }

    /// Retries removed devices whose bios were held; frees the finished ones.
    pub fn reap(&mut self) {
        let dying = core::mem::take(&mut self.dying);
        for u in dying {
            let outstanding = Self::with_disk(&u, |d| {
                d.retry_held();
                d.outstanding()
            })
            .unwrap_or(0);
            if outstanding == 0 {
                self.finish(u);
            } else {
                self.dying.push(u);
            }
        }
    }

    fn finish(&self, u: Unit) {
        // The device (core, env, remaining pages) goes first, then the softc.
        let dev = u.softc.with(Option::take);
        drop(dev);
        u.softc.free(&u.sink);
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<X: XenServices + Send + 'static, S: XenStore + ?Sized> Driver<S> for XbdDriver<X> {
    fn devtype(&self) -> &str {
        "vbd"
    }

    fn probe(&mut self, xs: &mut S, dev: &mut Device) -> Result<(), XsErr> {
        self.reap();
        let unit = self.free_unit();
        let softc = SoftcBox::new(unit).ok_or(XsErr::BadValue)?;
        let sink = Arc::new(EventSink::default());
        let env = XenFrontEnv::new(self.xen.clone(), unit, sink.clone(), self.kick.clone());
        let disk: KernelDisk<X> = XbdDisk::new(env, self.cfg, crate::sys::kernel(&softc), unit);
        softc.with(|d| *d = Some(Box::new(disk)));
        softc.connect(&sink);
        let u = Unit { unit, softc, sink };
        self.live.fetch_add(1, Ordering::AcqRel);
        let r = Self::with_disk(&u, |d| d.probe(xs, dev)).unwrap_or(Err(XsErr::BadValue));
        if let Err(e) = r {
            self.finish(u);
            return Err(e);
        }
        self.units.insert(String::from(dev.nodename()), u);
        Ok(())
    }

    fn otherend_changed(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        self.reap();
        let Some(u) = self.units.get(dev.nodename()) else {
            return Ok(());
        };
        Self::with_disk(u, |d| {
            d.otherend_changed(xs, dev, state)?;
            d.service_control(xs, dev)
        })
        .unwrap_or(Ok(()))
    }

    fn remove(&mut self, xs: &mut S, dev: &mut Device) {
        let Some(u) = self.units.remove(dev.nodename()) else {
            return;
        };
        match Self::with_disk(&u, |d| d.detach(xs, dev)) {
            Some(Detach::Busy { outstanding }) => {
                kprintln!(
                    "xbd{}: removed; {outstanding} bio(s) wait for the backend to release their pages",
                    u.unit
                );
                self.dying.push(u);
            }
            Some(Detach::Done) | None => self.finish(u),
        }
    }
}
