//! Fake kernel functions for host tests of the glue (feature `fake-kpi`, and this crate's own
//! tests).
//!
//! Each fake is a `#[no_mangle] extern "C"` function with the kernel function's name and C
//! signature, so the glue is linked against it exactly as it is linked against the kernel. The
//! fakes record what the glue did (console output, environment copies handed out and not yet
//! freed) for the tests to check. Tests take [`session`] first: it serialises the tests that
//! share this one fake kernel and resets it.

extern crate std;

use core::ffi::{c_char, CStr};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::string::String;
use std::sync::{Mutex, MutexGuard, PoisonError};

#[derive(Default)]
struct FakeKernel {
    env: BTreeMap<String, CString>,
    console: String,
    env_copies_out: usize,
    /// Live heap blocks: address -> layout.
    heap: BTreeMap<usize, std::alloc::Layout>,
    /// Live sx locks.
    locks: usize,
}

static KERNEL: Mutex<Option<FakeKernel>> = Mutex::new(None);
static SESSION: Mutex<()> = Mutex::new(());

fn kernel<R>(f: impl FnOnce(&mut FakeKernel) -> R) -> R {
    let mut guard = KERNEL.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(FakeKernel::default))
}

/// Exclusive use of the fake kernel for one test, starting from an empty environment and
/// console. Dropping the guard ends the session.
pub fn session() -> MutexGuard<'static, ()> {
    let guard = SESSION.lock().unwrap_or_else(PoisonError::into_inner);
    kernel(|k| *k = FakeKernel::default());
    guard
}

/// Sets a loader tunable (kernel environment variable).
pub fn set_env(name: &str, value: &str) {
    let value = CString::new(value).expect("no NUL in a tunable value");
    kernel(|k| k.env.insert(name.into(), value));
}

/// Everything printed so far.
pub fn console() -> String {
    kernel(|k| k.console.clone())
}

/// Environment copies `kern_getenv` handed out that were not given back to `freeenv`.
pub fn env_copies_out() -> usize {
    kernel(|k| k.env_copies_out)
}

/// Heap blocks `xenrs_malloc` handed out that were not given back to `xenrs_free`.
pub fn heap_blocks_out() -> usize {
    kernel(|k| k.heap.len())
}

/// Fake of xen.ko's `void *xenrs_malloc(size_t size, size_t align);`: NULL for alignments
/// above a page, as `malloc_aligned(9)` cannot provide them.
#[no_mangle]
pub extern "C" fn xenrs_malloc(size: usize, align: usize) -> *mut core::ffi::c_void {
    if align > 4096 {
        return core::ptr::null_mut();
    }
    let Ok(layout) = std::alloc::Layout::from_size_align(size.max(1), align) else {
        return core::ptr::null_mut();
    };
    // SAFETY: non-zero size.
    let ptr = unsafe { std::alloc::alloc(layout) };
    if !ptr.is_null() {
        kernel(|k| k.heap.insert(ptr.addr(), layout));
    }
    ptr.cast()
}

/// Fake of xen.ko's `void xenrs_free(void *ptr);`. Freeing a block twice, or one that did not
/// come from `xenrs_malloc`, panics the test.
///
/// # Safety
/// `ptr` came from [`xenrs_malloc`].
#[no_mangle]
pub unsafe extern "C" fn xenrs_free(ptr: *mut core::ffi::c_void) {
    let layout = kernel(|k| k.heap.remove(&ptr.addr()))
        .expect("xenrs_free of a block xenrs_malloc did not hand out (or freed twice)");
    // SAFETY: allocated by xenrs_malloc with this layout, removed from the table once.
    unsafe { std::alloc::dealloc(ptr.cast(), layout) };
}

/// Fake of `char *kern_getenv(const char *name);`.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kern_getenv(name: *const c_char) -> *mut c_char {
    // SAFETY: NUL-terminated by the caller's contract.
    let name = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    kernel(|k| match k.env.get(&name) {
        Some(value) => {
            k.env_copies_out += 1;
            value.clone().into_raw()
        }
        None => core::ptr::null_mut(),
    })
}

/// Fake of `void freeenv(char *env);`.
///
/// # Safety
/// `env` came from [`kern_getenv`] and is freed once.
#[no_mangle]
pub unsafe extern "C" fn freeenv(env: *mut c_char) {
    if env.is_null() {
        return;
    }
    // SAFETY: produced by CString::into_raw in kern_getenv, given back once.
    drop(unsafe { CString::from_raw(env) });
    kernel(|k| k.env_copies_out -= 1);
}

/// Fake of xen.ko's `void xenrs_printf_str(const char *message);`.
///
/// # Safety
/// `message` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn xenrs_printf_str(message: *const c_char) {
    // SAFETY: NUL-terminated by the caller's contract.
    let message = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    kernel(|k| k.console.push_str(&message));
}

/// `sx` locks created by `xenrs_sx_new` and not yet freed.
pub fn locks_out() -> usize {
    kernel(|k| k.locks)
}

/// A fake `struct sx`: a flag and a condition variable.
struct FakeSx {
    held: Mutex<bool>,
    cv: std::sync::Condvar,
}

/// Fake of xen.ko's `void *xenrs_sx_new(const char *name);`.
#[no_mangle]
pub extern "C" fn xenrs_sx_new(_name: *const c_char) -> *mut core::ffi::c_void {
    kernel(|k| k.locks += 1);
    std::boxed::Box::into_raw(std::boxed::Box::new(FakeSx {
        held: Mutex::new(false),
        cv: std::sync::Condvar::new(),
    }))
    .cast()
}

/// Fake of `void xenrs_sx_lock(void *lock);`.
///
/// # Safety
/// `lock` came from [`xenrs_sx_new`] and is not freed.
#[no_mangle]
pub unsafe extern "C" fn xenrs_sx_lock(lock: *mut core::ffi::c_void) {
    // SAFETY: a live FakeSx by the caller's contract.
    let sx = unsafe { &*lock.cast::<FakeSx>() };
    let mut held = sx.held.lock().unwrap_or_else(PoisonError::into_inner);
    while *held {
        held = sx.cv.wait(held).unwrap_or_else(PoisonError::into_inner);
    }
    *held = true;
}

/// Fake of `void xenrs_sx_unlock(void *lock);`.
///
/// # Safety
/// `lock` came from [`xenrs_sx_new`] and is held by the caller.
#[no_mangle]
pub unsafe extern "C" fn xenrs_sx_unlock(lock: *mut core::ffi::c_void) {
    // SAFETY: a live FakeSx by the caller's contract.
    let sx = unsafe { &*lock.cast::<FakeSx>() };
    let mut held = sx.held.lock().unwrap_or_else(PoisonError::into_inner);
    assert!(*held, "sx unlock of a lock not held");
    *held = false;
    sx.cv.notify_one();
}

/// Fake of `void xenrs_sx_free(void *lock);`.
///
/// # Safety
/// `lock` came from [`xenrs_sx_new`], is not held and is freed once.
#[no_mangle]
pub unsafe extern "C" fn xenrs_sx_free(lock: *mut core::ffi::c_void) {
    // SAFETY: created by Box::into_raw in xenrs_sx_new, freed once.
    let sx = unsafe { std::boxed::Box::from_raw(lock.cast::<FakeSx>()) };
    assert!(
        !*sx.held.lock().unwrap_or_else(PoisonError::into_inner),
        "sx freed while held"
    );
    kernel(|k| k.locks -= 1);
}
