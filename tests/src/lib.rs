//! Host-side test infrastructure shared by the workspace's integration tests.

pub mod blk;
pub mod net;
pub mod xensim;
