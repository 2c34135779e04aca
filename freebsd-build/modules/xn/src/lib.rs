//! xn.ko: the PV network frontend (FreeBSD's interface name xn<N>).
//!
//! The kernel-target static library behind `xn.ko`: the protocol core plus this glue, which
//! the C shim `xn_kmod.c` (module registration, `MODULE_DEPEND` on xen) calls into.
//! The network frontend core has not landed yet, so loading only says so; the newbus attachment and
//! the device glue come with the core.
#![cfg_attr(target_os = "none", no_std)]
#![forbid(unsafe_code)]

use freebsd_kpi::module::KernelModule;
use freebsd_kpi::{kprintln, Errno};

// Keep the KPI crate (and with it the kernel panic handler) linked into the library.
pub use freebsd_kpi;
pub use xen_netfront;

/// The loaded xn.ko (no devices yet).
#[derive(Debug)]
pub struct XnModule;

impl KernelModule for XnModule {
    const NAME: &'static str = "xn";

    fn load() -> Result<XnModule, Errno> {
        kprintln!("xn: loaded; no devices yet (the network frontend is not implemented)");
        Ok(XnModule)
    }
}

freebsd_kpi::kernel_module! {
    XnModule,
    load: xenrs_xn_load,
    quiesce: xenrs_xn_quiesce,
    unload: xenrs_xn_unload,
    stat: xenrs_xn_stat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use freebsd_kpi::fake;

    #[test]
    fn load_then_unload_through_the_c_entry_points() {
        let _kernel = fake::session();
        assert_eq!(xenrs_xn_load(), 0);
        assert!(MODULE_SLOT.is_loaded());
        assert!(fake::console().starts_with("xn: loaded"));
        assert_eq!(xenrs_xn_quiesce(), 0);
        assert_eq!(xenrs_xn_unload(), 0);
        assert!(!MODULE_SLOT.is_loaded());
    }
}
