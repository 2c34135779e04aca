//! xnb.ko: the PV network backend (interfaces xnb<domid>.<handle>).
//!
//! The kernel-target static library behind `xnb.ko`: the protocol core plus this glue, which
//! the C shim `xnb_kmod.c` (module registration, `MODULE_DEPEND` on xen) calls into.
//! The network backend core has not landed yet, so loading only says so; the newbus attachment and
//! the device glue come with the core.
#![cfg_attr(target_os = "none", no_std)]
#![forbid(unsafe_code)]

use freebsd_kpi::module::KernelModule;
use freebsd_kpi::{kprintln, Errno};

// Keep the KPI crate (and with it the kernel panic handler) linked into the library.
pub use freebsd_kpi;
pub use xen_netback;

/// The loaded xnb.ko (no devices yet).
#[derive(Debug)]
pub struct XnbModule;

impl KernelModule for XnbModule {
    const NAME: &'static str = "xnb";

    fn load() -> Result<XnbModule, Errno> {
        kprintln!("xnb: loaded; no devices yet (the network backend is not implemented)");
        Ok(XnbModule)
    }
}

freebsd_kpi::kernel_module! {
    XnbModule,
    load: xenrs_xnb_load,
    quiesce: xenrs_xnb_quiesce,
    unload: xenrs_xnb_unload,
    stat: xenrs_xnb_stat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use freebsd_kpi::fake;

    #[test]
    fn load_then_unload_through_the_c_entry_points() {
        let _kernel = fake::session();
        assert_eq!(xenrs_xnb_load(), 0);
        assert!(MODULE_SLOT.is_loaded());
        assert!(fake::console().starts_with("xnb: loaded"));
        assert_eq!(xenrs_xnb_quiesce(), 0);
        assert_eq!(xenrs_xnb_unload(), 0);
        assert!(!MODULE_SLOT.is_loaded());
    }
}
