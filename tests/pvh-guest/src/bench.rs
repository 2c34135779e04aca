//! `run=bench`: our frontends timed against Linux dom0's backends (`xen-harness bench`,
//! tests/xen-harness/src/bench.rs; issue 9: our PVH guest's frontends vs a Linux guest's
//! frontends against the same Linux backends).
//!
//! The workload is the one the harness's Linux domU runs through the same backends, so that
//! the two can be set side by side:
//!
//! - block, against dom0's xen-blkback (`xvda` on a `brd` RAM disk): for each repetition,
//!   a sequential write of `bmib` MiB in 1 MiB bios, a sequential read of the same in 1 MiB
//!   bios, and `b4k` reads of 4 KiB one at a time from sector 0 on (queue depth 1) — what
//!   the domU's `dd ... bs=1048576 oflag=direct` / `iflag=direct` and `bs=4096` do; then every
//!   MiB is read back and compared with what was written;
//! - network, against dom0's xen-netback on `xenbr0`: `necho` ICMP echo requests to dom0, one
//!   at a time (the next one when the reply is in, or after 1 s without one — what busybox
//!   `ping -A` does), with 56 and with 1400 bytes of data, `nreps` times. dom0's kernel
//!   answers them, so no dom0 process is in the loop; our guest has no TCP, and an echo
//!   exchange is the request/response workload both it and a Linux guest really run.
//!
//! Times come from Xen's system time (`vcpu_time_info` and the TSC, [`crate::time`]), in
//! nanoseconds. Each measurement is one console line dom0 collects:
//!
//! ```text
//! BENCHNS <op> c <rep> <bytes> <ns> <rc>      (op: write, read, read4k, echo56, echo1400)
//! BENCHLOST <op> c <rep> <lost of sent>
//! BENCHVERIFY c ok|differs
//! BENCHFEAT blk c ... / BENCHFEAT net c ...  (what the frontends negotiated)
//! ```
//!
//! (`c` is the path's name in the harness's tables: our frontends on Linux's backends.)

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xen_blkfront::{Bio, BioOp, BufSeg, PageRun};

use crate::blk;
use crate::events::Events;
use crate::gnt::Gnttab;
use crate::net;
use crate::pages::PagePool;
use crate::time;
use crate::xs::GuestXs;

/// The sizes, from the command line (`bmib= b4k= breps= necho= nreps=`), bounded.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// MiB per sequential transfer.
    pub mib: u32,
    /// 4 KiB reads per latency measurement.
    pub k4: u32,
    /// Repetitions of the block measurements.
    pub reps: u32,
    /// Echo requests per network measurement.
    pub echoes: u32,
    /// Repetitions of the network measurements.
    pub nreps: u32,
}

impl Sizes {
    /// Parses `key=value` words of `cmdline`; a missing or unusable value takes the default,
    /// and every value is kept within what the guest can hold (its page pool) and a run's
    /// time allows.
    pub fn parse(cmdline: &str) -> Sizes {
        let get = |key: &str, default: u32, max: u32| {
            crate::arg(cmdline, key)
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|&v| v > 0)
                .map_or(default, |v| v.min(max))
        };
        Sizes {
            mib: get("bmib", 4, 64),
            k4: get("b4k", 64, 4096),
            reps: get("breps", 3, 11),
            echoes: get("necho", 50, 1000),
            nreps: get("nreps", 3, 11),
        }
    }
}

/// Pages per 1 MiB bio.
const MIB_PAGES: u32 = 256;
/// Echo payloads: the default of `ping` and one that fills most of a 1500-byte frame.
const ECHO_SIZES: [usize; 2] = [56, 1400];

/// Nanoseconds of Xen time now (0 if the clock cannot be read: the figure is then absurd and
/// the line says so by its size, rather than the run stopping).
fn now(ev: &Events) -> u64 {
    time::now_ns(&ev.si).unwrap_or(0)
}

/// Runs the block part, then the network part; `say` prints a console line. Returns the
/// summary for the `RESULT bench` line.
///
/// # Errors
/// A part could not run at all (no connection, a failed bio, no ARP reply); what was measured
/// before that has been printed.
pub fn run(
    ev: Events,
    xs: &mut GuestXs,
    gt: &'static Gnttab,
    domid: u16,
    sizes: Sizes,
    say: &mut dyn FnMut(&str),
) -> Result<String, String> {
    // The static bump heap (4 MiB, never freed) is too small for hundreds of bios and
    // packets: take the reusing heap over the RAM above the image, as the driver domain does.
    crate::arch::heap_reuse().ok_or("no RAM above the image for a reusing heap")?;
    // One pool for both frontends: the pool's bitmap is what keeps them apart.
    let pool: &'static PagePool = Box::leak(Box::new(PagePool::new()));
    let blk = block(ev, xs, gt, domid, pool, sizes, say);
    if let Err(e) = &blk {
        say(&format!("BENCHERR blk c: {e}\n"));
    }
    let net = network(ev, xs, gt, domid, pool, sizes, say);
    if let Err(e) = &net {
        say(&format!("BENCHERR net c: {e}\n"));
    }
    say("BENCH CDONE\n");
    match (blk, net) {
        (Ok(b), Ok(n)) => Ok(format!("blk: {b}; net: {n}")),
        (b, n) => Err(format!(
            "blk: {}; net: {}",
            b.unwrap_or_else(|e| e),
            n.unwrap_or_else(|e| e)
        )),
    }
}

/// Fills `run` with a pseudo-random pattern (xorshift), so every MiB written is data.
fn fill(run: &PageRun<'static>, seed: u64) -> Result<(), String> {
    let mut x = seed | 1;
    let mut page = [0u8; 4096];
    for p in 0..run.count {
        for chunk in page.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let off = usize::try_from(p).map_err(|_| "page index")? * 4096;
        run.mem
            .copy_from_slice(off, &page)
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

/// The block measurements against dom0's xen-blkback.
fn block(
    ev: Events,
    xs: &mut GuestXs,
    gt: &'static Gnttab,
    domid: u16,
    pool: &'static PagePool,
    s: Sizes,
    say: &mut dyn FnMut(&str),
) -> Result<String, String> {
    let (mut d, started, counters) = blk::start(ev, xs, gt, domid, pool);
    started?;
    d.run_until(60_000, |d| d.fe.borrow().is_connected())
        .map_err(|e| format!("connecting: {e}"))?;
    let (disk, neg) = {
        let fe = d.fe.borrow();
        (fe.disk(), fe.negotiated())
    };
    let disk = disk.ok_or("connected without disk info")?;
    let neg = neg.ok_or("connected without negotiated features")?;
    let sectors_needed = u64::from(s.mib) * 2048;
    if disk.sectors * u64::from(disk.sector_size) / 512 < sectors_needed {
        return Err(format!(
            "disk of {} sectors is smaller than {} MiB",
            disk.sectors, s.mib
        ));
    }
    let feat = format!(
        "abi {:?} queues {} ring-order {} persistent {} indirect {} max-segs {} flush {}",
        neg.abi,
        neg.queues,
        neg.ring_page_order,
        neg.persistent,
        neg.indirect,
        neg.max_segments,
        disk.flush
    );
    say(&format!(
        "BENCHFEAT blk c pvh-xvda sectors={} {feat}\n",
        disk.sectors
    ));
    let (wrun, wsegs) = blk::buffer(d.fe.borrow().env(), MIB_PAGES)?;
    let (rrun, rsegs) = blk::buffer(d.fe.borrow().env(), MIB_PAGES)?;
    let outcome = (|| -> Result<(), String> {
        fill(&wrun, 0x9E37_79B9_7F4A_7C15)?;
        let mut tag = 100;
        // A bio's segment list comes back with its completion and is used again.
        let mut io =
            |d: &mut blk::Driving<'_>, op: BioOp, sector: u64, segs: &mut Vec<BufSeg<'static>>| {
                tag += 1;
                let bio = d.io(Bio::new(op, sector, core::mem::take(segs), tag))?;
                *segs = bio.segs;
                Ok::<(), String>(())
            };
        let (mut wsegs, mut rsegs) = (wsegs, rsegs);
        let mut one: Vec<BufSeg<'static>> = rsegs.iter().take(1).copied().collect();
        for rep in 1..=s.reps {
            let t0 = now(&ev);
            for i in 0..s.mib {
                // Each MiB carries its index in its first bytes (checked at the end).
                wrun.mem
                    .copy_from_slice(0, &u64::from(i).to_le_bytes())
                    .map_err(|e| format!("{e:?}"))?;
                io(&mut d, BioOp::Write, u64::from(i) * 2048, &mut wsegs)?;
            }
            let t1 = now(&ev);
            say(&format!(
                "BENCHNS write c {rep} {} {} 0\n",
                u64::from(s.mib) << 20,
                t1.saturating_sub(t0)
            ));
            let t0 = now(&ev);
            for i in 0..s.mib {
                io(&mut d, BioOp::Read, u64::from(i) * 2048, &mut rsegs)?;
            }
            let t1 = now(&ev);
            say(&format!(
                "BENCHNS read c {rep} {} {} 0\n",
                u64::from(s.mib) << 20,
                t1.saturating_sub(t0)
            ));
            let t0 = now(&ev);
            for i in 0..s.k4 {
                io(&mut d, BioOp::Read, u64::from(i) * 8, &mut one)?;
            }
            let t1 = now(&ev);
            say(&format!(
                "BENCHNS read4k c {rep} {} {} 0\n",
                u64::from(s.k4) * 4096,
                t1.saturating_sub(t0)
            ));
        }
        // Read every MiB back and compare it with what was written there, a page at a time.
        let (mut want, mut got) = ([0u8; 4096], [0u8; 4096]);
        let mut same = true;
        for i in 0..s.mib {
            io(&mut d, BioOp::Read, u64::from(i) * 2048, &mut rsegs)?;
            for p in 0..usize::try_from(MIB_PAGES).map_err(|_| "size")? {
                wrun.mem
                    .copy_to_slice(p * 4096, &mut want)
                    .map_err(|e| format!("{e:?}"))?;
                rrun.mem
                    .copy_to_slice(p * 4096, &mut got)
                    .map_err(|e| format!("{e:?}"))?;
                if p == 0 {
                    want[..8].copy_from_slice(&u64::from(i).to_le_bytes());
                }
                same &= want == got;
            }
        }
        say(if same {
            "BENCHVERIFY c ok\n"
        } else {
            "BENCHVERIFY c differs\n"
        });
        if same {
            Ok(())
        } else {
            Err(String::from("read back differs from what was written"))
        }
    })();
    pool.free(&wrun);
    pool.free(&rrun);
    outcome?;
    let stats = d.fe.borrow().stats();
    if counters.errors.get() > 0 {
        return Err(format!(
            "{} error(s) logged by the frontend; {feat}",
            counters.errors.get()
        ));
    }
    Ok(format!(
        "{feat}; {} requests ({} indirect, {} bios split)",
        stats.requests, stats.indirect, stats.splits
    ))
}

/// The echo measurements against dom0's xen-netback.
fn network(
    ev: Events,
    xs: &mut GuestXs,
    gt: &'static Gnttab,
    domid: u16,
    pool: &'static PagePool,
    s: Sizes,
    say: &mut dyn FnMut(&str),
) -> Result<String, String> {
    let (mut n, started, _removes) = net::start(ev, xs, gt, domid, pool);
    started?;
    let dom0 = net::connect(&mut n)?;
    let feat = net::features(&n)?;
    say(&format!("BENCHFEAT net c pvh-vif0 {feat}\n"));
    // Warm-up: dom0's neighbour entry for us and the bridge's forwarding entry.
    let mut seq: u16 = 1000;
    for _ in 0..3 {
        seq = seq.wrapping_add(1);
        net::echo(&mut n, dom0, seq, 56, 2000)?;
    }
    let mut lost_total = 0u32;
    for rep in 1..=s.nreps {
        for size in ECHO_SIZES {
            let mut lost = 0u32;
            let t0 = now(&ev);
            for _ in 0..s.echoes {
                seq = seq.wrapping_add(1);
                if !net::echo(&mut n, dom0, seq, size, 1000)? {
                    lost += 1;
                }
            }
            let t1 = now(&ev);
            let rc = u32::from(lost == s.echoes);
            say(&format!(
                "BENCHNS echo{size} c {rep} {} {} {rc}\n",
                u64::from(s.echoes) * u64::try_from(size).unwrap_or(0),
                t1.saturating_sub(t0)
            ));
            if lost > 0 {
                say(&format!(
                    "BENCHLOST echo{size} c {rep} {lost} of {}\n",
                    s.echoes
                ));
            }
            lost_total += lost;
        }
    }
    Ok(format!("{feat}; {lost_total} echo replies lost"))
}
