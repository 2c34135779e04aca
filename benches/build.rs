//! Compiles `c/ring_bench.c`: the same ring loop as the Rust benchmark, written with Xen's
//! own `io/ring.h` macros, so both run on the same machine in the same process.

fn main() {
    let include = std::env::var("XEN_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include".into());
    println!("cargo:rerun-if-changed=c/ring_bench.c");
    println!("cargo:rerun-if-env-changed=XEN_INCLUDE_DIR");
    cc::Build::new()
        .file("c/ring_bench.c")
        .include(&include)
        .opt_level(2)
        .warnings(true)
        .compile("ring_bench");
}
