//! Host tests of xbd.ko's glue: the C entry points against fake KPI symbols (`fake`, below,
//! and `freebsd_kpi::fake`), and the disk glue driving the real blkfront core against the
//! real blkback core over xensim (`Rig`).
#![allow(unsafe_code)]
#![expect(
    clippy::cast_possible_truncation,
    reason = "host-only test code: small page and sector arithmetic"
)]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use xen_blkback::{Backend, BackendConfig};
use xen_blkfront::{FrontendConfig, FrontendEnv, PageRun};
use xen_tests::blk::drivers::BackDriver;
use xen_tests::blk::file_store::{temp_image, FileStore, Mode};
use xen_tests::blk::sim::{take_pending, Log, SimBackEnv, SimFrontEnv};
use xen_tests::xensim::xenstored::{SimTransport, XenstoreSim};
use xen_tests::xensim::{DomainHandle, Rng, SimConfig, SimHypervisor};
use xen_xenbus::bus::XenStore;
use xen_xenbus::{Access, Bus, Device, Driver, Error as XsErr, Perm, Role, XenbusState};

use super::*;

#[path = "../../fake_xenrs_api.rs"]
mod fake_xenrs_api;
use crate::disk::{errno, BioHandle, BioRequest, Cmd, Detach, DevStat, XbdDisk};
use crate::sys::{Kernel, SoftcBox};
use freebsd_kpi::fake;

/// Fakes of the shim's functions (`xbd_kmod.c`), recording what the glue asked for.
mod shim {
    use std::collections::BTreeMap;
    use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
    use std::sync::{Mutex, PoisonError};

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Created {
        pub softc: usize,
        pub unit: u32,
        pub sectorsize: u32,
        pub mediasize: i64,
        pub maxsize: u32,
        pub stripesize: i64,
        pub flags: u32,
        pub descr: String,
    }

    #[derive(Debug, Default)]
    pub struct State {
        /// (bio, error, resid) in completion order.
        pub done: Vec<(usize, i32, i64)>,
        /// Virtual page address -> physical address.
        pub phys: BTreeMap<usize, u64>,
        pub created: Vec<Created>,
        pub resized: Vec<i64>,
        pub destroyed: usize,
        pub live_disks: usize,
        pub sysctl_live: usize,
        pub next: usize,
    }

    pub static STATE: Mutex<Option<State>> = Mutex::new(None);

    pub fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
        let mut g = STATE.lock().unwrap_or_else(PoisonError::into_inner);
        f(g.get_or_insert_with(State::default))
    }

    pub fn reset() {
        with(|s| *s = State::default());
    }

    #[no_mangle]
    pub extern "C" fn xenrs_xbd_biodone(bp: *mut c_void, error: c_int, resid: i64) {
        with(|s| s.done.push((bp as usize, error, resid)));
    }

    #[no_mangle]
    pub extern "C" fn xenrs_xbd_vtophys(va: *const c_void) -> u64 {
        with(|s| {
            *s.phys
                .get(&(va as usize))
                .expect("vtophys of an unmapped page")
        })
    }

    /// # Safety
    /// `descr` is NUL-terminated.
    #[no_mangle]
    pub unsafe extern "C" fn xenrs_xbd_disk_create(
        softc: *mut c_void,
        unit: c_uint,
        sectorsize: c_uint,
        mediasize: i64,
        maxsize: c_uint,
        stripesize: i64,
        flags: c_uint,
        descr: *const c_char,
    ) -> *mut c_void {
        // SAFETY: NUL-terminated by contract.
        let descr = unsafe { CStr::from_ptr(descr) }
            .to_string_lossy()
            .into_owned();
        with(|s| {
            s.created.push(Created {
                softc: softc as usize,
                unit,
                sectorsize,
                mediasize,
                maxsize,
                stripesize,
                flags,
                descr,
            });
            s.live_disks += 1;
            s.next += 1;
            (0x1000 + s.next) as *mut c_void
        })
    }

    #[no_mangle]
    pub extern "C" fn xenrs_xbd_disk_resize(_disk: *mut c_void, mediasize: i64) -> c_int {
        with(|s| s.resized.push(mediasize));
        0
    }

    #[no_mangle]
    pub extern "C" fn xenrs_xbd_disk_destroy(_disk: *mut c_void) {
        with(|s| {
            s.destroyed += 1;
            s.live_disks -= 1;
        });
    }

    #[no_mangle]
    pub extern "C" fn xenrs_xbd_sysctl_attach(_softc: *mut c_void, _unit: c_uint) -> *mut c_void {
        with(|s| {
            s.sysctl_live += 1;
            s.next += 1;
            (0x9000 + s.next) as *mut c_void
        })
    }

    #[no_mangle]
    pub extern "C" fn xenrs_xbd_sysctl_detach(_ctx: *mut c_void) {
        with(|s| s.sysctl_live -= 1);
    }
}

// ---------------------------------------------------------------- module and tunables

#[test]
fn load_registers_the_vbd_frontend_and_unload_unregisters_it() {
    let _kernel = fake::session();
    fake_xenrs_api::reset(1);
    assert_eq!(xenrs_xbd_load(), 0);
    assert!(MODULE_SLOT.is_loaded());
    assert!(fake::console().starts_with("xbd: loaded (rings up to 2^4 pages, 4 queue(s)"));
    assert_eq!(
        fake_xenrs_api::with(|s| s
            .registered
            .iter()
            .map(|r| (r.0, r.1.clone()))
            .collect::<Vec<_>>()),
        vec![(0, String::from("vbd"))]
    );
    let mut disks = 7u64;
    // SAFETY: `disks` is a live local.
    assert_eq!(unsafe { xenrs_xbd_stat(0, &mut disks) }, 0);
    assert_eq!(disks, 0);
    assert_eq!(xenrs_xbd_quiesce(), 0);
    assert_eq!(xenrs_xbd_unload(), 0);
    assert!(!MODULE_SLOT.is_loaded());
    assert_eq!(
        fake_xenrs_api::with(|s| (s.registered.len(), s.unregistered)),
        (0, 1)
    );
    assert_eq!(fake::heap_blocks_out(), 0);
}

#[test]
fn kernel_xen_hands_a_watch_event_its_bus_does_not_claim_to_on_watch() {
    use std::sync::{Arc, Mutex};
    use xenrs_api::XenServices;
    struct Idle;
    impl<S: XenStore + ?Sized> Driver<S> for Idle {
        fn devtype(&self) -> &str {
            "vbd"
        }
        fn probe(&mut self, _xs: &mut S, _dev: &mut Device) -> Result<(), XsErr> {
            Ok(())
        }
        fn otherend_changed(
            &mut self,
            _xs: &mut S,
            _dev: &mut Device,
            _state: XenbusState,
        ) -> Result<(), XsErr> {
            Ok(())
        }
        fn remove(&mut self, _xs: &mut S, _dev: &mut Device) {}
    }
    let _kernel = fake::session();
    fake_xenrs_api::reset(1);
    let xen = xenrs_api::kernel::KernelXen::new().expect("xen.ko's API");
    let seen: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
    let record = seen.clone();
    let reg = xen
        .register_driver_with_hooks(
            Role::Frontend,
            Box::new(Idle),
            xenrs_api::Hooks {
                on_kick: None,
                on_watch: Some(Box::new(move |_bus, _xs, id, ev| {
                    record.lock().unwrap().push((id.0, ev.path.clone()));
                })),
            },
        )
        .expect("register");
    let handle = fake_xenrs_api::with(|s| s.registered[0].2);
    // xen.ko's xenbus thread: start (the store answers ENXIO here, so the bus has no root
    // watch), then an event of a watch the driver added itself.
    assert!(fake_xenrs_api::deliver(handle, 0, 0, c""));
    assert!(fake_xenrs_api::deliver(
        handle,
        1,
        77,
        c"/local/domain/0/backend/vbd/1/51712/sectors"
    ));
    assert_eq!(
        *seen.lock().unwrap(),
        [(
            77,
            String::from("/local/domain/0/backend/vbd/1/51712/sectors")
        )]
    );
    drop(reg);
    assert!(
        !fake_xenrs_api::deliver(handle, 1, 77, c"/x"),
        "unregistered"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn load_refuses_a_xen_ko_of_another_api_version() {
    let _kernel = fake::session();
    fake_xenrs_api::reset(2);
    assert_eq!(xenrs_xbd_load(), 45);
    assert!(!MODULE_SLOT.is_loaded());
    let console = fake::console();
    assert!(console.contains("xenrs API 2, this module 1"), "{console}");
    assert!(
        console.contains("xbd: load failed: EOPNOTSUPP"),
        "{console}"
    );
    assert_eq!(fake_xenrs_api::with(|s| s.registered.len()), 0);
    fake_xenrs_api::reset(1);
}

#[test]
fn tunables_are_read_and_bad_ones_rejected_with_a_reason() {
    let _kernel = fake::session();
    fake::set_env("hw.xbd.max_ring_page_order", "2");
    fake::set_env("hw.xbd.max_queues", "0");
    fake::set_env("hw.xbd.max_indirect_segments", "lots");
    fake::set_env("hw.xbd.persistent_grants", "no");
    let c = config_from_tunables();
    assert_eq!(c.max_ring_page_order, 2);
    assert_eq!(c.max_queues, FrontendConfig::default().max_queues);
    assert_eq!(
        c.max_indirect_segments,
        FrontendConfig::default().max_indirect_segments
    );
    assert!(!c.persistent);
    let console = fake::console();
    assert!(
        console.contains(
            "xbd: loader tunable hw.xbd.max_queues=\"0\": out of range (allowed: 1..=16); using the default"
        ),
        "{console}"
    );
    assert!(
        console.contains("hw.xbd.max_indirect_segments=\"lots\": not a number"),
        "{console}"
    );
    assert_eq!(fake::env_copies_out(), 0);
}

#[test]
fn sysctl_leaves_agree_with_the_shim() {
    let shim = include_str!("../xbd_kmod.c");
    let start = shim.find("xbd_kmod_leaves[] = {").expect("leaf table");
    let table = &shim[start..];
    let names: Vec<&str> = table
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

// ---------------------------------------------------------------- the rig

const FE: u16 = 1;
const VDEV: u32 = 51712;
const SECTORS: u64 = 8192;

fn be_dir() -> String {
    format!("/local/domain/0/backend/vbd/{FE}/{VDEV}")
}

fn fe_dir() -> String {
    format!("/local/domain/{FE}/device/vbd/{VDEV}")
}

type Disk = XbdDisk<'static, SimFrontEnv, Kernel>;
type Xs = xen_xenbus::Xs<SimTransport>;

/// The xbd glue as the frontend bus's vbd driver (what xen.ko's registration will call).
struct XbdDriver(Rc<RefCell<Disk>>);

impl<S: XenStore + ?Sized> Driver<S> for XbdDriver {
    fn devtype(&self) -> &str {
        "vbd"
    }
    fn probe(&mut self, xs: &mut S, dev: &mut Device) -> Result<(), XsErr> {
        self.0.borrow_mut().probe(xs, dev)
    }
    fn otherend_changed(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        self.0.borrow_mut().otherend_changed(xs, dev, state)
    }
    fn remove(&mut self, xs: &mut S, dev: &mut Device) {
        let _ = self.0.borrow_mut().detach(xs, dev);
    }
}

/// Dom0 with blkback on a file, a guest with the xbd glue, xenstored and buses.
struct Rig {
    _sim: SimHypervisor,
    xs: XenstoreSim,
    back_dom: &'static DomainHandle,
    front_dom: &'static DomainHandle,
    be_xs: Xs,
    fe_xs: Xs,
    be_bus: Bus<Xs>,
    fe_bus: Bus<Xs>,
    backend: Rc<RefCell<Backend<'static, SimBackEnv, FileStore>>>,
    disk: Rc<RefCell<Disk>>,
    rng: Rng,
    /// Stop the backend (a slow or wedged dom0).
    backend_paused: bool,
}

impl Rig {
    fn new(seed: u64, trusted: bool, cfg: FrontendConfig) -> Rig {
        Self::build(seed, trusted, cfg, false)
    }

    /// `cdrom`: a read-only CD-ROM (`mode` r, `device-type` cdrom).
    fn build(seed: u64, trusted: bool, cfg: FrontendConfig, cdrom: bool) -> Rig {
        shim::reset();
        let sim = SimHypervisor::new(SimConfig {
            seed,
            machine_pages: 4096,
            maptrack_limit: 16384,
            ..SimConfig::default()
        });
        let (back_dom, front_dom) = xenrs_api::sim::dom0_and_guest(&sim, 768, FE, 1536);
        let log = Log::default();
        let store =
            FileStore::create(&temp_image("xbd-glue"), SECTORS, Mode::InOrder).expect("disk image");
        let xs = XenstoreSim::new();
        let mut be_xs = xs.client(0);
        let mut fe_xs = xs.client(FE);
        toolstack_attach(&xs, trusted, cdrom);
        let backend = Rc::new(RefCell::new(Backend::new(
            SimBackEnv::new(back_dom, log.clone()),
            BackendConfig::default(),
        )));
        let disk = Rc::new(RefCell::new(XbdDisk::new(
            SimFrontEnv::new(front_dom, log),
            cfg,
            sys::kernel_for_tests(),
            0,
        )));
        let mut be_bus = Bus::new(Role::Backend, 0);
        be_bus.register(Box::new(BackDriver {
            be: backend.clone(),
            store: Rc::new(RefCell::new(Some(store))),
        }));
        let mut fe_bus = Bus::new(Role::Frontend, FE);
        fe_bus.register(Box::new(XbdDriver(disk.clone())));
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
            disk,
            rng: Rng::new(seed),
            backend_paused: false,
        };
        rig.run(2000);
        rig
    }

    fn pump_xenstore(&mut self) -> bool {
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
                if !self.fe_bus.handle_event(&mut self.fe_xs, id, &ev) {
                    let disk = self.disk.clone();
                    let _ = self
                        .fe_bus
                        .with_device(&mut self.fe_xs, &fe_dir(), |_, xs, dev| {
                            disk.borrow_mut().on_watch(xs, dev, id)
                        });
                }
            }
            if n == 0 {
                break;
            }
            any = true;
        }
        any
    }

    fn step(&mut self) -> bool {
        let mut any = self.pump_xenstore();
        if !self.backend_paused {
            let mut pending = false;
            for p in self.backend.borrow().ports() {
                pending |= take_pending(self.back_dom, p);
            }
            let ready = self
                .backend
                .borrow()
                .store()
                .is_some_and(|s| s.completions_ready() > 0);
            if pending || ready {
                any = true;
                let r = self.backend.borrow_mut().poll();
                if r.control || self.backend.borrow().control_pending() {
                    let be = self.backend.clone();
                    let _ = self
                        .be_bus
                        .with_device(&mut self.be_xs, &be_dir(), |_, xs, dev| {
                            be.borrow_mut().service_control(xs, dev)
                        });
                }
            }
            let mut be = self.backend.borrow_mut();
            if let Some(s) = be.store_mut() {
                any |= s.run_all(&mut self.rng) > 0;
            }
        }
        let mut pending = false;
        for p in self.disk.borrow().frontend().ports() {
            pending |= take_pending(self.front_dom, p);
        }
        if pending {
            any = true;
            let r = self.disk.borrow_mut().poll();
            if r.control {
                let disk = self.disk.clone();
                let _ = self
                    .fe_bus
                    .with_device(&mut self.fe_xs, &fe_dir(), |_, xs, dev| {
                        disk.borrow_mut().service_control(xs, dev)
                    });
            }
        }
        any
    }

    fn run(&mut self, max: usize) {
        let mut idle = 0;
        for _ in 0..max {
            if self.step() {
                idle = 0;
            } else {
                idle += 1;
                if idle >= 3 {
                    return;
                }
            }
        }
    }

    /// `count` contiguous guest pages, mapped (for the fake `vtophys`) at their addresses.
    fn buffer(&self, count: u32) -> PageRun<'static> {
        let run = self
            .disk
            .borrow()
            .frontend()
            .env()
            .alloc_pages(count)
            .expect("guest pages");
        let base = run.mem.as_ptr() as usize;
        shim::with(|s| {
            for i in 0..u64::from(count) {
                s.phys
                    .insert(base + (i as usize) * 4096, (run.gfn + i) << 12);
            }
        });
        run
    }

    fn strategy(&self, handle: usize, cmd: Cmd, offset: i64, length: i64, data: usize) {
        self.disk.borrow_mut().strategy(BioRequest {
            handle: BioHandle(handle),
            cmd,
            ordered: false,
            offset,
            length,
            data,
        });
    }

    fn image(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.backend
            .borrow()
            .store()
            .expect("store")
            .read_image(offset, &mut buf)
            .expect("read image");
        buf
    }
}

fn toolstack_attach(xs: &XenstoreSim, trusted: bool, cdrom: bool) {
    let mut d = xs.daemon();
    let be = [Perm::new(Access::None, 0), Perm::new(Access::Read, FE)];
    let fe = [Perm::new(Access::None, FE), Perm::new(Access::Read, 0)];
    let (bd, fd) = (be_dir(), fe_dir());
    for (k, v) in [
        ("frontend", fd.as_str()),
        ("frontend-id", "1"),
        ("params", "/dev/md0"),
        ("type", "phy"),
        ("mode", if cdrom { "r" } else { "w" }),
        ("online", "1"),
        ("state", "1"),
    ] {
        d.put(&format!("{bd}/{k}"), v.as_bytes(), &be);
    }
    for (k, v) in [
        ("backend", bd.as_str()),
        ("backend-id", "0"),
        ("virtual-device", "51712"),
        ("device-type", if cdrom { "cdrom" } else { "disk" }),
        ("trusted", if trusted { "1" } else { "0" }),
        ("state", "1"),
    ] {
        d.put(&format!("{fd}/{k}"), v.as_bytes(), &fe);
    }
}

fn done() -> Vec<(usize, i32, i64)> {
    shim::with(|s| s.done.clone())
}

fn result_of(handle: usize) -> Option<(i32, i64)> {
    done()
        .into_iter()
        .find(|(h, _, _)| *h == handle)
        .map(|(_, e, r)| (e, r))
}

// ---------------------------------------------------------------- the data path

#[test]
fn connect_creates_the_disk_and_bios_round_trip_through_the_core() {
    let _kernel = fake::session();
    let mut rig = Rig::new(7, true, FrontendConfig::default());
    assert_eq!(
        (
            rig.fe_bus.device(&fe_dir()).map(Device::state),
            rig.disk.borrow().frontend().is_connected()
        ),
        (Some(XenbusState::Connected), true)
    );
    let created = shim::with(|s| s.created.clone());
    assert_eq!(created.len(), 1, "one disk_create on connect");
    let c = &created[0];
    assert_eq!(
        (c.unit, c.sectorsize, c.mediasize),
        (0, 512, (SECTORS * 512) as i64)
    );
    assert_eq!(c.descr, "Xen PV disk");
    // Indirect segments negotiated: d_maxsize beyond the 11-segment direct limit.
    assert!(c.maxsize > 10 * 4096, "maxsize {}", c.maxsize);
    assert_eq!(c.flags & 0x4, 0, "writable");
    assert_ne!(c.flags & 0x2, 0, "the file store flushes");

    // An aligned two-page write at sector 8, then a read of it into another buffer.
    let wbuf = rig.buffer(2);
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    wbuf.mem.copy_from_slice(0, &pattern).unwrap();
    rig.strategy(1, Cmd::Write, 4096, 8192, wbuf.mem.as_ptr() as usize);
    rig.run(500);
    assert_eq!(result_of(1), Some((0, 0)));
    assert_eq!(rig.image(4096, 8192), pattern);

    let rbuf = rig.buffer(2);
    rbuf.mem.fill(0, 8192, 0xee).unwrap();
    rig.strategy(2, Cmd::Read, 4096, 8192, rbuf.mem.as_ptr() as usize);
    rig.run(500);
    assert_eq!(result_of(2), Some((0, 0)));
    let mut got = vec![0u8; 8192];
    rbuf.mem.copy_to_slice(0, &mut got).unwrap();
    assert_eq!(got, pattern);

    // Flush and delete complete; an unknown command and a misaligned offset are refused.
    rig.strategy(3, Cmd::Flush, 0, 0, 0);
    rig.strategy(4, Cmd::Delete, 0, 4096, 0);
    rig.strategy(5, Cmd::Other, 0, 512, 0);
    rig.strategy(6, Cmd::Read, 100, 512, rbuf.mem.as_ptr() as usize);
    assert_eq!(result_of(5), Some((errno::EOPNOTSUPP, 512)));
    assert_eq!(result_of(6), Some((errno::EINVAL, 512)));
    rig.run(500);
    assert_eq!(result_of(3), Some((0, 0)));
    assert_eq!(result_of(4), Some((0, 0)));
    assert_eq!(rig.image(0, 4096), vec![0u8; 4096], "discarded");
    let stats = rig.disk.borrow().stats();
    assert_eq!(
        (stats.bios, stats.completed, stats.errors, stats.bounced),
        (6, 6, 2, 0)
    );
    assert_eq!(rig.disk.borrow().stat(DevStat::Completed as u32), Some(6));
    assert_eq!(
        rig.disk.borrow().stat(DevStat::Sectors as u32),
        Some(SECTORS)
    );
    assert_eq!(rig.disk.borrow().stat(99), None);
    // Every bio completed exactly once.
    let mut handles: Vec<usize> = done().iter().map(|d| d.0).collect();
    handles.sort_unstable();
    assert_eq!(handles, vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn unaligned_buffers_are_bounced_both_ways() {
    let _kernel = fake::session();
    let mut rig = Rig::new(11, false, FrontendConfig::default());
    let wbuf = rig.buffer(3);
    // 6 KiB starting 100 bytes into a page: not describable by blkif segments.
    let pattern: Vec<u8> = (0..6144u32).map(|i| (i % 251) as u8).collect();
    wbuf.mem.copy_from_slice(100, &pattern).unwrap();
    rig.strategy(
        1,
        Cmd::Write,
        512 * 40,
        6144,
        wbuf.mem.as_ptr() as usize + 100,
    );
    rig.run(500);
    assert_eq!(result_of(1), Some((0, 0)));
    assert_eq!(rig.image(512 * 40, 6144), pattern);

    let rbuf = rig.buffer(3);
    rbuf.mem.fill(0, 3 * 4096, 0x55).unwrap();
    rig.strategy(
        2,
        Cmd::Read,
        512 * 40,
        6144,
        rbuf.mem.as_ptr() as usize + 3000,
    );
    rig.run(500);
    assert_eq!(result_of(2), Some((0, 0)));
    let mut got = vec![0u8; 6144];
    rbuf.mem.copy_to_slice(3000, &mut got).unwrap();
    assert_eq!(got, pattern);
    // Bytes around the buffer are untouched.
    let mut edge = [0u8; 4];
    rbuf.mem.copy_to_slice(2996, &mut edge).unwrap();
    assert_eq!(edge, [0x55; 4]);
    rbuf.mem.copy_to_slice(3000 + 6144, &mut edge).unwrap();
    assert_eq!(edge, [0x55; 4]);
    assert_eq!(rig.disk.borrow().stats().bounced, 2);
}

#[test]
fn detach_drains_in_flight_bios_and_nothing_completes_after_it() {
    let _kernel = fake::session();
    let mut rig = Rig::new(3, true, FrontendConfig::default());
    let buf = rig.buffer(1);
    // A wedged backend: the bios are on the ring and never answered.
    rig.backend_paused = true;
    for h in 1..=4 {
        rig.strategy(
            h,
            Cmd::Write,
            (h as i64) * 4096,
            4096,
            buf.mem.as_ptr() as usize,
        );
    }
    rig.run(50);
    assert!(done().is_empty(), "nothing answered yet");
    assert_eq!(rig.disk.borrow().stat(DevStat::InFlight as u32), Some(4));
    // The driver is detached (kldunload / device removed): every bio completes with EIO.
    let detach = rig
        .fe_bus
        .with_device(&mut rig.fe_xs, &fe_dir(), |_, xs, dev| {
            rig.disk.borrow_mut().detach(xs, dev)
        });
    assert_eq!(detach, Some(Detach::Done));
    let d = done();
    assert_eq!(d.len(), 4);
    assert!(
        d.iter().all(|&(_, e, r)| e == errno::EIO && r == 4096),
        "{d:?}"
    );
    assert_eq!(shim::with(|s| (s.destroyed, s.live_disks)), (1, 0));
    // A bio arriving after detach is refused at once; the backend waking up changes nothing.
    rig.strategy(9, Cmd::Read, 0, 4096, buf.mem.as_ptr() as usize);
    assert_eq!(result_of(9), Some((errno::ENXIO, 4096)));
    rig.backend_paused = false;
    rig.run(200);
    assert_eq!(done().len(), 5, "no completion after detach");
    assert_eq!(rig.disk.borrow().outstanding(), 0);
}

#[test]
fn a_full_core_queue_makes_bios_wait_in_order() {
    let _kernel = fake::session();
    let cfg = FrontendConfig {
        max_bios: 2,
        ..FrontendConfig::default()
    };
    let mut rig = Rig::new(5, true, cfg);
    let before = done().len();
    let buf = rig.buffer(1);
    for h in 100..106 {
        rig.strategy(h, Cmd::Write, 0, 4096, buf.mem.as_ptr() as usize);
    }
    assert!(rig.disk.borrow().stats().waits >= 4);
    rig.run(1000);
    let order: Vec<usize> = done()[before..].iter().map(|d| d.0).collect();
    assert_eq!(order, vec![100, 101, 102, 103, 104, 105]);
    assert!(done()[before..].iter().all(|d| d.1 == 0));
}

#[test]
fn a_backend_resize_becomes_disk_resize() {
    let _kernel = fake::session();
    let mut rig = Rig::new(13, true, FrontendConfig::default());
    assert_eq!(shim::with(|s| s.created.len()), 1);
    // The toolstack grows the backing store; the backend publishes the new size.
    if let Some(store) = rig.backend.borrow_mut().store_mut() {
        store.resize(SECTORS * 2).expect("grow the image");
    }
    let be = rig.backend.clone();
    let changed = rig
        .be_bus
        .with_device(&mut rig.be_xs, &be_dir(), |_, xs, dev| {
            be.borrow_mut().check_resize(xs, dev)
        });
    assert_eq!(changed, Some(Ok(true)));
    rig.run(200);
    assert_eq!(
        shim::with(|s| s.resized.clone()),
        vec![(SECTORS * 2 * 512) as i64]
    );
    assert_eq!(
        rig.disk.borrow().params().map(|p| p.media_size),
        Some(SECTORS * 2 * 512)
    );
    assert_eq!(
        rig.disk.borrow().stat(DevStat::Sectors as u32),
        Some(SECTORS * 2)
    );
    // A bio beyond the old end now reaches the disk.
    let buf = rig.buffer(1);
    rig.strategy(
        1,
        Cmd::Read,
        (SECTORS * 512) as i64 + 4096,
        4096,
        buf.mem.as_ptr() as usize,
    );
    rig.run(200);
    assert_eq!(result_of(1), Some((0, 0)));
}

#[test]
fn a_cdrom_is_write_protected_and_refuses_writes() {
    let _kernel = fake::session();
    let mut rig = Rig::build(17, true, FrontendConfig::default(), true);
    let created = shim::with(|s| s.created.clone());
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].descr, "Xen PV CD-ROM");
    assert_ne!(created[0].flags & 0x4, 0, "DISKFLAG_WRITE_PROTECT");
    let buf = rig.buffer(1);
    rig.strategy(1, Cmd::Write, 0, 4096, buf.mem.as_ptr() as usize);
    assert_eq!(result_of(1), Some((errno::EROFS, 4096)));
    rig.strategy(2, Cmd::Read, 0, 4096, buf.mem.as_ptr() as usize);
    rig.run(200);
    assert_eq!(result_of(2), Some((0, 0)));
}

// ---------------------------------------------------------------- the C entry points

struct Recorder(Arc<Mutex<Vec<BioRequest>>>);

impl sys::GeomDisk for Recorder {
    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn strategy(&mut self, req: BioRequest) {
        self.0.lock().unwrap().push(req);
    }
    fn stat(&self, which: u32) -> Option<u64> {
        (which == 0).then(|| self.0.lock().unwrap().len() as u64)
    }
}

#[test]
fn strategy_and_sysctl_entry_points_reach_the_device_under_its_lock() {
    let _kernel = fake::session();
    shim::reset();
    let softc = SoftcBox::new(3).expect("softc");
    assert_eq!((fake::locks_out(), shim::with(|s| s.sysctl_live)), (2, 1));
    let raw = softc.as_raw();
    // No device yet (attach not finished): refused with ENXIO.
    // SAFETY: a live softc; the bio handle is only recorded by the fake biodone.
    unsafe { sys::xenrs_xbd_strategy(raw, 0x51 as *mut _, 0, 0, 0, 512, core::ptr::null_mut()) };
    assert_eq!(result_of(0x51), Some((errno::ENXIO, 512)));
    let seen = Arc::new(Mutex::new(Vec::new()));
    softc.with(|d| *d = Some(Box::new(Recorder(seen.clone()))));
    // SAFETY: as above.
    unsafe { sys::xenrs_xbd_strategy(raw, 0x52 as *mut _, 1, 1, 4096, 8192, 0x7000 as *mut _) };
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[BioRequest {
            handle: BioHandle(0x52),
            cmd: Cmd::Write,
            ordered: true,
            offset: 4096,
            length: 8192,
            data: 0x7000
        }]
    );
    // A bio while a xenbus callback holds the device lock (sleeping in xenstore, say): it
    // waits in the queue, and the callback runs it when it lets go; d_strategy never blocks.
    softc.with(|_| {
        // SAFETY: as above.
        unsafe { sys::xenrs_xbd_strategy(raw, 0x53 as *mut _, 0, 0, 0, 512, 0x9000 as *mut _) };
        assert_eq!(seen.lock().unwrap().len(), 1, "not run under the holder");
    });
    assert_eq!(
        seen.lock()
            .unwrap()
            .iter()
            .map(|r| r.handle.0)
            .collect::<Vec<_>>(),
        vec![0x52, 0x53]
    );
    let mut v = 0u64;
    // SAFETY: live softc, `v` a live local.
    assert_eq!(unsafe { sys::xenrs_xbd_dev_stat(raw, 0, &mut v) }, 0);
    assert_eq!(v, 2);
    // SAFETY: as above.
    assert_eq!(unsafe { sys::xenrs_xbd_dev_stat(raw, 5, &mut v) }, 2);
    assert_eq!(fake::locks_held(), 0);
    softc.with(|d| *d = None);
    softc.free(&sys::EventSink::default());
    assert_eq!((fake::locks_out(), shim::with(|s| s.sysctl_live)), (0, 0));
    assert_eq!(fake::heap_blocks_out(), 0);
}

/// A device that keeps asking for a retry (held grants) until told otherwise.
struct Holder(Arc<Mutex<(u32, bool)>>);

impl sys::GeomDisk for Holder {
    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn strategy(&mut self, _req: BioRequest) {}
    fn stat(&self, _which: u32) -> Option<u64> {
        None
    }
    fn event(&mut self) -> sys::Again {
        let mut g = self.0.lock().unwrap();
        g.0 += 1;
        if g.1 {
            sys::Again::Later
        } else {
            sys::Again::No
        }
    }
}

#[test]
fn held_grants_bring_the_task_back_from_a_timer() {
    let _kernel = fake::session();
    shim::reset();
    let softc = SoftcBox::new(4).expect("softc");
    let state = Arc::new(Mutex::new((0, true)));
    softc.with(|d| *d = Some(Box::new(Holder(state.clone()))));
    let sink = sys::EventSink::default();
    softc.connect(&sink);
    sink.fire();
    assert_eq!(fake::run_tasks(), 1);
    assert_eq!(state.lock().unwrap().0, 1);
    assert_eq!(
        fake::delays(),
        vec![sys::RETRY_MS],
        "a retry is asked for while grants are held"
    );
    // The timer fires: the task runs again; once nothing is held, no further retry.
    state.lock().unwrap().1 = false;
    assert_eq!(fake::run_delayed(), 1);
    assert_eq!(state.lock().unwrap().0, 2);
    assert_eq!(fake::delays().len(), 1);
    assert_eq!(fake::run_delayed(), 0);
    softc.with(|d| *d = None);
    softc.free(&sink);
    assert_eq!((fake::taskqueues().len(), fake::locks_out()), (0, 0));
}

// ---------------------------------------------------------------- through the xenrs API

type Host = xenrs_api::sim::SimXen;

/// The guest side through `HostXen` (as xen.ko would run it), dom0 as in [`Rig`].
struct ApiRig {
    xs: XenstoreSim,
    back_dom: &'static DomainHandle,
    front_dom: &'static DomainHandle,
    be_xs: Xs,
    be_bus: Bus<Xs>,
    backend: Rc<RefCell<Backend<'static, SimBackEnv, FileStore>>>,
    xen: Arc<Host>,
    reg: Option<<Host as xenrs_api::XenServices>::Reg>,
    live: Arc<std::sync::atomic::AtomicUsize>,
    kick: Option<Arc<xen::KickSlot>>,
    rng: Rng,
    backend_paused: bool,
    _sim: SimHypervisor,
}

impl ApiRig {
    fn new(seed: u64) -> ApiRig {
        use xenrs_api::XenServices;
        shim::reset();
        let sim = SimHypervisor::new(SimConfig {
            seed,
            machine_pages: 4096,
            maptrack_limit: 16384,
            ..SimConfig::default()
        });
        let (back_dom, front_dom) = xenrs_api::sim::dom0_and_guest(&sim, 768, FE, 1536);
        let store =
            FileStore::create(&temp_image("xbd-api"), SECTORS, Mode::InOrder).expect("disk image");
        let xs = XenstoreSim::new();
        let mut be_xs = xs.client(0);
        toolstack_attach(&xs, true, false);
        let backend = Rc::new(RefCell::new(Backend::new(
            SimBackEnv::new(back_dom, Log::default()),
            BackendConfig::default(),
        )));
        let mut be_bus = Bus::new(Role::Backend, 0);
        be_bus.register(Box::new(BackDriver {
            be: backend.clone(),
            store: Rc::new(RefCell::new(Some(store))),
        }));
        be_bus.start(&mut be_xs).expect("backend bus");
        let xen = Arc::new(xenrs_api::sim::xen(front_dom, &xs, 4));
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let kick = Arc::new(xen::KickSlot::new().expect("kick slot"));
        let driver = xen::XbdDriver::new(
            xen.clone(),
            FrontendConfig::default(),
            live.clone(),
            kick.clone(),
        );
        let reg = xen
            .register_driver_with_hooks(
                Role::Frontend,
                Box::new(driver),
                xenrs_api::Hooks {
                    on_kick: Some(Box::new(xen::on_kick)),
                    on_watch: Some(Box::new(xen::on_watch)),
                },
            )
            .expect("register");
        kick.set(xenrs_api::Registration::kicker(&reg));
        let mut rig = ApiRig {
            xs,
            back_dom,
            front_dom,
            be_xs,
            be_bus,
            backend,
            xen,
            reg: Some(reg),
            live,
            kick: Some(kick),
            rng: Rng::new(seed),
            backend_paused: false,
            _sim: sim,
        };
        rig.run(3000);
        rig
    }

    fn step(&mut self) -> bool {
        let mut any = false;
        self.xs.settle();
        any |= self.xen.pump(64).unwrap_or(0) > 0;
        while let Ok(Some((id, ev))) = self.be_xs.poll_event() {
            any = true;
            self.be_bus.handle_event(&mut self.be_xs, id, &ev);
        }
        if !self.backend_paused {
            let mut pending = false;
            for p in self.backend.borrow().ports() {
                pending |= take_pending(self.back_dom, p);
            }
            let ready = self
                .backend
                .borrow()
                .store()
                .is_some_and(|s| s.completions_ready() > 0);
            if pending || ready {
                any = true;
                let _ = self.backend.borrow_mut().poll();
            }
            if let Some(s) = self.backend.borrow_mut().store_mut() {
                any |= s.run_all(&mut self.rng) > 0;
            }
        }
        // xen.ko's event thread: every pending guest port's handler.
        for port in 1..64 {
            if take_pending(self.front_dom, port) {
                any |= self.xen.deliver(port);
            }
        }
        // The disks' taskqueue threads.
        any |= fake::run_tasks() > 0;
        any
    }

    fn run(&mut self, max: usize) {
        let mut idle = 0;
        for _ in 0..max {
            if self.step() {
                idle = 0;
            } else {
                idle += 1;
                if idle >= 3 {
                    return;
                }
            }
        }
    }

    /// One mapped guest page for a bio's buffer.
    fn page(&self) -> xen_shmem::SharedMem<'static> {
        let gfn = self.front_dom.alloc_page().expect("page");
        let mem = self.front_dom.page(gfn).expect("view");
        shim::with(|s| s.phys.insert(mem.as_ptr() as usize, gfn << 12));
        mem
    }

    fn image(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.backend
            .borrow()
            .store()
            .expect("store")
            .read_image(offset, &mut buf)
            .expect("read image");
        buf
    }
}

/// GEOM's call of `d_strategy` through the shim's entry point.
fn geom_strategy(softc: usize, bio: usize, cmd: i32, offset: i64, length: i64, data: usize) {
    // SAFETY: `softc` is the d_drv1 the fake disk_create recorded (a live softc until
    // disk_destroy); the bio handle is only recorded by the fake biodone.
    unsafe {
        sys::xenrs_xbd_strategy(
            softc as *mut _,
            bio as *mut _,
            cmd,
            0,
            offset,
            length,
            data as *mut _,
        );
    }
}

#[test]
fn a_new_backend_size_reaches_disk_resize_through_the_xenrs_api_watch_hook() {
    use xen_xenbus::Store as _;
    let _kernel = fake::session();
    let mut rig = ApiRig::new(23);
    assert_eq!(shim::with(|s| s.created.len()), 1);
    assert!(shim::with(|s| s.resized.is_empty()));
    // A backend that publishes a new size without rewriting its `state`: the bus's watch on
    // the other end's state does not fire, only the blkfront core's own watch on `sectors`,
    // which the bus does not claim. It reaches the disk through the registration's
    // `on_watch` hook (xen.ko's xenbus thread -> KernelXen's trampoline, here HostXen::pump).
    rig.be_xs
        .write(
            &format!("{}/sectors", be_dir()),
            format!("{}", SECTORS * 2).as_bytes(),
        )
        .expect("write sectors");
    rig.run(300);
    assert_eq!(
        shim::with(|s| s.resized.clone()),
        vec![(SECTORS * 2 * 512) as i64]
    );
    assert_eq!(rig.live.load(std::sync::atomic::Ordering::Acquire), 1);
    drop(rig.reg.take());
    drop(rig.kick.take());
    let left = rig.xen.outstanding();
    assert_eq!(
        (left.ports, left.grants, left.pages, left.registrations),
        (0, 0, 0, 0),
        "{left:?}"
    );
}

#[test]
fn attach_io_detach_through_the_xenrs_api_leaves_nothing_behind() {
    let _kernel = fake::session();
    let mut rig = ApiRig::new(21);
    let created = shim::with(|s| s.created.clone());
    assert_eq!(created.len(), 1, "the disk appeared on connect");
    assert_eq!(rig.live.load(std::sync::atomic::Ordering::Acquire), 1);
    let softc = created[0].softc;
    let during = rig.xen.outstanding();
    assert!(
        during.ports > 0 && during.grants > 0 && during.pages > 0,
        "{during:?}"
    );

    let buf = rig.page();
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 13) as u8).collect();
    buf.copy_from_slice(0, &pattern).unwrap();
    geom_strategy(softc, 1, 1, 8192, 4096, buf.as_ptr() as usize);
    rig.run(500);
    assert_eq!(result_of(1), Some((0, 0)));
    assert_eq!(rig.image(8192, 4096), pattern);
    buf.fill(0, 4096, 0).unwrap();
    geom_strategy(softc, 2, 0, 8192, 4096, buf.as_ptr() as usize);
    rig.run(500);
    assert_eq!(result_of(2), Some((0, 0)));
    let mut got = vec![0u8; 4096];
    buf.copy_to_slice(0, &mut got).unwrap();
    assert_eq!(got, pattern);

    // A kick (what the disk's task asks for after a backend violation) runs on the xenbus
    // thread and looks at every device's other end again; a healthy disk stays connected.
    rig.kick.as_ref().expect("slot").kick();
    rig.run(100);
    assert_eq!(rig.live.load(std::sync::atomic::Ordering::Acquire), 1);
    geom_strategy(softc, 5, 0, 8192, 4096, buf.as_ptr() as usize);
    rig.run(200);
    assert_eq!(result_of(5), Some((0, 0)));

    // Bios in flight when the driver goes (kldunload xbd / xen.ko stopping the bus).
    rig.backend_paused = true;
    geom_strategy(softc, 3, 1, 0, 4096, buf.as_ptr() as usize);
    geom_strategy(softc, 4, 0, 4096, 4096, buf.as_ptr() as usize);
    rig.run(20);
    assert_eq!(result_of(3), None);
    let ports = during.ports;
    drop(rig.reg.take());
    // The module's own reference to the kick slot goes with it at unload.
    drop(rig.kick.take());
    assert_eq!(result_of(3), Some((errno::EIO, 4096)));
    assert_eq!(result_of(4), Some((errno::EIO, 4096)));
    assert_eq!(shim::with(|s| (s.destroyed, s.live_disks)), (1, 0));
    assert_eq!(rig.live.load(std::sync::atomic::Ordering::Acquire), 0);
    // Nothing fires after detach: no port has a handler, the backend waking up completes
    // nothing, and everything the driver held is given back.
    for port in 1..64 {
        assert!(!rig.xen.deliver(port), "port {port} still delivers");
    }
    rig.backend_paused = false;
    let completions = done().len();
    rig.run(200);
    assert_eq!(done().len(), completions);
    let left = rig.xen.outstanding();
    assert_eq!(
        (left.ports, left.grants, left.pages, left.registrations),
        (0, 0, 0, 0),
        "{left:?} (had {ports} ports)"
    );
    assert_eq!(
        (
            fake::locks_out(),
            shim::with(|s| s.sysctl_live),
            fake::taskqueues().len()
        ),
        (0, 0, 0)
    );
}
