//! xen.ko: hypercalls, event channels, grant tables, xenstore, xenbus and the /dev/xen devices.
//!
//! The kernel-target static library behind `xen.ko`: it links the protocol cores with the
//! FreeBSD glue. `cargo kmod build` builds it for amd64 and i386.
#![cfg_attr(target_os = "none", no_std)]
#![forbid(unsafe_code)]

// Keep the KPI crate (and with it the kernel panic handler) linked into the library.
pub use freebsd_kpi;
pub use xen_evtchn;
pub use xen_gnttab;
pub use xen_kmod;
pub use xen_ring;
pub use xen_shmem;
pub use xen_sys;
pub use xen_xenbus;
