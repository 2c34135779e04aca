//! The network driver domain: our netback core serving other domains' netfronts (a Linux
//! domU's xen-netfront), bridged to a netfront of our own connected to dom0's xen-netback.
//!
//! ```text
//!  Linux domU                   this driver domain                        dom0
//!  xen-netfront ── vif ring ──▶ xen-netback core ─┐                 ┌─▶ xen-netback ─ xenbr0
//!  (10.99.0.3)    grant copy    (backend/vif/…)   ├─ bridge (MACs) ─┤    (vif<dd>.0)  10.99.0.1
//!                                                 │  port 0: uplink │
//!                                                 └─ xen-netfront ──┘   (device/vif/0, from xl)
//! ```
//!
//! * **Backend** ([`BackDriver`], devtype `vif` on the driver domain's backend bus): publishes
//!   the netback core's offer in the backend directory the toolstack (dom0's `dd_attach_vif`)
//!   wrote, waits for the frontend's `Connected`, reads its keys (`xen_netback::config`), maps
//!   its rings and binds its ports through [`BackPlat`], and connects (`Connected`). The
//!   frontend's `Closing`/`Closed` or the directory's removal tears the connection down; the
//!   negotiated features and final counters are kept for the report.
//! * **Uplink** ([`UplinkDriver`], devtype `vif` on the frontend bus): the `xn` core against
//!   dom0's xen-netback, as `net.rs` drives it.
//! * **Bridge**: a learning switch over the ports (uplink = port 0, each backend vif one more):
//!   a frame's source MAC is learned for its port; a unicast frame to a known MAC goes to that
//!   port, anything else to every other port. The data is copied once per hop (the cores copy
//!   into and out of their own pages; grant copies do the rest).
//!
//! # Offloads
//!
//! Metadata is **forwarded**, never emulated: the backend offers the Linux frontend GSO only
//! when the uplink negotiated both TCPv4 and TCPv6 GSO with dom0's backend (so every GSO
//! packet the frontend sends can leave through the uplink unchanged), and checksum-partial
//! packets go on as checksum-partial (netif backends must accept `csum_blank` IPv4; IPv6 only
//! when offered, otherwise the netfront core completes the checksum in software). Towards
//! the frontend, the netback core checks each packet against what the frontend asked for:
//! GSO it did not ask for is refused (counted; there is no software segmentation here),
//! checksum-partial it cannot take is completed in software (`sw_csum`).
//!
//! # Back-pressure
//!
//! A frame the uplink cannot take now (ring full) waits in a bounded backlog; while the
//! backlog is over half full the backends' TX rings are not read, so the Linux frontend's
//! queue fills and its stack slows down instead of losing packets. Likewise the uplink's RX
//! ring is not read while a backend queue's RX backlog is over half its limits (packets or
//! bytes).

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;

use xen_gnttab::{MapGrant, MapHandle};
use xen_kmod::arch::XenPlatform;
use xen_kmod::HypervisorExt;
use xen_netback::config::{self as be_config, BackendFeatures, EvtchnKeys, FrontendInfo};
use xen_netback::ctrl::{McastFilter, Steering};
use xen_netback::{Connection, Limits, LocalPage, NetIo, Offloads, QueueStats};
use xen_netfront::negotiate::{self, BackendOffer, FrontendConfig, Setup};
use xen_netif::{Csum, PacketMeta};
use xen_shmem::SharedMem;
use xen_xenbus::{
    Bus, Device, Driver, Error as XsErr, Role, Store, WatchEvent, WatchId, XenbusState,
};

use crate::arch;
use crate::dd::{DdCtx, Round, Service, Slots};
use crate::events::Events;
use crate::gnt::Gnttab;
use crate::net::NetPlat;
use crate::pages::PagePool;
use crate::time;
use crate::xs::GuestXs;

/// Frames waiting for room on the uplink, at most.
const BACKLOG: usize = 256;
/// MAC table entries, at most (oldest forgotten first).
const MACS: usize = 64;
/// Backend vifs served at once, at most.
const MAX_VIFS: usize = 8;
/// Records of finished connections kept for reports.
const MAX_RECORDS: usize = 16;

// ------------------------------------------------------------------------ backend platform

/// A mapped ring page: its slot in the foreign-mapping window and Xen's handle.
#[derive(Debug)]
pub struct RingMapping {
    addr: u64,
    handle: Option<MapHandle>,
}

/// The netback platform of the driver domain: ring grants mapped into slots of the
/// foreign-mapping window ([`Slots`]), ports bound with `EVTCHNOP_bind_interdomain` (masked:
/// the main loop polls), staging pages from the page pool. The data path itself only
/// grant-copies (`GNTTABOP_copy`) and notifies.
#[derive(Debug)]
pub struct BackPlat {
    ev: Events,
    pool: &'static PagePool,
    slots: &'static Slots,
}

impl xen_netback::BackendPlatform<'static> for BackPlat {
    type Hv = &'static XenPlatform;
    type Mapping = RingMapping;

    fn hypervisor(&self) -> Self::Hv {
        self.ev.hv
    }

    fn map_ring(
        &mut self,
        domid: u16,
        gref: u32,
    ) -> Result<(RingMapping, SharedMem<'static>), xen_netback::PlatformError> {
        let addr = self
            .slots
            .reserve(1)
            .ok_or(xen_netback::PlatformError::NoMemory)?;
        let mut op = [MapGrant::new(domid, gref, addr, false)];
        let mapped = xen_gnttab::map_grants(self.ev.hv, &mut op);
        let handle = op[0].handle.take();
        let view = arch::foreign_view(addr, 1);
        match (mapped, handle, view) {
            (Ok(()), Some(h), Some(mem)) => Ok((
                RingMapping {
                    addr,
                    handle: Some(h),
                },
                mem,
            )),
            (_, h, _) => {
                self.unmap_ring(RingMapping { addr, handle: h });
                Err(xen_netback::PlatformError::Map)
            }
        }
    }

    fn unmap_ring(&mut self, m: RingMapping) {
        let mut handles = [m.handle];
        let unmapped =
            handles[0].is_none() || xen_gnttab::unmap_grants(self.ev.hv, &mut handles).is_ok();
        // A slot whose unmap failed still shows the foreign page: never reuse it.
        if unmapped {
            self.slots.release(m.addr, 1);
        }
    }

    fn bind(&mut self, domid: u16, remote_port: u32) -> Result<u32, xen_netback::PlatformError> {
        let port = self
            .ev
            .hv
            .evtchn_bind_interdomain(domid, remote_port)
            .map_err(|_| xen_netback::PlatformError::Bind)?;
        self.ev.mask(port);
        Ok(port)
    }

    fn unbind(&mut self, port: u32) {
        let _ = self.ev.hv.evtchn_close(port);
    }

    fn local_page(&mut self) -> Result<LocalPage<'static>, xen_netback::PlatformError> {
        let run = self
            .pool
            .alloc(1)
            .ok_or(xen_netback::PlatformError::NoMemory)?;
        Ok(LocalPage {
            gfn: run.gfn,
            mem: run.mem,
        })
    }

    fn free_page(&mut self, page: LocalPage<'static>) {
        if let Some(run) = self.pool.run_of(page.gfn) {
            self.pool.free(&run);
        }
    }
}

// ------------------------------------------------------------------------ the bridge state

/// A bridge port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// Our netfront to dom0.
    Uplink,
    /// A backend vif, by connection number.
    Vif(u32),
}

/// What the bridge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames from the backend vifs sent on through the uplink.
    pub up_frames: u64,
    /// Their bytes.
    pub up_bytes: u64,
    /// Of which GSO (forwarded as GSO).
    pub up_gso: u64,
    /// Of which checksum-partial (forwarded as such, or completed by the netfront core).
    pub up_csum_partial: u64,
    /// Frames from the uplink put on a backend vif's RX queue.
    pub down_frames: u64,
    /// Their bytes.
    pub down_bytes: u64,
    /// Of which GSO.
    pub down_gso: u64,
    /// Of which checksum-partial.
    pub down_csum_partial: u64,
    /// Frames sent to every other port (broadcast, multicast, unknown destination).
    pub flooded: u64,
    /// Frames dropped because the uplink backlog was full.
    pub backlog_drops: u64,
    /// Frames the uplink refused (too long, offload not negotiated, failed queue).
    pub uplink_refused: u64,
    /// Frames a backend queue refused (full, stalled, offload the frontend lacks).
    pub vif_refused: u64,
    /// Frames filtered by a frontend's multicast filter.
    pub mcast_filtered: u64,
    /// Highest uplink backlog seen.
    pub max_backlog: usize,
}

/// What one frontend connection negotiated and did (kept after it is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Frontend domain.
    pub fe: u16,
    /// Device id (`vif/<fe>/<devid>`).
    pub devid: String,
    /// Queues the frontend set up.
    pub queues: usize,
    /// Split event channels.
    pub split: bool,
    /// Control ring set up.
    pub ctrl: bool,
    /// The features (the frontend's requests intersected with our offer).
    pub feat: xen_netback::Negotiated,
    /// Counters summed over the queues.
    pub stats: QueueStats,
    /// The first queue failure, if any.
    pub failure: Option<String>,
    /// Whether it is still connected.
    pub live: bool,
}

impl Record {
    /// One line for a `RESULT` (fits the debug port's line with its prefix).
    pub fn line(&self) -> String {
        let b = |v: bool| u8::from(v);
        let f = &self.feat;
        let s = &self.stats;
        format!(
            "d{} vif {}: q{} split {} sg {} gso4 {} gso6 {} csum4 {} csum6 {} ctrl {} notify {}; tx {}p/{}B rx {}p/{}B drop {}/{} swcsum {}{}",
            self.fe,
            self.devid,
            self.queues,
            b(self.split),
            b(f.sg),
            b(f.gso_v4),
            b(f.gso_v6),
            b(f.csum_v4),
            b(f.csum_v6),
            b(self.ctrl),
            b(f.rx_notify),
            s.tx_packets,
            s.tx_bytes,
            s.rx_packets,
            s.rx_bytes,
            s.tx_dropped,
            s.rx_refused + s.rx_stall_dropped,
            s.sw_csum,
            self.failure
                .as_ref()
                .map_or(String::new(), |e| format!("; FAILED {e}")),
        )
    }
}

/// Every connection attempt of one backend device and its failures (kept across
/// reconnections, for the report on a hostile frontend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Frontend domain.
    pub fe: u16,
    /// Device id.
    pub devid: String,
    /// Connection attempts (the frontend reached `Initialised`/`Connected` while we waited).
    pub attempts: u32,
    /// Of which failed: refused at connect, or stopped by a protocol violation.
    pub failures: u32,
    /// Failures reported without a reason (must stay 0).
    pub unexplained: u32,
    /// The last failure's reason, as written to the `error` node.
    pub last: Option<String>,
}

/// Reports a failed vif as a backend does (`xenbus_dev_fatal`'s effect, without marking the
/// bus device dead so that the frontend's `Closing`/`Closed` are still followed and a fresh
/// connection can start after `Closed`): the reason goes to the device directory's `error`
/// node, where the frontend and the toolstack read it, and the state to `Closing`.
fn report_failure(xs: &mut GuestXs, dev: &mut Device, reason: &str) {
    crate::e9!("dd-net: {}: vif failed: {reason}", dev.nodename());
    let _ = dev.write_node(xs, "error", reason);
    if dev.state().can_switch_to(XenbusState::Closing) {
        let _ = dev.switch_state(xs, XenbusState::Closing);
    }
}

/// A connected backend vif.
struct Vif {
    id: u32,
    dir: String,
    fe: u16,
    devid: String,
    conn: Connection<'static, BackPlat>,
    info: FrontendInfo,
    steering: Steering,
    mcast: McastFilter,
    failure: Option<String>,
}

impl Vif {
    fn record(&self, live: bool) -> Record {
        let mut stats = QueueStats::default();
        for q in &self.conn.queues {
            let s = q.stats();
            stats.tx_packets += s.tx_packets;
            stats.tx_bytes += s.tx_bytes;
            stats.tx_dropped += s.tx_dropped;
            stats.tx_grant_errors += s.tx_grant_errors;
            stats.tx_mcast += s.tx_mcast;
            stats.rx_packets += s.rx_packets;
            stats.rx_bytes += s.rx_bytes;
            stats.rx_refused += s.rx_refused;
            stats.rx_stall_dropped += s.rx_stall_dropped;
            stats.stalls += s.stalls;
            stats.rx_grant_errors += s.rx_grant_errors;
            stats.sw_csum += s.sw_csum;
        }
        Record {
            fe: self.fe,
            devid: self.devid.clone(),
            queues: self.info.queues.len(),
            split: self
                .info
                .queues
                .first()
                .is_some_and(|q| matches!(q.evtchn, EvtchnKeys::Split { .. })),
            ctrl: self.info.ctrl.is_some(),
            feat: self.info.features,
            stats,
            failure: self.failure.clone(),
            live,
        }
    }
}

/// The uplink: our netfront to dom0.
struct Uplink {
    setup: Setup<'static, NetPlat>,
    offer: BackendOffer,
    mac: [u8; 6],
    steering: Steering,
}

struct Shared {
    ev: Events,
    gt: &'static Gnttab,
    pool: &'static PagePool,
    slots: &'static Slots,
    cfg: FrontendConfig,
    uplink: Option<Uplink>,
    uplink_error: Option<String>,
    uplink_connects: u32,
    vifs: Vec<Vif>,
    next_vif: u32,
    records: Vec<Record>,
    macs: VecDeque<([u8; 6], Port)>,
    backlog: VecDeque<(Vec<u8>, PacketMeta)>,
    counters: Counters,
    /// Backend directories whose connection failed since the last round (to be moved to
    /// `Closing` through the bus).
    newly_failed: Vec<String>,
    /// Connection attempts and failures per device.
    tallies: Vec<Tally>,
}

impl Shared {
    fn back_plat(&self) -> BackPlat {
        BackPlat {
            ev: self.ev,
            pool: self.pool,
            slots: self.slots,
        }
    }

    fn net_plat(&self) -> NetPlat {
        NetPlat::new(self.ev, self.gt, self.pool)
    }

    /// What we offer a frontend: GSO only if every GSO packet can leave through the uplink.
    fn offer(&self) -> BackendFeatures {
        let gso = self.uplink.as_ref().is_some_and(|u| {
            u.offer.sg && u.offer.gso_v4 && u.offer.gso_v6 && !u.setup.queues.is_empty()
        });
        BackendFeatures {
            max_queues: 4,
            gso,
            ..BackendFeatures::default()
        }
    }

    fn offloads(&self) -> Offloads {
        let o = self.offer();
        Offloads {
            csum: true,
            gso: o.gso,
        }
    }

    fn drop_uplink(&mut self) {
        if let Some(mut u) = self.uplink.take() {
            u.setup.queues.clear();
            u.setup.ctrl = None;
            let mut plat = self.net_plat();
            u.setup.resources.release(&mut plat);
        }
        self.backlog.clear();
    }

    /// Ends the connection of backend directory `dir`, keeping its record.
    fn drop_vif(&mut self, dir: &str) {
        let Some(i) = self.vifs.iter().position(|v| v.dir == dir) else {
            return;
        };
        let mut v = self.vifs.swap_remove(i);
        let rec = v.record(false);
        crate::e9!("dd-net: {} disconnected: {}", v.dir, rec.line());
        self.keep(rec);
        let port = Port::Vif(v.id);
        self.macs.retain(|(_, p)| *p != port);
        v.conn.queues.clear();
        v.conn.ctrl = None;
        let mut plat = self.back_plat();
        v.conn.resources.release(&mut plat);
    }

    /// Counts a connection attempt (`failure` = `None`) or a failure of device `fe`/`devid`.
    fn tally(&mut self, fe: u16, devid: &str, failure: Option<&str>) {
        let i = match self
            .tallies
            .iter()
            .position(|t| t.fe == fe && t.devid == devid)
        {
            Some(i) => i,
            None => {
                if self.tallies.len() >= MAX_RECORDS {
                    self.tallies.remove(0);
                }
                self.tallies.push(Tally {
                    fe,
                    devid: devid.to_string(),
                    attempts: 0,
                    failures: 0,
                    unexplained: 0,
                    last: None,
                });
                self.tallies.len() - 1
            }
        };
        let t = &mut self.tallies[i];
        match failure {
            None => t.attempts += 1,
            Some(r) => {
                t.failures += 1;
                if r.is_empty() {
                    t.unexplained += 1;
                }
                t.last = Some(r.to_string());
            }
        }
    }

    fn keep(&mut self, rec: Record) {
        self.records
            .retain(|r| !(r.fe == rec.fe && r.devid == rec.devid));
        if self.records.len() >= MAX_RECORDS {
            self.records.remove(0);
        }
        self.records.push(rec);
    }

    fn learn(&mut self, mac: [u8; 6], port: Port) {
        if mac[0] & 1 == 1 {
            return;
        }
        if let Some(e) = self.macs.iter_mut().find(|(m, _)| *m == mac) {
            e.1 = port;
            return;
        }
        if self.macs.len() >= MACS {
            self.macs.pop_front();
        }
        self.macs.push_back((mac, port));
    }

    /// Sends `frame` from port `from` to where its destination is.
    fn forward(&mut self, from: Port, frame: Vec<u8>, meta: PacketMeta) {
        let (Some(dst), Some(src)) = (frame.get(0..6), frame.get(6..12)) else {
            return;
        };
        let dst: [u8; 6] = dst.try_into().unwrap_or([0; 6]);
        let src: [u8; 6] = src.try_into().unwrap_or([0; 6]);
        self.learn(src, from);
        let known = (dst[0] & 1 == 0)
            .then(|| self.macs.iter().find(|(m, _)| *m == dst).map(|e| e.1))
            .flatten();
        match known {
            Some(p) if p == from => {}
            Some(p) => self.send_to(p, frame, meta),
            None => {
                self.counters.flooded += 1;
                let mut targets: Vec<Port> = self.vifs.iter().map(|v| Port::Vif(v.id)).collect();
                targets.push(Port::Uplink);
                targets.retain(|p| *p != from);
                if let Some((last, rest)) = targets.split_last() {
                    for p in rest {
                        self.send_to(*p, frame.clone(), meta);
                    }
                    self.send_to(*last, frame, meta);
                }
            }
        }
    }

    fn send_to(&mut self, to: Port, frame: Vec<u8>, meta: PacketMeta) {
        match to {
            Port::Uplink => {
                if self.uplink.is_none() {
                    self.counters.uplink_refused += 1;
                } else if self.backlog.len() >= BACKLOG {
                    self.counters.backlog_drops += 1;
                } else {
                    self.backlog.push_back((frame, meta));
                    self.counters.max_backlog = self.counters.max_backlog.max(self.backlog.len());
                }
            }
            Port::Vif(id) => {
                let Some(v) = self.vifs.iter_mut().find(|v| v.id == id) else {
                    return;
                };
                if v.failure.is_some() {
                    return;
                }
                if v.info.features.mcast_filter && !v.mcast.passes(&frame) {
                    self.counters.mcast_filtered += 1;
                    return;
                }
                let (qi, hash) = v.steering.select(&frame);
                let Some(q) = v.conn.queues.get_mut(usize::from(qi)) else {
                    return;
                };
                let meta = PacketMeta {
                    hash: hash.or(meta.hash),
                    ..meta
                };
                match q.enqueue_rx(&frame, &meta) {
                    Ok(()) => {
                        let c = &mut self.counters;
                        c.down_frames += 1;
                        c.down_bytes += frame.len() as u64;
                        c.down_gso += u64::from(meta.gso.is_some());
                        c.down_csum_partial += u64::from(meta.csum == Csum::Partial);
                    }
                    Err(_) => self.counters.vif_refused += 1,
                }
            }
        }
    }

    /// Moves the backlog onto the uplink's rings as far as they have room.
    fn flush_backlog(&mut self) -> bool {
        let Some(u) = self.uplink.as_mut() else {
            self.backlog.clear();
            return false;
        };
        let mut any = false;
        while let Some((frame, meta)) = self.backlog.front() {
            let (qi, _) = u.steering.select(frame);
            let Some(q) = u.setup.queues.get_mut(usize::from(qi)) else {
                break;
            };
            let mut r = q.send(frame, meta);
            if r == Err(xen_netfront::SendError::Busy) {
                // Reap completions, then try once more.
                let _ = q.poll_tx();
                r = q.send(frame, meta);
            }
            match r {
                Ok(()) => {
                    let c = &mut self.counters;
                    c.up_frames += 1;
                    c.up_bytes += frame.len() as u64;
                    c.up_gso += u64::from(meta.gso.is_some());
                    c.up_csum_partial += u64::from(meta.csum == Csum::Partial);
                }
                Err(xen_netfront::SendError::Busy) => break,
                Err(_) => self.counters.uplink_refused += 1,
            }
            any = true;
            self.backlog.pop_front();
        }
        any
    }

    /// One round over every ring: whether anything moved, and whether a core has more
    /// to do right away.
    fn poll(&mut self, now: u64) -> (bool, bool) {
        let mut any = false;
        let mut more = false;
        let mut frames: Vec<(Vec<u8>, PacketMeta)> = Vec::new();
        // Uplink: completions, then received frames (unless a vif's RX backlog is high).
        let limits = Limits::default();
        let vif_pressure = self.vifs.iter().any(|v| {
            v.conn.queues.iter().any(|q| {
                let (packets, bytes) = q.rx_queued();
                packets > limits.rx_queue_packets / 2 || bytes > limits.rx_queue_bytes / 2
            })
        });
        if let Some(u) = self.uplink.as_mut() {
            let mut error = None;
            for q in &mut u.setup.queues {
                match q.poll_tx() {
                    Ok(n) => any |= n > 0,
                    Err(e) => error = Some(format!("uplink tx: {e:?}")),
                }
                if vif_pressure {
                    continue;
                }
                match q.poll_rx(|data, meta| frames.push((data.to_vec(), *meta))) {
                    Ok(w) => {
                        any |= w.packets > 0;
                        more |= w.more;
                    }
                    Err(e) => error = Some(format!("uplink rx: {e:?}")),
                }
            }
            if let Some(e) = error {
                if self.uplink_error.is_none() {
                    crate::e9!("dd-net: {e}");
                    self.uplink_error = Some(e);
                }
            }
        }
        for (f, m) in frames.drain(..) {
            self.forward(Port::Uplink, f, m);
        }
        // Backend vifs: TX (unless the uplink backlog is high), then RX.
        let offloads = self.offloads();
        let mut from_vifs: Vec<(u32, Vec<(Vec<u8>, PacketMeta)>)> = Vec::new();
        for v in &mut self.vifs {
            if v.failure.is_some() {
                continue;
            }
            if let Some(c) = v.conn.ctrl.as_mut() {
                if let Err(e) = c.process(&mut v.steering) {
                    v.failure = Some(format!("ctrl ring: {e:?}"));
                    self.newly_failed.push(v.dir.clone());
                    continue;
                }
            }
            let mut out = Vec::new();
            if self.backlog.len() < BACKLOG / 2 {
                let mut io = Collect {
                    offloads,
                    out: &mut out,
                    mcast: &mut v.mcast,
                };
                for q in &mut v.conn.queues {
                    match q.process_tx(&mut io) {
                        Ok(w) => {
                            any |= w.packets > 0;
                            more |= w.more;
                        }
                        Err(e) => {
                            v.failure = Some(format!("queue {} tx: {e:?}", q.index()));
                            self.newly_failed.push(v.dir.clone());
                            break;
                        }
                    }
                }
            }
            if let Some(f) = &v.failure {
                crate::e9!("dd-net: {} failed: {f}", v.dir);
            }
            from_vifs.push((v.id, out));
        }
        for (id, out) in from_vifs {
            for (f, m) in out {
                self.forward(Port::Vif(id), f, m);
            }
        }
        any |= self.flush_backlog();
        for v in &mut self.vifs {
            if v.failure.is_some() {
                continue;
            }
            for q in &mut v.conn.queues {
                let _ = q.tick(now);
                match q.process_rx(now) {
                    Ok(w) => {
                        any |= w.packets > 0;
                        more |= w.more;
                    }
                    Err(e) => {
                        v.failure = Some(format!("queue {} rx: {e:?}", q.index()));
                        self.newly_failed.push(v.dir.clone());
                        crate::e9!("dd-net: {} failed: queue {} rx: {e:?}", v.dir, q.index());
                        break;
                    }
                }
            }
        }
        (any, more)
    }
}

/// The `NetIo` of a backend vif's TX path: frames are collected, then bridged.
struct Collect<'a> {
    offloads: Offloads,
    out: &'a mut Vec<(Vec<u8>, PacketMeta)>,
    mcast: &'a mut McastFilter,
}

impl NetIo for Collect<'_> {
    fn offloads(&self) -> Offloads {
        self.offloads
    }

    fn deliver(&mut self, _queue: u16, data: &[u8], meta: &PacketMeta) {
        self.out.push((data.to_vec(), *meta));
    }

    fn multicast(&mut self, add: bool, mac: [u8; 6]) -> bool {
        self.mcast.apply(add, mac)
    }
}

// ------------------------------------------------------------------------ xenbus drivers

/// The `vif` driver of the backend bus: the netback core behind the xenbus state machine.
struct BackDriver {
    shared: Rc<RefCell<Shared>>,
}

fn mac_text(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

impl Driver<GuestXs> for BackDriver {
    fn devtype(&self) -> &str {
        "vif"
    }

    fn probe(&mut self, xs: &mut GuestXs, dev: &mut Device) -> Result<(), XsErr> {
        let offer = self.shared.borrow().offer();
        be_config::publish(xs, dev.nodename(), &offer)?;
        crate::e9!(
            "dd-net: {} probed (frontend d{}); offer queues {} gso {} split {} ctrl {}",
            dev.nodename(),
            dev.otherend_id(),
            offer.max_queues,
            offer.gso,
            offer.split_evtchn,
            offer.ctrl_ring
        );
        dev.switch_state(xs, XenbusState::InitWait)
    }

    fn otherend_changed(
        &mut self,
        xs: &mut GuestXs,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        match state {
            XenbusState::Initialised | XenbusState::Connected
                if dev.state() == XenbusState::InitWait =>
            {
                let mut sh = self.shared.borrow_mut();
                let domid = dev.otherend_id();
                sh.tally(domid, dev.id(), None);
                // A refused connection is reported (reason in `error`, `Closing`) and the
                // frontend may close and try again; it does not kill the device.
                let refuse =
                    |sh: &mut Shared, xs: &mut GuestXs, dev: &mut Device, reason: String| {
                        sh.tally(domid, dev.id(), Some(&reason));
                        report_failure(xs, dev, &reason);
                        Ok(())
                    };
                if sh.vifs.len() >= MAX_VIFS {
                    return refuse(&mut sh, xs, dev, format!("more than {MAX_VIFS} vifs"));
                }
                let offer = sh.offer();
                let fe = dev.otherend().to_string();
                let info = match be_config::read_frontend(xs, &fe, &offer) {
                    Ok(i) => i,
                    Err(e) => {
                        return refuse(&mut sh, xs, dev, format!("frontend keys refused: {e:?}"))
                    }
                };
                let mut plat = sh.back_plat();
                let conn = match xen_netback::connect(&mut plat, domid, &info, Limits::default()) {
                    Ok(c) => c,
                    Err(e) => return refuse(&mut sh, xs, dev, format!("connect: {e:?}")),
                };
                let id = sh.next_vif;
                sh.next_vif += 1;
                let nq = u32::try_from(conn.queues.len()).unwrap_or(1);
                let v = Vif {
                    id,
                    dir: dev.nodename().to_string(),
                    fe: domid,
                    devid: dev.id().to_string(),
                    conn,
                    info,
                    steering: Steering::new(nq),
                    mcast: McastFilter::default(),
                    failure: None,
                };
                let rec = v.record(true);
                crate::e9!("dd-net: {} connected: {}", v.dir, rec.line());
                sh.keep(rec);
                sh.vifs.push(v);
                drop(sh);
                dev.switch_state(xs, XenbusState::Connected)
            }
            XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown => {
                self.shared.borrow_mut().drop_vif(dev.nodename());
                let to = if state == XenbusState::Closing {
                    XenbusState::Closing
                } else {
                    XenbusState::Closed
                };
                if dev.state() != to && dev.state().can_switch_to(to) {
                    dev.switch_state(xs, to)?;
                }
                Ok(())
            }
            // The frontend starts again after a close: offer again.
            XenbusState::Initialising if dev.state() == XenbusState::Closed => {
                let offer = self.shared.borrow().offer();
                // A new connection starts without the last one's failure.
                let _ = xs.rm(&dev.node("error"));
                be_config::publish(xs, dev.nodename(), &offer)?;
                dev.switch_state(xs, XenbusState::InitWait)
            }
            _ => Ok(()),
        }
    }

    fn remove(&mut self, _xs: &mut GuestXs, dev: &mut Device) {
        self.shared.borrow_mut().drop_vif(dev.nodename());
    }
}

/// The `vif` driver of the frontend bus: the uplink to dom0's xen-netback.
struct UplinkDriver {
    shared: Rc<RefCell<Shared>>,
}

impl Driver<GuestXs> for UplinkDriver {
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
        let mut sh = self.shared.borrow_mut();
        if matches!(state, XenbusState::Closing | XenbusState::Closed) {
            sh.drop_uplink();
            if dev.state() != XenbusState::Closed {
                dev.switch_state(xs, XenbusState::Closed)?;
            }
            return Ok(());
        }
        if state != XenbusState::InitWait
            || dev.state() != XenbusState::Initialising
            || sh.uplink.is_some()
        {
            return Ok(());
        }
        let be = dev.otherend().to_string();
        let fe = dev.nodename().to_string();
        let offer = negotiate::read_offer(xs, &be)?;
        let mac = negotiate::read_mac(xs, &fe)?.ok_or(XsErr::BadValue)?;
        let trusted = negotiate::read_trusted(xs, &fe)?;
        let mut plat = sh.net_plat();
        let cfg = sh.cfg;
        let setup = match negotiate::setup(&mut plat, dev.otherend_id(), &offer, &cfg, trusted) {
            Ok(s) => s,
            Err(e) => {
                sh.uplink_error = Some(format!("uplink setup: {e:?}"));
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
            &cfg,
        );
        if let Err(e) = published.and_then(|()| dev.switch_state(xs, XenbusState::Connected)) {
            sh.uplink_error = Some(format!("uplink publish: {e}"));
            let mut setup = setup;
            setup.queues.clear();
            setup.ctrl = None;
            setup.resources.release(&mut plat);
            return Err(e);
        }
        let nq = u32::try_from(setup.queues.len()).unwrap_or(1);
        crate::e9!(
            "dd-net: uplink {fe} mac {} to d{}: queues {nq}/{} split {} sg {} gso4 {} gso6 {} csum6 {} ctrl {}",
            mac_text(mac),
            dev.otherend_id(),
            offer.max_queues,
            setup.split,
            offer.sg,
            offer.gso_v4,
            offer.gso_v6,
            offer.ipv6_csum,
            setup.ctrl.is_some()
        );
        sh.uplink = Some(Uplink {
            setup,
            offer,
            mac,
            steering: Steering::new(nq),
        });
        sh.uplink_connects += 1;
        Ok(())
    }

    fn remove(&mut self, _xs: &mut GuestXs, _dev: &mut Device) {
        self.shared.borrow_mut().drop_uplink();
    }
}

// ------------------------------------------------------------------------ the service

/// The network backend service of the driver domain: the backend `vif` driver on the
/// driver domain's backend bus, the uplink on a frontend bus of its own, and the bridge.
pub struct DdNet {
    shared: Rc<RefCell<Shared>>,
    fe_bus: Bus<GuestXs>,
    /// When the counters were last printed, and what they were.
    printed: (u64, Counters),
}

/// Starts the service: registers the backend driver on `bus` (started by the caller) and
/// starts the uplink's frontend bus (our `device/vif` from xl), whose watch events arrive
/// through [`Service::on_watch`].
pub fn start(ctx: &DdCtx, xs: &mut GuestXs, bus: &mut Bus<GuestXs>) -> Box<dyn Service> {
    let shared = Rc::new(RefCell::new(Shared {
        ev: ctx.ev,
        gt: ctx.gt,
        pool: ctx.pool,
        slots: ctx.slots,
        cfg: FrontendConfig {
            queues: 2,
            ..FrontendConfig::default()
        },
        uplink: None,
        uplink_error: None,
        uplink_connects: 0,
        vifs: Vec::new(),
        next_vif: 0,
        records: Vec::new(),
        macs: VecDeque::new(),
        backlog: VecDeque::new(),
        counters: Counters::default(),
        newly_failed: Vec::new(),
        tallies: Vec::new(),
    }));
    bus.register(Box::new(BackDriver {
        shared: Rc::clone(&shared),
    }));
    let mut fe_bus: Bus<GuestXs> = Bus::new(Role::Frontend, ctx.domid);
    fe_bus.register(Box::new(UplinkDriver {
        shared: Rc::clone(&shared),
    }));
    if let Err(e) = fe_bus.start(xs) {
        shared.borrow_mut().uplink_error = Some(format!("frontend bus: {e}"));
    }
    Box::new(DdNet {
        shared,
        fe_bus,
        printed: (0, Counters::default()),
    })
}

impl DdNet {
    /// The uplink in one line (negotiation and counters).
    fn uplink_line(&self) -> String {
        let sh = self.shared.borrow();
        let Some(u) = &sh.uplink else {
            return format!(
                "uplink down ({} connects){}",
                sh.uplink_connects,
                sh.uplink_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(": {e}"))
            );
        };
        let (mut tx, mut rx, mut err, mut sw) = (0, 0, 0, 0);
        for q in &u.setup.queues {
            let s = q.stats();
            tx += s.tx_packets;
            rx += s.rx_packets;
            err += s.tx_errors + s.rx_dropped;
            sw += s.sw_csum;
        }
        format!(
            "uplink {} q{} split {} gso {}/{}: tx {tx}p rx {rx}p err {err} swcsum {sw}",
            mac_text(u.mac),
            u.setup.queues.len(),
            u8::from(u.setup.split),
            u8::from(u.offer.gso_v4),
            u8::from(u.offer.gso_v6),
        )
    }

    /// The bridge counters in one line.
    fn bridge_line(&self) -> String {
        let c = self.shared.borrow().counters;
        format!(
            "bridge up {}f/{}B (gso {} csum-partial {}) down {}f/{}B (gso {} csum-partial {}) flood {} drops {}/{}/{} backlog max {}",
            c.up_frames,
            c.up_bytes,
            c.up_gso,
            c.up_csum_partial,
            c.down_frames,
            c.down_bytes,
            c.down_gso,
            c.down_csum_partial,
            c.flooded,
            c.backlog_drops,
            c.uplink_refused,
            c.vif_refused,
            c.max_backlog,
        )
    }

    /// The verdict on a hostile frontend's vif: it failed connections (each counted once,
    /// each with a reason in `error`), and none of its connections is still live (rings
    /// unmapped, ports closed: everything was released when it failed or closed).
    fn hostile_report(&self, fe: u16, devid: &str) -> Result<String, String> {
        let sh = self.shared.borrow();
        let Some(t) = sh.tallies.iter().find(|t| t.fe == fe && t.devid == devid) else {
            return Err(format!("vif {fe}/{devid} never tried to connect"));
        };
        let live = sh
            .vifs
            .iter()
            .filter(|v| v.fe == fe && v.devid == devid)
            .count();
        let last: String = t.last.as_deref().unwrap_or("-").chars().take(70).collect();
        let line = format!(
            "d{fe} vif {devid}: {} failures in {} connections, {} unexplained, {live} live; last: {last}",
            t.failures, t.attempts, t.unexplained
        );
        if t.failures == 0 || t.unexplained > 0 || live > 0 {
            Err(line)
        } else {
            Ok(line)
        }
    }

    /// The record of backend device `vif/<fe>/<devid>` (live or finished).
    fn record(&self, fe: u16, devid: &str) -> Option<Record> {
        let sh = self.shared.borrow();
        if let Some(v) = sh.vifs.iter().find(|v| v.fe == fe && v.devid == devid) {
            return Some(v.record(true));
        }
        sh.records
            .iter()
            .find(|r| r.fe == fe && r.devid == devid)
            .cloned()
    }
}

impl Service for DdNet {
    fn ports(&self) -> Vec<u32> {
        let sh = self.shared.borrow();
        let mut v = Vec::new();
        let mut push = |tx: u32, rx: u32| {
            v.push(tx);
            if rx != tx {
                v.push(rx);
            }
        };
        if let Some(u) = &sh.uplink {
            for q in &u.setup.queues {
                push(q.ports().tx, q.ports().rx);
            }
        }
        for vif in &sh.vifs {
            for q in &vif.conn.queues {
                push(q.ports().tx, q.ports().rx);
            }
            if let Some(c) = &vif.conn.ctrl {
                push(c.port(), c.port());
            }
        }
        v
    }

    fn poll(&mut self, xs: &mut GuestXs, bus: &mut Bus<GuestXs>, _pending: &[u32]) -> Round {
        // Every ring is looked at each round (the cores only read indexes when idle), so the
        // pending set is not needed to find the work.
        let ev = self.shared.borrow().ev;
        let now = time::now_ns(&ev.si).unwrap_or(0);
        let (any, more) = self.shared.borrow_mut().poll(now);
        // A frontend that broke the protocol: its device goes to Closing (with `error`), as
        // `xenbus_dev_fatal` does; the frontend's close then releases the connection.
        let failed = core::mem::take(&mut self.shared.borrow_mut().newly_failed);
        // Its rings are released at once (the bus ignores a failed device's other end).
        for dir in failed {
            let (fe, devid, reason) = {
                let sh = self.shared.borrow();
                let v = sh.vifs.iter().find(|v| v.dir == dir);
                (
                    v.map_or(0, |v| v.fe),
                    v.map_or(String::new(), |v| v.devid.clone()),
                    v.and_then(|v| v.failure.clone()).unwrap_or_default(),
                )
            };
            self.shared.borrow_mut().tally(fe, &devid, Some(&reason));
            bus.with_device(xs, &dir, |_, xs, dev| report_failure(xs, dev, &reason));
            self.shared.borrow_mut().drop_vif(&dir);
        }
        // Progress on the debug port while frames are bridged: every 5 s at most.
        let c = self.shared.borrow().counters;
        let moved =
            (c.up_frames, c.down_frames) != (self.printed.1.up_frames, self.printed.1.down_frames);
        if moved && now.saturating_sub(self.printed.0) >= 5_000_000_000 {
            self.printed = (now, c);
            crate::e9!("dd-net: {}", self.bridge_line());
        }
        Round { any, more }
    }

    fn on_watch(
        &mut self,
        xs: &mut GuestXs,
        _bus: &mut Bus<GuestXs>,
        id: WatchId,
        ev: &WatchEvent,
    ) -> bool {
        self.fe_bus.handle_event(xs, id, ev)
    }

    fn report(
        &self,
        devtype: &str,
        fe: u16,
        id: &str,
        expect: &str,
    ) -> Option<Result<String, String>> {
        if devtype != "vif" {
            return None;
        }
        let uplink = self.uplink_line();
        let bridge = self.bridge_line();
        crate::e9!("dd-net: {uplink}");
        crate::e9!("dd-net: {bridge}");
        if expect == "hostile" {
            return Some(self.hostile_report(fe, id));
        }
        let Some(rec) = self.record(fe, id) else {
            return Some(Err(format!("vif {fe}/{id} never connected; {uplink}")));
        };
        crate::e9!("dd-net: {}", rec.line());
        let c = self.shared.borrow().counters;
        let s = rec.stats;
        let verdict = if let Some(f) = &rec.failure {
            Err(format!("{}: queue failed: {f}", rec.line()))
        } else if s.tx_packets == 0 || s.rx_packets == 0 || c.up_frames == 0 || c.down_frames == 0 {
            Err(format!("no traffic both ways: {}", rec.line()))
        } else if s.tx_grant_errors + s.rx_grant_errors > 0 {
            Err(format!("grant copy errors: {}", rec.line()))
        } else {
            Ok(rec.line())
        };
        Some(verdict)
    }
}
