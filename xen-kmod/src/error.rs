//! Errors returned by the hypervisor.
//!
//! Every hypercall returns a signed long: a non-negative result, or `-errno` where the errno
//! numbers are those of Xen's public `xen/errno.h`. Xen fixed that numbering to Linux's, which is
//! *not* FreeBSD's (FreeBSD's `EAGAIN` is 35, Xen's is 11), so a Xen error must never be handed
//! to FreeBSD code as a FreeBSD errno without translation. Keeping it a distinct type makes that
//! mistake a compile error; the FreeBSD glue translates at its boundary.

use core::fmt;
use core::num::NonZeroI32;

/// A Xen error: the positive errno number of Xen's `xen/errno.h` (Linux numbering).
///
/// # Invariants
/// The wrapped value is positive.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct XenError(NonZeroI32);

macro_rules! xen_errnos {
    ($($name:ident = $value:literal, $text:literal;)*) => {
        impl XenError {
            $(
                #[doc = $text]
                pub const $name: XenError = XenError(match NonZeroI32::new($value) {
                    Some(v) => v,
                    None => panic!("zero errno"),
                });
            )*

            /// The symbolic name (`"EINVAL"`), if this is one of the numbers Xen defines.
            #[must_use]
            pub const fn name(self) -> Option<&'static str> {
                match self.0.get() {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// A short description, if this is one of the numbers Xen defines.
            #[must_use]
            pub const fn description(self) -> Option<&'static str> {
                match self.0.get() {
                    $($value => Some($text),)*
                    _ => None,
                }
            }

            /// Every error Xen's `errno.h` defines (aliases such as `EWOULDBLOCK` excluded).
            pub const ALL: &'static [XenError] = &[$(XenError::$name),*];
        }
    };
}

// Values from Xen's public `xen/errno.h` (checked against xen-sys in the tests).
xen_errnos! {
    EPERM = 1, "Operation not permitted";
    ENOENT = 2, "No such file or directory";
    ESRCH = 3, "No such process";
    EIO = 5, "I/O error";
    ENXIO = 6, "No such device or address";
    E2BIG = 7, "Arg list too long";
    ENOEXEC = 8, "Exec format error";
    EBADF = 9, "Bad file number";
    ECHILD = 10, "No child processes";
    EAGAIN = 11, "Try again";
    ENOMEM = 12, "Out of memory";
    EACCES = 13, "Permission denied";
    EFAULT = 14, "Bad address";
    EBUSY = 16, "Device or resource busy";
    EEXIST = 17, "File exists";
    EXDEV = 18, "Cross-device link";
    ENODEV = 19, "No such device";
    ENOTDIR = 20, "Not a directory";
    EISDIR = 21, "Is a directory";
    EINVAL = 22, "Invalid argument";
    ENFILE = 23, "File table overflow";
    EMFILE = 24, "Too many open files";
    ENOSPC = 28, "No space left on device";
    EROFS = 30, "Read-only file system";
    EMLINK = 31, "Too many links";
    EDOM = 33, "Math argument out of domain of func";
    ERANGE = 34, "Math result not representable";
    EDEADLK = 35, "Resource deadlock would occur";
    ENAMETOOLONG = 36, "File name too long";
    ENOLCK = 37, "No record locks available";
    ENOSYS = 38, "Function not implemented";
    ENOTEMPTY = 39, "Directory not empty";
    ENODATA = 61, "No data available";
    ETIME = 62, "Timer expired";
    EBADMSG = 74, "Not a data message";
    EOVERFLOW = 75, "Value too large for defined data type";
    EILSEQ = 84, "Illegal byte sequence";
    ENOTSOCK = 88, "Socket operation on non-socket";
    EMSGSIZE = 90, "Message too large";
    EOPNOTSUPP = 95, "Operation not supported on transport endpoint";
    EADDRINUSE = 98, "Address already in use";
    EADDRNOTAVAIL = 99, "Cannot assign requested address";
    ENOBUFS = 105, "No buffer space available";
    EISCONN = 106, "Transport endpoint is already connected";
    ENOTCONN = 107, "Transport endpoint is not connected";
    ETIMEDOUT = 110, "Connection timed out";
    ECONNREFUSED = 111, "Connection refused";
}

impl XenError {
    /// `EWOULDBLOCK` is `EAGAIN` in Xen's numbering.
    pub const EWOULDBLOCK: XenError = XenError::EAGAIN;

    /// The error for a positive errno number; `None` for zero or a negative number.
    #[must_use]
    pub const fn from_errno(errno: i32) -> Option<XenError> {
        if errno <= 0 {
            return None;
        }
        match NonZeroI32::new(errno) {
            // INVARIANT: checked positive above.
            Some(v) => Some(XenError(v)),
            None => None,
        }
    }

    /// Decodes a raw hypercall return value: non-negative is success (the value is returned),
    /// negative is `-errno`.
    ///
    /// A negative value whose magnitude does not fit an `i32` cannot come from a conforming
    /// hypervisor; it maps to [`XenError::EINVAL`] rather than panicking or being mistaken for
    /// success.
    pub fn from_return(ret: i64) -> Result<u64, XenError> {
        if ret >= 0 {
            // CAST: non-negative i64 always fits u64.
            return Ok(ret.unsigned_abs());
        }
        let errno = i32::try_from(ret.unsigned_abs()).unwrap_or(XenError::EINVAL.errno());
        Err(XenError::from_errno(errno).unwrap_or(XenError::EINVAL))
    }

    /// The positive errno number (Xen/Linux numbering).
    #[must_use]
    pub const fn errno(self) -> i32 {
        self.0.get()
    }

    /// The value a hypercall would return for this error (`-errno`).
    #[must_use]
    pub const fn to_return(self) -> i64 {
        // CAST: i32 always fits i64; the invariant makes it positive, so negation is exact.
        -(self.0.get() as i64)
    }
}

impl XenError {
    /// The FreeBSD errno (`sys/errno.h`) with the same meaning, for returning to FreeBSD code
    /// and user space. Xen uses Linux numbering, which differs from FreeBSD's for most values
    /// above 34 and for `EAGAIN`/`EDEADLK`; errors FreeBSD has no equivalent for become `EIO`.
    #[must_use]
    pub const fn to_freebsd_errno(self) -> i32 {
        match self.0.get() {
            // Identical numbers: the historic UNIX errors 1..34, except those below.
            n @ (1..=10 | 12..=34) => n,
            11 => 35,  // EAGAIN
            35 => 11,  // EDEADLK
            36 => 63,  // ENAMETOOLONG
            37 => 77,  // ENOLCK
            38 => 78,  // ENOSYS
            39 => 66,  // ENOTEMPTY
            62 => 60,  // ETIME -> ETIMEDOUT
            74 => 89,  // EBADMSG
            75 => 84,  // EOVERFLOW
            84 => 86,  // EILSEQ
            88 => 38,  // ENOTSOCK
            90 => 40,  // EMSGSIZE
            95 => 45,  // EOPNOTSUPP
            98 => 48,  // EADDRINUSE
            99 => 49,  // EADDRNOTAVAIL
            105 => 55, // ENOBUFS
            106 => 56, // EISCONN
            107 => 57, // ENOTCONN
            110 => 60, // ETIMEDOUT
            111 => 61, // ECONNREFUSED
            _ => 5,    // EIO: no FreeBSD equivalent (ENODATA, unknown numbers)
        }
    }
}

impl fmt::Debug for XenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "XenError({name})"),
            None => write!(f, "XenError({})", self.0.get()),
        }
    }
}

impl fmt::Display for XenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.name(), self.description()) {
            (Some(name), Some(text)) => write!(f, "{text} ({name}, Xen errno {})", self.0.get()),
            _ => write!(f, "unknown Xen errno {}", self.0.get()),
        }
    }
}

impl core::error::Error for XenError {}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;
    use xen_sys::native as abi;

    #[test]
    fn numbers_match_xen_errno_h() {
        let table: &[(XenError, i64)] = &[
            (XenError::EPERM, i64::from(abi::XEN_EPERM)),
            (XenError::ENOENT, i64::from(abi::XEN_ENOENT)),
            (XenError::ESRCH, i64::from(abi::XEN_ESRCH)),
            (XenError::EIO, i64::from(abi::XEN_EIO)),
            (XenError::ENXIO, i64::from(abi::XEN_ENXIO)),
            (XenError::E2BIG, i64::from(abi::XEN_E2BIG)),
            (XenError::ENOEXEC, i64::from(abi::XEN_ENOEXEC)),
            (XenError::EBADF, i64::from(abi::XEN_EBADF)),
            (XenError::ECHILD, i64::from(abi::XEN_ECHILD)),
            (XenError::EAGAIN, i64::from(abi::XEN_EAGAIN)),
            (XenError::EWOULDBLOCK, i64::from(abi::XEN_EWOULDBLOCK)),
            (XenError::ENOMEM, i64::from(abi::XEN_ENOMEM)),
            (XenError::EACCES, i64::from(abi::XEN_EACCES)),
            (XenError::EFAULT, i64::from(abi::XEN_EFAULT)),
            (XenError::EBUSY, i64::from(abi::XEN_EBUSY)),
            (XenError::EEXIST, i64::from(abi::XEN_EEXIST)),
            (XenError::EXDEV, i64::from(abi::XEN_EXDEV)),
            (XenError::ENODEV, i64::from(abi::XEN_ENODEV)),
            (XenError::ENOTDIR, i64::from(abi::XEN_ENOTDIR)),
            (XenError::EISDIR, i64::from(abi::XEN_EISDIR)),
            (XenError::EINVAL, i64::from(abi::XEN_EINVAL)),
            (XenError::ENFILE, i64::from(abi::XEN_ENFILE)),
            (XenError::EMFILE, i64::from(abi::XEN_EMFILE)),
            (XenError::ENOSPC, i64::from(abi::XEN_ENOSPC)),
            (XenError::EROFS, i64::from(abi::XEN_EROFS)),
            (XenError::EMLINK, i64::from(abi::XEN_EMLINK)),
            (XenError::EDOM, i64::from(abi::XEN_EDOM)),
            (XenError::ERANGE, i64::from(abi::XEN_ERANGE)),
            (XenError::EDEADLK, i64::from(abi::XEN_EDEADLK)),
            (XenError::ENAMETOOLONG, i64::from(abi::XEN_ENAMETOOLONG)),
            (XenError::ENOLCK, i64::from(abi::XEN_ENOLCK)),
            (XenError::ENOSYS, i64::from(abi::XEN_ENOSYS)),
            (XenError::ENOTEMPTY, i64::from(abi::XEN_ENOTEMPTY)),
            (XenError::ENODATA, i64::from(abi::XEN_ENODATA)),
            (XenError::ETIME, i64::from(abi::XEN_ETIME)),
            (XenError::EBADMSG, i64::from(abi::XEN_EBADMSG)),
            (XenError::EOVERFLOW, i64::from(abi::XEN_EOVERFLOW)),
            (XenError::EILSEQ, i64::from(abi::XEN_EILSEQ)),
            (XenError::ENOTSOCK, i64::from(abi::XEN_ENOTSOCK)),
            (XenError::EMSGSIZE, i64::from(abi::XEN_EMSGSIZE)),
            (XenError::EOPNOTSUPP, i64::from(abi::XEN_EOPNOTSUPP)),
            (XenError::EADDRINUSE, i64::from(abi::XEN_EADDRINUSE)),
            (XenError::EADDRNOTAVAIL, i64::from(abi::XEN_EADDRNOTAVAIL)),
            (XenError::ENOBUFS, i64::from(abi::XEN_ENOBUFS)),
            (XenError::EISCONN, i64::from(abi::XEN_EISCONN)),
            (XenError::ENOTCONN, i64::from(abi::XEN_ENOTCONN)),
            (XenError::ETIMEDOUT, i64::from(abi::XEN_ETIMEDOUT)),
            (XenError::ECONNREFUSED, i64::from(abi::XEN_ECONNREFUSED)),
        ];
        for (e, n) in table {
            assert_eq!(i64::from(e.errno()), *n, "{e:?}");
        }
        // Every named error is in the table above (no stray numbers of our own).
        assert_eq!(XenError::ALL.len() + 1, table.len());
    }

    #[test]
    fn return_values_decode() {
        assert_eq!(XenError::from_return(0), Ok(0));
        assert_eq!(XenError::from_return(7), Ok(7));
        assert_eq!(XenError::from_return(-22), Err(XenError::EINVAL));
        assert_eq!(XenError::from_return(-38), Err(XenError::ENOSYS));
        assert_eq!(XenError::from_return(i64::MIN), Err(XenError::EINVAL));
        assert_eq!(XenError::from_return(-1000).unwrap_err().errno(), 1000);
        assert_eq!(XenError::EPERM.to_return(), -1);
        assert_eq!(XenError::from_errno(0), None);
        assert_eq!(XenError::from_errno(-3), None);
        for e in XenError::ALL {
            assert_eq!(XenError::from_return(e.to_return()), Err(*e));
            assert!(e.name().is_some());
        }
    }

    #[test]
    fn freebsd_errnos() {
        assert_eq!(XenError::EPERM.to_freebsd_errno(), 1);
        assert_eq!(XenError::EINVAL.to_freebsd_errno(), 22);
        assert_eq!(XenError::ENOMEM.to_freebsd_errno(), 12);
        assert_eq!(XenError::EAGAIN.to_freebsd_errno(), 35);
        assert_eq!(XenError::EDEADLK.to_freebsd_errno(), 11);
        assert_eq!(XenError::ENOSYS.to_freebsd_errno(), 78);
        assert_eq!(XenError::ENOTCONN.to_freebsd_errno(), 57);
        assert_eq!(XenError::ENODATA.to_freebsd_errno(), 5);
        for e in XenError::ALL {
            assert!(e.to_freebsd_errno() > 0);
        }
    }

    #[test]
    fn display_names() {
        assert_eq!(
            XenError::EINVAL.to_string(),
            "Invalid argument (EINVAL, Xen errno 22)"
        );
        assert_eq!(std::format!("{:?}", XenError::ENOSYS), "XenError(ENOSYS)");
        let odd = XenError::from_errno(4000).unwrap();
        assert_eq!(odd.to_string(), "unknown Xen errno 4000");
        assert_eq!(odd.name(), None);
    }
}
