//! Test support for the block drivers:
//!
//! * [`sim`]: their platforms over `xensim` (the faithful simulator);
//! * [`file_store`]: a file-backed store with in-order or random-order completion;
//! * [`harness`]: two simulated domains with xenstored, buses and a driving loop, for the
//!   end-to-end tests;
//! * [`mock`], [`memxs`], [`bench`]: a fast mock hypervisor and xenstore, and benches with one
//!   real driver against a raw, test-controlled peer, for the hostile-peer tests and fuzzers;
//! * [`drivers`]: xenbus driver adapters for both cores;
//! * [`fuzz`]: the fuzz-target bodies (cargo-fuzz targets `blkback_ring`,
//!   `blkfront_responses`, and the replay test `blk_fuzz_replay`).

pub mod bench;
pub mod drivers;
pub mod file_store;
pub mod fuzz;
pub mod harness;
pub mod memxs;
pub mod mock;
pub mod sim;
