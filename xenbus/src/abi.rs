//! Numeric facts of the xenstore and xenbus ABI (`io/xs_wire.h`, `io/xenbus.h`).
//!
//! Sizes, taken from `xen-sys` (bindgen over the C headers) so they
//! cannot drift. Message types are `xen_sys::consts::XsType` (re-exported as
//! [`crate::wire::MsgType`]) and the `xsd_errors` table is `xen_sys::consts::XsError`
//! (wrapped by [`crate::XsError`]); xenbus states are `xen_sys::consts::XenbusState` (wrapped
//! by [`crate::XenbusState`]).

use xen_sys::native as x;

// CAST (all `as usize` below): u32 -> usize is lossless on every target Xen supports.

/// `XENSTORE_PAYLOAD_MAX`: the largest payload either side may send ("Violating this is very
/// bad", `io/xs_wire.h`).
pub const PAYLOAD_MAX: usize = x::XENSTORE_PAYLOAD_MAX as usize;
/// `XENSTORE_ABS_PATH_MAX`: the longest absolute path the daemon accepts.
pub const ABS_PATH_MAX: usize = x::XENSTORE_ABS_PATH_MAX as usize;
/// `XENSTORE_REL_PATH_MAX`: the longest relative path the daemon accepts.
pub const REL_PATH_MAX: usize = x::XENSTORE_REL_PATH_MAX as usize;
/// `XENSTORE_RING_SIZE`: bytes in each half (`req`, `rsp`) of the interface page.
pub const RING_SIZE: usize = x::XENSTORE_RING_SIZE as usize;
/// Size of `struct xsd_sockmsg`, the header in front of every message.
pub const HEADER_SIZE: usize = core::mem::size_of::<x::xsd_sockmsg>();

const _: () = assert!(HEADER_SIZE == 16);
