//! PV network frontend core (netif): negotiation, TX/RX slots and extras, response
//! validation.
//!
//! # Data flow
//!
//! ```text
//! TX  stack: packet (+ csum/TSO metadata) → Queue::send: bounce into dedicated granted pages
//!     → slots (≤ 18, first slot = total size) + GSO extra → TX ring → notify if asked
//!     → backend → TX responses → Queue::poll_tx: copy each once, check id / NULL → free pages
//! RX  connect: every RX ring position gets a granted page, posted once
//!     → backend grant-copies into them → RX responses (+ extras) → Queue::poll_rx: copy each
//!     once, RxAssembler checks id = posted id, offset + len ≤ page, framing → copy data out →
//!     deliver to the stack → repost the positions
//! ```
//!
//! # Shape
//!
//! * [`queue::Queue`]: one queue's data path (sans-IO: the caller polls on events).
//! * [`negotiate`]: read the backend's offer, build queues through a [`FrontendPlatform`]
//!   (pages, grants, event channels), publish our keys; [`Resources`] releases everything.
//! * [`ctrl`]: the control-ring client (Toeplitz steering configured in the backend).
//! * [`arp`]: the gratuitous ARP sent after a reconnect, so switches relearn the MAC.
//!
//! Multi-queue uses `queue-N/…` keys with `multi-queue-num-queues`; split event channels use
//! `event-channel-tx`/`-rx`; receive is always by copy (`request-rx-copy` = 1), and we ask for
//! notifications on posted buffers (`feature-rx-notify`).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod arp;
pub mod ctrl;
pub mod negotiate;
pub mod queue;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use ctrl::{CtrlClient, CtrlError, Outcome, Toeplitz};
pub use negotiate::{BackendOffer, FrontendConfig, FrontendPlatform, PlatformError, Resources};
pub use queue::{FrontError, Ports, Queue, SendError, SharedPage, Stats, Work};
