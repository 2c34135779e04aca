//! The control ring, frontend side: Toeplitz receive steering configured over
//! `ctrl-ring-ref` / `event-channel-ctrl` (`io/netif.h`, "Control ring").
//!
//! # Shape
//!
//! [`CtrlClient::configure_toeplitz`] queues the whole sequence (algorithm, flags, key, mapping
//! size, mapping); [`CtrlClient::poll`], called on the control port's event, collects the
//! response and issues the next request. One request is outstanding at a time: key and
//! mapping travel through the same granted page, and each step depends on the previous one
//! (the flags and mapping size the backend offers bound what we may set).
//!
//! # Validation
//!
//! Each response is copied off the ring once and checked against the one request in flight:
//! same id, same type, a status netif.h defines, and data within bounds (a set operation
//! answers 0; a mapping size is at least 1). Anything else is a protocol violation: a sticky
//! [`CtrlError`], no further ring work, as for the data queues. A backend *refusing* an
//! operation (a defined non-success status) is not a violation: the configuration ends with
//! [`Outcome::Refused`] and the backend falls back to its own steering.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use xen_kmod::{Hypervisor, HypervisorExt};
use xen_netif::ctrl::{self, status, ty};
use xen_netif::hash::{types, MAX_KEY};
use xen_netif::raw::{CtrlRequest, CtrlResponse};
use xen_netif::PAGE_SIZE;
use xen_ring::{Fault, FrontRing};

use crate::queue::SharedPage;

/// Most mapping entries we send: one data page of `u32`s.
pub const MAX_MAPPING_ENTRIES: usize = PAGE_SIZE / 4;

/// A Toeplitz configuration to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toeplitz {
    /// Hash types (`xen_netif::hash::types`).
    pub flags: u32,
    /// The key (at most [`MAX_KEY`] bytes).
    pub key: Vec<u8>,
    /// Mapping table: `mapping[hash % len]` is the queue (each `<` the number of queues);
    /// empty means "hash % queues".
    pub mapping: Vec<u32>,
}

/// A sticky control-ring failure: the backend broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlError {
    /// Ring index violation.
    Ring(Fault),
    /// A response while nothing was in flight.
    Unexpected,
    /// A response whose id is not the one in flight.
    BadId {
        /// The id in flight.
        expected: u16,
        /// What the backend answered.
        got: u16,
    },
    /// A response whose type is not the request's.
    BadType {
        /// The request's type.
        expected: u16,
        /// What the backend answered.
        got: u16,
    },
    /// A status netif.h does not define.
    BadStatus(u32),
    /// Response data out of bounds for its type.
    BadData {
        /// The request's type.
        kind: u16,
        /// The data.
        data: u32,
    },
}

/// Why a configuration was not queued (nothing was sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// A configuration is already in progress.
    Busy,
    /// Key longer than [`MAX_KEY`].
    KeyTooLong,
    /// More than [`MAX_MAPPING_ENTRIES`] entries.
    MappingTooLarge,
    /// A mapping entry names a queue we do not have.
    BadQueue(u32),
    /// Hash types this implementation does not know.
    BadFlags(u32),
    /// The ring has failed.
    Failed(CtrlError),
}

/// How a configuration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every step succeeded: the backend steers by our table.
    Configured,
    /// The backend refused a step (`status` is one of `xen_netif::ctrl::status`).
    Refused {
        /// The step's type.
        kind: u16,
        /// Its status.
        status: u32,
    },
    /// The backend cannot compute some of the hash types asked for.
    FlagsUnsupported {
        /// What it can compute.
        offered: u32,
    },
    /// The backend's mapping table is smaller than ours.
    MappingTooLarge {
        /// Its largest table.
        max: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Algorithm,
    GetFlags,
    SetFlags,
    Key,
    GetMappingSize,
    SetMappingSize,
    Mapping,
}

/// The frontend end of the control ring.
///
/// # Invariants
/// At most one request is in flight (`inflight`); `steps` is empty when no configuration is
/// in progress.
#[derive(Debug)]
pub struct CtrlClient<'a, H: Hypervisor> {
    hv: H,
    port: u32,
    queues: u32,
    ring: FrontRing<'a, CtrlRequest, CtrlResponse>,
    data: SharedPage<'a>,
    next_id: u16,
    inflight: Option<(u16, u16)>,
    steps: VecDeque<Step>,
    cfg: Option<Toeplitz>,
    failed: Option<CtrlError>,
}

impl<'a, H: Hypervisor> CtrlClient<'a, H> {
    /// A client over a freshly initialised ring page (`ring` is initialised here) and a page
    /// granted read-only to the backend for keys and tables, for a device with `queues` queues.
    ///
    /// # Errors
    /// The ring's setup error.
    pub fn new(
        hv: H,
        port: u32,
        queues: u32,
        ring: xen_shmem::SharedMem<'a>,
        data: SharedPage<'a>,
    ) -> Result<Self, xen_ring::SetupError> {
        Ok(CtrlClient {
            hv,
            port,
            queues: queues.max(1),
            ring: FrontRing::init(ring)?,
            data,
            next_id: 0,
            inflight: None,
            steps: VecDeque::new(),
            cfg: None,
            failed: None,
        })
    }

    /// Our port.
    #[must_use]
    pub fn port(&self) -> u32 {
        self.port
    }

    /// The sticky failure, if any.
    #[must_use]
    pub fn failure(&self) -> Option<CtrlError> {
        self.failed
    }

    /// Whether a configuration is in progress.
    #[must_use]
    pub fn is_busy(&self) -> bool {
        self.inflight.is_some() || !self.steps.is_empty()
    }

    fn fail(&mut self, e: CtrlError) -> CtrlError {
        self.steps.clear();
        self.cfg = None;
        *self.failed.get_or_insert(e)
    }

    /// Queues the Toeplitz configuration `t` and sends its first request. The configuration is
    /// checked here against our own limits, so the backend only ever sees well-formed
    /// requests.
    ///
    /// # Errors
    /// [`ConfigError`]; nothing was sent.
    pub fn configure_toeplitz(&mut self, t: Toeplitz) -> Result<(), ConfigError> {
        if let Some(e) = self.failed {
            return Err(ConfigError::Failed(e));
        }
        if self.is_busy() {
            return Err(ConfigError::Busy);
        }
        if t.key.len() > MAX_KEY {
            return Err(ConfigError::KeyTooLong);
        }
        if t.mapping.len() > MAX_MAPPING_ENTRIES {
            return Err(ConfigError::MappingTooLarge);
        }
        if let Some(&q) = t.mapping.iter().find(|&&q| q >= self.queues) {
            return Err(ConfigError::BadQueue(q));
        }
        if t.flags & !types::ALL != 0 {
            return Err(ConfigError::BadFlags(t.flags));
        }
        self.steps
            .extend([Step::Algorithm, Step::GetFlags, Step::SetFlags, Step::Key]);
        if !t.mapping.is_empty() {
            self.steps
                .extend([Step::GetMappingSize, Step::SetMappingSize, Step::Mapping]);
        }
        self.cfg = Some(t);
        self.issue().map_err(ConfigError::Failed)
    }

    /// Sends the next step's request (if none is in flight).
    fn issue(&mut self) -> Result<(), CtrlError> {
        if self.inflight.is_some() {
            return Ok(());
        }
        let (Some(&step), Some(cfg)) = (self.steps.front(), self.cfg.as_ref()) else {
            return Ok(());
        };
        let gref = self.data.gref;
        // Lengths are bounded by MAX_KEY / MAX_MAPPING_ENTRIES (checked when queued).
        let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let (kind, d) = match step {
            Step::Algorithm => (ty::SET_HASH_ALGORITHM, [ctrl::ALGORITHM_TOEPLITZ, 0, 0]),
            Step::GetFlags => (ty::GET_HASH_FLAGS, [0; 3]),
            Step::SetFlags => (ty::SET_HASH_FLAGS, [cfg.flags, 0, 0]),
            Step::Key => {
                // Our own page, large enough: the copy cannot fail.
                let _ = self.data.mem.copy_from_slice(0, &cfg.key);
                (ty::SET_HASH_KEY, [gref, len32(cfg.key.len()), 0])
            }
            Step::GetMappingSize => (ty::GET_HASH_MAPPING_SIZE, [0; 3]),
            Step::SetMappingSize => (ty::SET_HASH_MAPPING_SIZE, [len32(cfg.mapping.len()), 0, 0]),
            Step::Mapping => {
                let bytes: Vec<u8> = cfg.mapping.iter().flat_map(|q| q.to_le_bytes()).collect();
                let _ = self.data.mem.copy_from_slice(0, &bytes);
                (ty::SET_HASH_MAPPING, [gref, len32(cfg.mapping.len()), 0])
            }
        };
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let req: CtrlRequest = [ctrl::word0(id, kind), d[0], d[1], d[2]];
        match self.ring.push_request(&req) {
            Ok(()) => {}
            // One request at a time on a ring of 128: full means the backend never consumed
            // what it answered — its indices are inconsistent, which push reports as a fault.
            Err(xen_ring::PushError::Full) => return Ok(()),
            Err(xen_ring::PushError::Fault(f)) => return Err(self.fail(CtrlError::Ring(f))),
        }
        self.inflight = Some((id, kind));
        match self.ring.push_requests_and_check_notify() {
            Ok(n) if n.is_required() => {
                let _ = self.hv.evtchn_send(self.port);
            }
            Ok(_) => {}
            Err(f) => return Err(self.fail(CtrlError::Ring(f))),
        }
        Ok(())
    }

    /// Collects responses and issues the next steps. Returns the configuration's outcome once
    /// it has ended.
    ///
    /// # Errors
    /// The sticky [`CtrlError`].
    pub fn poll(&mut self) -> Result<Option<Outcome>, CtrlError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        loop {
            let rsp = match self.ring.pop_response() {
                Ok(Some(r)) => r,
                Ok(None) => match self.ring.final_check_for_responses() {
                    Ok(true) => continue,
                    Ok(false) => return Ok(None),
                    Err(f) => return Err(self.fail(CtrlError::Ring(f))),
                },
                Err(f) => return Err(self.fail(CtrlError::Ring(f))),
            };
            // `rsp` is our copy; nothing below reads the ring again.
            if let Some(outcome) = self.complete(rsp)? {
                return Ok(Some(outcome));
            }
            self.issue()?;
        }
    }

    /// Validates one response against the request in flight and advances the sequence.
    fn complete(&mut self, rsp: CtrlResponse) -> Result<Option<Outcome>, CtrlError> {
        let (id, kind) = ctrl::split_word0(rsp[0]);
        let (st, data) = (rsp[1], rsp[2]);
        let Some((want_id, want_kind)) = self.inflight.take() else {
            return Err(self.fail(CtrlError::Unexpected));
        };
        if id != want_id {
            return Err(self.fail(CtrlError::BadId {
                expected: want_id,
                got: id,
            }));
        }
        if kind != want_kind {
            return Err(self.fail(CtrlError::BadType {
                expected: want_kind,
                got: kind,
            }));
        }
        if st > status::BUFFER_OVERFLOW {
            return Err(self.fail(CtrlError::BadStatus(st)));
        }
        let bad = || CtrlError::BadData { kind, data };
        let step = self.steps.pop_front();
        if st != status::SUCCESS {
            // Failure responses carry no data.
            if data != 0 {
                return Err(self.fail(bad()));
            }
            self.steps.clear();
            self.cfg = None;
            return Ok(Some(Outcome::Refused { kind, status: st }));
        }
        let ended = |s: &mut Self, o: Outcome| {
            s.steps.clear();
            s.cfg = None;
            Ok(Some(o))
        };
        match step {
            Some(Step::GetFlags) => {
                // Types unknown to us may be future ones: ignore them, but ours must be there.
                let want = self.cfg.as_ref().map_or(0, |c| c.flags);
                if want & !data != 0 {
                    return ended(self, Outcome::FlagsUnsupported { offered: data });
                }
            }
            Some(Step::GetMappingSize) => {
                if data == 0 {
                    return Err(self.fail(bad()));
                }
                let want = self.cfg.as_ref().map_or(0, |c| c.mapping.len());
                if usize::try_from(data).unwrap_or(usize::MAX) < want {
                    return ended(self, Outcome::MappingTooLarge { max: data });
                }
            }
            // Set operations answer no data.
            Some(_) if data != 0 => return Err(self.fail(bad())),
            Some(_) => {}
            None => return Err(self.fail(CtrlError::Unexpected)),
        }
        if self.steps.is_empty() {
            return ended(self, Outcome::Configured);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word0_round_trips() {
        assert_eq!(ctrl::split_word0(ctrl::word0(0xbeef, 7)), (0xbeef, 7));
    }
}
