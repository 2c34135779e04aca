//! A bare-metal PVH guest that runs the project's cores on a real Xen.
//!
//! Booted by `xl create` (type `pvh`), it drives the same crates the FreeBSD modules use —
//! `xen-kmod` (CPUID detection, hypercall page, typed hypercalls, `shared_info`, HVM params),
//! `xen-ring` (console and xenstore interface rings), `xen-xenbus` (xenstore client) — with only
//! the platform glue (`arch`) differing, and prints one machine-checkable line per check:
//!
//! ```text
//! RESULT <name> PASS|FAIL <detail>
//! ```
//!
//! on Xen's debug port (the harness reads them from Xen's serial console as `(dN)` lines) and
//! on the PV console. The command line (`cmdline=` in the xl config) says what to do:
//! `run=basic` (every check, then `SCHEDOP_shutdown(poweroff)`) or `run=busy` (set up, then
//! keep the console and xenstore busy until the toolstack destroys the domain; `run=blk`,
//! `run=net`, `run=dd` and `run=bench` are in their modules), plus
//! `name=` (the xl name, checked against xenstore) and `nonce=` (a token dom0 looks for).
//!
//! Nothing here trusts a hypervisor- or toolstack-provided value enough to panic on it: every
//! failure becomes a `FAIL` line.
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod bench;
mod blk;
mod console;
mod dd;
mod dd_blk;
mod dd_net;
mod events;
mod gnt;
mod log;
mod net;
mod pages;
mod time;
mod upcall;
mod xs;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use core::fmt;

use xen_kmod::arch::cpuid::XenCpuid;
use xen_kmod::arch::XenPlatform;
use xen_kmod::shared::{SharedInfo, SharedInfoMapping};
use xen_kmod::HypervisorExt;
use xen_shmem::{Page, SharedMem};
use xen_xenbus::Store;

use crate::console::Console;
use crate::events::Events;
use crate::time::Deadline;
use crate::xs::GuestXs;

/// The frame Xen's `shared_info` is mapped over (`XENMEM_add_to_physmap`).
static SHARED_INFO_PAGE: Page = Page::new();

/// Our `shared_info` (valid once mapped; zeroes before).
pub fn shared_info() -> SharedInfo<'static> {
    let mem = SharedMem::from_pages(core::slice::from_ref(&SHARED_INFO_PAGE));
    // A whole page always holds shared_info, 4096-aligned: cannot fail.
    match SharedInfo::new(mem) {
        Ok(si) => si,
        Err(_) => arch::fatal(),
    }
}

/// The value of `key=` on the command line.
fn arg<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Longest line Xen prints for the debug port in one piece (its buffer is 200 bytes).
const MAX_DEBUG_LINE: usize = 198;

struct Guest {
    ev: Events,
    console: Option<Console>,
    failures: u32,
}

impl Guest {
    fn report(&mut self, name: &str, pass: bool, detail: fmt::Arguments<'_>) {
        let verdict = if pass { "PASS" } else { "FAIL" };
        let line = format!("RESULT {name} {verdict} {detail}\n");
        // Xen prints debug-port output in lines of at most 199 bytes (DOMAIN_PBUF_SIZE):
        // keep the machine-read line within one.
        let mut cut = line.len().min(MAX_DEBUG_LINE);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        arch::debug_write(line[..cut].trim_end().as_bytes());
        arch::debug_write(b"\n");
        if let Some(c) = &mut self.console {
            let _ = c.write(&self.ev, line.as_bytes(), 2000);
        }
        if !pass {
            self.failures += 1;
        }
    }

    fn say(&mut self, text: &str) {
        arch::debug_write(text.as_bytes());
        if let Some(c) = &mut self.console {
            let _ = c.write(&self.ev, text.as_bytes(), 2000);
        }
    }

    fn shutdown(&mut self, reason: u32) -> ! {
        e9!("DONE failures={} shutdown reason {reason}", self.failures);
        if let Some(c) = &mut self.console {
            let _ = c.drain(&self.ev, 2000);
        }
        let r = self.ev.hv.sched_shutdown(reason);
        self.report(
            "shutdown",
            false,
            format_args!("SCHEDOP_shutdown returned {r:?}"),
        );
        arch::halt_forever()
    }
}

/// Boot checks: Xen found by CPUID, hypercall page installed, the version through a hypercall
/// matches CPUID, `shared_info` mapped and the clock running.
fn boot(si_info: &arch::StartInfo) -> (XenCpuid, &'static XenPlatform, Events) {
    let Some((xen, vendor)) = XenPlatform::detect() else {
        e9!("RESULT boot FAIL no Xen CPUID signature");
        arch::halt_forever()
    };
    let hv = match arch::install_hypercall_page(&xen) {
        Ok(hv) => hv,
        Err(e) => {
            e9!("RESULT boot FAIL hypercall page: {e}");
            arch::halt_forever()
        }
    };
    let hv: &'static XenPlatform = Box::leak(Box::new(hv));
    let version = hv.xen_version_numbers();
    let (extra, extra_len) = hv.xen_extraversion().unwrap_or(([0; 16], 0));
    let extra = core::str::from_utf8(&extra[..extra_len]).unwrap_or("?");
    let features = hv.xen_features(0);
    let gpfn = arch::gpfn_of(core::ptr::from_ref(&SHARED_INFO_PAGE).cast());
    let mapped = SharedInfoMapping { gpfn }.map(hv);
    let si = shared_info();
    let ev = Events { hv, si };
    let now = time::now_ns(&si);
    let wall = si.wallclock(100);
    let ok = version == Ok((xen.major, xen.minor)) && mapped.is_ok() && now.is_some_and(|t| t > 0);
    let mut g = Guest {
        ev,
        console: None,
        failures: 0,
    };
    let detail = format!(
        "xen {}.{}{extra} via hypercall page (cpuid {:#x} {vendor:?}); start_info v{}; features {:#x}; shared_info gpfn {gpfn:#x}{}; time {} ms; wallclock {}",
        version.map_or(0, |v| v.0),
        version.map_or(0, |v| v.1),
        xen.base,
        si_info.version,
        features.unwrap_or(0),
        if mapped.is_ok() { "" } else { " NOT MAPPED" },
        now.unwrap_or(0) / 1_000_000,
        wall.map_or(0, |w| w.0),
    );
    g.report("boot", ok, format_args!("{detail}"));
    if !ok {
        g.shutdown(xen_sys::native::SHUTDOWN_crash);
    }
    (xen, hv, ev)
}

/// Console check: attach the ring, write a line with the nonce, wait for the backend to
/// consume it. Dom0 then finds the line in xenconsoled's log.
fn console(g: &mut Guest, nonce: &str) {
    match Console::attach(&g.ev) {
        Ok(c) => {
            let (pfn, port) = (c.pfn(), c.port());
            g.console = Some(c);
            let line = format!("pvh-guest {} console ring nonce={nonce}\n", arch::ARCH);
            g.say(&line);
            let Some(c) = g.console.as_mut() else { return };
            let drained = c.drain(&g.ev, 10_000);
            let written = c.written();
            g.report(
                "console",
                drained.is_ok(),
                format_args!(
                    "ring pfn {pfn:#x} port {port}: {written} bytes written, consumed: {drained:?}"
                ),
            );
        }
        Err(e) => g.report("console", false, format_args!("attach: {e:?}")),
    }
}

/// xenstore check: read our `domid` and `name` (relative paths), write and read back a key
/// under `data/`, then wait for dom0 to copy it to `data/pvh-ack` (a round trip through
/// `xenstore-read`/`xenstore-write` in dom0).
fn xenstore(g: &mut Guest, xs: &mut GuestXs, name: &str, nonce: &str) -> Option<u64> {
    let r = (|| -> Result<(u64, String), String> {
        let domid = xs
            .read_u64("domid")
            .map_err(|e| format!("read domid: {e}"))?;
        let got = xs
            .read_string("name")
            .map_err(|e| format!("read name: {e}"))?;
        if got != name {
            return Err(format!("name is {got:?}, expected {name:?}"));
        }
        let home = format!("/local/domain/{domid}");
        xs.write_str("data/pvh-test", nonce)
            .map_err(|e| format!("write data/pvh-test: {e}"))?;
        let back = xs
            .read_string(&format!("{home}/data/pvh-test"))
            .map_err(|e| format!("read back: {e}"))?;
        if back != nonce {
            return Err(format!("read back {back:?}, wrote {nonce:?}"));
        }
        let ack_path = format!("{home}/data/pvh-ack");
        let w = xs.watch(&ack_path).map_err(|e| format!("watch: {e}"))?;
        let deadline = Deadline::after_ms(&g.ev.si, 60_000);
        let outcome = loop {
            match xs.try_read(&ack_path) {
                Ok(Some(v)) if v == nonce.as_bytes() => break Ok(()),
                Ok(Some(v)) => {
                    break Err(format!(
                        "dom0 ack {:?} != nonce",
                        String::from_utf8_lossy(&v)
                    ))
                }
                Ok(None) => {}
                Err(e) => break Err(format!("read ack: {e}")),
            }
            if deadline.passed(&g.ev.si) {
                break Err(String::from("no ack from dom0 within 60 s"));
            }
            match xs.wait_event(Some(w)) {
                Ok(_) | Err(xen_xenbus::Error::Transport(xen_xenbus::TransportError::TimedOut)) => {
                }
                Err(e) => break Err(format!("watch event: {e}")),
            }
        };
        let _ = xs.unwatch(w);
        outcome?;
        Ok((domid, got))
    })();
    let port = xs.transport().port().number();
    match r {
        Ok((domid, got)) => {
            g.report(
                "xenstore",
                true,
                format_args!("domid {domid} name {got} (store port {port}): data/pvh-test written, read back, acked by dom0"),
            );
            Some(domid)
        }
        Err(e) => {
            g.report("xenstore", false, format_args!("{e}"));
            None
        }
    }
}

/// `run=busy`: keep the console and xenstore busy until destroyed (at most 120 s); with
/// `busy=blk`, the disk instead ([`blk::busy`]).
fn busy(g: &mut Guest, xs: &mut GuestXs, blk: Option<(&'static gnt::Gnttab, u16, &str)>) -> ! {
    if let Some((gt, domid, nonce)) = blk {
        e9!("busy: disk I/O until destroyed");
        let ev = g.ev;
        match blk::busy(ev, xs, gt, domid, nonce) {
            Ok(n) => g.report(
                "busy",
                false,
                format_args!("still running after 120 s ({n} rounds of disk I/O): not destroyed"),
            ),
            Err(e) => {
                let _ = xs.write_str("data/pvh-busy", &format!("FAIL: {e}"));
                g.report("busy", false, format_args!("disk I/O: {e}"));
            }
        }
        g.shutdown(xen_sys::native::SHUTDOWN_poweroff)
    }
    if let Err(e) = xs.write_str("data/pvh-busy", "1") {
        g.report("busy", false, format_args!("write data/pvh-busy: {e}"));
        g.shutdown(xen_sys::native::SHUTDOWN_crash);
    }
    e9!("busy: console and xenstore I/O until destroyed");
    let deadline = Deadline::after_ms(&g.ev.si, 120_000);
    let mut n: u64 = 0;
    while !deadline.passed(&g.ev.si) {
        n += 1;
        let _ = xs.write_str("data/pvh-counter", &format!("{n}"));
        if let Some(c) = &mut g.console {
            let _ = c.write(&g.ev, format!("busy {n}\n").as_bytes(), 1000);
        }
    }
    g.report(
        "busy",
        false,
        format_args!("still running after 120 s ({n} rounds): not destroyed"),
    );
    g.shutdown(xen_sys::native::SHUTDOWN_poweroff)
}

/// Entered from `arch` with the validated start info.
pub fn guest_main(si: &arch::StartInfo) -> ! {
    arch::install_idt();
    e9!("pvh-guest {}: cmdline {:?}", arch::ARCH, si.cmdline);
    let run = arg(si.cmdline, "run").unwrap_or("basic");
    let name = arg(si.cmdline, "name").unwrap_or("");
    let nonce = arg(si.cmdline, "nonce").unwrap_or("none");

    let (xen, _hv, ev) = boot(si);
    let mut g = Guest {
        ev,
        console: None,
        failures: 0,
    };
    console(&mut g, nonce);
    let mut xs = match xs::connect(ev) {
        Ok(xs) => xs,
        Err(e) => {
            g.report("xenstore", false, format_args!("connect: {e:?}"));
            g.shutdown(xen_sys::native::SHUTDOWN_crash)
        }
    };
    let domid = xenstore(&mut g, &mut xs, name, nonce);
    let gt = match gnt::setup(g.ev.hv) {
        Ok(gt) => Some(gt),
        Err(e) => {
            g.report("gnttab", false, format_args!("{e}"));
            None
        }
    };
    if let (Some(gt), Some(domid)) = (&gt, domid) {
        match u16::try_from(domid)
            .map_err(|_| format!("domid {domid} out of range"))
            .and_then(|d| gnt::self_copy(gt, d))
        {
            Ok(detail) => g.report("gnttab", true, format_args!("{detail}")),
            Err(e) => g.report("gnttab", false, format_args!("{e}")),
        }
    }
    if run == "busy" {
        let blk = match (arg(si.cmdline, "busy"), &gt, domid) {
            (Some("blk"), Some(_), Some(d)) => u16::try_from(d).ok(),
            _ => None,
        };
        let gt: Option<&'static gnt::Gnttab> = gt.map(|gt| &*Box::leak(Box::new(gt)));
        busy(&mut g, &mut xs, blk.zip(gt).map(|(d, gt)| (gt, d, nonce)));
    }
    if run == "dd" {
        let backends = arg(si.cmdline, "dd").unwrap_or("blk");
        let gt: Option<&'static gnt::Gnttab> = gt.map(|gt| &*Box::leak(Box::new(gt)));
        match (gt, domid.and_then(|d| u16::try_from(d).ok())) {
            (Some(gt), Some(domid)) => {
                let ev = g.ev;
                let mut failed = false;
                let r = {
                    let mut report = |name: &str, r: Result<String, String>| match r {
                        Ok(detail) => g.report(name, true, format_args!("{detail}")),
                        Err(e) => g.report(name, false, format_args!("{e}")),
                    };
                    dd::run(ev, &mut xs, gt, domid, backends, &mut report)
                };
                match r {
                    Ok(detail) => e9!("dd: {detail}"),
                    Err(e) => {
                        failed = true;
                        g.report("dd", false, format_args!("{e}"));
                    }
                }
                if failed {
                    let _ = xs.write_str("data/dd-ready", "FAIL");
                }
            }
            _ => g.report("dd", false, format_args!("no grant table or domid")),
        }
        g.shutdown(xen_sys::native::SHUTDOWN_poweroff)
    }
    if run == "bench" {
        let gt: Option<&'static gnt::Gnttab> = gt.map(|gt| &*Box::leak(Box::new(gt)));
        let r = match (gt, domid.and_then(|d| u16::try_from(d).ok())) {
            (Some(gt), Some(domid)) => {
                let ev = g.ev;
                let sizes = bench::Sizes::parse(si.cmdline);
                let mut say = |line: &str| g.say(line);
                bench::run(ev, &mut xs, gt, domid, sizes, &mut say)
            }
            _ => Err(String::from("no grant table or domid")),
        };
        match r {
            Ok(detail) => g.report("bench", true, format_args!("{detail}")),
            Err(e) => g.report("bench", false, format_args!("{e}")),
        }
        g.shutdown(xen_sys::native::SHUTDOWN_poweroff)
    }
    if run == "blk" || run == "net" {
        let gt: Option<&'static gnt::Gnttab> = gt.map(|gt| &*Box::leak(Box::new(gt)));
        match (gt, domid.and_then(|d| u16::try_from(d).ok())) {
            (Some(gt), Some(domid)) => {
                let ev = g.ev;
                // Each driver reports its scenarios (and tells dom0 when it failed).
                let mut report = |name: &str, r: Result<String, String>| match r {
                    Ok(detail) => g.report(name, true, format_args!("{detail}")),
                    Err(e) => g.report(name, false, format_args!("{e}")),
                };
                if run == "blk" {
                    let once = arg(si.cmdline, "blk") == Some("once");
                    blk::run(ev, &mut xs, gt, domid, nonce, once, &mut report);
                } else {
                    net::run(ev, &mut xs, gt, domid, nonce, &mut report);
                }
            }
            _ => g.report(run, false, format_args!("no grant table or domid")),
        }
        g.shutdown(xen_sys::native::SHUTDOWN_poweroff)
    }
    match upcall::run(&g.ev, &xen) {
        Ok(detail) => g.report("upcall", true, format_args!("{detail}")),
        Err(e) => g.report("upcall", false, format_args!("{e}")),
    }
    g.say(&format!("pvh-guest {}: powering off\n", arch::ARCH));
    g.shutdown(xen_sys::native::SHUTDOWN_poweroff)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    e9!("PANIC: {info}");
    arch::fatal()
}
