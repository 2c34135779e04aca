//! Node permissions: `n0`, `r5`, `w2`, `b1` (`docs/misc/xenstore.txt`, "Permissions").
//!
//! A node carries a list of [`Perm`]s. The **first** entry names the owner (who may do
//! anything, including changing the permissions) and gives the access of every domain not
//! listed; the following entries are an ACL of per-domain overrides. Dom0 (and the daemon's
//! privileged connections) bypass all of it.

use core::fmt;
use core::str::FromStr;

use crate::error::ProtocolError;

/// A Xen domain id (`domid_t`).
pub type DomId = u16;

/// The access one permission entry grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// `n`: no access.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    /// The wire letter.
    pub fn letter(self) -> u8 {
        match self {
            Access::None => b'n',
            Access::Read => b'r',
            Access::Write => b'w',
            Access::Both => b'b',
        }
    }

    /// Parses a wire letter.
    pub fn from_letter(b: u8) -> Option<Access> {
        match b {
            b'n' => Some(Access::None),
            b'r' => Some(Access::Read),
            b'w' => Some(Access::Write),
            b'b' => Some(Access::Both),
            _ => None,
        }
    }

    /// Does this grant read access?
    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    /// Does this grant write access?
    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// One permission entry: a domain and its access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Perm {
    /// The domain the entry is about.
    pub domid: DomId,
    /// What it may do.
    pub access: Access,
}

impl Perm {
    /// Builds an entry.
    pub const fn new(access: Access, domid: DomId) -> Perm {
        Perm { domid, access }
    }

    /// Parses one entry from peer bytes (no NUL): a letter and 1–5 decimal digits that fit in
    /// a `domid_t`. No sign, no spaces, no overflow.
    pub fn parse(s: &[u8]) -> Result<Perm, ProtocolError> {
        let (&letter, digits) = s.split_first().ok_or(ProtocolError::BadPerm)?;
        let access = Access::from_letter(letter).ok_or(ProtocolError::BadPerm)?;
        let domid = parse_decimal(digits, u32::from(DomId::MAX)).ok_or(ProtocolError::BadPerm)?;
        let domid = DomId::try_from(domid).map_err(|_| ProtocolError::BadPerm)?;
        Ok(Perm { domid, access })
    }

    /// Appends the wire form (`r5`, without NUL) to `out`.
    pub fn encode(&self, out: &mut alloc::vec::Vec<u8>) {
        out.push(self.access.letter());
        push_decimal(out, u64::from(self.domid));
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", char::from(self.access.letter()), self.domid)
    }
}

impl FromStr for Perm {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Perm, ProtocolError> {
        Perm::parse(s.as_bytes())
    }
}

/// Parses an unsigned decimal with no sign, no spaces, 1..=10 digits, at most `max`.
pub(crate) fn parse_decimal(digits: &[u8], max: u32) -> Option<u32> {
    if digits.is_empty() || digits.len() > 10 {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(d - b'0');
    }
    u32::try_from(v).ok().filter(|&v| v <= max)
}

/// Parses an unsigned 64-bit decimal (1..=20 digits, no overflow).
pub(crate) fn parse_decimal_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

/// Appends `v` in decimal.
pub(crate) fn push_decimal(out: &mut alloc::vec::Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        // CAST: v % 10 < 10 fits in u8.
        let digit = (v % 10) as u8;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + digit;
        }
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(buf.get(i..).unwrap_or(&[]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    #[test]
    fn parse_and_print() {
        for (s, p) in [
            ("r0", Perm::new(Access::Read, 0)),
            ("b5", Perm::new(Access::Both, 5)),
            ("n1", Perm::new(Access::None, 1)),
            ("w2", Perm::new(Access::Write, 2)),
            ("n65535", Perm::new(Access::None, 65535)),
        ] {
            assert_eq!(s.parse::<Perm>(), Ok(p));
            assert_eq!(p.to_string(), s);
            let mut v = Vec::new();
            p.encode(&mut v);
            assert_eq!(v, s.as_bytes());
        }
        for bad in [
            "",
            "r",
            "x1",
            "r-1",
            "r+1",
            "r 1",
            "r65536",
            "r99999999999",
            "R1",
            "r1a",
        ] {
            assert_eq!(bad.parse::<Perm>(), Err(ProtocolError::BadPerm), "{bad:?}");
        }
    }

    #[test]
    fn decimal_helpers() {
        let mut v = Vec::new();
        push_decimal(&mut v, u64::MAX);
        assert_eq!(parse_decimal_u64(&v), Some(u64::MAX));
        assert_eq!(parse_decimal_u64(b"18446744073709551616"), None);
        assert_eq!(parse_decimal(b"4294967295", u32::MAX), Some(u32::MAX));
        assert_eq!(parse_decimal(b"4294967296", u32::MAX), None);
        assert_eq!(parse_decimal(b"", u32::MAX), None);
    }
}
