//! blkback against a hostile frontend: arbitrary requests, ring scribbles, grant map/unmap/copy
//! failures and batch aborts, indirect pages, resizes. See `xen_tests::blk::fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xen_tests::blk::fuzz::blkback_ring(data);
});
