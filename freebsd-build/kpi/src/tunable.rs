//! Loader tunables (`/boot/loader.conf`, kenv(1)): strict parsing with errors that say what was
//! wrong.
//!
//! FreeBSD's `getenv_int()` family silently ignores a malformed value; a typo in loader.conf
//! then looks like the tunable "not working". Here every value is parsed by a pure function
//! (unit-tested on the host), and the glue logs a bad value with its name and the reason before
//! falling back to the default, so a bad loader.conf never stops the machine from booting.
//!
//! Numbers follow `getenv_quad()`'s syntax: decimal, `0x` hexadecimal or leading-`0` octal,
//! optionally followed by one of the binary suffixes `k`, `m`, `g`, `t` (either case).

use core::fmt;

/// Why a tunable's value was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunableError {
    /// The value is the empty string.
    Empty,
    /// A character that cannot be part of the number or its suffix.
    InvalidDigit { at: usize },
    /// The value does not fit 64 bits.
    Overflow,
    /// A number, but outside what this tunable allows.
    OutOfRange { min: u64, max: u64 },
    /// A boolean tunable that is not `0`/`1`/`yes`/`no`/`true`/`false`/`on`/`off`.
    NotABoolean,
    /// A word that is not one of the tunable's choices.
    NotAChoice { choices: &'static [&'static str] },
    /// Longer than the kernel environment allows (`KENV_MVALLEN`).
    TooLong,
}

impl fmt::Display for TunableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunableError::Empty => write!(f, "empty value"),
            TunableError::InvalidDigit { at } => write!(f, "not a number (bad character at {at})"),
            TunableError::Overflow => write!(f, "number too large"),
            TunableError::OutOfRange { min, max } => {
                write!(f, "out of range (allowed: {min}..={max})")
            }
            TunableError::NotABoolean => write!(f, "not a boolean (use 0 or 1)"),
            TunableError::NotAChoice { choices } => {
                write!(f, "not one of ")?;
                for (i, choice) in choices.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}\"{choice}\"")?;
                }
                Ok(())
            }
            TunableError::TooLong => write!(f, "value too long"),
        }
    }
}

/// Parses an unsigned number with `getenv_quad()`'s syntax (see the module docs).
///
/// # Errors
/// [`TunableError::Empty`], [`TunableError::InvalidDigit`] or [`TunableError::Overflow`].
pub fn parse_u64(text: &str) -> Result<u64, TunableError> {
    let text = text.trim_matches(|c: char| c == ' ' || c == '\t');
    if text.is_empty() {
        return Err(TunableError::Empty);
    }
    let bytes = text.as_bytes();
    let (radix, start) = if bytes.len() > 2 && (text.starts_with("0x") || text.starts_with("0X")) {
        (16, 2)
    } else if bytes.len() > 1 && bytes[0] == b'0' && bytes[1].is_ascii_digit() {
        (8, 1)
    } else {
        (10, 0)
    };
    let mut value: u64 = 0;
    let mut end = start;
    while let Some(digit) = bytes.get(end).and_then(|&b| char::from(b).to_digit(radix)) {
        value = value
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(digit)))
            .ok_or(TunableError::Overflow)?;
        end += 1;
    }
    if end == start {
        return Err(TunableError::InvalidDigit { at: start });
    }
    let shift = match bytes.get(end) {
        None => return Ok(value),
        Some(b'k' | b'K') => 10,
        Some(b'm' | b'M') => 20,
        Some(b'g' | b'G') => 30,
        Some(b't' | b'T') => 40,
        Some(_) => return Err(TunableError::InvalidDigit { at: end }),
    };
    if end + 1 != bytes.len() {
        return Err(TunableError::InvalidDigit { at: end + 1 });
    }
    value
        .checked_mul(1u64 << shift)
        .ok_or(TunableError::Overflow)
}

/// [`parse_u64`] limited to `min..=max`.
///
/// # Errors
/// As [`parse_u64`], and [`TunableError::OutOfRange`].
pub fn parse_u64_in(text: &str, min: u64, max: u64) -> Result<u64, TunableError> {
    let value = parse_u64(text)?;
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(TunableError::OutOfRange { min, max })
    }
}

/// A boolean: `1`/`0` as FreeBSD's `getenv_bool()`, and the words `yes`/`no`, `true`/`false`,
/// `on`/`off` in any case.
///
/// # Errors
/// [`TunableError::NotABoolean`] (for example for `2` or `enabled`).
pub fn parse_bool(text: &str) -> Result<bool, TunableError> {
    let text = text.trim_matches(|c: char| c == ' ' || c == '\t');
    let is = |words: &[&str]| words.iter().any(|w| text.eq_ignore_ascii_case(w));
    if is(&["1", "yes", "true", "on"]) {
        Ok(true)
    } else if is(&["0", "no", "false", "off"]) {
        Ok(false)
    } else {
        Err(TunableError::NotABoolean)
    }
}

/// The index of `text` in `choices` (compared without case).
///
/// # Errors
/// [`TunableError::NotAChoice`], listing the choices.
pub fn parse_choice(text: &str, choices: &'static [&'static str]) -> Result<usize, TunableError> {
    let text = text.trim_matches(|c: char| c == ' ' || c == '\t');
    choices
        .iter()
        .position(|choice| choice.eq_ignore_ascii_case(text))
        .ok_or(TunableError::NotAChoice { choices })
}

/// `KENV_MVALLEN` from `<sys/kenv.h>`: the longest value the kernel environment holds.
pub const KENV_MVALLEN: usize = 128;

/// A tunable's raw text, copied out of the kernel environment.
#[derive(Clone)]
pub struct TunableText {
    bytes: [u8; KENV_MVALLEN],
    len: usize,
}

impl TunableText {
    /// Copies `value`; `None` when it is longer than the kernel environment allows.
    #[must_use]
    pub fn new(value: &[u8]) -> Option<TunableText> {
        let mut bytes = [0; KENV_MVALLEN];
        bytes.get_mut(..value.len())?.copy_from_slice(value);
        Some(TunableText {
            bytes,
            len: value.len(),
        })
    }

    /// The text, or `Err` when it is not UTF-8 (reported as a bad character).
    ///
    /// # Errors
    /// [`TunableError::InvalidDigit`] at the first byte that is not UTF-8.
    pub fn as_str(&self) -> Result<&str, TunableError> {
        core::str::from_utf8(&self.bytes[..self.len]).map_err(|error| TunableError::InvalidDigit {
            at: error.valid_up_to(),
        })
    }
}

impl fmt::Debug for TunableText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str().unwrap_or("<not UTF-8>"))
    }
}

/// Reads tunable `name` from the kernel environment: `Ok(None)` when it is not set.
///
/// # Errors
/// [`TunableError::TooLong`] for a value over [`KENV_MVALLEN`] bytes.
pub fn fetch(name: &core::ffi::CStr) -> Result<Option<TunableText>, TunableError> {
    let value = crate::sys::getenv(name, TunableText::new);
    match value {
        None => Ok(None),
        Some(None) => Err(TunableError::TooLong),
        Some(Some(text)) => Ok(Some(text)),
    }
}

/// Reads tunable `name` and parses it with `parse`; logs a rejected value (its name, the text
/// and why) prefixed with `module`, and returns `default` then, as when it is unset.
pub fn get<T: Copy>(
    module: &str,
    name: &core::ffi::CStr,
    default: T,
    parse: impl FnOnce(&str) -> Result<T, TunableError>,
) -> T {
    let shown = name.to_str().unwrap_or("?");
    let text = match fetch(name) {
        Ok(None) => return default,
        Ok(Some(text)) => text,
        Err(error) => {
            crate::kprintln!("{module}: loader tunable {shown}: {error}; using the default");
            return default;
        }
    };
    match text.as_str().and_then(parse) {
        Ok(value) => value,
        Err(error) => {
            crate::kprintln!(
                "{module}: loader tunable {shown}={text:?}: {error}; using the default"
            );
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_getenv_quad_syntax() {
        assert_eq!(parse_u64("42"), Ok(42));
        assert_eq!(parse_u64(" 42 "), Ok(42));
        assert_eq!(parse_u64("0x1F"), Ok(31));
        assert_eq!(parse_u64("010"), Ok(8));
        assert_eq!(parse_u64("0"), Ok(0));
        assert_eq!(parse_u64("4k"), Ok(4096));
        assert_eq!(parse_u64("2M"), Ok(2 << 20));
        assert_eq!(parse_u64("1g"), Ok(1 << 30));
        assert_eq!(parse_u64("1T"), Ok(1 << 40));
    }

    #[test]
    fn bad_numbers_say_why() {
        assert_eq!(parse_u64(""), Err(TunableError::Empty));
        assert_eq!(parse_u64("abc"), Err(TunableError::InvalidDigit { at: 0 }));
        assert_eq!(parse_u64("12x"), Err(TunableError::InvalidDigit { at: 2 }));
        assert_eq!(parse_u64("4kb"), Err(TunableError::InvalidDigit { at: 2 }));
        assert_eq!(parse_u64("-1"), Err(TunableError::InvalidDigit { at: 0 }));
        assert_eq!(parse_u64("0x"), Err(TunableError::InvalidDigit { at: 1 }));
        assert_eq!(parse_u64("09"), Err(TunableError::InvalidDigit { at: 1 }));
        assert_eq!(
            parse_u64("18446744073709551616"),
            Err(TunableError::Overflow)
        );
        assert_eq!(parse_u64("17179869184g"), Err(TunableError::Overflow));
        assert_eq!(
            parse_u64_in("5", 0, 2),
            Err(TunableError::OutOfRange { min: 0, max: 2 })
        );
        assert_eq!(parse_u64_in("2", 0, 2), Ok(2));
    }

    #[test]
    fn booleans_and_choices() {
        assert_eq!(parse_bool("1"), Ok(true));
        assert_eq!(parse_bool("No"), Ok(false));
        assert_eq!(parse_bool("2"), Err(TunableError::NotABoolean));
        const CHOICES: &[&str] = &["auto", "vector", "pci"];
        assert_eq!(parse_choice("PCI", CHOICES), Ok(2));
        let error = parse_choice("msi", CHOICES).unwrap_err();
        extern crate std;
        use std::string::ToString;
        assert_eq!(
            error.to_string(),
            "not one of \"auto\", \"vector\", \"pci\""
        );
    }

    #[test]
    fn text_is_bounded_and_utf8_checked() {
        assert!(TunableText::new(&[b'1'; KENV_MVALLEN]).is_some());
        assert!(TunableText::new(&[b'1'; KENV_MVALLEN + 1]).is_none());
        let text = TunableText::new(b"1\xff").unwrap();
        assert_eq!(text.as_str(), Err(TunableError::InvalidDigit { at: 1 }));
    }
}
