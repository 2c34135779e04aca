//! Replays the block drivers' fuzz-target bodies (`xen_tests::blk::fuzz`) over deterministic
//! pseudo-random inputs, so the fuzzers' checks run in the normal suite, plus any local
//! cargo-fuzz corpus (`tests/fuzz/corpus/<target>/`, not committed) when present.

#[cfg(test)]
mod tests {
    use std::path::Path;

    use xen_tests::blk::fuzz::{blkback_ring, blkfront_responses};
    use xen_tests::xensim::Rng;

    fn inputs(seed: u64, count: usize) -> impl Iterator<Item = Vec<u8>> {
        let mut rng = Rng::new(seed);
        (0..count).map(move |_| {
            let len = match rng.below(4) {
                0 => rng.below(32),
                1 => rng.below(256),
                _ => rng.below(2048),
            };
            (0..len).map(|_| rng.next_u64().to_le_bytes()[7]).collect()
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
    fn blkback_ring_replay() {
        for input in inputs(0xb1c4_bac6, 150) {
            blkback_ring(&input);
        }
        replay_corpus("blkback_ring", blkback_ring);
    }

    #[test]
    fn blkfront_responses_replay() {
        for input in inputs(0xb1c4_f407, 150) {
            blkfront_responses(&input);
        }
        replay_corpus("blkfront_responses", blkfront_responses);
    }
}
