//! The control ring (Toeplitz receive steering) and the multicast filter.
//!
//! Control requests carry grant references to a key or a mapping table and sizes and offsets
//! chosen by the frontend. Linux's implementation of `SET_HASH_MAPPING` trusted the
//! `offset + len` the frontend gave and read/wrote out of bounds (XSA-270). Here every size is
//! checked against our own fixed limits with overflow-free arithmetic *before* anything is
//! copied, data arrives by grant copy into our own page (never a mapping), and each mapping
//! entry is validated against the number of queues before the table is changed.

use alloc::vec;
use alloc::vec::Vec;

use xen_gnttab::{CopyPtr, GrantCopy};
use xen_netif::hash::{self, types, MAX_KEY};
use xen_netif::{csum, raw};
use xen_ring::{BackRing, Fault};

use crate::{DataPlane, LocalPage};

/// Largest mapping table (entries); Linux uses 128 as well.
pub const MAX_MAPPING: u32 = 128;
/// Largest multicast filter (Linux's `XEN_NETBK_MCAST_MAX`).
pub const MAX_MCAST: usize = 64;

/// `XEN_NETIF_CTRL_STATUS_*` (re-exported from `xen_netif::ctrl`).
pub use xen_netif::ctrl::status;
use xen_netif::ctrl::ty;

/// Receive steering state of one vif (shared by its queues).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steering {
    queues: u32,
    toeplitz: bool,
    flags: u32,
    key: [u8; MAX_KEY],
    key_len: usize,
    mapping: Vec<u32>,
}

impl Steering {
    /// Steering for `queues` queues (hashing off).
    #[must_use]
    pub fn new(queues: u32) -> Self {
        Steering {
            queues: queues.max(1),
            toeplitz: false,
            flags: 0,
            key: [0; MAX_KEY],
            key_len: 0,
            mapping: Vec::new(),
        }
    }

    /// Picks the queue for a packet going to the guest, and the hash to report
    /// (`(type bit number, value)`) when hashing is on. Without hashing: queue 0... spread by
    /// a cheap flow hash so that flows stay on one queue.
    #[must_use]
    pub fn select(&self, pkt: &[u8]) -> (u16, Option<(u8, u32)>) {
        let l4 = csum::parse_l4(pkt);
        let v4 = (pkt.get(12..14) == Some(&[0x08, 0x00])).then_some(14);
        if self.toeplitz && self.flags != 0 {
            if let Some((kind, input, len)) = hash::input(pkt, l4.as_ref(), v4, self.flags) {
                let h = hash::toeplitz(&self.key[..self.key_len], &input[..len]);
                let q = if self.mapping.is_empty() {
                    h % self.queues
                } else {
                    let i = usize::try_from(h).unwrap_or(0) % self.mapping.len();
                    self.mapping[i]
                };
                return (u16::try_from(q).unwrap_or(0), Some((kind, h)));
            }
            return (0, None);
        }
        // Default: a stable flow hash over the addresses and ports.
        let h = l4.map_or(0, |l| {
            let end = (l.l4 + 4).min(pkt.len());
            pkt[l.l3..end]
                .iter()
                .fold(0u32, |a, &b| a.rotate_left(5) ^ u32::from(b))
        });
        (u16::try_from(h % self.queues).unwrap_or(0), None)
    }
}

/// The frontend's multicast filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct McastFilter {
    addrs: Vec<[u8; 6]>,
}

impl McastFilter {
    /// Adds an address; `false` when the filter is full.
    pub fn add(&mut self, mac: [u8; 6]) -> bool {
        if self.addrs.contains(&mac) {
            return true;
        }
        if self.addrs.len() >= MAX_MCAST {
            return false;
        }
        self.addrs.push(mac);
        true
    }

    /// Removes an address.
    pub fn del(&mut self, mac: [u8; 6]) {
        self.addrs.retain(|a| *a != mac);
    }

    /// Applies one of the frontend's multicast control requests (`MCAST_ADD` when `add`,
    /// else `MCAST_DEL`); `false` when an add found the filter full (the request is then
    /// answered with an error, as Linux's netback does).
    pub fn apply(&mut self, add: bool, mac: [u8; 6]) -> bool {
        if add {
            self.add(mac)
        } else {
            self.del(mac);
            true
        }
    }

    /// Whether a frame to `dst` passes: unicast and broadcast always do, multicast only when
    /// listed.
    #[must_use]
    pub fn passes(&self, dst: &[u8]) -> bool {
        match dst.get(..6) {
            Some(d) if d[0] & 1 == 1 && d != [0xff; 6] => self.addrs.iter().any(|a| a == d),
            _ => true,
        }
    }
}

/// The backend end of the control ring.
#[derive(Debug)]
pub struct CtrlRing<'a, H: DataPlane> {
    hv: H,
    domid: u16,
    port: u32,
    ring: BackRing<'a, raw::CtrlRequest, raw::CtrlResponse>,
    page: LocalPage<'a>,
    failed: Option<Fault>,
}

impl<'a, H: DataPlane> CtrlRing<'a, H> {
    /// Attaches to the frontend's control ring; `page` receives keys and tables.
    ///
    /// # Errors
    /// The ring's setup error.
    pub fn new(
        hv: H,
        domid: u16,
        port: u32,
        ring: xen_shmem::SharedMem<'a>,
        page: LocalPage<'a>,
    ) -> Result<Self, xen_ring::SetupError> {
        Ok(CtrlRing {
            hv,
            domid,
            port,
            ring: BackRing::attach(ring)?,
            page,
            failed: None,
        })
    }

    /// Our port.
    #[must_use]
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Handles every pending request (bounded by the ring size per call).
    ///
    /// # Errors
    /// A sticky ring [`Fault`].
    pub fn process(&mut self, st: &mut Steering) -> Result<u32, Fault> {
        if let Some(f) = self.failed {
            return Err(f);
        }
        let mut n = 0;
        let size = self.ring.size();
        while n < size {
            let req = match self.ring.pop_request() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(f) => {
                    self.failed = Some(f);
                    return Err(f);
                }
            };
            n += 1;
            let (id, kind) = xen_netif::ctrl::split_word0(req[0]);
            let (status, data) = self.handle(st, kind, [req[1], req[2], req[3]]);
            let rsp: raw::CtrlResponse = [xen_netif::ctrl::word0(id, kind), status, data];
            if let Err(xen_ring::PushError::Fault(f)) = self.ring.push_response(&rsp) {
                self.failed = Some(f);
                return Err(f);
            }
        }
        match self.ring.push_responses_and_check_notify() {
            Ok(nt) if nt.is_required() => self.hv.notify(self.port),
            Ok(_) => {}
            Err(f) => {
                self.failed = Some(f);
                return Err(f);
            }
        }
        Ok(n)
    }

    /// Copies `len` bytes from the frontend's grant into our page.
    fn fetch(&self, gref: u32, len: usize) -> Option<Vec<u8>> {
        let len16 = u16::try_from(len).ok()?;
        let mut op = [GrantCopy::new(
            CopyPtr::Grant {
                dom: self.domid,
                gref,
            },
            0,
            CopyPtr::Local { gfn: self.page.gfn },
            0,
            len16,
        )];
        self.hv.copy(&mut op);
        if !op[0].status.is_ok() {
            return None;
        }
        let mut out = vec![0u8; len];
        self.page.mem.copy_to_slice(0, &mut out).ok()?;
        Some(out)
    }

    fn handle(&self, st: &mut Steering, kind: u16, d: [u32; 3]) -> (u32, u32) {
        use status::*;
        match kind {
            ty::SET_HASH_ALGORITHM => match d[0] {
                0 => {
                    st.toeplitz = false;
                    (SUCCESS, 0)
                }
                1 => {
                    st.toeplitz = true;
                    (SUCCESS, 0)
                }
                _ => (INVALID_PARAMETER, 0),
            },
            ty::GET_HASH_FLAGS if st.toeplitz => (SUCCESS, types::ALL),
            ty::SET_HASH_FLAGS if st.toeplitz => {
                if d[0] & !types::ALL != 0 {
                    (INVALID_PARAMETER, 0)
                } else {
                    st.flags = d[0];
                    (SUCCESS, 0)
                }
            }
            ty::SET_HASH_KEY if st.toeplitz => {
                let len = d[1] as usize;
                if len > MAX_KEY {
                    return (BUFFER_OVERFLOW, 0);
                }
                if len == 0 {
                    st.key = [0; MAX_KEY];
                    st.key_len = 0;
                    return (SUCCESS, 0);
                }
                match self.fetch(d[0], len) {
                    Some(k) => {
                        st.key = [0; MAX_KEY];
                        st.key[..len].copy_from_slice(&k);
                        st.key_len = len;
                        (SUCCESS, 0)
                    }
                    None => (INVALID_PARAMETER, 0),
                }
            }
            ty::GET_HASH_MAPPING_SIZE if st.toeplitz => (SUCCESS, MAX_MAPPING),
            ty::SET_HASH_MAPPING_SIZE if st.toeplitz => {
                if d[0] > MAX_MAPPING {
                    (INVALID_PARAMETER, 0)
                } else {
                    st.mapping = vec![0; d[0] as usize];
                    (SUCCESS, 0)
                }
            }
            ty::SET_HASH_MAPPING if st.toeplitz => {
                let (gref, len, off) = (d[0], d[1], d[2]);
                // XSA-270: bound len and offset against *our* table before copying.
                let size = u32::try_from(st.mapping.len()).unwrap_or(0);
                match off.checked_add(len) {
                    Some(end) if end <= size => {}
                    _ => return (INVALID_PARAMETER, 0),
                }
                if len == 0 {
                    return (SUCCESS, 0);
                }
                let Some(bytes) = self.fetch(gref, len as usize * 4) else {
                    return (INVALID_PARAMETER, 0);
                };
                let entries: Vec<u32> = bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                if entries.iter().any(|&q| q >= st.queues) {
                    return (INVALID_PARAMETER, 0);
                }
                let off = off as usize;
                st.mapping[off..off + entries.len()].copy_from_slice(&entries);
                (SUCCESS, 0)
            }
            ty::GET_HASH_FLAGS
            | ty::SET_HASH_FLAGS
            | ty::SET_HASH_KEY
            | ty::GET_HASH_MAPPING_SIZE
            | ty::SET_HASH_MAPPING_SIZE
            | ty::SET_HASH_MAPPING => (NOT_SUPPORTED, 0),
            _ => (NOT_SUPPORTED, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcast_filter_is_bounded() {
        let mut f = McastFilter::default();
        for i in 0..MAX_MCAST {
            assert!(f.add([1, 0, 0x5e, 0, 0, u8::try_from(i).unwrap()]));
        }
        assert!(!f.add([1, 0, 0x5e, 0, 1, 0]));
        assert!(f.passes(&[1, 0, 0x5e, 0, 0, 3]));
        assert!(!f.passes(&[1, 0, 0x5e, 0, 1, 0]));
        assert!(f.passes(&[0xff; 6]));
        assert!(f.passes(&[2, 0, 0, 0, 0, 1]));
        f.del([1, 0, 0x5e, 0, 0, 3]);
        assert!(!f.passes(&[1, 0, 0x5e, 0, 0, 3]));
    }

    #[test]
    fn default_steering_is_stable_per_flow() {
        let s = Steering::new(4);
        let mut p = [0u8; 60];
        p[12] = 8;
        p[14] = 0x45;
        p[23] = 6;
        p[46] = 0x50;
        let a = s.select(&p);
        assert_eq!(a, s.select(&p));
        assert!(a.0 < 4);
    }
}
