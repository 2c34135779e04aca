//! Kernel-target builds: the toolchain, the targets, and the per-module static libraries.
//!
//! The kernel targets (`freebsd-build/targets/*.json`) are custom target specifications, so
//! `core` and `alloc` must be compiled for them with `-Zbuild-std`. That needs the standard
//! library's source, which rustup cannot download on the CI machines; Debian's `rustc-web` +
//! `rust-web-src` provide a matching compiler and source, used through `RUSTC_BOOTSTRAP=1`.
//! Elsewhere (FreeBSD, or a machine with rustup nightly + rust-src) set `KMOD_CARGO` and
//! `KMOD_RUSTC` to that toolchain.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use std::collections::{BTreeMap, BTreeSet};

use crate::{link, setup, verify, workspace_root, Options};

/// A FreeBSD architecture the modules are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    I386,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::I386];

    pub fn from_name(name: &str) -> Result<Arch, String> {
        match name {
            "amd64" | "x86_64" => Ok(Arch::Amd64),
            "i386" | "i686" | "x86" => Ok(Arch::I386),
            other => Err(format!(
                "unknown architecture `{other}` (expected amd64 or i386)"
            )),
        }
    }

    /// FreeBSD's name, used for `target/kmod/<arch>/`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::I386 => "i386",
        }
    }

    /// The target specification's file stem under `freebsd-build/targets/`.
    pub fn target_spec(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-freebsd-kernel",
            Arch::I386 => "i686-unknown-freebsd-kernel",
        }
    }

    /// ELF class and machine every object of this architecture must carry.
    pub(crate) fn elf_identity(self) -> (u8, u16) {
        const ELFCLASS32: u8 = 1;
        const ELFCLASS64: u8 = 2;
        const EM_386: u16 = 3;
        const EM_X86_64: u16 = 62;
        match self {
            Arch::Amd64 => (ELFCLASS64, EM_X86_64),
            Arch::I386 => (ELFCLASS32, EM_386),
        }
    }
}

/// A kernel module: `freebsd-build/modules/<name>/`, package `kmod-<name>`, library `lib<name>.a`,
/// C shim `<name>_kmod.c`, loadable module `<name>.ko`.
#[derive(Debug, Clone)]
pub struct Module {
    pub name: String,
}

impl Module {
    fn package(&self) -> String {
        format!("kmod-{}", self.name)
    }

    fn library_file(&self) -> String {
        format!("lib{}.a", self.name)
    }

    /// The modules this one must declare a dependency on (`MODULE_DEPEND`): every driver
    /// module needs the base module `xen`; `xen` needs only the kernel.
    pub fn depends(&self) -> Vec<String> {
        if self.name == "xen" {
            Vec::new()
        } else {
            vec!["xen".to_string()]
        }
    }
}

/// Every module directory that has a manifest, with `xen` first (the others depend on it) and
/// the rest sorted, so output is stable.
pub fn modules() -> Result<Vec<Module>, String> {
    let dir = workspace_root().join("freebsd-build/modules");
    let entries =
        fs::read_dir(&dir).map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
    let mut modules: Vec<Module> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join("Cargo.toml").is_file())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .map(|name| Module { name })
        .collect();
    modules.sort_by(|a, b| (a.name != "xen", &a.name).cmp(&(b.name != "xen", &b.name)));
    Ok(modules)
}

/// One built (or failed) module.
#[derive(Debug)]
pub struct BuiltModule {
    pub arch: Arch,
    pub module: String,
    /// The `.ko` (or, when the build failed before it, the library).
    pub path: PathBuf,
    pub outcome: Result<ModuleSummary, String>,
}

/// What the checks of a module found.
#[derive(Debug)]
pub struct ModuleSummary {
    pub library: LibrarySummary,
    pub report: verify::Report,
}

/// What the check of a library found.
#[derive(Debug)]
pub struct LibrarySummary {
    pub objects: usize,
}

/// Profile settings of the kernel build, passed as `--config` so they apply to these builds
/// only (the native Makefile passes the same):
/// - fat LTO: each module's static library becomes one object with only the code reachable
///   from its entry points (core's float formatting and parsing included only if used), and
///   every Rust symbol internal;
/// - compiler_builtins in one codegen unit per function, so `ld -r` pulls in only the
///   helpers a module calls.
pub const PROFILE_CONFIG: &[&str] = &[
    "profile.release.lto=\"fat\"",
    "profile.release.package.compiler_builtins.codegen-units=10000",
];

/// The kernel toolchain: which cargo to run, and the environment it needs.
fn kernel_cargo() -> Command {
    let (cargo, rustc) = if setup::kernel_toolchain_overridden() {
        (
            std::env::var("KMOD_CARGO").unwrap_or_else(|_| "cargo".into()),
            std::env::var("KMOD_RUSTC").ok(),
        )
    } else {
        ("/usr/bin/cargo".to_string(), Some("/usr/bin/rustc".into()))
    };
    let mut command = Command::new(cargo);
    // Variables the outer (rustup) cargo set for us would point the inner cargo at the wrong
    // compiler or the wrong target directory.
    for inherited in [
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "CARGO",
        "CARGO_TARGET_DIR",
    ] {
        command.env_remove(inherited);
    }
    if let Some(rustc) = rustc {
        command.env("RUSTC", rustc);
    }
    // build-std and JSON target specs are unstable features; the Debian compiler is a release.
    command.env("RUSTC_BOOTSTRAP", "1");
    command.env(
        "CARGO_TARGET_DIR",
        workspace_root().join("target").join("kernel"),
    );
    command.current_dir(workspace_root());
    command
}

/// Builds, links and verifies every module for `arch`; returns one entry per module.
pub fn build_arch(arch: Arch, modules: &[Module]) -> Vec<BuiltModule> {
    let root = workspace_root();
    let spec = root
        .join("freebsd-build/targets")
        .join(format!("{}.json", arch.target_spec()));
    let mut command = kernel_cargo();
    command.args([
        "build",
        "--release",
        "-Zbuild-std=core,alloc",
        "-Zbuild-std-features=compiler-builtins-mem",
        "-Zjson-target-spec",
    ]);
    for setting in PROFILE_CONFIG {
        command.args(["--config", setting]);
    }
    command.arg("--target").arg(&spec);
    for module in modules {
        command.arg("--package").arg(module.package());
    }
    let status = command.status();
    let build_error = match status {
        Ok(status) if status.success() => None,
        Ok(status) => Some(format!(
            "kernel build for {} failed ({status})",
            arch.name()
        )),
        Err(error) => Some(format!("cannot run the kernel cargo: {error}")),
    };
    let built_dir = root
        .join("target/kernel")
        .join(arch.target_spec())
        .join("release");
    let out_dir = root.join("target/kmod").join(arch.name());
    if let Err(error) = fs::create_dir_all(&out_dir) {
        let reason = format!("cannot create {}: {error}", out_dir.display());
        return failed_all(arch, modules, &out_dir, &reason);
    }
    if let Some(reason) = build_error {
        return failed_all(arch, modules, &out_dir, &reason);
    }
    // Copy, check and link every module in parallel (each step is a few short processes).
    let linked: Vec<Result<(LibrarySummary, link::Linked), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = modules
            .iter()
            .map(|module| {
                let from = built_dir.join(module.library_file());
                let to = out_dir.join(module.library_file());
                let out_dir = &out_dir;
                scope.spawn(move || {
                    fs::copy(&from, &to)
                        .map_err(|error| format!("cannot copy {}: {error}", from.display()))?;
                    let library = check_library(&to, arch)?;
                    let linked = link::link_module(arch, &module.name, &to, out_dir)?;
                    Ok((library, linked))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err("linking thread panicked".to_string()))
            })
            .collect()
    });
    // Verify in module order: `xen` first, so its exports are known when its dependents'
    // undefined symbols are checked.
    let mut exports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut built = Vec::new();
    for (module, linked) in modules.iter().zip(linked) {
        let (path, outcome) = match linked {
            Err(reason) => (out_dir.join(module.library_file()), Err(reason)),
            Ok((library, linked)) => {
                let outcome = fs::read(&linked.ko)
                    .map_err(|error| format!("cannot read {}: {error}", linked.ko.display()))
                    .and_then(|bytes| {
                        // Its exports are what its dependents may use, verified or not.
                        exports.insert(
                            module.name.clone(),
                            verify::exported_symbols(&bytes, arch).unwrap_or_default(),
                        );
                        let depends = module.depends();
                        let expect = verify::Expectation {
                            module: &module.name,
                            arch,
                            depends: &depends,
                            kpi: &linked.kpi,
                            exports: &exports,
                        };
                        verify::verify(&bytes, &expect).map_err(|failures| failures.join("\n"))
                    })
                    .map(|report| ModuleSummary { library, report });
                (linked.ko, outcome)
            }
        };
        built.push(BuiltModule {
            arch,
            module: module.name.clone(),
            path,
            outcome,
        });
    }
    built
}

fn failed_all(arch: Arch, modules: &[Module], out_dir: &Path, reason: &str) -> Vec<BuiltModule> {
    modules
        .iter()
        .map(|module| BuiltModule {
            arch,
            module: module.name.clone(),
            path: out_dir.join(module.library_file()),
            outcome: Err(reason.to_string()),
        })
        .collect()
}

/// Checks that `path` is an `ar` archive whose every ELF member is a relocatable object of
/// `arch`'s class and machine (a wrongly configured target would otherwise only show at
/// link or load time). The full `.ko` verifier runs on the linked modules.
pub fn check_library(path: &Path, arch: Arch) -> Result<LibrarySummary, String> {
    let bytes =
        fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let objects = archive_members(&bytes)?
        .into_iter()
        .filter(|(_, data)| data.starts_with(b"\x7fELF"))
        .map(|(name, data)| check_object(&name, data, arch).map(|()| name))
        .collect::<Result<Vec<_>, _>>()?;
    if objects.is_empty() {
        return Err(format!("{} holds no ELF objects", path.display()));
    }
    Ok(LibrarySummary {
        objects: objects.len(),
    })
}

fn check_object(name: &str, data: &[u8], arch: Arch) -> Result<(), String> {
    const ET_REL: u16 = 1;
    let (class, machine) = arch.elf_identity();
    let header = data
        .get(..20)
        .ok_or_else(|| format!("{name}: truncated ELF header"))?;
    let e_type = u16::from_le_bytes([header[16], header[17]]);
    let e_machine = u16::from_le_bytes([header[18], header[19]]);
    if header[4] != class || e_machine != machine || e_type != ET_REL {
        return Err(format!(
            "{name}: ELF class {} machine {e_machine} type {e_type}, expected class {class} \
             machine {machine} type {ET_REL} for {}",
            header[4],
            arch.name()
        ));
    }
    Ok(())
}

/// Splits a System V / GNU `ar` archive into (member name, contents).
fn archive_members(bytes: &[u8]) -> Result<Vec<(String, &[u8])>, String> {
    const MAGIC: &[u8] = b"!<arch>\n";
    const HEADER_LEN: usize = 60;
    let mut rest = bytes
        .strip_prefix(MAGIC)
        .ok_or("not an ar archive (bad magic)")?;
    let mut members = Vec::new();
    while !rest.is_empty() {
        let header = rest.get(..HEADER_LEN).ok_or("truncated ar member header")?;
        let name = String::from_utf8_lossy(&header[..16])
            .trim_end()
            .to_string();
        let size: usize = std::str::from_utf8(&header[48..58])
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| format!("ar member {name}: bad size field"))?;
        let data = rest
            .get(HEADER_LEN..HEADER_LEN + size)
            .ok_or_else(|| format!("ar member {name}: truncated ({size} bytes claimed)"))?;
        members.push((name, data));
        // Members are padded to an even offset.
        let next = (HEADER_LEN + size + 1) & !1;
        rest = rest.get(next..).unwrap_or(&[]);
    }
    Ok(members)
}

/// `cargo kmod build`.
pub fn build_command(options: &Options) -> Result<(), String> {
    setup::ensure(
        &setup::Needs {
            kernel_toolchain: true,
            modules: true,
            host_tests: false,
            real_xen: false,
        },
        options.allow_install,
    )?;
    let modules = modules()?;
    let started = Instant::now();
    let mut built = Vec::new();
    for &arch in &options.arches {
        println!(
            "cargo kmod: building {} module(s) for {}",
            modules.len(),
            arch.name()
        );
        built.extend(build_arch(arch, &modules));
    }
    print_table(&built);
    let failures = built
        .iter()
        .filter(|module| module.outcome.is_err())
        .count();
    println!(
        "{} modules built and verified, {} failed, in {:.0?}",
        built.len() - failures,
        failures,
        started.elapsed()
    );
    if failures == 0 {
        Ok(())
    } else {
        Err(format!("{failures} kernel module(s) failed"))
    }
}

/// The table of modules: size, what the verifier looked at, and the verdict; failures follow
/// with one line per broken rule.
pub fn print_table(built: &[BuiltModule]) {
    println!(
        "arch   module  lib objs  .ko bytes   text  relocs  insns  undef kpi+dep  depends      result"
    );
    let root = workspace_root();
    let mut failures = Vec::new();
    for module in built {
        let shown = module
            .path
            .strip_prefix(&root)
            .unwrap_or(&module.path)
            .display();
        match &module.outcome {
            Ok(summary) => {
                let report = &summary.report;
                println!(
                    "{:<6} {:<6} {:>9} {:>10} {:>6} {:>7} {:>6}  {:>6}+{:<6} {:<12} verified  {shown}",
                    module.arch.name(),
                    module.module,
                    summary.library.objects,
                    report.bytes,
                    report.text_bytes,
                    report.relocations,
                    report.instructions,
                    report.undefined_kpi,
                    report.undefined_from_modules,
                    report.depends.join(","),
                )
            }
            Err(reason) => {
                println!(
                    "{:<6} {:<6} {:>9} {:>10} {:>6} {:>7} {:>6}  {:>13} {:<12} FAILED    {shown}",
                    module.arch.name(),
                    module.module,
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-"
                );
                failures.push(reason.clone());
            }
        }
    }
    for failure in failures {
        for line in failure.lines() {
            println!("  {line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            0,
            0,
            0,
            644,
            data.len()
        )
        .into_bytes();
        header.extend_from_slice(data);
        if data.len() % 2 == 1 {
            header.push(b'\n');
        }
        header
    }

    fn elf(class: u8, machine: u16, e_type: u16) -> Vec<u8> {
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = class;
        header[16..18].copy_from_slice(&e_type.to_le_bytes());
        header[18..20].copy_from_slice(&machine.to_le_bytes());
        header
    }

    fn archive(members: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = b"!<arch>\n".to_vec();
        for member in members {
            bytes.extend_from_slice(member);
        }
        bytes
    }

    fn check(bytes: &[u8], arch: Arch) -> Result<LibrarySummary, String> {
        // Tests run in parallel: every call gets its own file.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kmod-check-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("lib{unique}.a"));
        fs::write(&path, bytes).unwrap();
        check_library(&path, arch)
    }

    #[test]
    fn accepts_objects_of_the_right_arch() {
        let bytes = archive(&[member("/", b"odd"), member("a.o/", &elf(2, 62, 1))]);
        assert_eq!(check(&bytes, Arch::Amd64).unwrap().objects, 1);
        let bytes = archive(&[member("b.o/", &elf(1, 3, 1))]);
        assert_eq!(check(&bytes, Arch::I386).unwrap().objects, 1);
    }

    #[test]
    fn rejects_wrong_class_machine_or_type_naming_the_member() {
        let bytes = archive(&[member("a.o/", &elf(2, 62, 1))]);
        assert!(check(&bytes, Arch::I386).unwrap_err().contains("a.o"));
        let bytes = archive(&[member("exe.o/", &elf(2, 62, 2))]);
        assert!(check(&bytes, Arch::Amd64).unwrap_err().contains("type 2"));
    }

    #[test]
    fn rejects_malformed_archives() {
        assert!(check(b"not an archive", Arch::Amd64).is_err());
        let mut bytes = archive(&[member("a.o/", &elf(2, 62, 1))]);
        bytes.truncate(bytes.len() - 10);
        assert!(check(&bytes, Arch::Amd64)
            .unwrap_err()
            .contains("truncated"));
        assert!(check(&archive(&[]), Arch::Amd64)
            .unwrap_err()
            .contains("no ELF"));
    }
}
