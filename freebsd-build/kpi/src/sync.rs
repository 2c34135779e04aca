//! Kernel locks around a value.
//!
//! - [`SxLock`], a sleepable `sx(9)` lock: what the glue uses to serialise access to a protocol
//!   core from threads that may sleep while holding it (xenstore waits, ioctls); the drivers'
//!   device lock. Contexts that may not sleep only [`SxLock::try_with`] it.
//! - [`Mutex`], an `MTX_DEF` `mutex(9)`: held only for a push or a pop of a short queue, so the
//!   contexts that may not sleep (`if_transmit`, `d_strategy`, event handlers) can leave work
//!   for the device lock's holder.
//!
//! The locks themselves are xen.ko's shim (`xenrs_sx_*`, `xenrs_mtx_*`, exported to every
//! module, which all depend on xen.ko): `struct sx` and `struct mtx` are private layouts of
//! `<sys/sx.h>`/`<sys/mutex.h>`, and `sx_xlock`/`mtx_lock` are macros, so Rust never sees
//! either. Never taken from an interrupt filter.

use core::cell::UnsafeCell;
use core::ffi::{c_char, c_int, c_void, CStr};
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
    /// `sx_try_xlock`: 1 when taken, 0 when another thread holds it.
    fn xenrs_sx_try_lock(lock: *mut c_void) -> c_int;
    /// Defined by xen.ko's shim: a new `MTX_DEF` mutex named `name` (which must outlive it);
    /// NULL when out of memory.
    fn xenrs_mtx_new(name: *const c_char) -> *mut c_void;
    /// `mtx_lock`.
    fn xenrs_mtx_lock(m: *mut c_void);
    /// `mtx_unlock`.
    fn xenrs_mtx_unlock(m: *mut c_void);
    /// `mtx_destroy` and free.
    fn xenrs_mtx_free(m: *mut c_void);
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

    /// Takes the lock if it is free now; `None` when another thread holds it. Never sleeps.
    pub fn try_lock(&self) -> Option<SxGuard<'_, T>> {
        // SAFETY: a live lock created by xenrs_sx_new.
        let taken = unsafe { xenrs_sx_try_lock(self.lock.as_ptr()) } != 0;
        // `then`, not `then_some`: a guard built eagerly would unlock on drop when not taken.
        taken.then(|| SxGuard { owner: self })
    }

    /// Runs `f` with the lock held, waiting (sleeping) for it: only from contexts that may
    /// sleep (xenbus callbacks, ioctls, sysctl handlers, a device's taskqueue).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.lock())
    }

    /// Runs `f` if the lock is free now; `None` when another thread holds it. Never sleeps.
    pub fn try_with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.try_lock().map(|mut guard| f(&mut guard))
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

/// A value behind an `MTX_DEF` mutex: for a short queue that contexts which may not sleep
/// push to and the device lock's holder pops from.
///
/// # Invariants
/// `mtx` is a live mutex from `xenrs_mtx_new`; `value` is only reached while it is held.
pub struct Mutex<T> {
    mtx: NonNull<c_void>,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached under the mutex (type invariant), from any thread.
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: as above; the mutex itself may be used and freed from any thread.
unsafe impl<T: Send> Send for Mutex<T> {}

impl<T> core::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mutex").finish_non_exhaustive()
    }
}

impl<T> Mutex<T> {
    /// A new mutex named `name` (as `witness(4)` and `lockstat` show it) around `value`.
    ///
    /// # Errors
    /// `ENOMEM`.
    pub fn new(name: &'static CStr, value: T) -> Result<Mutex<T>, Errno> {
        // SAFETY: `name` is a NUL-terminated static string; NULL on failure.
        let mtx = NonNull::new(unsafe { xenrs_mtx_new(name.as_ptr()) }).ok_or(Errno::ENOMEM)?;
        // INVARIANT: a fresh mutex.
        Ok(Mutex {
            mtx,
            value: UnsafeCell::new(value),
        })
    }

    /// Runs `f` with the mutex held. `f` must not sleep, and must not take this mutex again
    /// (`MTX_DEF` is not recursive): keep it to a push or a pop.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: a live mutex (invariant).
        unsafe { xenrs_mtx_lock(self.mtx.as_ptr()) };
        // SAFETY: the mutex is held, so this is the only reference to the value.
        let r = f(unsafe { &mut *self.value.get() });
        // SAFETY: held by us, above.
        unsafe { xenrs_mtx_unlock(self.mtx.as_ptr()) };
        r
    }
}

impl<T> Drop for Mutex<T> {
    fn drop(&mut self) {
        // SAFETY: a live mutex nobody holds (`&mut self`), freed once.
        unsafe { xenrs_mtx_free(self.mtx.as_ptr()) }
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

    #[test]
    fn try_with_fails_while_held_and_with_runs_under_the_lock() {
        let _kernel = crate::fake::session();
        let lock = SxLock::new(c"test", 1u32).unwrap();
        let guard = lock.lock();
        assert_eq!(crate::fake::locks_held(), 1);
        // Another thread finds it taken and does not wait.
        std::thread::scope(|s| {
            s.spawn(|| assert!(lock.try_with(|v| *v += 1).is_none()));
        });
        drop(guard);
        assert_eq!(crate::fake::locks_held(), 0);
        assert_eq!(
            lock.try_with(|v| {
                *v += 1;
                *v
            }),
            Some(2)
        );
        assert_eq!(lock.with(|v| *v), 2);
        assert_eq!(crate::fake::locks_held(), 0);
    }

    #[test]
    fn a_mutex_serialises_and_is_freed() {
        let _kernel = crate::fake::session();
        let m = std::sync::Arc::new(Mutex::new(c"q", std::vec::Vec::new()).unwrap());
        assert_eq!(crate::fake::locks_out(), 1);
        let threads: std::vec::Vec<_> = (0..4u32)
            .map(|t| {
                let m = std::sync::Arc::clone(&m);
                std::thread::spawn(move || {
                    for i in 0..500u32 {
                        m.with(|q| {
                            let len = q.len();
                            std::thread::yield_now();
                            q.push(t * 1000 + i);
                            assert_eq!(q.len(), len + 1, "another thread got in");
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.with(|q| q.len()), 2000);
        drop(m);
        assert_eq!(crate::fake::locks_out(), 0);
    }
}
