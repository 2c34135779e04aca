//! A small reader for the ELF files the kernel modules are: little-endian ELF32 (i386) and
//! ELF64 (amd64), relocatable or shared. Only what the verifier needs: the header, sections,
//! symbols and relocations, each read with bounds checks (a malformed file is an error, never
//! a panic).

use std::fmt;

pub const ET_REL: u16 = 1;
pub const ET_DYN: u16 = 3;
pub const EM_386: u16 = 3;
pub const EM_X86_64: u16 = 62;
pub const ELFCLASS32: u8 = 1;
pub const ELFCLASS64: u8 = 2;
pub const ELFOSABI_FREEBSD: u8 = 9;

pub const SHT_SYMTAB: u32 = 2;
pub const SHT_RELA: u32 = 4;
pub const SHT_NOBITS: u32 = 8;
pub const SHT_REL: u32 = 9;
pub const SHT_DYNAMIC: u32 = 6;
pub const SHT_DYNSYM: u32 = 11;
pub const SHF_ALLOC: u64 = 0x2;
pub const SHF_EXECINSTR: u64 = 0x4;
pub const SHN_UNDEF: u16 = 0;
pub const STB_LOCAL: u8 = 0;
pub const DT_NULL: u64 = 0;
pub const DT_HASH: u64 = 4;

/// A malformed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfError(pub String);

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, ElfError>;

fn bad(what: impl Into<String>) -> ElfError {
    ElfError(what.into())
}

#[derive(Debug, Clone)]
pub struct Section {
    pub index: usize,
    pub name: String,
    pub kind: u32,
    pub flags: u64,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
    pub link: u32,
    pub info: u32,
}

impl Section {
    pub fn is_alloc(&self) -> bool {
        self.flags & SHF_ALLOC != 0
    }

    pub fn is_exec(&self) -> bool {
        self.flags & SHF_EXECINSTR != 0
    }
}

#[derive(Debug, Clone)]
pub struct Symbol {
    pub name: String,
    pub value: u64,
    pub size: u64,
    pub bind: u8,
    pub kind: u8,
    pub shndx: u16,
}

impl Symbol {
    pub fn is_undefined(&self) -> bool {
        self.shndx == SHN_UNDEF
    }

    pub fn is_global(&self) -> bool {
        self.bind != STB_LOCAL
    }
}

/// One relocation: where it applies, its type, its symbol (index into the symbol table the
/// relocation section links to) and addend (explicit for RELA, `None` for REL).
#[derive(Debug, Clone, Copy)]
pub struct Relocation {
    pub offset: u64,
    pub kind: u32,
    pub symbol: u32,
    pub addend: Option<i64>,
}

/// A parsed file.
#[derive(Debug)]
pub struct Elf<'a> {
    pub data: &'a [u8],
    pub class: u8,
    pub osabi: u8,
    pub e_type: u16,
    pub machine: u16,
    pub sections: Vec<Section>,
}

fn read<const N: usize>(data: &[u8], at: u64) -> Result<[u8; N]> {
    let start = usize::try_from(at).map_err(|_| bad("offset out of range"))?;
    data.get(start..start.checked_add(N).ok_or_else(|| bad("offset overflow"))?)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| bad(format!("truncated: {N} bytes at {at:#x}")))
}

pub fn u16_at(data: &[u8], at: u64) -> Result<u16> {
    read::<2>(data, at).map(u16::from_le_bytes)
}

pub fn u32_at(data: &[u8], at: u64) -> Result<u32> {
    read::<4>(data, at).map(u32::from_le_bytes)
}

pub fn u64_at(data: &[u8], at: u64) -> Result<u64> {
    read::<8>(data, at).map(u64::from_le_bytes)
}

impl<'a> Elf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Elf<'a>> {
        if !data.starts_with(b"\x7fELF") {
            return Err(bad("not an ELF file"));
        }
        let ident = read::<16>(data, 0)?;
        let class = ident[4];
        if ident[5] != 1 {
            return Err(bad("not little-endian"));
        }
        let wide = match class {
            ELFCLASS32 => false,
            ELFCLASS64 => true,
            other => return Err(bad(format!("unknown ELF class {other}"))),
        };
        let e_type = u16_at(data, 16)?;
        let machine = u16_at(data, 18)?;
        let (shoff, shentsize, shnum, shstrndx) = if wide {
            (
                u64_at(data, 0x28)?,
                u16_at(data, 0x3a)?,
                u16_at(data, 0x3c)?,
                u16_at(data, 0x3e)?,
            )
        } else {
            (
                u64::from(u32_at(data, 0x20)?),
                u16_at(data, 0x2e)?,
                u16_at(data, 0x30)?,
                u16_at(data, 0x32)?,
            )
        };
        let table_end = u64::from(shnum)
            .checked_mul(u64::from(shentsize))
            .and_then(|size| size.checked_add(shoff));
        if table_end.is_none_or(|end| end > data.len() as u64) {
            return Err(bad("section header table extends past the file"));
        }
        let mut elf = Elf {
            data,
            class,
            osabi: ident[7],
            e_type,
            machine,
            sections: Vec::new(),
        };
        let mut name_offsets = Vec::new();
        for index in 0..usize::from(shnum) {
            let at = shoff + index as u64 * u64::from(shentsize);
            let (name, section) = if wide {
                (
                    u32_at(data, at)?,
                    Section {
                        index,
                        name: String::new(),
                        kind: u32_at(data, at + 4)?,
                        flags: u64_at(data, at + 8)?,
                        addr: u64_at(data, at + 16)?,
                        offset: u64_at(data, at + 24)?,
                        size: u64_at(data, at + 32)?,
                        link: u32_at(data, at + 40)?,
                        info: u32_at(data, at + 44)?,
                    },
                )
            } else {
                (
                    u32_at(data, at)?,
                    Section {
                        index,
                        name: String::new(),
                        kind: u32_at(data, at + 4)?,
                        flags: u64::from(u32_at(data, at + 8)?),
                        addr: u64::from(u32_at(data, at + 12)?),
                        offset: u64::from(u32_at(data, at + 16)?),
                        size: u64::from(u32_at(data, at + 20)?),
                        link: u32_at(data, at + 24)?,
                        info: u32_at(data, at + 28)?,
                    },
                )
            };
            name_offsets.push(name);
            elf.sections.push(section);
        }
        if let Some(strtab) = elf.sections.get(usize::from(shstrndx)).cloned() {
            for (section, name) in elf.sections.iter_mut().zip(name_offsets) {
                section.name = string_at(data, &strtab, name)?;
            }
        }
        Ok(elf)
    }

    pub fn is_64(&self) -> bool {
        self.class == ELFCLASS64
    }

    /// A section's bytes (empty for NOBITS).
    pub fn contents(&self, section: &Section) -> Result<&'a [u8]> {
        if section.kind == SHT_NOBITS {
            return Ok(&[]);
        }
        let start = usize::try_from(section.offset).map_err(|_| bad("offset"))?;
        let len = usize::try_from(section.size).map_err(|_| bad("size"))?;
        self.data
            .get(start..start.checked_add(len).ok_or_else(|| bad("size overflow"))?)
            .ok_or_else(|| bad(format!("section {} extends past the file", section.name)))
    }

    pub fn section_by_name(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|section| section.name == name)
    }

    /// The symbols of a SYMTAB/DYNSYM section.
    pub fn symbols(&self, table: &Section) -> Result<Vec<Symbol>> {
        let strtab = self
            .sections
            .get(table.link as usize)
            .ok_or_else(|| bad("symbol table without string table"))?;
        let entsize = if self.is_64() { 24 } else { 16 };
        let data = self.contents(table)?;
        let mut symbols = Vec::new();
        for chunk in data.chunks_exact(entsize) {
            let (name, value, size, info, shndx) = if self.is_64() {
                (
                    u32_at(chunk, 0)?,
                    u64_at(chunk, 8)?,
                    u64_at(chunk, 16)?,
                    chunk[4],
                    u16_at(chunk, 6)?,
                )
            } else {
                (
                    u32_at(chunk, 0)?,
                    u64::from(u32_at(chunk, 4)?),
                    u64::from(u32_at(chunk, 8)?),
                    chunk[12],
                    u16_at(chunk, 14)?,
                )
            };
            symbols.push(Symbol {
                name: string_at(self.data, strtab, name)?,
                value,
                size,
                bind: info >> 4,
                kind: info & 0xf,
                shndx,
            });
        }
        Ok(symbols)
    }

    /// The relocations of a REL/RELA section.
    pub fn relocations(&self, section: &Section) -> Result<Vec<Relocation>> {
        let rela = section.kind == SHT_RELA;
        let entsize = match (self.is_64(), rela) {
            (true, true) => 24,
            (true, false) => 16,
            (false, true) => 12,
            (false, false) => 8,
        };
        let data = self.contents(section)?;
        let mut relocations = Vec::new();
        for chunk in data.chunks_exact(entsize) {
            let relocation = if self.is_64() {
                let info = u64_at(chunk, 8)?;
                Relocation {
                    offset: u64_at(chunk, 0)?,
                    // CAST: ELF64_R_TYPE/ELF64_R_SYM split the 64-bit info field in halves.
                    kind: (info & 0xffff_ffff) as u32,
                    symbol: (info >> 32) as u32,
                    addend: rela
                        .then(|| u64_at(chunk, 16).map(|a| a as i64))
                        .transpose()?,
                }
            } else {
                let info = u32_at(chunk, 4)?;
                Relocation {
                    offset: u64::from(u32_at(chunk, 0)?),
                    kind: info & 0xff,
                    symbol: info >> 8,
                    addend: rela
                        .then(|| u32_at(chunk, 8).map(|a| i64::from(a as i32)))
                        .transpose()?,
                }
            };
            relocations.push(relocation);
        }
        Ok(relocations)
    }

    /// The dynamic section's (tag, value) entries up to DT_NULL.
    pub fn dynamic(&self) -> Result<Vec<(u64, u64)>> {
        let Some(section) = self.sections.iter().find(|s| s.kind == SHT_DYNAMIC) else {
            return Ok(Vec::new());
        };
        let data = self.contents(section)?;
        let mut entries = Vec::new();
        let entsize = if self.is_64() { 16 } else { 8 };
        for chunk in data.chunks_exact(entsize) {
            let entry = if self.is_64() {
                (u64_at(chunk, 0)?, u64_at(chunk, 8)?)
            } else {
                (u64::from(u32_at(chunk, 0)?), u64::from(u32_at(chunk, 4)?))
            };
            if entry.0 == DT_NULL {
                break;
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

/// The NUL-terminated string at `offset` in string table `table`.
pub fn string_at(data: &[u8], table: &Section, offset: u32) -> Result<String> {
    let start = table
        .offset
        .checked_add(u64::from(offset))
        .and_then(|at| usize::try_from(at).ok())
        .ok_or_else(|| bad("string offset"))?;
    let end = usize::try_from(table.offset + table.size).map_err(|_| bad("string table"))?;
    let bytes = data
        .get(start..end.min(data.len()))
        .ok_or_else(|| bad(format!("string at {offset:#x} outside its table")))?;
    let len = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| bad("unterminated string"))?;
    Ok(String::from_utf8_lossy(&bytes[..len]).into_owned())
}
