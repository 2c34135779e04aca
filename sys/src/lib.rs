//! Xen's public interface for x86, in both the x86_64 and the x86_32 layout.
//!
//! # Modules
//!
//! * [`x86_64`], [`x86_32`]: bindgen's translation of Xen's public headers (hypercall numbers,
//!   `shared_info`, `vcpu_info`, `start_info`, HVM params and ops, PVH `hvm_start_info`,
//!   memory, event channels (2-level and FIFO), grant tables v1/v2, sched, vcpu, version,
//!   xenstore wire format, ring types, blkif, netif, console, xenbus), one module per width.
//!   Names are the C names (`blkif_request`, `XENMEM_add_to_physmap`, ...).
//! * [`native`]: whichever of the two matches the compile target (`target_arch`).
//! * [`consts`]: typed, hand-written views of the generated constants (enums with
//!   `TryFrom<u32>`, `bitflags` for flag sets), defined *from* the generated values so they
//!   cannot drift from the headers.
//! * [`ptr`]: the fixed-width guest pointer types.
//! * [`pod`]: `xen_shmem::Pod` for the protocol structs (blkif, netif, console, xenstore,
//!   grant entries, FIFO control block, `vcpu_info`/`shared_info`, PVH start info), each
//!   proven free of implicit padding at compile time, and the sizes the protocols rely on.
//!
//! ```
//! use core::mem::size_of;
//! use xen_sys::consts::{BlkifOp, GntMapFlags, XsType};
//! use xen_sys::{x86_32, x86_64};
//!
//! // Both layouts, whatever the compile target.
//! assert_eq!(size_of::<x86_64::blkif_request>(), 112);
//! assert_eq!(size_of::<x86_32::blkif_request>(), 108);
//! // Typed constants, checked against the peer's raw values.
//! assert_eq!(BlkifOp::try_from(x86_64::BLKIF_OP_WRITE as u8), Ok(BlkifOp::Write));
//! assert!(BlkifOp::try_from(4u8).is_err()); // BLKIF_OP_RESERVED_1
//! assert_eq!(u32::from(XsType::Read), x86_64::XS_READ);
//! let flags = GntMapFlags::HOST_MAP | GntMapFlags::READONLY;
//! assert_eq!(flags.bits(), x86_64::GNTMAP_host_map | x86_64::GNTMAP_readonly);
//! // Guest pointers have the width's size.
//! assert_eq!(size_of::<x86_32::GuestPtr<u8>>(), 4);
//! assert_eq!(size_of::<x86_64::GuestPtr<u8>>(), 8);
//! ```
//!
//! # Why both widths are generated on every host
//!
//! A 64-bit backend serves 32-bit frontends: the blkif and netif rings are laid out by the
//! *frontend's* ABI (a `blkif_request` is 112 bytes from an x86_64 guest and 108 from an
//! i386 one; `blkif_response` 16 vs 12). Likewise a build host is usually x86_64 while a
//! kernel module may be i386. So the build script runs bindgen twice, with clang targets
//! `x86_64-unknown-linux-gnu` and `i686-unknown-linux-gnu`, and both modules exist whatever
//! the compile target is. The layout of each module is that width's C layout *on every
//! compile target*:
//!
//! * **Pointers**: a Rust raw pointer has the compile target's size. Every pointer field in
//!   the generated code is therefore a [`ptr::Ptr64`] (in `x86_64`) or [`ptr::Ptr32`] (in
//!   `x86_32`), a `#[repr(transparent)]` handle that is `*mut T` when the width matches the
//!   target and a `u64`/`u32` address otherwise. Each module names it `GuestPtr<T>`.
//! * **`long`**: each module has its own `ctypes` (`c_long` is 64-bit in `x86_64`, 32-bit in
//!   `x86_32`), so `xen_ulong_t`, `xen_pfn_t`, ... have the width's size.
//! * **Alignment of 64-bit integers**: i386 aligns `uint64_t` to 4 inside structs. The
//!   x86_32 structs that would be over-aligned on a 64-bit target get `#[repr(C, packed(4))]`
//!   (packing to the struct's own C alignment reproduces the i386 rule); the x86_64 structs
//!   that would be under-aligned on i686 get `#[repr(C, align(8))]`, their gaps being explicit
//!   `__bindgen_padding_N` fields. Taking a reference to a `u64` field of a packed x86_32
//!   struct is refused by the compiler on 64-bit targets: copy the field instead.
//!
//! bindgen's own layout assertions (size, alignment and offset of every field, computed by
//! clang for the width) are compiled into both modules, so any host on which the crate
//! builds has been checked.
//!
//! # Why the layout tests use gcc
//!
//! The assertions above compare Rust against *clang's* view of the headers, through bindgen.
//! The tests in `tests/layout.rs` compare against an independent compiler: the build script
//! emits a C program printing `sizeof`, `_Alignof`, `offsetof` and member sizes of every
//! struct, union and field (nested anonymous members included), and the tests build it with
//! `gcc -m64` and `gcc -m32` — the compiler FreeBSD's and Xen's own C code is built with —
//! and compare each line with the same values computed by rustc.
//!
//! # Pointing at other headers
//!
//! The headers come from `$XEN_INCLUDE_DIR/xen/` (default `/usr/include`, then
//! `/usr/local/include`; on FreeBSD hosts the other way round). Debian/Ubuntu:
//! `apt-get install libxen-dev`; FreeBSD: the xen-tools/xen-kernel packages. The build fails
//! with that hint if they are missing. `hvm/start_info.h`, absent from libxen-dev, is our
//! own `include/xen/hvm/start_info.h`, written from the documented PVH ABI; it always takes
//! precedence. The set of headers is `include/xen-sys.h`.
//!
//! `__XEN_INTERFACE_VERSION__` is defined to `__XEN_LATEST_INTERFACE_VERSION__`: without it
//! the headers select an old interface and newer types (grant table v2, ...) vanish.
#![no_std]

pub mod consts;
pub mod freebsd;
pub mod pod;
pub mod ptr;

/// Generates one width's module: its C types, its guest pointer, and the bindings.
macro_rules! width_module {
    (
        $(#[$meta:meta])*
        $name:ident, file = $file:literal, ptr = $ptr:ident,
        long = $long:ty, ulong = $ulong:ty
    ) => {
        $(#[$meta])*
        // The bindings are generated: C names, bindgen's helper code (whose `unsafe` blocks
        // carry no SAFETY comments), unions and structs without Debug, constants that are
        // unused here.
        #[allow(
            non_camel_case_types,
            non_upper_case_globals,
            non_snake_case,
            dead_code,
            missing_debug_implementations,
            clippy::all,
            clippy::pedantic,
            clippy::undocumented_unsafe_blocks,
            clippy::missing_safety_doc,
            clippy::cast_possible_truncation,
            clippy::tests_outside_test_module,
            reason = "bindgen output: C naming and bindgen's helper code"
        )]
        pub mod $name {
            /// The C scalar types of this width (for `ctypes_prefix`).
            pub mod ctypes {
                pub type c_char = i8;
                pub type c_schar = i8;
                pub type c_uchar = u8;
                pub type c_short = i16;
                pub type c_ushort = u16;
                pub type c_int = i32;
                pub type c_uint = u32;
                pub type c_long = $long;
                pub type c_ulong = $ulong;
                pub type c_longlong = i64;
                pub type c_ulonglong = u64;
                pub type c_float = f32;
                pub type c_double = f64;
                pub use core::ffi::c_void;
            }

            /// A pointer of this width (see [`crate::ptr`]).
            pub type GuestPtr<T> = crate::ptr::$ptr<T>;

            include!(concat!(env!("OUT_DIR"), $file));
        }
    };
}

width_module! {
    /// Xen's public interface in the x86_64 layout (LP64).
    x86_64, file = "/x86_64.rs", ptr = Ptr64, long = i64, ulong = u64
}

width_module! {
    /// Xen's public interface in the x86_32 (i386) layout (ILP32, `uint64_t` 4-aligned in
    /// structs).
    x86_32, file = "/x86_32.rs", ptr = Ptr32, long = i32, ulong = u32
}

/// The layout of the compile target.
#[cfg(target_arch = "x86_64")]
pub use crate::x86_64 as native;

/// The layout of the compile target.
#[cfg(target_arch = "x86")]
pub use crate::x86_32 as native;
