//! The `real-xen` step of `cargo kmod test`: the project's cores on a real Xen 4.17.
//!
//! Runs `tests/xen-harness` (a host program of the workspace), which boots Xen with a Linux
//! dom0 in QEMU (TCG), creates the Rust PVH guest of `tests/pvh-guest` for each architecture
//! with `xl`, and prints one line per scenario per architecture:
//!
//! ```text
//! real-xen <scenario> <arch> PASS|FAIL <seconds>s <detail>
//! ```
//!
//! Each such line is one check, and so is `cargo fmt --check` of the guest (its own workspace). The packages it needs (QEMU, Xen's tools, busybox) are in
//! `setup::Needs::real_xen`; the hypervisor and dom0 kernel images are fetched by the harness
//! itself (`apt-get download`, unpacked under `target/real-xen/cache`). Logs: docs/REAL-XEN.md.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::kernel::Arch;
use crate::suite::Tally;
use crate::workspace_root;

/// Parses one harness verdict line: `Some(true)` for PASS, `Some(false)` for FAIL.
fn verdict(line: &str) -> Option<bool> {
    let mut words = line.split_whitespace();
    if words.next()? != "real-xen" {
        return None;
    }
    let _scenario = words.next()?;
    let _arch = words.next()?;
    match words.next()? {
        "PASS" => Some(true),
        "FAIL" => Some(false),
        _ => None,
    }
}

/// `cargo fmt --check` of the guest, which is its own workspace (the suite's fmt step covers
/// only the main one); one check.
fn guest_fmt(cargo: &str) -> bool {
    let manifest = workspace_root().join("tests/pvh-guest/Cargo.toml");
    let ok = Command::new(cargo)
        .args(["fmt", "--check", "--manifest-path"])
        .arg(&manifest)
        .status()
        .is_ok_and(|status| status.success());
    println!("real-xen guest-fmt - {}", if ok { "PASS" } else { "FAIL" });
    ok
}

/// Runs every real-Xen scenario for `arches`; one check per scenario per architecture, plus
/// the guest's formatting.
pub fn run(arches: &[Arch]) -> Tally {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let fmt_ok = guest_fmt(&cargo);
    let mut cmd = Command::new(cargo);
    cmd.args(["run", "--quiet", "-p", "xen-harness", "--", "run"]);
    for arch in arches {
        // The harness accepts the FreeBSD names (amd64, i386) as well as x86_64/i686.
        cmd.args(["--arch", arch.name()]);
    }
    let child = cmd
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            eprintln!("cannot run the real-Xen harness: {error}");
            return Tally {
                passed: u64::from(fmt_ok),
                failed: 1 + u64::from(!fmt_ok),
            };
        }
    };
    let mut tally = Tally {
        passed: u64::from(fmt_ok),
        failed: u64::from(!fmt_ok),
    };
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            match verdict(&line) {
                Some(true) => tally.passed += 1,
                Some(false) => tally.failed += 1,
                None => {}
            }
        }
    }
    let succeeded = child.wait().is_ok_and(|status| status.success());
    if !succeeded && tally.failed == 0 {
        // Failed without a scenario verdict: the harness did not build or could not start.
        tally.failed += 1;
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_lines() {
        assert_eq!(
            verdict("real-xen boot x86_64 PASS 1.2s xen 4.17"),
            Some(true)
        );
        assert_eq!(
            verdict("real-xen destroy i686 FAIL 0.0s timed out"),
            Some(false)
        );
        assert_eq!(verdict("xen-harness: logs in target/real-xen"), None);
        assert_eq!(verdict("real-xen boot"), None);
    }
}
