//! The FreeBSD side of xnb.ko: the C shim's functions (`xnb_kmod.c`), the kernel
//! implementation of [`IfKpi`], the per-vif softc (its locks and taskqueue are
//! `freebsd_kpi`'s shared glue, which xen.ko exports), and the `extern "C"`
//! entry points the shim calls (`if_transmit`, ioctls, sysctl leaves). What xn.ko has
//! alike (the shared shim functions, the softc's `DeviceGlue`, `SIOCSIFMTU`, the sysctl
//! leaves, the `IfKpi` methods that are one shim call each) comes from `ifnet_glue!` and
//! `ifnet_kpi_shared!` (`modules/ifnet_glue.rs`) under this module's prefix.
//!
//! This is the only part of the crate with `unsafe`: each block says why it holds.
#![allow(unsafe_code)]

use core::ffi::{c_char, c_int, c_void, CStr};

use crate::vif::{IfHandle, IfKpi, MbufHandle};

extern "C" {
    fn xenrs_xnb_ifnet_create(
        softc: *mut c_void,
        name: *const c_char,
        mac: *const u8,
        mtu: c_int,
    ) -> *mut c_void;
    fn xenrs_xnb_now_ns() -> u64;
}

include!("../../ifnet_glue.rs");
ifnet_glue! {
    prefix: xnb,
    name: c"xnb",
    queue_name: c"xnb txq",
    enetdown: crate::vif::errno::ENETDOWN,
    transmit: |dev, p| dev.transmit(p.m, p.len, p.offload, p.flowid, p.hashed),
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

    // ifnet_destroy, link, copydata, mbuf and input: one shared shim function each.
    ifnet_kpi_shared!();

    fn now_ns(&self) -> u64 {
        // SAFETY: no arguments; reads the kernel's uptime.
        unsafe { xenrs_xnb_now_ns() }
    }
}

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
    let p = Deferred {
        m: MbufHandle(m as usize),
        len,
        offload,
        flowid,
        hashed: hashed != 0,
    };
    match softc_ref(softc).push(p) {
        Ok(()) => KEPT,
        // Too many packets wait for the device lock.
        Err(_) => crate::vif::errno::ENOBUFS,
    }
}
