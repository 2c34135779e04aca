//! xn.ko: the PV network frontend as `if_t` interfaces `xn<N>`.
//!
//! The kernel-target static library behind `xn.ko`: the netfront core plus this glue, which
//! the C shim `xn_kmod.c` (module registration with `MODULE_DEPEND` on xen, the ifnet and its
//! entry points, mbufs, the per-interface locks and sysctl tree) calls into.
//!
//! * [`net`]: safe glue between the ifnet and the core ([`net::XnIf`]: mbuf → packet on a
//!   queue's ring with its offloads, packet → mbuf, connection and link state, gratuitous ARP
//!   after a reconnection), written against the narrow [`net::IfKpi`] trait;
//! * [`sys`]: the kernel side of that trait, the softc and its locks, and the `extern "C"` entry
//!   points; the only `unsafe` of the crate;
//! * [`xen`]: the core's platform over xen.ko's services and the `vif` xenbus driver.
//!
//! | loader tunable | values | default |
//! |---|---|---|
//! | `hw.xn.num_queues` | 1..=16: queues asked for | 4 |
//! | `hw.xn.split_evtchn` | boolean: separate TX/RX event channels when offered | 1 |
//! | `hw.xn.sg` | boolean: scatter-gather (frames over one page, TSO) | 1 |
//! | `hw.xn.tso` | boolean: TSO / GSO both ways | 1 |
//! | `hw.xn.csum` | boolean: IPv4 checksum offload | 1 |
//! | `hw.xn.ipv6_csum` | boolean: IPv6 checksum offload | 1 |
//!
//! A malformed value is reported on the console and the default is used.
#![cfg_attr(target_os = "none", no_std)]
// The safe glue has no `unsafe`; `sys` (the KPI layer) allows it, block by block.
#![deny(unsafe_code)]

extern crate alloc;

pub mod net;
pub mod sys;
pub mod xen;

use alloc::boxed::Box;
use alloc::sync::Arc;

use freebsd_kpi::module::{KernelModule, LiveDevices};
use freebsd_kpi::{kprintln, tunable, Errno};
use xen_netfront::FrontendConfig;
use xen_xenbus::Role;
use xenrs_api::kernel::KernelXen;
use xenrs_api::XenServices;

// Keep the KPI crate (and with it the kernel panic handler) linked into the library.
pub use freebsd_kpi;
pub use xen_netfront;

/// Most queues asked for.
pub const MAX_QUEUES: u32 = 16;

/// Reads the loader tunables into the core's configuration, logging each malformed one and
/// using its default.
#[must_use]
pub fn config_from_tunables() -> FrontendConfig {
    let d = FrontendConfig::default();
    let queues = tunable::get("xn", c"hw.xn.num_queues", u64::from(d.queues), |t| {
        tunable::parse_u64_in(t, 1, u64::from(MAX_QUEUES))
    });
    let flag = |name, default| tunable::get("xn", name, default, tunable::parse_bool);
    FrontendConfig {
        queues: u32::try_from(queues).unwrap_or(d.queues),
        split_evtchn: flag(c"hw.xn.split_evtchn", d.split_evtchn),
        sg: flag(c"hw.xn.sg", d.sg),
        gso: flag(c"hw.xn.tso", d.gso),
        csum: flag(c"hw.xn.csum", d.csum),
        ipv6_csum: flag(c"hw.xn.ipv6_csum", d.ipv6_csum),
        // Receive steering through the control ring is not configured by this driver (see
        // net.rs): do not ask the backend to set one up.
        ctrl_ring: false,
        ..d
    }
}

/// The loaded xn.ko: the `vif` frontend driver registered with xen.ko.
pub struct XnModule {
    config: FrontendConfig,
    live: LiveDevices<<KernelXen as XenServices>::Reg>,
    _xen: Arc<KernelXen>,
}

impl core::fmt::Debug for XnModule {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XnModule")
            .field("config", &self.config)
            .field("interfaces", &self.live.count())
            .finish_non_exhaustive()
    }
}

impl KernelModule for XnModule {
    const NAME: &'static str = "xn";

    fn load() -> Result<XnModule, Errno> {
        let config = config_from_tunables();
        let xen = Arc::new(KernelXen::new()?);
        let live = LiveDevices::new(Self::NAME, "interface(s)");
        let kick = Arc::new(xen::KickSlot::new().ok_or(Errno::ENOMEM)?);
        let driver = xen::XnDriver::new(xen.clone(), config, live.counter(), kick.clone());
        let registration = xen.register_driver_with_kick(
            Role::Frontend,
            Box::new(driver),
            Box::new(xen::on_kick),
        )?;
        kick.set(xenrs_api::Registration::kicker(&registration));
        kprintln!(
            "xn: loaded (up to {} queue(s), sg {}, tso {}, csum {}/{})",
            config.queues,
            u8::from(config.sg),
            u8::from(config.gso),
            u8::from(config.csum),
            u8::from(config.ipv6_csum)
        );
        Ok(XnModule {
            config,
            live: live.registered(registration),
            _xen: xen,
        })
    }

    /// Refused while an interface exists: detach it first (`xl network-detach`).
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
    XnModule,
    load: xenrs_xn_load,
    quiesce: xenrs_xn_quiesce,
    unload: xenrs_xn_unload,
    stat: xenrs_xn_stat,
}

#[cfg(test)]
mod tests;
