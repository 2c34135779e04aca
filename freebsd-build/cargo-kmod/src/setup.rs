//! Installing what the commands need on a fresh machine, saying what and why first.
//!
//! Only Debian (the CI machine) is set up automatically, and only as root; elsewhere the
//! missing pieces are listed with the command that would provide them, so nothing is ever
//! installed behind the user's back on a system we do not know.

use std::path::Path;
use std::process::Command;

/// One Debian package and the reason the project needs it.
#[derive(Debug, Clone, Copy)]
struct Package {
    name: &'static str,
    why: &'static str,
    /// A file whose presence shows the package (or an equivalent) is already there.
    present_if: &'static str,
}

const KERNEL_TOOLCHAIN: &[Package] = &[
    Package {
        name: "rustc-web",
        why: "a rustc whose standard library source is installable, for -Zbuild-std on the \
              custom kernel targets (rustup cannot fetch rust-src here)",
        present_if: "/usr/bin/rustc",
    },
    Package {
        name: "cargo-web",
        why: "the cargo matching rustc-web",
        present_if: "/usr/bin/cargo",
    },
    Package {
        name: "rust-web-src",
        why: "core/alloc source that build-std compiles for the kernel targets",
        present_if: "/usr/lib/rustlib/src/rust/library/core/Cargo.toml",
    },
];

const MODULE_LINKING: &[Package] = &[
    Package {
        name: "binutils",
        why: "objcopy, to make a module's symbols local except its export list (as FreeBSD's \
              kmod.mk does) and to strip debug information",
        present_if: "/usr/bin/objcopy",
    },
    Package {
        name: "python3-pip",
        why: "pip, to install PyPI's ziglang (FreeBSD 14 headers, clang and lld) into target/tools",
        present_if: "/usr/lib/python3/dist-packages/pip/__init__.py",
    },
];

const XEN_HEADERS: &[Package] = &[
    Package {
        name: "libxen-dev",
        why: "Xen's public interface headers, the input of the xen-sys bindings",
        present_if: "/usr/include/xen/xen.h",
    },
    Package {
        name: "libclang-dev",
        why: "libclang, which bindgen uses to read the Xen headers",
        present_if: "/usr/lib/llvm-14/lib/libclang.so",
    },
    Package {
        name: "clang",
        why: "clang's own headers (stddef.h ...) for bindgen",
        present_if: "/usr/bin/clang",
    },
];

/// The real-Xen scenarios (tests/xen-harness): QEMU, and the dom0 userland copied from the
/// host into dom0's initramfs. The hypervisor and dom0 kernel are not installed: the harness
/// fetches them with `apt-get download` into target/real-xen/cache (installing them would run
/// this machine's bootloader and initramfs hooks for images only QEMU boots).
const REAL_XEN: &[Package] = &[
    Package {
        name: "qemu-system-x86",
        why: "QEMU (TCG) to boot the Xen hypervisor with a Linux dom0 for the real-Xen scenarios",
        present_if: "/usr/bin/qemu-system-x86_64",
    },
    Package {
        name: "xen-utils-4.17",
        why: "xl, xenstored, xenconsoled and their libraries, copied into the real-Xen dom0",
        present_if: "/usr/lib/xen-4.17/bin/xl",
    },
    Package {
        name: "busybox-static",
        why: "a static busybox: the real-Xen dom0's shell and utilities",
        present_if: "/usr/share/doc/busybox-static",
    },
    Package {
        name: "socat",
        why: "the UDP echo in the real-Xen dom0 that the netfront scenario talks to",
        present_if: "/usr/bin/socat",
    },
    Package {
        name: "binutils",
        why: "objcopy, to strip the PVH test guest before it goes into dom0",
        present_if: "/usr/bin/objcopy",
    },
];

const HOST_TESTS: &[Package] = &[
    Package {
        name: "gcc-multilib",
        why: "gcc -m32, to check the x86_32 ABI layouts against a C compiler",
        present_if: "/usr/lib/gcc/x86_64-linux-gnu/12/32/libgcc.a",
    },
    Package {
        name: "iproute2",
        why: "ip(8), which the network end-to-end tests and bench use for namespaces, TAP and veth",
        present_if: "/usr/sbin/ip",
    },
];

/// What a command needs set up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    pub kernel_toolchain: bool,
    /// Linking `.ko` files: binutils, and the ziglang package (FreeBSD headers, clang, lld).
    pub modules: bool,
    pub host_tests: bool,
    /// The real-Xen scenarios: QEMU, Xen's tools, busybox.
    pub real_xen: bool,
}

impl Needs {
    pub fn everything() -> Needs {
        Needs {
            kernel_toolchain: true,
            modules: true,
            host_tests: true,
            real_xen: true,
        }
    }

    fn packages(&self) -> Vec<Package> {
        let mut packages = Vec::new();
        // Every build runs the xen-sys build script, which needs the headers and bindgen.
        packages.extend_from_slice(XEN_HEADERS);
        if self.kernel_toolchain {
            packages.extend_from_slice(KERNEL_TOOLCHAIN);
        }
        if self.modules {
            packages.extend(
                MODULE_LINKING
                    .iter()
                    // Any working `python3 -m pip` will do.
                    .filter(|package| package.name != "python3-pip" || !python_has_pip()),
            );
        }
        if self.host_tests {
            packages.extend_from_slice(HOST_TESTS);
        }
        if self.real_xen {
            packages.extend_from_slice(REAL_XEN);
        }
        packages
    }
}

/// Makes sure everything in `needs` is present, installing it on Debian as root when allowed.
pub fn ensure(needs: &Needs, allow_install: bool) -> Result<(), String> {
    let needs = Needs {
        // A user-provided kernel toolchain (e.g. rustup nightly with rust-src on FreeBSD)
        // replaces the Debian packages.
        kernel_toolchain: needs.kernel_toolchain && !kernel_toolchain_overridden(),
        ..*needs
    };
    ensure_packages(&needs.packages(), allow_install)?;
    if needs.modules {
        ensure_ziglang(allow_install)?;
        ensure_ck(allow_install)?;
    }
    if needs.host_tests {
        ensure_cargo_fuzz(allow_install)?;
    }
    Ok(())
}

/// The PyPI package that carries FreeBSD 14's system headers (`_KERNEL` parts included) for
/// x86_64 and x86, with clang and lld able to target FreeBSD; pinned so every machine compiles
/// the shims against the same headers.
const ZIGLANG: &str = "ziglang==0.17.0";

fn python_has_pip() -> bool {
    Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Installs `ziglang` into `target/tools/ziglang` (`pip install --target`: project-local,
/// nothing outside the build tree changes) when it is not there.
fn ensure_ziglang(allow_install: bool) -> Result<(), String> {
    let dir = crate::link::ziglang_dir();
    let marker = dir.join("ziglang-0.17.0.dist-info");
    if marker.is_dir() || std::env::var_os("KMOD_ZIGLANG_DIR").is_some() {
        return Ok(());
    }
    if !allow_install {
        return Err(format!(
            "missing {ZIGLANG} (FreeBSD 14 headers, clang and lld for the C shims and the .ko \
             link): python3 -m pip install --target {} {ZIGLANG}",
            dir.display()
        ));
    }
    println!(
        "cargo kmod: installing {ZIGLANG} from PyPI into {}: FreeBSD 14 headers, clang and lld \
         to compile the modules' C shims and link the .ko files",
        dir.display()
    );
    let install = |extra: &[&str]| {
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(extra)
            .arg("--target")
            .arg(&dir)
            .arg(ZIGLANG)
            .status()
            .is_ok_and(|status| status.success())
    };
    // Debian's pip refuses to touch an "externally managed" Python unless told; with
    // --target nothing of the system's changes, so saying so is safe.
    retried(&format!("pip install {ZIGLANG}"), NET_RETRY_DELAYS, || {
        if install(&[]) || install(&["--break-system-packages"]) {
            Ok(())
        } else {
            Err(format!("pip install {ZIGLANG} failed"))
        }
    })
}

/// Seconds to wait before the second and third try of a step that needs the network: DNS has
/// failed here for a moment ("Temporary failure resolving 'deb.debian.org'"), and one such
/// moment must not fail a whole `cargo kmod test`.
const NET_RETRY_DELAYS: &[u64] = &[5, 10];

/// Runs `step`, and again after each of `delays` (seconds) while it fails; the last error.
fn retried<T>(
    what: &str,
    delays: &[u64],
    mut step: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let mut result = step();
    for delay in delays {
        match &result {
            Ok(_) => break,
            Err(error) => {
                println!("cargo kmod: {what}: {error}; trying again in {delay} s");
                std::thread::sleep(std::time::Duration::from_secs(*delay));
            }
        }
        result = step();
    }
    result
}

/// Concurrency Kit's headers: FreeBSD's `net/if_var.h` (the network modules' shims) includes
/// `<sys/ck.h>`, which in the kernel includes `<ck_queue.h>`/`<ck_epoch.h>` from the kernel
/// source's `contrib/ck/include` (bsd.kmod.mk adds it on FreeBSD). They are not in the ziglang
/// package; Debian's `libck-dev` carries the same upstream headers. Unpacked (not installed)
/// into `target/tools/ck` with `apt-get download` and `dpkg-deb -x`: no root, nothing outside
/// the build tree changes.
fn ensure_ck(allow_install: bool) -> Result<(), String> {
    let dir = crate::link::ck_dir();
    if dir.join("usr/include/ck_queue.h").is_file() {
        return Ok(());
    }
    let tools = dir
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| dir.clone());
    if !allow_install {
        return Err(format!(
            "missing Concurrency Kit headers (FreeBSD's net/if_var.h needs ck_queue.h): \
             cd {} && apt-get download libck-dev && dpkg-deb -x libck-dev_*.deb {}",
            tools.display(),
            dir.display()
        ));
    }
    println!(
        "cargo kmod: unpacking Debian's libck-dev into {} (Concurrency Kit headers for \
         FreeBSD's net/if_var.h)",
        dir.display()
    );
    std::fs::create_dir_all(&tools)
        .map_err(|error| format!("cannot create {}: {error}", tools.display()))?;
    retried("apt-get download libck-dev", NET_RETRY_DELAYS, || {
        let downloaded = Command::new("apt-get")
            .args(["download", "libck-dev"])
            .current_dir(&tools)
            .status()
            .is_ok_and(|status| status.success());
        if downloaded {
            Ok(())
        } else {
            Err("apt-get download libck-dev failed".into())
        }
    })?;
    let deb = std::fs::read_dir(&tools)
        .map_err(|error| format!("cannot list {}: {error}", tools.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libck-dev_") && n.ends_with(".deb"))
        })
        .ok_or("apt-get download libck-dev left no .deb")?;
    let unpacked = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&dir)
        .status()
        .is_ok_and(|status| status.success());
    if unpacked && dir.join("usr/include/ck_queue.h").is_file() {
        Ok(())
    } else {
        Err(format!(
            "dpkg-deb -x {} {} failed",
            deb.display(),
            dir.display()
        ))
    }
}

/// The suite's short fuzz runs use cargo-fuzz on the installed nightly toolchain.
fn ensure_cargo_fuzz(allow_install: bool) -> Result<(), String> {
    let has = |args: &[&str]| {
        Command::new("cargo")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !has(&["+nightly", "--version"]) {
        return Err(
            "the fuzz runs need a nightly toolchain: rustup toolchain install nightly".into(),
        );
    }
    if has(&["+nightly", "fuzz", "--version"]) {
        return Ok(());
    }
    if !allow_install {
        return Err("missing cargo-fuzz (for the fuzz runs): cargo install cargo-fuzz".into());
    }
    println!("cargo kmod: installing cargo-fuzz from crates.io: it drives the suite's fuzz runs");
    let status = Command::new("cargo")
        .args(["install", "--locked", "cargo-fuzz"])
        .status()
        .map_err(|error| format!("cannot run cargo install: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo install cargo-fuzz failed ({status})"))
    }
}

/// `KMOD_CARGO`/`KMOD_RUSTC` name a kernel toolchain of the user's choosing.
pub fn kernel_toolchain_overridden() -> bool {
    std::env::var_os("KMOD_CARGO").is_some()
}

fn ensure_packages(packages: &[Package], allow_install: bool) -> Result<(), String> {
    let missing: Vec<Package> = packages
        .iter()
        .copied()
        .filter(|package| !Path::new(package.present_if).exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|package| package.name).collect();
    let is_debian = Path::new("/etc/debian_version").exists();
    let is_root = effective_uid_is_root();
    if !(allow_install && is_debian && is_root) {
        let mut message = String::from("missing prerequisites:\n");
        for package in &missing {
            message += &format!("  {:<14} {}\n", package.name, package.why);
        }
        message += &if is_debian {
            format!("install them with: apt-get install {}", names.join(" "))
        } else {
            "install the equivalents (on FreeBSD: pkg install xen-tools llvm; a Rust nightly \
             with rust-src, named by KMOD_CARGO/KMOD_RUSTC) and run again"
                .to_string()
        };
        return Err(message);
    }
    println!(
        "cargo kmod: installing {} Debian package(s):",
        missing.len()
    );
    for package in &missing {
        println!("  {:<14} {}", package.name, package.why);
    }
    run_apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(names.iter());
    run_apt(&install)?;
    let still_missing: Vec<&str> = missing
        .iter()
        .filter(|package| !Path::new(package.present_if).exists())
        .map(|package| package.present_if)
        .collect();
    if still_missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "apt-get reported success but these are still missing: {}",
            still_missing.join(", ")
        ))
    }
}

fn run_apt(args: &[&str]) -> Result<(), String> {
    retried(
        &format!("apt-get {}", args.join(" ")),
        NET_RETRY_DELAYS,
        || {
            let status = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .map_err(|error| format!("cannot run apt-get: {error}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("apt-get {} failed ({status})", args.join(" ")))
            }
        },
    )
}

fn effective_uid_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| output.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

#[cfg(test)]
mod retry_tests {
    use super::retried;

    #[test]
    fn a_failing_step_is_tried_once_more_per_delay_and_stops_at_success() {
        let mut calls = 0;
        let got = retried("step", &[0, 0], || {
            calls += 1;
            if calls < 3 {
                Err(format!("failure {calls}"))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(got, Ok(3));
        let mut calls = 0;
        let got: Result<(), String> = retried("step", &[0, 0], || {
            calls += 1;
            Err(format!("failure {calls}"))
        });
        assert_eq!(
            got,
            Err("failure 3".to_string()),
            "the last error, after 3 tries"
        );
        let mut calls = 0;
        assert_eq!(
            retried("step", &[0, 0], || {
                calls += 1;
                Ok::<_, String>(calls)
            }),
            Ok(1)
        );
    }
}
