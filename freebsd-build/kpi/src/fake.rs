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
    /// Live sx and mtx locks.
    locks: usize,
    /// Of those, held.
    locks_held: usize,
    /// Live taskqueues: handle -> queue.
    tqs: BTreeMap<usize, FakeTq>,
    next_tq: usize,
    /// Every delayed enqueue, in milliseconds.
    delays: std::vec::Vec<u32>,
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

/// Locks (`sx` and `mtx`) created by `xenrs_sx_new`/`xenrs_mtx_new` and not yet freed.
pub fn locks_out() -> usize {
    kernel(|k| k.locks)
}

/// Locks (`sx` and `mtx`) held right now, by any thread.
pub fn locks_held() -> usize {
    kernel(|k| k.locks_held)
}

/// A fake `struct sx` or `struct mtx`: the holding thread and a condition variable. Waiting
/// for it on the thread that holds it panics (neither lock is recursive in the glue's use; the
/// kernel would panic under `witness(4)` or deadlock); trying it there fails.
struct FakeLock {
    holder: Mutex<Option<std::thread::ThreadId>>,
    cv: std::sync::Condvar,
}

fn lock_new() -> *mut core::ffi::c_void {
    kernel(|k| k.locks += 1);
    std::boxed::Box::into_raw(std::boxed::Box::new(FakeLock {
        holder: Mutex::new(None),
        cv: std::sync::Condvar::new(),
    }))
    .cast()
}

/// # Safety
/// `lock` is a live `FakeLock`.
unsafe fn lock_take(lock: *mut core::ffi::c_void, wait: bool) -> bool {
    // SAFETY: a live FakeLock by the caller's contract.
    let l = unsafe { &*lock.cast::<FakeLock>() };
    let me = std::thread::current().id();
    let mut holder = l.holder.lock().unwrap_or_else(PoisonError::into_inner);
    // A try by the holder fails, as `sx_try_xlock` on a non-recursive lock does; a wait would
    // never end.
    assert!(!wait || *holder != Some(me), "lock taken recursively");
    while holder.is_some() {
        if !wait {
            return false;
        }
        holder = l.cv.wait(holder).unwrap_or_else(PoisonError::into_inner);
    }
    *holder = Some(me);
    kernel(|k| k.locks_held += 1);
    true
}

/// # Safety
/// `lock` is a live `FakeLock`.
unsafe fn lock_release(lock: *mut core::ffi::c_void) {
    // SAFETY: a live FakeLock by the caller's contract.
    let l = unsafe { &*lock.cast::<FakeLock>() };
    let mut holder = l.holder.lock().unwrap_or_else(PoisonError::into_inner);
    assert!(
        *holder == Some(std::thread::current().id()),
        "unlock of a lock this thread does not hold"
    );
    *holder = None;
    kernel(|k| k.locks_held -= 1);
    l.cv.notify_one();
}

/// # Safety
/// `lock` came from `lock_new` and is freed once.
unsafe fn lock_free(lock: *mut core::ffi::c_void) {
    // SAFETY: created by Box::into_raw in lock_new, freed once.
    let l = unsafe { std::boxed::Box::from_raw(lock.cast::<FakeLock>()) };
    assert!(
        l.holder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none(),
        "lock freed while held"
    );
    kernel(|k| k.locks -= 1);
}

/// Fake of xen.ko's `void *xenrs_sx_new(const char *name);`.
#[no_mangle]
pub extern "C" fn xenrs_sx_new(_name: *const c_char) -> *mut core::ffi::c_void {
    lock_new()
}

/// Fake of `void xenrs_sx_lock(void *lock);`.
///
/// # Safety
/// `lock` came from [`xenrs_sx_new`] and is not freed.
#[no_mangle]
pub unsafe extern "C" fn xenrs_sx_lock(lock: *mut core::ffi::c_void) {
    // SAFETY: by the caller's contract.
    unsafe { lock_take(lock, true) };
}

/// Fake of `int xenrs_sx_try_lock(void *lock);`.
///
/// # Safety
/// `lock` came from [`xenrs_sx_new`] and is not freed.
#[no_mangle]
pub unsafe extern "C" fn xenrs_sx_try_lock(lock: *mut core::ffi::c_void) -> core::ffi::c_int {
    // SAFETY: by the caller's contract.
    core::ffi::c_int::from(unsafe { lock_take(lock, false) })
}

/// Fake of `void xenrs_sx_unlock(void *lock);`.
///
/// # Safety
/// `lock` came from [`xenrs_sx_new`] and is held by the caller.
#[no_mangle]
pub unsafe extern "C" fn xenrs_sx_unlock(lock: *mut core::ffi::c_void) {
    // SAFETY: by the caller's contract.
    unsafe { lock_release(lock) };
}

/// Fake of `void xenrs_sx_free(void *lock);`.
///
/// # Safety
/// `lock` came from [`xenrs_sx_new`], is not held and is freed once.
#[no_mangle]
pub unsafe extern "C" fn xenrs_sx_free(lock: *mut core::ffi::c_void) {
    // SAFETY: by the caller's contract.
    unsafe { lock_free(lock) };
}

/// Fake of xen.ko's `void *xenrs_mtx_new(const char *name);`.
#[no_mangle]
pub extern "C" fn xenrs_mtx_new(_name: *const c_char) -> *mut core::ffi::c_void {
    lock_new()
}

/// Fake of `void xenrs_mtx_lock(void *m);`.
///
/// # Safety
/// `m` came from [`xenrs_mtx_new`] and is not freed.
#[no_mangle]
pub unsafe extern "C" fn xenrs_mtx_lock(m: *mut core::ffi::c_void) {
    // SAFETY: by the caller's contract.
    unsafe { lock_take(m, true) };
}

/// Fake of `void xenrs_mtx_unlock(void *m);`.
///
/// # Safety
/// `m` came from [`xenrs_mtx_new`] and is held by the caller.
#[no_mangle]
pub unsafe extern "C" fn xenrs_mtx_unlock(m: *mut core::ffi::c_void) {
    // SAFETY: by the caller's contract.
    unsafe { lock_release(m) };
}

/// Fake of `void xenrs_mtx_free(void *m);`.
///
/// # Safety
/// `m` came from [`xenrs_mtx_new`], is not held and is freed once.
#[no_mangle]
pub unsafe extern "C" fn xenrs_mtx_free(m: *mut core::ffi::c_void) {
    // SAFETY: by the caller's contract.
    unsafe { lock_free(m) };
}

/// A fake taskqueue: its task and what is due. Nothing runs by itself: the test runs what is
/// due with [`run_tasks`] (enqueued) and [`run_delayed`] (the timer fired).
struct FakeTq {
    name: String,
    func: unsafe extern "C" fn(*mut core::ffi::c_void),
    arg: usize,
    /// Enqueued and not yet run (enqueues coalesce, as in the kernel).
    due: bool,
    /// A delayed run is armed.
    armed: bool,
}

/// A live fake taskqueue as the tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskQueueInfo {
    /// The thread's name, `"<name><unit> taskq"`.
    pub name: String,
    /// The task's argument (the driver's softc).
    pub arg: usize,
    /// Enqueued, not yet run.
    pub due: bool,
    /// A delayed run is armed.
    pub armed: bool,
}

/// The live taskqueues, in creation order.
pub fn taskqueues() -> std::vec::Vec<TaskQueueInfo> {
    kernel(|k| {
        k.tqs
            .values()
            .map(|t| TaskQueueInfo {
                name: t.name.clone(),
                arg: t.arg,
                due: t.due,
                armed: t.armed,
            })
            .collect()
    })
}

/// Every `xenrs_tq_enqueue_later` delay asked for, in order (milliseconds).
pub fn delays() -> std::vec::Vec<u32> {
    kernel(|k| k.delays.clone())
}

/// Runs every enqueued task once, as the taskqueue threads would (outside the fake kernel's
/// bookkeeping, so a task may enqueue itself again); how many ran.
pub fn run_tasks() -> usize {
    run(|t| core::mem::take(&mut t.due))
}

/// Fires every armed timer: runs those tasks once; how many ran.
pub fn run_delayed() -> usize {
    run(|t| core::mem::take(&mut t.armed))
}

fn run(pick: impl Fn(&mut FakeTq) -> bool) -> usize {
    let due: std::vec::Vec<_> = kernel(|k| {
        k.tqs
            .values_mut()
            .filter_map(|t| pick(t).then_some((t.func, t.arg)))
            .collect()
    });
    for (func, arg) in &due {
        // SAFETY: the argument the glue gave xenrs_tq_new, valid until xenrs_tq_free (which
        // has not run: the queue is still in the table).
        unsafe { func(*arg as *mut core::ffi::c_void) };
    }
    due.len()
}

/// Fake of xen.ko's `void *xenrs_tq_new(void (*fn)(void *), void *arg, const char *name,
/// u_int unit, int prio);`.
///
/// # Safety
/// `name` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn xenrs_tq_new(
    func: unsafe extern "C" fn(*mut core::ffi::c_void),
    arg: *mut core::ffi::c_void,
    name: *const c_char,
    unit: core::ffi::c_uint,
    prio: core::ffi::c_int,
) -> *mut core::ffi::c_void {
    assert!(prio == 0 || prio == 1, "taskqueue priority {prio}");
    // SAFETY: NUL-terminated by the caller's contract.
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    kernel(|k| {
        k.next_tq += 1;
        let handle = 0x7700_0000 + k.next_tq * 64;
        k.tqs.insert(
            handle,
            FakeTq {
                name: std::format!("{name}{unit} taskq"),
                func,
                arg: arg.addr(),
                due: false,
                armed: false,
            },
        );
        core::ptr::without_provenance_mut(handle)
    })
}

/// Fake of `void xenrs_tq_enqueue(void *tq);`.
#[no_mangle]
pub extern "C" fn xenrs_tq_enqueue(tq: *mut core::ffi::c_void) {
    kernel(|k| {
        k.tqs
            .get_mut(&tq.addr())
            .expect("enqueue on a live taskqueue")
            .due = true
    });
}

/// Fake of `void xenrs_tq_enqueue_later(void *tq, u_int ms);`.
#[no_mangle]
pub extern "C" fn xenrs_tq_enqueue_later(tq: *mut core::ffi::c_void, ms: core::ffi::c_uint) {
    kernel(|k| {
        k.tqs
            .get_mut(&tq.addr())
            .expect("enqueue_later on a live taskqueue")
            .armed = true;
        k.delays.push(ms);
    });
}

/// Fake of `void xenrs_tq_drain(void *tq);`: nothing runs by itself in the fake, so this only
/// checks the queue is live.
#[no_mangle]
pub extern "C" fn xenrs_tq_drain(tq: *mut core::ffi::c_void) {
    kernel(|k| assert!(k.tqs.contains_key(&tq.addr()), "drain of a live taskqueue"));
}

/// Fake of `void xenrs_tq_free(void *tq);`: nothing runs after it.
#[no_mangle]
pub extern "C" fn xenrs_tq_free(tq: *mut core::ffi::c_void) {
    kernel(|k| k.tqs.remove(&tq.addr()).expect("free of a live taskqueue"));
}
