//! From a module's Rust static library to a loadable `.ko`, the way `bsd.kmod.mk` does it on
//! FreeBSD, with the FreeBSD 14 headers and clang/lld that PyPI's `ziglang` carries.
//!
//! Per module and architecture (files under `target/kmod/<arch>/obj/`):
//! 1. `cc -E` the C shim `freebsd-build/modules/<m>/<m>_kmod.c`: the declarations the verifier
//!    accepts as KPI (`headers.rs`);
//! 2. `cc -c` the shim with FreeBSD's kernel-module flags (`-D_KERNEL -DKLD_MODULE
//!    -ffreestanding -fno-pic -mno-mmx -mno-sse -mno-sse2 -mno-avx -msoft-float`, and `-mcmodel=kernel
//!    -mno-red-zone` on amd64);
//! 3. `ld.lld -r -d` the shim object with `lib<m>.a` (only the archive members the shim needs
//!    are pulled in; the library is LTO'd into one object, so that is the module's Rust code
//!    plus the compiler_builtins helpers it calls);
//! 4. make every defined global symbol local except those listed in the module's
//!    `export_syms` (what `kmod.mk` does with `EXPORT_SYMS` and `objcopy -L`), so modules do
//!    not clash on Rust or compiler_builtins symbols;
//! 5. amd64: strip debug information — the result is the relocatable `.ko`; i386:
//!    `ld.lld -Bshareable -znotext -znorelro --hash-style=sysv` into the shared-object `.ko`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::elf::{self, Elf};
use crate::kernel::Arch;
use crate::{headers, workspace_root};

/// Where `cargo kmod setup` installs PyPI's `ziglang` (`pip install --target`).
pub fn ziglang_dir() -> PathBuf {
    std::env::var_os("KMOD_ZIGLANG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/tools/ziglang"))
}

/// Where `cargo kmod setup` unpacks Debian's `libck-dev` (Concurrency Kit headers, which
/// FreeBSD's `net/if_var.h` includes in the kernel; `contrib/ck/include` on FreeBSD).
pub fn ck_dir() -> PathBuf {
    std::env::var_os("KMOD_CK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/tools/ck"))
}

/// The FreeBSD system headers inside the ziglang package.
pub fn freebsd_header_dirs(arch: Arch) -> [PathBuf; 2] {
    let include = ziglang_dir().join("ziglang/lib/libc/include");
    let arch_dir = match arch {
        Arch::Amd64 => "x86_64-freebsd-none",
        Arch::I386 => "x86-freebsd-none",
    };
    [include.join("generic-freebsd"), include.join(arch_dir)]
}

/// `python3 -m ziglang <tool>`.
fn zig(tool: &str) -> Command {
    let mut command = Command::new("python3");
    command.env("PYTHONPATH", ziglang_dir());
    // zig keeps a compilation cache; keep it inside the build tree.
    command.env(
        "ZIG_GLOBAL_CACHE_DIR",
        workspace_root().join("target/tools/zig-cache"),
    );
    command.env(
        "ZIG_LOCAL_CACHE_DIR",
        workspace_root().join("target/tools/zig-cache"),
    );
    command.args(["-m", "ziglang", tool]);
    // zig prints paths in line markers relative to this directory.
    command.current_dir(workspace_root());
    command
}

fn run(mut command: Command, what: &str) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|error| format!("{what}: cannot run {command:?}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The C compiler flags of a FreeBSD kernel module (from `kern.mk`/`kmod.mk`).
pub fn cflags(arch: Arch) -> Vec<String> {
    let root = workspace_root();
    let mut flags: Vec<String> = match arch {
        Arch::Amd64 => vec![
            "-target",
            "x86_64-freebsd",
            "-mcmodel=kernel",
            "-mno-red-zone",
            "-mno-omit-leaf-frame-pointer",
        ],
        Arch::I386 => vec!["-target", "x86-freebsd"],
    }
    .into_iter()
    .map(String::from)
    .collect();
    flags.extend(
        [
            "-D_KERNEL",
            "-DKLD_MODULE",
            "-ffreestanding",
            "-fno-pic",
            "-fno-common",
            "-fno-omit-frame-pointer",
            "-fno-asynchronous-unwind-tables",
            "-mno-mmx",
            "-mno-sse",
            // Without these clang keeps SSE2 on x86-64 and zeroes structures with
            // xorps/movups (seen in sx_init's inlined bzero), which the verifier rejects.
            "-mno-sse2",
            "-mno-avx",
            "-msoft-float",
            "-std=gnu99",
            "-O2",
            "-g0",
            "-Wall",
            "-Werror",
            "-nostdinc",
        ]
        .map(String::from),
    );
    for dir in freebsd_header_dirs(arch) {
        flags.push("-isystem".into());
        flags.push(dir.display().to_string());
    }
    // After FreeBSD's own headers, so only the ck_*.h they include come from here.
    flags.push("-isystem".into());
    flags.push(ck_dir().join("usr/include").display().to_string());
    flags.push("-I".into());
    flags.push(root.join("freebsd-build/include").display().to_string());
    flags.push("-I".into());
    flags.push(generated_headers().display().to_string());
    flags
}

/// Headers FreeBSD generates during its build (`device_if.h` ...), written for this build
/// from the interface definitions; their declarations are FreeBSD KPI.
fn generated_headers() -> PathBuf {
    workspace_root().join("freebsd-build/include/generated")
}

/// What linking produced.
#[derive(Debug)]
pub struct Linked {
    pub ko: PathBuf,
    /// Functions and variables the FreeBSD headers used by the shim declare.
    pub kpi: BTreeSet<String>,
}

/// Builds `out_dir/<module>.ko` from `library`.
pub fn link_module(
    arch: Arch,
    module: &str,
    library: &Path,
    out_dir: &Path,
) -> Result<Linked, String> {
    let root = workspace_root();
    let module_dir = root.join("freebsd-build/modules").join(module);
    let shim = module_dir.join(format!("{module}_kmod.c"));
    let obj_dir = out_dir.join("obj");
    fs::create_dir_all(&obj_dir)
        .map_err(|error| format!("cannot create {}: {error}", obj_dir.display()))?;
    let flags = cflags(arch);

    // 1. The KPI the shim sees.
    let preprocessed = obj_dir.join(format!("{module}_kmod.i"));
    let mut cpp = zig("cc");
    cpp.args(&flags)
        .arg("-E")
        .arg(&shim)
        .arg("-o")
        .arg(&preprocessed);
    run(cpp, &format!("preprocessing {}", shim.display()))?;
    let text = fs::read_to_string(&preprocessed)
        .map_err(|error| format!("cannot read {}: {error}", preprocessed.display()))?;
    let mut header_dirs = freebsd_header_dirs(arch).to_vec();
    header_dirs.push(generated_headers());
    let kpi = headers::declared_symbols(&text, |file| {
        let file = root.join(file); // a no-op for absolute paths
        header_dirs.iter().any(|dir| file.starts_with(dir))
    });

    // 2. The shim object.
    let object = obj_dir.join(format!("{module}_kmod.o"));
    let mut cc = zig("cc");
    cc.args(&flags).arg("-c").arg(&shim).arg("-o").arg(&object);
    run(cc, &format!("compiling {}", shim.display()))?;

    // 3. One relocatable object.
    let emulation = match arch {
        Arch::Amd64 => "elf_x86_64_fbsd",
        Arch::I386 => "elf_i386_fbsd",
    };
    let kld = obj_dir.join(format!("{module}.kld"));
    let mut ld = zig("ld.lld");
    ld.args(["-m", emulation, "-r", "-d", "-o"])
        .arg(&kld)
        .arg(&object)
        .arg(library);
    run(ld, &format!("linking {module}.kld"))?;

    // 4. Localise everything the module does not export.
    let exports = export_list(&module_dir)?;
    let bytes =
        fs::read(&kld).map_err(|error| format!("cannot read {}: {error}", kld.display()))?;
    let defined = defined_globals(&bytes).map_err(|error| format!("{}: {error}", kld.display()))?;
    let localize: Vec<&String> = defined.iter().filter(|s| !exports.contains(*s)).collect();
    let missing: Vec<&String> = exports.iter().filter(|s| !defined.contains(*s)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "{module}: export_syms lists symbols the module does not define: {missing:?}"
        ));
    }
    let list = obj_dir.join(format!("{module}.localize"));
    let mut text = String::new();
    for symbol in &localize {
        text.push_str(symbol);
        text.push('\n');
    }
    fs::write(&list, text).map_err(|error| format!("cannot write {}: {error}", list.display()))?;
    let mut localise = Command::new(objcopy());
    localise
        .arg(format!("--localize-symbols={}", list.display()))
        .arg(&kld);
    run(localise, &format!("localising the symbols of {module}.kld"))?;

    // 5. The module file.
    let ko = out_dir.join(format!("{module}.ko"));
    match arch {
        Arch::Amd64 => {
            let mut strip = Command::new(objcopy());
            strip.arg("--strip-debug").arg(&kld).arg(&ko);
            run(strip, &format!("writing {module}.ko"))?;
        }
        Arch::I386 => {
            let mut shared = zig("ld.lld");
            shared
                .args([
                    "-m",
                    emulation,
                    "-Bshareable",
                    "-znotext",
                    "-znorelro",
                    "--hash-style=sysv",
                    "--strip-debug",
                    "-o",
                ])
                .arg(&ko)
                .arg(&kld);
            run(shared, &format!("linking {module}.ko"))?;
        }
    }
    Ok(Linked { ko, kpi })
}

/// GNU objcopy (binutils), which understands FreeBSD-branded ELF objects of both widths.
fn objcopy() -> String {
    std::env::var("KMOD_OBJCOPY").unwrap_or_else(|_| "objcopy".into())
}

/// The module's `export_syms` (one symbol per line, `#` comments), empty when absent — the
/// same file and default (`EXPORT_SYMS=NO`) as bsd.kmod.mk's.
pub fn export_list(module_dir: &Path) -> Result<BTreeSet<String>, String> {
    let path = module_dir.join("export_syms");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(String::from)
            .collect()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(error) => Err(format!("cannot read {}: {error}", path.display())),
    }
}

fn defined_globals(bytes: &[u8]) -> Result<BTreeSet<String>, elf::ElfError> {
    let file = Elf::parse(bytes)?;
    let mut names = BTreeSet::new();
    for table in file.sections.iter().filter(|s| s.kind == elf::SHT_SYMTAB) {
        for symbol in file.symbols(table)? {
            if symbol.is_global() && !symbol.is_undefined() && !symbol.name.is_empty() {
                names.insert(symbol.name);
            }
        }
    }
    Ok(names)
}
