//! Machine memory of the simulated host, and each domain's physical-to-machine map.
//!
//! # Why one arena of `xen_shmem::Page`s
//!
//! All simulated domains live in one process, and a page one domain grants and another maps
//! must be *the same bytes*, written and read concurrently by two threads. The arena is a
//! fixed boxed slice of [`Page`]s (each an array of `AtomicU32`) allocated when the simulator
//! starts, indexed by machine frame number (MFN). Every view a domain gets is a
//! [`SharedMem`] built with the safe [`SharedMem::from_pages`] over arena pages, and the
//! simulator itself only uses atomic word operations on them — exactly `xen-shmem`'s access
//! model, so concurrent "domains" are data-race free and no `&mut` to shared bytes ever exists.
//!
//! Frames are never returned to the host allocator while the simulator lives: a view a domain
//! kept after an unmap or after its peer died stays memory-safe (it just no longer means
//! anything), which is the worst a real stale mapping can do too.
use std::collections::BTreeMap;

use xen_shmem::{Page, SharedMem};

/// Guest frame where the sim's `TableFrames` places grant frame 0 (then +1 per frame):
/// below 4 GiB, above any RAM a test domain has.
pub const GRANT_FRAME_GFN_BASE: u64 = 0xf_0000;

/// First guest frame handed out for foreign mappings (`xenmem_alloc`-style unpopulated space).
pub const FOREIGN_GFN_BASE: u64 = 0x10_0000;

/// What a guest frame is backed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phys {
    /// A page of the domain's own RAM.
    Ram(usize),
    /// Frame `idx` of the domain's grant table (`XENMAPSPACE_grant_table`).
    GrantFrame(u32),
    /// The domain's shared_info page (`XENMAPSPACE_shared_info`).
    SharedInfo,
    /// A foreign grant mapped with this maptrack handle.
    Foreign(u32),
}

/// The arena.
pub(crate) struct Machine {
    pub(crate) pages: Box<[Page]>,
}

impl Machine {
    pub(crate) fn new(n: usize) -> Machine {
        let pages: Vec<Page> = (0..n).map(|_| Page::new()).collect();
        Machine {
            pages: pages.into_boxed_slice(),
        }
    }

    /// The view of machine frames `mfn..mfn + count`.
    pub(crate) fn view(&self, mfn: usize, count: usize) -> Option<SharedMem<'_>> {
        let end = mfn.checked_add(count)?;
        self.pages.get(mfn..end).map(SharedMem::from_pages)
    }

    /// One frame's words.
    pub(crate) fn page(&self, mfn: usize) -> Option<&Page> {
        self.pages.get(mfn)
    }

    pub(crate) fn zero(&self, mfn: usize) {
        if let Some(v) = self.view(mfn, 1) {
            v.zero_all();
        }
    }
}

/// Hands out machine frames: contiguous runs by bumping, single frames also from a free list.
#[derive(Debug)]
pub(crate) struct FrameAlloc {
    next: usize,
    end: usize,
    free: Vec<usize>,
}

impl FrameAlloc {
    pub(crate) fn new(end: usize) -> Self {
        // Frame 0 is never handed out, so an MFN of 0 always means "none".
        FrameAlloc {
            next: 1,
            end,
            free: Vec::new(),
        }
    }

    pub(crate) fn run(&mut self, count: usize) -> Option<usize> {
        let start = self.next;
        let end = start.checked_add(count)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(start)
    }

    pub(crate) fn one(&mut self) -> Option<usize> {
        self.free.pop().or_else(|| self.run(1))
    }

    pub(crate) fn give(&mut self, mfn: usize) {
        self.free.push(mfn);
    }
}

/// A domain's guest-physical address space.
#[derive(Debug, Default)]
pub(crate) struct Physmap {
    pub(crate) map: BTreeMap<u64, Phys>,
}

impl Physmap {
    pub(crate) fn get(&self, gfn: u64) -> Option<Phys> {
        self.map.get(&gfn).copied()
    }
}
