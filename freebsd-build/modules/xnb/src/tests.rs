//! Host tests of xnb.ko's glue: the C entry points against fake KPI symbols, and the vif
//! glue driving the real netback core against the real netfront core over xensim.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::rc::Rc;

use xen_netback::config::BackendFeatures;
use xen_netback::Limits;
use xen_netfront::negotiate::{self, FrontendConfig};
use xen_netif::{csum, Csum, PacketMeta};
use xen_tests::net::bus::machine;
use xen_tests::net::pair::Env;
use xen_tests::net::sim::{SimBackend, SimFrontend};
use xen_tests::xensim::xenstored::XenstoreSim;
use xen_xenbus::bus::XenStore;
use xen_xenbus::{Bus, Device, Driver, Error as XsErr, Role, Store, XenbusState};

use super::*;
use crate::vif::{errno, tx, DevStat, MbufHandle, XnbIf};
use freebsd_kpi::fake;
use shim::console_count;

#[path = "../../fake_xenrs_api.rs"]
mod fake_xenrs_api;

/// Fakes of the shim's functions (`xnb_kmod.c`).
mod shim {
    use std::ffi::{c_char, c_int, c_void};

    include!("../../fake_ifnet.rs");
    fake_ifnet!(xnb, ([u8; 6], String, i32), {});

    /// # Safety
    /// `name` is NUL-terminated; `mac` is valid for 6 bytes.
    #[no_mangle]
    pub unsafe extern "C" fn xenrs_xnb_ifnet_create(
        softc: *mut c_void,
        name: *const c_char,
        mac: *const u8,
        mtu: c_int,
    ) -> *mut c_void {
        let mut m = [0u8; 6];
        // SAFETY: by contract.
        m.copy_from_slice(unsafe { std::slice::from_raw_parts(mac, 6) });
        // SAFETY: by contract.
        let name = unsafe { std::ffi::CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned();
        with(|s| {
            let h = next(s);
            s.ifnets.insert(h, (m, name, mtu));
            s.softcs.insert(h, softc as usize);
            h as *mut c_void
        })
    }

    #[no_mangle]
    pub extern "C" fn xenrs_xnb_now_ns() -> u64 {
        with(|s| {
            s.next += 1;
            s.next as u64 * 1000
        })
    }
}

// ---------------------------------------------------------------- module

#[test]
fn load_registers_the_vif_backend_and_unload_unregisters_it() {
    let _kernel = fake::session();
    fake_xenrs_api::reset(1);
    assert_eq!(xenrs_xnb_load(), 0);
    assert!(fake::console().starts_with("xnb: loaded (up to 4 queue(s) per vif"));
    assert_eq!(
        fake_xenrs_api::with(|s| s
            .registered
            .iter()
            .map(|r| (r.0, r.1.clone()))
            .collect::<Vec<_>>()),
        vec![(1, String::from("vif"))]
    );
    assert_eq!(xenrs_xnb_quiesce(), 0);
    assert_eq!(xenrs_xnb_unload(), 0);
    assert_eq!(
        fake_xenrs_api::with(|s| (s.registered.len(), s.unregistered)),
        (0, 1)
    );
    assert_eq!(fake::heap_blocks_out(), 0);
}

#[test]
fn tunables_are_read_and_bad_ones_rejected_with_a_reason() {
    let _kernel = fake::session();
    fake::set_env("hw.xnb.max_queues", "2");
    fake::set_env("hw.xnb.rx_queue_packets", "8");
    fake::set_env("hw.xnb.split_evtchn", "nope");
    let (f, l) = config_from_tunables();
    assert_eq!(f.max_queues, 2);
    assert!(f.split_evtchn);
    assert!(!f.ctrl_ring);
    assert_eq!(l.rx_queue_packets, Limits::default().rx_queue_packets);
    let console = fake::console();
    assert!(
        console.contains("xnb: loader tunable hw.xnb.rx_queue_packets=\"8\": out of range (allowed: 16..=65536); using the default"),
        "{console}"
    );
    assert!(
        console.contains("hw.xnb.split_evtchn=\"nope\": not a boolean"),
        "{console}"
    );
}

#[test]
fn sysctl_leaves_agree_with_the_shim_and_names_fit() {
    let shim = include_str!("../xnb_kmod.c");
    let start = shim.find("xnb_kmod_leaves[] = {").expect("leaf table");
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
    let n = vif::vif_name(32752, 12345).expect("fits");
    assert_eq!(&n[..15], b"xnb32752.12345\0");
    assert!(
        vif::vif_name(65535, 4_000_000_000).is_none(),
        "longer than IFNAMSIZ"
    );
}

// ---------------------------------------------------------------- over xensim

type Vif = XnbIf<'static, SimBackend<'static, 'static>, sys::Kernel>;

struct TestDriver(Rc<RefCell<Vif>>);

impl<S: XenStore + ?Sized> Driver<S> for TestDriver {
    fn devtype(&self) -> &str {
        "vif"
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
    fn remove(&mut self, _xs: &mut S, _dev: &mut Device) {
        self.0.borrow_mut().detach();
    }
}

type Xs = xen_xenbus::Xs<xen_tests::xensim::xenstored::SimTransport>;
type FrontSetup = xen_netfront::negotiate::Setup<'static, SimFrontend<'static, 'static>>;

/// Dom0 with the xnb glue on its bus; the guest's netfront driven by hand.
struct Rig {
    env: &'static Env<'static>,
    xs: &'static XenstoreSim,
    be_xs: Xs,
    fe_xs: Xs,
    be_bus: Bus<Xs>,
    vif: Rc<RefCell<Vif>>,
    front: Option<(FrontSetup, SimFrontend<'static, 'static>)>,
}

impl Rig {
    fn new() -> Rig {
        Self::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> Rig {
        shim::reset();
        let (env, xs) = machine(2, "00:16:3e:0a:0b:0c");
        let w = env.world;
        let plat = SimBackend::new(&w.dom0, &env.be_hub);
        let vif = Rc::new(RefCell::new(XnbIf::new(
            plat,
            BackendFeatures {
                max_queues: 2,
                ctrl_ring: false,
                ..BackendFeatures::default()
            },
            limits,
            sys::kernel_for_tests(),
        )));
        let mut be_xs = xs.client(0);
        let fe_xs = xs.client(w.guest.domid());
        let mut be_bus = Bus::new(Role::Backend, 0);
        be_bus.register(Box::new(TestDriver(vif.clone())));
        be_bus.start(&mut be_xs).expect("bus");
        let mut rig = Rig {
            env,
            xs,
            be_xs,
            fe_xs,
            be_bus,
            vif,
            front: None,
        };
        rig.settle();
        rig
    }

    fn settle(&mut self) {
        for _ in 0..64 {
            self.xs.settle();
            let mut n = 0;
            while let Ok(Some((id, ev))) = self.be_xs.poll_event() {
                n += 1;
                self.be_bus.handle_event(&mut self.be_xs, id, &ev);
            }
            if n == 0 {
                break;
            }
        }
    }

    fn be_state(&self) -> XenbusState {
        self.be_bus
            .device(&self.env.world.be_dir())
            .map_or(XenbusState::Unknown, Device::state)
    }

    fn fe_write_state(&mut self, state: &str) {
        let fd = self.env.world.fe_dir();
        self.fe_xs.write_str(&format!("{fd}/state"), state).unwrap();
        self.settle();
    }

    /// The guest's half: read the offer, set up, publish, Connected.
    fn frontend_connect(&mut self) {
        let w = self.env.world;
        let (fd, bd) = (w.fe_dir(), w.be_dir());
        assert_eq!(self.be_state(), XenbusState::InitWait);
        let cfg = FrontendConfig {
            queues: 2,
            ctrl_ring: false,
            ..FrontendConfig::default()
        };
        let offer = negotiate::read_offer(&mut self.fe_xs, &bd).unwrap();
        let mut plat = SimFrontend::new(&w.guest, &self.env.fe_hub, &self.env.table);
        let setup = negotiate::setup(&mut plat, 0, &offer, &cfg, true).unwrap();
        negotiate::publish(
            &mut self.fe_xs,
            &fd,
            &setup.keys,
            setup.split,
            setup.ctrl_keys,
            &offer,
            &cfg,
        )
        .unwrap();
        self.front = Some((setup, plat));
        self.fe_write_state("4");
        assert_eq!(self.be_state(), XenbusState::Connected);
    }

    fn frontend_close(&mut self) {
        self.fe_write_state("5");
        if let Some((mut setup, mut plat)) = self.front.take() {
            setup.queues.clear();
            setup.ctrl = None;
            setup.resources.release(&mut plat);
        }
        self.fe_write_state("6");
    }

    /// The guest receives what dom0 put on its RX rings.
    fn guest_rx(&mut self) -> Vec<(Vec<u8>, PacketMeta)> {
        let mut got = Vec::new();
        if let Some((setup, _)) = self.front.as_mut() {
            for q in &mut setup.queues {
                let _ = q.poll_rx(|d, m| got.push((d.to_vec(), *m)));
            }
        }
        got
    }

    fn guest_send(&mut self, q: usize, data: &[u8], meta: &PacketMeta) {
        let (setup, _) = self.front.as_mut().expect("connected");
        setup.queues[q].send(data, meta).expect("sent");
    }

    fn bridge_transmit(&self, frame: &[u8], offload: u32, flowid: u32) -> i32 {
        let m = shim::mbuf(frame);
        self.vif.borrow_mut().transmit(
            MbufHandle(m),
            u32::try_from(frame.len()).unwrap(),
            offload,
            flowid,
            true,
        )
    }
}

fn udp_frame(payload: usize, partial: bool) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8 + payload];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x00, 0x16, 0x3e, 0x0a, 0x0b, 0x0c]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = u16::try_from(20 + 8 + payload).unwrap();
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 7]);
    f[30..34].copy_from_slice(&[10, 0, 0, 255]);
    f[34..36].copy_from_slice(&5000u16.to_be_bytes());
    f[36..38].copy_from_slice(&6000u16.to_be_bytes());
    f[38..40].copy_from_slice(&u16::try_from(8 + payload).unwrap().to_be_bytes());
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = u8::try_from(i % 199).unwrap_or(0);
    }
    if partial {
        csum::set_pseudo(&mut f).unwrap();
    } else {
        csum::fill_full(&mut f).unwrap();
    }
    f
}

#[test]
fn a_vif_carries_frames_both_ways_and_follows_the_frontend() {
    let _kernel = fake::session();
    let mut rig = Rig::new();
    let guest = rig.env.world.guest.domid();
    let ifnets = shim::with(|s| s.ifnets.clone());
    assert_eq!(ifnets.len(), 1);
    let (&ifp, (mac, name, mtu)) = ifnets.iter().next().unwrap();
    assert_eq!(
        (*mac, name.as_str(), *mtu),
        (vif::VIF_MAC, format!("xnb{guest}.0").as_str(), 1500)
    );
    assert_eq!(
        rig.vif.borrow().name(),
        Some(format!("xnb{guest}.0").as_str())
    );
    assert_eq!(
        rig.bridge_transmit(&udp_frame(10, false), 0, 0),
        errno::ENETDOWN
    );
    rig.frontend_connect();
    assert!(rig.vif.borrow().link());
    assert_eq!(shim::with(|s| s.links.clone()), vec![true]);

    // Guest -> bridge: a csum_blank frame arrives complete (the bridge may forward it).
    let blank = udp_frame(300, true);
    rig.guest_send(
        0,
        &blank,
        &PacketMeta {
            csum: Csum::Partial,
            ..PacketMeta::default()
        },
    );
    let full = udp_frame(40, false);
    rig.guest_send(1, &full, &PacketMeta::default());
    let up = rig.vif.borrow_mut().event();
    assert_eq!(up.len(), 2);
    let rx = shim::with(|s| s.rx.clone());
    let frames: Vec<&(Vec<u8>, bool)> = up
        .iter()
        .map(|(i, m)| {
            assert_eq!(i.0, ifp);
            &rx[&m.0]
        })
        .collect();
    let blank_up = frames.iter().find(|f| f.0.len() == blank.len()).unwrap();
    assert_eq!(csum::verify(&blank_up.0), Some(true));
    assert_eq!(blank_up.0[..40], blank[..40]);
    let full_up = frames.iter().find(|f| f.0.len() == full.len()).unwrap();
    assert_eq!(full_up.0, full);
    assert_eq!(
        rig.vif.borrow().stat(DevStat::FromGuestPackets as u32),
        Some(2)
    );

    // Bridge -> guest: a local partial checksum travels as csum_blank; a TSO frame (never
    // announced) is refused; the flow hash picks the queue.
    let local = udp_frame(500, true);
    assert_eq!(rig.bridge_transmit(&local, tx::PARTIAL, 3), 0);
    assert_eq!(rig.bridge_transmit(&udp_frame(64, false), 0, 0), 0);
    assert_eq!(
        rig.bridge_transmit(&local, tx::PARTIAL | tx::TSO4, 0),
        errno::EINVAL
    );
    let got = rig.guest_rx();
    assert_eq!(got.len(), 2);
    let l = got.iter().find(|g| g.0.len() == local.len()).unwrap();
    assert_eq!(l.0, local);
    assert_eq!(l.1.csum, Csum::Partial);
    assert_eq!(
        rig.vif.borrow().stat(DevStat::ToGuestPackets as u32),
        Some(2)
    );
    assert_eq!(
        rig.vif.borrow().stat(DevStat::ToGuestDropped as u32),
        Some(2)
    );
    assert_eq!(
        rig.vif.borrow().stat(DevStat::Domid as u32),
        Some(u64::from(guest))
    );

    // The guest closes and comes back: link down, then InitWait again, then up.
    rig.frontend_close();
    assert!(!rig.vif.borrow().link());
    assert_eq!(rig.be_state(), XenbusState::Closed);
    rig.fe_write_state("1");
    assert_eq!(rig.be_state(), XenbusState::InitWait);
    rig.frontend_connect();
    assert_eq!(shim::with(|s| s.links.clone()), vec![true, false, true]);
    assert_eq!(rig.vif.borrow().stat(DevStat::Connections as u32), Some(2));
    assert_eq!(rig.bridge_transmit(&full, 0, 0), 0);
    assert_eq!(rig.guest_rx().len(), 1);

    // Detach: interface gone; frames from the guest reach nothing afterwards.
    rig.vif.borrow_mut().detach();
    assert_eq!(shim::with(|s| (s.ifnets.len(), s.destroyed)), (0, 1));
    assert_eq!(rig.vif.borrow().name(), None);
    let _ = rig
        .front
        .as_mut()
        .map(|(s, _)| s.queues[0].send(&full, &PacketMeta::default()));
    assert!(rig.vif.borrow_mut().event().is_empty());
    assert_eq!(rig.bridge_transmit(&full, 0, 0), errno::ENETDOWN);
    assert_eq!(
        shim::with(|s| s.input.len()),
        0,
        "nothing was passed up by hand here"
    );
}

#[test]
fn a_guest_that_stops_taking_frames_stalls_its_vif_and_recovers() {
    let _kernel = fake::session();
    // The fake clock advances 1 us per reading; a stall after 200 us of no buffers.
    let mut rig = Rig::with_limits(Limits {
        stall_timeout_ns: 200_000,
        ..Limits::default()
    });
    rig.frontend_connect();
    let frame = udp_frame(64, false);
    // The guest takes nothing: its posted buffers fill, then the queue, then the vif stalls
    // and later frames are refused (ENOBUFS) instead of piling up.
    let mut refused = 0;
    for _ in 0..1200 {
        if rig.bridge_transmit(&frame, 0, 0) == errno::ENOBUFS {
            refused += 1;
        }
    }
    assert!(refused > 0, "a stalled vif refuses frames");
    let delivered_before = rig.guest_rx().len();
    assert!(delivered_before > 0);
    // The guest takes its frames (reposting buffers) and says so: the vif's event lifts the
    // stall and frames flow again.
    let _ = rig.vif.borrow_mut().event();
    let after = udp_frame(77, false);
    assert_eq!(rig.bridge_transmit(&after, 0, 0), 0);
    // Frames queued before it go first, a budget's worth per round.
    let mut arrived = false;
    for _ in 0..32 {
        let _ = rig.vif.borrow_mut().event();
        if rig.guest_rx().iter().any(|g| g.0 == after) {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "the frame after the stall arrives");
}

// ---------------------------------------------------------------- through the xenrs API

/// xnb.ko loaded through the simulated xenrs API in dom0 (4 grant frames; one queue, no
/// control ring, default limits), over the toolstack's vifs of `macs`.
fn load_xnb(macs: &[&str]) -> shim::Loaded {
    let features = BackendFeatures {
        max_queues: 1,
        ctrl_ring: false,
        ..BackendFeatures::default()
    };
    shim::load_through_the_api(
        macs,
        |w| &w.dom0,
        4,
        Role::Backend,
        |xen, live, kick| {
            Box::new(xen::XnbDriver::new(
                xen,
                features,
                Limits::default(),
                live,
                kick,
            ))
        },
    )
}

/// The guest's side of its netfront in the xenrs-API tests: its event hub and its grant table
/// (8 frames), kept for the rest of the test process like the domains.
fn guest_front_parts(
    guest: &'static xen_tests::xensim::DomainHandle,
) -> (
    &'static xen_tests::net::sim::Hub<'static>,
    &'static xen_tests::net::sim::SimGrantTable<'static>,
) {
    let hub = xen_tests::net::bus::leak(xen_tests::net::sim::Hub::new(guest));
    let table = xen_tests::net::bus::leak(
        xen_gnttab::GrantTable::new(
            guest,
            xen_tests::xensim::grants::SimTableFrames::new(guest),
            8,
        )
        .expect("guest grant table"),
    );
    (hub, table)
}

/// A netfront the guest drives by hand, and its platform.
type GuestFront = (
    negotiate::Setup<'static, SimFrontend<'static, 'static>>,
    SimFrontend<'static, 'static>,
);

/// The guest's netfront for the vif whose nodes are `fd` and `bd`, by hand (one queue, no
/// control ring): the backend's offer read, the queue set up over `parts`
/// ([`guest_front_parts`]), its keys published and `Connected` written.
fn guest_front_connect(
    xsg: &mut xen_xenbus::Xs<xen_tests::xensim::xenstored::SimTransport>,
    guest: &'static xen_tests::xensim::DomainHandle,
    (hub, table): (
        &'static xen_tests::net::sim::Hub<'static>,
        &'static xen_tests::net::sim::SimGrantTable<'static>,
    ),
    fd: &str,
    bd: &str,
) -> GuestFront {
    let cfg = FrontendConfig {
        queues: 1,
        ctrl_ring: false,
        ..FrontendConfig::default()
    };
    let offer = negotiate::read_offer(xsg, bd).unwrap();
    let mut plat = SimFrontend::new(guest, hub, table);
    let setup = negotiate::setup(&mut plat, 0, &offer, &cfg, true).unwrap();
    negotiate::publish(
        xsg,
        fd,
        &setup.keys,
        setup.split,
        setup.ctrl_keys,
        &offer,
        &cfg,
    )
    .unwrap();
    xsg.write_str(&format!("{fd}/state"), "4").unwrap();
    (setup, plat)
}

/// What xnb.ko's unload through the xenrs API must leave: no port, grant, page, foreign mapping or
/// registration of the simulated services, and nothing of the kernel's ([`shim::assert_unloaded`]).
fn assert_all_released(xen: &xenrs_api::sim::SimXen) {
    let left = xen.outstanding();
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
    shim::assert_unloaded();
}

#[test]
fn attach_traffic_detach_through_the_xenrs_api_leaves_nothing_behind() {
    let _kernel = fake::session();
    shim::reset();
    let (world, xs, xen, live, kick, reg) = load_xnb(&["00:16:3e:0a:0b:0c"]);
    let dom0 = &world.dom0;
    let pump = |n: usize| {
        xenrs_api::sim::pump(&xen, xs, n);
    };
    let (ifp, softc) =
        shim::with(|s| s.softcs.iter().next().map(|(i, s)| (*i, *s))).expect("ifnet");
    assert_eq!(live.load(std::sync::atomic::Ordering::Acquire), 1);

    // The guest's netfront, by hand.
    let guest = &world.guest;
    let fe_parts = guest_front_parts(guest);
    let mut xsg = xs.client(guest.domid());
    let (fd, bd) = (world.fe_dir(), world.be_dir());
    let (mut setup, mut fe_plat) = guest_front_connect(&mut xsg, guest, fe_parts, &fd, &bd);
    pump(16);
    assert_eq!(xsg.read_string(&format!("{bd}/state")).unwrap(), "4");
    assert_eq!(shim::with(|s| s.links.clone()), vec![true]);
    let during = xen.outstanding();
    assert!(
        during.ports > 0 && during.mappings > 0 && during.pages > 0,
        "{during:?}"
    );

    // Guest -> bridge: the guest's event reaches xen.ko's event thread, the frame goes up.
    let frame = udp_frame(120, false);
    setup.queues[0]
        .send(&frame, &PacketMeta::default())
        .unwrap();
    assert!(xenrs_api::sim::deliver_pending(&xen, dom0) > 0);
    // The handler only queued the work; the interface's taskqueue thread runs it.
    assert_eq!(shim::with(|s| s.input.len()), 0);
    assert_eq!(fake::run_tasks(), 1);
    let inputs = shim::with(|s| s.input.clone());
    assert_eq!(inputs.len(), 1);
    assert_eq!(shim::with(|s| s.rx[&inputs[0]].0.clone()), frame);

    // Bridge -> guest through the shim's if_transmit entry point.
    let m = shim::mbuf(&frame);
    let len = u32::try_from(frame.len()).unwrap();
    // SAFETY: the softc the fake ifnet_create recorded (live until detach); the mbuf handle
    // is the fake's.
    let rc = unsafe { sys::xenrs_xnb_transmit(softc as *mut _, m as *mut _, len, 0, 0, 0) };
    assert_eq!(rc, sys::KEPT);
    assert_eq!(
        shim::with(|s| s.freed),
        1,
        "copied for the guest, then freed"
    );
    let mut got = Vec::new();
    let _ = setup.queues[0].poll_rx(|d, _| got.push(d.to_vec()));
    assert_eq!(got, vec![frame.clone()]);

    // Detach (kldunload xnb): nothing fires afterwards, nothing is left mapped or bound.
    drop(reg);
    // The module's own reference to the kick slot goes with it at unload.
    drop(kick);
    assert_eq!(
        shim::with(|s| (s.ifnets.contains_key(&ifp), s.destroyed)),
        (false, 1)
    );
    assert_eq!(live.load(std::sync::atomic::Ordering::Acquire), 0);
    let _ = setup.queues[0].send(&frame, &PacketMeta::default());
    for port in 1..64 {
        assert!(
            !xen.deliver(port),
            "port {port} still delivers after detach"
        );
    }
    assert_eq!(shim::with(|s| s.input.len()), 1);
    assert_all_released(&xen);
    setup.queues.clear();
    setup.resources.release(&mut fe_plat);
}

// ---------------------------------------------------------------- a hostile frontend

/// A second mapping, by dom0, of ring `which` ("tx" or "rx") of queue `q` the guest granted:
/// where a frontend that writes whatever it likes puts its indices.
fn hostile_ring(
    rig: &mut Rig,
    q: usize,
    which: &str,
) -> (
    SimBackend<'static, 'static>,
    xen_gnttab::ForeignMapping,
    xen_shmem::SharedMem<'static>,
) {
    use xen_netback::BackendPlatform as _;
    let w = rig.env.world;
    let info = xen_netback::config::read_frontend(
        &mut rig.be_xs,
        &w.fe_dir(),
        &BackendFeatures {
            max_queues: 2,
            ctrl_ring: false,
            ..BackendFeatures::default()
        },
    )
    .expect("the guest's keys");
    let keys = &info.queues[q];
    let gref = if which == "tx" {
        keys.tx_ring_ref
    } else {
        keys.rx_ring_ref
    };
    let mut plat = SimBackend::new(&w.dom0, &rig.env.be_hub);
    let (m, mem) = plat.map_ring(w.guest.domid(), gref).expect("map");
    (plat, m, mem)
}

/// Moves the ring's `req_prod` far beyond what the ring can hold.
fn runaway_req_prod(ring: &xen_shmem::SharedMem<'_>) {
    use xen_ring::sring::REQ_PROD;
    let p = ring.load_acquire_u32(REQ_PROD).unwrap();
    ring.store_release_u32(REQ_PROD, p.wrapping_add(100_000))
        .unwrap();
}

#[test]
fn a_runaway_tx_req_prod_fails_the_vif_once_and_a_fresh_connection_works() {
    use xen_netback::BackendPlatform as _;
    let _kernel = fake::session();
    let mut rig = Rig::new();
    rig.frontend_connect();
    let g = rig.env.world.guest.domid();
    let (mut hplat, hmap, ring) = hostile_ring(&mut rig, 0, "tx");
    runaway_req_prod(&ring);
    assert!(rig.vif.borrow().failure().is_none());
    assert!(rig.vif.borrow_mut().event().is_empty());
    let f = rig.vif.borrow().failure().expect("failed");
    assert_eq!(f.queue, 0);
    assert!(
        matches!(
            f.error,
            xen_netback::QueueError::Ring(xen_ring::Fault::RequestOverflow { .. })
        ),
        "{f:?}"
    );
    let reason = format!("{f}");
    assert!(
        reason.starts_with("queue 0: ring violation: frontend req_prod"),
        "{reason}"
    );
    let line = format!("xnb{g}.0: {reason}; vif failed");
    assert_eq!(console_count(&line), 1, "{}", fake::console());
    // Link down at once; the bridge's frames are refused; counted.
    assert!(!rig.vif.borrow().link());
    assert_eq!(shim::with(|s| s.links.clone()), vec![true, false]);
    assert_eq!(rig.vif.borrow().stat(DevStat::Violations as u32), Some(1));
    assert_eq!(rig.vif.borrow().stat(DevStat::Link as u32), Some(0));
    assert_eq!(
        rig.bridge_transmit(&udp_frame(64, false), 0, 1),
        errno::ENETDOWN
    );
    // The other queue is not looked at either, whatever the guest sends; nothing more is
    // logged.
    rig.guest_send(1, &udp_frame(50, false), &PacketMeta::default());
    runaway_req_prod(&ring);
    for _ in 0..10 {
        assert!(rig.vif.borrow_mut().event().is_empty());
    }
    assert!(!rig.vif.borrow().more());
    assert_eq!(console_count("vif failed"), 1);
    assert_eq!(shim::with(|s| s.input.len()), 0);
    // Nothing in the store from the event path.
    assert!(rig.vif.borrow().needs_report());
    assert_eq!(rig.be_state(), XenbusState::Connected);

    // The kick's run on the xenbus thread: rings unmapped, reason in `error`, Closing.
    xen::on_kick(&mut rig.be_bus, &mut rig.be_xs);
    rig.settle();
    let bd = rig.env.world.be_dir();
    assert_eq!(rig.be_state(), XenbusState::Closing);
    assert_eq!(
        rig.fe_xs.read_string(&format!("{bd}/error")).unwrap(),
        reason
    );
    assert!(!rig.vif.borrow().needs_report());
    assert_eq!(rig.vif.borrow().stat(DevStat::Queues as u32), Some(0));
    xen::on_kick(&mut rig.be_bus, &mut rig.be_xs);
    rig.settle();
    assert_eq!(rig.be_state(), XenbusState::Closing);
    assert_eq!(console_count("vif failed"), 1);

    // The guest closes and starts again: a fresh connection carries frames both ways.
    hplat.unmap_ring(hmap);
    rig.frontend_close();
    assert_eq!(rig.be_state(), XenbusState::Closed);
    rig.fe_write_state("1");
    assert_eq!(rig.be_state(), XenbusState::InitWait);
    rig.frontend_connect();
    assert!(rig.vif.borrow().failure().is_none());
    assert_eq!(shim::with(|s| s.links.clone()), vec![true, false, true]);
    assert_eq!(rig.vif.borrow().stat(DevStat::Violations as u32), Some(1));
    let frame = udp_frame(80, false);
    assert_eq!(rig.bridge_transmit(&frame, 0, 0), 0);
    assert_eq!(
        rig.guest_rx().into_iter().map(|g| g.0).collect::<Vec<_>>(),
        vec![frame.clone()]
    );
    rig.guest_send(0, &frame, &PacketMeta::default());
    assert_eq!(rig.vif.borrow_mut().event().len(), 1);
    rig.vif.borrow_mut().detach();
}

#[test]
fn a_runaway_rx_req_prod_found_on_transmit_fails_the_vif() {
    use xen_netback::BackendPlatform as _;
    let _kernel = fake::session();
    let mut rig = Rig::new();
    rig.frontend_connect();
    let frame = udp_frame(64, false);
    assert_eq!(rig.bridge_transmit(&frame, 0, 0), 0);
    assert_eq!(rig.guest_rx().len(), 1);
    let (mut hplat, hmap, ring) = hostile_ring(&mut rig, 0, "rx");
    runaway_req_prod(&ring);
    // The bridge's frame for queue 0 meets the guest's RX ring: the frame is dropped and the
    // vif fails, from the transmit path.
    assert_eq!(rig.bridge_transmit(&frame, 0, 0), errno::ENETDOWN);
    let f = rig.vif.borrow().failure().expect("failed");
    assert_eq!(f.queue, 0);
    assert!(
        matches!(
            f.error,
            xen_netback::QueueError::Ring(xen_ring::Fault::RequestOverflow { .. })
        ),
        "{f:?}"
    );
    assert_eq!(console_count("vif failed"), 1);
    assert_eq!(shim::with(|s| s.links.clone()), vec![true, false]);
    // Every later frame, for any queue, is refused without touching a ring.
    for flow in 0..4 {
        assert_eq!(rig.bridge_transmit(&frame, 0, flow), errno::ENETDOWN);
    }
    assert_eq!(
        rig.vif.borrow().stat(DevStat::ToGuestDropped as u32),
        Some(5)
    );
    assert_eq!(console_count("vif failed"), 1);
    // The guest closing first also gets the report written before the vif closes.
    hplat.unmap_ring(hmap);
    rig.frontend_close();
    assert_eq!(rig.be_state(), XenbusState::Closed);
    let bd = rig.env.world.be_dir();
    assert_eq!(
        rig.fe_xs.read_string(&format!("{bd}/error")).unwrap(),
        format!("{f}")
    );
    rig.vif.borrow_mut().detach();
}

#[test]
fn through_the_xenrs_api_a_violation_fails_only_its_vif_via_the_kick() {
    let _kernel = fake::session();
    shim::reset();
    let (world, xs, xen, live, kick, reg) = load_xnb(&["00:16:3e:0a:0b:0c", "00:16:3e:0a:0b:0d"]);
    let (dom0, guest) = (&world.dom0, &world.guest);
    let g = guest.domid();
    let pump = |n: usize| {
        xenrs_api::sim::pump(&xen, xs, n);
    };
    assert_eq!(live.load(std::sync::atomic::Ordering::Acquire), 2);
    let ifp_of = |name: &str| {
        shim::with(|s| {
            s.ifnets
                .iter()
                .find(|(_, v)| v.1 == name)
                .map(|(i, _)| (*i, s.softcs[i]))
        })
        .expect("ifnet")
    };
    let (_, softc0) = ifp_of(&format!("xnb{g}.0"));
    let (_, softc1) = ifp_of(&format!("xnb{g}.1"));

    // The guest's netfront for both vifs, by hand.
    let fe_parts = guest_front_parts(guest);
    let mut xsg = xs.client(g);
    let mut fronts = Vec::new();
    for h in 0..2 {
        let fd = format!("/local/domain/{g}/device/vif/{h}");
        let bd = format!("/local/domain/0/backend/vif/{g}/{h}");
        let (setup, plat) = guest_front_connect(&mut xsg, guest, fe_parts, &fd, &bd);
        fronts.push((setup, plat, fd, bd));
    }
    pump(16);
    for (_, _, _, bd) in &fronts {
        assert_eq!(xsg.read_string(&format!("{bd}/state")).unwrap(), "4");
    }

    // The guest breaks vif 0: its TX ring's req_prod runs away.
    let fd0 = fronts[0].2.clone();
    let gref = xsg
        .read_string(&format!("{fd0}/tx-ring-ref"))
        .unwrap()
        .parse::<u32>()
        .unwrap();
    // A second mapping by dom0 of the page the guest granted: the guest's writes, seen.
    let slots = xen_tests::xensim::grants::SimForeignMemory::new(dom0);
    let hostile =
        xen_gnttab::ForeignMapping::map(dom0, &slots, &[(g, gref)], false).expect("map the ring");
    let ring = hostile
        .page(&slots, 0)
        .and_then(|p| p.writable())
        .expect("ring page");
    let frame = udp_frame(90, false);
    fronts[1].0.queues[0]
        .send(&frame, &PacketMeta::default())
        .unwrap();
    // A send (which notifies), then the runaway index over what it published.
    fronts[0].0.queues[0]
        .send(&frame, &PacketMeta::default())
        .unwrap();
    runaway_req_prod(&ring);
    let _ = xenrs_api::sim::deliver_pending(&xen, dom0);
    fake::run_tasks();
    assert_eq!(console_count("vif failed"), 1, "{}", fake::console());
    assert_eq!(
        console_count(&format!("xnb{g}.0: queue 0: ring violation")),
        1
    );
    // vif 1's frame went up, vif 0's did not.
    let inputs = shim::with(|s| s.input.clone());
    assert_eq!(inputs.len(), 1);
    assert_eq!(shim::with(|s| s.rx[&inputs[0]].0.clone()), frame);
    // The task kicked the registration: xen.ko's xenbus thread reports the failure.
    pump(16);
    let bd0 = fronts[0].3.clone();
    let bd1 = fronts[1].3.clone();
    assert_eq!(xsg.read_string(&format!("{bd0}/state")).unwrap(), "5");
    assert!(xsg
        .read_string(&format!("{bd0}/error"))
        .unwrap()
        .starts_with("queue 0: ring violation: frontend req_prod"));
    assert_eq!(xsg.read_string(&format!("{bd1}/state")).unwrap(), "4");
    assert!(xsg.read_string(&format!("{bd1}/error")).is_err());
    let dev_stat = |softc: usize, which: DevStat| shim::dev_stat(softc, which as i32);
    let leaves = [DevStat::Violations, DevStat::Link, DevStat::Queues];
    assert_eq!(leaves.map(|w| dev_stat(softc0, w)), [1, 0, 0]);
    assert_eq!(leaves.map(|w| dev_stat(softc1, w)), [0, 1, 1]);
    // vif 1 carries frames both ways still.
    let m = shim::mbuf(&frame);
    let len = u32::try_from(frame.len()).unwrap();
    // SAFETY: vif 1's live softc; the fake's mbuf.
    let rc = unsafe { sys::xenrs_xnb_transmit(softc1 as *mut _, m as *mut _, len, 0, 0, 0) };
    assert_eq!(rc, sys::KEPT);
    let mut got = Vec::new();
    let _ = fronts[1].0.queues[0].poll_rx(|d, _| got.push(d.to_vec()));
    assert_eq!(got, vec![frame.clone()]);
    // vif 0 refuses the bridge's frames; a storm of events from it does nothing.
    let m = shim::mbuf(&frame);
    // SAFETY: vif 0's live softc; the fake's mbuf.
    let rc = unsafe { sys::xenrs_xnb_transmit(softc0 as *mut _, m as *mut _, len, 0, 0, 0) };
    assert_eq!(rc, sys::KEPT);
    assert_eq!(dev_stat(softc0, DevStat::ToGuestDropped), 1);
    for _ in 0..3 {
        runaway_req_prod(&ring);
        xenrs_api::sim::deliver_all(&xen);
        fake::run_tasks();
        pump(4);
    }
    assert_eq!(console_count("vif failed"), 1);

    // Unload: nothing left behind, the failed vif included.
    let _ = hostile.unmap(dom0, &slots);
    drop(reg);
    drop(kick);
    assert_eq!(live.load(std::sync::atomic::Ordering::Acquire), 0);
    assert_all_released(&xen);
    for (mut setup, mut plat, _, _) in fronts {
        setup.queues.clear();
        setup.resources.release(&mut plat);
    }
}

#[test]
fn a_tx_extra_of_unknown_type_on_queue_1_fails_the_vif_with_that_reason() {
    use xen_netback::BackendPlatform as _;
    use xen_ring::sring::{HEADER_SIZE, REQ_PROD};
    let _kernel = fake::session();
    let mut rig = Rig::new();
    rig.frontend_connect();
    let g = rig.env.world.guest.domid();
    let (mut hplat, hmap, ring) = hostile_ring(&mut rig, 1, "tx");
    // A request that says an extra follows (NETTXF_extra_info), then an extra of type 9
    // (netif knows 1..=5), published together. netif_tx slots are 12 bytes, 256 a page.
    let p = ring.load_acquire_u32(REQ_PROD).unwrap();
    let slot = |i: u32| HEADER_SIZE + usize::try_from(i % 256).unwrap() * 12;
    let mut req = [0u8; 12];
    req[6..8].copy_from_slice(&8u16.to_le_bytes());
    req[10..12].copy_from_slice(&60u16.to_le_bytes());
    ring.copy_from_slice(slot(p), &req).unwrap();
    let mut extra = [0u8; 12];
    extra[0] = 9;
    ring.copy_from_slice(slot(p + 1), &extra).unwrap();
    ring.store_release_u32(REQ_PROD, p + 2).unwrap();
    assert!(rig.vif.borrow_mut().event().is_empty());
    assert_eq!(
        rig.vif.borrow().failure(),
        Some(vif::Failure {
            queue: 1,
            error: xen_netback::QueueError::Tx(xen_netif::tx::TxFault::BadExtraType(9))
        })
    );
    let line = format!("xnb{g}.0: queue 1: TX extra slot of unknown type 9; vif failed");
    assert_eq!(console_count(&line), 1, "{}", fake::console());
    assert!(!rig.vif.borrow().link());
    xen::on_kick(&mut rig.be_bus, &mut rig.be_xs);
    rig.settle();
    let bd = rig.env.world.be_dir();
    assert_eq!(rig.be_state(), XenbusState::Closing);
    assert_eq!(
        rig.fe_xs.read_string(&format!("{bd}/error")).unwrap(),
        "queue 1: TX extra slot of unknown type 9"
    );
    hplat.unmap_ring(hmap);
    rig.frontend_close();
    assert_eq!(rig.be_state(), XenbusState::Closed);
    rig.vif.borrow_mut().detach();
}
