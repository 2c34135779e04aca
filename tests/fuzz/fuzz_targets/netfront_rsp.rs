//! A hostile backend against netfront's queue: arbitrary TX and RX responses and indices
//! (body: `xen_netfront::fuzzing::netfront_rsp`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xen_netfront::fuzzing::netfront_rsp(data);
});
