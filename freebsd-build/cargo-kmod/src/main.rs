//! `cargo kmod`: the project's user interface (see README.md).
//!
//! - `cargo kmod build` — sets up the kernel-target toolchain if it is missing, builds every
//!   module for amd64 and i386 (Rust static library, C shim against FreeBSD's headers, linked
//!   into `target/kmod/<arch>/<module>.ko`), verifies each `.ko` (`verify.rs`), prints a table.
//! - `cargo kmod bench` — runs the benchmark suites (`benches/`, see BENCHMARKS.md) in release
//!   and writes their tables into `target/bench` (or `--out DIR`).
//! - `cargo kmod test` — sets up what the suite needs, then runs every check that exists (format,
//!   clippy, unit/property/integration tests, kernel-target builds) and ends with
//!   `N passed, M failed`, exiting non-zero on any failure.
//!
//! It is a plain host program (run through the `kmod` alias in `.cargo/config.toml`) so that
//! the only thing a user needs before the first command is a Rust toolchain with cargo.

mod bench;
mod elf;
mod headers;
mod kernel;
mod link;
mod realxen;
mod setup;
mod suite;
mod verify;

#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: cargo kmod <build|test|bench|setup> [options]

  build            build and verify every module (.ko) for amd64 and i386
  test [FILTER]    run the whole suite (FILTER: only steps whose name contains it)
  bench            run the benchmarks, write tables to target/bench (see BENCHMARKS.md)
  setup            install what the other commands need, and nothing else

options:
  --arch ARCH      only this architecture (amd64 or i386); may be repeated
  --no-install     never install packages; fail with what is missing instead
  --out DIR        (bench) where the result tables go
  --quick          (bench) a fast, noisy run (seconds) to check that everything works
  --only SUITES    (bench) only these suites, comma-separated: ring, gnttab, evtchn, parse,
                   blk, net, real-xen";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("cargo kmod: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let outcome = match options.command {
        Command::Build => kernel::build_command(&options),
        Command::Test => suite::test_command(&options),
        Command::Bench => bench::bench_command(&options),
        Command::Setup => setup::ensure(&setup::Needs::everything(), options.allow_install),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cargo kmod: {message}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Build,
    Test,
    Bench,
    Setup,
}

/// The parsed command line.
#[derive(Debug)]
pub struct Options {
    command: Command,
    pub arches: Vec<kernel::Arch>,
    pub allow_install: bool,
    pub filter: Option<String>,
    pub out: Option<PathBuf>,
    pub quick: bool,
    /// `--only` (bench): the suites to run, comma-separated, as xen-bench takes them.
    pub only: Option<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        // `cargo kmod` passes its own name first when run as a cargo subcommand binary.
        let args: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .skip_while(|arg| *arg == "kmod")
            .collect();
        let command = match args.first() {
            Some(&"build") => Command::Build,
            Some(&"test") => Command::Test,
            Some(&"bench") => Command::Bench,
            Some(&"setup") => Command::Setup,
            Some(&"-h" | &"--help") | None => return Err("no command given".into()),
            Some(other) => return Err(format!("unknown command `{other}`")),
        };
        let mut options = Options {
            command,
            arches: Vec::new(),
            allow_install: true,
            filter: None,
            out: None,
            quick: false,
            only: None,
        };
        let mut rest = args[1..].iter();
        while let Some(arg) = rest.next() {
            match *arg {
                "--arch" => {
                    let value = rest.next().ok_or("--arch needs a value")?;
                    options.arches.push(kernel::Arch::from_name(value)?);
                }
                "--no-install" => options.allow_install = false,
                "--out" if command == Command::Bench => {
                    options.out = Some(rest.next().ok_or("--out needs a folder")?.into());
                }
                "--quick" if command == Command::Bench => options.quick = true,
                "--only" if command == Command::Bench => {
                    let suites = rest.next().ok_or("--only needs suite names")?;
                    options.only = Some(bench::suites(suites)?);
                }
                filter if command == Command::Test && !filter.starts_with('-') => {
                    options.filter = Some(filter.to_string());
                }
                other => return Err(format!("unknown option `{other}`")),
            }
        }
        if options.arches.is_empty() {
            options.arches = kernel::Arch::ALL.to_vec();
        }
        Ok(options)
    }
}

/// The workspace root: two levels above this crate's manifest (`freebsd-build/cargo-kmod`).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(|build_dir| build_dir.parent())
        .map(PathBuf::from)
        .unwrap_or(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Options, String> {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        Options::parse(&args)
    }

    #[test]
    fn parses_commands_and_options() {
        let options = parse("kmod test ring --arch i386 --no-install").unwrap();
        assert_eq!(options.command, Command::Test);
        assert_eq!(options.filter.as_deref(), Some("ring"));
        assert_eq!(options.arches, vec![kernel::Arch::I386]);
        assert!(!options.allow_install);
        let options = parse("build").unwrap();
        assert_eq!(options.arches, kernel::Arch::ALL.to_vec());
        let options = parse("kmod bench --out /tmp/b --quick").unwrap();
        assert_eq!(options.command, Command::Bench);
        assert_eq!(options.out, Some(PathBuf::from("/tmp/b")));
        assert!(options.quick);
        assert!(parse("test --quick").is_err());
        assert_eq!(options.only, None);
    }

    #[test]
    fn bench_takes_only_and_checks_the_suite_names() {
        let options = parse("kmod bench --only ring,real-xen --out x").unwrap();
        assert_eq!(options.only.as_deref(), Some("ring,real-xen"));
        assert_eq!(
            bench::xen_bench_args(&options, Path::new("/o")),
            ["--out", "/o", "--only", "ring,real-xen"]
        );
        let options = parse("bench --quick").unwrap();
        assert_eq!(
            bench::xen_bench_args(&options, Path::new("/o")),
            ["--out", "/o", "--quick"]
        );
        assert!(parse("bench --only").unwrap_err().contains("needs"));
        assert!(parse("bench --only ring,rings")
            .unwrap_err()
            .contains("`rings`"));
        assert!(parse("test --only ring").is_err());
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert!(parse("").unwrap_err().contains("no command"));
        assert!(parse("frobnicate").unwrap_err().contains("frobnicate"));
        assert!(parse("build --arch sparc64")
            .unwrap_err()
            .contains("sparc64"));
        assert!(parse("build --arch").unwrap_err().contains("needs a value"));
        assert!(parse("build extra").unwrap_err().contains("extra"));
    }
}
