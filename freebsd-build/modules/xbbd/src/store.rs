//! The blkback core's backing store on FreeBSD: a GEOM provider or a file, chosen by the
//! toolstack's `params`, with the I/O done by a taskqueue thread in bounded batches.
//!
//! # Choosing the backing object
//!
//! [`backing_for`] reads what the core parsed from xenstore ([`DeviceConfig`]): the path is
//! `physical-device-path` when present, else `params` without a `phy:`/`file:` prefix; a path
//! under `/dev/` is expected to be a character device (a GEOM provider: reads and writes reach
//! it through its cdevsw, i.e. `physio`, flush is `DIOCGFLUSH`, discard `DIOCGDELETE`, the size
//! `DIOCGMEDIASIZE`), anything else a regular file (`vn_rdwr`, `VOP_FSYNC`, `vn_deallocate` on
//! FreeBSD 14, the size from `vn_getsize`); what the opened vnode turns out to be decides
//! (`crate::sys::Vnode::open`). `mode` without `w` opens it read-only, and writes are then
//! refused before they reach it. Paths must be absolute, free of NUL and shorter than
//! `MAXPATHLEN`.
//!
//! # Split phase, bounded
//!
//! [`QueuedStore::submit`] only queues the I/O and asks for the task ([`BackingKpi::kick`]);
//! the task, holding no lock of the device while it sleeps in the file system, takes at most
//! [`BATCH`] I/Os ([`QueuedStore::take_batch`]), performs each with [`perform`] (segment by
//! segment, straight between the mapped guest pages and the backing object), and hands the
//! results back ([`QueuedStore::complete`]), after which the backend polls. An I/O taken out
//! stays valid: the core keeps its grants mapped until its completion is reported. The order
//! of the queue is kept, and the core itself only submits a flush once every earlier write has
//! completed, so a flush covers them.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use xen_blkback::backend::DeviceConfig;
use xen_blkback::store::{BlockStore, DiscardInfo, Io, IoError, IoOp, IoTag, StoreInfo};
use xen_shmem::SharedMem;

/// I/Os one task run performs before it yields the thread (and the device's events run).
pub const BATCH: usize = 16;

/// `MAXPATHLEN`.
pub const MAXPATHLEN: usize = 1024;

/// What backs a vbd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingKind {
    /// A character device under `/dev` (a GEOM provider).
    Device,
    /// A regular file.
    File,
}

/// The backing object a vbd names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingSpec {
    /// Absolute path.
    pub path: String,
    /// Device or file.
    pub kind: BackingKind,
    /// Opened read-only.
    pub read_only: bool,
}

/// Why `params` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamsError {
    /// Empty after the prefix.
    Empty,
    /// Not an absolute path.
    Relative,
    /// Contains NUL or is not shorter than `MAXPATHLEN`.
    BadPath,
}

/// The backing object of a vbd (see the module docs).
///
/// # Errors
/// [`ParamsError`].
pub fn backing_for(cfg: &DeviceConfig) -> Result<BackingSpec, ParamsError> {
    let raw = cfg
        .physical_device_path
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or(&cfg.params);
    let raw = raw.trim_end_matches(['\n', '\0']);
    let path = raw
        .strip_prefix("phy:")
        .or_else(|| raw.strip_prefix("file:"))
        .unwrap_or(raw);
    if path.is_empty() {
        return Err(ParamsError::Empty);
    }
    if !path.starts_with('/') {
        return Err(ParamsError::Relative);
    }
    if path.len() >= MAXPATHLEN || path.contains('\0') {
        return Err(ParamsError::BadPath);
    }
    let kind = if path.starts_with("/dev/") || cfg.kind == "phy" {
        BackingKind::Device
    } else {
        BackingKind::File
    };
    Ok(BackingSpec {
        path: String::from(path),
        kind,
        read_only: cfg.readonly,
    })
}

/// What an opened backing object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackingInfo {
    /// Size in bytes.
    pub size: u64,
    /// Logical block size (512 for a file).
    pub sector_size: u32,
    /// Discard is possible (`DIOCGDELETE` / `vn_deallocate`).
    pub discard: bool,
}

/// The FreeBSD side of a backing object: one vnode, its I/O, and the task that performs it.
pub trait BackingKpi {
    /// Reads (`write` false) or writes `seg` at byte `offset`.
    ///
    /// # Errors
    /// The errno.
    fn rdwr(&self, write: bool, offset: u64, seg: &SharedMem<'_>) -> Result<(), i32>;
    /// Commits written data to stable storage.
    ///
    /// # Errors
    /// The errno.
    fn flush(&self) -> Result<(), i32>;
    /// Discards `len` bytes at `offset`.
    ///
    /// # Errors
    /// The errno (`EOPNOTSUPP` when the object cannot).
    fn discard(&self, offset: u64, len: u64) -> Result<(), i32>;
    /// Asks for the task to run (`taskqueue_enqueue`).
    fn kick(&self);
}

/// `EOPNOTSUPP`.
const EOPNOTSUPP: i32 = 45;

/// Performs one I/O on `kpi` (called by the task with no device lock held).
///
/// # Errors
/// The store error to report.
pub fn perform<K: BackingKpi + ?Sized>(kpi: &K, io: &Io<'_>) -> Result<(), IoError> {
    let map = |e: i32| {
        if e == EOPNOTSUPP {
            IoError::NotSupported
        } else {
            IoError::Io
        }
    };
    match io.op {
        IoOp::Read | IoOp::Write => {
            let write = io.op == IoOp::Write;
            let mut at = io.offset;
            for seg in &io.segs {
                kpi.rdwr(write, at, seg).map_err(map)?;
                at += seg.len() as u64;
            }
            Ok(())
        }
        IoOp::Flush => kpi.flush().map_err(map),
        IoOp::Discard { secure: true } => Err(IoError::NotSupported),
        IoOp::Discard { secure: false } => kpi.discard(io.offset, io.len).map_err(map),
    }
}

/// The store the blkback core owns: a queue for the task, and the task's results.
pub struct QueuedStore<'a, K: BackingKpi> {
    kpi: K,
    info: StoreInfo,
    pending: VecDeque<Io<'a>>,
    done: VecDeque<(IoTag, Result<(), IoError>)>,
    /// I/Os taken by the task and not completed yet.
    out: usize,
}

impl<'a, K: BackingKpi> core::fmt::Debug for QueuedStore<'a, K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("QueuedStore")
            .field("info", &self.info)
            .field("pending", &self.pending.len())
            .field("out", &self.out)
            .field("done", &self.done.len())
            .finish_non_exhaustive()
    }
}

impl<'a, K: BackingKpi> QueuedStore<'a, K> {
    /// A store over an opened object.
    pub fn new(kpi: K, backing: BackingInfo, read_only: bool) -> Self {
        let sector = backing.sector_size.max(512);
        QueuedStore {
            kpi,
            info: StoreInfo {
                sectors: backing.size / 512,
                sector_size: sector,
                physical_sector_size: sector,
                read_only,
                flush: true,
                discard: backing.discard.then_some(DiscardInfo {
                    granularity: sector,
                    alignment: 0,
                    secure: false,
                }),
            },
            pending: VecDeque::new(),
            done: VecDeque::new(),
            out: 0,
        }
    }

    /// The backing object's KPI (for the task).
    pub fn kpi(&self) -> &K {
        &self.kpi
    }

    /// I/Os queued or being performed.
    pub fn busy(&self) -> usize {
        self.pending.len() + self.out
    }

    /// Up to [`BATCH`] queued I/Os for the task, in order.
    pub fn take_batch(&mut self) -> Vec<Io<'a>> {
        let n = self.pending.len().min(BATCH);
        self.out += n;
        self.pending.drain(..n).collect()
    }

    /// The task's results.
    pub fn complete(&mut self, results: impl IntoIterator<Item = (IoTag, Result<(), IoError>)>) {
        for r in results {
            self.out = self.out.saturating_sub(1);
            self.done.push_back(r);
        }
        if !self.pending.is_empty() {
            self.kpi.kick();
        }
    }

    /// A new size (the backing object grew or shrank); the core notices on its next
    /// `check_resize`.
    pub fn set_size(&mut self, bytes: u64) {
        self.info.sectors = bytes / 512;
    }
}

impl<'a, K: BackingKpi> BlockStore<'a> for QueuedStore<'a, K> {
    fn info(&self) -> StoreInfo {
        self.info
    }

    fn submit(&mut self, io: Io<'a>) -> Result<(), (Io<'a>, IoError)> {
        let writes = matches!(io.op, IoOp::Write | IoOp::Discard { .. });
        if writes && self.info.read_only {
            return Err((io, IoError::ReadOnly));
        }
        let end = io.offset.checked_add(io.len);
        if io.op != IoOp::Flush && end.is_none_or(|e| e > self.info.sectors * 512) {
            return Err((io, IoError::OutOfRange));
        }
        if matches!(io.op, IoOp::Discard { .. }) && self.info.discard.is_none() {
            return Err((io, IoError::NotSupported));
        }
        let was_idle = self.pending.is_empty();
        self.pending.push_back(io);
        if was_idle {
            self.kpi.kick();
        }
        Ok(())
    }

    fn poll_completion(&mut self) -> Option<(IoTag, Result<(), IoError>)> {
        self.done.pop_front()
    }
}
