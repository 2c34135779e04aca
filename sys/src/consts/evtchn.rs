//! Event channels (event_channel.h, xen.h's `VIRQ_*`): operations, status, FIFO ABI.

use super::xen_enum;

xen_enum! {
    /// `EVTCHNOP_*` commands of `HYPERVISOR_event_channel_op`.
    pub enum EvtchnOp: u32 {
        BindInterdomain = EVTCHNOP_bind_interdomain,
        BindVirq = EVTCHNOP_bind_virq,
        BindPirq = EVTCHNOP_bind_pirq,
        Close = EVTCHNOP_close,
        Send = EVTCHNOP_send,
        Status = EVTCHNOP_status,
        AllocUnbound = EVTCHNOP_alloc_unbound,
        BindIpi = EVTCHNOP_bind_ipi,
        BindVcpu = EVTCHNOP_bind_vcpu,
        Unmask = EVTCHNOP_unmask,
        Reset = EVTCHNOP_reset,
        InitControl = EVTCHNOP_init_control,
        ExpandArray = EVTCHNOP_expand_array,
        SetPriority = EVTCHNOP_set_priority,
    }
}

xen_enum! {
    /// `EVTCHNSTAT_*`: `evtchn_status.status`.
    pub enum EvtchnStatus: u32 {
        Closed = EVTCHNSTAT_closed,
        Unbound = EVTCHNSTAT_unbound,
        Interdomain = EVTCHNSTAT_interdomain,
        Pirq = EVTCHNSTAT_pirq,
        Virq = EVTCHNSTAT_virq,
        Ipi = EVTCHNSTAT_ipi,
    }
}

xen_enum! {
    /// `VIRQ_*`: virtual interrupts bindable with `EVTCHNOP_bind_virq` (xen.h).
    pub enum Virq: u32 {
        Timer = VIRQ_TIMER,
        Debug = VIRQ_DEBUG,
        Console = VIRQ_CONSOLE,
        DomExc = VIRQ_DOM_EXC,
        Tbuf = VIRQ_TBUF,
        Debugger = VIRQ_DEBUGGER,
        Xenoprof = VIRQ_XENOPROF,
        ConRing = VIRQ_CON_RING,
        PcpuState = VIRQ_PCPU_STATE,
        MemEvent = VIRQ_MEM_EVENT,
        Argo = VIRQ_ARGO,
        Enomem = VIRQ_ENOMEM,
        Xenpmu = VIRQ_XENPMU,
        Arch0 = VIRQ_ARCH_0,
        Arch1 = VIRQ_ARCH_1,
        Arch2 = VIRQ_ARCH_2,
        Arch3 = VIRQ_ARCH_3,
        Arch4 = VIRQ_ARCH_4,
        Arch5 = VIRQ_ARCH_5,
        Arch6 = VIRQ_ARCH_6,
        Arch7 = VIRQ_ARCH_7,
    }
}

/// Bit *numbers* of the FIFO event word (`EVTCHN_FIFO_PENDING` ... are bit positions).
const fn bit(n: u32) -> i64 {
    1i64 << n
}

bitflags::bitflags! {
    /// The control bits of a FIFO event word (`event_word_t`); the low
    /// [`EVTCHN_FIFO_LINK_BITS`] bits hold the link to the next event ([`EvtchnFifoWord::link`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct EvtchnFifoWord: u32 {
        /// `1 << EVTCHN_FIFO_PENDING`
        const PENDING = super::conv::u32(bit(crate::x86_64::EVTCHN_FIFO_PENDING));
        /// `1 << EVTCHN_FIFO_MASKED`
        const MASKED = super::conv::u32(bit(crate::x86_64::EVTCHN_FIFO_MASKED));
        /// `1 << EVTCHN_FIFO_LINKED`
        const LINKED = super::conv::u32(bit(crate::x86_64::EVTCHN_FIFO_LINKED));
        /// `1 << EVTCHN_FIFO_BUSY`
        const BUSY = super::conv::u32(bit(crate::x86_64::EVTCHN_FIFO_BUSY));
        /// The link field (`EVTCHN_FIFO_LINK_MASK`), so that `from_bits_truncate` keeps it.
        const LINK = crate::x86_64::EVTCHN_FIFO_LINK_MASK;
    }
}

impl EvtchnFifoWord {
    /// The port linked after this one (0: end of queue).
    #[must_use]
    pub const fn link(self) -> u32 {
        self.bits() & crate::x86_64::EVTCHN_FIFO_LINK_MASK
    }
}

// The FIFO bits are bit positions, not masks, so `xen_flags!` does not apply: check here that
// both widths agree on them.
const _: () = {
    use crate::{x86_32 as w32, x86_64 as w64};
    assert!(w64::EVTCHN_FIFO_PENDING == w32::EVTCHN_FIFO_PENDING);
    assert!(w64::EVTCHN_FIFO_MASKED == w32::EVTCHN_FIFO_MASKED);
    assert!(w64::EVTCHN_FIFO_LINKED == w32::EVTCHN_FIFO_LINKED);
    assert!(w64::EVTCHN_FIFO_BUSY == w32::EVTCHN_FIFO_BUSY);
    assert!(w64::EVTCHN_FIFO_LINK_MASK == w32::EVTCHN_FIFO_LINK_MASK);
    assert!(w64::EVTCHN_FIFO_LINK_MASK == (1 << w64::EVTCHN_FIFO_LINK_BITS) - 1);
};

/// `EVTCHN_FIFO_LINK_BITS`: width of the link field of a FIFO event word.
pub const EVTCHN_FIFO_LINK_BITS: u32 = crate::x86_64::EVTCHN_FIFO_LINK_BITS;
/// `EVTCHN_FIFO_NR_CHANNELS`: ports addressable by the FIFO ABI.
pub const EVTCHN_FIFO_NR_CHANNELS: u32 = crate::x86_64::EVTCHN_FIFO_NR_CHANNELS;
/// `EVTCHN_FIFO_MAX_QUEUES`: priority queues per VCPU (`evtchn_fifo_control_block.head`).
pub const EVTCHN_FIFO_MAX_QUEUES: usize = super::to_usize(crate::x86_64::EVTCHN_FIFO_MAX_QUEUES);
/// `EVTCHN_FIFO_PRIORITY_DEFAULT`.
pub const EVTCHN_FIFO_PRIORITY_DEFAULT: u32 = crate::x86_64::EVTCHN_FIFO_PRIORITY_DEFAULT;
/// `EVTCHN_FIFO_PRIORITY_MIN` (numerically the largest).
pub const EVTCHN_FIFO_PRIORITY_MIN: u32 = crate::x86_64::EVTCHN_FIFO_PRIORITY_MIN;
/// `EVTCHN_FIFO_PRIORITY_MAX` (numerically 0).
pub const EVTCHN_FIFO_PRIORITY_MAX: u32 = crate::x86_64::EVTCHN_FIFO_PRIORITY_MAX;

/// Ports of the 2-level ABI in the x86_64 layout: one bit of `shared_info.evtchn_pending`
/// (an array of `xen_ulong_t`) per port, i.e. 4096.
pub const EVTCHN_2L_NR_CHANNELS_X86_64: usize =
    super::array_len(|s: &crate::x86_64::shared_info| &s.evtchn_pending)
        * core::mem::size_of::<crate::x86_64::xen_ulong_t>()
        * 8;
/// Ports of the 2-level ABI in the x86_32 layout, i.e. 1024.
pub const EVTCHN_2L_NR_CHANNELS_X86_32: usize =
    super::array_len(|s: &crate::x86_32::shared_info| &s.evtchn_pending)
        * core::mem::size_of::<crate::x86_32::xen_ulong_t>()
        * 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations() {
        assert_eq!(EvtchnOp::Send.value(), 4);
        assert_eq!(EvtchnOp::try_from(11), Ok(EvtchnOp::InitControl));
        assert!(EvtchnOp::try_from(14).is_err());
        assert_eq!(EvtchnStatus::try_from(2), Ok(EvtchnStatus::Interdomain));
        assert_eq!(Virq::try_from(0), Ok(Virq::Timer));
        assert!(Virq::try_from(5).is_err(), "5 is unassigned");
    }

    #[test]
    fn fifo_event_word() {
        let w = EvtchnFifoWord::from_bits_retain(0x8000_0000 | 0x4000_0000 | 42);
        assert!(w.contains(EvtchnFifoWord::PENDING | EvtchnFifoWord::MASKED));
        assert!(!w.contains(EvtchnFifoWord::LINKED));
        assert_eq!(w.link(), 42);
        assert_eq!(EvtchnFifoWord::BUSY.bits(), 1 << 28);
        assert_eq!(EVTCHN_FIFO_NR_CHANNELS, 1 << EVTCHN_FIFO_LINK_BITS);
        assert_eq!(EVTCHN_FIFO_MAX_QUEUES, 16);
        assert_eq!(EVTCHN_2L_NR_CHANNELS_X86_64, 4096);
        assert_eq!(EVTCHN_2L_NR_CHANNELS_X86_32, 1024);
    }
}
