//! `cargo kmod test`: every check the project has, counted, ending with `N passed, M failed`.
//!
//! Each step contributes passes and failures: a single check (formatting, clippy) counts as
//! one; a test run counts every test it reports; a kernel build counts every module (its `.ko`
//! built and verified). A step
//! that cannot even start (a compile error) counts as one failure so it can never pass silently.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::kernel::{self, Arch};
use crate::{setup, workspace_root, Options};

/// Passes and failures of one step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl Tally {
    fn one(ok: bool) -> Tally {
        Tally {
            passed: u64::from(ok),
            failed: u64::from(!ok),
        }
    }

    fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

struct Step {
    name: String,
    run: Box<dyn Fn() -> Tally>,
}

fn steps(arches: &[Arch]) -> Vec<Step> {
    let mut steps = vec![
        Step {
            name: "fmt".into(),
            run: Box::new(|| {
                Tally::one(
                    host_cargo(&["fmt", "--all", "--", "--check"]) && included_files_formatted(),
                )
            }),
        },
        Step {
            name: "clippy".into(),
            run: Box::new(|| {
                Tally::one(host_cargo(&[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--quiet",
                    "--",
                    "-D",
                    "warnings",
                ]))
            }),
        },
        Step {
            name: "host-tests".into(),
            run: Box::new(|| run_libtest(&["test", "--workspace", "--no-fail-fast"])),
        },
    ];
    steps.push(Step {
        name: "fuzz".into(),
        run: Box::new(fuzz_all),
    });
    for &arch in arches {
        steps.push(Step {
            name: format!("kernel-build-{}", arch.name()),
            run: Box::new(move || kernel_build(arch)),
        });
    }
    let real_xen_arches = arches.to_vec();
    steps.push(Step {
        name: "real-xen".into(),
        run: Box::new(move || crate::realxen::run(&real_xen_arches)),
    });
    steps
}

/// Runs `cargo <args>` with the host toolchain in the workspace; true when it succeeded.
/// Source files the modules `include!` (shared glue and host fakes): `cargo fmt` only
/// reaches files named by `mod` (also through `#[path]`), so these are checked with rustfmt
/// itself (rustfmt.toml's settings apply, found from the workspace root).
const INCLUDED_SOURCES: &[&str] = &[
    "freebsd-build/modules/fake_ifnet.rs",
    "freebsd-build/modules/ifnet_glue.rs",
];

fn included_files_formatted() -> bool {
    let root = workspace_root();
    let missing: Vec<&&str> = INCLUDED_SOURCES
        .iter()
        .filter(|f| !root.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        eprintln!("fmt: included sources not found: {missing:?}");
        return false;
    }
    Command::new("rustfmt")
        .args(["--edition", "2021", "--check"])
        .args(INCLUDED_SOURCES)
        .current_dir(&root)
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

fn host_cargo(args: &[&str]) -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// Runs a libtest-based cargo command, echoing its output, and sums every `test result:` line.
fn run_libtest(args: &[&str]) -> Tally {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let child = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            eprintln!("cannot run cargo: {error}");
            return Tally::one(false);
        }
    };
    let mut tally = Tally::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(result) = parse_test_result(&line) {
                tally.add(result);
            }
        }
    }
    let succeeded = child.wait().map(|status| status.success()).unwrap_or(false);
    if !succeeded && tally.failed == 0 {
        // Failed without a failing test: a build error or a crashed test binary.
        tally.failed += 1;
    }
    tally
}

/// Parses libtest's summary: `test result: ok. 12 passed; 0 failed; 1 ignored; ...`.
fn parse_test_result(line: &str) -> Option<Tally> {
    let summary = line.trim().strip_prefix("test result: ")?;
    let count = |label: &str| -> Option<u64> {
        summary.split(';').find_map(|part| {
            let part = part
                .trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ");
            part.strip_suffix(label)?.trim().parse().ok()
        })
    };
    Some(Tally {
        passed: count("passed")?,
        failed: count("failed")?,
    })
}

/// Seconds each fuzz target runs in the suite (`KMOD_FUZZ_SECONDS` overrides).
const DEFAULT_FUZZ_SECONDS: u64 = 10;

/// Runs every target of `tests/fuzz` briefly with a fixed seed; each target is one check.
fn fuzz_all() -> Tally {
    let fuzz_dir = workspace_root().join("tests/fuzz");
    let seconds = std::env::var("KMOD_FUZZ_SECONDS")
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .unwrap_or(DEFAULT_FUZZ_SECONDS);
    let mut targets: Vec<String> = std::fs::read_dir(fuzz_dir.join("fuzz_targets"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().into_string().ok())
                .filter_map(|name| name.strip_suffix(".rs").map(String::from))
                .collect()
        })
        .unwrap_or_default();
    targets.sort();
    if targets.is_empty() {
        eprintln!("no fuzz targets under {}", fuzz_dir.display());
        return Tally::one(false);
    }
    let mut tally = Tally::default();
    for target in &targets {
        println!("fuzzing {target} for {seconds}s");
        let ok = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target, "--fuzz-dir"])
            .arg(&fuzz_dir)
            .args(["--", "-seed=1", &format!("-max_total_time={seconds}")])
            .current_dir(workspace_root())
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .is_ok_and(|status| status.success());
        tally.add(Tally::one(ok));
    }
    tally
}

fn kernel_build(arch: Arch) -> Tally {
    let modules = match kernel::modules() {
        Ok(modules) => modules,
        Err(error) => {
            eprintln!("{error}");
            return Tally::one(false);
        }
    };
    // Each module counts once: built, linked into a .ko, and verified.
    let built = kernel::build_arch(arch, &modules);
    kernel::print_table(&built);
    let mut tally = Tally::default();
    for module in &built {
        tally.add(Tally::one(module.outcome.is_ok()));
    }
    tally
}

/// `cargo kmod test`.
pub fn test_command(options: &Options) -> Result<(), String> {
    setup::ensure(&setup::Needs::everything(), options.allow_install)?;
    let started = Instant::now();
    let mut total = Tally::default();
    let mut report: Vec<(String, Tally, Duration)> = Vec::new();
    for step in steps(&options.arches) {
        if let Some(filter) = &options.filter {
            if !step.name.contains(filter.as_str()) {
                continue;
            }
        }
        println!("\n==> {}", step.name);
        let step_started = Instant::now();
        let tally = (step.run)();
        let took = step_started.elapsed();
        println!(
            "<== {}: {} passed, {} failed ({:.1?})",
            step.name, tally.passed, tally.failed, took
        );
        total.add(tally);
        report.push((step.name, tally, took));
    }
    println!("\nstep                   passed  failed     time");
    for (name, tally, took) in &report {
        println!(
            "{name:<22} {:>6}  {:>6}  {:>6.1}s",
            tally.passed,
            tally.failed,
            took.as_secs_f64()
        );
    }
    println!("total time {:.1}s", started.elapsed().as_secs_f64());
    println!("{} passed, {} failed", total.passed, total.failed);
    if total.failed == 0 && total.passed > 0 {
        Ok(())
    } else if total.passed == 0 && total.failed == 0 {
        Err("no step matched the filter".into())
    } else {
        Err(format!("{} check(s) failed", total.failed))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_included_module_source_is_format_checked() {
        let modules = super::workspace_root().join("freebsd-build/modules");
        let mut included = Vec::new();
        for entry in std::fs::read_dir(&modules).expect("modules dir") {
            let src = entry.expect("entry").path().join("src");
            for file in ["sys.rs", "tests.rs", "lib.rs"] {
                let text = std::fs::read_to_string(src.join(file)).unwrap_or_default();
                for part in text.split("include!(\"").skip(1) {
                    let rel = part.split('"').next().unwrap_or_default();
                    let path = src.join(rel).canonicalize().expect("included file exists");
                    included.push(path);
                }
            }
        }
        assert!(!included.is_empty(), "the modules include shared sources");
        let root = super::workspace_root();
        for path in included {
            assert!(
                super::INCLUDED_SOURCES
                    .iter()
                    .any(|f| root.join(f).canonicalize().ok().as_ref() == Some(&path)),
                "{} is include!d but not in INCLUDED_SOURCES",
                path.display()
            );
        }
    }

    use super::*;

    #[test]
    fn parses_libtest_summaries() {
        let ok = "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; \
                  finished in 0.01s";
        assert_eq!(
            parse_test_result(ok),
            Some(Tally {
                passed: 12,
                failed: 0
            })
        );
        let failed = "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured";
        assert_eq!(
            parse_test_result(failed),
            Some(Tally {
                passed: 3,
                failed: 2
            })
        );
        assert_eq!(parse_test_result("running 3 tests"), None);
        assert_eq!(parse_test_result("test result: garbage"), None);
    }

    #[test]
    fn a_single_check_counts_once() {
        let mut tally = Tally::one(true);
        tally.add(Tally::one(false));
        assert_eq!(
            tally,
            Tally {
                passed: 1,
                failed: 1
            }
        );
    }
}
