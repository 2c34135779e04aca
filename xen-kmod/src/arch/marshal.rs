//! Turning a typed call into Xen's raw hypercall: `(hypercall number, arg1..arg5)`.
//!
//! This is the single place where the typed seam becomes pointers, so it is kept pure (no asm)
//! and tested exhaustively on the host: every variant is checked for the hypercall number, the
//! sub-command, the argument order, the count, and that pointer arguments point at the caller's
//! struct or slice (or at a correctly filled temporary). The register assignment of the
//! arguments is the job of the asm in `raw`, tested separately.
//!
//! Each function takes the call and a `trap` closure that performs the raw hypercall. The
//! pointers in the [`RawCall`] handed to `trap` are valid (and exclusively ours) for the
//! duration of that closure call only: they point into the borrowed arguments or into locals
//! of the marshalling function.

use xen_sys::native as abi;
use xen_sys::native::GuestPtr;

use crate::{
    ConsoleIoOp, EventChannelOp, GrantTableOp, HvmOp, MemoryOp, SchedOp, VcpuOp, XenError,
    XenVersionOp,
};

/// A raw hypercall: number and up to five word-sized arguments, in Xen's argument order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawCall {
    /// `__HYPERVISOR_*` number.
    pub op: u32,
    /// Arguments 1..5 (unused ones are 0).
    pub args: [usize; 5],
}

// Addresses handed to Xen leave the Rust abstract machine: expose their provenance, so that
// the hypervisor's (or a test trap's) accesses through them are accounted for.
fn ptr<T>(r: &mut T) -> usize {
    core::ptr::from_mut(r).expose_provenance()
}

fn slice_ptr<T>(s: &mut [T]) -> usize {
    s.as_mut_ptr().expose_provenance()
}

fn count(len: usize) -> Result<usize, XenError> {
    // Xen's counts are `unsigned int`.
    u32::try_from(len)
        .map(|_| len)
        .map_err(|_| XenError::EINVAL)
}

fn cmd(c: u32) -> usize {
    // CAST: u32 always fits usize on the x86 targets (32 and 64 bit).
    c as usize
}

fn ret<T>(r: isize, ok: impl FnOnce(u64) -> T) -> Result<T, XenError> {
    // CAST: isize is at most 64 bits on our targets; sign-extends on i386 (eax is a C long).
    XenError::from_return(r as i64).map(ok)
}

fn raw(op: u32, args: [usize; 5]) -> RawCall {
    RawCall { op, args }
}

/// `HYPERVISOR_event_channel_op(cmd, arg)`.
///
/// # Errors
/// The hypercall's error.
pub fn event_channel_op(
    op: EventChannelOp<'_>,
    trap: impl FnOnce(&RawCall) -> isize,
) -> Result<(), XenError> {
    let (c, p) = match op {
        EventChannelOp::AllocUnbound(a) => (abi::EVTCHNOP_alloc_unbound, ptr(a)),
        EventChannelOp::BindInterdomain(a) => (abi::EVTCHNOP_bind_interdomain, ptr(a)),
        EventChannelOp::BindVirq(a) => (abi::EVTCHNOP_bind_virq, ptr(a)),
        EventChannelOp::BindIpi(a) => (abi::EVTCHNOP_bind_ipi, ptr(a)),
        EventChannelOp::Close(a) => (abi::EVTCHNOP_close, ptr(a)),
        EventChannelOp::Send(a) => (abi::EVTCHNOP_send, ptr(a)),
        EventChannelOp::Status(a) => (abi::EVTCHNOP_status, ptr(a)),
        EventChannelOp::BindVcpu(a) => (abi::EVTCHNOP_bind_vcpu, ptr(a)),
        EventChannelOp::Unmask(a) => (abi::EVTCHNOP_unmask, ptr(a)),
        EventChannelOp::Reset(a) => (abi::EVTCHNOP_reset, ptr(a)),
        EventChannelOp::InitControl(a) => (abi::EVTCHNOP_init_control, ptr(a)),
        EventChannelOp::ExpandArray(a) => (abi::EVTCHNOP_expand_array, ptr(a)),
        EventChannelOp::SetPriority(a) => (abi::EVTCHNOP_set_priority, ptr(a)),
    };
    ret(
        trap(&raw(
            abi::__HYPERVISOR_event_channel_op,
            [cmd(c), p, 0, 0, 0],
        )),
        |_| (),
    )
}

/// `HYPERVISOR_grant_table_op(cmd, args, count)`.
///
/// # Errors
/// The hypercall's error; `EINVAL` (without a hypercall) for a batch longer than `u32::MAX` or
/// an `nr_frames` larger than the frame slice.
pub fn grant_table_op(
    op: GrantTableOp<'_>,
    trap: impl FnOnce(&RawCall) -> isize,
) -> Result<(), XenError> {
    let (c, p, n) = match op {
        GrantTableOp::MapGrantRef(s) => {
            (abi::GNTTABOP_map_grant_ref, slice_ptr(s), count(s.len())?)
        }
        GrantTableOp::UnmapGrantRef(s) => {
            (abi::GNTTABOP_unmap_grant_ref, slice_ptr(s), count(s.len())?)
        }
        GrantTableOp::Copy(s) => (abi::GNTTABOP_copy, slice_ptr(s), count(s.len())?),
        GrantTableOp::SetupTable { args, frames } => {
            if args.nr_frames as usize > frames.len() {
                return Err(XenError::EINVAL);
            }
            args.frame_list.p = GuestPtr::from_ptr(frames.as_mut_ptr());
            (abi::GNTTABOP_setup_table, ptr(args), 1)
        }
        GrantTableOp::GetStatusFrames { args, frames } => {
            if args.nr_frames as usize > frames.len() {
                return Err(XenError::EINVAL);
            }
            args.frame_list.p = GuestPtr::from_ptr(frames.as_mut_ptr());
            (abi::GNTTABOP_get_status_frames, ptr(args), 1)
        }
        GrantTableOp::QuerySize(a) => (abi::GNTTABOP_query_size, ptr(a), 1),
        GrantTableOp::SetVersion(a) => (abi::GNTTABOP_set_version, ptr(a), 1),
        GrantTableOp::GetVersion(a) => (abi::GNTTABOP_get_version, ptr(a), 1),
    };
    ret(
        trap(&raw(abi::__HYPERVISOR_grant_table_op, [cmd(c), p, n, 0, 0])),
        |_| (),
    )
}

fn reservation(
    c: u32,
    args: &mut abi::xen_memory_reservation,
    extents: &mut [abi::xen_pfn_t],
) -> Result<(u32, usize), XenError> {
    let n = usize::try_from(args.nr_extents).map_err(|_| XenError::EINVAL)?;
    if n > extents.len() {
        return Err(XenError::EINVAL);
    }
    args.extent_start.p = GuestPtr::from_ptr(extents.as_mut_ptr());
    Ok((c, ptr(args)))
}

/// `HYPERVISOR_memory_op(cmd, arg)`.
///
/// # Errors
/// The hypercall's error; `EINVAL` (without a hypercall) for `nr_extents` larger than the
/// extent slice.
pub fn memory_op(op: MemoryOp<'_>, trap: impl FnOnce(&RawCall) -> isize) -> Result<u64, XenError> {
    let (c, p) = match op {
        MemoryOp::AddToPhysmap(a) => (abi::XENMEM_add_to_physmap, ptr(a)),
        MemoryOp::RemoveFromPhysmap(a) => (abi::XENMEM_remove_from_physmap, ptr(a)),
        MemoryOp::IncreaseReservation { args, extents } => {
            reservation(abi::XENMEM_increase_reservation, args, extents)?
        }
        MemoryOp::DecreaseReservation { args, extents } => {
            reservation(abi::XENMEM_decrease_reservation, args, extents)?
        }
        MemoryOp::PopulatePhysmap { args, extents } => {
            reservation(abi::XENMEM_populate_physmap, args, extents)?
        }
        MemoryOp::CurrentReservation(d) => (abi::XENMEM_current_reservation, ptr(d)),
        MemoryOp::MaximumReservation(d) => (abi::XENMEM_maximum_reservation, ptr(d)),
        MemoryOp::MaximumGpfn(d) => (abi::XENMEM_maximum_gpfn, ptr(d)),
    };
    ret(
        trap(&raw(abi::__HYPERVISOR_memory_op, [cmd(c), p, 0, 0, 0])),
        |v| v,
    )
}

/// `HYPERVISOR_hvm_op(cmd, arg)`.
///
/// # Errors
/// The hypercall's error.
pub fn hvm_op(op: HvmOp<'_>, trap: impl FnOnce(&RawCall) -> isize) -> Result<(), XenError> {
    let (c, p) = match op {
        HvmOp::SetParam(a) => (abi::HVMOP_set_param, ptr(a)),
        HvmOp::GetParam(a) => (abi::HVMOP_get_param, ptr(a)),
        HvmOp::SetEvtchnUpcallVector(a) => (abi::HVMOP_set_evtchn_upcall_vector, ptr(a)),
    };
    ret(
        trap(&raw(abi::__HYPERVISOR_hvm_op, [cmd(c), p, 0, 0, 0])),
        |_| (),
    )
}

/// `HYPERVISOR_sched_op(cmd, arg)`.
///
/// # Errors
/// The hypercall's error; `EINVAL` (without a hypercall) for more than `u32::MAX` ports.
pub fn sched_op(op: SchedOp<'_>, trap: impl FnOnce(&RawCall) -> isize) -> Result<u64, XenError> {
    let r = match op {
        SchedOp::Yield => trap(&raw(
            abi::__HYPERVISOR_sched_op,
            [cmd(abi::SCHEDOP_yield), 0, 0, 0, 0],
        )),
        SchedOp::Block => trap(&raw(
            abi::__HYPERVISOR_sched_op,
            [cmd(abi::SCHEDOP_block), 0, 0, 0, 0],
        )),
        SchedOp::Shutdown { reason } => {
            let mut s = abi::sched_shutdown { reason };
            trap(&raw(
                abi::__HYPERVISOR_sched_op,
                [cmd(abi::SCHEDOP_shutdown), ptr(&mut s), 0, 0, 0],
            ))
        }
        SchedOp::Poll { ports, timeout } => {
            let nr_ports = u32::try_from(ports.len()).map_err(|_| XenError::EINVAL)?;
            let mut p = abi::sched_poll {
                nr_ports,
                timeout,
                ..Default::default()
            };
            // Xen only reads the port list (a `const` handle in spirit).
            p.ports.p = GuestPtr::from_const_ptr(ports.as_ptr());
            trap(&raw(
                abi::__HYPERVISOR_sched_op,
                [cmd(abi::SCHEDOP_poll), ptr(&mut p), 0, 0, 0],
            ))
        }
    };
    ret(r, |v| v)
}

/// `HYPERVISOR_vcpu_op(cmd, vcpu, arg)`.
///
/// # Errors
/// The hypercall's error.
pub fn vcpu_op(
    vcpu: u32,
    op: VcpuOp<'_>,
    trap: impl FnOnce(&RawCall) -> isize,
) -> Result<u64, XenError> {
    let (c, p) = match op {
        VcpuOp::RegisterVcpuInfo(a) => (abi::VCPUOP_register_vcpu_info, ptr(a)),
        VcpuOp::Up => (abi::VCPUOP_up, 0),
        VcpuOp::Down => (abi::VCPUOP_down, 0),
        VcpuOp::IsUp => (abi::VCPUOP_is_up, 0),
        VcpuOp::SetSingleshotTimer(a) => (abi::VCPUOP_set_singleshot_timer, ptr(a)),
        VcpuOp::StopSingleshotTimer => (abi::VCPUOP_stop_singleshot_timer, 0),
        VcpuOp::StopPeriodicTimer => (abi::VCPUOP_stop_periodic_timer, 0),
    };
    ret(
        trap(&raw(
            abi::__HYPERVISOR_vcpu_op,
            [cmd(c), cmd(vcpu), p, 0, 0],
        )),
        |v| v,
    )
}

/// `HYPERVISOR_xen_version(cmd, arg)`.
///
/// # Errors
/// The hypercall's error.
pub fn xen_version(
    op: XenVersionOp<'_>,
    trap: impl FnOnce(&RawCall) -> isize,
) -> Result<u64, XenError> {
    let (c, p) = match op {
        XenVersionOp::Version => (abi::XENVER_version, 0),
        XenVersionOp::ExtraVersion(a) => (abi::XENVER_extraversion, slice_ptr(a)),
        XenVersionOp::Capabilities(a) => (abi::XENVER_capabilities, slice_ptr(a)),
        XenVersionOp::GetFeatures(a) => (abi::XENVER_get_features, ptr(a)),
        XenVersionOp::PageSize => (abi::XENVER_pagesize, 0),
        XenVersionOp::GuestHandle(a) => (abi::XENVER_guest_handle, slice_ptr(a)),
    };
    ret(
        trap(&raw(abi::__HYPERVISOR_xen_version, [cmd(c), p, 0, 0, 0])),
        |v| v,
    )
}

/// `HYPERVISOR_console_io(cmd, count, buffer)` (note: count before buffer).
///
/// # Errors
/// The hypercall's error; `EINVAL` (without a hypercall) for a buffer longer than `i32::MAX`.
pub fn console_io(
    op: ConsoleIoOp<'_>,
    trap: impl FnOnce(&RawCall) -> isize,
) -> Result<u64, XenError> {
    let (c, n, p) = match op {
        ConsoleIoOp::Write(b) => (
            abi::CONSOLEIO_write,
            b.len(),
            b.as_ptr().expose_provenance(),
        ),
        ConsoleIoOp::Read(b) => (abi::CONSOLEIO_read, b.len(), slice_ptr(b)),
    };
    // `count` is a C `int`.
    if i32::try_from(n).is_err() {
        return Err(XenError::EINVAL);
    }
    ret(
        trap(&raw(abi::__HYPERVISOR_console_io, [cmd(c), n, p, 0, 0])),
        |v| v,
    )
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::cell::Cell;
    use std::vec::Vec;

    /// A trap that records the call and returns `ret`.
    fn rec(seen: &Cell<Option<RawCall>>, ret: isize) -> impl FnOnce(&RawCall) -> isize + '_ {
        move |c| {
            seen.set(Some(*c));
            ret
        }
    }

    fn addr<T>(r: &T) -> usize {
        core::ptr::from_ref(r).addr()
    }

    #[test]
    fn event_channel_ops() {
        let seen = Cell::new(None);
        macro_rules! check {
            ($variant:ident, $ty:ident, $cmd:ident) => {{
                let mut a = abi::$ty::default();
                let want = addr(&a);
                event_channel_op(EventChannelOp::$variant(&mut a), rec(&seen, 0)).unwrap();
                let c = seen.take().unwrap();
                assert_eq!(c.op, abi::__HYPERVISOR_event_channel_op);
                assert_eq!(c.op, 32);
                assert_eq!(
                    c.args,
                    [abi::$cmd as usize, want, 0, 0, 0],
                    stringify!($variant)
                );
            }};
        }
        check!(AllocUnbound, evtchn_alloc_unbound, EVTCHNOP_alloc_unbound);
        check!(
            BindInterdomain,
            evtchn_bind_interdomain,
            EVTCHNOP_bind_interdomain
        );
        check!(BindVirq, evtchn_bind_virq, EVTCHNOP_bind_virq);
        check!(BindIpi, evtchn_bind_ipi, EVTCHNOP_bind_ipi);
        check!(Close, evtchn_close, EVTCHNOP_close);
        check!(Send, evtchn_send, EVTCHNOP_send);
        check!(Status, evtchn_status, EVTCHNOP_status);
        check!(BindVcpu, evtchn_bind_vcpu, EVTCHNOP_bind_vcpu);
        check!(Unmask, evtchn_unmask, EVTCHNOP_unmask);
        check!(Reset, evtchn_reset, EVTCHNOP_reset);
        check!(InitControl, evtchn_init_control, EVTCHNOP_init_control);
        check!(ExpandArray, evtchn_expand_array, EVTCHNOP_expand_array);
        check!(SetPriority, evtchn_set_priority, EVTCHNOP_set_priority);
        // The documented numbers, independently of the bindings.
        assert_eq!(
            [
                abi::EVTCHNOP_bind_interdomain,
                abi::EVTCHNOP_bind_virq,
                abi::EVTCHNOP_close,
                abi::EVTCHNOP_send,
                abi::EVTCHNOP_status,
                abi::EVTCHNOP_alloc_unbound,
                abi::EVTCHNOP_bind_ipi,
                abi::EVTCHNOP_bind_vcpu,
                abi::EVTCHNOP_unmask,
                abi::EVTCHNOP_init_control,
                abi::EVTCHNOP_expand_array,
                abi::EVTCHNOP_set_priority
            ],
            [0, 1, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13]
        );
    }

    #[test]
    fn errors_and_results_decode() {
        let seen = Cell::new(None);
        let mut a = abi::evtchn_send::default();
        assert_eq!(
            event_channel_op(EventChannelOp::Send(&mut a), rec(&seen, -22)),
            Err(XenError::EINVAL)
        );
        let mut d: abi::domid_t = 0;
        assert_eq!(
            memory_op(MemoryOp::CurrentReservation(&mut d), rec(&seen, 4096)),
            Ok(4096)
        );
        assert_eq!(
            xen_version(XenVersionOp::Version, rec(&seen, 0x4_0011)),
            Ok(0x4_0011)
        );
        assert_eq!(
            sched_op(SchedOp::Yield, rec(&seen, -38)),
            Err(XenError::ENOSYS)
        );
    }

    #[test]
    fn grant_table_ops() {
        let seen = Cell::new(None);
        let mut maps: Vec<abi::gnttab_map_grant_ref> = (0..3).map(|_| Default::default()).collect();
        let want = maps.as_ptr().addr();
        grant_table_op(GrantTableOp::MapGrantRef(&mut maps), rec(&seen, 0)).unwrap();
        let c = seen.take().unwrap();
        assert_eq!(c.op, abi::__HYPERVISOR_grant_table_op);
        assert_eq!(c.op, 20);
        assert_eq!(
            c.args,
            [abi::GNTTABOP_map_grant_ref as usize, want, 3, 0, 0]
        );

        let mut unmaps: Vec<abi::gnttab_unmap_grant_ref> =
            (0..2).map(|_| Default::default()).collect();
        let want = unmaps.as_ptr().addr();
        grant_table_op(GrantTableOp::UnmapGrantRef(&mut unmaps), rec(&seen, 0)).unwrap();
        assert_eq!(
            seen.take().unwrap().args,
            [abi::GNTTABOP_unmap_grant_ref as usize, want, 2, 0, 0]
        );

        let mut copies: Vec<abi::gnttab_copy> = (0..5).map(|_| Default::default()).collect();
        let want = copies.as_ptr().addr();
        grant_table_op(GrantTableOp::Copy(&mut copies), rec(&seen, 0)).unwrap();
        assert_eq!(
            seen.take().unwrap().args,
            [abi::GNTTABOP_copy as usize, want, 5, 0, 0]
        );

        let mut frames = [0 as abi::xen_pfn_t; 4];
        let mut args = abi::gnttab_setup_table {
            nr_frames: 4,
            ..Default::default()
        };
        let (want_args, want_frames) = (addr(&args), frames.as_ptr().addr());
        grant_table_op(
            GrantTableOp::SetupTable {
                args: &mut args,
                frames: &mut frames,
            },
            rec(&seen, 0),
        )
        .unwrap();
        assert_eq!(
            seen.take().unwrap().args,
            [abi::GNTTABOP_setup_table as usize, want_args, 1, 0, 0]
        );
        assert_eq!(args.frame_list.p.as_ptr().addr(), want_frames);
        // nr_frames beyond the slice: refused before any hypercall.
        args.nr_frames = 5;
        assert_eq!(
            grant_table_op(
                GrantTableOp::SetupTable {
                    args: &mut args,
                    frames: &mut frames
                },
                rec(&seen, 0)
            ),
            Err(XenError::EINVAL)
        );
        assert!(seen.take().is_none());

        let mut sframes = [0u64; 2];
        let mut sargs = abi::gnttab_get_status_frames {
            nr_frames: 2,
            ..Default::default()
        };
        let want_s: usize = sframes.as_ptr().addr();
        grant_table_op(
            GrantTableOp::GetStatusFrames {
                args: &mut sargs,
                frames: &mut sframes,
            },
            rec(&seen, 0),
        )
        .unwrap();
        assert_eq!(
            seen.take().unwrap().args[0],
            abi::GNTTABOP_get_status_frames as usize
        );
        assert_eq!(sargs.frame_list.p.as_ptr().addr(), want_s);
        sargs.nr_frames = 3;
        assert!(grant_table_op(
            GrantTableOp::GetStatusFrames {
                args: &mut sargs,
                frames: &mut sframes
            },
            rec(&seen, 0)
        )
        .is_err());

        macro_rules! single {
            ($variant:ident, $ty:ident, $cmd:ident) => {{
                let mut a = abi::$ty::default();
                let want = addr(&a);
                grant_table_op(GrantTableOp::$variant(&mut a), rec(&seen, 0)).unwrap();
                assert_eq!(
                    seen.take().unwrap().args,
                    [abi::$cmd as usize, want, 1, 0, 0]
                );
            }};
        }
        single!(QuerySize, gnttab_query_size, GNTTABOP_query_size);
        single!(SetVersion, gnttab_set_version, GNTTABOP_set_version);
        single!(GetVersion, gnttab_get_version, GNTTABOP_get_version);
        // Empty batches are legal and pass count 0.
        grant_table_op(GrantTableOp::Copy(&mut []), rec(&seen, 0)).unwrap();
        assert_eq!(seen.take().unwrap().args[2], 0);
    }

    #[test]
    fn memory_ops() {
        let seen = Cell::new(None);
        let mut a = abi::xen_add_to_physmap::default();
        let want = addr(&a);
        memory_op(MemoryOp::AddToPhysmap(&mut a), rec(&seen, 0)).unwrap();
        let c = seen.take().unwrap();
        assert_eq!(c.op, abi::__HYPERVISOR_memory_op);
        assert_eq!(c.op, 12);
        assert_eq!(c.args, [abi::XENMEM_add_to_physmap as usize, want, 0, 0, 0]);

        let mut r = abi::xen_remove_from_physmap::default();
        let want = addr(&r);
        memory_op(MemoryOp::RemoveFromPhysmap(&mut r), rec(&seen, 0)).unwrap();
        assert_eq!(
            seen.take().unwrap().args,
            [abi::XENMEM_remove_from_physmap as usize, want, 0, 0, 0]
        );

        for (which, cmdv) in [
            (0, abi::XENMEM_increase_reservation),
            (1, abi::XENMEM_decrease_reservation),
            (2, abi::XENMEM_populate_physmap),
        ] {
            let mut ext = [0 as abi::xen_pfn_t; 8];
            let mut args = abi::xen_memory_reservation {
                nr_extents: 8,
                ..Default::default()
            };
            let (wa, we) = (addr(&args), ext.as_ptr().addr());
            let op = match which {
                0 => MemoryOp::IncreaseReservation {
                    args: &mut args,
                    extents: &mut ext,
                },
                1 => MemoryOp::DecreaseReservation {
                    args: &mut args,
                    extents: &mut ext,
                },
                _ => MemoryOp::PopulatePhysmap {
                    args: &mut args,
                    extents: &mut ext,
                },
            };
            assert_eq!(memory_op(op, rec(&seen, 8)), Ok(8));
            assert_eq!(seen.take().unwrap().args, [cmdv as usize, wa, 0, 0, 0]);
            assert_eq!(args.extent_start.p.as_ptr().addr(), we);
            args.nr_extents = 9;
            let op = MemoryOp::DecreaseReservation {
                args: &mut args,
                extents: &mut ext,
            };
            assert_eq!(memory_op(op, rec(&seen, 0)), Err(XenError::EINVAL));
            assert!(seen.take().is_none());
        }
        for (which, cmdv) in [
            (0, abi::XENMEM_current_reservation),
            (1, abi::XENMEM_maximum_reservation),
            (2, abi::XENMEM_maximum_gpfn),
        ] {
            let mut d: abi::domid_t = 0x7ff0;
            let want = addr(&d);
            let op = match which {
                0 => MemoryOp::CurrentReservation(&mut d),
                1 => MemoryOp::MaximumReservation(&mut d),
                _ => MemoryOp::MaximumGpfn(&mut d),
            };
            memory_op(op, rec(&seen, 0)).unwrap();
            assert_eq!(seen.take().unwrap().args, [cmdv as usize, want, 0, 0, 0]);
        }
    }

    #[test]
    fn hvm_ops() {
        let seen = Cell::new(None);
        let mut p = abi::xen_hvm_param::default();
        let want = addr(&p);
        hvm_op(HvmOp::SetParam(&mut p), rec(&seen, 0)).unwrap();
        let c = seen.take().unwrap();
        assert_eq!((c.op, c.op), (abi::__HYPERVISOR_hvm_op, 34));
        assert_eq!(c.args, [abi::HVMOP_set_param as usize, want, 0, 0, 0]);
        hvm_op(HvmOp::GetParam(&mut p), rec(&seen, 0)).unwrap();
        assert_eq!(
            seen.take().unwrap().args,
            [abi::HVMOP_get_param as usize, want, 0, 0, 0]
        );
        let mut v = abi::xen_hvm_evtchn_upcall_vector::default();
        let want = addr(&v);
        hvm_op(HvmOp::SetEvtchnUpcallVector(&mut v), rec(&seen, 0)).unwrap();
        assert_eq!(
            seen.take().unwrap().args,
            [abi::HVMOP_set_evtchn_upcall_vector as usize, want, 0, 0, 0]
        );
    }

    #[test]
    fn sched_ops() {
        let seen = Cell::new(None);
        sched_op(SchedOp::Yield, rec(&seen, 0)).unwrap();
        let c = seen.take().unwrap();
        assert_eq!((c.op, c.op), (abi::__HYPERVISOR_sched_op, 29));
        assert_eq!(c.args, [abi::SCHEDOP_yield as usize, 0, 0, 0, 0]);
        sched_op(SchedOp::Block, rec(&seen, 0)).unwrap();
        assert_eq!(
            seen.take().unwrap().args,
            [abi::SCHEDOP_block as usize, 0, 0, 0, 0]
        );

        // Shutdown builds a sched_shutdown; check its contents inside the trap, while valid.
        let r = sched_op(
            SchedOp::Shutdown {
                reason: abi::SHUTDOWN_suspend,
            },
            |c| {
                assert_eq!(c.args[0], abi::SCHEDOP_shutdown as usize);
                // SAFETY: marshal guarantees args[1] points at a live sched_shutdown during the trap.
                let s = unsafe {
                    core::ptr::with_exposed_provenance::<abi::sched_shutdown>(c.args[1]).read()
                };
                assert_eq!(s.reason, abi::SHUTDOWN_suspend);
                1
            },
        );
        assert_eq!(r, Ok(1));

        let ports = [3u32, 9, 12];
        let r = sched_op(
            SchedOp::Poll {
                ports: &ports,
                timeout: 77,
            },
            |c| {
                assert_eq!(c.args[0], abi::SCHEDOP_poll as usize);
                // SAFETY: as above, a live sched_poll during the trap.
                let p = unsafe {
                    core::ptr::with_exposed_provenance::<abi::sched_poll>(c.args[1]).read()
                };
                assert_eq!(p.nr_ports, 3);
                assert_eq!(p.timeout, 77);
                assert_eq!(p.ports.p.as_ptr().addr(), ports.as_ptr().addr());
                0
            },
        );
        assert_eq!(r, Ok(0));
    }

    #[test]
    fn vcpu_version_console_ops() {
        let seen = Cell::new(None);
        let mut info = abi::vcpu_register_vcpu_info::default();
        let want = addr(&info);
        vcpu_op(5, VcpuOp::RegisterVcpuInfo(&mut info), rec(&seen, 0)).unwrap();
        let c = seen.take().unwrap();
        assert_eq!((c.op, c.op), (abi::__HYPERVISOR_vcpu_op, 24));
        assert_eq!(
            c.args,
            [abi::VCPUOP_register_vcpu_info as usize, 5, want, 0, 0]
        );
        let mut t = abi::vcpu_set_singleshot_timer::default();
        let want = addr(&t);
        vcpu_op(1, VcpuOp::SetSingleshotTimer(&mut t), rec(&seen, 0)).unwrap();
        assert_eq!(
            seen.take().unwrap().args,
            [abi::VCPUOP_set_singleshot_timer as usize, 1, want, 0, 0]
        );
        for (op, c) in [
            (VcpuOp::Up, abi::VCPUOP_up),
            (VcpuOp::Down, abi::VCPUOP_down),
            (VcpuOp::IsUp, abi::VCPUOP_is_up),
            (
                VcpuOp::StopSingleshotTimer,
                abi::VCPUOP_stop_singleshot_timer,
            ),
            (VcpuOp::StopPeriodicTimer, abi::VCPUOP_stop_periodic_timer),
        ] {
            vcpu_op(2, op, rec(&seen, 1)).unwrap();
            assert_eq!(seen.take().unwrap().args, [c as usize, 2, 0, 0, 0]);
        }

        xen_version(XenVersionOp::Version, rec(&seen, 0)).unwrap();
        let c = seen.take().unwrap();
        assert_eq!((c.op, c.op), (abi::__HYPERVISOR_xen_version, 17));
        assert_eq!(c.args, [abi::XENVER_version as usize, 0, 0, 0, 0]);
        xen_version(XenVersionOp::PageSize, rec(&seen, 4096)).unwrap();
        assert_eq!(
            seen.take().unwrap().args,
            [abi::XENVER_pagesize as usize, 0, 0, 0, 0]
        );
        let mut ev: abi::xen_extraversion_t = Default::default();
        let want = ev.as_ptr().addr();
        xen_version(XenVersionOp::ExtraVersion(&mut ev), rec(&seen, 0)).unwrap();
        assert_eq!(
            seen.take().unwrap().args,
            [abi::XENVER_extraversion as usize, want, 0, 0, 0]
        );
        let mut caps: abi::xen_capabilities_info_t = [0; 1024];
        let want = caps.as_ptr().addr();
        xen_version(XenVersionOp::Capabilities(&mut caps), rec(&seen, 0)).unwrap();
        assert_eq!(
            seen.take().unwrap().args,
            [abi::XENVER_capabilities as usize, want, 0, 0, 0]
        );
        let mut f = abi::xen_feature_info::default();
        let want = addr(&f);
        xen_version(XenVersionOp::GetFeatures(&mut f), rec(&seen, 0)).unwrap();
        assert_eq!(
            seen.take().unwrap().args,
            [abi::XENVER_get_features as usize, want, 0, 0, 0]
        );
        let mut h: abi::xen_domain_handle_t = [0; 16];
        let want = h.as_ptr().addr();
        xen_version(XenVersionOp::GuestHandle(&mut h), rec(&seen, 0)).unwrap();
        assert_eq!(
            seen.take().unwrap().args,
            [abi::XENVER_guest_handle as usize, want, 0, 0, 0]
        );

        let msg = b"hello";
        console_io(ConsoleIoOp::Write(msg), rec(&seen, 0)).unwrap();
        let c = seen.take().unwrap();
        assert_eq!((c.op, c.op), (abi::__HYPERVISOR_console_io, 18));
        assert_eq!(
            c.args,
            [abi::CONSOLEIO_write as usize, 5, msg.as_ptr().addr(), 0, 0]
        );
        let mut buf = [0u8; 9];
        let want = buf.as_ptr().addr();
        assert_eq!(
            console_io(ConsoleIoOp::Read(&mut buf), rec(&seen, 3)),
            Ok(3)
        );
        assert_eq!(
            seen.take().unwrap().args,
            [abi::CONSOLEIO_read as usize, 9, want, 0, 0]
        );
    }
}
