//! xbbd.ko: the PV block backend for a Dom0 or driver domain: one vbd backend device per
//! `backend/vbd/<domid>/<dev>` directory the toolstack writes, backed by the file or disk
//! device its `params` names.
//!
//! The kernel-target static library behind `xbbd.ko`: the blkback core plus this glue, which
//! the C shim `xbbd_kmod.c` (module registration with `MODULE_DEPEND` on xen, the backing
//! object through the vnode layer or a device's cdevsw, the per-device taskqueue and sysctl
//! tree) calls into.
//!
//! * [`store`]: the core's backing store on FreeBSD objects: the choice between a disk device
//!   and a file from the toolstack's `params` ([`store::backing_for`]), and the split-phase
//!   store whose I/O the device's taskqueue thread performs in bounded batches
//!   ([`store::QueuedStore`], [`store::perform`]), written against the narrow
//!   [`store::BackingKpi`] trait;
//! * [`env`](mod@env): the core's platform over xen.ko's services (event channels, pages, and the
//!   slot runs where the core maps the rings; the core copies data by grant copy);
//! * [`dev`]: the xenbus `vbd` backend driver, one [`dev::Vbd`] per device, its task, detach;
//! * [`sys`]: the kernel side (the shim's functions as safe handles, the `extern "C"` entry
//!   points); the only `unsafe` of the crate.
//!
//! | loader tunable | values | default |
//! |---|---|---|
//! | `hw.xbbd.max_ring_page_order` | 0..=4: ring pages offered per queue, as an order | 4 |
//! | `hw.xbbd.max_queues` | 1..=16: queues offered | 4 |
//! | `hw.xbbd.max_indirect_segments` | 0, 12..=256: segments of an indirect request offered (0: none) | 256 |
//! | `hw.xbbd.copy_pool_pages` | 1..=4096: pages per queue for grant copies (raised to one largest request's worth) | 512 |
//!
//! A malformed value is reported on the console and the default is used.
#![cfg_attr(target_os = "none", no_std)]
// The safe glue has no `unsafe`; `sys` (the KPI layer) allows it, block by block.
#![deny(unsafe_code)]

extern crate alloc;

pub mod dev;
pub mod env;
pub mod store;
pub mod sys;

use alloc::boxed::Box;
use alloc::sync::Arc;

use freebsd_kpi::module::{KernelModule, LiveDevices};
use freebsd_kpi::{kprintln, tunable, Errno};
use xen_blkback::{BackendConfig, DataPath};
use xen_xenbus::Role;
use xenrs_api::kernel::KernelXen;
use xenrs_api::XenServices;

// Keep the KPI crate (and with it the kernel panic handler) linked into the library.
pub use freebsd_kpi;
pub use xen_blkback;

/// Most indirect segments offered (Linux blkback's default and maximum advertised).
pub const MAX_INDIRECT_SEGMENTS: u64 = 256;

/// Most pages of a queue's copy pool (16 MiB).
pub const MAX_COPY_POOL_PAGES: u64 = 4096;

/// Reads the loader tunables into the core's configuration: copy mode (see [`env`](mod@env)), the
/// limits the tunables set. A malformed value is logged and its default used.
#[must_use]
pub fn config_from_tunables() -> BackendConfig {
    let d = BackendConfig::default();
    let order = tunable::get(
        "xbbd",
        c"hw.xbbd.max_ring_page_order",
        u64::from(d.max_ring_page_order),
        |t| tunable::parse_u64_in(t, 0, u64::from(xen_blkback::proto::MAX_RING_PAGE_ORDER)),
    );
    let queues = tunable::get(
        "xbbd",
        c"hw.xbbd.max_queues",
        u64::from(d.max_queues),
        |t| tunable::parse_u64_in(t, 1, u64::from(xen_blkback::proto::MAX_QUEUES)),
    );
    let indirect = tunable::get(
        "xbbd",
        c"hw.xbbd.max_indirect_segments",
        u64::from(d.max_indirect_segments),
        |t| match tunable::parse_u64(t)? {
            0 => Ok(0),
            _ => tunable::parse_u64_in(t, 12, MAX_INDIRECT_SEGMENTS),
        },
    );
    let pool = tunable::get(
        "xbbd",
        c"hw.xbbd.copy_pool_pages",
        d.copy_pool_pages as u64,
        |t| tunable::parse_u64_in(t, 1, MAX_COPY_POOL_PAGES),
    );
    BackendConfig {
        copy_pool_pages: usize::try_from(pool).unwrap_or(d.copy_pool_pages),
        max_ring_page_order: u32::try_from(order).unwrap_or(d.max_ring_page_order),
        max_queues: u32::try_from(queues).unwrap_or(d.max_queues),
        max_indirect_segments: u32::try_from(indirect).unwrap_or(d.max_indirect_segments),
        persistent: false,
        data_path: DataPath::Copy,
        ..d
    }
}

/// The loaded xbbd.ko: the `vbd` backend driver registered with xen.ko.
pub struct XbbdModule {
    config: BackendConfig,
    live: LiveDevices<<KernelXen as XenServices>::Reg>,
    _xen: Arc<KernelXen>,
}

impl core::fmt::Debug for XbbdModule {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XbbdModule")
            .field("config", &self.config)
            .field("vbds", &self.live.count())
            .finish_non_exhaustive()
    }
}

impl KernelModule for XbbdModule {
    const NAME: &'static str = "xbbd";

    fn load() -> Result<XbbdModule, Errno> {
        let config = config_from_tunables();
        let xen = Arc::new(KernelXen::new()?);
        let live = LiveDevices::new(Self::NAME, "vbd(s)");
        let kick = Arc::new(dev::KickSlot::new()?);
        let driver = dev::XbbdDriver::new(
            xen.clone(),
            config,
            Arc::new(env::DirectMap),
            kick.clone(),
            live.counter(),
        );
        let registration =
            xen.register_driver_with_kick(Role::Backend, Box::new(driver), Box::new(dev::on_kick))?;
        kick.set(xenrs_api::Registration::kicker(&registration));
        kprintln!(
            "xbbd: loaded (rings up to 2^{} pages, {} queue(s), {} indirect segments, grant copy)",
            config.max_ring_page_order,
            config.max_queues,
            config.max_indirect_segments
        );
        Ok(XbbdModule {
            config,
            live: live.registered(registration),
            _xen: xen,
        })
    }

    /// Refused while a vbd is attached (`xl block-detach` it first): unloading would pull
    /// the disk from under a running guest.
    fn quiesce(&self) -> Result<(), Errno> {
        self.live.quiesce()
    }

    fn unload(mut self) {
        self.live.unregister();
    }

    fn stat(&self, which: u32) -> Option<u64> {
        self.live.stat(which)
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
