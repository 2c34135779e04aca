//! Rewrites bindgen's output so that one width's bindings have that width's layout whatever
//! the compile target is.
//!
//! bindgen computes every layout for the clang target it was given, but the Rust code it
//! prints leaves alignment to the Rust compiler of the *compile* target. Three things differ
//! between x86_64 and i686 and are fixed here:
//!
//! * Pointers (guest handles, `*_front_ring.sring`, ...) are 8 or 4 bytes. Every pointer
//!   type in a struct/union field or type alias becomes the width's `GuestPtr<T>`
//!   (`crate::ptr::Ptr64<T>` / `Ptr32<T>`): `*mut T` when the width is the compile target's,
//!   an integer of the width's size otherwise.
//! * `u64`/`i64` are 8-aligned on x86_64 but 4-aligned inside i386 structs. An x86_32 struct
//!   whose fields would be over-aligned on a 64-bit compile target gets `packed(A)`, `A` being
//!   its C alignment (always 4 here); packing to the C alignment reproduces the i386 rule.
//! * Conversely, compiled for i686, an x86_64 struct would be under-aligned. bindgen's
//!   `explicit_padding` already materialises every gap as a `__bindgen_padding_N` field, so
//!   offsets hold on any target; such a struct gets `align(A)` to restore its size and
//!   alignment.
//!
//! bindgen's own layout assertions (`const _: () = { ["Size of foo"][...] ... }`) are kept:
//! they check every size, alignment and field offset at compile time, on every target.

use std::collections::BTreeMap;

use quote::ToTokens;
use syn::visit_mut::{self, VisitMut};
use syn::{Attribute, Expr, Fields, Item, Lit, Type};

use crate::Width;

/// A field of a generated struct or union, after post-processing.
#[derive(Clone, Debug)]
pub struct Field {
    /// The Rust identifier (`type_` for C's `type`).
    pub name: String,
    pub ty: Type,
}

/// A generated struct or union, after post-processing.
#[derive(Clone, Debug)]
pub struct Aggregate {
    pub is_union: bool,
    pub fields: Vec<Field>,
}

/// The result of [`process`].
#[derive(Debug)]
pub struct Processed {
    /// Formatted Rust source of the width's module body.
    pub code: String,
    /// Every non-generic struct and union, by Rust name.
    pub aggregates: BTreeMap<String, Aggregate>,
    /// Structs that received `packed(N)` (x86_32) or `align(N)` (x86_64), for the report.
    pub adjusted: BTreeMap<String, String>,
}

/// Turns every raw pointer type into `GuestPtr<T>`.
struct PointerToGuestPtr;

impl VisitMut for PointerToGuestPtr {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        visit_mut::visit_type_mut(self, ty);
        if let Type::Ptr(ptr) = ty {
            let elem = &ptr.elem;
            *ty = syn::parse_quote!(GuestPtr<#elem>);
        }
    }
}

/// The repr of a struct/union as bindgen printed it.
#[derive(Clone, Copy, Debug, Default)]
struct Repr {
    packed: Option<u64>,
    align: Option<u64>,
}

fn parse_repr(attrs: &[Attribute]) -> Repr {
    let mut repr = Repr::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("repr")) {
        attr.parse_nested_meta(|meta| {
            let arg = if meta.input.peek(syn::token::Paren) {
                let content;
                syn::parenthesized!(content in meta.input);
                Some(content.parse::<syn::LitInt>()?.base10_parse::<u64>()?)
            } else {
                None
            };
            if meta.path.is_ident("packed") {
                repr.packed = Some(arg.unwrap_or(1));
            } else if meta.path.is_ident("align") {
                repr.align = arg;
            }
            Ok(())
        })
        .expect("xen-sys build: unexpected #[repr] from bindgen");
    }
    repr
}

/// A model of the compile target's Rust alignment of 8-byte scalars: `eight` is the
/// alignment of `u64`/`i64`/`f64` (8 on 64-bit targets, 4 on i686).
#[derive(Clone, Copy, Debug)]
struct Host {
    eight: u64,
}

struct Layouts<'a> {
    width: Width,
    aggregates: &'a BTreeMap<String, (Aggregate, Repr)>,
    aliases: &'a BTreeMap<String, Type>,
}

impl Layouts<'_> {
    /// Rust alignment of `ty` on `host`, given the current reprs (`reprs` overrides).
    fn align_of_type(&self, ty: &Type, host: Host, reprs: &BTreeMap<String, Repr>) -> u64 {
        match ty {
            Type::Array(a) => self.align_of_type(&a.elem, host, reprs),
            Type::Paren(p) => self.align_of_type(&p.elem, host, reprs),
            Type::Tuple(t) if t.elems.is_empty() => 1,
            Type::Ptr(_) => host.eight,
            Type::Path(p) => {
                let segs: Vec<String> = p
                    .path
                    .segments
                    .iter()
                    .map(|s| s.ident.to_string())
                    .collect();
                let last = segs.last().map(String::as_str).unwrap_or_default();
                let generic_arg = || -> Option<Type> {
                    let seg = p.path.segments.last()?;
                    if let syn::PathArguments::AngleBracketed(args) = &seg.arguments {
                        for arg in &args.args {
                            if let syn::GenericArgument::Type(t) = arg {
                                return Some(t.clone());
                            }
                        }
                    }
                    None
                };
                if segs.len() == 2 && segs[0] == "ctypes" {
                    return match last {
                        "c_char" | "c_schar" | "c_uchar" | "c_void" => 1,
                        "c_short" | "c_ushort" => 2,
                        "c_int" | "c_uint" | "c_float" => 4,
                        "c_long" | "c_ulong" => match self.width {
                            Width::X86_64 => host.eight,
                            Width::X86_32 => 4,
                        },
                        "c_longlong" | "c_ulonglong" | "c_double" => host.eight,
                        other => panic!("xen-sys build: unknown ctypes::{other}"),
                    };
                }
                match last {
                    "u8" | "i8" | "bool" => 1,
                    "u16" | "i16" => 2,
                    "u32" | "i32" | "f32" | "char" => 4,
                    "u64" | "i64" | "f64" | "usize" | "isize" => host.eight,
                    "u128" | "i128" => 16,
                    "PhantomData" => 1,
                    "GuestPtr" => match self.width {
                        // Ptr64 is `*mut T` or `u64`: 8-aligned on 64-bit targets, 4 on i686.
                        Width::X86_64 => host.eight,
                        // Ptr32 is `*mut T` on 32-bit targets, `u32` elsewhere.
                        Width::X86_32 => 4,
                    },
                    "__BindgenBitfieldUnit" | "__IncompleteArrayField" | "__BindgenUnionField" => {
                        generic_arg().map_or(1, |t| self.align_of_type(&t, host, reprs))
                    }
                    name => {
                        if let Some(target) = self.aliases.get(name) {
                            self.align_of_type(target, host, reprs)
                        } else if self.aggregates.contains_key(name) {
                            self.align_of_aggregate(name, host, reprs)
                        } else {
                            panic!("xen-sys build: cannot resolve the alignment of type `{name}`")
                        }
                    }
                }
            }
            other => panic!("xen-sys build: unexpected field type {}", quote_type(other)),
        }
    }

    fn align_of_aggregate(&self, name: &str, host: Host, reprs: &BTreeMap<String, Repr>) -> u64 {
        let (agg, original) = &self.aggregates[name];
        let repr = reprs.get(name).copied().unwrap_or(*original);
        let natural = agg
            .fields
            .iter()
            .map(|f| self.align_of_type(&f.ty, host, reprs))
            .max()
            .unwrap_or(1);
        let packed = repr.packed.map_or(natural, |p| natural.min(p));
        repr.align.map_or(packed, |a| packed.max(a))
    }
}

fn quote_type(ty: &Type) -> String {
    ty.to_token_stream().to_string()
}

/// Reads bindgen's `["Alignment of foo"][align_of::<foo>() - 8usize];` assertions.
fn c_alignments(file: &syn::File) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for item in &file.items {
        let Item::Const(c) = item else { continue };
        let Expr::Block(block) = &*c.expr else {
            continue;
        };
        for stmt in &block.block.stmts {
            let syn::Stmt::Expr(Expr::Index(index), _) = stmt else {
                continue;
            };
            let Expr::Array(array) = &*index.expr else {
                continue;
            };
            let Some(Expr::Lit(label)) = array.elems.first() else {
                continue;
            };
            let Lit::Str(label) = &label.lit else {
                continue;
            };
            let label = label.value();
            let Some(name) = label.strip_prefix("Alignment of ") else {
                continue;
            };
            let Expr::Binary(bin) = &*index.index else {
                continue;
            };
            let Expr::Lit(n) = &*bin.right else { continue };
            let Lit::Int(n) = &n.lit else { continue };
            let n: u64 = n.base10_parse().expect("alignment literal");
            out.insert(name.to_string(), n);
        }
    }
    out
}

/// Post-processes bindgen's output for `width`.
pub fn process(code: &str, width: Width) -> Processed {
    let mut file = syn::parse_file(code).expect("xen-sys build: bindgen output does not parse");

    // 1. Pointers become GuestPtr<T> in struct/union fields and type aliases.
    for item in &mut file.items {
        match item {
            Item::Struct(s) if s.generics.params.is_empty() => {
                for f in s.fields.iter_mut() {
                    PointerToGuestPtr.visit_type_mut(&mut f.ty);
                }
            }
            Item::Union(u) if u.generics.params.is_empty() => {
                for f in u.fields.named.iter_mut() {
                    PointerToGuestPtr.visit_type_mut(&mut f.ty);
                }
            }
            Item::Type(t) if t.generics.params.is_empty() => {
                PointerToGuestPtr.visit_type_mut(&mut t.ty);
            }
            _ => {}
        }
    }

    // 2. Collect aggregates, aliases and the C alignments.
    let mut aggregates: BTreeMap<String, (Aggregate, Repr)> = BTreeMap::new();
    let mut aliases: BTreeMap<String, Type> = BTreeMap::new();
    for item in &file.items {
        match item {
            Item::Struct(s) if s.generics.params.is_empty() => {
                let fields = match &s.fields {
                    Fields::Named(named) => named
                        .named
                        .iter()
                        .map(|f| Field {
                            name: f.ident.as_ref().expect("named field").to_string(),
                            ty: f.ty.clone(),
                        })
                        .collect(),
                    Fields::Unit => Vec::new(),
                    Fields::Unnamed(_) => {
                        panic!("xen-sys build: unexpected tuple struct {}", s.ident)
                    }
                };
                aggregates.insert(
                    s.ident.to_string(),
                    (
                        Aggregate {
                            is_union: false,
                            fields,
                        },
                        parse_repr(&s.attrs),
                    ),
                );
            }
            Item::Union(u) if u.generics.params.is_empty() => {
                let fields = u
                    .fields
                    .named
                    .iter()
                    .map(|f| Field {
                        name: f.ident.as_ref().expect("named field").to_string(),
                        ty: f.ty.clone(),
                    })
                    .collect();
                aggregates.insert(
                    u.ident.to_string(),
                    (
                        Aggregate {
                            is_union: true,
                            fields,
                        },
                        parse_repr(&u.attrs),
                    ),
                );
            }
            Item::Type(t) if t.generics.params.is_empty() => {
                aliases.insert(t.ident.to_string(), (*t.ty).clone());
            }
            _ => {}
        }
    }
    let c_align = c_alignments(&file);

    // 3. Decide the repr fixes. Iterate to a fixed point: a fix can change the alignment of
    //    an enclosing aggregate.
    let layouts = Layouts {
        width,
        aggregates: &aggregates,
        aliases: &aliases,
    };
    let mut reprs: BTreeMap<String, Repr> = BTreeMap::new();
    let mut adjusted: BTreeMap<String, String> = BTreeMap::new();
    let (host, needs_fix): (Host, fn(u64, u64) -> bool) = match width {
        // Worst case for x86_32 bindings: a 64-bit target (u64 8-aligned): over-alignment.
        Width::X86_32 => (Host { eight: 8 }, |rust, c| rust > c),
        // Worst case for x86_64 bindings: i686 (u64 4-aligned): under-alignment.
        Width::X86_64 => (Host { eight: 4 }, |rust, c| rust < c),
    };
    loop {
        let mut changed = false;
        for (name, (_, original)) in &aggregates {
            let Some(&c) = c_align.get(name) else {
                continue;
            };
            if reprs.contains_key(name) {
                continue;
            }
            let rust = layouts.align_of_aggregate(name, host, &reprs);
            if !needs_fix(rust, c) {
                continue;
            }
            let mut repr = *original;
            match width {
                Width::X86_32 => {
                    assert!(
                        original.align.is_none(),
                        "xen-sys build: {name} needs packed({c}) but already has align(..)"
                    );
                    repr.packed = Some(c);
                    adjusted.insert(name.clone(), format!("packed({c})"));
                }
                Width::X86_64 => {
                    assert!(
                        original.packed.is_none(),
                        "xen-sys build: {name} needs align({c}) but is packed"
                    );
                    repr.align = Some(c);
                    adjusted.insert(name.clone(), format!("align({c})"));
                }
            }
            reprs.insert(name.clone(), repr);
            changed = true;
        }
        if !changed {
            break;
        }
    }

    // 4. Apply them.
    for item in &mut file.items {
        let (ident, attrs) = match item {
            Item::Struct(s) => (s.ident.to_string(), &mut s.attrs),
            Item::Union(u) => (u.ident.to_string(), &mut u.attrs),
            _ => continue,
        };
        let Some(repr) = reprs.get(&ident) else {
            continue;
        };
        attrs.retain(|a| !a.path().is_ident("repr"));
        let attr: Attribute = match (repr.packed, repr.align) {
            (Some(p), None) => {
                let p = proc_macro2::Literal::u64_unsuffixed(p);
                syn::parse_quote!(#[repr(C, packed(#p))])
            }
            (None, Some(a)) => {
                let a = proc_macro2::Literal::u64_unsuffixed(a);
                syn::parse_quote!(#[repr(C, align(#a))])
            }
            _ => unreachable!("a repr fix sets exactly one of packed/align"),
        };
        attrs.insert(0, attr);
    }

    // 5. `FieldBytes` for every aggregate, so that `Pod` impls can prove the absence of
    //    implicit padding at compile time.
    for (name, (agg, _)) in &aggregates {
        let sizes: Vec<String> = agg
            .fields
            .iter()
            .map(|f| format!("::core::mem::size_of::<{}>()", f.ty.to_token_stream()))
            .collect();
        let expr = match (agg.is_union, sizes.is_empty()) {
            (_, true) => "0".to_string(),
            (false, false) => sizes.join(" + "),
            (true, false) => sizes.iter().skip(1).fold(sizes[0].clone(), |acc, s| {
                format!("crate::pod::min({acc}, {s})")
            }),
        };
        let item: Item = syn::parse_str(&format!(
            "impl crate::pod::FieldBytes for {name} {{ const FIELD_BYTES: usize = {expr}; }}"
        ))
        .expect("FieldBytes impl parses");
        file.items.push(item);
    }

    let aggregates = aggregates
        .into_iter()
        .map(|(name, (agg, _))| (name, agg))
        .collect();
    Processed {
        code: prettyplease::unparse(&file),
        aggregates,
        adjusted,
    }
}
