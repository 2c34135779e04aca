//! Every blkif phase of the hostile frontend against the real backend core (`xen-blkback`)
//! over the project's mock hypervisor and in-memory xenstore (`xen-tests`' `BackBench`): the
//! requests go through this crate's own raw ring, and the backend's reaction is judged with
//! the same [`judge`] the program uses on real Xen. So the expectations are checked against
//! the core before a real Xen ever runs them, and a change of either side that breaks them
//! fails here.

#[cfg(test)]
mod tests {
    use hostile_frontend::blk::{judge, requests, Expect, Grefs, Observed, Phase, FLOOD};
    use hostile_frontend::blkif::{self, Response, Seg, ENTRY, OP_READ};
    use hostile_frontend::dev;
    use hostile_frontend::ring::RawFront;
    use hostile_frontend::rng::Rng;
    use xen_blkback::BackendConfig;
    use xen_tests::blk::bench::{gref_of, BackBench, RawFrontConfig, BE_DIR, DATA_BASE, FE_DIR};
    use xen_xenbus::XenbusState;

    const SECTORS: u64 = 8192;

    fn state_num(s: XenbusState) -> u32 {
        match s {
            XenbusState::Initialising => dev::INITIALISING,
            XenbusState::InitWait => dev::INIT_WAIT,
            XenbusState::Initialised => dev::INITIALISED,
            XenbusState::Connected => dev::CONNECTED,
            XenbusState::Closing => dev::CLOSING,
            XenbusState::Closed => dev::CLOSED,
            _ => 0,
        }
    }

    /// Runs phase `p` on a fresh backend (Linux blkback's defaults: indirect segments
    /// offered, persistent grants off as our frontend does not ask for them).
    fn run(p: Phase, seed: u64) -> (Observed, Option<String>) {
        let mut b = BackBench::new(BackendConfig::default(), SECTORS, false);
        assert!(b.connect(RawFrontConfig::default()), "{p:?}: no connection");
        // A read-only page, and a read-only page of junk (the hostile program's layout).
        let (ro, junk) = (gref_of(DATA_BASE + 20), gref_of(DATA_BASE + 21));
        b.hv.grant(ro, DATA_BASE + 20, true);
        b.hv.grant(junk, DATA_BASE + 21, true);
        let mut rng = Rng::new(seed);
        let mut junk_bytes = vec![0u8; 4096];
        rng.fill(&mut junk_bytes);
        b.data_page(DATA_BASE + 21)
            .copy_from_slice(0, &junk_bytes)
            .unwrap();
        let g = Grefs {
            data: gref_of(DATA_BASE),
            ro,
            junk,
        };
        let mut ring = RawFront::init(b.ring_mem(0), ENTRY).unwrap();
        if p == Phase::XsGames {
            b.xs.set(&format!("{FE_DIR}/ring-ref"), b"4294967295");
            b.xs.set(&format!("{FE_DIR}/event-channel"), b"65535");
            b.xs.set(&format!("{FE_DIR}/protocol"), b"x86_32-abi");
            for s in [b"3", b"4", b"1", b"4", b"3", b"4"] {
                b.xs.set(&format!("{FE_DIR}/state"), s);
                b.settle();
            }
        }
        for slot in requests(p, g, SECTORS, &mut rng) {
            ring.put(&slot);
        }
        if p == Phase::Runaway {
            ring.publish_raw(ring.rsp_prod() + ring.size() + 1000);
        } else {
            ring.publish();
        }
        // Every notification is one poll (the flood phase: many polls with nothing new).
        let polls = if p == Phase::EventFlood { FLOOD } else { 1 };
        for _ in 0..polls {
            b.poll();
        }
        if p == Phase::EventFlood {
            ring.put(&blkif::rw(OP_READ, 1, 7, 0, &[Seg::page(g.data)]));
            ring.publish();
            b.poll();
        }
        let mut o = Observed {
            responses: ring
                .take_responses()
                .unwrap()
                .iter()
                .map(|s| Response::decode(s))
                .collect(),
            state: state_num(b.state()),
            ..Observed::default()
        };
        let error = b.xs.get_str(&format!("{BE_DIR}/error"));
        o.error.clone_from(&error);
        // The connection ends cleanly whatever happened: nothing stays mapped.
        b.close();
        assert_eq!(b.state(), XenbusState::Closed, "{p:?}");
        assert_eq!(b.leftovers(), (0, 0), "{p:?}: mappings left");
        (o, error)
    }

    #[test]
    fn each_phase_gets_the_reaction_it_expects() {
        for p in Phase::ALL {
            for seed in [1, 0x5eed, 0xdead_beef] {
                let (o, error) = run(p, seed);
                assert!(judge(&p.expect(), &o), "{p:?} seed {seed}: {o:?}");
                match p.expect() {
                    Expect::Fails => assert!(error.is_some(), "{p:?}: no reason"),
                    Expect::Serves(_) => assert!(error.is_none(), "{p:?}: {error:?}"),
                }
            }
        }
    }
}
