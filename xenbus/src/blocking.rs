//! A blocking convenience layer over [`Client`] and a byte [`Transport`].
//!
//! The platform supplies the transport: the kernel glue wraps the xenstore interface ring and
//! sleeps on the event channel in [`Transport::wait_for_event`]; the PVH test guest polls; the
//! simulator runs its xenstored there. Every wait loop here is bounded by
//! [`Xs::max_waits`] and by the transport's own time limit, and gives up cleanly (the request
//! is abandoned, see [`Client::abandon`]).
//!
//! Operations are provided by the [`Store`] trait, implemented both by [`Xs`] (outside any
//! transaction) and by [`Tx`] (inside one), so code that reads and writes nodes can run either
//! way. [`Xs::transaction`] re-runs a closure on `EAGAIN` up to a bound.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;

use crate::client::{Client, Config, ReqId, TxId, WatchEvent, WatchId};
use crate::error::{Error, TransportError, XsError};
use crate::perms::{DomId, Perm};
use crate::wire::{Reply, Request};

/// The byte stream to the daemon, plus a way to wait for it.
pub trait Transport {
    /// Writes a prefix of `bytes` to the daemon (and notifies it); returns its length, 0 when
    /// there is no room now.
    ///
    /// # Errors
    /// When the connection is gone or the ring is corrupt.
    fn send(&mut self, bytes: &[u8]) -> Result<usize, TransportError>;

    /// Reads up to `buf.len()` bytes from the daemon (and notifies it that room was made);
    /// returns how many, 0 when nothing is available now.
    ///
    /// # Errors
    /// When the connection is gone or the ring is corrupt.
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError>;

    /// Blocks until the daemon may have made progress (an event, or a short timeout).
    ///
    /// # Errors
    /// When waiting any longer is pointless: timed out, closed, or (simulator) nobody can make
    /// progress.
    fn wait_for_event(&mut self) -> Result<(), TransportError>;
}

/// Bytes taken from the transport per [`Xs::pump`], so a talkative daemon cannot pin us.
const RECV_BUDGET: usize = 64 * 1024;

/// A blocking xenstore connection.
#[derive(Debug)]
pub struct Xs<T> {
    client: Client,
    transport: T,
    max_waits: u32,
    tx_retries: u64,
}

impl<T: Transport> Xs<T> {
    /// A connection over `transport` with the client limits `cfg`.
    pub fn new(transport: T, cfg: Config) -> Xs<T> {
        Xs {
            client: Client::new(cfg),
            transport,
            max_waits: 10_000,
            tx_retries: 0,
        }
    }

    /// Sets how many times one operation may call [`Transport::wait_for_event`] before it is
    /// abandoned with [`TransportError::TimedOut`].
    pub fn set_max_waits(&mut self, n: u32) {
        self.max_waits = n;
    }

    /// The bound set by [`Xs::set_max_waits`].
    pub fn max_waits(&self) -> u32 {
        self.max_waits
    }

    /// The sans-IO core (statistics, watch counters).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The sans-IO core, mutably (to submit without blocking).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Transactions re-run because of `EAGAIN` so far.
    pub fn tx_retries(&self) -> u64 {
        self.tx_retries
    }

    /// Moves bytes both ways without blocking; true when anything moved.
    ///
    /// # Errors
    /// Transport failures, or [`Error::Broken`] when the input poisoned the client.
    pub fn pump(&mut self) -> Result<bool, Error> {
        let mut moved = false;
        // Bounded: each round writes at least one byte of a finite queue, or stops.
        while self.client.output_len() > 0 {
            let chunk = self.client.output();
            let n = self.transport.send(chunk)?.min(chunk.len());
            if n == 0 {
                break;
            }
            self.client.consume_output(n);
            moved = true;
        }
        let mut buf = [0u8; 512];
        let mut taken = 0;
        while taken < RECV_BUDGET {
            let n = self.transport.recv(&mut buf)?.min(buf.len());
            if n == 0 {
                break;
            }
            taken += n;
            moved = true;
            self.client.receive(buf.get(..n).unwrap_or(&[]))?;
        }
        Ok(moved)
    }

    fn wait_reply(&mut self, id: ReqId) -> Result<Reply, Error> {
        let mut waits = 0;
        loop {
            let pumped = self.pump();
            if let Some(r) = self.client.take_reply(id) {
                return r;
            }
            if let Err(e) = pumped {
                self.client.abandon(id);
                return Err(e);
            }
            if waits >= self.max_waits {
                self.client.abandon(id);
                return Err(Error::Transport(TransportError::TimedOut));
            }
            waits += 1;
            if let Err(e) = self.transport.wait_for_event() {
                // One last look: the wait may have delivered the reply before failing.
                let _ = self.pump();
                if let Some(r) = self.client.take_reply(id) {
                    return r;
                }
                self.client.abandon(id);
                return Err(Error::Transport(e));
            }
        }
    }

    /// Sends one request and waits for its reply.
    ///
    /// # Errors
    /// The daemon's error, a protocol violation, a local cap, or a transport failure.
    pub fn call(&mut self, req: &Request<'_>, tx: Option<TxId>) -> Result<Reply, Error> {
        let id = self.client.submit(req, tx)?;
        self.wait_reply(id)
    }

    /// Registers a watch and waits for the daemon to accept it. The initial event the daemon
    /// fires is queued like any other.
    ///
    /// # Errors
    /// As [`Xs::call`].
    pub fn watch(&mut self, path: &str) -> Result<WatchId, Error> {
        let (w, id) = self.client.watch(path)?;
        expect_ack(self.wait_reply(id)?)?;
        Ok(w)
    }

    /// Removes a watch.
    ///
    /// # Errors
    /// As [`Xs::call`].
    pub fn unwatch(&mut self, w: WatchId) -> Result<(), Error> {
        let id = self.client.unwatch(w)?;
        expect_ack(self.wait_reply(id)?)
    }

    /// Pumps once without blocking and returns a queued event, if any.
    ///
    /// # Errors
    /// As [`Xs::pump`].
    pub fn poll_event(&mut self) -> Result<Option<(WatchId, WatchEvent)>, Error> {
        if !self.client.has_events() {
            self.pump()?;
        }
        Ok(self.client.next_any_event())
    }

    /// Waits (boundedly) for an event of watch `w`, or of any watch with `None`.
    ///
    /// # Errors
    /// [`TransportError::TimedOut`] after [`Xs::max_waits`] waits, or a transport failure.
    pub fn wait_event(&mut self, w: Option<WatchId>) -> Result<(WatchId, WatchEvent), Error> {
        // Every round (a pump that moved bytes, or a wait) counts: a daemon streaming events
        // we drop (stale, malformed) must not keep us here forever.
        for _ in 0..=self.max_waits {
            let ev = match w {
                Some(w) => self.client.next_event(w).map(|e| (w, e)),
                None => self.client.next_any_event(),
            };
            if let Some(ev) = ev {
                return Ok(ev);
            }
            if !self.pump()? {
                self.transport.wait_for_event()?;
            }
        }
        Err(Error::Transport(TransportError::TimedOut))
    }

    /// Starts a transaction.
    ///
    /// # Errors
    /// As [`Xs::call`].
    pub fn transaction_start(&mut self) -> Result<TxId, Error> {
        match self.call(&Request::TransactionStart, None)? {
            Reply::TxId(id) => TxId::from_raw(id).ok_or(Error::BadValue),
            _ => Err(Error::BadValue),
        }
    }

    /// Commits (`commit`) or aborts a transaction. `EAGAIN` on commit means it conflicted with
    /// another change and nothing was applied.
    ///
    /// # Errors
    /// As [`Xs::call`].
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), Error> {
        expect_ack(self.call(&Request::TransactionEnd { commit }, Some(tx))?)
    }

    /// Runs `f` inside a transaction and commits it, re-running everything when the daemon
    /// answers `EAGAIN` (at commit, or to an operation inside), at most `max_attempts` times.
    /// An error from `f` aborts the transaction and is returned.
    ///
    /// # Errors
    /// `f`'s error, a commit error, or `Xs(Again)` when every attempt conflicted.
    pub fn transaction<R, F>(&mut self, max_attempts: u32, mut f: F) -> Result<R, Error>
    where
        F: FnMut(&mut Tx<'_, T>) -> Result<R, Error>,
    {
        let attempts = max_attempts.max(1);
        for attempt in 0..attempts {
            if attempt > 0 {
                self.tx_retries += 1;
            }
            let id = self.transaction_start()?;
            let outcome = f(&mut Tx { xs: self, id });
            match outcome {
                Ok(v) => match self.transaction_end(id, true) {
                    Ok(()) => return Ok(v),
                    Err(Error::Xs(XsError::Again)) => continue,
                    Err(e) => return Err(e),
                },
                Err(e) => {
                    // Abort; if that fails too the daemon drops it with the connection.
                    let _ = self.transaction_end(id, false);
                    if e != Error::Xs(XsError::Again) {
                        return Err(e);
                    }
                }
            }
        }
        Err(Error::Xs(XsError::Again))
    }

    /// Introduces a domain to the daemon (Dom0 only).
    ///
    /// # Errors
    /// As [`Xs::call`].
    pub fn introduce(&mut self, domid: DomId, gfn: u64, port: u32) -> Result<(), Error> {
        expect_ack(self.call(&Request::Introduce { domid, gfn, port }, None)?)
    }

    /// Tells the daemon a domain is gone (Dom0 only).
    ///
    /// # Errors
    /// As [`Xs::call`].
    pub fn release(&mut self, domid: DomId) -> Result<(), Error> {
        expect_ack(self.call(&Request::Release { domid }, None)?)
    }

    /// Asks whether a domain is introduced.
    ///
    /// # Errors
    /// As [`Xs::call`].
    pub fn is_domain_introduced(&mut self, domid: DomId) -> Result<bool, Error> {
        match self.call(&Request::IsDomainIntroduced { domid }, None)? {
            Reply::Bool(b) => Ok(b),
            _ => Err(Error::BadValue),
        }
    }
}

/// A transaction in progress; obtained inside [`Xs::transaction`].
#[derive(Debug)]
pub struct Tx<'a, T> {
    xs: &'a mut Xs<T>,
    id: TxId,
}

impl<T> Tx<'_, T> {
    /// The transaction's id.
    pub fn id(&self) -> TxId {
        self.id
    }
}

fn expect_ack(r: Reply) -> Result<(), Error> {
    match r {
        Reply::Ack => Ok(()),
        _ => Err(Error::BadValue),
    }
}

/// Node operations, inside or outside a transaction.
pub trait Store {
    /// Sends one request and waits for its reply.
    ///
    /// # Errors
    /// The daemon's error, a protocol violation, a local cap, or a transport failure.
    fn call(&mut self, req: &Request<'_>) -> Result<Reply, Error>;

    /// Reads a node's value.
    ///
    /// # Errors
    /// As [`Store::call`]; `Xs(NoEnt)` for a missing node.
    fn read(&mut self, path: &str) -> Result<Vec<u8>, Error> {
        match self.call(&Request::Read { path })? {
            Reply::Value(v) => Ok(v),
            _ => Err(Error::BadValue),
        }
    }

    /// Reads a node's value as UTF-8 text.
    ///
    /// # Errors
    /// As [`Store::read`]; [`Error::BadValue`] when it is not UTF-8.
    fn read_string(&mut self, path: &str) -> Result<String, Error> {
        String::from_utf8(self.read(path)?).map_err(|_| Error::BadValue)
    }

    /// Reads a node holding an unsigned decimal number (leading/trailing blanks and a final
    /// NUL tolerated, as the C `xenbus_scanf` users effectively do).
    ///
    /// # Errors
    /// As [`Store::read`]; [`Error::BadValue`] when it is not a number that fits.
    fn read_u64(&mut self, path: &str) -> Result<u64, Error> {
        let v = self.read(path)?;
        let s = core::str::from_utf8(&v).map_err(|_| Error::BadValue)?;
        let s = s.trim_end_matches('\0').trim();
        crate::perms::parse_decimal_u64(s.as_bytes()).ok_or(Error::BadValue)
    }

    /// Reads a node if it exists.
    ///
    /// # Errors
    /// As [`Store::read`], except that a missing node is `Ok(None)`.
    fn try_read(&mut self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.read(path) {
            Ok(v) => Ok(Some(v)),
            Err(Error::Xs(XsError::NoEnt)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a node, creating it and missing parents.
    ///
    /// # Errors
    /// As [`Store::call`].
    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), Error> {
        expect_ack(self.call(&Request::Write { path, value })?)
    }

    /// Writes a text value.
    ///
    /// # Errors
    /// As [`Store::write`].
    fn write_str(&mut self, path: &str, value: &str) -> Result<(), Error> {
        self.write(path, value.as_bytes())
    }

    /// Creates a node with an empty value if missing.
    ///
    /// # Errors
    /// As [`Store::call`].
    fn mkdir(&mut self, path: &str) -> Result<(), Error> {
        expect_ack(self.call(&Request::Mkdir { path })?)
    }

    /// Removes a node and its subtree.
    ///
    /// # Errors
    /// As [`Store::call`].
    fn rm(&mut self, path: &str) -> Result<(), Error> {
        expect_ack(self.call(&Request::Rm { path })?)
    }

    /// Lists a node's children.
    ///
    /// # Errors
    /// As [`Store::call`].
    fn directory(&mut self, path: &str) -> Result<Vec<String>, Error> {
        match self.call(&Request::Directory { path })? {
            Reply::Names(n) => Ok(n),
            _ => Err(Error::BadValue),
        }
    }

    /// Reads a node's permissions (owner first).
    ///
    /// # Errors
    /// As [`Store::call`].
    fn get_perms(&mut self, path: &str) -> Result<Vec<Perm>, Error> {
        match self.call(&Request::GetPerms { path })? {
            Reply::Perms(p) => Ok(p),
            _ => Err(Error::BadValue),
        }
    }

    /// Replaces a node's permissions (owner first).
    ///
    /// # Errors
    /// As [`Store::call`].
    fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), Error> {
        expect_ack(self.call(&Request::SetPerms {
            path,
            perms: Cow::Borrowed(perms),
        })?)
    }

    /// A domain's home path.
    ///
    /// # Errors
    /// As [`Store::call`].
    fn get_domain_path(&mut self, domid: DomId) -> Result<String, Error> {
        match self.call(&Request::GetDomainPath { domid })? {
            Reply::Path(p) => Ok(p),
            _ => Err(Error::BadValue),
        }
    }
}

impl<T: Transport> Store for Xs<T> {
    fn call(&mut self, req: &Request<'_>) -> Result<Reply, Error> {
        Xs::call(self, req, None)
    }
}

impl<T: Transport> Store for Tx<'_, T> {
    fn call(&mut self, req: &Request<'_>) -> Result<Reply, Error> {
        self.xs.call(req, Some(self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_watch_event;

    /// A daemon that answers nothing and streams events for a token nobody registered.
    struct Chatty {
        stream: Vec<u8>,
        pos: usize,
        waits: u32,
    }

    impl Transport for Chatty {
        fn send(&mut self, bytes: &[u8]) -> Result<usize, TransportError> {
            Ok(bytes.len())
        }
        fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
            let n = buf.len().min(7);
            for b in buf.iter_mut().take(n) {
                *b = self.stream[self.pos % self.stream.len()];
                self.pos += 1;
            }
            Ok(n)
        }
        fn wait_for_event(&mut self) -> Result<(), TransportError> {
            self.waits += 1;
            Ok(())
        }
    }

    #[test]
    fn endless_stale_events_cannot_pin_a_waiter() {
        let mut stream = Vec::new();
        encode_watch_event("/x", "nobody", &mut stream).unwrap();
        let t = Chatty {
            stream,
            pos: 0,
            waits: 0,
        };
        let mut xs = Xs::new(t, Config::default());
        xs.set_max_waits(5);
        assert_eq!(
            xs.wait_event(None),
            Err(Error::Transport(TransportError::TimedOut))
        );
        assert!(xs.client().stats().stale_events > 0);
        // A request is abandoned after the bound, and the client stays usable.
        assert_eq!(
            xs.read("/a"),
            Err(Error::Transport(TransportError::TimedOut))
        );
        assert_eq!(xs.client().in_flight(), 1);
        assert!(xs.client().broken().is_none());
    }
}
