//! The control ring's message numbers (`io/netif.h`, "Control ring"), shared so that the
//! frontend's client and the backend's server cannot disagree on them.
//!
//! A request is `{ id: u16, type: u16, data: [u32; 3] }`, a response `{ id, type, status,
//! data: u32 }` ([`crate::raw::CtrlRequest`], [`crate::raw::CtrlResponse`]).

/// `XEN_NETIF_CTRL_TYPE_*`.
pub mod ty {
    /// `GET_HASH_FLAGS`: data = the hash types the backend can compute.
    pub const GET_HASH_FLAGS: u16 = 1;
    /// `SET_HASH_FLAGS`: `data[0]` = hash types to compute.
    pub const SET_HASH_FLAGS: u16 = 2;
    /// `SET_HASH_KEY`: `data[0]` = grant of the key, `data[1]` = its length.
    pub const SET_HASH_KEY: u16 = 3;
    /// `GET_HASH_MAPPING_SIZE`: data = the largest mapping table.
    pub const GET_HASH_MAPPING_SIZE: u16 = 4;
    /// `SET_HASH_MAPPING_SIZE`: `data[0]` = entries.
    pub const SET_HASH_MAPPING_SIZE: u16 = 5;
    /// `SET_HASH_MAPPING`: `data[0]` = grant, `data[1]` = entries, `data[2]` = first index.
    pub const SET_HASH_MAPPING: u16 = 6;
    /// `SET_HASH_ALGORITHM`: `data[0]` = [`super::ALGORITHM_NONE`] or
    /// [`super::ALGORITHM_TOEPLITZ`].
    pub const SET_HASH_ALGORITHM: u16 = 7;
}

/// `XEN_NETIF_CTRL_STATUS_*`.
pub mod status {
    /// Success.
    pub const SUCCESS: u32 = 0;
    /// Not supported.
    pub const NOT_SUPPORTED: u32 = 1;
    /// Invalid parameter.
    pub const INVALID_PARAMETER: u32 = 2;
    /// Buffer overflow.
    pub const BUFFER_OVERFLOW: u32 = 3;
}

/// `XEN_NETIF_CTRL_HASH_ALGORITHM_NONE`.
pub const ALGORITHM_NONE: u32 = 0;
/// `XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ`.
pub const ALGORITHM_TOEPLITZ: u32 = 1;

/// Packs the first word of a request or response: `id | type << 16`.
#[must_use]
pub fn word0(id: u16, kind: u16) -> u32 {
    u32::from(id) | u32::from(kind) << 16
}

/// Splits the first word of a request or response into `(id, type)`.
#[must_use]
pub fn split_word0(w: u32) -> (u16, u16) {
    // CAST: the low and high halves of a 32-bit word.
    ((w & 0xffff) as u16, (w >> 16) as u16)
}
