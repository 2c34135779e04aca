//! xen.ko's bring-up and teardown, and the state behind the services it exports.
//!
//! Bring-up runs in this order; each step either completes or fails with a logged reason
//! (`xen: <step>: <why>`), and a failure unwinds every completed step in reverse (the values
//! are dropped in reverse order of construction — each owns what its step acquired):
//!
//! 1. `hypercall-page`: a kernel page whose physical frame goes to the Xen MSR (CPUID leaf
//!    base+2), through xen-kmod's arch code;
//! 2. `version`: `XENVER_version` must agree with CPUID's;
//! 3. `shared-info`: a kernel page handed to `XENMEM_add_to_physmap(XENMAPSPACE_shared_info)`;
//! 4. `event-channels`: xen-evtchn (FIFO when Xen accepts it, else 2-level);
//! 5. `threads`: the events and xenbus taskqueue threads;
//! 6. `upcall`: the per-vCPU vector or the platform PCI interrupt (`hw.xenrs.upcall`); the
//!    shim's handler only queues the events task, which polls the core (bounded) and runs
//!    handlers in thread context, because FreeBSD's interrupt filters may not sleep or take
//!    sleep locks;
//! 7. `grant-table`: xen-gnttab over kernel pages placed with `XENMAPSPACE_grant_table`;
//! 8. `xenstore`: the ring named by `HVM_PARAM_STORE_PFN`, its port adopted with a handler
//!    that wakes waiters and queues the xenbus task.
//!
//! Teardown is the reverse, and is only reached when nothing uses the platform (the module
//! refuses to unload while a registration, port, grant, mapping or page run is live).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use freebsd_kpi::sync::SxLock;
use freebsd_kpi::{kprintln, Errno};
use xen_evtchn::{AbiChoice, BindOptions, Event, EventChannels, PageSource};
use xen_gnttab::{GrantRef, GrantTable, TableFrames};
use xen_kmod::arch::cpuid::XenCpuid;
use xen_kmod::hvm::{self, HvmParam};
use xen_kmod::shared::{SharedInfo, SharedInfoMapping};
use xen_kmod::{Hypervisor, HypervisorExt};
use xen_shmem::SharedMem;
use xen_xenbus::{EventPort, RingTransport, TransportError, Xs};

use crate::kpi::{self, KFrame, KPages, Threads, Upcall};
use crate::Upcall as UpcallMode;

/// The hypervisor handle every core of xen.ko uses.
pub type Hv = &'static (dyn Hypervisor + Send + Sync);

/// The raw trap exported to the driver modules (`xenrs_hypercall`).
pub type RawTrap = &'static (dyn Fn(&xen_kmod::arch::marshal::RawCall) -> isize + Send + Sync);

/// The bring-up steps, in order (for messages and failure injection in tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    HypercallPage,
    Version,
    SharedInfo,
    EventChannels,
    Threads,
    Upcall,
    GrantTable,
    Xenstore,
}

impl Step {
    /// Every step in bring-up order.
    pub const ALL: [Step; 8] = [
        Step::HypercallPage,
        Step::Version,
        Step::SharedInfo,
        Step::EventChannels,
        Step::Threads,
        Step::Upcall,
        Step::GrantTable,
        Step::Xenstore,
    ];

    /// The step's name in console messages.
    pub fn name(self) -> &'static str {
        match self {
            Step::HypercallPage => "hypercall-page",
            Step::Version => "version",
            Step::SharedInfo => "shared-info",
            Step::EventChannels => "event-channels",
            Step::Threads => "threads",
            Step::Upcall => "upcall",
            Step::GrantTable => "grant-table",
            Step::Xenstore => "xenstore",
        }
    }
}

fn fail<E: core::fmt::Display>(step: Step, errno: Errno) -> impl FnOnce(E) -> Errno {
    move |e| {
        kprintln!("xen: {}: {e}; not loading", step.name());
        errno
    }
}

/// Pages for the FIFO control blocks and event arrays. Once Xen runs the FIFO ABI it keeps
/// them for the domain's life, so they are leaked then (counted in [`FIFO_PAGES`]); when Xen
/// refused FIFO (2-level in use) it never saw them and they are freed with the core.
#[derive(Debug)]
pub struct FifoPages {
    pages: Vec<KPages>,
}

/// Set once Xen accepted the FIFO ABI (then it holds the pages for the domain's life).
static FIFO_ACTIVE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// FIFO pages Xen holds (leaked at unload).
pub static FIFO_PAGES: AtomicU32 = AtomicU32::new(0);

impl PageSource<'static> for FifoPages {
    fn alloc_page(&mut self) -> Result<(SharedMem<'static>, u64), xen_evtchn::Error> {
        self.pages
            .try_reserve(1)
            .map_err(|_| xen_evtchn::Error::NoMemory)?;
        let page = KPages::alloc(1, false).map_err(|_| xen_evtchn::Error::NoMemory)?;
        let mem = page.shared().map_err(|_| xen_evtchn::Error::NoMemory)?;
        let gfn = page.gfn();
        self.pages.push(page);
        Ok((mem, gfn))
    }
}

impl Drop for FifoPages {
    fn drop(&mut self) {
        if FIFO_ACTIVE.load(Ordering::Acquire) {
            for p in self.pages.drain(..) {
                FIFO_PAGES.fetch_add(1, Ordering::Relaxed);
                p.leak();
            }
        }
    }
}

/// Grant-table frames: kernel pages, each placed by Xen at its own frame.
#[derive(Debug)]
pub struct Frames {
    pages: KPages,
}

impl TableFrames<'static> for Frames {
    fn frames(&self) -> SharedMem<'static> {
        self.pages
            .shared()
            .unwrap_or_else(|_| SharedMem::from_words(&[]))
    }
    fn gfn(&self, idx: u32) -> Option<u64> {
        (idx < self.pages.count()).then(|| self.pages.gfn() + u64::from(idx))
    }
}

/// Grant-table frames reserved (512 references each).
pub const GNTTAB_FRAMES: u32 = 4;

/// The xenstore port: notify with `EVTCHNOP_send`, wait by sleeping until the port's
/// handler wakes us (or 100 ms pass; the blocking layer bounds the number of waits).
pub struct StorePort {
    hv: Hv,
    port: u32,
    chan: &'static AtomicU64,
}

impl core::fmt::Debug for StorePort {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StorePort")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl EventPort for StorePort {
    fn notify(&mut self) -> Result<(), TransportError> {
        self.hv
            .evtchn_send(self.port)
            .map_err(|_| TransportError::Closed)
    }
    fn wait(&mut self) -> Result<(), TransportError> {
        kpi::sleep(self.chan, 100);
        Ok(())
    }
}

/// Where the xenstore ring lives.
#[derive(Debug)]
pub enum StoreRing {
    /// The frame Xen named (`HVM_PARAM_STORE_PFN`), mapped.
    Xen(KFrame),
    /// A page of ours, for the xenstored of this (control) domain to map through
    /// /dev/xen/xenstored.
    Local(KPages),
}

impl StoreRing {
    fn shared(&self) -> Result<SharedMem<'static>, Errno> {
        match self {
            StoreRing::Xen(f) => f.shared(),
            StoreRing::Local(p) => p.shared(),
        }
    }

    /// Physical address of a local ring (what /dev/xen/xenstored maps).
    pub fn local_pa(&self) -> Option<u64> {
        match self {
            StoreRing::Xen(_) => None,
            StoreRing::Local(p) => Some(p.pa()),
        }
    }
}

/// Wait channel of the xenstore port (its events counter).
pub static STORE_EVENTS: AtomicU64 = AtomicU64::new(0);

/// Token of the xenstore port in the event-channel core.
pub const STORE_TOKEN: u64 = 0;

/// Event handler registered through the exported ABI: C function and argument.
#[derive(Clone, Copy, Debug)]
pub struct CHandler {
    pub func: unsafe extern "C" fn(*mut core::ffi::c_void, u32),
    pub arg: usize,
}

/// What the event thread dispatches a token to.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// The xenstore port.
    Store,
    /// A driver's handler.
    Driver(CHandler),
}

/// Statistics under `hw.xenrs`.
#[derive(Debug, Default)]
pub struct Counters {
    /// The thread running handlers now (0 when none): unbinding from a handler would wait
    /// for itself, and is refused with `EDEADLK` instead.
    pub dispatching: AtomicU64,
    pub upcalls: AtomicU64,
    pub events: AtomicU64,
    pub dropped: AtomicU64,
}

/// The live platform.
pub struct Platform {
    /// vCPU 0's `vcpu_info` (in shared_info), whose upcall flag the interrupt filter clears.
    pub vcpu0: xen_kmod::shared::VcpuInfo<'static>,
    pub hv: Hv,
    pub raw: RawTrap,
    pub xen: XenCpuid,
    pub domid: u16,
    pub upcall_mode: UpcallMode,
    pub upcall_at: u32,
    // Field order is drop order: everything that views a page is dropped before the page.
    pub xs: SxLock<Xs<RingTransport<'static, StorePort>>>,
    pub store_port: u32,
    /// The ring's memory (dropped after `xs`, which views it).
    pub store: StoreRing,
    pub gnttab: GrantTable<'static, Hv, Frames>,
    /// The grant table frames, for tests that play the peer (setting an entry's in-use bits).
    #[cfg(test)]
    pub gnttab_view: SharedMem<'static>,
    /// Our references handed out through the ABI: raw -> owned.
    pub grants: SxLock<BTreeMap<u32, (GrantRef, u64)>>,
    /// Frames whose revocation Xen deferred (a peer still maps them), with a count per frame:
    /// pages covering them are held back from the kernel until the peer lets go.
    pub deferred: SxLock<BTreeMap<u64, u32>>,
    /// Declared before `_upcall`: Xen stops raising the line before the handler goes.
    _callback: Option<CallbackGuard>,
    _upcall: Upcall,
    _threads: Threads,
    pub evtchn: SxLock<EventChannels<'static, Hv, FifoPages>>,
    /// Port -> where its events go.
    pub targets: SxLock<BTreeMap<u32, Target>>,
    /// Serialises handler runs with unbind ("nothing fires after unbind").
    pub dispatch: SxLock<()>,
    pub counters: Counters,
    /// Domain 0's local store: xenstored has signalled at least once.
    pub store_alive: core::sync::atomic::AtomicBool,
    /// Dropped after every core that views shared_info (declared after them).
    _shared_info: SharedInfoGuard,
    _hypercall_page: Option<KPages>,
}

impl core::fmt::Debug for Platform {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Platform")
            .field("domid", &self.domid)
            .field("upcall", &self.upcall_mode)
            .finish_non_exhaustive()
    }
}

/// The upcall mode to use. `auto` is the per-vCPU vector when Xen advertises it
/// (`XEN_HVM_CPUID_UPCALL_VECTOR`) or when there is no platform PCI device to take an
/// interrupt from (PVH), else the platform device's interrupt. An explicit `vector` is tried
/// even without the CPUID bit: older Xen versions have `HVMOP_set_evtchn_upcall_vector`
/// without advertising it, and the global callback vector is the fallback.
fn upcall_mode(xen: &XenCpuid, asked: UpcallMode, pci_present: bool) -> UpcallMode {
    match asked {
        UpcallMode::Auto if xen.has_upcall_vector() || !pci_present => UpcallMode::Vector,
        UpcallMode::Auto => UpcallMode::Pci,
        other => other,
    }
}

impl Platform {
    /// Brings the platform up (see the module docs); on failure everything done is undone.
    ///
    /// `install` performs step 1 (the real MSR write in the kernel; a test hypervisor in host
    /// tests) and returns the hypervisor handle.
    ///
    /// # Errors
    /// The errno `kldload` reports; the console names the step and the reason.
    pub fn bring_up(
        xen: XenCpuid,
        asked: UpcallMode,
        fifo: bool,
        install: impl FnOnce(&XenCpuid, &KPages) -> Result<(Hv, RawTrap), Errno>,
    ) -> Result<Platform, Errno> {
        let pci_present = kpi::pci_present();
        let upcall_mode = upcall_mode(&xen, asked, pci_present);
        // 1. Hypercall page.
        let hpage = KPages::alloc(1, true).map_err(fail(Step::HypercallPage, Errno::ENOMEM))?;
        let (hv, raw) = install(&xen, &hpage)?;
        // 2. Version.
        let (major, minor) = hv
            .xen_version_numbers()
            .map_err(fail(Step::Version, Errno::ENXIO))?;
        if (major, minor) != (xen.major, xen.minor) {
            kprintln!(
                "xen: version: XENVER_version says {major}.{minor}, CPUID {}.{}; not loading",
                xen.major,
                xen.minor
            );
            return Err(Errno::ENXIO);
        }
        // 3. shared_info.
        let si_page = KPages::alloc(1, false).map_err(fail(Step::SharedInfo, Errno::ENOMEM))?;
        SharedInfoMapping {
            gpfn: si_page.gfn(),
        }
        .map(hv)
        .map_err(fail(Step::SharedInfo, Errno::ENXIO))?;
        let si = si_page
            .shared()
            .and_then(|m| SharedInfo::new(m).map_err(|_| Errno::EINVAL))
            .map_err(fail(Step::SharedInfo, Errno::ENXIO))?;
        // From here a failure must not free the shared_info frame back to the kernel: Xen's
        // page now sits at that frame. `SharedInfoGuard` restores RAM there or leaks it.
        let si_guard = SharedInfoGuard {
            hv,
            page: Some(si_page),
        };
        // 4. Event channels.
        let vcpu0 = si
            .legacy_vcpu_info(0)
            .ok_or(Errno::ENXIO)
            .map_err(fail(Step::EventChannels, Errno::ENXIO))?;
        let config = xen_evtchn::Config {
            abi: if fifo {
                AbiChoice::PreferFifo
            } else {
                AbiChoice::TwoLevel
            },
            max_vcpus: kpi::ncpus(),
            ..xen_evtchn::Config::default()
        };
        let ec = EventChannels::new(hv, FifoPages { pages: Vec::new() }, si, vcpu0, config)
            .map_err(fail(Step::EventChannels, Errno::ENXIO))?;
        if ec.abi() == xen_evtchn::Abi::Fifo {
            FIFO_ACTIVE.store(true, Ordering::Release);
        }
        let evtchn =
            SxLock::new(c"xenrs evtchn", ec).map_err(fail(Step::EventChannels, Errno::ENOMEM))?;
        let targets = SxLock::new(c"xenrs targets", BTreeMap::new())
            .map_err(fail(Step::EventChannels, Errno::ENOMEM))?;
        let dispatch =
            SxLock::new(c"xenrs dispatch", ()).map_err(fail(Step::EventChannels, Errno::ENOMEM))?;
        // 5. Threads.
        let threads = Threads::start().map_err(fail(Step::Threads, Errno::ENOMEM))?;
        // 6. Upcall. `auto` chose the vector; where it cannot be had and the platform device
        // is there, the device's interrupt still works.
        let (upcall, callback, upcall_mode) = match install_upcall(hv, vcpu0, upcall_mode) {
            Err(e)
                if asked == UpcallMode::Auto
                    && upcall_mode == UpcallMode::Vector
                    && pci_present =>
            {
                kprintln!("xen: upcall: the per-vCPU vector failed ({e}); using the platform PCI device's interrupt");
                install_upcall(hv, vcpu0, UpcallMode::Pci)?
            }
            other => other?,
        };
        // 7. Grant table.
        let frames =
            KPages::alloc(GNTTAB_FRAMES, false).map_err(fail(Step::GrantTable, Errno::ENOMEM))?;
        #[cfg(test)]
        let gnttab_view = frames.shared()?;
        let gnttab = GrantTable::new(hv, Frames { pages: frames }, 1)
            .map_err(fail(Step::GrantTable, Errno::ENXIO))?;
        let deferred = SxLock::new(c"xenrs deferred", BTreeMap::new())
            .map_err(fail(Step::GrantTable, Errno::ENOMEM))?;
        let grants = SxLock::new(c"xenrs grants", BTreeMap::new())
            .map_err(fail(Step::GrantTable, Errno::ENOMEM))?;
        // 8. xenstore: the ring Xen names, or (a control domain before xenstored runs, when
        // HVM_PARAM_STORE_PFN is 0) a ring of our own with an unbound port for ourselves,
        // which xenstored picks up through /dev/xen/xenstored.
        let pfn =
            hvm::get_param(hv, HvmParam::StorePfn).map_err(fail(Step::Xenstore, Errno::ENXIO))?;
        let (store, port, adopted) = if pfn == 0 {
            if xen.domid.unwrap_or(0) != 0 {
                kprintln!("xen: xenstore: Xen names no store ring (HVM_PARAM_STORE_PFN 0) and this is not domain 0; not loading");
                return Err(Errno::ENXIO);
            }
            let page = KPages::alloc(1, false).map_err(fail(Step::Xenstore, Errno::ENOMEM))?;
            let port = evtchn
                .lock()
                .alloc_unbound(0, BindOptions::new(STORE_TOKEN))
                .map_err(fail(Step::Xenstore, Errno::ENXIO))?;
            (StoreRing::Local(page), port, false)
        } else {
            let port = hvm::get_port_param(hv, HvmParam::StoreEvtchn)
                .map_err(fail(Step::Xenstore, Errno::ENXIO))?;
            let frame = KFrame::map(pfn).map_err(fail(Step::Xenstore, Errno::ENOMEM))?;
            (StoreRing::Xen(frame), port, true)
        };
        let mem = store.shared().map_err(fail(Step::Xenstore, Errno::ENXIO))?;
        let transport = RingTransport::attach(
            mem,
            StorePort {
                hv,
                port,
                chan: &STORE_EVENTS,
            },
        )
        .map_err(|e| {
            kprintln!("xen: xenstore: ring unusable: {e:?}; not loading");
            Errno::ENXIO
        })?;
        let mut xsc = Xs::new(transport, xen_xenbus::Config::default());
        xsc.set_max_waits(300);
        let xs =
            SxLock::new(c"xenrs xenstore", xsc).map_err(fail(Step::Xenstore, Errno::ENOMEM))?;
        if adopted {
            evtchn
                .lock()
                .adopt(port, BindOptions::new(STORE_TOKEN))
                .map_err(fail(Step::Xenstore, Errno::ENXIO))?;
        }
        targets.lock().insert(port, Target::Store);
        let domid = xen.domid.unwrap_or(0);
        Ok(Platform {
            vcpu0,
            hv,
            raw,
            xen,
            domid,
            upcall_mode,
            upcall_at: upcall.at,
            xs,
            store_port: port,
            store,
            gnttab,
            #[cfg(test)]
            gnttab_view,
            grants,
            deferred,
            _callback: callback,
            _upcall: upcall,
            _threads: threads,
            evtchn,
            targets,
            dispatch,
            counters: Counters::default(),
            store_alive: core::sync::atomic::AtomicBool::new(false),
            _shared_info: si_guard,
            _hypercall_page: Some(hpage),
        })
    }

    /// shared_info, for tests that raise events by hand.
    #[cfg(test)]
    pub fn shared_info_view(&self) -> SharedInfo<'static> {
        let page = self._shared_info.page.as_ref().expect("shared_info page");
        SharedInfo::new(page.shared().expect("view")).expect("shared_info")
    }

    /// The interrupt filter's work: lower Xen's line (clear vCPU 0's upcall flag; the events
    /// task's poll scans the pending bits, so nothing is lost) and queue the events task. One
    /// atomic store and a `taskqueue_enqueue`: allowed in a filter.
    pub fn upcall(&self) {
        self.vcpu0.clear_upcall_pending();
        kpi::kick(kpi::Task::Events);
    }

    /// The events task: polls the core in bounded rounds and runs each event's target with no
    /// lock of the core held; queues itself again when work remains.
    pub fn run_events(&self, m: &crate::XenModule) {
        self.counters.upcalls.fetch_add(1, Ordering::Relaxed);
        let mut buf = [Event::default(); 32];
        for _ in 0..8 {
            let now = kpi::now_ns();
            let (outcome, deadline) = {
                let mut ec = self.evtchn.lock();
                ec.tick(now);
                (ec.poll_all(now, &mut buf), ec.next_deadline())
            };
            // A throttled port is unmasked by `tick` once its deferral ends, even if nothing
            // else fires meanwhile: come back then.
            if let Some(at) = deadline {
                let ms = at.saturating_sub(now).div_ceil(1_000_000);
                kpi::kick_after(
                    kpi::Task::Events,
                    u32::try_from(ms).unwrap_or(u32::MAX).max(1),
                );
            }
            let Ok(outcome) = outcome else { return };
            let _serial = self.dispatch.lock();
            self.counters.dispatching.store(
                u64::try_from(kpi::curthread()).unwrap_or(u64::MAX),
                Ordering::Release,
            );
            for ev in buf.iter().take(outcome.delivered) {
                let target = self.targets.lock().get(&ev.port).copied();
                match target {
                    Some(Target::Store) => {
                        STORE_EVENTS.fetch_add(1, Ordering::Relaxed);
                        kpi::wakeup(&STORE_EVENTS);
                        if self.store.local_pa().is_some()
                            && !self.store_alive.swap(true, Ordering::AcqRel)
                        {
                            // Domain 0: xenstored has just come up. Buses that started
                            // before got no answers; starting again is harmless.
                            m.restart_registrations();
                        }
                        kpi::kick(kpi::Task::Xenbus);
                    }
                    Some(Target::Driver(h)) => {
                        self.counters.events.fetch_add(1, Ordering::Relaxed);
                        // SAFETY-free: the call is in services.rs (the KPI layer).
                        crate::services::call_handler(h, ev.port);
                    }
                    None if ev.token >= crate::cdev::FILE_TOKEN_BASE => {
                        if !crate::cdev::deliver_evtchn(m, ev.token, ev.port) {
                            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            self.counters.dispatching.store(0, Ordering::Release);
            if !outcome.more {
                return;
            }
        }
        kpi::kick(kpi::Task::Events);
    }
}

/// Step 6 in `mode` (`Vector` or `Pci`): the interrupt, and what makes Xen raise it.
fn install_upcall(
    hv: Hv,
    vcpu0: xen_kmod::shared::VcpuInfo<'static>,
    mode: UpcallMode,
) -> Result<(Upcall, Option<CallbackGuard>, UpcallMode), Errno> {
    let upcall = Upcall::setup(mode as u32).inspect_err(|e| {
        kprintln!("xen: upcall: {mode:?} set-up failed: {e}; not loading");
    })?;
    let callback = if mode == UpcallMode::Vector {
        let guard = tell_xen_the_vector(hv, vcpu0, upcall.at)?;
        // Events that came before Xen knew the vector raised no interrupt: poll once, and let
        // the next event raise vCPU 0's flag (and the vector) again.
        vcpu0.clear_upcall_pending();
        kpi::kick(kpi::Task::Events);
        guard
    } else {
        // Xen raises the platform device's interrupt line (its GSI) for upcalls.
        hvm::set_param(
            hv,
            HvmParam::CallbackIrq,
            hvm::CallbackVia::Gsi(upcall.at).encode(),
        )
        .map_err(fail(Step::Upcall, Errno::ENXIO))?;
        CallbackGuard::Param { hv }
    };
    Ok((upcall, Some(callback), mode))
}

/// Tells Xen to raise `vector` on vCPU 0 (the boot CPU, whose local APIC has it): the
/// per-vCPU `HVMOP_set_evtchn_upcall_vector`, or where Xen refuses that (it is `ENOSYS` for
/// domains created without per-vCPU upcalls in some versions) and this is the only CPU, the
/// global callback vector `HVM_PARAM_CALLBACK_IRQ` (which Xen raises on every vCPU with
/// events pending; with more CPUs the vector would have to be the same on every local APIC,
/// which FreeBSD's allocator does not promise). Only vCPU 0 is told: every port xen.ko binds
/// notifies vCPU 0.
fn tell_xen_the_vector(
    hv: Hv,
    vcpu0: xen_kmod::shared::VcpuInfo<'static>,
    at: u32,
) -> Result<CallbackGuard, Errno> {
    let Ok(vector) = u8::try_from(at) else {
        kprintln!("xen: upcall: vector {at} out of range; not loading");
        return Err(Errno::ENXIO);
    };
    match hvm::set_upcall_vector(hv, 0, vector) {
        Ok(()) => Ok(CallbackGuard::PerVcpu(vcpu0)),
        Err(e) if kpi::ncpus() == 1 => {
            kprintln!(
                "xen: upcall: HVMOP_set_evtchn_upcall_vector: {e}; using the callback vector"
            );
            hvm::set_param(
                hv,
                HvmParam::CallbackIrq,
                hvm::CallbackVia::Vector(vector).encode(),
            )
            .map_err(fail(Step::Upcall, Errno::ENXIO))?;
            Ok(CallbackGuard::Param { hv })
        }
        Err(e) => {
            kprintln!("xen: upcall: HVMOP_set_evtchn_upcall_vector: {e}, and the callback vector needs a single CPU; not loading");
            Err(Errno::ENXIO)
        }
    }
}

/// What makes Xen stop raising our upcall, done on drop (before the interrupt goes).
pub(crate) enum CallbackGuard {
    /// `HVM_PARAM_CALLBACK_IRQ` (GSI or global vector): cleared.
    Param { hv: Hv },
    /// A per-vCPU vector on vCPU 0. Xen has no way to clear one (it refuses vectors below
    /// 0x10), but it raises the vector only when vCPU 0's `evtchn_upcall_pending` goes from 0
    /// to 1: the flag is left set, and nothing clears it until the next load's filter runs.
    PerVcpu(xen_kmod::shared::VcpuInfo<'static>),
}

impl Drop for CallbackGuard {
    fn drop(&mut self) {
        match self {
            CallbackGuard::Param { hv } => {
                let _ = hvm::set_param(*hv, HvmParam::CallbackIrq, 0);
            }
            CallbackGuard::PerVcpu(v) => {
                let _ = v.set_upcall_pending();
            }
        }
    }
}

/// Owns the shared_info page after `XENMEM_add_to_physmap`: dropping it removes Xen's page
/// from that frame and repopulates RAM there before freeing; if Xen refuses either, the page
/// is leaked (never handed back to the kernel while Xen's page occupies its frame).
struct SharedInfoGuard {
    hv: Hv,
    page: Option<KPages>,
}

/// A frame number in Xen's `xen_pfn_t` (32 bits on i386); `None` when it does not fit.
pub fn xen_pfn(gfn: u64) -> Option<xen_sys::native::xen_pfn_t> {
    xen_sys::native::xen_pfn_t::try_from(gfn).ok()
}

fn release_shared_info(hv: Hv, page: KPages) {
    let gfn = page.gfn();
    let Some(pfn) = xen_pfn(gfn) else {
        page.leak();
        return;
    };
    let mut rm = xen_sys::native::xen_remove_from_physmap {
        domid: xen_kmod::DOMID_SELF,
        gpfn: pfn,
        ..Default::default()
    };
    let removed = hv.memory_op(xen_kmod::MemoryOp::RemoveFromPhysmap(&mut rm));
    let mut extents = [pfn];
    let mut args = xen_sys::native::xen_memory_reservation {
        nr_extents: 1,
        domid: xen_kmod::DOMID_SELF,
        ..Default::default()
    };
    let repopulated = removed.and_then(|_| {
        hv.memory_op(xen_kmod::MemoryOp::PopulatePhysmap {
            args: &mut args,
            extents: &mut extents,
        })
    });
    if repopulated == Ok(1) {
        drop(page);
    } else {
        kprintln!("xen: shared_info frame {gfn:#x} could not be given back to RAM; leaking it");
        page.leak();
    }
}

impl Drop for SharedInfoGuard {
    fn drop(&mut self) {
        if let Some(page) = self.page.take() {
            release_shared_info(self.hv, page);
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        // Our own ports first (the adopted store port is only forgotten), then the fields
        // drop in declaration order: xenstore, grant table, upcall, threads, event channels.
        let ports: Vec<u32> = self.evtchn.lock().ports().collect();
        for p in ports {
            let _ = self.evtchn.lock().close(p);
        }
    }
}
