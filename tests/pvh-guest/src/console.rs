//! The PV console: the `xencons_interface` ring (xen-ring's interface ring) and its event
//! channel, exactly as the FreeBSD console driver uses them.

use xen_kmod::hvm::{self, HvmParam};
use xen_kmod::XenError;
use xen_ring::interface::Interface;
use xen_ring::{Fault, SetupError};

use crate::arch::{self, MapError};
use crate::events::Events;
use crate::time::Deadline;

/// Why a shared ring (console or xenstore) failed.
#[derive(Debug)]
#[allow(
    dead_code,
    reason = "the fields are reported through Debug in RESULT lines"
)]
pub enum RingError {
    /// A hypercall failed.
    Xen(XenError),
    /// The ring frame Xen named cannot be used.
    Map(MapError),
    /// The ring page's indices were inconsistent at attach time.
    Setup(SetupError),
    /// The backend broke the ring protocol.
    Ring(Fault),
    /// The backend did not make room in time.
    TimedOut,
}

impl From<XenError> for RingError {
    fn from(e: XenError) -> Self {
        RingError::Xen(e)
    }
}

impl From<Fault> for RingError {
    fn from(e: Fault) -> Self {
        RingError::Ring(e)
    }
}

/// The guest end of the PV console.
#[derive(Debug)]
pub struct Console {
    ring: Interface<'static>,
    port: u32,
    pfn: u64,
    written: u64,
}

impl Console {
    /// Attaches to the ring named by `HVM_PARAM_CONSOLE_PFN` / `_EVTCHN`.
    ///
    /// # Errors
    /// See [`RingError`].
    pub fn attach(ev: &Events) -> Result<Console, RingError> {
        let pfn = hvm::get_param(ev.hv, HvmParam::ConsolePfn)?;
        let port = hvm::get_port_param(ev.hv, HvmParam::ConsoleEvtchn)?;
        let mem = arch::map_foreign_frame(pfn).map_err(RingError::Map)?;
        let ring = Interface::console_frontend(mem).map_err(RingError::Setup)?;
        Ok(Console {
            ring,
            port,
            pfn,
            written: 0,
        })
    }

    /// The console's event channel.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// The ring's guest frame.
    pub fn pfn(&self) -> u64 {
        self.pfn
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes all of `bytes`, notifying the backend after each chunk and waiting for room
    /// (at most `timeout_ms` in total).
    ///
    /// # Errors
    /// See [`RingError`].
    pub fn write(&mut self, ev: &Events, bytes: &[u8], timeout_ms: u64) -> Result<(), RingError> {
        let deadline = Deadline::after_ms(&ev.si, timeout_ms);
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = self.ring.tx.write(rest)?;
            if n > 0 {
                ev.notify(self.port)?;
                rest = &rest[n..];
                self.written += n as u64;
                continue;
            }
            if deadline.passed(&ev.si) {
                return Err(RingError::TimedOut);
            }
            ev.wait(self.port, 20)?;
        }
        Ok(())
    }

    /// Waits until the backend has consumed everything written (at most `timeout_ms`).
    ///
    /// # Errors
    /// See [`RingError`].
    pub fn drain(&mut self, ev: &Events, timeout_ms: u64) -> Result<(), RingError> {
        let deadline = Deadline::after_ms(&ev.si, timeout_ms);
        loop {
            if self.ring.tx.space()? == self.ring.tx.size() {
                return Ok(());
            }
            if deadline.passed(&ev.si) {
                return Err(RingError::TimedOut);
            }
            ev.wait(self.port, 20)?;
        }
    }
}
