//! The netif wire format (`io/netif.h`), shared by `xen-netfront` and `xen-netback`.
//!
//! # Why a crate of its own
//!
//! Both ends speak the same format and must validate the same things from opposite sides: the
//! backend validates transmit requests the frontend wrote, the frontend validates receive
//! responses the backend wrote, and both encode and decode the same `netif_extra_info` slots
//! (GSO, multicast, hash). Keeping that code in one place means one set of rules, one set of
//! tests and one fuzz surface, and neither driver crate depends on the other.
//!
//! # Data flow (see `docs/ARCHITECTURE.md`)
//!
//! ```text
//! TX: frontend packet → [`tx::TxSlot`]s (≤ 18) + extras → TX ring → backend copies each slot
//!     out once → [`tx::TxAssembler`] validates the whole packet → grant copy into local
//!     pages → host network.
//! RX: host packet → backend queue (bounded) → grant copy into pre-posted frontend pages →
//!     RX responses + extras → frontend copies each response out once →
//!     [`rx::RxAssembler`] validates → packet to the frontend's network stack.
//! ```
//!
//! # Untrusted input
//!
//! Everything read from a ring is a *copy* (the ring crate copies each slot exactly once; the
//! XSA-155 double fetch cannot happen). The assemblers here take those copies, never the ring,
//! and classify every packet as good, *dropped* (answered with an error, the device goes on) or
//! a *fault* (a protocol violation after which the ring's state cannot be trusted: the device
//! stops). Nothing here panics, allocates or loops without a bound.
#![no_std]
#![forbid(unsafe_code)]

pub mod csum;
pub mod ctrl;
pub mod hash;
pub mod keys;
pub mod rx;
pub mod tx;
pub mod wire;

pub use wire::{Csum, Extra, ExtraError, Gso, GsoKind, PacketMeta};

/// Size of a page a slot refers to (netif is defined on 4 KiB grants).
pub const PAGE_SIZE: usize = 4096;
/// Ethernet header length: the smallest packet either end accepts.
pub const ETH_HLEN: usize = 14;
/// Data slots per packet every backend must accept (`XEN_NETIF_NR_SLOTS_MIN`), and the most
/// either end here produces or accepts.
pub const MAX_SLOTS: usize = xen_sys::consts::netif::XEN_NETIF_NR_SLOTS_MIN;
/// Extra-info slots per packet: one per extra type at most.
pub const MAX_EXTRAS: usize = 4;
/// Largest packet (`XEN_NETIF_MAX_TX_SIZE`): the first TX slot's `size` is a `u16`.
pub const MAX_PACKET: usize = xen_sys::consts::netif::XEN_NETIF_MAX_TX_SIZE;

/// Raw ring entry types (identical in the x86_32 and x86_64 layouts: no pointers, no `long`).
pub mod raw {
    pub use xen_sys::x86_64::{
        netif_extra_info as ExtraInfo, netif_rx_request as RxRequest,
        netif_rx_response as RxResponse, netif_tx_request as TxRequest,
        netif_tx_response as TxResponse,
    };

    /// A control-ring request (`xen_netif_ctrl_request`, 16 bytes) as four native words:
    /// `id | type << 16`, then `data[0..3]`. Arrays of `u32` are `Pod`.
    pub type CtrlRequest = [u32; 4];
    /// A control-ring response (`xen_netif_ctrl_response`, 12 bytes): `id | type << 16`,
    /// `status`, `data`.
    pub type CtrlResponse = [u32; 3];
}

const _: () = assert!(core::mem::size_of::<raw::TxRequest>() == 12);
const _: () = assert!(core::mem::size_of::<raw::ExtraInfo>() == 8);
const _: () = assert!(core::mem::size_of::<raw::RxResponse>() == 8);
const _: () = assert!(
    core::mem::size_of::<raw::CtrlRequest>()
        == core::mem::size_of::<xen_sys::x86_64::xen_netif_ctrl_request>()
);
const _: () = assert!(
    core::mem::size_of::<raw::CtrlResponse>()
        == core::mem::size_of::<xen_sys::x86_64::xen_netif_ctrl_response>()
);
