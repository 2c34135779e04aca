//! A sleepable kernel lock (`sx(9)`) around a value: what the glue uses to serialise access to
//! a protocol core from threads that may sleep while holding it (xenstore waits, ioctls).
//!
//! The lock itself is xen.ko's shim (`xenrs_sx_new`/`_lock`/`_unlock`/`_free`, exported to
//! every module): `struct sx` is a private layout of `<sys/sx.h>`, and `sx_xlock` is a macro,
//! so Rust never sees either. Never taken from an interrupt filter.

use core::cell::UnsafeCell;
use core::ffi::{c_char, c_void, CStr};
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use crate::Errno;

extern "C" {
    /// Defined by xen.ko's shim: a new `sx` lock named `name` (which must outlive it); NULL
    /// when out of memory.
    fn xenrs_sx_new(name: *const c_char) -> *mut c_void;
    /// `sx_xlock`.
    fn xenrs_sx_lock(lock: *mut c_void);
    /// `sx_xunlock`.
    fn xenrs_sx_unlock(lock: *mut c_void);
    /// `sx_destroy` and free.
    fn xenrs_sx_free(lock: *mut c_void);
}

/// A value behind an `sx(9)` lock.
pub struct SxLock<T> {
    lock: NonNull<c_void>,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through a guard, which exists only while the kernel lock
// is held exclusively; `T: Send` lets it be used from whichever thread holds the lock.
unsafe impl<T: Send> Sync for SxLock<T> {}
// SAFETY: the lock handle is a heap object usable from any thread.
unsafe impl<T: Send> Send for SxLock<T> {}

impl<T> core::fmt::Debug for SxLock<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SxLock").finish_non_exhaustive()
    }
}

impl<T> SxLock<T> {
    /// A new lock named `name` around `value`.
    ///
    /// # Errors
    /// `ENOMEM`.
    pub fn new(name: &'static CStr, value: T) -> Result<SxLock<T>, Errno> {
        // SAFETY: `name` is a NUL-terminated static string.
        let lock = unsafe { xenrs_sx_new(name.as_ptr()) };
        let lock = NonNull::new(lock).ok_or(Errno::ENOMEM)?;
        Ok(SxLock {
            lock,
            value: UnsafeCell::new(value),
        })
    }

    /// Takes the lock (sleeping until it is free).
    pub fn lock(&self) -> SxGuard<'_, T> {
        // SAFETY: a live lock created by xenrs_sx_new.
        unsafe { xenrs_sx_lock(self.lock.as_ptr()) };
        SxGuard { owner: self }
    }

    /// The value, without locking: `&mut self` proves no guard exists.
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    /// The value, consuming the lock.
    pub fn into_inner(self) -> T {
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: a live lock, freed once here (Drop does not run: ManuallyDrop).
        unsafe { xenrs_sx_free(this.lock.as_ptr()) };
        // SAFETY: moved out once; `this` is never used again.
        unsafe { core::ptr::read(this.value.get()) }
    }
}

impl<T> Drop for SxLock<T> {
    fn drop(&mut self) {
        // SAFETY: a live lock; `&mut self` proves nobody holds it.
        unsafe { xenrs_sx_free(self.lock.as_ptr()) };
    }
}

/// Exclusive access to a [`SxLock`]'s value.
pub struct SxGuard<'a, T> {
    owner: &'a SxLock<T>,
}

impl<T> core::fmt::Debug for SxGuard<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SxGuard").finish_non_exhaustive()
    }
}

impl<T> Deref for SxGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the lock is held exclusively.
        unsafe { &*self.owner.value.get() }
    }
}

impl<T> DerefMut for SxGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in deref; `&mut self` makes this the only reference.
        unsafe { &mut *self.owner.value.get() }
    }
}

impl<T> Drop for SxGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: we hold the lock (taken in `lock`).
        unsafe { xenrs_sx_unlock(self.owner.lock.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_serialise_and_locks_are_freed() {
        let _kernel = crate::fake::session();
        let lock = std::sync::Arc::new(SxLock::new(c"test", 0u64).unwrap());
        assert_eq!(crate::fake::locks_out(), 1);
        let threads: std::vec::Vec<_> = (0..4)
            .map(|_| {
                let l = std::sync::Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let mut g = l.lock();
                        let v = *g;
                        std::thread::yield_now();
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 4000);
        drop(lock);
        assert_eq!(crate::fake::locks_out(), 0);
    }
}
