//! [`KernelXen`]: [`XenServices`] over the C symbols xen.ko exports (`xenrs_api.h`).
//!
//! This is a FreeBSD-KPI layer: every `unsafe` block is a call across the module boundary or
//! the one place a callback argument becomes a reference, each with its `// SAFETY:`.
//! In host tests the same symbols come from whatever the test links: xen.ko's own Rust
//! library (kmod-xen, whose exports are `#[no_mangle]`) over a simulated hypervisor, or fakes.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ffi::{c_char, c_int, c_void, CStr};
use core::sync::atomic::{AtomicPtr, Ordering};

use freebsd_kpi::sync::SxLock;
use freebsd_kpi::Errno;
use xen_kmod::arch::marshal::{self, RawCall};
use xen_kmod::{
    ConsoleIoOp, EventChannelOp, GrantTableOp, HvmOp, Hypervisor, MemoryOp, SchedOp, VcpuOp,
    XenError, XenVersionOp,
};
use xen_shmem::SharedMem;
use xen_xenbus::wire::{self, Header, MsgType, Reply, Request};
use xen_xenbus::{Bus, Driver, Role, Store, WatchEvent, WatchId, XenStore};

use crate::{BindFlags, EventHandler, Mapped, Pages, Port, Registration, Revoked, XenServices};

/// Opaque `struct xenrs_xenbus_reg`.
#[repr(C)]
#[derive(Debug)]
pub struct XenbusReg {
    _private: [u8; 0],
}

/// `xenrs_xenbus_cb_t`.
pub type XenbusCb = unsafe extern "C" fn(
    arg: *mut c_void,
    kind: c_int,
    watch: u32,
    path: *const c_char,
    missed: c_int,
);
/// `xenrs_evtchn_handler_t`.
pub type EvtchnHandler = unsafe extern "C" fn(arg: *mut c_void, port: u32);

/// Callback kinds (`XENRS_XB_*`).
pub const XB_START: c_int = 0;
/// A watch fired.
pub const XB_WATCH: c_int = 1;
/// The registration is being removed.
pub const XB_STOP: c_int = 2;
/// A kick requested with `xenrs_xenbus_kick`.
pub const XB_KICK: c_int = 3;
/// `XENRS_EVTCHN_AUTOMASK`.
pub const EVTCHN_AUTOMASK: u32 = 1;

/// Size of a reply buffer: header + largest payload.
pub const XS_REPLY_CAP: usize = wire_sizes::HEADER + wire_sizes::PAYLOAD_MAX;

mod wire_sizes {
    pub const HEADER: usize = xen_xenbus::abi::HEADER_SIZE;
    pub const PAYLOAD_MAX: usize = xen_xenbus::abi::PAYLOAD_MAX;
}

extern "C" {
    fn xenrs_api_version() -> u32;
    fn xenrs_domid() -> u32;
    fn xenrs_hypercall(op: u32, args: *const usize) -> isize;
    fn xenrs_xs_call(
        req: *const u8,
        len: usize,
        reply: *mut u8,
        cap: usize,
        reply_len: *mut usize,
    ) -> c_int;
    fn xenrs_xenbus_register(
        role: u32,
        devtype: *const c_char,
        cb: XenbusCb,
        arg: *mut c_void,
        out: *mut *mut XenbusReg,
    ) -> c_int;
    fn xenrs_xenbus_unregister(reg: *mut XenbusReg) -> c_int;
    fn xenrs_xenbus_kick(reg: *mut XenbusReg) -> c_int;
    fn xenrs_xs_watch(reg: *mut XenbusReg, path: *const c_char, watch: *mut u32) -> c_int;
    fn xenrs_xs_unwatch(reg: *mut XenbusReg, watch: u32) -> c_int;
    fn xenrs_evtchn_alloc_unbound(
        remote: u32,
        flags: u32,
        handler: EvtchnHandler,
        arg: *mut c_void,
        port: *mut u32,
    ) -> c_int;
    fn xenrs_evtchn_bind_interdomain(
        remote: u32,
        remote_port: u32,
        flags: u32,
        handler: EvtchnHandler,
        arg: *mut c_void,
        port: *mut u32,
    ) -> c_int;
    fn xenrs_evtchn_notify(port: u32) -> c_int;
    fn xenrs_evtchn_unmask(port: u32) -> c_int;
    fn xenrs_evtchn_unbind(port: u32) -> c_int;
    fn xenrs_grant_access(domid: u32, gfn: u64, readonly: c_int, gref: *mut u32) -> c_int;
    fn xenrs_grant_end_access(gref: u32) -> c_int;
    fn xenrs_grant_revoke(gref: u32, deferred: *mut c_int) -> c_int;
    fn xenrs_grant_map(
        domid: u32,
        gref: u32,
        readonly: c_int,
        handle: *mut u64,
        va: *mut *mut c_void,
    ) -> c_int;
    fn xenrs_grant_unmap(handle: u64) -> c_int;
    fn xenrs_pages_alloc(count: u32, va: *mut *mut c_void, gfn: *mut u64) -> c_int;
    fn xenrs_pages_free(va: *mut c_void, count: u32);
}

fn check(rc: c_int) -> Result<(), Errno> {
    match Errno::from_raw(rc) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// The hypervisor through xen.ko's hypercall page (`xenrs_hypercall`).
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelHv;

fn trap(call: &RawCall) -> isize {
    // SAFETY: xenrs_hypercall reads exactly five words from `args`, which is a live array;
    // marshal built the pointer arguments from borrows that outlive this call.
    unsafe { xenrs_hypercall(call.op, call.args.as_ptr()) }
}

impl Hypervisor for KernelHv {
    fn event_channel_op(&self, op: EventChannelOp<'_>) -> Result<(), XenError> {
        marshal::event_channel_op(op, trap)
    }
    fn grant_table_op(&self, op: GrantTableOp<'_>) -> Result<(), XenError> {
        marshal::grant_table_op(op, trap)
    }
    fn memory_op(&self, op: MemoryOp<'_>) -> Result<u64, XenError> {
        marshal::memory_op(op, trap)
    }
    fn hvm_op(&self, op: HvmOp<'_>) -> Result<(), XenError> {
        marshal::hvm_op(op, trap)
    }
    fn sched_op(&self, op: SchedOp<'_>) -> Result<u64, XenError> {
        marshal::sched_op(op, trap)
    }
    fn vcpu_op(&self, vcpu: u32, op: VcpuOp<'_>) -> Result<u64, XenError> {
        marshal::vcpu_op(vcpu, op, trap)
    }
    fn xen_version(&self, op: XenVersionOp<'_>) -> Result<u64, XenError> {
        marshal::xen_version(op, trap)
    }
    fn console_io(&self, op: ConsoleIoOp<'_>) -> Result<u64, XenError> {
        marshal::console_io(op, trap)
    }
}

/// One xenstore request through `xenrs_xs_call`: `tx` 0 outside a transaction.
///
/// # Errors
/// The daemon's error, a malformed reply (blamed on xen.ko's side: `Protocol`), or the
/// local failure as a transport error.
pub fn xs_call(req: &Request<'_>, tx: u32) -> Result<Reply, xen_xenbus::Error> {
    let mut msg = Vec::new();
    req.encode(0, tx, &mut msg)
        .map_err(xen_xenbus::Error::Invalid)?;
    let mut reply = alloc::vec![0u8; XS_REPLY_CAP];
    let mut len = 0usize;
    // SAFETY: `msg` and `reply` are live buffers of the given lengths; xen.ko writes at most
    // `cap` bytes to `reply` and the length to `len`.
    let rc = unsafe {
        xenrs_xs_call(
            msg.as_ptr(),
            msg.len(),
            reply.as_mut_ptr(),
            reply.len(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(xen_xenbus::Error::Transport(
            xen_xenbus::TransportError::Closed,
        ));
    }
    decode_reply(req.msg_type(), reply.get(..len).unwrap_or(&[]))
}

/// Decodes a reply message (header + payload) to a request of type `ty`.
///
/// # Errors
/// `XS_ERROR` as [`xen_xenbus::Error::Xs`]; anything malformed as `Protocol`.
pub fn decode_reply(ty: MsgType, msg: &[u8]) -> Result<Reply, xen_xenbus::Error> {
    use xen_xenbus::{Error, ProtocolError};
    let head: &[u8; wire_sizes::HEADER] = msg
        .get(..wire_sizes::HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or(Error::Protocol(ProtocolError::BadReply))?;
    let header = Header::decode(head).map_err(Error::Protocol)?;
    let payload = msg
        .get(wire_sizes::HEADER..wire_sizes::HEADER + header.payload_len())
        .ok_or(Error::Protocol(ProtocolError::BadReply))?;
    if header.ty == MsgType::Error {
        return Err(Error::Xs(
            wire::decode_error(payload).map_err(Error::Protocol)?,
        ));
    }
    if header.ty != ty {
        return Err(Error::Protocol(ProtocolError::BadReply));
    }
    Reply::decode(ty, payload).map_err(Error::Protocol)
}

/// The store a driver's bus uses: requests through `xenrs_xs_call`, watches owned by the
/// driver's registration.
#[derive(Debug)]
pub struct KernelStore {
    reg: *const AtomicPtr<XenbusReg>,
}

// SAFETY: the pointer targets the registration's `AtomicPtr`, which lives in the boxed host
// until after the last callback; the store is only used from those callbacks.
unsafe impl Send for KernelStore {}

impl KernelStore {
    fn reg(&self) -> *mut XenbusReg {
        // SAFETY: see the Send argument: the AtomicPtr outlives every use of the store.
        unsafe { &*self.reg }.load(Ordering::Acquire)
    }
}

impl Store for KernelStore {
    fn call(&mut self, req: &Request<'_>) -> Result<Reply, xen_xenbus::Error> {
        xs_call(req, 0)
    }
}

impl XenStore for KernelStore {
    fn watch(&mut self, path: &str) -> Result<WatchId, xen_xenbus::Error> {
        let mut c = Vec::with_capacity(path.len() + 1);
        c.extend_from_slice(path.as_bytes());
        c.push(0);
        let c = CStr::from_bytes_with_nul(&c)
            .map_err(|_| xen_xenbus::Error::Invalid(xen_xenbus::InvalidArg::Path))?;
        let mut id = 0u32;
        // SAFETY: a NUL-terminated path and a live out-pointer; `reg` is this registration's.
        let rc = unsafe { xenrs_xs_watch(self.reg(), c.as_ptr(), &mut id) };
        check(rc).map_err(|_| xen_xenbus::Error::Transport(xen_xenbus::TransportError::Closed))?;
        Ok(WatchId(id))
    }

    fn unwatch(&mut self, id: WatchId) -> Result<(), xen_xenbus::Error> {
        // SAFETY: plain values; `reg` is this registration's.
        let rc = unsafe { xenrs_xs_unwatch(self.reg(), id.0) };
        check(rc).map_err(|_| xen_xenbus::Error::Transport(xen_xenbus::TransportError::Closed))
    }
}

/// The driver side of a registration: the bus and its store, boxed at a stable address that
/// xen.ko hands back to [`xenbus_trampoline`].
struct Host {
    reg: AtomicPtr<XenbusReg>,
    bus: Bus<KernelStore>,
    store: KernelStore,
    on_kick: Option<crate::KickFn<KernelStore>>,
    on_watch: Option<crate::WatchFn<KernelStore>>,
}

/// # Safety
/// `arg` is the `Host` registered with this trampoline; xen.ko calls it from one thread at a
/// time and never after `xenrs_xenbus_unregister` returned; `path` is NUL-terminated or NULL.
unsafe extern "C" fn xenbus_trampoline(
    arg: *mut c_void,
    kind: c_int,
    watch: u32,
    path: *const c_char,
    missed: c_int,
) {
    // SAFETY: by the contract above, no other reference to the host exists during the call.
    let host = unsafe { &mut *arg.cast::<Host>() };
    match kind {
        XB_START => {
            // A failed root watch leaves the bus idle; the console says why.
            if let Err(e) = host.bus.start(&mut host.store) {
                freebsd_kpi::kprintln!("xenbus: starting {} failed: {e}", host.bus.root());
            }
        }
        XB_WATCH => {
            let path = if path.is_null() {
                ""
            } else {
                // SAFETY: non-NULL and NUL-terminated by the contract; valid for this call.
                unsafe { CStr::from_ptr(path) }.to_str().unwrap_or("")
            };
            let ev = WatchEvent {
                path: path.into(),
                missed: missed != 0,
            };
            // xen.ko routes a watch's events to the registration that added it; what the
            // bus does not claim is a watch of the driver's own (blkfront's `sectors`).
            if !host.bus.handle_event(&mut host.store, WatchId(watch), &ev) {
                if let Some(f) = host.on_watch.as_mut() {
                    f(&mut host.bus, &mut host.store, WatchId(watch), &ev);
                }
            }
        }
        XB_STOP => host.bus.stop(&mut host.store),
        XB_KICK => {
            if let Some(f) = host.on_kick.as_mut() {
                f(&mut host.bus, &mut host.store);
            }
        }
        _ => {}
    }
}

/// A registration with xen.ko; dropping it unregisters (stop runs first).
#[derive(Debug)]
pub struct KernelReg {
    host: *mut Host,
}

// SAFETY: the host is only touched by xen.ko's xenbus thread until drop, which unregisters
// (waiting for that thread) before freeing it; the drivers in it were registered `+ Send`.
unsafe impl Send for KernelReg {}
// SAFETY: `&KernelReg` gives no access to the host at all.
unsafe impl Sync for KernelReg {}

impl Registration for KernelReg {
    fn kicker(&self) -> crate::Kicker {
        // SAFETY: `host` is the live box; its `reg` was set by xen.ko before this returns
        // from register (and never changes).
        let reg = unsafe { &*self.host }
            .reg
            .load(Ordering::Acquire)
            .expose_provenance();
        crate::Kicker::new(move || {
            // SAFETY: xen.ko checks the registration is still live (ENOENT otherwise); the
            // pointer is only compared there.
            let _ = unsafe { xenrs_xenbus_kick(core::ptr::with_exposed_provenance_mut(reg)) };
        })
    }
}

impl core::fmt::Debug for Host {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Host")
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}

impl Drop for KernelReg {
    fn drop(&mut self) {
        // SAFETY: `host` is the live box; its `reg` was set by xen.ko before any callback.
        let reg = unsafe { &*self.host }.reg.load(Ordering::Acquire);
        // SAFETY: unregistering our own registration; afterwards no callback can run.
        let rc = unsafe { xenrs_xenbus_unregister(reg) };
        if rc != 0 {
            // xen.ko still references the host (it refused): leaking is the only safe option.
            freebsd_kpi::kprintln!("xenbus: unregister refused ({rc}); keeping its memory");
            return;
        }
        // SAFETY: created by Box::into_raw in register_driver; xen.ko no longer uses it.
        drop(unsafe { Box::from_raw(self.host) });
    }
}

/// The handler box behind one bound port.
type HandlerBox = Box<EventHandler>;

/// # Safety
/// `arg` is a `HandlerBox` leaked by a bind and not yet reclaimed (xen.ko never calls after
/// unbind returned).
unsafe extern "C" fn evtchn_trampoline(arg: *mut c_void, port: u32) {
    // SAFETY: by the contract above the box is alive; we only share it.
    let handler = unsafe { &*arg.cast::<EventHandler>() };
    handler(port);
}

/// [`XenServices`] over xen.ko's exported symbols.
#[derive(Debug)]
pub struct KernelXen {
    /// Handlers of bound ports (port -> leaked `HandlerBox` address), freed after unbind.
    handlers: SxLock<BTreeMap<Port, usize>>,
}

impl KernelXen {
    /// The services, after checking that xen.ko speaks this crate's ABI version.
    ///
    /// # Errors
    /// `EOPNOTSUPP` on a version mismatch (the console says which).
    pub fn new() -> Result<KernelXen, Errno> {
        // SAFETY: no arguments.
        let theirs = unsafe { xenrs_api_version() };
        if theirs != crate::API_VERSION {
            freebsd_kpi::kprintln!(
                "xen.ko speaks xenrs API {theirs}, this module {}; load matching modules",
                crate::API_VERSION
            );
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(KernelXen {
            handlers: SxLock::new(c"xenrs-api handlers", BTreeMap::new())?,
        })
    }

    fn register(
        &self,
        role: Role,
        driver: Box<dyn Driver<KernelStore> + Send>,
        hooks: crate::Hooks<KernelStore>,
    ) -> Result<KernelReg, Errno> {
        let mut devtype = Vec::from(driver.devtype().as_bytes());
        devtype.push(0);
        let devtype = CStr::from_bytes_with_nul(&devtype).map_err(|_| Errno::EINVAL)?;
        let domid = self.domid();
        let mut bus = Bus::new(role, domid);
        bus.register(driver);
        let host = Box::into_raw(Box::new(Host {
            reg: AtomicPtr::new(core::ptr::null_mut()),
            bus,
            store: KernelStore {
                reg: core::ptr::null(),
            },
            on_kick: hooks.on_kick,
            on_watch: hooks.on_watch,
        }));
        // SAFETY: `host` is a fresh box; the store points at the box's own AtomicPtr.
        unsafe { (*host).store.reg = &raw const (*host).reg };
        // SAFETY: `host` stays alive until KernelReg's drop unregisters; xen.ko writes the
        // registration to `reg` before the first callback.
        let rc = unsafe {
            let out = (*host).reg.as_ptr();
            xenrs_xenbus_register(
                crate::role_to_raw(role),
                devtype.as_ptr(),
                xenbus_trampoline,
                host.cast(),
                out,
            )
        };
        if let Err(e) = check(rc) {
            // SAFETY: refused: xen.ko keeps no reference.
            drop(unsafe { Box::from_raw(host) });
            return Err(e);
        }
        Ok(KernelReg { host })
    }

    fn bind(
        &self,
        handler: EventHandler,
        f: impl FnOnce(EvtchnHandler, *mut c_void, &mut u32) -> c_int,
    ) -> Result<Port, Errno> {
        let boxed: HandlerBox = Box::new(handler);
        let arg = Box::into_raw(boxed);
        let mut port = 0u32;
        let rc = f(evtchn_trampoline, arg.cast(), &mut port);
        if let Err(e) = check(rc) {
            // SAFETY: xen.ko refused the bind, so it never saw (or dropped) the pointer.
            drop(unsafe { Box::from_raw(arg) });
            return Err(e);
        }
        let stale = self.handlers.lock().insert(port, arg.expose_provenance());
        if let Some(stale) = stale {
            // xen.ko handed out a port we still had a handler for: it was unbound behind our
            // back (impossible through this crate); the old box is unreachable by xen.ko.
            // SAFETY: leaked by an earlier bind of this port, which xen.ko no longer calls.
            drop(unsafe {
                Box::from_raw(core::ptr::with_exposed_provenance_mut::<EventHandler>(
                    stale,
                ))
            });
        }
        Ok(port)
    }
}

impl Drop for KernelXen {
    /// Ports the driver left bound are unbound here, so no handler of a module being
    /// unloaded can run afterwards (a driver bug, said on the console).
    fn drop(&mut self) {
        let left: Vec<(Port, usize)> = core::mem::take(self.handlers.get_mut())
            .into_iter()
            .collect();
        for (port, ptr) in left {
            freebsd_kpi::kprintln!("xenrs-api: port {port} still bound at teardown; unbinding it");
            // SAFETY: our bound port; after unbind returns its handler never runs again.
            if unsafe { xenrs_evtchn_unbind(port) } == 0 {
                // SAFETY: leaked by `bind` for this port; unbound above.
                drop(unsafe {
                    Box::from_raw(core::ptr::with_exposed_provenance_mut::<EventHandler>(ptr))
                });
            }
        }
    }
}

fn flags_raw(flags: BindFlags) -> u32 {
    if flags.auto_mask {
        EVTCHN_AUTOMASK
    } else {
        0
    }
}

impl XenServices for KernelXen {
    type Hv = KernelHv;
    type Store = KernelStore;
    type Reg = KernelReg;

    fn hypervisor(&self) -> KernelHv {
        KernelHv
    }

    fn domid(&self) -> u16 {
        // SAFETY: no arguments.
        u16::try_from(unsafe { xenrs_domid() }).unwrap_or(u16::MAX)
    }

    fn register_driver(
        &self,
        role: Role,
        driver: Box<dyn Driver<KernelStore> + Send>,
    ) -> Result<KernelReg, Errno> {
        self.register(role, driver, crate::Hooks::default())
    }

    fn register_driver_with_kick(
        &self,
        role: Role,
        driver: Box<dyn Driver<KernelStore> + Send>,
        on_kick: crate::KickFn<KernelStore>,
    ) -> Result<KernelReg, Errno> {
        let hooks = crate::Hooks {
            on_kick: Some(on_kick),
            on_watch: None,
        };
        self.register(role, driver, hooks)
    }

    fn register_driver_with_hooks(
        &self,
        role: Role,
        driver: Box<dyn Driver<KernelStore> + Send>,
        hooks: crate::Hooks<KernelStore>,
    ) -> Result<KernelReg, Errno> {
        self.register(role, driver, hooks)
    }

    fn evtchn_alloc_unbound(
        &self,
        remote: u16,
        flags: BindFlags,
        handler: EventHandler,
    ) -> Result<Port, Errno> {
        self.bind(handler, |h, arg, port| {
            // SAFETY: `arg` is the leaked handler box, `port` a live out-pointer.
            unsafe { xenrs_evtchn_alloc_unbound(u32::from(remote), flags_raw(flags), h, arg, port) }
        })
    }

    fn evtchn_bind_interdomain(
        &self,
        remote: u16,
        remote_port: Port,
        flags: BindFlags,
        handler: EventHandler,
    ) -> Result<Port, Errno> {
        self.bind(handler, |h, arg, port| {
            // SAFETY: as in evtchn_alloc_unbound.
            unsafe {
                xenrs_evtchn_bind_interdomain(
                    u32::from(remote),
                    remote_port,
                    flags_raw(flags),
                    h,
                    arg,
                    port,
                )
            }
        })
    }

    fn evtchn_notify(&self, port: Port) -> Result<(), Errno> {
        // SAFETY: plain value.
        check(unsafe { xenrs_evtchn_notify(port) })
    }

    fn evtchn_unmask(&self, port: Port) -> Result<(), Errno> {
        // SAFETY: plain value.
        check(unsafe { xenrs_evtchn_unmask(port) })
    }

    fn evtchn_unbind(&self, port: Port) -> Result<(), Errno> {
        // SAFETY: plain value.
        check(unsafe { xenrs_evtchn_unbind(port) })?;
        let ptr = self.handlers.lock().remove(&port);
        if let Some(ptr) = ptr {
            // SAFETY: leaked by `bind` for this port; unbound above, so xen.ko never calls
            // the trampoline with it again.
            drop(unsafe {
                Box::from_raw(core::ptr::with_exposed_provenance_mut::<EventHandler>(ptr))
            });
        }
        Ok(())
    }

    fn grant_access(&self, domid: u16, gfn: u64, readonly: bool) -> Result<u32, Errno> {
        let mut gref = 0u32;
        // SAFETY: plain values and a live out-pointer.
        check(unsafe {
            xenrs_grant_access(u32::from(domid), gfn, c_int::from(readonly), &mut gref)
        })?;
        Ok(gref)
    }

    fn grant_end_access(&self, gref: u32) -> Result<(), Errno> {
        // SAFETY: plain value.
        check(unsafe { xenrs_grant_end_access(gref) })
    }

    fn grant_revoke(&self, gref: u32) -> Result<Revoked, Errno> {
        let mut deferred: c_int = 0;
        // SAFETY: plain value and a live out-pointer.
        check(unsafe { xenrs_grant_revoke(gref, &mut deferred) })?;
        Ok(if deferred != 0 {
            Revoked::Deferred
        } else {
            Revoked::Done
        })
    }

    fn grant_map(&self, domid: u16, gref: u32, readonly: bool) -> Result<Mapped, Errno> {
        let mut handle = 0u64;
        let mut va: *mut c_void = core::ptr::null_mut();
        // SAFETY: plain values and live out-pointers.
        check(unsafe {
            xenrs_grant_map(
                u32::from(domid),
                gref,
                c_int::from(readonly),
                &mut handle,
                &mut va,
            )
        })?;
        // SAFETY: xen.ko mapped one page at `va`, valid until grant_unmap; the page is
        // foreign memory, accessed only through SharedMem.
        let mem = match unsafe { SharedMem::new(va.cast(), 4096) } {
            Ok(m) => m,
            Err(_) => {
                // SAFETY: the handle xen.ko just returned.
                let _ = unsafe { xenrs_grant_unmap(handle) };
                return Err(Errno::EIO);
            }
        };
        Ok(Mapped {
            mem,
            handle,
            va: va.expose_provenance(),
        })
    }

    fn grant_unmap(&self, m: Mapped) -> Result<(), Errno> {
        // SAFETY: the handle of a live mapping, consumed here.
        check(unsafe { xenrs_grant_unmap(m.handle) })
    }

    fn alloc_pages(&self, count: u32) -> Result<Pages, Errno> {
        let mut va: *mut c_void = core::ptr::null_mut();
        let mut gfn = 0u64;
        // SAFETY: live out-pointers.
        check(unsafe { xenrs_pages_alloc(count, &mut va, &mut gfn) })?;
        let len = usize::try_from(count).map_err(|_| Errno::EINVAL)? * 4096;
        // SAFETY: xen.ko handed out `count` zeroed pages at `va`, ours until free_pages; they
        // may be granted to peers, so they are accessed only through SharedMem.
        let mem = match unsafe { SharedMem::new(va.cast(), len) } {
            Ok(m) => m,
            Err(_) => {
                // SAFETY: giving back what was just allocated.
                unsafe { xenrs_pages_free(va, count) };
                return Err(Errno::EIO);
            }
        };
        Ok(Pages {
            mem,
            gfn,
            count,
            va: va.expose_provenance(),
        })
    }

    fn free_pages(&self, pages: Pages) {
        // SAFETY: pages from alloc_pages, given back once (consumed).
        unsafe {
            xenrs_pages_free(
                core::ptr::with_exposed_provenance_mut(pages.va),
                pages.count,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use xen_xenbus::{Error, XsError};

    fn reply(ty: MsgType, payload: &[u8]) -> Vec<u8> {
        let h = Header {
            ty,
            req_id: 0,
            tx_id: 0,
            len: u32::try_from(payload.len()).unwrap(),
        };
        let mut m = Vec::from(h.encode());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn replies_are_decoded_strictly() {
        assert_eq!(
            decode_reply(MsgType::Read, &reply(MsgType::Read, b"3")),
            Ok(Reply::Value(b"3".to_vec()))
        );
        assert_eq!(
            decode_reply(MsgType::Read, &reply(MsgType::Error, b"ENOENT\0")),
            Err(Error::Xs(XsError::NoEnt))
        );
        // A reply of another type than the request's, a short message, a truncated payload.
        assert!(matches!(
            decode_reply(MsgType::Read, &reply(MsgType::Write, b"OK\0")),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            decode_reply(MsgType::Read, &[0; 8]),
            Err(Error::Protocol(_))
        ));
        let mut cut = reply(MsgType::Read, b"abcd");
        cut.truncate(18);
        assert!(matches!(
            decode_reply(MsgType::Read, &cut),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn roles_and_errnos_map_both_ways() {
        for role in [Role::Frontend, Role::Backend] {
            assert_eq!(crate::role_from_raw(crate::role_to_raw(role)), Some(role));
        }
        assert_eq!(crate::role_from_raw(2), None);
        assert_eq!(crate::xs_errno(Error::Xs(XsError::NoEnt)), Errno::ENOENT);
        assert_eq!(crate::xs_errno(Error::Xs(XsError::Again)), Errno::EAGAIN);
        assert_eq!(
            crate::xs_errno(Error::Transport(xen_xenbus::TransportError::TimedOut)),
            Errno::ETIMEDOUT
        );
        assert_eq!(crate::xen_errno(XenError::EINVAL), Errno::EINVAL);
    }
}
