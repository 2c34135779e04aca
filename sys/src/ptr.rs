//! Guest pointers with a fixed width.
//!
//! Xen's public structures carry pointers (`XEN_GUEST_HANDLE(T)` is `struct { T *p; }`, the
//! private `*_front_ring` structs point at their shared ring). A Rust raw pointer has the
//! *compile target's* size, which is wrong for the bindings of the other width. The
//! generated code therefore uses [`Ptr64<T>`] in [`crate::x86_64`] and [`Ptr32<T>`] in
//! [`crate::x86_32`] (each module calls it `GuestPtr<T>`):
//!
//! * when the width is the compile target's, the handle *is* a `*mut T` (transparent), and
//!   [`Ptr64::from_ptr`]/[`Ptr64::as_ptr`] convert to and from it;
//! * otherwise it is a `u64`/`u32` holding the guest address: it can be read, written and
//!   compared, never dereferenced.
//!
//! Either way the type has the size of the width's pointer, so every struct that embeds it
//! has the layout of that width.

use core::fmt;
use core::hash::{Hash, Hasher};
use core::marker::PhantomData;

macro_rules! guest_ptr {
    (
        $(#[$meta:meta])*
        $name:ident, $addr:ty, $native_width:literal
    ) => {
        $(#[$meta])*
        #[repr(transparent)]
        pub struct $name<T> {
            #[cfg(target_pointer_width = $native_width)]
            raw: *mut T,
            #[cfg(not(target_pointer_width = $native_width))]
            raw: $addr,
            _pointee: PhantomData<*mut T>,
        }

        impl<T> $name<T> {
            /// The null handle (address 0).
            #[must_use]
            pub const fn null() -> Self {
                Self {
                    #[cfg(target_pointer_width = $native_width)]
                    raw: core::ptr::null_mut(),
                    #[cfg(not(target_pointer_width = $native_width))]
                    raw: 0,
                    _pointee: PhantomData,
                }
            }

            /// Whether the address is 0.
            #[must_use]
            pub fn is_null(self) -> bool {
                self.addr() == 0
            }

            /// A handle holding the guest address `addr`.
            ///
            /// On the native width the resulting pointer takes the provenance exposed for
            /// `addr`, if any (see [`core::ptr::with_exposed_provenance_mut`]); it is meant to
            /// be handed to Xen, not dereferenced.
            #[must_use]
            #[allow(
                clippy::cast_possible_truncation,
                reason = "usize has exactly this width when the pointer is native"
            )]
            pub fn from_addr(addr: $addr) -> Self {
                Self {
                    #[cfg(target_pointer_width = $native_width)]
                    // CAST: the target's pointer width is the width of `$addr`: lossless.
                    raw: core::ptr::with_exposed_provenance_mut(addr as usize),
                    #[cfg(not(target_pointer_width = $native_width))]
                    raw: addr,
                    _pointee: PhantomData,
                }
            }

            /// The guest address held (exposing the provenance of a native pointer).
            #[must_use]
            #[allow(
                clippy::cast_possible_truncation,
                reason = "usize has exactly this width when the pointer is native"
            )]
            pub fn addr(self) -> $addr {
                #[cfg(target_pointer_width = $native_width)]
                {
                    // CAST: the target's pointer width is the width of `$addr`: lossless.
                    self.raw.expose_provenance() as $addr
                }
                #[cfg(not(target_pointer_width = $native_width))]
                {
                    self.raw
                }
            }

            /// Wraps a native pointer. Only on targets of this width.
            #[cfg(target_pointer_width = $native_width)]
            #[must_use]
            pub const fn from_ptr(ptr: *mut T) -> Self {
                Self {
                    raw: ptr,
                    _pointee: PhantomData,
                }
            }

            /// Wraps a native const pointer (Xen's `const` handles). Only on targets of this
            /// width.
            #[cfg(target_pointer_width = $native_width)]
            #[must_use]
            pub const fn from_const_ptr(ptr: *const T) -> Self {
                Self::from_ptr(ptr.cast_mut())
            }

            /// The native pointer. Only on targets of this width.
            #[cfg(target_pointer_width = $native_width)]
            #[must_use]
            pub const fn as_ptr(self) -> *mut T {
                self.raw
            }
        }

        #[cfg(target_pointer_width = $native_width)]
        impl<T> From<*mut T> for $name<T> {
            fn from(ptr: *mut T) -> Self {
                Self::from_ptr(ptr)
            }
        }

        #[cfg(target_pointer_width = $native_width)]
        impl<T> From<*const T> for $name<T> {
            fn from(ptr: *const T) -> Self {
                Self::from_const_ptr(ptr)
            }
        }

        // Manual impls: derives would needlessly require `T: Clone`, `T: Debug`, ...
        impl<T> Clone for $name<T> {
            fn clone(&self) -> Self {
                *self
            }
        }

        impl<T> Copy for $name<T> {}

        impl<T> Default for $name<T> {
            fn default() -> Self {
                Self::null()
            }
        }

        impl<T> PartialEq for $name<T> {
            fn eq(&self, other: &Self) -> bool {
                self.addr() == other.addr()
            }
        }

        impl<T> Eq for $name<T> {}

        impl<T> Hash for $name<T> {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.addr().hash(state);
            }
        }

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.addr())
            }
        }
    };
}

guest_ptr! {
    /// A pointer in the x86_64 layout: 8 bytes. `*mut T` on 64-bit targets, `u64` elsewhere.
    Ptr64, u64, "64"
}

guest_ptr! {
    /// A pointer in the x86_32 layout: 4 bytes. `*mut T` on 32-bit targets, `u32` elsewhere.
    Ptr32, u32, "32"
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn sizes_are_the_widths() {
        assert_eq!(size_of::<Ptr64<u8>>(), 8);
        assert_eq!(size_of::<Ptr32<u8>>(), 4);
        assert_eq!(align_of::<Ptr32<u64>>(), 4);
    }

    #[test]
    fn null_and_addresses_round_trip() {
        assert!(Ptr64::<u8>::null().is_null());
        assert!(Ptr32::<u8>::default().is_null());
        assert_eq!(
            Ptr64::<u8>::from_addr(0x1234_5678_9abc).addr(),
            0x1234_5678_9abc
        );
        assert_eq!(Ptr32::<u8>::from_addr(0xdead_beef).addr(), 0xdead_beef);
        assert_eq!(Ptr32::<u8>::from_addr(7), Ptr32::from_addr(7));
        assert_ne!(Ptr32::<u8>::from_addr(7), Ptr32::from_addr(8));
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn native_pointer_round_trips() {
        let mut x = 5u32;
        let p = Ptr64::from_ptr(&raw mut x);
        assert_eq!(p.as_ptr(), &raw mut x);
        assert_eq!(usize::try_from(p.addr()).ok(), Some((&raw mut x).addr()));
    }
}
