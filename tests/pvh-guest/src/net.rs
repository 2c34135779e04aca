//! The network frontend (xen-netfront) against Linux dom0's xen-netback.
//!
//! The `xn` core, driven as the FreeBSD glue drives it: a xenbus [`Bus`] (frontend role) with
//! a `vif` driver that reads the backend's offer, sets up queues through the platform
//! (pages from the static pool, grants from [`Gnttab`], masked event channels), publishes the
//! keys and connects. On top, just enough of a network stack to prove packets flow both ways:
//! ARP (ask for dom0's address, answer for ours), ICMP echo (ping dom0, answer dom0's pings)
//! and one UDP datagram with the nonce that dom0 echoes back.
//!
//! Addresses: the guest is 10.99.0.2/24, dom0's bridge 10.99.0.1; dom0 listens on UDP 5555.

use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;

use xen_gnttab::{GrantRef, Revoke};
use xen_kmod::arch::XenPlatform;
use xen_kmod::HypervisorExt;
use xen_netfront::negotiate::{self, BackendOffer, FrontendConfig, Setup};
use xen_netfront::{FrontendPlatform, PlatformError};
use xen_netif::PacketMeta;
use xen_shmem::SharedMem;
use xen_xenbus::{Bus, Device, Driver, Error as XsErr, Role, Store, XenbusState};

use crate::events::Events;
use crate::gnt::Gnttab;
use crate::pages::PagePool;
use crate::time::{self, Deadline};
use crate::xs::GuestXs;

/// Our address.
pub const GUEST_IP: [u8; 4] = [10, 99, 0, 2];
/// dom0's bridge address.
pub const DOM0_IP: [u8; 4] = [10, 99, 0, 1];
/// dom0's UDP echo port.
pub const UDP_PORT: u16 = 5555;
const OUR_UDP_PORT: u16 = 40_000;
const ICMP_ID: u16 = 0x7876;

/// The netfront platform of this guest.
#[derive(Debug)]
pub struct NetPlat {
    ev: Events,
    gt: &'static Gnttab,
    pool: &'static PagePool,
}

impl NetPlat {
    /// The platform over our hypervisor handle, grant table and page pool (also the driver
    /// domain's uplink, `dd_net.rs`).
    pub fn new(ev: Events, gt: &'static Gnttab, pool: &'static PagePool) -> NetPlat {
        NetPlat { ev, gt, pool }
    }
}

impl FrontendPlatform<'static> for NetPlat {
    type Hv = &'static XenPlatform;
    type Grant = GrantRef;

    fn hypervisor(&self) -> Self::Hv {
        self.ev.hv
    }

    fn alloc_page(&mut self) -> Result<(u64, SharedMem<'static>), PlatformError> {
        let run = self.pool.alloc(1).ok_or(PlatformError::NoMemory)?;
        Ok((run.gfn, run.mem))
    }

    fn grant(
        &mut self,
        domid: u16,
        gfn: u64,
        readonly: bool,
    ) -> Result<(u32, GrantRef), PlatformError> {
        let r = self
            .gt
            .grant(domid, gfn, readonly)
            .map_err(|_| PlatformError::Grant)?;
        Ok((r.raw(), r))
    }

    fn release(&mut self, gfn: u64, grant: GrantRef) {
        // A page the backend still maps is never reused: it stays out of the pool.
        if self.gt.revoke(grant) == Revoke::Done {
            if let Some(run) = self.pool.run_of(gfn) {
                self.pool.free(&run);
            }
        }
    }

    fn alloc_unbound(&mut self, remote: u16) -> Result<u32, PlatformError> {
        let port = self
            .ev
            .hv
            .evtchn_alloc_unbound(remote)
            .map_err(|_| PlatformError::Evtchn)?;
        self.ev.mask(port);
        Ok(port)
    }

    fn close(&mut self, port: u32) {
        let _ = self.ev.hv.evtchn_close(port);
    }
}

/// A connected device.
struct NetSide {
    setup: Setup<'static, NetPlat>,
    offer: BackendOffer,
    mac: [u8; 6],
}

type Slot = Rc<RefCell<Option<NetSide>>>;

/// The `vif` driver on the bus.
struct VifDriver {
    ev: Events,
    gt: &'static Gnttab,
    pool: &'static PagePool,
    cfg: FrontendConfig,
    slot: Slot,
    error: Rc<RefCell<Option<String>>>,
    removes: Rc<core::cell::Cell<u32>>,
}

impl VifDriver {
    /// Releases a connection (queues first, then pages, grants and ports; a page the backend
    /// still maps is never reused).
    fn drop_side(&mut self) {
        if let Some(mut side) = self.slot.borrow_mut().take() {
            side.setup.queues.clear();
            side.setup.ctrl = None;
            let mut plat = NetPlat {
                ev: self.ev,
                gt: self.gt,
                pool: self.pool,
            };
            side.setup.resources.release(&mut plat);
        }
    }
}

impl Driver<GuestXs> for VifDriver {
    fn devtype(&self) -> &str {
        "vif"
    }

    fn probe(&mut self, xs: &mut GuestXs, dev: &mut Device) -> Result<(), XsErr> {
        dev.switch_state(xs, XenbusState::Initialising)
    }

    fn otherend_changed(
        &mut self,
        xs: &mut GuestXs,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        if matches!(state, XenbusState::Closing | XenbusState::Closed) {
            // The toolstack is detaching the vif (or the backend went away).
            self.drop_side();
            if dev.state() != XenbusState::Closed {
                dev.switch_state(xs, XenbusState::Closed)?;
            }
            return Ok(());
        }
        if state != XenbusState::InitWait
            || dev.state() != XenbusState::Initialising
            || self.slot.borrow().is_some()
        {
            return Ok(());
        }
        let be = dev.otherend().to_string();
        let fe = dev.nodename().to_string();
        let offer = negotiate::read_offer(xs, &be)?;
        let mac = negotiate::read_mac(xs, &fe)?.ok_or(XsErr::BadValue)?;
        let trusted = negotiate::read_trusted(xs, &fe)?;
        let mut plat = NetPlat {
            ev: self.ev,
            gt: self.gt,
            pool: self.pool,
        };
        let setup = match negotiate::setup(&mut plat, dev.otherend_id(), &offer, &self.cfg, trusted)
        {
            Ok(s) => s,
            Err(e) => {
                *self.error.borrow_mut() = Some(format!("setup: {e:?}"));
                return Err(XsErr::BadValue);
            }
        };
        let published = negotiate::publish(
            xs,
            &fe,
            &setup.keys,
            setup.split,
            setup.ctrl_keys,
            &offer,
            &self.cfg,
        );
        if let Err(e) = published.and_then(|()| dev.switch_state(xs, XenbusState::Connected)) {
            *self.error.borrow_mut() = Some(format!("publish: {e}"));
            let mut setup = setup;
            setup.queues.clear();
            setup.ctrl = None;
            setup.resources.release(&mut plat);
            return Err(e);
        }
        *self.slot.borrow_mut() = Some(NetSide { setup, offer, mac });
        Ok(())
    }

    fn remove(&mut self, _xs: &mut GuestXs, _dev: &mut Device) {
        self.drop_side();
        self.removes.set(self.removes.get() + 1);
    }
}

// ------------------------------------------------------------------ a tiny IPv4 stack

fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = u32::from(c[0]) << 8 | c.get(1).map_or(0, |&b| u32::from(b));
        sum = sum.wrapping_add(w);
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    // CAST: folded to 16 bits above.
    !(sum as u16)
}

fn eth(dst: [u8; 6], src: [u8; 6], ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(14 + payload.len().max(46));
    p.extend_from_slice(&dst);
    p.extend_from_slice(&src);
    p.extend_from_slice(&ty.to_be_bytes());
    p.extend_from_slice(payload);
    while p.len() < 60 {
        p.push(0);
    }
    p
}

fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa);
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa);
    a
}

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], id: u16, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + payload.len()).unwrap_or(u16::MAX);
    let mut h = Vec::with_capacity(20 + payload.len());
    h.extend_from_slice(&[0x45, 0]);
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn icmp_echo(ty: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + data.len());
    m.extend_from_slice(&[ty, 0, 0, 0]);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let c = csum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn udp(src_port: u16, dst_port: u16, data: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + data.len()).unwrap_or(u16::MAX);
    let mut u = Vec::with_capacity(8 + data.len());
    u.extend_from_slice(&src_port.to_be_bytes());
    u.extend_from_slice(&dst_port.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    // Checksum 0: none (allowed for UDP over IPv4).
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    u
}

/// What the receive side saw.
#[derive(Debug, Default)]
struct Seen {
    dom0_mac: Option<[u8; 6]>,
    echo_replies: u32,
    /// Sequence number of the last echo reply to our id.
    last_echo_seq: Option<u16>,
    pings_answered: u32,
    arps_answered: u32,
    udp_echo: Option<Vec<u8>>,
    unreachable: u32,
    other: u32,
}

/// Handles one received frame; queues any answer in `out`.
fn receive(mac: [u8; 6], frame: &[u8], seen: &mut Seen, out: &mut Vec<Vec<u8>>) {
    if frame.len() < 14 {
        seen.other += 1;
        return;
    }
    let src: [u8; 6] = frame[6..12].try_into().unwrap_or([0; 6]);
    let ty = u16::from_be_bytes([frame[12], frame[13]]);
    let body = &frame[14..];
    match ty {
        0x0806 if body.len() >= 28 => {
            let op = u16::from_be_bytes([body[6], body[7]]);
            let sha: [u8; 6] = body[8..14].try_into().unwrap_or([0; 6]);
            let spa: [u8; 4] = body[14..18].try_into().unwrap_or([0; 4]);
            let tpa: [u8; 4] = body[24..28].try_into().unwrap_or([0; 4]);
            if spa == DOM0_IP {
                seen.dom0_mac = Some(sha);
            }
            if op == 1 && tpa == GUEST_IP {
                out.push(eth(sha, mac, 0x0806, &arp(2, mac, GUEST_IP, sha, spa)));
                seen.arps_answered += 1;
            }
        }
        0x0800 if body.len() >= 20 => {
            let ihl = usize::from(body[0] & 0x0F) * 4;
            let total = usize::from(u16::from_be_bytes([body[2], body[3]]));
            if body[0] >> 4 != 4 || ihl < 20 || total < ihl || total > body.len() {
                seen.other += 1;
                return;
            }
            let proto = body[9];
            let ipsrc: [u8; 4] = body[12..16].try_into().unwrap_or([0; 4]);
            let ipdst: [u8; 4] = body[16..20].try_into().unwrap_or([0; 4]);
            let l4 = &body[ihl..total];
            if ipdst != GUEST_IP {
                seen.other += 1;
                return;
            }
            match proto {
                1 if l4.len() >= 8 => {
                    let id = u16::from_be_bytes([l4[4], l4[5]]);
                    let seq = u16::from_be_bytes([l4[6], l4[7]]);
                    match l4[0] {
                        0 if id == ICMP_ID => {
                            seen.echo_replies += 1;
                            seen.last_echo_seq = Some(seq);
                        }
                        3 => seen.unreachable += 1,
                        8 => {
                            let reply = icmp_echo(0, id, seq, &l4[8..]);
                            out.push(eth(
                                src,
                                mac,
                                0x0800,
                                &ipv4(1, GUEST_IP, ipsrc, seq, &reply),
                            ));
                            seen.pings_answered += 1;
                        }
                        _ => seen.other += 1,
                    }
                }
                17 if l4.len() >= 8 => {
                    let sport = u16::from_be_bytes([l4[0], l4[1]]);
                    let dport = u16::from_be_bytes([l4[2], l4[3]]);
                    if sport == UDP_PORT && dport == OUR_UDP_PORT {
                        seen.udp_echo = Some(l4[8..].to_vec());
                    } else {
                        seen.other += 1;
                    }
                }
                _ => seen.other += 1,
            }
        }
        _ => seen.other += 1,
    }
}

/// A netfront on its bus, stepped by its user (the checks here, `bench.rs`).
pub(crate) struct Net<'x> {
    ev: Events,
    xs: &'x mut GuestXs,
    bus: Bus<GuestXs>,
    slot: Slot,
    error: Rc<RefCell<Option<String>>>,
    store_port: u32,
    seen: Seen,
}

impl Net<'_> {
    fn ports(&self) -> Vec<u32> {
        let mut v = Vec::new();
        if let Some(s) = self.slot.borrow().as_ref() {
            for q in &s.setup.queues {
                let p = q.ports();
                v.push(p.tx);
                if p.rx != p.tx {
                    v.push(p.rx);
                }
            }
        }
        v
    }

    /// One round: xenstore, then every queue; whether anything happened.
    fn step(&mut self) -> Result<bool, String> {
        let mut any = false;
        while let Some((id, ev)) = self.xs.poll_event().map_err(|e| format!("xenstore: {e}"))? {
            any = true;
            self.bus.handle_event(self.xs, id, &ev);
        }
        if let Some(e) = self.error.borrow().as_ref() {
            return Err(e.clone());
        }
        for p in self.ports() {
            any |= self.ev.take_pending(p);
        }
        let mut out = Vec::new();
        let mut slot = self.slot.borrow_mut();
        let Some(side) = slot.as_mut() else {
            return Ok(any);
        };
        let mac = side.mac;
        for q in &mut side.setup.queues {
            if q.poll_tx().map_err(|e| format!("tx: {e:?}"))? > 0 {
                any = true;
            }
            let seen = &mut self.seen;
            let w = q
                .poll_rx(|frame, _meta| receive(mac, frame, seen, &mut out))
                .map_err(|e| format!("rx: {e:?}"))?;
            any |= w.packets > 0 || w.more;
        }
        drop(slot);
        for p in out {
            self.send(&p)?;
        }
        Ok(any)
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), String> {
        let mut slot = self.slot.borrow_mut();
        let side = slot.as_mut().ok_or("not connected")?;
        let q = side.setup.queues.first_mut().ok_or("no queue")?;
        q.send(frame, &PacketMeta::default())
            .map_err(|e| format!("send: {e:?}"))
    }

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
            if deadline.passed(&self.ev.si) {
                return Err(format!("timed out after {ms} ms"));
            }
            if !any {
                let mut ports = self.ports();
                ports.push(self.store_port);
                let _ = self
                    .ev
                    .hv
                    .sched_poll(&ports, Deadline::after_ms(&self.ev.si, 20).at());
            }
        }
    }

    fn mac(&self) -> [u8; 6] {
        self.slot.borrow().as_ref().map_or([0; 6], |s| s.mac)
    }
}

/// Publishes `value` under `data/<key>` and waits (at most 60 s, answering pings meanwhile)
/// for dom0's `<key>-ack`.
fn handshake(n: &mut Net<'_>, domid: u16, key: &str, value: &str) -> Result<(), String> {
    n.xs.write_str(&format!("data/{key}"), value)
        .map_err(|e| format!("write data/{key}: {e}"))?;
    let ack = format!("/local/domain/{domid}/data/{key}-ack");
    let w = n.xs.watch(&ack).map_err(|e| format!("watch: {e}"))?;
    let acked = n.run_until(60_000, |n| matches!(n.xs.try_read(&ack), Ok(Some(_))));
    let _ = n.xs.unwatch(w);
    acked.map_err(|e| format!("dom0 ack of {key}: {e}"))
}

/// Waits for a connection, then ARP, 3 pings and the UDP echo; returns the summary.
fn exchange(n: &mut Net<'_>, nonce: &str) -> Result<String, String> {
    let dom0_mac = connect(n)?;
    let mac = n.mac();

    // Ping dom0.
    let t0 = time::now_ns(&n.ev.si).unwrap_or(0);
    for seq in 1..=3u16 {
        let payload = format!("pvh-net ping {nonce}");
        let req = icmp_echo(8, ICMP_ID, seq, payload.as_bytes());
        n.send(&eth(
            dom0_mac,
            mac,
            0x0800,
            &ipv4(1, GUEST_IP, DOM0_IP, seq, &req),
        ))?;
        let want = u32::from(seq);
        n.run_until(5_000, |n| n.seen.echo_replies >= want)
            .map_err(|e| format!("echo reply {seq}: {e}"))?;
    }
    let rtt_us = time::now_ns(&n.ev.si).unwrap_or(t0).saturating_sub(t0) / 3_000;

    // UDP datagram with the nonce; dom0 echoes it back.
    let msg = format!("pvh-net {nonce}\n");
    let dgram = udp(OUR_UDP_PORT, UDP_PORT, msg.as_bytes());
    for _ in 0..10 {
        n.send(&eth(
            dom0_mac,
            mac,
            0x0800,
            &ipv4(17, GUEST_IP, DOM0_IP, 100, &dgram),
        ))?;
        if n.run_until(1_000, |n| n.seen.udp_echo.is_some()).is_ok() {
            break;
        }
    }
    match &n.seen.udp_echo {
        Some(e) if e.as_slice() == msg.as_bytes() => {}
        Some(e) => {
            return Err(format!(
                "UDP echo differs: {:?}",
                String::from_utf8_lossy(e)
            ))
        }
        None => {
            return Err(format!(
                "no UDP echo from dom0 ({} ICMP unreachable, {} other frames)",
                n.seen.unreachable, n.seen.other
            ))
        }
    }
    Ok(format!(
        "{}; ping rtt {rtt_us} us; udp echo ok",
        features(n)?
    ))
}

/// The connection's MAC, queues and the backend's offer, for reports.
pub(crate) fn features(n: &Net<'_>) -> Result<String, String> {
    let s = n.slot.borrow();
    let s = s.as_ref().ok_or("disconnected")?;
    let (mac, o) = (s.mac, s.offer);
    Ok(format!(
        "mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}; queues {}/{} split {} sg {} gso4 {} gso6 {} csum6 {} ctrl {}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5],
        s.setup.queues.len(), o.max_queues, s.setup.split, o.sg, o.gso_v4, o.gso_v6, o.ipv6_csum, o.ctrl_ring,
    ))
}

/// One ICMP echo request to dom0 with `payload` bytes of data and sequence number `seq`;
/// whether its reply came within `ms` milliseconds (`bench.rs`: a request/response rate both
/// our stack and a Linux guest's `ping` can drive, answered by dom0's kernel).
pub(crate) fn echo(
    n: &mut Net<'_>,
    dom0_mac: [u8; 6],
    seq: u16,
    payload: usize,
    ms: u64,
) -> Result<bool, String> {
    let mac = n.mac();
    let data = alloc::vec![0xA5u8; payload];
    let req = icmp_echo(8, ICMP_ID, seq, &data);
    n.send(&eth(
        dom0_mac,
        mac,
        0x0800,
        &ipv4(1, GUEST_IP, DOM0_IP, seq, &req),
    ))?;
    match n.run_until(ms, |n| n.seen.last_echo_seq == Some(seq)) {
        Ok(()) => Ok(true),
        Err(e) if e.starts_with("timed out") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits for a connection and asks for dom0's MAC (ARP, retried); returns it.
pub(crate) fn connect(n: &mut Net<'_>) -> Result<[u8; 6], String> {
    n.run_until(60_000, |n| {
        n.slot.borrow().is_some()
            && n.bus
                .devices()
                .next()
                .is_some_and(|d| d.otherend_state() == XenbusState::Connected)
    })
    .map_err(|e| format!("connecting: {e}"))?;
    n.seen = Seen::default();
    let mac = n.mac();

    // ARP for dom0 (retried: the bridge port may still be coming up).
    let who_has = eth(
        [0xFF; 6],
        mac,
        0x0806,
        &arp(1, mac, GUEST_IP, [0; 6], DOM0_IP),
    );
    for _ in 0..20 {
        n.send(&who_has)?;
        if n.run_until(500, |n| n.seen.dom0_mac.is_some()).is_ok() {
            break;
        }
    }
    n.seen
        .dom0_mac
        .ok_or_else(|| String::from("no ARP reply from 10.99.0.1"))
}

/// The scenarios `net` and `net-reattach`; each result goes to `report`.
pub fn run(
    ev: Events,
    xs: &mut GuestXs,
    gt: &'static Gnttab,
    domid: u16,
    nonce: &str,
    report: &mut dyn FnMut(&str, Result<String, String>),
) {
    let pool: &'static PagePool = Box::leak(Box::new(PagePool::new()));
    let (mut n, started, removes) = start(ev, xs, gt, domid, pool);
    let first = started.and_then(|()| exchange(&mut n, nonce));
    checks(n, first, &removes, domid, nonce, report);
}

/// A netfront (2 queues, pages from `pool`) registered as the `vif` driver of a started
/// frontend bus; it connects as the returned [`Net`] is stepped. The bus start's outcome and
/// the driver's count of removes beside it.
pub(crate) fn start<'x>(
    ev: Events,
    xs: &'x mut GuestXs,
    gt: &'static Gnttab,
    domid: u16,
    pool: &'static PagePool,
) -> (Net<'x>, Result<(), String>, Rc<core::cell::Cell<u32>>) {
    let slot: Slot = Rc::new(RefCell::new(None));
    let error = Rc::new(RefCell::new(None));
    let removes = Rc::new(core::cell::Cell::new(0));
    let cfg = FrontendConfig {
        queues: 2,
        ..FrontendConfig::default()
    };
    let store_port = xs.transport().port().number();
    let mut bus: Bus<GuestXs> = Bus::new(Role::Frontend, domid);
    bus.register(Box::new(VifDriver {
        ev,
        gt,
        pool,
        cfg,
        slot: Rc::clone(&slot),
        error: Rc::clone(&error),
        removes: Rc::clone(&removes),
    }));
    let started = bus.start(xs).map_err(|e| format!("bus start: {e}"));
    let n = Net {
        ev,
        xs,
        bus,
        slot,
        error,
        store_port,
        seen: Seen::default(),
    };
    (n, started, removes)
}

/// The rest of the scenarios `net` and `net-reattach`, after [`start`].
fn checks(
    mut n: Net<'_>,
    first: Result<String, String>,
    removes: &core::cell::Cell<u32>,
    domid: u16,
    nonce: &str,
    report: &mut dyn FnMut(&str, Result<String, String>),
) {
    let msg = match &first {
        Ok(s) => s.clone(),
        Err(e) => format!("FAIL: {e}"),
    };
    // dom0 pings us while we wait for its ack (answered in `receive`).
    let acked = handshake(&mut n, domid, "pvh-net", &msg);
    let ok = first.is_ok() && acked.is_ok();
    report(
        "net",
        first.and_then(|s| {
            acked.map(|()| {
                format!(
                    "{s}; answered {} pings, {} ARPs from dom0",
                    n.seen.pings_answered, n.seen.arps_answered
                )
            })
        }),
    );
    if !ok {
        return;
    }
    // dom0 now detaches the vif and attaches it again.
    let second = n
        .run_until(90_000, |_| removes.get() >= 1)
        .map_err(|e| format!("waiting for the detach: {e}"))
        .and_then(|()| exchange(&mut n, nonce));
    let msg = match &second {
        Ok(s) => format!("ok: {s}"),
        Err(e) => format!("FAIL: {e}"),
    };
    let acked = handshake(&mut n, domid, "pvh-net2", &msg);
    report(
        "net-reattach",
        second.and_then(|_| {
            acked.map(|()| {
                format!(
                    "vif removed and probed again: new connection; ARP, 3 pings and UDP echo again; answered {} pings from dom0",
                    n.seen.pings_answered
                )
            })
        }),
    );
}
