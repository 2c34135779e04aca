//! Fuzz-target bodies for the block drivers, shared by the cargo-fuzz targets in
//! `tests/fuzz` (`blkback_ring`, `blkfront_responses`) and the deterministic replay in
//! `tests/tests/blk_fuzz_replay.rs`.
//!
//! Each body reads a configuration and then a sequence of operations from the input; a
//! hostile peer is driven byte by byte against the real driver on the mock benches. A panic
//! is a finding; so is a broken invariant (checked with `assert!`):
//!
//! * backend: every response has a defined status and no more responses arrive than
//!   requests were pushed; the persistent cache stays within its bound; after the frontend
//!   closes, no grant stays mapped and no slot reserved unless an unmap failed (counted);
//! * frontend: a completion is for a submitted bio and arrives once; a completed bio's pages
//!   are granted to nobody; after a failure the device stays failed; nothing leaks once the
//!   backend has let go of everything.
#![expect(
    clippy::cast_possible_truncation,
    reason = "fuzz input decoding: every value is reduced modulo a small bound first"
)]

use std::collections::{BTreeMap, BTreeSet};

use xen_blkback::proto::{Abi, WireBody, WireRequest, WireResponse, WireSegment};
use xen_blkback::{BackendConfig, DataPath};
use xen_blkfront::{Bio, BioOp, BufSeg, FrontendConfig};
use xen_sys::consts::BlkifOp;

use super::bench::{gref_of, BackBench, FrontBench, RawBackConfig, RawFrontConfig, DATA_BASE};
use super::mock::{grant_entry, set_mapped, FRONT_PAGES, GT_FRAMES};

/// A cursor over the fuzz input that yields zeroes once exhausted.
#[derive(Debug)]
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

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    fn below(&mut self, n: u32) -> u32 {
        if n == 0 {
            0
        } else {
            self.u32() % n
        }
    }
}

/// Data pages the raw frontend uses (all zeroed by the bench).
const DATA_PAGES: u32 = 32;

/// A grant the raw frontend might use: mostly valid data pages, sometimes anything.
fn gref(inp: &mut Input<'_>) -> u32 {
    match inp.u8() % 8 {
        0 => inp.u32(),
        1 => 100 + inp.below(64),
        _ => gref_of(DATA_BASE + inp.below(DATA_PAGES) as usize),
    }
}

fn sector(inp: &mut Input<'_>) -> u64 {
    match inp.u8() % 8 {
        0 => inp.u64(),
        1 => 4096 - u64::from(inp.below(64)),
        _ => u64::from(inp.below(4096)),
    }
}

fn wire_segment(inp: &mut Input<'_>) -> WireSegment {
    let (f, l) = if inp.u8() % 8 == 0 {
        (inp.u8(), inp.u8())
    } else {
        let f = inp.below(8) as u8;
        (f, f + inp.below(8 - u32::from(f)) as u8)
    };
    WireSegment {
        gref: gref(inp),
        first_sect: f,
        last_sect: l,
    }
}

fn request(inp: &mut Input<'_>, id: u64) -> WireRequest {
    let op = match inp.u8() % 16 {
        0 => BlkifOp::FlushDiskcache,
        1 => BlkifOp::WriteBarrier,
        2 | 3 => BlkifOp::Discard,
        4 | 5 => BlkifOp::Indirect,
        6..=10 => BlkifOp::Write,
        _ => BlkifOp::Read,
    };
    let mut w = match op {
        BlkifOp::Discard => {
            let s = sector(inp);
            let n = if inp.u8() % 4 == 0 {
                inp.u64()
            } else {
                u64::from(inp.below(64))
            };
            WireRequest::discard(id, 0, s, n, inp.u8() & 1 != 0)
        }
        BlkifOp::Indirect => {
            let nr = match inp.u8() % 4 {
                0 => inp.u16(),
                _ => 1 + inp.below(40) as u16,
            };
            let grefs: Vec<u32> = (0..8).map(|_| gref(inp)).collect();
            let inner = if inp.u8() % 8 == 0 {
                BlkifOp::Discard
            } else if inp.u8() & 1 == 0 {
                BlkifOp::Read
            } else {
                BlkifOp::Write
            };
            WireRequest::indirect(inner, id, 0, sector(inp), nr, &grefs)
        }
        _ => {
            let n = if matches!(op, BlkifOp::Read | BlkifOp::Write) {
                1 + inp.below(11)
            } else {
                inp.below(3)
            };
            let segs: Vec<WireSegment> = (0..n).map(|_| wire_segment(inp)).collect();
            WireRequest::rw(op, id, 0, sector(inp), &segs)
        }
    };
    match inp.u8() % 32 {
        0 => w.operation = inp.u8(),
        1 => {
            if let WireBody::Rw { nr_segments, .. } = &mut w.body {
                *nr_segments = inp.u8();
            }
        }
        _ => {}
    }
    w
}

/// Fills data page `p` with segment descriptors (for indirect requests) or bytes.
fn fill_page(b: &BackBench, inp: &mut Input<'_>) {
    let p = DATA_BASE + inp.below(DATA_PAGES) as usize;
    let page = b.data_page(p);
    let n = 1 + inp.below(64) as usize;
    let mut img = vec![0u8; n * 8];
    for chunk in img.chunks_mut(8) {
        let s = wire_segment(inp);
        chunk[..4].copy_from_slice(&s.gref.to_le_bytes());
        chunk[4] = s.first_sect;
        chunk[5] = s.last_sect;
    }
    let _ = page.copy_from_slice(0, &img);
}

/// The backend against a hostile frontend (see the module docs).
///
/// # Panics
/// On a broken invariant.
pub fn blkback_ring(data: &[u8]) {
    let mut inp = Input { data };
    let c = inp.u8();
    let cfg = BackendConfig {
        max_ring_page_order: 2,
        max_queues: 2,
        max_indirect_segments: if c & 1 != 0 { 32 } else { 0 },
        persistent: c & 2 != 0,
        max_persistent_grants: 24,
        data_path: if c & 4 != 0 {
            DataPath::Copy
        } else {
            DataPath::Map
        },
        budget: 1 + u32::from(inp.u8() % 16),
        copy_pool_pages: 64,
    };
    let raw = RawFrontConfig {
        abi: if c & 8 != 0 { Abi::X86_32 } else { Abi::X86_64 },
        order: u32::from((c >> 4) % 3),
        queues: 1 + u32::from((c >> 6) & 1),
        persistent: c & 0x80 != 0,
        legacy_pages: inp.u8() & 1 != 0,
    };
    let mut b = BackBench::new(cfg, 4096, inp.u8() % 16 == 0);
    if !b.connect(raw) {
        return;
    }
    let queues = raw.queues as usize;
    let mut pushed = vec![0u64; queues];
    let mut answered = vec![0u64; queues];
    let mut next_id = 0u64;
    for _ in 0..256 {
        if inp.is_empty() {
            break;
        }
        let q = inp.below(raw.queues) as usize;
        match inp.u8() % 12 {
            0..=3 => {
                next_id += 1;
                let w = request(&mut inp, next_id);
                if b.push(q, &w) {
                    pushed[q] += 1;
                }
            }
            4 => {
                // Scribble on the ring: bodies or indices.
                let ring = b.ring_mem(q);
                let off = (inp.below(ring.len() as u32) as usize) & !3;
                let _ = ring.store_relaxed_u32(off, inp.u32());
            }
            5 => {
                let mut st = b.hv.state();
                match inp.u8() % 4 {
                    0 => st.map_script.push_back(-(i16::from(inp.u8() % 13))),
                    1 => st.unmap_script.push_back(-(i16::from(inp.u8() % 13))),
                    2 => st.copy_script.push_back(-(i16::from(inp.u8() % 13))),
                    _ => st.abort_map_after = Some(usize::from(inp.u8() % 8)),
                }
            }
            6 => fill_page(&b, &mut inp),
            7 => {
                let s = u64::from(inp.below(8192));
                if let Some(st) = b.be.borrow_mut().store_mut() {
                    st.resize(s);
                }
                let be = b.be.clone();
                b.bus
                    .with_device(&mut b.xs, super::bench::BE_DIR, |_, xs, dev| {
                        let _ = be.borrow_mut().check_resize(xs, dev);
                    });
            }
            _ => {
                b.poll();
                for (qi, n) in answered.iter_mut().enumerate() {
                    for r in b.responses(qi) {
                        assert!((-2..=0).contains(&r.status), "bad status {r:?}");
                        *n += 1;
                    }
                }
            }
        }
        let be = b.be.borrow();
        assert!(be.persistent_grants() <= 24 * queues);
    }
    b.poll();
    for (qi, n) in answered.iter_mut().enumerate() {
        *n += b.responses(qi).len() as u64;
    }
    for (a, p) in answered.iter().zip(&pushed) {
        assert!(a <= p, "{a} responses for {p} requests");
    }
    // The frontend goes away: everything is released (unless an unmap failed).
    b.close();
    let stuck = b.be.borrow().stats().stuck;
    let (maps, slots) = b.leftovers();
    if stuck == 0 {
        assert_eq!((maps, slots), (0, 0), "{:?}", b.be.borrow());
    } else {
        assert!(maps as u64 <= stuck);
    }
}

/// What the raw backend took from the ring.
#[derive(Debug, Clone)]
struct Taken {
    req: WireRequest,
    grefs: Vec<u32>,
}

fn grefs_of(w: &WireRequest) -> Vec<u32> {
    match w.body {
        WireBody::Rw { nr_segments, seg } => seg
            .iter()
            .take(usize::from(nr_segments).min(11))
            .map(|s| s.gref)
            .collect(),
        WireBody::Indirect { indirect_grefs, .. } => indirect_grefs.to_vec(),
        WireBody::Discard { .. } => Vec::new(),
    }
}

/// The pages some live grant of the frontend gives domain 0 access to (the table read once).
fn granted_pages(b: &FrontBench) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let mut t = vec![0u8; GT_FRAMES * 4096];
    let Some(v) = b.hv.pages(super::mock::GT_BASE, GT_FRAMES) else {
        return out;
    };
    if v.copy_to_slice(0, &mut t).is_err() {
        return out;
    }
    for e in t.chunks_exact(8).skip(8) {
        let w0 = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let frame = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        if w0 & 1 != 0 && w0 >> 16 == 0 {
            out.insert(u64::from(frame));
        }
    }
    out
}

/// The frontend against a hostile backend (see the module docs).
///
/// # Panics
/// On a broken invariant.
pub fn blkfront_responses(data: &[u8]) {
    let mut inp = Input { data };
    let c = inp.u8();
    let fcfg = FrontendConfig {
        abi: if c & 1 != 0 { Abi::X86_32 } else { Abi::X86_64 },
        persistent: c & 2 != 0,
        max_indirect_segments: 32,
        max_bios: 64,
        ..FrontendConfig::default()
    };
    let mut b = FrontBench::new(fcfg, c & 4 == 0);
    let bcfg = RawBackConfig {
        sectors: 2048,
        indirect: if c & 8 != 0 { 32 } else { 0 },
        persistent: c & 16 != 0,
        info: u32::from(inp.u8() % 8),
        flush: c & 32 != 0,
        max_ring_pages: Some(1 << (c >> 6)),
    };
    if !b.connect(bcfg) {
        return;
    }
    let mut next_tag = 0u64;
    let mut submitted: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut completed: BTreeSet<u64> = BTreeSet::new();
    let mut taken: Vec<Taken> = Vec::new();
    let mut failed = false;
    for _ in 0..256 {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 10 {
            0..=2 => {
                next_tag += 1;
                let op = match inp.u8() % 8 {
                    0 => BioOp::Flush,
                    1 => BioOp::Discard {
                        secure: inp.u8() & 1 != 0,
                    },
                    2 => BioOp::Barrier,
                    3 | 4 => BioOp::Write,
                    _ => BioOp::Read,
                };
                let n = 1 + inp.below(40) as usize;
                let mut segs = Vec::new();
                let mut pages = Vec::new();
                if matches!(op, BioOp::Read | BioOp::Write | BioOp::Barrier) {
                    for _ in 0..n {
                        let run = {
                            let fe = b.fe.borrow();
                            xen_blkfront::FrontendEnv::alloc_pages(fe.env(), 1)
                        };
                        let Some(run) = run else { break };
                        let f = inp.below(8) as u16;
                        let l = f + inp.below(8 - u32::from(f)) as u16;
                        pages.push(run.gfn);
                        segs.push(BufSeg {
                            gfn: run.gfn,
                            page: run.mem,
                            offset: f * 512,
                            len: (l - f + 1) * 512,
                        });
                    }
                }
                let mut bio = Bio::new(op, u64::from(inp.below(2100)), segs, next_tag);
                bio.sectors = u64::from(inp.below(64));
                let r = b.fe.borrow_mut().submit(bio);
                match r {
                    Ok(()) => {
                        submitted.insert(next_tag, pages);
                    }
                    Err((bio, _)) => {
                        let fe = b.fe.borrow();
                        for s in bio.segs {
                            xen_blkfront::FrontendEnv::free_pages(
                                fe.env(),
                                xen_blkfront::PageRun {
                                    gfn: s.gfn,
                                    count: 1,
                                    mem: s.page,
                                },
                            );
                        }
                    }
                }
            }
            3 => {
                for req in b.take_requests() {
                    let grefs = grefs_of(&req);
                    taken.push(Taken { req, grefs });
                }
            }
            4 | 5 => {
                // Respond: mostly to something taken, correctly; sometimes anything.
                let rsp = if !taken.is_empty() && inp.u8() % 8 != 0 {
                    let i = inp.below(taken.len() as u32) as usize;
                    let t = taken.swap_remove(i);
                    let status = match inp.u8() % 16 {
                        0 => -1,
                        1 => -2,
                        2 => inp.u16() as i16,
                        _ => 0,
                    };
                    let operation = if inp.u8() % 16 == 0 {
                        inp.u8()
                    } else {
                        t.req.response_operation()
                    };
                    WireResponse {
                        id: t.req.id,
                        operation,
                        status,
                    }
                } else {
                    WireResponse {
                        id: u64::from(inp.below(64)),
                        operation: inp.u8() % 8,
                        status: -i16::from(inp.u8() % 3),
                    }
                };
                b.respond(&rsp);
            }
            6 => {
                // Map or unmap a grant the backend was given (or the ring).
                let g = match taken.get(inp.below(taken.len().max(1) as u32) as usize) {
                    Some(t) if !t.grefs.is_empty() => {
                        t.grefs[inp.below(t.grefs.len() as u32) as usize]
                    }
                    _ => b.ring_ref,
                };
                set_mapped(b.hv, g, inp.u8() & 1 != 0);
            }
            7 => {
                if let Some(frame) = grant_entry(b.hv, b.ring_ref).map(|e| e.2 as usize) {
                    if frame < FRONT_PAGES {
                        let ring = b.hv.pages(frame, 1).unwrap_or_else(|| unreachable!());
                        let off = (inp.below(4096) as usize) & !3;
                        let _ = ring.store_relaxed_u32(off, inp.u32());
                    }
                }
            }
            8 => {
                let _ = b.fe.borrow().env().poll_deferred();
            }
            _ => {
                let _ = b.poll();
            }
        }
        // Completions: each once, for a submitted bio, with no live grant on its pages.
        loop {
            let c = b.fe.borrow_mut().pop_completion();
            let Some(c) = c else { break };
            let tag = c.bio.tag;
            let pages = submitted.remove(&tag).unwrap_or_else(|| {
                panic!("completion for tag {tag}, never submitted or completed twice")
            });
            assert!(completed.insert(tag));
            let live = granted_pages(&b);
            for g in &pages {
                assert!(
                    !live.contains(g),
                    "bio {tag} handed back while page {g} is granted"
                );
            }
            let fe = b.fe.borrow();
            for s in c.bio.segs {
                xen_blkfront::FrontendEnv::free_pages(
                    fe.env(),
                    xen_blkfront::PageRun {
                        gfn: s.gfn,
                        count: 1,
                        mem: s.page,
                    },
                );
            }
        }
        let now_failed = b.fe.borrow().failure().is_some();
        assert!(!failed || now_failed, "a failure is sticky");
        failed = now_failed;
    }
}
