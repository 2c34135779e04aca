//! Reading the serial console: markers, guest `RESULT` lines, dom0 `CHECK` lines, per-run
//! logs, deadlines, and the verdict of each scenario.
//!
//! Everything arrives on one stream (QEMU's serial port): Xen's own messages (`(XEN) ...`),
//! each guest's debug-port output (`(dN) ...`, Xen prints it with `guest_loglvl=all`) and
//! dom0's console (hvc0, passed through by Xen without a prefix).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::plan::{Run, Scenario, Source};

/// From QEMU start to `=== DOM0 UP`.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// From `=== DOM0 UP` to `=== TOOLS UP`.
pub const TOOLS_TIMEOUT: Duration = Duration::from_secs(120);
/// For one run, from the previous marker to its `=== RUN <id> END`.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// After `=== ALL DONE`, for QEMU to exit by itself.
pub const EXIT_GRACE: Duration = Duration::from_secs(20);

/// One verdict line (guest `RESULT` or dom0 `CHECK`).
#[derive(Debug, Clone)]
pub struct Verdict {
    /// PASS or FAIL.
    pub pass: bool,
    /// The rest of the line.
    pub detail: String,
    /// When it arrived.
    pub at: Instant,
}

/// What happened during one guest run.
#[derive(Debug)]
pub struct RunState {
    /// The plan.
    pub run: Run,
    /// Its domain id, once dom0 reported it.
    pub domid: Option<u32>,
    /// `=== RUN <id> BEGIN`.
    pub begin: Option<Instant>,
    /// `=== RUN <id> END`.
    pub end: Option<Instant>,
    /// `RESULT` lines by name.
    pub guest: BTreeMap<String, Verdict>,
    /// `CHECK` lines by scenario name.
    pub dom0: BTreeMap<String, Verdict>,
    /// The guest's debug-port lines.
    pub guest_log: Vec<String>,
    /// dom0's console during the run.
    pub dom0_log: Vec<String>,
    /// Xen's messages during the run.
    pub xen_log: Vec<String>,
    /// Files dom0 dumped (`=== FILE`).
    pub files: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Booting,
    Dom0Up,
    ToolsUp,
    Done,
}

/// What the caller should do after a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Keep reading.
    Continue,
    /// Every run finished (`=== ALL DONE`).
    Done,
    /// Nothing more will happen; the reason.
    Fatal(String),
}

/// The state of one boot.
#[derive(Debug)]
pub struct Monitor {
    /// Every planned run.
    pub runs: Vec<RunState>,
    by_domid: HashMap<u32, usize>,
    /// Guest lines of domains not yet named by a `DOMID` marker.
    unclaimed: HashMap<u32, Vec<(Instant, String)>>,
    current: Option<usize>,
    phase: Phase,
    started: Instant,
    phase_at: Instant,
    file: Option<(String, Vec<String>)>,
    /// Lines outside any run (boot, set-up, tear-down).
    pub boot_log: Vec<String>,
    /// When dom0 came up, relative to the start.
    pub dom0_up: Option<Duration>,
    /// When Xen's tools came up, relative to the start.
    pub tools_up: Option<Duration>,
    /// Why the boot ended early, if it did.
    pub fatal: Option<String>,
}

/// Splits `(dN) text` into `(N, text)`; Xen may put a `[timestamp] ` first.
fn guest_line(line: &str) -> Option<(u32, &str)> {
    let line = match line.strip_prefix('[') {
        Some(rest) => rest.split_once("] ").map_or(line, |(_, r)| r),
        None => line,
    };
    let rest = line.strip_prefix("(d")?;
    let (num, text) = rest.split_once(')')?;
    let domid = num.parse().ok()?;
    Some((domid, text.strip_prefix(' ').unwrap_or(text)))
}

/// Where a `(dN) ` guest prefix starts inside `line` (not at its start), if it does.
fn embedded_guest_line(line: &str) -> Option<usize> {
    line.match_indices("(d").map(|(i, _)| i).find(|&i| {
        i > 0 && {
            let rest = &line[i + 2..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            digits > 0 && rest[digits..].starts_with(") ")
        }
    })
}

/// `PASS detail` / `FAIL detail`.
fn verdict(rest: &str, at: Instant) -> Option<Verdict> {
    let (word, detail) = rest.split_once(' ').unwrap_or((rest, ""));
    let pass = match word {
        "PASS" => true,
        "FAIL" => false,
        _ => return None,
    };
    Some(Verdict {
        pass,
        detail: detail.trim().to_string(),
        at,
    })
}

impl Monitor {
    /// A monitor for `runs`, starting now.
    pub fn new(runs: Vec<Run>, started: Instant) -> Monitor {
        Monitor {
            runs: runs
                .into_iter()
                .map(|run| RunState {
                    run,
                    domid: None,
                    begin: None,
                    end: None,
                    guest: BTreeMap::new(),
                    dom0: BTreeMap::new(),
                    guest_log: Vec::new(),
                    dom0_log: Vec::new(),
                    xen_log: Vec::new(),
                    files: Vec::new(),
                })
                .collect(),
            by_domid: HashMap::new(),
            unclaimed: HashMap::new(),
            current: None,
            phase: Phase::Booting,
            started,
            phase_at: started,
            file: None,
            boot_log: Vec::new(),
            dom0_up: None,
            tools_up: None,
            fatal: None,
        }
    }

    /// When the current phase times out, and what to call it then.
    pub fn deadline(&self) -> (Instant, &'static str) {
        match self.phase {
            Phase::Booting => (self.phase_at + BOOT_TIMEOUT, "Xen + dom0 did not come up"),
            Phase::Dom0Up => (
                self.phase_at + TOOLS_TIMEOUT,
                "xenstored/xenconsoled did not come up",
            ),
            Phase::ToolsUp => {
                let limit = self
                    .current
                    .map_or(RUN_TIMEOUT, |i| self.runs[i].run.kind.timeout());
                (self.phase_at + limit, "a guest run did not finish")
            }
            Phase::Done => (
                self.phase_at + EXIT_GRACE,
                "QEMU did not exit after dom0 finished",
            ),
        }
    }

    /// Whether `=== ALL DONE` was seen.
    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether a line is worth echoing as progress.
    pub fn is_progress(line: &str) -> bool {
        line.starts_with("=== ")
            || line.starts_with("CHECK ")
            || guest_line(line).is_some_and(|(_, t)| {
                t.starts_with("RESULT ") || t.starts_with("FATAL") || t.starts_with("PANIC")
            })
            || line.contains("Panic on CPU")
            || line.contains("Kernel panic")
    }

    fn run_index(&self, id: &str) -> Option<usize> {
        self.runs.iter().position(|r| r.run.id() == id)
    }

    fn log_line(&mut self, line: &str) {
        match self.current {
            Some(i) if line.starts_with("(XEN)") => self.runs[i].xen_log.push(line.to_string()),
            Some(i) => self.runs[i].dom0_log.push(line.to_string()),
            None => self.boot_log.push(line.to_string()),
        }
    }

    fn guest_output(&mut self, i: usize, at: Instant, text: &str) {
        let r = &mut self.runs[i];
        r.guest_log.push(text.to_string());
        if let Some(rest) = text.strip_prefix("RESULT ") {
            if let Some((name, rest)) = rest.split_once(' ') {
                if let Some(v) = verdict(rest, at) {
                    r.guest.insert(name.to_string(), v);
                }
            }
        }
    }

    /// Takes one serial line. A guest line Xen printed in the middle of one of dom0's (their
    /// writes are not line-atomic with respect to each other) is split off and taken
    /// separately.
    pub fn feed(&mut self, at: Instant, line: &str) -> Step {
        if let Some(pos) = embedded_guest_line(line) {
            let first = self.feed_one(at, &line[..pos]);
            if first != Step::Continue {
                return first;
            }
            return self.feed_one(at, &line[pos..]);
        }
        self.feed_one(at, line)
    }

    fn feed_one(&mut self, at: Instant, line: &str) -> Step {
        // A file dump from dom0 in progress.
        if let Some((name, mut body)) = self.file.take() {
            if line == format!("=== ENDFILE {name}") {
                if let Some(i) = self.current {
                    self.runs[i].files.push((name, body.join("\n")));
                }
            } else if line.starts_with("(XEN)") || guest_line(line).is_some() {
                self.file = Some((name, body));
                return self.feed_line(at, line);
            } else {
                body.push(line.to_string());
                self.file = Some((name, body));
            }
            return Step::Continue;
        }
        self.feed_line(at, line)
    }

    fn feed_line(&mut self, at: Instant, line: &str) -> Step {
        if let Some((domid, text)) = guest_line(line) {
            match self.by_domid.get(&domid) {
                Some(&i) => self.guest_output(i, at, text),
                None => self
                    .unclaimed
                    .entry(domid)
                    .or_default()
                    .push((at, text.to_string())),
            }
            return Step::Continue;
        }
        if line.contains("Panic on CPU") {
            self.log_line(line);
            return Step::Fatal(format!("Xen panicked: {line}"));
        }
        if line.contains("Kernel panic - not syncing") {
            self.log_line(line);
            return Step::Fatal(format!("dom0 panicked: {line}"));
        }
        if let Some(marker) = line.strip_prefix("=== ") {
            return self.marker(at, marker);
        }
        if let Some(rest) = line.strip_prefix("CHECK ") {
            let mut parts = rest.splitn(3, ' ');
            if let (Some(name), Some(arch), Some(rest), Some(i)) =
                (parts.next(), parts.next(), parts.next(), self.current)
            {
                if let Some(v) = verdict(rest, at) {
                    if self.runs[i].run.arch.name() == arch {
                        self.runs[i].dom0.insert(name.to_string(), v);
                    }
                }
            }
        }
        self.log_line(line);
        Step::Continue
    }

    fn marker(&mut self, at: Instant, marker: &str) -> Step {
        self.log_line(&format!("=== {marker}"));
        let words: Vec<&str> = marker.split_whitespace().collect();
        match words.as_slice() {
            ["DOM0", "UP"] => {
                self.phase = Phase::Dom0Up;
                self.phase_at = at;
                self.dom0_up = Some(at - self.started);
            }
            ["TOOLS", "UP"] => {
                self.phase = Phase::ToolsUp;
                self.phase_at = at;
                self.tools_up = Some(at - self.started);
            }
            ["RUN", id, "BEGIN"] => {
                self.current = self.run_index(id);
                self.phase_at = at;
                if let Some(i) = self.current {
                    self.runs[i].begin = Some(at);
                }
            }
            ["RUN", id, "DOMID", n] => {
                if let (Some(i), Ok(domid)) = (self.run_index(id), n.parse::<u32>()) {
                    self.runs[i].domid = Some(domid);
                    self.by_domid.insert(domid, i);
                    for (t, text) in self.unclaimed.remove(&domid).unwrap_or_default() {
                        self.guest_output(i, t, &text);
                    }
                }
            }
            ["RUN", id, "END"] => {
                if let Some(i) = self.run_index(id) {
                    self.runs[i].end = Some(at);
                }
                self.current = None;
                self.phase_at = at;
            }
            ["FILE", name] => self.file = Some(((*name).to_string(), Vec::new())),
            ["ALL", "DONE"] => {
                self.phase = Phase::Done;
                self.phase_at = at;
                return Step::Done;
            }
            ["FATAL", ..] => return Step::Fatal(format!("dom0: {marker}")),
            _ => {}
        }
        Step::Continue
    }

    /// The verdict of `scenario` for run `i`: pass, detail, duration.
    pub fn scenario_verdict(
        &self,
        i: usize,
        scenario: Scenario,
    ) -> (bool, String, Option<Duration>) {
        let r = &self.runs[i];
        let mut details = Vec::new();
        let mut pass = true;
        let mut last: Option<Instant> = None;
        for source in scenario.sources() {
            let (v, what) = match source {
                Source::Guest(name) => (r.guest.get(*name), format!("guest RESULT {name}")),
                Source::Dom0(name) => (r.dom0.get(*name), format!("dom0 CHECK {name}")),
            };
            match v {
                Some(v) => {
                    pass &= v.pass;
                    last = Some(last.map_or(v.at, |l| l.max(v.at)));
                    if !v.pass || details.is_empty() {
                        details.push(v.detail.clone());
                    }
                }
                None => {
                    pass = false;
                    details.push(format!("no {what}: {}", self.why_missing(i)));
                }
            }
        }
        if !pass {
            details.retain(|d| !d.is_empty());
        }
        let took = match (r.begin, last.or(r.end)) {
            (Some(b), Some(e)) if e >= b => Some(e - b),
            _ => None,
        };
        (pass, details.join("; "), took)
    }

    /// The best explanation for a verdict line that never came.
    fn why_missing(&self, i: usize) -> String {
        let r = &self.runs[i];
        if let Some(v) = r.dom0.get("create") {
            return v.detail.clone();
        }
        if let Some(line) = r
            .guest_log
            .iter()
            .rev()
            .find(|l| l.starts_with("FATAL") || l.starts_with("PANIC"))
        {
            return format!("guest: {line}");
        }
        if let Some(f) = &self.fatal {
            return f.clone();
        }
        if r.begin.is_none() {
            return "the run never started".into();
        }
        match r.guest_log.last() {
            Some(l) => format!("last guest line: {l}"),
            None => "the guest printed nothing".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{runs, Arch};

    fn feed_all(m: &mut Monitor, t: Instant, lines: &[&str]) -> Vec<Step> {
        lines.iter().map(|l| m.feed(t, l)).collect()
    }

    #[test]
    fn a_whole_boot_is_understood() {
        let t = Instant::now();
        let plan = runs(&Scenario::ALL, &[Arch::I686], 1);
        let nonce = plan[0].nonce.clone();
        let mut m = Monitor::new(plan, t);
        let steps = feed_all(
            &mut m,
            t,
            &[
                "(XEN) Xen version 4.17",
                "=== DOM0 UP",
                "=== TOOLS UP",
                "=== RUN basic-i686 BEGIN",
                "(d1) RESULT boot PASS xen 4.17",
                "=== RUN basic-i686 DOMID 1",
                "(d1) RESULT console PASS ring",
                "(d1) RESULT xenstore PASS ok",
                "CHECK xenstore i686 PASS dom0 ok",
                "(d1) RESULT upcall FAIL no upcall",
                "CHECK shutdown i686 PASS gone",
                "CHECK console i686 PASS logged",
                "=== FILE guest-console.log",
                &format!("pvh-guest i686 console ring nonce={nonce}"),
                "(XEN) interleaved",
                "=== ENDFILE guest-console.log",
                "=== RUN basic-i686 END",
                "=== RUN busy-i686 BEGIN",
                "=== RUN busy-i686 DOMID 2",
                "(d2) FATAL exception 14 error 0x2 ip 0x1",
                "=== RUN busy-i686 END",
                "=== ALL DONE",
            ],
        );
        assert_eq!(steps.last(), Some(&Step::Done));
        assert!(m.done());
        assert_eq!(m.runs[0].domid, Some(1));
        assert!(
            m.scenario_verdict(0, Scenario::Boot).0,
            "line before DOMID is replayed"
        );
        assert!(m.scenario_verdict(0, Scenario::Xenstore).0);
        assert!(m.scenario_verdict(0, Scenario::Console).0);
        assert!(m.scenario_verdict(0, Scenario::Shutdown).0);
        let (pass, why, _) = m.scenario_verdict(0, Scenario::Upcall);
        assert!(!pass);
        assert_eq!(why, "no upcall");
        let (pass, why, _) = m.scenario_verdict(1, Scenario::Destroy);
        assert!(!pass);
        assert!(why.contains("FATAL exception 14"), "{why}");
        assert_eq!(m.runs[0].files.len(), 1);
        assert!(m.runs[0].files[0].1.contains("nonce="));
        assert!(m.runs[0].xen_log.iter().any(|l| l.contains("interleaved")));
    }

    #[test]
    fn fatal_lines_and_deadlines() {
        let t = Instant::now();
        let mut m = Monitor::new(Vec::new(), t);
        assert_eq!(m.deadline().0, t + BOOT_TIMEOUT);
        assert_eq!(m.feed(t, "=== DOM0 UP"), Step::Continue);
        assert_eq!(m.deadline().0, t + TOOLS_TIMEOUT);
        assert!(matches!(
            m.feed(t, "(XEN) ****** Panic on CPU 0:"),
            Step::Fatal(_)
        ));
        assert!(matches!(m.feed(t, "=== FATAL xenstored"), Step::Fatal(_)));
        assert_eq!(guest_line("[2024-01-01] (d12) hello"), Some((12, "hello")));
        assert_eq!(guest_line("(XEN) x"), None);
        assert!(Monitor::is_progress("(d3) RESULT boot PASS x"));
        assert_eq!(
            embedded_guest_line("CHECK a b PASS x(d1) RESULT y"),
            Some(16)
        );
        assert_eq!(embedded_guest_line("(d1) RESULT y"), None);
        assert_eq!(embedded_guest_line("text (dx) y"), None);
        assert!(!Monitor::is_progress("(d3) entered"));
    }
}
