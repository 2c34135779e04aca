//! A device's own taskqueue thread running one task: where a driver's event work runs, so
//! xen.ko's event thread only flags the work and enqueues the task, and the task may sleep
//! (it waits for the device lock like a xenbus callback).
//!
//! The taskqueue is xen.ko's shim (`xenrs_tq_*`, exported to every module): `struct task`,
//! `struct timeout_task` and `TASK_INIT` are private layouts and macros of
//! `<sys/taskqueue.h>`.

use core::ffi::{c_char, c_int, c_uint, c_void, CStr};
use core::ptr::NonNull;

extern "C" {
    /// Defined by xen.ko's shim: a taskqueue with one thread named `"<name><unit> taskq"`
    /// whose task calls `func(arg)`; `prio` 0 is `PWAIT`, 1 `PRIBIO`. NULL when out of memory.
    fn xenrs_tq_new(
        func: unsafe extern "C" fn(*mut c_void),
        arg: *mut c_void,
        name: *const c_char,
        unit: c_uint,
        prio: c_int,
    ) -> *mut c_void;
    /// `taskqueue_enqueue` of the task.
    fn xenrs_tq_enqueue(tq: *mut c_void);
    /// `taskqueue_enqueue_timeout` of the task, `ms` milliseconds from now (at least a tick).
    fn xenrs_tq_enqueue_later(tq: *mut c_void, ms: c_uint);
    /// Cancels a delayed run not yet due, waits for a run in progress.
    fn xenrs_tq_drain(tq: *mut c_void);
    /// Drains the task (now and delayed), then frees the thread and the queue.
    fn xenrs_tq_free(tq: *mut c_void);
}

/// The taskqueue thread's priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// `PWAIT`: a network interface's work.
    Wait,
    /// `PRIBIO`: a disk's I/O completions.
    Bio,
}

/// A taskqueue thread and its one task. Dropping it drains it ([`TaskQueue::drain`]) and
/// frees the thread.
///
/// # Invariants
/// `tq` is a live taskqueue from `xenrs_tq_new`, freed once, by `Drop`.
#[derive(Debug)]
pub struct TaskQueue {
    tq: NonNull<c_void>,
}

// SAFETY: the kernel's taskqueue functions may be called from any thread.
unsafe impl Send for TaskQueue {}
// SAFETY: as above; enqueueing is the kernel's own synchronisation.
unsafe impl Sync for TaskQueue {}

impl TaskQueue {
    /// A taskqueue whose task calls `func(arg)`, with a thread named `"<name><unit> taskq"`.
    /// `None` when out of memory.
    ///
    /// # Safety
    /// `arg` stays valid for `func` until this `TaskQueue` is dropped (the drop waits for a
    /// run in progress, and none starts after it).
    pub unsafe fn new(
        name: &'static CStr,
        unit: u32,
        priority: Priority,
        func: unsafe extern "C" fn(*mut c_void),
        arg: *mut c_void,
    ) -> Option<TaskQueue> {
        let prio = match priority {
            Priority::Wait => 0,
            Priority::Bio => 1,
        };
        // SAFETY: `name` is static and NUL-terminated; `arg` outlives every run of `func`
        // by the caller's contract.
        let tq = unsafe { xenrs_tq_new(func, arg, name.as_ptr(), unit, prio) };
        // INVARIANT: a fresh taskqueue, or none.
        NonNull::new(tq).map(|tq| TaskQueue { tq })
    }

    /// Runs the task soon (once, however often it is enqueued before it runs).
    pub fn enqueue(&self) {
        // SAFETY: a live taskqueue (invariant).
        unsafe { xenrs_tq_enqueue(self.tq.as_ptr()) }
    }

    /// Runs the task in `ms` milliseconds (at least one tick).
    pub fn enqueue_later(&self, ms: u32) {
        // SAFETY: a live taskqueue (invariant).
        unsafe { xenrs_tq_enqueue_later(self.tq.as_ptr(), ms) }
    }

    /// Cancels a delayed run not yet due and waits until the task is neither running nor
    /// enqueued (a run it enqueues itself meanwhile included): after this, with nothing else
    /// enqueueing it, `arg` is no longer used. May sleep.
    pub fn drain(&self) {
        // SAFETY: a live taskqueue (invariant).
        unsafe { xenrs_tq_drain(self.tq.as_ptr()) }
    }
}

impl Drop for TaskQueue {
    fn drop(&mut self) {
        // SAFETY: a live taskqueue, freed once (invariant); waits for a run in progress.
        unsafe { xenrs_tq_free(self.tq.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU32, Ordering};

    unsafe extern "C" fn count(arg: *mut c_void) {
        // SAFETY: the counter below, alive for the test.
        unsafe { &*arg.cast::<AtomicU32>() }.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn a_task_runs_once_per_batch_of_enqueues_and_the_queue_is_freed() {
        let _kernel = crate::fake::session();
        let runs = AtomicU32::new(0);
        let arg = core::ptr::from_ref(&runs).cast_mut().cast();
        // SAFETY: `runs` outlives the queue (dropped at the end of the test).
        let tq = unsafe { TaskQueue::new(c"t", 3, Priority::Wait, count, arg) }.unwrap();
        let info = |due, armed| crate::fake::TaskQueueInfo {
            name: "t3 taskq".into(),
            arg: arg.addr(),
            due,
            armed,
        };
        assert_eq!(crate::fake::taskqueues(), std::vec![info(false, false)]);
        assert_eq!(crate::fake::run_tasks(), 0);
        tq.enqueue();
        tq.enqueue();
        assert_eq!(crate::fake::taskqueues(), std::vec![info(true, false)]);
        assert_eq!(crate::fake::run_tasks(), 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tq.enqueue_later(250);
        assert_eq!(crate::fake::taskqueues(), std::vec![info(false, true)]);
        assert_eq!(crate::fake::run_tasks(), 0);
        assert_eq!(crate::fake::run_delayed(), 1);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(crate::fake::delays(), std::vec![250]);
        assert_eq!(crate::fake::run_delayed(), 0);
        drop(tq);
        assert!(crate::fake::taskqueues().is_empty());
    }
}
