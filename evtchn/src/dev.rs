//! `/dev/xen/evtchn`: the logic of FreeBSD's user-space event-channel device, platform-neutral.
//!
//! Xen's tools (libxenevtchn built for FreeBSD) open the device, bind ports with ioctls, `read`
//! the ports that fired as a stream of `u32`s, and `write` ports back to re-enable them. This
//! module implements one open file ([`EvtchnFile`]) with **FreeBSD's** ABI (`sys/xen/evtchn.h`:
//! the `_IOWR('E', 4..6)` bind ioctls return the port in the struct, `_IOW('E', 7/8)` unbind and
//! notify, `_IO('E', 9)` reset), and FreeBSD's semantics:
//!
//! * each fired port is masked on delivery and queued in a per-file ring of
//!   [`RING_SIZE`] ports; a full ring sets an overflow flag and `read` fails with `EFBIG`
//!   until `IOCTL_EVTCHN_RESET`;
//! * `read` returns whole ports only (the length is rounded down to a multiple of 4, capped at a
//!   page), `EAGAIN` when nothing is queued (the glue sleeps unless `O_NONBLOCK`);
//! * `write` re-enables (unmasks) each listed port that this file bound and that is disabled;
//!   other ports are ignored, as in FreeBSD;
//! * only ports bound through this file can be unbound or notified (`ENOTCONN` otherwise).
//!
//! Differences, on purpose: every argument is validated before any hypercall (an unknown VIRQ,
//! a domain id or port that does not fit the ABI: `EINVAL`, nothing bound); state changes happen
//! only after the operation succeeded, and a bind whose bookkeeping fails is undone, so a failed
//! ioctl leaves nothing behind. (FreeBSD's C driver, as read, returns from the UNBIND and NOTIFY
//! error paths with its bind mutex held; the glue here holds no lock across the core, and the
//! core has no early exits that skip state restoration.) A file may bind at most
//! [`MAX_PORTS_PER_FILE`] ports (`ENOSPC`).

use alloc::vec::Vec;

use xen_sys::consts::evtchn::EVTCHN_FIFO_NR_CHANNELS;
use xen_sys::consts::Virq;

use crate::{BindOptions, Error, EventChannels, PageSource, Port, Token};
use xen_kmod::Hypervisor;

pub use xen_sys::freebsd::Errno;

/// Maps a core error to the errno user space sees.
#[must_use]
pub fn errno(e: Error) -> Errno {
    match e {
        Error::Xen(x) => Errno(x.to_freebsd_errno()),
        Error::NotBound(_) => Errno::ENOTCONN,
        Error::NoMemory => Errno::ENOMEM,
        Error::InvalidVcpu(_) | Error::InvalidArgument | Error::Unsupported => Errno::EINVAL,
        Error::PortOutOfRange(_) | Error::PortInUse(_) | Error::Memory(_) => Errno::EIO,
    }
}

use xen_sys::freebsd::ioccom::{ioc, iocparm_len, IOC_IN, IOC_OUT, IOC_VOID};

/// The evtchn ioctl group, `'E'`.
const GROUP: u32 = b'E' as u32;
/// The generic file ioctl group, `'f'`.
const FILE_GROUP: u32 = b'f' as u32;

/// `IOCTL_EVTCHN_BIND_VIRQ`: `_IOWR('E', 4, struct { u32 virq; u32 port; })`.
pub const IOCTL_EVTCHN_BIND_VIRQ: u32 = ioc(IOC_IN | IOC_OUT, GROUP, 4, 8);
/// `IOCTL_EVTCHN_BIND_INTERDOMAIN`: `_IOWR('E', 5, struct { u32 remote_domain, remote_port;
/// u32 port; })`.
pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: u32 = ioc(IOC_IN | IOC_OUT, GROUP, 5, 12);
/// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`: `_IOWR('E', 6, struct { u32 remote_domain; u32 port; })`.
pub const IOCTL_EVTCHN_BIND_UNBOUND_PORT: u32 = ioc(IOC_IN | IOC_OUT, GROUP, 6, 8);
/// `IOCTL_EVTCHN_UNBIND`: `_IOW('E', 7, struct { u32 port; })`.
pub const IOCTL_EVTCHN_UNBIND: u32 = ioc(IOC_IN, GROUP, 7, 4);
/// `IOCTL_EVTCHN_NOTIFY`: `_IOW('E', 8, struct { u32 port; })`.
pub const IOCTL_EVTCHN_NOTIFY: u32 = ioc(IOC_IN, GROUP, 8, 4);
/// `IOCTL_EVTCHN_RESET`: `_IO('E', 9)`.
pub const IOCTL_EVTCHN_RESET: u32 = ioc(IOC_VOID, GROUP, 9, 0);
/// `FIONBIO` (`_IOW('f', 126, int)`), handled by the upper layer: accepted.
pub const FIONBIO: u32 = ioc(IOC_IN, FILE_GROUP, 126, 4);
/// `FIOASYNC` (`_IOW('f', 125, int)`), handled by the upper layer: accepted.
pub const FIOASYNC: u32 = ioc(IOC_IN, FILE_GROUP, 125, 4);

/// Ports queued per file: a page of `evtchn_port_t`, as FreeBSD.
pub const RING_SIZE: usize = 1024;
/// Most ports one file may bind.
pub const MAX_PORTS_PER_FILE: usize = 4096;
/// Largest `read`/`write` transfer (a page), as FreeBSD.
const MAX_TRANSFER: usize = 4096;

fn get_u32(data: &[u8], at: usize) -> Result<u32, Errno> {
    let b = data.get(at..at + 4).ok_or(Errno::EINVAL)?;
    Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn put_u32(data: &mut [u8], at: usize, v: u32) -> Result<(), Errno> {
    data.get_mut(at..at + 4)
        .ok_or(Errno::EINVAL)?
        .copy_from_slice(&v.to_ne_bytes());
    Ok(())
}

fn domid(v: u32) -> Result<u16, Errno> {
    u16::try_from(v).map_err(|_| Errno::EINVAL)
}

/// One open file of `/dev/xen/evtchn`.
#[derive(Debug)]
pub struct EvtchnFile {
    token: Token,
    /// Ports bound through this file, sorted, with their "enabled" (unmasked) flag.
    ports: Vec<(Port, bool)>,
    ring: Vec<Port>,
    prod: u32,
    cons: u32,
    overflow: bool,
}

impl EvtchnFile {
    /// A new open file. `token` must be unique among open files: the glue routes events whose
    /// token is `token` to this file's [`EvtchnFile::deliver`].
    ///
    /// # Errors
    /// `ENOMEM`.
    pub fn new(token: Token) -> Result<Self, Errno> {
        let mut ring = Vec::new();
        ring.try_reserve_exact(RING_SIZE)
            .map_err(|_| Errno::ENOMEM)?;
        ring.resize(RING_SIZE, 0);
        Ok(EvtchnFile {
            token,
            ports: Vec::new(),
            ring,
            prod: 0,
            cons: 0,
            overflow: false,
        })
    }

    /// This file's token.
    #[must_use]
    pub fn token(&self) -> Token {
        self.token
    }

    /// Whether `port` was bound through this file.
    #[must_use]
    pub fn owns(&self, port: Port) -> bool {
        self.find(port).is_ok()
    }

    /// Ports bound through this file.
    pub fn ports(&self) -> impl Iterator<Item = Port> + '_ {
        self.ports.iter().map(|&(p, _)| p)
    }

    fn find(&self, port: Port) -> Result<usize, usize> {
        self.ports.binary_search_by_key(&port, |&(p, _)| p)
    }

    /// Handles an ioctl. `data` is the kernel copy of the argument (`IOCPARM_LEN(cmd)` bytes);
    /// results are written back into it.
    ///
    /// # Errors
    /// `ENOTTY` for unknown commands, `EINVAL` for malformed arguments, `ENOTCONN` for ports
    /// not bound here, `ENOSPC` beyond [`MAX_PORTS_PER_FILE`], or the hypercall's error. On any
    /// error nothing is bound, unbound or changed.
    pub fn ioctl<'a, H: Hypervisor, P: PageSource<'a>>(
        &mut self,
        ec: &mut EventChannels<'a, H, P>,
        cmd: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        // FreeBSD's ioctl(2) truncates the command to 32 bits; so do we, but refuse garbage in
        // the upper half rather than aliasing it onto a real command.
        let cmd = u32::try_from(cmd).map_err(|_| Errno::ENOTTY)?;
        let known = [
            IOCTL_EVTCHN_BIND_VIRQ,
            IOCTL_EVTCHN_BIND_INTERDOMAIN,
            IOCTL_EVTCHN_BIND_UNBOUND_PORT,
            IOCTL_EVTCHN_UNBIND,
            IOCTL_EVTCHN_NOTIFY,
            IOCTL_EVTCHN_RESET,
            FIONBIO,
            FIOASYNC,
        ];
        if !known.contains(&cmd) {
            return Err(Errno::ENOTTY);
        }
        if data.len() < iocparm_len(cmd) {
            return Err(Errno::EINVAL);
        }
        match cmd {
            IOCTL_EVTCHN_BIND_VIRQ => {
                let virq = Virq::try_from(get_u32(data, 0)?).map_err(|_| Errno::EINVAL)?;
                let port = self.bind(ec, |ec, opts| ec.bind_virq(virq, 0, opts))?;
                put_u32(data, 4, port)
            }
            IOCTL_EVTCHN_BIND_INTERDOMAIN => {
                let remote = domid(get_u32(data, 0)?)?;
                let remote_port = get_u32(data, 4)?;
                if remote_port == 0 || remote_port >= EVTCHN_FIFO_NR_CHANNELS {
                    return Err(Errno::EINVAL);
                }
                let port = self.bind(ec, |ec, opts| {
                    ec.bind_interdomain(remote, remote_port, opts)
                })?;
                put_u32(data, 8, port)
            }
            IOCTL_EVTCHN_BIND_UNBOUND_PORT => {
                let remote = domid(get_u32(data, 0)?)?;
                let port = self.bind(ec, |ec, opts| ec.alloc_unbound(remote, opts))?;
                put_u32(data, 4, port)
            }
            IOCTL_EVTCHN_UNBIND => {
                let port = get_u32(data, 0)?;
                let i = self.find(port).map_err(|_| Errno::ENOTCONN)?;
                self.ports.remove(i);
                // `close` forgets the port even when the close hypercall fails, so the file and
                // the core agree either way; the error is still reported.
                ec.close(port).map_err(errno)
            }
            IOCTL_EVTCHN_NOTIFY => {
                let port = get_u32(data, 0)?;
                self.find(port).map_err(|_| Errno::ENOTCONN)?;
                ec.notify(port).map_err(errno)
            }
            IOCTL_EVTCHN_RESET => {
                self.prod = 0;
                self.cons = 0;
                self.overflow = false;
                Ok(())
            }
            // FIONBIO / FIOASYNC: handled by the upper layer.
            _ => Ok(()),
        }
    }

    /// Binds through `f` with this file's options, then records the port. Room is reserved
    /// first so that recording cannot fail after the hypercall succeeded.
    fn bind<'a, H: Hypervisor, P: PageSource<'a>>(
        &mut self,
        ec: &mut EventChannels<'a, H, P>,
        f: impl FnOnce(&mut EventChannels<'a, H, P>, BindOptions) -> Result<Port, Error>,
    ) -> Result<Port, Errno> {
        if self.ports.len() >= MAX_PORTS_PER_FILE {
            return Err(Errno::ENOSPC);
        }
        self.ports.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
        let opts = BindOptions {
            auto_mask: true,
            ..BindOptions::new(self.token)
        };
        let port = f(ec, opts).map_err(errno)?;
        match self.find(port) {
            Ok(_) => {
                // The core accepted a port this file already lists: impossible unless the
                // core's table and ours diverged. Undo the new binding; report it.
                let _ = ec.close(port);
                Err(Errno::EIO)
            }
            Err(i) => {
                self.ports.insert(i, (port, true));
                Ok(port)
            }
        }
    }

    /// An event for one of this file's ports (the core already masked it: `auto_mask`).
    /// Returns `true` when readers should be woken (the ring was empty).
    pub fn deliver(&mut self, port: Port) -> bool {
        let Ok(i) = self.find(port) else {
            return false;
        };
        self.ports[i].1 = false;
        let used = self.prod.wrapping_sub(self.cons) as usize;
        if used >= RING_SIZE {
            self.overflow = true;
            return false;
        }
        self.ring[self.prod as usize % RING_SIZE] = port;
        self.prod = self.prod.wrapping_add(1);
        used == 0
    }

    /// Whether `read` would return data (for poll/select).
    #[must_use]
    pub fn readable(&self) -> bool {
        self.prod != self.cons
    }

    /// Whether the ring overflowed (until `IOCTL_EVTCHN_RESET`).
    #[must_use]
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Copies queued ports into `buf` as native-endian `u32`s; returns the bytes written.
    ///
    /// # Errors
    /// `EFBIG` after an overflow; `EAGAIN` when nothing is queued (the glue sleeps and retries
    /// unless the file is non-blocking).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
        let count = (buf.len() & !3).min(MAX_TRANSFER);
        if count == 0 {
            return Ok(0);
        }
        if self.overflow {
            return Err(Errno::EFBIG);
        }
        let avail = self.prod.wrapping_sub(self.cons) as usize;
        if avail == 0 {
            return Err(Errno::EAGAIN);
        }
        let n = avail.min(count / 4);
        for (k, chunk) in buf.chunks_exact_mut(4).take(n).enumerate() {
            let slot = (self.cons as usize + k) % RING_SIZE;
            chunk.copy_from_slice(&self.ring[slot].to_ne_bytes());
        }
        // CAST: n ≤ RING_SIZE.
        self.cons = self.cons.wrapping_add(u32::try_from(n).unwrap_or(0));
        Ok(n * 4)
    }

    /// Re-enables the listed ports (native-endian `u32`s) that this file bound and that are
    /// disabled; others are ignored. Returns the bytes consumed.
    ///
    /// # Errors
    /// None for unknown ports; an unmask hypercall failure is reported (ports before it were
    /// re-enabled, the failing one stays disabled and may be written again).
    pub fn write<'a, H: Hypervisor, P: PageSource<'a>>(
        &mut self,
        ec: &mut EventChannels<'a, H, P>,
        data: &[u8],
    ) -> Result<usize, Errno> {
        let count = (data.len() & !3).min(MAX_TRANSFER);
        for chunk in data[..count].chunks_exact(4) {
            let port = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let Ok(i) = self.find(port) else { continue };
            if self.ports[i].1 {
                continue;
            }
            ec.unmask(port).map_err(errno)?;
            self.ports[i].1 = true;
        }
        Ok(count)
    }

    /// Unbinds every port of this file (close(2) of the last descriptor). Keeps going past
    /// failures so nothing stays bound.
    pub fn release<'a, H: Hypervisor, P: PageSource<'a>>(
        &mut self,
        ec: &mut EventChannels<'a, H, P>,
    ) {
        for (port, _) in self.ports.drain(..) {
            let _ = ec.close(port);
        }
        self.prod = 0;
        self.cons = 0;
        self.overflow = false;
    }
}
