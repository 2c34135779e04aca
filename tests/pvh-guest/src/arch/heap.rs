//! The heap behind `alloc`: power-of-two size classes with free lists, carved from a static
//! arena.
//!
//! The guest is single-threaded with interrupts off outside the upcall handler (which does not
//! allocate). A plain bump allocator was enough for the short checks, but the driver domain
//! serves frontends for minutes and frees its per-request vectors in any order, so every freed
//! block goes on the free list of its class and is reused by the next allocation of that
//! class: the heap's size is bounded by the peak use per class, never by the number of
//! requests served. A block of class `c` (16 B .. 32 MiB) is carved aligned to `min(c, 4096)`;
//! a request for a larger alignment only takes a free block that has it. The arena holds the
//! driver domain's RAM disks (16 MiB each, one class) besides the small allocations.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

const ARENA_SIZE: usize = 24 << 20;
/// Smallest class: 16 bytes (room for the free-list link).
const MIN_SHIFT: u32 = 4;
/// Classes 2^4 .. 2^25.
const CLASSES: usize = 22;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; ARENA_SIZE]>);

// SAFETY: the arena is only handed out in disjoint blocks by `Heap`, under its lock.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_SIZE]));

struct State {
    /// Offset of the first never-used byte.
    next: usize,
    /// Head of each class's free list (an arena offset + 1; 0 = empty). The link to the next
    /// free block is stored in the block's first word.
    free: [usize; CLASSES],
}

struct Heap {
    lock: AtomicBool,
    state: UnsafeCell<State>,
}

// SAFETY: `state` is only touched with `lock` held.
unsafe impl Sync for Heap {}

#[global_allocator]
static HEAP: Heap = Heap {
    lock: AtomicBool::new(false),
    state: UnsafeCell::new(State {
        next: 0,
        free: [0; CLASSES],
    }),
};

/// Nothing to do at run time (the arena is in `.bss`); kept as the place to say so.
pub fn init() {}

/// The class of a layout: the index and the block size.
fn class_of(layout: Layout) -> Option<(usize, usize)> {
    let size = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    let block = size.checked_next_power_of_two()?;
    let idx = usize::try_from(block.trailing_zeros().checked_sub(MIN_SHIFT)?).ok()?;
    (idx < CLASSES).then_some((idx, block))
}

impl Heap {
    fn with<R>(&self, f: impl FnOnce(&mut State, *mut u8) -> R) -> R {
        while self
            .lock
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        // SAFETY: the lock is held, so this is the only reference to the state.
        let r = f(
            unsafe { &mut *self.state.get() },
            ARENA.0.get().cast::<u8>(),
        );
        self.lock.store(false, Ordering::Release);
        r
    }
}

// SAFETY: `alloc` returns disjoint blocks inside the static arena (free-list blocks were
// returned by `dealloc` and are no longer used by anyone; fresh ones lie beyond every block
// handed out), at least `layout.size()` long and aligned to `layout.align()`, or null.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((idx, block)) = class_of(layout) else {
            return core::ptr::null_mut();
        };
        self.with(|st, base| {
            let head = st.free[idx];
            if head != 0 {
                let off = head - 1;
                // SAFETY: `off` is a free block of this class inside the arena; its first word
                // holds the link written by `dealloc` (blocks are at least 16-byte aligned).
                let p = unsafe { base.add(off) };
                if (p as usize).is_multiple_of(layout.align()) {
                    // SAFETY: as above.
                    st.free[idx] = unsafe { p.cast::<usize>().read() };
                    return p;
                }
            }
            let align = block.min(4096).max(layout.align());
            let start = ((base as usize + st.next).next_multiple_of(align)) - base as usize;
            match start.checked_add(block) {
                Some(end) if end <= ARENA_SIZE => {
                    st.next = end;
                    // SAFETY: `start..end` lies inside the arena and was never handed out.
                    unsafe { base.add(start) }
                }
                _ => core::ptr::null_mut(),
            }
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((idx, _)) = class_of(layout) else {
            return;
        };
        self.with(|st, base| {
            let off = ptr as usize - base as usize;
            // SAFETY: `ptr` is a block of this class the caller no longer uses; its first word
            // becomes the free-list link.
            unsafe { ptr.cast::<usize>().write(st.free[idx]) };
            st.free[idx] = off + 1;
        });
    }
}
