//! The glue between an `if_t` interface `xn<N>` and the netfront core: a transmitted mbuf
//! becomes a packet on a queue's TX ring, a received packet becomes an mbuf for `if_input`,
//! the xenbus state machine connects the queues and drives the link state.
//!
//! # Offloads
//!
//! | FreeBSD | netif |
//! |---|---|
//! | `CSUM_TCP`/`CSUM_UDP` (and `_IPV6`): the stack left the pseudo-header sum | `Csum::Partial` (`csum_blank` + `data_validated`) |
//! | `CSUM_IP_TSO`/`CSUM_IP6_TSO` with `tso_segsz` | a GSO extra (`TcpV4`/`TcpV6`, size = `tso_segsz`) |
//! | received `Csum::Validated` | `CSUM_DATA_VALID \| CSUM_PSEUDO_HDR`, `csum_data` 0xffff |
//! | received `Csum::Partial` | completed here in software first (the packet may be forwarded: a bridge or a router must not send an incomplete checksum on), then as above |
//!
//! The capabilities offered (`IFCAP_TXCSUM`, `_IPV6`, `TSO4`, `TSO6`, `RXCSUM`, `_IPV6`; LRO
//! never: the backend already hands large TCP packets when GSO was negotiated) follow the
//! configuration, and are narrowed at each connection to what the backend offers, so the
//! stack never hands us a TSO packet the ring cannot carry.
//!
//! # Queues and the link
//!
//! A packet goes to queue `flowid % queues` when the stack hashed it (`M_HASHTYPE`), else to
//! queue 0, so one flow stays on one queue (no reordering). The link is up exactly while
//! connected; after a reconnection the glue sends a gratuitous ARP for the interface's first
//! IPv4 address, so the bridge behind the new backend learns where the MAC lives.
//!
//! # A backend that breaks the protocol
//!
//! The netfront core stops a queue for good when the backend writes something no correct
//! backend writes (a TX response for an id not in flight, a runaway `rsp_prod`, a malformed RX
//! response: [`FrontError`]). The glue looks for such a failure after every event and every
//! transmit, and fails the whole device at the first one (the backend can no longer be
//! trusted with any queue): the reason is logged once (`xn<N>: queue <q>: ...; device
//! failed`), the link goes down (`if_transmit` answers `ENETDOWN`, later events do nothing),
//! and `sysctl dev.xn.<N>.failed` reads 1. Reporting it needs the store, which the event and
//! transmit contexts must not use: [`XnIf::needs_report`] makes the caller ask for a run on
//! xen.ko's xenbus thread, where [`XnIf::otherend_changed`] releases the queues, writes the
//! reason to the device's xenstore `error` node and switches to `Closing`. Once the backend
//! closes too the device goes to `Closed` and stays there (no reconnection) until the
//! toolstack removes it (`xl network-detach`).
//!
//! # Contexts
//!
//! `if_input` must not be called with the interface's lock held (the stack may transmit a
//! reply from inside it, which comes back to the lock): [`XnIf::event`] returns the received mbufs
//! and the caller passes them up after unlocking.

use alloc::vec;
use alloc::vec::Vec;

use freebsd_kpi::kprintln;
use xen_netfront::negotiate::{self, FrontendConfig};
use xen_netfront::{FrontError, FrontendPlatform, Queue, Resources, SendError};
use xen_netif::{csum, Csum, Gso, GsoKind, PacketMeta, MAX_PACKET};
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

/// Interface capabilities (`XENRS_XN_*` in `xn_kmod.c`).
pub mod caps {
    /// `IFCAP_TXCSUM`.
    pub const TXCSUM: u32 = 0x01;
    /// `IFCAP_TXCSUM_IPV6`.
    pub const TXCSUM6: u32 = 0x02;
    /// `IFCAP_TSO4`.
    pub const TSO4: u32 = 0x04;
    /// `IFCAP_TSO6`.
    pub const TSO6: u32 = 0x08;
    /// `IFCAP_RXCSUM`.
    pub const RXCSUM: u32 = 0x10;
    /// `IFCAP_RXCSUM_IPV6`.
    pub const RXCSUM6: u32 = 0x20;
}

/// What a transmitted mbuf asks of the offloads (`XENRS_XN_TX_*`).
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
/// [`crate::sys::Kernel`], one shim call per method.
pub trait IfKpi {
    /// `if_alloc(IFT_ETHER)` … `ether_ifattach` of `xn<unit>`.
    fn ifnet_create(
        &self,
        unit: u32,
        mac: [u8; 6],
        caps: u32,
        enabled: u32,
        mtu: u32,
    ) -> Option<IfHandle>;
    /// New capabilities (and `if_hwassist`) after a connection narrowed them.
    fn ifnet_caps(&self, ifp: IfHandle, caps: u32, enabled: u32);
    /// `ether_ifdetach` + `if_free`.
    fn ifnet_destroy(&self, ifp: IfHandle);
    /// `if_link_state_change`.
    fn link(&self, ifp: IfHandle, up: bool);
    /// `m_copydata` of the whole packet into `buf`.
    fn copydata(&self, m: MbufHandle, buf: &mut [u8]);
    /// A received frame as an mbuf chain (`m_getcl` + `m_append`), checksum flags set when
    /// `csum_valid`; `None` when no mbuf is free.
    fn mbuf(&self, ifp: IfHandle, data: &[u8], csum_valid: bool) -> Option<MbufHandle>;
    /// `if_input`.
    fn input(&self, ifp: IfHandle, m: MbufHandle);
    /// The interface's first IPv4 address.
    fn ipv4(&self, ifp: IfHandle) -> Option<[u8; 4]>;
}

/// The offloads a packet asks for, as netif metadata.
///
/// # Errors
/// `EINVAL` for TSO without a segment size, or both TSO flavours at once.
pub fn tx_meta(offload: u32, tso_segsz: u32) -> Result<PacketMeta, i32> {
    let gso = match (offload & tx::TSO4 != 0, offload & tx::TSO6 != 0) {
        (false, false) => None,
        (true, true) => return Err(errno::EINVAL),
        (v4, _) => {
            let size = u16::try_from(tso_segsz)
                .ok()
                .filter(|s| *s > 0)
                .ok_or(errno::EINVAL)?;
            Some(Gso {
                kind: if v4 { GsoKind::TcpV4 } else { GsoKind::TcpV6 },
                size,
            })
        }
    };
    Ok(PacketMeta {
        // A TSO packet's checksum is always left to the segmenter.
        csum: if offload & tx::PARTIAL != 0 || gso.is_some() {
            Csum::Partial
        } else {
            Csum::None
        },
        gso,
        hash: None,
    })
}

/// The queue of a packet: by the stack's flow hash, so a flow keeps its order.
#[must_use]
pub fn pick_queue(flowid: u32, hashed: bool, queues: usize) -> usize {
    if hashed && queues > 0 {
        usize::try_from(flowid).unwrap_or(0) % queues
    } else {
        0
    }
}

/// The capabilities a configuration offers.
#[must_use]
pub fn config_caps(cfg: &FrontendConfig) -> u32 {
    let mut c = caps::RXCSUM | caps::RXCSUM6;
    if cfg.csum {
        c |= caps::TXCSUM;
    }
    if cfg.ipv6_csum {
        c |= caps::TXCSUM6;
    }
    if cfg.gso && cfg.sg {
        c |= caps::TSO4 | caps::TSO6;
    }
    c
}

/// The capabilities left once the backend's offer is known.
#[must_use]
pub fn negotiated_caps(cfg: &FrontendConfig, offer: &negotiate::BackendOffer) -> u32 {
    let mut c = config_caps(cfg);
    let sg = cfg.sg && offer.sg;
    if !(sg && offer.gso_v4) {
        c &= !caps::TSO4;
    }
    if !(sg && offer.gso_v6) {
        c &= !caps::TSO6;
    }
    if !offer.ipv6_csum {
        c &= !caps::TXCSUM6;
    }
    c
}

/// The statistics under `dev.xn.<unit>` (indices shared with `xn_kmod.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevStat {
    TxPackets = 0,
    TxBytes = 1,
    TxDropped = 2,
    RxPackets = 3,
    RxBytes = 4,
    RxDropped = 5,
    RxSwCsum = 6,
    Queues = 7,
    Connections = 8,
    Link = 9,
    Failed = 10,
}

impl DevStat {
    /// Every leaf, by index; the names as in the shim.
    pub const ALL: [(DevStat, &'static str); 11] = [
        (DevStat::TxPackets, "tx_packets"),
        (DevStat::TxBytes, "tx_bytes"),
        (DevStat::TxDropped, "tx_dropped"),
        (DevStat::RxPackets, "rx_packets"),
        (DevStat::RxBytes, "rx_bytes"),
        (DevStat::RxDropped, "rx_dropped"),
        (DevStat::RxSwCsum, "rx_sw_csum"),
        (DevStat::Queues, "queues"),
        (DevStat::Connections, "connections"),
        (DevStat::Link, "link"),
        (DevStat::Failed, "failed"),
    ];
}

/// Counters of the glue (the queues count the rest; those of past connections are kept).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlueStats {
    /// Packets dropped on transmit.
    pub tx_dropped: u64,
    /// Received packets dropped for want of an mbuf (or a malformed partial checksum).
    pub rx_dropped: u64,
    /// Received partial checksums completed here.
    pub rx_sw_csum: u64,
    /// Gratuitous ARPs sent after reconnections.
    pub garps: u64,
    /// Connections made.
    pub connections: u64,
    /// Queue counters of connections that ended.
    pub past: xen_netfront::Stats,
}

/// A queue the backend broke (see the module docs): the device is failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The queue's number.
    pub queue: u16,
    /// What the backend did.
    pub error: FrontError,
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "queue {}: ", self.queue)?;
        match self.error {
            FrontError::Ring(fault) => write!(f, "ring violation: {fault}"),
            FrontError::BadTxId(id) => {
                write!(f, "backend answered TX id {id}, which is not in flight")
            }
            FrontError::UnexpectedNull => {
                f.write_str("backend sent a NULL TX response with no extra slot outstanding")
            }
            FrontError::Rx(rx) => write!(f, "malformed RX response ({rx:?})"),
        }
    }
}

struct Conn<'a, P: FrontendPlatform<'a>> {
    queues: Vec<Queue<'a, P::Hv>>,
    resources: Option<Resources<P::Grant>>,
}

/// One `xn<unit>`: the netfront queues, the ifnet, and the state machine between them.
pub struct XnIf<'a, P: FrontendPlatform<'a>, K: IfKpi> {
    plat: P,
    kpi: K,
    cfg: FrontendConfig,
    unit: u32,
    ifp: Option<IfHandle>,
    mac: [u8; 6],
    caps: u32,
    enabled: u32,
    conn: Option<Conn<'a, P>>,
    link: bool,
    more: bool,
    scratch: Vec<u8>,
    stats: GlueStats,
    failure: Option<Failure>,
    /// The failure is in the store (`error`, `Closing`).
    reported: bool,
}

impl<'a, P: FrontendPlatform<'a>, K: IfKpi> core::fmt::Debug for XnIf<'a, P, K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XnIf")
            .field("unit", &self.unit)
            .field("link", &self.link)
            .field("queues", &self.conn.as_ref().map_or(0, |c| c.queues.len()))
            .field("stats", &self.stats)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl<'a, P: FrontendPlatform<'a>, K: IfKpi> XnIf<'a, P, K> {
    /// Interface `xn<unit>` on platform `plat`.
    pub fn new(plat: P, cfg: FrontendConfig, kpi: K, unit: u32) -> Self {
        let caps = config_caps(&cfg);
        XnIf {
            plat,
            kpi,
            cfg,
            unit,
            ifp: None,
            mac: [0; 6],
            caps,
            enabled: caps,
            conn: None,
            link: false,
            more: false,
            scratch: vec![0; MAX_PACKET],
            stats: GlueStats::default(),
            failure: None,
            reported: false,
        }
    }

    /// The backend's protocol violation that failed the device, if any.
    pub fn failure(&self) -> Option<Failure> {
        self.failure
    }

    /// The device failed and the store does not say so yet: the caller asks for a run of
    /// [`XnIf::otherend_changed`] on the xenbus thread (a kick).
    pub fn needs_report(&self) -> bool {
        self.failure.is_some() && !self.reported
    }

    /// The ifnet, once created.
    pub fn ifnet(&self) -> Option<IfHandle> {
        self.ifp
    }

    /// Whether the link is up (connected).
    pub fn link(&self) -> bool {
        self.link
    }

    /// The glue's counters.
    pub fn stats(&self) -> GlueStats {
        self.stats
    }

    /// The capabilities offered now, and the enabled ones.
    pub fn caps(&self) -> (u32, u32) {
        (self.caps, self.enabled)
    }

    /// The platform.
    pub fn platform(&mut self) -> &mut P {
        &mut self.plat
    }

    fn queue_stats(&self) -> xen_netfront::Stats {
        let mut s = self.stats.past;
        for q in self.conn.iter().flat_map(|c| &c.queues) {
            add_stats(&mut s, &q.stats());
        }
        s
    }

    /// Leaf `which` of `dev.xn.<unit>`.
    pub fn stat(&self, which: u32) -> Option<u64> {
        let (stat, _) = DevStat::ALL.get(usize::try_from(which).ok()?)?;
        let q = self.queue_stats();
        Some(match stat {
            DevStat::TxPackets => q.tx_packets,
            DevStat::TxBytes => q.tx_bytes,
            DevStat::TxDropped => self.stats.tx_dropped + q.tx_errors,
            DevStat::RxPackets => q.rx_packets,
            DevStat::RxBytes => q.rx_bytes,
            DevStat::RxDropped => self.stats.rx_dropped + q.rx_dropped,
            DevStat::RxSwCsum => self.stats.rx_sw_csum,
            DevStat::Queues => self.conn.as_ref().map_or(0, |c| c.queues.len() as u64),
            DevStat::Connections => self.stats.connections,
            DevStat::Link => u64::from(self.link),
            DevStat::Failed => u64::from(self.failure.is_some()),
        })
    }

    // ------------------------------------------------------------------ data path

    /// `if_transmit`: copies the packet onto a queue's ring (the caller frees the mbuf);
    /// 0 or the errno (the packet is then dropped).
    pub fn transmit(
        &mut self,
        m: MbufHandle,
        len: u32,
        offload: u32,
        tso_segsz: u32,
        flowid: u32,
        hashed: bool,
    ) -> i32 {
        let r = self.try_transmit(m, len, offload, tso_segsz, flowid, hashed);
        // Sending (or reclaiming to make room) may have met a violation.
        self.check_failure();
        match r {
            Ok(()) => 0,
            Err(e) => {
                self.stats.tx_dropped += 1;
                e
            }
        }
    }

    fn try_transmit(
        &mut self,
        m: MbufHandle,
        len: u32,
        offload: u32,
        tso_segsz: u32,
        flowid: u32,
        hashed: bool,
    ) -> Result<(), i32> {
        let meta = tx_meta(offload, tso_segsz)?;
        let len = usize::try_from(len).map_err(|_| errno::EMSGSIZE)?;
        if len == 0 || len > self.scratch.len() {
            return Err(errno::EMSGSIZE);
        }
        let Some(conn) = self.conn.as_mut().filter(|_| self.link) else {
            return Err(errno::ENETDOWN);
        };
        let qi = pick_queue(flowid, hashed, conn.queues.len());
        let q = conn.queues.get_mut(qi).ok_or(errno::ENETDOWN)?;
        let buf = self.scratch.get_mut(..len).ok_or(errno::EMSGSIZE)?;
        self.kpi.copydata(m, buf);
        let mut r = q.send(buf, &meta);
        if r == Err(SendError::Busy) {
            // Reclaim what the backend finished, once, then give up (ENOBUFS: the stack
            // counts the drop; TCP retransmits).
            let _ = q.poll_tx();
            r = q.send(buf, &meta);
        }
        r.map_err(|e| match e {
            SendError::Busy => errno::ENOBUFS,
            SendError::BadLength => errno::EMSGSIZE,
            SendError::Unsupported => errno::EINVAL,
            SendError::Failed(_) => errno::ENETDOWN,
        })
    }

    /// An event on one of the ports (or a poll): reclaims TX, receives. Returns the mbufs
    /// to pass to `if_input` once the caller has released the interface's lock.
    pub fn event(&mut self) -> Vec<(IfHandle, MbufHandle)> {
        let mut out = Vec::new();
        let Some(ifp) = self.ifp else {
            return out;
        };
        // A failed device's queues are not looked at again, whatever the backend writes.
        let Some(conn) = self.conn.as_mut().filter(|_| self.failure.is_none()) else {
            self.more = false;
            return out;
        };
        let kpi = &self.kpi;
        let stats = &mut self.stats;
        let mut more = false;
        for q in &mut conn.queues {
            let _ = q.poll_tx();
            // Bounded by the queue's budget per call; what is left is asked for again
            // ([`XnIf::more`]).
            let work = q.poll_rx(|data, meta| {
                let valid;
                let m = if meta.csum == Csum::Partial {
                    let mut owned = data.to_vec();
                    if csum::complete_partial(&mut owned).is_ok() {
                        stats.rx_sw_csum += 1;
                        valid = true;
                    } else {
                        valid = false;
                    }
                    kpi.mbuf(ifp, &owned, valid)
                } else {
                    kpi.mbuf(ifp, data, meta.csum == Csum::Validated)
                };
                match m {
                    Some(m) => out.push((ifp, m)),
                    None => stats.rx_dropped += 1,
                }
            });
            more |= work.is_ok_and(|w| w.more);
        }
        self.more = more;
        self.check_failure();
        out
    }

    /// Fails the device at the first queue the core stopped (see the module docs): logs the
    /// reason once and takes the link down. The rest needs the store ([`XnIf::needs_report`]):
    /// [`XnIf::otherend_changed`] reports it.
    fn check_failure(&mut self) {
        let queues = self.conn.as_ref().map_or(&[][..], |c| &c.queues[..]);
        let first = |q: &Queue<'a, P::Hv>| {
            let error = q.failure()?;
            Some(Failure {
                queue: q.index(),
                error,
            })
        };
        if let Some(f) = crate::sys::latch_failure(&mut self.failure, queues, first) {
            self.more = false;
            kprintln!("xn{}: {f}; device failed", self.unit);
            self.link_down();
        }
    }

    /// Whether the last [`XnIf::event`] stopped at a queue's budget with frames left: the
    /// caller runs it again soon (the backend sends no new event for those).
    pub fn more(&self) -> bool {
        self.more
    }

    // ------------------------------------------------------------------ ioctls

    /// `SIOCSIFMTU`: 0 or `EINVAL`.
    pub fn set_mtu(&mut self, mtu: i32) -> i32 {
        let max = if self.cfg.sg {
            MAX_PACKET - xen_netif::ETH_HLEN
        } else {
            xen_netif::PAGE_SIZE - xen_netif::ETH_HLEN
        };
        match usize::try_from(mtu) {
            Ok(m) if (68..=max).contains(&m) => 0,
            _ => errno::EINVAL,
        }
    }

    /// `SIOCSIFCAP`: the capabilities now enabled.
    pub fn set_caps(&mut self, enabled: u32) {
        self.enabled = enabled & self.caps;
    }

    // ------------------------------------------------------------------ control path

    /// xenbus probe: creates the interface with the toolstack's MAC.
    ///
    /// # Errors
    /// Store errors; `BadValue` without a usable `mac` or when the ifnet cannot be made.
    pub fn probe<S: XenStore + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
    ) -> Result<(), XsErr> {
        let mac = negotiate::read_mac(xs, dev.nodename())?.ok_or(XsErr::BadValue)?;
        self.mac = mac;
        if self.ifp.is_none() {
            self.ifp = Some(
                self.kpi
                    .ifnet_create(self.unit, mac, self.caps, self.enabled, 1500)
                    .ok_or(XsErr::BadValue)?,
            );
        }
        dev.switch_state(xs, XenbusState::Initialising)
    }

    /// The backend's state changed.
    ///
    /// # Errors
    /// Store errors, and `BadValue` when the platform could not set the queues up (the bus
    /// reports it in `error`).
    pub fn otherend_changed<S: XenStore + ?Sized>(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        if self.failure.is_some() {
            // Failed for good: report it (once: queues released, the reason in `error`,
            // `Closing`), close when the backend does, never start again.
            if let Some(f) = self.failure.filter(|_| !self.reported) {
                self.reported = true;
                self.disconnect();
                crate::sys::report_failure(xs, dev, &f)?;
            }
            if matches!(state, XenbusState::Closing | XenbusState::Closed)
                && dev.state() == XenbusState::Closing
            {
                dev.switch_state(xs, XenbusState::Closed)?;
            }
            return Ok(());
        }
        match state {
            XenbusState::InitWait if dev.state() == XenbusState::Initialising => {
                self.connect(xs, dev)
            }
            XenbusState::Closing | XenbusState::Closed
                if matches!(
                    dev.state(),
                    XenbusState::Connected | XenbusState::Initialising | XenbusState::Initialised
                ) =>
            {
                self.disconnect();
                dev.switch_state(xs, XenbusState::Closed)
            }
            // The backend is back in Closed after our Closed: start again.
            XenbusState::Closed if dev.state() == XenbusState::Closed => {
                dev.switch_state(xs, XenbusState::Initialising)
            }
            _ => Ok(()),
        }
    }

    fn connect<S: XenStore + ?Sized>(&mut self, xs: &mut S, dev: &mut Device) -> Result<(), XsErr> {
        let be = alloc::string::String::from(dev.otherend());
        let fe = alloc::string::String::from(dev.nodename());
        let offer = negotiate::read_offer(xs, &be)?;
        let trusted = negotiate::read_trusted(xs, &fe)?;
        let setup = negotiate::setup(
            &mut self.plat,
            dev.otherend_id(),
            &offer,
            &self.cfg,
            trusted,
        )
        .map_err(|_| XsErr::BadValue)?;
        let published = negotiate::publish(
            xs,
            &fe,
            &setup.keys,
            setup.split,
            setup.ctrl_keys,
            &offer,
            &self.cfg,
        )
        .and_then(|()| dev.switch_state(xs, XenbusState::Connected));
        // Steering through the control ring is not configured: flows are spread by the
        // backend's default (queue 0) and by our flowid choice on transmit.
        drop(setup.ctrl);
        if let Err(e) = published {
            drop(setup.queues);
            setup.resources.release(&mut self.plat);
            return Err(e);
        }
        self.conn = Some(Conn {
            queues: setup.queues,
            resources: Some(setup.resources),
        });
        let caps = negotiated_caps(&self.cfg, &offer);
        if let Some(ifp) = self.ifp {
            if caps != self.caps {
                self.caps = caps;
                self.enabled &= caps;
                self.kpi.ifnet_caps(ifp, self.caps, self.enabled);
            }
            self.kpi.link(ifp, true);
        }
        self.link = true;
        self.stats.connections += 1;
        if self.stats.connections > 1 {
            self.announce();
        }
        Ok(())
    }

    /// The gratuitous ARP after a reconnection (see the module docs).
    fn announce(&mut self) {
        let Some(ifp) = self.ifp else { return };
        let Some(ip) = self.kpi.ipv4(ifp) else { return };
        let frame = xen_netfront::arp::gratuitous(self.mac, ip);
        if let Some(q) = self.conn.as_mut().and_then(|c| c.queues.first_mut()) {
            if q.send(&frame, &PacketMeta::default()).is_ok() {
                self.stats.garps += 1;
            }
        }
    }

    /// Drops the queues (their ports closed, pages revoked) and takes the link down.
    fn disconnect(&mut self) {
        if let Some(mut c) = self.conn.take() {
            for q in &c.queues {
                add_stats(&mut self.stats.past, &q.stats());
            }
            c.queues.clear();
            if let Some(r) = c.resources.take() {
                r.release(&mut self.plat);
            }
        }
        self.link_down();
    }

    fn link_down(&mut self) {
        if self.link {
            self.link = false;
            if let Some(ifp) = self.ifp {
                self.kpi.link(ifp, false);
            }
        }
    }

    /// The device is gone (or the driver detached): queues released, interface destroyed.
    /// Nothing of this interface runs afterwards.
    pub fn detach(&mut self) {
        self.disconnect();
        if let Some(ifp) = self.ifp.take() {
            self.kpi.ifnet_destroy(ifp);
        }
    }
}

fn add_stats(to: &mut xen_netfront::Stats, s: &xen_netfront::Stats) {
    to.tx_packets += s.tx_packets;
    to.tx_bytes += s.tx_bytes;
    to.tx_errors += s.tx_errors;
    to.rx_packets += s.rx_packets;
    to.rx_bytes += s.rx_bytes;
    to.rx_dropped += s.rx_dropped;
    to.sw_csum += s.sw_csum;
}
