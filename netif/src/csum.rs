//! Header parsing and Internet checksums for checksum offload.
//!
//! netif carries no checksum offsets: a `csum_blank` packet only says "the TCP/UDP checksum is
//! not filled in; its field holds the pseudo-header sum". Whoever completes it (the receiving
//! end, or a device that wants `csum_start`/`csum_offset`, such as a TAP's virtio header) must
//! find the transport header itself, as Linux's `skb_checksum_setup` does. Everything here
//! works on an untrusted byte slice: every offset is bounds-checked, extension-header walks
//! are bounded, and failure is a `None`/`Err`, never a panic.

/// Ethernet header length.
const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// Most IPv6 extension headers walked before giving up.
const MAX_EXT_HEADERS: usize = 8;

/// Where a packet's transport header and checksum are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4 {
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the TCP/UDP header (`csum_start`).
    pub l4: usize,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// Offset of the checksum field from `l4` (`csum_offset`: 16 for TCP, 6 for UDP).
    pub csum_offset: usize,
    /// Length of the transport header (TCP data offset, 8 for UDP), when it fits the packet.
    pub l4_hlen: usize,
}

fn be16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Finds the TCP or UDP header of an Ethernet frame (one optional 802.1Q tag; IPv4 with
/// options, not fragmented beyond the first fragment; IPv6 with up to eight hop-by-hop,
/// routing or destination-options headers). `None` for anything else.
#[must_use]
pub fn parse_l4(p: &[u8]) -> Option<L4> {
    let mut l3 = ETH_HLEN;
    let mut ethertype = be16(p, 12)?;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(p, 16)?;
        l3 += 4;
    }
    let (ipv6, l4, proto) = match ethertype {
        ETHERTYPE_IPV4 => {
            let vihl = *p.get(l3)?;
            if vihl >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(vihl & 0xf) * 4;
            if ihl < 20 {
                return None;
            }
            // A non-first fragment has no transport header.
            if be16(p, l3 + 6)? & 0x1fff != 0 {
                return None;
            }
            (false, l3 + ihl, *p.get(l3 + 9)?)
        }
        ETHERTYPE_IPV6 => {
            if *p.get(l3)? >> 4 != 6 {
                return None;
            }
            let mut next = *p.get(l3 + 6)?;
            let mut off = l3 + 40;
            let mut walked = 0;
            // Hop-by-hop (0), routing (43), destination options (60).
            while matches!(next, 0 | 43 | 60) {
                walked += 1;
                if walked > MAX_EXT_HEADERS {
                    return None;
                }
                let n = *p.get(off)?;
                let len = (usize::from(*p.get(off + 1)?) + 1) * 8;
                next = n;
                off += len;
            }
            (true, off, next)
        }
        _ => return None,
    };
    let (csum_offset, l4_hlen) = match proto {
        IPPROTO_TCP => (16, usize::from(*p.get(l4 + 12)? >> 4) * 4),
        IPPROTO_UDP => (6, 8),
        _ => return None,
    };
    if l4 + csum_offset + 2 > p.len() || l4_hlen < 8 || l4 + l4_hlen > p.len() {
        return None;
    }
    Some(L4 {
        ipv6,
        l3,
        l4,
        proto,
        csum_offset,
        l4_hlen,
    })
}

/// One's-complement sum of `data` added to `acc` (not folded).
#[must_use]
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

/// Folds a sum to 16 bits.
#[must_use]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    u16::try_from(acc).unwrap_or(u16::MAX)
}

/// The pseudo-header sum of the packet's transport segment (not complemented).
fn pseudo(p: &[u8], l: &L4) -> Option<u64> {
    let seg = p.len().checked_sub(l.l4)?;
    let mut acc = u64::from(l.proto) + seg as u64;
    if l.ipv6 {
        acc = sum(p.get(l.l3 + 8..l.l3 + 40)?, acc);
    } else {
        acc = sum(p.get(l.l3 + 12..l.l3 + 20)?, acc);
    }
    Some(acc)
}

/// Why a checksum could not be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotTcpUdp;

/// Completes a `csum_blank` packet in place: sums the transport segment, whose checksum field
/// holds the pseudo-header sum, and stores the complement (virtio/Linux `CHECKSUM_PARTIAL`
/// semantics).
///
/// # Errors
/// [`NotTcpUdp`] if no TCP/UDP header can be found.
pub fn complete_partial(p: &mut [u8]) -> Result<L4, NotTcpUdp> {
    let l = parse_l4(p).ok_or(NotTcpUdp)?;
    let at = l.l4 + l.csum_offset;
    let mut c = !fold(sum(&p[l.l4..], 0));
    if l.proto == IPPROTO_UDP && c == 0 {
        c = 0xffff;
    }
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(l)
}

/// Writes the pseudo-header sum into the checksum field (turns a packet into the
/// `csum_blank` form a receiver completes).
///
/// # Errors
/// [`NotTcpUdp`].
pub fn set_pseudo(p: &mut [u8]) -> Result<L4, NotTcpUdp> {
    let l = parse_l4(p).ok_or(NotTcpUdp)?;
    let at = l.l4 + l.csum_offset;
    let ps = fold(pseudo(p, &l).ok_or(NotTcpUdp)?);
    p[at..at + 2].copy_from_slice(&ps.to_be_bytes());
    Ok(l)
}

/// Computes the full checksum from scratch and stores it.
///
/// # Errors
/// [`NotTcpUdp`].
pub fn fill_full(p: &mut [u8]) -> Result<L4, NotTcpUdp> {
    set_pseudo(p)?;
    complete_partial(p)
}

/// Whether the TCP/UDP checksum of a complete packet verifies (`None`: not TCP/UDP).
#[must_use]
pub fn verify(p: &[u8]) -> Option<bool> {
    let l = parse_l4(p)?;
    if l.proto == IPPROTO_UDP && !l.ipv6 && be16(p, l.l4 + 6)? == 0 {
        return Some(true);
    }
    let acc = sum(&p[l.l4..], pseudo(p, &l)?);
    Some(fold(acc) == 0xffff)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// An Ethernet + IPv4 + TCP frame with `payload`.
    fn tcp4(payload: &[u8]) -> [u8; 128] {
        let mut f = [0u8; 128];
        f[12] = 0x08;
        f[14] = 0x45;
        let iplen = 20 + 20 + payload.len();
        f[16..18].copy_from_slice(&u16::try_from(iplen).unwrap().to_be_bytes());
        f[23] = IPPROTO_TCP;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&1234u16.to_be_bytes());
        f[46] = 5 << 4;
        f[54..54 + payload.len()].copy_from_slice(payload);
        f
    }

    #[test]
    fn partial_then_complete_verifies() {
        let f = tcp4(b"hello world");
        let mut p = f[..54 + 11].to_vec();
        let l = set_pseudo(&mut p).unwrap();
        assert_eq!((l.l4, l.csum_offset, l.l4_hlen), (34, 16, 20));
        assert_eq!(verify(&p), Some(false));
        complete_partial(&mut p).unwrap();
        assert_eq!(verify(&p), Some(true));
        let mut q = f[..54 + 11].to_vec();
        fill_full(&mut q).unwrap();
        assert_eq!(p, q);
        q[60] ^= 1;
        assert_eq!(verify(&q), Some(false));
    }

    #[test]
    fn hostile_headers_do_not_panic() {
        for len in 0..80 {
            let f = tcp4(b"x");
            let mut p = f[..len].to_vec();
            let _ = parse_l4(&p);
            let _ = complete_partial(&mut p);
            let _ = verify(&p);
        }
        // IPv6 with a loop of extension headers.
        let mut p = [0u8; 200];
        p[12] = 0x86;
        p[13] = 0xdd;
        p[14] = 0x60;
        p[20] = 0;
        assert_eq!(parse_l4(&p), None);
    }
}
