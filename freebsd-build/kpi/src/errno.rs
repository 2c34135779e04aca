//! FreeBSD error numbers at the KPI boundary.
//!
//! Glue code works with `Result<T, Errno>`; a C integer appears only in the `extern "C"`
//! trampolines ([`Errno::result_to_c`]). Values are FreeBSD's (`<sys/errno.h>`), which differ
//! from Linux's for several names (`EOPNOTSUPP` is 45, not 95).

use core::fmt;
use core::num::NonZeroI32;

/// A FreeBSD `errno` value; never 0 (success is `Ok`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(NonZeroI32);

macro_rules! errnos {
    ($($name:ident = $value:literal, $text:literal;)*) => {
        impl Errno {
            $(
                #[doc = $text]
                pub const $name: Errno = Errno::new_const($value);
            )*

            /// The symbolic name (`"EBUSY"`), or `"E?"` for a number this table lacks.
            #[must_use]
            pub fn name(self) -> &'static str {
                match self.0.get() {
                    $($value => stringify!($name),)*
                    _ => "E?",
                }
            }
        }
    };
}

errnos! {
    EPERM = 1, "Operation not permitted.";
    ENOENT = 2, "No such file or directory.";
    ESRCH = 3, "No such process (no such domain).";
    EIO = 5, "Input/output error.";
    ENXIO = 6, "Device not configured (for example: not running on Xen).";
    E2BIG = 7, "Argument list too long.";
    EBADF = 9, "Bad file descriptor (a closed device file).";
    ENOMEM = 12, "Cannot allocate memory.";
    EACCES = 13, "Permission denied.";
    EFAULT = 14, "Bad address.";
    EBUSY = 16, "Device busy: refuses an unload while something is in use.";
    EEXIST = 17, "File exists.";
    ENODEV = 19, "Operation not supported by device.";
    EINVAL = 22, "Invalid argument (for example: a malformed loader tunable).";
    ENOTTY = 25, "Inappropriate ioctl for device.";
    ENOSPC = 28, "No space left (a table is full).";
    ERANGE = 34, "Result too large (for example: a tunable outside its range).";
    EAGAIN = 35, "Resource temporarily unavailable.";
    EOPNOTSUPP = 45, "Operation not supported.";
    ETIMEDOUT = 60, "Operation timed out.";
    EDEADLK = 11, "Resource deadlock avoided.";
    ENOSYS = 78, "Function not implemented.";
}

impl Errno {
    const fn new_const(value: i32) -> Errno {
        match NonZeroI32::new(value) {
            Some(value) => Errno(value),
            None => panic!("errno 0 is success, not an error"),
        }
    }

    /// `Some` for a non-zero C return value.
    #[must_use]
    pub fn from_raw(value: i32) -> Option<Errno> {
        NonZeroI32::new(value).map(Errno)
    }

    /// The C value.
    #[must_use]
    pub fn to_raw(self) -> i32 {
        self.0.get()
    }

    /// 0 for `Ok`, the errno for `Err`: the only place a `Result` becomes a C integer.
    #[must_use]
    pub fn result_to_c(result: Result<(), Errno>) -> core::ffi::c_int {
        match result {
            Ok(()) => 0,
            Err(errno) => errno.to_raw(),
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freebsd_values_and_names() {
        assert_eq!(Errno::EBUSY.to_raw(), 16);
        assert_eq!(Errno::EOPNOTSUPP.to_raw(), 45);
        assert_eq!(Errno::ENXIO.name(), "ENXIO");
        assert_eq!(Errno::from_raw(0), None);
        assert_eq!(Errno::from_raw(999).map(Errno::name), Some("E?"));
        assert_eq!(Errno::result_to_c(Ok(())), 0);
        assert_eq!(Errno::result_to_c(Err(Errno::EINVAL)), 22);
    }
}
