//! HVM parameters: how an HVM/PVH guest learns where its xenstore and console rings are, and
//! tells Xen how to deliver event upcalls.

use xen_sys::native as abi;

use crate::{HvmOp, Hypervisor, XenError, DOMID_SELF};

/// The HVM parameters this project reads or writes (`HVM_PARAM_*`), typed so that a raw index
/// cannot be mistyped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HvmParam {
    /// `HVM_PARAM_CALLBACK_IRQ`: how event upcalls are delivered (see [`CallbackVia`]).
    CallbackIrq,
    /// `HVM_PARAM_STORE_PFN`: guest frame of the xenstore ring.
    StorePfn,
    /// `HVM_PARAM_STORE_EVTCHN`: event channel of the xenstore ring.
    StoreEvtchn,
    /// `HVM_PARAM_CONSOLE_PFN`: guest frame of the PV console ring.
    ConsolePfn,
    /// `HVM_PARAM_CONSOLE_EVTCHN`: event channel of the PV console.
    ConsoleEvtchn,
}

impl HvmParam {
    /// Every parameter, for exhaustive tests.
    pub const ALL: [HvmParam; 5] = [
        HvmParam::CallbackIrq,
        HvmParam::StorePfn,
        HvmParam::StoreEvtchn,
        HvmParam::ConsolePfn,
        HvmParam::ConsoleEvtchn,
    ];

    /// The `HVM_PARAM_*` index.
    #[must_use]
    pub const fn index(self) -> u32 {
        match self {
            HvmParam::CallbackIrq => abi::HVM_PARAM_CALLBACK_IRQ,
            HvmParam::StorePfn => abi::HVM_PARAM_STORE_PFN,
            HvmParam::StoreEvtchn => abi::HVM_PARAM_STORE_EVTCHN,
            HvmParam::ConsolePfn => abi::HVM_PARAM_CONSOLE_PFN,
            HvmParam::ConsoleEvtchn => abi::HVM_PARAM_CONSOLE_EVTCHN,
        }
    }

    /// The parameter with `HVM_PARAM_*` index `index`, if it is one of ours.
    #[must_use]
    pub fn from_index(index: u32) -> Option<HvmParam> {
        HvmParam::ALL.into_iter().find(|p| p.index() == index)
    }
}

/// Encodings of `HVM_PARAM_CALLBACK_IRQ` (`HVM_PARAM_CALLBACK_TYPE_*` in bits 63:56).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackVia {
    /// Upcalls as an ISA/IO-APIC GSI.
    Gsi(u32),
    /// Upcalls as the INTx line of the Xen platform PCI device.
    PciIntx {
        /// PCI domain.
        domain: u16,
        /// PCI bus.
        bus: u8,
        /// Device (5 bits).
        device: u8,
        /// INTx pin 0..3 (A..D).
        pin: u8,
    },
    /// Upcalls as a LAPIC vector on every vCPU (the global "vector callback").
    Vector(u8),
}

impl CallbackVia {
    /// The parameter value.
    #[must_use]
    pub fn encode(self) -> u64 {
        let ty = |t: u32| u64::from(t) << 56;
        match self {
            CallbackVia::Gsi(gsi) => ty(abi::HVM_PARAM_CALLBACK_TYPE_GSI) | u64::from(gsi),
            CallbackVia::PciIntx {
                domain,
                bus,
                device,
                pin,
            } => {
                ty(abi::HVM_PARAM_CALLBACK_TYPE_PCI_INTX)
                    | (u64::from(domain) << 16)
                    | (u64::from(bus) << 8)
                    | (u64::from(device & 0x1f) << 3)
                    | u64::from(pin & 3)
            }
            CallbackVia::Vector(v) => ty(abi::HVM_PARAM_CALLBACK_TYPE_VECTOR) | u64::from(v),
        }
    }

    /// Decodes a parameter value (`None` for an unknown type).
    #[must_use]
    pub fn decode(value: u64) -> Option<CallbackVia> {
        // CAST: each extracted field is masked to its width first.
        #[expect(
            clippy::cast_possible_truncation,
            reason = "fields masked to their widths"
        )]
        let via = match (value >> 56) as u32 {
            t if t == abi::HVM_PARAM_CALLBACK_TYPE_GSI => CallbackVia::Gsi(value as u32),
            t if t == abi::HVM_PARAM_CALLBACK_TYPE_PCI_INTX => CallbackVia::PciIntx {
                domain: (value >> 16) as u16,
                bus: (value >> 8) as u8,
                device: ((value >> 3) & 0x1f) as u8,
                pin: (value & 3) as u8,
            },
            t if t == abi::HVM_PARAM_CALLBACK_TYPE_VECTOR => CallbackVia::Vector(value as u8),
            _ => return None,
        };
        Some(via)
    }
}

/// Reads an HVM parameter of our own domain.
///
/// # Errors
/// Xen's error.
pub fn get_param<H: Hypervisor + ?Sized>(hv: &H, param: HvmParam) -> Result<u64, XenError> {
    let mut p = abi::xen_hvm_param {
        domid: DOMID_SELF,
        pad: 0,
        index: param.index(),
        value: 0,
    };
    hv.hvm_op(HvmOp::GetParam(&mut p))?;
    Ok(p.value)
}

/// Writes an HVM parameter of our own domain.
///
/// # Errors
/// Xen's error.
pub fn set_param<H: Hypervisor + ?Sized>(
    hv: &H,
    param: HvmParam,
    value: u64,
) -> Result<(), XenError> {
    let mut p = abi::xen_hvm_param {
        domid: DOMID_SELF,
        pad: 0,
        index: param.index(),
        value,
    };
    hv.hvm_op(HvmOp::SetParam(&mut p))
}

/// Reads a parameter that holds an event-channel port, checking it fits a port number (a
/// hypervisor handing out a larger value is refused with `EINVAL`, not truncated).
///
/// # Errors
/// Xen's error, or `EINVAL` for a value that is not a port.
pub fn get_port_param<H: Hypervisor + ?Sized>(hv: &H, param: HvmParam) -> Result<u32, XenError> {
    let v = get_param(hv, param)?;
    u32::try_from(v)
        .ok()
        .filter(|&p| p < abi::EVTCHN_FIFO_NR_CHANNELS)
        .ok_or(XenError::EINVAL)
}

/// Per-vCPU upcall vector (`HVMOP_set_evtchn_upcall_vector`, advertised by
/// `XEN_HVM_CPUID_UPCALL_VECTOR`): needed for the upcalls of vCPUs other than 0 to be routed
/// per CPU rather than through the global callback.
///
/// # Errors
/// Xen's error (`EINVAL` for a vector below 0x10).
pub fn set_upcall_vector<H: Hypervisor + ?Sized>(
    hv: &H,
    vcpu: u32,
    vector: u8,
) -> Result<(), XenError> {
    let mut a = abi::xen_hvm_evtchn_upcall_vector {
        vcpu,
        vector,
        ..Default::default()
    };
    hv.hvm_op(HvmOp::SetEvtchnUpcallVector(&mut a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_match_params_h() {
        assert_eq!(HvmParam::CallbackIrq.index(), 0);
        assert_eq!(HvmParam::StorePfn.index(), 1);
        assert_eq!(HvmParam::StoreEvtchn.index(), 2);
        assert_eq!(HvmParam::ConsolePfn.index(), 17);
        assert_eq!(HvmParam::ConsoleEvtchn.index(), 18);
        for p in HvmParam::ALL {
            assert_eq!(HvmParam::from_index(p.index()), Some(p));
        }
        assert_eq!(HvmParam::from_index(99), None);
    }

    #[test]
    fn callback_via_roundtrip() {
        let cases = [
            CallbackVia::Gsi(28),
            CallbackVia::PciIntx {
                domain: 0,
                bus: 0,
                device: 3,
                pin: 0,
            },
            CallbackVia::PciIntx {
                domain: 2,
                bus: 7,
                device: 31,
                pin: 3,
            },
            CallbackVia::Vector(0xf3),
        ];
        for c in cases {
            assert_eq!(CallbackVia::decode(c.encode()), Some(c));
        }
        assert_eq!(CallbackVia::Vector(0xf3).encode(), (2u64 << 56) | 0xf3);
        assert_eq!(CallbackVia::decode(7u64 << 56), None);
    }
}
