//! The verifier against small crafted modules: one that passes, and one per rule that breaks
//! it, for both architectures. The files are written by a minimal ELF writer below (amd64:
//! ET_REL with RELA relocations and section symbols, as `ld -r` leaves them; i386: ET_DYN
//! with addresses, `.rel.dyn`, `.dynsym` and `.dynamic`, as `ld -Bshareable` does).
#![expect(
    clippy::cast_possible_truncation,
    reason = "the crafted files are a few hundred bytes: every offset fits every ELF field"
)]

use super::*;

const MDT_DEPEND: u32 = 1;
const MDT_MODULE: u32 = 2;
const MDT_VERSION: u32 = 3;

/// x86-64 and i386 decode these the same way: push %ebp; mov %esp,%ebp; call rel32; pop; ret.
const CLEAN_TEXT: &[u8] = &[0x55, 0x89, 0xe5, 0xe8, 0, 0, 0, 0, 0x5d, 0xc3];
/// `fld1` (x87) followed by `ret`.
const X87_TEXT: &[u8] = &[0xd9, 0xe8, 0xc3];
/// `movaps %xmm0,%xmm1` (SSE) followed by `ret`.
const SSE_TEXT: &[u8] = &[0x0f, 0x28, 0xc8, 0xc3];
/// `emms` (MMX).
const MMX_TEXT: &[u8] = &[0x0f, 0x77, 0xc3];
/// `vzeroupper` (AVX).
const AVX_TEXT: &[u8] = &[0xc5, 0xf8, 0x77, 0xc3];

/// What to put into a crafted module.
#[derive(Clone)]
struct Spec {
    arch: Arch,
    name: &'static str,
    /// MDT_DEPEND records: name, min, preferred, max.
    depends: Vec<(&'static str, u32, u32, u32)>,
    version: Option<u32>,
    module_record: bool,
    metadata_struct_version: u32,
    metadata_set: bool,
    sysinit: bool,
    text: Vec<u8>,
    /// Undefined symbols, each used by one call relocation in `.text`.
    undefined: Vec<&'static str>,
    /// Defined global symbols (at the start of `.text`).
    exports: Vec<&'static str>,
    /// An extra relocation of this type in `.text`.
    extra_relocation: Option<u32>,
    /// Flags of `.rodata` (to make it thread-local) and its type.
    rodata_flags: u64,
    rodata_kind: u32,
    /// An extra relocation of this type in a non-allocated `.debug_info`.
    debug_relocation: Option<u32>,
    e_type: Option<u16>,
    machine: Option<u16>,
    osabi: u8,
    hash: bool,
}

impl Spec {
    fn good(arch: Arch, name: &'static str) -> Spec {
        let mut depends = vec![("kernel", 1_400_500, 1_400_500, 1_499_999)];
        if name != "xen" {
            depends.push(("xen", 1, 1, 1));
        }
        Spec {
            arch,
            name,
            depends,
            version: Some(1),
            module_record: true,
            metadata_struct_version: 1,
            metadata_set: true,
            sysinit: true,
            text: CLEAN_TEXT.to_vec(),
            undefined: vec!["printf"],
            exports: vec![],
            extra_relocation: None,
            rodata_flags: elf::SHF_ALLOC,
            rodata_kind: 1,
            debug_relocation: None,
            e_type: None,
            machine: None,
            osabi: elf::ELFOSABI_FREEBSD,
            hash: true,
        }
    }
}

/// A section being written; `addr` is assigned at layout time for allocated sections of an
/// ET_DYN file.
#[derive(Clone, Default)]
struct Sec {
    name: String,
    kind: u32,
    flags: u64,
    addr: u64,
    data: Vec<u8>,
    link: u32,
    info: u32,
    align: u64,
    entsize: u64,
}

struct Strings(Vec<u8>);

impl Strings {
    fn new() -> Strings {
        Strings(vec![0])
    }
    fn add(&mut self, text: &str) -> u32 {
        let at = self.0.len() as u32;
        self.0.extend_from_slice(text.as_bytes());
        self.0.push(0);
        at
    }
}

/// A pointer stored at (section, offset) to (section, offset).
struct Fixup {
    at: (usize, u64),
    to: (usize, u64),
}

const TEXT: usize = 1;
const RODATA: usize = 2;
const DATA: usize = 3;
const MODMETA: usize = 4;
const SYSINIT: usize = 5;

fn build(spec: &Spec) -> Vec<u8> {
    let wide = spec.arch == Arch::Amd64;
    let ptr = if wide { 8u64 } else { 4 };
    let mut rodata = Strings::new();
    let mut data: Vec<u8> = Vec::new();
    let mut fixups = Vec::new();
    let mut set_entries: Vec<u64> = Vec::new();
    let push_u32 = |data: &mut Vec<u8>, value: u32| data.extend_from_slice(&value.to_le_bytes());
    let push_ptr = |data: &mut Vec<u8>| data.extend(std::iter::repeat_n(0, ptr as usize));
    // One metadata record: md_version, md_type, md_data, md_cval.
    let mut record =
        |data: &mut Vec<u8>, fixups: &mut Vec<Fixup>, kind: u32, payload: u64, cval: u32| {
            while data.len() as u64 % ptr != 0 {
                data.push(0);
            }
            let at = data.len() as u64;
            push_u32(data, spec.metadata_struct_version);
            push_u32(data, kind);
            fixups.push(Fixup {
                at: (DATA, at + 8),
                to: (DATA, payload),
            });
            push_ptr(data);
            fixups.push(Fixup {
                at: (DATA, at + 8 + ptr),
                to: (RODATA, u64::from(cval)),
            });
            push_ptr(data);
            set_entries.push(at);
        };
    let name = rodata.add(spec.name);
    if spec.module_record {
        // moduledata_t: name, evhand, priv.
        let moduledata = data.len() as u64;
        fixups.push(Fixup {
            at: (DATA, moduledata),
            to: (RODATA, u64::from(name)),
        });
        push_ptr(&mut data);
        push_ptr(&mut data);
        push_ptr(&mut data);
        record(&mut data, &mut fixups, MDT_MODULE, moduledata, name);
    }
    if let Some(version) = spec.version {
        let at = data.len() as u64;
        push_u32(&mut data, version);
        record(&mut data, &mut fixups, MDT_VERSION, at, name);
    }
    for (depend, min, pref, max) in &spec.depends {
        let at = data.len() as u64;
        for value in [*min, *pref, *max] {
            push_u32(&mut data, value);
        }
        let cval = rodata.add(depend);
        record(&mut data, &mut fixups, MDT_DEPEND, at, cval);
    }
    let mut modmeta = Vec::new();
    for (slot, entry) in set_entries.iter().enumerate() {
        fixups.push(Fixup {
            at: (MODMETA, slot as u64 * ptr),
            to: (DATA, *entry),
        });
        modmeta.extend(std::iter::repeat_n(0, ptr as usize));
    }
    let mut sysinit = Vec::new();
    if spec.sysinit {
        fixups.push(Fixup {
            at: (SYSINIT, 0),
            to: (DATA, 0),
        });
        sysinit.extend(std::iter::repeat_n(0, ptr as usize));
    }

    let alloc = elf::SHF_ALLOC;
    let mut sections = vec![
        Sec::default(),
        Sec {
            name: ".text".into(),
            kind: 1,
            flags: alloc | elf::SHF_EXECINSTR,
            data: spec.text.clone(),
            align: 16,
            ..Sec::default()
        },
        Sec {
            name: ".rodata".into(),
            kind: spec.rodata_kind,
            flags: spec.rodata_flags,
            data: rodata.0.clone(),
            align: 1,
            ..Sec::default()
        },
        Sec {
            name: ".data".into(),
            kind: 1,
            flags: alloc | 1,
            data,
            align: 8,
            ..Sec::default()
        },
        Sec {
            name: if spec.metadata_set {
                "set_modmetadata_set".into()
            } else {
                "set_other_set".into()
            },
            kind: 1,
            flags: alloc,
            data: modmeta,
            align: 8,
            ..Sec::default()
        },
        Sec {
            name: "set_sysinit_set".into(),
            kind: 1,
            flags: alloc | 1,
            data: sysinit,
            align: 8,
            ..Sec::default()
        },
        Sec {
            name: ".debug_info".into(),
            kind: 1,
            flags: 0,
            data: vec![0; 16],
            align: 1,
            ..Sec::default()
        },
    ];
    const DEBUG: usize = 6;
    if !spec.sysinit {
        sections[SYSINIT].name = ".bss_unused".into();
    }

    let mut names = Strings::new();
    // Symbols: null, section symbols (amd64), undefined, exports.
    let mut symbols: Vec<(u32, u64, u8, u16)> = vec![(0, 0, 0, 0)]; // name, value, info, shndx
    let mut section_symbol = std::collections::BTreeMap::new();
    if wide {
        for index in [TEXT, RODATA, DATA, MODMETA, SYSINIT] {
            section_symbol.insert(index, symbols.len() as u32);
            symbols.push((0, 0, 3, index as u16)); // STB_LOCAL, STT_SECTION
        }
    }
    let first_global = symbols.len() as u32;
    let mut undefined_index = Vec::new();
    for symbol in &spec.undefined {
        undefined_index.push(symbols.len() as u32);
        symbols.push((names.add(symbol), 0, 0x10, 0)); // STB_GLOBAL, NOTYPE, UND
    }
    for symbol in &spec.exports {
        symbols.push((names.add(symbol), 0, 0x12, TEXT as u16)); // STB_GLOBAL, FUNC
    }

    // Relocations: (section patched, offset, type, symbol, addend)
    let mut text_relocations: Vec<(u64, u32, u32)> = Vec::new();
    let call = if wide { 4 } else { 2 }; // R_X86_64_PLT32 / R_386_PC32
    for (i, symbol) in undefined_index.iter().enumerate() {
        text_relocations.push((4 + i as u64, call, *symbol));
    }
    if let Some(kind) = spec.extra_relocation {
        let symbol = undefined_index.first().copied().unwrap_or(0);
        text_relocations.push((4, kind, symbol));
    }

    let symtab_index = sections.len() + 1; // after the relocation sections, fixed below
    let e_type = spec
        .e_type
        .unwrap_or(if wide { elf::ET_REL } else { elf::ET_DYN });
    let machine = spec
        .machine
        .unwrap_or(if wide { elf::EM_X86_64 } else { elf::EM_386 });

    if wide {
        // RELA sections per patched section, against section symbols.
        let mut per_section: std::collections::BTreeMap<usize, Vec<u8>> = Default::default();
        let rela = |out: &mut Vec<u8>, offset: u64, kind: u32, symbol: u32, addend: i64| {
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&((u64::from(symbol) << 32) | u64::from(kind)).to_le_bytes());
            out.extend_from_slice(&addend.to_le_bytes());
        };
        for fixup in &fixups {
            let out = per_section.entry(fixup.at.0).or_default();
            rela(
                out,
                fixup.at.1,
                1,
                section_symbol[&fixup.to.0],
                fixup.to.1 as i64,
            );
        }
        for (offset, kind, symbol) in &text_relocations {
            rela(
                per_section.entry(TEXT).or_default(),
                *offset,
                *kind,
                *symbol,
                -4,
            );
        }
        if let Some(kind) = spec.debug_relocation {
            let mut out = Vec::new();
            rela(&mut out, 0, kind, 0, 0);
            per_section.insert(DEBUG, out);
        }
        let count = per_section.len();
        let symtab = sections.len() + count;
        for (target, data) in per_section {
            sections.push(Sec {
                name: format!(".rela{}", sections[target].name),
                kind: elf::SHT_RELA,
                data,
                link: symtab as u32,
                info: target as u32,
                align: 8,
                entsize: 24,
                ..Sec::default()
            });
        }
        let mut table = Vec::new();
        for (name, value, info, shndx) in &symbols {
            table.extend_from_slice(&name.to_le_bytes());
            table.push(*info);
            table.push(0);
            table.extend_from_slice(&shndx.to_le_bytes());
            table.extend_from_slice(&value.to_le_bytes());
            table.extend_from_slice(&0u64.to_le_bytes());
        }
        sections.push(Sec {
            name: ".symtab".into(),
            kind: elf::SHT_SYMTAB,
            data: table,
            link: (symtab + 1) as u32,
            info: first_global,
            align: 8,
            entsize: 24,
            ..Sec::default()
        });
        sections.push(Sec {
            name: ".strtab".into(),
            kind: 3,
            data: names.0.clone(),
            align: 1,
            ..Sec::default()
        });
        let _ = symtab_index;
        write(wide, e_type, machine, spec.osabi, sections)
    } else {
        // i386 ET_DYN: lay out addresses first (address = file offset), then fill pointers.
        let dynsym = sections.len();
        let dynstr = dynsym + 1;
        let reldyn = dynsym + 2;
        let dynamic = dynsym + 3;
        let mut table = Vec::new();
        for (name, value, info, shndx) in &symbols {
            table.extend_from_slice(&name.to_le_bytes());
            table.extend_from_slice(&(*value as u32).to_le_bytes());
            table.extend_from_slice(&0u32.to_le_bytes());
            table.push(*info);
            table.push(0);
            table.extend_from_slice(&shndx.to_le_bytes());
        }
        sections.push(Sec {
            name: ".dynsym".into(),
            kind: elf::SHT_DYNSYM,
            flags: alloc,
            data: table,
            link: dynstr as u32,
            info: first_global,
            align: 4,
            entsize: 16,
            ..Sec::default()
        });
        sections.push(Sec {
            name: ".dynstr".into(),
            kind: 3,
            flags: alloc,
            data: names.0.clone(),
            align: 1,
            ..Sec::default()
        });
        let relocation_count = fixups.len() + text_relocations.len();
        sections.push(Sec {
            name: ".rel.dyn".into(),
            kind: elf::SHT_REL,
            flags: alloc,
            data: vec![0; relocation_count * 8],
            link: dynsym as u32,
            align: 4,
            entsize: 8,
            ..Sec::default()
        });
        let mut dyn_entries = Vec::new();
        if spec.hash {
            dyn_entries.extend_from_slice(&(elf::DT_HASH as u32).to_le_bytes());
            dyn_entries.extend_from_slice(&0u32.to_le_bytes());
        }
        dyn_entries.extend_from_slice(&[0; 8]);
        sections.push(Sec {
            name: ".dynamic".into(),
            kind: elf::SHT_DYNAMIC,
            flags: alloc | 1,
            data: dyn_entries,
            link: dynstr as u32,
            align: 4,
            entsize: 8,
            ..Sec::default()
        });
        if let Some(kind) = spec.debug_relocation {
            let mut out = Vec::new();
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&kind.to_le_bytes());
            sections.push(Sec {
                name: ".rel.debug_info".into(),
                kind: elf::SHT_REL,
                data: out,
                link: dynsym as u32,
                info: DEBUG as u32,
                align: 4,
                entsize: 8,
                ..Sec::default()
            });
        }
        let offsets = layout(false, &sections);
        for (index, section) in sections.iter_mut().enumerate() {
            if section.flags & alloc != 0 {
                section.addr = offsets[index];
            }
        }
        let mut rel = Vec::new();
        for fixup in &fixups {
            let target = sections[fixup.to.0].addr + fixup.to.1;
            let at = fixup.at.1 as usize;
            sections[fixup.at.0].data[at..at + 4].copy_from_slice(&(target as u32).to_le_bytes());
            let address = sections[fixup.at.0].addr + fixup.at.1;
            rel.extend_from_slice(&(address as u32).to_le_bytes());
            rel.extend_from_slice(&8u32.to_le_bytes()); // R_386_RELATIVE
        }
        for (offset, kind, symbol) in &text_relocations {
            let address = sections[TEXT].addr + offset;
            rel.extend_from_slice(&(address as u32).to_le_bytes());
            rel.extend_from_slice(&((symbol << 8) | kind).to_le_bytes());
        }
        sections[reldyn].data = rel;
        let _ = dynamic;
        write(wide, e_type, machine, spec.osabi, sections)
    }
}

fn header_size(wide: bool) -> u64 {
    if wide {
        64
    } else {
        52
    }
}

/// File offsets of every section's data.
fn layout(wide: bool, sections: &[Sec]) -> Vec<u64> {
    let mut offset = header_size(wide);
    sections
        .iter()
        .map(|section| {
            let align = section.align.max(1);
            offset = offset.div_ceil(align) * align;
            let at = offset;
            offset += section.data.len() as u64;
            at
        })
        .collect()
}

fn write(wide: bool, e_type: u16, machine: u16, osabi: u8, mut sections: Vec<Sec>) -> Vec<u8> {
    let mut shstrtab = Strings::new();
    let name_offsets: Vec<u32> = sections.iter().map(|s| shstrtab.add(&s.name)).collect();
    let shstrndx = sections.len();
    let shstrtab_name = shstrtab.add(".shstrtab");
    sections.push(Sec {
        name: ".shstrtab".into(),
        kind: 3,
        data: shstrtab.0.clone(),
        align: 1,
        ..Sec::default()
    });
    let offsets = layout(wide, &sections);
    let mut out = vec![0u8; header_size(wide) as usize];
    for (section, offset) in sections.iter().zip(&offsets) {
        out.resize(*offset as usize, 0);
        out.extend_from_slice(&section.data);
    }
    out.resize(out.len().div_ceil(8) * 8, 0);
    let shoff = out.len() as u64;
    for (index, (section, offset)) in sections.iter().zip(&offsets).enumerate() {
        let name = if index == shstrndx {
            shstrtab_name
        } else {
            name_offsets[index]
        };
        let size = section.data.len() as u64;
        if wide {
            out.extend_from_slice(&name.to_le_bytes());
            out.extend_from_slice(&section.kind.to_le_bytes());
            out.extend_from_slice(&section.flags.to_le_bytes());
            out.extend_from_slice(&section.addr.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&section.link.to_le_bytes());
            out.extend_from_slice(&section.info.to_le_bytes());
            out.extend_from_slice(&section.align.to_le_bytes());
            out.extend_from_slice(&section.entsize.to_le_bytes());
        } else {
            for value in [
                name,
                section.kind,
                section.flags as u32,
                section.addr as u32,
                *offset as u32,
                size as u32,
                section.link,
                section.info,
                section.align as u32,
                section.entsize as u32,
            ] {
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
    }
    // The ELF header.
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = if wide { 2 } else { 1 };
    out[5] = 1;
    out[6] = 1;
    out[7] = osabi;
    out[16..18].copy_from_slice(&e_type.to_le_bytes());
    out[18..20].copy_from_slice(&machine.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    let count = sections.len() as u16;
    if wide {
        out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        out[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&count.to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&(shstrndx as u16).to_le_bytes());
    } else {
        out[0x20..0x24].copy_from_slice(&(shoff as u32).to_le_bytes());
        out[0x28..0x2a].copy_from_slice(&52u16.to_le_bytes());
        out[0x2e..0x30].copy_from_slice(&40u16.to_le_bytes());
        out[0x30..0x32].copy_from_slice(&count.to_le_bytes());
        out[0x32..0x34].copy_from_slice(&(shstrndx as u16).to_le_bytes());
    }
    out
}

fn kpi() -> BTreeSet<String> {
    ["printf", "malloc", "free", "panic"]
        .into_iter()
        .map(String::from)
        .collect()
}

fn xen_exports() -> BTreeMap<String, BTreeSet<String>> {
    let mut map = BTreeMap::new();
    map.insert(
        "xen".to_string(),
        ["xenrs_printf_str".to_string()].into_iter().collect(),
    );
    map
}

fn check(spec: &Spec) -> Result<Report, Vec<String>> {
    let bytes = build(spec);
    let depends: Vec<String> = if spec.name == "xen" {
        vec![]
    } else {
        vec!["xen".into()]
    };
    let kpi = kpi();
    let exports = xen_exports();
    verify(
        &bytes,
        &Expectation {
            module: spec.name,
            arch: spec.arch,
            depends: &depends,
            kpi: &kpi,
            exports: &exports,
        },
    )
}

/// Asserts that `spec` fails with a message containing every one of `needles`, each message
/// naming the module.
fn fails_with(spec: &Spec, needles: &[&str]) {
    let failures = check(spec).expect_err("the verifier must reject this module");
    let all = failures.join("\n");
    for failure in &failures {
        assert!(
            failure.starts_with(&format!("{}.ko ({})", spec.name, spec.arch.name())),
            "{failure}"
        );
    }
    for needle in needles {
        assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
    }
}

fn both() -> [Arch; 2] {
    [Arch::Amd64, Arch::I386]
}

#[test]
fn a_well_formed_module_passes_on_both_arches() {
    for arch in both() {
        for name in ["xen", "xbd"] {
            let mut spec = Spec::good(arch, name);
            if name == "xbd" {
                spec.undefined.push("xenrs_printf_str");
            }
            let report = check(&spec).unwrap_or_else(|f| panic!("{arch:?} {name}: {f:#?}"));
            assert_eq!(report.instructions, 5);
            assert_eq!(report.undefined_kpi, 1);
            assert_eq!(
                report.undefined_from_modules,
                usize::from(name == "xbd"),
                "{arch:?} {name}"
            );
            assert!(report.depends.contains(&"kernel".to_string()));
        }
    }
}

#[test]
fn wrong_elf_type_class_or_machine() {
    let mut spec = Spec::good(Arch::Amd64, "xen");
    spec.e_type = Some(elf::ET_DYN);
    fails_with(&spec, &["ELF type 3, expected 1 (ET_REL)"]);
    let mut spec = Spec::good(Arch::I386, "xen");
    spec.e_type = Some(elf::ET_REL);
    fails_with(&spec, &["ELF type 1, expected 3 (ET_DYN)"]);
    let mut spec = Spec::good(Arch::Amd64, "xen");
    spec.machine = Some(elf::EM_386);
    fails_with(&spec, &["machine 3, expected class 2 machine 62"]);
    let mut spec = Spec::good(Arch::Amd64, "xen");
    spec.osabi = 0;
    fails_with(&spec, &["OS ABI 0, expected 9"]);
    // An amd64 file checked as i386.
    let bytes = build(&Spec::good(Arch::Amd64, "xen"));
    let failures = verify(
        &bytes,
        &Expectation {
            module: "xen",
            arch: Arch::I386,
            depends: &[],
            kpi: &kpi(),
            exports: &BTreeMap::new(),
        },
    )
    .unwrap_err();
    assert!(
        failures[0].contains("expected class 1 machine 3"),
        "{failures:?}"
    );
}

#[test]
fn sections_the_kernel_cannot_load() {
    for arch in both() {
        let mut spec = Spec::good(arch, "xen");
        spec.rodata_flags = elf::SHF_ALLOC | 0x400;
        fails_with(&spec, &["thread-local section .rodata"]);
    }
    let mut spec = Spec::good(Arch::Amd64, "xen");
    spec.rodata_kind = 7; // SHT_NOTE
    fails_with(
        &spec,
        &["allocated section .rodata of type 0x7: the kernel linker does not load it"],
    );
}

#[test]
fn i386_needs_a_sysv_hash_table() {
    let mut spec = Spec::good(Arch::I386, "xen");
    spec.hash = false;
    fails_with(&spec, &["no DT_HASH"]);
}

#[test]
fn relocations_the_kernel_linker_rejects() {
    let mut spec = Spec::good(Arch::Amd64, "xen");
    spec.extra_relocation = Some(9);
    fails_with(
        &spec,
        &["relocation R_X86_64_GOTPCREL (9) at .text+0x4 against `printf`"],
    );
    spec.extra_relocation = Some(10);
    fails_with(&spec, &["relocation R_X86_64_32 (10) at .text+0x4"]);
    spec.extra_relocation = Some(42);
    fails_with(&spec, &["R_X86_64_REX_GOTPCRELX (42)"]);
    let mut spec = Spec::good(Arch::I386, "xen");
    spec.extra_relocation = Some(7);
    fails_with(
        &spec,
        &["relocation R_386_JMP_SLOT (7) at .text+0x4 (address"],
    );
    spec.extra_relocation = Some(3);
    fails_with(&spec, &["R_386_GOT32 (3)"]);
}

#[test]
fn accepted_relocations_and_debug_sections_pass() {
    for kind in [0, 1, 2, 4, 6, 7, 8, 11, 37] {
        let mut spec = Spec::good(Arch::Amd64, "xen");
        spec.extra_relocation = Some(kind);
        check(&spec).unwrap_or_else(|f| panic!("amd64 type {kind}: {f:?}"));
    }
    for kind in [0, 1, 2, 6, 8] {
        let mut spec = Spec::good(Arch::I386, "xen");
        spec.extra_relocation = Some(kind);
        check(&spec).unwrap_or_else(|f| panic!("i386 type {kind}: {f:?}"));
    }
    // Never applied by the kernel, so never checked.
    let mut spec = Spec::good(Arch::Amd64, "xen");
    spec.debug_relocation = Some(10);
    check(&spec).unwrap();
    let mut spec = Spec::good(Arch::I386, "xen");
    spec.debug_relocation = Some(7);
    check(&spec).unwrap();
}

#[test]
fn fpu_and_simd_instructions_are_found_with_their_offset() {
    for arch in both() {
        for (text, needle) in [
            (X87_TEXT, "`fld1` at .text+0x0"),
            (SSE_TEXT, "`movaps %xmm0,%xmm1` at .text+0x0"),
            (MMX_TEXT, "`emms` at .text+0x0"),
            (AVX_TEXT, "`vzeroupper` at .text+0x0"),
        ] {
            let mut spec = Spec::good(arch, "xen");
            spec.undefined.clear();
            spec.text = text.to_vec();
            fails_with(&spec, &[needle]);
        }
    }
    // After clean code: the offset is right.
    let mut spec = Spec::good(Arch::Amd64, "xen");
    spec.text = [CLEAN_TEXT, X87_TEXT].concat();
    fails_with(&spec, &["`fld1` at .text+0xa"]);
}

#[test]
fn module_metadata_must_be_complete() {
    for arch in both() {
        let mut spec = Spec::good(arch, "xbd");
        spec.metadata_set = false;
        fails_with(&spec, &["no set_modmetadata_set"]);

        let mut spec = Spec::good(arch, "xbd");
        spec.sysinit = false;
        fails_with(&spec, &["no set_sysinit_set"]);

        let mut spec = Spec::good(arch, "xbd");
        spec.module_record = false;
        fails_with(&spec, &["no MDT_MODULE record for `xbd`"]);

        let mut spec = Spec::good(arch, "xbd");
        spec.version = None;
        fails_with(&spec, &["no MDT_VERSION record"]);
        spec.version = Some(2);
        fails_with(&spec, &["MODULE_VERSION(xbd) is 2, expected 1"]);

        let mut spec = Spec::good(arch, "xbd");
        spec.depends.retain(|(name, ..)| *name != "xen");
        fails_with(&spec, &["no MDT_DEPEND on `xen`"]);

        let mut spec = Spec::good(arch, "xbd");
        spec.depends.retain(|(name, ..)| *name != "kernel");
        fails_with(
            &spec,
            &["no MDT_DEPEND on `kernel`: not compiled as a KLD_MODULE"],
        );

        let mut spec = Spec::good(arch, "xen");
        spec.depends.push(("xnb", 1, 1, 1));
        fails_with(&spec, &["unexpected MDT_DEPEND on `xnb`"]);

        let mut spec = Spec::good(arch, "xbd");
        spec.depends = vec![("kernel", 1, 1, 1), ("xen", 2, 2, 3)];
        fails_with(&spec, &["MDT_DEPEND on `xen` asks versions 2..=3"]);

        let mut spec = Spec::good(arch, "xbd");
        spec.metadata_struct_version = 2;
        fails_with(&spec, &["struct version 2, expected 1"]);
    }
}

#[test]
fn undefined_symbols_must_be_kpi_or_from_a_dependency() {
    for arch in both() {
        let mut spec = Spec::good(arch, "xbd");
        spec.undefined.push("not_a_kernel_function");
        fails_with(
            &spec,
            &[
                "undefined symbol `not_a_kernel_function` (used at .text+0x5",
                "not declared in the FreeBSD headers, nor exported by xen",
            ],
        );
        // xen's export is only usable by a module that depends on xen.
        let mut spec = Spec::good(arch, "xen");
        spec.undefined.push("xenrs_printf_str");
        fails_with(&spec, &["`xenrs_printf_str`", "it depends on no module"]);
        // Linker-set bounds are the kernel linker's business.
        let mut spec = Spec::good(arch, "xen");
        spec.undefined.push("__start_set_pcpu");
        spec.undefined.push("__stop_set_pcpu");
        check(&spec).unwrap();
    }
}

#[test]
fn exports_are_the_defined_globals() {
    for arch in both() {
        let mut spec = Spec::good(arch, "xen");
        spec.exports = vec!["xenrs_printf_str", "xenrs_malloc"];
        let bytes = build(&spec);
        let exports = exported_symbols(&bytes, arch).unwrap();
        assert_eq!(
            exports.into_iter().collect::<Vec<_>>(),
            ["xenrs_malloc", "xenrs_printf_str"]
        );
    }
}

#[test]
fn garbage_is_rejected_not_panicked_on() {
    let expect = Expectation {
        module: "xen",
        arch: Arch::Amd64,
        depends: &[],
        kpi: &kpi(),
        exports: &BTreeMap::new(),
    };
    assert!(verify(b"not elf", &expect).unwrap_err()[0].contains("not an ELF file"));
    let bytes = build(&Spec::good(Arch::Amd64, "xen"));
    for cut in [20, 64, bytes.len() / 2, bytes.len() - 1] {
        assert!(verify(&bytes[..cut], &expect).is_err(), "cut at {cut}");
    }
}

#[test]
fn the_instruction_classifier_knows_the_register_classes() {
    let decode = |bitness, bytes: &[u8]| {
        let mut decoder = Decoder::new(bitness, bytes, DecoderOptions::NONE);
        uses_fpu_or_simd(&decoder.decode())
    };
    assert!(!decode(64, &[0x48, 0x89, 0xe5])); // mov %rsp,%rbp
    assert!(!decode(64, &[0x0f, 0xa2])); // cpuid
    assert!(!decode(64, &[0x0f, 0x01, 0xc1])); // vmcall
    assert!(!decode(32, &[0xcd, 0x82])); // int $0x82 (PV hypercall)
    assert!(decode(64, &[0xdd, 0x04, 0x24])); // fldl (%rsp)
    assert!(decode(32, &[0xd9, 0x7c, 0x24, 0x04])); // fnstcw 4(%esp)
    assert!(decode(64, &[0x0f, 0xae, 0x04, 0x24])); // fxsave (%rsp)
    assert!(decode(64, &[0x66, 0x0f, 0xef, 0xc0])); // pxor %xmm0,%xmm0
    assert!(decode(64, &[0x0f, 0x6f, 0xc1])); // movq %mm1,%mm0
}
