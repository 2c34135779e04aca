//! A hostile frontend against netback's queue: arbitrary TX slots and extras, ring indices,
//! grant-copy failures, RX traffic (body: `xen_netback::fuzzing::netback_tx`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xen_netback::fuzzing::netback_tx(data);
});
