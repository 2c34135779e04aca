//! xnb's binding to xen.ko (the xenrs API): the netback core's platform
//! ([`XenBackPlatform`] over [`XenServices`]: ring pages mapped through `grant_map`, ports
//! bound with handlers, staging pages) and the xenbus `vif` backend driver ([`XnbDriver`])
//! with one [`XnbIf`] per guest vif.
//!
//! Contexts and locking as in xn: xenbus callbacks, event handlers and the bridge's
//! `if_transmit` meet at the vif's sx lock: xenbus callbacks hold it (and may sleep),
//! `if_transmit` and the event handler only try it and leave their work to its holder.
//! A frontend's protocol violation found there is reported from the xenbus thread: the vif
//! kicks the registration ([`KickSlot`]) and [`on_kick`] looks at every connected vif again
//! (see `vif.rs`, "A frontend that breaks the protocol").

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use xen_netback::config::BackendFeatures;
use xen_netback::{BackendPlatform, Limits, LocalPage, PlatformError};
use xen_shmem::SharedMem;
use xen_xenbus::bus::XenStore;
use xen_xenbus::{Device, Driver, Error as XsErr, XenbusState};
use xenrs_api::{BindFlags, Mapped, Pages, XenServices};

pub use crate::sys::{on_kick, KickSlot};
use crate::sys::{EventSink, IfDevice, Inputs, Kernel, SoftcBox};
use crate::vif::{MbufHandle, XnbIf};

/// The netback core's platform over xen.ko's services.
pub struct XenBackPlatform<X: XenServices + Send + 'static> {
    xen: Arc<X>,
    pages: BTreeMap<u64, Pages>,
    sink: Arc<EventSink>,
    kick: Arc<KickSlot>,
}

impl<X: XenServices + Send + 'static> fmt::Debug for XenBackPlatform<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XenBackPlatform")
            .field("pages", &self.pages.len())
            .finish_non_exhaustive()
    }
}

impl<X: XenServices + Send + 'static> XenBackPlatform<X> {
    /// The platform of one vif; its ports' events go to `sink`, its requests for a
    /// xenbus-thread run to `kick`.
    pub fn new(xen: Arc<X>, sink: Arc<EventSink>, kick: Arc<KickSlot>) -> Self {
        XenBackPlatform {
            xen,
            pages: BTreeMap::new(),
            sink,
            kick,
        }
    }
}

impl<X: XenServices + Send + 'static> Drop for XenBackPlatform<X> {
    fn drop(&mut self) {
        for (_, p) in core::mem::take(&mut self.pages) {
            self.xen.free_pages(p);
        }
    }
}

impl<X: XenServices + Send + 'static> BackendPlatform<'static> for XenBackPlatform<X> {
    type Hv = X::Hv;
    type Mapping = Mapped;

    fn hypervisor(&self) -> X::Hv {
        self.xen.hypervisor()
    }

    fn map_ring(
        &mut self,
        domid: u16,
        gref: u32,
    ) -> Result<(Mapped, SharedMem<'static>), PlatformError> {
        let m = self
            .xen
            .grant_map(domid, gref, false)
            .map_err(|_| PlatformError::Map)?;
        let mem = m.mem;
        Ok((m, mem))
    }

    fn unmap_ring(&mut self, m: Mapped) {
        // A refused unmap leaks the frame inside xen.ko (never reused); nothing to retry here.
        let _ = self.xen.grant_unmap(m);
    }

    fn bind(&mut self, domid: u16, remote_port: u32) -> Result<u32, PlatformError> {
        let sink = self.sink.clone();
        self.xen
            .evtchn_bind_interdomain(
                domid,
                remote_port,
                BindFlags::default(),
                Box::new(move |_| sink.fire()),
            )
            .map_err(|_| PlatformError::Bind)
    }

    fn unbind(&mut self, port: u32) {
        let _ = self.xen.evtchn_unbind(port);
    }

    fn local_page(&mut self) -> Result<LocalPage<'static>, PlatformError> {
        let p = self
            .xen
            .alloc_pages(1)
            .map_err(|_| PlatformError::NoMemory)?;
        let page = LocalPage {
            gfn: p.gfn,
            mem: p.mem,
        };
        self.pages.insert(p.gfn, p);
        Ok(page)
    }

    fn free_page(&mut self, page: LocalPage<'static>) {
        if let Some(p) = self.pages.remove(&page.gfn) {
            self.xen.free_pages(p);
        }
    }
}

/// A vif of the kernel.
pub type KernelVif<X> = XnbIf<'static, XenBackPlatform<X>, Kernel>;

impl<X: XenServices + Send + 'static> KernelVif<X> {
    /// A violation found here is reported from the xenbus thread (the store is not ours to
    /// use in this context): ask for a run there until it is.
    fn kick_if_failed(&mut self) {
        if self.needs_report() {
            self.platform().kick.kick();
        }
    }
}

impl<X: XenServices + Send + 'static> IfDevice for KernelVif<X> {
    fn transmit(
        &mut self,
        m: MbufHandle,
        len: u32,
        offload: u32,
        flowid: u32,
        hashed: bool,
    ) -> i32 {
        let r = XnbIf::transmit(self, m, len, offload, flowid, hashed);
        self.kick_if_failed();
        r
    }

    fn set_mtu(&mut self, mtu: i32) -> i32 {
        XnbIf::set_mtu(self, mtu)
    }

    fn stat(&self, which: u32) -> Option<u64> {
        XnbIf::stat(self, which)
    }

    fn event(&mut self, out: &mut Inputs) -> bool {
        out.extend(XnbIf::event(self));
        self.kick_if_failed();
        XnbIf::more(self)
    }

    fn as_any(&mut self) -> &mut dyn core::any::Any {
        self
    }
}

struct Unit {
    unit: u32,
    softc: SoftcBox,
    sink: Arc<EventSink>,
}

/// The xenbus `vif` backend driver: one [`XnbIf`] per backend device directory.
pub struct XnbDriver<X: XenServices + Send + 'static> {
    xen: Arc<X>,
    features: BackendFeatures,
    limits: Limits,
    units: BTreeMap<String, Unit>,
    live: Arc<AtomicUsize>,
    kick: Arc<KickSlot>,
}

impl<X: XenServices + Send + 'static> fmt::Debug for XnbDriver<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XnbDriver")
            .field("units", &self.units.len())
            .finish_non_exhaustive()
    }
}

impl<X: XenServices + Send + 'static> XnbDriver<X> {
    /// A driver offering `features` within `limits`; `live` counts its vifs; `kick` is the
    /// registration's (see [`on_kick`]).
    pub fn new(
        xen: Arc<X>,
        features: BackendFeatures,
        limits: Limits,
        live: Arc<AtomicUsize>,
        kick: Arc<KickSlot>,
    ) -> Self {
        XnbDriver {
            xen,
            features,
            limits,
            units: BTreeMap::new(),
            live,
            kick,
        }
    }

    fn with_vif<R>(unit: &Unit, f: impl FnOnce(&mut KernelVif<X>) -> R) -> Option<R> {
        unit.softc.with(|dev| {
            dev.as_mut()
                .and_then(|d| d.as_any().downcast_mut::<KernelVif<X>>())
                .map(f)
        })
    }

    fn free_unit(&self) -> u32 {
        let used: Vec<u32> = self.units.values().map(|u| u.unit).collect();
        (0..).find(|n| !used.contains(n)).unwrap_or(0)
    }

    fn finish(&self, u: Unit) {
        let _ = Self::with_vif(&u, |v| v.detach());
        let dev = u.softc.with(Option::take);
        drop(dev);
        u.softc.free(&u.sink);
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<X: XenServices + Send + 'static, S: XenStore + ?Sized> Driver<S> for XnbDriver<X> {
    fn devtype(&self) -> &str {
        "vif"
    }

    fn probe(&mut self, xs: &mut S, dev: &mut Device) -> Result<(), XsErr> {
        let unit = self.free_unit();
        let softc = SoftcBox::new(unit).ok_or(XsErr::BadValue)?;
        let sink = Arc::new(EventSink::default());
        let plat = XenBackPlatform::new(self.xen.clone(), sink.clone(), self.kick.clone());
        let vif: KernelVif<X> =
            XnbIf::new(plat, self.features, self.limits, crate::sys::kernel(&softc));
        softc.with(|d| *d = Some(Box::new(vif)));
        softc.connect(&sink);
        let u = Unit { unit, softc, sink };
        self.live.fetch_add(1, Ordering::AcqRel);
        match Self::with_vif(&u, |v| v.probe(xs, dev)).unwrap_or(Err(XsErr::BadValue)) {
            Ok(()) => {
                self.units.insert(String::from(dev.nodename()), u);
                Ok(())
            }
            Err(e) => {
                self.finish(u);
                Err(e)
            }
        }
    }

    fn otherend_changed(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        let Some(u) = self.units.get(dev.nodename()) else {
            return Ok(());
        };
        Self::with_vif(u, |v| v.otherend_changed(xs, dev, state)).unwrap_or(Ok(()))
    }

    fn remove(&mut self, _xs: &mut S, dev: &mut Device) {
        if let Some(u) = self.units.remove(dev.nodename()) {
            self.finish(u);
        }
    }
}
