//! The base Xen module (`xen.ko`): the hypercall seam every core uses ([`Hypervisor`]), its
//! real implementation on x86 (`arch`), Xen errors ([`XenError`]), shared_info / vcpu_info
//! access and HVM parameters.
//!
//! The portable cores (event channels, grant tables, xenstore, the drivers) are generic over
//! [`Hypervisor`]; in the kernel they get the real platform, on the host they get `xensim`.
#![no_std]

mod error;
pub mod hypervisor;

pub use error::XenError;
pub use hypervisor::{
    ConsoleIoOp, EventChannelOp, GrantTableOp, HvmOp, Hypervisor, MemoryOp, SchedOp, VcpuOp,
    XenVersionOp,
};
