//! [`HostXen`]: [`XenServices`] on the host, for the drivers' glue tests (feature `host`).
//!
//! The pieces a test has (a hypervisor such as a xensim domain, that domain's xenstore
//! connection, its grant table, a source of its pages and foreign-map slots) are plugged in;
//! what xen.ko adds in the kernel — the handler per port, driver registrations and the
//! routing of watch events — is done here the same way, with the test driving time:
//! [`HostXen::pump`] delivers queued watch events to the registered buses (xen.ko's xenbus
//! thread), [`HostXen::deliver`] runs a port's handler as xen.ko's event thread would.
//!
//! The rules the kernel implementation guarantees hold here too and are what the tests
//! check: a handler never runs after [`XenServices::evtchn_unbind`] returned, a dropped
//! registration's driver is never called again, and every bind, grant, mapping and page is
//! accounted for ([`HostXen::outstanding`]).

extern crate std;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use std::sync::{Mutex, MutexGuard, PoisonError};

use freebsd_kpi::Errno;
use xen_gnttab::{GrantRef, GrantTable, MapGrant, MapHandle, Revoke, TableFrames};
use xen_kmod::{Hypervisor, HypervisorExt};
use xen_shmem::SharedMem;
use xen_xenbus::{Bus, Driver, Role, Store, Transport, WatchId, XenStore, Xs};

use crate::{BindFlags, EventHandler, Mapped, Pages, Port, Registration, Revoked, XenServices};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Memory of the simulated domain: pages it owns and slots (guest frames with no page) where
/// foreign grants can be mapped.
pub trait HostMemory: Send + Sync {
    /// `count` contiguous zeroed pages and the first one's frame number.
    fn alloc(&self, count: u32) -> Option<(SharedMem<'static>, u64)>;
    /// Gives pages back.
    fn free(&self, gfn: u64, count: u32);
    /// A free slot: its guest-physical address (for `GNTTABOP_map_grant_ref`'s `host_addr`).
    fn reserve_slot(&self) -> Option<u64>;
    /// The memory seen at a slot once something is mapped there.
    fn view_slot(&self, host_addr: u64) -> Option<SharedMem<'static>>;
    /// Releases a slot.
    fn release_slot(&self, host_addr: u64);
}

/// Our grant table as the host implementation needs it (object-safe, so the table's frame
/// source type does not leak into [`HostXen`]'s).
pub trait HostGrants: Send + Sync {
    /// `GrantTable::grant`.
    fn grant(&self, domid: u16, gfn: u64, readonly: bool) -> Result<GrantRef, Errno>;
    /// `GrantTable::end_access`: false while still mapped.
    fn end_access(&self, r: &GrantRef) -> bool;
    /// `GrantTable::revoke`.
    fn revoke(&self, r: GrantRef) -> Revoke;
    /// `GrantTable::poll_deferred`: retries deferred revocations, calling `release` with the
    /// frame of each that completed.
    fn poll_deferred(&self, release: &mut dyn FnMut(u64));
}

impl<H, F> HostGrants for GrantTable<'static, H, F>
where
    H: Hypervisor + Send + Sync,
    F: TableFrames<'static> + Send + Sync,
{
    fn grant(&self, domid: u16, gfn: u64, readonly: bool) -> Result<GrantRef, Errno> {
        GrantTable::grant(self, domid, gfn, readonly).map_err(|e| match e {
            xen_gnttab::GrantError::FrameTooLarge { .. } => Errno::EINVAL,
            _ => Errno::ENOSPC,
        })
    }
    fn end_access(&self, r: &GrantRef) -> bool {
        GrantTable::end_access(self, r).is_ok()
    }
    fn revoke(&self, r: GrantRef) -> Revoke {
        GrantTable::revoke(self, r)
    }
    fn poll_deferred(&self, release: &mut dyn FnMut(u64)) {
        GrantTable::poll_deferred(self, |frame| release(u64::from(frame)));
    }
}

/// The store handle of a host registration: the shared connection, locked per request.
#[derive(Debug)]
pub struct HostStore<T: Transport> {
    xs: Arc<Mutex<Xs<T>>>,
    watches: Arc<Mutex<Vec<WatchId>>>,
}

impl<T: Transport> Store for HostStore<T> {
    fn call(
        &mut self,
        req: &xen_xenbus::Request<'_>,
    ) -> Result<xen_xenbus::Reply, xen_xenbus::Error> {
        lock(&self.xs).call(req, None)
    }
}

impl<T: Transport> XenStore for HostStore<T> {
    fn watch(&mut self, path: &str) -> Result<WatchId, xen_xenbus::Error> {
        let w = lock(&self.xs).watch(path)?;
        lock(&self.watches).push(w);
        Ok(w)
    }
    fn unwatch(&mut self, id: WatchId) -> Result<(), xen_xenbus::Error> {
        lock(&self.watches).retain(|w| *w != id);
        lock(&self.xs).unwatch(id)
    }
}

struct HostBus<T: Transport> {
    bus: Bus<HostStore<T>>,
    store: HostStore<T>,
    on_kick: Option<crate::KickFn<HostStore<T>>>,
    on_watch: Option<crate::WatchFn<HostStore<T>>>,
    kicked: Arc<core::sync::atomic::AtomicBool>,
}

// SAFETY: the bus holds only drivers registered as `dyn Driver + Send` (the trait object
// loses the bound inside `Bus`) and the store, whose parts are `Arc<Mutex<_>>` of `Send`
// values when `T: Send`.
unsafe impl<T: Transport + Send> Send for HostBus<T> {}

type Buses<T> = Arc<Mutex<BTreeMap<u64, HostBus<T>>>>;

/// A registration; dropping it stops the bus (removing every device) and forgets it.
pub struct HostReg<T: Transport + Send + 'static> {
    id: u64,
    buses: Buses<T>,
    kicked: Arc<core::sync::atomic::AtomicBool>,
}

impl<T: Transport + Send + 'static> core::fmt::Debug for HostReg<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostReg").field("id", &self.id).finish()
    }
}

impl<T: Transport + Send + 'static> Registration for HostReg<T> {
    fn kicker(&self) -> crate::Kicker {
        let kicked = Arc::clone(&self.kicked);
        crate::Kicker::new(move || kicked.store(true, core::sync::atomic::Ordering::Release))
    }
}

impl<T: Transport + Send + 'static> Drop for HostReg<T> {
    fn drop(&mut self) {
        let entry = lock(&self.buses).remove(&self.id);
        if let Some(mut hb) = entry {
            hb.bus.stop(&mut hb.store);
            let left: Vec<WatchId> = lock(&hb.store.watches).drain(..).collect();
            for w in left {
                let _ = lock(&hb.store.xs).unwatch(w);
            }
        }
    }
}

/// What [`HostXen`] still holds for the driver: all zero after a clean detach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outstanding {
    /// Bound ports.
    pub ports: usize,
    /// Grant references not yet ended.
    pub grants: usize,
    /// Foreign pages mapped.
    pub mappings: usize,
    /// Page runs allocated.
    pub pages: usize,
    /// Driver registrations.
    pub registrations: usize,
    /// Grants whose revocation the peer deferred (it still maps the page).
    pub deferred: usize,
    /// Page runs given back but held, because a deferred grant still covers them.
    pub held: usize,
}

/// [`XenServices`] over host-side pieces (see the module docs).
pub struct HostXen<H: Hypervisor + Clone + Send + Sync + 'static, T: Transport + Send + 'static> {
    hv: H,
    domid: u16,
    xs: Arc<Mutex<Xs<T>>>,
    grants: Box<dyn HostGrants>,
    memory: Box<dyn HostMemory>,
    handlers: Mutex<BTreeMap<Port, Arc<EventHandler>>>,
    /// Our references: raw -> (reference, granted frame).
    refs: Mutex<BTreeMap<u32, (GrantRef, u64)>>,
    maps: Mutex<BTreeMap<u64, Option<MapHandle>>>,
    pages: Mutex<BTreeMap<u64, u32>>,
    /// Frames whose revocation was deferred, with a count per frame (as xen.ko's).
    deferred: Mutex<BTreeMap<u64, u32>>,
    /// Page runs given back while a deferred frame covers them: (first frame, count).
    held: Mutex<Vec<(u64, u32)>>,
    buses: Buses<T>,
    next_reg: Mutex<u64>,
}

impl<H: Hypervisor + Clone + Send + Sync + 'static, T: Transport + Send + 'static> core::fmt::Debug
    for HostXen<H, T>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostXen")
            .field("domid", &self.domid)
            .field("outstanding", &self.outstanding())
            .finish_non_exhaustive()
    }
}

impl<H: Hypervisor + Clone + Send + Sync + 'static, T: Transport + Send + 'static> HostXen<H, T> {
    /// The services of domain `domid` over its hypervisor handle, xenstore connection,
    /// grant table and memory.
    pub fn new(
        hv: H,
        domid: u16,
        xs: Xs<T>,
        grants: Box<dyn HostGrants>,
        memory: Box<dyn HostMemory>,
    ) -> Self {
        HostXen {
            hv,
            domid,
            xs: Arc::new(Mutex::new(xs)),
            grants,
            memory,
            handlers: Mutex::new(BTreeMap::new()),
            refs: Mutex::new(BTreeMap::new()),
            maps: Mutex::new(BTreeMap::new()),
            pages: Mutex::new(BTreeMap::new()),
            deferred: Mutex::new(BTreeMap::new()),
            held: Mutex::new(Vec::new()),
            buses: Arc::new(Mutex::new(BTreeMap::new())),
            next_reg: Mutex::new(1),
        }
    }

    /// Runs the kick functions of kicked registrations, then delivers up to `budget` queued
    /// watch events to the registered buses (what xen.ko's xenbus thread does); returns how
    /// many events were delivered.
    ///
    /// # Errors
    /// The connection's failure.
    pub fn pump(&self, budget: usize) -> Result<usize, xen_xenbus::Error> {
        self.poll_deferred();
        for hb in lock(&self.buses).values_mut() {
            if hb.kicked.swap(false, core::sync::atomic::Ordering::AcqRel) {
                if let Some(f) = hb.on_kick.as_mut() {
                    f(&mut hb.bus, &mut hb.store);
                }
            }
        }
        let mut n = 0;
        while n < budget {
            let ev = lock(&self.xs).poll_event()?;
            let Some((id, ev)) = ev else { break };
            let mut buses = lock(&self.buses);
            // As xen.ko: the event goes to the registration that added the watch; what its
            // bus does not claim (a watch of the driver's own) to its `on_watch` hook.
            let owner = buses
                .values_mut()
                .find(|hb| lock(&hb.store.watches).contains(&id));
            if let Some(hb) = owner {
                if !hb.bus.handle_event(&mut hb.store, id, &ev) {
                    if let Some(f) = hb.on_watch.as_mut() {
                        f(&mut hb.bus, &mut hb.store, id, &ev);
                    }
                }
            } else {
                for hb in buses.values_mut() {
                    if hb.bus.handle_event(&mut hb.store, id, &ev) {
                        break;
                    }
                }
            }
            n += 1;
        }
        Ok(n)
    }

    /// Runs `port`'s handler as xen.ko's event thread would; false when the port is not
    /// bound (an event after unbind is dropped, never delivered).
    pub fn deliver(&self, port: Port) -> bool {
        let handler = lock(&self.handlers).get(&port).cloned();
        match handler {
            Some(h) => {
                h(port);
                true
            }
            None => false,
        }
    }

    /// What is still held for the driver.
    pub fn outstanding(&self) -> Outstanding {
        Outstanding {
            ports: lock(&self.handlers).len(),
            grants: lock(&self.refs).len(),
            mappings: lock(&self.maps).len(),
            pages: lock(&self.pages).len(),
            registrations: lock(&self.buses).len(),
            deferred: lock(&self.deferred).values().map(|n| *n as usize).sum(),
            held: lock(&self.held).len(),
        }
    }

    /// Retries deferred revocations, then frees the held page runs no deferred frame covers
    /// any more (xen.ko does this on its xenbus thread every 250 ms while any is deferred;
    /// here [`HostXen::pump`] does it first).
    pub fn poll_deferred(&self) {
        if lock(&self.deferred).is_empty() {
            return;
        }
        self.grants.poll_deferred(&mut |gfn| {
            let mut deferred = lock(&self.deferred);
            if let Some(n) = deferred.get_mut(&gfn) {
                *n -= 1;
                if *n == 0 {
                    deferred.remove(&gfn);
                }
            }
        });
        let deferred = lock(&self.deferred);
        let mut free = Vec::new();
        lock(&self.held).retain(|&(first, count)| {
            let covered = deferred
                .range(first..first + u64::from(count))
                .next()
                .is_some();
            if !covered {
                free.push((first, count));
            }
            covered
        });
        drop(deferred);
        for (first, count) in free {
            self.memory.free(first, count);
        }
    }

    /// Revokes `r` (granted on `gfn`); a deferred revocation is remembered for `gfn`.
    fn revoke_ref(&self, r: GrantRef, gfn: u64) -> Revoked {
        match self.grants.revoke(r) {
            Revoke::Done => Revoked::Done,
            Revoke::Deferred => {
                *lock(&self.deferred).entry(gfn).or_insert(0) += 1;
                Revoked::Deferred
            }
        }
    }

    /// The shared xenstore connection (for test set-up: writing the toolstack's nodes).
    pub fn xs(&self) -> MutexGuard<'_, Xs<T>> {
        lock(&self.xs)
    }

    fn register(
        &self,
        role: Role,
        driver: Box<dyn Driver<HostStore<T>> + Send>,
        hooks: crate::Hooks<HostStore<T>>,
    ) -> Result<HostReg<T>, Errno> {
        let id = {
            let mut next = lock(&self.next_reg);
            let id = *next;
            *next += 1;
            id
        };
        let mut bus = Bus::new(role, self.domid);
        bus.register(driver);
        let mut store = HostStore {
            xs: Arc::clone(&self.xs),
            watches: Arc::new(Mutex::new(Vec::new())),
        };
        bus.start(&mut store).map_err(crate::xs_errno)?;
        let kicked = Arc::new(core::sync::atomic::AtomicBool::new(false));
        lock(&self.buses).insert(
            id,
            HostBus {
                bus,
                store,
                on_kick: hooks.on_kick,
                on_watch: hooks.on_watch,
                kicked: Arc::clone(&kicked),
            },
        );
        Ok(HostReg {
            id,
            buses: Arc::clone(&self.buses),
            kicked,
        })
    }

    fn bound(
        &self,
        port: Result<Port, xen_kmod::XenError>,
        handler: EventHandler,
    ) -> Result<Port, Errno> {
        let port = port.map_err(crate::xen_errno)?;
        lock(&self.handlers).insert(port, Arc::new(handler));
        Ok(port)
    }
}

impl<H: Hypervisor + Clone + Send + Sync + 'static, T: Transport + Send + 'static> XenServices
    for HostXen<H, T>
{
    type Hv = H;
    type Store = HostStore<T>;
    type Reg = HostReg<T>;

    fn hypervisor(&self) -> H {
        self.hv.clone()
    }

    fn domid(&self) -> u16 {
        self.domid
    }

    fn register_driver(
        &self,
        role: Role,
        driver: Box<dyn Driver<HostStore<T>> + Send>,
    ) -> Result<HostReg<T>, Errno> {
        self.register(role, driver, crate::Hooks::default())
    }

    fn register_driver_with_kick(
        &self,
        role: Role,
        driver: Box<dyn Driver<HostStore<T>> + Send>,
        on_kick: crate::KickFn<HostStore<T>>,
    ) -> Result<HostReg<T>, Errno> {
        let hooks = crate::Hooks {
            on_kick: Some(on_kick),
            on_watch: None,
        };
        self.register(role, driver, hooks)
    }

    fn register_driver_with_hooks(
        &self,
        role: Role,
        driver: Box<dyn Driver<HostStore<T>> + Send>,
        hooks: crate::Hooks<HostStore<T>>,
    ) -> Result<HostReg<T>, Errno> {
        self.register(role, driver, hooks)
    }

    fn evtchn_alloc_unbound(
        &self,
        remote: u16,
        _flags: BindFlags,
        handler: EventHandler,
    ) -> Result<Port, Errno> {
        self.bound(self.hv.evtchn_alloc_unbound(remote), handler)
    }

    fn evtchn_bind_interdomain(
        &self,
        remote: u16,
        remote_port: Port,
        _flags: BindFlags,
        handler: EventHandler,
    ) -> Result<Port, Errno> {
        self.bound(
            self.hv.evtchn_bind_interdomain(remote, remote_port),
            handler,
        )
    }

    fn evtchn_notify(&self, port: Port) -> Result<(), Errno> {
        if !lock(&self.handlers).contains_key(&port) {
            return Err(Errno::ENOENT);
        }
        self.hv.evtchn_send(port).map_err(crate::xen_errno)
    }

    fn evtchn_unmask(&self, port: Port) -> Result<(), Errno> {
        if !lock(&self.handlers).contains_key(&port) {
            return Err(Errno::ENOENT);
        }
        self.hv.evtchn_unmask(port).map_err(crate::xen_errno)
    }

    fn evtchn_unbind(&self, port: Port) -> Result<(), Errno> {
        lock(&self.handlers).remove(&port).ok_or(Errno::ENOENT)?;
        self.hv.evtchn_close(port).map_err(crate::xen_errno)
    }

    fn grant_access(&self, domid: u16, gfn: u64, readonly: bool) -> Result<u32, Errno> {
        let r = self.grants.grant(domid, gfn, readonly)?;
        let raw = r.raw();
        lock(&self.refs).insert(raw, (r, gfn));
        Ok(raw)
    }

    fn grant_end_access(&self, gref: u32) -> Result<(), Errno> {
        let mut refs = lock(&self.refs);
        let (r, _) = refs.get(&gref).ok_or(Errno::ENOENT)?;
        if !self.grants.end_access(r) {
            return Err(Errno::EBUSY);
        }
        if let Some((r, _)) = refs.remove(&gref) {
            // Access already ended: the revoke only frees the reference.
            let _ = self.grants.revoke(r);
        }
        Ok(())
    }

    fn grant_revoke(&self, gref: u32) -> Result<Revoked, Errno> {
        let (r, gfn) = lock(&self.refs).remove(&gref).ok_or(Errno::ENOENT)?;
        Ok(self.revoke_ref(r, gfn))
    }

    fn grant_map(&self, domid: u16, gref: u32, readonly: bool) -> Result<Mapped, Errno> {
        let slot = self.memory.reserve_slot().ok_or(Errno::ENOMEM)?;
        let mut op = [MapGrant::new(domid, gref, slot, readonly)];
        if xen_gnttab::map_grants(&self.hv, &mut op).is_err() {
            self.memory.release_slot(slot);
            return Err(Errno::EINVAL);
        }
        let [op] = op;
        let Some(mem) = self.memory.view_slot(slot) else {
            if xen_gnttab::unmap_grants(&self.hv, &mut [op.handle]).is_ok() {
                self.memory.release_slot(slot);
            }
            return Err(Errno::EIO);
        };
        lock(&self.maps).insert(slot, op.handle);
        Ok(Mapped {
            mem,
            handle: slot,
            va: usize::try_from(slot).unwrap_or(0),
        })
    }

    fn grant_unmap(&self, m: Mapped) -> Result<(), Errno> {
        let handle = lock(&self.maps).remove(&m.handle).ok_or(Errno::ENOENT)?;
        if xen_gnttab::unmap_grants(&self.hv, &mut [handle]).is_err() {
            // Xen still maps it: the slot is leaked, never reused.
            return Err(Errno::EIO);
        }
        self.memory.release_slot(m.handle);
        Ok(())
    }

    fn alloc_pages(&self, count: u32) -> Result<Pages, Errno> {
        if count == 0 || count > 512 {
            return Err(Errno::EINVAL);
        }
        let (mem, gfn) = self.memory.alloc(count).ok_or(Errno::ENOMEM)?;
        lock(&self.pages).insert(gfn, count);
        Ok(Pages {
            mem,
            gfn,
            count,
            va: usize::try_from(gfn).unwrap_or(0),
        })
    }

    /// As xen.ko: grants still live on the pages are revoked first (a driver bug, or the peer
    /// could reach freed memory), and a run that a deferred revocation covers is held until
    /// the peer lets go ([`HostXen::poll_deferred`]), never handed back while mapped.
    fn free_pages(&self, pages: Pages) {
        if lock(&self.pages).remove(&pages.gfn).is_none() {
            return;
        }
        let (first, count) = (pages.gfn, u64::from(pages.count));
        let live: Vec<u32> = lock(&self.refs)
            .iter()
            .filter(|(_, (_, gfn))| (first..first + count).contains(gfn))
            .map(|(raw, _)| *raw)
            .collect();
        for raw in live {
            let taken = lock(&self.refs).remove(&raw);
            if let Some((r, gfn)) = taken {
                let _ = self.revoke_ref(r, gfn);
            }
        }
        let covered = lock(&self.deferred)
            .range(first..first + count)
            .next()
            .is_some();
        if covered {
            lock(&self.held).push((pages.gfn, pages.count));
        } else {
            self.memory.free(pages.gfn, pages.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use xen_kmod::{
        EventChannelOp, GrantTableOp, HvmOp, MemoryOp, SchedOp, VcpuOp, XenError, XenVersionOp,
    };

    /// No hypervisor: nothing here reaches it.
    #[derive(Clone, Copy, Debug)]
    struct NoHv;

    impl Hypervisor for NoHv {
        fn event_channel_op(&self, _op: EventChannelOp<'_>) -> Result<(), XenError> {
            Err(XenError::ENOSYS)
        }
        fn grant_table_op(&self, _op: GrantTableOp<'_>) -> Result<(), XenError> {
            Err(XenError::ENOSYS)
        }
        fn memory_op(&self, _op: MemoryOp<'_>) -> Result<u64, XenError> {
            Err(XenError::ENOSYS)
        }
        fn hvm_op(&self, _op: HvmOp<'_>) -> Result<(), XenError> {
            Err(XenError::ENOSYS)
        }
        fn sched_op(&self, _op: SchedOp<'_>) -> Result<u64, XenError> {
            Err(XenError::ENOSYS)
        }
        fn vcpu_op(&self, _vcpu: u32, _op: VcpuOp<'_>) -> Result<u64, XenError> {
            Err(XenError::ENOSYS)
        }
        fn xen_version(&self, _op: XenVersionOp<'_>) -> Result<u64, XenError> {
            Err(XenError::ENOSYS)
        }
    }

    /// A xenstore that never answers (nothing queued).
    struct NoStore;

    impl Transport for NoStore {
        fn send(&mut self, _bytes: &[u8]) -> Result<usize, xen_xenbus::TransportError> {
            Err(xen_xenbus::TransportError::Closed)
        }
        fn recv(&mut self, _buf: &mut [u8]) -> Result<usize, xen_xenbus::TransportError> {
            Ok(0)
        }
        fn wait_for_event(&mut self) -> Result<(), xen_xenbus::TransportError> {
            Err(xen_xenbus::TransportError::Closed)
        }
    }

    /// A grant table whose peer maps every grant until `let_go` is set: revocations are
    /// deferred, and complete at the next poll after that.
    #[derive(Default)]
    struct PeerHolds {
        let_go: Arc<AtomicBool>,
        frames: Mutex<BTreeMap<u32, u64>>,
        deferred: Mutex<Vec<u32>>,
        next: Mutex<u32>,
    }

    impl HostGrants for PeerHolds {
        fn grant(&self, _domid: u16, gfn: u64, _readonly: bool) -> Result<GrantRef, Errno> {
            let mut next = lock(&self.next);
            *next += 1;
            lock(&self.frames).insert(*next, gfn);
            Ok(GrantRef::from_foreign_table(*next))
        }
        fn end_access(&self, _r: &GrantRef) -> bool {
            self.let_go.load(Ordering::SeqCst)
        }
        fn revoke(&self, r: GrantRef) -> Revoke {
            if self.let_go.load(Ordering::SeqCst) {
                Revoke::Done
            } else {
                lock(&self.deferred).push(r.raw());
                Revoke::Deferred
            }
        }
        fn poll_deferred(&self, release: &mut dyn FnMut(u64)) {
            if !self.let_go.load(Ordering::SeqCst) {
                return;
            }
            for raw in lock(&self.deferred).drain(..) {
                release(lock(&self.frames).get(&raw).copied().unwrap_or(0));
            }
        }
    }

    /// Pages from the host heap, numbered from frame 100; frees are recorded.
    #[derive(Default)]
    struct Heap {
        next: Mutex<u64>,
        freed: Arc<Mutex<Vec<(u64, u32)>>>,
    }

    impl HostMemory for Heap {
        fn alloc(&self, count: u32) -> Option<(SharedMem<'static>, u64)> {
            let words: &'static [core::sync::atomic::AtomicU32] = Vec::leak(
                (0..count as usize * 1024)
                    .map(|_| core::sync::atomic::AtomicU32::new(0))
                    .collect(),
            );
            let mut next = lock(&self.next);
            let gfn = 100 + *next;
            *next += u64::from(count);
            Some((SharedMem::from_words(words), gfn))
        }
        fn free(&self, gfn: u64, count: u32) {
            lock(&self.freed).push((gfn, count));
        }
        fn reserve_slot(&self) -> Option<u64> {
            None
        }
        fn view_slot(&self, _host_addr: u64) -> Option<SharedMem<'static>> {
            None
        }
        fn release_slot(&self, _host_addr: u64) {}
    }

    /// Page runs the heap got back: (first frame, count).
    type Freed = Arc<Mutex<Vec<(u64, u32)>>>;

    fn host() -> (HostXen<NoHv, NoStore>, Arc<AtomicBool>, Freed) {
        let grants = PeerHolds::default();
        let let_go = Arc::clone(&grants.let_go);
        let heap = Heap::default();
        let freed = Arc::clone(&heap.freed);
        let xs = Xs::new(NoStore, xen_xenbus::Config::default());
        (
            HostXen::new(NoHv, 1, xs, Box::new(grants), Box::new(heap)),
            let_go,
            freed,
        )
    }

    #[test]
    fn pages_under_a_deferred_revoke_are_held_until_the_peer_lets_go() {
        let (xen, let_go, freed) = host();
        let pages = xen.alloc_pages(2).unwrap();
        let gfn = pages.gfn;
        let gref = xen.grant_access(0, gfn + 1, false).unwrap();
        assert_eq!(xen.grant_revoke(gref), Ok(Revoked::Deferred));
        xen.free_pages(pages);
        assert!(
            lock(&freed).is_empty(),
            "handed back while the peer maps a page"
        );
        let o = xen.outstanding();
        assert_eq!((o.pages, o.deferred, o.held), (0, 1, 1), "{o:?}");
        // Polling while the peer still maps it changes nothing.
        xen.poll_deferred();
        assert!(lock(&freed).is_empty());
        let_go.store(true, Ordering::SeqCst);
        assert_eq!(
            xen.pump(8),
            Ok(0),
            "pump polls the deferred revocations first"
        );
        assert_eq!(*lock(&freed), [(gfn, 2)]);
        assert_eq!(xen.outstanding(), Outstanding::default());
    }

    #[test]
    fn pages_freed_with_a_live_grant_revoke_it_and_are_held_if_deferred() {
        let (xen, let_go, freed) = host();
        let other = xen.alloc_pages(1).unwrap();
        let pages = xen.alloc_pages(1).unwrap();
        let gfn = pages.gfn;
        let _live = xen.grant_access(0, gfn, true).unwrap();
        xen.free_pages(pages);
        let o = xen.outstanding();
        assert_eq!((o.grants, o.deferred, o.held), (0, 1, 1), "{o:?}");
        // A run no deferred revocation covers goes back at once.
        let other_gfn = other.gfn;
        xen.free_pages(other);
        assert_eq!(*lock(&freed), [(other_gfn, 1)]);
        let_go.store(true, Ordering::SeqCst);
        xen.poll_deferred();
        assert_eq!(*lock(&freed), [(other_gfn, 1), (gfn, 1)]);
        assert_eq!(xen.outstanding(), Outstanding::default());
    }
}
