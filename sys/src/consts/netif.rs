//! Network device protocol (io/netif.h).

use super::{xen_enum, xen_flags};

xen_flags! {
    /// `NETTXF_*`: `netif_tx_request.flags` (`uint16_t`).
    pub struct NetTxFlags: u16 {
        /// The protocol checksum is not filled in (checksum offload).
        const CSUM_BLANK = NETTXF_csum_blank;
        /// The packet's checksum has been validated.
        const DATA_VALIDATED = NETTXF_data_validated;
        /// More slots follow for this packet.
        const MORE_DATA = NETTXF_more_data;
        /// A `netif_extra_info` slot follows.
        const EXTRA_INFO = NETTXF_extra_info;
    }
}

xen_flags! {
    /// `NETRXF_*`: `netif_rx_response.flags` (`uint16_t`).
    pub struct NetRxFlags: u16 {
        const DATA_VALIDATED = NETRXF_data_validated;
        const CSUM_BLANK = NETRXF_csum_blank;
        const MORE_DATA = NETRXF_more_data;
        const EXTRA_INFO = NETRXF_extra_info;
        /// The GSO prefix protocol (obsolete) is in use.
        const GSO_PREFIX = NETRXF_gso_prefix;
    }
}

xen_enum! {
    /// `XEN_NETIF_EXTRA_TYPE_*`: `netif_extra_info.type` (`uint8_t`).
    pub enum NetifExtraType: u8 {
        None = XEN_NETIF_EXTRA_TYPE_NONE,
        Gso = XEN_NETIF_EXTRA_TYPE_GSO,
        McastAdd = XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
        McastDel = XEN_NETIF_EXTRA_TYPE_MCAST_DEL,
        Hash = XEN_NETIF_EXTRA_TYPE_HASH,
    }
}

xen_flags! {
    /// `XEN_NETIF_EXTRA_FLAG_*`: `netif_extra_info.flags` (`uint8_t`).
    pub struct NetifExtraFlags: u8 {
        /// Another extra-info slot follows.
        const MORE = XEN_NETIF_EXTRA_FLAG_MORE;
    }
}

xen_enum! {
    /// `XEN_NETIF_GSO_TYPE_*`: `netif_extra_info.u.gso.type` (`uint8_t`).
    pub enum NetifGsoType: u8 {
        None = XEN_NETIF_GSO_TYPE_NONE,
        TcpV4 = XEN_NETIF_GSO_TYPE_TCPV4,
        TcpV6 = XEN_NETIF_GSO_TYPE_TCPV6,
    }
}

xen_enum! {
    /// `NETIF_RSP_*`: `netif_tx_response.status` / `netif_rx_response.status` (`int16_t`;
    /// a positive rx status is the received length, not one of these).
    pub enum NetifStatus: i16 {
        Dropped = NETIF_RSP_DROPPED,
        Error = NETIF_RSP_ERROR,
        Okay = NETIF_RSP_OKAY,
        /// Padding response of a slot consumed by an extra-info request.
        Null = NETIF_RSP_NULL,
    }
}

/// `XEN_NETIF_NR_SLOTS_MIN`: slots per packet every backend must accept.
pub const XEN_NETIF_NR_SLOTS_MIN: usize = super::to_usize(crate::x86_64::XEN_NETIF_NR_SLOTS_MIN);
/// `XEN_NETIF_MAX_TX_SIZE`: largest packet a frontend may send.
pub const XEN_NETIF_MAX_TX_SIZE: usize = super::to_usize(crate::x86_64::XEN_NETIF_MAX_TX_SIZE);
/// `XEN_NETIF_EXTRA_TYPE_MAX`: one past the largest extra-info type.
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 =
    super::conv::u8(crate::x86_64::XEN_NETIF_EXTRA_TYPE_MAX as i64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_rx_flags() {
        let tx = NetTxFlags::MORE_DATA | NetTxFlags::EXTRA_INFO;
        assert_eq!(tx.bits(), 4 | 8);
        assert_eq!(
            NetTxFlags::from_bits_truncate(0xfff1),
            NetTxFlags::CSUM_BLANK
        );
        // The csum bits are swapped between the two directions.
        assert_eq!(
            NetRxFlags::DATA_VALIDATED.bits(),
            NetTxFlags::CSUM_BLANK.bits()
        );
        assert_eq!(NetRxFlags::GSO_PREFIX.bits(), 16);
    }

    #[test]
    fn extra_info_and_gso() {
        assert_eq!(NetifExtraType::try_from(1), Ok(NetifExtraType::Gso));
        assert_eq!(NetifExtraType::try_from(4), Ok(NetifExtraType::Hash));
        assert!(NetifExtraType::try_from(XEN_NETIF_EXTRA_TYPE_MAX).is_err());
        assert_eq!(NetifExtraFlags::MORE.bits(), 1);
        assert_eq!(NetifGsoType::try_from(2), Ok(NetifGsoType::TcpV6));
        assert!(NetifGsoType::try_from(3).is_err());
    }

    #[test]
    fn status() {
        assert_eq!(NetifStatus::try_from(-2), Ok(NetifStatus::Dropped));
        assert_eq!(NetifStatus::try_from(1), Ok(NetifStatus::Null));
        assert_eq!(NetifStatus::Okay.value(), 0);
        assert_eq!(XEN_NETIF_NR_SLOTS_MIN, 18);
        assert_eq!(XEN_NETIF_MAX_TX_SIZE, 0xffff);
    }
}
