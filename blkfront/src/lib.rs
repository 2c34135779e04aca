//! PV block frontend core (blkif): negotiation of every feature the backend offers
//! (indirect segments, persistent grants, multi-queue, multi-page rings in both schemes,
//! flush/barrier, discard, read-only/CD-ROM/removable, sector sizes, online resize), bios
//! split to the negotiated limits, responses validated after one copy, grants ended safely
//! (XSA-396), bounce pages for untrusted backends (XSA-403), and reconnection with
//! re-issue of everything not acknowledged.
//!
//! The wire formats come from [`xen_blkback::proto`] (one definition for both drivers).
//! See [`frontend`] for the data flow, [`bio`] for the split-phase API and [`env`] for what
//! the platform provides.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod bio;
pub mod env;
pub mod frontend;

pub use bio::{Bio, BioError, BioOp, BufSeg, Completion};
pub use env::{FrontendEnv, PageRun};
pub use frontend::{
    DiskInfo, FrontEvent, FrontFailure, Frontend, FrontendConfig, FrontendStats, Negotiated,
    PollResult,
};
