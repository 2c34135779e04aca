//! xnb.ko: the PV network backend: one `if_t` interface `xnb<domid>.<handle>` per guest
//! vif, for a bridge(4) to hold.
//!
//! The kernel-target static library behind `xnb.ko`: the netback core plus this glue, which
//! the C shim `xnb_kmod.c` (module registration with `MODULE_DEPEND` on xen, the ifnet and its
//! entry points, mbufs, the per-vif locks and sysctl tree) calls into.
//!
//! * [`vif`]: safe glue between the ifnet and the core ([`vif::XnbIf`]: frames from the guest
//!   up with `if_input`, frames from the bridge to the guest, the backend state machine and
//!   link state), written against the narrow [`vif::IfKpi`] trait;
//! * [`sys`]: the kernel side of that trait, the softc and its locks, the `extern "C"` entry
//!   points; the only `unsafe` of the crate;
//! * [`xen`]: the core's platform over xen.ko's services and the `vif` backend xenbus driver.
//!
//! | loader tunable | values | default |
//! |---|---|---|
//! | `hw.xnb.max_queues` | 1..=16: queues offered | 4 |
//! | `hw.xnb.split_evtchn` | boolean: offer separate TX/RX event channels | 1 |
//! | `hw.xnb.rx_queue_packets` | 16..=65536: frames waiting for the guest's buffers, per queue | 512 |
//!
//! A malformed value is reported on the console and the default is used.
#![cfg_attr(target_os = "none", no_std)]
// The safe glue has no `unsafe`; `sys` (the KPI layer) allows it, block by block.
#![deny(unsafe_code)]

extern crate alloc;

pub mod sys;
pub mod vif;
pub mod xen;

use alloc::boxed::Box;
use alloc::sync::Arc;

use freebsd_kpi::module::{KernelModule, LiveDevices};
use freebsd_kpi::{kprintln, tunable, Errno};
use xen_netback::config::BackendFeatures;
use xen_netback::Limits;
use xen_xenbus::Role;
use xenrs_api::kernel::KernelXen;
use xenrs_api::XenServices;

// Keep the KPI crate (and with it the kernel panic handler) linked into the library.
pub use freebsd_kpi;
pub use xen_netback;

/// Most queues offered.
pub const MAX_QUEUES: u32 = 16;

/// Reads the loader tunables: what the backend offers and its queue limits. A malformed
/// value is logged and its default used.
#[must_use]
pub fn config_from_tunables() -> (BackendFeatures, Limits) {
    let f = BackendFeatures::default();
    let l = Limits::default();
    let queues = tunable::get("xnb", c"hw.xnb.max_queues", u64::from(f.max_queues), |t| {
        tunable::parse_u64_in(t, 1, u64::from(MAX_QUEUES))
    });
    let split = tunable::get(
        "xnb",
        c"hw.xnb.split_evtchn",
        f.split_evtchn,
        tunable::parse_bool,
    );
    let rxq = tunable::get(
        "xnb",
        c"hw.xnb.rx_queue_packets",
        l.rx_queue_packets as u64,
        |t| tunable::parse_u64_in(t, 16, 65536),
    );
    (
        BackendFeatures {
            max_queues: u32::try_from(queues).unwrap_or(f.max_queues),
            split_evtchn: split,
            // Steering through the control ring needs a consumer of the hash; not offered.
            ctrl_ring: false,
            ..f
        },
        Limits {
            rx_queue_packets: usize::try_from(rxq).unwrap_or(l.rx_queue_packets),
            ..l
        },
    )
}

/// The loaded xnb.ko: the `vif` backend driver registered with xen.ko.
pub struct XnbModule {
    live: LiveDevices<<KernelXen as XenServices>::Reg>,
    _xen: Arc<KernelXen>,
}

impl core::fmt::Debug for XnbModule {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XnbModule")
            .field("vifs", &self.live.count())
            .finish_non_exhaustive()
    }
}

impl KernelModule for XnbModule {
    const NAME: &'static str = "xnb";

    fn load() -> Result<XnbModule, Errno> {
        let (features, limits) = config_from_tunables();
        let xen = Arc::new(KernelXen::new()?);
        let live = LiveDevices::new(Self::NAME, "vif(s)");
        let kick = Arc::new(xen::KickSlot::new().ok_or(Errno::ENOMEM)?);
        let driver =
            xen::XnbDriver::new(xen.clone(), features, limits, live.counter(), kick.clone());
        let registration =
            xen.register_driver_with_kick(Role::Backend, Box::new(driver), Box::new(xen::on_kick))?;
        kick.set(xenrs_api::Registration::kicker(&registration));
        kprintln!(
            "xnb: loaded (up to {} queue(s) per vif, split event channels {})",
            features.max_queues,
            u8::from(features.split_evtchn)
        );
        Ok(XnbModule {
            live: live.registered(registration),
            _xen: xen,
        })
    }

    /// Refused while a guest vif exists (`xl network-detach` it first).
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
    XnbModule,
    load: xenrs_xnb_load,
    quiesce: xenrs_xnb_quiesce,
    unload: xenrs_xnb_unload,
    stat: xenrs_xnb_stat,
}

#[cfg(test)]
mod tests;
