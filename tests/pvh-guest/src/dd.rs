//! The driver domain (`run=dd`): our backend cores serving other domains' frontends.
//!
//! After the common set-up (hypercall page, `shared_info`, console, xenstore, grant table),
//! the guest runs a xen-xenbus [`Bus`] in the **backend** role on its own
//! `/local/domain/<self>/backend`, with one driver per backend named in `dd=` (`blk`: the
//! xen-blkback core, [`crate::dd_blk`]; `net`: xen-netback, `crate::dd_net`). The toolstack
//! (dom0's `dd_attach_vbd`, as `xl` would) writes a device's backend and frontend directories;
//! the bus probes the driver, which negotiates with the frontend and serves its rings.
//!
//! What a backend needs from the platform, and how this guest provides it:
//! * **Foreign mappings**: `GNTTABOP_map_grant_ref` (done by the cores through `xen-gnttab`)
//!   into slots of a guest-physical window where we have no RAM
//!   ([`arch::FOREIGN_BASE`], [`Slots`]); a PVH guest's `host_addr` is a guest-physical
//!   address and Xen inserts the foreign frame into our p2m there. Mapping (rather than
//!   `GNTTABOP_copy` only) is what lets blkback offer persistent grants, as Linux's does.
//! * **Event channels**: `EVTCHNOP_bind_interdomain` to the frontend's unbound port; the port
//!   is masked and polled (`SCHEDOP_poll` sleeps on all of them and the store port), like the
//!   frontends of this guest.
//! * **Privileges**: none beyond a plain domU's. Xen lets any domain map or copy grants that
//!   were granted *to it* and bind to a port allocated for it; xenstore access is the
//!   permissions dom0 sets on the two directories.
//!
//! Control from dom0, through our own `data/` directory: we write `data/dd-ready` once the
//! bus runs; `data/dd-report` = `<scenario> <type> <fe> <devid> <expected protocol|->` asks
//! for the `RESULT <scenario>` line about that device (negotiated features and counters,
//! kept after the device is gone), answered with `data/dd-report-done` = the request;
//! `data/dd-stop` ends the service (the bus removes its devices) and the guest powers off.
//! Without a stop, it serves for at most [`SERVE_MS`].

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use xen_kmod::HypervisorExt;
use xen_xenbus::{Bus, Role, Store, WatchEvent, WatchId};

use crate::arch;
use crate::events::Events;
use crate::gnt::Gnttab;
use crate::pages::PagePool;
use crate::time::Deadline;
use crate::xs::GuestXs;

/// The longest the driver domain serves without being told to stop (ms).
pub const SERVE_MS: u64 = 900_000;
/// How long one idle sleep in `SCHEDOP_poll` lasts at most (ms).
const IDLE_MS: u64 = 100;
/// Interval of the status line on the debug port (ms).
const STATUS_MS: u64 = 10_000;

/// Slots of the foreign-mapping window, handed out in contiguous runs (first fit).
#[derive(Debug)]
pub struct Slots {
    used: RefCell<Vec<bool>>,
}

impl Slots {
    fn new() -> Slots {
        let n = usize::try_from(arch::FOREIGN_PAGES).unwrap_or(0);
        Slots {
            used: RefCell::new(alloc::vec![false; n]),
        }
    }

    /// `count` contiguous free slots: the guest-physical address of the first.
    pub fn reserve(&self, count: u32) -> Option<u64> {
        let n = usize::try_from(count).ok().filter(|&n| n > 0)?;
        let mut used = self.used.borrow_mut();
        let mut start = 0;
        while start + n <= used.len() {
            match used[start..start + n].iter().position(|&u| u) {
                Some(busy) => start += busy + 1,
                None => {
                    used[start..start + n].fill(true);
                    let first = u64::try_from(start).ok()?;
                    return Some(arch::FOREIGN_BASE + first * 4096);
                }
            }
        }
        None
    }

    /// Gives back `count` slots from `addr` (ignored outside the window).
    pub fn release(&self, addr: u64, count: u32) {
        let Some(first) = addr
            .checked_sub(arch::FOREIGN_BASE)
            .map(|o| o / 4096)
            .and_then(|f| usize::try_from(f).ok())
        else {
            return;
        };
        let n = usize::try_from(count).unwrap_or(0);
        if let Some(s) = self
            .used
            .borrow_mut()
            .get_mut(first..first.saturating_add(n))
        {
            s.fill(false);
        }
    }

    /// Slots in use.
    pub fn in_use(&self) -> usize {
        self.used.borrow().iter().filter(|&&u| u).count()
    }
}

/// What every backend of the driver domain shares.
#[derive(Debug, Clone, Copy)]
pub struct DdCtx {
    /// Hypervisor and `shared_info`.
    pub ev: Events,
    /// Our grant table (for backends that grant pages of their own).
    pub gt: &'static Gnttab,
    /// Pages of our own (copy buffers, rings we grant).
    pub pool: &'static PagePool,
    /// The foreign-mapping window.
    pub slots: &'static Slots,
    /// Our domain id.
    pub domid: u16,
}

/// One round of a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct Round {
    /// Something was done.
    pub any: bool,
    /// Work is left: come back without sleeping.
    pub more: bool,
}

/// A backend of the driver domain: it registered its xenbus driver on the bus and serves the
/// data path of its devices from the main loop.
pub trait Service {
    /// The local event-channel ports it waits on.
    fn ports(&self) -> Vec<u32>;

    /// Serves its devices; `pending` are the ports that had an event since the last round.
    fn poll(&mut self, xs: &mut GuestXs, bus: &mut Bus<GuestXs>, pending: &[u32]) -> Round;

    /// A watch event that is not the bus's: whether it was this service's.
    fn on_watch(
        &mut self,
        _xs: &mut GuestXs,
        _bus: &mut Bus<GuestXs>,
        _id: WatchId,
        _ev: &WatchEvent,
    ) -> bool {
        false
    }

    /// One line about its devices for the periodic status line.
    fn status(&self) -> String {
        String::new()
    }

    /// The verdict about device `devtype/fe/id` (`None`: not this service's type), `expect`
    /// being the protocol dom0 expects it to have negotiated (`-`: any).
    fn report(
        &self,
        devtype: &str,
        fe: u16,
        id: &str,
        expect: &str,
    ) -> Option<Result<String, String>>;
}

/// Runs the driver domain until `data/dd-stop` (or [`SERVE_MS`]); each `RESULT` goes to
/// `report`. Returns an error for a set-up failure.
///
/// # Errors
/// The bus or the control watches could not be set up.
pub fn run(
    ev: Events,
    xs: &mut GuestXs,
    gt: &'static Gnttab,
    domid: u16,
    backends: &str,
    report: &mut dyn FnMut(&str, Result<String, String>),
) -> Result<String, String> {
    // Serving for minutes, freeing in any order, RAM disks: the heap moves to size classes
    // over the RAM above the image.
    let (heap_at, heap_len) =
        arch::heap_reuse().ok_or("no RAM above the image for the driver domain's heap")?;
    crate::e9!(
        "dd: heap: size classes over {heap_at:#x}+{} MiB",
        heap_len >> 20
    );
    let pool: &'static PagePool = Box::leak(Box::new(PagePool::new()));
    let slots: &'static Slots = Box::leak(Box::new(Slots::new()));
    let ctx = DdCtx {
        ev,
        gt,
        pool,
        slots,
        domid,
    };
    let mut bus: Bus<GuestXs> = Bus::new(Role::Backend, domid);
    let mut services: Vec<Box<dyn Service>> = Vec::new();
    let mut started = Vec::new();
    for name in backends.split(',').filter(|n| !n.is_empty()) {
        match name {
            "blk" => services.push(crate::dd_blk::start(&ctx, &mut bus)),
            "net" => services.push(crate::dd_net::start(&ctx, xs, &mut bus)),
            _ => {
                crate::e9!("dd: backend `{name}` is not built into this guest; skipped");
                continue;
            }
        }
        started.push(name);
    }
    let data = format!("/local/domain/{domid}/data");
    let stop_path = format!("{data}/dd-stop");
    let report_path = format!("{data}/dd-report");
    let w_stop = xs.watch(&stop_path).map_err(|e| format!("watch: {e}"))?;
    let w_report = xs.watch(&report_path).map_err(|e| format!("watch: {e}"))?;
    bus.start(xs).map_err(|e| format!("bus start: {e}"))?;
    let names = started.join(",");
    xs.write_str("data/dd-ready", &names)
        .map_err(|e| format!("write data/dd-ready: {e}"))?;
    crate::e9!(
        "dd: d{} serving {names} on {} (grant table {} frame(s), foreign window {:#x}, {} slots)",
        ctx.domid,
        bus.root(),
        ctx.gt.nr_frames(),
        arch::FOREIGN_BASE,
        arch::FOREIGN_PAGES
    );

    let store_port = xs.transport().port().number();
    let deadline = Deadline::after_ms(&ev.si, SERVE_MS);
    let mut last_request = String::new();
    let mut rounds: u64 = 0;
    let mut sleeps: u64 = 0;
    let mut status_at = Deadline::after_ms(&ev.si, STATUS_MS);
    let mut stop = false;
    let outcome = loop {
        rounds += 1;
        let mut any = false;
        // Clear the store port's pending bit before looking at the ring: an event after this
        // point wakes the next SCHEDOP_poll.
        ev.take_pending(store_port);
        loop {
            let next = match xs.poll_event() {
                Ok(n) => n,
                Err(_) => break,
            };
            let Some((id, wev)) = next else { break };
            any = true;
            if bus.handle_event(xs, id, &wev) {
                continue;
            }
            if id == w_stop {
                stop |= matches!(xs.try_read(&stop_path), Ok(Some(_)));
            } else if id == w_report {
                if let Ok(Some(req)) = xs.try_read(&report_path) {
                    let req = String::from_utf8_lossy(&req).into_owned();
                    if req != last_request {
                        answer(&services, &req, report);
                        let _ = xs.write_str("data/dd-report-done", &req);
                        last_request = req;
                    }
                }
            } else {
                for s in &mut services {
                    if s.on_watch(xs, &mut bus, id, &wev) {
                        break;
                    }
                }
            }
        }
        let mut ports: Vec<u32> = services.iter().flat_map(|s| s.ports()).collect();
        let pending: Vec<u32> = ports
            .iter()
            .copied()
            .filter(|&p| ev.take_pending(p))
            .collect();
        let mut more = false;
        for s in &mut services {
            let r = s.poll(xs, &mut bus, &pending);
            any |= r.any;
            more |= r.more;
        }
        if stop {
            break Ok(format!("stopped by dom0 after {rounds} rounds"));
        }
        if deadline.passed(&ev.si) {
            break Err(format!("no data/dd-stop within {} s", SERVE_MS / 1000));
        }
        if status_at.passed(&ev.si) {
            status_at = Deadline::after_ms(&ev.si, STATUS_MS);
            let lines: Vec<String> = services.iter().map(|s| s.status()).collect();
            crate::e9!(
                "dd: {rounds} rounds, {sleeps} sleeps, ports {ports:?}; {}",
                lines.join("; ")
            );
        }
        if !any && !more {
            sleeps += 1;
            ports.push(store_port);
            let _ = ev
                .hv
                .sched_poll(&ports, Deadline::after_ms(&ev.si, IDLE_MS).at());
        }
    };
    bus.stop(xs);
    let _ = xs.unwatch(w_stop);
    let _ = xs.unwatch(w_report);
    outcome.map(|s| format!("{s}; {} foreign slots still mapped", slots.in_use()))
}

/// Answers one `data/dd-report` request.
fn answer(
    services: &[Box<dyn Service>],
    req: &str,
    report: &mut dyn FnMut(&str, Result<String, String>),
) {
    let words: Vec<&str> = req.split_ascii_whitespace().collect();
    let [name, devtype, fe, id, expect] = words.as_slice() else {
        report("dd-report", Err(format!("malformed request {req:?}")));
        return;
    };
    let Ok(fe) = fe.parse::<u16>() else {
        report(name, Err(format!("bad frontend id in {req:?}")));
        return;
    };
    let verdict = services
        .iter()
        .find_map(|s| s.report(devtype, fe, id, expect))
        .unwrap_or_else(|| Err(format!("no {devtype} backend in this driver domain")));
    report(name, verdict);
}
