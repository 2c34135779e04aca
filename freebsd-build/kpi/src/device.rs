//! The driver modules' per-device softc, once for all of them: the device behind its sleepable
//! lock, a short queue of work that arrived while the lock was taken, the event flag, the
//! device's own taskqueue and its `dev.<m>.<unit>` sysctl tree, with their lifetimes.
//!
//! Work that may not sleep (`d_strategy`, `if_transmit`, events from xen.ko's event thread)
//! never waits for the device lock: it is left in the queue or the flag and run by whoever
//! holds the lock, which every holder checks after it lets go ([`Softc::drain`]), so none is
//! stranded. An event only sets the flag and enqueues the device's task, which waits for the
//! lock like a xenbus callback. What a driver adds is a [`DeviceGlue`]: what its device is,
//! what its queued work is and how it runs (or is disposed of when there is no device), what
//! an event does, and its sysctl tree's C functions.

use alloc_crate::boxed::Box;
use alloc_crate::collections::VecDeque;
use core::ffi::{c_void, CStr};
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use crate::sync::{Mutex, SxLock};
use crate::taskqueue::{Priority, TaskQueue};

/// Whether an event run left work, and when to come back for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Again {
    /// Nothing left.
    No,
    /// A budget was reached with work left: run again now (from the taskqueue).
    Soon,
    /// Run again in this many milliseconds (something the peer still holds).
    Later(u32),
}

/// A driver's side of its softc.
pub trait DeviceGlue: Sized + 'static {
    /// The device (a trait object of the driver's).
    type Dev: ?Sized + Send;
    /// Work that arrived while the device lock was taken (a bio, a packet).
    type Work: Send;
    /// What an event run hands out to be done after the lock is released (received frames).
    type Out: Default;
    /// The device lock's and the taskqueue's name (`"<name><unit> taskq"`).
    const NAME: &'static CStr;
    /// The queue mutex's name.
    const QUEUE_NAME: &'static CStr;
    /// The taskqueue thread's priority.
    const PRIORITY: Priority;
    /// Work items at most waiting for the lock; beyond, [`SoftcBox::push`] refuses.
    const QUEUE_MAX: usize;

    /// Runs one queued item under the device lock, or disposes of it when there is no device.
    fn run(dev: Option<&mut Self::Dev>, work: Self::Work);
    /// An event on the device's ports, under the device lock.
    fn event(dev: &mut Self::Dev, out: &mut Self::Out) -> Again;
    /// After the lock is released: what the event runs handed out.
    fn finish(out: Self::Out);

    /// The module's `xenrs_<m>_sysctl_attach(softc, unit)` (`XENRS_SYSCTL_DEV` in its
    /// shim): the tree `dev.<m>.<unit>`, whose leaves read `softc`, which must stay valid
    /// until the tree is detached; NULL when out of memory.
    const SYSCTL_ATTACH: unsafe extern "C" fn(*mut c_void, u32) -> *mut c_void;
    /// The module's `xenrs_<m>_sysctl_detach(tree)`: removes the tree (once), waiting for
    /// running leaves.
    const SYSCTL_DETACH: unsafe extern "C" fn(*mut c_void);
}

/// The device slot behind the device lock.
pub type Slot<G> = Option<Box<<G as DeviceGlue>::Dev>>;

/// Most rounds one caller drains before leaving the rest to the next one.
const DRAIN_ROUNDS: usize = 64;

/// The per-device object whose address the shim keeps (`d_drv1`, `if_getsoftc()`, the
/// sysctl leaves' and the task's argument).
pub struct Softc<G: DeviceGlue> {
    /// The device lock: xenbus callbacks, ioctls and the task hold it and may sleep under it;
    /// work that may not sleep only tries it.
    dev: SxLock<Slot<G>>,
    /// Work waiting for the device lock (the mutex is held for a push or a pop only).
    queue: Mutex<VecDeque<G::Work>>,
    sysctl: Option<NonNull<c_void>>,
    /// The device's taskqueue (event work runs there).
    tq: Option<TaskQueue>,
    /// Events that arrived while another thread held the device lock.
    pending: AtomicBool,
}

impl<G: DeviceGlue> core::fmt::Debug for Softc<G> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Softc").finish_non_exhaustive()
    }
}

impl<G: DeviceGlue> Softc<G> {
    /// The softc at an address the shim kept.
    ///
    /// # Safety
    /// `softc` is the address of a live softc ([`SoftcBox::as_raw`], not yet freed) and stays
    /// live while the reference is used: the callers are the shim's entry points, which the
    /// kernel stops calling before the softc is freed.
    pub unsafe fn from_raw<'s>(softc: *mut c_void) -> &'s Softc<G> {
        // SAFETY: by the caller's contract.
        unsafe { &*softc.cast::<Softc<G>>() }
    }

    /// An event from xen.ko's event thread: flag it and hand the work to the device's
    /// taskqueue (inline, bounded, only if there is none).
    fn kick(&self) {
        match &self.tq {
            Some(tq) => {
                self.pending.store(true, Ordering::Release);
                tq.enqueue();
            }
            None => self.event(),
        }
    }

    /// Another event run soon: flags it and enqueues the task (without a taskqueue, the next
    /// drain round runs it).
    fn again(&self) {
        self.pending.store(true, Ordering::Release);
        if let Some(tq) = &self.tq {
            tq.enqueue();
        }
    }

    /// Another run of the task in `ms` milliseconds.
    fn later(&self, ms: u32) {
        if let Some(tq) = &self.tq {
            tq.enqueue_later(ms);
        }
    }

    /// The task: waits for the device lock (it may sleep), then runs what is pending.
    fn task(&self) {
        self.pending.store(true, Ordering::Release);
        self.with(|_| ());
    }

    /// An event for the device (never sleeps).
    pub fn event(&self) {
        self.pending.store(true, Ordering::Release);
        self.drain();
    }

    /// Work that may not sleep: queued, then run if the device lock is free (never sleeps).
    /// Gives the work back when [`DeviceGlue::QUEUE_MAX`] items already wait.
    ///
    /// # Errors
    /// The work, refused.
    pub fn push(&self, work: G::Work) -> Result<(), G::Work> {
        self.queue.with(|q| {
            if q.len() < G::QUEUE_MAX {
                q.push_back(work);
                Ok(())
            } else {
                Err(work)
            }
        })?;
        self.drain();
        Ok(())
    }

    /// Runs waiting work and pending events if the device lock is free (its holder will
    /// otherwise: it drains after letting go); what the events hand out is finished after the
    /// lock is released. Bounded: a device that is given work faster than it runs leaves the
    /// rest to the next caller.
    fn drain(&self) {
        for _ in 0..DRAIN_ROUNDS {
            let idle = !self.pending.load(Ordering::Acquire) && self.queue.with(|q| q.is_empty());
            if idle {
                return;
            }
            let mut out = G::Out::default();
            let ran = self.dev.try_with(|dev| {
                let work: VecDeque<G::Work> = self.queue.with(core::mem::take);
                for w in work {
                    G::run(dev.as_deref_mut(), w);
                }
                if self.pending.swap(false, Ordering::AcqRel) {
                    if let Some(d) = dev.as_deref_mut() {
                        return G::event(d, &mut out);
                    }
                }
                Again::No
            });
            G::finish(out);
            match ran {
                None => return,
                Some(Again::Soon) => self.again(),
                Some(Again::Later(ms)) => self.later(ms),
                Some(Again::No) => {}
            }
        }
    }

    /// Runs `f` on the device slot under the device lock (it may sleep), then whatever
    /// arrived meanwhile.
    pub fn with<R>(&self, f: impl FnOnce(&mut Slot<G>) -> R) -> R {
        let r = self.dev.with(f);
        self.drain();
        r
    }

    /// Runs `f` on the device slot under the device lock, leaving what arrived meanwhile to
    /// the next holder (a sysctl read).
    pub fn peek<R>(&self, f: impl FnOnce(&Slot<G>) -> R) -> R {
        self.dev.with(|slot| f(slot))
    }
}

/// The device's task, on its own taskqueue thread.
///
/// # Safety
/// `softc` is a live `Softc<G>` (its taskqueue is drained before it is freed).
unsafe extern "C" fn task<G: DeviceGlue>(softc: *mut c_void) {
    // SAFETY: by the caller's contract.
    unsafe { Softc::<G>::from_raw(softc) }.task();
}

/// The event handlers' way to the softc: set once the softc exists, cleared before it is
/// freed (by then every port is unbound, so no handler is running).
pub struct EventSink<G: DeviceGlue> {
    softc: AtomicPtr<Softc<G>>,
}

impl<G: DeviceGlue> Default for EventSink<G> {
    fn default() -> Self {
        EventSink {
            softc: AtomicPtr::new(core::ptr::null_mut()),
        }
    }
}

impl<G: DeviceGlue> core::fmt::Debug for EventSink<G> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EventSink").finish_non_exhaustive()
    }
}

impl<G: DeviceGlue> EventSink<G> {
    /// Delivers an event to the device, if it is attached.
    pub fn fire(&self) {
        let softc = self.softc.load(Ordering::Acquire);
        if softc.is_null() {
            return;
        }
        // SAFETY: a non-null pointer was stored by `SoftcBox::connect` and is cleared by
        // `SoftcBox::free` before the softc is freed; ports (whose handlers call this) are all
        // unbound before that, and unbind waits for a running handler.
        unsafe { &*softc }.kick();
    }
}

/// An attached device's softc, owned by the driver until [`SoftcBox::free`].
///
/// # Invariants
/// `ptr` is a `Box<Softc<G>>` leaked by [`SoftcBox::new`]; the shim holds it (as `d_drv1`,
/// the ifnet's softc, the sysctl leaves' and the task's argument) until the kernel object is
/// destroyed, the sysctl tree removed and the taskqueue drained.
pub struct SoftcBox<G: DeviceGlue> {
    ptr: NonNull<Softc<G>>,
    _glue: PhantomData<G>,
}

// SAFETY: the Softc's state is behind its locks and atomics.
unsafe impl<G: DeviceGlue> Send for SoftcBox<G> {}
// SAFETY: as above.
unsafe impl<G: DeviceGlue> Sync for SoftcBox<G> {}

impl<G: DeviceGlue> core::fmt::Debug for SoftcBox<G> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SoftcBox").field("ptr", &self.ptr).finish()
    }
}

impl<G: DeviceGlue> SoftcBox<G> {
    /// A softc with an empty device slot, its `dev.<m>.<unit>` tree and its taskqueue;
    /// `None` when the kernel has no memory for its locks.
    pub fn new(unit: u32) -> Option<SoftcBox<G>> {
        let softc = Box::new(Softc::<G> {
            dev: SxLock::new(G::NAME, None).ok()?,
            queue: Mutex::new(G::QUEUE_NAME, VecDeque::new()).ok()?,
            sysctl: None,
            tq: None,
            pending: AtomicBool::new(false),
        });
        let ptr = NonNull::from(Box::leak(softc));
        // SAFETY: a live Softc until `free`, which removes the tree first.
        let tree = unsafe { (G::SYSCTL_ATTACH)(ptr.as_ptr().cast(), unit) };
        // SAFETY: nobody else uses the softc yet (the shim only stores the address).
        unsafe { (*ptr.as_ptr()).sysctl = NonNull::new(tree) };
        // SAFETY: the softc stays valid for the task until `free`, which drains the
        // taskqueue first.
        let tq =
            unsafe { TaskQueue::new(G::NAME, unit, G::PRIORITY, task::<G>, ptr.as_ptr().cast()) };
        // SAFETY: nobody else uses the softc yet (the task runs only once enqueued).
        unsafe { (*ptr.as_ptr()).tq = tq };
        // INVARIANT: leaked above.
        Some(SoftcBox {
            ptr,
            _glue: PhantomData,
        })
    }

    /// The softc.
    pub fn softc(&self) -> &Softc<G> {
        // SAFETY: live until `free` (invariant).
        unsafe { self.ptr.as_ref() }
    }

    /// The address the shim keeps.
    pub fn as_raw(&self) -> *mut c_void {
        self.ptr.as_ptr().cast()
    }

    /// Runs `f` on the device under its lock (then whatever arrived meanwhile).
    pub fn with<R>(&self, f: impl FnOnce(&mut Slot<G>) -> R) -> R {
        self.softc().with(f)
    }

    /// Points `sink` at this softc: events reach the device from now on.
    pub fn connect(&self, sink: &EventSink<G>) {
        sink.softc.store(self.ptr.as_ptr(), Ordering::Release);
    }

    /// An event, as xen.ko's event thread delivers it.
    pub fn event(&self) {
        self.softc().event();
    }

    /// Frees the softc: only after its kernel object was destroyed (no more entry points)
    /// and its ports unbound (no more events). Disconnects `sink`, drains the taskqueue,
    /// removes the sysctl tree (which waits for running leaves).
    pub fn free(self, sink: &EventSink<G>) {
        sink.softc.store(core::ptr::null_mut(), Ordering::Release);
        if let Some(tq) = &self.softc().tq {
            // Waits for a run in progress (which may take the device lock: nothing holds it
            // here); nothing enqueues the task any more. Freed with the softc below.
            tq.drain();
        }
        if let Some(tree) = self.softc().sysctl {
            // SAFETY: from sysctl_attach, removed once.
            unsafe { (G::SYSCTL_DETACH)(tree.as_ptr()) };
        }
        // SAFETY: leaked by `new`, reclaimed once; nothing refers to it any more.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicUsize;
    use std::sync::Mutex as StdMutex;
    use std::vec::Vec;

    /// What the test device saw: work run, events.
    #[derive(Default)]
    struct Seen {
        run: Vec<u32>,
        disposed: Vec<u32>,
        events: usize,
        /// What the next events answer, front first (then `No`).
        answers: VecDeque<Again>,
        finished: Vec<Vec<u32>>,
    }

    static SEEN: StdMutex<Option<Seen>> = StdMutex::new(None);
    static TREES: AtomicUsize = AtomicUsize::new(0);

    fn seen<R>(f: impl FnOnce(&mut Seen) -> R) -> R {
        f(SEEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(Seen::default))
    }

    trait Dev: Send {
        fn id(&self) -> u32;
    }

    struct TestDev;

    impl Dev for TestDev {
        fn id(&self) -> u32 {
            7
        }
    }

    enum TestGlue {}

    impl DeviceGlue for TestGlue {
        type Dev = dyn Dev;
        type Work = u32;
        type Out = Vec<u32>;
        const NAME: &'static CStr = c"t";
        const QUEUE_NAME: &'static CStr = c"t q";
        const PRIORITY: Priority = Priority::Wait;
        const QUEUE_MAX: usize = 3;

        fn run(dev: Option<&mut (dyn Dev + 'static)>, work: u32) {
            seen(|s| match dev {
                Some(_) => s.run.push(work),
                None => s.disposed.push(work),
            });
        }

        fn event(dev: &mut (dyn Dev + 'static), out: &mut Vec<u32>) -> Again {
            out.push(dev.id());
            seen(|s| {
                s.events += 1;
                s.answers.pop_front().unwrap_or(Again::No)
            })
        }

        fn finish(out: Vec<u32>) {
            if !out.is_empty() {
                seen(|s| s.finished.push(out));
            }
        }

        const SYSCTL_ATTACH: unsafe extern "C" fn(*mut c_void, u32) -> *mut c_void = tree_attach;
        const SYSCTL_DETACH: unsafe extern "C" fn(*mut c_void) = tree_detach;
    }

    unsafe extern "C" fn tree_attach(_softc: *mut c_void, _unit: u32) -> *mut c_void {
        TREES.fetch_add(1, Ordering::SeqCst);
        Box::into_raw(Box::new(0u8)).cast()
    }

    unsafe extern "C" fn tree_detach(tree: *mut c_void) {
        TREES.fetch_sub(1, Ordering::SeqCst);
        // SAFETY: from Box::into_raw in tree_attach, once.
        drop(unsafe { Box::from_raw(tree.cast::<u8>()) });
    }

    fn reset() {
        seen(|s| *s = Seen::default());
        TREES.store(0, Ordering::SeqCst);
    }

    #[test]
    fn work_waits_for_the_lock_holder_is_bounded_and_is_disposed_of_without_a_device() {
        let _kernel = crate::fake::session();
        reset();
        let softc = SoftcBox::<TestGlue>::new(2).expect("softc");
        assert_eq!(TREES.load(Ordering::SeqCst), 1);
        assert_eq!(crate::fake::taskqueues()[0].name, "t2 taskq");
        // No device yet: disposed of at once.
        softc.softc().push(1).unwrap();
        assert_eq!(seen(|s| s.disposed.clone()), [1]);
        softc.with(|slot| *slot = Some(Box::new(TestDev)));
        softc.softc().push(2).unwrap();
        assert_eq!(seen(|s| s.run.clone()), [2]);
        // While a holder (a xenbus callback, say) has the lock: queued, bounded, run when it
        // lets go, in order.
        softc.with(|_| {
            for w in 3..6 {
                softc.softc().push(w).unwrap();
            }
            assert_eq!(softc.softc().push(6), Err(6), "the queue is full");
            assert_eq!(seen(|s| s.run.clone()), [2]);
        });
        assert_eq!(seen(|s| s.run.clone()), [2, 3, 4, 5]);
        assert_eq!(crate::fake::locks_held(), 0);
        softc.with(|slot| *slot = None);
        softc.free(&EventSink::default());
        assert_eq!(TREES.load(Ordering::SeqCst), 0);
        assert_eq!(crate::fake::locks_out(), 0);
        assert!(crate::fake::taskqueues().is_empty());
    }

    #[test]
    fn events_run_on_the_task_again_when_asked_and_never_after_free() {
        let _kernel = crate::fake::session();
        reset();
        let softc = SoftcBox::<TestGlue>::new(0).expect("softc");
        softc.with(|slot| *slot = Some(Box::new(TestDev)));
        let sink = EventSink::default();
        sink.fire();
        assert_eq!(seen(|s| s.events), 0, "not connected yet");
        softc.connect(&sink);
        seen(|s| s.answers.extend([Again::Soon, Again::Later(250)]));
        // From the event thread: only the task is enqueued.
        sink.fire();
        assert_eq!(seen(|s| s.events), 0);
        assert_eq!(crate::fake::run_tasks(), 1);
        // Soon: flagged and the task enqueued, and the same drain's next round runs it
        // (answering Later: a timed run).
        assert_eq!(seen(|s| s.events), 2);
        assert_eq!(crate::fake::delays(), [250]);
        assert_eq!(crate::fake::run_tasks(), 1);
        assert_eq!(seen(|s| s.events), 3);
        assert_eq!(crate::fake::run_tasks(), 0);
        assert_eq!(crate::fake::run_delayed(), 1);
        assert_eq!(seen(|s| s.events), 4);
        // What the events handed out was finished after the lock was released.
        assert_eq!(seen(|s| s.finished.len()), 4);
        assert_eq!(crate::fake::locks_held(), 0);
        // An event while a holder has the lock runs when it lets go.
        softc.with(|_| {
            softc.event();
            assert_eq!(seen(|s| s.events), 4);
        });
        assert_eq!(seen(|s| s.events), 5);
        softc.with(|slot| *slot = None);
        softc.free(&sink);
        sink.fire();
        assert_eq!(crate::fake::run_tasks(), 0);
        assert_eq!(seen(|s| s.events), 5);
        assert_eq!(crate::fake::locks_out(), 0);
        assert_eq!(TREES.load(Ordering::SeqCst), 0);
    }
}
