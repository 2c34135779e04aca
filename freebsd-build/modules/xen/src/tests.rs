//! Host tests of xen.ko's glue, linked against freebsd-kpi's fake kernel functions: the C
//! entry points the shim calls are called here exactly as the module event handler does.

use std::sync::Mutex;

use freebsd_kpi::fake;
use xen_kmod::arch::cpuid::{Vendor, XenCpuid};

use super::*;

/// What the scripted CPUID reports; `None` is bare metal.
pub(crate) static FAKE_XEN: Mutex<Option<(XenCpuid, Vendor)>> = Mutex::new(None);

fn on_xen(hvm_features: u32) {
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
    fake::set_env("hw.xenrs.upcall", "Vector");
    assert_eq!(xenrs_xen_load(), 0);
    assert_eq!(stat(XenStat::Verbose), Ok(2));
    assert_eq!(stat(XenStat::Upcall), Ok(Upcall::Vector as u64));
    let console = fake::console();
    assert!(
        console.contains("xen: Xen 4.17, domain 3, upcall Vector"),
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
fn vector_upcall_without_xen_support_refuses_to_load() {
    let _kernel = fake::session();
    on_xen(0);
    fake::set_env("hw.xenrs.upcall", "vector");
    assert_eq!(xenrs_xen_load(), 45);
    assert!(fake::console().contains("no per-vCPU upcall vector"));
    assert_eq!(stat(XenStat::Upcall), Err(6));
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
