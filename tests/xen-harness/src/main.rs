//! `xen-harness`: the project's cores on a real Xen.
//!
//! Boots Xen 4.17 with a Linux PV dom0 in QEMU (TCG, no KVM needed), starts Xen's tools in
//! dom0, and has dom0's `/init` create the Rust PVH guest (tests/pvh-guest) with `xl` for
//! each planned run; the guest prints `RESULT` lines on Xen's debug port, dom0 prints `CHECK`
//! lines, and the harness turns them into one verdict per scenario per architecture. One Xen
//! boot serves every scenario and both architectures.
//!
//! ```text
//! xen-harness [run] [--arch x86_64|i686]... [--scenario NAME]... [--out DIR] [-v]
//! xen-harness prepare     # fetch packages, build guests and the dom0 image; no boot
//! xen-harness list        # the scenarios
//! xen-harness bench       # = --scenario bench (x86_64 unless --arch): bench.rs, issue 9
//! ```
//!
//! Logs: `<out>/serial.log` (the whole console) and `<out>/<scenario>-<arch>/` (see
//! docs/REAL-XEN.md). Exit status 0 only when every selected scenario passed.

mod assets;
mod bench;
mod cpio;
mod dom0;
mod domu;
mod guest;
mod hostile;
mod monitor;
mod plan;
mod qemu;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use monitor::{Monitor, Step};
use plan::{Arch, Scenario};
use qemu::{BootSpec, Output, Qemu};

const USAGE: &str = "usage: xen-harness [run|prepare|list|bench] [--arch x86_64|i686]... [--scenario NAME]... [--out DIR] [-v]";

/// Xen's command line: serial console, a fixed dom0 size, and every guest message (the
/// guests' debug-port lines) on the console.
const XEN_ARGS: &str =
    "console=com1 com1=115200,8n1 dom0_mem=512M,max:512M loglvl=all guest_loglvl=all";
/// dom0's command line.
const DOM0_ARGS: &str = "console=hvc0 earlyprintk=xen";

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Run,
    Prepare,
    List,
}

#[derive(Debug)]
struct Options {
    command: Command,
    arches: Vec<Arch>,
    scenarios: Vec<Scenario>,
    out: PathBuf,
    verbose: bool,
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map_or(manifest.clone(), Path::to_path_buf)
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        command: Command::Run,
        arches: Vec::new(),
        scenarios: Vec::new(),
        out: workspace_root().join("target/real-xen"),
        verbose: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "run" => o.command = Command::Run,
            "prepare" => o.command = Command::Prepare,
            "list" => o.command = Command::List,
            "bench" => o.scenarios.push(Scenario::Bench),
            "--arch" => o
                .arches
                .push(Arch::parse(it.next().ok_or("--arch needs a value")?)?),
            "--scenario" => o.scenarios.push(Scenario::parse(
                it.next().ok_or("--scenario needs a value")?,
            )?),
            "--out" => o.out = PathBuf::from(it.next().ok_or("--out needs a value")?),
            "-v" | "--verbose" => o.verbose = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if o.arches.is_empty() && o.scenarios == [Scenario::Bench] {
        // One architecture is enough for same-boot ratios (and halves the boot).
        o.arches = vec![Arch::X86_64];
    } else if o.arches.is_empty() {
        o.arches = Arch::ALL.to_vec();
    }
    if o.scenarios.is_empty() {
        o.scenarios = Scenario::ALL.to_vec();
    }
    o.arches.sort();
    o.arches.dedup();
    o.scenarios.sort();
    o.scenarios.dedup();
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xen-harness: {e}");
            // One failure per selected check, so a caller counting lines sees them fail.
            for arch in &options.arches {
                for s in &options.scenarios {
                    println!("real-xen {} {arch} FAIL 0.0s harness error: {e}", s.name());
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// Everything before the boot: packages, guests, dom0 image.
fn prepare(o: &Options, runs: &[plan::Run]) -> Result<(assets::Assets, PathBuf), String> {
    assets::check_host()?;
    let assets = assets::fetch(&o.out.join("cache"))?;
    let root = workspace_root();
    let mut guests = Vec::new();
    let mut arches = o.arches.clone();
    arches.extend(o.scenarios.iter().flat_map(|s| s.extra_guests()));
    arches.sort();
    arches.dedup();
    for &arch in &arches {
        let g = guest::build(&root, arch, &o.out.join("guests"))?;
        println!(
            "xen-harness: {} guest {} (symbols: {})",
            g.arch,
            g.stripped.display(),
            g.elf.display()
        );
        guests.push((arch, g.stripped));
    }
    let initrd = o.out.join("dom0.cpio");
    let mut domu_extra = if o.scenarios.contains(&Scenario::DdHostile) {
        hostile::domu_files(&root)?
    } else {
        Vec::new()
    };
    if o.scenarios.contains(&Scenario::Bench) {
        domu_extra.extend(bench::domu_files());
    }
    let size = dom0::build(&assets, &guests, runs, &o.scenarios, &domu_extra, &initrd)?;
    println!(
        "xen-harness: dom0 image {} ({:.1} MiB, kernel {})",
        initrd.display(),
        size as f64 / 1048576.0,
        assets.kernel_version
    );
    Ok((assets, initrd))
}

fn run(o: &Options) -> Result<bool, String> {
    if o.command == Command::List {
        for s in Scenario::ALL {
            println!("{:<10} {}", s.name(), s.about());
        }
        return Ok(true);
    }
    fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() << 20 ^ u64::from(d.subsec_micros()));
    let runs = plan::runs(&o.scenarios, &o.arches, seed);
    let prep_started = Instant::now();
    let (assets, initrd) = prepare(o, &runs)?;
    println!("xen-harness: prepared in {:.1?}", prep_started.elapsed());
    if o.command == Command::Prepare {
        return Ok(true);
    }

    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted))
            .map_err(|e| format!("cannot handle signal {sig}: {e}"))?;
    }
    let hard_limit = monitor::BOOT_TIMEOUT
        + monitor::TOOLS_TIMEOUT
        + runs.iter().map(|r| r.kind.timeout()).sum::<Duration>()
        + monitor::RUN_TIMEOUT
        + monitor::EXIT_GRACE;
    let spec = BootSpec {
        xen: assets.xen.clone(),
        xen_args: XEN_ARGS.into(),
        kernel: assets.vmlinuz.clone(),
        kernel_args: DOM0_ARGS.into(),
        initrd,
        memory_mib: 2048,
        cpus: 2,
        hard_limit,
    };
    let started = Instant::now();
    let mut mon = Monitor::new(runs, started);
    let (mut qemu, rx) = Qemu::spawn(&spec, &o.out.join("serial.log"))?;
    let mut tail: Vec<String> = Vec::new();
    loop {
        if interrupted.load(Ordering::SeqCst) {
            mon.fatal = Some("interrupted by a signal".into());
            break;
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Output::Line(at, line)) => {
                if o.verbose || Monitor::is_progress(&line) {
                    println!("{:7.1}s | {line}", (at - started).as_secs_f64());
                }
                tail.push(line.clone());
                if tail.len() > 40 {
                    tail.remove(0);
                }
                match mon.feed(at, &line) {
                    Step::Continue => {}
                    Step::Done => {}
                    Step::Fatal(why) => {
                        mon.fatal = Some(why);
                        break;
                    }
                }
            }
            Ok(Output::Closed) | Err(RecvTimeoutError::Disconnected) => {
                if !mon.done() {
                    mon.fatal = Some("QEMU exited before dom0 finished".into());
                }
                break;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        let (deadline, what) = mon.deadline();
        if Instant::now() >= deadline {
            if !mon.done() {
                mon.fatal = Some(format!("timed out: {what}"));
            }
            break;
        }
        if mon.done() && qemu.exited() {
            break;
        }
    }
    qemu.kill();
    let total = started.elapsed();
    if let Some(f) = &mon.fatal {
        println!("xen-harness: boot ended early: {f}\n--- last serial lines:");
        for l in &tail {
            println!("  {l}");
        }
    }
    report(o, &mon, total)
}

/// Writes the per-scenario directories and prints one line per scenario per arch.
fn report(o: &Options, mon: &Monitor, total: Duration) -> Result<bool, String> {
    let write = |path: PathBuf, text: &str| {
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    let mut passed = 0;
    let mut failed = 0;
    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "boot: dom0 up {:?}, tools up {:?}, total {:.1?}{}",
        mon.dom0_up,
        mon.tools_up,
        total,
        mon.fatal
            .as_ref()
            .map_or(String::new(), |f| format!(", ended early: {f}"))
    );
    write(o.out.join("boot.log"), &mon.boot_log.join("\n"))?;
    for &arch in &o.arches {
        for &s in &o.scenarios {
            let i = mon
                .runs
                .iter()
                .position(|r| r.run.arch == arch && r.run.kind == s.run_kind());
            let (pass, detail, took) = match i {
                Some(i) => mon.scenario_verdict(i, s),
                None => (false, "not planned".into(), None),
            };
            let secs = took.map_or(0.0, |d| d.as_secs_f64());
            let verdict = if pass { "PASS" } else { "FAIL" };
            let line = format!("real-xen {} {arch} {verdict} {secs:.1}s {detail}", s.name());
            println!("{line}");
            let _ = writeln!(summary, "{line}");
            if pass {
                passed += 1;
            } else {
                failed += 1;
            }
            let dir = o.out.join(format!("{}-{arch}", s.name()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut v = format!("{} {arch}: {verdict} in {secs:.1} s\n{detail}\n", s.name());
            if let Some(f) = &mon.fatal {
                let _ = writeln!(v, "boot ended early: {f}");
            }
            if let Some(i) = i {
                let r = &mon.runs[i];
                let _ = writeln!(
                    v,
                    "run {} (domain {} id {:?}), nonce {}",
                    r.run.id(),
                    r.run.domain_name(),
                    r.domid,
                    r.run.nonce
                );
                write(
                    dir.join("guest-debug.log"),
                    &(r.guest_log.join("\n") + "\n"),
                )?;
                write(dir.join("dom0.log"), &(r.dom0_log.join("\n") + "\n"))?;
                write(dir.join("xen.log"), &(r.xen_log.join("\n") + "\n"))?;
                for (name, body) in &r.files {
                    write(dir.join(name), &(body.clone() + "\n"))?;
                }
            }
            write(dir.join("verdict.txt"), &v)?;
        }
    }
    let _ = writeln!(summary, "{passed} passed, {failed} failed");
    write(o.out.join("summary.txt"), &summary)?;
    println!(
        "xen-harness: logs in {} (serial.log, <scenario>-<arch>/); boot took {:.1} s",
        o.out.display(),
        total.as_secs_f64()
    );
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options() {
        let o = parse(&args("--scenario xenstore --arch i386 -v")).unwrap();
        assert_eq!(o.command, Command::Run);
        assert_eq!(o.arches, [Arch::I686]);
        assert_eq!(o.scenarios, [Scenario::Xenstore]);
        assert!(o.verbose);
        let o = parse(&args("prepare")).unwrap();
        assert_eq!(o.command, Command::Prepare);
        assert_eq!(o.arches.len(), 2);
        assert_eq!(o.scenarios.len(), Scenario::ALL.len());
        assert!(parse(&args("--arch")).is_err());
        assert!(parse(&args("--bogus")).is_err());
        assert!(DOM0_ARGS.find(',').is_none());
    }
}
