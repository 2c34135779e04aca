//! xenstore over its interface ring: the byte [`Transport`] that `xen_xenbus::Xs` drives, as
//! the FreeBSD glue provides it, with `SCHEDOP_poll` on the store event channel as the wait.

use xen_kmod::hvm::{self, HvmParam};
use xen_ring::interface::Interface;
use xen_xenbus::{Config, Transport, TransportError, Xs};

use crate::arch;
use crate::console::RingError;
use crate::events::Events;

/// How long one `wait_for_event` blocks at most (ms).
const WAIT_MS: u64 = 50;
/// `wait_for_event` calls one operation may make: 400 × 50 ms = 20 s.
const MAX_WAITS: u32 = 400;

/// The xenstore ring and its event channel.
#[derive(Debug)]
pub struct RingTransport {
    ring: Interface<'static>,
    port: u32,
    ev: Events,
}

impl RingTransport {
    /// The store's event channel.
    pub fn port(&self) -> u32 {
        self.port
    }
}

impl Transport for RingTransport {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, TransportError> {
        let n = self
            .ring
            .tx
            .write(bytes)
            .map_err(|_| TransportError::Fault)?;
        if n > 0 {
            self.ev
                .notify(self.port)
                .map_err(|_| TransportError::Closed)?;
        }
        Ok(n)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        let n = self.ring.rx.read(buf).map_err(|_| TransportError::Fault)?;
        if n > 0 {
            self.ev
                .notify(self.port)
                .map_err(|_| TransportError::Closed)?;
        }
        Ok(n)
    }

    fn wait_for_event(&mut self) -> Result<(), TransportError> {
        self.ev
            .wait(self.port, WAIT_MS)
            .map(|_| ())
            .map_err(|_| TransportError::Closed)
    }
}

/// Connects to xenstore through the ring named by `HVM_PARAM_STORE_PFN` / `_EVTCHN`.
///
/// # Errors
/// The parameters, the frame or the ring indices are unusable.
pub fn connect(ev: Events) -> Result<Xs<RingTransport>, RingError> {
    let pfn = hvm::get_param(ev.hv, HvmParam::StorePfn)?;
    let port = hvm::get_port_param(ev.hv, HvmParam::StoreEvtchn)?;
    let mem = arch::map_foreign_frame(pfn).map_err(RingError::Map)?;
    let ring = Interface::xenstore_client(mem).map_err(RingError::Setup)?;
    ev.mask(port);
    let mut xs = Xs::new(RingTransport { ring, port, ev }, Config::default());
    xs.set_max_waits(MAX_WAITS);
    Ok(xs)
}
