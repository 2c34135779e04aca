//! Build script of `xen-sys`: generates the Xen public ABI for both x86 widths.
//!
//! For each width (x86_64 and x86_32) it
//! 1. runs bindgen over `include/xen-sys.h` with the matching clang target,
//! 2. post-processes the output (`postprocess`): guest pointers become the width's
//!    `GuestPtr<T>`, structs get `packed`/`align` attributes so that their layout is the
//!    width's layout on *every* compile target, every struct/union gets a `FieldBytes` impl
//!    (for the compile-time padding proofs of `src/pod.rs`),
//! 3. writes `OUT_DIR/<width>.rs` (included by `src/lib.rs`) and
//!    `OUT_DIR/layout_<width>.rs` (a C program and the matching Rust table, used by the
//!    layout tests in `tests/`, see `layout`).
//!
//! The header directory comes from `XEN_INCLUDE_DIR`.

mod layout;
mod postprocess;

use std::collections::BTreeMap;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bindgen::callbacks::{DiscoveredItem, DiscoveredItemId, ParseCallbacks, SourceLocation};

/// One of the two x86 ABIs the crate carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    X86_64,
    X86_32,
}

impl Width {
    /// Rust module name (and file stem in `OUT_DIR`).
    pub fn module(self) -> &'static str {
        match self {
            Width::X86_64 => "x86_64",
            Width::X86_32 => "x86_32",
        }
    }

    /// The clang target whose C ABI defines the layout.
    fn clang_target(self) -> &'static str {
        match self {
            Width::X86_64 => "x86_64-unknown-linux-gnu",
            Width::X86_32 => "i686-unknown-linux-gnu",
        }
    }

    /// `gcc -mNN` flag giving the same ABI (used by the layout tests).
    pub fn gcc_flag(self) -> &'static str {
        match self {
            Width::X86_64 => "-m64",
            Width::X86_32 => "-m32",
        }
    }

    /// Size and alignment, in bytes, of a pointer (and of `long`).
    pub fn pointer_bytes(self) -> u64 {
        match self {
            Width::X86_64 => 8,
            Width::X86_32 => 4,
        }
    }
}

/// The preprocessor definition without which the headers select an old interface version
/// (and `grant_entry_v2_t` and other newer types vanish).
pub const INTERFACE_VERSION_DEFINE: &str =
    "-D__XEN_INTERFACE_VERSION__=__XEN_LATEST_INTERFACE_VERSION__";

/// What bindgen told us about a struct or union.
#[derive(Clone, Debug)]
pub struct Discovered {
    pub is_union: bool,
    /// `None` for anonymous nested types (`foo__bindgen_ty_1`).
    pub original_name: Option<String>,
    pub final_name: String,
}

#[derive(Debug, Default)]
struct Collector {
    items: Mutex<BTreeMap<DiscoveredItemId, Discovered>>,
    /// `(typedef name, aliased item)`.
    aliases: Mutex<Vec<(String, DiscoveredItemId)>>,
}

#[derive(Debug)]
struct CollectItems(Arc<Collector>);

impl ParseCallbacks for CollectItems {
    fn new_item_found(
        &self,
        id: DiscoveredItemId,
        item: DiscoveredItem,
        _source_location: Option<&SourceLocation>,
    ) {
        let (is_union, original_name, final_name) = match item {
            DiscoveredItem::Struct {
                original_name,
                final_name,
            } => (false, original_name, final_name),
            DiscoveredItem::Union {
                original_name,
                final_name,
            } => (true, original_name, final_name),
            DiscoveredItem::Alias {
                alias_name,
                alias_for,
            } => {
                let mut aliases = self.0.aliases.lock().unwrap_or_else(|e| e.into_inner());
                aliases.push((alias_name, alias_for));
                return;
            }
            _ => return,
        };
        let mut items = self.0.items.lock().unwrap_or_else(|e| e.into_inner());
        items.insert(
            id,
            Discovered {
                is_union,
                original_name,
                final_name,
            },
        );
    }
}

/// Include directories, in search order: ours (for `hvm/start_info.h`), then the Xen one.
#[derive(Clone, Debug)]
pub struct Includes {
    pub ours: PathBuf,
    pub xen: PathBuf,
    pub wrapper: PathBuf,
}

fn find_xen_headers() -> PathBuf {
    println!("cargo:rerun-if-env-changed=XEN_INCLUDE_DIR");
    let from_env = env::var_os("XEN_INCLUDE_DIR").map(PathBuf::from);
    let candidates: Vec<PathBuf> = match &from_env {
        Some(dir) => vec![dir.clone()],
        None if cfg!(target_os = "freebsd") => {
            vec![
                PathBuf::from("/usr/local/include"),
                PathBuf::from("/usr/include"),
            ]
        }
        None => vec![
            PathBuf::from("/usr/include"),
            PathBuf::from("/usr/local/include"),
        ],
    };
    for dir in &candidates {
        if dir.join("xen/xen.h").is_file() && dir.join("xen/io/ring.h").is_file() {
            return dir.clone();
        }
    }
    let tried: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
    eprintln!(
        "\nerror: xen-sys: Xen public headers not found (looked for xen/xen.h and xen/io/ring.h \
         in: {}).\n\
         Install them, or set XEN_INCLUDE_DIR to the directory that contains `xen/`:\n\
         \x20 Debian/Ubuntu: apt-get install libxen-dev        (headers in /usr/include/xen)\n\
         \x20 FreeBSD:       pkg install xen-tools xen-kernel  (headers in /usr/local/include/xen)\n\
         \x20 Xen source tree: make -C tools/include, then XEN_INCLUDE_DIR=<xen>/tools/include\n",
        tried.join(", ")
    );
    std::process::exit(1);
}

/// Output of one bindgen run.
struct Run {
    code: String,
    /// Structs and unions, in discovery order.
    items: Vec<(DiscoveredItemId, Discovered)>,
    aliases: Vec<(String, DiscoveredItemId)>,
}

fn run_bindgen(includes: &Includes, width: Width, c_naming: bool) -> Run {
    let collector = Arc::new(Collector::default());
    let builder = bindgen::Builder::default()
        .header(includes.wrapper.display().to_string())
        .clang_args([
            format!("--target={}", width.clang_target()),
            // Use the compiler's own <stdint.h>: no host C library headers are needed.
            "-ffreestanding".to_string(),
            format!("-I{}", includes.ours.display()),
            format!("-I{}", includes.xen.display()),
            INTERFACE_VERSION_DEFINE.to_string(),
        ])
        .use_core()
        .ctypes_prefix("ctypes")
        .ignore_functions()
        .ignore_methods()
        .prepend_enum_name(false)
        .explicit_padding(true)
        .derive_default(true)
        .derive_eq(true)
        .derive_hash(true)
        .impl_debug(false)
        .layout_tests(true)
        .wrap_unsafe_ops(true)
        .generate_cstr(true)
        // C comments would become rustdoc, where indented text is compiled as doctests.
        .generate_comments(false)
        .c_naming(c_naming)
        .parse_callbacks(Box::new(CollectItems(Arc::clone(&collector))));
    let builder = if c_naming {
        builder
    } else {
        builder.parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
    };
    let bindings = builder.generate().unwrap_or_else(|e| {
        panic!(
            "xen-sys: bindgen failed for {} over {}: {e}",
            width.module(),
            includes.wrapper.display()
        )
    });
    let items = collector
        .items
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(id, item)| (*id, item.clone()))
        .collect();
    let aliases = collector
        .aliases
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Run {
        code: bindings.to_string(),
        items,
        aliases,
    }
}

fn generate(includes: &Includes, width: Width, out_dir: &Path) {
    let run = run_bindgen(includes, width, false);
    // A second run with `c_naming` tells how each type is spelled in C: there, a type that
    // has a typedef of its own name (`typedef struct { ... } __guest_handle_char;`, or
    // `typedef struct foo foo;`) is reported as an alias, and that name works in C either
    // way; any other named type is a tag (`struct foo`, `union foo`).
    let c_run = run_bindgen(includes, width, true);
    let c_ids: Vec<DiscoveredItemId> = c_run.items.iter().map(|(id, _)| *id).collect();
    let ids: Vec<DiscoveredItemId> = run.items.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids, c_ids,
        "xen-sys: the two bindgen runs disagree on the set of structs/unions"
    );
    let c_spelling: BTreeMap<String, String> = run
        .items
        .iter()
        .filter_map(|(id, item)| {
            let original = item.original_name.as_ref()?;
            let typedef = c_run
                .aliases
                .iter()
                .chain(&run.aliases)
                .any(|(name, target)| target == id && name == original);
            let keyword = if item.is_union { "union" } else { "struct" };
            let spelling = if typedef {
                original.clone()
            } else {
                format!("{keyword} {original}")
            };
            Some((item.final_name.clone(), spelling))
        })
        .collect();

    let processed = postprocess::process(&run.code, width);
    let file = out_dir.join(format!("{}.rs", width.module()));
    fs::write(&file, &processed.code)
        .unwrap_or_else(|e| panic!("xen-sys: writing {}: {e}", file.display()));

    let table = layout::generate(&processed, &c_spelling, width, includes);
    let file = out_dir.join(format!("layout_{}.rs", width.module()));
    fs::write(&file, table).unwrap_or_else(|e| panic!("xen-sys: writing {}: {e}", file.display()));
}

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let ours = manifest_dir.join("include");
    println!("cargo:rerun-if-changed={}", ours.display());
    println!("cargo:rerun-if-changed=build");
    let includes = Includes {
        wrapper: ours.join("xen-sys.h"),
        ours,
        xen: find_xen_headers(),
    };
    // The two widths are independent; generate them in parallel to halve the build time.
    std::thread::scope(|s| {
        for width in [Width::X86_64, Width::X86_32] {
            let includes = &includes;
            let out_dir = &out_dir;
            s.spawn(move || generate(includes, width, out_dir));
        }
    });
}
