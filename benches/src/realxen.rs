//! Suite `real-xen`: one real Xen boot (`xen-harness bench`, tests/xen-harness/src/bench.rs)
//! in which one Linux PVH domU runs the same disk and TCP workload through Linux dom0's
//! xen-blkback/xen-netback (path a) and through our driver domain's blkback/netback (path b),
//! alternating. Xen runs under QEMU TCG, so absolute figures are those of an emulated CPU on
//! a shared machine; only the ratios b/a, taken in the same boot by the same guest, are worth
//! reading.
//!
//! This module runs the harness, parses what the domU and dom0 reported (`bench-results.txt`)
//! and the driver domain's own `RESULT bench-*` lines, and hands back samples per path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{sample, Sample};

/// One workload measured on both paths.
#[derive(Debug, Clone)]
pub struct Pair {
    /// `write`, `read`, `read4k`, `tcp`.
    pub op: String,
    /// Bytes per repetition.
    pub bytes: u64,
    /// Path a (Linux's backends in dom0): ns per item (MiB, or 4 KiB request for `read4k`).
    pub a: Sample,
    /// Path b (our driver domain's backends).
    pub b: Sample,
}

/// Everything the boot reported.
#[derive(Debug, Clone, Default)]
pub struct RealXen {
    /// Block and TCP measurements present on both paths, in the order of [`OPS`].
    pub pairs: Vec<Pair>,
    /// Average ping RTT in ms: (`out` = domU → dom0 | `in` = dom0 → domU, path) → ms.
    pub ping: BTreeMap<(String, char), f64>,
    /// `BENCHFEAT`/`FEAT` lines: what the domU saw and what xenstore held per device.
    pub features: Vec<String>,
    /// The driver domain's `RESULT bench-blk` / `RESULT bench-net` lines.
    pub dd_results: Vec<String>,
    /// `real-xen bench ...` verdict line of the harness.
    pub verdict: String,
    /// Disks read back what was written (`BENCHVERIFY` lines).
    pub verified: Vec<String>,
    /// Boot timing (`summary.txt`'s first line).
    pub boot: String,
    /// Why a part is missing (domU's `BENCHERR` lines).
    pub errors: Vec<String>,
}

/// The workloads, in table order.
pub const OPS: [&str; 4] = ["write", "read", "read4k", "tcp"];

/// Why the suite cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !qemu {
        return Some(
            "qemu-system-x86_64 not found (package qemu-system-x86; `cargo kmod setup` installs \
             it)"
            .into(),
        );
    }
    if !Path::new("/usr/lib/xen-4.17/bin/xl").exists() {
        return Some(
            "Xen's tools not installed (/usr/lib/xen-4.17/bin/xl, package xen-utils-4.17; \
             `cargo kmod setup` installs them)"
                .into(),
        );
    }
    None
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or(manifest.clone(), Path::to_path_buf)
}

/// Boots Xen once with `xen-harness bench`, logs in `out`, and parses the results. With
/// `reuse`, `out` already holds the logs of such a run (`xen-bench --real-xen-logs DIR`): no
/// boot, the tables are rebuilt from them.
///
/// # Errors
/// QEMU or Xen's tools are missing (the suite is then skipped with this reason), the harness
/// could not run, or the boot left no results.
pub fn run_suite(out: &Path, reuse: bool) -> Result<RealXen, String> {
    let status = if reuse {
        "logs of an earlier boot".to_string()
    } else {
        if let Some(why) = missing_tools() {
            return Err(format!("skipped: {why}"));
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        Command::new(&cargo)
            .args(["run", "-q", "-p", "xen-harness", "--", "bench", "--out"])
            .arg(out)
            .current_dir(workspace_root())
            .status()
            .map_err(|e| format!("cannot run {cargo}: {e}"))?
            .to_string()
    };
    let results = out.join("bench-x86_64/bench-results.txt");
    let text = std::fs::read_to_string(&results).map_err(|e| {
        format!(
            "xen-harness bench ({status}) left no {}: {e}",
            results.display()
        )
    })?;
    let debug =
        std::fs::read_to_string(out.join("bench-x86_64/guest-debug.log")).unwrap_or_default();
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap_or_default();
    let mut r = parse(&text, &debug, &summary);
    // dom0's one-line FEAT digests were empty at times (its busybox tools crash now and then
    // under TCG); the full dumps beside them are the record: digest them here instead.
    if let Ok(xs) = std::fs::read_to_string(out.join("bench-x86_64/bench-xenstore.txt")) {
        r.features.retain(|f| !f.starts_with("FEAT "));
        r.features.extend(features_of_dump(&xs));
    }
    if r.pairs.is_empty() {
        return Err(format!(
            "no figure on both paths ({}); logs in {}",
            r.verdict,
            out.display()
        ));
    }
    r.pairs.sort_by_key(|p| OPS.iter().position(|o| *o == p.op));
    Ok(r)
}

/// The negotiation keys of each device directory in a `bench-xenstore.txt` dump
/// (`--- LABEL DIR` then `xenstore-ls -f DIR` lines), one `FEAT LABEL k=v ...` line each.
pub fn features_of_dump(dump: &str) -> Vec<String> {
    const KEYS: [&str; 6] = [
        "feature-",
        "multi-queue-",
        "ring-page-order",
        "max-ring-page-order",
        "protocol",
        "request-rx-copy",
    ];
    let mut out: Vec<String> = Vec::new();
    let mut dir = String::new();
    for line in dump.lines() {
        if let Some(head) = line.strip_prefix("--- ") {
            let mut w = head.split_whitespace();
            out.push(format!("FEAT {}", w.next().unwrap_or("?")));
            dir = format!("{}/", w.next().unwrap_or("?"));
            continue;
        }
        let (Some(last), Some((key, value))) = (out.last_mut(), line.split_once(" = ")) else {
            continue;
        };
        let Some(key) = key.strip_prefix(dir.as_str()) else {
            continue;
        };
        if key.ends_with("/event-channel-rx") || key == "event-channel-rx" {
            if !last.contains(" split-event-channels=1") {
                last.push_str(" split-event-channels=1");
            }
        } else if !key.contains('/') && KEYS.iter().any(|k| key.starts_with(k)) {
            let _ = std::fmt::Write::write_fmt(
                last,
                format_args!(" {key}={}", value.trim_matches('"')),
            );
        }
    }
    out
}

/// Parses `bench-results.txt` (`text`), the driver domain's debug log and the summary.
pub fn parse(text: &str, dd_debug: &str, summary: &str) -> RealXen {
    let mut r = RealXen::default();
    // (op, path) → (bytes, per-item ns of each repetition)
    let mut runs: BTreeMap<(String, char), (u64, Vec<f64>)> = BTreeMap::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["BENCH", op, path, _rep, bytes, cs, "0"] => {
                let (Ok(bytes), Ok(cs), Some(p)) =
                    (bytes.parse::<u64>(), cs.parse::<u64>(), path.chars().next())
                else {
                    continue;
                };
                if cs == 0 || bytes == 0 {
                    continue; // below the guest clock's 10 ms resolution: no figure
                }
                let unit: u64 = if *op == "read4k" { 4096 } else { 1 << 20 };
                let items = bytes as f64 / unit as f64;
                let e = runs
                    .entry(((*op).to_string(), p))
                    .or_insert((bytes, Vec::new()));
                e.1.push(cs as f64 * 1e7 / items);
            }
            ["BENCHPING", dir, path, avg] => {
                if let (Ok(ms), Some(p)) = (avg.parse::<f64>(), path.chars().next()) {
                    r.ping.insert(((*dir).to_string(), p), ms);
                }
            }
            ["BENCHVERIFY", ..] => r.verified.push(line.trim().to_string()),
            ["BENCHFEAT", ..] | ["FEAT", ..] => r.features.push(line.trim().to_string()),
            ["BENCHERR", ..] => r.errors.push(line.trim().to_string()),
            _ => {}
        }
    }
    for op in OPS {
        let a = runs.get(&(op.to_string(), 'a'));
        let b = runs.get(&(op.to_string(), 'b'));
        if let (Some((bytes, pa)), Some((_, pb))) = (a, b) {
            let unit: u64 = if op == "read4k" { 4096 } else { 1 << 20 };
            let items = bytes / unit;
            r.pairs.push(Pair {
                op: op.to_string(),
                bytes: *bytes,
                a: sample(pa.clone(), items),
                b: sample(pb.clone(), items),
            });
        }
    }
    r.dd_results = dd_debug
        .lines()
        .filter(|l| l.starts_with("RESULT bench-"))
        .map(|l| l.trim().to_string())
        .collect();
    r.verdict = summary
        .lines()
        .find(|l| l.starts_with("real-xen bench "))
        .unwrap_or("no verdict line")
        .to_string();
    r.boot = summary.lines().next().unwrap_or_default().to_string();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_pings_and_features() {
        let text = "BENCH BLKSTART\n\
            BENCH write a 1 8388608 200 0\n\
            BENCH write b 1 8388608 400 0\n\
            BENCH write b 2 8388608 300 0\n\
            BENCH write a 2 8388608 100 0\n\
            BENCH read a 1 8388608 0 0\n\
            BENCH read b 1 8388608 50 1\n\
            BENCH read4k a 1 4194304 100 0\n\
            BENCH read4k b 1 4194304 300 0\n\
            BENCHPING out a 1.5\nBENCHPING in b 20.25\nBENCHPING in a none\n\
            BENCHVERIFY a ok\nFEAT blk-a-backend feature-persistent=1\n";
        let r = parse(
            text,
            "x\nRESULT bench-blk PASS 16 MiB\n",
            "boot: ...\nreal-xen bench x86_64 PASS 1.0s ok\n",
        );
        // read: a's only repetition was below the clock, b's failed: no pair.
        let ops: Vec<&str> = r.pairs.iter().map(|p| p.op.as_str()).collect();
        assert_eq!(ops, ["write", "read4k"]);
        let w = &r.pairs[0];
        // 2 s and 1 s for 8 MiB: 0.25 s and 0.125 s per MiB; median of two = midpoint.
        assert!((w.a.median - 0.1875e9).abs() < 1.0);
        assert!((w.b.median - 0.4375e9).abs() < 1.0);
        assert_eq!((w.a.reps, w.a.items), (2, 8));
        // 1 s for 1024 requests.
        assert!((r.pairs[1].a.median - 1e9 / 1024.0).abs() < 1.0);
        assert_eq!(r.ping.get(&("out".into(), 'a')), Some(&1.5));
        assert_eq!(r.ping.get(&("in".into(), 'b')), Some(&20.25));
        assert!(!r.ping.contains_key(&("in".into(), 'a')));
        assert_eq!(r.features.len(), 1);
        assert_eq!(r.verified, ["BENCHVERIFY a ok"]);
        assert_eq!(r.dd_results, ["RESULT bench-blk PASS 16 MiB"]);
        assert!(r.verdict.contains("PASS"));
    }

    #[test]
    fn digests_xenstore_dumps() {
        let dump = "--- blk-a-frontend /l/2/device/vbd/51712\n\
            /l/2/device/vbd/51712/state = \"4\"\n\
            /l/2/device/vbd/51712/ring-page-order = \"1\"\n\
            /l/2/device/vbd/51712/queue-0/ring-ref0 = \"8\"\n\
            /l/2/device/vbd/51712/protocol = \"x86_64-abi\"\n\
            --- net-a-frontend /l/2/device/vif/0\n\
            /l/2/device/vif/0/queue-0/event-channel-rx = \"9\"\n\
            /l/2/device/vif/0/queue-1/event-channel-rx = \"11\"\n\
            /l/2/device/vif/0/feature-sg = \"1\"\n\
            --- empty /l/x\n";
        assert_eq!(
            features_of_dump(dump),
            [
                "FEAT blk-a-frontend ring-page-order=1 protocol=x86_64-abi",
                "FEAT net-a-frontend split-event-channels=1 feature-sg=1",
                "FEAT empty",
            ]
        );
    }
}
