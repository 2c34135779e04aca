//! Persistent grants: a bounded, per-queue cache of frontend pages kept mapped across
//! requests (`feature-persistent`).
//!
//! # Why bounded, and how
//!
//! Each entry pins a maptrack entry and a guest-physical slot; a frontend that uses a new
//! grant for every request would otherwise make us map without limit. The cache holds at
//! most `capacity` entries. A miss when full evicts the least recently used entry that no
//! request in flight is using (blkif.h recommends LRU in the backend paired with LIFO reuse in
//! the frontend); if every entry is busy the page is mapped for this request only. Entries are
//! mapped writable, as note 8 of blkif.h allows for persistent grants, so one mapping serves
//! reads and writes.
//!
//! An entry whose unmap fails (the hypervisor refused; should not happen) is *stuck*: its
//! slot is never released or reused, and it is counted.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use xen_gnttab::MapHandle;
use xen_shmem::SharedMem;

/// One persistently mapped grant.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    /// The live mapping.
    pub(crate) handle: MapHandle,
    /// The slot it is mapped at.
    pub(crate) addr: u64,
    /// A view of the page.
    pub(crate) mem: SharedMem<'a>,
    /// Requests in flight using it.
    pub(crate) busy: u32,
    /// LRU clock value of the last use.
    pub(crate) last_used: u64,
}

/// The cache of one queue.
#[derive(Debug, Default)]
pub(crate) struct PersistentCache<'a> {
    entries: BTreeMap<u32, Entry<'a>>,
    capacity: usize,
    clock: u64,
}

impl<'a> PersistentCache<'a> {
    pub(crate) fn new(capacity: usize) -> Self {
        PersistentCache {
            entries: BTreeMap::new(),
            capacity,
            clock: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity
    }

    /// Looks up `gref` and marks it busy.
    pub(crate) fn acquire(&mut self, gref: u32) -> Option<SharedMem<'a>> {
        self.clock += 1;
        let e = self.entries.get_mut(&gref)?;
        e.busy += 1;
        e.last_used = self.clock;
        Some(e.mem)
    }

    /// Ends one use of `gref`.
    pub(crate) fn release(&mut self, gref: u32) {
        if let Some(e) = self.entries.get_mut(&gref) {
            e.busy = e.busy.saturating_sub(1);
        }
    }

    /// Adds a fresh mapping (not busy).
    pub(crate) fn insert(&mut self, gref: u32, handle: MapHandle, addr: u64, mem: SharedMem<'a>) {
        self.clock += 1;
        self.entries.insert(
            gref,
            Entry {
                handle,
                addr,
                mem,
                busy: 0,
                last_used: self.clock,
            },
        );
    }

    /// Removes the least recently used idle entry, for the caller to unmap.
    pub(crate) fn evict_lru(&mut self) -> Option<Entry<'a>> {
        let gref = self
            .entries
            .iter()
            .filter(|(_, e)| e.busy == 0)
            .min_by_key(|(_, e)| e.last_used)
            .map(|(g, _)| *g)?;
        self.entries.remove(&gref)
    }

    /// Removes every entry (the connection is going away: nothing is busy any more).
    pub(crate) fn drain(&mut self) -> Vec<Entry<'a>> {
        core::mem::take(&mut self.entries).into_values().collect()
    }
}
