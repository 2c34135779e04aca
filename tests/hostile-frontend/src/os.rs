//! The Linux side: `/dev/xen/gntalloc` (grant our own pages to the backend), `/dev/xen/evtchn`
//! (an unbound port for the backend to bind, notifications) and `/dev/xen/xenbus` (xenstore
//! as a byte stream, as a [`Transport`] for `xen_xenbus::Xs`).
//!
//! This is the only module with `unsafe`: the ioctl and mmap calls, and the view of a granted
//! page as [`SharedMem`]. The ioctl numbers and argument layouts are Linux's public device ABI
//! (`include/uapi/xen/gntalloc.h`, `evtchn.h`): `_IOC(_IOC_NONE, type, nr, size)` =
//! `size << 16 | type << 8 | nr`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use xen_shmem::SharedMem;
use xen_xenbus::{Transport, TransportError};

/// Most pages one [`Gntalloc::alloc`] call grants (the size of our argument buffer).
pub const MAX_ALLOC: usize = 16;
const PAGE: usize = 4096;

const fn ioc_none(ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    // `_IOC_NONE` is 0; sizes here are tens of bytes, far below the 14-bit field.
    ((size as libc::c_ulong) << 16) | ((ty as libc::c_ulong) << 8) | nr as libc::c_ulong
}

/// `struct ioctl_gntalloc_alloc_gref` with room for [`MAX_ALLOC`] grant references (the
/// header is fixed: the ioctl number encodes the size with one reference, 24 bytes).
#[repr(C)]
struct AllocGref {
    domid: u16,
    flags: u16,
    count: u32,
    index: u64,
    gref_ids: [u32; MAX_ALLOC],
}

/// `struct ioctl_gntalloc_dealloc_gref`.
#[repr(C)]
struct DeallocGref {
    index: u64,
    count: u32,
}

/// `IOCTL_GNTALLOC_ALLOC_GREF`: the size is that of the struct with one reference (24).
const GNTALLOC_ALLOC_GREF: libc::c_ulong = ioc_none(b'G', 5, 24);
/// `IOCTL_GNTALLOC_DEALLOC_GREF`.
const GNTALLOC_DEALLOC_GREF: libc::c_ulong = ioc_none(b'G', 6, size_of::<DeallocGref>());
/// `GNTALLOC_FLAG_WRITABLE`.
const GNTALLOC_FLAG_WRITABLE: u16 = 1;
/// `IOCTL_EVTCHN_BIND_UNBOUND_PORT` (`struct { unsigned int remote_domain; }`).
const EVTCHN_BIND_UNBOUND_PORT: libc::c_ulong = ioc_none(b'E', 2, 4);
/// `IOCTL_EVTCHN_UNBIND` (`struct { unsigned int port; }`).
const EVTCHN_UNBIND: libc::c_ulong = ioc_none(b'E', 3, 4);
/// `IOCTL_EVTCHN_NOTIFY` (`struct { unsigned int port; }`).
const EVTCHN_NOTIFY: libc::c_ulong = ioc_none(b'E', 4, 4);

const _: () = assert!(GNTALLOC_ALLOC_GREF == 0x0018_4705);
const _: () = assert!(GNTALLOC_DEALLOC_GREF == 0x0010_4706);
const _: () = assert!(EVTCHN_BIND_UNBOUND_PORT == 0x0004_4502);
const _: () = assert!(EVTCHN_NOTIFY == 0x0004_4504);

fn open(path: &str, nonblock: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(if nonblock { libc::O_NONBLOCK } else { 0 })
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// `/dev/xen/gntalloc`.
#[derive(Debug)]
pub struct Gntalloc {
    file: File,
}

/// Pages of ours granted to a domain and mapped here; revoked and unmapped on drop (the
/// driver keeps a page the peer still maps until the peer lets it go).
#[derive(Debug)]
pub struct Grants<'f> {
    file: &'f File,
    index: u64,
    refs: Vec<u32>,
    ptr: *mut u8,
    len: usize,
}

impl Gntalloc {
    /// Opens the device.
    ///
    /// # Errors
    /// The device is missing (module `xen-gntalloc` not loaded) or cannot be opened.
    pub fn open() -> io::Result<Gntalloc> {
        Ok(Gntalloc {
            file: open("/dev/xen/gntalloc", false)?,
        })
    }

    /// Grants `count` (1..=[`MAX_ALLOC`]) fresh zeroed pages to `domid`, writable or read-only,
    /// and maps them here.
    ///
    /// # Errors
    /// A bad count, or the ioctl's or mmap's error.
    pub fn alloc(&self, domid: u16, count: usize, writable: bool) -> io::Result<Grants<'_>> {
        if count == 0 || count > MAX_ALLOC {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "grant count"));
        }
        let mut arg = AllocGref {
            domid,
            flags: if writable { GNTALLOC_FLAG_WRITABLE } else { 0 },
            count: u32::try_from(count).unwrap_or(1),
            index: 0,
            gref_ids: [0; MAX_ALLOC],
        };
        // SAFETY: the fd is open; `arg` is a live, properly laid out argument with room for
        // `count` references, which is all the driver writes back.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), GNTALLOC_ALLOC_GREF, &raw mut arg) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = count * PAGE;
        let offset = libc::off_t::try_from(arg.index)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "gntalloc index"))?;
        // SAFETY: a fresh shared mapping of the driver's pages at the offset it returned; no
        // existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                offset,
            )
        };
        let refs = arg.gref_ids.get(..count).unwrap_or(&[]).to_vec();
        let mapped = ptr != libc::MAP_FAILED;
        let err = (!mapped).then(io::Error::last_os_error);
        let g = Grants {
            file: &self.file,
            index: arg.index,
            refs,
            // Nothing mapped on failure: drop then only releases the grants.
            ptr: if mapped {
                ptr.cast()
            } else {
                core::ptr::null_mut()
            },
            len,
        };
        if let Some(e) = err {
            drop(g);
            return Err(e);
        }
        Ok(g)
    }
}

impl Grants<'_> {
    /// The grant references, one per page.
    #[must_use]
    pub fn refs(&self) -> &[u32] {
        &self.refs
    }

    /// Page `i` as shared memory (`None` past the end).
    #[must_use]
    pub fn page(&self, i: usize) -> Option<SharedMem<'_>> {
        if i >= self.refs.len() || self.ptr.is_null() {
            return None;
        }
        // SAFETY: the mapping covers `len` bytes for as long as `self` lives (unmapped only in
        // drop); this program touches it only through `SharedMem` (atomic word accesses);
        // the backend's writes are outside the abstract machine. The offset stays inside.
        unsafe { SharedMem::new(self.ptr.add(i * PAGE), PAGE).ok() }
    }
}

impl Drop for Grants<'_> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: exactly the mapping made in `alloc`; no `SharedMem` outlives `self`.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
        let mut arg = DeallocGref {
            index: self.index,
            count: u32::try_from(self.refs.len()).unwrap_or(0),
        };
        // SAFETY: a live, properly laid out argument; the driver only reads it.
        unsafe { libc::ioctl(self.file.as_raw_fd(), GNTALLOC_DEALLOC_GREF, &raw mut arg) };
    }
}

/// `/dev/xen/evtchn`.
#[derive(Debug)]
pub struct Evtchn {
    file: File,
}

impl Evtchn {
    /// Opens the device.
    ///
    /// # Errors
    /// The device is missing (module `xen-evtchn`) or cannot be opened.
    pub fn open() -> io::Result<Evtchn> {
        Ok(Evtchn {
            file: open("/dev/xen/evtchn", true)?,
        })
    }

    fn ioctl(&self, nr: libc::c_ulong, arg: u32) -> io::Result<u32> {
        let mut arg: libc::c_uint = arg;
        // SAFETY: every evtchn ioctl used here takes one `unsigned int`, which is live.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), nr, &raw mut arg) };
        u32::try_from(rc).map_err(|_| io::Error::last_os_error())
    }

    /// A port `remote` may bind to; returns our local port.
    ///
    /// # Errors
    /// The ioctl's error.
    pub fn bind_unbound(&self, remote: u16) -> io::Result<u32> {
        self.ioctl(EVTCHN_BIND_UNBOUND_PORT, u32::from(remote))
    }

    /// Sends an event on `port`.
    ///
    /// # Errors
    /// The ioctl's error.
    pub fn notify(&self, port: u32) -> io::Result<()> {
        self.ioctl(EVTCHN_NOTIFY, port).map(|_| ())
    }

    /// Closes `port`.
    ///
    /// # Errors
    /// The ioctl's error.
    pub fn unbind(&self, port: u32) -> io::Result<()> {
        self.ioctl(EVTCHN_UNBIND, port).map(|_| ())
    }

    /// Reads and re-enables pending ports without blocking; returns how many events were
    /// pending (so a flood of events from the backend cannot fill the driver's buffer).
    pub fn drain(&mut self) -> usize {
        let mut events = 0;
        let mut buf = [0u8; 256];
        // Bounded: the driver's buffer holds a page of ports at most.
        for _ in 0..64 {
            match self.file.read(&mut buf) {
                Ok(n) if n >= 4 => {
                    let chunk = buf.get(..n - n % 4).unwrap_or(&[]);
                    events += chunk.len() / 4;
                    // Writing the ports back unmasks them.
                    let _ = self.file.write(chunk);
                }
                _ => break,
            }
        }
        events
    }
}

/// `/dev/xen/xenbus` as a byte stream to xenstored. The driver takes one whole message per
/// `write` (bytes after the first message of a write are not kept), so `send` never writes
/// across a message boundary.
#[derive(Debug)]
pub struct XenbusDev {
    file: File,
    /// Bytes of the current message still to write.
    unsent: usize,
    /// Milliseconds one `wait_for_event` blocks at most.
    wait_ms: i32,
}

impl XenbusDev {
    /// Opens the device.
    ///
    /// # Errors
    /// The device cannot be opened.
    pub fn open() -> io::Result<XenbusDev> {
        Ok(XenbusDev {
            file: open("/dev/xen/xenbus", true)?,
            unsent: 0,
            wait_ms: 100,
        })
    }
}

/// Bytes up to the end of the message starting at `bytes` (its header's `len` is at 12).
fn message_len(bytes: &[u8]) -> Option<usize> {
    let len = bytes.get(12..16)?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
    Some(16 + usize::try_from(len).ok()?)
}

impl Transport for XenbusDev {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, TransportError> {
        if self.unsent == 0 {
            self.unsent = message_len(bytes).unwrap_or(bytes.len());
        }
        let n = bytes.len().min(self.unsent);
        match self.file.write(bytes.get(..n).unwrap_or(&[])) {
            Ok(w) => {
                self.unsent -= w.min(self.unsent);
                Ok(w)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(_) => Err(TransportError::Closed),
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        match self.file.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(_) => Err(TransportError::Closed),
        }
    }

    fn wait_for_event(&mut self) -> Result<(), TransportError> {
        let mut p = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let rc = unsafe { libc::poll(&raw mut p, 1, self.wait_ms) };
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(TransportError::Closed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_boundaries() {
        let mut m = vec![0u8; 16];
        m[12..16].copy_from_slice(&5u32.to_le_bytes());
        assert_eq!(message_len(&m), Some(21));
        assert_eq!(message_len(&m[..10]), None);
    }

    #[test]
    fn alloc_gref_header_layout() {
        // The fixed part the ioctl number describes: index at 8, references from 16.
        let a = AllocGref {
            domid: 0,
            flags: 0,
            count: 0,
            index: 0,
            gref_ids: [0; MAX_ALLOC],
        };
        let base = (&raw const a).addr();
        assert_eq!((&raw const a.index).addr() - base, 8);
        assert_eq!((&raw const a.gref_ids).addr() - base, 16);
        assert_eq!(size_of::<DeallocGref>(), 16);
    }
}
