//! The FreeBSD side of xnb.ko: the C shim's functions (`xnb_kmod.c`), the kernel
//! implementation of [`IfKpi`], the per-vif softc (its locks and taskqueue are
//! `freebsd_kpi`'s shared glue, which xen.ko exports), and the `extern "C"`
//! entry points the shim calls (`if_transmit`, ioctls, sysctl leaves).
//!
//! This is the only part of the crate with `unsafe`: each block says why it holds.
#![allow(unsafe_code)]

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::ffi::{c_char, c_int, c_void, CStr};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use freebsd_kpi::sync::{Mutex, SxLock};
use freebsd_kpi::taskqueue::{Priority, TaskQueue};

use crate::vif::{IfHandle, IfKpi, MbufHandle};

extern "C" {
    fn xenrs_xnb_ifnet_create(
        softc: *mut c_void,
        name: *const c_char,
        mac: *const u8,
        mtu: c_int,
    ) -> *mut c_void;
    fn xenrs_xnb_ifnet_destroy(ifp: *mut c_void);
    fn xenrs_xnb_link(ifp: *mut c_void, up: c_int);
    fn xenrs_xnb_m_copydata(m: *mut c_void, off: u32, len: u32, buf: *mut u8);
    fn xenrs_xnb_mbuf(
        ifp: *mut c_void,
        data: *const u8,
        len: u32,
        csum_valid: c_int,
    ) -> *mut c_void;
    fn xenrs_xnb_input(ifp: *mut c_void, m: *mut c_void);
    fn xenrs_xnb_now_ns() -> u64;
    fn xenrs_xnb_m_freem(m: *mut c_void);
    fn xenrs_xnb_sysctl_attach(softc: *mut c_void, unit: u32) -> *mut c_void;
    fn xenrs_xnb_sysctl_detach(ctx: *mut c_void);
}

/// The kernel's network stack, for the interface whose softc is `softc`.
#[derive(Debug)]
pub struct Kernel {
    softc: *mut c_void,
}

// SAFETY: `softc` is an address handed to the shim only; the kernel functions may be called
// from any thread.
unsafe impl Send for Kernel {}

/// The kernel stack with no softc, for host tests (the fakes ignore it).
#[cfg(test)]
pub(crate) fn kernel_for_tests() -> Kernel {
    Kernel {
        softc: core::ptr::null_mut(),
    }
}

impl IfKpi for Kernel {
    fn ifnet_create(&self, name: &CStr, mac: [u8; 6], mtu: u32) -> Option<IfHandle> {
        // SAFETY: `name` stays valid as long as the ifnet (the vif keeps it in a box it drops
        // only after `ifnet_destroy`; if_initname keeps the pointer as if_dname); the MAC is
        // copied by ether_ifattach; `softc` is the live Softc, which outlives the ifnet.
        let ifp = unsafe {
            xenrs_xnb_ifnet_create(
                self.softc,
                name.as_ptr(),
                mac.as_ptr(),
                c_int::try_from(mtu).ok()?,
            )
        };
        (!ifp.is_null()).then_some(IfHandle(ifp as usize))
    }

    fn ifnet_destroy(&self, ifp: IfHandle) {
        // SAFETY: from ifnet_create, destroyed once (the glue forgets the handle).
        unsafe { xenrs_xnb_ifnet_destroy(ifp.0 as *mut c_void) }
    }

    fn link(&self, ifp: IfHandle, up: bool) {
        // SAFETY: a live ifnet.
        unsafe { xenrs_xnb_link(ifp.0 as *mut c_void, c_int::from(up)) }
    }

    fn copydata(&self, m: MbufHandle, buf: &mut [u8]) {
        let Ok(len) = u32::try_from(buf.len()) else {
            return;
        };
        // SAFETY: `m` is the packet if_transmit handed over (freed by the shim after this
        // returns), at least `buf.len()` bytes long (checked against m_pkthdr.len by the
        // caller); `buf` is valid for that many bytes.
        unsafe { xenrs_xnb_m_copydata(m.0 as *mut c_void, 0, len, buf.as_mut_ptr()) }
    }

    fn mbuf(&self, ifp: IfHandle, data: &[u8], csum_valid: bool) -> Option<MbufHandle> {
        let len = u32::try_from(data.len()).ok()?;
        // SAFETY: a live ifnet; `data` is valid for `len` bytes during the call (copied).
        let m = unsafe {
            xenrs_xnb_mbuf(
                ifp.0 as *mut c_void,
                data.as_ptr(),
                len,
                c_int::from(csum_valid),
            )
        };
        (!m.is_null()).then_some(MbufHandle(m as usize))
    }

    fn input(&self, ifp: IfHandle, m: MbufHandle) {
        // SAFETY: a live ifnet and an mbuf from `mbuf`, handed to the stack once.
        unsafe { xenrs_xnb_input(ifp.0 as *mut c_void, m.0 as *mut c_void) }
    }

    fn now_ns(&self) -> u64 {
        // SAFETY: no arguments; reads the kernel's uptime.
        unsafe { xenrs_xnb_now_ns() }
    }
}

/// Received mbufs waiting for `if_input` (called once the mutex is released).
pub type Inputs = Vec<(IfHandle, MbufHandle)>;

/// What the shim's entry points and the event handler reach through the softc.
pub trait IfDevice: Send {
    /// `if_transmit` (the shim frees the mbuf afterwards).
    fn transmit(&mut self, m: MbufHandle, len: u32, offload: u32, flowid: u32, hashed: bool)
        -> i32;
    /// `SIOCSIFMTU`.
    fn set_mtu(&mut self, mtu: i32) -> i32;
    /// A `dev.xnb.<unit>` leaf.
    fn stat(&self, which: u32) -> Option<u64>;
    /// An event on one of the vif's ports: frames from the guest go to `out`; `true` when work is left (a
    /// budget was reached) and the event should run again soon.
    fn event(&mut self, out: &mut Inputs) -> bool;
    /// The device as `Any`, for the xenbus side that knows its concrete type.
    fn as_any(&mut self) -> &mut dyn core::any::Any;
}

type Slot = Option<Box<dyn IfDevice>>;

impl core::fmt::Debug for dyn IfDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("IfDevice")
    }
}

/// A packet from `if_transmit` waiting for the device lock.
#[derive(Debug, Clone, Copy)]
pub struct Deferred {
    /// The mbuf, kept until it is copied to a ring (or dropped) and freed.
    pub m: MbufHandle,
    /// `m_pkthdr.len`.
    pub len: u32,
    /// Offload bits.
    pub offload: u32,
    /// `flowid`.
    pub flowid: u32,
    /// The stack hashed the flow.
    pub hashed: bool,
}

/// Packets at most waiting for the device lock; beyond, `if_transmit` refuses (`ENOBUFS`).
pub const TXQ_MAX: usize = 512;

/// `xenrs_xnb_transmit` kept the mbuf (`XENRS_XNB_KEPT` in the shim).
pub const KEPT: c_int = -1;

/// The per-interface object: `if_getsoftc()` and the sysctl handlers' `arg1`.
///
/// Work that may not sleep (`if_transmit`, events) never waits for the device lock: it is
/// left in `txq`/`pending` and run by whoever holds the lock, which every holder checks after
/// it lets go ([`Softc::drain`]).
#[derive(Debug)]
pub struct Softc {
    /// The device lock: xenbus callbacks, ioctls and the task hold it and may sleep under
    /// it; `if_transmit` and events only try it.
    dev: SxLock<Slot>,
    /// Packets waiting for the device lock (the mutex is held for a push or a pop only).
    txq: Mutex<VecDeque<Deferred>>,
    sysctl: Option<NonNull<c_void>>,
    /// The device's taskqueue (event work runs there).
    tq: Option<TaskQueue>,
    /// Events that arrived while another thread held the device lock.
    pending: AtomicBool,
}

/// Most rounds one caller drains before leaving the rest to the next one.
const DRAIN_ROUNDS: usize = 64;

impl Softc {
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

    /// Asks for another event run: flags it and enqueues the task (without a taskqueue, the
    /// next drain round runs it).
    fn again(&self) {
        self.pending.store(true, Ordering::Release);
        if let Some(tq) = &self.tq {
            tq.enqueue();
        }
    }

    /// The task: waits for the device lock (it may sleep), then runs what is pending.
    fn task(&self) {
        self.pending.store(true, Ordering::Release);
        self.with(|_| ());
    }

    /// An event from xen.ko's event thread (never sleeps).
    fn event(&self) {
        self.pending.store(true, Ordering::Release);
        self.drain();
    }

    /// `if_transmit` (never sleeps): queued, then run if the device lock is free. `KEPT`, or
    /// `ENOBUFS` when too many packets wait.
    fn transmit(&self, p: Deferred) -> c_int {
        let queued = self.txq.with(|q| {
            if q.len() < TXQ_MAX {
                q.push_back(p);
                true
            } else {
                false
            }
        });
        if !queued {
            return crate::vif::errno::ENOBUFS;
        }
        self.drain();
        KEPT
    }

    /// Runs waiting packets and pending events if the device lock is free (its holder will
    /// otherwise: it drains after letting go); received frames go up after the lock is
    /// released. Bounded by [`DRAIN_ROUNDS`].
    fn drain(&self) {
        for _ in 0..DRAIN_ROUNDS {
            let idle = !self.pending.load(Ordering::Acquire) && self.txq.with(|q| q.is_empty());
            if idle {
                return;
            }
            let mut inputs = Inputs::new();
            let ran = self.dev.try_with(|dev| {
                let packets: VecDeque<Deferred> = self.txq.with(core::mem::take);
                for p in packets {
                    if let Some(d) = dev.as_mut() {
                        let _ = d.transmit(p.m, p.len, p.offload, p.flowid, p.hashed);
                    }
                    // SAFETY: the mbuf if_transmit handed over and we kept; copied to the
                    // ring (or dropped) above, freed once.
                    unsafe { xenrs_xnb_m_freem(p.m.0 as *mut c_void) };
                }
                if self.pending.swap(false, Ordering::AcqRel) {
                    if let Some(d) = dev.as_mut() {
                        return d.event(&mut inputs);
                    }
                }
                false
            });
            pass_up(inputs);
            match ran {
                None => return,
                // Work left at a budget: run again, from the taskqueue when there is one.
                Some(true) => self.again(),
                Some(false) => {}
            }
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Slot) -> R) -> R {
        let r = self.dev.with(f);
        self.drain();
        r
    }
}

/// `if_input` for each received frame, with no mutex of ours held.
fn pass_up(inputs: Inputs) {
    for (ifp, m) in inputs {
        // SAFETY: a live ifnet (it is destroyed only after every port is unbound, so no
        // event is being handled) and an mbuf handed to the stack once.
        unsafe { xenrs_xnb_input(ifp.0 as *mut c_void, m.0 as *mut c_void) }
    }
}

/// The event handlers' way to the softc (see xbd's `EventSink`).
#[derive(Debug, Default)]
pub struct EventSink {
    softc: AtomicPtr<Softc>,
}

impl EventSink {
    /// Delivers an event to the interface, if attached.
    pub fn fire(&self) {
        let softc = self.softc.load(Ordering::Acquire);
        if softc.is_null() {
            return;
        }
        // SAFETY: stored by `SoftcBox::connect`, cleared by `SoftcBox::free` before the softc
        // is freed; every port is unbound before that and unbind waits for a running handler.
        unsafe { &*softc }.kick();
    }
}

/// An attached interface's softc, owned by the driver until [`SoftcBox::free`].
///
/// # Invariants
/// `ptr` is a `Box<Softc>` leaked by [`SoftcBox::new`]; the shim holds it as the ifnet's
/// softc and the sysctl leaves' `arg1` until the ifnet is destroyed and the tree removed.
#[derive(Debug)]
pub struct SoftcBox {
    ptr: NonNull<Softc>,
}

// SAFETY: the Softc's state is behind its mutex and atomics.
unsafe impl Send for SoftcBox {}
// SAFETY: as above.
unsafe impl Sync for SoftcBox {}

impl SoftcBox {
    /// A softc with an empty device slot and its `dev.xnb.<unit>` tree.
    pub fn new(unit: u32) -> Option<SoftcBox> {
        let softc = Box::new(Softc {
            dev: SxLock::new(c"xnb", None).ok()?,
            txq: Mutex::new(c"xnb txq", VecDeque::new()).ok()?,
            sysctl: None,
            tq: None,
            pending: AtomicBool::new(false),
        });
        let ptr = NonNull::from(Box::leak(softc));
        // SAFETY: a live Softc until `free`, which removes the tree first.
        let ctx = unsafe { xenrs_xnb_sysctl_attach(ptr.as_ptr().cast(), unit) };
        // SAFETY: nobody else uses the softc yet.
        unsafe { (*ptr.as_ptr()).sysctl = NonNull::new(ctx) };
        // SAFETY: the softc stays valid for the task until `free`, which drains the
        // taskqueue first.
        let tq = unsafe { TaskQueue::new(c"xnb", unit, Priority::Wait, task, ptr.as_ptr().cast()) };
        // SAFETY: nobody else uses the softc yet (the task runs only once enqueued).
        unsafe { (*ptr.as_ptr()).tq = tq };
        // INVARIANT: leaked above.
        Some(SoftcBox { ptr })
    }

    fn softc(&self) -> &Softc {
        // SAFETY: live until `free` (invariant).
        unsafe { self.ptr.as_ref() }
    }

    /// The address the shim keeps.
    pub fn as_raw(&self) -> *mut c_void {
        self.ptr.as_ptr().cast()
    }

    /// The kernel stack for this softc.
    pub fn kernel(&self) -> Kernel {
        Kernel {
            softc: self.as_raw(),
        }
    }

    /// Runs `f` on the device under its mutex (then any event that arrived meanwhile; the
    /// frames received are passed up after the mutex is released).
    pub fn with<R>(&self, f: impl FnOnce(&mut Slot) -> R) -> R {
        self.softc().with(f)
    }

    /// Points `sink` at this softc.
    pub fn connect(&self, sink: &EventSink) {
        sink.softc.store(self.ptr.as_ptr(), Ordering::Release);
    }

    /// An event, as xen.ko's event thread delivers it.
    pub fn event(&self) {
        self.softc().event();
    }

    /// Frees the softc: only after its ifnet was destroyed and its ports unbound.
    pub fn free(self, sink: &EventSink) {
        sink.softc.store(core::ptr::null_mut(), Ordering::Release);
        if let Some(tq) = &self.softc().tq {
            // Waits for a run in progress (which may take the device lock: nothing holds it
            // here); nothing enqueues the task any more. Freed with the softc below.
            tq.drain();
        }
        if let Some(ctx) = self.softc().sysctl {
            // SAFETY: from sysctl_attach, removed once.
            unsafe { xenrs_xnb_sysctl_detach(ctx.as_ptr()) };
        }
        // SAFETY: leaked by `new`, reclaimed once; nothing refers to it any more.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
    }
}

fn softc_ref<'s>(softc: *mut c_void) -> &'s Softc {
    // SAFETY: every caller is an entry point whose contract is a live softc (the ifnet's,
    // which is destroyed before the softc is freed).
    unsafe { &*softc.cast::<Softc>() }
}

/// `if_transmit`, called by the shim: [`KEPT`] (the mbuf is ours now) or an errno (the shim
/// frees it).
///
/// # Safety
/// `softc` is the live softc of the ifnet; `m` its packet of `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn xenrs_xnb_transmit(
    softc: *mut c_void,
    m: *mut c_void,
    len: u32,
    offload: u32,
    flowid: u32,
    hashed: c_int,
) -> c_int {
    softc_ref(softc).transmit(Deferred {
        m: MbufHandle(m as usize),
        len,
        offload,
        flowid,
        hashed: hashed != 0,
    })
}

/// `SIOCSIFMTU`.
///
/// # Safety
/// `softc` is a live softc.
#[no_mangle]
pub unsafe extern "C" fn xenrs_xnb_ioctl_mtu(softc: *mut c_void, mtu: c_int) -> c_int {
    softc_ref(softc).with(|dev| {
        dev.as_mut()
            .map_or(crate::vif::errno::ENETDOWN, |d| d.set_mtu(mtu))
    })
}

/// A `dev.xnb.<unit>` leaf.
///
/// # Safety
/// `softc` is a live softc; `out` is valid for a `u64` write.
#[no_mangle]
pub unsafe extern "C" fn xenrs_xnb_dev_stat(
    softc: *mut c_void,
    which: c_int,
    out: *mut u64,
) -> c_int {
    let Ok(which) = u32::try_from(which) else {
        return 2;
    };
    match softc_ref(softc).with(|dev| dev.as_ref().and_then(|d| d.stat(which))) {
        Some(v) => {
            // SAFETY: valid for a u64 write by the caller's contract.
            unsafe { out.write(v) };
            0
        }
        // ENOENT
        None => 2,
    }
}

/// The device's task, on its own taskqueue thread.
///
/// # Safety
/// `softc` is a live softc (its taskqueue is drained before it is freed).
pub(crate) unsafe extern "C" fn task(softc: *mut c_void) {
    // SAFETY: by the caller's contract.
    unsafe { &*softc.cast::<Softc>() }.task();
}
