//! xenbus negotiation, frontend side.
//!
//! Order (as Linux's and FreeBSD's netfronts): read the backend's offer (once it is in
//! `InitWait`), set up rings, pages and ports ([`setup`]), write our keys ([`publish`]), switch
//! to `Connected`; on a backend `Closing`/`Closed` tear down ([`Resources::release`]) and start
//! again from `Initialising` (reconnect), then send a gratuitous ARP ([`crate::arp`]).
//!
//! The backend's keys are untrusted text: flags parse strictly (anything but a number is
//! "off"), the queue count is clamped to what we want, and `feature-rx-copy` is required.

use alloc::format;
use alloc::vec::Vec;

use xen_kmod::Hypervisor;
use xen_netif::keys;
use xen_shmem::SharedMem;
use xen_xenbus::{Error, Store, XsError};

use crate::ctrl::CtrlClient;
use crate::queue::{Features, Ports, Queue, SharedPage};

/// What the backend offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendOffer {
    /// `feature-sg`.
    pub sg: bool,
    /// `feature-gso-tcpv4`.
    pub gso_v4: bool,
    /// `feature-gso-tcpv6`.
    pub gso_v6: bool,
    /// `feature-ipv6-csum-offload`.
    pub ipv6_csum: bool,
    /// `feature-rx-copy`.
    pub rx_copy: bool,
    /// `feature-multicast-control`.
    pub mcast: bool,
    /// `feature-split-event-channels`.
    pub split: bool,
    /// `multi-queue-max-queues` (1 when absent).
    pub max_queues: u32,
    /// `feature-ctrl-ring`.
    pub ctrl_ring: bool,
}

/// What we want.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendConfig {
    /// Queues wanted (FreeBSD's `hw.xn.num_queues`, default 4).
    pub queues: u32,
    /// Use split event channels when offered.
    pub split_evtchn: bool,
    /// Scatter-gather.
    pub sg: bool,
    /// TSO/GSO both ways (TCPv4 and TCPv6).
    pub gso: bool,
    /// IPv4 checksum offload both ways.
    pub csum: bool,
    /// IPv6 checksum offload both ways.
    pub ipv6_csum: bool,
    /// Ask the backend to filter multicast.
    pub request_mcast: bool,
    /// Set up the control ring when the backend offers one (for Toeplitz steering).
    pub ctrl_ring: bool,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            queues: 4,
            split_evtchn: true,
            sg: true,
            gso: true,
            csum: true,
            ipv6_csum: true,
            request_mcast: false,
            ctrl_ring: true,
        }
    }
}

fn flag<S: Store + ?Sized>(xs: &mut S, dir: &str, key: &str) -> Result<bool, Error> {
    match xs.read(&format!("{dir}/{key}")) {
        Ok(v) => Ok(keys::parse_u32(&v).is_some_and(|n| n != 0)),
        Err(Error::Xs(XsError::NoEnt)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads the backend directory `be`.
///
/// # Errors
/// The store's.
pub fn read_offer<S: Store + ?Sized>(xs: &mut S, be: &str) -> Result<BackendOffer, Error> {
    let max_queues = match xs.read(&format!("{be}/{}", keys::MQ_MAX_QUEUES)) {
        Ok(v) => keys::parse_u32(&v).unwrap_or(1).clamp(1, 64),
        Err(Error::Xs(XsError::NoEnt)) => 1,
        Err(e) => return Err(e),
    };
    Ok(BackendOffer {
        sg: flag(xs, be, keys::FEATURE_SG)?,
        gso_v4: flag(xs, be, keys::FEATURE_GSO_TCPV4)?,
        gso_v6: flag(xs, be, keys::FEATURE_GSO_TCPV6)?,
        ipv6_csum: flag(xs, be, keys::FEATURE_IPV6_CSUM)?,
        rx_copy: flag(xs, be, keys::FEATURE_RX_COPY)?,
        mcast: flag(xs, be, keys::FEATURE_MCAST)?,
        split: flag(xs, be, keys::FEATURE_SPLIT_EVTCHN)?,
        max_queues,
        ctrl_ring: flag(xs, be, keys::FEATURE_CTRL_RING)?,
    })
}

/// Our MAC (`mac` in our directory, written by the toolstack); `None` if absent or invalid.
///
/// # Errors
/// The store's (other than a missing node).
pub fn read_mac<S: Store + ?Sized>(xs: &mut S, fe: &str) -> Result<Option<[u8; 6]>, Error> {
    match xs.read(&format!("{fe}/{}", keys::MAC)) {
        Ok(v) => Ok(keys::parse_mac(&v)),
        Err(Error::Xs(XsError::NoEnt)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the backend is trusted (`trusted` in our directory; absent means trusted, as in
/// Linux).
///
/// # Errors
/// The store's (other than a missing node).
pub fn read_trusted<S: Store + ?Sized>(xs: &mut S, fe: &str) -> Result<bool, Error> {
    match xs.read(&format!("{fe}/{}", keys::TRUSTED)) {
        Ok(v) => Ok(keys::parse_u32(&v) != Some(0)),
        Err(Error::Xs(XsError::NoEnt)) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Why a platform service failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformError {
    /// No memory.
    NoMemory,
    /// Granting failed.
    Grant,
    /// Allocating an event channel failed.
    Evtchn,
    /// The backend does not offer `feature-rx-copy`.
    NoRxCopy,
    /// A ring could not be initialised.
    Ring,
}

/// Services the control path needs from the platform.
pub trait FrontendPlatform<'a> {
    /// The hypercall seam for the data path (notify).
    type Hv: Hypervisor + Clone;
    /// An owned grant.
    type Grant;

    /// A handle for a queue.
    fn hypervisor(&self) -> Self::Hv;
    /// A zeroed page of ours: its frame and contents.
    ///
    /// # Errors
    /// [`PlatformError::NoMemory`].
    fn alloc_page(&mut self) -> Result<(u64, SharedMem<'a>), PlatformError>;
    /// Grants `gfn` to `domid`.
    ///
    /// # Errors
    /// [`PlatformError::Grant`].
    fn grant(
        &mut self,
        domid: u16,
        gfn: u64,
        readonly: bool,
    ) -> Result<(u32, Self::Grant), PlatformError>;
    /// Ends the grant and frees the page — later, if the backend still has it mapped (the
    /// platform must not reuse the page before the revoke completes: XSA-396).
    fn release(&mut self, gfn: u64, grant: Self::Grant);
    /// An unbound port the backend domain may bind to.
    ///
    /// # Errors
    /// [`PlatformError::Evtchn`].
    fn alloc_unbound(&mut self, remote: u16) -> Result<u32, PlatformError>;
    /// Closes a port.
    fn close(&mut self, port: u32);
}

/// Everything a connection holds besides its queues.
#[derive(Debug)]
pub struct Resources<G> {
    pages: Vec<(u64, G)>,
    ports: Vec<u32>,
}

impl<G> Resources<G> {
    /// Closes the ports and releases every page (after the queues are dropped).
    pub fn release<'a, P: FrontendPlatform<'a, Grant = G>>(self, p: &mut P) {
        for port in self.ports {
            p.close(port);
        }
        for (gfn, g) in self.pages {
            p.release(gfn, g);
        }
    }
}

/// The keys of one queue, to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueKeys {
    /// TX ring grant.
    pub tx_ring_ref: u32,
    /// RX ring grant.
    pub rx_ring_ref: u32,
    /// Our ports.
    pub ports: Ports,
}

/// The control ring's keys, to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtrlKeys {
    /// `ctrl-ring-ref`.
    pub ring_ref: u32,
    /// `event-channel-ctrl`.
    pub port: u32,
}

/// A set-up connection: queues, keys to publish, resources.
#[derive(Debug)]
pub struct Setup<'a, P: FrontendPlatform<'a>> {
    /// Queues, in order.
    pub queues: Vec<Queue<'a, P::Hv>>,
    /// What to publish.
    pub keys: Vec<QueueKeys>,
    /// Whether split event channels are used.
    pub split: bool,
    /// The control ring, when the backend offered one and we wanted it.
    pub ctrl: Option<CtrlClient<'a, P::Hv>>,
    /// Its keys, to publish.
    pub ctrl_keys: Option<CtrlKeys>,
    /// Release after the queues are gone.
    pub resources: Resources<P::Grant>,
}

fn page<'a, P: FrontendPlatform<'a>>(
    p: &mut P,
    res: &mut Resources<P::Grant>,
    be: u16,
    readonly: bool,
) -> Result<SharedPage<'a>, PlatformError> {
    let (gfn, mem) = p.alloc_page()?;
    let (gref, g) = match p.grant(be, gfn, readonly) {
        Ok(x) => x,
        Err(e) => {
            // Never granted: the platform frees it through a no-op release path.
            return Err(e);
        }
    };
    res.pages.push((gfn, g));
    Ok(SharedPage { gfn, gref, mem })
}

/// Sets up rings, pages and ports for the offer; on error everything acquired is released.
///
/// # Errors
/// [`PlatformError`].
pub fn setup<'a, P: FrontendPlatform<'a>>(
    p: &mut P,
    backend: u16,
    offer: &BackendOffer,
    cfg: &FrontendConfig,
    trusted: bool,
) -> Result<Setup<'a, P>, PlatformError> {
    if !offer.rx_copy {
        return Err(PlatformError::NoRxCopy);
    }
    let mut res = Resources {
        pages: Vec::new(),
        ports: Vec::new(),
    };
    match build(p, backend, offer, cfg, trusted, &mut res) {
        Ok((queues, keys, split, ctrl)) => Ok(Setup {
            queues,
            keys,
            split,
            ctrl_keys: ctrl.as_ref().map(|(k, _)| *k),
            ctrl: ctrl.map(|(_, c)| c),
            resources: res,
        }),
        Err(e) => {
            res.release(p);
            Err(e)
        }
    }
}

type Built<'a, P> = (
    Vec<Queue<'a, <P as FrontendPlatform<'a>>::Hv>>,
    Vec<QueueKeys>,
    bool,
    Option<(CtrlKeys, CtrlClient<'a, <P as FrontendPlatform<'a>>::Hv>)>,
);

fn build<'a, P: FrontendPlatform<'a>>(
    p: &mut P,
    be: u16,
    offer: &BackendOffer,
    cfg: &FrontendConfig,
    trusted: bool,
    res: &mut Resources<P::Grant>,
) -> Result<Built<'a, P>, PlatformError> {
    let nq = cfg.queues.clamp(1, offer.max_queues.max(1));
    let split = cfg.split_evtchn && offer.split;
    let sg = cfg.sg && offer.sg;
    let feat = Features {
        sg,
        gso_v4: cfg.gso && sg && offer.gso_v4,
        gso_v6: cfg.gso && sg && offer.gso_v6,
        csum_v4: cfg.csum,
        csum_v6: cfg.ipv6_csum && offer.ipv6_csum,
        rx_gso: cfg.gso && sg,
        untrusted: !trusted,
    };
    let ring_slots = xen_ring::sring::ring_entries_for::<
        xen_netif::raw::TxRequest,
        xen_netif::raw::TxResponse,
    >(1) as usize;
    let rx_slots = xen_ring::sring::ring_entries_for::<
        xen_netif::raw::RxRequest,
        xen_netif::raw::RxResponse,
    >(1) as usize;
    let mut queues = Vec::new();
    let mut keys = Vec::new();
    for i in 0..nq {
        let tx_ring = page(p, res, be, false)?;
        let rx_ring = page(p, res, be, false)?;
        let mut tx_pages = Vec::with_capacity(ring_slots);
        for _ in 0..ring_slots {
            tx_pages.push(page(p, res, be, true)?);
        }
        let mut rx_pages = Vec::with_capacity(rx_slots);
        for _ in 0..rx_slots {
            rx_pages.push(page(p, res, be, false)?);
        }
        let tx_port = p.alloc_unbound(be)?;
        res.ports.push(tx_port);
        let rx_port = if split {
            let port = p.alloc_unbound(be)?;
            res.ports.push(port);
            port
        } else {
            tx_port
        };
        let ports = Ports {
            tx: tx_port,
            rx: rx_port,
        };
        let q = Queue::new(
            p.hypervisor(),
            u16::try_from(i).unwrap_or(0),
            ports,
            tx_ring.mem,
            rx_ring.mem,
            tx_pages,
            rx_pages,
            feat,
        )
        .map_err(|_| PlatformError::Ring)?;
        queues.push(q);
        keys.push(QueueKeys {
            tx_ring_ref: tx_ring.gref,
            rx_ring_ref: rx_ring.gref,
            ports,
        });
    }
    // The control ring: its ring page (read-write) and one data page for keys and mapping
    // tables, granted read-only (the backend only ever copies from it).
    let ctrl = if cfg.ctrl_ring && offer.ctrl_ring {
        let ring = page(p, res, be, false)?;
        let data = page(p, res, be, true)?;
        let port = p.alloc_unbound(be)?;
        res.ports.push(port);
        let c = CtrlClient::new(p.hypervisor(), port, nq, ring.mem, data)
            .map_err(|_| PlatformError::Ring)?;
        Some((
            CtrlKeys {
                ring_ref: ring.gref,
                port,
            },
            c,
        ))
    } else {
        None
    };
    Ok((queues, keys, split, ctrl))
}

/// Writes our keys into our directory `fe` (before switching to `Connected`).
///
/// # Errors
/// The store's.
pub fn publish<S: Store + ?Sized>(
    xs: &mut S,
    fe: &str,
    keys_: &[QueueKeys],
    split: bool,
    ctrl: Option<CtrlKeys>,
    offer: &BackendOffer,
    cfg: &FrontendConfig,
) -> Result<(), Error> {
    let w = |xs: &mut S, dir: &str, k: &str, v: u32| {
        xs.write_str(&format!("{dir}/{k}"), &format!("{v}"))
    };
    let queue = |xs: &mut S, dir: &str, q: &QueueKeys| -> Result<(), Error> {
        w(xs, dir, keys::TX_RING_REF, q.tx_ring_ref)?;
        w(xs, dir, keys::RX_RING_REF, q.rx_ring_ref)?;
        if split {
            w(xs, dir, keys::EVTCHN_TX, q.ports.tx)?;
            w(xs, dir, keys::EVTCHN_RX, q.ports.rx)
        } else {
            w(xs, dir, keys::EVTCHN, q.ports.tx)
        }
    };
    // Stale keys of an earlier connection must not survive a change of layout.
    for k in [
        keys::TX_RING_REF,
        keys::RX_RING_REF,
        keys::EVTCHN,
        keys::EVTCHN_TX,
        keys::EVTCHN_RX,
        keys::MQ_NUM_QUEUES,
        keys::CTRL_RING_REF,
        keys::EVTCHN_CTRL,
    ] {
        match xs.rm(&format!("{fe}/{k}")) {
            Ok(()) | Err(Error::Xs(XsError::NoEnt)) => {}
            Err(e) => return Err(e),
        }
    }
    if keys_.len() == 1 {
        queue(xs, fe, &keys_[0])?;
    } else {
        let n = u32::try_from(keys_.len()).unwrap_or(u32::MAX);
        w(xs, fe, keys::MQ_NUM_QUEUES, n)?;
        for (i, q) in (0u32..).zip(keys_) {
            queue(xs, &format!("{fe}/{}", keys::queue_dir(i)), q)?;
        }
    }
    if let Some(c) = ctrl {
        w(xs, fe, keys::CTRL_RING_REF, c.ring_ref)?;
        w(xs, fe, keys::EVTCHN_CTRL, c.port)?;
    }
    let sg = cfg.sg && offer.sg;
    let flags: [(&str, bool); 8] = [
        (keys::REQUEST_RX_COPY, true),
        (keys::FEATURE_RX_NOTIFY, true),
        (keys::FEATURE_SG, sg),
        (keys::FEATURE_GSO_TCPV4, cfg.gso && sg),
        (keys::FEATURE_GSO_TCPV6, cfg.gso && sg),
        (keys::FEATURE_NO_CSUM, !cfg.csum),
        (keys::FEATURE_IPV6_CSUM, cfg.ipv6_csum),
        (keys::REQUEST_MCAST, cfg.request_mcast && offer.mcast),
    ];
    for (k, v) in flags {
        w(xs, fe, k, u32::from(v))?;
    }
    Ok(())
}
