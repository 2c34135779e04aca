//! A netfront/netback pair over `xensim`: a guest and a driver domain, the toolstack's xenstore
//! nodes, the xenbus handshake of both cores, and the queues.
//!
//! ```text
//! World (sim, dom0, guest) + XenstoreSim  ←  Env (event hubs, guest grant table)  ←  Pair (queues)
//! ```

use std::sync::Mutex;

use xen_gnttab::GrantTable;
use xen_netback::config::{self as be_config, BackendFeatures};
use xen_netback::ctrl::{CtrlRing, McastFilter, Steering};
use xen_netback::{Limits, NetIo};
use xen_netfront::negotiate::{self, FrontendConfig};
use xen_netif::PacketMeta;
use xen_xenbus::{Access, Perm, Store};

use super::sim::{Hub, SimBackend, SimFrontend, SimGrantTable};
use crate::xensim::grants::SimTableFrames;
use crate::xensim::xenstored::XenstoreSim;
use crate::xensim::{DomainConfig, DomainHandle, SimConfig, SimHypervisor};

/// The simulated machine.
#[derive(Debug)]
pub struct World {
    /// The hypervisor.
    pub sim: SimHypervisor,
    /// The driver domain (netback).
    pub dom0: DomainHandle,
    /// The guest (netfront).
    pub guest: DomainHandle,
}

impl World {
    /// A machine with room for `queues` queues on each side.
    ///
    /// # Panics
    /// If the simulator cannot create the domains.
    #[must_use]
    pub fn new(queues: u32) -> World {
        let per_queue_front = 2 + 256 + 256;
        let per_queue_back = 2 * xen_netback::STAGING_PAGES + 4;
        let q = queues.max(1) as usize;
        let guest_pages = 64 + q * per_queue_front;
        let dom0_pages = 64 + q * per_queue_back;
        let sim = SimHypervisor::new(SimConfig {
            machine_pages: guest_pages + dom0_pages + 512,
            max_grant_frames: 64,
            maptrack_limit: 4096,
            ..SimConfig::default()
        });
        let dom0 = sim
            .create_domain(DomainConfig {
                ram_pages: u32::try_from(dom0_pages).unwrap_or(u32::MAX),
                ..DomainConfig::dom0()
            })
            .expect("dom0");
        let guest = sim
            .create_domain(DomainConfig {
                ram_pages: u32::try_from(guest_pages).unwrap_or(u32::MAX),
                ..DomainConfig::guest()
            })
            .expect("guest");
        World { sim, dom0, guest }
    }

    /// The frontend's device directory.
    #[must_use]
    pub fn fe_dir(&self) -> String {
        format!("/local/domain/{}/device/vif/0", self.guest.domid())
    }

    /// The backend's device directory.
    #[must_use]
    pub fn be_dir(&self) -> String {
        format!("/local/domain/0/backend/vif/{}/0", self.guest.domid())
    }

    /// The toolstack's part: both device directories, `mac`, `trusted`, initial states.
    pub fn toolstack(&self, xs: &XenstoreSim, mac: &str, trusted: bool) {
        let fe = self.guest.domid();
        let (fd, bd) = (self.fe_dir(), self.be_dir());
        let fperm = [Perm::new(Access::None, fe), Perm::new(Access::Read, 0)];
        let bperm = [Perm::new(Access::None, 0), Perm::new(Access::Read, fe)];
        let mut d = xs.daemon();
        d.put(&format!("{fd}/backend"), bd.as_bytes(), &fperm);
        d.put(&format!("{fd}/backend-id"), b"0", &fperm);
        d.put(&format!("{fd}/mac"), mac.as_bytes(), &fperm);
        d.put(&format!("{fd}/handle"), b"0", &fperm);
        d.put(
            &format!("{fd}/trusted"),
            if trusted { b"1" } else { b"0" },
            &fperm,
        );
        d.put(&format!("{fd}/state"), b"1", &fperm);
        d.put(&format!("{bd}/frontend"), fd.as_bytes(), &bperm);
        d.put(
            &format!("{bd}/frontend-id"),
            fe.to_string().as_bytes(),
            &bperm,
        );
        d.put(&format!("{bd}/mac"), mac.as_bytes(), &bperm);
        d.put(&format!("{bd}/state"), b"1", &bperm);
    }
}

/// The per-domain services the cores' platforms use.
pub struct Env<'h> {
    /// The machine.
    pub world: &'h World,
    /// Guest events.
    pub fe_hub: Hub<'h>,
    /// Driver-domain events.
    pub be_hub: Hub<'h>,
    /// Guest grant table.
    pub table: SimGrantTable<'h>,
}

impl std::fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").finish_non_exhaustive()
    }
}

impl<'h> Env<'h> {
    /// Sets up events and the guest's grant table.
    ///
    /// # Panics
    /// On a broken simulator set-up.
    #[must_use]
    pub fn new(world: &'h World) -> Self {
        Env {
            world,
            fe_hub: Hub::new(&world.guest),
            be_hub: Hub::new(&world.dom0),
            table: GrantTable::new(&world.guest, SimTableFrames::new(&world.guest), 8)
                .expect("grant table"),
        }
    }
}

/// What to negotiate.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Frontend wishes.
    pub front: FrontendConfig,
    /// Backend offer.
    pub back: BackendFeatures,
    /// Backend queue limits.
    pub limits: Limits,
    /// The toolstack's `trusted`.
    pub trusted: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            front: FrontendConfig::default(),
            back: BackendFeatures::default(),
            limits: Limits::default(),
            trusted: true,
        }
    }
}

/// A frontend queue.
pub type FrontQueue<'h> = xen_netfront::Queue<'h, &'h DomainHandle>;
/// A backend queue.
pub type BackQueue<'h> = xen_netback::Queue<'h, &'h DomainHandle>;
/// The frontend's control-ring client.
pub type FrontCtrl<'h> = xen_netfront::CtrlClient<'h, &'h DomainHandle>;

/// A connected pair.
pub struct Pair<'e, 'h> {
    env: &'e Env<'h>,
    /// Frontend queues.
    pub front: Vec<Mutex<FrontQueue<'h>>>,
    /// Backend queues.
    pub back: Vec<Mutex<BackQueue<'h>>>,
    /// The backend's control ring.
    pub ctrl: Option<Mutex<CtrlRing<'h, &'h DomainHandle>>>,
    /// The frontend's control-ring client.
    pub front_ctrl: Option<Mutex<FrontCtrl<'h>>>,
    /// The backend's per-vif receive steering (configured through the control ring).
    pub steering: Mutex<Steering>,
    /// The backend's per-vif multicast filter (fed by the frontend's multicast control
    /// requests; applied when `request-multicast-control` was negotiated).
    pub mcast: Mutex<McastFilter>,
    /// The frontend's MAC.
    pub mac: [u8; 6],
    /// What the backend read from the frontend.
    pub info: be_config::FrontendInfo,
    fe_plat: SimFrontend<'e, 'h>,
    be_plat: SimBackend<'e, 'h>,
    fe_res: Option<xen_netfront::Resources<xen_gnttab::GrantRef>>,
    be_res: Option<xen_netback::Resources<'h, xen_gnttab::ForeignMapping>>,
}

impl std::fmt::Debug for Pair<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("queues", &self.front.len())
            .finish_non_exhaustive()
    }
}

/// The frontend's half of a connection.
pub struct FrontSide<'e, 'h> {
    /// Queues, control ring, resources.
    pub setup: xen_netfront::negotiate::Setup<'h, SimFrontend<'e, 'h>>,
    /// The platform that built them.
    pub plat: SimFrontend<'e, 'h>,
    /// Our MAC.
    pub mac: [u8; 6],
}

/// The backend's half of a connection.
pub struct BackSide<'e, 'h> {
    /// Queues, control ring, resources.
    pub conn: xen_netback::Connection<'h, SimBackend<'e, 'h>>,
    /// The platform that built them.
    pub plat: SimBackend<'e, 'h>,
    /// What was read from the frontend.
    pub info: be_config::FrontendInfo,
}

impl std::fmt::Debug for FrontSide<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontSide").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for BackSide<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackSide").finish_non_exhaustive()
    }
}

/// Why the handshake failed.
#[derive(Debug)]
pub enum ConnectFailure {
    /// Frontend side.
    Front(String),
    /// Backend side.
    Back(String),
}

impl<'e, 'h> Pair<'e, 'h> {
    /// Runs the xenbus handshake of both cores and builds the queues.
    ///
    /// # Errors
    /// [`ConnectFailure`] naming the side that refused.
    pub fn connect(
        env: &'e Env<'h>,
        xs: &XenstoreSim,
        opts: &Options,
    ) -> Result<Self, ConnectFailure> {
        let w = env.world;
        let (fd, bd) = (w.fe_dir(), w.be_dir());
        let be_err = |e: &dyn std::fmt::Debug| ConnectFailure::Back(format!("{e:?}"));
        let fe_err = |e: &dyn std::fmt::Debug| ConnectFailure::Front(format!("{e:?}"));
        let mut xs0 = xs.client(0);
        let mut xsg = xs.client(w.guest.domid());
        // Backend: offer, InitWait.
        be_config::publish(&mut xs0, &bd, &opts.back).map_err(|e| be_err(&e))?;
        xs0.write_str(&format!("{bd}/state"), "2")
            .map_err(|e| be_err(&e))?;
        // Frontend: read the offer, set up, publish, Connected.
        let offer = negotiate::read_offer(&mut xsg, &bd).map_err(|e| fe_err(&e))?;
        let mac = negotiate::read_mac(&mut xsg, &fd)
            .map_err(|e| fe_err(&e))?
            .ok_or_else(|| ConnectFailure::Front("no mac".into()))?;
        let trusted = negotiate::read_trusted(&mut xsg, &fd).map_err(|e| fe_err(&e))?;
        let mut fe_plat = SimFrontend::new(&w.guest, &env.fe_hub, &env.table);
        let setup = negotiate::setup(&mut fe_plat, 0, &offer, &opts.front, trusted)
            .map_err(|e| fe_err(&e))?;
        negotiate::publish(
            &mut xsg,
            &fd,
            &setup.keys,
            setup.split,
            setup.ctrl_keys,
            &offer,
            &opts.front,
        )
        .map_err(|e| fe_err(&e))?;
        xsg.write_str(&format!("{fd}/state"), "4")
            .map_err(|e| fe_err(&e))?;
        // Backend: read the frontend, connect, Connected.
        let info = be_config::read_frontend(&mut xs0, &fd, &opts.back).map_err(|e| be_err(&e))?;
        let mut be_plat = SimBackend::new(&w.dom0, &env.be_hub);
        let conn = xen_netback::connect(&mut be_plat, w.guest.domid(), &info, opts.limits)
            .map_err(|e| be_err(&e))?;
        xs0.write_str(&format!("{bd}/state"), "4")
            .map_err(|e| be_err(&e))?;
        Ok(Pair::assemble(
            env,
            FrontSide {
                setup,
                plat: fe_plat,
                mac,
            },
            BackSide {
                conn,
                plat: be_plat,
                info,
            },
        ))
    }

    /// A pair from the two connected halves (however their handshake was driven).
    #[must_use]
    pub fn assemble(env: &'e Env<'h>, front: FrontSide<'e, 'h>, back: BackSide<'e, 'h>) -> Self {
        let (setup, conn) = (front.setup, back.conn);
        // One kick per queue and side, shared by its ports.
        for q in &setup.queues {
            let k = env.fe_hub.kick(q.ports().tx);
            env.fe_hub.set_kick(q.ports().rx, k);
        }
        for q in &conn.queues {
            let k = env.be_hub.kick(q.ports().tx);
            env.be_hub.set_kick(q.ports().rx, k);
        }
        let nq = u32::try_from(conn.queues.len()).unwrap_or(1);
        Pair {
            env,
            front: setup.queues.into_iter().map(Mutex::new).collect(),
            back: conn.queues.into_iter().map(Mutex::new).collect(),
            ctrl: conn.ctrl.map(Mutex::new),
            front_ctrl: setup.ctrl.map(Mutex::new),
            steering: Mutex::new(Steering::new(nq)),
            mcast: Mutex::new(McastFilter::default()),
            mac: front.mac,
            info: back.info,
            fe_plat: front.plat,
            be_plat: back.plat,
            fe_res: Some(setup.resources),
            be_res: Some(conn.resources),
        }
    }

    /// Releases both halves' resources in teardown order (queues, backend unmaps and closes,
    /// frontend revokes) without touching xenstore (the drivers' state machines do that).
    /// Returns how many frontend revokes had to be deferred.
    pub fn release(mut self) -> usize {
        self.teardown();
        self.fe_plat.deferred
    }

    fn teardown(&mut self) {
        self.front.clear();
        self.back.clear();
        self.ctrl = None;
        self.front_ctrl = None;
        if let Some(r) = self.be_res.take() {
            r.release(&mut self.be_plat);
        }
        if let Some(r) = self.fe_res.take() {
            r.release(&mut self.fe_plat);
        }
        self.fe_plat.poll_deferred();
    }

    /// Releases the frontend's half *first*, while the backend still has the rings mapped
    /// (a backend slow or unwilling to unmap), then the backend's. Returns the frontend's
    /// deferred revokes after its own release, and after the backend's (XSA-396: a page the
    /// backend still maps must not be freed or reused until it is unmapped).
    pub fn release_frontend_first(mut self) -> (usize, usize) {
        self.front.clear();
        self.front_ctrl = None;
        if let Some(r) = self.fe_res.take() {
            r.release(&mut self.fe_plat);
        }
        self.fe_plat.poll_deferred();
        let while_mapped = self.fe_plat.deferred;
        self.back.clear();
        self.ctrl = None;
        if let Some(r) = self.be_res.take() {
            r.release(&mut self.be_plat);
        }
        self.fe_plat.poll_deferred();
        (while_mapped, self.fe_plat.deferred)
    }

    /// The environment.
    #[must_use]
    pub fn env(&self) -> &'e Env<'h> {
        self.env
    }

    /// Tears the connection down as a backend `Closing` would: queues dropped, backend
    /// unmaps and closes, frontend revokes. Returns how many frontend revokes had to be
    /// deferred.
    pub fn disconnect(mut self, xs: &XenstoreSim) -> usize {
        let w = self.env.world;
        let mut xs0 = xs.client(0);
        let mut xsg = xs.client(w.guest.domid());
        let _ = xs0.write_str(&format!("{}/state", w.be_dir()), "5");
        self.front.clear();
        self.back.clear();
        self.ctrl = None;
        self.front_ctrl = None;
        if let Some(r) = self.be_res.take() {
            r.release(&mut self.be_plat);
        }
        let _ = xs0.write_str(&format!("{}/state", w.be_dir()), "6");
        if let Some(r) = self.fe_res.take() {
            r.release(&mut self.fe_plat);
        }
        self.fe_plat.poll_deferred();
        let _ = xsg.write_str(&format!("{}/state", w.fe_dir()), "6");
        self.fe_plat.deferred
    }

    /// One single-threaded round of every queue: backend TX and RX, frontend TX completions
    /// and RX. Returns whether any side reported more work.
    ///
    /// # Panics
    /// If a queue has failed (tests use [`Pair::try_pump`] to observe failures).
    pub fn pump(
        &self,
        io: &mut impl NetIo,
        now: u64,
        mut deliver: impl FnMut(u16, &[u8], &PacketMeta),
    ) -> bool {
        self.try_pump(io, now, &mut deliver).expect("queue failed")
    }

    /// As [`Pair::pump`], reporting failures.
    ///
    /// # Errors
    /// The first queue failure, as text.
    pub fn try_pump(
        &self,
        io: &mut impl NetIo,
        now: u64,
        deliver: &mut impl FnMut(u16, &[u8], &PacketMeta),
    ) -> Result<bool, String> {
        let mut more = false;
        self.pump_ctrl()?;
        let mut io = VifIo {
            io,
            mcast: &self.mcast,
        };
        for b in &self.back {
            let mut b = b.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            more |= b
                .process_tx(&mut io)
                .map_err(|e| format!("back tx {e:?}"))?
                .more;
            more |= b
                .process_rx(now)
                .map_err(|e| format!("back rx {e:?}"))?
                .more;
        }
        for f in &self.front {
            let mut f = f.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f.poll_tx().map_err(|e| format!("front tx {e:?}"))?;
            let i = f.index();
            more |= f
                .poll_rx(|d, m| deliver(i, d, m))
                .map_err(|e| format!("front rx {e:?}"))?
                .more;
        }
        Ok(more)
    }

    /// One round of the control ring: the frontend issues/collects, the backend answers.
    /// Returns the frontend's outcome when a configuration ended.
    ///
    /// # Errors
    /// A control-ring failure on either side, as text.
    pub fn pump_ctrl(&self) -> Result<Option<xen_netfront::Outcome>, String> {
        let mut outcome = None;
        for _ in 0..16 {
            if let Some(c) = &self.ctrl {
                let mut st = lock(&self.steering);
                lock(c)
                    .process(&mut st)
                    .map_err(|e| format!("back ctrl {e:?}"))?;
            }
            if let Some(c) = &self.front_ctrl {
                let mut c = lock(c);
                if let Some(o) = c.poll().map_err(|e| format!("front ctrl {e:?}"))? {
                    outcome = Some(o);
                }
                if !c.is_busy() {
                    break;
                }
            } else {
                break;
            }
        }
        Ok(outcome)
    }

    /// Installs a Toeplitz configuration through the control ring and runs it to its end.
    ///
    /// # Errors
    /// No control ring, a refused configuration, or a control-ring failure, as text.
    pub fn configure_toeplitz(
        &self,
        t: xen_netfront::Toeplitz,
    ) -> Result<xen_netfront::Outcome, String> {
        let c = self.front_ctrl.as_ref().ok_or("no control ring")?;
        lock(c)
            .configure_toeplitz(t)
            .map_err(|e| format!("{e:?}"))?;
        for _ in 0..64 {
            if let Some(o) = self.pump_ctrl()? {
                return Ok(o);
            }
        }
        Err("configuration did not finish".into())
    }

    /// Host → guest as a backend's transmit routine would: the multicast filter (when the
    /// frontend asked for it), then the steering picks the queue; the hash travels to the guest
    /// when Toeplitz hashing is configured. Returns the queue, or `None` when the packet was
    /// filtered or refused.
    pub fn host_to_guest(&self, data: &[u8], meta: &PacketMeta) -> Option<u16> {
        if self.info.features.mcast_filter && !lock(&self.mcast).passes(data) {
            return None;
        }
        let (q, hash) = lock(&self.steering).select(data);
        let mut meta = *meta;
        if hash.is_some() {
            meta.hash = hash;
        }
        let b = self.back.get(usize::from(q))?;
        lock(b).enqueue_rx(data, &meta).ok().map(|()| q)
    }
}

/// The backend's vif around an interface: the frontend's multicast control requests go to
/// the vif's [`McastFilter`] (and on to the interface, which may join the group).
#[derive(Debug)]
pub struct VifIo<'a, IO> {
    /// The interface.
    pub io: &'a mut IO,
    /// The vif's filter.
    pub mcast: &'a Mutex<McastFilter>,
}

impl<IO: NetIo> NetIo for VifIo<'_, IO> {
    fn offloads(&self) -> xen_netback::Offloads {
        self.io.offloads()
    }
    fn deliver(&mut self, queue: u16, data: &[u8], meta: &PacketMeta) {
        self.io.deliver(queue, data, meta);
    }
    fn multicast(&mut self, add: bool, mac: [u8; 6]) -> bool {
        lock(self.mcast).apply(add, mac) && self.io.multicast(add, mac)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Pair<'_, '_> {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A [`NetIo`] collecting what the backend delivers.
#[derive(Debug, Default)]
pub struct Collect {
    /// `(queue, data, meta)` in delivery order.
    pub packets: Vec<(u16, Vec<u8>, PacketMeta)>,
    /// Offloads to claim.
    pub offloads: Option<xen_netback::Offloads>,
    /// Multicast requests seen.
    pub mcast: Vec<(bool, [u8; 6])>,
}

impl NetIo for Collect {
    fn offloads(&self) -> xen_netback::Offloads {
        self.offloads.unwrap_or(xen_netback::Offloads {
            csum: true,
            gso: true,
        })
    }
    fn deliver(&mut self, queue: u16, data: &[u8], meta: &PacketMeta) {
        self.packets.push((queue, data.to_vec(), *meta));
    }
    fn multicast(&mut self, add: bool, mac: [u8; 6]) -> bool {
        self.mcast.push((add, mac));
        true
    }
}
