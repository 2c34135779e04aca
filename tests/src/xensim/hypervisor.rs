//! The simulated hypervisor: domains, their memory, grant tables and event channels, one
//! virtual clock, one seeded generator, and [`xen_kmod::Hypervisor`] for each domain.
//!
//! # Using it
//!
//! ```ignore
//! let sim = SimHypervisor::new(SimConfig::default());
//! let front = sim.create_domain(DomainConfig::guest())?;   // domid 1
//! let back = sim.create_domain(DomainConfig::dom0())?;     // privileged
//! // Each DomainHandle *is* that domain's `Hypervisor`: hand it to the cores under test.
//! let table = GrantTable::new(front.clone(), SimTableFrames::new(&front), 1)?;
//! let gfn = front.alloc_page().unwrap();
//! let r = table.grant(back.domid(), gfn, false)?;
//! let slots = SimForeignMemory::new(&back);
//! let m = ForeignMapping::map(&back, &slots, &[(front.domid(), r.raw())], false)?;
//! ```
//!
//! Pages are reached as [`xen_shmem::SharedMem`] views ([`DomainHandle::page`]); event
//! delivery shows up in each domain's `shared_info` bitmaps exactly where a guest's upcall
//! handler looks, plus an optional hook per domain ([`DomainHandle::set_upcall_hook`]).
//!
//! # Time and determinism
//!
//! There is no wall clock. With the default zero latency a notification is delivered inside
//! the `EVTCHNOP_send` that caused it. With [`SimConfig::event_latency`] or delay faults it is
//! queued on a virtual clock that moves only when told ([`SimHypervisor::advance`],
//! [`SimHypervisor::run_until_idle`]) or when a guest blocks (`SCHEDOP_block`/`poll` jump to
//! the next deadline). Every random choice comes from one generator seeded by
//! [`SimConfig::seed`], so a run with the same seed and the same call sequence replays exactly.
//!
//! # Threads
//!
//! Handles are `Send + Sync` and may be used from several threads at once (a frontend thread
//! and a backend thread). Hypercalls serialise on one lock; guests' own accesses to shared
//! pages are atomic and need none. Hooks are called after the lock is released.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use xen_gnttab::v1::DOMID_SELF;
use xen_kmod::{
    ConsoleIoOp, EventChannelOp, GrantTableOp, HvmOp, Hypervisor, MemoryOp, SchedOp, VcpuOp,
    XenError, XenVersionOp,
};
use xen_shmem::{Page, SharedMem};
use xen_sys::x86_64 as abi;

use super::events::{EventState, PortState};
use super::faults::{
    BatchAbort, EventChaos, EventFault, Family, Faults, GrantFault, GrantOp, HypercallFault,
};
use super::fifo::FifoState;
use super::grants::GrantState;
use super::memory::{FrameAlloc, Machine, Phys, Physmap, FOREIGN_GFN_BASE};
use super::Rng;

/// Whether `EVTCHNOP_init_control` (the FIFO ABI) is offered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FifoSupport {
    /// Refused with `ENOSYS`, as by QEMU's Xen emulation: guests must fall back to 2-level.
    #[default]
    Refuse,
    /// Offered (a simplified model, see [`super::fifo`]).
    Supported,
}

/// Simulator-wide settings.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Machine memory in 4 KiB pages, shared by all domains (RAM, grant frames, shared_info).
    pub machine_pages: usize,
    /// Grant table frames each domain may have (`max_nr_frames`).
    pub max_grant_frames: u32,
    /// Mappings each domain may hold (maptrack entries).
    pub maptrack_limit: u32,
    /// FIFO event channel ABI.
    pub fifo: FifoSupport,
    /// Notification latency in ticks, drawn uniformly from `lo..=hi` per notification.
    pub event_latency: (u64, u64),
    /// When a domain dies, mark its peers' interdomain ports pending so they notice.
    pub notify_peers_on_death: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            machine_pages: 4096,
            max_grant_frames: 32,
            maptrack_limit: 1024,
            fifo: FifoSupport::Refuse,
            event_latency: (0, 0),
            notify_peers_on_death: true,
        }
    }
}

/// Settings of one domain.
#[derive(Debug, Clone, Copy)]
pub struct DomainConfig {
    /// The domid (`None`: the lowest free one from 1, or 0 for a privileged domain).
    pub domid: Option<u16>,
    /// RAM pages, guest frames `0..ram_pages`.
    pub ram_pages: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// May act on other domains (dom0).
    pub privileged: bool,
}

impl DomainConfig {
    /// An unprivileged guest with 256 pages of RAM and one vCPU.
    #[must_use]
    pub fn guest() -> Self {
        DomainConfig {
            domid: None,
            ram_pages: 256,
            vcpus: 1,
            privileged: false,
        }
    }

    /// Domain 0: privileged, 256 pages, one vCPU.
    #[must_use]
    pub fn dom0() -> Self {
        DomainConfig {
            domid: Some(0),
            ram_pages: 256,
            vcpus: 1,
            privileged: true,
        }
    }
}

/// Why a simulator-level request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimError {
    /// Machine memory is exhausted.
    OutOfMemory,
    /// The domid is taken or reserved.
    DomidInUse(u16),
    /// No such domain.
    NoSuchDomain(u16),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::OutOfMemory => f.write_str("simulated machine memory exhausted"),
            SimError::DomidInUse(d) => write!(f, "domid {d} in use or reserved"),
            SimError::NoSuchDomain(d) => write!(f, "no domain {d}"),
        }
    }
}

impl std::error::Error for SimError {}

/// Why a guest's own memory access through the simulator failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemFault {
    /// Nothing is mapped at that guest frame.
    NotMapped,
    /// A write to a read-only foreign mapping.
    ReadOnly,
    /// Beyond the page.
    OutOfBounds,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Hypercalls made.
    pub hypercalls: u64,
    /// Notifications sent (before faults).
    pub events_sent: u64,
    /// `set_pending` runs on a live port.
    pub events_delivered: u64,
    /// Notifications dropped by a fault.
    pub events_dropped: u64,
    /// Notifications duplicated by a fault.
    pub events_duplicated: u64,
    /// Notifications delayed by a fault.
    pub events_delayed: u64,
    /// Queued notifications whose port was gone at delivery time.
    pub events_stale: u64,
    /// Upcalls raised (`evtchn_upcall_pending` going from 0 to 1).
    pub upcalls: u64,
    /// Grant map entries processed.
    pub grant_maps: u64,
    /// Grant unmap entries processed.
    pub grant_unmaps: u64,
    /// Grant copy entries processed.
    pub grant_copies: u64,
    /// Grant entries that failed (any status other than okay).
    pub grant_failures: u64,
    /// Grant entries failed by injection.
    pub injected_grant_faults: u64,
    /// Notifications hit by an event fault.
    pub injected_event_faults: u64,
    /// Whole hypercalls failed by injection.
    pub injected_hypercall_faults: u64,
    /// Domains destroyed.
    pub domains_destroyed: u64,
}

/// A hook called when a vCPU gets an upcall.
pub type UpcallHook = Arc<dyn Fn(u32) + Send + Sync>;
/// A hook called when a domain is destroyed.
pub type DeathHook = Arc<dyn Fn(u16) + Send + Sync>;

pub(crate) enum Wake {
    Upcall(UpcallHook, u32),
    Death(DeathHook, u16),
}

pub(crate) struct Domain {
    pub(crate) privileged: bool,
    pub(crate) dead: bool,
    pub(crate) shutdown: Option<u32>,
    pub(crate) vcpus: u32,
    pub(crate) physmap: Physmap,
    pub(crate) ram_pages: u32,
    pub(crate) ram_free: Vec<u64>,
    pub(crate) foreign_free: BTreeMap<u64, u64>,
    pub(crate) shared_info: usize,
    pub(crate) gnt: GrantState,
    pub(crate) evt: EventState,
    pub(crate) fifo: Option<FifoState>,
    pub(crate) hvm_params: BTreeMap<u32, u64>,
    pub(crate) upcall_vectors: BTreeMap<u32, u8>,
    pub(crate) upcall_hook: Option<UpcallHook>,
    pub(crate) upcalls: u64,
    pub(crate) console: Vec<u8>,
}

pub(crate) struct State {
    pub(crate) cfg: SimConfig,
    pub(crate) domains: BTreeMap<u16, Domain>,
    pub(crate) frames: FrameAlloc,
    pub(crate) rng: Rng,
    pub(crate) now: u64,
    pub(crate) seq: u64,
    pub(crate) queue: BinaryHeap<Reverse<(u64, u64, u16, u32)>>,
    pub(crate) faults: Faults,
    pub(crate) stats: SimStats,
    pub(crate) wake: Vec<Wake>,
    pub(crate) death_hooks: Vec<DeathHook>,
}

struct Inner {
    machine: Machine,
    state: Mutex<State>,
}

/// The simulated hypervisor. Cloning shares it.
#[derive(Clone)]
pub struct SimHypervisor {
    inner: Arc<Inner>,
}

impl fmt::Debug for SimHypervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHypervisor")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl SimHypervisor {
    /// A simulator with no domains.
    #[must_use]
    pub fn new(cfg: SimConfig) -> Self {
        let state = State {
            cfg,
            domains: BTreeMap::new(),
            frames: FrameAlloc::new(cfg.machine_pages),
            rng: Rng::new(cfg.seed),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            faults: Faults::default(),
            stats: SimStats::default(),
            wake: Vec::new(),
            death_hooks: Vec::new(),
        };
        SimHypervisor {
            inner: Arc::new(Inner {
                machine: Machine::new(cfg.machine_pages),
                state: Mutex::new(state),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a test thread must not turn every later call into a second panic.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the state, then the hooks it queued, outside the lock.
    fn with<R>(&self, f: impl FnOnce(&mut State, &Machine) -> R) -> R {
        let (r, wake) = {
            let mut st = self.lock();
            let r = f(&mut st, &self.inner.machine);
            (r, std::mem::take(&mut st.wake))
        };
        for w in wake {
            match w {
                Wake::Upcall(h, vcpu) => h(vcpu),
                Wake::Death(h, dom) => h(dom),
            }
        }
        r
    }

    pub(crate) fn machine(&self) -> &Machine {
        &self.inner.machine
    }

    /// Creates a domain.
    ///
    /// # Errors
    /// [`SimError::OutOfMemory`] or [`SimError::DomidInUse`].
    pub fn create_domain(&self, cfg: DomainConfig) -> Result<DomainHandle, SimError> {
        let domid = self.with(|st, m| {
            let domid = match cfg.domid {
                Some(d) => {
                    if d >= DOMID_SELF || st.domains.contains_key(&d) {
                        return Err(SimError::DomidInUse(d));
                    }
                    d
                }
                None => (1..DOMID_SELF)
                    .find(|d| !st.domains.contains_key(d))
                    .ok_or(SimError::DomidInUse(0))?,
            };
            let max_frames = st.cfg.max_grant_frames;
            let ram = st
                .frames
                .run(cfg.ram_pages as usize)
                .ok_or(SimError::OutOfMemory)?;
            let gnt = st
                .frames
                .run(max_frames as usize)
                .ok_or(SimError::OutOfMemory)?;
            let si = st.frames.one().ok_or(SimError::OutOfMemory)?;
            for mfn in (ram..ram + cfg.ram_pages as usize).chain(gnt..gnt + max_frames as usize) {
                m.zero(mfn);
            }
            m.zero(si);
            let mut physmap = Physmap::default();
            for (gfn, mfn) in (0u64..).zip(ram..ram + cfg.ram_pages as usize) {
                physmap.map.insert(gfn, Phys::Ram(mfn));
            }
            let mut foreign_free = BTreeMap::new();
            foreign_free.insert(FOREIGN_GFN_BASE, 1 << 20);
            let vcpus = cfg.vcpus.max(1);
            st.domains.insert(
                domid,
                Domain {
                    privileged: cfg.privileged,
                    dead: false,
                    shutdown: None,
                    vcpus,
                    physmap,
                    ram_pages: cfg.ram_pages,
                    // Low frames are left to the test (e.g. a xenstore page); pop from the end.
                    ram_free: (16.min(u64::from(cfg.ram_pages))..u64::from(cfg.ram_pages))
                        .rev()
                        .collect(),
                    foreign_free,
                    shared_info: si,
                    gnt: GrantState::new(gnt, max_frames, st.cfg.maptrack_limit),
                    evt: EventState::new(vcpus),
                    fifo: None,
                    hvm_params: BTreeMap::new(),
                    upcall_vectors: BTreeMap::new(),
                    upcall_hook: None,
                    upcalls: 0,
                    console: Vec::new(),
                },
            );
            Ok(domid)
        })?;
        Ok(DomainHandle {
            sim: self.clone(),
            domid,
        })
    }

    /// The handle of an existing domain (dead ones included).
    #[must_use]
    pub fn domain(&self, domid: u16) -> Option<DomainHandle> {
        let exists = self.lock().domains.contains_key(&domid);
        exists.then(|| DomainHandle {
            sim: self.clone(),
            domid,
        })
    }

    /// Kills a domain, as `xl destroy` would: its mappings of others' grants are released
    /// (clearing `GTF_reading`/`GTF_writing` in the granters' entries), its event channels
    /// are closed (peers' ports become unbound, and are marked pending if
    /// [`SimConfig::notify_peers_on_death`]), its pending notifications are discarded, and new
    /// maps or copies of its grants fail with `GNTST_bad_domain`. Pages of it that others
    /// still map stay valid until they unmap them (the domain is a zombie until then).
    /// Returns `false` if there is no such live domain.
    pub fn destroy_domain(&self, domid: u16) -> bool {
        self.with(|st, m| {
            if st.domains.get(&domid).is_none_or(|d| d.dead) {
                return false;
            }
            st.release_mappings(m, domid);
            let notify = st.cfg.notify_peers_on_death;
            st.close_all(m, domid, notify);
            if let Some(d) = st.domains.get_mut(&domid) {
                d.dead = true;
                d.upcall_hook = None;
            }
            st.stats.domains_destroyed += 1;
            let hooks: Vec<DeathHook> = st.death_hooks.clone();
            st.wake
                .extend(hooks.into_iter().map(|h| Wake::Death(h, domid)));
            true
        })
    }

    /// Calls `hook(domid)` whenever a domain is destroyed (e.g. for xenstored's
    /// `@releaseDomain`).
    pub fn on_domain_destroyed(&self, hook: impl Fn(u16) + Send + Sync + 'static) {
        self.lock().death_hooks.push(Arc::new(hook));
    }

    /// Fails matching grant entries with a chosen status.
    pub fn inject_grant_fault(&self, f: GrantFault) {
        self.lock().faults.grant.push(f);
    }

    /// Aborts the next matching grant batch part-way with a hypercall error.
    pub fn inject_batch_abort(&self, a: BatchAbort) {
        self.lock().faults.abort.push(a);
    }

    /// Fails matching whole hypercalls.
    pub fn inject_hypercall_fault(&self, f: HypercallFault) {
        self.lock().faults.hypercall.push(f);
    }

    /// Drops, duplicates or delays matching notifications.
    pub fn inject_event_fault(&self, f: EventFault) {
        self.lock().faults.event.push(f);
    }

    /// Random event faults from the seeded generator.
    pub fn set_event_chaos(&self, c: EventChaos) {
        self.lock().faults.chaos = c;
    }

    /// Removes every fault rule and the chaos setting.
    pub fn clear_faults(&self) {
        self.lock().faults = Faults::default();
    }

    /// The virtual time.
    #[must_use]
    pub fn now(&self) -> u64 {
        self.lock().now
    }

    /// Moves the clock forward by `ticks` and delivers what became due; returns how many.
    pub fn advance(&self, ticks: u64) -> usize {
        self.with(|st, m| {
            st.now += ticks;
            st.run_due(m)
        })
    }

    /// Delivers every queued notification, jumping the clock from deadline to deadline;
    /// returns how many were delivered.
    pub fn run_until_idle(&self) -> usize {
        self.with(|st, m| {
            let mut n = 0;
            while let Some(&Reverse((due, ..))) = st.queue.peek() {
                st.now = st.now.max(due);
                n += st.run_due(m);
            }
            n
        })
    }

    /// Notifications waiting on the clock.
    #[must_use]
    pub fn queued_events(&self) -> usize {
        self.lock().queue.len()
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }
}

/// One simulated domain: its [`Hypervisor`] and the guest-side helpers tests need (its pages,
/// its grant frames, slots for foreign mappings, upcall observation). Cloning is cheap.
#[derive(Clone)]
pub struct DomainHandle {
    sim: SimHypervisor,
    domid: u16,
}

impl fmt::Debug for DomainHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainHandle")
            .field("domid", &self.domid)
            .finish()
    }
}

impl DomainHandle {
    /// The domain's id.
    #[must_use]
    pub fn domid(&self) -> u16 {
        self.domid
    }

    /// The simulator.
    #[must_use]
    pub fn sim(&self) -> &SimHypervisor {
        &self.sim
    }

    fn with<R>(&self, f: impl FnOnce(&mut State, &Machine) -> R) -> R {
        self.sim.with(f)
    }

    fn dom<R>(&self, f: impl FnOnce(&Domain) -> R) -> Option<R> {
        self.sim.lock().domains.get(&self.domid).map(f)
    }

    /// Whether the domain is alive.
    #[must_use]
    pub fn is_alive(&self) -> bool {
        self.dom(|d| !d.dead).unwrap_or(false)
    }

    /// A zeroed page of the domain's RAM, by guest frame number (the guest's page allocator).
    #[must_use]
    pub fn alloc_page(&self) -> Option<u64> {
        self.with(|st, m| {
            let d = st.domains.get_mut(&self.domid)?;
            let gfn = d.ram_free.pop()?;
            if let Some(Phys::Ram(mfn)) = d.physmap.get(gfn) {
                m.zero(mfn);
            }
            Some(gfn)
        })
    }

    /// Gives a page back to [`DomainHandle::alloc_page`].
    pub fn free_page(&self, gfn: u64) {
        self.with(|st, _| {
            if let Some(d) = st.domains.get_mut(&self.domid) {
                if gfn < u64::from(d.ram_pages) && !d.ram_free.contains(&gfn) {
                    d.ram_free.push(gfn);
                }
            }
        });
    }

    fn resolve(&self, gfn: u64, write: bool) -> Result<usize, MemFault> {
        let st = self.sim.lock();
        let d = st.domains.get(&self.domid).ok_or(MemFault::NotMapped)?;
        match d.physmap.get(gfn).ok_or(MemFault::NotMapped)? {
            Phys::Ram(mfn) => Ok(mfn),
            Phys::GrantFrame(i) => Ok(d.gnt.base + i as usize),
            Phys::SharedInfo => Ok(d.shared_info),
            Phys::Foreign(h) => {
                let t = d
                    .gnt
                    .maptrack
                    .get(h as usize)
                    .copied()
                    .flatten()
                    .ok_or(MemFault::NotMapped)?;
                if write && t.readonly {
                    return Err(MemFault::ReadOnly);
                }
                Ok(t.mfn)
            }
        }
    }

    /// The page at guest frame `gfn`, writable: RAM, a grant or shared_info frame placed
    /// there, or a *writable* foreign mapping. `None` for a read-only mapping or nothing.
    #[must_use]
    pub fn page(&self, gfn: u64) -> Option<SharedMem<'_>> {
        let mfn = self.resolve(gfn, true).ok()?;
        self.sim.machine().view(mfn, 1)
    }

    /// The page at `gfn` whatever its permission (a read-only mapping included): for reading.
    #[must_use]
    pub fn page_any(&self, gfn: u64) -> Option<SharedMem<'_>> {
        let mfn = self.resolve(gfn, false).ok()?;
        self.sim.machine().view(mfn, 1)
    }

    /// Reads guest memory.
    ///
    /// # Errors
    /// [`MemFault::NotMapped`], [`MemFault::OutOfBounds`].
    pub fn read(&self, gfn: u64, offset: usize, buf: &mut [u8]) -> Result<(), MemFault> {
        let mfn = self.resolve(gfn, false)?;
        let v = self.sim.machine().view(mfn, 1).ok_or(MemFault::NotMapped)?;
        v.copy_to_slice(offset, buf)
            .map_err(|_| MemFault::OutOfBounds)
    }

    /// Writes guest memory, enforcing read-only foreign mappings as the p2m would.
    ///
    /// # Errors
    /// [`MemFault::ReadOnly`], [`MemFault::NotMapped`], [`MemFault::OutOfBounds`].
    pub fn write(&self, gfn: u64, offset: usize, data: &[u8]) -> Result<(), MemFault> {
        let mfn = self.resolve(gfn, true)?;
        let v = self.sim.machine().view(mfn, 1).ok_or(MemFault::NotMapped)?;
        v.copy_from_slice(offset, data)
            .map_err(|_| MemFault::OutOfBounds)
    }

    /// The domain's shared_info page (wherever, or whether, the guest placed it).
    #[must_use]
    pub fn shared_info(&self) -> SharedMem<'_> {
        let mfn = self.dom(|d| d.shared_info).unwrap_or(0);
        self.sim
            .machine()
            .view(mfn, 1)
            .unwrap_or_else(|| SharedMem::from_words(&[]))
    }

    /// The machine frames reserved for the domain's grant table (all `max_grant_frames`).
    #[must_use]
    pub fn grant_frames(&self) -> &[Page] {
        let (base, n) = self
            .dom(|d| (d.gnt.base, d.gnt.max_frames as usize))
            .unwrap_or((0, 0));
        self.sim.machine().pages.get(base..base + n).unwrap_or(&[])
    }

    /// Machine frame number of grant frame 0 (what `GNTTABOP_setup_table` returns first).
    #[must_use]
    pub fn grant_frame_mfn(&self) -> u64 {
        self.dom(|d| d.gnt.base as u64).unwrap_or(0)
    }

    /// `(nr_frames, max_nr_frames)` of the domain's grant table.
    #[must_use]
    pub fn grant_table_size(&self) -> (u32, u32) {
        self.dom(|d| (d.gnt.nr_frames, d.gnt.max_frames))
            .unwrap_or((0, 0))
    }

    /// Foreign grants this domain has mapped right now.
    #[must_use]
    pub fn mappings(&self) -> usize {
        self.dom(|d| d.gnt.mappings()).unwrap_or(0)
    }

    /// Reserves `count` contiguous unpopulated guest frames for foreign mappings.
    #[must_use]
    pub fn reserve_gfns(&self, count: u64) -> Option<u64> {
        if count == 0 {
            return None;
        }
        self.with(|st, _| {
            let d = st.domains.get_mut(&self.domid)?;
            let (&start, &len) = d.foreign_free.iter().find(|(_, &l)| l >= count)?;
            d.foreign_free.remove(&start);
            if len > count {
                d.foreign_free.insert(start + count, len - count);
            }
            Some(start)
        })
    }

    /// Returns frames from [`DomainHandle::reserve_gfns`].
    pub fn release_gfns(&self, start: u64, count: u64) {
        self.with(|st, _| {
            if let Some(d) = st.domains.get_mut(&self.domid) {
                if count > 0 && start >= FOREIGN_GFN_BASE {
                    d.foreign_free.insert(start, count);
                }
            }
        });
    }

    /// Calls `hook(vcpu)` whenever one of the domain's vCPUs gets an upcall.
    pub fn set_upcall_hook(&self, hook: impl Fn(u32) + Send + Sync + 'static) {
        self.with(|st, _| {
            if let Some(d) = st.domains.get_mut(&self.domid) {
                d.upcall_hook = Some(Arc::new(hook));
            }
        });
    }

    /// Upcalls raised for this domain so far.
    #[must_use]
    pub fn upcalls(&self) -> u64 {
        self.dom(|d| d.upcalls).unwrap_or(0)
    }

    /// Raises a virtual IRQ (e.g. `VIRQ_TIMER`, `VIRQ_DOM_EXC`); `false` if not bound.
    pub fn raise_virq(&self, virq: u32, vcpu: u32) -> bool {
        self.with(|st, m| st.raise_virq(m, self.domid, virq, vcpu))
    }

    /// The state of one of the domain's ports.
    #[must_use]
    pub fn port_state(&self, port: u32) -> PortState {
        self.dom(|d| d.evt.get(port).map_or(PortState::Free, |p| p.state))
            .unwrap_or(PortState::Free)
    }

    /// Sets an HVM parameter (as the toolstack does: `HVM_PARAM_STORE_PFN`, ...).
    pub fn set_hvm_param(&self, index: u32, value: u64) {
        self.with(|st, _| {
            if let Some(d) = st.domains.get_mut(&self.domid) {
                d.hvm_params.insert(index, value);
            }
        });
    }

    /// An HVM parameter (0 if unset).
    #[must_use]
    pub fn hvm_param(&self, index: u32) -> u64 {
        self.dom(|d| d.hvm_params.get(&index).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// What the domain wrote with `CONSOLEIO_write`.
    #[must_use]
    pub fn console(&self) -> Vec<u8> {
        self.dom(|d| d.console.clone()).unwrap_or_default()
    }

    /// The `SCHEDOP_shutdown` reason, if the domain shut down.
    #[must_use]
    pub fn shutdown_reason(&self) -> Option<u32> {
        self.dom(|d| d.shutdown).flatten()
    }

    fn call<R>(
        &self,
        family: Option<Family>,
        f: impl FnOnce(&mut State, &Machine) -> Result<R, XenError>,
    ) -> Result<R, XenError> {
        self.with(|st, m| {
            st.stats.hypercalls += 1;
            if st.domains.get(&self.domid).is_none_or(|d| d.dead) {
                return Err(XenError::ESRCH);
            }
            if let Some(fam) = family {
                if let Some(e) = st.faults.hypercall(fam, self.domid) {
                    st.stats.injected_hypercall_faults += 1;
                    return Err(e);
                }
            }
            f(st, m)
        })
    }

    fn is_pending(st: &State, m: &Machine, dom: u16, port: u32) -> bool {
        let Some(d) = st.domains.get(&dom) else {
            return false;
        };
        if st.is_fifo(dom) {
            return st.fifo_is_pending(m, dom, port);
        }
        let off =
            core::mem::offset_of!(abi::shared_info, evtchn_pending) / 4 + (port / 32) as usize;
        m.page(d.shared_info)
            .and_then(|p| p.0.get(off))
            .is_some_and(|w| w.load(std::sync::atomic::Ordering::SeqCst) & (1 << (port % 32)) != 0)
    }
}

fn fill_str(dst: &mut [core::ffi::c_char], s: &str) {
    for (d, b) in dst.iter_mut().zip(s.bytes().chain(core::iter::repeat(0))) {
        // CAST: ASCII bytes into C chars.
        *d = b as core::ffi::c_char;
    }
}

impl State {
    fn resolve_target(&self, caller: u16, dom: u16) -> Result<u16, XenError> {
        let dom = if dom == DOMID_SELF { caller } else { dom };
        if dom != caller && !self.domains.get(&caller).is_some_and(|d| d.privileged) {
            return Err(XenError::EPERM);
        }
        if !self.domains.contains_key(&dom) {
            return Err(XenError::ESRCH);
        }
        Ok(dom)
    }

    fn grant_batch<T>(
        &mut self,
        m: &Machine,
        caller: u16,
        op: GrantOp,
        entries: &mut [T],
        mut one: impl FnMut(&mut State, &Machine, &mut T),
    ) -> Result<(), XenError> {
        if u32::try_from(entries.len()).is_err() {
            return Err(XenError::EINVAL);
        }
        let abort = self.faults.batch_abort(op, caller);
        for (i, e) in entries.iter_mut().enumerate() {
            if let Some((after, err)) = abort {
                if i >= after as usize {
                    self.stats.injected_hypercall_faults += 1;
                    return Err(err);
                }
            }
            one(self, m, e);
        }
        Ok(())
    }

    fn memory_op(&mut self, m: &Machine, caller: u16, op: MemoryOp<'_>) -> Result<u64, XenError> {
        match op {
            MemoryOp::AddToPhysmap(x) => {
                let dom = self.resolve_target(caller, x.domid)?;
                let gpfn = x.gpfn;
                let phys = match x.space {
                    s if s == abi::XENMAPSPACE_shared_info => {
                        if x.idx != 0 {
                            return Err(XenError::EINVAL);
                        }
                        Phys::SharedInfo
                    }
                    s if s == abi::XENMAPSPACE_grant_table => {
                        if x.idx & u64::from(abi::XENMAPIDX_grant_table_status) != 0 {
                            // Status frames exist only in grant table v2.
                            return Err(XenError::EINVAL);
                        }
                        let idx = u32::try_from(x.idx).map_err(|_| XenError::EINVAL)?;
                        self.grow_table(dom, idx + 1)?;
                        Phys::GrantFrame(idx)
                    }
                    _ => return Err(XenError::EINVAL),
                };
                let d = self.domains.get_mut(&dom).ok_or(XenError::ESRCH)?;
                if matches!(d.physmap.get(gpfn), Some(Phys::Foreign(_))) {
                    return Err(XenError::EBUSY);
                }
                // A Xen page lives at one GFN at a time: moving it unmaps the old place.
                d.physmap.map.retain(|_, p| *p != phys);
                d.physmap.map.insert(gpfn, phys);
                Ok(0)
            }
            MemoryOp::RemoveFromPhysmap(r) => {
                let dom = self.resolve_target(caller, r.domid)?;
                let d = self.domains.get_mut(&dom).ok_or(XenError::ESRCH)?;
                match d.physmap.get(r.gpfn) {
                    None | Some(Phys::Foreign(_)) => Err(XenError::EINVAL),
                    Some(_) => {
                        d.physmap.map.remove(&r.gpfn);
                        Ok(0)
                    }
                }
            }
            MemoryOp::PopulatePhysmap { args, extents } => {
                let dom = self.resolve_target(caller, args.domid)?;
                let n = usize::try_from(args.nr_extents).map_err(|_| XenError::EINVAL)?;
                if n > extents.len() || args.extent_order != 0 {
                    return Err(XenError::EINVAL);
                }
                let mut done = 0u64;
                for &gfn in &extents[..n] {
                    if self
                        .domains
                        .get(&dom)
                        .and_then(|d| d.physmap.get(gfn))
                        .is_some()
                    {
                        break;
                    }
                    let Some(mfn) = self.frames.one() else { break };
                    m.zero(mfn);
                    if let Some(d) = self.domains.get_mut(&dom) {
                        d.physmap.map.insert(gfn, Phys::Ram(mfn));
                    }
                    done += 1;
                }
                Ok(done)
            }
            MemoryOp::DecreaseReservation { args, extents } => {
                let dom = self.resolve_target(caller, args.domid)?;
                let n = usize::try_from(args.nr_extents).map_err(|_| XenError::EINVAL)?;
                if n > extents.len() || args.extent_order != 0 {
                    return Err(XenError::EINVAL);
                }
                let mut done = 0u64;
                for &gfn in &extents[..n] {
                    let Some(d) = self.domains.get_mut(&dom) else {
                        break;
                    };
                    let Some(Phys::Ram(mfn)) = d.physmap.get(gfn) else {
                        break;
                    };
                    d.physmap.map.remove(&gfn);
                    d.ram_free.retain(|&g| g != gfn);
                    self.frames.give(mfn);
                    done += 1;
                }
                Ok(done)
            }
            MemoryOp::IncreaseReservation { .. } => Err(XenError::ENOSYS),
            MemoryOp::CurrentReservation(dom) => {
                let dom = self.resolve_target(caller, *dom)?;
                let d = self.domains.get(&dom).ok_or(XenError::ESRCH)?;
                Ok(d.physmap
                    .map
                    .values()
                    .filter(|p| matches!(p, Phys::Ram(_)))
                    .count() as u64)
            }
            MemoryOp::MaximumReservation(dom) => {
                let dom = self.resolve_target(caller, *dom)?;
                let d = self.domains.get(&dom).ok_or(XenError::ESRCH)?;
                Ok(u64::from(d.ram_pages) * 2)
            }
            MemoryOp::MaximumGpfn(dom) => {
                let dom = self.resolve_target(caller, *dom)?;
                let d = self.domains.get(&dom).ok_or(XenError::ESRCH)?;
                Ok(d.physmap.map.keys().next_back().copied().unwrap_or(0))
            }
        }
    }

    /// Jumps the clock to the next deadline and delivers what is due (a blocked guest waits).
    fn block(&mut self, m: &Machine) {
        if let Some(&Reverse((due, ..))) = self.queue.peek() {
            self.now = self.now.max(due);
            self.run_due(m);
        }
    }
}

impl Hypervisor for DomainHandle {
    fn event_channel_op(&self, op: EventChannelOp<'_>) -> Result<(), XenError> {
        let me = self.domid;
        self.call(Some(Family::EventChannel), |st, m| st.event_op(m, me, op))
    }

    fn grant_table_op(&self, op: GrantTableOp<'_>) -> Result<(), XenError> {
        let me = self.domid;
        self.call(Some(Family::GrantTable), |st, m| match op {
            GrantTableOp::MapGrantRef(ops) => {
                st.grant_batch(m, me, GrantOp::Map, ops, |st, m, e| st.map_one(m, me, e))
            }
            GrantTableOp::UnmapGrantRef(ops) => {
                st.grant_batch(m, me, GrantOp::Unmap, ops, |st, m, e| {
                    st.unmap_one(m, me, e)
                })
            }
            GrantTableOp::Copy(ops) => {
                st.grant_batch(m, me, GrantOp::Copy, ops, |st, m, e| st.copy_one(m, me, e))
            }
            GrantTableOp::QuerySize(q) => {
                match st.gnt_target(me, q.dom) {
                    Ok(dom) => {
                        let (nr, max) = st
                            .domains
                            .get(&dom)
                            .map_or((0, 0), |d| (d.gnt.nr_frames, d.gnt.max_frames));
                        q.nr_frames = nr;
                        q.max_nr_frames = max;
                        q.status = 0;
                    }
                    Err(s) => q.status = s,
                }
                Ok(())
            }
            GrantTableOp::SetupTable { args, frames } => {
                if args.nr_frames as usize > frames.len() {
                    return Err(XenError::EINVAL);
                }
                let dom = match st.gnt_target(me, args.dom) {
                    Ok(d) => d,
                    Err(s) => {
                        args.status = s;
                        return Ok(());
                    }
                };
                if st.grow_table(dom, args.nr_frames).is_err() {
                    args.status = xen_gnttab::GntStatus::GeneralError.to_raw();
                    return Ok(());
                }
                let base = st.domains.get(&dom).map_or(0, |d| d.gnt.base as u64);
                for (f, i) in frames.iter_mut().take(args.nr_frames as usize).zip(0u64..) {
                    *f = base + i;
                }
                args.status = 0;
                Ok(())
            }
            GrantTableOp::SetVersion(v) => {
                // Only v1 is simulated (as Xen booted with gnttab=max-ver:1).
                if v.version == 1 {
                    Ok(())
                } else {
                    v.version = 1;
                    Err(XenError::EINVAL)
                }
            }
            GrantTableOp::GetVersion(v) => {
                v.version = 1;
                Ok(())
            }
            GrantTableOp::GetStatusFrames { .. } => Err(XenError::EINVAL),
        })
    }

    fn memory_op(&self, op: MemoryOp<'_>) -> Result<u64, XenError> {
        let me = self.domid;
        self.call(Some(Family::Memory), |st, m| st.memory_op(m, me, op))
    }

    fn hvm_op(&self, op: HvmOp<'_>) -> Result<(), XenError> {
        let me = self.domid;
        self.call(Some(Family::Hvm), |st, _| match op {
            HvmOp::SetParam(p) => {
                let dom = st.resolve_target(me, p.domid)?;
                if p.index >= abi::HVM_NR_PARAMS {
                    return Err(XenError::EINVAL);
                }
                if let Some(d) = st.domains.get_mut(&dom) {
                    d.hvm_params.insert(p.index, p.value);
                }
                Ok(())
            }
            HvmOp::GetParam(p) => {
                let dom = st.resolve_target(me, p.domid)?;
                if p.index >= abi::HVM_NR_PARAMS {
                    return Err(XenError::EINVAL);
                }
                p.value = st
                    .domains
                    .get(&dom)
                    .and_then(|d| d.hvm_params.get(&p.index).copied())
                    .unwrap_or(0);
                Ok(())
            }
            HvmOp::SetEvtchnUpcallVector(v) => {
                let d = st.domains.get_mut(&me).ok_or(XenError::ESRCH)?;
                if v.vcpu >= d.vcpus {
                    return Err(XenError::ENOENT);
                }
                d.upcall_vectors.insert(v.vcpu, v.vector);
                Ok(())
            }
        })
    }

    fn sched_op(&self, op: SchedOp<'_>) -> Result<u64, XenError> {
        let me = self.domid;
        self.call(None, |st, m| match op {
            SchedOp::Yield => Ok(0),
            SchedOp::Block => {
                st.block(m);
                Ok(0)
            }
            SchedOp::Shutdown { reason } => {
                if let Some(d) = st.domains.get_mut(&me) {
                    d.shutdown = Some(reason);
                }
                Ok(0)
            }
            SchedOp::Poll { ports, .. } => {
                if !ports
                    .iter()
                    .any(|&p| DomainHandle::is_pending(st, m, me, p))
                {
                    st.block(m);
                }
                Ok(0)
            }
        })
    }

    fn vcpu_op(&self, vcpu: u32, op: VcpuOp<'_>) -> Result<u64, XenError> {
        let me = self.domid;
        self.call(None, |st, _| {
            let vcpus = st.domains.get(&me).map_or(0, |d| d.vcpus);
            if vcpu >= vcpus {
                return Err(XenError::ENOENT);
            }
            match op {
                VcpuOp::RegisterVcpuInfo(r) => {
                    st.register_vcpu_info(me, vcpu, r.mfn, r.offset).map(|()| 0)
                }
                VcpuOp::IsUp => Ok(1),
                VcpuOp::Up
                | VcpuOp::Down
                | VcpuOp::SetSingleshotTimer(_)
                | VcpuOp::StopSingleshotTimer
                | VcpuOp::StopPeriodicTimer => Ok(0),
            }
        })
    }

    fn xen_version(&self, op: XenVersionOp<'_>) -> Result<u64, XenError> {
        let me = self.domid;
        self.call(None, |st, _| match op {
            XenVersionOp::Version => Ok(0x0004_0011),
            XenVersionOp::ExtraVersion(s) => {
                fill_str(s, ".0-xensim");
                Ok(0)
            }
            XenVersionOp::Capabilities(s) => {
                fill_str(s, "hvm-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p");
                Ok(0)
            }
            XenVersionOp::GetFeatures(f) => {
                f.submap = 0;
                if f.submap_idx == 0 {
                    let mut bits = (1 << abi::XENFEAT_auto_translated_physmap)
                        | (1 << abi::XENFEAT_hvm_callback_vector)
                        | (1 << abi::XENFEAT_hvm_safe_pvclock);
                    if st.domains.get(&me).is_some_and(|d| d.privileged) {
                        bits |= 1 << abi::XENFEAT_dom0;
                    }
                    f.submap = bits;
                }
                Ok(0)
            }
            XenVersionOp::PageSize => Ok(4096),
            XenVersionOp::GuestHandle(h) => {
                *h = [0; 16];
                h[..2].copy_from_slice(&me.to_be_bytes());
                Ok(0)
            }
        })
    }

    fn console_io(&self, op: ConsoleIoOp<'_>) -> Result<u64, XenError> {
        let me = self.domid;
        self.call(None, |st, _| match op {
            ConsoleIoOp::Write(b) => {
                if let Some(d) = st.domains.get_mut(&me) {
                    d.console.extend_from_slice(b);
                }
                Ok(b.len() as u64)
            }
            ConsoleIoOp::Read(_) => Ok(0),
        })
    }
}
