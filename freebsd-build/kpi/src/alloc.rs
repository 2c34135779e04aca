//! The kernel heap for Rust's `alloc` (`Box`, `Vec` in the cores): `malloc(9)` with the
//! module-wide malloc type `M_XENRS` (visible in `vmstat -m` as `xenrs`).
//!
//! Every allocation uses `M_NOWAIT`: a `GlobalAlloc` cannot know whether its caller may sleep
//! (an interrupt filter, a held mutex), and a failed allocation is an ordinary `None`/error in
//! the cores' fallible paths (`try_reserve`) or the alloc error handler's panic otherwise.
//! The C side lives in xen.ko's shim (`xenrs_malloc`/`xenrs_free`, which choose `malloc` or
//! `malloc_aligned` by alignment), so every module shares one malloc type and Rust never calls
//! the variadic-free but macro-wrapped `malloc(9)` directly.

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

extern "C" {
    /// Defined by xen.ko's shim: `malloc(9)`/`malloc_aligned(9)` with `M_XENRS | M_NOWAIT`;
    /// NULL on failure.
    fn xenrs_malloc(size: usize, align: usize) -> *mut c_void;
    /// Defined by xen.ko's shim: `free(9)` with `M_XENRS`.
    fn xenrs_free(ptr: *mut c_void);
}

/// `malloc(9)` as Rust's global allocator (installed on the kernel targets only).
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelAllocator;

// SAFETY: xenrs_malloc returns NULL or a fresh block of at least `size` bytes aligned to
// `align` (malloc_aligned for alignments above a pointer's, plain malloc below, which aligns
// to at least a pointer); xenrs_free releases exactly such a block.
unsafe impl GlobalAlloc for KernelAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: any size/alignment may be asked; the shim returns NULL for ones it cannot
        // satisfy (alignment above a page).
        unsafe { xenrs_malloc(layout.size(), layout.align()) }.cast()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the GlobalAlloc contract: `ptr` came from `alloc` above and is freed once.
        unsafe { xenrs_free(ptr.cast()) }
    }
}

#[cfg(target_os = "none")]
#[global_allocator]
static KERNEL_HEAP: KernelAllocator = KernelAllocator;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_go_through_the_shim_and_are_returned() {
        let _kernel = crate::fake::session();
        let layout = Layout::from_size_align(100, 64).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { KernelAllocator.alloc(layout) };
        assert!(!ptr.is_null());
        assert_eq!(ptr.addr() % 64, 0);
        assert_eq!(crate::fake::heap_blocks_out(), 1);
        // SAFETY: from alloc with the same layout, freed once.
        unsafe { KernelAllocator.dealloc(ptr, layout) };
        assert_eq!(crate::fake::heap_blocks_out(), 0);
        let huge = Layout::from_size_align(8, 8192).unwrap();
        // SAFETY: non-zero size.
        assert!(unsafe { KernelAllocator.alloc(huge) }.is_null());
    }
}
