//! xenstore over its interface ring: xen-xenbus's [`RingTransport`] (the same one the FreeBSD
//! glue uses), with the guest's [`EventPort`]: `EVTCHNOP_send` to notify, `SCHEDOP_poll` on
//! the (masked) store port to wait.

use xen_kmod::hvm::{self, HvmParam};
use xen_xenbus::{Config, EventPort, RingTransport, TransportError, Xs};

use crate::arch;
use crate::console::RingError;
use crate::events::Events;

/// How long one wait blocks at most (ms).
const WAIT_MS: u64 = 50;
/// Waits one operation may make: 400 × 50 ms = 20 s.
const MAX_WAITS: u32 = 400;

/// The store event channel.
#[derive(Debug)]
pub struct StorePort {
    ev: Events,
    port: u32,
}

impl StorePort {
    /// The port number.
    pub fn number(&self) -> u32 {
        self.port
    }
}

impl EventPort for StorePort {
    fn notify(&mut self) -> Result<(), TransportError> {
        self.ev
            .notify(self.port)
            .map_err(|_| TransportError::Closed)
    }

    fn wait(&mut self) -> Result<(), TransportError> {
        self.ev
            .wait(self.port, WAIT_MS)
            .map(|_| ())
            .map_err(|_| TransportError::Closed)
    }
}

/// The guest's xenstore connection.
pub type GuestXs = Xs<RingTransport<'static, StorePort>>;

/// Connects to xenstore through the ring named by `HVM_PARAM_STORE_PFN` / `_EVTCHN`.
///
/// # Errors
/// The parameters, the frame or the ring indices are unusable.
pub fn connect(ev: Events) -> Result<GuestXs, RingError> {
    let pfn = hvm::get_param(ev.hv, HvmParam::StorePfn)?;
    let port = hvm::get_port_param(ev.hv, HvmParam::StoreEvtchn)?;
    let mem = arch::map_foreign_frame(pfn).map_err(RingError::Map)?;
    ev.mask(port);
    let transport = RingTransport::attach(mem, StorePort { ev, port }).map_err(RingError::Setup)?;
    let mut xs = Xs::new(transport, Config::default());
    xs.set_max_waits(MAX_WAITS);
    Ok(xs)
}
