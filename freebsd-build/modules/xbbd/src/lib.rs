//! xbbd.ko: the PV block backend for a Dom0 or driver domain.
//!
//! The kernel-target static library behind `xbbd.ko`: the blkback core plus this glue, which
//! the C shim `xbbd_kmod.c` (module registration, `MODULE_DEPEND` on xen) calls into.
//!
//! * [`store`]: the core's backing store on FreeBSD objects: the choice between a GEOM
//!   provider and a file from the toolstack's `params` ([`store::backing_for`]), and the
//!   split-phase store whose I/O a taskqueue thread performs in bounded batches
//!   ([`store::QueuedStore`], [`store::perform`]), written against the narrow
//!   [`store::BackingKpi`] trait and tested against the blkback and blkfront cores over xensim.
//!
//! Not attached to devices yet, and the load says so: two pieces are missing. The kernel side
//! of [`store::BackingKpi`] needs `vn_open`/`vn_rdwr`/`VOP_FSYNC`, and FreeBSD's `sys/vnode.h`
//! includes the build-generated `vnode_if.h`, which the Linux build does not have yet (the
//! native FreeBSD build generates it). And the blkback core maps the frontend's grants itself
//! at guest-physical slots it reserves (`BackendEnv::reserve_slots`), which the xenrs API v1
//! does not export (it maps grants one by one inside xen.ko, `grant_map`).
#![cfg_attr(target_os = "none", no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod store;

use freebsd_kpi::module::KernelModule;
use freebsd_kpi::{kprintln, Errno};

// Keep the KPI crate (and with it the kernel panic handler) linked into the library.
pub use freebsd_kpi;
pub use xen_blkback;

/// The loaded xbbd.ko (no devices: see the crate docs).
#[derive(Debug)]
pub struct XbbdModule;

impl KernelModule for XbbdModule {
    const NAME: &'static str = "xbbd";

    fn load() -> Result<XbbdModule, Errno> {
        kprintln!(
            "xbbd: loaded; no vbd backend devices attach yet (needs vnode_if.h for the Linux build \
             and foreign-mapping slots in the xenrs API)"
        );
        Ok(XbbdModule)
    }
}

freebsd_kpi::kernel_module! {
    XbbdModule,
    load: xenrs_xbbd_load,
    quiesce: xenrs_xbbd_quiesce,
    unload: xenrs_xbbd_unload,
    stat: xenrs_xbbd_stat,
}

#[cfg(test)]
mod tests;
