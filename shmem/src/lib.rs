//! Accessors for memory a Xen peer can write: shared rings, granted and mapped pages.
//!
//! # Why this crate exists
//!
//! A page shared with another domain can change under our feet at any moment, and the other
//! domain may be hostile. Two consequences follow, and this crate is where both are enforced for
//! the whole project:
//!
//! 1. **No references into shared memory.** A `&T` or `&mut T` promises the compiler that the
//!    bytes behind it do not change (or change only through that reference). Shared memory breaks
//!    that promise, so creating such a reference is undefined behaviour *and* it lets the compiler
//!    re-read a field after it was validated (the XSA-155 "double fetch"). [`SharedMem`] only
//!    hands out copies: [`SharedMem::read`] copies a value out, [`SharedMem::write`] copies one
//!    in, and the index words are reached through atomic loads and stores.
//! 2. **Copy once, then validate the copy.** Every accessor copies. The caller validates the
//!    local copy, which the peer can no longer change.
//!
//! # Access model (why relaxed 32-bit atomics everywhere)
//!
//! Every access this crate makes to shared memory is an atomic access of exactly **4 bytes at a
//! 4-aligned address** (`AtomicU32`):
//!
//! * Index words use `Acquire`/`Release`/`Relaxed` loads and stores ([`SharedMem::load_acquire_u32`]
//!   and friends), which is how ring protocols publish and observe work.
//! * Bodies (requests, responses, byte-stream data) are copied word by word with `Relaxed`
//!   atomic loads and stores. A byte range that does not start or end on a word boundary is
//!   handled by loading the whole containing word (reads), or by an atomic `fetch_and` + `fetch_or`
//!   pair that changes only the wanted bytes (writes). This is bounded: no compare-exchange loop
//!   that a peer hammering the word could starve.
//!
//! Why not `read_volatile`/`write_volatile`? For a peer in *another domain* either works: that
//! peer is outside the Rust abstract machine, and what matters is that the compiler neither
//! invents nor repeats accesses, which holds for volatile and for atomics alike (the compiler may
//! not duplicate an atomic load, so a copied-out value is never silently re-fetched). But the
//! host tests and the simulated hypervisor run both "domains" as threads of one process, and
//! there a volatile access racing with a write from the other thread is a data race, i.e.
//! undefined behaviour. Atomic accesses never data-race. Rust additionally forbids racing atomic
//! accesses of *different sizes* that partially overlap; using one access size and alignment for
//! everything (and [`SharedMem::from_words`] only accepting `AtomicU32` storage) rules that out,
//! so every interleaving of two in-process peers is defined behaviour. On x86 a relaxed 32-bit
//! atomic load or store is a plain `mov`, so the cost is the same as volatile.
//!
//! Why not wider (8- or 16-byte) accesses for whole ring slots? Rust permits racing atomic
//! accesses of different sizes only when all of them are reads; a peer thread rewriting a slot
//! with 4-byte stores while we load it 8 bytes at a time would be undefined behaviour in the
//! host tests, and the index words in the same page must stay 4-byte. Nor is the width what
//! costs: measured against Xen's C ring (`cargo kmod bench`, BENCHMARKS.md), the 4-byte copy
//! was slow because of its general head/middle/tail split and because the copy landed in the
//! local value as 4-byte stores, so reading a `u64` field of it stalled on store forwarding.
//! [`SharedMem::read`], [`SharedMem::write`] and [`SharedMem::fill`] therefore take a
//! whole-word path when the address is 4-aligned and the size a multiple of 4 (every ring
//! slot): a fixed-length loop of 4-byte atomic accesses that the compiler unrolls, with pairs
//! of loaded words combined into one 8-byte store to the local copy.
//!
//! Ordering between body copies and indices is the caller's job (the ring crate does it): write
//! bodies, then `store_release_u32` the producer index; `load_acquire_u32` the peer's producer
//! index, then read bodies. [`fence`] and [`full_fence`] wrap `core::sync::atomic::fence` for the
//! `xen_mb()` points of the Xen ring protocol.
//!
//! # Plain old data
//!
//! Only [`Pod`] types cross the boundary. Any bit pattern is a valid `Pod` value, so a hostile
//! peer can make us read nonsense, but never an invalid value; and a `Pod` value has no padding,
//! so writing one never leaks stale stack bytes to the peer (the XSA-216 class).
#![no_std]

use core::fmt;
use core::marker::PhantomData;
use core::mem::size_of;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

/// Plain old data: a type every bit pattern of which is a valid value, with no padding that could
/// carry uninitialised bytes, no pointers, no references, no `bool`/`char`/enums.
///
/// Only `Pod` types may be copied in and out of memory a Xen peer can write.
///
/// # Safety
/// Implementors guarantee that any byte sequence of `size_of::<Self>()` bytes is a valid value
/// of `Self`, that `Self` has no padding bytes (every byte of every value is initialised, so a
/// value may be viewed as `[u8; size_of::<Self>()]`), and that `Self` has no interior mutability.
pub unsafe trait Pod: Copy + 'static {}

macro_rules! impl_pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: primitive integers have no padding, no invalid bit patterns and no
            // interior mutability.
            unsafe impl Pod for $t {}
        )*
    };
}

impl_pod!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

// SAFETY: an array has no padding between elements (an element's size is a multiple of its
// alignment) and none around them; each element is `Pod`, so every byte pattern is valid.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// A value of `T` with every byte zero (valid because `T` is [`Pod`]).
#[must_use]
#[inline]
pub fn zeroed<T: Pod>() -> T {
    // SAFETY: `T: Pod` guarantees that every byte pattern, including all zeroes, is a valid `T`.
    unsafe { core::mem::zeroed() }
}

/// The bytes of a [`Pod`] value.
#[must_use]
#[inline]
pub fn as_bytes<T: Pod>(value: &T) -> &[u8] {
    // SAFETY: `T: Pod` has no padding, so all `size_of::<T>()` bytes behind `value` are
    // initialised; the slice borrows `value`, so it lives no longer than it, and `T` has no
    // interior mutability, so the bytes cannot change while the slice exists.
    unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// The bytes of a [`Pod`] value, writable: any bytes written leave a valid `T`.
#[must_use]
#[inline]
pub fn as_bytes_mut<T: Pod>(value: &mut T) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; additionally every byte pattern is a valid `T` (`T: Pod`), so
    // writes through the slice cannot produce an invalid value, and the exclusive borrow of
    // `value` makes the slice the only access path while it lives.
    unsafe { core::slice::from_raw_parts_mut((value as *mut T).cast::<u8>(), size_of::<T>()) }
}

/// Why an access to a [`SharedMem`] was refused. No access is ever partially performed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// `offset..offset + len` does not lie within a region of `size` bytes (or overflows).
    OutOfBounds {
        /// Start of the requested range, relative to the region.
        offset: usize,
        /// Length of the requested range.
        len: usize,
        /// Size of the region.
        size: usize,
    },
    /// An atomic word access at `offset` whose address is not a multiple of `align`, or a
    /// region whose base or length is not a multiple of `align`.
    Misaligned {
        /// Offset (relative to the region) or length that is misaligned.
        offset: usize,
        /// Required alignment.
        align: usize,
    },
    /// A null base pointer.
    Null,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::OutOfBounds { offset, len, size } => write!(
                f,
                "shared memory range {offset:#x}+{len:#x} outside region of {size:#x} bytes"
            ),
            Error::Misaligned { offset, align } => {
                write!(f, "shared memory offset {offset:#x} not {align}-aligned")
            }
            Error::Null => f.write_str("null shared memory pointer"),
        }
    }
}

impl core::error::Error for Error {}

/// Word size and alignment of every access (see the crate docs).
const WORD: usize = 4;

/// One 4 KiB page of host memory usable as shared memory: page aligned, made of `AtomicU32`
/// words so that [`SharedMem::from_pages`] can view it safely.
///
/// This is what host tests and the simulated hypervisor use to stand in for a granted page:
/// both "domains" build a [`SharedMem`] over the same `Page`s (from one thread or several).
#[repr(C, align(4096))]
pub struct Page(pub [AtomicU32; 1024]);

impl Page {
    /// A zero-filled page.
    #[must_use]
    pub const fn new() -> Self {
        Page([const { AtomicU32::new(0) }; 1024])
    }
}

impl Default for Page {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Page { .. }")
    }
}

/// A view of memory a Xen peer may write concurrently: a base pointer and a length.
///
/// Copying a `SharedMem` copies the view, not the memory; any number of views of the same memory
/// may exist, in any number of threads, which is exactly the situation of two domains sharing a
/// page. All accesses are bounds-checked and return [`Error`] instead of panicking.
///
/// # Invariants
///
/// * `base` is valid for atomic reads and writes of 4-byte words at 4-aligned addresses over
///   the *containing-word span* of `base..base + len` (that is, from `base` rounded down to a
///   multiple of 4 to `base + len` rounded up to a multiple of 4), for the lifetime `'a`.
/// * Within `'a`, every access by Rust code to that memory is an atomic access of 4 bytes at a
///   4-aligned address (so there is no data race and no mixed-size atomic race), and no
///   reference to it other than `&AtomicU32` exists.
///
/// Sub-views inherit the invariant from their parent: their containing-word span lies within the
/// parent's.
#[derive(Clone, Copy)]
pub struct SharedMem<'a> {
    base: NonNull<u8>,
    len: usize,
    _life: PhantomData<&'a [AtomicU32]>,
}

// SAFETY: a `SharedMem` is a view of memory that is only ever accessed with atomic operations
// (type invariant), which may be performed from any thread; it owns nothing.
unsafe impl Send for SharedMem<'_> {}
// SAFETY: as for `Send`: all accesses through `&SharedMem` are atomic.
unsafe impl Sync for SharedMem<'_> {}

impl fmt::Debug for SharedMem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMem")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

/// Little helper: the `AtomicU32` at word-aligned address `addr`.
///
/// # Safety
/// `addr` must be 4-aligned and lie in the containing-word span of some `SharedMem<'a>`
/// (whose invariant then makes the word valid for atomic access for `'a`).
#[inline]
unsafe fn word<'a>(addr: *mut u8) -> &'a AtomicU32 {
    debug_assert!(addr.addr() % WORD == 0);
    // SAFETY: the caller guarantees alignment and validity for `'a`; all Rust accesses to this
    // memory are 4-byte atomics (SharedMem invariant), so creating `&AtomicU32` is allowed by
    // `AtomicU32::from_ptr`'s contract.
    unsafe { AtomicU32::from_ptr(addr.cast::<u32>()) }
}

/// A checked byte range split at word boundaries: `head` bytes in the word containing
/// `start` (starting `skip` bytes into it), then `words` whole words, then the rest.
struct Span {
    start: *mut u8,
    skip: usize,
    head: usize,
    words: usize,
}

/// Stores `bytes` at byte `skip` of the word at `addr`, leaving its other bytes untouched.
/// Does nothing if `bytes` is empty.
///
/// Two bounded atomic RMWs (no compare-exchange loop a peer could starve); neighbouring bytes,
/// which may belong to the peer, are preserved exactly. The transient state (our bytes zero)
/// is invisible to a correct peer, which does not read bytes we have not published yet.
///
/// # Safety
/// If `bytes` is non-empty: `skip + bytes.len() <= 4`, and `addr` is 4-aligned and lies in the
/// containing-word span of a live `SharedMem`.
#[inline]
unsafe fn store_partial(addr: *mut u8, skip: usize, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let mut value = [0u8; WORD];
    let mut mask = [0u8; WORD];
    for (k, b) in bytes.iter().enumerate() {
        value[skip + k] = *b;
        mask[skip + k] = 0xff;
    }
    let mask = u32::from_ne_bytes(mask);
    // SAFETY: guaranteed by the caller.
    let w = unsafe { word(addr) };
    w.fetch_and(!mask, Ordering::Relaxed);
    w.fetch_or(u32::from_ne_bytes(value) & mask, Ordering::Relaxed);
}

impl<'a> SharedMem<'a> {
    /// Views `len` bytes at `ptr` as shared memory.
    ///
    /// # Errors
    /// [`Error::Null`] if `ptr` is null; [`Error::Misaligned`] if `ptr` or `len` is not a
    /// multiple of 4.
    ///
    /// # Safety
    /// For the whole lifetime `'a`:
    /// * `ptr..ptr + len` must be valid for reads and writes (one allocation, or memory mapped
    ///   for us such as a granted page or a foreign page mapped by the hypervisor), and must not
    ///   be unmapped or freed;
    /// * every access *by Rust code in this program* to that memory must be an atomic access of 4
    ///   bytes at a 4-aligned address (through a `SharedMem`, or through `AtomicU32`), and no
    ///   reference to the memory other than `&AtomicU32` may exist. Writes by another domain or
    ///   by a device are outside the Rust abstract machine and are allowed.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Result<Self, Error> {
        let base = NonNull::new(ptr).ok_or(Error::Null)?;
        if ptr.addr() % WORD != 0 {
            return Err(Error::Misaligned {
                offset: 0,
                align: WORD,
            });
        }
        if len % WORD != 0 {
            return Err(Error::Misaligned {
                offset: len,
                align: WORD,
            });
        }
        // INVARIANT: base and len are word multiples, so the containing-word span is exactly
        // `ptr..ptr + len`, which the caller guarantees valid and atomically accessed.
        Ok(SharedMem {
            base,
            len,
            _life: PhantomData,
        })
    }

    /// Views caller-owned words as shared memory. Safe: the storage is already `AtomicU32`, so
    /// whatever else the caller does with it is a same-size atomic access.
    #[must_use]
    pub fn from_words(words: &'a [AtomicU32]) -> Self {
        let len = core::mem::size_of_val(words);
        // `as_ptr` of a slice is never null (dangling but aligned when empty).
        let base = NonNull::from(words).cast::<u8>();
        // INVARIANT: `words` is borrowed for 'a, 4-aligned, `len` bytes long, and consists of
        // `AtomicU32` (interior mutability), so atomic 4-byte accesses through a pointer derived
        // from the shared borrow are permitted and no other access size can happen.
        SharedMem {
            base,
            len,
            _life: PhantomData,
        }
    }

    /// Views caller-owned contiguous pages as shared memory (a multi-page ring is `&pages[..n]`).
    #[must_use]
    pub fn from_pages(pages: &'a [Page]) -> Self {
        let len = core::mem::size_of_val(pages);
        let base = NonNull::from(pages).cast::<u8>();
        // INVARIANT: as in `from_words`: `Page` is `repr(C)` over `[AtomicU32; 1024]` with no
        // padding (size 4096 = 1024 * 4), so the slice is `len` bytes of `AtomicU32`.
        SharedMem {
            base,
            len,
            _life: PhantomData,
        }
    }

    /// Length of the view in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The base address, e.g. to look up a frame number. Never dereference it directly.
    #[must_use]
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    #[inline]
    fn check(&self, offset: usize, len: usize) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// The sub-view `offset..offset + len`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if the range does not lie within this view.
    pub fn subrange(&self, offset: usize, len: usize) -> Result<SharedMem<'a>, Error> {
        self.check(offset, len)?;
        // INVARIANT: `offset + len <= self.len`, so the new containing-word span lies within
        // ours; the access discipline is inherited.
        let base = self.base.as_ptr().wrapping_add(offset);
        Ok(SharedMem {
            // `base + offset` is inside (or one past) a valid allocation, hence non-null.
            base: NonNull::new(base).ok_or(Error::Null)?,
            len,
            _life: PhantomData,
        })
    }

    /// The 4-aligned word at `offset` as a pre-checked handle, so hot paths (ring indices) need
    /// no further bounds or alignment checks.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`].
    #[inline]
    pub fn u32_at(&self, offset: usize) -> Result<SharedU32<'a>, Error> {
        self.check(offset, WORD)?;
        let addr = self.base.as_ptr().wrapping_add(offset);
        if addr.addr() % WORD != 0 {
            return Err(Error::Misaligned {
                offset,
                align: WORD,
            });
        }
        // INVARIANT: `addr` is 4-aligned and within our span (checked above).
        Ok(SharedU32 {
            addr: NonNull::new(addr).ok_or(Error::Null)?,
            _life: PhantomData,
        })
    }

    /// Loads the 32-bit word at 4-aligned `offset` with `Acquire` ordering.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`].
    pub fn load_acquire_u32(&self, offset: usize) -> Result<u32, Error> {
        Ok(self.u32_at(offset)?.load(Ordering::Acquire))
    }

    /// Loads the 32-bit word at 4-aligned `offset` with `Relaxed` ordering.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`].
    pub fn load_relaxed_u32(&self, offset: usize) -> Result<u32, Error> {
        Ok(self.u32_at(offset)?.load(Ordering::Relaxed))
    }

    /// Stores the 32-bit word at 4-aligned `offset` with `Release` ordering.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`].
    pub fn store_release_u32(&self, offset: usize, value: u32) -> Result<(), Error> {
        self.u32_at(offset)?.store(value, Ordering::Release);
        Ok(())
    }

    /// Stores the 32-bit word at 4-aligned `offset` with `Relaxed` ordering.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`].
    pub fn store_relaxed_u32(&self, offset: usize, value: u32) -> Result<(), Error> {
        self.u32_at(offset)?.store(value, Ordering::Relaxed);
        Ok(())
    }

    /// Checks `offset..offset + len` and splits it into a partial head word, whole middle
    /// words and a partial tail word.
    #[inline]
    fn span(&self, offset: usize, len: usize) -> Result<Span, Error> {
        self.check(offset, len)?;
        let start = self.base.as_ptr().wrapping_add(offset);
        let skip = start.addr() % WORD;
        let head = if skip == 0 { 0 } else { (WORD - skip).min(len) };
        let words = (len - head) / WORD;
        Ok(Span {
            start,
            skip,
            head,
            words,
        })
    }

    /// Copies `dst.len()` bytes starting at `offset` out of shared memory (relaxed atomic word
    /// loads; each shared byte is read exactly once).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`]; nothing is copied then.
    #[inline]
    pub fn copy_to_slice(&self, offset: usize, dst: &mut [u8]) -> Result<(), Error> {
        let sp = self.span(offset, dst.len())?;
        let (head, rest) = dst.split_at_mut(sp.head);
        let (middle, tail) = rest.split_at_mut(sp.words * WORD);
        if !head.is_empty() {
            // SAFETY: the containing word of the first byte of the checked range is 4-aligned
            // and lies in our containing-word span.
            let w = unsafe { word(sp.start.wrapping_sub(sp.skip)) };
            head.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes()[sp.skip..][..sp.head]);
        }
        let mut addr = sp.start.wrapping_add(sp.head);
        for chunk in middle.chunks_exact_mut(WORD) {
            // SAFETY: after the head, `addr` is 4-aligned and the whole word lies in the
            // checked range.
            let w = unsafe { word(addr) };
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
            addr = addr.wrapping_add(WORD);
        }
        if !tail.is_empty() {
            // SAFETY: `addr` is 4-aligned and contains the first tail byte, which is in the
            // checked range, so the word lies in our containing-word span.
            let w = unsafe { word(addr) };
            tail.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes()[..tail.len()]);
        }
        Ok(())
    }

    /// Copies `src` into shared memory starting at `offset` (relaxed atomic word stores; bytes
    /// outside the range, even within a partially covered word, are left untouched).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`]; nothing is written then.
    #[inline]
    pub fn copy_from_slice(&self, offset: usize, src: &[u8]) -> Result<(), Error> {
        let sp = self.span(offset, src.len())?;
        let (head, rest) = src.split_at(sp.head);
        let (middle, tail) = rest.split_at(sp.words * WORD);
        // SAFETY: the containing word of the first byte of the checked range is 4-aligned and
        // lies in our containing-word span; `head` ends within that word.
        unsafe { store_partial(sp.start.wrapping_sub(sp.skip), sp.skip, head) };
        let mut addr = sp.start.wrapping_add(sp.head);
        for chunk in middle.chunks_exact(WORD) {
            let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            // SAFETY: after the head, `addr` is 4-aligned and the whole word lies in the
            // checked range.
            unsafe { word(addr) }.store(value, Ordering::Relaxed);
            addr = addr.wrapping_add(WORD);
        }
        // SAFETY: `addr` is 4-aligned; if `tail` is non-empty its first byte is in the checked
        // range, so the word lies in our span (an empty `tail` touches nothing).
        unsafe { store_partial(addr, 0, tail) };
        Ok(())
    }

    /// Sets `len` bytes at `offset` to `byte`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`]; nothing is written then.
    #[inline]
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), Error> {
        let sp = self.span(offset, len)?;
        let bytes = [byte; WORD];
        if sp.head == 0 && len % WORD == 0 {
            // Fast path (the zero padding of a ring slot): whole words only.
            for i in 0..len / WORD {
                // SAFETY: `sp.start` is 4-aligned (no head) and the word lies in the checked
                // range.
                unsafe { word(sp.start.wrapping_add(i * WORD)) }
                    .store(u32::from_ne_bytes(bytes), Ordering::Relaxed);
            }
            return Ok(());
        }
        // SAFETY: as in `copy_from_slice`.
        unsafe { store_partial(sp.start.wrapping_sub(sp.skip), sp.skip, &bytes[..sp.head]) };
        let mut addr = sp.start.wrapping_add(sp.head);
        for _ in 0..sp.words {
            // SAFETY: as in `copy_from_slice`.
            unsafe { word(addr) }.store(u32::from_ne_bytes(bytes), Ordering::Relaxed);
            addr = addr.wrapping_add(WORD);
        }
        let tail = len - sp.head - sp.words * WORD;
        // SAFETY: as in `copy_from_slice`.
        unsafe { store_partial(addr, 0, &bytes[..tail]) };
        Ok(())
    }

    /// Zero-fills `len` bytes at `offset`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`]; nothing is written then.
    #[inline]
    pub fn zero(&self, offset: usize, len: usize) -> Result<(), Error> {
        self.fill(offset, len, 0)
    }

    /// Zero-fills the whole view.
    pub fn zero_all(&self) {
        // Cannot fail: the range is the view itself.
        let _ = self.fill(0, self.len, 0);
    }

    /// Copies a `T` out of shared memory at `offset` (any alignment). The result is a local
    /// value the peer can no longer change: validate it, not the shared copy.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`].
    #[inline]
    pub fn read<T: Pod>(&self, offset: usize) -> Result<T, Error> {
        let mut value = zeroed::<T>();
        if size_of::<T>() % WORD == 0 {
            self.check(offset, size_of::<T>())?;
            let start = self.base.as_ptr().wrapping_add(offset);
            if start.addr() % WORD == 0 {
                // Fast path (ring slots): whole words, a loop of known length the compiler
                // unrolls. Same accesses as `copy_to_slice`, without its head/tail split.
                let dst = (&raw mut value).cast::<u8>();
                let load = |i: usize| {
                    // SAFETY: `start` is 4-aligned and `start..start + size_of::<T>()` is in
                    // our checked range; callers pass `i < size_of::<T>() / WORD`, so the word
                    // is in our containing-word span.
                    unsafe { word(start.wrapping_add(i * WORD)) }.load(Ordering::Relaxed)
                };
                // Pairs of words go into the local copy as one 8-byte store: a caller reading
                // a `u64` field of the copy then gets it by store forwarding, where two 4-byte
                // stores would stall the load (measured: the main cost of the 4-byte copy).
                // Shared memory still sees only 4-byte atomic loads.
                let pairs = size_of::<T>() / (2 * WORD);
                for p in 0..pairs {
                    let (first, second) = (u64::from(load(2 * p)), u64::from(load(2 * p + 1)));
                    // The word at the lower address holds the lower-addressed bytes.
                    let both = if cfg!(target_endian = "little") {
                        first | second << 32
                    } else {
                        first << 32 | second
                    };
                    // SAFETY: `8 * p + 8 <= size_of::<T>()`: the write stays inside the local
                    // `value`; any bytes are a valid `T` (`T: Pod`).
                    unsafe { dst.add(8 * p).cast::<u64>().write_unaligned(both) };
                }
                if size_of::<T>() % (2 * WORD) != 0 {
                    let last = load(2 * pairs);
                    // SAFETY: the last word: `8 * pairs + 4 == size_of::<T>()`.
                    unsafe { dst.add(8 * pairs).cast::<u32>().write_unaligned(last) };
                }
                return Ok(value);
            }
        }
        self.copy_to_slice(offset, as_bytes_mut(&mut value))?;
        Ok(value)
    }

    /// Copies `value` into shared memory at `offset` (any alignment). Every byte of the
    /// `size_of::<T>()` bytes is written (a `Pod` has no padding to leak).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`]; nothing is written then.
    #[inline]
    pub fn write<T: Pod>(&self, offset: usize, value: &T) -> Result<(), Error> {
        if size_of::<T>() % WORD == 0 {
            self.check(offset, size_of::<T>())?;
            let start = self.base.as_ptr().wrapping_add(offset);
            if start.addr() % WORD == 0 {
                // Fast path, as in `read`.
                let src = (value as *const T).cast::<u8>();
                for i in 0..size_of::<T>() / WORD {
                    // SAFETY: `i * WORD + 4 <= size_of::<T>()`: the read stays inside `*value`,
                    // whose bytes are all initialised (`T: Pod` has no padding).
                    let w = unsafe { src.add(i * WORD).cast::<u32>().read_unaligned() };
                    // SAFETY: as in `read`.
                    unsafe { word(start.wrapping_add(i * WORD)) }.store(w, Ordering::Relaxed);
                }
                return Ok(());
            }
        }
        self.copy_from_slice(offset, as_bytes(value))
    }
}

/// A pre-checked, 4-aligned 32-bit word of shared memory (typically a ring index).
///
/// # Invariants
/// `addr` is 4-aligned and lies within the containing-word span of the [`SharedMem<'a>`] it
/// came from, so it is valid for atomic access for `'a` under that type's invariant.
#[derive(Clone, Copy)]
pub struct SharedU32<'a> {
    addr: NonNull<u8>,
    _life: PhantomData<&'a AtomicU32>,
}

// SAFETY: only atomic operations are performed through `addr`; see `SharedMem`.
unsafe impl Send for SharedU32<'_> {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedU32<'_> {}

impl fmt::Debug for SharedU32<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedU32")
            .field("addr", &self.addr)
            .finish()
    }
}

impl SharedU32<'_> {
    #[inline]
    fn atomic(&self) -> &AtomicU32 {
        // SAFETY: type invariant: `addr` is 4-aligned within a `SharedMem<'a>` span, valid for
        // atomic access for `'a`, which outlives `self`.
        unsafe { word(self.addr.as_ptr()) }
    }

    /// Atomic load with the given ordering (`Relaxed`, `Acquire` or `SeqCst`).
    ///
    /// # Panics
    /// If `order` is `Release` or `AcqRel` (as `AtomicU32::load`); never on peer data.
    #[must_use]
    #[inline]
    pub fn load(&self, order: Ordering) -> u32 {
        self.atomic().load(order)
    }

    /// Atomic store with the given ordering (`Relaxed`, `Release` or `SeqCst`).
    ///
    /// # Panics
    /// If `order` is `Acquire` or `AcqRel` (as `AtomicU32::store`); never on peer data.
    #[inline]
    pub fn store(&self, value: u32, order: Ordering) {
        self.atomic().store(value, order);
    }

    /// `Acquire` load: later reads of shared memory see everything the peer wrote before its
    /// `Release` store of this word.
    #[must_use]
    #[inline]
    pub fn load_acquire(&self) -> u32 {
        self.load(Ordering::Acquire)
    }

    /// `Relaxed` load.
    #[must_use]
    #[inline]
    pub fn load_relaxed(&self) -> u32 {
        self.load(Ordering::Relaxed)
    }

    /// `Release` store: the peer, after an `Acquire` load that sees `value`, sees every earlier
    /// write of ours to shared memory.
    #[inline]
    pub fn store_release(&self, value: u32) {
        self.store(value, Ordering::Release);
    }

    /// `Relaxed` store.
    #[inline]
    pub fn store_relaxed(&self, value: u32) {
        self.store(value, Ordering::Relaxed);
    }

    /// Atomic OR (e.g. setting a bit Xen may set concurrently); returns the previous value.
    #[inline]
    pub fn fetch_or(&self, bits: u32, order: Ordering) -> u32 {
        self.atomic().fetch_or(bits, order)
    }

    /// Atomic AND; returns the previous value.
    #[inline]
    pub fn fetch_and(&self, bits: u32, order: Ordering) -> u32 {
        self.atomic().fetch_and(bits, order)
    }

    /// Atomic swap; returns the previous value.
    #[inline]
    pub fn swap(&self, value: u32, order: Ordering) -> u32 {
        self.atomic().swap(value, order)
    }

    /// Atomic compare-and-exchange (strong). A peer can change the word at will, so callers
    /// must bound any retry loop built on this (a hostile peer could otherwise starve it).
    ///
    /// # Errors
    /// The current value, when it differs from `current`.
    ///
    /// # Panics
    /// On invalid orderings, as `AtomicU32::compare_exchange`; never on peer data.
    #[inline]
    pub fn compare_exchange(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u32, u32> {
        self.atomic()
            .compare_exchange(current, new, success, failure)
    }
}

/// A memory fence (`core::sync::atomic::fence`).
///
/// # Panics
/// If `order` is `Relaxed` (as `core::sync::atomic::fence`).
#[inline]
pub fn fence(order: Ordering) {
    core::sync::atomic::fence(order);
}

/// A full (`SeqCst`) fence: Xen's `xen_mb()`. Between "store my index" and "load the peer's
/// index" on both sides of a ring, it guarantees at least one side sees the other's store, which
/// is what makes notification suppression free of lost wake-ups.
#[inline]
pub fn full_fence() {
    core::sync::atomic::fence(Ordering::SeqCst);
}

#[cfg(test)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "test patterns are deliberately truncated"
)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn words(n: usize) -> Vec<AtomicU32> {
        (0..n).map(|_| AtomicU32::new(0)).collect()
    }

    #[test]
    fn bounds_are_checked() {
        let w = words(4);
        let m = SharedMem::from_words(&w);
        assert_eq!(m.len(), 16);
        assert!(m.read::<u64>(8).is_ok());
        assert_eq!(
            m.read::<u64>(9),
            Err(Error::OutOfBounds {
                offset: 9,
                len: 8,
                size: 16
            })
        );
        assert!(m.read::<u8>(usize::MAX).is_err());
        assert!(m.write(usize::MAX - 1, &0u32).is_err());
        assert!(m.subrange(4, 13).is_err());
        assert!(m.subrange(16, 0).is_ok());
        assert!(m.zero(0, 17).is_err());
        assert_eq!(
            m.load_acquire_u32(2),
            Err(Error::Misaligned {
                offset: 2,
                align: 4
            })
        );
        assert!(m.load_acquire_u32(16).is_err());
        let sub = m.subrange(2, 8).unwrap();
        assert!(sub.load_relaxed_u32(0).is_err());
        assert!(sub.load_relaxed_u32(2).is_ok());
    }

    #[test]
    fn unaligned_roundtrip_preserves_neighbours() {
        let w = words(8);
        let m = SharedMem::from_words(&w);
        m.fill(0, 32, 0xaa).unwrap();
        for off in 0..20 {
            for len in 0..12 {
                m.fill(0, 32, 0xaa).unwrap();
                let src: Vec<u8> = (0..len).map(|i| i as u8 + 1).collect();
                m.copy_from_slice(off, &src).unwrap();
                let mut all = [0u8; 32];
                m.copy_to_slice(0, &mut all).unwrap();
                for (i, b) in all.iter().enumerate() {
                    if i >= off && i < off + len {
                        assert_eq!(*b, (i - off) as u8 + 1);
                    } else {
                        assert_eq!(*b, 0xaa, "off {off} len {len} byte {i}");
                    }
                }
                let mut back = std::vec![0u8; len];
                m.copy_to_slice(off, &mut back).unwrap();
                assert_eq!(back, src);
            }
        }
    }

    #[test]
    fn typed_read_write() {
        let w = words(8);
        let m = SharedMem::from_words(&w);
        m.write(3, &0x1122_3344_5566_7788u64).unwrap();
        assert_eq!(m.read::<u64>(3).unwrap(), 0x1122_3344_5566_7788);
        m.write(12, &[1u16, 2, 3]).unwrap();
        assert_eq!(m.read::<[u16; 3]>(12).unwrap(), [1, 2, 3]);
        m.store_release_u32(28, 7).unwrap();
        assert_eq!(m.load_acquire_u32(28).unwrap(), 7);
        let sub = m.subrange(28, 4).unwrap();
        assert_eq!(sub.read::<u32>(0).unwrap(), 7);
        let cell = m.u32_at(28).unwrap();
        cell.store_relaxed(9);
        assert_eq!(cell.load_relaxed(), 9);
        assert_eq!(cell.fetch_or(0x30, Ordering::SeqCst), 9);
        assert_eq!(cell.fetch_and(!1, Ordering::SeqCst), 0x39);
        assert_eq!(cell.swap(5, Ordering::AcqRel), 0x38);
        assert_eq!(
            cell.compare_exchange(4, 6, Ordering::SeqCst, Ordering::SeqCst),
            Err(5)
        );
        assert_eq!(
            cell.compare_exchange(5, 6, Ordering::SeqCst, Ordering::SeqCst),
            Ok(5)
        );
        assert_eq!(cell.load_acquire(), 6);
        m.zero_all();
        assert_eq!(m.read::<[u64; 4]>(0).unwrap(), [0; 4]);
    }

    /// `read`/`write`/`fill` take a whole-word fast path when the address is 4-aligned and the
    /// size a multiple of 4 (pairs of words become one 8-byte local store in `read`); every
    /// offset and size must give the same bytes as the general byte-span copy, and leave the
    /// neighbours alone.
    #[test]
    fn whole_word_fast_paths_match_the_byte_copy() {
        fn check<const N: usize>(m: &SharedMem<'_>, off: usize) {
            let mut v = [0u8; N];
            for (i, b) in v.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(29).wrapping_add(off as u8) | 1;
            }
            m.fill(0, 64, 0xaa).unwrap();
            m.write(off, &v).unwrap();
            let mut all = [0u8; 64];
            m.copy_to_slice(0, &mut all).unwrap();
            for (i, b) in all.iter().enumerate() {
                let want = if (off..off + N).contains(&i) {
                    v[i - off]
                } else {
                    0xaa
                };
                assert_eq!(*b, want, "write N={N} off={off} byte {i}");
            }
            assert_eq!(m.read::<[u8; N]>(off).unwrap(), v, "read N={N} off={off}");
            m.fill(off, N, 0x5c).unwrap();
            m.copy_to_slice(0, &mut all).unwrap();
            for (i, b) in all.iter().enumerate() {
                let want = if (off..off + N).contains(&i) {
                    0x5c
                } else {
                    0xaa
                };
                assert_eq!(*b, want, "fill N={N} off={off} byte {i}");
            }
        }
        let w = words(16);
        let m = SharedMem::from_words(&w);
        for off in 0..24 {
            check::<4>(&m, off);
            check::<8>(&m, off);
            check::<12>(&m, off);
            check::<20>(&m, off);
            check::<24>(&m, off);
            check::<40>(&m, off);
        }
        // Typed values through the fast path keep their field values.
        m.write(8, &[0x0102_0304_0506_0708u64, 9, 10]).unwrap();
        assert_eq!(
            m.read::<[u64; 3]>(8).unwrap(),
            [0x0102_0304_0506_0708, 9, 10]
        );
        m.write(4, &[1u32, 2, 3]).unwrap();
        assert_eq!(m.read::<[u32; 3]>(4).unwrap(), [1, 2, 3]);
        assert_eq!(
            m.read::<u64>(4).unwrap().to_ne_bytes()[..4],
            1u32.to_ne_bytes()
        );
        // Bounds are still checked first.
        assert!(m.read::<[u64; 2]>(56).is_err());
        let before = m.read::<u32>(60).unwrap();
        assert!(m.write(60, &[0u32; 2]).is_err());
        assert_eq!(
            m.read::<u32>(60).unwrap(),
            before,
            "nothing written out of bounds"
        );
    }

    #[test]
    fn raw_constructor_checks() {
        let w = words(4);
        let p = w.as_ptr() as *mut u8;
        // SAFETY: `w` outlives the views and is only accessed atomically.
        unsafe {
            assert_eq!(
                SharedMem::new(core::ptr::null_mut(), 4).unwrap_err(),
                Error::Null
            );
            assert!(SharedMem::new(p.wrapping_add(1), 4).is_err());
            assert!(SharedMem::new(p, 3).is_err());
            let m = SharedMem::new(p, 16).unwrap();
            m.write(0, &5u32).unwrap();
        }
        assert_eq!(w[0].load(Ordering::Relaxed), 5);
    }

    #[test]
    fn pages_are_contiguous() {
        let pages = [Page::new(), Page::new()];
        let m = SharedMem::from_pages(&pages);
        assert_eq!(m.len(), 8192);
        assert_eq!(m.as_ptr() as usize % 4096, 0);
        m.write(4094, &0xabcdu32).unwrap();
        assert_eq!(m.read::<u32>(4094).unwrap(), 0xabcd);
    }

    #[test]
    fn helpers() {
        let mut v = [0u16; 2];
        as_bytes_mut(&mut v).copy_from_slice(&[1, 0, 2, 0]);
        assert_eq!(
            u16::from_le(v[0]),
            if cfg!(target_endian = "little") {
                1
            } else {
                256
            }
        );
        assert_eq!(as_bytes(&7u32).len(), 4);
        assert_eq!(zeroed::<[u64; 3]>(), [0; 3]);
    }

    /// The whole-word paths racing with each other and with the byte path (Miri checks that
    /// every access stays a same-size atomic: no data race, no mixed-size race).
    #[test]
    fn concurrent_whole_word_paths_are_defined() {
        let w = words(16);
        let m = SharedMem::from_words(&w);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..200u64 {
                    m.write(8, &[i, !i, i << 3]).unwrap();
                    m.write(20, &[i as u32; 3]).unwrap();
                    m.fill(32, 16, i as u8).unwrap();
                }
            });
            for _ in 0..200 {
                let _ = m.read::<[u64; 3]>(8).unwrap();
                let _ = m.read::<[u32; 5]>(16).unwrap();
                let _ = m.read::<[u8; 7]>(33).unwrap();
                m.write(40, &[7u32, 8]).unwrap();
            }
        });
    }

    #[test]
    fn concurrent_access_is_defined() {
        let w = words(16);
        let m = SharedMem::from_words(&w);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..1000u32 {
                    m.write(1, &[i as u8; 30]).unwrap();
                }
            });
            for _ in 0..1000 {
                let _ = m.read::<[u8; 30]>(3).unwrap();
                let _ = m.load_relaxed_u32(4).unwrap();
            }
        });
    }
}
