//! Event channels: the 2-level and FIFO ABIs, a port table, bounded and fair upcall
//! processing, storm throttling, and the platform-neutral logic of `/dev/xen/evtchn`.
//!
//! # Shape
//!
//! [`EventChannels`] is a sans-IO core, generic over the hypercall seam
//! ([`xen_kmod::Hypervisor`]) and over a source of zeroed pages Xen may see ([`PageSource`],
//! used for the FIFO control blocks and event arrays). It never takes locks, reads a clock or
//! calls a driver:
//!
//! * binding (`alloc_unbound`, `bind_interdomain`, `bind_virq`, `bind_ipi`, `adopt`) records a
//!   port with a driver-chosen [`Token`] in an O(1) port table;
//! * [`EventChannels::poll`] is called from the upcall (interrupt) path with the current time and
//!   a caller-sized buffer; it fills the buffer with [`Event`]s (`port`, `token`) and says
//!   whether work remains. The caller dispatches the events *after* releasing whatever lock
//!   protects the core, so a handler may notify, mask or even close ports without deadlock;
//! * time is passed in (`now`, nanoseconds, any monotonic origin): the throttle uses it, and
//!   [`EventChannels::tick`] lifts expired throttles.
//!
//! # Why bounded and fair
//!
//! The upcall runs with interrupts off. A peer that keeps a port pending could otherwise keep a
//! vCPU in the scan forever (the XSA-332 / XSA-391 class of denial of service). So:
//! * every `poll` does at most `out.len()` deliveries plus a small fixed amount of scanning, and
//!   reports [`PollOutcome::more`] instead of looping;
//! * the 2-level scan resumes *after* the last port it served (per vCPU word and bit cursors, as
//!   Linux does), so a low-numbered busy port cannot starve higher ones; the FIFO ABI is fair
//!   within a priority by construction (a queue), and the per-vCPU queue state survives between
//!   calls;
//! * ports marked [`BindOptions::throttle`] (by default every inter-domain port, i.e. every
//!   port a peer can raise) are counted per time window; a port over the limit is masked and
//!   deferred for [`ThrottleConfig::defer_ns`], counted in its [`PortStats`], then unmasked by
//!   [`EventChannels::tick`] (any event that arrived meanwhile is delivered then, not lost).
//!
//! # Concurrency
//!
//! Every mutating method takes `&mut self`: the platform glue serialises access (FreeBSD: a
//! spin mutex taken with interrupts disabled, per vCPU upcall and per ioctl). `poll` only
//! *collects* events; handlers run after the lock is dropped. [`EventChannels::notify`] takes
//! `&self`. Drivers that must notify from contexts where taking the core's lock is unwelcome
//! can call `xen_kmod::HypervisorExt::evtchn_send` on their own bound port directly.
//!
//! When `poll` reports `more`, the upcall flag was already consumed, so Xen will not interrupt
//! again for the remaining events: the caller must schedule another poll (a taskqueue, or the
//! next loop iteration of a PVH guest's idle loop).
//!
//! # Memory
//!
//! `shared_info`, `vcpu_info`, the FIFO control blocks and event arrays are written by Xen at any
//! time. They are accessed only through `xen-shmem` views and `xen_kmod::shared` atomic words;
//! no reference into them ever exists. No value read from them can cause a panic: ports and
//! links are range-checked, unknown ports are masked and counted.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod channels;
pub mod dev;
mod fifo;
mod table;
mod throttle;
mod twolevel;

pub use channels::{Abi, AbiChoice, Config, EventChannels, PortKind};
pub use throttle::ThrottleConfig;

use core::fmt;

use xen_kmod::XenError;
use xen_shmem::SharedMem;

/// An event-channel port number.
pub type Port = u32;

/// A driver-chosen value stored with a port and handed back with each of its events (the
/// driver maps it to its handler; the core never interprets it).
pub type Token = u64;

/// One delivered event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The port that fired.
    pub port: Port,
    /// The token given when the port was bound.
    pub token: Token,
}

/// What a [`EventChannels::poll`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// Number of events written to the front of the output buffer.
    pub delivered: usize,
    /// Work remains (the budget or the scan bound was reached): poll again soon (e.g. from a
    /// deferred task) rather than looping in the interrupt handler.
    pub more: bool,
}

/// How a port is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindOptions {
    /// Handed back with every event of the port.
    pub token: Token,
    /// Mask the port when it delivers an event, until [`EventChannels::unmask`] (level-style
    /// delivery, as `/dev/xen/evtchn` and Linux's "lateeoi" do). Protects a consumer that
    /// processes events later from being re-interrupted meanwhile.
    pub auto_mask: bool,
    /// Apply the storm throttle to this port. `None` picks the default: on for ports a peer
    /// domain can raise (inter-domain and unbound), off for VIRQs and IPIs, which only Xen
    /// and our own vCPUs raise.
    pub throttle: Option<bool>,
    /// Leave the port masked after binding (the caller unmasks it when ready).
    pub start_masked: bool,
}

impl BindOptions {
    /// Options with `token` and every default.
    #[must_use]
    pub const fn new(token: Token) -> Self {
        BindOptions {
            token,
            auto_mask: false,
            throttle: None,
            start_masked: false,
        }
    }
}

/// Per-port statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Events delivered.
    pub delivered: u64,
    /// Times the port was throttled (masked and deferred for exceeding the rate).
    pub throttled: u64,
}

/// Core-wide counters of things that should not happen with a well-behaved peer and hypervisor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Pending ports that are not in the table (masked when seen).
    pub spurious: u64,
    /// FIFO queue links pointing outside the event array (queue cut there).
    pub bad_links: u64,
    /// Throttle activations over all ports.
    pub throttled: u64,
    /// Polls that stopped with work remaining.
    pub budget_exhausted: u64,
}

/// Zeroed 4 KiB pages that the hypervisor may map (FIFO control blocks and event arrays).
///
/// Pages are never given back: Xen keeps them mapped for the life of the domain's FIFO ABI.
pub trait PageSource<'a> {
    /// A zeroed page, and its guest frame number as Xen knows it.
    ///
    /// # Errors
    /// [`Error::NoMemory`] (or another error) when no page is available.
    fn alloc_page(&mut self) -> Result<(SharedMem<'a>, u64), Error>;
}

/// Errors of the event-channel core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A hypercall failed.
    Xen(XenError),
    /// The port is not bound here (or not by this user).
    NotBound(Port),
    /// The vCPU is unknown or has no `vcpu_info` yet.
    InvalidVcpu(u32),
    /// The hypervisor returned a port outside the ABI's or the configuration's range (the port
    /// was closed again).
    PortOutOfRange(Port),
    /// The hypervisor returned a port that is already bound here (the new binding was closed).
    PortInUse(Port),
    /// Out of memory (table growth, a FIFO page).
    NoMemory,
    /// A shared-memory view was too small or misaligned.
    Memory(xen_shmem::Error),
    /// The operation does not exist in the active ABI (e.g. priorities under 2-level).
    Unsupported,
    /// A bad argument (e.g. an unknown VIRQ, a priority out of range).
    InvalidArgument,
}

impl From<XenError> for Error {
    fn from(e: XenError) -> Self {
        Error::Xen(e)
    }
}

impl From<xen_shmem::Error> for Error {
    fn from(e: xen_shmem::Error) -> Self {
        Error::Memory(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Xen(e) => write!(f, "event channel hypercall failed: {e}"),
            Error::NotBound(p) => write!(f, "port {p} is not bound here"),
            Error::InvalidVcpu(v) => write!(f, "vCPU {v} is unknown"),
            Error::PortOutOfRange(p) => write!(f, "hypervisor returned out-of-range port {p}"),
            Error::PortInUse(p) => write!(f, "hypervisor returned port {p}, already bound"),
            Error::NoMemory => f.write_str("out of memory"),
            Error::Memory(e) => write!(f, "shared memory: {e}"),
            Error::Unsupported => f.write_str("not supported by the active event channel ABI"),
            Error::InvalidArgument => f.write_str("invalid argument"),
        }
    }
}

impl core::error::Error for Error {}

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
