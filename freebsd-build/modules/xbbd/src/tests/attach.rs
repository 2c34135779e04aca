//! xbbd.ko attached as in the kernel: the module's entry points against the fake xenrs API,
//! and the `vbd` driver registered through the xenrs API (`HostXen` over xensim) serving our
//! blkfront core in a guest domain, with the shim's functions (`xbbd_kmod.c`: the backing
//! object, the taskqueue, the sysctl tree) faked over host files and a hand-run task queue.

use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use xen_blkback::BackendConfig;
use xen_blkfront::{Bio, BioOp, Frontend, FrontendConfig};
use xen_tests::blk::drivers::FrontDriver;
use xen_tests::blk::sim::{contiguous_view, take_pending, Log, SimFrontEnv};
use xen_tests::xensim::xenstored::{SimTransport, XenstoreSim};
use xen_tests::xensim::{DomainHandle, SimConfig, SimHypervisor};
use xen_xenbus::{Bus, Role, XenbusState};
use xenrs_api::{Registration as _, XenServices};

use super::{
    be_dir, completions, fake_xenrs_api, fe_dir, image, page_bio, poll_frontend, put_vbd,
    run_until_idle, FE, SECTORS,
};
use crate::dev::{on_kick, DevStat, KickSlot, XbbdDriver};
use crate::env::SlotView;
use crate::sys::xenrs_xbbd_dev_stat;
use crate::{config_from_tunables, XbbdModule};
use freebsd_kpi::fake;
use freebsd_kpi::module::KernelModule;

/// Fakes of the shim's functions (`xbbd_kmod.c`).
pub mod shim {
    use std::collections::BTreeMap;
    use std::ffi::{c_char, c_int, c_void, CStr};
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::sync::{Mutex, PoisonError};

    #[derive(Debug, Default)]
    pub struct State {
        /// Open backing objects: handle -> (file, writable).
        pub files: BTreeMap<usize, (File, bool)>,
        pub opened: usize,
        pub closed: usize,
        pub rdwr: usize,
        pub flushes: usize,
        pub discards: usize,
        /// Live sysctl trees: handle -> softc.
        pub trees: BTreeMap<usize, usize>,
        pub next: usize,
    }

    static STATE: Mutex<Option<State>> = Mutex::new(None);

    pub fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
        let mut g = STATE.lock().unwrap_or_else(PoisonError::into_inner);
        f(g.get_or_insert_with(State::default))
    }

    pub fn reset() {
        with(|s| *s = State::default());
    }

    fn next(s: &mut State) -> usize {
        s.next += 1;
        0x20_0000 + s.next * 16
    }

    /// # Safety
    /// `path` is NUL-terminated; the out pointers are valid for writes.
    #[no_mangle]
    pub unsafe extern "C" fn xenrs_xbbd_vn_open(
        path: *const c_char,
        writable: c_int,
        out: *mut *mut c_void,
        size: *mut u64,
        sector: *mut u32,
        isdev: *mut c_int,
    ) -> c_int {
        // SAFETY: by contract.
        let path = unsafe { CStr::from_ptr(path) }
            .to_string_lossy()
            .into_owned();
        let Ok(file) = File::options().read(true).write(writable != 0).open(&path) else {
            return 2;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        with(|s| {
            let h = next(s);
            s.files.insert(h, (file, writable != 0));
            s.opened += 1;
            // SAFETY: by contract.
            unsafe {
                out.write(h as *mut c_void);
                size.write(len);
                sector.write(512);
                isdev.write(0);
            }
        });
        0
    }

    /// # Safety
    /// `buf` is valid for `len` bytes.
    #[no_mangle]
    pub unsafe extern "C" fn xenrs_xbbd_vn_rdwr(
        v: *mut c_void,
        write: c_int,
        off: u64,
        buf: *mut u8,
        len: u32,
    ) -> c_int {
        // SAFETY: by contract.
        let data = unsafe { std::slice::from_raw_parts_mut(buf, len as usize) };
        with(|s| {
            s.rdwr += 1;
            let (file, writable) = s.files.get(&(v as usize)).expect("open object");
            let r = if write != 0 {
                assert!(*writable, "write to an object opened read-only");
                file.write_all_at(data, off)
            } else {
                file.read_exact_at(data, off)
            };
            if r.is_ok() {
                0
            } else {
                5
            }
        })
    }

    #[no_mangle]
    pub extern "C" fn xenrs_xbbd_vn_flush(v: *mut c_void) -> c_int {
        with(|s| {
            s.flushes += 1;
            let (file, _) = s.files.get(&(v as usize)).expect("open object");
            if file.sync_data().is_ok() {
                0
            } else {
                5
            }
        })
    }

    #[no_mangle]
    pub extern "C" fn xenrs_xbbd_vn_discard(v: *mut c_void, off: u64, len: u64) -> c_int {
        with(|s| {
            s.discards += 1;
            let (file, _) = s.files.get(&(v as usize)).expect("open object");
            let zeros = vec![0u8; usize::try_from(len).expect("small")];
            if file.write_all_at(&zeros, off).is_ok() {
                0
            } else {
                5
            }
        })
    }

    #[no_mangle]
    pub extern "C" fn xenrs_xbbd_vn_close(v: *mut c_void) {
        with(|s| {
            s.files.remove(&(v as usize)).expect("open object");
            s.closed += 1;
        });
    }

    #[no_mangle]
    pub extern "C" fn xenrs_xbbd_sysctl_attach(softc: *mut c_void, _unit: u32) -> *mut c_void {
        with(|s| {
            let h = next(s);
            s.trees.insert(h, softc as usize);
            h as *mut c_void
        })
    }

    #[no_mangle]
    pub extern "C" fn xenrs_xbbd_sysctl_detach(ctx: *mut c_void) {
        with(|s| s.trees.remove(&(ctx as usize)).expect("live tree"));
    }
}

// ---------------------------------------------------------------- module

#[test]
fn load_registers_the_vbd_backend_and_unload_unregisters_it() {
    let _kernel = fake::session();
    fake_xenrs_api::reset(1);
    assert_eq!(crate::xenrs_xbbd_load(), 0);
    let console = fake::console();
    assert!(
        console.starts_with(
            "xbbd: loaded (rings up to 2^4 pages, 4 queue(s), 256 indirect segments, grant copy)"
        ),
        "{console}"
    );
    assert_eq!(
        fake_xenrs_api::with(|s| s
            .registered
            .iter()
            .map(|r| (r.0, r.1.clone()))
            .collect::<Vec<_>>()),
        vec![(1, String::from("vbd"))]
    );
    assert_eq!(crate::xenrs_xbbd_quiesce(), 0);
    assert_eq!(crate::xenrs_xbbd_unload(), 0);
    assert_eq!(
        fake_xenrs_api::with(|s| (s.registered.len(), s.unregistered)),
        (0, 1)
    );
    assert_eq!(fake::heap_blocks_out(), 0);
}

#[test]
fn tunables_are_read_and_bad_ones_rejected_with_a_reason() {
    let _kernel = fake::session();
    fake::set_env("hw.xbbd.max_ring_page_order", "2");
    fake::set_env("hw.xbbd.max_queues", "0");
    fake::set_env("hw.xbbd.max_indirect_segments", "8");
    let c = config_from_tunables();
    assert_eq!(c.max_ring_page_order, 2);
    assert_eq!(c.max_queues, BackendConfig::default().max_queues);
    assert_eq!(c.max_indirect_segments, 256);
    assert_eq!(c.data_path, xen_blkback::DataPath::Copy);
    assert!(!c.persistent);
    let console = fake::console();
    assert!(
        console.contains("xbbd: loader tunable hw.xbbd.max_queues=\"0\": out of range"),
        "{console}"
    );
    assert!(
        console.contains("hw.xbbd.max_indirect_segments=\"8\": out of range"),
        "{console}"
    );
    fake::set_env("hw.xbbd.max_indirect_segments", "0");
    fake::set_env("hw.xbbd.copy_pool_pages", "64");
    let c = config_from_tunables();
    assert_eq!((c.max_indirect_segments, c.copy_pool_pages), (0, 64));
    fake::set_env("hw.xbbd.copy_pool_pages", "100000");
    assert_eq!(
        config_from_tunables().copy_pool_pages,
        BackendConfig::default().copy_pool_pages
    );
    assert!(fake::console().contains("hw.xbbd.copy_pool_pages=\"100000\": out of range"));
}

#[test]
fn sysctl_leaves_agree_with_the_shim() {
    let shim = include_str!("../../xbbd_kmod.c");
    let start = shim.find("xbbd_kmod_leaves[] = {").expect("leaf table");
    let names: Vec<&str> = shim[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("};"))
        .filter_map(|l| l.trim().strip_prefix("{ \"")?.split('"').next())
        .collect();
    let ours: Vec<&str> = DevStat::ALL.iter().map(|(_, n)| *n).collect();
    assert_eq!(names, ours);
    for (i, (stat, _)) in DevStat::ALL.iter().enumerate() {
        assert_eq!(*stat as usize, i);
    }
}

// ---------------------------------------------------------------- attached over xensim

/// How the simulated dom0 sees a slot run: through the frames now mapped there. The views
/// handed out (the rings: data moves by grant copy) are kept for tests that play a hostile
/// guest on them.
struct SimView(
    &'static DomainHandle,
    Arc<std::sync::Mutex<Vec<xen_shmem::SharedMem<'static>>>>,
);

impl SlotView for SimView {
    fn view(
        &self,
        _run: &xenrs_api::Pages,
        _first: u32,
        pages: u32,
        host_addr: u64,
    ) -> Option<xen_shmem::SharedMem<'static>> {
        let gfn = host_addr / 4096;
        let view = if pages == 1 {
            self.0.page_any(gfn)
        } else {
            contiguous_view(self.0, gfn, pages)
        }?;
        self.1.lock().unwrap().push(view);
        Some(view)
    }
}

/// Keeps `v` for the rest of the test process (the simulated machine outlives every view).
fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

type Host = xenrs_api::sim::SimXen;

/// Dom0 with xbbd registered through the xenrs API; the guest's blkfront on its own bus.
struct World {
    xs: &'static XenstoreSim,
    dom0: &'static DomainHandle,
    guest: &'static DomainHandle,
    xen: Arc<Host>,
    reg: Option<<Host as XenServices>::Reg>,
    live: Arc<AtomicUsize>,
    fe_xs: xen_xenbus::Xs<SimTransport>,
    fe_bus: Bus<xen_xenbus::Xs<SimTransport>>,
    frontend: Rc<RefCell<Frontend<'static, SimFrontEnv>>>,
    path: std::path::PathBuf,
    /// The rings as the backend mapped them.
    rings: Arc<std::sync::Mutex<Vec<xen_shmem::SharedMem<'static>>>>,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl World {
    fn new(mode: &str, params: Option<&str>, fe_cfg: FrontendConfig) -> World {
        let sim = leak(SimHypervisor::new(SimConfig {
            seed: 11,
            machine_pages: 8192,
            maptrack_limit: 16384,
            ..SimConfig::default()
        }));
        let (dom0, guest) = xenrs_api::sim::dom0_and_guest(sim, 3072, FE, 1536);
        let (path, _) = image("xbbd-attach");
        let xs = leak(XenstoreSim::new());
        put_vbd(xs, params.unwrap_or(path.to_str().unwrap()), mode);
        let xen = Arc::new(xenrs_api::sim::xen(dom0, xs, 4));
        let live = Arc::new(AtomicUsize::new(0));
        let rings = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kick = Arc::new(KickSlot::new().expect("kick slot"));
        let driver = XbbdDriver::new(
            xen.clone(),
            config_from_tunables(),
            Arc::new(SimView(dom0, rings.clone())),
            kick.clone(),
            live.clone(),
        );
        let reg = xen
            .register_driver_with_kick(Role::Backend, Box::new(driver), Box::new(on_kick))
            .expect("register");
        kick.set(reg.kicker());
        let frontend = Rc::new(RefCell::new(Frontend::new(
            SimFrontEnv::new(guest, Log::default()),
            fe_cfg,
        )));
        let mut fe_xs = xs.client(FE);
        let mut fe_bus = Bus::new(Role::Frontend, FE);
        fe_bus.register(Box::new(FrontDriver {
            fe: frontend.clone(),
        }));
        fe_bus.start(&mut fe_xs).expect("frontend bus");
        let mut w = World {
            xs,
            dom0,
            guest,
            xen,
            reg: Some(reg),
            live,
            fe_xs,
            fe_bus,
            frontend,
            path,
            rings,
        };
        w.run(400);
        w
    }

    /// One round of every thread: xenstore, xen.ko's xenbus thread, its event thread, the
    /// device's taskqueue, the guest. Whether anything happened.
    fn step(&mut self) -> bool {
        let mut any = false;
        self.xs.settle();
        any |= self.xen.pump(64).unwrap_or(0) > 0;
        while let Ok(Some((id, ev))) = self.fe_xs.poll_event() {
            any = true;
            self.fe_bus.handle_event(&mut self.fe_xs, id, &ev);
        }
        for port in 1..64 {
            if take_pending(self.dom0, port) {
                any = true;
                let _ = self.xen.deliver(port);
            }
        }
        any |= fake::run_tasks() > 0;
        any | poll_frontend(&self.frontend, self.guest)
    }

    fn run(&mut self, max: usize) {
        run_until_idle(max, || self.step());
    }

    fn bio(&self, op: BioOp, sector: u64, fill: u8, tag: u64) -> Bio<'static> {
        page_bio(self.guest, op, sector, fill, tag)
    }

    /// Tag, success and first byte (0 when unreadable) of each completion.
    fn completions(&self) -> Vec<(u64, bool, u8)> {
        completions(&self.frontend)
            .into_iter()
            .map(|(tag, result, byte)| (tag, result.is_ok(), byte.unwrap_or(0)))
            .collect()
    }

    fn softc(&self) -> usize {
        shim::with(|s| s.trees.values().next().copied()).expect("a device's tree")
    }

    fn stat(&self, softc: usize, which: DevStat) -> u64 {
        let mut v = 0u64;
        // SAFETY: the softc of a live tree (the device is attached); `v` is writable.
        let rc = unsafe { xenrs_xbbd_dev_stat(softc as *mut c_void, which as c_int, &mut v) };
        assert_eq!(rc, 0);
        v
    }
}

#[test]
fn a_vbd_attaches_serves_a_file_and_detaches_leaving_nothing() {
    let _kernel = fake::session();
    shim::reset();
    let locks = fake::locks_out();
    let mut w = World::new("w", None, FrontendConfig::default());
    // The registration's kick slot, the device lock and the task slot.
    assert_eq!(fake::locks_out(), locks + 3);
    assert_eq!(w.live.load(std::sync::atomic::Ordering::Acquire), 1);
    assert_eq!(
        w.fe_bus.device(&fe_dir()).map(xen_xenbus::Device::state),
        Some(XenbusState::Connected)
    );
    let disk = w.frontend.borrow().disk().expect("connected");
    assert_eq!(
        (disk.sectors, disk.readonly, disk.flush),
        (SECTORS, false, true)
    );
    let softc = w.softc();
    assert_eq!(w.stat(softc, DevStat::Connected), 1);
    assert_eq!(w.stat(softc, DevStat::Domid), u64::from(FE));
    assert_eq!(w.stat(softc, DevStat::Handle), 51712);
    assert_eq!(w.stat(softc, DevStat::Sectors), SECTORS);
    let during = w.xen.outstanding();
    assert!(during.ports > 0 && during.pages > 0, "{during:?}");

    // Writes through the whole path, a flush, a discard; the file has them.
    for i in 0..24u64 {
        let bio = w.bio(BioOp::Write, i * 8, i as u8 + 1, i + 1);
        w.frontend.borrow_mut().submit(bio).expect("write");
    }
    w.frontend
        .borrow_mut()
        .submit(Bio::flush(100))
        .expect("flush");
    w.frontend
        .borrow_mut()
        .submit(Bio::discard(8, 8, false, 101))
        .expect("discard");
    w.run(2000);
    let done = w.completions();
    assert_eq!(done.len(), 26, "{done:?}");
    assert!(done.iter().all(|c| c.1), "{done:?}");
    let image = std::fs::read(&w.path).unwrap();
    assert!(image[..4096].iter().all(|b| *b == 1));
    assert!(image[4096..8192].iter().all(|b| *b == 0), "discarded");
    assert!(image[23 * 4096..24 * 4096].iter().all(|b| *b == 24));
    assert!(shim::with(|s| s.flushes) >= 1);
    assert_eq!(shim::with(|s| s.discards), 1);
    // Reads come back from the file.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&w.path)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a; 4096], 40 * 4096))
        .unwrap();
    for (i, sector) in [(0u64, 0u64), (1, 23 * 8), (2, 40 * 8)] {
        let bio = w.bio(BioOp::Read, sector, 0xee, 200 + i);
        w.frontend.borrow_mut().submit(bio).expect("read");
    }
    w.run(1000);
    assert_eq!(
        w.completions(),
        vec![(200, true, 1), (201, true, 24), (202, true, 0x5a)]
    );
    assert_eq!(w.stat(softc, DevStat::Writes), 24);
    assert_eq!(w.stat(softc, DevStat::Reads), 3);
    assert_eq!(w.stat(softc, DevStat::Flushes), 1);
    assert_eq!(w.stat(softc, DevStat::Discards), 1);
    assert_eq!(w.stat(softc, DevStat::Errors), 0);
    assert_eq!(w.stat(softc, DevStat::InFlight), 0);

    // kldunload is refused while the vbd is attached.
    {
        fake_xenrs_api::reset(1);
        let m = XbbdModule::load().expect("load");
        // The module's count as the world's driver has it: the vbd above.
        let count = m.live.counter();
        count.store(w.live.load(Ordering::Acquire), Ordering::Release);
        assert_eq!(m.stat(0), Some(1));
        assert_eq!(m.quiesce(), Err(freebsd_kpi::Errno::EBUSY));
        assert!(fake::console().contains("xbbd: 1 vbd(s) attached; detach them first"));
        count.store(0, Ordering::Release);
        assert_eq!(m.quiesce(), Ok(()));
        m.unload();
    }

    // Detach (the registration goes, as at kldunload once allowed): nothing fires
    // afterwards, nothing is left bound, mapped, allocated or open.
    let ports: Vec<u32> = (1..64).filter(|p| w.xen.deliver(*p)).collect();
    assert!(
        !ports.is_empty(),
        "the device's ports deliver while attached"
    );
    drop(w.reg.take());
    assert_eq!(w.live.load(std::sync::atomic::Ordering::Acquire), 0);
    for p in 1..64 {
        assert!(!w.xen.deliver(p), "port {p} still delivers after detach");
    }
    let bio = w.bio(BioOp::Write, 0, 9, 300);
    let _ = w.frontend.borrow_mut().submit(bio);
    w.run(50);
    let left = w.xen.outstanding();
    assert_eq!(
        (
            left.ports,
            left.mappings,
            left.pages,
            left.grants,
            left.registrations
        ),
        (0, 0, 0, 0, 0),
        "{left:?}"
    );
    shim::with(|s| {
        assert_eq!((s.opened, s.closed), (1, 1));
        assert!(s.files.is_empty() && s.trees.is_empty());
    });
    let image = std::fs::read(&w.path).unwrap();
    assert!(
        image[..4096].iter().all(|b| *b == 1),
        "nothing written after detach"
    );
    let _ = w.fe_xs.poll_event();
}

#[test]
fn mode_without_w_opens_read_only_and_the_frontend_sees_it() {
    let _kernel = fake::session();
    shim::reset();
    let w = World::new("r", None, FrontendConfig::default());
    let disk = w.frontend.borrow().disk().expect("connected");
    assert!(disk.readonly);
    let softc = w.softc();
    assert_eq!(w.stat(softc, DevStat::ReadOnly), 1);
    assert!(shim::with(|s| s
        .files
        .values()
        .all(|(_, writable)| !writable)));
    let w2 = w.bio(BioOp::Write, 0, 3, 1);
    assert!(w.frontend.borrow_mut().submit(w2).is_err());
}

#[test]
fn a_missing_backing_file_fails_the_device_and_leaves_nothing() {
    let _kernel = fake::session();
    shim::reset();
    let mut w = World::new(
        "w",
        Some("/nonexistent/xbbd-disk.img"),
        FrontendConfig::default(),
    );
    let console = fake::console();
    assert!(
        console.contains("xbbd0: cannot open /nonexistent/xbbd-disk.img: error 2"),
        "{console}"
    );
    // The device failed: nothing of it is left, and the frontend never connects.
    assert_eq!(w.live.load(std::sync::atomic::Ordering::Acquire), 0);
    assert_eq!(
        (
            fake::taskqueues().len(),
            shim::with(|s| (s.trees.len(), s.files.len(), s.opened))
        ),
        (0, (0, 0, 0))
    );
    assert!(w.frontend.borrow().disk().is_none());
    let left = w.xen.outstanding();
    assert_eq!(
        (left.ports, left.pages, left.mappings),
        (0, 0, 0),
        "{left:?}"
    );
    w.run(50);
    drop(w.reg.take());
}

#[test]
fn the_task_runs_in_bounded_rounds_and_asks_for_itself_again() {
    let _kernel = fake::session();
    shim::reset();
    let mut w = World::new("w", None, FrontendConfig::default());
    let softc = w.softc();
    // More I/O than one task run performs (TASK_ROUNDS batches of BATCH).
    let per_run = crate::dev::TASK_ROUNDS * crate::store::BATCH;
    let n = (per_run + 20) as u64;
    for i in 0..n {
        let bio = w.bio(BioOp::Write, (i % 400) * 8, 7, i + 1);
        w.frontend.borrow_mut().submit(bio).expect("write");
    }
    // Deliver the guest's event, then one task run only: it stops at its budget and asks
    // for another run.
    for port in 1..64 {
        if take_pending(w.dom0, port) {
            let _ = w.xen.deliver(port);
        }
    }
    let before = shim::with(|s| s.rdwr);
    assert_eq!(fake::run_tasks(), 1);
    let rdwr = shim::with(|s| s.rdwr) - before;
    assert_eq!(rdwr, per_run, "one run performs its budget");
    assert!(
        fake::taskqueues().iter().any(|t| t.due),
        "the task asked for itself again"
    );
    w.run(2000);
    assert_eq!(w.completions().len() as u64, n);
    assert_eq!(w.stat(softc, DevStat::Writes), n);
    drop(w.reg.take());
}

#[test]
fn detach_performs_what_was_accepted_and_answers_it() {
    let _kernel = fake::session();
    shim::reset();
    let mut w = World::new("w", None, FrontendConfig::default());
    let per_run = crate::dev::TASK_ROUNDS * crate::store::BATCH;
    let n = (per_run + 40) as u64;
    for i in 0..n {
        let bio = w.bio(BioOp::Write, i * 8, (i % 250) as u8 + 1, i + 1);
        w.frontend.borrow_mut().submit(bio).expect("write");
    }
    for port in 1..64 {
        if take_pending(w.dom0, port) {
            let _ = w.xen.deliver(port);
        }
    }
    // One run of the task, then the device goes with work left: queued in the store or
    // still in the rings.
    assert_eq!(fake::run_tasks(), 1);
    let softc = w.softc();
    let taken = w.stat(softc, DevStat::Requests);
    let performed = shim::with(|s| s.rdwr);
    assert!(
        taken > performed as u64,
        "{taken} taken, {performed} performed"
    );
    drop(w.reg.take());
    // Everything the core took from the rings was performed and answered.
    let performed = shim::with(|s| s.rdwr) as u64;
    assert_eq!(performed, taken);
    let _ = w.frontend.borrow_mut().poll();
    let done = w.completions();
    assert_eq!(done.len() as u64, taken, "answered");
    assert!(done.iter().all(|c| c.1), "{done:?}");
    let image = std::fs::read(&w.path).unwrap();
    for (tag, _, _) in &done {
        let i = tag - 1;
        let at = usize::try_from(i * 4096).unwrap();
        assert!(
            image[at..at + 4096]
                .iter()
                .all(|b| *b == (i % 250) as u8 + 1),
            "write {tag} landed"
        );
    }
    let left = w.xen.outstanding();
    assert_eq!(
        (left.ports, left.mappings, left.pages),
        (0, 0, 0),
        "{left:?}"
    );
    assert!(fake::taskqueues().is_empty());
    assert_eq!(shim::with(|s| (s.opened, s.closed)), (1, 1));
}

#[test]
fn the_tunables_shape_what_a_connection_uses() {
    let _kernel = fake::session();
    shim::reset();
    fake::set_env("hw.xbbd.max_queues", "1");
    fake::set_env("hw.xbbd.max_ring_page_order", "0");
    fake::set_env("hw.xbbd.copy_pool_pages", "1");
    let mut w = World::new("w", None, FrontendConfig::default());
    let softc = w.softc();
    assert_eq!(w.stat(softc, DevStat::Queues), 1);
    assert_eq!(w.stat(softc, DevStat::RingPages), 1);
    // One queue's pool, raised to one largest request's worth, instead of 4 x 512 pages.
    let per_request = 256 + xen_blkback::proto::MAX_INDIRECT_PAGES;
    let pages = w.xen.outstanding().pages;
    assert!(
        (per_request..per_request + 8).contains(&pages),
        "{pages} pages for a pool of {per_request}"
    );
    for i in 0..40u64 {
        let bio = w.bio(BioOp::Write, i * 8, 0x33, i + 1);
        w.frontend.borrow_mut().submit(bio).expect("write");
    }
    w.run(2000);
    let done = w.completions();
    assert_eq!(done.len(), 40);
    assert!(done.iter().all(|c| c.1));
    drop(w.reg.take());
    assert_eq!(w.xen.outstanding().pages, 0);
}

#[test]
fn a_broken_ring_found_by_the_task_is_reported_through_the_xenbus_thread() {
    let _kernel = fake::session();
    shim::reset();
    let mut w = World::new("w", None, FrontendConfig::default());
    let softc = w.softc();
    let ring = w
        .rings
        .lock()
        .unwrap()
        .first()
        .copied()
        .expect("a mapped ring");
    // A hostile guest moves its request producer far past what the ring holds.
    let rsp_prod = ring.load_acquire_u32(8).unwrap();
    ring.store_release_u32(0, rsp_prod.wrapping_add(100_000))
        .unwrap();
    for port in 1..64 {
        let _ = w.xen.deliver(port);
    }
    // The task finds it; it needs xenstore to report it, so it asks for the xenbus thread.
    assert_eq!(fake::run_tasks(), 1);
    assert_eq!(
        w.stat(softc, DevStat::Connected),
        1,
        "not torn down by the task"
    );
    w.run(200);
    let mut tool = w.xs.client(0);
    let state = xen_xenbus::Store::read_string(&mut tool, &format!("{}/state", be_dir()));
    // Closing, and Closed once the frontend followed.
    assert!(
        matches!(state.as_deref(), Ok("5" | "6")),
        "the backend closes: {state:?}"
    );
    let error = xen_xenbus::Store::read_string(&mut tool, &format!("{}/error", be_dir()));
    assert!(
        error.as_ref().is_ok_and(|e| e.contains("ring")),
        "the reason is published: {error:?}"
    );
    drop(w.reg.take());
    let left = w.xen.outstanding();
    assert_eq!(
        (left.ports, left.mappings, left.pages),
        (0, 0, 0),
        "{left:?}"
    );
}
