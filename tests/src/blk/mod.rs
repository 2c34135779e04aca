//! Test support for the block drivers: their platforms over `xensim` ([`sim`]), a file-backed
//! store ([`file_store`]), and a two-domain harness with xenstore, xenbus and a driving loop
//! ([`harness`]).

pub mod file_store;
pub mod harness;
pub mod sim;
