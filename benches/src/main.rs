//! `xen-bench`: the benchmark suites behind `cargo kmod bench` (see BENCHMARKS.md).
//!
//! ```sh
//! cargo run --release -p xen-bench -- [--out DIR] [--quick] [--only ring,gnttab,evtchn,parse,blk,net,real-xen]
//!     [--real-xen-logs DIR]   # real-xen table from an earlier `xen-harness bench --out DIR`
//! ```
//!
//! Prints progress to stderr and each table as it is measured, then writes `results.md`
//! (the tables BENCHMARKS.md quotes), `results.csv` (one row per measurement) and one PNG bar
//! chart per suite ([`plot`]) into DIR (default `target/bench`). Every ratio is between two
//! figures of the same run. `--only` runs the named suites (e.g. `--only ring` while working on
//! the ring). The network suite ([`net`]) needs root. The real-Xen suite ([`realxen`]) boots
//! Xen once under QEMU (about 10 minutes; skipped by `--quick` unless named in `--only`, and
//! with its reason when QEMU or Xen's tools are missing).
#![expect(
    clippy::cast_possible_truncation,
    reason = "host-only benchmark code: counts and sizes far below 2^32, f64 for reporting"
)]

mod e2e;
mod harness;
mod micro;
mod net;
mod plot;
mod realxen;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use harness::Sample;
use plot::{Bar, Chart};

/// How much work each measurement does.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Timed repetitions per measurement (after one warm-up).
    pub reps: usize,
    /// Ring round trips per repetition.
    pub ring_items: u64,
    /// Grant alloc+free pairs per repetition.
    pub gnt_items: u64,
    /// Raise-and-scan rounds per repetition.
    pub scan_rounds: u64,
    /// Parsed items per repetition.
    pub parse_items: u64,
    /// 4 KiB bios per repetition.
    pub blk_ops: u64,
    /// 1 MiB bios per repetition.
    pub seq_mib: u64,
    /// 64 MiB copies per repetition.
    pub memcpy_rounds: u64,
    /// Alternating repetitions of each network measurement (ours, veth).
    pub net_reps: u16,
    /// MiB per TCP stream.
    pub net_tcp_mib: u64,
    /// Seconds of 64-byte UDP per repetition.
    pub net_udp_secs: f64,
}

impl Scale {
    const FULL: Scale = Scale {
        reps: 11,
        ring_items: 4_000_000,
        gnt_items: 4_000_000,
        scan_rounds: 20,
        parse_items: 4_000_000,
        blk_ops: 20_000,
        seq_mib: 256,
        memcpy_rounds: 4,
        net_reps: 5,
        net_tcp_mib: 256,
        net_udp_secs: 3.0,
    };
    const QUICK: Scale = Scale {
        reps: 3,
        ring_items: 200_000,
        gnt_items: 200_000,
        scan_rounds: 2,
        parse_items: 200_000,
        blk_ops: 500,
        seq_mib: 16,
        memcpy_rounds: 1,
        net_reps: 1,
        net_tcp_mib: 32,
        net_udp_secs: 1.0,
    };
}

struct Report {
    md: String,
    csv: String,
    charts: Vec<Chart>,
}

fn bar(label: impl Into<String>, value: f64, series: u8) -> Bar {
    Bar {
        label: label.into(),
        value,
        series,
    }
}

impl Report {
    fn section(&mut self, title: &str, intro: &str, header: &[&str]) {
        println!("\n## {title}\n");
        let _ = write!(
            self.md,
            "\n### {title}\n\n{intro}\n\n| {} |\n|",
            header.join(" | ")
        );
        for _ in header {
            self.md.push_str("---|");
        }
        self.md.push('\n');
    }

    fn row(&mut self, cells: &[String]) {
        let line = format!("| {} |", cells.join(" | "));
        println!("{line}");
        self.md.push_str(&line);
        self.md.push('\n');
    }

    fn csv(&mut self, suite: &str, case: &str, unit: &str, s: &Sample) {
        let _ = writeln!(
            self.csv,
            "{suite},{case},{unit},{:.3},{:.3},{:.3},{},{}",
            s.median, s.min, s.max, s.reps, s.items
        );
    }
}

fn progress(t0: Instant, what: &str) {
    eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// `/proc/loadavg`'s first three fields: how busy the machine was (others' work included).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "unknown".into())
}

fn cpu_info() -> (String, String, f64) {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown".into());
    let mhz: f64 = field("cpu MHz").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    (model, threads.to_string(), mhz)
}

/// The network table: ours vs veth, TCP and 64-byte UDP.
fn net_section(r: &mut Report, scale: &Scale) {
    r.section(
        "Simulated end to end: netfront ↔ netback between two namespaces, vs veth",
        &format!(
            "Linux TCP/UDP in namespace A → TAP → netfront → xensim → netback → TAP → \
             namespace B (the `net_e2e` data path: default features, TAPs with checksum and \
             TSO offload, one worker thread per queue and side), against a veth pair between \
             two other namespaces; {} alternating repetitions each. TCP: one {} MiB stream, \
             own sender/receiver. 64-byte: UDP datagrams of {} payload bytes (64-byte \
             Ethernet frames) from one thread for {:.0} s; received packets per second.",
            scale.net_reps,
            scale.net_tcp_mib,
            net::UDP_PAYLOAD_64B,
            scale.net_udp_secs
        ),
        &[
            "workload",
            "netfront/netback",
            "veth",
            "ratio ours/veth (median; best)",
        ],
    );
    match net::run_suite(scale) {
        Ok(n) => {
            // ns per MiB → Gbit/s; ns per packet → Mpps.
            let gbit = |ns: f64| 8.0 * 1_048_576.0 / ns;
            let mpps = |ns: f64| 1e3 / ns;
            r.row(&[
                "TCP, one stream".into(),
                format!(
                    "{:.2} Gbit/s (best {:.2})",
                    gbit(n.tcp_ours.median),
                    gbit(n.tcp_ours.min)
                ),
                format!(
                    "{:.2} Gbit/s (best {:.2})",
                    gbit(n.tcp_veth.median),
                    gbit(n.tcp_veth.min)
                ),
                format!(
                    "**{:.3}**; {:.3}",
                    n.tcp_veth.median / n.tcp_ours.median,
                    n.tcp_veth.min / n.tcp_ours.min
                ),
            ]);
            r.row(&[
                "64-byte UDP, received".into(),
                format!(
                    "{:.3} Mpps (best {:.3}; offered {:.3})",
                    mpps(n.udp_ours.median),
                    mpps(n.udp_ours.min),
                    n.udp_offered.0 / 1e6
                ),
                format!(
                    "{:.3} Mpps (best {:.3}; offered {:.3})",
                    mpps(n.udp_veth.median),
                    mpps(n.udp_veth.min),
                    n.udp_offered.1 / 1e6
                ),
                format!(
                    "**{:.3}**; {:.3}",
                    n.udp_veth.median / n.udp_ours.median,
                    n.udp_veth.min / n.udp_ours.min
                ),
            ]);
            let _ = writeln!(
                r.md,
                "\n{} queues; negotiated: `{}`; frontend ring-busy retries: {}.",
                n.queues, n.features, n.busy
            );
            r.csv("net", "tcp-ours", "ns/MiB", &n.tcp_ours);
            r.csv("net", "tcp-veth", "ns/MiB", &n.tcp_veth);
            r.csv("net", "udp64-ours", "ns/packet", &n.udp_ours);
            r.csv("net", "udp64-veth", "ns/packet", &n.udp_veth);
            r.charts.push(Chart {
                file: "net-tcp.png".into(),
                title: "TCP, one stream, Gbit/s (median; higher is better)".into(),
                unit: "Gbit/s".into(),
                bars: vec![
                    bar("netfront-xensim-netback", gbit(n.tcp_ours.median), 0),
                    bar("veth pair", gbit(n.tcp_veth.median), 1),
                ],
                legend: ["ours (simulated)", "veth (same run)", ""],
            });
            r.charts.push(Chart {
                file: "net-pps.png".into(),
                title: "64-byte UDP received, Mpps (median; higher is better)".into(),
                unit: "Mpps".into(),
                bars: vec![
                    bar("netfront-xensim-netback", mpps(n.udp_ours.median), 0),
                    bar("veth pair", mpps(n.udp_veth.median), 1),
                ],
                legend: ["ours (simulated)", "veth (same run)", ""],
            });
        }
        Err(e) => {
            eprintln!("network suite not run: {e}");
            r.row(&[
                format!("not run: {e}"),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
    }
}

/// A real-Xen workload's row name and how its per-item ns read as a rate.
fn real_xen_workload(p: &realxen::Pair) -> (String, Box<dyn Fn(f64) -> String>) {
    let mib = p.bytes as f64 / 1_048_576.0;
    let echo = |size: &str| {
        (
            format!(
                "ICMP echo to dom0, {size} data bytes, one at a time ({} per rep)",
                p.a.items
            ),
            Box::new(|ns: f64| format!("{:.1}/s ({:.2} ms)", 1e9 / ns, ns / 1e6))
                as Box<dyn Fn(f64) -> String>,
        )
    };
    match p.op.as_str() {
        "write" => (
            format!("sequential write, {mib:.0} MiB O_DIRECT, 1 MiB blocks"),
            Box::new(|ns| format!("{:.1} MB/s", 1_048_576.0 / ns * 1e3)),
        ),
        "read" => (
            format!("sequential read, {mib:.0} MiB O_DIRECT, 1 MiB blocks"),
            Box::new(|ns| format!("{:.1} MB/s", 1_048_576.0 / ns * 1e3)),
        ),
        "read4k" => (
            format!("4 KiB O_DIRECT reads, QD 1 ({} per rep)", p.a.items),
            Box::new(|ns| format!("{:.0} IOPS ({:.2} ms)", 1e9 / ns, ns / 1e6)),
        ),
        "echo56" => echo("56"),
        "echo1400" => echo("1400"),
        _ => (
            format!("TCP domU → dom0, {mib:.0} MiB (busybox nc)"),
            Box::new(|ns| format!("{:.1} Mbit/s", 8.0 * 1_048_576.0 / ns * 1e3)),
        ),
    }
}

/// The `key=value` (or `key value`) pairs of `keys` found in the first feature line that
/// starts with `prefix`, as `key=value ...` (for the table's negotiated column).
fn feature_digest(features: &[String], prefix: &str, keys: &[&str]) -> String {
    let Some(line) = features.iter().find(|f| f.starts_with(prefix)) else {
        return "?".into();
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut out = Vec::new();
    for key in keys {
        for (i, w) in words.iter().enumerate() {
            if let Some(v) = w.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                out.push(format!("{key}={v}"));
                break;
            }
            if *w == *key {
                if let Some(v) = words.get(i + 1) {
                    out.push(format!("{key}={v}"));
                    break;
                }
            }
        }
    }
    out.join(" ")
}

/// The frontends table: a Linux domU's blkfront/netfront (path a) vs our PVH guest's (path
/// c), both against Linux dom0's xen-blkback/xen-netback, in the same boot.
fn real_xen_frontends(r: &mut Report, x: &realxen::RealXen) {
    r.section(
        "Real Xen (QEMU TCG, same boot): our PVH guest's frontends vs a Linux guest's, on Linux dom0's backends",
        "Path **a**: the Linux 6.1 PVH domU (2 vCPUs) above, its xen-blkfront on `xvda` and \
         xen-netfront on `vif/0`, served by Linux dom0's xen-blkback (`brd` RAM disk) and \
         xen-netback (`xenbr0`). Path **c**: our bare-metal PVH guest (`tests/pvh-guest`, \
         `run=bench`, 1 vCPU) after the domU has gone, our blkfront on the same RAM disk \
         through the same xen-blkback and our netfront on the same xen-netback and bridge. \
         Same workload: sequential writes and reads in 1 MiB requests (the domU's \
         `dd bs=1M` with O_DIRECT; ours 1 MiB bios), 4 KiB reads one at a time, ICMP echo \
         exchanges to dom0 one at a time (the domU's `ping -A`; ours from its own small \
         stack; dom0's kernel answers both, no dom0 process in the loop; our guest has no \
         TCP). The domU times itself with `/proc/uptime` (10 ms) around each command, so \
         its figures include starting `dd`/`ping`; ours are Xen system time around the \
         bios/exchanges alone. The two guests run one after the other, not alternating. \
         Ratio: c's rate ÷ a's (above 1: ours faster).",
        &[
            "workload",
            "(a) Linux domU frontends",
            "(c) our PVH guest frontends",
            "ratio c/a (median; best)",
            "negotiated (a \\| c)",
        ],
    );
    let blk_a = feature_digest(
        &x.features,
        "BENCHFEAT blk a ",
        &["queues", "max_segments", "max_hw_sectors_kb"],
    );
    let blk_c = feature_digest(
        &x.features,
        "BENCHFEAT blk c ",
        &["queues", "ring-order", "max-segs", "persistent", "indirect"],
    );
    let net_a = feature_digest(
        &x.features,
        "FEAT net-a-frontend",
        &["multi-queue-num-queues", "feature-sg", "feature-gso-tcpv4"],
    );
    // Our guest's own line: it finishes its echoes faster than dom0's xenstore snapshot of
    // its vif comes (that one was empty in a run).
    let net_c = feature_digest(
        &x.features,
        "BENCHFEAT net c ",
        &["queues", "split", "sg", "gso4"],
    );
    let mut bars = Vec::new();
    for p in &x.frontends {
        let (name, show) = real_xen_workload(p);
        let neg = if p.op.starts_with("echo") || p.op == "tcp" {
            format!("{net_a} \\| {net_c}")
        } else {
            format!("{blk_a} \\| {blk_c}")
        };
        r.row(&[
            format!("{name}; {} / {} reps", p.a.reps, p.b.reps),
            format!("{} (best {})", show(p.a.median), show(p.a.min)),
            format!("{} (best {})", show(p.b.median), show(p.b.min)),
            format!(
                "**{:.3}**; {:.3}",
                p.a.median / p.b.median,
                p.a.min / p.b.min
            ),
            neg,
        ]);
        let unit = if p.op.starts_with("read4k") || p.op.starts_with("echo") {
            "ns/request"
        } else {
            "ns/MiB"
        };
        r.csv("real-xen", &format!("{}-linux-domu-fe", p.op), unit, &p.a);
        r.csv("real-xen", &format!("{}-our-pvh-fe", p.op), unit, &p.b);
        bars.push(bar(p.op.clone(), p.a.median / p.b.median, 1));
    }
    if x.frontends.is_empty() {
        r.row(&[
            format!(
                "not measured: {}",
                if x.pvh_result.is_empty() {
                    "no RESULT bench line from our PVH guest"
                } else {
                    x.pvh_result.as_str()
                }
            ),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    let _ = writeln!(r.md, "\nOur PVH guest: `{}`.", x.pvh_result);
    if !x.lost.is_empty() {
        let _ = writeln!(r.md, "Echo replies missing: {}.", x.lost.join("; "));
    }
    if !bars.is_empty() {
        r.charts.push(Chart {
            file: "real-xen-frontends.png".into(),
            title: "Real Xen (TCG, same boot): our PVH / Linux domU frontends, rate".into(),
            unit: "x".into(),
            bars,
            legend: ["", "ours / Linux frontends (1 = parity)", ""],
        });
    }
}

/// The real-Xen table: the same Linux domU workload through dom0's backends and ours.
fn real_xen_section(r: &mut Report, out: &std::path::Path, reuse: bool) {
    r.section(
        "Real Xen (QEMU TCG, one boot): Linux dom0's backends vs our driver domain's",
        "One Xen 4.17 boot under QEMU TCG (`xen-harness bench`): one Linux 6.1 PVH domU (2 \
         vCPUs) with two disks and two vifs. Path **a**: `xvda` served by Linux dom0's \
         xen-blkback on a `brd` RAM disk, `vif/0` on dom0's xen-netback on `xenbr0`. Path \
         **b**: `xvdb` served by our driver domain's blkback (its RAM disk), `vif/1` by our \
         driver domain's netback, bridged to its own netfront on `xenbr0`. The domU runs the \
         same commands on both, alternating a/b (b/a on even repetitions), timed with its own \
         clock (`/proc/uptime`, 10 ms): busybox `dd` O_DIRECT sequential write and read in 1 \
         MiB blocks, 4 KiB O_DIRECT reads one at a time, busybox `nc` of a file to dom0 over \
         TCP, ICMP echo exchanges one at a time (`ping -A`, 56 and 1400 data bytes); busybox \
         `ping` domU → dom0 (average RTT). Under TCG every figure is that of an emulated CPU on \
         a shared machine: **only the ratios b/a mean anything**. Ratio: b's rate ÷ a's (for \
         RTT: b's time ÷ a's).",
        &[
            "workload",
            "(a) Linux dom0 backends",
            "(b) our driver domain",
            "ratio b/a (median; best)",
        ],
    );
    let x = match realxen::run_suite(out, reuse) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("real-xen suite not run: {e}");
            r.row(&[
                format!("not run: {e}"),
                String::new(),
                String::new(),
                String::new(),
            ]);
            return;
        }
    };
    let mut bars = Vec::new();
    for p in &x.pairs {
        let (name, show) = real_xen_workload(p);
        r.row(&[
            format!("{name}; {} reps", p.a.reps.min(p.b.reps)),
            format!("{} (best {})", show(p.a.median), show(p.a.min)),
            format!("{} (best {})", show(p.b.median), show(p.b.min)),
            format!(
                "**{:.3}**; {:.3}",
                p.a.median / p.b.median,
                p.a.min / p.b.min
            ),
        ]);
        let unit = if p.op == "read4k" || p.op.starts_with("echo") {
            "ns/request"
        } else {
            "ns/MiB"
        };
        r.csv("real-xen", &format!("{}-linux-dom0", p.op), unit, &p.a);
        r.csv("real-xen", &format!("{}-our-dd", p.op), unit, &p.b);
        bars.push(bar(p.op.clone(), p.a.median / p.b.median, 0));
    }
    for (dir, what) in [("out", "ping domU → dom0"), ("in", "ping dom0 → domU")] {
        if let (Some(a), Some(b)) = (
            x.ping.get(&(dir.to_string(), 'a')),
            x.ping.get(&(dir.to_string(), 'b')),
        ) {
            r.row(&[
                format!("{what}, average RTT of 5"),
                format!("{a:.2} ms"),
                format!("{b:.2} ms"),
                format!("**{:.2}** (RTT b ÷ a)", b / a),
            ]);
            let _ = writeln!(
                r.csv,
                "real-xen,ping-{dir}-linux-dom0,ms,{a:.3},{a:.3},{a:.3},1,5"
            );
            let _ = writeln!(
                r.csv,
                "real-xen,ping-{dir}-our-dd,ms,{b:.3},{b:.3},{b:.3},1,5"
            );
        }
    }
    let _ = writeln!(
        r.md,
        "
Verdict: {}; {}.",
        x.verdict, x.boot
    );
    let _ = writeln!(
        r.md,
        "Read back after the runs: {}.",
        if x.verified.is_empty() {
            "not checked".to_string()
        } else {
            x.verified.join(", ")
        }
    );
    if !x.errors.is_empty() {
        let _ = writeln!(r.md, "Not measured: {}.", x.errors.join("; "));
    }
    let _ = writeln!(
        r.md,
        "\nNegotiated (domU's view: `BENCHFEAT`; xenstore while connected, digested from \
         `bench-xenstore.txt`: `FEAT`; the driver domain's own report: `RESULT`):\n"
    );
    for f in x.features.iter().chain(&x.dd_results) {
        let _ = writeln!(r.md, "- `{f}`");
    }
    if !bars.is_empty() {
        r.charts.push(Chart {
            file: "real-xen.png".into(),
            title: "Real Xen (TCG, one boot): our driver domain / Linux dom0, rate ratio".into(),
            unit: "x".into(),
            bars,
            legend: ["ours / Linux dom0 (1 = parity)", "", ""],
        });
    }
    real_xen_frontends(r, &x);
}

fn main() {
    let mut out = PathBuf::from("target/bench");
    let mut scale = Scale::FULL;
    let mut only: Option<Vec<String>> = None;
    let mut real_xen_logs: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => {
                out = args
                    .next()
                    .map(PathBuf::from)
                    .expect("--out needs a folder")
            }
            "--quick" => scale = Scale::QUICK,
            // The logs of an earlier `xen-harness bench --out DIR`: tables without a boot.
            "--real-xen-logs" => real_xen_logs = args.next().map(PathBuf::from),
            "--only" => {
                only = args
                    .next()
                    .map(|v| v.split(',').map(str::to_string).collect());
            }
            other => {
                eprintln!(
                    "usage: xen-bench [--out DIR] [--quick] [--only ring,gnttab,evtchn,parse,blk,net,real-xen]\n\
                     unknown argument `{other}`"
                );
                std::process::exit(2);
            }
        }
    }
    let want = |suite: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == suite));
    let load0 = load_average();
    let t0 = Instant::now();
    let (model, threads, mhz) = cpu_info();
    let mut r = Report {
        md: String::new(),
        csv: "suite,case,unit,median,min,max,reps,items\n".into(),
        charts: Vec::new(),
    };
    let _ = writeln!(
        r.md,
        "Machine: {model}, {threads} hardware threads (nproc), {mhz:.0} MHz reported by \
         /proc/cpuinfo; rustc release profile; `{}` repetitions after one warm-up, median \
         and minimum per item (this machine may be shared: the minimum is the least \
         disturbed repetition); µs rows show ±half the min..max range.",
        scale.reps
    );
    println!("{}", r.md);

    // Ring.
    if want("ring") {
        progress(t0, "ring: xen-ring vs io/ring.h (24 and 112-byte entries)");
        r.section(
            "Shared ring: xen-ring vs Xen's C io/ring.h",
            "One thread, one page, both ends in turn: fill every free slot, publish and check \
         notify, consume all + final check, answer all, publish, consume all + final check. \
         ns per request/response round trip; ratio = xen-ring ÷ C (lower is better, 1.0 = \
         parity).",
            &[
                "entry",
                "slots",
                "xen-ring",
                "io/ring.h (C, cc -O2)",
                "ratio Rust/C (median; min)",
                "notifies per 1k (Rust / C)",
            ],
        );
        let ring = micro::ring(&scale);
        let mut bars = Vec::new();
        for x in &ring {
            bars.push(bar(
                format!("xen-ring, {} B entries", x.entry),
                x.rust.median,
                0,
            ));
            bars.push(bar(
                format!("io/ring.h, {} B entries", x.entry),
                x.c.median,
                1,
            ));
        }
        r.charts.push(Chart {
            file: "ring.png".into(),
            title: "Shared ring round trip, ns (median; lower is better)".into(),
            unit: "ns".into(),
            bars,
            legend: ["xen-ring (Rust)", "Xen io/ring.h (C, cc -O2)", ""],
        });
        for x in ring {
            r.row(&[
                format!("{} B", x.entry),
                x.slots.to_string(),
                x.rust.show_ns(),
                x.c.show_ns(),
                format!(
                    "**{:.2}**; {:.2}",
                    x.rust.median / x.c.median,
                    x.rust.min / x.c.min
                ),
                format!("{:.1} / {:.1}", x.notifies_per_k.0, x.notifies_per_k.1),
            ]);
            r.csv(
                "ring",
                &format!("rust-{}B", x.entry),
                "ns/round-trip",
                &x.rust,
            );
            r.csv("ring", &format!("c-{}B", x.entry), "ns/round-trip", &x.c);
        }
    }

    // Grants.
    if want("gnttab") {
        progress(t0, "grant references: RefStack vs Vec free list");
        r.section(
            "Grant-reference allocation",
            "xen-gnttab's lock-free `RefStack` (Treiber stack with ABA tag; what every driver \
         uses) vs a plain single-threaded `Vec<u32>` free list. Take `batch` references, \
         return them; ns per alloc+free pair.",
            &[
                "batch",
                "RefStack",
                "Vec free list",
                "ratio RefStack/Vec (median; min)",
            ],
        );
        let mut bars = Vec::new();
        for batch in [1u32, 32] {
            let (ours, base) = micro::grant_refs(&scale, batch);
            bars.push(bar(format!("RefStack, batch {batch}"), ours.median, 0));
            bars.push(bar(format!("Vec free list, batch {batch}"), base.median, 1));
            r.row(&[
                batch.to_string(),
                ours.show_ns(),
                base.show_ns(),
                format!(
                    "**{:.2}**; {:.2}",
                    ours.median / base.median,
                    ours.min / base.min
                ),
            ]);
            r.csv("gnttab", &format!("refstack-b{batch}"), "ns/pair", &ours);
            r.csv("gnttab", &format!("vec-b{batch}"), "ns/pair", &base);
        }
        r.charts.push(Chart {
            file: "gnttab.png".into(),
            title: "Grant reference alloc+free, ns per pair (median)".into(),
            unit: "ns".into(),
            bars,
            legend: [
                "xen-gnttab RefStack (lock-free)",
                "Vec<u32> (single thread)",
                "",
            ],
        });
    }

    // Event channels.
    if want("evtchn") {
        progress(
            t0,
            "event channels: 2-level and FIFO upcall scan over xensim",
        );
        r.section(
            "Event-channel upcall scan (2-level and FIFO)",
            "`xen-evtchn` `EventChannels::poll` over xensim (2-level: shared_info bitmaps; FIFO: \
         event array pages and per-vCPU control block): `bound` IPI ports on vCPU 0, \
         `pending` of them raised (untimed, through EVTCHNOP_send in the simulator), then \
         poll until all are delivered (timed). ns per delivered event, and per scan.",
            &[
                "ABI",
                "bound",
                "pending",
                "ns per event",
                "ns per full scan",
                "events/s",
            ],
        );
        let mut bars = Vec::new();
        for (bound, stride, fifo) in [
            (64u32, 1u32, false),
            (1024, 1, false),
            (1024, 64, false),
            (4000, 1, false),
            (4000, 250, false),
            (1024, 1, true),
            (1024, 64, true),
            (4000, 1, true),
            (4000, 250, true),
        ] {
            let s = micro::evtchn_scan(&scale, bound, stride, fifo);
            // What the channels negotiated (micro::evtchn_scan checks it is what was asked).
            let abi = match s.abi {
                xen_evtchn::Abi::Fifo => "FIFO",
                xen_evtchn::Abi::TwoLevel => "2-level",
            };
            bars.push(bar(
                format!("{abi}: {} pending of {}", s.pending, s.bound),
                s.per_event.median,
                u8::from(fifo) * 2,
            ));
            r.row(&[
                abi.into(),
                s.bound.to_string(),
                s.pending.to_string(),
                s.per_event.show_ns(),
                format!("{:.0} ns", s.per_event.median * f64::from(s.pending)),
                format!("{:.1} M", s.per_event.per_sec() / 1e6),
            ]);
            r.csv(
                "evtchn",
                &format!(
                    "scan-{}-{}-{}",
                    if fifo { "fifo" } else { "2l" },
                    s.bound,
                    s.pending
                ),
                "ns/event",
                &s.per_event,
            );
        }
        r.charts.push(Chart {
            file: "evtchn.png".into(),
            title: "Event-channel upcall scan, ns per delivered event (median)".into(),
            unit: "ns".into(),
            bars,
            legend: ["2-level", "", "FIFO"],
        });
    }

    // Parsing.
    if want("parse") {
        progress(t0, "request parsing: blkif and netif TX");
        r.section(
            "Request parsing",
            "Per item, on local copies (the ring copy is measured above): blkif \
         `Request::parse` (operation, 1..11 segments, sector range and alignment checks) and \
         netif `TxAssembler::push` (slot framing, sizes, flags). No C baseline in this run.",
            &["what", "ns per item", "M items/s"],
        );
        let b = micro::blkif_parse(&scale);
        r.row(&[
            "blkif request parse (1..11 segments)".into(),
            b.show_ns(),
            format!("{:.1}", b.per_sec() / 1e6),
        ]);
        r.csv("parse", "blkif", "ns/request", &b);
        let mut bars = vec![bar("blkif Request::parse", b.median, 0)];
        for slots in [1u16, 3] {
            let n = micro::netif_tx(&scale, slots);
            r.row(&[
                format!("netif TX assembly, {slots}-slot packets (per slot)"),
                n.show_ns(),
                format!("{:.1}", n.per_sec() / 1e6),
            ]);
            r.csv("parse", &format!("netif-tx-{slots}"), "ns/slot", &n);
            bars.push(bar(format!("netif TX, {slots}-slot packets"), n.median, 0));
        }
        r.charts.push(Chart {
            file: "parse.png".into(),
            title: "Request parsing, ns per request / slot (median)".into(),
            unit: "ns".into(),
            bars,
            legend: ["xen-blkback / xen-netif", "", ""],
        });
    }

    // End to end.
    if want("blk") {
        progress(t0, "memcpy bandwidth (64 MiB, one core)");
        let mc = e2e::memcpy_64m(&scale);
        let mc_gbs = 1_048_576.0 / mc.median; // bytes per ns = GB/s
        progress(t0, "blkfront<->blkback over xensim: 4 KiB random read, QD1");
        let q1 = e2e::random_read_4k(&scale, 1);
        progress(
            t0,
            "blkfront<->blkback over xensim: 4 KiB random read, QD32",
        );
        let q32 = e2e::random_read_4k(&scale, 32);
        progress(
            t0,
            "blkfront<->blkback over xensim: 1 MiB sequential read, depth 4",
        );
        let seq = e2e::sequential_1m(&scale, 4);
        let seq_gbs = 1_048_576.0 / seq.median;
        r.section(
            "Simulated end to end: blkfront ↔ blkback over xensim",
            "Both real driver cores, xensim's grant tables, event channels and xenstored, and \
         the `blk_e2e` harness's driving loop, all on one thread; disk = 64 MiB image file \
         (page cache). Default features (persistent grants, indirect segments, multi-page \
         ring, multi-queue). Cycles = ns × the clock /proc/cpuinfo reports.",
            &[
                "workload",
                "median",
                "rate",
                "cycles per request",
                "vs memcpy",
            ],
        );
        let cyc = |ns: f64| {
            if mhz > 0.0 {
                format!("{:.0}", ns * mhz / 1000.0)
            } else {
                "n/a".into()
            }
        };
        for (name, s) in [
            ("4 KiB random read, QD 1", &q1),
            ("4 KiB random read, QD 32", &q32),
        ] {
            r.row(&[
                name.into(),
                format!(
                    "{:.2} µs/req (±{:.0}%)",
                    s.median / 1000.0,
                    s.spread_pct() / 2.0
                ),
                format!("{:.0} IOPS", s.per_sec()),
                cyc(s.median),
                "".into(),
            ]);
        }
        r.row(&[
            "1 MiB sequential read, 4 in flight".into(),
            format!(
                "{:.0} µs/MiB (±{:.0}%)",
                seq.median / 1000.0,
                seq.spread_pct() / 2.0
            ),
            format!("{seq_gbs:.2} GB/s"),
            cyc(seq.median),
            format!("**{:.3}** of memcpy", seq_gbs / mc_gbs),
        ]);
        r.row(&[
            "memcpy 64 MiB, one core (baseline)".into(),
            format!(
                "{:.0} µs/MiB (±{:.0}%)",
                mc.median / 1000.0,
                mc.spread_pct() / 2.0
            ),
            format!("{mc_gbs:.2} GB/s"),
            "".into(),
            "1".into(),
        ]);
        r.csv("blk-e2e", "rand4k-qd1", "ns/request", &q1);
        r.csv("blk-e2e", "rand4k-qd32", "ns/request", &q32);
        r.csv("blk-e2e", "seq1m-d4", "ns/MiB", &seq);
        r.csv("memcpy", "64MiB", "ns/MiB", &mc);
        r.charts.push(Chart {
            file: "blk.png".into(),
            title: "Simulated blkfront-blkback: 1 MiB sequential read vs memcpy, GB/s".into(),
            unit: "GB/s".into(),
            bars: vec![
                bar("blkfront-xensim-blkback", seq_gbs, 0),
                bar("memcpy 64 MiB, one core", mc_gbs, 1),
            ],
            legend: ["ours (simulated)", "memcpy ceiling", ""],
        });
        r.charts.push(Chart {
            file: "blk-iops.png".into(),
            title: "Simulated blkfront-blkback: 4 KiB random read, kIOPS".into(),
            unit: "k".into(),
            bars: vec![
                bar("queue depth 1", q1.per_sec() / 1e3, 0),
                bar("queue depth 32", q32.per_sec() / 1e3, 0),
            ],
            legend: ["ours (simulated)", "", ""],
        });
    }

    // Network end to end.
    if want("net") {
        progress(
            t0,
            "netfront<->xensim<->netback between namespaces vs veth: TCP and 64-byte UDP",
        );
        net_section(&mut r, &scale);
    }

    // Real Xen: one boot (minutes), so `--quick` leaves it out unless it is named.
    let quick = scale.reps == Scale::QUICK.reps;
    if want("real-xen") && (!quick || only.is_some() || real_xen_logs.is_some()) {
        progress(
            t0,
            "real Xen (QEMU TCG, one boot, ~10 min): Linux domU via dom0's backends vs our driver domain",
        );
        match &real_xen_logs {
            Some(logs) => real_xen_section(&mut r, logs, true),
            None => real_xen_section(&mut r, &out.join("real-xen"), false),
        }
    }

    let total = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(&out).expect("create the output folder");
    if !r.charts.is_empty() {
        let _ = writeln!(r.md, "\n### Plots\n");
    }
    for c in &r.charts {
        std::fs::write(out.join(&c.file), plot::render(c)).expect("write a plot");
        let _ = writeln!(r.md, "{}\n", plot::markdown(c, "."));
    }
    let _ = writeln!(
        r.md,
        "\nTotal run time: {total:.0} s. Load average (1, 5, 15 min) at the start: {load0}; \
         at the end: {}.",
        load_average()
    );
    std::fs::write(out.join("results.md"), &r.md).expect("write results.md");
    std::fs::write(out.join("results.csv"), &r.csv).expect("write results.csv");
    progress(
        t0,
        &format!("wrote {}/results.md and results.csv", out.display()),
    );
}
