//! A TAP device as a packet port: the `virtio_net_hdr` in front of each frame maps onto netif's
//! checksum and GSO metadata ([`xen_netif::PacketMeta`]).
//!
//! | virtio_net_hdr | netif |
//! |---|---|
//! | `flags & NEEDS_CSUM` (+ `csum_start/offset`) | `csum_blank` + `data_validated` ([`Csum::Partial`]) |
//! | `flags & DATA_VALID` | `data_validated` ([`Csum::Validated`]) |
//! | `gso_type` TCPV4/TCPV6, `gso_size` | GSO extra (TcpV4/TcpV6, size) |
//!
//! netif carries no checksum offsets, so writing a `Partial` packet recomputes
//! `csum_start`/`csum_offset` from the headers (`xen_netif::csum::parse_l4`).

use std::fs::File;
use std::io::{self, Read, Write};

use xen_netif::{csum, Csum, Gso, GsoKind, PacketMeta};

use super::sys;

const HDR: usize = 10;
const NEEDS_CSUM: u8 = 1;
const DATA_VALID: u8 = 2;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

/// A TAP device with a virtio header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// The offloads a TAP lets the kernel hand us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapOffloads {
    /// Partial checksums.
    pub csum: bool,
    /// TSO (needs `csum`).
    pub tso: bool,
}

impl Tap {
    /// Creates TAP `name`.
    ///
    /// # Errors
    /// The OS error.
    pub fn open(name: &str, off: TapOffloads) -> io::Result<Tap> {
        let mut flags = 0;
        if off.csum {
            flags |= sys::TUN_F_CSUM;
            if off.tso {
                flags |= sys::TUN_F_TSO4 | sys::TUN_F_TSO6;
            }
        }
        Ok(Tap {
            file: sys::open_tap(name, flags)?,
            name: name.to_string(),
        })
    }

    /// Its interface name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame into `buf` (which must hold 10 + 65536 bytes) within `ms`
    /// milliseconds: `(length, meta)`, the frame at `buf[10..10 + length]`.
    ///
    /// # Errors
    /// The OS error.
    pub fn recv(&self, buf: &mut [u8], ms: i32) -> io::Result<Option<(usize, PacketMeta)>> {
        if !sys::readable(&self.file, ms) {
            return Ok(None);
        }
        let n = (&self.file).read(buf)?;
        if n < HDR {
            return Ok(None);
        }
        let h = &buf[..HDR];
        let mut meta = PacketMeta::default();
        if h[0] & NEEDS_CSUM != 0 {
            meta.csum = Csum::Partial;
        } else if h[0] & DATA_VALID != 0 {
            meta.csum = Csum::Validated;
        }
        let gso_size = u16::from_le_bytes([h[4], h[5]]);
        meta.gso = match h[1] & !GSO_ECN {
            GSO_TCPV4 => Some(Gso {
                kind: GsoKind::TcpV4,
                size: gso_size,
            }),
            GSO_TCPV6 => Some(Gso {
                kind: GsoKind::TcpV6,
                size: gso_size,
            }),
            _ => None,
        };
        Ok(Some((n - HDR, meta)))
    }

    /// Writes one frame with its metadata.
    ///
    /// # Errors
    /// The OS error.
    pub fn send(&self, data: &[u8], meta: &PacketMeta) -> io::Result<()> {
        let mut h = [0u8; HDR];
        let l4 = csum::parse_l4(data);
        if meta.csum == Csum::Partial {
            if let Some(l) = l4 {
                h[0] = NEEDS_CSUM;
                h[6..8].copy_from_slice(&u16::try_from(l.l4).unwrap_or(0).to_le_bytes());
                h[8..10].copy_from_slice(&u16::try_from(l.csum_offset).unwrap_or(0).to_le_bytes());
            }
        } else if meta.csum == Csum::Validated {
            h[0] = DATA_VALID;
        }
        if let (Some(g), Some(l)) = (meta.gso, l4) {
            h[1] = match g.kind {
                GsoKind::TcpV4 => GSO_TCPV4,
                GsoKind::TcpV6 => GSO_TCPV6,
            };
            h[2..4].copy_from_slice(&u16::try_from(l.l4 + l.l4_hlen).unwrap_or(0).to_le_bytes());
            h[4..6].copy_from_slice(&g.size.to_le_bytes());
        }
        let mut frame = Vec::with_capacity(HDR + data.len());
        frame.extend_from_slice(&h);
        frame.extend_from_slice(data);
        (&self.file).write_all(&frame)
    }
}
