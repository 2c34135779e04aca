//! The glue between a guest's vif and an `if_t` interface `xnb<domid>.<handle>` that a
//! bridge(4) can hold: frames from the guest (netback TX) go up with `if_input`, frames the
//! bridge transmits go to the guest (netback RX), and the xenbus backend state machine
//! connects the queues and drives the link state.
//!
//! # Offloads
//!
//! The interface announces no offloads and accepts none from the guest
//! ([`xen_netback::Offloads`] all off): a bridge forwards frames to other members whose
//! capabilities it does not reconcile, so a frame must leave here complete. The netback core
//! therefore completes `csum_blank` checksums in software and drops GSO packets, and the
//! backend offers no GSO (the frontend then never sends any). A frame whose checksum the
//! guest marked verified (`data_validated`) goes up with `CSUM_DATA_VALID`, so a local
//! consumer does not verify it again. Towards the guest, a frame the local stack left with a
//! partial checksum (`CSUM_TCP`...) travels as `csum_blank`; netfront completes it.
//!
//! # Contexts
//!
//! As in xn: `if_input` only with the vif's lock released ([`XnbIf::event`] returns the
//! mbufs); the bridge's `if_transmit` only tries the lock.
//!
//! # A frontend that breaks the protocol
//!
//! The netback core stops a queue for good when the guest writes something no correct
//! frontend writes (a runaway `req_prod`, a TX packet with an extra of unknown type or too
//! many slots, one published in part: [`QueueError`]). The glue looks for such a failure
//! after every event and every transmit, and fails the whole vif at the first one (Linux's
//! netback disables the vif alike): the reason is logged once (`xnb<domid>.<handle>: queue
//! <q>: ...; vif failed`), the link goes down (the bridge's `if_transmit` answers `ENETDOWN`,
//! later events do nothing), and `sysctl dev.xnb.<N>.violations` counts it. Reporting it needs
//! the store, which the event and transmit contexts must not use: [`XnbIf::needs_report`]
//! makes the caller ask for a run on xen.ko's xenbus thread, where [`XnbIf::otherend_changed`]
//! unmaps the rings, unbinds the ports, writes the reason to the backend's xenstore `error`
//! node and switches to `Closing`. The guest may start again (its `Closed`, then
//! `Initialising`): a new connection is a fresh start, made only of what the guest publishes
//! then, and the vif carries frames again.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::ffi::CStr;
use core::fmt::Write as _;

use freebsd_kpi::kprintln;
use xen_netback::config::{self as be_config, BackendFeatures};
use xen_netback::{BackendPlatform, Connection, Limits, NetIo, Offloads, QueueError, RxRefused};
use xen_netif::tx::TxFault;
use xen_netif::{Csum, PacketMeta, MAX_PACKET};
use xen_xenbus::bus::XenStore;
use xen_xenbus::{Device, Error as XsErr, XenbusState};

/// FreeBSD errno values of the transmit path (`<sys/errno.h>`).
pub mod errno {
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    /// Message too long.
    pub const EMSGSIZE: i32 = 40;
    /// Network is down.
    pub const ENETDOWN: i32 = 50;
    /// No buffer space available.
    pub const ENOBUFS: i32 = 55;
}

/// What a transmitted mbuf asks of the offloads (`XENRS_XNB_TX_*`).
pub mod tx {
    /// `CSUM_TCP`/`CSUM_UDP`/`CSUM_TCP_IPV6`/`CSUM_UDP_IPV6`.
    pub const PARTIAL: u32 = 0x1;
    /// `CSUM_IP_TSO`.
    pub const TSO4: u32 = 0x2;
    /// `CSUM_IP6_TSO`.
    pub const TSO6: u32 = 0x4;
}

/// An opaque `if_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfHandle(pub usize);

/// An opaque `struct mbuf *`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbufHandle(pub usize);

/// What the glue needs from FreeBSD's network stack; the kernel implementation is
/// [`crate::sys::Kernel`].
pub trait IfKpi {
    /// `if_alloc(IFT_ETHER)` … `ether_ifattach` of an interface named `name` (the string
    /// must live as long as the interface).
    fn ifnet_create(&self, name: &CStr, mac: [u8; 6], mtu: u32) -> Option<IfHandle>;
    /// `ether_ifdetach` + `if_free`.
    fn ifnet_destroy(&self, ifp: IfHandle);
    /// `if_link_state_change`.
    fn link(&self, ifp: IfHandle, up: bool);
    /// `m_copydata` of the whole packet into `buf`.
    fn copydata(&self, m: MbufHandle, buf: &mut [u8]);
    /// A frame as an mbuf chain; `None` when no mbuf is free.
    fn mbuf(&self, ifp: IfHandle, data: &[u8], csum_valid: bool) -> Option<MbufHandle>;
    /// `if_input`.
    fn input(&self, ifp: IfHandle, m: MbufHandle);
    /// Monotonic nanoseconds.
    fn now_ns(&self) -> u64;
}

/// The MAC of every backend vif (Xen's convention: the guest owns the real one; ours never
/// appears as a source on the bridge).
pub const VIF_MAC: [u8; 6] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];

/// `IFNAMSIZ`.
const IFNAMSIZ: usize = 16;

/// The interface name of vif `handle` of domain `domid`: `xnb<domid>.<handle>`, NUL
/// terminated; `None` when it does not fit `IFNAMSIZ`.
#[must_use]
pub fn vif_name(domid: u16, handle: u32) -> Option<[u8; IFNAMSIZ]> {
    struct Buf([u8; IFNAMSIZ], usize);
    impl core::fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let end = self.1 + s.len();
            // Keep one byte for the NUL.
            if end >= IFNAMSIZ {
                return Err(core::fmt::Error);
            }
            self.0[self.1..end].copy_from_slice(s.as_bytes());
            self.1 = end;
            Ok(())
        }
    }
    let mut b = Buf([0; IFNAMSIZ], 0);
    write!(b, "xnb{domid}.{handle}").ok()?;
    Some(b.0)
}

/// The statistics under `dev.xnb.<unit>` (indices shared with `xnb_kmod.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevStat {
    Domid = 0,
    Handle = 1,
    ToGuestPackets = 2,
    ToGuestDropped = 3,
    FromGuestPackets = 4,
    FromGuestDropped = 5,
    Queues = 6,
    Connections = 7,
    Link = 8,
    Violations = 9,
}

impl DevStat {
    /// Every leaf, by index; the names as in the shim.
    pub const ALL: [(DevStat, &'static str); 10] = [
        (DevStat::Domid, "domid"),
        (DevStat::Handle, "handle"),
        (DevStat::ToGuestPackets, "to_guest_packets"),
        (DevStat::ToGuestDropped, "to_guest_dropped"),
        (DevStat::FromGuestPackets, "from_guest_packets"),
        (DevStat::FromGuestDropped, "from_guest_dropped"),
        (DevStat::Queues, "queues"),
        (DevStat::Connections, "connections"),
        (DevStat::Link, "link"),
        (DevStat::Violations, "violations"),
    ];
}

/// Counters of the glue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlueStats {
    /// Frames queued for the guest.
    pub to_guest: u64,
    /// Frames for the guest dropped.
    pub to_guest_dropped: u64,
    /// Frames from the guest passed up.
    pub from_guest: u64,
    /// Frames from the guest dropped (no mbuf).
    pub from_guest_dropped: u64,
    /// Connections made.
    pub connections: u64,
    /// Connections the frontend broke the protocol on (each failed the vif).
    pub violations: u64,
}

/// A queue the frontend broke (see the module docs): the vif is failed until the guest
/// connects again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The queue's number.
    pub queue: u16,
    /// What the frontend did.
    pub error: QueueError,
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "queue {}: ", self.queue)?;
        match self.error {
            QueueError::Ring(fault) => write!(f, "ring violation: {fault}"),
            QueueError::Tx(TxFault::TooManySlots) => {
                f.write_str("TX packet of more slots than netif allows")
            }
            QueueError::Tx(TxFault::TooManyExtras) => {
                f.write_str("TX packet of more extra slots than netif allows")
            }
            QueueError::Tx(TxFault::BadExtraType(t)) => {
                write!(f, "TX extra slot of unknown type {t}")
            }
            QueueError::Tx(TxFault::Incomplete) => f.write_str("TX packet published in part"),
        }
    }
}

/// Frames from the guest, as mbufs for `if_input` (after the lock is released).
struct ToStack<'k, K: IfKpi> {
    kpi: &'k K,
    ifp: IfHandle,
    out: &'k mut Vec<(IfHandle, MbufHandle)>,
    stats: &'k mut GlueStats,
}

impl<K: IfKpi> NetIo for ToStack<'_, K> {
    fn offloads(&self) -> Offloads {
        Offloads {
            csum: false,
            gso: false,
        }
    }

    fn deliver(&mut self, _queue: u16, data: &[u8], meta: &PacketMeta) {
        match self.kpi.mbuf(self.ifp, data, meta.csum == Csum::Validated) {
            Some(m) => {
                self.stats.from_guest += 1;
                self.out.push((self.ifp, m));
            }
            None => self.stats.from_guest_dropped += 1,
        }
    }
}

/// One guest vif: the netback queues, the ifnet, and the state machine between them.
pub struct XnbIf<'a, P: BackendPlatform<'a>, K: IfKpi> {
    plat: P,
    kpi: K,
    features: BackendFeatures,
    limits: Limits,
    /// `xnb<domid>.<handle>`, boxed so the address the ifnet keeps stays put.
    name: Option<Box<[u8; IFNAMSIZ]>>,
    domid: u16,
    handle: u32,
    ifp: Option<IfHandle>,
    conn: Option<Connection<'a, P>>,
    link: bool,
    more: bool,
    scratch: Vec<u8>,
    stats: GlueStats,
    failure: Option<Failure>,
    /// The failure is in the store (`error`, `Closing`).
    reported: bool,
}

impl<'a, P: BackendPlatform<'a>, K: IfKpi> core::fmt::Debug for XnbIf<'a, P, K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XnbIf")
            .field("domid", &self.domid)
            .field("handle", &self.handle)
            .field("link", &self.link)
            .field("stats", &self.stats)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl<'a, P: BackendPlatform<'a>, K: IfKpi> XnbIf<'a, P, K> {
    /// A vif on platform `plat`; what it offers is `features` with GSO forced off (see the
    /// module docs).
    pub fn new(plat: P, features: BackendFeatures, limits: Limits, kpi: K) -> Self {
        XnbIf {
            plat,
            kpi,
            features: BackendFeatures {
                gso: false,
                ..features
            },
            limits,
            name: None,
            domid: 0,
            handle: 0,
            ifp: None,
            conn: None,
            link: false,
            more: false,
            scratch: vec![0; MAX_PACKET],
            stats: GlueStats::default(),
            failure: None,
            reported: false,
        }
    }

    /// The frontend's protocol violation that failed the current connection, if any.
    pub fn failure(&self) -> Option<Failure> {
        self.failure
    }

    /// The vif failed and the store does not say so yet: the caller asks for a run of
    /// [`XnbIf::otherend_changed`] on the xenbus thread (a kick).
    pub fn needs_report(&self) -> bool {
        self.failure.is_some() && !self.reported
    }

    /// The interface, once created.
    pub fn ifnet(&self) -> Option<IfHandle> {
        self.ifp
    }

    /// The interface name.
    pub fn name(&self) -> Option<&str> {
        let n = self.name.as_deref()?;
        let end = n.iter().position(|b| *b == 0).unwrap_or(n.len());
        core::str::from_utf8(n.get(..end)?).ok()
    }

    /// Whether the link is up.
    pub fn link(&self) -> bool {
        self.link
    }

    /// The glue's counters.
    pub fn stats(&self) -> GlueStats {
        self.stats
    }

    /// The platform.
    pub fn platform(&mut self) -> &mut P {
        &mut self.plat
    }

    /// Leaf `which` of `dev.xnb.<unit>`.
    pub fn stat(&self, which: u32) -> Option<u64> {
        let (stat, _) = DevStat::ALL.get(usize::try_from(which).ok()?)?;
        Some(match stat {
            DevStat::Domid => u64::from(self.domid),
            DevStat::Handle => u64::from(self.handle),
            DevStat::ToGuestPackets => self.stats.to_guest,
            DevStat::ToGuestDropped => self.stats.to_guest_dropped,
            DevStat::FromGuestPackets => self.stats.from_guest,
            DevStat::FromGuestDropped => self.stats.from_guest_dropped,
            DevStat::Queues => self.conn.as_ref().map_or(0, |c| c.queues.len() as u64),
            DevStat::Connections => self.stats.connections,
            DevStat::Link => u64::from(self.link),
            DevStat::Violations => self.stats.violations,
        })
    }

    // ------------------------------------------------------------------ data path

    /// `if_transmit` (a frame the bridge sends to the guest); the caller frees the mbuf.
    pub fn transmit(
        &mut self,
        m: MbufHandle,
        len: u32,
        offload: u32,
        flowid: u32,
        hashed: bool,
    ) -> i32 {
        let r = self.try_transmit(m, len, offload, flowid, hashed);
        // Moving frames into the guest's buffers may have met a violation, which drops
        // what the queue held, this frame included.
        self.check_failure();
        let r = if self.failure.is_some() {
            r.and(Err(errno::ENETDOWN))
        } else {
            r
        };
        match r {
            Ok(()) => {
                self.stats.to_guest += 1;
                0
            }
            Err(e) => {
                self.stats.to_guest_dropped += 1;
                e
            }
        }
    }

    fn try_transmit(
        &mut self,
        m: MbufHandle,
        len: u32,
        offload: u32,
        flowid: u32,
        hashed: bool,
    ) -> Result<(), i32> {
        if offload & (tx::TSO4 | tx::TSO6) != 0 {
            // Never announced: a TSO frame here is a stack bug; refuse it whole.
            return Err(errno::EINVAL);
        }
        let len = usize::try_from(len).map_err(|_| errno::EMSGSIZE)?;
        if len == 0 || len > self.scratch.len() {
            return Err(errno::EMSGSIZE);
        }
        let now = self.kpi.now_ns();
        let Some(conn) = self.conn.as_mut().filter(|_| self.link) else {
            return Err(errno::ENETDOWN);
        };
        let n = conn.queues.len();
        let qi = if hashed && n > 0 {
            usize::try_from(flowid).unwrap_or(0) % n
        } else {
            0
        };
        let q = conn.queues.get_mut(qi).ok_or(errno::ENETDOWN)?;
        let buf = self.scratch.get_mut(..len).ok_or(errno::EMSGSIZE)?;
        self.kpi.copydata(m, buf);
        let meta = PacketMeta {
            csum: if offload & tx::PARTIAL != 0 {
                Csum::Partial
            } else {
                Csum::None
            },
            ..PacketMeta::default()
        };
        match q.enqueue_rx(buf, &meta) {
            Ok(()) => {}
            Err(RxRefused::Stalled) => {
                // The guest stopped taking frames for a while and its queue was dropped; it
                // may have posted buffers since (its event lifts the stall too): look, then
                // retry once.
                q.tick(now);
                q.enqueue_rx(buf, &meta).map_err(|_| errno::ENOBUFS)?;
            }
            Err(_) => return Err(errno::ENOBUFS),
        }
        // Move it into the guest's posted buffers now (bounded by the RX budget).
        let _ = q.process_rx(now);
        Ok(())
    }

    /// An event on one of the vif's ports: frames from the guest (returned for `if_input`
    /// once the lock is released), and frames queued for the guest moved into its buffers.
    pub fn event(&mut self) -> Vec<(IfHandle, MbufHandle)> {
        let mut out = Vec::new();
        // A failed vif's queues are not looked at again, whatever the guest writes.
        let (Some(ifp), Some(conn)) = (
            self.ifp,
            self.conn.as_mut().filter(|_| self.failure.is_none()),
        ) else {
            self.more = false;
            return out;
        };
        let now = self.kpi.now_ns();
        let mut io = ToStack {
            kpi: &self.kpi,
            ifp,
            out: &mut out,
            stats: &mut self.stats,
        };
        let mut more = false;
        for q in &mut conn.queues {
            let tx = q.process_tx(&mut io);
            // Enforces the stall timeout, and lifts a stall once the guest posted buffers.
            let _ = q.tick(now);
            let rx = q.process_rx(now);
            more |= tx.is_ok_and(|w| w.more) || rx.is_ok_and(|w| w.more);
        }
        self.more = more;
        self.check_failure();
        out
    }

    /// Fails the vif at the first queue the core stopped (see the module docs): logs the
    /// reason once and takes the link down. The rest needs the store
    /// ([`XnbIf::needs_report`]): [`XnbIf::otherend_changed`] reports it.
    fn check_failure(&mut self) {
        let queues = self.conn.as_ref().map_or(&[][..], |c| &c.queues[..]);
        let first = |q: &xen_netback::Queue<'_, _>| {
            let error = q.failure()?;
            Some(Failure {
                queue: q.index(),
                error,
            })
        };
        if let Some(f) = crate::sys::latch_failure(&mut self.failure, queues, first) {
            self.reported = false;
            self.more = false;
            self.stats.violations += 1;
            kprintln!("{}: {f}; vif failed", self.name().unwrap_or("xnb"));
            self.set_link(false);
        }
    }

    /// Whether the last [`XnbIf::event`] stopped at a budget with work left: the caller runs
    /// it again soon (the guest sends no new event for that work).
    pub fn more(&self) -> bool {
        self.more
    }

    /// `SIOCSIFMTU`: 0, or `EINVAL` beyond what one netif packet carries.
    pub fn set_mtu(&mut self, mtu: i32) -> i32 {
        match usize::try_from(mtu) {
            Ok(m) if (68..=MAX_PACKET - xen_netif::ETH_HLEN).contains(&m) => 0,
            _ => errno::EINVAL,
        }
    }

    // ------------------------------------------------------------------ control path

    /// xenbus probe of a backend vif directory: offer, `InitWait`, and the interface.
    ///
    /// # Errors
    /// Store errors; `BadValue` when the name does not fit or the ifnet cannot be made.
    pub fn probe<S: XenStore + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
    ) -> Result<(), XsErr> {
        self.domid = dev.otherend_id();
        self.handle = dev.id().parse().unwrap_or(0);
        if self.ifp.is_none() {
            let name = Box::new(vif_name(self.domid, self.handle).ok_or(XsErr::BadValue)?);
            let cname = CStr::from_bytes_until_nul(&name[..]).map_err(|_| XsErr::BadValue)?;
            let ifp = self
                .kpi
                .ifnet_create(cname, VIF_MAC, 1500)
                .ok_or(XsErr::BadValue)?;
            self.ifp = Some(ifp);
            self.name = Some(name);
        }
        be_config::publish(xs, dev.nodename(), &self.features)?;
        dev.switch_state(xs, XenbusState::InitWait)
    }

    /// The frontend's state changed.
    ///
    /// # Errors
    /// Store errors; `BadValue` when the frontend's configuration is refused or its rings
    /// cannot be mapped (the bus reports it in `error`).
    pub fn otherend_changed<S: XenStore + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        // A failure is reported once: rings unmapped, the reason in `error`, `Closing`.
        if let Some(f) = self.failure.filter(|_| !self.reported) {
            self.reported = true;
            self.disconnect();
            crate::sys::report_failure(xs, dev, &f)?;
        }
        match state {
            XenbusState::Connected if dev.state() == XenbusState::InitWait => {
                let fe = alloc::string::String::from(dev.otherend());
                let info = be_config::read_frontend(xs, &fe, &self.features)
                    .map_err(|_| XsErr::BadValue)?;
                let conn =
                    xen_netback::connect(&mut self.plat, dev.otherend_id(), &info, self.limits)
                        .map_err(|_| XsErr::BadValue)?;
                // A fresh start: what failed before belonged to the old rings.
                self.failure = None;
                self.reported = false;
                self.conn = Some(conn);
                dev.switch_state(xs, XenbusState::Connected)?;
                self.stats.connections += 1;
                self.set_link(true);
                Ok(())
            }
            XenbusState::Closing | XenbusState::Closed if dev.state() != XenbusState::Closed => {
                self.disconnect();
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

    fn set_link(&mut self, up: bool) {
        if self.link != up {
            self.link = up;
            if let Some(ifp) = self.ifp {
                self.kpi.link(ifp, up);
            }
        }
    }

    /// Drops the queues, then unmaps the rings, unbinds the ports and frees the pages.
    fn disconnect(&mut self) {
        self.set_link(false);
        if let Some(mut c) = self.conn.take() {
            c.queues.clear();
            c.ctrl = None;
            c.resources.release(&mut self.plat);
        }
    }

    /// The device is gone (or the driver detached): nothing of this vif runs afterwards.
    pub fn detach(&mut self) {
        self.disconnect();
        if let Some(ifp) = self.ifp.take() {
            self.kpi.ifnet_destroy(ifp);
        }
        // The ifnet kept a pointer to the name until it was destroyed.
        self.name = None;
    }
}
