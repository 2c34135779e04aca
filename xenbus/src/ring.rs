//! The xenstore interface ring as a [`Transport`].
//!
//! Every platform that talks to a real (or simulated) xenstored over the shared
//! `xenstore_domain_interface` page needs the same few lines: write requests into `req`, read
//! replies from `rsp`, notify the daemon through the store event channel after moving an index,
//! and sleep on that channel. [`RingTransport`] is those lines once, over `xen-ring`'s
//! hardened [`Interface`] (index checks, copy-once, sticky faults); the platform supplies only
//! an [`EventPort`].

use xen_ring::{Fault, Interface, SetupError};
use xen_shmem::SharedMem;

use crate::blocking::Transport;
use crate::error::TransportError;

/// The store event channel, as the platform provides it.
pub trait EventPort {
    /// Sends an event to the daemon (`EVTCHNOP_send` on the store port).
    ///
    /// # Errors
    /// When the channel is gone.
    fn notify(&mut self) -> Result<(), TransportError>;

    /// Blocks until the store port fires or a short platform timeout passes.
    ///
    /// # Errors
    /// When waiting any longer is pointless (closed, the platform's overall limit, or a
    /// simulator with nothing to do).
    fn wait(&mut self) -> Result<(), TransportError>;
}

/// The guest end of the xenstore ring plus its event channel.
#[derive(Debug)]
pub struct RingTransport<'a, E> {
    ring: Interface<'a>,
    port: E,
}

impl<'a, E: EventPort> RingTransport<'a, E> {
    /// Wraps an attached client end (`Interface::xenstore_client`).
    pub fn new(ring: Interface<'a>, port: E) -> Self {
        RingTransport { ring, port }
    }

    /// Attaches to the interface page `mem` as the guest end.
    ///
    /// # Errors
    /// When the page is too small or its indices are already inconsistent.
    pub fn attach(mem: SharedMem<'a>, port: E) -> Result<Self, SetupError> {
        Ok(Self::new(Interface::xenstore_client(mem)?, port))
    }

    /// The event port.
    pub fn port(&self) -> &E {
        &self.port
    }

    /// The event port, mutably.
    pub fn port_mut(&mut self) -> &mut E {
        &mut self.port
    }

    /// The sticky ring fault, if the daemon broke the ring protocol.
    pub fn fault(&self) -> Option<Fault> {
        self.ring.tx.fault().or(self.ring.rx.fault())
    }
}

impl<E: EventPort> Transport for RingTransport<'_, E> {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, TransportError> {
        let n = self
            .ring
            .tx
            .write(bytes)
            .map_err(|_| TransportError::Fault)?;
        if n > 0 {
            self.port.notify()?;
        }
        Ok(n)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        let n = self.ring.rx.read(buf).map_err(|_| TransportError::Fault)?;
        if n > 0 {
            // The daemon may be waiting for room to write more replies.
            self.port.notify()?;
        }
        Ok(n)
    }

    fn wait_for_event(&mut self) -> Result<(), TransportError> {
        self.port.wait()
    }
}
