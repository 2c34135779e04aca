//! Xenstore wire protocol (io/xs_wire.h) and xenbus states (io/xenbus.h).

use super::xen_enum;
use crate::consts::XenErrno;

xen_enum! {
    /// `XS_*`: `xsd_sockmsg.type`. (`XS_DEBUG` is an alias of `XS_CONTROL`; `XS_TYPE_COUNT`
    /// and `XS_INVALID` are not message types.)
    pub enum XsType: u32 {
        Control = XS_CONTROL,
        Directory = XS_DIRECTORY,
        Read = XS_READ,
        GetPerms = XS_GET_PERMS,
        Watch = XS_WATCH,
        Unwatch = XS_UNWATCH,
        TransactionStart = XS_TRANSACTION_START,
        TransactionEnd = XS_TRANSACTION_END,
        Introduce = XS_INTRODUCE,
        Release = XS_RELEASE,
        GetDomainPath = XS_GET_DOMAIN_PATH,
        Write = XS_WRITE,
        Mkdir = XS_MKDIR,
        Rm = XS_RM,
        SetPerms = XS_SET_PERMS,
        WatchEvent = XS_WATCH_EVENT,
        Error = XS_ERROR,
        IsDomainIntroduced = XS_IS_DOMAIN_INTRODUCED,
        Resume = XS_RESUME,
        SetTarget = XS_SET_TARGET,
        ResetWatches = XS_RESET_WATCHES,
        DirectoryPart = XS_DIRECTORY_PART,
    }
}

/// `XS_INVALID`: a type value guaranteed never to be assigned.
pub const XS_INVALID: u32 = crate::x86_64::XS_INVALID;

xen_enum! {
    /// The errors a xenstore server reports: an `XS_ERROR` reply carries the errno *name*
    /// (`"EINVAL\0"`), the xsd_errors table of xs_wire.h. The discriminant is Xen's errno
    /// number ([`XenErrno`]); [`XsError::freebsd_errno`] gives FreeBSD's. `ALL` is in the
    /// table's order.
    pub enum XsError: u32 {
        Einval = XEN_EINVAL,
        Eacces = XEN_EACCES,
        Eexist = XEN_EEXIST,
        Eisdir = XEN_EISDIR,
        Enoent = XEN_ENOENT,
        Enomem = XEN_ENOMEM,
        Enospc = XEN_ENOSPC,
        Eio = XEN_EIO,
        Enotempty = XEN_ENOTEMPTY,
        Enosys = XEN_ENOSYS,
        Erofs = XEN_EROFS,
        Ebusy = XEN_EBUSY,
        Eagain = XEN_EAGAIN,
        Eisconn = XEN_EISCONN,
        E2big = XEN_E2BIG,
        Eperm = XEN_EPERM,
    }
}

impl XsError {
    /// The name sent on the wire, without the terminating NUL (`"EINVAL"`).
    #[must_use]
    pub fn name(self) -> &'static str {
        let c = self.c_name();
        c.strip_prefix("XEN_").unwrap_or(c)
    }

    /// Parses the payload of an `XS_ERROR` reply (`"EINVAL"`, with or without a trailing
    /// NUL). `None` for a name not in the table; callers conventionally treat that as
    /// `EINVAL`.
    #[must_use]
    pub fn from_name(payload: &[u8]) -> Option<Self> {
        let name = payload.strip_suffix(b"\0").unwrap_or(payload);
        Self::ALL
            .iter()
            .copied()
            .find(|e| e.name().as_bytes() == name)
    }

    /// Xen's errno number.
    #[must_use]
    pub fn xen_errno(self) -> XenErrno {
        match XenErrno::from_value(self.value()) {
            Some(e) => e,
            // Every discriminant is an XEN_E* constant (checked by a test).
            None => XenErrno::Einval,
        }
    }

    /// FreeBSD's number for this errno (sys/sys/errno.h), which a FreeBSD kernel returns
    /// to its callers. Not from Xen's headers: FreeBSD's values differ from Xen's (Linux's)
    /// for `EAGAIN`, `ENOTEMPTY`, `ENOSYS` and `EISCONN`.
    #[must_use]
    pub const fn freebsd_errno(self) -> i32 {
        match self {
            Self::Eperm => 1,
            Self::Enoent => 2,
            Self::Eio => 5,
            Self::E2big => 7,
            Self::Enomem => 12,
            Self::Eacces => 13,
            Self::Ebusy => 16,
            Self::Eexist => 17,
            Self::Eisdir => 21,
            Self::Einval => 22,
            Self::Enospc => 28,
            Self::Erofs => 30,
            Self::Eagain => 35,
            Self::Eisconn => 56,
            Self::Enotempty => 66,
            Self::Enosys => 78,
        }
    }
}

xen_enum! {
    /// `XenbusState*`: the `state` node of a xenbus device (io/xenbus.h), written as a
    /// decimal string.
    pub enum XenbusState: u32 {
        Unknown = XenbusStateUnknown,
        Initialising = XenbusStateInitialising,
        InitWait = XenbusStateInitWait,
        Initialised = XenbusStateInitialised,
        Connected = XenbusStateConnected,
        Closing = XenbusStateClosing,
        Closed = XenbusStateClosed,
        Reconfiguring = XenbusStateReconfiguring,
        Reconfigured = XenbusStateReconfigured,
    }
}

/// `XENSTORE_RING_SIZE`: bytes of each of the `req`/`rsp` rings of the xenstore page.
pub const XENSTORE_RING_SIZE: usize = super::to_usize(crate::x86_64::XENSTORE_RING_SIZE);
/// `XENSTORE_PAYLOAD_MAX`: largest payload of one message (`xsd_sockmsg.len`).
pub const XENSTORE_PAYLOAD_MAX: usize = super::to_usize(crate::x86_64::XENSTORE_PAYLOAD_MAX);
/// `XENSTORE_ABS_PATH_MAX`: longest absolute path.
pub const XENSTORE_ABS_PATH_MAX: usize = super::to_usize(crate::x86_64::XENSTORE_ABS_PATH_MAX);
/// `XENSTORE_REL_PATH_MAX`: longest relative path.
pub const XENSTORE_REL_PATH_MAX: usize = super::to_usize(crate::x86_64::XENSTORE_REL_PATH_MAX);
/// `XS_WATCH_PATH`: index of the path in an `XS_WATCH_EVENT` payload.
pub const XS_WATCH_PATH: usize = super::to_usize(crate::x86_64::XS_WATCH_PATH);
/// `XS_WATCH_TOKEN`: index of the token in an `XS_WATCH_EVENT` payload.
pub const XS_WATCH_TOKEN: usize = super::to_usize(crate::x86_64::XS_WATCH_TOKEN);
/// `XENSTORE_SERVER_FEATURE_RECONNECTION`: `server_features` bit.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 =
    crate::x86_64::XENSTORE_SERVER_FEATURE_RECONNECTION;
/// `XENSTORE_SERVER_FEATURE_ERROR`: `server_features` bit.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = crate::x86_64::XENSTORE_SERVER_FEATURE_ERROR;
/// `XENSTORE_CONNECTED`: `connection` value in the steady state.
pub const XENSTORE_CONNECTED: u32 = crate::x86_64::XENSTORE_CONNECTED;
/// `XENSTORE_RECONNECT`: `connection` value while a reconnection is in progress.
pub const XENSTORE_RECONNECT: u32 = crate::x86_64::XENSTORE_RECONNECT;

// The ring arrays of the interface page have the advertised size, in both layouts.
const _: () = {
    assert!(
        super::array_len(|i: &crate::x86_64::xenstore_domain_interface| &i.req)
            == XENSTORE_RING_SIZE
    );
    assert!(
        super::array_len(|i: &crate::x86_64::xenstore_domain_interface| &i.rsp)
            == XENSTORE_RING_SIZE
    );
    assert!(
        super::array_len(|i: &crate::x86_32::xenstore_domain_interface| &i.req)
            == XENSTORE_RING_SIZE
    );
    assert!(
        super::array_len(|i: &crate::x86_32::xenstore_domain_interface| &i.rsp)
            == XENSTORE_RING_SIZE
    );
    assert!(XENSTORE_RING_SIZE.is_power_of_two());
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_types() {
        assert_eq!(XsType::Read.value(), 2);
        assert_eq!(XsType::try_from(15), Ok(XsType::WatchEvent));
        assert_eq!(XsType::try_from(21), Ok(XsType::ResetWatches));
        assert!(XsType::try_from(20).is_err(), "XS_RESTRICT was removed");
        assert!(XsType::try_from(XS_INVALID).is_err());
        assert_eq!(XsType::ALL.len(), 22);
    }

    #[test]
    fn error_table() {
        assert_eq!(XsError::ALL.len(), 16);
        assert_eq!(XsError::ALL[0], XsError::Einval, "table order of xs_wire.h");
        assert_eq!(XsError::Einval.name(), "EINVAL");
        assert_eq!(XsError::E2big.name(), "E2BIG");
        assert_eq!(XsError::from_name(b"ENOENT\0"), Some(XsError::Enoent));
        assert_eq!(XsError::from_name(b"EAGAIN"), Some(XsError::Eagain));
        assert_eq!(XsError::from_name(b"EWHATEVER\0"), None);
        assert_eq!(XsError::from_name(b""), None);
        for &e in XsError::ALL {
            assert_eq!(XsError::from_name(e.name().as_bytes()), Some(e));
            assert_eq!(e.xen_errno().value(), e.value());
            assert!(e.freebsd_errno() > 0);
        }
        assert_eq!(XsError::Eagain.xen_errno(), XenErrno::Eagain);
        assert_eq!(
            (XsError::Eagain.value(), XsError::Eagain.freebsd_errno()),
            (11, 35)
        );
        assert_eq!(XsError::try_from(38), Ok(XsError::Enosys));
    }

    #[test]
    fn xenbus_states() {
        assert_eq!(XenbusState::Connected.value(), 4);
        assert_eq!(XenbusState::try_from(6), Ok(XenbusState::Closed));
        assert!(XenbusState::try_from(9).is_err());
        assert_eq!(XenbusState::ALL.len(), 9);
    }

    #[test]
    fn sizes() {
        assert_eq!(XENSTORE_RING_SIZE, 1024);
        assert_eq!(XENSTORE_PAYLOAD_MAX, 4096);
        assert_eq!((XS_WATCH_PATH, XS_WATCH_TOKEN), (0, 1));
    }
}
