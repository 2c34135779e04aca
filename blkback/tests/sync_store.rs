//! A store that completes inside `submit` (the RAM disk of a driver domain, `MemStore`): one
//! `Backend::poll` — the one the frontend's event causes — must answer what it took, because
//! no further event or store interrupt will come to ask again. The platforms used to poll
//! again while the store held completions; the core does it now, so these tests call
//! `poll` exactly as often as an event would, never the bench's re-polling helper.

#[cfg(test)]
mod tests {
    use xen_blkback::proto::{WireRequest, WireResponse, WireSegment};
    use xen_blkback::{BackendConfig, MemStore};
    use xen_sys::consts::{BlkifOp, BlkifStatus};
    use xen_tests::blk::bench::{gref_of, BackBench, RawFrontConfig, DATA_BASE};

    fn seg(page: usize) -> WireSegment {
        WireSegment {
            gref: gref_of(page),
            first_sect: 0,
            last_sect: 7,
        }
    }

    fn bench(cfg: BackendConfig) -> BackBench {
        let mut b = BackBench::new(cfg, 4096, false);
        assert!(b.connect(RawFrontConfig::default()), "{b:?}");
        b
    }

    fn ids_and_status(rs: &[WireResponse]) -> Vec<(u64, u8, i16)> {
        rs.iter().map(|r| (r.id, r.operation, r.status)).collect()
    }

    fn store_backlog(b: &BackBench) -> usize {
        b.be.borrow()
            .store()
            .map_or(usize::MAX, MemStore::completions_ready)
    }

    /// A write, a flush that must wait for it, and a read of what was written, published
    /// together: the single poll answers all three, and nothing is left in the store's
    /// completion queue or in flight.
    #[test]
    fn one_poll_answers_what_the_store_completed_synchronously() {
        let mut b = bench(BackendConfig::default());
        let src = b.data_page(DATA_BASE);
        src.fill(0, 4096, 0x5a).unwrap();
        b.data_page(DATA_BASE + 1).fill(0, 4096, 0).unwrap();
        assert!(b.push(
            0,
            &WireRequest::rw(BlkifOp::Write, 1, 0, 8, &[seg(DATA_BASE)])
        ));
        assert!(b.push(0, &WireRequest::rw(BlkifOp::FlushDiskcache, 2, 0, 0, &[])));
        assert!(b.push(
            0,
            &WireRequest::rw(BlkifOp::Read, 3, 0, 8, &[seg(DATA_BASE + 1)])
        ));
        let r = b.be.borrow_mut().poll();
        assert_eq!(r.requests, 3);
        assert!(!r.more, "{r:?}");
        let okay = BlkifStatus::Okay.value();
        assert_eq!(
            ids_and_status(&b.responses(0)),
            vec![
                (1, BlkifOp::Write.value(), okay),
                (3, BlkifOp::Read.value(), okay),
                (2, BlkifOp::FlushDiskcache.value(), okay),
            ]
        );
        assert_eq!(b.be.borrow().in_flight(), 0);
        assert_eq!(store_backlog(&b), 0);
        let mut back = vec![0u8; 4096];
        b.data_page(DATA_BASE + 1)
            .copy_to_slice(0, &mut back)
            .unwrap();
        assert!(back.iter().all(|&x| x == 0x5a));
        let st = b.be.borrow().stats();
        assert_eq!((st.writes, st.reads, st.flushes), (1, 1, 1));
    }

    /// Collecting synchronous completions does not lift the per-poll budget: with a budget of
    /// 4 and 10 requests, each poll answers exactly what it took (4, 4, 2) and says `more`
    /// while requests are left on the ring.
    #[test]
    fn the_budget_still_bounds_one_poll() {
        let mut b = bench(BackendConfig {
            budget: 4,
            ..BackendConfig::default()
        });
        for id in 0..10u64 {
            assert!(b.push(
                0,
                &WireRequest::rw(BlkifOp::Read, id, 0, id * 8, &[seg(DATA_BASE)])
            ));
        }
        let mut answered = Vec::new();
        for (want, more) in [(4, true), (4, true), (2, false)] {
            let r = b.be.borrow_mut().poll();
            assert_eq!((r.requests, r.more), (want, more), "{r:?}");
            let rs = b.responses(0);
            assert_eq!(rs.len(), want as usize);
            assert_eq!(b.be.borrow().in_flight(), 0);
            assert_eq!(store_backlog(&b), 0);
            answered.extend(rs.iter().map(|r| r.id));
        }
        assert_eq!(answered, (0..10).collect::<Vec<u64>>());
    }
}
