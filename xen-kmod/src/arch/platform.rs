//! [`XenPlatform`]: the [`Hypervisor`] of a real HVM/PVH guest.

use core::fmt;
use core::ptr::NonNull;

use super::cpuid::{self, Vendor, XenCpuid};
use super::marshal::{self, RawCall};
use super::raw;
use crate::{
    ConsoleIoOp, EventChannelOp, GrantTableOp, HvmOp, Hypervisor, MemoryOp, SchedOp, VcpuOp,
    XenError, XenVersionOp,
};

/// How hypercalls trap into Xen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypercallMode {
    /// Through the hypercall page at this (kernel-virtual, executable) address.
    Page(NonNull<u8>),
    /// `vmcall` (Intel).
    Vmcall,
    /// `vmmcall` (AMD).
    Vmmcall,
}

/// Why the platform could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// No Xen CPUID leaves: not running on Xen.
    NotXen,
    /// Xen reports no hypercall page.
    NoHypercallPage,
    /// The CPU vendor is unknown, so the direct instruction cannot be chosen.
    UnknownVendor,
    /// A page address that is null or not page-aligned.
    BadPage,
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlatformError::NotXen => "not running on Xen (no hypervisor CPUID signature)",
            PlatformError::NoHypercallPage => "Xen advertises no hypercall page",
            PlatformError::UnknownVendor => "unknown CPU vendor: cannot pick vmcall or vmmcall",
            PlatformError::BadPage => "hypercall page address is null or not page-aligned",
        })
    }
}

/// Entries in one hypercall page (4096 / 32). Every hypercall the project uses is below 64.
const ENTRIES_PER_PAGE: u32 = 128;

/// The real hypervisor: implements [`Hypervisor`] by marshalling each call and trapping.
///
/// # Invariants
/// The mode is usable: for `Page`, the address is a hypercall page Xen has written, mapped
/// executable for the rest of the kernel's life; for `Vmcall`/`Vmmcall`, we run as an HVM/PVH
/// guest on a CPU of the matching vendor.
#[derive(Debug)]
pub struct XenPlatform {
    mode: HypercallMode,
}

// SAFETY: the platform holds only the address of immutable code (or nothing); trapping is
// re-entrant and allowed from any CPU.
unsafe impl Send for XenPlatform {}
// SAFETY: as for `Send`; `&XenPlatform` only reads the mode.
unsafe impl Sync for XenPlatform {}

impl XenPlatform {
    /// The Xen CPUID leaves and the CPU vendor, or `None` when not on Xen. Safe: CPUID is
    /// unprivileged and has no side effects.
    #[must_use]
    pub fn detect() -> Option<(XenCpuid, Vendor)> {
        let xen = cpuid::detect(raw::cpuid)?;
        Some((xen, Vendor::from_leaf0(raw::cpuid(0, 0))))
    }

    /// Asks Xen to fill the page at physical address `phys` (mapped executable at `virt`) with
    /// hypercall entries by writing the hypercall MSR, and uses it.
    ///
    /// Only the first page is installed: it holds entries 0..128, which covers every hypercall.
    ///
    /// # Errors
    /// [`PlatformError::NotXen`] if `xen` is not what [`XenPlatform::detect`] returned on this
    /// CPU (zero pages), [`PlatformError::BadPage`] for unaligned addresses.
    ///
    /// # Safety
    /// Ring 0, running as an HVM/PVH guest of Xen described by `xen`; `phys` is the physical
    /// address of a page that we own exclusively, mapped at `virt` with execute permission, and
    /// neither may ever be freed or remapped (Xen writes the page; the kernel then executes it).
    pub unsafe fn install_hypercall_page(
        xen: &XenCpuid,
        phys: u64,
        virt: *mut u8,
    ) -> Result<XenPlatform, PlatformError> {
        if xen.hypercall_pages == 0 {
            return Err(PlatformError::NoHypercallPage);
        }
        let page = NonNull::new(virt).ok_or(PlatformError::BadPage)?;
        if phys % 4096 != 0 || virt.addr() % 4096 != 0 {
            return Err(PlatformError::BadPage);
        }
        // SAFETY: ring 0 and a page we own are guaranteed by the caller; the low 12 bits (the
        // page index) are 0: page 0.
        unsafe { raw::wrmsr(xen.hypercall_msr, phys) };
        // INVARIANT: Xen has written the page on the WRMSR above; the caller keeps it mapped
        // executable forever.
        Ok(XenPlatform {
            mode: HypercallMode::Page(page),
        })
    }

    /// Uses an already installed hypercall page at `page`.
    ///
    /// # Safety
    /// `page` is a hypercall page written by Xen (or a stub with the same contract), mapped
    /// executable for as long as the platform is used.
    #[must_use]
    pub const unsafe fn with_hypercall_page(page: NonNull<u8>) -> XenPlatform {
        // INVARIANT: guaranteed by the caller.
        XenPlatform {
            mode: HypercallMode::Page(page),
        }
    }

    /// Traps with `vmcall`/`vmmcall` directly, chosen by the CPU vendor (no page needed; what
    /// PVH early boot uses before it has a page to give Xen).
    ///
    /// # Errors
    /// [`PlatformError::UnknownVendor`] for a vendor that is neither Intel-like nor AMD-like.
    ///
    /// # Safety
    /// Running as an HVM or PVH guest of Xen (see [`XenPlatform::detect`]); `vendor` is this
    /// CPU's.
    pub unsafe fn direct(vendor: Vendor) -> Result<XenPlatform, PlatformError> {
        let mode = match vendor {
            Vendor::Intel => HypercallMode::Vmcall,
            Vendor::Amd => HypercallMode::Vmmcall,
            Vendor::Other => return Err(PlatformError::UnknownVendor),
        };
        // INVARIANT: the caller guarantees an HVM/PVH guest; the instruction matches `vendor`.
        Ok(XenPlatform { mode })
    }

    /// The trap mode in use.
    #[must_use]
    pub fn mode(&self) -> HypercallMode {
        self.mode
    }

    /// Performs one raw hypercall: what xen.ko exports to the driver modules, which marshal
    /// their own typed calls (`marshal`) and trap through this one page.
    ///
    /// # Safety
    /// Every pointer among `call.args` must be valid for whatever Xen does with it during the
    /// call (as `marshal` guarantees for the typed calls).
    pub unsafe fn raw_call(&self, call: &RawCall) -> isize {
        self.trap(call)
    }

    /// Performs one raw hypercall.
    fn trap(&self, call: &RawCall) -> isize {
        match self.mode {
            HypercallMode::Page(page) => {
                if call.op >= ENTRIES_PER_PAGE {
                    return isize::try_from(XenError::ENOSYS.to_return()).unwrap_or(isize::MIN);
                }
                // SAFETY: type invariant (a live hypercall page, `op` < 128 entries); `marshal`
                // guarantees the pointer arguments are valid for the duration of this call.
                unsafe { raw::call_via_page(page.as_ptr(), call) }
            }
            // SAFETY: type invariant (HVM/PVH guest, matching vendor); arguments as above.
            HypercallMode::Vmcall => unsafe { raw::call_direct(false, call) },
            // SAFETY: as for `Vmcall`.
            HypercallMode::Vmmcall => unsafe { raw::call_direct(true, call) },
        }
    }
}

impl Hypervisor for XenPlatform {
    fn event_channel_op(&self, op: EventChannelOp<'_>) -> Result<(), XenError> {
        marshal::event_channel_op(op, |c| self.trap(c))
    }
    fn grant_table_op(&self, op: GrantTableOp<'_>) -> Result<(), XenError> {
        marshal::grant_table_op(op, |c| self.trap(c))
    }
    fn memory_op(&self, op: MemoryOp<'_>) -> Result<u64, XenError> {
        marshal::memory_op(op, |c| self.trap(c))
    }
    fn hvm_op(&self, op: HvmOp<'_>) -> Result<(), XenError> {
        marshal::hvm_op(op, |c| self.trap(c))
    }
    fn sched_op(&self, op: SchedOp<'_>) -> Result<u64, XenError> {
        marshal::sched_op(op, |c| self.trap(c))
    }
    fn vcpu_op(&self, vcpu: u32, op: VcpuOp<'_>) -> Result<u64, XenError> {
        marshal::vcpu_op(vcpu, op, |c| self.trap(c))
    }
    fn xen_version(&self, op: XenVersionOp<'_>) -> Result<u64, XenError> {
        marshal::xen_version(op, |c| self.trap(c))
    }
    fn console_io(&self, op: ConsoleIoOp<'_>) -> Result<u64, XenError> {
        marshal::console_io(op, |c| self.trap(c))
    }
}

#[cfg(test)]
#[cfg(target_arch = "x86_64")]
mod tests {
    use super::super::raw::test_page;
    use super::*;
    use crate::HypervisorExt;
    use xen_sys::native as abi;

    fn platform() -> XenPlatform {
        let page = NonNull::new(test_page::page().cast_mut()).unwrap();
        // SAFETY: the stub page honours the hypercall-page contract and never dereferences.
        unsafe { XenPlatform::with_hypercall_page(page) }
    }

    #[test]
    fn typed_call_reaches_the_right_registers() {
        let _g = super::super::TEST_PAGE_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let p = platform();
        // The stub returns r8, which is 0 for two-argument calls: success.
        p.evtchn_send(5).unwrap();
        let rec = test_page::recorded();
        assert_eq!(rec[0], u64::from(abi::__HYPERVISOR_event_channel_op));
        assert_eq!(rec[1], u64::from(abi::EVTCHNOP_send));
        assert_ne!(rec[2], 0, "pointer to the evtchn_send struct in rsi");
        assert_eq!(&rec[3..], &[0, 0, 0]);

        p.vcpu_is_up(3).unwrap();
        let rec = test_page::recorded();
        assert_eq!(
            rec[..4],
            [
                u64::from(abi::__HYPERVISOR_vcpu_op),
                u64::from(abi::VCPUOP_is_up),
                3,
                0
            ]
        );

        p.console_write(b"abc").unwrap();
        let rec = test_page::recorded();
        assert_eq!(rec[..3], [u64::from(abi::__HYPERVISOR_console_io), 0, 3]);
    }

    #[test]
    fn refusals() {
        let xen = XenCpuid {
            base: 0x4000_0000,
            max_leaf: 0x4000_0005,
            major: 4,
            minor: 17,
            hypercall_pages: 0,
            hypercall_msr: 0x4000_0000,
            hvm_features: 0,
            vcpu_id: None,
            domid: None,
        };
        // SAFETY: refused before any MSR write (no hypercall page advertised / bad address).
        unsafe {
            assert_eq!(
                XenPlatform::install_hypercall_page(&xen, 0x1000, 0x1000 as *mut u8).unwrap_err(),
                PlatformError::NoHypercallPage
            );
            let xen1 = XenCpuid {
                hypercall_pages: 1,
                ..xen
            };
            assert_eq!(
                XenPlatform::install_hypercall_page(&xen1, 0x1001, 0x1000 as *mut u8).unwrap_err(),
                PlatformError::BadPage
            );
            assert_eq!(
                XenPlatform::install_hypercall_page(&xen1, 0x1000, core::ptr::null_mut())
                    .unwrap_err(),
                PlatformError::BadPage
            );
            assert_eq!(
                XenPlatform::direct(Vendor::Other).unwrap_err(),
                PlatformError::UnknownVendor
            );
            assert_eq!(
                XenPlatform::direct(Vendor::Amd).unwrap().mode(),
                HypercallMode::Vmmcall
            );
            assert_eq!(
                XenPlatform::direct(Vendor::Intel).unwrap().mode(),
                HypercallMode::Vmcall
            );
        }
        // The host test machine is not (necessarily) a Xen guest; detection must not crash.
        let _ = XenPlatform::detect();
    }
}
