//! FreeBSD's side of the Dom0 device ABI: errno numbers (`sys/errno.h`) and the ioctl command
//! encoding (`sys/ioccom.h`).
//!
//! The /dev/xen devices (evtchn, gntdev, privcmd, xenstore) speak FreeBSD's ioctl ABI so that
//! Xen's tools built for FreeBSD work unchanged; their error results are FreeBSD's errno
//! numbers, which differ from Xen's (Linux-numbered) ones: `EAGAIN` is 35 here, 11 in Xen.
//! Every device module shares this one definition.

use core::fmt;

/// A FreeBSD errno value, the only error form that leaves a device handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(1);
    /// No such process (no such domain).
    pub const ESRCH: Errno = Errno(3);
    /// Input/output error (an inconsistency below us).
    pub const EIO: Errno = Errno(5);
    /// Argument list too long.
    pub const E2BIG: Errno = Errno(7);
    /// Cannot allocate memory.
    pub const ENOMEM: Errno = Errno(12);
    /// Permission denied.
    pub const EACCES: Errno = Errno(13);
    /// Bad address (user memory not accessible).
    pub const EFAULT: Errno = Errno(14);
    /// Device busy.
    pub const EBUSY: Errno = Errno(16);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(22);
    /// Inappropriate ioctl for device.
    pub const ENOTTY: Errno = Errno(25);
    /// File too large (evtchn: the event ring overflowed).
    pub const EFBIG: Errno = Errno(27);
    /// No space left (a per-file limit).
    pub const ENOSPC: Errno = Errno(28);
    /// Resource temporarily unavailable (`EWOULDBLOCK`).
    pub const EAGAIN: Errno = Errno(35);
    /// Operation not supported.
    pub const EOPNOTSUPP: Errno = Errno(45);
    /// Not connected (evtchn: the port is not bound through this file).
    pub const ENOTCONN: Errno = Errno(57);
    /// Function not implemented (78 on FreeBSD, not Linux's 38).
    pub const ENOSYS: Errno = Errno(78);
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "errno {}", self.0)
    }
}

/// `sys/ioccom.h`: how an ioctl command number encodes direction, group, number and size.
pub mod ioccom {
    /// `IOC_VOID`: no argument.
    pub const IOC_VOID: u32 = 0x2000_0000;
    /// `IOC_OUT`: the kernel copies the argument back out.
    pub const IOC_OUT: u32 = 0x4000_0000;
    /// `IOC_IN`: the kernel copies the argument in.
    pub const IOC_IN: u32 = 0x8000_0000;
    /// `IOC_INOUT`.
    pub const IOC_INOUT: u32 = IOC_IN | IOC_OUT;
    /// `IOCPARM_MASK`: 13 bits of argument length.
    pub const IOCPARM_MASK: u32 = 0x1fff;

    /// `_IOC(inout, group, num, len)`.
    #[must_use]
    pub const fn ioc(inout: u32, group: u32, num: u32, len: u32) -> u32 {
        inout | ((len & IOCPARM_MASK) << 16) | (group << 8) | num
    }

    /// `IOCPARM_LEN(cmd)`: the argument size a command encodes.
    #[must_use]
    pub const fn iocparm_len(cmd: u32) -> usize {
        ((cmd >> 16) & IOCPARM_MASK) as usize
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn matches_freebsd_iowr_encoding() {
            // _IOWR('E', 4, 8 bytes) as FreeBSD computes it: 0xc0084504.
            assert_eq!(ioc(IOC_INOUT, u32::from(b'E'), 4, 8), 0xc008_4504);
            assert_eq!(iocparm_len(0xc008_4504), 8);
            assert_eq!(ioc(IOC_VOID, u32::from(b'E'), 9, 0), 0x2000_4509);
        }
    }
}
