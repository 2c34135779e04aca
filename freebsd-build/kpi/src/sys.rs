//! The raw kernel functions this crate calls, and their safe wrappers.
//!
//! Every declaration matches the FreeBSD header named beside it, except `xenrs_printf_str`,
//! which xen.ko's C shim defines (`printf("%s", message)`): `printf(9)` is variadic, and keeping
//! Rust's calls to fixed-arity functions lets the host tests replace each of them with a plain
//! `extern "C"` fake (`crate::fake`), since stable Rust cannot define a variadic function.

use core::ffi::{c_char, CStr};

extern "C" {
    /// `char *kern_getenv(const char *name);` from `<sys/systm.h>`: a copy of the value, to be
    /// released with `freeenv`, or NULL when unset.
    fn kern_getenv(name: *const c_char) -> *mut c_char;
    /// `void freeenv(char *env);` from `<sys/systm.h>`.
    fn freeenv(env: *mut c_char);
    /// Defined by xen.ko's C shim (`freebsd-build/include/xenrs_kpi.h`): `printf("%s", message)`.
    fn xenrs_printf_str(message: *const c_char);
}

/// Runs `with` on the value of kernel environment variable `name`; `None` when it is unset.
pub(crate) fn getenv<R>(name: &CStr, with: impl FnOnce(&[u8]) -> R) -> Option<R> {
    // SAFETY: `name` is NUL-terminated and outlives the call; kern_getenv only reads it.
    let value = unsafe { kern_getenv(name.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: a non-NULL result of kern_getenv is a NUL-terminated copy that we own and that
    // stays valid until the freeenv below; `bytes` does not outlive this function.
    let bytes = unsafe { CStr::from_ptr(value) }.to_bytes();
    let result = with(bytes);
    // SAFETY: `value` came from kern_getenv, is released exactly once, and `bytes` (which
    // borrowed it) is no longer used.
    unsafe { freeenv(value) };
    Some(result)
}

/// Prints `message` on the console and into the kernel message buffer (dmesg).
pub(crate) fn print(message: &CStr) {
    // SAFETY: `message` is NUL-terminated and outlives the call; the callee only reads it and
    // prints it through "%s", so a `%` in the text is not interpreted.
    unsafe { xenrs_printf_str(message.as_ptr()) }
}
