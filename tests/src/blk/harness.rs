//! Two simulated domains wired up the way `xl block-attach` does it: a backend (dom0) with a
//! file-backed disk image, a frontend guest, the simulated xenstored between them, a xenbus
//! [`Bus`] per domain with the real drivers registered, and a driving loop that services a
//! driver only when its event channel is pending (as an upcall would) or when it asked to be
//! polled again.
//!
//! [`World::io`] submits bios over fresh guest pages and records them; [`Model`] is the
//! expected disk content, updated when a write is *acknowledged*, so every completed read is
//! checked against exactly what the frontend was told is on disk.
#![expect(
    clippy::cast_possible_truncation,
    reason = "host-only test code: sector and page arithmetic in a 64-bit usize"
)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use xen_blkback::{Backend, BackendConfig, StoreInfo};
use xen_blkfront::{
    Bio, BioError, BioOp, BufSeg, Completion, FrontEvent, Frontend, FrontendConfig,
};
use xen_xenbus::{Access, Bus, Device, Perm, Role, XenbusState};

use super::drivers::{BackDriver, FrontDriver};
use super::file_store::{temp_image, FileStore, Mode};
use super::sim::{leak, take_pending, Log, SimBackEnv, SimFrontEnv};
use crate::xensim::xenstored::{SimTransport, XenstoreSim};
use crate::xensim::{DomainConfig, DomainHandle, Rng, SimConfig, SimHypervisor};

/// The xenstore connection type of the simulated domains.
pub type Xs = xen_xenbus::Xs<SimTransport>;
/// The backend under test.
pub type Back = Backend<'static, SimBackEnv, FileStore>;
/// The frontend under test.
pub type Front = Frontend<'static, SimFrontEnv>;

/// The frontend domain's id.
pub const FE: u16 = 1;
/// The virtual device id (`xvda`-style 51712 is also common; 768 is `hda`).
pub const VDEV: u32 = 768;

/// The backend's device directory.
#[must_use]
pub fn be_dir() -> String {
    format!("/local/domain/0/backend/vbd/{FE}/{VDEV}")
}

/// The frontend's device directory.
#[must_use]
pub fn fe_dir() -> String {
    format!("/local/domain/{FE}/device/vbd/{VDEV}")
}

/// How to build a [`World`].
#[derive(Debug, Clone)]
pub struct Setup {
    /// Seed of the simulator and of the test's random choices.
    pub seed: u64,
    /// Disk size in 512-byte sectors.
    pub sectors: u64,
    /// The backend's tunables.
    pub back: BackendConfig,
    /// The frontend's tunables.
    pub front: FrontendConfig,
    /// Store completion discipline.
    pub mode: Mode,
    /// The toolstack's `trusted` for the frontend.
    pub trusted: bool,
    /// `mode` = `r`.
    pub readonly: bool,
    /// `device-type` = `cdrom`.
    pub cdrom: bool,
    /// `removable` = 1.
    pub removable: bool,
    /// Frontend RAM pages.
    pub front_pages: u32,
    /// Backend RAM pages.
    pub back_pages: u32,
    /// Store properties other than the size (sector sizes, flush, discard), if not the
    /// file store's defaults.
    pub store_info: Option<StoreInfo>,
    /// The toolstack's `discard-enable`.
    pub discard_enable: bool,
}

impl Setup {
    /// Defaults: 8 MiB disk, both drivers with their default (full) features.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Setup {
            seed,
            sectors: 16384,
            back: BackendConfig::default(),
            front: FrontendConfig::default(),
            mode: Mode::InOrder,
            trusted: true,
            readonly: false,
            cdrom: false,
            removable: false,
            front_pages: 1536,
            back_pages: 768,
            store_info: None,
            discard_enable: true,
        }
    }
}

/// What a submitted bio was, for checking its completion.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The operation.
    pub op: BioOp,
    /// First sector.
    pub sector: u64,
    /// The data written (writes), or nothing.
    pub data: Vec<u8>,
    /// Sectors covered.
    pub sectors: u64,
}

/// The expected disk content: what acknowledged writes and discards left.
#[derive(Debug, Clone)]
pub struct Model {
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl Model {
    /// Applies an acknowledged write.
    pub fn write(&mut self, sector: u64, data: &[u8]) {
        let at = (sector * 512) as usize;
        if let Some(d) = self.bytes.get_mut(at..at + data.len()) {
            d.copy_from_slice(data);
        }
    }

    /// Applies an acknowledged discard (reads back as zeroes with the test stores).
    pub fn discard(&mut self, sector: u64, sectors: u64) {
        let at = (sector * 512) as usize;
        let end = at + (sectors * 512) as usize;
        if let Some(d) = self.bytes.get_mut(at..end) {
            d.fill(0);
        }
    }

    /// The expected bytes of a range.
    #[must_use]
    pub fn range(&self, sector: u64, sectors: u64) -> &[u8] {
        let at = (sector * 512) as usize;
        let end = at + (sectors * 512) as usize;
        self.bytes.get(at..end).unwrap_or(&[])
    }

    /// Grows or shrinks with the disk.
    pub fn resize(&mut self, sectors: u64) {
        self.bytes.resize((sectors * 512) as usize, 0);
    }
}

/// Counters of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Bios completed OK.
    pub ok: u64,
    /// Bios completed with an error.
    pub failed: u64,
    /// Reads verified against the model.
    pub verified_reads: u64,
    /// Driving-loop iterations.
    pub steps: u64,
}

/// The whole simulated system (see the module docs).
pub struct World {
    /// The simulator.
    pub sim: SimHypervisor,
    /// The simulated xenstored.
    pub xs: XenstoreSim,
    /// The backend domain (dom0).
    pub back_dom: &'static DomainHandle,
    /// The frontend domain.
    pub front_dom: &'static DomainHandle,
    /// The backend's xenstore connection.
    pub be_xs: Xs,
    /// The frontend's xenstore connection.
    pub fe_xs: Xs,
    /// The backend's bus.
    pub be_bus: Bus<Xs>,
    /// The frontend's bus.
    pub fe_bus: Bus<Xs>,
    /// The backend driver.
    pub backend: Rc<RefCell<Back>>,
    /// The frontend driver.
    pub frontend: Rc<RefCell<Front>>,
    store_slot: Rc<RefCell<Option<FileStore>>>,
    /// Both drivers' logs.
    pub log: Log,
    /// The test's random choices.
    pub rng: Rng,
    /// Bios in flight, by tag.
    pub issued: BTreeMap<u64, (Issued, Vec<u64>)>,
    /// Expected disk content.
    pub model: Model,
    /// Run counters.
    pub stats: RunStats,
    /// Completions seen, in order (tag, result).
    pub results: Vec<(u64, Result<(), BioError>)>,
    /// Frontend events seen.
    pub events: Vec<FrontEvent>,
    /// Check completed reads against the model.
    pub verify: bool,
    /// Advance the simulator's clock one tick per step (delivers delayed events).
    pub tick_clock: bool,
    /// Leave deferred store I/O queued (a slow disk).
    pub store_paused: bool,
    next_tag: u64,
    be_more: bool,
    fe_more: bool,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("states", &self.states())
            .field("backend", &self.backend.borrow())
            .field("frontend", &self.frontend.borrow())
            .field("in_flight", &self.issued.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl World {
    /// Builds the system and runs it until both ends are connected (or settled).
    ///
    /// # Panics
    /// On a broken test set-up (simulator or file system refusing).
    #[must_use]
    pub fn new(setup: &Setup) -> World {
        let sim = SimHypervisor::new(SimConfig {
            seed: setup.seed,
            machine_pages: (setup.front_pages + setup.back_pages) as usize + 512,
            maptrack_limit: 16384,
            ..SimConfig::default()
        });
        let back_dom = leak(
            sim.create_domain(DomainConfig {
                ram_pages: setup.back_pages,
                ..DomainConfig::dom0()
            })
            .expect("dom0"),
        );
        let front_dom = leak(
            sim.create_domain(DomainConfig {
                domid: Some(FE),
                ram_pages: setup.front_pages,
                ..DomainConfig::guest()
            })
            .expect("guest"),
        );
        let log = Log::default();
        let mut store =
            FileStore::create(&temp_image("e2e"), setup.sectors, setup.mode).expect("disk image");
        if let Some(info) = setup.store_info {
            store.set_info(info);
        }
        let xs = XenstoreSim::new();
        let mut be_xs = xs.client(0);
        let mut fe_xs = xs.client(FE);
        toolstack_attach(&xs, setup);
        let backend = Rc::new(RefCell::new(Backend::new(
            SimBackEnv::new(back_dom, log.clone()),
            setup.back,
        )));
        let frontend = Rc::new(RefCell::new(Frontend::new(
            SimFrontEnv::new(front_dom, log.clone()),
            setup.front,
        )));
        let store_slot = Rc::new(RefCell::new(Some(store)));
        let mut be_bus = Bus::new(Role::Backend, 0);
        be_bus.register(Box::new(BackDriver {
            be: backend.clone(),
            store: store_slot.clone(),
        }));
        let mut fe_bus = Bus::new(Role::Frontend, FE);
        fe_bus.register(Box::new(FrontDriver {
            fe: frontend.clone(),
        }));
        be_bus.start(&mut be_xs).expect("backend bus");
        fe_bus.start(&mut fe_xs).expect("frontend bus");
        let mut w = World {
            sim,
            xs,
            back_dom,
            front_dom,
            be_xs,
            fe_xs,
            be_bus,
            fe_bus,
            backend,
            frontend,
            store_slot,
            log,
            rng: Rng::new(setup.seed ^ 0x5eed),
            issued: BTreeMap::new(),
            model: Model {
                bytes: vec![0; (setup.sectors * 512) as usize],
            },
            stats: RunStats::default(),
            results: Vec::new(),
            events: Vec::new(),
            verify: true,
            tick_clock: false,
            store_paused: false,
            next_tag: 1,
            be_more: false,
            fe_more: false,
        };
        w.run_until_idle(2000);
        w
    }

    /// xenbus states (frontend, backend).
    #[must_use]
    pub fn states(&self) -> (XenbusState, XenbusState) {
        (
            self.fe_bus
                .device(&fe_dir())
                .map_or(XenbusState::Unknown, Device::state),
            self.be_bus
                .device(&be_dir())
                .map_or(XenbusState::Unknown, Device::state),
        )
    }

    /// A node's value in the store.
    #[must_use]
    pub fn node(&self, path: &str) -> Option<String> {
        self.xs
            .daemon()
            .value(path)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Whether both ends are connected.
    #[must_use]
    pub fn connected(&self) -> bool {
        self.states() == (XenbusState::Connected, XenbusState::Connected)
            && self.frontend.borrow().is_connected()
    }

    fn pump_xenstore(&mut self) -> bool {
        let mut any = false;
        self.xs.settle();
        for _ in 0..64 {
            let mut n = 0;
            while let Ok(Some((id, ev))) = self.be_xs.poll_event() {
                n += 1;
                self.be_bus.handle_event(&mut self.be_xs, id, &ev);
            }
            while let Ok(Some((id, ev))) = self.fe_xs.poll_event() {
                n += 1;
                if !self.fe_bus.handle_event(&mut self.fe_xs, id, &ev) {
                    let fe = self.frontend.clone();
                    let _ = self
                        .fe_bus
                        .with_device(&mut self.fe_xs, &fe_dir(), |_, xs, dev| {
                            fe.borrow_mut().on_watch(xs, dev, id)
                        });
                }
            }
            self.xs.settle();
            if n == 0 {
                break;
            }
            any = true;
        }
        any
    }

    fn backend_ports_pending(&self) -> bool {
        let ports = self.backend.borrow().ports();
        let mut any = false;
        for p in ports {
            any |= take_pending(self.back_dom, p);
        }
        any
    }

    fn frontend_ports_pending(&self) -> bool {
        let ports = self.frontend.borrow().ports();
        let mut any = false;
        for p in ports {
            any |= take_pending(self.front_dom, p);
        }
        any
    }

    /// One round of the driving loop; whether anything happened.
    pub fn step(&mut self) -> bool {
        self.stats.steps += 1;
        let mut any = self.pump_xenstore();
        if self.tick_clock {
            any |= self.sim.advance(1) > 0 || self.sim.queued_events() > 0;
        }
        // Backend: on its events, store completions, or its own request to be polled again.
        let store_ready = self
            .backend
            .borrow()
            .store()
            .is_some_and(|s| s.completions_ready() > 0);
        if self.backend_ports_pending() || store_ready || self.be_more {
            let r = self.backend.borrow_mut().poll();
            self.be_more = r.more;
            any = true;
            if r.control {
                let be = self.backend.clone();
                let _ = self
                    .be_bus
                    .with_device(&mut self.be_xs, &be_dir(), |_, xs, dev| {
                        be.borrow_mut().service_control(xs, dev)
                    });
            }
        }
        if self.backend.borrow().control_pending() {
            let be = self.backend.clone();
            let _ = self
                .be_bus
                .with_device(&mut self.be_xs, &be_dir(), |_, xs, dev| {
                    be.borrow_mut().service_control(xs, dev)
                });
            any = true;
        }
        // Deferred store I/O runs a few at a time, in random order.
        let queued = self.backend.borrow().store().map_or(0, FileStore::queued);
        if queued > 0 && !self.store_paused {
            let n = 1 + self.rng.index(queued);
            let mut be = self.backend.borrow_mut();
            if let Some(s) = be.store_mut() {
                s.run(&mut self.rng, n);
            }
            any = true;
        }
        // Frontend.
        if self.frontend_ports_pending() || self.fe_more {
            let r = self.frontend.borrow_mut().poll();
            self.fe_more = r.more;
            any = true;
            if r.control {
                let fe = self.frontend.clone();
                let _ = self
                    .fe_bus
                    .with_device(&mut self.fe_xs, &fe_dir(), |_, xs, dev| {
                        fe.borrow_mut().service_control(xs, dev)
                    });
            }
        }
        // The platform's timers: deferred revocations, and grants held on bios' pages.
        any |= self.frontend.borrow_mut().retry_held() > 0;
        any |= self.collect();
        let d = self.frontend.borrow().env().poll_deferred();
        any |= d.completed > 0;
        any
    }

    /// Random reads and writes (and a flush every `flush_every` bios, 0 for none), `depth`
    /// in flight, each of 1..=`max_segs` segments with random `first_sect..=last_sect`, at
    /// random sectors; in-flight bios never overlap, so every read has one right answer.
    /// Runs until all completed and checks every one succeeded.
    ///
    /// # Panics
    /// On a failed bio, a stall (bios in flight and nothing moving), or a read mismatch.
    pub fn random_io(&mut self, ops: usize, max_segs: usize, depth: usize, flush_every: usize) {
        let sectors = (self.model.bytes.len() / 512) as u64;
        let mut submitted = 0;
        let mut idle = 0;
        while submitted < ops || !self.issued.is_empty() {
            while submitted < ops && self.issued.len() < depth {
                let nseg = 1 + self.rng.index(max_segs);
                let segs: Vec<(u8, u8)> = (0..nseg)
                    .map(|_| {
                        let f = self.rng.below(8) as u8;
                        let l = f + self.rng.below(u64::from(8 - f)) as u8;
                        (f, l)
                    })
                    .collect();
                let total: u64 = segs.iter().map(|&(f, l)| u64::from(l - f + 1)).sum();
                let sector = self.rng.below(sectors - total);
                let busy = self.issued.values().any(|(i, _)| {
                    i.sectors > 0 && sector < i.sector + i.sectors && i.sector < sector + total
                });
                if busy {
                    continue;
                }
                let op = if self.rng.below(2) == 0 {
                    BioOp::Write
                } else {
                    BioOp::Read
                };
                let r = self.io(op, sector, &segs);
                assert!(r.is_ok(), "submit refused: {r:?}\n{self:?}");
                submitted += 1;
                if flush_every > 0 && submitted % flush_every == 0 {
                    let r = self.flush();
                    assert!(r.is_ok(), "flush refused: {r:?}");
                }
            }
            if self.step() {
                idle = 0;
            } else {
                idle += 1;
                assert!(
                    idle < 50,
                    "stalled with {} bios in flight\n{self:?}\n{:#?}",
                    self.issued.len(),
                    self.log.lines()
                );
            }
        }
        self.run_until_idle(1000);
        assert_eq!(
            self.stats.failed,
            0,
            "failed bios: {:?}\n{:#?}",
            self.results
                .iter()
                .filter(|r| r.1.is_err())
                .collect::<Vec<_>>(),
            self.log.lines()
        );
    }

    /// Steps until nothing happens (or `max` steps); returns the steps taken.
    pub fn run_until_idle(&mut self, max: usize) -> usize {
        let mut idle = 0;
        for i in 0..max {
            if self.step() {
                idle = 0;
            } else {
                idle += 1;
                if idle >= 3 {
                    return i;
                }
            }
        }
        max
    }

    /// Takes completions and events from the frontend, checks them, and frees their pages.
    fn collect(&mut self) -> bool {
        let mut any = false;
        loop {
            let c = self.frontend.borrow_mut().pop_completion();
            let Some(c) = c else { break };
            any = true;
            self.complete(c);
        }
        loop {
            let e = self.frontend.borrow_mut().pop_event();
            let Some(e) = e else { break };
            self.events.push(e);
        }
        any
    }

    fn complete(&mut self, c: Completion<'static>) {
        let tag = c.bio.tag;
        self.results.push((tag, c.result));
        let Some((issued, pages)) = self.issued.remove(&tag) else {
            panic!("completion for a bio never submitted (tag {tag})");
        };
        match c.result {
            Ok(()) => {
                self.stats.ok += 1;
                match issued.op {
                    BioOp::Write | BioOp::Barrier => self.model.write(issued.sector, &issued.data),
                    BioOp::Discard { .. } => self.model.discard(issued.sector, issued.sectors),
                    BioOp::Read => {
                        if self.verify {
                            let mut got = Vec::new();
                            for s in &c.bio.segs {
                                let mut b = vec![0u8; usize::from(s.len)];
                                s.page
                                    .copy_to_slice(usize::from(s.offset), &mut b)
                                    .expect("read back");
                                got.extend_from_slice(&b);
                            }
                            let want = self.model.range(issued.sector, issued.sectors);
                            assert!(
                                got == want,
                                "read of {} sectors at {} does not match the acknowledged writes",
                                issued.sectors,
                                issued.sector
                            );
                            self.stats.verified_reads += 1;
                        }
                    }
                    BioOp::Flush => {}
                }
            }
            Err(_) => self.stats.failed += 1,
        }
        for g in pages {
            self.front_dom.free_page(g);
        }
    }

    /// Submits a bio of `op` at `sector` over `segs` segments `(first_sect, last_sect)` each
    /// on a fresh page; writes carry seeded random data. Returns the tag, or the refusal.
    ///
    /// # Panics
    /// If the frontend domain runs out of pages.
    pub fn io(&mut self, op: BioOp, sector: u64, segs: &[(u8, u8)]) -> Result<u64, BioError> {
        let tag = self.next_tag;
        self.next_tag += 1;
        let mut bufs = Vec::new();
        let mut pages = Vec::new();
        let mut data = Vec::new();
        for &(f, l) in segs {
            let gfn = self.front_dom.alloc_page().expect("frontend page");
            pages.push(gfn);
            let page = self.front_dom.page(gfn).expect("page view");
            let offset = u16::from(f) * 512;
            let len = (u16::from(l) - u16::from(f) + 1) * 512;
            if matches!(op, BioOp::Write | BioOp::Barrier) {
                let mut b = vec![0u8; usize::from(len)];
                for x in b.chunks_mut(8) {
                    let v = self.rng.next_u64().to_le_bytes();
                    let n = x.len();
                    x.copy_from_slice(&v[..n]);
                }
                page.copy_from_slice(usize::from(offset), &b).expect("fill");
                data.extend_from_slice(&b);
            } else {
                // Poison, so a read that transfers nothing is caught.
                page.fill(0, 4096, 0xee).expect("poison");
            }
            bufs.push(BufSeg {
                gfn,
                page,
                offset,
                len,
            });
        }
        let bio = Bio::new(op, sector, bufs, tag);
        let sectors = bio.len_sectors();
        self.submit(
            bio,
            Issued {
                op,
                sector,
                data,
                sectors,
            },
            pages,
        )
    }

    /// Submits a flush.
    ///
    /// # Errors
    /// The frontend's refusal.
    pub fn flush(&mut self) -> Result<u64, BioError> {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.submit(
            Bio::flush(tag),
            Issued {
                op: BioOp::Flush,
                sector: 0,
                data: Vec::new(),
                sectors: 0,
            },
            Vec::new(),
        )
    }

    /// Submits a discard.
    ///
    /// # Errors
    /// The frontend's refusal.
    pub fn discard(&mut self, sector: u64, sectors: u64, secure: bool) -> Result<u64, BioError> {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.submit(
            Bio::discard(sector, sectors, secure, tag),
            Issued {
                op: BioOp::Discard { secure },
                sector,
                data: Vec::new(),
                sectors,
            },
            Vec::new(),
        )
    }

    fn submit(
        &mut self,
        bio: Bio<'static>,
        issued: Issued,
        pages: Vec<u64>,
    ) -> Result<u64, BioError> {
        let tag = bio.tag;
        let r = self.frontend.borrow_mut().submit(bio);
        match r {
            Ok(()) => {
                self.issued.insert(tag, (issued, pages));
                Ok(tag)
            }
            Err((_, e)) => {
                for g in pages {
                    self.front_dom.free_page(g);
                }
                Err(e)
            }
        }
    }

    /// The result of bio `tag`, once completed.
    #[must_use]
    pub fn result(&self, tag: u64) -> Option<Result<(), BioError>> {
        self.results
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, r)| *r)
    }

    /// Reads the disk image directly.
    ///
    /// # Panics
    /// If the image cannot be read.
    #[must_use]
    pub fn image(&self, sector: u64, sectors: u64) -> Vec<u8> {
        let mut b = vec![0u8; (sectors * 512) as usize];
        let be = self.backend.borrow();
        be.store()
            .expect("store")
            .read_image(sector * 512, &mut b)
            .expect("image read");
        b
    }

    /// Checks the whole image against the model.
    ///
    /// # Panics
    /// On a mismatch (with the first differing sector).
    pub fn check_image(&self) {
        let n = (self.model.bytes.len() / 512) as u64;
        let img = self.image(0, n);
        if img != self.model.bytes {
            let first = img
                .chunks(512)
                .zip(self.model.bytes.chunks(512))
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!("disk image differs from the acknowledged writes at sector {first}");
        }
    }

    /// Runs the backend's device action `f` (e.g. `check_resize`) with its xenstore handle.
    pub fn with_backend<R>(
        &mut self,
        f: impl FnOnce(&mut Back, &mut Xs, &mut Device) -> R,
    ) -> Option<R> {
        let be = self.backend.clone();
        self.be_bus
            .with_device(&mut self.be_xs, &be_dir(), |_, xs, dev| {
                f(&mut be.borrow_mut(), xs, dev)
            })
    }

    /// A store left for a later probe (after the backend device was removed).
    pub fn stash_store(&mut self, s: FileStore) {
        *self.store_slot.borrow_mut() = Some(s);
    }
}

/// The toolstack's half of `xl block-attach`: both directories, with the usual permissions.
fn toolstack_attach(xs: &XenstoreSim, s: &Setup) {
    let mut d = xs.daemon();
    let be = [Perm::new(Access::None, 0), Perm::new(Access::Read, FE)];
    let fe = [Perm::new(Access::None, FE), Perm::new(Access::Read, 0)];
    let bd = be_dir();
    let fd = fe_dir();
    d.put(&format!("{bd}/frontend"), fd.as_bytes(), &be);
    d.put(&format!("{bd}/frontend-id"), FE.to_string().as_bytes(), &be);
    d.put(&format!("{bd}/params"), b"/var/lib/xen/disk.img", &be);
    d.put(&format!("{bd}/type"), b"file", &be);
    d.put(
        &format!("{bd}/physical-device-path"),
        b"/var/lib/xen/disk.img",
        &be,
    );
    d.put(
        &format!("{bd}/mode"),
        if s.readonly { b"r" } else { b"w" },
        &be,
    );
    d.put(
        &format!("{bd}/removable"),
        if s.removable { b"1" } else { b"0" },
        &be,
    );
    d.put(&format!("{bd}/online"), b"1", &be);
    if !s.discard_enable {
        d.put(&format!("{bd}/discard-enable"), b"0", &be);
    }
    d.put(&format!("{bd}/state"), b"1", &be);
    d.put(&format!("{fd}/backend"), bd.as_bytes(), &fe);
    d.put(&format!("{fd}/backend-id"), b"0", &fe);
    d.put(
        &format!("{fd}/virtual-device"),
        VDEV.to_string().as_bytes(),
        &fe,
    );
    d.put(
        &format!("{fd}/device-type"),
        if s.cdrom { &b"cdrom"[..] } else { b"disk" },
        &fe,
    );
    d.put(
        &format!("{fd}/trusted"),
        if s.trusted { b"1" } else { b"0" },
        &fe,
    );
    d.put(&format!("{fd}/state"), b"1", &fe);
}
