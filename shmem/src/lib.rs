//! Peer-writable memory accessors.
#![no_std]

/// Plain old data: a type every bit pattern of which is a valid value, with no padding that could
/// carry uninitialised bytes, no pointers, no references, no `bool`/`char`/enums.
///
/// Only `Pod` types may be copied in and out of memory a Xen peer can write.
///
/// # Safety
/// Implementors guarantee that any byte sequence of `size_of::<Self>()` bytes is a valid value
/// of `Self`, and that `Self` has no interior mutability.
pub unsafe trait Pod: Copy + 'static {}
