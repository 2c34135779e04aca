//! `cargo kmod bench [--out DIR] [--quick] [--only SUITES]`: builds the `xen-bench` crate
//! (`benches/`) in release and runs it. It prints progress and each table as it is measured,
//! and writes `results.md` (the tables BENCHMARKS.md quotes), `results.csv` and PNG plots into
//! DIR (default `target/bench`). The network suite needs root (namespaces, TAP, veth) and is
//! skipped with its reason otherwise. The `real-xen` suite boots Xen once under QEMU TCG
//! (`xen-harness bench`: 1.5 minutes on a quiet 2-core machine, 9.5 at load 10-13, more
//! under heavier load; logs in DIR/real-xen) and is skipped with its reason when QEMU or Xen's tools are missing
//! (`cargo kmod setup` installs them) and by `--quick`. It is never part of `cargo kmod test`,
//! which only compiles the crate (clippy `--all-targets`). `--only ring,real-xen` runs the
//! named suites (passed on to xen-bench; the names are checked here first, so a typo fails
//! before the release build).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::setup::{self, Needs};
use crate::{workspace_root, Options};

/// The suites xen-bench knows (its `--only`).
pub const SUITES: [&str; 7] = [
    "ring", "gnttab", "evtchn", "parse", "blk", "net", "real-xen",
];

/// Checks a comma-separated `--only` list against [`SUITES`]; returns it unchanged.
///
/// # Errors
/// An empty list or an unknown suite name (named in the message).
pub fn suites(list: &str) -> Result<String, String> {
    if list.is_empty() {
        return Err("--only needs suite names".into());
    }
    for name in list.split(',') {
        if !SUITES.contains(&name) {
            return Err(format!(
                "unknown suite `{name}` for --only (one of {})",
                SUITES.join(", ")
            ));
        }
    }
    Ok(list.to_string())
}

/// xen-bench's arguments for these options.
pub fn xen_bench_args(options: &Options, out: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--out".into(), out.into()];
    if options.quick {
        args.push("--quick".into());
    }
    if let Some(only) = &options.only {
        args.push("--only".into());
        args.push(only.into());
    }
    args
}

/// Whether `program` runs (found on PATH).
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// The folder the results go to: `--out`, relative to the current directory, or
/// `<workspace>/target/bench`.
pub fn out_dir(options: &Options) -> PathBuf {
    match &options.out {
        Some(dir) if dir.is_absolute() => dir.clone(),
        Some(dir) => std::env::current_dir().unwrap_or_default().join(dir),
        None => workspace_root().join("target").join("bench"),
    }
}

pub fn bench_command(options: &Options) -> Result<(), String> {
    // The bench crate builds xen-sys (Xen headers, bindgen) and compiles Xen's io/ring.h
    // with the system C compiler; nothing else.
    setup::ensure(
        &Needs {
            kernel_toolchain: false,
            modules: false,
            host_tests: false,
            real_xen: false,
        },
        options.allow_install,
    )?;
    let out = out_dir(options);
    let mut cargo = Command::new("cargo");
    cargo
        .args(["run", "--release", "-p", "xen-bench", "--"])
        .args(xen_bench_args(options, &out))
        .current_dir(workspace_root());
    // The cc crate calls `cc`; Debian's clang package (installed above) provides `clang`.
    if std::env::var_os("CC").is_none() && !runs("cc") && runs("clang") {
        cargo.env("CC", "clang");
    }
    println!(
        "building xen-bench (release) and running it; results go to {}",
        out.display()
    );
    let status = cargo
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("xen-bench failed ({status})"));
    }
    println!(
        "done: {}, {} and the PNG plots beside them (paste the tables into BENCHMARKS.md, \
         copy the plots to benches/plots/)",
        out.join("results.md").display(),
        out.join("results.csv").display()
    );
    Ok(())
}
