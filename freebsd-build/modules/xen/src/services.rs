//! The symbols xen.ko exports to the driver modules (`include/xenrs_api.h`), over the loaded
//! [`crate::XenModule`]'s platform. Every live registration, port, grant, mapping and page
//! run counts as a user: unloading xen.ko is refused while any exists.
//!
//! This is a KPI layer (C callers, raw pointers): each `unsafe` block says why it is sound.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ffi::{c_char, c_int, c_void, CStr};
use core::sync::atomic::Ordering;

use freebsd_kpi::Errno;
use xen_evtchn::BindOptions;
use xen_gnttab::{MapGrant, MapHandle, Revoke};
use xen_kmod::arch::marshal::RawCall;
use xen_kmod::HypervisorExt;
use xen_xenbus::wire::{self, Header, MsgType, Request};

use crate::platform::{CHandler, Platform, Target};
use crate::MODULE_SLOT;

const API_VERSION: u32 = 1;
/// Xen's `-ENOSYS`, returned by the raw trap when xen.ko is not up.
const XEN_ENOSYS: isize = -38;

fn errno(e: Errno) -> c_int {
    e.to_raw()
}

fn with_platform<R>(
    f: impl FnOnce(&crate::XenModule, &Platform) -> Result<R, Errno>,
) -> Result<R, Errno> {
    MODULE_SLOT
        .with(|m| match m.platform() {
            Some(p) => f(m, p),
            None => Err(Errno::ENXIO),
        })
        .unwrap_or(Err(Errno::ENXIO))
}

fn to_c(r: Result<(), Errno>) -> c_int {
    r.err().map_or(0, errno)
}

/// Runs a driver's event handler.
pub(crate) fn call_handler(h: CHandler, port: u32) {
    // SAFETY: `func`/`arg` were registered through xenrs_evtchn_* by a module that keeps them
    // valid until xenrs_evtchn_unbind returns, and unbind waits for the dispatch lock this
    // call runs under, so the handler is never entered after its unbind.
    unsafe { (h.func)(core::ptr::with_exposed_provenance_mut(h.arg), port) }
}

/// `uint32_t xenrs_api_version(void)`.
#[no_mangle]
pub extern "C" fn xenrs_api_version() -> u32 {
    API_VERSION
}

/// `uint32_t xenrs_domid(void)`.
#[no_mangle]
pub extern "C" fn xenrs_domid() -> u32 {
    with_platform(|_, p| Ok(u32::from(p.domid))).unwrap_or(0)
}

/// `intptr_t xenrs_hypercall(uint32_t op, const uintptr_t args[5])`.
///
/// # Safety
/// `args` points at five words; pointer arguments among them are valid for the call.
#[no_mangle]
pub unsafe extern "C" fn xenrs_hypercall(op: u32, args: *const usize) -> isize {
    if args.is_null() {
        return XEN_ENOSYS;
    }
    let mut a = [0usize; 5];
    // SAFETY: five readable words by the caller's contract.
    unsafe { core::ptr::copy_nonoverlapping(args, a.as_mut_ptr(), 5) };
    let call = RawCall { op, args: a };
    with_platform(|_, p| Ok((p.raw)(&call))).unwrap_or(XEN_ENOSYS)
}

/// `int xenrs_xs_call(const uint8_t *req, size_t len, uint8_t *reply, size_t cap, size_t *reply_len)`.
///
/// # Safety
/// `req` is readable for `len` bytes, `reply` writable for `cap`, `reply_len` writable.
#[no_mangle]
pub unsafe extern "C" fn xenrs_xs_call(
    req: *const u8,
    len: usize,
    reply: *mut u8,
    cap: usize,
    reply_len: *mut usize,
) -> c_int {
    if req.is_null() || reply.is_null() || reply_len.is_null() {
        return errno(Errno::EINVAL);
    }
    // SAFETY: readable for `len` bytes by the caller's contract; copied before use.
    let msg: Vec<u8> = unsafe { core::slice::from_raw_parts(req, len) }.to_vec();
    let out = xs_call(&msg);
    match out {
        Ok(bytes) if bytes.len() <= cap => {
            // SAFETY: writable for `cap` >= bytes.len() bytes; `reply_len` writable.
            unsafe {
                core::ptr::copy_nonoverlapping(bytes.as_ptr(), reply, bytes.len());
                reply_len.write(bytes.len());
            }
            0
        }
        Ok(_) => errno(Errno::EINVAL),
        Err(e) => errno(e),
    }
}

/// One request message in, the reply message out (an `XS_ERROR` message for the daemon's
/// refusals).
pub(crate) fn xs_call(msg: &[u8]) -> Result<Vec<u8>, Errno> {
    let head: &[u8; 16] = msg
        .get(..16)
        .and_then(|h| h.try_into().ok())
        .ok_or(Errno::EINVAL)?;
    let header = Header::decode(head).map_err(|_| Errno::EINVAL)?;
    let payload = msg
        .get(16..16 + header.payload_len())
        .ok_or(Errno::EINVAL)?;
    if msg.len() != 16 + header.payload_len() {
        return Err(Errno::EINVAL);
    }
    // Watches go through xenrs_xs_watch (they need a registration to route events to).
    if matches!(header.ty, MsgType::Watch | MsgType::Unwatch) {
        return Err(Errno::EINVAL);
    }
    let req = Request::decode(header.ty, payload).map_err(|_| Errno::EINVAL)?;
    with_platform(|_, p| {
        let tx = xen_xenbus::TxId::from_raw(header.tx_id);
        let result = p.xs.lock().call(&req, tx);
        let mut out = Vec::new();
        match result {
            Ok(reply) => reply
                .encode(header.ty, 0, header.tx_id, &mut out)
                .map_err(|_| Errno::E2BIG)?,
            Err(xen_xenbus::Error::Xs(e)) => wire::encode_error(e, 0, header.tx_id, &mut out),
            Err(_) => return Err(Errno::EIO),
        }
        Ok(out)
    })
}

/// A registration (`struct xenrs_xenbus_reg`).
#[derive(Debug)]
pub struct Reg {
    pub role: u32,
    pub devtype: alloc::string::String,
    pub cb: unsafe extern "C" fn(*mut c_void, c_int, u32, *const c_char, c_int),
    pub arg: usize,
    pub watches: Vec<xen_xenbus::WatchId>,
    pub started: bool,
    /// A kick is pending (`xenrs_xenbus_kick`).
    pub kicked: bool,
}

/// Live registrations: address of the boxed `Reg` -> the box.
pub type Regs = BTreeMap<usize, alloc::boxed::Box<Reg>>;

/// `int xenrs_xenbus_register(uint32_t role, const char *devtype, cb, void *arg, struct xenrs_xenbus_reg **out)`.
///
/// # Safety
/// `devtype` is NUL-terminated; `out` writable; `cb`/`arg` stay valid until unregister.
#[no_mangle]
pub unsafe extern "C" fn xenrs_xenbus_register(
    role: u32,
    devtype: *const c_char,
    cb: Option<unsafe extern "C" fn(*mut c_void, c_int, u32, *const c_char, c_int)>,
    arg: *mut c_void,
    out: *mut *mut c_void,
) -> c_int {
    let (Some(cb), false, false) = (cb, devtype.is_null(), out.is_null()) else {
        return errno(Errno::EINVAL);
    };
    if role > 1 {
        return errno(Errno::EINVAL);
    }
    // SAFETY: NUL-terminated by the caller's contract.
    let Ok(devtype) = unsafe { CStr::from_ptr(devtype) }.to_str() else {
        return errno(Errno::EINVAL);
    };
    to_c(with_platform(|m, _| {
        let mut regs = m.regs.lock();
        if regs
            .values()
            .any(|r| r.role == role && r.devtype == devtype)
        {
            return Err(Errno::EEXIST);
        }
        let reg = alloc::boxed::Box::new(Reg {
            role,
            devtype: devtype.into(),
            cb,
            arg: arg.expose_provenance(),
            watches: Vec::new(),
            started: false,
            kicked: false,
        });
        let key = core::ptr::from_ref(&*reg).expose_provenance();
        // SAFETY: writable by the caller's contract; written before the start is queued.
        unsafe { out.write(core::ptr::with_exposed_provenance_mut(key)) };
        regs.insert(key, reg);
        m.acquire();
        crate::kpi::kick(crate::kpi::Task::Xenbus);
        Ok(())
    }))
}

/// `int xenrs_xenbus_unregister(struct xenrs_xenbus_reg *reg)`.
#[no_mangle]
pub extern "C" fn xenrs_xenbus_unregister(reg: *mut c_void) -> c_int {
    let key = reg.expose_provenance();
    to_c(with_platform(|m, p| {
        if m.xenbus_thread.load(Ordering::Acquire) == crate::kpi::curthread() {
            // From a registration's callback: the stop would wait for ourselves.
            return Err(Errno::EDEADLK);
        }
        // The xenbus lock serialises with the xenbus thread's callbacks.
        let _serial = m.xenbus_serial.lock();
        let Some(reg) = m.regs.lock().remove(&key) else {
            return Err(Errno::ENOENT);
        };
        if reg.started {
            // SAFETY: the registration's callback, valid until this function returns.
            unsafe {
                (reg.cb)(
                    core::ptr::with_exposed_provenance_mut(reg.arg),
                    2,
                    0,
                    core::ptr::null(),
                    0,
                )
            };
        }
        let left: Vec<_> = m
            .watch_owner
            .lock()
            .iter()
            .filter(|(_, k)| **k == key)
            .map(|(w, _)| *w)
            .collect();
        for w in left {
            m.watch_owner.lock().remove(&w);
            let _ = p.xs.lock().unwatch(w);
        }
        m.release();
        Ok(())
    }))
}

/// `int xenrs_xenbus_kick(struct xenrs_xenbus_reg *reg)`: one `XENRS_XB_KICK` callback on the
/// xenbus thread (coalesced with kicks not yet delivered).
#[no_mangle]
pub extern "C" fn xenrs_xenbus_kick(reg: *mut c_void) -> c_int {
    let key = reg.expose_provenance();
    to_c(with_platform(|m, _| {
        m.regs.lock().get_mut(&key).ok_or(Errno::ENOENT)?.kicked = true;
        crate::kpi::kick(crate::kpi::Task::Xenbus);
        Ok(())
    }))
}

/// `int xenrs_xs_watch(struct xenrs_xenbus_reg *reg, const char *path, uint32_t *watch)`.
///
/// # Safety
/// `path` NUL-terminated, `watch` writable.
#[no_mangle]
pub unsafe extern "C" fn xenrs_xs_watch(
    reg: *mut c_void,
    path: *const c_char,
    watch: *mut u32,
) -> c_int {
    if path.is_null() || watch.is_null() {
        return errno(Errno::EINVAL);
    }
    // SAFETY: NUL-terminated by the caller's contract.
    let Ok(path) = unsafe { CStr::from_ptr(path) }.to_str() else {
        return errno(Errno::EINVAL);
    };
    let key = reg.expose_provenance();
    match with_platform(|m, p| {
        if !m.regs.lock().contains_key(&key) {
            return Err(Errno::ENOENT);
        }
        let w = p.xs.lock().watch(path).map_err(|_| Errno::EIO)?;
        m.watch_owner.lock().insert(w, key);
        Ok(w.0)
    }) {
        Ok(w) => {
            // SAFETY: writable by the caller's contract.
            unsafe { watch.write(w) };
            0
        }
        Err(e) => errno(e),
    }
}

/// `int xenrs_xs_unwatch(struct xenrs_xenbus_reg *reg, uint32_t watch)`.
#[no_mangle]
pub extern "C" fn xenrs_xs_unwatch(reg: *mut c_void, watch: u32) -> c_int {
    let key = reg.expose_provenance();
    let w = xen_xenbus::WatchId(watch);
    to_c(with_platform(|m, p| {
        if m.watch_owner.lock().get(&w) != Some(&key) {
            return Err(Errno::ENOENT);
        }
        m.watch_owner.lock().remove(&w);
        p.xs.lock().unwatch(w).map_err(|_| Errno::EIO)
    }))
}

/// The xenbus task: start new registrations, deliver queued watch events (bounded).
pub(crate) fn run_xenbus(m: &crate::XenModule, p: &Platform) {
    let _serial = m.xenbus_serial.lock();
    m.xenbus_thread
        .store(crate::kpi::curthread(), Ordering::Release);
    let pending: Vec<(usize, Reg2)> = m
        .regs
        .lock()
        .iter_mut()
        .filter(|(_, r)| !r.started)
        .map(|(k, r)| {
            r.started = true;
            (
                *k,
                Reg2 {
                    cb: r.cb,
                    arg: r.arg,
                },
            )
        })
        .collect();
    for (_, r) in pending {
        // SAFETY: a live registration's callback (unregister takes xenbus_serial first).
        // A second START (domain 0, xenstored came up) is harmless: a bus start only adds
        // its root watch once and probes what is new.
        unsafe {
            (r.cb)(
                core::ptr::with_exposed_provenance_mut(r.arg),
                0,
                0,
                core::ptr::null(),
                0,
            )
        };
    }
    let kicks: Vec<Reg2> = m
        .regs
        .lock()
        .values_mut()
        .filter(|r| r.started && r.kicked)
        .map(|r| {
            r.kicked = false;
            Reg2 {
                cb: r.cb,
                arg: r.arg,
            }
        })
        .collect();
    for r in kicks {
        // SAFETY: as for the starts above.
        unsafe {
            (r.cb)(
                core::ptr::with_exposed_provenance_mut(r.arg),
                3,
                0,
                core::ptr::null(),
                0,
            );
        };
    }
    crate::cdev::retry_cleanups(m, p);
    poll_deferred(m, p);
    for _ in 0..64 {
        let ev = p.xs.lock().poll_event();
        let Ok(Some((id, ev))) = ev else { break };
        let owner = m.watch_owner.lock().get(&id).copied();
        let Some(key) = owner else {
            // Not a registration's: one of the /dev/xen/xenstore files' (or stale).
            let _ = crate::cdev::service_xenstore(m, p, Some((id, ev)));
            continue;
        };
        let target = m.regs.lock().get(&key).map(|r| Reg2 {
            cb: r.cb,
            arg: r.arg,
        });
        let Some(r) = target else { continue };
        let mut path = Vec::with_capacity(ev.path.len() + 1);
        path.extend_from_slice(ev.path.as_bytes());
        path.extend_from_slice(b"\0");
        // SAFETY: as above; `path` is NUL-terminated and outlives the call.
        unsafe {
            (r.cb)(
                core::ptr::with_exposed_provenance_mut(r.arg),
                1,
                id.0,
                path.as_ptr().cast(),
                c_int::from(ev.missed),
            );
        }
    }
    finish_xenbus(m, p);
    m.xenbus_thread.store(0, Ordering::Release);
}

/// The xenstore files' replies (after the loop above pumped the ring).
fn finish_xenbus(m: &crate::XenModule, p: &Platform) {
    let _ = crate::cdev::service_xenstore(m, p, None);
}

struct Reg2 {
    cb: unsafe extern "C" fn(*mut c_void, c_int, u32, *const c_char, c_int),
    arg: usize,
}

fn bind(
    handler: Option<unsafe extern "C" fn(*mut c_void, u32)>,
    arg: *mut c_void,
    port_out: *mut u32,
    flags: u32,
    f: impl FnOnce(&Platform, BindOptions) -> Result<u32, xen_evtchn::Error>,
) -> c_int {
    let (Some(func), false) = (handler, port_out.is_null()) else {
        return errno(Errno::EINVAL);
    };
    if flags & !1 != 0 {
        return errno(Errno::EINVAL);
    }
    let h = CHandler {
        func,
        arg: arg.expose_provenance(),
    };
    match with_platform(|m, p| {
        let mut opts = BindOptions::new(1);
        opts.auto_mask = flags & 1 != 0;
        // Register the target before Xen can deliver: the port number is only known after
        // the bind, so the core's lock is held across both (the events task waits).
        let mut targets = p.targets.lock();
        let port = f(p, opts)
            .map_err(|e| Errno::from_raw(xen_evtchn::dev::errno(e).0).unwrap_or(Errno::EIO))?;
        targets.insert(port, Target::Driver(h));
        m.acquire();
        Ok(port)
    }) {
        Ok(port) => {
            // SAFETY: writable by the caller's contract.
            unsafe { port_out.write(port) };
            0
        }
        Err(e) => errno(e),
    }
}

/// `int xenrs_evtchn_alloc_unbound(uint32_t remote, uint32_t flags, handler, void *arg, uint32_t *port)`.
#[no_mangle]
pub extern "C" fn xenrs_evtchn_alloc_unbound(
    remote: u32,
    flags: u32,
    handler: Option<unsafe extern "C" fn(*mut c_void, u32)>,
    arg: *mut c_void,
    port: *mut u32,
) -> c_int {
    let Ok(remote) = u16::try_from(remote) else {
        return errno(Errno::EINVAL);
    };
    bind(handler, arg, port, flags, |p, o| {
        p.evtchn.lock().alloc_unbound(remote, o)
    })
}

/// `int xenrs_evtchn_bind_interdomain(uint32_t remote, uint32_t remote_port, uint32_t flags, handler, void *arg, uint32_t *port)`.
#[no_mangle]
pub extern "C" fn xenrs_evtchn_bind_interdomain(
    remote: u32,
    remote_port: u32,
    flags: u32,
    handler: Option<unsafe extern "C" fn(*mut c_void, u32)>,
    arg: *mut c_void,
    port: *mut u32,
) -> c_int {
    let Ok(remote) = u16::try_from(remote) else {
        return errno(Errno::EINVAL);
    };
    bind(handler, arg, port, flags, |p, o| {
        p.evtchn.lock().bind_interdomain(remote, remote_port, o)
    })
}

fn driver_port(p: &Platform, port: u32) -> Result<(), Errno> {
    match p.targets.lock().get(&port) {
        Some(Target::Driver(_)) => Ok(()),
        _ => Err(Errno::ENOENT),
    }
}

/// `int xenrs_evtchn_notify(uint32_t port)`.
#[no_mangle]
pub extern "C" fn xenrs_evtchn_notify(port: u32) -> c_int {
    to_c(with_platform(|_, p| {
        driver_port(p, port)?;
        p.hv.evtchn_send(port).map_err(|_| Errno::EIO)
    }))
}

/// `int xenrs_evtchn_unmask(uint32_t port)`.
#[no_mangle]
pub extern "C" fn xenrs_evtchn_unmask(port: u32) -> c_int {
    to_c(with_platform(|_, p| {
        driver_port(p, port)?;
        p.evtchn.lock().unmask(port).map_err(|_| Errno::EIO)
    }))
}

/// `int xenrs_evtchn_unbind(uint32_t port)`: after it returns the handler never runs.
#[no_mangle]
pub extern "C" fn xenrs_evtchn_unbind(port: u32) -> c_int {
    to_c(with_platform(|m, p| {
        let me = u64::try_from(crate::kpi::curthread()).unwrap_or(u64::MAX);
        if p.counters.dispatching.load(Ordering::Acquire) == me {
            // From a handler: waiting for the dispatch below would wait for ourselves.
            return Err(Errno::EDEADLK);
        }
        // Taking the dispatch lock waits for a handler run in progress; once the target is
        // removed, later events of the port find none and are dropped.
        let _serial = p.dispatch.lock();
        driver_port(p, port)?;
        p.targets.lock().remove(&port);
        let _ = p.evtchn.lock().close(port);
        m.release();
        Ok(())
    }))
}

/// `int xenrs_grant_access(uint32_t domid, uint64_t gfn, int readonly, uint32_t *gref)`.
///
/// # Safety
/// `gref` writable.
#[no_mangle]
pub unsafe extern "C" fn xenrs_grant_access(
    domid: u32,
    gfn: u64,
    readonly: c_int,
    gref: *mut u32,
) -> c_int {
    let Ok(domid) = u16::try_from(domid) else {
        return errno(Errno::EINVAL);
    };
    if gref.is_null() {
        return errno(Errno::EINVAL);
    }
    match with_platform(|m, p| {
        let r = p
            .gnttab
            .grant(domid, gfn, readonly != 0)
            .map_err(|e| match e {
                xen_gnttab::GrantError::FrameTooLarge { .. } => Errno::EINVAL,
                _ => Errno::ENOSPC,
            })?;
        let raw = r.raw();
        p.grants.lock().insert(raw, (r, gfn));
        m.acquire();
        Ok(raw)
    }) {
        Ok(raw) => {
            // SAFETY: writable by the caller's contract.
            unsafe { gref.write(raw) };
            0
        }
        Err(e) => errno(e),
    }
}

/// `int xenrs_grant_end_access(uint32_t gref)`.
#[no_mangle]
pub extern "C" fn xenrs_grant_end_access(gref: u32) -> c_int {
    to_c(with_platform(|m, p| {
        let mut grants = p.grants.lock();
        let (r, _) = grants.get(&gref).ok_or(Errno::ENOENT)?;
        p.gnttab.end_access(r).map_err(|_| Errno::EBUSY)?;
        if let Some((r, _)) = grants.remove(&gref) {
            let _ = p.gnttab.revoke(r);
        }
        m.release();
        Ok(())
    }))
}

/// `int xenrs_grant_revoke(uint32_t gref, int *deferred)`.
///
/// # Safety
/// `deferred` writable.
#[no_mangle]
pub unsafe extern "C" fn xenrs_grant_revoke(gref: u32, deferred: *mut c_int) -> c_int {
    if deferred.is_null() {
        return errno(Errno::EINVAL);
    }
    match with_platform(|m, p| {
        let (r, gfn) = p.grants.lock().remove(&gref).ok_or(Errno::ENOENT)?;
        let d = p.gnttab.revoke(r) == Revoke::Deferred;
        if d {
            // xen.ko keeps the reference (and a use of the module) until the peer lets go.
            *p.deferred.lock().entry(gfn).or_insert(0) += 1;
        } else {
            m.release();
        }
        Ok(d)
    }) {
        Ok(d) => {
            // SAFETY: writable by the caller's contract.
            unsafe { deferred.write(c_int::from(d)) };
            0
        }
        Err(e) => errno(e),
    }
}

/// A foreign mapping: the page whose frame was given to Xen, and the grant handle.
#[derive(Debug)]
pub struct Mapping {
    pub page: crate::kpi::KPages,
    pub handle: Option<MapHandle>,
}

/// `int xenrs_grant_map(uint32_t domid, uint32_t gref, int readonly, uint64_t *handle, void **va)`.
///
/// # Safety
/// `handle` and `va` writable.
#[no_mangle]
pub unsafe extern "C" fn xenrs_grant_map(
    domid: u32,
    gref: u32,
    readonly: c_int,
    handle: *mut u64,
    va: *mut *mut c_void,
) -> c_int {
    let Ok(domid) = u16::try_from(domid) else {
        return errno(Errno::EINVAL);
    };
    if handle.is_null() || va.is_null() {
        return errno(Errno::EINVAL);
    }
    match with_platform(|m, p| {
        let page = crate::kpi::KPages::alloc(1, false)?;
        let gfn = page.gfn();
        // Give the frame back to Xen so the grant can be mapped there.
        let mut extents = [crate::platform::xen_pfn(gfn).ok_or(Errno::ENOMEM)?];
        let mut args = xen_sys::native::xen_memory_reservation {
            nr_extents: 1,
            domid: xen_kmod::DOMID_SELF,
            ..Default::default()
        };
        let given = p.hv.memory_op(xen_kmod::MemoryOp::DecreaseReservation {
            args: &mut args,
            extents: &mut extents,
        });
        if given != Ok(1) {
            return Err(Errno::ENOMEM);
        }
        let mut op = [MapGrant::new(domid, gref, page.pa(), readonly != 0)];
        if xen_gnttab::map_grants(p.hv, &mut op).is_err() {
            repopulate(p, page);
            return Err(Errno::EINVAL);
        }
        let [op] = op;
        let addr = page.va().expose_provenance();
        let key = m.next_map.fetch_add(1, Ordering::Relaxed);
        m.maps.lock().insert(
            key,
            Mapping {
                page,
                handle: op.handle,
            },
        );
        m.acquire();
        Ok((key, addr))
    }) {
        Ok((key, addr)) => {
            // SAFETY: writable by the caller's contract.
            unsafe {
                handle.write(key);
                va.write(core::ptr::with_exposed_provenance_mut(addr));
            }
            0
        }
        Err(e) => errno(e),
    }
}

/// Puts RAM back at a page's frame and frees it; leaks it when Xen refuses.
fn repopulate(p: &Platform, page: crate::kpi::KPages) {
    let Some(pfn) = crate::platform::xen_pfn(page.gfn()) else {
        page.leak();
        return;
    };
    let mut extents = [pfn];
    let mut args = xen_sys::native::xen_memory_reservation {
        nr_extents: 1,
        domid: xen_kmod::DOMID_SELF,
        ..Default::default()
    };
    let back = p.hv.memory_op(xen_kmod::MemoryOp::PopulatePhysmap {
        args: &mut args,
        extents: &mut extents,
    });
    if back == Ok(1) {
        drop(page);
    } else {
        page.leak();
    }
}

/// `int xenrs_grant_unmap(uint64_t handle)`.
#[no_mangle]
pub extern "C" fn xenrs_grant_unmap(handle: u64) -> c_int {
    to_c(with_platform(|m, p| {
        let mapping = m.maps.lock().remove(&handle).ok_or(Errno::ENOENT)?;
        let mut h = [mapping.handle];
        if xen_gnttab::unmap_grants(p.hv, &mut h).is_err() {
            // Still mapped by Xen: the page can never be reused.
            mapping.page.leak();
            m.release();
            return Err(Errno::EIO);
        }
        repopulate(p, mapping.page);
        m.release();
        Ok(())
    }))
}

/// `int xenrs_grant_copy(void *ops, uint32_t n)`: `n` `struct gnttab_copy` entries.
///
/// # Safety
/// `ops` points at `n` entries, writable (Xen writes each status).
#[no_mangle]
pub unsafe extern "C" fn xenrs_grant_copy(ops: *mut c_void, n: u32) -> c_int {
    if ops.is_null() || n > 4096 {
        return errno(Errno::EINVAL);
    }
    let Ok(len) = usize::try_from(n) else {
        return errno(Errno::EINVAL);
    };
    // SAFETY: `n` writable entries of the Xen ABI struct by the caller's contract.
    let ops =
        unsafe { core::slice::from_raw_parts_mut(ops.cast::<xen_sys::native::gnttab_copy>(), len) };
    to_c(with_platform(|_, p| {
        p.hv.grant_table_op(xen_kmod::GrantTableOp::Copy(ops))
            .map_err(|_| Errno::EINVAL)
    }))
}

/// `int xenrs_pages_alloc(uint32_t count, void **va, uint64_t *gfn)`.
///
/// # Safety
/// `va` and `gfn` writable.
#[no_mangle]
pub unsafe extern "C" fn xenrs_pages_alloc(
    count: u32,
    va: *mut *mut c_void,
    gfn: *mut u64,
) -> c_int {
    if va.is_null() || gfn.is_null() || count == 0 || count > 512 {
        return errno(Errno::EINVAL);
    }
    match with_platform(|m, _| {
        let pages = crate::kpi::KPages::alloc(count, false)?;
        let addr = pages.va().expose_provenance();
        let frame = pages.gfn();
        m.pages.lock().insert(addr, pages);
        m.acquire();
        Ok((addr, frame))
    }) {
        Ok((addr, frame)) => {
            // SAFETY: writable by the caller's contract.
            unsafe {
                va.write(core::ptr::with_exposed_provenance_mut(addr));
                gfn.write(frame);
            }
            0
        }
        Err(e) => errno(e),
    }
}

/// `void xenrs_pages_free(void *va, uint32_t count)`.
#[no_mangle]
pub extern "C" fn xenrs_pages_free(va: *mut c_void, count: u32) {
    let addr = va.expose_provenance();
    let _ = with_platform(|m, p| {
        let mut pages = m.pages.lock();
        match pages.get(&addr) {
            Some(run) if run.count() == count => {
                if let Some(run) = pages.remove(&addr) {
                    let first = run.gfn();
                    revoke_covering(m, p, first, u64::from(count));
                    let covered = p
                        .deferred
                        .lock()
                        .range(first..first + u64::from(count))
                        .next()
                        .is_some();
                    if covered {
                        // A peer still maps one of these pages: hold it (still a use).
                        m.held.lock().push(run);
                        return Ok(());
                    }
                }
                m.release();
                Ok(())
            }
            _ => {
                freebsd_kpi::kprintln!(
                    "xen: xenrs_pages_free of pages xen.ko did not hand out; ignored"
                );
                Err(Errno::EINVAL)
            }
        }
    });
}

/// The events task (shim: the events taskqueue thread).
#[no_mangle]
pub extern "C" fn xenrs_xen_run_events() {
    crate::MODULE_SLOT.with(|m| {
        if let Some(p) = m.platform() {
            p.run_events(m);
        }
    });
}

/// The upcall interrupt filter (shim: `xenrs_upcall_filter`). Takes no lock: the module
/// slot's reader count is an atomic, the rest is [`Platform::upcall`].
#[no_mangle]
pub extern "C" fn xenrs_xen_upcall() {
    crate::MODULE_SLOT.with(|m| {
        if let Some(p) = m.platform() {
            p.upcall();
        }
    });
}

/// The xenbus task (shim: the xenbus taskqueue thread).
#[no_mangle]
pub extern "C" fn xenrs_xen_run_xenbus() {
    crate::MODULE_SLOT.with(|m| {
        if let Some(p) = m.platform() {
            run_xenbus(m, p);
        }
    });
}

/// Retries deferred revocations: each that completes releases its use of the module and its
/// frame; held page runs no deferred frame covers any more are freed.
pub(crate) fn poll_deferred(m: &crate::XenModule, p: &Platform) {
    if p.deferred.lock().is_empty() {
        return;
    }
    let mut done = 0u32;
    p.gnttab.poll_deferred(|frame| {
        let mut deferred = p.deferred.lock();
        let gfn = u64::from(frame);
        if let Some(n) = deferred.get_mut(&gfn) {
            *n -= 1;
            if *n == 0 {
                deferred.remove(&gfn);
            }
        }
        done += 1;
    });
    for _ in 0..done {
        m.release();
    }
    let deferred = p.deferred.lock();
    if !deferred.is_empty() {
        // Peers still map some of our pages: look again in a while.
        crate::kpi::kick_after(crate::kpi::Task::Xenbus, 250);
    }
    let mut held = m.held.lock();
    let before = held.len();
    held.retain(|run| {
        let first = run.gfn();
        deferred
            .range(first..first + u64::from(run.count()))
            .next()
            .is_some()
    });
    for _ in held.len()..before {
        m.release();
    }
}

/// Grants still live on frames `first..first + count` when their pages are given back (a
/// driver bug: the peer could otherwise reach freed memory) are revoked here, deferred
/// when the peer still maps them.
fn revoke_covering(m: &crate::XenModule, p: &Platform, first: u64, count: u64) {
    let live: Vec<u32> = p
        .grants
        .lock()
        .iter()
        .filter(|(_, (_, gfn))| (first..first + count).contains(gfn))
        .map(|(raw, _)| *raw)
        .collect();
    for raw in live {
        freebsd_kpi::kprintln!("xen: pages freed with grant {raw} still live; revoking it");
        let Some((r, gfn)) = p.grants.lock().remove(&raw) else {
            continue;
        };
        if p.gnttab.revoke(r) == Revoke::Deferred {
            *p.deferred.lock().entry(gfn).or_insert(0) += 1;
        } else {
            m.release();
        }
    }
}
