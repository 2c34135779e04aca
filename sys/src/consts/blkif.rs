//! Block device protocol (io/blkif.h).

use super::{xen_enum, xen_flags};

xen_enum! {
    /// `BLKIF_OP_*`: `blkif_request.operation` (`uint8_t`). `BLKIF_OP_RESERVED_1` (4) is
    /// deliberately absent: no peer may send it.
    pub enum BlkifOp: u8 {
        Read = BLKIF_OP_READ,
        Write = BLKIF_OP_WRITE,
        WriteBarrier = BLKIF_OP_WRITE_BARRIER,
        FlushDiskcache = BLKIF_OP_FLUSH_DISKCACHE,
        Discard = BLKIF_OP_DISCARD,
        Indirect = BLKIF_OP_INDIRECT,
    }
}

xen_enum! {
    /// `BLKIF_RSP_*`: `blkif_response.status` (`int16_t`).
    pub enum BlkifStatus: i16 {
        Okay = BLKIF_RSP_OKAY,
        Error = BLKIF_RSP_ERROR,
        /// The operation is not supported (e.g. a barrier or discard the backend cannot do).
        Eopnotsupp = BLKIF_RSP_EOPNOTSUPP,
    }
}

xen_flags! {
    /// `VDISK_*`: the backend's `info` node.
    pub struct VdiskInfo: u32 {
        const CDROM = VDISK_CDROM;
        const REMOVABLE = VDISK_REMOVABLE;
        const READONLY = VDISK_READONLY;
    }
}

xen_flags! {
    /// `blkif_request_discard.flag` (`uint8_t`).
    pub struct BlkifDiscardFlags: u8 {
        /// `discard-secure`: the discarded data must become unrecoverable.
        const SECURE = BLKIF_DISCARD_SECURE;
    }
}

/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: segments in a direct request (`blkif_request.seg`).
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize =
    super::to_usize(crate::x86_64::BLKIF_MAX_SEGMENTS_PER_REQUEST);

/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`: `blkif_request_indirect.indirect_grefs`.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize =
    super::to_usize(crate::x86_64::BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);

/// `XEN_PAGE_SIZE`: the page size of the Xen ABI (4 KiB on x86).
pub const XEN_PAGE_SIZE: usize = 1 << crate::x86_64::XEN_PAGE_SHIFT;

/// `BLKIF_SEGS_PER_INDIRECT_FRAME`: `blkif_request_segment`s in one indirect page (a
/// function-like macro in the header, hence computed here from the struct size).
pub const BLKIF_SEGS_PER_INDIRECT_FRAME: usize =
    XEN_PAGE_SIZE / core::mem::size_of::<crate::x86_64::blkif_request_segment>();

const _: () = {
    use core::mem::size_of;
    // Segments and indirect pages are the same in both layouts.
    assert!(
        size_of::<crate::x86_64::blkif_request_segment>()
            == size_of::<crate::x86_32::blkif_request_segment>()
    );
    assert!(
        super::array_len(|r: &crate::x86_64::blkif_request| &r.seg)
            == BLKIF_MAX_SEGMENTS_PER_REQUEST
    );
    assert!(
        super::array_len(|r: &crate::x86_32::blkif_request| &r.seg)
            == BLKIF_MAX_SEGMENTS_PER_REQUEST
    );
    assert!(
        super::array_len(|r: &crate::x86_64::blkif_request_indirect| &r.indirect_grefs)
            == BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST
    );
    assert!(crate::x86_64::XEN_PAGE_SHIFT == crate::x86_32::XEN_PAGE_SHIFT);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations() {
        assert_eq!(BlkifOp::try_from(0), Ok(BlkifOp::Read));
        assert_eq!(BlkifOp::try_from(6), Ok(BlkifOp::Indirect));
        assert!(BlkifOp::try_from(4).is_err(), "BLKIF_OP_RESERVED_1");
        assert!(BlkifOp::try_from(7).is_err());
        assert_eq!(u8::from(BlkifOp::Discard), 5);
        assert_eq!(BlkifOp::FlushDiskcache.c_name(), "BLKIF_OP_FLUSH_DISKCACHE");
    }

    #[test]
    fn status() {
        assert_eq!(BlkifStatus::Okay.value(), 0);
        assert_eq!(BlkifStatus::try_from(-1), Ok(BlkifStatus::Error));
        assert_eq!(BlkifStatus::try_from(-2), Ok(BlkifStatus::Eopnotsupp));
        assert!(BlkifStatus::try_from(1).is_err());
    }

    #[test]
    fn flags_and_sizes() {
        let info = VdiskInfo::from_bits_retain(4 | 1);
        assert!(info.contains(VdiskInfo::READONLY | VdiskInfo::CDROM));
        assert!(!info.contains(VdiskInfo::REMOVABLE));
        assert_eq!(VdiskInfo::from_bits_truncate(0xff), VdiskInfo::all());
        assert_eq!(BlkifDiscardFlags::SECURE.bits(), 1);
        assert_eq!(BLKIF_MAX_SEGMENTS_PER_REQUEST, 11);
        assert_eq!(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, 8);
        assert_eq!(BLKIF_SEGS_PER_INDIRECT_FRAME, 512);
    }
}
