//! The vbd backend devices: the xenbus `vbd` backend driver ([`XbbdDriver`]) with one
//! [`Vbd`] per backend directory `backend/vbd/<domid>/<dev>`, each the blkback core over a
//! [`QueuedStore`] of its backing object, served by the device's own taskqueue thread.
//!
//! # Contexts and locking
//!
//! The core sits behind the device's sx lock. xen.ko's xenbus thread holds it for probe,
//! the frontend's state changes and removal (which talk to xenstore and may sleep). xen.ko's
//! event thread only asks for the device's task ([`TaskSlot::kick`]). The task, on the
//! device's taskqueue thread, takes the lock to service the rings and take a batch of I/O
//! out of the store, performs the batch **without** the lock (sleeping in the file system
//! or the disk driver), then takes it again to hand back the results and service the rings
//! once more ([`Vbd::run`]); it runs a bounded number of rounds and asks for itself again
//! when work is left. Control work the core finds on the data path (a protocol violation to
//! report, a drained disconnection to finish) needs xenstore: the task asks for a run on the
//! xenbus thread ([`KickSlot`]), whose kick function looks at every device again
//! ([`on_kick`]).
//!
//! # Detach
//!
//! On removal (the directory goes, `xl block-detach`, or `kldunload xbbd`) the core stops
//! taking requests and the taskqueue is drained and freed (requests for the task do nothing
//! afterwards); what the store accepted is performed on the xenbus thread itself, then the
//! core's teardown unbinds the ports (no event handler runs afterwards) and unmaps the rings;
//! then the sysctl tree is removed and the backing object closed with the last reference to
//! it.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use freebsd_kpi::kprintln;
use freebsd_kpi::sync::SxLock;
use xen_blkback::backend::DeviceConfig;
use xen_blkback::{Backend, BackendConfig};
use xen_xenbus::bus::XenStore;
use xen_xenbus::{Device, Driver, Error as XsErr, XenbusState};
use xenrs_api::{Kicker, XenServices};

use crate::env::{SlotView, XbbdEnv};
use crate::store::{backing_for, perform, QueuedStore};
use crate::sys::{Softc, SysctlTree, Task, TaskSlot, Vnode};

/// Rounds of one task run (each at most [`crate::store::BATCH`] I/Os) before it yields.
pub const TASK_ROUNDS: usize = 8;

/// Task runs removal performs at most on the xenbus thread to drain accepted I/O.
pub const DRAIN_RUNS: usize = 4096;

/// The store of a vbd.
pub type Store = QueuedStore<'static, Vnode>;

/// The core of a vbd.
pub type Core<X> = Backend<'static, XbbdEnv<X>, Store>;

/// Where the devices find the registration's [`Kicker`] (set once the driver is registered).
#[derive(Debug)]
pub struct KickSlot(SxLock<Option<Kicker>>);

impl KickSlot {
    /// An empty slot.
    ///
    /// # Errors
    /// `ENOMEM`.
    pub fn new() -> Result<KickSlot, freebsd_kpi::Errno> {
        SxLock::new(c"xbbd kick", None).map(KickSlot)
    }

    /// Records the kicker.
    pub fn set(&self, k: Kicker) {
        *self.0.lock() = Some(k);
    }

    /// Asks for a run on the xenbus thread, if registered.
    pub fn kick(&self) {
        let k = self.0.lock().clone();
        if let Some(k) = k {
            k.kick();
        }
    }
}

/// The registration's kick function: every device's other end is looked at again, which
/// lets a core finish control work its data path found (report a failure, complete a
/// drained disconnection).
pub fn on_kick<S: XenStore + ?Sized>(bus: &mut xen_xenbus::Bus<S>, xs: &mut S) {
    let names: Vec<String> = bus.devices().map(|d| String::from(d.nodename())).collect();
    for name in names {
        let _ = bus.with_device(xs, &name, |driver, xs, dev| {
            let state = dev.otherend_state();
            driver.otherend_changed(xs, dev, state)
        });
    }
}

/// The leaves of `dev.xbbd.<unit>` (indices shared with `xbbd_kmod.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevStat {
    Domid = 0,
    Handle,
    Sectors,
    SectorSize,
    ReadOnly,
    Connected,
    Queues,
    RingPages,
    Requests,
    Reads,
    Writes,
    Flushes,
    Discards,
    Errors,
    Violations,
    CopyFailures,
    InFlight,
    Connections,
}

impl DevStat {
    /// Every leaf, by index; the names as in the shim.
    pub const ALL: [(DevStat, &'static str); 18] = [
        (DevStat::Domid, "domid"),
        (DevStat::Handle, "handle"),
        (DevStat::Sectors, "sectors"),
        (DevStat::SectorSize, "sector_size"),
        (DevStat::ReadOnly, "read_only"),
        (DevStat::Connected, "connected"),
        (DevStat::Queues, "queues"),
        (DevStat::RingPages, "ring_pages"),
        (DevStat::Requests, "requests"),
        (DevStat::Reads, "reads"),
        (DevStat::Writes, "writes"),
        (DevStat::Flushes, "flushes"),
        (DevStat::Discards, "discards"),
        (DevStat::Errors, "errors"),
        (DevStat::Violations, "violations"),
        (DevStat::CopyFailures, "copy_failures"),
        (DevStat::InFlight, "in_flight"),
        (DevStat::Connections, "connections"),
    ];
}

/// One vbd: the core behind the device lock, and the ways to ask for its task and for a
/// xenbus-thread run.
pub struct Vbd<X: XenServices + Send + 'static> {
    domid: u16,
    handle: u32,
    core: SxLock<Core<X>>,
    tasks: Arc<TaskSlot>,
    kick: Arc<KickSlot>,
}

impl<X: XenServices + Send + 'static> fmt::Debug for Vbd<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vbd")
            .field("domid", &self.domid)
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl<X: XenServices + Send + 'static> Vbd<X> {
    /// Runs `f` on the core under the device lock (may sleep).
    pub fn with_core<R>(&self, f: impl FnOnce(&mut Core<X>) -> R) -> R {
        f(&mut self.core.lock())
    }

    /// A run of the device's task (see the module docs).
    pub fn run(&self) {
        let mut control = false;
        let mut more = false;
        for _ in 0..TASK_ROUNDS {
            // Service the rings and take a batch out of the store, under the lock.
            let (batch, kpi) = {
                let mut core = self.core.lock();
                let r = core.poll();
                control |= r.control;
                more = r.more;
                let Some(store) = core.store_mut() else {
                    break;
                };
                let batch = store.take_batch();
                (batch, store.kpi().clone())
            };
            if batch.is_empty() {
                if more {
                    continue;
                }
                break;
            }
            // The I/O, without it.
            let results: Vec<_> = batch.iter().map(|io| (io.tag, perform(&kpi, io))).collect();
            drop(batch);
            let mut core = self.core.lock();
            if let Some(store) = core.store_mut() {
                store.complete(results);
                more |= store.busy() > 0;
            }
            let r = core.poll();
            control |= r.control;
            more |= r.more;
        }
        if more {
            self.tasks.kick();
        }
        if control {
            self.kick.kick();
        }
    }

    fn stat(&self, which: u32) -> Option<u64> {
        let (stat, _) = DevStat::ALL.get(usize::try_from(which).ok()?)?;
        let core = self.core.lock();
        let s = core.stats();
        let info = core.store().map(xen_blkback::BlockStore::info);
        let neg = core.negotiated();
        Some(match stat {
            DevStat::Domid => u64::from(self.domid),
            DevStat::Handle => u64::from(self.handle),
            DevStat::Sectors => info.map_or(0, |i| i.sectors),
            DevStat::SectorSize => info.map_or(0, |i| u64::from(i.sector_size)),
            DevStat::ReadOnly => info.map_or(0, |i| u64::from(i.read_only)),
            DevStat::Connected => u64::from(core.is_connected()),
            DevStat::Queues => neg.map_or(0, |n| u64::from(n.queues)),
            DevStat::RingPages => neg.map_or(0, |n| 1u64 << n.ring_page_order),
            DevStat::Requests => s.requests,
            DevStat::Reads => s.reads,
            DevStat::Writes => s.writes,
            DevStat::Flushes => s.flushes,
            DevStat::Discards => s.discards,
            DevStat::Errors => s.errors,
            DevStat::Violations => s.violations,
            DevStat::CopyFailures => s.copy_failures,
            DevStat::InFlight => core.in_flight() as u64,
            DevStat::Connections => s.connections,
        })
    }
}

impl<X: XenServices + Send + Sync + 'static> Task for Vbd<X> {
    fn run(&self) {
        Vbd::run(self);
    }

    fn stat(&self, which: u32) -> Option<u64> {
        Vbd::stat(self, which)
    }
}

/// An attached vbd: the device and what the shim holds for it.
struct Unit<X: XenServices + Send + Sync + 'static> {
    unit: u32,
    vbd: Arc<Vbd<X>>,
    softc: Softc,
    sysctl: Option<SysctlTree>,
}

/// The xenbus `vbd` backend driver: one [`Vbd`] per backend device directory.
pub struct XbbdDriver<X: XenServices + Send + Sync + 'static> {
    xen: Arc<X>,
    cfg: BackendConfig,
    view: Arc<dyn SlotView>,
    kick: Arc<KickSlot>,
    units: BTreeMap<String, Unit<X>>,
    live: Arc<AtomicUsize>,
}

impl<X: XenServices + Send + Sync + 'static> fmt::Debug for XbbdDriver<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XbbdDriver")
            .field("cfg", &self.cfg)
            .field("units", &self.units.len())
            .finish_non_exhaustive()
    }
}

impl<X: XenServices + Send + Sync + 'static> XbbdDriver<X> {
    /// A driver whose cores use `cfg`; slot runs are seen through `view`; `live` counts its
    /// devices, `kick` reaches the registration.
    pub fn new(
        xen: Arc<X>,
        cfg: BackendConfig,
        view: Arc<dyn SlotView>,
        kick: Arc<KickSlot>,
        live: Arc<AtomicUsize>,
    ) -> Self {
        XbbdDriver {
            xen,
            cfg,
            view,
            kick,
            units: BTreeMap::new(),
            live,
        }
    }

    fn free_unit(&self) -> u32 {
        let used: Vec<u32> = self.units.values().map(|u| u.unit).collect();
        (0..).find(|n| !used.contains(n)).unwrap_or(0)
    }

    /// Makes a unit: the core, its softc, taskqueue and sysctl tree.
    fn make(&self, unit: u32, dev: &Device) -> Result<Unit<X>, XsErr> {
        let tasks = Arc::new(TaskSlot::empty().map_err(|_| XsErr::BadValue)?);
        let env = XbbdEnv::new(self.xen.clone(), unit, tasks.clone(), self.view.clone());
        let core = Backend::new(env, self.cfg);
        let vbd = Arc::new(Vbd {
            domid: dev.otherend_id(),
            handle: dev.id().parse().unwrap_or(0),
            core: SxLock::new(c"xbbd", core).map_err(|_| XsErr::BadValue)?,
            tasks: tasks.clone(),
            kick: self.kick.clone(),
        });
        let task: Arc<dyn Task> = vbd.clone();
        let softc = Softc::new(task);
        let Some(tq) = softc.taskqueue(unit) else {
            softc.free();
            return Err(XsErr::BadValue);
        };
        tasks.set(tq);
        let sysctl = softc.sysctl(unit);
        Ok(Unit {
            unit,
            vbd,
            softc,
            sysctl,
        })
    }

    /// Detaches `u` (see the module docs).
    fn finish<S: XenStore + ?Sized>(&self, u: Unit<X>, xs: &mut S, dev: &mut Device) {
        u.vbd.with_core(|c| c.remove(xs, dev));
        // The taskqueue first: after this no task runs (a run in progress is waited for)
        // and requests for one do nothing, so what follows is this thread's alone.
        u.vbd.tasks.finish();
        // What the store accepted is performed here; each run makes progress (the I/O is
        // synchronous), and an idle one returns at once.
        for _ in 0..DRAIN_RUNS {
            let busy = u.vbd.with_core(|c| c.store().map_or(0, QueuedStore::busy));
            if busy == 0 {
                break;
            }
            u.vbd.run();
        }
        u.vbd.with_core(|c| {
            let _ = c.service_control(xs, dev);
            if !c.ports().is_empty() {
                kprintln!(
                    "xbbd{}: detached with the connection still up ({} request(s) in flight)",
                    u.unit,
                    c.in_flight()
                );
            }
        });
        if let Some(t) = u.sysctl {
            t.remove();
        }
        u.softc.free();
        // The last reference: the core, its store (the backing object is closed) and its
        // platform (pages and slot runs given back) go.
        drop(u.vbd);
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<X: XenServices + Send + Sync + 'static, S: XenStore + ?Sized> Driver<S> for XbbdDriver<X> {
    fn devtype(&self) -> &str {
        "vbd"
    }

    fn probe(&mut self, xs: &mut S, dev: &mut Device) -> Result<(), XsErr> {
        let unit = self.free_unit();
        let u = self.make(unit, dev)?;
        self.live.fetch_add(1, Ordering::AcqRel);
        let tasks = u.vbd.tasks.clone();
        let (domid, handle) = (u.vbd.domid, u.vbd.handle);
        let open = |cfg: &DeviceConfig| -> Result<Store, XsErr> {
            let spec = backing_for(cfg).map_err(|e| {
                kprintln!("xbbd{unit}: params {:?} refused: {e:?}", cfg.params);
                XsErr::BadValue
            })?;
            let (vn, info, kind) =
                Vnode::open(&spec.path, !spec.read_only, tasks).map_err(|e| {
                    kprintln!("xbbd{unit}: cannot open {}: error {e}", spec.path);
                    XsErr::BadValue
                })?;
            kprintln!(
                "xbbd{unit}: {} ({:?}, {} bytes, {}-byte sectors{}) for domain {domid} device {handle}",
                spec.path,
                kind,
                info.size,
                info.sector_size,
                if spec.read_only { ", read-only" } else { "" },
            );
            Ok(QueuedStore::new(vn, info, spec.read_only))
        };
        match u.vbd.with_core(|c| c.probe(xs, dev, open)) {
            Ok(()) => {
                self.units.insert(String::from(dev.nodename()), u);
                Ok(())
            }
            Err(e) => {
                self.finish(u, xs, dev);
                Err(e)
            }
        }
    }

    fn otherend_changed(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        let Some(u) = self.units.get(dev.nodename()) else {
            return Ok(());
        };
        let r = u.vbd.with_core(|c| {
            let r = c.otherend_changed(xs, dev, state);
            if c.control_pending() {
                c.service_control(xs, dev)?;
            }
            r
        });
        // Requests the frontend queued before it said Connected, and work after a change.
        u.vbd.tasks.kick();
        r
    }

    fn remove(&mut self, xs: &mut S, dev: &mut Device) {
        if let Some(u) = self.units.remove(dev.nodename()) {
            self.finish(u, xs, dev);
        }
    }
}
