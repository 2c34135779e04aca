//! The blkif attacks. Each phase runs on a fresh connection (the frontend goes back to
//! `Initialising`, the backend to `InitWait`, new ring, new port), because a backend that
//! does its job stops serving a connection after the first protocol violation.
//!
//! Every phase says what a correct backend does with it ([`Expect`]): either it **fails the
//! device** (its state goes to `Closing`/`Closed`; the reason is in its `error` node), or it
//! **keeps serving** and answers each request with the listed status, staying `Connected`.
//! The unit tests check each phase's requests against the backend core's own parser, so the
//! expectations are the protocol's, not guesses.

use std::fmt::Write as _;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::blkif::{self, Response, Seg, ENTRY, OP_READ, OP_WRITE, RSP_ERROR, RSP_OKAY};
use crate::dev::{self, Dev};
use crate::os::{Evtchn, Gntalloc};
use crate::ring::RawFront;
use crate::rng::Rng;

/// A grant reference nobody granted.
pub const BAD_GREF: u32 = 0xffff_fff0;
/// Notifications sent in the event-flood phase.
pub const FLOOD: u32 = 2000;

/// What a correct backend does with a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Stops the device: state `Closing`/`Closed`, reason in `error`.
    Fails,
    /// Answers with these statuses (in order) and stays `Connected`.
    Serves(Vec<i16>),
}

/// One attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A ring full of random bytes.
    Garbage,
    /// An operation code that does not exist.
    BadOp,
    /// Twelve segments in a direct request (at most eleven exist).
    SegCount,
    /// `first_sect` after `last_sect`.
    SectRange,
    /// `sector_number` so large that the end wraps around.
    SectorOverflow,
    /// Reading past the end of the disk (refused, not a violation), then a good read.
    BeyondEnd,
    /// Unknown grant, read into a read-only grant, write from it, then a good read.
    BadGref,
    /// An indirect request whose indirect page is not granted, then a good read.
    IndirectBadGref,
    /// An indirect request whose descriptor page is random bytes.
    IndirectJunk,
    /// An indirect request claiming 65535 segments.
    IndirectCount,
    /// `req_prod` far beyond `rsp_prod` + ring size.
    Runaway,
    /// One good read, thousands of notifications, another good read.
    EventFlood,
    /// After `Connected`: `ring-ref`, `event-channel` and `protocol` rewritten, `state`
    /// flapping; then a good read on the ring mapped at connect.
    XsGames,
}

impl Phase {
    /// Every phase, in run order.
    pub const ALL: [Phase; 13] = [
        Phase::Garbage,
        Phase::BadOp,
        Phase::SegCount,
        Phase::SectRange,
        Phase::SectorOverflow,
        Phase::BeyondEnd,
        Phase::BadGref,
        Phase::IndirectBadGref,
        Phase::IndirectJunk,
        Phase::IndirectCount,
        Phase::Runaway,
        Phase::EventFlood,
        Phase::XsGames,
    ];

    /// Its name in logs and on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Phase::Garbage => "garbage",
            Phase::BadOp => "bad-op",
            Phase::SegCount => "seg-count",
            Phase::SectRange => "sect-range",
            Phase::SectorOverflow => "sector-overflow",
            Phase::BeyondEnd => "beyond-end",
            Phase::BadGref => "bad-gref",
            Phase::IndirectBadGref => "indirect-bad-gref",
            Phase::IndirectJunk => "indirect-junk",
            Phase::IndirectCount => "indirect-count",
            Phase::Runaway => "runaway",
            Phase::EventFlood => "event-flood",
            Phase::XsGames => "xs-games",
        }
    }

    /// Parses a name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Whether the phase needs `feature-max-indirect-segments` from the backend (without it
    /// an indirect request is a violation whatever it carries).
    #[must_use]
    pub fn needs_indirect(self) -> bool {
        self == Phase::IndirectBadGref
    }

    /// What a correct backend does.
    #[must_use]
    pub fn expect(self) -> Expect {
        match self {
            Phase::BeyondEnd | Phase::IndirectBadGref => Expect::Serves(vec![RSP_ERROR, RSP_OKAY]),
            Phase::BadGref => Expect::Serves(vec![RSP_ERROR, RSP_ERROR, RSP_OKAY, RSP_OKAY]),
            Phase::EventFlood => Expect::Serves(vec![RSP_OKAY, RSP_OKAY]),
            Phase::XsGames => Expect::Serves(vec![RSP_OKAY]),
            _ => Expect::Fails,
        }
    }
}

/// The pages granted to the backend for one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grefs {
    /// A writable data page.
    pub data: u32,
    /// A page granted read-only.
    pub ro: u32,
    /// A read-only page of random bytes (the junk indirect page).
    pub junk: u32,
}

/// The request id of request `n` of phase `p`: unique over a run, so a reason in the
/// backend's `error` node names the phase that caused it.
#[must_use]
pub fn request_id(p: Phase, n: u64) -> u64 {
    let i = Phase::ALL.iter().position(|&q| q == p).unwrap_or(0xff) as u64;
    0x4057_0000_0000_0000 | (i + 1) << 32 | n
}

/// The request slots phase `p` posts first (the runaway phase posts none: its attack is the
/// index; the flood phase posts its second read after the flood).
#[must_use]
pub fn requests(p: Phase, g: Grefs, sectors: u64, rng: &mut Rng) -> Vec<[u8; ENTRY]> {
    let id = |n| request_id(p, n);
    let good_read = |n| blkif::rw(OP_READ, 1, id(n), 0, &[Seg::page(g.data)]);
    match p {
        Phase::Garbage => (0..32)
            .map(|_| {
                let mut s = [0u8; ENTRY];
                rng.fill(&mut s);
                s
            })
            .collect(),
        Phase::BadOp => vec![blkif::rw(200, 1, id(0), 0, &[Seg::page(g.data)])],
        Phase::SegCount => vec![blkif::rw(OP_READ, 12, id(0), 0, &[Seg::page(g.data); 11])],
        Phase::SectRange => vec![blkif::rw(
            OP_READ,
            1,
            id(0),
            0,
            &[Seg {
                gref: g.data,
                first: 6,
                last: 2,
            }],
        )],
        Phase::SectorOverflow => vec![blkif::rw(
            OP_WRITE,
            1,
            id(0),
            u64::MAX - 3,
            &[Seg::page(g.data)],
        )],
        Phase::BeyondEnd => vec![
            blkif::rw(OP_READ, 1, id(0), sectors, &[Seg::page(g.data)]),
            good_read(1),
        ],
        Phase::BadGref => vec![
            blkif::rw(OP_READ, 1, id(0), 0, &[Seg::page(BAD_GREF)]),
            // The backend would write into a page it may only read.
            blkif::rw(OP_READ, 1, id(1), 0, &[Seg::page(g.ro)]),
            // Reading from it is allowed.
            blkif::rw(OP_WRITE, 1, id(2), 8, &[Seg::page(g.ro)]),
            good_read(3),
        ],
        Phase::IndirectBadGref => vec![
            blkif::indirect(OP_READ, 16, id(0), 0, &[BAD_GREF]),
            good_read(1),
        ],
        Phase::IndirectJunk => vec![blkif::indirect(OP_READ, 16, id(0), 0, &[g.junk])],
        Phase::IndirectCount => vec![blkif::indirect(
            OP_READ,
            u16::MAX,
            id(0),
            0,
            &[g.junk; blkif::MAX_INDIRECT_PAGES],
        )],
        Phase::Runaway => Vec::new(),
        Phase::EventFlood | Phase::XsGames => vec![good_read(0)],
    }
}

/// What a phase observed.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Responses in ring order.
    pub responses: Vec<Response>,
    /// The backend's state at the end.
    pub state: u32,
    /// The backend's `error` node at the end, if it changed during the phase.
    pub error: Option<String>,
    /// Anything else worth a log line.
    pub notes: Vec<String>,
}

/// A phase's verdict.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Whether the backend did what [`Phase::expect`] says.
    pub as_expected: bool,
    /// Skipped (not applicable to this backend).
    pub skipped: bool,
    /// One line.
    pub detail: String,
}

/// Judges `o` against `e`.
#[must_use]
pub fn judge(e: &Expect, o: &Observed) -> bool {
    match e {
        Expect::Fails => matches!(o.state, dev::CLOSING | dev::CLOSED),
        Expect::Serves(statuses) => {
            o.state == dev::CONNECTED
                && o.responses.len() == statuses.len()
                && o.responses
                    .iter()
                    .zip(statuses)
                    .all(|(r, s)| r.status == *s)
        }
    }
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
}

fn now_error(dev: &mut Dev) -> Option<String> {
    dev.be_read("error")
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

/// Polls until `want` responses arrived, the backend left `Connected`, or `timeout`.
fn observe(dev: &mut Dev, ring: &mut RawFront<'_>, want: usize, timeout: Duration) -> Observed {
    let mut o = Observed::default();
    let start = Instant::now();
    loop {
        match ring.take_responses() {
            Ok(rs) => o.responses.extend(rs.iter().map(|s| Response::decode(s))),
            Err(e) => {
                o.notes.push(format!("backend's responses: {e:?}"));
            }
        }
        o.state = dev.be_state();
        if o.state != dev::CONNECTED
            || o.responses.len() >= want
            || start.elapsed() >= timeout
            || !o.notes.is_empty()
        {
            return o;
        }
        sleep(Duration::from_millis(20));
    }
}

/// Runs one phase on a fresh connection.
pub fn run(env: &mut Env<'_>, p: Phase) -> Outcome {
    let outcome = |as_expected, skipped, detail| Outcome {
        as_expected,
        skipped,
        detail,
    };
    let indirect = env
        .dev
        .be_read("feature-max-indirect-segments")
        .and_then(|v| dev::parse_num(v.as_bytes()))
        .unwrap_or(0);
    if p.needs_indirect() && indirect == 0 {
        return outcome(true, true, "backend offers no indirect segments".into());
    }
    if let Err(e) = reset(env.dev) {
        return outcome(false, false, e);
    }
    match attack(env, p) {
        Ok(o) => {
            let ok = judge(&p.expect(), &o);
            let mut d = String::new();
            let _ = write!(d, "backend {}", dev::state_name(o.state));
            if !o.responses.is_empty() {
                let st: Vec<&str> = o.responses.iter().map(Response::status_name).collect();
                let _ = write!(d, ", responses [{}]", st.join(","));
            }
            if let Some(e) = &o.error {
                let _ = write!(d, ", error \"{e}\"");
            }
            for n in &o.notes {
                let _ = write!(d, ", {n}");
            }
            outcome(ok, false, d)
        }
        Err(e) => outcome(false, false, e),
    }
}

fn attack(env: &mut Env<'_>, p: Phase) -> Result<Observed, String> {
    let be_id = env.dev.be_id;
    let e = |what: &str, err: std::io::Error| format!("{what}: {err}");
    let ring_g = env
        .gnt
        .alloc(be_id, 1, true)
        .map_err(|x| e("granting the ring", x))?;
    let data_g = env
        .gnt
        .alloc(be_id, 1, true)
        .map_err(|x| e("granting a data page", x))?;
    let ro_g = env
        .gnt
        .alloc(be_id, 2, false)
        .map_err(|x| e("granting read-only pages", x))?;
    let mut rng = Rng::new(env.seed ^ request_id(p, 0));
    let mut junk = vec![0u8; 4096];
    rng.fill(&mut junk);
    if let Some(page) = ro_g.page(1) {
        let _ = page.copy_from_slice(0, &junk);
    }
    let grefs = Grefs {
        data: data_g.refs().first().copied().unwrap_or(BAD_GREF),
        ro: ro_g.refs().first().copied().unwrap_or(BAD_GREF),
        junk: ro_g.refs().get(1).copied().unwrap_or(BAD_GREF),
    };
    let ring_mem = ring_g.page(0).ok_or("no ring page")?;
    let mut ring = RawFront::init(ring_mem, ENTRY).map_err(|x| format!("ring: {x:?}"))?;
    let ring_ref = ring_g.refs().first().copied().unwrap_or(BAD_GREF);
    let port = env
        .ev
        .bind_unbound(be_id)
        .map_err(|x| e("event channel", x))?;
    let result = connected_attack(env, p, &mut ring, ring_ref, port, grefs, &mut rng);
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
    ring: &mut RawFront<'_>,
    ring_ref: u32,
    port: u32,
    g: Grefs,
    rng: &mut Rng,
) -> Result<Observed, String> {
    let dev = &mut *env.dev;
    let error_before = now_error(dev);
    dev.write("ring-ref", &ring_ref.to_string())?;
    dev.write("event-channel", &port.to_string())?;
    dev.write("protocol", blkif::PROTOCOL)?;
    dev.set_state(dev::INITIALISED)?;
    let (s, ok) = dev.wait_be(Duration::from_secs(15), |s| s >= dev::CONNECTED);
    if !ok || s != dev::CONNECTED {
        return Err(format!(
            "backend did not connect (state {s} {}, error {:?})",
            dev::state_name(s),
            now_error(dev)
        ));
    }
    dev.set_state(dev::CONNECTED)?;
    let sectors = dev
        .be_read("sectors")
        .and_then(|v| dev::parse_num(v.as_bytes()))
        .unwrap_or(0);
    let mut notes = Vec::new();
    if p == Phase::XsGames {
        // The nodes a backend reads once, at connect, rewritten afterwards; state flapping
        // through values that mean nothing while connected.
        dev.write("ring-ref", "4294967295")?;
        dev.write("event-channel", "65535")?;
        dev.write("protocol", "x86_32-abi")?;
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
        notes.push("ring-ref/event-channel/protocol rewritten, state flapped 6 times".into());
    }
    for slot in requests(p, g, sectors, rng) {
        ring.put(&slot);
    }
    if p == Phase::Runaway {
        let v = ring.rsp_prod().wrapping_add(ring.size() + 1000);
        ring.publish_raw(v);
        notes.push(format!("req_prod {v}"));
    } else {
        ring.publish();
    }
    let _ = env.ev.notify(port);
    let want = match p.expect() {
        Expect::Serves(v) => v.len(),
        Expect::Fails => usize::MAX,
    };
    let timeout = Duration::from_secs(8);
    let mut o = if p == Phase::EventFlood {
        let first = observe(dev, ring, 1, timeout);
        let start = Instant::now();
        let mut sent = 0u32;
        for _ in 0..FLOOD {
            if env.ev.notify(port).is_ok() {
                sent += 1;
            }
        }
        notes.push(format!(
            "{sent} notifications in {} ms",
            start.elapsed().as_millis()
        ));
        ring.put(&blkif::rw(
            OP_READ,
            1,
            request_id(p, 1),
            0,
            &[Seg::page(g.data)],
        ));
        ring.publish();
        let _ = env.ev.notify(port);
        let mut second = observe(dev, ring, 1, timeout);
        let mut all = first.responses;
        all.append(&mut second.responses);
        Observed {
            responses: all,
            notes: [first.notes, second.notes].concat(),
            ..second
        }
    } else {
        observe(dev, ring, want, timeout)
    };
    if want == usize::MAX && o.state == dev::CONNECTED {
        notes.push("still Connected after 8 s".into());
    }
    let error = now_error(dev);
    if error != error_before {
        o.error = error;
    }
    o.notes.append(&mut notes);
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_blkback::proto::{
        decode_indirect_page, parse_indirect_segments, Layout, Limits, Request, Violation,
        WireBody, X86_64,
    };
    use xen_shmem::{as_bytes_mut, zeroed};
    use xen_sys::x86_64::blkif_request;

    const G: Grefs = Grefs {
        data: 10,
        ro: 11,
        junk: 12,
    };
    const LIM: Limits = Limits {
        sectors: 2048,
        sector_size: 512,
        max_indirect_segments: 256,
    };

    /// The backend's parse of one slot; for an indirect request whose page is `junk`, the
    /// descriptors in it too.
    fn verdict(slot: &[u8; ENTRY], junk: &[u8]) -> Result<(), Violation> {
        let mut raw: blkif_request = zeroed();
        as_bytes_mut(&mut raw).copy_from_slice(slot);
        let w = X86_64::decode_request(&raw);
        Request::parse(&w, &LIM)?;
        if let WireBody::Indirect {
            nr_segments,
            indirect_grefs,
            ..
        } = w.body
        {
            if indirect_grefs[0] == G.junk {
                let mut descs = Vec::new();
                decode_indirect_page(junk, &mut descs, usize::from(nr_segments));
                parse_indirect_segments(w.sector_number, &descs, &LIM, &mut Vec::new())?;
            }
        }
        Ok(())
    }

    fn junk_page(p: Phase) -> Vec<u8> {
        let mut rng = Rng::new(1 ^ request_id(p, 0));
        let mut junk = vec![0u8; 4096];
        rng.fill(&mut junk);
        junk
    }

    #[test]
    fn failing_phases_carry_a_fatal_violation() {
        for p in Phase::ALL {
            if p.expect() != Expect::Fails || p == Phase::Runaway {
                continue;
            }
            let junk = junk_page(p);
            let slots = requests(p, G, LIM.sectors, &mut Rng::new(1 ^ request_id(p, 0)));
            assert!(!slots.is_empty(), "{p:?}");
            let fatal = slots
                .iter()
                .map(|s| verdict(s, &junk))
                .any(|v| v.is_err_and(|e| e.is_fatal()));
            assert!(fatal, "{p:?} has no fatal request");
        }
        assert!(requests(Phase::Runaway, G, 1, &mut Rng::new(1)).is_empty());
    }

    #[test]
    fn serving_phases_only_break_what_they_say() {
        for p in Phase::ALL {
            let Expect::Serves(statuses) = p.expect() else {
                continue;
            };
            let slots = requests(p, G, LIM.sectors, &mut Rng::new(3));
            // The flood phase posts its second read later.
            let expected = if p == Phase::EventFlood {
                1
            } else {
                statuses.len()
            };
            assert_eq!(slots.len(), expected, "{p:?}");
            for (s, want) in slots.iter().zip(&statuses) {
                let v = verdict(s, &[]);
                // Not one protocol violation: the device must go on.
                assert!(!v.as_ref().is_err_and(Violation::is_fatal), "{p:?}: {v:?}");
                // A parse error is always answered with an error.
                if v.is_err() {
                    assert_eq!(*want, RSP_ERROR, "{p:?}");
                }
            }
        }
    }

    #[test]
    fn ids_are_unique_per_phase() {
        let mut ids: Vec<u64> = Phase::ALL.iter().map(|&p| request_id(p, 0)).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), Phase::ALL.len());
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.name()), Some(p));
        }
        assert_eq!(Phase::parse("nope"), None);
    }

    #[test]
    fn judging() {
        let okay = Response {
            id: 1,
            operation: 0,
            status: RSP_OKAY,
        };
        let served = Observed {
            responses: vec![okay],
            state: dev::CONNECTED,
            ..Observed::default()
        };
        assert!(judge(&Expect::Serves(vec![RSP_OKAY]), &served));
        assert!(!judge(&Expect::Serves(vec![RSP_ERROR]), &served));
        assert!(!judge(&Expect::Serves(vec![RSP_OKAY, RSP_OKAY]), &served));
        assert!(!judge(&Expect::Fails, &served));
        let closed = Observed {
            state: dev::CLOSING,
            ..served.clone()
        };
        assert!(judge(&Expect::Fails, &closed));
        assert!(!judge(&Expect::Serves(vec![RSP_OKAY]), &closed));
    }
}
