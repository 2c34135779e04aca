//! The heap behind `alloc`: a bump allocator over a static arena; for the driver domain,
//! power-of-two size classes over RAM beyond the image ([`reuse`]).
//!
//! The guest is single-threaded with interrupts off outside the upcall handler (which does not
//! allocate), and short-lived, so a bump allocator is enough: freeing the most recent block
//! gives its space back, and when every block has been freed the arena starts over. The
//! xenstore client's request/reply buffers follow exactly that pattern.
//!
//! The driver domain serves frontends for minutes and frees its per-request vectors in any
//! order, and keeps RAM disks of 16 MiB: [`reuse`] moves every later allocation to a region
//! of RAM above the image with power-of-two size classes and free lists (a freed block is
//! reused by the next allocation of its class; a free larger block is split in halves when
//! the region is used up). Blocks from before the switch stay bump blocks.
//!
//! Why not a larger static arena or size classes for every run: either change made the i686
//! `net` scenario (our netfront against Linux's netback) lose its UDP echo in every run we
//! made (five), where the unchanged allocator passed (two of two); the statics' layout is left
//! exactly as it was (the switch and the region's bookkeeping live in `.data` and in the
//! region). The cause is not found (docs/REAL-XEN.md, "Driver domain").

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const ARENA_SIZE: usize = 4 << 20;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; ARENA_SIZE]>);

// SAFETY: the arena is only handed out in disjoint blocks by `Bump`, whose bookkeeping is atomic.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_SIZE]));

struct Bump {
    /// Offset of the first free byte.
    next: AtomicUsize,
    /// Blocks handed out and not yet freed.
    live: AtomicUsize,
}

#[global_allocator]
static HEAP: Bump = Bump {
    next: AtomicUsize::new(0),
    live: AtomicUsize::new(0),
};

/// Nothing to do at run time (the arena is in `.bss`); kept as the place to say so.
pub fn init() {}

// SAFETY: `alloc` returns disjoint, suitably aligned blocks inside the static arena or null;
// `dealloc` only moves `next` back over the most recent block, which the caller no longer uses.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let region = REGION.load(Ordering::Relaxed);
        if region != NO_REGION {
            return with_region(region, |st, base| classes_alloc(st, base, layout));
        }
        let base = ARENA.0.get().cast::<u8>() as usize;
        let mut next = self.next.load(Ordering::Relaxed);
        loop {
            let start = (base + next).next_multiple_of(layout.align()) - base;
            let Some(end) = start.checked_add(layout.size()) else {
                return core::ptr::null_mut();
            };
            if end > ARENA_SIZE {
                return core::ptr::null_mut();
            }
            match self
                .next
                .compare_exchange(next, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.live.fetch_add(1, Ordering::Relaxed);
                    return (base + start) as *mut u8;
                }
                Err(now) => next = now,
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let base = ARENA.0.get().cast::<u8>() as usize;
        let region = REGION.load(Ordering::Relaxed);
        if region != NO_REGION {
            if (ptr as usize) < base || (ptr as usize) >= base + ARENA_SIZE {
                with_region(region, |st, rbase| classes_free(st, rbase, ptr, layout));
            }
            // A bump block from before the switch: not class-shaped, never reused.
            return;
        }
        let start = ptr as usize - base;
        // The most recent block: give its bytes back (alignment padding before it stays).
        let _ = self.next.compare_exchange(
            start + layout.size(),
            start,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if self.live.fetch_sub(1, Ordering::Relaxed) == 1 {
            // Nothing is live any more: start over.
            self.next.store(0, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Size classes over a region of RAM (the driver domain).

/// `REGION` before [`reuse`]: no region.
const NO_REGION: usize = usize::MAX;
/// Address of the region (its first page holds [`Classes`]); in `.data` (non-zero initial
/// value), so the `.bss` layout is the one the other runs were validated with.
static REGION: AtomicUsize = AtomicUsize::new(NO_REGION);
/// The region's lock (the upcall handler does not allocate; kept for soundness). `true` =
/// free, so that it too lives in `.data`.
static REGION_FREE: AtomicBool = AtomicBool::new(true);

/// Smallest class: 16 bytes (room for the free-list link).
const MIN_SHIFT: usize = 4;
/// Classes 2^4 .. 2^25.
const CLASSES: usize = 22;

/// The bookkeeping, at the start of the region.
struct Classes {
    /// Bytes of the region (including this page).
    len: usize,
    /// Offset of the first never-used byte.
    next: usize,
    /// Head of each class's free list (a region offset; 0 = empty: offset 0 is this page).
    /// The link to the next free block is stored in the block's first word.
    free: [usize; CLASSES],
}

/// Switches every later allocation to size classes over `[base, base + len)`.
///
/// # Safety
/// The range must be RAM of this guest that nothing else uses, ever: not the image, not
/// anything Xen placed (start info, command line), not mapped for anyone else.
pub unsafe fn reuse(base: usize, len: usize) {
    if REGION.load(Ordering::Relaxed) != NO_REGION || len < 8192 || !base.is_multiple_of(4096) {
        return;
    }
    // SAFETY: the caller gives us the range; its first page becomes the bookkeeping.
    unsafe {
        (base as *mut Classes).write(Classes {
            len,
            next: 4096,
            free: [0; CLASSES],
        });
    }
    REGION.store(base, Ordering::SeqCst);
}

fn with_region<R>(region: usize, f: impl FnOnce(&mut Classes, *mut u8) -> R) -> R {
    while REGION_FREE
        .compare_exchange(true, false, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    // SAFETY: `reuse` wrote the bookkeeping at `region`; the lock makes this the only
    // reference to it.
    let r = f(unsafe { &mut *(region as *mut Classes) }, region as *mut u8);
    REGION_FREE.store(true, Ordering::Release);
    r
}

/// The class of a layout: the index and the block size.
fn class_of(layout: Layout) -> Option<(usize, usize)> {
    let size = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    let block = size.checked_next_power_of_two()?;
    let idx = usize::try_from(block.trailing_zeros())
        .ok()?
        .checked_sub(MIN_SHIFT)?;
    (idx < CLASSES).then_some((idx, block))
}

fn classes_alloc(st: &mut Classes, base: *mut u8, layout: Layout) -> *mut u8 {
    let Some((idx, block)) = class_of(layout) else {
        return core::ptr::null_mut();
    };
    let head = st.free[idx];
    if head != 0 {
        // SAFETY: `head` is a free block of this class inside the region; its first word
        // holds the link written by `classes_free` or `split_larger`.
        let p = unsafe { base.add(head) };
        if (p as usize).is_multiple_of(layout.align()) {
            // SAFETY: as above.
            st.free[idx] = unsafe { p.cast::<usize>().read() };
            return p;
        }
    }
    let align = block.min(4096).max(layout.align());
    let start = ((base as usize + st.next).next_multiple_of(align)) - base as usize;
    match start.checked_add(block) {
        Some(end) if end <= st.len => {
            st.next = end;
            // SAFETY: `start..end` lies inside the region and was never handed out.
            unsafe { base.add(start) }
        }
        _ if layout.align() <= block.min(4096) => split_larger(st, base, idx),
        _ => core::ptr::null_mut(),
    }
}

/// Takes the smallest free block of a class above `idx` and splits it in halves down to
/// class `idx`: one half of each split goes on the free list of its class, the last one is
/// returned. Null when no larger block is free.
fn split_larger(st: &mut Classes, base: *mut u8, idx: usize) -> *mut u8 {
    let Some(mut c) = (idx + 1..CLASSES).find(|&c| st.free[c] != 0) else {
        return core::ptr::null_mut();
    };
    let off = st.free[c];
    // SAFETY: `off` is a free block of class `c` inside the region; its first word is the link.
    st.free[c] = unsafe { base.add(off).cast::<usize>().read() };
    // A block of class c is aligned to min(its size, 4096), so each half is aligned to
    // min(its size, 4096): the invariant of its class.
    while c > idx {
        c -= 1;
        let upper = off + (1usize << (c + MIN_SHIFT));
        // SAFETY: the upper half lies inside the block just taken, which nobody uses; it
        // becomes a free block of class `c`.
        unsafe { base.add(upper).cast::<usize>().write(st.free[c]) };
        st.free[c] = upper;
    }
    // SAFETY: the lower half of the last split, inside the region, free.
    unsafe { base.add(off) }
}

fn classes_free(st: &mut Classes, base: *mut u8, ptr: *mut u8, layout: Layout) {
    let Some((idx, _)) = class_of(layout) else {
        return;
    };
    let off = ptr as usize - base as usize;
    // SAFETY: `ptr` is a block of this class the caller no longer uses; its first word
    // becomes the free-list link.
    unsafe { ptr.cast::<usize>().write(st.free[idx]) };
    st.free[idx] = off;
}
