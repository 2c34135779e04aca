//! Network test support: the netfront/netback pair over `xensim` ([`pair`]; its handshake
//! through `xen_xenbus::Bus`: [`bus`]), the cores'
//! platforms and event delivery ([`sim`]), TAP devices with virtio headers ([`tap`]), and the
//! one small unsafe module (ioctls, `setns`: [`sys`]).

pub mod bus;
pub mod pair;
pub mod sim;
pub mod sys;
pub mod tap;

use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace or interface name unique to this process and call: `prefix`, the
/// process id and a per-process counter (both base 36, separated by `_`), so two test or
/// bench runs at once, or two cases of one run, never collide on a fixed name. Interface
/// names are limited to 15 bytes: with a prefix of up to 4 bytes the result always fits
/// (pid ≤ 2^22 is at most 5 digits, the counter at most 4 below 36^4 calls).
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    fn base36(mut v: u32) -> String {
        let mut digits = Vec::new();
        loop {
            digits.push(char::from_digit(v % 36, 36).unwrap_or('0'));
            v /= 36;
            if v == 0 {
                break;
            }
        }
        digits.iter().rev().collect()
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % (36 * 36 * 36 * 36);
    format!("{prefix}{}_{}", base36(std::process::id()), base36(n))
}

#[cfg(test)]
mod tests {
    use super::unique_name;

    #[test]
    fn unique_names_differ_and_fit_an_interface_name() {
        let a = unique_name("xta");
        let b = unique_name("xta");
        assert_ne!(a, b);
        assert!(a.starts_with("xta") && a.len() <= 15, "{a}");
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
    }
}
