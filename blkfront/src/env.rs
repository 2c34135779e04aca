//! What the frontend core needs from its platform: our grant table, pages the backend may
//! see, event channels, and a log.
//!
//! Grants go through `xen-gnttab`'s [`xen_gnttab::GrantTable`] in every real platform (the
//! kernel's `xen.ko` table, or one over `xensim`); the trait only names the three operations
//! the frontend uses so that a test can wrap the table.
//!
//! # Page ownership and deferred revocation (XSA-396)
//!
//! [`FrontendEnv::revoke`] may answer [`Revoke::Deferred`]: the backend still has the page
//! mapped. The frontend then forgets the page — it is neither freed nor reused — and the
//! platform's periodic `GrantTable::poll_deferred` hands the page's frame back once the backend
//! lets go. That is only done for pages the frontend owns (rings, indirect pages, bounce and
//! persistent pages). Pages of a caller's bio are never revoked that way: their grants are
//! ended with [`FrontendEnv::end_access`], retried until the backend lets go, and only then is
//! the bio handed back.

use core::fmt;

use xen_blkback::env::Level;
use xen_gnttab::{GrantError, GrantRef, Revoke, StillInUse};
use xen_kmod::XenError;
use xen_shmem::SharedMem;

/// Contiguous zeroed pages of ours: the frame number of the first and a view of them all.
#[derive(Debug, Clone, Copy)]
pub struct PageRun<'a> {
    /// Guest frame number of the first page (the others follow).
    pub gfn: u64,
    /// Number of pages.
    pub count: u32,
    /// The pages.
    pub mem: SharedMem<'a>,
}

/// The platform of a frontend (see the module docs).
pub trait FrontendEnv<'a> {
    /// Allows `domid` to map or copy page `gfn`.
    ///
    /// # Errors
    /// As [`xen_gnttab::GrantTable::grant`].
    fn grant(&self, domid: u16, gfn: u64, readonly: bool) -> Result<GrantRef, GrantError>;

    /// Ends access if the grantee does not have the page mapped; the reference stays ours.
    ///
    /// # Errors
    /// [`StillInUse`]: the page must not be reused.
    fn end_access(&self, r: &GrantRef) -> Result<(), StillInUse>;

    /// Ends access and frees the reference, or defers both (the page then belongs to the
    /// grant table's deferred list until released).
    fn revoke(&self, r: GrantRef) -> Revoke;

    /// `count` contiguous zeroed pages (a ring, an indirect page, a bounce page).
    fn alloc_pages(&self, count: u32) -> Option<PageRun<'a>>;

    /// Gives pages back (only pages no grant refers to any more).
    fn free_pages(&self, run: PageRun<'a>);

    /// Allocates an event channel port the backend's domain may bind to.
    ///
    /// # Errors
    /// The hypercall's error.
    fn alloc_unbound(&self, remote: u16) -> Result<u32, XenError>;

    /// Sends an event.
    fn notify(&self, port: u32);

    /// Closes a port.
    fn close_port(&self, port: u32);

    /// Records a log line.
    fn log(&self, level: Level, msg: fmt::Arguments<'_>);
}
