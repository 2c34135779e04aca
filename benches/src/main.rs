//! `xen-bench`: the benchmark suites behind `cargo kmod bench` (see BENCHMARKS.md).
//!
//! ```sh
//! cargo run --release -p xen-bench -- [--out DIR] [--quick]
//! ```
//!
//! Prints progress to stderr and each table as it is measured, then writes `results.md`
//! (the tables BENCHMARKS.md quotes) and `results.csv` (one row per measurement) into DIR
//! (default `target/bench`). Every ratio is between two figures of the same run.
#![expect(
    clippy::cast_possible_truncation,
    reason = "host-only benchmark code: counts and sizes far below 2^32, f64 for reporting"
)]

mod e2e;
mod harness;
mod micro;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use harness::Sample;

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
    };
}

struct Report {
    md: String,
    csv: String,
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

fn main() {
    let mut out = PathBuf::from("target/bench");
    let mut scale = Scale::FULL;
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
            other => {
                eprintln!("usage: xen-bench [--out DIR] [--quick]\nunknown argument `{other}`");
                std::process::exit(2);
            }
        }
    }
    let t0 = Instant::now();
    let (model, threads, mhz) = cpu_info();
    let mut r = Report {
        md: String::new(),
        csv: "suite,case,unit,median,min,max,reps,items\n".into(),
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
    for x in micro::ring(&scale) {
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

    // Grants.
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
    for batch in [1u32, 32] {
        let (ours, base) = micro::grant_refs(&scale, batch);
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

    // Event channels.
    progress(t0, "event channels: 2-level upcall scan over xensim");
    r.section(
        "Event-channel upcall scan (2-level)",
        "`xen-evtchn` `EventChannels::poll` over xensim's shared_info: `bound` IPI ports on \
         vCPU 0, `pending` of them raised (untimed, through EVTCHNOP_send in the simulator), \
         then poll until all are delivered (timed). ns per delivered event, and per scan.",
        &[
            "bound",
            "pending",
            "ns per event",
            "ns per full scan",
            "events/s",
        ],
    );
    for (bound, stride) in [(64u32, 1u32), (1024, 1), (1024, 64), (4000, 1), (4000, 250)] {
        let s = micro::evtchn_scan(&scale, bound, stride);
        r.row(&[
            s.bound.to_string(),
            s.pending.to_string(),
            s.per_event.show_ns(),
            format!("{:.0} ns", s.per_event.median * f64::from(s.pending)),
            format!("{:.1} M", s.per_event.per_sec() / 1e6),
        ]);
        r.csv(
            "evtchn",
            &format!("scan-{}-{}", s.bound, s.pending),
            "ns/event",
            &s.per_event,
        );
    }

    // Parsing.
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
    for slots in [1u16, 3] {
        let n = micro::netif_tx(&scale, slots);
        r.row(&[
            format!("netif TX assembly, {slots}-slot packets (per slot)"),
            n.show_ns(),
            format!("{:.1}", n.per_sec() / 1e6),
        ]);
        r.csv("parse", &format!("netif-tx-{slots}"), "ns/slot", &n);
    }

    // End to end.
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

    let total = t0.elapsed().as_secs_f64();
    let _ = writeln!(r.md, "\nTotal run time: {total:.0} s.");
    std::fs::create_dir_all(&out).expect("create the output folder");
    std::fs::write(out.join("results.md"), &r.md).expect("write results.md");
    std::fs::write(out.join("results.csv"), &r.csv).expect("write results.csv");
    progress(
        t0,
        &format!("wrote {}/results.md and results.csv", out.display()),
    );
}
