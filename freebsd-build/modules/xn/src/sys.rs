//! The FreeBSD side of xn.ko: the C shim's functions (`xn_kmod.c`), the kernel
//! implementation of [`IfKpi`], the per-interface softc (its locks and taskqueue are
//! `freebsd_kpi`'s shared glue, which xen.ko exports), and the `extern "C"`
//! entry points the shim calls (`if_transmit`, ioctls, sysctl leaves). What xnb.ko has
//! alike (the shared shim functions, the softc's `DeviceGlue`, `SIOCSIFMTU`, the sysctl
//! leaves, the `IfKpi` methods that are one shim call each) comes from `ifnet_glue!` and
//! `ifnet_kpi_shared!` (`modules/ifnet_glue.rs`) under this module's prefix.
//!
//! This is the only part of the crate with `unsafe`: each block says why it holds.
#![allow(unsafe_code)]

use core::ffi::{c_char, c_int, c_void};

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
    fn xenrs_xn_ipv4(ifp: *mut c_void, out: *mut u8) -> c_int;
}

include!("../../ifnet_glue.rs");
ifnet_glue! {
    prefix: xn,
    name: c"xn",
    queue_name: c"xn txq",
    enetdown: crate::net::errno::ENETDOWN,
    transmit: |dev, p| dev.transmit(p.m, p.len, p.offload, p.segsz, p.flowid, p.hashed),
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

    // ifnet_destroy, link, copydata, mbuf and input: one shared shim function each.
    ifnet_kpi_shared!();

    fn ipv4(&self, ifp: IfHandle) -> Option<[u8; 4]> {
        let mut ip = [0u8; 4];
        // SAFETY: a live ifnet; `ip` is valid for 4 bytes.
        (unsafe { xenrs_xn_ipv4(ifp.0 as *mut c_void, ip.as_mut_ptr()) } != 0).then_some(ip)
    }
}

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
