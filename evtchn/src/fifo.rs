//! The FIFO ABI (Xen 4.4+): one 32-bit event word per port in guest-provided event-array pages,
//! and per vCPU a control block with a `ready` bitmap and 16 priority queue heads.
//!
//! Event word: `PENDING` (31), `MASKED` (30), `LINKED` (29), `BUSY` (28), and a 17-bit `LINK` to
//! the next port of the same queue. Xen, raising a port: sets `PENDING`; if not `MASKED` and not
//! `LINKED`, links it at the tail of its vCPU's queue for its priority (setting `LINKED`), and if
//! the queue was empty sets the queue's head and its bit in `ready` and raises the upcall.
//!
//! The guest's upcall: take `ready`; for the highest-priority ready queue, take the head (from
//! the control block when our local head is 0), clear `LINKED` and the link in its word, which
//! yields the next port; deliver the port if it is pending and unmasked. Our local heads and
//! `ready` bits persist between polls, so a bounded poll resumes exactly where it stopped.

use alloc::vec::Vec;
use core::mem::offset_of;
use core::sync::atomic::{fence, Ordering};

use xen_kmod::shared::AtomicWord;
use xen_kmod::{Hypervisor, HypervisorExt};
use xen_shmem::SharedMem;
use xen_sys::consts::evtchn::{EVTCHN_FIFO_MAX_QUEUES, EVTCHN_FIFO_NR_CHANNELS};
use xen_sys::consts::EvtchnFifoWord;
use xen_sys::native::evtchn_fifo_control_block;

use crate::{Error, Port};

const PENDING: u32 = EvtchnFifoWord::PENDING.bits();
const MASKED: u32 = EvtchnFifoWord::MASKED.bits();
const LINKED: u32 = EvtchnFifoWord::LINKED.bits();
const BUSY: u32 = EvtchnFifoWord::BUSY.bits();
const LINK_MASK: u32 = EvtchnFifoWord::LINK.bits();

/// Event words per 4 KiB page.
pub(crate) const WORDS_PER_PAGE: u32 = 1024;
/// Most event-array pages the ABI can address.
pub(crate) const MAX_PAGES: u32 = EVTCHN_FIFO_NR_CHANNELS / WORDS_PER_PAGE;
/// Attempts for a compare-exchange against a word Xen is updating before giving up for now.
const CAS_TRIES: u32 = 64;

/// The domain-wide part: the event array.
#[derive(Debug)]
pub(crate) struct Fifo<'a> {
    pages: Vec<SharedMem<'a>>,
}

/// The per-vCPU part: its control block and our consumer state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FifoVcpu<'a> {
    control: SharedMem<'a>,
    ready: u32,
    head: [u32; EVTCHN_FIFO_MAX_QUEUES],
}

/// Outcome of handling one port during a scan (as in the 2-level scan).
pub(crate) use crate::twolevel::Handled;

impl<'a> FifoVcpu<'a> {
    /// A vCPU whose control block is `control` (registered with Xen by the caller).
    pub fn new(control: SharedMem<'a>) -> Result<Self, Error> {
        let control = control.subrange(0, core::mem::size_of::<evtchn_fifo_control_block>())?;
        // Reject misaligned views now rather than failing silently later.
        let _ = AtomicWord::at(&control, 0)?;
        Ok(FifoVcpu {
            control,
            ready: 0,
            head: [0; EVTCHN_FIFO_MAX_QUEUES],
        })
    }

    fn ready_word(&self) -> Option<AtomicWord<'a>> {
        AtomicWord::at(&self.control, offset_of!(evtchn_fifo_control_block, ready)).ok()
    }

    fn shared_head(&self, q: usize) -> u32 {
        let off = offset_of!(evtchn_fifo_control_block, head) + q * 4;
        self.control.load_acquire_u32(off).unwrap_or(0)
    }
}

impl<'a> Fifo<'a> {
    pub fn new() -> Self {
        Fifo { pages: Vec::new() }
    }

    /// Ports currently backed by event words.
    pub fn capacity(&self) -> u32 {
        // CAST: at most MAX_PAGES (128) pages.
        u32::try_from(self.pages.len()).map_or(0, |n| n * WORDS_PER_PAGE)
    }

    /// Initialises a fresh page (every port masked, as Linux does: a port becomes unmasked
    /// only when bound) and registers it with Xen as the next event-array page.
    pub fn add_page<H: Hypervisor>(
        &mut self,
        hv: &H,
        page: SharedMem<'a>,
        gfn: u64,
    ) -> Result<(), Error> {
        if self.pages.len() >= MAX_PAGES as usize {
            return Err(Error::PortOutOfRange(self.capacity()));
        }
        let page = page.subrange(0, 4096)?;
        for i in 0..WORDS_PER_PAGE as usize {
            page.store_relaxed_u32(i * 4, MASKED)?;
        }
        self.pages.try_reserve(1).map_err(|_| Error::NoMemory)?;
        // Publish the initialised words before Xen can see the page.
        fence(Ordering::SeqCst);
        hv.evtchn_expand_array(gfn)?;
        self.pages.push(page);
        Ok(())
    }

    fn word(&self, port: Port) -> Option<AtomicWord<'a>> {
        let page = self.pages.get((port / WORDS_PER_PAGE) as usize)?;
        AtomicWord::at(page, (port % WORDS_PER_PAGE) as usize * 4).ok()
    }

    pub fn load(&self, port: Port) -> u32 {
        self.word(port).map_or(MASKED, |w| w.load(Ordering::SeqCst))
    }

    pub fn mask(&self, port: Port) {
        if let Some(w) = self.word(port) {
            w.fetch_or(MASKED, Ordering::SeqCst);
        }
    }

    pub fn is_masked(&self, port: Port) -> bool {
        self.load(port) & MASKED != 0
    }

    pub fn is_pending(&self, port: Port) -> bool {
        self.load(port) & PENDING != 0
    }

    pub fn clear_pending(&self, port: Port) {
        if let Some(w) = self.word(port) {
            w.fetch_and(!PENDING, Ordering::SeqCst);
        }
    }

    /// Atomically consumes `port`'s pending bit; whether it was set.
    pub fn take_pending(&self, port: Port) -> bool {
        self.word(port)
            .is_some_and(|w| w.fetch_and(!PENDING, Ordering::SeqCst) & PENDING != 0)
    }

    /// Unmasks `port`. If it is pending, Xen must (re)link it, which only `EVTCHNOP_unmask`
    /// does; so the guest clears `MASKED` itself only when the port is not pending, and never
    /// while Xen holds `BUSY` (the compare-exchange expects `BUSY` clear).
    pub fn unmask<H: Hypervisor>(&self, hv: &H, port: Port) -> Result<(), Error> {
        let Some(w) = self.word(port) else {
            return Err(Error::NotBound(port));
        };
        let mut cur = w.load(Ordering::SeqCst);
        for _ in 0..CAS_TRIES {
            if cur & MASKED == 0 {
                return Ok(());
            }
            if cur & PENDING != 0 {
                break;
            }
            let old = cur & !BUSY;
            match w.compare_exchange(old, old & !MASKED) {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
        // Pending (or Xen kept the word busy): let Xen unmask and relink it.
        hv.evtchn_unmask(port)?;
        Ok(())
    }

    /// Clears `LINKED` and the link of `port`'s word; returns the link (the next port), or
    /// `None` if Xen kept changing the word.
    fn clear_linked(&self, port: Port) -> Option<u32> {
        let w = self.word(port)?;
        let mut cur = w.load(Ordering::SeqCst);
        for _ in 0..CAS_TRIES {
            let new = cur & !(LINKED | LINK_MASK);
            match w.compare_exchange(cur, new) {
                Ok(_) => return Some(cur & LINK_MASK),
                Err(now) => cur = now,
            }
        }
        None
    }

    /// Consumes up to `budget` events of vCPU `v`'s queues, highest priority first.
    /// `handle(port)` is called for each linked port that is pending and unmasked; it must
    /// consume the pending bit. Returns whether work remains.
    pub fn scan(
        &self,
        v: &mut FifoVcpu<'a>,
        budget: usize,
        bad_links: &mut u64,
        mut handle: impl FnMut(Port) -> Handled,
    ) -> bool {
        let Some(ready_word) = v.ready_word() else {
            return false;
        };
        v.ready |= ready_word.swap(0, Ordering::SeqCst);
        let mut delivered = 0usize;
        // Each step unlinks one port; a corrupt cyclic list is cut by this bound.
        let step_limit = budget.saturating_add(EVTCHN_FIFO_MAX_QUEUES + 2);
        let mut steps = 0usize;
        while v.ready != 0 {
            if delivered >= budget || steps >= step_limit {
                return true;
            }
            steps += 1;
            let q = v.ready.trailing_zeros() as usize;
            if q >= EVTCHN_FIFO_MAX_QUEUES {
                // Bits Xen never sets: ignore them.
                v.ready &= (1 << EVTCHN_FIFO_MAX_QUEUES) - 1;
                continue;
            }
            let mut head = v.head[q];
            if head == 0 {
                // Our queue copy ran dry: re-read Xen's head (acquire: the words it links were
                // written before it published the head).
                head = v.shared_head(q);
            }
            if head == 0 || head >= self.capacity() {
                // An empty or impossible queue: drop the ready bit. (Head 0 with the ready bit
                // set can only be a hypervisor bug; past the array, a corrupt control block.)
                if head != 0 {
                    *bad_links += 1;
                }
                v.head[q] = 0;
                v.ready &= !(1 << q);
                continue;
            }
            let Some(mut next) = self.clear_linked(head) else {
                // Xen is busy with this word; come back later.
                return true;
            };
            if next >= self.capacity() {
                *bad_links += 1;
                next = 0;
            }
            if next == 0 {
                v.ready &= !(1 << q);
            }
            v.head[q] = next;
            let word = self.load(head);
            if word & PENDING != 0 && word & MASKED == 0 {
                if let Handled::Delivered = handle(head) {
                    delivered += 1;
                }
            }
            v.ready |= ready_word.swap(0, Ordering::SeqCst);
        }
        false
    }
}

/// Makes sure a hypervisor-provided port fits the FIFO ABI.
pub(crate) fn check_port(port: Port) -> Result<Port, Error> {
    if port != 0 && port < EVTCHN_FIFO_NR_CHANNELS {
        Ok(port)
    } else {
        Err(Error::PortOutOfRange(port))
    }
}
