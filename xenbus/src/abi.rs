//! Numeric facts of the xenstore and xenbus ABI (`io/xs_wire.h`, `io/xenbus.h`).
//!
//! Every number this crate puts on the wire comes from here. The numeric values come from
//! `xen-sys` (bindgen over the C headers), so they cannot drift. The `xsd_errors` table is a
//! C `static` array that bindgen does not translate, so its strings are listed here, in
//! header order, and checked by test against the header text.

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

/// `enum xsd_sockmsg_type` values.
pub mod msg {
    use super::x;

    pub const CONTROL: u32 = x::XS_CONTROL;
    pub const DIRECTORY: u32 = x::XS_DIRECTORY;
    pub const READ: u32 = x::XS_READ;
    pub const GET_PERMS: u32 = x::XS_GET_PERMS;
    pub const WATCH: u32 = x::XS_WATCH;
    pub const UNWATCH: u32 = x::XS_UNWATCH;
    pub const TRANSACTION_START: u32 = x::XS_TRANSACTION_START;
    pub const TRANSACTION_END: u32 = x::XS_TRANSACTION_END;
    pub const INTRODUCE: u32 = x::XS_INTRODUCE;
    pub const RELEASE: u32 = x::XS_RELEASE;
    pub const GET_DOMAIN_PATH: u32 = x::XS_GET_DOMAIN_PATH;
    pub const WRITE: u32 = x::XS_WRITE;
    pub const MKDIR: u32 = x::XS_MKDIR;
    pub const RM: u32 = x::XS_RM;
    pub const SET_PERMS: u32 = x::XS_SET_PERMS;
    pub const WATCH_EVENT: u32 = x::XS_WATCH_EVENT;
    pub const ERROR: u32 = x::XS_ERROR;
    pub const IS_DOMAIN_INTRODUCED: u32 = x::XS_IS_DOMAIN_INTRODUCED;
    pub const RESUME: u32 = x::XS_RESUME;
    pub const SET_TARGET: u32 = x::XS_SET_TARGET;
    pub const RESET_WATCHES: u32 = x::XS_RESET_WATCHES;
    pub const DIRECTORY_PART: u32 = x::XS_DIRECTORY_PART;
    /// `XS_TYPE_COUNT`: one past the last valid type.
    pub const TYPE_COUNT: u32 = x::XS_TYPE_COUNT;
}

/// `enum xenbus_state` values (`io/xenbus.h`).
pub mod state {
    use super::x;

    pub const UNKNOWN: u32 = x::XenbusStateUnknown;
    pub const INITIALISING: u32 = x::XenbusStateInitialising;
    pub const INIT_WAIT: u32 = x::XenbusStateInitWait;
    pub const INITIALISED: u32 = x::XenbusStateInitialised;
    pub const CONNECTED: u32 = x::XenbusStateConnected;
    pub const CLOSING: u32 = x::XenbusStateClosing;
    pub const CLOSED: u32 = x::XenbusStateClosed;
    pub const RECONFIGURING: u32 = x::XenbusStateReconfiguring;
    pub const RECONFIGURED: u32 = x::XenbusStateReconfigured;
}

/// The `xsd_errors` table of `io/xs_wire.h`, in header order: the error strings the daemon
/// sends in `XS_ERROR` replies. ("New errors should be added at the end of the array.")
pub const XSD_ERROR_STRINGS: [&str; 16] = [
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
    "EPERM",
];
