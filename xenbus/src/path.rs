//! xenstore path rules (`docs/misc/xenstore.txt`, `is_valid_nodename` in xenstored).
//!
//! A path is one of:
//! * **absolute**: `/` or `/` followed by `/`-separated non-empty components, no trailing `/`,
//!   at most [`ABS_PATH_MAX`] bytes;
//! * **relative**: the same without the leading `/`, interpreted by the daemon under the
//!   caller's home `/local/domain/<domid>`, at most [`REL_PATH_MAX`] bytes;
//! * **special** (watches only): `@` followed by a name, e.g. `@introduceDomain`.
//!
//! Every byte is one of `[A-Za-z0-9-/_@]`. Because the rule is pure ASCII, a byte string that
//! passes [`check_path_bytes`] is also valid UTF-8.

use alloc::string::String;

use crate::abi::{ABS_PATH_MAX, REL_PATH_MAX};

/// Which of the three path forms a valid path has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Starts with `/`.
    Absolute,
    /// Relative to the connection's home directory.
    Relative,
    /// `@name`, valid only as a watch path.
    Special,
}

/// `@introduceDomain`: fired when a domain is introduced to the daemon.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// `@releaseDomain`: fired when a domain dies or is released.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

fn valid_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@')
}

/// Checks a path given as bytes (peer input). `allow_special` admits `@name` (watch paths).
pub fn check_path_bytes(p: &[u8], allow_special: bool) -> Option<PathKind> {
    if p.is_empty() || !p.iter().all(|&b| valid_char(b)) {
        return None;
    }
    if p.windows(2).any(|w| w == b"//") {
        return None;
    }
    match p.first() {
        Some(b'@') => {
            // A special path is a single component: "@name".
            if !allow_special || p.len() < 2 || p.len() > ABS_PATH_MAX || p.contains(&b'/') {
                return None;
            }
            Some(PathKind::Special)
        }
        Some(b'/') => {
            if p.len() > ABS_PATH_MAX || (p.len() > 1 && p.ends_with(b"/")) {
                return None;
            }
            Some(PathKind::Absolute)
        }
        _ => {
            if p.len() > REL_PATH_MAX || p.ends_with(b"/") {
                return None;
            }
            Some(PathKind::Relative)
        }
    }
}

/// Checks a path given by our caller. See [`check_path_bytes`].
pub fn check_path(p: &str, allow_special: bool) -> Option<PathKind> {
    check_path_bytes(p.as_bytes(), allow_special)
}

/// Checks one node name (a directory entry): non-empty, valid characters, no `/`.
pub fn check_name_bytes(n: &[u8]) -> bool {
    !n.is_empty() && n.len() <= ABS_PATH_MAX && n.iter().all(|&b| valid_char(b) && b != b'/')
}

/// True when `path` is `base` or lies below it. Both are taken as given (same form); `/` is
/// the ancestor of every absolute path.
pub fn is_within(path: &str, base: &str) -> bool {
    if path == base {
        return true;
    }
    if base == "/" {
        return path.starts_with('/');
    }
    path.len() > base.len()
        && path.starts_with(base)
        && path.as_bytes().get(base.len()) == Some(&b'/')
}

/// `base/name`, without doubling the `/` when `base` is the root.
pub fn join(base: &str, name: &str) -> String {
    let mut s = String::with_capacity(base.len() + 1 + name.len());
    s.push_str(base);
    if !base.ends_with('/') {
        s.push('/');
    }
    s.push_str(name);
    s
}

/// The parent of an absolute path (`/a/b` → `/a`, `/a` → `/`); `None` for `/` and for paths
/// without a `/`.
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => path.get(..i),
        None => None,
    }
}

/// The last component of a path (`/a/b` → `b`).
pub fn basename(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => path.get(i + 1..).unwrap_or(""),
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_forms() {
        assert_eq!(check_path("/", false), Some(PathKind::Absolute));
        assert_eq!(
            check_path("/local/domain/0", false),
            Some(PathKind::Absolute)
        );
        assert_eq!(
            check_path("device/vbd/768", false),
            Some(PathKind::Relative)
        );
        assert_eq!(check_path("@releaseDomain", true), Some(PathKind::Special));
        assert_eq!(check_path("@releaseDomain", false), None);
        for bad in [
            "", "/a/", "a/", "/a//b", "/a b", "/a\0b", "/ä", "@", "@a/b", "a\n",
        ] {
            assert_eq!(check_path(bad, true), None, "{bad:?}");
        }
        let long = alloc::format!("/{}", "a".repeat(ABS_PATH_MAX - 1));
        assert_eq!(check_path(&long, false), Some(PathKind::Absolute));
        let too_long = alloc::format!("/{}", "a".repeat(ABS_PATH_MAX));
        assert_eq!(check_path(&too_long, false), None);
        assert_eq!(check_path(&"a".repeat(REL_PATH_MAX + 1), false), None);
    }

    #[test]
    fn names_and_helpers() {
        assert!(check_name_bytes(b"vbd"));
        assert!(!check_name_bytes(b""));
        assert!(!check_name_bytes(b"a/b"));
        assert!(is_within("/a/b", "/a"));
        assert!(is_within("/a", "/a"));
        assert!(!is_within("/ab", "/a"));
        assert!(is_within("/x", "/"));
        assert!(is_within("a/b", "a"));
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(basename("/a/b"), "b");
    }
}
