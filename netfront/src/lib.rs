//! PV network frontend core (netif): negotiation, TX/RX slots and extras, response validation.
//!
//! Part of the workspace layout described in `docs/ARCHITECTURE.md`; this crate's protocol
//! logic arrives with its own issue. It is already built for both kernel targets so that the
//! build and verification pipeline covers it from the start.
#![no_std]
#![forbid(unsafe_code)]
