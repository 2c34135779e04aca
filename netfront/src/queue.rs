//! One queue's data path, frontend side.
//!
//! # Pages
//!
//! Every TX id owns one page and every RX ring position owns one page, each granted to the
//! backend once at connect time and revoked at disconnect ("staging grants"): no grant
//! operation on the hot path, and a page only ever holds data for this backend, which is the
//! isolation XSA-403 asks for (data is always *bounced* into these dedicated pages, never
//! granted from wherever the stack keeps it). With `trusted` = 0 the unused tail of each TX
//! page is also zeroed, so not even stale bytes of our own earlier packets are exposed.
//!
//! # Validation
//!
//! Responses are copied off the ring once and then checked: TX ids must name an in-flight
//! request and `NULL` responses must match extra slots we sent; RX responses must carry the id
//! posted at their ring position and stay inside their page (`xen_netif::rx`). Any violation
//! puts the queue in a sticky error state ([`FrontError`]) — no panic, no further ring work —
//! which the driver reports as a device error. FreeBSD's C netfront indexed its mbuf table
//! with the backend's id under a `KASSERT` only.

use alloc::vec;
use alloc::vec::Vec;

use xen_kmod::{Hypervisor, HypervisorExt};
use xen_netif::raw::{RxRequest, RxResponse, TxRequest, TxResponse};
use xen_netif::rx::{RxAssembler, RxFault};
use xen_netif::tx::{slots_for, TxSlot};
use xen_netif::wire::{encode_extra, extra_as_tx_slot, Extra};
use xen_netif::{csum, Csum, GsoKind, PacketMeta, MAX_PACKET, PAGE_SIZE};
use xen_ring::{Fault, FrontRing};
use xen_shmem::SharedMem;
use xen_sys::consts::{NetTxFlags, NetifStatus};

/// A page shared with the backend.
#[derive(Debug, Clone, Copy)]
pub struct SharedPage<'a> {
    /// Its frame.
    pub gfn: u64,
    /// The grant the backend uses.
    pub gref: u32,
    /// Its contents.
    pub mem: SharedMem<'a>,
}

/// What the backend accepts from us (TX) and what we asked it for (RX).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// Multi-slot packets.
    pub sg: bool,
    /// TCPv4 GSO on TX (backend offered it).
    pub gso_v4: bool,
    /// TCPv6 GSO on TX.
    pub gso_v6: bool,
    /// `csum_blank` IPv4 packets on TX (always accepted by netif backends).
    pub csum_v4: bool,
    /// `csum_blank` IPv6 packets on TX (backend offered `feature-ipv6-csum-offload`).
    pub csum_v6: bool,
    /// GSO we accept on RX (we advertised `feature-gso-tcpv4/6`).
    pub rx_gso: bool,
    /// Zero the unused part of TX pages (`trusted` = 0).
    pub untrusted: bool,
}

/// Ports of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// TX port.
    pub tx: u32,
    /// RX port (equal to `tx` without split event channels).
    pub rx: u32,
}

/// A sticky queue failure: the backend broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontError {
    /// Ring index violation.
    Ring(Fault),
    /// A TX response for an id that is not in flight.
    BadTxId(u16),
    /// A `NULL` TX response with no extra slot outstanding.
    UnexpectedNull,
    /// An RX protocol violation.
    Rx(RxFault),
}

/// Why a packet was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No ring slots or TX pages free now: retry after TX completions.
    Busy,
    /// Empty, larger than netif allows, or needs scatter-gather the backend lacks.
    BadLength,
    /// GSO the backend did not offer.
    Unsupported,
    /// The queue has failed.
    Failed(FrontError),
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// TX responses with an error status.
    pub tx_errors: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Received packets dropped (error status, bad extras, too small).
    pub rx_dropped: u64,
    /// Checksums completed in software.
    pub sw_csum: u64,
}

/// What a poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// Packets handled.
    pub packets: u32,
    /// More pending: poll again.
    pub more: bool,
}

/// One netif queue, frontend side.
///
/// # Invariants
/// * `tx_inflight[id]` is true exactly for ids whose request is on the ring unanswered; a free
///   id is in `tx_free`.
/// * RX: positions `rx_done..req_prod_pvt` are posted (or held by a packet being assembled);
///   `req_prod_pvt - rx_done <= ring size`.
#[derive(Debug)]
pub struct Queue<'a, H: Hypervisor> {
    hv: H,
    index: u16,
    ports: Ports,
    tx: FrontRing<'a, TxRequest, TxResponse>,
    rx: FrontRing<'a, RxRequest, RxResponse>,
    tx_pages: Vec<SharedPage<'a>>,
    tx_free: Vec<u16>,
    tx_inflight: Vec<bool>,
    nulls_expected: u32,
    rx_pages: Vec<SharedPage<'a>>,
    rx_done: u32,
    rx_asm: RxAssembler,
    rx_held: u32,
    feat: Features,
    failed: Option<FrontError>,
    stats: Stats,
    scratch: Vec<u8>,
    budget: u32,
}

impl<'a, H: Hypervisor> Queue<'a, H> {
    /// A queue over freshly initialised rings (`tx_ring`/`rx_ring` are zeroed and
    /// initialised here), one TX page per TX ring slot and one RX page per RX ring slot
    /// (extra pages are ignored; fewer limit the ring's use). Posts every RX buffer.
    ///
    /// # Errors
    /// The ring's setup error.
    #[expect(
        clippy::too_many_arguments,
        reason = "one constructor for the whole queue"
    )]
    pub fn new(
        hv: H,
        index: u16,
        ports: Ports,
        tx_ring: SharedMem<'a>,
        rx_ring: SharedMem<'a>,
        tx_pages: Vec<SharedPage<'a>>,
        rx_pages: Vec<SharedPage<'a>>,
        feat: Features,
    ) -> Result<Self, xen_ring::SetupError> {
        let tx = FrontRing::init(tx_ring)?;
        let rx = FrontRing::init(rx_ring)?;
        let ntx = tx_pages.len().min(tx.size() as usize);
        let mut q = Queue {
            hv,
            index,
            ports,
            tx,
            rx,
            tx_free: (0..u16::try_from(ntx).unwrap_or(0)).rev().collect(),
            tx_inflight: vec![false; ntx],
            tx_pages,
            nulls_expected: 0,
            rx_pages,
            rx_done: 0,
            rx_asm: RxAssembler::new(feat.rx_gso),
            rx_held: 0,
            feat,
            failed: None,
            stats: Stats::default(),
            scratch: vec![0; MAX_PACKET],
            budget: 64,
        };
        q.refill_rx();
        Ok(q)
    }

    /// Queue number.
    #[must_use]
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Ports.
    #[must_use]
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The sticky failure, if any.
    #[must_use]
    pub fn failure(&self) -> Option<FrontError> {
        self.failed
    }

    /// Sets the number of packets handled per poll.
    pub fn set_budget(&mut self, budget: u32) {
        self.budget = budget.max(1);
    }

    fn fail(&mut self, e: FrontError) -> FrontError {
        *self.failed.get_or_insert(e)
    }

    fn notify(&self, port: u32) {
        let _ = self.hv.evtchn_send(port);
    }

    /// TX pages currently free (each packet needs one per 4 KiB).
    #[must_use]
    pub fn tx_free(&self) -> usize {
        self.tx_free.len()
    }

    /// Sends one packet: copies it into TX pages, writes its slots (+ a GSO extra) and
    /// notifies the backend if it asked.
    ///
    /// # Errors
    /// [`SendError`]; on `Busy` nothing was written.
    pub fn send(&mut self, data: &[u8], meta: &PacketMeta) -> Result<(), SendError> {
        if let Some(e) = self.failed {
            return Err(SendError::Failed(e));
        }
        let max_slots = if self.feat.sg {
            xen_netif::MAX_SLOTS
        } else {
            1
        };
        let n = slots_for(data.len(), max_slots).ok_or(SendError::BadLength)?;
        let mut meta = *meta;
        if let Some(g) = meta.gso {
            let ok = match g.kind {
                GsoKind::TcpV4 => self.feat.gso_v4,
                GsoKind::TcpV6 => self.feat.gso_v6,
            };
            if !ok {
                return Err(SendError::Unsupported);
            }
        }
        let extras = usize::from(meta.gso.is_some());
        if self.tx_free.len() < n || (self.tx.free_requests() as usize) < n + extras {
            return Err(SendError::Busy);
        }
        // Checksum offload the backend cannot take: complete it here.
        let mut owned;
        let mut data = data;
        if meta.csum == Csum::Partial {
            let ok = match csum::parse_l4(data) {
                Some(l) if l.ipv6 => self.feat.csum_v6,
                Some(_) => self.feat.csum_v4,
                None => false,
            };
            if !ok {
                owned = data.to_vec();
                meta.csum = if csum::complete_partial(&mut owned).is_ok() {
                    self.stats.sw_csum += 1;
                    Csum::Validated
                } else {
                    Csum::None
                };
                data = &owned;
            }
        }
        let mut ids = [0u16; xen_netif::MAX_SLOTS];
        for (i, chunk) in data.chunks(PAGE_SIZE).enumerate() {
            let id = self.tx_free.pop().ok_or(SendError::Busy)?;
            ids[i] = id;
            let page = &self.tx_pages[usize::from(id)];
            // Our own page of the right size: the copy cannot fail.
            let _ = page.mem.copy_from_slice(0, chunk);
            if self.feat.untrusted && chunk.len() < PAGE_SIZE {
                let _ = page.mem.zero(chunk.len(), PAGE_SIZE - chunk.len());
            }
            self.tx_inflight[usize::from(id)] = true;
        }
        let mut first_flags = match meta.csum {
            Csum::Partial => NetTxFlags::CSUM_BLANK | NetTxFlags::DATA_VALIDATED,
            Csum::Validated => NetTxFlags::DATA_VALIDATED,
            Csum::None => NetTxFlags::empty(),
        };
        if n > 1 {
            first_flags |= NetTxFlags::MORE_DATA;
        }
        if extras > 0 {
            first_flags |= NetTxFlags::EXTRA_INFO;
        }
        let push = |q: &mut Self, r: &TxRequest| {
            q.tx.push_request(r).map_err(|e| match e {
                xen_ring::PushError::Fault(f) => SendError::Failed(q.fail(FrontError::Ring(f))),
                xen_ring::PushError::Full => SendError::Busy,
            })
        };
        let total = u16::try_from(data.len()).map_err(|_| SendError::BadLength)?;
        push(
            self,
            &TxSlot {
                gref: self.tx_pages[usize::from(ids[0])].gref,
                offset: 0,
                size: total,
                id: ids[0],
                flags: first_flags,
            }
            .to_raw(),
        )?;
        if let Some(g) = meta.gso {
            push(
                self,
                &extra_as_tx_slot(&encode_extra(&Extra::Gso(g), false)),
            )?;
            self.nulls_expected += 1;
        }
        let mut chunks = data.chunks(PAGE_SIZE).skip(1).peekable();
        let mut i = 1;
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_some() {
                NetTxFlags::MORE_DATA
            } else {
                NetTxFlags::empty()
            };
            push(
                self,
                &TxSlot {
                    gref: self.tx_pages[usize::from(ids[i])].gref,
                    offset: 0,
                    size: u16::try_from(chunk.len()).unwrap_or(0),
                    id: ids[i],
                    flags,
                }
                .to_raw(),
            )?;
            i += 1;
        }
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += data.len() as u64;
        match self.tx.push_requests_and_check_notify() {
            Ok(nt) if nt.is_required() => self.notify(self.ports.tx),
            Ok(_) => {}
            Err(f) => return Err(SendError::Failed(self.fail(FrontError::Ring(f)))),
        }
        Ok(())
    }

    /// Asks the backend to add (`true`) or remove a multicast address: a dummy request
    /// carrying a `MCAST_ADD`/`MCAST_DEL` extra (netif "multicast control").
    ///
    /// # Errors
    /// As [`Queue::send`].
    pub fn send_mcast(&mut self, add: bool, mac: [u8; 6]) -> Result<(), SendError> {
        if let Some(e) = self.failed {
            return Err(SendError::Failed(e));
        }
        if self.tx_free.is_empty() || self.tx.free_requests() < 2 {
            return Err(SendError::Busy);
        }
        let id = self.tx_free.pop().ok_or(SendError::Busy)?;
        self.tx_inflight[usize::from(id)] = true;
        let e = if add {
            Extra::McastAdd(mac)
        } else {
            Extra::McastDel(mac)
        };
        let first = TxSlot {
            gref: self.tx_pages[usize::from(id)].gref,
            offset: 0,
            size: 0,
            id,
            flags: NetTxFlags::EXTRA_INFO,
        }
        .to_raw();
        for r in [first, extra_as_tx_slot(&encode_extra(&e, false))] {
            if let Err(xen_ring::PushError::Fault(f)) = self.tx.push_request(&r) {
                return Err(SendError::Failed(self.fail(FrontError::Ring(f))));
            }
        }
        self.nulls_expected += 1;
        match self.tx.push_requests_and_check_notify() {
            Ok(nt) if nt.is_required() => self.notify(self.ports.tx),
            Ok(_) => {}
            Err(f) => return Err(SendError::Failed(self.fail(FrontError::Ring(f)))),
        }
        Ok(())
    }

    /// Collects TX completions (frees pages). Returns how many requests were answered.
    ///
    /// # Errors
    /// The sticky [`FrontError`].
    pub fn poll_tx(&mut self) -> Result<u32, FrontError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut n = 0;
        loop {
            let rsp = match self.tx.pop_response() {
                Ok(Some(r)) => r,
                Ok(None) => match self.tx.final_check_for_responses() {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(f) => return Err(self.fail(FrontError::Ring(f))),
                },
                Err(f) => return Err(self.fail(FrontError::Ring(f))),
            };
            n += 1;
            if rsp.status == NetifStatus::Null.value() {
                if self.nulls_expected == 0 {
                    return Err(self.fail(FrontError::UnexpectedNull));
                }
                self.nulls_expected -= 1;
                continue;
            }
            let id = rsp.id;
            match self.tx_inflight.get_mut(usize::from(id)) {
                Some(f) if *f => *f = false,
                _ => return Err(self.fail(FrontError::BadTxId(id))),
            }
            self.tx_free.push(id);
            if rsp.status != NetifStatus::Okay.value() {
                self.stats.tx_errors += 1;
            }
        }
        Ok(n)
    }

    fn rx_mask(&self) -> u32 {
        self.rx.size() - 1
    }

    /// Posts every free RX position (each position's page is reused: it stays granted).
    fn refill_rx(&mut self) {
        let limit = self.rx_done.wrapping_add(self.rx.size());
        let pages = u32::try_from(self.rx_pages.len()).unwrap_or(0);
        let mut posted = false;
        while self.rx.req_prod_pvt() != limit && self.failed.is_none() {
            let pos = self.rx.req_prod_pvt() & self.rx_mask();
            if pos >= pages {
                break;
            }
            let req = RxRequest {
                id: u16::try_from(pos).unwrap_or(0),
                pad: 0,
                gref: self.rx_pages[pos as usize].gref,
            };
            if self.rx.push_request(&req).is_err() {
                break;
            }
            posted = true;
        }
        if posted {
            match self.rx.push_requests_and_check_notify() {
                Ok(nt) if nt.is_required() => self.notify(self.ports.rx),
                Ok(_) => {}
                Err(f) => {
                    self.fail(FrontError::Ring(f));
                }
            }
        }
    }

    /// Receives up to the budget's packets, handing each valid one to `deliver`, and reposts
    /// the buffers.
    ///
    /// # Errors
    /// The sticky [`FrontError`].
    pub fn poll_rx(
        &mut self,
        mut deliver: impl FnMut(&[u8], &PacketMeta),
    ) -> Result<Work, FrontError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut work = Work::default();
        loop {
            if work.packets >= self.budget {
                work.more = true;
                break;
            }
            let pos = self.rx.rsp_cons();
            let rsp: RxResponse = match self.rx.pop_response() {
                Ok(Some(r)) => r,
                Ok(None) => match self.rx.final_check_for_responses() {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(f) => return Err(self.fail(FrontError::Ring(f))),
                },
                Err(f) => return Err(self.fail(FrontError::Ring(f))),
            };
            self.rx_held += 1;
            let expected = u16::try_from(pos & self.rx_mask()).unwrap_or(0);
            let pkt = match self.rx_asm.push(&rsp, expected) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(f) => return Err(self.fail(FrontError::Rx(f))),
            };
            work.packets += 1;
            if pkt.verdict.is_ok() {
                let mut at = 0;
                for f in pkt.frags() {
                    let Some(page) = self.rx_pages.get(usize::from(f.id)) else {
                        return Err(self.fail(FrontError::Rx(RxFault::BadId {
                            expected: f.id,
                            got: f.id,
                        })));
                    };
                    let len = usize::from(f.len);
                    let _ = page
                        .mem
                        .copy_to_slice(usize::from(f.offset), &mut self.scratch[at..at + len]);
                    at += len;
                }
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += at as u64;
                deliver(&self.scratch[..at], &pkt.meta);
            } else {
                self.stats.rx_dropped += 1;
            }
            self.rx_done = self.rx_done.wrapping_add(self.rx_held);
            self.rx_held = 0;
            self.refill_rx();
        }
        if let Some(e) = self.failed {
            return Err(e);
        }
        Ok(work)
    }
}
