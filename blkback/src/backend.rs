//! The backend device: xenbus negotiation (control path) and ring service (data path).
//!
//! # Data flow of one request
//!
//! 1. The frontend's event (or a reschedule) makes the platform call [`Backend::poll`].
//! 2. Store completions are collected first (they free ring slots and unblock flushes), and
//!    again after new requests were submitted, for as long as the store completes some: a
//!    store that completes inside `submit` gets its requests answered in the same poll.
//! 3. Per queue, up to `budget` requests are **copied out of the ring once**
//!    ([`BackRingAny::pop_request`]) and validated ([`Request::parse`]); the slot is never read
//!    again. A protocol violation stops the device (logged with its reason); a request that
//!    merely cannot be served gets `BLKIF_RSP_ERROR` or `BLKIF_RSP_EOPNOTSUPP`.
//! 4. Indirect segment pages are mapped (or grant-copied), their descriptors copied out once
//!    and validated, then unmapped.
//! 5. Data pages: looked up in the persistent cache, the misses mapped in one batched
//!    `GNTTABOP_map_grant_ref` with per-entry status (read-only when only read) — or, in copy
//!    mode, grant-copied into the backend's own pages. Any failure answers the request with
//!    an error; nothing panics and successful mappings are unmapped exactly.
//! 6. The I/O goes to the [`BlockStore`]; flushes and barriers first wait for every earlier
//!    write (device-wide) to complete; a barrier also stops its queue until it is done.
//! 7. On completion: copy-out for reads in copy mode, unmap, a zeroed response is pushed, and
//!    the frontend notified if it asked (`rsp_event`).
//!
//! # Control path
//!
//! [`Backend::probe`], [`Backend::otherend_changed`] and [`Backend::remove`] are meant to be
//! called from a [`xen_xenbus::Driver`]; [`Backend::service_control`] finishes what the data
//! path cannot do without xenstore (closing after in-flight I/O drained, reporting a failure)
//! and should be called after [`Backend::poll`] when [`PollResult::control`] is set.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use xen_gnttab::{
    copy_grants, map_grants, map_grants_each, unmap_grants, CopyPtr, GrantCopy, MapGrant, MapHandle,
};
use xen_ring::Fault;
use xen_shmem::SharedMem;
use xen_sys::consts::{BlkifStatus, VdiskInfo};
use xen_xenbus::{Device, Error as XsErr, Store, XenbusState};

use crate::cache::PersistentCache;
use crate::env::{BackendEnv, Level, LocalPage};
use crate::proto::{
    decode_indirect_page, keys, parse_bool, parse_indirect_segments, parse_u64, switch_state, Abi,
    BackRingAny, DataRequest, Limits, Operation, Request, Segment, Segments, Violation,
    WireRequest, WireResponse, WireSegment, MAX_DIRECT_SEGMENTS, MAX_INDIRECT_PAGES,
    MAX_INDIRECT_SEGMENTS, MAX_QUEUES, MAX_RING_PAGE_ORDER, PAGE_SIZE, SECTOR_SHIFT,
    SEGS_PER_INDIRECT_PAGE,
};
use crate::store::{BlockStore, DiscardInfo, Io, IoError, IoOp, IoTag, StoreInfo};

/// Most rounds of "collect completions, take requests" in one [`Backend::poll`] (see there);
/// a store still completing after that gets [`PollResult::more`] instead.
const MAX_PASSES: u32 = 16;

/// How data moves between the frontend's pages and the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    /// Map the frontend's grants (and keep them mapped with persistent grants).
    Map,
    /// Grant-copy into and out of the backend's own pages (no foreign mappings for data).
    Copy,
}

/// Tunables of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendConfig {
    /// `max-ring-page-order` offered (at most [`MAX_RING_PAGE_ORDER`]).
    pub max_ring_page_order: u32,
    /// `multi-queue-max-queues` offered (1..=[`MAX_QUEUES`]).
    pub max_queues: u32,
    /// `feature-max-indirect-segments` offered; 0 offers no indirect requests.
    pub max_indirect_segments: u32,
    /// Offer `feature-persistent` (map mode only).
    pub persistent: bool,
    /// Persistent grants kept mapped per queue.
    pub max_persistent_grants: usize,
    /// Map or copy.
    pub data_path: DataPath,
    /// Requests taken from one queue per [`Backend::poll`].
    pub budget: u32,
    /// Pages of the copy pool per queue (copy mode; raised to one request's worth).
    pub copy_pool_pages: usize,
}

impl Default for BackendConfig {
    /// Linux blkback's defaults: 16-page rings, 4 queues, 256 indirect segments, persistent
    /// grants (1056 per queue).
    fn default() -> Self {
        BackendConfig {
            max_ring_page_order: 4,
            max_queues: 4,
            max_indirect_segments: 256,
            persistent: true,
            max_persistent_grants: 1056,
            data_path: DataPath::Map,
            budget: 32,
            copy_pool_pages: 512,
        }
    }
}

/// Toolstack configuration read at probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// `params`.
    pub params: String,
    /// `physical-device-path` (FreeBSD's name), if present.
    pub physical_device_path: Option<String>,
    /// `type` (`file`, `phy`...), empty if absent.
    pub kind: String,
    /// `mode` has no `w`.
    pub readonly: bool,
    /// The frontend's `device-type` is `cdrom`.
    pub cdrom: bool,
    /// `removable` is 1.
    pub removable: bool,
    /// `discard-enable` (default 1).
    pub discard_enable: bool,
}

/// What was published before `InitWait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// `max-ring-page-order`.
    pub max_ring_page_order: u32,
    /// `multi-queue-max-queues`.
    pub max_queues: u32,
    /// `feature-max-indirect-segments` (0: not published).
    pub max_indirect_segments: u32,
    /// `feature-persistent`.
    pub persistent: bool,
    /// `feature-flush-cache`.
    pub flush: bool,
    /// `feature-barrier`.
    pub barrier: bool,
    /// `feature-discard` and its properties.
    pub discard: Option<DiscardInfo>,
}

/// What a connection settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The frontend's ring layout.
    pub abi: Abi,
    /// Queues.
    pub queues: u32,
    /// Ring pages per queue, as an order.
    pub ring_page_order: u32,
    /// Both sides use persistent grants.
    pub persistent: bool,
    /// Entries per ring.
    pub ring_entries: u32,
}

/// Why the device stopped (logged, and written to the backend's `error` node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The frontend broke the request protocol.
    Violation {
        /// Queue.
        queue: u32,
        /// The request's id.
        id: u64,
        /// What was wrong.
        violation: Violation,
    },
    /// The frontend broke the ring protocol (indices).
    Ring {
        /// Queue.
        queue: u32,
        /// The fault.
        fault: Fault,
    },
    /// The frontend's transport parameters were unusable.
    Negotiation(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Violation {
                queue,
                id,
                violation,
            } => write!(f, "queue {queue}: request {id:#x}: {violation}"),
            Failure::Ring { queue, fault } => write!(f, "queue {queue}: ring: {fault}"),
            Failure::Negotiation(s) => write!(f, "negotiation: {s}"),
        }
    }
}

/// Counters (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Requests taken from the rings.
    pub requests: u64,
    /// Reads served.
    pub reads: u64,
    /// Writes served.
    pub writes: u64,
    /// Flushes served.
    pub flushes: u64,
    /// Barriers served.
    pub barriers: u64,
    /// Discards served.
    pub discards: u64,
    /// Indirect requests.
    pub indirect: u64,
    /// Responses with `BLKIF_RSP_ERROR`.
    pub errors: u64,
    /// Responses with `BLKIF_RSP_EOPNOTSUPP`.
    pub unsupported: u64,
    /// Protocol violations (fatal ones stop the device).
    pub violations: u64,
    /// Grant map entries that failed.
    pub map_failures: u64,
    /// Grant copy entries that failed.
    pub copy_failures: u64,
    /// Data/indirect pages found in the persistent cache.
    pub persistent_hits: u64,
    /// Pages mapped persistently.
    pub persistent_maps: u64,
    /// Persistent entries evicted (LRU).
    pub persistent_evictions: u64,
    /// Pages mapped for one request only.
    pub temporary_maps: u64,
    /// Mappings whose unmap failed: their slots are never reused.
    pub stuck: u64,
    /// Polls that stopped at the budget with work left.
    pub budget_exhausted: u64,
    /// Events sent to the frontend.
    pub notifications: u64,
    /// Store completions with an unknown tag (a store bug), ignored.
    pub stray_completions: u64,
    /// Connections made.
    pub connections: u64,
}

/// What a [`Backend::poll`] left to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollResult {
    /// Requests taken this time.
    pub requests: u32,
    /// Work remains (budget reached, or resources short): poll again soon.
    pub more: bool,
    /// [`Backend::service_control`] has something to do.
    pub control: bool,
}

/// A contiguous block of temporary mappings.
#[derive(Debug, Default)]
struct TempMaps {
    base: u64,
    count: u32,
    handles: Vec<Option<MapHandle>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Wait until no write consumed before this request is outstanding.
    AwaitWrites,
    /// Run an I/O on the store.
    Io(IoOp),
    /// Copy mode: copy read data back into the frontend's pages.
    CopyOut,
}

/// A request being served.
#[derive(Debug)]
struct InFlight<'a> {
    id: u64,
    response_op: u8,
    sector: u64,
    sectors: u64,
    segs: Vec<Segment>,
    views: Vec<SharedMem<'a>>,
    temp: TempMaps,
    cached: Vec<u32>,
    pages: Vec<LocalPage<'a>>,
    steps: Vec<Step>,
    next: usize,
    write_seq: Option<u64>,
    status: BlkifStatus,
    submitted: bool,
    waiting: bool,
    barrier: bool,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
    Barrier,
    Discard,
}

/// One ring and everything hanging off it.
#[derive(Debug)]
struct Queue<'a> {
    index: u32,
    ring: BackRingAny<'a>,
    ring_map: TempMaps,
    port: u32,
    slots: Vec<Option<InFlight<'a>>>,
    free: Vec<u32>,
    cache: PersistentCache<'a>,
    pool: Vec<LocalPage<'a>>,
    barrier_open: bool,
    responses: bool,
    stopped: bool,
}

#[derive(Debug)]
struct Connection<'a> {
    neg: Negotiated,
    frontend: u16,
    limits: Limits,
    queues: Vec<Queue<'a>>,
}

/// Device-wide write ordering: every write-class request gets a sequence number when taken
/// from a ring; a flush waits until no smaller number is outstanding.
#[derive(Debug, Default)]
struct Writes {
    next: u64,
    outstanding: BTreeSet<u64>,
}

impl Writes {
    fn begin(&mut self) -> u64 {
        let s = self.next;
        self.next += 1;
        self.outstanding.insert(s);
        s
    }

    fn end(&mut self, s: u64) {
        self.outstanding.remove(&s);
    }

    fn earlier_pending(&self, s: u64) -> bool {
        self.outstanding.range(..s).next().is_some()
    }
}

/// Everything a queue operation needs besides the queue (split borrow of [`Backend`]).
struct Ctx<'c, 'a, E: BackendEnv<'a>, B: BlockStore<'a>> {
    env: &'c E,
    store: &'c mut B,
    stats: &'c mut BackendStats,
    writes: &'c mut Writes,
    cfg: &'c BackendConfig,
    offer: &'c Offer,
    readonly: bool,
    flush_store: bool,
    frontend: u16,
    limits: Limits,
    persistent: bool,
    failure: &'c mut Option<Failure>,
    _a: core::marker::PhantomData<&'a ()>,
}

/// A blkif backend for one virtual disk. See the module docs.
pub struct Backend<'a, E: BackendEnv<'a>, B: BlockStore<'a>> {
    env: E,
    cfg: BackendConfig,
    store: Option<B>,
    config: Option<DeviceConfig>,
    offer: Option<Offer>,
    conn: Option<Connection<'a>>,
    writes: Writes,
    failure: Option<Failure>,
    failure_reported: bool,
    draining: bool,
    want_closed: bool,
    stats: BackendStats,
}

impl<'a, E: BackendEnv<'a>, B: BlockStore<'a>> fmt::Debug for Backend<'a, E, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("config", &self.config)
            .field("offer", &self.offer)
            .field("negotiated", &self.negotiated())
            .field("failure", &self.failure)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn status_of(e: IoError) -> BlkifStatus {
    match e {
        IoError::NotSupported => BlkifStatus::Eopnotsupp,
        _ => BlkifStatus::Error,
    }
}

impl<'a, E: BackendEnv<'a>, B: BlockStore<'a>> Backend<'a, E, B> {
    /// A backend with no device yet.
    pub fn new(env: E, mut cfg: BackendConfig) -> Self {
        cfg.max_ring_page_order = cfg.max_ring_page_order.min(MAX_RING_PAGE_ORDER);
        cfg.max_queues = cfg.max_queues.clamp(1, MAX_QUEUES);
        cfg.max_indirect_segments = cfg.max_indirect_segments.min(MAX_INDIRECT_SEGMENTS);
        if cfg.max_indirect_segments > 0 && cfg.max_indirect_segments <= 11 {
            // Indirect requests are for more than a direct request carries.
            cfg.max_indirect_segments = 0;
        }
        cfg.budget = cfg.budget.max(1);
        if cfg.data_path == DataPath::Copy {
            cfg.persistent = false;
        }
        Backend {
            env,
            cfg,
            store: None,
            config: None,
            offer: None,
            conn: None,
            writes: Writes::default(),
            failure: None,
            failure_reported: false,
            draining: false,
            want_closed: false,
            stats: BackendStats::default(),
        }
    }

    /// The platform.
    pub fn env(&self) -> &E {
        &self.env
    }

    /// The store, once opened.
    pub fn store(&self) -> Option<&B> {
        self.store.as_ref()
    }

    /// The store, mutably (e.g. to resize it or to run its deferred I/O).
    pub fn store_mut(&mut self) -> Option<&mut B> {
        self.store.as_mut()
    }

    /// Toolstack configuration read at probe.
    pub fn device_config(&self) -> Option<&DeviceConfig> {
        self.config.as_ref()
    }

    /// What was offered.
    pub fn offer(&self) -> Option<Offer> {
        self.offer
    }

    /// What the current connection uses.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.conn.as_ref().map(|c| c.neg)
    }

    /// Why the device stopped, if it did.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// Counters.
    pub fn stats(&self) -> BackendStats {
        self.stats
    }

    /// Whether a connection is up (possibly draining).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Our local event channel ports, by queue.
    pub fn ports(&self) -> Vec<u32> {
        self.conn
            .as_ref()
            .map(|c| c.queues.iter().map(|q| q.port).collect())
            .unwrap_or_default()
    }

    /// Requests in flight (taken from a ring, not answered).
    pub fn in_flight(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| {
            c.queues
                .iter()
                .map(|q| q.slots.iter().filter(|s| s.is_some()).count())
                .sum()
        })
    }

    /// Persistent grants currently mapped, over all queues.
    pub fn persistent_grants(&self) -> usize {
        self.conn
            .as_ref()
            .map_or(0, |c| c.queues.iter().map(|q| q.cache.len()).sum())
    }

    fn log(&self, level: Level, msg: fmt::Arguments<'_>) {
        self.env.log(level, msg);
    }

    // ---------------------------------------------------------------- control path

    /// A new device directory: reads the toolstack's `params`, `mode`, `type`,
    /// `physical-device-path`, `removable`, `discard-enable` and the frontend's
    /// `device-type`, opens the store with `open`, publishes the features and transport
    /// limits, and switches to `InitWait`.
    ///
    /// # Errors
    /// A store error, a missing `params`/`mode`, or `open`'s error (the bus then fails the
    /// device).
    pub fn probe<S: Store + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
        open: impl FnOnce(&DeviceConfig) -> Result<B, XsErr>,
    ) -> Result<(), XsErr> {
        let node = |k: &str| format!("{}/{k}", dev.nodename());
        let params = xs.read_string(&node(keys::PARAMS))?;
        let mode = xs.read_string(&node(keys::MODE))?;
        let physical_device_path = xs
            .try_read(&node(keys::PHYSICAL_DEVICE_PATH))?
            .and_then(|v| String::from_utf8(v).ok());
        let kind = xs
            .try_read(&node(keys::TYPE))?
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_default();
        let removable = xs
            .try_read(&node(keys::REMOVABLE))?
            .and_then(|v| parse_bool(&v))
            .unwrap_or(false);
        let discard_enable = xs
            .try_read(&node(keys::DISCARD_ENABLE))?
            .and_then(|v| parse_bool(&v))
            .unwrap_or(true);
        // The frontend's node: untrusted, only compared.
        let cdrom = matches!(
            xs.try_read(&dev.otherend_node(keys::DEVICE_TYPE)),
            Ok(Some(v)) if v.trim_ascii_end() == b"cdrom"
        );
        let config = DeviceConfig {
            params,
            physical_device_path,
            kind,
            readonly: !mode.contains('w'),
            cdrom,
            removable,
            discard_enable,
        };
        let store = open(&config)?;
        let info = store.info();
        let writable = !(config.readonly || info.read_only);
        let offer = Offer {
            max_ring_page_order: self.cfg.max_ring_page_order,
            max_queues: self.cfg.max_queues,
            max_indirect_segments: self.cfg.max_indirect_segments,
            persistent: self.cfg.persistent,
            flush: writable,
            barrier: writable,
            discard: info.discard.filter(|_| writable && config.discard_enable),
        };
        self.publish_offer(xs, dev, &offer)?;
        self.log(
            Level::Info,
            format_args!(
                "{}: {} ({}) {} sectors, {}",
                dev.nodename(),
                config.params,
                config.kind,
                info.sectors,
                if writable { "rw" } else { "ro" }
            ),
        );
        self.store = Some(store);
        self.config = Some(config);
        self.offer = Some(offer);
        switch_state(xs, dev, XenbusState::InitWait)
    }

    fn publish_offer<S: Store + ?Sized>(
        &self,
        xs: &mut S,
        dev: &Device,
        o: &Offer,
    ) -> Result<(), XsErr> {
        let b = |v: bool| if v { "1" } else { "0" };
        dev.write_node(xs, keys::FEATURE_FLUSH_CACHE, b(o.flush))?;
        dev.write_node(xs, keys::FEATURE_BARRIER, b(o.barrier))?;
        dev.write_node(xs, keys::FEATURE_PERSISTENT, b(o.persistent))?;
        dev.write_node(
            xs,
            keys::MAX_RING_PAGE_ORDER,
            &format!("{}", o.max_ring_page_order),
        )?;
        // The older scheme (blkif.h note 3: publish both).
        dev.write_node(
            xs,
            keys::MAX_RING_PAGES,
            &format!("{}", 1u32 << o.max_ring_page_order),
        )?;
        dev.write_node(
            xs,
            keys::MULTI_QUEUE_MAX_QUEUES,
            &format!("{}", o.max_queues),
        )?;
        if o.max_indirect_segments > 0 {
            dev.write_node(
                xs,
                keys::FEATURE_MAX_INDIRECT_SEGMENTS,
                &format!("{}", o.max_indirect_segments),
            )?;
        }
        match o.discard {
            Some(d) => {
                dev.write_node(xs, keys::FEATURE_DISCARD, "1")?;
                dev.write_node(xs, keys::DISCARD_GRANULARITY, &format!("{}", d.granularity))?;
                dev.write_node(xs, keys::DISCARD_ALIGNMENT, &format!("{}", d.alignment))?;
                dev.write_node(xs, keys::DISCARD_SECURE, b(d.secure))?;
            }
            None => dev.write_node(xs, keys::FEATURE_DISCARD, "0")?,
        }
        Ok(())
    }

    /// The frontend's state changed (after Linux blkback's `frontend_changed`).
    ///
    /// * `Initialising` after we closed: back to `InitWait` for a reconnection.
    /// * `Initialised`/`Connected` while we wait: read the transport parameters, map the
    ///   rings, bind the event channels, publish the device properties, `Connected`.
    /// * `Closing`/`Closed`/gone: stop taking requests; once in-flight I/O has drained, tear
    ///   the connection down and follow to `Closing`/`Closed`.
    ///
    /// # Errors
    /// Store errors; negotiation problems are handled here (logged, `error` node, `Closing`).
    pub fn otherend_changed<S: Store + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        match state {
            XenbusState::Initialising => {
                if dev.state() == XenbusState::Closed && self.conn.is_none() {
                    self.failure = None;
                    self.failure_reported = false;
                    self.want_closed = false;
                    self.draining = false;
                    self.log(
                        Level::Info,
                        format_args!("{}: prepare for reconnect", dev.nodename()),
                    );
                    switch_state(xs, dev, XenbusState::InitWait)?;
                }
                Ok(())
            }
            XenbusState::Initialised | XenbusState::Connected => {
                if dev.state() != XenbusState::InitWait || self.conn.is_some() {
                    return Ok(());
                }
                if self.offer.is_none() || self.store.is_none() {
                    return Err(XsErr::BadValue);
                }
                match self.connect(xs, dev) {
                    Ok(()) => {
                        self.publish_properties(xs, dev)?;
                        self.stats.connections += 1;
                        switch_state(xs, dev, XenbusState::Connected)
                    }
                    Err(msg) => {
                        self.fail(Failure::Negotiation(msg));
                        self.service_control(xs, dev)
                    }
                }
            }
            XenbusState::Closing => {
                self.begin_disconnect();
                if dev.state().can_switch_to(XenbusState::Closing) {
                    switch_state(xs, dev, XenbusState::Closing)?;
                }
                self.service_control(xs, dev)
            }
            XenbusState::Closed | XenbusState::Unknown => {
                self.begin_disconnect();
                self.want_closed = true;
                self.service_control(xs, dev)
            }
            _ => Ok(()),
        }
    }

    /// Closes the device from our side (the administrator, or the backing store going away):
    /// stops taking requests and switches to `Closing`; the frontend follows, in-flight I/O
    /// drains, and the connection is torn down. A frontend that reconnects (`Initialising`
    /// after we are `Closed`) gets a fresh connection.
    ///
    /// # Errors
    /// Store errors.
    pub fn close<S: Store + ?Sized>(&mut self, xs: &mut S, dev: &mut Device) -> Result<(), XsErr> {
        self.begin_disconnect();
        if dev.state().can_switch_to(XenbusState::Closing) {
            switch_state(xs, dev, XenbusState::Closing)?;
        }
        self.service_control(xs, dev)
    }

    /// The device directory is gone: drop everything that can be dropped now.
    pub fn remove<S: Store + ?Sized>(&mut self, _xs: &mut S, dev: &mut Device) {
        self.begin_disconnect();
        self.try_teardown();
        if self.conn.is_some() {
            self.log(
                Level::Warning,
                format_args!(
                    "{}: removed with I/O in flight; connection kept until it drains",
                    dev.nodename()
                ),
            );
        }
    }

    /// Finishes what the data path could not: reports a failure (`error` node, `Closing`),
    /// tears down a drained connection, and follows the frontend to `Closed`.
    ///
    /// # Errors
    /// Store errors.
    pub fn service_control<S: Store + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
    ) -> Result<(), XsErr> {
        if let (Some(f), false) = (&self.failure, self.failure_reported) {
            let msg = format!("{f}");
            self.failure_reported = true;
            self.log(
                Level::Error,
                format_args!("{}: device failed: {msg}", dev.nodename()),
            );
            dev.write_node(xs, "error", &msg)?;
            self.begin_disconnect();
            if dev.state().can_switch_to(XenbusState::Closing) {
                switch_state(xs, dev, XenbusState::Closing)?;
            }
        }
        self.try_teardown();
        if self.want_closed && self.conn.is_none() {
            self.want_closed = false;
            if dev.state().can_switch_to(XenbusState::Closed) {
                switch_state(xs, dev, XenbusState::Closed)?;
            }
        }
        Ok(())
    }

    /// Whether [`Backend::service_control`] has work.
    pub fn control_pending(&self) -> bool {
        (self.failure.is_some() && !self.failure_reported)
            || (self.draining && self.conn.is_some() && self.in_flight() == 0)
            || (self.want_closed && self.conn.is_none())
    }

    /// Online resize: if the store's size changed while connected, publishes the new
    /// `sectors` and rewrites `state` (Linux frontends re-read the size on that watch).
    /// Returns whether the size changed.
    ///
    /// # Errors
    /// Store errors.
    pub fn check_resize<S: Store + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
    ) -> Result<bool, XsErr> {
        let Some(store) = self.store.as_ref() else {
            return Ok(false);
        };
        let sectors = store.info().sectors;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(false);
        };
        if conn.limits.sectors == sectors {
            return Ok(false);
        }
        let old = conn.limits.sectors;
        conn.limits.sectors = sectors;
        dev.write_node(xs, keys::SECTORS, &format!("{sectors}"))?;
        if dev.state() == XenbusState::Connected {
            dev.write_node(xs, "state", &format!("{}", XenbusState::Connected.to_raw()))?;
        }
        self.log(
            Level::Info,
            format_args!("{}: resized {old} -> {sectors} sectors", dev.nodename()),
        );
        Ok(true)
    }

    fn publish_properties<S: Store + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
    ) -> Result<(), XsErr> {
        let (Some(store), Some(cfg)) = (self.store.as_ref(), self.config.as_ref()) else {
            return Err(XsErr::BadValue);
        };
        let info = store.info();
        let mut bits = VdiskInfo::empty();
        if cfg.readonly || info.read_only {
            bits |= VdiskInfo::READONLY;
        }
        if cfg.cdrom {
            bits |= VdiskInfo::CDROM;
        }
        if cfg.removable {
            bits |= VdiskInfo::REMOVABLE;
        }
        dev.write_node(xs, keys::SECTORS, &format!("{}", info.sectors))?;
        dev.write_node(xs, keys::INFO, &format!("{}", bits.bits()))?;
        dev.write_node(xs, keys::SECTOR_SIZE, &format!("{}", info.sector_size))?;
        dev.write_node(
            xs,
            keys::PHYSICAL_SECTOR_SIZE,
            &format!("{}", info.physical_sector_size),
        )?;
        Ok(())
    }

    /// Reads the frontend's transport parameters and sets up every queue. `Err(msg)` for a
    /// frontend error (reported as a failure).
    fn connect<S: Store + ?Sized>(&mut self, xs: &mut S, dev: &Device) -> Result<(), String> {
        let (Some(offer), Some(store)) = (self.offer, self.store.as_ref()) else {
            return Err(String::from("not probed"));
        };
        let info = store.info();
        let fe = dev.otherend_id();
        let read = |xs: &mut S, k: &str| -> Result<Option<alloc::vec::Vec<u8>>, String> {
            xs.try_read(&dev.otherend_node(k))
                .map_err(|e| format!("reading {k}: {e:?}"))
        };
        let num = |xs: &mut S, k: &str| -> Result<Option<u64>, String> {
            match read(xs, k)? {
                None => Ok(None),
                Some(v) => parse_u64(&v)
                    .map(Some)
                    .ok_or_else(|| format!("{k} is not a number")),
            }
        };
        let abi = match read(xs, keys::PROTOCOL)? {
            None => Abi::NATIVE,
            Some(v) => Abi::parse(&v)
                .ok_or_else(|| format!("unsupported protocol {:?}", String::from_utf8_lossy(&v)))?,
        };
        let fe_persistent = match read(xs, keys::FEATURE_PERSISTENT)? {
            None => false,
            Some(v) => parse_bool(&v).unwrap_or(false),
        };
        let queues = num(xs, keys::MULTI_QUEUE_NUM_QUEUES)?.unwrap_or(1);
        if queues == 0 || queues > u64::from(offer.max_queues) {
            return Err(format!(
                "multi-queue-num-queues {queues} (offered {})",
                offer.max_queues
            ));
        }
        let order = match num(xs, keys::RING_PAGE_ORDER)? {
            Some(o) => o,
            None => match num(xs, keys::NUM_RING_PAGES)? {
                Some(n) if n.is_power_of_two() => u64::from(n.ilog2()),
                Some(n) => return Err(format!("num-ring-pages {n} is not a power of two")),
                None => 0,
            },
        };
        if order > u64::from(offer.max_ring_page_order) {
            return Err(format!(
                "ring-page-order {order} (offered {})",
                offer.max_ring_page_order
            ));
        }
        // Both bounded above.
        let (queues, order) = (
            u32::try_from(queues).unwrap_or(1),
            u32::try_from(order).unwrap_or(0),
        );
        let persistent = offer.persistent && fe_persistent;
        let mut qs: Vec<Queue<'a>> = Vec::new();
        for qi in 0..queues {
            let dir = if queues == 1 {
                String::from(dev.otherend())
            } else {
                format!("{}/queue-{qi}", dev.otherend())
            };
            match self.connect_queue(xs, &dir, fe, abi, order, qi, persistent) {
                Ok(q) => qs.push(q),
                Err(e) => {
                    for q in qs {
                        self.teardown_queue(q);
                    }
                    return Err(e);
                }
            }
        }
        let ring_entries = qs.first().map_or(0, |q| q.ring.size());
        let limits = Limits {
            sectors: info.sectors,
            sector_size: info.sector_size.max(512),
            max_indirect_segments: offer.max_indirect_segments,
        };
        let neg = Negotiated {
            abi,
            queues,
            ring_page_order: order,
            persistent,
            ring_entries,
        };
        self.log(
            Level::Info,
            format_args!(
                "{}: connected to domain {fe}: {abi}, {queues} queue(s) of {ring_entries} \
                 entries, persistent {persistent}, indirect {}",
                dev.nodename(),
                offer.max_indirect_segments
            ),
        );
        self.conn = Some(Connection {
            neg,
            frontend: fe,
            limits,
            queues: qs,
        });
        self.draining = false;
        Ok(())
    }

    #[expect(clippy::too_many_arguments, reason = "one call site, all distinct")]
    fn connect_queue<S: Store + ?Sized>(
        &mut self,
        xs: &mut S,
        dir: &str,
        fe: u16,
        abi: Abi,
        order: u32,
        index: u32,
        persistent: bool,
    ) -> Result<Queue<'a>, String> {
        let pages = 1u32 << order;
        let num = |xs: &mut S, k: &str| -> Result<u64, String> {
            let v = xs
                .read(&format!("{dir}/{k}"))
                .map_err(|e| format!("{dir}/{k}: {e:?}"))?;
            parse_u64(&v).ok_or_else(|| format!("{dir}/{k} is not a number"))
        };
        let mut refs = Vec::new();
        for i in 0..pages {
            let key = if order == 0 {
                String::from(keys::RING_REF)
            } else {
                format!("{}{i}", keys::RING_REF)
            };
            let r = num(xs, &key)?;
            refs.push(u32::try_from(r).map_err(|_| format!("{key} {r} out of range"))?);
        }
        let port = num(xs, keys::EVENT_CHANNEL)?;
        let port = u32::try_from(port).map_err(|_| format!("event-channel {port} out of range"))?;
        // Map the ring pages contiguously, all or nothing.
        let base = self
            .env
            .reserve_slots(pages)
            .ok_or_else(|| String::from("no slots for the ring"))?;
        let mut ops: Vec<MapGrant> = refs
            .iter()
            .zip(0u64..)
            .map(|(&g, i)| MapGrant::new(fe, g, base + i * PAGE_SIZE as u64, false))
            .collect();
        if let Err(e) = map_grants(self.env.hypervisor(), &mut ops) {
            self.stats.map_failures += 1;
            if e.stuck == 0 {
                self.env.release_slots(base, pages);
            } else {
                self.stats.stuck += e.stuck as u64;
            }
            return Err(format!("mapping ring of queue {index}: {e}"));
        }
        let ring_map = TempMaps {
            base,
            count: pages,
            handles: ops.into_iter().map(|o| o.handle).collect(),
        };
        let ring = match self
            .env
            .view(base, pages)
            .ok_or_else(|| String::from("no view of the ring"))
            .and_then(|mem| {
                BackRingAny::attach(abi, mem).map_err(|e| format!("ring of queue {index}: {e}"))
            }) {
            Ok(r) => r,
            Err(e) => {
                self.unmap_temp(ring_map);
                return Err(e);
            }
        };
        let local = match self.env.bind_interdomain(fe, port) {
            Ok(p) => p,
            Err(e) => {
                self.unmap_temp(ring_map);
                return Err(format!("binding event channel {port}: {e:?}"));
            }
        };
        let size = ring.size();
        let mut pool = Vec::new();
        if self.cfg.data_path == DataPath::Copy {
            let per_req = self.per_request_pages();
            let want = self.cfg.copy_pool_pages.max(per_req);
            for _ in 0..want {
                match self.env.alloc_page() {
                    Some(p) => pool.push(p),
                    None => break,
                }
            }
            if pool.len() < per_req {
                for p in pool {
                    self.env.free_page(p);
                }
                self.env.close_port(local);
                self.unmap_temp(ring_map);
                return Err(String::from("no memory for the copy pool"));
            }
        }
        Ok(Queue {
            index,
            ring,
            ring_map,
            port: local,
            slots: (0..size).map(|_| None).collect(),
            free: (0..size).rev().collect(),
            cache: PersistentCache::new(if persistent {
                self.cfg.max_persistent_grants
            } else {
                0
            }),
            pool,
            barrier_open: false,
            responses: false,
            stopped: false,
        })
    }

    /// Copy-pool pages one request may need: its data segments and its indirect pages.
    fn per_request_pages(&self) -> usize {
        let segs = (self.cfg.max_indirect_segments as usize).max(MAX_DIRECT_SEGMENTS);
        segs + MAX_INDIRECT_PAGES
    }

    fn unmap_temp(&mut self, mut t: TempMaps) {
        if t.count == 0 {
            return;
        }
        match unmap_grants(self.env.hypervisor(), &mut t.handles) {
            Ok(()) => self.env.release_slots(t.base, t.count),
            Err(e) => {
                self.stats.stuck += e.failed as u64;
                self.log(
                    Level::Error,
                    format_args!("unmapping failed ({e}); slots kept reserved"),
                );
            }
        }
    }

    fn teardown_queue(&mut self, mut q: Queue<'a>) {
        // Unmap every persistent grant in one batch.
        let entries = q.cache.drain();
        if !entries.is_empty() {
            let mut handles: Vec<Option<MapHandle>> = Vec::new();
            let mut addrs = Vec::new();
            for e in entries {
                addrs.push(e.addr);
                handles.push(Some(e.handle));
            }
            let _ = unmap_grants(self.env.hypervisor(), &mut handles);
            for (h, a) in handles.iter().zip(addrs) {
                if h.is_none() {
                    self.env.release_slots(a, 1);
                } else {
                    self.stats.stuck += 1;
                }
            }
        }
        for p in q.pool.drain(..) {
            self.env.free_page(p);
        }
        self.env.close_port(q.port);
        // The ring view dies with `q`; then its pages are unmapped.
        let ring_map = core::mem::take(&mut q.ring_map);
        self.unmap_temp(ring_map);
    }

    fn begin_disconnect(&mut self) {
        if self.conn.is_some() {
            self.draining = true;
        }
    }

    /// Tears the connection down if it is draining and nothing is in flight.
    fn try_teardown(&mut self) {
        if !self.draining || self.in_flight() > 0 {
            return;
        }
        if let Some(conn) = self.conn.take() {
            for mut q in conn.queues {
                // Answered requests must reach the frontend before the ring goes away.
                if q.responses {
                    if let Ok(n) = q.ring.push_responses_and_check_notify() {
                        if n.is_required() {
                            self.env.notify(q.port);
                        }
                    }
                }
                q.responses = false;
                self.teardown_queue(q);
            }
            self.log(Level::Info, format_args!("disconnected"));
        }
        self.draining = false;
    }

    fn fail(&mut self, f: Failure) {
        if self.failure.is_none() {
            self.log(Level::Error, format_args!("{f}"));
            self.failure = Some(f);
        }
    }

    // ---------------------------------------------------------------- data path

    /// Services the device: store completions, then up to `budget` requests per queue,
    /// then responses and notifications. Call on an event from any of [`Backend::ports`], on
    /// a store completion, and again soon when [`PollResult::more`] is set.
    pub fn poll(&mut self) -> PollResult {
        let mut result = PollResult::default();
        let Backend {
            env,
            cfg,
            store,
            offer,
            conn,
            writes,
            failure,
            draining,
            stats,
            config,
            ..
        } = self;
        let (Some(store), Some(conn), Some(offer)) =
            (store.as_mut(), conn.as_mut(), offer.as_ref())
        else {
            // A store may still report completions with no connection (cannot happen: a
            // connection is only torn down once nothing is in flight); drain them.
            if let Some(s) = self.store.as_mut() {
                while s.poll_completion().is_some() {
                    self.stats.stray_completions += 1;
                }
            }
            result.control = self.control_pending();
            return result;
        };
        let info = store.info();
        let mut ctx = Ctx {
            env: &*env,
            store,
            stats,
            writes,
            cfg: &*cfg,
            offer,
            readonly: config.as_ref().is_some_and(|c| c.readonly) || info.read_only,
            flush_store: info.flush,
            frontend: conn.frontend,
            limits: conn.limits,
            persistent: conn.neg.persistent,
            failure,
            _a: core::marker::PhantomData,
        };
        // What each queue may still take this poll.
        let mut left: Vec<u32> = vec![ctx.cfg.budget; conn.queues.len()];
        // 1. Completions, then 2. new requests, repeated while the store keeps completing:
        // a store that completes inside `submit` (a RAM disk) has answers for requests taken
        // this very poll, and those answers (and the ring slots and flushes they unblock)
        // must not wait for the frontend's next event. Each pass after the first needs a
        // completion; every completion retires a step of a request in flight, so the passes
        // are bounded by the work taken; `MAX_PASSES` bounds a store that never stops.
        let mut pass = 0u32;
        loop {
            let completed = Self::collect_completions(&mut ctx, &mut conn.queues);
            if pass > 0 && completed == 0 {
                break;
            }
            if pass == MAX_PASSES {
                // Poll again soon for the rest.
                result.more = true;
                break;
            }
            pass += 1;
            let stop = *draining || ctx.failure.is_some();
            for (q, budget) in conn.queues.iter_mut().zip(left.iter_mut()) {
                if !stop && !q.stopped && *budget > 0 {
                    let (n, more) = q.consume(&mut ctx, *budget);
                    *budget -= n.min(*budget);
                    result.requests += n;
                    result.more |= more;
                }
                // A flush taken this round may be waiting for writes of another queue.
                q.retry_waiting(&mut ctx);
            }
        }
        // 3. Responses.
        for q in conn.queues.iter_mut() {
            q.publish(&mut ctx);
        }
        result.control = self.control_pending();
        result
    }
}

impl<'a, E: BackendEnv<'a>, B: BlockStore<'a>> Backend<'a, E, B> {
    /// Hands every completion the store has to its request, then lets requests waiting for
    /// earlier writes go on (completions may have unblocked flushes on any queue). Returns
    /// the number of completions.
    fn collect_completions(ctx: &mut Ctx<'_, 'a, E, B>, queues: &mut [Queue<'a>]) -> u32 {
        let mut n = 0u32;
        while let Some((tag, r)) = ctx.store.poll_completion() {
            n = n.saturating_add(1);
            let qi = usize::try_from(tag >> 32).unwrap_or(usize::MAX);
            let si = usize::try_from(tag & 0xffff_ffff).unwrap_or(usize::MAX);
            match queues.get_mut(qi) {
                Some(q) => q.complete(ctx, si, r),
                None => ctx.stats.stray_completions += 1,
            }
        }
        // Also without completions: a write that failed at submit (answered at once) may
        // have been the last one a flush on another queue waited for.
        for q in queues.iter_mut() {
            q.retry_waiting(ctx);
        }
        n
    }
}

impl<'a> Queue<'a> {
    fn tag(&self, slot: u32) -> IoTag {
        (u64::from(self.index) << 32) | u64::from(slot)
    }

    /// Takes up to `budget` requests. Returns (taken, more work left).
    fn consume<E: BackendEnv<'a>, B: BlockStore<'a>>(
        &mut self,
        ctx: &mut Ctx<'_, 'a, E, B>,
        budget: u32,
    ) -> (u32, bool) {
        let mut n = 0u32;
        loop {
            if ctx.failure.is_some() || self.stopped {
                return (n, false);
            }
            if self.barrier_open || self.free.is_empty() {
                // Resumes when the barrier (or a slot) completes.
                return (n, false);
            }
            if ctx.cfg.data_path == DataPath::Copy && self.pool.len() < per_request(ctx.cfg) {
                return (n, false);
            }
            if n >= budget {
                ctx.stats.budget_exhausted += 1;
                return (n, true);
            }
            match self.ring.pop_request() {
                Err(fault) => {
                    self.fail_ring(ctx, fault);
                    return (n, false);
                }
                Ok(Some(w)) => {
                    n += 1;
                    self.start(ctx, &w);
                }
                Ok(None) => match self.ring.final_check_for_requests() {
                    Ok(true) => {}
                    Ok(false) => return (n, false),
                    Err(fault) => {
                        self.fail_ring(ctx, fault);
                        return (n, false);
                    }
                },
            }
        }
    }

    fn fail_ring<E: BackendEnv<'a>, B: BlockStore<'a>>(
        &mut self,
        ctx: &mut Ctx<'_, 'a, E, B>,
        fault: Fault,
    ) {
        self.stopped = true;
        if ctx.failure.is_none() {
            let f = Failure::Ring {
                queue: self.index,
                fault,
            };
            ctx.env.log(Level::Error, format_args!("{f}"));
            *ctx.failure = Some(f);
        }
    }

    fn respond<E: BackendEnv<'a>, B: BlockStore<'a>>(
        &mut self,
        ctx: &mut Ctx<'_, 'a, E, B>,
        id: u64,
        op: u8,
        status: BlkifStatus,
    ) {
        match status {
            BlkifStatus::Error => ctx.stats.errors += 1,
            BlkifStatus::Eopnotsupp => ctx.stats.unsupported += 1,
            BlkifStatus::Okay => {}
        }
        match self.ring.push_response(&WireResponse::new(id, op, status)) {
            Ok(()) => self.responses = true,
            Err(xen_ring::PushError::Fault(f)) => self.fail_ring(ctx, f),
            // Every taken request has its slot; cannot happen.
            Err(xen_ring::PushError::Full) => {}
        }
    }

    fn publish<E: BackendEnv<'a>, B: BlockStore<'a>>(&mut self, ctx: &mut Ctx<'_, 'a, E, B>) {
        if !self.responses {
            return;
        }
        self.responses = false;
        match self.ring.push_responses_and_check_notify() {
            Ok(n) => {
                if n.is_required() {
                    ctx.stats.notifications += 1;
                    ctx.env.notify(self.port);
                }
            }
            Err(f) => self.fail_ring(ctx, f),
        }
    }

    /// Validates one request and starts serving it.
    fn start<E: BackendEnv<'a>, B: BlockStore<'a>>(
        &mut self,
        ctx: &mut Ctx<'_, 'a, E, B>,
        w: &WireRequest,
    ) {
        ctx.stats.requests += 1;
        let rop = w.response_operation();
        let req = match Request::parse(w, &ctx.limits) {
            Ok(r) => r,
            Err(v) => {
                ctx.stats.violations += 1;
                self.respond(ctx, w.id, rop, BlkifStatus::Error);
                if v.is_fatal() {
                    self.violation(ctx, w.id, v);
                }
                return;
            }
        };
        let o = ctx.offer;
        let (kind, data) = match req.op {
            Operation::Read(d) => (Kind::Read, Some(d)),
            Operation::Write(d) => (Kind::Write, Some(d)),
            Operation::Flush(d) => (Kind::Flush, Some(d)),
            Operation::Barrier(d) => (Kind::Barrier, Some(d)),
            Operation::Discard { .. } => (Kind::Discard, None),
        };
        // Feature and permission checks: answered, never fatal.
        let refuse = match req.op {
            Operation::Write(_) | Operation::Barrier(_) if ctx.readonly => Some(BlkifStatus::Error),
            Operation::Flush(d) if ctx.readonly && d.segments.count() > 0 => {
                Some(BlkifStatus::Error)
            }
            Operation::Flush(_) if !o.flush && !ctx.readonly => Some(BlkifStatus::Eopnotsupp),
            Operation::Barrier(_) if !o.barrier => Some(BlkifStatus::Eopnotsupp),
            Operation::Discard { .. } if ctx.readonly => Some(BlkifStatus::Error),
            Operation::Discard { secure, .. } => match o.discard {
                None => Some(BlkifStatus::Eopnotsupp),
                Some(d) if secure && !d.secure => Some(BlkifStatus::Eopnotsupp),
                _ => None,
            },
            _ => None,
        };
        if let Some(s) = refuse {
            self.respond(ctx, req.id, rop, s);
            return;
        }
        let Some(slot) = self.free.pop() else {
            // The ring cannot hand out more requests than it has slots.
            self.respond(ctx, req.id, rop, BlkifStatus::Error);
            return;
        };
        let mut f = InFlight {
            id: req.id,
            response_op: rop,
            sector: 0,
            sectors: 0,
            segs: Vec::new(),
            views: Vec::new(),
            temp: TempMaps::default(),
            cached: Vec::new(),
            pages: Vec::new(),
            steps: Vec::new(),
            next: 0,
            write_seq: None,
            status: BlkifStatus::Okay,
            submitted: false,
            waiting: false,
            barrier: kind == Kind::Barrier,
            kind,
        };
        match (req.op, data) {
            (
                Operation::Discard {
                    sector,
                    sectors,
                    secure,
                },
                _,
            ) => {
                ctx.stats.discards += 1;
                f.sector = sector;
                f.sectors = sectors;
                f.write_seq = Some(ctx.writes.begin());
                if sectors > 0 {
                    f.steps.push(Step::Io(IoOp::Discard { secure }));
                }
            }
            (_, Some(d)) => {
                match self.prepare_data(ctx, &mut f, &d) {
                    Ok(()) => {}
                    Err(Some(v)) => {
                        ctx.stats.violations += 1;
                        self.release(ctx, &mut f);
                        self.free.push(slot);
                        self.respond(ctx, req.id, rop, BlkifStatus::Error);
                        if v.is_fatal() {
                            self.violation(ctx, req.id, v);
                        }
                        return;
                    }
                    Err(None) => {
                        self.release(ctx, &mut f);
                        self.free.push(slot);
                        self.respond(ctx, req.id, rop, BlkifStatus::Error);
                        return;
                    }
                }
                let has_data = !f.segs.is_empty();
                match kind {
                    Kind::Read => {
                        ctx.stats.reads += 1;
                        f.steps.push(Step::Io(IoOp::Read));
                        if ctx.cfg.data_path == DataPath::Copy {
                            f.steps.push(Step::CopyOut);
                        }
                    }
                    Kind::Write => {
                        ctx.stats.writes += 1;
                        f.write_seq = Some(ctx.writes.begin());
                        f.steps.push(Step::Io(IoOp::Write));
                    }
                    Kind::Flush | Kind::Barrier => {
                        if kind == Kind::Flush {
                            ctx.stats.flushes += 1;
                        } else {
                            ctx.stats.barriers += 1;
                            self.barrier_open = true;
                        }
                        f.write_seq = Some(ctx.writes.begin());
                        f.steps.push(Step::AwaitWrites);
                        if ctx.flush_store {
                            f.steps.push(Step::Io(IoOp::Flush));
                        }
                        if has_data {
                            f.steps.push(Step::Io(IoOp::Write));
                            if kind == Kind::Barrier && ctx.flush_store {
                                f.steps.push(Step::Io(IoOp::Flush));
                            }
                        }
                    }
                    Kind::Discard => {}
                }
            }
            _ => {}
        }
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Some(f);
        }
        self.advance(ctx, slot);
    }

    fn violation<E: BackendEnv<'a>, B: BlockStore<'a>>(
        &mut self,
        ctx: &mut Ctx<'_, 'a, E, B>,
        id: u64,
        violation: Violation,
    ) {
        self.stopped = true;
        if ctx.failure.is_none() {
            let f = Failure::Violation {
                queue: self.index,
                id,
                violation,
            };
            ctx.env.log(Level::Error, format_args!("{f}"));
            *ctx.failure = Some(f);
        }
    }

    /// Resolves the data segments (reading indirect pages) and makes the data reachable:
    /// mapped pages, or pool pages filled by grant copy for writes.
    /// `Err(Some(v))`: the frontend's descriptors were invalid; `Err(None)`: a grant
    /// operation failed (answered with an error).
    fn prepare_data<E: BackendEnv<'a>, B: BlockStore<'a>>(
        &mut self,
        ctx: &mut Ctx<'_, 'a, E, B>,
        f: &mut InFlight<'a>,
        d: &DataRequest,
    ) -> Result<(), Option<Violation>> {
        f.sector = d.sector;
        match d.segments {
            Segments::Direct { .. } => {
                f.segs.extend(d.segments.direct());
                f.sectors = d.sectors;
            }
            Segments::Indirect { nr_segments, .. } => {
                ctx.stats.indirect += 1;
                let descs = self.read_indirect(ctx, d.segments.indirect_grefs(), nr_segments)?;
                f.sectors = parse_indirect_segments(d.sector, &descs, &ctx.limits, &mut f.segs)
                    .map_err(Some)?;
            }
        }
        if f.segs.is_empty() {
            return Ok(());
        }
        // Does the store write into the frontend's pages?
        let into_guest = f.kind == Kind::Read;
        match ctx.cfg.data_path {
            DataPath::Map => {
                let grefs: Vec<u32> = f.segs.iter().map(Segment::gref).collect();
                let pages = self.map_pages(ctx, &grefs, !into_guest, f)?;
                for (s, p) in f.segs.iter().zip(pages) {
                    let v = p.subrange(s.offset(), s.len()).map_err(|_| None)?;
                    f.views.push(v);
                }
            }
            DataPath::Copy => {
                let n = f.segs.len();
                if self.pool.len() < n {
                    return Err(None);
                }
                let at = self.pool.len() - n;
                f.pages.extend(self.pool.drain(at..));
                for (s, p) in f.segs.iter().zip(f.pages.iter()) {
                    f.views
                        .push(p.mem.subrange(s.offset(), s.len()).map_err(|_| None)?);
                }
                if !into_guest {
                    let fe = ctx.frontend;
                    let mut ops: Vec<GrantCopy> = f
                        .segs
                        .iter()
                        .zip(f.pages.iter())
                        .map(|(s, p)| {
                            GrantCopy::new(
                                CopyPtr::Grant {
                                    dom: fe,
                                    gref: s.gref(),
                                },
                                offset16(s.offset()),
                                CopyPtr::Local { gfn: p.gfn },
                                offset16(s.offset()),
                                offset16(s.len()),
                            )
                        })
                        .collect();
                    if let Err(e) = copy_grants(ctx.env.hypervisor(), &mut ops) {
                        ctx.stats.copy_failures += e.failed as u64;
                        return Err(None);
                    }
                }
            }
        }
        Ok(())
    }

    /// Copies out the descriptors of an indirect request's pages (exactly `nr_segments`).
    fn read_indirect<E: BackendEnv<'a>, B: BlockStore<'a>>(
        &mut self,
        ctx: &mut Ctx<'_, 'a, E, B>,
        grefs: &[u32],
        nr_segments: u16,
    ) -> Result<Vec<WireSegment>, Option<Violation>> {
        let total = usize::from(nr_segments);
        let mut descs = Vec::with_capacity(total);
        let mut buf = vec![0u8; PAGE_SIZE];
        let bytes_of = |i: usize| {
            let left = total - (i * SEGS_PER_INDIRECT_PAGE).min(total);
            left.min(SEGS_PER_INDIRECT_PAGE) * 8
        };
        match ctx.cfg.data_path {
            DataPath::Map => {
                let mut scratch = InFlight::scratch();
                let pages = match self.map_pages(ctx, grefs, true, &mut scratch) {
                    Ok(p) => p,
                    Err(e) => {
                        // Whatever did map (and the slots reserved for it) goes back.
                        self.release_scratch(ctx, scratch);
                        return Err(e);
                    }
                };
                for (i, p) in pages.iter().enumerate() {
                    let n = bytes_of(i);
                    let Some(dst) = buf.get_mut(..n) else { break };
                    // The one copy of the descriptors; decoded from the local buffer.
                    if p.copy_to_slice(0, dst).is_err() {
                        self.release_scratch(ctx, scratch);
                        return Err(None);
                    }
                    decode_indirect_page(dst, &mut descs, n / 8);
                }
                self.release_scratch(ctx, scratch);
            }
            DataPath::Copy => {
                let Some(page) = self.pool.pop() else {
                    return Err(None);
                };
                let fe = ctx.frontend;
                let mut failed = false;
                for (i, &g) in grefs.iter().enumerate() {
                    let n = bytes_of(i);
                    let mut op = [GrantCopy::new(
                        CopyPtr::Grant { dom: fe, gref: g },
                        0,
                        CopyPtr::Local { gfn: page.gfn },
                        0,
                        offset16(n),
                    )];
                    if copy_grants(ctx.env.hypervisor(), &mut op).is_err() {
                        ctx.stats.copy_failures += 1;
                        failed = true;
                        break;
                    }
                    let Some(dst) = buf.get_mut(..n) else { break };
                    if page.mem.copy_to_slice(0, dst).is_err() {
                        failed = true;
                        break;
                    }
                    decode_indirect_page(dst, &mut descs, n / 8);
                }
                self.pool.push(page);
                if failed {
                    return Err(None);
                }
            }
        }
        if descs.len() != total {
            return Err(None);
        }
        Ok(descs)
    }

    fn release_scratch<E: BackendEnv<'a>, B: BlockStore<'a>>(
        &mut self,
        ctx: &mut Ctx<'_, 'a, E, B>,
        mut s: InFlight<'a>,
    ) {
        self.release(ctx, &mut s);
    }

    /// Makes `grefs` reachable: persistent cache hits, then one batched map of the misses
    /// (persistent where the cache has room, else temporary). Records what must be released
    /// in `f`. On failure everything temporary is unmapped again and `Err(None)` returned.
    fn map_pages<E: BackendEnv<'a>, B: BlockStore<'a>>(
        &mut self,
        ctx: &mut Ctx<'_, 'a, E, B>,
        grefs: &[u32],
        readonly: bool,
        f: &mut InFlight<'a>,
    ) -> Result<Vec<SharedMem<'a>>, Option<Violation>> {
        #[derive(Clone, Copy)]
        enum Src<'m> {
            Hit(SharedMem<'m>),
            /// Index into the batch of map operations.
            Op(usize),
        }
        let fe = ctx.frontend;
        let mut srcs: Vec<Src<'a>> = Vec::with_capacity(grefs.len());
        // Persistent maps planned in this batch: (gref, op index, slot).
        let mut planned: Vec<(u32, usize, u64)> = Vec::new();
        let mut temp_grefs: Vec<(usize, u32)> = Vec::new();
        let mut ops: Vec<MapGrant> = Vec::new();
        for &g in grefs {
            if ctx.persistent {
                if let Some(m) = self.cache.acquire(g) {
                    ctx.stats.persistent_hits += 1;
                    f.cached.push(g);
                    srcs.push(Src::Hit(m));
                    continue;
                }
                if let Some(&(_, i, _)) = planned.iter().find(|(pg, _, _)| *pg == g) {
                    srcs.push(Src::Op(i));
                    continue;
                }
                let room = self.cache.len() + planned.len() < self.cache_capacity(ctx)
                    || self.evict_one(ctx);
                if room {
                    if let Some(addr) = ctx.env.reserve_slots(1) {
                        let i = ops.len();
                        ops.push(MapGrant::new(fe, g, addr, false));
                        planned.push((g, i, addr));
                        srcs.push(Src::Op(i));
                        continue;
                    }
                }
            }
            let i = ops.len();
            ops.push(MapGrant::new(fe, g, 0, readonly));
            temp_grefs.push((i, g));
            srcs.push(Src::Op(i));
        }
        // Temporary maps get one contiguous block of slots.
        if !temp_grefs.is_empty() {
            let count = u32::try_from(temp_grefs.len()).unwrap_or(u32::MAX);
            let Some(base) = ctx.env.reserve_slots(count) else {
                for (_, _, addr) in &planned {
                    ctx.env.release_slots(*addr, 1);
                }
                return Err(None);
            };
            for (k, &(i, _)) in temp_grefs.iter().enumerate() {
                if let Some(op) = ops.get_mut(i) {
                    op.host_addr = base + (k as u64) * PAGE_SIZE as u64;
                }
            }
            f.temp = TempMaps {
                base,
                count,
                handles: Vec::new(),
            };
        }
        let result = map_grants_each(ctx.env.hypervisor(), &mut ops);
        let failed = result.as_ref().err().map_or(0, |e| e.failed);
        ctx.stats.map_failures += failed as u64;
        // Persistent successes join the cache whatever happened to the rest.
        for &(g, i, addr) in &planned {
            let Some(op) = ops.get_mut(i) else { continue };
            match op.handle.take() {
                Some(h) => match ctx.env.view(addr, 1) {
                    Some(mem) => {
                        ctx.stats.persistent_maps += 1;
                        self.cache.insert(g, h, addr, mem);
                    }
                    None => {
                        let mut hs = [Some(h)];
                        if unmap_grants(ctx.env.hypervisor(), &mut hs).is_ok() {
                            ctx.env.release_slots(addr, 1);
                        } else {
                            ctx.stats.stuck += 1;
                        }
                    }
                },
                None => ctx.env.release_slots(addr, 1),
            }
        }
        // Temporary mappings are owned by the request (unmapped by `release`).
        for &(i, _) in &temp_grefs {
            let h = ops.get_mut(i).and_then(|o| o.handle.take());
            f.temp.handles.push(h);
        }
        ctx.stats.temporary_maps += temp_grefs.len() as u64;
        if failed > 0 {
            return Err(None);
        }
        let mut out = Vec::with_capacity(srcs.len());
        for (src, &g) in srcs.iter().zip(grefs) {
            let mem = match *src {
                Src::Hit(m) => Some(m),
                Src::Op(i) => {
                    if let Some(&(_, _, _)) = planned.iter().find(|(_, pi, _)| *pi == i) {
                        // Freshly cached: take a use of it.
                        let m = self.cache.acquire(g);
                        if m.is_some() {
                            f.cached.push(g);
                        }
                        m
                    } else {
                        let k = temp_grefs.iter().position(|&(ti, _)| ti == i);
                        k.and_then(|k| ctx.env.view(f.temp.base + (k as u64) * PAGE_SIZE as u64, 1))
                    }
                }
            };
            match mem {
                Some(m) => out.push(m),
                None => return Err(None),
            }
        }
        Ok(out)
    }

    fn cache_capacity<E: BackendEnv<'a>, B: BlockStore<'a>>(
        &self,
        ctx: &Ctx<'_, 'a, E, B>,
    ) -> usize {
        if ctx.persistent {
            ctx.cfg.max_persistent_grants
        } else {
            0
        }
    }

    /// Evicts the least recently used idle persistent grant; whether room was made.
    fn evict_one<E: BackendEnv<'a>, B: BlockStore<'a>>(
        &mut self,
        ctx: &mut Ctx<'_, 'a, E, B>,
    ) -> bool {
        if !self.cache.is_full() {
            return false;
        }
        let Some(e) = self.cache.evict_lru() else {
            return false;
        };
        let mut hs = [Some(e.handle)];
        if unmap_grants(ctx.env.hypervisor(), &mut hs).is_ok() {
            ctx.env.release_slots(e.addr, 1);
        } else {
            ctx.stats.stuck += 1;
        }
        ctx.stats.persistent_evictions += 1;
        true
    }

    /// Undoes what a request holds: temporary mappings, cache uses, pool pages.
    fn release<E: BackendEnv<'a>, B: BlockStore<'a>>(
        &mut self,
        ctx: &mut Ctx<'_, 'a, E, B>,
        f: &mut InFlight<'a>,
    ) {
        f.views.clear();
        let t = core::mem::take(&mut f.temp);
        if t.count > 0 {
            let mut t = t;
            match unmap_grants(ctx.env.hypervisor(), &mut t.handles) {
                Ok(()) => ctx.env.release_slots(t.base, t.count),
                Err(e) => {
                    ctx.stats.stuck += e.failed as u64;
                    ctx.env.log(
                        Level::Error,
                        format_args!("unmapping failed ({e}); slots kept reserved"),
                    );
                }
            }
        }
        for g in f.cached.drain(..) {
            self.cache.release(g);
        }
        self.pool.append(&mut f.pages);
    }

    /// Runs the request's steps until one has to wait (an I/O or earlier writes).
    fn advance<E: BackendEnv<'a>, B: BlockStore<'a>>(
        &mut self,
        ctx: &mut Ctx<'_, 'a, E, B>,
        slot: u32,
    ) {
        let tag = self.tag(slot);
        loop {
            let Some(Some(f)) = self.slots.get_mut(slot as usize) else {
                return;
            };
            if f.submitted {
                return;
            }
            let step = if f.status == BlkifStatus::Okay {
                f.steps.get(f.next).copied()
            } else {
                None
            };
            match step {
                None => {
                    self.finish(ctx, slot);
                    return;
                }
                Some(Step::AwaitWrites) => {
                    let seq = f.write_seq.unwrap_or(0);
                    if ctx.writes.earlier_pending(seq) {
                        f.waiting = true;
                        return;
                    }
                    f.waiting = false;
                    f.next += 1;
                }
                Some(Step::CopyOut) => {
                    let fe = ctx.frontend;
                    let mut ops: Vec<GrantCopy> = f
                        .segs
                        .iter()
                        .zip(f.pages.iter())
                        .map(|(s, p)| {
                            GrantCopy::new(
                                CopyPtr::Local { gfn: p.gfn },
                                offset16(s.offset()),
                                CopyPtr::Grant {
                                    dom: fe,
                                    gref: s.gref(),
                                },
                                offset16(s.offset()),
                                offset16(s.len()),
                            )
                        })
                        .collect();
                    if let Err(e) = copy_grants(ctx.env.hypervisor(), &mut ops) {
                        ctx.stats.copy_failures += e.failed as u64;
                        f.status = BlkifStatus::Error;
                    }
                    f.next += 1;
                }
                Some(Step::Io(op)) => {
                    let with_data = matches!(op, IoOp::Read | IoOp::Write);
                    let io = Io {
                        tag,
                        op,
                        offset: f.sector << SECTOR_SHIFT,
                        len: f.sectors << SECTOR_SHIFT,
                        segs: if with_data {
                            f.views.clone()
                        } else {
                            Vec::new()
                        },
                        seq: f.write_seq.unwrap_or(ctx.writes.next),
                    };
                    f.next += 1;
                    match ctx.store.submit(io) {
                        Ok(()) => {
                            f.submitted = true;
                            return;
                        }
                        Err((_, e)) => f.status = status_of(e),
                    }
                }
            }
        }
    }

    /// A store completion for `slot`.
    fn complete<E: BackendEnv<'a>, B: BlockStore<'a>>(
        &mut self,
        ctx: &mut Ctx<'_, 'a, E, B>,
        slot: usize,
        r: Result<(), IoError>,
    ) {
        let Some(Some(f)) = self.slots.get_mut(slot) else {
            ctx.stats.stray_completions += 1;
            return;
        };
        if !f.submitted {
            ctx.stats.stray_completions += 1;
            return;
        }
        f.submitted = false;
        if let Err(e) = r {
            f.status = status_of(e);
        }
        // A ring-sized vector index (< 2^31).
        self.advance(ctx, u32::try_from(slot).unwrap_or(u32::MAX));
    }

    /// Re-examines requests waiting for earlier writes.
    fn retry_waiting<E: BackendEnv<'a>, B: BlockStore<'a>>(&mut self, ctx: &mut Ctx<'_, 'a, E, B>) {
        let waiting: Vec<u32> = self
            .slots
            .iter()
            .zip(0u32..)
            .filter(|(s, _)| s.as_ref().is_some_and(|f| f.waiting))
            .map(|(_, i)| i)
            .collect();
        for s in waiting {
            self.advance(ctx, s);
        }
    }

    /// Answers a finished request and frees everything it held.
    fn finish<E: BackendEnv<'a>, B: BlockStore<'a>>(
        &mut self,
        ctx: &mut Ctx<'_, 'a, E, B>,
        slot: u32,
    ) {
        let Some(mut f) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        if let Some(s) = f.write_seq.take() {
            ctx.writes.end(s);
        }
        if f.barrier {
            self.barrier_open = false;
        }
        self.release(ctx, &mut f);
        self.free.push(slot);
        self.respond(ctx, f.id, f.response_op, f.status);
    }
}

impl InFlight<'_> {
    /// A holder for mappings that belong to no request (indirect pages).
    fn scratch() -> Self {
        InFlight {
            id: 0,
            response_op: 0,
            sector: 0,
            sectors: 0,
            segs: Vec::new(),
            views: Vec::new(),
            temp: TempMaps::default(),
            cached: Vec::new(),
            pages: Vec::new(),
            steps: Vec::new(),
            next: 0,
            write_seq: None,
            status: BlkifStatus::Okay,
            submitted: false,
            waiting: false,
            barrier: false,
            kind: Kind::Read,
        }
    }
}

fn per_request(cfg: &BackendConfig) -> usize {
    (cfg.max_indirect_segments as usize).max(MAX_DIRECT_SEGMENTS) + MAX_INDIRECT_PAGES
}

/// A page offset or length (at most 4096) as the `u16` of a grant copy.
fn offset16(v: usize) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// The store geometry a connection validates against (exposed for tests and tools).
#[must_use]
pub fn limits_for(info: &StoreInfo, offer: &Offer) -> Limits {
    Limits {
        sectors: info.sectors,
        sector_size: info.sector_size.max(512),
        max_indirect_segments: offer.max_indirect_segments,
    }
}
