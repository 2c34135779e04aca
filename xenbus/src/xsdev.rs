//! `/dev/xen/xenstore`: user space's xenstore connection through the kernel's, platform-neutral.
//!
//! Xen's tools (`libxenstore` on FreeBSD: `xenstore-*`, `xl`, qemu) open the device, `write`
//! xs_wire messages and `read` the replies and their watch events, exactly as over xenstored's
//! socket. This module implements one open file ([`XsDevFile`]) on top of the kernel's own
//! sans-IO [`Client`]:
//!
//! * `write` reassembles messages in any split; a complete one is validated (header bounded to
//!   4096 payload bytes, type known and allowed, payload strictly decoded by
//!   [`Request::decode`]), then forwarded through the kernel's client under a kernel request
//!   id. The file keeps the mapping kernel id ↔ the user's `req_id`/`tx_id`, and re-encodes the
//!   typed reply under the user's ids ([`XsDevFile::poll`]). Replies come back in request order.
//! * Watches are registered through the client (which owns the wire tokens); events for them
//!   are re-encoded with the *user's* path and token.
//! * The file tracks its transactions and watches: a `tx_id` the file did not start is refused
//!   (`EINVAL`, so one process cannot hijack another's transaction), and on close every open
//!   transaction is aborted and every watch removed ([`XsDevFile::close`]).
//!
//! # Which messages a user may send
//!
//! As FreeBSD's `xenstore_dev.c`: `READ`, `WRITE`, `MKDIR`, `RM`, `DIRECTORY`, `GET_PERMS`,
//! `SET_PERMS`, `WATCH`, `UNWATCH`, `TRANSACTION_START`, `TRANSACTION_END`,
//! `GET_DOMAIN_PATH`. The domain-management messages `INTRODUCE`, `RELEASE` and
//! `IS_DOMAIN_INTRODUCED` only when the device is in the control domain
//! ([`Config::privileged`]; FreeBSD allows `RELEASE` and refuses `INTRODUCE` everywhere).
//! `RESET_WATCHES` would drop the *kernel's* watches and transactions (the connection is
//! shared): always `EACCES`. Reply-only types and unknown types: `EINVAL`; types the kernel
//! client cannot carry (`CONTROL`, `RESUME`, `SET_TARGET`, `DIRECTORY_PART`): `ENOSYS`. A
//! refused message gets an `XS_ERROR` reply with the user's ids, as from xenstored.
//!
//! # Bounded output (the XSA-349 class)
//!
//! FreeBSD queues replies and events in one page and `KASSERT`s (panics) when a reply does not
//! fit; a process that watches a busy subtree and never reads could also fill the kernel with
//! events. Here the file's queued output never exceeds [`Config::max_output`]:
//!
//! * a new message is accepted only while room for its reply is *reserved* (at most
//!   [`Config::max_in_flight`] outstanding, each reserving a full 4112-byte message); when
//!   there is none, `write` stops at the message boundary (a short write, or `EAGAIN` if
//!   nothing was consumed), so replies are never dropped;
//! * watch events use only what the replies of a full in-flight allowance leave; an event that does not fit is dropped
//!   and counted ([`XsDevStats::events_dropped`]), and once room is back one event naming the
//!   watched path itself is queued, telling the user to rescan what it watches (the kernel
//!   client's per-watch queue cap and its `missed` flag are mapped the same way).
//!
//! # Glue
//!
//! The kernel glue serialises calls per file, and after the kernel client received bytes
//! calls [`XsDevFile::poll`] on each open file (a sleeping reader is woken when `poll` returns
//! true). Watch events are taken from the client per watch ([`Client::next_event`]): kernel
//! code that drains events with [`Client::next_any_event`] must hand those of
//! [`XsDevFile::owns_watch`] watches to [`XsDevFile::deliver_event`] instead.
#![forbid(unsafe_code)]

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use crate::abi::{HEADER_SIZE, PAYLOAD_MAX};
use crate::client::{Client, ReqId, TxId, WatchEvent, WatchId};
use crate::error::{Error, XsError};
use crate::wire::{encode_error, encode_watch_event, MsgType, Reply, Request};

pub use xen_sys::freebsd::Errno;

/// A whole message: header plus the largest payload.
pub const MSG_MAX: usize = HEADER_SIZE + PAYLOAD_MAX;

/// Limits of one open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The device is in the control domain: `INTRODUCE`, `RELEASE`, `IS_DOMAIN_INTRODUCED`
    /// are allowed.
    pub privileged: bool,
    /// Messages whose reply is outstanding or unread-reserved.
    pub max_in_flight: usize,
    /// Watches at once.
    pub max_watches: usize,
    /// Transactions at once.
    pub max_transactions: usize,
    /// Bytes of queued output (replies and events); raised to at least
    /// `(max_in_flight + 1) * MSG_MAX`.
    pub max_output: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            privileged: false,
            max_in_flight: 8,
            max_watches: 128,
            max_transactions: 16,
            max_output: 64 * 1024,
        }
    }
}

/// Counters of one file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XsDevStats {
    /// Messages accepted from user space.
    pub messages: u64,
    /// Messages forwarded to the daemon.
    pub forwarded: u64,
    /// Messages answered locally with `XS_ERROR` (refused or malformed).
    pub refused: u64,
    /// Watch events queued for reading.
    pub events_delivered: u64,
    /// Watch events dropped because the output was full.
    pub events_dropped: u64,
    /// Rescan events queued after drops.
    pub rescans: u64,
}

#[derive(Debug)]
enum What {
    /// A forwarded request; on its reply, do `then`.
    Kernel(ReqId, Then),
    /// A reply made here (an error, or nothing pending).
    Local(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Nothing,
    TxStarted,
    TxEnded(TxId),
    Watched(WatchId),
}

#[derive(Debug)]
struct Pending {
    ty: MsgType,
    req_id: u32,
    tx_id: u32,
    what: What,
}

#[derive(Debug)]
struct UserWatch {
    path: String,
    token: String,
    /// The daemon accepted it (events flow to the user).
    live: bool,
    /// Events were dropped: queue a rescan event when room is back.
    rescan: bool,
}

/// Aborts and unwatches [`XsDevFile::close`] could not queue (the client was at its cap or
/// broken); retry with [`Cleanup::retry`].
#[derive(Debug, Default)]
pub struct Cleanup {
    txs: Vec<TxId>,
    watches: Vec<WatchId>,
}

impl Cleanup {
    /// Nothing left to do.
    pub fn is_done(&self) -> bool {
        self.txs.is_empty() && self.watches.is_empty()
    }

    /// Queues what is left; true when nothing is.
    pub fn retry(&mut self, client: &mut Client) -> bool {
        self.txs.retain(|&tx| abort(client, tx).is_err());
        self.watches.retain(|&w| match client.unwatch(w) {
            Ok(id) => {
                client.abandon(id);
                false
            }
            // Unknown to the client (gone already): nothing to do.
            Err(Error::Invalid(_)) => false,
            Err(_) => true,
        });
        self.is_done()
    }
}

fn abort(client: &mut Client, tx: TxId) -> Result<(), Error> {
    let id = client.submit(&Request::TransactionEnd { commit: false }, Some(tx))?;
    client.abandon(id);
    Ok(())
}

fn error_reply(e: XsError, req_id: u32, tx_id: u32) -> Vec<u8> {
    let mut v = Vec::new();
    encode_error(e, req_id, tx_id, &mut v);
    v
}

/// The `XS_ERROR` for a kernel-side failure.
fn xs_error(e: Error) -> XsError {
    match e {
        Error::Xs(x) => x,
        Error::Invalid(_) | Error::BadValue => XsError::Inval,
        Error::Busy => XsError::Again,
        Error::Protocol(_) | Error::Broken(_) | Error::Transport(_) => XsError::Io,
    }
}

/// One open file of `/dev/xen/xenstore`.
#[derive(Debug)]
pub struct XsDevFile {
    cfg: Config,
    /// The partial message being written.
    inbuf: Vec<u8>,
    pending: VecDeque<Pending>,
    out: VecDeque<u8>,
    txs: BTreeSet<TxId>,
    /// Transactions with an end in flight.
    ending: BTreeSet<TxId>,
    starting: usize,
    watches: BTreeMap<WatchId, UserWatch>,
    stats: XsDevStats,
}

impl XsDevFile {
    /// A new open file.
    pub fn new(cfg: Config) -> Self {
        let floor = (cfg.max_in_flight + 1) * MSG_MAX;
        XsDevFile {
            cfg: Config {
                max_output: cfg.max_output.max(floor),
                max_in_flight: cfg.max_in_flight.max(1),
                ..cfg
            },
            inbuf: Vec::new(),
            pending: VecDeque::new(),
            out: VecDeque::new(),
            txs: BTreeSet::new(),
            ending: BTreeSet::new(),
            starting: 0,
            watches: BTreeMap::new(),
            stats: XsDevStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> XsDevStats {
        self.stats
    }

    /// Bytes waiting to be read.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// The file's limits (after [`XsDevFile::new`] raised `max_output`).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Transactions this file has open.
    pub fn transactions(&self) -> usize {
        self.txs.len()
    }

    /// Watches this file has.
    pub fn watches(&self) -> usize {
        self.watches.len()
    }

    /// Whether `w` is one of this file's watches.
    pub fn owns_watch(&self, w: WatchId) -> bool {
        self.watches.contains_key(&w)
    }

    /// Whether `read` would return data (for poll/select).
    pub fn readable(&self) -> bool {
        !self.out.is_empty()
    }

    fn reserved(&self) -> usize {
        self.pending.len() * MSG_MAX
    }

    fn room_for_request(&self) -> bool {
        self.pending.len() < self.cfg.max_in_flight
            && self.out.len() + self.reserved() + MSG_MAX <= self.cfg.max_output
    }

    /// Events leave room for the replies of a full in-flight allowance, so a flood can never
    /// make `write` wait for the user to read.
    fn room_for_event(&self, len: usize) -> bool {
        self.out.len() + self.cfg.max_in_flight * MSG_MAX + len <= self.cfg.max_output
    }

    /// `write(2)`: consumes bytes of xs_wire messages; returns how many were consumed (less
    /// than `data.len()` when the file must wait for the user to read replies).
    ///
    /// # Errors
    /// `EINVAL` for a header announcing more than 4096 payload bytes (the partial message is
    /// discarded); `EAGAIN` when no byte could be consumed for lack of room.
    pub fn write(&mut self, client: &mut Client, data: &[u8]) -> Result<usize, Errno> {
        let mut used = 0;
        while used < data.len() {
            if self.inbuf.is_empty() && !self.room_for_request() {
                break;
            }
            let rest = data.get(used..).unwrap_or(&[]);
            let want = if self.inbuf.len() < HEADER_SIZE {
                HEADER_SIZE - self.inbuf.len()
            } else {
                let len = self.header_word(3) as usize;
                HEADER_SIZE + len - self.inbuf.len()
            };
            let take = want.min(rest.len());
            self.inbuf
                .extend_from_slice(rest.get(..take).unwrap_or(&[]));
            used += take;
            if self.inbuf.len() == HEADER_SIZE && self.header_word(3) as usize > PAYLOAD_MAX {
                self.inbuf.clear();
                return Err(Errno::EINVAL);
            }
            if self.inbuf.len() >= HEADER_SIZE
                && self.inbuf.len() == HEADER_SIZE + self.header_word(3) as usize
            {
                let msg = core::mem::take(&mut self.inbuf);
                self.handle(client, &msg);
            }
        }
        if used == 0 && !data.is_empty() {
            return Err(Errno::EAGAIN);
        }
        Ok(used)
    }

    fn header_word(&self, i: usize) -> u32 {
        let mut w = [0u8; 4];
        if let Some(s) = self.inbuf.get(i * 4..i * 4 + 4) {
            w.copy_from_slice(s);
        }
        u32::from_le_bytes(w)
    }

    fn local(&mut self, ty: MsgType, req_id: u32, tx_id: u32, e: XsError) {
        self.stats.refused += 1;
        self.pending.push_back(Pending {
            ty,
            req_id,
            tx_id,
            what: What::Local(error_reply(e, req_id, tx_id)),
        });
    }

    /// One complete message from the user (room for its reply was checked).
    fn handle(&mut self, client: &mut Client, msg: &[u8]) {
        self.stats.messages += 1;
        let word = |i: usize| {
            let mut w = [0u8; 4];
            if let Some(s) = msg.get(i * 4..i * 4 + 4) {
                w.copy_from_slice(s);
            }
            u32::from_le_bytes(w)
        };
        let (raw_ty, req_id, mut tx_id) = (word(0), word(1), word(2));
        let payload = msg.get(HEADER_SIZE..).unwrap_or(&[]);
        let Some(ty) = MsgType::from_value(raw_ty) else {
            // No type to echo: answer as XS_ERROR replies always are.
            self.local(MsgType::Error, req_id, tx_id, XsError::Inval);
            return;
        };
        let refusal = match ty {
            MsgType::Read
            | MsgType::Write
            | MsgType::Mkdir
            | MsgType::Rm
            | MsgType::Directory
            | MsgType::GetPerms
            | MsgType::SetPerms
            | MsgType::Watch
            | MsgType::Unwatch
            | MsgType::TransactionStart
            | MsgType::TransactionEnd
            | MsgType::GetDomainPath => None,
            MsgType::Introduce | MsgType::Release | MsgType::IsDomainIntroduced => {
                (!self.cfg.privileged).then_some(XsError::Acces)
            }
            MsgType::ResetWatches => Some(XsError::Acces),
            MsgType::WatchEvent | MsgType::Error => Some(XsError::Inval),
            MsgType::Control | MsgType::Resume | MsgType::SetTarget | MsgType::DirectoryPart => {
                Some(XsError::NoSys)
            }
        };
        if let Some(e) = refusal {
            self.local(ty, req_id, tx_id, e);
            return;
        }
        let Ok(req) = Request::decode(ty, payload) else {
            self.local(ty, req_id, tx_id, XsError::Inval);
            return;
        };
        if matches!(req, Request::Watch { .. } | Request::Unwatch { .. }) {
            // As FreeBSD: watches are not transactional.
            tx_id = 0;
        }
        let tx = TxId::from_raw(tx_id);
        if let Some(t) = tx {
            if !self.txs.contains(&t) || self.ending.contains(&t) {
                self.local(ty, req_id, tx_id, XsError::Inval);
                return;
            }
        }
        let sent = match &req {
            Request::Watch { path, token } => self.start_watch(client, path, token),
            Request::Unwatch { path, token } => self.stop_watch(client, path, token),
            Request::TransactionStart => {
                if tx.is_some() || self.txs.len() + self.starting >= self.cfg.max_transactions {
                    Err(XsError::NoSpc)
                } else {
                    client
                        .submit(&req, None)
                        .map(|id| {
                            self.starting += 1;
                            (id, Then::TxStarted)
                        })
                        .map_err(xs_error)
                }
            }
            Request::TransactionEnd { .. } => match tx {
                None => Err(XsError::Inval),
                Some(t) => client
                    .submit(&req, Some(t))
                    .map(|id| {
                        self.ending.insert(t);
                        (id, Then::TxEnded(t))
                    })
                    .map_err(xs_error),
            },
            _ => client
                .submit(&req, tx)
                .map(|id| (id, Then::Nothing))
                .map_err(xs_error),
        };
        match sent {
            Ok((id, then)) => {
                self.stats.forwarded += 1;
                self.pending.push_back(Pending {
                    ty,
                    req_id,
                    tx_id,
                    what: What::Kernel(id, then),
                });
            }
            Err(e) => self.local(ty, req_id, tx_id, e),
        }
    }

    fn start_watch(
        &mut self,
        client: &mut Client,
        path: &str,
        token: &str,
    ) -> Result<(ReqId, Then), XsError> {
        if self
            .watches
            .values()
            .any(|w| w.path == path && w.token == token)
        {
            return Err(XsError::Exist);
        }
        if self.watches.len() >= self.cfg.max_watches {
            return Err(XsError::NoSpc);
        }
        let (w, id) = client.watch(path).map_err(xs_error)?;
        self.watches.insert(
            w,
            UserWatch {
                path: String::from(path),
                token: String::from(token),
                live: false,
                rescan: false,
            },
        );
        Ok((id, Then::Watched(w)))
    }

    fn stop_watch(
        &mut self,
        client: &mut Client,
        path: &str,
        token: &str,
    ) -> Result<(ReqId, Then), XsError> {
        let w = self
            .watches
            .iter()
            .find(|(_, w)| w.path == path && w.token == token)
            .map(|(&id, _)| id)
            .ok_or(XsError::NoEnt)?;
        let id = client.unwatch(w).map_err(xs_error)?;
        self.watches.remove(&w);
        Ok((id, Then::Nothing))
    }

    /// Moves finished replies (in request order) and this file's watch events into the read
    /// queue. Returns true when something was queued.
    pub fn poll(&mut self, client: &mut Client) -> bool {
        let before = self.out.len();
        while let Some(p) = self.pending.front_mut() {
            let bytes = match &mut p.what {
                What::Local(v) => core::mem::take(v),
                What::Kernel(id, then) => {
                    let Some(result) = client.take_reply(*id) else {
                        break;
                    };
                    let then = *then;
                    let (ty, req_id, tx_id) = (p.ty, p.req_id, p.tx_id);
                    self.settle(then, &result);
                    let mut v = Vec::new();
                    match result {
                        Ok(reply) => {
                            if reply.encode(ty, req_id, tx_id, &mut v).is_err() {
                                v.clear();
                                encode_error(XsError::TooBig, req_id, tx_id, &mut v);
                            }
                        }
                        Err(e) => encode_error(xs_error(e), req_id, tx_id, &mut v),
                    }
                    v
                }
            };
            self.pending.pop_front();
            self.out.extend(bytes);
        }
        let ids: Vec<WatchId> = self
            .watches
            .iter()
            .filter(|(_, w)| w.live)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            // Bounded by the client's per-watch queue cap.
            while let Some(ev) = client.next_event(id) {
                self.deliver_event(id, ev);
            }
            self.flush_rescan(id);
        }
        self.out.len() != before
    }

    /// Bookkeeping when a forwarded request's reply arrives.
    fn settle(&mut self, then: Then, result: &Result<Reply, Error>) {
        match (then, result) {
            (Then::TxStarted, r) => {
                self.starting = self.starting.saturating_sub(1);
                if let Ok(Reply::TxId(t)) = r {
                    if let Some(t) = TxId::from_raw(*t) {
                        self.txs.insert(t);
                    }
                }
            }
            // Whatever the outcome, the daemon has ended (or never had) the transaction.
            (Then::TxEnded(t), _) => {
                self.ending.remove(&t);
                self.txs.remove(&t);
            }
            (Then::Watched(w), Ok(_)) => {
                if let Some(uw) = self.watches.get_mut(&w) {
                    uw.live = true;
                }
            }
            (Then::Watched(w), Err(_)) => {
                self.watches.remove(&w);
            }
            (Then::Nothing, _) => {}
        }
    }

    /// Queues a watch event of this file's watch `id` (from [`Client::next_event`], or from
    /// kernel code draining events for everyone). Dropped and counted when the output is
    /// full; a rescan event follows once room is back.
    pub fn deliver_event(&mut self, id: WatchId, ev: WatchEvent) {
        let Some(w) = self.watches.get_mut(&id) else {
            return;
        };
        if ev.missed {
            w.rescan = true;
        }
        let mut v = Vec::new();
        if encode_watch_event(&ev.path, &w.token, &mut v).is_err() {
            return;
        }
        if !self.room_for_event(v.len()) {
            self.stats.events_dropped += 1;
            if let Some(w) = self.watches.get_mut(&id) {
                w.rescan = true;
            }
            return;
        }
        self.flush_rescan(id);
        self.out.extend(v);
        self.stats.events_delivered += 1;
    }

    fn flush_rescan(&mut self, id: WatchId) {
        let Some(w) = self.watches.get(&id).filter(|w| w.rescan) else {
            return;
        };
        let mut v = Vec::new();
        if encode_watch_event(&w.path, &w.token, &mut v).is_err() || !self.room_for_event(v.len()) {
            return;
        }
        if let Some(w) = self.watches.get_mut(&id) {
            w.rescan = false;
        }
        self.out.extend(v);
        self.stats.rescans += 1;
    }

    /// `read(2)`: copies queued bytes (replies and events, possibly part of a message).
    ///
    /// # Errors
    /// `EAGAIN` when nothing is queued (the glue sleeps unless `O_NONBLOCK`).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.out.is_empty() {
            return Err(Errno::EAGAIN);
        }
        let n = buf.len().min(self.out.len());
        for (d, s) in buf.iter_mut().zip(self.out.drain(..n)) {
            *d = s;
        }
        Ok(n)
    }

    /// Last `close(2)`: outstanding requests are abandoned (a transaction or watch they
    /// create is undone by the client when its reply arrives), open transactions aborted,
    /// watches removed. What could not be queued is returned for [`Cleanup::retry`].
    pub fn close(self, client: &mut Client) -> Cleanup {
        for p in &self.pending {
            if let What::Kernel(id, _) = p.what {
                client.abandon(id);
            }
        }
        let mut c = Cleanup {
            txs: self.txs.difference(&self.ending).copied().collect(),
            watches: self.watches.keys().copied().collect(),
        };
        c.retry(client);
        c
    }
}
