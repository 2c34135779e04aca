//! blkback in the driver domain: the xen-blkback core (the one the FreeBSD module uses) as the
//! `vbd` driver of the driver domain's backend bus, serving RAM disks.
//!
//! The platform glue ([`GuestBackEnv`]): foreign mappings go into slots of the driver
//! domain's window ([`crate::dd::Slots`], viewed with [`arch::foreign_view`]); the core makes
//! the grant hypercalls itself. Copy pages come from the static page pool; event channels are
//! bound with `EVTCHNOP_bind_interdomain`, masked and polled by the main loop.
//!
//! The store: the toolstack's `params` = `ram:<N>M` (at most 16 MiB) names an in-memory disk
//! ([`MemStore`]: writable, with flush and discard) created at probe and dropped with the
//! device. Every device's negotiation and counters are kept after it goes away, for dom0's
//! report request (`data/dd-report`, see [`crate::dd`]).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

use xen_blkback::proto::Abi;
use xen_blkback::{
    Backend, BackendConfig, BackendEnv, BackendStats, Level, LocalPage, MemStore, Negotiated, Offer,
};
use xen_kmod::arch::XenPlatform;
use xen_kmod::{HypervisorExt, XenError};
use xen_shmem::SharedMem;
use xen_xenbus::{Bus, Device, Driver, Error as XsErr, XenbusState};

use crate::arch;
use crate::dd::{DdCtx, Round, Service, Slots};
use crate::events::Events;
use crate::pages::PagePool;
use crate::xs::GuestXs;

/// Largest RAM disk a device may ask for (MiB).
const MAX_RAM_MIB: u64 = 16;

/// The backend's platform in the driver domain.
#[derive(Debug, Clone)]
pub struct GuestBackEnv {
    ev: Events,
    pool: &'static PagePool,
    slots: &'static Slots,
}

impl BackendEnv<'static> for GuestBackEnv {
    type Hv = &'static XenPlatform;

    fn hypervisor(&self) -> &Self::Hv {
        &self.ev.hv
    }

    fn reserve_slots(&self, count: u32) -> Option<u64> {
        self.slots.reserve(count)
    }

    fn release_slots(&self, host_addr: u64, count: u32) {
        self.slots.release(host_addr, count);
    }

    fn view(&self, host_addr: u64, pages: u32) -> Option<SharedMem<'static>> {
        arch::foreign_view(host_addr, pages)
    }

    fn alloc_page(&self) -> Option<LocalPage<'static>> {
        let run = self.pool.alloc(1)?;
        Some(LocalPage {
            gfn: run.gfn,
            mem: run.mem,
        })
    }

    fn free_page(&self, page: LocalPage<'static>) {
        if let Some(run) = self.pool.run_of(page.gfn) {
            self.pool.free(&run);
        }
    }

    fn bind_interdomain(&self, remote_dom: u16, remote_port: u32) -> Result<u32, XenError> {
        let port = self
            .ev
            .hv
            .evtchn_bind_interdomain(remote_dom, remote_port)?;
        // Polled by the main loop, never delivered as an upcall.
        self.ev.mask(port);
        Ok(port)
    }

    fn notify(&self, port: u32) {
        let _ = self.ev.notify(port);
    }

    fn close_port(&self, port: u32) {
        let _ = self.ev.hv.evtchn_close(port);
    }

    fn log(&self, level: Level, msg: fmt::Arguments<'_>) {
        crate::log::e9_fmt(format_args!("blkback {level:?}: {msg}\n"));
    }
}

type Be = Backend<'static, GuestBackEnv, MemStore>;

/// What is kept about a device, live or gone.
#[derive(Debug, Clone, Default)]
struct Summary {
    offer: Option<Offer>,
    neg: Option<Negotiated>,
    stats: BackendStats,
    failure: Option<String>,
    sectors: u64,
    max_persistent: usize,
    /// Failures (the core stopped a connection), counted once per connection.
    failures: u32,
    /// The current connection has failed (so it is not counted twice).
    failed_now: bool,
    /// Connections of earlier backend devices for the same frontend device (a detach and
    /// re-attach makes a new device; its counters start again).
    earlier_connections: u64,
    /// How many backend devices served this frontend device.
    instances: u32,
}

struct Dev {
    be: Be,
    more: bool,
    summary: Summary,
}

impl Dev {
    fn update(&mut self) {
        let s = &mut self.summary;
        s.offer = self.be.offer().or(s.offer);
        s.neg = self.be.negotiated().or(s.neg);
        s.stats = self.be.stats();
        s.failure = self
            .be
            .failure()
            .map(ToString::to_string)
            .or(s.failure.take());
        s.max_persistent = s.max_persistent.max(self.be.persistent_grants());
        let failed = self.be.failure().is_some();
        if failed && !s.failed_now {
            s.failures += 1;
        }
        s.failed_now = failed;
    }
}

#[derive(Default)]
struct Shared {
    /// Devices on the bus, by backend directory.
    devs: BTreeMap<String, Dev>,
    /// Devices gone from the bus, by (frontend, id).
    gone: BTreeMap<(u16, String), Summary>,
}

/// `ram:<N>M` → sectors.
fn ram_sectors(params: &str) -> Option<u64> {
    let mib: u64 = params
        .strip_prefix("ram:")?
        .strip_suffix('M')?
        .parse()
        .ok()?;
    (1..=MAX_RAM_MIB).contains(&mib).then_some(mib * 2048)
}

/// The `vbd` driver of the bus.
struct BlkDriver {
    env: GuestBackEnv,
    shared: Rc<RefCell<Shared>>,
}

impl Driver<GuestXs> for BlkDriver {
    fn devtype(&self) -> &str {
        "vbd"
    }

    fn probe(&mut self, xs: &mut GuestXs, dev: &mut Device) -> Result<(), XsErr> {
        let mut be = Backend::new(self.env.clone(), BackendConfig::default());
        let mut sectors = 0;
        be.probe(xs, dev, |cfg| {
            sectors = ram_sectors(&cfg.params).ok_or(XsErr::BadValue)?;
            // Out of memory fails this device (the bus reports it), not the driver domain.
            MemStore::try_new(sectors).ok_or_else(|| {
                crate::e9!("dd-blk: no memory for a {} MiB RAM disk", sectors / 2048);
                XsErr::Busy
            })
        })?;
        let mut d = Dev {
            be,
            more: false,
            summary: Summary {
                sectors,
                instances: 1,
                ..Summary::default()
            },
        };
        d.update();
        self.shared
            .borrow_mut()
            .devs
            .insert(dev.nodename().to_string(), d);
        Ok(())
    }

    fn otherend_changed(
        &mut self,
        xs: &mut GuestXs,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        let mut sh = self.shared.borrow_mut();
        let d = sh.devs.get_mut(dev.nodename()).ok_or(XsErr::BadValue)?;
        let r = d.be.otherend_changed(xs, dev, state);
        d.update();
        if let Some(n) = d.summary.neg.filter(|_| state == XenbusState::Connected) {
            crate::e9!(
                "dd-blk: {} connected: {:?} queues {} ring-order {} persistent {}",
                dev.nodename(),
                n.abi,
                n.queues,
                n.ring_page_order,
                n.persistent
            );
        }
        r
    }

    fn remove(&mut self, xs: &mut GuestXs, dev: &mut Device) {
        let mut sh = self.shared.borrow_mut();
        if let Some(mut d) = sh.devs.remove(dev.nodename()) {
            d.be.remove(xs, dev);
            d.update();
            if d.be.is_connected() {
                crate::e9!(
                    "dd-blk: {} removed with {} request(s) in flight",
                    dev.nodename(),
                    d.be.in_flight()
                );
            }
            let key = (dev.otherend_id(), dev.id().to_string());
            let mut s = d.summary;
            if let Some(old) = sh.gone.get(&key) {
                s.earlier_connections = old.earlier_connections + old.stats.connections;
                s.instances = old.instances + 1;
            }
            let st = &s.stats;
            crate::e9!(
                "dd-blk: {} removed (device {} of this frontend device; {} connection(s) in all; this one {} req {}r {}w {}ind {} pmaps {} phits err {}), {} foreign slots mapped now",
                dev.nodename(),
                s.instances,
                s.earlier_connections + st.connections,
                st.requests,
                st.reads,
                st.writes,
                st.indirect,
                st.persistent_maps,
                st.persistent_hits,
                st.errors,
                self.env.slots.in_use()
            );
            sh.gone.insert(key, s);
            // The RAM disk goes with the core.
        }
    }
}

/// The service the main loop drives.
struct BlkService {
    shared: Rc<RefCell<Shared>>,
    slots: &'static Slots,
}

/// Registers the `vbd` driver on `bus` and returns its service.
pub fn start(ctx: &DdCtx, bus: &mut Bus<GuestXs>) -> Box<dyn Service> {
    let env = GuestBackEnv {
        ev: ctx.ev,
        pool: ctx.pool,
        slots: ctx.slots,
    };
    let shared = Rc::new(RefCell::new(Shared::default()));
    bus.register(Box::new(BlkDriver {
        env,
        shared: Rc::clone(&shared),
    }));
    Box::new(BlkService {
        shared,
        slots: ctx.slots,
    })
}

impl Service for BlkService {
    fn ports(&self) -> Vec<u32> {
        self.shared
            .borrow()
            .devs
            .values()
            .flat_map(|d| d.be.ports())
            .collect()
    }

    fn poll(&mut self, xs: &mut GuestXs, bus: &mut Bus<GuestXs>, pending: &[u32]) -> Round {
        let mut round = Round::default();
        let names: Vec<String> = self.shared.borrow().devs.keys().cloned().collect();
        for name in names {
            let control = {
                let mut sh = self.shared.borrow_mut();
                let Some(d) = sh.devs.get_mut(&name) else {
                    continue;
                };
                let hit = d.be.ports().iter().any(|p| pending.contains(p));
                if !(hit || d.more || d.be.control_pending()) {
                    continue;
                }
                // The RAM disk completes inside `submit`; the core collects those
                // completions in the same poll, so only its own `more` brings us back.
                let r = d.be.poll();
                d.more = r.more;
                d.update();
                round.any = true;
                round.more |= d.more;
                r.control || d.be.control_pending()
            };
            if control {
                let shared = Rc::clone(&self.shared);
                let _ = bus.with_device(xs, &name, |_, xs, dev| {
                    let mut sh = shared.borrow_mut();
                    if let Some(d) = sh.devs.get_mut(&name) {
                        let r = d.be.service_control(xs, dev);
                        d.update();
                        r
                    } else {
                        Ok(())
                    }
                });
            }
        }
        round
    }

    fn status(&self) -> String {
        let sh = self.shared.borrow();
        let devs: Vec<String> = sh
            .devs
            .iter()
            .map(|(n, d)| {
                let st = d.be.stats();
                format!(
                    "{} {}req {}inflight {}notif more {}",
                    n.rsplit_once("/vbd/").map_or(n.as_str(), |(_, t)| t),
                    st.requests,
                    d.be.in_flight(),
                    st.notifications,
                    d.more
                )
            })
            .collect();
        format!(
            "vbd: {} live, {} gone [{}]",
            sh.devs.len(),
            sh.gone.len(),
            devs.join(", ")
        )
    }

    fn report(
        &self,
        devtype: &str,
        fe: u16,
        id: &str,
        expect: &str,
    ) -> Option<Result<String, String>> {
        if devtype != "vbd" {
            return None;
        }
        let sh = self.shared.borrow();
        let summary = sh.gone.get(&(fe, id.to_string())).cloned().or_else(|| {
            sh.devs
                .iter()
                .find(|(n, _)| n.ends_with(&format!("/vbd/{fe}/{id}")))
                .map(|(_, d)| d.summary.clone())
        });
        let Some(s) = summary else {
            return Some(Err(format!("no vbd {fe}/{id} was ever probed")));
        };
        // What is still held: event channels of live vbds, foreign slots of every backend
        // (after a frontend is gone and its device removed, its share must be 0).
        let ports: usize = sh.devs.values().map(|d| d.be.ports().len()).sum();
        let held = format!(
            "; now {} live vbd(s), {ports} port(s), {} foreign slot(s) mapped",
            sh.devs.len(),
            self.slots.in_use()
        );
        Some(
            verdict(&s, expect)
                .map(|d| d + &held)
                .map_err(|e| e + &held),
        )
    }
}

/// The RESULT detail of one device: what was negotiated and what was served. `expect` =
/// `hostile`: the frontend attacked on purpose (scenario dd-hostile), see [`hostile_verdict`].
fn verdict(s: &Summary, expect: &str) -> Result<String, String> {
    if expect == "hostile" {
        return hostile_verdict(s);
    }
    let st = &s.stats;
    let Some(n) = s.neg else {
        return Err(format!(
            "never connected; failure {:?}",
            s.failure.as_deref().unwrap_or("none")
        ));
    };
    let o = s.offer.unwrap_or(Offer {
        max_ring_page_order: 0,
        max_queues: 0,
        max_indirect_segments: 0,
        persistent: false,
        flush: false,
        barrier: false,
        discard: None,
    });
    let proto = match n.abi {
        Abi::X86_32 => "x86_32-abi",
        Abi::X86_64 => "x86_64-abi",
    };
    let detail = format!(
        "{} MiB {proto} q{} order {} ({} entries) persist {} ({} max) indirect {} flush {} discard {}; {} req: {}r {}w {}f {}d {}ind; {} pmaps {} phits; err {} viol {}; {} conn over {} dev",
        s.sectors / 2048,
        n.queues,
        n.ring_page_order,
        n.ring_entries,
        u8::from(n.persistent),
        s.max_persistent,
        o.max_indirect_segments,
        u8::from(o.flush),
        u8::from(o.discard.is_some()),
        st.requests,
        st.reads,
        st.writes,
        st.flushes,
        st.discards,
        st.indirect,
        st.persistent_maps,
        st.persistent_hits,
        st.errors,
        st.violations,
        s.earlier_connections + st.connections,
        s.instances,
    );
    let mut problems = Vec::new();
    if expect != "-" && expect != proto {
        problems.push(format!("expected {expect}"));
    }
    if let Some(f) = &s.failure {
        problems.push(format!("failed: {f}"));
    }
    if st.errors + st.violations + st.map_failures + st.copy_failures + st.stuck > 0 {
        problems.push(format!(
            "{} map failures {} copy failures {} stuck",
            st.map_failures, st.copy_failures, st.stuck
        ));
    }
    if st.reads == 0 || st.writes == 0 {
        problems.push("no reads or no writes served".to_string());
    }
    if problems.is_empty() {
        Ok(detail)
    } else {
        Err(format!("{}; {detail}", problems.join(", ")))
    }
}

/// The RESULT detail of a device whose frontend attacked the backend (dd-hostile): passes
/// when the core stopped the connections it had to (at least one failure, with the last
/// reason) and left nothing stuck; the counters say what else it refused.
fn hostile_verdict(s: &Summary) -> Result<String, String> {
    let st = &s.stats;
    let last: String = s
        .failure
        .as_deref()
        .unwrap_or("none")
        .chars()
        .take(70)
        .collect();
    let line = format!(
        "{} failures in {} connections; {} req, viol {} err {} map-fail {} stuck {}; last: {last}",
        s.failures,
        st.connections,
        st.requests,
        st.violations,
        st.errors,
        st.map_failures,
        st.stuck
    );
    if s.failures == 0 {
        Err(format!("no failure reported; {line}"))
    } else if st.stuck > 0 {
        Err(format!("grant mappings stuck; {line}"))
    } else {
        Ok(line)
    }
}
