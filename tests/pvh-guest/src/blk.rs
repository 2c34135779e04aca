//! The block frontend (xen-blkfront) against Linux dom0's xen-blkback.
//!
//! The same core the `xbd` module uses, driven the way the FreeBSD glue drives it: a xenbus
//! [`Bus`] (frontend role) with the frontend registered as its `vbd` driver, watch events
//! dispatched to the bus, the queues' event channels polled, and bios submitted split-phase.
//! Only the platform differs: grants from [`crate::gnt::Gnttab`], pages from a static pool,
//! event channels masked and waited on with `SCHEDOP_poll`.
//!
//! The check: connect, write a pattern dom0 can recognise (every 512-byte sector starts with
//! `PVHBLK <nonce> <sector>`), read it back through the ring and compare, publish the negotiated
//! features in `data/pvh-blk`, and wait for dom0's ack (dom0 then verifies the bytes on its
//! RAM disk after the guest is gone).

use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::fmt;

use xen_blkback::env::Level;
use xen_blkfront::{Bio, BioOp, BufSeg, Frontend, FrontendConfig, FrontendEnv, PageRun};
use xen_gnttab::{GrantError, GrantRef, Revoke, StillInUse};
use xen_kmod::{HypervisorExt, XenError};
use xen_xenbus::{Bus, Device, Driver, Error as XsErr, Role, Store, XenbusState};

use crate::events::Events;
use crate::gnt::Gnttab;
use crate::pages::PagePool;
use crate::time::Deadline;
use crate::xs::GuestXs;

/// The frontend's platform in this guest.
#[derive(Debug, Clone)]
pub struct GuestFrontEnv {
    gt: &'static Gnttab,
    ev: Events,
    pool: &'static PagePool,
    errors: Rc<Cell<u32>>,
}

impl FrontendEnv<'static> for GuestFrontEnv {
    fn grant(&self, domid: u16, gfn: u64, readonly: bool) -> Result<GrantRef, GrantError> {
        self.gt.grant(domid, gfn, readonly)
    }

    fn end_access(&self, r: &GrantRef) -> Result<(), StillInUse> {
        self.gt.end_access(r)
    }

    fn revoke(&self, r: GrantRef) -> Revoke {
        self.gt.revoke(r)
    }

    fn alloc_pages(&self, count: u32) -> Option<PageRun<'static>> {
        self.pool.alloc(count)
    }

    fn free_pages(&self, run: PageRun<'static>) {
        self.pool.free(&run);
    }

    fn alloc_unbound(&self, remote: u16) -> Result<u32, XenError> {
        let port = self.ev.hv.evtchn_alloc_unbound(remote)?;
        // Polled, never delivered as an upcall.
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
        if level == Level::Error {
            self.errors.set(self.errors.get() + 1);
        }
        crate::log::e9_fmt(format_args!("blkfront {level:?}: {msg}\n"));
    }
}

type Fe = Frontend<'static, GuestFrontEnv>;

/// The frontend as the bus's `vbd` driver. Each probe after the first (the disk was detached
/// and attached again) starts a fresh frontend core.
struct FrontDriver {
    fe: Rc<RefCell<Fe>>,
    env: GuestFrontEnv,
    probes: Rc<Cell<u32>>,
    removes: Rc<Cell<u32>>,
}

impl Driver<GuestXs> for FrontDriver {
    fn devtype(&self) -> &str {
        "vbd"
    }

    fn probe(&mut self, xs: &mut GuestXs, dev: &mut Device) -> Result<(), XsErr> {
        if self.probes.get() > 0 {
            *self.fe.borrow_mut() = Frontend::new(self.env.clone(), FrontendConfig::default());
        }
        self.probes.set(self.probes.get() + 1);
        self.fe.borrow_mut().probe(xs, dev)
    }

    fn otherend_changed(
        &mut self,
        xs: &mut GuestXs,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        self.fe.borrow_mut().otherend_changed(xs, dev, state)
    }

    fn remove(&mut self, xs: &mut GuestXs, dev: &mut Device) {
        self.fe.borrow_mut().remove(xs, dev);
        self.removes.set(self.removes.get() + 1);
    }
}

/// A frontend on its bus, stepped by its user (the checks here, `bench.rs`).
pub(crate) struct Driving<'x> {
    ev: Events,
    xs: &'x mut GuestXs,
    bus: Bus<GuestXs>,
    pub(crate) fe: Rc<RefCell<Fe>>,
    more: bool,
    store_port: u32,
}

impl Driving<'_> {
    fn nodename(&self) -> Option<String> {
        self.bus.devices().next().map(|d| d.nodename().to_string())
    }

    /// One round: watch events, then the queues; whether anything happened.
    fn step(&mut self) -> Result<bool, String> {
        let mut any = false;
        while let Some((id, ev)) = self.xs.poll_event().map_err(|e| format!("xenstore: {e}"))? {
            any = true;
            if !self.bus.handle_event(self.xs, id, &ev) {
                if let Some(name) = self.nodename() {
                    let fe = Rc::clone(&self.fe);
                    let _ = self.bus.with_device(self.xs, &name, |_, xs, dev| {
                        fe.borrow_mut().on_watch(xs, dev, id)
                    });
                }
            }
        }
        let ports = self.fe.borrow().ports();
        let pending = ports
            .iter()
            .fold(false, |acc, &p| self.ev.take_pending(p) | acc);
        if pending || self.more {
            let r = self.fe.borrow_mut().poll();
            self.more = r.more;
            any = true;
            if r.control {
                if let Some(name) = self.nodename() {
                    let fe = Rc::clone(&self.fe);
                    let _ = self.bus.with_device(self.xs, &name, |_, xs, dev| {
                        fe.borrow_mut().service_control(xs, dev)
                    });
                }
            }
        }
        Ok(any)
    }

    /// Steps until `done` or the deadline; sleeps in `SCHEDOP_poll` on the store and queue
    /// ports when nothing happened.
    pub(crate) fn run_until(
        &mut self,
        ms: u64,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> Result<(), String> {
        let deadline = Deadline::after_ms(&self.ev.si, ms);
        loop {
            let any = self.step()?;
            if done(self) {
                return Ok(());
            }
            if let Some(f) = self.fe.borrow().failure() {
                return Err(format!("frontend failed: {f}"));
            }
            if deadline.passed(&self.ev.si) {
                return Err(format!("timed out after {ms} ms"));
            }
            if !any {
                let mut ports = self.fe.borrow().ports();
                ports.push(self.store_port);
                let _ = self
                    .ev
                    .hv
                    .sched_poll(&ports, Deadline::after_ms(&self.ev.si, 20).at());
            }
        }
    }

    /// Submits one bio and drives until its completion.
    pub(crate) fn io(&mut self, bio: Bio<'static>) -> Result<Bio<'static>, String> {
        self.fe
            .borrow_mut()
            .submit(bio)
            .map_err(|(_, e)| format!("submit: {e}"))?;
        let mut done = None;
        self.run_until(30_000, |d| {
            done = d.fe.borrow_mut().pop_completion();
            done.is_some()
        })?;
        let c = done.ok_or("no completion")?;
        c.result.map_err(|e| format!("bio failed: {e}"))?;
        Ok(c.bio)
    }
}

/// The sector image dom0 checks for: `PVHBLK <nonce> <sector, 6 digits>\n`, dots, `\n`.
fn sector_image(nonce: &str, sector: u64) -> [u8; 512] {
    let mut s = [b'.'; 512];
    let head = format!("PVHBLK {nonce} {sector:06}\n");
    let n = head.len().min(511);
    s[..n].copy_from_slice(&head.as_bytes()[..n]);
    s[511] = b'\n';
    s
}

/// Pages for a bio of `pages` pages, filled from `fill(page index) -> 4096 bytes`.
pub(crate) fn buffer(
    env: &GuestFrontEnv,
    pages: u32,
) -> Result<(PageRun<'static>, Vec<BufSeg<'static>>), String> {
    let run = env.pool.alloc(pages).ok_or("page pool exhausted")?;
    let mut segs = Vec::new();
    for i in 0..pages {
        let off = usize::try_from(i).unwrap_or(0) * 4096;
        let page = run.mem.subrange(off, 4096).map_err(|e| format!("{e:?}"))?;
        segs.push(BufSeg {
            gfn: run.gfn + u64::from(i),
            page,
            offset: 0,
            len: 4096,
        });
    }
    Ok((run, segs))
}

/// Writes `PAGES` pages of the pattern at `first_sector`, reads them back, compares.
fn write_and_verify(
    d: &mut Driving<'_>,
    nonce: &str,
    first_sector: u64,
    tag: u64,
) -> Result<(), String> {
    let (wrun, wsegs) = buffer(d.fe.borrow().env(), PAGES)?;
    for s in 0..u64::from(PAGES) * 8 {
        let off = usize::try_from(s).unwrap_or(0) * 512;
        let _ = wrun
            .mem
            .copy_from_slice(off, &sector_image(nonce, first_sector + s));
    }
    let wbio = d.io(Bio::new(BioOp::Write, first_sector, wsegs, tag))?;
    drop(wbio);
    let result = read_and_compare(d, &wrun, first_sector, tag + 1);
    d.fe.borrow().env().pool.free(&wrun);
    result
}

/// Reads `PAGES` pages at `first_sector` and compares them with `expected`.
fn read_and_compare(
    d: &mut Driving<'_>,
    expected: &PageRun<'static>,
    first_sector: u64,
    tag: u64,
) -> Result<(), String> {
    let (rrun, rsegs) = buffer(d.fe.borrow().env(), PAGES)?;
    let rbio = d.io(Bio::new(BioOp::Read, first_sector, rsegs, tag))?;
    drop(rbio);
    let len = usize::try_from(PAGES).unwrap_or(0) * 4096;
    let mut want = alloc::vec![0u8; len];
    let mut got = alloc::vec![0u8; len];
    expected
        .mem
        .copy_to_slice(0, &mut want)
        .map_err(|e| format!("{e:?}"))?;
    rrun.mem
        .copy_to_slice(0, &mut got)
        .map_err(|e| format!("{e:?}"))?;
    d.fe.borrow().env().pool.free(&rrun);
    if want != got {
        let at = want.iter().zip(&got).position(|(a, b)| a != b);
        return Err(format!(
            "read back at sector {first_sector} differs at byte {at:?}"
        ));
    }
    Ok(())
}

/// Pages per bio: 64 KiB, more than 11 segments, so indirect (or a split) is used.
const PAGES: u32 = 16;

/// Publishes `value` under `data/<key>` and waits (at most 60 s) for dom0's `<key>-ack`.
fn handshake(d: &mut Driving<'_>, domid: u16, key: &str, value: &str) -> Result<(), String> {
    d.xs.write_str(&format!("data/{key}"), value)
        .map_err(|e| format!("write data/{key}: {e}"))?;
    let ack = format!("/local/domain/{domid}/data/{key}-ack");
    let w = d.xs.watch(&ack).map_err(|e| format!("watch: {e}"))?;
    let acked = d.run_until(60_000, |d| matches!(d.xs.try_read(&ack), Ok(Some(_))));
    let _ = d.xs.unwatch(w);
    acked.map_err(|e| format!("dom0 ack of {key}: {e}"))
}

/// The scenarios `blk` and `blk-reattach`; each result goes to `report`. With `once`
/// (`blk=once` on the command line: a frontend of the driver domain's scenarios) only the
/// first connection is checked.
pub fn run(
    ev: Events,
    xs: &mut GuestXs,
    gt: &'static Gnttab,
    domid: u16,
    nonce: &str,
    once: bool,
    report: &mut dyn FnMut(&str, Result<String, String>),
) {
    let pool: &'static PagePool = Box::leak(Box::new(PagePool::new()));
    let (mut d, started, counters) = start(ev, xs, gt, domid, pool);
    let Counters {
        errors,
        probes,
        removes,
    } = counters;
    let first = started.and_then(|()| first_connection(&mut d, domid, nonce, &errors));
    let ok = first.is_ok();
    if let Err(e) = &first {
        let _ = d.xs.write_str("data/pvh-blk", &format!("FAIL: {e}"));
    }
    report("blk", first);
    if !ok || once {
        return;
    }
    reattach(&mut d, domid, nonce, &probes, &removes, report);
}

/// `run=busy busy=blk` (scenario `destroy`): the disk connected, then 64 KiB written and read
/// back, round after round (each counted in `data/pvh-counter`), until the toolstack destroys
/// the domain with requests in flight. Returns the rounds done when 120 s passed without that.
///
/// # Errors
/// The disk did not connect, or a round failed (its data did not read back).
pub fn busy(
    ev: Events,
    xs: &mut GuestXs,
    gt: &'static Gnttab,
    domid: u16,
    nonce: &str,
) -> Result<u64, String> {
    let pool: &'static PagePool = Box::leak(Box::new(PagePool::new()));
    let (mut d, started, _counters) = start(ev, xs, gt, domid, pool);
    started?;
    d.run_until(60_000, |d| d.fe.borrow().is_connected())
        .map_err(|e| format!("connecting: {e}"))?;
    d.xs.write_str("data/pvh-busy", "blk")
        .map_err(|e| format!("write data/pvh-busy: {e}"))?;
    let deadline = Deadline::after_ms(&ev.si, 120_000);
    let mut rounds: u64 = 0;
    while !deadline.passed(&ev.si) {
        rounds += 1;
        // 64 places of 128 sectors (the first 4 MiB), two tags per round.
        write_and_verify(&mut d, nonce, (rounds % 64) * 128, 2 * rounds)
            .map_err(|e| format!("round {rounds}: {e}"))?;
        let _ = d.xs.write_str("data/pvh-counter", &format!("{rounds}"));
    }
    Ok(rounds)
}

/// What the frontend's platform and driver count: errors logged, probes, removes.
pub(crate) struct Counters {
    pub(crate) errors: Rc<Cell<u32>>,
    probes: Rc<Cell<u32>>,
    removes: Rc<Cell<u32>>,
}

/// A frontend (pages from `pool`) registered as the `vbd` driver of a started frontend bus;
/// it connects as the returned [`Driving`] is stepped. The bus start's outcome beside it.
pub(crate) fn start<'x>(
    ev: Events,
    xs: &'x mut GuestXs,
    gt: &'static Gnttab,
    domid: u16,
    pool: &'static PagePool,
) -> (Driving<'x>, Result<(), String>, Counters) {
    let env = GuestFrontEnv {
        gt,
        ev,
        pool,
        errors: Rc::new(Cell::new(0)),
    };
    let errors = Rc::clone(&env.errors);
    let fe = Rc::new(RefCell::new(Frontend::new(
        env.clone(),
        FrontendConfig::default(),
    )));
    let probes = Rc::new(Cell::new(0));
    let removes = Rc::new(Cell::new(0));
    let store_port = xs.transport().port().number();
    let mut bus: Bus<GuestXs> = Bus::new(Role::Frontend, domid);
    bus.register(Box::new(FrontDriver {
        fe: Rc::clone(&fe),
        env,
        probes: Rc::clone(&probes),
        removes: Rc::clone(&removes),
    }));
    let started = bus.start(xs).map_err(|e| format!("bus start: {e}"));
    let d = Driving {
        ev,
        xs,
        bus,
        fe,
        more: false,
        store_port,
    };
    let counters = Counters {
        errors,
        probes,
        removes,
    };
    (d, started, counters)
}

/// Scenario `blk-reattach`: dom0 detaches the disk and attaches it again.
fn reattach(
    d: &mut Driving<'_>,
    domid: u16,
    nonce: &str,
    probes: &Cell<u32>,
    removes: &Cell<u32>,
    report: &mut dyn FnMut(&str, Result<String, String>),
) {
    let second = (|| -> Result<String, String> {
        d.run_until(90_000, |d| {
            removes.get() >= 1 && probes.get() >= 2 && d.fe.borrow().is_connected()
        })
        .map_err(|e| {
            format!(
                "waiting for detach + attach: {e} (removed {}, probed {})",
                removes.get(),
                probes.get()
            )
        })?;
        // What was written before the detach is still there...
        let (old, _) = buffer(d.fe.borrow().env(), PAGES)?;
        for s in 0..u64::from(PAGES) * 8 {
            let off = usize::try_from(s).unwrap_or(0) * 512;
            let _ = old.mem.copy_from_slice(off, &sector_image(nonce, s));
        }
        let before = read_and_compare(d, &old, 0, 10);
        d.fe.borrow().env().pool.free(&old);
        before?;
        // ...and the new connection writes and reads too.
        write_and_verify(d, nonce, u64::from(PAGES) * 8, 20)?;
        let neg =
            d.fe.borrow()
                .negotiated()
                .ok_or("no negotiation after re-attach")?;
        Ok(format!(
            "disk removed and probed again: new connection ({} queues, ring-order {}), 64 KiB from before read back, 64 KiB written at sector {}",
            neg.queues,
            neg.ring_page_order,
            PAGES * 8
        ))
    })();
    let msg = match &second {
        Ok(s) => format!("ok: {s}"),
        Err(e) => format!("FAIL: {e}"),
    };
    let acked = handshake(d, domid, "pvh-blk2", &msg);
    report("blk-reattach", second.and_then(|s| acked.map(|()| s)));
}

/// Connect, write the pattern, read it back, publish the negotiation and wait for dom0.
fn first_connection(
    d: &mut Driving<'_>,
    domid: u16,
    nonce: &str,
    errors: &Cell<u32>,
) -> Result<String, String> {
    d.run_until(60_000, |d| d.fe.borrow().is_connected())
        .map_err(|e| format!("connecting: {e}"))?;
    let (disk, neg) = {
        let fe = d.fe.borrow();
        (fe.disk(), fe.negotiated())
    };
    let disk = disk.ok_or("connected without disk info")?;
    let neg = neg.ok_or("connected without negotiated features")?;
    write_and_verify(d, nonce, 0, 1)?;
    if disk.flush {
        d.io(Bio::flush(3))?;
    }
    let stats = d.fe.borrow().stats();
    let summary = format!(
        "{} sectors x {} B; abi {:?} queues {} ring-order {} persistent {} indirect {} max-segs {} flush {} discard {}; {} requests ({} indirect) for 64 KiB w+r",
        disk.sectors,
        disk.sector_size,
        neg.abi,
        neg.queues,
        neg.ring_page_order,
        neg.persistent,
        neg.indirect,
        neg.max_segments,
        disk.flush,
        disk.discard.is_some(),
        stats.requests,
        stats.indirect,
    );
    handshake(d, domid, "pvh-blk", &summary)?;
    if errors.get() > 0 {
        return Err(format!(
            "{} error(s) logged by the frontend; {summary}",
            errors.get()
        ));
    }
    Ok(summary)
}
