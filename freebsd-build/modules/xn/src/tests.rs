//! Host tests of xn.ko's glue: the C entry points against fake KPI symbols, and the
//! interface glue driving the real netfront core against the real netback core over xensim.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::rc::Rc;

use xen_netback::config::{self as be_config, BackendFeatures};
use xen_netback::Limits;
use xen_netfront::FrontendConfig;
use xen_netif::{csum, Csum, Gso, GsoKind, PacketMeta};
use xen_tests::net::bus::machine;
use xen_tests::net::pair::{Collect, Env};
use xen_tests::net::sim::{SimBackend, SimFrontend};
use xen_tests::xensim::xenstored::XenstoreSim;
use xen_xenbus::bus::XenStore;
use xen_xenbus::{Bus, Device, Driver, Error as XsErr, Role, Store, XenbusState};

use super::*;
use crate::net::{caps, errno, tx, DevStat, IfHandle, MbufHandle, XnIf};
use freebsd_kpi::fake;
use shim::console_count;

#[path = "../../fake_xenrs_api.rs"]
mod fake_xenrs_api;

/// Fakes of the shim's functions (`xn_kmod.c`).
mod shim {
    use std::ffi::{c_char, c_int, c_void};

    include!("../../fake_ifnet.rs");
    fake_ifnet!(xn, ([u8; 6], u32, u32, i32), {
        /// What `xenrs_xn_ipv4` answers.
        ipv4: Option<[u8; 4]>,
    });

    /// # Safety
    /// `mac` is valid for 6 bytes.
    #[no_mangle]
    pub unsafe extern "C" fn xenrs_xn_ifnet_create(
        softc: *mut c_void,
        _name: *const c_char,
        _unit: c_int,
        mac: *const u8,
        caps: u32,
        enabled: u32,
        mtu: c_int,
    ) -> *mut c_void {
        let mut m = [0u8; 6];
        // SAFETY: by contract.
        m.copy_from_slice(unsafe { std::slice::from_raw_parts(mac, 6) });
        with(|s| {
            let h = next(s);
            s.ifnets.insert(h, (m, caps, enabled, mtu));
            s.softcs.insert(h, softc as usize);
            h as *mut c_void
        })
    }

    #[no_mangle]
    pub extern "C" fn xenrs_xn_ifnet_caps(ifp: *mut c_void, caps: u32, enabled: u32) {
        with(|s| {
            let e = s.ifnets.get_mut(&(ifp as usize)).expect("live ifnet");
            e.1 = caps;
            e.2 = enabled;
        });
    }

    /// # Safety
    /// `out` is valid for 4 bytes.
    #[no_mangle]
    pub unsafe extern "C" fn xenrs_xn_ipv4(_ifp: *mut c_void, out: *mut u8) -> c_int {
        match with(|s| s.ipv4) {
            Some(ip) => {
                // SAFETY: by contract.
                unsafe { std::ptr::copy_nonoverlapping(ip.as_ptr(), out, 4) };
                1
            }
            None => 0,
        }
    }
}

// ---------------------------------------------------------------- pure mappings

#[test]
fn offload_flags_map_to_netif_metadata() {
    assert_eq!(tx_meta_of(0, 0), Ok(PacketMeta::default()));
    assert_eq!(
        tx_meta_of(tx::PARTIAL, 0).map(|m| m.csum),
        Ok(Csum::Partial)
    );
    let m = tx_meta_of(tx::PARTIAL | tx::TSO4, 1448).unwrap();
    assert_eq!(
        (m.csum, m.gso),
        (
            Csum::Partial,
            Some(Gso {
                kind: GsoKind::TcpV4,
                size: 1448
            })
        )
    );
    assert_eq!(
        tx_meta_of(tx::TSO6, 1220).map(|m| m.gso.map(|g| g.kind)),
        Ok(Some(GsoKind::TcpV6))
    );
    assert_eq!(tx_meta_of(tx::TSO4, 0), Err(errno::EINVAL));
    assert_eq!(tx_meta_of(tx::TSO4, 70_000), Err(errno::EINVAL));
    assert_eq!(tx_meta_of(tx::TSO4 | tx::TSO6, 1000), Err(errno::EINVAL));
    assert_eq!(net::pick_queue(7, true, 4), 3);
    assert_eq!(net::pick_queue(7, false, 4), 0);
    assert_eq!(net::pick_queue(7, true, 0), 0);
    let cfg = FrontendConfig::default();
    assert_eq!(
        net::config_caps(&cfg),
        caps::TXCSUM | caps::TXCSUM6 | caps::TSO4 | caps::TSO6 | caps::RXCSUM | caps::RXCSUM6
    );
    let no_gso = xen_netfront::BackendOffer {
        sg: true,
        rx_copy: true,
        ..Default::default()
    };
    assert_eq!(
        net::negotiated_caps(&cfg, &no_gso),
        caps::TXCSUM | caps::RXCSUM | caps::RXCSUM6
    );
}

fn tx_meta_of(offload: u32, segsz: u32) -> Result<PacketMeta, i32> {
    net::tx_meta(offload, segsz)
}

// ---------------------------------------------------------------- module

#[test]
fn load_registers_the_vif_frontend_and_unload_unregisters_it() {
    let _kernel = fake::session();
    fake_xenrs_api::reset(1);
    assert_eq!(xenrs_xn_load(), 0);
    assert!(fake::console().starts_with("xn: loaded (up to 4 queue(s), sg 1, tso 1, csum 1/1)"));
    assert_eq!(
        fake_xenrs_api::with(|s| s
            .registered
            .iter()
            .map(|r| (r.0, r.1.clone()))
            .collect::<Vec<_>>()),
        vec![(0, String::from("vif"))]
    );
    assert_eq!(xenrs_xn_quiesce(), 0);
    assert_eq!(xenrs_xn_unload(), 0);
    assert_eq!(
        fake_xenrs_api::with(|s| (s.registered.len(), s.unregistered)),
        (0, 1)
    );
    assert_eq!(fake::heap_blocks_out(), 0);
}

#[test]
fn tunables_are_read_and_bad_ones_rejected_with_a_reason() {
    let _kernel = fake::session();
    fake::set_env("hw.xn.num_queues", "17");
    fake::set_env("hw.xn.tso", "0");
    fake::set_env("hw.xn.csum", "maybe");
    let c = config_from_tunables();
    assert_eq!(c.queues, FrontendConfig::default().queues);
    assert!(!c.gso);
    assert!(c.csum);
    assert!(
        !c.ctrl_ring,
        "no control ring asked for: steering is not configured"
    );
    let console = fake::console();
    assert!(
        console.contains("xn: loader tunable hw.xn.num_queues=\"17\": out of range (allowed: 1..=16); using the default"),
        "{console}"
    );
    assert!(
        console.contains("xn: loader tunable hw.xn.csum=\"maybe\": not a boolean"),
        "{console}"
    );
}

#[test]
fn sysctl_leaves_agree_with_the_shim() {
    let shim = include_str!("../xn_kmod.c");
    let start = shim.find("xn_kmod_leaves[] = {").expect("leaf table");
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

// ---------------------------------------------------------------- over xensim

type Front = XnIf<'static, SimFrontend<'static, 'static>, sys::Kernel>;

struct TestDriver(Rc<RefCell<Front>>);

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

/// The guest with the xn glue on its bus; dom0's netback driven by hand.
struct Rig {
    env: &'static Env<'static>,
    xs: &'static XenstoreSim,
    fe_xs: Xs,
    be_xs: Xs,
    fe_bus: Bus<Xs>,
    xn: Rc<RefCell<Front>>,
    features: BackendFeatures,
    back: Option<(
        xen_netback::Connection<'static, SimBackend<'static, 'static>>,
        SimBackend<'static, 'static>,
    )>,
    /// What the guest published at the last connection (its rings' grants).
    info: Option<be_config::FrontendInfo>,
}

const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x01, 0x02, 0x03];

impl Rig {
    fn new(cfg: FrontendConfig) -> Rig {
        shim::reset();
        let (env, xs) = machine(2, "00:16:3e:01:02:03");
        let w = env.world;
        let plat = SimFrontend::new(&w.guest, &env.fe_hub, &env.table);
        let xn = Rc::new(RefCell::new(XnIf::new(
            plat,
            cfg,
            sys::kernel_for_tests(),
            0,
        )));
        let mut fe_xs = xs.client(w.guest.domid());
        let be_xs = xs.client(0);
        let mut fe_bus = Bus::new(Role::Frontend, w.guest.domid());
        fe_bus.register(Box::new(TestDriver(xn.clone())));
        fe_bus.start(&mut fe_xs).expect("bus");
        let mut rig = Rig {
            env,
            xs,
            fe_xs,
            be_xs,
            fe_bus,
            xn,
            features: BackendFeatures {
                max_queues: 2,
                ctrl_ring: false,
                ..BackendFeatures::default()
            },
            back: None,
            info: None,
        };
        rig.settle();
        rig
    }

    fn settle(&mut self) {
        for _ in 0..64 {
            self.xs.settle();
            let mut n = 0;
            while let Ok(Some((id, ev))) = self.fe_xs.poll_event() {
                n += 1;
                self.fe_bus.handle_event(&mut self.fe_xs, id, &ev);
            }
            if n == 0 {
                break;
            }
        }
    }

    fn be_state(&mut self, state: &str) {
        let bd = self.env.world.be_dir();
        self.be_xs.write_str(&format!("{bd}/state"), state).unwrap();
        self.settle();
    }

    fn fe_state(&self) -> XenbusState {
        self.fe_bus
            .device(&self.env.world.fe_dir())
            .map_or(XenbusState::Unknown, Device::state)
    }

    /// Dom0's half of the handshake: offer, InitWait, then connect to what the guest wrote.
    fn backend_connect(&mut self) {
        let (bd, fd) = (self.env.world.be_dir(), self.env.world.fe_dir());
        be_config::publish(&mut self.be_xs, &bd, &self.features).unwrap();
        self.be_state("2");
        assert_eq!(self.fe_state(), XenbusState::Connected);
        let info = be_config::read_frontend(&mut self.be_xs, &fd, &self.features).unwrap();
        let mut plat = SimBackend::new(&self.env.world.dom0, &self.env.be_hub);
        let conn = xen_netback::connect(
            &mut plat,
            self.env.world.guest.domid(),
            &info,
            Limits::default(),
        )
        .unwrap();
        self.back = Some((conn, plat));
        self.info = Some(info);
        self.be_state("4");
    }

    fn backend_close(&mut self) {
        self.be_state("5");
        if let Some((mut conn, mut plat)) = self.back.take() {
            conn.queues.clear();
            conn.ctrl = None;
            conn.resources.release(&mut plat);
        }
        self.be_state("6");
    }

    /// Dom0 takes what the guest sent.
    fn backend_tx(&mut self) -> Vec<(u16, Vec<u8>, PacketMeta)> {
        let mut io = Collect::default();
        if let Some((conn, _)) = self.back.as_mut() {
            for q in &mut conn.queues {
                let _ = q.process_tx(&mut io);
            }
        }
        io.packets
    }

    /// Dom0 sends `data` to the guest on queue `q`.
    fn backend_rx(&mut self, q: usize, data: &[u8], meta: &PacketMeta) {
        let (conn, _) = self.back.as_mut().expect("connected");
        conn.queues[q].enqueue_rx(data, meta).expect("queued");
        let _ = conn.queues[q].process_rx(0);
    }

    fn transmit(&self, frame: &[u8], offload: u32, segsz: u32, flowid: u32) -> i32 {
        let m = shim::mbuf(frame);
        self.xn.borrow_mut().transmit(
            MbufHandle(m),
            u32::try_from(frame.len()).unwrap(),
            offload,
            segsz,
            flowid,
            true,
        )
    }
}

/// An Ethernet + IPv4 + TCP frame with `payload` bytes, its TCP checksum in the
/// `csum_blank` form (pseudo-header sum only) when `partial`, else complete.
fn tcp_frame(payload: usize, partial: bool) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20 + payload];
    f[0..6].copy_from_slice(&[0x00, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
    f[6..12].copy_from_slice(&MAC);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = u16::try_from(20 + 20 + payload).unwrap();
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 0, 0, 5]);
    f[30..34].copy_from_slice(&[10, 0, 0, 1]);
    f[34..36].copy_from_slice(&4000u16.to_be_bytes());
    f[36..38].copy_from_slice(&80u16.to_be_bytes());
    f[46] = 0x50;
    f[47] = 0x18;
    for (i, b) in f[54..].iter_mut().enumerate() {
        *b = u8::try_from(i % 251).unwrap_or(0);
    }
    if partial {
        csum::set_pseudo(&mut f).unwrap();
    } else {
        csum::fill_full(&mut f).unwrap();
    }
    f
}

#[test]
fn frames_cross_both_ways_with_offloads_queues_and_link_state() {
    let _kernel = fake::session();
    let mut rig = Rig::new(FrontendConfig {
        queues: 2,
        ctrl_ring: false,
        ..FrontendConfig::default()
    });
    // Probe created the interface with the toolstack's MAC; not connected yet.
    let ifnets = shim::with(|s| s.ifnets.clone());
    assert_eq!(ifnets.len(), 1);
    let (&ifp, &(mac, _, _, mtu)) = ifnets.iter().next().unwrap();
    assert_eq!((mac, mtu), (MAC, 1500));
    assert_eq!(
        rig.transmit(&tcp_frame(10, false), 0, 0, 0),
        errno::ENETDOWN
    );
    rig.backend_connect();
    assert!(rig.xn.borrow().link());
    assert_eq!(shim::with(|s| s.links.clone()), vec![true]);

    // Guest -> dom0: checksum offload, TSO, and the flow hash picking the queue.
    let small = tcp_frame(100, true);
    assert_eq!(rig.transmit(&small, tx::PARTIAL, 0, 1), 0);
    let big = tcp_frame(9000, true);
    assert_eq!(rig.transmit(&big, tx::PARTIAL | tx::TSO4, 1448, 2), 0);
    let got = rig.backend_tx();
    assert_eq!(got.len(), 2, "{got:?}");
    let (q0, d0, m0) = &got.iter().find(|p| p.1.len() == small.len()).unwrap();
    assert_eq!((*q0, d0 == &small, m0.csum), (1, true, Csum::Partial));
    let (q1, d1, m1) = &got.iter().find(|p| p.1.len() == big.len()).unwrap();
    assert_eq!((*q1, d1 == &big), (0, true));
    assert_eq!(
        m1.gso,
        Some(Gso {
            kind: GsoKind::TcpV4,
            size: 1448
        })
    );
    assert_eq!(rig.transmit(&[0u8; 70_000], 0, 0, 0), errno::EMSGSIZE);

    // Dom0 -> guest: a csum_blank frame is completed in software and marked valid; a frame
    // without checksum information is passed up unmarked.
    rig.backend_rx(
        0,
        &small,
        &PacketMeta {
            csum: Csum::Partial,
            ..PacketMeta::default()
        },
    );
    let plain = tcp_frame(60, false);
    rig.backend_rx(1, &plain, &PacketMeta::default());
    let inputs = rig.xn.borrow_mut().event();
    assert_eq!(inputs.len(), 2);
    assert!(inputs.iter().all(|(i, _)| *i == IfHandle(ifp)));
    let rx = shim::with(|s| s.rx.clone());
    let (bytes, valid) = &rx[&inputs[0].1 .0];
    assert!(*valid);
    assert_eq!(csum::verify(bytes), Some(true), "checksum completed");
    assert_eq!(bytes[..40], small[..40]);
    assert_eq!(rx[&inputs[1].1 .0], (plain.clone(), false));
    assert_eq!(rig.xn.borrow().stats().rx_sw_csum, 1);
    assert_eq!(rig.xn.borrow().stat(DevStat::RxPackets as u32), Some(2));
    assert_eq!(rig.xn.borrow().stat(DevStat::TxPackets as u32), Some(2));
    assert_eq!(rig.xn.borrow().stat(DevStat::TxDropped as u32), Some(2));
    assert_eq!(rig.xn.borrow().stat(DevStat::Link as u32), Some(1));

    // The backend goes away and comes back: link down, then up, and a gratuitous ARP for
    // the interface's address reaches dom0 first.
    shim::with(|s| s.ipv4 = Some([10, 0, 0, 5]));
    rig.backend_close();
    assert!(!rig.xn.borrow().link());
    assert_eq!(rig.fe_state(), XenbusState::Initialising);
    assert_eq!(rig.transmit(&small, tx::PARTIAL, 0, 1), errno::ENETDOWN);
    rig.backend_connect();
    assert_eq!(shim::with(|s| s.links.clone()), vec![true, false, true]);
    let got = rig.backend_tx();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].1,
        xen_netfront::arp::gratuitous(MAC, [10, 0, 0, 5]).to_vec()
    );
    assert_eq!(rig.xn.borrow().stat(DevStat::Connections as u32), Some(2));
    // Counters of the first connection are kept.
    assert_eq!(rig.xn.borrow().stat(DevStat::TxPackets as u32), Some(3));

    // Detach: the interface is gone, and nothing reaches the stack afterwards.
    rig.xn.borrow_mut().detach();
    assert_eq!(shim::with(|s| (s.ifnets.len(), s.destroyed)), (0, 1));
    assert!(rig.xn.borrow_mut().event().is_empty());
    assert_eq!(rig.transmit(&small, tx::PARTIAL, 0, 1), errno::ENETDOWN);
}

#[test]
fn a_backend_without_gso_narrows_the_capabilities() {
    let _kernel = fake::session();
    let mut rig = Rig::new(FrontendConfig {
        queues: 1,
        ctrl_ring: false,
        ..FrontendConfig::default()
    });
    rig.features.gso = false;
    rig.features.ipv6_csum = false;
    rig.backend_connect();
    let (c, e) = shim::with(|s| s.ifnets.values().next().map(|v| (v.1, v.2))).unwrap();
    assert_eq!(c & (caps::TSO4 | caps::TSO6 | caps::TXCSUM6), 0);
    assert_eq!(e, c);
    assert_eq!(rig.xn.borrow().caps().0, c);
    // The stack would not ask for TSO now; if it did, the glue refuses cleanly.
    assert_eq!(
        rig.transmit(&tcp_frame(3000, true), tx::PARTIAL | tx::TSO4, 1448, 0),
        errno::EINVAL
    );
}

// ---------------------------------------------------------------- the C entry points

struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<u32>>>);

impl sys::IfDevice for Recorder {
    fn transmit(&mut self, _m: MbufHandle, len: u32, _o: u32, _s: u32, _f: u32, _h: bool) -> i32 {
        self.0.lock().unwrap().push(len);
        0
    }
    fn set_mtu(&mut self, mtu: i32) -> i32 {
        if mtu > 9000 {
            errno::EINVAL
        } else {
            0
        }
    }
    fn set_caps(&mut self, enabled: u32) {
        self.0.lock().unwrap().push(enabled);
    }
    fn stat(&self, which: u32) -> Option<u64> {
        (which == 0).then(|| self.0.lock().unwrap().len() as u64)
    }
    fn event(&mut self, out: &mut sys::Inputs) -> bool {
        out.push((IfHandle(0x77), MbufHandle(0x88)));
        false
    }
    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[test]
fn entry_points_reach_the_device_and_input_happens_unlocked() {
    let _kernel = fake::session();
    shim::reset();
    // The fake if_input checks that the ifnet exists.
    shim::with(|s| {
        s.ifnets.insert(0x77, ([0; 6], 0, 0, 1500));
    });
    let softc = sys::SoftcBox::new(0).expect("softc");
    let raw = softc.as_raw();
    let send = |len: usize| {
        let m = shim::mbuf(&vec![0u8; len]);
        let len = u32::try_from(len).unwrap();
        // SAFETY: a live softc; `m` is a fake mbuf of `len` bytes.
        unsafe { sys::xenrs_xn_transmit(raw, m as *mut _, len, 0, 0, 0, 0) }
    };
    // No device yet: the packet is taken and dropped (freed), never leaked.
    assert_eq!(send(60), sys::KEPT);
    assert_eq!(shim::with(|s| (s.freed, s.tx.len())), (1, 0));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    softc.with(|d| *d = Some(Box::new(Recorder(seen.clone()))));
    assert_eq!(send(61), sys::KEPT);
    // A packet while a xenbus callback holds the device lock (sleeping in xenstore, say):
    // if_transmit does not wait; the packet runs when the callback lets go.
    softc.with(|_| {
        assert_eq!(send(62), sys::KEPT);
        assert_eq!(seen.lock().unwrap().as_slice(), &[61]);
    });
    assert_eq!(seen.lock().unwrap().as_slice(), &[61, 62]);
    assert_eq!(shim::with(|s| (s.freed, s.tx.len())), (3, 0));
    // SAFETY: as above.
    unsafe {
        assert_eq!(sys::ioctl_mtu(raw, 9001), errno::EINVAL);
        assert_eq!(sys::ioctl_mtu(raw, 1500), 0);
        sys::xenrs_xn_ioctl_caps(raw, 0x11);
        let mut v = 0;
        assert_eq!(sys::dev_stat(raw, 0, &mut v), 0);
        assert_eq!(v, 3);
    }
    assert_eq!(seen.lock().unwrap().as_slice(), &[61, 62, 0x11]);
    // An event while nobody holds the mutex: the frame goes up, after the unlock.
    softc.event();
    assert_eq!(shim::with(|s| s.input.clone()), vec![0x88]);
    let sink = sys::EventSink::default();
    softc.connect(&sink);
    // From xen.ko's event thread: queued for the interface's taskqueue, run there.
    sink.fire();
    assert_eq!(shim::with(|s| s.input.len()), 1);
    assert_eq!(fake::run_tasks(), 1);
    assert_eq!(shim::with(|s| s.input.len()), 2);
    softc.with(|d| *d = None);
    softc.free(&sink);
    // A late event after free is dropped.
    sink.fire();
    assert_eq!(
        (
            shim::with(|s| s.input.len()),
            fake::locks_out(),
            shim::with(|s| s.sysctl_live),
            fake::taskqueues().len()
        ),
        (2, 0, 0, 0)
    );
}

/// A device whose first event stops at a budget with frames left.
struct Budgeted(std::sync::Arc<std::sync::Mutex<u32>>);

impl sys::IfDevice for Budgeted {
    fn transmit(&mut self, _m: MbufHandle, _l: u32, _o: u32, _s: u32, _f: u32, _h: bool) -> i32 {
        0
    }
    fn set_mtu(&mut self, _mtu: i32) -> i32 {
        0
    }
    fn set_caps(&mut self, _enabled: u32) {}
    fn stat(&self, _which: u32) -> Option<u64> {
        None
    }
    fn event(&mut self, _out: &mut sys::Inputs) -> bool {
        let mut runs = self.0.lock().unwrap();
        *runs += 1;
        *runs == 1
    }
    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[test]
fn work_left_at_a_budget_runs_again_from_the_taskqueue() {
    let _kernel = fake::session();
    shim::reset();
    let softc = sys::SoftcBox::new(1).expect("softc");
    let runs = std::sync::Arc::new(std::sync::Mutex::new(0));
    softc.with(|d| *d = Some(Box::new(Budgeted(runs.clone()))));
    let sink = sys::EventSink::default();
    softc.connect(&sink);
    sink.fire();
    // The first run leaves work: the task is queued again, although no new event came.
    assert_eq!(fake::run_tasks(), 1);
    assert_eq!(fake::run_tasks(), 1);
    assert_eq!(fake::run_tasks(), 0);
    assert!(*runs.lock().unwrap() >= 2);
    softc.with(|d| *d = None);
    softc.free(&sink);
}

// ---------------------------------------------------------------- through the xenrs API

/// xn.ko loaded through the simulated xenrs API in the guest (8 grant frames; one queue, no
/// control ring), over the toolstack's vifs of `macs`.
fn load_xn(macs: &[&str]) -> shim::Loaded {
    let cfg = FrontendConfig {
        queues: 1,
        ctrl_ring: false,
        ..FrontendConfig::default()
    };
    shim::load_through_the_api(
        macs,
        |w| &w.guest,
        8,
        Role::Frontend,
        |xen, live, kick| Box::new(xen::XnDriver::new(xen, cfg, live, kick)),
    )
}

/// What xn.ko's unload through the xenrs API must leave: no port, grant, page or
/// registration of the simulated services, and nothing of the kernel's ([`shim::assert_unloaded`]).
fn assert_all_released(xen: &xenrs_api::sim::SimXen) {
    let left = xen.outstanding();
    assert_eq!(
        (left.ports, left.grants, left.pages, left.registrations),
        (0, 0, 0, 0),
        "{left:?}"
    );
    shim::assert_unloaded();
}

#[test]
fn attach_traffic_detach_through_the_xenrs_api_leaves_nothing_behind() {
    let _kernel = fake::session();
    shim::reset();
    let (world, xs, xen, live, kick, reg) = load_xn(&["00:16:3e:01:02:03"]);
    let guest = &world.guest;
    let pump = |n: usize| {
        xenrs_api::sim::pump(&xen, xs, n);
    };
    let (ifp, softc) =
        shim::with(|s| s.softcs.iter().next().map(|(i, s)| (*i, *s))).expect("ifnet");
    assert_eq!(live.load(std::sync::atomic::Ordering::Acquire), 1);

    // Dom0's netback, by hand.
    let be_hub = xen_tests::net::bus::leak(xen_tests::net::sim::Hub::new(&world.dom0));
    let mut xs0 = xs.client(0);
    let (bd, fd) = (world.be_dir(), world.fe_dir());
    let features = BackendFeatures {
        max_queues: 1,
        ctrl_ring: false,
        ..BackendFeatures::default()
    };
    be_config::publish(&mut xs0, &bd, &features).unwrap();
    xs0.write_str(&format!("{bd}/state"), "2").unwrap();
    pump(16);
    assert_eq!(xs0.read_string(&format!("{fd}/state")).unwrap(), "4");
    let info = be_config::read_frontend(&mut xs0, &fd, &features).unwrap();
    let mut be_plat = SimBackend::new(&world.dom0, be_hub);
    let mut conn =
        xen_netback::connect(&mut be_plat, guest.domid(), &info, Limits::default()).unwrap();
    xs0.write_str(&format!("{bd}/state"), "4").unwrap();
    pump(16);
    let during = xen.outstanding();
    assert!(
        during.ports > 0 && during.grants > 0 && during.pages > 0,
        "{during:?}"
    );

    // if_transmit through the shim's entry point.
    let frame = tcp_frame(200, true);
    let m = shim::mbuf(&frame);
    let len = u32::try_from(frame.len()).unwrap();
    // SAFETY: the softc the fake ifnet_create recorded (live until detach); the mbuf handle
    // is the fake's.
    let rc =
        unsafe { sys::xenrs_xn_transmit(softc as *mut _, m as *mut _, len, tx::PARTIAL, 0, 0, 0) };
    assert_eq!(rc, sys::KEPT);
    assert_eq!(shim::with(|s| s.freed), 1, "copied to the ring, then freed");
    let mut io = Collect::default();
    let _ = conn.queues[0].process_tx(&mut io);
    assert_eq!(io.packets.len(), 1);
    assert_eq!(io.packets[0].1, frame);

    // A frame for the guest: its port fires, xen.ko's event thread runs the handler, the
    // frame goes up after the interface's mutex is released.
    let plain = tcp_frame(80, false);
    conn.queues[0]
        .enqueue_rx(&plain, &PacketMeta::default())
        .unwrap();
    let _ = conn.queues[0].process_rx(0);
    assert!(xenrs_api::sim::deliver_pending(&xen, guest) > 0);
    // The handler only queued the work; the interface's taskqueue thread runs it.
    assert_eq!(shim::with(|s| s.input.len()), 0);
    assert_eq!(fake::run_tasks(), 1);
    let inputs = shim::with(|s| s.input.clone());
    assert_eq!(inputs.len(), 1);
    assert_eq!(
        shim::with(|s| s.rx[&inputs[0]].clone()),
        (plain.clone(), false)
    );
    assert!(shim::with(|s| s.ifnets.contains_key(&ifp)));

    // Detach (kldunload xn): nothing fires afterwards, nothing is left.
    drop(reg);
    // The module's own reference to the kick slot goes with it at unload.
    drop(kick);
    assert_eq!(shim::with(|s| (s.ifnets.len(), s.destroyed)), (0, 1));
    assert_eq!(live.load(std::sync::atomic::Ordering::Acquire), 0);
    conn.queues[0]
        .enqueue_rx(&plain, &PacketMeta::default())
        .unwrap();
    let _ = conn.queues[0].process_rx(0);
    for port in 1..64 {
        assert!(
            !xen.deliver(port),
            "port {port} still delivers after detach"
        );
    }
    assert_eq!(shim::with(|s| s.input.len()), 1);
    conn.queues.clear();
    conn.resources.release(&mut be_plat);
    assert_all_released(&xen);
}

// ---------------------------------------------------------------- a hostile backend

/// A rig of `queues` queues (no control ring) connected to dom0's netback, and a second
/// mapping, by dom0, of the TX ring of queue 0 the guest granted (what a backend that writes
/// whatever it likes sees), to forge answers on: `(rig, the mapping's platform, the mapping,
/// the ring page)`.
fn rig_with_hostile_tx_ring(
    queues: u32,
) -> (
    Rig,
    SimBackend<'static, 'static>,
    xen_gnttab::ForeignMapping,
    xen_shmem::SharedMem<'static>,
) {
    use xen_netback::BackendPlatform as _;
    let mut rig = Rig::new(FrontendConfig {
        queues,
        ctrl_ring: false,
        ..FrontendConfig::default()
    });
    rig.backend_connect();
    let env = rig.env;
    let info = rig.info.clone().expect("connected");
    let mut plat = SimBackend::new(&env.world.dom0, &env.be_hub);
    let (m, mem) = plat
        .map_ring(env.world.guest.domid(), info.queues[0].tx_ring_ref)
        .expect("map the guest's TX ring");
    (rig, plat, m, mem)
}

/// Writes a TX response `(id, status OKAY)` at the next response slot and publishes it.
fn forge_tx_response(ring: &xen_shmem::SharedMem<'_>, id: u16) {
    use xen_ring::sring::{HEADER_SIZE, RSP_PROD};
    // netif_tx: a request is 12 bytes, the union slot as well; one page holds 256.
    let rsp_prod = ring.load_acquire_u32(RSP_PROD).unwrap();
    let slot = HEADER_SIZE + usize::try_from(rsp_prod % 256).unwrap() * 12;
    let mut rsp = [0u8; 4];
    rsp[..2].copy_from_slice(&id.to_le_bytes());
    ring.copy_from_slice(slot, &rsp).unwrap();
    ring.store_release_u32(RSP_PROD, rsp_prod.wrapping_add(1))
        .unwrap();
}

#[test]
fn a_backend_answering_an_unknown_tx_id_fails_the_device_once_and_for_good() {
    use xen_netback::BackendPlatform as _;
    let _kernel = fake::session();
    let (mut rig, mut hplat, hmap, ring) = rig_with_hostile_tx_ring(2);
    let w = rig.env.world;
    // One packet in flight on queue 0 (dom0 does not answer it), then a response for an id
    // the frontend never used.
    let frame = tcp_frame(100, false);
    assert_eq!(rig.transmit(&frame, 0, 0, 0), 0);
    forge_tx_response(&ring, 200);
    assert!(
        rig.xn.borrow().failure().is_none(),
        "nothing seen before an event"
    );
    let up = rig.xn.borrow_mut().event();
    assert!(up.is_empty());
    assert_eq!(
        rig.xn.borrow().failure(),
        Some(net::Failure {
            queue: 0,
            error: xen_netfront::FrontError::BadTxId(200)
        })
    );
    let line = "xn0: queue 0: backend answered TX id 200, which is not in flight; device failed";
    assert_eq!(console_count(line), 1, "{}", fake::console());
    // Link down at once; transmit refuses; the failure is a sysctl.
    assert!(!rig.xn.borrow().link());
    assert_eq!(shim::with(|s| s.links.clone()), vec![true, false]);
    assert_eq!(rig.xn.borrow().stat(DevStat::Link as u32), Some(0));
    assert_eq!(rig.xn.borrow().stat(DevStat::Failed as u32), Some(1));
    assert_eq!(rig.transmit(&frame, 0, 0, 1), errno::ENETDOWN);
    // The store is the xenbus thread's: nothing written from the event path.
    assert!(rig.xn.borrow().needs_report());
    assert_eq!(rig.fe_state(), XenbusState::Connected);

    // More garbage and more events change nothing and log nothing more.
    forge_tx_response(&ring, 201);
    for _ in 0..10 {
        assert!(rig.xn.borrow_mut().event().is_empty());
    }
    assert!(!rig.xn.borrow().more());
    assert_eq!(console_count("device failed"), 1);
    assert_eq!(
        rig.xn.borrow().failure().map(|f| f.error),
        Some(xen_netfront::FrontError::BadTxId(200))
    );

    // The kick's run on the xenbus thread: queues released, reason in `error`, Closing.
    xen::on_kick(&mut rig.fe_bus, &mut rig.fe_xs);
    rig.settle();
    let fd = w.fe_dir();
    assert_eq!(rig.fe_state(), XenbusState::Closing);
    assert_eq!(
        rig.be_xs.read_string(&format!("{fd}/error")).unwrap(),
        "queue 0: backend answered TX id 200, which is not in flight"
    );
    assert!(!rig.xn.borrow().needs_report());
    assert_eq!(rig.xn.borrow().stat(DevStat::Queues as u32), Some(0));
    // A second kick does nothing more.
    rig.be_xs
        .write_str(&format!("{fd}/error"), "read by the toolstack")
        .unwrap();
    xen::on_kick(&mut rig.fe_bus, &mut rig.fe_xs);
    rig.settle();
    assert_eq!(
        rig.be_xs.read_string(&format!("{fd}/error")).unwrap(),
        "read by the toolstack"
    );
    assert_eq!(console_count("device failed"), 1);

    // The backend closes: the device closes too and does not start again.
    hplat.unmap_ring(hmap);
    rig.backend_close();
    assert_eq!(rig.fe_state(), XenbusState::Closed);
    let bd = w.be_dir();
    be_config::publish(&mut rig.be_xs, &bd, &rig.features).unwrap();
    rig.be_state("2");
    assert_eq!(rig.fe_state(), XenbusState::Closed);
    assert_eq!(rig.xn.borrow().stat(DevStat::Connections as u32), Some(1));
    assert_eq!(rig.transmit(&frame, 0, 0, 0), errno::ENETDOWN);
    rig.xn.borrow_mut().detach();
    assert_eq!(shim::with(|s| (s.ifnets.len(), s.destroyed)), (0, 1));
}

#[test]
fn through_the_xenrs_api_a_violation_fails_only_its_interface_via_the_kick() {
    use xen_netback::BackendPlatform as _;
    let _kernel = fake::session();
    shim::reset();
    let (world, xs, xen, live, kick, reg) = load_xn(&["00:16:3e:01:02:03", "00:16:3e:01:02:04"]);
    let guest = &world.guest;
    let g = guest.domid();
    let pump = |n: usize| {
        xenrs_api::sim::pump(&xen, xs, n);
    };
    assert_eq!(live.load(std::sync::atomic::Ordering::Acquire), 2);
    let softc_of = |last: u8| {
        shim::with(|s| {
            s.ifnets
                .iter()
                .find(|(_, v)| v.0[5] == last)
                .map(|(i, _)| s.softcs[i])
        })
        .expect("ifnet")
    };
    let (softc0, softc1) = (softc_of(3), softc_of(4));

    // Dom0's netback for both vifs, by hand.
    let be_hub = xen_tests::net::bus::leak(xen_tests::net::sim::Hub::new(&world.dom0));
    let mut xs0 = xs.client(0);
    let features = BackendFeatures {
        max_queues: 1,
        ctrl_ring: false,
        ..BackendFeatures::default()
    };
    let dirs: Vec<(String, String)> = (0..2)
        .map(|h| {
            (
                format!("/local/domain/{g}/device/vif/{h}"),
                format!("/local/domain/0/backend/vif/{g}/{h}"),
            )
        })
        .collect();
    for (_, bd) in &dirs {
        be_config::publish(&mut xs0, bd, &features).unwrap();
        xs0.write_str(&format!("{bd}/state"), "2").unwrap();
    }
    pump(16);
    let mut be_plat = SimBackend::new(&world.dom0, be_hub);
    let mut conns = Vec::new();
    let mut infos = Vec::new();
    for (fd, bd) in &dirs {
        assert_eq!(xs0.read_string(&format!("{fd}/state")).unwrap(), "4");
        let info = be_config::read_frontend(&mut xs0, fd, &features).unwrap();
        conns.push(xen_netback::connect(&mut be_plat, g, &info, Limits::default()).unwrap());
        infos.push(info);
        xs0.write_str(&format!("{bd}/state"), "4").unwrap();
    }
    pump(16);
    let transmit = |softc: usize, frame: &[u8]| {
        let m = shim::mbuf(frame);
        let len = u32::try_from(frame.len()).unwrap();
        // SAFETY: a softc the fake ifnet_create recorded (live until detach); the fake's mbuf.
        unsafe { sys::xenrs_xn_transmit(softc as *mut _, m as *mut _, len, 0, 0, 0, 0) }
    };
    let dev_stat = |softc: usize, which: DevStat| shim::dev_stat(softc, which as i32);

    // Dom0 breaks vif 0: a packet is in flight, and the answer names an id never used.
    let frame = tcp_frame(120, false);
    assert_eq!(transmit(softc0, &frame), sys::KEPT);
    let (hmap, ring) = be_plat.map_ring(g, infos[0].queues[0].tx_ring_ref).unwrap();
    forge_tx_response(&ring, 77);
    // Both vifs get an event; vif 1 has a frame for the guest.
    conns[1].queues[0]
        .enqueue_rx(&frame, &PacketMeta::default())
        .unwrap();
    let _ = conns[1].queues[0].process_rx(0);
    let _ = xenrs_api::sim::deliver_pending(&xen, guest);
    // Make sure vif 0's port fired too: the forged response came with no notification.
    xenrs_api::sim::deliver_all(&xen);
    fake::run_tasks();
    let line = "queue 0: backend answered TX id 77, which is not in flight; device failed";
    assert_eq!(console_count(line), 1, "{}", fake::console());
    assert_eq!(console_count("device failed"), 1);
    let inputs = shim::with(|s| s.input.clone());
    assert_eq!(inputs.len(), 1, "vif 1's frame went up");
    // The task kicked the registration: xen.ko's xenbus thread reports the failure.
    pump(16);
    let (fd0, fd1) = (&dirs[0].0, &dirs[1].0);
    assert_eq!(xs0.read_string(&format!("{fd0}/state")).unwrap(), "5");
    assert_eq!(
        xs0.read_string(&format!("{fd0}/error")).unwrap(),
        "queue 0: backend answered TX id 77, which is not in flight"
    );
    assert_eq!(xs0.read_string(&format!("{fd1}/state")).unwrap(), "4");
    assert!(xs0.read_string(&format!("{fd1}/error")).is_err());
    let leaves = [DevStat::Failed, DevStat::Link, DevStat::Queues];
    assert_eq!(leaves.map(|w| dev_stat(softc0, w)), [1, 0, 0]);
    assert_eq!(leaves.map(|w| dev_stat(softc1, w)), [0, 1, 1]);
    // vif 1 still sends; vif 0 drops.
    assert_eq!(transmit(softc1, &frame), sys::KEPT);
    let mut io = Collect::default();
    let _ = conns[1].queues[0].process_tx(&mut io);
    assert_eq!(io.packets.len(), 1);
    assert_eq!(io.packets[0].1, frame);
    let dropped = dev_stat(softc0, DevStat::TxDropped);
    assert_eq!(transmit(softc0, &frame), sys::KEPT);
    assert_eq!(dev_stat(softc0, DevStat::TxDropped), dropped + 1);
    // More garbage and events change nothing.
    forge_tx_response(&ring, 78);
    xenrs_api::sim::deliver_all(&xen);
    fake::run_tasks();
    pump(4);
    assert_eq!(console_count("device failed"), 1);

    // Unload: nothing left behind, the failed interface included.
    be_plat.unmap_ring(hmap);
    drop(reg);
    drop(kick);
    assert_eq!(live.load(std::sync::atomic::Ordering::Acquire), 0);
    for mut c in conns {
        c.queues.clear();
        c.resources.release(&mut be_plat);
    }
    assert_all_released(&xen);
}

#[test]
fn a_violation_found_while_reclaiming_on_transmit_fails_the_device() {
    use xen_netback::BackendPlatform as _;
    let _kernel = fake::session();
    let (mut rig, mut hplat, hmap, ring) = rig_with_hostile_tx_ring(1);
    let frame = tcp_frame(100, false);
    assert_eq!(rig.transmit(&frame, 0, 0, 0), 0);
    // The forged answer waits unread (no event); the ring fills (dom0 answers nothing) until
    // a send finds no room, reclaims, and meets it.
    forge_tx_response(&ring, 300);
    let mut sent = 1;
    let mut last = 0;
    for _ in 0..1000 {
        last = rig.transmit(&frame, 0, 0, 0);
        if last != 0 {
            break;
        }
        sent += 1;
    }
    assert_eq!(last, errno::ENETDOWN, "after {sent} packets");
    assert!(sent > 1);
    assert_eq!(
        rig.xn.borrow().failure().map(|f| f.error),
        Some(xen_netfront::FrontError::BadTxId(300))
    );
    assert_eq!(console_count("xn0: queue 0: backend answered TX id 300"), 1);
    assert!(!rig.xn.borrow().link());
    assert!(rig.xn.borrow().needs_report());
    assert_eq!(rig.transmit(&frame, 0, 0, 0), errno::ENETDOWN);
    assert_eq!(console_count("device failed"), 1);
    xen::on_kick(&mut rig.fe_bus, &mut rig.fe_xs);
    rig.settle();
    assert_eq!(rig.fe_state(), XenbusState::Closing);
    hplat.unmap_ring(hmap);
    rig.backend_close();
    assert_eq!(rig.fe_state(), XenbusState::Closed);
    rig.xn.borrow_mut().detach();
}
