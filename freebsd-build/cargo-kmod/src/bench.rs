//! `cargo kmod bench [--out DIR] [--quick] [--only SUITES]`: builds the `xen-bench` crate
//! (`benches/`) in release and runs it. It prints progress and each table as it is measured,
//! and writes `results.md` (the tables BENCHMARKS.md quotes), `results.csv` and PNG plots into
//! DIR (default `target/bench`). The network suite needs root (namespaces, TAP, veth) and is
//! skipped with its reason otherwise. The `real-xen` suite boots Xen once under QEMU TCG
//! (`xen-harness bench`: 1.5 minutes on a quiet 2-core machine, 9.5 at load 10-13, more
//! under heavier load; logs in DIR/real-xen); what it needs (QEMU, Xen's tools, the PVH
//! guest's kernel toolchain) is installed first as for `cargo kmod test`, and with
//! `--no-install` it is skipped with its reason when they are missing; `--quick` skips it.
//! It is never part of `cargo kmod test`, which only compiles the crate (clippy
//! `--all-targets`). `--only ring,real-xen` runs the named suites (passed on to xen-bench;
//! the names are checked here first, so a typo fails before the release build).

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

/// Whether xen-bench will run the `real-xen` suite for these options: named in `--only`, or
/// a full run (no `--only`, no `--quick`), as xen-bench itself decides.
pub fn runs_real_xen(options: &Options) -> bool {
    match &options.only {
        Some(only) => only.split(',').any(|name| name == "real-xen"),
        None => !options.quick,
    }
}

/// What the run needs set up beyond the host build: for the `real-xen` suite, what the
/// `real-xen` step of `cargo kmod test` needs (QEMU, Xen's tools, busybox, socat, and the
/// kernel toolchain that builds the PVH guest with build-std). Without them on a fresh
/// machine the suite would only be skipped, and BENCHMARKS.md's real-Xen tables could not be
/// regenerated.
pub fn real_xen_needs(options: &Options) -> Option<Needs> {
    runs_real_xen(options).then_some(Needs {
        kernel_toolchain: true,
        modules: false,
        host_tests: false,
        real_xen: true,
    })
}

pub fn bench_command(options: &Options) -> Result<(), String> {
    // The bench crate builds xen-sys (Xen headers, bindgen) and compiles Xen's io/ring.h
    // with the system C compiler; nothing else.
    setup::ensure(&Needs::default(), options.allow_install)?;
    if let Some(needs) = real_xen_needs(options) {
        match setup::ensure(&needs, options.allow_install) {
            Ok(()) => {}
            // Installing was allowed and failed: stop, as `cargo kmod test` does.
            Err(e) if options.allow_install => return Err(e),
            // --no-install: the other suites still run; xen-bench skips real-xen and says why.
            Err(e) => println!("cargo kmod: the real-xen suite will be skipped: {e}"),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn options(line: &str) -> Options {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        Options::parse(&args).unwrap()
    }

    #[test]
    fn a_run_with_the_real_xen_suite_sets_up_qemu_xen_and_the_guest_toolchain() {
        for line in [
            "bench",
            "bench --out x",
            "bench --only ring,real-xen",
            "bench --quick --only real-xen",
        ] {
            let needs = real_xen_needs(&options(line)).unwrap_or_else(|| panic!("{line}"));
            assert!(needs.real_xen && needs.kernel_toolchain, "{line}");
            assert!(!needs.modules && !needs.host_tests, "{line}");
        }
        for line in [
            "bench --quick",
            "bench --only ring,net",
            "bench --only blk --quick",
        ] {
            assert!(real_xen_needs(&options(line)).is_none(), "{line}");
        }
    }
}
