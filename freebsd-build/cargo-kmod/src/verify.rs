//! The `.ko` verifier: what FreeBSD's kernel linker and kernel need from a module, checked on
//! the file itself. `cargo kmod build` and `cargo kmod test` run it on every module.
//!
//! Checks (each failure names the module, the rule, and where):
//! 1. **ELF identity**: class, machine and type for the architecture — amd64 modules are
//!    relocatable objects (`ET_REL`), i386 modules shared objects (`ET_DYN`) — and FreeBSD's
//!    OS ABI; an i386 module also needs a `DT_HASH` table (the kernel linker has no GNU hash).
//!    No thread-local sections; on amd64 every allocated section of a type the kernel linker
//!    loads.
//! 2. **Relocations** of allocated sections: only types the kernel linker applies
//!    (`sys/amd64/amd64/elf_machdep.c`, `sys/i386/i386/elf_machdep.c`). Relocations of
//!    non-allocated sections (`.debug_*`) are never applied and are ignored.
//! 3. **No x87/MMX/SSE/AVX instructions** in executable sections, decoded with iced-x86 at the
//!    architecture's bitness: the kernel does not save FPU/SIMD state for kernel code.
//! 4. **Module metadata**: `set_modmetadata_set` with the module's `MDT_MODULE`, its
//!    `MDT_VERSION`, `MDT_DEPEND` on `kernel` (which `DECLARE_MODULE` emits only for a
//!    `KLD_MODULE` build) and exactly the expected module dependencies; `set_sysinit_set`
//!    non-empty (the `SYSINIT` that registers the module).
//! 5. **Undefined symbols**: each is declared in the FreeBSD headers the module was compiled
//!    against (the set comes from the preprocessed shim, see `headers.rs`), is a linker-set
//!    bound (`__start_set_*`/`__stop_set_*`, which the kernel linker resolves itself), or is
//!    exported by a module this one declares a dependency on.

use std::collections::{BTreeMap, BTreeSet};

use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter, Instruction};

use crate::elf::{self, Elf, Relocation, Section, Symbol};
use crate::kernel::Arch;

/// What a module must look like.
#[derive(Debug)]
pub struct Expectation<'a> {
    pub module: &'a str,
    pub arch: Arch,
    /// Modules it must depend on (besides `kernel`).
    pub depends: &'a [String],
    /// Functions and variables declared in the FreeBSD headers it was compiled against.
    pub kpi: &'a BTreeSet<String>,
    /// The exported symbols of other modules, by module name.
    pub exports: &'a BTreeMap<String, BTreeSet<String>>,
}

/// What a verified module looks like.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub bytes: usize,
    pub text_bytes: u64,
    pub relocations: usize,
    pub instructions: usize,
    pub undefined_kpi: usize,
    pub undefined_from_modules: usize,
    pub depends: Vec<String>,
}

/// Relocation types FreeBSD's amd64 kernel linker applies.
const AMD64_RELOCATIONS: &[(u32, &str)] = &[
    (0, "R_X86_64_NONE"),
    (1, "R_X86_64_64"),
    (2, "R_X86_64_PC32"),
    (4, "R_X86_64_PLT32"),
    (6, "R_X86_64_GLOB_DAT"),
    (7, "R_X86_64_JUMP_SLOT"),
    (8, "R_X86_64_RELATIVE"),
    (11, "R_X86_64_32S"),
    (37, "R_X86_64_IRELATIVE"),
];

/// Names of the amd64 types that show up when a target is misconfigured.
const AMD64_OTHER: &[(u32, &str)] = &[
    (3, "R_X86_64_GOT32"),
    (5, "R_X86_64_COPY"),
    (9, "R_X86_64_GOTPCREL"),
    (10, "R_X86_64_32"),
    (12, "R_X86_64_16"),
    (13, "R_X86_64_PC16"),
    (14, "R_X86_64_8"),
    (15, "R_X86_64_PC8"),
    (23, "R_X86_64_TPOFF32"),
    (24, "R_X86_64_PC64"),
    (25, "R_X86_64_GOTOFF64"),
    (26, "R_X86_64_GOTPC32"),
    (41, "R_X86_64_GOTPCRELX"),
    (42, "R_X86_64_REX_GOTPCRELX"),
];

/// Dynamic relocation types FreeBSD's i386 kernel linker applies.
const I386_RELOCATIONS: &[(u32, &str)] = &[
    (0, "R_386_NONE"),
    (1, "R_386_32"),
    (2, "R_386_PC32"),
    (6, "R_386_GLOB_DAT"),
    (8, "R_386_RELATIVE"),
];

const I386_OTHER: &[(u32, &str)] = &[
    (3, "R_386_GOT32"),
    (4, "R_386_PLT32"),
    (5, "R_386_COPY"),
    (7, "R_386_JMP_SLOT"),
    (9, "R_386_GOTOFF"),
    (10, "R_386_GOTPC"),
    (14, "R_386_TLS_TPOFF"),
    (43, "R_386_GOT32X"),
];

const MDT_STRUCT_VERSION: u32 = 1;
const MDT_DEPEND: u32 = 1;
const MDT_MODULE: u32 = 2;
const MDT_VERSION: u32 = 3;

fn relocation_name(arch: Arch, kind: u32) -> String {
    let (allowed, other) = match arch {
        Arch::Amd64 => (AMD64_RELOCATIONS, AMD64_OTHER),
        Arch::I386 => (I386_RELOCATIONS, I386_OTHER),
    };
    allowed
        .iter()
        .chain(other)
        .find(|(k, _)| *k == kind)
        .map_or_else(
            || format!("type {kind}"),
            |(_, name)| format!("{name} ({kind})"),
        )
}

/// Verifies `bytes` (a whole `.ko`); `Err` lists every rule it breaks.
pub fn verify(bytes: &[u8], expect: &Expectation<'_>) -> Result<Report, Vec<String>> {
    let prefix = format!("{}.ko ({})", expect.module, expect.arch.name());
    let elf = Elf::parse(bytes).map_err(|error| vec![format!("{prefix}: {error}")])?;
    let mut checker = Checker {
        elf: &elf,
        expect,
        failures: Vec::new(),
        report: Report {
            bytes: bytes.len(),
            ..Report::default()
        },
    };
    if checker.identity() {
        checker.sections();
        checker.guard(Checker::relocations);
        checker.guard(Checker::instructions);
        checker.guard(Checker::metadata);
        checker.guard(Checker::symbols);
    }
    if checker.failures.is_empty() {
        Ok(checker.report)
    } else {
        Err(checker
            .failures
            .into_iter()
            .map(|failure| format!("{prefix}: {failure}"))
            .collect())
    }
}

struct Checker<'e, 'a> {
    elf: &'e Elf<'a>,
    expect: &'e Expectation<'e>,
    failures: Vec<String>,
    report: Report,
}

type Check<T> = Result<T, elf::ElfError>;

impl Checker<'_, '_> {
    fn fail(&mut self, message: String) {
        self.failures.push(message);
    }

    fn guard(&mut self, check: fn(&mut Self) -> Check<()>) {
        if let Err(error) = check(self) {
            self.fail(format!("malformed: {error}"));
        }
    }

    fn identity(&mut self) -> bool {
        let (class, machine, e_type, type_name) = match self.expect.arch {
            Arch::Amd64 => (elf::ELFCLASS64, elf::EM_X86_64, elf::ET_REL, "ET_REL"),
            Arch::I386 => (elf::ELFCLASS32, elf::EM_386, elf::ET_DYN, "ET_DYN"),
        };
        let elf = self.elf;
        let mut ok = true;
        if elf.class != class || elf.machine != machine {
            self.fail(format!(
                "ELF class {} machine {}, expected class {class} machine {machine}",
                elf.class, elf.machine
            ));
            ok = false;
        }
        if elf.e_type != e_type {
            self.fail(format!(
                "ELF type {}, expected {e_type} ({type_name}): FreeBSD's {} kernel linker \
                 loads only that",
                elf.e_type,
                self.expect.arch.name()
            ));
            ok = false;
        }
        if elf.osabi != elf::ELFOSABI_FREEBSD {
            self.fail(format!(
                "OS ABI {}, expected {} (FreeBSD)",
                elf.osabi,
                elf::ELFOSABI_FREEBSD
            ));
        }
        if ok && self.expect.arch == Arch::I386 {
            match elf.dynamic() {
                Ok(dynamic) if dynamic.iter().any(|(tag, _)| *tag == elf::DT_HASH) => {}
                Ok(_) => self.fail(
                    "no DT_HASH: the kernel linker needs a SysV hash table (link with \
                     --hash-style=sysv)"
                        .into(),
                ),
                Err(error) => self.fail(format!("malformed dynamic section: {error}")),
            }
        }
        ok
    }

    /// Allocated sections the kernel linker would not load (amd64 `link_elf_obj.c` loads
    /// PROGBITS, NOBITS, X86_64_UNWIND, INIT_ARRAY and FINI_ARRAY), and thread-local data,
    /// which the kernel has no notion of.
    fn sections(&mut self) {
        const SHT_PROGBITS: u32 = 1;
        const SHT_INIT_ARRAY: u32 = 14;
        const SHT_FINI_ARRAY: u32 = 15;
        const SHT_X86_64_UNWIND: u32 = 0x7000_0001;
        const SHF_TLS: u64 = 0x400;
        let mut failures = Vec::new();
        for section in &self.elf.sections {
            if section.flags & SHF_TLS != 0 {
                failures.push(format!(
                    "thread-local section {}: the kernel has no TLS",
                    section.name
                ));
            }
            let loaded = matches!(
                section.kind,
                SHT_PROGBITS
                    | elf::SHT_NOBITS
                    | SHT_X86_64_UNWIND
                    | SHT_INIT_ARRAY
                    | SHT_FINI_ARRAY
            );
            if self.expect.arch == Arch::Amd64 && section.is_alloc() && !loaded {
                failures.push(format!(
                    "allocated section {} of type {:#x}: the kernel linker does not load it",
                    section.name, section.kind
                ));
            }
        }
        self.failures.extend(failures);
    }

    /// The symbol table relocations and undefined symbols refer to.
    fn symbol_table(&self) -> Option<&Section> {
        let kind = match self.expect.arch {
            Arch::Amd64 => elf::SHT_SYMTAB,
            Arch::I386 => elf::SHT_DYNSYM,
        };
        self.elf.sections.iter().find(|s| s.kind == kind)
    }

    /// Relocation sections that the kernel applies, with the section they patch (`None` for
    /// an ET_DYN file's dynamic relocations, which patch addresses).
    fn applied_relocation_sections(&self) -> Vec<(&Section, Option<&Section>)> {
        let elf = self.elf;
        elf.sections
            .iter()
            .filter(|s| s.kind == elf::SHT_RELA || s.kind == elf::SHT_REL)
            .filter_map(|s| match self.expect.arch {
                Arch::Amd64 => {
                    let target = elf.sections.get(s.info as usize)?;
                    target.is_alloc().then_some((s, Some(target)))
                }
                Arch::I386 => s.is_alloc().then_some((s, None)),
            })
            .collect()
    }

    /// `section+offset` for a place, by section-relative offset or (ET_DYN) address.
    fn place(&self, target: Option<&Section>, offset: u64) -> String {
        match target {
            Some(section) => format!("{}+{offset:#x}", section.name),
            None => match self.section_at(offset) {
                Some(section) => {
                    format!(
                        "{}+{:#x} (address {offset:#x})",
                        section.name,
                        offset - section.addr
                    )
                }
                None => format!("address {offset:#x}"),
            },
        }
    }

    fn section_at(&self, address: u64) -> Option<&Section> {
        self.elf
            .sections
            .iter()
            .find(|s| s.is_alloc() && s.addr <= address && address < s.addr + s.size.max(1))
    }

    fn relocations(&mut self) -> Check<()> {
        let allowed = match self.expect.arch {
            Arch::Amd64 => AMD64_RELOCATIONS,
            Arch::I386 => I386_RELOCATIONS,
        };
        let symbols = match self.symbol_table() {
            Some(table) => self.elf.symbols(table)?,
            None => Vec::new(),
        };
        let mut failures = Vec::new();
        let mut count = 0;
        for (section, target) in self.applied_relocation_sections() {
            for relocation in self.elf.relocations(section)? {
                count += 1;
                if allowed.iter().any(|(kind, _)| *kind == relocation.kind) {
                    continue;
                }
                let against = symbols
                    .get(relocation.symbol as usize)
                    .filter(|s| !s.name.is_empty())
                    .map(|s| format!(" against `{}`", s.name))
                    .unwrap_or_default();
                failures.push(format!(
                    "relocation {} at {}{against}: FreeBSD's kernel linker rejects it",
                    relocation_name(self.expect.arch, relocation.kind),
                    self.place(target, relocation.offset)
                ));
            }
        }
        self.report.relocations = count;
        self.failures.extend(failures);
        Ok(())
    }

    fn instructions(&mut self) -> Check<()> {
        let bitness = match self.expect.arch {
            Arch::Amd64 => 64,
            Arch::I386 => 32,
        };
        let functions: Vec<Symbol> = self
            .elf
            .sections
            .iter()
            .filter(|s| s.kind == elf::SHT_SYMTAB)
            .map(|table| self.elf.symbols(table))
            .collect::<Check<Vec<_>>>()?
            .into_iter()
            .flatten()
            .filter(|s| s.kind == 2 && s.size > 0)
            .collect();
        let mut formatter = GasFormatter::new();
        let mut failures = Vec::new();
        let mut decoded = 0;
        for section in self
            .elf
            .sections
            .iter()
            .filter(|s| s.is_alloc() && s.is_exec())
        {
            self.report.text_bytes += section.size;
            let code = self.elf.contents(section)?;
            let mut decoder = Decoder::with_ip(bitness, code, section.addr, DecoderOptions::NONE);
            let mut instruction = Instruction::default();
            while decoder.can_decode() {
                decoder.decode_out(&mut instruction);
                decoded += 1;
                if instruction.is_invalid() || !uses_fpu_or_simd(&instruction) {
                    continue;
                }
                let mut text = String::new();
                formatter.format(&instruction, &mut text);
                let address = instruction.ip();
                let offset = address - section.addr;
                let function = functions
                    .iter()
                    .find(|f| {
                        usize::from(f.shndx) == section.index
                            && f.value <= address
                            && address < f.value + f.size
                    })
                    .map(|f| format!(" in `{}`", f.name))
                    .unwrap_or_default();
                failures.push(format!(
                    "x87/MMX/SSE/AVX instruction `{text}` at {}+{offset:#x}{function}: the \
                     kernel does not save FPU/SIMD state for kernel code",
                    section.name
                ));
            }
        }
        self.report.instructions = decoded;
        const SHOWN: usize = 20;
        let more = failures.len().saturating_sub(SHOWN);
        self.failures.extend(failures.into_iter().take(SHOWN));
        if more > 0 {
            self.fail(format!("... and {more} more x87/MMX/SSE/AVX instructions"));
        }
        Ok(())
    }

    fn metadata(&mut self) -> Check<()> {
        let Some(sysinit) = self.elf.section_by_name("set_sysinit_set") else {
            self.fail(
                "no set_sysinit_set: nothing would register the module (DECLARE_MODULE)".into(),
            );
            return self.metadata_records();
        };
        if sysinit.size == 0 {
            self.fail("set_sysinit_set is empty".into());
        }
        self.metadata_records()
    }

    fn metadata_records(&mut self) -> Check<()> {
        let Some(set) = self.elf.section_by_name("set_modmetadata_set").cloned() else {
            self.fail(
                "no set_modmetadata_set: no module metadata (DECLARE_MODULE, MODULE_VERSION, \
                 MODULE_DEPEND)"
                    .into(),
            );
            return Ok(());
        };
        let resolver = Pointers::new(self.elf, self.expect.arch)?;
        let width = resolver.width;
        let mut modules = Vec::new();
        let mut versions = BTreeMap::new();
        let mut depends: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
        let mut failures = Vec::new();
        for slot in 0..set.size / width {
            let Some(record) = resolver.pointer(&set, slot * width)? else {
                failures.push(format!("set_modmetadata_set entry {slot} points nowhere"));
                continue;
            };
            let version = resolver.u32(record, 0)?;
            let kind = resolver.u32(record, 4)?;
            let data = resolver.pointer_at(record, 8)?;
            let cval = resolver.pointer_at(record, 8 + width)?;
            let cval = match cval {
                Some(place) => resolver.string(place)?,
                None => String::new(),
            };
            if version != MDT_STRUCT_VERSION {
                failures.push(format!(
                    "module metadata `{cval}`: struct version {version}, expected \
                     {MDT_STRUCT_VERSION}"
                ));
                continue;
            }
            match (kind, data) {
                (MDT_MODULE, Some(data)) => {
                    let name = resolver
                        .pointer_at(data, 0)?
                        .map(|place| resolver.string(place))
                        .transpose()?
                        .unwrap_or_default();
                    modules.push(name);
                }
                (MDT_VERSION, Some(data)) => {
                    versions.insert(cval, resolver.u32(data, 0)?);
                }
                (MDT_DEPEND, Some(data)) => {
                    let range = (
                        resolver.u32(data, 0)?,
                        resolver.u32(data, 4)?,
                        resolver.u32(data, 8)?,
                    );
                    depends.insert(cval, range);
                }
                (kind, _) => failures.push(format!(
                    "module metadata `{cval}`: type {kind} without data"
                )),
            }
        }
        let module = self.expect.module;
        if !modules.iter().any(|name| name == module) {
            failures.push(format!(
                "no MDT_MODULE record for `{module}` (found: {modules:?})"
            ));
        }
        match versions.get(module) {
            Some(1) => {}
            Some(other) => {
                failures.push(format!("MODULE_VERSION({module}) is {other}, expected 1"))
            }
            None => failures.push(format!(
                "no MDT_VERSION record (MODULE_VERSION({module}, 1))"
            )),
        }
        if !depends.contains_key("kernel") {
            failures.push(
                "no MDT_DEPEND on `kernel`: not compiled as a KLD_MODULE (DECLARE_MODULE adds \
                 it)"
                .into(),
            );
        }
        let found: BTreeSet<&str> = depends
            .keys()
            .map(String::as_str)
            .filter(|name| *name != "kernel")
            .collect();
        let wanted: BTreeSet<&str> = self.expect.depends.iter().map(String::as_str).collect();
        for missing in wanted.difference(&found) {
            failures.push(format!(
                "no MDT_DEPEND on `{missing}` (MODULE_DEPEND({module}, {missing}, 1, 1, 1))"
            ));
        }
        for extra in found.difference(&wanted) {
            failures.push(format!("unexpected MDT_DEPEND on `{extra}`"));
        }
        for name in &found {
            let (min, _, max) = depends[*name];
            if !(min..=max).contains(&1) {
                failures.push(format!(
                    "MDT_DEPEND on `{name}` asks versions {min}..={max}, which excludes 1"
                ));
            }
        }
        self.report.depends = depends.keys().cloned().collect();
        self.failures.extend(failures);
        Ok(())
    }

    fn symbols(&mut self) -> Check<()> {
        let Some(table) = self.symbol_table().cloned() else {
            self.fail("no symbol table".into());
            return Ok(());
        };
        let symbols = self.elf.symbols(&table)?;
        // Where each symbol is first used, for the message.
        let mut first_use: BTreeMap<u32, String> = BTreeMap::new();
        for (section, target) in self.applied_relocation_sections() {
            if section.link as usize != table.index {
                continue;
            }
            for relocation in self.elf.relocations(section)? {
                first_use
                    .entry(relocation.symbol)
                    .or_insert_with(|| self.place(target, relocation.offset));
            }
        }
        let declared_depends: Vec<&String> = self
            .report
            .depends
            .iter()
            .filter(|name| *name != "kernel")
            .collect();
        let mut failures = Vec::new();
        for (index, symbol) in symbols.iter().enumerate() {
            if symbol.name.is_empty() || !symbol.is_global() {
                continue;
            }
            if !symbol.is_undefined() {
                continue;
            }
            if is_linker_set_bound(&symbol.name) {
                continue;
            }
            if self.expect.kpi.contains(&symbol.name) {
                self.report.undefined_kpi += 1;
                continue;
            }
            if declared_depends.iter().any(|module| {
                self.expect
                    .exports
                    .get(*module)
                    .is_some_and(|exports| exports.contains(&symbol.name))
            }) {
                self.report.undefined_from_modules += 1;
                continue;
            }
            let used = u32::try_from(index)
                .ok()
                .and_then(|index| first_use.get(&index))
                .map(|place| format!(" (used at {place})"))
                .unwrap_or_default();
            let modules = if declared_depends.is_empty() {
                "it depends on no module".to_string()
            } else {
                let names: Vec<&str> = declared_depends.iter().map(|s| s.as_str()).collect();
                format!("nor exported by {}", names.join(", "))
            };
            failures.push(format!(
                "undefined symbol `{}`{used}: not declared in the FreeBSD headers, {modules}",
                symbol.name
            ));
        }
        self.failures.extend(failures);
        Ok(())
    }
}

/// The defined global symbols of a module: what the modules depending on it may use.
pub fn exported_symbols(bytes: &[u8], arch: Arch) -> Result<BTreeSet<String>, elf::ElfError> {
    let file = Elf::parse(bytes)?;
    let kind = match arch {
        Arch::Amd64 => elf::SHT_SYMTAB,
        Arch::I386 => elf::SHT_DYNSYM,
    };
    let mut names = BTreeSet::new();
    for table in file.sections.iter().filter(|s| s.kind == kind) {
        for symbol in file.symbols(table)? {
            if symbol.is_global() && !symbol.is_undefined() && !symbol.name.is_empty() {
                names.insert(symbol.name);
            }
        }
    }
    Ok(names)
}

/// `__start_set_<name>` / `__stop_set_<name>`: resolved by the kernel linker to the bounds of a
/// linker set (the module's own, or the kernel's).
fn is_linker_set_bound(name: &str) -> bool {
    name.starts_with("__start_set_") || name.starts_with("__stop_set_")
}

/// Whether an instruction touches x87, MMX, SSE or AVX state.
pub fn uses_fpu_or_simd(instruction: &Instruction) -> bool {
    use iced_x86::{CpuidFeature as F, EncodingKind, OpKind};
    if matches!(
        instruction.encoding(),
        EncodingKind::VEX | EncodingKind::EVEX | EncodingKind::XOP | EncodingKind::D3NOW
    ) {
        return true;
    }
    let simd_register = |register: iced_x86::Register| {
        register.is_st()
            || register.is_mm()
            || register.is_xmm()
            || register.is_ymm()
            || register.is_zmm()
            || register.is_k()
            || register.is_tmm()
    };
    for operand in 0..instruction.op_count() {
        if instruction.op_kind(operand) == OpKind::Register
            && simd_register(instruction.op_register(operand))
        {
            return true;
        }
    }
    if simd_register(instruction.memory_index()) {
        return true;
    }
    instruction.cpuid_features().iter().any(|feature| {
        matches!(
            feature,
            F::FPU
                | F::FPU287
                | F::FPU287XL_ONLY
                | F::FPU387
                | F::FPU387SL_ONLY
                | F::MMX
                | F::SSE
                | F::SSE2
                | F::SSE3
                | F::SSSE3
                | F::SSE4_1
                | F::SSE4_2
                | F::SSE4A
                | F::AVX
                | F::AVX2
                | F::FMA
                | F::F16C
                | F::D3NOW
                | F::D3NOWEXT
                | F::FXSR
        )
    })
}

/// Follows pointers stored in a module's data, through the relocations that fill them in.
struct Pointers<'e, 'a> {
    elf: &'e Elf<'a>,
    arch: Arch,
    width: u64,
    symbols: Vec<Symbol>,
    /// amd64: relocations by the section they patch; i386: dynamic relocations by address.
    by_section: BTreeMap<usize, Vec<Relocation>>,
    by_address: BTreeMap<u64, Relocation>,
}

/// A place in the file: section index and offset in it.
type Place = (usize, u64);

impl<'e, 'a> Pointers<'e, 'a> {
    fn new(elf: &'e Elf<'a>, arch: Arch) -> Check<Pointers<'e, 'a>> {
        let table_kind = match arch {
            Arch::Amd64 => elf::SHT_SYMTAB,
            Arch::I386 => elf::SHT_DYNSYM,
        };
        let symbols = match elf.sections.iter().find(|s| s.kind == table_kind) {
            Some(table) => elf.symbols(table)?,
            None => Vec::new(),
        };
        let mut by_section: BTreeMap<usize, Vec<Relocation>> = BTreeMap::new();
        let mut by_address = BTreeMap::new();
        for section in elf
            .sections
            .iter()
            .filter(|s| s.kind == elf::SHT_RELA || s.kind == elf::SHT_REL)
        {
            match arch {
                Arch::Amd64 => by_section
                    .entry(section.info as usize)
                    .or_default()
                    .extend(elf.relocations(section)?),
                Arch::I386 if section.is_alloc() => {
                    for relocation in elf.relocations(section)? {
                        by_address.insert(relocation.offset, relocation);
                    }
                }
                Arch::I386 => {}
            }
        }
        Ok(Pointers {
            elf,
            arch,
            width: if elf.is_64() { 8 } else { 4 },
            symbols,
            by_section,
            by_address,
        })
    }

    fn section(&self, index: usize) -> Check<&'e Section> {
        self.elf
            .sections
            .get(index)
            .ok_or_else(|| elf::ElfError(format!("no section {index}")))
    }

    fn u32(&self, (section, offset): Place, delta: u64) -> Check<u32> {
        let section = self.section(section)?;
        elf::u32_at(self.elf.contents(section)?, offset + delta)
    }

    fn pointer_at(&self, (section, offset): Place, delta: u64) -> Check<Option<Place>> {
        let section = self.section(section)?;
        self.pointer(section, offset + delta)
    }

    /// Where the pointer stored at `section+offset` points; `None` for NULL or outside.
    fn pointer(&self, section: &Section, offset: u64) -> Check<Option<Place>> {
        match self.arch {
            Arch::Amd64 => {
                let Some(relocation) = self
                    .by_section
                    .get(&section.index)
                    .and_then(|list| list.iter().find(|r| r.offset == offset))
                else {
                    return Ok(None);
                };
                let Some(symbol) = self.symbols.get(relocation.symbol as usize) else {
                    return Ok(None);
                };
                if symbol.is_undefined() || symbol.shndx >= 0xff00 {
                    return Ok(None);
                }
                let addend = relocation.addend.unwrap_or(0);
                let target = symbol.value.wrapping_add_signed(addend);
                Ok(Some((usize::from(symbol.shndx), target)))
            }
            Arch::I386 => {
                let stored = u64::from(elf::u32_at(self.elf.contents(section)?, offset)?);
                let address = section.addr + offset;
                let value = match self.by_address.get(&address) {
                    Some(relocation) if relocation.kind == 1 => {
                        match self.symbols.get(relocation.symbol as usize) {
                            Some(symbol) if !symbol.is_undefined() => symbol.value + stored,
                            _ => return Ok(None),
                        }
                    }
                    _ => stored,
                };
                Ok(self
                    .elf
                    .sections
                    .iter()
                    .find(|s| s.is_alloc() && s.addr <= value && value < s.addr + s.size)
                    .map(|s| (s.index, value - s.addr)))
            }
        }
    }

    fn string(&self, (section, offset): Place) -> Check<String> {
        let section = self.section(section)?;
        let data = self.elf.contents(section)?;
        let start = usize::try_from(offset).map_err(|_| elf::ElfError("offset".into()))?;
        let bytes = data
            .get(start..)
            .ok_or_else(|| elf::ElfError(format!("string outside {}", section.name)))?;
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Ok(String::from_utf8_lossy(&bytes[..len]).into_owned())
    }
}

#[cfg(test)]
mod tests;
