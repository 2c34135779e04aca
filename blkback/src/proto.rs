//! The blkif protocol (`io/blkif.h`) as both block drivers see it: both ring layouts, the
//! width-independent wire form of requests and responses, validated requests, and the
//! xenstore names and limits.
//!
//! # Why this module lives in `xen-blkback` and `xen-blkfront` uses it
//!
//! The frontend builds exactly the structures the backend parses, so there must be one
//! definition of the wire form; a third crate would be the textbook split, but the workspace
//! layout fixes one crate per driver. The backend owns the module because it is the side that
//! must *validate* everything: the frontend only encodes requests and decodes responses, and
//! it depends on this crate for nothing else (the kernel linker drops the backend code from
//! `xbd.ko`).
//!
//! # The two layouts
//!
//! The ring is laid out by the *frontend's* ABI (`protocol` = `x86_32-abi` or `x86_64-abi`):
//! an i386 guest writes 108-byte requests with `id` at offset 4, an amd64 guest 112-byte ones
//! with `id` at 8; responses are 12 and 16 bytes. [`Layout`] is implemented once per width
//! ([`X86_64`], [`X86_32`]) over `xen-sys`'s generated structs and converts to and from
//! [`WireRequest`] / [`WireResponse`], which have no layout at all. [`BackRingAny`] and
//! [`FrontRingAny`] pick the width at run time (negotiated), so everything above them is
//! width-independent.
//!
//! # Copy once, then validate (XSA-155)
//!
//! A slot is copied out of shared memory exactly once, as the widest member of the C union
//! (`blkif_request`); [`Layout::decode_request`] reinterprets that *local copy* as the member
//! the operation selects (discard, indirect, read/write). [`Request::parse`] then validates
//! the local value. Nothing ever looks at the slot again, so a frontend rewriting it
//! concurrently changes nothing we act on. The same holds for the segment arrays of indirect
//! pages ([`parse_indirect_segments`]) and for responses on the frontend.
//!
//! # Zeroed responses (XSA-216)
//!
//! [`Layout::encode_response`] starts from an all-zero value and sets the three fields; the
//! ring then writes the whole slot (value plus zeroes), so no byte of backend memory other
//! than `id`, `operation` and `status` reaches the frontend.
//!
//! # Units
//!
//! `sector_number`, `first_sect`, `last_sect`, `nr_sectors` and the `sectors` node are in
//! 512-byte units whatever `sector-size` says (neither driver advertises
//! `feature-large-sector-size`; this is what Linux and FreeBSD do). A larger `sector-size`
//! is an alignment rule: requests must start and end on its multiples.

use core::fmt;
use core::mem::size_of;

use xen_ring::sring::{BackRing, FrontRing};
use xen_ring::{Fault, Notify, PushError, SetupError};
use xen_shmem::{as_bytes, as_bytes_mut, zeroed, Pod, SharedMem};
use xen_sys::consts::{BlkifDiscardFlags, BlkifOp, BlkifStatus};
use xen_sys::{x86_32, x86_64};

/// The protocol's sector: 512 bytes, whatever the device's logical block size.
pub const SECTOR_SIZE: usize = 512;
/// `log2(SECTOR_SIZE)`.
pub const SECTOR_SHIFT: u32 = 9;
/// Size of a Xen page (grant granularity).
pub const PAGE_SIZE: usize = xen_sys::consts::blkif::XEN_PAGE_SIZE;
/// Sectors in one page: `first_sect`/`last_sect` are below this.
pub const SECTORS_PER_PAGE: u8 = 8;
/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: segments of a direct request.
pub const MAX_DIRECT_SEGMENTS: usize = xen_sys::consts::blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST;
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`.
pub const MAX_INDIRECT_PAGES: usize = xen_sys::consts::blkif::BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST;
/// `BLKIF_SEGS_PER_INDIRECT_FRAME`: segment descriptors in one indirect page.
pub const SEGS_PER_INDIRECT_PAGE: usize = xen_sys::consts::blkif::BLKIF_SEGS_PER_INDIRECT_FRAME;
/// The most segments an indirect request can describe at all (8 pages of 512): the hard
/// upper bound of `feature-max-indirect-segments`.
pub const MAX_INDIRECT_SEGMENTS: u32 = 4096;
/// [`MAX_DIRECT_SEGMENTS`] as a `u32`.
pub const MAX_DIRECT_SEGMENTS_U32: u32 = 11;
/// [`SEGS_PER_INDIRECT_PAGE`] as a `u32`.
pub const SEGS_PER_INDIRECT_PAGE_U32: u32 = 512;
/// Largest `ring-page-order` either driver uses (16 pages, Linux's
/// `XENBUS_MAX_RING_GRANT_ORDER`).
pub const MAX_RING_PAGE_ORDER: u32 = 4;
/// Largest number of queues either driver uses.
pub const MAX_QUEUES: u32 = 16;

const _: () = assert!(SECTOR_SIZE << SECTOR_SHIFT >> SECTOR_SHIFT == SECTOR_SIZE);
const _: () = assert!(SECTORS_PER_PAGE as usize * SECTOR_SIZE == PAGE_SIZE);
const _: () =
    assert!(MAX_INDIRECT_SEGMENTS as usize == MAX_INDIRECT_PAGES * SEGS_PER_INDIRECT_PAGE);
const _: () = assert!(MAX_DIRECT_SEGMENTS_U32 as usize == MAX_DIRECT_SEGMENTS);
const _: () = assert!(SEGS_PER_INDIRECT_PAGE_U32 as usize == SEGS_PER_INDIRECT_PAGE);

/// xenstore node names (`io/blkif.h`, "Feature and Parameter Negotiation").
pub mod keys {
    /// Backend (toolstack, private): `r` or `w`.
    pub const MODE: &str = "mode";
    /// Backend (toolstack, private): what to open.
    pub const PARAMS: &str = "params";
    /// Backend (toolstack, private): `file`, `phy`.
    pub const TYPE: &str = "type";
    /// Backend (toolstack, FreeBSD): absolute path of the backing object.
    pub const PHYSICAL_DEVICE_PATH: &str = "physical-device-path";
    /// Backend (toolstack): `0` to not offer discard.
    pub const DISCARD_ENABLE: &str = "discard-enable";
    /// Backend (toolstack): removable media.
    pub const REMOVABLE: &str = "removable";
    /// Backend (toolstack): keep the device when the frontend closes.
    pub const ONLINE: &str = "online";
    /// Backend: hotplug handshake.
    pub const HOTPLUG_STATUS: &str = "hotplug-status";
    /// Backend feature.
    pub const FEATURE_BARRIER: &str = "feature-barrier";
    /// Backend feature.
    pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
    /// Backend feature.
    pub const FEATURE_DISCARD: &str = "feature-discard";
    /// Backend and frontend feature.
    pub const FEATURE_PERSISTENT: &str = "feature-persistent";
    /// Backend feature: most segments of an indirect request.
    pub const FEATURE_MAX_INDIRECT_SEGMENTS: &str = "feature-max-indirect-segments";
    /// Backend: most ring pages, as an order.
    pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
    /// Backend (deprecated scheme): most ring pages.
    pub const MAX_RING_PAGES: &str = "max-ring-pages";
    /// Backend: most queues.
    pub const MULTI_QUEUE_MAX_QUEUES: &str = "multi-queue-max-queues";
    /// Backend device property (512-byte units, see the module docs).
    pub const SECTORS: &str = "sectors";
    /// Backend device property: `VDISK_*` bits.
    pub const INFO: &str = "info";
    /// Backend device property: logical block size.
    pub const SECTOR_SIZE: &str = "sector-size";
    /// Backend device property: physical block size.
    pub const PHYSICAL_SECTOR_SIZE: &str = "physical-sector-size";
    /// Backend discard property.
    pub const DISCARD_GRANULARITY: &str = "discard-granularity";
    /// Backend discard property.
    pub const DISCARD_ALIGNMENT: &str = "discard-alignment";
    /// Backend discard property.
    pub const DISCARD_SECURE: &str = "discard-secure";
    /// Frontend: ring grant of a one-page ring.
    pub const RING_REF: &str = "ring-ref";
    /// Frontend: event channel.
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// Frontend: ring size as an order.
    pub const RING_PAGE_ORDER: &str = "ring-page-order";
    /// Frontend (deprecated scheme): ring size in pages.
    pub const NUM_RING_PAGES: &str = "num-ring-pages";
    /// Frontend: ring layout (`x86_32-abi`, `x86_64-abi`).
    pub const PROTOCOL: &str = "protocol";
    /// Frontend: number of queues.
    pub const MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";
    /// Frontend (toolstack): `disk`, `cdrom`...
    pub const DEVICE_TYPE: &str = "device-type";
    /// Frontend (toolstack): `0` if the backend is not trusted (XSA-403).
    pub const TRUSTED: &str = "trusted";
    /// Frontend (toolstack): the virtual device number.
    pub const VIRTUAL_DEVICE: &str = "virtual-device";
}

/// A ring layout: whose ABI the frontend's structures follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Abi {
    /// i386 (`x86_32-abi`).
    X86_32,
    /// amd64 (`x86_64-abi`).
    X86_64,
}

impl Abi {
    /// The layout of the compile target (`XEN_IO_PROTO_ABI_NATIVE`).
    #[cfg(target_arch = "x86")]
    pub const NATIVE: Abi = Abi::X86_32;
    /// The layout of the compile target (`XEN_IO_PROTO_ABI_NATIVE`).
    #[cfg(not(target_arch = "x86"))]
    pub const NATIVE: Abi = Abi::X86_64;

    /// The `protocol` node value (`io/protocols.h`).
    #[must_use]
    pub const fn protocol(self) -> &'static str {
        match self {
            Abi::X86_32 => "x86_32-abi",
            Abi::X86_64 => "x86_64-abi",
        }
    }

    /// Parses a `protocol` node (a trailing NUL or blanks tolerated). `None` for anything
    /// else, including the ARM ABI, which no x86 driver can serve.
    #[must_use]
    pub fn parse(value: &[u8]) -> Option<Abi> {
        let s = core::str::from_utf8(value).ok()?;
        match s.trim_end_matches('\0').trim_ascii() {
            "x86_32-abi" => Some(Abi::X86_32),
            "x86_64-abi" => Some(Abi::X86_64),
            _ => None,
        }
    }

    /// Bytes of one ring entry (the request/response union).
    #[must_use]
    pub const fn entry_size(self) -> usize {
        match self {
            Abi::X86_32 => {
                xen_ring::sring::entry_size::<x86_32::blkif_request, x86_32::blkif_response>()
            }
            Abi::X86_64 => {
                xen_ring::sring::entry_size::<x86_64::blkif_request, x86_64::blkif_response>()
            }
        }
    }

    /// Entries of a ring of `2^order` pages in this layout.
    #[must_use]
    pub const fn ring_entries(self, order: u32) -> u32 {
        xen_ring::sring::ring_entries(PAGE_SIZE << order, self.entry_size())
    }
}

impl fmt::Display for Abi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.protocol())
    }
}

/// One segment descriptor as it appears on the wire (in a request or an indirect page):
/// not validated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireSegment {
    /// Grant of the data page.
    pub gref: u32,
    /// First 512-byte sector of the page to transfer.
    pub first_sect: u8,
    /// Last sector (inclusive).
    pub last_sect: u8,
}

/// The union member a request slot holds, chosen by its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireBody {
    /// Read, write, barrier, flush (and any unknown operation): `blkif_request`.
    Rw {
        /// `nr_segments` (unvalidated).
        nr_segments: u8,
        /// All eleven descriptors, used or not.
        seg: [WireSegment; MAX_DIRECT_SEGMENTS],
    },
    /// `blkif_request_discard`.
    Discard {
        /// `BLKIF_DISCARD_*` bits.
        flag: u8,
        /// Sectors to discard.
        nr_sectors: u64,
    },
    /// `blkif_request_indirect`.
    Indirect {
        /// The operation the segments are for.
        indirect_op: u8,
        /// Segments in the indirect pages.
        nr_segments: u16,
        /// Grants of the indirect pages (only the first `ceil(nr_segments / 512)` used).
        indirect_grefs: [u32; MAX_INDIRECT_PAGES],
    },
}

/// A request slot's contents, width-independent, exactly as copied out of the ring: nothing
/// here is validated (see [`Request::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireRequest {
    /// `operation`.
    pub operation: u8,
    /// `handle` (the virtual device).
    pub handle: u16,
    /// `id`, echoed in the response.
    pub id: u64,
    /// `sector_number`.
    pub sector_number: u64,
    /// The member of the union.
    pub body: WireBody,
}

impl WireRequest {
    /// A read, write, barrier or flush with direct segments (at most eleven are used).
    #[must_use]
    pub fn rw(op: BlkifOp, id: u64, handle: u16, sector: u64, segs: &[WireSegment]) -> Self {
        let mut seg = [WireSegment::default(); MAX_DIRECT_SEGMENTS];
        let n = segs.len().min(MAX_DIRECT_SEGMENTS);
        if let (Some(dst), Some(src)) = (seg.get_mut(..n), segs.get(..n)) {
            dst.copy_from_slice(src);
        }
        WireRequest {
            operation: op.value(),
            handle,
            id,
            sector_number: sector,
            // CAST: n <= 11.
            body: WireBody::Rw {
                nr_segments: u8::try_from(n).unwrap_or(0),
                seg,
            },
        }
    }

    /// A discard.
    #[must_use]
    pub fn discard(id: u64, handle: u16, sector: u64, nr_sectors: u64, secure: bool) -> Self {
        WireRequest {
            operation: BlkifOp::Discard.value(),
            handle,
            id,
            sector_number: sector,
            body: WireBody::Discard {
                flag: if secure {
                    BlkifDiscardFlags::SECURE.bits()
                } else {
                    0
                },
                nr_sectors,
            },
        }
    }

    /// An indirect read or write; `grefs` are the indirect pages in order.
    #[must_use]
    pub fn indirect(
        op: BlkifOp,
        id: u64,
        handle: u16,
        sector: u64,
        nr_segments: u16,
        grefs: &[u32],
    ) -> Self {
        let mut indirect_grefs = [0u32; MAX_INDIRECT_PAGES];
        for (d, s) in indirect_grefs.iter_mut().zip(grefs) {
            *d = *s;
        }
        WireRequest {
            operation: BlkifOp::Indirect.value(),
            handle,
            id,
            sector_number: sector,
            body: WireBody::Indirect {
                indirect_op: op.value(),
                nr_segments,
                indirect_grefs,
            },
        }
    }

    /// The operation a response to this request must carry: `indirect_op` for an indirect
    /// request (as Linux's blkback answers and its hardened blkfront checks), `operation`
    /// otherwise.
    #[must_use]
    pub fn response_operation(&self) -> u8 {
        match self.body {
            WireBody::Indirect { indirect_op, .. } => indirect_op,
            _ => self.operation,
        }
    }
}

/// A response, width-independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's operation (see [`WireRequest::response_operation`]).
    pub operation: u8,
    /// `BLKIF_RSP_*` (unvalidated when received).
    pub status: i16,
}

impl WireResponse {
    /// A response with a typed status.
    #[must_use]
    pub fn new(id: u64, operation: u8, status: BlkifStatus) -> Self {
        WireResponse {
            id,
            operation,
            status: status.value(),
        }
    }
}

/// Copies the first bytes of `a` into a zeroed `B`: the union-member cast of C, done on a
/// local copy.
fn reinterpret<A: Pod, B: Pod>(a: &A) -> B {
    let mut b: B = zeroed();
    let n = size_of::<A>().min(size_of::<B>());
    if let (Some(dst), Some(src)) = (as_bytes_mut(&mut b).get_mut(..n), as_bytes(a).get(..n)) {
        dst.copy_from_slice(src);
    }
    b
}

/// One ring layout: the Pod structs of one width and their conversions.
pub trait Layout: 'static {
    /// The request slot type (the widest union member, `blkif_request`).
    type Req: Pod;
    /// The response type.
    type Rsp: Pod;
    /// Which width this is.
    const ABI: Abi;
    /// Reads the union member selected by the operation, from a local copy of a slot.
    fn decode_request(raw: &Self::Req) -> WireRequest;
    /// Builds a slot value from zero (no stale bytes; the ring zero-pads the slot too).
    fn encode_request(w: &WireRequest) -> Self::Req;
    /// Reads a local copy of a response slot.
    fn decode_response(raw: &Self::Rsp) -> WireResponse;
    /// Builds a response from zero (XSA-216: padding is zero, never stale memory).
    fn encode_response(w: &WireResponse) -> Self::Rsp;
}

/// The amd64 layout.
#[derive(Debug, Clone, Copy)]
pub struct X86_64;

/// The i386 layout.
#[derive(Debug, Clone, Copy)]
pub struct X86_32;

macro_rules! layout {
    ($t:ident, $m:ident) => {
        impl Layout for $t {
            type Req = $m::blkif_request;
            type Rsp = $m::blkif_response;
            const ABI: Abi = Abi::$t;

            fn decode_request(raw: &Self::Req) -> WireRequest {
                let operation = raw.operation;
                if operation == BlkifOp::Discard.value() {
                    let d: $m::blkif_request_discard = reinterpret(raw);
                    WireRequest {
                        operation,
                        handle: d.handle,
                        id: d.id,
                        sector_number: d.sector_number,
                        body: WireBody::Discard {
                            flag: d.flag,
                            nr_sectors: d.nr_sectors,
                        },
                    }
                } else if operation == BlkifOp::Indirect.value() {
                    let i: $m::blkif_request_indirect = reinterpret(raw);
                    WireRequest {
                        operation,
                        handle: i.handle,
                        id: i.id,
                        sector_number: i.sector_number,
                        body: WireBody::Indirect {
                            indirect_op: i.indirect_op,
                            nr_segments: i.nr_segments,
                            indirect_grefs: i.indirect_grefs,
                        },
                    }
                } else {
                    let raw_seg = raw.seg;
                    let mut seg = [WireSegment::default(); MAX_DIRECT_SEGMENTS];
                    for (s, r) in seg.iter_mut().zip(raw_seg.iter()) {
                        *s = WireSegment {
                            gref: r.gref,
                            first_sect: r.first_sect,
                            last_sect: r.last_sect,
                        };
                    }
                    WireRequest {
                        operation,
                        handle: raw.handle,
                        id: raw.id,
                        sector_number: raw.sector_number,
                        body: WireBody::Rw {
                            nr_segments: raw.nr_segments,
                            seg,
                        },
                    }
                }
            }

            fn encode_request(w: &WireRequest) -> Self::Req {
                match w.body {
                    WireBody::Discard { flag, nr_sectors } => {
                        let mut d: $m::blkif_request_discard = zeroed();
                        d.operation = w.operation;
                        d.flag = flag;
                        d.handle = w.handle;
                        d.id = w.id;
                        d.sector_number = w.sector_number;
                        d.nr_sectors = nr_sectors;
                        reinterpret(&d)
                    }
                    WireBody::Indirect {
                        indirect_op,
                        nr_segments,
                        indirect_grefs,
                    } => {
                        let mut i: $m::blkif_request_indirect = zeroed();
                        i.operation = w.operation;
                        i.indirect_op = indirect_op;
                        i.nr_segments = nr_segments;
                        i.id = w.id;
                        i.sector_number = w.sector_number;
                        i.handle = w.handle;
                        i.indirect_grefs = indirect_grefs;
                        reinterpret(&i)
                    }
                    WireBody::Rw { nr_segments, seg } => {
                        let mut r: $m::blkif_request = zeroed();
                        r.operation = w.operation;
                        r.nr_segments = nr_segments;
                        r.handle = w.handle;
                        r.id = w.id;
                        r.sector_number = w.sector_number;
                        let mut raw_seg = r.seg;
                        for (d, s) in raw_seg.iter_mut().zip(seg.iter()) {
                            d.gref = s.gref;
                            d.first_sect = s.first_sect;
                            d.last_sect = s.last_sect;
                        }
                        r.seg = raw_seg;
                        r
                    }
                }
            }

            fn decode_response(raw: &Self::Rsp) -> WireResponse {
                WireResponse {
                    id: raw.id,
                    operation: raw.operation,
                    status: raw.status,
                }
            }

            fn encode_response(w: &WireResponse) -> Self::Rsp {
                let mut r: $m::blkif_response = zeroed();
                r.id = w.id;
                r.operation = w.operation;
                r.status = w.status;
                r
            }
        }
    };
}

layout!(X86_64, x86_64);
layout!(X86_32, x86_32);

/// A validated segment: `first_sect <= last_sect < 8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    gref: u32,
    first_sect: u8,
    last_sect: u8,
}

impl Segment {
    /// Validates a descriptor (`index` only labels the violation).
    ///
    /// # Errors
    /// [`Violation::BadSegment`] unless `first_sect <= last_sect < 8`.
    pub fn new(w: WireSegment, index: u16) -> Result<Segment, Violation> {
        if w.first_sect > w.last_sect || w.last_sect >= SECTORS_PER_PAGE {
            return Err(Violation::BadSegment {
                index,
                first_sect: w.first_sect,
                last_sect: w.last_sect,
            });
        }
        Ok(Segment {
            gref: w.gref,
            first_sect: w.first_sect,
            last_sect: w.last_sect,
        })
    }

    /// The data page's grant.
    #[must_use]
    pub fn gref(&self) -> u32 {
        self.gref
    }

    /// First sector within the page.
    #[must_use]
    pub fn first_sect(&self) -> u8 {
        self.first_sect
    }

    /// Last sector within the page (inclusive).
    #[must_use]
    pub fn last_sect(&self) -> u8 {
        self.last_sect
    }

    /// Byte offset of the data within the page.
    #[must_use]
    pub fn offset(&self) -> usize {
        usize::from(self.first_sect) * SECTOR_SIZE
    }

    /// Bytes transferred (512..=4096).
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.last_sect - self.first_sect + 1) * SECTOR_SIZE
    }

    /// Never: a segment covers at least one sector (kept for clippy's `len` convention).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Sectors transferred (1..=8).
    #[must_use]
    pub fn sectors(&self) -> u64 {
        u64::from(self.last_sect - self.first_sect + 1)
    }

    /// Back to the wire form.
    #[must_use]
    pub fn wire(&self) -> WireSegment {
        WireSegment {
            gref: self.gref,
            first_sect: self.first_sect,
            last_sect: self.last_sect,
        }
    }
}

/// What the backend accepts; the parts of a negotiation [`Request::parse`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Device size in 512-byte sectors.
    pub sectors: u64,
    /// Logical block size in bytes (a power of two, at least 512): the alignment of every
    /// request.
    pub sector_size: u32,
    /// `feature-max-indirect-segments` as advertised; 0 when indirect requests are not.
    pub max_indirect_segments: u32,
}

/// Why a request was refused. [`Violation::is_fatal`] separates protocol violations (the
/// frontend is broken or hostile: the device stops) from requests a correct frontend can
/// send and that just fail (answered with `BLKIF_RSP_ERROR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// `operation` is none of `BLKIF_OP_*` (or is the reserved 4).
    UnknownOperation(u8),
    /// Segment count outside `1..=max` (or above 11 for a flush/barrier, which may have 0).
    BadSegmentCount {
        /// The request's operation.
        operation: u8,
        /// The count it carried.
        count: u16,
        /// The most allowed.
        max: u32,
    },
    /// A segment with `first_sect > last_sect` or `last_sect > 7`.
    BadSegment {
        /// Its index in the request (direct) or the indirect pages.
        index: u16,
        /// Its `first_sect`.
        first_sect: u8,
        /// Its `last_sect`.
        last_sect: u8,
    },
    /// An indirect request although `feature-max-indirect-segments` was not advertised.
    IndirectNotNegotiated,
    /// `indirect_op` is not read or write.
    BadIndirectOp(u8),
    /// `sector_number + sectors` overflows.
    SectorOverflow {
        /// Start sector.
        sector: u64,
        /// Length in sectors.
        sectors: u64,
    },
    /// The range ends beyond the device (not fatal: a correct frontend can race a shrink).
    OutOfRange {
        /// Start sector.
        sector: u64,
        /// Length in sectors.
        sectors: u64,
        /// Device size.
        device: u64,
    },
    /// Start or length not a multiple of the logical block size (not fatal).
    Misaligned {
        /// Start sector.
        sector: u64,
        /// Length in sectors.
        sectors: u64,
        /// Logical block size in bytes.
        sector_size: u32,
    },
}

impl Violation {
    /// Whether the frontend broke the protocol (device → error state) rather than asked for
    /// something that merely fails.
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Violation::OutOfRange { .. } | Violation::Misaligned { .. }
        )
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Violation::UnknownOperation(op) => write!(f, "unknown operation {op}"),
            Violation::BadSegmentCount {
                operation,
                count,
                max,
            } => write!(
                f,
                "operation {operation} with {count} segments (allowed: up to {max})"
            ),
            Violation::BadSegment {
                index,
                first_sect,
                last_sect,
            } => write!(
                f,
                "segment {index}: first_sect {first_sect}, last_sect {last_sect}"
            ),
            Violation::IndirectNotNegotiated => {
                f.write_str("indirect request without feature-max-indirect-segments")
            }
            Violation::BadIndirectOp(op) => write!(f, "indirect request for operation {op}"),
            Violation::SectorOverflow { sector, sectors } => {
                write!(f, "sector {sector} + {sectors} overflows")
            }
            Violation::OutOfRange {
                sector,
                sectors,
                device,
            } => write!(
                f,
                "sectors {sector}+{sectors} beyond the device ({device} sectors)"
            ),
            Violation::Misaligned {
                sector,
                sectors,
                sector_size,
            } => write!(
                f,
                "sectors {sector}+{sectors} not aligned to {sector_size}-byte blocks"
            ),
        }
    }
}

/// Where a read or write request's segments are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segments {
    /// In the request (validated).
    Direct {
        /// Segments used.
        count: u8,
        /// The validated segments (`..count`).
        seg: [Option<Segment>; MAX_DIRECT_SEGMENTS],
    },
    /// In indirect pages, to be read and validated with [`parse_indirect_segments`].
    Indirect {
        /// Segments described.
        nr_segments: u16,
        /// Grants of the pages holding them (`..pages` used).
        grefs: [u32; MAX_INDIRECT_PAGES],
        /// Number of indirect pages (`ceil(nr_segments / 512)`).
        pages: u8,
    },
}

impl Segments {
    /// Number of data segments.
    #[must_use]
    pub fn count(&self) -> usize {
        match *self {
            Segments::Direct { count, .. } => usize::from(count),
            Segments::Indirect { nr_segments, .. } => usize::from(nr_segments),
        }
    }

    /// The direct segments (empty for an indirect request).
    pub fn direct(&self) -> impl Iterator<Item = Segment> + '_ {
        let s: &[Option<Segment>] = match self {
            Segments::Direct { count, seg } => seg.get(..usize::from(*count)).unwrap_or(&[]),
            Segments::Indirect { .. } => &[],
        };
        s.iter().flatten().copied()
    }

    /// The grants of the indirect pages (empty for a direct request).
    #[must_use]
    pub fn indirect_grefs(&self) -> &[u32] {
        match self {
            Segments::Direct { .. } => &[],
            Segments::Indirect { grefs, pages, .. } => {
                grefs.get(..usize::from(*pages)).unwrap_or(&[])
            }
        }
    }
}

/// A read, write, barrier or flush: where and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRequest {
    /// First sector.
    pub sector: u64,
    /// The segments.
    pub segments: Segments,
    /// Total sectors of the direct segments (0 for indirect until its pages are read).
    pub sectors: u64,
}

/// What a validated request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Read into the segments.
    Read(DataRequest),
    /// Write from the segments.
    Write(DataRequest),
    /// `BLKIF_OP_WRITE_BARRIER`: earlier writes complete first, then this write (possibly of
    /// no segments), durably, before any later write.
    Barrier(DataRequest),
    /// `BLKIF_OP_FLUSH_DISKCACHE`: earlier writes are made durable; segments, if any, are
    /// written after the flush (Linux's "preflush" reading).
    Flush(DataRequest),
    /// `BLKIF_OP_DISCARD`.
    Discard {
        /// First sector.
        sector: u64,
        /// Sectors (0 is a no-op).
        sectors: u64,
        /// `BLKIF_DISCARD_SECURE`.
        secure: bool,
    },
}

/// A request that passed [`Request::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Echoed in the response.
    pub id: u64,
    /// The virtual device handle (informational).
    pub handle: u16,
    /// The operation code the response carries.
    pub response_op: u8,
    /// What to do.
    pub op: Operation,
}

/// Checks `sector..sector + sectors` against the device and its block size.
///
/// # Errors
/// [`Violation::SectorOverflow`], [`Violation::OutOfRange`], [`Violation::Misaligned`].
pub fn check_range(sector: u64, sectors: u64, lim: &Limits) -> Result<(), Violation> {
    let end = sector
        .checked_add(sectors)
        .ok_or(Violation::SectorOverflow { sector, sectors })?;
    if end > lim.sectors {
        return Err(Violation::OutOfRange {
            sector,
            sectors,
            device: lim.sectors,
        });
    }
    let per_block = u64::from(lim.sector_size >> SECTOR_SHIFT).max(1);
    if sector % per_block != 0 || sectors % per_block != 0 {
        return Err(Violation::Misaligned {
            sector,
            sectors,
            sector_size: lim.sector_size,
        });
    }
    Ok(())
}

/// Indirect pages needed for `nr_segments` segments.
#[must_use]
pub fn indirect_pages(nr_segments: u32) -> u32 {
    nr_segments.div_ceil(SEGS_PER_INDIRECT_PAGE_U32)
}

impl Request {
    /// Validates a request copied out of the ring.
    ///
    /// Checks the operation; for reads and writes `1 <= nr_segments <= 11` (flush and
    /// barrier may have 0); every segment `first_sect <= last_sect <= 7`; the sector range
    /// without overflow, within the device and aligned to its block size; for indirect
    /// requests that they were negotiated, `indirect_op` is read or write and
    /// `1 <= nr_segments <= max_indirect_segments` (so at most 8 pages); for discards the
    /// range. The segments of an indirect request are checked when its pages have been
    /// copied ([`parse_indirect_segments`]).
    ///
    /// # Errors
    /// The first [`Violation`] found.
    pub fn parse(w: &WireRequest, lim: &Limits) -> Result<Request, Violation> {
        let op =
            BlkifOp::try_from(w.operation).map_err(|_| Violation::UnknownOperation(w.operation))?;
        let sector = w.sector_number;
        let req = |op: Operation| Request {
            id: w.id,
            handle: w.handle,
            response_op: w.response_operation(),
            op,
        };
        match (op, w.body) {
            (BlkifOp::Discard, WireBody::Discard { flag, nr_sectors }) => {
                check_range(sector, nr_sectors, lim)?;
                Ok(req(Operation::Discard {
                    sector,
                    sectors: nr_sectors,
                    secure: BlkifDiscardFlags::from_bits_truncate(flag)
                        .contains(BlkifDiscardFlags::SECURE),
                }))
            }
            (
                BlkifOp::Indirect,
                WireBody::Indirect {
                    indirect_op,
                    nr_segments,
                    indirect_grefs,
                },
            ) => {
                if lim.max_indirect_segments == 0 {
                    return Err(Violation::IndirectNotNegotiated);
                }
                let inner = match BlkifOp::try_from(indirect_op) {
                    Ok(o @ (BlkifOp::Read | BlkifOp::Write)) => o,
                    _ => return Err(Violation::BadIndirectOp(indirect_op)),
                };
                let max = lim.max_indirect_segments.min(MAX_INDIRECT_SEGMENTS);
                if nr_segments == 0 || u32::from(nr_segments) > max {
                    return Err(Violation::BadSegmentCount {
                        operation: w.operation,
                        count: nr_segments,
                        max,
                    });
                }
                // At most 8 by the bound above.
                let pages = u8::try_from(indirect_pages(u32::from(nr_segments))).unwrap_or(0);
                let data = DataRequest {
                    sector,
                    segments: Segments::Indirect {
                        nr_segments,
                        grefs: indirect_grefs,
                        pages,
                    },
                    sectors: 0,
                };
                Ok(req(if inner == BlkifOp::Read {
                    Operation::Read(data)
                } else {
                    Operation::Write(data)
                }))
            }
            (
                o @ (BlkifOp::Read
                | BlkifOp::Write
                | BlkifOp::WriteBarrier
                | BlkifOp::FlushDiskcache),
                WireBody::Rw { nr_segments, seg },
            ) => {
                let n = usize::from(nr_segments);
                let data_op = matches!(o, BlkifOp::Read | BlkifOp::Write);
                if n > MAX_DIRECT_SEGMENTS || (n == 0 && data_op) {
                    return Err(Violation::BadSegmentCount {
                        operation: w.operation,
                        count: u16::from(nr_segments),
                        max: MAX_DIRECT_SEGMENTS_U32,
                    });
                }
                let mut out = [None; MAX_DIRECT_SEGMENTS];
                let mut sectors = 0u64;
                for (i, (d, s)) in (0u16..).zip(out.iter_mut().zip(seg.iter()).take(n)) {
                    let v = Segment::new(*s, i)?;
                    sectors += v.sectors();
                    *d = Some(v);
                }
                if n > 0 {
                    check_range(sector, sectors, lim)?;
                }
                let data = DataRequest {
                    sector,
                    segments: Segments::Direct {
                        count: nr_segments,
                        seg: out,
                    },
                    sectors,
                };
                Ok(req(match o {
                    BlkifOp::Read => Operation::Read(data),
                    BlkifOp::Write => Operation::Write(data),
                    BlkifOp::WriteBarrier => Operation::Barrier(data),
                    _ => Operation::Flush(data),
                }))
            }
            // decode_request picks the body from the operation, so these cannot meet; a
            // hand-built mismatch is treated as what it claims to be: nonsense.
            _ => Err(Violation::UnknownOperation(w.operation)),
        }
    }
}

/// Validates the segment descriptors of an indirect request, copied out of its pages, and
/// its sector range. `descs` must be exactly `nr_segments` long (the caller copies that many).
///
/// # Errors
/// [`Violation::BadSegment`] for a bad descriptor, or a range violation.
pub fn parse_indirect_segments(
    sector: u64,
    descs: &[WireSegment],
    lim: &Limits,
    out: &mut alloc::vec::Vec<Segment>,
) -> Result<u64, Violation> {
    out.clear();
    out.reserve(descs.len());
    let mut sectors = 0u64;
    for (i, d) in (0u16..).zip(descs) {
        let s = Segment::new(*d, i)?;
        sectors += s.sectors();
        out.push(s);
    }
    check_range(sector, sectors, lim)?;
    Ok(sectors)
}

/// Decodes the segment descriptors stored in an indirect page (copied out once by the
/// caller): 512 descriptors of 8 bytes, the same in both layouts.
pub fn decode_indirect_page(page: &[u8], out: &mut alloc::vec::Vec<WireSegment>, count: usize) {
    for chunk in page.chunks_exact(8).take(count) {
        let b = |i: usize| chunk.get(i).copied().unwrap_or(0);
        out.push(WireSegment {
            gref: u32::from_le_bytes([b(0), b(1), b(2), b(3)]),
            first_sect: b(4),
            last_sect: b(5),
        });
    }
}

/// Encodes segment descriptors into an indirect page image (the frontend's side).
pub fn encode_indirect_page(segs: &[WireSegment], page: &mut [u8]) {
    for (chunk, s) in page.chunks_exact_mut(8).zip(segs) {
        let mut d = [0u8; 8];
        if let Some(g) = d.get_mut(..4) {
            g.copy_from_slice(&s.gref.to_le_bytes());
        }
        d[4] = s.first_sect;
        d[5] = s.last_sect;
        chunk.copy_from_slice(&d);
    }
}

/// A backend's ring, in whichever layout was negotiated.
#[derive(Debug)]
pub enum BackRingAny<'a> {
    /// `x86_32-abi`.
    X86_32(BackRing<'a, x86_32::blkif_request, x86_32::blkif_response>),
    /// `x86_64-abi`.
    X86_64(BackRing<'a, x86_64::blkif_request, x86_64::blkif_response>),
}

macro_rules! each_ring {
    ($self:ident, $t:ident, $r:ident => $e:expr) => {
        match $self {
            $t::X86_32($r) => $e,
            $t::X86_64($r) => $e,
        }
    };
}

impl<'a> BackRingAny<'a> {
    /// Attaches to the frontend's ring (never writes to it).
    ///
    /// # Errors
    /// As [`BackRing::attach`].
    pub fn attach(abi: Abi, mem: SharedMem<'a>) -> Result<Self, SetupError> {
        Ok(match abi {
            Abi::X86_32 => BackRingAny::X86_32(BackRing::attach(mem)?),
            Abi::X86_64 => BackRingAny::X86_64(BackRing::attach(mem)?),
        })
    }

    /// The layout.
    #[must_use]
    pub fn abi(&self) -> Abi {
        match self {
            BackRingAny::X86_32(_) => Abi::X86_32,
            BackRingAny::X86_64(_) => Abi::X86_64,
        }
    }

    /// Entries.
    #[must_use]
    pub fn size(&self) -> u32 {
        each_ring!(self, BackRingAny, r => r.size())
    }

    /// The sticky fault.
    #[must_use]
    pub fn fault(&self) -> Option<Fault> {
        each_ring!(self, BackRingAny, r => r.fault())
    }

    /// Requests consumed and not answered.
    #[must_use]
    pub fn unanswered(&self) -> u32 {
        each_ring!(self, BackRingAny, r => r.unanswered())
    }

    /// Copies out the next request (once) and decodes it.
    ///
    /// # Errors
    /// The ring's sticky fault.
    pub fn pop_request(&mut self) -> Result<Option<WireRequest>, Fault> {
        Ok(match self {
            BackRingAny::X86_32(r) => r.pop_request()?.map(|q| X86_32::decode_request(&q)),
            BackRingAny::X86_64(r) => r.pop_request()?.map(|q| X86_64::decode_request(&q)),
        })
    }

    /// Queues a response (built zeroed).
    ///
    /// # Errors
    /// As [`BackRing::push_response`].
    pub fn push_response(&mut self, rsp: &WireResponse) -> Result<(), PushError> {
        match self {
            BackRingAny::X86_32(r) => r.push_response(&X86_32::encode_response(rsp)),
            BackRingAny::X86_64(r) => r.push_response(&X86_64::encode_response(rsp)),
        }
    }

    /// Publishes responses; whether the frontend wants an event.
    ///
    /// # Errors
    /// The sticky fault.
    pub fn push_responses_and_check_notify(&mut self) -> Result<Notify, Fault> {
        each_ring!(self, BackRingAny, r => r.push_responses_and_check_notify())
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`.
    ///
    /// # Errors
    /// The sticky fault.
    pub fn final_check_for_requests(&mut self) -> Result<bool, Fault> {
        each_ring!(self, BackRingAny, r => r.final_check_for_requests())
    }

    /// Requests ready now (one index check).
    ///
    /// # Errors
    /// The sticky fault.
    pub fn unconsumed_requests(&mut self) -> Result<u32, Fault> {
        each_ring!(self, BackRingAny, r => r.unconsumed_requests())
    }
}

/// A frontend's ring, in whichever layout it uses.
#[derive(Debug)]
pub enum FrontRingAny<'a> {
    /// `x86_32-abi`.
    X86_32(FrontRing<'a, x86_32::blkif_request, x86_32::blkif_response>),
    /// `x86_64-abi`.
    X86_64(FrontRing<'a, x86_64::blkif_request, x86_64::blkif_response>),
}

impl<'a> FrontRingAny<'a> {
    /// Initialises a fresh ring over `mem` (zeroing it all).
    ///
    /// # Errors
    /// As [`FrontRing::init`].
    pub fn init(abi: Abi, mem: SharedMem<'a>) -> Result<Self, SetupError> {
        Ok(match abi {
            Abi::X86_32 => FrontRingAny::X86_32(FrontRing::init(mem)?),
            Abi::X86_64 => FrontRingAny::X86_64(FrontRing::init(mem)?),
        })
    }

    /// Entries.
    #[must_use]
    pub fn size(&self) -> u32 {
        each_ring!(self, FrontRingAny, r => r.size())
    }

    /// The sticky fault.
    #[must_use]
    pub fn fault(&self) -> Option<Fault> {
        each_ring!(self, FrontRingAny, r => r.fault())
    }

    /// Free request slots.
    #[must_use]
    pub fn free_requests(&self) -> u32 {
        each_ring!(self, FrontRingAny, r => r.free_requests())
    }

    /// Queues a request (built zeroed, whole slot written).
    ///
    /// # Errors
    /// As [`FrontRing::push_request`].
    pub fn push_request(&mut self, req: &WireRequest) -> Result<(), PushError> {
        match self {
            FrontRingAny::X86_32(r) => r.push_request(&X86_32::encode_request(req)),
            FrontRingAny::X86_64(r) => r.push_request(&X86_64::encode_request(req)),
        }
    }

    /// Publishes requests; whether the backend wants an event.
    ///
    /// # Errors
    /// The sticky fault.
    pub fn push_requests_and_check_notify(&mut self) -> Result<Notify, Fault> {
        each_ring!(self, FrontRingAny, r => r.push_requests_and_check_notify())
    }

    /// Copies out the next response (once) and decodes it.
    ///
    /// # Errors
    /// The ring's sticky fault (e.g. more responses than requests).
    pub fn pop_response(&mut self) -> Result<Option<WireResponse>, Fault> {
        Ok(match self {
            FrontRingAny::X86_32(r) => r.pop_response()?.map(|q| X86_32::decode_response(&q)),
            FrontRingAny::X86_64(r) => r.pop_response()?.map(|q| X86_64::decode_response(&q)),
        })
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`.
    ///
    /// # Errors
    /// The sticky fault.
    pub fn final_check_for_responses(&mut self) -> Result<bool, Fault> {
        each_ring!(self, FrontRingAny, r => r.final_check_for_responses())
    }
}

/// Parses a boolean feature node (`"1"`/`"0"`, blanks and a trailing NUL tolerated); `None`
/// for anything else.
#[must_use]
pub fn parse_bool(v: &[u8]) -> Option<bool> {
    match parse_u64(v)? {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// Parses an unsigned decimal node value (blanks and a trailing NUL tolerated, at most 20
/// digits, no overflow).
#[must_use]
pub fn parse_u64(v: &[u8]) -> Option<u64> {
    let s = core::str::from_utf8(v).ok()?;
    let s = s.trim_end_matches('\0').trim_ascii();
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Switches our xenbus state, unless our device directory is gone (the toolstack removed it:
/// writing `state` would re-create it; Linux's `xenbus_switch_state` checks the same way).
///
/// # Errors
/// Store errors; an illegal transition.
pub fn switch_state<S: xen_xenbus::Store + ?Sized>(
    xs: &mut S,
    dev: &mut xen_xenbus::Device,
    to: xen_xenbus::XenbusState,
) -> Result<(), xen_xenbus::Error> {
    if dev.state() == to {
        return Ok(());
    }
    if xs.try_read(dev.nodename())?.is_none() {
        return Ok(());
    }
    dev.switch_state(xs, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits {
        Limits {
            sectors: 1 << 20,
            sector_size: 512,
            max_indirect_segments: 64,
        }
    }

    fn seg(gref: u32, f: u8, l: u8) -> WireSegment {
        WireSegment {
            gref,
            first_sect: f,
            last_sect: l,
        }
    }

    #[test]
    fn layouts_round_trip_every_member() {
        let reqs = [
            WireRequest::rw(BlkifOp::Write, 7, 768, 100, &[seg(9, 0, 7), seg(10, 2, 3)]),
            WireRequest::discard(8, 768, 4096, 1 << 40, true),
            WireRequest::indirect(BlkifOp::Read, 9, 768, 8, 600, &[11, 12]),
            WireRequest::rw(BlkifOp::FlushDiskcache, u64::MAX, 1, 0, &[]),
        ];
        for r in reqs {
            assert_eq!(X86_64::decode_request(&X86_64::encode_request(&r)), r);
            assert_eq!(X86_32::decode_request(&X86_32::encode_request(&r)), r);
        }
        let rsp = WireResponse::new(u64::MAX - 3, 6, BlkifStatus::Eopnotsupp);
        assert_eq!(X86_64::decode_response(&X86_64::encode_response(&rsp)), rsp);
        assert_eq!(X86_32::decode_response(&X86_32::encode_response(&rsp)), rsp);
    }

    #[test]
    fn i386_offsets() {
        // id at offset 4 in the i386 layout, 8 in the amd64 one.
        let r = WireRequest::rw(BlkifOp::Read, 0x1122_3344_5566_7788, 2, 3, &[seg(1, 0, 0)]);
        let b32 = X86_32::encode_request(&r);
        let b64 = X86_64::encode_request(&r);
        assert_eq!(as_bytes(&b32)[4], 0x88);
        assert_eq!(as_bytes(&b64)[8], 0x88);
        assert_eq!(as_bytes(&b64)[4..8], [0; 4], "padding is zero");
        // Indirect: handle at 24 (amd64) / 20 (i386).
        let i = WireRequest::indirect(BlkifOp::Write, 1, 0xabcd, 0, 1, &[5]);
        assert_eq!(as_bytes(&X86_64::encode_request(&i))[24..26], [0xcd, 0xab]);
        assert_eq!(as_bytes(&X86_32::encode_request(&i))[20..22], [0xcd, 0xab]);
    }

    #[test]
    fn responses_are_zero_padded() {
        let r = X86_64::encode_response(&WireResponse::new(1, 1, BlkifStatus::Error));
        let b = as_bytes(&r);
        assert_eq!(b[9], 0);
        assert_eq!(b[12..16], [0; 4]);
    }

    #[test]
    fn parse_checks() {
        let l = lim();
        let ok = WireRequest::rw(BlkifOp::Read, 1, 0, 8, &[seg(1, 0, 7), seg(2, 0, 0)]);
        let p = Request::parse(&ok, &l).unwrap();
        match p.op {
            Operation::Read(d) => {
                assert_eq!(d.sectors, 9);
                assert_eq!(d.segments.count(), 2);
            }
            _ => panic!(),
        }
        let bad = |w: WireRequest| Request::parse(&w, &l).unwrap_err();
        assert!(matches!(
            bad(WireRequest::rw(BlkifOp::Read, 1, 0, 0, &[])),
            Violation::BadSegmentCount { .. }
        ));
        assert!(matches!(
            bad(WireRequest::rw(BlkifOp::Read, 1, 0, 0, &[seg(1, 3, 2)])),
            Violation::BadSegment { .. }
        ));
        assert!(matches!(
            bad(WireRequest::rw(BlkifOp::Read, 1, 0, 0, &[seg(1, 0, 8)])),
            Violation::BadSegment { .. }
        ));
        let e = bad(WireRequest::rw(
            BlkifOp::Write,
            1,
            0,
            u64::MAX,
            &[seg(1, 0, 0)],
        ));
        assert!(matches!(e, Violation::SectorOverflow { .. }) && e.is_fatal());
        let e = bad(WireRequest::rw(
            BlkifOp::Write,
            1,
            0,
            1 << 20,
            &[seg(1, 0, 0)],
        ));
        assert!(matches!(e, Violation::OutOfRange { .. }) && !e.is_fatal());
        let mut w = WireRequest::rw(BlkifOp::Read, 1, 0, 0, &[seg(1, 0, 0)]);
        w.operation = 4;
        assert_eq!(bad(w), Violation::UnknownOperation(4));
        if let WireBody::Rw { nr_segments, .. } = &mut w.body {
            *nr_segments = 12;
        }
        w.operation = 0;
        assert!(matches!(
            bad(w),
            Violation::BadSegmentCount { count: 12, .. }
        ));
        // Flush with no segments is fine; indirect checks.
        assert!(
            Request::parse(&WireRequest::rw(BlkifOp::FlushDiskcache, 1, 0, 0, &[]), &l).is_ok()
        );
        assert_eq!(
            bad(WireRequest::indirect(BlkifOp::Discard, 1, 0, 0, 3, &[1])),
            Violation::BadIndirectOp(5)
        );
        assert!(matches!(
            bad(WireRequest::indirect(BlkifOp::Read, 1, 0, 0, 65, &[1])),
            Violation::BadSegmentCount { count: 65, .. }
        ));
        let no_ind = Limits {
            max_indirect_segments: 0,
            ..l
        };
        assert_eq!(
            Request::parse(
                &WireRequest::indirect(BlkifOp::Read, 1, 0, 0, 3, &[1]),
                &no_ind
            ),
            Err(Violation::IndirectNotNegotiated)
        );
        // 4K logical blocks: alignment.
        let big = Limits {
            sector_size: 4096,
            ..l
        };
        assert!(matches!(
            Request::parse(
                &WireRequest::rw(BlkifOp::Read, 1, 0, 8, &[seg(1, 0, 3)]),
                &big
            ),
            Err(Violation::Misaligned { .. })
        ));
        assert!(Request::parse(
            &WireRequest::rw(BlkifOp::Read, 1, 0, 8, &[seg(1, 0, 7)]),
            &big
        )
        .is_ok());
        // Discard range.
        assert!(matches!(
            bad(WireRequest::discard(1, 0, 1, u64::MAX, false)),
            Violation::SectorOverflow { .. }
        ));
    }

    #[test]
    fn indirect_pages_and_segments() {
        assert_eq!(indirect_pages(1), 1);
        assert_eq!(indirect_pages(512), 1);
        assert_eq!(indirect_pages(513), 2);
        assert_eq!(indirect_pages(4096), 8);
        let segs = [seg(1, 0, 7), seg(2, 1, 1)];
        let mut page = [0u8; PAGE_SIZE];
        encode_indirect_page(&segs, &mut page);
        let mut back = alloc::vec::Vec::new();
        decode_indirect_page(&page, &mut back, 2);
        assert_eq!(back, segs);
        let mut out = alloc::vec::Vec::new();
        assert_eq!(parse_indirect_segments(0, &back, &lim(), &mut out), Ok(9));
        back[1].first_sect = 2;
        assert!(parse_indirect_segments(0, &back, &lim(), &mut out).is_err());
    }

    #[test]
    fn abi_names_and_sizes() {
        assert_eq!(Abi::parse(b"x86_32-abi\0"), Some(Abi::X86_32));
        assert_eq!(Abi::parse(b" x86_64-abi "), Some(Abi::X86_64));
        assert_eq!(Abi::parse(b"arm-abi"), None);
        assert_eq!(Abi::X86_64.entry_size(), 112);
        assert_eq!(Abi::X86_32.entry_size(), 108);
        assert_eq!(Abi::X86_64.ring_entries(0), 32);
        assert_eq!(Abi::X86_32.ring_entries(0), 32);
        assert_eq!(Abi::X86_64.ring_entries(1), 64);
        assert_eq!(parse_bool(b"1\0"), Some(true));
        assert_eq!(parse_bool(b"2"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
    }
}
