//! A front ring with no manners: the shared-ring layout of `io/ring.h` (four indexes, padding
//! to 64 bytes, power-of-two array of entries) over a [`SharedMem`], where the caller writes
//! whatever bytes it wants into slots and may publish any `req_prod` it likes.
//!
//! Responses are still read carefully (bounded by the ring size, copied once): the hostile
//! side wants to *see* what the backend answered, and a backend that misbehaves in return must
//! not make this program loop or panic.

use xen_shmem::SharedMem;

/// Offset of `req_prod`.
const REQ_PROD: usize = 0;
/// Offset of `req_event`.
const REQ_EVENT: usize = 4;
/// Offset of `rsp_prod`.
const RSP_PROD: usize = 8;
/// Offset of `rsp_event`.
const RSP_EVENT: usize = 12;
/// Bytes before the first entry.
pub const HEADER: usize = 64;

/// Entries a ring of `bytes` with `entry`-byte slots holds (the largest power of two that
/// fits, as `__RING_SIZE` computes); 0 when not even one fits.
#[must_use]
pub fn entries(bytes: usize, entry: usize) -> u32 {
    if entry == 0 || bytes <= HEADER {
        return 0;
    }
    let n = (bytes - HEADER) / entry;
    if n == 0 {
        return 0;
    }
    // The largest power of two <= n, as u32 (a 4 KiB ring holds at most a few hundred).
    let p = 1usize << n.ilog2();
    u32::try_from(p).unwrap_or(0)
}

/// Why a response could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The memory is too small or not word aligned.
    Setup,
    /// The backend published more responses than there are slots.
    ResponseOverflow {
        /// Its `rsp_prod`.
        rsp_prod: u32,
        /// Our `rsp_cons`.
        rsp_cons: u32,
    },
}

/// The frontend's side of one shared ring.
#[derive(Debug)]
pub struct RawFront<'a> {
    mem: SharedMem<'a>,
    entry: usize,
    size: u32,
    req_prod_pvt: u32,
    rsp_cons: u32,
}

impl<'a> RawFront<'a> {
    /// Zeroes `mem` and lays a fresh ring of `entry`-byte slots over it (`SHARED_RING_INIT` +
    /// `FRONT_RING_INIT`).
    ///
    /// # Errors
    /// [`RingError::Setup`] when not one entry fits.
    pub fn init(mem: SharedMem<'a>, entry: usize) -> Result<RawFront<'a>, RingError> {
        let size = entries(mem.len(), entry);
        if size == 0 || entry % 4 != 0 {
            return Err(RingError::Setup);
        }
        mem.zero_all();
        mem.store_relaxed_u32(REQ_EVENT, 1)
            .map_err(|_| RingError::Setup)?;
        mem.store_relaxed_u32(RSP_EVENT, 1)
            .map_err(|_| RingError::Setup)?;
        Ok(RawFront {
            mem,
            entry,
            size,
            req_prod_pvt: 0,
            rsp_cons: 0,
        })
    }

    /// Entries in the ring.
    #[must_use]
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Responses consumed so far.
    #[must_use]
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }

    fn slot_offset(&self, index: u32) -> usize {
        // `size` is a power of two; the mask keeps the offset inside the array.
        HEADER + (index & (self.size - 1)) as usize * self.entry
    }

    /// Writes `bytes` (at most one entry; zero-padded) into the next request slot and advances
    /// the private producer. Nothing is published.
    pub fn put(&mut self, bytes: &[u8]) {
        let at = self.slot_offset(self.req_prod_pvt);
        let n = bytes.len().min(self.entry);
        // In bounds by construction (offset < HEADER + size * entry <= len).
        let _ = self.mem.zero(at, self.entry);
        let _ = self.mem.copy_from_slice(at, bytes.get(..n).unwrap_or(&[]));
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
    }

    /// Publishes the private producer (`RING_PUSH_REQUESTS`).
    pub fn publish(&mut self) {
        let _ = self.mem.store_release_u32(REQ_PROD, self.req_prod_pvt);
    }

    /// Publishes an arbitrary `req_prod` (the runaway-index attack) and makes it the private
    /// producer too.
    pub fn publish_raw(&mut self, req_prod: u32) {
        self.req_prod_pvt = req_prod;
        let _ = self.mem.store_release_u32(REQ_PROD, req_prod);
    }

    /// The backend's `rsp_prod`.
    #[must_use]
    pub fn rsp_prod(&self) -> u32 {
        self.mem.load_acquire_u32(RSP_PROD).unwrap_or(0)
    }

    /// Copies out every published response (each slot once, at most a ring's worth) and asks
    /// for an event at the next one.
    ///
    /// # Errors
    /// [`RingError::ResponseOverflow`] when `rsp_prod` claims more than a ring of responses.
    pub fn take_responses(&mut self) -> Result<Vec<Vec<u8>>, RingError> {
        let rsp_prod = self.rsp_prod();
        let pending = rsp_prod.wrapping_sub(self.rsp_cons);
        if pending > self.size {
            return Err(RingError::ResponseOverflow {
                rsp_prod,
                rsp_cons: self.rsp_cons,
            });
        }
        let mut out = Vec::with_capacity(pending as usize);
        for _ in 0..pending {
            let at = self.slot_offset(self.rsp_cons);
            let mut slot = vec![0u8; self.entry];
            let _ = self.mem.copy_to_slice(at, &mut slot);
            out.push(slot);
            self.rsp_cons = self.rsp_cons.wrapping_add(1);
        }
        let _ = self
            .mem
            .store_release_u32(RSP_EVENT, self.rsp_cons.wrapping_add(1));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blkif;
    use xen_ring::sring::BackRing;
    use xen_ring::{Fault, SetupError};
    use xen_shmem::{as_bytes, as_bytes_mut, Page};
    use xen_sys::x86_64::{blkif_request, blkif_response};

    type BlkBack<'a> = BackRing<'a, blkif_request, blkif_response>;

    #[test]
    fn geometry_matches_ring_h() {
        // A one-page blkif ring holds 32 entries, a netif TX ring 256.
        assert_eq!(entries(4096, blkif::ENTRY), 32);
        assert_eq!(entries(4096, 12), 256);
        assert_eq!(entries(4096, 8), 256);
        assert_eq!(entries(64, 8), 0);
        assert_eq!(entries(4096, 0), 0);
        assert_eq!(
            xen_ring::sring::ring_entries(4096, blkif::ENTRY),
            entries(4096, blkif::ENTRY)
        );
    }

    #[test]
    fn the_backend_ring_reads_what_we_put() {
        let page = Page::new();
        let mem = SharedMem::from_pages(core::slice::from_ref(&page));
        let mut front = RawFront::init(mem, blkif::ENTRY).unwrap();
        assert_eq!(front.size(), 32);
        let slot = blkif::rw(blkif::OP_READ, 1, 7, 8, &[blkif::Seg::page(42)]);
        front.put(&slot);
        front.put(&[0xAA; 200]); // longer than a slot: truncated to one entry
        front.publish();
        let mut back = BlkBack::attach(mem).unwrap();
        let r = back.pop_request().unwrap().unwrap();
        assert_eq!(as_bytes(&r), &slot[..]);
        let r = back.pop_request().unwrap().unwrap();
        assert!(as_bytes(&r).iter().all(|&b| b == 0xAA));
        assert!(back.pop_request().unwrap().is_none());

        let mut rsp: blkif_response = xen_shmem::zeroed();
        as_bytes_mut(&mut rsp)[..8].copy_from_slice(&7u64.to_le_bytes());
        rsp.status = blkif::RSP_ERROR;
        back.push_response(&rsp).unwrap();
        back.push_responses().unwrap();
        let got = front.take_responses().unwrap();
        assert_eq!(got.len(), 1);
        let r = blkif::Response::decode(&got[0]);
        assert_eq!((r.id, r.status), (7, blkif::RSP_ERROR));
        assert!(front.take_responses().unwrap().is_empty());
    }

    #[test]
    fn a_runaway_producer_is_a_fault_for_the_backend() {
        let page = Page::new();
        let mem = SharedMem::from_pages(core::slice::from_ref(&page));
        let mut front = RawFront::init(mem, blkif::ENTRY).unwrap();
        front.publish_raw(front.size() + 1000);
        // The backend's ring refuses it at attach already.
        assert!(matches!(
            BlkBack::attach(mem),
            Err(SetupError::Fault(Fault::RequestOverflow {
                req_prod: 1032,
                ..
            }))
        ));
    }

    #[test]
    fn a_runaway_backend_is_reported_not_followed() {
        let page = Page::new();
        let mem = SharedMem::from_pages(core::slice::from_ref(&page));
        let mut front = RawFront::init(mem, blkif::ENTRY).unwrap();
        mem.store_release_u32(RSP_PROD, 5000).unwrap();
        assert_eq!(
            front.take_responses(),
            Err(RingError::ResponseOverflow {
                rsp_prod: 5000,
                rsp_cons: 0
            })
        );
        assert_eq!(front.rsp_cons(), 0);
    }
}
