//! [`xen_shmem::Pod`] for the protocol structs that are plain old data, and the sizes the
//! protocols depend on.
//!
//! A type here is `Pod` when all its fields are integers or arrays of integers (no
//! `GuestPtr`, no `bool`, no enums) and — checked at compile time through [`FieldBytes`] —
//! it has no implicit padding: bindgen's `explicit_padding` turns every gap of a struct into
//! a `__bindgen_padding_N` field, so copying a value out copies only initialised bytes. The
//! few types whose union members do not all cover the whole union are listed separately and
//! documented: reading them from a peer is sound, but a value built in Rust by writing one
//! member leaves the other bytes uninitialised, so builders must start from a zeroed value
//! (the ring/response builders zero whole slots).

use core::mem::size_of;

use static_assertions::const_assert_eq;
use xen_shmem::Pod;

use crate::{x86_32, x86_64};

/// Implemented by the build script for every generated struct and union.
///
/// `FIELD_BYTES` is the sum of the sizes of a struct's fields (explicit padding fields
/// included), or the size of a union's *smallest* member. It equals `size_of::<Self>()`
/// exactly when no byte of a value can be left uninitialised by field-wise construction,
/// i.e. when the type has no implicit padding.
pub trait FieldBytes {
    /// See the trait documentation.
    const FIELD_BYTES: usize;
}

/// Whether `T` has bytes that belong to no field (see [`FieldBytes`]).
#[must_use]
pub const fn has_implicit_padding<T: FieldBytes>() -> bool {
    T::FIELD_BYTES != size_of::<T>()
}

/// `min` usable in the generated constant expressions.
#[doc(hidden)]
#[must_use]
pub const fn min(a: usize, b: usize) -> usize {
    if a < b {
        a
    } else {
        b
    }
}

/// `unsafe impl Pod` for types proven padding-free at compile time.
macro_rules! pod {
    ($($width:ident :: $ty:ident),+ $(,)?) => {$(
        const _: () = assert!(
            !has_implicit_padding::<$width::$ty>(),
            concat!(stringify!($width), "::", stringify!($ty), " has implicit padding")
        );
        // SAFETY: see the group's comment at the call site; the assertion above proves that
        // every byte of the type belongs to an integer field.
        unsafe impl Pod for $width::$ty {}
    )+};
}

// SAFETY (all groups below): every field of these types is an integer, an array of
// integers, or a struct/union of such (no pointers, `bool`, `char` or enums), so every bit
// pattern is a valid value; none has interior mutability; they are `Copy + 'static`.

// io/blkif.h: requests, responses, segments (both layouts; they differ in size).
pod! {
    x86_64::blkif_request_segment, x86_64::blkif_request, x86_64::blkif_request_discard,
    x86_64::blkif_request_indirect, x86_64::blkif_response,
    x86_32::blkif_request_segment, x86_32::blkif_request, x86_32::blkif_request_discard,
    x86_32::blkif_request_indirect, x86_32::blkif_response,
}

// io/netif.h: tx/rx requests and responses, extra info (its union members are all 6 bytes).
pod! {
    x86_64::netif_tx_request, x86_64::netif_tx_response, x86_64::netif_rx_request,
    x86_64::netif_rx_response, x86_64::netif_extra_info,
    x86_32::netif_tx_request, x86_32::netif_tx_response, x86_32::netif_rx_request,
    x86_32::netif_rx_response, x86_32::netif_extra_info,
}

// io/console.h, xs_wire.h: the interface pages and the xenstore message header.
pod! {
    x86_64::xencons_interface, x86_64::xenstore_domain_interface, x86_64::xsd_sockmsg,
    x86_32::xencons_interface, x86_32::xenstore_domain_interface, x86_32::xsd_sockmsg,
}

// grant_table.h (v1 entry, v2 header), event_channel.h (FIFO control block), xen.h (time,
// vcpu_info, shared_info).
pod! {
    x86_64::grant_entry_v1, x86_64::grant_entry_header, x86_64::evtchn_fifo_control_block,
    x86_64::vcpu_time_info, x86_64::arch_vcpu_info, x86_64::vcpu_info,
    x86_64::arch_shared_info, x86_64::shared_info,
    x86_32::grant_entry_v1, x86_32::grant_entry_header, x86_32::evtchn_fifo_control_block,
    x86_32::vcpu_time_info, x86_32::arch_vcpu_info, x86_32::vcpu_info,
    x86_32::arch_shared_info, x86_32::shared_info,
}

// hvm/start_info.h: the PVH start-of-day structures.
pod! {
    x86_64::hvm_start_info, x86_64::hvm_modlist_entry, x86_64::hvm_memmap_table_entry,
    x86_32::hvm_start_info, x86_32::hvm_modlist_entry, x86_32::hvm_memmap_table_entry,
}

/// `grant_entry_v2` is a union whose members do not all cover its 16 bytes (the header is
/// 4, a transitive grant 12): reading one from the grant table is sound, a value built in
/// Rust from a smaller member is not fully initialised. Build entries from
/// `Default::default()` (zeroed) or write their fields in place.
const _: () = assert!(has_implicit_padding::<x86_64::grant_entry_v2>());
// SAFETY: as for the groups above (integer fields only); padding documented above.
unsafe impl Pod for x86_64::grant_entry_v2 {}
const _: () = assert!(has_implicit_padding::<x86_32::grant_entry_v2>());
// SAFETY: as for the groups above (integer fields only); padding documented above.
unsafe impl Pod for x86_32::grant_entry_v2 {}

// Sizes the protocols depend on (each checked against gcc by tests/layout.rs as well).
const_assert_eq!(size_of::<x86_64::blkif_request_segment>(), 8);
const_assert_eq!(size_of::<x86_32::blkif_request_segment>(), 8);
const_assert_eq!(size_of::<x86_64::blkif_request>(), 112);
const_assert_eq!(size_of::<x86_32::blkif_request>(), 108);
const_assert_eq!(core::mem::offset_of!(x86_64::blkif_request, seg), 24);
const_assert_eq!(core::mem::offset_of!(x86_32::blkif_request, seg), 20);
const_assert_eq!(size_of::<x86_64::blkif_request_discard>(), 32);
const_assert_eq!(size_of::<x86_32::blkif_request_discard>(), 28);
const_assert_eq!(size_of::<x86_64::blkif_request_indirect>(), 64);
// i386 appends an explicit `uint64_t pad` so that both layouts are 64 bytes.
const_assert_eq!(size_of::<x86_32::blkif_request_indirect>(), 64);
const_assert_eq!(size_of::<x86_64::blkif_response>(), 16);
const_assert_eq!(size_of::<x86_32::blkif_response>(), 12);
const_assert_eq!(size_of::<x86_64::blkif_sring_entry>(), 112);
const_assert_eq!(size_of::<x86_32::blkif_sring_entry>(), 108);
const_assert_eq!(size_of::<x86_64::netif_tx_request>(), 12);
const_assert_eq!(size_of::<x86_64::netif_tx_response>(), 4);
const_assert_eq!(size_of::<x86_64::netif_rx_request>(), 8);
const_assert_eq!(size_of::<x86_64::netif_rx_response>(), 8);
const_assert_eq!(size_of::<x86_64::netif_extra_info>(), 8);
const_assert_eq!(size_of::<x86_32::netif_tx_request>(), 12);
const_assert_eq!(size_of::<x86_32::netif_extra_info>(), 8);
const_assert_eq!(size_of::<x86_64::xencons_interface>(), 1024 + 2048 + 16);
const_assert_eq!(
    size_of::<x86_64::xenstore_domain_interface>(),
    2 * 1024 + 16 + 12
);
const_assert_eq!(
    size_of::<x86_32::xenstore_domain_interface>(),
    2 * 1024 + 16 + 12
);
const_assert_eq!(size_of::<x86_64::xsd_sockmsg>(), 16);
const_assert_eq!(size_of::<x86_64::grant_entry_v1>(), 8);
const_assert_eq!(size_of::<x86_64::grant_entry_v2>(), 16);
const_assert_eq!(size_of::<x86_32::grant_entry_v2>(), 16);
const_assert_eq!(size_of::<x86_64::evtchn_fifo_control_block>(), 72);
const_assert_eq!(size_of::<x86_64::vcpu_time_info>(), 32);
const_assert_eq!(size_of::<x86_32::vcpu_time_info>(), 32);
const_assert_eq!(size_of::<x86_64::vcpu_info>(), 64);
const_assert_eq!(size_of::<x86_32::vcpu_info>(), 64);
const_assert_eq!(size_of::<x86_64::shared_info>(), 3136);
const_assert_eq!(size_of::<x86_32::shared_info>(), 2344);
const_assert_eq!(size_of::<x86_64::gnttab_copy>(), 40);
const_assert_eq!(size_of::<x86_32::gnttab_copy>(), 24);
const_assert_eq!(size_of::<x86_64::hvm_start_info>(), 56);
const_assert_eq!(size_of::<x86_32::hvm_start_info>(), 56);
const_assert_eq!(size_of::<x86_64::hvm_modlist_entry>(), 32);
const_assert_eq!(size_of::<x86_64::hvm_memmap_table_entry>(), 24);

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_pod<T: Pod>() {}

    #[test]
    fn protocol_structs_are_pod() {
        assert_pod::<x86_64::blkif_request>();
        assert_pod::<x86_32::blkif_response>();
        assert_pod::<x86_64::netif_extra_info>();
        assert_pod::<x86_32::xsd_sockmsg>();
        assert_pod::<x86_64::grant_entry_v2>();
    }

    #[test]
    fn field_bytes() {
        // blkif_request_segment: gref (4) + first_sect + last_sect + explicit 2-byte pad.
        assert_eq!(
            <x86_64::blkif_request_segment as FieldBytes>::FIELD_BYTES,
            8
        );
        assert!(!has_implicit_padding::<x86_32::blkif_request>());
        // The shared ring entry union: a response leaves most of the slot unwritten.
        assert!(has_implicit_padding::<x86_64::blkif_sring_entry>());
        assert_eq!(
            <x86_64::blkif_sring_entry as FieldBytes>::FIELD_BYTES,
            size_of::<x86_64::blkif_response>()
        );
        assert_eq!(min(3, 2), 2);
    }
}
