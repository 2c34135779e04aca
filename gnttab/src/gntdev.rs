//! `/dev/xen/gntdev`: the device logic, platform-neutral, with FreeBSD's ioctl ABI.
//!
//! Xen's user-space tools (`libxengnttab` on FreeBSD: qemu's Xen backends, `xl` block
//! scripts, vchan) open `/dev/xen/gntdev` to share pages with other domains (*allocation*:
//! `IOCTL_GNTDEV_ALLOC_GREF`) and to map pages other domains granted (*mapping*:
//! `IOCTL_GNTDEV_MAP_GRANT_REF`), then `mmap(2)` the returned file offset. The ABI below is
//! FreeBSD's `sys/xen/gntdev.h` (group `'E'`, numbers 0–5, FreeBSD's `_IOC` encoding), not
//! Linux's, so the FreeBSD builds of those tools work unchanged.
//!
//! # Semantics (as FreeBSD's `dev/xen/gntdev/gntdev.c`, hardened)
//!
//! * Each open file has its own state ([`Gntdev::open`] returns a [`FileId`]) and its own
//!   space of mmap offsets. An ioctl reserves a contiguous run of pages in that space and
//!   returns its byte offset (`index`); the run goes back when the grant/map is released.
//! * Allocation grants zeroed pages at once; a page is freed only when it is no longer
//!   mmapped, the dealloc ioctl was issued, *and* the foreign domain has unmapped it
//!   (the grant table defers the last part: see [`crate::table`]).
//! * Mapping records the references; the map hypercall happens at `mmap` time
//!   ([`Gntdev::mmap`]), read-only unless the mmap asks for write access. The grants are
//!   unmapped when both the unmap ioctl was issued and the last mmap of the run went away.
//! * `IOCTL_GNTDEV_SET_UNMAP_NOTIFY` arms a one-shot notification performed at that final
//!   teardown: clear one byte of the page, and/or notify an event channel. Only the last one
//!   set survives. A byte of a read-only mapping is never written.
//!
//! Differences from the C driver, each deliberate: every count, offset, flag and domid is
//! validated (count 0, counts beyond the per-file limit, unknown flags, domids ≥
//! `DOMID_FIRST_RESERVED`, and a ioctl argument of the wrong size are `EINVAL`/`ENOSPC`
//! instead of a huge `M_WAITOK` allocation or silent truncation); every failure unwinds what
//! the call did, so nothing leaks (the C alloc path keeps partially granted pages on a global
//! list, and ignores a failed copy-out of the reference ids); partial map failures unmap
//! exactly the mapped entries (XSA-361 class); nothing panics on user or peer input. Unknown
//! ioctl commands are `ENOSYS`, as in the C driver.
//!
//! # Concurrency
//!
//! Methods take `&mut self`: the FreeBSD glue serialises calls with one `sx(9)` lock (ioctls
//! copy in and out and make hypercalls, so a sleepable lock is needed). This is the control
//! path of user-space tools, not a data path.
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::batch::{ForeignMapping, MapRangeError};
use crate::table::{GrantError, GrantRef, Revoke};
use crate::v1::PAGE_SIZE;

pub use xen_sys::freebsd::Errno;

/// FreeBSD's `sys/xen/gntdev.h` and `sys/sys/ioccom.h`: command numbers and argument layouts.
pub mod abi {
    pub use xen_sys::freebsd::gntdev::GROUP;
    pub use xen_sys::freebsd::ioccom::{
        ioc, iocparm_len, IOCPARM_MASK, IOC_IN, IOC_INOUT, IOC_OUT,
    };

    /// `UNMAP_NOTIFY_CLEAR_BYTE`.
    pub const UNMAP_NOTIFY_CLEAR_BYTE: u32 = 0x1;
    /// `UNMAP_NOTIFY_SEND_EVENT`.
    pub const UNMAP_NOTIFY_SEND_EVENT: u32 = 0x2;
    /// `GNTDEV_ALLOC_FLAG_WRITABLE`.
    pub const GNTDEV_ALLOC_FLAG_WRITABLE: u16 = 1;

    /// The user process's data model, shared by every device (`xen_sys::freebsd::Abi`); its
    /// gntdev layouts and command numbers are in `xen_sys::freebsd::gntdev`.
    pub use xen_sys::freebsd::Abi;

    /// Size of `struct ioctl_gntdev_grant_ref` (domid u32, ref u32) in the user's array.
    pub const GRANT_REF_SIZE: usize = 8;
}

use abi::Abi;

/// `DOMID_FIRST_RESERVED`: domids from here up name no real domain.
const DOMID_FIRST_RESERVED: u32 = 0x7ff0;

/// Pages in the file offset space: offsets are byte offsets in a `u64`.
const OFFSET_PAGES: u64 = 1 << 52;

/// An open file of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(u64);

/// An mmap'd object (a run of allocated pages, or a mapping), as the glue's VM object names
/// it back to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(u64);

/// Services of the kernel the device needs.
pub trait GntdevPlatform {
    /// A notification binding to an event channel port.
    type Notify;

    /// A zeroed page we own and may grant; its frame number.
    fn alloc_page(&mut self) -> Option<u64>;
    /// Frees a page from [`GntdevPlatform::alloc_page`] that was never granted or whose grant
    /// ended.
    fn free_page(&mut self, gfn: u64);
    /// Grants `gfn` to `domid`.
    ///
    /// # Errors
    /// The grant table's error.
    fn grant(&mut self, domid: u16, gfn: u64, readonly: bool) -> Result<GrantRef, GrantError>;
    /// Revokes a grant of page `gfn`. On [`Revoke::Done`] the device frees the page; on
    /// [`Revoke::Deferred`] the platform frees it when the grant table's `poll_deferred`
    /// releases it.
    fn revoke(&mut self, r: GrantRef) -> Revoke;
    /// Maps foreign grants, all or nothing.
    ///
    /// # Errors
    /// As [`ForeignMapping::map`].
    fn map(&mut self, refs: &[(u16, u32)], readonly: bool)
        -> Result<ForeignMapping, MapRangeError>;
    /// Unmaps a mapping; gives it back if some page could not be unmapped.
    ///
    /// # Errors
    /// The mapping, still (partly) mapped.
    fn unmap(&mut self, m: ForeignMapping) -> Result<(), ForeignMapping>;
    /// Zeroes byte `offset` of our page `gfn`.
    fn clear_byte_own(&mut self, gfn: u64, offset: usize);
    /// Zeroes byte `offset` of page `page` of a writable mapping.
    fn clear_byte_mapped(&mut self, m: &ForeignMapping, page: usize, offset: usize);
    /// Binds a notification to event channel `port` of the calling process.
    ///
    /// # Errors
    /// The port is not a valid port of the caller.
    fn bind_notify(&mut self, port: u32) -> Result<Self::Notify, Errno>;
    /// Sends the notification.
    fn notify(&mut self, n: &Self::Notify);
    /// Drops a binding.
    fn unbind_notify(&mut self, n: Self::Notify);
}

/// The calling process: its memory (for the variable-length parts of the ioctls) and its
/// address space (for `GET_OFFSET_FOR_VADDR`).
pub trait UserContext {
    /// `copyin(9)`.
    ///
    /// # Errors
    /// `EFAULT` for a bad address.
    fn copyin(&mut self, addr: u64, dst: &mut [u8]) -> Result<(), Errno>;
    /// `copyout(9)`.
    ///
    /// # Errors
    /// `EFAULT` for a bad address.
    fn copyout(&mut self, addr: u64, src: &[u8]) -> Result<(), Errno>;
    /// The gntdev object mapped at `vaddr`, and the size of that map entry in bytes.
    fn lookup_vaddr(&mut self, vaddr: u64) -> Option<(ObjectId, u64)>;
}

/// What the glue must map for an mmap request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MmapTarget {
    /// Our own allocated pages (an `OBJT_PHYS`-like object over these frames).
    Pages {
        /// The object to report back in [`Gntdev::object_released`].
        object: ObjectId,
        /// Frame numbers, one per page.
        gfns: Vec<u64>,
    },
    /// Mapped foreign pages at these guest-physical addresses.
    Mapped {
        /// The object to report back in [`Gntdev::object_released`].
        object: ObjectId,
        /// Guest-physical address of the first page; the run is contiguous.
        host_addr: u64,
        /// Pages.
        count: u32,
        /// Whether the pages are mapped read-only.
        readonly: bool,
    },
}

/// Limits and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Pages one file may have allocated or mapped at once (and the largest count per ioctl).
    pub max_pages_per_file: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pages_per_file: 1 << 16,
        }
    }
}

/// Counters, for sysctl and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GntdevStats {
    /// Pages currently allocated (granted) by all files, including dying ones.
    pub pages_allocated: u64,
    /// Runs of foreign grants currently mapped.
    pub mappings: u64,
    /// Revocations the grant table had to defer because the peer still mapped the page.
    pub deferred_revokes: u64,
    /// Unmaps that failed and are retried by [`Gntdev::reap`].
    pub stuck_unmaps: u64,
    /// Notifications performed.
    pub notifications: u64,
}

struct Notify<N> {
    /// Byte offset within the page.
    offset: usize,
    /// Page within the run (mappings).
    page: usize,
    clear_byte: bool,
    event: Option<N>,
}

struct Gref<N> {
    object: ObjectId,
    gfn: u64,
    gref: Option<GrantRef>,
    mmapped: bool,
    notify: Option<Notify<N>>,
}

struct Gmap<N> {
    index: u64,
    object: ObjectId,
    refs: Vec<(u16, u32)>,
    mapping: Option<ForeignMapping>,
    readonly: bool,
    mmaps: u32,
    notify: Option<Notify<N>>,
}

/// Free runs of a file's offset space, in pages: start → length.
#[derive(Debug)]
struct OffsetSpace {
    free: BTreeMap<u64, u64>,
}

impl OffsetSpace {
    fn new() -> Self {
        let mut free = BTreeMap::new();
        free.insert(0, OFFSET_PAGES);
        OffsetSpace { free }
    }

    /// First fit; returns the first page.
    fn take(&mut self, count: u64) -> Option<u64> {
        let (&start, &len) = self.free.iter().find(|(_, &len)| len >= count)?;
        self.free.remove(&start);
        if len > count {
            self.free.insert(start + count, len - count);
        }
        Some(start)
    }

    /// Returns a run, merging it with its neighbours. A run that overlaps a free one (which
    /// would be an internal bug) is ignored rather than corrupting the space.
    fn give(&mut self, start: u64, count: u64) {
        if count == 0 {
            return;
        }
        let end = start.saturating_add(count);
        if let Some((&s, &l)) = self.free.range(..end).next_back() {
            if s + l > start {
                return;
            }
        }
        let mut start = start;
        let mut count = count;
        if let Some((&s, &l)) = self.free.range(..start).next_back() {
            if s + l == start {
                self.free.remove(&s);
                start = s;
                count += l;
            }
        }
        if let Some(&l) = self.free.get(&end) {
            self.free.remove(&end);
            count += l;
        }
        self.free.insert(start, count);
    }
}

struct File<N> {
    offsets: OffsetSpace,
    /// Allocated pages by byte index (each page its own unit, as in the C driver).
    grefs: BTreeMap<u64, Gref<N>>,
    /// Mappings by byte index of their first page.
    gmaps: BTreeMap<u64, Gmap<N>>,
    pages: u64,
}

/// The device: all open files, plus allocations and mappings that outlived their file or
/// their ioctl and wait for munmap (or for a stuck unmap to succeed).
pub struct Gntdev<P: GntdevPlatform> {
    platform: P,
    limits: Limits,
    files: BTreeMap<FileId, File<P::Notify>>,
    next_id: u64,
    dying_grefs: Vec<Gref<P::Notify>>,
    dying_gmaps: Vec<Gmap<P::Notify>>,
    stats: GntdevStats,
}

impl<P: GntdevPlatform> fmt::Debug for Gntdev<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gntdev")
            .field("files", &self.files.len())
            .field("dying_grefs", &self.dying_grefs.len())
            .field("dying_gmaps", &self.dying_gmaps.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn page_index(index: u64) -> Option<u64> {
    (index % PAGE_SIZE as u64 == 0).then_some(index / PAGE_SIZE as u64)
}

fn le_u16(b: &[u8], at: usize) -> Result<u16, Errno> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or(Errno::EINVAL)
}
fn le_u32(b: &[u8], at: usize) -> Result<u32, Errno> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(Errno::EINVAL)
}
fn le_u64(b: &[u8], at: usize) -> Result<u64, Errno> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(Errno::EINVAL)
}
fn put_u32(b: &mut [u8], at: usize, v: u32) -> Result<(), Errno> {
    b.get_mut(at..at + 4)
        .ok_or(Errno::EINVAL)?
        .copy_from_slice(&v.to_le_bytes());
    Ok(())
}
fn put_u64(b: &mut [u8], at: usize, v: u64) -> Result<(), Errno> {
    b.get_mut(at..at + 8)
        .ok_or(Errno::EINVAL)?
        .copy_from_slice(&v.to_le_bytes());
    Ok(())
}
fn user_ptr(abi: Abi, b: &[u8], at: usize) -> Result<u64, Errno> {
    if abi.ptr_size() == 8 {
        le_u64(b, at)
    } else {
        le_u32(b, at).map(u64::from)
    }
}

/// Byte offsets of the fields (the same in both data models up to the pointer).
mod off {
    pub const ALLOC_DOMID: usize = 0;
    pub const ALLOC_FLAGS: usize = 2;
    pub const ALLOC_COUNT: usize = 4;
    pub const ALLOC_INDEX: usize = 8;
    pub const ALLOC_GREF_IDS: usize = 16;
    pub const DEALLOC_INDEX: usize = 0;
    pub const DEALLOC_COUNT: usize = 8;
    pub const MAP_COUNT: usize = 0;
    pub const MAP_INDEX: usize = 8;
    pub const MAP_REFS: usize = 16;
    pub const NOTIFY_INDEX: usize = 0;
    pub const NOTIFY_ACTION: usize = 8;
    pub const NOTIFY_PORT: usize = 12;
    pub const VADDR_VADDR: usize = 0;
    pub const VADDR_OFFSET: usize = 8;
    pub const VADDR_COUNT: usize = 16;
}

impl<P: GntdevPlatform> Gntdev<P> {
    /// A device over `platform`.
    pub fn new(platform: P, limits: Limits) -> Self {
        Gntdev {
            platform,
            limits,
            files: BTreeMap::new(),
            next_id: 1,
            dying_grefs: Vec::new(),
            dying_gmaps: Vec::new(),
            stats: GntdevStats::default(),
        }
    }

    /// The platform services.
    pub fn platform(&mut self) -> &mut P {
        &mut self.platform
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> GntdevStats {
        self.stats
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// `open(2)`: new per-file state.
    pub fn open(&mut self) -> FileId {
        let id = FileId(self.id());
        self.files.insert(
            id,
            File {
                offsets: OffsetSpace::new(),
                grefs: BTreeMap::new(),
                gmaps: BTreeMap::new(),
                pages: 0,
            },
        );
        id
    }

    /// Last `close(2)`: allocations and mappings of the file are released as soon as nothing
    /// maps them any more.
    pub fn close(&mut self, file: FileId) {
        let Some(f) = self.files.remove(&file) else {
            return;
        };
        self.dying_grefs.extend(f.grefs.into_values());
        self.dying_gmaps.extend(f.gmaps.into_values());
        self.reap();
    }

    /// `ioctl(2)`. `data` is the argument the kernel copied in (exactly `IOCPARM_LEN(cmd)`
    /// bytes); results are written back into it.
    ///
    /// # Errors
    /// FreeBSD errno values: `EINVAL` for malformed arguments, `ENOSPC`, `ENOMEM`, `EFAULT`,
    /// `ENOSYS` for an unknown command. On error nothing the call did remains.
    pub fn ioctl(
        &mut self,
        file: FileId,
        abi: Abi,
        cmd: u32,
        data: &mut [u8],
        user: &mut dyn UserContext,
    ) -> Result<(), Errno> {
        if !self.files.contains_key(&file) {
            return Err(Errno::EINVAL);
        }
        let known = [
            abi.set_unmap_notify(),
            abi.alloc_gref(),
            abi.dealloc_gref(),
            abi.map_grant_ref(),
            abi.unmap_grant_ref(),
            abi.get_offset_for_vaddr(),
        ];
        if !known.contains(&cmd) {
            return Err(Errno::ENOSYS);
        }
        if data.len() != abi::iocparm_len(cmd) {
            return Err(Errno::EINVAL);
        }
        if cmd == abi.set_unmap_notify() {
            self.set_unmap_notify(file, data)
        } else if cmd == abi.alloc_gref() {
            self.alloc_gref(file, abi, data, user)
        } else if cmd == abi.dealloc_gref() {
            self.dealloc_gref(file, data)
        } else if cmd == abi.map_grant_ref() {
            self.map_grant_ref(file, abi, data, user)
        } else if cmd == abi.unmap_grant_ref() {
            self.unmap_grant_ref(file, data)
        } else {
            self.get_offset_for_vaddr(file, data, user)
        }
    }

    fn count_ok(&self, count: u32, file: FileId) -> Result<(), Errno> {
        if count == 0 || count > self.limits.max_pages_per_file {
            return Err(Errno::EINVAL);
        }
        let used = self.files.get(&file).map_or(0, |f| f.pages);
        if used + u64::from(count) > u64::from(self.limits.max_pages_per_file) {
            return Err(Errno::ENOSPC);
        }
        Ok(())
    }

    fn alloc_gref(
        &mut self,
        file: FileId,
        abi: Abi,
        data: &mut [u8],
        user: &mut dyn UserContext,
    ) -> Result<(), Errno> {
        let domid = le_u16(data, off::ALLOC_DOMID)?;
        let flags = le_u16(data, off::ALLOC_FLAGS)?;
        let count = le_u32(data, off::ALLOC_COUNT)?;
        let ids_ptr = user_ptr(abi, data, off::ALLOC_GREF_IDS)?;
        if flags & !abi::GNTDEV_ALLOC_FLAG_WRITABLE != 0 || u32::from(domid) >= DOMID_FIRST_RESERVED
        {
            return Err(Errno::EINVAL);
        }
        self.count_ok(count, file)?;
        let readonly = flags & abi::GNTDEV_ALLOC_FLAG_WRITABLE == 0;
        let first = self
            .files
            .get_mut(&file)
            .and_then(|f| f.offsets.take(u64::from(count)))
            .ok_or(Errno::ENOSPC)?;

        // Allocate and grant, remembering everything for the unwind.
        let mut done: Vec<(u64, Option<GrantRef>)> = Vec::new();
        let mut failure = None;
        for _ in 0..count {
            let Some(gfn) = self.platform.alloc_page() else {
                failure = Some(Errno::ENOMEM);
                break;
            };
            match self.platform.grant(domid, gfn, readonly) {
                Ok(r) => done.push((gfn, Some(r))),
                Err(e) => {
                    done.push((gfn, None));
                    failure = Some(match e {
                        GrantError::NoFreeRefs => Errno::ENOSPC,
                        GrantError::FrameTooLarge { .. } => Errno::ENOMEM,
                        _ => Errno::EIO,
                    });
                    break;
                }
            }
        }
        if failure.is_none() {
            let mut ids = vec![0u8; done.len() * 4];
            for (chunk, (_, r)) in ids.chunks_exact_mut(4).zip(&done) {
                chunk.copy_from_slice(&r.as_ref().map_or(0, GrantRef::raw).to_le_bytes());
            }
            if let Err(e) = user.copyout(ids_ptr, &ids) {
                failure = Some(e);
            }
        }
        if let Some(e) = failure {
            for (gfn, r) in done {
                self.release_page(gfn, r);
            }
            if let Some(f) = self.files.get_mut(&file) {
                f.offsets.give(first, u64::from(count));
            }
            return Err(e);
        }
        let index = first * PAGE_SIZE as u64;
        put_u64(data, off::ALLOC_INDEX, index)?;
        let mut objects = Vec::with_capacity(done.len());
        for _ in 0..done.len() {
            objects.push(ObjectId(self.id()));
        }
        let Some(f) = self.files.get_mut(&file) else {
            return Err(Errno::EINVAL);
        };
        for ((i, (gfn, gref)), object) in (0u64..).zip(done).zip(objects) {
            let idx = index + i * PAGE_SIZE as u64;
            f.grefs.insert(
                idx,
                Gref {
                    object,
                    gfn,
                    gref,
                    mmapped: false,
                    notify: None,
                },
            );
        }
        f.pages += u64::from(count);
        self.stats.pages_allocated += u64::from(count);
        Ok(())
    }

    /// Ends a grant and frees (or hands over to the deferred path) its page.
    fn release_page(&mut self, gfn: u64, r: Option<GrantRef>) {
        match r.map(|r| self.platform.revoke(r)) {
            None | Some(Revoke::Done) => self.platform.free_page(gfn),
            Some(Revoke::Deferred) => self.stats.deferred_revokes += 1,
        }
    }

    fn dealloc_gref(&mut self, file: FileId, data: &[u8]) -> Result<(), Errno> {
        let index = le_u64(data, off::DEALLOC_INDEX)?;
        let count = le_u32(data, off::DEALLOC_COUNT)?;
        let first = page_index(index).ok_or(Errno::EINVAL)?;
        if count == 0 {
            return Err(Errno::EINVAL);
        }
        let f = self.files.get_mut(&file).ok_or(Errno::EINVAL)?;
        // All `count` pages must exist before anything is removed.
        for i in 0..u64::from(count) {
            let idx = (first + i)
                .checked_mul(PAGE_SIZE as u64)
                .ok_or(Errno::EINVAL)?;
            if !f.grefs.contains_key(&idx) {
                return Err(Errno::EINVAL);
            }
        }
        for i in 0..u64::from(count) {
            if let Some(g) = f.grefs.remove(&((first + i) * PAGE_SIZE as u64)) {
                self.dying_grefs.push(g);
            }
        }
        f.pages -= u64::from(count);
        f.offsets.give(first, u64::from(count));
        self.reap();
        Ok(())
    }

    fn map_grant_ref(
        &mut self,
        file: FileId,
        abi: Abi,
        data: &mut [u8],
        user: &mut dyn UserContext,
    ) -> Result<(), Errno> {
        let count = le_u32(data, off::MAP_COUNT)?;
        let refs_ptr = user_ptr(abi, data, off::MAP_REFS)?;
        self.count_ok(count, file)?;
        let mut raw = vec![0u8; count as usize * abi::GRANT_REF_SIZE];
        user.copyin(refs_ptr, &mut raw)?;
        let mut refs = Vec::with_capacity(count as usize);
        for r in raw.chunks_exact(abi::GRANT_REF_SIZE) {
            let domid = le_u32(r, 0)?;
            let gref = le_u32(r, 4)?;
            if domid >= DOMID_FIRST_RESERVED {
                return Err(Errno::EINVAL);
            }
            // CAST: checked below DOMID_FIRST_RESERVED.
            #[expect(clippy::cast_possible_truncation)]
            refs.push((domid as u16, gref));
        }
        let object = ObjectId(self.id());
        let f = self.files.get_mut(&file).ok_or(Errno::EINVAL)?;
        let first = f.offsets.take(u64::from(count)).ok_or(Errno::ENOSPC)?;
        let index = first * PAGE_SIZE as u64;
        if let Err(e) = put_u64(data, off::MAP_INDEX, index) {
            f.offsets.give(first, u64::from(count));
            return Err(e);
        }
        f.gmaps.insert(
            index,
            Gmap {
                index,
                object,
                refs,
                mapping: None,
                readonly: true,
                mmaps: 0,
                notify: None,
            },
        );
        f.pages += u64::from(count);
        Ok(())
    }

    fn unmap_grant_ref(&mut self, file: FileId, data: &[u8]) -> Result<(), Errno> {
        let index = le_u64(data, off::DEALLOC_INDEX)?;
        let count = le_u32(data, off::DEALLOC_COUNT)?;
        let f = self.files.get_mut(&file).ok_or(Errno::EINVAL)?;
        match f.gmaps.get(&index) {
            Some(g) if g.refs.len() == count as usize => {}
            _ => return Err(Errno::EINVAL),
        }
        let Some(g) = f.gmaps.remove(&index) else {
            return Err(Errno::EINVAL);
        };
        f.pages -= u64::from(count);
        if let Some(first) = page_index(index) {
            f.offsets.give(first, u64::from(count));
        }
        self.dying_gmaps.push(g);
        self.reap();
        Ok(())
    }

    fn set_unmap_notify(&mut self, file: FileId, data: &[u8]) -> Result<(), Errno> {
        let index = le_u64(data, off::NOTIFY_INDEX)?;
        let action = le_u32(data, off::NOTIFY_ACTION)?;
        let port = le_u32(data, off::NOTIFY_PORT)?;
        if action & !(abi::UNMAP_NOTIFY_CLEAR_BYTE | abi::UNMAP_NOTIFY_SEND_EVENT) != 0 {
            return Err(Errno::EINVAL);
        }
        let page_start = index & !(PAGE_SIZE as u64 - 1);
        // CAST: the remainder of a division by 4096.
        #[expect(clippy::cast_possible_truncation)]
        let offset = (index % PAGE_SIZE as u64) as usize;
        let f = self.files.get_mut(&file).ok_or(Errno::EINVAL)?;
        // Which entry, and which page in it.
        let target = if f.grefs.contains_key(&page_start) {
            Some((true, page_start, 0))
        } else {
            f.gmaps
                .range(..=index)
                .next_back()
                .filter(|(&start, g)| index < start + g.refs.len() as u64 * PAGE_SIZE as u64)
                .map(|(&start, _)| {
                    // CAST: page within a run of at most max_pages_per_file pages.
                    #[expect(clippy::cast_possible_truncation)]
                    let page = ((index - start) / PAGE_SIZE as u64) as usize;
                    (false, start, page)
                })
        };
        let Some((is_gref, key, page)) = target else {
            return Err(Errno::EINVAL);
        };
        // Bind the new port before dropping the old binding (it may be the same port).
        let event = if action & abi::UNMAP_NOTIFY_SEND_EVENT != 0 {
            Some(self.platform.bind_notify(port)?)
        } else {
            None
        };
        let new = Notify {
            offset,
            page,
            clear_byte: action & abi::UNMAP_NOTIFY_CLEAR_BYTE != 0,
            event,
        };
        let Some(f) = self.files.get_mut(&file) else {
            return Err(Errno::EINVAL);
        };
        let slot = if is_gref {
            f.grefs.get_mut(&key).map(|g| &mut g.notify)
        } else {
            f.gmaps.get_mut(&key).map(|g| &mut g.notify)
        };
        let old = match slot {
            Some(s) => s.replace(new),
            None => return Err(Errno::EINVAL),
        };
        if let Some(ev) = old.and_then(|o| o.event) {
            self.platform.unbind_notify(ev);
        }
        Ok(())
    }

    fn get_offset_for_vaddr(
        &mut self,
        file: FileId,
        data: &mut [u8],
        user: &mut dyn UserContext,
    ) -> Result<(), Errno> {
        let vaddr = le_u64(data, off::VADDR_VADDR)?;
        let (object, size) = user.lookup_vaddr(vaddr).ok_or(Errno::EINVAL)?;
        let f = self.files.get(&file).ok_or(Errno::EINVAL)?;
        let g = f
            .gmaps
            .values()
            .find(|g| g.object == object)
            .ok_or(Errno::EINVAL)?;
        let count = u32::try_from(g.refs.len()).map_err(|_| Errno::EINVAL)?;
        if size != u64::from(count) * PAGE_SIZE as u64 {
            return Err(Errno::EINVAL);
        }
        put_u64(data, off::VADDR_OFFSET, g.index)?;
        put_u32(data, off::VADDR_COUNT, count)
    }

    /// `mmap(2)` of `size` bytes at file offset `offset` (the glue's `d_mmap_single`).
    ///
    /// # Errors
    /// `EINVAL` if the range is not exactly a run of allocated pages (not already mmapped) or
    /// exactly one mapping; `EINVAL`/`ENOMEM` if the grants cannot be mapped (nothing stays
    /// mapped then); `EACCES` for a writable mmap of a run already mapped read-only.
    pub fn mmap(
        &mut self,
        file: FileId,
        offset: u64,
        size: u64,
        writable: bool,
    ) -> Result<MmapTarget, Errno> {
        let first = page_index(offset).ok_or(Errno::EINVAL)?;
        if size == 0 || size % PAGE_SIZE as u64 != 0 {
            return Err(Errno::EINVAL);
        }
        let count = size / PAGE_SIZE as u64;
        let f = self.files.get_mut(&file).ok_or(Errno::EINVAL)?;
        if f.grefs.contains_key(&offset) {
            let mut gfns = Vec::new();
            for i in 0..count {
                let idx = (first + i)
                    .checked_mul(PAGE_SIZE as u64)
                    .ok_or(Errno::EINVAL)?;
                match f.grefs.get(&idx) {
                    Some(g) if !g.mmapped => gfns.push(g.gfn),
                    _ => return Err(Errno::EINVAL),
                }
            }
            let object = ObjectId(self.next_id);
            self.next_id += 1;
            let Some(f) = self.files.get_mut(&file) else {
                return Err(Errno::EINVAL);
            };
            for i in 0..count {
                if let Some(g) = f.grefs.get_mut(&((first + i) * PAGE_SIZE as u64)) {
                    g.mmapped = true;
                    g.object = object;
                }
            }
            return Ok(MmapTarget::Pages { object, gfns });
        }
        let g = f.gmaps.get_mut(&offset).ok_or(Errno::EINVAL)?;
        if g.refs.len() as u64 != count {
            return Err(Errno::EINVAL);
        }
        if let Some(m) = &g.mapping {
            if writable && g.readonly {
                return Err(Errno::EACCES);
            }
            g.mmaps += 1;
            return Ok(MmapTarget::Mapped {
                object: g.object,
                host_addr: m.host_addr(),
                count: m.len(),
                readonly: g.readonly,
            });
        }
        let m = match self.platform.map(&g.refs, !writable) {
            Ok(m) => m,
            Err(MapRangeError::NoSlots) => return Err(Errno::ENOMEM),
            Err(MapRangeError::Map(e)) => {
                if e.stuck != 0 {
                    self.stats.stuck_unmaps += 1;
                }
                return Err(Errno::EINVAL);
            }
        };
        g.readonly = !writable;
        g.mmaps = 1;
        let target = MmapTarget::Mapped {
            object: g.object,
            host_addr: m.host_addr(),
            count: m.len(),
            readonly: g.readonly,
        };
        g.mapping = Some(m);
        self.stats.mappings += 1;
        Ok(target)
    }

    /// The glue's VM object for `object` went away (every mmap of it was unmapped).
    pub fn object_released(&mut self, object: ObjectId) {
        let in_file = |g: &Gmap<P::Notify>| g.object == object;
        for f in self.files.values_mut() {
            for g in f.grefs.values_mut().filter(|g| g.object == object) {
                g.mmapped = false;
            }
            if let Some(g) = f.gmaps.values_mut().find(|g| in_file(g)) {
                // Still listed in the file: keep the mapping for a later mmap only while the
                // file holds it (the C driver keeps an extra reference for exactly this).
                g.mmaps = g.mmaps.saturating_sub(1);
            }
        }
        for g in self.dying_grefs.iter_mut().filter(|g| g.object == object) {
            g.mmapped = false;
        }
        for g in self.dying_gmaps.iter_mut().filter(|g| g.object == object) {
            g.mmaps = g.mmaps.saturating_sub(1);
        }
        self.reap();
    }

    fn run_notify_own(&mut self, gfn: u64, n: Option<Notify<P::Notify>>) {
        let Some(n) = n else { return };
        if n.clear_byte {
            self.platform.clear_byte_own(gfn, n.offset);
        }
        if let Some(ev) = n.event {
            self.platform.notify(&ev);
            self.platform.unbind_notify(ev);
        }
        self.stats.notifications += 1;
    }

    /// Releases whatever is no longer used: dying allocations that are not mmapped, dying
    /// mappings with no mmap left, and unmaps that failed before. Called after every
    /// operation that may make something releasable; the glue may also call it from a timer.
    pub fn reap(&mut self) {
        let grefs = core::mem::take(&mut self.dying_grefs);
        for mut g in grefs {
            if g.mmapped {
                self.dying_grefs.push(g);
                continue;
            }
            let n = g.notify.take();
            self.run_notify_own(g.gfn, n);
            self.release_page(g.gfn, g.gref.take());
            self.stats.pages_allocated = self.stats.pages_allocated.saturating_sub(1);
        }
        let gmaps = core::mem::take(&mut self.dying_gmaps);
        for mut g in gmaps {
            if g.mmaps > 0 {
                self.dying_gmaps.push(g);
                continue;
            }
            let Some(m) = g.mapping.take() else {
                if let Some(ev) = g.notify.take().and_then(|n| n.event) {
                    self.platform.unbind_notify(ev);
                }
                continue;
            };
            if let Some(n) = g.notify.take() {
                if n.clear_byte && !g.readonly {
                    self.platform.clear_byte_mapped(&m, n.page, n.offset);
                }
                if let Some(ev) = n.event {
                    self.platform.notify(&ev);
                    self.platform.unbind_notify(ev);
                }
                self.stats.notifications += 1;
            }
            match self.platform.unmap(m) {
                Ok(()) => self.stats.mappings = self.stats.mappings.saturating_sub(1),
                Err(m) => {
                    self.stats.stuck_unmaps += 1;
                    g.mapping = Some(m);
                    self.dying_gmaps.push(g);
                }
            }
        }
    }

    /// Allocations and mappings waiting for munmap or for a retried unmap.
    #[must_use]
    pub fn dying(&self) -> (usize, usize) {
        (self.dying_grefs.len(), self.dying_gmaps.len())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn command_numbers_match_freebsd_ioccom() {
        // _IOW/_IOWR('E', n, struct ...) with FreeBSD's IOC_IN = 0x80000000, IOC_OUT =
        // 0x40000000, length in bits 16..29, computed by hand from the struct layouts.
        let l = Abi::Lp64;
        assert_eq!(l.set_unmap_notify(), 0x8010_4500);
        assert_eq!(l.alloc_gref(), 0xc018_4501);
        assert_eq!(l.dealloc_gref(), 0x8010_4502);
        assert_eq!(l.map_grant_ref(), 0xc018_4503);
        assert_eq!(l.unmap_grant_ref(), 0x8010_4504);
        assert_eq!(l.get_offset_for_vaddr(), 0xc018_4505);
        let i = Abi::Ilp32;
        assert_eq!(i.set_unmap_notify(), 0x8010_4500);
        assert_eq!(i.alloc_gref(), 0xc014_4501);
        assert_eq!(i.dealloc_gref(), 0x800c_4502);
        assert_eq!(i.map_grant_ref(), 0xc014_4503);
        assert_eq!(i.unmap_grant_ref(), 0x800c_4504);
        assert_eq!(i.get_offset_for_vaddr(), 0xc014_4505);
        assert_eq!(abi::iocparm_len(l.alloc_gref()), 24);
    }

    #[test]
    fn offset_space_first_fit_and_merge() {
        let mut s = OffsetSpace::new();
        assert_eq!(s.take(3), Some(0));
        assert_eq!(s.take(2), Some(3));
        assert_eq!(s.take(1), Some(5));
        s.give(3, 2);
        assert_eq!(s.take(3), Some(6), "hole of 2 too small");
        assert_eq!(s.take(2), Some(3), "hole reused");
        s.give(0, 3);
        s.give(3, 2);
        s.give(5, 1);
        s.give(6, 3);
        assert_eq!(s.free.len(), 1, "all merged back");
        assert_eq!(s.free.get(&0), Some(&OFFSET_PAGES));
        // An overlapping give (internal bug) is ignored, not merged.
        s.give(10, 1);
        assert_eq!(s.free.len(), 1);
        assert_eq!(s.take(OFFSET_PAGES + 1), None);
    }
}
