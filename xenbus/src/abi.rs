//! Numeric facts of the xenstore and xenbus ABI (`io/xs_wire.h`, `io/xenbus.h`).
//!
//! Every number this crate puts on the wire comes from here, so there is one place to check
//! against the C headers.

/// `XENSTORE_PAYLOAD_MAX`: the largest payload either side may send ("Violating this is very
/// bad", `io/xs_wire.h`).
pub const PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`: the longest absolute path the daemon accepts.
pub const ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`: the longest relative path the daemon accepts.
pub const REL_PATH_MAX: usize = 2048;
/// `XENSTORE_RING_SIZE`: bytes in each half (`req`, `rsp`) of the interface page.
pub const RING_SIZE: usize = 1024;
/// Size of `struct xsd_sockmsg`, the header in front of every message.
pub const HEADER_SIZE: usize = 16;

/// `enum xsd_sockmsg_type` values.
pub mod msg {
    pub const CONTROL: u32 = 0;
    pub const DIRECTORY: u32 = 1;
    pub const READ: u32 = 2;
    pub const GET_PERMS: u32 = 3;
    pub const WATCH: u32 = 4;
    pub const UNWATCH: u32 = 5;
    pub const TRANSACTION_START: u32 = 6;
    pub const TRANSACTION_END: u32 = 7;
    pub const INTRODUCE: u32 = 8;
    pub const RELEASE: u32 = 9;
    pub const GET_DOMAIN_PATH: u32 = 10;
    pub const WRITE: u32 = 11;
    pub const MKDIR: u32 = 12;
    pub const RM: u32 = 13;
    pub const SET_PERMS: u32 = 14;
    pub const WATCH_EVENT: u32 = 15;
    pub const ERROR: u32 = 16;
    pub const IS_DOMAIN_INTRODUCED: u32 = 17;
    pub const RESUME: u32 = 18;
    pub const SET_TARGET: u32 = 19;
    pub const RESET_WATCHES: u32 = 21;
    pub const DIRECTORY_PART: u32 = 22;
    /// `XS_TYPE_COUNT`: one past the last valid type.
    pub const TYPE_COUNT: u32 = 23;
}

/// `enum xenbus_state` values (`io/xenbus.h`).
pub mod state {
    pub const UNKNOWN: u32 = 0;
    pub const INITIALISING: u32 = 1;
    pub const INIT_WAIT: u32 = 2;
    pub const INITIALISED: u32 = 3;
    pub const CONNECTED: u32 = 4;
    pub const CLOSING: u32 = 5;
    pub const CLOSED: u32 = 6;
    pub const RECONFIGURING: u32 = 7;
    pub const RECONFIGURED: u32 = 8;
}

/// The `xsd_errors` table of `io/xs_wire.h`, in header order: the error strings the daemon
/// sends in `XS_ERROR` replies.
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
