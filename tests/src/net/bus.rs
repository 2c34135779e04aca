//! The netfront/netback handshake driven by `xen_xenbus::Bus`: each core behind a [`Driver`]
//! on its domain's bus (frontend tree `device/vif`, backend tree `backend/vif`), reacting to
//! the other end's `state` through the bus's otherend watch. The harness never writes a
//! `state` node: it only pumps watch events, and asks the backend driver to close (as an
//! unbind or the toolstack would) for a reconnect.
//!
//! ```text
//! frontend                         backend
//! Initialising  (probe)            InitWait      (probe: publish features)
//! Connected     ← sees InitWait    (set up, publish keys)
//!                                  Connected     ← sees Connected (map, bind)
//! reconnect:                       Closing       (driver-initiated)
//! Closed        ← sees Closing
//!                                  Closed        ← sees Closed
//! Initialising  ← sees Closed
//!                                  InitWait      ← sees Initialising (publish again)
//! Connected     ← sees InitWait    ...
//! ```
//!
//! The connected halves land in shared slots; [`BusPair::take`] turns them into a [`Pair`]
//! for the data path. A half's resources belong to whoever holds it: the slot, or the pair
//! (which releases them before the harness asks for the next reconnect).
//!
//! `Bus` owns its drivers as `Box<dyn Driver<S>>` (`'static`), so the machine and environment
//! a bus-driven pair lives in are leaked for the test's duration ([`leak`]).

use std::cell::RefCell;
use std::rc::Rc;

use xen_netback::config::{self as be_config, BackendFeatures};
use xen_netback::Limits;
use xen_netfront::negotiate::{self, FrontendConfig};
use xen_xenbus::{Bus, Device, Driver, Error, Role, XenbusState, Xs};

use super::pair::{BackSide, Env, FrontSide, Options, Pair, World};
use super::sim::{SimBackend, SimFrontend};
use crate::xensim::xenstored::{SimTransport, XenstoreSim};

type Store = Xs<SimTransport>;

/// Leaks a value for the rest of the test process.
pub fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

/// The frontend driver: `xen_netfront::negotiate` behind the xenbus state machine.
struct FrontDriver {
    env: &'static Env<'static>,
    cfg: FrontendConfig,
    slot: Rc<RefCell<Option<FrontSide<'static, 'static>>>>,
    connects: Rc<RefCell<u32>>,
}

fn platform(e: &dyn std::fmt::Debug) -> Error {
    // The xenbus error the bus records (and writes to `error`) for a platform failure.
    let _ = e;
    Error::BadValue
}

impl Driver<Store> for FrontDriver {
    fn devtype(&self) -> &str {
        "vif"
    }

    fn probe(&mut self, xs: &mut Store, dev: &mut Device) -> Result<(), Error> {
        dev.switch_state(xs, XenbusState::Initialising)
    }

    fn otherend_changed(
        &mut self,
        xs: &mut Store,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), Error> {
        match state {
            XenbusState::InitWait if dev.state() == XenbusState::Initialising => {
                let be = dev.otherend().to_string();
                let fe = dev.nodename().to_string();
                let offer = negotiate::read_offer(xs, &be)?;
                let mac = negotiate::read_mac(xs, &fe)?.ok_or(Error::BadValue)?;
                let trusted = negotiate::read_trusted(xs, &fe)?;
                let mut plat =
                    SimFrontend::new(&self.env.world.guest, &self.env.fe_hub, &self.env.table);
                let setup =
                    negotiate::setup(&mut plat, dev.otherend_id(), &offer, &self.cfg, trusted)
                        .map_err(|e| platform(&e))?;
                let published = negotiate::publish(
                    xs,
                    &fe,
                    &setup.keys,
                    setup.split,
                    setup.ctrl_keys,
                    &offer,
                    &self.cfg,
                );
                if let Err(e) =
                    published.and_then(|()| dev.switch_state(xs, XenbusState::Connected))
                {
                    setup.resources.release(&mut plat);
                    return Err(e);
                }
                *self.connects.borrow_mut() += 1;
                *self.slot.borrow_mut() = Some(FrontSide { setup, plat, mac });
                Ok(())
            }
            XenbusState::Closing | XenbusState::Closed
                if matches!(
                    dev.state(),
                    XenbusState::Connected | XenbusState::Initialising
                ) =>
            {
                self.drop_side();
                dev.switch_state(xs, XenbusState::Closed)
            }
            // The backend is back in Closed after our Closed: start again (reconnect).
            XenbusState::Closed if dev.state() == XenbusState::Closed => {
                dev.switch_state(xs, XenbusState::Initialising)
            }
            _ => Ok(()),
        }
    }

    fn remove(&mut self, _xs: &mut Store, _dev: &mut Device) {
        self.drop_side();
    }
}

impl FrontDriver {
    fn drop_side(&mut self) {
        if let Some(mut s) = self.slot.borrow_mut().take() {
            s.setup.queues.clear();
            s.setup.ctrl = None;
            s.setup.resources.release(&mut s.plat);
        }
    }
}

/// The backend driver: `xen_netback::config` / `connect` behind the xenbus state machine.
struct BackDriver {
    env: &'static Env<'static>,
    features: BackendFeatures,
    limits: Limits,
    slot: Rc<RefCell<Option<BackSide<'static, 'static>>>>,
}

impl BackDriver {
    fn drop_side(&mut self) {
        if let Some(mut s) = self.slot.borrow_mut().take() {
            s.conn.queues.clear();
            s.conn.ctrl = None;
            s.conn.resources.release(&mut s.plat);
        }
    }
}

impl Driver<Store> for BackDriver {
    fn devtype(&self) -> &str {
        "vif"
    }

    fn probe(&mut self, xs: &mut Store, dev: &mut Device) -> Result<(), Error> {
        be_config::publish(xs, dev.nodename(), &self.features)?;
        dev.switch_state(xs, XenbusState::InitWait)
    }

    fn otherend_changed(
        &mut self,
        xs: &mut Store,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), Error> {
        match state {
            XenbusState::Connected if dev.state() == XenbusState::InitWait => {
                let fe = dev.otherend().to_string();
                let info =
                    be_config::read_frontend(xs, &fe, &self.features).map_err(|e| platform(&e))?;
                let mut plat = SimBackend::new(&self.env.world.dom0, &self.env.be_hub);
                let domid = dev.otherend_id();
                let conn = xen_netback::connect(&mut plat, domid, &info, self.limits)
                    .map_err(|e| platform(&e))?;
                *self.slot.borrow_mut() = Some(BackSide { conn, plat, info });
                dev.switch_state(xs, XenbusState::Connected)
            }
            XenbusState::Closing | XenbusState::Closed
                if !matches!(dev.state(), XenbusState::Closed) =>
            {
                self.drop_side();
                dev.switch_state(xs, XenbusState::Closed)
            }
            // The frontend starts again: offer again.
            XenbusState::Initialising if dev.state() == XenbusState::Closed => {
                be_config::publish(xs, dev.nodename(), &self.features)?;
                dev.switch_state(xs, XenbusState::InitWait)
            }
            _ => Ok(()),
        }
    }

    fn remove(&mut self, _xs: &mut Store, _dev: &mut Device) {
        self.drop_side();
    }
}

/// Both domains' buses with the net drivers registered.
pub struct BusPair {
    env: &'static Env<'static>,
    xs: &'static XenstoreSim,
    fe_xs: Store,
    be_xs: Store,
    fe_bus: Bus<Store>,
    be_bus: Bus<Store>,
    front: Rc<RefCell<Option<FrontSide<'static, 'static>>>>,
    back: Rc<RefCell<Option<BackSide<'static, 'static>>>>,
    connects: Rc<RefCell<u32>>,
}

impl std::fmt::Debug for BusPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusPair")
            .field("states", &self.states())
            .finish_non_exhaustive()
    }
}

impl BusPair {
    /// Registers the drivers and starts both buses (the toolstack's nodes must exist).
    ///
    /// # Panics
    /// If a bus cannot watch its root.
    #[must_use]
    pub fn new(env: &'static Env<'static>, xs: &'static XenstoreSim, opts: &Options) -> Self {
        let guest = env.world.guest.domid();
        let front = Rc::new(RefCell::new(None));
        let back = Rc::new(RefCell::new(None));
        let connects = Rc::new(RefCell::new(0));
        let mut fe_bus = Bus::new(Role::Frontend, guest);
        fe_bus.register(Box::new(FrontDriver {
            env,
            cfg: opts.front,
            slot: front.clone(),
            connects: connects.clone(),
        }));
        let mut be_bus = Bus::new(Role::Backend, 0);
        be_bus.register(Box::new(BackDriver {
            env,
            features: opts.back,
            limits: opts.limits,
            slot: back.clone(),
        }));
        let mut fe_xs = xs.client(guest);
        let mut be_xs = xs.client(0);
        be_bus.start(&mut be_xs).expect("backend bus");
        fe_bus.start(&mut fe_xs).expect("frontend bus");
        BusPair {
            env,
            xs,
            fe_xs,
            be_xs,
            fe_bus,
            be_bus,
            front,
            back,
            connects,
        }
    }

    /// Delivers watch events to both buses until nothing moves; returns how many.
    pub fn settle(&mut self) -> usize {
        let mut total = 0;
        for _ in 0..256 {
            self.xs.settle();
            let mut n = 0;
            while let Ok(Some((id, ev))) = self.be_xs.poll_event() {
                self.be_bus.handle_event(&mut self.be_xs, id, &ev);
                n += 1;
            }
            while let Ok(Some((id, ev))) = self.fe_xs.poll_event() {
                self.fe_bus.handle_event(&mut self.fe_xs, id, &ev);
                n += 1;
            }
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    }

    /// `(frontend, backend)` xenbus states as the buses know them.
    #[must_use]
    pub fn states(&self) -> (XenbusState, XenbusState) {
        let w = self.env.world;
        let st = |b: &Bus<Store>, d: &str| b.device(d).map_or(XenbusState::Unknown, Device::state);
        (st(&self.fe_bus, &w.fe_dir()), st(&self.be_bus, &w.be_dir()))
    }

    /// How many times the frontend driver has connected.
    #[must_use]
    pub fn connects(&self) -> u32 {
        *self.connects.borrow()
    }

    /// Settles, and once both ends are `Connected`, hands both halves over as a [`Pair`].
    #[must_use]
    pub fn take(&mut self) -> Option<Pair<'static, 'static>> {
        self.settle();
        if self.states() != (XenbusState::Connected, XenbusState::Connected) {
            return None;
        }
        let f = self.front.borrow_mut().take()?;
        let b = self.back.borrow_mut().take()?;
        Some(Pair::assemble(self.env, f, b))
    }

    /// The backend closes the device (as an unbind or the toolstack would); both state
    /// machines then run the reconnect (`Closing` → `Closed` → `Initialising`/`InitWait` →
    /// `Connected`). Release the previous [`Pair`] first.
    ///
    /// # Errors
    /// The switch's error.
    pub fn backend_close(&mut self) -> Result<(), Error> {
        let be = self.env.world.be_dir();
        self.be_bus
            .with_device(&mut self.be_xs, &be, |_, xs, dev| {
                dev.switch_state(xs, XenbusState::Closing)
            })
            .unwrap_or(Err(Error::BadValue))
    }
}

/// A leaked machine of `queues` queues with the toolstack's nodes in place, ready for a
/// [`BusPair`].
#[must_use]
pub fn machine(queues: u32, mac: &str) -> (&'static Env<'static>, &'static XenstoreSim) {
    let w = leak(World::new(queues));
    let xs = leak(XenstoreSim::new());
    w.toolstack(xs, mac, true);
    (leak(Env::new(w)), xs)
}
