//! Transmit requests: validated slots, packet assembly on the backend, slot layout on the
//! frontend.
//!
//! # A packet on the TX ring (`io/netif.h`)
//!
//! ```text
//! slot 0      data   size = TOTAL packet length, flags: more_data? extra_info? csum
//! slot 1..    extra  (only if slot 0 had extra_info) netif_extra_info, flag MORE chains
//! slot k..    data   size = this fragment's length, more_data on all but the last
//! ```
//!
//! The first slot's own data length is `TOTAL - sum(fragment sizes)`. Each data slot gets one
//! response with its `id`; each extra slot gets a `NETIF_RSP_NULL` response.
//!
//! # Classification
//!
//! [`TxAssembler::push`] takes each slot's *copy* in ring order. A complete packet comes back
//! as a [`TxPacket`] whose [`TxPacket::verdict`] is either `Ok` (deliver) or a [`TxDrop`]
//! (answer every data slot with `NETIF_RSP_ERROR`, deliver nothing, carry on). A [`TxFault`]
//! means the frontend broke the framing itself (no end of packet within the slot cap, an
//! extra of unknown type): there is no way to know where the next packet starts, so the
//! device must stop, as Linux's `xenvif_fatal_tx_err` does.
//!
//! Zero-length fragments are *legal* in netif ("except for the initial part any of them may be
//! of zero length"); XSA-448 was Linux turning them into empty skb fragments and crashing.
//! Here they are accepted, validated like any slot, answered `OKAY`, and carry no data: no
//! grant copy is issued and no empty fragment is produced ([`TxPacket::data_slots`] skips
//! them). What *is* rejected is a packet whose total is below an Ethernet header, a first
//! slot whose computed length is negative, and any slot reaching past its page.

use xen_sys::consts::NetTxFlags;

use crate::raw::TxRequest;
use crate::wire::{decode_extra, tx_slot_as_extra, Csum, Extra, ExtraError, Gso, PacketMeta};
use crate::{ETH_HLEN, MAX_EXTRAS, MAX_SLOTS, PAGE_SIZE};

/// A data slot, copied from the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxSlot {
    /// Grant of the page holding the data.
    pub gref: u32,
    /// Offset of the data in that page.
    pub offset: u16,
    /// On the first slot the packet's total length, on the others the slot's length.
    pub size: u16,
    /// Echoed in the response.
    pub id: u16,
    /// `NETTXF_*`.
    pub flags: NetTxFlags,
}

impl Default for TxSlot {
    fn default() -> Self {
        TxSlot {
            gref: 0,
            offset: 0,
            size: 0,
            id: 0,
            flags: NetTxFlags::empty(),
        }
    }
}

impl TxSlot {
    /// From a ring entry copy.
    #[must_use]
    pub fn from_raw(r: &TxRequest) -> TxSlot {
        TxSlot {
            gref: r.gref,
            offset: r.offset,
            size: r.size,
            id: r.id,
            flags: NetTxFlags::from_bits_truncate(r.flags),
        }
    }

    /// To a ring entry.
    #[must_use]
    pub fn to_raw(&self) -> TxRequest {
        TxRequest {
            gref: self.gref,
            offset: self.offset,
            flags: self.flags.bits(),
            id: self.id,
            size: self.size,
        }
    }
}

/// Why a packet is dropped (answered with errors; the device goes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxDrop {
    /// Total length below an Ethernet header (and not a multicast-control request).
    TooSmall {
        /// The first slot's `size`.
        total: u16,
    },
    /// The fragments add up to more than the total the first slot announced.
    BadTotal {
        /// Announced total.
        total: u16,
        /// Sum of the other slots.
        frags: u32,
    },
    /// A slot's `offset + length` passes the end of its page.
    CrossesPage {
        /// Index of the slot within the packet (0 = first).
        slot: usize,
        /// Its offset.
        offset: u16,
        /// Its data length.
        len: u32,
    },
    /// An extra of a known type with invalid contents.
    BadExtra(ExtraError),
    /// The same extra type twice.
    DuplicateExtra(usize),
    /// `extra_info` on a slot other than the first.
    LateExtraFlag {
        /// Index of the slot.
        slot: usize,
    },
    /// GSO that was not negotiated, or GSO on a packet no larger than one segment would need.
    GsoNotAllowed,
    /// Copying the data from the frontend's grants failed (bad reference, no permission...).
    GrantCopy,
    /// The local interface refused the packet or no local buffer was available.
    NoBuffer,
}

/// A framing violation: the device must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxFault {
    /// More than [`MAX_SLOTS`] data slots chained with `more_data`.
    TooManySlots,
    /// More than [`MAX_EXTRAS`] extra slots chained.
    TooManyExtras,
    /// An extra slot of unknown type (the framing of what follows is unknown).
    BadExtraType(u8),
    /// The frontend published a packet only in part (`more_data` or a pending extra on the
    /// last request it made visible); netif frontends publish whole packets.
    Incomplete,
}

/// Extras of one packet, at most one of each type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtraSet {
    /// GSO.
    pub gso: Option<Gso>,
    /// Multicast filter add.
    pub mcast_add: Option<[u8; 6]>,
    /// Multicast filter delete.
    pub mcast_del: Option<[u8; 6]>,
    /// Hash.
    pub hash: Option<(u8, u32)>,
}

/// One complete packet, as the frontend framed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxPacket {
    slots: [TxSlot; MAX_SLOTS],
    nslots: usize,
    /// Extra slots consumed (each needs a `NETIF_RSP_NULL` response after the first slot's).
    pub extra_slots: usize,
    /// Decoded extras.
    pub extras: ExtraSet,
    /// Whether to deliver it.
    pub verdict: Result<(), TxDrop>,
}

impl TxPacket {
    /// All data slots in ring order (the first included), for the responses.
    #[must_use]
    pub fn slots(&self) -> &[TxSlot] {
        &self.slots[..self.nslots]
    }

    /// The total length the first slot announced.
    #[must_use]
    pub fn total(&self) -> usize {
        usize::from(self.slots[0].size)
    }

    /// The data each slot carries: `(slot, offset, len)`, zero-length slots skipped. Only
    /// meaningful when the verdict is `Ok` (then the lengths add up to [`TxPacket::total`]
    /// and every range lies inside its page).
    pub fn data_slots(&self) -> impl Iterator<Item = (&TxSlot, u16, u16)> + '_ {
        let frags: u32 = self.slots[1..self.nslots]
            .iter()
            .map(|s| u32::from(s.size))
            .sum();
        let first_len = u32::from(self.slots[0].size).saturating_sub(frags);
        self.slots().iter().enumerate().filter_map(move |(i, s)| {
            let len = if i == 0 {
                u16::try_from(first_len).unwrap_or(0)
            } else {
                s.size
            };
            (len > 0).then_some((s, s.offset, len))
        })
    }

    /// Whether this is a multicast-control request (no data to deliver).
    #[must_use]
    pub fn is_mcast_control(&self) -> bool {
        self.extras.mcast_add.is_some() || self.extras.mcast_del.is_some()
    }

    /// The metadata to deliver with the data.
    #[must_use]
    pub fn meta(&self) -> PacketMeta {
        let f = self.slots[0].flags;
        let csum = if f.contains(NetTxFlags::CSUM_BLANK) {
            Csum::Partial
        } else if f.contains(NetTxFlags::DATA_VALIDATED) {
            Csum::Validated
        } else {
            Csum::None
        };
        PacketMeta {
            csum,
            gso: self.extras.gso,
            hash: self.extras.hash,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Extra { then_data: bool },
    Data,
}

/// Assembles packets from TX slots copied off the ring (backend side).
///
/// # Invariants
/// `nslots <= MAX_SLOTS` and `nextras <= MAX_EXTRAS` at all times; a packet is only returned
/// once its framing is complete.
#[derive(Debug, Clone)]
pub struct TxAssembler {
    state: State,
    slots: [TxSlot; MAX_SLOTS],
    nslots: usize,
    nextras: usize,
    extras: ExtraSet,
    bad: Option<TxDrop>,
    gso_allowed: bool,
}

impl TxAssembler {
    /// An assembler; `gso_allowed` is whether we advertised a GSO feature.
    #[must_use]
    pub fn new(gso_allowed: bool) -> Self {
        TxAssembler {
            state: State::Idle,
            slots: [TxSlot::default(); MAX_SLOTS],
            nslots: 0,
            nextras: 0,
            extras: ExtraSet::default(),
            bad: None,
            gso_allowed,
        }
    }

    /// Whether a packet is partly assembled (more slots are required to finish it).
    #[must_use]
    pub fn in_packet(&self) -> bool {
        self.state != State::Idle
    }

    fn mark(&mut self, d: TxDrop) {
        if self.bad.is_none() {
            self.bad = Some(d);
        }
    }

    /// Takes the next slot (a copy). Returns a packet when its last slot arrived.
    ///
    /// # Errors
    /// [`TxFault`] on a framing violation; the assembler must not be used again.
    pub fn push(&mut self, raw: &TxRequest) -> Result<Option<TxPacket>, TxFault> {
        match self.state {
            State::Idle => {
                let s = TxSlot::from_raw(raw);
                self.slots[0] = s;
                self.nslots = 1;
                self.nextras = 0;
                self.extras = ExtraSet::default();
                self.bad = None;
                let more = s.flags.contains(NetTxFlags::MORE_DATA);
                if s.flags.contains(NetTxFlags::EXTRA_INFO) {
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
                    return Err(TxFault::TooManyExtras);
                }
                self.nextras += 1;
                let more = match decode_extra(&tx_slot_as_extra(raw)) {
                    Ok((e, more)) => {
                        self.record(e);
                        more
                    }
                    Err(ExtraError::BadType(t)) => return Err(TxFault::BadExtraType(t)),
                    Err(e) => {
                        self.mark(TxDrop::BadExtra(e));
                        // The MORE flag is still readable: the framing survives.
                        extra_more_flag(raw)
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
                if self.nslots == MAX_SLOTS {
                    return Err(TxFault::TooManySlots);
                }
                let s = TxSlot::from_raw(raw);
                if s.flags.contains(NetTxFlags::EXTRA_INFO) {
                    self.mark(TxDrop::LateExtraFlag { slot: self.nslots });
                }
                self.slots[self.nslots] = s;
                self.nslots += 1;
                if s.flags.contains(NetTxFlags::MORE_DATA) {
                    Ok(None)
                } else {
                    Ok(Some(self.finish()))
                }
            }
        }
    }

    fn record(&mut self, e: Extra) {
        let dup = match e {
            Extra::Gso(g) => self.extras.gso.replace(g).is_some(),
            Extra::McastAdd(m) => self.extras.mcast_add.replace(m).is_some(),
            Extra::McastDel(m) => self.extras.mcast_del.replace(m).is_some(),
            Extra::Hash { kind, value, .. } => self.extras.hash.replace((kind, value)).is_some(),
        };
        if dup {
            self.mark(TxDrop::DuplicateExtra(e.type_index() + 1));
        }
    }

    fn finish(&mut self) -> TxPacket {
        self.state = State::Idle;
        let mut p = TxPacket {
            slots: self.slots,
            nslots: self.nslots,
            extra_slots: self.nextras,
            extras: self.extras,
            verdict: Ok(()),
        };
        p.verdict = match self.bad.take() {
            Some(d) => Err(d),
            None => validate(&p, self.gso_allowed),
        };
        p
    }
}

/// The `XEN_NETIF_EXTRA_FLAG_MORE` bit of an extra slot held in a TX request.
fn extra_more_flag(raw: &TxRequest) -> bool {
    xen_shmem::as_bytes(raw)[1] & xen_sys::consts::NetifExtraFlags::MORE.bits() != 0
}

fn validate(p: &TxPacket, gso_allowed: bool) -> Result<(), TxDrop> {
    let slots = p.slots();
    let total = slots[0].size;
    if p.is_mcast_control() {
        // A dummy request carrying filter updates; its data (if any) is ignored.
        return Ok(());
    }
    if usize::from(total) < ETH_HLEN {
        return Err(TxDrop::TooSmall { total });
    }
    let frags: u32 = slots[1..].iter().map(|s| u32::from(s.size)).sum();
    if frags > u32::from(total) {
        return Err(TxDrop::BadTotal { total, frags });
    }
    for (i, s) in slots.iter().enumerate() {
        let len = if i == 0 {
            u32::from(total) - frags
        } else {
            u32::from(s.size)
        };
        if usize::from(s.offset) + len as usize > PAGE_SIZE {
            return Err(TxDrop::CrossesPage {
                slot: i,
                offset: s.offset,
                len,
            });
        }
    }
    if p.extras.gso.is_some() && !gso_allowed {
        return Err(TxDrop::GsoNotAllowed);
    }
    Ok(())
}

/// Lays a packet of `len` bytes out in whole pages (frontend side): how many data slots it
/// takes. `None` if it cannot be sent at all (empty, larger than [`crate::MAX_PACKET`], or more
/// than `max_slots` pages).
#[must_use]
pub fn slots_for(len: usize, max_slots: usize) -> Option<usize> {
    if len == 0 || len > crate::MAX_PACKET {
        return None;
    }
    let n = len.div_ceil(PAGE_SIZE);
    (n <= max_slots.min(MAX_SLOTS)).then_some(n)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::wire::{encode_extra, extra_as_tx_slot, GsoKind};
    use std::vec::Vec;

    fn data(id: u16, size: u16, offset: u16, flags: NetTxFlags) -> TxRequest {
        TxSlot {
            gref: 100 + u32::from(id),
            offset,
            size,
            id,
            flags,
        }
        .to_raw()
    }

    fn feed(a: &mut TxAssembler, slots: &[TxRequest]) -> Result<Vec<TxPacket>, TxFault> {
        let mut out = Vec::new();
        for s in slots {
            if let Some(p) = a.push(s)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    #[test]
    fn single_slot_packet() {
        let mut a = TxAssembler::new(true);
        let p = feed(&mut a, &[data(1, 60, 0, NetTxFlags::CSUM_BLANK)]).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].verdict, Ok(()));
        assert_eq!(p[0].meta().csum, Csum::Partial);
        let d: Vec<_> = p[0].data_slots().map(|(s, o, l)| (s.id, o, l)).collect();
        assert_eq!(d, [(1, 0, 60)]);
    }

    #[test]
    fn first_slot_carries_the_total() {
        let mut a = TxAssembler::new(true);
        let gso = extra_as_tx_slot(&encode_extra(
            &Extra::Gso(Gso {
                kind: GsoKind::TcpV4,
                size: 1448,
            }),
            false,
        ));
        let p = feed(
            &mut a,
            &[
                data(1, 9000, 96, NetTxFlags::MORE_DATA | NetTxFlags::EXTRA_INFO),
                gso,
                data(2, 4096, 0, NetTxFlags::MORE_DATA),
                data(3, 0, 0, NetTxFlags::MORE_DATA),
                data(4, 904, 0, NetTxFlags::empty()),
            ],
        )
        .unwrap();
        assert_eq!(p.len(), 1);
        let p = p[0];
        assert_eq!(p.verdict, Ok(()));
        assert_eq!(p.extra_slots, 1);
        assert_eq!(p.slots().len(), 4);
        let d: Vec<_> = p.data_slots().map(|(s, o, l)| (s.id, o, l)).collect();
        // The zero-length slot is accepted and carries nothing (XSA-448).
        assert_eq!(d, [(1, 96, 4000), (2, 0, 4096), (4, 0, 904)]);
        assert_eq!(p.meta().gso.unwrap().size, 1448);
    }

    #[test]
    fn drops_and_faults() {
        let mut a = TxAssembler::new(false);
        let p = feed(&mut a, &[data(1, 10, 0, NetTxFlags::empty())]).unwrap();
        assert_eq!(p[0].verdict, Err(TxDrop::TooSmall { total: 10 }));
        let p = feed(
            &mut a,
            &[
                data(1, 100, 0, NetTxFlags::MORE_DATA),
                data(2, 200, 0, NetTxFlags::empty()),
            ],
        )
        .unwrap();
        assert_eq!(
            p[0].verdict,
            Err(TxDrop::BadTotal {
                total: 100,
                frags: 200
            })
        );
        let p = feed(&mut a, &[data(1, 100, 4000, NetTxFlags::empty())]).unwrap();
        assert!(matches!(p[0].verdict, Err(TxDrop::CrossesPage { .. })));
        // 19 data slots.
        let mut slots: Vec<_> = (0..18)
            .map(|i| data(i, 100, 0, NetTxFlags::MORE_DATA))
            .collect();
        slots.push(data(18, 100, 0, NetTxFlags::empty()));
        let mut a = TxAssembler::new(true);
        assert_eq!(feed(&mut a, &slots), Err(TxFault::TooManySlots));
        // Unknown extra type.
        let mut a = TxAssembler::new(true);
        let mut bad = data(0, 0, 0, NetTxFlags::empty());
        bad.gref = 9;
        assert_eq!(
            feed(&mut a, &[data(1, 60, 0, NetTxFlags::EXTRA_INFO), bad]),
            Err(TxFault::BadExtraType(9))
        );
        // GSO when not negotiated.
        let mut a = TxAssembler::new(false);
        let gso = extra_as_tx_slot(&encode_extra(
            &Extra::Gso(Gso {
                kind: GsoKind::TcpV6,
                size: 1000,
            }),
            false,
        ));
        let p = feed(&mut a, &[data(1, 60, 0, NetTxFlags::EXTRA_INFO), gso]).unwrap();
        assert_eq!(p[0].verdict, Err(TxDrop::GsoNotAllowed));
    }

    #[test]
    fn slot_layout() {
        assert_eq!(slots_for(60, 18), Some(1));
        assert_eq!(slots_for(4096, 18), Some(1));
        assert_eq!(slots_for(4097, 18), Some(2));
        assert_eq!(slots_for(65535, 18), Some(16));
        assert_eq!(slots_for(65535, 1), None);
        assert_eq!(slots_for(0, 18), None);
    }
}
