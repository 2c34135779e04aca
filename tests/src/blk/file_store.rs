//! A file-backed [`BlockStore`] for tests: a real disk image on the host's file system.
//!
//! Two completion disciplines:
//! * [`Mode::InOrder`]: each I/O is performed when submitted and completed in order.
//! * [`Mode::Deferred`]: I/Os are queued; the test runs them ([`FileStore::run`]) in a
//!   seeded random order, as a real disk with a queue would. This is what exercises the
//!   backend's flush ordering: the store checks, when a flush is *submitted*, that no write
//!   submitted before it is still outstanding (the backend must wait for those), and counts
//!   any violation.
//!
//! Flush is `fdatasync`; discard writes zeroes (so discarded ranges read back as zeroes,
//! which the tests check).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xen_blkback::store::{gather, scatter};
use xen_blkback::{BlockStore, DiscardInfo, Io, IoError, IoOp, IoTag, StoreInfo};

use crate::xensim::Rng;

/// When I/Os complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Performed at submit, completed in order.
    InOrder,
    /// Queued; performed by [`FileStore::run`] in random order.
    Deferred,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileStoreStats {
    /// Reads performed.
    pub reads: u64,
    /// Writes performed.
    pub writes: u64,
    /// Flushes performed.
    pub flushes: u64,
    /// Discards performed.
    pub discards: u64,
    /// Flushes submitted while a write submitted earlier was still outstanding.
    pub flush_order_violations: u64,
    /// I/Os failed by injection.
    pub injected: u64,
}

/// The store (see the module docs).
#[derive(Debug)]
pub struct FileStore {
    file: File,
    path: PathBuf,
    info: StoreInfo,
    mode: Mode,
    queue: Vec<(Io<'static>, u64)>,
    done: VecDeque<(IoTag, Result<(), IoError>)>,
    seq: u64,
    fail_next: u32,
    stats: FileStoreStats,
}

impl FileStore {
    /// Creates (or truncates) `path` as a zero-filled image of `sectors` 512-byte sectors,
    /// writable, with flush and (secure) discard.
    ///
    /// # Errors
    /// File system errors.
    pub fn create(path: &Path, sectors: u64, mode: Mode) -> std::io::Result<FileStore> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(sectors * 512)?;
        Ok(FileStore {
            file,
            path: path.to_path_buf(),
            info: StoreInfo {
                sectors,
                sector_size: 512,
                physical_sector_size: 512,
                read_only: false,
                flush: true,
                discard: Some(DiscardInfo {
                    granularity: 4096,
                    alignment: 0,
                    secure: true,
                }),
            },
            mode,
            queue: Vec::new(),
            done: VecDeque::new(),
            seq: 0,
            fail_next: 0,
            stats: FileStoreStats::default(),
        })
    }

    /// The image's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the advertised properties (the size stays what the file says).
    pub fn set_info(&mut self, info: StoreInfo) {
        let sectors = self.info.sectors;
        self.info = StoreInfo { sectors, ..info };
    }

    /// Switches the completion discipline.
    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// Grows or shrinks the image.
    ///
    /// # Errors
    /// File system errors.
    pub fn resize(&mut self, sectors: u64) -> std::io::Result<()> {
        self.file.set_len(sectors * 512)?;
        self.info.sectors = sectors;
        Ok(())
    }

    /// Fails the next `n` I/Os performed with [`IoError::Io`].
    pub fn fail_next(&mut self, n: u32) {
        self.fail_next = n;
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> FileStoreStats {
        self.stats
    }

    /// I/Os queued (deferred mode).
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Completions waiting to be polled (the platform would schedule the backend).
    #[must_use]
    pub fn completions_ready(&self) -> usize {
        self.done.len()
    }

    /// Reads the image directly (for checks).
    ///
    /// # Errors
    /// File system errors.
    pub fn read_image(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Performs up to `n` queued I/Os, each picked at random; returns how many ran.
    pub fn run(&mut self, rng: &mut Rng, n: usize) -> usize {
        let mut ran = 0;
        while ran < n && !self.queue.is_empty() {
            let i = rng.index(self.queue.len());
            let (io, _) = self.queue.swap_remove(i);
            let r = self.perform(&io);
            self.done.push_back((io.tag, r));
            ran += 1;
        }
        ran
    }

    /// Performs every queued I/O in random order.
    pub fn run_all(&mut self, rng: &mut Rng) -> usize {
        let n = self.queue.len();
        self.run(rng, n)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let end = offset.checked_add(len).ok_or(IoError::OutOfRange)?;
        if end > self.info.sectors * 512 {
            return Err(IoError::OutOfRange);
        }
        Ok(())
    }

    fn perform(&mut self, io: &Io<'_>) -> Result<(), IoError> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            self.stats.injected += 1;
            return Err(IoError::Io);
        }
        let len = usize::try_from(io.len).map_err(|_| IoError::OutOfRange)?;
        match io.op {
            IoOp::Read => {
                self.check_range(io.offset, io.len)?;
                let mut buf = vec![0u8; len];
                self.file
                    .read_exact_at(&mut buf, io.offset)
                    .map_err(|_| IoError::Io)?;
                scatter(&io.segs, &buf)?;
                self.stats.reads += 1;
            }
            IoOp::Write => {
                if self.info.read_only {
                    return Err(IoError::ReadOnly);
                }
                self.check_range(io.offset, io.len)?;
                let mut buf = vec![0u8; len];
                gather(&io.segs, &mut buf)?;
                self.file
                    .write_all_at(&buf, io.offset)
                    .map_err(|_| IoError::Io)?;
                self.stats.writes += 1;
            }
            IoOp::Flush => {
                self.file.sync_data().map_err(|_| IoError::Io)?;
                self.stats.flushes += 1;
            }
            IoOp::Discard { secure } => {
                match self.info.discard {
                    Some(d) if d.secure || !secure => {}
                    _ => return Err(IoError::NotSupported),
                }
                self.check_range(io.offset, io.len)?;
                self.file
                    .write_all_at(&vec![0u8; len], io.offset)
                    .map_err(|_| IoError::Io)?;
                self.stats.discards += 1;
            }
        }
        Ok(())
    }
}

impl BlockStore<'static> for FileStore {
    fn info(&self) -> StoreInfo {
        self.info
    }

    fn submit(&mut self, io: Io<'static>) -> Result<(), (Io<'static>, IoError)> {
        self.seq += 1;
        if io.op == IoOp::Flush
            && self
                .queue
                .iter()
                .any(|(q, _)| matches!(q.op, IoOp::Write | IoOp::Discard { .. }) && q.seq < io.seq)
        {
            self.stats.flush_order_violations += 1;
        }
        match self.mode {
            Mode::InOrder => {
                let r = self.perform(&io);
                self.done.push_back((io.tag, r));
            }
            Mode::Deferred => self.queue.push((io, self.seq)),
        }
        Ok(())
    }

    fn poll_completion(&mut self) -> Option<(IoTag, Result<(), IoError>)> {
        self.done.pop_front()
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A fresh image path under the system's temporary directory, unique per call.
#[must_use]
pub fn temp_image(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("blk-{name}-{}-{n}.img", std::process::id()))
}
