//! xenbus negotiation, backend side: what we publish, and what we read from the frontend.
//!
//! Keys are those of `io/netif.h` (survey §2). Everything read from the frontend's directory is
//! untrusted text: numbers are parsed strictly, the queue count is bounded by what we offered,
//! and a missing or malformed required key refuses the connection (`ConfigError`) instead of
//! guessing, as netif.h allows ("the backend may choose not to connect any queues").

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xen_netif::keys;
use xen_xenbus::{Error, Store, XsError};

/// What this backend offers (the `feature-*` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendFeatures {
    /// Most queues (`multi-queue-max-queues`).
    pub max_queues: u32,
    /// Offer `feature-ctrl-ring` (Toeplitz steering).
    pub ctrl_ring: bool,
    /// Offer GSO (both flavours) to the frontend.
    pub gso: bool,
    /// Offer IPv6 checksum offload.
    pub ipv6_csum: bool,
    /// Offer multicast control.
    pub mcast: bool,
    /// Offer split event channels.
    pub split_evtchn: bool,
}

impl Default for BackendFeatures {
    fn default() -> Self {
        BackendFeatures {
            max_queues: 4,
            ctrl_ring: true,
            gso: true,
            ipv6_csum: true,
            mcast: true,
            split_evtchn: true,
        }
    }
}

/// Writes our feature keys into our (backend) directory `dir`.
///
/// # Errors
/// The store's.
pub fn publish<S: Store + ?Sized>(xs: &mut S, dir: &str, f: &BackendFeatures) -> Result<(), Error> {
    let b = |v: bool| if v { "1" } else { "0" };
    let pairs: [(&str, &str); 9] = [
        (keys::FEATURE_SG, "1"),
        (keys::FEATURE_GSO_TCPV4, b(f.gso)),
        (keys::FEATURE_GSO_TCPV6, b(f.gso)),
        (keys::FEATURE_IPV6_CSUM, b(f.ipv6_csum)),
        (keys::FEATURE_RX_COPY, "1"),
        (keys::FEATURE_RX_FLIP, "0"),
        (keys::FEATURE_MCAST, b(f.mcast)),
        (keys::FEATURE_SPLIT_EVTCHN, b(f.split_evtchn)),
        (keys::FEATURE_CTRL_RING, b(f.ctrl_ring)),
    ];
    for (k, v) in pairs {
        xs.write_str(&format!("{dir}/{k}"), v)?;
    }
    xs.write_str(
        &format!("{dir}/{}", keys::MQ_MAX_QUEUES),
        &format!("{}", f.max_queues),
    )?;
    Ok(())
}

/// A queue's event channel(s) in the frontend's domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvtchnKeys {
    /// One port for both directions.
    Single(u32),
    /// `event-channel-tx`, `event-channel-rx`.
    Split {
        /// TX.
        tx: u32,
        /// RX.
        rx: u32,
    },
}

/// One queue as the frontend described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueKeys {
    /// TX ring grant.
    pub tx_ring_ref: u32,
    /// RX ring grant.
    pub rx_ring_ref: u32,
    /// Ports.
    pub evtchn: EvtchnKeys,
}

/// The frontend's requests, intersected with what we offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Negotiated {
    /// Frontend accepts multi-slot packets on RX (and may send them on TX).
    pub sg: bool,
    /// Frontend accepts TCPv4 GSO on RX.
    pub gso_v4: bool,
    /// Frontend accepts TCPv6 GSO on RX.
    pub gso_v6: bool,
    /// Frontend accepts `csum_blank` IPv4 packets on RX.
    pub csum_v4: bool,
    /// Frontend accepts `csum_blank` IPv6 packets on RX.
    pub csum_v6: bool,
    /// Frontend notifies when it posts RX buffers.
    pub rx_notify: bool,
    /// Apply the multicast filter.
    pub mcast_filter: bool,
    /// We offered GSO (frontend may send GSO on TX).
    pub tx_gso_allowed: bool,
}

/// Everything read from the frontend to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendInfo {
    /// The queues (at least one, at most what we offered).
    pub queues: Vec<QueueKeys>,
    /// Features.
    pub features: Negotiated,
    /// Control ring `(gref, port)`, if the frontend set one up and we offered it.
    pub ctrl: Option<(u32, u32)>,
}

/// Why the frontend's configuration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// A required key is missing.
    Missing(&'static str),
    /// A key's value is malformed.
    Malformed(&'static str),
    /// More queues than offered, or zero.
    BadQueueCount(u32),
    /// The frontend did not ask for `request-rx-copy` (flipping is not supported).
    NoRxCopy,
    /// A store failure.
    Store(Error),
}

impl From<Error> for ConfigError {
    fn from(e: Error) -> Self {
        ConfigError::Store(e)
    }
}

fn read_opt<S: Store + ?Sized>(xs: &mut S, path: &str) -> Result<Option<Vec<u8>>, Error> {
    match xs.read(path) {
        Ok(v) => Ok(Some(v)),
        Err(Error::Xs(XsError::NoEnt)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_u32<S: Store + ?Sized>(
    xs: &mut S,
    dir: &str,
    key: &'static str,
) -> Result<Option<u32>, ConfigError> {
    match read_opt(xs, &format!("{dir}/{key}"))? {
        None => Ok(None),
        Some(v) => keys::parse_u32(&v)
            .map(Some)
            .ok_or(ConfigError::Malformed(key)),
    }
}

fn read_flag<S: Store + ?Sized>(
    xs: &mut S,
    dir: &str,
    key: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    Ok(read_u32(xs, dir, key)?.map_or(default, |v| v != 0))
}

fn required<S: Store + ?Sized>(
    xs: &mut S,
    dir: &str,
    key: &'static str,
) -> Result<u32, ConfigError> {
    read_u32(xs, dir, key)?.ok_or(ConfigError::Missing(key))
}

fn queue_keys<S: Store + ?Sized>(
    xs: &mut S,
    dir: &str,
    split_offered: bool,
) -> Result<QueueKeys, ConfigError> {
    let tx_ring_ref = required(xs, dir, keys::TX_RING_REF)?;
    let rx_ring_ref = required(xs, dir, keys::RX_RING_REF)?;
    let tx = read_u32(xs, dir, keys::EVTCHN_TX)?;
    let evtchn = match (tx, split_offered) {
        (Some(tx), true) => EvtchnKeys::Split {
            tx,
            rx: required(xs, dir, keys::EVTCHN_RX)?,
        },
        _ => EvtchnKeys::Single(required(xs, dir, keys::EVTCHN)?),
    };
    Ok(QueueKeys {
        tx_ring_ref,
        rx_ring_ref,
        evtchn,
    })
}

/// Reads the frontend directory `fe` after it reached `Initialised`/`Connected`.
///
/// # Errors
/// [`ConfigError`]: refuse the connection.
pub fn read_frontend<S: Store + ?Sized>(
    xs: &mut S,
    fe: &str,
    offered: &BackendFeatures,
) -> Result<FrontendInfo, ConfigError> {
    if !read_flag(xs, fe, keys::REQUEST_RX_COPY, false)? {
        return Err(ConfigError::NoRxCopy);
    }
    let nq = read_u32(xs, fe, keys::MQ_NUM_QUEUES)?.unwrap_or(1);
    if nq == 0 || nq > offered.max_queues.max(1) {
        return Err(ConfigError::BadQueueCount(nq));
    }
    let mut queues = Vec::new();
    if nq == 1 {
        queues.push(queue_keys(xs, fe, offered.split_evtchn)?);
    } else {
        for n in 0..nq {
            let qdir: String = format!("{fe}/{}", keys::queue_dir(n));
            queues.push(queue_keys(xs, &qdir, offered.split_evtchn)?);
        }
    }
    let features = Negotiated {
        sg: read_flag(xs, fe, keys::FEATURE_SG, false)?,
        gso_v4: offered.gso && read_flag(xs, fe, keys::FEATURE_GSO_TCPV4, false)?,
        gso_v6: offered.gso && read_flag(xs, fe, keys::FEATURE_GSO_TCPV6, false)?,
        csum_v4: !read_flag(xs, fe, keys::FEATURE_NO_CSUM, false)?,
        csum_v6: offered.ipv6_csum && read_flag(xs, fe, keys::FEATURE_IPV6_CSUM, false)?,
        rx_notify: read_flag(xs, fe, keys::FEATURE_RX_NOTIFY, false)?,
        mcast_filter: offered.mcast && read_flag(xs, fe, keys::REQUEST_MCAST, false)?,
        tx_gso_allowed: offered.gso,
    };
    let ctrl = if offered.ctrl_ring {
        match (
            read_u32(xs, fe, keys::CTRL_RING_REF)?,
            read_u32(xs, fe, keys::EVTCHN_CTRL)?,
        ) {
            (Some(r), Some(p)) => Some((r, p)),
            (None, None) => None,
            (None, Some(_)) => return Err(ConfigError::Missing(keys::CTRL_RING_REF)),
            (Some(_), None) => return Err(ConfigError::Missing(keys::EVTCHN_CTRL)),
        }
    } else {
        None
    };
    // GSO needs multi-slot packets.
    let features = Negotiated {
        gso_v4: features.gso_v4 && features.sg,
        gso_v6: features.gso_v6 && features.sg,
        ..features
    };
    Ok(FrontendInfo {
        queues,
        features,
        ctrl,
    })
}
