//! The FreeBSD side of xn.ko: the C shim's functions (`xn_kmod.c`), the kernel
//! implementation of [`IfKpi`], the per-interface softc (its locks and taskqueue are
//! `freebsd_kpi`'s shared glue, which xen.ko exports), and the `extern "C"`
//! entry points the shim calls (`if_transmit`, ioctls, sysctl leaves).
//!
//! This is the only part of the crate with `unsafe`: each block says why it holds.
#![allow(unsafe_code)]

use alloc::vec::Vec;
use core::ffi::{c_char, c_int, c_void, CStr};

use freebsd_kpi::device::{self, Again, DeviceGlue};
use freebsd_kpi::taskqueue::Priority;

use crate::net::{IfHandle, IfKpi, MbufHandle};

extern "C" {
    fn xenrs_xn_ifnet_create(
        softc: *mut c_void,
        name: *const c_char,
        unit: c_int,
        mac: *const u8,
        caps: u32,
        enabled: u32,
        mtu: c_int,
    ) -> *mut c_void;
    fn xenrs_xn_ifnet_caps(ifp: *mut c_void, caps: u32, enabled: u32);
    fn xenrs_xn_ifnet_destroy(ifp: *mut c_void);
    fn xenrs_xn_link(ifp: *mut c_void, up: c_int);
    fn xenrs_xn_m_copydata(m: *mut c_void, off: u32, len: u32, buf: *mut u8);
    fn xenrs_xn_mbuf(ifp: *mut c_void, data: *const u8, len: u32, csum_valid: c_int)
        -> *mut c_void;
    fn xenrs_xn_input(ifp: *mut c_void, m: *mut c_void);
    fn xenrs_xn_ipv4(ifp: *mut c_void, out: *mut u8) -> c_int;
    fn xenrs_xn_m_freem(m: *mut c_void);
    fn xenrs_xn_sysctl_attach(softc: *mut c_void, unit: u32) -> *mut c_void;
    fn xenrs_xn_sysctl_detach(ctx: *mut c_void);
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
    fn ifnet_create(
        &self,
        unit: u32,
        mac: [u8; 6],
        caps: u32,
        enabled: u32,
        mtu: u32,
    ) -> Option<IfHandle> {
        // SAFETY: a static name, a MAC array that outlives the call (ether_ifattach copies
        // it), plain values; `softc` is the live Softc, which outlives the ifnet (destroyed
        // first).
        let ifp = unsafe {
            xenrs_xn_ifnet_create(
                self.softc,
                c"xn".as_ptr(),
                c_int::try_from(unit).ok()?,
                mac.as_ptr(),
                caps,
                enabled,
                c_int::try_from(mtu).ok()?,
            )
        };
        (!ifp.is_null()).then_some(IfHandle(ifp as usize))
    }

    fn ifnet_caps(&self, ifp: IfHandle, caps: u32, enabled: u32) {
        // SAFETY: a live ifnet from ifnet_create (destroy takes the last handle).
        unsafe { xenrs_xn_ifnet_caps(ifp.0 as *mut c_void, caps, enabled) }
    }

    fn ifnet_destroy(&self, ifp: IfHandle) {
        // SAFETY: from ifnet_create, destroyed once (the glue forgets the handle).
        unsafe { xenrs_xn_ifnet_destroy(ifp.0 as *mut c_void) }
    }

    fn link(&self, ifp: IfHandle, up: bool) {
        // SAFETY: a live ifnet.
        unsafe { xenrs_xn_link(ifp.0 as *mut c_void, c_int::from(up)) }
    }

    fn copydata(&self, m: MbufHandle, buf: &mut [u8]) {
        let Ok(len) = u32::try_from(buf.len()) else {
            return;
        };
        // SAFETY: `m` is the packet if_transmit handed over (not freed until the shim's
        // transmit returns), at least `buf.len()` bytes long (the caller checked it against
        // m_pkthdr.len); `buf` is valid for that many bytes.
        unsafe { xenrs_xn_m_copydata(m.0 as *mut c_void, 0, len, buf.as_mut_ptr()) }
    }

    fn mbuf(&self, ifp: IfHandle, data: &[u8], csum_valid: bool) -> Option<MbufHandle> {
        let len = u32::try_from(data.len()).ok()?;
        // SAFETY: a live ifnet; `data` is valid for `len` bytes during the call (copied).
        let m = unsafe {
            xenrs_xn_mbuf(
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
        unsafe { xenrs_xn_input(ifp.0 as *mut c_void, m.0 as *mut c_void) }
    }

    fn ipv4(&self, ifp: IfHandle) -> Option<[u8; 4]> {
        let mut ip = [0u8; 4];
        // SAFETY: a live ifnet; `ip` is valid for 4 bytes.
        (unsafe { xenrs_xn_ipv4(ifp.0 as *mut c_void, ip.as_mut_ptr()) } != 0).then_some(ip)
    }
}

/// Received mbufs waiting for `if_input` (called once the mutex is released).
pub type Inputs = Vec<(IfHandle, MbufHandle)>;

/// What the shim's entry points and the event handler reach through the softc.
pub trait IfDevice: Send {
    /// `if_transmit` (the shim frees the mbuf afterwards).
    fn transmit(
        &mut self,
        m: MbufHandle,
        len: u32,
        offload: u32,
        segsz: u32,
        flowid: u32,
        hashed: bool,
    ) -> i32;
    /// `SIOCSIFMTU`.
    fn set_mtu(&mut self, mtu: i32) -> i32;
    /// `SIOCSIFCAP`.
    fn set_caps(&mut self, enabled: u32);
    /// A `dev.xn.<unit>` leaf.
    fn stat(&self, which: u32) -> Option<u64>;
    /// An event on one of the interface's ports: received frames go to `out`; `true` when work is left (a
    /// budget was reached) and the event should run again soon.
    fn event(&mut self, out: &mut Inputs) -> bool;
    /// The device as `Any`, for the xenbus side that knows its concrete type.
    fn as_any(&mut self) -> &mut dyn core::any::Any;
}

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
    /// `tso_segsz`.
    segsz: u32,
    /// `flowid`.
    pub flowid: u32,
    /// The stack hashed the flow.
    pub hashed: bool,
}

/// Packets at most waiting for the device lock; beyond, `if_transmit` refuses (`ENOBUFS`).
pub const TXQ_MAX: usize = 512;

/// `xenrs_xn_transmit` kept the mbuf (`XENRS_XN_KEPT` in the shim).
pub const KEPT: c_int = -1;

/// xn's side of the shared per-device softc ([`freebsd_kpi::device`]): the device is an
/// [`IfDevice`], the work waiting for its lock packets from `if_transmit`, and what an event
/// hands out received frames, passed up once the lock is released.
#[derive(Debug)]
pub enum Glue {}

impl DeviceGlue for Glue {
    type Dev = dyn IfDevice;
    type Work = Deferred;
    type Out = Inputs;
    const NAME: &'static CStr = c"xn";
    const QUEUE_NAME: &'static CStr = c"xn txq";
    const PRIORITY: Priority = Priority::Wait;
    const QUEUE_MAX: usize = TXQ_MAX;

    fn run(dev: Option<&mut (dyn IfDevice + 'static)>, p: Deferred) {
        if let Some(d) = dev {
            let _ = d.transmit(p.m, p.len, p.offload, p.segsz, p.flowid, p.hashed);
        }
        // SAFETY: the mbuf if_transmit handed over and we kept; copied to the ring (or
        // dropped) above, freed once.
        unsafe { xenrs_xn_m_freem(p.m.0 as *mut c_void) };
    }

    fn event(dev: &mut (dyn IfDevice + 'static), out: &mut Inputs) -> Again {
        // Work left at a budget: run again, from the taskqueue when there is one.
        if dev.event(out) {
            Again::Soon
        } else {
            Again::No
        }
    }

    fn finish(inputs: Inputs) {
        pass_up(inputs);
    }

    const SYSCTL_ATTACH: unsafe extern "C" fn(*mut c_void, u32) -> *mut c_void =
        xenrs_xn_sysctl_attach;
    const SYSCTL_DETACH: unsafe extern "C" fn(*mut c_void) = xenrs_xn_sysctl_detach;
}

/// The per-interface object: `if_getsoftc()` and the softc of its sysctl leaves.
pub type Softc = device::Softc<Glue>;
/// An attached interface's softc, owned by the driver until [`SoftcBox::free`].
pub type SoftcBox = device::SoftcBox<Glue>;
/// The event handlers' way to the softc.
pub type EventSink = device::EventSink<Glue>;

/// The kernel stack for `softc`'s interface.
pub fn kernel(softc: &SoftcBox) -> Kernel {
    Kernel {
        softc: softc.as_raw(),
    }
}

/// `if_input` for each received frame, with no lock of ours held.
fn pass_up(inputs: Inputs) {
    for (ifp, m) in inputs {
        // SAFETY: a live ifnet (it is destroyed only after every port is unbound, so no
        // event is being handled) and an mbuf handed to the stack once.
        unsafe { xenrs_xn_input(ifp.0 as *mut c_void, m.0 as *mut c_void) }
    }
}

fn softc_ref<'s>(softc: *mut c_void) -> &'s Softc {
    // SAFETY: every caller is an entry point whose contract is a live softc (the ifnet's,
    // which is destroyed before the softc is freed).
    unsafe { Softc::from_raw(softc) }
}

/// `if_transmit`, called by the shim: [`KEPT`] (the mbuf is ours now) or an errno (the shim
/// frees it).
///
/// # Safety
/// `softc` is the live softc of the ifnet; `m` its packet of `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn xenrs_xn_transmit(
    softc: *mut c_void,
    m: *mut c_void,
    len: u32,
    offload: u32,
    segsz: u32,
    flowid: u32,
    hashed: c_int,
) -> c_int {
    let p = Deferred {
        m: MbufHandle(m as usize),
        len,
        offload,
        segsz,
        flowid,
        hashed: hashed != 0,
    };
    match softc_ref(softc).push(p) {
        Ok(()) => KEPT,
        // Too many packets wait for the device lock.
        Err(_) => crate::net::errno::ENOBUFS,
    }
}

/// `SIOCSIFMTU`.
///
/// # Safety
/// `softc` is a live softc.
#[no_mangle]
pub unsafe extern "C" fn xenrs_xn_ioctl_mtu(softc: *mut c_void, mtu: c_int) -> c_int {
    softc_ref(softc).with(|dev| {
        dev.as_mut()
            .map_or(crate::net::errno::ENETDOWN, |d| d.set_mtu(mtu))
    })
}

/// `SIOCSIFCAP`: the capabilities now enabled.
///
/// # Safety
/// `softc` is a live softc.
#[no_mangle]
pub unsafe extern "C" fn xenrs_xn_ioctl_caps(softc: *mut c_void, caps: u32) {
    softc_ref(softc).with(|dev| {
        if let Some(d) = dev.as_mut() {
            d.set_caps(caps);
        }
    });
}

/// A `dev.xn.<unit>` leaf.
///
/// # Safety
/// `softc` is a live softc; `out` is valid for a `u64` write.
#[no_mangle]
pub unsafe extern "C" fn xenrs_xn_dev_stat(
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
