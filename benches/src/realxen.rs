//! Suite `real-xen`: one real Xen boot (`xen-harness bench`, tests/xen-harness/src/bench.rs)
//! in which one Linux PVH domU runs the same disk and network workload through Linux dom0's
//! xen-blkback/xen-netback (path a) and through our driver domain's blkback/netback (path b),
//! alternating; then our PVH guest (`run=bench`) runs the same block workload and echo
//! exchanges with its own blkfront/netfront through dom0's backends (path c). Xen runs under
//! QEMU TCG, so absolute figures are those of an emulated CPU on a shared machine; only the
//! ratios b/a (backends) and c/a (frontends), taken in the same boot, are worth reading.
//!
//! This module runs the harness, parses what the guests and dom0 reported
//! (`bench-results.txt`) and the driver domain's own `RESULT bench-*` lines, and hands back
//! samples per path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{sample, Sample};

/// One workload measured on two paths.
#[derive(Debug, Clone)]
pub struct Pair {
    /// One of [`OPS`].
    pub op: String,
    /// Bytes per repetition.
    pub bytes: u64,
    /// Path a (a Linux domU on Linux's backends in dom0): ns per item ([`unit`]).
    pub a: Sample,
    /// The other path: b (the Linux domU on our driver domain's backends) in
    /// [`RealXen::pairs`], c (our PVH guest's frontends on dom0's backends) in
    /// [`RealXen::frontends`].
    pub b: Sample,
}

/// Everything the boot reported.
#[derive(Debug, Clone, Default)]
pub struct RealXen {
    /// Backends: measurements present on paths a and b, in the order of [`OPS`].
    pub pairs: Vec<Pair>,
    /// Frontends: measurements present on paths a and c, in the order of [`OPS`].
    pub frontends: Vec<Pair>,
    /// `BENCHLOST` lines: echo replies that did not come.
    pub lost: Vec<String>,
    /// Our PVH guest's `RESULT bench` line (path c's verdict and what it negotiated).
    pub pvh_result: String,
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
pub const OPS: [&str; 6] = ["write", "read", "read4k", "tcp", "echo56", "echo1400"];

/// Bytes per item of a workload: 1 MiB for transfers, one request for 4 KiB reads and echo
/// exchanges (whose data size is in the name).
pub fn unit(op: &str) -> u64 {
    match op {
        "read4k" => 4096,
        "echo56" => 56,
        "echo1400" => 1400,
        _ => 1 << 20,
    }
}

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
    // The guests' architecture is x86_64 unless the logs are of `xen-harness bench --arch
    // i686` (passed as --real-xen-logs).
    let dir = ["bench-x86_64", "bench-i686"]
        .into_iter()
        .map(|d| out.join(d))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| out.join("bench-x86_64"));
    let results = dir.join("bench-results.txt");
    let text = std::fs::read_to_string(&results).map_err(|e| {
        format!(
            "xen-harness bench ({status}) left no {}: {e}",
            results.display()
        )
    })?;
    // dom0 collects the guests' lines once, at the end; its busybox tools crash now and then
    // under TCG and a slow domU may still be measuring then. The guests' whole consoles are
    // dumped beside it: every line of theirs counts once (a line names its repetition).
    let mut text = text;
    for log in ["bench-domu.log", "bench-pvh.log"] {
        if let Ok(more) = std::fs::read_to_string(dir.join(log)) {
            text.push('\n');
            text.push_str(&more.replace('\r', ""));
        }
    }
    let text = unique_lines(&text);
    let debug = std::fs::read_to_string(dir.join("guest-debug.log")).unwrap_or_default();
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap_or_default();
    let mut r = parse(&text, &debug, &summary);
    // dom0's one-line FEAT digests were empty at times (its busybox tools crash now and then
    // under TCG); the full dumps beside them are the record: digest them here instead.
    if let Ok(xs) = std::fs::read_to_string(dir.join("bench-xenstore.txt")) {
        r.features.retain(|f| !f.starts_with("FEAT "));
        r.features.extend(features_of_dump(&xs));
    }
    if r.pairs.is_empty() && r.frontends.is_empty() {
        return Err(format!(
            "no figure on both paths ({}); logs in {}",
            r.verdict,
            out.display()
        ));
    }
    Ok(r)
}

/// `text`'s lines, each distinct one once, in their first order.
pub fn unique_lines(text: &str) -> String {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = String::new();
    for line in text.lines().map(str::trim) {
        if !line.is_empty() && seen.insert(line) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
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
        // The Linux domU's lines are in centiseconds (`/proc/uptime`), our PVH guest's
        // (`BENCHNS`) in nanoseconds of Xen's system time.
        let (op, path, bytes, ns) = match w.as_slice() {
            ["BENCH", op, path, _rep, bytes, cs, "0"] => {
                (op, path, bytes, cs.parse::<u64>().map(|cs| cs * 10_000_000))
            }
            ["BENCHNS", op, path, _rep, bytes, ns, "0"] => (op, path, bytes, ns.parse::<u64>()),
            ["BENCHPING", dir, path, avg] => {
                if let (Ok(ms), Some(p)) = (avg.parse::<f64>(), path.chars().next()) {
                    r.ping.insert(((*dir).to_string(), p), ms);
                }
                continue;
            }
            ["BENCHVERIFY", ..] => {
                r.verified.push(line.trim().to_string());
                continue;
            }
            ["BENCHFEAT", ..] | ["FEAT", ..] => {
                r.features.push(line.trim().to_string());
                continue;
            }
            ["BENCHERR", ..] => {
                r.errors.push(line.trim().to_string());
                continue;
            }
            ["BENCHLOST", ..] => {
                r.lost.push(line.trim().to_string());
                continue;
            }
            ["RESULT", "bench", ..] => {
                r.pvh_result = line.trim().to_string();
                continue;
            }
            _ => continue,
        };
        let (Ok(bytes), Ok(ns), Some(p)) = (bytes.parse::<u64>(), ns, path.chars().next()) else {
            continue;
        };
        if ns == 0 || bytes == 0 {
            continue; // below the guest clock's 10 ms resolution: no figure
        }
        let items = bytes as f64 / unit(op) as f64;
        let e = runs
            .entry(((*op).to_string(), p))
            .or_insert((bytes, Vec::new()));
        e.1.push(ns as f64 / items);
    }
    for op in OPS {
        for (other, out) in [('b', &mut r.pairs), ('c', &mut r.frontends)] {
            let a = runs.get(&(op.to_string(), 'a'));
            let b = runs.get(&(op.to_string(), other));
            if let (Some((bytes, pa)), Some((_, pb))) = (a, b) {
                let items = bytes / unit(op);
                out.push(Pair {
                    op: op.to_string(),
                    bytes: *bytes,
                    a: sample(pa.clone(), items),
                    b: sample(pb.clone(), items),
                });
            }
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
        assert!(r.frontends.is_empty());
    }

    #[test]
    fn a_line_in_two_logs_counts_once() {
        let both = "BENCH write a 1 8 200 0\nBENCH write a 2 8 100 0\n\
            BENCH write a 1 8 200 0\r\nBENCH write b 1 8 300 0\n";
        let u = unique_lines(&both.replace('\r', ""));
        assert_eq!(
            u,
            "BENCH write a 1 8 200 0\nBENCH write a 2 8 100 0\nBENCH write b 1 8 300 0\n"
        );
        assert_eq!(parse(&u, "", "").pairs[0].a.reps, 2);
    }

    #[test]
    fn parses_our_guests_nanosecond_lines_as_path_c() {
        let text = "BENCH echo56 a 1 2800 150 0\n\
            BENCH echo56 a 2 2800 250 0\n\
            BENCH echo56 b 1 2800 100 0\n\
            BENCHNS echo56 c 1 2800 500000000 0\n\
            BENCHNS echo56 c 2 2800 700000000 0\n\
            BENCHNS echo1400 c 1 70000 900000000 1\n\
            BENCH read4k a 1 524288 64 0\n\
            BENCHNS read4k c 1 524288 320000000 0\n\
            BENCHLOST echo56 c 2 1 of 50\n\
            RESULT bench PASS blk: abi X86_64 queues 2\n\
            BENCHFEAT blk c pvh-xvda sectors=32768 queues 2\n";
        let r = parse(text, "", "");
        let ops: Vec<&str> = r.frontends.iter().map(|p| p.op.as_str()).collect();
        // echo1400 c failed (rc 1) and has no path a: no pair.
        assert_eq!(ops, ["read4k", "echo56"]);
        // 128 reads in 0.64 s (a) and 0.32 s (c): 5 ms and 2.5 ms each.
        let k = &r.frontends[0];
        assert_eq!(k.a.items, 128);
        assert!((k.a.median - 5e6).abs() < 1.0);
        assert!((k.b.median - 2.5e6).abs() < 1.0);
        // 50 echoes: a 1.5 s and 2.5 s → median 40 ms; c 0.5 s and 0.7 s → median 12 ms.
        let e = &r.frontends[1];
        assert_eq!((e.a.items, e.b.reps), (50, 2));
        assert!((e.a.median - 40e6).abs() < 1.0);
        assert!((e.b.median - 12e6).abs() < 1.0);
        // Path b's echo is a backend pair with a.
        assert_eq!(r.pairs.len(), 1);
        assert_eq!(r.lost, ["BENCHLOST echo56 c 2 1 of 50"]);
        assert!(r.pvh_result.starts_with("RESULT bench PASS"));
        assert_eq!(r.features.len(), 1);
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
