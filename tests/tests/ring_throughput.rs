//! Single-thread throughput of the ring hot path (produce, publish, consume, respond,
//! publish, consume), to keep an eye on the cost of the word-atomic shared-memory copies.
//! Ignored by default; run in release:
//!
//! ```sh
//! cargo test --release -p xen-tests --test ring_throughput -- --ignored --nocapture
//! ```
//!
//! Reference (x86_64 host, release): about 15 ns per round trip with 24-byte entries and
//! 30 ns with 112-byte (blkif-sized) entries.

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use xen_ring::{BackRing, FrontRing};
    use xen_shmem::{Page, Pod, SharedMem};

    fn round_trips<const W: usize>(n: u64) -> f64
    where
        [u64; W]: Pod,
    {
        let page = [Page::new()];
        let mem = SharedMem::from_pages(&page);
        let mut f = FrontRing::<[u64; W], [u64; 2]>::init(mem).unwrap();
        let mut b = BackRing::<[u64; W], [u64; 2]>::attach(mem).unwrap();
        let (mut i, mut sum) = (0u64, 0u64);
        let t = Instant::now();
        while i < n {
            while !f.is_full() {
                let mut r = [0u64; W];
                r[0] = i;
                f.push_request(&r).unwrap();
                i += 1;
            }
            let _ = f.push_requests_and_check_notify().unwrap();
            b.consume_requests(u32::MAX, |r| sum = sum.wrapping_add(r[0]))
                .unwrap();
            while b.push_response(&[1, 2]).is_ok() {}
            let _ = b.push_responses_and_check_notify().unwrap();
            f.consume_responses(u32::MAX, |r| sum = sum.wrapping_add(r[1]))
                .unwrap();
        }
        let ns = t.elapsed().as_secs_f64() * 1e9 / i as f64;
        assert!(sum > 0);
        ns
    }

    #[test]
    #[ignore = "benchmark; run in release with --ignored --nocapture"]
    fn ring_round_trip_cost() {
        println!(
            "24-byte entries:  {:.1} ns per round trip",
            round_trips::<3>(10_000_000)
        );
        println!(
            "112-byte entries: {:.1} ns per round trip",
            round_trips::<14>(10_000_000)
        );
    }
}
