//! Building the PVH guest (tests/pvh-guest) for each architecture with the kernel toolchain:
//! Debian's `/usr/bin/cargo` + `/usr/bin/rustc` with `RUSTC_BOOTSTRAP=1` and build-std (or
//! `KMOD_CARGO`/`KMOD_RUSTC`, as `cargo kmod` honours them).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::plan::Arch;

/// The built guest: the ELF with symbols (for `addr2line` on a crash report) and the stripped
/// copy that goes into dom0.
#[derive(Debug, Clone)]
pub struct Guest {
    /// Its architecture.
    pub arch: Arch,
    /// The ELF as linked (debug info, symbols).
    pub elf: PathBuf,
    /// Stripped of debug info, for the initramfs.
    pub stripped: PathBuf,
}

/// Builds the guest for `arch` under `root/target/pvh-guest` and writes a stripped copy to
/// `out_dir`.
///
/// # Errors
/// The build or `objcopy` failed.
pub fn build(root: &Path, arch: Arch, out_dir: &Path) -> Result<Guest, String> {
    let dir = root.join("tests/pvh-guest");
    let target_dir = root.join("target/pvh-guest");
    let spec = dir.join(format!("targets/{}-pvh.json", arch.name()));
    let (cargo, rustc) = match std::env::var("KMOD_CARGO") {
        Ok(cargo) => (cargo, std::env::var("KMOD_RUSTC").ok()),
        Err(_) => (
            "/usr/bin/cargo".to_string(),
            Some("/usr/bin/rustc".to_string()),
        ),
    };
    let mut cmd = Command::new(&cargo);
    // What the outer (rustup) cargo set for us would point the inner one at the wrong compiler,
    // flags or target directory.
    for v in [
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO",
        "CARGO_TARGET_DIR",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(v);
    }
    if let Some(rustc) = rustc {
        cmd.env("RUSTC", rustc);
    }
    cmd.env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(&dir)
        .args([
            "build",
            "--release",
            "-Zbuild-std=core,alloc",
            "-Zbuild-std-features=compiler-builtins-mem",
            "-Zjson-target-spec",
            "--target",
        ])
        .arg(&spec);
    println!("xen-harness: building the {arch} PVH guest ({cargo})");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!("building the {arch} guest failed ({status})"));
    }
    let elf = target_dir.join(format!("{}-pvh/release/pvh-guest", arch.name()));
    if !elf.exists() {
        return Err(format!("the {arch} build left no {}", elf.display()));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let stripped = out_dir.join(format!("pvh-guest-{}", arch.name()));
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&elf)
        .arg(&stripped)
        .status()
        .map_err(|e| format!("objcopy: {e}"))?;
    if !status.success() {
        return Err(format!("objcopy --strip-debug {} failed", elf.display()));
    }
    Ok(Guest {
        arch,
        elf,
        stripped,
    })
}
