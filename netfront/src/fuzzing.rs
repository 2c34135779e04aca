//! A hostile backend against a frontend [`Queue`] (feature `fuzzing`): the body of the
//! `netfront_rsp` fuzz target and the [`Harness`] the named regression tests drive.
//!
//! The "backend" writes raw TX and RX responses and response producer indices (any value)
//! into the shared ring pages. Properties: no panic; a failure is sticky; delivered packets
//! are 14..=65535 bytes; TX pages are never freed twice (the free list never exceeds its
//! size).

use alloc::vec::Vec;

use xen_kmod::{
    ConsoleIoOp, EventChannelOp, GrantTableOp, HvmOp, Hypervisor, MemoryOp, SchedOp, VcpuOp,
    XenError, XenVersionOp,
};
use xen_netif::PacketMeta;
use xen_shmem::{Page, SharedMem};

use crate::queue::{Features, Ports, Queue, SharedPage};

/// A hypervisor that accepts notifications and refuses everything else.
#[derive(Debug, Default, Clone, Copy)]
pub struct NotifyOnly;

impl Hypervisor for NotifyOnly {
    fn event_channel_op(&self, op: EventChannelOp<'_>) -> Result<(), XenError> {
        match op {
            EventChannelOp::Send(_) => Ok(()),
            _ => Err(XenError::ENOSYS),
        }
    }
    fn grant_table_op(&self, _op: GrantTableOp<'_>) -> Result<(), XenError> {
        Err(XenError::ENOSYS)
    }
    fn memory_op(&self, _op: MemoryOp<'_>) -> Result<u64, XenError> {
        Err(XenError::ENOSYS)
    }
    fn hvm_op(&self, _op: HvmOp<'_>) -> Result<(), XenError> {
        Err(XenError::ENOSYS)
    }
    fn sched_op(&self, _op: SchedOp<'_>) -> Result<u64, XenError> {
        Err(XenError::ENOSYS)
    }
    fn vcpu_op(&self, _vcpu: u32, _op: VcpuOp<'_>) -> Result<u64, XenError> {
        Err(XenError::ENOSYS)
    }
    fn xen_version(&self, _op: XenVersionOp<'_>) -> Result<u64, XenError> {
        Err(XenError::ENOSYS)
    }
    fn console_io(&self, _op: ConsoleIoOp<'_>) -> Result<u64, XenError> {
        Err(XenError::ENOSYS)
    }
}

/// TX pages in the harness.
pub const TX_PAGES: usize = 32;

/// Memory of one harness.
#[derive(Debug)]
pub struct Memory {
    rings: [Page; 2],
    tx: Vec<Page>,
    rx: Vec<Page>,
}

impl Memory {
    /// Zeroed memory: rings, [`TX_PAGES`] TX pages, 256 RX pages.
    #[must_use]
    pub fn new() -> Memory {
        Memory {
            rings: [Page::new(), Page::new()],
            tx: (0..TX_PAGES).map(|_| Page::new()).collect(),
            rx: (0..256).map(|_| Page::new()).collect(),
        }
    }
}

impl Memory {
    /// TX page `id` (granted to the backend as reference `100 + id`) as the backend sees it:
    /// what a regression test reads to check what a granted page exposes.
    #[must_use]
    pub fn tx_page(&self, id: usize) -> Option<SharedMem<'_>> {
        self.tx
            .get(id)
            .map(|p| SharedMem::from_pages(core::slice::from_ref(p)))
    }
}

impl Default for Memory {
    fn default() -> Self {
        Memory::new()
    }
}

/// A frontend queue and raw backend access to its rings.
pub struct Harness<'a> {
    /// The queue under test.
    pub queue: Queue<'a, NotifyOnly>,
    tx_ring: SharedMem<'a>,
    rx_ring: SharedMem<'a>,
    tx_rsp: u32,
    rx_rsp: u32,
}

impl core::fmt::Debug for Harness<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Harness").finish_non_exhaustive()
    }
}

impl<'a> Harness<'a> {
    /// A queue over `mem`.
    ///
    /// # Panics
    /// Never with [`Memory::new`].
    #[must_use]
    pub fn new(mem: &'a Memory, feat: Features) -> Self {
        let v = |p: &'a Page| SharedMem::from_pages(core::slice::from_ref(p));
        let pages = |ps: &'a [Page], base: u32| -> Vec<SharedPage<'a>> {
            ps.iter()
                .enumerate()
                .map(|(i, p)| SharedPage {
                    gfn: u64::from(base) + i as u64,
                    gref: base + u32::try_from(i).unwrap_or(0),
                    mem: v(p),
                })
                .collect()
        };
        let queue = Queue::new(
            NotifyOnly,
            0,
            Ports { tx: 1, rx: 2 },
            v(&mem.rings[0]),
            v(&mem.rings[1]),
            pages(&mem.tx, 100),
            pages(&mem.rx, 1000),
            feat,
        )
        .expect("ring fits");
        Harness {
            queue,
            tx_ring: v(&mem.rings[0]),
            rx_ring: v(&mem.rings[1]),
            tx_rsp: 0,
            rx_rsp: 0,
        }
    }

    /// Writes raw TX responses `(id, status)` and publishes them.
    pub fn tx_responses(&mut self, rsps: &[(u16, i16)]) {
        for &(id, st) in rsps {
            let off = 64 + (self.tx_rsp as usize % 256) * 12;
            let mut w = [0u8; 4];
            w[..2].copy_from_slice(&id.to_le_bytes());
            w[2..].copy_from_slice(&st.to_le_bytes());
            let _ = self.tx_ring.store_relaxed_u32(off, u32::from_le_bytes(w));
            self.tx_rsp = self.tx_rsp.wrapping_add(1);
        }
        let _ = self.tx_ring.store_release_u32(8, self.tx_rsp);
    }

    /// The TX request in slot `i`: `(id, size, flags)`.
    #[must_use]
    pub fn tx_request(&self, i: u32) -> (u16, u16, u16) {
        let r: xen_netif::raw::TxRequest = self
            .tx_ring
            .read(64 + (i as usize % 256) * 12)
            .unwrap_or_else(|_| xen_shmem::zeroed());
        (r.id, r.size, r.flags)
    }

    /// Writes raw RX responses (8 bytes each) and publishes them.
    pub fn rx_responses(&mut self, rsps: &[[u8; 8]]) {
        for r in rsps {
            let off = 64 + (self.rx_rsp as usize % 256) * 8;
            let _ = self.rx_ring.copy_from_slice(off, r);
            self.rx_rsp = self.rx_rsp.wrapping_add(1);
        }
        let _ = self.rx_ring.store_release_u32(8, self.rx_rsp);
    }

    /// Sets any RX `rsp_prod`.
    pub fn set_rx_prod(&mut self, v: u32) {
        self.rx_rsp = v;
        let _ = self.rx_ring.store_release_u32(8, v);
    }

    /// Data the backend "copied" into the RX page at ring position `pos`.
    pub fn fill_rx_page(mem: &Memory, pos: usize, data: &[u8]) {
        if let Some(p) = mem.rx.get(pos) {
            let _ = SharedMem::from_pages(core::slice::from_ref(p)).copy_from_slice(0, data);
        }
    }
}

/// An RX response as raw bytes.
#[must_use]
pub fn rx_rsp(id: u16, offset: u16, flags: u16, status: i16) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..2].copy_from_slice(&id.to_le_bytes());
    b[2..4].copy_from_slice(&offset.to_le_bytes());
    b[4..6].copy_from_slice(&flags.to_le_bytes());
    b[6..].copy_from_slice(&status.to_le_bytes());
    b
}

/// Every feature on.
#[must_use]
pub fn all_features() -> Features {
    Features {
        sg: true,
        gso_v4: true,
        gso_v6: true,
        csum_v4: true,
        csum_v6: true,
        rx_gso: true,
        untrusted: false,
    }
}

/// The fuzz body: arbitrary TX and RX responses and indices from a hostile backend.
pub fn netfront_rsp(data: &[u8]) {
    let mut it = data.iter().copied();
    let mut byte = || it.next().unwrap_or(0);
    let mem = Memory::new();
    let f = byte();
    let feat = Features {
        sg: f & 1 != 0,
        rx_gso: f & 2 != 0,
        untrusted: f & 4 != 0,
        ..all_features()
    };
    let mut h = Harness::new(&mem, feat);
    h.queue.set_budget(u32::from(byte() % 32) + 1);
    let mut failed = None;
    for _ in 0..8 {
        // Some traffic of our own, so TX ids are in flight.
        for _ in 0..usize::from(byte() % 4) {
            let len = usize::from(byte()) * 40 + 14;
            let pkt: Vec<u8> = (0..len).map(|i| i.to_le_bytes()[0]).collect();
            let _ = h.queue.send(&pkt, &PacketMeta::default());
        }
        let ntx = usize::from(byte() % 8);
        let txr: Vec<(u16, i16)> = (0..ntx)
            .map(|_| {
                (
                    u16::from(byte() % 40),
                    i16::from_le_bytes([byte() % 4, if byte() & 1 != 0 { 0xff } else { 0 }]),
                )
            })
            .collect();
        h.tx_responses(&txr);
        let nrx = usize::from(byte() % 24);
        let rxr: Vec<[u8; 8]> = (0..nrx).map(|_| core::array::from_fn(|_| byte())).collect();
        h.rx_responses(&rxr);
        if byte() == 0xff {
            let v = u32::from_le_bytes([byte(), byte(), byte(), byte()]);
            h.set_rx_prod(v);
        }
        let tx = h.queue.poll_tx();
        let rx = h
            .queue
            .poll_rx(|d, _| assert!((14..=65535).contains(&d.len())));
        for r in [tx.err(), rx.err()].into_iter().flatten() {
            if let Some(f) = failed {
                assert_eq!(f, r, "failure is sticky");
            }
            failed = Some(r);
        }
        assert!(h.queue.tx_free() <= TX_PAGES, "a TX page freed twice");
    }
}
