//! Layout of the generated bindings, checked against gcc.
//!
//! The build script writes, per width, a C program printing the size and alignment of every
//! struct/union and the offset and size of every field (as `gcc -m64`/`-m32` lays them out)
//! and the same table computed by rustc from `xen_sys::x86_64`/`xen_sys::x86_32`. These tests
//! build and run the program and compare every line.

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::OnceLock;

    mod table_x86_64 {
        include!(concat!(env!("OUT_DIR"), "/layout_x86_64.rs"));
    }

    mod table_x86_32 {
        include!(concat!(env!("OUT_DIR"), "/layout_x86_32.rs"));
    }

    type RustEntry = (&'static str, &'static str, usize, usize);

    struct Table {
        name: &'static str,
        gcc_flag: &'static str,
        include_dirs: &'static [&'static str],
        defines: &'static [&'static str],
        c_program: &'static str,
        rust: &'static [RustEntry],
        types: usize,
        fields: usize,
        bitfield_units_skipped: usize,
        adjusted: &'static [(&'static str, &'static str)],
        unreached: &'static [&'static str],
    }

    const X86_64: Table = Table {
        name: "x86_64",
        gcc_flag: table_x86_64::GCC_FLAG,
        include_dirs: table_x86_64::INCLUDE_DIRS,
        defines: table_x86_64::DEFINES,
        c_program: table_x86_64::C_PROGRAM,
        rust: table_x86_64::RUST_LAYOUT,
        types: table_x86_64::TYPES,
        fields: table_x86_64::FIELDS,
        bitfield_units_skipped: table_x86_64::BITFIELD_UNITS_SKIPPED,
        adjusted: table_x86_64::ADJUSTED,
        unreached: table_x86_64::UNREACHED,
    };

    const X86_32: Table = Table {
        name: "x86_32",
        gcc_flag: table_x86_32::GCC_FLAG,
        include_dirs: table_x86_32::INCLUDE_DIRS,
        defines: table_x86_32::DEFINES,
        c_program: table_x86_32::C_PROGRAM,
        rust: table_x86_32::RUST_LAYOUT,
        types: table_x86_32::TYPES,
        fields: table_x86_32::FIELDS,
        bitfield_units_skipped: table_x86_32::BITFIELD_UNITS_SKIPPED,
        adjusted: table_x86_32::ADJUSTED,
        unreached: table_x86_32::UNREACHED,
    };

    /// Builds the table's C program with gcc and runs it. Fails (never skips) if gcc is absent.
    fn gcc_layout(table: &Table) -> String {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let source = dir.join(format!("xen-sys-layout-{}.c", table.name));
        let exe = dir.join(format!("xen-sys-layout-{}", table.name));
        std::fs::write(&source, table.c_program).expect("write the C program");
        let mut gcc = Command::new("gcc");
        gcc.arg(table.gcc_flag).arg("-std=gnu11").arg("-w");
        for dir in table.include_dirs {
            gcc.arg(format!("-I{dir}"));
        }
        gcc.args(table.defines).arg("-o").arg(&exe).arg(&source);
        let out = gcc.output().unwrap_or_else(|e| {
            panic!(
                "cannot run gcc ({e}): the layout tests need a C compiler. \
                 Install gcc, and gcc-multilib for -m32 (Debian: apt-get install gcc gcc-multilib)"
            )
        });
        assert!(
            out.status.success(),
            "gcc {} failed on {} (for -m32, install gcc-multilib):\n{}",
            table.gcc_flag,
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let run = Command::new(&exe).output().expect("run the layout program");
        assert!(run.status.success(), "{} failed", exe.display());
        String::from_utf8(run.stdout).expect("ASCII output")
    }

    fn cached_gcc_layout(table: &Table) -> &'static str {
        static X64: OnceLock<String> = OnceLock::new();
        static X32: OnceLock<String> = OnceLock::new();
        let cell = if table.name == "x86_64" { &X64 } else { &X32 };
        cell.get_or_init(|| gcc_layout(table))
    }

    #[derive(Debug, Default)]
    struct Comparison {
        types: usize,
        fields: usize,
        mismatches: Vec<String>,
    }

    /// Compares gcc's output with the Rust table. Every difference is reported: a value that
    /// differs, a line only one side has.
    fn compare(c_output: &str, rust: &[RustEntry]) -> Comparison {
        let mut c: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        let mut cmp = Comparison::default();
        for line in c_output.lines() {
            let mut parts = line.split('\t');
            let (Some(key), Some(a), Some(b), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                cmp.mismatches
                    .push(format!("unparsable C output line {line:?}"));
                continue;
            };
            let (Ok(a), Ok(b)) = (a.parse(), b.parse()) else {
                cmp.mismatches
                    .push(format!("unparsable C output line {line:?}"));
                continue;
            };
            if c.insert(key, (a, b)).is_some() {
                cmp.mismatches
                    .push(format!("duplicate C output key {key:?}"));
            }
        }
        let mut seen = BTreeMap::new();
        for &(key, rust_path, a, b) in rust {
            let is_field = key.contains('.');
            let (what_a, what_b) = if is_field {
                ("offset", "size")
            } else {
                ("size", "align")
            };
            seen.insert(key, ());
            match c.get(key) {
                None => cmp.mismatches.push(format!("{key} ({rust_path}): missing from the C output")),
                Some(&(ca, cb)) if (ca, cb) != (a, b) => cmp.mismatches.push(format!(
                    "{key} ({rust_path}): gcc {what_a} {ca} {what_b} {cb}, Rust {what_a} {a} {what_b} {b}"
                )),
                Some(_) => {
                    if is_field {
                        cmp.fields += 1;
                    } else {
                        cmp.types += 1;
                    }
                }
            }
        }
        for key in c.keys().filter(|k| !seen.contains_key(*k)) {
            cmp.mismatches
                .push(format!("{key}: in the C output, not in the Rust table"));
        }
        cmp
    }

    fn check(table: &Table) {
        let cmp = compare(cached_gcc_layout(table), table.rust);
        println!(
            "{}: {} structs/unions and {} fields match gcc {} ({} bitfield units not addressable \
             in C; {} structs needed packed/align to keep this layout on every target)",
            table.name,
            cmp.types,
            cmp.fields,
            table.gcc_flag,
            table.bitfield_units_skipped,
            table.adjusted.len()
        );
        assert!(
            cmp.mismatches.is_empty(),
            "{}: {} layout mismatches against gcc {} ({} types and {} fields matched):\n{}",
            table.name,
            cmp.mismatches.len(),
            table.gcc_flag,
            cmp.types,
            cmp.fields,
            cmp.mismatches.join("\n")
        );
        assert_eq!((cmp.types, cmp.fields), (table.types, table.fields));
        assert!(
            table.unreached.is_empty(),
            "anonymous types whose fields are not checked: {:?}",
            table.unreached
        );
        // Guard against a silently shrinking table (e.g. a header dropped from the wrapper).
        assert!(
            cmp.types > 300 && cmp.fields > 850,
            "suspiciously few entries checked"
        );
    }

    #[test]
    fn layout_x86_64_matches_gcc() {
        check(&X86_64);
    }

    #[test]
    fn layout_x86_32_matches_gcc() {
        check(&X86_32);
    }

    #[test]
    fn i386_u64_alignment_is_reproduced() {
        // uint64_t is 4-aligned in i386 structs: blkif_request.id sits at 4, not 8.
        assert!(X86_32.adjusted.contains(&("blkif_request", "packed(4)")));
        assert!(X86_32
            .rust
            .contains(&("struct blkif_request.id", "blkif_request.id", 4, 8)));
        assert!(X86_64
            .rust
            .contains(&("struct blkif_request.id", "blkif_request.id", 8, 8)));
        // Nothing in the x86_32 module is 8-aligned; x86_64 structs with 64-bit members are.
        assert!(X86_32.rust.iter().all(|e| e.0.contains('.') || e.3 <= 4));
        assert!(X86_64
            .rust
            .contains(&("struct shared_info", "shared_info", 3136, 8)));
    }

    /// The differences between the two layouts that the protocols depend on, as gcc and
    /// rustc see them.
    #[test]
    fn known_width_differences() {
        /// `(a, b)`: size and alignment, or offset and size.
        type Pair = (usize, usize);
        let expected: &[(&str, Pair, Pair)] = &[
            // (key, x86_64 (a, b), x86_32 (a, b)); a/b = size/align or offset/size.
            ("struct blkif_request", (112, 8), (108, 4)),
            // The request header (operation, nr_segments, handle, id, sector_number).
            ("struct blkif_request.seg", (24, 88), (20, 88)),
            ("struct blkif_request.id", (8, 8), (4, 8)),
            ("struct blkif_response", (16, 8), (12, 4)),
            ("struct blkif_response.status", (10, 2), (10, 2)),
            ("struct blkif_request_indirect", (64, 8), (64, 4)),
            ("struct shared_info", (3136, 8), (2344, 4)),
            ("struct gnttab_copy", (40, 8), (24, 4)),
            ("struct netif_tx_request", (12, 4), (12, 4)),
            ("struct hvm_start_info", (56, 8), (56, 4)),
        ];
        for (table, pick) in [(&X86_64, 0), (&X86_32, 1)] {
            let c: BTreeMap<&str, (usize, usize)> = cached_gcc_layout(table)
                .lines()
                .filter_map(|l| {
                    let mut p = l.split('\t');
                    Some((
                        p.next()?,
                        (p.next()?.parse().ok()?, p.next()?.parse().ok()?),
                    ))
                })
                .collect();
            for &(key, x64, x32) in expected {
                let want = if pick == 0 { x64 } else { x32 };
                let rust = table.rust.iter().find(|e| e.0 == key).map(|e| (e.2, e.3));
                assert_eq!(rust, Some(want), "{} Rust {key}", table.name);
                assert_eq!(c.get(key).copied(), Some(want), "{} gcc {key}", table.name);
            }
        }
        use std::mem::{offset_of, size_of};
        assert_eq!(size_of::<xen_sys::x86_64::blkif_request>(), 112);
        assert_eq!(size_of::<xen_sys::x86_32::blkif_request>(), 108);
        assert_eq!(offset_of!(xen_sys::x86_64::blkif_request, seg), 24);
        assert_eq!(offset_of!(xen_sys::x86_32::blkif_request, seg), 20);
        assert_eq!(size_of::<xen_sys::x86_64::blkif_response>(), 16);
        assert_eq!(size_of::<xen_sys::x86_32::blkif_response>(), 12);
        assert_eq!(size_of::<xen_sys::x86_64::shared_info>(), 3136);
        assert_eq!(size_of::<xen_sys::x86_32::shared_info>(), 2344);
        assert_eq!(size_of::<xen_sys::x86_64::gnttab_copy>(), 40);
        assert_eq!(size_of::<xen_sys::x86_32::gnttab_copy>(), 24);
    }

    #[test]
    fn comparator_reports_every_mismatch() {
        let gcc = cached_gcc_layout(&X86_32);
        let mut rust: Vec<RustEntry> = X86_32.rust.to_vec();
        let mut perturbed = 0;
        for entry in &mut rust {
            match entry.0 {
                // The i386 size, as if the x86_64 one had leaked in.
                "struct blkif_request" => {
                    entry.2 = 112;
                    perturbed += 1;
                }
                "struct blkif_request.id" => {
                    entry.2 += 4;
                    perturbed += 1;
                }
                _ => {}
            }
        }
        assert_eq!(perturbed, 2);
        let removed = rust
            .iter()
            .position(|e| e.0 == "struct blkif_response.status")
            .expect("entry");
        rust.remove(removed);
        rust.push(("struct no_such_thing", "no_such_thing", 1, 1));

        let cmp = compare(gcc, &rust);
        assert_eq!(cmp.mismatches.len(), 4, "{:#?}", cmp.mismatches);
        let all = cmp.mismatches.join("\n");
        assert!(all
            .contains("struct blkif_request (blkif_request): gcc size 108 align 4, Rust size 112"));
        assert!(all.contains("struct blkif_request.id (blkif_request.id): gcc offset 4"));
        assert!(
            all.contains("struct blkif_response.status: in the C output, not in the Rust table")
        );
        assert!(all.contains("struct no_such_thing (no_such_thing): missing from the C output"));
    }

    #[test]
    fn comparator_rejects_malformed_output() {
        let cmp = compare(
            "struct a\t1\t1\ngarbage\nstruct a\t1\t1\n",
            &[("struct a", "a", 1, 1)],
        );
        assert_eq!(cmp.mismatches.len(), 2, "{:#?}", cmp.mismatches);
    }
}
