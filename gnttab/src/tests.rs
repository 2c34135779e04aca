//! Unit and property tests against a small scripted hypervisor (the full simulator, with real
//! grant semantics between domains, is exercised in `tests/tests/gnttab_e2e.rs`).
extern crate std;

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;
use xen_kmod::{
    EventChannelOp, GrantTableOp, HvmOp, Hypervisor, MemoryOp, SchedOp, VcpuOp, XenError,
    XenVersionOp,
};
use xen_shmem::{Page, SharedMem};

use crate::batch::{
    copy_grants, map_grants, map_grants_each, unmap_grants, CopyPtr, GrantCopy, MapGrant,
};
use crate::table::{GrantError, GrantTable, Revoke, TableFrames};
use crate::v1::{locate, GntStatus, GTF_READING, GTF_WRITING, RESERVED_REFS};

/// A scripted hypervisor: grant frames are always "there"; map/unmap/copy results follow a
/// per-gref script.
#[derive(Default)]
struct Mock {
    max_frames: u32,
    /// grefs whose map fails with this status.
    map_fail: Vec<(u32, i16)>,
    /// Abort a map batch with this error after processing this many entries.
    map_abort_after: Option<(usize, XenError)>,
    /// handles whose unmap fails.
    unmap_fail: BTreeSet<u32>,
    /// live mappings: handle = gref.
    mapped: Mutex<BTreeSet<u32>>,
    unmap_calls: Mutex<Vec<u32>>,
    copies: Mutex<u32>,
    add_to_physmap: Mutex<Vec<(u64, u64)>>,
}

impl Hypervisor for Mock {
    fn event_channel_op(&self, _op: EventChannelOp<'_>) -> Result<(), XenError> {
        Err(XenError::ENOSYS)
    }
    fn grant_table_op(&self, op: GrantTableOp<'_>) -> Result<(), XenError> {
        match op {
            GrantTableOp::QuerySize(q) => {
                q.nr_frames = 1;
                q.max_nr_frames = self.max_frames;
                q.status = 0;
                Ok(())
            }
            GrantTableOp::MapGrantRef(ops) => {
                for (i, op) in ops.iter_mut().enumerate() {
                    if let Some((after, e)) = self.map_abort_after {
                        if i >= after {
                            return Err(e);
                        }
                    }
                    if let Some(&(_, s)) = self.map_fail.iter().find(|(g, _)| *g == op.ref_) {
                        op.status = s;
                        continue;
                    }
                    assert!(self.mapped.lock().unwrap().insert(op.ref_), "double map");
                    op.handle = op.ref_;
                    op.status = 0;
                }
                Ok(())
            }
            GrantTableOp::UnmapGrantRef(ops) => {
                for op in ops.iter_mut() {
                    self.unmap_calls.lock().unwrap().push(op.handle);
                    if self.unmap_fail.contains(&op.handle) {
                        op.status = GntStatus::GeneralError.to_raw();
                    } else if self.mapped.lock().unwrap().remove(&op.handle) {
                        op.status = 0;
                    } else {
                        op.status = GntStatus::BadHandle.to_raw();
                    }
                }
                Ok(())
            }
            GrantTableOp::Copy(ops) => {
                for op in ops.iter_mut() {
                    *self.copies.lock().unwrap() += 1;
                    op.status = 0;
                }
                Ok(())
            }
            _ => Err(XenError::ENOSYS),
        }
    }
    fn memory_op(&self, op: MemoryOp<'_>) -> Result<u64, XenError> {
        match op {
            MemoryOp::AddToPhysmap(x) => {
                self.add_to_physmap.lock().unwrap().push((x.idx, x.gpfn));
                Ok(0)
            }
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

struct Frames<'a>(&'a [Page]);

impl<'a> TableFrames<'a> for Frames<'a> {
    fn frames(&self) -> SharedMem<'a> {
        SharedMem::from_pages(self.0)
    }
    fn gfn(&self, idx: u32) -> Option<u64> {
        Some(0x1000 + u64::from(idx))
    }
}

fn pages(n: usize) -> Vec<Page> {
    (0..n).map(|_| Page::new()).collect()
}

fn mock(max_frames: u32) -> Mock {
    Mock {
        max_frames,
        ..Default::default()
    }
}

/// What Xen does to our entry when the peer maps / unmaps it.
fn peer_sets(frames: &[Page], r: u32, bits: u16) {
    let (f, w) = locate(r);
    frames[f].0[w].fetch_or(u32::from(bits), std::sync::atomic::Ordering::SeqCst);
}
fn peer_clears(frames: &[Page], r: u32, bits: u16) {
    let (f, w) = locate(r);
    frames[f].0[w].fetch_and(!u32::from(bits), std::sync::atomic::Ordering::SeqCst);
}

#[test]
fn grant_writes_entry_and_reserved_refs_are_never_used() {
    let f = pages(2);
    let t = GrantTable::new(mock(2), Frames(&f), 1).unwrap();
    let r = t.grant(3, 0x1234, true).unwrap();
    assert!(r.raw() >= RESERVED_REFS);
    let (fi, w) = locate(r.raw());
    let w0 = f[fi].0[w].load(std::sync::atomic::Ordering::SeqCst);
    let w1 = f[fi].0[w + 1].load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(w0, 0x0003_0005, "permit_access|readonly, domid 3");
    assert_eq!(w1, 0x1234);
    assert_eq!(t.revoke(r), Revoke::Done);
    let w0 = f[fi].0[w].load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(w0 & 0xffff, 0, "flags cleared");
}

#[test]
fn table_grows_frame_by_frame_up_to_the_max() {
    let f = pages(2);
    let t = GrantTable::new(mock(8), Frames(&f), 1).unwrap();
    assert_eq!(t.max_frames(), 2, "capped by reserved memory");
    let mut held = Vec::new();
    let total = 2 * 512 - RESERVED_REFS;
    for _ in 0..total {
        held.push(t.grant(1, 7, false).unwrap());
    }
    assert_eq!(t.nr_frames(), 2);
    assert_eq!(t.grant(1, 7, false).unwrap_err(), GrantError::NoFreeRefs);
    let set: HashSet<u32> = held.iter().map(|r| r.raw()).collect();
    assert_eq!(u32::try_from(set.len()).unwrap(), total);
    assert!(set.iter().all(|r| (RESERVED_REFS..1024).contains(r)));
    assert_eq!(
        *t.hypervisor().add_to_physmap.lock().unwrap(),
        vec![(0, 0x1000), (1, 0x1001)]
    );
    for r in held {
        assert_eq!(t.revoke(r), Revoke::Done);
    }
    assert_eq!(t.stats().free_refs, total);
}

#[test]
fn frame_number_must_fit_v1() {
    let f = pages(1);
    let t = GrantTable::new(mock(1), Frames(&f), 1).unwrap();
    assert_eq!(
        t.grant(1, 1 << 32, false).unwrap_err(),
        GrantError::FrameTooLarge { gfn: 1 << 32 }
    );
    assert_eq!(t.stats().free_refs, 512 - RESERVED_REFS, "nothing leaked");
}

#[test]
fn revoke_while_mapped_is_deferred_until_the_peer_unmaps() {
    let f = pages(1);
    let t = GrantTable::new(mock(1), Frames(&f), 1).unwrap();
    let r = t.grant(5, 0x42, false).unwrap();
    let raw = r.raw();
    peer_sets(&f, raw, GTF_READING | GTF_WRITING);
    assert!(t.in_use(&r));
    assert_eq!(t.revoke(r), Revoke::Deferred);
    let s = t.stats();
    assert_eq!((s.deferred, s.deferred_pending), (1, 1));
    // Still mapped: nothing released, the entry still grants access.
    let mut released = Vec::new();
    let p = t.poll_deferred(|g| released.push(g));
    assert_eq!((p.completed, p.pending), (0, 1));
    assert!(released.is_empty());
    assert_eq!(t.stats().deferred_retries, 1);
    // The ref is not handed out again meanwhile.
    let others: Vec<_> = (0..(512 - RESERVED_REFS - 1))
        .map(|_| t.grant(1, 1, false).unwrap())
        .collect();
    assert!(others.iter().all(|o| o.raw() != raw));
    assert_eq!(t.grant(1, 1, false).unwrap_err(), GrantError::NoFreeRefs);
    // Peer unmaps: Xen clears the bits; the next poll completes exactly once.
    peer_clears(&f, raw, GTF_READING | GTF_WRITING);
    let p = t.poll_deferred(|g| released.push(g));
    assert_eq!((p.completed, p.pending), (1, 0));
    assert_eq!(released, vec![0x42]);
    let p = t.poll_deferred(|g| released.push(g));
    assert_eq!((p.completed, p.pending), (0, 0));
    assert_eq!(released.len(), 1);
    let s = t.stats();
    assert_eq!((s.deferred_completed, s.deferred_pending), (1, 0));
    assert_eq!(
        t.grant(1, 1, false).unwrap().raw(),
        raw,
        "ref reusable after completion"
    );
}

#[test]
fn regrant_refuses_a_live_entry() {
    let f = pages(1);
    let t = GrantTable::new(mock(1), Frames(&f), 1).unwrap();
    let r = t.grant(5, 0x42, false).unwrap();
    assert_eq!(t.regrant(&r, 5, 0x43, false), Err(GrantError::InUse));
    peer_sets(&f, r.raw(), GTF_READING);
    assert!(t.end_access(&r).is_err());
    peer_clears(&f, r.raw(), GTF_READING);
    t.end_access(&r).unwrap();
    t.regrant(&r, 6, 0x43, true).unwrap();
    assert_eq!(t.revoke(r), Revoke::Done);
}

#[test]
fn partial_map_failure_unwinds_exactly_the_successful_entries() {
    let hv = Mock {
        map_fail: vec![(11, GntStatus::BadGntref.to_raw())],
        ..mock(1)
    };
    let mut ops: Vec<MapGrant> = (10..14)
        .map(|g| MapGrant::new(1, g, 0x10_0000 + u64::from(g) * 4096, false))
        .collect();
    let e = map_grants(&hv, &mut ops).unwrap_err();
    assert_eq!(
        (e.first_failed, e.status, e.failed, e.stuck),
        (1, GntStatus::BadGntref, 1, 0)
    );
    assert!(ops.iter().all(|o| o.handle.is_none()));
    let mut unmapped = hv.unmap_calls.lock().unwrap().clone();
    unmapped.sort_unstable();
    assert_eq!(unmapped, vec![10, 12, 13], "only the successful ones");
    assert!(hv.mapped.lock().unwrap().is_empty());
}

#[test]
fn hypercall_abort_leaves_unreached_entries_failed() {
    // Xen processed two entries, then failed the call: entries 2.. keep the pre-set failure.
    let hv = Mock {
        map_abort_after: Some((2, XenError::EFAULT)),
        ..mock(1)
    };
    let mut ops: Vec<MapGrant> = (20..24)
        .map(|g| MapGrant::new(1, g, u64::from(g) << 12, true))
        .collect();
    let e = map_grants_each(&hv, &mut ops).unwrap_err();
    assert_eq!(e.hypercall, Some(XenError::EFAULT));
    assert_eq!(e.failed, 2);
    assert!(ops[0].handle.is_some() && ops[1].handle.is_some());
    assert!(ops[2].handle.is_none() && ops[3].handle.is_none());
    assert_eq!(ops[2].status, GntStatus::GeneralError);
    // Retrying maps only the missing ones.
    let hv2 = &hv;
    let mut handles: Vec<_> = ops.iter_mut().map(|o| o.handle.take()).collect();
    unmap_grants(hv2, &mut handles).unwrap();
    assert!(hv.mapped.lock().unwrap().is_empty());
}

#[test]
fn failed_unwind_is_reported_not_forgotten() {
    let hv = Mock {
        map_fail: vec![(3, GntStatus::GeneralError.to_raw())],
        unmap_fail: [2].into_iter().collect(),
        ..mock(1)
    };
    let mut ops: Vec<MapGrant> = (1..5)
        .map(|g| MapGrant::new(1, g, u64::from(g) << 12, false))
        .collect();
    let e = map_grants(&hv, &mut ops).unwrap_err();
    assert_eq!(e.stuck, 1);
    assert_eq!(ops[1].handle.as_ref().map(|h| h.handle()), Some(2));
    assert!(ops[0].handle.is_none() && ops[2].handle.is_none() && ops[3].handle.is_none());
}

#[test]
fn unwind_leaves_previously_mapped_entries_alone() {
    let hv = Mock {
        map_fail: vec![(7, GntStatus::GeneralError.to_raw())],
        ..mock(1)
    };
    let mut ops: Vec<MapGrant> = (5..8)
        .map(|g| MapGrant::new(1, g, u64::from(g) << 12, false))
        .collect();
    // Entry 0 mapped by an earlier call.
    map_grants_each(&hv, &mut ops[..1]).unwrap();
    let e = map_grants(&hv, &mut ops).unwrap_err();
    assert_eq!((e.first_failed, e.stuck), (2, 0));
    assert!(ops[0].handle.is_some(), "not ours to unwind");
    assert!(ops[1].handle.is_none() && ops[2].handle.is_none());
    assert_eq!(*hv.unmap_calls.lock().unwrap(), vec![6]);
}

#[test]
fn big_batches_are_chunked() {
    let hv = mock(1);
    let mut ops: Vec<MapGrant> = (0..40)
        .map(|g| MapGrant::new(1, g, u64::from(g) << 12, false))
        .collect();
    map_grants(&hv, &mut ops).unwrap();
    assert_eq!(hv.mapped.lock().unwrap().len(), 40);
    let mut handles: Vec<_> = ops.iter_mut().map(|o| o.handle.take()).collect();
    unmap_grants(&hv, &mut handles).unwrap();
    assert!(handles.iter().all(Option::is_none));
}

#[test]
fn copy_bounds_are_checked_before_the_hypercall() {
    let hv = mock(1);
    let g = CopyPtr::Grant { dom: 1, gref: 9 };
    let l = CopyPtr::Local { gfn: 5 };
    let mut ops = [
        GrantCopy::new(g, 0, l, 0, 4096),
        GrantCopy::new(g, 1, l, 0, 4096),
        GrantCopy::new(l, 0, g, 4000, 97),
        GrantCopy::new(l, 4095, g, 0, 1),
    ];
    let e = copy_grants(&hv, &mut ops).unwrap_err();
    assert_eq!((e.first_failed, e.failed), (1, 2));
    assert_eq!(
        ops.map(|o| o.status),
        [
            GntStatus::Okay,
            GntStatus::BadCopyArg,
            GntStatus::BadCopyArg,
            GntStatus::Okay
        ]
    );
    assert_eq!(*hv.copies.lock().unwrap(), 2);
}

#[derive(Debug, Clone)]
enum Step {
    Grant,
    Revoke(usize),
    PeerMap(usize),
    PeerUnmap(usize),
    Poll,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Grant),
        2 => any::<usize>().prop_map(Step::Revoke),
        1 => any::<usize>().prop_map(Step::PeerMap),
        1 => any::<usize>().prop_map(Step::PeerUnmap),
        1 => Just(Step::Poll),
    ]
}

proptest! {
    /// Whatever the interleaving of grants, revokes, peer maps/unmaps and polls: no reference
    /// is ever handed out while held or while its revoke is deferred, a page reported released
    /// is never still mapped, and every deferred revoke completes once the peer unmaps.
    #[test]
    fn allocator_and_deferral_model(steps in proptest::collection::vec(step(), 1..300)) {
        let f = pages(2);
        let t = GrantTable::new(mock(2), Frames(&f), 1).unwrap();
        let mut held: Vec<(crate::GrantRef, u32)> = Vec::new(); // (ref, gfn)
        let mut mapped: BTreeSet<u32> = BTreeSet::new();        // refs the peer maps
        let mut deferred: BTreeSet<u32> = BTreeSet::new();      // refs whose revoke is pending
        let mut gfn_of_deferred = std::collections::BTreeMap::new();
        let mut next_gfn = 100u32;
        for s in steps {
            match s {
                Step::Grant => {
                    if let Ok(r) = t.grant(1, u64::from(next_gfn), false) {
                        prop_assert!(r.raw() >= RESERVED_REFS);
                        prop_assert!(!held.iter().any(|(h, _)| h.raw() == r.raw()), "handed out twice");
                        prop_assert!(!deferred.contains(&r.raw()), "deferred ref reused");
                        held.push((r, next_gfn));
                        next_gfn += 1;
                    } else {
                        prop_assert_eq!(held.len() + deferred.len(), (1024 - RESERVED_REFS) as usize);
                    }
                }
                Step::Revoke(i) if !held.is_empty() => {
                    let (r, gfn) = held.swap_remove(i % held.len());
                    let raw = r.raw();
                    match t.revoke(r) {
                        Revoke::Done => prop_assert!(!mapped.contains(&raw)),
                        Revoke::Deferred => {
                            prop_assert!(mapped.contains(&raw));
                            deferred.insert(raw);
                            gfn_of_deferred.insert(gfn, raw);
                        }
                    }
                }
                Step::PeerMap(i) if !held.is_empty() => {
                    let raw = held[i % held.len()].0.raw();
                    peer_sets(&f, raw, GTF_READING);
                    mapped.insert(raw);
                }
                Step::PeerUnmap(i) if !mapped.is_empty() => {
                    let raw = *mapped.iter().nth(i % mapped.len()).unwrap();
                    peer_clears(&f, raw, GTF_READING);
                    mapped.remove(&raw);
                }
                Step::Poll => {
                    let mut released = Vec::new();
                    t.poll_deferred(|g| released.push(g));
                    for g in released {
                        let raw = gfn_of_deferred.remove(&g).expect("released a frame never deferred");
                        prop_assert!(!mapped.contains(&raw), "released while mapped");
                        prop_assert!(deferred.remove(&raw));
                    }
                    prop_assert!(deferred.iter().all(|r| mapped.contains(r)), "unmapped but not released");
                }
                _ => {}
            }
        }
        // Peer unmaps everything: every deferral completes exactly once.
        for raw in std::mem::take(&mut mapped) {
            peer_clears(&f, raw, GTF_READING);
        }
        let mut released = Vec::new();
        t.poll_deferred(|g| released.push(g));
        prop_assert_eq!(released.len(), deferred.len());
        prop_assert_eq!(t.stats().deferred_pending, 0);
    }

    /// Random per-entry failures: after the all-or-nothing map, nothing stays mapped.
    #[test]
    fn all_or_nothing_map(n in 1usize..40, fails in proptest::collection::btree_set(0u32..40, 0..5)) {
        let hv = Mock { map_fail: fails.iter().map(|&g| (g, -1)).collect(), ..mock(1) };
        let mut ops: Vec<MapGrant> = (0..u32::try_from(n).unwrap()).map(|g| MapGrant::new(1, g, u64::from(g) << 12, false)).collect();
        let r = map_grants(&hv, &mut ops);
        let any_fail = fails.iter().any(|&g| (g as usize) < n);
        prop_assert_eq!(r.is_err(), any_fail);
        if any_fail {
            prop_assert!(hv.mapped.lock().unwrap().is_empty());
            prop_assert!(ops.iter().all(|o| o.handle.is_none()));
        } else {
            prop_assert_eq!(hv.mapped.lock().unwrap().len(), n);
        }
    }
}

#[test]
fn concurrent_grant_revoke_two_threads() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let f = pages(2);
    let t = GrantTable::new(mock(2), Frames(&f), 1).unwrap();
    let owned: Vec<AtomicBool> = (0..1024).map(|_| AtomicBool::new(false)).collect();
    std::thread::scope(|s| {
        for k in 0..2u64 {
            let t = &t;
            let owned = &owned;
            s.spawn(move || {
                let mut held = Vec::new();
                for i in 0..20_000u64 {
                    if (i + k) % 3 != 0 {
                        if let Ok(r) = t.grant(1, i, false) {
                            assert!(!owned[r.raw() as usize].swap(true, Ordering::SeqCst));
                            held.push(r);
                        }
                    } else if let Some(r) = held.pop() {
                        owned[r.raw() as usize].store(false, Ordering::SeqCst);
                        assert_eq!(t.revoke(r), Revoke::Done);
                    }
                }
                for r in held {
                    owned[r.raw() as usize].store(false, Ordering::SeqCst);
                    assert_eq!(t.revoke(r), Revoke::Done);
                }
            });
        }
    });
    assert_eq!(t.stats().free_refs, t.nr_frames() * 512 - RESERVED_REFS);
}
