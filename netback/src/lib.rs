//! PV network backend core (netif): negotiation, TX/RX by grant copy, bounded queues,
//! control ring (Toeplitz steering), multicast filter.
//!
//! # Data flow
//!
//! ```text
//! TX  frontend: packet → slots (≤ 18) + extras (GSO, csum flags) → TX ring → event
//!     netback:  Queue::process_tx: copy each request off the ring once → TxAssembler
//!               (framing + validation) → one batched grant copy into our staging pages →
//!               per-entry status check → NetIo::deliver (bridge / ifnet / TAP) → responses
//! RX  host:     Queue::enqueue_rx (bounded: packets and bytes) → Queue::process_rx: take the
//!               frontend's pre-posted buffers (each request copied once) → stage + grant
//!               copy into them → responses (+ GSO/hash extras) in request order → event
//! ```
//!
//! # Why grant copy, never map, for data
//!
//! A mapped guest page stays writable by the guest while we parse it (the double-fetch class)
//! and ties our teardown to the guest's cooperation (unmap must succeed before the page slot
//! can be reused). `GNTTABOP_copy` moves the bytes into memory only we can write, in one
//! hypercall per batch, and a failed entry is just a dropped packet. Only the ring pages are
//! mapped; they are reached through `xen_shmem::SharedMem` (atomic word accesses, no
//! references).
//!
//! # Shape
//!
//! * [`config`]: what we publish and how the frontend's keys are read (sans-IO over
//!   `xen_xenbus::Store`).
//! * [`queue::Queue`]: one queue's data path, generic over the hypercall seam
//!   ([`xen_kmod::Hypervisor`]); time is passed in; packets leave through [`NetIo`].
//! * [`ctrl`]: control ring, [`ctrl::Steering`] (Toeplitz), [`ctrl::McastFilter`].
//! * [`connect`]: turning a [`config::FrontendInfo`] into queues through a
//!   [`BackendPlatform`] (ring mapping, event binding, staging pages), and releasing them.
//!
//! Control path (negotiation, connect/disconnect) and data path (queues) are separate types so
//! that the platform can run each queue on its own thread or taskqueue.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;
pub mod ctrl;
pub mod queue;

// Also built for the unit tests, whose regressions drive a queue through its harness.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;

use alloc::vec::Vec;

use xen_kmod::Hypervisor;
use xen_netif::PacketMeta;
use xen_shmem::SharedMem;

pub use config::{BackendFeatures, ConfigError, FrontendInfo, Negotiated};
pub use queue::{Limits, Ports, Queue, QueueError, QueueStats, RxRefused, Work};

/// The data path's two hypervisor services: batched grant copy and notification. Every
/// [`Hypervisor`] provides them; a test or fuzz harness may provide them directly (with typed
/// [`xen_gnttab::GrantCopy`] entries instead of raw hypercall structs).
pub trait DataPlane {
    /// Performs the copies; each entry's `status` reports its outcome.
    fn copy(&self, ops: &mut [xen_gnttab::GrantCopy]);
    /// Sends an event on one of our ports (failures are ignored: a dead peer is noticed by
    /// the control path).
    fn notify(&self, port: u32);
}

impl<H: Hypervisor> DataPlane for H {
    fn copy(&self, ops: &mut [xen_gnttab::GrantCopy]) {
        // Per-entry statuses carry the outcome; the aggregate error adds nothing.
        let _ = xen_gnttab::copy_grants(self, ops);
    }
    fn notify(&self, port: u32) {
        let _ = xen_kmod::HypervisorExt::evtchn_send(self, port);
    }
}

/// A page of our own memory used as a grant-copy source or destination.
#[derive(Debug, Clone, Copy)]
pub struct LocalPage<'a> {
    /// Its guest frame number (what `GNTTABOP_copy` names).
    pub gfn: u64,
    /// Its contents.
    pub mem: SharedMem<'a>,
}

/// What the local interface accepts from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// Packets whose checksum is still to be completed (`csum_blank`). Without it the core
    /// completes checksums in software.
    pub csum: bool,
    /// Unsegmented GSO packets. Without it GSO packets are dropped (advertise no GSO then).
    pub gso: bool,
}

/// Where packets from the guest go (a bridge port, an ifnet, a TAP, a test queue).
pub trait NetIo {
    /// The offloads the interface accepts.
    fn offloads(&self) -> Offloads;

    /// A validated packet from the guest on queue `queue`.
    fn deliver(&mut self, queue: u16, data: &[u8], meta: &PacketMeta);

    /// The guest asks to add (`true`) or remove a multicast address; `false` refuses (filter
    /// full).
    fn multicast(&mut self, add: bool, mac: [u8; 6]) -> bool {
        let _ = (add, mac);
        true
    }
}

/// Why a platform service failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformError {
    /// Mapping a ring grant failed.
    Map,
    /// Binding an event channel failed.
    Bind,
    /// No memory.
    NoMemory,
}

/// Services the control path needs from the platform.
pub trait BackendPlatform<'a> {
    /// The hypercall seam for the data path (grant copy, notify).
    type Hv: Hypervisor + Clone;
    /// Keeps a mapped ring alive.
    type Mapping;

    /// A handle for a queue.
    fn hypervisor(&self) -> Self::Hv;
    /// Maps one ring page the frontend granted.
    ///
    /// # Errors
    /// [`PlatformError::Map`].
    fn map_ring(
        &mut self,
        domid: u16,
        gref: u32,
    ) -> Result<(Self::Mapping, SharedMem<'a>), PlatformError>;
    /// Unmaps it (only after every queue using it is gone).
    fn unmap_ring(&mut self, m: Self::Mapping);
    /// Binds to the frontend's port; returns ours.
    ///
    /// # Errors
    /// [`PlatformError::Bind`].
    fn bind(&mut self, domid: u16, remote_port: u32) -> Result<u32, PlatformError>;
    /// Closes one of our ports.
    fn unbind(&mut self, port: u32);
    /// A page of our memory for staging.
    ///
    /// # Errors
    /// [`PlatformError::NoMemory`].
    fn local_page(&mut self) -> Result<LocalPage<'a>, PlatformError>;
    /// Gives a staging page back.
    fn free_page(&mut self, page: LocalPage<'a>);
}

/// Staging pages per direction per queue: four maximal packets per batch.
pub const STAGING_PAGES: usize = 4 * xen_netif::MAX_PACKET.div_ceil(xen_netif::PAGE_SIZE);

/// What a connection holds besides its queues; release it after the queues are dropped.
#[derive(Debug)]
pub struct Resources<'a, M> {
    mappings: Vec<M>,
    ports: Vec<u32>,
    pages: Vec<LocalPage<'a>>,
}

impl<'a, M> Resources<'a, M> {
    /// Unmaps the rings, closes the ports and frees the pages. Call only once no queue or
    /// control ring of this connection exists any more (they view the mapped rings).
    pub fn release<P: BackendPlatform<'a, Mapping = M>>(self, p: &mut P) {
        for port in self.ports {
            p.unbind(port);
        }
        for m in self.mappings {
            p.unmap_ring(m);
        }
        for page in self.pages {
            p.free_page(page);
        }
    }
}

/// A connected vif: its queues (to hand to the data-path contexts), its control ring, and its
/// resources.
#[derive(Debug)]
pub struct Connection<'a, P: BackendPlatform<'a>> {
    /// The queues, in queue order.
    pub queues: Vec<Queue<'a, P::Hv>>,
    /// The control ring, if the frontend set one up.
    pub ctrl: Option<ctrl::CtrlRing<'a, P::Hv>>,
    /// Everything to release after `queues` and `ctrl` are dropped.
    pub resources: Resources<'a, P::Mapping>,
}

/// Why connecting failed (everything acquired so far was released).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    /// A platform service failed.
    Platform(PlatformError),
    /// A ring could not be attached (too small, or its indices already inconsistent).
    Ring(xen_ring::SetupError),
}

/// Maps the rings, binds the ports and builds the queues for `info`. On error, everything
/// acquired is released again (no half-connected state survives).
///
/// # Errors
/// [`ConnectError`].
pub fn connect<'a, P: BackendPlatform<'a>>(
    p: &mut P,
    domid: u16,
    info: &FrontendInfo,
    limits: Limits,
) -> Result<Connection<'a, P>, ConnectError> {
    let mut res = Resources {
        mappings: Vec::new(),
        ports: Vec::new(),
        pages: Vec::new(),
    };
    let r = build(p, domid, info, limits, &mut res);
    match r {
        Ok((queues, ctrl)) => Ok(Connection {
            queues,
            ctrl,
            resources: res,
        }),
        Err(e) => {
            res.release(p);
            Err(e)
        }
    }
}

type Built<'a, P> = (
    Vec<Queue<'a, <P as BackendPlatform<'a>>::Hv>>,
    Option<ctrl::CtrlRing<'a, <P as BackendPlatform<'a>>::Hv>>,
);

fn build<'a, P: BackendPlatform<'a>>(
    p: &mut P,
    domid: u16,
    info: &FrontendInfo,
    limits: Limits,
    res: &mut Resources<'a, P::Mapping>,
) -> Result<Built<'a, P>, ConnectError> {
    let pe = ConnectError::Platform;
    let mut queues = Vec::new();
    for (i, q) in info.queues.iter().enumerate() {
        let (m, tx) = p.map_ring(domid, q.tx_ring_ref).map_err(pe)?;
        res.mappings.push(m);
        let (m, rx) = p.map_ring(domid, q.rx_ring_ref).map_err(pe)?;
        res.mappings.push(m);
        let ports = match q.evtchn {
            config::EvtchnKeys::Single(r) => {
                let port = p.bind(domid, r).map_err(pe)?;
                res.ports.push(port);
                Ports { tx: port, rx: port }
            }
            config::EvtchnKeys::Split { tx, rx } => {
                let t = p.bind(domid, tx).map_err(pe)?;
                res.ports.push(t);
                let r = p.bind(domid, rx).map_err(pe)?;
                res.ports.push(r);
                Ports { tx: t, rx: r }
            }
        };
        let mut pages = |n: usize, res: &mut Resources<'a, P::Mapping>| {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let page = p.local_page().map_err(pe)?;
                res.pages.push(page);
                v.push(page);
            }
            Ok::<_, ConnectError>(v)
        };
        let txp = pages(STAGING_PAGES, res)?;
        let rxp = pages(STAGING_PAGES, res)?;
        let q = Queue::new(
            p.hypervisor(),
            u16::try_from(i).unwrap_or(u16::MAX),
            domid,
            ports,
            tx,
            rx,
            txp,
            rxp,
            info.features,
            limits,
        )
        .map_err(ConnectError::Ring)?;
        queues.push(q);
    }
    let ctrl = match info.ctrl {
        None => None,
        Some((gref, remote)) => {
            let (m, mem) = p.map_ring(domid, gref).map_err(pe)?;
            res.mappings.push(m);
            let port = p.bind(domid, remote).map_err(pe)?;
            res.ports.push(port);
            let page = p.local_page().map_err(pe)?;
            res.pages.push(page);
            Some(
                ctrl::CtrlRing::new(p.hypervisor(), domid, port, mem, page)
                    .map_err(ConnectError::Ring)?,
            )
        }
    };
    Ok((queues, ctrl))
}
