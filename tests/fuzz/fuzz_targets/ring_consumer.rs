//! Both ends of an `io/ring.h` ring driven by the input, with a hostile peer writing arbitrary
//! indices and entries (and optionally arbitrary initial memory). See `xen_ring::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xen_ring::fuzzing::ring_consumer(data);
});
