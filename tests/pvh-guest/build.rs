//! Links the guest with its own script (loaded at 1 MiB, Xen note in the loaded image) using
//! GNU ld, which every Debian build machine has (Debian's `rust-lld` needs the separate lld-22).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=pvh.ld");
    println!("cargo:rustc-link-arg-bins=-T{dir}/pvh.ld");
    println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rustc-link-arg-bins=-static");
    println!("cargo:rustc-link-arg-bins=--build-id=none");
    // GNU ld's default emulation is the host's (x86_64).
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86") {
        println!("cargo:rustc-link-arg-bins=-melf_i386");
    }
}
