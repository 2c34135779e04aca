//! The heap behind `alloc`: a bump allocator over a static arena.
//!
//! The guest is single-threaded with interrupts off outside the upcall handler (which does not
//! allocate), and short-lived, so a bump allocator is enough: freeing the most recent block
//! gives its space back, and when every block has been freed the arena starts over. The
//! xenstore client's request/reply buffers follow exactly that pattern.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

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
