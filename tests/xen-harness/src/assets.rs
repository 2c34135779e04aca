//! The boot images, from Debian packages: the Xen hypervisor and a Linux kernel with its
//! modules are downloaded (`apt-get download`) and unpacked (`dpkg -x`) into the harness's
//! cache, never installed on the host (installing them would run the bootloader and initramfs
//! hooks of the build machine for images only QEMU boots). The dom0 userland (xl, xenstored,
//! xenconsoled, busybox and their libraries) is taken from the host, where `cargo kmod setup`
//! installed `xen-utils-4.17` and `busybox-static`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The hypervisor package (its `boot/xen-4.17-amd64.gz` is the multiboot image).
pub const XEN_PACKAGE: &str = "xen-hypervisor-4.17-amd64";
/// The metapackage naming the current Debian kernel.
pub const KERNEL_META_PACKAGE: &str = "linux-image-amd64";

/// Host files the dom0 image is built from, with the package that provides each.
pub const HOST_FILES: &[(&str, &str)] = &[
    ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
    ("/usr/lib/xen-4.17/bin/xl", "xen-utils-4.17"),
    ("/usr/lib/xen-4.17/bin/xenstored", "xen-utils-4.17"),
    ("/usr/lib/xen-4.17/bin/xenconsoled", "xen-utils-4.17"),
    ("/usr/lib/xen-4.17/bin/xen-init-dom0", "xen-utils-4.17"),
    ("/usr/lib/xen-4.17/bin/xenctx", "xen-utils-4.17"),
    ("/usr/bin/xenstore", "xen-utils-common"),
    ("/usr/bin/socat", "socat"),
    ("/bin/busybox", "busybox-static"),
    ("/usr/bin/objcopy", "binutils"),
];

/// Everything the boot needs from the packages.
#[derive(Debug, Clone)]
pub struct Assets {
    /// Uncompressed Xen multiboot image.
    pub xen: PathBuf,
    /// The dom0 kernel.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>` of that kernel.
    pub modules: PathBuf,
    /// The kernel version string.
    pub kernel_version: String,
}

/// Checks the host files; lists what is missing with the packages that provide it.
///
/// # Errors
/// The missing files and an `apt-get install` line.
pub fn check_host() -> Result<(), String> {
    let missing: Vec<&(&str, &str)> = HOST_FILES
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    packages.dedup();
    let files: Vec<&str> = missing.iter().map(|(f, _)| *f).collect();
    Err(format!(
        "missing {} (run `cargo kmod setup`, or: apt-get install {})",
        files.join(", "),
        packages.join(" ")
    ))
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `apt-get download PACKAGE` into `dir`, up to four times, 5, 10 and 15 s apart: a
/// fresh-clone `cargo kmod bench` once lost its whole real-Xen suite to one failed download
/// ("Temporary failure resolving 'deb.debian.org'"), which worked again a minute later.
fn download(dir: &Path, package: &str) -> Result<(), String> {
    let what = format!("apt-get download {package}");
    let mut last = String::new();
    for attempt in 1..=4 {
        if attempt > 1 {
            std::thread::sleep(std::time::Duration::from_secs(5 * (attempt - 1)));
        }
        let out = Command::new("apt-get")
            .arg("download")
            .arg(package)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("{what}: cannot run: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        last = format!(
            "{what} failed ({}): {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        println!("xen-harness: try {attempt} of 4: {last}");
    }
    Err(last)
}

/// The concrete kernel package `linux-image-amd64` depends on (e.g. `linux-image-6.1.0-56-amd64`).
fn kernel_package() -> Result<String, String> {
    if let Ok(name) = std::env::var("XEN_HARNESS_KERNEL_PACKAGE") {
        return Ok(name);
    }
    let depends = || {
        run(
            Command::new("apt-cache").args(["depends", KERNEL_META_PACKAGE]),
            "apt-cache depends linux-image-amd64",
        )
        .ok()
        .and_then(|text| parse_kernel_dependency(&text))
    };
    if let Some(name) = depends() {
        return Ok(name);
    }
    // A fresh machine may have no package lists yet.
    println!("xen-harness: no package lists for {KERNEL_META_PACKAGE}: apt-get update");
    run(
        Command::new("apt-get").args(["update", "-q"]),
        "apt-get update",
    )?;
    depends().ok_or_else(|| {
        format!("no linux-image dependency in `apt-cache depends {KERNEL_META_PACKAGE}` (run apt-get update?)")
    })
}

fn parse_kernel_dependency(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.contains(' '))
        .map(String::from)
}

/// Downloads and unpacks `package` into `cache/root` once (a stamp file records it).
fn unpack(cache: &Path, package: &str) -> Result<(), String> {
    let stamp = cache.join(format!("{package}.unpacked"));
    if stamp.exists() {
        return Ok(());
    }
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    let find_deb = || -> Option<PathBuf> {
        fs::read_dir(&debs)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
    };
    let deb = match find_deb() {
        Some(deb) => deb,
        None => {
            println!("xen-harness: downloading {package} (apt-get download)");
            download(&debs, package)?;
            find_deb().ok_or_else(|| format!("apt-get download {package} left no .deb"))?
        }
    };
    let root = cache.join("root");
    fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    run(
        Command::new("dpkg").arg("-x").arg(&deb).arg(&root),
        &format!("dpkg -x {}", deb.display()),
    )?;
    fs::write(&stamp, deb.display().to_string()).map_err(|e| format!("{}: {e}", stamp.display()))
}

/// Makes sure the hypervisor and kernel are unpacked in `cache`, and the hypervisor is
/// decompressed (QEMU's multiboot loader needs a plain ELF).
///
/// # Errors
/// Download, unpack or decompression failures, with the command that failed.
pub fn fetch(cache: &Path) -> Result<Assets, String> {
    fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let kernel_pkg = kernel_package()?;
    unpack(cache, XEN_PACKAGE)?;
    unpack(cache, &kernel_pkg)?;
    let root = cache.join("root");
    let kernel_version = kernel_pkg
        .strip_prefix("linux-image-")
        .unwrap_or(&kernel_pkg)
        .to_string();
    let vmlinuz = root.join(format!("boot/vmlinuz-{kernel_version}"));
    let modules = root.join(format!("lib/modules/{kernel_version}"));
    if !vmlinuz.exists() || !modules.exists() {
        return Err(format!(
            "{kernel_pkg} unpacked without {} or {}",
            vmlinuz.display(),
            modules.display()
        ));
    }
    let xen_gz = fs::read_dir(root.join("boot"))
        .map_err(|e| format!("{}: {e}", root.join("boot").display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("xen-4.17") && n.ends_with(".gz"))
        })
        .ok_or("the hypervisor package has no boot/xen-4.17*.gz")?;
    let xen = cache.join("xen-4.17.elf");
    if !xen.exists() {
        let out = Command::new("gzip")
            .arg("-dc")
            .arg(&xen_gz)
            .output()
            .map_err(|e| format!("gzip: {e}"))?;
        if !out.status.success() {
            return Err(format!("gzip -dc {} failed", xen_gz.display()));
        }
        fs::write(&xen, out.stdout).map_err(|e| format!("{}: {e}", xen.display()))?;
    }
    Ok(Assets {
        xen,
        vmlinuz,
        modules,
        kernel_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_concrete_kernel_package() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            parse_kernel_dependency(text).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(parse_kernel_dependency("linux-image-amd64\n"), None);
    }
}
