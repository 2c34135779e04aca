//! Generates the data of the layout tests: a C program that prints the layout of every
//! struct and union as a C compiler sees it, and the same table computed by Rust from the
//! generated bindings.
//!
//! Each line is `key<TAB>a<TAB>b`:
//! * for a type, `key` is its C spelling (`struct blkif_request`, or a typedef name such as
//!   `__guest_handle_uint8`), `a` its size and `b` its alignment;
//! * for a field, `key` is `<type>.<member designator>`, `a` its offset and `b` its size.
//!   Fields of anonymous nested structs/unions are reached through their parent, as C spells
//!   them (`struct start_info.console.domU.mfn`, `struct vcpu_info.arch.cr2`); members of an
//!   anonymous member are named directly, as C11 does.
//!
//! Bitfields are not addressable in C and are skipped (their storage unit is covered by the
//! size of the enclosing type and the offsets of the following fields). Flexible array
//! members have no `sizeof` in C: only their offset is compared (size printed as 0).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use quote::ToTokens;
use syn::Type;

use crate::postprocess::Processed;
use crate::{Includes, Width, INTERFACE_VERSION_DEFINE};

/// Rust keywords that bindgen renames by appending `_`.
const RUST_KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
    "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
    "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref",
    "return", "self", "Self", "static", "struct", "super", "trait", "true", "try", "type",
    "typeof", "union", "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

fn c_field_name(rust: &str) -> &str {
    match rust.strip_suffix('_') {
        Some(stem) if RUST_KEYWORDS.contains(&stem) => stem,
        _ => rust,
    }
}

/// The last path segment of `ty` if it is a plain path (`foo`, `ctypes::c_uint`).
fn path_name(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

struct Generator<'a> {
    processed: &'a Processed,
    c_spelling: &'a BTreeMap<String, String>,
    c: String,
    rust: String,
    types: usize,
    fields: usize,
    bitfield_units: usize,
    /// Anonymous aggregates whose fields were reached through a named parent.
    anonymous_reached: BTreeSet<String>,
}

impl Generator<'_> {
    fn is_anonymous_aggregate(&self, name: &str) -> bool {
        self.processed.aggregates.contains_key(name) && !self.c_spelling.contains_key(name)
    }

    fn type_entry(&mut self, rust_name: &str, c_type: &str) {
        let key = c_type;
        writeln!(self.c, "    T({key:?}, {c_type});").unwrap();
        writeln!(
            self.rust,
            "        ({key:?}, {rust_name:?}, ::core::mem::size_of::<{rust_name}>(), \
             ::core::mem::align_of::<{rust_name}>()),"
        )
        .unwrap();
        self.types += 1;
    }

    /// Emits the fields of aggregate `agg`, which sits at Rust offset `rust_offset` inside the
    /// checked type `c_type`, its members being designated in C by `c_prefix` + name.
    fn fields(
        &mut self,
        agg: &str,
        c_type: &str,
        c_prefix: &str,
        rust_path: &str,
        rust_offset: &str,
    ) {
        let aggregate = self.processed.aggregates[agg].clone();
        if !self.c_spelling.contains_key(agg) {
            self.anonymous_reached.insert(agg.to_string());
        }
        for field in &aggregate.fields {
            let name = field.name.as_str();
            if name.starts_with("__bindgen_padding_") || name.starts_with("_bitfield_align_") {
                continue;
            }
            if name.starts_with("_bitfield_") {
                self.bitfield_units += 1;
                continue;
            }
            let offset = if rust_offset.is_empty() {
                format!("::core::mem::offset_of!({agg}, {name})")
            } else {
                format!("{rust_offset} + ::core::mem::offset_of!({agg}, {name})")
            };
            let rust_path = format!("{rust_path}.{name}");
            if name.starts_with("__bindgen_anon_") {
                let inner = path_name(&field.ty)
                    .filter(|n| self.is_anonymous_aggregate(n))
                    .unwrap_or_else(|| {
                        panic!("xen-sys build: {agg}.{name} is not an anonymous aggregate")
                    });
                self.fields(&inner, c_type, c_prefix, &rust_path, &offset);
                continue;
            }
            let designator = format!("{c_prefix}{}", c_field_name(name));
            let key = format!("{c_type}.{designator}");
            let incomplete = path_name(&field.ty).as_deref() == Some("__IncompleteArrayField");
            if incomplete {
                writeln!(self.c, "    FX({key:?}, {c_type}, {designator});").unwrap();
                writeln!(self.rust, "        ({key:?}, {rust_path:?}, {offset}, 0),").unwrap();
            } else {
                let ty = field.ty.to_token_stream().to_string();
                writeln!(self.c, "    F({key:?}, {c_type}, {designator});").unwrap();
                writeln!(
                    self.rust,
                    "        ({key:?}, {rust_path:?}, {offset}, ::core::mem::size_of::<{ty}>()),"
                )
                .unwrap();
            }
            self.fields += 1;
            // Recurse into anonymous types, which have no C name of their own.
            match &field.ty {
                Type::Array(array) => {
                    if let Some(elem) =
                        path_name(&array.elem).filter(|n| self.is_anonymous_aggregate(n))
                    {
                        self.fields(
                            &elem,
                            c_type,
                            &format!("{designator}[0]."),
                            &format!("{rust_path}[0]"),
                            &offset,
                        );
                    }
                }
                ty => {
                    if let Some(inner) = path_name(ty).filter(|n| self.is_anonymous_aggregate(n)) {
                        self.fields(
                            &inner,
                            c_type,
                            &format!("{designator}."),
                            &rust_path,
                            &offset,
                        );
                    }
                }
            }
        }
    }
}

/// Builds `layout_<width>.rs`.
pub fn generate(
    processed: &Processed,
    c_spelling: &BTreeMap<String, String>,
    width: Width,
    includes: &Includes,
) -> String {
    let mut g = Generator {
        processed,
        c_spelling,
        c: String::new(),
        rust: String::new(),
        types: 0,
        fields: 0,
        bitfield_units: 0,
        anonymous_reached: BTreeSet::new(),
    };
    for (rust_name, c_type) in c_spelling {
        if !processed.aggregates.contains_key(rust_name) {
            continue;
        }
        g.type_entry(rust_name, c_type);
        g.fields(rust_name, c_type, "", rust_name, "");
    }

    let mut c_program = String::new();
    c_program.push_str(
        "/* Generated by xen-sys's build script: prints the C layout of every struct/union. */\n\
         #include <stddef.h>\n\
         #include <stdio.h>\n",
    );
    writeln!(c_program, "#include \"{}\"", includes.wrapper.display()).unwrap();
    c_program.push_str(
        "#define T(key, type) printf(\"%s\\t%zu\\t%zu\\n\", key, sizeof(type), _Alignof(type))\n\
         #define F(key, type, member) printf(\"%s\\t%zu\\t%zu\\n\", key, offsetof(type, member), \
         sizeof(((type *)0)->member))\n\
         #define FX(key, type, member) printf(\"%s\\t%zu\\t0\\n\", key, offsetof(type, member))\n\
         int main(void)\n{\n",
    );
    c_program.push_str(&g.c);
    c_program.push_str("    return 0;\n}\n");

    let module = width.module();
    let mut out = String::new();
    writeln!(
        out,
        "// Generated by xen-sys's build script for the {module} layout. Do not edit."
    )
    .unwrap();
    writeln!(out, "/// `gcc` flag selecting the {module} ABI.").unwrap();
    writeln!(out, "pub const GCC_FLAG: &str = {:?};", width.gcc_flag()).unwrap();
    writeln!(out, "/// Include directories, in order.").unwrap();
    writeln!(
        out,
        "pub const INCLUDE_DIRS: &[&str] = &[{:?}, {:?}];",
        includes.ours.display().to_string(),
        includes.xen.display().to_string()
    )
    .unwrap();
    writeln!(out, "/// Preprocessor definitions bindgen was given.").unwrap();
    writeln!(
        out,
        "pub const DEFINES: &[&str] = &[{INTERFACE_VERSION_DEFINE:?}];"
    )
    .unwrap();
    writeln!(out, "/// Number of structs/unions in the table.").unwrap();
    writeln!(out, "pub const TYPES: usize = {};", g.types).unwrap();
    writeln!(out, "/// Number of fields in the table.").unwrap();
    writeln!(out, "pub const FIELDS: usize = {};", g.fields).unwrap();
    writeln!(
        out,
        "/// Bitfield storage units, which C cannot address (not compared)."
    )
    .unwrap();
    writeln!(
        out,
        "pub const BITFIELD_UNITS_SKIPPED: usize = {};",
        g.bitfield_units
    )
    .unwrap();
    let unreached: Vec<String> = processed
        .aggregates
        .keys()
        .filter(|n| !c_spelling.contains_key(*n) && !g.anonymous_reached.contains(*n))
        .map(|n| format!("{n:?}"))
        .collect();
    writeln!(
        out,
        "/// Anonymous structs/unions not reached from a named type (should be none)."
    )
    .unwrap();
    writeln!(
        out,
        "pub const UNREACHED: &[&str] = &[{}];",
        unreached.join(", ")
    )
    .unwrap();
    writeln!(
        out,
        "/// Structs that got `packed(N)`/`align(N)` to keep this layout on every target."
    )
    .unwrap();
    let adjusted: Vec<String> = processed
        .adjusted
        .iter()
        .map(|(k, v)| format!("({k:?}, {v:?})"))
        .collect();
    writeln!(
        out,
        "pub const ADJUSTED: &[(&str, &str)] = &[{}];",
        adjusted.join(", ")
    )
    .unwrap();
    writeln!(
        out,
        "/// The C program; prints one `key\\ta\\tb` line per entry."
    )
    .unwrap();
    writeln!(out, "pub const C_PROGRAM: &str = {c_program:?};").unwrap();
    writeln!(
        out,
        "/// `(key, rust path, a, b)`, computed by rustc from the bindings."
    )
    .unwrap();
    writeln!(
        out,
        "pub const RUST_LAYOUT: &[(&str, &str, usize, usize)] = {{"
    )
    .unwrap();
    writeln!(out, "    #[allow(unused_imports)]").unwrap();
    writeln!(out, "    use ::xen_sys::{module}::*;").unwrap();
    writeln!(out, "    &[").unwrap();
    out.push_str(&g.rust);
    writeln!(out, "    ]").unwrap();
    writeln!(out, "}};").unwrap();
    out
}
