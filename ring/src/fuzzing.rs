//! Fuzz-target bodies (feature `fuzzing`), shared by the cargo-fuzz project in `tests/fuzz` and
//! by the deterministic replay test in `xen-tests`, so the same checks run in the normal suite.
//!
//! Each body decodes its input as a configuration followed by a sequence of operations. Both
//! ends of a ring are real (so the happy path is reachable), and a hostile peer interleaves
//! arbitrary writes to the shared indices and bodies, optionally starting from arbitrary shared
//! memory. A panic is a finding. Checked after every operation:
//!
//! * nothing panics, whatever the memory holds;
//! * neither end ever holds more than a ring's worth: `unanswered <= size`,
//!   `outstanding <= size`, responses consumed `<=` requests published; stream transfers never
//!   exceed the buffer or the caller's slice;
//! * a fault is sticky (the same fault is returned forever after);
//! * while the peer only scribbles bodies, no fault is reported; while nothing is scribbled,
//!   every request and response arrives intact and in order, and no wake-up is lost.

use xen_shmem::{as_bytes_mut, zeroed, Page, Pod, SharedMem};

use crate::interface::{StreamLayout, CONSOLE_IN, CONSOLE_OUT, XENSTORE_REQ, XENSTORE_RSP};
use crate::sring::{HEADER_SIZE, REQ_EVENT, REQ_PROD, RSP_EVENT, RSP_PROD};
use crate::{BackRing, Fault, FrontRing, PushError, StreamReader, StreamWriter};

/// A cursor over the fuzz input that yields zeroes once exhausted.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

/// A message carrying sequence number `seq` in its first bytes (little-endian, truncated to
/// the message size) and a marker in the rest.
fn make<T: Pod>(seq: u64) -> T {
    let mut v = zeroed::<T>();
    for (i, b) in as_bytes_mut(&mut v).iter_mut().enumerate() {
        *b = match seq.to_le_bytes().get(i) {
            Some(&s) => s,
            None => 0xa5,
        };
    }
    v
}

/// Records a fault and checks stickiness.
fn note_fault(slot: &mut Option<Fault>, r: Option<Fault>) {
    if let Some(f) = r {
        if let Some(prev) = *slot {
            assert_eq!(prev, f, "fault changed");
        }
        *slot = Some(f);
    }
}

fn err_of<T>(r: &Result<T, Fault>) -> Option<Fault> {
    r.as_ref().err().copied()
}

/// The shared-ring body: interprets `data` and drives a front and a back ring.
pub fn ring_consumer(data: &[u8]) {
    let mut input = Input { data };
    let cfg = input.u8();
    match (cfg >> 1) % 4 {
        0 => run_ring::<u64, u64>(cfg, &mut input),
        1 => run_ring::<[u32; 3], u64>(cfg, &mut input),
        2 => run_ring::<[u8; 5], [u8; 3]>(cfg, &mut input),
        _ => run_ring::<[u64; 14], [u64; 2]>(cfg, &mut input),
    }
}

fn run_ring<Req: Pod + PartialEq + core::fmt::Debug, Rsp: Pod + PartialEq + core::fmt::Debug>(
    cfg: u8,
    input: &mut Input<'_>,
) {
    let store = [Page::new(), Page::new()];
    let pages = 1 + usize::from(cfg & 1);
    let mut mem = SharedMem::from_pages(&store[..pages]);
    if cfg & 0x40 != 0 {
        // A small ring (wraps and fills often): header + 1..=16 entries' worth of bytes.
        let entries = 1 + usize::from(input.u8() % 16);
        let len =
            (HEADER_SIZE + entries * crate::sring::entry_size::<Req, Rsp>()).next_multiple_of(4);
        mem = match mem.subrange(0, len) {
            Ok(m) => m,
            Err(_) => return,
        };
    }
    let start = match cfg & 0x30 {
        0x00 => 0,
        0x10 => u32::MAX - u32::from(input.u8() % 64),
        _ => input.u32(),
    };
    let arbitrary_memory = cfg & 0x80 != 0;

    let (mut front, back) = if arbitrary_memory {
        // Arbitrary initial contents, then attach both ends without initialising.
        let mut buf = [0u8; 64];
        let mut off = 0;
        while off < mem.len() && !input.is_empty() {
            let n = usize::from(input.u8() % 64) + 1;
            let n = n.min(mem.len() - off);
            for b in &mut buf[..n] {
                *b = input.u8();
            }
            let _ = mem.copy_from_slice(off, &buf[..n]);
            off += n;
            if input.u8() & 1 == 0 {
                break;
            }
        }
        let Ok(front) = FrontRing::<Req, Rsp>::attach_at(mem, start) else {
            return;
        };
        (front, BackRing::<Req, Rsp>::attach(mem))
    } else {
        let Ok(front) = FrontRing::<Req, Rsp>::init_at(mem, start) else {
            return;
        };
        let back = BackRing::<Req, Rsp>::attach(mem);
        assert!(back.is_ok(), "back attach failed on a fresh ring: {back:?}");
        (front, back)
    };
    let Ok(mut back) = back else {
        // Refusing garbage at attach is correct; a front alone is still exercised below.
        return run_front_alone(front, mem, input);
    };
    let size = u64::from(front.size());

    let mut header_scribbled = arbitrary_memory;
    let mut body_scribbled = false;
    // Totals (absolute counts; the model).
    let (mut pushed, mut published, mut req_taken) = (0u64, 0u64, 0u64);
    let (mut responded, mut rsp_published, mut rsp_taken) = (0u64, 0u64, 0u64);
    let (mut front_fault, mut back_fault) = (None, None);
    let (mut back_asleep, mut front_asleep) = (false, false);

    for _ in 0..256 {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let arg = input.u8();
        let clean = !header_scribbled && !body_scribbled;
        // Ten well-behaved operations (0..=9) and, more rarely, two hostile ones (10, 11).
        let kind = match op % 20 {
            k @ 0..=17 => k % 10,
            k => k - 8,
        };
        match kind {
            0 => {
                for _ in 0..=(arg % 8) {
                    match front.push_request(&make::<Req>(pushed)) {
                        Ok(()) => pushed += 1,
                        Err(PushError::Full) => {
                            assert_eq!(pushed - rsp_taken, size, "Full with free slots");
                            break;
                        }
                        Err(PushError::Fault(f)) => {
                            note_fault(&mut front_fault, Some(f));
                            break;
                        }
                    }
                }
            }
            1 => {
                let had_new = pushed > published;
                let r = front.push_requests_and_check_notify();
                note_fault(&mut front_fault, err_of(&r));
                if let Ok(n) = r {
                    published = pushed;
                    if clean && back_asleep && had_new {
                        assert!(n.is_required(), "lost wake-up of the backend");
                    }
                    if n.is_required() {
                        back_asleep = false;
                    }
                }
            }
            2 | 3 => {
                front_asleep = false;
                let mut check = |rsp: Rsp| {
                    if clean {
                        assert_eq!(rsp, make::<Rsp>(rsp_taken), "response corrupted");
                    }
                    rsp_taken += 1;
                };
                if kind == 2 {
                    for _ in 0..=(arg % 8) {
                        match front.pop_response() {
                            Ok(Some(rsp)) => check(rsp),
                            Ok(None) => break,
                            Err(f) => {
                                note_fault(&mut front_fault, Some(f));
                                break;
                            }
                        }
                    }
                } else {
                    let r = front.consume_responses(u32::from(arg % 16), check);
                    note_fault(&mut front_fault, err_of(&r));
                    if let Ok(n) = r {
                        assert!(n <= u32::from(arg % 16), "budget exceeded");
                    }
                }
            }
            4 => {
                let r = front.final_check_for_responses();
                note_fault(&mut front_fault, err_of(&r));
                if clean {
                    assert_eq!(r, Ok(rsp_published > rsp_taken));
                }
                front_asleep = r == Ok(false);
            }
            5 | 6 => {
                back_asleep = false;
                let mut check = |req: Req| {
                    if clean {
                        assert_eq!(req, make::<Req>(req_taken), "request corrupted");
                    }
                    req_taken += 1;
                };
                if kind == 5 {
                    for _ in 0..=(arg % 8) {
                        match back.pop_request() {
                            Ok(Some(req)) => check(req),
                            Ok(None) => break,
                            Err(f) => {
                                note_fault(&mut back_fault, Some(f));
                                break;
                            }
                        }
                    }
                } else {
                    let r = back.consume_requests(u32::from(arg % 16), check);
                    note_fault(&mut back_fault, err_of(&r));
                    if let Ok(n) = r {
                        assert!(n <= u32::from(arg % 16), "budget exceeded");
                    }
                }
            }
            7 => {
                for _ in 0..=(arg % 8) {
                    match back.push_response(&make::<Rsp>(responded)) {
                        Ok(()) => responded += 1,
                        Err(PushError::Full) => {
                            assert_eq!(responded, req_taken, "Full with unanswered requests");
                            break;
                        }
                        Err(PushError::Fault(f)) => {
                            note_fault(&mut back_fault, Some(f));
                            break;
                        }
                    }
                }
            }
            8 => {
                let had_new = responded > rsp_published;
                let r = back.push_responses_and_check_notify();
                note_fault(&mut back_fault, err_of(&r));
                if let Ok(n) = r {
                    rsp_published = responded;
                    if clean && front_asleep && had_new {
                        assert!(n.is_required(), "lost wake-up of the frontend");
                    }
                    if n.is_required() {
                        front_asleep = false;
                    }
                }
            }
            9 => {
                let r = back.final_check_for_requests();
                note_fault(&mut back_fault, err_of(&r));
                if clean {
                    assert_eq!(r, Ok(published > req_taken));
                }
                back_asleep = r == Ok(false);
            }
            10 => {
                // Hostile peer: an index word, arbitrary or near its current value.
                let off = [REQ_PROD, REQ_EVENT, RSP_PROD, RSP_EVENT][usize::from(arg % 4)];
                let v = if arg & 4 != 0 {
                    input.u32()
                } else {
                    let cur = mem.load_relaxed_u32(off).unwrap_or(0);
                    cur.wrapping_add(u32::from(input.u8())).wrapping_sub(128)
                };
                let _ = mem.store_release_u32(off, v);
                header_scribbled = true;
            }
            _ => {
                // Hostile peer: bytes of the entries array.
                let off = HEADER_SIZE + usize::from(input.u16()) % (mem.len() - HEADER_SIZE);
                let mut bytes = [0u8; 16];
                let n = usize::from(arg % 16).min(mem.len() - off);
                for b in &mut bytes[..n] {
                    *b = input.u8();
                }
                let _ = mem.copy_from_slice(off, &bytes[..n]);
                body_scribbled = true;
            }
        }

        // Bounds that hold whatever the peer does.
        assert!(
            u64::from(front.outstanding()) <= size,
            "front over-committed"
        );
        assert!(
            u64::from(back.unanswered()) <= size,
            "back holds more than a ring"
        );
        assert_eq!(u64::from(back.unanswered()), req_taken - responded);
        assert!(
            rsp_taken <= published,
            "more responses consumed than requests published"
        );
        assert!(front.free_requests() <= front.size());
        // Stickiness is observable through `fault()` too.
        assert_eq!(front.fault(), front_fault);
        assert_eq!(back.fault(), back_fault);
        if !header_scribbled {
            assert_eq!(front_fault, None, "front faulted on a well-behaved backend");
            assert_eq!(back_fault, None, "back faulted on a well-behaved frontend");
        }
    }
}

fn run_front_alone<Req: Pod, Rsp: Pod>(
    mut front: FrontRing<'_, Req, Rsp>,
    mem: SharedMem<'_>,
    input: &mut Input<'_>,
) {
    let mut fault = None;
    for i in 0..64u64 {
        if input.is_empty() {
            break;
        }
        match input.u8() % 4 {
            0 => {
                let _ = front.push_request(&make::<Req>(i));
                let r = front.push_requests_and_check_notify();
                note_fault(&mut fault, err_of(&r));
            }
            1 => {
                let r = front.pop_response();
                note_fault(&mut fault, err_of(&r));
            }
            2 => {
                let r = front.final_check_for_responses();
                note_fault(&mut fault, err_of(&r));
            }
            _ => {
                let _ = mem.store_release_u32(RSP_PROD, input.u32());
            }
        }
        assert!(front.outstanding() <= front.size());
        assert_eq!(front.fault(), fault);
    }
}

/// The byte-stream body: a writer and a reader on one direction of an interface page, with a
/// hostile peer scribbling indices and data.
pub fn interface_ring(data: &[u8]) {
    let mut input = Input { data };
    let cfg = input.u8();
    let layout = match cfg % 5 {
        0 => XENSTORE_REQ,
        1 => XENSTORE_RSP,
        2 => CONSOLE_IN,
        3 => CONSOLE_OUT,
        _ => StreamLayout {
            data: 3,
            size: 16,
            cons: 20,
            prod: 24,
        },
    };
    let page = Page::new();
    let mem = SharedMem::from_pages(core::slice::from_ref(&page));
    let start = match (cfg >> 3) % 3 {
        0 => 0,
        1 => u32::MAX - u32::from(input.u16() % 4096),
        _ => input.u32(),
    };
    // Index scribbles may cause faults; data scribbles only corrupt data.
    let mut scribbled = false;
    let mut data_scribbled = false;
    if cfg & 0x80 != 0 {
        // Arbitrary indices at attach.
        let _ = mem.store_relaxed_u32(layout.prod, input.u32());
        let _ = mem.store_relaxed_u32(layout.cons, input.u32());
        scribbled = true;
    } else {
        let _ = mem.store_relaxed_u32(layout.prod, start);
        let _ = mem.store_relaxed_u32(layout.cons, start);
    }
    let (Ok(mut w), Ok(mut r)) = (
        StreamWriter::attach(mem, layout),
        StreamReader::attach(mem, layout),
    ) else {
        assert!(scribbled, "attach refused consistent indices");
        return;
    };
    let size = u64::from(layout.size);
    let (mut written, mut read) = (0u64, 0u64);
    let (mut wf, mut rf) = (None, None);
    let mut buf = [0u8; 2 * 2048 + 16];
    let pattern = |k: u64| (k.wrapping_mul(7) ^ (k >> 8)).to_le_bytes()[0];

    for _ in 0..256 {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let len = usize::from(input.u16()) % buf.len();
        // Three well-behaved operations and, more rarely, two hostile ones.
        let kind = match op % 12 {
            k @ 0..=9 => k % 3,
            k => k - 7,
        };
        match kind {
            0 => {
                for (i, b) in buf[..len].iter_mut().enumerate() {
                    *b = pattern(written + i as u64);
                }
                let res = w.write(&buf[..len]);
                note_fault(&mut wf, err_of(&res));
                if let Ok(n) = res {
                    assert!(n <= len, "wrote more than given");
                    assert!(n as u64 <= size, "wrote more than the buffer");
                    written += n as u64;
                }
            }
            1 => {
                let res = r.read(&mut buf[..len]);
                note_fault(&mut rf, err_of(&res));
                if let Ok(n) = res {
                    assert!(n <= len, "read more than asked");
                    assert!(n as u64 <= size, "read more than the buffer");
                    if !scribbled && !data_scribbled {
                        for (i, b) in buf[..n].iter().enumerate() {
                            assert_eq!(*b, pattern(read + i as u64), "stream corrupted");
                        }
                    }
                    read += n as u64;
                }
            }
            2 => {
                let res = w.space();
                note_fault(&mut wf, err_of(&res));
                if let Ok(s) = res {
                    assert!(u64::from(s) <= size);
                }
                let res = r.available();
                note_fault(&mut rf, err_of(&res));
                if let Ok(a) = res {
                    assert!(u64::from(a) <= size);
                }
            }
            3 => {
                // Hostile peer: an index, arbitrary or near its current value.
                let how = input.u8();
                let off = if how & 1 != 0 {
                    layout.prod
                } else {
                    layout.cons
                };
                let v = if how & 2 != 0 {
                    input.u32()
                } else {
                    let cur = mem.load_relaxed_u32(off).unwrap_or(0);
                    cur.wrapping_add(u32::from(input.u16() % 4096))
                        .wrapping_sub(2048)
                };
                let _ = mem.store_release_u32(off, v);
                scribbled = true;
            }
            _ => {
                // Hostile peer: data bytes.
                let off = layout.data + len % (layout.size as usize);
                let end = layout.data + layout.size as usize;
                let _ = mem.fill(off, usize::from(input.u8() % 8).min(end - off), input.u8());
                data_scribbled = true;
            }
        }
        assert_eq!(w.fault(), wf);
        assert_eq!(r.fault(), rf);
        if !scribbled {
            assert_eq!((wf, rf), (None, None), "fault without a hostile peer");
            assert!(read <= written && written - read <= size);
            assert_eq!(u64::from(w.prod().wrapping_sub(r.cons())), written - read);
        }
    }
}
