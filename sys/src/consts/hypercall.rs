//! Hypercall numbers and the sub-operations of the hypercalls the drivers use
//! (xen.h, memory.h, sched.h, vcpu.h, version.h, hvm/hvm_op.h, hvm/params.h, errno.h,
//! features.h, hvm/start_info.h).

use super::{xen_enum, xen_flags};

xen_enum! {
    /// Hypercall numbers (`__HYPERVISOR_*`, xen.h): the index of the 32-byte stub in the
    /// hypercall page.
    pub enum Hypercall: u32 {
        SetTrapTable = __HYPERVISOR_set_trap_table,
        MmuUpdate = __HYPERVISOR_mmu_update,
        SetGdt = __HYPERVISOR_set_gdt,
        StackSwitch = __HYPERVISOR_stack_switch,
        SetCallbacks = __HYPERVISOR_set_callbacks,
        FpuTaskswitch = __HYPERVISOR_fpu_taskswitch,
        SchedOpCompat = __HYPERVISOR_sched_op_compat,
        PlatformOp = __HYPERVISOR_platform_op,
        SetDebugreg = __HYPERVISOR_set_debugreg,
        GetDebugreg = __HYPERVISOR_get_debugreg,
        UpdateDescriptor = __HYPERVISOR_update_descriptor,
        MemoryOp = __HYPERVISOR_memory_op,
        Multicall = __HYPERVISOR_multicall,
        UpdateVaMapping = __HYPERVISOR_update_va_mapping,
        SetTimerOp = __HYPERVISOR_set_timer_op,
        EventChannelOpCompat = __HYPERVISOR_event_channel_op_compat,
        XenVersion = __HYPERVISOR_xen_version,
        ConsoleIo = __HYPERVISOR_console_io,
        PhysdevOpCompat = __HYPERVISOR_physdev_op_compat,
        GrantTableOp = __HYPERVISOR_grant_table_op,
        VmAssist = __HYPERVISOR_vm_assist,
        UpdateVaMappingOtherdomain = __HYPERVISOR_update_va_mapping_otherdomain,
        Iret = __HYPERVISOR_iret,
        VcpuOp = __HYPERVISOR_vcpu_op,
        SetSegmentBase = __HYPERVISOR_set_segment_base,
        MmuextOp = __HYPERVISOR_mmuext_op,
        XsmOp = __HYPERVISOR_xsm_op,
        NmiOp = __HYPERVISOR_nmi_op,
        SchedOp = __HYPERVISOR_sched_op,
        CallbackOp = __HYPERVISOR_callback_op,
        XenoprofOp = __HYPERVISOR_xenoprof_op,
        EventChannelOp = __HYPERVISOR_event_channel_op,
        PhysdevOp = __HYPERVISOR_physdev_op,
        HvmOp = __HYPERVISOR_hvm_op,
        Sysctl = __HYPERVISOR_sysctl,
        Domctl = __HYPERVISOR_domctl,
        KexecOp = __HYPERVISOR_kexec_op,
        TmemOp = __HYPERVISOR_tmem_op,
        ArgoOp = __HYPERVISOR_argo_op,
        XenpmuOp = __HYPERVISOR_xenpmu_op,
        DmOp = __HYPERVISOR_dm_op,
        HypfsOp = __HYPERVISOR_hypfs_op,
        Arch0 = __HYPERVISOR_arch_0,
        Arch1 = __HYPERVISOR_arch_1,
        Arch2 = __HYPERVISOR_arch_2,
        Arch3 = __HYPERVISOR_arch_3,
        Arch4 = __HYPERVISOR_arch_4,
        Arch5 = __HYPERVISOR_arch_5,
        Arch6 = __HYPERVISOR_arch_6,
        Arch7 = __HYPERVISOR_arch_7,
    }
}

impl Hypercall {
    /// Byte offset of this hypercall's stub in the hypercall page (32 bytes per stub).
    #[must_use]
    pub const fn page_offset(self) -> usize {
        super::to_usize(self.value()) * 32
    }
}

xen_enum! {
    /// `XENMEM_*` commands of `HYPERVISOR_memory_op` (memory.h).
    pub enum XenMemOp: u32 {
        IncreaseReservation = XENMEM_increase_reservation,
        DecreaseReservation = XENMEM_decrease_reservation,
        MaximumRamPage = XENMEM_maximum_ram_page,
        CurrentReservation = XENMEM_current_reservation,
        MaximumReservation = XENMEM_maximum_reservation,
        MachphysMfnList = XENMEM_machphys_mfn_list,
        PopulatePhysmap = XENMEM_populate_physmap,
        AddToPhysmap = XENMEM_add_to_physmap,
        MemoryMap = XENMEM_memory_map,
        MachineMemoryMap = XENMEM_machine_memory_map,
        Exchange = XENMEM_exchange,
        MachphysMapping = XENMEM_machphys_mapping,
        SetMemoryMap = XENMEM_set_memory_map,
        MaximumGpfn = XENMEM_maximum_gpfn,
        RemoveFromPhysmap = XENMEM_remove_from_physmap,
        SetPodTarget = XENMEM_set_pod_target,
        GetPodTarget = XENMEM_get_pod_target,
        AddToPhysmapBatch = XENMEM_add_to_physmap_batch,
        MachphysCompatMfnList = XENMEM_machphys_compat_mfn_list,
        GetVnumainfo = XENMEM_get_vnumainfo,
        AcquireResource = XENMEM_acquire_resource,
    }
}

xen_enum! {
    /// `XENMAPSPACE_*`: what `XENMEM_add_to_physmap` maps (memory.h).
    pub enum XenMapSpace: u32 {
        SharedInfo = XENMAPSPACE_shared_info,
        GrantTable = XENMAPSPACE_grant_table,
        Gmfn = XENMAPSPACE_gmfn,
        GmfnRange = XENMAPSPACE_gmfn_range,
        GmfnForeign = XENMAPSPACE_gmfn_foreign,
        DevMmio = XENMAPSPACE_dev_mmio,
    }
}

xen_enum! {
    /// `SCHEDOP_*` commands of `HYPERVISOR_sched_op` (sched.h).
    pub enum SchedOp: u32 {
        Yield = SCHEDOP_yield,
        Block = SCHEDOP_block,
        Shutdown = SCHEDOP_shutdown,
        Poll = SCHEDOP_poll,
        RemoteShutdown = SCHEDOP_remote_shutdown,
        ShutdownCode = SCHEDOP_shutdown_code,
        Watchdog = SCHEDOP_watchdog,
        PinOverride = SCHEDOP_pin_override,
    }
}

xen_enum! {
    /// `SHUTDOWN_*` reasons of `SCHEDOP_shutdown` (sched.h).
    pub enum ShutdownReason: u32 {
        Poweroff = SHUTDOWN_poweroff,
        Reboot = SHUTDOWN_reboot,
        Suspend = SHUTDOWN_suspend,
        Crash = SHUTDOWN_crash,
        Watchdog = SHUTDOWN_watchdog,
        SoftReset = SHUTDOWN_soft_reset,
    }
}

xen_enum! {
    /// `VCPUOP_*` commands of `HYPERVISOR_vcpu_op` (vcpu.h).
    pub enum VcpuOp: u32 {
        Initialise = VCPUOP_initialise,
        Up = VCPUOP_up,
        Down = VCPUOP_down,
        IsUp = VCPUOP_is_up,
        GetRunstateInfo = VCPUOP_get_runstate_info,
        RegisterRunstateMemoryArea = VCPUOP_register_runstate_memory_area,
        SetPeriodicTimer = VCPUOP_set_periodic_timer,
        StopPeriodicTimer = VCPUOP_stop_periodic_timer,
        SetSingleshotTimer = VCPUOP_set_singleshot_timer,
        StopSingleshotTimer = VCPUOP_stop_singleshot_timer,
        RegisterVcpuInfo = VCPUOP_register_vcpu_info,
        SendNmi = VCPUOP_send_nmi,
        GetPhysid = VCPUOP_get_physid,
        RegisterVcpuTimeMemoryArea = VCPUOP_register_vcpu_time_memory_area,
    }
}

xen_enum! {
    /// `HVMOP_*` commands of `HYPERVISOR_hvm_op` (hvm/hvm_op.h).
    pub enum HvmOp: u32 {
        SetParam = HVMOP_set_param,
        GetParam = HVMOP_get_param,
        FlushTlbs = HVMOP_flush_tlbs,
        PagetableDying = HVMOP_pagetable_dying,
        GetTime = HVMOP_get_time,
        Xentrace = HVMOP_xentrace,
        GetMemType = HVMOP_get_mem_type,
        SetEvtchnUpcallVector = HVMOP_set_evtchn_upcall_vector,
        GuestRequestVmEvent = HVMOP_guest_request_vm_event,
        Altp2m = HVMOP_altp2m,
    }
}

xen_enum! {
    /// `HVM_PARAM_*` indices of `HVMOP_get_param`/`HVMOP_set_param` (hvm/params.h).
    pub enum HvmParam: u32 {
        CallbackIrq = HVM_PARAM_CALLBACK_IRQ,
        StorePfn = HVM_PARAM_STORE_PFN,
        StoreEvtchn = HVM_PARAM_STORE_EVTCHN,
        IoreqPfn = HVM_PARAM_IOREQ_PFN,
        BufioreqPfn = HVM_PARAM_BUFIOREQ_PFN,
        Viridian = HVM_PARAM_VIRIDIAN,
        TimerMode = HVM_PARAM_TIMER_MODE,
        HpetEnabled = HVM_PARAM_HPET_ENABLED,
        IdentPt = HVM_PARAM_IDENT_PT,
        AcpiSState = HVM_PARAM_ACPI_S_STATE,
        Vm86Tss = HVM_PARAM_VM86_TSS,
        VptAlign = HVM_PARAM_VPT_ALIGN,
        ConsolePfn = HVM_PARAM_CONSOLE_PFN,
        ConsoleEvtchn = HVM_PARAM_CONSOLE_EVTCHN,
        AcpiIoportsLocation = HVM_PARAM_ACPI_IOPORTS_LOCATION,
        PagingRingPfn = HVM_PARAM_PAGING_RING_PFN,
        MonitorRingPfn = HVM_PARAM_MONITOR_RING_PFN,
        SharingRingPfn = HVM_PARAM_SHARING_RING_PFN,
        TripleFaultReason = HVM_PARAM_TRIPLE_FAULT_REASON,
        IoreqServerPfn = HVM_PARAM_IOREQ_SERVER_PFN,
        NrIoreqServerPages = HVM_PARAM_NR_IOREQ_SERVER_PAGES,
        VmGenerationIdAddr = HVM_PARAM_VM_GENERATION_ID_ADDR,
        Altp2m = HVM_PARAM_ALTP2M,
        X87FipWidth = HVM_PARAM_X87_FIP_WIDTH,
        Vm86TssSized = HVM_PARAM_VM86_TSS_SIZED,
        McaCap = HVM_PARAM_MCA_CAP,
    }
}

xen_enum! {
    /// `HVM_PARAM_CALLBACK_TYPE_*`: how `HVM_PARAM_CALLBACK_IRQ` delivers event upcalls
    /// (hvm/params.h). The type sits in bits 63..56 of the parameter value.
    pub enum HvmCallbackType: u8 {
        Gsi = HVM_PARAM_CALLBACK_TYPE_GSI,
        PciIntx = HVM_PARAM_CALLBACK_TYPE_PCI_INTX,
        Vector = HVM_PARAM_CALLBACK_TYPE_VECTOR,
    }
}

impl HvmCallbackType {
    /// The `HVM_PARAM_CALLBACK_IRQ` value selecting this delivery type with `payload`
    /// (a GSI, a PCI INTx encoding, or an IDT vector) in the low bits.
    #[must_use]
    pub const fn param_value(self, payload: u64) -> u64 {
        ((self.value() as u64) << 56) | (payload & ((1 << 56) - 1))
    }
}

xen_enum! {
    /// `XENVER_*` commands of `HYPERVISOR_xen_version` (version.h).
    pub enum XenVer: u32 {
        Version = XENVER_version,
        Extraversion = XENVER_extraversion,
        CompileInfo = XENVER_compile_info,
        Capabilities = XENVER_capabilities,
        Changeset = XENVER_changeset,
        PlatformParameters = XENVER_platform_parameters,
        GetFeatures = XENVER_get_features,
        Pagesize = XENVER_pagesize,
        GuestHandle = XENVER_guest_handle,
        Commandline = XENVER_commandline,
        BuildId = XENVER_build_id,
    }
}

xen_enum! {
    /// `XENFEAT_*` bit numbers reported by `XENVER_get_features` (features.h).
    pub enum XenFeature: u32 {
        WritablePageTables = XENFEAT_writable_page_tables,
        WritableDescriptorTables = XENFEAT_writable_descriptor_tables,
        AutoTranslatedPhysmap = XENFEAT_auto_translated_physmap,
        SupervisorModeKernel = XENFEAT_supervisor_mode_kernel,
        PaePgdirAbove4gb = XENFEAT_pae_pgdir_above_4gb,
        MmuPtUpdatePreserveAd = XENFEAT_mmu_pt_update_preserve_ad,
        HighmemAssist = XENFEAT_highmem_assist,
        GnttabMapAvailBits = XENFEAT_gnttab_map_avail_bits,
        HvmCallbackVector = XENFEAT_hvm_callback_vector,
        HvmSafePvclock = XENFEAT_hvm_safe_pvclock,
        HvmPirqs = XENFEAT_hvm_pirqs,
        Dom0 = XENFEAT_dom0,
        MemoryOpVnodeSupported = XENFEAT_memory_op_vnode_supported,
        ArmSmcccSupported = XENFEAT_ARM_SMCCC_supported,
        LinuxRsdpUnrestricted = XENFEAT_linux_rsdp_unrestricted,
        NotDirectMapped = XENFEAT_not_direct_mapped,
        DirectMapped = XENFEAT_direct_mapped,
    }
}

impl XenFeature {
    /// Whether this feature's bit is set in the `submap` of submap index 0.
    #[must_use]
    pub const fn is_set_in(self, submap0: u32) -> bool {
        self.value() < 32 && submap0 & (1 << self.value()) != 0
    }
}

xen_flags! {
    /// `SIF_*` flags of `start_info.flags` and `hvm_start_info.flags` (xen.h).
    pub struct StartInfoFlags: u32 {
        const PRIVILEGED = SIF_PRIVILEGED;
        const INITDOMAIN = SIF_INITDOMAIN;
        const MULTIBOOT_MOD = SIF_MULTIBOOT_MOD;
        const MOD_START_PFN = SIF_MOD_START_PFN;
        const VIRT_P2M_4TOOLS = SIF_VIRT_P2M_4TOOLS;
        /// The power-management field (bits 8..15); not a single flag.
        const PM_MASK = SIF_PM_MASK;
    }
}

xen_enum! {
    /// `XEN_HVM_MEMMAP_TYPE_*`: `hvm_memmap_table_entry.type` (hvm/start_info.h).
    pub enum HvmMemmapType: u32 {
        Ram = XEN_HVM_MEMMAP_TYPE_RAM,
        Reserved = XEN_HVM_MEMMAP_TYPE_RESERVED,
        Acpi = XEN_HVM_MEMMAP_TYPE_ACPI,
        Nvs = XEN_HVM_MEMMAP_TYPE_NVS,
        Unusable = XEN_HVM_MEMMAP_TYPE_UNUSABLE,
        Disabled = XEN_HVM_MEMMAP_TYPE_DISABLED,
        Pmem = XEN_HVM_MEMMAP_TYPE_PMEM,
    }
}

/// `XEN_HVM_START_MAGIC_VALUE`: `hvm_start_info.magic` ("xEn3" with bit 7 of 'E' set).
pub const HVM_START_MAGIC: u32 = crate::x86_64::XEN_HVM_START_MAGIC_VALUE;

xen_enum! {
    /// Xen's errno values (errno.h): hypercalls return their negation. They are Linux's
    /// numbers, not FreeBSD's. `XEN_EWOULDBLOCK` and `XEN_EDEADLOCK` are aliases of
    /// `EAGAIN` and `EDEADLK`.
    pub enum XenErrno: u32 {
        Eperm = XEN_EPERM,
        Enoent = XEN_ENOENT,
        Esrch = XEN_ESRCH,
        Eio = XEN_EIO,
        Enxio = XEN_ENXIO,
        E2big = XEN_E2BIG,
        Enoexec = XEN_ENOEXEC,
        Ebadf = XEN_EBADF,
        Echild = XEN_ECHILD,
        Eagain = XEN_EAGAIN,
        Enomem = XEN_ENOMEM,
        Eacces = XEN_EACCES,
        Efault = XEN_EFAULT,
        Ebusy = XEN_EBUSY,
        Eexist = XEN_EEXIST,
        Exdev = XEN_EXDEV,
        Enodev = XEN_ENODEV,
        Enotdir = XEN_ENOTDIR,
        Eisdir = XEN_EISDIR,
        Einval = XEN_EINVAL,
        Enfile = XEN_ENFILE,
        Emfile = XEN_EMFILE,
        Enospc = XEN_ENOSPC,
        Erofs = XEN_EROFS,
        Emlink = XEN_EMLINK,
        Edom = XEN_EDOM,
        Erange = XEN_ERANGE,
        Edeadlk = XEN_EDEADLK,
        Enametoolong = XEN_ENAMETOOLONG,
        Enolck = XEN_ENOLCK,
        Enosys = XEN_ENOSYS,
        Enotempty = XEN_ENOTEMPTY,
        Enodata = XEN_ENODATA,
        Etime = XEN_ETIME,
        Ebadmsg = XEN_EBADMSG,
        Eoverflow = XEN_EOVERFLOW,
        Eilseq = XEN_EILSEQ,
        Enotsock = XEN_ENOTSOCK,
        Emsgsize = XEN_EMSGSIZE,
        Eopnotsupp = XEN_EOPNOTSUPP,
        Eaddrinuse = XEN_EADDRINUSE,
        Eaddrnotavail = XEN_EADDRNOTAVAIL,
        Enobufs = XEN_ENOBUFS,
        Eisconn = XEN_EISCONN,
        Enotconn = XEN_ENOTCONN,
        Etimedout = XEN_ETIMEDOUT,
        Econnrefused = XEN_ECONNREFUSED,
    }
}

impl XenErrno {
    /// Decodes a hypercall's return value: `None` for success (`>= 0`), the error for a
    /// known `-errno`, `Err(ret)` for a negative value Xen's headers do not define.
    ///
    /// # Errors
    /// The raw return value when it is negative and no `XEN_E*` matches it.
    pub fn from_hypercall_ret(ret: i64) -> Result<Option<Self>, i64> {
        if ret >= 0 {
            return Ok(None);
        }
        let errno = ret
            .checked_neg()
            .and_then(|e| u32::try_from(e).ok())
            .ok_or(ret)?;
        Self::from_value(errno).map(Some).ok_or(ret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypercall_numbers_round_trip() {
        assert_eq!(Hypercall::MemoryOp.value(), 12);
        assert_eq!(Hypercall::EventChannelOp.value(), 32);
        assert_eq!(Hypercall::HvmOp.value(), 34);
        assert_eq!(Hypercall::try_from(29), Ok(Hypercall::SchedOp));
        assert_eq!(Hypercall::SchedOp.page_offset(), 29 * 32);
        assert!(Hypercall::try_from(11).is_err(), "11 is unused");
        for &h in Hypercall::ALL {
            assert_eq!(Hypercall::try_from(u32::from(h)), Ok(h));
        }
        assert_eq!(
            Hypercall::GrantTableOp.c_name(),
            "__HYPERVISOR_grant_table_op"
        );
    }

    #[test]
    fn sub_operations() {
        assert_eq!(XenMemOp::AddToPhysmap.value(), 7);
        assert_eq!(XenMemOp::try_from(28), Ok(XenMemOp::AcquireResource));
        assert_eq!(XenMapSpace::SharedInfo.value(), 0);
        assert_eq!(SchedOp::Shutdown.value(), 2);
        assert_eq!(ShutdownReason::try_from(2), Ok(ShutdownReason::Suspend));
        assert_eq!(VcpuOp::RegisterVcpuInfo.value(), 10);
        assert_eq!(HvmOp::GetParam.value(), 1);
        assert_eq!(HvmOp::try_from(23), Ok(HvmOp::SetEvtchnUpcallVector));
        assert_eq!(HvmParam::StorePfn.value(), 1);
        assert_eq!(HvmParam::try_from(18), Ok(HvmParam::ConsoleEvtchn));
        assert!(HvmParam::try_from(3).is_err());
        assert_eq!(XenVer::GetFeatures.value(), 6);
        for &op in XenMemOp::ALL {
            assert_eq!(XenMemOp::from_value(op.value()), Some(op));
        }
    }

    #[test]
    fn callback_param_encoding() {
        assert_eq!(
            HvmCallbackType::Vector.param_value(0xf3),
            (2u64 << 56) | 0xf3
        );
        assert_eq!(HvmCallbackType::Gsi.param_value(u64::MAX), (1 << 56) - 1);
    }

    #[test]
    fn features_and_flags() {
        let submap = 1 << 8 | 1 << 2;
        assert!(XenFeature::HvmCallbackVector.is_set_in(submap));
        assert!(XenFeature::AutoTranslatedPhysmap.is_set_in(submap));
        assert!(!XenFeature::Dom0.is_set_in(submap));
        let f = StartInfoFlags::from_bits_retain(3);
        assert!(f.contains(StartInfoFlags::PRIVILEGED | StartInfoFlags::INITDOMAIN));
        assert_eq!(HvmMemmapType::try_from(1), Ok(HvmMemmapType::Ram));
        assert_eq!(HVM_START_MAGIC, 0x336e_c578);
    }

    #[test]
    fn hypercall_return_values() {
        assert_eq!(XenErrno::from_hypercall_ret(0), Ok(None));
        assert_eq!(XenErrno::from_hypercall_ret(5), Ok(None));
        assert_eq!(
            XenErrno::from_hypercall_ret(-22),
            Ok(Some(XenErrno::Einval))
        );
        assert_eq!(
            XenErrno::from_hypercall_ret(-38),
            Ok(Some(XenErrno::Enosys))
        );
        assert_eq!(
            XenErrno::from_hypercall_ret(-4),
            Err(-4),
            "EINTR is Xen-internal"
        );
        assert_eq!(XenErrno::from_hypercall_ret(i64::MIN), Err(i64::MIN));
        assert_eq!(XenErrno::Eagain.value(), 11);
    }
}
