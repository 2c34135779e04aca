//! xbd.ko: the PV block frontend (FreeBSD's disk name xbd<N>).
//!
//! The kernel-target static library behind `xbd.ko`: the protocol core plus this glue, which
//! the C shim `xbd_kmod.c` (module registration, `MODULE_DEPEND` on xen) calls into.
//! The block frontend core has not landed yet, so loading only says so; the newbus attachment and
//! the device glue come with the core.
#![cfg_attr(target_os = "none", no_std)]
#![forbid(unsafe_code)]

use freebsd_kpi::module::KernelModule;
use freebsd_kpi::{kprintln, Errno};

// Keep the KPI crate (and with it the kernel panic handler) linked into the library.
pub use freebsd_kpi;
pub use xen_blkfront;

/// The loaded xbd.ko (no devices yet).
#[derive(Debug)]
pub struct XbdModule;

impl KernelModule for XbdModule {
    const NAME: &'static str = "xbd";

    fn load() -> Result<XbdModule, Errno> {
        kprintln!("xbd: loaded; no devices yet (the block frontend is not implemented)");
        Ok(XbdModule)
    }
}

freebsd_kpi::kernel_module! {
    XbdModule,
    load: xenrs_xbd_load,
    quiesce: xenrs_xbd_quiesce,
    unload: xenrs_xbd_unload,
    stat: xenrs_xbd_stat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use freebsd_kpi::fake;

    #[test]
    fn load_then_unload_through_the_c_entry_points() {
        let _kernel = fake::session();
        assert_eq!(xenrs_xbd_load(), 0);
        assert!(MODULE_SLOT.is_loaded());
        assert!(fake::console().starts_with("xbd: loaded"));
        assert_eq!(xenrs_xbd_quiesce(), 0);
        assert_eq!(xenrs_xbd_unload(), 0);
        assert!(!MODULE_SLOT.is_loaded());
    }
}
