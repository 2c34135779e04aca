//! The netfront/netback platforms over `xensim`, and event delivery to data-path threads.
//!
//! Each domain runs the real `xen-evtchn` core ([`Hub`]); the simulator's upcall hook only
//! bumps a counter (hooks run on whatever thread made the hypercall, so they must not take
//! the core's lock), a dispatcher loop ([`Hub::dispatch`]) polls the core and kicks the
//! [`Kick`] registered for each port, and data-path threads wait on their kicks.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use xen_evtchn::{
    AbiChoice, BindOptions, Config, Error as EvError, Event, EventChannels, PageSource,
};
use xen_gnttab::{ForeignMapping, GrantRef, GrantTable, Revoke};
use xen_kmod::shared::SharedInfo;
use xen_netback::{BackendPlatform, LocalPage, PlatformError as BePlatformError};
use xen_netfront::{FrontendPlatform, PlatformError as FePlatformError};
use xen_shmem::SharedMem;

use crate::xensim::grants::{SimForeignMemory, SimTableFrames};
use crate::xensim::DomainHandle;

/// A counter threads can wait on for a change.
#[derive(Debug, Default)]
pub struct Kick {
    n: Mutex<u64>,
    cv: Condvar,
}

impl Kick {
    /// Bumps the counter and wakes the waiters.
    pub fn kick(&self) {
        let mut n = self
            .n
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *n += 1;
        self.cv.notify_all();
    }

    /// Waits until the counter differs from `*seen` (or `timeout`); updates `*seen`. True if
    /// it changed.
    pub fn wait(&self, seen: &mut u64, timeout: Duration) -> bool {
        let n = self
            .n
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (n, _) = self
            .cv
            .wait_timeout_while(n, timeout, |n| *n == *seen)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = *n != *seen;
        *seen = *n;
        changed
    }
}

struct SimPages<'h>(&'h DomainHandle);

impl<'h> PageSource<'h> for SimPages<'h> {
    fn alloc_page(&mut self) -> Result<(SharedMem<'h>, u64), EvError> {
        let gfn = self.0.alloc_page().ok_or(EvError::NoMemory)?;
        let page = self.0.page(gfn).ok_or(EvError::NoMemory)?;
        Ok((page, gfn))
    }
}

type Ec<'h> = EventChannels<'h, &'h DomainHandle, SimPages<'h>>;

/// One domain's event-channel core and the kicks of its ports.
pub struct Hub<'h> {
    ec: Mutex<Ec<'h>>,
    kicks: Mutex<BTreeMap<u32, Arc<Kick>>>,
    upcall: Arc<Kick>,
    start: std::time::Instant,
}

impl std::fmt::Debug for Hub<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl<'h> Hub<'h> {
    /// The hub of `dom` (installs the domain's upcall hook).
    ///
    /// # Panics
    /// If the simulated domain has no usable shared_info (a broken test set-up).
    #[must_use]
    pub fn new(dom: &'h DomainHandle) -> Self {
        let shared = SharedInfo::new(dom.shared_info()).expect("shared_info");
        let vcpu0 = shared.legacy_vcpu_info(0).expect("vcpu_info");
        let cfg = Config {
            abi: AbiChoice::PreferFifo,
            max_vcpus: 1,
            ..Config::default()
        };
        let ec = EventChannels::new(dom, SimPages(dom), shared, vcpu0, cfg).expect("evtchn core");
        let upcall = Arc::new(Kick::default());
        let u = upcall.clone();
        dom.set_upcall_hook(move |_| u.kick());
        Hub {
            ec: Mutex::new(ec),
            kicks: Mutex::new(BTreeMap::new()),
            upcall,
            start: std::time::Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ec<'h>> {
        self.ec
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The kick of `port` (created on first use).
    pub fn kick(&self, port: u32) -> Arc<Kick> {
        self.kicks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(port)
            .or_default()
            .clone()
    }

    /// Makes `port` kick `kick` (a worker serving several ports waits on one kick).
    pub fn set_kick(&self, port: u32, kick: Arc<Kick>) {
        self.kicks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(port, kick);
    }

    /// Allocates an unbound port for `remote`.
    ///
    /// # Errors
    /// The core's.
    pub fn alloc_unbound(&self, remote: u16) -> Result<u32, EvError> {
        let p = self.lock().alloc_unbound(remote, BindOptions::new(0))?;
        self.kick(p);
        Ok(p)
    }

    /// Binds to `remote`'s port.
    ///
    /// # Errors
    /// The core's.
    pub fn bind(&self, remote: u16, port: u32) -> Result<u32, EvError> {
        let p = self
            .lock()
            .bind_interdomain(remote, port, BindOptions::new(0))?;
        self.kick(p);
        Ok(p)
    }

    /// Closes a port.
    pub fn close(&self, port: u32) {
        let _ = self.lock().close(port);
        self.kicks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&port);
    }

    /// One dispatcher round: waits up to `timeout` for an upcall, then delivers every
    /// pending event to its port's kick. Returns the events delivered.
    pub fn dispatch(&self, seen: &mut u64, timeout: Duration) -> usize {
        self.upcall.wait(seen, timeout);
        let mut total = 0;
        let mut out = [Event::default(); 64];
        for _ in 0..64 {
            let (r, now) = {
                let mut ec = self.lock();
                let now = self.now();
                ec.tick(now);
                (ec.poll_all(now, &mut out), now)
            };
            let _ = now;
            let Ok(r) = r else { break };
            let kicks = self
                .kicks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for e in &out[..r.delivered] {
                if let Some(k) = kicks.get(&e.port) {
                    k.kick();
                }
            }
            total += r.delivered;
            if !r.more {
                break;
            }
        }
        total
    }
}

/// A simulated guest's grant table.
pub type SimGrantTable<'h> = GrantTable<'h, &'h DomainHandle, SimTableFrames<'h>>;

/// netback's platform over a simulated driver domain.
#[derive(Debug)]
pub struct SimBackend<'e, 'h> {
    dom: &'h DomainHandle,
    hub: &'e Hub<'h>,
    slots: SimForeignMemory<'h>,
}

impl<'e, 'h> SimBackend<'e, 'h> {
    /// The platform of `dom`.
    #[must_use]
    pub fn new(dom: &'h DomainHandle, hub: &'e Hub<'h>) -> Self {
        SimBackend {
            dom,
            hub,
            slots: SimForeignMemory::new(dom),
        }
    }
}

impl<'h> BackendPlatform<'h> for SimBackend<'_, 'h> {
    type Hv = &'h DomainHandle;
    type Mapping = ForeignMapping;

    fn hypervisor(&self) -> Self::Hv {
        self.dom
    }

    fn map_ring(
        &mut self,
        domid: u16,
        gref: u32,
    ) -> Result<(ForeignMapping, SharedMem<'h>), BePlatformError> {
        let m = ForeignMapping::map(self.dom, &self.slots, &[(domid, gref)], false)
            .map_err(|_| BePlatformError::Map)?;
        let Some(mem) = m.page(&self.slots, 0).and_then(|p| p.writable()) else {
            let _ = m.unmap(self.dom, &self.slots);
            return Err(BePlatformError::Map);
        };
        Ok((m, mem))
    }

    fn unmap_ring(&mut self, m: ForeignMapping) {
        let _ = m.unmap(self.dom, &self.slots);
    }

    fn bind(&mut self, domid: u16, remote_port: u32) -> Result<u32, BePlatformError> {
        self.hub
            .bind(domid, remote_port)
            .map_err(|_| BePlatformError::Bind)
    }

    fn unbind(&mut self, port: u32) {
        self.hub.close(port);
    }

    fn local_page(&mut self) -> Result<LocalPage<'h>, BePlatformError> {
        let gfn = self.dom.alloc_page().ok_or(BePlatformError::NoMemory)?;
        let mem = self.dom.page(gfn).ok_or(BePlatformError::NoMemory)?;
        Ok(LocalPage { gfn, mem })
    }

    fn free_page(&mut self, page: LocalPage<'h>) {
        self.dom.free_page(page.gfn);
    }
}

/// netfront's platform over a simulated guest.
pub struct SimFrontend<'e, 'h> {
    dom: &'h DomainHandle,
    hub: &'e Hub<'h>,
    table: &'e SimGrantTable<'h>,
    /// Pages whose revoke was deferred (still mapped by the backend).
    pub deferred: usize,
}

impl std::fmt::Debug for SimFrontend<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimFrontend")
            .field("deferred", &self.deferred)
            .finish_non_exhaustive()
    }
}

impl<'e, 'h> SimFrontend<'e, 'h> {
    /// The platform of `dom` with its grant table.
    #[must_use]
    pub fn new(dom: &'h DomainHandle, hub: &'e Hub<'h>, table: &'e SimGrantTable<'h>) -> Self {
        SimFrontend {
            dom,
            hub,
            table,
            deferred: 0,
        }
    }

    /// Frees pages whose deferred revoke completed.
    pub fn poll_deferred(&mut self) {
        let dom = self.dom;
        let r = self
            .table
            .poll_deferred(|gfn| dom.free_page(u64::from(gfn)));
        self.deferred = r.pending as usize;
    }
}

impl<'h> FrontendPlatform<'h> for SimFrontend<'_, 'h> {
    type Hv = &'h DomainHandle;
    type Grant = GrantRef;

    fn hypervisor(&self) -> Self::Hv {
        self.dom
    }

    fn alloc_page(&mut self) -> Result<(u64, SharedMem<'h>), FePlatformError> {
        let gfn = self.dom.alloc_page().ok_or(FePlatformError::NoMemory)?;
        let mem = self.dom.page(gfn).ok_or(FePlatformError::NoMemory)?;
        Ok((gfn, mem))
    }

    fn grant(
        &mut self,
        domid: u16,
        gfn: u64,
        readonly: bool,
    ) -> Result<(u32, GrantRef), FePlatformError> {
        match self.table.grant(domid, gfn, readonly) {
            Ok(r) => Ok((r.raw(), r)),
            Err(_) => {
                self.dom.free_page(gfn);
                Err(FePlatformError::Grant)
            }
        }
    }

    fn release(&mut self, gfn: u64, grant: GrantRef) {
        match self.table.revoke(grant) {
            Revoke::Done => self.dom.free_page(gfn),
            Revoke::Deferred => self.deferred += 1,
        }
    }

    fn alloc_unbound(&mut self, remote: u16) -> Result<u32, FePlatformError> {
        self.hub
            .alloc_unbound(remote)
            .map_err(|_| FePlatformError::Evtchn)
    }

    fn close(&mut self, port: u32) {
        self.hub.close(port);
    }
}
