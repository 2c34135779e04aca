//! FreeBSD's side of the Dom0 device ABI: errno numbers (`sys/errno.h`) and the ioctl command
//! encoding (`sys/ioccom.h`).
//!
//! The /dev/xen devices (evtchn, gntdev, privcmd, xenstore) speak FreeBSD's ioctl ABI so that
//! Xen's tools built for FreeBSD work unchanged; their error results are FreeBSD's errno
//! numbers, which differ from Xen's (Linux-numbered) ones: `EAGAIN` is 35 here, 11 in Xen.
//! Every device module shares this one definition, and the user data model ([`Abi`]) with
//! the argument layouts that depend on it.

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

/// The data model of the user process calling a device: pointer and `long` sizes and the
/// alignment of 64-bit integers inside structures differ between amd64 and i386 processes,
/// so argument sizes — and with them the ioctl command numbers, which encode the size —
/// differ too. One type for every device (it was duplicated in gntdev and privcmd); the
/// per-device layouts are the `impl Abi` blocks below ([`gntdev`], [`privcmd`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abi {
    /// amd64: 8-byte `long` and pointers, `uint64_t` 8-aligned.
    Lp64,
    /// i386: 4-byte `long` and pointers, `uint64_t` 4-aligned inside structures.
    Ilp32,
}

impl Abi {
    /// The data model of the kernel this is compiled for.
    #[cfg(target_pointer_width = "64")]
    pub const NATIVE: Abi = Abi::Lp64;
    /// The data model of the kernel this is compiled for.
    #[cfg(not(target_pointer_width = "64"))]
    pub const NATIVE: Abi = Abi::Ilp32;

    /// Whether this is the LP64 model.
    #[must_use]
    pub const fn is_lp64(self) -> bool {
        matches!(self, Abi::Lp64)
    }

    /// Size of `long`, of pointers and of `xen_pfn_t` (`unsigned long` on x86).
    #[must_use]
    pub const fn word(self) -> usize {
        if self.is_lp64() {
            8
        } else {
            4
        }
    }

    /// [`Abi::word`] as a `u32` (for size arithmetic of ioctl arguments).
    #[must_use]
    pub const fn word32(self) -> u32 {
        if self.is_lp64() {
            8
        } else {
            4
        }
    }

    /// Size of a user pointer.
    #[must_use]
    pub const fn ptr_size(self) -> usize {
        self.word()
    }
}

/// `/dev/xen/gntdev` (FreeBSD's `sys/xen/gntdev.h`): argument sizes and command numbers.
pub mod gntdev {
    use super::ioccom::{ioc, IOC_IN, IOC_INOUT};
    use super::Abi;

    /// The gntdev ioctl group, `'E'`.
    pub const GROUP: u32 = b'E' as u32;

    impl Abi {
        /// `sizeof(struct ioctl_gntdev_unmap_notify)`: index u64, action u32, port u32.
        #[must_use]
        pub const fn unmap_notify_size(self) -> u32 {
            16
        }
        /// `sizeof(struct ioctl_gntdev_alloc_gref)`: domid u16, flags u16, count u32,
        /// index u64, gref_ids pointer.
        #[must_use]
        pub const fn alloc_gref_size(self) -> u32 {
            if self.is_lp64() {
                24
            } else {
                20
            }
        }
        /// `sizeof(struct ioctl_gntdev_dealloc_gref)`: index u64, count u32 (+ tail padding
        /// on LP64).
        #[must_use]
        pub const fn dealloc_gref_size(self) -> u32 {
            if self.is_lp64() {
                16
            } else {
                12
            }
        }
        /// `sizeof(struct ioctl_gntdev_map_grant_ref)`: count u32, pad0 u32, index u64, refs
        /// pointer.
        #[must_use]
        pub const fn map_grant_ref_size(self) -> u32 {
            self.alloc_gref_size()
        }
        /// `sizeof(struct ioctl_gntdev_unmap_grant_ref)`: index u64, count u32.
        #[must_use]
        pub const fn unmap_grant_ref_size(self) -> u32 {
            self.dealloc_gref_size()
        }
        /// `sizeof(struct ioctl_gntdev_get_offset_for_vaddr)`: vaddr u64, offset u64, count
        /// u32.
        #[must_use]
        pub const fn get_offset_for_vaddr_size(self) -> u32 {
            if self.is_lp64() {
                24
            } else {
                20
            }
        }

        /// `IOCTL_GNTDEV_SET_UNMAP_NOTIFY`: `_IOW('E', 0, ...)`.
        #[must_use]
        pub const fn set_unmap_notify(self) -> u32 {
            ioc(IOC_IN, GROUP, 0, self.unmap_notify_size())
        }
        /// `IOCTL_GNTDEV_ALLOC_GREF`: `_IOWR('E', 1, ...)`.
        #[must_use]
        pub const fn alloc_gref(self) -> u32 {
            ioc(IOC_INOUT, GROUP, 1, self.alloc_gref_size())
        }
        /// `IOCTL_GNTDEV_DEALLOC_GREF`: `_IOW('E', 2, ...)`.
        #[must_use]
        pub const fn dealloc_gref(self) -> u32 {
            ioc(IOC_IN, GROUP, 2, self.dealloc_gref_size())
        }
        /// `IOCTL_GNTDEV_MAP_GRANT_REF`: `_IOWR('E', 3, ...)`.
        #[must_use]
        pub const fn map_grant_ref(self) -> u32 {
            ioc(IOC_INOUT, GROUP, 3, self.map_grant_ref_size())
        }
        /// `IOCTL_GNTDEV_UNMAP_GRANT_REF`: `_IOW('E', 4, ...)`.
        #[must_use]
        pub const fn unmap_grant_ref(self) -> u32 {
            ioc(IOC_IN, GROUP, 4, self.unmap_grant_ref_size())
        }
        /// `IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR`: `_IOWR('E', 5, ...)`.
        #[must_use]
        pub const fn get_offset_for_vaddr(self) -> u32 {
            ioc(IOC_INOUT, GROUP, 5, self.get_offset_for_vaddr_size())
        }
    }
}

/// `/dev/xen/privcmd` (FreeBSD's `sys/xen/privcmd.h`): argument sizes and command numbers.
pub mod privcmd {
    use super::ioccom::{ioc, IOC_IN, IOC_INOUT};
    use super::Abi;

    /// The privcmd ioctl group, `'E'`.
    pub const GROUP: u32 = b'E' as u32;

    impl Abi {
        /// `sizeof(struct ioctl_privcmd_hypercall)`: op, arg\[5\], retval.
        #[must_use]
        pub const fn hypercall_size(self) -> u32 {
            7 * self.word32()
        }
        /// `sizeof(struct ioctl_privcmd_mmapbatch)`: int num, domid_t dom, (pad), addr, arr,
        /// err.
        #[must_use]
        pub const fn mmapbatch_size(self) -> u32 {
            8 + 3 * self.word32()
        }
        /// `sizeof(struct ioctl_privcmd_mmapresource)`: dom, type, id, idx, num, addr.
        #[must_use]
        pub const fn mmapresource_size(self) -> u32 {
            16 + 2 * self.word32()
        }
        /// `sizeof(struct ioctl_privcmd_dmop)`: dom, num, ubufs.
        #[must_use]
        pub const fn dmop_size(self) -> u32 {
            8 + self.word32()
        }
        /// `sizeof(struct privcmd_dmop_buf)`: uptr, size.
        #[must_use]
        pub const fn dmop_buf_size(self) -> usize {
            2 * self.word()
        }

        /// `IOCTL_PRIVCMD_HYPERCALL`: `_IOWR('E', 0, ...)`.
        #[must_use]
        pub const fn hypercall(self) -> u32 {
            ioc(IOC_INOUT, GROUP, 0, self.hypercall_size())
        }
        /// `IOCTL_PRIVCMD_MMAPBATCH`: `_IOWR('E', 1, ...)`.
        #[must_use]
        pub const fn mmapbatch(self) -> u32 {
            ioc(IOC_INOUT, GROUP, 1, self.mmapbatch_size())
        }
        /// `IOCTL_PRIVCMD_MMAP_RESOURCE`: `_IOWR('E', 2, ...)`.
        #[must_use]
        pub const fn mmap_resource(self) -> u32 {
            ioc(IOC_INOUT, GROUP, 2, self.mmapresource_size())
        }
        /// `IOCTL_PRIVCMD_DM_OP`: `_IOW('E', 3, ...)`.
        #[must_use]
        pub const fn dm_op(self) -> u32 {
            ioc(IOC_IN, GROUP, 3, self.dmop_size())
        }
        /// `IOCTL_PRIVCMD_RESTRICT`: `_IOW('E', 4, domid_t)`.
        #[must_use]
        pub const fn restrict(self) -> u32 {
            ioc(IOC_IN, GROUP, 4, 2)
        }
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
