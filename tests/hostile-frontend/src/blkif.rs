//! blkif request slots as bytes, in the `x86_64-abi` layout (the one a 64-bit Linux domU
//! announces), written field by field so that an attack can put any value anywhere: the
//! project's own encoder (`xen_blkback::proto`) only builds what a correct frontend would.
//!
//! The offsets are those of `io/blkif.h` compiled for x86_64; the unit tests decode every
//! builder's output with the backend's own decoder (`xen_blkback::proto::X86_64`) and check
//! the classification its parser gives, so a wrong offset here fails a test instead of
//! attacking the wrong field.

/// Bytes of one ring entry (request/response union) in the x86_64 layout.
pub const ENTRY: usize = 112;
/// Bytes of a response in the x86_64 layout.
pub const RESPONSE: usize = 16;
/// Bytes of one segment descriptor (direct or in an indirect page).
pub const SEGMENT: usize = 8;
/// Segments of a direct request.
pub const MAX_DIRECT: usize = 11;
/// Indirect page grants a request can carry.
pub const MAX_INDIRECT_PAGES: usize = 8;
/// The `protocol` node value for this layout.
pub const PROTOCOL: &str = "x86_64-abi";

/// `BLKIF_OP_READ`.
pub const OP_READ: u8 = 0;
/// `BLKIF_OP_WRITE`.
pub const OP_WRITE: u8 = 1;
/// `BLKIF_OP_INDIRECT`.
pub const OP_INDIRECT: u8 = 6;

/// `BLKIF_RSP_OKAY`.
pub const RSP_OKAY: i16 = 0;
/// `BLKIF_RSP_ERROR`.
pub const RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_EOPNOTSUPP`.
pub const RSP_EOPNOTSUPP: i16 = -2;

/// One segment descriptor, any values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seg {
    /// Grant of the data page.
    pub gref: u32,
    /// First sector in the page.
    pub first: u8,
    /// Last sector in the page (inclusive).
    pub last: u8,
}

impl Seg {
    /// A whole page (sectors 0..=7).
    #[must_use]
    pub fn page(gref: u32) -> Seg {
        Seg {
            gref,
            first: 0,
            last: 7,
        }
    }

    fn put(&self, out: &mut [u8]) {
        put(out, 0, &self.gref.to_le_bytes());
        put(out, 4, &[self.first, self.last]);
    }
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = out.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// A read/write/flush slot with direct segments. `nr_segments` is written as given (it may
/// disagree with `segs.len()`, which is the point of some attacks); at most eleven
/// descriptors fit and the rest of `segs` is ignored.
#[must_use]
pub fn rw(op: u8, nr_segments: u8, id: u64, sector: u64, segs: &[Seg]) -> [u8; ENTRY] {
    let mut s = [0u8; ENTRY];
    s[0] = op;
    s[1] = nr_segments;
    // handle (2..4) stays 0: the backend does not use it.
    put(&mut s, 8, &id.to_le_bytes());
    put(&mut s, 16, &sector.to_le_bytes());
    for (i, seg) in segs.iter().take(MAX_DIRECT).enumerate() {
        if let Some(d) = s.get_mut(24 + i * SEGMENT..24 + (i + 1) * SEGMENT) {
            seg.put(d);
        }
    }
    s
}

/// An indirect slot: `nr_segments` descriptors in the pages `grefs` (at most eight).
#[must_use]
pub fn indirect(
    indirect_op: u8,
    nr_segments: u16,
    id: u64,
    sector: u64,
    grefs: &[u32],
) -> [u8; ENTRY] {
    let mut s = [0u8; ENTRY];
    s[0] = OP_INDIRECT;
    s[1] = indirect_op;
    put(&mut s, 2, &nr_segments.to_le_bytes());
    put(&mut s, 8, &id.to_le_bytes());
    put(&mut s, 16, &sector.to_le_bytes());
    // handle at 24 stays 0; the grant array starts at 28.
    for (i, g) in grefs.iter().take(MAX_INDIRECT_PAGES).enumerate() {
        put(&mut s, 28 + 4 * i, &g.to_le_bytes());
    }
    s
}

/// A response slot as the backend wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// The operation echoed.
    pub operation: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
}

impl Response {
    /// Decodes the first [`RESPONSE`] bytes of a slot copy.
    #[must_use]
    pub fn decode(slot: &[u8]) -> Response {
        let slot = slot.get(..RESPONSE).unwrap_or(slot);
        let b = |i: usize| slot.get(i).copied().unwrap_or(0);
        let mut id = [0u8; 8];
        for (i, d) in id.iter_mut().enumerate() {
            *d = b(i);
        }
        Response {
            id: u64::from_le_bytes(id),
            operation: b(8),
            status: i16::from_le_bytes([b(10), b(11)]),
        }
    }

    /// The status by name.
    #[must_use]
    pub fn status_name(&self) -> &'static str {
        match self.status {
            RSP_OKAY => "okay",
            RSP_ERROR => "error",
            RSP_EOPNOTSUPP => "eopnotsupp",
            _ => "invalid",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_blkback::proto::{
        decode_indirect_page, Layout, Limits, Request, Violation, WireBody, WireSegment, X86_64,
    };
    use xen_shmem::{as_bytes, as_bytes_mut, zeroed};
    use xen_sys::x86_64::{blkif_request, blkif_response};

    /// `BLKIF_OP_FLUSH_DISKCACHE`.
    const OP_FLUSH: u8 = 3;

    /// An indirect page image holding `segs` (the rest of the page zero).
    fn indirect_page(segs: &[Seg]) -> Vec<u8> {
        let mut page = vec![0u8; 4096];
        for (chunk, seg) in page.chunks_exact_mut(SEGMENT).zip(segs) {
            seg.put(chunk);
        }
        page
    }

    fn decode(slot: &[u8; ENTRY]) -> xen_blkback::proto::WireRequest {
        let mut raw: blkif_request = zeroed();
        as_bytes_mut(&mut raw).copy_from_slice(slot);
        X86_64::decode_request(&raw)
    }

    const LIM: Limits = Limits {
        sectors: 2048,
        sector_size: 512,
        max_indirect_segments: 256,
    };

    #[test]
    fn sizes_match_the_abi() {
        assert_eq!(core::mem::size_of::<blkif_request>(), ENTRY);
        assert_eq!(core::mem::size_of::<blkif_response>(), RESPONSE);
    }

    #[test]
    fn a_good_read_decodes_field_by_field_and_parses() {
        let slot = rw(
            OP_READ,
            2,
            0x1122_3344_5566_7788,
            40,
            &[
                Seg::page(77),
                Seg {
                    gref: 78,
                    first: 1,
                    last: 3,
                },
            ],
        );
        let w = decode(&slot);
        assert_eq!(w.operation, OP_READ);
        assert_eq!(w.id, 0x1122_3344_5566_7788);
        assert_eq!(w.sector_number, 40);
        let WireBody::Rw { nr_segments, seg } = w.body else {
            panic!("not rw: {w:?}");
        };
        assert_eq!(nr_segments, 2);
        assert_eq!(
            seg[0],
            WireSegment {
                gref: 77,
                first_sect: 0,
                last_sect: 7
            }
        );
        assert_eq!(
            seg[1],
            WireSegment {
                gref: 78,
                first_sect: 1,
                last_sect: 3
            }
        );
        assert_eq!(seg[2], WireSegment::default());
        assert!(Request::parse(&w, &LIM).is_ok());
    }

    #[test]
    fn attacks_are_the_violations_they_claim() {
        let v = |slot: [u8; ENTRY]| Request::parse(&decode(&slot), &LIM).err();
        assert_eq!(
            v(rw(200, 1, 1, 0, &[Seg::page(1)])),
            Some(Violation::UnknownOperation(200))
        );
        assert!(matches!(
            v(rw(OP_READ, 12, 1, 0, &[Seg::page(1)])),
            Some(Violation::BadSegmentCount { count: 12, .. })
        ));
        assert!(matches!(
            v(rw(OP_WRITE, 0, 1, 0, &[])),
            Some(Violation::BadSegmentCount { count: 0, .. })
        ));
        let backwards = Seg {
            gref: 1,
            first: 6,
            last: 2,
        };
        assert!(matches!(
            v(rw(OP_READ, 1, 1, 0, &[backwards])),
            Some(Violation::BadSegment {
                first_sect: 6,
                last_sect: 2,
                ..
            })
        ));
        let past_page = Seg {
            gref: 1,
            first: 0,
            last: 8,
        };
        assert!(matches!(
            v(rw(OP_READ, 1, 1, 0, &[past_page])),
            Some(Violation::BadSegment { last_sect: 8, .. })
        ));
        // Beyond the end: refused, but not a protocol violation.
        let e = v(rw(OP_READ, 1, 1, LIM.sectors, &[Seg::page(1)])).unwrap();
        assert!(matches!(e, Violation::OutOfRange { .. }) && !e.is_fatal());
        assert!(matches!(
            v(rw(OP_READ, 1, 1, u64::MAX - 2, &[Seg::page(1)])),
            Some(Violation::SectorOverflow { .. })
        ));
        assert!(matches!(
            v(indirect(OP_READ, 60_000, 1, 0, &[5])),
            Some(Violation::BadSegmentCount { count: 60_000, .. })
        ));
        assert_eq!(
            v(indirect(OP_FLUSH, 16, 1, 0, &[5])),
            Some(Violation::BadIndirectOp(OP_FLUSH))
        );
    }

    #[test]
    fn indirect_slot_and_page_decode() {
        let w = decode(&indirect(OP_WRITE, 513, 9, 64, &[10, 11, 12]));
        let WireBody::Indirect {
            indirect_op,
            nr_segments,
            indirect_grefs,
        } = w.body
        else {
            panic!("not indirect: {w:?}");
        };
        assert_eq!(
            (w.operation, indirect_op, nr_segments),
            (OP_INDIRECT, OP_WRITE, 513)
        );
        assert_eq!(w.id, 9);
        assert_eq!(w.sector_number, 64);
        assert_eq!(&indirect_grefs[..4], &[10, 11, 12, 0]);
        let page = indirect_page(&[
            Seg::page(3),
            Seg {
                gref: 4,
                first: 9,
                last: 1,
            },
        ]);
        let mut out = Vec::new();
        decode_indirect_page(&page, &mut out, 3);
        assert_eq!(
            out[0],
            WireSegment {
                gref: 3,
                first_sect: 0,
                last_sect: 7
            }
        );
        assert_eq!(
            out[1],
            WireSegment {
                gref: 4,
                first_sect: 9,
                last_sect: 1
            }
        );
        assert_eq!(out[2], WireSegment::default());
    }

    #[test]
    fn responses_decode_as_the_backend_encodes_them() {
        let w = xen_blkback::proto::WireResponse {
            id: 0xfeed_beef_0000_0042,
            operation: OP_WRITE,
            status: RSP_EOPNOTSUPP,
        };
        let raw = X86_64::encode_response(&w);
        let r = Response::decode(as_bytes(&raw));
        assert_eq!(
            r,
            Response {
                id: w.id,
                operation: OP_WRITE,
                status: RSP_EOPNOTSUPP
            }
        );
        assert_eq!(r.status_name(), "eopnotsupp");
        assert_eq!(Response::decode(&[]).status_name(), "okay");
    }
}
