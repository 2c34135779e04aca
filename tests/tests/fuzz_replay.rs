//! Replays the fuzz-target bodies (`xen_ring::fuzzing`) over deterministic pseudo-random
//! inputs, so the fuzzers' checks run in the normal `cargo test` suite, plus any local
//! cargo-fuzz corpus (`tests/fuzz/corpus/<target>/`, not committed) when present.

#[cfg(test)]
mod tests {
    use std::path::Path;

    use xen_ring::fuzzing::{interface_ring, ring_consumer};

    /// xorshift64*: deterministic, dependency-free.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    fn inputs(seed: u64, count: usize) -> impl Iterator<Item = Vec<u8>> {
        let mut rng = Rng(seed);
        (0..count).map(move |_| {
            let len = match rng.next() % 4 {
                0 => rng.next() % 32,
                1 => rng.next() % 256,
                _ => rng.next() % 2048,
            };
            (0..len).map(|_| rng.next().to_le_bytes()[7]).collect()
        })
    }

    fn replay_corpus(target: &str, body: fn(&[u8])) -> usize {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.flatten() {
            if let Ok(data) = std::fs::read(e.path()) {
                body(&data);
                n += 1;
            }
        }
        n
    }

    #[test]
    fn ring_consumer_replay() {
        for input in inputs(0x0123_4567_89ab_cdef, 3000) {
            ring_consumer(&input);
        }
        replay_corpus("ring_consumer", ring_consumer);
    }

    #[test]
    fn interface_ring_replay() {
        for input in inputs(0xfedc_ba98_7654_3210, 3000) {
            interface_ring(&input);
        }
        replay_corpus("interface_ring", interface_ring);
    }
}
