//! xn's binding to xen.ko (the xenrs API): the netfront core's platform
//! ([`XenNetPlatform`] over [`XenServices`]) and the xenbus `vif` frontend driver
//! ([`XnDriver`]) that creates, drives and removes one [`XnIf`] per device.
//!
//! Contexts and locking as in xbd (see `xbd/src/xen.rs`): xenbus callbacks, event handlers
//! and `if_transmit` meet at the interface's sx lock: xenbus callbacks hold it (and may sleep),
//! `if_transmit` and the event handler only try it and leave their work to its holder.
//! A backend's protocol violation found there is reported from the xenbus thread: the
//! interface kicks the registration ([`KickSlot`]) and [`on_kick`] looks at every connected
//! device again (see `net.rs`, "A backend that breaks the protocol").

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use xen_netfront::negotiate::FrontendConfig;
use xen_netfront::{FrontendPlatform, PlatformError};
use xen_shmem::SharedMem;
use xen_xenbus::bus::XenStore;
use xen_xenbus::{Device, Driver, Error as XsErr, XenbusState};
use xenrs_api::{BindFlags, Pages, XenServices};

use crate::net::{IfHandle, MbufHandle, XnIf};
pub use crate::sys::{on_kick, KickSlot};
use crate::sys::{EventSink, IfDevice, Inputs, Kernel, SoftcBox};

/// The netfront core's platform over xen.ko's services.
pub struct XenNetPlatform<X: XenServices + Send + 'static> {
    xen: Arc<X>,
    /// Pages handed out, by frame.
    pages: BTreeMap<u64, Pages>,
    sink: Arc<EventSink>,
    kick: Arc<KickSlot>,
}

impl<X: XenServices + Send + 'static> fmt::Debug for XenNetPlatform<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XenNetPlatform")
            .field("pages", &self.pages.len())
            .finish_non_exhaustive()
    }
}

impl<X: XenServices + Send + 'static> XenNetPlatform<X> {
    /// The platform of one interface; its ports' events go to `sink`, its requests for a
    /// xenbus-thread run to `kick`.
    pub fn new(xen: Arc<X>, sink: Arc<EventSink>, kick: Arc<KickSlot>) -> Self {
        XenNetPlatform {
            xen,
            pages: BTreeMap::new(),
            sink,
            kick,
        }
    }

    /// Pages not given back yet.
    pub fn pages_out(&self) -> usize {
        self.pages.len()
    }
}

impl<X: XenServices + Send + 'static> Drop for XenNetPlatform<X> {
    fn drop(&mut self) {
        for (_, p) in core::mem::take(&mut self.pages) {
            self.xen.free_pages(p);
        }
    }
}

impl<X: XenServices + Send + 'static> FrontendPlatform<'static> for XenNetPlatform<X> {
    type Hv = X::Hv;
    type Grant = u32;

    fn hypervisor(&self) -> X::Hv {
        self.xen.hypervisor()
    }

    fn alloc_page(&mut self) -> Result<(u64, SharedMem<'static>), PlatformError> {
        let p = self
            .xen
            .alloc_pages(1)
            .map_err(|_| PlatformError::NoMemory)?;
        let r = (p.gfn, p.mem);
        self.pages.insert(p.gfn, p);
        Ok(r)
    }

    fn grant(&mut self, domid: u16, gfn: u64, readonly: bool) -> Result<(u32, u32), PlatformError> {
        match self.xen.grant_access(domid, gfn, readonly) {
            Ok(g) => Ok((g, g)),
            Err(_) => {
                // Never granted: the page goes straight back.
                if let Some(p) = self.pages.remove(&gfn) {
                    self.xen.free_pages(p);
                }
                Err(PlatformError::Grant)
            }
        }
    }

    fn release(&mut self, gfn: u64, grant: u32) {
        // Done or deferred: either way xen.ko holds the page back until the backend lets
        // go of it (XSA-396); it is never reused by us.
        let _ = self.xen.grant_revoke(grant);
        if let Some(p) = self.pages.remove(&gfn) {
            self.xen.free_pages(p);
        }
    }

    fn alloc_unbound(&mut self, remote: u16) -> Result<u32, PlatformError> {
        let sink = self.sink.clone();
        self.xen
            .evtchn_alloc_unbound(remote, BindFlags::default(), Box::new(move |_| sink.fire()))
            .map_err(|_| PlatformError::Evtchn)
    }

    fn close(&mut self, port: u32) {
        let _ = self.xen.evtchn_unbind(port);
    }
}

/// An interface of the kernel.
pub type KernelIf<X> = XnIf<'static, XenNetPlatform<X>, Kernel>;

impl<X: XenServices + Send + 'static> KernelIf<X> {
    /// A violation found here is reported from the xenbus thread (the store is not ours to
    /// use in this context): ask for a run there until it is.
    fn kick_if_failed(&mut self) {
        if self.needs_report() {
            self.platform().kick.kick();
        }
    }
}

impl<X: XenServices + Send + 'static> IfDevice for KernelIf<X> {
    fn transmit(
        &mut self,
        m: MbufHandle,
        len: u32,
        offload: u32,
        segsz: u32,
        flowid: u32,
        hashed: bool,
    ) -> i32 {
        let r = XnIf::transmit(self, m, len, offload, segsz, flowid, hashed);
        self.kick_if_failed();
        r
    }

    fn set_mtu(&mut self, mtu: i32) -> i32 {
        XnIf::set_mtu(self, mtu)
    }

    fn set_caps(&mut self, enabled: u32) {
        XnIf::set_caps(self, enabled);
    }

    fn stat(&self, which: u32) -> Option<u64> {
        XnIf::stat(self, which)
    }

    fn event(&mut self, out: &mut Inputs) -> bool {
        let got: Vec<(IfHandle, MbufHandle)> = XnIf::event(self);
        out.extend(got);
        self.kick_if_failed();
        XnIf::more(self)
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

/// The xenbus `vif` frontend driver: one [`XnIf`] per device directory.
pub struct XnDriver<X: XenServices + Send + 'static> {
    xen: Arc<X>,
    cfg: FrontendConfig,
    units: BTreeMap<String, Unit>,
    live: Arc<AtomicUsize>,
    kick: Arc<KickSlot>,
}

impl<X: XenServices + Send + 'static> fmt::Debug for XnDriver<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XnDriver")
            .field("units", &self.units.len())
            .finish_non_exhaustive()
    }
}

impl<X: XenServices + Send + 'static> XnDriver<X> {
    /// A driver whose interfaces use `cfg`; `live` counts them; `kick` is the
    /// registration's (see [`on_kick`]).
    pub fn new(
        xen: Arc<X>,
        cfg: FrontendConfig,
        live: Arc<AtomicUsize>,
        kick: Arc<KickSlot>,
    ) -> Self {
        XnDriver {
            xen,
            cfg,
            units: BTreeMap::new(),
            live,
            kick,
        }
    }

    fn with_if<R>(unit: &Unit, f: impl FnOnce(&mut KernelIf<X>) -> R) -> Option<R> {
        unit.softc.with(|dev| {
            dev.as_mut()
                .and_then(|d| d.as_any().downcast_mut::<KernelIf<X>>())
                .map(f)
        })
    }

    fn free_unit(&self) -> u32 {
        let used: Vec<u32> = self.units.values().map(|u| u.unit).collect();
        (0..).find(|n| !used.contains(n)).unwrap_or(0)
    }

    fn finish(&self, u: Unit) {
        let _ = Self::with_if(&u, |i| i.detach());
        let dev = u.softc.with(Option::take);
        drop(dev);
        u.softc.free(&u.sink);
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<X: XenServices + Send + 'static, S: XenStore + ?Sized> Driver<S> for XnDriver<X> {
    fn devtype(&self) -> &str {
        "vif"
    }

    fn probe(&mut self, xs: &mut S, dev: &mut Device) -> Result<(), XsErr> {
        let unit = self.free_unit();
        let softc = SoftcBox::new(unit).ok_or(XsErr::BadValue)?;
        let sink = Arc::new(EventSink::default());
        let plat = XenNetPlatform::new(self.xen.clone(), sink.clone(), self.kick.clone());
        let ifc: KernelIf<X> = XnIf::new(plat, self.cfg, crate::sys::kernel(&softc), unit);
        softc.with(|d| *d = Some(Box::new(ifc)));
        softc.connect(&sink);
        let u = Unit { unit, softc, sink };
        self.live.fetch_add(1, Ordering::AcqRel);
        match Self::with_if(&u, |i| i.probe(xs, dev)).unwrap_or(Err(XsErr::BadValue)) {
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
        Self::with_if(u, |i| i.otherend_changed(xs, dev, state)).unwrap_or(Ok(()))
    }

    fn remove(&mut self, _xs: &mut S, dev: &mut Device) {
        if let Some(u) = self.units.remove(dev.nodename()) {
            self.finish(u);
        }
    }
}
