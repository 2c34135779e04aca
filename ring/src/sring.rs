//! The request/response ring of `io/ring.h`.
//!
//! # Layout
//!
//! ```text
//! offset 0   req_prod   u32   written by the frontend
//!        4   req_event  u32   written by the backend ("notify me when req_prod passes this")
//!        8   rsp_prod   u32   written by the backend
//!       12   rsp_event  u32   written by the frontend
//!       16   pvt / padding up to 64
//!       64   entries: size × union { request, response }
//! ```
//!
//! `size` is the largest power of two not exceeding `(region_len - 64) / entry_size`
//! ([`ring_entries`]); the region is one page or several contiguous pages. Both ends must map
//! the same number of pages so that they agree on `size`.
//!
//! # Driving a ring
//!
//! Front end (e.g. blkfront):
//! ```
//! # use xen_shmem::{Page, SharedMem};
//! # use xen_ring::{FrontRing, BackRing};
//! # let page = Page::new();
//! # let mem = SharedMem::from_pages(core::slice::from_ref(&page));
//! let mut front = FrontRing::<u64, u64>::init(mem)?;
//! # let mut back = BackRing::<u64, u64>::attach(mem)?;
//! front.push_request(&42).map_err(|_| "full")?;
//! if front.push_requests_and_check_notify()?.is_required() {
//!     // notify the backend's event channel
//! }
//! # assert_eq!(back.pop_request()?, Some(42));
//! # back.push_response(&43).map_err(|_| "no slot")?;
//! # let _ = back.push_responses_and_check_notify()?;
//! // ... on an event:
//! loop {
//!     while let Some(rsp) = front.pop_response()? {
//!         // validate `rsp` (id, status) against our own state, then complete it
//! #       assert_eq!(rsp, 43);
//!     }
//!     if !front.final_check_for_responses()? {
//!         break; // sleep until the next event
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A back end mirrors this with [`BackRing::pop_request`] or [`BackRing::consume_requests`]
//! (bounded by a budget), [`BackRing::push_response`],
//! [`BackRing::push_responses_and_check_notify`] and [`BackRing::final_check_for_requests`].

use core::marker::PhantomData;
use core::mem::{align_of, size_of};

use xen_shmem::{full_fence, Pod, SharedMem, SharedU32};

use crate::{Fault, Notify, PushError, SetupError};

/// Size of a Xen page; ring protocols always use 4 KiB pages.
pub const XEN_PAGE_SIZE: usize = 4096;
/// Size of the shared header before the entries array.
pub const HEADER_SIZE: usize = 64;
/// Offset of `req_prod` in the shared header.
pub const REQ_PROD: usize = 0;
/// Offset of `req_event` in the shared header.
pub const REQ_EVENT: usize = 4;
/// Offset of `rsp_prod` in the shared header.
pub const RSP_PROD: usize = 8;
/// Offset of `rsp_event` in the shared header.
pub const RSP_EVENT: usize = 12;
/// Largest supported number of entries (indices are compared with wrapping `u32` arithmetic,
/// which needs the ring to be at most half the index space).
pub const MAX_ENTRIES: u32 = 1 << 31;

/// Size of one entry: the C `union { Req req; Rsp rsp; }` (largest size, rounded up to the
/// largest alignment). `Req` and `Rsp` must be the `repr(C)` mirrors of the C structs.
#[must_use]
pub const fn entry_size<Req, Rsp>() -> usize {
    let size = if size_of::<Req>() > size_of::<Rsp>() {
        size_of::<Req>()
    } else {
        size_of::<Rsp>()
    };
    let align = if align_of::<Req>() > align_of::<Rsp>() {
        align_of::<Req>()
    } else {
        align_of::<Rsp>()
    };
    size.div_ceil(align) * align
}

/// Number of entries of a ring occupying `region_len` bytes with `entry_size`-byte entries:
/// the largest power of two that fits after the 64-byte header (ring.h `__CONST_RING_SIZE`).
/// Zero if not even one entry fits.
#[must_use]
pub const fn ring_entries(region_len: usize, entry_size: usize) -> u32 {
    if entry_size == 0 || region_len < HEADER_SIZE {
        return 0;
    }
    let n = (region_len - HEADER_SIZE) / entry_size;
    if n == 0 {
        return 0;
    }
    let log = n.ilog2();
    if log >= MAX_ENTRIES.ilog2() {
        MAX_ENTRIES
    } else {
        1 << log
    }
}

/// Number of entries of a `pages`-page ring of `Req`/`Rsp`.
#[must_use]
pub const fn ring_entries_for<Req, Rsp>(pages: usize) -> u32 {
    ring_entries(
        pages.saturating_mul(XEN_PAGE_SIZE),
        entry_size::<Req, Rsp>(),
    )
}

/// The shared part of a ring, with its geometry checked.
///
/// # Invariants
/// `size` is a power of two with `HEADER_SIZE + size * entry_size <= mem.len()`, and `slots`
/// is exactly the entries array, so every slot access is in bounds.
#[derive(Debug, Clone, Copy)]
struct Shared<'a> {
    mem: SharedMem<'a>,
    req_prod: SharedU32<'a>,
    req_event: SharedU32<'a>,
    rsp_prod: SharedU32<'a>,
    rsp_event: SharedU32<'a>,
    slots: SharedMem<'a>,
    size: u32,
    entry_size: usize,
}

impl<'a> Shared<'a> {
    fn map<Req, Rsp>(mem: SharedMem<'a>) -> Result<Self, SetupError> {
        let entry_size = entry_size::<Req, Rsp>();
        let size = ring_entries(mem.len(), entry_size);
        if size == 0 {
            return Err(SetupError::TooSmall {
                len: mem.len(),
                entry_size,
            });
        }
        // CAST: u32 -> usize is lossless on every supported target (>= 32-bit).
        let slots_len = size as usize * entry_size;
        // INVARIANT: `ring_entries` guarantees HEADER_SIZE + size * entry_size <= mem.len();
        // `subrange` re-checks it.
        Ok(Shared {
            mem,
            req_prod: mem.u32_at(REQ_PROD)?,
            req_event: mem.u32_at(REQ_EVENT)?,
            rsp_prod: mem.u32_at(RSP_PROD)?,
            rsp_event: mem.u32_at(RSP_EVENT)?,
            slots: mem.subrange(HEADER_SIZE, slots_len)?,
            size,
            entry_size,
        })
    }

    fn offset(&self, idx: u32) -> usize {
        // CAST: u32 -> usize is lossless; the product is < slots.len() by the type invariant.
        (idx & (self.size - 1)) as usize * self.entry_size
    }

    /// Copies the entry at ring index `idx` out (once).
    fn read_slot<T: Pod>(&self, idx: u32) -> Result<T, Fault> {
        Ok(self.slots.read::<T>(self.offset(idx))?)
    }

    /// Writes the whole entry at ring index `idx`: `value`, then zeroes to the entry size.
    fn write_slot<T: Pod>(&self, idx: u32, value: &T) -> Result<(), Fault> {
        let off = self.offset(idx);
        self.slots.write(off, value)?;
        let tail = self.entry_size - size_of::<T>();
        if tail > 0 {
            self.slots.zero(off + size_of::<T>(), tail)?;
        }
        Ok(())
    }

    /// `new - event < new - old` in wrapping arithmetic: did the peer's event index fall in
    /// `(old, new]`, i.e. did it ask to be woken for one of the entries just published?
    fn notify_needed(old: u32, new: u32, event: u32) -> bool {
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }
}

/// The front end of a ring: produces requests, consumes responses.
///
/// # Invariants
/// * `rsp_cons <= rsp_prod_seen <= req_prod <= req_prod_pvt` in the wrapping order starting
///   at `rsp_cons`, and `req_prod_pvt - rsp_cons <= size`;
/// * once `fault` is `Some`, it never changes.
#[derive(Debug)]
pub struct FrontRing<'a, Req: Pod, Rsp: Pod> {
    sh: Shared<'a>,
    /// Next request slot to fill (private).
    req_prod_pvt: u32,
    /// The `req_prod` we last published (never read back from shared memory).
    req_prod: u32,
    /// Next response to consume (private).
    rsp_cons: u32,
    /// The backend's `rsp_prod` at the last successful check.
    rsp_prod_seen: u32,
    fault: Option<Fault>,
    _types: PhantomData<fn(Req) -> Rsp>,
}

impl<'a, Req: Pod, Rsp: Pod> FrontRing<'a, Req, Rsp> {
    /// Initialises a fresh shared ring over `mem` and attaches to it: zeroes the whole region
    /// (no stale data is shared; XSA-403), then sets `req_prod = rsp_prod = 0`,
    /// `req_event = rsp_event = 1` (`XEN_FRONT_RING_INIT`).
    ///
    /// Only the frontend, which owns the ring, may do this.
    ///
    /// # Errors
    /// [`SetupError::TooSmall`] if not even one entry fits.
    pub fn init(mem: SharedMem<'a>) -> Result<Self, SetupError> {
        Self::init_at(mem, 0)
    }

    /// As [`init`](Self::init), with all indices starting at `start` (the events at
    /// `start + 1`). Useful to exercise index wrap-around.
    ///
    /// # Errors
    /// As [`init`](Self::init).
    pub fn init_at(mem: SharedMem<'a>, start: u32) -> Result<Self, SetupError> {
        let sh = Shared::map::<Req, Rsp>(mem)?;
        sh.mem.zero_all();
        sh.req_prod.store_relaxed(start);
        sh.rsp_prod.store_relaxed(start);
        sh.req_event.store_relaxed(start.wrapping_add(1));
        // Release: whoever attaches after seeing this header also sees the zeroed slots.
        sh.rsp_event.store_release(start.wrapping_add(1));
        Ok(Self::with_indices(sh, start))
    }

    /// Attaches to an already initialised ring without writing to it (`FRONT_RING_ATTACH`),
    /// with private indices at `start`: the `req_prod` the frontend last published, with no
    /// requests outstanding.
    ///
    /// # Errors
    /// [`SetupError::TooSmall`] if not even one entry fits.
    pub fn attach_at(mem: SharedMem<'a>, start: u32) -> Result<Self, SetupError> {
        Ok(Self::with_indices(Shared::map::<Req, Rsp>(mem)?, start))
    }

    fn with_indices(sh: Shared<'a>, start: u32) -> Self {
        // INVARIANT: all indices equal; nothing outstanding.
        FrontRing {
            sh,
            req_prod_pvt: start,
            req_prod: start,
            rsp_cons: start,
            rsp_prod_seen: start,
            fault: None,
            _types: PhantomData,
        }
    }

    /// Number of entries (`RING_SIZE`).
    #[must_use]
    pub fn size(&self) -> u32 {
        self.sh.size
    }

    /// The sticky fault, if the ring has failed.
    #[must_use]
    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }

    /// Free request slots (`RING_FREE_REQUESTS`).
    #[must_use]
    pub fn free_requests(&self) -> u32 {
        self.sh.size - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Whether every slot holds an unanswered request (`RING_FULL`).
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Requests produced (published or not) and not yet answered.
    #[must_use]
    pub fn outstanding(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Requests queued with [`push_request`](Self::push_request) but not yet published.
    #[must_use]
    pub fn unpublished(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.req_prod)
    }

    /// The private producer index (`req_prod_pvt`).
    #[must_use]
    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }

    /// The private consumer index (`rsp_cons`).
    #[must_use]
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }

    fn check_ok(&self) -> Result<(), Fault> {
        match self.fault {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    fn fail(&mut self, f: Fault) -> Fault {
        // INVARIANT: only the first fault is recorded.
        *self.fault.get_or_insert(f)
    }

    /// Writes `req` into the next free slot (whole slot, zero-padded). Not visible to the
    /// backend until published with [`push_requests_and_check_notify`]
    /// (Self::push_requests_and_check_notify); batch several pushes per publish.
    ///
    /// # Errors
    /// [`PushError::Full`] if no slot is free; [`PushError::Fault`] if the ring has failed.
    pub fn push_request(&mut self, req: &Req) -> Result<(), PushError> {
        self.check_ok()?;
        if self.is_full() {
            return Err(PushError::Full);
        }
        if let Err(f) = self.sh.write_slot(self.req_prod_pvt, req) {
            return Err(self.fail(f).into());
        }
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes queued requests without checking whether the backend wants an event
    /// (`RING_PUSH_REQUESTS`).
    ///
    /// # Errors
    /// The sticky [`Fault`], if any.
    pub fn push_requests(&mut self) -> Result<(), Fault> {
        self.check_ok()?;
        // Release (xen_wmb): the backend sees the request bodies before the new req_prod.
        self.sh.req_prod.store_release(self.req_prod_pvt);
        self.req_prod = self.req_prod_pvt;
        Ok(())
    }

    /// Publishes queued requests and reports whether the backend asked to be notified
    /// (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    ///
    /// # Errors
    /// The sticky [`Fault`], if any.
    pub fn push_requests_and_check_notify(&mut self) -> Result<Notify, Fault> {
        self.check_ok()?;
        // `old` is our private record, not a re-read of the (peer-writable) shared req_prod.
        let old = self.req_prod;
        let new = self.req_prod_pvt;
        // Release (xen_wmb): the backend sees the request bodies before the new req_prod.
        self.sh.req_prod.store_release(new);
        self.req_prod = new;
        // xen_mb: our req_prod store is ordered before the req_event load. Pairs with the
        // backend's fence between storing req_event and re-reading req_prod in
        // final_check_for_requests: at least one of us sees the other's store.
        full_fence();
        let event = self.sh.req_event.load_relaxed();
        Ok(Notify(Shared::notify_needed(old, new, event)))
    }

    /// Loads the backend's `rsp_prod` once, validates it, and returns how many responses are
    /// ready to be consumed.
    ///
    /// # Errors
    /// [`Fault::ResponseOverflow`] or [`Fault::ResponseProdRegressed`] (sticky).
    pub fn unconsumed_responses(&mut self) -> Result<u32, Fault> {
        self.check_ok()?;
        // Acquire (xen_rmb): response bodies written before the backend's Release store of
        // rsp_prod are visible to our slot copies.
        let rsp_prod = self.sh.rsp_prod.load_acquire();
        let ready = rsp_prod.wrapping_sub(self.rsp_cons);
        // The backend can only answer requests we have published.
        let outstanding = self.req_prod.wrapping_sub(self.rsp_cons);
        if ready > outstanding {
            return Err(self.fail(Fault::ResponseOverflow {
                rsp_prod,
                rsp_cons: self.rsp_cons,
                req_prod: self.req_prod,
            }));
        }
        if ready < self.rsp_prod_seen.wrapping_sub(self.rsp_cons) {
            return Err(self.fail(Fault::ResponseProdRegressed {
                rsp_prod,
                last: self.rsp_prod_seen,
            }));
        }
        // INVARIANT: rsp_cons <= rsp_prod_seen <= req_prod (checked just above).
        self.rsp_prod_seen = rsp_prod;
        Ok(ready)
    }

    /// Copies out the next response, if any. Uses the `rsp_prod` validated at the last check
    /// and loads it again (once) only when those responses are used up.
    ///
    /// # Errors
    /// As [`unconsumed_responses`](Self::unconsumed_responses).
    pub fn pop_response(&mut self) -> Result<Option<Rsp>, Fault> {
        self.check_ok()?;
        if self.rsp_cons == self.rsp_prod_seen && self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let rsp = match self.sh.read_slot::<Rsp>(self.rsp_cons) {
            Ok(r) => r,
            Err(f) => return Err(self.fail(f)),
        };
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// Consumes up to `budget` responses after a single index check, passing each copy to `f`.
    /// Returns how many were consumed.
    ///
    /// # Errors
    /// As [`unconsumed_responses`](Self::unconsumed_responses).
    pub fn consume_responses(&mut self, budget: u32, mut f: impl FnMut(Rsp)) -> Result<u32, Fault> {
        let n = self.unconsumed_responses()?.min(budget);
        for _ in 0..n {
            let rsp = match self.sh.read_slot::<Rsp>(self.rsp_cons) {
                Ok(r) => r,
                Err(e) => return Err(self.fail(e)),
            };
            self.rsp_cons = self.rsp_cons.wrapping_add(1);
            f(rsp);
        }
        Ok(n)
    }

    /// Before going idle: if no responses are pending, asks the backend for an event on the
    /// next one (`rsp_event = rsp_cons + 1`) and checks again
    /// (`RING_FINAL_CHECK_FOR_RESPONSES`). Returns whether responses are pending; if `false`,
    /// the next response is guaranteed to come with an event.
    ///
    /// # Errors
    /// As [`unconsumed_responses`](Self::unconsumed_responses).
    pub fn final_check_for_responses(&mut self) -> Result<bool, Fault> {
        if self.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        self.sh
            .rsp_event
            .store_relaxed(self.rsp_cons.wrapping_add(1));
        // xen_mb: the rsp_event store is ordered before re-reading rsp_prod. Pairs with the
        // backend's fence in push_responses_and_check_notify.
        full_fence();
        Ok(self.unconsumed_responses()? > 0)
    }
}

/// The back end of a ring: consumes requests, produces responses. Never initialises the
/// shared header (the frontend owns it).
///
/// # Invariants
/// * `rsp_prod <= rsp_prod_pvt <= req_cons <= req_prod_seen` in the wrapping order starting at
///   `rsp_prod`, and `req_prod_seen - rsp_prod_pvt <= size`;
/// * once `fault` is `Some`, it never changes.
#[derive(Debug)]
pub struct BackRing<'a, Req: Pod, Rsp: Pod> {
    sh: Shared<'a>,
    /// Next request to consume (private).
    req_cons: u32,
    /// The frontend's `req_prod` at the last successful check.
    req_prod_seen: u32,
    /// Next response slot to fill (private).
    rsp_prod_pvt: u32,
    /// The `rsp_prod` we last published (never read back from shared memory).
    rsp_prod: u32,
    fault: Option<Fault>,
    _types: PhantomData<fn(Req) -> Rsp>,
}

impl<'a, Req: Pod, Rsp: Pod> BackRing<'a, Req, Rsp> {
    /// Attaches to a ring the frontend initialised, continuing from the shared `rsp_prod`
    /// (0 on a fresh ring, like `BACK_RING_INIT`; the current value on reconnection, like
    /// Linux's `BACK_RING_ATTACH(.., rsp_prod, ..)`). Writes nothing to the ring.
    ///
    /// # Errors
    /// [`SetupError::TooSmall`]; [`SetupError::Fault`] if `req_prod - rsp_prod > size`.
    pub fn attach(mem: SharedMem<'a>) -> Result<Self, SetupError> {
        let sh = Shared::map::<Req, Rsp>(mem)?;
        // Read once; from here on our copy is authoritative.
        let start = sh.rsp_prod.load_relaxed();
        let mut ring = Self::with_indices(sh, start);
        ring.unconsumed_requests()?;
        Ok(ring)
    }

    /// Attaches with private indices at `start` (`BACK_RING_ATTACH`), reading nothing.
    ///
    /// # Errors
    /// [`SetupError::TooSmall`] if not even one entry fits.
    pub fn attach_at(mem: SharedMem<'a>, start: u32) -> Result<Self, SetupError> {
        Ok(Self::with_indices(Shared::map::<Req, Rsp>(mem)?, start))
    }

    fn with_indices(sh: Shared<'a>, start: u32) -> Self {
        // INVARIANT: all indices equal; nothing consumed or answered.
        BackRing {
            sh,
            req_cons: start,
            req_prod_seen: start,
            rsp_prod_pvt: start,
            rsp_prod: start,
            fault: None,
            _types: PhantomData,
        }
    }

    /// Number of entries (`RING_SIZE`).
    #[must_use]
    pub fn size(&self) -> u32 {
        self.sh.size
    }

    /// The sticky fault, if the ring has failed.
    #[must_use]
    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }

    /// Requests consumed and not yet answered (each needs one response).
    #[must_use]
    pub fn unanswered(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Responses queued with [`push_response`](Self::push_response) but not yet published.
    #[must_use]
    pub fn unpublished(&self) -> u32 {
        self.rsp_prod_pvt.wrapping_sub(self.rsp_prod)
    }

    /// The private consumer index (`req_cons`).
    #[must_use]
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    /// The private producer index (`rsp_prod_pvt`).
    #[must_use]
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    fn check_ok(&self) -> Result<(), Fault> {
        match self.fault {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    fn fail(&mut self, f: Fault) -> Fault {
        // INVARIANT: only the first fault is recorded.
        *self.fault.get_or_insert(f)
    }

    /// Loads the frontend's `req_prod` once, validates it, and returns how many requests can
    /// be consumed now.
    ///
    /// # Errors
    /// [`Fault::RequestOverflow`] (`RING_REQUEST_PROD_OVERFLOW`, or `req_prod` behind
    /// `req_cons`) or [`Fault::RequestProdRegressed`] (sticky).
    pub fn unconsumed_requests(&mut self) -> Result<u32, Fault> {
        self.check_ok()?;
        // Acquire (xen_rmb): request bodies written before the frontend's Release store of
        // req_prod are visible to our slot copies.
        let req_prod = self.sh.req_prod.load_acquire();
        let ready = req_prod.wrapping_sub(self.req_cons);
        // Slots not holding a consumed-but-unanswered request. A correct frontend never has
        // more than `size` requests outstanding, so it cannot produce more than this.
        let room = self.sh.size - self.unanswered();
        if ready > room {
            return Err(self.fail(Fault::RequestOverflow {
                req_prod,
                req_cons: self.req_cons,
                rsp_prod_pvt: self.rsp_prod_pvt,
                size: self.sh.size,
            }));
        }
        if ready < self.req_prod_seen.wrapping_sub(self.req_cons) {
            return Err(self.fail(Fault::RequestProdRegressed {
                req_prod,
                last: self.req_prod_seen,
            }));
        }
        // INVARIANT: req_cons <= req_prod_seen and req_prod_seen - rsp_prod_pvt <= size.
        self.req_prod_seen = req_prod;
        Ok(ready)
    }

    fn take_request(&mut self) -> Result<Req, Fault> {
        let req = match self.sh.read_slot::<Req>(self.req_cons) {
            Ok(r) => r,
            Err(f) => return Err(self.fail(f)),
        };
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(req)
    }

    /// Copies out the next request, if any. Uses the `req_prod` validated at the last check
    /// and loads it again (once) only when those requests are used up. The caller bounds its
    /// own loop; at most `size` requests can be taken without answering.
    ///
    /// # Errors
    /// As [`unconsumed_requests`](Self::unconsumed_requests).
    pub fn pop_request(&mut self) -> Result<Option<Req>, Fault> {
        self.check_ok()?;
        if self.req_cons == self.req_prod_seen && self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        self.take_request().map(Some)
    }

    /// Consumes up to `budget` requests after a single index check, passing each copy to `f`.
    /// Returns how many were consumed; call again (or `final_check_for_requests`) for more.
    /// The budget keeps a busy frontend from monopolising the backend.
    ///
    /// # Errors
    /// As [`unconsumed_requests`](Self::unconsumed_requests).
    pub fn consume_requests(&mut self, budget: u32, mut f: impl FnMut(Req)) -> Result<u32, Fault> {
        let n = self.unconsumed_requests()?.min(budget);
        for _ in 0..n {
            f(self.take_request()?);
        }
        Ok(n)
    }

    /// Writes `rsp` into the next response slot as a whole slot (the value, then zeroes to the
    /// entry size; no stale bytes reach the frontend). Not visible until published.
    ///
    /// # Errors
    /// [`PushError::Full`] if every consumed request is already answered (a response needs
    /// the slot its request came from); [`PushError::Fault`] if the ring has failed.
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<(), PushError> {
        self.check_ok()?;
        if self.unanswered() == 0 {
            return Err(PushError::Full);
        }
        if let Err(f) = self.sh.write_slot(self.rsp_prod_pvt, rsp) {
            return Err(self.fail(f).into());
        }
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes queued responses without checking for a notification (`RING_PUSH_RESPONSES`).
    ///
    /// # Errors
    /// The sticky [`Fault`], if any.
    pub fn push_responses(&mut self) -> Result<(), Fault> {
        self.check_ok()?;
        // Release (xen_wmb): the frontend sees the response bodies before the new rsp_prod.
        self.sh.rsp_prod.store_release(self.rsp_prod_pvt);
        self.rsp_prod = self.rsp_prod_pvt;
        Ok(())
    }

    /// Publishes queued responses and reports whether the frontend asked to be notified
    /// (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`).
    ///
    /// # Errors
    /// The sticky [`Fault`], if any.
    pub fn push_responses_and_check_notify(&mut self) -> Result<Notify, Fault> {
        self.check_ok()?;
        let old = self.rsp_prod;
        let new = self.rsp_prod_pvt;
        // Release (xen_wmb): the frontend sees the response bodies before the new rsp_prod.
        self.sh.rsp_prod.store_release(new);
        self.rsp_prod = new;
        // xen_mb: our rsp_prod store is ordered before the rsp_event load. Pairs with the
        // frontend's fence in final_check_for_responses.
        full_fence();
        let event = self.sh.rsp_event.load_relaxed();
        Ok(Notify(Shared::notify_needed(old, new, event)))
    }

    /// Before going idle: if no requests are pending, asks the frontend for an event on the
    /// next one (`req_event = req_cons + 1`) and checks again (`RING_FINAL_CHECK_FOR_REQUESTS`).
    /// Returns whether requests are pending; if `false`, the next request is guaranteed to
    /// come with an event.
    ///
    /// # Errors
    /// As [`unconsumed_requests`](Self::unconsumed_requests).
    pub fn final_check_for_requests(&mut self) -> Result<bool, Fault> {
        if self.unconsumed_requests()? > 0 {
            return Ok(true);
        }
        self.sh
            .req_event
            .store_relaxed(self.req_cons.wrapping_add(1));
        // xen_mb: the req_event store is ordered before re-reading req_prod. Pairs with the
        // frontend's fence in push_requests_and_check_notify.
        full_fence();
        Ok(self.unconsumed_requests()? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_shmem::Page;

    type Blk = [u64; 14]; // 112 bytes, the size of a blkif request on x86_64

    #[test]
    fn geometry() {
        assert_eq!(entry_size::<Blk, [u64; 2]>(), 112);
        assert_eq!(ring_entries_for::<Blk, [u64; 2]>(1), 32);
        assert_eq!(ring_entries_for::<Blk, [u64; 2]>(2), 64);
        assert_eq!(ring_entries_for::<Blk, [u64; 2]>(4), 128);
        assert_eq!(ring_entries_for::<Blk, [u64; 2]>(8), 256);
        // netif tx: 12-byte request, 4-byte response -> 256 entries in a page.
        assert_eq!(ring_entries_for::<[u32; 3], u32>(1), 256);
        // union rounding: 12-byte/4-aligned with 8-byte/8-aligned -> 16.
        assert_eq!(entry_size::<[u32; 3], u64>(), 16);
        assert_eq!(ring_entries(63, 1), 0);
        assert_eq!(ring_entries(64, 1), 0);
        assert_eq!(ring_entries(65, 1), 1);
        assert_eq!(ring_entries(4096, 0), 0);
        assert_eq!(ring_entries(usize::MAX, 1), MAX_ENTRIES);
    }

    #[test]
    fn init_writes_header_and_zeroes() {
        let page = Page::new();
        let mem = SharedMem::from_pages(core::slice::from_ref(&page));
        mem.fill(0, 4096, 0xee).unwrap();
        let front = FrontRing::<Blk, [u64; 2]>::init(mem).unwrap();
        assert_eq!(front.size(), 32);
        assert_eq!(mem.read::<[u32; 4]>(0).unwrap(), [0, 1, 0, 1]);
        assert_eq!(mem.read::<[u8; 48]>(16).unwrap(), [0; 48]);
        assert_eq!(mem.read::<u8>(4095).unwrap(), 0);
    }

    #[test]
    fn back_attach_does_not_write() {
        let page = Page::new();
        let mem = SharedMem::from_pages(core::slice::from_ref(&page));
        mem.fill(0, 4096, 0x5a).unwrap();
        mem.write(REQ_PROD, &3u32).unwrap();
        mem.write(RSP_PROD, &1u32).unwrap();
        let back = BackRing::<u32, u32>::attach(mem).unwrap();
        assert_eq!(back.req_cons(), 1);
        let mut after = [0u8; 4096];
        mem.copy_to_slice(0, &mut after).unwrap();
        assert_eq!(&after[16..], &[0x5a; 4080][..]);
        // req_prod - rsp_prod > size at attach is refused.
        mem.write(REQ_PROD, &2000u32).unwrap();
        assert!(matches!(
            BackRing::<u32, u32>::attach(mem),
            Err(SetupError::Fault(Fault::RequestOverflow {
                req_prod: 2000,
                ..
            }))
        ));
    }

    #[test]
    fn too_small() {
        let w = [const { core::sync::atomic::AtomicU32::new(0) }; 16];
        let mem = SharedMem::from_words(&w);
        assert_eq!(
            FrontRing::<u32, u32>::init(mem).unwrap_err(),
            SetupError::TooSmall {
                len: 64,
                entry_size: 4
            }
        );
        let w = [const { core::sync::atomic::AtomicU32::new(0) }; 17];
        let mem = SharedMem::from_words(&w);
        assert_eq!(FrontRing::<u32, u32>::init(mem).unwrap().size(), 1);
    }

    #[test]
    fn roundtrip_and_notify() {
        let page = Page::new();
        let mem = SharedMem::from_pages(core::slice::from_ref(&page));
        let mut f = FrontRing::<[u8; 5], [u8; 3]>::init(mem).unwrap();
        let mut b = BackRing::<[u8; 5], [u8; 3]>::attach(mem).unwrap();
        assert_eq!(f.size(), 512);
        // Fresh ring: the backend asked (req_event = 1) for an event on the first request.
        f.push_request(&[1; 5]).unwrap();
        f.push_request(&[2; 5]).unwrap();
        assert!(f.push_requests_and_check_notify().unwrap().is_required());
        f.push_request(&[3; 5]).unwrap();
        // The backend has not re-armed req_event: no event needed.
        assert!(!f.push_requests_and_check_notify().unwrap().is_required());
        let mut got = [[0u8; 5]; 3];
        let mut i = 0;
        assert_eq!(
            b.consume_requests(2, |r| {
                got[i] = r;
                i += 1
            })
            .unwrap(),
            2
        );
        assert_eq!(b.pop_request().unwrap(), Some([3; 5]));
        assert_eq!(b.pop_request().unwrap(), None);
        assert_eq!(&got[..2], &[[1; 5], [2; 5]]);
        assert!(!b.final_check_for_requests().unwrap());
        for k in 0..3 {
            b.push_response(&[k + 1; 3]).unwrap();
        }
        assert_eq!(b.push_response(&[9; 3]), Err(PushError::Full));
        // rsp_event is still 1 from init: the first response batch notifies.
        assert!(b.push_responses_and_check_notify().unwrap().is_required());
        assert_eq!(f.pop_response().unwrap(), Some([1; 3]));
        assert_eq!(f.consume_responses(10, |_| {}).unwrap(), 2);
        assert!(!f.final_check_for_responses().unwrap());
        // The backend went idle after final_check: the next request must notify.
        f.push_request(&[4; 5]).unwrap();
        assert!(f.push_requests_and_check_notify().unwrap().is_required());
        // Response slots were written whole: the slot of request 0 now holds
        // response 0 followed by zero padding.
        assert_eq!(mem.read::<[u8; 5]>(HEADER_SIZE).unwrap(), [1, 1, 1, 0, 0]);
    }

    #[test]
    fn hostile_indices_are_sticky() {
        let page = Page::new();
        let mem = SharedMem::from_pages(core::slice::from_ref(&page));
        let mut f = FrontRing::<u64, u64>::init(mem).unwrap();
        let mut b = BackRing::<u64, u64>::attach(mem).unwrap();
        f.push_request(&1).unwrap();
        let _ = f.push_requests_and_check_notify().unwrap();
        // Backend claims two responses to one request.
        mem.store_release_u32(RSP_PROD, 2).unwrap();
        let fault = Fault::ResponseOverflow {
            rsp_prod: 2,
            rsp_cons: 0,
            req_prod: 1,
        };
        assert_eq!(f.pop_response(), Err(fault));
        mem.store_release_u32(RSP_PROD, 1).unwrap();
        assert_eq!(f.pop_response(), Err(fault));
        assert_eq!(f.push_request(&2), Err(PushError::Fault(fault)));
        assert_eq!(f.fault(), Some(fault));
        // Frontend claims more than a ring of requests.
        mem.store_release_u32(REQ_PROD, 256).unwrap();
        assert_eq!(b.unconsumed_requests(), Ok(256));
        mem.store_release_u32(REQ_PROD, 257).unwrap();
        let mut b2 = BackRing::<u64, u64>::attach_at(mem, 0).unwrap();
        assert!(matches!(
            b2.pop_request(),
            Err(Fault::RequestOverflow { req_prod: 257, .. })
        ));
        // Regression after a valid observation.
        mem.store_release_u32(REQ_PROD, 5).unwrap();
        let regressed = Fault::RequestProdRegressed {
            req_prod: 5,
            last: 256,
        };
        assert_eq!(b.unconsumed_requests(), Err(regressed));
        assert_eq!(b.pop_request(), Err(regressed));
        assert!(b.final_check_for_requests().is_err());
    }
}
