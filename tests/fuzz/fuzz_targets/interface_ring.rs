//! A writer and a reader on one direction of a xenstore/console interface page, with a hostile
//! peer writing arbitrary indices and data. See `xen_ring::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xen_ring::fuzzing::interface_ring(data);
});
