//! The xs_wire codec (`io/xs_wire.h`, `docs/misc/xenstore.txt`).
//!
//! Every message is a 16-byte header `{type, req_id, tx_id, len}` (host byte order, which is
//! little-endian on every architecture Xen supports) followed by `len` ≤ 4096 payload bytes,
//! generally NUL-terminated strings.
//!
//! Both directions are here: the client encodes [`Request`]s and decodes [`Reply`]s, errors and
//! watch events; a daemon (the simulated xenstored, a Dom0 `/dev/xen/xenstore` proxy) decodes
//! requests and encodes replies. Decoders take the peer's bytes and either return a validated
//! value or a [`ProtocolError`]; they never panic, never index out of bounds and never allocate
//! more than the (already bounded) payload.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;

use crate::abi::{HEADER_SIZE, PAYLOAD_MAX};
use crate::error::{InvalidArg, ProtocolError, XsError};
use crate::path::{check_name_bytes, check_path, check_path_bytes, PathKind};
use crate::perms::{parse_decimal, parse_decimal_u64, push_decimal, DomId, Perm};

/// `enum xsd_sockmsg_type`, from `xen-sys` (so the whole project shares one type). Its
/// `from_value` refuses the hole left by the removed `XS_RESTRICT` and `XS_INVALID`.
pub use xen_sys::consts::XsType as MsgType;

/// `struct xsd_sockmsg`, validated: the type is known and `len` ≤ `XENSTORE_PAYLOAD_MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub ty: MsgType,
    /// Request id, echoed by the daemon in the reply.
    pub req_id: u32,
    /// Transaction id, 0 outside a transaction.
    pub tx_id: u32,
    /// Payload length in bytes (≤ 4096).
    pub len: u32,
}

fn word(b: &[u8; HEADER_SIZE], i: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(src) = b.get(i * 4..i * 4 + 4) {
        w.copy_from_slice(src);
    }
    u32::from_le_bytes(w)
}

impl Header {
    /// Serialises the header.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        for (chunk, v) in
            b.chunks_exact_mut(4)
                .zip([self.ty.value(), self.req_id, self.tx_id, self.len])
        {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Parses and validates a header from peer bytes.
    ///
    /// # Errors
    /// [`ProtocolError::UnknownType`] or [`ProtocolError::PayloadTooLong`]; either means the
    /// byte stream can no longer be framed.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Header, ProtocolError> {
        let raw_ty = word(b, 0);
        let len = word(b, 3);
        // Check the length first: a huge `len` must never reach an allocation.
        if usize::try_from(len).map_or(true, |l| l > PAYLOAD_MAX) {
            return Err(ProtocolError::PayloadTooLong(len));
        }
        let ty = MsgType::from_value(raw_ty).ok_or(ProtocolError::UnknownType(raw_ty))?;
        Ok(Header {
            ty,
            req_id: word(b, 1),
            tx_id: word(b, 2),
            len,
        })
    }

    /// `len` as a `usize` (always ≤ 4096 for a decoded header).
    pub fn payload_len(&self) -> usize {
        usize::try_from(self.len).unwrap_or(PAYLOAD_MAX)
    }
}

/// A cursor over NUL-terminated fields of a payload.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(payload: &'a [u8]) -> Self {
        Fields { rest: payload }
    }

    /// The next field up to (not including) its NUL; the NUL is required.
    fn cstr(&mut self) -> Result<&'a [u8], ProtocolError> {
        let nul = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::MissingNul)?;
        let (field, tail) = self.rest.split_at(nul);
        self.rest = tail.get(1..).unwrap_or(&[]);
        Ok(field)
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn rest(self) -> &'a [u8] {
        self.rest
    }

    fn finish(self) -> Result<(), ProtocolError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingData)
        }
    }

    fn path(&mut self, allow_special: bool) -> Result<&'a str, ProtocolError> {
        let p = self.cstr()?;
        check_path_bytes(p, allow_special).ok_or(ProtocolError::BadPath)?;
        core::str::from_utf8(p).map_err(|_| ProtocolError::BadPath)
    }

    fn token(&mut self) -> Result<&'a str, ProtocolError> {
        let t = self.cstr()?;
        check_token_bytes(t).ok_or(ProtocolError::BadString)
    }

    fn domid(&mut self) -> Result<DomId, ProtocolError> {
        let v =
            parse_decimal(self.cstr()?, u32::from(DomId::MAX)).ok_or(ProtocolError::BadNumber)?;
        DomId::try_from(v).map_err(|_| ProtocolError::BadNumber)
    }
}

/// A watch token: non-empty UTF-8 without NUL, at most `ABS_PATH_MAX` bytes.
fn check_token_bytes(t: &[u8]) -> Option<&str> {
    if t.is_empty() || t.len() > crate::abi::ABS_PATH_MAX || t.contains(&0) {
        return None;
    }
    core::str::from_utf8(t).ok()
}

/// A request from a client to the daemon. Borrowed, so building one costs nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Read a node's value.
    Read {
        /// Node.
        path: &'a str,
    },
    /// Write a node's value, creating it (and missing parents) if needed.
    Write {
        /// Node.
        path: &'a str,
        /// New value: arbitrary bytes.
        value: &'a [u8],
    },
    /// Create a node with an empty value if it does not exist.
    Mkdir {
        /// Node.
        path: &'a str,
    },
    /// Remove a node and everything below it.
    Rm {
        /// Node.
        path: &'a str,
    },
    /// List a node's children.
    Directory {
        /// Node.
        path: &'a str,
    },
    /// Read a node's permissions.
    GetPerms {
        /// Node.
        path: &'a str,
    },
    /// Replace a node's permissions; the first entry is the owner and default access.
    SetPerms {
        /// Node.
        path: &'a str,
        /// Non-empty permission list.
        perms: Cow<'a, [Perm]>,
    },
    /// Register a watch on a path (or `@introduceDomain` / `@releaseDomain`).
    Watch {
        /// Watched path.
        path: &'a str,
        /// Token echoed in every event.
        token: &'a str,
    },
    /// Remove a watch.
    Unwatch {
        /// Watched path, as registered.
        path: &'a str,
        /// Token, as registered.
        token: &'a str,
    },
    /// Start a transaction; the reply carries its id.
    TransactionStart,
    /// End the transaction named in the header's `tx_id`.
    TransactionEnd {
        /// Commit (`T`) or abort (`F`).
        commit: bool,
    },
    /// Ask for a domain's home path (`/local/domain/<domid>`).
    GetDomainPath {
        /// Domain.
        domid: DomId,
    },
    /// Introduce a domain's xenstore ring to the daemon (Dom0 only).
    Introduce {
        /// Domain.
        domid: DomId,
        /// Frame of its xenstore interface page.
        gfn: u64,
        /// Its xenstore event channel.
        port: u32,
    },
    /// Tell the daemon a domain is gone (Dom0 only).
    Release {
        /// Domain.
        domid: DomId,
    },
    /// Ask whether a domain has been introduced.
    IsDomainIntroduced {
        /// Domain.
        domid: DomId,
    },
    /// Drop all of this connection's watches and transactions (after a kexec / resume).
    ResetWatches,
}

/// Appends a header placeholder, returns where it starts.
fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_SIZE]);
    start
}

/// Fills in the header of the message that starts at `start`, or removes the message if its
/// payload is too long.
fn finish(
    out: &mut Vec<u8>,
    start: usize,
    ty: MsgType,
    req_id: u32,
    tx_id: u32,
) -> Result<(), InvalidArg> {
    let len = out.len().saturating_sub(start + HEADER_SIZE);
    let Some(len32) = u32::try_from(len).ok().filter(|_| len <= PAYLOAD_MAX) else {
        out.truncate(start);
        return Err(InvalidArg::TooLong);
    };
    let hdr = Header {
        ty,
        req_id,
        tx_id,
        len: len32,
    }
    .encode();
    if let Some(dst) = out.get_mut(start..start + HEADER_SIZE) {
        dst.copy_from_slice(&hdr);
    }
    Ok(())
}

fn push_cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

fn push_decimal_cstr(out: &mut Vec<u8>, v: u64) {
    push_decimal(out, v);
    out.push(0);
}

impl Request<'_> {
    /// The message type this request is sent as.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Request::Read { .. } => MsgType::Read,
            Request::Write { .. } => MsgType::Write,
            Request::Mkdir { .. } => MsgType::Mkdir,
            Request::Rm { .. } => MsgType::Rm,
            Request::Directory { .. } => MsgType::Directory,
            Request::GetPerms { .. } => MsgType::GetPerms,
            Request::SetPerms { .. } => MsgType::SetPerms,
            Request::Watch { .. } => MsgType::Watch,
            Request::Unwatch { .. } => MsgType::Unwatch,
            Request::TransactionStart => MsgType::TransactionStart,
            Request::TransactionEnd { .. } => MsgType::TransactionEnd,
            Request::GetDomainPath { .. } => MsgType::GetDomainPath,
            Request::Introduce { .. } => MsgType::Introduce,
            Request::Release { .. } => MsgType::Release,
            Request::IsDomainIntroduced { .. } => MsgType::IsDomainIntroduced,
            Request::ResetWatches => MsgType::ResetWatches,
        }
    }

    /// The node path the request names, if any.
    pub fn path(&self) -> Option<&str> {
        match self {
            Request::Read { path }
            | Request::Write { path, .. }
            | Request::Mkdir { path }
            | Request::Rm { path }
            | Request::Directory { path }
            | Request::GetPerms { path }
            | Request::SetPerms { path, .. }
            | Request::Watch { path, .. }
            | Request::Unwatch { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Validates the request and appends header + payload to `out`. On error `out` is left as
    /// it was.
    ///
    /// # Errors
    /// [`InvalidArg`] when a path or token breaks the rules, the permission list is empty, or
    /// the payload would exceed 4096 bytes.
    pub fn encode(&self, req_id: u32, tx_id: u32, out: &mut Vec<u8>) -> Result<(), InvalidArg> {
        let allow_special = matches!(self, Request::Watch { .. } | Request::Unwatch { .. });
        if let Some(p) = self.path() {
            check_path(p, allow_special).ok_or(InvalidArg::Path)?;
        }
        if let Request::Watch { token, .. } | Request::Unwatch { token, .. } = self {
            check_token_bytes(token.as_bytes()).ok_or(InvalidArg::Token)?;
        }
        if let Request::SetPerms { perms, .. } = self {
            if perms.is_empty() {
                return Err(InvalidArg::Perms);
            }
        }
        let start = begin(out);
        match self {
            Request::Read { path }
            | Request::Mkdir { path }
            | Request::Rm { path }
            | Request::Directory { path }
            | Request::GetPerms { path } => push_cstr(out, path.as_bytes()),
            Request::Write { path, value } => {
                push_cstr(out, path.as_bytes());
                // The value is raw bytes, not NUL-terminated: its length is implied by `len`.
                // Check before copying so an oversized value never lands in `out`.
                if value.len() > PAYLOAD_MAX {
                    out.truncate(start);
                    return Err(InvalidArg::TooLong);
                }
                out.extend_from_slice(value);
            }
            Request::SetPerms { path, perms } => {
                push_cstr(out, path.as_bytes());
                for p in perms.iter() {
                    p.encode(out);
                    out.push(0);
                    if out.len() - start > HEADER_SIZE + PAYLOAD_MAX {
                        break; // `finish` rejects it; stop growing.
                    }
                }
            }
            Request::Watch { path, token } | Request::Unwatch { path, token } => {
                push_cstr(out, path.as_bytes());
                push_cstr(out, token.as_bytes());
            }
            // Linux and libxenstore send one empty string.
            Request::TransactionStart => out.push(0),
            Request::TransactionEnd { commit } => push_cstr(out, if *commit { b"T" } else { b"F" }),
            Request::GetDomainPath { domid }
            | Request::Release { domid }
            | Request::IsDomainIntroduced { domid } => push_decimal_cstr(out, u64::from(*domid)),
            Request::Introduce { domid, gfn, port } => {
                push_decimal_cstr(out, u64::from(*domid));
                push_decimal_cstr(out, *gfn);
                push_decimal_cstr(out, u64::from(*port));
            }
            Request::ResetWatches => {}
        }
        finish(out, start, self.msg_type(), req_id, tx_id)
    }
}

impl<'a> Request<'a> {
    /// Decodes a request from a client (the daemon side). Strict: every field present and
    /// NUL-terminated where the protocol says so, no trailing bytes, paths valid.
    ///
    /// # Errors
    /// A [`ProtocolError`] blaming the client. Reply-only types (`XS_WATCH_EVENT`, `XS_ERROR`)
    /// and the types this crate does not implement give [`ProtocolError::WrongDirection`]; a
    /// daemon answers those with `ENOSYS`.
    pub fn decode(ty: MsgType, payload: &'a [u8]) -> Result<Request<'a>, ProtocolError> {
        let mut f = Fields::new(payload);
        let req = match ty {
            MsgType::Read => Request::Read {
                path: f.path(false)?,
            },
            MsgType::Mkdir => Request::Mkdir {
                path: f.path(false)?,
            },
            MsgType::Rm => Request::Rm {
                path: f.path(false)?,
            },
            MsgType::Directory => Request::Directory {
                path: f.path(false)?,
            },
            MsgType::GetPerms => Request::GetPerms {
                path: f.path(false)?,
            },
            MsgType::Write => {
                let path = f.path(false)?;
                return Ok(Request::Write {
                    path,
                    value: f.rest(),
                });
            }
            MsgType::SetPerms => {
                let path = f.path(false)?;
                let mut perms = Vec::new();
                while !f.is_empty() {
                    perms.push(Perm::parse(f.cstr()?)?);
                }
                if perms.is_empty() {
                    return Err(ProtocolError::EmptyPerms);
                }
                Request::SetPerms {
                    path,
                    perms: Cow::Owned(perms),
                }
            }
            MsgType::Watch | MsgType::Unwatch => {
                let path = f.path(true)?;
                let token = f.token()?;
                if ty == MsgType::Watch {
                    Request::Watch { path, token }
                } else {
                    Request::Unwatch { path, token }
                }
            }
            MsgType::TransactionStart => {
                // Empty, or one empty string.
                if !(payload.is_empty() || payload == b"\0") {
                    return Err(ProtocolError::TrailingData);
                }
                return Ok(Request::TransactionStart);
            }
            MsgType::TransactionEnd => {
                let commit = match f.cstr()? {
                    b"T" => true,
                    b"F" => false,
                    _ => return Err(ProtocolError::BadBool),
                };
                Request::TransactionEnd { commit }
            }
            MsgType::GetDomainPath => Request::GetDomainPath { domid: f.domid()? },
            MsgType::Release => Request::Release { domid: f.domid()? },
            MsgType::IsDomainIntroduced => Request::IsDomainIntroduced { domid: f.domid()? },
            MsgType::Introduce => {
                let domid = f.domid()?;
                let gfn = parse_decimal_u64(f.cstr()?).ok_or(ProtocolError::BadNumber)?;
                let port = parse_decimal(f.cstr()?, u32::MAX).ok_or(ProtocolError::BadNumber)?;
                Request::Introduce { domid, gfn, port }
            }
            MsgType::ResetWatches => Request::ResetWatches,
            t @ (MsgType::WatchEvent
            | MsgType::Error
            | MsgType::Control
            | MsgType::Resume
            | MsgType::SetTarget
            | MsgType::DirectoryPart) => return Err(ProtocolError::WrongDirection(t)),
        };
        f.finish()?;
        Ok(req)
    }
}

/// A successful reply, decoded according to the request it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `"OK"`: writes, mkdir, rm, set-perms, watch, unwatch, transaction end, introduce...
    Ack,
    /// A node's value (read).
    Value(Vec<u8>),
    /// Child names (directory), each a valid node name.
    Names(Vec<String>),
    /// A non-empty permission list (get-perms).
    Perms(Vec<Perm>),
    /// A non-zero transaction id (transaction start).
    TxId(u32),
    /// An absolute path (get-domain-path).
    Path(String),
    /// `T`/`F` (is-domain-introduced).
    Bool(bool),
}

/// Decodes the payload of one kind of reply.
type ReplyDecoder = fn(&[u8]) -> Result<Reply, ProtocolError>;

/// The decoder for the reply a request type expects.
fn reply_kind(ty: MsgType) -> Option<ReplyDecoder> {
    Some(match ty {
        MsgType::Read => |p| Ok(Reply::Value(p.to_vec())),
        MsgType::Write
        | MsgType::Mkdir
        | MsgType::Rm
        | MsgType::SetPerms
        | MsgType::Watch
        | MsgType::Unwatch
        | MsgType::TransactionEnd
        | MsgType::Introduce
        | MsgType::Release
        | MsgType::ResetWatches => decode_ack,
        MsgType::Directory => decode_names,
        MsgType::GetPerms => decode_perms,
        MsgType::TransactionStart => |p| {
            let mut f = Fields::new(p);
            let id = parse_decimal(f.cstr()?, u32::MAX).ok_or(ProtocolError::BadNumber)?;
            f.finish()?;
            if id == 0 {
                return Err(ProtocolError::BadNumber);
            }
            Ok(Reply::TxId(id))
        },
        MsgType::GetDomainPath => |p| {
            let mut f = Fields::new(p);
            let path = f.path(false)?;
            f.finish()?;
            if check_path(path, false) != Some(PathKind::Absolute) {
                return Err(ProtocolError::BadPath);
            }
            Ok(Reply::Path(String::from(path)))
        },
        MsgType::IsDomainIntroduced => |p| {
            let mut f = Fields::new(p);
            let b = match f.cstr()? {
                b"T" => true,
                b"F" => false,
                _ => return Err(ProtocolError::BadBool),
            };
            f.finish()?;
            Ok(Reply::Bool(b))
        },
        _ => return None,
    })
}

fn decode_ack(p: &[u8]) -> Result<Reply, ProtocolError> {
    // The C daemon sends "OK\0"; accept the bare "OK" too (the NUL carries no information).
    match p {
        b"OK\0" | b"OK" => Ok(Reply::Ack),
        _ => Err(ProtocolError::BadAck),
    }
}

fn decode_names(p: &[u8]) -> Result<Reply, ProtocolError> {
    let mut f = Fields::new(p);
    let mut names = Vec::new();
    while !f.is_empty() {
        let n = f.cstr()?;
        if !check_name_bytes(n) {
            return Err(ProtocolError::BadName);
        }
        // ASCII by `check_name_bytes`.
        let n = core::str::from_utf8(n).map_err(|_| ProtocolError::BadName)?;
        names.push(String::from(n));
    }
    Ok(Reply::Names(names))
}

fn decode_perms(p: &[u8]) -> Result<Reply, ProtocolError> {
    let mut f = Fields::new(p);
    let mut perms = Vec::new();
    while !f.is_empty() {
        perms.push(Perm::parse(f.cstr()?)?);
    }
    if perms.is_empty() {
        return Err(ProtocolError::EmptyPerms);
    }
    Ok(Reply::Perms(perms))
}

impl Reply {
    /// Decodes the payload of a successful (non-`XS_ERROR`) reply to a request of type `req`.
    ///
    /// # Errors
    /// A [`ProtocolError`] blaming the daemon.
    pub fn decode(req: MsgType, payload: &[u8]) -> Result<Reply, ProtocolError> {
        let decode = reply_kind(req).ok_or(ProtocolError::WrongDirection(req))?;
        decode(payload)
    }

    /// Appends a reply message of type `ty` (the request's type) to `out` (the daemon side).
    ///
    /// # Errors
    /// [`InvalidArg::TooLong`] when it does not fit in 4096 bytes (the daemon then sends
    /// `E2BIG`).
    pub fn encode(
        &self,
        ty: MsgType,
        req_id: u32,
        tx_id: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), InvalidArg> {
        let start = begin(out);
        match self {
            Reply::Ack => push_cstr(out, b"OK"),
            Reply::Value(v) => {
                if v.len() > PAYLOAD_MAX {
                    out.truncate(start);
                    return Err(InvalidArg::TooLong);
                }
                out.extend_from_slice(v);
            }
            Reply::Names(names) => {
                for n in names {
                    push_cstr(out, n.as_bytes());
                    if out.len() - start > HEADER_SIZE + PAYLOAD_MAX {
                        break;
                    }
                }
            }
            Reply::Perms(perms) => {
                for p in perms {
                    p.encode(out);
                    out.push(0);
                    if out.len() - start > HEADER_SIZE + PAYLOAD_MAX {
                        break;
                    }
                }
            }
            Reply::TxId(id) => push_decimal_cstr(out, u64::from(*id)),
            Reply::Path(p) => push_cstr(out, p.as_bytes()),
            Reply::Bool(b) => push_cstr(out, if *b { b"T" } else { b"F" }),
        }
        finish(out, start, ty, req_id, tx_id)
    }
}

/// Decodes the payload of an `XS_ERROR` reply: one NUL-terminated error string. A well-formed
/// string outside the known table becomes [`XsError::Unknown`].
///
/// # Errors
/// [`ProtocolError::MissingNul`], [`ProtocolError::TrailingData`] or
/// [`ProtocolError::BadString`] (not an `E[A-Z0-9]+` name).
pub fn decode_error(payload: &[u8]) -> Result<XsError, ProtocolError> {
    let mut f = Fields::new(payload);
    let s = f.cstr()?;
    f.finish()?;
    let well_formed = s.len() >= 2
        && s.len() <= 32
        && s.first() == Some(&b'E')
        && s.iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if !well_formed {
        return Err(ProtocolError::BadString);
    }
    Ok(XsError::from_wire(s).unwrap_or(XsError::Unknown))
}

/// Appends an `XS_ERROR` message (the daemon side).
pub fn encode_error(err: XsError, req_id: u32, tx_id: u32, out: &mut Vec<u8>) {
    let start = begin(out);
    push_cstr(out, err.as_str().as_bytes());
    // Cannot be too long: the longest error string is 9 bytes.
    let _ = finish(out, start, MsgType::Error, req_id, tx_id);
}

/// A decoded `XS_WATCH_EVENT`: the path that changed and the token of the watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawWatchEvent<'a> {
    /// The changed path (absolute, relative or special, as the watch was registered).
    pub path: &'a str,
    /// The watch's token.
    pub token: &'a str,
}

/// Decodes an `XS_WATCH_EVENT` payload: `path\0token\0`.
///
/// # Errors
/// A [`ProtocolError`] blaming the daemon.
pub fn decode_watch_event(payload: &[u8]) -> Result<RawWatchEvent<'_>, ProtocolError> {
    let mut f = Fields::new(payload);
    let path = f.path(true)?;
    let token = f.token()?;
    f.finish()?;
    Ok(RawWatchEvent { path, token })
}

/// Appends an `XS_WATCH_EVENT` message (the daemon side). `req_id` is 0, as in xenstored.
///
/// # Errors
/// [`InvalidArg`] for an invalid path or token or an oversize message.
pub fn encode_watch_event(path: &str, token: &str, out: &mut Vec<u8>) -> Result<(), InvalidArg> {
    check_path(path, true).ok_or(InvalidArg::Path)?;
    check_token_bytes(token.as_bytes()).ok_or(InvalidArg::Token)?;
    let start = begin(out);
    push_cstr(out, path.as_bytes());
    push_cstr(out, token.as_bytes());
    finish(out, start, MsgType::WatchEvent, 0, 0)
}

/// Reassembles messages from a byte stream that arrives in arbitrary pieces.
///
/// Memory is fixed at construction (one header and one 4096-byte payload buffer); a header
/// announcing more than 4096 bytes is refused before anything is buffered. After a framing
/// error the reader stays failed: the stream has lost its message boundaries and nothing after
/// that point can be trusted.
#[derive(Debug)]
pub struct FrameReader {
    hdr: [u8; HEADER_SIZE],
    hdr_len: usize,
    header: Option<Header>,
    payload: Vec<u8>,
    complete: bool,
    failed: Option<ProtocolError>,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        FrameReader {
            hdr: [0; HEADER_SIZE],
            hdr_len: 0,
            header: None,
            payload: Vec::with_capacity(PAYLOAD_MAX),
            complete: false,
            failed: None,
        }
    }

    /// Consumes bytes from `input` up to the end of at most one message.
    ///
    /// Returns how many bytes were consumed and, when a message completed, its header (its
    /// payload is [`FrameReader::payload`] until the next call). Call again with the rest of
    /// the input. Each call consumes at least one byte of non-empty input or completes a
    /// message, so a loop over it terminates.
    ///
    /// # Errors
    /// The framing error, now and on every later call.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Header>), ProtocolError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.complete {
            self.complete = false;
            self.header = None;
            self.hdr_len = 0;
            self.payload.clear();
        }
        let mut used = 0;
        let header = match self.header {
            Some(h) => h,
            None => {
                let want = HEADER_SIZE - self.hdr_len;
                let take = want.min(input.len());
                if let (Some(dst), Some(src)) = (
                    self.hdr.get_mut(self.hdr_len..self.hdr_len + take),
                    input.get(..take),
                ) {
                    dst.copy_from_slice(src);
                }
                self.hdr_len += take;
                used += take;
                if self.hdr_len < HEADER_SIZE {
                    return Ok((used, None));
                }
                let h = Header::decode(&self.hdr).inspect_err(|&e| self.failed = Some(e))?;
                self.header = Some(h);
                h
            }
        };
        let rest = input.get(used..).unwrap_or(&[]);
        let want = header.payload_len().saturating_sub(self.payload.len());
        let take = want.min(rest.len());
        self.payload
            .extend_from_slice(rest.get(..take).unwrap_or(&[]));
        used += take;
        if self.payload.len() == header.payload_len() {
            self.complete = true;
            Ok((used, Some(header)))
        } else {
            Ok((used, None))
        }
    }

    /// The payload of the message the last [`FrameReader::feed`] completed.
    pub fn payload(&self) -> &[u8] {
        if self.complete {
            &self.payload
        } else {
            &[]
        }
    }

    /// True when no partial message is buffered.
    pub fn is_idle(&self) -> bool {
        self.complete || (self.hdr_len == 0 && self.header.is_none())
    }

    /// The framing error, if the stream has failed.
    pub fn failure(&self) -> Option<ProtocolError> {
        self.failed
    }

    /// Forgets everything, including a failure (after the transport was reset).
    pub fn reset(&mut self) {
        *self = FrameReader {
            payload: core::mem::take(&mut self.payload),
            ..FrameReader::new_empty()
        };
        self.payload.clear();
    }

    fn new_empty() -> Self {
        FrameReader {
            hdr: [0; HEADER_SIZE],
            hdr_len: 0,
            header: None,
            payload: Vec::new(),
            complete: false,
            failed: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perms::Access;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    fn hdr(ty: u32, req_id: u32, tx_id: u32, len: u32) -> Vec<u8> {
        [ty, req_id, tx_id, len]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    fn encoded(req: &Request<'_>, req_id: u32, tx_id: u32) -> Vec<u8> {
        let mut out = Vec::new();
        req.encode(req_id, tx_id, &mut out).unwrap();
        out
    }

    /// Splits one encoded message into its header and payload.
    fn split_msg(bytes: &[u8]) -> (Header, &[u8]) {
        let mut h = [0u8; HEADER_SIZE];
        h.copy_from_slice(&bytes[..HEADER_SIZE]);
        let h = Header::decode(&h).unwrap();
        assert_eq!(h.payload_len(), bytes.len() - HEADER_SIZE);
        (h, &bytes[HEADER_SIZE..])
    }

    #[test]
    fn msg_type_values_match_xs_wire_h() {
        // enum xsd_sockmsg_type: XS_CONTROL = 0 ... XS_SET_TARGET = 19, XS_RESET_WATCHES =
        // XS_SET_TARGET + 2, XS_DIRECTORY_PART.
        for (i, t) in (0u32..).zip(MsgType::ALL.iter()) {
            let expect = if i < 20 { i } else { i + 1 };
            assert_eq!(t.value(), expect, "{t:?}");
            assert_eq!(MsgType::from_value(expect), Some(*t));
        }
        for bad in [20, 23, 0xffff, u32::MAX] {
            assert_eq!(MsgType::from_value(bad), None);
        }
    }

    #[test]
    fn header_round_trip_and_bounds() {
        let h = Header {
            ty: MsgType::Write,
            req_id: 0xdead_beef,
            tx_id: 7,
            len: 4096,
        };
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        let mut b = [0u8; 16];
        b.copy_from_slice(&hdr(2, 1, 0, 4097));
        assert_eq!(Header::decode(&b), Err(ProtocolError::PayloadTooLong(4097)));
        b.copy_from_slice(&hdr(2, 1, 0, u32::MAX));
        assert_eq!(
            Header::decode(&b),
            Err(ProtocolError::PayloadTooLong(u32::MAX))
        );
        b.copy_from_slice(&hdr(20, 1, 0, 0));
        assert_eq!(Header::decode(&b), Err(ProtocolError::UnknownType(20)));
        b.copy_from_slice(&hdr(0xffff, 1, 0, 0));
        assert_eq!(Header::decode(&b), Err(ProtocolError::UnknownType(0xffff)));
    }

    #[test]
    fn golden_request_bytes() {
        let mut want = hdr(2, 5, 0, 3);
        want.extend_from_slice(b"/a\0");
        assert_eq!(encoded(&Request::Read { path: "/a" }, 5, 0), want);

        let mut want = hdr(11, 6, 9, 5);
        want.extend_from_slice(b"/a\0hi");
        let w = Request::Write {
            path: "/a",
            value: b"hi",
        };
        assert_eq!(encoded(&w, 6, 9), want);

        let mut want = hdr(14, 1, 0, 9);
        want.extend_from_slice(b"/a\0b1\0r0\0");
        let perms = [Perm::new(Access::Both, 1), Perm::new(Access::Read, 0)];
        let sp = Request::SetPerms {
            path: "/a",
            perms: Cow::Borrowed(&perms),
        };
        assert_eq!(encoded(&sp, 1, 0), want);

        let mut want = hdr(4, 2, 0, 19);
        want.extend_from_slice(b"@releaseDomain\0tok\0");
        let wt = Request::Watch {
            path: "@releaseDomain",
            token: "tok",
        };
        assert_eq!(encoded(&wt, 2, 0), want);

        let mut want = hdr(6, 3, 0, 1);
        want.push(0);
        assert_eq!(encoded(&Request::TransactionStart, 3, 0), want);

        let mut want = hdr(7, 4, 12, 2);
        want.extend_from_slice(b"F\0");
        assert_eq!(
            encoded(&Request::TransactionEnd { commit: false }, 4, 12),
            want
        );

        let mut want = hdr(8, 1, 0, 12);
        want.extend_from_slice(b"7\0");
        want.extend_from_slice(b"123456\0");
        want.extend_from_slice(b"42\0");
        let intro = Request::Introduce {
            domid: 7,
            gfn: 123456,
            port: 42,
        };
        assert_eq!(encoded(&intro, 1, 0), want);

        assert_eq!(encoded(&Request::ResetWatches, 1, 0), hdr(21, 1, 0, 0));
    }

    #[test]
    fn encode_refuses_bad_arguments() {
        let mut out = vec![0xaa];
        let bad: [(Request<'_>, InvalidArg); 7] = [
            (Request::Read { path: "/a/" }, InvalidArg::Path),
            (
                Request::Read {
                    path: "@introduceDomain",
                },
                InvalidArg::Path,
            ),
            (
                Request::Watch {
                    path: "/a",
                    token: "",
                },
                InvalidArg::Token,
            ),
            (
                Request::Watch {
                    path: "/a",
                    token: "a\0b",
                },
                InvalidArg::Token,
            ),
            (
                Request::SetPerms {
                    path: "/a",
                    perms: Cow::Borrowed(&[]),
                },
                InvalidArg::Perms,
            ),
            (
                Request::Write {
                    path: "/a",
                    value: &[0; 4094],
                },
                InvalidArg::TooLong,
            ),
            (
                Request::Write {
                    path: "/a",
                    value: &[0; 100_000],
                },
                InvalidArg::TooLong,
            ),
        ];
        for (req, why) in bad {
            assert_eq!(req.encode(1, 0, &mut out), Err(why), "{req:?}");
            assert_eq!(out, [0xaa], "output untouched after {req:?}");
        }
        // Exactly 4096 bytes of payload is fine.
        let ok = Request::Write {
            path: "/a",
            value: &[0; 4093],
        };
        assert!(ok.encode(1, 0, &mut out).is_ok());
        assert_eq!(out.len(), 1 + 16 + 4096);
    }

    #[test]
    fn reply_decoding_is_strict() {
        use MsgType as T;
        assert_eq!(Reply::decode(T::Write, b"OK\0"), Ok(Reply::Ack));
        assert_eq!(Reply::decode(T::Write, b"OK"), Ok(Reply::Ack));
        for bad in [&b"ok\0"[..], b"", b"OK\0\0", b"NO\0"] {
            assert_eq!(Reply::decode(T::Rm, bad), Err(ProtocolError::BadAck));
        }
        assert_eq!(
            Reply::decode(T::Read, b"\0\xff bytes"),
            Ok(Reply::Value(b"\0\xff bytes".to_vec()))
        );
        assert_eq!(
            Reply::decode(T::Directory, b"a\0b-c\0"),
            Ok(Reply::Names(vec!["a".to_string(), "b-c".to_string()]))
        );
        assert_eq!(Reply::decode(T::Directory, b""), Ok(Reply::Names(vec![])));
        assert_eq!(
            Reply::decode(T::Directory, b"a\0b"),
            Err(ProtocolError::MissingNul)
        );
        for bad in [&b"a/b\0"[..], b"\0", b"a b\0"] {
            assert_eq!(
                Reply::decode(T::Directory, bad),
                Err(ProtocolError::BadName)
            );
        }
        assert_eq!(
            Reply::decode(T::GetPerms, b"n0\0r5\0"),
            Ok(Reply::Perms(vec![
                Perm::new(Access::None, 0),
                Perm::new(Access::Read, 5)
            ]))
        );
        assert_eq!(
            Reply::decode(T::GetPerms, b""),
            Err(ProtocolError::EmptyPerms)
        );
        assert_eq!(
            Reply::decode(T::GetPerms, b"q0\0"),
            Err(ProtocolError::BadPerm)
        );
        assert_eq!(
            Reply::decode(T::TransactionStart, b"12\0"),
            Ok(Reply::TxId(12))
        );
        for (bad, e) in [
            (&b"0\0"[..], ProtocolError::BadNumber),
            (b"4294967296\0", ProtocolError::BadNumber),
            (b"-1\0", ProtocolError::BadNumber),
            (b"12", ProtocolError::MissingNul),
            (b"12\0x", ProtocolError::TrailingData),
        ] {
            assert_eq!(Reply::decode(T::TransactionStart, bad), Err(e));
        }
        assert_eq!(
            Reply::decode(T::GetDomainPath, b"/local/domain/3\0"),
            Ok(Reply::Path("/local/domain/3".to_string()))
        );
        assert_eq!(
            Reply::decode(T::GetDomainPath, b"local/domain/3\0"),
            Err(ProtocolError::BadPath)
        );
        assert_eq!(
            Reply::decode(T::IsDomainIntroduced, b"T\0"),
            Ok(Reply::Bool(true))
        );
        assert_eq!(
            Reply::decode(T::IsDomainIntroduced, b"X\0"),
            Err(ProtocolError::BadBool)
        );
        assert_eq!(
            Reply::decode(T::WatchEvent, b""),
            Err(ProtocolError::WrongDirection(T::WatchEvent))
        );
    }

    #[test]
    fn error_strings() {
        for (i, e) in XsError::ALL.iter().enumerate() {
            assert_eq!(e.as_str(), xen_sys::consts::XsError::ALL[i].name());
            let mut p = e.as_str().as_bytes().to_vec();
            p.push(0);
            assert_eq!(decode_error(&p), Ok(*e));
            let mut out = Vec::new();
            encode_error(*e, 3, 0, &mut out);
            let (h, payload) = split_msg(&out);
            assert_eq!((h.ty, h.req_id), (MsgType::Error, 3));
            assert_eq!(decode_error(payload), Ok(*e));
        }
        assert_eq!(decode_error(b"ENEWTHING\0"), Ok(XsError::Unknown));
        assert_eq!(decode_error(b"EACCES"), Err(ProtocolError::MissingNul));
        assert_eq!(
            decode_error(b"EACCES\0\0"),
            Err(ProtocolError::TrailingData)
        );
        assert_eq!(decode_error(b"hello\0"), Err(ProtocolError::BadString));
        assert_eq!(decode_error(b"E\0"), Err(ProtocolError::BadString));
        assert_eq!(XsError::Acces.freebsd_errno(), 13);
        assert_eq!(XsError::Again.freebsd_errno(), 35);
    }

    #[test]
    fn watch_events() {
        let mut out = Vec::new();
        encode_watch_event("/local/domain/1/device", "xb3", &mut out).unwrap();
        let (h, p) = split_msg(&out);
        assert_eq!(h.ty, MsgType::WatchEvent);
        assert_eq!(
            decode_watch_event(p),
            Ok(RawWatchEvent {
                path: "/local/domain/1/device",
                token: "xb3"
            })
        );
        assert_eq!(
            decode_watch_event(b"@releaseDomain\0t\0").map(|e| e.path),
            Ok("@releaseDomain")
        );
        assert_eq!(decode_watch_event(b"/a\0t"), Err(ProtocolError::MissingNul));
        assert_eq!(
            decode_watch_event(b"/a\0t\0x"),
            Err(ProtocolError::TrailingData)
        );
        assert_eq!(
            decode_watch_event(b"/a//b\0t\0"),
            Err(ProtocolError::BadPath)
        );
        assert_eq!(decode_watch_event(b"/a\0\0"), Err(ProtocolError::BadString));
    }

    #[test]
    fn request_decoding_rejects_junk() {
        use MsgType as T;
        assert_eq!(
            Request::decode(T::Read, b"/a"),
            Err(ProtocolError::MissingNul)
        );
        assert_eq!(
            Request::decode(T::Read, b"/a\0x"),
            Err(ProtocolError::TrailingData)
        );
        assert_eq!(
            Request::decode(T::SetPerms, b"/a\0"),
            Err(ProtocolError::EmptyPerms)
        );
        assert_eq!(
            Request::decode(T::TransactionEnd, b"X\0"),
            Err(ProtocolError::BadBool)
        );
        assert_eq!(
            Request::decode(T::GetDomainPath, b"65536\0"),
            Err(ProtocolError::BadNumber)
        );
        assert_eq!(
            Request::decode(T::Error, b"EIO\0"),
            Err(ProtocolError::WrongDirection(T::Error))
        );
        assert_eq!(
            Request::decode(T::TransactionStart, b""),
            Ok(Request::TransactionStart)
        );
    }

    #[test]
    fn frame_reader_reassembles_and_fails_sticky() {
        let mut stream = encoded(&Request::Read { path: "/a" }, 1, 0);
        stream.extend(encoded(&Request::Rm { path: "/b/c" }, 2, 0));
        let mut r = FrameReader::new();
        let mut got = Vec::new();
        for b in &stream {
            let (used, h) = r.feed(core::slice::from_ref(b)).unwrap();
            assert_eq!(used, 1);
            if let Some(h) = h {
                got.push((h.req_id, r.payload().to_vec()));
            }
        }
        assert_eq!(got, vec![(1, b"/a\0".to_vec()), (2, b"/b/c\0".to_vec())]);
        assert!(r.is_idle());
        let bad = hdr(2, 1, 0, 5000);
        assert_eq!(r.feed(&bad), Err(ProtocolError::PayloadTooLong(5000)));
        assert_eq!(r.feed(&stream), Err(ProtocolError::PayloadTooLong(5000)));
        r.reset();
        assert!(r.feed(&stream).is_ok());
    }

    // ---- property tests ----

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-][A-Za-z0-9_@-]{0,11}"
    }

    fn abs_path() -> impl Strategy<Value = String> {
        prop::collection::vec(name(), 0..6).prop_map(|parts| {
            if parts.is_empty() {
                "/".to_string()
            } else {
                parts.iter().fold(String::new(), |mut s, p| {
                    s.push('/');
                    s.push_str(p);
                    s
                })
            }
        })
    }

    fn any_path() -> impl Strategy<Value = String> {
        prop_oneof![
            abs_path(),
            prop::collection::vec(name(), 1..5).prop_map(|p| p.join("/")),
        ]
    }

    fn perm() -> impl Strategy<Value = Perm> {
        (
            prop_oneof![
                Just(Access::None),
                Just(Access::Read),
                Just(Access::Write),
                Just(Access::Both)
            ],
            any::<u16>(),
        )
            .prop_map(|(a, d)| Perm::new(a, d))
    }

    /// Owned inputs from which any request can be built.
    #[derive(Debug, Clone)]
    struct ReqSeed {
        kind: u8,
        path: String,
        value: Vec<u8>,
        token: String,
        perms: Vec<Perm>,
        domid: u16,
        gfn: u64,
        port: u32,
        flag: bool,
    }

    fn req_seed() -> impl Strategy<Value = ReqSeed> {
        (
            0u8..16,
            any_path(),
            prop::collection::vec(any::<u8>(), 0..200),
            "[ -~]{1,16}",
            prop::collection::vec(perm(), 1..6),
            any::<u16>(),
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
        )
            .prop_map(
                |(kind, path, value, token, perms, domid, gfn, port, flag)| ReqSeed {
                    kind,
                    path,
                    value,
                    token,
                    perms,
                    domid,
                    gfn,
                    port,
                    flag,
                },
            )
    }

    fn build(s: &ReqSeed) -> Request<'_> {
        let path = s.path.as_str();
        match s.kind {
            0 => Request::Read { path },
            1 => Request::Write {
                path,
                value: &s.value,
            },
            2 => Request::Mkdir { path },
            3 => Request::Rm { path },
            4 => Request::Directory { path },
            5 => Request::GetPerms { path },
            6 => Request::SetPerms {
                path,
                perms: Cow::Borrowed(&s.perms),
            },
            7 => Request::Watch {
                path: if s.flag { "@introduceDomain" } else { path },
                token: &s.token,
            },
            8 => Request::Unwatch {
                path,
                token: &s.token,
            },
            9 => Request::TransactionStart,
            10 => Request::TransactionEnd { commit: s.flag },
            11 => Request::GetDomainPath { domid: s.domid },
            12 => Request::Introduce {
                domid: s.domid,
                gfn: s.gfn,
                port: s.port,
            },
            13 => Request::Release { domid: s.domid },
            14 => Request::IsDomainIntroduced { domid: s.domid },
            _ => Request::ResetWatches,
        }
    }

    fn reply_for(ty: MsgType, s: &ReqSeed) -> Reply {
        match ty {
            MsgType::Read => Reply::Value(s.value.clone()),
            MsgType::Directory => Reply::Names(
                s.path
                    .split('/')
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect(),
            ),
            MsgType::GetPerms => Reply::Perms(s.perms.clone()),
            MsgType::TransactionStart => Reply::TxId(s.port.max(1)),
            MsgType::GetDomainPath => Reply::Path(alloc::format!("/local/domain/{}", s.domid)),
            MsgType::IsDomainIntroduced => Reply::Bool(s.flag),
            _ => Reply::Ack,
        }
    }

    proptest! {
        #[test]
        fn request_round_trip(s in req_seed(), req_id in any::<u32>(), tx in any::<u32>()) {
            let req = build(&s);
            let bytes = encoded(&req, req_id, tx);
            let (h, payload) = split_msg(&bytes);
            prop_assert_eq!((h.ty, h.req_id, h.tx_id), (req.msg_type(), req_id, tx));
            prop_assert_eq!(Request::decode(h.ty, payload), Ok(req));
        }

        #[test]
        fn reply_round_trip(s in req_seed(), req_id in any::<u32>()) {
            let ty = build(&s).msg_type();
            let reply = reply_for(ty, &s);
            let mut out = Vec::new();
            reply.encode(ty, req_id, 0, &mut out).unwrap();
            let (h, payload) = split_msg(&out);
            prop_assert_eq!(h.ty, ty);
            prop_assert_eq!(Reply::decode(ty, payload), Ok(reply));
        }

        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            for &ty in MsgType::ALL {
                let _ = Reply::decode(ty, &bytes);
                let _ = Request::decode(ty, &bytes);
            }
            let _ = decode_error(&bytes);
            let _ = decode_watch_event(&bytes);
            let _ = Perm::parse(&bytes);
            let mut r = FrameReader::new();
            let mut rest = &bytes[..];
            let mut rounds = 0;
            while !rest.is_empty() {
                match r.feed(rest) {
                    Ok((used, _)) => rest = &rest[used..],
                    Err(_) => break,
                }
                rounds += 1;
                prop_assert!(rounds <= bytes.len() + 1);
            }
        }

        #[test]
        fn mostly_valid_messages_never_panic(
            ty in 0u32..24,
            payload in prop::collection::vec(
                prop_oneof![Just(0u8), Just(b'/'), Just(b'a'), Just(b'1'), any::<u8>()], 0..64),
        ) {
            // Bytes shaped like real payloads reach deeper into the decoders.
            if let Some(t) = MsgType::from_value(ty) {
                let _ = Reply::decode(t, &payload);
                let _ = Request::decode(t, &payload);
            }
            let _ = decode_watch_event(&payload);
        }
    }
}
