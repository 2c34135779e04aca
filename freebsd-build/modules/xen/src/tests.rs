//! Host tests of xen.ko's glue, linked against freebsd-kpi's fake kernel functions: the C
//! entry points the shim calls are called here exactly as the module event handler does.

use std::sync::Mutex;

use freebsd_kpi::fake;
use xen_kmod::arch::cpuid::{Vendor, XenCpuid};

use super::*;

/// What the scripted CPUID reports; `None` is bare metal.
pub(crate) static FAKE_XEN: Mutex<Option<(XenCpuid, Vendor)>> = Mutex::new(None);

fn on_xen(hvm_features: u32) {
    crate::fake_kpi::reset();
    let xen = XenCpuid {
        base: 0x4000_0000,
        max_leaf: 0x4000_0005,
        major: 4,
        minor: 17,
        hypercall_pages: 1,
        hypercall_msr: 0x4000_0000,
        hvm_features,
        vcpu_id: Some(0),
        domid: Some(3),
    };
    *FAKE_XEN.lock().unwrap() = Some((xen, Vendor::Intel));
}

/// Test version of step 1: the scripted hypervisor, no MSR.
pub(crate) fn install_hypercall_page(
    _xen: &XenCpuid,
    _page: &kpi::KPages,
) -> Result<(platform::Hv, platform::RawTrap), Errno> {
    if crate::fake_kpi::state(|s| s.fail_ops.contains(&"install")) {
        kprintln!("xen: hypercall-page: refused (test); not loading");
        return Err(Errno::ENXIO);
    }
    Ok((&crate::fake_kpi::FAKE_HV, &crate::fake_kpi::raw_trap))
}

fn bare_metal() {
    *FAKE_XEN.lock().unwrap() = None;
}

/// Calls the sysctl entry point as the shim's handler does.
#[expect(
    unsafe_code,
    reason = "calls the C entry point exactly as the shim does"
)]
fn stat_raw(which: i32) -> Result<u64, i32> {
    let mut out = 0;
    // SAFETY: `out` is a live local, valid for the u64 write.
    match unsafe { xenrs_xen_stat(which, &mut out) } {
        0 => Ok(out),
        errno => Err(errno),
    }
}

fn stat(which: XenStat) -> Result<u64, i32> {
    stat_raw(which as i32)
}

#[test]
fn load_then_unload_through_the_c_entry_points() {
    let _kernel = fake::session();
    on_xen(0);
    assert_eq!(xenrs_xen_load(), 0);
    assert_eq!(stat(XenStat::XenMajor), Ok(4));
    assert_eq!(stat(XenStat::XenMinor), Ok(17));
    assert_eq!(stat(XenStat::Domid), Ok(3));
    assert_eq!(stat(XenStat::Verbose), Ok(0));
    assert_eq!(xenrs_xen_load(), 17, "a second MOD_LOAD is EEXIST");
    assert_eq!(xenrs_xen_quiesce(), 0);
    assert_eq!(xenrs_xen_unload(), 0);
    assert_eq!(
        stat(XenStat::XenMajor),
        Err(6),
        "no module state after unload"
    );
    assert_eq!(
        fake::console(),
        "xen: load failed: EEXIST(17)\n",
        "quiet by default: only the refused second load is reported"
    );
    assert_eq!(fake::env_copies_out(), 0);
}

#[test]
fn refuses_to_load_on_bare_metal() {
    let _kernel = fake::session();
    bare_metal();
    assert_eq!(xenrs_xen_load(), 6);
    let console = fake::console();
    assert!(console.contains("xen: not running on Xen"), "{console}");
    assert!(console.contains("xen: load failed: ENXIO(6)"), "{console}");
    assert_eq!(xenrs_xen_unload(), 0);
}

#[test]
fn unload_is_refused_while_busy_even_when_forced() {
    let _kernel = fake::session();
    on_xen(0);
    assert_eq!(xenrs_xen_load(), 0);
    MODULE_SLOT.with(XenModule::acquire).unwrap();
    assert_eq!(stat(XenStat::Users), Ok(1));
    assert_eq!(xenrs_xen_quiesce(), 16, "kldunload: EBUSY");
    assert_eq!(xenrs_xen_unload(), 16, "kldunload -f: still EBUSY");
    assert!(fake::console().contains("xen: unload refused: EBUSY(16)"));
    assert_eq!(stat(XenStat::XenMajor), Ok(4), "still loaded and usable");
    MODULE_SLOT.with(XenModule::release).unwrap();
    assert_eq!(xenrs_xen_quiesce(), 0);
    assert_eq!(xenrs_xen_unload(), 0);
}

#[test]
fn tunables_are_applied() {
    let _kernel = fake::session();
    on_xen(xen_kmod::arch::cpuid::hvm_features::UPCALL_VECTOR);
    fake::set_env("hw.xenrs.verbose", "2");
    fake::set_env("hw.xenrs.upcall", "PCI");
    assert_eq!(xenrs_xen_load(), 0);
    assert_eq!(stat(XenStat::Verbose), Ok(2));
    assert_eq!(stat(XenStat::Upcall), Ok(Upcall::Pci as u64));
    let console = fake::console();
    assert!(
        console.contains("xen: Xen 4.17, domain 3, upcall Pci"),
        "{console}"
    );
    assert!(console.contains("hypercall MSR 0x40000000"), "{console}");
    assert_eq!(xenrs_xen_unload(), 0);
    assert!(fake::console().ends_with("xen: unloaded\n"));
    assert_eq!(fake::env_copies_out(), 0, "every kern_getenv copy freed");
}

#[test]
fn bad_tunables_are_reported_and_defaulted() {
    let _kernel = fake::session();
    on_xen(0);
    fake::set_env("hw.xenrs.verbose", "loud");
    fake::set_env("hw.xenrs.upcall", "msi");
    assert_eq!(xenrs_xen_load(), 0);
    let console = fake::console();
    assert!(
        console.contains(
            "xen: loader tunable hw.xenrs.verbose=\"loud\": not a number (bad character at 0); \
             using the default"
        ),
        "{console}"
    );
    assert!(
        console.contains("hw.xenrs.upcall=\"msi\": not one of \"auto\", \"vector\", \"pci\""),
        "{console}"
    );
    assert_eq!(stat(XenStat::Verbose), Ok(0));
    assert_eq!(stat(XenStat::Upcall), Ok(Upcall::Auto as u64));
    assert_eq!(xenrs_xen_unload(), 0);

    fake::set_env("hw.xenrs.verbose", "7");
    fake::set_env("hw.xenrs.upcall", "auto");
    assert_eq!(xenrs_xen_load(), 0);
    assert!(fake::console().contains("hw.xenrs.verbose=\"7\": out of range (allowed: 0..=2)"));
    assert_eq!(xenrs_xen_unload(), 0);
    assert_eq!(fake::env_copies_out(), 0);
}

#[test]
fn vector_upcall_falls_back_to_the_callback_vector_on_one_cpu_and_refuses_on_more() {
    let _kernel = fake::session();
    // Xen refuses the per-vCPU op (ENOSYS); one CPU: the global callback vector.
    on_xen(0);
    fake::set_env("hw.xenrs.upcall", "vector");
    crate::fake_kpi::state(|s| s.fail_ops.push("SetEvtchnUpcallVector"));
    assert_eq!(xenrs_xen_load(), 0);
    let vector = stat(XenStat::UpcallAt).unwrap();
    let callback = xen_sys::native::HVM_PARAM_CALLBACK_IRQ;
    let via = xen_kmod::hvm::CallbackVia::Vector(u8::try_from(vector).unwrap()).encode();
    crate::fake_kpi::state(|s| assert_eq!(s.params, [(callback, via)]));
    assert_eq!(xenrs_xen_unload(), 0);
    crate::fake_kpi::state(|s| assert_eq!(s.params.last(), Some(&(callback, 0))));
    nothing_outstanding();
    // Two CPUs: the callback vector would need the same vector on both APICs; refused,
    // and the vector and filter set up before are given back.
    crate::fake_kpi::state(|s| s.ncpus = 2);
    assert_eq!(xenrs_xen_load(), 6);
    assert!(fake::console().contains("needs a single CPU; not loading"));
    nothing_outstanding();
    crate::fake_kpi::state(|s| {
        assert_eq!(
            s.params.last(),
            Some(&(callback, 0)),
            "nothing new told to Xen"
        );
        assert!(s.upcall_vectors.is_empty());
    });
}

#[test]
#[expect(
    unsafe_code,
    reason = "a handler registered through the exported C ABI as a driver module does"
)]
fn vector_upcall_delivers_through_an_interrupt_source_and_is_inert_after_unload() {
    use core::sync::atomic::{AtomicU32, Ordering};
    static FIRED: AtomicU32 = AtomicU32::new(0);
    unsafe extern "C" fn handler(_arg: *mut core::ffi::c_void, _port: u32) {
        FIRED.fetch_add(1, Ordering::SeqCst);
    }
    let _kernel = fake::session();
    on_xen(xen_kmod::arch::cpuid::hvm_features::UPCALL_VECTOR);
    FIRED.store(0, Ordering::SeqCst);
    fake::set_env("hw.xenrs.upcall", "vector");
    assert_eq!(xenrs_xen_load(), 0);
    assert_eq!(stat(XenStat::Upcall), Ok(1));
    // No hole below the MSI range (48 I/O APIC pins, MSI from 48): the last MSI IRQ.
    let irq = 48 + 512 - 1;
    let vector = u32::try_from(stat(XenStat::UpcallAt).unwrap()).unwrap();
    crate::fake_kpi::state(|s| {
        assert_eq!(s.vec_source, Some(irq));
        assert!(s.vec_handler);
        assert_eq!(s.vectors.get(&vector), Some(&irq));
        assert!(s.vectors_enabled.contains(&vector));
        assert_eq!(
            s.upcall_vectors,
            [(0, u8::try_from(vector).unwrap())],
            "vCPU 0 told its vector"
        );
        assert!(s.params.is_empty(), "no HVM_PARAM_CALLBACK_IRQ");
    });
    let mut port = 0u32;
    assert_eq!(
        services::xenrs_evtchn_alloc_unbound(0, 0, Some(handler), core::ptr::null_mut(), &mut port),
        0
    );
    // An event: Xen sets the pending bits and raises the vector on vCPU 0.
    let v = MODULE_SLOT.with(|m| {
        let p = m.platform().unwrap();
        let si = p.shared_info_view();
        si.evtchn_pending().test_and_set(port);
        let v = si.legacy_vcpu_info(0).unwrap();
        v.set_pending_sel_bit(port / xen_kmod::shared::BITS_PER_XEN_ULONG);
        v.set_upcall_pending();
        v
    });
    let v = v.unwrap();
    let (kicks, eois) = crate::fake_kpi::state(|s| (s.kicks[0], s.eois));
    crate::fake_kpi::interrupt(vector);
    assert!(!v.upcall_pending(), "the filter cleared vCPU 0's flag");
    crate::fake_kpi::state(|s| {
        assert_eq!(s.kicks[0], kicks + 1, "the events task was queued");
        assert_eq!(s.eois, eois + 1, "the PIC sent the EOI");
        assert_eq!(s.strays, 0);
    });
    services::xenrs_xen_run_events();
    assert_eq!(
        FIRED.load(Ordering::SeqCst),
        1,
        "the events task ran the handler"
    );
    assert_eq!(services::xenrs_evtchn_unbind(port), 0);
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
    crate::fake_kpi::state(|s| {
        assert_eq!(
            s.vec_source,
            Some(irq),
            "FreeBSD cannot deregister the source"
        );
        assert!(s.vectors.is_empty() && !s.vec_handler);
    });
    // Nothing fires after unload: the old vector leads nowhere, no task is queued.
    let kicks = crate::fake_kpi::state(|s| s.kicks[0]);
    crate::fake_kpi::interrupt(vector);
    crate::fake_kpi::state(|s| {
        assert_eq!(s.kicks[0], kicks);
        assert_eq!(s.strays, 1);
    });
    services::xenrs_xen_upcall();
    assert_eq!(crate::fake_kpi::state(|s| s.kicks[0]), kicks);
    // A reload reuses the source (no second registration) with a fresh vector.
    assert_eq!(xenrs_xen_load(), 0);
    crate::fake_kpi::state(|s| {
        assert_eq!(s.vec_source_creates, 1);
        assert!(s.vec_handler);
        assert_eq!(s.upcall_vectors.len(), 2);
    });
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
}

#[test]
fn the_per_vcpu_guard_leaves_vcpu0_flag_set_so_xen_raises_no_vector_after_unload() {
    let words: &'static [core::sync::atomic::AtomicU32] = Vec::leak(
        (0..1024)
            .map(|_| core::sync::atomic::AtomicU32::new(0))
            .collect(),
    );
    let mem = xen_shmem::SharedMem::from_words(words);
    let si = xen_kmod::shared::SharedInfo::new(mem).unwrap();
    let v = si.legacy_vcpu_info(0).unwrap();
    assert!(!v.upcall_pending());
    drop(platform::CallbackGuard::PerVcpu(v));
    assert!(
        v.upcall_pending(),
        "Xen injects only when the flag goes from 0 to 1"
    );
}

#[test]
fn vector_upcall_set_up_failures_unwind() {
    type Inject = fn(&mut crate::fake_kpi::State);
    let cases: [(&str, Inject); 3] = [
        ("cannot register an interrupt source", |s| {
            s.fail_vec_source = true
        }),
        ("no free vector", |s| s.fail_vector_alloc = true),
        ("no free IRQ number", |s| s.irq_space = (48, 48, 0)),
    ];
    for (message, inject) in cases {
        let _kernel = fake::session();
        on_xen(0);
        fake::set_env("hw.xenrs.upcall", "vector");
        crate::fake_kpi::state(inject);
        assert_ne!(xenrs_xen_load(), 0, "{message}");
        let console = fake::console();
        assert!(console.contains(message), "{message}: {console:?}");
        assert!(console.contains("xen: upcall:"), "{console:?}");
        nothing_outstanding();
        crate::fake_kpi::state(|s| assert!(s.upcall_vectors.is_empty()));
    }
}

#[test]
fn the_upcall_irq_is_a_hole_below_msi_else_the_last_msi_irq_while_msi_is_far() {
    use kpi::{choose_irq, IrqSpace};
    let space = |num_io, first_msi, num_msi| IrqSpace {
        num_io,
        first_msi,
        num_msi,
    };
    // A hole among the I/O APIC pins wins.
    assert_eq!(
        choose_irq(space(2096, 48, 2048), |i| i != 30 && i < 48),
        Some(30)
    );
    // No hole: the last MSI IRQ, while it and its neighbour are free.
    assert_eq!(choose_irq(space(2096, 48, 2048), |i| i < 48), Some(2095));
    assert_eq!(
        choose_irq(space(2096, 48, 2048), |i| i < 48 || i == 2094),
        None
    );
    // Never IRQ 0, never beyond the MSI range (FreeBSD's own Xen IRQs live there).
    assert_eq!(choose_irq(space(48, 48, 0), |i| i > 0), None);
    assert_eq!(choose_irq(space(4096, 48, 2048), |i| i < 48), Some(2095));
    // MSI disabled: any hole in the table.
    assert_eq!(choose_irq(space(24, 0, 0), |i| i != 5), Some(5));
}

#[test]
fn unknown_sysctl_leaf_is_enoent() {
    let _kernel = fake::session();
    on_xen(0);
    assert_eq!(xenrs_xen_load(), 0);
    assert_eq!(stat_raw(99), Err(2));
    assert_eq!(stat_raw(-1), Err(2));
    assert_eq!(xenrs_xen_unload(), 0);
}

#[test]
fn c_shim_and_rust_agree_on_the_sysctl_leaves() {
    let shim = include_str!("../xen_kmod.c");
    for stat in XenStat::ALL {
        let name = format!("{stat:?}");
        // XenMajor -> XEN_MAJOR
        let mut define = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                define.push('_');
            }
            define.push(c.to_ascii_uppercase());
        }
        let line = shim
            .lines()
            .find(|line| line.contains(&format!("XENRS_XEN_STAT_{define}\t")))
            .unwrap_or_else(|| panic!("xen_kmod.c lacks XENRS_XEN_STAT_{define}"));
        let value: i32 = line.split_whitespace().last().unwrap().parse().unwrap();
        assert_eq!(value, stat as i32, "{define}");
    }
}

/// Nothing of bring-up is left in the fake kernel.
fn nothing_outstanding() {
    crate::fake_kpi::state(|s| {
        assert!(s.pages.is_empty(), "pages left: {:?}", s.pages.len());
        assert_eq!(s.frames_mapped, 0, "xenstore frame still mapped");
        assert!(!s.threads, "threads still running");
        assert!(!s.upcall, "upcall still installed");
        assert!(!s.cdevs, "/dev/xen nodes still there");
        assert!(s.vectors.is_empty(), "APIC vectors left: {:?}", s.vectors);
        assert!(!s.vec_handler, "upcall filter still installed");
    });
    assert_eq!(fake::locks_out(), 0, "sx locks left");
}

#[test]
fn load_then_unload_leaves_nothing_registered() {
    let _kernel = fake::session();
    on_xen(0);
    assert_eq!(xenrs_xen_load(), 0);
    crate::fake_kpi::state(|s| {
        // hypercall page, shared_info, grant-table frames, and the FIFO control block the
        // core offered before Xen refused FIFO (freed at unload: Xen never saw it).
        assert_eq!(s.pages.len(), 4);
        assert_eq!(s.frames_mapped, 1);
        assert!(s.threads && s.upcall);
    });
    assert_eq!(
        stat(XenStat::EvtchnAbi),
        Ok(0),
        "2-level: the fake refuses FIFO"
    );
    assert_eq!(
        stat(XenStat::EvtchnPorts),
        Ok(1),
        "the adopted xenstore port"
    );
    assert_eq!(stat(XenStat::GnttabFrames), Ok(1));
    assert_eq!(stat(XenStat::UpcallAt), Ok(11));
    assert_eq!(stat(XenStat::Registrations), Ok(0));
    assert_eq!(stat(XenStat::OpenFiles), Ok(0));
    let callback = xen_sys::native::HVM_PARAM_CALLBACK_IRQ;
    crate::fake_kpi::state(|s| {
        // PCI mode (no per-vCPU vector offered): Xen is told the platform device's GSI.
        assert_eq!(
            s.params,
            [(callback, xen_kmod::hvm::CallbackVia::Gsi(11).encode())]
        );
    });
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
    crate::fake_kpi::state(|s| {
        assert_eq!(
            s.params.last(),
            Some(&(callback, 0)),
            "upcalls off at unload"
        )
    });
    // The adopted xenstore port is only forgotten, never closed: it is the toolstack's.
    crate::fake_kpi::state(|s| assert!(!s.closed.contains(&1)));
}

#[test]
fn every_bring_up_failure_unwinds_with_a_logged_reason() {
    type Inject = fn(&mut crate::fake_kpi::State);
    let cases: [(&str, Inject); 12] = [
        ("hypercall-page", |s| s.fail_page_alloc = Some(0)),
        ("hypercall-page", |s| s.fail_ops.push("install")),
        ("version", |s| s.fail_ops.push("Version")),
        ("shared-info", |s| s.fail_page_alloc = Some(1)),
        ("shared-info", |s| s.fail_ops.push("AddToPhysmap")),
        ("threads", |s| s.fail_threads = true),
        ("upcall", |s| s.fail_upcall = true),
        ("upcall", |s| s.fail_ops.push("SetParam")),
        ("grant-table", |s| s.fail_ops.push("QuerySize")),
        ("xenstore", |s| s.fail_ops.push("GetParam")),
        ("xenstore", |s| s.fail_map_frame = true),
        ("devices", |s| s.fail_cdevs = true),
    ];
    for (step, inject) in cases {
        let _kernel = fake::session();
        on_xen(0);
        crate::fake_kpi::state(inject);
        let rc = xenrs_xen_load();
        assert_ne!(rc, 0, "{step}: load must fail");
        assert!(!MODULE_SLOT.is_loaded());
        let console = fake::console();
        assert!(
            console.contains(&format!("xen: {step}:")),
            "{step}: console says {console:?}"
        );
        nothing_outstanding();
    }
}

#[test]
#[expect(
    unsafe_code,
    reason = "calls the exported C ABI as a driver module does"
)]
fn unload_refused_while_a_port_is_bound_and_nothing_fires_after_unbind() {
    use core::sync::atomic::{AtomicU32, Ordering};
    static FIRED: AtomicU32 = AtomicU32::new(0);
    static UNBIND_FROM_HANDLER: core::sync::atomic::AtomicI32 =
        core::sync::atomic::AtomicI32::new(0);
    unsafe extern "C" fn handler(_arg: *mut core::ffi::c_void, port: u32) {
        FIRED.fetch_add(1, Ordering::SeqCst);
        // Unbinding from inside a handler is refused rather than deadlocking.
        UNBIND_FROM_HANDLER.store(services::xenrs_evtchn_unbind(port), Ordering::SeqCst);
    }
    let _kernel = fake::session();
    on_xen(0);
    FIRED.store(0, Ordering::SeqCst);
    assert_eq!(xenrs_xen_load(), 0);
    let mut port = 0u32;
    assert_eq!(
        services::xenrs_evtchn_alloc_unbound(0, 0, Some(handler), core::ptr::null_mut(), &mut port),
        0
    );
    assert_eq!(
        services::xenrs_evtchn_alloc_unbound(0, 2, Some(handler), core::ptr::null_mut(), &mut port),
        22,
        "unknown flag"
    );
    assert_eq!(stat(XenStat::Users), Ok(1));
    assert_eq!(xenrs_xen_quiesce(), 16, "busy while a port is bound");
    assert_eq!(xenrs_xen_unload(), 16, "even when forced");
    let raise = || {
        MODULE_SLOT.with(|m| {
            let p = m.platform().unwrap();
            let si = p.shared_info_view();
            si.evtchn_pending().test_and_set(port);
            let v = si.legacy_vcpu_info(0).unwrap();
            v.set_pending_sel_bit(port / xen_kmod::shared::BITS_PER_XEN_ULONG);
            v.set_upcall_pending();
            p.run_events(m);
        })
    };
    raise();
    assert_eq!(
        FIRED.load(Ordering::SeqCst),
        1,
        "a bound port's event reaches its handler"
    );
    assert_eq!(
        UNBIND_FROM_HANDLER.load(Ordering::SeqCst),
        11,
        "EDEADLK from the handler"
    );
    assert_eq!(services::xenrs_evtchn_unbind(port), 0);
    assert_eq!(
        services::xenrs_evtchn_unbind(port),
        2,
        "second unbind: ENOENT"
    );
    raise();
    assert_eq!(
        FIRED.load(Ordering::SeqCst),
        1,
        "nothing fires after unbind"
    );
    crate::fake_kpi::state(|s| assert!(s.closed.contains(&port)));
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
}

#[test]
#[expect(
    unsafe_code,
    reason = "calls the exported C ABI as a driver module does"
)]
fn grants_pages_and_maps_count_as_users_and_bad_arguments_change_nothing() {
    let _kernel = fake::session();
    on_xen(0);
    assert_eq!(xenrs_xen_load(), 0);
    let mut gref = 0u32;
    let mut va = core::ptr::null_mut();
    let mut gfn = 0u64;
    let mut handle = 0u64;
    let mut mva = core::ptr::null_mut();
    // SAFETY: every pointer is a live local, valid for the writes the exports make.
    let (too_big, granted, zero_pages, pages, mapped) = unsafe {
        (
            services::xenrs_grant_access(0x1_0000, 5, 0, &mut gref),
            services::xenrs_grant_access(0, 5, 0, &mut gref),
            services::xenrs_pages_alloc(0, &mut va, &mut gfn),
            services::xenrs_pages_alloc(2, &mut va, &mut gfn),
            services::xenrs_grant_map(1, 9, 1, &mut handle, &mut mva),
        )
    };
    assert_eq!(too_big, 22, "domid > 16 bits");
    assert_eq!(granted, 0);
    assert_eq!(zero_pages, 22, "zero pages");
    assert_eq!(pages, 0);
    assert_eq!(mapped, 0);
    assert!(!mva.is_null());
    assert_eq!(stat(XenStat::Users), Ok(3));
    assert_eq!(xenrs_xen_unload(), 16);
    assert_eq!(services::xenrs_grant_end_access(gref), 0);
    assert_eq!(services::xenrs_grant_end_access(gref), 2);
    services::xenrs_pages_free(va, 2);
    assert_eq!(services::xenrs_grant_unmap(handle), 0);
    assert_eq!(services::xenrs_grant_unmap(handle), 2);
    assert_eq!(stat(XenStat::Users), Ok(0));
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
}

/// The cdevsw entry points as the shim calls them.
mod cdevs {
    #![expect(unsafe_code, reason = "calls the C entry points as the shim does")]

    use super::*;
    use crate::cdev;

    fn open(kind: i32, cookie: &mut u64) -> Result<u64, i32> {
        let mut h = 0u64;
        // SAFETY: `h` is a live out-pointer; the cookie outlives the file (closed below).
        match unsafe { cdev::xenrs_cdev_open(kind, core::ptr::from_mut(cookie).cast(), &mut h) } {
            0 => Ok(h),
            e => Err(e),
        }
    }

    fn ioctl(h: u64, cmd: u32, arg: &mut [u8]) -> i32 {
        // SAFETY: `arg` is a live buffer of its length.
        unsafe { cdev::xenrs_cdev_ioctl(h, u64::from(cmd), arg.as_mut_ptr(), arg.len()) }
    }

    fn read(h: u64, buf: &mut [u8]) -> Result<usize, i32> {
        let mut done = 0usize;
        // SAFETY: live buffer and out-pointer.
        match unsafe { cdev::xenrs_cdev_read(h, buf.as_mut_ptr(), buf.len(), &mut done) } {
            0 => Ok(done),
            e => Err(e),
        }
    }

    fn write(h: u64, buf: &[u8]) -> Result<usize, i32> {
        let mut done = 0usize;
        // SAFETY: live buffer and out-pointer.
        match unsafe { cdev::xenrs_cdev_write(h, buf.as_ptr(), buf.len(), &mut done) } {
            0 => Ok(done),
            e => Err(e),
        }
    }

    #[test]
    fn evtchn_open_ioctl_event_read_close() {
        use xen_evtchn::dev::{
            IOCTL_EVTCHN_BIND_UNBOUND_PORT, IOCTL_EVTCHN_NOTIFY, IOCTL_EVTCHN_UNBIND,
        };
        let _kernel = fake::session();
        on_xen(0);
        assert_eq!(xenrs_xen_load(), 0);
        let mut cookie = 0u64;
        let h = open(cdev::KIND_EVTCHN, &mut cookie).unwrap();
        assert_eq!(stat(XenStat::Users), Ok(1), "an open file holds the module");
        assert_eq!(xenrs_xen_unload(), 16);
        // Bad: unknown command, wrong size, notify of a port not bound here.
        assert_eq!(ioctl(h, 0xc008_45ff, &mut [0; 8]), 25, "ENOTTY");
        assert_eq!(
            ioctl(h, IOCTL_EVTCHN_BIND_UNBOUND_PORT, &mut [0; 4]),
            22,
            "short argument"
        );
        assert_eq!(
            ioctl(h, IOCTL_EVTCHN_NOTIFY, &mut 99u32.to_ne_bytes()),
            57,
            "ENOTCONN"
        );
        // Good: bind an unbound port for domain 0.
        let mut arg = [0u8; 8];
        assert_eq!(ioctl(h, IOCTL_EVTCHN_BIND_UNBOUND_PORT, &mut arg), 0);
        let port = u32::from_ne_bytes(arg[4..8].try_into().unwrap());
        assert_ne!(port, 0);
        assert_eq!(read(h, &mut [0; 4]), Err(35), "nothing yet: EAGAIN");
        assert_eq!(cdev::xenrs_cdev_readable(h), 0);
        // Xen raises it: the event reaches the file, wakes it, and reads back as the port.
        MODULE_SLOT.with(|m| {
            let p = m.platform().unwrap();
            let si = p.shared_info_view();
            si.evtchn_pending().test_and_set(port);
            let v = si.legacy_vcpu_info(0).unwrap();
            v.set_pending_sel_bit(port / xen_kmod::shared::BITS_PER_XEN_ULONG);
            v.set_upcall_pending();
            p.run_events(m);
        });
        crate::fake_kpi::state(|s| {
            assert!(s.wakeups.contains(&core::ptr::from_ref(&cookie).addr()))
        });
        assert_eq!(cdev::xenrs_cdev_readable(h), 1);
        let mut out = [0u8; 8];
        assert_eq!(read(h, &mut out), Ok(4));
        assert_eq!(u32::from_ne_bytes(out[..4].try_into().unwrap()), port);
        // Re-enable it by writing the port back, then unbind; a second unbind is refused.
        assert_eq!(write(h, &port.to_ne_bytes()), Ok(4));
        assert_eq!(ioctl(h, IOCTL_EVTCHN_UNBIND, &mut port.to_ne_bytes()), 0);
        assert_eq!(ioctl(h, IOCTL_EVTCHN_UNBIND, &mut port.to_ne_bytes()), 57);
        // A port left bound is released by close.
        let mut arg = [0u8; 8];
        assert_eq!(ioctl(h, IOCTL_EVTCHN_BIND_UNBOUND_PORT, &mut arg), 0);
        let second = u32::from_ne_bytes(arg[4..8].try_into().unwrap());
        cdev::xenrs_cdev_close(h);
        crate::fake_kpi::state(|s| assert!(s.closed.contains(&port) && s.closed.contains(&second)));
        assert_eq!(
            ioctl(h, IOCTL_EVTCHN_UNBIND, &mut port.to_ne_bytes()),
            9,
            "closed: EBADF"
        );
        assert_eq!(xenrs_xen_unload(), 0);
        nothing_outstanding();
    }

    #[test]
    fn xenstore_and_privcmd_refuse_bad_calls_and_release_on_close() {
        let _kernel = fake::session();
        on_xen(0);
        assert_eq!(xenrs_xen_load(), 0);
        let mut c1 = 0u64;
        let mut c2 = 0u64;
        let xs = open(cdev::KIND_XENSTORE, &mut c1).unwrap();
        let pc = open(cdev::KIND_PRIVCMD, &mut c2).unwrap();
        assert_eq!(open(7, &mut c1), Err(6), "unknown kind: ENXIO");
        assert_eq!(
            ioctl(xs, 0x2000_4500, &mut []),
            25,
            "xenstore has no ioctls"
        );
        // A header announcing more than 4096 payload bytes is refused.
        let mut bad = [0u8; 16];
        bad[12..16].copy_from_slice(&5000u32.to_le_bytes());
        assert_eq!(write(xs, &bad), Err(22));
        // A well-formed XS_READ goes to the (silent) daemon; nothing to read yet.
        let mut msg = Vec::new();
        xen_xenbus::Request::Read { path: "domid" }
            .encode(7, 0, &mut msg)
            .unwrap();
        assert_eq!(write(xs, &msg), Ok(msg.len()));
        assert_eq!(read(xs, &mut [0; 64]), Err(35));
        // privcmd: an unknown command, then a hypercall from a domU (not the control domain).
        assert_eq!(ioctl(pc, 0xc000_45ff, &mut []), 78, "ENOSYS");
        let abi = xen_kmod::privcmd::abi::Abi::NATIVE;
        let mut hc = vec![0u8; xen_sys::freebsd::ioccom::iocparm_len(abi.hypercall())];
        assert_eq!(ioctl(pc, abi.hypercall(), &mut hc), 1, "EPERM outside dom0");
        assert_eq!(read(pc, &mut [0; 4]), Err(19), "privcmd has no read");
        assert_eq!(stat(XenStat::Users), Ok(2));
        cdev::xenrs_cdev_close(xs);
        cdev::xenrs_cdev_close(pc);
        assert_eq!(xenrs_xen_unload(), 0);
        nothing_outstanding();
    }
}

#[test]
#[expect(
    unsafe_code,
    reason = "calls the exported C ABI as a driver module does"
)]
fn xenbus_registration_start_stop_and_refusals() {
    use std::sync::Mutex as StdMutex;
    static CALLS: StdMutex<Vec<(i32, i32)>> = StdMutex::new(Vec::new());
    static REG: core::sync::atomic::AtomicPtr<core::ffi::c_void> =
        core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());
    unsafe extern "C" fn cb(
        _arg: *mut core::ffi::c_void,
        kind: i32,
        _watch: u32,
        _path: *const core::ffi::c_char,
        _missed: i32,
    ) {
        // Unregistering from the callback is refused, not a deadlock.
        let reg = REG.load(core::sync::atomic::Ordering::SeqCst);
        let rc = if kind == 0 {
            services::xenrs_xenbus_unregister(reg)
        } else {
            0
        };
        CALLS.lock().unwrap().push((kind, rc));
    }
    let _kernel = fake::session();
    on_xen(0);
    CALLS.lock().unwrap().clear();
    assert_eq!(xenrs_xen_load(), 0);
    let mut reg = core::ptr::null_mut();
    // SAFETY: NUL-terminated type, live out-pointer; `cb` lives for the program.
    let rc = unsafe {
        services::xenrs_xenbus_register(
            0,
            c"vbd".as_ptr(),
            Some(cb),
            core::ptr::null_mut(),
            &mut reg,
        )
    };
    assert_eq!(rc, 0);
    REG.store(reg, core::sync::atomic::Ordering::SeqCst);
    let mut other = core::ptr::null_mut();
    // SAFETY: as above.
    let dup = unsafe {
        services::xenrs_xenbus_register(
            0,
            c"vbd".as_ptr(),
            Some(cb),
            core::ptr::null_mut(),
            &mut other,
        )
    };
    assert_eq!(dup, 17, "the same role and type twice: EEXIST");
    // SAFETY: as above.
    let bad_role = unsafe {
        services::xenrs_xenbus_register(
            5,
            c"vif".as_ptr(),
            Some(cb),
            core::ptr::null_mut(),
            &mut other,
        )
    };
    assert_eq!(bad_role, 22);
    crate::fake_kpi::state(|s| {
        assert!(s.kicks[1] >= 1, "the start is queued on the xenbus thread")
    });
    assert_eq!(stat(XenStat::Users), Ok(1));
    assert_eq!(xenrs_xen_quiesce(), 16);
    // The xenbus thread runs: START, whose attempt to unregister is refused.
    services::xenrs_xen_run_xenbus();
    assert_eq!(*CALLS.lock().unwrap(), [(0, 11)]);
    // A watch needs the daemon's acknowledgement; with no daemon the wait gives up.
    let mut w = 0u32;
    // SAFETY: NUL-terminated path, live out-pointer.
    let watched = unsafe { services::xenrs_xs_watch(reg, c"device/vbd".as_ptr(), &mut w) };
    assert_eq!(watched, 5);
    assert_eq!(
        services::xenrs_xs_unwatch(reg, 77),
        2,
        "not this registration's watch"
    );
    assert_eq!(services::xenrs_xenbus_unregister(reg), 0);
    assert_eq!(*CALLS.lock().unwrap(), [(0, 11), (2, 0)], "STOP last");
    assert_eq!(services::xenrs_xenbus_unregister(reg), 2, "gone: ENOENT");
    services::xenrs_xen_run_xenbus();
    assert_eq!(CALLS.lock().unwrap().len(), 2, "nothing after unregister");
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
}

#[test]
fn auto_upcall_is_the_vector_when_xen_offers_it_or_there_is_no_platform_device() {
    let _kernel = fake::session();
    on_xen(0);
    assert_eq!(xenrs_xen_load(), 0);
    assert_eq!(stat(XenStat::UpcallAt), Ok(11), "the platform device's IRQ");
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
    on_xen(xen_kmod::arch::cpuid::hvm_features::UPCALL_VECTOR);
    assert_eq!(xenrs_xen_load(), 0);
    crate::fake_kpi::state(|s| {
        assert!(!s.upcall, "the platform device's interrupt is not used");
        assert_eq!(s.upcall_vectors.len(), 1);
    });
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
    // PVH: no platform device, no CPUID bit.
    on_xen(0);
    crate::fake_kpi::state(|s| s.no_pci = true);
    assert_eq!(xenrs_xen_load(), 0);
    crate::fake_kpi::state(|s| assert_eq!(s.upcall_vectors.len(), 1));
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
    // Xen advertises the vector but refuses it, two CPUs: `auto` falls back to the platform
    // device's interrupt, having given the vector and the filter back.
    on_xen(xen_kmod::arch::cpuid::hvm_features::UPCALL_VECTOR);
    crate::fake_kpi::state(|s| {
        s.ncpus = 2;
        s.fail_ops.push("SetEvtchnUpcallVector");
    });
    assert_eq!(xenrs_xen_load(), 0);
    assert!(fake::console().contains("using the platform PCI device's interrupt"));
    assert_eq!(stat(XenStat::Upcall), Ok(0), "the tunable stays auto");
    assert_eq!(stat(XenStat::UpcallAt), Ok(11), "the platform device's IRQ");
    crate::fake_kpi::state(|s| {
        assert!(s.upcall && !s.vec_handler && s.vectors.is_empty());
        let callback = xen_sys::native::HVM_PARAM_CALLBACK_IRQ;
        assert_eq!(
            s.params,
            [(callback, xen_kmod::hvm::CallbackVia::Gsi(11).encode())]
        );
    });
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
    // Without the platform device there is nothing to fall back to.
    on_xen(xen_kmod::arch::cpuid::hvm_features::UPCALL_VECTOR);
    crate::fake_kpi::state(|s| {
        s.ncpus = 2;
        s.no_pci = true;
        s.fail_ops.push("SetEvtchnUpcallVector");
    });
    assert_eq!(xenrs_xen_load(), 6);
    nothing_outstanding();
}

#[test]
fn the_upcall_filter_lowers_the_line_and_queues_the_events_task() {
    let _kernel = fake::session();
    on_xen(0);
    assert_eq!(xenrs_xen_load(), 0);
    let v = MODULE_SLOT
        .with(|m| {
            m.platform()
                .unwrap()
                .shared_info_view()
                .legacy_vcpu_info(0)
                .unwrap()
        })
        .unwrap();
    v.set_upcall_pending();
    let before = crate::fake_kpi::state(|s| s.kicks[0]);
    services::xenrs_xen_upcall();
    assert!(
        !v.upcall_pending(),
        "vCPU 0's flag cleared: Xen drops the line"
    );
    assert_eq!(crate::fake_kpi::state(|s| s.kicks[0]), before + 1);
    assert_eq!(xenrs_xen_unload(), 0);
    // After unload the filter finds no module and does nothing.
    services::xenrs_xen_upcall();
    assert_eq!(crate::fake_kpi::state(|s| s.kicks[0]), before + 1);
    nothing_outstanding();
}

#[test]
#[expect(
    unsafe_code,
    reason = "calls the exported C ABI as a driver module does"
)]
fn a_deferred_revoke_holds_the_page_and_the_module_until_the_peer_lets_go() {
    let _kernel = fake::session();
    on_xen(0);
    assert_eq!(xenrs_xen_load(), 0);
    let mut va = core::ptr::null_mut();
    let mut gfn = 0u64;
    let mut gref = 0u32;
    let mut deferred = 0;
    // SAFETY: live out-pointers.
    let (alloc, granted) = unsafe {
        (
            services::xenrs_pages_alloc(1, &mut va, &mut gfn),
            services::xenrs_grant_access(1, gfn, 0, &mut gref),
        )
    };
    assert_eq!((alloc, granted), (0, 0));
    // The peer maps the page: Xen sets GTF_reading | GTF_writing in the entry.
    let entry = MODULE_SLOT
        .with(|m| {
            let p = m.platform().unwrap();
            p.gnttab_view
                .u32_at(usize::try_from(gref).unwrap() * 8)
                .unwrap()
        })
        .unwrap();
    entry.fetch_or(0x18, core::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        services::xenrs_grant_end_access(gref),
        16,
        "still mapped: EBUSY"
    );
    // SAFETY: live out-pointer.
    let revoked = unsafe { services::xenrs_grant_revoke(gref, &mut deferred) };
    assert_eq!(revoked, 0);
    assert_eq!(deferred, 1);
    services::xenrs_pages_free(va, 1);
    let pages_now = crate::fake_kpi::state(|s| s.pages.len());
    assert_eq!(xenrs_xen_quiesce(), 16, "the peer still maps our page");
    assert_eq!(
        stat(XenStat::Users),
        Ok(2),
        "the held page and the deferred reference"
    );
    // The peer unmaps; the next poll (quiesce, or the xenbus task) finishes both.
    entry.fetch_and(!0x18, core::sync::atomic::Ordering::SeqCst);
    services::xenrs_xen_run_xenbus();
    assert_eq!(stat(XenStat::Users), Ok(0));
    assert_eq!(
        crate::fake_kpi::state(|s| s.pages.len()),
        pages_now - 1,
        "page freed"
    );
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
}

#[test]
#[expect(
    unsafe_code,
    reason = "calls the exported C ABI as a driver module does"
)]
fn freeing_pages_with_a_live_grant_revokes_it_first() {
    let _kernel = fake::session();
    on_xen(0);
    assert_eq!(xenrs_xen_load(), 0);
    let mut va = core::ptr::null_mut();
    let mut gfn = 0u64;
    let mut gref = 0u32;
    // SAFETY: live out-pointers.
    let (alloc, granted) = unsafe {
        (
            services::xenrs_pages_alloc(2, &mut va, &mut gfn),
            services::xenrs_grant_access(1, gfn + 1, 1, &mut gref),
        )
    };
    assert_eq!((alloc, granted), (0, 0));
    services::xenrs_pages_free(va, 2);
    assert!(fake::console().contains(&format!("grant {gref} still live; revoking it")));
    assert_eq!(stat(XenStat::GnttabGrants), Ok(0));
    assert_eq!(stat(XenStat::Users), Ok(0));
    assert_eq!(
        services::xenrs_grant_end_access(gref),
        2,
        "already revoked: ENOENT"
    );
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
}

/// The drivers' side of the ABI (crate xenrs-api's `KernelXen`) against this module's own
/// exports: what a driver module does through `XenServices`, end to end.
#[test]
fn xenrs_api_kernel_side_round_trip() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use xenrs_api::{kernel::KernelXen, BindFlags, Revoked, XenServices};
    let _kernel = fake::session();
    on_xen(0);
    assert_eq!(xenrs_xen_load(), 0);
    let xen = KernelXen::new().expect("same API version");
    assert_eq!(xen.domid(), 3);
    let fired = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&fired);
    let port = xen
        .evtchn_alloc_unbound(
            0,
            BindFlags::default(),
            Box::new(move |_port| {
                seen.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
    let raise = || {
        MODULE_SLOT.with(|m| {
            let p = m.platform().unwrap();
            let si = p.shared_info_view();
            si.evtchn_pending().test_and_set(port);
            let v = si.legacy_vcpu_info(0).unwrap();
            v.set_pending_sel_bit(port / xen_kmod::shared::BITS_PER_XEN_ULONG);
            v.set_upcall_pending();
            p.run_events(m);
        })
    };
    raise();
    assert_eq!(fired.load(Ordering::SeqCst), 1);
    xen.evtchn_notify(port).unwrap();
    crate::fake_kpi::state(|s| assert!(s.sent.contains(&port)));
    assert_eq!(xen.evtchn_notify(port + 100), Err(Errno::ENOENT));
    xen.evtchn_unbind(port).unwrap();
    raise();
    assert_eq!(
        fired.load(Ordering::SeqCst),
        1,
        "nothing fires after unbind"
    );
    assert_eq!(
        Arc::strong_count(&fired),
        1,
        "the handler was freed with the binding"
    );
    let pages = xen.alloc_pages(1).unwrap();
    let gref = xen.grant_access(1, pages.gfn, true).unwrap();
    assert_eq!(xen.grant_revoke(gref), Ok(Revoked::Done));
    xen.free_pages(pages);
    let m = xen.grant_map(1, 9, false).unwrap();
    xen.grant_unmap(m).unwrap();
    // xenstore: no daemon behind the fake ring, so a read ends in a transport error.
    let read = xenrs_api::kernel::xs_call(&xen_xenbus::Request::Read { path: "domid" }, 0);
    assert!(read.is_err(), "{read:?}");
    assert_eq!(stat(XenStat::Users), Ok(0));
    // A port the driver forgets is unbound when its KernelXen goes away.
    let forgotten = xen
        .evtchn_bind_interdomain(1, 7, BindFlags { auto_mask: true }, Box::new(|_| {}))
        .unwrap();
    assert_eq!(stat(XenStat::Users), Ok(1));
    drop(xen);
    assert!(fake::console().contains(&format!("port {forgotten} still bound at teardown")));
    assert_eq!(stat(XenStat::Users), Ok(0));
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
}

#[test]
#[expect(unsafe_code, reason = "a C handler, as a driver module registers")]
fn a_storming_port_is_throttled_and_the_events_task_comes_back_to_lift_it() {
    unsafe extern "C" fn handler(_arg: *mut core::ffi::c_void, _port: u32) {}
    let _kernel = fake::session();
    on_xen(0);
    assert_eq!(xenrs_xen_load(), 0);
    let mut port = 0u32;
    assert_eq!(
        services::xenrs_evtchn_alloc_unbound(0, 0, Some(handler), core::ptr::null_mut(), &mut port),
        0
    );
    // The fake clock stands still: every event falls in one throttle window.
    MODULE_SLOT.with(|m| {
        let p = m.platform().unwrap();
        let si = p.shared_info_view();
        let v = si.legacy_vcpu_info(0).unwrap();
        for _ in 0..10_050 {
            si.evtchn_pending().test_and_set(port);
            v.set_pending_sel_bit(port / xen_kmod::shared::BITS_PER_XEN_ULONG);
            v.set_upcall_pending();
            p.run_events(m);
        }
    });
    assert!(
        stat(XenStat::Events).unwrap() <= 10_001,
        "throttled at the window's limit"
    );
    crate::fake_kpi::state(|s| {
        assert!(
            s.later.iter().any(|(task, _)| *task == 0),
            "a later events run is queued"
        );
    });
    assert_eq!(services::xenrs_evtchn_unbind(port), 0);
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
}

#[test]
#[expect(unsafe_code, reason = "calls the C entry points as the shim does")]
fn privcmd_dm_op_from_dom0_copies_in_calls_xen_and_copies_back() {
    use xen_sys::freebsd::ioccom::iocparm_len;
    let _kernel = fake::session();
    on_xen(0);
    // Dom0.
    if let Some((xen, _)) = FAKE_XEN.lock().unwrap().as_mut() {
        xen.domid = Some(0);
    }
    assert_eq!(xenrs_xen_load(), 0);
    let mut cookie = 0u64;
    let mut h = 0u64;
    // SAFETY: live out-pointer and cookie.
    let opened = unsafe {
        cdev::xenrs_cdev_open(
            cdev::KIND_PRIVCMD,
            core::ptr::from_mut(&mut cookie).cast(),
            &mut h,
        )
    };
    assert_eq!(opened, 0);
    let abi = xen_kmod::privcmd::abi::Abi::NATIVE;
    // One user buffer of 8 bytes, described by a user descriptor array.
    let mut ubuf = [1u8; 8];
    let desc: [usize; 2] = [ubuf.as_mut_ptr().expose_provenance(), ubuf.len()];
    let mut arg = vec![0u8; iocparm_len(abi.dm_op())];
    arg[0..2].copy_from_slice(&5u16.to_ne_bytes());
    arg[4..8].copy_from_slice(&1u32.to_ne_bytes());
    arg[8..8 + abi.word()].copy_from_slice(
        &core::ptr::from_ref(&desc).expose_provenance().to_ne_bytes()[..abi.word()],
    );
    // SAFETY: `arg` is a live buffer of its length.
    let rc =
        unsafe { cdev::xenrs_cdev_ioctl(h, u64::from(abi.dm_op()), arg.as_mut_ptr(), arg.len()) };
    assert_eq!(rc, 0);
    crate::fake_kpi::state(|s| {
        let (op, args) = *s.raw_calls.last().unwrap();
        assert_eq!(op, xen_sys::native::__HYPERVISOR_dm_op);
        assert_eq!((args[0], args[1]), (5, 1), "domid 5, one buffer");
    });
    assert_eq!(ubuf[0], 0x5a, "Xen's write reached the user's buffer");
    assert_eq!(&ubuf[1..], &[1; 7]);
    cdev::xenrs_cdev_close(h);
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
}

#[test]
#[expect(unsafe_code, reason = "calls the C entry points as the shim does")]
fn dom0_before_xenstored_gets_a_local_ring_and_dev_xen_xenstored() {
    let _kernel = fake::session();
    on_xen(0);
    if let Some((xen, _)) = FAKE_XEN.lock().unwrap().as_mut() {
        xen.domid = Some(0);
    }
    crate::fake_kpi::state(|s| s.store_pfn = 0);
    assert_eq!(xenrs_xen_load(), 0);
    crate::fake_kpi::state(|s| {
        assert_eq!(s.frames_mapped, 0, "no Xen frame to map");
        assert_eq!(s.cdev_mask, 0b1_1111, "xenstored's node too (and gntdev)");
    });
    let mut cookie = 0u64;
    let mut h = 0u64;
    // SAFETY: live out-pointer and cookie.
    let opened = unsafe {
        cdev::xenrs_cdev_open(
            cdev::KIND_XENSTORED,
            core::ptr::from_mut(&mut cookie).cast(),
            &mut h,
        )
    };
    assert_eq!(opened, 0);
    let mut buf = [0u8; 20];
    let mut done = 0usize;
    // SAFETY: live buffer and out-pointer.
    let rc1 = unsafe { cdev::xenrs_cdev_read(h, buf.as_mut_ptr(), buf.len(), &mut done) };
    assert_eq!(rc1, 0);
    let port: u32 = std::str::from_utf8(&buf[..done]).unwrap().parse().unwrap();
    let store_port = MODULE_SLOT
        .with(|m| m.platform().unwrap().store_port)
        .unwrap();
    assert_eq!(port, store_port, "the unbound port xenstored binds to");
    let mut pa = 0u64;
    // SAFETY: live out-pointer.
    let rc2 = unsafe { cdev::xenrs_cdev_mmap_paddr(cdev::KIND_XENSTORED, 0, &mut pa) };
    assert_eq!(rc2, 0);
    assert_ne!(pa, 0);
    // SAFETY: as above.
    let rc3 = unsafe { cdev::xenrs_cdev_mmap_paddr(cdev::KIND_XENSTORED, 4096, &mut pa) };
    assert_eq!(rc3, 22, "one page");
    // SAFETY: as above.
    let rc4 = unsafe { cdev::xenrs_cdev_mmap_paddr(cdev::KIND_EVTCHN, 0, &mut pa) };
    assert_eq!(rc4, 22);
    cdev::xenrs_cdev_close(h);
    // A registration made before xenstored runs is started again when it first signals.
    static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    #[expect(unsafe_code, reason = "a C callback, as a driver module registers")]
    unsafe extern "C" fn cb(
        _arg: *mut core::ffi::c_void,
        kind: i32,
        _w: u32,
        _p: *const core::ffi::c_char,
        _m: i32,
    ) {
        if kind == 0 {
            STARTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    STARTS.store(0, std::sync::atomic::Ordering::SeqCst);
    let mut reg = core::ptr::null_mut();
    // SAFETY: NUL-terminated type, live out-pointer.
    let rc = unsafe {
        services::xenrs_xenbus_register(
            1,
            c"vif".as_ptr(),
            Some(cb),
            core::ptr::null_mut(),
            &mut reg,
        )
    };
    assert_eq!(rc, 0);
    services::xenrs_xen_run_xenbus();
    assert_eq!(STARTS.load(std::sync::atomic::Ordering::SeqCst), 1);
    MODULE_SLOT.with(|m| {
        let p = m.platform().unwrap();
        let si = p.shared_info_view();
        si.evtchn_pending().test_and_set(store_port);
        let v = si.legacy_vcpu_info(0).unwrap();
        v.set_pending_sel_bit(store_port / xen_kmod::shared::BITS_PER_XEN_ULONG);
        v.set_upcall_pending();
        p.run_events(m);
    });
    services::xenrs_xen_run_xenbus();
    assert_eq!(
        STARTS.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "started again"
    );
    assert_eq!(services::xenrs_xenbus_unregister(reg), 0);
    assert_eq!(xenrs_xen_unload(), 0);
    crate::fake_kpi::state(|s| assert!(s.closed.contains(&store_port), "our own port is closed"));
    nothing_outstanding();
}

#[test]
fn a_domu_without_a_store_ring_refuses_to_load() {
    let _kernel = fake::session();
    on_xen(0);
    crate::fake_kpi::state(|s| s.store_pfn = 0);
    assert_eq!(xenrs_xen_load(), 6);
    assert!(fake::console().contains("xen: xenstore: Xen names no store ring"));
    nothing_outstanding();
}

#[test]
fn evtchn_tunable_can_keep_the_2_level_abi() {
    let _kernel = fake::session();
    on_xen(0);
    assert_eq!(xenrs_xen_load(), 0);
    assert!(
        crate::fake_kpi::state(|s| s.init_control) > 0,
        "FIFO asked for by default"
    );
    assert_eq!(xenrs_xen_unload(), 0);
    on_xen(0);
    fake::set_env("hw.xenrs.evtchn", "2level");
    assert_eq!(xenrs_xen_load(), 0);
    assert_eq!(
        crate::fake_kpi::state(|s| s.init_control),
        0,
        "never asked for FIFO"
    );
    assert_eq!(stat(XenStat::EvtchnAbi), Ok(0));
    assert_eq!(xenrs_xen_unload(), 0);
    on_xen(0);
    fake::set_env("hw.xenrs.evtchn", "fast");
    assert_eq!(xenrs_xen_load(), 0);
    assert!(
        fake::console().contains("hw.xenrs.evtchn"),
        "a bad value is reported"
    );
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
}

/// A do-nothing xenbus driver for the kick test.
struct NullDriver;

impl<S: ?Sized> xen_xenbus::Driver<S> for NullDriver {
    fn devtype(&self) -> &str {
        "vif"
    }
    fn probe(
        &mut self,
        _xs: &mut S,
        _dev: &mut xen_xenbus::Device,
    ) -> Result<(), xen_xenbus::Error> {
        Ok(())
    }
    fn otherend_changed(
        &mut self,
        _xs: &mut S,
        _dev: &mut xen_xenbus::Device,
        _state: xen_xenbus::XenbusState,
    ) -> Result<(), xen_xenbus::Error> {
        Ok(())
    }
    fn remove(&mut self, _xs: &mut S, _dev: &mut xen_xenbus::Device) {}
}

#[test]
fn a_kick_runs_the_drivers_kick_function_once_on_the_xenbus_thread() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use xenrs_api::{kernel::KernelXen, Registration, XenServices};
    let _kernel = fake::session();
    on_xen(0);
    assert_eq!(xenrs_xen_load(), 0);
    let xen = KernelXen::new().unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&runs);
    let reg = xen
        .register_driver_with_kick(
            xen_xenbus::Role::Backend,
            Box::new(NullDriver),
            Box::new(move |_bus, _store| {
                seen.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
    let kicker = reg.kicker();
    kicker.kick();
    services::xenrs_xen_run_xenbus(); // start first (no daemon: the bus start fails, logged)
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the kick ran after the start"
    );
    kicker.kick();
    kicker.kick();
    services::xenrs_xen_run_xenbus();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "two kicks before the run give one run"
    );
    services::xenrs_xen_run_xenbus();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    drop(reg);
    kicker.kick(); // the registration is gone: nothing happens
    services::xenrs_xen_run_xenbus();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    drop(xen);
    assert_eq!(xenrs_xen_unload(), 0);
    nothing_outstanding();
}

/// `/dev/xen/gntdev` through the entry points the shim calls: the cdevsw (open, ioctl,
/// close), `d_mmap_single` and the device pager (fault, destructor).
mod gntdev_dev {
    #![expect(unsafe_code, reason = "calls the C entry points as the shim does")]

    use super::*;
    use crate::{cdev, gntdev};
    use xen_gnttab::gntdev::abi::Abi;

    const ABI: Abi = Abi::NATIVE;

    fn open() -> u64 {
        let mut h = 0u64;
        let mut cookie = 0u64;
        // SAFETY: live out-pointer; the cookie is never dereferenced by gntdev files.
        let rc = unsafe {
            cdev::xenrs_cdev_open(
                cdev::KIND_GNTDEV,
                core::ptr::from_mut(&mut cookie).cast(),
                &mut h,
            )
        };
        assert_eq!(rc, 0);
        h
    }

    fn ioctl(h: u64, cmd: u32, arg: &mut [u8]) -> i32 {
        // SAFETY: `arg` is a live buffer of its length.
        unsafe { cdev::xenrs_cdev_ioctl(h, u64::from(cmd), arg.as_mut_ptr(), arg.len()) }
    }

    fn arg(cmd: u32) -> Vec<u8> {
        vec![0u8; xen_sys::freebsd::ioccom::iocparm_len(cmd)]
    }

    /// `IOCTL_GNTDEV_MAP_GRANT_REF` of `refs` (domid, ref): the file offset.
    fn map_refs(h: u64, refs: &[(u32, u32)]) -> Result<u64, i32> {
        let user: Vec<u8> = refs
            .iter()
            .flat_map(|(d, r)| d.to_le_bytes().into_iter().chain(r.to_le_bytes()))
            .collect();
        let mut a = arg(ABI.map_grant_ref());
        a[0..4].copy_from_slice(&u32::try_from(refs.len()).unwrap().to_le_bytes());
        let ptr = u64::try_from(user.as_ptr().expose_provenance()).unwrap();
        a[16..16 + ABI.ptr_size()].copy_from_slice(&ptr.to_le_bytes()[..ABI.ptr_size()]);
        match ioctl(h, ABI.map_grant_ref(), &mut a) {
            0 => Ok(u64::from_le_bytes(a[8..16].try_into().unwrap())),
            e => Err(e),
        }
    }

    fn mmap(h: u64, offset: u64, size: u64, writable: bool) -> Result<(u64, u64), i32> {
        let mut object = 0u64;
        let mut pages = 0u64;
        // SAFETY: live out-pointers.
        match unsafe {
            gntdev::xenrs_gntdev_mmap(
                h,
                offset,
                size,
                i32::from(writable),
                &mut object,
                &mut pages,
            )
        } {
            0 => Ok((object, pages)),
            e => Err(e),
        }
    }

    fn fault(object: u64, offset: u64) -> Result<u64, i32> {
        let mut pa = 0u64;
        // SAFETY: live out-pointer.
        match unsafe { gntdev::xenrs_gntdev_fault(object, offset, &mut pa) } {
            0 => Ok(pa),
            e => Err(e),
        }
    }

    fn counters() -> (i64, i64) {
        crate::fake_kpi::state(|s| (s.grants_mapped, s.frames_given))
    }

    #[test]
    fn map_mmap_fault_close_release_and_unload() {
        let _kernel = fake::session();
        on_xen(0);
        assert_eq!(xenrs_xen_load(), 0);
        let h = open();
        assert_eq!(stat(XenStat::Users), Ok(1), "an open file holds the module");
        // Bad calls: unknown command, wrong argument size, zero count, a domid no domain
        // has, an unreadable reference array; none leaves anything behind.
        assert_eq!(ioctl(h, 0xc018_45ff, &mut [0; 24]), 78, "ENOSYS");
        assert_eq!(ioctl(h, ABI.map_grant_ref(), &mut [0; 8]), 22, "short");
        assert_eq!(map_refs(h, &[]), Err(22), "count 0");
        assert_eq!(map_refs(h, &[(0x7ff0, 1)]), Err(22), "reserved domid");
        let mut bad = arg(ABI.map_grant_ref());
        bad[0] = 1;
        assert_eq!(
            ioctl(h, ABI.map_grant_ref(), &mut bad),
            14,
            "NULL refs: EFAULT"
        );
        // Good: two grants of domain 1; nothing is mapped before mmap.
        let index = map_refs(h, &[(1, 9), (1, 10)]).unwrap();
        assert_eq!(counters(), (0, 0));
        // mmap must cover exactly the run.
        assert_eq!(mmap(h, index, 4096, true), Err(22), "part of the run");
        assert_eq!(
            mmap(h, index + 4096, 8192, true),
            Err(22),
            "not a run's start"
        );
        assert_eq!(mmap(h, index, 8191, true), Err(22), "not whole pages");
        let (obj, pages) = mmap(h, index, 8192, true).unwrap();
        assert_eq!(pages, 2);
        assert_eq!(
            counters(),
            (2, 2),
            "two grants mapped over two frames given to Xen"
        );
        let pa0 = fault(obj, 0).unwrap();
        let pa1 = fault(obj, 4096 + 17).unwrap();
        assert_eq!(pa0 % 4096, 0);
        assert_eq!(pa1, pa0 + 4096, "the run is contiguous");
        assert_eq!(fault(obj, 8192), Err(22), "beyond the object");
        assert_eq!(fault(obj + 1000, 0), Err(22), "unknown object");
        // GET_OFFSET_FOR_VADDR through the process's VM map.
        crate::fake_kpi::state(|s| s.gntdev_vm.insert(0x8000_0000, (obj, 8192)));
        let mut v = arg(ABI.get_offset_for_vaddr());
        v[0..8].copy_from_slice(&0x8000_0000u64.to_le_bytes());
        assert_eq!(ioctl(h, ABI.get_offset_for_vaddr(), &mut v), 0);
        assert_eq!(u64::from_le_bytes(v[8..16].try_into().unwrap()), index);
        assert_eq!(u32::from_le_bytes(v[16..20].try_into().unwrap()), 2);
        v[0..8].copy_from_slice(&0x9000_0000u64.to_le_bytes());
        assert_ne!(
            ioctl(h, ABI.get_offset_for_vaddr(), &mut v),
            0,
            "nothing mapped there"
        );
        // An unmap notification on a port nobody bound is refused.
        let mut n = arg(ABI.set_unmap_notify());
        n[0..8].copy_from_slice(&index.to_le_bytes());
        n[8..12].copy_from_slice(&2u32.to_le_bytes());
        n[12..16].copy_from_slice(&77u32.to_le_bytes());
        assert_eq!(ioctl(h, ABI.set_unmap_notify(), &mut n), 22);
        // Nor may it name a port of xen.ko (the xenstore port, 1 here) or of a driver
        // module: only a port bound through /dev/xen/evtchn, as Linux's gntdev.
        n[12..16].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            ioctl(h, ABI.set_unmap_notify(), &mut n),
            22,
            "xenstore's port"
        );
        unsafe extern "C" fn nop(_arg: *mut core::ffi::c_void, _port: u32) {}
        let mut driver_port = 0u32;
        assert_eq!(
            services::xenrs_evtchn_alloc_unbound(
                0,
                0,
                Some(nop),
                core::ptr::null_mut(),
                &mut driver_port
            ),
            0
        );
        n[12..16].copy_from_slice(&driver_port.to_le_bytes());
        assert_eq!(
            ioctl(h, ABI.set_unmap_notify(), &mut n),
            22,
            "a driver's port"
        );
        assert_eq!(services::xenrs_evtchn_unbind(driver_port), 0);
        let mut cookie = 0u64;
        let mut eh = 0u64;
        assert_eq!(
            // SAFETY: live out-pointer; the cookie outlives the file (closed below).
            unsafe {
                cdev::xenrs_cdev_open(
                    cdev::KIND_EVTCHN,
                    core::ptr::from_mut(&mut cookie).cast(),
                    &mut eh,
                )
            },
            0
        );
        let mut bind = [0u8; 8];
        assert_eq!(
            ioctl(
                eh,
                xen_evtchn::dev::IOCTL_EVTCHN_BIND_UNBOUND_PORT,
                &mut bind
            ),
            0
        );
        let user_port = u32::from_ne_bytes(bind[4..8].try_into().unwrap());
        n[12..16].copy_from_slice(&user_port.to_le_bytes());
        assert_eq!(
            ioctl(h, ABI.set_unmap_notify(), &mut n),
            0,
            "a /dev/xen/evtchn port"
        );
        // Closing the file leaves the mapping to its VM object: still mapped, unload refused.
        cdev::xenrs_cdev_close(h);
        assert_eq!(counters(), (2, 2));
        assert_eq!(
            stat(XenStat::Users),
            Ok(2),
            "the VM object (and the evtchn file) hold the module"
        );
        assert_eq!(xenrs_xen_unload(), 16);
        // The pager's destructor: grants unmapped, frames populated again, module free.
        gntdev::xenrs_gntdev_object_released(obj);
        gntdev::xenrs_gntdev_object_released(obj);
        assert_eq!(counters(), (0, 0));
        crate::fake_kpi::state(|s| {
            assert!(
                s.sent.contains(&user_port),
                "the notification went to the user's port"
            )
        });
        cdev::xenrs_cdev_close(eh);
        assert_eq!(fault(obj, 0), Err(22), "gone with its object");
        assert_eq!(stat(XenStat::Users), Ok(0));
        assert_eq!(xenrs_xen_unload(), 0);
        nothing_outstanding();
    }

    #[test]
    fn a_failed_map_gives_the_frames_back_and_a_later_mmap_works() {
        let _kernel = fake::session();
        on_xen(0);
        assert_eq!(xenrs_xen_load(), 0);
        let h = open();
        let index = map_refs(h, &[(2, 5)]).unwrap();
        crate::fake_kpi::state(|s| s.fail_ops.push("MapGrantRef"));
        assert_eq!(mmap(h, index, 4096, false), Err(22));
        assert_eq!(counters(), (0, 0), "nothing mapped, no frame kept from Xen");
        crate::fake_kpi::state(|s| s.fail_ops.clear());
        let (obj, _) = mmap(h, index, 4096, false).unwrap();
        // A second mmap of a read-only mapping for writing is refused; for reading it
        // shares the mapping (one more object).
        assert_eq!(mmap(h, index, 4096, true), Err(13), "EACCES");
        let (obj2, _) = mmap(h, index, 4096, false).unwrap();
        assert_eq!(fault(obj, 0), fault(obj2, 0));
        // The unmap ioctl alone leaves the mapping to its objects.
        let mut u = arg(ABI.unmap_grant_ref());
        u[0..8].copy_from_slice(&index.to_le_bytes());
        u[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(ioctl(h, ABI.unmap_grant_ref(), &mut u), 0);
        assert_eq!(counters(), (1, 1));
        gntdev::xenrs_gntdev_object_released(obj);
        assert_eq!(counters(), (1, 1), "one object still maps it");
        gntdev::xenrs_gntdev_object_released(obj2);
        assert_eq!(counters(), (0, 0));
        cdev::xenrs_cdev_close(h);
        assert_eq!(xenrs_xen_unload(), 0);
        nothing_outstanding();
    }

    #[test]
    fn allocated_pages_are_granted_mmapped_and_freed() {
        let _kernel = fake::session();
        on_xen(0);
        assert_eq!(xenrs_xen_load(), 0);
        let pages_before = crate::fake_kpi::state(|s| s.pages.len());
        let h = open();
        let mut ids = [0u32; 2];
        let mut a = arg(ABI.alloc_gref());
        a[0..2].copy_from_slice(&4u16.to_le_bytes());
        a[2..4].copy_from_slice(&1u16.to_le_bytes());
        a[4..8].copy_from_slice(&2u32.to_le_bytes());
        let ptr = u64::try_from(ids.as_mut_ptr().expose_provenance()).unwrap();
        a[16..16 + ABI.ptr_size()].copy_from_slice(&ptr.to_le_bytes()[..ABI.ptr_size()]);
        // Unknown flags are refused before anything is allocated.
        let mut bad = a.clone();
        bad[2] = 0x80;
        assert_eq!(ioctl(h, ABI.alloc_gref(), &mut bad), 22);
        assert_eq!(crate::fake_kpi::state(|s| s.pages.len()), pages_before);
        assert_eq!(ioctl(h, ABI.alloc_gref(), &mut a), 0);
        let index = u64::from_le_bytes(a[8..16].try_into().unwrap());
        assert_ne!(ids[0], ids[1], "two grant references copied out");
        assert_eq!(stat(XenStat::GnttabGrants), Ok(2));
        assert_eq!(crate::fake_kpi::state(|s| s.pages.len()), pages_before + 2);
        let (obj, n) = mmap(h, index, 8192, true).unwrap();
        assert_eq!(n, 2);
        assert!(fault(obj, 0).is_ok() && fault(obj, 4096).is_ok());
        assert_eq!(mmap(h, index, 8192, true), Err(22), "already mmapped");
        // Dealloc, then close: the pages stay while the object maps them.
        let mut d = arg(ABI.dealloc_gref());
        d[0..8].copy_from_slice(&index.to_le_bytes());
        d[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(ioctl(h, ABI.dealloc_gref(), &mut d), 0);
        cdev::xenrs_cdev_close(h);
        assert_eq!(stat(XenStat::GnttabGrants), Ok(2));
        assert_eq!(xenrs_xen_unload(), 16);
        gntdev::xenrs_gntdev_object_released(obj);
        assert_eq!(stat(XenStat::GnttabGrants), Ok(0), "grants revoked");
        assert_eq!(crate::fake_kpi::state(|s| s.pages.len()), pages_before);
        assert_eq!(stat(XenStat::Users), Ok(0));
        assert_eq!(xenrs_xen_unload(), 0);
        nothing_outstanding();
    }

    #[test]
    fn privcmd_mmap_then_mmapbatch_maps_foreign_frames_with_per_entry_errors() {
        let _kernel = fake::session();
        on_xen(0);
        if let Some((xen, _)) = FAKE_XEN.lock().unwrap().as_mut() {
            xen.domid = Some(0);
        }
        assert_eq!(xenrs_xen_load(), 0);
        let mut cookie = 0u64;
        let mut h = 0u64;
        // SAFETY: live out-pointer and cookie.
        let opened = unsafe {
            cdev::xenrs_cdev_open(
                cdev::KIND_PRIVCMD,
                core::ptr::from_mut(&mut cookie).cast(),
                &mut h,
            )
        };
        assert_eq!(opened, 0);
        assert_eq!(
            mmap(h, 4096, 8192, true),
            Err(22),
            "privcmd maps at offset 0"
        );
        assert_eq!(mmap(h, 0, 100, true), Err(22), "not whole pages");
        let (obj, pages) = mmap(h, 0, 3 * 4096, true).unwrap();
        assert_eq!(pages, 3);
        assert_eq!(counters().1, 3, "three frames reserved for the region");
        assert_eq!(fault(obj, 0), Err(14), "nothing mapped yet");
        crate::fake_kpi::state(|s| s.gntdev_vm.insert(0x5000_0000, (obj, 3 * 4096)));
        let pabi = xen_kmod::privcmd::abi::Abi::NATIVE;
        let w = pabi.word();
        // Foreign frame 0 does not exist (the scripted Xen says -ENOENT); 7 and 8 map.
        let arr: [usize; 3] = [0, 7, 8];
        let mut err = [0x55i32; 3];
        let batch = |addr: u64, num: i32, err: &mut [i32; 3]| {
            let mut a = vec![0u8; xen_sys::freebsd::ioccom::iocparm_len(pabi.mmapbatch())];
            a[0..4].copy_from_slice(&num.to_le_bytes());
            a[4..6].copy_from_slice(&1u16.to_le_bytes());
            let words = [
                addr,
                u64::try_from(arr.as_ptr().expose_provenance()).unwrap(),
                u64::try_from(err.as_mut_ptr().expose_provenance()).unwrap(),
            ];
            for (i, v) in words.iter().enumerate() {
                a[8 + i * w..8 + (i + 1) * w].copy_from_slice(&v.to_le_bytes()[..w]);
            }
            ioctl(h, pabi.mmapbatch(), &mut a)
        };
        assert_ne!(
            batch(0x6000_0000, 3, &mut err),
            0,
            "no mapping of ours there"
        );
        assert_eq!(err, [0x55; 3], "a refused call writes nothing");
        assert_ne!(
            batch(0x5000_0000, 4, &mut err),
            0,
            "more entries than the mapping has"
        );
        let rc = batch(0x5000_0000, 3, &mut err);
        assert!(rc == 0 || rc == 2, "per-entry errors: {rc}");
        assert_eq!(err, [2, 0, 0], "ENOENT for the missing frame only");
        assert_eq!(crate::fake_kpi::state(|s| s.foreign_mapped), 2);
        assert_eq!(fault(obj, 0), Err(14), "the failed entry does not fault in");
        let pa1 = fault(obj, 4096).unwrap();
        assert_eq!(fault(obj, 8192), Ok(pa1 + 4096));
        cdev::xenrs_cdev_close(h);
        assert_eq!(
            xenrs_xen_unload(),
            16,
            "the region's VM object holds the module"
        );
        gntdev::xenrs_gntdev_object_released(obj);
        assert_eq!(
            crate::fake_kpi::state(|s| s.foreign_mapped),
            0,
            "removed from the physmap"
        );
        assert_eq!(counters().1, 0, "frames populated again");
        assert_eq!(stat(XenStat::Users), Ok(0));
        assert_eq!(xenrs_xen_unload(), 0);
        nothing_outstanding();
    }

    #[test]
    fn privcmd_mmap_resource_queries_the_size_then_maps_into_a_region() {
        let _kernel = fake::session();
        on_xen(0);
        if let Some((xen, _)) = FAKE_XEN.lock().unwrap().as_mut() {
            xen.domid = Some(0);
        }
        assert_eq!(xenrs_xen_load(), 0);
        let mut cookie = 0u64;
        let mut h = 0u64;
        // SAFETY: live out-pointer and cookie.
        let opened = unsafe {
            cdev::xenrs_cdev_open(
                cdev::KIND_PRIVCMD,
                core::ptr::from_mut(&mut cookie).cast(),
                &mut h,
            )
        };
        assert_eq!(opened, 0);
        let pabi = xen_kmod::privcmd::abi::Abi::NATIVE;
        let w = pabi.word();
        let res = |num: u64, addr: u64| {
            let mut a = vec![0u8; xen_sys::freebsd::ioccom::iocparm_len(pabi.mmap_resource())];
            a[0..2].copy_from_slice(&1u16.to_le_bytes());
            a[4..8].copy_from_slice(&1u32.to_le_bytes());
            a[16..16 + w].copy_from_slice(&num.to_le_bytes()[..w]);
            a[16 + w..16 + 2 * w].copy_from_slice(&addr.to_le_bytes()[..w]);
            let rc = ioctl(h, pabi.mmap_resource(), &mut a);
            let mut out = [0u8; 8];
            out[..w].copy_from_slice(&a[16..16 + w]);
            (rc, u64::from_le_bytes(out))
        };
        assert_eq!(res(0, 0), (0, 4), "the size query: 4 frames");
        let (obj, _) = mmap(h, 0, 2 * 4096, true).unwrap();
        crate::fake_kpi::state(|s| s.gntdev_vm.insert(0x5000_0000, (obj, 2 * 4096)));
        assert_ne!(res(3, 0x5000_0000).0, 0, "more frames than the mapping has");
        assert_eq!(crate::fake_kpi::state(|s| s.foreign_mapped), 0);
        assert_eq!(res(2, 0x5000_0000).0, 0);
        assert_eq!(crate::fake_kpi::state(|s| s.foreign_mapped), 2);
        let pa0 = fault(obj, 0).unwrap();
        assert_eq!(fault(obj, 4096), Ok(pa0 + 4096));
        cdev::xenrs_cdev_close(h);
        gntdev::xenrs_gntdev_object_released(obj);
        assert_eq!(crate::fake_kpi::state(|s| s.foreign_mapped), 0);
        assert_eq!(counters().1, 0);
        assert_eq!(xenrs_xen_unload(), 0);
        nothing_outstanding();
    }
}
