//! A small criterion-like harness: a warm-up run, then `reps` timed repetitions of a batch,
//! reported as the median time per item with the spread (min and max) across repetitions.

use std::time::Instant;

/// Result of one measurement, in nanoseconds per item.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Median over the repetitions.
    pub median: f64,
    /// Fastest repetition.
    pub min: f64,
    /// Slowest repetition.
    pub max: f64,
    /// Repetitions.
    pub reps: usize,
    /// Items per repetition.
    pub items: u64,
}

impl Sample {
    /// `max - min` as a percentage of the median.
    #[must_use]
    pub fn spread_pct(&self) -> f64 {
        if self.median > 0.0 {
            (self.max - self.min) / self.median * 100.0
        } else {
            0.0
        }
    }

    /// Items per second at the median.
    #[must_use]
    pub fn per_sec(&self) -> f64 {
        if self.median > 0.0 {
            1e9 / self.median
        } else {
            0.0
        }
    }

    /// `"12.3 ns (min 11.9)"`: median, and the fastest repetition (the least disturbed by
    /// other load on a shared machine).
    #[must_use]
    pub fn show_ns(&self) -> String {
        format!("{:.1} ns (min {:.1})", self.median, self.min)
    }
}

/// Median of a non-empty list (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

/// Runs `batch(items)` once to warm up, then `reps` times timed. `batch` does `items` units of
/// work and returns a value that depends on all of them (kept from being optimised away).
pub fn measure(reps: usize, items: u64, mut batch: impl FnMut(u64) -> u64) -> Sample {
    std::hint::black_box(batch(items));
    let mut per: Vec<f64> = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        std::hint::black_box(batch(std::hint::black_box(items)));
        per.push(t.elapsed().as_secs_f64() * 1e9 / items as f64);
    }
    let min = per.iter().copied().fold(f64::INFINITY, f64::min);
    let max = per.iter().copied().fold(0.0, f64::max);
    Sample {
        median: median(&mut per),
        min,
        max,
        reps: reps.max(1),
        items,
    }
}

/// [`measure`] for two batches, alternating their repetitions (a, b, a, b, ...) so that load
/// from other processes on a shared machine falls on both alike and their ratio stays fair.
pub fn measure_pair(
    reps: usize,
    items: u64,
    mut a: impl FnMut(u64) -> u64,
    mut b: impl FnMut(u64) -> u64,
) -> (Sample, Sample) {
    std::hint::black_box(a(items));
    std::hint::black_box(b(items));
    let (mut pa, mut pb): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(1) {
        for (f, per) in [
            (&mut a as &mut dyn FnMut(u64) -> u64, &mut pa),
            (&mut b, &mut pb),
        ] {
            let t = Instant::now();
            std::hint::black_box(f(std::hint::black_box(items)));
            per.push(t.elapsed().as_secs_f64() * 1e9 / items as f64);
        }
    }
    (sample(pa, items), sample(pb, items))
}

/// A [`Sample`] from per-item figures measured elsewhere (one per repetition; e.g. the
/// real-Xen suite's, timed inside a guest).
pub fn sample(mut per: Vec<f64>, items: u64) -> Sample {
    let min = per.iter().copied().fold(f64::INFINITY, f64::min);
    let max = per.iter().copied().fold(0.0, f64::max);
    Sample {
        median: median(&mut per),
        min,
        max,
        reps: per.len(),
        items,
    }
}

/// As [`measure`], for batches that time themselves (returning nanoseconds spent on the
/// part under test, so set-up between items is excluded).
pub fn measure_timed(reps: usize, items: u64, mut batch: impl FnMut(u64) -> f64) -> Sample {
    let _ = batch(items);
    let mut per: Vec<f64> = (0..reps.max(1))
        .map(|_| batch(items) / items as f64)
        .collect();
    let min = per.iter().copied().fold(f64::INFINITY, f64::min);
    let max = per.iter().copied().fold(0.0, f64::max);
    Sample {
        median: median(&mut per),
        min,
        max,
        reps: reps.max(1),
        items,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert!((median(&mut [3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median(&mut [4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
        let s = measure(3, 10, |n| n);
        assert_eq!(s.reps, 3);
        assert!(s.min <= s.median && s.median <= s.max);
        let (x, y) = measure_pair(4, 10, |n| n, |n| n + 1);
        assert_eq!((x.reps, y.reps), (4, 4));
        assert!(y.min <= y.median && y.median <= y.max);
    }
}
