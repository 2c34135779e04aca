//! The backing store: what the backend reads and writes, behind a split-phase trait.
//!
//! # Why split-phase
//!
//! In the kernel the backing object is a GEOM provider or a vnode: I/O is started and
//! completes later (`biodone`), possibly out of order. The backend must therefore be correct
//! for any completion order, and in particular must order flushes itself (a flush is only
//! issued once every earlier write has *completed*). So [`BlockStore::submit`] only starts an
//! I/O; `Ok` means exactly one completion will be reported by
//! [`BlockStore::poll_completion`], and `Err` hands the I/O back unstarted. A store never
//! calls back into the backend from `submit` (Tock's split-phase rule), so the backend's state
//! is never re-entered. A store may still have the completion ready when `submit` returns
//! ([`MemStore`] does the I/O there): [`crate::Backend::poll`] collects completions again
//! after submitting, so such a store's requests are answered in the same poll and the
//! platform only schedules the backend for completions that arrive later.
//!
//! # Data
//!
//! An [`Io`] names its data as [`SharedMem`] views: either pages of the frontend mapped
//! through the grant table, or the backend's own pages filled by grant copy. The store copies
//! to or from them with `xen-shmem` accessors and never holds a reference into them. The
//! views stay valid until the completion is reported: the backend keeps the grants mapped
//! (and copy pages allocated) until then.
//!
//! [`MemStore`] is an in-memory implementation (no_std); the tests add a file-backed one.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use xen_shmem::SharedMem;

use crate::proto::SECTOR_SIZE;

/// Discard capabilities of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardInfo {
    /// `discard-granularity` in bytes.
    pub granularity: u32,
    /// `discard-alignment` in bytes.
    pub alignment: u32,
    /// Secure discard (`discard-secure`).
    pub secure: bool,
}

/// What the backend needs to know about a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreInfo {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Logical block size (power of two, >= 512).
    pub sector_size: u32,
    /// Physical block size (a multiple of `sector_size`).
    pub physical_sector_size: u32,
    /// The medium cannot be written at all.
    pub read_only: bool,
    /// The store has a volatile cache that [`IoOp::Flush`] commits (advertise
    /// `feature-flush-cache` and `feature-barrier`).
    pub flush: bool,
    /// Discard support.
    pub discard: Option<DiscardInfo>,
}

/// Identifies an I/O to its completion. Chosen by the backend; opaque to the store.
pub type IoTag = u64;

/// An operation on the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Read `len` bytes at `offset` into the segments.
    Read,
    /// Write the segments at `offset`.
    Write,
    /// Commit every *completed* write to stable storage.
    Flush,
    /// Discard `len` bytes at `offset`.
    Discard {
        /// Make the data unrecoverable.
        secure: bool,
    },
}

/// One I/O.
#[derive(Debug)]
pub struct Io<'a> {
    /// Reported back with the completion.
    pub tag: IoTag,
    /// What to do.
    pub op: IoOp,
    /// Byte offset on the store.
    pub offset: u64,
    /// Length in bytes (the sum of the segment lengths for reads and writes).
    pub len: u64,
    /// The data, in order (empty for flush and discard).
    pub segs: Vec<SharedMem<'a>>,
    /// The order in which the backend took the request from its ring, device-wide, for
    /// write-class requests (writes, barriers, flushes, discards): a flush with sequence `s`
    /// is only submitted once every write with a smaller sequence has completed. Reads carry
    /// the sequence the next write would get. Stores may ignore it; checkers use it.
    pub seq: u64,
}

/// Why an I/O failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoError {
    /// The medium failed (`BLKIF_RSP_ERROR`).
    Io,
    /// The store cannot do this (`BLKIF_RSP_EOPNOTSUPP`).
    NotSupported,
    /// Beyond the end (e.g. after a shrink).
    OutOfRange,
    /// Write to a read-only store.
    ReadOnly,
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoError::Io => "I/O error",
            IoError::NotSupported => "operation not supported",
            IoError::OutOfRange => "beyond the end of the store",
            IoError::ReadOnly => "store is read-only",
        })
    }
}

/// A backing store (see the module docs for the split-phase contract).
pub trait BlockStore<'a> {
    /// Current properties; read at connection and by [`crate::Backend::check_resize`].
    fn info(&self) -> StoreInfo;

    /// Starts an I/O. `Ok`: exactly one completion will be reported by
    /// [`BlockStore::poll_completion`], never from inside this call.
    ///
    /// # Errors
    /// The I/O is returned unstarted, with the reason.
    fn submit(&mut self, io: Io<'a>) -> Result<(), (Io<'a>, IoError)>;

    /// The next completion, if any.
    fn poll_completion(&mut self) -> Option<(IoTag, Result<(), IoError>)>;
}

/// Copies `data[..]` into the segments of an I/O, in order.
///
/// # Errors
/// [`IoError::Io`] if the views are shorter than `data` (cannot happen for an `Io` the
/// backend built).
pub fn scatter(segs: &[SharedMem<'_>], data: &[u8]) -> Result<(), IoError> {
    let mut at = 0usize;
    for s in segs {
        let end = at.checked_add(s.len()).ok_or(IoError::Io)?;
        let src = data.get(at..end).ok_or(IoError::Io)?;
        s.copy_from_slice(0, src).map_err(|_| IoError::Io)?;
        at = end;
    }
    Ok(())
}

/// Copies the segments of an I/O, in order, into `data`.
///
/// # Errors
/// As [`scatter`].
pub fn gather(segs: &[SharedMem<'_>], data: &mut [u8]) -> Result<(), IoError> {
    let mut at = 0usize;
    for s in segs {
        let end = at.checked_add(s.len()).ok_or(IoError::Io)?;
        let dst = data.get_mut(at..end).ok_or(IoError::Io)?;
        s.copy_to_slice(0, dst).map_err(|_| IoError::Io)?;
        at = end;
    }
    Ok(())
}

/// Counters of a [`MemStore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemStoreStats {
    /// Reads done.
    pub reads: u64,
    /// Writes done.
    pub writes: u64,
    /// Flushes done.
    pub flushes: u64,
    /// Discards done.
    pub discards: u64,
    /// I/Os failed by injection.
    pub injected_failures: u64,
}

/// An in-memory store: I/O is performed in `submit`, completions are reported in order.
/// Discarded ranges read back as zeroes. For tests and for RAM-disk backends.
#[derive(Debug)]
pub struct MemStore {
    data: Vec<u8>,
    info: StoreInfo,
    done: VecDeque<(IoTag, Result<(), IoError>)>,
    fail_next: u32,
    stats: MemStoreStats,
}

impl MemStore {
    /// A zero-filled store of `sectors` 512-byte sectors, writable, with flush and discard.
    /// Aborts when the memory cannot be had (see [`MemStore::try_new`]).
    #[must_use]
    pub fn new(sectors: u64) -> MemStore {
        let bytes = usize::try_from(sectors)
            .unwrap_or(0)
            .saturating_mul(SECTOR_SIZE);
        Self::with_data(sectors, vec![0; bytes])
    }

    /// As [`MemStore::new`], but `None` instead of an abort when the memory cannot be had: a
    /// toolstack asking a driver domain for a disk larger than its free memory must fail that
    /// device, not the domain (found by the dd-hostile real-Xen scenario, where a 4 MiB RAM
    /// disk killed a driver domain whose heap the network backend had used up).
    #[must_use]
    pub fn try_new(sectors: u64) -> Option<MemStore> {
        let bytes = usize::try_from(sectors).ok()?.checked_mul(SECTOR_SIZE)?;
        let mut data = Vec::new();
        data.try_reserve_exact(bytes).ok()?;
        data.resize(bytes, 0);
        Some(Self::with_data(sectors, data))
    }

    fn with_data(sectors: u64, data: Vec<u8>) -> MemStore {
        MemStore {
            data,
            info: StoreInfo {
                sectors,
                sector_size: 512,
                physical_sector_size: 512,
                read_only: false,
                flush: true,
                discard: Some(DiscardInfo {
                    granularity: 512,
                    alignment: 0,
                    secure: true,
                }),
            },
            done: VecDeque::new(),
            fail_next: 0,
            stats: MemStoreStats::default(),
        }
    }

    /// Replaces the advertised properties (the size follows [`MemStore::resize`]).
    pub fn set_info(&mut self, info: StoreInfo) {
        let sectors = self.info.sectors;
        self.info = StoreInfo { sectors, ..info };
    }

    /// Grows or shrinks the store (new space reads as zeroes).
    pub fn resize(&mut self, sectors: u64) {
        let bytes = usize::try_from(sectors)
            .unwrap_or(0)
            .saturating_mul(SECTOR_SIZE);
        self.data.resize(bytes, 0);
        self.info.sectors = sectors;
    }

    /// Fails the next `n` I/Os with [`IoError::Io`].
    pub fn fail_next(&mut self, n: u32) {
        self.fail_next = n;
    }

    /// Completions not yet polled. [`crate::Backend::poll`] leaves none behind (it collects
    /// what `submit` completed); a diagnostic for tests.
    #[must_use]
    pub fn completions_ready(&self) -> usize {
        self.done.len()
    }

    /// The contents.
    #[must_use]
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> MemStoreStats {
        self.stats
    }

    fn range(&self, offset: u64, len: u64) -> Result<core::ops::Range<usize>, IoError> {
        let start = usize::try_from(offset).map_err(|_| IoError::OutOfRange)?;
        let len = usize::try_from(len).map_err(|_| IoError::OutOfRange)?;
        let end = start.checked_add(len).ok_or(IoError::OutOfRange)?;
        if end > self.data.len() {
            return Err(IoError::OutOfRange);
        }
        Ok(start..end)
    }

    fn perform(&mut self, io: &Io<'_>) -> Result<(), IoError> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            self.stats.injected_failures += 1;
            return Err(IoError::Io);
        }
        match io.op {
            IoOp::Read => {
                let r = self.range(io.offset, io.len)?;
                scatter(&io.segs, self.data.get(r).ok_or(IoError::OutOfRange)?)?;
                self.stats.reads += 1;
            }
            IoOp::Write => {
                if self.info.read_only {
                    return Err(IoError::ReadOnly);
                }
                let r = self.range(io.offset, io.len)?;
                gather(&io.segs, self.data.get_mut(r).ok_or(IoError::OutOfRange)?)?;
                self.stats.writes += 1;
            }
            IoOp::Flush => {
                if !self.info.flush {
                    return Err(IoError::NotSupported);
                }
                self.stats.flushes += 1;
            }
            IoOp::Discard { secure } => {
                match self.info.discard {
                    Some(d) if d.secure || !secure => {}
                    _ => return Err(IoError::NotSupported),
                }
                if self.info.read_only {
                    return Err(IoError::ReadOnly);
                }
                let r = self.range(io.offset, io.len)?;
                if let Some(d) = self.data.get_mut(r) {
                    d.fill(0);
                }
                self.stats.discards += 1;
            }
        }
        Ok(())
    }
}

impl<'a> BlockStore<'a> for MemStore {
    fn info(&self) -> StoreInfo {
        self.info
    }

    fn submit(&mut self, io: Io<'a>) -> Result<(), (Io<'a>, IoError)> {
        let r = self.perform(&io);
        self.done.push_back((io.tag, r));
        Ok(())
    }

    fn poll_completion(&mut self) -> Option<(IoTag, Result<(), IoError>)> {
        self.done.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_shmem::Page;

    #[test]
    fn try_new_refuses_what_cannot_be_allocated() {
        let m = MemStore::try_new(16).unwrap();
        assert_eq!(m.info().sectors, 16);
        assert_eq!(m.data().len(), 16 * SECTOR_SIZE);
        assert!(m.data().iter().all(|&b| b == 0));
        // More bytes than any address space: refused, no abort.
        assert!(MemStore::try_new(u64::MAX / 1024).is_none());
        assert!(MemStore::try_new(u64::MAX).is_none());
    }

    #[test]
    fn mem_store_round_trip() {
        let pages = [Page::new(), Page::new()];
        let mem = SharedMem::from_pages(&pages);
        let a = mem.subrange(512, 1024).unwrap();
        let b = mem.subrange(4096, 512).unwrap();
        a.fill(0, 1024, 0x11).unwrap();
        b.fill(0, 512, 0x22).unwrap();
        let mut s = MemStore::new(16);
        let io = Io {
            tag: 1,
            op: IoOp::Write,
            offset: 1024,
            len: 1536,
            segs: vec![a, b],
            seq: 0,
        };
        s.submit(io).unwrap();
        assert_eq!(s.poll_completion(), Some((1, Ok(()))));
        assert_eq!(s.data()[1024], 0x11);
        assert_eq!(s.data()[2048 + 511], 0x22);
        let out = mem.subrange(8192 - 1536, 1536).unwrap();
        s.submit(Io {
            tag: 2,
            op: IoOp::Read,
            offset: 1024,
            len: 1536,
            segs: vec![out],
            seq: 0,
        })
        .unwrap();
        assert_eq!(s.poll_completion(), Some((2, Ok(()))));
        let mut buf = [0u8; 1536];
        out.copy_to_slice(0, &mut buf).unwrap();
        assert_eq!((buf[0], buf[1535]), (0x11, 0x22));
        s.submit(Io {
            tag: 3,
            op: IoOp::Write,
            offset: 16 * 512 - 512,
            len: 1024,
            segs: vec![a],
            seq: 0,
        })
        .unwrap();
        assert_eq!(s.poll_completion(), Some((3, Err(IoError::OutOfRange))));
        s.submit(Io {
            tag: 4,
            op: IoOp::Discard { secure: true },
            offset: 1024,
            len: 512,
            segs: vec![],
            seq: 0,
        })
        .unwrap();
        assert_eq!(s.poll_completion(), Some((4, Ok(()))));
        assert_eq!(s.data()[1024], 0);
        assert_eq!(s.stats().discards, 1);
    }
}
