//! The sans-IO xenstore client: a state machine between the caller and a byte stream.
//!
//! [`Client`] never touches a ring, an event channel, a clock or a lock. The caller
//!
//! 1. submits requests ([`Client::submit`], [`Client::watch`], [`Client::unwatch`]), which are
//!    encoded with fresh request ids into an output queue;
//! 2. moves the output queue into the transport ([`Client::flush`] / [`Client::output`] +
//!    [`Client::consume_output`]) whenever the transport has room;
//! 3. hands over whatever bytes arrive ([`Client::receive`]), in any split: partial headers and
//!    payloads are reassembled;
//! 4. collects replies by request id ([`Client::take_reply`]) and watch events by watch
//!    ([`Client::next_event`], [`Client::next_any_event`]).
//!
//! The kernel glue drives it from the xenstore event-channel handler, the blocking layer
//! ([`crate::blocking`]) from a loop with a `wait_for_event` hook, and the tests from plain
//! buffers.
//!
//! # What the daemon can and cannot do to us
//!
//! The daemon can always deny service (not answer, answer errors). What it must not be able to
//! do is corrupt our state, make us panic, or grow our memory without bound:
//!
//! * Every reply is matched to an outstanding request by `req_id`. A reply to an id we never
//!   sent (or a second reply to one) or a reply of the wrong type means replies can no longer
//!   be paired with requests, and a misrouted reply could hand one caller another's data; the
//!   client is then **poisoned**: every outstanding and future request fails with
//!   [`Error::Broken`].
//! * A header announcing more than 4096 bytes, or of an unknown type, poisons likewise (the
//!   stream has lost its framing).
//! * A well-framed reply with a malformed body fails only its own request
//!   ([`Error::Protocol`]).
//! * Watch events are untrusted too: malformed ones, ones for unknown tokens (e.g. in flight
//!   while we unwatched) and ones outside the watched path are dropped and counted.
//! * **Per-watch cap (XSA-349).** Each watch queues at most [`Config::watch_queue_cap`] events.
//!   A watch event only means "look again at this path", so an event for a path already
//!   queued is *collapsed* into it; beyond the cap new events are *dropped* and the next event
//!   handed out carries [`WatchEvent::missed`] so the consumer rescans. Both are counted.
//! * In-flight requests are capped ([`Config::max_in_flight`]) and so are watches
//!   ([`Config::max_watches`]), which bounds the output queue and the reply storage.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::num::NonZeroU32;

use crate::error::{Error, InvalidArg, ProtocolError};
use crate::path::{check_path, is_within};
use crate::wire::{decode_error, decode_watch_event, FrameReader, Header, MsgType, Reply, Request};

/// Limits of one client. All bounded; the defaults suit a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Requests outstanding at once (sent or queued, reply not yet taken).
    pub max_in_flight: usize,
    /// Events queued per watch before new ones are dropped (XSA-349).
    pub watch_queue_cap: usize,
    /// Watches registered at once.
    pub max_watches: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_in_flight: 64,
            watch_queue_cap: 64,
            max_watches: 256,
        }
    }
}

/// A request's id, for [`Client::take_reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReqId(pub u32);

/// A registered watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchId(pub u32);

/// A transaction id from the daemon (never 0: 0 means "no transaction" on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(NonZeroU32);

impl TxId {
    /// Wraps a wire id; `None` for 0.
    pub fn from_raw(id: u32) -> Option<TxId> {
        NonZeroU32::new(id).map(TxId)
    }

    /// The wire id.
    pub fn raw(self) -> u32 {
        self.0.get()
    }
}

fn raw_tx(tx: Option<TxId>) -> u32 {
    tx.map_or(0, TxId::raw)
}

/// A watch event handed to the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The path that changed (as the daemon reported it; within the watched path).
    pub path: String,
    /// Events for this watch were dropped because its queue was full; the consumer should
    /// re-read everything it watches instead of relying on per-path events.
    pub missed: bool,
}

/// Counters of one watch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Events queued for the consumer.
    pub queued: u64,
    /// Events merged into an identical queued event.
    pub collapsed: u64,
    /// Events dropped because the queue was at its cap.
    pub dropped: u64,
    /// Events refused because their path was outside the watched path.
    pub rejected: u64,
}

/// Counters of the whole client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests encoded.
    pub requests: u64,
    /// Replies matched to a request.
    pub replies: u64,
    /// Replies that were `XS_ERROR`.
    pub error_replies: u64,
    /// Replies whose body was malformed (the request failed with [`Error::Protocol`]).
    pub bad_replies: u64,
    /// Replies to requests whose caller had given up.
    pub abandoned_replies: u64,
    /// Watch events that were malformed.
    pub bad_events: u64,
    /// Watch events for unknown tokens (e.g. racing an unwatch).
    pub stale_events: u64,
    /// Watch events collapsed, over all watches.
    pub collapsed_events: u64,
    /// Watch events dropped at the cap, over all watches.
    pub dropped_events: u64,
}

#[derive(Debug)]
enum Slot {
    Waiting,
    Done(Result<Reply, Error>),
    Abandoned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    None,
    /// The reply settles whether this watch exists.
    WatchAdd(WatchId),
}

#[derive(Debug)]
struct Pending {
    ty: MsgType,
    slot: Slot,
    follow: Follow,
}

#[derive(Debug)]
struct WatchSlot {
    path: String,
    token: String,
    queue: VecDeque<String>,
    missed: bool,
    /// The caller abandoned the WATCH request: drop events, unwatch once the daemon answers.
    orphan: bool,
    stats: WatchStats,
}

/// Everything but the byte buffers, so replies can be dispatched while the frame reader
/// lends out the payload.
#[derive(Debug)]
struct State {
    cfg: Config,
    next_req: u32,
    next_watch: u32,
    pending: BTreeMap<u32, Pending>,
    watches: BTreeMap<u32, WatchSlot>,
    event_cursor: u32,
    stats: Stats,
    broken: Option<ProtocolError>,
    out: VecDeque<u8>,
    scratch: Vec<u8>,
}

/// The sans-IO xenstore client. See the [module documentation](self).
#[derive(Debug)]
pub struct Client {
    st: State,
    rx: FrameReader,
}

const TOKEN_PREFIX: &str = "xb";

fn token_for(id: WatchId) -> String {
    format!("{TOKEN_PREFIX}{}", id.0)
}

fn id_from_token(token: &str) -> Option<u32> {
    let digits = token.strip_prefix(TOKEN_PREFIX)?;
    crate::perms::parse_decimal(digits.as_bytes(), u32::MAX)
}

impl State {
    fn fresh_req_id(&mut self) -> u32 {
        // At most `pending.len() + 1` probes find a free id.
        for _ in 0..=self.pending.len() {
            let id = self.next_req;
            self.next_req = self.next_req.wrapping_add(1);
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
        // Unreachable in practice (pending is capped far below 2^32); keep going safely.
        self.next_req
    }

    /// Encodes and queues a request without checking the in-flight cap (internal clean-up).
    fn enqueue(
        &mut self,
        req: &Request<'_>,
        tx: u32,
        follow: Follow,
        slot: Slot,
    ) -> Result<ReqId, Error> {
        let id = self.fresh_req_id();
        self.scratch.clear();
        req.encode(id, tx, &mut self.scratch)
            .map_err(Error::Invalid)?;
        self.out.extend(self.scratch.iter().copied());
        self.pending.insert(
            id,
            Pending {
                ty: req.msg_type(),
                slot,
                follow,
            },
        );
        self.stats.requests += 1;
        Ok(ReqId(id))
    }

    fn check_open(&self) -> Result<(), Error> {
        match self.broken {
            Some(e) => Err(Error::Broken(e)),
            None => Ok(()),
        }
    }

    fn check_room(&self) -> Result<(), Error> {
        if self.pending.len() >= self.cfg.max_in_flight {
            Err(Error::Busy)
        } else {
            Ok(())
        }
    }

    /// Handles one complete message. `Err` poisons the client.
    fn dispatch(&mut self, h: Header, payload: &[u8]) -> Result<(), ProtocolError> {
        if h.ty == MsgType::WatchEvent {
            self.on_event(payload);
            return Ok(());
        }
        let Some(p) = self.pending.get_mut(&h.req_id) else {
            return Err(ProtocolError::UnknownReqId(h.req_id));
        };
        if matches!(p.slot, Slot::Done(_)) {
            return Err(ProtocolError::UnknownReqId(h.req_id));
        }
        if h.ty != MsgType::Error && h.ty != p.ty {
            return Err(ProtocolError::UnexpectedType {
                expected: p.ty,
                got: h.ty,
            });
        }
        let result = if h.ty == MsgType::Error {
            self.stats.error_replies += 1;
            match decode_error(payload) {
                Ok(e) => Err(Error::Xs(e)),
                Err(e) => Err(Error::Protocol(e)),
            }
        } else {
            Reply::decode(p.ty, payload).map_err(Error::Protocol)
        };
        if matches!(result, Err(Error::Protocol(_))) {
            self.stats.bad_replies += 1;
        }
        self.stats.replies += 1;
        let (ty, follow, abandoned) = (p.ty, p.follow, matches!(p.slot, Slot::Abandoned));
        if abandoned {
            self.pending.remove(&h.req_id);
            self.stats.abandoned_replies += 1;
            self.clean_up_abandoned(ty, follow, &result);
        } else {
            if let Follow::WatchAdd(w) = follow {
                if result.is_err() {
                    self.watches.remove(&w.0);
                }
            }
            p.slot = Slot::Done(result);
        }
        Ok(())
    }

    /// The caller gave up on a request that nevertheless succeeded: undo what it created on
    /// the daemon so nothing leaks there (a transaction, a watch).
    fn clean_up_abandoned(&mut self, ty: MsgType, follow: Follow, result: &Result<Reply, Error>) {
        match (ty, result) {
            (MsgType::TransactionStart, Ok(Reply::TxId(tx))) => {
                let _ = self.enqueue(
                    &Request::TransactionEnd { commit: false },
                    *tx,
                    Follow::None,
                    Slot::Abandoned,
                );
            }
            (MsgType::Watch, _) => {
                if let Follow::WatchAdd(w) = follow {
                    if let Some(slot) = self.watches.remove(&w.0) {
                        if result.is_ok() {
                            let _ = self.enqueue(
                                &Request::Unwatch {
                                    path: &slot.path,
                                    token: &slot.token,
                                },
                                0,
                                Follow::None,
                                Slot::Abandoned,
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn on_event(&mut self, payload: &[u8]) {
        let Ok(ev) = decode_watch_event(payload) else {
            self.stats.bad_events += 1;
            return;
        };
        let slot = id_from_token(ev.token)
            .and_then(|id| self.watches.get_mut(&id))
            .filter(|w| w.token == ev.token && !w.orphan);
        let Some(w) = slot else {
            self.stats.stale_events += 1;
            return;
        };
        if !is_within(ev.path, &w.path) {
            w.stats.rejected += 1;
            self.stats.bad_events += 1;
            return;
        }
        if w.queue.iter().any(|p| p == ev.path) {
            w.stats.collapsed += 1;
            self.stats.collapsed_events += 1;
            return;
        }
        if w.queue.len() >= self.cfg.watch_queue_cap {
            w.stats.dropped += 1;
            w.missed = true;
            self.stats.dropped_events += 1;
            return;
        }
        w.queue.push_back(String::from(ev.path));
        w.stats.queued += 1;
    }

    fn poison(&mut self, e: ProtocolError) {
        if self.broken.is_none() {
            self.broken = Some(e);
        }
        // Nothing more will be sent; outstanding requests fail in `take_reply`.
        self.out.clear();
    }
}

impl Client {
    /// A client with the given limits.
    pub fn new(cfg: Config) -> Client {
        Client {
            st: State {
                cfg,
                next_req: 1,
                next_watch: 1,
                pending: BTreeMap::new(),
                watches: BTreeMap::new(),
                event_cursor: 0,
                stats: Stats::default(),
                broken: None,
                out: VecDeque::new(),
                scratch: Vec::new(),
            },
            rx: FrameReader::new(),
        }
    }

    /// The limits this client enforces.
    pub fn config(&self) -> &Config {
        &self.st.cfg
    }

    /// Queues a request (inside transaction `tx`, or outside one with `None`).
    ///
    /// Watches go through [`Client::watch`] / [`Client::unwatch`] (the client owns the
    /// tokens), transaction ends through a `tx`.
    ///
    /// # Errors
    /// [`Error::Broken`] after a poisoning protocol violation, [`Error::Busy`] at the in-flight
    /// cap, [`Error::Invalid`] for a request that cannot be encoded.
    pub fn submit(&mut self, req: &Request<'_>, tx: Option<TxId>) -> Result<ReqId, Error> {
        self.st.check_open()?;
        match req {
            Request::Watch { .. } | Request::Unwatch { .. } => {
                return Err(Error::Invalid(InvalidArg::Handle))
            }
            Request::TransactionEnd { .. } if tx.is_none() => {
                return Err(Error::Invalid(InvalidArg::Handle))
            }
            _ => {}
        }
        self.st.check_room()?;
        self.st
            .enqueue(req, raw_tx(tx), Follow::None, Slot::Waiting)
    }

    /// Registers a watch on `path` (absolute, relative, or `@introduceDomain` /
    /// `@releaseDomain`). Events may arrive as soon as the request is sent, including the
    /// initial event the daemon fires on registration; if the daemon refuses the watch, the
    /// reply to the returned request carries the error and the watch is forgotten.
    ///
    /// # Errors
    /// As [`Client::submit`]; [`Error::Busy`] also at the watch cap.
    pub fn watch(&mut self, path: &str) -> Result<(WatchId, ReqId), Error> {
        self.st.check_open()?;
        self.st.check_room()?;
        if self.st.watches.len() >= self.st.cfg.max_watches {
            return Err(Error::Busy);
        }
        check_path(path, true).ok_or(Error::Invalid(InvalidArg::Path))?;
        let mut id = WatchId(self.st.next_watch);
        for _ in 0..=self.st.watches.len() {
            id = WatchId(self.st.next_watch);
            self.st.next_watch = self.st.next_watch.wrapping_add(1).max(1);
            if !self.st.watches.contains_key(&id.0) {
                break;
            }
        }
        let token = token_for(id);
        let req = self.st.enqueue(
            &Request::Watch {
                path,
                token: &token,
            },
            0,
            Follow::WatchAdd(id),
            Slot::Waiting,
        )?;
        self.st.watches.insert(
            id.0,
            WatchSlot {
                path: String::from(path),
                token,
                queue: VecDeque::new(),
                missed: false,
                orphan: false,
                stats: WatchStats::default(),
            },
        );
        Ok((id, req))
    }

    /// Removes a watch. Its queued events are discarded at once; events still in flight are
    /// counted as stale.
    ///
    /// # Errors
    /// As [`Client::submit`]; [`InvalidArg::Handle`] for an unknown watch.
    pub fn unwatch(&mut self, id: WatchId) -> Result<ReqId, Error> {
        self.st.check_open()?;
        self.st.check_room()?;
        let slot = self
            .st
            .watches
            .get(&id.0)
            .filter(|w| !w.orphan)
            .ok_or(Error::Invalid(InvalidArg::Handle))?;
        let (path, token) = (slot.path.clone(), slot.token.clone());
        let req = self.st.enqueue(
            &Request::Unwatch {
                path: &path,
                token: &token,
            },
            0,
            Follow::None,
            Slot::Waiting,
        )?;
        self.st.watches.remove(&id.0);
        Ok(req)
    }

    /// Takes the outcome of a request once its reply has arrived; `None` while it has not.
    /// After a poisoning violation every outstanding request yields [`Error::Broken`].
    pub fn take_reply(&mut self, id: ReqId) -> Option<Result<Reply, Error>> {
        let p = self.st.pending.get(&id.0)?;
        match (&p.slot, self.st.broken) {
            (Slot::Done(_), _) => match self.st.pending.remove(&id.0) {
                Some(Pending {
                    slot: Slot::Done(r),
                    ..
                }) => Some(r),
                _ => None,
            },
            (Slot::Waiting, Some(e)) => {
                self.st.pending.remove(&id.0);
                Some(Err(Error::Broken(e)))
            }
            _ => None,
        }
    }

    /// True while the request's reply has not been taken.
    pub fn is_pending(&self, id: ReqId) -> bool {
        self.st
            .pending
            .get(&id.0)
            .is_some_and(|p| !matches!(p.slot, Slot::Abandoned))
    }

    /// Gives up on a request (the blocking layer timed out). Its id stays reserved until the
    /// daemon answers, so a late reply is recognised and discarded rather than treated as a
    /// violation; a late success that created something (a transaction, a watch) is undone.
    pub fn abandon(&mut self, id: ReqId) {
        let Some(p) = self.st.pending.get_mut(&id.0) else {
            return;
        };
        match p.slot {
            Slot::Waiting if self.st.broken.is_none() => {
                p.slot = Slot::Abandoned;
                if let Follow::WatchAdd(w) = p.follow {
                    if let Some(slot) = self.st.watches.get_mut(&w.0) {
                        slot.orphan = true;
                        slot.queue.clear();
                    }
                }
            }
            _ => {
                self.st.pending.remove(&id.0);
            }
        }
    }

    /// The next contiguous chunk of encoded output (empty when there is none).
    pub fn output(&self) -> &[u8] {
        self.st.out.as_slices().0
    }

    /// Bytes of output queued.
    pub fn output_len(&self) -> usize {
        self.st.out.len()
    }

    /// Marks `n` bytes of [`Client::output`] as written to the transport.
    pub fn consume_output(&mut self, n: usize) {
        let n = n.min(self.st.out.len());
        self.st.out.drain(..n);
    }

    /// Writes as much queued output as `sink` accepts; returns the bytes written.
    pub fn flush<S: ByteSink + ?Sized>(&mut self, sink: &mut S) -> usize {
        let mut total = 0;
        // Two iterations cover both halves of the ring buffer; bounded.
        for _ in 0..2 {
            let chunk = self.output();
            if chunk.is_empty() {
                break;
            }
            let n = sink.write(chunk).min(chunk.len());
            self.consume_output(n);
            total += n;
            if n == 0 {
                break;
            }
        }
        total
    }

    /// Feeds bytes from the daemon. Every byte is consumed; complete messages are dispatched
    /// as they complete.
    ///
    /// # Errors
    /// [`Error::Broken`] when this (or an earlier) input broke framing or reply pairing; the
    /// client is then poisoned.
    pub fn receive(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        self.st.check_open()?;
        // Each round consumes at least one byte or completes a message (`FrameReader::feed`),
        // and a completed message consumed its 16 header bytes, so this terminates.
        while !bytes.is_empty() {
            let (used, frame) = match self.rx.feed(bytes) {
                Ok(r) => r,
                Err(e) => {
                    self.st.poison(e);
                    return Err(Error::Broken(e));
                }
            };
            bytes = bytes.get(used..).unwrap_or(&[]);
            if let Some(h) = frame {
                if let Err(e) = self.st.dispatch(h, self.rx.payload()) {
                    self.st.poison(e);
                    return Err(Error::Broken(e));
                }
            }
            if used == 0 && frame.is_none() {
                break; // Defensive: no progress possible.
            }
        }
        Ok(())
    }

    /// Reads from `src` until it has nothing more or `budget` bytes were taken; returns the
    /// bytes taken. The budget keeps a daemon that never stops talking from pinning the caller.
    ///
    /// # Errors
    /// As [`Client::receive`].
    pub fn pull<S: ByteSource + ?Sized>(
        &mut self,
        src: &mut S,
        budget: usize,
    ) -> Result<usize, Error> {
        let mut buf = [0u8; 256];
        let mut total = 0;
        while total < budget {
            let want = buf.len().min(budget - total);
            let n = src.read(buf.get_mut(..want).unwrap_or(&mut [])).min(want);
            if n == 0 {
                break;
            }
            total += n;
            self.receive(buf.get(..n).unwrap_or(&[]))?;
        }
        Ok(total)
    }

    /// The next queued event of one watch.
    pub fn next_event(&mut self, id: WatchId) -> Option<WatchEvent> {
        let w = self.st.watches.get_mut(&id.0)?;
        let path = w.queue.pop_front()?;
        Some(WatchEvent {
            path,
            missed: core::mem::take(&mut w.missed),
        })
    }

    /// The next queued event of any watch, taking watches in turn so a flooded watch cannot
    /// starve the others.
    pub fn next_any_event(&mut self) -> Option<(WatchId, WatchEvent)> {
        let cursor = self.st.event_cursor;
        let id = self
            .st
            .watches
            .range(cursor..)
            .chain(self.st.watches.range(..cursor))
            .find(|(_, w)| !w.queue.is_empty())
            .map(|(&id, _)| id)?;
        self.st.event_cursor = id.wrapping_add(1);
        self.next_event(WatchId(id)).map(|e| (WatchId(id), e))
    }

    /// True when some watch has a queued event.
    pub fn has_events(&self) -> bool {
        self.st.watches.values().any(|w| !w.queue.is_empty())
    }

    /// The watched path of a watch.
    pub fn watch_path(&self, id: WatchId) -> Option<&str> {
        self.st.watches.get(&id.0).map(|w| w.path.as_str())
    }

    /// Counters of one watch.
    pub fn watch_stats(&self, id: WatchId) -> Option<WatchStats> {
        self.st.watches.get(&id.0).map(|w| w.stats)
    }

    /// Counters of the client.
    pub fn stats(&self) -> Stats {
        self.st.stats
    }

    /// The violation that poisoned the client, if any.
    pub fn broken(&self) -> Option<ProtocolError> {
        self.st.broken
    }

    /// Requests outstanding (including abandoned ones whose reply has not come).
    pub fn in_flight(&self) -> usize {
        self.st.pending.len()
    }

    /// Starts over on a fresh connection (after the transport was reset, e.g. xenstored
    /// reconnection or resume): outstanding requests fail with
    /// [`Error::Transport`]`(Closed)` when taken, partial input and output are discarded,
    /// the poison is cleared, and every live watch is registered again (the daemon forgot
    /// them), keeping its id and queued events.
    pub fn reset(&mut self) {
        self.rx.reset();
        self.st.out.clear();
        self.st.broken = None;
        self.st
            .pending
            .retain(|_, p| !matches!(p.slot, Slot::Abandoned));
        for p in self.st.pending.values_mut() {
            if matches!(p.slot, Slot::Waiting) {
                p.slot = Slot::Done(Err(Error::Transport(crate::error::TransportError::Closed)));
                // A watch whose registration was still unanswered failed with it.
                if let Follow::WatchAdd(w) = p.follow {
                    self.st.watches.remove(&w.0);
                }
            }
        }
        self.st.watches.retain(|_, w| !w.orphan);
        let live: Vec<(u32, String, String)> = self
            .st
            .watches
            .iter()
            .map(|(&id, w)| (id, w.path.clone(), w.token.clone()))
            .collect();
        for (_id, path, token) in live {
            let _ = self.st.enqueue(
                &Request::Watch {
                    path: &path,
                    token: &token,
                },
                0,
                Follow::None,
                Slot::Abandoned,
            );
        }
    }
}

/// Where encoded requests go: the writer side of the xenstore interface ring, or a buffer.
pub trait ByteSink {
    /// Writes a prefix of `bytes`; returns its length (0 when there is no room now).
    fn write(&mut self, bytes: &[u8]) -> usize;
}

/// Where replies come from: the reader side of the interface ring, or a buffer.
pub trait ByteSource {
    /// Reads up to `buf.len()` bytes; returns how many (0 when nothing is available now).
    fn read(&mut self, buf: &mut [u8]) -> usize;
}

impl ByteSink for Vec<u8> {
    fn write(&mut self, bytes: &[u8]) -> usize {
        self.extend_from_slice(bytes);
        bytes.len()
    }
}

impl ByteSink for VecDeque<u8> {
    fn write(&mut self, bytes: &[u8]) -> usize {
        self.extend(bytes.iter().copied());
        bytes.len()
    }
}

impl ByteSource for VecDeque<u8> {
    fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.len());
        for (dst, src) in buf.iter_mut().zip(self.drain(..n)) {
            *dst = src;
        }
        n
    }
}

impl ByteSource for &[u8] {
    fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.len());
        let (head, tail) = self.split_at(n);
        if let Some(dst) = buf.get_mut(..n) {
            dst.copy_from_slice(head);
        }
        *self = tail;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::XsError;
    use crate::wire::{encode_error, encode_watch_event};
    use alloc::vec;
    use proptest::prelude::*;

    /// Decodes everything the client has queued: (header, owned payload) per request.
    fn sent(c: &mut Client) -> Vec<(Header, Vec<u8>)> {
        let mut bytes = Vec::new();
        c.flush(&mut bytes);
        let mut r = FrameReader::new();
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let (used, h) = r.feed(rest).unwrap();
            rest = &rest[used..];
            if let Some(h) = h {
                out.push((h, r.payload().to_vec()));
            }
        }
        out
    }

    fn reply(h: &Header, r: &Reply) -> Vec<u8> {
        let mut out = Vec::new();
        r.encode(h.ty, h.req_id, h.tx_id, &mut out).unwrap();
        out
    }

    fn event(path: &str, token: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_watch_event(path, token, &mut out).unwrap();
        out
    }

    fn small() -> Config {
        Config {
            max_in_flight: 4,
            watch_queue_cap: 3,
            max_watches: 2,
        }
    }

    #[test]
    fn replies_are_routed_by_req_id_in_any_order() {
        let mut c = Client::new(Config::default());
        let a = c.submit(&Request::Read { path: "/a" }, None).unwrap();
        let b = c.submit(&Request::Directory { path: "/b" }, None).unwrap();
        let tx = TxId::from_raw(9).unwrap();
        let w = c
            .submit(
                &Request::Write {
                    path: "/c",
                    value: b"v",
                },
                Some(tx),
            )
            .unwrap();
        let reqs = sent(&mut c);
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[2].0.tx_id, 9);
        let mut stream = reply(&reqs[1].0, &Reply::Names(vec!["x".into()]));
        encode_error(XsError::Acces, reqs[2].0.req_id, 9, &mut stream);
        stream.extend(reply(&reqs[0].0, &Reply::Value(b"va".to_vec())));
        c.receive(&stream).unwrap();
        assert_eq!(c.take_reply(a), Some(Ok(Reply::Value(b"va".to_vec()))));
        assert_eq!(c.take_reply(b), Some(Ok(Reply::Names(vec!["x".into()]))));
        assert_eq!(c.take_reply(w), Some(Err(Error::Xs(XsError::Acces))));
        assert_eq!(c.take_reply(a), None);
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.stats().replies, 3);
    }

    #[test]
    fn unknown_or_duplicate_req_id_poisons() {
        let mut c = Client::new(Config::default());
        let a = c.submit(&Request::Read { path: "/a" }, None).unwrap();
        let reqs = sent(&mut c);
        let mut bogus = reqs[0].0;
        bogus.req_id ^= 0xffff;
        let e = ProtocolError::UnknownReqId(bogus.req_id);
        assert_eq!(
            c.receive(&reply(&bogus, &Reply::Value(vec![]))),
            Err(Error::Broken(e))
        );
        assert_eq!(c.take_reply(a), Some(Err(Error::Broken(e))));
        assert_eq!(
            c.submit(&Request::Read { path: "/a" }, None),
            Err(Error::Broken(e))
        );
        assert_eq!(c.output_len(), 0);
        // A second reply to an answered (not yet taken) request poisons too.
        let mut c = Client::new(Config::default());
        c.submit(&Request::Read { path: "/a" }, None).unwrap();
        let reqs = sent(&mut c);
        let r = reply(&reqs[0].0, &Reply::Value(vec![]));
        c.receive(&r).unwrap();
        assert!(matches!(c.receive(&r), Err(Error::Broken(_))));
    }

    #[test]
    fn submit_refuses_what_the_client_owns_and_caps_in_flight() {
        let mut c = Client::new(small());
        assert_eq!(
            c.submit(
                &Request::Watch {
                    path: "/a",
                    token: "t"
                },
                None
            ),
            Err(Error::Invalid(InvalidArg::Handle))
        );
        assert_eq!(
            c.submit(&Request::TransactionEnd { commit: true }, None),
            Err(Error::Invalid(InvalidArg::Handle))
        );
        assert_eq!(
            c.submit(&Request::Read { path: "a//b" }, None),
            Err(Error::Invalid(InvalidArg::Path))
        );
        for _ in 0..4 {
            c.submit(&Request::Read { path: "/a" }, None).unwrap();
        }
        assert_eq!(
            c.submit(&Request::Read { path: "/a" }, None),
            Err(Error::Busy)
        );
        assert_eq!(c.watch("/w"), Err(Error::Busy));
    }

    /// Delivers `stream` to a fresh copy of the scenario split at `cut`, then byte by byte.
    #[test]
    fn split_delivery_at_every_byte_boundary() {
        fn scenario() -> (Client, Vec<u8>, Vec<ReqId>, WatchId) {
            let mut c = Client::new(Config::default());
            let (w, wr) = c.watch("/local/domain/1/device").unwrap();
            let r1 = c.submit(&Request::Read { path: "/big" }, None).unwrap();
            let r2 = c.submit(&Request::GetPerms { path: "/p" }, None).unwrap();
            let r3 = c.submit(&Request::TransactionStart, None).unwrap();
            let reqs = sent(&mut c);
            let token = token_for(w);
            let mut s = reply(&reqs[0].0, &Reply::Ack);
            s.extend(event("/local/domain/1/device", &token));
            s.extend(reply(&reqs[1].0, &Reply::Value(vec![7; 3000])));
            s.extend(event("/local/domain/1/device/vbd/768/state", &token));
            s.extend(reply(
                &reqs[2].0,
                &Reply::Perms(vec![crate::perms::Perm::new(crate::perms::Access::Read, 3)]),
            ));
            s.extend(reply(&reqs[3].0, &Reply::TxId(17)));
            (c, s, vec![wr, r1, r2, r3], w)
        }
        fn outcome(mut c: Client, ids: &[ReqId], w: WatchId) -> Vec<String> {
            let mut v: Vec<String> = ids
                .iter()
                .map(|&id| alloc::format!("{:?}", c.take_reply(id)))
                .collect();
            while let Some(e) = c.next_event(w) {
                v.push(e.path);
            }
            v
        }
        let (c, stream, ids, w) = scenario();
        let mut whole = c;
        whole.receive(&stream).unwrap();
        let expected = outcome(whole, &ids, w);
        assert_eq!(expected.len(), 6);
        for cut in 0..=stream.len() {
            let (mut c, _, ids, w) = scenario();
            c.receive(&stream[..cut]).unwrap();
            c.receive(&stream[cut..]).unwrap();
            assert_eq!(outcome(c, &ids, w), expected, "cut at {cut}");
        }
        let (mut c, _, ids, w) = scenario();
        for b in &stream {
            c.receive(core::slice::from_ref(b)).unwrap();
        }
        assert_eq!(outcome(c, &ids, w), expected);
    }

    #[test]
    fn watch_queue_cap_collapse_and_missed() {
        let mut c = Client::new(small());
        let (w, _) = c.watch("/fe").unwrap();
        let t = token_for(w);
        for _ in 0..10 {
            c.receive(&event("/fe/state", &t)).unwrap();
        }
        let st = c.watch_stats(w).unwrap();
        assert_eq!((st.queued, st.collapsed, st.dropped), (1, 9, 0));
        for i in 0..10 {
            c.receive(&event(&alloc::format!("/fe/n{i}"), &t)).unwrap();
        }
        let st = c.watch_stats(w).unwrap();
        assert_eq!((st.queued, st.dropped), (3, 8));
        assert_eq!(c.stats().dropped_events, 8);
        let first = c.next_event(w).unwrap();
        assert_eq!(first.path, "/fe/state");
        assert!(first.missed);
        assert!(!c.next_event(w).unwrap().missed);
        // Outside the watched path, unknown token, malformed: dropped and counted.
        c.receive(&event("/fex", &t)).unwrap();
        c.receive(&event("/fe", "xb999")).unwrap();
        c.receive(&event("/fe", "someone-else")).unwrap();
        let mut bad = event("/fe", &t);
        let n = bad.len();
        bad[n - 1] = b'x'; // Token not NUL-terminated.
        c.receive(&bad).unwrap();
        assert_eq!(c.watch_stats(w).unwrap().rejected, 1);
        assert_eq!(c.stats().stale_events, 2);
        assert_eq!(c.stats().bad_events, 2);
        assert!(c.broken().is_none());
    }

    #[test]
    fn refused_watch_is_forgotten_and_unwatch_discards_events() {
        let mut c = Client::new(small());
        let (w, id) = c.watch("/x").unwrap();
        let reqs = sent(&mut c);
        let mut s = Vec::new();
        encode_error(XsError::TooBig, reqs[0].0.req_id, 0, &mut s);
        c.receive(&s).unwrap();
        assert_eq!(c.take_reply(id), Some(Err(Error::Xs(XsError::TooBig))));
        assert_eq!(c.watch_stats(w), None);
        let (w, _) = c.watch("/y").unwrap();
        c.receive(&event("/y", &token_for(w))).unwrap();
        c.unwatch(w).unwrap();
        assert_eq!(c.next_event(w), None);
        c.receive(&event("/y", &token_for(w))).unwrap();
        assert_eq!(c.stats().stale_events, 1);
        assert_eq!(c.unwatch(w), Err(Error::Invalid(InvalidArg::Handle)));
    }

    #[test]
    fn abandoned_requests_are_cleaned_up_when_the_reply_comes() {
        let mut c = Client::new(Config::default());
        let r = c.submit(&Request::TransactionStart, None).unwrap();
        let (w, wr) = c.watch("/z").unwrap();
        let reqs = sent(&mut c);
        c.abandon(r);
        c.abandon(wr);
        assert!(!c.is_pending(r));
        let mut s = reply(&reqs[0].0, &Reply::TxId(5));
        s.extend(event("/z", &token_for(w)));
        s.extend(reply(&reqs[1].0, &Reply::Ack));
        c.receive(&s).unwrap();
        assert_eq!(c.stats().abandoned_replies, 2);
        assert_eq!(c.stats().stale_events, 1);
        // The client aborts the orphaned transaction and removes the orphaned watch.
        let cleanup = sent(&mut c);
        assert_eq!(cleanup.len(), 2);
        assert_eq!(
            (cleanup[0].0.ty, cleanup[0].0.tx_id, cleanup[0].1.as_slice()),
            (MsgType::TransactionEnd, 5, &b"F\0"[..])
        );
        assert_eq!(cleanup[1].0.ty, MsgType::Unwatch);
        // Their replies are discarded silently.
        let mut s = reply(&cleanup[0].0, &Reply::Ack);
        s.extend(reply(&cleanup[1].0, &Reply::Ack));
        c.receive(&s).unwrap();
        assert_eq!(c.in_flight(), 0);
        assert!(c.broken().is_none());
    }

    #[test]
    fn reset_fails_outstanding_and_rewatches() {
        let mut c = Client::new(Config::default());
        let (w, wr) = c.watch("/a").unwrap();
        let (w2, wr2) = c.watch("/b").unwrap();
        let reqs = sent(&mut c);
        c.receive(&reply(&reqs[0].0, &Reply::Ack)).unwrap();
        assert_eq!(c.take_reply(wr), Some(Ok(Reply::Ack)));
        let r = c.submit(&Request::Read { path: "/a" }, None).unwrap();
        c.receive(&[1, 2, 3]).unwrap(); // Partial header.
        c.reset();
        assert_eq!(
            c.take_reply(r),
            Some(Err(Error::Transport(crate::error::TransportError::Closed)))
        );
        // The unanswered registration failed with the connection; the live watch is
        // registered again.
        assert_eq!(
            c.take_reply(wr2),
            Some(Err(Error::Transport(crate::error::TransportError::Closed)))
        );
        assert_eq!(c.watch_stats(w2), None);
        let again = sent(&mut c);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0.ty, MsgType::Watch);
        assert_eq!(
            again[0].1,
            alloc::format!("/a\0{}\0", token_for(w)).into_bytes()
        );
        c.receive(&event("/a", &token_for(w))).unwrap();
        assert!(c.next_event(w).is_some());
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
        ) {
            let mut c = Client::new(small());
            let _ = c.submit(&Request::Read { path: "/a" }, None);
            let _ = c.watch("/w");
            let _ = c.submit(&Request::TransactionStart, None);
            for ch in &chunks {
                let _ = c.receive(ch);
            }
            for id in 0..8 {
                let _ = c.take_reply(ReqId(id));
            }
            let _ = c.next_any_event();
            prop_assert!(c.in_flight() <= 4);
        }

        #[test]
        fn valid_headers_with_random_bodies_never_panic(
            ty in 0u32..24, req_id in 0u32..6, body in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut c = Client::new(small());
            let _ = c.submit(&Request::Read { path: "/a" }, None);
            let _ = c.watch("/w");
            let _ = c.submit(&Request::GetPerms { path: "/a" }, None);
            let mut msg = Vec::new();
            // CAST: body.len() < 64.
            #[expect(clippy::cast_possible_truncation)]
            let len = body.len() as u32;
            for w in [ty, req_id, 0, len] {
                msg.extend_from_slice(&w.to_le_bytes());
            }
            msg.extend_from_slice(&body);
            let _ = c.receive(&msg);
            for id in 0..6 {
                let _ = c.take_reply(ReqId(id));
            }
        }
    }
}
