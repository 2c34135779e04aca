//! The storm throttle (XSA-332 / XSA-391 class): a peer that raises a port faster than any
//! real workload needs gets that port masked for a while instead of pinning a vCPU in the
//! upcall.
//!
//! Fixed windows: each throttled port counts its deliveries in the current window of
//! `window_ns`; the delivery that exceeds `max_per_window` is still handed to the driver (it is
//! a real event) but the port is then masked until `now + defer_ns`. Events raised meanwhile stay
//! pending at Xen and are delivered after the unmask: throttling delays, it never drops.
//!
//! The defaults allow 10 000 events per 10 ms window per port (a million per second, above what
//! a single ring needs even at line rate with per-packet notifications) and defer for 1 ms.
//! The XSA-332 fix in Linux was tuned too tightly at first and cost FreeBSD guests real network
//! throughput; erring on the generous side keeps the protection (a vCPU cannot be held for more
//! than `max_per_window` deliveries per window per port) without that regression.

use crate::table::Slot;

/// Throttle parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Window length in ns.
    pub window_ns: u64,
    /// Deliveries allowed per port per window.
    pub max_per_window: u32,
    /// How long an offending port stays masked, in ns.
    pub defer_ns: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            window_ns: 10_000_000,
            max_per_window: 10_000,
            defer_ns: 1_000_000,
        }
    }
}

/// Counts one delivery on `slot` at `now`; returns `true` if the port must now be throttled.
pub(crate) fn count(cfg: &ThrottleConfig, slot: &mut Slot, now: u64) -> bool {
    if !slot.throttle {
        return false;
    }
    // A clock that goes backwards (or a first event) starts a new window.
    if now < slot.window_start || now - slot.window_start >= cfg.window_ns {
        slot.window_start = now;
        slot.window_count = 0;
    }
    slot.window_count = slot.window_count.saturating_add(1);
    if slot.window_count > cfg.max_per_window {
        slot.deferred_until = now.saturating_add(cfg.defer_ns);
        slot.window_count = 0;
        slot.window_start = slot.deferred_until;
        slot.stats.throttled += 1;
        return true;
    }
    false
}
