//! Output: Xen's debug port (always) and, once attached, the PV console ring.
//!
//! Xen prints debug-port bytes line by line as `(dN) ...` on its own console when booted with
//! `guest_loglvl=all`; the harness reads the `RESULT` lines from there, so they reach it even
//! if the console ring or xenconsoled is what failed.

use core::fmt::{self, Write};

use crate::arch;

struct E9;

impl Write for E9 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        arch::debug_write(s.as_bytes());
        Ok(())
    }
}

/// Formats to the debug port.
pub fn e9_fmt(args: fmt::Arguments<'_>) {
    let _ = E9.write_fmt(args);
}

/// `println!` to the debug port.
#[macro_export]
macro_rules! e9 {
    ($($arg:tt)*) => {
        $crate::log::e9_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}
