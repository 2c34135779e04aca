//! The frontend's unit of work: a [`Bio`] (what GEOM hands a disk driver), its buffer
//! segments, and its [`Completion`].
//!
//! Split-phase (Tock's rules): [`crate::Frontend::submit`] returning `Ok` means exactly one
//! [`Completion`] will be produced for the bio (by [`crate::Frontend::pop_completion`]);
//! `Err` hands the bio back untouched with the reason. A completion is never produced inside
//! `submit`.

use alloc::vec::Vec;
use core::fmt;

use xen_blkback::proto::{PAGE_SIZE, SECTOR_SIZE};
use xen_shmem::SharedMem;

/// What a bio asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BioOp {
    /// Read into the segments.
    Read,
    /// Write the segments.
    Write,
    /// Write with barrier semantics (FreeBSD `BIO_ORDERED`): earlier writes first, later
    /// ones after. Uses `BLKIF_OP_WRITE_BARRIER`.
    Barrier,
    /// Commit completed writes to stable storage (`BIO_FLUSH`).
    Flush,
    /// Discard `sectors` sectors (`BIO_DELETE`).
    Discard {
        /// Secure erase.
        secure: bool,
    },
}

/// One piece of a bio's buffer: part of one page of ours.
#[derive(Debug, Clone, Copy)]
pub struct BufSeg<'a> {
    /// The page's guest frame number (granted directly to a trusted backend).
    pub gfn: u64,
    /// The whole page.
    pub page: SharedMem<'a>,
    /// Byte offset within the page (a multiple of 512).
    pub offset: u16,
    /// Bytes (a multiple of 512, at least 512, not beyond the page).
    pub len: u16,
}

impl BufSeg<'_> {
    /// Sectors covered.
    #[must_use]
    pub fn sectors(&self) -> u64 {
        u64::from(self.len) / SECTOR_SIZE as u64
    }

    /// Whether offset and length are sector multiples within one page.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        let (o, l) = (usize::from(self.offset), usize::from(self.len));
        l > 0
            && o % SECTOR_SIZE == 0
            && l % SECTOR_SIZE == 0
            && o + l <= PAGE_SIZE
            && self.page.len() >= PAGE_SIZE
    }

    /// `first_sect` of the segment descriptor.
    #[must_use]
    pub fn first_sect(&self) -> u8 {
        u8::try_from(usize::from(self.offset) / SECTOR_SIZE).unwrap_or(u8::MAX)
    }

    /// `last_sect` of the segment descriptor.
    #[must_use]
    pub fn last_sect(&self) -> u8 {
        let end = (usize::from(self.offset) + usize::from(self.len)) / SECTOR_SIZE;
        u8::try_from(end.saturating_sub(1)).unwrap_or(u8::MAX)
    }
}

/// A block I/O.
#[derive(Debug, Clone)]
pub struct Bio<'a> {
    /// The operation.
    pub op: BioOp,
    /// First 512-byte sector.
    pub sector: u64,
    /// Sectors to discard (discard only; reads and writes take their length from `segs`).
    pub sectors: u64,
    /// The buffer, in order (reads, writes and barriers).
    pub segs: Vec<BufSeg<'a>>,
    /// The caller's cookie.
    pub tag: u64,
}

impl<'a> Bio<'a> {
    /// A read or write of `segs` at `sector`.
    #[must_use]
    pub fn new(op: BioOp, sector: u64, segs: Vec<BufSeg<'a>>, tag: u64) -> Self {
        Bio {
            op,
            sector,
            sectors: 0,
            segs,
            tag,
        }
    }

    /// A flush.
    #[must_use]
    pub fn flush(tag: u64) -> Self {
        Bio {
            op: BioOp::Flush,
            sector: 0,
            sectors: 0,
            segs: Vec::new(),
            tag,
        }
    }

    /// A discard.
    #[must_use]
    pub fn discard(sector: u64, sectors: u64, secure: bool, tag: u64) -> Self {
        Bio {
            op: BioOp::Discard { secure },
            sector,
            sectors,
            segs: Vec::new(),
            tag,
        }
    }

    /// Sectors the bio covers.
    #[must_use]
    pub fn len_sectors(&self) -> u64 {
        match self.op {
            BioOp::Discard { .. } => self.sectors,
            BioOp::Flush => 0,
            _ => self.segs.iter().map(BufSeg::sectors).sum(),
        }
    }
}

/// Why a bio failed or was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BioError {
    /// The backend answered `BLKIF_RSP_ERROR` (EIO).
    Io,
    /// Not supported by this backend (`BLKIF_RSP_EOPNOTSUPP`, or the feature is absent).
    NotSupported,
    /// The device is read-only (EROFS).
    ReadOnly,
    /// Malformed: misaligned or empty segments, zero length (EINVAL).
    Invalid,
    /// Beyond the end of the device (EIO in GEOM terms; kept apart for callers).
    OutOfRange,
    /// Too many bios queued (EBUSY; retry later).
    Busy,
    /// The device failed (backend protocol violation) or was removed (ENXIO).
    Failed,
}

impl fmt::Display for BioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BioError::Io => "I/O error",
            BioError::NotSupported => "not supported",
            BioError::ReadOnly => "read-only device",
            BioError::Invalid => "invalid request",
            BioError::OutOfRange => "beyond the end of the device",
            BioError::Busy => "queue full",
            BioError::Failed => "device failed",
        })
    }
}

/// A finished bio.
#[derive(Debug)]
pub struct Completion<'a> {
    /// The bio, handed back; its pages are no longer shared with the backend.
    pub bio: Bio<'a>,
    /// Its outcome.
    pub result: Result<(), BioError>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_shmem::Page;

    #[test]
    fn segments_map_to_descriptors() {
        let page = Page::new();
        let mem = SharedMem::from_pages(core::slice::from_ref(&page));
        let s = |offset, len| BufSeg {
            gfn: 1,
            page: mem,
            offset,
            len,
        };
        let a = s(1024, 2048);
        assert!(a.is_valid());
        assert_eq!((a.first_sect(), a.last_sect(), a.sectors()), (2, 5, 4));
        assert!(s(0, 4096).is_valid());
        for bad in [s(0, 0), s(100, 512), s(512, 100), s(3584, 1024)] {
            assert!(!bad.is_valid(), "{bad:?}");
        }
        let bio = Bio::new(BioOp::Write, 8, alloc::vec![a, s(0, 4096)], 7);
        assert_eq!(bio.len_sectors(), 12);
        assert_eq!(Bio::discard(0, 99, true, 1).len_sectors(), 99);
        assert_eq!(Bio::flush(1).len_sectors(), 0);
    }
}
