//! Errors, typed per layer, with blame.
//!
//! * [`XsError`]: the daemon refused a request (`XS_ERROR` with one of the `xsd_errors`
//!   strings). This is the daemon doing its job, not misbehaving.
//! * [`ProtocolError`]: the *peer* (the daemon, or a client when we are the daemon) sent bytes
//!   that break the protocol. Always the peer's fault.
//! * [`Error`]: what the client API returns; it adds the caller's own mistakes
//!   ([`Error::Invalid`]) and local resource limits ([`Error::Busy`]).

use core::fmt;

use crate::wire::MsgType;
use xen_sys::consts::XsError as SysXsError;

/// An error string from the daemon's `XS_ERROR` reply (`xsd_errors` in `io/xs_wire.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XsError {
    /// `EINVAL`: malformed request (bad path, bad argument).
    Inval,
    /// `EACCES`: the permissions of the node forbid the access.
    Acces,
    /// `EEXIST`: already exists (e.g. a watch with the same path and token).
    Exist,
    /// `EISDIR`.
    IsDir,
    /// `ENOENT`: no such node, watch or transaction.
    NoEnt,
    /// `ENOMEM`.
    NoMem,
    /// `ENOSPC`: a quota was hit.
    NoSpc,
    /// `EIO`.
    Io,
    /// `ENOTEMPTY`.
    NotEmpty,
    /// `ENOSYS`: the daemon does not implement the request type.
    NoSys,
    /// `EROFS`.
    RoFs,
    /// `EBUSY`.
    Busy,
    /// `EAGAIN`: the transaction conflicted with another change; retry it.
    Again,
    /// `EISCONN`: the domain is already introduced.
    IsConn,
    /// `E2BIG`: the reply would not fit in a message.
    TooBig,
    /// `EPERM`: operation not permitted (e.g. an unprivileged domain changing an owner).
    Perm,
    /// A well-formed error string that is not in the table this crate knows. `io/xs_wire.h`
    /// says new errors are appended, so a newer daemon may send one; it is still an error.
    Unknown,
}

impl XsError {
    /// Every known error, in `xsd_errors` order (as `xen_sys::consts::XsError::ALL`).
    pub const ALL: [XsError; 16] = [
        XsError::Inval,
        XsError::Acces,
        XsError::Exist,
        XsError::IsDir,
        XsError::NoEnt,
        XsError::NoMem,
        XsError::NoSpc,
        XsError::Io,
        XsError::NotEmpty,
        XsError::NoSys,
        XsError::RoFs,
        XsError::Busy,
        XsError::Again,
        XsError::IsConn,
        XsError::TooBig,
        XsError::Perm,
    ];

    /// The `xen-sys` entry of the `xsd_errors` table; `None` for [`XsError::Unknown`].
    pub fn to_sys(self) -> Option<SysXsError> {
        Some(match self {
            XsError::Inval => SysXsError::Einval,
            XsError::Acces => SysXsError::Eacces,
            XsError::Exist => SysXsError::Eexist,
            XsError::IsDir => SysXsError::Eisdir,
            XsError::NoEnt => SysXsError::Enoent,
            XsError::NoMem => SysXsError::Enomem,
            XsError::NoSpc => SysXsError::Enospc,
            XsError::Io => SysXsError::Eio,
            XsError::NotEmpty => SysXsError::Enotempty,
            XsError::NoSys => SysXsError::Enosys,
            XsError::RoFs => SysXsError::Erofs,
            XsError::Busy => SysXsError::Ebusy,
            XsError::Again => SysXsError::Eagain,
            XsError::IsConn => SysXsError::Eisconn,
            XsError::TooBig => SysXsError::E2big,
            XsError::Perm => SysXsError::Eperm,
            XsError::Unknown => return None,
        })
    }

    /// The wire string (`"EACCES"`...). [`XsError::Unknown`] has none of its own and is sent as
    /// `"EIO"`, the catch-all the C daemon uses.
    pub fn as_str(self) -> &'static str {
        self.to_sys().map_or("EIO", SysXsError::name)
    }

    /// Parses a wire error string (without its NUL); `None` for a string outside the table.
    pub fn from_wire(s: &[u8]) -> Option<XsError> {
        if s.last() == Some(&0) {
            return None;
        }
        SysXsError::from_name(s).map(XsError::from)
    }

    /// The FreeBSD errno value (`sys/sys/errno.h`), for the kernel glue and `/dev/xen/xenstore`.
    pub fn freebsd_errno(self) -> i32 {
        self.to_sys().map_or(5, SysXsError::freebsd_errno) // Unknown: EIO
    }
}

impl From<SysXsError> for XsError {
    fn from(e: SysXsError) -> XsError {
        match e {
            SysXsError::Einval => XsError::Inval,
            SysXsError::Eacces => XsError::Acces,
            SysXsError::Eexist => XsError::Exist,
            SysXsError::Eisdir => XsError::IsDir,
            SysXsError::Enoent => XsError::NoEnt,
            SysXsError::Enomem => XsError::NoMem,
            SysXsError::Enospc => XsError::NoSpc,
            SysXsError::Eio => XsError::Io,
            SysXsError::Enotempty => XsError::NotEmpty,
            SysXsError::Enosys => XsError::NoSys,
            SysXsError::Erofs => XsError::RoFs,
            SysXsError::Ebusy => XsError::Busy,
            SysXsError::Eagain => XsError::Again,
            SysXsError::Eisconn => XsError::IsConn,
            SysXsError::E2big => XsError::TooBig,
            SysXsError::Eperm => XsError::Perm,
        }
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XsError::Unknown => f.write_str("unknown xenstore error"),
            e => f.write_str(e.as_str()),
        }
    }
}

/// The peer broke the protocol. Carries only small `Copy` data so it can be stored and
/// counted without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// Header `type` outside `enum xsd_sockmsg_type`.
    UnknownType(u32),
    /// Header `len` above `XENSTORE_PAYLOAD_MAX`.
    PayloadTooLong(u32),
    /// A reply whose `req_id` matches no request we have outstanding (or a second reply to
    /// one). We can no longer pair replies with requests, so the connection is poisoned.
    UnknownReqId(u32),
    /// A reply of the wrong type for its request (and not `XS_ERROR`).
    UnexpectedType {
        /// What the request was.
        expected: MsgType,
        /// What came back.
        got: MsgType,
    },
    /// A message type that is not valid in this direction (a request type sent by the daemon,
    /// or a reply-only type sent by a client).
    WrongDirection(MsgType),
    /// A string field without its terminating NUL.
    MissingNul,
    /// Bytes after the last field.
    TrailingData,
    /// A field that should be empty-free is empty.
    EmptyField,
    /// A path that breaks the xenstore path rules (characters, length, `//`, trailing `/`).
    BadPath,
    /// A directory entry that is not a valid node name.
    BadName,
    /// A string that is not valid UTF-8, or contains a byte the field does not allow.
    BadString,
    /// A permission string other than `[nrwb]<domid>`.
    BadPerm,
    /// A permission list with no entries (the first entry is the owner; it is mandatory).
    EmptyPerms,
    /// A decimal number that does not parse, overflows, or is out of range (e.g. a zero
    /// transaction id).
    BadNumber,
    /// An acknowledgement other than `"OK"`.
    BadAck,
    /// A boolean other than `"T"` / `"F"`.
    BadBool,
    /// A watch event whose path is outside the watched path.
    EventOutsideWatch,
    /// The reply does not fit the operation (e.g. a payload where none is allowed).
    BadReply,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnknownType(t) => write!(f, "unknown message type {t}"),
            ProtocolError::PayloadTooLong(l) => write!(f, "payload length {l} above 4096"),
            ProtocolError::UnknownReqId(r) => write!(f, "reply to unknown request id {r}"),
            ProtocolError::UnexpectedType { expected, got } => {
                write!(f, "reply of type {got:?} to a {expected:?} request")
            }
            ProtocolError::WrongDirection(t) => write!(f, "message type {t:?} in wrong direction"),
            ProtocolError::MissingNul => f.write_str("field not NUL-terminated"),
            ProtocolError::TrailingData => f.write_str("trailing bytes after last field"),
            ProtocolError::EmptyField => f.write_str("empty field"),
            ProtocolError::BadPath => f.write_str("invalid path"),
            ProtocolError::BadName => f.write_str("invalid node name"),
            ProtocolError::BadString => f.write_str("invalid string"),
            ProtocolError::BadPerm => f.write_str("invalid permission"),
            ProtocolError::EmptyPerms => f.write_str("empty permission list"),
            ProtocolError::BadNumber => f.write_str("invalid number"),
            ProtocolError::BadAck => f.write_str("acknowledgement is not OK"),
            ProtocolError::BadBool => f.write_str("boolean is not T or F"),
            ProtocolError::EventOutsideWatch => f.write_str("watch event outside watched path"),
            ProtocolError::BadReply => f.write_str("reply does not fit the request"),
        }
    }
}

/// Why an argument from *our* caller was refused before anything was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidArg {
    /// The path breaks the xenstore path rules or length limits.
    Path,
    /// A watch token that is empty or contains NUL.
    Token,
    /// The encoded message would exceed `XENSTORE_PAYLOAD_MAX`.
    TooLong,
    /// An empty permission list.
    Perms,
    /// The watch or transaction handle is not (or no longer) known.
    Handle,
    /// A xenbus state change the state machine does not allow.
    Transition,
}

/// Everything the client API can fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The daemon refused the request.
    Xs(XsError),
    /// The daemon's reply to this request broke the protocol (the connection may carry on).
    Protocol(ProtocolError),
    /// The connection was poisoned by this earlier protocol violation: no further requests.
    Broken(ProtocolError),
    /// The caller passed an argument we refuse to send.
    Invalid(InvalidArg),
    /// Too many requests in flight, or too many watches: a local cap, retry later.
    Busy,
    /// The transport reported it cannot make progress (closed, timed out, idle peer).
    Transport(TransportError),
    /// A node's value is not the text the caller asked for (not UTF-8, not a number...).
    BadValue,
}

/// Failures the byte transport reports to the blocking layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// The connection is gone (ring torn down, daemon dead).
    Closed,
    /// The wait exceeded the platform's time limit.
    TimedOut,
    /// Nothing can make progress: nothing to read and the peer has nothing pending. The
    /// simulator reports this instead of hanging.
    Idle,
    /// The transport saw the peer violate the ring protocol (e.g. an index overflow).
    Fault,
}

impl From<XsError> for Error {
    fn from(e: XsError) -> Self {
        Error::Xs(e)
    }
}

impl From<TransportError> for Error {
    fn from(e: TransportError) -> Self {
        Error::Transport(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Xs(e) => write!(f, "xenstore: {e}"),
            Error::Protocol(e) => write!(f, "xenstore protocol violation: {e}"),
            Error::Broken(e) => write!(f, "xenstore connection broken by: {e}"),
            Error::Invalid(a) => write!(f, "invalid argument: {a:?}"),
            Error::Busy => f.write_str("too many outstanding xenstore requests or watches"),
            Error::Transport(t) => write!(f, "xenstore transport: {t:?}"),
            Error::BadValue => f.write_str("node value has the wrong form"),
        }
    }
}

impl Error {
    /// The FreeBSD errno the kernel glue returns for this error.
    pub fn freebsd_errno(self) -> i32 {
        match self {
            Error::Xs(e) => e.freebsd_errno(),
            Error::Protocol(_) | Error::Broken(_) | Error::Transport(_) => 5, // EIO
            Error::Invalid(_) | Error::BadValue => 22,                        // EINVAL
            Error::Busy => 35,                                                // EAGAIN
        }
    }
}
