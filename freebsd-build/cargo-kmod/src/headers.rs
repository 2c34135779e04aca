//! The FreeBSD KPI a module may use: every function and variable *declared* in the FreeBSD
//! headers its C shim is compiled against.
//!
//! The list is derived, not written by hand: the shim is preprocessed (`cc -E`) with the same
//! flags as for compiling, and the top-level declarations that come from files under the
//! FreeBSD header directories (tracked through the `# line "file"` markers) are collected.
//! Declarations from our own headers (`freebsd-build/include`) are left out on purpose: a
//! symbol they declare, such as xen.ko's `xenrs_printf_str`, must come from a module the user
//! depends on, which the verifier checks separately.
//!
//! The parser is deliberately small: it understands what system headers contain at file
//! scope (prototypes, `extern` variables, typedefs, struct/union/enum definitions, `static
//! inline` functions, `__attribute__`/`__asm` decorations) and skips anything with internal
//! linkage (`static`) or no linkage (`typedef`).

use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Punct(char),
    Other,
}

const NOT_NAMES: &[&str] = &[
    "auto",
    "break",
    "case",
    "char",
    "const",
    "continue",
    "default",
    "do",
    "double",
    "else",
    "enum",
    "extern",
    "float",
    "for",
    "goto",
    "if",
    "inline",
    "int",
    "long",
    "register",
    "restrict",
    "return",
    "short",
    "signed",
    "sizeof",
    "static",
    "struct",
    "switch",
    "typedef",
    "union",
    "unsigned",
    "void",
    "volatile",
    "while",
    "_Bool",
    "_Noreturn",
    "_Alignas",
    "_Atomic",
    "_Thread_local",
    "__inline",
    "__inline__",
    "__restrict",
    "__restrict__",
    "__const",
    "__volatile",
    "__volatile__",
    "__signed",
    "__signed__",
    "__extension__",
    "__typeof",
    "__typeof__",
    "typeof",
    "_Static_assert",
    "__builtin_va_list",
];

/// Declared names (functions and variables with external linkage) in the parts of the
/// preprocessed text `text` that come from a file for which `is_kpi_file` holds.
pub fn declared_symbols(text: &str, is_kpi_file: impl Fn(&str) -> bool) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut statement: Vec<Token> = Vec::new();
    let mut statement_is_kpi = false;
    let mut depth = 0usize; // braces
    let mut in_kpi = false;
    for line in text.lines() {
        if let Some(marker) = line
            .strip_prefix("# ")
            .or_else(|| line.strip_prefix("#line "))
        {
            // # 12 "path/to/file.h" flags
            if let Some(file) = marker.split('"').nth(1) {
                in_kpi = is_kpi_file(file);
            }
            continue;
        }
        if line.starts_with('#') {
            continue; // #pragma and the like
        }
        for token in tokenize(line) {
            match token {
                Token::Punct('{') => {
                    if depth == 0 {
                        // A function body ends the declaration; a struct/enum body does not.
                        let is_function = matches!(statement.last(), Some(Token::Punct(')')))
                            && !statement.iter().any(|t| is_ident(t, "typedef"));
                        if is_function {
                            if statement_is_kpi {
                                collect(&statement, &mut names);
                            }
                            statement.clear();
                            depth = 1;
                            statement_is_kpi = false;
                            // Mark "inside a function body" by pushing nothing; the closing
                            // brace at depth 1 below ends it without a statement.
                            continue;
                        }
                    }
                    depth += 1;
                }
                Token::Punct('}') => {
                    depth = depth.saturating_sub(1);
                }
                Token::Punct(';') if depth == 0 => {
                    if statement_is_kpi {
                        collect(&statement, &mut names);
                    }
                    statement.clear();
                    statement_is_kpi = false;
                    continue;
                }
                _ => {}
            }
            if depth == 0 || !statement.is_empty() {
                if statement.is_empty() {
                    statement_is_kpi = in_kpi;
                }
                // Tokens inside braces are kept out of the declarator analysis.
                if depth == 0 && token != Token::Punct('}') {
                    statement.push(token);
                }
            }
        }
    }
    names
}

fn is_ident(token: &Token, word: &str) -> bool {
    matches!(token, Token::Ident(name) if name == word)
}

/// Adds the declared names of one top-level declaration.
fn collect(statement: &[Token], names: &mut BTreeSet<String>) {
    if statement
        .iter()
        .any(|t| is_ident(t, "typedef") || is_ident(t, "static") || is_ident(t, "_Static_assert"))
    {
        return;
    }
    let tokens = strip_decorations(statement);
    // Split into declarators at top-level commas (outside parentheses and brackets).
    let mut level = 0i32;
    let mut start = 0;
    let mut pieces = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        match token {
            Token::Punct('(' | '[') => level += 1,
            Token::Punct(')' | ']') => level -= 1,
            Token::Punct(',') if level == 0 => {
                pieces.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&tokens[start..]);
    for piece in pieces {
        if let Some(name) = declared_name(piece) {
            names.insert(name);
        }
    }
}

/// Drops `__attribute__((...))`, `__asm__(...)` and `__declspec(...)` groups.
fn strip_decorations(tokens: &[Token]) -> Vec<Token> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let decoration = matches!(&tokens[i], Token::Ident(name)
            if matches!(name.as_str(), "__attribute__" | "__attribute" | "__asm__" | "__asm" | "asm" | "__declspec"));
        if decoration && tokens.get(i + 1) == Some(&Token::Punct('(')) {
            let mut level = 0;
            i += 1;
            while i < tokens.len() {
                match tokens[i] {
                    Token::Punct('(') => level += 1,
                    Token::Punct(')') => {
                        level -= 1;
                        if level == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        out.push(tokens[i].clone());
        i += 1;
    }
    out
}

/// The name a declarator declares: the first identifier (not a keyword, not a tag name after
/// `struct`/`union`/`enum`) followed by `(`, `[`, `)`, `=` or the end.
fn declared_name(tokens: &[Token]) -> Option<String> {
    for (i, token) in tokens.iter().enumerate() {
        let Token::Ident(name) = token else { continue };
        if NOT_NAMES.contains(&name.as_str()) {
            continue;
        }
        if i > 0
            && (is_ident(&tokens[i - 1], "struct")
                || is_ident(&tokens[i - 1], "union")
                || is_ident(&tokens[i - 1], "enum"))
        {
            continue;
        }
        match tokens.get(i + 1) {
            None | Some(Token::Punct('(' | '[' | ')' | '=')) => return Some(name.clone()),
            _ => {}
        }
    }
    None
}

fn tokenize(line: &str) -> Vec<Token> {
    let bytes = line.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            tokens.push(Token::Ident(line[start..i].to_string()));
        } else if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            tokens.push(Token::Other);
        } else if c == b'"' || c == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                if bytes[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            tokens.push(Token::Other);
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else {
            tokens.push(Token::Punct(char::from(c)));
            i += 1;
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
# 1 "/fbsd/sys/systm.h" 1
int printf(const char *, ...) __attribute__((__format__ (__printf__, 1, 2)));
char *kern_getenv(const char *name);
extern int hz, tick;
extern struct sysctl_oid sysctl___hw;
extern struct malloc_type M_DEVBUF[1];
void (*cpu_idle_hook)(void);
typedef int not_a_symbol_t;
struct forward;
struct defined { int field; char *other; };
enum { A_CONSTANT = 1, B_CONSTANT };
static __inline int helper(int x) { int local = x; return (local); }
void free(void *addr, struct malloc_type *type);
int named_asm(void) __asm__("renamed");
# 1 "/work/freebsd-build/include/xenrs_module.h" 1
void xenrs_printf_str(const char *message);
# 20 "/fbsd/sys/kernel.h" 2
void after_return(void);
"#;

    #[test]
    fn collects_external_declarations_from_kpi_files_only() {
        let names = declared_symbols(SAMPLE, |file| file.starts_with("/fbsd/"));
        let expected = [
            "printf",
            "kern_getenv",
            "hz",
            "tick",
            "sysctl___hw",
            "M_DEVBUF",
            "cpu_idle_hook",
            "free",
            "named_asm",
            "after_return",
        ];
        for name in expected {
            assert!(names.contains(name), "missing {name}: {names:?}");
        }
        for name in [
            "not_a_symbol_t",
            "forward",
            "defined",
            "field",
            "A_CONSTANT",
            "helper",
            "local",
            "xenrs_printf_str",
            "addr",
            "name",
        ] {
            assert!(!names.contains(name), "unexpected {name}: {names:?}");
        }
    }
}
