//! The services xen.ko exports to the driver modules, as a safe Rust interface.
//!
//! xen.ko owns everything a domain has exactly one of: the hypercall page, the event-channel
//! core and its upcall, our grant table, the xenstore connection. The driver modules (xbd,
//! xbbd, xn, xnb) reach these through C symbols xen.ko exports (`freebsd-build/include/
//! xenrs_api.h`, `modules/xen/export_syms`): Rust types cannot cross a module boundary (each
//! `.ko` carries its own copy of every crate), C types can. This crate wraps those symbols:
//!
//! * [`XenServices`]: the trait driver glue is written against — hypervisor, xenstore,
//!   xenbus driver registration, event channels with handlers, grants, pages;
//! * [`kernel::KernelXen`]: the implementation over xen.ko's symbols (what ships);
//! * [`host::HostXen`] (feature `host`): the same trait over a host-side hypervisor and
//!   xenstore (xensim in the project's tests), so the drivers' glue is tested against the
//!   same interface it uses in the kernel; [`sim`] (feature `host`) sets it up over a xensim
//!   domain, the test support the driver modules' tests share.
//!
//! # xenbus in the driver module
//!
//! A driver registers a [`xen_xenbus::Driver`] for a role and device type
//! ([`XenServices::register_driver`]); a [`xen_xenbus::Bus`] runs *in the driver module* over a
//! store handle whose requests and watches go through xen.ko. xen.ko calls the registration
//! back from its one xenbus thread (start, each watch event, stop), never concurrently, never
//! after the registration is dropped. So the tested bus logic (state machine, other-end
//! watching, probe/otherend-changed/remove) is the same code in every module, and the
//! per-device handle is whatever the driver keeps for the device's `nodename`.
#![no_std]

extern crate alloc;

use alloc::boxed::Box;

use freebsd_kpi::Errno;
use xen_shmem::SharedMem;
use xen_xenbus::{Driver, Role, XenStore};

#[cfg(feature = "host")]
pub mod host;
pub mod kernel;
#[cfg(feature = "host")]
pub mod sim;

/// The ABI version this crate speaks (`XENRS_API_VERSION` in `xenrs_api.h`).
pub const API_VERSION: u32 = 1;

// v1 grew `xenrs_xenbus_kick` / `XENRS_XB_KICK` (additions only: a driver built before them
// still works with this xen.ko).

/// An event-channel port number.
pub type Port = u32;

/// What runs when a bound port fires: in xen.ko's event thread, with the port number. It may
/// take default mutexes and enqueue tasks; it must not sleep for long.
pub type EventHandler = Box<dyn Fn(Port) + Send + Sync + 'static>;

/// How a port is bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindFlags {
    /// Mask the port on every delivery until [`XenServices::evtchn_unmask`].
    pub auto_mask: bool,
}

/// Physically contiguous, zeroed pages from the kernel, with their first frame number.
#[derive(Debug)]
pub struct Pages {
    /// The pages, as shared memory (peers may write them once granted).
    pub mem: SharedMem<'static>,
    /// Guest frame number of the first page; page `i` is `gfn + i`.
    pub gfn: u64,
    /// Number of pages.
    pub count: u32,
    /// Kernel address (for giving the pages back).
    pub(crate) va: usize,
}

impl Pages {
    /// The kernel virtual address of the first page (for `bus_dma`-free drivers that hand
    /// the buffer to another kernel subsystem).
    #[must_use]
    pub fn va(&self) -> usize {
        self.va
    }
}

/// A foreign page mapped through a grant.
#[derive(Debug)]
pub struct Mapped {
    /// The mapped page.
    pub mem: SharedMem<'static>,
    /// xen.ko's handle of the mapping (for [`XenServices::grant_unmap`]).
    pub(crate) handle: u64,
    /// Kernel address of the page.
    pub(crate) va: usize,
}

impl Mapped {
    /// The kernel virtual address of the page.
    #[must_use]
    pub fn va(&self) -> usize {
        self.va
    }
}

/// The outcome of [`XenServices::grant_revoke`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// Access ended, the reference is free; the page may be reused.
    Done,
    /// The peer still maps the page: xen.ko keeps the reference and releases it when the peer
    /// lets go. Give the page back with [`XenServices::free_pages`] (xen.ko holds it until
    /// then) and never reuse it yourself.
    Deferred,
}

/// A registered xenbus driver; dropping it runs the bus's stop (every device removed) and
/// unregisters. Nothing of the driver is called afterwards.
pub trait Registration {
    /// A handle that asks for one run of the registration's kick function on xen.ko's
    /// xenbus thread (see [`XenServices::register_driver_with_kick`]); usable from event
    /// handlers and any thread, cheap to clone.
    fn kicker(&self) -> Kicker;
}

/// Asks for a run of a registration's kick function on the xenbus thread; several requests
/// before it runs give one run. Requests after the registration is gone do nothing.
#[derive(Clone)]
pub struct Kicker(alloc::sync::Arc<dyn Fn() + Send + Sync>);

impl Kicker {
    /// A kicker calling `f`.
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Kicker {
        Kicker(alloc::sync::Arc::new(f))
    }

    /// Requests the run.
    pub fn kick(&self) {
        (self.0)();
    }
}

impl core::fmt::Debug for Kicker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Kicker")
    }
}

/// What runs on the xenbus thread when a registration is kicked: the driver's chance to act
/// on its devices with the store (e.g. fail a device after a protocol violation an event
/// handler found: `bus.with_device(store, nodename, ...)`).
pub type KickFn<S> = Box<dyn FnMut(&mut xen_xenbus::Bus<S>, &mut S) + Send>;

/// What runs on the xenbus thread for a watch event of a registration that its bus did not
/// claim (the bus handles only its root watch and the other ends' `state` watches): a watch
/// the driver added itself through the store, such as blkfront's on the backend's `sectors`
/// (online resize). Arguments: the bus, the store, the watch and the event.
pub type WatchFn<S> = Box<
    dyn FnMut(&mut xen_xenbus::Bus<S>, &mut S, xen_xenbus::WatchId, &xen_xenbus::WatchEvent) + Send,
>;

/// The optional hooks of a registration ([`XenServices::register_driver_with_hooks`]).
pub struct Hooks<S> {
    /// Run after each [`Registration::kicker`] request (coalesced).
    pub on_kick: Option<KickFn<S>>,
    /// Run for each watch event the bus did not claim.
    pub on_watch: Option<WatchFn<S>>,
}

impl<S> Default for Hooks<S> {
    fn default() -> Self {
        Hooks {
            on_kick: None,
            on_watch: None,
        }
    }
}

impl<S> core::fmt::Debug for Hooks<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Hooks")
            .field("on_kick", &self.on_kick.is_some())
            .field("on_watch", &self.on_watch.is_some())
            .finish()
    }
}

/// The services of xen.ko, as the driver glue uses them.
pub trait XenServices: Sync {
    /// The hypervisor: typed hypercalls (`xen_kmod::HypervisorExt`), grant map/unmap/copy
    /// batches (`xen_gnttab`), event notification.
    type Hv: xen_kmod::Hypervisor + Clone + Send + Sync + 'static;
    /// A xenstore handle for the driver's bus (requests and watches through xen.ko).
    type Store: XenStore;
    /// A live driver registration.
    type Reg: Registration;

    /// The hypervisor handle.
    fn hypervisor(&self) -> Self::Hv;

    /// Our domain id.
    fn domid(&self) -> u16;

    /// Registers `driver` for `role` and its device type: a bus in the caller's module,
    /// started from xen.ko's xenbus thread.
    ///
    /// # Errors
    /// `EEXIST` when the role and type are taken, `ENOMEM`, `ENXIO` when xen.ko is not up.
    fn register_driver(
        &self,
        role: Role,
        driver: Box<dyn Driver<Self::Store> + Send>,
    ) -> Result<Self::Reg, Errno>;

    /// As [`XenServices::register_driver`], with `on_kick` run on the xenbus thread after
    /// each [`Registration::kicker`] request (coalesced).
    ///
    /// # Errors
    /// As [`XenServices::register_driver`].
    fn register_driver_with_kick(
        &self,
        role: Role,
        driver: Box<dyn Driver<Self::Store> + Send>,
        on_kick: KickFn<Self::Store>,
    ) -> Result<Self::Reg, Errno>;

    /// As [`XenServices::register_driver`], with the registration's [`Hooks`]: `on_kick` as
    /// for [`XenServices::register_driver_with_kick`], and `on_watch` for the watch events of
    /// this registration's own watches that its bus does not claim (without it they are
    /// dropped).
    ///
    /// # Errors
    /// As [`XenServices::register_driver`].
    fn register_driver_with_hooks(
        &self,
        role: Role,
        driver: Box<dyn Driver<Self::Store> + Send>,
        hooks: Hooks<Self::Store>,
    ) -> Result<Self::Reg, Errno>;

    /// A port `remote` may bind to; `handler` runs for each event.
    ///
    /// # Errors
    /// `ENOMEM`, `ENXIO`, or Xen's refusal as an errno.
    fn evtchn_alloc_unbound(
        &self,
        remote: u16,
        flags: BindFlags,
        handler: EventHandler,
    ) -> Result<Port, Errno>;

    /// A port connected to `remote`'s `remote_port`; `handler` runs for each event.
    ///
    /// # Errors
    /// As [`XenServices::evtchn_alloc_unbound`].
    fn evtchn_bind_interdomain(
        &self,
        remote: u16,
        remote_port: Port,
        flags: BindFlags,
        handler: EventHandler,
    ) -> Result<Port, Errno>;

    /// Notifies the other end of `port`.
    ///
    /// # Errors
    /// `ENOENT` for a port not bound here; Xen's refusal.
    fn evtchn_notify(&self, port: Port) -> Result<(), Errno>;

    /// Unmasks an auto-masked port (an event that arrived meanwhile is delivered then).
    ///
    /// # Errors
    /// As [`XenServices::evtchn_notify`].
    fn evtchn_unmask(&self, port: Port) -> Result<(), Errno>;

    /// Closes `port`. When this returns, its handler is not running and never runs again.
    ///
    /// # Errors
    /// `ENOENT` for a port not bound here.
    fn evtchn_unbind(&self, port: Port) -> Result<(), Errno>;

    /// Lets `domid` map or copy our frame `gfn`; the grant reference.
    ///
    /// # Errors
    /// `ENOSPC` (table full and cannot grow), `EINVAL` (frame too large for grant v1).
    fn grant_access(&self, domid: u16, gfn: u64, readonly: bool) -> Result<u32, Errno>;

    /// Ends access now.
    ///
    /// # Errors
    /// `EBUSY` while the peer still maps the page (the reference stays valid).
    fn grant_end_access(&self, gref: u32) -> Result<(), Errno>;

    /// Ends access now or defers it (see [`Revoked`]).
    ///
    /// # Errors
    /// `ENOENT` for a reference not granted here.
    fn grant_revoke(&self, gref: u32) -> Result<Revoked, Errno>;

    /// Maps `domid`'s grant `gref` (one page).
    ///
    /// # Errors
    /// `ENOMEM` (no frame to map at), `EINVAL`/`EPERM`/`ESRCH` from Xen's `GNTST_*` status.
    fn grant_map(&self, domid: u16, gref: u32, readonly: bool) -> Result<Mapped, Errno>;

    /// Unmaps what [`XenServices::grant_map`] mapped.
    ///
    /// # Errors
    /// `EIO` when Xen refuses (the frame is then leaked, never reused).
    fn grant_unmap(&self, m: Mapped) -> Result<(), Errno>;

    /// `count` contiguous zeroed pages.
    ///
    /// # Errors
    /// `ENOMEM`, `EINVAL` for a count of 0 or more than 512.
    fn alloc_pages(&self, count: u32) -> Result<Pages, Errno>;

    /// Gives pages back (held by xen.ko while a deferred grant still covers them).
    fn free_pages(&self, pages: Pages);
}

/// The errno of a failed xenstore call, for glue that reports to the kernel.
#[must_use]
pub fn xs_errno(e: xen_xenbus::Error) -> Errno {
    use xen_xenbus::{Error, TransportError, XsError};
    match e {
        Error::Xs(XsError::NoEnt) => Errno::ENOENT,
        Error::Xs(XsError::Acces | XsError::Perm) => Errno::EACCES,
        Error::Xs(XsError::Again) | Error::Busy => Errno::EAGAIN,
        Error::Xs(XsError::NoMem) => Errno::ENOMEM,
        Error::Invalid(_) | Error::Xs(XsError::Inval) => Errno::EINVAL,
        Error::Transport(TransportError::TimedOut) => Errno::ETIMEDOUT,
        _ => Errno::EIO,
    }
}

/// The FreeBSD errno of a Xen error (hypercall failure).
#[must_use]
pub fn xen_errno(e: xen_kmod::XenError) -> Errno {
    Errno::from_raw(e.to_freebsd_errno()).unwrap_or(Errno::EIO)
}

/// Role numbers of the C ABI.
#[must_use]
pub fn role_to_raw(role: Role) -> u32 {
    match role {
        Role::Frontend => 0,
        Role::Backend => 1,
    }
}

/// The role of a C ABI number.
#[must_use]
pub fn role_from_raw(raw: u32) -> Option<Role> {
    match raw {
        0 => Some(Role::Frontend),
        1 => Some(Role::Backend),
        _ => None,
    }
}
