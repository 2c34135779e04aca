//! xenstore and xenbus: the control path every Xen PV driver stands on.
//!
//! # What is here
//!
//! * [`wire`]: the xs_wire codec (`io/xs_wire.h`): message header, every request a frontend,
//!   backend or toolstack needs, replies, `XS_ERROR`, `XS_WATCH_EVENT`, both directions (the
//!   daemon side is used by the simulator and by Dom0's `/dev/xen/xenstore`).
//! * [`client`]: a **sans-IO** client state machine: request ids, reply routing, watch event
//!   queues. No clock, no threads, no ring, no event channel.
//! * [`blocking`]: a blocking layer over a [`blocking::Transport`] with a `wait_for_event`
//!   hook, and the [`blocking::Store`] operations (read/write/mkdir/rm/directory/perms),
//!   transactions with bounded retry on `EAGAIN`.
//! * [`ring`]: [`RingTransport`], the xenstore interface ring (`xen-ring`) plus an
//!   [`EventPort`] as a [`Transport`], for the kernel glue, the PVH guest and the simulator.
//! * [`bus`]: xenbus: `XenbusState`, frontend and backend device trees, the state machine with
//!   reconnect, otherend watching and the driver registration API.
//!
//! # Why sans-IO
//!
//! The same code runs in the FreeBSD kernel (over the xenstore interface ring and its event
//! channel), in a bare-metal PVH test guest, and against the simulated xenstored of `xensim` in
//! host tests, fuzzers and benchmarks. Keeping the protocol logic free of I/O means each
//! platform only supplies a byte transport and a way to wait, and the tests exercise exactly
//! the code that ships: every byte split, every hostile reply, deterministically.
//!
//! # Threat model
//!
//! Everything that arrives is untrusted input:
//!
//! * **The daemon's bytes.** xenstored normally runs in Dom0, but it may be a stub domain, and a
//!   bug there must not become a bug here. Headers are bounded (`len` ≤ 4096, known type)
//!   before anything is buffered; every field is checked (NUL termination, path characters and
//!   lengths, decimal numbers without overflow, permission syntax); replies are paired with
//!   requests by `req_id` and type, and a reply we cannot pair poisons the connection instead
//!   of being routed to the wrong caller. Decoders return typed errors and never panic.
//! * **Other domains' nodes.** A backend reads its frontend's nodes (and vice versa); their
//!   values are whatever that domain wrote. Values are returned as bytes; typed readers
//!   ([`blocking::Store::read_u64`], [`bus::XenbusState::parse`]) validate.
//! * **Watch floods (XSA-349).** A peer that keeps rewriting a node we watch generates an
//!   event per write. Each watch queues at most a fixed number of events; duplicates are
//!   collapsed, the rest dropped and counted, and the consumer is told to rescan.
//!
//! Nothing grows without bound: in-flight requests, watches, events per watch and the
//! reassembly buffer all have caps, and every loop is bounded by its input or by a count.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod abi;
pub mod blocking;
pub mod bus;
pub mod client;
pub mod error;
pub mod path;
pub mod perms;
pub mod ring;
pub mod wire;
pub mod xsdev;

pub use blocking::{Store, Transport, Tx, Xs};
pub use bus::{Bus, Device, Driver, Role, XenStore, XenbusState};
pub use client::{ByteSink, ByteSource, Client, Config, ReqId, TxId, WatchEvent, WatchId};
pub use error::{Error, InvalidArg, ProtocolError, TransportError, XsError};
pub use perms::{Access, DomId, Perm};
pub use ring::{EventPort, RingTransport};
pub use wire::{Header, MsgType, Reply, Request};
