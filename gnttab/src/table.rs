//! Our own grant table: granting our pages to other domains, and ending that access safely.
//!
//! # Frames
//!
//! The table lives in frames Xen owns. The platform reserves memory for up to
//! [`TableFrames::frames`]`().len()` of them and says how Xen's frames get there:
//!
//! * PVH/HVM (what FreeBSD runs as): `XENMEM_add_to_physmap(XENMAPSPACE_grant_table, idx,
//!   gfn)` places frame `idx` at a guest frame the platform chose ([`TableFrames::gfn`]);
//!   asking for a frame beyond the current size also grows the table in Xen.
//! * Otherwise: `GNTTABOP_setup_table` returns Xen's frame numbers and the platform maps them
//!   ([`TableFrames::map_frames`]).
//!
//! Frames are added one at a time when the free list runs dry ([`GrantTable::grow`]), up to
//! the smaller of Xen's `max_nr_frames` and the reserved memory. Growth is serialised by a
//! flag, not a lock: a second thread that finds the table growing spins briefly and retries.
//!
//! # Why entries are reached through `xen_shmem`
//!
//! Xen writes `GTF_reading`/`GTF_writing` into our entries at any time, so the frames are
//! shared memory and are never touched through `&`/`&mut` of plain integers. The platform hands
//! them over as a [`SharedMem`] and every access is a 4-byte atomic on one of its words
//! ([`xen_shmem::SharedU32`]: load, store, compare-exchange) — the access model the kernel
//! (Xen on another CPU) and `xensim` (another thread) both satisfy.
//!
//! # Ending access without reusing a mapped page (XSA-396)
//!
//! A grantee can map our page at any time while `GTF_permit_access` is set, and keeps it
//! mapped until *it* unmaps. Clearing the entry does not undo an existing mapping. So ending
//! access is a compare-exchange of the entry word from "not in use" to "no access": if Xen has
//! `GTF_reading` or `GTF_writing` set, the exchange is not attempted (or fails because Xen set
//! them in the meantime), and the page must **not** be reused: it may still be read or written
//! by the peer. [`GrantTable::revoke`] then parks the reference on a deferred list together
//! with the page's frame number and returns [`Revoke::Deferred`]; [`GrantTable::poll_deferred`]
//! (which the platform calls from a timer) retries, and only once the exchange succeeds does it
//! hand the frame back to the platform and the reference back to the allocator. Every deferral,
//! retry and completion is counted ([`GrantStats`]). FreeBSD's C `gnttab_end_foreign_access_ref`
//! callers instead leak the reference and reuse the page; Linux before XSA-396 did the same.
//!
//! The exchange loop is bounded ([`CAS_ATTEMPTS`]): a peer that makes Xen flip the flags in a
//! tight map/unmap loop could otherwise starve us; running out of attempts counts as "in use".
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use xen_kmod::{GrantTableOp, Hypervisor, MemoryOp, XenError};
use xen_shmem::{SharedMem, SharedU32};
use xen_sys::native as abi;

use crate::refalloc::{RefStack, NIL};
use crate::v1::{
    entry_word0, from_pfn, locate, split_word0, to_pfn, GntStatus, DOMID_SELF, ENTRIES_PER_FRAME,
    GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_WRITING, PAGE_SIZE, RESERVED_REFS,
};

/// How many times ending access retries a compare-exchange that lost a race with Xen before
/// treating the entry as in use.
pub const CAS_ATTEMPTS: u32 = 16;

/// How many times an allocation retries while another thread is growing the table.
const GROW_WAIT_SPINS: u32 = 1 << 16;

/// Where the grant table's frames live; provided by the platform.
pub trait TableFrames<'a> {
    /// Memory reserved for the table, 4096 bytes per frame; its length bounds the table.
    /// Frame `i` of Xen's table appears at offset `i * 4096` once set up.
    fn frames(&self) -> SharedMem<'a>;

    /// PVH/HVM: the guest frame number behind frame `idx` of [`TableFrames::frames`], at which
    /// `XENMEM_add_to_physmap` is to place frame `idx`. `None` selects the
    /// `GNTTABOP_setup_table` path and [`TableFrames::map_frames`].
    fn gfn(&self, idx: u32) -> Option<u64>;

    /// Setup-table path: make frames `first..first + xen_frames.len()` of the region show the frames
    /// `GNTTABOP_setup_table` returned (`xen_frames[i]` is frame `first + i`).
    ///
    /// # Errors
    /// The platform could not map them (the default: this path is unsupported).
    fn map_frames(&self, first: u32, xen_frames: &[u64]) -> Result<(), FrameMapError> {
        let _ = (first, xen_frames);
        Err(FrameMapError)
    }
}

/// The platform could not make a grant frame visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMapError;

/// Why a grant table operation failed. Nothing was changed when one is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantError {
    /// Every reference is in use and the table is at its maximum size.
    NoFreeRefs,
    /// The page's frame number does not fit the 32-bit `frame` field of a v1 entry.
    FrameTooLarge {
        /// The frame number asked for.
        gfn: u64,
    },
    /// The entry is still in use by the grantee (re-granting a live reference).
    InUse,
    /// A hypercall failed as a whole.
    Hypercall(XenError),
    /// A grant table hypercall returned this status.
    Status(GntStatus),
    /// The platform reserved no memory for frames, or could not map one.
    Frames,
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantError::NoFreeRefs => f.write_str("no free grant references"),
            GrantError::FrameTooLarge { gfn } => {
                write!(f, "frame {gfn:#x} does not fit a v1 grant entry")
            }
            GrantError::InUse => f.write_str("grant entry still in use"),
            GrantError::Hypercall(e) => write!(f, "grant hypercall failed: {e:?}"),
            GrantError::Status(s) => write!(f, "grant operation status {s:?}"),
            GrantError::Frames => f.write_str("grant table frames unavailable"),
        }
    }
}

/// A grant reference of our table, owned by whoever holds this value.
///
/// Not `Clone`: a reference is given back exactly once ([`GrantTable::revoke`]), so it cannot
/// be freed twice or used after it was freed. [`GrantRef::raw`] is the number to put on a ring
/// or in xenstore.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct GrantRef(u32);

impl GrantRef {
    /// The reference number, as the peer uses it.
    #[must_use]
    pub fn raw(&self) -> u32 {
        self.0
    }

    /// Takes ownership of reference `raw` allocated by a grant table this code cannot reach
    /// as a [`GrantTable`]: a FreeBSD driver module's grants live in xen.ko's table and come
    /// back through the xenrs API as numbers. The holder must give it back exactly once, to
    /// that table (which is what not being `Clone` keeps true from here on).
    #[must_use]
    pub fn from_foreign_table(raw: u32) -> GrantRef {
        GrantRef(raw)
    }
}

/// What became of a revoked reference.
#[must_use = "a deferred revoke means the page must not be reused yet"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoke {
    /// Access ended; the reference is free and the page may be reused at once.
    Done,
    /// The grantee still has the page mapped. The page must **not** be reused: the table keeps
    /// the reference, and [`GrantTable::poll_deferred`] hands the page's frame number back
    /// once the grantee has unmapped it.
    Deferred,
}

/// Result of one [`GrantTable::poll_deferred`] pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeferredPoll {
    /// Revocations that completed in this pass (their frames were released).
    pub completed: u32,
    /// Revocations still waiting for the grantee.
    pub pending: u32,
}

/// Counters, for sysctl and tests. A snapshot; each counter is individually exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantStats {
    /// Frames set up.
    pub frames: u32,
    /// Free references.
    pub free_refs: u32,
    /// Grants written.
    pub granted: u64,
    /// Revocations that completed immediately.
    pub revoked: u64,
    /// Revocations deferred because the page was still mapped (XSA-396 class).
    pub deferred: u64,
    /// Deferred revocations that later completed.
    pub deferred_completed: u64,
    /// Deferred revocations still waiting.
    pub deferred_pending: u64,
    /// Retries of deferred revocations that found the page still mapped.
    pub deferred_retries: u64,
    /// Attempts to grow the table that failed.
    pub grow_failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    granted: AtomicU64,
    revoked: AtomicU64,
    deferred: AtomicU64,
    deferred_completed: AtomicU64,
    deferred_pending: AtomicU64,
    deferred_retries: AtomicU64,
    grow_failures: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Our grant table (v1).
///
/// Every method takes `&self` and is safe to call concurrently from any context that may issue
/// hypercalls; nothing blocks and nothing allocates after [`GrantTable::new`].
///
/// # Invariants
/// * `nr_frames <= max_frames <= frames.len()`, and frames `0..nr_frames` are set up.
/// * A reference is in exactly one of: the free stack, a [`GrantRef`] held by a caller, the
///   deferred chain. Only references `RESERVED_REFS..nr_frames * 512` are ever in any of them.
/// * A reference on the free stack has an entry whose flags are zero (access ended).
pub struct GrantTable<'a, H: Hypervisor, F: TableFrames<'a>> {
    hv: H,
    src: F,
    frames: SharedMem<'a>,
    max_frames: u32,
    nr_frames: AtomicU32,
    growing: AtomicBool,
    free: RefStack,
    /// The frame number each reference last granted (our private copy: the entry itself is
    /// shared memory), reported to the platform when a deferred revocation completes.
    granted_gfn: Box<[AtomicU32]>,
    /// Head of the chain of deferred references, linked through the free stack's `next` slots
    /// (a deferred reference is not on the free stack, so its slot is unused).
    deferred: AtomicU32,
    counters: Counters,
}

impl<'a, H: Hypervisor, F: TableFrames<'a>> fmt::Debug for GrantTable<'a, H, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantTable")
            .field("max_frames", &self.max_frames)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<'a, H: Hypervisor, F: TableFrames<'a>> GrantTable<'a, H, F> {
    /// Sets up a table of at least `initial_frames` frames (at least one).
    ///
    /// Asks Xen for the table's maximum size (`GNTTABOP_query_size`); the table can grow to
    /// the smaller of that and the memory the platform reserved.
    ///
    /// # Errors
    /// [`GrantError::Hypercall`]/[`GrantError::Status`] if Xen refuses,
    /// [`GrantError::Frames`] if no frame memory was reserved or a frame could not be mapped.
    pub fn new(hv: H, src: F, initial_frames: u32) -> Result<Self, GrantError> {
        let frames = src.frames();
        let mut q = abi::gnttab_query_size {
            dom: DOMID_SELF,
            ..Default::default()
        };
        hv.grant_table_op(GrantTableOp::QuerySize(&mut q))
            .map_err(GrantError::Hypercall)?;
        let status = GntStatus::from_raw(q.status);
        if !status.is_ok() {
            return Err(GrantError::Status(status));
        }
        let reserved = u32::try_from(frames.len() / PAGE_SIZE).unwrap_or(u32::MAX);
        // Cap so that the reference count fits in u32 (and is never NIL).
        let max_frames = q
            .max_nr_frames
            .min(reserved)
            .min(u32::MAX / ENTRIES_PER_FRAME - 1);
        if max_frames == 0 {
            return Err(GrantError::Frames);
        }
        let capacity = max_frames * ENTRIES_PER_FRAME;
        let granted_gfn: Vec<AtomicU32> = (0..capacity).map(|_| AtomicU32::new(0)).collect();
        let table = GrantTable {
            hv,
            src,
            frames,
            max_frames,
            nr_frames: AtomicU32::new(0),
            growing: AtomicBool::new(false),
            free: RefStack::new(capacity),
            granted_gfn: granted_gfn.into_boxed_slice(),
            deferred: AtomicU32::new(NIL),
            counters: Counters::default(),
        };
        let want = initial_frames.clamp(1, max_frames);
        while table.nr_frames.load(Ordering::Acquire) < want {
            table.grow()?;
        }
        Ok(table)
    }

    /// The hypervisor handle the table uses.
    pub fn hypervisor(&self) -> &H {
        &self.hv
    }

    /// Frames currently set up.
    #[must_use]
    pub fn nr_frames(&self) -> u32 {
        self.nr_frames.load(Ordering::Acquire)
    }

    /// The most frames this table can grow to.
    #[must_use]
    pub fn max_frames(&self) -> u32 {
        self.max_frames
    }

    /// Adds one frame (512 references) to the table.
    ///
    /// # Errors
    /// [`GrantError::NoFreeRefs`] at the maximum size, [`GrantError::InUse`] if another thread
    /// is growing the table right now, or the hypercall/mapping error.
    pub fn grow(&self) -> Result<(), GrantError> {
        if self.growing.swap(true, Ordering::Acquire) {
            return Err(GrantError::InUse);
        }
        let result = self.grow_locked();
        self.growing.store(false, Ordering::Release);
        if result.is_err() {
            bump(&self.counters.grow_failures);
        }
        result
    }

    fn grow_locked(&self) -> Result<(), GrantError> {
        let n = self.nr_frames.load(Ordering::Acquire);
        if n >= self.max_frames {
            return Err(GrantError::NoFreeRefs);
        }
        match self.src.gfn(n) {
            Some(gfn) => {
                let mut xatp = abi::xen_add_to_physmap {
                    domid: DOMID_SELF,
                    // CAST: XENMAPSPACE_grant_table is 1.
                    space: abi::XENMAPSPACE_grant_table as _,
                    idx: n.into(),
                    gpfn: to_pfn(gfn).ok_or(GrantError::FrameTooLarge { gfn })?,
                    ..Default::default()
                };
                self.hv
                    .memory_op(MemoryOp::AddToPhysmap(&mut xatp))
                    .map_err(GrantError::Hypercall)?;
            }
            None => {
                let count = n + 1;
                let mut list: Vec<abi::xen_pfn_t> = vec![0; count as usize];
                let mut args = abi::gnttab_setup_table {
                    dom: DOMID_SELF,
                    __bindgen_padding_0: Default::default(),
                    nr_frames: count,
                    status: GntStatus::GeneralError.to_raw(),
                    __bindgen_padding_1: Default::default(),
                    frame_list: Default::default(),
                };
                self.hv
                    .grant_table_op(GrantTableOp::SetupTable {
                        args: &mut args,
                        frames: &mut list,
                    })
                    .map_err(GrantError::Hypercall)?;
                let status = GntStatus::from_raw(args.status);
                if !status.is_ok() {
                    return Err(GrantError::Status(status));
                }
                let new: Vec<u64> = list[n as usize..].iter().map(|&f| from_pfn(f)).collect();
                self.src
                    .map_frames(n, &new)
                    .map_err(|FrameMapError| GrantError::Frames)?;
            }
        }
        // Release: a thread that sees the new count (Acquire) also sees the frame mapped.
        self.nr_frames.store(n + 1, Ordering::Release);
        let first = (n * ENTRIES_PER_FRAME).max(RESERVED_REFS);
        self.free.push_range(first, (n + 1) * ENTRIES_PER_FRAME);
        Ok(())
    }

    /// Takes a free reference without growing the table.
    #[must_use]
    pub fn try_alloc(&self) -> Option<GrantRef> {
        self.free.pop().map(GrantRef)
    }

    /// Takes a free reference, growing the table if needed. O(1) except when a frame is added.
    ///
    /// # Errors
    /// [`GrantError::NoFreeRefs`] when the table is full at its maximum size; a growth error.
    pub fn alloc(&self) -> Result<GrantRef, GrantError> {
        for _ in 0..GROW_WAIT_SPINS {
            if let Some(r) = self.try_alloc() {
                return Ok(r);
            }
            match self.grow() {
                Ok(()) => {}
                // Another thread is adding a frame: its references will appear shortly.
                Err(GrantError::InUse) => core::hint::spin_loop(),
                Err(e) => return Err(e),
            }
        }
        Err(GrantError::NoFreeRefs)
    }

    fn entry_words(&self, r: u32) -> Option<(SharedU32<'a>, SharedU32<'a>)> {
        if r >= self
            .nr_frames
            .load(Ordering::Acquire)
            .saturating_mul(ENTRIES_PER_FRAME)
        {
            return None;
        }
        let (frame, word) = locate(r);
        let off = frame.checked_mul(PAGE_SIZE)?.checked_add(word * 4)?;
        Some((
            self.frames.u32_at(off).ok()?,
            self.frames.u32_at(off + 4).ok()?,
        ))
    }

    /// Allows `domid` to map or copy the page `gfn`, read-only if `readonly`.
    ///
    /// # Errors
    /// [`GrantError::FrameTooLarge`] if `gfn` does not fit a v1 entry; [`GrantError::NoFreeRefs`]
    /// or a growth error if no reference is available.
    pub fn grant(&self, domid: u16, gfn: u64, readonly: bool) -> Result<GrantRef, GrantError> {
        let frame = u32::try_from(gfn).map_err(|_| GrantError::FrameTooLarge { gfn })?;
        let r = self.alloc()?;
        // A reference from the free stack has flags == 0, so `regrant` cannot fail with InUse;
        // should it fail anyway, the reference goes back through the safe revoke path.
        match self.write_entry(&r, domid, frame, readonly) {
            Ok(()) => Ok(r),
            Err(e) => {
                let _ = self.revoke(r);
                Err(e)
            }
        }
    }

    /// Grants a reference we already own again (after [`GrantTable::end_access`] succeeded),
    /// e.g. a ring slot's reference reused for the next request.
    ///
    /// # Errors
    /// [`GrantError::InUse`] if the entry still grants access (end it first);
    /// [`GrantError::FrameTooLarge`].
    pub fn regrant(
        &self,
        r: &GrantRef,
        domid: u16,
        gfn: u64,
        readonly: bool,
    ) -> Result<(), GrantError> {
        let frame = u32::try_from(gfn).map_err(|_| GrantError::FrameTooLarge { gfn })?;
        self.write_entry(r, domid, frame, readonly)
    }

    fn write_entry(
        &self,
        r: &GrantRef,
        domid: u16,
        frame: u32,
        readonly: bool,
    ) -> Result<(), GrantError> {
        let (w0, w1) = self.entry_words(r.0).ok_or(GrantError::NoFreeRefs)?;
        let old = w0.load(Ordering::Acquire);
        let (flags, _) = split_word0(old);
        if flags != 0 {
            return Err(GrantError::InUse);
        }
        if let Some(g) = self.granted_gfn.get(r.0 as usize) {
            g.store(frame, Ordering::Relaxed);
        }
        w1.store(frame, Ordering::Relaxed);
        let mut flags = GTF_PERMIT_ACCESS;
        if readonly {
            flags |= GTF_READONLY;
        }
        // <-- release: `frame` (and domid, same word) are visible to Xen before the flags that
        // make the entry valid. A compare-exchange rather than a store: an entry that is not
        // ours to rewrite (flags changed since we looked) is left alone.
        w0.compare_exchange(
            old,
            entry_word0(flags, domid),
            Ordering::Release,
            Ordering::Relaxed,
        )
        .map_err(|_| GrantError::InUse)?;
        bump(&self.counters.granted);
        Ok(())
    }

    /// Whether the grantee currently has the page mapped (or is copying from/to it).
    #[must_use]
    pub fn in_use(&self, r: &GrantRef) -> bool {
        self.entry_words(r.0).is_some_and(|(w0, _)| {
            let (flags, _) = split_word0(w0.load(Ordering::Acquire));
            flags & (GTF_READING | GTF_WRITING) != 0
        })
    }

    /// Ends foreign access to `r` if the grantee does not have it mapped; the reference stays
    /// ours (to [`GrantTable::regrant`] or [`GrantTable::revoke`]).
    ///
    /// # Errors
    /// [`StillInUse`] if Xen has `GTF_reading`/`GTF_writing` set: the grant is left as it was
    /// and the page must not be reused.
    pub fn end_access(&self, r: &GrantRef) -> Result<(), StillInUse> {
        self.end_access_raw(r.0)
    }

    fn end_access_raw(&self, r: u32) -> Result<(), StillInUse> {
        // A reference outside the set-up frames has no entry to clear: it never granted
        // anything Xen could see.
        let Some((w0, _)) = self.entry_words(r) else {
            return Ok(());
        };
        let mut cur = w0.load(Ordering::Acquire);
        for _ in 0..CAS_ATTEMPTS {
            let (flags, domid) = split_word0(cur);
            if flags & (GTF_READING | GTF_WRITING) != 0 {
                return Err(StillInUse);
            }
            // Acquire on success: our later reuse of the page happens after Xen's clearing of
            // GTF_writing (its unmap), so no write of the peer can land after we reuse it.
            match w0.compare_exchange(
                cur,
                entry_word0(0, domid),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
        Err(StillInUse)
    }

    /// Ends access to `r` and gives the reference back.
    ///
    /// [`Revoke::Done`]: the page may be reused now. [`Revoke::Deferred`]: the grantee still
    /// has it mapped; the page must stay untouched until [`GrantTable::poll_deferred`] reports
    /// its frame as released. Never lets a mapped page be reused early (XSA-396).
    pub fn revoke(&self, r: GrantRef) -> Revoke {
        match self.end_access_raw(r.0) {
            Ok(()) => {
                bump(&self.counters.revoked);
                self.free.push(r.0);
                Revoke::Done
            }
            Err(StillInUse) => {
                bump(&self.counters.deferred);
                bump(&self.counters.deferred_pending);
                self.push_deferred(r.0);
                Revoke::Deferred
            }
        }
    }

    fn push_deferred(&self, r: u32) {
        let Some(slot) = self.free.slot(r) else {
            return;
        };
        let mut head = self.deferred.load(Ordering::Relaxed);
        loop {
            slot.store(head, Ordering::Relaxed);
            // Release: the link is visible to whoever takes the chain (Acquire swap). No ABA
            // hazard: a push is correct whenever `head` is the current top, whatever happened
            // in between, and the chain is only ever taken whole.
            match self
                .deferred
                .compare_exchange_weak(head, r, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }

    /// Retries every deferred revocation once. For each that completes, `release(gfn)` is
    /// called with the frame number the reference had granted (the platform may now reuse or
    /// free that page) and the reference returns to the allocator.
    ///
    /// Call it from a timer (FreeBSD: a callout every few hundred milliseconds while
    /// [`GrantStats::deferred_pending`] is non-zero). Concurrent calls are fine: each takes a
    /// disjoint part of the list.
    pub fn poll_deferred(&self, mut release: impl FnMut(u32)) -> DeferredPoll {
        let mut r = self.deferred.swap(NIL, Ordering::Acquire);
        let mut poll = DeferredPoll::default();
        let mut keep: Option<(u32, u32)> = None; // (first, last) of the still-pending chain
        while r != NIL {
            let Some(slot) = self.free.slot(r) else { break };
            let next = slot.load(Ordering::Relaxed);
            match self.end_access_raw(r) {
                Ok(()) => {
                    let gfn = self
                        .granted_gfn
                        .get(r as usize)
                        .map_or(0, |g| g.load(Ordering::Relaxed));
                    release(gfn);
                    self.free.push(r);
                    self.counters
                        .deferred_pending
                        .fetch_sub(1, Ordering::Relaxed);
                    bump(&self.counters.deferred_completed);
                    poll.completed += 1;
                }
                Err(StillInUse) => {
                    bump(&self.counters.deferred_retries);
                    poll.pending += 1;
                    // Relink r in front of what we kept.
                    match keep {
                        None => {
                            slot.store(NIL, Ordering::Relaxed);
                            keep = Some((r, r));
                        }
                        Some((first, last)) => {
                            slot.store(first, Ordering::Relaxed);
                            keep = Some((r, last));
                        }
                    }
                }
            }
            r = next;
        }
        if let Some((first, last)) = keep {
            if let Some(last_slot) = self.free.slot(last) {
                let mut head = self.deferred.load(Ordering::Relaxed);
                loop {
                    last_slot.store(head, Ordering::Relaxed);
                    match self.deferred.compare_exchange_weak(
                        head,
                        first,
                        Ordering::Release,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => break,
                        Err(actual) => head = actual,
                    }
                }
            }
        }
        poll
    }

    /// A snapshot of the counters.
    #[must_use]
    pub fn stats(&self) -> GrantStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GrantStats {
            frames: self.nr_frames(),
            free_refs: self.free.free_count(),
            granted: l(&c.granted),
            revoked: l(&c.revoked),
            deferred: l(&c.deferred),
            deferred_completed: l(&c.deferred_completed),
            deferred_pending: l(&c.deferred_pending),
            deferred_retries: l(&c.deferred_retries),
            grow_failures: l(&c.grow_failures),
        }
    }
}

/// The grantee still has the page mapped: access was not ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StillInUse;
