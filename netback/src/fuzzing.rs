//! A hostile frontend against a backend [`Queue`] (feature `fuzzing`): the body of the
//! `netback_tx` fuzz target, and the [`Harness`] the named XSA regression tests drive.
//!
//! The frontend's memory is a few in-process pages: the TX and RX ring pages, which the
//! "frontend" writes raw (any index, any slot bytes), and granted data pages served by
//! [`FakeGrants`], whose copies can be made to fail per reference and which can run a hook in
//! the middle of a copy (to model a frontend rewriting the ring while we work: XSA-155).
//!
//! Properties checked by [`netback_tx`]: no panic; a failure is sticky; every delivered packet
//! is 14..=65535 bytes; the responses published never exceed the requests consumed; after a
//! failure, the queue holds no packets.

use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use xen_gnttab::{CopyPtr, GntStatus, GrantCopy};
use xen_netif::raw::{RxRequest, TxRequest};
use xen_netif::{Csum, PacketMeta};
use xen_shmem::{Page, SharedMem};

use crate::config::Negotiated;
use crate::queue::{Limits, Ports, Queue};
use crate::{DataPlane, LocalPage, NetIo, Offloads};

/// Frontend grants: `gref` → a page whose bytes are `gref + offset`; references listed in
/// `fail` fail with `BadGntref`; `hook` runs once per copy batch.
pub struct FakeGrants<'a> {
    local: &'a [Page],
    base: u64,
    /// References whose copies fail.
    pub fail: RefCell<Vec<u32>>,
    /// Copy batches seen.
    pub batches: Cell<u32>,
    /// Copy entries seen.
    pub entries: Cell<u32>,
    /// Runs inside each copy batch (a racing frontend).
    pub hook: RefCell<Option<alloc::boxed::Box<dyn FnMut() + 'a>>>,
    /// Notifications sent, per port.
    pub notified: RefCell<Vec<u32>>,
    /// Data written into frontend grants by RX copies: `(gref, bytes)`.
    pub written: RefCell<Vec<(u32, Vec<u8>)>>,
}

impl core::fmt::Debug for FakeGrants<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FakeGrants").finish_non_exhaustive()
    }
}

impl<'a> FakeGrants<'a> {
    /// Grants over local pages numbered from frame `base`.
    #[must_use]
    pub fn new(local: &'a [Page], base: u64) -> Self {
        FakeGrants {
            local,
            base,
            fail: RefCell::new(Vec::new()),
            batches: Cell::new(0),
            entries: Cell::new(0),
            hook: RefCell::new(None),
            notified: RefCell::new(Vec::new()),
            written: RefCell::new(Vec::new()),
        }
    }

    fn local(&self, gfn: u64) -> Option<SharedMem<'a>> {
        let i = usize::try_from(gfn.checked_sub(self.base)?).ok()?;
        self.local
            .get(i)
            .map(core::slice::from_ref)
            .map(SharedMem::from_pages)
    }
}

/// The byte a fake grant holds at `offset`.
#[must_use]
pub fn grant_byte(gref: u32, offset: usize) -> u8 {
    (gref as usize).wrapping_add(offset).to_le_bytes()[0]
}

impl DataPlane for &FakeGrants<'_> {
    fn copy(&self, ops: &mut [GrantCopy]) {
        self.batches.set(self.batches.get() + 1);
        if let Some(h) = self.hook.borrow_mut().as_mut() {
            h();
        }
        for op in ops {
            self.entries.set(self.entries.get() + 1);
            op.status = GntStatus::BadCopyArg;
            let len = usize::from(op.len);
            if usize::from(op.src_offset) + len > 4096 || usize::from(op.dst_offset) + len > 4096 {
                continue;
            }
            match (op.src, op.dst) {
                (CopyPtr::Grant { gref, .. }, CopyPtr::Local { gfn }) => {
                    if self.fail.borrow().contains(&gref) {
                        op.status = GntStatus::BadGntref;
                        continue;
                    }
                    let Some(dst) = self.local(gfn) else { continue };
                    let data: Vec<u8> = (0..len)
                        .map(|i| grant_byte(gref, usize::from(op.src_offset) + i))
                        .collect();
                    if dst
                        .copy_from_slice(usize::from(op.dst_offset), &data)
                        .is_ok()
                    {
                        op.status = GntStatus::Okay;
                    }
                }
                (CopyPtr::Local { gfn }, CopyPtr::Grant { gref, .. }) => {
                    if self.fail.borrow().contains(&gref) {
                        op.status = GntStatus::BadGntref;
                        continue;
                    }
                    let Some(src) = self.local(gfn) else { continue };
                    let mut data = vec![0u8; len];
                    if src
                        .copy_to_slice(usize::from(op.src_offset), &mut data)
                        .is_ok()
                    {
                        self.written.borrow_mut().push((gref, data));
                        op.status = GntStatus::Okay;
                    }
                }
                _ => {}
            }
        }
    }

    fn notify(&self, port: u32) {
        self.notified.borrow_mut().push(port);
    }
}

/// A [`NetIo`] that records deliveries.
#[derive(Debug, Default)]
pub struct Record {
    /// `(len, meta, first bytes)`.
    pub delivered: Vec<(usize, PacketMeta, Vec<u8>)>,
    /// Refuse offloads (forces software checksums).
    pub no_offloads: bool,
}

impl NetIo for Record {
    fn offloads(&self) -> Offloads {
        Offloads {
            csum: !self.no_offloads,
            gso: !self.no_offloads,
        }
    }
    fn deliver(&mut self, _queue: u16, data: &[u8], meta: &PacketMeta) {
        assert!(
            (14..=65535).contains(&data.len()),
            "delivered {} bytes",
            data.len()
        );
        self.delivered
            .push((data.len(), *meta, data[..data.len().min(64)].to_vec()));
    }
}

/// Pages for one harness: TX ring, RX ring, and the backend's staging pages.
#[derive(Debug)]
pub struct Memory {
    /// `[tx ring, rx ring]`.
    pub rings: [Page; 2],
    /// Staging pages (frames `STAGING_BASE..`).
    pub local: Vec<Page>,
}

/// First frame number of the staging pages.
pub const STAGING_BASE: u64 = 0x1000;

impl Memory {
    /// Fresh zeroed memory with `2 * staging` staging pages.
    #[must_use]
    pub fn new(staging: usize) -> Memory {
        Memory {
            rings: [Page::new(), Page::new()],
            local: (0..2 * staging).map(|_| Page::new()).collect(),
        }
    }
}

/// A queue, its fake grants, and raw access to its rings as the frontend sees them.
pub struct Harness<'a, 'g> {
    /// The queue under test.
    pub queue: Queue<'a, &'g FakeGrants<'a>>,
    /// The frontend's view of the TX ring.
    pub tx_ring: SharedMem<'a>,
    /// The frontend's view of the RX ring.
    pub rx_ring: SharedMem<'a>,
    tx_prod: u32,
    rx_prod: u32,
}

impl core::fmt::Debug for Harness<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Harness").finish_non_exhaustive()
    }
}

const ENTRY_TX: usize = 12;
const ENTRY_RX: usize = 8;

impl<'a, 'g> Harness<'a, 'g> {
    /// A queue over `mem` with `feat` and `limits`, using `grants`.
    ///
    /// # Panics
    /// Never with the memory of [`Memory::new`] (a ring page always fits).
    #[must_use]
    pub fn new(
        mem: &'a Memory,
        grants: &'g FakeGrants<'a>,
        feat: Negotiated,
        limits: Limits,
    ) -> Self {
        let tx_ring = SharedMem::from_pages(core::slice::from_ref(&mem.rings[0]));
        let rx_ring = SharedMem::from_pages(core::slice::from_ref(&mem.rings[1]));
        let half = mem.local.len() / 2;
        let page = |i: usize| LocalPage {
            gfn: STAGING_BASE + i as u64,
            mem: SharedMem::from_pages(core::slice::from_ref(&mem.local[i])),
        };
        let txp = (0..half).map(page).collect();
        let rxp = (half..2 * half).map(page).collect();
        let queue = Queue::new(
            grants,
            0,
            1,
            Ports { tx: 7, rx: 8 },
            tx_ring,
            rx_ring,
            txp,
            rxp,
            feat,
            limits,
        )
        .expect("rings fit");
        Harness {
            queue,
            tx_ring,
            rx_ring,
            tx_prod: 0,
            rx_prod: 0,
        }
    }

    /// Writes TX requests and publishes them.
    pub fn push_tx(&mut self, reqs: &[TxRequest]) {
        for r in reqs {
            let off = 64 + (self.tx_prod as usize % 256) * ENTRY_TX;
            let _ = self.tx_ring.write(off, r);
            self.tx_prod = self.tx_prod.wrapping_add(1);
        }
        let _ = self.tx_ring.store_release_u32(0, self.tx_prod);
    }

    /// Overwrites a TX slot in place (a frontend racing with us).
    pub fn rewrite_tx(tx_ring: SharedMem<'_>, idx: u32, r: &TxRequest) {
        let _ = tx_ring.write(64 + (idx as usize % 256) * ENTRY_TX, r);
    }

    /// Sets the frontend's TX `req_prod` to any value.
    pub fn set_tx_prod(&mut self, v: u32) {
        self.tx_prod = v;
        let _ = self.tx_ring.store_release_u32(0, v);
    }

    /// The backend's published TX `rsp_prod`.
    #[must_use]
    pub fn tx_rsp_prod(&self) -> u32 {
        self.tx_ring.load_acquire_u32(8).unwrap_or(0)
    }

    /// TX response `i` as `(id, status)`.
    #[must_use]
    pub fn tx_rsp(&self, i: u32) -> (u16, i16) {
        let off = 64 + (i as usize % 256) * ENTRY_TX;
        let w = self.tx_ring.load_relaxed_u32(off).unwrap_or(0);
        let b = w.to_le_bytes();
        (
            u16::from_le_bytes([b[0], b[1]]),
            i16::from_le_bytes([b[2], b[3]]),
        )
    }

    /// Posts `n` RX buffers with grants `1000 + i`.
    pub fn post_rx(&mut self, n: u32) {
        for _ in 0..n {
            let id = u16::try_from(self.rx_prod % 256).unwrap_or(0);
            let req = RxRequest {
                id,
                pad: 0,
                gref: 1000 + u32::from(id),
            };
            let _ = self
                .rx_ring
                .write(64 + (self.rx_prod as usize % 256) * ENTRY_RX, &req);
            self.rx_prod = self.rx_prod.wrapping_add(1);
        }
        let _ = self.rx_ring.store_release_u32(0, self.rx_prod);
    }

    /// The backend's published RX `rsp_prod`.
    #[must_use]
    pub fn rx_rsp_prod(&self) -> u32 {
        self.rx_ring.load_acquire_u32(8).unwrap_or(0)
    }
}

/// Everything on.
#[must_use]
pub fn all_features() -> Negotiated {
    Negotiated {
        sg: true,
        gso_v4: true,
        gso_v6: true,
        csum_v4: true,
        csum_v6: true,
        rx_notify: true,
        mcast_filter: false,
        tx_gso_allowed: true,
    }
}

/// The fuzz body: arbitrary TX slots and extras (and indices), grant failures, RX traffic.
pub fn netback_tx(data: &[u8]) {
    let mut it = data.iter().copied();
    let mut byte = || it.next().unwrap_or(0);
    let mem = Memory::new(crate::STAGING_PAGES);
    let grants = FakeGrants::new(&mem.local, STAGING_BASE);
    let flags = byte();
    let feat = Negotiated {
        sg: flags & 1 != 0,
        tx_gso_allowed: flags & 2 != 0,
        csum_v4: flags & 4 != 0,
        gso_v4: flags & 8 != 0,
        ..all_features()
    };
    let limits = Limits {
        tx_budget: u32::from(byte() % 64) + 1,
        rx_queue_packets: usize::from(byte() % 16) + 1,
        stall_timeout_ns: 1000,
        ..Limits::default()
    };
    for _ in 0..usize::from(byte() % 4) {
        grants.fail.borrow_mut().push(u32::from(byte() % 16));
    }
    let mut h = Harness::new(&mem, &grants, feat, limits);
    let mut io = Record {
        no_offloads: flags & 16 != 0,
        ..Record::default()
    };
    let mut consumed = 0u32;
    let mut raw_prod = false;
    let mut failed = None;
    for round in 0..8u64 {
        let n = usize::from(byte() % 40);
        let mut reqs = Vec::new();
        for _ in 0..n {
            let b: [u8; 12] = core::array::from_fn(|_| byte());
            let mut r: TxRequest = xen_shmem::zeroed();
            xen_shmem::as_bytes_mut(&mut r).copy_from_slice(&b);
            // Keep references in the fake's small space more often than not.
            if b[0] & 0x80 == 0 {
                r.gref %= 16;
            }
            reqs.push(r);
        }
        h.push_tx(&reqs);
        consumed = consumed.wrapping_add(u32::try_from(n).unwrap_or(0));
        if byte() == 0xff {
            let v = u32::from_le_bytes([byte(), byte(), byte(), byte()]);
            h.set_tx_prod(v);
            raw_prod = true;
        }
        match h.queue.process_tx(&mut io) {
            Ok(_) => assert!(failed.is_none(), "failure is sticky"),
            Err(e) => {
                if let Some(f) = failed {
                    assert_eq!(f, e, "failure is sticky");
                }
                failed = Some(e);
                assert_eq!(h.queue.rx_queued(), (0, 0), "nothing held after a failure");
            }
        }
        // Host → guest traffic with random buffers.
        h.post_rx(u32::from(byte() % 8));
        let len = usize::from(byte()) * 64 + usize::from(byte());
        let pkt: Vec<u8> = (0..len).map(|i| i.to_le_bytes()[0]).collect();
        let meta = PacketMeta {
            csum: if byte() & 1 != 0 {
                Csum::Partial
            } else {
                Csum::None
            },
            ..PacketMeta::default()
        };
        let _ = h.queue.enqueue_rx(&pkt, &meta);
        let _ = h.queue.process_rx(round * 600);
        h.queue.tick(round * 600);
        let (qn, qb) = h.queue.rx_queued();
        assert!(qn <= limits.rx_queue_packets && qb <= limits.rx_queue_bytes);
    }
    if failed.is_none() && !raw_prod {
        let published = h.tx_rsp_prod();
        assert!(published <= consumed, "more responses than requests");
    }
}
