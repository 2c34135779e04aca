//! Typed, safe wrappers for every hypercall the project uses, over any [`Hypervisor`].
//!
//! The seam takes Xen's argument structs so it can express every operation; the wrappers here
//! are what driver code calls: plain arguments in, typed results out, validation of the values
//! Xen hands back (a port or frame count that does not fit is an error, not a truncation).

use xen_sys::native as abi;
use xen_sys::native::{domid_t, evtchn_port_t, xen_pfn_t};

use crate::{
    ConsoleIoOp, EventChannelOp, GrantTableOp, Hypervisor, MemoryOp, SchedOp, VcpuOp, XenError,
    XenVersionOp, DOMID_SELF,
};

/// A failed grant-table control operation: the hypercall failed, or it succeeded and the
/// operation's own `status` field (a `GNTST_*` code, negative) reports a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GnttabError {
    /// The hypercall itself failed.
    Xen(XenError),
    /// The `GNTST_*` status Xen wrote into the argument struct.
    Status(i16),
}

impl From<XenError> for GnttabError {
    fn from(e: XenError) -> Self {
        GnttabError::Xen(e)
    }
}

impl core::fmt::Display for GnttabError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GnttabError::Xen(e) => write!(f, "grant table hypercall failed: {e}"),
            GnttabError::Status(s) => write!(f, "grant table operation failed with GNTST {s}"),
        }
    }
}

fn check_port(port: evtchn_port_t) -> Result<evtchn_port_t, XenError> {
    // No ABI has more ports than FIFO's 2^17; anything larger did not come from a sane Xen.
    if port < abi::EVTCHN_FIFO_NR_CHANNELS {
        Ok(port)
    } else {
        Err(XenError::EINVAL)
    }
}

/// The typed wrappers. Implemented for every [`Hypervisor`].
pub trait HypervisorExt: Hypervisor {
    /// `EVTCHNOP_alloc_unbound` in our domain for `remote`: the new local port.
    ///
    /// # Errors
    /// Xen's error; `EINVAL` if Xen returns an impossible port.
    fn evtchn_alloc_unbound(&self, remote: domid_t) -> Result<evtchn_port_t, XenError> {
        let mut a = abi::evtchn_alloc_unbound {
            dom: DOMID_SELF,
            remote_dom: remote,
            port: 0,
        };
        self.event_channel_op(EventChannelOp::AllocUnbound(&mut a))?;
        check_port(a.port)
    }

    /// `EVTCHNOP_bind_interdomain`: the new local port connected to `remote:remote_port`.
    ///
    /// # Errors
    /// Xen's error; `EINVAL` if Xen returns an impossible port.
    fn evtchn_bind_interdomain(
        &self,
        remote: domid_t,
        remote_port: evtchn_port_t,
    ) -> Result<evtchn_port_t, XenError> {
        let mut a = abi::evtchn_bind_interdomain {
            remote_dom: remote,
            remote_port,
            ..Default::default()
        };
        self.event_channel_op(EventChannelOp::BindInterdomain(&mut a))?;
        check_port(a.local_port)
    }

    /// `EVTCHNOP_bind_virq`: a port for `virq` delivered to `vcpu`.
    ///
    /// # Errors
    /// Xen's error; `EINVAL` if Xen returns an impossible port.
    fn evtchn_bind_virq(&self, virq: u32, vcpu: u32) -> Result<evtchn_port_t, XenError> {
        let mut a = abi::evtchn_bind_virq {
            virq,
            vcpu,
            port: 0,
        };
        self.event_channel_op(EventChannelOp::BindVirq(&mut a))?;
        check_port(a.port)
    }

    /// `EVTCHNOP_bind_ipi`: an IPI port delivered to `vcpu`.
    ///
    /// # Errors
    /// Xen's error; `EINVAL` if Xen returns an impossible port.
    fn evtchn_bind_ipi(&self, vcpu: u32) -> Result<evtchn_port_t, XenError> {
        let mut a = abi::evtchn_bind_ipi { vcpu, port: 0 };
        self.event_channel_op(EventChannelOp::BindIpi(&mut a))?;
        check_port(a.port)
    }

    /// `EVTCHNOP_close`.
    ///
    /// # Errors
    /// Xen's error.
    fn evtchn_close(&self, port: evtchn_port_t) -> Result<(), XenError> {
        self.event_channel_op(EventChannelOp::Close(&mut abi::evtchn_close { port }))
    }

    /// `EVTCHNOP_send`.
    ///
    /// # Errors
    /// Xen's error.
    fn evtchn_send(&self, port: evtchn_port_t) -> Result<(), XenError> {
        self.event_channel_op(EventChannelOp::Send(&mut abi::evtchn_send { port }))
    }

    /// `EVTCHNOP_unmask`.
    ///
    /// # Errors
    /// Xen's error.
    fn evtchn_unmask(&self, port: evtchn_port_t) -> Result<(), XenError> {
        self.event_channel_op(EventChannelOp::Unmask(&mut abi::evtchn_unmask { port }))
    }

    /// `EVTCHNOP_bind_vcpu`.
    ///
    /// # Errors
    /// Xen's error.
    fn evtchn_bind_vcpu(&self, port: evtchn_port_t, vcpu: u32) -> Result<(), XenError> {
        self.event_channel_op(EventChannelOp::BindVcpu(&mut abi::evtchn_bind_vcpu {
            port,
            vcpu,
        }))
    }

    /// `EVTCHNOP_status` of our port `port`.
    ///
    /// # Errors
    /// Xen's error.
    fn evtchn_status(&self, port: evtchn_port_t) -> Result<abi::evtchn_status, XenError> {
        let mut s = abi::evtchn_status {
            dom: DOMID_SELF,
            port,
            ..Default::default()
        };
        self.event_channel_op(EventChannelOp::Status(&mut s))?;
        Ok(s)
    }

    /// `EVTCHNOP_reset` of domain `dom` (our own with [`DOMID_SELF`]).
    ///
    /// # Errors
    /// Xen's error.
    fn evtchn_reset(&self, dom: domid_t) -> Result<(), XenError> {
        self.event_channel_op(EventChannelOp::Reset(&mut abi::evtchn_reset { dom }))
    }

    /// `EVTCHNOP_init_control` for `vcpu` with its control block at `gfn` + `offset`; returns
    /// the link bits Xen uses.
    ///
    /// # Errors
    /// Xen's error: `ENOSYS` (or `EINVAL`/`EPERM` on some hosts) when FIFO is unavailable.
    fn evtchn_init_control(&self, gfn: u64, offset: u32, vcpu: u32) -> Result<u8, XenError> {
        let mut a = abi::evtchn_init_control {
            control_gfn: gfn,
            offset,
            vcpu,
            ..Default::default()
        };
        self.event_channel_op(EventChannelOp::InitControl(&mut a))?;
        Ok(a.link_bits)
    }

    /// `EVTCHNOP_expand_array`: add the FIFO event-array page at `gfn`.
    ///
    /// # Errors
    /// Xen's error.
    fn evtchn_expand_array(&self, gfn: u64) -> Result<(), XenError> {
        self.event_channel_op(EventChannelOp::ExpandArray(&mut abi::evtchn_expand_array {
            array_gfn: gfn,
        }))
    }

    /// `EVTCHNOP_set_priority` (FIFO; 0 highest, 15 lowest).
    ///
    /// # Errors
    /// Xen's error; `EINVAL` for a priority above `EVTCHN_FIFO_PRIORITY_MIN`.
    fn evtchn_set_priority(&self, port: evtchn_port_t, priority: u32) -> Result<(), XenError> {
        if priority > abi::EVTCHN_FIFO_PRIORITY_MIN {
            return Err(XenError::EINVAL);
        }
        self.event_channel_op(EventChannelOp::SetPriority(&mut abi::evtchn_set_priority {
            port,
            priority,
        }))
    }

    /// `GNTTABOP_query_size` of our own table: `(nr_frames, max_nr_frames)`.
    ///
    /// # Errors
    /// The hypercall's error or the operation's `GNTST_*` status.
    fn gnttab_query_size(&self) -> Result<(u32, u32), GnttabError> {
        let mut q = abi::gnttab_query_size {
            dom: DOMID_SELF,
            ..Default::default()
        };
        self.grant_table_op(GrantTableOp::QuerySize(&mut q))?;
        if q.status != 0 {
            return Err(GnttabError::Status(q.status));
        }
        Ok((q.nr_frames, q.max_nr_frames))
    }

    /// `GNTTABOP_setup_table` of our own table for `frames.len()` frames (PV-style; HVM and
    /// PVH guests map frames with `XENMAPSPACE_grant_table` instead).
    ///
    /// # Errors
    /// The hypercall's error or the operation's `GNTST_*` status; `EINVAL` for more than
    /// `u32::MAX` frames.
    fn gnttab_setup_table(&self, frames: &mut [xen_pfn_t]) -> Result<(), GnttabError> {
        let nr_frames = u32::try_from(frames.len()).map_err(|_| XenError::EINVAL)?;
        let mut args = abi::gnttab_setup_table {
            dom: DOMID_SELF,
            nr_frames,
            ..Default::default()
        };
        self.grant_table_op(GrantTableOp::SetupTable {
            args: &mut args,
            frames,
        })?;
        if args.status != 0 {
            return Err(GnttabError::Status(args.status));
        }
        Ok(())
    }

    /// `GNTTABOP_set_version`: returns the version now in force.
    ///
    /// # Errors
    /// Xen's error.
    fn gnttab_set_version(&self, version: u32) -> Result<u32, XenError> {
        let mut v = abi::gnttab_set_version { version };
        self.grant_table_op(GrantTableOp::SetVersion(&mut v))?;
        Ok(v.version)
    }

    /// `GNTTABOP_get_version` of our own table.
    ///
    /// # Errors
    /// Xen's error.
    fn gnttab_get_version(&self) -> Result<u32, XenError> {
        let mut v = abi::gnttab_get_version {
            dom: DOMID_SELF,
            ..Default::default()
        };
        self.grant_table_op(GrantTableOp::GetVersion(&mut v))?;
        Ok(v.version)
    }

    /// `XENMEM_add_to_physmap` into our own physical map.
    ///
    /// # Errors
    /// Xen's error; `EINVAL` if `idx`/`gpfn` do not fit this width.
    fn add_to_physmap(&self, space: u32, idx: u64, gpfn: u64) -> Result<(), XenError> {
        let mut a = abi::xen_add_to_physmap {
            domid: DOMID_SELF,
            size: 0,
            space,
            idx: to_ulong(idx)?,
            gpfn: to_ulong(gpfn)?,
        };
        self.memory_op(MemoryOp::AddToPhysmap(&mut a)).map(|_| ())
    }

    /// `XENMEM_remove_from_physmap` of our own frame `gpfn`.
    ///
    /// # Errors
    /// Xen's error; `EINVAL` if `gpfn` does not fit this width.
    fn remove_from_physmap(&self, gpfn: u64) -> Result<(), XenError> {
        let mut a = abi::xen_remove_from_physmap {
            domid: DOMID_SELF,
            gpfn: to_ulong(gpfn)?,
            ..Default::default()
        };
        self.memory_op(MemoryOp::RemoveFromPhysmap(&mut a))
            .map(|_| ())
    }

    /// `XENMEM_decrease_reservation` of the 4 KiB frames `frames`: the number actually given
    /// back (may be fewer; the rest stay ours).
    ///
    /// # Errors
    /// Xen's error.
    fn decrease_reservation(&self, frames: &mut [xen_pfn_t]) -> Result<usize, XenError> {
        let mut args = reservation(frames.len())?;
        let done = self.memory_op(MemoryOp::DecreaseReservation {
            args: &mut args,
            extents: frames,
        })?;
        Ok(usize::try_from(done)
            .unwrap_or(usize::MAX)
            .min(frames.len()))
    }

    /// `XENMEM_populate_physmap` of the 4 KiB frames `frames`: the number actually populated.
    ///
    /// # Errors
    /// Xen's error.
    fn populate_physmap(&self, frames: &mut [xen_pfn_t]) -> Result<usize, XenError> {
        let mut args = reservation(frames.len())?;
        let done = self.memory_op(MemoryOp::PopulatePhysmap {
            args: &mut args,
            extents: frames,
        })?;
        Ok(usize::try_from(done)
            .unwrap_or(usize::MAX)
            .min(frames.len()))
    }

    /// `SCHEDOP_yield`.
    ///
    /// # Errors
    /// Xen's error.
    fn sched_yield(&self) -> Result<(), XenError> {
        self.sched_op(SchedOp::Yield).map(|_| ())
    }

    /// `SCHEDOP_block`.
    ///
    /// # Errors
    /// Xen's error.
    fn sched_block(&self) -> Result<(), XenError> {
        self.sched_op(SchedOp::Block).map(|_| ())
    }

    /// `SCHEDOP_shutdown` with a `SHUTDOWN_*` reason. Returns only for `SHUTDOWN_suspend`
    /// (`true` when the suspend was cancelled) or on error.
    ///
    /// # Errors
    /// Xen's error; `EINVAL` for an unknown reason (checked here).
    fn sched_shutdown(&self, reason: u32) -> Result<bool, XenError> {
        if reason > abi::SHUTDOWN_MAX {
            return Err(XenError::EINVAL);
        }
        self.sched_op(SchedOp::Shutdown { reason }).map(|r| r != 0)
    }

    /// `SCHEDOP_poll` on `ports` until `timeout` (absolute ns, 0 = none).
    ///
    /// # Errors
    /// Xen's error.
    fn sched_poll(&self, ports: &[evtchn_port_t], timeout: u64) -> Result<(), XenError> {
        self.sched_op(SchedOp::Poll { ports, timeout }).map(|_| ())
    }

    /// `VCPUOP_is_up`.
    ///
    /// # Errors
    /// Xen's error.
    fn vcpu_is_up(&self, vcpu: u32) -> Result<bool, XenError> {
        self.vcpu_op(vcpu, VcpuOp::IsUp).map(|r| r != 0)
    }

    /// `VCPUOP_set_singleshot_timer` at absolute system time `abs_ns`.
    ///
    /// # Errors
    /// Xen's error (`ETIME` with `VCPU_SSHOTTMR_future` when already past).
    fn vcpu_set_singleshot_timer(
        &self,
        vcpu: u32,
        abs_ns: u64,
        flags: u32,
    ) -> Result<(), XenError> {
        let mut t = abi::vcpu_set_singleshot_timer {
            timeout_abs_ns: abs_ns,
            flags,
            ..Default::default()
        };
        self.vcpu_op(vcpu, VcpuOp::SetSingleshotTimer(&mut t))
            .map(|_| ())
    }

    /// `VCPUOP_stop_singleshot_timer`.
    ///
    /// # Errors
    /// Xen's error.
    fn vcpu_stop_singleshot_timer(&self, vcpu: u32) -> Result<(), XenError> {
        self.vcpu_op(vcpu, VcpuOp::StopSingleshotTimer).map(|_| ())
    }

    /// `VCPUOP_stop_periodic_timer`.
    ///
    /// # Errors
    /// Xen's error.
    fn vcpu_stop_periodic_timer(&self, vcpu: u32) -> Result<(), XenError> {
        self.vcpu_op(vcpu, VcpuOp::StopPeriodicTimer).map(|_| ())
    }

    /// `XENVER_version`: `(major, minor)`.
    ///
    /// # Errors
    /// Xen's error.
    fn xen_version_numbers(&self) -> Result<(u16, u16), XenError> {
        let v = self.xen_version(XenVersionOp::Version)?;
        // CAST: both halves masked to 16 bits.
        Ok((((v >> 16) & 0xffff) as u16, (v & 0xffff) as u16))
    }

    /// `XENVER_extraversion` as bytes up to the first NUL.
    ///
    /// # Errors
    /// Xen's error.
    fn xen_extraversion(&self) -> Result<([u8; 16], usize), XenError> {
        let mut raw: abi::xen_extraversion_t = Default::default();
        self.xen_version(XenVersionOp::ExtraVersion(&mut raw))?;
        let bytes = raw.map(|c| c.to_ne_bytes()[0]);
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Ok((bytes, len))
    }

    /// `XENVER_get_features` sub-map `index` (`XENFEAT_*` bits `32 * index ..`).
    ///
    /// # Errors
    /// Xen's error.
    fn xen_features(&self, index: u32) -> Result<u32, XenError> {
        let mut f = abi::xen_feature_info {
            submap_idx: index,
            submap: 0,
        };
        self.xen_version(XenVersionOp::GetFeatures(&mut f))?;
        Ok(f.submap)
    }

    /// `CONSOLEIO_write` of all of `bytes` (in as many calls as Xen needs; gives up after a
    /// call that makes no progress).
    ///
    /// # Errors
    /// Xen's error.
    fn console_write(&self, mut bytes: &[u8]) -> Result<(), XenError> {
        while !bytes.is_empty() {
            let chunk = &bytes[..bytes.len().min(4096)];
            self.console_io(ConsoleIoOp::Write(chunk))?;
            bytes = &bytes[chunk.len()..];
        }
        Ok(())
    }
}

impl<H: Hypervisor + ?Sized> HypervisorExt for H {}

fn reservation(n: usize) -> Result<abi::xen_memory_reservation, XenError> {
    Ok(abi::xen_memory_reservation {
        nr_extents: n.try_into().map_err(|_| XenError::EINVAL)?,
        extent_order: 0,
        mem_flags: 0,
        domid: DOMID_SELF,
        ..Default::default()
    })
}

/// `v` as this width's `xen_ulong_t`/`xen_pfn_t` (`EINVAL` if it does not fit on i386).
#[allow(
    clippy::useless_conversion,
    reason = "identity on amd64, narrowing on i386"
)]
pub(crate) fn to_ulong(v: u64) -> Result<abi::xen_ulong_t, XenError> {
    abi::xen_ulong_t::try_from(v).map_err(|_| XenError::EINVAL)
}
