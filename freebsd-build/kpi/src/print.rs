//! Kernel console output: `kprintln!` formats into a fixed buffer (no allocation, usable from
//! any context a `printf(9)` is) and prints it with a newline.

use core::ffi::CStr;
use core::fmt;

/// Longest line `kprintln!` prints; longer output is truncated, never split.
pub const LINE_MAX: usize = 256;

/// A NUL-terminated line being formatted; truncates instead of failing.
#[derive(Debug)]
pub struct LineBuf {
    bytes: [u8; LINE_MAX],
    len: usize,
}

impl LineBuf {
    #[must_use]
    pub const fn new() -> LineBuf {
        LineBuf {
            bytes: [0; LINE_MAX],
            len: 0,
        }
    }

    /// The text so far, NUL-terminated. An interior NUL from the formatted values would end the
    /// C string early; it is replaced with `?` as the text is added.
    #[must_use]
    pub fn as_c_str(&self) -> &CStr {
        // The last byte is never written by `write_str`, and bytes past `len` are 0.
        CStr::from_bytes_until_nul(&self.bytes).unwrap_or(c"")
    }

    /// The text so far.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Default for LineBuf {
    fn default() -> Self {
        LineBuf::new()
    }
}

impl fmt::Write for LineBuf {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let room = LINE_MAX - 1 - self.len;
        for &byte in text.as_bytes().iter().take(room) {
            self.bytes[self.len] = if byte == 0 { b'?' } else { byte };
            self.len += 1;
        }
        Ok(())
    }
}

/// Prints an already formatted line.
pub fn print_line(args: fmt::Arguments<'_>) {
    let mut line = LineBuf::new();
    // Writing into a LineBuf never fails; a truncated line is still useful.
    let _ = fmt::write(&mut line, args);
    let _ = fmt::Write::write_str(&mut line, "\n");
    crate::sys::print(line.as_c_str());
}

/// `println!` for the kernel console (see the module docs).
#[macro_export]
macro_rules! kprintln {
    ($($arg:tt)*) => {
        $crate::print::print_line(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn truncates_and_stays_nul_terminated() {
        let mut line = LineBuf::new();
        for _ in 0..100 {
            line.write_str("abcdef").unwrap();
        }
        assert_eq!(line.as_bytes().len(), LINE_MAX - 1);
        assert_eq!(line.as_c_str().to_bytes().len(), LINE_MAX - 1);
    }

    #[test]
    fn interior_nul_does_not_cut_the_line() {
        let mut line = LineBuf::new();
        line.write_str("a\0b").unwrap();
        assert_eq!(line.as_c_str(), c"a?b");
    }
}
