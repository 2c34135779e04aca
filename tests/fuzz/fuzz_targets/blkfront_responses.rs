//! blkfront against a hostile backend: arbitrary responses (ids, operations, statuses),
//! ring scribbles, grants kept mapped or released at will. See `xen_tests::blk::fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xen_tests::blk::fuzz::blkfront_responses(data);
});
