//! The frontend device: xenbus negotiation (control path) and request issue / response
//! handling (data path).
//!
//! # Data flow of one bio
//!
//! 1. [`Frontend::submit`] checks the bio (alignment, range, read-only, features) and queues
//!    it as one *part* (a run of its segments).
//! 2. Issuing takes parts in order and splits them to the negotiated limit (11 direct
//!    segments, or `feature-max-indirect-segments` with indirect pages). Each segment's page
//!    is granted: the caller's own page (trusted backend, no persistent grants), a bounce page
//!    (`trusted` = 0, XSA-403: the backend never sees anything but the data), or a page of the
//!    persistent pool (`feature-persistent`; data copied in and out). The request is written
//!    zero-padded into a free slot whose index is its `id`; the slot's *shadow* remembers
//!    everything granted.
//! 3. [`Frontend::poll`] (on the event) copies each response out once and validates it: the
//!    `id` must name an outstanding slot, the operation must be the one requested, the status
//!    one of the three defined. Anything else is a backend violation: the device stops
//!    (error state, `error` node, `Closing`), never a panic.
//! 4. The part's grants are ended. A grant the backend still maps after answering is a
//!    violation too; its page is never reused (frontend pages go to the deferred-revoke list;
//!    a caller's bio is held until the backend lets go, XSA-396).
//! 5. When every part of a bio is answered, its [`Completion`] is queued.
//!
//! # Reconnection
//!
//! When the backend goes to `Closing`/`Closed`, in-flight parts are put back in front of the
//! queue (their grants ended or parked), the rings are torn down, and once the backend is back
//! (`InitWait`) the frontend negotiates again and re-issues them: an acknowledged write was
//! acknowledged by the backend after its store completed it, and an unacknowledged one is
//! written again, so none is lost.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use xen_blkback::env::Level;
use xen_blkback::proto::{
    encode_indirect_page, keys, parse_bool, parse_u64, switch_state, Abi, FrontRingAny,
    WireRequest, WireResponse, WireSegment, MAX_DIRECT_SEGMENTS, MAX_DIRECT_SEGMENTS_U32,
    MAX_INDIRECT_PAGES, MAX_INDIRECT_SEGMENTS, MAX_QUEUES, MAX_RING_PAGE_ORDER, PAGE_SIZE,
    SECTOR_SHIFT, SEGS_PER_INDIRECT_PAGE,
};
use xen_blkback::store::DiscardInfo;
use xen_gnttab::{GrantRef, Revoke};
use xen_ring::Fault;
use xen_sys::consts::{BlkifOp, BlkifStatus, VdiskInfo};
use xen_xenbus::bus::XenStore;
use xen_xenbus::{Device, Error as XsErr, WatchId, XenbusState};

use crate::bio::{Bio, BioError, BioOp, BufSeg, Completion};
use crate::env::{FrontendEnv, PageRun};

/// Tunables of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendConfig {
    /// Ring layout to use (the native one in the kernel; tests also drive `x86_32-abi`).
    pub abi: Abi,
    /// Largest ring we ask for, as an order (capped by the backend's offer).
    pub max_ring_page_order: u32,
    /// Most queues we ask for (capped by the backend's offer).
    pub max_queues: u32,
    /// Most segments per indirect request (capped by the backend's offer; FreeBSD's
    /// `hw.xbd.xbd_enable_indirect` = 0 corresponds to 0 here).
    pub max_indirect_segments: u32,
    /// Advertise and use persistent grants.
    pub persistent: bool,
    /// Bios accepted but not yet completed, at most.
    pub max_bios: usize,
    /// Renegotiate and re-issue after the backend closes.
    pub reconnect: bool,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            abi: Abi::NATIVE,
            max_ring_page_order: 4,
            max_queues: 4,
            max_indirect_segments: 256,
            persistent: true,
            max_bios: 1024,
            reconnect: true,
        }
    }
}

/// What the device looks like (from the backend, validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Logical block size.
    pub sector_size: u32,
    /// Physical block size.
    pub physical_sector_size: u32,
    /// `VDISK_READONLY`.
    pub readonly: bool,
    /// `VDISK_CDROM`.
    pub cdrom: bool,
    /// `VDISK_REMOVABLE`.
    pub removable: bool,
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
    /// Ring layout.
    pub abi: Abi,
    /// Queues.
    pub queues: u32,
    /// Ring pages per queue, as an order.
    pub ring_page_order: u32,
    /// Entries per ring.
    pub ring_entries: u32,
    /// Persistent grants in use (both sides).
    pub persistent: bool,
    /// Segments per request (11, or the indirect maximum).
    pub max_segments: u32,
    /// Indirect requests in use.
    pub indirect: bool,
    /// The backend is trusted (no bounce pages).
    pub trusted: bool,
}

/// Something the platform should act on (GEOM: create/resize/destroy the disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontEvent {
    /// Connected (first time or again).
    Connected(DiskInfo),
    /// The backend resized the device while connected.
    Resized {
        /// New size in 512-byte sectors.
        sectors: u64,
    },
    /// The backend went away; bios are held for re-issue.
    Disconnected,
    /// The device failed for good.
    Failed,
}

/// Why the device stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontFailure {
    /// The backend broke the ring protocol (indices).
    Ring {
        /// Queue.
        queue: u32,
        /// The fault.
        fault: Fault,
    },
    /// A response for an id that is not outstanding (never sent, or already answered).
    UnknownId {
        /// Queue.
        queue: u32,
        /// The id.
        id: u64,
    },
    /// A response with another operation than the request's.
    WrongOperation {
        /// Queue.
        queue: u32,
        /// The id.
        id: u64,
        /// What was requested.
        expected: u8,
        /// What came back.
        got: u8,
    },
    /// A status that is none of `BLKIF_RSP_*`.
    BadStatus {
        /// Queue.
        queue: u32,
        /// The id.
        id: u64,
        /// The status.
        status: i16,
    },
    /// The backend answered but still maps a grant of the request.
    GrantStillMapped {
        /// Queue.
        queue: u32,
        /// The id.
        id: u64,
    },
    /// The backend's parameters were unusable.
    Negotiation(String),
}

impl fmt::Display for FrontFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrontFailure::Ring { queue, fault } => write!(f, "queue {queue}: ring: {fault}"),
            FrontFailure::UnknownId { queue, id } => {
                write!(f, "queue {queue}: response for unknown id {id:#x}")
            }
            FrontFailure::WrongOperation {
                queue,
                id,
                expected,
                got,
            } => write!(
                f,
                "queue {queue}: response {id:#x} has operation {got}, expected {expected}"
            ),
            FrontFailure::BadStatus { queue, id, status } => {
                write!(f, "queue {queue}: response {id:#x} has status {status}")
            }
            FrontFailure::GrantStillMapped { queue, id } => write!(
                f,
                "queue {queue}: backend answered {id:#x} but still maps its grant"
            ),
            FrontFailure::Negotiation(s) => write!(f, "negotiation: {s}"),
        }
    }
}

/// Counters (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrontendStats {
    /// Bios accepted.
    pub bios: u64,
    /// Bios completed.
    pub completed: u64,
    /// Ring requests issued.
    pub requests: u64,
    /// Of which indirect.
    pub indirect: u64,
    /// Requests re-issued after a reconnection.
    pub reissued: u64,
    /// Bios split into more than one request.
    pub splits: u64,
    /// Responses handled.
    pub responses: u64,
    /// Grants revoked later because the backend still mapped them.
    pub deferred_revokes: u64,
    /// Bounce pages used (untrusted backend).
    pub bounced: u64,
    /// Persistent pool pages granted.
    pub persistent_pages: u64,
    /// Events sent.
    pub notifications: u64,
    /// Connections made.
    pub connections: u64,
    /// Issue attempts that waited for resources (pages, grants).
    pub stalls: u64,
}

/// What a [`Frontend::poll`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollResult {
    /// Responses handled.
    pub responses: u32,
    /// Bios completed.
    pub completed: u32,
    /// Work remains: poll again soon.
    pub more: bool,
    /// [`Frontend::service_control`] has something to do.
    pub control: bool,
}

/// A run of a bio's segments to send as one or more requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Part {
    bio: usize,
    first: u32,
    count: u32,
    sector: u64,
    seq: u64,
}

#[derive(Debug)]
struct BioSlot<'a> {
    bio: Bio<'a>,
    /// Parts not yet answered (queued or in flight).
    outstanding: u32,
    result: Result<(), BioError>,
    /// Grants on the bio's own pages the backend has not let go of yet.
    zombies: Vec<GrantRef>,
}

/// A page of the persistent pool, granted for the life of the connection.
#[derive(Debug)]
struct PoolPage<'a> {
    page: PageRun<'a>,
    gref: GrantRef,
}

#[derive(Debug)]
enum Grant<'a> {
    /// The caller's page, granted directly.
    Direct(GrantRef),
    /// A page of ours, granted for this request only.
    Owned { page: PageRun<'a>, gref: GrantRef },
    /// A page of the persistent pool.
    Pool(PoolPage<'a>),
}

#[derive(Debug)]
struct Shadow<'a> {
    part: Part,
    op: u8,
    data: Vec<Grant<'a>>,
    indirect: Vec<Grant<'a>>,
}

#[derive(Debug)]
struct FQueue<'a> {
    index: u32,
    ring: FrontRingAny<'a>,
    ring_pages: PageRun<'a>,
    ring_grefs: Vec<GrantRef>,
    port: u32,
    shadow: Vec<Option<Shadow<'a>>>,
    free: Vec<u32>,
    pool: Vec<PoolPage<'a>>,
    pool_total: usize,
    kick: bool,
}

#[derive(Debug)]
struct Conn<'a> {
    queues: Vec<FQueue<'a>>,
    order: u32,
    /// Set once the backend is `Connected` and its properties were read.
    neg: Option<Negotiated>,
    rr: usize,
    sectors_watch: Option<WatchId>,
}

/// A blkif frontend for one virtual disk. See the module docs.
pub struct Frontend<'a, E: FrontendEnv<'a>> {
    env: E,
    cfg: FrontendConfig,
    backend: u16,
    handle: u16,
    trusted: bool,
    cdrom_type: bool,
    conn: Option<Conn<'a>>,
    disk: Option<DiskInfo>,
    bios: Vec<Option<BioSlot<'a>>>,
    free_bios: Vec<usize>,
    live_bios: usize,
    pending: VecDeque<Part>,
    seq: u64,
    completions: VecDeque<Completion<'a>>,
    events: VecDeque<FrontEvent>,
    failure: Option<FrontFailure>,
    failure_reported: bool,
    stats: FrontendStats,
}

impl<'a, E: FrontendEnv<'a>> fmt::Debug for Frontend<'a, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frontend")
            .field("backend", &self.backend)
            .field("disk", &self.disk)
            .field("negotiated", &self.negotiated())
            .field("failure", &self.failure)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn blkif_op(op: BioOp, flush_op: BlkifOp) -> BlkifOp {
    match op {
        BioOp::Read => BlkifOp::Read,
        BioOp::Write => BlkifOp::Write,
        BioOp::Barrier => BlkifOp::WriteBarrier,
        BioOp::Flush => flush_op,
        BioOp::Discard { .. } => BlkifOp::Discard,
    }
}

/// Copies `len` bytes at `offset` from one page view to another (through a local buffer;
/// both may be shared memory).
fn copy_page(
    from: &xen_shmem::SharedMem<'_>,
    to: &xen_shmem::SharedMem<'_>,
    offset: usize,
    len: usize,
) {
    let mut buf = [0u8; PAGE_SIZE];
    if let Some(b) = buf.get_mut(..len) {
        if from.copy_to_slice(offset, b).is_ok() {
            let _ = to.copy_from_slice(offset, b);
        }
    }
}

impl<'a, E: FrontendEnv<'a>> Frontend<'a, E> {
    /// A frontend for a device of domain `backend`'s (set at probe).
    pub fn new(env: E, mut cfg: FrontendConfig) -> Self {
        cfg.max_ring_page_order = cfg.max_ring_page_order.min(MAX_RING_PAGE_ORDER);
        cfg.max_queues = cfg.max_queues.clamp(1, MAX_QUEUES);
        cfg.max_indirect_segments = cfg.max_indirect_segments.min(MAX_INDIRECT_SEGMENTS);
        cfg.max_bios = cfg.max_bios.max(1);
        Frontend {
            env,
            cfg,
            backend: 0,
            handle: 0,
            trusted: true,
            cdrom_type: false,
            conn: None,
            disk: None,
            bios: Vec::new(),
            free_bios: Vec::new(),
            live_bios: 0,
            pending: VecDeque::new(),
            seq: 0,
            completions: VecDeque::new(),
            events: VecDeque::new(),
            failure: None,
            failure_reported: false,
            stats: FrontendStats::default(),
        }
    }

    /// The platform.
    pub fn env(&self) -> &E {
        &self.env
    }

    /// The device, once connected (kept across reconnections).
    pub fn disk(&self) -> Option<DiskInfo> {
        self.disk
    }

    /// The current connection's parameters, once connected.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.conn.as_ref().and_then(|c| c.neg)
    }

    /// Whether requests can be issued now.
    pub fn is_connected(&self) -> bool {
        self.negotiated().is_some() && self.failure.is_none()
    }

    /// Why the device stopped, if it did.
    pub fn failure(&self) -> Option<&FrontFailure> {
        self.failure.as_ref()
    }

    /// Counters.
    pub fn stats(&self) -> FrontendStats {
        self.stats
    }

    /// Our event channel ports, by queue.
    pub fn ports(&self) -> Vec<u32> {
        self.conn
            .as_ref()
            .map(|c| c.queues.iter().map(|q| q.port).collect())
            .unwrap_or_default()
    }

    /// Bios accepted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.live_bios
    }

    /// Requests on the rings now.
    pub fn in_flight(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| {
            c.queues
                .iter()
                .map(|q| q.shadow.iter().filter(|s| s.is_some()).count())
                .sum()
        })
    }

    /// The next completed bio.
    pub fn pop_completion(&mut self) -> Option<Completion<'a>> {
        self.completions.pop_front()
    }

    /// The next event for the platform.
    pub fn pop_event(&mut self) -> Option<FrontEvent> {
        self.events.pop_front()
    }

    fn log(&self, level: Level, msg: fmt::Arguments<'_>) {
        self.env.log(level, msg);
    }

    fn fail(&mut self, f: FrontFailure) {
        if self.failure.is_none() {
            self.log(Level::Error, format_args!("blkfront: {f}"));
            self.failure = Some(f);
            self.events.push_back(FrontEvent::Failed);
        }
    }

    // ---------------------------------------------------------------- submission

    /// Accepts a bio (see [`crate::bio`] for the split-phase contract).
    ///
    /// # Errors
    /// The bio back, with [`BioError::Invalid`] (misaligned, empty), [`BioError::OutOfRange`],
    /// [`BioError::ReadOnly`], [`BioError::NotSupported`] (flush/discard the backend lacks),
    /// [`BioError::Busy`] or [`BioError::Failed`].
    pub fn submit(&mut self, bio: Bio<'a>) -> Result<(), (Bio<'a>, BioError)> {
        if self.failure.is_some() {
            return Err((bio, BioError::Failed));
        }
        if self.live_bios >= self.cfg.max_bios {
            return Err((bio, BioError::Busy));
        }
        if let Err(e) = self.check(&bio) {
            return Err((bio, e));
        }
        let count = match bio.op {
            BioOp::Read | BioOp::Write | BioOp::Barrier => {
                u32::try_from(bio.segs.len()).unwrap_or(u32::MAX)
            }
            BioOp::Flush | BioOp::Discard { .. } => 0,
        };
        let sector = bio.sector;
        let idx = match self.free_bios.pop() {
            Some(i) => i,
            None => {
                self.bios.push(None);
                self.bios.len() - 1
            }
        };
        if let Some(s) = self.bios.get_mut(idx) {
            *s = Some(BioSlot {
                bio,
                outstanding: 1,
                result: Ok(()),
                zombies: Vec::new(),
            });
        }
        self.live_bios += 1;
        self.stats.bios += 1;
        self.seq += 1;
        self.pending.push_back(Part {
            bio: idx,
            first: 0,
            count,
            sector,
            seq: self.seq,
        });
        self.issue();
        Ok(())
    }

    fn check(&self, bio: &Bio<'a>) -> Result<(), BioError> {
        let disk = self.disk;
        let writes = !matches!(bio.op, BioOp::Read | BioOp::Flush);
        if writes && disk.is_some_and(|d| d.readonly) {
            return Err(BioError::ReadOnly);
        }
        match bio.op {
            BioOp::Read | BioOp::Write | BioOp::Barrier => {
                if bio.segs.is_empty() || !bio.segs.iter().all(BufSeg::is_valid) {
                    return Err(BioError::Invalid);
                }
                if bio.op == BioOp::Barrier && disk.is_some_and(|d| !d.barrier) {
                    return Err(BioError::NotSupported);
                }
            }
            BioOp::Flush => {
                if disk.is_some_and(|d| !d.flush && !d.barrier) {
                    return Err(BioError::NotSupported);
                }
                return Ok(());
            }
            BioOp::Discard { secure } => {
                if bio.sectors == 0 {
                    return Err(BioError::Invalid);
                }
                if let Some(d) = disk {
                    match d.discard {
                        None => return Err(BioError::NotSupported),
                        Some(x) if secure && !x.secure => return Err(BioError::NotSupported),
                        _ => {}
                    }
                }
            }
        }
        let sectors = bio.len_sectors();
        let end = bio
            .sector
            .checked_add(sectors)
            .ok_or(BioError::OutOfRange)?;
        if let Some(d) = disk {
            if end > d.sectors {
                return Err(BioError::OutOfRange);
            }
            let per = u64::from(d.sector_size >> SECTOR_SHIFT).max(1);
            if bio.sector % per != 0 || sectors % per != 0 {
                return Err(BioError::Invalid);
            }
        }
        Ok(())
    }

    /// Issues queued parts while rings, slots and resources allow.
    fn issue(&mut self) {
        if self.failure.is_some() {
            return;
        }
        let Some(neg) = self.negotiated() else {
            return;
        };
        let nq = self.conn.as_ref().map_or(0, |c| c.queues.len());
        if nq == 0 {
            return;
        }
        let mut skipped: Vec<Part> = Vec::new();
        while let Some(mut part) = self.pending.pop_front() {
            // A bio whose old grants the backend has not released yet waits.
            if self
                .bios
                .get(part.bio)
                .and_then(Option::as_ref)
                .is_some_and(|b| !b.zombies.is_empty())
            {
                skipped.push(part);
                continue;
            }
            let Some(qi) = self.pick_queue() else {
                self.pending.push_front(part);
                break;
            };
            let op = self
                .bios
                .get(part.bio)
                .and_then(Option::as_ref)
                .map(|b| b.bio.op);
            let Some(op) = op else { continue };
            // Split to the limit: barriers stay direct (no indirect barrier in blkif).
            let limit = if op == BioOp::Barrier {
                MAX_DIRECT_SEGMENTS_U32
            } else {
                neg.max_segments
            };
            if part.count > limit {
                let head_sectors = self.part_sectors(part.bio, part.first, limit);
                let tail = Part {
                    bio: part.bio,
                    first: part.first + limit,
                    count: part.count - limit,
                    sector: part.sector + head_sectors,
                    seq: part.seq,
                };
                if let Some(Some(b)) = self.bios.get_mut(part.bio) {
                    b.outstanding += 1;
                }
                self.stats.splits += 1;
                part.count = limit;
                self.pending.push_front(tail);
            }
            match self.issue_part(qi, part, neg) {
                Ok(()) => {}
                Err(p) => {
                    self.stats.stalls += 1;
                    self.pending.push_front(p);
                    break;
                }
            }
        }
        for p in skipped.into_iter().rev() {
            self.pending.push_front(p);
        }
        self.kick();
    }

    fn part_sectors(&self, bio: usize, first: u32, count: u32) -> u64 {
        self.bios.get(bio).and_then(Option::as_ref).map_or(0, |b| {
            b.bio
                .segs
                .iter()
                .skip(first as usize)
                .take(count as usize)
                .map(BufSeg::sectors)
                .sum()
        })
    }

    /// A queue with a free slot, round robin.
    fn pick_queue(&mut self) -> Option<usize> {
        let conn = self.conn.as_mut()?;
        let n = conn.queues.len();
        for k in 0..n {
            let qi = (conn.rr + k) % n;
            let q = conn.queues.get(qi)?;
            if !q.free.is_empty() && q.ring.free_requests() > 0 {
                conn.rr = (qi + 1) % n;
                return Some(qi);
            }
        }
        None
    }

    /// Grants a page of ours for one request; `None` when memory or grants are short.
    fn owned_page(&self, readonly: bool) -> Option<(PageRun<'a>, GrantRef)> {
        let page = self.env.alloc_pages(1)?;
        match self.env.grant(self.backend, page.gfn, readonly) {
            Ok(g) => Some((page, g)),
            Err(_) => {
                self.env.free_pages(page);
                None
            }
        }
    }

    /// A persistent pool page of queue `qi` (granted writable for the connection's life).
    fn pool_page(&mut self, qi: usize) -> Option<PoolPage<'a>> {
        // The pool grows on demand (LIFO reuse keeps it small, as blkif.h recommends) and is
        // bounded by what the ring can have in flight: every slot a direct request's worth,
        // plus one full indirect request.
        let cap = {
            let q = self.conn.as_ref()?.queues.get(qi)?;
            q.shadow.len() * (MAX_DIRECT_SEGMENTS + 1)
                + self.cfg.max_indirect_segments as usize
                + MAX_INDIRECT_PAGES
        };
        let q = self.conn.as_mut()?.queues.get_mut(qi)?;
        if let Some(p) = q.pool.pop() {
            return Some(p);
        }
        if q.pool_total >= cap {
            return None;
        }
        let page = self.env.alloc_pages(1)?;
        match self.env.grant(self.backend, page.gfn, false) {
            Ok(gref) => {
                if let Some(q) = self.conn.as_mut().and_then(|c| c.queues.get_mut(qi)) {
                    q.pool_total += 1;
                }
                self.stats.persistent_pages += 1;
                Some(PoolPage { page, gref })
            }
            Err(_) => {
                self.env.free_pages(page);
                None
            }
        }
    }

    /// Puts one part on queue `qi`'s ring. On resource shortage everything taken is given
    /// back and the part is returned.
    fn issue_part(&mut self, qi: usize, part: Part, neg: Negotiated) -> Result<(), Part> {
        let Some((op, bio_op)) = self
            .bios
            .get(part.bio)
            .and_then(Option::as_ref)
            .map(|b| (b.bio.op, b.bio.op))
        else {
            return Ok(());
        };
        let disk = self.disk.unwrap_or(DiskInfo {
            sectors: 0,
            sector_size: 512,
            physical_sector_size: 512,
            readonly: false,
            cdrom: false,
            removable: false,
            flush: false,
            barrier: false,
            discard: None,
        });
        let flush_op = if disk.flush {
            BlkifOp::FlushDiskcache
        } else {
            BlkifOp::WriteBarrier
        };
        let wop = blkif_op(op, flush_op);
        let Some(slot) = self
            .conn
            .as_mut()
            .and_then(|c| c.queues.get_mut(qi))
            .and_then(|q| q.free.pop())
        else {
            return Err(part);
        };
        let id = u64::from(slot);
        let mut data: Vec<Grant<'a>> = Vec::new();
        let mut indirect: Vec<Grant<'a>> = Vec::new();
        let wire = match bio_op {
            BioOp::Flush => WireRequest::rw(wop, id, self.handle, 0, &[]),
            BioOp::Discard { secure } => {
                let sectors = self
                    .bios
                    .get(part.bio)
                    .and_then(Option::as_ref)
                    .map_or(0, |b| b.bio.sectors);
                WireRequest::discard(id, self.handle, part.sector, sectors, secure)
            }
            BioOp::Read | BioOp::Write | BioOp::Barrier => {
                let to_backend = bio_op != BioOp::Read;
                let mut segs: Vec<WireSegment> = Vec::with_capacity(part.count as usize);
                let ok = self.grant_data(qi, part, to_backend, neg, &mut data, &mut segs);
                let wire = if !ok {
                    None
                } else if segs.len() <= MAX_DIRECT_SEGMENTS {
                    Some(WireRequest::rw(wop, id, self.handle, part.sector, &segs))
                } else {
                    self.grant_indirect(qi, &segs, neg, &mut indirect)
                        .map(|grefs| {
                            WireRequest::indirect(
                                wop,
                                id,
                                self.handle,
                                part.sector,
                                u16::try_from(segs.len()).unwrap_or(0),
                                &grefs,
                            )
                        })
                };
                match wire {
                    Some(w) => w,
                    None => {
                        self.drop_grants(qi, data, part.bio);
                        self.drop_grants(qi, indirect, part.bio);
                        if let Some(q) = self.conn.as_mut().and_then(|c| c.queues.get_mut(qi)) {
                            q.free.push(slot);
                        }
                        return Err(part);
                    }
                }
            }
        };
        let is_indirect = !indirect.is_empty();
        let Some(q) = self.conn.as_mut().and_then(|c| c.queues.get_mut(qi)) else {
            return Err(part);
        };
        if q.ring.push_request(&wire).is_err() {
            // A free slot and free ring space were checked; a fault is reported at poll.
            q.free.push(slot);
            self.drop_grants(qi, data, part.bio);
            self.drop_grants(qi, indirect, part.bio);
            return Err(part);
        }
        q.kick = true;
        if let Some(s) = q.shadow.get_mut(slot as usize) {
            *s = Some(Shadow {
                part,
                op: wire.response_operation(),
                data,
                indirect,
            });
        }
        self.stats.requests += 1;
        if is_indirect {
            self.stats.indirect += 1;
        }
        Ok(())
    }

    /// Grants the data pages of a part and builds its descriptors.
    fn grant_data(
        &mut self,
        qi: usize,
        part: Part,
        to_backend: bool,
        neg: Negotiated,
        data: &mut Vec<Grant<'a>>,
        segs: &mut Vec<WireSegment>,
    ) -> bool {
        let bufs: Vec<BufSeg<'a>> = match self.bios.get(part.bio).and_then(Option::as_ref) {
            Some(b) => b
                .bio
                .segs
                .iter()
                .skip(part.first as usize)
                .take(part.count as usize)
                .copied()
                .collect(),
            None => return false,
        };
        for s in &bufs {
            let (off, len) = (usize::from(s.offset), usize::from(s.len));
            let g = if neg.persistent {
                let Some(p) = self.pool_page(qi) else {
                    return false;
                };
                if to_backend {
                    copy_page(&s.page, &p.page.mem, off, len);
                }
                let r = p.gref.raw();
                data.push(Grant::Pool(p));
                r
            } else if !neg.trusted {
                // XSA-403: a page of ours holding only this data.
                let Some((page, gref)) = self.owned_page(to_backend) else {
                    return false;
                };
                if to_backend {
                    copy_page(&s.page, &page.mem, off, len);
                }
                self.stats.bounced += 1;
                let r = gref.raw();
                data.push(Grant::Owned { page, gref });
                r
            } else {
                match self.env.grant(self.backend, s.gfn, to_backend) {
                    Ok(gref) => {
                        let r = gref.raw();
                        data.push(Grant::Direct(gref));
                        r
                    }
                    Err(_) => return false,
                }
            };
            segs.push(WireSegment {
                gref: g,
                first_sect: s.first_sect(),
                last_sect: s.last_sect(),
            });
        }
        true
    }

    /// Writes the descriptors into indirect pages and grants them; their references.
    fn grant_indirect(
        &mut self,
        qi: usize,
        segs: &[WireSegment],
        neg: Negotiated,
        indirect: &mut Vec<Grant<'a>>,
    ) -> Option<Vec<u32>> {
        let mut grefs = Vec::new();
        for chunk in segs.chunks(SEGS_PER_INDIRECT_PAGE) {
            let mut img = vec![0u8; chunk.len() * 8];
            encode_indirect_page(chunk, &mut img);
            let (mem, g) = if neg.persistent {
                let p = self.pool_page(qi)?;
                let r = (p.page.mem, p.gref.raw());
                indirect.push(Grant::Pool(p));
                r
            } else {
                let (page, gref) = self.owned_page(true)?;
                let r = (page.mem, gref.raw());
                indirect.push(Grant::Owned { page, gref });
                r
            };
            mem.copy_from_slice(0, &img).ok()?;
            grefs.push(g);
        }
        Some(grefs)
    }

    /// Takes back grants of a request that was never sent (or is being abandoned).
    fn drop_grants(&mut self, qi: usize, grants: Vec<Grant<'a>>, bio: usize) {
        for g in grants {
            self.release_grant(qi, g, bio);
        }
    }

    /// Ends one grant of a request. Returns false if the backend still had it mapped.
    fn release_grant(&mut self, qi: usize, g: Grant<'a>, bio: usize) -> bool {
        match g {
            Grant::Direct(gref) => {
                if self.env.end_access(&gref).is_ok() {
                    // Access ended: the reference goes back at once.
                    let _ = self.env.revoke(gref);
                    true
                } else {
                    // The caller's page: keep the bio until the backend lets go.
                    if let Some(Some(b)) = self.bios.get_mut(bio) {
                        b.zombies.push(gref);
                    }
                    false
                }
            }
            Grant::Owned { page, gref } => match self.env.revoke(gref) {
                Revoke::Done => {
                    self.env.free_pages(page);
                    true
                }
                Revoke::Deferred => {
                    // The grant table now owns the page until the backend unmaps it.
                    self.stats.deferred_revokes += 1;
                    false
                }
            },
            Grant::Pool(p) => {
                if let Some(q) = self.conn.as_mut().and_then(|c| c.queues.get_mut(qi)) {
                    q.pool.push(p);
                } else {
                    self.free_pool_page(p);
                }
                true
            }
        }
    }

    fn free_pool_page(&mut self, p: PoolPage<'a>) {
        match self.env.revoke(p.gref) {
            Revoke::Done => self.env.free_pages(p.page),
            Revoke::Deferred => self.stats.deferred_revokes += 1,
        }
    }

    /// Publishes queued requests and notifies where the backend asked.
    fn kick(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let mut fault = None;
        for q in conn.queues.iter_mut() {
            if !q.kick {
                continue;
            }
            q.kick = false;
            match q.ring.push_requests_and_check_notify() {
                Ok(n) => {
                    if n.is_required() {
                        self.stats.notifications += 1;
                        self.env.notify(q.port);
                    }
                }
                Err(f) => {
                    fault = Some((q.index, f));
                }
            }
        }
        if let Some((queue, fault)) = fault {
            self.fail(FrontFailure::Ring { queue, fault });
            self.abandon();
        }
    }

    // ---------------------------------------------------------------- responses

    /// Handles responses on every queue, retries held grants, and issues queued parts. Call
    /// on an event from any of [`Frontend::ports`], and again when [`PollResult::more`].
    pub fn poll(&mut self) -> PollResult {
        let mut r = PollResult::default();
        let before = self.stats.completed;
        let nq = self.conn.as_ref().map_or(0, |c| c.queues.len());
        for qi in 0..nq {
            if self.failure.is_some() {
                break;
            }
            // At most one ring's worth per queue per poll (fairness; responses beyond were
            // published after we started and bring their own event or the final check).
            let size = self
                .conn
                .as_ref()
                .and_then(|c| c.queues.get(qi))
                .map_or(0, |q| q.ring.size());
            let mut n = 0;
            loop {
                if n >= size {
                    r.more = true;
                    break;
                }
                let popped = match self.conn.as_mut().and_then(|c| c.queues.get_mut(qi)) {
                    Some(q) => q.ring.pop_response(),
                    None => break,
                };
                match popped {
                    Err(fault) => {
                        self.fail(FrontFailure::Ring {
                            queue: u32::try_from(qi).unwrap_or(0),
                            fault,
                        });
                        break;
                    }
                    Ok(Some(rsp)) => {
                        n += 1;
                        r.responses += 1;
                        if let Err(f) = self.on_response(qi, rsp) {
                            self.fail(f);
                            break;
                        }
                    }
                    Ok(None) => {
                        let again = match self.conn.as_mut().and_then(|c| c.queues.get_mut(qi)) {
                            Some(q) => q.ring.final_check_for_responses(),
                            None => Ok(false),
                        };
                        match again {
                            Ok(true) => {}
                            Ok(false) => break,
                            Err(fault) => {
                                self.fail(FrontFailure::Ring {
                                    queue: u32::try_from(qi).unwrap_or(0),
                                    fault,
                                });
                                break;
                            }
                        }
                    }
                }
            }
        }
        if self.failure.is_some() {
            self.abandon();
        }
        self.retry_zombies();
        self.issue();
        r.completed = u32::try_from(self.stats.completed - before).unwrap_or(u32::MAX);
        r.control = self.failure.is_some() && !self.failure_reported;
        r
    }

    /// Validates a response and finishes its part.
    fn on_response(&mut self, qi: usize, rsp: WireResponse) -> Result<(), FrontFailure> {
        let queue = u32::try_from(qi).unwrap_or(0);
        let id = rsp.id;
        let q = self
            .conn
            .as_mut()
            .and_then(|c| c.queues.get_mut(qi))
            .ok_or(FrontFailure::UnknownId { queue, id })?;
        let slot = usize::try_from(id)
            .ok()
            .filter(|&s| q.shadow.get(s).is_some_and(Option::is_some))
            .ok_or(FrontFailure::UnknownId { queue, id })?;
        let expected = q
            .shadow
            .get(slot)
            .and_then(Option::as_ref)
            .map_or(0, |s| s.op);
        if rsp.operation != expected {
            return Err(FrontFailure::WrongOperation {
                queue,
                id,
                expected,
                got: rsp.operation,
            });
        }
        let status = BlkifStatus::try_from(rsp.status).map_err(|_| FrontFailure::BadStatus {
            queue,
            id,
            status: rsp.status,
        })?;
        let Some(sh) = q.shadow.get_mut(slot).and_then(Option::take) else {
            return Err(FrontFailure::UnknownId { queue, id });
        };
        q.free.push(u32::try_from(slot).unwrap_or(0));
        self.stats.responses += 1;
        let result = match status {
            BlkifStatus::Okay => Ok(()),
            BlkifStatus::Error => Err(BioError::Io),
            BlkifStatus::Eopnotsupp => Err(BioError::NotSupported),
        };
        let op = self
            .bios
            .get(sh.part.bio)
            .and_then(Option::as_ref)
            .map(|b| b.bio.op);
        if result == Err(BioError::NotSupported) {
            // As Linux: stop using a feature the backend refuses.
            if let Some(d) = self.disk.as_mut() {
                match op {
                    Some(BioOp::Flush) => {
                        d.flush = false;
                        d.barrier = false;
                    }
                    Some(BioOp::Barrier) => d.barrier = false,
                    Some(BioOp::Discard { .. }) => d.discard = None,
                    _ => {}
                }
            }
        }
        // Reads: copy the data out of our pages, once the backend is done with them.
        let mut still_mapped = false;
        let bufs: Vec<BufSeg<'a>> = self
            .bios
            .get(sh.part.bio)
            .and_then(Option::as_ref)
            .map(|b| {
                b.bio
                    .segs
                    .iter()
                    .skip(sh.part.first as usize)
                    .take(sh.part.count as usize)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        let copy_out = op == Some(BioOp::Read) && result.is_ok();
        for (i, g) in sh.data.into_iter().enumerate() {
            let Some(s) = bufs.get(i) else {
                still_mapped |= !self.release_grant(qi, g, sh.part.bio);
                continue;
            };
            let (off, len) = (usize::from(s.offset), usize::from(s.len));
            match g {
                Grant::Pool(p) => {
                    if copy_out {
                        copy_page(&p.page.mem, &s.page, off, len);
                    }
                    still_mapped |= !self.release_grant(qi, Grant::Pool(p), sh.part.bio);
                }
                Grant::Owned { page, gref } => {
                    // Ended before the copy: the backend can no longer write what we copy.
                    match self.env.revoke(gref) {
                        Revoke::Done => {
                            if copy_out {
                                copy_page(&page.mem, &s.page, off, len);
                            }
                            self.env.free_pages(page);
                        }
                        Revoke::Deferred => {
                            self.stats.deferred_revokes += 1;
                            still_mapped = true;
                        }
                    }
                }
                g @ Grant::Direct(_) => {
                    still_mapped |= !self.release_grant(qi, g, sh.part.bio);
                }
            }
        }
        for g in sh.indirect {
            still_mapped |= !self.release_grant(qi, g, sh.part.bio);
        }
        let result = if still_mapped {
            Err(BioError::Io)
        } else {
            result
        };
        self.part_done(sh.part.bio, result);
        if still_mapped {
            return Err(FrontFailure::GrantStillMapped { queue, id });
        }
        Ok(())
    }

    /// One part of a bio is answered (or abandoned with `result`).
    fn part_done(&mut self, bio: usize, result: Result<(), BioError>) {
        if let Some(Some(b)) = self.bios.get_mut(bio) {
            b.outstanding = b.outstanding.saturating_sub(1);
            if b.result.is_ok() {
                b.result = result;
            }
        }
        self.maybe_complete(bio);
    }

    fn maybe_complete(&mut self, bio: usize) {
        let done = self
            .bios
            .get(bio)
            .and_then(Option::as_ref)
            .is_some_and(|b| b.outstanding == 0 && b.zombies.is_empty());
        if !done {
            return;
        }
        if let Some(b) = self.bios.get_mut(bio).and_then(Option::take) {
            self.free_bios.push(bio);
            self.live_bios -= 1;
            self.stats.completed += 1;
            self.completions.push_back(Completion {
                bio: b.bio,
                result: b.result,
            });
        }
    }

    /// Grants on bios' own pages that the backend has not released yet (their bios are held).
    /// While non-zero the platform should call [`Frontend::retry_held`] from a timer, as it
    /// runs `GrantTable::poll_deferred` for the frontend's own pages.
    pub fn held_grants(&self) -> usize {
        self.bios.iter().flatten().map(|b| b.zombies.len()).sum()
    }

    /// Retries the held grants; bios whose pages are free again complete (or are re-issued).
    /// Returns how many grants were released.
    pub fn retry_held(&mut self) -> usize {
        let before = self.held_grants();
        self.retry_zombies();
        let released = before - self.held_grants();
        if released > 0 {
            self.issue();
        }
        released
    }

    /// Retries ending access to grants the backend held on bios' own pages.
    fn retry_zombies(&mut self) {
        for i in 0..self.bios.len() {
            let Some(Some(b)) = self.bios.get_mut(i) else {
                continue;
            };
            if b.zombies.is_empty() {
                continue;
            }
            let zs = core::mem::take(&mut b.zombies);
            let mut keep = Vec::new();
            for z in zs {
                if self.env.end_access(&z).is_ok() {
                    let _ = self.env.revoke(z);
                } else {
                    keep.push(z);
                }
            }
            if let Some(Some(b)) = self.bios.get_mut(i) {
                b.zombies = keep;
            }
            self.maybe_complete(i);
        }
    }

    /// The device failed: every in-flight and queued bio fails (each handed back only once
    /// no grant on its pages is live).
    fn abandon(&mut self) {
        self.teardown_rings(false);
        while let Some(p) = self.pending.pop_front() {
            self.part_done(p.bio, Err(BioError::Failed));
        }
    }

    /// Takes every request off the rings: their grants are ended (or parked), and their
    /// parts are either re-queued in order (`requeue`) or failed. Then frees the rings,
    /// pools and ports.
    fn teardown_rings(&mut self, requeue: bool) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let mut back: Vec<Part> = Vec::new();
        for (qi, q) in conn.queues.iter_mut().enumerate() {
            let shadows: Vec<Shadow<'a>> = q.shadow.iter_mut().filter_map(Option::take).collect();
            // Put the queue back so pool pages return to it while ending grants.
            let _ = qi;
            for sh in shadows {
                for g in sh.data.into_iter().chain(sh.indirect) {
                    match g {
                        Grant::Pool(p) => q.pool.push(p),
                        Grant::Owned { page, gref } => match self.env.revoke(gref) {
                            Revoke::Done => self.env.free_pages(page),
                            Revoke::Deferred => self.stats.deferred_revokes += 1,
                        },
                        Grant::Direct(gref) => {
                            if self.env.end_access(&gref).is_ok() {
                                let _ = self.env.revoke(gref);
                            } else if let Some(Some(b)) = self.bios.get_mut(sh.part.bio) {
                                b.zombies.push(gref);
                            }
                        }
                    }
                }
                back.push(sh.part);
            }
        }
        if let Some(w) = conn.sectors_watch.take() {
            // Unwatched by the control path (it has the store); forgotten here.
            let _ = w;
        }
        for q in conn.queues {
            for p in q.pool {
                match self.env.revoke(p.gref) {
                    Revoke::Done => self.env.free_pages(p.page),
                    Revoke::Deferred => self.stats.deferred_revokes += 1,
                }
            }
            self.env.close_port(q.port);
            // Ring pages: each freed only if its grant ended; the others belong to the
            // deferred list.
            for (i, g) in q.ring_grefs.into_iter().enumerate() {
                let off = i * PAGE_SIZE;
                match self.env.revoke(g) {
                    Revoke::Done => {
                        if let Ok(mem) = q.ring_pages.mem.subrange(off, PAGE_SIZE) {
                            self.env.free_pages(PageRun {
                                gfn: q.ring_pages.gfn + i as u64,
                                count: 1,
                                mem,
                            });
                        }
                    }
                    Revoke::Deferred => self.stats.deferred_revokes += 1,
                }
            }
        }
        back.sort_by_key(|p| (p.seq, p.first));
        if requeue {
            self.stats.reissued += back.len() as u64;
            for p in back.into_iter().rev() {
                self.pending.push_front(p);
            }
        } else {
            for p in back {
                self.part_done(p.bio, Err(BioError::Failed));
            }
        }
    }

    // ---------------------------------------------------------------- control path

    /// A new device directory: reads `trusted`, `device-type` and the virtual device.
    ///
    /// # Errors
    /// Store errors.
    pub fn probe<S: XenStore + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
    ) -> Result<(), XsErr> {
        self.backend = dev.otherend_id();
        self.handle = dev.id().parse::<u16>().unwrap_or(0);
        self.trusted = xs
            .try_read(&dev.node(keys::TRUSTED))?
            .and_then(|v| parse_bool(&v))
            .unwrap_or(true);
        self.cdrom_type = matches!(
            xs.try_read(&dev.node(keys::DEVICE_TYPE))?,
            Some(v) if v.trim_ascii_end() == b"cdrom"
        );
        if dev.state() == XenbusState::Unknown {
            switch_state(xs, dev, XenbusState::Initialising)?;
        }
        Ok(())
    }

    /// The backend's state changed.
    ///
    /// # Errors
    /// Store errors; negotiation problems are handled here (failure, `error`, `Closing`).
    pub fn otherend_changed<S: XenStore + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        if self.failure.is_some() {
            return self.service_control(xs, dev);
        }
        match state {
            XenbusState::InitWait => {
                if dev.state() == XenbusState::Closed {
                    switch_state(xs, dev, XenbusState::Initialising)?;
                }
                if dev.state() == XenbusState::Initialising && self.conn.is_none() {
                    match self.talk(xs, dev) {
                        Ok(()) => switch_state(xs, dev, XenbusState::Initialised)?,
                        Err(msg) => {
                            self.fail(FrontFailure::Negotiation(msg));
                            return self.service_control(xs, dev);
                        }
                    }
                }
                Ok(())
            }
            XenbusState::Connected => {
                if dev.state() == XenbusState::Initialised {
                    match self.connect(xs, dev) {
                        Ok(()) => {
                            switch_state(xs, dev, XenbusState::Connected)?;
                            self.issue();
                        }
                        Err(msg) => {
                            self.fail(FrontFailure::Negotiation(msg));
                            return self.service_control(xs, dev);
                        }
                    }
                } else if dev.state() == XenbusState::Connected {
                    self.reread_size(xs, dev)?;
                }
                Ok(())
            }
            XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown => {
                self.disconnect(xs, dev);
                if dev.state().can_switch_to(XenbusState::Closing)
                    && dev.state() != XenbusState::Closed
                {
                    switch_state(xs, dev, XenbusState::Closing)?;
                }
                if dev.state() == XenbusState::Closing {
                    switch_state(xs, dev, XenbusState::Closed)?;
                }
                if state == XenbusState::Closed && self.cfg.reconnect {
                    // Ask a backend that waits for us (Linux blkback) to prepare again.
                    switch_state(xs, dev, XenbusState::Initialising)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Takes the connection down and keeps (or fails) the in-flight bios.
    fn disconnect<S: XenStore + ?Sized>(&mut self, xs: &mut S, dev: &Device) {
        if self.conn.is_none() {
            return;
        }
        if let Some(w) = self.conn.as_mut().and_then(|c| c.sectors_watch.take()) {
            let _ = xs.unwatch(w);
        }
        let requeue = self.cfg.reconnect;
        self.teardown_rings(requeue);
        if !requeue {
            while let Some(p) = self.pending.pop_front() {
                self.part_done(p.bio, Err(BioError::Failed));
            }
        }
        // Stale transport keys must not be read by the next connection.
        for k in [
            keys::RING_REF,
            keys::EVENT_CHANNEL,
            keys::MULTI_QUEUE_NUM_QUEUES,
            keys::RING_PAGE_ORDER,
            keys::NUM_RING_PAGES,
        ] {
            let _ = xs.rm(&dev.node(k));
        }
        for i in 0..(1u32 << MAX_RING_PAGE_ORDER) {
            let _ = xs.rm(&dev.node(&format!("{}{i}", keys::RING_REF)));
        }
        for i in 0..MAX_QUEUES {
            let _ = xs.rm(&dev.node(&format!("queue-{i}")));
        }
        self.events.push_back(FrontEvent::Disconnected);
        self.log(
            Level::Info,
            format_args!(
                "{}: backend went away; {} bio(s) held",
                dev.nodename(),
                self.live_bios
            ),
        );
    }

    /// The device directory is gone: every bio fails (once its pages are free).
    pub fn remove<S: XenStore + ?Sized>(&mut self, xs: &mut S, dev: &mut Device) {
        if let Some(w) = self.conn.as_mut().and_then(|c| c.sectors_watch.take()) {
            let _ = xs.unwatch(w);
        }
        let _ = dev;
        self.teardown_rings(false);
        while let Some(p) = self.pending.pop_front() {
            self.part_done(p.bio, Err(BioError::Failed));
        }
    }

    /// Reports a failure to xenstore (`error` node, `Closing`).
    ///
    /// # Errors
    /// Store errors.
    pub fn service_control<S: XenStore + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
    ) -> Result<(), XsErr> {
        if let (Some(f), false) = (&self.failure, self.failure_reported) {
            let msg = format!("{f}");
            self.failure_reported = true;
            if let Some(w) = self.conn.as_mut().and_then(|c| c.sectors_watch.take()) {
                let _ = xs.unwatch(w);
            }
            self.abandon();
            dev.write_node(xs, "error", &msg)?;
            if dev.state().can_switch_to(XenbusState::Closing) {
                switch_state(xs, dev, XenbusState::Closing)?;
            }
        }
        self.retry_zombies();
        Ok(())
    }

    /// A watch event the bus did not claim: the backend's `sectors` (online resize).
    /// Returns whether it was ours.
    ///
    /// # Errors
    /// Store errors.
    pub fn on_watch<S: XenStore + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
        id: WatchId,
    ) -> Result<bool, XsErr> {
        if self.conn.as_ref().and_then(|c| c.sectors_watch) != Some(id) {
            return Ok(false);
        }
        if dev.state() == XenbusState::Connected {
            self.reread_size(xs, dev)?;
        }
        Ok(true)
    }

    fn reread_size<S: XenStore + ?Sized>(&mut self, xs: &mut S, dev: &Device) -> Result<(), XsErr> {
        let Some(v) = xs.try_read(&dev.otherend_node(keys::SECTORS))? else {
            return Ok(());
        };
        let Some(sectors) = parse_u64(&v) else {
            return Ok(());
        };
        if let Some(d) = self.disk.as_mut() {
            if d.sectors != sectors {
                d.sectors = sectors;
                self.events.push_back(FrontEvent::Resized { sectors });
                self.log(
                    Level::Info,
                    format_args!("{}: resized to {sectors} sectors", dev.nodename()),
                );
            }
        }
        Ok(())
    }

    /// Backend `InitWait`: sizes the rings from its offer, allocates and grants them,
    /// allocates event channels, and writes our transport keys (both multi-page schemes).
    fn talk<S: XenStore + ?Sized>(&mut self, xs: &mut S, dev: &Device) -> Result<(), String> {
        let num = |xs: &mut S, k: &str| -> Result<Option<u64>, String> {
            match xs.try_read(&dev.otherend_node(k)) {
                Ok(None) => Ok(None),
                Ok(Some(v)) => Ok(parse_u64(&v)),
                Err(e) => Err(format!("reading {k}: {e:?}")),
            }
        };
        let be_order = match num(xs, keys::MAX_RING_PAGE_ORDER)? {
            Some(o) => o,
            None => num(xs, keys::MAX_RING_PAGES)?
                .filter(|n| n.is_power_of_two())
                .map_or(0, |n| u64::from(n.ilog2())),
        };
        let order =
            u32::try_from(be_order.min(u64::from(self.cfg.max_ring_page_order))).unwrap_or(0);
        let be_queues = num(xs, keys::MULTI_QUEUE_MAX_QUEUES)?.unwrap_or(1).max(1);
        let queues = u32::try_from(be_queues.min(u64::from(self.cfg.max_queues))).unwrap_or(1);
        let pages = 1u32 << order;
        let abi = self.cfg.abi;
        let mut qs: Vec<FQueue<'a>> = Vec::new();
        let mut err = None;
        for qi in 0..queues {
            let Some(run) = self.env.alloc_pages(pages) else {
                err = Some(String::from("no memory for a ring"));
                break;
            };
            let ring = match FrontRingAny::init(abi, run.mem) {
                Ok(r) => r,
                Err(e) => {
                    self.env.free_pages(run);
                    err = Some(format!("ring: {e}"));
                    break;
                }
            };
            let mut grefs = Vec::new();
            for i in 0..u64::from(pages) {
                match self.env.grant(self.backend, run.gfn + i, false) {
                    Ok(g) => grefs.push(g),
                    Err(e) => {
                        err = Some(format!("granting the ring: {e}"));
                        break;
                    }
                }
            }
            let port = if err.is_none() {
                match self.env.alloc_unbound(self.backend) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        err = Some(format!("event channel: {e:?}"));
                        None
                    }
                }
            } else {
                None
            };
            let size = ring.size();
            let q = FQueue {
                index: qi,
                ring,
                ring_pages: run,
                ring_grefs: grefs,
                port: port.unwrap_or(0),
                shadow: (0..size).map(|_| None).collect(),
                free: (0..size).rev().collect(),
                pool: Vec::new(),
                pool_total: 0,
                kick: false,
            };
            qs.push(q);
            if err.is_some() {
                break;
            }
        }
        self.conn = Some(Conn {
            queues: qs,
            order,
            neg: None,
            rr: 0,
            sectors_watch: None,
        });
        if let Some(e) = err {
            self.teardown_rings(true);
            return Err(e);
        }
        // Publish.
        let w = |xs: &mut S, k: &str, v: &str| -> Result<(), String> {
            xs.write_str(&dev.node(k), v)
                .map_err(|e| format!("writing {k}: {e:?}"))
        };
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| String::from("no connection"))?;
        for q in &conn.queues {
            let dir = if queues == 1 {
                String::new()
            } else {
                format!("queue-{}/", q.index)
            };
            if order == 0 {
                let g = q.ring_grefs.first().map_or(0, GrantRef::raw);
                w(xs, &format!("{dir}{}", keys::RING_REF), &format!("{g}"))?;
            } else {
                for (i, g) in q.ring_grefs.iter().enumerate() {
                    w(
                        xs,
                        &format!("{dir}{}{i}", keys::RING_REF),
                        &format!("{}", g.raw()),
                    )?;
                }
            }
            w(
                xs,
                &format!("{dir}{}", keys::EVENT_CHANNEL),
                &format!("{}", q.port),
            )?;
        }
        if queues > 1 {
            w(xs, keys::MULTI_QUEUE_NUM_QUEUES, &format!("{queues}"))?;
        }
        w(xs, keys::RING_PAGE_ORDER, &format!("{order}"))?;
        w(xs, keys::NUM_RING_PAGES, &format!("{pages}"))?;
        w(xs, keys::PROTOCOL, abi.protocol())?;
        w(
            xs,
            keys::FEATURE_PERSISTENT,
            if self.cfg.persistent { "1" } else { "0" },
        )?;
        Ok(())
    }

    /// Backend `Connected`: reads and checks the device properties and features.
    fn connect<S: XenStore + ?Sized>(&mut self, xs: &mut S, dev: &Device) -> Result<(), String> {
        let read = |xs: &mut S, k: &str| -> Result<Option<Vec<u8>>, String> {
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
        let flag = |xs: &mut S, k: &str| -> Result<bool, String> {
            Ok(read(xs, k)?.and_then(|v| parse_bool(&v)).unwrap_or(false))
        };
        let sectors = num(xs, keys::SECTORS)?.ok_or_else(|| String::from("no sectors"))?;
        let info = num(xs, keys::INFO)?.unwrap_or(0);
        let info = VdiskInfo::from_bits_truncate(u32::try_from(info).unwrap_or(0));
        let sector_size = num(xs, keys::SECTOR_SIZE)?.unwrap_or(512);
        let sector_size = u32::try_from(sector_size)
            .ok()
            .filter(|s| s.is_power_of_two() && *s >= 512 && *s <= 65536)
            .ok_or_else(|| format!("bad sector-size {sector_size}"))?;
        let phys = num(xs, keys::PHYSICAL_SECTOR_SIZE)?.unwrap_or(u64::from(sector_size));
        let phys = u32::try_from(phys)
            .ok()
            .filter(|p| p.is_power_of_two() && *p >= sector_size)
            .unwrap_or(sector_size);
        let discard = if flag(xs, keys::FEATURE_DISCARD)? {
            let granularity = num(xs, keys::DISCARD_GRANULARITY)?
                .and_then(|g| u32::try_from(g).ok())
                .unwrap_or(sector_size);
            let alignment = num(xs, keys::DISCARD_ALIGNMENT)?
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(0);
            Some(DiscardInfo {
                granularity,
                alignment,
                secure: flag(xs, keys::DISCARD_SECURE)?,
            })
        } else {
            None
        };
        let disk = DiskInfo {
            sectors,
            sector_size,
            physical_sector_size: phys,
            readonly: info.contains(VdiskInfo::READONLY),
            cdrom: info.contains(VdiskInfo::CDROM) || self.cdrom_type,
            removable: info.contains(VdiskInfo::REMOVABLE),
            flush: flag(xs, keys::FEATURE_FLUSH_CACHE)?,
            barrier: flag(xs, keys::FEATURE_BARRIER)?,
            discard,
        };
        let be_persistent = flag(xs, keys::FEATURE_PERSISTENT)?;
        let be_indirect = num(xs, keys::FEATURE_MAX_INDIRECT_SEGMENTS)?.unwrap_or(0);
        let indirect =
            u32::try_from(be_indirect.min(u64::from(self.cfg.max_indirect_segments))).unwrap_or(0);
        let indirect = if indirect as usize > MAX_DIRECT_SEGMENTS {
            indirect
        } else {
            0
        };
        let watch = xs.watch(&dev.otherend_node(keys::SECTORS)).ok();
        let trusted = self.trusted;
        let Some(conn) = self.conn.as_mut() else {
            return Err(String::from("no rings"));
        };
        let neg = Negotiated {
            abi: self.cfg.abi,
            queues: u32::try_from(conn.queues.len()).unwrap_or(1),
            ring_page_order: conn.order,
            ring_entries: conn.queues.first().map_or(0, |q| q.ring.size()),
            persistent: self.cfg.persistent && be_persistent,
            max_segments: if indirect > 0 {
                indirect
            } else {
                MAX_DIRECT_SEGMENTS_U32
            },
            indirect: indirect > 0,
            trusted,
        };
        conn.neg = Some(neg);
        conn.sectors_watch = watch;
        self.disk = Some(disk);
        self.stats.connections += 1;
        self.events.push_back(FrontEvent::Connected(disk));
        self.log(
            Level::Info,
            format_args!(
                "{}: {} sectors of {} bytes{}{}, {} queue(s) x {} entries, {} segs/request{}{}",
                dev.nodename(),
                sectors,
                sector_size,
                if disk.readonly { ", read-only" } else { "" },
                if disk.cdrom { ", cdrom" } else { "" },
                neg.queues,
                neg.ring_entries,
                neg.max_segments,
                if neg.persistent { ", persistent" } else { "" },
                if trusted { "" } else { ", untrusted (bounce)" },
            ),
        );
        Ok(())
    }
}
