//! xbbd.ko: the PV block backend for a Dom0 or driver domain.
//!
//! The kernel-target static library behind `xbbd.ko`: it links the protocol cores with the
//! FreeBSD glue. `cargo kmod build` builds it for amd64 and i386.
#![cfg_attr(target_os = "none", no_std)]
#![forbid(unsafe_code)]

// Keep the KPI crate (and with it the kernel panic handler) linked into the library.
pub use freebsd_kpi;
pub use xen_blkback;
