//! The hypercall seam: the one interface through which every core talks to the hypervisor.
//!
//! # Why a typed enum per hypercall family
//!
//! A raw hypercall is `(op, arg1..arg5)` where the arguments are guest-virtual pointers and
//! counts. Exposing that to the cores would put raw pointers (and their lifetimes) into every
//! protocol crate, and would give the simulated hypervisor (`xensim`) nothing it could act on
//! safely. Instead each family is one method taking a *call enum* whose variants borrow the
//! Xen ABI argument structs from `xen-sys` (`&mut`, because Xen writes results back into them)
//! and, for batched operations, slices of them:
//!
//! * the real platform ([`crate::arch`]) turns a variant into `(hypercall, cmd, pointer,
//!   count)` in one small, exhaustively tested function (`marshal`), then traps;
//! * the simulator matches on the variant and reads/writes plain Rust values;
//! * the borrow checker guarantees every buffer outlives the call, which is exactly the
//!   lifetime Xen needs (no hypercall here keeps a pointer after it returns).
//!
//! # Conventions shared by every implementation
//!
//! * Xen guest handles (`XEN_GUEST_HANDLE` fields: `frame_list`, `extent_start`, `ports`...)
//!   are **never** set by the caller: the variant carries the buffer as a slice and the
//!   implementation points the handle at it. The count field that goes with a handle
//!   (`nr_frames`, `nr_extents`) *is* set by the caller and must not exceed the slice length;
//!   otherwise the call fails with [`XenError::EINVAL`] before anything reaches Xen. (Xen would
//!   otherwise read or write past the end of the slice.)
//! * A batch longer than `u32::MAX` entries fails with [`XenError::EINVAL`] (Xen's count
//!   argument is an `unsigned int`).
//! * Batched grant operations report per-entry results in each entry's `status` field; the
//!   method's own `Result` is the hypercall's return value. Callers must check both (the
//!   XSA-361 class of bugs is ignoring the per-entry status).
//! * Results are the hypercall's non-negative return value where one is meaningful (number of
//!   extents done, version number, `VCPUOP_is_up`); errors are Xen's `-errno`, see
//!   [`XenError`] (Linux numbering, not FreeBSD's).
//!
//! No method allocates, blocks in the kernel sense, or keeps a borrow beyond the call.

use crate::XenError;
use xen_sys::native::{
    domid_t, evtchn_alloc_unbound, evtchn_bind_interdomain, evtchn_bind_ipi, evtchn_bind_vcpu,
    evtchn_bind_virq, evtchn_close, evtchn_expand_array, evtchn_init_control, evtchn_port_t,
    evtchn_reset, evtchn_send, evtchn_set_priority, evtchn_status, evtchn_unmask, gnttab_copy,
    gnttab_get_status_frames, gnttab_get_version, gnttab_map_grant_ref, gnttab_query_size,
    gnttab_set_version, gnttab_setup_table, gnttab_unmap_grant_ref, vcpu_register_vcpu_info,
    vcpu_set_singleshot_timer, xen_add_to_physmap, xen_capabilities_info_t, xen_domain_handle_t,
    xen_extraversion_t, xen_feature_info, xen_hvm_evtchn_upcall_vector, xen_hvm_param,
    xen_memory_reservation, xen_pfn_t, xen_remove_from_physmap,
};

/// `HYPERVISOR_event_channel_op(cmd, arg)`: one variant per `EVTCHNOP_*` the project uses.
///
/// Xen writes results (the allocated `port`, the `status` fields) back into the borrowed
/// struct.
pub enum EventChannelOp<'a> {
    /// `EVTCHNOP_alloc_unbound`: a port that `remote_dom` may bind to. OUT: `port`.
    AllocUnbound(&'a mut evtchn_alloc_unbound),
    /// `EVTCHNOP_bind_interdomain`: connect to a remote domain's unbound port. OUT:
    /// `local_port`.
    BindInterdomain(&'a mut evtchn_bind_interdomain),
    /// `EVTCHNOP_bind_virq`: a virtual IRQ on a vCPU. OUT: `port`.
    BindVirq(&'a mut evtchn_bind_virq),
    /// `EVTCHNOP_bind_ipi`: an inter-vCPU notification port. OUT: `port`.
    BindIpi(&'a mut evtchn_bind_ipi),
    /// `EVTCHNOP_close`.
    Close(&'a mut evtchn_close),
    /// `EVTCHNOP_send`: notify the other end.
    Send(&'a mut evtchn_send),
    /// `EVTCHNOP_status`. OUT: `status`, `vcpu`, `u`.
    Status(&'a mut evtchn_status),
    /// `EVTCHNOP_bind_vcpu`: route a port's upcalls to another vCPU.
    BindVcpu(&'a mut evtchn_bind_vcpu),
    /// `EVTCHNOP_unmask`: clear the mask bit *and* have Xen re-deliver the upcall if the port
    /// is pending (a plain bit clear would lose an event that arrived while masked).
    Unmask(&'a mut evtchn_unmask),
    /// `EVTCHNOP_reset`: close all ports of a domain.
    Reset(&'a mut evtchn_reset),
    /// `EVTCHNOP_init_control`: switch to the FIFO ABI for one vCPU (ENOSYS/EINVAL when
    /// unsupported: fall back to 2-level).
    InitControl(&'a mut evtchn_init_control),
    /// `EVTCHNOP_expand_array`: add one FIFO event-array page.
    ExpandArray(&'a mut evtchn_expand_array),
    /// `EVTCHNOP_set_priority` (FIFO only).
    SetPriority(&'a mut evtchn_set_priority),
}

/// `HYPERVISOR_grant_table_op(cmd, args, count)`.
pub enum GrantTableOp<'a> {
    /// `GNTTABOP_map_grant_ref`, batched. Per-entry OUT: `status`, `handle`, `dev_bus_addr`.
    MapGrantRef(&'a mut [gnttab_map_grant_ref]),
    /// `GNTTABOP_unmap_grant_ref`, batched. Per-entry OUT: `status`.
    UnmapGrantRef(&'a mut [gnttab_unmap_grant_ref]),
    /// `GNTTABOP_setup_table`: `args.nr_frames` (≤ `frames.len()`) frames of the grant table.
    /// `args.frame_list` is set by the implementation to point at `frames`. OUT: `status`,
    /// `frames[..nr_frames]`.
    SetupTable {
        /// The request; `frame_list` is ignored and overwritten.
        args: &'a mut gnttab_setup_table,
        /// Receives the frame numbers.
        frames: &'a mut [xen_pfn_t],
    },
    /// `GNTTABOP_copy`, batched. Per-entry OUT: `status`.
    Copy(&'a mut [gnttab_copy]),
    /// `GNTTABOP_query_size`. OUT: `nr_frames`, `max_nr_frames`, `status`.
    QuerySize(&'a mut gnttab_query_size),
    /// `GNTTABOP_set_version`. IN/OUT: `version`.
    SetVersion(&'a mut gnttab_set_version),
    /// `GNTTABOP_get_version`. OUT: `version`.
    GetVersion(&'a mut gnttab_get_version),
    /// `GNTTABOP_get_status_frames` (grant table v2 only): `args.nr_frames` (≤
    /// `frames.len()`) status frames; `args.frame_list` is set by the implementation.
    GetStatusFrames {
        /// The request; `frame_list` is ignored and overwritten.
        args: &'a mut gnttab_get_status_frames,
        /// Receives the frame numbers.
        frames: &'a mut [u64],
    },
}

/// `HYPERVISOR_memory_op(cmd, arg)`. The `Ok` value is the hypercall's return value: for the
/// reservation operations, the number of extents processed (which may be fewer than asked).
pub enum MemoryOp<'a> {
    /// `XENMEM_add_to_physmap`: map a Xen page (shared_info, a grant-table frame...) at
    /// `gpfn` of our physical address space.
    AddToPhysmap(&'a mut xen_add_to_physmap),
    /// `XENMEM_remove_from_physmap`.
    RemoveFromPhysmap(&'a mut xen_remove_from_physmap),
    /// `XENMEM_increase_reservation`. `args.nr_extents` ≤ `extents.len()`; `extent_start` is
    /// set by the implementation.
    IncreaseReservation {
        /// The request; `extent_start` is ignored and overwritten.
        args: &'a mut xen_memory_reservation,
        /// IN/OUT frame list.
        extents: &'a mut [xen_pfn_t],
    },
    /// `XENMEM_decrease_reservation` (balloon out, or give back frames before reusing a GFN
    /// range for foreign mappings).
    DecreaseReservation {
        /// The request; `extent_start` is ignored and overwritten.
        args: &'a mut xen_memory_reservation,
        /// IN frame list.
        extents: &'a mut [xen_pfn_t],
    },
    /// `XENMEM_populate_physmap`.
    PopulatePhysmap {
        /// The request; `extent_start` is ignored and overwritten.
        args: &'a mut xen_memory_reservation,
        /// IN/OUT frame list.
        extents: &'a mut [xen_pfn_t],
    },
    /// `XENMEM_current_reservation`: pages currently held by the domain (the return value).
    CurrentReservation(&'a mut domid_t),
    /// `XENMEM_maximum_reservation`: the domain's page limit (the return value).
    MaximumReservation(&'a mut domid_t),
    /// `XENMEM_maximum_gpfn`: highest GPFN in use (the return value).
    MaximumGpfn(&'a mut domid_t),
}

/// `HYPERVISOR_hvm_op(cmd, arg)` (HVM and PVH guests).
pub enum HvmOp<'a> {
    /// `HVMOP_set_param`.
    SetParam(&'a mut xen_hvm_param),
    /// `HVMOP_get_param`. OUT: `value`.
    GetParam(&'a mut xen_hvm_param),
    /// `HVMOP_set_evtchn_upcall_vector`: per-vCPU LAPIC vector for event upcalls.
    SetEvtchnUpcallVector(&'a mut xen_hvm_evtchn_upcall_vector),
}

/// `HYPERVISOR_sched_op(cmd, arg)`.
pub enum SchedOp<'a> {
    /// `SCHEDOP_yield`.
    Yield,
    /// `SCHEDOP_block`: sleep until an event is pending (with event delivery enabled).
    Block,
    /// `SCHEDOP_shutdown` with a `SHUTDOWN_*` reason. For `SHUTDOWN_suspend` the return value
    /// is 1 when the suspend was cancelled (resumed in the same domain).
    Shutdown {
        /// `SHUTDOWN_poweroff`, `SHUTDOWN_reboot`, `SHUTDOWN_suspend`, `SHUTDOWN_crash`...
        reason: u32,
    },
    /// `SCHEDOP_poll`: block until one of `ports` is pending or `timeout` (absolute system
    /// time in ns, 0 = none) passes. The `sched_poll` struct is built by the implementation.
    Poll {
        /// Ports to wait on.
        ports: &'a [evtchn_port_t],
        /// Absolute timeout in ns of Xen system time; 0 for none.
        timeout: u64,
    },
}

/// `HYPERVISOR_vcpu_op(cmd, vcpu, arg)`.
pub enum VcpuOp<'a> {
    /// `VCPUOP_register_vcpu_info`: place the vCPU's `vcpu_info` in our own memory (needed
    /// for vCPUs ≥ `XEN_LEGACY_MAX_VCPUS` and for FIFO-friendly placement).
    RegisterVcpuInfo(&'a mut vcpu_register_vcpu_info),
    /// `VCPUOP_up`.
    Up,
    /// `VCPUOP_down`.
    Down,
    /// `VCPUOP_is_up`: the return value is 1 if up, 0 if down.
    IsUp,
    /// `VCPUOP_set_singleshot_timer`: `VIRQ_TIMER` at an absolute system time.
    SetSingleshotTimer(&'a mut vcpu_set_singleshot_timer),
    /// `VCPUOP_stop_singleshot_timer`.
    StopSingleshotTimer,
    /// `VCPUOP_stop_periodic_timer`.
    StopPeriodicTimer,
}

/// `HYPERVISOR_xen_version(cmd, arg)`.
pub enum XenVersionOp<'a> {
    /// `XENVER_version`: the return value is `major << 16 | minor`.
    Version,
    /// `XENVER_extraversion`: NUL-padded string such as `".2"`.
    ExtraVersion(&'a mut xen_extraversion_t),
    /// `XENVER_capabilities`: space-separated ABI names.
    Capabilities(&'a mut xen_capabilities_info_t),
    /// `XENVER_get_features`: IN `submap_idx`, OUT `submap` (`XENFEAT_*` bits).
    GetFeatures(&'a mut xen_feature_info),
    /// `XENVER_pagesize`: the return value.
    PageSize,
    /// `XENVER_guest_handle`: the domain's UUID.
    GuestHandle(&'a mut xen_domain_handle_t),
}

/// `HYPERVISOR_console_io(cmd, count, buffer)`: Xen's emergency console (debug builds, or
/// `dom0` and guests with `guest_loglvl`).
pub enum ConsoleIoOp<'a> {
    /// `CONSOLEIO_write`.
    Write(&'a [u8]),
    /// `CONSOLEIO_read`: the return value is the number of bytes read.
    Read(&'a mut [u8]),
}

impl EventChannelOp<'_> {
    /// The variant's name, for logs and traces (the ABI structs have no `Debug`).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            EventChannelOp::AllocUnbound(..) => "AllocUnbound",
            EventChannelOp::BindInterdomain(..) => "BindInterdomain",
            EventChannelOp::BindVirq(..) => "BindVirq",
            EventChannelOp::BindIpi(..) => "BindIpi",
            EventChannelOp::Close(..) => "Close",
            EventChannelOp::Send(..) => "Send",
            EventChannelOp::Status(..) => "Status",
            EventChannelOp::BindVcpu(..) => "BindVcpu",
            EventChannelOp::Unmask(..) => "Unmask",
            EventChannelOp::Reset(..) => "Reset",
            EventChannelOp::InitControl(..) => "InitControl",
            EventChannelOp::ExpandArray(..) => "ExpandArray",
            EventChannelOp::SetPriority(..) => "SetPriority",
        }
    }
}

impl core::fmt::Debug for EventChannelOp<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "EventChannelOp::{}", self.name())
    }
}

impl GrantTableOp<'_> {
    /// The variant's name, for logs and traces (the ABI structs have no `Debug`).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            GrantTableOp::MapGrantRef(..) => "MapGrantRef",
            GrantTableOp::UnmapGrantRef(..) => "UnmapGrantRef",
            GrantTableOp::SetupTable { .. } => "SetupTable",
            GrantTableOp::Copy(..) => "Copy",
            GrantTableOp::QuerySize(..) => "QuerySize",
            GrantTableOp::SetVersion(..) => "SetVersion",
            GrantTableOp::GetVersion(..) => "GetVersion",
            GrantTableOp::GetStatusFrames { .. } => "GetStatusFrames",
        }
    }
}

impl core::fmt::Debug for GrantTableOp<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "GrantTableOp::{}", self.name())
    }
}

impl MemoryOp<'_> {
    /// The variant's name, for logs and traces (the ABI structs have no `Debug`).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            MemoryOp::AddToPhysmap(..) => "AddToPhysmap",
            MemoryOp::RemoveFromPhysmap(..) => "RemoveFromPhysmap",
            MemoryOp::IncreaseReservation { .. } => "IncreaseReservation",
            MemoryOp::DecreaseReservation { .. } => "DecreaseReservation",
            MemoryOp::PopulatePhysmap { .. } => "PopulatePhysmap",
            MemoryOp::CurrentReservation(..) => "CurrentReservation",
            MemoryOp::MaximumReservation(..) => "MaximumReservation",
            MemoryOp::MaximumGpfn(..) => "MaximumGpfn",
        }
    }
}

impl core::fmt::Debug for MemoryOp<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MemoryOp::{}", self.name())
    }
}

impl HvmOp<'_> {
    /// The variant's name, for logs and traces (the ABI structs have no `Debug`).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            HvmOp::SetParam(..) => "SetParam",
            HvmOp::GetParam(..) => "GetParam",
            HvmOp::SetEvtchnUpcallVector(..) => "SetEvtchnUpcallVector",
        }
    }
}

impl core::fmt::Debug for HvmOp<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "HvmOp::{}", self.name())
    }
}

impl SchedOp<'_> {
    /// The variant's name, for logs and traces (the ABI structs have no `Debug`).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            SchedOp::Yield => "Yield",
            SchedOp::Block => "Block",
            SchedOp::Shutdown { .. } => "Shutdown",
            SchedOp::Poll { .. } => "Poll",
        }
    }
}

impl core::fmt::Debug for SchedOp<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SchedOp::{}", self.name())
    }
}

impl VcpuOp<'_> {
    /// The variant's name, for logs and traces (the ABI structs have no `Debug`).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            VcpuOp::RegisterVcpuInfo(..) => "RegisterVcpuInfo",
            VcpuOp::Up => "Up",
            VcpuOp::Down => "Down",
            VcpuOp::IsUp => "IsUp",
            VcpuOp::SetSingleshotTimer(..) => "SetSingleshotTimer",
            VcpuOp::StopSingleshotTimer => "StopSingleshotTimer",
            VcpuOp::StopPeriodicTimer => "StopPeriodicTimer",
        }
    }
}

impl core::fmt::Debug for VcpuOp<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "VcpuOp::{}", self.name())
    }
}

impl XenVersionOp<'_> {
    /// The variant's name, for logs and traces (the ABI structs have no `Debug`).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            XenVersionOp::Version => "Version",
            XenVersionOp::ExtraVersion(..) => "ExtraVersion",
            XenVersionOp::Capabilities(..) => "Capabilities",
            XenVersionOp::GetFeatures(..) => "GetFeatures",
            XenVersionOp::PageSize => "PageSize",
            XenVersionOp::GuestHandle(..) => "GuestHandle",
        }
    }
}

impl core::fmt::Debug for XenVersionOp<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "XenVersionOp::{}", self.name())
    }
}

impl ConsoleIoOp<'_> {
    /// The variant's name, for logs and traces (the ABI structs have no `Debug`).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            ConsoleIoOp::Write(..) => "Write",
            ConsoleIoOp::Read(..) => "Read",
        }
    }
}

impl core::fmt::Debug for ConsoleIoOp<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ConsoleIoOp::{}", self.name())
    }
}

/// The hypervisor as seen by the cores: one method per hypercall family, typed arguments,
/// typed errors. Implemented by the real platform (`arch::XenPlatform`) and by `xensim`.
///
/// Methods take `&self`: hypercalls are re-entrant and may be issued concurrently from any
/// vCPU, so implementations keep any state of their own behind interior mutability.
pub trait Hypervisor {
    /// `HYPERVISOR_event_channel_op`.
    ///
    /// # Errors
    /// Xen's `-errno`, e.g. `EINVAL` for a bad port, `ESRCH` for a missing domain, `ENOSYS`
    /// for an unimplemented sub-op (such as FIFO's `InitControl` on a 2-level-only host).
    fn event_channel_op(&self, op: EventChannelOp<'_>) -> Result<(), XenError>;

    /// `HYPERVISOR_grant_table_op`. Per-entry results are in the entries' `status` fields.
    ///
    /// # Errors
    /// Xen's `-errno` for the call as a whole (`EINVAL` also for a batch longer than
    /// `u32::MAX`, or `nr_frames` exceeding the frame slice).
    fn grant_table_op(&self, op: GrantTableOp<'_>) -> Result<(), XenError>;

    /// `HYPERVISOR_memory_op`. Returns the hypercall's non-negative return value.
    ///
    /// # Errors
    /// Xen's `-errno` (`EINVAL` also for `nr_extents` exceeding the extent slice).
    fn memory_op(&self, op: MemoryOp<'_>) -> Result<u64, XenError>;

    /// `HYPERVISOR_hvm_op`.
    ///
    /// # Errors
    /// Xen's `-errno` (`EINVAL` for an unknown parameter, `EPERM` for a forbidden one).
    fn hvm_op(&self, op: HvmOp<'_>) -> Result<(), XenError>;

    /// `HYPERVISOR_sched_op`. Returns the hypercall's non-negative return value.
    ///
    /// # Errors
    /// Xen's `-errno`.
    fn sched_op(&self, op: SchedOp<'_>) -> Result<u64, XenError>;

    /// `HYPERVISOR_vcpu_op` on vCPU `vcpu`. Returns the hypercall's non-negative return value.
    ///
    /// # Errors
    /// Xen's `-errno` (`ENOENT` for a vCPU that does not exist).
    fn vcpu_op(&self, vcpu: u32, op: VcpuOp<'_>) -> Result<u64, XenError>;

    /// `HYPERVISOR_xen_version`. Returns the hypercall's non-negative return value.
    ///
    /// # Errors
    /// Xen's `-errno`.
    fn xen_version(&self, op: XenVersionOp<'_>) -> Result<u64, XenError>;

    /// `HYPERVISOR_console_io`. The default is `ENOSYS`: a simulator need not provide it, and
    /// nothing but debugging output depends on it.
    ///
    /// # Errors
    /// Xen's `-errno`.
    fn console_io(&self, op: ConsoleIoOp<'_>) -> Result<u64, XenError> {
        let _ = op;
        Err(XenError::ENOSYS)
    }
}

impl<H: Hypervisor + ?Sized> Hypervisor for &H {
    fn event_channel_op(&self, op: EventChannelOp<'_>) -> Result<(), XenError> {
        (**self).event_channel_op(op)
    }
    fn grant_table_op(&self, op: GrantTableOp<'_>) -> Result<(), XenError> {
        (**self).grant_table_op(op)
    }
    fn memory_op(&self, op: MemoryOp<'_>) -> Result<u64, XenError> {
        (**self).memory_op(op)
    }
    fn hvm_op(&self, op: HvmOp<'_>) -> Result<(), XenError> {
        (**self).hvm_op(op)
    }
    fn sched_op(&self, op: SchedOp<'_>) -> Result<u64, XenError> {
        (**self).sched_op(op)
    }
    fn vcpu_op(&self, vcpu: u32, op: VcpuOp<'_>) -> Result<u64, XenError> {
        (**self).vcpu_op(vcpu, op)
    }
    fn xen_version(&self, op: XenVersionOp<'_>) -> Result<u64, XenError> {
        (**self).xen_version(op)
    }
    fn console_io(&self, op: ConsoleIoOp<'_>) -> Result<u64, XenError> {
        (**self).console_io(op)
    }
}
