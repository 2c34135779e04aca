//! Receive responses: validation and packet assembly on the frontend.
//!
//! # A packet on the RX ring (`io/netif.h`)
//!
//! ```text
//! rsp 0      data   id, offset, status = bytes in this slot (< 0: error), flags:
//!                   more_data? extra_info? csum_blank / data_validated
//! rsp 1..    extra  (only if rsp 0 had extra_info) netif_extra_info, flag MORE chains
//! rsp k..    data   more_data on all but the last
//! ```
//!
//! Every response slot, data or extra, consumes the buffer the frontend posted at the same
//! ring position, and a data response must carry the `id` of that request (netback answers
//! requests strictly in order; Linux's and FreeBSD's netfronts index their buffers by ring
//! position for the same reason). The caller passes the id it posted there; a mismatch, a
//! range beyond the page, or broken framing is a [`RxFault`]: the backend is lying and the
//! device must stop. A negative status drops the packet ([`RxDrop`]) and the device goes on.

use xen_sys::consts::NetRxFlags;

use crate::raw::RxResponse;
use crate::wire::{decode_extra, rx_slot_as_extra, Csum, Extra, ExtraError, PacketMeta};
use crate::{ETH_HLEN, MAX_EXTRAS, MAX_PACKET, MAX_SLOTS, PAGE_SIZE};

/// One data fragment of a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxFrag {
    /// The request id (= ring position modulo the ring size) whose buffer holds the data.
    pub id: u16,
    /// Offset of the data in that buffer.
    pub offset: u16,
    /// Length (may be zero).
    pub len: u16,
}

/// Why a received packet is dropped (the device goes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxDrop {
    /// The backend reported an error status for one of its slots.
    Status(i16),
    /// Shorter than an Ethernet header.
    TooSmall(usize),
    /// A GSO extra we did not ask for, or an invalid one.
    BadGso(Option<ExtraError>),
    /// A multicast extra (only meaningful on the TX ring).
    UnexpectedExtra,
}

/// A backend protocol violation: the device must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxFault {
    /// A data response whose id is not the one posted at its ring position.
    BadId {
        /// The id we posted there.
        expected: u16,
        /// The id in the response.
        got: u16,
    },
    /// `offset + status` beyond the page.
    BadRange {
        /// Offset.
        offset: u16,
        /// Length.
        len: u16,
    },
    /// More than [`MAX_SLOTS`] data slots in one packet.
    TooManySlots,
    /// More than [`MAX_EXTRAS`] extra slots in one packet.
    TooManyExtras,
    /// An extra of unknown type.
    BadExtraType(u8),
    /// The obsolete GSO-prefix protocol (never requested).
    GsoPrefix,
    /// A packet longer than [`MAX_PACKET`].
    TooLong,
}

/// A complete received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxPacket {
    frags: [RxFrag; MAX_SLOTS],
    nfrags: usize,
    total: usize,
    /// Checksum state, GSO and hash.
    pub meta: PacketMeta,
    /// Whether to deliver it.
    pub verdict: Result<(), RxDrop>,
}

impl RxPacket {
    /// The data fragments in order (zero-length ones included).
    #[must_use]
    pub fn frags(&self) -> &[RxFrag] {
        &self.frags[..self.nfrags]
    }

    /// Total data length.
    #[must_use]
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether it carries no data.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Extra { then_data: bool },
    Data,
}

/// Assembles received packets from response copies (frontend side).
///
/// # Invariants
/// `nfrags <= MAX_SLOTS`, `nextras <= MAX_EXTRAS`, `total <= MAX_PACKET`.
#[derive(Debug, Clone)]
pub struct RxAssembler {
    state: State,
    frags: [RxFrag; MAX_SLOTS],
    nfrags: usize,
    nextras: usize,
    total: usize,
    meta: PacketMeta,
    bad: Option<RxDrop>,
    gso_allowed: bool,
}

impl RxAssembler {
    /// An assembler; `gso_allowed` is whether we advertised a GSO feature to the backend.
    #[must_use]
    pub fn new(gso_allowed: bool) -> Self {
        RxAssembler {
            state: State::Idle,
            frags: [RxFrag::default(); MAX_SLOTS],
            nfrags: 0,
            nextras: 0,
            total: 0,
            meta: PacketMeta::default(),
            bad: None,
            gso_allowed,
        }
    }

    /// Whether a packet is partly assembled.
    #[must_use]
    pub fn in_packet(&self) -> bool {
        self.state != State::Idle
    }

    fn mark(&mut self, d: RxDrop) {
        if self.bad.is_none() {
            self.bad = Some(d);
        }
    }

    fn data(&mut self, raw: &RxResponse, expected_id: u16) -> Result<NetRxFlags, RxFault> {
        if self.nfrags == MAX_SLOTS {
            return Err(RxFault::TooManySlots);
        }
        if raw.id != expected_id {
            return Err(RxFault::BadId {
                expected: expected_id,
                got: raw.id,
            });
        }
        let flags = NetRxFlags::from_bits_truncate(raw.flags);
        if flags.contains(NetRxFlags::GSO_PREFIX) {
            return Err(RxFault::GsoPrefix);
        }
        let len = if raw.status < 0 {
            self.mark(RxDrop::Status(raw.status));
            0
        } else {
            // CAST: non-negative i16 fits u16.
            raw.status.unsigned_abs()
        };
        if usize::from(raw.offset) + usize::from(len) > PAGE_SIZE {
            return Err(RxFault::BadRange {
                offset: raw.offset,
                len,
            });
        }
        self.total += usize::from(len);
        if self.total > MAX_PACKET {
            return Err(RxFault::TooLong);
        }
        self.frags[self.nfrags] = RxFrag {
            id: raw.id,
            offset: raw.offset,
            len,
        };
        self.nfrags += 1;
        Ok(flags)
    }

    /// Takes the next response (a copy) and the id posted at its ring position. Returns a
    /// packet when its last slot arrived.
    ///
    /// # Errors
    /// [`RxFault`]; the assembler must not be used again.
    pub fn push(
        &mut self,
        raw: &RxResponse,
        expected_id: u16,
    ) -> Result<Option<RxPacket>, RxFault> {
        match self.state {
            State::Idle => {
                self.nfrags = 0;
                self.nextras = 0;
                self.total = 0;
                self.bad = None;
                let flags = self.data(raw, expected_id)?;
                self.meta = PacketMeta {
                    csum: if flags.contains(NetRxFlags::CSUM_BLANK) {
                        Csum::Partial
                    } else if flags.contains(NetRxFlags::DATA_VALIDATED) {
                        Csum::Validated
                    } else {
                        Csum::None
                    },
                    gso: None,
                    hash: None,
                };
                let more = flags.contains(NetRxFlags::MORE_DATA);
                if flags.contains(NetRxFlags::EXTRA_INFO) {
                    self.state = State::Extra { then_data: more };
                    Ok(None)
                } else if more {
                    self.state = State::Data;
                    Ok(None)
                } else {
                    Ok(Some(self.finish()))
                }
            }
            State::Extra { then_data } => {
                if self.nextras == MAX_EXTRAS {
                    return Err(RxFault::TooManyExtras);
                }
                self.nextras += 1;
                let ex = rx_slot_as_extra(raw);
                let more = match decode_extra(&ex) {
                    Ok((e, more)) => {
                        match e {
                            Extra::Gso(g) if self.gso_allowed && self.meta.gso.is_none() => {
                                self.meta.gso = Some(g);
                            }
                            Extra::Gso(_) => self.mark(RxDrop::BadGso(None)),
                            Extra::Hash { kind, value, .. } => self.meta.hash = Some((kind, value)),
                            Extra::McastAdd(_) | Extra::McastDel(_) => {
                                self.mark(RxDrop::UnexpectedExtra);
                            }
                        }
                        more
                    }
                    Err(ExtraError::BadType(t)) => return Err(RxFault::BadExtraType(t)),
                    Err(e) => {
                        self.mark(RxDrop::BadGso(Some(e)));
                        xen_shmem::as_bytes(&ex)[1] & 1 != 0
                    }
                };
                if more {
                    Ok(None)
                } else if then_data {
                    self.state = State::Data;
                    Ok(None)
                } else {
                    Ok(Some(self.finish()))
                }
            }
            State::Data => {
                let flags = self.data(raw, expected_id)?;
                if flags.contains(NetRxFlags::MORE_DATA) {
                    Ok(None)
                } else {
                    Ok(Some(self.finish()))
                }
            }
        }
    }

    fn finish(&mut self) -> RxPacket {
        self.state = State::Idle;
        let mut verdict = match self.bad.take() {
            Some(d) => Err(d),
            None => Ok(()),
        };
        if verdict.is_ok() && self.total < ETH_HLEN {
            verdict = Err(RxDrop::TooSmall(self.total));
        }
        RxPacket {
            frags: self.frags,
            nfrags: self.nfrags,
            total: self.total,
            meta: self.meta,
            verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_extra, extra_as_rx_slot, Gso, GsoKind};

    fn rsp(id: u16, offset: u16, status: i16, flags: NetRxFlags) -> RxResponse {
        RxResponse {
            id,
            offset,
            flags: flags.bits(),
            status,
        }
    }

    #[test]
    fn multi_slot_gso_packet() {
        let mut a = RxAssembler::new(true);
        let gso = extra_as_rx_slot(&encode_extra(
            &Extra::Gso(Gso {
                kind: GsoKind::TcpV6,
                size: 1440,
            }),
            false,
        ));
        assert_eq!(
            a.push(
                &rsp(
                    0,
                    0,
                    4096,
                    NetRxFlags::MORE_DATA | NetRxFlags::EXTRA_INFO | NetRxFlags::CSUM_BLANK
                ),
                0
            ),
            Ok(None)
        );
        assert_eq!(a.push(&gso, 1), Ok(None));
        let p = a
            .push(&rsp(2, 0, 100, NetRxFlags::empty()), 2)
            .unwrap()
            .unwrap();
        assert_eq!(p.verdict, Ok(()));
        assert_eq!(p.len(), 4196);
        assert_eq!(p.frags().len(), 2);
        assert_eq!(p.meta.csum, Csum::Partial);
        assert_eq!(p.meta.gso.unwrap().kind, GsoKind::TcpV6);
    }

    #[test]
    fn violations() {
        let mut a = RxAssembler::new(false);
        assert_eq!(
            a.push(&rsp(3, 0, 100, NetRxFlags::empty()), 4),
            Err(RxFault::BadId {
                expected: 4,
                got: 3
            })
        );
        let mut a = RxAssembler::new(false);
        assert_eq!(
            a.push(&rsp(4, 4000, 100, NetRxFlags::empty()), 4),
            Err(RxFault::BadRange {
                offset: 4000,
                len: 100
            })
        );
        let mut a = RxAssembler::new(false);
        let p = a
            .push(&rsp(4, 0, -1, NetRxFlags::empty()), 4)
            .unwrap()
            .unwrap();
        assert_eq!(p.verdict, Err(RxDrop::Status(-1)));
        let mut a = RxAssembler::new(false);
        for i in 0..18 {
            assert_eq!(a.push(&rsp(i, 0, 100, NetRxFlags::MORE_DATA), i), Ok(None));
        }
        assert_eq!(
            a.push(&rsp(18, 0, 100, NetRxFlags::empty()), 18),
            Err(RxFault::TooManySlots)
        );
        // GSO not negotiated: dropped, not fatal.
        let mut a = RxAssembler::new(false);
        let gso = extra_as_rx_slot(&encode_extra(
            &Extra::Gso(Gso {
                kind: GsoKind::TcpV4,
                size: 1440,
            }),
            false,
        ));
        a.push(&rsp(0, 0, 100, NetRxFlags::EXTRA_INFO), 0).unwrap();
        let p = a.push(&gso, 1).unwrap().unwrap();
        assert_eq!(p.verdict, Err(RxDrop::BadGso(None)));
    }
}
