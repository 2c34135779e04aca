//! `/dev/xen/privcmd`: the device logic, platform-neutral, with FreeBSD's ioctl ABI.
//!
//! The toolstack (`libxencall`, `libxenforeignmemory`, `libxendevicemodel` built for FreeBSD:
//! `xl`, qemu, xenstored) uses the device to issue hypercalls, to map other domains' memory
//! into its address space and to drive device models. The ABI is FreeBSD's
//! `sys/xen/privcmd.h` (group `'E'`, numbers 0–4, FreeBSD's `_IOC` encoding, both data
//! models), so those tools work unchanged:
//!
//! | ioctl | here |
//! |---|---|
//! | `IOCTL_PRIVCMD_HYPERCALL` | control domain only, unrestricted files only, op validated (below) |
//! | `IOCTL_PRIVCMD_MMAPBATCH` | foreign frames into an mmapped region via `XENMEM_add_to_physmap_batch` / `XENMAPSPACE_gmfn_foreign`; per-entry FreeBSD errno in the user's `err` array |
//! | `IOCTL_PRIVCMD_MMAP_RESOURCE` | `XENMEM_acquire_resource`; `num == addr == 0` queries the size |
//! | `IOCTL_PRIVCMD_DM_OP` | `HYPERVISOR_dm_op`, at most [`abi::MAX_DMOP_BUFFERS`] buffers |
//! | `IOCTL_PRIVCMD_RESTRICT` | the file may only name that domain from now on |
//!
//! # How hypercalls cross the seam (the choice, and why)
//!
//! `IOCTL_PRIVCMD_HYPERCALL` is *decoded*: the op and its arguments are turned into the
//! typed call enums of [`crate::hypervisor`] (arguments copied in from user memory, results
//! copied back), so the same code runs against `xensim` and no user pointer reaches the seam.
//! What is decoded: `xen_version` (version, extraversion, capabilities, get_features,
//! pagesize, guest_handle), `memory_op` (current/maximum reservation, maximum_gpfn),
//! `hvm_op` (get_param; set_param of *another* domain), `event_channel_op` (alloc_unbound in
//! *another* domain, as libxl does for a guest's console and xenstore ports). Families that
//! act on the calling kernel's own state (event channels otherwise, grant tables, sched,
//! vcpu, callbacks, MMU, console...) are refused with `EPERM`: user space issuing them
//! behind the kernel's back would corrupt the kernel's port table, grant table or vCPU state.
//! Op numbers beyond the hypercall page (≥ 128) are `EINVAL` — FreeBSD's C driver indexes the
//! page with the unchecked user value. The rest (`domctl`, `sysctl`, `physdev_op`,
//! `platform_op`...) carry pointer-rich, version-dependent structures that cannot be typed
//! here; they go to [`PrivcmdHypervisor::privcmd_op`] as [`PrivcmdOp::Raw`], which by default
//! is `ENOSYS` (a platform that can trap with user pointers — SMAP off around the call, as
//! FreeBSD does — may implement it in its unsafe arch layer).
//!
//! The other hypercalls privcmd needs and the [`crate::Hypervisor`] seam does not have
//! (`add_to_physmap_batch` with a foreign space, `acquire_resource`, `dm_op`) are one more
//! typed enum, [`PrivcmdOp`], behind the extension trait [`PrivcmdHypervisor`] whose method
//! defaults to `ENOSYS`; so every existing implementor of the seam keeps compiling and
//! refuses privcmd cleanly until it opts in.
//!
//! # Regions
//!
//! FreeBSD's `d_mmap_single` gives every mmap of the device a fresh pseudo-physical range; the
//! ioctls then fill the range that the user's `addr` names. Here [`Privcmd::mmap`] reserves the
//! range through [`PrivcmdPlatform`] and returns a [`RegionId`] the glue's VM object keeps;
//! [`UserContext::lookup_vaddr`] tells which region is mapped at an address; the pager asks
//! [`Privcmd::fault`] for the frame of a page; the VM object's destructor calls
//! [`Privcmd::region_released`], which removes every mapped frame from the physmap and
//! gives the range back.
//!
//! # Differences from the C driver, each deliberate
//!
//! * Every count, address, domid and size is validated before any hypercall (`num ≤ 0`, a
//!   domid ≥ `DOMID_FIRST_RESERVED`, an argument of the wrong size: `EINVAL`).
//! * A region is filled once (`EBUSY` after that); the C driver lets a second batch leak the
//!   first one's p2m entries.
//! * A batch that fails half-way (hypercall error, fault on the user's arrays) removes the
//!   frames it mapped; the C driver leaves them in the p2m until... never (its destructor only
//!   unmaps regions marked mapped).
//! * The resource-size query writes the size into the ioctl argument (copied out by the ioctl
//!   layer, as `_IOWR` says); the C driver `copyout`s to the kernel copy's address.
//! * `IOCTL_PRIVCMD_RESTRICT` to a second domain is `EINVAL` (the C driver returns
//!   `-EINVAL`, a negative errno).
//! * `IOCTL_PRIVCMD_DM_OP` buffers are copied into the kernel and handed to the hypervisor
//!   there (and copied back afterwards): Xen reads one stable copy, so user space changing
//!   them during the call has no effect (no double fetch), and each is at most
//!   [`abi::MAX_DMOP_BUF_SIZE`] bytes (`E2BIG`), as Linux bounds them.
//!
//! Unknown ioctl commands are `ENOSYS`, as in the C driver. Nothing here panics on user or
//! hypervisor input.
//!
//! # Concurrency
//!
//! Methods take `&mut self`; the FreeBSD glue serialises them with one `sx(9)` lock (ioctls
//! copy in and out and make hypercalls).

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use xen_sys::native::{
    domid_t, evtchn_alloc_unbound, xen_capabilities_info_t, xen_domain_handle_t,
    xen_extraversion_t, xen_feature_info, xen_hvm_param,
};

use crate::{EventChannelOp, HvmOp, Hypervisor, MemoryOp, XenError, XenVersionOp, DOMID_SELF};

pub use xen_sys::freebsd::Errno;

impl From<XenError> for Errno {
    fn from(e: XenError) -> Errno {
        Errno(e.to_freebsd_errno())
    }
}

/// FreeBSD's `sys/xen/privcmd.h` and `sys/sys/ioccom.h`: command numbers and layouts.
pub mod abi {
    pub use xen_sys::freebsd::ioccom::{
        ioc, iocparm_len, IOCPARM_MASK, IOC_IN, IOC_INOUT, IOC_OUT,
    };
    pub use xen_sys::freebsd::privcmd::GROUP;

    /// `MAX_DMOP_BUFFERS` of the C driver.
    pub const MAX_DMOP_BUFFERS: u32 = 16;
    /// Largest `IOCTL_PRIVCMD_DM_OP` buffer (Linux's `privcmd_dm_op_buf_max_size`).
    pub const MAX_DMOP_BUF_SIZE: u64 = 4096;
    /// `DOMID_FIRST_RESERVED`: domids from here up name no real domain.
    pub const DOMID_FIRST_RESERVED: u16 = 0x7ff0;
    /// `DOMID_INVALID`: an unrestricted file (xen.h; a cast macro bindgen cannot translate).
    pub const DOMID_INVALID: u16 = 0x7ff4;
    /// Slots of the hypercall page (4096 / 32): larger op numbers do not exist.
    pub const HYPERCALL_PAGE_SLOTS: u64 = 128;

    /// The user process's data model, shared by every device (`xen_sys::freebsd::Abi`); its
    /// privcmd layouts and command numbers are in `xen_sys::freebsd::privcmd`.
    pub use xen_sys::freebsd::Abi;
}

use abi::Abi;

const PAGE_SIZE: u64 = 4096;
/// Entries per `add_to_physmap_batch` call (its `size` is a `uint16_t`; smaller keeps the
/// kernel's temporary arrays to a few pages).
const BATCH_CHUNK: usize = 512;

/// The typed hypercalls privcmd needs beyond the [`Hypervisor`] seam.
///
/// As in the seam, buffers are slices the implementation points Xen's guest handles at; no
/// variant carries a user address except [`PrivcmdOp::Raw`].
pub enum PrivcmdOp<'a> {
    /// `XENMEM_add_to_physmap_batch` (`add_to_physmap_range` in FreeBSD's headers) with
    /// `domid = DOMID_SELF`, `space = XENMAPSPACE_gmfn_foreign`: map frame `idxs[i]` of
    /// `foreign_domid` at our `gpfns[i]`. Per-entry OUT: `errs[i]` = 0 or Xen's `-errno`. The
    /// three slices have the same length, at most `u16::MAX`.
    MapForeign {
        /// The domain whose frames are mapped.
        foreign_domid: domid_t,
        /// Its frame numbers.
        idxs: &'a [u64],
        /// Where they go in our physmap.
        gpfns: &'a [u64],
        /// Per-entry results.
        errs: &'a mut [i32],
    },
    /// `XENMEM_acquire_resource`. With an empty `frames`: OUT `nr_frames` = the resource's
    /// size. Otherwise map frames `frame .. frame + frames.len()` of the resource at our
    /// `frames[i]` (IN: the GFNs).
    AcquireResource {
        /// Target domain.
        domid: domid_t,
        /// `XENMEM_resource_*`.
        type_: u16,
        /// Type-specific id.
        id: u32,
        /// First frame of the resource.
        frame: u64,
        /// IN/OUT, see above.
        nr_frames: &'a mut u32,
        /// Our GFNs.
        frames: &'a [u64],
    },
    /// `HYPERVISOR_dm_op(domid, nr_bufs, bufs)`, over kernel copies of the buffers (Xen may
    /// write results into them).
    DmOp {
        /// Target domain.
        domid: domid_t,
        /// The buffers.
        bufs: &'a mut [Vec<u8>],
    },
    /// A hypercall the device cannot type, with the user's own arguments (user addresses).
    Raw {
        /// `__HYPERVISOR_*`.
        op: u64,
        /// Arguments as the user passed them.
        args: [u64; 5],
    },
}

impl fmt::Debug for PrivcmdOp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            PrivcmdOp::MapForeign { .. } => "MapForeign",
            PrivcmdOp::AcquireResource { .. } => "AcquireResource",
            PrivcmdOp::DmOp { .. } => "DmOp",
            PrivcmdOp::Raw { .. } => "Raw",
        };
        write!(f, "PrivcmdOp::{name}")
    }
}

/// The hypervisor as privcmd needs it: the seam plus [`PrivcmdOp`].
pub trait PrivcmdHypervisor: Hypervisor {
    /// Performs a [`PrivcmdOp`]. The default refuses everything with `ENOSYS`.
    ///
    /// # Errors
    /// Xen's `-errno` for the call as a whole (per-entry results of
    /// [`PrivcmdOp::MapForeign`] are in `errs`).
    fn privcmd_op(&self, op: PrivcmdOp<'_>) -> Result<u64, XenError> {
        let _ = op;
        Err(XenError::ENOSYS)
    }
}

impl<H: PrivcmdHypervisor + ?Sized> PrivcmdHypervisor for &H {
    fn privcmd_op(&self, op: PrivcmdOp<'_>) -> Result<u64, XenError> {
        (**self).privcmd_op(op)
    }
}

/// Kernel services for regions.
pub trait PrivcmdPlatform {
    /// Reserves `count` contiguous unpopulated guest frames (FreeBSD: `xenmem_alloc`); the
    /// first one.
    fn reserve_gfns(&mut self, count: u64) -> Option<u64>;
    /// Returns a range from [`PrivcmdPlatform::reserve_gfns`].
    fn release_gfns(&mut self, start: u64, count: u64);
}

/// A region (an mmap of the device), as the glue's VM object names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionId(u64);

/// An open file of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(u64);

/// The calling process.
pub trait UserContext {
    /// `copyin(9)`.
    ///
    /// # Errors
    /// `EFAULT` for a bad address.
    fn copyin(&mut self, addr: u64, dst: &mut [u8]) -> Result<(), Errno>;
    /// `copyout(9)`.
    ///
    /// # Errors
    /// `EFAULT` for a bad address.
    fn copyout(&mut self, addr: u64, src: &[u8]) -> Result<(), Errno>;
    /// The privcmd region of the map entry containing `vaddr`: `(region, entry start, entry
    /// length in bytes)`; `None` when `vaddr` is not in a privcmd mapping.
    fn lookup_vaddr(&mut self, vaddr: u64) -> Option<(RegionId, u64, u64)>;
}

/// Device settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// This kernel runs in the control domain (`IOCTL_PRIVCMD_HYPERCALL` is refused
    /// otherwise).
    pub control_domain: bool,
    /// Our own domid (0 in Dom0), to refuse hypercalls aimed at ourselves.
    pub own_domid: domid_t,
    /// Pages one region may have (a larger mmap is `EINVAL`).
    pub max_region_pages: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            control_domain: true,
            own_domid: 0,
            max_region_pages: 1 << 18,
        }
    }
}

/// Counters, for sysctl and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrivcmdStats {
    /// Frames currently mapped in regions.
    pub mapped_frames: u64,
    /// Batch entries the hypervisor refused (reported in `err`).
    pub failed_entries: u64,
    /// Frames removed again because their batch failed part-way.
    pub unwound_frames: u64,
    /// Frames that could not be removed from the physmap at release (left reserved).
    pub stuck_frames: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageState {
    Empty,
    Mapped,
    Failed,
}

#[derive(Debug)]
struct Region {
    base_gfn: u64,
    pages: Vec<PageState>,
    filled: bool,
}

#[derive(Debug)]
struct File {
    /// `IOCTL_PRIVCMD_RESTRICT`ed to this domain.
    restrict: Option<domid_t>,
}

/// The device: open files and live regions.
#[derive(Debug)]
pub struct Privcmd<P: PrivcmdPlatform> {
    platform: P,
    cfg: Config,
    files: BTreeMap<FileId, File>,
    regions: BTreeMap<RegionId, Region>,
    next_id: u64,
    stats: PrivcmdStats,
}

fn get(b: &[u8], at: usize, n: usize) -> Result<u64, Errno> {
    let s = b.get(at..at + n).ok_or(Errno::EINVAL)?;
    let mut w = [0u8; 8];
    w.get_mut(..n).ok_or(Errno::EINVAL)?.copy_from_slice(s);
    Ok(u64::from_le_bytes(w))
}
fn get_u16(b: &[u8], at: usize) -> Result<u16, Errno> {
    u16::try_from(get(b, at, 2)?).map_err(|_| Errno::EINVAL)
}
fn get_u32(b: &[u8], at: usize) -> Result<u32, Errno> {
    u32::try_from(get(b, at, 4)?).map_err(|_| Errno::EINVAL)
}
fn get_word(abi: Abi, b: &[u8], at: usize) -> Result<u64, Errno> {
    get(b, at, abi.word())
}
fn put(b: &mut [u8], at: usize, n: usize, v: u64) -> Result<(), Errno> {
    let bytes = v.to_le_bytes();
    b.get_mut(at..at + n)
        .ok_or(Errno::EINVAL)?
        .copy_from_slice(bytes.get(..n).ok_or(Errno::EINVAL)?);
    Ok(())
}
/// A `long` result in the user's data model (two's complement, truncated to the word).
fn put_word(abi: Abi, b: &mut [u8], at: usize, v: u64) -> Result<(), Errno> {
    put(b, at, abi.word(), v)
}

/// A domid the user named: a real domain (not reserved, not ourselves).
fn foreign_domid(cfg: &Config, dom: u64) -> Result<domid_t, Errno> {
    let d = u16::try_from(dom).map_err(|_| Errno::EINVAL)?;
    if d >= abi::DOMID_FIRST_RESERVED || d == cfg.own_domid {
        return Err(Errno::EINVAL);
    }
    Ok(d)
}

fn c_chars_to_bytes(src: &[core::ffi::c_char]) -> Vec<u8> {
    src.iter()
        .map(|&c| u8::from_ne_bytes(c.to_ne_bytes()))
        .collect()
}

impl<P: PrivcmdPlatform> Privcmd<P> {
    /// A device over `platform`.
    pub fn new(platform: P, cfg: Config) -> Self {
        Privcmd {
            platform,
            cfg,
            files: BTreeMap::new(),
            regions: BTreeMap::new(),
            next_id: 1,
            stats: PrivcmdStats::default(),
        }
    }

    /// The platform services.
    pub fn platform(&mut self) -> &mut P {
        &mut self.platform
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> PrivcmdStats {
        self.stats
    }

    /// Live regions.
    #[must_use]
    pub fn regions(&self) -> usize {
        self.regions.len()
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// `open(2)`: an unrestricted file.
    pub fn open(&mut self) -> FileId {
        let id = FileId(self.id());
        self.files.insert(id, File { restrict: None });
        id
    }

    /// Last `close(2)`. Regions live on with their VM objects.
    pub fn close(&mut self, file: FileId) {
        self.files.remove(&file);
    }

    /// The domain a file is restricted to.
    #[must_use]
    pub fn restriction(&self, file: FileId) -> Option<domid_t> {
        self.files.get(&file).and_then(|f| f.restrict)
    }

    /// `mmap(2)` of `size` bytes (the glue's `d_mmap_single`): a fresh region backed by a
    /// reserved, still empty range of guest frames.
    ///
    /// # Errors
    /// `EINVAL` for a size that is 0, not page-aligned or above the limit; `ENOMEM` when no
    /// range can be reserved.
    pub fn mmap(&mut self, size: u64) -> Result<RegionId, Errno> {
        if size == 0 || size % PAGE_SIZE != 0 || size / PAGE_SIZE > self.cfg.max_region_pages {
            return Err(Errno::EINVAL);
        }
        let count = size / PAGE_SIZE;
        let n = usize::try_from(count).map_err(|_| Errno::EINVAL)?;
        let mut pages = Vec::new();
        pages.try_reserve_exact(n).map_err(|_| Errno::ENOMEM)?;
        pages.resize(n, PageState::Empty);
        let base_gfn = self.platform.reserve_gfns(count).ok_or(Errno::ENOMEM)?;
        let id = RegionId(self.id());
        self.regions.insert(
            id,
            Region {
                base_gfn,
                pages,
                filled: false,
            },
        );
        Ok(id)
    }

    /// The pager: the guest frame backing page `index` of a region, if it was mapped
    /// successfully (a failed or unfilled page faults, `VM_PAGER_FAIL`).
    #[must_use]
    pub fn fault(&self, region: RegionId, index: u64) -> Option<u64> {
        let r = self.regions.get(&region)?;
        let i = usize::try_from(index).ok()?;
        (r.filled && r.pages.get(i) == Some(&PageState::Mapped)).then(|| r.base_gfn + index)
    }

    /// The glue's VM object of `region` went away: its frames leave the physmap and the range
    /// is given back. A frame Xen refuses to remove stays reserved (counted) so it is never
    /// reused while something may still be mapped there.
    pub fn region_released<H: PrivcmdHypervisor>(&mut self, hv: &H, region: RegionId) {
        let Some(r) = self.regions.remove(&region) else {
            return;
        };
        let mut stuck = 0;
        for (i, s) in (0u64..).zip(&r.pages) {
            if *s == PageState::Mapped {
                if remove_frame(hv, r.base_gfn + i).is_err() {
                    stuck += 1;
                }
                self.stats.mapped_frames = self.stats.mapped_frames.saturating_sub(1);
            }
        }
        self.stats.stuck_frames += stuck;
        if stuck == 0 {
            self.platform.release_gfns(r.base_gfn, r.pages.len() as u64);
        }
    }

    /// `ioctl(2)`. `data` is the argument the kernel copied in (exactly `IOCPARM_LEN(cmd)`
    /// bytes); results are written back into it.
    ///
    /// # Errors
    /// FreeBSD errno values: `ENOSYS` for an unknown command, `EINVAL` for malformed
    /// arguments, `EPERM` for a restricted file or a refused hypercall, `EFAULT`, `E2BIG`,
    /// `EBUSY`, or the hypervisor's error translated. On error nothing the call mapped
    /// remains.
    pub fn ioctl<H: PrivcmdHypervisor>(
        &mut self,
        hv: &H,
        file: FileId,
        abi: Abi,
        cmd: u32,
        data: &mut [u8],
        user: &mut dyn UserContext,
    ) -> Result<(), Errno> {
        let restrict = self.files.get(&file).ok_or(Errno::EINVAL)?.restrict;
        let known = [
            abi.hypercall(),
            abi.mmapbatch(),
            abi.mmap_resource(),
            abi.dm_op(),
            abi.restrict(),
        ];
        if !known.contains(&cmd) {
            return Err(Errno::ENOSYS);
        }
        if data.len() != abi::iocparm_len(cmd) {
            return Err(Errno::EINVAL);
        }
        let allowed = |dom: u64| match restrict {
            Some(r) if u64::from(r) != dom => Err(Errno::EPERM),
            _ => Ok(()),
        };
        if cmd == abi.hypercall() {
            if restrict.is_some() || !self.cfg.control_domain {
                return Err(Errno::EPERM);
            }
            self.hypercall(hv, abi, data, user)
        } else if cmd == abi.mmapbatch() {
            allowed(get(data, 4, 2)?)?;
            self.mmapbatch(hv, abi, data, user)
        } else if cmd == abi.mmap_resource() {
            allowed(get(data, 0, 2)?)?;
            self.mmap_resource(hv, abi, data, user)
        } else if cmd == abi.dm_op() {
            allowed(get(data, 0, 2)?)?;
            self.dm_op(hv, abi, data, user)
        } else {
            let dom = get_u16(data, 0)?;
            if dom >= abi::DOMID_FIRST_RESERVED {
                return Err(Errno::EINVAL);
            }
            let f = self.files.get_mut(&file).ok_or(Errno::EINVAL)?;
            match f.restrict {
                Some(r) if r != dom => Err(Errno::EINVAL),
                _ => {
                    f.restrict = Some(dom);
                    Ok(())
                }
            }
        }
    }

    fn hypercall<H: PrivcmdHypervisor>(
        &mut self,
        hv: &H,
        abi: Abi,
        data: &mut [u8],
        user: &mut dyn UserContext,
    ) -> Result<(), Errno> {
        let w = abi.word();
        let op = get_word(abi, data, 0)?;
        let mut args = [0u64; 5];
        for (i, a) in args.iter_mut().enumerate() {
            *a = get_word(abi, data, (1 + i) * w)?;
        }
        if op >= abi::HYPERCALL_PAGE_SLOTS {
            return Err(Errno::EINVAL);
        }
        let result = self.decoded_hypercall(hv, op, args, user);
        let retval_at = 6 * w;
        match result {
            Ok(v) => put_word(abi, data, retval_at, v),
            Err(e) => {
                put_word(abi, data, retval_at, 0)?;
                Err(e)
            }
        }
    }

    fn decoded_hypercall<H: PrivcmdHypervisor>(
        &self,
        hv: &H,
        op: u64,
        args: [u64; 5],
        user: &mut dyn UserContext,
    ) -> Result<u64, Errno> {
        use xen_sys::native as x;
        let [cmd, arg, ..] = args;
        let not_self = |d: domid_t| d != DOMID_SELF && d != self.cfg.own_domid;
        match u32::try_from(op).map_err(|_| Errno::EINVAL)? {
            x::__HYPERVISOR_xen_version => match u32::try_from(cmd).unwrap_or(u32::MAX) {
                x::XENVER_version => Ok(hv.xen_version(XenVersionOp::Version)?),
                x::XENVER_pagesize => Ok(hv.xen_version(XenVersionOp::PageSize)?),
                x::XENVER_extraversion => {
                    let mut v: xen_extraversion_t = [0; 16];
                    let r = hv.xen_version(XenVersionOp::ExtraVersion(&mut v))?;
                    user.copyout(arg, &c_chars_to_bytes(&v))?;
                    Ok(r)
                }
                x::XENVER_capabilities => {
                    let mut v: xen_capabilities_info_t = [0; 1024];
                    let r = hv.xen_version(XenVersionOp::Capabilities(&mut v))?;
                    user.copyout(arg, &c_chars_to_bytes(&v))?;
                    Ok(r)
                }
                x::XENVER_guest_handle => {
                    let mut v: xen_domain_handle_t = [0; 16];
                    let r = hv.xen_version(XenVersionOp::GuestHandle(&mut v))?;
                    user.copyout(arg, &v)?;
                    Ok(r)
                }
                x::XENVER_get_features => {
                    let mut b = [0u8; 8];
                    user.copyin(arg, &mut b)?;
                    let mut fi = xen_feature_info {
                        submap_idx: get_u32(&b, 0)?,
                        submap: 0,
                    };
                    let r = hv.xen_version(XenVersionOp::GetFeatures(&mut fi))?;
                    put(&mut b, 4, 4, u64::from(fi.submap))?;
                    user.copyout(arg, &b)?;
                    Ok(r)
                }
                _ => Err(Errno::ENOSYS),
            },
            x::__HYPERVISOR_memory_op => {
                let mut b = [0u8; 2];
                let sub = u32::try_from(cmd).unwrap_or(u32::MAX);
                let known = [
                    x::XENMEM_current_reservation,
                    x::XENMEM_maximum_reservation,
                    x::XENMEM_maximum_gpfn,
                ];
                if !known.contains(&sub) {
                    return hv
                        .privcmd_op(PrivcmdOp::Raw { op, args })
                        .map_err(Errno::from);
                }
                user.copyin(arg, &mut b)?;
                let mut dom = u16::from_le_bytes(b);
                let call = match sub {
                    x::XENMEM_current_reservation => MemoryOp::CurrentReservation(&mut dom),
                    x::XENMEM_maximum_reservation => MemoryOp::MaximumReservation(&mut dom),
                    _ => MemoryOp::MaximumGpfn(&mut dom),
                };
                Ok(hv.memory_op(call)?)
            }
            x::__HYPERVISOR_hvm_op => {
                let sub = u32::try_from(cmd).unwrap_or(u32::MAX);
                if sub != x::HVMOP_get_param && sub != x::HVMOP_set_param {
                    return hv
                        .privcmd_op(PrivcmdOp::Raw { op, args })
                        .map_err(Errno::from);
                }
                let mut b = [0u8; 16];
                user.copyin(arg, &mut b)?;
                let mut p = xen_hvm_param {
                    domid: get_u16(&b, 0)?,
                    index: get_u32(&b, 4)?,
                    value: get(&b, 8, 8)?,
                    ..Default::default()
                };
                if sub == x::HVMOP_set_param {
                    if !not_self(p.domid) {
                        return Err(Errno::EPERM);
                    }
                    hv.hvm_op(HvmOp::SetParam(&mut p))?;
                } else {
                    hv.hvm_op(HvmOp::GetParam(&mut p))?;
                    put(&mut b, 8, 8, p.value)?;
                    user.copyout(arg, &b)?;
                }
                Ok(0)
            }
            x::__HYPERVISOR_event_channel_op => {
                if u32::try_from(cmd).ok() != Some(x::EVTCHNOP_alloc_unbound) {
                    return Err(Errno::EPERM);
                }
                let mut b = [0u8; 8];
                user.copyin(arg, &mut b)?;
                let mut a = evtchn_alloc_unbound {
                    dom: get_u16(&b, 0)?,
                    remote_dom: get_u16(&b, 2)?,
                    port: 0,
                };
                if !not_self(a.dom) {
                    return Err(Errno::EPERM);
                }
                hv.event_channel_op(EventChannelOp::AllocUnbound(&mut a))?;
                put(&mut b, 4, 4, u64::from(a.port))?;
                user.copyout(arg, &b)?;
                Ok(0)
            }
            // The calling kernel's own state: never from user space.
            x::__HYPERVISOR_set_trap_table
            | x::__HYPERVISOR_mmu_update
            | x::__HYPERVISOR_set_gdt
            | x::__HYPERVISOR_stack_switch
            | x::__HYPERVISOR_set_callbacks
            | x::__HYPERVISOR_fpu_taskswitch
            | x::__HYPERVISOR_sched_op_compat
            | x::__HYPERVISOR_set_debugreg
            | x::__HYPERVISOR_get_debugreg
            | x::__HYPERVISOR_update_descriptor
            | x::__HYPERVISOR_multicall
            | x::__HYPERVISOR_update_va_mapping
            | x::__HYPERVISOR_set_timer_op
            | x::__HYPERVISOR_event_channel_op_compat
            | x::__HYPERVISOR_console_io
            | x::__HYPERVISOR_physdev_op_compat
            | x::__HYPERVISOR_grant_table_op
            | x::__HYPERVISOR_vm_assist
            | x::__HYPERVISOR_update_va_mapping_otherdomain
            | x::__HYPERVISOR_iret
            | x::__HYPERVISOR_vcpu_op
            | x::__HYPERVISOR_set_segment_base
            | x::__HYPERVISOR_mmuext_op
            | x::__HYPERVISOR_nmi_op
            | x::__HYPERVISOR_sched_op
            | x::__HYPERVISOR_callback_op => Err(Errno::EPERM),
            _ => hv
                .privcmd_op(PrivcmdOp::Raw { op, args })
                .map_err(Errno::from),
        }
    }

    /// The region mapped exactly at `[addr, addr + pages * 4096)`, not yet filled.
    fn target_region(
        &self,
        addr: u64,
        pages: u64,
        user: &mut dyn UserContext,
    ) -> Result<RegionId, Errno> {
        if pages == 0 || addr % PAGE_SIZE != 0 || pages > self.cfg.max_region_pages {
            return Err(Errno::EINVAL);
        }
        let (id, start, len) = user.lookup_vaddr(addr).ok_or(Errno::EINVAL)?;
        let r = self.regions.get(&id).ok_or(Errno::EINVAL)?;
        if start != addr
            || Some(len) != pages.checked_mul(PAGE_SIZE)
            || r.pages.len() as u64 != pages
        {
            return Err(Errno::EINVAL);
        }
        if r.filled {
            return Err(Errno::EBUSY);
        }
        Ok(id)
    }

    fn mmapbatch<H: PrivcmdHypervisor>(
        &mut self,
        hv: &H,
        abi: Abi,
        data: &mut [u8],
        user: &mut dyn UserContext,
    ) -> Result<(), Errno> {
        let w = abi.word();
        // CAST: the C `int num`, reinterpreted from its two's-complement bytes.
        let num = i32::from_le_bytes(get_u32(data, 0)?.to_le_bytes());
        let dom = foreign_domid(&self.cfg, get(data, 4, 2)?)?;
        let addr = get_word(abi, data, 8)?;
        let arr = get_word(abi, data, 8 + w)?;
        let err = get_word(abi, data, 8 + 2 * w)?;
        let num = u64::try_from(num).map_err(|_| Errno::EINVAL)?;
        let id = self.target_region(addr, num, user)?;
        let base = self.regions.get(&id).ok_or(Errno::EINVAL)?.base_gfn;
        let n = usize::try_from(num).map_err(|_| Errno::EINVAL)?;

        let mut states = vec![PageState::Empty; n];
        let mut raw = vec![0u8; BATCH_CHUNK.min(n) * w];
        let mut failure = None;
        let mut index = 0usize;
        while index < n {
            let count = BATCH_CHUNK.min(n - index);
            let chunk_raw = raw.get_mut(..count * w).ok_or(Errno::EINVAL)?;
            let arr_at = arr.checked_add((index * w) as u64).ok_or(Errno::EFAULT);
            if let Err(e) = arr_at.and_then(|a| user.copyin(a, chunk_raw)) {
                failure = Some(e);
                break;
            }
            let mut idxs = Vec::with_capacity(count);
            for i in 0..count {
                idxs.push(get(chunk_raw, i * w, w)?);
            }
            let gpfns: Vec<u64> = (0..count as u64).map(|i| base + index as u64 + i).collect();
            let mut errs = vec![0i32; count];
            let r = hv.privcmd_op(PrivcmdOp::MapForeign {
                foreign_domid: dom,
                idxs: &idxs,
                gpfns: &gpfns,
                errs: &mut errs,
            });
            if let Err(e) = r {
                // Xen may have mapped some entries before failing: note them for the unwind.
                for (s, e) in states.iter_mut().skip(index).zip(&errs) {
                    if *e == 0 {
                        *s = PageState::Mapped;
                    }
                }
                failure = Some(Errno::from(e));
                break;
            }
            let mut out = Vec::with_capacity(count * 4);
            for (s, &e) in states.iter_mut().skip(index).zip(&errs) {
                let bsd = if e == 0 {
                    *s = PageState::Mapped;
                    0
                } else {
                    *s = PageState::Failed;
                    self.stats.failed_entries += 1;
                    let x = e.checked_neg().and_then(XenError::from_errno);
                    x.map_or(Errno::EINVAL.0, |x| x.to_freebsd_errno())
                };
                out.extend_from_slice(&bsd.to_le_bytes());
            }
            let err_at = err.checked_add((index * 4) as u64).ok_or(Errno::EFAULT);
            if let Err(e) = err_at.and_then(|a| user.copyout(a, &out)) {
                failure = Some(e);
                break;
            }
            index += count;
        }
        if let Some(e) = failure {
            for (i, s) in (0u64..).zip(&states) {
                if *s == PageState::Mapped {
                    if remove_frame(hv, base + i).is_err() {
                        self.stats.stuck_frames += 1;
                    }
                    self.stats.unwound_frames += 1;
                }
            }
            return Err(e);
        }
        let mapped = states.iter().filter(|s| **s == PageState::Mapped).count() as u64;
        let r = self.regions.get_mut(&id).ok_or(Errno::EINVAL)?;
        r.pages = states;
        r.filled = true;
        self.stats.mapped_frames += mapped;
        Ok(())
    }

    fn mmap_resource<H: PrivcmdHypervisor>(
        &mut self,
        hv: &H,
        abi: Abi,
        data: &mut [u8],
        user: &mut dyn UserContext,
    ) -> Result<(), Errno> {
        let w = abi.word();
        let dom = foreign_domid(&self.cfg, get(data, 0, 2)?)?;
        let type_ = u16::try_from(get_u32(data, 4)?).map_err(|_| Errno::EINVAL)?;
        let id = get_u32(data, 8)?;
        let idx = get_u32(data, 12)?;
        let num = get_word(abi, data, 16)?;
        let addr = get_word(abi, data, 16 + w)?;
        if num == 0 && addr == 0 {
            let mut nr = 0u32;
            hv.privcmd_op(PrivcmdOp::AcquireResource {
                domid: dom,
                type_,
                id,
                frame: 0,
                nr_frames: &mut nr,
                frames: &[],
            })?;
            return put_word(abi, data, 16, u64::from(nr));
        }
        let mut nr = u32::try_from(num).map_err(|_| Errno::EINVAL)?;
        let region = self.target_region(addr, num, user)?;
        let base = self.regions.get(&region).ok_or(Errno::EINVAL)?.base_gfn;
        let frames: Vec<u64> = (0..num).map(|i| base + i).collect();
        hv.privcmd_op(PrivcmdOp::AcquireResource {
            domid: dom,
            type_,
            id,
            frame: u64::from(idx),
            nr_frames: &mut nr,
            frames: &frames,
        })?;
        let r = self.regions.get_mut(&region).ok_or(Errno::EINVAL)?;
        r.pages.fill(PageState::Mapped);
        r.filled = true;
        self.stats.mapped_frames += num;
        Ok(())
    }

    fn dm_op<H: PrivcmdHypervisor>(
        &mut self,
        hv: &H,
        abi: Abi,
        data: &[u8],
        user: &mut dyn UserContext,
    ) -> Result<(), Errno> {
        let w = abi.word();
        let dom = get(data, 0, 2)?;
        let num = get_u32(data, 4)?;
        let ubufs = get_word(abi, data, 8)?;
        if num == 0 {
            return Ok(());
        }
        if num > abi::MAX_DMOP_BUFFERS {
            return Err(Errno::E2BIG);
        }
        let dom = foreign_domid(&self.cfg, dom)?;
        let n = num as usize;
        let mut descs = vec![0u8; n * abi.dmop_buf_size()];
        user.copyin(ubufs, &mut descs)?;
        let mut addrs = Vec::with_capacity(n);
        let mut bufs = Vec::with_capacity(n);
        for d in descs.chunks_exact(abi.dmop_buf_size()) {
            let uptr = get(d, 0, w)?;
            let size = get(d, w, w)?;
            if size > abi::MAX_DMOP_BUF_SIZE {
                return Err(Errno::E2BIG);
            }
            let mut b = vec![0u8; usize::try_from(size).map_err(|_| Errno::E2BIG)?];
            user.copyin(uptr, &mut b)?;
            addrs.push(uptr);
            bufs.push(b);
        }
        hv.privcmd_op(PrivcmdOp::DmOp {
            domid: dom,
            bufs: &mut bufs,
        })?;
        for (a, b) in addrs.iter().zip(&bufs) {
            user.copyout(*a, b)?;
        }
        Ok(())
    }
}

/// `XENMEM_remove_from_physmap` of one of our frames.
fn remove_frame<H: Hypervisor>(hv: &H, gpfn: u64) -> Result<(), XenError> {
    let mut rm = xen_sys::native::xen_remove_from_physmap {
        domid: DOMID_SELF,
        gpfn: xen_sys::native::xen_pfn_t::try_from(gpfn).map_err(|_| XenError::EINVAL)?,
        ..Default::default()
    };
    hv.memory_op(MemoryOp::RemoveFromPhysmap(&mut rm))
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::abi::Abi;

    #[test]
    fn command_numbers_match_freebsd_ioccom() {
        // _IOWR/_IOW('E', n, struct ...) with FreeBSD's IOC_IN = 0x80000000, IOC_OUT =
        // 0x40000000, the length in bits 16..29, sizes computed by hand from privcmd.h.
        let l = Abi::Lp64;
        assert_eq!(l.hypercall(), 0xc038_4500);
        assert_eq!(l.mmapbatch(), 0xc020_4501);
        assert_eq!(l.mmap_resource(), 0xc020_4502);
        assert_eq!(l.dm_op(), 0x8010_4503);
        assert_eq!(l.restrict(), 0x8002_4504);
        assert_eq!(l.dmop_buf_size(), 16);
        let i = Abi::Ilp32;
        assert_eq!(i.hypercall(), 0xc01c_4500);
        assert_eq!(i.mmapbatch(), 0xc014_4501);
        assert_eq!(i.mmap_resource(), 0xc018_4502);
        assert_eq!(i.dm_op(), 0x800c_4503);
        assert_eq!(i.restrict(), 0x8002_4504);
        assert_eq!(i.dmop_buf_size(), 8);
    }
}
