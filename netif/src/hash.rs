//! Toeplitz hashing for receive-side steering (`io/netif.h`, "Hash types" and "Toeplitz").
//!
//! The frontend selects the algorithm, the hash types, a key and a mapping table over the
//! control ring; the backend then hashes each packet it receives for the guest and picks the
//! queue `mapping[hash % mapping.len()]` (or `hash % queues` without a table).

use crate::csum::{IPPROTO_TCP, L4};

/// `_XEN_NETIF_CTRL_HASH_TYPE_IPV4` and friends, as bits.
pub mod types {
    /// IPv4 source and destination addresses.
    pub const IPV4: u32 = 1 << 0;
    /// IPv4 addresses and TCP ports.
    pub const IPV4_TCP: u32 = 1 << 1;
    /// IPv6 addresses.
    pub const IPV6: u32 = 1 << 2;
    /// IPv6 addresses and TCP ports.
    pub const IPV6_TCP: u32 = 1 << 3;
    /// Every type this implementation computes.
    pub const ALL: u32 = IPV4 | IPV4_TCP | IPV6 | IPV6_TCP;
}

/// Largest key accepted (Linux's `XEN_NETBK_MAX_HASH_KEY_SIZE`).
pub const MAX_KEY: usize = 40;

/// The Toeplitz hash of `buf` under `key` (bytes beyond the key read as zero), exactly as
/// `xen_netif_toeplitz_hash` in `io/netif.h`.
#[must_use]
pub fn toeplitz(key: &[u8], buf: &[u8]) -> u32 {
    let k = |i: usize| u64::from(key.get(i).copied().unwrap_or(0));
    let mut prefix: u64 = 0;
    let mut keyi = 0;
    while keyi < 8 {
        prefix = (prefix << 8) | k(keyi);
        keyi += 1;
    }
    let mut hash: u64 = 0;
    for &b in buf {
        let mut byte = b;
        for _ in 0..8 {
            if byte & 0x80 != 0 {
                hash ^= prefix;
            }
            prefix <<= 1;
            byte <<= 1;
        }
        prefix |= k(keyi);
        keyi += 1;
    }
    u32::try_from(hash >> 32).unwrap_or(0)
}

/// Builds the hash input for a parsed packet under the enabled `flags`: `(type bit number,
/// input, input length)`. The "maximal" type wins (TCP over plain IP). `None` when no enabled
/// type applies.
#[must_use]
pub fn input(
    p: &[u8],
    l: Option<&L4>,
    l3_v4: Option<usize>,
    flags: u32,
) -> Option<(u8, [u8; 36], usize)> {
    let mut out = [0u8; 36];
    if let Some(l) = l {
        let tcp = l.proto == IPPROTO_TCP;
        if l.ipv6 {
            let addrs = p.get(l.l3 + 8..l.l3 + 40)?;
            out[..32].copy_from_slice(addrs);
            if tcp && flags & types::IPV6_TCP != 0 {
                out[32..36].copy_from_slice(p.get(l.l4..l.l4 + 4)?);
                return Some((3, out, 36));
            }
            if flags & types::IPV6 != 0 {
                return Some((2, out, 32));
            }
            return None;
        }
        let addrs = p.get(l.l3 + 12..l.l3 + 20)?;
        out[..8].copy_from_slice(addrs);
        if tcp && flags & types::IPV4_TCP != 0 {
            out[8..12].copy_from_slice(p.get(l.l4..l.l4 + 4)?);
            return Some((1, out, 12));
        }
        if flags & types::IPV4 != 0 {
            return Some((0, out, 8));
        }
        return None;
    }
    // Not TCP/UDP: plain IPv4 addresses if the caller found an IPv4 header.
    let l3 = l3_v4?;
    if flags & types::IPV4 != 0 {
        out[..8].copy_from_slice(p.get(l3 + 12..l3 + 20)?);
        return Some((0, out, 8));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Microsoft RSS verification key and vectors (also used by Linux and DPDK tests).
    const KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    #[test]
    fn rss_vectors() {
        // 66.9.149.187:2794 -> 161.142.100.80:1766
        let v4 = [66, 9, 149, 187, 161, 142, 100, 80];
        assert_eq!(toeplitz(&KEY, &v4), 0x323e_8fc2);
        let v4tcp = [66, 9, 149, 187, 161, 142, 100, 80, 0x0a, 0xea, 0x06, 0xe6];
        assert_eq!(toeplitz(&KEY, &v4tcp), 0x51cc_c178);
    }

    #[test]
    fn empty_key_hashes_to_zero() {
        assert_eq!(toeplitz(&[], &[1, 2, 3]), 0);
    }
}
