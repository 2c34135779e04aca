//! Typed views of the constants of Xen's public headers.
//!
//! Every value here is taken *from* the generated bindings (`crate::x86_64::FOO`), never
//! retyped, so the types cannot drift from the headers; each one is also checked, at compile
//! time, to be equal in [`crate::x86_32`] and to fit the width of the ABI field that carries
//! it (e.g. `blkif_request.operation` is a `u8`, `blkif_response.status` an `i16`).
//!
//! * Values that are one of a set are `enum`s with `TryFrom<repr>` (error: [`UnknownValue`]),
//!   `From<Enum> for repr`, `ALL`, `c_name()`.
//! * Flags that combine are [`bitflags`] types; unknown bits are kept by `from_bits_retain`
//!   and dropped by `from_bits_truncate`, as the protocol requires.
//!
//! Only the constants are typed here; the ABI structs keep their C field types.

use core::fmt;

pub mod blkif;
pub mod console;
pub mod evtchn;
pub mod grant;
pub mod hypercall;
pub mod netif;
pub mod xenstore;

pub use blkif::{BlkifDiscardFlags, BlkifOp, BlkifStatus, VdiskInfo};
pub use evtchn::{EvtchnFifoWord, EvtchnOp, EvtchnStatus, Virq};
pub use grant::{
    GntCopyFlags, GntMapFlags, GntStatus, GnttabOp, GrantFlags, GrantTransferFlags, GrantType,
};
pub use hypercall::{
    HvmCallbackType, HvmMemmapType, HvmOp, HvmParam, Hypercall, SchedOp, ShutdownReason,
    StartInfoFlags, VcpuOp, XenErrno, XenFeature, XenMapSpace, XenMemOp, XenVer,
};
pub use netif::{
    NetRxFlags, NetTxFlags, NetifExtraFlags, NetifExtraType, NetifGsoType, NetifStatus,
};
pub use xenstore::{XenbusState, XsError, XsType};

/// A value that none of the variants of an enum of this module has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnknownValue<T> {
    /// The enum's name.
    pub kind: &'static str,
    /// The value received.
    pub value: T,
}

impl<T: fmt::Display> fmt::Display for UnknownValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} value {}", self.kind, self.value)
    }
}

impl<T: fmt::Debug + fmt::Display> core::error::Error for UnknownValue<T> {}

/// Compile-time checked conversions of header constants (which bindgen types `u32`, `i32`
/// or an enum alias of `u32`) to the width of the ABI field that carries them. Used only in
/// constant contexts, where a failed assertion is a compile error.
mod conv {
    #![allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "each cast is preceded by a range assertion"
    )]

    macro_rules! conv {
        ($($t:ident),*) => {$(
            pub(crate) const fn $t(v: i64) -> $t {
                assert!(
                    v >= $t::MIN as i64 && v <= $t::MAX as i64,
                    concat!("header constant out of range for ", stringify!($t))
                );
                // CAST: in range, checked above.
                v as $t
            }
        )*};
    }

    conv!(u8, u16, u32, i16);
}

/// Defines an enum whose discriminants are header constants.
macro_rules! xen_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $konst:ident, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr($repr)]
        pub enum $name {
            $(
                $(#[$vmeta])*
                #[doc = concat!("`", stringify!($konst), "`")]
                $variant = $crate::consts::conv::$repr($crate::x86_64::$konst as i64),
            )+
        }

        // Both widths' headers agree on every value.
        const _: () = {
            $(
                assert!(
                    $crate::x86_64::$konst as i64 == $crate::x86_32::$konst as i64,
                    concat!(stringify!($konst), " differs between x86_64 and x86_32")
                );
            )+
        };

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The value on the wire / in the hypercall argument.
            #[must_use]
            pub const fn value(self) -> $repr {
                self as $repr
            }

            /// The variant with this value, if any.
            #[must_use]
            pub const fn from_value(value: $repr) -> Option<Self> {
                $(
                    if value == Self::$variant as $repr {
                        return Some(Self::$variant);
                    }
                )+
                None
            }

            /// The C name of the constant.
            #[must_use]
            pub const fn c_name(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($konst),)+
                }
            }
        }

        impl TryFrom<$repr> for $name {
            type Error = $crate::consts::UnknownValue<$repr>;

            fn try_from(value: $repr) -> Result<Self, $crate::consts::UnknownValue<$repr>> {
                Self::from_value(value).ok_or($crate::consts::UnknownValue {
                    kind: stringify!($name),
                    value,
                })
            }
        }

        impl From<$name> for $repr {
            fn from(v: $name) -> $repr {
                v.value()
            }
        }
    };
}

/// Defines a `bitflags` type whose flags are header constants.
macro_rules! xen_flags {
    (
        $(#[$meta:meta])*
        pub struct $name:ident: $repr:ident {
            $( $(#[$($fmeta:tt)*])* const $flag:ident = $konst:ident; )+
        }
    ) => {
        bitflags::bitflags! {
            $(#[$meta])*
            #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
            pub struct $name: $repr {
                $(
                    $(#[$($fmeta)*])*
                    #[doc = concat!("`", stringify!($konst), "`")]
                    const $flag = $crate::consts::conv::$repr($crate::x86_64::$konst as i64);
                )+
            }
        }

        const _: () = {
            $(
                assert!(
                    $crate::x86_64::$konst as i64 == $crate::x86_32::$konst as i64,
                    concat!(stringify!($konst), " differs between x86_64 and x86_32")
                );
            )+
        };
    };
}

pub(crate) use {xen_enum, xen_flags};

/// Length `N` of the array field selected by `field` (`|s: &S| &s.field`), at compile time.
pub(crate) const fn array_len<S, T, const N: usize>(_field: fn(&S) -> &[T; N]) -> usize {
    N
}

/// `u32` header constant as `usize`, at compile time.
pub(crate) const fn to_usize(v: u32) -> usize {
    // CAST: usize is at least 32 bits on every target this crate supports (x86, x86_64).
    v as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_value_displays_kind_and_value() {
        let e = BlkifOp::try_from(200u8).unwrap_err();
        assert_eq!(
            e,
            UnknownValue {
                kind: "BlkifOp",
                value: 200
            }
        );
        let mut buf = [0u8; 64];
        let mut w = Buf(&mut buf, 0);
        fmt::write(&mut w, format_args!("{e}")).unwrap();
        assert_eq!(&w.0[..w.1], b"unknown BlkifOp value 200");
    }

    struct Buf<'a>(&'a mut [u8], usize);

    impl fmt::Write for Buf<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.1 + s.len();
            self.0
                .get_mut(self.1..end)
                .ok_or(fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.1 = end;
            Ok(())
        }
    }
}
