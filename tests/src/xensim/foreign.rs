//! Foreign-frame mapping for `/dev/xen/privcmd` in the simulator.
//!
//! [`PrivDomain`] wraps a [`DomainHandle`] and adds what privcmd needs beyond the seam
//! ([`PrivcmdHypervisor`]): `XENMEM_add_to_physmap_batch` with `XENMAPSPACE_gmfn_foreign`
//! and `XENMEM_acquire_resource` for a domain's grant table. It is built only on the
//! simulator's public surface, so the mappings live in a table of its own (GFN of the mapping
//! domain → the foreign domain's frame) rather than in the simulated p2m: tests reach mapped
//! pages through [`PrivDomain::read_mapped`] / [`PrivDomain::write_mapped`], and
//! `XENMEM_remove_from_physmap` of a mapped GFN is intercepted and removes the entry.
//!
//! Semantics kept from Xen: only a privileged domain may map another domain's frames
//! (`EPERM`), the foreign domain must exist (`ESRCH`), each entry fails on its own (an
//! unpopulated foreign frame: `-EINVAL`; a GFN of ours already in use: `-EBUSY`).
//! Simplification: a mapping does not hold a page reference, so once the foreign domain is
//! destroyed its frames read as unmapped. `dm_op` and the `Raw` hypercalls stay `ENOSYS`;
//! `acquire_resource` of anything but a grant table's shared frames is `EOPNOTSUPP`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use xen_kmod::privcmd::{PrivcmdHypervisor, PrivcmdOp, PrivcmdPlatform};
use xen_kmod::{
    ConsoleIoOp, EventChannelOp, GrantTableOp, HvmOp, Hypervisor, MemoryOp, SchedOp, VcpuOp,
    XenError, XenVersionOp, DOMID_SELF,
};
use xen_shmem::SharedMem;
use xen_sys::x86_64 as abi;

use super::hypervisor::MemFault;
use super::DomainHandle;

/// What a mapped GFN shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Frame `gfn` of domain `dom`.
    Frame {
        /// The foreign domain.
        dom: u16,
        /// Its frame.
        gfn: u64,
    },
    /// Grant-table frame `idx` of domain `dom` (`XENMEM_resource_grant_table`).
    GrantFrame {
        /// The foreign domain.
        dom: u16,
        /// The frame index.
        idx: usize,
    },
}

/// A domain that can use privcmd: its [`DomainHandle`] plus its foreign mappings.
#[derive(Debug, Clone)]
pub struct PrivDomain {
    dom: DomainHandle,
    maps: Arc<Mutex<BTreeMap<u64, Source>>>,
}

impl PrivDomain {
    /// Wraps `dom`, with no foreign mappings.
    #[must_use]
    pub fn new(dom: DomainHandle) -> Self {
        PrivDomain {
            dom,
            maps: Arc::default(),
        }
    }

    /// The wrapped domain.
    #[must_use]
    pub fn handle(&self) -> &DomainHandle {
        &self.dom
    }

    fn maps(&self) -> MutexGuard<'_, BTreeMap<u64, Source>> {
        self.maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The foreign mappings now in place.
    #[must_use]
    pub fn mappings(&self) -> BTreeMap<u64, Source> {
        self.maps().clone()
    }

    /// Reads through a foreign mapping at our `gpfn`.
    ///
    /// # Errors
    /// [`MemFault::NotMapped`] when nothing (or nothing alive) is mapped there.
    pub fn read_mapped(&self, gpfn: u64, offset: usize, buf: &mut [u8]) -> Result<(), MemFault> {
        let src = self.maps().get(&gpfn).copied().ok_or(MemFault::NotMapped)?;
        match src {
            Source::Frame { dom, gfn } => {
                let d = self.dom.sim().domain(dom).ok_or(MemFault::NotMapped)?;
                d.read(gfn, offset, buf)
            }
            Source::GrantFrame { dom, idx } => {
                let d = self.dom.sim().domain(dom).ok_or(MemFault::NotMapped)?;
                let page = d.grant_frames().get(idx).ok_or(MemFault::NotMapped)?;
                SharedMem::from_pages(std::slice::from_ref(page))
                    .copy_to_slice(offset, buf)
                    .map_err(|_| MemFault::OutOfBounds)
            }
        }
    }

    /// Writes through a foreign mapping of a frame at our `gpfn`.
    ///
    /// # Errors
    /// [`MemFault::NotMapped`] when no frame is mapped there.
    pub fn write_mapped(&self, gpfn: u64, offset: usize, data: &[u8]) -> Result<(), MemFault> {
        match self.maps().get(&gpfn).copied() {
            Some(Source::Frame { dom, gfn }) => {
                let d = self.dom.sim().domain(dom).ok_or(MemFault::NotMapped)?;
                d.write(gfn, offset, data)
            }
            _ => Err(MemFault::NotMapped),
        }
    }

    /// Xen's checks on the target domain: it exists (`ESRCH`) and we may act on it (`EPERM`).
    fn check_target(&self, dom: u16) -> Result<(), XenError> {
        let mut d = dom;
        self.dom
            .memory_op(MemoryOp::CurrentReservation(&mut d))
            .map(|_| ())
    }

    fn gfn_free(&self, gpfn: u64, maps: &BTreeMap<u64, Source>) -> bool {
        !maps.contains_key(&gpfn) && self.dom.read(gpfn, 0, &mut [0u8; 1]).is_err()
    }
}

impl Hypervisor for PrivDomain {
    fn event_channel_op(&self, op: EventChannelOp<'_>) -> Result<(), XenError> {
        self.dom.event_channel_op(op)
    }
    fn grant_table_op(&self, op: GrantTableOp<'_>) -> Result<(), XenError> {
        self.dom.grant_table_op(op)
    }
    fn memory_op(&self, op: MemoryOp<'_>) -> Result<u64, XenError> {
        if let MemoryOp::RemoveFromPhysmap(r) = &op {
            if (r.domid == DOMID_SELF || r.domid == self.dom.domid())
                && self.maps().remove(&r.gpfn).is_some()
            {
                return Ok(0);
            }
        }
        self.dom.memory_op(op)
    }
    fn hvm_op(&self, op: HvmOp<'_>) -> Result<(), XenError> {
        self.dom.hvm_op(op)
    }
    fn sched_op(&self, op: SchedOp<'_>) -> Result<u64, XenError> {
        self.dom.sched_op(op)
    }
    fn vcpu_op(&self, vcpu: u32, op: VcpuOp<'_>) -> Result<u64, XenError> {
        self.dom.vcpu_op(vcpu, op)
    }
    fn xen_version(&self, op: XenVersionOp<'_>) -> Result<u64, XenError> {
        self.dom.xen_version(op)
    }
    fn console_io(&self, op: ConsoleIoOp<'_>) -> Result<u64, XenError> {
        self.dom.console_io(op)
    }
}

impl PrivcmdHypervisor for PrivDomain {
    fn privcmd_op(&self, op: PrivcmdOp<'_>) -> Result<u64, XenError> {
        if !self.dom.is_alive() {
            return Err(XenError::ESRCH);
        }
        match op {
            PrivcmdOp::MapForeign {
                foreign_domid,
                idxs,
                gpfns,
                errs,
            } => {
                if idxs.len() != gpfns.len()
                    || idxs.len() != errs.len()
                    || u16::try_from(idxs.len()).is_err()
                {
                    return Err(XenError::EINVAL);
                }
                if foreign_domid == self.dom.domid() || foreign_domid == DOMID_SELF {
                    return Err(XenError::EINVAL);
                }
                self.check_target(foreign_domid)?;
                let foreign = self
                    .dom
                    .sim()
                    .domain(foreign_domid)
                    .ok_or(XenError::ESRCH)?;
                let mut maps = self.maps();
                for ((&idx, &gpfn), err) in idxs.iter().zip(gpfns).zip(errs.iter_mut()) {
                    *err = if !self.gfn_free(gpfn, &maps) {
                        -XenError::EBUSY.errno()
                    } else if foreign.read(idx, 0, &mut [0u8; 1]).is_err() {
                        -XenError::EINVAL.errno()
                    } else {
                        maps.insert(
                            gpfn,
                            Source::Frame {
                                dom: foreign_domid,
                                gfn: idx,
                            },
                        );
                        0
                    };
                }
                Ok(0)
            }
            PrivcmdOp::AcquireResource {
                domid,
                type_,
                id,
                frame,
                nr_frames,
                frames,
            } => {
                self.check_target(domid)?;
                if u32::from(type_) != abi::XENMEM_resource_grant_table
                    || id != abi::XENMEM_resource_grant_table_id_shared
                {
                    return Err(XenError::EOPNOTSUPP);
                }
                let target = self.dom.sim().domain(domid).ok_or(XenError::ESRCH)?;
                let max = target.grant_table_size().1;
                if frames.is_empty() {
                    *nr_frames = max;
                    return Ok(0);
                }
                let first = usize::try_from(frame).map_err(|_| XenError::EINVAL)?;
                if *nr_frames as usize != frames.len()
                    || first
                        .checked_add(frames.len())
                        .is_none_or(|end| end > max as usize)
                {
                    return Err(XenError::EINVAL);
                }
                let mut maps = self.maps();
                if frames.iter().any(|&g| !self.gfn_free(g, &maps)) {
                    return Err(XenError::EBUSY);
                }
                for (i, &g) in frames.iter().enumerate() {
                    maps.insert(
                        g,
                        Source::GrantFrame {
                            dom: domid,
                            idx: first + i,
                        },
                    );
                }
                Ok(0)
            }
            PrivcmdOp::DmOp { .. } | PrivcmdOp::Raw { .. } => Err(XenError::ENOSYS),
        }
    }
}

/// Region ranges for privcmd: unpopulated GFNs of the domain ([`DomainHandle::reserve_gfns`]).
#[derive(Debug, Clone)]
pub struct SimPrivcmdPlatform {
    dom: DomainHandle,
    /// Ranges reserved and not yet given back: start → count.
    pub reserved: BTreeMap<u64, u64>,
}

impl SimPrivcmdPlatform {
    /// Reserves from `dom`'s free GFN space.
    #[must_use]
    pub fn new(dom: DomainHandle) -> Self {
        SimPrivcmdPlatform {
            dom,
            reserved: BTreeMap::new(),
        }
    }
}

impl PrivcmdPlatform for SimPrivcmdPlatform {
    fn reserve_gfns(&mut self, count: u64) -> Option<u64> {
        let start = self.dom.reserve_gfns(count)?;
        self.reserved.insert(start, count);
        Some(start)
    }

    fn release_gfns(&mut self, start: u64, count: u64) {
        if self.reserved.remove(&start) == Some(count) {
            self.dom.release_gfns(start, count);
        }
    }
}
