//! The FreeBSD kernel programming interface (KPI) as the Rust modules use it.
//!
//! This is one of the three places the project allows `unsafe` (with the hypercall layer and
//! the peer-memory accessors): every call into the kernel goes through here, each with a
//! `// SAFETY:` argument. It is deliberately thin; protocol logic lives in the `no_std` cores.
//!
//! - [`module`]: the safe [`module::KernelModule`] trait and the `extern "C"` trampolines the
//!   modules' C shims call on `MOD_LOAD`/`MOD_QUIESCE`/`MOD_UNLOAD`
//!   ([`kernel_module!`]); errno ([`errno::Errno`]) only at that boundary.
//! - [`tunable`]: loader tunables, parsed strictly, with a logged reason for a bad value.
//! - [`print`]: `kprintln!` to the console and dmesg.
//! - [`alloc`]: `malloc(9)` as the global allocator on the kernel targets.
//! - [`sync`]: [`sync::SxLock`], a value behind an `sx(9)` lock, and [`sync::Mutex`], one
//!   behind an `MTX_DEF` mutex (the driver modules' device lock and short queues).
//! - [`taskqueue`]: [`taskqueue::TaskQueue`], a device's own taskqueue thread and its task.
//! - [`device`]: the driver modules' per-device softc (device lock, queue of work that may not
//!   sleep, event flag, taskqueue, sysctl tree) over a driver's [`device::DeviceGlue`].
//! - `fake` (feature `fake-kpi`): `#[no_mangle] extern "C"` fakes of every kernel function
//!   this crate calls, for host tests of the glue.
//!
//! On the kernel targets (`target_os = "none"`, see `freebsd-build/targets/`) this crate
//! provides the `#[panic_handler]`: a Rust panic in a module becomes a FreeBSD `panic(9)` with
//! the Rust message, because unwinding does not exist in the kernel and silently continuing
//! after a broken invariant is worse than a crash dump. Protocol cores never panic on peer
//! input (they move the device to an error state), so this is reached only on our own bugs.
#![no_std]
#[cfg(test)]
extern crate std;

extern crate alloc as alloc_crate;

pub mod alloc;
pub mod device;
pub mod errno;
#[cfg(any(test, feature = "fake-kpi"))]
pub mod fake;
pub mod module;
pub mod print;
pub mod sync;
mod sys;
pub mod taskqueue;
pub mod tunable;

pub use errno::Errno;

#[cfg(target_os = "none")]
mod panic_handler {
    use core::fmt::Write;

    use crate::print::LineBuf;

    extern "C" {
        /// `void panic(const char *fmt, ...) __dead2;` from `<sys/systm.h>`.
        fn panic(fmt: *const core::ffi::c_char, ...) -> !;
    }

    #[panic_handler]
    fn on_panic(info: &core::panic::PanicInfo<'_>) -> ! {
        let mut message = LineBuf::new();
        // "file:line: message" on one line (PanicInfo's own Display spreads it over two).
        // Formatting into LineBuf cannot fail; truncation is fine.
        if let Some(location) = info.location() {
            let _ = write!(message, "{}:{}: ", location.file(), location.line());
        }
        let _ = write!(message, "{}", info.message());
        // SAFETY: both pointers are NUL-terminated C strings that live until `panic` (which
        // never returns) is done with them, and "%s" consumes exactly the one vararg given.
        unsafe { panic(c"rust: %s".as_ptr(), message.as_c_str().as_ptr()) }
    }
}
