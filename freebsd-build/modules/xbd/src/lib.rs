//! xbd.ko: the PV block frontend as GEOM disks `xbd<N>`.
//!
//! The kernel-target static library behind `xbd.ko`: the blkfront core plus this glue, which
//! the C shim `xbd_kmod.c` (module registration with `MODULE_DEPEND` on xen, disk(9),
//! biodone(9), the per-disk locks and sysctl tree) calls into.
//!
//! * [`disk`]: safe glue between GEOM and the core ([`disk::XbdDisk`]: bio → core bio,
//!   completion → `biodone`, events → `disk_create`/`disk_resize`, detach), written against
//!   the narrow [`disk::DiskKpi`] trait.
//! * [`sys`]: the kernel side of that trait, the per-disk softc and its locks, and the
//!   `extern "C"` entry points (`d_strategy`, sysctl leaves). The only `unsafe` of the crate.
//!
//! | loader tunable | values | default |
//! |---|---|---|
//! | `hw.xbd.max_ring_page_order` | 0..=4: ring pages per queue, as an order | 4 |
//! | `hw.xbd.max_queues` | 1..=16: queues asked for | 4 |
//! | `hw.xbd.max_indirect_segments` | 0..=4096: segments per indirect request (0: none) | 256 |
//! | `hw.xbd.persistent_grants` | boolean | 1 |
//!
//! A malformed value is reported on the console (`xbd: loader tunable hw.xbd.max_queues="x":
//! not a number ...; using the default`) and the default is used.
#![cfg_attr(target_os = "none", no_std)]
// The safe glue has no `unsafe`; `sys` (the KPI layer) allows it, block by block.
#![deny(unsafe_code)]

extern crate alloc;

pub mod disk;
pub mod sys;
pub mod xen;

use alloc::boxed::Box;
use alloc::sync::Arc;

use freebsd_kpi::module::{KernelModule, LiveDevices};
use freebsd_kpi::{kprintln, tunable, Errno};
use xen_blkback::proto::{MAX_INDIRECT_SEGMENTS, MAX_QUEUES, MAX_RING_PAGE_ORDER};
use xen_blkfront::FrontendConfig;
use xen_xenbus::Role;
use xenrs_api::kernel::KernelXen;
use xenrs_api::XenServices;

// Keep the KPI crate (and with it the kernel panic handler) linked into the library.
pub use freebsd_kpi;
pub use xen_blkfront;

/// Reads the loader tunables into the core's configuration, logging each malformed one and
/// using its default.
#[must_use]
pub fn config_from_tunables() -> FrontendConfig {
    let d = FrontendConfig::default();
    let num = |name, default: u32, max: u32| {
        let v = tunable::get("xbd", name, u64::from(default), |text| {
            tunable::parse_u64_in(text, 0, u64::from(max))
        });
        u32::try_from(v).unwrap_or(default)
    };
    let order = num(
        c"hw.xbd.max_ring_page_order",
        d.max_ring_page_order,
        MAX_RING_PAGE_ORDER,
    );
    let queues = tunable::get(
        "xbd",
        c"hw.xbd.max_queues",
        u64::from(d.max_queues),
        |text| tunable::parse_u64_in(text, 1, u64::from(MAX_QUEUES)),
    );
    let indirect = num(
        c"hw.xbd.max_indirect_segments",
        d.max_indirect_segments,
        MAX_INDIRECT_SEGMENTS,
    );
    let persistent = tunable::get(
        "xbd",
        c"hw.xbd.persistent_grants",
        d.persistent,
        tunable::parse_bool,
    );
    FrontendConfig {
        max_ring_page_order: order,
        max_queues: u32::try_from(queues).unwrap_or(d.max_queues),
        max_indirect_segments: indirect,
        persistent,
        ..d
    }
}

/// The loaded xbd.ko: the `vbd` frontend driver registered with xen.ko.
pub struct XbdModule {
    config: FrontendConfig,
    /// Attached (and removed but not yet drained) disks, and the registration, dropped before
    /// `xen` at unload: the bus stops and every disk is detached.
    live: LiveDevices<<KernelXen as XenServices>::Reg>,
    _xen: Arc<KernelXen>,
}

impl core::fmt::Debug for XbdModule {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XbdModule")
            .field("config", &self.config)
            .field("disks", &self.live.count())
            .finish_non_exhaustive()
    }
}

impl XbdModule {
    /// The core configuration every disk gets.
    #[must_use]
    pub fn config(&self) -> FrontendConfig {
        self.config
    }
}

impl KernelModule for XbdModule {
    const NAME: &'static str = "xbd";

    fn load() -> Result<XbdModule, Errno> {
        let config = config_from_tunables();
        let xen = Arc::new(KernelXen::new()?);
        let live = LiveDevices::new(Self::NAME, "disk(s)");
        let kick = Arc::new(xen::KickSlot::new().ok_or(Errno::ENOMEM)?);
        let driver = xen::XbdDriver::new(xen.clone(), config, live.counter(), kick.clone());
        let registration = xen.register_driver_with_hooks(
            Role::Frontend,
            Box::new(driver),
            xenrs_api::Hooks {
                on_kick: Some(Box::new(xen::on_kick)),
                on_watch: Some(Box::new(xen::on_watch)),
            },
        )?;
        kick.set(xenrs_api::Registration::kicker(&registration));
        kprintln!(
            "xbd: loaded (rings up to 2^{} pages, {} queue(s), {} indirect segments, persistent grants {})",
            config.max_ring_page_order,
            config.max_queues,
            config.max_indirect_segments,
            if config.persistent { "on" } else { "off" }
        );
        Ok(XbdModule {
            config,
            live: live.registered(registration),
            _xen: xen,
        })
    }

    /// Refused while a disk is attached: detach it first (`xl block-detach`), since
    /// unloading would fail its bios and pull the disk from under its users.
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
    XbdModule,
    load: xenrs_xbd_load,
    quiesce: xenrs_xbd_quiesce,
    unload: xenrs_xbd_unload,
    stat: xenrs_xbd_stat,
}

#[cfg(test)]
mod tests;
