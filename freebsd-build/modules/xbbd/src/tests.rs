//! Host tests of xbbd.ko's glue: the module entry points against the fake KPI, the choice of
//! backing object, and the queued store under the real blkback core serving the real blkfront
//! core over xensim, with a host file as the backing object and the test as the task thread;
//! then (in [`attach`]) the whole driver attached through the xenrs API over xensim, with
//! the shim's functions faked over host files.
#![expect(
    clippy::cast_possible_truncation,
    reason = "host-only test code: small page and sector arithmetic"
)]
#![allow(unsafe_code)]

#[path = "../../fake_xenrs_api.rs"]
mod fake_xenrs_api;

mod attach;

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use xen_blkback::backend::DeviceConfig;
use xen_blkback::{Backend, BackendConfig, IoError};
use xen_blkfront::{Bio, BioOp, BufSeg, Frontend, FrontendConfig};
use xen_shmem::SharedMem;
use xen_tests::blk::drivers::{BackDriver, FrontDriver};
use xen_tests::blk::file_store::temp_image;
use xen_tests::blk::sim::{take_pending, Log, SimBackEnv, SimFrontEnv};
use xen_tests::xensim::xenstored::{SimTransport, XenstoreSim};
use xen_tests::xensim::{DomainHandle, SimConfig, SimHypervisor};
use xen_xenbus::{Access, Bus, Perm, Role, XenbusState};

use super::*;
use crate::store::{
    backing_for, perform, BackingInfo, BackingKind, BackingKpi, ParamsError, QueuedStore,
};
use freebsd_kpi::fake;

fn cfg(params: &str, pdp: Option<&str>, kind: &str, readonly: bool) -> DeviceConfig {
    DeviceConfig {
        params: params.into(),
        physical_device_path: pdp.map(String::from),
        kind: kind.into(),
        readonly,
        cdrom: false,
        removable: false,
        discard_enable: true,
    }
}

#[test]
fn params_choose_a_device_or_a_file() {
    let s = backing_for(&cfg("/dev/ada0p3", None, "phy", false)).unwrap();
    assert_eq!(
        (s.path.as_str(), s.kind, s.read_only),
        ("/dev/ada0p3", BackingKind::Device, false)
    );
    let s = backing_for(&cfg("file:/var/vm/disk.img\n", None, "file", true)).unwrap();
    assert_eq!(
        (s.path.as_str(), s.kind, s.read_only),
        ("/var/vm/disk.img", BackingKind::File, true)
    );
    // FreeBSD's hotplug script names the device it set up.
    let s = backing_for(&cfg("/var/vm/disk.img", Some("/dev/md3"), "file", false)).unwrap();
    assert_eq!((s.path.as_str(), s.kind), ("/dev/md3", BackingKind::Device));
    assert_eq!(
        backing_for(&cfg("phy:", None, "", false)),
        Err(ParamsError::Empty)
    );
    assert_eq!(
        backing_for(&cfg("disk.img", None, "", false)),
        Err(ParamsError::Relative)
    );
    assert_eq!(
        backing_for(&cfg(&format!("/{}", "a".repeat(2000)), None, "", false)),
        Err(ParamsError::BadPath)
    );
    assert_eq!(
        backing_for(&cfg("/a\0b", None, "", false)),
        Err(ParamsError::BadPath)
    );
}

/// A host file as the backing object; `kicks` counts task requests.
struct HostFile {
    file: File,
    kicks: Rc<Cell<u32>>,
    fail_flush: bool,
}

impl BackingKpi for HostFile {
    fn rdwr(&self, write: bool, offset: u64, seg: &SharedMem<'_>) -> Result<(), i32> {
        let mut buf = vec![0u8; seg.len()];
        if write {
            seg.copy_to_slice(0, &mut buf).map_err(|_| 14)?;
            self.file.write_all_at(&buf, offset).map_err(|_| 5)
        } else {
            self.file.read_exact_at(&mut buf, offset).map_err(|_| 5)?;
            seg.copy_from_slice(0, &buf).map_err(|_| 14)
        }
    }
    fn flush(&self) -> Result<(), i32> {
        if self.fail_flush {
            return Err(5);
        }
        self.file.sync_data().map_err(|_| 5)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), i32> {
        self.file
            .write_all_at(&vec![0u8; len as usize], offset)
            .map_err(|_| 5)
    }
    fn kick(&self) {
        self.kicks.set(self.kicks.get() + 1);
    }
}

const FE: u16 = 1;
const SECTORS: u64 = 4096;

type Store = QueuedStore<'static, HostFile>;
type Back = Backend<'static, SimBackEnv, Store>;
type Xs = xen_xenbus::Xs<SimTransport>;

struct Rig {
    _sim: SimHypervisor,
    xs: XenstoreSim,
    back_dom: &'static DomainHandle,
    front_dom: &'static DomainHandle,
    be_xs: Xs,
    fe_xs: Xs,
    be_bus: Bus<Xs>,
    fe_bus: Bus<Xs>,
    backend: Rc<RefCell<Back>>,
    frontend: Rc<RefCell<Frontend<'static, SimFrontEnv>>>,
    kicks: Rc<Cell<u32>>,
    path: std::path::PathBuf,
    /// Task runs, and the most I/Os one run took.
    runs: u32,
    widest: usize,
    /// Hold the task (a slow file system).
    task_paused: bool,
}

fn be_dir() -> String {
    format!("/local/domain/0/backend/vbd/{FE}/51712")
}

fn fe_dir() -> String {
    format!("/local/domain/{FE}/device/vbd/51712")
}

/// A fresh image of [`SECTORS`] zero sectors, open for reading and writing.
fn image(name: &str) -> (std::path::PathBuf, File) {
    let path = temp_image(name);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("image");
    file.set_len(SECTORS * 512).expect("size");
    (path, file)
}

/// What the toolstack writes for a vbd of guest `FE` served by dom0 from `params` (a file)
/// with `mode`: the backend directory (dom0's, the guest may read it) and the frontend's
/// (the guest's, dom0 may read it), both in state Initialising.
fn put_vbd(xs: &XenstoreSim, params: &str, mode: &str) {
    let mut d = xs.daemon();
    let be = [Perm::new(Access::None, 0), Perm::new(Access::Read, FE)];
    let fe = [Perm::new(Access::None, FE), Perm::new(Access::Read, 0)];
    let (bd, fd) = (be_dir(), fe_dir());
    for (k, v) in [
        ("frontend", fd.as_str()),
        ("frontend-id", "1"),
        ("params", params),
        ("type", "file"),
        ("mode", mode),
        ("state", "1"),
    ] {
        d.put(&format!("{bd}/{k}"), v.as_bytes(), &be);
    }
    for (k, v) in [
        ("backend", bd.as_str()),
        ("backend-id", "0"),
        ("virtual-device", "51712"),
        ("device-type", "disk"),
        ("state", "1"),
    ] {
        d.put(&format!("{fd}/{k}"), v.as_bytes(), &fe);
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Rig {
    fn new(readonly: bool, fail_flush: bool) -> Rig {
        let sim = SimHypervisor::new(SimConfig {
            seed: 9,
            machine_pages: 4096,
            maptrack_limit: 16384,
            ..SimConfig::default()
        });
        let (back_dom, front_dom) = xenrs_api::sim::dom0_and_guest(&sim, 768, FE, 1536);
        let (path, file) = image("xbbd-glue");
        let kicks = Rc::new(Cell::new(0));
        let xs = XenstoreSim::new();
        let mut be_xs = xs.client(0);
        let mut fe_xs = xs.client(FE);
        put_vbd(
            &xs,
            path.to_str().unwrap(),
            if readonly { "r" } else { "w" },
        );
        // What the driver's probe does: choose the object from `params` and open it.
        let spec_path = path.clone();
        let opened = Rc::new(RefCell::new(None));
        let backend = Rc::new(RefCell::new(Backend::new(
            SimBackEnv::new(back_dom, Log::default()),
            BackendConfig::default(),
        )));
        let store_slot = Rc::new(RefCell::new(None));
        let mut be_bus = Bus::new(Role::Backend, 0);
        be_bus.register(Box::new(BackDriver {
            be: backend.clone(),
            store: store_slot.clone(),
        }));
        // The store is made from the device's configuration as the backend reads it.
        let config = cfg(spec_path.to_str().unwrap(), None, "file", readonly);
        let spec = backing_for(&config).expect("params");
        assert_eq!(spec.kind, BackingKind::File);
        *opened.borrow_mut() = Some(spec.clone());
        *store_slot.borrow_mut() = Some(QueuedStore::new(
            HostFile {
                file,
                kicks: kicks.clone(),
                fail_flush,
            },
            BackingInfo {
                size: SECTORS * 512,
                sector_size: 512,
                discard: true,
            },
            spec.read_only,
        ));
        let frontend = Rc::new(RefCell::new(Frontend::new(
            SimFrontEnv::new(front_dom, Log::default()),
            FrontendConfig::default(),
        )));
        let mut fe_bus = Bus::new(Role::Frontend, FE);
        fe_bus.register(Box::new(FrontDriver {
            fe: frontend.clone(),
        }));
        be_bus.start(&mut be_xs).expect("backend bus");
        fe_bus.start(&mut fe_xs).expect("frontend bus");
        let mut rig = Rig {
            _sim: sim,
            xs,
            back_dom,
            front_dom,
            be_xs,
            fe_xs,
            be_bus,
            fe_bus,
            backend,
            frontend,
            kicks,
            path,
            runs: 0,
            widest: 0,
            task_paused: false,
        };
        rig.run(2000);
        rig
    }

    /// One run of the taskqueue thread: a batch out of the store (under the device's lock),
    /// the I/O (without it), the results back and the backend polled (under it again).
    fn task(&mut self) -> bool {
        let batch = {
            let mut be = self.backend.borrow_mut();
            let Some(store) = be.store_mut() else {
                return false;
            };
            store.take_batch()
        };
        if batch.is_empty() {
            return false;
        }
        self.runs += 1;
        self.widest = self.widest.max(batch.len());
        let results: Vec<_> = {
            let be = self.backend.borrow();
            let kpi = be.store().expect("store").kpi();
            batch.iter().map(|io| (io.tag, perform(kpi, io))).collect()
        };
        drop(batch);
        let mut be = self.backend.borrow_mut();
        if let Some(store) = be.store_mut() {
            store.complete(results);
        }
        let _ = be.poll();
        true
    }

    fn step(&mut self) -> bool {
        let mut any = false;
        for _ in 0..64 {
            self.xs.settle();
            let mut n = 0;
            while let Ok(Some((id, ev))) = self.be_xs.poll_event() {
                n += 1;
                self.be_bus.handle_event(&mut self.be_xs, id, &ev);
            }
            while let Ok(Some((id, ev))) = self.fe_xs.poll_event() {
                n += 1;
                self.fe_bus.handle_event(&mut self.fe_xs, id, &ev);
            }
            if n == 0 {
                break;
            }
            any = true;
        }
        let mut pending = false;
        for p in self.backend.borrow().ports() {
            pending |= take_pending(self.back_dom, p);
        }
        if pending {
            any = true;
            let _ = self.backend.borrow_mut().poll();
        }
        if !self.task_paused {
            any |= self.task();
        }
        any | poll_frontend(&self.frontend, self.front_dom)
    }

    fn run(&mut self, max: usize) {
        run_until_idle(max, || self.step());
    }

    fn bio(&self, op: BioOp, sector: u64, fill: Option<u8>, tag: u64) -> Bio<'static> {
        page_bio(self.front_dom, op, sector, fill.unwrap_or(0xee), tag)
    }

    fn completions(&self) -> Vec<Completion> {
        completions(&self.frontend)
    }
}

/// Runs `step` until it found nothing to do three times in a row, at most `max` times.
fn run_until_idle(max: usize, mut step: impl FnMut() -> bool) {
    let mut idle = 0;
    for _ in 0..max {
        if step() {
            idle = 0;
        } else {
            idle += 1;
            if idle >= 3 {
                return;
            }
        }
    }
}

/// The guest's blkfront polled when one of its ports is pending; whether it was.
fn poll_frontend(frontend: &RefCell<Frontend<'static, SimFrontEnv>>, guest: &DomainHandle) -> bool {
    let mut pending = false;
    for p in frontend.borrow().ports() {
        pending |= take_pending(guest, p);
    }
    if pending {
        let _ = frontend.borrow_mut().poll();
    }
    pending
}

/// A one-page bio of the guest's at `sector`, its page filled with `fill`.
fn page_bio(
    guest: &'static DomainHandle,
    op: BioOp,
    sector: u64,
    fill: u8,
    tag: u64,
) -> Bio<'static> {
    let gfn = guest.alloc_page().expect("page");
    let page = guest.page(gfn).expect("view");
    page.fill(0, 4096, fill).unwrap();
    Bio::new(
        op,
        sector,
        vec![BufSeg {
            gfn,
            page,
            offset: 0,
            len: 4096,
        }],
        tag,
    )
}

/// A completed bio: its tag, its result and the first byte of its page.
type Completion = (u64, Result<(), xen_blkfront::BioError>, Option<u8>);

/// The frontend's completions so far, by tag.
fn completions(frontend: &RefCell<Frontend<'static, SimFrontEnv>>) -> Vec<Completion> {
    let mut out = Vec::new();
    while let Some(c) = frontend.borrow_mut().pop_completion() {
        let mut first = [0u8; 1];
        let byte = c
            .bio
            .segs
            .first()
            .and_then(|s| s.page.copy_to_slice(0, &mut first).ok().map(|()| first[0]));
        out.push((c.bio.tag, c.result, byte));
    }
    out.sort_by_key(|c| c.0);
    out
}

#[test]
fn the_blkback_core_serves_a_file_through_the_queued_store() {
    let _kernel = fake::session();
    let mut rig = Rig::new(false, false);
    assert_eq!(
        rig.fe_bus.device(&fe_dir()).map(xen_xenbus::Device::state),
        Some(XenbusState::Connected)
    );
    assert_eq!(
        rig.frontend
            .borrow()
            .disk()
            .map(|d| (d.sectors, d.flush, d.discard.is_some())),
        Some((SECTORS, true, true))
    );
    // Forty writes of one page each, then a flush and a discard, then reads of them back.
    for i in 0..40u64 {
        let bio = rig.bio(BioOp::Write, i * 8, Some(i as u8 + 1), i + 1);
        rig.frontend.borrow_mut().submit(bio).expect("write");
    }
    rig.frontend
        .borrow_mut()
        .submit(Bio::flush(100))
        .expect("flush");
    rig.frontend
        .borrow_mut()
        .submit(Bio::discard(8, 8, false, 101))
        .expect("discard");
    rig.run(2000);
    let done = rig.completions();
    assert_eq!(done.len(), 42);
    assert!(done.iter().all(|c| c.1.is_ok()), "{done:?}");
    // The task ran in bounded batches, and asked to run when work arrived.
    assert!(rig.widest <= store::BATCH, "batch of {}", rig.widest);
    assert!(rig.runs >= 3, "runs {}", rig.runs);
    assert!(rig.kicks.get() > 0);
    let image = std::fs::read(&rig.path).unwrap();
    assert!(image[..4096].iter().all(|b| *b == 1));
    assert!(image[4096..8192].iter().all(|b| *b == 0), "discarded");
    assert!(image[39 * 4096..40 * 4096].iter().all(|b| *b == 40));
    for i in [0u64, 17, 39] {
        let bio = rig.bio(BioOp::Read, i * 8, None, 200 + i);
        rig.frontend.borrow_mut().submit(bio).expect("read");
    }
    rig.run(1000);
    let reads = rig.completions();
    assert_eq!(
        reads
            .iter()
            .map(|c| (c.0, c.1.is_ok(), c.2))
            .collect::<Vec<_>>(),
        vec![
            (200, true, Some(1)),
            (217, true, Some(18)),
            (239, true, Some(40))
        ]
    );
    assert_eq!(rig.backend.borrow().store().map(QueuedStore::busy), Some(0));
}

#[test]
fn read_only_refuses_writes_and_out_of_range_io() {
    let _kernel = fake::session();
    let rig = Rig::new(true, false);
    let disk = rig.frontend.borrow().disk().expect("connected");
    assert!(disk.readonly);
    // The frontend refuses writes itself on a read-only disk; the store refuses them too
    // (a frontend that ignores `info` and writes anyway).
    let w = rig.bio(BioOp::Write, 0, Some(9), 1);
    assert!(rig.frontend.borrow_mut().submit(w).is_err());
    let mut be = rig.backend.borrow_mut();
    let store = be.store_mut().expect("store");
    let seg = rig
        .front_dom
        .page(rig.front_dom.alloc_page().unwrap())
        .unwrap();
    let io = |op, offset| xen_blkback::Io {
        tag: 7,
        op,
        offset,
        len: 4096,
        segs: vec![seg],
        seq: 0,
    };
    let refused =
        xen_blkback::BlockStore::submit(store, io(xen_blkback::IoOp::Write, 0)).map_err(|(_, e)| e);
    assert_eq!(refused, Err(IoError::ReadOnly));
    let beyond = io(xen_blkback::IoOp::Read, SECTORS * 512);
    let refused = xen_blkback::BlockStore::submit(store, beyond).map_err(|(_, e)| e);
    assert_eq!(refused, Err(IoError::OutOfRange));
    assert_eq!(store.busy(), 0);
}

#[test]
fn a_failed_flush_reaches_the_frontend_as_an_error() {
    let _kernel = fake::session();
    let mut rig = Rig::new(false, true);
    rig.frontend
        .borrow_mut()
        .submit(Bio::flush(3))
        .expect("flush");
    rig.run(500);
    let done = rig.completions();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].1, Err(xen_blkfront::BioError::Io));
}

#[test]
fn removal_drains_what_was_accepted_then_nothing_runs() {
    let _kernel = fake::session();
    let mut rig = Rig::new(false, false);
    rig.task_paused = true;
    let bio = rig.bio(BioOp::Write, 0, Some(5), 1);
    rig.frontend.borrow_mut().submit(bio).expect("write");
    rig.run(50);
    assert_eq!(rig.backend.borrow().store().map(QueuedStore::busy), Some(1));
    // The device directory goes away with the write still queued: the connection stays
    // until the task has performed it (its grant stays mapped meanwhile), then goes.
    let be = rig.backend.clone();
    let _ = rig
        .be_bus
        .with_device(&mut rig.be_xs, &be_dir(), |_, xs, dev| {
            be.borrow_mut().remove(xs, dev);
            Ok::<(), xen_xenbus::Error>(())
        });
    assert!(
        !rig.backend.borrow().ports().is_empty(),
        "kept while I/O is in flight"
    );
    rig.task_paused = false;
    rig.run(200);
    let be = rig.backend.clone();
    let _ = rig
        .be_bus
        .with_device(&mut rig.be_xs, &be_dir(), |_, xs, dev| {
            be.borrow_mut().service_control(xs, dev)
        });
    assert_eq!(rig.backend.borrow().store().map(QueuedStore::busy), Some(0));
    assert!(
        rig.backend.borrow().ports().is_empty(),
        "torn down once drained"
    );
    let image = std::fs::read(&rig.path).unwrap();
    assert!(
        image[..4096].iter().all(|b| *b == 5),
        "the accepted write landed"
    );
    let kicks = rig.kicks.get();
    rig.run(50);
    assert_eq!(rig.kicks.get(), kicks, "no task asked for after the drain");
}
