//! The 2-level ABI: pending and mask bitmaps in `shared_info`, a per-vCPU selector word.
//!
//! Xen, raising port `p` bound to vCPU `v`: sets pending bit `p`; if it was clear and mask bit
//! `p` is clear, sets selector bit `p / BITS` in `v`'s `vcpu_info` and, if that was clear, sets
//! `evtchn_upcall_pending` and interrupts `v`. (`BITS` = bits of `xen_ulong_t`.)
//!
//! The guest's upcall on `v`: clear `evtchn_upcall_pending`, take the selector, and for each
//! selected word deliver the ports that are pending, unmasked and bound to `v`.

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use xen_kmod::shared::{
    SharedBitmap, SharedInfo, VcpuInfo, BITS_PER_XEN_ULONG, EVTCHN_2L_NR_CHANNELS,
};
use xen_kmod::{Hypervisor, HypervisorExt};

use crate::{Error, Port};

/// Words of selector (and of ownership): `BITS_PER_XEN_ULONG`.
const WORDS: u32 = BITS_PER_XEN_ULONG;
/// 32-bit words per `xen_ulong_t`.
const HALVES: u32 = BITS_PER_XEN_ULONG / 32;

/// The shared bitmaps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TwoLevel<'a> {
    pending: SharedBitmap<'a>,
    mask: SharedBitmap<'a>,
}

/// Per-vCPU scan state: selector bits taken from Xen but not yet fully served, the resume
/// cursor, and which ports are bound to this vCPU.
#[derive(Clone, Debug)]
pub(crate) struct Cursor {
    sel: u64,
    word: u32,
    bit: u32,
    owned: Vec<u64>,
}

impl Cursor {
    pub fn new() -> Self {
        Cursor {
            sel: 0,
            word: 0,
            bit: 0,
            owned: vec![0; WORDS as usize],
        }
    }

    pub fn set_owned(&mut self, port: Port, owned: bool) {
        if let Some(w) = self.owned.get_mut((port / WORDS) as usize) {
            let b = 1u64 << (port % WORDS);
            if owned {
                *w |= b;
            } else {
                *w &= !b;
            }
        }
    }

    #[cfg(test)]
    pub fn position(&self) -> (u32, u32) {
        (self.word, self.bit)
    }
}

/// Outcome of handling one port during a scan.
pub(crate) enum Handled {
    /// An event was produced (counts against the budget).
    Delivered,
    /// Nothing to deliver (e.g. the pending bit was already consumed).
    Nothing,
}

impl<'a> TwoLevel<'a> {
    pub fn new(shared: &SharedInfo<'a>) -> Self {
        TwoLevel {
            pending: shared.evtchn_pending(),
            mask: shared.evtchn_mask(),
        }
    }

    /// Ports of this ABI on this width.
    pub const fn nr_channels() -> u32 {
        EVTCHN_2L_NR_CHANNELS
    }

    /// Masks every port (boot-time state: nothing is delivered until bound and unmasked).
    pub fn mask_all(&self) {
        for p in (0..Self::nr_channels()).step_by(32) {
            // Whole words at a time would be faster; bit by bit keeps one code path and runs once.
            for b in p..p + 32 {
                let _ = self.mask.test_and_set(b);
            }
        }
    }

    pub fn mask(&self, port: Port) {
        let _ = self.mask.test_and_set(port);
    }

    pub fn is_masked(&self, port: Port) -> bool {
        self.mask.test(port).unwrap_or(true)
    }

    pub fn is_pending(&self, port: Port) -> bool {
        self.pending.test(port).unwrap_or(false)
    }

    pub fn clear_pending(&self, port: Port) {
        let _ = self.pending.test_and_clear(port);
    }

    /// Unmasks `port` without losing an event that became pending while it was masked.
    ///
    /// Xen does not notify for a port that is raised while masked; clearing the mask bit alone
    /// would leave such an event pending with no upcall. So: clear the bit, and if the port is
    /// pending, set it again and let `EVTCHNOP_unmask` clear it — Xen's unmask only acts (sets
    /// the selector bit, raises the upcall on the port's vCPU) when it itself clears a set mask
    /// bit, which is why the bit is re-set first. The common case (nothing pending) costs no
    /// hypercall.
    pub fn unmask<H: Hypervisor>(&self, hv: &H, port: Port) -> Result<(), Error> {
        let _ = self.mask.test_and_clear(port);
        // The mask clear must be visible before we look at pending, pairing with Xen's
        // "set pending, then test mask".
        fence(Ordering::SeqCst);
        if self.is_pending(port) {
            let _ = self.mask.test_and_set(port);
            hv.evtchn_unmask(port)?;
        }
        Ok(())
    }

    /// The active (pending, unmasked, ours) bits of selector word `w`.
    fn active(&self, cur: &Cursor, w: u32) -> u64 {
        let mut bits = 0u64;
        for h in 0..HALVES {
            let i = w * HALVES + h;
            let v = self.pending.load_word32(i) & !self.mask.load_word32(i);
            bits |= u64::from(v) << (32 * h);
        }
        bits & cur.owned.get(w as usize).copied().unwrap_or(0)
    }

    /// Scans for vCPU `info`'s events. `handle(port)` is called for each port that is active;
    /// it must consume the pending bit (see [`TwoLevel::take_pending`]). Stops after `budget`
    /// deliveries or `budget + 2 * WORDS + 2` steps; returns whether work remains.
    pub fn scan(
        &self,
        cur: &mut Cursor,
        info: &VcpuInfo<'a>,
        budget: usize,
        mut handle: impl FnMut(Port) -> Handled,
    ) -> bool {
        cur.sel |= info.take_pending_sel();
        let mut delivered = 0usize;
        let step_limit = budget.saturating_add(2 * WORDS as usize + 2);
        let mut steps = 0usize;
        while cur.sel != 0 {
            if delivered >= budget || steps >= step_limit {
                return true;
            }
            steps += 1;
            // The next selected word at or after the cursor, wrapping around.
            let rotated = cur.sel.rotate_right(cur.word);
            let w = (cur.word + rotated.trailing_zeros()) % WORDS;
            if w != cur.word {
                cur.word = w;
                cur.bit = 0;
            }
            let all = self.active(cur, w);
            let from_cursor = if cur.bit == 0 {
                all
            } else {
                all & (u64::MAX << cur.bit)
            };
            if from_cursor == 0 {
                if all == 0 {
                    // Nothing left in this word for us: it is served.
                    cur.sel &= !(1u64 << w);
                }
                // Lower bits (served earlier in this round) wait for the next pass: move on so
                // other words get their turn first.
                cur.word = (w + 1) % WORDS;
                cur.bit = 0;
                continue;
            }
            let b = from_cursor.trailing_zeros();
            let port = w * WORDS + b;
            // Resume after this port next time, whatever happens to it.
            cur.bit = b + 1;
            if cur.bit >= WORDS {
                cur.bit = 0;
                cur.word = (w + 1) % WORDS;
            }
            if let Handled::Delivered = handle(port) {
                delivered += 1;
            }
        }
        false
    }

    /// Atomically consumes `port`'s pending bit; whether it was set.
    pub fn take_pending(&self, port: Port) -> bool {
        self.pending.test_and_clear(port).unwrap_or(false)
    }
}

/// Makes sure a hypervisor-provided port fits the 2-level ABI.
pub(crate) fn check_port(port: Port) -> Result<Port, Error> {
    if port < TwoLevel::nr_channels() {
        Ok(port)
    } else {
        Err(Error::PortOutOfRange(port))
    }
}
