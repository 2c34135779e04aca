//! The heap behind `alloc`: power-of-two size classes with free lists over a static arena.
//!
//! The guest is single-threaded with interrupts off outside the upcall handler (which does not
//! allocate). A bump allocator was enough while every run was short; a driver domain forwards
//! megabytes through the netback/netfront cores, whose per-packet buffers are freed in no
//! particular order, so freed blocks must be reusable: each request is rounded up to a power
//! of two (at least 16 bytes, at least its alignment), a freed block goes onto its class's
//! free list (the list link lives in the block itself), and a request takes a block from its
//! class's list before carving a new one from the arena. Nothing is ever merged or split:
//! the data path's sizes are few and recurring, so each class settles at its peak use.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

const ARENA_SIZE: usize = 16 << 20;
/// Smallest block: 16 bytes (room for the free-list link, and `u128` alignment).
const MIN_SHIFT: u32 = 4;
/// Size classes 2^4 .. 2^24 (the whole arena).
const CLASSES: usize = 21;
/// Largest alignment served (a page; the arena is page aligned).
const MAX_ALIGN: usize = 4096;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; ARENA_SIZE]>);

// SAFETY: the arena is only handed out in disjoint blocks by `Heap`, whose bookkeeping is atomic.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_SIZE]));

struct Heap {
    /// Offset of the first never-used byte.
    next: AtomicUsize,
    /// Per class: offset + 1 of the first free block (0: none).
    free: [AtomicUsize; CLASSES],
}

#[global_allocator]
static HEAP: Heap = Heap {
    next: AtomicUsize::new(0),
    free: [const { AtomicUsize::new(0) }; CLASSES],
};

/// Nothing to do at run time (the arena is in `.bss`); kept as the place to say so.
pub fn init() {}

/// The class index and block size for `layout`, or `None` if it cannot be served.
fn class_of(layout: Layout) -> Option<(usize, usize)> {
    if layout.align() > MAX_ALIGN {
        return None;
    }
    let size = layout
        .size()
        .max(layout.align())
        .max(1 << MIN_SHIFT)
        .checked_next_power_of_two()?;
    let class = usize::try_from(size.trailing_zeros() - MIN_SHIFT).ok()?;
    (class < CLASSES).then_some((class, size))
}

// SAFETY: `alloc` returns disjoint blocks inside the static arena (carved once from `next`, or
// taken back from a free list they were put on by `dealloc`), each at least `layout.size()`
// bytes and aligned to `layout.align()` (a block of size `s` is carved at a multiple of
// `min(s, 4096)` from the page-aligned arena, and `s >= align`), or null. `dealloc` receives the
// same layout as the `alloc` that returned `ptr` (GlobalAlloc's contract), so the block goes
// back onto the list it came from; its first word holds the link while it is free. The guest
// runs on one vCPU and the only interrupt handler does not allocate, so the load/store pairs
// below never race.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((class, size)) = class_of(layout) else {
            return core::ptr::null_mut();
        };
        let base = ARENA.0.get().cast::<u8>() as usize;
        let head = self.free[class].load(Ordering::Acquire);
        if head != 0 {
            let block = base + head - 1;
            // SAFETY: `block` is a free block of this class inside the arena (16-aligned, at
            // least 16 bytes); its first word is the link `dealloc` wrote.
            let link = unsafe { core::ptr::read(block as *const usize) };
            self.free[class].store(link, Ordering::Release);
            return block as *mut u8;
        }
        let next = self.next.load(Ordering::Acquire);
        let start = next.next_multiple_of(size.min(MAX_ALIGN));
        let Some(end) = start.checked_add(size) else {
            return core::ptr::null_mut();
        };
        if end > ARENA_SIZE {
            return core::ptr::null_mut();
        }
        self.next.store(end, Ordering::Release);
        (base + start) as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((class, _)) = class_of(layout) else {
            return;
        };
        let base = ARENA.0.get().cast::<u8>() as usize;
        let Some(off) = (ptr as usize).checked_sub(base).filter(|&o| o < ARENA_SIZE) else {
            return;
        };
        let head = self.free[class].load(Ordering::Acquire);
        // SAFETY: `ptr` is a block of this class that the caller no longer uses (at least 16
        // bytes, 16-aligned): its first word becomes the free-list link.
        unsafe { core::ptr::write(ptr.cast::<usize>(), head) };
        self.free[class].store(off + 1, Ordering::Release);
    }
}
