//! Slot-level encoding: extra-info slots, packet metadata, and the reinterpretation of ring
//! entries (an extra-info slot occupies a request slot on the TX ring and a response slot on
//! the RX ring).
//!
//! `netif_extra_info` holds a C union; reading a union field is `unsafe` in Rust, so extras
//! are decoded from the value's bytes (`xen_shmem::as_bytes`) instead, which is also exactly
//! what the wire is.

use xen_shmem::{as_bytes, as_bytes_mut, zeroed};
use xen_sys::consts::{NetifExtraFlags, NetifExtraType, NetifGsoType};

use crate::raw::{ExtraInfo, RxResponse, TxRequest};

/// TCP segmentation offload flavour (`XEN_NETIF_GSO_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GsoKind {
    /// TCP over IPv4.
    TcpV4,
    /// TCP over IPv6.
    TcpV6,
}

/// A large packet to be segmented by the receiver: segment payload size (MSS) and flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gso {
    /// Flavour.
    pub kind: GsoKind,
    /// Payload bytes per segment; never zero once decoded.
    pub size: u16,
}

/// Checksum state of a packet, the same in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Csum {
    /// Nothing known: the receiver verifies the checksum itself.
    #[default]
    None,
    /// `csum_blank` (+ `data_validated`): the TCP/UDP checksum field holds only the
    /// pseudo-header sum; the receiver (or the hardware behind it) completes it. This is
    /// Linux's `CHECKSUM_PARTIAL`, FreeBSD's `CSUM_TCP`/`CSUM_UDP`, virtio's `NEEDS_CSUM`.
    Partial,
    /// `data_validated` only: the checksum is complete and was verified (or the data comes
    /// from a trusted local source).
    Validated,
}

/// Metadata that travels with a packet in extra slots and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketMeta {
    /// Checksum state.
    pub csum: Csum,
    /// Segmentation offload, if the packet is larger than one segment.
    pub gso: Option<Gso>,
    /// A hash the sender computed (`XEN_NETIF_EXTRA_TYPE_HASH`), `(type, value)`.
    pub hash: Option<(u8, u32)>,
}

/// One decoded extra-info slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// `XEN_NETIF_EXTRA_TYPE_GSO`.
    Gso(Gso),
    /// `XEN_NETIF_EXTRA_TYPE_MCAST_ADD`: add a MAC to the backend's multicast filter.
    McastAdd([u8; 6]),
    /// `XEN_NETIF_EXTRA_TYPE_MCAST_DEL`.
    McastDel([u8; 6]),
    /// `XEN_NETIF_EXTRA_TYPE_HASH`: `type` is a `_XEN_NETIF_CTRL_HASH_TYPE_*` bit number.
    Hash {
        /// Hash type (bit number).
        kind: u8,
        /// Algorithm (`XEN_NETIF_CTRL_HASH_ALGORITHM_*`).
        alg: u8,
        /// The value, little-endian on the wire.
        value: u32,
    },
}

impl Extra {
    /// The slot type number (1-based; index into per-type tables with `- 1`).
    #[must_use]
    pub fn type_index(&self) -> usize {
        match self {
            Extra::Gso(_) => 0,
            Extra::McastAdd(_) => 1,
            Extra::McastDel(_) => 2,
            Extra::Hash { .. } => 3,
        }
    }
}

/// Why an extra-info slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtraError {
    /// Type 0 (`NONE`) or beyond `XEN_NETIF_EXTRA_TYPE_MAX`.
    BadType(u8),
    /// A GSO type other than TCPv4/TCPv6.
    BadGsoType(u8),
    /// A GSO segment size of zero (would divide by zero in a segmenter).
    ZeroGsoSize,
}

/// Decodes an extra-info slot: the extra, and whether another extra slot follows
/// (`XEN_NETIF_EXTRA_FLAG_MORE`).
///
/// # Errors
/// [`ExtraError`] for an unknown type or an invalid GSO description.
pub fn decode_extra(raw: &ExtraInfo) -> Result<(Extra, bool), ExtraError> {
    let b = as_bytes(raw);
    let (ty, flags) = (b[0], b[1]);
    let more = NetifExtraFlags::from_bits_truncate(flags).contains(NetifExtraFlags::MORE);
    let u = [b[2], b[3], b[4], b[5], b[6], b[7]];
    let extra = match NetifExtraType::try_from(ty) {
        Ok(NetifExtraType::Gso) => {
            let size = u16::from_le_bytes([u[0], u[1]]);
            let kind = match NetifGsoType::try_from(u[2]) {
                Ok(NetifGsoType::TcpV4) => GsoKind::TcpV4,
                Ok(NetifGsoType::TcpV6) => GsoKind::TcpV6,
                _ => return Err(ExtraError::BadGsoType(u[2])),
            };
            if size == 0 {
                return Err(ExtraError::ZeroGsoSize);
            }
            Extra::Gso(Gso { kind, size })
        }
        Ok(NetifExtraType::McastAdd) => Extra::McastAdd(u),
        Ok(NetifExtraType::McastDel) => Extra::McastDel(u),
        Ok(NetifExtraType::Hash) => Extra::Hash {
            kind: u[0],
            alg: u[1],
            value: u32::from_le_bytes([u[2], u[3], u[4], u[5]]),
        },
        Ok(NetifExtraType::None) | Err(_) => return Err(ExtraError::BadType(ty)),
    };
    Ok((extra, more))
}

/// Encodes an extra-info slot (built from zero: no stale bytes reach the peer).
#[must_use]
pub fn encode_extra(extra: &Extra, more: bool) -> ExtraInfo {
    let mut raw: ExtraInfo = zeroed();
    let b = as_bytes_mut(&mut raw);
    let (ty, u): (NetifExtraType, [u8; 6]) = match *extra {
        Extra::Gso(g) => {
            let s = g.size.to_le_bytes();
            let t = match g.kind {
                GsoKind::TcpV4 => NetifGsoType::TcpV4,
                GsoKind::TcpV6 => NetifGsoType::TcpV6,
            };
            (NetifExtraType::Gso, [s[0], s[1], t.value(), 0, 0, 0])
        }
        Extra::McastAdd(m) => (NetifExtraType::McastAdd, m),
        Extra::McastDel(m) => (NetifExtraType::McastDel, m),
        Extra::Hash { kind, alg, value } => {
            let v = value.to_le_bytes();
            (NetifExtraType::Hash, [kind, alg, v[0], v[1], v[2], v[3]])
        }
    };
    b[0] = ty.value();
    b[1] = if more {
        NetifExtraFlags::MORE.bits()
    } else {
        0
    };
    b[2..8].copy_from_slice(&u);
    raw
}

/// The extra-info view of a TX ring slot (its first 8 bytes).
#[must_use]
pub fn tx_slot_as_extra(slot: &TxRequest) -> ExtraInfo {
    let mut e: ExtraInfo = zeroed();
    as_bytes_mut(&mut e).copy_from_slice(&as_bytes(slot)[..8]);
    e
}

/// A TX ring slot holding `extra` (the remaining 4 bytes zero).
#[must_use]
pub fn extra_as_tx_slot(extra: &ExtraInfo) -> TxRequest {
    let mut t: TxRequest = zeroed();
    as_bytes_mut(&mut t)[..8].copy_from_slice(as_bytes(extra));
    t
}

/// The extra-info view of an RX ring response slot (same size).
#[must_use]
pub fn rx_slot_as_extra(slot: &RxResponse) -> ExtraInfo {
    let mut e: ExtraInfo = zeroed();
    as_bytes_mut(&mut e).copy_from_slice(as_bytes(slot));
    e
}

/// An RX ring response slot holding `extra`.
#[must_use]
pub fn extra_as_rx_slot(extra: &ExtraInfo) -> RxResponse {
    let mut r: RxResponse = zeroed();
    as_bytes_mut(&mut r).copy_from_slice(as_bytes(extra));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extras_round_trip_through_both_rings() {
        let cases = [
            Extra::Gso(Gso {
                kind: GsoKind::TcpV4,
                size: 1448,
            }),
            Extra::Gso(Gso {
                kind: GsoKind::TcpV6,
                size: 1,
            }),
            Extra::McastAdd([1, 0, 0x5e, 0, 0, 1]),
            Extra::McastDel([0x33, 0x33, 0, 0, 0, 1]),
            Extra::Hash {
                kind: 1,
                alg: 1,
                value: 0xdead_beef,
            },
        ];
        for e in cases {
            for more in [false, true] {
                let raw = encode_extra(&e, more);
                assert_eq!(decode_extra(&raw), Ok((e, more)));
                let tx = extra_as_tx_slot(&raw);
                assert_eq!(decode_extra(&tx_slot_as_extra(&tx)), Ok((e, more)));
                let rx = extra_as_rx_slot(&raw);
                assert_eq!(decode_extra(&rx_slot_as_extra(&rx)), Ok((e, more)));
            }
        }
    }

    #[test]
    fn bad_extras_are_refused() {
        let mut raw: ExtraInfo = zeroed();
        assert_eq!(decode_extra(&raw), Err(ExtraError::BadType(0)));
        as_bytes_mut(&mut raw)[0] = 5;
        assert_eq!(decode_extra(&raw), Err(ExtraError::BadType(5)));
        let mut gso = encode_extra(
            &Extra::Gso(Gso {
                kind: GsoKind::TcpV4,
                size: 100,
            }),
            false,
        );
        as_bytes_mut(&mut gso)[4] = 3;
        assert_eq!(decode_extra(&gso), Err(ExtraError::BadGsoType(3)));
        as_bytes_mut(&mut gso)[4] = 1;
        as_bytes_mut(&mut gso)[2] = 0;
        as_bytes_mut(&mut gso)[3] = 0;
        assert_eq!(decode_extra(&gso), Err(ExtraError::ZeroGsoSize));
    }
}
