//! Micro-benchmarks, each beside its baseline measured in the same run:
//!
//! * the shared ring (`xen-ring`) against Xen's C `io/ring.h` macros (`c/ring_bench.c`);
//! * grant-reference allocation (`xen-gnttab`'s lock-free `RefStack`) against a `Vec` free list;
//! * the 2-level event-channel upcall scan (`xen-evtchn` over `xensim`) with N ports pending;
//! * request parsing: blkif `Request::parse` (`xen-blkback`) and netif TX assembly
//!   (`xen-netif`), per item.

use std::time::Instant;

use xen_blkback::proto::{Limits, Request, WireRequest, WireSegment};
use xen_evtchn::{
    Abi, AbiChoice, BindOptions, Config, Error, Event, EventChannels, PageSource, ThrottleConfig,
};
use xen_gnttab::refalloc::RefStack;
use xen_kmod::shared::SharedInfo;
use xen_netif::raw::TxRequest;
use xen_netif::tx::TxAssembler;
use xen_ring::{BackRing, FrontRing};
use xen_shmem::{Page, Pod, SharedMem};
use xen_sys::consts::{BlkifOp, NetTxFlags};
use xen_tests::xensim::hypervisor::FifoSupport;
use xen_tests::xensim::{DomainConfig, DomainHandle, SimConfig, SimHypervisor};

use crate::harness::{measure, measure_pair, measure_timed, Sample};
use crate::Scale;

extern "C" {
    fn c_ring_size_3() -> u32;
    fn c_ring_size_14() -> u32;
    fn c_ring_round_trips_3(page: *mut core::ffi::c_void, n: u64, notifies: *mut u64) -> u64;
    fn c_ring_round_trips_14(page: *mut core::ffi::c_void, n: u64, notifies: *mut u64) -> u64;
}

/// One ring comparison.
#[derive(Debug, Clone)]
pub struct RingResult {
    /// Request entry size in bytes.
    pub entry: usize,
    /// Slots per one-page ring (same on both sides, checked).
    pub slots: u32,
    /// xen-ring, ns per request/response round trip.
    pub rust: Sample,
    /// io/ring.h, ns per round trip.
    pub c: Sample,
    /// Notifications per 1000 round trips (Rust, C): the suppression must agree.
    pub notifies_per_k: (f64, f64),
}

/// The Rust loop, the exact pattern of `c/ring_bench.c`. Returns (checksum, notifications).
fn rust_round_trips<const W: usize>(mem: SharedMem<'_>, n: u64) -> (u64, u64)
where
    [u64; W]: Pod,
{
    let mut f = FrontRing::<[u64; W], [u64; 2]>::init(mem).expect("front ring");
    let mut b = BackRing::<[u64; W], [u64; 2]>::attach(mem).expect("back ring");
    let (mut i, mut sum, mut nt) = (0u64, 0u64, 0u64);
    while i < n {
        while !f.is_full() {
            let mut r = [0u64; W];
            r[0] = i;
            i += 1;
            f.push_request(&r).expect("push request");
        }
        nt += u64::from(
            f.push_requests_and_check_notify()
                .expect("publish")
                .is_required(),
        );
        loop {
            b.consume_requests(u32::MAX, |r| sum = sum.wrapping_add(r[0]))
                .expect("consume requests");
            if !b.final_check_for_requests().expect("final check") {
                break;
            }
        }
        while b.push_response(&[1, 2]).is_ok() {}
        nt += u64::from(
            b.push_responses_and_check_notify()
                .expect("publish")
                .is_required(),
        );
        loop {
            f.consume_responses(u32::MAX, |r| sum = sum.wrapping_add(r[1]))
                .expect("consume responses");
            if !f.final_check_for_responses().expect("final check") {
                break;
            }
        }
    }
    (sum, nt)
}

type CLoop = unsafe extern "C" fn(*mut core::ffi::c_void, u64, *mut u64) -> u64;

fn c_round_trips(run: CLoop, n: u64) -> (u64, u64) {
    let mut page = vec![0u64; 512];
    let mut nt = 0u64;
    // SAFETY: `page` is 4096 writable bytes, 8-aligned (the C ring's alignment), owned here and
    // alive for the call; `nt` is a valid `u64` out-pointer; the C loop touches nothing else.
    let sum = unsafe { run(page.as_mut_ptr().cast(), n, &mut nt) };
    (sum, nt)
}

fn ring_case<const W: usize>(scale: &Scale, c_size: u32, c_loop: CLoop) -> RingResult
where
    [u64; W]: Pod,
{
    let page = [Page::new()];
    let mem = SharedMem::from_pages(&page);
    let slots = FrontRing::<[u64; W], [u64; 2]>::init(mem)
        .expect("ring")
        .size();
    assert_eq!(slots, c_size, "the two rings must have the same geometry");
    let n = scale.ring_items;
    let (mut rust_nt, mut c_nt) = (0, 0);
    // Alternating repetitions: the ratio stays fair when other load comes and goes.
    let (rust, c) = measure_pair(
        scale.reps,
        n,
        |n| {
            let (s, nt) = rust_round_trips::<W>(mem, n);
            rust_nt = nt;
            s
        },
        |n| {
            let (s, nt) = c_round_trips(c_loop, n);
            c_nt = nt;
            s
        },
    );
    // Both loops round n up to whole batches; count per item actually run.
    let per_k = |nt: u64| nt as f64 * 1000.0 / n as f64;
    RingResult {
        entry: W * 8,
        slots,
        rust,
        c,
        notifies_per_k: (per_k(rust_nt), per_k(c_nt)),
    }
}

/// The ring comparison with 24-byte and 112-byte (blkif-sized) request entries.
#[must_use]
pub fn ring(scale: &Scale) -> Vec<RingResult> {
    // SAFETY: pure functions of constants.
    let (s3, s14) = unsafe { (c_ring_size_3(), c_ring_size_14()) };
    vec![
        ring_case::<3>(scale, s3, c_ring_round_trips_3),
        ring_case::<14>(scale, s14, c_ring_round_trips_14),
    ]
}

/// Grant-reference allocation: (RefStack, Vec free list), ns per alloc+free pair, taking
/// `batch` references then returning them (a driver's per-request pattern).
#[must_use]
pub fn grant_refs(scale: &Scale, batch: u32) -> (Sample, Sample) {
    const CAP: u32 = 16384; // gnttab_max_frames 32 x 512 v1 entries
    let stack = RefStack::new(CAP);
    stack.push_range(0, CAP);
    let mut held = Vec::with_capacity(batch as usize);
    let rounds = |n: u64| n / u64::from(batch);
    let ours = measure(scale.reps, scale.gnt_items, |n| {
        let mut sum = 0u64;
        for _ in 0..rounds(n) {
            for _ in 0..batch {
                held.push(stack.pop().expect("free reference"));
            }
            for r in held.drain(..) {
                sum += u64::from(r);
                stack.push(r);
            }
        }
        sum
    });
    let mut free: Vec<u32> = (0..CAP).rev().collect();
    let base = measure(scale.reps, scale.gnt_items, |n| {
        let mut sum = 0u64;
        for _ in 0..rounds(n) {
            for _ in 0..batch {
                held.push(free.pop().expect("free reference"));
            }
            for r in held.drain(..) {
                sum += u64::from(r);
                free.push(r);
            }
        }
        sum
    });
    (ours, base)
}

/// Guest pages from a simulated domain (FIFO control blocks; unused with 2-level).
struct SimPages<'a>(&'a DomainHandle);

impl<'a> PageSource<'a> for SimPages<'a> {
    fn alloc_page(&mut self) -> Result<(SharedMem<'a>, u64), Error> {
        let gfn = self.0.alloc_page().ok_or(Error::NoMemory)?;
        let page = self.0.page(gfn).ok_or(Error::NoMemory)?;
        Ok((page, gfn))
    }
}

/// One event-channel scan size.
#[derive(Debug, Clone, Copy)]
pub struct ScanResult {
    /// Ports bound.
    pub bound: u32,
    /// Ports pending at the upcall.
    pub pending: u32,
    /// ns per delivered event (the `poll` calls only; raising is untimed).
    pub per_event: Sample,
    /// The ABI the channels ended up using (checked against the one asked for).
    pub abi: Abi,
}

/// The upcall scan: `bound` IPI ports on vCPU 0, every `stride`-th one raised through the
/// simulator, then `EventChannels::poll` until all are delivered. `fifo` selects the FIFO ABI
/// (xensim implements `EVTCHNOP_init_control`), else the 2-level bitmaps.
#[must_use]
pub fn evtchn_scan(scale: &Scale, bound: u32, stride: u32, fifo: bool) -> ScanResult {
    let sim = SimHypervisor::new(SimConfig {
        fifo: if fifo {
            FifoSupport::Supported
        } else {
            FifoSupport::Refuse
        },
        ..SimConfig::default()
    });
    let dom = sim.create_domain(DomainConfig::dom0()).expect("domain");
    let shared = SharedInfo::new(dom.shared_info()).expect("shared_info");
    let vcpu0 = shared.legacy_vcpu_info(0).expect("vcpu_info");
    let cfg = Config {
        abi: if fifo {
            AbiChoice::PreferFifo
        } else {
            AbiChoice::TwoLevel
        },
        max_vcpus: 1,
        throttle: ThrottleConfig {
            max_per_window: u32::MAX,
            ..ThrottleConfig::default()
        },
        ..Config::default()
    };
    let mut ec = EventChannels::new(&dom, SimPages(&dom), shared, vcpu0, cfg).expect("evtchn");
    let abi = ec.abi();
    assert_eq!(abi == Abi::Fifo, fifo, "the ABI asked for");
    let ports: Vec<u32> = (0..bound)
        .map(|i| {
            ec.bind_ipi(0, BindOptions::new(u64::from(i)))
                .expect("bind")
        })
        .collect();
    let raised: Vec<u32> = ports.iter().copied().step_by(stride as usize).collect();
    let pending = raised.len() as u32;
    let mut now = 0u64;
    let mut out = [Event::default(); 64];
    let per_event = measure_timed(scale.reps, u64::from(pending) * scale.scan_rounds, |_| {
        let mut ns = 0.0;
        for _ in 0..scale.scan_rounds {
            for &p in &raised {
                ec.notify(p).expect("notify");
            }
            sim.run_until_idle();
            now += 1_000_000_000;
            let t = Instant::now();
            let mut got = 0u32;
            while got < pending {
                let r = ec.poll(0, now, &mut out).expect("poll");
                assert!(r.delivered > 0, "pending events not delivered");
                got += r.delivered as u32;
            }
            ns += t.elapsed().as_secs_f64() * 1e9;
        }
        ns
    });
    ScanResult {
        bound,
        pending,
        per_event,
        abi,
    }
}

/// blkif request parse and validation, ns per request: a mix of 1..=11-segment reads and
/// writes at varied sectors (all valid).
#[must_use]
pub fn blkif_parse(scale: &Scale) -> Sample {
    let lim = Limits {
        sectors: 1 << 30,
        sector_size: 512,
        max_indirect_segments: 256,
    };
    let reqs: Vec<WireRequest> = (0..1024u64)
        .map(|i| {
            let n = 1 + (i % 11) as usize;
            let segs: Vec<WireSegment> = (0..n)
                .map(|s| WireSegment {
                    gref: (i * 11 + s as u64) as u32,
                    first_sect: 0,
                    last_sect: 7,
                })
                .collect();
            let op = if i % 2 == 0 {
                BlkifOp::Read
            } else {
                BlkifOp::Write
            };
            WireRequest::rw(op, i, 0, (i * 7919) % (1 << 29) * 8, &segs)
        })
        .collect();
    measure(scale.reps, scale.parse_items, |n| {
        let mut sum = 0u64;
        for i in 0..n {
            let w = &reqs[(i % 1024) as usize];
            match Request::parse(std::hint::black_box(w), &lim) {
                Ok(r) => sum = sum.wrapping_add(r.id),
                Err(_) => unreachable!("valid request refused"),
            }
        }
        sum
    })
}

/// netif TX assembly, ns per slot: single-slot 64-byte packets, and 3-slot packets.
#[must_use]
pub fn netif_tx(scale: &Scale, slots_per_packet: u16) -> Sample {
    let packet: Vec<TxRequest> = (0..slots_per_packet)
        .map(|s| {
            let last = s + 1 == slots_per_packet;
            let flags = if last {
                NetTxFlags::empty()
            } else {
                NetTxFlags::MORE_DATA
            };
            TxRequest {
                gref: u32::from(s) + 10,
                offset: 0,
                flags: flags.bits(),
                id: s,
                size: if s == 0 { 64 * slots_per_packet } else { 64 },
            }
        })
        .collect();
    let mut asm = TxAssembler::new(true);
    measure(scale.reps, scale.parse_items, |n| {
        let mut sum = 0u64;
        let mut i = 0u64;
        while i < n {
            for slot in &packet {
                i += 1;
                if let Some(p) = asm.push(std::hint::black_box(slot)).expect("valid framing") {
                    sum += p.total() as u64;
                }
            }
        }
        sum
    })
}
