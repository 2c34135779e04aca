//! The grant reference allocator: a lock-free, ABA-safe stack of free references.
//!
//! # Why lock-free
//!
//! Grant references are taken and returned on every I/O of every PV driver, from thread
//! context, from interrupt filters (netfront's RX refill) and from the deferred-revoke timer.
//! A lock would have to be a spin lock with interrupts masked to be usable from all of those,
//! and the platform would have to provide it. A Treiber stack over the reference numbers needs
//! nothing but atomics, is O(1) for both operations, and cannot deadlock.
//!
//! # Layout
//!
//! * `next[r]` holds the reference below `r` on the stack (or [`NIL`]). A reference that is not
//!   on the free stack does not use its `next` slot; the grant table reuses it to chain
//!   references whose revocation was deferred (see `table.rs`), so one array serves both lists.
//! * `head` packs `(tag << 32) | top` into one `AtomicU64` (a 64-bit compare-exchange exists on
//!   both kernel targets: `cmpxchg8b` on i686).
//!
//! # Why the tag (ABA)
//!
//! A pop reads `top` and `next[top]`, then compare-exchanges `head` from `top` to `next[top]`.
//! If, between the read and the exchange, other threads pop `top`, pop `next[top]` and push
//! `top` back, `head` holds `top` again but `next[top]` is stale: a plain exchange would install
//! a reference that is in use as the new top, and it would be handed out twice. Every successful
//! push and pop increments the tag, so that interleaving changes `head` and the exchange fails.
//! The tag is 32 bits: a stale exchange would need exactly 2^32 successful operations by other
//! threads between one thread's two loads, which is not a practical concern.
//!
//! All accesses are atomics on memory this module owns; a logic error can at worst hand out a
//! wrong reference, never cause undefined behaviour. References are range-checked on the way in.
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// "No reference": the end of a chain, or an empty stack.
pub(crate) const NIL: u32 = u32::MAX;

fn pack(tag: u32, top: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(top)
}

fn unpack(word: u64) -> (u32, u32) {
    // CAST: the two halves of a packed word; truncation is the point.
    #[expect(clippy::cast_possible_truncation)]
    ((word >> 32) as u32, word as u32)
}

/// A lock-free stack of free grant references `0..capacity`.
///
/// # Invariants
/// * Every reference reachable from `head` through `next` is `< capacity`, appears once, and is
///   free (owned by nobody else).
/// * `free` equals the number of references on the stack whenever no push or pop is in flight.
#[derive(Debug)]
pub struct RefStack {
    next: Box<[AtomicU32]>,
    head: AtomicU64,
    free: AtomicU32,
}

impl RefStack {
    /// An empty stack able to hold references `0..capacity`.
    #[must_use]
    pub fn new(capacity: u32) -> Self {
        let next: Vec<AtomicU32> = (0..capacity).map(|_| AtomicU32::new(NIL)).collect();
        RefStack {
            next: next.into_boxed_slice(),
            head: AtomicU64::new(pack(0, NIL)),
            free: AtomicU32::new(0),
        }
    }

    /// The largest reference plus one this stack can hold.
    #[must_use]
    pub fn capacity(&self) -> u32 {
        // CAST: built from a u32 capacity.
        #[expect(clippy::cast_possible_truncation)]
        let cap = self.next.len() as u32;
        cap
    }

    /// Number of free references (a snapshot; exact when nothing is in flight).
    #[must_use]
    pub fn free_count(&self) -> u32 {
        self.free.load(Ordering::Relaxed)
    }

    pub(crate) fn slot(&self, r: u32) -> Option<&AtomicU32> {
        self.next.get(r as usize)
    }

    /// Takes a free reference, or `None` if there is none. O(1), lock-free.
    #[must_use]
    pub fn pop(&self) -> Option<u32> {
        let mut cur = self.head.load(Ordering::Acquire);
        loop {
            let (tag, top) = unpack(cur);
            // `top` came from `head`, so it is NIL or in range (invariant); `get` keeps a
            // corrupted value from panicking anyway.
            let below = self.slot(top)?.load(Ordering::Relaxed);
            // Acquire on success: pairs with the Release of the push that put `top` there, so
            // the `next[top]` we read is the one that push wrote (and not an older value).
            match self.head.compare_exchange_weak(
                cur,
                pack(tag.wrapping_add(1), below),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.free.fetch_sub(1, Ordering::Relaxed);
                    return Some(top);
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Pushes the chain `first -> ... -> last` (already linked through `next`) of `count`
    /// references. The caller owns every reference of the chain.
    pub(crate) fn push_chain(&self, first: u32, last: u32, count: u32) {
        let Some(last_slot) = self.slot(last) else {
            return;
        };
        if self.slot(first).is_none() {
            return;
        }
        let mut cur = self.head.load(Ordering::Relaxed);
        loop {
            let (tag, top) = unpack(cur);
            last_slot.store(top, Ordering::Relaxed);
            // Release: the `next` stores of the chain happen before the chain becomes
            // reachable, so a popper (Acquire) reads them.
            match self.head.compare_exchange_weak(
                cur,
                pack(tag.wrapping_add(1), first),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.free.fetch_add(count, Ordering::Relaxed);
                    return;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Returns one reference the caller owns. Out-of-range references are ignored (and reported
    /// as `false`).
    pub fn push(&self, r: u32) -> bool {
        if self.slot(r).is_none() {
            return false;
        }
        self.push_chain(r, r, 1);
        true
    }

    /// Pushes the references `range` (all owned by the caller), lowest on top. Used to add the
    /// references of a new grant frame in one exchange.
    pub fn push_range(&self, start: u32, end: u32) {
        let end = end.min(self.capacity());
        if start >= end {
            return;
        }
        for r in start..end - 1 {
            if let Some(s) = self.slot(r) {
                s.store(r + 1, Ordering::Relaxed);
            }
        }
        self.push_chain(start, end - 1, end - start);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::vec::Vec;

    #[test]
    fn empty_pops_none() {
        let s = RefStack::new(16);
        assert_eq!(s.pop(), None);
        assert!(!s.push(16));
        assert_eq!(s.pop(), None);
    }

    #[test]
    fn range_lowest_first() {
        let s = RefStack::new(16);
        s.push_range(8, 12);
        assert_eq!(s.free_count(), 4);
        assert_eq!(s.pop(), Some(8));
        assert_eq!(s.pop(), Some(9));
        assert!(s.push(8));
        assert_eq!(s.pop(), Some(8));
        assert_eq!(s.pop(), Some(10));
        assert_eq!(s.pop(), Some(11));
        assert_eq!(s.pop(), None);
        assert_eq!(s.free_count(), 0);
    }

    #[test]
    fn two_threads_never_share_a_ref() {
        use std::sync::atomic::AtomicBool;
        const N: u32 = 64;
        let s = Arc::new(RefStack::new(N));
        s.push_range(0, N);
        // `owned[r]` is set while some thread holds `r`: a pop that finds it set means the
        // stack handed out a reference twice.
        let owned: Arc<Vec<AtomicBool>> =
            Arc::new((0..N).map(|_| AtomicBool::new(false)).collect());
        let run = |s: Arc<RefStack>, owned: Arc<Vec<AtomicBool>>, seed: u32| {
            std::thread::spawn(move || {
                let mut held = Vec::new();
                let mut x = seed;
                for _ in 0..50_000u32 {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    if x % 3 != 0 || held.is_empty() {
                        if let Some(r) = s.pop() {
                            assert!(
                                !owned[r as usize].swap(true, Ordering::SeqCst),
                                "ref {r} twice"
                            );
                            held.push(r);
                        }
                    } else {
                        let r = held.swap_remove(x as usize % held.len());
                        owned[r as usize].store(false, Ordering::SeqCst);
                        assert!(s.push(r));
                    }
                }
                held
            })
        };
        let a = run(Arc::clone(&s), Arc::clone(&owned), 0x1234_5678);
        let b = run(Arc::clone(&s), Arc::clone(&owned), 0x9abc_def1);
        let ha = a.join().unwrap();
        let hb = b.join().unwrap();
        let mut all: HashSet<u32> = HashSet::new();
        for r in ha.iter().chain(hb.iter()) {
            assert!(all.insert(*r), "ref {r} held by two threads");
        }
        while let Some(r) = s.pop() {
            assert!(all.insert(r), "ref {r} both free and held");
        }
        assert_eq!(all.len(), N as usize);
    }
}
