//! Grant tables (grant_table.h): operations, entry flags, map/copy flags, status codes.

use super::{xen_enum, xen_flags};

xen_enum! {
    /// `GNTTABOP_*` commands of `HYPERVISOR_grant_table_op`.
    pub enum GnttabOp: u32 {
        MapGrantRef = GNTTABOP_map_grant_ref,
        UnmapGrantRef = GNTTABOP_unmap_grant_ref,
        SetupTable = GNTTABOP_setup_table,
        DumpTable = GNTTABOP_dump_table,
        Transfer = GNTTABOP_transfer,
        Copy = GNTTABOP_copy,
        QuerySize = GNTTABOP_query_size,
        UnmapAndReplace = GNTTABOP_unmap_and_replace,
        SetVersion = GNTTABOP_set_version,
        GetStatusFrames = GNTTABOP_get_status_frames,
        GetVersion = GNTTABOP_get_version,
        SwapGrantRef = GNTTABOP_swap_grant_ref,
        CacheFlush = GNTTABOP_cache_flush,
    }
}

xen_enum! {
    /// The type field of a grant entry's flags (`flags & GTF_type_mask`).
    pub enum GrantType: u16 {
        Invalid = GTF_invalid,
        PermitAccess = GTF_permit_access,
        AcceptTransfer = GTF_accept_transfer,
        /// Grant table v2 only.
        Transitive = GTF_transitive,
    }
}

impl GrantType {
    /// `GTF_type_mask`.
    pub const MASK: u16 = super::conv::u16(crate::x86_64::GTF_type_mask as i64);

    /// The type of a grant entry's `flags`.
    #[must_use]
    pub const fn of(flags: u16) -> Self {
        match Self::from_value(flags & Self::MASK) {
            Some(t) => t,
            // All four values of the two-bit field are variants.
            None => Self::Invalid,
        }
    }
}

xen_flags! {
    /// The flag bits of a grant entry (`grant_entry_v1.flags`, `grant_entry_header.flags`)
    /// for `GTF_permit_access` / `GTF_transitive` grants. The type bits are [`GrantType`].
    pub struct GrantFlags: u16 {
        const READONLY = GTF_readonly;
        /// Set by Xen while the peer has the frame mapped for reading.
        const READING = GTF_reading;
        /// Set by Xen while the peer has the frame mapped for writing.
        const WRITING = GTF_writing;
        const PWT = GTF_PWT;
        const PCD = GTF_PCD;
        const PAT = GTF_PAT;
        /// v2: the grant covers only part of the page.
        const SUB_PAGE = GTF_sub_page;
    }
}

xen_flags! {
    /// The flag bits of a `GTF_accept_transfer` grant entry (they reuse the bits of
    /// `GTF_readonly` and `GTF_reading`).
    pub struct GrantTransferFlags: u16 {
        const COMMITTED = GTF_transfer_committed;
        const COMPLETED = GTF_transfer_completed;
    }
}

impl GrantFlags {
    /// A grant entry's `flags` for type `ty` with these flags.
    #[must_use]
    pub const fn with_type(self, ty: GrantType) -> u16 {
        self.bits() | ty.value()
    }
}

xen_flags! {
    /// `GNTMAP_*`: `gnttab_map_grant_ref.flags` / `gnttab_unmap_grant_ref`.
    pub struct GntMapFlags: u32 {
        const DEVICE_MAP = GNTMAP_device_map;
        const HOST_MAP = GNTMAP_host_map;
        const READONLY = GNTMAP_readonly;
        const APPLICATION_MAP = GNTMAP_application_map;
        const CONTAINS_PTE = GNTMAP_contains_pte;
    }
}

/// `_GNTMAP_guest_avail0`: first of the bits of `GNTMAP` flags left to the guest.
pub const GNTMAP_GUEST_AVAIL_SHIFT: u32 = crate::x86_64::_GNTMAP_guest_avail0;

xen_flags! {
    /// `GNTCOPY_*`: `gnttab_copy.flags`: which side is named by a grant reference (else by
    /// a frame number of the caller).
    pub struct GntCopyFlags: u16 {
        const SOURCE_GREF = GNTCOPY_source_gref;
        const DEST_GREF = GNTCOPY_dest_gref;
    }
}

xen_enum! {
    /// `GNTST_*`: the `status` (`int16_t`) of each grant-table operation.
    pub enum GntStatus: i16 {
        Okay = GNTST_okay,
        GeneralError = GNTST_general_error,
        BadDomain = GNTST_bad_domain,
        BadGntref = GNTST_bad_gntref,
        BadHandle = GNTST_bad_handle,
        BadVirtAddr = GNTST_bad_virt_addr,
        BadDevAddr = GNTST_bad_dev_addr,
        NoDeviceSpace = GNTST_no_device_space,
        PermissionDenied = GNTST_permission_denied,
        BadPage = GNTST_bad_page,
        BadCopyArg = GNTST_bad_copy_arg,
        AddressTooBig = GNTST_address_too_big,
        /// Transient: retry the operation.
        Eagain = GNTST_eagain,
        NoSpace = GNTST_no_space,
    }
}

impl GntStatus {
    /// Whether the operation succeeded.
    #[must_use]
    pub const fn is_ok(self) -> bool {
        matches!(self, Self::Okay)
    }
}

/// `GNTTAB_NR_RESERVED_ENTRIES`: grant references 0..8 are reserved for the toolstack.
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = crate::x86_64::GNTTAB_NR_RESERVED_ENTRIES;
/// `GNTTAB_RESERVED_CONSOLE`: the grant reference of the console ring page.
pub const GNTTAB_RESERVED_CONSOLE: u32 = crate::x86_64::GNTTAB_RESERVED_CONSOLE;
/// `GNTTAB_RESERVED_XENSTORE`: the grant reference of the xenstore ring page.
pub const GNTTAB_RESERVED_XENSTORE: u32 = crate::x86_64::GNTTAB_RESERVED_XENSTORE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_entry_flags() {
        let flags = GrantFlags::READONLY.with_type(GrantType::PermitAccess);
        assert_eq!(flags, 1 | 4);
        assert_eq!(GrantType::of(flags), GrantType::PermitAccess);
        assert_eq!(GrantType::of(0x18), GrantType::Invalid);
        assert_eq!(GrantType::of(3), GrantType::Transitive);
        let busy = GrantFlags::from_bits_truncate(0x18 | 1);
        assert_eq!(busy, GrantFlags::READING | GrantFlags::WRITING);
        assert_eq!(
            GrantTransferFlags::COMMITTED.bits(),
            GrantFlags::READONLY.bits()
        );
        assert_eq!(GrantType::MASK, 3);
    }

    #[test]
    fn map_and_copy_flags() {
        let f = GntMapFlags::HOST_MAP | GntMapFlags::READONLY;
        assert_eq!(f.bits(), 2 | 4);
        assert_eq!(GntCopyFlags::all().bits(), 3);
        assert_eq!(GNTMAP_GUEST_AVAIL_SHIFT, 16);
    }

    #[test]
    fn operations_and_status() {
        assert_eq!(GnttabOp::Copy.value(), 5);
        assert_eq!(GnttabOp::try_from(9), Ok(GnttabOp::GetStatusFrames));
        assert!(GnttabOp::try_from(13).is_err());
        assert_eq!(GntStatus::try_from(0), Ok(GntStatus::Okay));
        assert_eq!(GntStatus::try_from(-12), Ok(GntStatus::Eagain));
        assert!(GntStatus::try_from(-14).is_err());
        assert!(GntStatus::Okay.is_ok() && !GntStatus::BadPage.is_ok());
        for &s in GntStatus::ALL {
            assert!(s.value() <= 0);
        }
        assert_eq!((GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE), (0, 1));
    }
}
