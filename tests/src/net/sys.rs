//! The only unsafe code of the network tests: TAP devices (`/dev/net/tun` ioctls) and moving a
//! thread into a network namespace (`setns`).
//!
//! Everything else in `net` is safe Rust over [`Tap`] and [`enter_netns`].
#![allow(unsafe_code, reason = "the ioctl/setns boundary of the network tests")]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `TUN_F_CSUM`: the kernel may hand us packets whose checksum is still to be completed.
pub const TUN_F_CSUM: libc::c_uint = 0x01;
/// `TUN_F_TSO4`.
pub const TUN_F_TSO4: libc::c_uint = 0x02;
/// `TUN_F_TSO6`.
pub const TUN_F_TSO6: libc::c_uint = 0x04;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens a TAP device `name` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 10-byte
/// `virtio_net_hdr`, and the given `TUN_F_*` offloads (what the kernel may send us).
///
/// # Errors
/// The OS error.
pub fn open_tap(name: &str, offloads: libc::c_uint) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    let n = name.len().min(15);
    req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: `req` is a live, properly sized `struct ifreq` (40 bytes: name + flags union);
    // TUNSETIFF reads and writes only within it; the fd is open.
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let hdr: libc::c_int = 10;
    // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which is live.
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETVNETHDRSZ, &hdr as *const libc::c_int) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(offloads)) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

/// Waits up to `ms` for `f` to become readable; true if it is.
pub fn readable(f: &File, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live `pollfd`, count 1.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    r > 0 && p.revents & libc::POLLIN != 0
}

/// Moves the *calling thread* into the network namespace `/var/run/netns/<name>`.
///
/// # Errors
/// The OS error.
pub fn enter_netns(name: &str) -> io::Result<()> {
    let f = File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: `setns` on an open namespace fd affects only the calling thread's namespace
    // membership (network namespaces may be changed per thread).
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether we are root (the namespace tests need it).
#[must_use]
pub fn is_root() -> bool {
    // SAFETY: `geteuid` has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
