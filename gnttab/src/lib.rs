//! Grant tables: sharing our pages with other domains, and mapping or copying theirs.
//!
//! # What is here
//!
//! * [`GrantTable`]: our own grant table (v1). [`GrantTable::grant`] lets a peer map or copy one
//!   of our pages and returns an owned [`GrantRef`]; [`GrantTable::revoke`] ends the access
//!   and frees the reference — or, if the peer still has the page mapped, *defers* both
//!   ([`Revoke::Deferred`]) until [`GrantTable::poll_deferred`] sees the peer let go, so the
//!   page is never reused while a peer can still write it (the XSA-396 class).
//! * A lock-free, ABA-safe reference allocator ([`refalloc::RefStack`]): O(1) take and give
//!   back from any context; references `0..8` are never handed out (Xen reserves them for
//!   the toolstack's console and xenstore grants).
//! * [`batch`]: mapping, unmapping and copying *other* domains' grants in batches, with
//!   per-entry status handling and exact unwinding of partial failures (the XSA-361 class),
//!   plus [`ForeignMapping`], a contiguous run of mapped foreign pages over platform-provided
//!   slots ([`ForeignMemory`]).
//! * [`gntdev`]: the platform-neutral logic of `/dev/xen/gntdev` with FreeBSD's ioctl ABI.
//!
//! The crate is `no_std`, forbids `unsafe`, and reaches the hypervisor only through
//! [`xen_kmod::Hypervisor`], so the same code runs in the kernel and against `xensim`.
//!
//! # Why grant table v1 only
//!
//! v2 adds sub-page and transitive grants and a separate status array, none of which the
//! project's drivers need; what it brings in exchange is risk. The status frames have their
//! own lifetime, and switching versions while frames are mapped or in use has been a
//! recurring source of hypervisor bugs: XSA-379 (CVE-2021-28697, status pages not released on
//! version switch, use after free), and the later XSA-486 and XSA-517 in the same area of
//! status-page lifetime and version-change races. A v1 table never has status frames and never
//! changes version, so that whole class cannot reach us, and v1 is what every backend
//! (Linux, FreeBSD, QEMU) supports. The cost is the 32-bit `frame` field (16 TiB of guest
//! physical address space), checked on every grant ([`GrantError::FrameTooLarge`]).
//!
//! # For driver authors
//!
//! ```text
//! // frontend: share a page
//! let r = table.grant(backend_domid, page_gfn, /* readonly */ false)?;
//! ring.put(r.raw());
//! ...
//! match table.revoke(r) {
//!     Revoke::Done => free_or_reuse(page),
//!     Revoke::Deferred => {} // the table releases `page_gfn` via poll_deferred later
//! }
//!
//! // backend: map a request's segments, all or nothing
//! let m = ForeignMapping::map(&hv, &slots, &[(frontend, gref0), (frontend, gref1)], readonly)?;
//! let page = m.page(&slots, 0).unwrap();
//! ...
//! m.unmap(&hv, &slots)?;
//!
//! // backend/netback: copy without mapping
//! copy_grants(&hv, &mut [GrantCopy::new(CopyPtr::Grant { dom, gref }, 0, CopyPtr::Local { gfn }, 0, len)])?;
//! ```
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod batch;
pub mod gntdev;
pub mod refalloc;
pub mod table;
pub mod v1;

pub use batch::{
    copy_grants, map_grants, map_grants_each, unmap_grants, BatchError, CopyPtr, ForeignMapping,
    ForeignMemory, GrantCopy, MapGrant, MapHandle, MapRangeError, MappedPage, PageAccessError,
};
pub use table::{
    DeferredPoll, FrameMapError, GrantError, GrantRef, GrantStats, GrantTable, Revoke, StillInUse,
    TableFrames,
};
pub use v1::GntStatus;

#[cfg(test)]
mod tests;
