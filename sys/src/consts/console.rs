//! PV console ring (io/console.h). Its sizes are array lengths in the header, not macros:
//! they are read from the generated struct.

/// Bytes of the `in` ring (backend to frontend) of `xencons_interface`.
pub const XENCONS_IN_SIZE: usize = super::array_len(|i: &crate::x86_64::xencons_interface| &i.in_);

/// Bytes of the `out` ring (frontend to backend) of `xencons_interface`.
pub const XENCONS_OUT_SIZE: usize = super::array_len(|i: &crate::x86_64::xencons_interface| &i.out);

const _: () = {
    assert!(XENCONS_IN_SIZE == super::array_len(|i: &crate::x86_32::xencons_interface| &i.in_));
    assert!(XENCONS_OUT_SIZE == super::array_len(|i: &crate::x86_32::xencons_interface| &i.out));
    // MASK_XENCONS_IDX relies on power-of-two sizes.
    assert!(XENCONS_IN_SIZE.is_power_of_two() && XENCONS_OUT_SIZE.is_power_of_two());
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes() {
        assert_eq!((XENCONS_IN_SIZE, XENCONS_OUT_SIZE), (1024, 2048));
    }
}
