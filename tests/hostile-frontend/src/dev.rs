//! The frontend's xenstore side: finding our device, reading the backend's nodes, writing our
//! own, and waiting (by polling, with a deadline) for the backend's state.

use std::thread::sleep;
use std::time::{Duration, Instant};

use xen_xenbus::{Store, Xs};

use crate::os::XenbusDev;

/// `XenbusStateInitialising`.
pub const INITIALISING: u32 = 1;
/// `XenbusStateInitWait`.
pub const INIT_WAIT: u32 = 2;
/// `XenbusStateInitialised`.
pub const INITIALISED: u32 = 3;
/// `XenbusStateConnected`.
pub const CONNECTED: u32 = 4;
/// `XenbusStateClosing`.
pub const CLOSING: u32 = 5;
/// `XenbusStateClosed`.
pub const CLOSED: u32 = 6;

/// A state's name, for logs.
#[must_use]
pub fn state_name(s: u32) -> &'static str {
    match s {
        INITIALISING => "Initialising",
        INIT_WAIT => "InitWait",
        INITIALISED => "Initialised",
        CONNECTED => "Connected",
        CLOSING => "Closing",
        CLOSED => "Closed",
        _ => "Unknown",
    }
}

/// Parses a node's value as a decimal number (surrounding blanks and NULs tolerated).
#[must_use]
pub fn parse_num(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    s.trim_matches(|c: char| c == '\0' || c.is_ascii_whitespace())
        .parse()
        .ok()
}

/// Our device: the frontend directory (ours) and the backend's.
#[derive(Debug)]
pub struct Dev {
    /// xenstore.
    pub xs: Xs<XenbusDev>,
    /// `/local/domain/<us>/device/<class>/<id>`.
    pub fe: String,
    /// The backend directory (from our `backend` node).
    pub be: String,
    /// The backend's domain.
    pub be_id: u16,
}

impl Dev {
    /// Finds device `class` (`vbd`, `vif`) number `id`, or the first one.
    ///
    /// # Errors
    /// No such device, or its `backend`/`backend-id` nodes are missing or malformed.
    pub fn find(mut xs: Xs<XenbusDev>, class: &str, id: Option<&str>) -> Result<Dev, String> {
        let domid = xs
            .read("domid")
            .ok()
            .and_then(|v| parse_num(&v))
            .ok_or("cannot read our domid")?;
        let dir = format!("/local/domain/{domid}/device/{class}");
        let id = match id {
            Some(id) => id.to_string(),
            None => xs
                .directory(&dir)
                .map_err(|e| format!("{dir}: {e}"))?
                .into_iter()
                .next()
                .ok_or_else(|| format!("no device in {dir}"))?,
        };
        let fe = format!("{dir}/{id}");
        let be = xs
            .read_string(&format!("{fe}/backend"))
            .map_err(|e| format!("{fe}/backend: {e}"))?;
        let be_id = xs
            .read(&format!("{fe}/backend-id"))
            .ok()
            .and_then(|v| parse_num(&v))
            .and_then(|v| u16::try_from(v).ok())
            .ok_or_else(|| format!("{fe}/backend-id missing or malformed"))?;
        Ok(Dev { xs, fe, be, be_id })
    }

    /// Writes `key` = `value` in our directory.
    ///
    /// # Errors
    /// The store's error, as text.
    pub fn write(&mut self, key: &str, value: &str) -> Result<(), String> {
        let path = format!("{}/{key}", self.fe);
        self.xs
            .write_str(&path, value)
            .map_err(|e| format!("write {path}: {e}"))
    }

    /// Removes `key` from our directory (absent already is fine: best effort).
    pub fn remove(&mut self, key: &str) {
        let _ = self.xs.rm(&format!("{}/{key}", self.fe));
    }

    /// Writes our `state`.
    ///
    /// # Errors
    /// The store's error, as text.
    pub fn set_state(&mut self, s: u32) -> Result<(), String> {
        self.write("state", &s.to_string())
    }

    /// A backend node, as text (`None` when absent or unreadable).
    pub fn be_read(&mut self, key: &str) -> Option<String> {
        let v = self.xs.read(&format!("{}/{key}", self.be)).ok()?;
        Some(
            String::from_utf8_lossy(&v)
                .trim_end_matches('\0')
                .to_string(),
        )
    }

    /// The backend's state (0 when absent or malformed).
    pub fn be_state(&mut self) -> u32 {
        self.be_read("state")
            .and_then(|v| parse_num(v.as_bytes()))
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0)
    }

    /// Polls the backend's state every 20 ms until `done` accepts it or `timeout` passes;
    /// returns the last state seen and whether `done` accepted it.
    pub fn wait_be(&mut self, timeout: Duration, done: impl Fn(u32) -> bool) -> (u32, bool) {
        let start = Instant::now();
        loop {
            let s = self.be_state();
            if done(s) {
                return (s, true);
            }
            if start.elapsed() >= timeout {
                return (s, false);
            }
            sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_states() {
        assert_eq!(parse_num(b"4"), Some(4));
        assert_eq!(parse_num(b" 51712\0"), Some(51712));
        assert_eq!(parse_num(b"x"), None);
        assert_eq!(parse_num(b""), None);
        assert_eq!(state_name(CLOSING), "Closing");
        assert_eq!(state_name(99), "Unknown");
    }
}
