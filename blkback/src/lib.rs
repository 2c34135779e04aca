//! PV block backend core (blkif): xenbus negotiation, ring service with validation of every
//! request after one copy, grant mapping (persistent or per request) or grant copy, indirect
//! segments, multi-queue and multi-page rings, both ring layouts, flush ordering, discard and
//! read-only enforcement, over a split-phase [`BlockStore`].
//!
//! See [`backend`] for the data flow, [`proto`] for the wire formats (shared with
//! `xen-blkfront`), [`store`] for the backing-store contract and [`env`] for what the
//! platform provides.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod backend;
mod cache;
pub mod env;
pub mod proto;
pub mod store;

pub use backend::{
    Backend, BackendConfig, BackendStats, DataPath, DeviceConfig, Failure, Negotiated, Offer,
    PollResult,
};
pub use env::{BackendEnv, Level, LocalPage};
pub use store::{BlockStore, DiscardInfo, Io, IoError, IoOp, IoTag, MemStore, StoreInfo};
