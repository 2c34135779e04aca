//! netif TX slots and extra-info slots as bytes (`io/netif.h`; the layout is the same for
//! both ABIs: no pointers, no `long`), so that attacks can write zero-length and oversize
//! slots, chains that never end and extras of types nobody defined.
//!
//! The unit tests run every builder through the backend's own assembler
//! (`xen_netif::tx::TxAssembler`) and check the verdict it reaches.

/// Bytes of a TX ring entry (request/response union).
pub const TX_ENTRY: usize = 12;
/// Bytes of an RX ring entry.
pub const RX_ENTRY: usize = 8;
/// Data slots per packet every backend accepts (`XEN_NETIF_NR_SLOTS_MIN`).
pub const MAX_SLOTS: usize = 18;

/// `NETTXF_more_data`.
pub const MORE_DATA: u16 = 4;
/// `NETTXF_extra_info`.
pub const EXTRA_INFO: u16 = 8;
/// `XEN_NETIF_EXTRA_TYPE_GSO`.
pub const EXTRA_GSO: u8 = 1;
/// `XEN_NETIF_EXTRA_FLAG_MORE`.
pub const EXTRA_MORE: u8 = 1;

/// `NETIF_RSP_OKAY`.
pub const RSP_OKAY: i16 = 0;
/// `NETIF_RSP_ERROR`.
pub const RSP_ERROR: i16 = -1;
/// `NETIF_RSP_DROPPED`.
pub const RSP_DROPPED: i16 = -2;
/// `NETIF_RSP_NULL` (the answer to an extra slot).
pub const RSP_NULL: i16 = 1;

/// A TX request slot, any values.
#[must_use]
pub fn tx(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> [u8; TX_ENTRY] {
    let mut s = [0u8; TX_ENTRY];
    s[0..4].copy_from_slice(&gref.to_le_bytes());
    s[4..6].copy_from_slice(&offset.to_le_bytes());
    s[6..8].copy_from_slice(&flags.to_le_bytes());
    s[8..10].copy_from_slice(&id.to_le_bytes());
    s[10..12].copy_from_slice(&size.to_le_bytes());
    s
}

/// An extra-info slot (in a TX ring entry): `kind`, `flags`, and six payload bytes (for GSO:
/// size, type, pad, features).
#[must_use]
pub fn extra(kind: u8, flags: u8, payload: [u8; 6]) -> [u8; TX_ENTRY] {
    let mut s = [0u8; TX_ENTRY];
    s[0] = kind;
    s[1] = flags;
    s[2..8].copy_from_slice(&payload);
    s
}

/// A GSO extra for TCPv4 with segment size `mss`.
#[must_use]
pub fn gso_v4(mss: u16, more: bool) -> [u8; TX_ENTRY] {
    let m = mss.to_le_bytes();
    extra(
        EXTRA_GSO,
        if more { EXTRA_MORE } else { 0 },
        [m[0], m[1], 1, 0, 0, 0],
    )
}

/// A TX response: `(id, status)`.
#[must_use]
pub fn tx_response(slot: &[u8]) -> (u16, i16) {
    let b = |i: usize| slot.get(i).copied().unwrap_or(0);
    (
        u16::from_le_bytes([b(0), b(1)]),
        i16::from_le_bytes([b(2), b(3)]),
    )
}

/// An RX request (a buffer offered to the backend).
#[must_use]
pub fn rx(id: u16, gref: u32) -> [u8; RX_ENTRY] {
    let mut s = [0u8; RX_ENTRY];
    s[0..2].copy_from_slice(&id.to_le_bytes());
    s[4..8].copy_from_slice(&gref.to_le_bytes());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_netif::raw::{RxRequest, TxRequest};
    use xen_netif::tx::{TxAssembler, TxDrop, TxFault, TxPacket};
    use xen_shmem::{as_bytes_mut, zeroed};

    fn raw(slot: &[u8; TX_ENTRY]) -> TxRequest {
        let mut r: TxRequest = zeroed();
        as_bytes_mut(&mut r).copy_from_slice(slot);
        r
    }

    /// Feeds `slots` to a fresh assembler: the first packet or fault.
    fn assemble(slots: &[[u8; TX_ENTRY]]) -> Result<Option<TxPacket>, TxFault> {
        let mut a = TxAssembler::new(true);
        for s in slots {
            if let Some(p) = a.push(&raw(s))? {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    #[test]
    fn fields_land_where_netif_h_puts_them() {
        let r = raw(&tx(0xdead_beef, 0x0102, MORE_DATA, 0x0304, 0x0506));
        assert_eq!(
            (r.gref, r.offset, r.flags, r.id, r.size),
            (0xdead_beef, 0x0102, MORE_DATA, 0x0304, 0x0506)
        );
        let mut q: RxRequest = zeroed();
        as_bytes_mut(&mut q).copy_from_slice(&rx(9, 77));
        assert_eq!((q.id, q.gref), (9, 77));
        assert_eq!(tx_response(&[5, 0, 0xfe, 0xff]), (5, RSP_DROPPED));
        let e = xen_netif::wire::tx_slot_as_extra(&raw(&gso_v4(1448, false)));
        let (x, more) = xen_netif::wire::decode_extra(&e).unwrap();
        assert!(!more);
        assert!(matches!(x, xen_netif::Extra::Gso(g) if g.size == 1448));
    }

    #[test]
    fn a_good_packet_assembles() {
        let p = assemble(&[tx(5, 0, 0, 1, 60)]).unwrap().unwrap();
        assert_eq!(p.verdict, Ok(()));
        assert_eq!(p.total(), 60);
    }

    #[test]
    fn attacks_get_the_verdicts_they_claim() {
        // Zero length: dropped, the device goes on.
        let p = assemble(&[tx(5, 0, 0, 1, 0)]).unwrap().unwrap();
        assert_eq!(p.verdict, Err(TxDrop::TooSmall { total: 0 }));
        // Oversize: one slot claiming 65535 bytes from a 4 KiB page.
        let p = assemble(&[tx(5, 0, 0, 1, u16::MAX)]).unwrap().unwrap();
        assert!(matches!(
            p.verdict,
            Err(TxDrop::CrossesPage { slot: 0, .. })
        ));
        // Offset past the page.
        let p = assemble(&[tx(5, 4000, 0, 1, 200)]).unwrap().unwrap();
        assert!(matches!(p.verdict, Err(TxDrop::CrossesPage { .. })));
        // A chain of more_data slots longer than any packet: a framing fault.
        let chain: Vec<[u8; TX_ENTRY]> = (0..=u16::try_from(MAX_SLOTS).unwrap())
            .map(|i| tx(5, 0, MORE_DATA, i, 100))
            .collect();
        assert_eq!(assemble(&chain).err(), Some(TxFault::TooManySlots));
        // An extra of a type nobody defined: the framing after it is unknown.
        let bogus = [tx(5, 0, EXTRA_INFO, 1, 60), extra(200, 0, [0xff; 6])];
        assert_eq!(assemble(&bogus).err(), Some(TxFault::BadExtraType(200)));
        // Extras that never end.
        let mut endless = vec![tx(5, 0, EXTRA_INFO, 1, 60)];
        endless.extend((0..6).map(|_| gso_v4(1448, true)));
        assert!(matches!(
            assemble(&endless).err(),
            Some(TxFault::TooManyExtras)
        ));
    }
}
