//! xen.ko: hypercalls, event channels, grant tables, xenstore, xenbus and the /dev/xen devices.
//!
//! The kernel-target static library behind `xen.ko`: the protocol cores plus this glue, which
//! the C shim `xen_kmod.c` (module registration, sysctl tree `hw.xenrs`) calls into.
//!
//! Loading reads the loader tunables, detects Xen from the CPUID hypervisor leaves (`ENXIO`
//! on anything else) and brings the platform up in order (`platform.rs`: hypercall page,
//! version, shared_info, event channels, threads, upcall, grant table, xenstore), then creates
//! the /dev/xen devices (`cdev.rs`). Each step failing is logged (`xen: <step>: <why>`) and
//! undoes the ones before it. The driver modules use xen.ko through the exported xenrs API
//! (`services.rs`, `include/xenrs_api.h`). Unloading is refused (`EBUSY`) while anything
//! holds the module: a registration, port, grant, mapping, page run or open file.
//!
//! | loader tunable | values | default |
//! |---|---|---|
//! | `hw.xenrs.verbose` | `0` quiet, `1` a line at load, `2` also the CPUID details | `0` |
//! | `hw.xenrs.upcall` | `auto` (`vector` when Xen advertises it or there is no platform PCI device, else `pci`), `vector` (per-vCPU upcall vector through an interrupt source of ours, `kpi.rs`), `pci` (platform PCI interrupt, HVM) | `auto` |
//! | `hw.xenrs.evtchn` | `fifo` (FIFO if Xen accepts it), `2level` (keeps the module reloadable) | `fifo` |
//!
//! A malformed value is reported on the console (`xen: loader tunable hw.xenrs.verbose="x":
//! not a number ...`) and the default is used.
#![cfg_attr(target_os = "none", no_std)]
// The glue itself has no `unsafe`; the host tests call the C entry points as the shim does.
// The glue's `unsafe` is confined to the KPI layers: `kpi` (the shim's functions) and
// `services` (the C symbols exported to the driver modules), and the device layers `cdev` and
// `gntdev` (the cdevsw and pager entry points).
#![deny(unsafe_code)]

extern crate alloc;

use alloc::collections::BTreeMap;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use freebsd_kpi::sync::SxLock;

use freebsd_kpi::module::KernelModule;
use freebsd_kpi::{kprintln, tunable, Errno};
use xen_kmod::arch::cpuid::{Vendor, XenCpuid};

// Keep the cores linked into the library as their glue arrives.
pub use freebsd_kpi;
pub use xen_evtchn;
pub use xen_gnttab;
pub use xen_kmod;
pub use xen_ring;
pub use xen_shmem;
pub use xen_sys;
pub use xen_xenbus;

#[allow(unsafe_code)]
pub mod cdev;
#[allow(unsafe_code)]
pub mod gntdev;
#[allow(unsafe_code)]
pub mod kpi;
pub mod platform;
#[allow(unsafe_code)]
pub mod services;

/// How event upcalls reach us (tunable `hw.xenrs.upcall`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upcall {
    /// Per-vCPU vector when Xen advertises it or there is no platform PCI device, else the
    /// platform PCI interrupt.
    Auto = 0,
    /// `HVMOP_set_evtchn_upcall_vector` (PVH and modern HVM).
    Vector = 1,
    /// The Xen platform PCI device's interrupt (HVM).
    Pci = 2,
}

const UPCALL_CHOICES: &[&str] = &["auto", "vector", "pci"];

/// `hw.xenrs.evtchn`: `fifo` (FIFO when Xen accepts it, else 2-level) or `2level`. Once Xen
/// runs the FIFO ABI for a domain it stays so (its pages are Xen's for good), and a reloaded
/// xen.ko cannot take it over; `2level` keeps the module reloadable.
const EVTCHN_CHOICES: &[&str] = &["fifo", "2level"];

/// The loader tunables of xen.ko.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `hw.xenrs.verbose`, 0..=2.
    pub verbose: u8,
    /// `hw.xenrs.upcall`.
    pub upcall: Upcall,
    /// `hw.xenrs.evtchn`: ask for FIFO (true) or stay with 2-level.
    pub fifo: bool,
}

impl Config {
    /// Reads the tunables, logging each malformed one and using its default.
    #[must_use]
    pub fn from_tunables() -> Config {
        let verbose = tunable::get("xen", c"hw.xenrs.verbose", 0, |text| {
            tunable::parse_u64_in(text, 0, 2)
        });
        let upcall = tunable::get("xen", c"hw.xenrs.upcall", 0, |text| {
            tunable::parse_choice(text, UPCALL_CHOICES)
        });
        let evtchn = tunable::get("xen", c"hw.xenrs.evtchn", 0, |text| {
            tunable::parse_choice(text, EVTCHN_CHOICES)
        });
        Config {
            fifo: evtchn == 0,
            // CAST: parse_u64_in bounded it to 0..=2.
            verbose: u8::try_from(verbose).unwrap_or(0),
            upcall: match upcall {
                1 => Upcall::Vector,
                2 => Upcall::Pci,
                _ => Upcall::Auto,
            },
        }
    }
}

/// The sysctl leaves under `hw.xenrs` (indices shared with `xen_kmod.c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XenStat {
    XenMajor = 0,
    XenMinor = 1,
    Domid = 2,
    HvmFeatures = 3,
    Verbose = 4,
    Upcall = 5,
    Users = 6,
    UpcallAt = 7,
    Upcalls = 8,
    Events = 9,
    EventsDropped = 10,
    EvtchnAbi = 11,
    EvtchnPorts = 12,
    EvtchnFifoPages = 13,
    GnttabFrames = 14,
    GnttabGrants = 15,
    Registrations = 16,
    OpenFiles = 17,
}

impl XenStat {
    pub const ALL: [XenStat; 18] = [
        XenStat::XenMajor,
        XenStat::XenMinor,
        XenStat::Domid,
        XenStat::HvmFeatures,
        XenStat::Verbose,
        XenStat::Upcall,
        XenStat::Users,
        XenStat::UpcallAt,
        XenStat::Upcalls,
        XenStat::Events,
        XenStat::EventsDropped,
        XenStat::EvtchnAbi,
        XenStat::EvtchnPorts,
        XenStat::EvtchnFifoPages,
        XenStat::GnttabFrames,
        XenStat::GnttabGrants,
        XenStat::Registrations,
        XenStat::OpenFiles,
    ];
}

/// The loaded xen.ko.
#[derive(Debug)]
pub struct XenModule {
    xen: XenCpuid,
    vendor: Vendor,
    config: Config,
    users: AtomicU32,
    /// Driver registrations (services.rs).
    regs: SxLock<services::Regs>,
    /// Which registration owns each watch.
    watch_owner: SxLock<BTreeMap<xen_xenbus::WatchId, usize>>,
    /// Serialises registration callbacks with unregistering.
    xenbus_serial: SxLock<()>,
    /// The thread running registration callbacks now (0 when none).
    xenbus_thread: core::sync::atomic::AtomicUsize,
    /// Foreign mappings by handle.
    maps: SxLock<BTreeMap<u64, services::Mapping>>,
    next_map: AtomicU64,
    /// Page runs handed out, by address.
    pages: SxLock<BTreeMap<usize, kpi::KPages>>,
    /// Page runs given back while a peer still mapped one of their pages (deferred revoke).
    held: SxLock<alloc::vec::Vec<kpi::KPages>>,
    /// Open /dev/xen files by handle.
    files: SxLock<cdev::Files>,
    next_token: AtomicU64,
    /// xenstore files' close clean-ups still to send.
    xs_cleanups: SxLock<alloc::vec::Vec<xen_xenbus::xsdev::Cleanup>>,
    /// /dev/xen/privcmd.
    privcmd: SxLock<cdev::PrivcmdDev>,
    /// /dev/xen/gntdev (its slot runs are freed before the platform goes).
    gntdev: SxLock<gntdev::GntdevDev>,
    /// The gntdev VM objects the shim holds, by its handle (each a use of the module).
    vm_objects: SxLock<gntdev::VmObjects>,
    /// The device nodes; dropped (destroyed) first at unload, before the platform.
    cdevs: Option<kpi::Cdevs>,
    /// Declared last: dropped after everything above that refers to it.
    platform: Option<platform::Platform>,
}

impl XenModule {
    /// Counts a user (an open /dev/xen device, a bound driver): unloading is refused until
    /// the matching [`XenModule::release`].
    pub fn acquire(&self) {
        self.users.fetch_add(1, Ordering::AcqRel);
    }

    /// The platform (absent only in the middle of load/unload).
    #[must_use]
    pub fn platform(&self) -> Option<&platform::Platform> {
        self.platform.as_ref()
    }

    /// Has every registration's `XENRS_XB_START` delivered again (domain 0, when xenstored
    /// comes up after the drivers registered).
    pub fn restart_registrations(&self) {
        for r in self.regs.lock().values_mut() {
            r.started = false;
        }
    }

    /// Ends a use counted by [`XenModule::acquire`].
    pub fn release(&self) {
        let before = self.users.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "xen.ko: release without acquire");
    }

    /// What CPUID said about Xen.
    #[must_use]
    pub fn cpuid(&self) -> &XenCpuid {
        &self.xen
    }

    /// The CPU vendor (which decides `vmcall` or `vmmcall`).
    #[must_use]
    pub fn vendor(&self) -> Vendor {
        self.vendor
    }

    /// The tunables in force.
    #[must_use]
    pub fn config(&self) -> Config {
        self.config
    }
}

/// Finds Xen: the CPUID instruction on the kernel target; a scripted answer in host tests.
#[cfg(not(test))]
fn detect_xen() -> Option<(XenCpuid, Vendor)> {
    xen_kmod::arch::XenPlatform::detect()
}

#[cfg(not(test))]
use kpi::install_hypercall_page;
#[cfg(test)]
use tests::install_hypercall_page;

#[cfg(test)]
fn detect_xen() -> Option<(XenCpuid, Vendor)> {
    *tests::FAKE_XEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl KernelModule for XenModule {
    const NAME: &'static str = "xen";

    fn load() -> Result<XenModule, Errno> {
        let config = Config::from_tunables();
        let Some((xen, vendor)) = detect_xen() else {
            kprintln!("xen: not running on Xen (no Xen CPUID leaves); not loading");
            return Err(Errno::ENXIO);
        };
        if config.verbose >= 1 {
            kprintln!(
                "xen: Xen {}.{}, domain {}, upcall {:?}",
                xen.major,
                xen.minor,
                xen.domid.map_or(-1, i32::from),
                config.upcall
            );
        }
        if config.verbose >= 2 {
            kprintln!(
                "xen: CPUID base {:#x}..={:#x}, hypercall MSR {:#x}, HVM features {:#x}, {:?}",
                xen.base,
                xen.max_leaf,
                xen.hypercall_msr,
                xen.hvm_features,
                vendor
            );
        }
        let platform =
            platform::Platform::bring_up(xen, config.upcall, config.fifo, install_hypercall_page)?;
        let lock = |name| {
            SxLock::new(name, ()).inspect_err(|_| {
                kprintln!("xen: out of memory for locks; not loading");
            })
        };
        let module = XenModule {
            xen,
            vendor,
            config,
            users: AtomicU32::new(0),
            regs: SxLock::new(c"xenrs regs", BTreeMap::new())?,
            watch_owner: SxLock::new(c"xenrs watches", BTreeMap::new())?,
            xenbus_serial: lock(c"xenrs xenbus")?,
            xenbus_thread: core::sync::atomic::AtomicUsize::new(0),
            maps: SxLock::new(c"xenrs maps", BTreeMap::new())?,
            next_map: AtomicU64::new(1),
            pages: SxLock::new(c"xenrs pages", BTreeMap::new())?,
            held: SxLock::new(c"xenrs held", alloc::vec::Vec::new())?,
            files: SxLock::new(c"xenrs files", BTreeMap::new())?,
            next_token: AtomicU64::new(cdev::FILE_TOKEN_BASE),
            xs_cleanups: SxLock::new(c"xenrs xs cleanups", alloc::vec::Vec::new())?,
            privcmd: SxLock::new(
                c"xenrs privcmd",
                xen_kmod::privcmd::Privcmd::new(
                    cdev::KRegions::new(platform.hv),
                    xen_kmod::privcmd::Config {
                        control_domain: xen.domid == Some(0),
                        own_domid: xen.domid.unwrap_or(0),
                        ..xen_kmod::privcmd::Config::default()
                    },
                ),
            )?,
            gntdev: SxLock::new(c"xenrs gntdev", gntdev::device(platform.hv))?,
            vm_objects: SxLock::new(c"xenrs gntdev objects", BTreeMap::new())?,
            cdevs: None,
            platform: Some(platform),
        };
        // The devices last: from here user space can reach the module.
        let mut module = module;
        let mut kinds = (1 << cdev::KIND_EVTCHN)
            | (1 << cdev::KIND_XENSTORE)
            | (1 << cdev::KIND_PRIVCMD)
            | (1 << cdev::KIND_GNTDEV);
        if module.platform().and_then(|p| p.store.local_pa()).is_some() {
            kinds |= 1 << cdev::KIND_XENSTORED;
        }
        module.cdevs = Some(kpi::Cdevs::create(kinds).inspect_err(|e| {
            kprintln!("xen: devices: /dev/xen nodes could not be created: {e}; not loading");
        })?);
        if config.verbose >= 1 {
            if let Some(p) = module.platform() {
                kprintln!(
                    "xen: up: event channels {:?}, upcall {:?} at {}, grant table {} frame(s), xenstore port {}",
                    p.evtchn.lock().abi(),
                    p.upcall_mode,
                    p.upcall_at,
                    p.gnttab.nr_frames(),
                    p.store_port
                );
            }
        }
        Ok(module)
    }

    fn quiesce(&self) -> Result<(), Errno> {
        // Deferred revocations whose peer has let go no longer hold the module.
        if let Some(p) = self.platform() {
            services::poll_deferred(self, p);
        }
        // gntdev mappings whose unmap failed keep their slots: no unload while any is left.
        gntdev::reap(self);
        if self.gntdev.lock().dying() != (0, 0) {
            return Err(Errno::EBUSY);
        }
        match self.users.load(Ordering::Acquire) {
            0 => Ok(()),
            _ => Err(Errno::EBUSY),
        }
    }

    fn unload(mut self) {
        // The device nodes first (no open file remains: each holds the module), then
        // everything the platform holds, in reverse bring-up order (its Drop).
        drop(self.cdevs.take());
        drop(self.platform.take());
        if self.config.verbose >= 1 {
            kprintln!("xen: unloaded");
        }
    }

    fn stat(&self, which: u32) -> Option<u64> {
        let stat = *XenStat::ALL.get(usize::try_from(which).ok()?)?;
        Some(match stat {
            XenStat::XenMajor => u64::from(self.xen.major),
            XenStat::XenMinor => u64::from(self.xen.minor),
            XenStat::Domid => u64::from(self.xen.domid.unwrap_or(u16::MAX)),
            XenStat::HvmFeatures => u64::from(self.xen.hvm_features),
            XenStat::Verbose => u64::from(self.config.verbose),
            XenStat::Upcall => self.config.upcall as u64,
            XenStat::Users => u64::from(self.users.load(Ordering::Relaxed)),
            XenStat::UpcallAt => u64::from(self.platform.as_ref()?.upcall_at),
            XenStat::Upcalls => self
                .platform
                .as_ref()?
                .counters
                .upcalls
                .load(Ordering::Relaxed),
            XenStat::Events => self
                .platform
                .as_ref()?
                .counters
                .events
                .load(Ordering::Relaxed),
            XenStat::EventsDropped => self
                .platform
                .as_ref()?
                .counters
                .dropped
                .load(Ordering::Relaxed),
            XenStat::EvtchnAbi => {
                u64::from(self.platform.as_ref()?.evtchn.lock().abi() == xen_evtchn::Abi::Fifo)
            }
            XenStat::EvtchnPorts => {
                u64::try_from(self.platform.as_ref()?.evtchn.lock().bound()).unwrap_or(u64::MAX)
            }
            XenStat::EvtchnFifoPages => u64::from(platform::FIFO_PAGES.load(Ordering::Relaxed)),
            XenStat::GnttabFrames => u64::from(self.platform.as_ref()?.gnttab.nr_frames()),
            XenStat::GnttabGrants => {
                u64::try_from(self.platform.as_ref()?.grants.lock().len()).unwrap_or(u64::MAX)
            }
            XenStat::Registrations => u64::try_from(self.regs.lock().len()).unwrap_or(u64::MAX),
            XenStat::OpenFiles => u64::try_from(self.files.lock().len()).unwrap_or(u64::MAX),
        })
    }
}

freebsd_kpi::kernel_module! {
    XenModule,
    load: xenrs_xen_load,
    quiesce: xenrs_xen_quiesce,
    unload: xenrs_xen_unload,
    stat: xenrs_xen_stat,
}

#[cfg(test)]
mod fake_kpi;
#[cfg(test)]
mod tests;
