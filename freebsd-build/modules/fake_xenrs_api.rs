//! Fakes of xen.ko's exported C symbols (`include/xenrs_api.h`) for the driver modules' host
//! tests (included by each module's tests with `#[path]`).
//!
//! The glue's data paths are tested over `xenrs_api::host::HostXen` (xensim behind the same
//! trait); these fakes only let the modules' `extern "C"` entry points (`MOD_LOAD`,
//! `MOD_UNLOAD`) run as the kernel would call them: the ABI version and the xenbus driver
//! registrations are recorded, everything else answers `ENXIO` (xen.ko not up).
#![allow(unsafe_code, clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Mutex, PoisonError};

/// `ENXIO`.
const ENXIO: c_int = 6;

/// What the fakes saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// The ABI version `xenrs_api_version` reports.
    pub version: u32,
    /// Live registrations: (role, device type, handle).
    pub registered: Vec<(u32, String, usize)>,
    /// Registrations undone.
    pub unregistered: usize,
    /// Kicks of live registrations.
    pub kicks: usize,
    /// Each registration's callback and argument, by handle (for [`deliver`]).
    pub callbacks: Vec<(usize, XenbusCb, usize)>,
}

/// xen.ko's xenbus callback type (`xenrs_xenbus_cb_t`).
pub type XenbusCb = unsafe extern "C" fn(*mut c_void, c_int, u32, *const c_char, c_int);

/// Calls live registration `handle`'s callback as xen.ko's xenbus thread does: `kind` 0
/// start, 1 watch event (`watch`, `path`), 2 stop, 3 kick. False when no such registration.
#[allow(
    dead_code,
    reason = "used by the modules whose tests drive the xenbus callback (xbd), not every includer"
)]
pub fn deliver(handle: usize, kind: c_int, watch: u32, path: &CStr) -> bool {
    let cb = with(|s| {
        s.registered
            .iter()
            .any(|r| r.2 == handle)
            .then(|| {
                s.callbacks
                    .iter()
                    .find(|c| c.0 == handle)
                    .map(|c| (c.1, c.2))
            })
            .flatten()
    });
    let Some((cb, arg)) = cb else {
        return false;
    };
    // SAFETY: a live registration's callback and argument, called from one thread at a time
    // (the tests' own) as xen.ko's xenbus thread would; `path` is NUL-terminated.
    unsafe { cb(arg as *mut c_void, kind, watch, path.as_ptr(), 0) };
    true
}

static SEEN: Mutex<Option<Seen>> = Mutex::new(None);

/// Runs `f` on the record.
pub fn with<R>(f: impl FnOnce(&mut Seen) -> R) -> R {
    let mut g = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    f(g.get_or_insert_with(|| Seen {
        version: 1,
        ..Seen::default()
    }))
}

/// Starts from a clean record with ABI version `version`.
pub fn reset(version: u32) {
    with(|s| {
        *s = Seen {
            version,
            ..Seen::default()
        }
    });
}

#[no_mangle]
pub extern "C" fn xenrs_api_version() -> u32 {
    with(|s| s.version)
}

#[no_mangle]
pub extern "C" fn xenrs_domid() -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn xenrs_hypercall(_op: u32, _args: *const usize) -> isize {
    -38
}

#[no_mangle]
pub extern "C" fn xenrs_xs_call(
    _req: *const u8,
    _len: usize,
    _reply: *mut u8,
    _cap: usize,
    _reply_len: *mut usize,
) -> c_int {
    ENXIO
}

#[no_mangle]
pub unsafe extern "C" fn xenrs_xenbus_register(
    role: u32,
    devtype: *const c_char,
    cb: XenbusCb,
    arg: *mut c_void,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: NUL-terminated by the caller's contract.
    let ty = unsafe { CStr::from_ptr(devtype) }
        .to_string_lossy()
        .into_owned();
    let handle = with(|s| {
        let h = 0x5000 + s.registered.len() + s.unregistered;
        s.registered.push((role, ty, h));
        s.callbacks.push((h, cb, arg as usize));
        h
    });
    // SAFETY: `out` is valid for a write by the caller's contract.
    unsafe { out.write(handle as *mut c_void) };
    0
}

#[no_mangle]
pub extern "C" fn xenrs_xenbus_unregister(reg: *mut c_void) -> c_int {
    with(|s| {
        let before = s.registered.len();
        s.registered.retain(|r| r.2 != reg as usize);
        if s.registered.len() < before {
            s.unregistered += 1;
            0
        } else {
            22
        }
    })
}

/// Records a kick of a live registration (xen.ko would run its kick function on the xenbus
/// thread).
#[no_mangle]
pub extern "C" fn xenrs_xenbus_kick(reg: *mut c_void) -> c_int {
    with(|s| {
        if s.registered.iter().any(|r| r.2 == reg as usize) {
            s.kicks += 1;
            0
        } else {
            ENXIO
        }
    })
}

#[no_mangle]
pub extern "C" fn xenrs_xs_watch(_reg: *mut c_void, _path: *const c_char, _w: *mut u32) -> c_int {
    ENXIO
}

#[no_mangle]
pub extern "C" fn xenrs_xs_unwatch(_reg: *mut c_void, _w: u32) -> c_int {
    ENXIO
}

#[no_mangle]
pub extern "C" fn xenrs_evtchn_alloc_unbound(
    _remote: u32,
    _flags: u32,
    _handler: unsafe extern "C" fn(*mut c_void, u32),
    _arg: *mut c_void,
    _port: *mut u32,
) -> c_int {
    ENXIO
}

#[no_mangle]
pub extern "C" fn xenrs_evtchn_bind_interdomain(
    _remote: u32,
    _remote_port: u32,
    _flags: u32,
    _handler: unsafe extern "C" fn(*mut c_void, u32),
    _arg: *mut c_void,
    _port: *mut u32,
) -> c_int {
    ENXIO
}

#[no_mangle]
pub extern "C" fn xenrs_evtchn_notify(_port: u32) -> c_int {
    ENXIO
}

#[no_mangle]
pub extern "C" fn xenrs_evtchn_unmask(_port: u32) -> c_int {
    ENXIO
}

#[no_mangle]
pub extern "C" fn xenrs_evtchn_unbind(_port: u32) -> c_int {
    ENXIO
}

#[no_mangle]
pub extern "C" fn xenrs_grant_access(_d: u32, _gfn: u64, _ro: c_int, _g: *mut u32) -> c_int {
    ENXIO
}

#[no_mangle]
pub extern "C" fn xenrs_grant_end_access(_g: u32) -> c_int {
    ENXIO
}

#[no_mangle]
pub extern "C" fn xenrs_grant_revoke(_g: u32, _deferred: *mut c_int) -> c_int {
    ENXIO
}

#[no_mangle]
pub extern "C" fn xenrs_grant_map(
    _d: u32,
    _g: u32,
    _ro: c_int,
    _handle: *mut u64,
    _va: *mut *mut c_void,
) -> c_int {
    ENXIO
}

#[no_mangle]
pub extern "C" fn xenrs_grant_unmap(_handle: u64) -> c_int {
    ENXIO
}

#[no_mangle]
pub extern "C" fn xenrs_grant_copy(_ops: *mut c_void, _n: u32) -> c_int {
    ENXIO
}

#[no_mangle]
pub extern "C" fn xenrs_pages_alloc(_count: u32, _va: *mut *mut c_void, _gfn: *mut u64) -> c_int {
    ENXIO
}

#[no_mangle]
pub extern "C" fn xenrs_pages_free(_va: *mut c_void, _count: u32) {}
