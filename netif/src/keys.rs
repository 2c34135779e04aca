//! xenstore keys of the vif protocol (`io/netif.h`; survey §2), in one place so that the two
//! ends cannot disagree on a spelling.

/// Backend: scatter-gather (more than one slot per packet).
pub const FEATURE_SG: &str = "feature-sg";
/// Either end: TCPv4 segmentation offload.
pub const FEATURE_GSO_TCPV4: &str = "feature-gso-tcpv4";
/// Either end: TCPv6 segmentation offload.
pub const FEATURE_GSO_TCPV6: &str = "feature-gso-tcpv6";
/// Either end: IPv6 TCP/UDP checksum offload (default off).
pub const FEATURE_IPV6_CSUM: &str = "feature-ipv6-csum-offload";
/// Frontend: "1" turns IPv4 checksum offload off (default on).
pub const FEATURE_NO_CSUM: &str = "feature-no-csum-offload";
/// Backend: can copy into the frontend's receive buffers.
pub const FEATURE_RX_COPY: &str = "feature-rx-copy";
/// Backend: page flipping (always "0" here).
pub const FEATURE_RX_FLIP: &str = "feature-rx-flip";
/// Frontend: receive by copy (required).
pub const REQUEST_RX_COPY: &str = "request-rx-copy";
/// Frontend: it notifies the backend when it posts receive buffers.
pub const FEATURE_RX_NOTIFY: &str = "feature-rx-notify";
/// Backend: multicast filtering.
pub const FEATURE_MCAST: &str = "feature-multicast-control";
/// Backend: `request-multicast-control` may change while connected.
pub const FEATURE_DYN_MCAST: &str = "feature-dynamic-multicast-control";
/// Frontend: apply the multicast filter.
pub const REQUEST_MCAST: &str = "request-multicast-control";
/// Backend: separate TX and RX event channels.
pub const FEATURE_SPLIT_EVTCHN: &str = "feature-split-event-channels";
/// Backend: most queues.
pub const MQ_MAX_QUEUES: &str = "multi-queue-max-queues";
/// Frontend: queues in use.
pub const MQ_NUM_QUEUES: &str = "multi-queue-num-queues";
/// Backend: control ring.
pub const FEATURE_CTRL_RING: &str = "feature-ctrl-ring";
/// Frontend: control ring grant.
pub const CTRL_RING_REF: &str = "ctrl-ring-ref";
/// Frontend: control ring event channel.
pub const EVTCHN_CTRL: &str = "event-channel-ctrl";
/// Frontend (per queue): TX ring grant.
pub const TX_RING_REF: &str = "tx-ring-ref";
/// Frontend (per queue): RX ring grant.
pub const RX_RING_REF: &str = "rx-ring-ref";
/// Frontend (per queue): the one event channel.
pub const EVTCHN: &str = "event-channel";
/// Frontend (per queue): TX event channel (split).
pub const EVTCHN_TX: &str = "event-channel-tx";
/// Frontend (per queue): RX event channel (split).
pub const EVTCHN_RX: &str = "event-channel-rx";
/// Toolstack: MAC address `aa:bb:cc:dd:ee:ff`.
pub const MAC: &str = "mac";
/// Toolstack (frontend dir): "0" when the backend is not trusted (XSA-403).
pub const TRUSTED: &str = "trusted";
/// Toolstack: device handle.
pub const HANDLE: &str = "handle";
/// Backend: link state ("0"/"1").
pub const CARRIER: &str = "carrier";
/// Backend: hotplug done.
pub const HOTPLUG_STATUS: &str = "hotplug-status";

/// The per-queue directory name (`queue-N`).
#[must_use]
pub fn queue_dir(n: u32) -> QueueDir {
    QueueDir(n)
}

/// `queue-N`, formatted without allocating.
#[derive(Debug, Clone, Copy)]
pub struct QueueDir(u32);

impl core::fmt::Display for QueueDir {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "queue-{}", self.0)
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex, either case). `None` for anything else, and for a
/// multicast or all-zero address (not usable as a station address).
#[must_use]
pub fn parse_mac(s: &[u8]) -> Option<[u8; 6]> {
    let s = core::str::from_utf8(s).ok()?.trim_end_matches('\0').trim();
    let mut out = [0u8; 6];
    let mut n = 0;
    for part in s.split(':') {
        if n == 6 || part.len() != 2 {
            return None;
        }
        out[n] = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 6 && out[0] & 1 == 0 && out != [0; 6]).then_some(out)
}

/// Parses a small unsigned decimal node value (at most 10 digits, optional trailing NULs or
/// whitespace).
#[must_use]
pub fn parse_u32(s: &[u8]) -> Option<u32> {
    let s = core::str::from_utf8(s).ok()?.trim_end_matches('\0').trim();
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac(b"00:16:3e:0a:Bc:ff"),
            Some([0, 0x16, 0x3e, 0x0a, 0xbc, 0xff])
        );
        assert_eq!(parse_mac(b"01:16:3e:0a:bc:ff"), None);
        assert_eq!(parse_mac(b"00:16:3e:0a:bc"), None);
        assert_eq!(parse_mac(b"00:16:3e:0a:bc:ff:00"), None);
        assert_eq!(parse_mac(b"0:16:3e:0a:bc:ff"), None);
        assert_eq!(parse_u32(b"12\0"), Some(12));
        assert_eq!(parse_u32(b"-1"), None);
        assert_eq!(parse_u32(b"99999999999"), None);
    }
}
