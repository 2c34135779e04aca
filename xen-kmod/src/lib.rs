//! The base Xen module (`xen.ko`): the hypercall seam every core uses ([`Hypervisor`]), its
//! real implementation on x86 ([`arch::XenPlatform`]), Xen errors ([`XenError`]), typed
//! hypercall wrappers ([`HypervisorExt`]), `shared_info` / `vcpu_info` access ([`shared`]) and
//! HVM parameters ([`hvm`]).
//!
//! The portable cores (event channels, grant tables, xenstore, the drivers) are generic over
//! [`Hypervisor`]; in the kernel they get [`arch::XenPlatform`], on the host they get `xensim`.
//!
//! Unsafe code is confined to [`arch`] (assembly, MSR, the hypercall trap); shared memory is
//! reached only through `xen-shmem`.
#![no_std]

#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
pub mod arch;
mod error;
pub mod ext;
pub mod hvm;
pub mod hypervisor;
pub mod privcmd;
pub mod shared;

pub use error::XenError;
pub use ext::{GnttabError, HypervisorExt};
pub use hypervisor::{
    ConsoleIoOp, EventChannelOp, GrantTableOp, HvmOp, Hypervisor, MemoryOp, SchedOp, VcpuOp,
    XenVersionOp,
};

/// `DOMID_SELF`: "the calling domain" in hypercall arguments (`xen.h`; a cast macro bindgen
/// cannot translate).
pub const DOMID_SELF: xen_sys::native::domid_t = 0x7FF0;
