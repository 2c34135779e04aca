//! A minimal `newc` cpio writer: the format Linux unpacks as an initramfs.
//!
//! Entries are kept in a sorted map so parents come before children and the archive is
//! byte-for-byte reproducible (fixed mtime, uid/gid 0, inode numbers in path order).

use std::collections::BTreeMap;
use std::io::{self, Write};

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir,
    /// A regular file with its permission bits.
    File {
        /// Permission bits (e.g. 0o755).
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A symbolic link to `target`.
    Symlink(String),
}

/// An archive under construction, keyed by path without the leading `/`.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Archive {
        Archive::default()
    }

    fn key(path: &str) -> String {
        path.trim_start_matches('/')
            .trim_end_matches('/')
            .to_string()
    }

    /// Adds `path` and every missing parent directory.
    pub fn dir(&mut self, path: &str) {
        let key = Archive::key(path);
        let mut prefix = String::new();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries.entry(prefix.clone()).or_insert(Entry::Dir);
        }
    }

    fn parent_of(&mut self, key: &str) {
        if let Some((parent, _)) = key.rsplit_once('/') {
            self.dir(parent);
        }
    }

    /// Adds (or replaces) a file.
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        let key = Archive::key(path);
        self.parent_of(&key);
        self.entries.insert(key, Entry::File { mode, data });
    }

    /// Adds a symlink unless something already exists at `path`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let key = Archive::key(path);
        self.parent_of(&key);
        self.entries
            .entry(key)
            .or_insert_with(|| Entry::Symlink(target.to_string()));
    }

    /// Whether `path` is present.
    #[cfg(test)]
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(&Archive::key(path))
    }

    /// Total bytes of file contents.
    pub fn payload_bytes(&self) -> usize {
        self.entries
            .values()
            .map(|e| match e {
                Entry::File { data, .. } => data.len(),
                _ => 0,
            })
            .sum()
    }

    /// Writes the archive (with its trailer) to `out`.
    ///
    /// # Errors
    /// The writer's errors; a member larger than 4 GiB.
    pub fn write_to<W: Write>(&self, out: &mut W) -> io::Result<()> {
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let (mode, data): (u32, &[u8]) = match entry {
                Entry::Dir => (0o040_755, &[]),
                Entry::File { mode, data } => (0o100_000 | (mode & 0o7777), data),
                Entry::Symlink(target) => (0o120_777, target.as_bytes()),
            };
            write_member(out, ino, mode, path, data)?;
        }
        write_member(out, 0, 0, "TRAILER!!!", &[])
    }
}

fn pad4<W: Write>(out: &mut W, len: usize) -> io::Result<()> {
    let pad = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..pad])
}

fn write_member<W: Write>(
    out: &mut W,
    ino: u32,
    mode: u32,
    name: &str,
    data: &[u8],
) -> io::Result<()> {
    let size = u32::try_from(data.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is too large for cpio"),
        )
    })?;
    let namesize = u32::try_from(name.len() + 1)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, 0, 0, 0, 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, header.len() + name.len() + 1)?;
    out.write_all(data)?;
    pad4(out, data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_newc() {
        let mut a = Archive::new();
        a.file("/bin/x", 0o755, b"hello".to_vec());
        a.symlink("/sbin/y", "/bin/x");
        let mut out = Vec::new();
        a.write_to(&mut out).unwrap();
        // bin (dir), bin/x, sbin (dir), sbin/y, trailer; each header starts 4-aligned.
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("070701").count(), 5);
        assert!(out.len() % 4 == 0);
        let first = &out[..110];
        assert_eq!(&first[..6], b"070701");
        // mode of the first entry (the directory `bin`).
        assert_eq!(&first[14..22], b"000041ed");
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // File data follows its padded header.
        let pos = text.find("bin/x\0").unwrap();
        let data_at = (pos + 6).next_multiple_of(4);
        assert_eq!(&out[data_at..data_at + 5], b"hello");
    }

    #[test]
    fn parents_are_created_and_symlinks_do_not_replace_files() {
        let mut a = Archive::new();
        a.file("/usr/lib/xen/bin/xl", 0o755, vec![1]);
        assert!(a.contains("/usr"));
        assert!(a.contains("usr/lib/xen/bin"));
        a.symlink("/usr/lib/xen/bin/xl", "elsewhere");
        assert_eq!(a.payload_bytes(), 1);
    }
}
