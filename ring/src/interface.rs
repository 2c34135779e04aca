//! Byte-stream "interface" rings: xenstore (`io/xs_wire.h`, `struct
//! xenstore_domain_interface`) and the console (`io/console.h`, `struct xencons_interface`).
//!
//! Each direction is a power-of-two byte buffer with a free-running producer index and a
//! consumer index (`u32`, wrapping; the position in the buffer is `index & (size - 1)`). One
//! generic implementation serves every direction: a [`StreamLayout`] names where the buffer and
//! the two indices live, a [`StreamWriter`] produces into one direction and a [`StreamReader`]
//! consumes from the other. [`Interface`] pairs them for each end of the standard layouts:
//!
//! | end | writes | reads |
//! |---|---|---|
//! | [`Interface::xenstore_client`] (guest) | `req` | `rsp` |
//! | [`Interface::xenstore_server`] (xenstored) | `rsp` | `req` |
//! | [`Interface::console_frontend`] (guest) | `out` | `in` |
//! | [`Interface::console_backend`] (xenconsoled) | `in` | `out` |
//!
//! These rings have no event indices: a side notifies the peer after every write (or read
//! that frees space) that moved an index.
//!
//! Index sanity: `prod - cons <= size` always, and the peer's index never moves backwards;
//! otherwise a sticky [`Fault`] names the values.

use core::cmp::min;

use xen_shmem::{SharedMem, SharedU32};

use crate::{Fault, SetupError};

/// Where one direction of a byte-stream ring lives inside the shared page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLayout {
    /// Offset of the data buffer.
    pub data: usize,
    /// Size of the data buffer in bytes: a power of two.
    pub size: u32,
    /// Offset of the consumer index (`u32`, 4-aligned).
    pub cons: usize,
    /// Offset of the producer index (`u32`, 4-aligned).
    pub prod: usize,
}

/// `XENSTORE_RING_SIZE`.
pub const XENSTORE_RING_SIZE: u32 = 1024;

/// xenstore requests, guest to xenstored: `req[1024]`, `req_cons`, `req_prod`.
pub const XENSTORE_REQ: StreamLayout = StreamLayout {
    data: 0,
    size: 1024,
    cons: 2048,
    prod: 2052,
};
/// xenstore replies and watch events, xenstored to guest: `rsp[1024]`, `rsp_cons`, `rsp_prod`.
pub const XENSTORE_RSP: StreamLayout = StreamLayout {
    data: 1024,
    size: 1024,
    cons: 2056,
    prod: 2060,
};
/// Offset of `server_features` in `xenstore_domain_interface`.
pub const XENSTORE_SERVER_FEATURES: usize = 2064;
/// Offset of `connection` in `xenstore_domain_interface`.
pub const XENSTORE_CONNECTION: usize = 2068;
/// Offset of `error` in `xenstore_domain_interface`.
pub const XENSTORE_ERROR: usize = 2072;

/// Console input, backend to guest: `in[1024]`, `in_cons`, `in_prod`.
pub const CONSOLE_IN: StreamLayout = StreamLayout {
    data: 0,
    size: 1024,
    cons: 3072,
    prod: 3076,
};
/// Console output, guest to backend: `out[2048]`, `out_cons`, `out_prod`.
pub const CONSOLE_OUT: StreamLayout = StreamLayout {
    data: 1024,
    size: 2048,
    cons: 3080,
    prod: 3084,
};

/// The checked shared parts of one direction.
///
/// # Invariants
/// `size` is a power of two in `1..=2^31` and `data.len() == size`.
#[derive(Debug, Clone, Copy)]
struct Stream<'a> {
    data: SharedMem<'a>,
    size: u32,
    cons: SharedU32<'a>,
    prod: SharedU32<'a>,
}

impl<'a> Stream<'a> {
    fn map(mem: SharedMem<'a>, layout: StreamLayout) -> Result<Self, SetupError> {
        let size = layout.size;
        if !size.is_power_of_two() || size > 1 << 31 {
            return Err(SetupError::BadStreamSize { size });
        }
        // INVARIANT: size checked above; `subrange` checks the buffer fits.
        Ok(Stream {
            // CAST: u32 -> usize is lossless on every supported target.
            data: mem.subrange(layout.data, size as usize)?,
            size,
            cons: mem.u32_at(layout.cons)?,
            prod: mem.u32_at(layout.prod)?,
        })
    }

    /// Position of free-running index `idx` in the buffer.
    fn pos(&self, idx: u32) -> usize {
        // CAST: lossless; < size by masking.
        (idx & (self.size - 1)) as usize
    }

    /// Splits `len` bytes starting at index `idx` into the run up to the end of the buffer and
    /// the wrapped run from its start: `(pos, first_len, second_len)`.
    fn runs(&self, idx: u32, len: usize) -> (usize, usize, usize) {
        let pos = self.pos(idx);
        // CAST: lossless.
        let first = min(len, self.size as usize - pos);
        (pos, first, len - first)
    }
}

/// A slice length as `u32`, saturating (ring buffers are at most 2^31 bytes anyway).
fn clamp_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Writer-side check of the reader's newly loaded `cons` (our `prod`, its previous value
/// `last_cons`): returns the bytes in use.
fn check_cons(prod: u32, cons: u32, last_cons: u32, size: u32) -> Result<u32, Fault> {
    let used = prod.wrapping_sub(cons);
    if used > size {
        return Err(Fault::StreamOverflow { prod, cons, size });
    }
    // A correct reader's cons lies in last_cons..=prod.
    if cons.wrapping_sub(last_cons) > prod.wrapping_sub(last_cons) {
        return Err(Fault::StreamIndexRegressed {
            index: cons,
            last: last_cons,
        });
    }
    Ok(used)
}

/// Reader-side check of the writer's newly loaded `prod` (our `cons`, its previous value
/// `last_prod`): returns the bytes ready.
fn check_prod(prod: u32, cons: u32, last_prod: u32, size: u32) -> Result<u32, Fault> {
    let used = prod.wrapping_sub(cons);
    if used > size {
        return Err(Fault::StreamOverflow { prod, cons, size });
    }
    // A correct writer's prod lies in last_prod..=cons + size.
    if used < last_prod.wrapping_sub(cons) {
        return Err(Fault::StreamIndexRegressed {
            index: prod,
            last: last_prod,
        });
    }
    Ok(used)
}

/// The producing end of one direction of a byte-stream ring.
///
/// # Invariants
/// `prod - last_cons <= size`; once `fault` is `Some`, it never changes.
#[derive(Debug)]
pub struct StreamWriter<'a> {
    s: Stream<'a>,
    /// Our producer index (private; never read back after attaching).
    prod: u32,
    /// The reader's consumer index at the last successful check.
    last_cons: u32,
    fault: Option<Fault>,
}

impl<'a> StreamWriter<'a> {
    /// Attaches to one direction, continuing from the indices currently in shared memory.
    ///
    /// # Errors
    /// [`SetupError::BadStreamSize`], [`SetupError::Memory`] if the layout does not fit, or
    /// [`SetupError::Fault`] if the indices are already inconsistent.
    pub fn attach(mem: SharedMem<'a>, layout: StreamLayout) -> Result<Self, SetupError> {
        let s = Stream::map(mem, layout)?;
        let prod = s.prod.load_relaxed();
        let cons = s.cons.load_acquire();
        check_cons(prod, cons, cons, s.size)?;
        Ok(StreamWriter {
            s,
            prod,
            last_cons: cons,
            fault: None,
        })
    }

    /// Buffer size in bytes.
    #[must_use]
    pub fn size(&self) -> u32 {
        self.s.size
    }

    /// The sticky fault, if the ring has failed.
    #[must_use]
    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }

    /// Our producer index.
    #[must_use]
    pub fn prod(&self) -> u32 {
        self.prod
    }

    /// Loads the reader's consumer index once, validates it, and returns the free space in
    /// bytes.
    ///
    /// # Errors
    /// [`Fault::StreamOverflow`] or [`Fault::StreamIndexRegressed`] (sticky).
    pub fn space(&mut self) -> Result<u32, Fault> {
        if let Some(f) = self.fault {
            return Err(f);
        }
        // Acquire: the reader finished copying the bytes before its Release store of cons,
        // so we may overwrite them now.
        let cons = self.s.cons.load_acquire();
        match check_cons(self.prod, cons, self.last_cons, self.s.size) {
            Ok(used) => {
                self.last_cons = cons;
                Ok(self.s.size - used)
            }
            Err(f) => Err(*self.fault.get_or_insert(f)),
        }
    }

    /// Writes as much of `data` as fits and publishes it; returns how many bytes were written
    /// (possibly 0). Notify the peer if it is non-zero.
    ///
    /// # Errors
    /// As [`space`](Self::space).
    pub fn write(&mut self, data: &[u8]) -> Result<usize, Fault> {
        let n = min(self.space()?, clamp_len(data.len()));
        // CAST: u32 -> usize is lossless.
        let (pos, first, second) = self.s.runs(self.prod, n as usize);
        let copied = self
            .s
            .data
            .copy_from_slice(pos, &data[..first])
            .and_then(|()| self.s.data.copy_from_slice(0, &data[first..first + second]));
        if let Err(e) = copied {
            return Err(*self.fault.get_or_insert(e.into()));
        }
        self.prod = self.prod.wrapping_add(n);
        // Release: the reader sees the bytes before the new prod.
        self.s.prod.store_release(self.prod);
        // CAST: lossless.
        Ok(n as usize)
    }
}

/// The consuming end of one direction of a byte-stream ring.
///
/// # Invariants
/// `last_prod - cons <= size`; once `fault` is `Some`, it never changes.
#[derive(Debug)]
pub struct StreamReader<'a> {
    s: Stream<'a>,
    /// Our consumer index (private; never read back after attaching).
    cons: u32,
    /// The writer's producer index at the last successful check.
    last_prod: u32,
    fault: Option<Fault>,
}

impl<'a> StreamReader<'a> {
    /// Attaches to one direction, continuing from the indices currently in shared memory.
    ///
    /// # Errors
    /// As [`StreamWriter::attach`].
    pub fn attach(mem: SharedMem<'a>, layout: StreamLayout) -> Result<Self, SetupError> {
        let s = Stream::map(mem, layout)?;
        let cons = s.cons.load_relaxed();
        let prod = s.prod.load_acquire();
        check_prod(prod, cons, prod, s.size)?;
        Ok(StreamReader {
            s,
            cons,
            last_prod: prod,
            fault: None,
        })
    }

    /// Buffer size in bytes.
    #[must_use]
    pub fn size(&self) -> u32 {
        self.s.size
    }

    /// The sticky fault, if the ring has failed.
    #[must_use]
    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }

    /// Our consumer index.
    #[must_use]
    pub fn cons(&self) -> u32 {
        self.cons
    }

    /// Loads the writer's producer index once, validates it, and returns how many bytes are
    /// ready.
    ///
    /// # Errors
    /// [`Fault::StreamOverflow`] or [`Fault::StreamIndexRegressed`] (sticky).
    pub fn available(&mut self) -> Result<u32, Fault> {
        if let Some(f) = self.fault {
            return Err(f);
        }
        // Acquire: the bytes written before the writer's Release store of prod are visible.
        let prod = self.s.prod.load_acquire();
        match check_prod(prod, self.cons, self.last_prod, self.s.size) {
            Ok(used) => {
                self.last_prod = prod;
                Ok(used)
            }
            Err(f) => Err(*self.fault.get_or_insert(f)),
        }
    }

    /// Copies up to `buf.len()` ready bytes out (each exactly once) and releases their space;
    /// returns how many (possibly 0). Notify the peer if it is non-zero and the peer may be
    /// waiting for space.
    ///
    /// # Errors
    /// As [`available`](Self::available).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Fault> {
        let n = min(self.available()?, clamp_len(buf.len()));
        // CAST: u32 -> usize is lossless.
        let (pos, first, second) = self.s.runs(self.cons, n as usize);
        let (a, b) = buf.split_at_mut(first);
        let copied = self
            .s
            .data
            .copy_to_slice(pos, a)
            .and_then(|()| self.s.data.copy_to_slice(0, &mut b[..second]));
        if let Err(e) = copied {
            return Err(*self.fault.get_or_insert(e.into()));
        }
        self.cons = self.cons.wrapping_add(n);
        // Release: our copies of the bytes complete before the writer may reuse the space.
        self.s.cons.store_release(self.cons);
        // CAST: lossless.
        Ok(n as usize)
    }
}

/// Both directions of an interface page, from one end's point of view.
#[derive(Debug)]
pub struct Interface<'a> {
    /// The direction this end writes.
    pub tx: StreamWriter<'a>,
    /// The direction this end reads.
    pub rx: StreamReader<'a>,
}

impl<'a> Interface<'a> {
    /// Attaches to an interface page with the given layouts.
    ///
    /// # Errors
    /// As [`StreamWriter::attach`].
    pub fn new(mem: SharedMem<'a>, tx: StreamLayout, rx: StreamLayout) -> Result<Self, SetupError> {
        Ok(Interface {
            tx: StreamWriter::attach(mem, tx)?,
            rx: StreamReader::attach(mem, rx)?,
        })
    }

    /// The guest end of xenstore: writes requests, reads replies.
    ///
    /// # Errors
    /// As [`StreamWriter::attach`].
    pub fn xenstore_client(mem: SharedMem<'a>) -> Result<Self, SetupError> {
        Self::new(mem, XENSTORE_REQ, XENSTORE_RSP)
    }

    /// The xenstored end: reads requests, writes replies.
    ///
    /// # Errors
    /// As [`StreamWriter::attach`].
    pub fn xenstore_server(mem: SharedMem<'a>) -> Result<Self, SetupError> {
        Self::new(mem, XENSTORE_RSP, XENSTORE_REQ)
    }

    /// The guest end of the console: writes `out`, reads `in`.
    ///
    /// # Errors
    /// As [`StreamWriter::attach`].
    pub fn console_frontend(mem: SharedMem<'a>) -> Result<Self, SetupError> {
        Self::new(mem, CONSOLE_OUT, CONSOLE_IN)
    }

    /// The console backend end: writes `in`, reads `out`.
    ///
    /// # Errors
    /// As [`StreamWriter::attach`].
    pub fn console_backend(mem: SharedMem<'a>) -> Result<Self, SetupError> {
        Self::new(mem, CONSOLE_IN, CONSOLE_OUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_shmem::Page;

    #[test]
    fn layouts_match_headers() {
        // xs_wire.h: char req[1024], rsp[1024]; req_cons, req_prod, rsp_cons, rsp_prod;
        // server_features, connection, error.
        assert_eq!(
            XENSTORE_RSP.data,
            XENSTORE_REQ.data + XENSTORE_RING_SIZE as usize
        );
        assert_eq!(XENSTORE_REQ.cons, 2 * 1024);
        assert_eq!(XENSTORE_ERROR, 2048 + 6 * 4);
        // console.h: char in[1024], out[2048]; in_cons, in_prod, out_cons, out_prod.
        assert_eq!((CONSOLE_OUT.data, CONSOLE_OUT.size), (1024, 2048));
        assert_eq!([CONSOLE_IN.cons, CONSOLE_IN.prod], [3072, 3076]);
        assert_eq!([CONSOLE_OUT.cons, CONSOLE_OUT.prod], [3080, 3084]);
    }

    #[test]
    fn partial_and_wrapping_transfers() {
        let page = Page::new();
        let mem = SharedMem::from_pages(core::slice::from_ref(&page));
        // Start near the index wrap and off a word boundary.
        mem.store_relaxed_u32(XENSTORE_REQ.prod, u32::MAX - 700)
            .unwrap();
        mem.store_relaxed_u32(XENSTORE_REQ.cons, u32::MAX - 700)
            .unwrap();
        let mut client = Interface::xenstore_client(mem).unwrap();
        let mut server = Interface::xenstore_server(mem).unwrap();
        let data: [u8; 1500] = core::array::from_fn(|i| u8::try_from(i * 7 % 251).unwrap());
        assert_eq!(client.tx.write(&data).unwrap(), 1024);
        assert_eq!(client.tx.write(&data).unwrap(), 0);
        let mut buf = [0u8; 1500];
        assert_eq!(server.rx.read(&mut buf[..100]).unwrap(), 100);
        assert_eq!(server.rx.read(&mut buf[100..]).unwrap(), 924);
        assert_eq!(&buf[..1024], &data[..1024]);
        assert_eq!(client.tx.write(&data[1024..]).unwrap(), 476);
        assert_eq!(server.rx.read(&mut buf[1024..]).unwrap(), 476);
        assert_eq!(buf, data);
        assert_eq!(server.rx.read(&mut buf).unwrap(), 0);
        // The other direction is independent.
        assert_eq!(server.tx.write(b"reply").unwrap(), 5);
        let mut r = [0u8; 8];
        assert_eq!(client.rx.read(&mut r).unwrap(), 5);
        assert_eq!(&r[..5], b"reply");
    }

    #[test]
    fn hostile_indices() {
        let page = Page::new();
        let mem = SharedMem::from_pages(core::slice::from_ref(&page));
        let mut guest = Interface::console_frontend(mem).unwrap();
        assert_eq!(guest.tx.size(), 2048);
        assert_eq!(guest.tx.write(&[1; 10]).unwrap(), 10);
        // Reader claims to have consumed more than was written.
        mem.store_release_u32(CONSOLE_OUT.cons, 11).unwrap();
        let f = Fault::StreamOverflow {
            prod: 10,
            cons: 11,
            size: 2048,
        };
        assert_eq!(guest.tx.write(&[1]), Err(f));
        mem.store_release_u32(CONSOLE_OUT.cons, 0).unwrap();
        assert_eq!(guest.tx.space(), Err(f));
        // Writer claims more than a buffer of input.
        mem.store_release_u32(CONSOLE_IN.prod, 1025).unwrap();
        let mut buf = [0u8; 4];
        assert!(matches!(
            guest.rx.read(&mut buf),
            Err(Fault::StreamOverflow { prod: 1025, .. })
        ));
        // Regressions.
        let page = Page::new();
        let mem = SharedMem::from_pages(core::slice::from_ref(&page));
        let mut be = Interface::console_backend(mem).unwrap();
        mem.store_release_u32(CONSOLE_OUT.prod, 8).unwrap();
        assert_eq!(be.rx.available(), Ok(8));
        mem.store_release_u32(CONSOLE_OUT.prod, 4).unwrap();
        assert_eq!(
            be.rx.available(),
            Err(Fault::StreamIndexRegressed { index: 4, last: 8 })
        );
        assert_eq!(be.tx.write(&[0; 100]).unwrap(), 100);
        mem.store_release_u32(CONSOLE_IN.cons, 50).unwrap();
        assert_eq!(be.tx.space(), Ok(1024 - 50));
        mem.store_release_u32(CONSOLE_IN.cons, 49).unwrap();
        assert_eq!(
            be.tx.space(),
            Err(Fault::StreamIndexRegressed {
                index: 49,
                last: 50
            })
        );
    }

    #[test]
    fn bad_layouts() {
        let page = Page::new();
        let mem = SharedMem::from_pages(core::slice::from_ref(&page));
        let bad = StreamLayout {
            data: 0,
            size: 1000,
            cons: 2048,
            prod: 2052,
        };
        assert_eq!(
            StreamWriter::attach(mem, bad).unwrap_err(),
            SetupError::BadStreamSize { size: 1000 }
        );
        let bad = StreamLayout {
            data: 4000,
            size: 1024,
            cons: 2048,
            prod: 2052,
        };
        assert!(matches!(
            StreamWriter::attach(mem, bad),
            Err(SetupError::Memory(_))
        ));
        let bad = StreamLayout {
            data: 0,
            size: 1024,
            cons: 2049,
            prod: 2052,
        };
        assert!(matches!(
            StreamReader::attach(mem, bad),
            Err(SetupError::Memory(_))
        ));
        mem.store_relaxed_u32(XENSTORE_REQ.prod, 2000).unwrap();
        assert!(matches!(
            Interface::xenstore_server(mem),
            Err(SetupError::Fault(Fault::StreamOverflow {
                prod: 2000,
                cons: 0,
                size: 1024
            }))
        ));
    }
}
