//! xenbus: device trees, the `XenbusState` machine, otherend watching, driver registration.
//!
//! # Layout (`docs/misc/xenstore-paths.pandoc`)
//!
//! * Frontend device: `/local/domain/<fe>/device/<type>/<id>/`, holding `backend` (path of
//!   the backend directory), `backend-id` and `state`, plus the frontend's protocol nodes.
//! * Backend device: `/local/domain/<be>/backend/<type>/<fe>/<id>/`, holding `frontend`,
//!   `frontend-id`, `state`, plus the toolstack's configuration (`params`, `mode`, `type`,
//!   `physical-device-path` for FreeBSD's blkback...).
//!
//! A [`Bus`] watches its root (`device` or `backend`), probes a registered [`Driver`] for every
//! device directory of the driver's type, watches the other end's `state` node and calls
//! [`Driver::otherend_changed`] whenever that state changes, and [`Driver::remove`] when the
//! directory goes away.
//!
//! # The state machine
//!
//! [`XenbusState::can_switch_to`] encodes the legal transitions of our *own* state; everything
//! goes through [`Device::switch_state`]. Reconnection is `Closing`/`Closed` → `Initialising`.
//! The *other end's* state is never trusted to follow any rule: it is whatever the peer wrote.
//! A value that is not a state reads as [`XenbusState::Unknown`] (as Linux's
//! `xenbus_read_driver_state` does) and is counted.
//!
//! # Threat model
//!
//! The other end's nodes are untrusted: state values are parsed strictly, paths from `backend`
//! / `frontend` are checked (valid absolute path, and the ids must agree with the device
//! directory), and a peer that rewrites its `state` in a loop only produces collapsed watch
//! events (see [`crate::client`]) and at most one driver callback per actual change. The number
//! of devices per bus is capped.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::blocking::{Store, Transport, Xs};
use crate::client::{WatchEvent, WatchId};
use crate::error::{Error, InvalidArg, XsError};
use crate::path::{check_path, is_within, PathKind};
use crate::perms::DomId;

/// The `xen-sys` enum of `io/xenbus.h`, which this type mirrors (adding the state machine).
pub use xen_sys::consts::XenbusState as SysState;

/// `enum xenbus_state` (`io/xenbus.h`), with the transition rules of [`Device::switch_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XenbusState {
    /// 0: no state (node missing or unreadable).
    Unknown,
    /// 1: early initialisation.
    Initialising,
    /// 2: waiting for information from the peer or hotplug scripts.
    InitWait,
    /// 3: waiting for a connection from the peer.
    Initialised,
    /// 4: connected.
    Connected,
    /// 5: being closed (error or unplug).
    Closing,
    /// 6: closed.
    Closed,
    /// 7: being reconfigured.
    Reconfiguring,
    /// 8: reconfigured.
    Reconfigured,
}

impl XenbusState {
    /// Every state, in numeric order.
    pub const ALL: [XenbusState; 9] = [
        XenbusState::Unknown,
        XenbusState::Initialising,
        XenbusState::InitWait,
        XenbusState::Initialised,
        XenbusState::Connected,
        XenbusState::Closing,
        XenbusState::Closed,
        XenbusState::Reconfiguring,
        XenbusState::Reconfigured,
    ];

    /// The `xen-sys` view of the same state.
    pub const fn to_sys(self) -> SysState {
        match self {
            XenbusState::Unknown => SysState::Unknown,
            XenbusState::Initialising => SysState::Initialising,
            XenbusState::InitWait => SysState::InitWait,
            XenbusState::Initialised => SysState::Initialised,
            XenbusState::Connected => SysState::Connected,
            XenbusState::Closing => SysState::Closing,
            XenbusState::Closed => SysState::Closed,
            XenbusState::Reconfiguring => SysState::Reconfiguring,
            XenbusState::Reconfigured => SysState::Reconfigured,
        }
    }

    /// The wire number (from `io/xenbus.h` via `xen-sys`).
    pub const fn to_raw(self) -> u32 {
        self.to_sys().value()
    }

    /// From the wire number.
    pub fn from_raw(v: u32) -> Option<XenbusState> {
        SysState::from_value(v).map(XenbusState::from)
    }

    /// Parses a `state` node's value: a decimal number, optionally surrounded by ASCII
    /// whitespace or followed by NULs (what C writers leave). `None` for anything else.
    pub fn parse(value: &[u8]) -> Option<XenbusState> {
        let s = core::str::from_utf8(value).ok()?;
        let s = s.trim_end_matches('\0').trim_ascii();
        if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u32>().ok().and_then(Self::from_raw)
    }

    /// May a driver move its own device from `self` to `to`? Staying put is always allowed
    /// (and writes nothing).
    pub fn can_switch_to(self, to: XenbusState) -> bool {
        use XenbusState::*;
        if self == to {
            return true;
        }
        match (self, to) {
            (_, Unknown) => false,
            (Unknown, Initialising | InitWait | Closing | Closed) => true,
            (Initialising, InitWait | Initialised | Connected | Closing | Closed) => true,
            (InitWait, Initialised | Connected | Closing | Closed) => true,
            (Initialised, Connected | Closing | Closed) => true,
            (Connected, Reconfiguring | Closing | Closed) => true,
            (Reconfiguring, Reconfigured | Closing | Closed) => true,
            (Reconfigured, Connected | Closing | Closed) => true,
            // Reconnect.
            (Closing, Closed | Initialising) => true,
            (Closed, Initialising | InitWait) => true,
            _ => false,
        }
    }
}

impl From<SysState> for XenbusState {
    fn from(s: SysState) -> XenbusState {
        match s {
            SysState::Unknown => XenbusState::Unknown,
            SysState::Initialising => XenbusState::Initialising,
            SysState::InitWait => XenbusState::InitWait,
            SysState::Initialised => XenbusState::Initialised,
            SysState::Connected => XenbusState::Connected,
            SysState::Closing => XenbusState::Closing,
            SysState::Closed => XenbusState::Closed,
            SysState::Reconfiguring => XenbusState::Reconfiguring,
            SysState::Reconfigured => XenbusState::Reconfigured,
        }
    }
}

impl From<XenbusState> for SysState {
    fn from(s: XenbusState) -> SysState {
        s.to_sys()
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}({})", self.to_raw())
    }
}

/// Which end of devices a bus serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Devices under `/local/domain/<me>/device`.
    Frontend,
    /// Devices under `/local/domain/<me>/backend`.
    Backend,
}

/// Node operations plus watches: what a bus needs from a xenstore connection.
pub trait XenStore: Store {
    /// Registers a watch.
    ///
    /// # Errors
    /// As the connection's.
    fn watch(&mut self, path: &str) -> Result<WatchId, Error>;

    /// Removes a watch.
    ///
    /// # Errors
    /// As the connection's.
    fn unwatch(&mut self, id: WatchId) -> Result<(), Error>;
}

impl<T: Transport> XenStore for Xs<T> {
    fn watch(&mut self, path: &str) -> Result<WatchId, Error> {
        Xs::watch(self, path)
    }

    fn unwatch(&mut self, id: WatchId) -> Result<(), Error> {
        Xs::unwatch(self, id)
    }
}

/// One device as the bus knows it.
#[derive(Debug)]
pub struct Device {
    role: Role,
    devtype: String,
    id: String,
    nodename: String,
    otherend: String,
    otherend_id: DomId,
    state: XenbusState,
    otherend_state: XenbusState,
    otherend_watch: Option<WatchId>,
    failed: Option<Error>,
    transitions: u64,
}

impl Device {
    /// Frontend or backend.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Device type (`vbd`, `vif`...).
    pub fn devtype(&self) -> &str {
        &self.devtype
    }

    /// Device id within its type (`768`, `0`...).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Our directory (absolute).
    pub fn nodename(&self) -> &str {
        &self.nodename
    }

    /// The other end's directory (absolute, validated).
    pub fn otherend(&self) -> &str {
        &self.otherend
    }

    /// The other end's domain.
    pub fn otherend_id(&self) -> DomId {
        self.otherend_id
    }

    /// Our state as last written.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// The other end's state as last read.
    pub fn otherend_state(&self) -> XenbusState {
        self.otherend_state
    }

    /// The error that made the device fail, if any.
    pub fn failure(&self) -> Option<Error> {
        self.failed
    }

    /// State changes written so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// `nodename/key`.
    pub fn node(&self, key: &str) -> String {
        format!("{}/{key}", self.nodename)
    }

    /// `otherend/key`.
    pub fn otherend_node(&self, key: &str) -> String {
        format!("{}/{key}", self.otherend)
    }

    /// Moves our state to `to` and writes it to `nodename/state` (nothing is written when it
    /// does not change).
    ///
    /// # Errors
    /// [`InvalidArg::Transition`] for an illegal transition; the store's error.
    pub fn switch_state<S: Store + ?Sized>(
        &mut self,
        xs: &mut S,
        to: XenbusState,
    ) -> Result<(), Error> {
        if to == self.state {
            return Ok(());
        }
        if !self.state.can_switch_to(to) {
            return Err(Error::Invalid(InvalidArg::Transition));
        }
        xs.write_str(&self.node("state"), &format!("{}", to.to_raw()))?;
        self.state = to;
        self.transitions += 1;
        Ok(())
    }

    /// Reads one of the other end's nodes (untrusted bytes).
    ///
    /// # Errors
    /// The store's error.
    pub fn read_otherend<S: Store + ?Sized>(
        &self,
        xs: &mut S,
        key: &str,
    ) -> Result<Vec<u8>, Error> {
        xs.read(&self.otherend_node(key))
    }

    /// Reads one of the other end's nodes as an unsigned number.
    ///
    /// # Errors
    /// The store's error, or [`Error::BadValue`].
    pub fn read_otherend_u64<S: Store + ?Sized>(
        &self,
        xs: &mut S,
        key: &str,
    ) -> Result<u64, Error> {
        xs.read_u64(&self.otherend_node(key))
    }

    /// Writes one of our nodes.
    ///
    /// # Errors
    /// The store's error.
    pub fn write_node<S: Store + ?Sized>(
        &self,
        xs: &mut S,
        key: &str,
        value: &str,
    ) -> Result<(), Error> {
        xs.write_str(&self.node(key), value)
    }

    /// Gives up on the device: records `err`, writes it to `nodename/error` for the toolstack
    /// and the other end, and moves to `Closing` (`xenbus_dev_fatal`). Best effort: store
    /// failures here are ignored.
    pub fn fatal<S: Store + ?Sized>(&mut self, xs: &mut S, err: Error) {
        self.failed = Some(err);
        let _ = xs.write_str(&self.node("error"), &format!("{err}"));
        if self.state.can_switch_to(XenbusState::Closing) {
            let _ = self.switch_state(xs, XenbusState::Closing);
        }
    }
}

/// What a device driver implements (blkfront, blkback, netfront, netback). The bus calls it
/// from one thread; every callback may use the store.
pub trait Driver<S: ?Sized> {
    /// The device type it serves (`vbd`, `vif`).
    fn devtype(&self) -> &str;

    /// A new device: read the configuration, allocate, and usually switch to `Initialising`
    /// (frontend) or `InitWait` (backend). An error makes the device fail (`Closing`).
    ///
    /// # Errors
    /// Any; the bus records it.
    fn probe(&mut self, xs: &mut S, dev: &mut Device) -> Result<(), Error>;

    /// The other end's state changed to `state` (already recorded in `dev`).
    ///
    /// # Errors
    /// Any; the bus records it and moves the device to `Closing`.
    fn otherend_changed(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), Error>;

    /// The device directory is gone (unplugged, domain destroyed) or the bus stops: release
    /// everything. No further callbacks for this device follow.
    fn remove(&mut self, xs: &mut S, dev: &mut Device);
}

/// Counters of a bus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Devices probed.
    pub probed: u64,
    /// Devices removed.
    pub removed: u64,
    /// Device directories refused (bad `backend`/`frontend` details).
    pub refused: u64,
    /// Devices beyond the cap, ignored.
    pub over_limit: u64,
    /// Other-end state reads that were not a valid state.
    pub bad_states: u64,
    /// `otherend_changed` calls.
    pub otherend_changes: u64,
    /// Driver callbacks that failed.
    pub driver_errors: u64,
}

struct Entry {
    driver: usize,
    dev: Device,
}

/// A xenbus: the devices of one role in one domain, and the drivers for them.
pub struct Bus<S: ?Sized> {
    role: Role,
    domid: DomId,
    root: String,
    root_watch: Option<WatchId>,
    drivers: Vec<Box<dyn Driver<S>>>,
    devices: BTreeMap<String, Entry>,
    max_devices: usize,
    stats: BusStats,
}

impl<S: ?Sized> fmt::Debug for Bus<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("role", &self.role)
            .field("domid", &self.domid)
            .field("root", &self.root)
            .field("drivers", &self.drivers.len())
            .field("devices", &self.devices.keys().collect::<Vec<_>>())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<S: XenStore + ?Sized> Bus<S> {
    /// A bus for `role` in domain `domid` (devices under its home).
    pub fn new(role: Role, domid: DomId) -> Bus<S> {
        let dir = match role {
            Role::Frontend => "device",
            Role::Backend => "backend",
        };
        Bus {
            role,
            domid,
            root: format!("/local/domain/{domid}/{dir}"),
            root_watch: None,
            drivers: Vec::new(),
            devices: BTreeMap::new(),
            max_devices: 256,
            stats: BusStats::default(),
        }
    }

    /// Caps the number of devices (default 256).
    pub fn set_max_devices(&mut self, n: usize) {
        self.max_devices = n;
    }

    /// Registers a driver; devices of its type are probed at the next scan.
    pub fn register(&mut self, driver: Box<dyn Driver<S>>) {
        self.drivers.push(driver);
    }

    /// The watched root directory.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Counters.
    pub fn stats(&self) -> BusStats {
        self.stats
    }

    /// A device by its directory.
    pub fn device(&self, nodename: &str) -> Option<&Device> {
        self.devices.get(nodename).map(|e| &e.dev)
    }

    /// All devices.
    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.devices.values().map(|e| &e.dev)
    }

    /// Watches the root and probes what is already there.
    ///
    /// # Errors
    /// The store's error for the root watch.
    pub fn start(&mut self, xs: &mut S) -> Result<(), Error> {
        if self.root_watch.is_none() {
            self.root_watch = Some(xs.watch(&self.root)?);
        }
        self.rescan(xs);
        Ok(())
    }

    /// Removes every device (calling [`Driver::remove`]) and the watches.
    pub fn stop(&mut self, xs: &mut S) {
        let names: Vec<String> = self.devices.keys().cloned().collect();
        for n in names {
            self.remove_device(xs, &n);
        }
        if let Some(w) = self.root_watch.take() {
            let _ = xs.unwatch(w);
        }
    }

    /// Handles one watch event; false when the watch is not this bus's.
    pub fn handle_event(&mut self, xs: &mut S, id: WatchId, ev: &WatchEvent) -> bool {
        if Some(id) == self.root_watch {
            match self.device_dir_of(&ev.path) {
                Some(dir) if !ev.missed => self.refresh(xs, &dir),
                _ => self.rescan(xs),
            }
            return true;
        }
        let Some(name) = self
            .devices
            .iter()
            .find(|(_, e)| e.dev.otherend_watch == Some(id))
            .map(|(n, _)| n.clone())
        else {
            return false;
        };
        self.otherend_event(xs, &name);
        true
    }

    /// Runs `f` on a device and its driver (driver-initiated actions: unplug, resize...).
    pub fn with_device<R>(
        &mut self,
        xs: &mut S,
        nodename: &str,
        f: impl FnOnce(&mut dyn Driver<S>, &mut S, &mut Device) -> R,
    ) -> Option<R> {
        let e = self.devices.get_mut(nodename)?;
        let d = self.drivers.get_mut(e.driver)?;
        Some(f(d.as_mut(), xs, &mut e.dev))
    }

    /// Number of path components of a device directory below the root.
    fn depth(&self) -> usize {
        match self.role {
            Role::Frontend => 2, // <type>/<id>
            Role::Backend => 3,  // <type>/<fe>/<id>
        }
    }

    /// The device directory an event path belongs to, if it is at or below one.
    fn device_dir_of(&self, path: &str) -> Option<String> {
        let rest = path.strip_prefix(&self.root)?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.splitn(self.depth() + 1, '/').collect();
        if parts.len() < self.depth() {
            return None;
        }
        let dir = parts.get(..self.depth())?.join("/");
        Some(format!("{}/{dir}", self.root))
    }

    fn driver_for(&self, devtype: &str) -> Option<usize> {
        self.drivers.iter().position(|d| d.devtype() == devtype)
    }

    /// Lists the device directories under the root (bounded by the cap).
    fn scan(&mut self, xs: &mut S) -> Vec<String> {
        let mut found = Vec::new();
        let types = xs.directory(&self.root).unwrap_or_default();
        for t in types {
            if self.driver_for(&t).is_none() {
                continue;
            }
            let tdir = format!("{}/{t}", self.root);
            let mut dirs = Vec::new();
            match self.role {
                Role::Frontend => {
                    for id in xs.directory(&tdir).unwrap_or_default() {
                        dirs.push(format!("{tdir}/{id}"));
                    }
                }
                Role::Backend => {
                    for fe in xs.directory(&tdir).unwrap_or_default() {
                        let fdir = format!("{tdir}/{fe}");
                        for id in xs.directory(&fdir).unwrap_or_default() {
                            dirs.push(format!("{fdir}/{id}"));
                        }
                    }
                }
            }
            for d in dirs {
                if found.len() >= self.max_devices {
                    self.stats.over_limit += 1;
                    continue;
                }
                found.push(d);
            }
        }
        found
    }

    /// Full rescan: probe new device directories, remove vanished ones.
    pub fn rescan(&mut self, xs: &mut S) {
        let found = self.scan(xs);
        let gone: Vec<String> = self
            .devices
            .keys()
            .filter(|k| !found.contains(k))
            .cloned()
            .collect();
        for g in gone {
            self.remove_device(xs, &g);
        }
        for f in found {
            if !self.devices.contains_key(&f) {
                self.probe(xs, &f);
            }
        }
    }

    /// Re-examines one device directory after an event below it.
    fn refresh(&mut self, xs: &mut S, dir: &str) {
        let exists = matches!(xs.try_read(dir), Ok(Some(_)));
        match (exists, self.devices.contains_key(dir)) {
            (true, false) => self.probe(xs, dir),
            (false, true) => self.remove_device(xs, dir),
            _ => {}
        }
    }

    /// Reads and validates a device directory's identity.
    fn details(&self, xs: &mut S, dir: &str) -> Result<(String, String, String, DomId), Error> {
        let rest = dir
            .strip_prefix(&self.root)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or(Error::BadValue)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (devtype, fe_part, id) = match (self.role, parts.as_slice()) {
            (Role::Frontend, [t, id]) => (*t, None, *id),
            (Role::Backend, [t, fe, id]) => (*t, Some(*fe), *id),
            _ => return Err(Error::BadValue),
        };
        let (path_key, id_key) = match self.role {
            Role::Frontend => ("backend", "backend-id"),
            Role::Backend => ("frontend", "frontend-id"),
        };
        let other = xs.read_string(&format!("{dir}/{path_key}"))?;
        let other_id = xs.read_u64(&format!("{dir}/{id_key}"))?;
        let other_id = DomId::try_from(other_id).map_err(|_| Error::BadValue)?;
        if check_path(&other, false) != Some(PathKind::Absolute) || other == "/" {
            return Err(Error::BadValue);
        }
        // The other end must live in the other domain's tree, and a backend's directory
        // names its frontend's domain: they must agree.
        if !is_within(&other, &format!("/local/domain/{other_id}")) {
            return Err(Error::BadValue);
        }
        if let Some(fe) = fe_part {
            if fe.parse::<DomId>().ok() != Some(other_id) {
                return Err(Error::BadValue);
            }
        }
        Ok((devtype.to_string(), id.to_string(), other, other_id))
    }

    fn probe(&mut self, xs: &mut S, dir: &str) {
        if self.devices.len() >= self.max_devices {
            self.stats.over_limit += 1;
            return;
        }
        let Ok((devtype, id, otherend, otherend_id)) = self.details(xs, dir) else {
            self.stats.refused += 1;
            return;
        };
        let Some(driver) = self.driver_for(&devtype) else {
            return;
        };
        let state = match xs.read(&format!("{dir}/state")) {
            Ok(v) => XenbusState::parse(&v).unwrap_or(XenbusState::Unknown),
            Err(_) => XenbusState::Unknown,
        };
        let mut dev = Device {
            role: self.role,
            devtype,
            id,
            nodename: dir.to_string(),
            otherend,
            otherend_id,
            state,
            otherend_state: XenbusState::Unknown,
            otherend_watch: None,
            failed: None,
            transitions: 0,
        };
        self.stats.probed += 1;
        let probed = match self.drivers.get_mut(driver) {
            Some(d) => d.probe(xs, &mut dev),
            None => return,
        };
        if let Err(e) = probed {
            self.stats.driver_errors += 1;
            dev.fatal(xs, e);
        } else {
            // The watch's initial event delivers the other end's current state.
            match xs.watch(&dev.otherend_node("state")) {
                Ok(w) => dev.otherend_watch = Some(w),
                Err(e) => {
                    self.stats.driver_errors += 1;
                    dev.fatal(xs, e);
                }
            }
        }
        self.devices.insert(dir.to_string(), Entry { driver, dev });
    }

    fn otherend_event(&mut self, xs: &mut S, name: &str) {
        let Some(e) = self.devices.get_mut(name) else {
            return;
        };
        let state = match xs.read(&e.dev.otherend_node("state")) {
            Ok(v) => XenbusState::parse(&v).unwrap_or_else(|| {
                self.stats.bad_states += 1;
                XenbusState::Unknown
            }),
            Err(Error::Xs(XsError::NoEnt)) => XenbusState::Unknown,
            Err(_) => return,
        };
        if state == e.dev.otherend_state || e.dev.failed.is_some() {
            return;
        }
        e.dev.otherend_state = state;
        self.stats.otherend_changes += 1;
        let Some(d) = self.drivers.get_mut(e.driver) else {
            return;
        };
        if let Err(err) = d.otherend_changed(xs, &mut e.dev, state) {
            self.stats.driver_errors += 1;
            e.dev.fatal(xs, err);
        }
    }

    fn remove_device(&mut self, xs: &mut S, name: &str) {
        let Some(mut e) = self.devices.remove(name) else {
            return;
        };
        if let Some(w) = e.dev.otherend_watch.take() {
            let _ = xs.unwatch(w);
        }
        if let Some(d) = self.drivers.get_mut(e.driver) {
            d.remove(xs, &mut e.dev);
        }
        self.stats.removed += 1;
    }
}

impl<T: Transport> Bus<Xs<T>> {
    /// Handles up to `budget` queued watch events of a connection this bus owns alone (a
    /// connection shared with other watchers should dispatch through
    /// [`Bus::handle_event`]); returns how many were handled.
    ///
    /// # Errors
    /// Transport failures.
    pub fn poll(&mut self, xs: &mut Xs<T>, budget: usize) -> Result<usize, Error> {
        let mut n = 0;
        while n < budget {
            let Some((id, ev)) = xs.poll_event()? else {
                break;
            };
            self.handle_event(xs, id, &ev);
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_numbers_match_xenbus_h() {
        for (i, s) in (0u32..).zip(XenbusState::ALL) {
            assert_eq!(s.to_raw(), i);
            assert_eq!(XenbusState::from_raw(i), Some(s));
        }
        assert_eq!(XenbusState::from_raw(9), None);
    }

    #[test]
    fn parse_is_strict() {
        assert_eq!(XenbusState::parse(b"4"), Some(XenbusState::Connected));
        assert_eq!(XenbusState::parse(b" 6\n"), Some(XenbusState::Closed));
        assert_eq!(XenbusState::parse(b"1\0"), Some(XenbusState::Initialising));
        for bad in [
            &b""[..],
            b"9",
            b"-1",
            b"0x4",
            b"4a",
            b"99999999999",
            b"\xff",
            b"+4",
        ] {
            assert_eq!(XenbusState::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn transitions() {
        use XenbusState::*;
        let legal = [
            (Initialising, InitWait),
            (InitWait, Connected),
            (Initialised, Connected),
            (Connected, Closing),
            (Closing, Closed),
            (Closed, Initialising),
            (Closing, Initialising),
            (Connected, Reconfiguring),
            (Reconfiguring, Reconfigured),
            (Reconfigured, Connected),
        ];
        for (a, b) in legal {
            assert!(a.can_switch_to(b), "{a} -> {b}");
        }
        let illegal = [
            (Connected, Initialising),
            (Closed, Connected),
            (Closing, Connected),
            (Initialised, InitWait),
            (Connected, Unknown),
            (Initialising, Reconfiguring),
        ];
        for (a, b) in illegal {
            assert!(!a.can_switch_to(b), "{a} -> {b}");
        }
        for s in XenbusState::ALL {
            assert!(s.can_switch_to(s));
        }
    }
}
