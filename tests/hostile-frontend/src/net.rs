//! The netif attacks on a backend's vif. Each phase runs on a fresh connection (frontend
//! `Initialising` → the backend's `InitWait`, new rings, new port, keys written again),
//! because a backend that does its job stops a connection at the first protocol violation.
//!
//! The frontend connects the way Linux's xen-netfront does: `tx-ring-ref`, `rx-ring-ref`,
//! `event-channel` (one port for both rings), `request-rx-copy` = 1, `feature-rx-notify` = 1,
//! then `state` = `Connected`. Its good packet is an ARP request for dom0's bridge address
//! (10.99.0.1) from our MAC, so a backend that bridges it makes dom0 answer, and RX traffic
//! reaches the vif for the RX-ring phases.
//!
//! Every phase says what a correct backend does ([`Expect`]): it **fails the device**
//! (`Closing`/`Closed`, reason in `error`), or **keeps serving** and answers the TX requests
//! with the listed statuses, or (random garbage) either of those without one `OKAY`. The
//! host tests run every phase against the netback core (`xen-netback`) and its xenstore
//! reader, so the expectations are the core's, checked before a real Xen runs them.

use std::fmt::Write as _;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::dev::{self, Dev};
use crate::netif::{
    self, extra, gso_v4, tx, EXTRA_INFO, MORE_DATA, RSP_ERROR, RSP_NULL, RSP_OKAY, RX_ENTRY,
    TX_ENTRY,
};
use crate::os::{Evtchn, Gntalloc};
use crate::ring::RawFront;
use crate::rng::Rng;

/// A grant reference nobody granted.
pub const BAD_GREF: u32 = 0xffff_fff0;
/// Notifications sent in the event-flood phase.
pub const FLOOD: u32 = 2000;
/// RX buffers the RX-ring phase posts.
pub const RX_BUFFERS: usize = 4;
/// Our address in ARP requests (not used by anybody else on 10.99.0.0/24).
pub const OUR_IP: [u8; 4] = [10, 99, 0, 66];
/// dom0's bridge address, the target of our ARP requests.
pub const DOM0_IP: [u8; 4] = [10, 99, 0, 1];
/// Our MAC when the frontend directory has none.
pub const DEFAULT_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x5a, 0x04, 0x01];
/// Length of the good packet (an ARP request padded to Ethernet's minimum).
pub const FRAME_LEN: u16 = 60;

/// What a correct backend does with a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Stops the device: state `Closing`/`Closed`, reason in `error`.
    Fails,
    /// Answers the TX requests with these statuses (in ring order, `NULL` for extra slots)
    /// and stays `Connected`.
    Serves(Vec<i16>),
    /// Random bytes: fails the device, or stays `Connected` without answering one slot
    /// `OKAY` (nothing random is a packet from a granted page).
    FailsOrRefuses,
}

/// One attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// 64 TX slots of random bytes.
    Garbage,
    /// A zero-length packet, a zero-length first slot followed by a data slot (XSA-448's
    /// shape), then a good packet.
    ZeroLen,
    /// A slot claiming 65535 bytes of one page, a slot crossing its page's end, fragments
    /// adding up to more than the first slot announced, then a good packet.
    Oversize,
    /// 19 data slots chained with `more_data` (at most 18 exist).
    TooManySlots,
    /// A packet from an ungranted reference, one from a read-only grant, a good one.
    BadGref,
    /// An extra-info slot of a type nobody defined.
    BogusExtra,
    /// Extra-info slots that never stop saying "more".
    ExtraChain,
    /// TX `req_prod` = `rsp_prod` + ring size + 1000.
    RunawayTx,
    /// RX `req_prod` = ring size + 1000, no requests written.
    RunawayRx,
    /// RX buffers with an ungranted reference and duplicate ids; two ARP requests so dom0's
    /// replies land in them.
    RxAbuse,
    /// One good packet, thousands of notifications, another good packet.
    EventFlood,
    /// After `Connected`: ring references, port, `request-rx-copy` and the queue count
    /// rewritten, `state` flapping; then a good packet on the rings mapped at connect.
    XsGames,
    /// `tx-ring-ref` missing at connect.
    MissingKeys,
    /// `tx-ring-ref` and `event-channel` that are not numbers.
    GarbageKeys,
    /// `multi-queue-num-queues` = 4096.
    QueueCount,
    /// `tx-ring-ref` names a grant that does not exist.
    BadRingRef,
}

impl Phase {
    /// Every phase, in run order.
    pub const ALL: [Phase; 16] = [
        Phase::Garbage,
        Phase::ZeroLen,
        Phase::Oversize,
        Phase::TooManySlots,
        Phase::BadGref,
        Phase::BogusExtra,
        Phase::ExtraChain,
        Phase::RunawayTx,
        Phase::RunawayRx,
        Phase::RxAbuse,
        Phase::EventFlood,
        Phase::XsGames,
        Phase::MissingKeys,
        Phase::GarbageKeys,
        Phase::QueueCount,
        Phase::BadRingRef,
    ];

    /// Its name in logs and on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Phase::Garbage => "garbage",
            Phase::ZeroLen => "zero-len",
            Phase::Oversize => "oversize",
            Phase::TooManySlots => "too-many-slots",
            Phase::BadGref => "bad-gref",
            Phase::BogusExtra => "bogus-extra",
            Phase::ExtraChain => "extra-chain",
            Phase::RunawayTx => "runaway-tx",
            Phase::RunawayRx => "runaway-rx",
            Phase::RxAbuse => "rx-abuse",
            Phase::EventFlood => "event-flood",
            Phase::XsGames => "xs-games",
            Phase::MissingKeys => "missing-keys",
            Phase::GarbageKeys => "garbage-keys",
            Phase::QueueCount => "queue-count",
            Phase::BadRingRef => "bad-ring-ref",
        }
    }

    /// Parses a name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Whether the attack is in the keys read at connect (the backend refuses to connect).
    #[must_use]
    pub fn at_connect(self) -> bool {
        matches!(
            self,
            Phase::MissingKeys | Phase::GarbageKeys | Phase::QueueCount | Phase::BadRingRef
        )
    }

    /// What a correct backend does.
    #[must_use]
    pub fn expect(self) -> Expect {
        let e = RSP_ERROR;
        match self {
            Phase::Garbage => Expect::FailsOrRefuses,
            Phase::ZeroLen => Expect::Serves(vec![e, e, e, RSP_OKAY]),
            Phase::Oversize => Expect::Serves(vec![e, e, e, e, e, RSP_OKAY]),
            Phase::BadGref => Expect::Serves(vec![e, RSP_OKAY, RSP_OKAY]),
            Phase::RxAbuse | Phase::EventFlood => Expect::Serves(vec![RSP_OKAY, RSP_OKAY]),
            Phase::XsGames => Expect::Serves(vec![RSP_OKAY]),
            _ => Expect::Fails,
        }
    }
}

/// The pages granted to the backend for one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grefs {
    /// A page holding the good frame at offset 0.
    pub data: u32,
    /// A read-only page holding the good frame at offset 0.
    pub ro: u32,
}

/// The request id of TX request `n` of phase `p`: unique over a run.
#[must_use]
pub fn request_id(p: Phase, n: u16) -> u16 {
    let i = Phase::ALL.iter().position(|&q| q == p).unwrap_or(0x3f);
    (u16::try_from(i).unwrap_or(0x3f) + 1) << 8 | (n & 0xff)
}

/// The good frame: an ARP request for [`DOM0_IP`] from `mac` / [`OUR_IP`], padded to 60 bytes.
#[must_use]
pub fn arp_request(mac: [u8; 6]) -> [u8; FRAME_LEN as usize] {
    let mut f = [0u8; FRAME_LEN as usize];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, op 1 (request).
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&OUR_IP);
    f[38..42].copy_from_slice(&DOM0_IP);
    f
}

/// The keys the frontend writes at connect for phase `p` (`None`: the key is removed).
#[must_use]
pub fn connect_keys(
    p: Phase,
    tx_ref: u32,
    rx_ref: u32,
    port: u32,
) -> Vec<(&'static str, Option<String>)> {
    let mut k: Vec<(&'static str, Option<String>)> = vec![
        ("tx-ring-ref", Some(tx_ref.to_string())),
        ("rx-ring-ref", Some(rx_ref.to_string())),
        ("event-channel", Some(port.to_string())),
        ("request-rx-copy", Some("1".into())),
        ("feature-rx-notify", Some("1".into())),
        ("multi-queue-num-queues", None),
    ];
    let mut set = |key: &str, v: Option<String>| {
        if let Some(e) = k.iter_mut().find(|(n, _)| *n == key) {
            e.1 = v;
        }
    };
    match p {
        Phase::MissingKeys => set("tx-ring-ref", None),
        Phase::GarbageKeys => {
            set("tx-ring-ref", Some("12zz".into()));
            set("event-channel", Some("-1".into()));
        }
        Phase::QueueCount => set("multi-queue-num-queues", Some("4096".into())),
        Phase::BadRingRef => set("tx-ring-ref", Some(BAD_GREF.to_string())),
        _ => {}
    }
    k
}

/// The TX slots phase `p` posts first (the runaway phases post none: their attack is an
/// index; the flood and RX phases post their second packet later).
#[must_use]
pub fn tx_requests(p: Phase, g: Grefs, rng: &mut Rng) -> Vec<[u8; TX_ENTRY]> {
    let id = |n| request_id(p, n);
    let good = |n| tx(g.data, 0, 0, id(n), FRAME_LEN);
    match p {
        Phase::Garbage => (0..64)
            .map(|_| {
                let mut s = [0u8; TX_ENTRY];
                rng.fill(&mut s);
                s
            })
            .collect(),
        Phase::ZeroLen => vec![
            tx(g.data, 0, 0, id(0), 0),
            tx(g.data, 0, MORE_DATA, id(1), 0),
            tx(g.data, 0, 0, id(2), FRAME_LEN),
            good(3),
        ],
        Phase::Oversize => vec![
            tx(g.data, 0, 0, id(0), u16::MAX),
            tx(g.data, 4000, 0, id(1), 200),
            tx(g.data, 0, MORE_DATA, id(2), 100),
            tx(g.data, 0, MORE_DATA, id(3), 4000),
            tx(g.data, 0, 0, id(4), 4000),
            good(5),
        ],
        Phase::TooManySlots => {
            let n = u16::try_from(netif::MAX_SLOTS).unwrap_or(18) + 1;
            let mut v: Vec<_> = (0..n)
                .map(|i| tx(g.data, 0, MORE_DATA, id(i), 100))
                .collect();
            v.push(tx(g.data, 0, 0, id(n), 100));
            v
        }
        Phase::BadGref => vec![
            tx(BAD_GREF, 0, 0, id(0), FRAME_LEN),
            tx(g.ro, 0, 0, id(1), FRAME_LEN),
            good(2),
        ],
        Phase::BogusExtra => vec![
            tx(g.data, 0, EXTRA_INFO, id(0), FRAME_LEN),
            extra(200, 0, [0xff; 6]),
        ],
        Phase::ExtraChain => {
            let mut v = vec![tx(g.data, 0, EXTRA_INFO, id(0), FRAME_LEN)];
            v.extend((0..6).map(|_| gso_v4(1448, true)));
            v
        }
        Phase::RxAbuse | Phase::EventFlood | Phase::XsGames => vec![good(0)],
        Phase::RunawayTx
        | Phase::RunawayRx
        | Phase::MissingKeys
        | Phase::GarbageKeys
        | Phase::QueueCount
        | Phase::BadRingRef => Vec::new(),
    }
}

/// The RX buffers phase `p` posts, from the writable grants `bufs` (only [`Phase::RxAbuse`]
/// posts any: the first buffer names an ungranted reference, the others share one id).
#[must_use]
pub fn rx_requests(p: Phase, bufs: &[u32]) -> Vec<[u8; RX_ENTRY]> {
    if p != Phase::RxAbuse {
        return Vec::new();
    }
    let mut v = vec![netif::rx(1, BAD_GREF)];
    v.extend(bufs.iter().map(|&g| netif::rx(7, g)));
    v
}

/// A TX response decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxRsp {
    /// Its id.
    pub id: u16,
    /// Its status.
    pub status: i16,
}

/// An RX response decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxRsp {
    /// Its id.
    pub id: u16,
    /// Its status (a length when positive).
    pub status: i16,
}

/// Decodes an RX response slot (`id`, `offset`, `flags`, `status`).
#[must_use]
pub fn rx_response(slot: &[u8]) -> RxRsp {
    let b = |i: usize| slot.get(i).copied().unwrap_or(0);
    RxRsp {
        id: u16::from_le_bytes([b(0), b(1)]),
        status: i16::from_le_bytes([b(6), b(7)]),
    }
}

fn status_name(s: i16) -> String {
    match s {
        RSP_OKAY => "OKAY".into(),
        RSP_ERROR => "ERROR".into(),
        netif::RSP_DROPPED => "DROPPED".into(),
        RSP_NULL => "NULL".into(),
        x => x.to_string(),
    }
}

/// What a phase observed.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// TX responses in ring order.
    pub tx: Vec<TxRsp>,
    /// RX responses in ring order.
    pub rx: Vec<RxRsp>,
    /// The backend's state at the end.
    pub state: u32,
    /// The backend's `error` node at the end.
    pub error: Option<String>,
    /// Anything else worth a log line.
    pub notes: Vec<String>,
}

/// Judges `o` against `e`.
#[must_use]
pub fn judge(e: &Expect, o: &Observed) -> bool {
    let failed = matches!(o.state, dev::CLOSING | dev::CLOSED);
    match e {
        Expect::Fails => failed,
        Expect::FailsOrRefuses => {
            failed || (o.state == dev::CONNECTED && o.tx.iter().all(|r| r.status != RSP_OKAY))
        }
        Expect::Serves(st) => {
            o.state == dev::CONNECTED
                && o.tx.len() == st.len()
                && o.tx.iter().zip(st).all(|(r, s)| r.status == *s)
        }
    }
}

/// A phase's verdict.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Whether the backend did what [`Phase::expect`] says.
    pub as_expected: bool,
    /// One line.
    pub detail: String,
}

/// Everything a phase uses.
#[derive(Debug)]
pub struct Env<'a> {
    /// The device.
    pub dev: &'a mut Dev,
    /// Grants.
    pub gnt: &'a Gntalloc,
    /// Event channels.
    pub ev: &'a mut Evtchn,
    /// Seed of the garbage.
    pub seed: u64,
    /// Our MAC.
    pub mac: [u8; 6],
}

/// Parses `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut parts = s
        .trim_matches(|c: char| c == '\0' || c.is_ascii_whitespace())
        .split(':');
    for b in &mut m {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

/// Brings the backend to `InitWait` for a new connection.
fn reset(dev: &mut Dev) -> Result<(), String> {
    dev.set_state(dev::INITIALISING)?;
    let (s, ok) = dev.wait_be(Duration::from_secs(15), |s| s == dev::INIT_WAIT);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "backend did not come back to InitWait (state {s} {})",
            dev::state_name(s)
        ))
    }
}

/// Frontend `Closing` then `Closed`; waits for the backend to follow to `Closed`.
fn disconnect(dev: &mut Dev) -> Result<(), String> {
    dev.set_state(dev::CLOSING)?;
    let _ = dev.wait_be(Duration::from_secs(10), |s| s >= dev::CLOSING);
    dev.set_state(dev::CLOSED)?;
    let (s, ok) = dev.wait_be(Duration::from_secs(10), |s| s == dev::CLOSED);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "backend did not follow to Closed (state {s} {})",
            dev::state_name(s)
        ))
    }
}

/// The two rings of a connection.
struct Rings<'a> {
    tx: RawFront<'a>,
    rx: RawFront<'a>,
}

/// Polls until `want` TX responses arrived, the backend left `Connected`, or `timeout`; RX
/// responses are collected on the way.
fn observe(dev: &mut Dev, r: &mut Rings<'_>, o: &mut Observed, want: usize, timeout: Duration) {
    let start = Instant::now();
    let had = o.tx.len();
    // Stop on a new complaint about the rings, not on the phase's own notes.
    let notes = o.notes.len();
    loop {
        match r.tx.take_responses() {
            Ok(rs) => o.tx.extend(rs.iter().map(|s| {
                let (id, status) = netif::tx_response(s);
                TxRsp { id, status }
            })),
            Err(e) => o.notes.push(format!("backend's TX responses: {e:?}")),
        }
        match r.rx.take_responses() {
            Ok(rs) => o.rx.extend(rs.iter().map(|s| rx_response(s))),
            Err(e) => o.notes.push(format!("backend's RX responses: {e:?}")),
        }
        o.state = dev.be_state();
        if o.state != dev::CONNECTED
            || o.tx.len() - had >= want
            || start.elapsed() >= timeout
            || o.notes.len() > notes
        {
            return;
        }
        sleep(Duration::from_millis(20));
    }
}

/// Runs one phase on a fresh connection.
pub fn run(env: &mut Env<'_>, p: Phase) -> Outcome {
    if let Err(e) = reset(env.dev) {
        return Outcome {
            as_expected: false,
            detail: e,
        };
    }
    match attack(env, p) {
        Ok(o) => {
            let ok = judge(&p.expect(), &o);
            let mut d = String::new();
            let _ = write!(d, "backend {}", dev::state_name(o.state));
            if !o.tx.is_empty() {
                let st: Vec<String> = o.tx.iter().map(|r| status_name(r.status)).collect();
                let _ = write!(d, ", tx [{}]", st.join(","));
            }
            if !o.rx.is_empty() {
                let st: Vec<String> =
                    o.rx.iter()
                        .map(|r| format!("{}:{}", r.id, status_name(r.status)))
                        .collect();
                let _ = write!(d, ", rx [{}]", st.join(","));
            }
            if let Some(e) = &o.error {
                let _ = write!(d, ", error \"{e}\"");
            }
            for n in &o.notes {
                let _ = write!(d, ", {n}");
            }
            Outcome {
                as_expected: ok,
                detail: d,
            }
        }
        Err(e) => Outcome {
            as_expected: false,
            detail: e,
        },
    }
}

fn attack(env: &mut Env<'_>, p: Phase) -> Result<Observed, String> {
    let be_id = env.dev.be_id;
    let e = |what: &str, err: std::io::Error| format!("{what}: {err}");
    let rings_g = env
        .gnt
        .alloc(be_id, 2, true)
        .map_err(|x| e("granting the rings", x))?;
    let data_g = env
        .gnt
        .alloc(be_id, 1 + RX_BUFFERS, true)
        .map_err(|x| e("granting data pages", x))?;
    let ro_g = env
        .gnt
        .alloc(be_id, 1, false)
        .map_err(|x| e("granting a read-only page", x))?;
    let frame = arp_request(env.mac);
    for page in [data_g.page(0), ro_g.page(0)].into_iter().flatten() {
        let _ = page.copy_from_slice(0, &frame);
    }
    let g = Grefs {
        data: data_g.refs().first().copied().unwrap_or(BAD_GREF),
        ro: ro_g.refs().first().copied().unwrap_or(BAD_GREF),
    };
    let bufs: Vec<u32> = data_g.refs().iter().skip(1).copied().collect();
    let mut rings = Rings {
        tx: RawFront::init(rings_g.page(0).ok_or("no TX ring page")?, TX_ENTRY)
            .map_err(|x| format!("TX ring: {x:?}"))?,
        rx: RawFront::init(rings_g.page(1).ok_or("no RX ring page")?, RX_ENTRY)
            .map_err(|x| format!("RX ring: {x:?}"))?,
    };
    let refs = rings_g.refs();
    let (tx_ref, rx_ref) = (
        refs.first().copied().unwrap_or(BAD_GREF),
        refs.get(1).copied().unwrap_or(BAD_GREF),
    );
    let port = env
        .ev
        .bind_unbound(be_id)
        .map_err(|x| e("event channel", x))?;
    let mut rng = Rng::new(env.seed ^ u64::from(request_id(p, 0)));
    let result = connected_attack(
        env,
        p,
        &mut rings,
        (tx_ref, rx_ref, port),
        g,
        &bufs,
        &mut rng,
    );
    let closed = disconnect(env.dev);
    let _ = env.ev.unbind(port);
    env.ev.drain();
    let mut o = result?;
    if let Err(x) = closed {
        o.notes.push(x);
        // A backend that does not close is not what any phase expects.
        o.state = 0;
    }
    Ok(o)
}

fn connected_attack(
    env: &mut Env<'_>,
    p: Phase,
    rings: &mut Rings<'_>,
    (tx_ref, rx_ref, port): (u32, u32, u32),
    g: Grefs,
    bufs: &[u32],
    rng: &mut Rng,
) -> Result<Observed, String> {
    let dev = &mut *env.dev;
    for (k, v) in connect_keys(p, tx_ref, rx_ref, port) {
        match v {
            Some(v) => dev.write(k, &v)?,
            None => dev.remove(k),
        }
    }
    dev.set_state(dev::CONNECTED)?;
    let (s, ok) = dev.wait_be(Duration::from_secs(15), |s| s >= dev::CONNECTED);
    let mut o = Observed {
        state: s,
        ..Observed::default()
    };
    if p.at_connect() || !ok || s != dev::CONNECTED {
        if !p.at_connect() {
            o.notes.push("did not connect".into());
        }
        o.error = dev.be_read("error");
        return Ok(o);
    }
    if p == Phase::XsGames {
        dev.write("tx-ring-ref", "4294967295")?;
        dev.write("rx-ring-ref", "0")?;
        dev.write("event-channel", "65535")?;
        dev.write("request-rx-copy", "0")?;
        dev.write("multi-queue-num-queues", "9")?;
        for s in [
            dev::INITIALISED,
            dev::CONNECTED,
            dev::INITIALISING,
            dev::CONNECTED,
            dev::INITIALISED,
            dev::CONNECTED,
        ] {
            dev.set_state(s)?;
        }
        o.notes.push("keys rewritten, state flapped 6 times".into());
    }
    for slot in rx_requests(p, bufs) {
        rings.rx.put(&slot);
    }
    if p == Phase::RunawayRx {
        let v = rings.rx.size() + 1000;
        rings.rx.publish_raw(v);
        o.notes.push(format!("rx req_prod {v}"));
    } else {
        rings.rx.publish();
    }
    for slot in tx_requests(p, g, rng) {
        rings.tx.put(&slot);
    }
    if p == Phase::RunawayTx {
        let v = rings.tx.rsp_prod().wrapping_add(rings.tx.size() + 1000);
        rings.tx.publish_raw(v);
        o.notes.push(format!("tx req_prod {v}"));
    } else {
        rings.tx.publish();
    }
    let _ = env.ev.notify(port);
    let want = match p.expect() {
        Expect::Serves(v) => v.len(),
        Expect::Fails | Expect::FailsOrRefuses => usize::MAX,
    };
    let timeout = Duration::from_secs(8);
    if matches!(p, Phase::EventFlood | Phase::RxAbuse) {
        observe(dev, rings, &mut o, 1, timeout);
        if p == Phase::EventFlood {
            let start = Instant::now();
            let sent = (0..FLOOD).filter(|_| env.ev.notify(port).is_ok()).count();
            o.notes.push(format!(
                "{sent} notifications in {} ms",
                start.elapsed().as_millis()
            ));
        }
        rings.tx.put(&tx(g.data, 0, 0, request_id(p, 1), FRAME_LEN));
        rings.tx.publish();
        let _ = env.ev.notify(port);
        observe(dev, rings, &mut o, 1, timeout);
        if p == Phase::RxAbuse {
            // dom0's ARP replies (not our backend's doing: only noted).
            let start = Instant::now();
            while o.rx.len() < 2 && start.elapsed() < Duration::from_secs(3) {
                observe(dev, rings, &mut o, 0, Duration::from_millis(100));
                sleep(Duration::from_millis(50));
            }
        }
    } else {
        observe(dev, rings, &mut o, want, timeout);
    }
    if want == usize::MAX && o.state == dev::CONNECTED {
        o.notes.push("still Connected after 8 s".into());
    }
    o.error = dev.be_read("error");
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_netif::raw::TxRequest;
    use xen_netif::tx::{TxAssembler, TxFault};
    use xen_shmem::{as_bytes_mut, zeroed};

    const G: Grefs = Grefs { data: 10, ro: 11 };

    /// The assembler's verdicts for the slots of `p`: per packet, `Ok(true)` delivered-able,
    /// `Ok(false)` dropped; or the framing fault.
    fn verdicts(p: Phase, seed: u64) -> Result<Vec<bool>, TxFault> {
        let mut a = TxAssembler::new(true);
        let mut out = Vec::new();
        for s in tx_requests(p, G, &mut Rng::new(seed)) {
            let mut r: TxRequest = zeroed();
            as_bytes_mut(&mut r).copy_from_slice(&s);
            if let Some(pkt) = a.push(&r)? {
                out.push(pkt.verdict.is_ok());
            }
        }
        if a.in_packet() {
            return Err(TxFault::Incomplete);
        }
        Ok(out)
    }

    #[test]
    fn framing_phases_carry_a_fault_and_serving_phases_none() {
        for p in [Phase::TooManySlots, Phase::BogusExtra, Phase::ExtraChain] {
            assert!(verdicts(p, 1).is_err(), "{p:?}");
        }
        // Every packet but the last good one is dropped (the bad-gref ones fail later, in
        // the grant copy).
        assert_eq!(verdicts(Phase::ZeroLen, 1), Ok(vec![false, false, true]));
        assert_eq!(
            verdicts(Phase::Oversize, 1),
            Ok(vec![false, false, false, true])
        );
        assert_eq!(verdicts(Phase::BadGref, 1), Ok(vec![true, true, true]));
        for p in [Phase::RxAbuse, Phase::EventFlood, Phase::XsGames] {
            assert_eq!(verdicts(p, 1), Ok(vec![true]), "{p:?}");
        }
    }

    #[test]
    fn the_good_frame_is_an_arp_request() {
        let f = arp_request(DEFAULT_MAC);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[28..32], &OUR_IP);
        assert_eq!(&f[38..42], &DOM0_IP);
        assert_eq!(parse_mac("00:16:3e:5a:04:01\0"), Some(DEFAULT_MAC));
        assert_eq!(parse_mac("00:16:3e:5a:04"), None);
        assert_eq!(parse_mac("00:16:3e:5a:04:01:02"), None);
    }

    #[test]
    fn names_ids_and_keys() {
        let mut ids: Vec<u16> = Phase::ALL.iter().map(|&p| request_id(p, 0)).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), Phase::ALL.len());
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.name()), Some(p));
            let k = connect_keys(p, 1, 2, 3);
            // Every phase names the same keys, so a later phase undoes an earlier one's.
            assert_eq!(k.len(), 6, "{p:?}");
        }
        assert!(connect_keys(Phase::MissingKeys, 1, 2, 3)
            .iter()
            .any(|(k, v)| *k == "tx-ring-ref" && v.is_none()));
    }

    #[test]
    fn judging() {
        let okay = TxRsp {
            id: 1,
            status: RSP_OKAY,
        };
        let served = Observed {
            tx: vec![okay],
            state: dev::CONNECTED,
            ..Observed::default()
        };
        assert!(judge(&Expect::Serves(vec![RSP_OKAY]), &served));
        assert!(!judge(&Expect::Serves(vec![RSP_ERROR]), &served));
        assert!(!judge(&Expect::Fails, &served));
        assert!(!judge(&Expect::FailsOrRefuses, &served));
        let refused = Observed {
            tx: vec![TxRsp {
                id: 1,
                status: RSP_ERROR,
            }],
            ..served.clone()
        };
        assert!(judge(&Expect::FailsOrRefuses, &refused));
        let closed = Observed {
            state: dev::CLOSING,
            ..served.clone()
        };
        assert!(judge(&Expect::Fails, &closed));
        assert!(judge(&Expect::FailsOrRefuses, &closed));
        assert!(!judge(&Expect::Serves(vec![RSP_OKAY]), &closed));
        assert_eq!(
            rx_response(&[7, 0, 0, 0, 0, 0, 0x3c, 0]),
            RxRsp { id: 7, status: 60 }
        );
    }
}
