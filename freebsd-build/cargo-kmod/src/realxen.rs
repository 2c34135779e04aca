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

/// A scenario's verdict for one architecture: (scenario, arch, passed).
type Verdict = (String, String, bool);

/// Parses one harness verdict line.
fn verdict_of(line: &str) -> Option<Verdict> {
    let mut words = line.split_whitespace();
    if words.next()? != "real-xen" {
        return None;
    }
    let scenario = words.next()?;
    let arch = words.next()?;
    let pass = match words.next()? {
        "PASS" => true,
        "FAIL" => false,
        _ => return None,
    };
    Some((scenario.to_string(), arch.to_string(), pass))
}

/// Whether Xen's console (the harness's serial.log) shows a guest that triple-faulted with
/// Xen's own code selector (`e008`) in its saved state: under QEMU TCG (nested SVM) the
/// emulator now and then hands a guest the hypervisor's registers, which no guest code can
/// cause; seen for Linux domUs and for our driver domain, at boot and mid-run.
fn emulator_crashed_a_guest(serial: &str) -> bool {
    let lines: Vec<&str> = serial.lines().collect();
    lines.iter().enumerate().any(|(i, l)| {
        l.contains("Triple fault")
            && lines.iter().skip(i + 1).take(6).any(|d| {
                d.trim_start_matches("(XEN)")
                    .trim_start()
                    .starts_with("RIP:")
                    && d.contains("e008:")
            })
    })
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

/// One harness run: every verdict it printed (echoed as they come), and whether it exited 0.
fn harness(cargo: &str, args: &[String]) -> Result<(Vec<Verdict>, bool), String> {
    let mut cmd = Command::new(cargo);
    cmd.args(["run", "--quiet", "-p", "xen-harness", "--", "run"]);
    cmd.args(args);
    let mut child = cmd
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run the real-Xen harness: {error}"))?;
    let mut verdicts = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            verdicts.extend(verdict_of(&line));
        }
    }
    let succeeded = child.wait().is_ok_and(|status| status.success());
    Ok((verdicts, succeeded))
}

/// Runs every real-Xen scenario for `arches`; one check per scenario per architecture, plus
/// the guest's formatting. When scenarios failed and Xen's log shows the emulator's crash of
/// a guest ([`emulator_crashed_a_guest`]), those scenarios (only those) run once more in a
/// second boot, whose verdicts are theirs; the first boot's console and those scenarios' logs
/// are kept in `target/real-xen/first-boot`.
pub fn run(arches: &[Arch]) -> Tally {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let fmt_ok = guest_fmt(&cargo);
    let mut tally = Tally {
        passed: u64::from(fmt_ok),
        failed: u64::from(!fmt_ok),
    };
    // The harness accepts the FreeBSD names (amd64, i386) as well as x86_64/i686.
    let arch_args: Vec<String> = arches
        .iter()
        .flat_map(|a| ["--arch".to_string(), a.name().to_string()])
        .collect();
    let (first, succeeded) = match harness(&cargo, &arch_args) {
        Ok(r) => r,
        Err(error) => {
            eprintln!("{error}");
            tally.failed += 1;
            return tally;
        }
    };
    if !succeeded && first.iter().all(|(_, _, pass)| *pass) {
        // Failed without a failed verdict: the harness did not build or could not start.
        tally.failed += 1;
    }
    let failed: Vec<&Verdict> = first.iter().filter(|v| !v.2).collect();
    tally.passed += (first.len() - failed.len()) as u64;
    let serial = std::fs::read_to_string(workspace_root().join("target/real-xen/serial.log"))
        .unwrap_or_default();
    if failed.is_empty() || !emulator_crashed_a_guest(&serial) {
        tally.failed += failed.len() as u64;
        return tally;
    }
    println!(
        "real-xen: {} scenario(s) failed in a boot where Xen's log shows a guest triple fault \
         with Xen's own registers (a QEMU TCG fault); they run again in a second boot",
        failed.len()
    );
    // The second boot writes where the first did (the downloaded images and built guests are
    // reused from there); the first boot's console and the failed scenarios' logs are moved to
    // target/real-xen/first-boot first.
    let out = workspace_root().join("target/real-xen");
    let kept = out.join("first-boot");
    let _ = std::fs::remove_dir_all(&kept);
    if std::fs::create_dir_all(&kept).is_ok() {
        let mut names = vec![
            "serial.log".to_string(),
            "summary.txt".to_string(),
            "boot.log".to_string(),
        ];
        names.extend(failed.iter().map(|(s, a, _)| format!("{s}-{a}")));
        for name in names {
            let _ = std::fs::rename(out.join(&name), kept.join(&name));
        }
    }
    let mut args: Vec<String> = Vec::new();
    for (scenario, arch, _) in &failed {
        for (flag, value) in [("--scenario", scenario), ("--arch", arch)] {
            if !args.windows(2).any(|w| w[0] == flag && &w[1] == value) {
                args.extend([flag.to_string(), value.clone()]);
            }
        }
    }
    let second = harness(&cargo, &args).map(|(v, _)| v).unwrap_or_default();
    for (scenario, arch, _) in &failed {
        let again = second
            .iter()
            .find(|(s, a, _)| s == scenario && a == arch)
            .is_some_and(|v| v.2);
        println!(
            "real-xen: {scenario} {arch} in the second boot: {}",
            if again { "PASS" } else { "FAIL" }
        );
        if again {
            tally.passed += 1;
        } else {
            tally.failed += 1;
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_lines() {
        assert_eq!(
            verdict_of("real-xen boot x86_64 PASS 1.2s xen 4.17").map(|v| v.2),
            Some(true)
        );
        assert_eq!(
            verdict_of("real-xen destroy i686 FAIL 0.0s timed out").map(|v| v.2),
            Some(false)
        );
        assert_eq!(verdict_of("xen-harness: logs in target/real-xen"), None);
        assert_eq!(verdict_of("real-xen boot"), None);
    }

    #[test]
    fn the_emulators_guest_crash_is_told_from_a_guests_own() {
        let ours = "(XEN) d16v0 Triple fault - invoking HVM shutdown action 1\n\
                    (XEN) *** Dumping Dom16 vcpu#0 state: ***\n\
                    (XEN) ----[ Xen-4.17.7  x86_64  debug=n  Not tainted ]----\n\
                    (XEN) CPU:    0\n\
                    (XEN) RIP:    e008:[<ffff82d0402044a5>]\n";
        assert!(emulator_crashed_a_guest(ours));
        let guests_own = ours.replace("e008:[<ffff82d0402044a5>]", "0010:[<ffffffff81000000>]");
        assert!(!emulator_crashed_a_guest(&guests_own));
        assert!(!emulator_crashed_a_guest(
            "(XEN) RIP:    e008:[<ffff82d0402044a5>]\n"
        ));
        assert!(!emulator_crashed_a_guest(""));
    }

    #[test]
    fn verdicts_carry_scenario_and_arch() {
        assert_eq!(
            verdict_of("real-xen dd-hostile i686 FAIL 73.5s why"),
            Some(("dd-hostile".into(), "i686".into(), false))
        );
    }
}
