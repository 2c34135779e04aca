//! What the backend core needs from its platform: the hypercall seam, guest-physical slots to
//! map foreign pages into, a few pages of its own, event channels, and a log.
//!
//! The core makes the grant hypercalls itself (batched, through `xen-gnttab`), so the
//! per-entry status handling (XSA-361 class) is the same everywhere; the platform only says
//! *where* mappings go and how to look at them. In the FreeBSD kernel that is an unpopulated
//! guest-physical range (`xenmem_alloc`) and its kernel virtual address, the event channel is
//! bound through `xen.ko`'s port table so the upcall finds the device, and `log` is
//! `device_printf`; in `xensim` each is a simulator call.

use core::fmt;

use xen_kmod::{Hypervisor, XenError};
use xen_shmem::SharedMem;

/// One of the backend's own pages (for grant copies): its frame number as Xen knows it and a
/// view of it.
#[derive(Debug, Clone, Copy)]
pub struct LocalPage<'a> {
    /// Guest frame number (`GNTCOPY` with `DOMID_SELF`).
    pub gfn: u64,
    /// The page.
    pub mem: SharedMem<'a>,
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// A peer misbehaved or a resource failed; the device stops or degrades.
    Error,
    /// Something unusual that is handled.
    Warning,
    /// State changes.
    Info,
}

/// The platform of a backend (see the module docs).
pub trait BackendEnv<'a> {
    /// The hypercall seam.
    type Hv: Hypervisor;

    /// The hypervisor, for grant map/unmap/copy.
    fn hypervisor(&self) -> &Self::Hv;

    /// Reserves `count` contiguous page-sized guest-physical slots for foreign mappings and
    /// returns the address of the first. `None` when none are free.
    fn reserve_slots(&self, count: u32) -> Option<u64>;

    /// Gives back slots from [`BackendEnv::reserve_slots`]; only called with nothing mapped
    /// there.
    fn release_slots(&self, host_addr: u64, count: u32);

    /// A view of `pages` contiguous mapped slots starting at `host_addr` (after the grants
    /// are mapped there). A multi-page ring needs `pages > 1`.
    fn view(&self, host_addr: u64, pages: u32) -> Option<SharedMem<'a>>;

    /// A page of our own, for grant copies. `None` when memory is short.
    fn alloc_page(&self) -> Option<LocalPage<'a>>;

    /// Gives a page back.
    fn free_page(&self, page: LocalPage<'a>);

    /// Binds to the frontend's event channel port; returns our local port.
    ///
    /// # Errors
    /// The hypercall's error.
    fn bind_interdomain(&self, remote_dom: u16, remote_port: u32) -> Result<u32, XenError>;

    /// Sends an event on a bound port.
    fn notify(&self, port: u32);

    /// Closes a bound port.
    fn close_port(&self, port: u32);

    /// Records a log line.
    fn log(&self, level: Level, msg: fmt::Arguments<'_>);
}
