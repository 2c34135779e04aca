//! A small, fast mock hypervisor for hostile-peer tests and fuzzing of the block drivers.
//!
//! `xensim` is the faithful simulator; this is the quick one, so a fuzzer can run thousands
//! of iterations a second. It models exactly what the drivers use:
//!
//! * one arena of pages: the frontend's pages (`0..FRONT_PAGES`, frame number = index), the
//!   backend's own pages (`BACK_BASE..`), and four grant-table frames (`GT_BASE..`);
//! * grants *of the frontend as the backend sees them*: a registry `gref -> (page,
//!   readonly)` that a test fills as it likes (the hostile frontend), consulted by
//!   `GNTTABOP_map_grant_ref` / `unmap` / `copy`, with scripted per-entry failure statuses
//!   and batch aborts (the XSA-361 class);
//! * just enough for a real `xen_gnttab::GrantTable` on the frontend side (`query_size`,
//!   `add_to_physmap`); a hostile backend then marks entries `GTF_reading`/`GTF_writing` in
//!   the table frames itself, as Xen would while it maps them;
//! * event channels as counters.
//!
//! The arena is per thread and reused (reset) by [`MockHv::fresh`], because the xenbus
//! `Bus` needs `'static` drivers.
#![expect(
    clippy::cast_possible_truncation,
    reason = "host-only test code: page indices and frame numbers are small"
)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use xen_blkback::env::{BackendEnv, Level, LocalPage};
use xen_blkfront::env::{FrontendEnv, PageRun};
use xen_gnttab::{
    FrameMapError, GrantError, GrantRef, GrantTable, Revoke, StillInUse, TableFrames,
};
use xen_kmod::{
    EventChannelOp, GrantTableOp, HvmOp, Hypervisor, MemoryOp, SchedOp, VcpuOp, XenError,
    XenVersionOp,
};
use xen_shmem::{Page, SharedMem};

use super::sim::Log;

/// Pages of the frontend (frame numbers `0..FRONT_PAGES`).
pub const FRONT_PAGES: usize = 640;
/// First page of the backend's own memory.
pub const BACK_BASE: usize = FRONT_PAGES;
/// Pages of the backend's own memory.
pub const BACK_PAGES: usize = 320;
/// First grant-table frame of the frontend.
pub const GT_BASE: usize = BACK_BASE + BACK_PAGES;
/// Grant-table frames.
pub const GT_FRAMES: usize = 4;
const ARENA: usize = GT_BASE + GT_FRAMES;
const PAGE: u64 = 4096;
/// The frontend's domain id.
pub const FRONT_DOM: u16 = 1;

const GNTMAP_READONLY: u32 = 4;
const GNTCOPY_SOURCE_GREF: u16 = 1;
const GNTCOPY_DEST_GREF: u16 = 2;
/// `GNTST_bad_gntref`.
pub const BAD_GNTREF: i16 = -3;
/// `GNTST_bad_handle`.
pub const BAD_HANDLE: i16 = -4;
/// `GNTST_permission_denied`.
pub const PERMISSION_DENIED: i16 = -8;

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MockStats {
    /// Map entries that succeeded.
    pub maps: u64,
    /// Map entries that failed.
    pub map_failures: u64,
    /// Unmap entries that succeeded.
    pub unmaps: u64,
    /// Copy entries that succeeded.
    pub copies: u64,
    /// Copy entries that failed.
    pub copy_failures: u64,
    /// Largest number of entries in one map hypercall.
    pub max_map_batch: usize,
    /// Events sent by the backend.
    pub events: u64,
}

/// The mock's mutable state (see the module docs).
#[derive(Debug, Default)]
pub struct MockState {
    /// The frontend's grants as the hypervisor sees them: `gref -> (page, readonly)`.
    pub grants: BTreeMap<u32, (usize, bool)>,
    /// Live mappings: `handle -> (host_addr, page, readonly)`.
    pub mapped: BTreeMap<u32, (u64, usize, bool)>,
    /// `host_addr -> page` of live mappings.
    pub at: BTreeMap<u64, usize>,
    next_handle: u32,
    /// Statuses for the next map entries (0 = do it); empty = do it.
    pub map_script: VecDeque<i16>,
    /// Statuses for the next unmap entries.
    pub unmap_script: VecDeque<i16>,
    /// Statuses for the next copy entries.
    pub copy_script: VecDeque<i16>,
    /// Abort the next map batch with `EFAULT` after this many entries.
    pub abort_map_after: Option<usize>,
    next_port: u32,
    /// Counters.
    pub stats: MockStats,
}

/// The mock (see the module docs).
pub struct MockHv {
    /// The arena.
    pub arena: Box<[Page]>,
    st: Mutex<MockState>,
}

impl fmt::Debug for MockHv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockHv")
            .field("state", &*self.state())
            .finish_non_exhaustive()
    }
}

thread_local! {
    static MOCK: &'static MockHv = Box::leak(Box::new(MockHv {
        arena: (0..ARENA).map(|_| Page::new()).collect(),
        st: Mutex::new(MockState::default()),
    }));
}

impl MockHv {
    /// This thread's mock, reset: zeroed memory, no grants, no mappings, no scripts.
    #[must_use]
    pub fn fresh() -> &'static MockHv {
        Self::fresh_zeroing(&[(0, ARENA)])
    }

    /// As [`MockHv::fresh`], zeroing only the page ranges `(first, end)` (and the grant
    /// frames): the rest is zeroed by whoever allocates it. Zeroing the whole arena would
    /// dominate a fuzz iteration.
    #[must_use]
    pub fn fresh_zeroing(ranges: &[(usize, usize)]) -> &'static MockHv {
        let m = MOCK.with(|m| *m);
        for &(a, z) in ranges.iter().chain(&[(GT_BASE, ARENA)]) {
            if let Some(p) = m.arena.get(a..z.min(ARENA)) {
                SharedMem::from_pages(p).zero_all();
            }
        }
        *m.state() = MockState {
            next_handle: 1,
            next_port: 1,
            ..MockState::default()
        };
        m
    }

    /// The state.
    pub fn state(&self) -> MutexGuard<'_, MockState> {
        self.st
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A view of arena pages `first..first + count`.
    #[must_use]
    pub fn pages(&self, first: usize, count: usize) -> Option<SharedMem<'_>> {
        self.arena
            .get(first..first + count)
            .map(SharedMem::from_pages)
    }

    /// Registers a grant of the frontend's `page` under `gref`.
    pub fn grant(&self, gref: u32, page: usize, readonly: bool) {
        self.state().grants.insert(gref, (page, readonly));
    }

    /// Live mappings.
    #[must_use]
    pub fn live_maps(&self) -> usize {
        self.state().mapped.len()
    }

    fn map(&self, ops: &mut [xen_sys::native::gnttab_map_grant_ref]) -> Result<(), XenError> {
        let mut st = self.state();
        st.stats.max_map_batch = st.stats.max_map_batch.max(ops.len());
        let abort = st.abort_map_after.take();
        for (i, op) in ops.iter_mut().enumerate() {
            if abort.is_some_and(|a| i >= a) {
                return Err(XenError::EFAULT);
            }
            let scripted = st.map_script.pop_front().unwrap_or(0);
            let ro = op.flags & GNTMAP_READONLY != 0;
            let status = if scripted != 0 {
                scripted
            } else {
                match st.grants.get(&op.ref_) {
                    None => BAD_GNTREF,
                    Some(&(_, true)) if !ro => PERMISSION_DENIED,
                    Some(_) if st.at.contains_key(&op.host_addr) => -5,
                    Some(&(page, _)) => {
                        let h = st.next_handle;
                        st.next_handle += 1;
                        st.mapped.insert(h, (op.host_addr, page, ro));
                        st.at.insert(op.host_addr, page);
                        op.handle = h;
                        0
                    }
                }
            };
            op.status = status;
            if status == 0 {
                st.stats.maps += 1;
            } else {
                st.stats.map_failures += 1;
            }
        }
        Ok(())
    }

    fn unmap(&self, ops: &mut [xen_sys::native::gnttab_unmap_grant_ref]) {
        let mut st = self.state();
        for op in ops.iter_mut() {
            let scripted = st.unmap_script.pop_front().unwrap_or(0);
            if scripted != 0 {
                op.status = scripted;
                continue;
            }
            match st.mapped.remove(&op.handle) {
                Some((addr, _, _)) => {
                    st.at.remove(&addr);
                    st.stats.unmaps += 1;
                    op.status = 0;
                }
                None => op.status = BAD_HANDLE,
            }
        }
    }

    fn copy(&self, ops: &mut [xen_sys::native::gnttab_copy]) {
        let mut st = self.state();
        for op in ops.iter_mut() {
            let scripted = st.copy_script.pop_front().unwrap_or(0);
            let side = |st: &MockState,
                        p: &xen_sys::native::gnttab_copy_gnttab_copy_ptr,
                        is_gref: bool,
                        write: bool|
             -> Result<usize, i16> {
                // SAFETY: both union members are plain integers, so reading either is defined
                // for any bit pattern; the flag says which one the caller meant.
                let (gref, gmfn) = unsafe { (p.u.ref_, p.u.gmfn) };
                if is_gref {
                    match st.grants.get(&gref) {
                        None => Err(BAD_GNTREF),
                        Some(&(_, true)) if write => Err(PERMISSION_DENIED),
                        Some(&(page, _)) => Ok(page),
                    }
                } else {
                    let g = usize::try_from(gmfn).map_err(|_| -9i16)?;
                    if (BACK_BASE..GT_BASE).contains(&g) {
                        Ok(g)
                    } else {
                        Err(-9)
                    }
                }
            };
            let r = if scripted != 0 {
                Err(scripted)
            } else {
                side(&st, &op.source, op.flags & GNTCOPY_SOURCE_GREF != 0, false).and_then(|s| {
                    side(&st, &op.dest, op.flags & GNTCOPY_DEST_GREF != 0, true).map(|d| (s, d))
                })
            };
            match r {
                Ok((s, d)) => {
                    let len = usize::from(op.len);
                    let mut buf = vec![0u8; len];
                    let ok = self.pages(s, 1).is_some_and(|v| {
                        v.copy_to_slice(usize::from(op.source.offset), &mut buf)
                            .is_ok()
                    }) && self.pages(d, 1).is_some_and(|v| {
                        v.copy_from_slice(usize::from(op.dest.offset), &buf).is_ok()
                    });
                    op.status = if ok { 0 } else { -10 };
                    if ok {
                        st.stats.copies += 1;
                    } else {
                        st.stats.copy_failures += 1;
                    }
                }
                Err(e) => {
                    op.status = e;
                    st.stats.copy_failures += 1;
                }
            }
        }
    }
}

impl Hypervisor for MockHv {
    fn event_channel_op(&self, op: EventChannelOp<'_>) -> Result<(), XenError> {
        let mut st = self.state();
        match op {
            EventChannelOp::AllocUnbound(a) => {
                a.port = st.next_port;
                st.next_port += 1;
                Ok(())
            }
            EventChannelOp::BindInterdomain(b) => {
                b.local_port = st.next_port;
                st.next_port += 1;
                Ok(())
            }
            EventChannelOp::Send(_) => {
                st.stats.events += 1;
                Ok(())
            }
            EventChannelOp::Close(_) => Ok(()),
            _ => Err(XenError::ENOSYS),
        }
    }

    fn grant_table_op(&self, op: GrantTableOp<'_>) -> Result<(), XenError> {
        match op {
            GrantTableOp::MapGrantRef(ops) => self.map(ops),
            GrantTableOp::UnmapGrantRef(ops) => {
                self.unmap(ops);
                Ok(())
            }
            GrantTableOp::Copy(ops) => {
                self.copy(ops);
                Ok(())
            }
            GrantTableOp::QuerySize(q) => {
                q.nr_frames = 0;
                q.max_nr_frames = GT_FRAMES as u32;
                q.status = 0;
                Ok(())
            }
            _ => Err(XenError::ENOSYS),
        }
    }

    fn memory_op(&self, op: MemoryOp<'_>) -> Result<u64, XenError> {
        match op {
            MemoryOp::AddToPhysmap(_) => Ok(0),
            _ => Err(XenError::ENOSYS),
        }
    }

    fn hvm_op(&self, _op: HvmOp<'_>) -> Result<(), XenError> {
        Err(XenError::ENOSYS)
    }

    fn sched_op(&self, _op: SchedOp<'_>) -> Result<u64, XenError> {
        Err(XenError::ENOSYS)
    }

    fn vcpu_op(&self, _vcpu: u32, _op: VcpuOp<'_>) -> Result<u64, XenError> {
        Err(XenError::ENOSYS)
    }

    fn xen_version(&self, _op: XenVersionOp<'_>) -> Result<u64, XenError> {
        Err(XenError::ENOSYS)
    }
}

/// The backend's platform over the mock.
#[derive(Debug)]
pub struct MockBackEnv {
    /// The mock.
    pub hv: &'static MockHv,
    free: RefCell<Vec<usize>>,
    next_slot: RefCell<u64>,
    /// Slots currently reserved (checked by the tests: none may leak).
    pub reserved: RefCell<BTreeSet<u64>>,
    /// Log.
    pub log: Log,
}

impl MockBackEnv {
    /// The backend's platform.
    #[must_use]
    pub fn new(hv: &'static MockHv, log: Log) -> Self {
        MockBackEnv {
            hv,
            free: RefCell::new((BACK_BASE..GT_BASE).rev().collect()),
            next_slot: RefCell::new(1 << 32),
            reserved: RefCell::new(BTreeSet::new()),
            log,
        }
    }
}

impl BackendEnv<'static> for MockBackEnv {
    type Hv = MockHv;

    fn hypervisor(&self) -> &MockHv {
        self.hv
    }

    fn reserve_slots(&self, count: u32) -> Option<u64> {
        let mut n = self.next_slot.borrow_mut();
        let a = *n;
        *n += u64::from(count) * PAGE;
        let mut r = self.reserved.borrow_mut();
        for i in 0..u64::from(count) {
            r.insert(a + i * PAGE);
        }
        Some(a)
    }

    fn release_slots(&self, host_addr: u64, count: u32) {
        let mut r = self.reserved.borrow_mut();
        for i in 0..u64::from(count) {
            r.remove(&(host_addr + i * PAGE));
        }
    }

    fn view(&self, host_addr: u64, pages: u32) -> Option<SharedMem<'static>> {
        let st = self.hv.state();
        let first = *st.at.get(&host_addr)?;
        for i in 1..u64::from(pages) {
            if st.at.get(&(host_addr + i * PAGE)) != Some(&(first + i as usize)) {
                return None;
            }
        }
        drop(st);
        self.hv.pages(first, pages as usize)
    }

    fn alloc_page(&self) -> Option<LocalPage<'static>> {
        let idx = self.free.borrow_mut().pop()?;
        let mem = self.hv.pages(idx, 1)?;
        mem.zero_all();
        Some(LocalPage {
            gfn: idx as u64,
            mem,
        })
    }

    fn free_page(&self, page: LocalPage<'static>) {
        if let Ok(i) = usize::try_from(page.gfn) {
            self.free.borrow_mut().push(i);
        }
    }

    fn bind_interdomain(&self, remote_dom: u16, remote_port: u32) -> Result<u32, XenError> {
        let mut b = xen_sys::native::evtchn_bind_interdomain {
            remote_dom,
            remote_port,
            ..Default::default()
        };
        self.hv
            .event_channel_op(EventChannelOp::BindInterdomain(&mut b))?;
        Ok(b.local_port)
    }

    fn notify(&self, port: u32) {
        let mut s = xen_sys::native::evtchn_send { port };
        let _ = self.hv.event_channel_op(EventChannelOp::Send(&mut s));
    }

    fn close_port(&self, _port: u32) {}

    fn log(&self, level: Level, msg: fmt::Arguments<'_>) {
        self.log.push("blkback", level, msg);
    }
}

/// The frontend's grant-table frames in the arena.
#[derive(Debug, Clone, Copy)]
pub struct MockFrames(pub &'static MockHv);

impl TableFrames<'static> for MockFrames {
    fn frames(&self) -> SharedMem<'static> {
        self.0
            .pages(GT_BASE, GT_FRAMES)
            .unwrap_or_else(|| SharedMem::from_words(&[]))
    }

    fn gfn(&self, idx: u32) -> Option<u64> {
        Some(GT_BASE as u64 + u64::from(idx))
    }

    fn map_frames(&self, _first: u32, _xen_frames: &[u64]) -> Result<(), FrameMapError> {
        Err(FrameMapError)
    }
}

/// The frontend's platform over the mock: a real grant table in the arena's frames.
pub struct MockFrontEnv {
    /// The mock.
    pub hv: &'static MockHv,
    /// The grant table.
    pub table: GrantTable<'static, &'static MockHv, MockFrames>,
    free: RefCell<BTreeSet<usize>>,
    /// Log.
    pub log: Log,
}

impl fmt::Debug for MockFrontEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockFrontEnv")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl MockFrontEnv {
    /// The frontend's platform, with frames `first_page..FRONT_PAGES` to allocate from.
    ///
    /// # Panics
    /// If the grant table cannot be set up (a broken mock).
    #[must_use]
    pub fn new(hv: &'static MockHv, first_page: usize, log: Log) -> Self {
        let table = GrantTable::new(hv, MockFrames(hv), GT_FRAMES as u32)
            .unwrap_or_else(|e| panic!("mock grant table: {e}"));
        MockFrontEnv {
            hv,
            table,
            free: RefCell::new((first_page..FRONT_PAGES).collect()),
            log,
        }
    }

    /// Frees pages whose deferred revocation completed.
    pub fn poll_deferred(&self) -> xen_gnttab::DeferredPoll {
        self.table.poll_deferred(|gfn| {
            self.free.borrow_mut().insert(gfn as usize);
        })
    }

    /// Pages free.
    #[must_use]
    pub fn free_pages_count(&self) -> usize {
        self.free.borrow().len()
    }
}

impl FrontendEnv<'static> for MockFrontEnv {
    fn grant(&self, domid: u16, gfn: u64, readonly: bool) -> Result<GrantRef, GrantError> {
        self.table.grant(domid, gfn, readonly)
    }

    fn end_access(&self, r: &GrantRef) -> Result<(), StillInUse> {
        self.table.end_access(r)
    }

    fn revoke(&self, r: GrantRef) -> Revoke {
        self.table.revoke(r)
    }

    fn alloc_pages(&self, count: u32) -> Option<PageRun<'static>> {
        let mut free = self.free.borrow_mut();
        let n = count as usize;
        let first = free
            .iter()
            .copied()
            .find(|&p| (p..p + n).all(|q| free.contains(&q)))?;
        for q in first..first + n {
            free.remove(&q);
        }
        let mem = self.hv.pages(first, n)?;
        mem.zero_all();
        Some(PageRun {
            gfn: first as u64,
            count,
            mem,
        })
    }

    fn free_pages(&self, run: PageRun<'static>) {
        let mut free = self.free.borrow_mut();
        for i in 0..u64::from(run.count) {
            free.insert((run.gfn + i) as usize);
        }
    }

    fn alloc_unbound(&self, _remote: u16) -> Result<u32, XenError> {
        let mut st = self.hv.state();
        let p = st.next_port;
        st.next_port += 1;
        Ok(p)
    }

    fn notify(&self, _port: u32) {}

    fn close_port(&self, _port: u32) {}

    fn log(&self, level: Level, msg: fmt::Arguments<'_>) {
        self.log.push("blkfront", level, msg);
    }
}

/// Reads entry `r` of the frontend's grant table as Xen would: `(flags, domid, frame)`.
#[must_use]
pub fn grant_entry(hv: &MockHv, r: u32) -> Option<(u16, u16, u32)> {
    let off = r as usize * 8;
    let t = hv.pages(GT_BASE, GT_FRAMES)?;
    let w0 = t.load_relaxed_u32(off).ok()?;
    let w1 = t.load_relaxed_u32(off + 4).ok()?;
    Some(((w0 & 0xffff) as u16, (w0 >> 16) as u16, w1))
}

/// Sets or clears `GTF_reading | GTF_writing` on entry `r` (what Xen does while the backend
/// maps the page).
pub fn set_mapped(hv: &MockHv, r: u32, mapped: bool) {
    let off = r as usize * 8;
    if let Some(w) = hv
        .pages(GT_BASE, GT_FRAMES)
        .and_then(|t| t.u32_at(off).ok())
    {
        if mapped {
            w.fetch_or(0x18, std::sync::atomic::Ordering::SeqCst);
        } else {
            w.fetch_and(!0x18, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
