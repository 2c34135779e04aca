//! xbbd.ko: the PV block backend for a Dom0 or driver domain.
//!
//! The kernel-target static library behind `xbbd.ko`: the protocol core plus this glue, which
//! the C shim `xbbd_kmod.c` (module registration, `MODULE_DEPEND` on xen) calls into.
//! The block backend core has not landed yet, so loading only says so; the newbus attachment and
//! the device glue come with the core.
#![cfg_attr(target_os = "none", no_std)]
#![forbid(unsafe_code)]

use freebsd_kpi::module::KernelModule;
use freebsd_kpi::{kprintln, Errno};

// Keep the KPI crate (and with it the kernel panic handler) linked into the library.
pub use freebsd_kpi;
pub use xen_blkback;

/// The loaded xbbd.ko (no devices yet).
#[derive(Debug)]
pub struct XbbdModule;

impl KernelModule for XbbdModule {
    const NAME: &'static str = "xbbd";

    fn load() -> Result<XbbdModule, Errno> {
        kprintln!("xbbd: loaded; no devices yet (the block backend is not implemented)");
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
mod tests {
    use super::*;
    use freebsd_kpi::fake;

    #[test]
    fn load_then_unload_through_the_c_entry_points() {
        let _kernel = fake::session();
        assert_eq!(xenrs_xbbd_load(), 0);
        assert!(MODULE_SLOT.is_loaded());
        assert!(fake::console().starts_with("xbbd: loaded"));
        assert_eq!(xenrs_xbbd_quiesce(), 0);
        assert_eq!(xenrs_xbbd_unload(), 0);
        assert!(!MODULE_SLOT.is_loaded());
    }
}
