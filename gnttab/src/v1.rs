//! Grant table v1: the entry layout, its flag bits, and the per-entry status codes.
//!
//! A v1 entry (`grant_entry_v1_t` in Xen's `public/grant_table.h`) is 8 bytes:
//!
//! | offset | field   | written by                                            |
//! |--------|---------|-------------------------------------------------------|
//! | 0      | `flags` | the granting guest (type, `GTF_readonly`); Xen (`GTF_reading`, `GTF_writing`) |
//! | 2      | `domid` | the granting guest                                    |
//! | 4      | `frame` | the granting guest (the granted page's GFN)           |
//!
//! `flags` and `domid` together are the 32-bit word at offset 0 (x86 is little-endian:
//! `flags` in the low half). Xen updates `flags` with a 32-bit compare-exchange of that whole
//! word (`_set_status_v1` in `xen/common/grant_table.c`), so the guest's own compare-exchange
//! of the same word (to end access) is atomic with respect to Xen's and the two can never
//! interleave half-way: either our exchange sees `GTF_reading`/`GTF_writing`, or Xen's
//! exchange fails and it re-reads a revoked entry.
use xen_sys::native as abi;

#[cfg(not(target_endian = "little"))]
compile_error!("grant entries are accessed as little-endian 32-bit words (x86 only)");

/// Bytes in a page and in a grant frame.
pub const PAGE_SIZE: usize = 4096;

/// Size of one v1 entry.
pub const ENTRY_SIZE: usize = 8;

/// Entries per grant frame (512).
// CAST: 4096 / 8 fits any integer type.
#[expect(clippy::cast_possible_truncation)]
pub const ENTRIES_PER_FRAME: u32 = (PAGE_SIZE / ENTRY_SIZE) as u32;

/// References `0..8` are reserved: Xen's toolstack uses 0 for the console and 1 for xenstore
/// (`GNTTAB_RESERVED_CONSOLE`, `GNTTAB_RESERVED_XENSTORE`) and keeps the rest for future use.
/// The allocator never hands them out.
pub const RESERVED_REFS: u32 = abi::GNTTAB_NR_RESERVED_ENTRIES;

/// `DOMID_SELF`: "the calling domain" in grant copy and query operations.
pub const DOMID_SELF: u16 = 0x7ff0;

// CAST (whole block): the GTF_*/GNTMAP_* values are small bit masks from the header; the
// entry's flags field is 16 bits.
/// `GTF_permit_access`: the entry grants access to `frame` to `domid`.
#[expect(clippy::cast_possible_truncation)]
pub const GTF_PERMIT_ACCESS: u16 = abi::GTF_permit_access as u16;
/// `GTF_type_mask`: the two type bits.
#[expect(clippy::cast_possible_truncation)]
pub const GTF_TYPE_MASK: u16 = abi::GTF_type_mask as u16;
/// `GTF_readonly`: the grantee may only map/copy from the frame.
#[expect(clippy::cast_possible_truncation)]
pub const GTF_READONLY: u16 = abi::GTF_readonly as u16;
/// `GTF_reading`: set by Xen while the grantee has the frame mapped (or is copying from it).
#[expect(clippy::cast_possible_truncation)]
pub const GTF_READING: u16 = abi::GTF_reading as u16;
/// `GTF_writing`: set by Xen while the grantee has the frame mapped writable (or copies to it).
#[expect(clippy::cast_possible_truncation)]
pub const GTF_WRITING: u16 = abi::GTF_writing as u16;

/// `GNTMAP_host_map`.
pub const GNTMAP_HOST_MAP: u32 = abi::GNTMAP_host_map;
/// `GNTMAP_readonly`.
pub const GNTMAP_READONLY: u32 = abi::GNTMAP_readonly;
/// `GNTMAP_device_map`.
pub const GNTMAP_DEVICE_MAP: u32 = abi::GNTMAP_device_map;
/// `GNTCOPY_source_gref`.
#[expect(clippy::cast_possible_truncation)]
pub const GNTCOPY_SOURCE_GREF: u16 = abi::GNTCOPY_source_gref as u16;
/// `GNTCOPY_dest_gref`.
#[expect(clippy::cast_possible_truncation)]
pub const GNTCOPY_DEST_GREF: u16 = abi::GNTCOPY_dest_gref as u16;

/// A frame number as `xen_pfn_t` (`unsigned long`: 64 bits on x86_64, 32 on i386), if it fits.
#[cfg(target_arch = "x86_64")]
#[must_use]
pub fn to_pfn(frame: u64) -> Option<abi::xen_pfn_t> {
    Some(frame)
}

/// A frame number as `xen_pfn_t` (`unsigned long`: 64 bits on x86_64, 32 on i386), if it fits.
#[cfg(not(target_arch = "x86_64"))]
#[must_use]
pub fn to_pfn(frame: u64) -> Option<abi::xen_pfn_t> {
    abi::xen_pfn_t::try_from(frame).ok()
}

/// A `xen_pfn_t` widened to 64 bits.
#[cfg(target_arch = "x86_64")]
#[must_use]
pub fn from_pfn(pfn: abi::xen_pfn_t) -> u64 {
    pfn
}

/// A `xen_pfn_t` widened to 64 bits.
#[cfg(not(target_arch = "x86_64"))]
#[must_use]
pub fn from_pfn(pfn: abi::xen_pfn_t) -> u64 {
    u64::from(pfn)
}

/// Packs the first word of an entry.
#[must_use]
pub const fn entry_word0(flags: u16, domid: u16) -> u32 {
    (flags as u32) | ((domid as u32) << 16)
}

/// Unpacks the first word of an entry into `(flags, domid)`.
#[must_use]
pub const fn split_word0(word: u32) -> (u16, u16) {
    // CAST: the two halves of the word.
    #[expect(clippy::cast_possible_truncation)]
    let r = (word as u16, (word >> 16) as u16);
    r
}

/// `(frame index, word index of the entry's first word within the frame)` of reference `r`.
#[must_use]
pub const fn locate(r: u32) -> (usize, usize) {
    (
        (r / ENTRIES_PER_FRAME) as usize,
        (r % ENTRIES_PER_FRAME) as usize * 2,
    )
}

/// A per-entry grant operation status (`GNTST_*`). Xen writes it; [`GntStatus::from_raw`]
/// accepts every `i16`, so no value can make us panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GntStatus {
    /// `GNTST_okay`.
    Okay,
    /// `GNTST_general_error`: bad flags or domain in the entry, write to a read-only grant,
    /// an unstable entry...
    GeneralError,
    /// `GNTST_bad_domain`: no such (live) domain.
    BadDomain,
    /// `GNTST_bad_gntref`: reference out of the granter's table.
    BadGntref,
    /// `GNTST_bad_handle`: no such mapping handle.
    BadHandle,
    /// `GNTST_bad_virt_addr`: unusable host address.
    BadVirtAddr,
    /// `GNTST_bad_dev_addr`.
    BadDevAddr,
    /// `GNTST_no_device_space`: out of mapping handles.
    NoDeviceSpace,
    /// `GNTST_permission_denied`.
    PermissionDenied,
    /// `GNTST_bad_page`: the granted frame is not a usable page of the granter.
    BadPage,
    /// `GNTST_bad_copy_arg`: copy beyond the page.
    BadCopyArg,
    /// `GNTST_address_too_big`.
    AddressTooBig,
    /// `GNTST_eagain`: the frame is paged out; retrying later may succeed.
    Eagain,
    /// `GNTST_no_space`.
    NoSpace,
    /// A value this code does not know.
    Unknown(i16),
}

impl GntStatus {
    /// The status for a raw `status` field.
    #[must_use]
    pub const fn from_raw(raw: i16) -> GntStatus {
        match raw {
            0 => GntStatus::Okay,
            -1 => GntStatus::GeneralError,
            -2 => GntStatus::BadDomain,
            -3 => GntStatus::BadGntref,
            -4 => GntStatus::BadHandle,
            -5 => GntStatus::BadVirtAddr,
            -6 => GntStatus::BadDevAddr,
            -7 => GntStatus::NoDeviceSpace,
            -8 => GntStatus::PermissionDenied,
            -9 => GntStatus::BadPage,
            -10 => GntStatus::BadCopyArg,
            -11 => GntStatus::AddressTooBig,
            -12 => GntStatus::Eagain,
            -13 => GntStatus::NoSpace,
            other => GntStatus::Unknown(other),
        }
    }

    /// The raw `GNTST_*` value.
    #[must_use]
    pub const fn to_raw(self) -> i16 {
        match self {
            GntStatus::Okay => 0,
            GntStatus::GeneralError => -1,
            GntStatus::BadDomain => -2,
            GntStatus::BadGntref => -3,
            GntStatus::BadHandle => -4,
            GntStatus::BadVirtAddr => -5,
            GntStatus::BadDevAddr => -6,
            GntStatus::NoDeviceSpace => -7,
            GntStatus::PermissionDenied => -8,
            GntStatus::BadPage => -9,
            GntStatus::BadCopyArg => -10,
            GntStatus::AddressTooBig => -11,
            GntStatus::Eagain => -12,
            GntStatus::NoSpace => -13,
            GntStatus::Unknown(v) => v,
        }
    }

    /// Whether this is `GNTST_okay`.
    #[must_use]
    pub const fn is_ok(self) -> bool {
        matches!(self, GntStatus::Okay)
    }

    /// Whether retrying the same operation later may succeed (`GNTST_eagain`).
    #[must_use]
    pub const fn is_transient(self) -> bool {
        matches!(self, GntStatus::Eagain)
    }
}

// The header's values, checked at compile time against the table above.
const _: () = {
    // CAST: GNTST_* are small negative numbers (GNTST_okay is emitted as u32 0).
    #[expect(clippy::cast_possible_truncation)]
    const fn g(v: i32) -> i16 {
        v as i16
    }
    assert!(abi::GNTST_okay == 0);
    assert!(GntStatus::GeneralError.to_raw() == g(abi::GNTST_general_error));
    assert!(GntStatus::BadDomain.to_raw() == g(abi::GNTST_bad_domain));
    assert!(GntStatus::BadGntref.to_raw() == g(abi::GNTST_bad_gntref));
    assert!(GntStatus::BadHandle.to_raw() == g(abi::GNTST_bad_handle));
    assert!(GntStatus::BadVirtAddr.to_raw() == g(abi::GNTST_bad_virt_addr));
    assert!(GntStatus::BadDevAddr.to_raw() == g(abi::GNTST_bad_dev_addr));
    assert!(GntStatus::NoDeviceSpace.to_raw() == g(abi::GNTST_no_device_space));
    assert!(GntStatus::PermissionDenied.to_raw() == g(abi::GNTST_permission_denied));
    assert!(GntStatus::BadPage.to_raw() == g(abi::GNTST_bad_page));
    assert!(GntStatus::BadCopyArg.to_raw() == g(abi::GNTST_bad_copy_arg));
    assert!(GntStatus::AddressTooBig.to_raw() == g(abi::GNTST_address_too_big));
    assert!(GntStatus::Eagain.to_raw() == g(abi::GNTST_eagain));
    assert!(GntStatus::NoSpace.to_raw() == g(abi::GNTST_no_space));
    assert!(ENTRIES_PER_FRAME == 512);
    assert!(core::mem::size_of::<abi::grant_entry_v1>() == ENTRY_SIZE);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_roundtrip_every_value() {
        for raw in i16::MIN..=i16::MAX {
            assert_eq!(GntStatus::from_raw(raw).to_raw(), raw);
        }
    }

    #[test]
    fn word0_layout() {
        assert_eq!(
            entry_word0(GTF_PERMIT_ACCESS | GTF_READONLY, 7),
            0x0007_0005
        );
        assert_eq!(split_word0(0x0007_0005), (5, 7));
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(513), (1, 2));
    }
}
