//! Fault injection for the simulated hypervisor: chosen grant statuses, aborted batches,
//! whole-hypercall errors, and events dropped, duplicated or delayed — by rule (the next N
//! matching operations) or at random from the simulation's seeded generator.
//!
//! A peer domain dying is not a rule but an action: [`super::SimHypervisor::destroy_domain`].
use xen_kmod::XenError;

use super::Rng;

/// Which grant operation a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantOp {
    /// `GNTTABOP_map_grant_ref` entries.
    Map,
    /// `GNTTABOP_unmap_grant_ref` entries.
    Unmap,
    /// `GNTTABOP_copy` entries.
    Copy,
}

/// Fail matching grant entries with a chosen `GNTST_*` status (nothing else happens to them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantFault {
    /// The operation.
    pub op: GrantOp,
    /// Only entries issued by this domain (`None`: any).
    pub caller: Option<u16>,
    /// Only entries for this grant reference (map and copy; `None`: any).
    pub gref: Option<u32>,
    /// Let this many matching entries through first.
    pub skip: u32,
    /// Then fail this many.
    pub times: u32,
    /// With this status (e.g. `GNTST_eagain` = -12, `GNTST_bad_page` = -9).
    pub status: i16,
}

impl GrantFault {
    /// Fail the next `times` entries of `op` from any domain with `status`.
    #[must_use]
    pub fn next(op: GrantOp, times: u32, status: i16) -> Self {
        GrantFault {
            op,
            caller: None,
            gref: None,
            skip: 0,
            times,
            status,
        }
    }
}

/// Make the next batch of `op` fail as a whole after processing `after` entries: the entries
/// before are done (and keep their results), the rest are not touched, and the hypercall
/// returns `error`. This is what a fault on copying an entry in or out does in Xen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchAbort {
    /// The operation.
    pub op: GrantOp,
    /// Only batches issued by this domain.
    pub caller: Option<u16>,
    /// Entries processed before the abort.
    pub after: u32,
    /// The hypercall's error.
    pub error: XenError,
}

/// A hypercall family, for [`HypercallFault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `event_channel_op`.
    EventChannel,
    /// `grant_table_op`.
    GrantTable,
    /// `memory_op`.
    Memory,
    /// `hvm_op`.
    Hvm,
}

/// Fail whole hypercalls of a family with an error, before they do anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypercallFault {
    /// The family.
    pub family: Family,
    /// Only calls by this domain.
    pub caller: Option<u16>,
    /// Let this many matching calls through first.
    pub skip: u32,
    /// Then fail this many.
    pub times: u32,
    /// With this error.
    pub error: XenError,
}

/// What happens to one event notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventAction {
    /// Lost.
    Drop,
    /// Delivered, and delivered again one tick later.
    Duplicate,
    /// Delivered this many ticks late.
    Delay(u64),
}

/// Apply an [`EventAction`] to matching notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFault {
    /// Only notifications sent by this domain.
    pub from: Option<u16>,
    /// Only notifications to this domain.
    pub to: Option<u16>,
    /// Only notifications arriving on this port (of the receiver).
    pub port: Option<u32>,
    /// What to do.
    pub action: EventAction,
    /// Let this many matching notifications through first.
    pub skip: u32,
    /// Then act on this many.
    pub times: u32,
}

/// Random event faults, each a probability in parts per million, drawn from the simulation's
/// seeded generator (so a run replays exactly from its seed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventChaos {
    /// Probability of dropping a notification.
    pub drop_ppm: u32,
    /// Probability of duplicating one.
    pub duplicate_ppm: u32,
    /// Probability of delaying one by `1..=max_delay` ticks.
    pub delay_ppm: u32,
    /// Longest random delay.
    pub max_delay: u64,
}

/// The active rules.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub(crate) grant: Vec<GrantFault>,
    pub(crate) abort: Vec<BatchAbort>,
    pub(crate) hypercall: Vec<HypercallFault>,
    pub(crate) event: Vec<EventFault>,
    pub(crate) chaos: EventChaos,
}

/// Counts down a (skip, times) rule: `true` if this occurrence is to be acted on; the rule is
/// used up when `times` reaches zero.
fn tick(skip: &mut u32, times: &mut u32) -> bool {
    if *skip > 0 {
        *skip -= 1;
        return false;
    }
    if *times > 0 {
        *times -= 1;
        return true;
    }
    false
}

impl Faults {
    /// The injected status for one grant entry, if a rule fires.
    pub(crate) fn grant_status(
        &mut self,
        op: GrantOp,
        caller: u16,
        gref: Option<u32>,
    ) -> Option<i16> {
        let mut hit = None;
        for f in &mut self.grant {
            let matches = f.op == op
                && f.caller.is_none_or(|c| c == caller)
                && (f.gref.is_none() || f.gref == gref);
            if matches && hit.is_none() && tick(&mut f.skip, &mut f.times) {
                hit = Some(f.status);
            }
        }
        self.grant.retain(|f| f.times > 0);
        hit
    }

    /// The abort point of a batch, if a rule fires (one-shot).
    pub(crate) fn batch_abort(&mut self, op: GrantOp, caller: u16) -> Option<(u32, XenError)> {
        let i = self
            .abort
            .iter()
            .position(|a| a.op == op && a.caller.is_none_or(|c| c == caller))?;
        let a = self.abort.remove(i);
        Some((a.after, a.error))
    }

    /// A whole-call error, if a rule fires.
    pub(crate) fn hypercall(&mut self, family: Family, caller: u16) -> Option<XenError> {
        let mut hit = None;
        for f in &mut self.hypercall {
            if f.family == family
                && f.caller.is_none_or(|c| c == caller)
                && hit.is_none()
                && tick(&mut f.skip, &mut f.times)
            {
                hit = Some(f.error);
            }
        }
        self.hypercall.retain(|f| f.times > 0);
        hit
    }

    /// What happens to a notification from `from` to port `port` of `to`.
    pub(crate) fn event(
        &mut self,
        from: u16,
        to: u16,
        port: u32,
        rng: &mut Rng,
    ) -> Option<EventAction> {
        let mut hit = None;
        for f in &mut self.event {
            if f.from.is_none_or(|d| d == from)
                && f.to.is_none_or(|d| d == to)
                && f.port.is_none_or(|p| p == port)
                && hit.is_none()
                && tick(&mut f.skip, &mut f.times)
            {
                hit = Some(f.action);
            }
        }
        self.event.retain(|f| f.times > 0);
        if hit.is_some() {
            return hit;
        }
        let c = self.chaos;
        if c.drop_ppm == 0 && c.duplicate_ppm == 0 && c.delay_ppm == 0 {
            return None;
        }
        let roll = rng.below(1_000_000);
        let (d, u, l) = (
            u64::from(c.drop_ppm),
            u64::from(c.duplicate_ppm),
            u64::from(c.delay_ppm),
        );
        if roll < d {
            Some(EventAction::Drop)
        } else if roll < d + u {
            Some(EventAction::Duplicate)
        } else if roll < d + u + l {
            Some(EventAction::Delay(1 + rng.below(c.max_delay.max(1))))
        } else {
            None
        }
    }
}
