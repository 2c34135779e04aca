//! Grant tables of the simulated hypervisor, with Xen's permission and pin semantics.
//!
//! A domain's grant table is a run of machine frames holding v1 entries that the *guest*
//! writes (through `xen-gnttab`, or any code under test). The simulator reads an entry the
//! way Xen's `_set_status_v1` does: one 32-bit word for `flags | domid << 16`, checked
//! (`GTF_permit_access` type, `domid` = the mapping domain, `GTF_readonly` against a writable
//! request) and updated with a compare-exchange that sets `GTF_reading` (and `GTF_writing`),
//! retried at most four times before failing with "unstable entry" — so a guest revoking an
//! entry concurrently either wins (the map fails) or sees the bits and must defer.
//!
//! Per entry an *active* record counts read-only and writable pins (host mappings plus
//! in-flight copies) of the one domain that holds it; the flags are cleared when the last
//! writable pin (`GTF_writing`) or the last pin of any kind (`GTF_reading`) goes. Mappings
//! are tracked per mapping domain (maptrack handles), and a mapped page appears in the
//! mapper's physmap at the requested address.
//!
//! Status codes follow `xen/common/grant_table.c`: `GNTST_bad_domain` for a missing or dying
//! granter, `GNTST_bad_gntref` for a reference beyond the granter's current table (and, as
//! Xen does, for a map request without `GNTMAP_host_map`/`GNTMAP_device_map`),
//! `GNTST_general_error` for bad flags/domid or a write to a read-only grant,
//! `GNTST_bad_page` when the granted frame is not a RAM page of the granter,
//! `GNTST_bad_handle`, `GNTST_bad_copy_arg` for copies beyond a page,
//! `GNTST_permission_denied` for copy-by-frame from another domain, `GNTST_no_device_space`
//! when the maptrack limit is reached, `GNTST_bad_virt_addr` for an unusable host address.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use xen_gnttab::v1::{
    entry_word0, locate, split_word0, GntStatus, DOMID_SELF, ENTRIES_PER_FRAME, GTF_PERMIT_ACCESS,
    GTF_READING, GTF_READONLY, GTF_TYPE_MASK, GTF_WRITING, PAGE_SIZE,
};
use xen_gnttab::{ForeignMemory, TableFrames};
use xen_kmod::XenError;
use xen_shmem::SharedMem;
use xen_sys::x86_64 as abi;

use super::faults::GrantOp;
use super::hypervisor::{DomainHandle, State};
use super::memory::{Machine, Phys, FOREIGN_GFN_BASE, GRANT_FRAME_GFN_BASE};

const GNTMAP_DEVICE_MAP: u32 = abi::GNTMAP_device_map;
const GNTMAP_HOST_MAP: u32 = abi::GNTMAP_host_map;
const GNTMAP_READONLY: u32 = abi::GNTMAP_readonly;
const GNTMAP_UNSUPPORTED: u32 = abi::GNTMAP_application_map | abi::GNTMAP_contains_pte;
// CAST: one-bit flags of a 16-bit field.
#[expect(clippy::cast_possible_truncation)]
const GNTCOPY_SOURCE_GREF: u16 = abi::GNTCOPY_source_gref as u16;
#[expect(clippy::cast_possible_truncation)]
const GNTCOPY_DEST_GREF: u16 = abi::GNTCOPY_dest_gref as u16;

/// A domain's grant table state (the part that is not in guest-visible memory).
#[derive(Debug)]
pub(crate) struct GrantState {
    /// MFN of frame 0; frames are contiguous.
    pub(crate) base: usize,
    pub(crate) max_frames: u32,
    pub(crate) nr_frames: u32,
    pub(crate) active: HashMap<u32, Active>,
    pub(crate) maptrack: Vec<Option<MapTrack>>,
    pub(crate) maptrack_free: Vec<u32>,
    pub(crate) maptrack_limit: u32,
}

/// Pins of one entry (Xen's `struct active_grant_entry`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Active {
    pub(crate) mapper: u16,
    pub(crate) mfn: usize,
    pub(crate) ro: u32,
    pub(crate) rw: u32,
}

/// One mapping held by a domain.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MapTrack {
    pub(crate) granter: u16,
    pub(crate) gref: u32,
    pub(crate) mfn: usize,
    pub(crate) gfn: u64,
    pub(crate) readonly: bool,
}

impl GrantState {
    pub(crate) fn new(base: usize, max_frames: u32, maptrack_limit: u32) -> Self {
        GrantState {
            base,
            max_frames,
            nr_frames: 1,
            active: HashMap::new(),
            maptrack: Vec::new(),
            maptrack_free: Vec::new(),
            maptrack_limit,
        }
    }

    fn alloc_handle(&mut self, t: MapTrack) -> Option<u32> {
        if let Some(h) = self.maptrack_free.pop() {
            self.maptrack[h as usize] = Some(t);
            return Some(h);
        }
        let h = u32::try_from(self.maptrack.len()).ok()?;
        if h >= self.maptrack_limit {
            return None;
        }
        self.maptrack.push(Some(t));
        Some(h)
    }

    /// Live mappings held.
    pub(crate) fn mappings(&self) -> usize {
        self.maptrack.iter().filter(|m| m.is_some()).count()
    }
}

const fn st(s: GntStatus) -> i16 {
    s.to_raw()
}

/// The entry words of `gref` in a table of `nr_frames` frames at `base`.
fn entry<'m>(m: &'m Machine, g: &GrantState, gref: u32) -> Option<(&'m AtomicU32, &'m AtomicU32)> {
    if gref >= g.nr_frames.checked_mul(ENTRIES_PER_FRAME)? {
        return None;
    }
    let (frame, word) = locate(gref);
    let page = m.page(g.base + frame)?;
    Some((page.0.get(word)?, page.0.get(word + 1)?))
}

impl State {
    fn resolve(&self, caller: u16, dom: u16) -> u16 {
        if dom == DOMID_SELF {
            caller
        } else {
            dom
        }
    }

    /// Pins `gref` of `granter` for `grantee` (Xen's map/copy acquire): returns the MFN.
    fn pin(
        &mut self,
        m: &Machine,
        granter: u16,
        gref: u32,
        grantee: u16,
        readonly: bool,
    ) -> Result<usize, i16> {
        let g = self
            .domains
            .get(&granter)
            .filter(|d| !d.dead)
            .ok_or(st(GntStatus::BadDomain))?;
        let (w0, w1) = entry(m, &g.gnt, gref).ok_or(st(GntStatus::BadGntref))?;
        if let Some(a) = g.gnt.active.get(&gref).copied() {
            if a.mapper != grantee {
                return Err(st(GntStatus::GeneralError));
            }
            if readonly || a.rw > 0 {
                // Compatible with the existing pins: Xen does not look at the entry again.
                let a = self
                    .domains
                    .get_mut(&granter)
                    .and_then(|d| d.gnt.active.get_mut(&gref))
                    .ok_or(st(GntStatus::GeneralError))?;
                if readonly {
                    a.ro += 1;
                } else {
                    a.rw += 1;
                }
                return Ok(a.mfn);
            }
        }
        // _set_status_v1: validate and set the in-use bits with a bounded cmpxchg.
        let mut cur = w0.load(Ordering::Acquire);
        let mut set = 0u16;
        let mut ok = false;
        for _ in 0..4 {
            let (flags, domid) = split_word0(cur);
            if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS || domid != grantee {
                return Err(st(GntStatus::GeneralError));
            }
            if !readonly && flags & GTF_READONLY != 0 {
                return Err(st(GntStatus::GeneralError));
            }
            let add = GTF_READING | if readonly { 0 } else { GTF_WRITING };
            set = add & !flags;
            match w0.compare_exchange(
                cur,
                entry_word0(flags | add, domid),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    ok = true;
                    break;
                }
                Err(actual) => cur = actual,
            }
        }
        if !ok {
            return Err(st(GntStatus::GeneralError));
        }
        let frame = u64::from(w1.load(Ordering::Acquire));
        let mfn = match g.physmap.get(frame) {
            Some(Phys::Ram(mfn)) => mfn,
            _ => {
                // Undo what we set (nobody else holds a pin: we were the first).
                w0.fetch_and(!u32::from(set), Ordering::AcqRel);
                return Err(st(GntStatus::BadPage));
            }
        };
        let d = self
            .domains
            .get_mut(&granter)
            .ok_or(st(GntStatus::BadDomain))?;
        let a = d.gnt.active.entry(gref).or_insert(Active {
            mapper: grantee,
            mfn,
            ro: 0,
            rw: 0,
        });
        if readonly {
            a.ro += 1;
        } else {
            a.rw += 1;
        }
        Ok(a.mfn)
    }

    /// Drops one pin; clears `GTF_writing` with the last writable pin and `GTF_reading` with
    /// the last pin. Works on dead (zombie) granters too: their pages stay until unmapped.
    fn unpin(&mut self, m: &Machine, granter: u16, gref: u32, readonly: bool) {
        let Some(d) = self.domains.get_mut(&granter) else {
            return;
        };
        let Some(a) = d.gnt.active.get_mut(&gref) else {
            return;
        };
        if readonly {
            a.ro = a.ro.saturating_sub(1);
        } else {
            a.rw = a.rw.saturating_sub(1);
        }
        let (ro, rw) = (a.ro, a.rw);
        let mut clear = 0u16;
        if rw == 0 {
            clear |= GTF_WRITING;
        }
        if ro == 0 && rw == 0 {
            clear |= GTF_READING;
            d.gnt.active.remove(&gref);
        }
        // The entry can be beyond nr_frames only if the table shrank, which it never does.
        let (frame, word) = locate(gref);
        if let Some(w0) = m.page(d.gnt.base + frame).and_then(|p| p.0.get(word)) {
            w0.fetch_and(!u32::from(clear), Ordering::AcqRel);
        }
    }

    pub(crate) fn map_one(&mut self, m: &Machine, caller: u16, op: &mut abi::gnttab_map_grant_ref) {
        self.stats.grant_maps += 1;
        let r = self.map_inner(m, caller, op);
        match r {
            Ok(handle) => {
                op.status = 0;
                op.handle = handle;
                op.dev_bus_addr = 0;
            }
            Err(s) => {
                op.status = s;
                self.stats.grant_failures += 1;
            }
        }
    }

    fn map_inner(
        &mut self,
        m: &Machine,
        caller: u16,
        op: &abi::gnttab_map_grant_ref,
    ) -> Result<u32, i16> {
        if let Some(s) = self
            .faults
            .grant_status(GrantOp::Map, caller, Some(op.ref_))
        {
            self.stats.injected_grant_faults += 1;
            return Err(s);
        }
        if op.flags & (GNTMAP_DEVICE_MAP | GNTMAP_HOST_MAP) == 0 {
            return Err(st(GntStatus::BadGntref));
        }
        if op.flags & (GNTMAP_UNSUPPORTED | GNTMAP_DEVICE_MAP) != 0 {
            // PV-only or device mappings: not simulated.
            return Err(st(GntStatus::GeneralError));
        }
        if op.host_addr % PAGE_SIZE as u64 != 0 {
            return Err(st(GntStatus::BadVirtAddr));
        }
        let gfn = op.host_addr / PAGE_SIZE as u64;
        let me = self.domains.get(&caller).ok_or(st(GntStatus::BadDomain))?;
        if me.physmap.get(gfn).is_some() {
            return Err(st(GntStatus::BadVirtAddr));
        }
        if me.gnt.maptrack_free.is_empty()
            && me.gnt.maptrack.len() >= me.gnt.maptrack_limit as usize
        {
            return Err(st(GntStatus::NoDeviceSpace));
        }
        let readonly = op.flags & GNTMAP_READONLY != 0;
        let granter = self.resolve(caller, op.dom);
        let mfn = self.pin(m, granter, op.ref_, caller, readonly)?;
        let t = MapTrack {
            granter,
            gref: op.ref_,
            mfn,
            gfn,
            readonly,
        };
        let Some(handle) = self
            .domains
            .get_mut(&caller)
            .and_then(|d| d.gnt.alloc_handle(t))
        else {
            self.unpin(m, granter, op.ref_, readonly);
            return Err(st(GntStatus::NoDeviceSpace));
        };
        if let Some(d) = self.domains.get_mut(&caller) {
            d.physmap.map.insert(gfn, Phys::Foreign(handle));
        }
        Ok(handle)
    }

    pub(crate) fn unmap_one(
        &mut self,
        m: &Machine,
        caller: u16,
        op: &mut abi::gnttab_unmap_grant_ref,
    ) {
        self.stats.grant_unmaps += 1;
        op.status = match self.unmap_inner(m, caller, op.handle, op.host_addr) {
            Ok(()) => 0,
            Err(s) => {
                self.stats.grant_failures += 1;
                s
            }
        };
    }

    pub(crate) fn unmap_inner(
        &mut self,
        m: &Machine,
        caller: u16,
        handle: u32,
        host_addr: u64,
    ) -> Result<(), i16> {
        if let Some(s) = self.faults.grant_status(GrantOp::Unmap, caller, None) {
            self.stats.injected_grant_faults += 1;
            return Err(s);
        }
        let me = self
            .domains
            .get_mut(&caller)
            .ok_or(st(GntStatus::BadDomain))?;
        let t = me
            .gnt
            .maptrack
            .get(handle as usize)
            .copied()
            .flatten()
            .ok_or(st(GntStatus::BadHandle))?;
        if host_addr != 0 && host_addr != t.gfn * PAGE_SIZE as u64 {
            return Err(st(GntStatus::GeneralError));
        }
        if me.physmap.get(t.gfn) == Some(Phys::Foreign(handle)) {
            me.physmap.map.remove(&t.gfn);
        }
        me.gnt.maptrack[handle as usize] = None;
        me.gnt.maptrack_free.push(handle);
        self.unpin(m, t.granter, t.gref, t.readonly);
        Ok(())
    }

    /// Releases every mapping `dom` holds (Xen's `gnttab_release_mappings` at domain death).
    pub(crate) fn release_mappings(&mut self, m: &Machine, dom: u16) {
        let handles: Vec<u32> = self.domains.get(&dom).map_or_else(Vec::new, |d| {
            (0u32..)
                .zip(&d.gnt.maptrack)
                .filter_map(|(h, t)| t.map(|_| h))
                .collect()
        });
        for h in handles {
            let _ = self.unmap_inner_nofault(m, dom, h);
        }
    }

    fn unmap_inner_nofault(&mut self, m: &Machine, caller: u16, handle: u32) -> Option<()> {
        let me = self.domains.get_mut(&caller)?;
        let t = me.gnt.maptrack.get(handle as usize).copied().flatten()?;
        if me.physmap.get(t.gfn) == Some(Phys::Foreign(handle)) {
            me.physmap.map.remove(&t.gfn);
        }
        me.gnt.maptrack[handle as usize] = None;
        me.gnt.maptrack_free.push(handle);
        self.unpin(m, t.granter, t.gref, t.readonly);
        Some(())
    }

    pub(crate) fn copy_one(&mut self, m: &Machine, caller: u16, op: &mut abi::gnttab_copy) {
        self.stats.grant_copies += 1;
        op.status = match self.copy_inner(m, caller, op) {
            Ok(()) => 0,
            Err(s) => {
                self.stats.grant_failures += 1;
                s
            }
        };
    }

    fn copy_side(
        &mut self,
        m: &Machine,
        caller: u16,
        p: &abi::gnttab_copy_gnttab_copy_ptr,
        is_gref: bool,
        write: bool,
    ) -> Result<(usize, Option<(u16, u32)>), i16> {
        // SAFETY: both union members are plain integers, so reading either is defined for
        // any bit pattern; the flag says which one the caller meant.
        let (gref, gmfn) = unsafe { (p.u.ref_, p.u.gmfn) };
        if is_gref {
            let dom = self.resolve(caller, p.domid);
            let mfn = self.pin(m, dom, gref, caller, !write)?;
            return Ok((mfn, Some((dom, gref))));
        }
        if p.domid != DOMID_SELF && p.domid != caller {
            return Err(st(GntStatus::PermissionDenied));
        }
        let me = self.domains.get(&caller).ok_or(st(GntStatus::BadDomain))?;
        match me.physmap.get(gmfn) {
            Some(Phys::Ram(mfn)) => Ok((mfn, None)),
            _ => Err(st(GntStatus::BadPage)),
        }
    }

    fn copy_inner(&mut self, m: &Machine, caller: u16, op: &abi::gnttab_copy) -> Result<(), i16> {
        let src_gref = op.flags & GNTCOPY_SOURCE_GREF != 0;
        let dst_gref = op.flags & GNTCOPY_DEST_GREF != 0;
        let fault_ref = if src_gref {
            // SAFETY: plain integer union member (see `copy_side`).
            Some(unsafe { op.source.u.ref_ })
        } else if dst_gref {
            // SAFETY: as above.
            Some(unsafe { op.dest.u.ref_ })
        } else {
            None
        };
        if let Some(s) = self.faults.grant_status(GrantOp::Copy, caller, fault_ref) {
            self.stats.injected_grant_faults += 1;
            return Err(s);
        }
        let len = usize::from(op.len);
        if usize::from(op.source.offset) + len > PAGE_SIZE
            || usize::from(op.dest.offset) + len > PAGE_SIZE
        {
            return Err(st(GntStatus::BadCopyArg));
        }
        let (src, src_pin) = self.copy_side(m, caller, &op.source, src_gref, false)?;
        let (dst, dst_pin) = match self.copy_side(m, caller, &op.dest, dst_gref, true) {
            Ok(d) => d,
            Err(s) => {
                if let Some((d, r)) = src_pin {
                    self.unpin(m, d, r, true);
                }
                return Err(s);
            }
        };
        let mut buf = vec![0u8; len];
        let copied = m
            .view(src, 1)
            .and_then(|v| {
                v.copy_to_slice(usize::from(op.source.offset), &mut buf)
                    .ok()
            })
            .and_then(|()| m.view(dst, 1))
            .and_then(|v| v.copy_from_slice(usize::from(op.dest.offset), &buf).ok());
        if let Some((d, r)) = src_pin {
            self.unpin(m, d, r, true);
        }
        if let Some((d, r)) = dst_pin {
            self.unpin(m, d, r, false);
        }
        copied.ok_or(st(GntStatus::GeneralError))
    }

    /// `GNTTABOP_query_size` / `setup_table` target resolution: self, or any domain for a
    /// privileged caller.
    pub(crate) fn gnt_target(&self, caller: u16, dom: u16) -> Result<u16, i16> {
        let dom = self.resolve(caller, dom);
        let me = self.domains.get(&caller).ok_or(st(GntStatus::BadDomain))?;
        if dom != caller && !me.privileged {
            return Err(st(GntStatus::PermissionDenied));
        }
        if !self.domains.contains_key(&dom) {
            return Err(st(GntStatus::BadDomain));
        }
        Ok(dom)
    }

    /// Grows `dom`'s table to at least `frames` frames.
    pub(crate) fn grow_table(&mut self, dom: u16, frames: u32) -> Result<(), XenError> {
        let d = self.domains.get_mut(&dom).ok_or(XenError::ESRCH)?;
        if frames > d.gnt.max_frames {
            return Err(XenError::EINVAL);
        }
        d.gnt.nr_frames = d.gnt.nr_frames.max(frames);
        Ok(())
    }
}

/// `xen_gnttab::TableFrames` for a simulated domain: its grant frames are the simulator's
/// machine frames, placed by `XENMEM_add_to_physmap` at [`GRANT_FRAME_GFN_BASE`] + index.
#[derive(Debug, Clone, Copy)]
pub struct SimTableFrames<'a> {
    handle: &'a DomainHandle,
}

impl<'a> SimTableFrames<'a> {
    /// The frames of `handle`'s domain.
    #[must_use]
    pub fn new(handle: &'a DomainHandle) -> Self {
        SimTableFrames { handle }
    }
}

impl<'a> TableFrames<'a> for SimTableFrames<'a> {
    fn frames(&self) -> SharedMem<'a> {
        SharedMem::from_pages(self.handle.grant_frames())
    }
    fn gfn(&self, idx: u32) -> Option<u64> {
        Some(GRANT_FRAME_GFN_BASE + u64::from(idx))
    }
}

/// `TableFrames` using `GNTTABOP_setup_table` instead (the simulator returns machine frame
/// numbers; "mapping" them checks they are the domain's frames).
#[derive(Debug, Clone, Copy)]
pub struct SimSetupTableFrames<'a> {
    handle: &'a DomainHandle,
}

impl<'a> SimSetupTableFrames<'a> {
    /// The frames of `handle`'s domain.
    #[must_use]
    pub fn new(handle: &'a DomainHandle) -> Self {
        SimSetupTableFrames { handle }
    }
}

impl<'a> TableFrames<'a> for SimSetupTableFrames<'a> {
    fn frames(&self) -> SharedMem<'a> {
        SharedMem::from_pages(self.handle.grant_frames())
    }
    fn gfn(&self, _idx: u32) -> Option<u64> {
        None
    }
    fn map_frames(&self, first: u32, xen_frames: &[u64]) -> Result<(), xen_gnttab::FrameMapError> {
        let base = self.handle.grant_frame_mfn();
        for (i, &f) in (u64::from(first)..).zip(xen_frames) {
            if f != base + i {
                return Err(xen_gnttab::FrameMapError);
            }
        }
        Ok(())
    }
}

/// `xen_gnttab::ForeignMemory` for a simulated domain: unpopulated guest frames from
/// [`FOREIGN_GFN_BASE`] up, viewed through the simulator's machine memory once mapped.
#[derive(Debug, Clone, Copy)]
pub struct SimForeignMemory<'a> {
    handle: &'a DomainHandle,
}

impl<'a> SimForeignMemory<'a> {
    /// Slots of `handle`'s domain.
    #[must_use]
    pub fn new(handle: &'a DomainHandle) -> Self {
        SimForeignMemory { handle }
    }
}

impl<'a> ForeignMemory<'a> for SimForeignMemory<'a> {
    fn reserve(&self, count: u32) -> Option<u64> {
        self.handle
            .reserve_gfns(u64::from(count))
            .map(|g| g * PAGE_SIZE as u64)
    }
    fn release(&self, host_addr: u64, count: u32) {
        self.handle
            .release_gfns(host_addr / PAGE_SIZE as u64, u64::from(count));
    }
    fn view(&self, host_addr: u64) -> Option<SharedMem<'a>> {
        if host_addr % PAGE_SIZE as u64 != 0 {
            return None;
        }
        self.handle.page_any(host_addr / PAGE_SIZE as u64)
    }
}

#[allow(dead_code)]
const _: () = assert!(FOREIGN_GFN_BASE > GRANT_FRAME_GFN_BASE);
