//! Simulated end to end: the real blkfront and blkback cores connected over `xensim` (grant
//! tables, event channels, xenstored, xenbus), through `xen_tests::blk::harness::World`, the
//! harness the `blk_e2e` tests use, with a file-backed disk image in the temp folder. Single
//! thread: both "domains" and the simulator share one core, so these are costs of the whole
//! path (both drivers, the simulated hypervisor and the harness's driving loop), not of a
//! driver alone.

use std::time::Instant;

use xen_blkfront::BioOp;
use xen_tests::blk::harness::{Setup, World};

use crate::harness::{measure, Sample};
use crate::Scale;

/// Disk size: 64 MiB.
const SECTORS: u64 = 131_072;

fn world(seed: u64) -> World {
    let mut s = Setup::new(seed);
    s.sectors = SECTORS;
    s.front_pages = 4096;
    s.back_pages = 2048;
    let mut w = World::new(&s);
    assert!(w.connected(), "block pair did not connect: {w:?}");
    w.verify = false;
    w
}

/// Runs `ops` bios of `segs` 4 KiB segments with at most `depth` in flight; `next_sector`
/// picks each bio's start. Returns the seconds taken.
fn run(
    w: &mut World,
    ops: u64,
    depth: usize,
    segs: usize,
    mut next_sector: impl FnMut(&mut World) -> u64,
) -> f64 {
    let layout = vec![(0u8, 7u8); segs];
    let ok0 = w.stats.ok;
    let mut submitted = 0u64;
    let mut idle = 0;
    let t = Instant::now();
    while submitted < ops || !w.issued.is_empty() {
        while submitted < ops && w.issued.len() < depth {
            let sector = next_sector(w);
            w.io(BioOp::Read, sector, &layout).expect("bio accepted");
            submitted += 1;
        }
        if w.step() {
            idle = 0;
        } else {
            idle += 1;
            assert!(idle < 100, "stalled: {w:?}");
        }
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(w.stats.failed, 0, "failed bios");
    assert_eq!(w.stats.ok - ok0, ops, "every bio completed");
    secs
}

/// 4 KiB random reads at queue depth `depth`: ns per request.
#[must_use]
pub fn random_read_4k(scale: &Scale, depth: usize) -> Sample {
    let mut w = world(0xb10c + depth as u64);
    let blocks = SECTORS / 8;
    measure(scale.reps, scale.blk_ops, |n| {
        run(&mut w, n, depth, 1, |w| w.rng.below(blocks) * 8);
        w.stats.ok
    })
}

/// 1 MiB sequential reads, `depth` in flight: ns per MiB.
#[must_use]
pub fn sequential_1m(scale: &Scale, depth: usize) -> Sample {
    let mut w = world(0x5e9);
    let mut next = 0u64;
    measure(scale.reps, scale.seq_mib, |n| {
        run(&mut w, n, depth, 256, |_| {
            let s = next;
            next = (next + 2048) % SECTORS;
            s
        });
        w.stats.ok
    })
}

/// Single-core memcpy of a 64 MiB buffer (larger than the caches): ns per MiB.
#[must_use]
pub fn memcpy_64m(scale: &Scale) -> Sample {
    const MIB: usize = 1 << 20;
    let src: Vec<u8> = (0..64 * MIB).map(|i| i as u8).collect();
    let mut dst = vec![0u8; 64 * MIB];
    measure(scale.reps.max(5), 64 * scale.memcpy_rounds, |n| {
        for _ in 0..n / 64 {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        }
        u64::from(dst[12345])
    })
}
