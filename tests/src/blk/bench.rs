//! Hostile-peer benches over the mock hypervisor and the in-memory xenstore: one real driver
//! against a *raw* peer that the test (or fuzzer) controls byte by byte.
//!
//! * [`BackBench`]: the real backend (over a [`MemStore`]) and a raw frontend that writes
//!   its own xenstore keys, its own ring bytes and indices, and decides which grants exist
//!   and which grant operations fail.
//! * [`FrontBench`]: the real frontend and a raw backend that reads the frontend's keys,
//!   "maps" its ring by reading the grant table as Xen would, takes requests with the real
//!   [`BackRingAny`], and answers whatever the test says, marking grants mapped or not.
#![expect(
    clippy::cast_possible_truncation,
    reason = "host-only test code: page indices and frame numbers are small"
)]

use std::cell::RefCell;
use std::rc::Rc;

use xen_blkback::proto::{Abi, BackRingAny, FrontRingAny, WireRequest, WireResponse};
use xen_blkback::{Backend, BackendConfig, MemStore};
use xen_blkfront::{Frontend, FrontendConfig};
use xen_shmem::SharedMem;
use xen_xenbus::{Bus, Role, XenbusState};

use super::drivers::{BackDriver, FrontDriver};
use super::memxs::MemXs;
use super::mock::{grant_entry, set_mapped, MockBackEnv, MockFrontEnv, MockHv, FRONT_DOM};
use super::sim::Log;

/// The backend directory in the benches.
pub const BE_DIR: &str = "/local/domain/0/backend/vbd/1/768";
/// The frontend directory in the benches.
pub const FE_DIR: &str = "/local/domain/1/device/vbd/768";

/// Grant reference the raw frontend uses for page `p`.
#[must_use]
pub fn gref_of(page: usize) -> u32 {
    1000 + page as u32
}

/// First data page of the raw frontend (pages below hold rings).
pub const DATA_BASE: usize = 64;

/// The backend under test.
pub type MockBack = Backend<'static, MockBackEnv, MemStore>;
/// The frontend under test.
pub type MockFront = Frontend<'static, MockFrontEnv>;

fn toolstack(xs: &mut MemXs, readonly: bool) {
    xs.set(&format!("{BE_DIR}/frontend"), FE_DIR.as_bytes());
    xs.set(&format!("{BE_DIR}/frontend-id"), b"1");
    xs.set(&format!("{BE_DIR}/params"), b"/dev/md0");
    xs.set(
        &format!("{BE_DIR}/mode"),
        if readonly { b"r" } else { b"w" },
    );
    xs.set(&format!("{BE_DIR}/state"), b"1");
    xs.set(&format!("{FE_DIR}/backend"), BE_DIR.as_bytes());
    xs.set(&format!("{FE_DIR}/backend-id"), b"0");
    xs.set(&format!("{FE_DIR}/virtual-device"), b"768");
    xs.set(&format!("{FE_DIR}/state"), b"1");
}

/// How the raw frontend connects.
#[derive(Debug, Clone, Copy)]
pub struct RawFrontConfig {
    /// Ring layout.
    pub abi: Abi,
    /// Ring order (pages `q*16 .. q*16 + 2^order`).
    pub order: u32,
    /// Queues.
    pub queues: u32,
    /// Ask for persistent grants.
    pub persistent: bool,
    /// Publish the ring size only in the older scheme (`num-ring-pages`).
    pub legacy_pages: bool,
}

impl Default for RawFrontConfig {
    fn default() -> Self {
        RawFrontConfig {
            abi: Abi::X86_64,
            order: 0,
            queues: 1,
            persistent: false,
            legacy_pages: false,
        }
    }
}

/// The real backend against a raw frontend (see the module docs).
pub struct BackBench {
    /// The mock hypervisor.
    pub hv: &'static MockHv,
    /// The store.
    pub xs: MemXs,
    /// The backend's bus.
    pub bus: Bus<MemXs>,
    /// The backend.
    pub be: Rc<RefCell<MockBack>>,
    /// Logs.
    pub log: Log,
    /// The raw frontend's rings (well-formed pushes and pops), by queue.
    pub rings: Vec<FrontRingAny<'static>>,
    /// Its connection parameters.
    pub cfg: RawFrontConfig,
}

impl std::fmt::Debug for BackBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackBench")
            .field("backend", &self.be.borrow())
            .field("hv", &self.hv)
            .finish_non_exhaustive()
    }
}

impl BackBench {
    /// A backend with `cfg` over a `sectors`-sector [`MemStore`], probed (in `InitWait`), and
    /// the data pages of the raw frontend granted read-write.
    #[must_use]
    pub fn new(cfg: BackendConfig, sectors: u64, readonly: bool) -> BackBench {
        Self::with_store(cfg, MemStore::new(sectors), readonly)
    }

    /// As [`BackBench::new`] over a given store.
    #[must_use]
    pub fn with_store(cfg: BackendConfig, store: MemStore, readonly: bool) -> BackBench {
        // Rings and the data pages tests use; the backend zeroes its own pages.
        let hv = MockHv::fresh_zeroing(&[(0, DATA_BASE + 128)]);
        let log = Log::default();
        let mut xs = MemXs::new();
        toolstack(&mut xs, readonly);
        for p in DATA_BASE..super::mock::FRONT_PAGES {
            hv.grant(gref_of(p), p, false);
        }
        let be = Rc::new(RefCell::new(Backend::new(
            MockBackEnv::new(hv, log.clone()),
            cfg,
        )));
        let mut bus = Bus::new(Role::Backend, 0);
        bus.register(Box::new(BackDriver {
            be: be.clone(),
            store: Rc::new(RefCell::new(Some(store))),
        }));
        let mut b = BackBench {
            hv,
            xs,
            bus,
            be,
            log,
            rings: Vec::new(),
            cfg: RawFrontConfig::default(),
        };
        let _ = b.bus.start(&mut b.xs);
        b.settle();
        b
    }

    /// Delivers queued watch events and finishes deferred control work.
    pub fn settle(&mut self) {
        for _ in 0..256 {
            let mut n = 0;
            while let Some((id, ev)) = self.xs.take_event() {
                n += 1;
                self.bus.handle_event(&mut self.xs, id, &ev);
            }
            if self.be.borrow().control_pending() {
                n += 1;
                let be = self.be.clone();
                self.bus.with_device(&mut self.xs, BE_DIR, |_, xs, dev| {
                    let _ = be.borrow_mut().service_control(xs, dev);
                });
            }
            if n == 0 {
                break;
            }
        }
    }

    /// The backend's xenbus state.
    #[must_use]
    pub fn state(&self) -> XenbusState {
        self.bus
            .device(BE_DIR)
            .map_or(XenbusState::Unknown, xen_xenbus::Device::state)
    }

    /// The raw frontend initialises its rings, writes its keys and goes `Initialised`.
    /// Returns whether the backend connected.
    pub fn connect(&mut self, cfg: RawFrontConfig) -> bool {
        self.cfg = cfg;
        self.rings.clear();
        let pages = 1usize << cfg.order;
        for q in 0..cfg.queues as usize {
            let first = q * 16;
            for p in first..first + pages {
                self.hv.grant(100 + p as u32, p, false);
            }
            let mem = self.hv.pages(first, pages).expect("ring pages");
            self.rings
                .push(FrontRingAny::init(cfg.abi, mem).expect("ring init"));
            let dir = if cfg.queues == 1 {
                FE_DIR.to_string()
            } else {
                format!("{FE_DIR}/queue-{q}")
            };
            if cfg.order == 0 {
                self.xs.set(
                    &format!("{dir}/ring-ref"),
                    format!("{}", 100 + first).as_bytes(),
                );
            } else {
                for i in 0..pages {
                    self.xs.set(
                        &format!("{dir}/ring-ref{i}"),
                        format!("{}", 100 + first + i).as_bytes(),
                    );
                }
            }
            self.xs.set(
                &format!("{dir}/event-channel"),
                format!("{}", 10 + q).as_bytes(),
            );
        }
        if cfg.queues > 1 {
            self.xs.set(
                &format!("{FE_DIR}/multi-queue-num-queues"),
                format!("{}", cfg.queues).as_bytes(),
            );
        }
        if cfg.legacy_pages {
            self.xs.set(
                &format!("{FE_DIR}/num-ring-pages"),
                format!("{}", 1u32 << cfg.order).as_bytes(),
            );
        } else {
            self.xs.set(
                &format!("{FE_DIR}/ring-page-order"),
                format!("{}", cfg.order).as_bytes(),
            );
        }
        self.xs
            .set(&format!("{FE_DIR}/protocol"), cfg.abi.protocol().as_bytes());
        self.xs.set(
            &format!("{FE_DIR}/feature-persistent"),
            if cfg.persistent { b"1" } else { b"0" },
        );
        self.xs.set(&format!("{FE_DIR}/state"), b"3");
        self.settle();
        self.state() == XenbusState::Connected
    }

    /// The raw frontend closes (`Closed`).
    pub fn close(&mut self) {
        self.xs.set(&format!("{FE_DIR}/state"), b"6");
        self.settle();
        for _ in 0..64 {
            self.poll();
            if !self.be.borrow().is_connected() {
                break;
            }
        }
        self.settle();
    }

    /// Queues and publishes a request on queue `q` (well-formed ring use; the request itself
    /// may be anything).
    pub fn push(&mut self, q: usize, w: &WireRequest) -> bool {
        let Some(r) = self.rings.get_mut(q) else {
            return false;
        };
        if r.push_request(w).is_err() {
            return false;
        }
        r.push_requests_and_check_notify().is_ok()
    }

    /// Polls the backend until it has nothing more to do (bounded), handling control work.
    pub fn poll(&mut self) {
        for _ in 0..256 {
            let r = self.be.borrow_mut().poll();
            if r.control {
                self.settle();
            }
            let completions = self
                .be
                .borrow()
                .store()
                .map_or(0, MemStore::completions_ready);
            if !r.more && completions == 0 {
                break;
            }
        }
        self.settle();
    }

    /// Takes the responses queued on queue `q`.
    pub fn responses(&mut self, q: usize) -> Vec<WireResponse> {
        let mut v = Vec::new();
        let Some(r) = self.rings.get_mut(q) else {
            return v;
        };
        while let Ok(Some(rsp)) = r.pop_response() {
            v.push(rsp);
        }
        v
    }

    /// The whole shared memory of queue `q`'s ring (header and slots).
    #[must_use]
    pub fn ring_mem(&self, q: usize) -> SharedMem<'static> {
        self.hv
            .pages(q * 16, 1 << self.cfg.order)
            .expect("ring pages")
    }

    /// A data page of the raw frontend.
    #[must_use]
    pub fn data_page(&self, p: usize) -> SharedMem<'static> {
        self.hv.pages(p, 1).expect("data page")
    }

    /// Mappings and reserved slots left over, besides the ring's (and persistent grants').
    #[must_use]
    pub fn leftovers(&self) -> (usize, usize) {
        let be = self.be.borrow();
        let reserved = be.env().reserved.borrow().len();
        (self.hv.live_maps(), reserved)
    }
}

/// How the raw backend presents itself.
#[derive(Debug, Clone, Copy)]
pub struct RawBackConfig {
    /// `sectors`.
    pub sectors: u64,
    /// `feature-max-indirect-segments` (0: absent).
    pub indirect: u32,
    /// `feature-persistent`.
    pub persistent: bool,
    /// `info`.
    pub info: u32,
    /// `feature-flush-cache` / `feature-barrier` / `feature-discard`.
    pub flush: bool,
    /// Offer multi-page rings in the older scheme only (`max-ring-pages`).
    pub max_ring_pages: Option<u32>,
}

impl Default for RawBackConfig {
    fn default() -> Self {
        RawBackConfig {
            sectors: 1 << 16,
            indirect: 0,
            persistent: false,
            info: 0,
            flush: true,
            max_ring_pages: None,
        }
    }
}

/// The real frontend against a raw backend (see the module docs).
pub struct FrontBench {
    /// The mock hypervisor.
    pub hv: &'static MockHv,
    /// The store.
    pub xs: MemXs,
    /// The frontend's bus.
    pub bus: Bus<MemXs>,
    /// The frontend.
    pub fe: Rc<RefCell<MockFront>>,
    /// Logs.
    pub log: Log,
    /// The raw backend's view of the ring (after [`FrontBench::connect`]).
    pub ring: Option<BackRingAny<'static>>,
    /// The ring's grant reference.
    pub ring_ref: u32,
}

impl std::fmt::Debug for FrontBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontBench")
            .field("frontend", &self.fe.borrow())
            .finish_non_exhaustive()
    }
}

impl FrontBench {
    /// A frontend with `cfg` (one queue, order 0 are what the raw backend offers), probed,
    /// with `trusted` as given.
    #[must_use]
    pub fn new(mut cfg: FrontendConfig, trusted: bool) -> FrontBench {
        // The frontend zeroes what it allocates; only the grant frames must start clean.
        let hv = MockHv::fresh_zeroing(&[]);
        let log = Log::default();
        let mut xs = MemXs::new();
        toolstack(&mut xs, false);
        xs.set(
            &format!("{FE_DIR}/trusted"),
            if trusted { b"1" } else { b"0" },
        );
        cfg.max_queues = 1;
        let fe = Rc::new(RefCell::new(Frontend::new(
            MockFrontEnv::new(hv, 8, log.clone()),
            cfg,
        )));
        let mut bus = Bus::new(Role::Frontend, FRONT_DOM);
        bus.register(Box::new(FrontDriver { fe: fe.clone() }));
        let mut b = FrontBench {
            hv,
            xs,
            bus,
            fe,
            log,
            ring: None,
            ring_ref: 0,
        };
        let _ = b.bus.start(&mut b.xs);
        b.settle();
        b
    }

    /// Delivers queued watch events (to the bus, or the frontend's own watches).
    pub fn settle(&mut self) {
        for _ in 0..256 {
            let mut n = 0;
            while let Some((id, ev)) = self.xs.take_event() {
                n += 1;
                if !self.bus.handle_event(&mut self.xs, id, &ev) {
                    let fe = self.fe.clone();
                    self.bus.with_device(&mut self.xs, FE_DIR, |_, xs, dev| {
                        let _ = fe.borrow_mut().on_watch(xs, dev, id);
                    });
                }
            }
            if n == 0 {
                break;
            }
        }
    }

    /// The frontend's xenbus state.
    #[must_use]
    pub fn state(&self) -> XenbusState {
        self.bus
            .device(FE_DIR)
            .map_or(XenbusState::Unknown, xen_xenbus::Device::state)
    }

    /// Runs the frontend's data path and reports failures to the store.
    pub fn poll(&mut self) -> xen_blkfront::PollResult {
        let r = self.fe.borrow_mut().poll();
        if r.control {
            let fe = self.fe.clone();
            self.bus.with_device(&mut self.xs, FE_DIR, |_, xs, dev| {
                let _ = fe.borrow_mut().service_control(xs, dev);
            });
        }
        self.settle();
        r
    }

    /// The raw backend offers `cfg` (`InitWait`), reads the frontend's ring, "maps" it, and
    /// goes `Connected`. Returns whether the frontend connected.
    pub fn connect(&mut self, cfg: RawBackConfig) -> bool {
        let set = |xs: &mut MemXs, k: &str, v: &str| xs.set(&format!("{BE_DIR}/{k}"), v.as_bytes());
        set(
            &mut self.xs,
            "feature-persistent",
            if cfg.persistent { "1" } else { "0" },
        );
        if cfg.indirect > 0 {
            set(
                &mut self.xs,
                "feature-max-indirect-segments",
                &cfg.indirect.to_string(),
            );
        }
        set(
            &mut self.xs,
            "feature-flush-cache",
            if cfg.flush { "1" } else { "0" },
        );
        set(
            &mut self.xs,
            "feature-barrier",
            if cfg.flush { "1" } else { "0" },
        );
        set(&mut self.xs, "feature-discard", "1");
        if let Some(n) = cfg.max_ring_pages {
            set(&mut self.xs, "max-ring-pages", &n.to_string());
        }
        set(&mut self.xs, "state", "2");
        self.settle();
        let num = |xs: &MemXs, k: &str| {
            xs.get_str(&format!("{FE_DIR}/{k}"))
                .and_then(|v| v.parse::<u32>().ok())
        };
        let pages = num(&self.xs, "num-ring-pages").unwrap_or(1);
        let refs: Vec<u32> = if pages == 1 {
            num(&self.xs, "ring-ref").into_iter().collect()
        } else {
            (0..pages)
                .filter_map(|i| num(&self.xs, &format!("ring-ref{i}")))
                .collect()
        };
        let Some(&r) = refs.first() else {
            return false;
        };
        self.ring_ref = r;
        let mut first = None;
        for (i, &g) in refs.iter().enumerate() {
            let Some((flags, dom, frame)) = grant_entry(self.hv, g) else {
                return false;
            };
            if flags & 1 == 0 || dom != 0 {
                return false;
            }
            let f0 = *first.get_or_insert(frame);
            if frame != f0 + i as u32 {
                return false;
            }
            set_mapped(self.hv, g, true);
        }
        let Some(frame) = first else {
            return false;
        };
        let abi = self
            .xs
            .get(&format!("{FE_DIR}/protocol"))
            .and_then(Abi::parse)
            .unwrap_or(Abi::X86_64);
        let Some(mem) = self.hv.pages(frame as usize, pages as usize) else {
            return false;
        };
        self.ring = BackRingAny::attach(abi, mem).ok();
        set(&mut self.xs, "sectors", &cfg.sectors.to_string());
        set(&mut self.xs, "info", &cfg.info.to_string());
        set(&mut self.xs, "sector-size", "512");
        set(&mut self.xs, "state", "4");
        self.settle();
        self.state() == XenbusState::Connected
    }

    /// Requests the frontend has published, taken with the real backend ring (copied once).
    pub fn take_requests(&mut self) -> Vec<WireRequest> {
        let mut v = Vec::new();
        if let Some(r) = self.ring.as_mut() {
            while let Ok(Some(q)) = r.pop_request() {
                v.push(q);
            }
        }
        v
    }

    /// Queues a response (any content) and publishes it.
    pub fn respond(&mut self, rsp: &WireResponse) -> bool {
        let Some(r) = self.ring.as_mut() else {
            return false;
        };
        if r.push_response(rsp).is_err() {
            return false;
        }
        r.push_responses_and_check_notify().is_ok()
    }
}
