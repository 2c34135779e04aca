//! Xen shared rings (`io/ring.h`) and byte-stream interface rings (xenstore, console), hardened
//! against a hostile peer.
//!
//! # Threat model
//!
//! The other end of every ring is another domain that may be buggy or malicious. It can write
//! any value to any byte of the shared pages at any time, including while we are reading them.
//! This crate never trusts that memory:
//!
//! * **Copy once, then validate.** Each request or response is copied out of its slot exactly
//!   once into a local (the `RING_COPY_REQUEST` discipline that fixed XSA-155); callers validate
//!   the local. Shared memory is only reached through [`xen_shmem::SharedMem`], which never
//!   creates references into it.
//! * **Indices are loaded once per check and validated.** The peer's producer index is loaded
//!   once, and the amount of work it implies is checked against what the protocol allows
//!   (`RING_REQUEST_PROD_OVERFLOW` on the back end; "no more responses than outstanding
//!   requests" on the front end; `prod - cons <= size` on byte-stream rings). An index that moves
//!   backwards is caught by the same wrapping-arithmetic comparisons. Everything is wrapping
//!   `u32` arithmetic, correct across the wrap at 2^32.
//! * **Sticky error.** A violation is reported as a [`Fault`] naming the offending values, and
//!   the ring refuses all further work: a peer that lied once is not given a second chance to
//!   confuse our state (compare Linux "shutdown the ring if it contains garbage"). The caller
//!   should move the device to its error state.
//! * **Our own state never depends on the peer's copy of it.** We keep private copies of the
//!   indices we own (`req_prod_pvt`/published `req_prod`, `rsp_prod_pvt`/published `rsp_prod`,
//!   stream producer/consumer) and never read them back from shared memory after attaching.
//! * **No leaks into slots.** A slot is always written whole: the value (a [`xen_shmem::Pod`]
//!   has no padding) followed by zeroes up to the entry size, so no stale bytes reach the peer
//!   (the XSA-216 class).
//! * **No panics on peer data**, no allocation, no `unsafe`.
//!
//! # Memory ordering
//!
//! Each side follows `io/ring.h`, with its barriers expressed as Rust orderings:
//!
//! * a producer writes slot bodies, then stores its producer index with `Release`
//!   (`xen_wmb()`: the peer sees the bodies before the index);
//! * a consumer loads the peer's producer index with `Acquire`, then copies bodies
//!   (`xen_rmb()`);
//! * a byte-stream consumer stores its consumer index with `Release` after copying, so the
//!   producer (which loads it with `Acquire`) never overwrites bytes still being read;
//! * between "publish my producer index" and "read the peer's event index", and between "write
//!   my event index" and "re-read the peer's producer index", a full `SeqCst` fence
//!   (`xen_mb()`); with the fences on both sides, at least one side sees the other's store, so a
//!   notification is never lost.
//!
//! # Modules
//!
//! * [`sring`]: [`FrontRing`] and [`BackRing`], generic over request and response types.
//! * [`interface`]: the byte-stream rings of xenstore and the console.
#![no_std]
#![forbid(unsafe_code)]

use core::fmt;

pub mod interface;
pub mod sring;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use interface::{Interface, StreamLayout, StreamReader, StreamWriter};
pub use sring::{BackRing, FrontRing};

/// A peer protocol violation (or an impossible shared-memory access failure). Once a ring
/// reports a `Fault` it is *sticky*: every later operation returns the same `Fault`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Back end (frontend at fault): the frontend's `req_prod` implies more unconsumed
    /// requests than there are free slots (`req_prod - rsp_prod_pvt > size`, ring.h's
    /// `RING_REQUEST_PROD_OVERFLOW`), or lies behind requests already consumed.
    RequestOverflow {
        /// The frontend's `req_prod` as loaded.
        req_prod: u32,
        /// Our private `req_cons`.
        req_cons: u32,
        /// Our private `rsp_prod_pvt`.
        rsp_prod_pvt: u32,
        /// Ring size in entries.
        size: u32,
    },
    /// Back end (frontend at fault): `req_prod` moved backwards from a value seen earlier.
    RequestProdRegressed {
        /// The frontend's `req_prod` as loaded now.
        req_prod: u32,
        /// The value seen at the previous check.
        last: u32,
    },
    /// Front end (backend at fault): the backend's `rsp_prod` implies more responses than
    /// there are published, unanswered requests (`rsp_prod - rsp_cons > req_prod - rsp_cons`),
    /// or lies behind responses already consumed.
    ResponseOverflow {
        /// The backend's `rsp_prod` as loaded.
        rsp_prod: u32,
        /// Our private `rsp_cons`.
        rsp_cons: u32,
        /// The `req_prod` we last published.
        req_prod: u32,
    },
    /// Front end (backend at fault): `rsp_prod` moved backwards from a value seen earlier.
    ResponseProdRegressed {
        /// The backend's `rsp_prod` as loaded now.
        rsp_prod: u32,
        /// The value seen at the previous check.
        last: u32,
    },
    /// Byte-stream ring (peer at fault): `prod - cons > size`, or the peer's index lies on the
    /// wrong side of ours.
    StreamOverflow {
        /// Producer index (ours on a writer, the peer's on a reader).
        prod: u32,
        /// Consumer index (the peer's on a writer, ours on a reader).
        cons: u32,
        /// Buffer size in bytes.
        size: u32,
    },
    /// Byte-stream ring (peer at fault): the peer's index moved backwards.
    StreamIndexRegressed {
        /// The peer's index as loaded now.
        index: u32,
        /// The value seen at the previous check.
        last: u32,
    },
    /// An access to the shared region was refused. Unreachable with the geometry checked at
    /// construction; reported (and sticky) rather than panicking.
    Memory(xen_shmem::Error),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Fault::RequestOverflow {
                req_prod,
                req_cons,
                rsp_prod_pvt,
                size,
            } => write!(
                f,
                "frontend req_prod {req_prod:#x} overruns ring (req_cons {req_cons:#x}, \
                 rsp_prod_pvt {rsp_prod_pvt:#x}, size {size})"
            ),
            Fault::RequestProdRegressed { req_prod, last } => {
                write!(
                    f,
                    "frontend req_prod moved back from {last:#x} to {req_prod:#x}"
                )
            }
            Fault::ResponseOverflow {
                rsp_prod,
                rsp_cons,
                req_prod,
            } => write!(
                f,
                "backend rsp_prod {rsp_prod:#x} exceeds outstanding requests (rsp_cons \
                 {rsp_cons:#x}, req_prod {req_prod:#x})"
            ),
            Fault::ResponseProdRegressed { rsp_prod, last } => {
                write!(
                    f,
                    "backend rsp_prod moved back from {last:#x} to {rsp_prod:#x}"
                )
            }
            Fault::StreamOverflow { prod, cons, size } => write!(
                f,
                "stream ring indices out of range (prod {prod:#x}, cons {cons:#x}, size {size})"
            ),
            Fault::StreamIndexRegressed { index, last } => {
                write!(
                    f,
                    "stream ring peer index moved back from {last:#x} to {index:#x}"
                )
            }
            Fault::Memory(e) => write!(f, "shared memory access failed: {e}"),
        }
    }
}

impl core::error::Error for Fault {}
impl core::error::Error for PushError {}
impl core::error::Error for SetupError {}

impl From<xen_shmem::Error> for Fault {
    fn from(e: xen_shmem::Error) -> Self {
        Fault::Memory(e)
    }
}

/// Why a request or response could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// No slot: on a front end every slot holds an unanswered request; on a back end every
    /// consumed request has been answered already. Not a peer fault; retry later.
    Full,
    /// The ring is in its sticky error state.
    Fault(Fault),
}

impl From<Fault> for PushError {
    fn from(f: Fault) -> Self {
        PushError::Fault(f)
    }
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full => f.write_str("ring full"),
            PushError::Fault(e) => e.fmt(f),
        }
    }
}

/// Why a ring could not be set up on a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupError {
    /// The region cannot hold the header and at least one entry (or an entry has size zero).
    TooSmall {
        /// Region length in bytes.
        len: usize,
        /// Entry size in bytes.
        entry_size: usize,
    },
    /// A byte-stream buffer size that is not a power of two in `1..=2^31`.
    BadStreamSize {
        /// The size given.
        size: u32,
    },
    /// The layout does not fit the region, or an index word is misaligned.
    Memory(xen_shmem::Error),
    /// The peer's indices were already inconsistent when attaching.
    Fault(Fault),
}

impl From<xen_shmem::Error> for SetupError {
    fn from(e: xen_shmem::Error) -> Self {
        SetupError::Memory(e)
    }
}

impl From<Fault> for SetupError {
    fn from(f: Fault) -> Self {
        SetupError::Fault(f)
    }
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SetupError::TooSmall { len, entry_size } => {
                write!(
                    f,
                    "region of {len} bytes too small for {entry_size}-byte entries"
                )
            }
            SetupError::BadStreamSize { size } => {
                write!(f, "stream ring size {size} is not a power of two")
            }
            SetupError::Memory(e) => write!(f, "ring layout does not fit: {e}"),
            SetupError::Fault(e) => write!(f, "peer ring state invalid at attach: {e}"),
        }
    }
}

/// Whether the peer must be sent an event after publishing. Must be acted upon: dropping a
/// required notification stalls the peer forever.
#[must_use = "if `is_required()`, notify the peer through the event channel"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notify(bool);

impl Notify {
    /// Whether an event must be sent to the peer.
    #[must_use]
    pub const fn is_required(self) -> bool {
        self.0
    }
}
