//! One queue's data path: a TX ring and an RX ring, both moved by grant copy.
//!
//! # TX (guest → host)
//!
//! Requests are copied off the ring once (`BackRing::pop_request`) into a
//! [`TxAssembler`], which frames and validates each packet. Valid packets are copied out of the
//! frontend's grants into our own staging pages with *one* batched `GNTTABOP_copy` per round
//! (never mapping guest memory), each entry's status is checked (XSA-361 class: a failed entry
//! drops its packet, nothing panics), the data is handed to [`NetIo::deliver`], and every slot
//! is answered (`OKAY`/`ERROR` per data slot, `NULL` per extra slot). A round takes at most
//! `tx_budget` packets, so one frontend cannot monopolise the backend; `Work::more` asks the
//! caller to come back.
//!
//! # RX (host → guest)
//!
//! [`Queue::enqueue_rx`] copies a packet into a bounded queue (packets *and* bytes are capped:
//! XSA-392, a guest that posts no buffers cannot make the host hold unbounded memory).
//! [`Queue::process_rx`] takes as many frontend-posted buffers as the head packet needs
//! (copying each request once), stages the data in local pages and grant-copies it into the
//! frontend's buffers, then answers in request order with the request's own id (extras use a
//! slot of their own). When the frontend posts too few buffers for longer than
//! `stall_timeout_ns` the queue is declared stalled: its packets are freed and new ones are
//! refused until buffers appear again (Linux's `rx_stall_timeout`). Time is passed in.
//!
//! # Errors
//!
//! A ring fault or a framing violation ([`TxFault`]) is sticky: the queue refuses all further
//! work and the control path should fail the device (`xenbus` `Closing`). Nothing is freed
//! while the frontend may still expect a response for it; dropping a faulted queue releases
//! only our own memory (the XSA-374 class: an error path must not break lifetimes).

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use xen_gnttab::{CopyPtr, GrantCopy};
use xen_netif::raw::{RxRequest, RxResponse, TxRequest, TxResponse};
use xen_netif::tx::{TxAssembler, TxDrop, TxFault, TxPacket};
use xen_netif::wire::{encode_extra, extra_as_rx_slot, Extra};
use xen_netif::{csum, Csum, GsoKind, PacketMeta, ETH_HLEN, MAX_PACKET, PAGE_SIZE};
use xen_ring::{BackRing, Fault};
use xen_sys::consts::{NetRxFlags, NetifStatus};

use crate::config::Negotiated;
use crate::{DataPlane, LocalPage, NetIo};

/// Pages one packet can need (65535 bytes from page offset 0).
const PAGES_PER_PACKET: usize = MAX_PACKET.div_ceil(PAGE_SIZE);

/// Per-queue limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Packets taken from the TX ring per [`Queue::process_tx`] call.
    pub tx_budget: u32,
    /// Packets put on the RX ring per [`Queue::process_rx`] call.
    pub rx_budget: u32,
    /// Packets waiting for RX buffers.
    pub rx_queue_packets: usize,
    /// Bytes waiting for RX buffers.
    pub rx_queue_bytes: usize,
    /// How long the head packet may wait for buffers before the queue is stalled (ns).
    pub stall_timeout_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tx_budget: 64,
            rx_budget: 64,
            rx_queue_packets: 512,
            rx_queue_bytes: 2 << 20,
            stall_timeout_ns: 10_000_000_000,
        }
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Packets delivered to the host.
    pub tx_packets: u64,
    /// Bytes delivered to the host.
    pub tx_bytes: u64,
    /// TX packets dropped (malformed, grant failure, offload refused).
    pub tx_dropped: u64,
    /// Of which: grant copy failures.
    pub tx_grant_errors: u64,
    /// Multicast-control requests handled.
    pub tx_mcast: u64,
    /// Packets put on the RX ring.
    pub rx_packets: u64,
    /// Bytes put on the RX ring.
    pub rx_bytes: u64,
    /// RX packets refused at enqueue (queue full, stalled, unsupported by the frontend).
    pub rx_refused: u64,
    /// RX packets freed because the queue stalled.
    pub rx_stall_dropped: u64,
    /// Times the queue stalled.
    pub stalls: u64,
    /// RX packets whose grant copy failed (answered with an error status).
    pub rx_grant_errors: u64,
    /// Checksums completed in software (the other side could not take `csum_blank`).
    pub sw_csum: u64,
}

/// What a processing call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// Packets handled.
    pub packets: u32,
    /// More work is pending: call again (from a task, not in a loop in the interrupt path).
    pub more: bool,
}

/// A sticky queue failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// A ring index violation.
    Ring(Fault),
    /// A TX framing violation.
    Tx(TxFault),
}

impl From<Fault> for QueueError {
    fn from(f: Fault) -> Self {
        QueueError::Ring(f)
    }
}

/// Why an RX packet was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxRefused {
    /// The queue is at its packet or byte limit.
    Full,
    /// The queue is stalled (the frontend posts no buffers).
    Stalled,
    /// Shorter than an Ethernet header or longer than netif allows.
    BadLength,
    /// Needs more than one slot but the frontend has no `feature-sg`.
    NoSg,
    /// GSO of a flavour the frontend did not ask for.
    GsoUnsupported,
    /// The queue has failed.
    Failed,
}

#[derive(Debug)]
struct Queued {
    data: Vec<u8>,
    meta: PacketMeta,
}

/// The ports of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Our port for TX events.
    pub tx: u32,
    /// Our port for RX events (equal to `tx` without split event channels).
    pub rx: u32,
}

/// One netif queue, backend side.
///
/// # Invariants
/// * Every request taken off a ring is answered exactly once, in request order on the RX ring;
///   a fault stops all ring work, so nothing is answered twice.
/// * `rxq_bytes` is the sum of the queued packets' lengths, `<= limits.rx_queue_bytes`.
#[derive(Debug)]
pub struct Queue<'a, H: DataPlane> {
    hv: H,
    index: u16,
    domid: u16,
    ports: Ports,
    tx: BackRing<'a, TxRequest, TxResponse>,
    rx: BackRing<'a, RxRequest, RxResponse>,
    asm: TxAssembler,
    tx_pages: Vec<LocalPage<'a>>,
    rx_pages: Vec<LocalPage<'a>>,
    feat: Negotiated,
    limits: Limits,
    rxq: VecDeque<Queued>,
    rxq_bytes: usize,
    blocked_since: Option<u64>,
    stalled: bool,
    failed: Option<QueueError>,
    stats: QueueStats,
    scratch: Vec<u8>,
}

struct TxPlan {
    pkt: TxPacket,
    ops: core::ops::Range<usize>,
}

struct RxPlan {
    /// `(request id, ring slot kind)` in request order: `Some(len)` data, `None` extra.
    slots: Vec<(u16, Option<u16>)>,
    ops: core::ops::Range<usize>,
    flags: NetRxFlags,
    extras: Vec<Extra>,
}

impl<'a, H: DataPlane> Queue<'a, H> {
    /// A queue over rings the frontend initialised (attached without writing to them, so a
    /// reconnecting frontend's rings are never reset by us: mirage-net-xen PR #68), with
    /// staging pages for each direction (at least [`PAGES_PER_PACKET`] each).
    ///
    /// # Errors
    /// The ring's setup error if a ring region is unusable or already inconsistent.
    #[expect(
        clippy::too_many_arguments,
        reason = "one constructor for the whole queue"
    )]
    pub fn new(
        hv: H,
        index: u16,
        domid: u16,
        ports: Ports,
        tx_ring: xen_shmem::SharedMem<'a>,
        rx_ring: xen_shmem::SharedMem<'a>,
        tx_pages: Vec<LocalPage<'a>>,
        rx_pages: Vec<LocalPage<'a>>,
        feat: Negotiated,
        limits: Limits,
    ) -> Result<Self, xen_ring::SetupError> {
        Ok(Queue {
            hv,
            index,
            domid,
            ports,
            tx: BackRing::attach(tx_ring)?,
            rx: BackRing::attach(rx_ring)?,
            asm: TxAssembler::new(feat.tx_gso_allowed),
            tx_pages,
            rx_pages,
            feat,
            limits,
            rxq: VecDeque::new(),
            rxq_bytes: 0,
            blocked_since: None,
            stalled: false,
            failed: None,
            stats: QueueStats::default(),
            scratch: vec![0; MAX_PACKET],
        })
    }

    /// Queue number.
    #[must_use]
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The ports.
    #[must_use]
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// The sticky failure, if any.
    #[must_use]
    pub fn failure(&self) -> Option<QueueError> {
        self.failed
    }

    /// Whether the RX side is stalled.
    #[must_use]
    pub fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// Packets and bytes waiting for RX buffers.
    #[must_use]
    pub fn rx_queued(&self) -> (usize, usize) {
        (self.rxq.len(), self.rxq_bytes)
    }

    /// The negotiated features.
    #[must_use]
    pub fn features(&self) -> Negotiated {
        self.feat
    }

    fn fail(&mut self, e: QueueError) -> QueueError {
        if self.failed.is_none() {
            self.failed = Some(e);
            // Free what we hold; nothing of the frontend's is referenced any more.
            self.rxq.clear();
            self.rxq_bytes = 0;
        }
        self.failed.unwrap_or(e)
    }

    fn notify(&self, port: u32) {
        self.hv.notify(port);
    }

    /// Handles a TX event: takes up to `tx_budget` packets off the TX ring, delivers the good
    /// ones to `io` and answers every slot.
    ///
    /// # Errors
    /// The sticky [`QueueError`].
    pub fn process_tx(&mut self, io: &mut impl NetIo) -> Result<Work, QueueError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut work = Work::default();
        let mut plans: Vec<TxPlan> = Vec::new();
        let mut ops: Vec<GrantCopy> = Vec::new();
        let mut page = 0usize;
        loop {
            if work.packets >= self.limits.tx_budget
                || self.tx_pages.len().saturating_sub(page) < PAGES_PER_PACKET
            {
                work.more = true;
                break;
            }
            let req = match self.tx.pop_request() {
                Ok(Some(r)) => r,
                Ok(None) => {
                    if self.asm.in_packet() {
                        return Err(self.fail(QueueError::Tx(TxFault::Incomplete)));
                    }
                    break;
                }
                Err(f) => return Err(self.fail(f.into())),
            };
            let pkt = match self.asm.push(&req) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(f) => return Err(self.fail(QueueError::Tx(f))),
            };
            work.packets += 1;
            let start = ops.len();
            if pkt.verdict.is_ok() && !pkt.is_mcast_control() {
                // Stage the data contiguously from a fresh page.
                let mut pos = page * PAGE_SIZE;
                for (slot, offset, len) in pkt.data_slots() {
                    let (mut src_off, mut left) = (offset, len);
                    while left > 0 {
                        let dst = &self.tx_pages[pos / PAGE_SIZE];
                        let dst_off = pos % PAGE_SIZE;
                        let n = left.min(u16::try_from(PAGE_SIZE - dst_off).unwrap_or(0));
                        ops.push(GrantCopy::new(
                            CopyPtr::Grant {
                                dom: self.domid,
                                gref: slot.gref,
                            },
                            src_off,
                            CopyPtr::Local { gfn: dst.gfn },
                            u16::try_from(dst_off).unwrap_or(0),
                            n,
                        ));
                        src_off += n;
                        left -= n;
                        pos += usize::from(n);
                    }
                }
                page += pkt.total().div_ceil(PAGE_SIZE);
            }
            plans.push(TxPlan {
                pkt,
                ops: start..ops.len(),
            });
        }
        if !ops.is_empty() {
            self.hv.copy(&mut ops);
        }
        let mut page = 0usize;
        for plan in &plans {
            let p = &plan.pkt;
            let mut verdict = p.verdict;
            if verdict.is_ok() && p.is_mcast_control() {
                self.stats.tx_mcast += 1;
                let ok = p.extras.mcast_add.is_none_or(|m| io.multicast(true, m))
                    && p.extras.mcast_del.is_none_or(|m| io.multicast(false, m));
                if !ok {
                    verdict = Err(TxDrop::NoBuffer);
                }
            } else if verdict.is_ok() {
                let first = page;
                page += p.total().div_ceil(PAGE_SIZE);
                if ops[plan.ops.clone()].iter().any(|o| !o.status.is_ok()) {
                    self.stats.tx_grant_errors += 1;
                    verdict = Err(TxDrop::GrantCopy);
                } else {
                    verdict = self.deliver(io, p, first);
                }
            }
            if verdict.is_err() {
                self.stats.tx_dropped += 1;
            }
            self.respond_tx(p, verdict.is_ok())?;
        }
        match self.tx.push_responses_and_check_notify() {
            Ok(n) if n.is_required() => self.notify(self.ports.tx),
            Ok(_) => {}
            Err(f) => return Err(self.fail(f.into())),
        }
        if !work.more {
            work.more = self
                .tx
                .final_check_for_requests()
                .map_err(|f| self.fail(f.into()))?;
        }
        Ok(work)
    }

    fn deliver(
        &mut self,
        io: &mut impl NetIo,
        p: &TxPacket,
        first_page: usize,
    ) -> Result<(), TxDrop> {
        let total = p.total();
        let buf = &mut self.scratch[..total];
        for (i, chunk) in buf.chunks_mut(PAGE_SIZE).enumerate() {
            let page = self.tx_pages.get(first_page + i).ok_or(TxDrop::NoBuffer)?;
            page.mem
                .copy_to_slice(0, chunk)
                .map_err(|_| TxDrop::NoBuffer)?;
        }
        let mut meta = p.meta();
        let caps = io.offloads();
        if meta.gso.is_some() && !caps.gso {
            return Err(TxDrop::GsoNotAllowed);
        }
        if meta.csum == Csum::Partial && !caps.csum {
            if csum::complete_partial(buf).is_ok() {
                self.stats.sw_csum += 1;
                meta.csum = Csum::Validated;
            } else {
                meta.csum = Csum::None;
            }
        }
        io.deliver(self.index, buf, &meta);
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += total as u64;
        Ok(())
    }

    fn respond_tx(&mut self, p: &TxPacket, ok: bool) -> Result<(), QueueError> {
        let status = if ok {
            NetifStatus::Okay
        } else {
            NetifStatus::Error
        }
        .value();
        let null = NetifStatus::Null.value();
        let push = |q: &mut Self, id: u16, status: i16| {
            q.tx.push_response(&TxResponse { id, status })
                .map_err(|e| match e {
                    xen_ring::PushError::Fault(f) => q.fail(f.into()),
                    // Impossible: every response answers a consumed request.
                    xen_ring::PushError::Full => q.fail(QueueError::Tx(TxFault::Incomplete)),
                })
        };
        let slots = p.slots();
        push(self, slots[0].id, status)?;
        for _ in 0..p.extra_slots {
            push(self, 0, null)?;
        }
        for s in &slots[1..] {
            push(self, s.id, status)?;
        }
        Ok(())
    }

    /// Queues a packet for the guest. The data is copied; `meta` says how its checksum and
    /// segmentation are to be presented.
    ///
    /// # Errors
    /// [`RxRefused`]: the packet was dropped (counted).
    pub fn enqueue_rx(&mut self, data: &[u8], meta: &PacketMeta) -> Result<(), RxRefused> {
        let r = self.check_rx(data, meta);
        if r.is_err() {
            self.stats.rx_refused += 1;
        }
        r
    }

    fn check_rx(&mut self, data: &[u8], meta: &PacketMeta) -> Result<(), RxRefused> {
        if self.failed.is_some() {
            return Err(RxRefused::Failed);
        }
        if self.stalled {
            return Err(RxRefused::Stalled);
        }
        if data.len() < ETH_HLEN || data.len() > MAX_PACKET {
            return Err(RxRefused::BadLength);
        }
        if data.len() > PAGE_SIZE && !self.feat.sg {
            return Err(RxRefused::NoSg);
        }
        if let Some(g) = meta.gso {
            let ok = match g.kind {
                GsoKind::TcpV4 => self.feat.gso_v4,
                GsoKind::TcpV6 => self.feat.gso_v6,
            };
            if !ok {
                return Err(RxRefused::GsoUnsupported);
            }
        }
        if self.rxq.len() >= self.limits.rx_queue_packets
            || self.rxq_bytes + data.len() > self.limits.rx_queue_bytes
        {
            return Err(RxRefused::Full);
        }
        let mut copy = data.to_vec();
        let mut meta = *meta;
        if meta.csum == Csum::Partial {
            let accepted = match csum::parse_l4(&copy) {
                Some(l) if l.ipv6 => self.feat.csum_v6,
                Some(_) => self.feat.csum_v4,
                None => false,
            };
            if !accepted {
                meta.csum = if csum::complete_partial(&mut copy).is_ok() {
                    self.stats.sw_csum += 1;
                    Csum::Validated
                } else {
                    Csum::None
                };
            }
        }
        self.rxq_bytes += copy.len();
        self.rxq.push_back(Queued { data: copy, meta });
        Ok(())
    }

    fn rx_slots_needed(q: &Queued) -> u32 {
        let data = q.data.len().div_ceil(PAGE_SIZE);
        let extras = usize::from(q.meta.gso.is_some()) + usize::from(q.meta.hash.is_some());
        u32::try_from(data + extras).unwrap_or(u32::MAX)
    }

    /// Moves queued packets into the frontend's posted buffers (up to `rx_budget`). `now` is
    /// any monotonic time in ns, used for the stall timeout.
    ///
    /// # Errors
    /// The sticky [`QueueError`].
    pub fn process_rx(&mut self, now: u64) -> Result<Work, QueueError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut work = Work::default();
        let mut plans: Vec<RxPlan> = Vec::new();
        let mut ops: Vec<GrantCopy> = Vec::new();
        let mut page = 0usize;
        while let Some(head) = self.rxq.front() {
            if work.packets >= self.limits.rx_budget {
                work.more = true;
                break;
            }
            let need = Self::rx_slots_needed(head);
            let pages = head.data.len().div_ceil(PAGE_SIZE);
            if self.rx_pages.len().saturating_sub(page) < pages {
                work.more = true;
                break;
            }
            let avail = self
                .rx
                .unconsumed_requests()
                .map_err(|f| self.fail(f.into()))?;
            if avail < need {
                // Ask for an event when the frontend posts more, then look again.
                let again = self
                    .rx
                    .final_check_for_requests()
                    .map_err(|f| self.fail(f.into()))?;
                let avail = self
                    .rx
                    .unconsumed_requests()
                    .map_err(|f| self.fail(f.into()))?;
                if !again || avail < need {
                    self.blocked_since.get_or_insert(now);
                    break;
                }
            }
            self.blocked_since = None;
            self.stalled = false;
            let Some(q) = self.rxq.pop_front() else { break };
            self.rxq_bytes -= q.data.len();
            work.packets += 1;
            let start = ops.len();
            let mut slots = Vec::new();
            let mut extras = Vec::new();
            if let Some(g) = q.meta.gso {
                extras.push(Extra::Gso(g));
            }
            if let Some((kind, value)) = q.meta.hash {
                extras.push(Extra::Hash {
                    kind,
                    alg: 1,
                    value,
                });
            }
            let mut chunks = q.data.chunks(PAGE_SIZE);
            let mut k = 0usize;
            for n in 0..need {
                let req = match self.rx.pop_request() {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err(self.fail(QueueError::Tx(TxFault::Incomplete))),
                    Err(f) => return Err(self.fail(f.into())),
                };
                let is_extra = n >= 1 && (n as usize) <= extras.len();
                if is_extra {
                    slots.push((req.id, None));
                    continue;
                }
                let Some(chunk) = chunks.next() else {
                    slots.push((req.id, Some(0)));
                    continue;
                };
                let lp = &self.rx_pages[page + k];
                k += 1;
                if lp.mem.copy_from_slice(0, chunk).is_err() {
                    return Err(self.fail(QueueError::Tx(TxFault::Incomplete)));
                }
                let len = u16::try_from(chunk.len()).unwrap_or(0);
                ops.push(GrantCopy::new(
                    CopyPtr::Local { gfn: lp.gfn },
                    0,
                    CopyPtr::Grant {
                        dom: self.domid,
                        gref: req.gref,
                    },
                    0,
                    len,
                ));
                slots.push((req.id, Some(len)));
            }
            page += pages;
            let mut flags = match q.meta.csum {
                Csum::Partial => NetRxFlags::CSUM_BLANK | NetRxFlags::DATA_VALIDATED,
                Csum::Validated => NetRxFlags::DATA_VALIDATED,
                Csum::None => NetRxFlags::empty(),
            };
            if !extras.is_empty() {
                flags |= NetRxFlags::EXTRA_INFO;
            }
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += q.data.len() as u64;
            plans.push(RxPlan {
                slots,
                ops: start..ops.len(),
                flags,
                extras,
            });
        }
        if !ops.is_empty() {
            self.hv.copy(&mut ops);
        }
        for plan in &plans {
            let ok = ops[plan.ops.clone()].iter().all(|o| o.status.is_ok());
            if !ok {
                self.stats.rx_grant_errors += 1;
            }
            self.respond_rx(plan, ok)?;
        }
        match self.rx.push_responses_and_check_notify() {
            Ok(n) if n.is_required() => self.notify(self.ports.rx),
            Ok(_) => {}
            Err(f) => return Err(self.fail(f.into())),
        }
        self.check_stall(now);
        Ok(work)
    }

    fn respond_rx(&mut self, plan: &RxPlan, ok: bool) -> Result<(), QueueError> {
        let ndata = plan.slots.iter().filter(|s| s.1.is_some()).count();
        let mut seen_data = 0;
        let mut extra_i = 0;
        for &(id, kind) in &plan.slots {
            let rsp = match kind {
                Some(len) => {
                    seen_data += 1;
                    let mut flags = if seen_data == 1 {
                        plan.flags
                    } else {
                        NetRxFlags::empty()
                    };
                    if seen_data < ndata {
                        flags |= NetRxFlags::MORE_DATA;
                    }
                    RxResponse {
                        id,
                        offset: 0,
                        flags: flags.bits(),
                        status: if ok {
                            i16::try_from(len).unwrap_or(i16::MAX)
                        } else {
                            NetifStatus::Error.value()
                        },
                    }
                }
                None => {
                    let e = plan.extras[extra_i];
                    extra_i += 1;
                    extra_as_rx_slot(&encode_extra(&e, extra_i < plan.extras.len()))
                }
            };
            self.rx.push_response(&rsp).map_err(|e| match e {
                xen_ring::PushError::Fault(f) => self.fail(f.into()),
                xen_ring::PushError::Full => self.fail(QueueError::Tx(TxFault::Incomplete)),
            })?;
        }
        Ok(())
    }

    fn check_stall(&mut self, now: u64) {
        if let Some(since) = self.blocked_since {
            if !self.stalled && now.saturating_sub(since) >= self.limits.stall_timeout_ns {
                self.stalled = true;
                self.stats.stalls += 1;
                self.stats.rx_stall_dropped += self.rxq.len() as u64;
                self.rxq.clear();
                self.rxq_bytes = 0;
            }
        }
    }

    /// Timer: checks the RX ring's producer, enforces the stall timeout without an event, and
    /// lifts a stall once the frontend has posted buffers again. Returns whether RX work can
    /// proceed.
    ///
    /// The producer is checked here, not only when a packet waits for buffers: a frontend
    /// that publishes an impossible RX `req_prod` (more requests than the ring holds) fails
    /// its queue at the next tick, so the connection is reported and released instead of
    /// sitting mapped until traffic for it happens to arrive (the hostile frontend's
    /// `runaway-rx` phase on real Xen).
    pub fn tick(&mut self, now: u64) -> bool {
        if self.failed.is_some() {
            return false;
        }
        let posted = match self.rx.unconsumed_requests() {
            Ok(n) => n,
            Err(f) => {
                self.fail(f.into());
                return false;
            }
        };
        self.check_stall(now);
        if self.stalled && posted > 0 {
            self.stalled = false;
            self.blocked_since = None;
        }
        !self.rxq.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use crate::fuzzing::{all_features, FakeGrants, Harness, Memory, STAGING_BASE};
    use crate::{Limits, QueueError, RxRefused, STAGING_PAGES};
    use xen_netif::PacketMeta;
    use xen_ring::Fault;

    /// XSA-392 class (a frontend pinning backend resources): an RX `req_prod` far beyond
    /// what the ring holds fails the queue at the next tick, with no packet waiting for
    /// buffers; before the fix the fault was only seen once traffic arrived for the vif, so
    /// an idle hostile frontend kept its connection (mapped rings, bound ports) indefinitely.
    #[test]
    fn xsa392_runaway_rx_req_prod_fails_at_the_next_tick() {
        let mem = Memory::new(STAGING_PAGES);
        let grants = FakeGrants::new(&mem.local, STAGING_BASE);
        let mut h = Harness::new(&mem, &grants, all_features(), Limits::default());
        // A good tick first: nothing posted, nothing queued.
        assert!(!h.queue.tick(0));
        assert!(h.queue.failure().is_none());
        h.rx_ring.store_release_u32(0, 256 + 1000).unwrap();
        assert!(!h.queue.tick(1));
        assert!(matches!(
            h.queue.failure(),
            Some(QueueError::Ring(Fault::RequestOverflow {
                req_prod: 1256,
                ..
            }))
        ));
        // Sticky: every later call refuses without touching the rings.
        assert_eq!(
            h.queue.process_rx(2).unwrap_err(),
            h.queue.failure().unwrap()
        );
        assert_eq!(
            h.queue.enqueue_rx(&[0u8; 60], &PacketMeta::default()),
            Err(RxRefused::Failed)
        );
        assert_eq!(grants.entries.get(), 0);
    }

    /// Posted buffers within the ring's size are not a fault for the tick.
    #[test]
    fn a_full_rx_ring_is_not_a_fault() {
        let mem = Memory::new(STAGING_PAGES);
        let grants = FakeGrants::new(&mem.local, STAGING_BASE);
        let mut h = Harness::new(&mem, &grants, all_features(), Limits::default());
        h.post_rx(256);
        assert!(!h.queue.tick(0));
        assert!(h.queue.failure().is_none());
        h.queue
            .enqueue_rx(&[0u8; 60], &PacketMeta::default())
            .unwrap();
        h.queue.process_rx(1).unwrap();
        assert_eq!(h.rx_rsp_prod(), 1);
    }
}
