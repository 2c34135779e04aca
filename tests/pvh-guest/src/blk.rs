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
#[derive(Debug)]
pub struct GuestFrontEnv {
    gt: &'static Gnttab,
    ev: Events,
    pool: PagePool,
    errors: Cell<u32>,
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

/// The frontend as the bus's `vbd` driver.
struct FrontDriver(Rc<RefCell<Fe>>);

impl Driver<GuestXs> for FrontDriver {
    fn devtype(&self) -> &str {
        "vbd"
    }

    fn probe(&mut self, xs: &mut GuestXs, dev: &mut Device) -> Result<(), XsErr> {
        self.0.borrow_mut().probe(xs, dev)
    }

    fn otherend_changed(
        &mut self,
        xs: &mut GuestXs,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        self.0.borrow_mut().otherend_changed(xs, dev, state)
    }

    fn remove(&mut self, xs: &mut GuestXs, dev: &mut Device) {
        self.0.borrow_mut().remove(xs, dev);
    }
}

struct Driving<'x> {
    ev: Events,
    xs: &'x mut GuestXs,
    bus: Bus<GuestXs>,
    fe: Rc<RefCell<Fe>>,
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
    fn run_until(
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
    fn io(&mut self, bio: Bio<'static>) -> Result<Bio<'static>, String> {
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
fn buffer(
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

/// The scenario; returns the detail of the result line.
pub fn run(
    ev: Events,
    xs: &mut GuestXs,
    gt: &'static Gnttab,
    domid: u16,
    nonce: &str,
) -> Result<String, String> {
    const PAGES: u32 = 16; // 64 KiB: more than 11 segments, so indirect (or a split) is used.
    let env = GuestFrontEnv {
        gt,
        ev,
        pool: PagePool::new(),
        errors: Cell::new(0),
    };
    let fe = Rc::new(RefCell::new(Frontend::new(env, FrontendConfig::default())));
    let store_port = xs.transport().port().number();
    let mut bus: Bus<GuestXs> = Bus::new(Role::Frontend, domid);
    bus.register(Box::new(FrontDriver(Rc::clone(&fe))));
    bus.start(xs).map_err(|e| format!("bus start: {e}"))?;
    let mut d = Driving {
        ev,
        xs,
        bus,
        fe,
        more: false,
        store_port,
    };
    d.run_until(60_000, |d| d.fe.borrow().is_connected())
        .map_err(|e| format!("connecting: {e}"))?;
    let (disk, neg) = {
        let fe = d.fe.borrow();
        (fe.disk(), fe.negotiated())
    };
    let disk = disk.ok_or("connected without disk info")?;
    let neg = neg.ok_or("connected without negotiated features")?;

    // Write the pattern, read it back into other pages, compare.
    let (wrun, wsegs) = buffer(d.fe.borrow().env(), PAGES)?;
    for s in 0..u64::from(PAGES) * 8 {
        let off = usize::try_from(s).unwrap_or(0) * 512;
        let _ = wrun.mem.copy_from_slice(off, &sector_image(nonce, s));
    }
    let wbio = d.io(Bio::new(BioOp::Write, 0, wsegs, 1))?;
    drop(wbio);
    if neg_flush(&disk) {
        d.io(Bio::flush(2))?;
    }
    let (rrun, rsegs) = buffer(d.fe.borrow().env(), PAGES)?;
    let rbio = d.io(Bio::new(BioOp::Read, 0, rsegs, 3))?;
    drop(rbio);
    let len = usize::try_from(PAGES).unwrap_or(0) * 4096;
    let mut wrote = alloc::vec![0u8; len];
    let mut read = alloc::vec![0u8; len];
    wrun.mem
        .copy_to_slice(0, &mut wrote)
        .map_err(|e| format!("{e:?}"))?;
    rrun.mem
        .copy_to_slice(0, &mut read)
        .map_err(|e| format!("{e:?}"))?;
    if wrote != read {
        let at = wrote.iter().zip(&read).position(|(a, b)| a != b);
        return Err(format!("read back differs at byte {at:?}"));
    }
    let stats = d.fe.borrow().stats();
    let errors = d.fe.borrow().env().errors.get();
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
    // Publish for dom0 and wait for its ack (it records the negotiated xenstore nodes).
    d.xs.write_str("data/pvh-blk", &summary)
        .map_err(|e| format!("write data/pvh-blk: {e}"))?;
    let ack = format!("/local/domain/{domid}/data/pvh-blk-ack");
    let w = d.xs.watch(&ack).map_err(|e| format!("watch: {e}"))?;
    let acked = d.run_until(30_000, |d| matches!(d.xs.try_read(&ack), Ok(Some(_))));
    let _ = d.xs.unwatch(w);
    acked.map_err(|e| format!("dom0 ack: {e}"))?;
    if errors > 0 {
        return Err(format!(
            "{errors} error(s) logged by the frontend; {summary}"
        ));
    }
    Ok(summary)
}

fn neg_flush(disk: &xen_blkfront::DiskInfo) -> bool {
    disk.flush
}
