//! Xen system time (ns since the domain's boot clock), from `vcpu_time_info` and the TSC.

use xen_kmod::shared::SharedInfo;

use crate::arch;

/// Nanoseconds of Xen system time now, or `None` if Xen keeps updating the time record
/// (odd version) for 1000 reads in a row.
pub fn now_ns(si: &SharedInfo<'_>) -> Option<u64> {
    let t = si.legacy_vcpu_info(0)?.time(1000)?;
    let delta = arch::rdtsc().wrapping_sub(t.tsc_timestamp);
    let shift = u32::from(t.tsc_shift.unsigned_abs());
    let delta = if t.tsc_shift >= 0 {
        delta.checked_shl(shift).unwrap_or(0)
    } else {
        delta.checked_shr(shift).unwrap_or(0)
    };
    // (delta * mul) >> 32 without a 128-bit multiply.
    let mul = u64::from(t.tsc_to_system_mul);
    let scaled = (delta >> 32)
        .wrapping_mul(mul)
        .wrapping_add(((delta & 0xFFFF_FFFF) * mul) >> 32);
    Some(t.system_time.wrapping_add(scaled))
}

/// A deadline in Xen system time.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(u64);

impl Deadline {
    /// `ms` milliseconds from now (from system time 0 if the clock cannot be read, which makes
    /// the deadline already past rather than infinite).
    pub fn after_ms(si: &SharedInfo<'_>, ms: u64) -> Deadline {
        Deadline(now_ns(si).unwrap_or(0).saturating_add(ms * 1_000_000))
    }

    /// The absolute time in ns.
    pub fn at(self) -> u64 {
        self.0
    }

    /// Whether the deadline has passed (also when the clock is unreadable).
    pub fn passed(self, si: &SharedInfo<'_>) -> bool {
        now_ns(si).is_none_or(|now| now >= self.0)
    }
}
