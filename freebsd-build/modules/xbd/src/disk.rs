//! The glue between GEOM's disk(9) and the blkfront core: a bio becomes a [`Bio`], a
//! [`Completion`] becomes `biodone`, the core's events become `disk_create` / `disk_resize`.
//!
//! # Bios and their buffers (the bounce / unmapped policy)
//!
//! The disk is created **without** `DISKFLAG_UNMAPPED_BIO`, so GEOM maps every bio's pages
//! into kernel virtual memory before `d_strategy` sees it: the core's segments are views of
//! pages ([`SharedMem`]) plus their frame numbers, and a mapped buffer gives both (the view
//! from the virtual address, the frame from `vtophys`). Handling unmapped bios would mean
//! mapping their `vm_page_t` array ourselves, for no gain: the backend reaches the pages
//! through grants either way.
//!
//! A buffer whose start or length is not a multiple of 512 bytes cannot be described by
//! blkif segments (`first_sect`/`last_sect` count 512-byte sectors of one page). GEOM hands
//! sector-multiple lengths to disks, but a raw device read through `physio` may start
//! anywhere in a page, so such a bio is **bounced**: the glue takes pages of its own
//! ([`FrontendEnv::alloc_pages`]), copies a write's data in before submitting, and copies a
//! read's data out after the completion, then frees them. An aligned buffer is sent as it is
//! (the core itself bounces again when the backend is not trusted, XSA-403).
//!
//! # Flow control
//!
//! A bio the core refuses with [`BioError::Busy`] (too many accepted) waits in a FIFO here and
//! is resubmitted after completions, in order; every other refusal completes the bio at once
//! with its errno.
//!
//! # Detach
//!
//! [`XbdDisk::detach`] stops accepting bios (later ones complete with `ENXIO`), lets the core
//! fail everything in flight or held for a reconnection (`EIO`), completes the waiting ones
//! (`EIO`), and destroys the disk only once nothing is outstanding: a bio whose pages the
//! backend still maps is held by the core until the grant ends (XSA-396), and detach reports
//! [`Detach::Busy`] until then.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use xen_blkback::proto::{PAGE_SIZE, SECTOR_SIZE};
use xen_blkfront::{
    Bio, BioError, BioOp, BufSeg, DiskInfo, FrontEvent, Frontend, FrontendConfig, FrontendEnv,
    PageRun, PollResult,
};
use xen_shmem::SharedMem;
use xen_xenbus::bus::XenStore;
use xen_xenbus::{Device, Error as XsErr, WatchId, XenbusState};

/// FreeBSD errno values the glue completes bios with (`<sys/errno.h>`).
pub mod errno {
    /// Input/output error.
    pub const EIO: i32 = 5;
    /// Device not configured.
    pub const ENXIO: i32 = 6;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    /// Read-only file system.
    pub const EROFS: i32 = 30;
    /// Operation not supported.
    pub const EOPNOTSUPP: i32 = 45;
}

/// A bio's command, as the C shim translates `bio_cmd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// `BIO_READ`.
    Read,
    /// `BIO_WRITE`.
    Write,
    /// `BIO_FLUSH`.
    Flush,
    /// `BIO_DELETE`.
    Delete,
    /// Anything else (`BIO_GETATTR`, zone commands...): `EOPNOTSUPP`.
    Other,
}

impl Cmd {
    /// From the shim's number (`XENRS_XBD_*` in `xbd_kmod.c`).
    #[must_use]
    pub fn from_c(cmd: i32) -> Cmd {
        match cmd {
            0 => Cmd::Read,
            1 => Cmd::Write,
            2 => Cmd::Flush,
            3 => Cmd::Delete,
            _ => Cmd::Other,
        }
    }
}

/// An opaque `struct bio *`, only ever handed back to [`DiskKpi::biodone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BioHandle(pub usize);

/// What `d_strategy` passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BioRequest {
    /// The bio.
    pub handle: BioHandle,
    /// Its command.
    pub cmd: Cmd,
    /// `BIO_ORDERED`: a write with barrier semantics.
    pub ordered: bool,
    /// `bio_offset`, bytes.
    pub offset: i64,
    /// `bio_length`, bytes.
    pub length: i64,
    /// `bio_data`: kernel virtual address of the mapped buffer (0 for flush/delete).
    pub data: usize,
}

/// Parameters of the GEOM disk (`struct disk` fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskParams {
    /// `d_sectorsize`.
    pub sector_size: u32,
    /// `d_mediasize`, bytes.
    pub media_size: u64,
    /// `d_maxsize`: the largest bio GEOM hands us.
    pub max_io: u32,
    /// `d_stripesize` (the physical sector size when larger than the logical one), or 0.
    pub stripe_size: u32,
    /// `DISKFLAG_CANDELETE`.
    pub can_delete: bool,
    /// `DISKFLAG_CANFLUSHCACHE`.
    pub can_flush: bool,
    /// `DISKFLAG_WRITE_PROTECT`.
    pub read_only: bool,
    /// A CD-ROM (`d_descr` says so).
    pub cdrom: bool,
}

impl DiskParams {
    /// The disk for what the backend reported and the connection negotiated (`max_segments`
    /// segments per request: the core splits larger bios, but a bio that fits one request
    /// is cheaper, and a buffer that starts inside a page needs one segment more than its
    /// length in pages).
    #[must_use]
    pub fn new(info: &DiskInfo, max_segments: u32) -> DiskParams {
        let page = u32::try_from(PAGE_SIZE).unwrap_or(4096);
        let max_io = max_segments
            .saturating_sub(1)
            .max(1)
            .saturating_mul(page)
            .min(MAX_IO);
        DiskParams {
            sector_size: info.sector_size,
            media_size: info.sectors.saturating_mul(SECTOR_SIZE as u64),
            max_io,
            stripe_size: if info.physical_sector_size > info.sector_size {
                info.physical_sector_size
            } else {
                0
            },
            can_delete: info.discard.is_some(),
            can_flush: info.flush || info.barrier,
            read_only: info.readonly || info.cdrom,
            cdrom: info.cdrom,
        }
    }

    /// `d_descr`.
    #[must_use]
    pub fn description(&self) -> &'static core::ffi::CStr {
        if self.cdrom {
            c"Xen PV CD-ROM"
        } else {
            c"Xen PV disk"
        }
    }
}

/// Upper bound of `d_maxsize` (FreeBSD 14's default `maxphys`, 1 MiB).
pub const MAX_IO: u32 = 1 << 20;

/// What the glue needs from FreeBSD's disk layer. The kernel implementation is
/// [`crate::sys::Kernel`]; every method is one shim call.
pub trait DiskKpi<'a> {
    /// A created `struct disk *`.
    type Disk;

    /// `disk_alloc` + `disk_create` of `xbd<unit>`. `None` when the shim could not.
    fn disk_create(&self, unit: u32, params: &DiskParams) -> Option<Self::Disk>;

    /// `disk_resize` to `media_size` bytes; the errno on failure.
    ///
    /// # Errors
    /// The errno of `disk_resize`.
    fn disk_resize(&self, disk: &Self::Disk, media_size: u64) -> Result<(), i32>;

    /// `disk_destroy`: GEOM sends no bio after this returns.
    fn disk_destroy(&self, disk: Self::Disk);

    /// `biodone` with `bio_error` = `error` (0: success) and `bio_resid` = `resid`.
    fn biodone(&self, bio: BioHandle, error: i32, resid: u64);

    /// The page containing kernel virtual address `page_va` (page-aligned) of a bio's
    /// mapped buffer: its frame number and a view of the whole page, valid until the bio
    /// completes.
    fn bio_page(&self, page_va: usize) -> Option<(u64, SharedMem<'a>)>;
}

/// The statistics under `dev.xbd.<unit>` (indices shared with `xbd_kmod.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevStat {
    Bios = 0,
    Completed = 1,
    Errors = 2,
    Bounced = 3,
    Waits = 4,
    Requests = 5,
    Reissued = 6,
    Connections = 7,
    InFlight = 8,
    Sectors = 9,
}

impl DevStat {
    /// Every leaf, by index; the names as in the shim.
    pub const ALL: [(DevStat, &'static str); 10] = [
        (DevStat::Bios, "bios"),
        (DevStat::Completed, "completed"),
        (DevStat::Errors, "errors"),
        (DevStat::Bounced, "bounced"),
        (DevStat::Waits, "waits"),
        (DevStat::Requests, "requests"),
        (DevStat::Reissued, "reissued"),
        (DevStat::Connections, "connections"),
        (DevStat::InFlight, "in_flight"),
        (DevStat::Sectors, "sectors"),
    ];
}

/// Counters of the glue itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlueStats {
    /// Bios seen by `d_strategy`.
    pub bios: u64,
    /// Bios completed (any result).
    pub completed: u64,
    /// Of which with an error.
    pub errors: u64,
    /// Bios bounced.
    pub bounced: u64,
    /// Times a bio had to wait for the core's queue.
    pub waits: u64,
}

/// The outcome of [`XbdDisk::detach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    /// Nothing outstanding; the disk is destroyed (or never existed).
    Done,
    /// Bios are still held (their pages are mapped by the backend); call again later (from
    /// the platform's timer, after [`XbdDisk::retry_held`]).
    Busy {
        /// Bios not yet completed.
        outstanding: usize,
    },
}

#[derive(Debug)]
struct InFlight<'a> {
    req: BioRequest,
    bounce: Vec<PageRun<'a>>,
}

/// One `xbd<unit>`: the blkfront core, the GEOM disk, and the bios between them.
pub struct XbdDisk<'a, E: FrontendEnv<'a>, K: DiskKpi<'a>> {
    fe: Frontend<'a, E>,
    kpi: K,
    unit: u32,
    disk: Option<K::Disk>,
    params: Option<DiskParams>,
    inflight: BTreeMap<u64, InFlight<'a>>,
    waiting: VecDeque<BioRequest>,
    next_tag: u64,
    detaching: bool,
    stats: GlueStats,
}

impl<'a, E: FrontendEnv<'a>, K: DiskKpi<'a>> core::fmt::Debug for XbdDisk<'a, E, K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XbdDisk")
            .field("unit", &self.unit)
            .field("params", &self.params)
            .field("inflight", &self.inflight.len())
            .field("waiting", &self.waiting.len())
            .field("detaching", &self.detaching)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The errno a failed bio completes with.
#[must_use]
pub fn bio_errno(e: BioError) -> i32 {
    match e {
        // A device that failed or went away (the reconnection failed, or it was detached):
        // the data did not reach the disk.
        BioError::Io | BioError::OutOfRange | BioError::Failed | BioError::Busy => errno::EIO,
        BioError::NotSupported => errno::EOPNOTSUPP,
        BioError::ReadOnly => errno::EROFS,
        BioError::Invalid => errno::EINVAL,
    }
}

fn sector_aligned(x: usize) -> bool {
    x % SECTOR_SIZE == 0
}

impl<'a, E: FrontendEnv<'a>, K: DiskKpi<'a>> XbdDisk<'a, E, K> {
    /// A disk `xbd<unit>` whose core runs on `env` with `cfg`.
    pub fn new(env: E, cfg: FrontendConfig, kpi: K, unit: u32) -> Self {
        XbdDisk {
            fe: Frontend::new(env, cfg),
            kpi,
            unit,
            disk: None,
            params: None,
            inflight: BTreeMap::new(),
            waiting: VecDeque::new(),
            next_tag: 1,
            detaching: false,
            stats: GlueStats::default(),
        }
    }

    /// The core.
    pub fn frontend(&self) -> &Frontend<'a, E> {
        &self.fe
    }

    /// The GEOM disk's parameters, once created.
    pub fn params(&self) -> Option<DiskParams> {
        self.params
    }

    /// Whether the GEOM disk exists.
    pub fn has_disk(&self) -> bool {
        self.disk.is_some()
    }

    /// The glue's counters.
    pub fn stats(&self) -> GlueStats {
        self.stats
    }

    /// Bios accepted from GEOM and not completed (in the core, or waiting here).
    pub fn outstanding(&self) -> usize {
        self.inflight.len() + self.waiting.len()
    }

    /// Leaf `which` of `dev.xbd.<unit>`.
    pub fn stat(&self, which: u32) -> Option<u64> {
        let core = self.fe.stats();
        let (stat, _) = DevStat::ALL.get(usize::try_from(which).ok()?)?;
        Some(match stat {
            DevStat::Bios => self.stats.bios,
            DevStat::Completed => self.stats.completed,
            DevStat::Errors => self.stats.errors,
            DevStat::Bounced => self.stats.bounced,
            DevStat::Waits => self.stats.waits,
            DevStat::Requests => core.requests,
            DevStat::Reissued => core.reissued,
            DevStat::Connections => core.connections,
            DevStat::InFlight => self.outstanding() as u64,
            DevStat::Sectors => self.fe.disk().map_or(0, |d| d.sectors),
        })
    }

    // ------------------------------------------------------------------ data path

    /// `d_strategy`: takes the bio; it completes through [`DiskKpi::biodone`] exactly once,
    /// now (refused) or later.
    pub fn strategy(&mut self, req: BioRequest) {
        self.stats.bios += 1;
        if self.detaching {
            self.finish(req, errno::ENXIO);
            return;
        }
        if !self.waiting.is_empty() {
            // Keep the order: nothing overtakes a waiting bio.
            self.stats.waits += 1;
            self.waiting.push_back(req);
            return;
        }
        self.start(req);
    }

    /// Builds and submits the core bio; `false` when it had to wait (queued at the back).
    fn start(&mut self, req: BioRequest) -> bool {
        let tag = self.next_tag;
        let (bio, bounce) = match self.build(&req, tag) {
            Ok(x) => x,
            Err(error) => {
                self.finish(req, error);
                return true;
            }
        };
        match self.fe.submit(bio) {
            Ok(()) => {
                self.next_tag += 1;
                if !bounce.is_empty() {
                    self.stats.bounced += 1;
                }
                self.inflight.insert(tag, InFlight { req, bounce });
                true
            }
            Err((_, e)) => {
                self.free_bounce(bounce);
                if e == BioError::Busy {
                    self.stats.waits += 1;
                    self.waiting.push_back(req);
                    false
                } else {
                    self.finish(req, bio_errno(e));
                    true
                }
            }
        }
    }

    fn build(&mut self, req: &BioRequest, tag: u64) -> Result<(Bio<'a>, Vec<PageRun<'a>>), i32> {
        let offset = usize::try_from(req.offset).map_err(|_| errno::EINVAL)?;
        let length = usize::try_from(req.length).map_err(|_| errno::EINVAL)?;
        if !sector_aligned(offset) || !sector_aligned(length) {
            return Err(errno::EINVAL);
        }
        let sector = (offset / SECTOR_SIZE) as u64;
        match req.cmd {
            Cmd::Other => Err(errno::EOPNOTSUPP),
            Cmd::Flush => Ok((Bio::flush(tag), Vec::new())),
            Cmd::Delete => Ok((
                Bio::discard(sector, (length / SECTOR_SIZE) as u64, false, tag),
                Vec::new(),
            )),
            Cmd::Read | Cmd::Write => {
                if length == 0 {
                    return Err(errno::EINVAL);
                }
                let op = match (req.cmd, req.ordered) {
                    (Cmd::Read, _) => BioOp::Read,
                    (_, true) => BioOp::Barrier,
                    (_, false) => BioOp::Write,
                };
                if sector_aligned(req.data) {
                    let segs = self.direct_segments(req.data, length)?;
                    Ok((Bio::new(op, sector, segs, tag), Vec::new()))
                } else {
                    let (segs, pages) = self.bounce_segments(req, length)?;
                    Ok((Bio::new(op, sector, segs, tag), pages))
                }
            }
        }
    }

    /// Segments over the bio's own pages, split at page boundaries.
    fn direct_segments(&self, data: usize, length: usize) -> Result<Vec<BufSeg<'a>>, i32> {
        let mut segs = Vec::new();
        let mut va = data;
        let end = data.checked_add(length).ok_or(errno::EINVAL)?;
        while va < end {
            let page_va = va & !(PAGE_SIZE - 1);
            let in_page = va - page_va;
            let len = (PAGE_SIZE - in_page).min(end - va);
            let (gfn, page) = self.kpi.bio_page(page_va).ok_or(errno::EIO)?;
            segs.push(BufSeg {
                gfn,
                page,
                offset: u16::try_from(in_page).map_err(|_| errno::EINVAL)?,
                len: u16::try_from(len).map_err(|_| errno::EINVAL)?,
            });
            va += len;
        }
        Ok(segs)
    }

    /// Pages of ours for an unaligned buffer; a write's data is copied in.
    fn bounce_segments(
        &mut self,
        req: &BioRequest,
        length: usize,
    ) -> Result<(Vec<BufSeg<'a>>, Vec<PageRun<'a>>), i32> {
        let count = length.div_ceil(PAGE_SIZE);
        let mut pages = Vec::with_capacity(count);
        for _ in 0..count {
            match self.fe.env().alloc_pages(1) {
                Some(run) => pages.push(run),
                None => {
                    self.free_bounce(pages);
                    return Err(errno::EIO);
                }
            }
        }
        if req.cmd == Cmd::Write && self.copy_buffer(req, &pages, true).is_err() {
            self.free_bounce(pages);
            return Err(errno::EIO);
        }
        let mut segs = Vec::with_capacity(count);
        for (i, run) in pages.iter().enumerate() {
            let len = (length - i * PAGE_SIZE).min(PAGE_SIZE);
            segs.push(BufSeg {
                gfn: run.gfn,
                page: run.mem,
                offset: 0,
                len: u16::try_from(len).map_err(|_| errno::EINVAL)?,
            });
        }
        Ok((segs, pages))
    }

    /// Copies between the bio's buffer (any alignment) and the bounce pages:
    /// `to_bounce` for a write before submission, else a read's data back.
    fn copy_buffer(
        &self,
        req: &BioRequest,
        pages: &[PageRun<'a>],
        to_bounce: bool,
    ) -> Result<(), ()> {
        let length = usize::try_from(req.length).map_err(|_| ())?;
        let mut chunk = [0u8; 512];
        let mut done = 0;
        while done < length {
            let va = req.data.checked_add(done).ok_or(())?;
            let page_va = va & !(PAGE_SIZE - 1);
            let in_page = va - page_va;
            // Never cross a page of either side in one step.
            let n = chunk
                .len()
                .min(PAGE_SIZE - in_page)
                .min(PAGE_SIZE - done % PAGE_SIZE)
                .min(length - done);
            let (_, buf_page) = self.kpi.bio_page(page_va).ok_or(())?;
            let bounce = pages.get(done / PAGE_SIZE).ok_or(())?;
            let b = chunk.get_mut(..n).ok_or(())?;
            if to_bounce {
                buf_page.copy_to_slice(in_page, b).map_err(|_| ())?;
                bounce
                    .mem
                    .copy_from_slice(done % PAGE_SIZE, b)
                    .map_err(|_| ())?;
            } else {
                bounce
                    .mem
                    .copy_to_slice(done % PAGE_SIZE, b)
                    .map_err(|_| ())?;
                buf_page.copy_from_slice(in_page, b).map_err(|_| ())?;
            }
            done += n;
        }
        Ok(())
    }

    fn free_bounce(&self, pages: Vec<PageRun<'a>>) {
        for run in pages {
            self.fe.env().free_pages(run);
        }
    }

    fn finish(&mut self, req: BioRequest, error: i32) {
        self.stats.completed += 1;
        let resid = if error == 0 {
            0
        } else {
            self.stats.errors += 1;
            u64::try_from(req.length).unwrap_or(0)
        };
        self.kpi.biodone(req.handle, error, resid);
    }

    /// The event channel fired (or the platform's timer): handles responses, completes bios,
    /// applies the core's events. `more`: call again soon; `control`: call
    /// [`XbdDisk::service_control`] from the xenbus context.
    pub fn poll(&mut self) -> PollResult {
        let r = self.fe.poll();
        self.process();
        r
    }

    /// The platform's timer while grants on bios' pages are held (see
    /// [`Frontend::held_grants`]).
    pub fn retry_held(&mut self) -> usize {
        let n = self.fe.retry_held();
        self.process();
        n
    }

    /// Completions, then events, then waiting bios.
    fn process(&mut self) {
        while let Some(c) = self.fe.pop_completion() {
            let Some(done) = self.inflight.remove(&c.bio.tag) else {
                // The core only completes what it accepted, with our tag.
                continue;
            };
            let mut error = match c.result {
                Ok(()) => 0,
                Err(e) => bio_errno(e),
            };
            if error == 0
                && done.req.cmd == Cmd::Read
                && !done.bounce.is_empty()
                && self.copy_buffer(&done.req, &done.bounce, false).is_err()
            {
                error = errno::EIO;
            }
            self.free_bounce(done.bounce);
            self.finish(done.req, error);
        }
        while let Some(ev) = self.fe.pop_event() {
            self.on_event(ev);
        }
        // Bounded: each bio is tried once per call; one that has to wait again stops the run.
        for _ in 0..self.waiting.len() {
            let Some(req) = self.waiting.pop_front() else {
                break;
            };
            if self.detaching {
                self.finish(req, errno::EIO);
                continue;
            }
            if !self.start(req) {
                // `start` queued it at the back; put it back in front to keep the order.
                if let Some(req) = self.waiting.pop_back() {
                    self.waiting.push_front(req);
                }
                break;
            }
        }
    }

    fn on_event(&mut self, ev: FrontEvent) {
        match ev {
            FrontEvent::Connected(info) => {
                let segs = self.fe.negotiated().map_or(11, |n| n.max_segments);
                let params = DiskParams::new(&info, segs);
                if self.disk.is_none() {
                    if !self.detaching {
                        self.disk = self.kpi.disk_create(self.unit, &params);
                        if self.disk.is_some() {
                            self.params = Some(params);
                        }
                    }
                } else {
                    // A reconnection: the disk stays; only its size may have changed.
                    self.resize(params.media_size);
                }
            }
            FrontEvent::Resized { sectors } => {
                self.resize(sectors.saturating_mul(SECTOR_SIZE as u64));
            }
            // Bios stay with the core for re-issue; a failure fails them through
            // completions.
            FrontEvent::Disconnected | FrontEvent::Failed => {}
        }
    }

    fn resize(&mut self, media_size: u64) {
        let (Some(disk), Some(old)) = (&self.disk, self.params) else {
            return;
        };
        if old.media_size != media_size && self.kpi.disk_resize(disk, media_size).is_ok() {
            self.params = Some(DiskParams { media_size, ..old });
        }
    }

    // ------------------------------------------------------------------ control path

    /// xenbus probe.
    ///
    /// # Errors
    /// Store errors.
    pub fn probe<S: XenStore + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
    ) -> Result<(), XsErr> {
        self.fe.probe(xs, dev)
    }

    /// The backend's state changed.
    ///
    /// # Errors
    /// Store errors.
    pub fn otherend_changed<S: XenStore + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        let r = self.fe.otherend_changed(xs, dev, state);
        self.process();
        r
    }

    /// A watch event the bus did not claim (the backend's `sectors`: online resize).
    ///
    /// # Errors
    /// Store errors.
    pub fn on_watch<S: XenStore + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
        id: WatchId,
    ) -> Result<bool, XsErr> {
        let r = self.fe.on_watch(xs, dev, id);
        self.process();
        r
    }

    /// Reports a core failure to the store (after [`XbdDisk::poll`] asked for control work).
    ///
    /// # Errors
    /// Store errors.
    pub fn service_control<S: XenStore + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
    ) -> Result<(), XsErr> {
        let r = self.fe.service_control(xs, dev);
        self.process();
        r
    }

    /// The device directory is gone (or the driver is being detached): see the module docs.
    pub fn detach<S: XenStore + ?Sized>(&mut self, xs: &mut S, dev: &mut Device) -> Detach {
        if !self.detaching {
            self.detaching = true;
            self.fe.remove(xs, dev);
        }
        self.fe.retry_held();
        self.process();
        let outstanding = self.outstanding();
        if outstanding > 0 {
            return Detach::Busy { outstanding };
        }
        if let Some(disk) = self.disk.take() {
            self.kpi.disk_destroy(disk);
        }
        Detach::Done
    }
}
