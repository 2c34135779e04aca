//! The FIFO event channel ABI, simplified, for guests that want it
//! ([`super::hypervisor::FifoSupport::Supported`]).
//!
//! What is modelled (after `xen/common/event_fifo.c`):
//!
//! * `EVTCHNOP_init_control` registers a vCPU's control block (`ready` bitmap and the 16
//!   queue heads) in a guest page and switches the domain to FIFO; `link_bits` is returned.
//! * `EVTCHNOP_expand_array` adds one guest page of 1024 event words.
//! * Raising a port sets `PENDING` in its event word; if the word is neither `MASKED` nor
//!   `LINKED`, it is linked at the tail of its vCPU's queue for its priority (the previous
//!   tail's `LINK` field is set with a compare-exchange that fails if the guest already
//!   consumed that tail — then the port becomes the new head in the control block), `READY`
//!   gets the priority's bit and, if that bit was clear, `evtchn_upcall_pending` is set.
//! * `EVTCHNOP_unmask` re-raises a pending port; `EVTCHNOP_set_priority` moves later links
//!   to another queue; closing a port clears its `PENDING`.
//!
//! Simplifications: a port whose event word is not in the array yet is lost (counted as stale)
//! rather than remembered; there is no 2-level → FIFO migration of already-pending ports; the
//! `BUSY` bit is honoured by retrying a bounded number of times, then giving up the link (the
//! port is then made the new head, which is what Xen does when the old tail is unlinked).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use xen_kmod::XenError;
use xen_sys::x86_64 as abi;

use super::hypervisor::State;
use super::memory::{Machine, Phys};

const PENDING: u32 = 1 << abi::EVTCHN_FIFO_PENDING;
const MASKED: u32 = 1 << abi::EVTCHN_FIFO_MASKED;
const LINKED: u32 = 1 << abi::EVTCHN_FIFO_LINKED;
const BUSY: u32 = 1 << abi::EVTCHN_FIFO_BUSY;
const LINK_MASK: u32 = abi::EVTCHN_FIFO_LINK_MASK;
const WORDS_PER_PAGE: u32 = 1024;
const MAX_ARRAY_PAGES: usize = (abi::EVTCHN_FIFO_NR_CHANNELS / WORDS_PER_PAGE) as usize;
const QUEUES: usize = abi::EVTCHN_FIFO_MAX_QUEUES as usize;
const CONTROL_BLOCK_SIZE: usize = core::mem::size_of::<abi::evtchn_fifo_control_block>();
const READY_OFFSET: usize = core::mem::offset_of!(abi::evtchn_fifo_control_block, ready);
const HEAD_OFFSET: usize = core::mem::offset_of!(abi::evtchn_fifo_control_block, head);
/// The priority of a port nobody set one for.
pub const DEFAULT_PRIORITY: u8 = 7;

/// A domain's FIFO state.
#[derive(Debug, Default)]
pub(crate) struct FifoState {
    /// MFNs of the event array pages.
    array: Vec<usize>,
    /// Per vCPU: control block (MFN, byte offset) and each queue's tail port.
    control: Vec<Option<(usize, usize)>>,
    tails: Vec<[u32; QUEUES]>,
    priority: HashMap<u32, u8>,
}

fn word<'m>(m: &'m Machine, f: &FifoState, port: u32) -> Option<&'m AtomicU32> {
    let page = *f.array.get((port / WORDS_PER_PAGE) as usize)?;
    m.page(page)?.0.get((port % WORDS_PER_PAGE) as usize)
}

impl State {
    fn fifo_ram(&self, dom: u16, gfn: u64) -> Result<usize, XenError> {
        match self.domains.get(&dom).and_then(|d| d.physmap.get(gfn)) {
            Some(Phys::Ram(mfn)) => Ok(mfn),
            _ => Err(XenError::EINVAL),
        }
    }

    /// Whether `dom` uses the FIFO ABI.
    pub(crate) fn is_fifo(&self, dom: u16) -> bool {
        self.domains.get(&dom).is_some_and(|d| d.fifo.is_some())
    }

    /// `EVTCHNOP_init_control`.
    pub(crate) fn fifo_init_control(
        &mut self,
        dom: u16,
        c: &mut abi::evtchn_init_control,
    ) -> Result<(), XenError> {
        let mfn = self.fifo_ram(dom, c.control_gfn)?;
        let off = c.offset as usize;
        if off % 8 != 0 || off + CONTROL_BLOCK_SIZE > 4096 {
            return Err(XenError::EINVAL);
        }
        let d = self.domains.get_mut(&dom).ok_or(XenError::ESRCH)?;
        if c.vcpu >= d.vcpus {
            return Err(XenError::ENOENT);
        }
        let vcpus = d.vcpus as usize;
        let f = d.fifo.get_or_insert_with(|| FifoState {
            control: vec![None; vcpus],
            tails: vec![[0; QUEUES]; vcpus],
            ..FifoState::default()
        });
        let slot = f.control.get_mut(c.vcpu as usize).ok_or(XenError::ENOENT)?;
        if slot.is_some() {
            return Err(XenError::EINVAL);
        }
        *slot = Some((mfn, off));
        // CAST: 17.
        #[expect(clippy::cast_possible_truncation)]
        let bits = abi::EVTCHN_FIFO_LINK_BITS as u8;
        c.link_bits = bits;
        Ok(())
    }

    /// `EVTCHNOP_expand_array`.
    pub(crate) fn fifo_expand(&mut self, dom: u16, gfn: u64) -> Result<(), XenError> {
        let mfn = self.fifo_ram(dom, gfn)?;
        let d = self.domains.get_mut(&dom).ok_or(XenError::ESRCH)?;
        let f = d.fifo.as_mut().ok_or(XenError::EINVAL)?;
        if f.array.len() >= MAX_ARRAY_PAGES {
            return Err(XenError::ENOSPC);
        }
        f.array.push(mfn);
        Ok(())
    }

    /// `EVTCHNOP_set_priority`.
    pub(crate) fn fifo_set_priority(
        &mut self,
        dom: u16,
        port: u32,
        prio: u32,
    ) -> Result<(), XenError> {
        let d = self.domains.get_mut(&dom).ok_or(XenError::ESRCH)?;
        d.evt.get(port).ok_or(XenError::EINVAL)?;
        let f = d.fifo.as_mut().ok_or(XenError::EINVAL)?;
        let prio = u8::try_from(prio)
            .ok()
            .filter(|&p| usize::from(p) < QUEUES)
            .ok_or(XenError::EINVAL)?;
        f.priority.insert(port, prio);
        Ok(())
    }

    /// Raises `port` of a FIFO domain (Xen's `evtchn_fifo_set_pending`).
    pub(crate) fn fifo_set_pending(&mut self, m: &Machine, dom: u16, port: u32, vcpu: u32) {
        let Some(f) = self.domains.get(&dom).and_then(|d| d.fifo.as_ref()) else {
            return;
        };
        let Some(w) = word(m, f, port) else {
            self.stats.events_stale += 1;
            return;
        };
        w.fetch_or(PENDING, Ordering::SeqCst);
        let cur = w.load(Ordering::SeqCst);
        if cur & (MASKED | LINKED) != 0 {
            return;
        }
        if w.fetch_or(LINKED, Ordering::SeqCst) & LINKED != 0 {
            return;
        }
        let prio = usize::from(f.priority.get(&port).copied().unwrap_or(DEFAULT_PRIORITY));
        let Some(Some((cmfn, coff))) = f.control.get(vcpu as usize).copied() else {
            return;
        };
        let tail = f.tails.get(vcpu as usize).map_or(0, |t| t[prio]);
        // Link behind the old tail, unless the guest consumed it already.
        let mut linked = false;
        if tail != 0 {
            if let Some(tw) = word(m, f, tail) {
                let mut cur = tw.load(Ordering::SeqCst);
                for _ in 0..16 {
                    if cur & LINKED == 0 {
                        break;
                    }
                    if cur & BUSY != 0 {
                        std::hint::spin_loop();
                        cur = tw.load(Ordering::SeqCst);
                        continue;
                    }
                    match tw.compare_exchange(
                        cur,
                        (cur & !LINK_MASK) | (port & LINK_MASK),
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    ) {
                        Ok(_) => {
                            linked = true;
                            break;
                        }
                        Err(a) => cur = a,
                    }
                }
            }
        }
        let Some(cb) = m.page(cmfn) else { return };
        if !linked {
            if let Some(h) = cb.0.get((coff + HEAD_OFFSET) / 4 + prio) {
                h.store(port, Ordering::SeqCst);
            }
        }
        if let Some(t) = self
            .domains
            .get_mut(&dom)
            .and_then(|d| d.fifo.as_mut())
            .and_then(|f| f.tails.get_mut(vcpu as usize))
        {
            t[prio] = port;
        }
        let bit = 1u32 << prio;
        let was_ready =
            cb.0.get((coff + READY_OFFSET) / 4)
                .map_or(bit, |r| r.fetch_or(bit, Ordering::SeqCst));
        if was_ready & bit == 0 {
            self.raise_upcall(m, dom, vcpu);
        }
    }

    /// `EVTCHNOP_unmask` on a FIFO domain.
    pub(crate) fn fifo_unmask(&mut self, m: &Machine, dom: u16, port: u32, vcpu: u32) {
        let Some(f) = self.domains.get(&dom).and_then(|d| d.fifo.as_ref()) else {
            return;
        };
        let Some(w) = word(m, f, port) else { return };
        w.fetch_and(!MASKED, Ordering::SeqCst);
        if w.load(Ordering::SeqCst) & PENDING != 0 {
            self.fifo_set_pending(m, dom, port, vcpu);
        }
    }

    /// Whether `port` of a FIFO domain is pending.
    pub(crate) fn fifo_is_pending(&self, m: &Machine, dom: u16, port: u32) -> bool {
        self.domains
            .get(&dom)
            .and_then(|d| d.fifo.as_ref())
            .and_then(|f| word(m, f, port))
            .is_some_and(|w| w.load(Ordering::SeqCst) & PENDING != 0)
    }

    /// Clears `PENDING` of a closed port.
    pub(crate) fn fifo_clear_pending(&self, m: &Machine, dom: u16, port: u32) {
        let Some(f) = self.domains.get(&dom).and_then(|d| d.fifo.as_ref()) else {
            return;
        };
        if let Some(w) = word(m, f, port) {
            w.fetch_and(!PENDING, Ordering::SeqCst);
        }
    }
}
