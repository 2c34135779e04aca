//! Mapping, unmapping and copying *other* domains' grants, in batches.
//!
//! # Per-entry status (XSA-361/362/365/367)
//!
//! A batched grant hypercall can succeed as a whole while individual entries fail, and it can
//! fail as a whole after having processed some entries. Linux and FreeBSD backends have
//! crashed (`BUG()`, `panic`, `KASSERT`) or leaked mappings on both. Here:
//!
//! * every entry's `status` is **pre-set to a failure** (`GNTST_general_error`) before the
//!   call, so an entry Xen never reached reads as failed, never as mapped;
//! * after the call each entry's status is read once and decides that entry's fate,
//!   regardless of the call's own result;
//! * the all-or-nothing [`map_grants`] unmaps exactly the entries that did map when any entry
//!   failed, and reports any it could not unmap instead of forgetting them;
//! * nothing here panics on a status value (any `i16` is a [`GntStatus`]).
//!
//! Batches are issued in chunks of [`CHUNK`] entries built on the stack: no allocation, and a
//! bounded stack footprint for kernel threads.
use core::fmt;

use xen_kmod::{GrantTableOp, Hypervisor, XenError};
use xen_shmem::SharedMem;
use xen_sys::native as abi;

use crate::v1::{
    to_pfn, GntStatus, DOMID_SELF, GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTMAP_HOST_MAP,
    GNTMAP_READONLY, PAGE_SIZE,
};

/// Entries per hypercall.
pub const CHUNK: usize = 16;

/// A failure status pre-set into every entry before the hypercall.
const PRESET: i16 = GntStatus::GeneralError.to_raw();

/// A live mapping of a foreign grant. Not `Clone`: Xen reuses handles after an unmap, so a
/// second unmap through a copied handle could tear down somebody else's mapping.
#[derive(Debug, PartialEq, Eq)]
pub struct MapHandle {
    handle: u32,
    host_addr: u64,
    dev_bus_addr: u64,
    readonly: bool,
}

impl MapHandle {
    /// Xen's handle number.
    #[must_use]
    pub fn handle(&self) -> u32 {
        self.handle
    }
    /// The guest-physical address the page is mapped at.
    #[must_use]
    pub fn host_addr(&self) -> u64 {
        self.host_addr
    }
    /// The bus address (device maps only; zero otherwise).
    #[must_use]
    pub fn dev_bus_addr(&self) -> u64 {
        self.dev_bus_addr
    }
    /// Whether the mapping is read-only.
    #[must_use]
    pub fn readonly(&self) -> bool {
        self.readonly
    }
}

/// One grant to map, and what became of it.
#[derive(Debug)]
pub struct MapGrant {
    /// The granting domain.
    pub dom: u16,
    /// Its grant reference (peer-supplied: any value is acceptable, Xen checks it).
    pub gref: u32,
    /// Page-aligned guest-physical address to map at (a slot from [`ForeignMemory`]).
    pub host_addr: u64,
    /// Map read-only.
    pub readonly: bool,
    /// OUT: `Some` exactly while the grant is mapped.
    pub handle: Option<MapHandle>,
    /// OUT: the entry's last status.
    pub status: GntStatus,
}

impl MapGrant {
    /// A request to map `gref` of `dom` at `host_addr`.
    #[must_use]
    pub fn new(dom: u16, gref: u32, host_addr: u64, readonly: bool) -> Self {
        MapGrant {
            dom,
            gref,
            host_addr,
            readonly,
            handle: None,
            status: GntStatus::GeneralError,
        }
    }
}

/// Why a batch did not fully succeed. In every case each entry's `handle`/`status` tells its
/// own state exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchError {
    /// Index of the first failed entry.
    pub first_failed: usize,
    /// Its status.
    pub status: GntStatus,
    /// Entries that failed.
    pub failed: usize,
    /// The hypercall's own error, if a call failed as a whole.
    pub hypercall: Option<XenError>,
    /// (all-or-nothing map only) entries that had mapped and could not be unmapped again; they
    /// are still mapped (`handle` is `Some`) and their slots must not be reused.
    pub stuck: usize,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} grant entries failed (first #{}: {:?})",
            self.failed, self.first_failed, self.status
        )?;
        if let Some(e) = self.hypercall {
            write!(f, ", hypercall error {e:?}")?;
        }
        if self.stuck != 0 {
            write!(f, ", {} still mapped", self.stuck)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Tally {
    first: Option<(usize, GntStatus)>,
    failed: usize,
    hypercall: Option<XenError>,
}

impl Tally {
    fn fail(&mut self, i: usize, s: GntStatus) {
        self.failed += 1;
        if self.first.is_none() {
            self.first = Some((i, s));
        }
    }
    fn finish(self, stuck: usize) -> Result<(), BatchError> {
        match self.first {
            None => Ok(()),
            Some((first_failed, status)) => Err(BatchError {
                first_failed,
                status,
                failed: self.failed,
                hypercall: self.hypercall,
                stuck,
            }),
        }
    }
}

/// Maps each entry independently: afterwards some may be mapped and some not (see each
/// entry). Entries that are already mapped (`handle` is `Some`) are skipped.
///
/// # Errors
/// [`BatchError`] if any entry failed (the successful ones stay mapped).
pub fn map_grants_each<H: Hypervisor + ?Sized>(
    hv: &H,
    ops: &mut [MapGrant],
) -> Result<(), BatchError> {
    let mut tally = Tally::default();
    let mut base = 0;
    for chunk in ops.chunks_mut(CHUNK) {
        let mut raw = [abi::gnttab_map_grant_ref::default(); CHUNK];
        let mut idx = [0usize; CHUNK];
        let mut n = 0;
        for (i, op) in chunk.iter().enumerate() {
            if op.handle.is_some() {
                continue;
            }
            let mut flags = GNTMAP_HOST_MAP;
            if op.readonly {
                flags |= GNTMAP_READONLY;
            }
            raw[n] = abi::gnttab_map_grant_ref {
                host_addr: op.host_addr,
                flags,
                ref_: op.gref,
                dom: op.dom,
                status: PRESET,
                handle: u32::MAX,
                dev_bus_addr: 0,
            };
            idx[n] = i;
            n += 1;
        }
        if n == 0 {
            base += chunk.len();
            continue;
        }
        if let Err(e) = hv.grant_table_op(GrantTableOp::MapGrantRef(&mut raw[..n])) {
            tally.hypercall = Some(e);
        }
        for (r, &i) in raw[..n].iter().zip(&idx[..n]) {
            // Each status read once; it alone decides (whatever the call returned).
            let status = GntStatus::from_raw(r.status);
            let Some(op) = chunk.get_mut(i) else { continue };
            op.status = status;
            if status.is_ok() {
                op.handle = Some(MapHandle {
                    handle: r.handle,
                    host_addr: op.host_addr,
                    dev_bus_addr: r.dev_bus_addr,
                    readonly: op.readonly,
                });
            } else {
                tally.fail(base + i, status);
            }
        }
        base += chunk.len();
    }
    tally.finish(0)
}

/// Maps all entries or none: if any entry fails, the ones this call mapped are unmapped again.
/// Entries that were already mapped when called (`handle` is `Some`) are left as they are.
///
/// # Errors
/// [`BatchError`]; afterwards no entry this call mapped is still mapped, except `stuck` ones
/// whose unmap failed (their `handle` is still `Some`, and their slots must stay reserved).
pub fn map_grants<H: Hypervisor + ?Sized>(hv: &H, ops: &mut [MapGrant]) -> Result<(), BatchError> {
    // Which entries were mapped before (rare: only a caller retrying a partial batch has any).
    let before: Option<alloc::vec::Vec<bool>> = ops
        .iter()
        .any(|o| o.handle.is_some())
        .then(|| ops.iter().map(|o| o.handle.is_some()).collect());
    let Err(mut err) = map_grants_each(hv, ops) else {
        return Ok(());
    };
    // Unwind exactly the entries this call mapped, chunk by chunk.
    let mut handles = [const { None }; CHUNK];
    let mut idx = [0usize; CHUNK];
    let mut stuck = 0;
    let mut base = 0;
    for chunk in ops.chunks_mut(CHUNK) {
        let mut n = 0;
        for (i, op) in chunk.iter_mut().enumerate() {
            let mapped_before = before
                .as_ref()
                .is_some_and(|b| b.get(base + i) == Some(&true));
            if mapped_before {
                continue;
            }
            if let Some(h) = op.handle.take() {
                handles[n] = Some(h);
                idx[n] = i;
                n += 1;
            }
        }
        let _ = unmap_grants(hv, &mut handles[..n]);
        // Give back what could not be unmapped, to the entry it came from.
        for (h, &i) in handles[..n].iter_mut().zip(&idx[..n]) {
            if let (Some(h), Some(op)) = (h.take(), chunk.get_mut(i)) {
                op.handle = Some(h);
                stuck += 1;
            }
        }
        base += chunk.len();
    }
    err.stuck = stuck;
    Err(err)
}

/// Unmaps every `Some` handle. Afterwards an entry is `None` exactly if it was unmapped.
///
/// # Errors
/// [`BatchError`] if any unmap failed; those handles are left in place (still mapped).
pub fn unmap_grants<H: Hypervisor + ?Sized>(
    hv: &H,
    handles: &mut [Option<MapHandle>],
) -> Result<(), BatchError> {
    let mut tally = Tally::default();
    let mut base = 0;
    for chunk in handles.chunks_mut(CHUNK) {
        let mut raw = [abi::gnttab_unmap_grant_ref::default(); CHUNK];
        let mut idx = [0usize; CHUNK];
        let mut n = 0;
        for (i, h) in chunk.iter().enumerate() {
            let Some(h) = h else { continue };
            raw[n] = abi::gnttab_unmap_grant_ref {
                host_addr: h.host_addr,
                dev_bus_addr: 0,
                handle: h.handle,
                status: PRESET,
                ..Default::default()
            };
            idx[n] = i;
            n += 1;
        }
        if n > 0 {
            if let Err(e) = hv.grant_table_op(GrantTableOp::UnmapGrantRef(&mut raw[..n])) {
                tally.hypercall = Some(e);
            }
            for (r, &i) in raw[..n].iter().zip(&idx[..n]) {
                let status = GntStatus::from_raw(r.status);
                if status.is_ok() {
                    if let Some(h) = chunk.get_mut(i) {
                        *h = None;
                    }
                } else {
                    tally.fail(base + i, status);
                }
            }
        }
        base += chunk.len();
    }
    tally.finish(0)
}

/// One side of a grant copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyPtr {
    /// A page another domain granted us (`GNTCOPY_*_gref`).
    Grant {
        /// The granting domain.
        dom: u16,
        /// Its reference.
        gref: u32,
    },
    /// One of our own pages, by frame number (`DOMID_SELF`).
    Local {
        /// Our guest frame number.
        gfn: u64,
    },
}

/// One grant copy and its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantCopy {
    /// Where to copy from.
    pub src: CopyPtr,
    /// Byte offset in the source page.
    pub src_offset: u16,
    /// Where to copy to.
    pub dst: CopyPtr,
    /// Byte offset in the destination page.
    pub dst_offset: u16,
    /// Bytes to copy.
    pub len: u16,
    /// OUT: the entry's status.
    pub status: GntStatus,
}

impl GrantCopy {
    /// A copy of `len` bytes.
    #[must_use]
    pub fn new(src: CopyPtr, src_offset: u16, dst: CopyPtr, dst_offset: u16, len: u16) -> Self {
        GrantCopy {
            src,
            src_offset,
            dst,
            dst_offset,
            len,
            status: GntStatus::GeneralError,
        }
    }

    /// Checks what Xen would refuse with `GNTST_bad_copy_arg`, so no hypercall is spent on it.
    fn check(&self) -> Result<(), GntStatus> {
        let fits = |off: u16| usize::from(off) + usize::from(self.len) <= PAGE_SIZE;
        if !fits(self.src_offset) || !fits(self.dst_offset) {
            return Err(GntStatus::BadCopyArg);
        }
        for p in [self.src, self.dst] {
            if let CopyPtr::Local { gfn } = p {
                if to_pfn(gfn).is_none() {
                    return Err(GntStatus::BadCopyArg);
                }
            }
        }
        Ok(())
    }
}

#[cfg(target_arch = "x86_64")]
fn copy_ptr(p: CopyPtr, offset: u16) -> abi::gnttab_copy_gnttab_copy_ptr {
    let (u, domid) = raw_ptr(p);
    abi::gnttab_copy_gnttab_copy_ptr {
        u,
        domid,
        offset,
        __bindgen_padding_0: Default::default(),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn copy_ptr(p: CopyPtr, offset: u16) -> abi::gnttab_copy_gnttab_copy_ptr {
    let (u, domid) = raw_ptr(p);
    abi::gnttab_copy_gnttab_copy_ptr { u, domid, offset }
}

fn raw_ptr(p: CopyPtr) -> (abi::gnttab_copy_gnttab_copy_ptr__bindgen_ty_1, u16) {
    match p {
        CopyPtr::Grant { dom, gref } => {
            // Set the wider member first so the union has no stale upper bytes.
            let mut u = abi::gnttab_copy_gnttab_copy_ptr__bindgen_ty_1 { gmfn: 0 };
            u.ref_ = gref;
            (u, dom)
        }
        CopyPtr::Local { gfn } => (
            // Checked to fit by `GrantCopy::check`.
            abi::gnttab_copy_gnttab_copy_ptr__bindgen_ty_1 {
                gmfn: to_pfn(gfn).unwrap_or(0),
            },
            DOMID_SELF,
        ),
    }
}

/// Performs grant copies; each entry's `status` reports its outcome. Entries that would copy
/// beyond a page are refused locally with [`GntStatus::BadCopyArg`].
///
/// # Errors
/// [`BatchError`] if any entry failed.
pub fn copy_grants<H: Hypervisor + ?Sized>(
    hv: &H,
    ops: &mut [GrantCopy],
) -> Result<(), BatchError> {
    let mut tally = Tally::default();
    let mut base = 0;
    for chunk in ops.chunks_mut(CHUNK) {
        let mut raw: [abi::gnttab_copy; CHUNK] = core::array::from_fn(|_| empty_copy());
        let mut idx = [0usize; CHUNK];
        let mut n = 0;
        for (i, op) in chunk.iter_mut().enumerate() {
            if let Err(s) = op.check() {
                op.status = s;
                tally.fail(base + i, s);
                continue;
            }
            let mut flags = 0;
            if matches!(op.src, CopyPtr::Grant { .. }) {
                flags |= GNTCOPY_SOURCE_GREF;
            }
            if matches!(op.dst, CopyPtr::Grant { .. }) {
                flags |= GNTCOPY_DEST_GREF;
            }
            raw[n] = abi::gnttab_copy {
                source: copy_ptr(op.src, op.src_offset),
                dest: copy_ptr(op.dst, op.dst_offset),
                len: op.len,
                flags,
                status: PRESET,
                __bindgen_padding_0: Default::default(),
            };
            idx[n] = i;
            n += 1;
        }
        if n > 0 {
            if let Err(e) = hv.grant_table_op(GrantTableOp::Copy(&mut raw[..n])) {
                tally.hypercall = Some(e);
            }
            for (r, &i) in raw[..n].iter().zip(&idx[..n]) {
                let status = GntStatus::from_raw(r.status);
                if let Some(op) = chunk.get_mut(i) {
                    op.status = status;
                }
                if !status.is_ok() {
                    tally.fail(base + i, status);
                }
            }
        }
        base += chunk.len();
    }
    tally.finish(0)
}

fn empty_copy() -> abi::gnttab_copy {
    abi::gnttab_copy {
        source: copy_ptr(CopyPtr::Local { gfn: 0 }, 0),
        dest: copy_ptr(CopyPtr::Local { gfn: 0 }, 0),
        len: 0,
        flags: 0,
        status: PRESET,
        __bindgen_padding_0: Default::default(),
    }
}

/// Guest-physical slots that foreign grants can be mapped into; provided by the platform.
///
/// On PVH/HVM FreeBSD a slot is a page of an unpopulated guest-physical range (`xenmem_alloc`)
/// plus the kernel virtual address it is reachable at; in `xensim` the simulator hands out
/// unpopulated guest frames and views the mapped pages in its machine memory.
pub trait ForeignMemory<'a> {
    /// Reserves `count` contiguous page slots; returns the guest-physical address of the first.
    fn reserve(&self, count: u32) -> Option<u64>;
    /// Gives back slots from [`ForeignMemory::reserve`]. Only called for slots with nothing
    /// mapped.
    fn release(&self, host_addr: u64, count: u32);
    /// The page mapped at `host_addr` (page aligned), once a grant is mapped there.
    fn view(&self, host_addr: u64) -> Option<SharedMem<'a>>;
}

/// A contiguous run of mapped foreign grants (the unit a backend maps per request, and the
/// unit `/dev/xen/gntdev` maps per `mmap`).
#[derive(Debug)]
pub struct ForeignMapping {
    base: u64,
    count: u32,
    handles: alloc::vec::Vec<Option<MapHandle>>,
}

impl ForeignMapping {
    /// Reserves slots and maps `refs` (`(domid, gref)`) into them, all or nothing.
    ///
    /// # Errors
    /// [`MapRangeError::NoSlots`] if no slots are free; [`MapRangeError::Map`] if an entry
    /// failed (everything mapped was unmapped, and the slots released — unless some entries
    /// are `stuck`, in which case their slots stay reserved forever rather than be reused
    /// while a foreign page is still mapped there).
    pub fn map<'a, H: Hypervisor + ?Sized, M: ForeignMemory<'a> + ?Sized>(
        hv: &H,
        mem: &M,
        refs: &[(u16, u32)],
        readonly: bool,
    ) -> Result<Self, MapRangeError> {
        let count = u32::try_from(refs.len()).map_err(|_| MapRangeError::NoSlots)?;
        if count == 0 {
            return Ok(ForeignMapping {
                base: 0,
                count: 0,
                handles: alloc::vec::Vec::new(),
            });
        }
        let base = mem.reserve(count).ok_or(MapRangeError::NoSlots)?;
        let mut ops: alloc::vec::Vec<MapGrant> = refs
            .iter()
            .zip(0u64..)
            .map(|(&(dom, gref), i)| {
                MapGrant::new(dom, gref, base + i * PAGE_SIZE as u64, readonly)
            })
            .collect();
        match map_grants(hv, &mut ops) {
            Ok(()) => Ok(ForeignMapping {
                base,
                count,
                handles: ops.into_iter().map(|o| o.handle).collect(),
            }),
            Err(e) => {
                if e.stuck == 0 {
                    mem.release(base, count);
                }
                Err(MapRangeError::Map(e))
            }
        }
    }

    /// Number of pages.
    #[must_use]
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether the mapping has no pages.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Guest-physical address of the first page.
    #[must_use]
    pub fn host_addr(&self) -> u64 {
        self.base
    }

    /// The handle of page `i`.
    #[must_use]
    pub fn handle(&self, i: usize) -> Option<&MapHandle> {
        self.handles.get(i).and_then(Option::as_ref)
    }

    /// Page `i`, through `mem` (see [`MappedPage`] for read-only enforcement).
    #[must_use]
    pub fn page<'a, M: ForeignMemory<'a> + ?Sized>(
        &self,
        mem: &M,
        i: usize,
    ) -> Option<MappedPage<'a>> {
        let h = self.handle(i)?;
        Some(MappedPage {
            mem: mem.view(h.host_addr)?,
            readonly: h.readonly,
        })
    }

    /// Unmaps every page and releases the slots.
    ///
    /// # Errors
    /// If some page could not be unmapped, the mapping is returned with only those pages left;
    /// call again later, or keep it (its slots must never be reused while it exists).
    pub fn unmap<'a, H: Hypervisor + ?Sized, M: ForeignMemory<'a> + ?Sized>(
        mut self,
        hv: &H,
        mem: &M,
    ) -> Result<(), (Self, BatchError)> {
        match unmap_grants(hv, &mut self.handles) {
            Ok(()) => {
                if self.count > 0 {
                    mem.release(self.base, self.count);
                }
                Ok(())
            }
            Err(e) => Err((self, e)),
        }
    }
}

/// Why [`ForeignMapping::map`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapRangeError {
    /// No free slots to map into.
    NoSlots,
    /// Mapping failed (see the batch error).
    Map(BatchError),
}

/// A mapped foreign page. Reads always work; writes are refused on read-only mappings here
/// rather than left to fault in the hypervisor.
#[derive(Debug, Clone, Copy)]
pub struct MappedPage<'a> {
    mem: SharedMem<'a>,
    readonly: bool,
}

/// A write to a read-only mapping, or out of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageAccessError {
    /// The mapping is read-only.
    ReadOnly,
    /// The range is outside the page.
    OutOfBounds,
}

impl<'a> MappedPage<'a> {
    /// Whether the page is mapped read-only.
    #[must_use]
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Copies bytes out of the page.
    ///
    /// # Errors
    /// [`PageAccessError::OutOfBounds`].
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), PageAccessError> {
        self.mem
            .copy_to_slice(offset, dst)
            .map_err(|_| PageAccessError::OutOfBounds)
    }

    /// Copies bytes into the page.
    ///
    /// # Errors
    /// [`PageAccessError::ReadOnly`] on a read-only mapping; [`PageAccessError::OutOfBounds`].
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), PageAccessError> {
        if self.readonly {
            return Err(PageAccessError::ReadOnly);
        }
        self.mem
            .copy_from_slice(offset, src)
            .map_err(|_| PageAccessError::OutOfBounds)
    }

    /// The writable view, or `None` for a read-only mapping.
    #[must_use]
    pub fn writable(&self) -> Option<SharedMem<'a>> {
        (!self.readonly).then_some(self.mem)
    }

    /// The view for reading (rings, `read`/`load` accessors).
    #[must_use]
    pub fn for_reading(&self) -> SharedMem<'a> {
        self.mem
    }
}
