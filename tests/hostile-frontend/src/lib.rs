//! The hostile frontend's parts (the binary is `src/main.rs`): slot builders for blkif
//! ([`blkif`]) and netif ([`netif`]) that can put any value in any field, a front ring that
//! publishes any index ([`ring`]), the Linux devices ([`os`]), the frontend's xenstore side
//! ([`dev`]) and the attack phases with what a correct backend does with each: blkif
//! ([`blk`]) and netif ([`net`]).
//!
//! Everything but [`os`] is plain data and runs in host tests: the builders and phases are
//! checked against the backend cores' own decoders and parsers (`xen-blkback`, `xen-netif`).

pub mod blk;
pub mod blkif;
pub mod dev;
pub mod net;
pub mod netif;
pub mod os;
pub mod ring;
pub mod rng;
